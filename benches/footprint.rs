//! zeoraid's footprint (issue #14), side by side in one run, printed as
//! markdown tables with ratios, then one short summary table for the
//! README:
//!
//! - `size`: the stripped release binary (`cargo build --release --bin
//!   zeoraid`, `strip = true`) for the default features, for
//!   `--no-default-features`, and for the default minus each of `admin`,
//!   `tls` and `bench`; what each feature costs is size(default) -
//!   size(default without it). Built in `target/footprint` (the main
//!   target directory is left alone), each binary kept as
//!   `target/footprint/zeoraid-<label>`. A feature set that does not build
//!   prints cargo's error and the others go on. Takes a few minutes (one
//!   release build per set).
//! - `memory`: resident memory (`VmRSS`, and `VmHWM`, the peak, from
//!   `/proc/PID/status`) of `zeoraid serve` over one memory storage and of
//!   Python `runzeo` over `<mappingstorage>`, both fresh: idle 1 s after
//!   start, then with `ZEORAID_BENCH_IDLE` (default 1000) idle clients
//!   that completed the handshake and `register`ed (raw frames), and the
//!   cost per client; then zeoraid serving an array of two file mirrors
//!   (fsync) under the `zeoraid bench` load (8 clients, one run with 1 and
//!   one with 16 loads in flight), VmRSS sampled every 100 ms. Targets:
//!   zeoraid idle at most 1/4 of Python's RSS, and less per client.
//! - `onecore`: commits/s and loads/s of zeoraid pinned to core 0
//!   (`taskset -c 0`, `workers = 2`) vs Python `runzeo` pinned the same
//!   way, the load generator (`zeoraid bench`, 8 clients) pinned to core
//!   1, for a memory storage (runzeo: `<mappingstorage>`) and a file
//!   storage with fsync on every commit (runzeo: `<filestorage>`). Target:
//!   at least Python's rates on the same core.
//!
//! Run: `cargo bench --bench footprint [-- size|memory|onecore]` (all by
//! default). `memory` and `onecore` need a Python with ZODB 6 + ZEO 6
//! (`$ZEORAID_PYTHON` or `.venv/bin/python`, made by `bash
//! tests/run-all.sh`); `onecore` needs two cores and `taskset`. Knobs:
//! `ZEORAID_BENCH_SECONDS` (per load run, half commits and half loads,
//! default 4), `ZEORAID_BENCH_REPEAT` (fresh servers / rounds, default 3;
//! medians are reported), `ZEORAID_BENCH_IDLE` (idle clients, default
//! 1000).
//!
//! The server under test and the load generator are this build's
//! `zeoraid` binary (`target/release/zeoraid`), or `$ZEORAID_BENCH_BIN`
//! (e.g. `target/footprint/zeoraid-no-default`, kept by `size`; it needs
//! the `bench` feature for the load). Asserts nothing about timing or
//! sizes.

mod common;

use common::{
    env, free_port, mark, median, python, ratio, status_kib, wait_port, wanted, write_runzeo_conf,
};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use zeoraid::zeo::frame::{read_frame, write_frame};
use zeoraid::zeo::message;

/// The `zeoraid` binary under test: `$ZEORAID_BENCH_BIN` (e.g. one the
/// `size` section kept), else the one built with this bench.
fn zeoraid_bin() -> PathBuf {
    std::env::var_os("ZEORAID_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_zeoraid")))
}
/// Clients of the `zeoraid bench` load generator.
const CLIENTS: usize = 8;

struct Knobs {
    seconds: f64,
    repeat: usize,
    idle: usize,
}

