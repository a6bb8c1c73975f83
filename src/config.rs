//! The TOML configuration: schema (serde) and validation.
//!
//! Every error names the file, the key and the offending value, so an
//! operator can fix it without reading the source.
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:8100"          # or a Unix socket path: "/run/zeoraid/zeo.sock"
//! socket-mode = "0660"               # Unix socket only; default: the umask's
//! workers = 8
//! max-frame-size = 268435456
//! invalidation-queue-size = 100
//!
//!   [server.tls]                     # optional: TLS on the listener
//!   certificate = "server.pem"
//!   key = "server.key"
//!   client-ca = "clients-ca.pem"     # optional: require client certificates
//!   handshake-timeout = 10
//!
//! [[storage]]
//! name = "1"
//! kind = "memory"
//! read-only = false
//!
//! [conflict-resolution]            # optional: undo merges states
//! python = "/srv/app/venv/bin/python"
//! path = ["/srv/app/src"]
//! timeout = 10
//! ```
//!
//! `[ha]` (controllers taking turns through etcd) is described in [`ha`].

pub mod ha;
pub mod import;
pub mod size;
pub mod zconfig;

use serde::Deserialize;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A whole configuration: what `zeoraid serve` reads from TOML, and what an
/// embedder may build in code and hand to [`crate::Zeoraid::start`].
///
/// ```
/// use zeoraid::config::{BackendConfig, Config, StorageConfig};
///
/// let dir = std::env::temp_dir().join(format!("zeoraid-doc-{}", std::process::id()));
/// let mut cfg = Config::default();
/// cfg.server.listen = "127.0.0.1:0".into();
/// cfg.storage.push(StorageConfig::raid(
///     "1",
///     vec![
///         BackendConfig::file("a", dir.join("a.fs")),
///         BackendConfig::file("b", dir.join("b.fs")),
///     ],
/// ));
/// cfg.check().expect("a valid configuration");
/// ```
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub storage: Vec<StorageConfig>,
    /// Server-side conflict resolution for undo (see
    /// [`crate::storage::resolve`]); absent: such undos fail with UndoError.
    #[serde(default)]
    pub conflict_resolution: Option<ResolverConfig>,
    /// The admin listener (`zeoraid ctl`, `/metrics`); absent: none.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Controller high availability through etcd ([`ha`]); absent: this
    /// controller serves alone. With it, `serve` runs a standby or leader
    /// controller ([`crate::ha::controller`]).
    #[serde(default)]
    pub ha: Option<ha::HaConfig>,
}

/// `[admin]`: where the admin HTTP listener listens, and the token that
/// changes need.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AdminConfig {
    /// `host:port`; keep it on loopback unless a token protects changes.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// A file whose content (trimmed) every request that changes something
    /// must send as `Authorization: Bearer TOKEN`; absent: no token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// The admin listener's default address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8101";

fn default_admin_listen() -> String {
    DEFAULT_ADMIN_LISTEN.to_string()
}

impl Config {
    /// A setting this build cannot honour (a cargo feature left out), as
    /// (key, reason).
    fn not_built(&self) -> Option<(&'static str, &'static str)> {
        if !cfg!(feature = "tls") {
            if self.server.tls.is_some() {
                return Some(("server.tls", NO_TLS));
            }
            if self
                .storage
                .iter()
                .flat_map(|s| &s.backend)
                .any(|b| b.tls.is_some())
            {
                return Some(("storage.backend.tls", NO_TLS));
            }
        }
        if !cfg!(feature = "admin") && self.admin.is_some() {
            return Some((
                "admin",
                "this zeoraid was built without the admin listener (cargo feature `admin`); rebuild with default features or remove [admin]",
            ));
        }
        None
    }
}

const NO_TLS: &str = "this zeoraid was built without TLS (cargo feature `tls`); rebuild with default features or remove the TLS settings";

impl AdminConfig {
    /// The token from `token-file`, if one is configured.
    pub fn token(&self) -> Result<Option<String>, String> {
        let Some(p) = &self.token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(p)
            .map_err(|e| format!("cannot read the admin token-file {}: {e}", p.display()))?;
        let token = text.trim().to_string();
        if token.is_empty() {
            return Err(format!(
                "the admin token-file {} is empty; put a secret in it or remove token-file",
                p.display()
            ));
        }
        Ok(Some(token))
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ResolverConfig {
    /// A Python that can import ZODB and the application's classes.
    pub python: PathBuf,
    /// Directories put in front of its `sys.path` (relative ones are
    /// relative to the config file).
    #[serde(default)]
    pub path: Vec<PathBuf>,
    /// Seconds one resolution may take before the helper is restarted.
    #[serde(default = "default_resolve_timeout")]
    pub timeout: f64,
}

fn default_resolve_timeout() -> f64 {
    10.0
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerConfig {
    /// Address the ZEO listener binds (port 0 picks a free port), or a Unix
    /// socket path (contains a `/`; relative: to the config file).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Unix socket permission bits, octal (`"0660"`); unset: the umask's.
    #[serde(default)]
    pub socket_mode: Option<String>,
    /// The largest blob a client may upload, in bytes; a larger one fails
    /// its transaction with a clear error. Unset: no limit.
    #[serde(default)]
    pub max_blob_size: Option<u64>,
    /// TLS on the listener; absent: plaintext.
    #[serde(default)]
    pub tls: Option<ServerTlsConfig>,
    /// Worker threads executing requests.
    /// Unset: [`Config::workers`] picks (2 x cores, more for arrays over
    /// ZEO servers).
    #[serde(default)]
    pub workers: Option<usize>,
    /// Largest frame accepted from a client, in bytes.
    #[serde(default = "default_max_frame")]
    pub max_frame_size: usize,
    /// How many committed transactions `getInvalidations` remembers (ZEO's
    /// `invalidation-queue-size`).
    #[serde(default = "default_invq")]
    pub invalidation_queue_size: usize,
    /// Seconds a client may hold a storage's commit lock (between vote and
    /// finish) before its connection is closed and its transaction aborted
    /// (ZEO's `transaction-timeout`). Unset: no limit, as ZEO.
    #[serde(default)]
    pub transaction_timeout: Option<f64>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            workers: None,
            max_frame_size: default_max_frame(),
            invalidation_queue_size: default_invq(),
            transaction_timeout: None,
            socket_mode: None,
            max_blob_size: None,
            tls: None,
        }
    }
}

/// `[server.tls]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerTlsConfig {
    /// PEM certificate chain the server presents.
    pub certificate: PathBuf,
    /// PEM private key of that certificate.
    pub key: PathBuf,
    /// PEM CA certificates: when set, only clients presenting a
    /// certificate signed by one of them get in (ZEO's `authenticate`).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Seconds a client has to finish its TLS handshake.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: f64,
}

