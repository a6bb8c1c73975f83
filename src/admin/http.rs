//! The admin HTTP listener itself (cargo feature `admin`): a few named
//! worker threads answering [`Route`]s over tiny_http, joined at shutdown.

use super::{reload, route, status, token_matches, Route};
use crate::open::Opened;
use crate::server::{StatusSource, TlsInfo, TlsSwitch};
use crate::status::Document;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Admin worker threads (a long verify occupies one).
const WORKERS: usize = 3;

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The running admin listener.
pub struct Admin {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

struct Context {
    status: StatusSource,
    storages: HashMap<String, Opened>,
    token: Option<String>,
    /// The config file the server runs from (reload, and what `details`
    /// compares the running arrays with).
    config: Option<std::path::PathBuf>,
    /// The listener's TLS configuration, re-read on reload.
    tls: Option<TlsSwitch>,
    /// The HA controller (with `[ha]`), for switchover, failover and
    /// reload.
    ha: Option<HaAccess>,
}

/// What the admin listener reaches of the HA controller (with `[ha]`): its
/// requests (switchover, failover) and the `[ha]` it runs with, which a
/// reload compares the file's with.
pub struct HaAccess {
    pub handle: crate::ha::controller::Handle,
    pub config: crate::config::ha::HaConfig,
}

impl Admin {
    /// Listen on `listen` and serve until [`Admin::shutdown`].
    pub fn start(
        listen: &str,
        token: Option<String>,
        status: StatusSource,
        storages: Vec<(String, Opened)>,
        config: Option<std::path::PathBuf>,
        tls: Option<TlsSwitch>,
        ha: Option<HaAccess>,
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
            ha,
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
    v: &impl serde::Serialize,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let text = serde_json::to_string(v)
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot write the answer as JSON: {e}\"}}"));
    let mut r = tiny_http::Response::from_string(format!("{text}\n")).with_status_code(code);
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
        s.array
            .as_deref()
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
                    &crate::status::Health {
                        state: state.into(),
                        line,
                        code,
                    },
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
            if let Some(cfg) = &ctx.config {
                // Relative paths are relative to the config file, as in it.
                let base = cfg.parent().unwrap_or(std::path::Path::new(""));
                for p in [&mut backend.path, &mut backend.blob_dir] {
                    if let Some(rel) = p.as_ref().filter(|p| p.is_relative()) {
                        *p = Some(base.join(rel));
                    }
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
        Route::Reload => match reload(
            ctx.config.as_deref(),
            &ctx.storages,
            ctx.tls.as_ref(),
            ctx.ha.as_ref().map(|h| &h.config),
        ) {
            Ok(changes) => json_response(200, &serde_json::json!({ "changes": changes })),
            Err(e) => error(409, &e),
        },
        Route::Switchover { to } => ha_request(ctx, |h| h.switchover(to)),
        Route::Failover => ha_request(ctx, |h| h.failover()),
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

/// Ask the HA controller something: 200 with its answer, 409 with why
/// not, 404 without `[ha]`.
fn ha_request(
    ctx: &Context,
    ask: impl FnOnce(&crate::ha::controller::Handle) -> Result<String, String>,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    match &ctx.ha {
        None => error(
            404,
            "this zeoraid runs without [ha]: there is no other controller to hand over to",
        ),
        Some(h) => match ask(&h.handle) {
            Ok(done) => json_response(200, &serde_json::json!({ "done": done })),
            Err(e) => error(409, &e),
        },
    }
}

/// The status document with, per array, how the running backends differ
/// from the config file's (a restart would go by the file and the state
/// file's additions and removals).
fn with_config_diff(ctx: &Context, mut doc: Document) -> Document {
    let Some(cfg) = ctx
        .config
        .as_deref()
        .and_then(|p| crate::config::Config::load(p).ok())
    else {
        return doc;
    };
    for (name, opened) in &ctx.storages {
        let (Some(raid), Some(s)) = (
            opened.array.as_deref(),
            cfg.storage.iter().find(|s| &s.name == name),
        ) else {
            continue;
        };
        let (sync, _) = crate::open::members::split_modes(&s.backend);
        let (add, remove) = crate::open::members::diff(&raid.backend_names(), &sync);
        if add.is_empty() && remove.is_empty() {
            continue;
        }
        if let Some(r) = doc.get_mut(name).and_then(|d| d.raid.as_mut()) {
            r.differs_from_config = Some(crate::status::ConfigDiff {
                only_running: remove,
                only_in_config: add.iter().map(|b| b.name.clone()).collect(),
            });
        }
    }
    doc
}