/// One row of the closing summary: what, zeoraid, Python, zeoraid/Python.
type Row = [String; 4];

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with --list
    }
    let knobs = Knobs {
        seconds: env("ZEORAID_BENCH_SECONDS").unwrap_or(4.0),
        repeat: env::<usize>("ZEORAID_BENCH_REPEAT").unwrap_or(3).max(1),
        idle: env::<usize>("ZEORAID_BENCH_IDLE").unwrap_or(1000).max(1),
    };
    let started = Instant::now();
    let mut summary: Vec<Row> = Vec::new();
    if wanted("size") {
        size(&mut summary);
    }
    if wanted("memory") {
        memory(&knobs, &mut summary);
    }
    if wanted("onecore") {
        onecore(&knobs, &mut summary);
    }
    if !summary.is_empty() {
        println!("\nSummary (for the README):\n");
        println!("| | zeoraid | python runzeo | zeoraid/python |");
        println!("|---|---:|---:|---:|");
        for [what, ours, py, r] in &summary {
            println!("| {what} | {ours} | {py} | {r} |");
        }
    }
    eprintln!("(bench took {:.0} s)", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------
// Building blocks.
// ---------------------------------------------------------------------------

fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

/// `program`, under `taskset -c CPU` when `cpu` is given.
fn command(program: impl AsRef<std::ffi::OsStr>, cpu: Option<usize>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A server child, killed on drop.
struct Server {
    child: Child,
    addr: String,
    name: String,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `zeoraid serve` over `storage` (the TOML of storage "1" after its
/// `name`), with `workers` when given, on `cpu` when given; waits for its
/// listening line.
fn start_zeoraid(
    dir: &Path,
    name: &str,
    storage: &str,
    workers: Option<usize>,
    cpu: Option<usize>,
) -> Server {
    std::fs::create_dir_all(dir).expect("dir");
    let conf = dir.join("zeoraid.toml");
    let workers = workers.map_or(String::new(), |w| format!("workers = {w}\n"));
    std::fs::write(
        &conf,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{workers}[[storage]]\nname = \"1\"\n{storage}\n"
        ),
    )
    .expect("write config");
    let mut child = command(zeoraid_bin(), cpu)
        .args(["serve", "--config"])
        .arg(&conf)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start zeoraid");
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let Some(addr) = line.trim().strip_prefix("zeoraid: listening on ") else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("zeoraid did not start: first line {line:?}");
    };
    Server {
        addr: addr.to_string(),
        child,
        name: name.to_string(),
    }
}

/// Python `runzeo` over `storage` (a ZConfig storage section named 1), on
/// `cpu` when given; waits until it accepts connections.
fn start_runzeo(dir: &Path, name: &str, storage: &str, cpu: Option<usize>) -> Server {
    std::fs::create_dir_all(dir).expect("dir");
    let port = free_port();
    let conf = write_runzeo_conf(dir, port, storage, false);
    let child = command(python(), cpu)
        .args(["-m", "ZEO.runzeo", "-C"])
        .arg(&conf)
        .stdout(Stdio::null())
        .spawn()
        .expect("start runzeo");
    let addr = format!("127.0.0.1:{port}");
    let server = Server {
        child,
        addr: addr.clone(),
        name: name.to_string(),
    };
    wait_port(addr.parse().expect("addr"));
    server
}

fn zeoraid_memory(dir: &Path, workers: Option<usize>, cpu: Option<usize>) -> Server {
    start_zeoraid(dir, "zeoraid (memory)", "kind = \"memory\"", workers, cpu)
}

fn zeoraid_file(dir: &Path, workers: Option<usize>, cpu: Option<usize>) -> Server {
    let storage = format!(
        "kind = \"file\"\npath = {:?}",
        dir.join("Data.fs").display().to_string()
    );
    start_zeoraid(dir, "zeoraid (file, fsync)", &storage, workers, cpu)
}

fn runzeo_memory(dir: &Path, cpu: Option<usize>) -> Server {
    start_runzeo(
        dir,
        "python runzeo (mappingstorage)",
        "<mappingstorage 1>\n</mappingstorage>",
        cpu,
    )
}

fn runzeo_file(dir: &Path, cpu: Option<usize>) -> Server {
    let storage = format!(
        "<filestorage 1>\n  path {}\n</filestorage>",
        dir.join("Data.fs").display()
    );
    start_runzeo(dir, "python runzeo (filestorage, fsync)", &storage, cpu)
}

/// The CPUs the threads of `pid` may run on, e.g. `CPU 0 for all 7 threads`.
fn cpus_allowed(pid: u32) -> String {
    let mut sets = std::collections::BTreeSet::new();
    let mut threads = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            if let Some(v) = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            {
                sets.insert(v.trim().to_string());
                threads += 1;
            }
        }
    }
    let sets: Vec<String> = sets.into_iter().collect();
    match sets.as_slice() {
        [one] if threads == 1 => format!("CPU {one} for its one thread"),
        [one] => format!("CPU {one} for all {threads} threads"),
        _ => format!("CPUs {} across {threads} threads", sets.join(" / ")),
    }
}

/// VmRSS and VmHWM, KiB.
#[derive(Clone, Copy)]
struct Mem {
    rss: f64,
    hwm: f64,
}

