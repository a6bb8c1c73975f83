//! One running zeoraid — its storages, the ZEO server, (with the `admin`
//! feature) the admin listener and (with `[ha]`) the HA controller thread
//! that makes it a standby or the leader — started from a [`Config`]
//! value and stopped when its owner says so. `zeoraid serve` is this plus
//! signal handling; an embedder uses it directly.

use crate::config::{Config, ConfigError};
use crate::open::Opened;
use crate::server::{Listen, Options, Served, Server, TlsInfo, TlsOptions, TlsSwitch};
use crate::storage::resolve::{ConflictResolver, PythonOptions, PythonResolver};
use crate::storage::Storage;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Why a zeoraid did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid, or something it names (a file, a
    /// certificate, a storage) cannot be used: fix the configuration.
    #[error("{0}")]
    Config(String),
    /// The configuration is fine but the host refused (the port is taken,
    /// a signal handler cannot be installed): fix the host.
    #[error("{0}")]
    Host(String),
}

impl StartError {
    /// The exit status `zeoraid serve` uses: 2 for the configuration, 1
    /// for the host.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) => 2,
            StartError::Host(_) => 1,
        }
    }
}

impl From<ConfigError> for StartError {
    fn from(e: ConfigError) -> StartError {
        StartError::Config(e.to_string())
    }
}

/// Asks a running [`Zeoraid`] to stop; cheap to clone and send to other
/// threads.
#[derive(Clone, Default)]
pub struct Stopper(Arc<(Mutex<bool>, Condvar)>);

impl Stopper {
    /// Ask for the stop; [`Zeoraid::join`] returns once it is done.
    pub fn stop(&self) {
        let (m, cv) = &*self.0;
        *crate::locks::lock(m) = true;
        cv.notify_all();
    }

    /// Has a stop been asked for?
    pub fn is_stopped(&self) -> bool {
        *crate::locks::lock(&self.0 .0)
    }

    /// Wait up to `timeout` for a stop; true when one was asked for.
    pub fn wait(&self, timeout: Duration) -> bool {
        let (m, cv) = &*self.0;
        let g = crate::locks::lock(m);
        let (g, _) = cv
            .wait_timeout_while(g, timeout, |stopped| !*stopped)
            .unwrap_or_else(|p| p.into_inner());
        *g
    }
}

/// A running zeoraid.
///
/// ```
/// use zeoraid::config::{Config, StorageConfig};
/// use zeoraid::Zeoraid;
///
/// let mut cfg = Config::default();
/// cfg.server.listen = "127.0.0.1:0".into(); // a free port
/// cfg.server.workers = Some(2);
/// cfg.storage.push(StorageConfig::memory("1"));
/// let zeoraid = Zeoraid::start(&cfg).expect("started");
/// println!("ZEO clients connect to {}", zeoraid.local_addr());
///
/// // Another thread (a signal handler, a UI) may ask it to stop:
/// let stopper = zeoraid.stopper();
/// std::thread::spawn(move || stopper.stop());
/// zeoraid.join(); // returns once stopped: clients closed, storages closed
/// ```
pub struct Zeoraid {
    server: Server,
    /// The `[ha]` it was started with (a reload refuses to change it).
    ha_config: Option<crate::config::ha::HaConfig>,
    /// The HA controller thread, with `[ha]`.
    controller: Option<crate::ha::controller::Controller>,
    #[cfg(feature = "admin")]
    admin: Option<crate::admin::Admin>,
    storages: Vec<(String, Opened)>,
    /// Kept until the server is shut down (its thread and helper end then).
    _resolver: Option<Arc<PythonResolver>>,
    config_file: Option<PathBuf>,
    stopper: Stopper,
}

impl Zeoraid {
    /// Open the storages `config` describes and start serving them.
    /// Relative paths are taken as they are (relative to the process's
    /// working directory); [`Zeoraid::start_file`] takes them relative to
    /// the file.
    pub fn start(config: &Config) -> Result<Zeoraid, StartError> {
        config.check()?;
        Zeoraid::start_checked(config, None)
    }

    /// Read, validate and serve a TOML config file, as `zeoraid serve`
    /// does; with it, [`Zeoraid::reload`] re-reads the file.
    pub fn start_file(path: &Path, listen: Option<&str>) -> Result<Zeoraid, StartError> {
        let mut config = Config::load(path)?;
        if let Some(l) = listen {
            config.server.listen = l.to_string();
            config.check()?;
        }
        Zeoraid::start_checked(&config, Some(path))
    }