fn default_handshake_timeout() -> f64 {
    crate::server::DEFAULT_TLS_HANDSHAKE_TIMEOUT.as_secs_f64()
}

impl ServerTlsConfig {
    pub fn files(&self) -> crate::net::tls::ServerFiles {
        crate::net::tls::ServerFiles {
            certificate: self.certificate.clone(),
            key: self.key.clone(),
            client_ca: self.client_ca.clone(),
        }
    }
}

/// `[storage.backend.tls]`: TLS to a ZEO backend (ZEO's client `<ssl>`).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BackendTlsConfig {
    /// PEM CA certificates to verify the server with; unset: the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Our PEM certificate, for a server that authenticates clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The name the server's certificate must carry; unset: the address's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_hostname: Option<String>,
}

impl BackendTlsConfig {
    pub fn files(&self) -> crate::net::tls::ClientFiles {
        crate::net::tls::ClientFiles {
            ca: self.ca.clone(),
            certificate: self.certificate.clone(),
            key: self.key.clone(),
            server_hostname: self.server_hostname.clone(),
        }
    }
}

/// Parse a listen address: `host:port` with a numeric IP, or a Unix
/// socket path (relative: to `base`).
pub fn parse_listen(value: &str, base: Option<&Path>) -> Result<crate::server::Listen, String> {
    match crate::net::Address::parse(value, base)? {
        crate::net::Address::Unix(p) => Ok(crate::server::Listen::Unix(p)),
        crate::net::Address::Tcp(a) => a.parse::<SocketAddr>().map(Into::into).map_err(|_| {
            format!("{a:?}: expected HOST:PORT with a numeric IP, e.g. \"127.0.0.1:8100\", or a Unix socket path")
        }),
    }
}

fn default_listen() -> String {
    "127.0.0.1:8100".into()
}
/// 2 x cores, between 4 and 64.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() * 2)
        .unwrap_or(4)
        .clamp(4, 64)
}
fn default_max_frame() -> usize {
    crate::zeo::frame::DEFAULT_MAX_FRAME
}
fn default_invq() -> usize {
    100
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StorageKind {
    /// In-memory MVCC storage (lost on exit; tests and caches).
    Memory,
    /// A ZODB `Data.fs` file, compatible with Python's FileStorage.
    File,
    /// A RAID-1 array over `[[storage.backend]]`s ([`crate::raid`]).
    Raid,
}

/// What a `[[storage.backend]]` of an array is.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// A ZEO server: Python runzeo (`msgpack true`) or zeoraid.
    Zeo,
    /// An in-process Data.fs.
    File,
    /// An in-process memory storage (tests, benchmarks).
    Memory,
}

/// How the array writes to a backend.
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BackendMode {
    /// Every commit is written to it before it is acknowledged; it votes
    /// and serves reads.
    #[default]
    Sync,
    /// Committed transactions are shipped to it afterwards, in order, by
    /// a thread of its own (a mirror in another site over a slow link).
    Offsite,
}

impl BackendMode {
    fn is_sync(&self) -> bool {
        *self == BackendMode::Sync
    }
}

/// Seconds an off-site mirror may trail before `ctl status` warns.
pub const DEFAULT_MAX_LAG: f64 = 60.0;

impl BackendKind {
    pub fn label(self) -> &'static str {
        match self {
            BackendKind::Zeo => "zeo",
            BackendKind::File => "file",
            BackendKind::Memory => "memory",
        }
    }
}

impl BackendConfig {
    /// A backend as the array's state file remembered it (added at
    /// runtime); an error says what is wrong with the entry.
    pub fn from_recipe(r: &crate::raid::statefile::Recipe) -> Result<BackendConfig, String> {
        serde_json::from_value(serde_json::Value::Object(r.0.clone())).map_err(|e| {
            format!(
                "backend {:?} cannot be read back: {e}",
                r.name().unwrap_or("(no name)")
            )
        })
    }
}

/// What the array's state file keeps of a backend added at runtime: its
/// table, as JSON.
impl From<BackendConfig> for crate::raid::statefile::Recipe {
    fn from(b: BackendConfig) -> Self {
        match serde_json::to_value(&b) {
            Ok(serde_json::Value::Object(m)) => crate::raid::statefile::Recipe(m),
            // A struct always serializes to an object; keep the name at least.
            _ => {
                let mut m = serde_json::Map::new();
                m.insert("name".into(), b.name.into());
                crate::raid::statefile::Recipe(m)
            }
        }
    }
}