fn mem(pid: u32) -> Mem {
    Mem {
        rss: status_kib(pid, "VmRSS"),
        hwm: status_kib(pid, "VmHWM"),
    }
}

/// Raise this process's open-file limit to its hard limit; children
/// started afterwards (the servers) inherit it.
fn raise_nofile(need: libc::rlim_t) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            eprintln!(
                "setrlimit(RLIMIT_NOFILE) failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    if lim.rlim_cur < need {
        eprintln!(
            "warning: RLIMIT_NOFILE is {} (hard limit), fewer than the {need} descriptors asked for",
            lim.rlim_cur
        );
    }
}

/// `n` ZEO connections to `addr` that read the server's protocol
/// greeting, answer `M5` and `register` storage "1" (waiting for its reply).
fn idle_clients(addr: &str, n: usize) -> Vec<TcpStream> {
    let register = message::encode(
        1,
        0,
        "register",
        &rmpv::Value::Array(vec![rmpv::Value::from("1"), rmpv::Value::Boolean(false)]),
    );
    (0..n)
        .map(|i| {
            let mut s = TcpStream::connect(addr)
                .unwrap_or_else(|e| panic!("idle client {i} to {addr}: connect: {e}"));
            s.set_read_timeout(Some(Duration::from_secs(30))).ok();
            read_frame(&mut s, 1 << 20).expect("protocol greeting");
            write_frame(&mut s, b"M5").expect("handshake");
            write_frame(&mut s, &register).expect("register");
            read_frame(&mut s, 1 << 20).expect("register reply");
            s
        })
        .collect()
}

/// One `zeoraid bench` run's figures.
#[derive(Clone, Copy, Default)]
struct Load {
    commits: f64,
    commit_p99: f64,
    loads: f64,
}

