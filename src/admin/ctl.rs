//! `zeoraid ctl`: the admin listener's client. Human output by default,
//! `--json` for scripts; `status` exits with Nagios codes (0 OK, 1
//! WARNING recovering, 2 CRITICAL degraded or failed, 3 UNKNOWN when
//! zeoraid cannot be reached or answers nonsense).

use super::status::{self, UNKNOWN};
use crate::config::{Config, DEFAULT_ADMIN_LISTEN};
use crate::status::{BackendStatus, Document, Health, Role, VerifySummary};
use serde_json::Value;
use std::io::{IsTerminal, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `zeoraid ctl` arguments.
#[derive(clap::Args, Debug)]
pub struct CtlArgs {
    /// The admin listener, HOST:PORT (default: `[admin] listen` of
    /// --config, else 127.0.0.1:8101).
    #[arg(long, global = true)]
    pub admin: Option<String>,
    /// A zeoraid config file: the admin address and token file come from
    /// its `[admin]` section.
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// The admin token, for changes (default: the config's token-file).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// The array to act on (default: the only one the server has).
    #[arg(long, global = true)]
    pub array: Option<String>,
    #[command(subcommand)]
    pub cmd: CtlCommand,
}

// Parsed once per invocation: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(clap::Subcommand, Debug)]
pub enum CtlCommand {
    /// optimal | recovering | degraded | failed, with Nagios exit codes.
    Status,
    /// Every storage and backend: state, reason, last tid, latency, reads,
    /// writes, a recovery's progress, the last verify.
    Details,
    /// Recover a backend (degraded, or new and empty).
    Recover {
        backend: String,
        /// Wait until it is optimal (a progress bar on a terminal).
        #[arg(long)]
        wait: bool,
        /// Rebuild a diverged file backend from scratch (its Data.fs is
        /// moved aside, never deleted).
        #[arg(long)]
        force: bool,
    },
    /// Take a backend out of the array until it is recovered.
    Disable { backend: String },
    /// Compare a backend's whole history with an optimal backend's.
    Verify { backend: String },
    /// Add a backend to the running array: it joins degraded and is
    /// recovered. Kept across restarts (the state file remembers it).
    Add {
        backend: String,
        /// zeo | file
        #[arg(long)]
        kind: String,
        /// kind zeo: HOST:PORT of the ZEO server.
        #[arg(long)]
        address: Option<String>,
        /// kind zeo: the storage name on that server (default "1").
        #[arg(long)]
        storage: Option<String>,
        /// kind file: the Data.fs (relative: to the server's config file).
        #[arg(long)]
        path: Option<String>,
        /// kind file: its blob directory; kind zeo: zeoraid's cache of that
        /// server's blobs. Without it the backend takes no blobs.
        #[arg(long)]
        blob_dir: Option<String>,
        /// kind zeo: connect over TLS, verifying the server with this CA file.
        #[arg(long)]
        tls_ca: Option<String>,
        /// kind zeo: our certificate, for a server that authenticates clients.
        #[arg(long, requires = "tls_key")]
        tls_certificate: Option<String>,
        #[arg(long, requires = "tls_certificate")]
        tls_key: Option<String>,
        /// kind zeo: the name in the server's certificate.
        #[arg(long)]
        tls_server_hostname: Option<String>,
    },
    /// Remove a backend from the running array (after the transaction in
    /// flight); a restart does not bring it back.
    Remove { backend: String },
    /// Apply the config file to the running arrays (as SIGHUP does).
    Reload,
    /// `[ha]`, asked of the leader: hand leadership to a standby, after the
    /// commit in flight (clients are sent over and retry there).
    Switchover {
        /// The controller to take over (default: whichever standby takes
        /// the key first). The others wait one lease for it.
        #[arg(long)]
        to: Option<String>,
    },
    /// `[ha]`, asked of a standby: take over now from a leader that is
    /// gone (killed, or cut off), rather than when its lease runs out. The
    /// takeover fences the old leader at the backends, alive or not.
    Failover,
}

/// An HTTP answer: status code and body.
struct Reply {
    code: u16,
    body: String,
}

/// Where to reach zeoraid, and the token.
struct Target {
    addr: String,
    token: Option<String>,
}

fn target(args: &CtlArgs) -> Result<Target, String> {
    let cfg = match &args.config {
        Some(p) => Some(Config::load(p).map_err(|e| e.to_string())?),
        None => None,
    };
    let admin = cfg.as_ref().and_then(|c| c.admin.clone());
    let addr = args
        .admin
        .clone()
        .or_else(|| admin.as_ref().map(|a| a.listen.clone()))
        .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.to_string());
    let token = match &args.token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read the token file {}: {e}", p.display()))?
                .trim()
                .to_string(),
        ),
        None => match &admin {
            Some(a) => a.token()?,
            None => None,
        },
    };
    Ok(Target { addr, token })
}