/// One mirror of an array.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BackendConfig {
    /// Names the backend in logs, status and the state file.
    pub name: String,
    pub kind: BackendKind,
    /// `kind = "zeo"`: HOST:PORT of the ZEO server, or its Unix socket path.
    #[serde(default)]
    pub address: Option<String>,
    /// `kind = "zeo"`: TLS to the server; absent: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<BackendTlsConfig>,
    /// `sync` (the default) or `offsite`.
    #[serde(default, skip_serializing_if = "BackendMode::is_sync")]
    pub mode: BackendMode,
    /// `mode = "offsite"`: seconds behind before `ctl status` warns
    /// (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag: Option<f64>,
    /// `mode = "offsite"`: bounds of the queue of committed transactions
    /// waiting to be shipped (beyond them the mirror reads from a
    /// synchronous backend): transactions (default 100 000) and megabytes
    /// of record data (default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_transactions: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_megabytes: Option<f64>,
    /// `kind = "zeo"`: the storage name on that server (default "1").
    #[serde(default)]
    pub storage: Option<String>,
    /// `kind = "file"`: the Data.fs (relative: to the config file).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `kind = "file"`: fsync before acknowledging.
    #[serde(default = "yes")]
    pub sync: bool,
    /// `kind = "file"`: pack removes unreachable objects.
    #[serde(default = "yes")]
    pub pack_gc: bool,
    /// `kind = "file"`: the backend's blob directory (ZODB's layout);
    /// `kind = "zeo"`: zeoraid's cache of that server's blobs (the server
    /// keeps its own). Absent: the backend takes no blobs, and a blob
    /// commit degrades it. Relative: to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StorageConfig {
    /// The name clients register with (ZEO's default is "1").
    pub name: String,
    pub kind: StorageKind,
    #[serde(default)]
    pub read_only: bool,
    /// `kind = "file"`: the Data.fs path (relative paths are relative to the
    /// config file's directory).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `kind = "file"`: fsync before acknowledging a commit. `false` is
    /// unsafe: a power loss can lose acknowledged commits.
    #[serde(default = "yes")]
    pub sync: bool,
    /// Pack removes objects unreachable from the root (ZODB's `pack-gc`).
    #[serde(default = "yes")]
    pub pack_gc: bool,
    /// `kind = "file"`: the blob directory (ZODB's `blob-dir`, bushy
    /// layout; relative: to the config file); absent: blob calls are
    /// refused. A `memory` storage keeps blobs in a temporary directory of
    /// its own unless this names one (clients with `shared_blob_dir` need
    /// to know where).
    #[serde(default)]
    pub blob_dir: Option<PathBuf>,
    /// `kind = "raid"`: call backends `parallel` (default) or `sequential`.
    #[serde(default)]
    pub fanout: Option<crate::raid::fanout::Mode>,
    /// `kind = "raid"`: `round-robin` (default), `random`, `least-latency`, `primary`.
    #[serde(default)]
    pub read_policy: Option<crate::raid::balance::ReadPolicy>,
    /// `kind = "raid"`: fewer optimal backends than this and `fail-mode` applies (default 1).
    #[serde(default)]
    pub min_optimal: Option<usize>,
    /// `kind = "raid"`: `close` (default) or `read-only`.
    #[serde(default)]
    pub fail_mode: Option<crate::raid::state::FailMode>,
    /// `kind = "raid"`: seconds; a slower backend is degraded (default 10).
    #[serde(default)]
    pub backend_timeout: Option<f64>,
    /// `kind = "raid"`: the array's memory across restarts (default
    /// `raid-NAME.state` next to the config file).
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// `kind = "raid"`: recover degraded backends that answer again (default true).
    #[serde(default)]
    pub auto_recover: Option<bool>,
    /// `kind = "raid"`: while a backend recovers, copy at least this many
    /// transactions per new commit (default 2, more than 1).
    #[serde(default)]
    pub recovery_ratio: Option<f64>,
    /// `kind = "raid"`: the shared object cache's size (bytes, or
    /// `"256MB"`; default 64MB; 0 turns it off). Reads through the array
    /// are answered from it; a reload may change it, not turn it on or off.
    #[serde(default)]
    pub cache_size: Option<size::ByteSize>,
    /// `kind = "raid"`: the mirrors, in order of trust (ties go to the first).
    #[serde(default)]
    pub backend: Vec<BackendConfig>,
}

impl StorageConfig {
    /// A storage of `kind` with every other setting at its default, as a
    /// `[[storage]]` section with only `name` and `kind` would have.
    pub fn new(name: &str, kind: StorageKind) -> StorageConfig {
        StorageConfig {
            name: name.to_string(),
            kind,
            read_only: false,
            path: None,
            sync: true,
            pack_gc: true,
            blob_dir: None,
            fanout: None,
            read_policy: None,
            min_optimal: None,
            fail_mode: None,
            backend_timeout: None,
            state_file: None,
            auto_recover: None,
            recovery_ratio: None,
            cache_size: None,
            backend: Vec::new(),
        }
    }

    /// An in-memory storage (lost on exit).
    pub fn memory(name: &str) -> StorageConfig {
        StorageConfig::new(name, StorageKind::Memory)
    }

    /// A `Data.fs` file storage, created when missing.
    pub fn file(name: &str, path: impl Into<PathBuf>) -> StorageConfig {
        StorageConfig {
            path: Some(path.into()),
            ..StorageConfig::new(name, StorageKind::File)
        }
    }

    /// A RAID-1 array over `backends`. Built in code it has no state file
    /// unless `state_file` is set (a config file defaults it to
    /// `raid-NAME.state` next to the file); without one, a restart judges
    /// the backends by their last transactions alone.
    pub fn raid(name: &str, backends: Vec<BackendConfig>) -> StorageConfig {
        StorageConfig {
            backend: backends,
            ..StorageConfig::new(name, StorageKind::Raid)
        }
    }
}

impl BackendConfig {
    /// A backend of `kind` with every other setting at its default.
    pub fn new(name: &str, kind: BackendKind) -> BackendConfig {
        BackendConfig {
            name: name.to_string(),
            kind,
            address: None,
            tls: None,
            mode: BackendMode::default(),
            max_lag: None,
            queue_transactions: None,
            queue_megabytes: None,
            storage: None,
            path: None,
            sync: true,
            pack_gc: true,
            blob_dir: None,
        }
    }

    /// An in-process `Data.fs` mirror.
    pub fn file(name: &str, path: impl Into<PathBuf>) -> BackendConfig {
        BackendConfig {
            path: Some(path.into()),
            ..BackendConfig::new(name, BackendKind::File)
        }
    }

    /// A ZEO server (`host:port` or a Unix socket path) and the storage
    /// name on it.
    pub fn zeo(name: &str, address: &str, storage: &str) -> BackendConfig {
        BackendConfig {
            address: Some(address.to_string()),
            storage: Some(storage.to_string()),
            ..BackendConfig::new(name, BackendKind::Zeo)
        }
    }

    /// An in-process memory mirror (tests, demonstrations).
    pub fn memory(name: &str) -> BackendConfig {
        BackendConfig::new(name, BackendKind::Memory)
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("cannot read config file {file}: {reason}")]
    Read { file: PathBuf, reason: String },
    #[error("config file {file}: {reason}")]
    Parse { file: PathBuf, reason: String },
    #[error("config file {file}: key `{key}` has invalid value {value}: {reason}")]
    Invalid {
        file: PathBuf,
        key: String,
        value: String,
        reason: String,
    },
}

