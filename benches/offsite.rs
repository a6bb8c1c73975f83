//! Off-site mirrors (issue #10), release build, side by side in one run.
//! Every process is a real `zeoraid serve`: the array (two file mirrors,
//! fsync on every commit, and in most runs an off-site ZEO backend) and
//! the off-site site (a second `zeoraid serve` over a file storage),
//! reached through a [`Proxy`] in this process that plays the WAN link
//! (50 ms one-way delay; a bandwidth cap where said). The mirror's figures
//! come from the array's status document (`GET /details` on its admin
//! listener, `STORAGE.raid.offsite[0]`).
//!
//! - `commit`: commit p50/p99 and commits/s of the array WITHOUT and WITH
//!   the off-site backend on a 50 ms one-way link: 8 clients committing
//!   one new 128-byte object per transaction (`zeoraid::bench::commit_phase`)
//!   for `ZEORAID_BENCH_SECONDS`, the two arrays in alternating order,
//!   medians of `ZEORAID_BENCH_REPEAT` (target: with/without ≤ 1.10). After
//!   each run WITH, the mirror's lag and the time it took to drain it.
//! - `catchup`: with the link down (the proxy swallows, connections cut)
//!   the array commits a backlog of `ZEORAID_BENCH_TXNS` transactions of
//!   one 2 KB record each; the link comes back capped at 2 MB/s each way
//!   with 50 ms delay; the time until the mirror holds the array's last
//!   transaction (`lag-transactions` 0). Twice per repeat: from the
//!   mirror's queue (a link outage), and from the file mirrors after a
//!   restart of the array while the link was down (the queue is gone; the
//!   catch-up reads the source). The rate is the bytes that crossed the
//!   link to the mirror (counted by the proxy) while it was busy, against
//!   the link's capacity (target ≥ 80 %); also the record bytes per second.
//! - `lag`: a steady load of 200 commits/s (1 KB records, 4 clients,
//!   paced) while `lag-seconds` and `lag-transactions` are sampled every
//!   200 ms; the link (50 ms, 2 MB/s) is down for 5 s in the middle. A
//!   compact table of the samples, commit latency before/during/after the
//!   outage, and a plot (`target/offsite-lag.svg`; `docs/offsite-lag.svg`
//!   with `--save-plot`).
//!
//! A link outage is `set_swallow(true)` + `cut()` (the mirror's connection
//! drops; new ones are accepted and never answered, as a dead route);
//! restoring it is `set_swallow(false)` + `cut()` (the never-answered
//! connections are dropped, as a route coming back refuses nothing).
//!
//! Run: `cargo bench --bench offsite [-- commit|catchup|lag] [-- --save-plot]`
//! (all by default, about 3 minutes). Knobs: `ZEORAID_BENCH_SECONDS` (each
//! commit run, default 2), `ZEORAID_BENCH_REPEAT` (default 3),
//! `ZEORAID_BENCH_TXNS` (the catch-up backlog, default 4000),
//! `ZEORAID_BENCH_RECORD` (its record size in bytes, default 2048),
//! `ZEORAID_BENCH_LAG_SECONDS` (the lag run, default 25; the link is down
//! from 8 s to 13 s). A quick check:
//! `ZEORAID_BENCH_SECONDS=1 ZEORAID_BENCH_REPEAT=1 ZEORAID_BENCH_TXNS=1000
//! ZEORAID_BENCH_LAG_SECONDS=16 cargo bench --bench offsite`.
//!
//! Everything shares the machine's cores (the load generator, the proxy,
//! both servers); the tables assert nothing about timing.

mod common;

use common::{cpu_seconds, env, free_port, mark, ratio, spawn_zeoraid, wanted};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use zeoraid::bench::plot::{line_chart, Series};
use zeoraid::bench::proxy::Proxy;
use zeoraid::bench::{commit_phase, fill, median, PhaseResult};
use zeoraid::storage::{Data, Op, Storage, Tid, Txn, TxnMeta, Vote};
use zeoraid::zeo::client::{Client, ClientOptions};

/// One-way delay of the WAN link.
const DELAY: Duration = Duration::from_millis(50);
/// The bandwidth cap of `catchup` and `lag`, bytes per second each way.
const LINK: u64 = 2_000_000;
/// Clients of the commit runs.
const CLIENTS: usize = 8;