    fn start_checked(cfg: &Config, file: Option<&Path>) -> Result<Zeoraid, StartError> {
        let within = |e: String| match file {
            Some(p) => StartError::Config(format!("{e} (in {})", p.display())),
            None => StartError::Config(e),
        };
        // Controller HA: etcd must answer, and no live controller may hold
        // the leader key under this name, before anything listens.
        let ha = match &cfg.ha {
            None => None,
            Some(h) => {
                let settings = crate::ha::controller::Settings {
                    endpoints: h.endpoints.clone(),
                    cluster: h.cluster.clone(),
                    name: h.name.clone(),
                    lease_ttl: h.lease_ttl(),
                    renew_interval: h.renew_interval(),
                };
                let election = crate::ha::controller::preflight(&settings).map_err(|e| {
                    StartError::Host(match file {
                        Some(p) => format!("{e} (in {})", p.display()),
                        None => e,
                    })
                })?;
                Some((settings, election))
            }
        };
        // A write past the file-size limit (RLIMIT_FSIZE) must fail that
        // commit with EFBIG, like a full disk, instead of killing the
        // process.
        signal_hook::flag::register(
            signal_hook::consts::SIGXFSZ,
            Arc::new(std::sync::atomic::AtomicBool::new(false)),
        )
        .map_err(|e| StartError::Host(format!("cannot install the SIGXFSZ handler: {e}")))?;
        let listen = crate::config::parse_listen(&cfg.server.listen, None)
            .map_err(|e| within(format!("listen address {e}")))?;
        let socket_mode = cfg
            .server
            .socket_mode
            .as_deref()
            .and_then(|m| crate::net::unix::parse_mode(m).ok());
        let tls = match &cfg.server.tls {
            None => None,
            Some(t) => {
                let loaded = crate::net::tls::load_server(&t.files())
                    .map_err(|e| within(format!("{e} (set in [server.tls])")))?;
                Some(TlsOptions {
                    info: TlsInfo::of(&loaded),
                    config: loaded.config,
                    handshake_timeout: Duration::from_secs_f64(t.handshake_timeout),
                })
            }
        };
        #[cfg(feature = "admin")]
        let admin_token = cfg
            .admin
            .as_ref()
            .map(|a| a.token())
            .transpose()
            .map_err(within)?
            .flatten();
        let mut served: Vec<Served> = Vec::new();
        let mut opened_all: Vec<(String, Opened)> = Vec::new();
        for s in &cfg.storage {
            // With `[ha]` another controller may lead: arrays open standing
            // by (no writes until this one fences, and the backends' new
            // transactions are the leader's).
            let opened = crate::open::open_served_as(s, ha.is_some())
                .map_err(|e| within(format!("cannot open storage {:?}: {e}", s.name)))?;
            opened_all.push((s.name.clone(), opened.clone()));
            served.push((s.name.clone(), opened.storage, s.read_only));
        }
        let resolver = match &cfg.conflict_resolution {
            None => None,
            Some(r) => {
                let resolver = PythonResolver::start(PythonOptions {
                    python: r.python.clone(),
                    path: r.path.clone(),
                    timeout: Duration::from_secs_f64(r.timeout),
                })
                .map_err(|e| within(e.to_string()))?;
                let resolver = Arc::new(resolver);
                for (_, storage, _) in &served {
                    storage.set_conflict_resolver(resolver.clone());
                }
                log::info!(
                    "conflict resolution on the server (store conflicts and undo) through {}",
                    r.python.display()
                );
                Some(resolver)
            }
        };
        let opts = Options {
            listen: listen.clone(),
            tls,
            socket_mode,
            max_blob_size: cfg.server.max_blob_size,
            workers: cfg.workers(),
            max_frame: cfg.server.max_frame_size,
            invalidation_queue_size: cfg.server.invalidation_queue_size,
            transaction_timeout: cfg.server.transaction_timeout.map(Duration::from_secs_f64),
            conflict_resolver: resolver.clone().map(|r| r as Arc<dyn ConflictResolver>),
        };
        let storages = opened_all;
        let started = match &ha {
            None => Server::start(opts, served),
            Some((s, _)) => Server::start_standby(
                opts,
                served,
                crate::ha::controller::refusal(
                    &s.name,
                    &s.cluster,
                    &crate::ha::role::Role::Standby { leader: None },
                ),
                crate::status::HaStatus {
                    controller: s.name.clone(),
                    cluster: s.cluster.clone(),
                    role: "standby".into(),
                    ..Default::default()
                },
            ),
        };
        let server = started.map_err(|e| {
            StartError::Host(format!(
                "cannot listen on {listen}: {e} (is another server using it? set server.listen{})",
                file.map(|p| format!(" in {}", p.display()))
                    .unwrap_or_default()
            ))
        })?;
        let controller = match ha {
            None => None,
            Some((settings, election)) => {
                let arrays = storages
                    .iter()
                    .filter_map(|(n, o)| o.array.clone().map(|a| (n.clone(), a)))
                    .collect();
                match crate::ha::controller::Controller::start(
                    settings,
                    election,
                    arrays,
                    server.serving(),
                ) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        server.shutdown();
                        return Err(StartError::Host(format!(
                            "cannot start the HA controller thread: {e}"
                        )));
                    }
                }
            }
        };
        #[cfg(feature = "admin")]
        let admin = match &cfg.admin {
            None => None,
            Some(a) => match crate::admin::Admin::start(
                &a.listen,
                admin_token,
                server.status_source(),
                storages.clone(),
                file.map(Path::to_path_buf),
                server.tls_switch(),
                controller
                    .as_ref()
                    .zip(cfg.ha.clone())
                    .map(|(c, config)| crate::admin::HaAccess {
                        handle: c.handle(),
                        config,
                    }),
            ) {
                Ok(admin) => Some(admin),
                Err(e) => {
                    if let Some(c) = controller {
                        c.shutdown();
                    }
                    server.shutdown();
                    return Err(StartError::Host(match file {
                        Some(p) => format!("{e} (in {})", p.display()),
                        None => e,
                    }));
                }
            },
        };
        Ok(Zeoraid {
            server,
            ha_config: cfg.ha.clone(),
            controller,
            #[cfg(feature = "admin")]
            admin,
            storages,
            _resolver: resolver,
            config_file: file.map(Path::to_path_buf),
            stopper: Stopper::default(),
        })
    }

    /// Where ZEO clients connect: a TCP address or a Unix socket path.
    pub fn listening(&self) -> &Listen {
        self.server().listening()
    }

    /// The TCP address the ZEO listener is bound to (with port 0 in the
    /// config, the port the system picked). For a Unix socket listener,
    /// an unspecified address.
    pub fn local_addr(&self) -> SocketAddr {
        self.server().local_addr()
    }

    /// Where the admin listener is bound, when there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        #[cfg(feature = "admin")]
        return self.admin.as_ref().map(|a| a.local_addr());
        #[cfg(not(feature = "admin"))]
        None
    }

    /// A served storage by name: the same object the server serves, so an
    /// embedder can use it in-process (see [`crate::storage::Storage`]).
    pub fn storage(&self, name: &str) -> Option<Arc<dyn Storage>> {
        self.storages
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.storage.clone())
    }

    /// The names of the served storages, in config order.
    pub fn storage_names(&self) -> Vec<String> {
        self.storages.iter().map(|(n, _)| n.clone()).collect()
    }

    /// A handle that stops this zeoraid from any thread.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Re-read the config file this zeoraid was started from and apply it
    /// to the running arrays (as SIGHUP and `zeoraid ctl reload` do);
    /// returns what changed. One started from a value has no file.
    pub fn reload(&self) -> Result<Vec<String>, String> {
        let running: HashMap<String, Opened> = self.storages.iter().cloned().collect();
        crate::admin::reload(
            self.config_file.as_deref(),
            &running,
            self.tls_switch().as_ref(),
            self.ha_config.as_ref(),
        )
    }

    /// A probe of whether the event loop and the workers still turn (the
    /// systemd watchdog's evidence, see `notify`).
    #[doc(hidden)]
    pub fn liveness(&self) -> crate::server::Liveness {
        self.server().liveness()
    }

    /// A handle that reads every served storage's status document.
    #[doc(hidden)]
    pub fn status_source(&self) -> crate::server::StatusSource {
        self.server().status_source()
    }

    fn tls_switch(&self) -> Option<TlsSwitch> {
        self.server().tls_switch()
    }

    fn server(&self) -> &Server {
        &self.server
    }

    /// Block until [`Stopper::stop`] is called, then stop.
    pub fn join(self) {
        while !self.stopper.wait(Duration::from_secs(3600)) {}
        self.shutdown();
    }

    /// Stop now: the HA controller (a leader closes its clients and
    /// resigns), the admin listener, then the server (clients are
    /// disconnected, in-flight transactions aborted, worker threads
    /// joined), then the storages (files closed, arrays' threads joined).
    pub fn shutdown(self) {
        self.stopper.stop();
        // A leader closes its clients and resigns first, so a standby
        // takes over while this one winds down.
        if let Some(c) = self.controller {
            c.shutdown();
        }
        #[cfg(feature = "admin")]
        if let Some(a) = self.admin {
            a.shutdown();
        }
        self.server.shutdown();
    }
}