impl Config {
    /// The worker pool size: `server.workers` when set, else 2 x cores
    /// (4 to 64) plus 8 per synchronous ZEO backend of an array, because a
    /// worker that waits for a backend's answer uses no CPU and reads
    /// through an array are round trips. Off-site backends add none: no
    /// worker ever waits for them (their own thread ships to them), and
    /// idle workers on few cores cost commits latency.
    pub fn workers(&self) -> usize {
        if let Some(w) = self.server.workers {
            return w;
        }
        let zeo_backends = self
            .storage
            .iter()
            .flat_map(|s| &s.backend)
            .filter(|b| b.kind == BackendKind::Zeo && b.mode != BackendMode::Offsite)
            .count();
        (default_workers() + 8 * zeo_backends).min(64)
    }

    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            file: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Config::parse(&text, path)
    }

    /// Parse and validate config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: path.to_path_buf(),
            reason: e.to_string().trim_end().to_string(),
        })?;
        let mut cfg = cfg;
        cfg.validate(path)?;
        // Relative storage paths are relative to the config file.
        let base = path.parent().unwrap_or(Path::new("."));
        let rebase = |p: &mut Option<PathBuf>| {
            if let Some(q) = p.as_ref().filter(|q| q.is_relative()) {
                *p = Some(base.join(q));
            }
        };
        for s in &mut cfg.storage {
            rebase(&mut s.path);
            rebase(&mut s.blob_dir);
            if s.kind == StorageKind::Raid {
                if s.state_file.is_none() {
                    s.state_file = Some(PathBuf::from(format!("raid-{}.state", s.name)));
                }
                rebase(&mut s.state_file);
                for b in &mut s.backend {
                    rebase(&mut b.path);
                    rebase(&mut b.blob_dir);
                    if let Some(t) = &mut b.tls {
                        rebase(&mut t.ca);
                        rebase(&mut t.certificate);
                        rebase(&mut t.key);
                    }
                    if let Some(a) = &b.address {
                        if let Ok(crate::net::Address::Unix(p)) =
                            crate::net::Address::parse(a, Some(base))
                        {
                            b.address = Some(p.display().to_string());
                        }
                    }
                }
            }
        }
        if let Some(a) = &mut cfg.admin {
            rebase(&mut a.token_file);
        }
        if let Ok(crate::server::Listen::Unix(p)) = parse_listen(&cfg.server.listen, Some(base)) {
            cfg.server.listen = p.display().to_string();
        }
        if let Some(t) = &mut cfg.server.tls {
            for p in [&mut t.certificate, &mut t.key] {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
            rebase(&mut t.client_ca);
        }
        if let Some(r) = &mut cfg.conflict_resolution {
            for p in &mut r.path {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        Ok(cfg)
    }

    /// Validate a configuration built in code (one read from a file is
    /// validated by [`Config::load`]); errors name the key as a file's do.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.validate(Path::new("(configuration built in code)"))
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, value: String, reason: &str| ConfigError::Invalid {
            file: path.to_path_buf(),
            key: key.to_string(),
            value,
            reason: reason.to_string(),
        };
        if let Some(key) = self.not_built() {
            return Err(invalid(key.0, "(set)".into(), key.1));
        }
        if let Err(e) = parse_listen(&self.server.listen, None) {
            return Err(invalid(
                "server.listen",
                format!("{:?}", self.server.listen),
                &e,
            ));
        }
        if let Some(m) = &self.server.socket_mode {
            crate::net::unix::parse_mode(m)
                .map_err(|e| invalid("server.socket-mode", format!("{m:?}"), &e))?;
        }
        if let Some(t) = &self.server.tls {
            if !(t.handshake_timeout.is_finite()
                && t.handshake_timeout > 0.0
                && t.handshake_timeout <= 600.0)
            {
                return Err(invalid(
                    "server.tls.handshake-timeout",
                    t.handshake_timeout.to_string(),
                    "must be a number of seconds above 0 and at most 600",
                ));
            }
        }
        if let Some(w) = self.server.workers.filter(|w| *w == 0 || *w > 1024) {
            return Err(invalid(
                "server.workers",
                w.to_string(),
                "must be between 1 and 1024",
            ));
        }
        if self.server.max_frame_size < 1024 || self.server.max_frame_size > u32::MAX as usize {
            return Err(invalid(
                "server.max-frame-size",
                self.server.max_frame_size.to_string(),
                "must be between 1024 and 4294967295 bytes",
            ));
        }
        if self.server.invalidation_queue_size == 0 {
            return Err(invalid(
                "server.invalidation-queue-size",
                "0".into(),
                "must be at least 1",
            ));
        }
        if let Some(t) = self.server.transaction_timeout {
            if !(t.is_finite() && t > 0.0) {
                return Err(invalid(
                    "server.transaction-timeout",
                    t.to_string(),
                    "must be a positive number of seconds (leave it out for no limit)",
                ));
            }
        }
        if let Some(r) = &self.conflict_resolution {
            if !(r.timeout.is_finite() && r.timeout > 0.0 && r.timeout <= 3600.0) {
                return Err(invalid(
                    "conflict-resolution.timeout",
                    r.timeout.to_string(),
                    "must be a number of seconds above 0 and at most 3600",
                ));
            }
            if r.python.as_os_str().is_empty() {
                return Err(invalid(
                    "conflict-resolution.python",
                    "\"\"".into(),
                    "name a Python that can import ZODB and the application's classes",
                ));
            }
        }
        if self.storage.is_empty() {
            return Err(invalid(
                "storage",
                "[]".into(),
                "define at least one [[storage]] with a name and a kind",
            ));
        }
        let mut seen = HashSet::new();
        for (i, s) in self.storage.iter().enumerate() {
            match (s.kind, &s.path) {
                (StorageKind::File, None) => {
                    return Err(invalid(
                        &format!("storage[{i}].path"),
                        "(missing)".into(),
                        "a storage of kind \"file\" needs path = \"/where/Data.fs\"",
                    ))
                }
                (StorageKind::Memory, Some(p)) => {
                    return Err(invalid(
                        &format!("storage[{i}].path"),
                        format!("{:?}", p.display().to_string()),
                        "only a storage of kind \"file\" has a path",
                    ))
                }
                _ => {}
            }
            if let (Some(b), StorageKind::Raid) = (&s.blob_dir, s.kind) {
                return Err(invalid(
                    &format!("storage[{i}].blob-dir"),
                    format!("{:?}", b.display().to_string()),
                    "an array keeps no blobs itself: set blob-dir on its backends (file backends: their blob directory; zeo backends: zeoraid's cache of that server's blobs)",
                ));
            }
            if s.blob_dir.is_some() && s.blob_dir == s.path {
                return Err(invalid(
                    &format!("storage[{i}].blob-dir"),
                    format!(
                        "{:?}",
                        s.blob_dir
                            .as_ref()
                            .map(|b| b.display().to_string())
                            .unwrap_or_default()
                    ),
                    "the blob directory must not be the Data.fs itself",
                ));
            }
            if s.kind == StorageKind::Raid {
                validate_raid(i, s, &invalid)?;
            } else {
                let raid_only = [
                    ("fanout", s.fanout.is_some()),
                    ("read-policy", s.read_policy.is_some()),
                    ("min-optimal", s.min_optimal.is_some()),
                    ("fail-mode", s.fail_mode.is_some()),
                    ("backend-timeout", s.backend_timeout.is_some()),
                    ("state-file", s.state_file.is_some()),
                    ("auto-recover", s.auto_recover.is_some()),
                    ("recovery-ratio", s.recovery_ratio.is_some()),
                    ("cache-size", s.cache_size.is_some()),
                    ("backend", !s.backend.is_empty()),
                ];
                if let Some((key, _)) = raid_only.iter().find(|(_, set)| *set) {
                    return Err(invalid(
                        &format!("storage[{i}].{key}"),
                        "(set)".into(),
                        "only a storage of kind \"raid\" has this key",
                    ));
                }
            }
            if s.name.is_empty() {
                return Err(invalid(
                    &format!("storage[{i}].name"),
                    "\"\"".into(),
                    "must not be empty",
                ));
            }
            if !seen.insert(s.name.clone()) {
                return Err(invalid(
                    &format!("storage[{i}].name"),
                    format!("{:?}", s.name),
                    "is used by more than one [[storage]]",
                ));
            }
        }
        if let Some(h) = &self.ha {
            ha::validate(h, &self.storage, &invalid)?;
        }
        Ok(())
    }
}

