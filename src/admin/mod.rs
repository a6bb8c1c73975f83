//! The admin listener: HTTP/1.1 + JSON on its own port (`[admin] listen`),
//! separate from the ZEO port, so no ZEO client can change the array.
//! `curl` and Prometheus work without our tool; `zeoraid ctl`
//! ([`ctl`]) is its client.
//!
//! | request | what |
//! |---|---|
//! | `GET /status` | `{state, line, code}`: the health ([`status::health`]) |
//! | `GET /details` | the status document (as `ruok`) |
//! | `GET /metrics` | Prometheus text ([`status::prometheus`]) |
//! | `POST /recover/STORAGE/BACKEND[?force=true]` | ask for a recovery (202) |
//! | `POST /verify/STORAGE/BACKEND` | verify now, answer the result |
//! | `POST /disable/STORAGE/BACKEND` | take a backend out |
//! | `POST /add/STORAGE/BACKEND?kind=zeo&address=H:P[&storage=S]` or `?kind=file&path=P` | add a backend |
//! | `POST /remove/STORAGE/BACKEND` | remove a backend |
//! | `POST /reload` | apply the config file (as SIGHUP does) |
//! | `POST /ha/switchover[?to=NAME]` | `[ha]` leader: hand leadership over |
//! | `POST /ha/failover` | `[ha]` standby: take over from a leader that is gone |
//!
//! Reads need no token; with `token-file` configured, every change needs
//! `Authorization: Bearer TOKEN` (compared in constant time; a refusal is
//! 401 and logged with the peer's address). Requests are served by a few
//! named worker threads (a verify may take a while), joined at shutdown.

pub mod ctl;
#[cfg(feature = "admin")]
mod http;
pub mod status;

#[cfg(feature = "admin")]
pub use http::{Admin, HaAccess};

use crate::open::Opened;
use crate::server::TlsSwitch;
use std::collections::HashMap;

/// What a request asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Route {
    Status,
    Details,
    Metrics,
    Recover {
        storage: String,
        backend: String,
        force: bool,
    },
    Verify {
        storage: String,
        backend: String,
    },
    Disable {
        storage: String,
        backend: String,
    },
    Add {
        storage: String,
        backend: Box<crate::config::BackendConfig>,
    },
    Remove {
        storage: String,
        backend: String,
    },
    Reload,
    /// `[ha]`: the leader hands over (to `to`, if named).
    Switchover {
        to: Option<String>,
    },
    /// `[ha]`: a standby takes over from a leader that is gone.
    Failover,
}

/// The backend an `add` request describes (its query string).
fn backend_of(name: &str, query: &str) -> Result<crate::config::BackendConfig, (u16, String)> {
    use crate::config::{BackendConfig, BackendKind};
    let get = |key: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| percent_decode(v))
    };
    let kind = match get("kind").as_deref() {
        Some("zeo") => BackendKind::Zeo,
        Some("file") => BackendKind::File,
        Some("memory") => BackendKind::Memory,
        other => {
            return Err((
                400,
                format!(
                    "add needs kind=zeo|file|memory, not {:?}",
                    other.unwrap_or("")
                ),
            ))
        }
    };
    let b = BackendConfig {
        name: name.to_string(),
        kind,
        address: get("address"),
        storage: get("storage"),
        path: get("path").map(std::path::PathBuf::from),
        sync: get("sync").as_deref() != Some("false"),
        pack_gc: get("pack-gc").as_deref() != Some("false"),
        blob_dir: get("blob-dir").map(std::path::PathBuf::from),
        tls: {
            let t = crate::config::BackendTlsConfig {
                ca: get("tls-ca").map(std::path::PathBuf::from),
                certificate: get("tls-certificate").map(std::path::PathBuf::from),
                key: get("tls-key").map(std::path::PathBuf::from),
                server_hostname: get("tls-server-hostname"),
            };
            (get("tls").as_deref() == Some("true") || t != Default::default()).then_some(t)
        },
        mode: Default::default(),
        max_lag: None,
        queue_transactions: None,
        queue_megabytes: None,
    };
    match kind {
        BackendKind::Zeo if b.address.is_none() => {
            Err((400, "a zeo backend needs address=HOST:PORT".into()))
        }
        BackendKind::File if b.path.is_none() => {
            Err((400, "a file backend needs path=PATH".into()))
        }
        _ => Ok(b),
    }
}

