//! One hot object: W stock ZODB client processes (W = 4, 8) each add 1 to
//! the same `BTrees.Length` in the root, one transaction per increment, for
//! D seconds, retrying on `ConflictError` (issue #12). Side by side in one
//! run, interleaved:
//! - Python `runzeo` (ZEO 6, default settings: conflicts resolved on the
//!   server; `msgpack true`), `<mappingstorage>` / `<filestorage>`. ZODB's
//!   MappingStorage cannot resolve conflicts (its `store` raises
//!   `ConflictError`), so against it writers retry where the others merge:
//!   stock behaviour, not an artifact of the bench;
//! - zeoraid (release build), memory / file storage, with client-side
//!   resolution (no `[conflict-resolution]`: the vote answers the conflict,
//!   the client resolves and votes again);
//! - zeoraid with the resolver helper (`[conflict-resolution]` with the same
//!   Python): conflicts resolved on the server.
//!
//! Increments/s count committed increments from the counter itself (its
//! value after the run minus before, over the time from the start signal to
//! the last commit). Retries are `ConflictError`s the writers saw; errors
//! are any other exception (target: none), writers that did not finish,
//! and a counter that moved by more or less than the writers reported
//! committed. Each figure is the median of `ZEORAID_BENCH_REPEAT` runs
//! (default 3); errors are the total over all runs.
//!
//! Run: `cargo bench --bench contended [-- memory|file]` (both by default).
//! Needs a Python with ZODB 6 + ZEO 6: `$ZEORAID_PYTHON` or `.venv/bin/python`
//! (created by `bash tests/run-all.sh`). Knobs: `ZEORAID_BENCH_SECONDS` (D,
//! default 5), `ZEORAID_BENCH_REPEAT` (default 3), `ZEORAID_BENCH_WRITERS`
//! (default `4,8`). The writers share the machine's cores with the server.
//!
//! Prints a markdown table per storage; asserts nothing about timing.

mod common;
use common::{free_port, median, python};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The writer (and counter reader), run by the Python under test.
const WORKER_PY: &str = r#"
import json, sys, time, traceback
import transaction, ZEO
from BTrees.Length import Length
from ZODB.POSException import ConflictError

def main():
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    db = ZEO.DB((host, port), wait_timeout=10)
    try:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        if mode == "read":       # create the counter if needed, print it
            tm.begin()
            root = conn.root()
            if "counter" not in root:
                root["counter"] = Length(0)
                tm.commit()
                tm.begin()
            print(json.dumps(conn.root()["counter"]()), flush=True)
            return
        seconds = float(sys.argv[4])
        tm.begin()
        conn.root()["counter"]()
        tm.abort()
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return
        start = time.monotonic()
        end = start + seconds
        out = dict(committed=0, retries=0, errors=0, first_error=None,
                   elapsed=0.0)
        while time.monotonic() < end:
            try:
                tm.begin()
                conn.root()["counter"].change(1)
                tm.commit()
                out["committed"] += 1
                out["elapsed"] = time.monotonic() - start
            except ConflictError:
                tm.abort()
                out["retries"] += 1
            except Exception as exc:
                out["errors"] += 1
                if out["first_error"] is None:
                    out["first_error"] = "".join(
                        traceback.format_exception_only(exc)).strip()
                try:
                    tm.abort()
                except Exception:
                    pass
                time.sleep(0.01)
        print(json.dumps(out), flush=True)
    finally:
        db.close()

main()
"#;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Memory,
    File,
}

struct Server {
    child: Child,
    addr: SocketAddr,
    name: String,
    stderr: PathBuf,
    python: bool,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stderr_file(dir: &Path, tag: &str) -> (PathBuf, std::fs::File) {
    let path = dir.join(format!("{tag}.stderr"));
    let f = std::fs::File::create(&path).expect("stderr file");
    (path, f)
}

/// zeoraid (release build), started as `zeo_vs_python` does; `resolver`
/// adds `[conflict-resolution]` with the bench's Python.
fn start_zeoraid(dir: &Path, kind: Kind, resolver: bool) -> Server {
    let tag = if resolver {
        "zeoraid-helper"
    } else {
        "zeoraid-client"
    };
    let storage = match kind {
        Kind::Memory => "kind = \"memory\"".to_string(),
        Kind::File => {
            let data = dir.join(format!("{tag}-data"));
            std::fs::create_dir_all(&data).expect("data dir");
            format!(
                "kind = \"file\"\npath = {:?}",
                data.join("Data.fs").display().to_string()
            )
        }
    };
    let helper = if resolver {
        format!(
            "[conflict-resolution]\npython = {:?}\n",
            python().display().to_string()
        )
    } else {
        String::new()
    };
    let conf = dir.join(format!("{tag}.toml"));
    std::fs::write(
        &conf,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[storage]]\nname = \"1\"\n{storage}\n{helper}"
        ),
    )
    .expect("write config");
    let (stderr, err) = stderr_file(dir, tag);
    let (child, addr) = common::spawn_zeoraid(&conf, Some(err));
    let addr = addr.parse().unwrap_or_else(|_| {
        panic!(
            "not a TCP address: {addr:?}; stderr:\n{}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        )
    });
    let (k, mode) = match (kind, resolver) {
        (Kind::Memory, false) => ("memory", "client-side resolution"),
        (Kind::Memory, true) => ("memory", "resolver helper"),
        (Kind::File, false) => ("file, fsync", "client-side resolution"),
        (Kind::File, true) => ("file, fsync", "resolver helper"),
    };
    Server {
        child,
        addr,
        name: format!("zeoraid ({k}, {mode})"),
        stderr,
        python: false,
    }
}

