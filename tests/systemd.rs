//! `zeoraid serve` under a service manager, as systemd runs a `Type=notify`
//! unit (`examples/zeoraid.service`): the test binds the notification
//! socket itself, sets `NOTIFY_SOCKET` and `WATCHDOG_USEC`, and checks
//! `READY=1` with a `STATUS=`, the watchdog pings, `RELOADING=1` (with
//! `MONOTONIC_USEC=`) then `READY=1` around a SIGHUP reload, that the pings
//! stop while the event loop is stuck (the debug builds' hook
//! `ZEORAID_DEBUG_STALL_LOOP`) and come back after, and `STOPPING=1` on
//! SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The next datagram within `limit`, as text; `None` on timeout.
fn recv(sock: &UnixDatagram, limit: Duration) -> Option<String> {
    sock.set_read_timeout(Some(limit)).expect("timeout");
    let mut buf = vec![0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(_) => None,
    }
}

/// Read datagrams until one satisfies `want`, within `limit`; returns it
/// and every one read before it.
fn until(
    sock: &UnixDatagram,
    limit: Duration,
    want: impl Fn(&str) -> bool,
) -> (String, Vec<String>) {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match recv(sock, left.max(Duration::from_millis(1))) {
            Some(m) if want(&m) => return (m, seen),
            Some(m) => seen.push(m),
            None => break,
        }
    }
    panic!("no matching notification within {limit:?}; saw {seen:?}");
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0, "kill {sig}");
}

#[test]
fn speaks_sd_notify_and_the_watchdog_stops_when_the_loop_hangs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("zeoraid.toml");
    std::fs::write(&conf, "[[storage]]\nname = \"1\"\nkind = \"memory\"\n").expect("config");
    let sock_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).expect("bind the notification socket");
    let stall = dir.path().join("stall");
    let mut child = Command::new(env!("CARGO_BIN_EXE_zeoraid"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&conf)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .env("ZEORAID_DEBUG_STALL_LOOP", &stall)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run zeoraid");
    let pid = child.id();

    let (ready, _) = until(&sock, Duration::from_secs(30), |m| m.contains("READY=1"));
    assert!(ready.contains("STATUS=storage 1: served"), "{ready:?}");
    until(&sock, Duration::from_secs(3), |m| m.contains("WATCHDOG=1"));

    signal(pid, libc::SIGHUP);
    let (reloading, _) = until(&sock, Duration::from_secs(5), |m| m.contains("RELOADING=1"));
    let usec = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"));
    assert!(usec.parse::<u64>().is_ok_and(|u| u > 0), "{reloading:?}");
    let (ready, _) = until(&sock, Duration::from_secs(10), |m| m.contains("READY=1"));
    assert!(ready.contains("STATUS=storage 1"), "{ready:?}");

    // The loop stalls at its next probe: after at most one ping already
    // under way, no more.
    std::fs::write(&stall, b"").expect("stall file");
    std::thread::sleep(Duration::from_millis(700));
    // What was sent meanwhile (pings from before the stall) is queued.
    while recv(&sock, Duration::from_millis(1)).is_some() {}
    let quiet_from = Instant::now();
    let mut pings = 0;
    while quiet_from.elapsed() < Duration::from_millis(1500) {
        if let Some(m) = recv(&sock, Duration::from_millis(100)) {
            if m.contains("WATCHDOG=1") {
                pings += 1;
            }
        }
    }
    assert_eq!(
        pings, 0,
        "the watchdog was pinged while the event loop hung"
    );

    std::fs::remove_file(&stall).expect("unstall");
    until(&sock, Duration::from_secs(3), |m| m.contains("WATCHDOG=1"));

    signal(pid, libc::SIGTERM);
    until(&sock, Duration::from_secs(10), |m| m.contains("STOPPING=1"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            assert!(status.success(), "{status:?}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("zeoraid did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