/// Undo `zeoraid ctl`'s percent-encoding of a query value (pure); a
/// malformed escape is kept as it is.
fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Route {
    /// Whether the request changes something (needs the token).
    pub fn changes(&self) -> bool {
        !matches!(self, Route::Status | Route::Details | Route::Metrics)
    }
}

/// The route of `method url`, or the HTTP status and message to refuse it.
pub fn route(method: &str, url: &str) -> Result<Route, (u16, String)> {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let read = |r: Route| {
        if method == "GET" || method == "HEAD" {
            Ok(r)
        } else {
            Err((405, format!("{path} is read with GET")))
        }
    };
    let change = |r: Route| {
        if method == "POST" {
            Ok(r)
        } else {
            Err((405, format!("{path} changes the array: use POST")))
        }
    };
    let force = query
        .split('&')
        .any(|kv| kv == "force" || kv == "force=true" || kv == "force=1");
    match parts.as_slice() {
        ["reload"] => change(Route::Reload),
        ["ha", "switchover"] => change(Route::Switchover {
            to: query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == "to")
                .map(|(_, v)| percent_decode(v))
                .filter(|v| !v.is_empty()),
        }),
        ["ha", "failover"] => change(Route::Failover),
        ["status"] => read(Route::Status),
        ["details"] => read(Route::Details),
        ["metrics"] => read(Route::Metrics),
        [action, storage, backend] if !storage.is_empty() && !backend.is_empty() => {
            let (storage, backend) = (storage.to_string(), backend.to_string());
            match *action {
                "recover" => change(Route::Recover {
                    storage,
                    backend,
                    force,
                }),
                "verify" => change(Route::Verify { storage, backend }),
                "disable" => change(Route::Disable { storage, backend }),
                "remove" => change(Route::Remove { storage, backend }),
                "add" => {
                    let b = backend_of(&backend, query)?;
                    change(Route::Add {
                        storage,
                        backend: Box::new(b),
                    })
                }
                _ => Err((404, format!("no such request: {path}"))),
            }
        }
        _ => Err((
            404,
            format!(
                "no such request: {path} (GET /status, /details, /metrics; POST \
                 /recover|verify|disable|add|remove/STORAGE/BACKEND, /reload, \
                 /ha/switchover, /ha/failover)"
            ),
        )),
    }
}