/// One HTTP/1.1 request over a fresh connection.
fn request(t: &Target, method: &str, path: &str, timeout: Duration) -> Result<Reply, String> {
    let unreachable = |e: &dyn std::fmt::Display| {
        format!(
            "cannot reach zeoraid's admin interface at {}: {e} (is zeoraid running with an \
             [admin] section? --admin HOST:PORT or --config FILE says where; the default is {})",
            t.addr, DEFAULT_ADMIN_LISTEN
        )
    };
    let sock = t
        .addr
        .to_socket_addrs()
        .map_err(|e| unreachable(&e))?
        .next()
        .ok_or_else(|| unreachable(&"no address"))?;
    let mut s =
        TcpStream::connect_timeout(&sock, Duration::from_secs(5)).map_err(|e| unreachable(&e))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| unreachable(&e))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| unreachable(&e))?;
    let auth = t
        .token
        .as_ref()
        .map(|tok| format!("Authorization: Bearer {tok}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n{auth}\r\n",
        t.addr
    );
    s.write_all(head.as_bytes()).map_err(|e| unreachable(&e))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| {
        format!(
            "no complete answer from {} within {} s: {e}",
            t.addr,
            timeout.as_secs()
        )
    })?;
    parse_reply(&raw).ok_or_else(|| {
        format!(
            "{} did not answer like zeoraid's admin interface (is it the ZEO port? the admin \
             listener has a port of its own)",
            t.addr
        )
    })
}

/// Status code and body of a raw HTTP/1.1 answer (Content-Length or
/// read to the end; chunked bodies are decoded).
fn parse_reply(raw: &[u8]) -> Option<Reply> {
    let text = std::str::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?;
    let mut parts = status.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code: u16 = parts.next()?.parse().ok()?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        loop {
            let (size, after) = rest.split_once("\r\n")?;
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            if n == 0 {
                break;
            }
            out.push_str(after.get(..n)?);
            rest = after.get(n + 2..)?;
        }
        out
    } else {
        body.to_string()
    };
    Some(Reply { code, body })
}

fn json_of(r: &Reply) -> Result<Value, String> {
    serde_json::from_str(&r.body).map_err(|_| "zeoraid answered something that is not JSON".into())
}

/// The server's status document (`GET /details`).
fn details(t: &Target) -> Result<Document, String> {
    let r = request(t, "GET", "/details", Duration::from_secs(10))?;
    if r.code != 200 {
        let v = json_of(&r)?;
        return Err(format!(
            "HTTP {}: {}",
            r.code,
            v["error"].as_str().unwrap_or("?")
        ));
    }
    crate::status::parse(&r.body)
}

/// The one array of the server, or the one named.
fn array_name(t: &Target, storage: &Option<String>) -> Result<String, String> {
    if let Some(s) = storage {
        return Ok(s.clone());
    }
    let doc = details(t)?;
    let arrays: Vec<String> = doc
        .iter()
        .filter(|(_, s)| s.raid.is_some())
        .map(|(n, _)| n.clone())
        .collect();
    match arrays.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err("this zeoraid serves no RAID array".into()),
        many => Err(format!(
            "this zeoraid serves several arrays ({}): name one with --storage",
            many.join(", ")
        )),
    }
}

/// Run `zeoraid ctl`; returns the exit code.
pub fn run(args: &CtlArgs) -> u8 {
    let storage = &args.array;
    let t = match target(args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("zeoraid ctl: {e}");
            return UNKNOWN;
        }
    };
    let simple = |action: &str, backend: &str, secs: u64| {
        change(
            &t,
            args.json,
            action,
            storage,
            backend,
            "",
            Duration::from_secs(secs),
        )
    };
    match &args.cmd {
        CtlCommand::Status => status_cmd(&t, args.json),
        CtlCommand::Details => details_cmd(&t, args.json),
        CtlCommand::Disable { backend } => simple("disable", backend, 30),
        CtlCommand::Verify { backend } => simple("verify", backend, 86_400),
        CtlCommand::Remove { backend } => simple("remove", backend, 60),
        CtlCommand::Add {
            backend,
            kind,
            address,
            storage: zeo_storage,
            path,
            blob_dir,
            tls_ca,
            tls_certificate,
            tls_key,
            tls_server_hostname,
        } => {
            let mut q = format!("?kind={}", enc(kind));
            for (k, v) in [
                ("address", address),
                ("storage", zeo_storage),
                ("path", path),
                ("blob-dir", blob_dir),
                ("tls-ca", tls_ca),
                ("tls-certificate", tls_certificate),
                ("tls-key", tls_key),
                ("tls-server-hostname", tls_server_hostname),
            ] {
                if let Some(v) = v {
                    q += &format!("&{k}={}", enc(v));
                }
            }
            change(
                &t,
                args.json,
                "add",
                storage,
                backend,
                &q,
                Duration::from_secs(60),
            )
        }
        CtlCommand::Reload => reload_cmd(&t, args.json),
        CtlCommand::Switchover { to } => {
            let q = to
                .as_ref()
                .map(|n| format!("?to={}", enc(n)))
                .unwrap_or_default();
            ha_cmd(&t, args.json, "switchover", &q)
        }
        CtlCommand::Failover => ha_cmd(&t, args.json, "failover", ""),
        CtlCommand::Recover {
            backend,
            wait,
            force,
        } => {
            let storage = match array_name(&t, storage) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("zeoraid ctl: {e}");
                    return 2;
                }
            };
            let before = backend_doc(&t, &storage, backend)
                .map(|b| b.recovery_failures)
                .unwrap_or(0);
            let query = if *force { "?force=true" } else { "" };
            let code = change(
                &t,
                args.json,
                "recover",
                &Some(storage.clone()),
                backend,
                query,
                Duration::from_secs(30),
            );
            if code != 0 || !*wait {
                return code;
            }
            wait_recovered(&t, &storage, backend, before, args.json)
        }
    }
}