/// Run the `zeoraid bench` subcommand against `addr` (8 clients,
/// `pipeline` loads in flight), on `cpu` when given; meanwhile sample the
/// VmRSS of `watch` every 100 ms. Returns the figures and the largest
/// sample (KiB; NaN without `watch`).
fn load(
    addr: &str,
    seconds: f64,
    pipeline: usize,
    cpu: Option<usize>,
    watch: Option<u32>,
) -> (Load, f64) {
    let mut child = command(zeoraid_bin(), cpu)
        .args(["bench", "--json", "--address", addr])
        .args(["--clients", &CLIENTS.to_string()])
        .args(["--duration", &seconds.to_string()])
        .args(["--pipeline", &pipeline.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start zeoraid bench");
    let mut peak = f64::NAN;
    loop {
        if let Some(pid) = watch {
            peak = peak.max(status_kib(pid, "VmRSS"));
        }
        if child.try_wait().expect("wait for zeoraid bench").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("zeoraid bench output");
    assert!(
        out.status.success(),
        "zeoraid bench against {addr} failed: {}",
        out.status
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "zeoraid bench printed no JSON ({e}): {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let f = |k: &str| j[k].as_f64().unwrap_or(f64::NAN);
    (
        Load {
            commits: f("commits_per_s"),
            commit_p99: f("commit_p99_ms"),
            loads: f("loads_per_s"),
        },
        peak,
    )
}

// ---------------------------------------------------------------------------
// size
// ---------------------------------------------------------------------------

fn size(summary: &mut Vec<Row>) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target/footprint");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let sets: [(&str, &str, &[&str]); 5] = [
        ("default", "default (admin, tls, bench)", &[]),
        (
            "no-default",
            "--no-default-features",
            &["--no-default-features"],
        ),
        (
            "no-admin",
            "default without admin",
            &["--no-default-features", "--features", "tls,bench"],
        ),
        (
            "no-tls",
            "default without tls",
            &["--no-default-features", "--features", "admin,bench"],
        ),
        (
            "no-bench",
            "default without bench",
            &["--no-default-features", "--features", "admin,tls"],
        ),
    ];
    println!(
        "\nBinary size: `cargo build --release --bin zeoraid` (stripped), in {}\n",
        target.display()
    );
    let mut sizes: Vec<Option<u64>> = Vec::new();
    for (label, what, flags) in sets {
        let t = Instant::now();
        eprintln!(
            "building {what}: cargo build --release --bin zeoraid {}",
            flags.join(" ")
        );
        let out = Command::new(&cargo)
            .args(["build", "--release", "--bin", "zeoraid"])
            .args(flags)
            .current_dir(&root)
            .env("CARGO_TARGET_DIR", &target)
            .stdin(Stdio::null())
            .output()
            .expect("run cargo");
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = err.lines().collect();
            let first = lines
                .iter()
                .position(|l| l.starts_with("error"))
                .unwrap_or(0);
            println!(
                "{what}: the build failed ({}); cargo said:\n```\n{}\n```\n",
                out.status,
                lines[first..]
                    .iter()
                    .take(60)
                    .copied()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            sizes.push(None);
            continue;
        }
        let kept = target.join(format!("zeoraid-{label}"));
        std::fs::copy(target.join("release/zeoraid"), &kept).expect("copy the binary");
        let len = std::fs::metadata(&kept).expect("binary").len();
        eprintln!("  {len} bytes ({:.0} s)", t.elapsed().as_secs_f64());
        sizes.push(Some(len));
    }
    let default = sizes[0];
    let mb = |b: u64| format!("{:.2}", b as f64 / 1e6);
    println!("| features | flags | bytes | MB | vs default |");
    println!("|---|---|---:|---:|---:|");
    for ((_, what, flags), s) in sets.iter().zip(&sizes) {
        let flags = if flags.is_empty() {
            "(none)".to_string()
        } else {
            format!("`{}`", flags.join(" "))
        };
        match s {
            Some(b) => println!(
                "| {what} | {flags} | {b} | {} | {} |",
                mb(*b),
                default.map_or("".into(), |d| format!("{:.2}x", ratio(*b as f64, d as f64)))
            ),
            None => println!("| {what} | {flags} | build failed | | |"),
        }
    }
    let Some(d) = default else {
        return;
    };
    println!("\nWhat each feature costs (size with the default features - size without it):\n");
    println!("| feature | bytes | MB | share of the default binary |");
    println!("|---|---:|---:|---:|");
    let cost = |name: &str, without: Option<u64>| match without {
        Some(w) => {
            let c = d as i64 - w as i64;
            println!(
                "| {name} | {c} | {:.2} | {:.1}% |",
                c as f64 / 1e6,
                ratio(c as f64, d as f64) * 100.0
            );
        }
        None => println!("| {name} | (its build failed) | | |"),
    };
    cost("`admin`", sizes[2]);
    cost("`tls`", sizes[3]);
    cost("`bench`", sizes[4]);
    cost("all three (`--no-default-features`)", sizes[1]);
    summary.push([
        "binary, stripped, default features".into(),
        format!("{} MB", mb(d)),
        String::new(),
        String::new(),
    ]);
    if let Some(n) = sizes[1] {
        summary.push([
            "binary, stripped, `--no-default-features`".into(),
            format!("{} MB", mb(n)),
            String::new(),
            String::new(),
        ]);
    }
}

// ---------------------------------------------------------------------------
// memory
// ---------------------------------------------------------------------------

fn memory(knobs: &Knobs, summary: &mut Vec<Row>) {
    let n = knobs.idle;
    raise_nofile(n as libc::rlim_t + 256);
    // Idle, then with n idle clients; fresh servers every round, Python
    // and zeoraid alternating.
    let mut idle: [Vec<Mem>; 2] = [Vec::new(), Vec::new()];
    let mut busy: [Vec<Mem>; 2] = [Vec::new(), Vec::new()];
    let mut names = [String::new(), String::new()];
    for _ in 0..knobs.repeat {
        for (i, names_i) in names.iter_mut().enumerate() {
            let dir = tempfile::tempdir().expect("tempdir");
            let s = if i == 0 {
                runzeo_memory(dir.path(), None)
            } else {
                zeoraid_memory(dir.path(), None, None)
            };
            *names_i = s.name.clone();
            std::thread::sleep(Duration::from_secs(1));
            idle[i].push(mem(s.pid()));
            let conns = idle_clients(&s.addr, n);
            std::thread::sleep(Duration::from_secs(1));
            busy[i].push(mem(s.pid()));
            drop(conns);
        }
    }
    let med = |v: &[Mem]| Mem {
        rss: median(&v.iter().map(|m| m.rss).collect::<Vec<_>>()),
        hwm: median(&v.iter().map(|m| m.hwm).collect::<Vec<_>>()),
    };
    let (pi, ri) = (med(&idle[0]), med(&idle[1]));
    let (pb, rb) = (med(&busy[0]), med(&busy[1]));
    let per = |i: Mem, b: Mem| (b.rss - i.rss) / n as f64;
    let (pp, rp) = (per(pi, pb), per(ri, rb));
    println!(
        "\nResident memory, fresh servers over one memory storage: idle 1 s after start, then with {n} idle clients \
         (handshake and register done), 1 s later; median of {}\n",
        knobs.repeat
    );
    println!("| server | RSS idle | peak (VmHWM) idle | RSS, {n} clients | peak, {n} clients | per client |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, i, b, p) in [(&names[0], pi, pb, pp), (&names[1], ri, rb, rp)] {
        println!(
            "| {name} | {} | {} | {} | {} | {:.1} KiB |",
            mib(i.rss),
            mib(i.hwm),
            mib(b.rss),
            mib(b.hwm),
            p
        );
    }
    let idle_ratio = ratio(ri.rss, pi.rss);
    let client_ratio = ratio(rp, pp);
    println!(
        "| **ratio zeoraid/python** | **{:.2}x** | **{:.2}x** | **{:.2}x** | **{:.2}x** | **{:.2}x** |",
        idle_ratio,
        ratio(ri.hwm, pi.hwm),
        ratio(rb.rss, pb.rss),
        ratio(rb.hwm, pb.hwm),
        client_ratio
    );
    println!(
        "\nTargets: idle RSS at most 0.25x Python's: **{:.2}x**, {}; less per client than Python: **{:.2}x**, {}.",
        idle_ratio,
        mark(idle_ratio <= 0.25),
        client_ratio,
        mark(client_ratio < 1.0)
    );
    summary.push([
        "RSS idle (one memory storage)".into(),
        mib(ri.rss),
        mib(pi.rss),
        format!("{idle_ratio:.2}x"),
    ]);
    summary.push([
        format!("RSS with {n} idle clients"),
        mib(rb.rss),
        mib(pb.rss),
        format!("{:.2}x", ratio(rb.rss, pb.rss)),
    ]);
    summary.push([
        "per idle client".into(),
        format!("{rp:.1} KiB"),
        format!("{pp:.1} KiB"),
        format!("{client_ratio:.2}x"),
    ]);

    // Under load: an array of two file mirrors.
    let mut idle_rss = Vec::new();
    let mut sampled = Vec::new();
    let mut hwm = Vec::new();
    let mut loads: Vec<Load> = Vec::new();
    let mut loads16 = Vec::new();
    for _ in 0..knobs.repeat {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for m in ["a", "b"] {
            std::fs::create_dir_all(d.join(m)).expect("mirror dir");
        }
        let storage = format!(
            "kind = \"raid\"\n\
             [[storage.backend]]\nname = \"a\"\nkind = \"file\"\npath = {:?}\n\
             [[storage.backend]]\nname = \"b\"\nkind = \"file\"\npath = {:?}",
            d.join("a/Data.fs").display().to_string(),
            d.join("b/Data.fs").display().to_string()
        );
        let s = start_zeoraid(d, "zeoraid (array of 2 file mirrors)", &storage, None, None);
        std::thread::sleep(Duration::from_secs(1));
        idle_rss.push(mem(s.pid()).rss);
        let (l1, p1) = load(&s.addr, knobs.seconds, 1, None, Some(s.pid()));
        let (l16, p16) = load(&s.addr, knobs.seconds, 16, None, Some(s.pid()));
        sampled.push(p1.max(p16));
        hwm.push(mem(s.pid()).hwm);
        loads.push(l1);
        loads16.push(l16.loads);
    }
    let (i, m, h) = (median(&idle_rss), median(&sampled), median(&hwm));
    let commits = median(&loads.iter().map(|l| l.commits).collect::<Vec<_>>());
    let p99 = median(&loads.iter().map(|l| l.commit_p99).collect::<Vec<_>>());
    let lps = median(&loads.iter().map(|l| l.loads).collect::<Vec<_>>());
    let lps16 = median(&loads16);
    println!(
        "\nzeoraid serving an array of two file mirrors (fsync) under `zeoraid bench` ({CLIENTS} clients, \
         {} s with 1 load in flight, then {} s with 16), VmRSS sampled every 100 ms; fresh array, median of {}\n",
        knobs.seconds, knobs.seconds, knobs.repeat
    );
    println!("| server | RSS idle | RSS max under load | peak (VmHWM) | commits/s | commit p99 ms | loads/s | loads/s, 16 in flight |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| zeoraid, array of 2 file mirrors | {} | {} | {} | {commits:.0} | {p99:.2} | {lps:.0} | {lps16:.0} |",
        mib(i),
        mib(m),
        mib(h)
    );
    summary.push([
        format!("peak RSS, array of 2 file mirrors under load ({CLIENTS} clients)"),
        mib(h),
        String::new(),
        String::new(),
    ]);
}

// ---------------------------------------------------------------------------
// onecore
// ---------------------------------------------------------------------------

fn onecore(knobs: &Knobs, summary: &mut Vec<Row>) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 {
        println!("\nonecore: needs 2 cores (server on 0, load generator on 1); this machine has {cores}: skipped");
        return;
    }
    for file in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let servers = if file {
            [
                runzeo_file(&dir.path().join("py"), Some(0)),
                zeoraid_file(&dir.path().join("rs"), Some(2), Some(0)),
            ]
        } else {
            [
                runzeo_memory(&dir.path().join("py"), Some(0)),
                zeoraid_memory(&dir.path().join("rs"), Some(2), Some(0)),
            ]
        };
        let pinned: Vec<String> = servers.iter().map(|s| cpus_allowed(s.pid())).collect();
        let mut runs: [Vec<Load>; 2] = [Vec::new(), Vec::new()];
        let mut runs16: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        // Interleaved, so both see the same machine conditions.
        for _ in 0..knobs.repeat {
            for (i, s) in servers.iter().enumerate() {
                runs[i].push(load(&s.addr, knobs.seconds, 1, Some(1), None).0);
                runs16[i].push(load(&s.addr, knobs.seconds, 16, Some(1), None).0.loads);
            }
        }
        let med: Vec<(Load, f64)> = (0..2)
            .map(|i| {
                let r = &runs[i];
                (
                    Load {
                        commits: median(&r.iter().map(|l| l.commits).collect::<Vec<_>>()),
                        commit_p99: median(&r.iter().map(|l| l.commit_p99).collect::<Vec<_>>()),
                        loads: median(&r.iter().map(|l| l.loads).collect::<Vec<_>>()),
                    },
                    median(&runs16[i]),
                )
            })
            .collect();
        let ((p, p16), (r, r16)) = (med[0], med[1]);
        let what = if file {
            "File storage, fsync on every commit (runzeo: filestorage)"
        } else {
            "Memory storage (runzeo: mappingstorage)"
        };
        println!(
            "\n{what}, one core each: the servers pinned to core 0 (python: {}; zeoraid: {}, `workers = 2`), \
             the load generator `zeoraid bench` ({CLIENTS} clients, 1 object of 128 bytes per commit) pinned to core 1; \
             {} s per run (half commits, half loads), median of {}\n",
            pinned[0], pinned[1], knobs.seconds, knobs.repeat
        );
        println!("| server | commits/s | commit p99 ms | loads/s | loads/s, 16 in flight |");
        println!("|---|---:|---:|---:|---:|");
        for (s, (l, l16)) in servers.iter().zip(&med) {
            println!(
                "| {} | {:.0} | {:.2} | {:.0} | {:.0} |",
                s.name, l.commits, l.commit_p99, l.loads, l16
            );
        }
        let (rc, rl, rl16) = (
            ratio(r.commits, p.commits),
            ratio(r.loads, p.loads),
            ratio(r16, p16),
        );
        println!("| **ratio zeoraid/python** | **{rc:.2}x** | | **{rl:.2}x** | **{rl16:.2}x** |");
        println!(
            "\nTarget at least Python's rates on one core: commits **{rc:.2}x**, {}; loads **{rl:.2}x**, {}.",
            mark(rc >= 1.0),
            mark(rl >= 1.0)
        );
        let what = if file { "file, fsync" } else { "memory" };
        summary.push([
            format!("commits/s on one core ({what})"),
            format!("{:.0}", r.commits),
            format!("{:.0}", p.commits),
            format!("{rc:.2}x"),
        ]);
        summary.push([
            format!("loads/s on one core ({what})"),
            format!("{:.0}", r.loads),
            format!("{:.0}", p.loads),
            format!("{rl:.2}x"),
        ]);
        summary.push([
            format!("loads/s on one core, 16 in flight ({what})"),
            format!("{r16:.0}"),
            format!("{p16:.0}"),
            format!("{rl16:.2}x"),
        ]);
    }
}
