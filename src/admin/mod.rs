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
//!
//! Reads need no token; with `token-file` configured, every change needs
//! `Authorization: Bearer TOKEN` (compared in constant time; a refusal is
//! 401 and logged with the peer's address). Requests are served by a few
//! named worker threads (a verify may take a while), joined at shutdown.

pub mod ctl;
pub mod status;

use crate::server::{StatusSource, TlsInfo, TlsSwitch};

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
use crate::storage::Storage;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Admin worker threads (a long verify occupies one).
const WORKERS: usize = 3;

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
                 /recover|verify|disable|add|remove/STORAGE/BACKEND, /reload)"
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

/// The running admin listener.
pub struct Admin {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

struct Context {
    status: StatusSource,
    storages: HashMap<String, Arc<dyn Storage>>,
    token: Option<String>,
    /// The config file the server runs from (reload, and what `details`
    /// compares the running arrays with).
    config: Option<std::path::PathBuf>,
    /// The listener's TLS configuration, re-read on reload.
    tls: Option<TlsSwitch>,
}

impl Admin {
    /// Listen on `listen` and serve until [`Admin::shutdown`].
    pub fn start(
        listen: &str,
        token: Option<String>,
        status: StatusSource,
        storages: Vec<(String, Arc<dyn Storage>)>,
        config: Option<std::path::PathBuf>,
        tls: Option<TlsSwitch>,
    ) -> Result<Admin, String> {
        let server = tiny_http::Server::http(listen).map_err(|e| {
            format!("cannot listen on {listen} for the admin interface: {e} (set [admin] listen)")
        })?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| "the admin listener has no IP address".to_string())?;
        let server = Arc::new(server);
        let ctx = Arc::new(Context {
            status,
            storages: storages.into_iter().collect(),
            token,
            config,
            tls,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for n in 0..WORKERS {
            let (server, ctx, stop) = (server.clone(), ctx.clone(), stop.clone());
            let t = std::thread::Builder::new()
                .name(format!("zeoraid-admin-{n}"))
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        match server.recv_timeout(Duration::from_millis(200)) {
                            Ok(Some(req)) => serve(&ctx, req),
                            Ok(None) => {}
                            Err(e) => {
                                log::warn!("admin listener: {e}");
                                std::thread::sleep(Duration::from_millis(100));
                            }
                        }
                    }
                })
                .map_err(|e| format!("cannot start an admin thread: {e}"))?;
            threads.push(t);
        }
        log::info!("admin interface on http://{addr} (GET /status, /details, /metrics)");
        Ok(Admin {
            addr,
            stop,
            threads,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop serving and join the threads.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                log::error!("an admin thread panicked (a zeoraid bug)");
            }
        }
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn json_response(
    code: u16,
    v: &serde_json::Value,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let mut r = tiny_http::Response::from_string(format!("{v}\n")).with_status_code(code);
    if let Ok(h) = tiny_http::Header::from_bytes("Content-Type", "application/json") {
        r.add_header(h);
    }
    r
}

fn error(code: u16, message: &str) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    json_response(code, &serde_json::json!({ "error": message }))
}

fn serve(ctx: &Context, req: tiny_http::Request) {
    let peer = req
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "?".into());
    let response = match route(req.method().as_str(), req.url()) {
        Err((code, msg)) => error(code, &msg),
        Ok(r) if r.changes() && !authorized(ctx, &req) => {
            log::warn!(
                "admin: refused {} {} from {peer}: missing or wrong token",
                req.method(),
                req.url()
            );
            error(
                401,
                "this request changes the array and needs the admin token: send \
                 `Authorization: Bearer TOKEN` (zeoraid ctl --token-file FILE)",
            )
        }
        Ok(r) => {
            if r.changes() {
                log::info!("admin: {} {} from {peer}", req.method(), req.url());
            }
            answer(ctx, r)
        }
    };
    if let Err(e) = req.respond(response) {
        log::debug!("admin: could not answer {peer}: {e}");
    }
}

fn authorized(ctx: &Context, req: &tiny_http::Request) -> bool {
    let Some(expected) = &ctx.token else {
        return true;
    };
    req.headers()
        .iter()
        .filter(|h| h.field.equiv("Authorization"))
        .filter_map(|h| h.value.as_str().strip_prefix("Bearer "))
        .any(|t| token_matches(t.trim().as_bytes(), expected.as_bytes()))
}