/// `switchover` / `failover`: what the controller did, or why not (exit 2).
/// A POST that changes something (`path`), answered as `zeoraid ctl
/// COMMAND` does: the answer's JSON with `--json`, else `say`'s words for
/// it (exit 0); the server's refusal on stderr (exit 2); no answer
/// (UNKNOWN).
fn post_cmd(
    t: &Target,
    json: bool,
    command: &str,
    path: &str,
    deadline: Duration,
    say: impl FnOnce(&Value) -> String,
) -> u8 {
    match request(t, "POST", path, deadline).and_then(|r| json_of(&r).map(|v| (r.code, v))) {
        Ok((200, v)) => {
            if json {
                println!("{v}");
            } else {
                println!("{}", say(&v));
            }
            0
        }
        Ok((code, v)) => {
            eprintln!(
                "zeoraid ctl {command}: {} (HTTP {code})",
                v["error"].as_str().unwrap_or("?")
            );
            2
        }
        Err(e) => {
            eprintln!("zeoraid ctl: {e}");
            UNKNOWN
        }
    }
}

fn ha_cmd(t: &Target, json: bool, what: &str, query: &str) -> u8 {
    let path = format!("/ha/{what}{query}");
    post_cmd(t, json, what, &path, Duration::from_secs(90), |v| {
        v["done"].as_str().unwrap_or("done").to_string()
    })
}

fn reload_cmd(t: &Target, json: bool) -> u8 {
    post_cmd(
        t,
        json,
        "reload",
        "/reload",
        Duration::from_secs(120),
        |v| {
            let changes: Vec<&str> = v["changes"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if changes.is_empty() {
                "reloaded: nothing to change".to_string()
            } else {
                format!("reloaded: {}", changes.join("; "))
            }
        },
    )
}

fn status_cmd(t: &Target, json: bool) -> u8 {
    let r = match request(t, "GET", "/status", Duration::from_secs(10)) {
        Ok(r) => r,
        Err(e) => {
            println!("ZEORAID UNKNOWN - {e}");
            return UNKNOWN;
        }
    };
    if r.code != 200 {
        println!(
            "ZEORAID UNKNOWN - {} answered HTTP {} with no status",
            t.addr, r.code
        );
        return UNKNOWN;
    }
    match serde_json::from_str::<Health>(&r.body) {
        Ok(h) if h.code <= 2 => {
            if json {
                println!("{}", r.body.trim_end());
            } else {
                println!("{}", h.line);
            }
            h.code
        }
        _ => {
            println!(
                "ZEORAID UNKNOWN - {} answered a status zeoraid ctl does not understand",
                t.addr
            );
            UNKNOWN
        }
    }
}

fn details_cmd(t: &Target, json: bool) -> u8 {
    match details(t) {
        Ok(doc) => {
            if json {
                println!("{}", serde_json::to_string(&doc).unwrap_or_default());
            } else {
                print!("{}", status::details_text(&doc));
            }
            0
        }
        Err(e) => {
            eprintln!("zeoraid ctl: {e}");
            UNKNOWN
        }
    }
}

fn change(
    t: &Target,
    json: bool,
    action: &str,
    storage: &Option<String>,
    backend: &str,
    query: &str,
    timeout: Duration,
) -> u8 {
    let storage = match array_name(t, storage) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("zeoraid ctl: {e}");
            return 2;
        }
    };
    let r = request(
        t,
        "POST",
        &format!("/{action}/{storage}/{backend}{query}"),
        timeout,
    );
    match r.and_then(|r| json_of(&r).map(|v| (r.code, v))) {
        Ok((code, v)) if code < 300 => {
            if json {
                println!("{v}");
            } else {
                println!("{}", describe(action, backend, &v));
            }
            if action == "verify" && verify_summary(&v).is_none_or(|s| s.difference.is_some()) {
                2
            } else {
                0
            }
        }
        Ok((code, v)) => {
            let msg = v["error"].as_str().unwrap_or("?");
            eprintln!("zeoraid ctl {action} {backend}: {msg} (HTTP {code})");
            2
        }
        Err(e) => {
            eprintln!("zeoraid ctl: {e}");
            UNKNOWN
        }
    }
}