/// Stock runzeo with its defaults (server-side conflict resolution).
fn start_runzeo(dir: &Path, kind: Kind) -> Server {
    let port = free_port();
    let storage = match kind {
        Kind::Memory => "<mappingstorage 1>\n</mappingstorage>".to_string(),
        Kind::File => {
            let data = dir.join("python-data");
            std::fs::create_dir_all(&data).expect("data dir");
            format!(
                "<filestorage 1>\n  path {}\n</filestorage>",
                data.join("Data.fs").display()
            )
        }
    };
    // ZEO's defaults otherwise (the server resolves conflicts).
    let conf = common::write_runzeo_conf(dir, port, &storage, false);
    let (stderr, err) = stderr_file(dir, "runzeo");
    let (child, addr) = common::spawn_runzeo(&conf, port, Some(err));
    let storage = match kind {
        Kind::Memory => "mappingstorage",
        Kind::File => "filestorage, fsync",
    };
    Server {
        child,
        addr,
        name: format!("python runzeo ({storage}, server-side resolution)"),
        stderr,
        python: true,
    }
}

/// The counter's value (created at 0 if missing), from a fresh client.
fn read_counter(script: &Path, addr: SocketAddr) -> Result<i64, String> {
    let out = Command::new(python())
        .arg(script)
        .args(["read", &addr.ip().to_string(), &addr.port().to_string()])
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python().display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().map_err(|_| {
        format!(
            "reading the counter failed ({}): {}{}",
            out.status,
            text.trim(),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[derive(Clone, Default)]
struct Run {
    rate: f64,
    retries: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Count `n` errors; keep the first message.
fn note(run: &mut Run, n: u64, msg: String) {
    run.errors += n;
    run.first_error.get_or_insert(msg);
}

enum Line {
    Text(String),
    Eof(usize),
}

/// One run: `writers` processes, started together, for `seconds`.
fn run_once(server: &Server, script: &Path, writers: usize, seconds: f64) -> Run {
    let mut run = Run::default();
    let before = match read_counter(script, server.addr) {
        Ok(v) => v,
        Err(e) => {
            note(&mut run, 1, e);
            return run;
        }
    };
    let (tx, rx) = mpsc::channel();
    let mut children: Vec<(Child, Option<ChildStdin>)> = Vec::new();
    for i in 0..writers {
        let mut child = Command::new(python())
            .arg(script)
            .args([
                "work",
                &server.addr.ip().to_string(),
                &server.addr.port().to_string(),
                &seconds.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a writer");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(Line::Text(line)).is_err() {
                    return;
                }
            }
            let _ = tx.send(Line::Eof(i));
        });
        children.push((child, stdin));
    }
    drop(tx);
    // All connected, then all at once.
    let mut ready = 0;
    let mut finished = vec![false; writers];
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready < writers {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Line::Text(l)) if l == "ready" => ready += 1,
            Ok(Line::Text(_)) => {}
            Ok(Line::Eof(i)) => {
                finished[i] = true;
                note(
                    &mut run,
                    1,
                    format!("writer {i} exited before it was ready"),
                );
                ready += 1;
            }
            Err(_) => {
                note(&mut run, 1, "writers not ready within 60 s".into());
                break;
            }
        }
    }
    let started = Instant::now();
    for (_, stdin) in children.iter_mut() {
        if let Some(mut s) = stdin.take() {
            let _ = s.write_all(b"go\n");
        }
    }
    let mut committed = 0i64;
    let mut elapsed = 0f64;
    let mut retries = Vec::new();
    let deadline = started + Duration::from_secs_f64(seconds + 30.0);
    while finished.iter().any(|f| !f) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Line::Text(l)) => {
                let Ok(j) = serde_json::from_str::<serde_json::Value>(&l) else {
                    continue;
                };
                let n = |k: &str| j[k].as_u64().unwrap_or(0);
                committed += n("committed") as i64;
                retries.push(n("retries"));
                elapsed = elapsed.max(j["elapsed"].as_f64().unwrap_or(0.0));
                if n("errors") > 0 {
                    let first = j["first_error"].as_str().unwrap_or("?").to_string();
                    note(&mut run, n("errors"), first);
                }
            }
            Ok(Line::Eof(i)) => finished[i] = true,
            Err(_) => {
                let stuck = finished.iter().filter(|f| !**f).count();
                note(
                    &mut run,
                    stuck as u64,
                    format!("{stuck} writers still running {seconds} + 30 s after the start"),
                );
                break;
            }
        }
    }
    for (mut child, _) in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    run.retries = retries.iter().sum();
    match read_counter(script, server.addr) {
        Ok(after) => {
            let moved = after - before;
            if moved != committed {
                note(
                    &mut run,
                    1,
                    format!(
                        "the counter moved by {moved}, the writers reported {committed} commits"
                    ),
                );
            }
            run.rate = moved as f64 / elapsed.max(seconds * 0.5);
        }
        Err(e) => note(&mut run, 1, e),
    }
    run
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with --list
    }
    let seconds: f64 = env_or("ZEORAID_BENCH_SECONDS", 5.0);
    let repeat: usize = env_or("ZEORAID_BENCH_REPEAT", 3usize).max(1);
    let writers: Vec<usize> = std::env::var("ZEORAID_BENCH_WRITERS")
        .unwrap_or_else(|_| "4,8".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |k: &str| args.is_empty() || args.iter().any(|a| a == k);
    if want("memory") {
        compare(Kind::Memory, &writers, seconds, repeat);
    }
    if want("file") {
        compare(Kind::File, &writers, seconds, repeat);
    }
}