fn answer(ctx: &Context, r: Route) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let doc = || ctx.status.document();
    let array = |storage: &str| -> Result<&crate::raid::RaidStorage, String> {
        let s = ctx.storages.get(storage).ok_or_else(|| {
            format!(
                "no storage {storage:?} (storages: {})",
                ctx.storages.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        s.as_raid()
            .ok_or_else(|| format!("storage {storage:?} is not a RAID array"))
    };
    match r {
        Route::Status => match status::health(&doc()) {
            Ok((state, line)) => {
                let doc = doc();
                let (code, line) = match status::offsite_check(&doc) {
                    Some(check) => status::with_certificate((state.exit_code(), line), check),
                    None => (state.exit_code(), line),
                };
                let (code, line) = match ctx.tls.as_ref().map(TlsSwitch::info) {
                    Some(TlsInfo {
                        certificate,
                        not_after: Some(not_after),
                    }) => status::with_certificate(
                        (code, line),
                        status::certificate_health(
                            &certificate.display().to_string(),
                            not_after,
                            now_unix(),
                        ),
                    ),
                    _ => (code, line),
                };
                json_response(
                    200,
                    &serde_json::json!({"state": state.label(), "line": line, "code": code}),
                )
            }
            Err(e) => error(500, &e),
        },
        Route::Details => json_response(200, &with_config_diff(ctx, doc())),
        Route::Metrics => {
            let mut text = status::prometheus(&doc());
            if let Some(TlsInfo {
                certificate,
                not_after: Some(t),
            }) = ctx.tls.as_ref().map(TlsSwitch::info)
            {
                text.push_str(&status::certificate_metric(
                    &certificate.display().to_string(),
                    t,
                ));
            }
            let mut resp = tiny_http::Response::from_string(text);
            if let Ok(h) = tiny_http::Header::from_bytes(
                "Content-Type",
                "text/plain; version=0.0.4; charset=utf-8",
            ) {
                resp.add_header(h);
            }
            resp
        }
        Route::Recover {
            storage,
            backend,
            force,
        } => match array(&storage).and_then(|a| a.request_recovery(&backend, force)) {
            Ok(()) => json_response(
                202,
                &serde_json::json!({"recovering": backend, "storage": storage, "force": force}),
            ),
            Err(e) => error(409, &e),
        },
        Route::Verify { storage, backend } => {
            match array(&storage).and_then(|a| a.verify(&backend)) {
                Ok(rep) => json_response(200, &rep.to_json()),
                Err(e) => error(409, &e),
            }
        }
        Route::Add { storage, backend } => {
            let mut backend = *backend;
            if let (Some(p), Some(cfg)) = (&backend.path, &ctx.config) {
                if p.is_relative() {
                    let base = cfg.parent().unwrap_or(std::path::Path::new(""));
                    backend.path = Some(base.join(p));
                }
            }
            let name = backend.name.clone();
            let spec = crate::open::backend_spec(&storage, &backend);
            match array(&storage).and_then(|a| a.add_backend(spec, backend)) {
                Ok(()) => {
                    json_response(200, &serde_json::json!({"added": name, "storage": storage}))
                }
                Err(e) => error(409, &e),
            }
        }
        Route::Remove { storage, backend } => {
            match array(&storage).and_then(|a| a.remove_backend(&backend)) {
                Ok(()) => json_response(
                    200,
                    &serde_json::json!({"removed": backend, "storage": storage}),
                ),
                Err(e) => error(409, &e),
            }
        }
        Route::Reload => match reload(ctx.config.as_deref(), &ctx.storages, ctx.tls.as_ref()) {
            Ok(changes) => json_response(200, &serde_json::json!({ "changes": changes })),
            Err(e) => error(409, &e),
        },
        Route::Disable { storage, backend } => {
            match array(&storage).and_then(|a| a.disable(&backend)) {
                Ok(()) => json_response(
                    200,
                    &serde_json::json!({"disabled": backend, "storage": storage}),
                ),
                Err(e) => error(409, &e),
            }
        }
    }
}

/// Re-read the config file and apply it to the running storages (see
/// [`crate::open::reload`]); a file that does not parse or validate
/// changes nothing.
pub fn reload(
    config: Option<&std::path::Path>,
    storages: &HashMap<String, Arc<dyn Storage>>,
    tls: Option<&TlsSwitch>,
) -> Result<Vec<String>, String> {
    let path = config.ok_or("this zeoraid was started without a config file to reload")?;
    let cfg = crate::config::Config::load(path).map_err(|e| format!("{e}; nothing was changed"))?;
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
    let running: Vec<(String, Arc<dyn Storage>)> = storages
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

/// The status document with, per array, how the running backends differ
/// from the config file's (a restart would go by the file and the state
/// file's additions and removals).
fn with_config_diff(ctx: &Context, mut doc: serde_json::Value) -> serde_json::Value {
    let Some(cfg) = ctx
        .config
        .as_deref()
        .and_then(|p| crate::config::Config::load(p).ok())
    else {
        return doc;
    };
    for (name, storage) in &ctx.storages {
        let (Some(raid), Some(s)) = (
            storage.as_raid(),
            cfg.storage.iter().find(|s| &s.name == name),
        ) else {
            continue;
        };
        let (sync, _) = crate::raid::members::split_modes(&s.backend);
        let (add, remove) = crate::raid::members::diff(&raid.backend_names(), &sync);
        if add.is_empty() && remove.is_empty() {
            continue;
        }
        if let Some(r) = doc.get_mut(name).and_then(|d| d.get_mut("raid")) {
            r["differs-from-config"] = serde_json::json!({
                "only-running": remove,
                "only-in-config": add.iter().map(|b| b.name.clone()).collect::<Vec<_>>(),
            });
        }
    }
    doc
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