/// Constant-time comparison of a presented token with the configured one.
pub fn token_matches(presented: &[u8], expected: &[u8]) -> bool {
    if presented.len() != expected.len() {
        return false;
    }
    presented
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Re-read the config file and apply it to the running storages (see
/// [`crate::open::reload`]); a file that does not parse or validate
/// changes nothing.
pub fn reload(
    config: Option<&std::path::Path>,
    storages: &HashMap<String, Opened>,
    tls: Option<&TlsSwitch>,
    ha: Option<&crate::config::ha::HaConfig>,
) -> Result<Vec<String>, String> {
    let path = config.ok_or("this zeoraid was started without a config file to reload")?;
    let cfg = crate::config::Config::load(path).map_err(|e| format!("{e}; nothing was changed"))?;
    if let Some(why) = crate::config::ha::reload_refusal(ha, cfg.ha.as_ref()) {
        return Err(format!("{}: {why}", path.display()));
    }
    // Certificates are read before anything changes, applied after.
    let new_tls = match (&cfg.server.tls, tls) {
        (Some(t), Some(_)) => Some(
            crate::net::tls::load_server(&t.files())
                .map_err(|e| format!("{e}; nothing was changed"))?,
        ),
        (None, None) => None,
        _ => {
            return Err(format!(
                "{}: turning TLS on or off needs a restart; nothing was changed",
                path.display()
            ))
        }
    };
    let running: Vec<(String, Opened)> = storages
        .iter()
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect();
    let mut changes = crate::open::reload(&cfg, &running)?;
    if let (Some(new), Some(switch)) = (new_tls, tls) {
        changes.push(format!(
            "TLS certificate {} re-read{}",
            new.files.certificate.display(),
            new.not_after
                .map(|t| format!(" (valid until {})", crate::net::tls::format_utc(t)))
                .unwrap_or_default()
        ));
        switch.replace(new);
    }
    log::info!(
        "reloaded {}: {}",
        path.display(),
        if changes.is_empty() {
            "nothing to change".to_string()
        } else {
            changes.join("; ")
        }
    );
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_table() {
        let rec = |force| Route::Recover {
            storage: "1".into(),
            backend: "b".into(),
            force,
        };
        let cases: Vec<(&str, &str, Result<Route, u16>)> = vec![
            ("GET", "/status", Ok(Route::Status)),
            ("GET", "/details", Ok(Route::Details)),
            ("GET", "/metrics", Ok(Route::Metrics)),
            ("GET", "/metrics/", Ok(Route::Metrics)),
            ("POST", "/status", Err(405)),
            ("POST", "/ha/switchover", Ok(Route::Switchover { to: None })),
            (
                "POST",
                "/ha/switchover?to=ctl-b",
                Ok(Route::Switchover {
                    to: Some("ctl-b".into()),
                }),
            ),
            (
                "POST",
                "/ha/switchover?to=",
                Ok(Route::Switchover { to: None }),
            ),
            ("GET", "/ha/switchover", Err(405)),
            ("POST", "/ha/failover", Ok(Route::Failover)),
            ("POST", "/ha/elect", Err(404)),
            ("POST", "/recover/1/b", Ok(rec(false))),
            ("POST", "/recover/1/b?force=true", Ok(rec(true))),
            ("POST", "/recover/1/b?force", Ok(rec(true))),
            ("POST", "/recover/1/b?force=no", Ok(rec(false))),
            ("GET", "/recover/1/b", Err(405)),
            (
                "POST",
                "/verify/1/b",
                Ok(Route::Verify {
                    storage: "1".into(),
                    backend: "b".into(),
                }),
            ),
            (
                "POST",
                "/disable/1/b",
                Ok(Route::Disable {
                    storage: "1".into(),
                    backend: "b".into(),
                }),
            ),
            ("POST", "/explode/1/b", Err(404)),
            ("POST", "/reload", Ok(Route::Reload)),
            ("GET", "/reload", Err(405)),
            (
                "POST",
                "/remove/1/b",
                Ok(Route::Remove {
                    storage: "1".into(),
                    backend: "b".into(),
                }),
            ),
            ("POST", "/add/1/c?kind=zeo", Err(400)),
            ("POST", "/add/1/c?kind=file", Err(400)),
            ("POST", "/add/1/c?kind=tape&path=x", Err(400)),
            ("POST", "/add/1/c", Err(400)),
            ("POST", "/recover/1", Err(404)),
            ("POST", "/recover//b", Err(404)),
            ("GET", "/", Err(404)),
        ];
        for (method, url, want) in cases {
            let got = route(method, url).map_err(|(c, _)| c);
            assert_eq!(got, want, "{method} {url}");
        }
        assert!(!Route::Status.changes() && rec(false).changes());
        for (raw, want) in [
            ("/srv/a b/Data.fs", "/srv/a b/Data.fs"),
            ("/srv/a%20b/%C3%A9.fs", "/srv/a b/\u{e9}.fs"),
            ("100%", "100%"),
            ("%zz", "%zz"),
        ] {
            assert_eq!(percent_decode(raw), want, "{raw}");
        }
        match route("POST", "/add/1/c?kind=zeo&address=127.0.0.1:9&storage=2") {
            Ok(Route::Add { storage, backend }) => {
                assert_eq!(storage, "1");
                assert_eq!(backend.name, "c");
                assert_eq!(backend.address.as_deref(), Some("127.0.0.1:9"));
                assert_eq!(backend.storage.as_deref(), Some("2"));
            }
            other => panic!("{other:?}"),
        }
        match route("POST", "/add/1/d?kind=file&path=d/Data.fs&sync=false") {
            Ok(Route::Add { backend, .. }) => {
                assert_eq!(
                    backend.path.as_deref(),
                    Some(std::path::Path::new("d/Data.fs"))
                );
                assert!(!backend.sync);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches(b"s3cret", b"s3cret"));
        assert!(!token_matches(b"s3cre", b"s3cret"));
        assert!(!token_matches(b"s3cret!", b"s3cret"));
        assert!(!token_matches(b"S3cret", b"s3cret"));
        assert!(!token_matches(b"", b"s3cret"));
    }
}
