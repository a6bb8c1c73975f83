//! Helpers the benchmarks share: the Python with stock ZODB/ZEO, free
//! ports, waiting for a server to listen.
#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// `$ZEORAID_PYTHON`, else the crate's `.venv/bin/python` (made by
/// `bash tests/run-all.sh`).
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("ZEORAID_PYTHON") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if !p.exists() {
        panic!("no Python with ZODB/ZEO: set ZEORAID_PYTHON or run `bash tests/run-all.sh` once to create .venv");
    }
    p
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Wait (30 s at most) until `addr` accepts connections.
pub fn wait_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "server at {addr} did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Write `dir/zeo.conf` for a stock runzeo on 127.0.0.1:`port` serving
/// `storage` (a ZConfig storage section named 1), with `msgpack true`,
/// errors-only logging to stderr, and `client-conflict-resolution` as
/// asked (ZEO's default: off). Returns its path.
pub fn write_runzeo_conf(
    dir: &Path,
    port: u16,
    storage: &str,
    client_conflict_resolution: bool,
) -> PathBuf {
    write_runzeo_conf_with(dir, port, storage, client_conflict_resolution, true)
}

/// [`write_runzeo_conf`], with `msgpack false` leaving the line out:
/// runzeo's default config, the pickle flavour ("Z5").
pub fn write_runzeo_conf_with(
    dir: &Path,
    port: u16,
    storage: &str,
    client_conflict_resolution: bool,
    msgpack: bool,
) -> PathBuf {
    let conf = dir.join("zeo.conf");
    let mut f = std::fs::File::create(&conf).expect("zeo.conf");
    let msgpack = if msgpack { "  msgpack true\n" } else { "" };
    writeln!(
        f,
        "<zeo>\n  address 127.0.0.1:{port}\n{msgpack}  client-conflict-resolution {}\n</zeo>\n\
         {storage}\n\
         <eventlog>\n  level ERROR\n  <logfile>\n    path STDERR\n  </logfile>\n</eventlog>",
        client_conflict_resolution,
    )
    .expect("write zeo.conf");
    conf
}

/// A Python `runzeo` child, killed on drop.
pub struct Runzeo {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for Runzeo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stock Python ZEO server over a FileStorage in `dir`, with `msgpack
/// true`, errors-only logging, and `client-conflict-resolution` as asked
/// (ZEO's default: off).
pub fn start_runzeo(dir: &Path, client_conflict_resolution: bool) -> Runzeo {
    start_runzeo_with(dir, client_conflict_resolution, true)
}

/// [`start_runzeo`], with `msgpack false` for runzeo's default config
/// (the pickle flavour).
pub fn start_runzeo_with(dir: &Path, client_conflict_resolution: bool, msgpack: bool) -> Runzeo {
    std::fs::create_dir_all(dir).expect("data dir");
    let port = free_port();
    let storage = format!(
        "<filestorage 1>\n  path {}\n</filestorage>",
        dir.join("Data.fs").display()
    );
    let conf = write_runzeo_conf_with(dir, port, &storage, client_conflict_resolution, msgpack);
    let (child, addr) = spawn_runzeo(&conf, port, None);
    Runzeo { child, addr }
}

/// Start `python -m ZEO.runzeo -C CONF` (listening on 127.0.0.1:`port`,
/// stdout discarded, stderr to `stderr` or inherited) and wait until it
/// accepts connections.
pub fn spawn_runzeo(conf: &Path, port: u16, stderr: Option<std::fs::File>) -> (Child, SocketAddr) {
    let mut cmd = Command::new(python());
    cmd.args(["-m", "ZEO.runzeo", "-C"])
        .arg(conf)
        .stdout(std::process::Stdio::null());
    if let Some(f) = stderr {
        cmd.stderr(f);
    }
    let child = cmd.spawn().expect("start runzeo");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_port(addr);
    (child, addr)
}

/// Start `zeoraid serve --config CONF` (built for this bench) with
/// `RUST_LOG=warn` and stderr to `stderr` (inherited when `None`); waits
/// for its listening line and returns the child and the address it names
/// (`HOST:PORT`, or a Unix socket path without the `unix:` prefix).
pub fn spawn_zeoraid(conf: &Path, stderr: Option<std::fs::File>) -> (Child, String) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zeoraid"));
    cmd.args(["serve", "--config"])
        .arg(conf)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped());
    if let Some(f) = stderr {
        cmd.stderr(f);
    }
    let mut child = cmd.spawn().expect("start zeoraid");
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    match line.trim().strip_prefix("zeoraid: listening on ") {
        Some(a) => {
            let a = a.trim_start_matches("unix:").to_string();
            (child, a)
        }
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("zeoraid did not start: first line {line:?}")
        }
    }
}

/// The benchmark's positional arguments pick what to run; none: all.
pub fn wanted(name: &str) -> bool {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    args.is_empty() || args.iter().any(|a| a == name)
}

/// An environment knob, parsed; `None` when unset or unparsable.
pub fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// `a / b`, NaN when `b` is not positive.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

/// "met" or "**missed**" for a target.
pub fn mark(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

/// The median of `v` (the upper one of an even count); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A memory field of `/proc/PID/status` (`VmRSS`, `VmHWM`, ...) in KiB;
/// NaN when the process or the field is not there.
pub fn status_kib(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .unwrap_or(f64::NAN)
}

/// utime + stime of `pid` (all its threads), seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may
    // hold spaces: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) if hz > 0.0 => (u + s) / hz,
        _ => f64::NAN,
    }
}
