//! systemd's notification protocol (`sd_notify`), spoken when the service
//! manager sets `NOTIFY_SOCKET`: `READY=1` once zeoraid listens,
//! `RELOADING=1` (with `MONOTONIC_USEC=`, as systemd ≥ 253 expects) and
//! `READY=1` around a config reload, `STOPPING=1` at shutdown, `STATUS=`
//! with each served storage's state, and `WATCHDOG=1` while the event loop
//! and the worker pool turn.
//!
//! The protocol is a few `KEY=value` lines in one datagram to a Unix
//! socket: a path, or an abstract name when the variable starts with `@`.
//! The watchdog thread (`zeoraid-sd-notify`) pings at half of
//! `WATCHDOG_USEC` (when `WATCHDOG_PID`, if set, is this process), and only
//! when the probe it sent the turn before came back through the event loop
//! and a worker ([`crate::server::Liveness`]): a hung loop or a pool whose
//! every worker is stuck stops the pings, and systemd restarts the service.
//!
//! The decisions (where to send, how often, what the status says, whether
//! to ping) are pure functions below, table-tested; [`Notifier`] is the IO.
//! Sits beside `instance`: imports `server` and `status` only; `main.rs`
//! drives it.

use crate::server::Liveness;
use crate::status::Document;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

/// Where notifications go, read off `NOTIFY_SOCKET`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A socket file.
    Path(PathBuf),
    /// An abstract socket (the variable's `@name`, without the `@`).
    Abstract(Vec<u8>),
}