fn describe(action: &str, backend: &str, v: &Value) -> String {
    match action {
        "recover" => format!("recovery of {backend} started"),
        "disable" => {
            format!("{backend} disabled: it gets no reads or writes until it is recovered")
        }
        "verify" => match verify_summary(v) {
            Some(VerifySummary {
                difference: None,
                reference,
                transactions,
                megabytes,
                upto,
                ..
            }) => format!(
                "{backend}: identical to {reference} over {transactions} transactions \
                 ({megabytes} MB) up to {upto}"
            ),
            Some(VerifySummary {
                difference: Some(d),
                ..
            }) => format!("{backend}: {d}; it is degraded now"),
            None => format!("{backend}: zeoraid answered a verify ctl does not understand: {v}"),
        },
        _ => v.to_string(),
    }
}

/// A value as JSON writes it (`100.0`, `null`).
fn as_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn verify_summary(v: &Value) -> Option<VerifySummary> {
    serde_json::from_value(v.clone()).ok()
}

fn backend_doc(t: &Target, storage: &str, backend: &str) -> Result<BackendStatus, String> {
    details(t)?
        .remove(storage)
        .and_then(|s| s.raid)
        .and_then(|r| r.backends.into_iter().find(|b| b.name == backend))
        .ok_or_else(|| format!("storage {storage:?} has no backend {backend:?}"))
}

/// A query-string value: everything but unreserved characters and `/`,
/// `:` percent-encoded.
fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A progress bar of `width` for `percent`.
pub fn bar(percent: f64, width: usize) -> String {
    let filled = ((percent.clamp(0.0, 100.0) / 100.0) * width as f64).round() as usize;
    format!(
        "[{}{}]",
        "#".repeat(filled),
        ".".repeat(width - filled.min(width))
    )
}

fn wait_recovered(
    t: &Target,
    storage: &str,
    backend: &str,
    failures_before: u64,
    json: bool,
) -> u8 {
    let tty = std::io::stdout().is_terminal() && !json;
    let mut last_line = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let b = match backend_doc(t, storage, backend) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("\nzeoraid ctl: {e}");
                return UNKNOWN;
            }
        };
        let failures = b.recovery_failures;
        if b.state == Role::Optimal {
            if tty {
                println!();
            }
            println!("{backend} is optimal again");
            return 0;
        }
        if failures > failures_before && b.state != Role::Recovering {
            if tty {
                println!();
            }
            eprintln!(
                "zeoraid ctl: the recovery of {backend} failed: {}",
                b.last_recovery_error
                    .as_deref()
                    .or(b.reason.as_deref())
                    .unwrap_or("?")
            );
            return 2;
        }
        let Some(rec) = &b.recovery else {
            continue;
        };
        let line = format!(
            "{} {:>5.1}% {} copied, about {} left, {}/s, ETA {} s",
            bar(rec.percent, 30),
            rec.percent,
            rec.copied,
            rec.left,
            as_json(&rec.rate),
            as_json(&rec.eta_seconds)
        );
        if tty {
            print!("\r{line}   ");
            let _ = std::io::stdout().flush();
        } else if last_line.elapsed() >= Duration::from_secs(5) {
            last_line = Instant::now();
            println!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_or_are_refused() {
        let ok = parse_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((ok.code, ok.body.as_str()), (200, "{}"));
        let chunked = parse_reply(
            b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((chunked.code, chunked.body.as_str()), (401, "abcde"));
        // A ZEO server's handshake, garbage, nothing.
        for raw in [
            &b"\x00\x00\x00\x02M5"[..],
            b"hello",
            b"",
            b"HTTP/1.1 abc\r\n\r\n",
        ] {
            assert!(parse_reply(raw).is_none(), "{raw:?}");
        }
    }

    #[test]
    fn progress_bar() {
        assert_eq!(bar(0.0, 10), "[..........]");
        assert_eq!(bar(50.0, 10), "[#####.....]");
        assert_eq!(bar(100.0, 10), "[##########]");
        assert_eq!(bar(150.0, 4), "[####]");
    }
}