/// The checks of a `kind = "raid"` storage.
fn validate_raid(
    i: usize,
    s: &StorageConfig,
    invalid: &dyn Fn(&str, String, &str) -> ConfigError,
) -> Result<(), ConfigError> {
    let key = |k: &str| format!("storage[{i}].{k}");
    if s.backend.is_empty() {
        return Err(invalid(
            &key("backend"),
            "[]".into(),
            "an array needs at least one [[storage.backend]] (two or more to mirror)",
        ));
    }
    let synchronous = s.backend.iter().filter(|b| b.mode.is_sync()).count();
    if synchronous == 0 {
        return Err(invalid(
            &key("backend"),
            "(only off-site backends)".into(),
            "an array needs at least one backend with mode = \"sync\" (off-site mirrors never decide a commit)",
        ));
    }
    if let Some(m) = s.min_optimal {
        if m == 0 || m > synchronous {
            return Err(invalid(
                &key("min-optimal"),
                m.to_string(),
                &format!(
                    "must be between 1 and the number of synchronous backends ({synchronous})"
                ),
            ));
        }
    }
    if let Some(t) = s.backend_timeout {
        if !(t.is_finite() && t > 0.0 && t <= 3600.0) {
            return Err(invalid(
                &key("backend-timeout"),
                t.to_string(),
                "must be a number of seconds above 0 and at most 3600",
            ));
        }
    }
    if let Some(r) = s.recovery_ratio {
        if !(r.is_finite() && r > 1.0 && r <= 1000.0) {
            return Err(invalid(
                &key("recovery-ratio"),
                r.to_string(),
                "must be a number above 1 (recovery copies that many transactions per new \
                 commit; at 1 or below it might never finish) and at most 1000",
            ));
        }
    }
    let mut names = HashSet::new();
    for (j, b) in s.backend.iter().enumerate() {
        let bkey = |k: &str| format!("storage[{i}].backend[{j}].{k}");
        if b.name.is_empty() || !names.insert(b.name.clone()) {
            return Err(invalid(
                &bkey("name"),
                format!("{:?}", b.name),
                "each backend needs a name of its own",
            ));
        }
        let need = |k: &str, set: bool, reason: &str| -> Result<(), ConfigError> {
            if set {
                Ok(())
            } else {
                Err(invalid(&bkey(k), "(missing)".into(), reason))
            }
        };
        if b.mode.is_sync() {
            for (k, set) in [
                ("max-lag", b.max_lag.is_some()),
                ("queue-transactions", b.queue_transactions.is_some()),
                ("queue-megabytes", b.queue_megabytes.is_some()),
            ] {
                if set {
                    return Err(invalid(
                        &bkey(k),
                        "(set)".into(),
                        &format!("only an off-site backend (mode = \"offsite\") has a {k}"),
                    ));
                }
            }
        }
        if b.queue_transactions == Some(0)
            || b.queue_megabytes
                .is_some_and(|m| !(m.is_finite() && m > 0.0))
        {
            return Err(invalid(
                &bkey("queue-transactions"),
                "0".into(),
                "the queue bounds must be positive",
            ));
        }
        match (b.mode, b.max_lag) {
            (BackendMode::Offsite, Some(l)) if !(l.is_finite() && l > 0.0) => {
                return Err(invalid(
                    &bkey("max-lag"),
                    l.to_string(),
                    "must be a positive number of seconds",
                ))
            }
            (BackendMode::Offsite, _) if b.kind == BackendKind::Memory => {
                return Err(invalid(
                    &bkey("mode"),
                    "\"offsite\"".into(),
                    "an off-site mirror is a ZEO server or a file, not memory",
                ))
            }
            _ => {}
        }
        let refuse = |k: &str, set: bool| -> Result<(), ConfigError> {
            if set {
                Err(invalid(
                    &bkey(k),
                    "(set)".into(),
                    &format!("a backend of kind \"{}\" has no {k}", b.kind.label()),
                ))
            } else {
                Ok(())
            }
        };
        match b.kind {
            BackendKind::Zeo => {
                need(
                    "address",
                    b.address.is_some(),
                    "a backend of kind \"zeo\" needs address = \"HOST:PORT\"",
                )?;
                refuse("path", b.path.is_some())?;
                let address = b.address.as_deref().unwrap_or_default();
                let parsed = crate::net::Address::parse(address, None)
                    .map_err(|e| invalid(&bkey("address"), format!("{address:?}"), &e))?;
                if let Some(t) = &b.tls {
                    if t.certificate.is_some() != t.key.is_some() {
                        return Err(invalid(
                            &bkey("tls"),
                            "(set)".into(),
                            "a client certificate needs both `certificate` and `key`",
                        ));
                    }
                    if matches!(parsed, crate::net::Address::Unix(_)) && t.server_hostname.is_none()
                    {
                        return Err(invalid(
                            &bkey("tls.server-hostname"),
                            "(unset)".into(),
                            "TLS over a Unix socket needs the name in the server's certificate",
                        ));
                    }
                }
            }
            BackendKind::File => {
                need(
                    "path",
                    b.path.is_some(),
                    "a backend of kind \"file\" needs path = \"/where/Data.fs\"",
                )?;
                refuse("address", b.address.is_some())?;
                refuse("storage", b.storage.is_some())?;
                refuse("tls", b.tls.is_some())?;
            }
            BackendKind::Memory => {
                refuse("address", b.address.is_some())?;
                refuse("storage", b.storage.is_some())?;
                refuse("path", b.path.is_some())?;
                refuse("tls", b.tls.is_some())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("[[storage]]\nname = \"1\"\nkind = \"memory\"\n").expect("valid");
        assert_eq!(c.server.listen, "127.0.0.1:8100");
        assert_eq!(c.server.invalidation_queue_size, 100);
        assert_eq!(c.storage[0].kind, StorageKind::Memory);
        assert!(!c.storage[0].read_only);
    }

    #[test]
    fn errors_name_file_key_and_value() {
        let cases = [
            (
                "[server]\nlisten = \"nowhere\"\n[[storage]]\nname=\"1\"\nkind=\"memory\"",
                "server.listen",
            ),
            (
                "[server]\nworkers = 0\n[[storage]]\nname=\"1\"\nkind=\"memory\"",
                "server.workers",
            ),
            ("[server]\n", "storage"),
            (
                "[[storage]]\nname=\"1\"\nkind=\"memory\"\n[[storage]]\nname=\"1\"\nkind=\"memory\"",
                "storage[1].name",
            ),
            (
                "[[storage]]\nname=\"1\"\nkind=\"memory\"\n[conflict-resolution]\npython=\"py\"\ntimeout=0",
                "conflict-resolution.timeout",
            ),
            (
                "[[storage]]\nname=\"1\"\nkind=\"memory\"\n[conflict-resolution]\npython=\"\"",
                "conflict-resolution.python",
            ),
        ];
        for (text, key) in cases {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains("test.toml"), "{err}");
            assert!(err.contains(&format!("`{key}`")), "{err}");
        }
    }

    #[test]
    fn file_storage_needs_a_path_relative_to_the_config() {
        let c = Config::parse(
            "[[storage]]\nname=\"1\"\nkind=\"file\"\npath=\"data/Data.fs\"\n",
            Path::new("/etc/zeoraid/z.toml"),
        )
        .expect("valid");
        assert_eq!(
            c.storage[0].path.as_deref(),
            Some(Path::new("/etc/zeoraid/data/Data.fs"))
        );
        assert!(c.storage[0].sync && c.storage[0].pack_gc);
        for (text, key) in [
            ("[[storage]]\nname=\"1\"\nkind=\"file\"", "storage[0].path"),
            (
                "[[storage]]\nname=\"1\"\nkind=\"memory\"\npath=\"x\"",
                "storage[0].path",
            ),
        ] {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(&format!("`{key}`")), "{err}");
        }
    }

    #[test]
    fn conflict_resolution_paths_are_relative_to_the_config() {
        let c = Config::parse(
            "[[storage]]\nname=\"1\"\nkind=\"memory\"\n\
             [conflict-resolution]\npython=\"/venv/bin/python\"\npath=[\"src\", \"/abs\"]\n",
            Path::new("/etc/zeoraid/z.toml"),
        )
        .expect("valid");
        let r = c.conflict_resolution.expect("section");
        assert_eq!(r.python, Path::new("/venv/bin/python"));
        assert_eq!(
            r.path,
            vec![PathBuf::from("/etc/zeoraid/src"), PathBuf::from("/abs")]
        );
        assert_eq!(r.timeout, 10.0);
        let none = parse("[[storage]]\nname=\"1\"\nkind=\"memory\"").expect("valid");
        assert_eq!(none.conflict_resolution, None);
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_and_unix_sockets() {
        let c = Config::parse(
            "[server]\nlisten=\"run/zeo.sock\"\nsocket-mode=\"0660\"\n\
             [server.tls]\ncertificate=\"s.pem\"\nkey=\"/k/s.key\"\nclient-ca=\"ca.pem\"\n\
             [[storage]]\nname=\"1\"\nkind=\"raid\"\n\
             [[storage.backend]]\nname=\"a\"\nkind=\"zeo\"\naddress=\"db:8100\"\n\
             [storage.backend.tls]\nca=\"dr-ca.pem\"\ncertificate=\"me.pem\"\nkey=\"me.key\"\n\
             [[storage.backend]]\nname=\"b\"\nkind=\"zeo\"\naddress=\"sock/b.sock\"\n",
            Path::new("/etc/zeoraid/z.toml"),
        )
        .expect("valid");
        assert_eq!(c.server.listen, "/etc/zeoraid/run/zeo.sock");
        let t = c.server.tls.as_ref().expect("tls");
        assert_eq!(t.certificate, Path::new("/etc/zeoraid/s.pem"));
        assert_eq!(t.key, Path::new("/k/s.key"));
        assert_eq!(
            t.client_ca.as_deref(),
            Some(Path::new("/etc/zeoraid/ca.pem"))
        );
        assert_eq!(t.handshake_timeout, 10.0);
        let b = &c.storage[0].backend;
        let bt = b[0].tls.as_ref().expect("backend tls");
        assert_eq!(bt.ca.as_deref(), Some(Path::new("/etc/zeoraid/dr-ca.pem")));
        assert_eq!(bt.key.as_deref(), Some(Path::new("/etc/zeoraid/me.key")));
        assert_eq!(b[1].address.as_deref(), Some("/etc/zeoraid/sock/b.sock"));
        assert_eq!(b[1].tls, None);
        const RAID: &str = "[[storage]]\nname=\"1\"\nkind=\"raid\"\n";
        let cases = [
            (
                "[server]\nsocket-mode=\"rw\"\n[[storage]]\nname=\"1\"\nkind=\"memory\"".to_string(),
                "server.socket-mode",
            ),
            (
                "[server.tls]\ncertificate=\"a\"\nkey=\"b\"\nhandshake-timeout=0\n[[storage]]\nname=\"1\"\nkind=\"memory\"".to_string(),
                "server.tls.handshake-timeout",
            ),
            (
                format!("{RAID}[[storage.backend]]\nname=\"a\"\nkind=\"zeo\"\naddress=\"h:1\"\n[storage.backend.tls]\ncertificate=\"c\"\n"),
                "storage[0].backend[0].tls",
            ),
            (
                format!("{RAID}[[storage.backend]]\nname=\"a\"\nkind=\"zeo\"\naddress=\"/s.sock\"\n[storage.backend.tls]\nca=\"c\"\n"),
                "storage[0].backend[0].tls.server-hostname",
            ),
            (
                format!("{RAID}[[storage.backend]]\nname=\"a\"\nkind=\"memory\"\n[storage.backend.tls]\nca=\"c\"\n"),
                "storage[0].backend[0].tls",
            ),
            (
                format!("{RAID}[[storage.backend]]\nname=\"a\"\nkind=\"zeo\"\naddress=\"nowhere\"\n"),
                "storage[0].backend[0].address",
            ),
        ];
        for (text, key) in cases {
            let err = parse(&text).expect_err(&text).to_string();
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        }
    }

    #[test]
    fn offsite_backends() {
        const RAID: &str = "[[storage]]\nname=\"1\"\nkind=\"raid\"\n";
        const A: &str = "[[storage.backend]]\nname=\"a\"\nkind=\"file\"\npath=\"a.fs\"\n";
        let c = parse(&format!(
            "{RAID}{A}[[storage.backend]]\nname=\"dr\"\nkind=\"zeo\"\naddress=\"dr:8100\"\n\
             mode=\"offsite\"\nmax-lag=30\nqueue-transactions=500\n"
        ))
        .expect("valid");
        let dr = &c.storage[0].backend[1];
        assert_eq!(dr.mode, BackendMode::Offsite);
        assert_eq!((dr.max_lag, dr.queue_transactions), (Some(30.0), Some(500)));
        assert_eq!(c.storage[0].backend[0].mode, BackendMode::Sync);
        let offsite = |extra: &str| {
            format!("[[storage.backend]]\nname=\"dr\"\nkind=\"zeo\"\naddress=\"h:1\"\nmode=\"offsite\"\n{extra}")
        };
        let cases = [
            (format!("{RAID}{}", offsite("")), "storage[0].backend"),
            (
                format!("{RAID}{A}{}", offsite("max-lag=0\n")),
                "storage[0].backend[1].max-lag",
            ),
            (
                format!("{RAID}{A}{}", offsite("queue-transactions=0\n")),
                "storage[0].backend[1].queue-transactions",
            ),
            (
                format!("{RAID}{A}max-lag=5\n"),
                "storage[0].backend[0].max-lag",
            ),
            (
                format!("{RAID}min-optimal=2\n{A}{}", offsite("")),
                "storage[0].min-optimal",
            ),
            (
                format!(
                    "{RAID}{A}[[storage.backend]]\nname=\"m\"\nkind=\"memory\"\nmode=\"offsite\"\n"
                ),
                "storage[0].backend[1].mode",
            ),
        ];
        for (text, key) in cases {
            let err = parse(&text).expect_err(&text).to_string();
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        }
    }

    #[test]
    fn unknown_keys_and_kinds_are_refused() {
        for text in [
            "[server]\nlisten_addr = \"x\"",
            "[[storage]]\nname=\"1\"\nkind=\"tape\"",
        ] {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains("test.toml"), "{err}");
        }
    }

    const RAID: &str = "[[storage]]\nname=\"1\"\nkind=\"raid\"\n";

    #[test]
    fn raid_config_with_defaults_and_relative_paths() {
        let c = Config::parse(
            &format!(
                "{RAID}fanout=\"sequential\"\nread-policy=\"least-latency\"\nmin-optimal=2\n\
                 fail-mode=\"read-only\"\nbackend-timeout=2.5\nauto-recover=false\n\
                 recovery-ratio=3.5\n\
                 [[storage.backend]]\nname=\"a\"\nkind=\"zeo\"\naddress=\"127.0.0.1:9001\"\n\
                 [[storage.backend]]\nname=\"c\"\nkind=\"file\"\npath=\"var/c/Data.fs\"\n"
            ),
            Path::new("/etc/zeoraid/z.toml"),
        )
        .expect("valid");
        let s = &c.storage[0];
        assert_eq!(s.kind, StorageKind::Raid);
        assert_eq!(s.fanout, Some(crate::raid::fanout::Mode::Sequential));
        assert_eq!(
            s.read_policy,
            Some(crate::raid::balance::ReadPolicy::LeastLatency)
        );
        assert_eq!(s.fail_mode, Some(crate::raid::state::FailMode::ReadOnly));
        assert_eq!(s.min_optimal, Some(2));
        assert_eq!(s.backend_timeout, Some(2.5));
        assert_eq!(s.auto_recover, Some(false));
        assert_eq!(s.recovery_ratio, Some(3.5));
        assert_eq!(
            s.state_file.as_deref(),
            Some(Path::new("/etc/zeoraid/raid-1.state"))
        );
        assert_eq!(
            s.backend[1].path.as_deref(),
            Some(Path::new("/etc/zeoraid/var/c/Data.fs"))
        );
        assert_eq!(s.backend[0].kind, BackendKind::Zeo);
    }

    #[test]
    fn workers_default_grows_with_zeo_backends() {
        let zeo = |n: usize| {
            (0..n)
                .map(|i| {
                    format!("[[storage.backend]]\nname=\"z{i}\"\nkind=\"zeo\"\naddress=\"127.0.0.1:1\"\n")
                })
                .collect::<String>()
        };
        let base = default_workers();
        let cases = [
            (
                "[[storage]]\nname=\"1\"\nkind=\"memory\"\n".to_string(),
                base,
            ),
            (format!("{RAID}{}", zeo(2)), (base + 16).min(64)),
            (format!("[server]\nworkers = 3\n{RAID}{}", zeo(2)), 3),
            (format!("{RAID}{}", zeo(20)), 64),
            // An off-site ZEO backend keeps no worker waiting.
            (
                format!(
                    "{RAID}[[storage.backend]]\nname=\"f\"\nkind=\"file\"\npath=\"f.fs\"\n{}mode=\"offsite\"\n",
                    zeo(1)
                ),
                base,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse(&text).expect(&text).workers(), want, "{text}");
        }
    }

    #[test]
    fn raid_errors_name_the_key() {
        let zeo_a = "[[storage.backend]]\nname=\"a\"\nkind=\"zeo\"\naddress=\"127.0.0.1:1\"\n";
        let cases = [
            (RAID.to_string(), "storage[0].backend"),
            (
                format!("{RAID}min-optimal=2\n{zeo_a}"),
                "storage[0].min-optimal",
            ),
            (
                format!("{RAID}backend-timeout=0\n{zeo_a}"),
                "storage[0].backend-timeout",
            ),
            (
                format!("{RAID}recovery-ratio=1.0\n{zeo_a}"),
                "storage[0].recovery-ratio",
            ),
            (
                "[[storage]]\nname=\"1\"\nkind=\"memory\"\nauto-recover=true\n".to_string(),
                "storage[0].auto-recover",
            ),
            (
                format!("{RAID}{zeo_a}{zeo_a}"),
                "storage[0].backend[1].name",
            ),
            (
                format!("{RAID}[[storage.backend]]\nname=\"a\"\nkind=\"zeo\"\n"),
                "storage[0].backend[0].address",
            ),
            (
                format!("{RAID}[[storage.backend]]\nname=\"a\"\nkind=\"file\"\n"),
                "storage[0].backend[0].path",
            ),
            (
                format!(
                    "{RAID}[[storage.backend]]\nname=\"a\"\nkind=\"memory\"\naddress=\"x:1\"\n"
                ),
                "storage[0].backend[0].address",
            ),
            (
                "[[storage]]\nname=\"1\"\nkind=\"memory\"\nfanout=\"parallel\"\n".to_string(),
                "storage[0].fanout",
            ),
        ];
        for (text, key) in cases {
            let err = parse(&text).expect_err(&text).to_string();
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        }
        for text in [
            format!("{RAID}fanout=\"diagonal\"\n{zeo_a}"),
            format!("{RAID}{zeo_a}colour=\"red\"\n"),
        ] {
            let err = parse(&text).expect_err(&text).to_string();
            assert!(err.contains("test.toml"), "{err}");
        }
    }

    /// A build without a feature refuses its settings, naming the key and
    /// the feature; a build with it accepts them.
    #[test]
    fn settings_of_features_left_out() {
        let tls = "[server.tls]\ncertificate=\"s.pem\"\nkey=\"s.key\"\n[[storage]]\nname=\"1\"\nkind=\"memory\"\n";
        let admin = "[admin]\n[[storage]]\nname=\"1\"\nkind=\"memory\"\n";
        let table = [
            (
                tls,
                cfg!(feature = "tls"),
                "server.tls",
                "cargo feature `tls`",
            ),
            (
                admin,
                cfg!(feature = "admin"),
                "admin",
                "cargo feature `admin`",
            ),
        ];
        for (text, built, key, why) in table {
            let r = Config::parse(text, Path::new("z.toml"));
            if built {
                assert!(r.is_ok(), "{r:?}");
            } else {
                let e = r.expect_err("refused").to_string();
                assert!(
                    e.contains(&format!("key `{key}`")) && e.contains(why),
                    "{e}"
                );
            }
        }
    }

    /// The constructors for configs built in code give what the same TOML
    /// gives.
    #[test]
    fn constructors_match_toml() {
        let parsed = Config::parse(
            "[[storage]]\nname=\"m\"\nkind=\"memory\"\n\
             [[storage]]\nname=\"f\"\nkind=\"file\"\npath=\"/d/f.fs\"\n\
             [[storage]]\nname=\"r\"\nkind=\"raid\"\nstate-file=\"/d/r.state\"\n\
             [[storage.backend]]\nname=\"a\"\nkind=\"file\"\npath=\"/d/a.fs\"\n\
             [[storage.backend]]\nname=\"z\"\nkind=\"zeo\"\naddress=\"h:8100\"\nstorage=\"2\"\n\
             [[storage.backend]]\nname=\"m\"\nkind=\"memory\"\n",
            Path::new("/d/z.toml"),
        )
        .expect("valid");
        let built = Config {
            storage: vec![
                StorageConfig::memory("m"),
                StorageConfig::file("f", "/d/f.fs"),
                StorageConfig {
                    state_file: Some("/d/r.state".into()),
                    ..StorageConfig::raid(
                        "r",
                        vec![
                            BackendConfig::file("a", "/d/a.fs"),
                            BackendConfig::zeo("z", "h:8100", "2"),
                            BackendConfig::memory("m"),
                        ],
                    )
                },
            ],
            ..Config::default()
        };
        assert_eq!(built.check(), Ok(()));
        assert_eq!(built, parsed);
        let mut bad = Config::default();
        bad.storage.push(StorageConfig::raid("r", vec![]));
        assert!(bad.check().is_err());
    }
}