/// The target named by `NOTIFY_SOCKET`'s value; `None` when unset, empty
/// or of a form systemd does not use (a relative path, `vsock:`).
pub fn target(var: Option<&OsStr>) -> Option<Target> {
    let bytes = var?.as_bytes();
    match bytes.first()? {
        b'@' if bytes.len() > 1 => Some(Target::Abstract(bytes[1..].to_vec())),
        b'/' => Some(Target::Path(PathBuf::from(OsStr::from_bytes(bytes)))),
        _ => None,
    }
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC`, when that is a
/// positive number and `WATCHDOG_PID` is unset or names `pid`; else `None`
/// (no watchdog for this process).
pub fn watchdog_interval(
    usec: Option<&str>,
    watchdog_pid: Option<&str>,
    pid: u32,
) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    if let Some(p) = watchdog_pid {
        if p.trim().parse::<u32>().ok()? != pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// Whether the watchdog may ping: the probe sent last turn came back.
pub fn may_ping(answered_before: u64, answered_now: u64) -> bool {
    answered_now > answered_before
}

/// The `STATUS=` text: each storage with its array's state and how many
/// backends are optimal, or `served` for a plain storage.
pub fn status_line(doc: &Document) -> String {
    if doc.is_empty() {
        return "no storages".into();
    }
    let parts: Vec<String> = doc
        .iter()
        .map(|(name, s)| match &s.raid {
            Some(a) => format!(
                "storage {name}: {} ({}/{} backends optimal), {} clients",
                a.state,
                a.optimal,
                a.backends.len(),
                s.connections
            ),
            None => format!("storage {name}: served, {} clients", s.connections),
        })
        .collect();
    // One line: systemd shows STATUS= up to its first newline.
    parts.join("; ").replace('\n', " ")
}

/// The message that starts a reload (systemd ≥ 253 wants the monotonic
/// clock with it, to tell this reload from an older one).
pub fn reloading(monotonic_usec: u64) -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")
}

/// CLOCK_MONOTONIC in microseconds, as systemd reads it.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass and nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1000
}

/// A connection to the service manager's notification socket.
pub struct Notifier {
    sock: UnixDatagram,
    target: Target,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; `None` when zeoraid does not run under a
    /// service manager that listens (or no socket can be made, logged).
    pub fn from_env() -> Option<Notifier> {
        let target = target(std::env::var_os("NOTIFY_SOCKET").as_deref())?;
        match UnixDatagram::unbound() {
            Ok(sock) => Some(Notifier { sock, target }),
            Err(e) => {
                log::warn!("NOTIFY_SOCKET is set but no datagram socket can be made: {e}");
                None
            }
        }
    }

    /// Send one notification; a failure is logged, never fatal (systemd
    /// then times the service out, and says so).
    pub fn send(&self, message: &str) {
        let sent = match &self.target {
            Target::Path(p) => self.sock.send_to(message.as_bytes(), p),
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .and_then(|a| self.sock.send_to_addr(message.as_bytes(), &a))
            }
        };
        if let Err(e) = sent {
            log::warn!("cannot notify the service manager ({:?}): {e}", self.target);
        }
    }
}

/// The thread that pings the watchdog and refreshes `STATUS=`; stopped by
/// dropping [`Watch`] or [`Watch::stop`].
pub struct Watch {
    stop: Option<crossbeam_channel::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Watch {
    /// Start the thread. `interval`: the ping period (`None`: no watchdog,
    /// the status is then refreshed every 10 s).
    pub fn start(
        notifier: std::sync::Arc<Notifier>,
        interval: Option<Duration>,
        liveness: Liveness,
        status: Box<dyn Fn() -> Document + Send>,
    ) -> std::io::Result<Watch> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let period = interval.unwrap_or(Duration::from_secs(10));
        let handle = std::thread::Builder::new()
            .name("zeoraid-sd-notify".into())
            .spawn(move || {
                let mut last_status = String::new();
                let mut before = liveness.answered();
                liveness.probe();
                loop {
                    match stopped.recv_timeout(period) {
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    let now = liveness.answered();
                    let line = status_line(&status());
                    let mut msg = Vec::new();
                    if interval.is_some() && may_ping(before, now) {
                        msg.push("WATCHDOG=1".to_string());
                    } else if interval.is_some() {
                        log::warn!(
                            "the event loop or the workers have not answered a liveness probe \
                             within {:.1} s; not pinging the systemd watchdog",
                            period.as_secs_f64()
                        );
                    }
                    if line != last_status {
                        msg.push(format!("STATUS={line}"));
                        last_status = line;
                    }
                    if !msg.is_empty() {
                        notifier.send(&msg.join("\n"));
                    }
                    if may_ping(before, now) {
                        before = now;
                        liveness.probe();
                    }
                }
            })?;
        Ok(Watch {
            stop: Some(stop),
            handle: Some(handle),
        })
    }

    /// Stop the thread and join it.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.handle.take() {
            if h.join().is_err() {
                log::error!("the systemd notification thread panicked");
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ArrayState, ArrayStatus, StorageStatus};

    #[test]
    fn target_table() {
        let p = |s: &str| Some(Target::Path(PathBuf::from(s)));
        for (var, want) in [
            (None, None),
            (Some(""), None),
            (Some("@"), None),
            (Some("relative/sock"), None),
            (Some("vsock:2:1234"), None),
            (Some("/run/systemd/notify"), p("/run/systemd/notify")),
            (Some("@sd-abc"), Some(Target::Abstract(b"sd-abc".to_vec()))),
        ] {
            assert_eq!(target(var.map(OsStr::new)), want, "{var:?}");
        }
    }

    #[test]
    fn watchdog_interval_table() {
        let ms = Duration::from_millis;
        for (usec, pid, want) in [
            (None, None, None),
            (Some("0"), None, None),
            (Some("x"), None, None),
            (Some("30000000"), None, Some(ms(15_000))),
            (Some("2000000"), Some("42"), Some(ms(1000))),
            (Some("2000000"), Some("43"), None),
            (Some("2000000"), Some("nope"), None),
            (Some("1"), None, Some(ms(1))),
        ] {
            assert_eq!(watchdog_interval(usec, pid, 42), want, "{usec:?} {pid:?}");
        }
    }

    #[test]
    fn may_ping_table() {
        for (before, now, want) in [(0, 0, false), (0, 1, true), (5, 5, false), (5, 7, true)] {
            assert_eq!(may_ping(before, now), want, "{before} {now}");
        }
    }

    fn storage(raid: Option<ArrayStatus>) -> StorageStatus {
        let mut s: StorageStatus = serde_json::from_value(serde_json::json!({
            "storage": "x", "connections": 2, "loads": 0, "stores": 0, "commits": 0,
            "aborts": 0, "conflicts": 0, "active_txns": 0, "waiting": 0,
            "uptime_seconds": 0, "last_transaction": ""
        }))
        .unwrap_or_else(|e| panic!("a storage status: {e}"));
        s.raid = raid;
        s
    }

    #[test]
    fn status_line_table() {
        let mut array: ArrayStatus = serde_json::from_value(serde_json::json!({
            "state": "degraded", "optimal": 1, "min_optimal": 1, "fanout": "parallel",
            "read_policy": "round-robin", "auto_recover": true, "recovery_ratio": 1.0,
            "backends": [], "offsite": []
        }))
        .unwrap_or_else(|e| panic!("an array status: {e}"));
        array.state = ArrayState::Degraded;
        let mut one = Document::new();
        one.insert("1".into(), storage(None));
        let mut two = Document::new();
        two.insert("1".into(), storage(None));
        two.insert("main".into(), storage(Some(array)));
        for (doc, want) in [
            (Document::new(), "no storages"),
            (one, "storage 1: served, 2 clients"),
            (
                two,
                "storage 1: served, 2 clients; storage main: degraded (1/0 backends optimal), 2 clients",
            ),
        ] {
            assert_eq!(status_line(&doc), want);
        }
    }

    #[test]
    fn reloading_names_the_clock() {
        assert_eq!(reloading(12), "RELOADING=1\nMONOTONIC_USEC=12");
        assert!(monotonic_usec() > 0);
    }

    #[test]
    fn sends_to_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("{e}"));
        let n = Notifier {
            sock: UnixDatagram::unbound().unwrap_or_else(|e| panic!("{e}")),
            target: Target::Path(path),
        };
        n.send("READY=1");
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&buf[..len], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("zeoraid-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        let rx = UnixDatagram::bind_addr(&addr).unwrap_or_else(|e| panic!("{e}"));
        let n = Notifier {
            sock: UnixDatagram::unbound().unwrap_or_else(|e| panic!("{e}")),
            target: Target::Abstract(name.into_bytes()),
        };
        n.send("STOPPING=1");
        let len = rx.recv(&mut buf).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&buf[..len], b"STOPPING=1");
    }
}