struct Knobs {
    seconds: f64,
    repeat: usize,
    txns: usize,
    record: usize,
    lag_seconds: f64,
    save_plot: bool,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with --list
    }
    let k = Knobs {
        seconds: env("ZEORAID_BENCH_SECONDS").unwrap_or(2.0),
        repeat: env::<usize>("ZEORAID_BENCH_REPEAT").unwrap_or(3).max(1),
        txns: env::<usize>("ZEORAID_BENCH_TXNS")
            .unwrap_or(4000)
            .max(CLIENTS),
        record: env::<usize>("ZEORAID_BENCH_RECORD").unwrap_or(2048).max(1),
        lag_seconds: env::<f64>("ZEORAID_BENCH_LAG_SECONDS")
            .unwrap_or(25.0)
            .max(16.0),
        save_plot: args.iter().any(|a| a == "--save-plot"),
    };
    let started = Instant::now();
    if wanted("commit") {
        commit(&k);
    }
    if wanted("catchup") {
        catchup(&k);
    }
    if wanted("lag") {
        lag(&k);
    }
    eprintln!("(bench took {:.0} s)", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------
// Building blocks.
// ---------------------------------------------------------------------------

/// A `zeoraid serve` child (stderr to `log`), killed on drop.
struct Zeoraid {
    child: Option<Child>,
    addr: String,
    conf: PathBuf,
    log: PathBuf,
    /// The admin listener's port (arrays only).
    admin: u16,
}

impl Zeoraid {
    fn start(conf: &Path, admin: u16) -> Zeoraid {
        let log = conf.with_extension("log");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let (child, addr) = spawn_zeoraid(conf, Some(f));
        Zeoraid {
            child: Some(child),
            addr,
            conf: conf.to_path_buf(),
            log,
            admin,
        }
    }

    /// SIGTERM (a graceful stop) and wait; killed after 30 s.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: a signal to our own child, which has not been reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                eprintln!("zeoraid did not stop on SIGTERM within 30 s; killed");
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start it again (after [`Zeoraid::stop`]) from the same config.
    fn restart(&mut self) {
        self.stop();
        let mut again = Zeoraid::start(&self.conf, self.admin);
        self.child = again.child.take();
        self.addr = again.addr.clone();
    }

    fn client(&self) -> Client {
        Client::connect(ClientOptions {
            call_timeout: Duration::from_secs(60),
            ..ClientOptions::new(self.addr.clone())
        })
        .unwrap_or_else(|e| panic!("cannot connect to zeoraid at {}: {e}", self.addr))
    }

    fn last_tid(&self) -> String {
        let c = self.client();
        let t = c.last_transaction().expect("last transaction");
        Storage::close(&c);
        t.to_string()
    }

    /// The array's off-site mirror in its status document (None while the
    /// admin listener does not answer).
    fn mirror(&self) -> Option<Value> {
        let mut s = TcpStream::connect(("127.0.0.1", self.admin)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(s, "GET /details HTTP/1.0\r\nHost: bench\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let body = out.split_once("\r\n\r\n")?.1;
        let doc: Value = serde_json::from_str(body).ok()?;
        let m = doc["1"]["raid"]["offsite"][0].clone();
        (!m.is_null()).then_some(m)
    }

    /// Poll the mirror every 50 ms until `ok`; panics with the last status
    /// and the log after `within`.
    fn wait_mirror(&self, what: &str, within: Duration, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let m = self.mirror();
            if let Some(m) = m.as_ref().filter(|m| ok(m)) {
                return m.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "{what}: not within {within:?}; the mirror: {}\nlog {}:\n{}",
                    m.unwrap_or(Value::Null),
                    self.log.display(),
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until the mirror holds transaction `last` and nothing is left.
    fn wait_caught_up(&self, last: &str, within: Duration) -> Value {
        self.wait_mirror("the off-site mirror did not catch up", within, |m| {
            caught_up(m, last)
        })
    }
}

impl Drop for Zeoraid {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn caught_up(m: &Value, last: &str) -> bool {
    m["last-tid"].as_str() == Some(last) && m["lag-transactions"].as_u64() == Some(0)
}

/// The off-site site: `zeoraid serve` over a file storage (fsync on).
/// The off-site site. `elsewhere`: a stand-in for a server on another
/// machine, for the commit-latency figure — its threads at nice 19 (they
/// yield this machine's cores to the array) and a memory storage (no
/// fsyncs on the array's disk); else a file storage at normal priority.
fn dr_site(dir: &Path, elsewhere: bool) -> Zeoraid {
    std::fs::create_dir_all(dir).expect("dir");
    let conf = dir.join("dr.toml");
    let storage = if elsewhere {
        "kind = \"memory\"\n".to_string()
    } else {
        format!(
            "kind = \"file\"\npath = {:?}\n",
            dir.join("Data.fs").display().to_string()
        )
    };
    std::fs::write(
        &conf,
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[[storage]]\nname = \"1\"\n{storage}"),
    )
    .expect("dr config");
    let dr = Zeoraid::start(&conf, 0);
    if elsewhere {
        if let Some(pid) = dr.child.as_ref().map(|c| c.id()) {
            for task in std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Ok(tid) = task.file_name().to_string_lossy().parse::<libc::pid_t>() {
                    idle_priority(tid);
                }
            }
        }
    }
    dr
}

/// Run thread `tid` (0: the calling thread) only when this machine's
/// cores have nothing else to do (`SCHED_IDLE`): the stand-in for a site
/// elsewhere should take none of the array's CPU. Threads it starts
/// inherit the policy.
fn idle_priority(tid: libc::pid_t) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on a thread of this process or of our own
    // child, with a parameter that lives across the call.
    let rc = unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        eprintln!(
            "cannot run thread {tid} at idle priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The array: file mirrors `a` and `b` (fsync on), and the off-site
/// backend `dr` at `offsite` when given; admin listener on a free port.
fn array(dir: &Path, offsite: Option<SocketAddr>) -> Zeoraid {
    std::fs::create_dir_all(dir).expect("dir");
    let (port, admin) = (free_port(), free_port());
    let dr = offsite
        .map(|a| {
            format!(
                "[[storage.backend]]\nname = \"dr\"\nkind = \"zeo\"\naddress = \"{a}\"\n\
                 storage = \"1\"\nmode = \"offsite\"\nmax-lag = 60\n"
            )
        })
        .unwrap_or_default();
    let conf = dir.join("zeoraid.toml");
    std::fs::write(
        &conf,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [[storage]]\nname = \"1\"\nkind = \"raid\"\n\
             [[storage.backend]]\nname = \"a\"\nkind = \"file\"\npath = \"a/Data.fs\"\n\
             [[storage.backend]]\nname = \"b\"\nkind = \"file\"\npath = \"b/Data.fs\"\n{dr}"
        ),
    )
    .expect("array config");
    Zeoraid::start(&conf, admin)
}

/// The off-site site behind a proxy with the WAN's delay, and an array
/// shipping to it.
struct Setup {
    _dir: tempfile::TempDir,
    _dr: Zeoraid,
    link: Proxy,
    array: Zeoraid,
}

fn setup(bandwidth: u64, elsewhere: bool) -> Setup {
    let dir = tempfile::tempdir().expect("tmp");
    let dr = dr_site(&dir.path().join("dr"), elsewhere);
    let target: SocketAddr = dr.addr.parse().expect("dr address");
    // Elsewhere, the link is routers, not this machine's cores: the proxy's
    // threads (which inherit the priority of the thread that starts it)
    // run at nice 19 too.
    let link = std::thread::scope(|s| {
        s.spawn(|| {
            if elsewhere {
                idle_priority(0);
            }
            Proxy::start(target).expect("proxy")
        })
        .join()
        .expect("proxy thread")
    });
    link.set_delay(DELAY);
    link.set_bandwidth(bandwidth);
    let array = array(&dir.path().join("array"), Some(link.addr()));
    array.wait_mirror(
        "the off-site mirror did not connect",
        Duration::from_secs(30),
        |m| m["state"] == "replicating",
    );
    Setup {
        _dir: dir,
        _dr: dr,
        link,
        array,
    }
}

/// The link goes down: nothing passes, the mirror's connection drops, new
/// ones are never answered.
fn link_down(p: &Proxy) {
    p.set_swallow(true);
    p.cut();
}

/// The link comes back (the never-answered connections are dropped).
fn link_up(p: &Proxy) {
    p.set_swallow(false);
    p.cut();
}

fn f64_of(m: &Value, key: &str) -> f64 {
    m[key].as_f64().unwrap_or(f64::NAN)
}

fn u64_of(m: &Value, key: &str) -> u64 {
    m[key].as_u64().unwrap_or(0)
}

// ---------------------------------------------------------------------------
// commit: the array with and without an off-site backend 50 ms away.
// ---------------------------------------------------------------------------

/// One commit run against an array: its figures, and the CPU time the
/// array's process spent per 1000 commits (what the off-site mirror
/// costs the array's machine, whatever the stand-ins on this one cost).
struct CommitRun {
    result: PhaseResult,
    cpu_ms_per_1000: f64,
}

impl Zeoraid {
    fn commit_run(&self, phase: Duration) -> CommitRun {
        let pid = self.child.as_ref().map_or(0, |c| c.id());
        let cpu0 = cpu_seconds(pid);
        let result = commit_phase(self.addr.as_str(), "1", CLIENTS, phase, 1, 128)
            .unwrap_or_else(|e| panic!("commit phase against {}: {e}", self.addr))
            .result;
        let cpu = cpu_seconds(pid) - cpu0;
        CommitRun {
            cpu_ms_per_1000: cpu * 1e6 / result.ops.max(1) as f64,
            result,
        }
    }
}

#[derive(Default)]
struct Runs {
    rate: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    cpu: Vec<f64>,
}

impl Runs {
    /// One run's figures (also on stderr, to see the spread).
    fn push(&mut self, label: &str, run: &CommitRun) {
        let r = &run.result;
        eprintln!(
            "  {label}: {:.0}/s p50 {:.2} ms p99 {:.2} ms, array CPU {:.0} ms per 1000 commits",
            r.per_second, r.p50_ms, r.p99_ms, run.cpu_ms_per_1000
        );
        self.rate.push(r.per_second);
        self.p50.push(r.p50_ms);
        self.p99.push(r.p99_ms);
        self.cpu.push(run.cpu_ms_per_1000);
    }
}

/// Let the machine settle before a run: dirty pages written back (a
/// previous run's, or a mirror's catch-up), then half a second of quiet.
fn settle() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::thread::sleep(Duration::from_millis(500));
}

/// The median of the ratios `a[i] / b[i]` (runs paired by round).
fn paired(a: &[f64], b: &[f64]) -> f64 {
    let r: Vec<f64> = a.iter().zip(b).map(|(a, b)| ratio(*a, *b)).collect();
    median(&r)
}

fn commit(k: &Knobs) {
    let s = setup(0, true);
    let here = setup(0, false);
    let dir = tempfile::tempdir().expect("tmp");
    let without = array(dir.path(), None);
    let phase = Duration::from_secs_f64(k.seconds);
    // Rounds of two runs back to back, `without` against `other`, which
    // goes first alternating; `after` follows each run of `other`.
    let rounds = |what: &str, other: &Zeoraid, label: &str, after: &mut dyn FnMut()| {
        let (mut alone, mut runs) = (Runs::default(), Runs::default());
        for rep in 0..k.repeat {
            eprintln!("commit, {what}: round {} of {}", rep + 1, k.repeat);
            let order = if rep % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for second in order {
                // Every run starts on a quiet machine: the previous run's
                // dirty pages written back, nothing left in flight.
                settle();
                if second {
                    runs.push(label, &other.commit_run(phase));
                    after();
                } else {
                    alone.push("without", &without.commit_run(phase));
                }
            }
        }
        (alone, runs)
    };
    // How far behind each load left the mirror, and how long it took to
    // drain (before the next run).
    let (mut lag_txns, mut lag_secs, mut drain) = (Vec::new(), Vec::new(), Vec::new());
    let (alone, with) = rounds(
        "site elsewhere",
        &s.array,
        "with, site elsewhere",
        &mut || {
            let t0 = Instant::now();
            let m = s.array.mirror().expect("status");
            lag_txns.push(u64_of(&m, "lag-transactions") as f64);
            lag_secs.push(f64_of(&m, "lag-seconds"));
            let last = s.array.last_tid();
            s.array.wait_caught_up(&last, Duration::from_secs(120));
            drain.push(t0.elapsed().as_secs_f64());
        },
    );
    // The same with the off-site site competing for this machine.
    let (alone_here, with_here) = rounds(
        "site on this machine",
        &here.array,
        "with, site here",
        &mut || {
            let last = here.array.last_tid();
            here.array.wait_caught_up(&last, Duration::from_secs(120));
        },
    );
    // The commit path's own cost: the same array with the link down (the
    // mirror degraded, nothing shipped, commits still queued for it), so
    // the off-site site's work does not compete for this machine's cores.
    let m = s.array.mirror().expect("status");
    link_down(&s.link);
    s.array.wait_mirror(
        "the mirror should be degraded with its link down",
        Duration::from_secs(30),
        |m| m["state"] == "degraded",
    );
    let (alone_down, queued_only) = rounds("link down", &s.array, "queued only", &mut || {});
    link_up(&s.link);
    println!(
        "\n## Commit latency with an off-site mirror 50 ms away\n\n\
         {CLIENTS} clients, one new 128-byte object per commit, {} s per run. Rounds of two \
         runs back to back, the array without the off-site mirror and one with it (which goes \
         first alternates; before each run `sync` and 0.5 s of quiet), {} rounds per row; \
         figures are medians over the rounds, ratios the median of the rounds' ratios. Both \
         arrays: two file mirrors (fsync on every commit) in `zeoraid serve`; WITH adds \
         `mode = \"offsite\"` backend `dr`, a second `zeoraid serve` behind a proxy adding \
         50 ms each way (no bandwidth cap). *Its site elsewhere*: a stand-in for a server on \
         another machine — a memory storage (no fsyncs on the array's disk) with every \
         thread at idle priority (`SCHED_IDLE`: it takes only CPU the array leaves), and the \
         proxy's threads too. *Its site on this machine*: a file storage with fsync at \
         normal priority, competing with the array for the two cores and the disk. The load \
         generator shares the cores too.\n",
        k.seconds, k.repeat
    );
    println!("| array | commits/s | p50 ms | p99 ms | array CPU ms per 1000 commits |");
    println!("|---|---:|---:|---:|---:|");
    for (name, r) in [
        ("2 file mirrors", &alone),
        (
            "2 file mirrors + off-site (50 ms), its site elsewhere",
            &with,
        ),
        (
            "2 file mirrors + off-site (50 ms), its site on this machine",
            &with_here,
        ),
        (
            "2 file mirrors + off-site, its link down (queued, nothing shipped)",
            &queued_only,
        ),
    ] {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.0} |",
            median(&r.rate),
            median(&r.p50),
            median(&r.p99),
            median(&r.cpu)
        );
    }
    // Ratios are the median of each round's ratio (the two runs of a
    // round are back to back): this machine's speed drifts by ±15 % over
    // a minute, more than the effect measured.
    let ratios = |a: &Runs, b: &Runs| {
        [
            paired(&a.rate, &b.rate),
            paired(&a.p50, &b.p50),
            paired(&a.p99, &b.p99),
            paired(&a.cpu, &b.cpu),
        ]
    };
    let elsewhere = ratios(&with, &alone);
    let (r50, r99) = (elsewhere[1], elsewhere[2]);
    for (name, [r, p50, p99, cpu]) in [
        ("with, site elsewhere / without", elsewhere),
        (
            "with, site on this machine / without",
            ratios(&with_here, &alone_here),
        ),
        ("queued only / without", ratios(&queued_only, &alone_down)),
    ] {
        println!("| **{name}** | **{r:.2}×** | **{p50:.2}×** | **{p99:.2}×** | **{cpu:.2}×** |");
    }
    println!(
        "\nTarget with/without ≤ 1.10: p50 {r50:.2} {}, p99 {r99:.2} {}.\n",
        mark(r50 <= 1.10),
        mark(r99 <= 1.10)
    );
    println!(
        "The mirror at the end of each run WITH (medians): {:.0} transactions, {:.2} s behind; \
         drained {:.2} s later (about {:.0} transactions/s shipped). Over all runs: state {}, {} shipped, {} failures, queue \
         overflows {}.\n",
        median(&lag_txns),
        median(&lag_secs),
        median(&drain),
        median(&lag_txns) / median(&drain),
        m["state"],
        m["shipped"],
        m["failures"],
        m["queue"]["overflows"]
    );
}

// ---------------------------------------------------------------------------
// catchup: a backlog shipped over a capped link.
// ---------------------------------------------------------------------------

/// Commit `n` transactions of one new `size`-byte object each, on
/// `CLIENTS` connections.
fn backlog(addr: &str, n: usize, size: usize) {
    std::thread::scope(|s| {
        for i in 0..CLIENTS {
            let share = n / CLIENTS + usize::from(i < n % CLIENTS);
            s.spawn(move || {
                fill(addr, "1", share, 1, size).unwrap_or_else(|e| panic!("backlog: {e}"));
            });
        }
    });
}

/// One catch-up, measured.
#[derive(Default, Clone)]
struct CatchUp {
    /// Link restored → first bytes toward the mirror, s.
    reconnect: f64,
    /// First bytes → last bytes toward the mirror, s.
    busy: f64,
    /// Bytes that crossed the link toward the mirror meanwhile.
    link_bytes: f64,
    /// First bytes → the status says caught up, s.
    shipping: f64,
    /// Link restored → caught up, s.
    total: f64,
    /// Transactions shipped (the status's counter).
    shipped: u64,
}

/// Poll the proxy (every 10 ms) and the status (every 50 ms) from the
/// moment the link is restored until the mirror holds `last`.
/// `shipped_before`: the status's `shipped` when the link went back up.
fn measure_catch_up(
    a: &Zeoraid,
    link: &Proxy,
    restored: Instant,
    last: &str,
    shipped_before: u64,
) -> CatchUp {
    let base = link.bytes_up();
    // First bytes: past the connection's handshake, into the restores.
    let threshold = base + 8 * 1024;
    let (mut first, mut first_bytes) = (None, 0u64);
    let (mut last_change, mut seen) = (restored, base);
    let deadline = restored + Duration::from_secs(300);
    let mut i = 0u64;
    loop {
        let now = Instant::now();
        let bytes = link.bytes_up();
        if bytes != seen {
            seen = bytes;
            last_change = now;
        }
        if first.is_none() && bytes > threshold {
            first = Some(now);
            first_bytes = bytes;
        }
        if i.is_multiple_of(5) {
            if let Some(m) = a.mirror() {
                if caught_up(&m, last) {
                    let first = first.unwrap_or(now);
                    // Let the link settle (replies and the last bytes are counted).
                    std::thread::sleep(Duration::from_millis(200));
                    let end_bytes = link.bytes_up();
                    if end_bytes != seen {
                        last_change = Instant::now();
                    }
                    return CatchUp {
                        reconnect: (first - restored).as_secs_f64(),
                        busy: (last_change.max(first) - first).as_secs_f64(),
                        link_bytes: end_bytes.saturating_sub(first_bytes) as f64,
                        shipping: (now - first).as_secs_f64(),
                        total: (now - restored).as_secs_f64(),
                        shipped: u64_of(&m, "shipped").saturating_sub(shipped_before),
                    };
                }
            }
            assert!(
                now < deadline,
                "the mirror did not catch up within 300 s: {}\nlog: {}",
                a.mirror().unwrap_or(Value::Null),
                std::fs::read_to_string(&a.log).unwrap_or_default()
            );
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn catchup(k: &Knobs) {
    let size = k.record;
    let mut s = setup(LINK, false);
    let record_mb = (k.txns * size) as f64 / 1e6;
    // [queue, restart]
    let mut runs: [Vec<CatchUp>; 2] = [Vec::new(), Vec::new()];
    for rep in 0..k.repeat {
        for (path, restart) in [false, true].into_iter().enumerate() {
            eprintln!(
                "catchup: repeat {} of {}, {}",
                rep + 1,
                k.repeat,
                if restart {
                    "after a restart"
                } else {
                    "link outage"
                }
            );
            link_down(&s.link);
            backlog(&s.array.addr, k.txns, size);
            let last = s.array.last_tid();
            // The restarted array counts from zero.
            let shipped_before = if restart {
                0
            } else {
                u64_of(&s.array.mirror().expect("status"), "shipped")
            };
            let restored = if restart {
                s.array.stop();
                link_up(&s.link);
                let t = Instant::now();
                s.array.restart();
                t
            } else {
                link_up(&s.link);
                Instant::now()
            };
            let c = measure_catch_up(&s.array, &s.link, restored, &last, shipped_before);
            eprintln!(
                "  reconnect {:.2} s, link busy {:.2} s ({:.0} B/s), caught up {:.2} s after \
                 the first bytes, {} shipped",
                c.reconnect,
                c.busy,
                c.link_bytes / c.busy,
                c.shipping,
                c.shipped
            );
            runs[path].push(c);
        }
    }
    let m = s.array.mirror().expect("status");
    println!(
        "\n## Catch-up over a capped link\n\n\
         While the link is down the array commits a backlog of {} transactions of one new \
         {size}-byte object each ({record_mb:.1} MB of records); then the link comes back at \
         {:.1} MB/s each way ({LINK} bytes/s) with 50 ms one-way delay. *Link rate*: the bytes \
         the proxy delivered to the mirror's server (ZEO frames: records and their \
         `tpc_begin`/`restorea`/`vote`/`tpc_finish`) from the first to the last, over that \
         time. *Records*: record bytes over the time from the first bytes until the status \
         says caught up (`last-tid` is the array's, `lag-transactions` 0). Median of {}.\n",
        k.txns,
        LINK as f64 / 1e6,
        k.repeat
    );
    println!(
        "| catch-up from | link restored → first bytes, s | first bytes → caught up, s | \
         link rate, MB/s | **% of the link** | records, MB/s | transactions/s | frame bytes per \
         record byte | link restored → caught up, s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut worst = f64::INFINITY;
    for (name, r) in [
        ("the queue (link outage)", &runs[0]),
        ("the file mirrors (array restarted)", &runs[1]),
    ] {
        let med = |f: &dyn Fn(&CatchUp) -> f64| median(&r.iter().map(f).collect::<Vec<_>>());
        let link_rate = med(&|c| c.link_bytes / c.busy);
        let pct = 100.0 * link_rate / LINK as f64;
        worst = worst.min(pct);
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | **{pct:.0} %** | {:.2} | {:.0} | {:.2} | {:.2} |",
            med(&|c| c.reconnect),
            med(&|c| c.shipping),
            link_rate / 1e6,
            med(&|c| record_mb / c.shipping),
            med(&|c| k.txns as f64 / c.shipping),
            med(&|c| c.link_bytes / (k.txns * size) as f64),
            med(&|c| c.total),
        );
        for c in r {
            assert_eq!(
                c.shipped as usize, k.txns,
                "the mirror shipped another number of transactions than committed"
            );
        }
    }
    println!(
        "\nTarget ≥ 80 % of the link: worst {worst:.0} %, {}. The mirror at the end: state {}, \
         {} failures, last error {}.\n",
        mark(worst >= 80.0),
        m["state"],
        m["failures"],
        m["last-error"]
    );
}

// ---------------------------------------------------------------------------
// lag: steady load, link outage, lag over time.
// ---------------------------------------------------------------------------

/// One sample of the mirror's status.
struct Sample {
    t: f64,
    state: String,
    lag_seconds: f64,
    lag_txns: u64,
    queued: u64,
}

fn lag(k: &Knobs) {
    let (rate, writers, size) = (200.0, 4usize, 1024usize);
    let (cut_at, outage) = (8.0, 5.0);
    let restore_at = cut_at + outage;
    let s = setup(LINK, false);
    let stop = AtomicBool::new(false);
    // (seconds since start, latency s) of every commit.
    let commits: Mutex<Vec<(f64, f64)>> = Mutex::new(Vec::new());
    let samples: Mutex<Vec<Sample>> = Mutex::new(Vec::new());
    let t0 = Instant::now();
    std::thread::scope(|sc| {
        for w in 0..writers {
            let (stop, commits, array) = (&stop, &commits, &s.array);
            sc.spawn(move || {
                let c = array.client();
                let oid = c.new_oids(1).expect("oid")[0];
                let mut serial = Tid::ZERO;
                let mut mine = Vec::new();
                let every = writers as f64 / rate;
                let mut j = 0u64;
                while !stop.load(Ordering::Acquire) {
                    // Paced: commit j of this writer is due at its slot.
                    let due = (j as f64 * writers as f64 + w as f64) / rate;
                    let now = t0.elapsed().as_secs_f64();
                    if due > now {
                        std::thread::sleep(Duration::from_secs_f64((due - now).min(every)));
                        continue;
                    }
                    j += 1;
                    let mut data = format!("writer {w} commit {j} ").into_bytes();
                    data.resize(size, b'x');
                    let txn = Txn {
                        meta: TxnMeta::default(),
                        tid: None,
                        status: b' ',
                        ops: vec![Op::Store {
                            oid,
                            serial,
                            data: Data::from(data),
                        }],
                    };
                    let started = Instant::now();
                    match c
                        .tpc_vote(&txn)
                        .expect("vote (a client never sees the mirror)")
                    {
                        Vote::Prepared { .. } => {}
                        Vote::Conflicts(x) => panic!("own object conflicts: {x:?}"),
                    }
                    serial = c.tpc_finish().expect("finish");
                    mine.push((
                        started.duration_since(t0).as_secs_f64(),
                        started.elapsed().as_secs_f64(),
                    ));
                }
                commits.lock().expect("lock").extend(mine);
                Storage::close(&c);
            });
        }
        let (stop, samples, array) = (&stop, &samples, &s.array);
        sc.spawn(move || {
            let mut next = 0.0;
            while !stop.load(Ordering::Acquire) {
                let now = t0.elapsed().as_secs_f64();
                if now < next {
                    std::thread::sleep(Duration::from_secs_f64(next - now));
                    continue;
                }
                next += 0.2;
                if let Some(m) = array.mirror() {
                    samples.lock().expect("lock").push(Sample {
                        t: t0.elapsed().as_secs_f64(),
                        state: m["state"].as_str().unwrap_or("?").to_string(),
                        lag_seconds: f64_of(&m, "lag-seconds"),
                        lag_txns: u64_of(&m, "lag-transactions"),
                        queued: u64_of(&m["queue"], "transactions"),
                    });
                }
            }
        });
        let sleep_until = |t: f64| {
            let now = t0.elapsed().as_secs_f64();
            if t > now {
                std::thread::sleep(Duration::from_secs_f64(t - now));
            }
        };
        sleep_until(cut_at);
        link_down(&s.link);
        eprintln!("lag: link down at {:.1} s", t0.elapsed().as_secs_f64());
        sleep_until(restore_at);
        link_up(&s.link);
        eprintln!("lag: link up at {:.1} s", t0.elapsed().as_secs_f64());
        sleep_until(k.lag_seconds);
        stop.store(true, Ordering::Release);
    });
    let end = t0.elapsed().as_secs_f64();
    let last = s.array.last_tid();
    let settle = Instant::now();
    let m = s.array.wait_caught_up(&last, Duration::from_secs(120));
    let settle = settle.elapsed().as_secs_f64();
    let commits = commits.into_inner().expect("lock");
    let samples = samples.into_inner().expect("lock");
    // Commit latency and rate in each period.
    let period = |from: f64, to: f64| {
        let mut lat: Vec<f64> = commits
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, l)| l * 1e3)
            .collect();
        lat.sort_by(|a, b| a.total_cmp(b));
        let pick = |p: f64| {
            lat.get(((p / 100.0) * (lat.len() as f64 - 1.0)).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        (lat.len() as f64 / (to - from), pick(50.0), pick(99.0))
    };
    let lag_in = |from: f64, to: f64| {
        let v: Vec<&Sample> = samples.iter().filter(|s| s.t >= from && s.t < to).collect();
        (
            median(&v.iter().map(|s| s.lag_seconds).collect::<Vec<_>>()),
            median(&v.iter().map(|s| s.lag_txns as f64).collect::<Vec<_>>()),
        )
    };
    let before = lag_in(1.0, cut_at);
    let peak = samples
        .iter()
        .max_by(|a, b| a.lag_txns.cmp(&b.lag_txns))
        .map(|s| (s.t, s.lag_seconds, s.lag_txns))
        .unwrap_or((f64::NAN, f64::NAN, 0));
    // Back to normal: the first sample after the restore from which on the
    // lag stays within twice the steady one (and 1 s).
    let normal = (2.0 * before.0).max(1.0);
    let back = samples
        .iter()
        .enumerate()
        .filter(|(_, s)| s.t > restore_at)
        .find(|(i, _)| {
            samples[*i..]
                .iter()
                .all(|s| s.lag_seconds <= normal && s.state == "replicating")
        })
        .map(|(_, s)| s.t - restore_at);
    let after = back.map_or((f64::NAN, f64::NAN), |b| lag_in(restore_at + b, end));
    println!(
        "\n## Lag over time: {rate:.0} commits/s and a {outage:.0} s link outage\n\n\
         {writers} clients commit one {size}-byte record each, paced to {rate:.0} commits/s in \
         all, to the array (two file mirrors, fsync on, and the off-site mirror behind a \
         50 ms, {:.1} MB/s link). The link is down from {cut_at:.0} s to {restore_at:.0} s. \
         The mirror's status is sampled every 200 ms.\n",
        LINK as f64 / 1e6
    );
    println!("| period | commits/s | commit p50 ms | commit p99 ms | mirror lag, s (median) | mirror lag, transactions (median) |");
    println!("|---|---:|---:|---:|---:|---:|");
    let back_at = back.map_or(end, |b| restore_at + b);
    for (name, from, to) in [
        ("before the outage", 1.0, cut_at),
        ("link down", cut_at, restore_at),
        ("link back, catching up", restore_at, back_at),
        ("after", back_at, end),
    ] {
        let (r, p50, p99) = period(from, to);
        let (ls, lt) = lag_in(from, to);
        println!(
            "| {name} ({from:.1}–{to:.1} s) | {r:.0} | {p50:.2} | {p99:.2} | {ls:.2} | {lt:.0} |"
        );
    }
    println!(
        "\nPeak lag: {} transactions, {:.2} s (at {:.1} s). Back to the steady lag (≤ {:.2} s \
         and replicating) {} after the link came back; steady lag after: {:.2} s, {:.0} \
         transactions. After the load stopped it held the last transaction {settle:.2} s \
         later ({} shipped, {} failures, last error {}).\n",
        peak.2,
        peak.1,
        peak.0,
        normal,
        back.map_or("never".to_string(), |b| format!("{b:.1} s")),
        after.0,
        after.1,
        m["shipped"],
        m["failures"],
        m["last-error"]
    );
    println!(
        "Samples (one a second; all {} in the plot):\n",
        samples.len()
    );
    println!("| t, s | link | state | lag, s | lag, transactions | queued |");
    println!("|---:|---|---|---:|---:|---:|");
    let mut next = 0.0;
    for smp in &samples {
        if smp.t + 1e-9 < next {
            continue;
        }
        next = smp.t.floor() + 1.0;
        let up = smp.t < cut_at || smp.t >= restore_at;
        println!(
            "| {:.1} | {} | {} | {:.2} | {} | {} |",
            smp.t,
            if up { "up" } else { "**down**" },
            smp.state,
            smp.lag_seconds,
            smp.lag_txns,
            smp.queued
        );
    }
    println!();
    let svg = lag_plot(&samples, cut_at, restore_at, rate, outage);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target/offsite-lag.svg");
    std::fs::write(&target, &svg).expect("write the plot");
    println!("Plot: `{}`", target.display());
    if k.save_plot {
        let docs = root.join("docs");
        std::fs::create_dir_all(&docs).expect("docs/");
        std::fs::write(docs.join("offsite-lag.svg"), &svg).expect("write the plot");
        println!("Plot saved to `docs/offsite-lag.svg`.");
    }
    println!();
}

/// Two charts stacked in one SVG: lag in seconds above, in transactions
/// below, each with the outage drawn as a box.
fn lag_plot(samples: &[Sample], cut_at: f64, restore_at: f64, rate: f64, outage: f64) -> String {
    // The outage as a box up to `top`; enough points that the chart draws
    // it as a line (no markers).
    let boxed = |top: f64| {
        let steps = 60;
        let mut p = vec![(cut_at, 0.0)];
        p.extend((0..=steps).map(|i| {
            (
                cut_at + (restore_at - cut_at) * i as f64 / steps as f64,
                top,
            )
        }));
        p.push((restore_at, 0.0));
        Series {
            name: format!("link down ({outage:.0} s)"),
            points: p,
        }
    };
    let secs: Vec<(f64, f64)> = samples.iter().map(|s| (s.t, s.lag_seconds)).collect();
    let txns: Vec<(f64, f64)> = samples.iter().map(|s| (s.t, s.lag_txns as f64)).collect();
    let top_s = secs.iter().map(|p| p.1).fold(0.0, f64::max);
    let top_t = txns.iter().map(|p| p.1).fold(0.0, f64::max);
    let title = format!(
        "Off-site lag: {rate:.0} commits/s, 50 ms {:.0} MB/s link, down {cut_at:.0}–{restore_at:.0} s",
        LINK as f64 / 1e6
    );
    let upper = line_chart(
        &title,
        "seconds",
        "lag, seconds",
        &[
            Series {
                name: "lag-seconds".into(),
                points: secs,
            },
            boxed(top_s),
        ],
    );
    let lower = line_chart(
        "",
        "seconds",
        "lag, transactions",
        &[
            Series {
                name: "lag-transactions".into(),
                points: txns,
            },
            boxed(top_t),
        ],
    );
    // Each chart is a standalone 640 × 400 document: nest them.
    let (w, h) = (640, 400);
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" \
         viewBox=\"0 0 {w} {}\">\n{}{}</svg>\n",
        2 * h,
        2 * h,
        upper.replacen("<svg ", "<svg x=\"0\" y=\"0\" ", 1),
        lower.replacen("<svg ", &format!("<svg x=\"0\" y=\"{h}\" "), 1)
    )
}