fn compare(kind: Kind, writers: &[usize], seconds: f64, repeat: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("contended_worker.py");
    std::fs::write(&script, WORKER_PY).expect("write worker script");
    let servers = [
        start_runzeo(dir.path(), kind),
        start_zeoraid(dir.path(), kind, false),
        start_zeoraid(dir.path(), kind, true),
    ];
    for s in &servers {
        if let Err(e) = read_counter(&script, s.addr) {
            panic!("{}: {e}", s.name);
        }
    }
    println!(
        "One BTrees.Length, W stock ZODB client processes each adding 1 per transaction for {seconds} s; median of {repeat} interleaved runs (errors: total over all runs)\n"
    );
    println!("| writers | server | increments/s | retries/run | errors | zeoraid/python |");
    println!("|---|---|---|---|---|---|");
    let mut problems = Vec::new();
    for &w in writers {
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); servers.len()];
        for _ in 0..repeat {
            for (s, out) in servers.iter().zip(runs.iter_mut()) {
                out.push(run_once(s, &script, w, seconds));
            }
        }
        let python_rate = median(&runs[0].iter().map(|r| r.rate).collect::<Vec<_>>());
        for (s, rs) in servers.iter().zip(&runs) {
            let rate = median(&rs.iter().map(|r| r.rate).collect::<Vec<_>>());
            let retries = median(&rs.iter().map(|r| r.retries as f64).collect::<Vec<_>>());
            let errors: u64 = rs.iter().map(|r| r.errors).sum();
            let ratio = if s.python {
                String::new()
            } else {
                format!("**{:.1}x**", rate / python_rate.max(1e-9))
            };
            println!(
                "| {w} | {} | {rate:.0} | {retries:.0} | {errors} | {ratio} |",
                s.name
            );
            if let Some(e) = rs.iter().find_map(|r| r.first_error.clone()) {
                problems.push((w, s, e));
            }
        }
    }
    println!();
    for (w, s, e) in &problems {
        println!("{} with {w} writers, first error: {e}", s.name);
    }
    if !problems.is_empty() {
        for s in servers
            .iter()
            .filter(|s| problems.iter().any(|(_, p, _)| std::ptr::eq(*p, *s)))
        {
            let log = std::fs::read_to_string(&s.stderr).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            if !tail.is_empty() {
                println!("\n{} stderr (last lines):", s.name);
                for l in tail.iter().rev() {
                    println!("    {l}");
                }
            }
        }
        println!();
    }
}
