//! The RAID array's figures (issue 7), side by side in one run, each the
//! median of `ZEORAID_BENCH_REPEAT` interleaved runs, printed as markdown
//! tables with ratios:
//!
//! - `fanout`: commit latency p50 and commits/s of one client through an
//!   array with parallel vs sequential fan-out, over 1 to 4 backends.
//!   Each backend is an in-process zeoraid memory server behind a
//!   [`Proxy`] adding 2 ms one-way delay (target: parallel/sequential
//!   p50 ≤ 0.40 at 3 backends). Then the same over in-process memory
//!   backends (0 ms: what the parallel machinery costs; target parallel ≤
//!   1.10 × sequential), also with 8 clients. Writes the 2 ms plot to
//!   `target/raid-fanout.svg`, and to `docs/raid-fanout.svg` with
//!   `--save-plot`.
//! - `reads`: loads/s through a round-robin array over 1, 2, 3 zeoraid
//!   memory servers (1000 objects written through the array), each behind
//!   a proxy serving one request at a time with 1 ms service time, 8
//!   clients with 4 loads in flight each (target ≥ 2.7× one backend at 3).
//!   Then 3 backends of which the first takes 5 ms per request: the share
//!   of reads each backend served, `least-latency` vs `round-robin`.
//! - `overhead`: the Rust load generator, 8 clients: an array over two
//!   file mirrors (in-process, fsync) vs one file storage, both served by
//!   zeoraid (targets ≥ 0.8× commits/s, ≥ 0.9× loads/s); an array over two
//!   Python `runzeo` (`<filestorage>`, `msgpack true`,
//!   `client-conflict-resolution true`) vs one `runzeo` straight (targets
//!   ≥ 0.9× commits/s, ≥ 1.0× loads/s); and, measured interleaved with
//!   those, the same array over two default-config `runzeo` (no `msgpack`
//!   line: the pickle flavour) vs over the two msgpack ones (target ≥
//!   0.95× commits/s and loads/s: what the pickle codec costs), and for
//!   reference one pickle `runzeo` vs one msgpack `runzeo` straight (what
//!   the flavour costs `runzeo` itself).
//!
//! Run: `cargo bench --bench raid [-- fanout|reads|overhead] [-- --save-plot]`
//! (all sections by default). `cargo bench --bench raid -- profile` (not
//! part of the default run) measures where the overhead section's time
//! goes: CPU per operation by thread group and process, and the time of
//! each storage call at the array and at its backends. `overhead` needs a Python with ZODB 6 +
//! ZEO 6: `$ZEORAID_PYTHON` or `.venv/bin/python` (created by
//! `bash tests/run-all.sh`). Knobs: `ZEORAID_BENCH_SECONDS` (per
//! measurement, default 3), `ZEORAID_BENCH_REPEAT` (default 3),
//! `ZEORAID_BENCH_WORKERS` (worker threads of the servers under test;
//! default: the config default). A quick check:
//! `ZEORAID_BENCH_SECONDS=0.5 ZEORAID_BENCH_REPEAT=1 cargo bench --bench raid`.
//!
//! The load generator shares the machine's cores with the servers; the
//! tables assert nothing about timing.

mod common;
use common::{env, mark, ratio, start_runzeo, start_runzeo_with};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeoraid::bench::fanout::local_server_options;
use zeoraid::bench::plot::{line_chart, Series};
use zeoraid::bench::proxy::Proxy;
use zeoraid::bench::{commit_phase, fill, load_phase, median, PhaseResult};
use zeoraid::raid::balance::ReadPolicy;
use zeoraid::raid::fanout::Mode;
use zeoraid::raid::{BackendSource, BackendSpec, RaidOptions, RaidStorage};
use zeoraid::server::Server;
use zeoraid::storage::file::{FileOptions, FileStorage};
use zeoraid::storage::memory::MemoryStorage;
use zeoraid::storage::{Oid, Storage};
use zeoraid::zeo::client::ClientOptions;

struct Knobs {
    seconds: f64,
    repeat: usize,
    workers: Option<usize>,
    save_plot: bool,
}

impl Knobs {
    fn phase(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with --list
    }
    let knobs = Knobs {
        seconds: env("ZEORAID_BENCH_SECONDS").unwrap_or(3.0),
        repeat: env::<usize>("ZEORAID_BENCH_REPEAT").unwrap_or(3).max(1),
        workers: env("ZEORAID_BENCH_WORKERS"),
        save_plot: args.iter().any(|a| a == "--save-plot"),
    };
    let names: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let want = |k: &str| names.is_empty() || names.iter().any(|a| *a == k);
    // Where the time goes (not part of the default run).
    if names.iter().any(|a| *a == "profile") {
        profile::run(knobs.phase(), knobs.workers);
        return;
    }
    let started = Instant::now();
    if want("fanout") {
        fanout(&knobs);
    }
    if want("reads") {
        reads(&knobs);
    }
    if want("overhead") {
        overhead(&knobs);
    }
    eprintln!("(bench took {:.0} s)", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------
// Building blocks.
// ---------------------------------------------------------------------------

/// An in-process zeoraid server over one memory storage, as storage "1".
fn memory_server(name: &str) -> Server {
    serve(Arc::new(MemoryStorage::new(name, false)), None)
}

fn serve(storage: Arc<dyn Storage>, workers: Option<usize>) -> Server {
    Server::start(
        local_server_options(workers),
        vec![("1".into(), storage, false)],
    )
    .expect("start an in-process server")
}

fn zeo(addr: SocketAddr) -> BackendSource {
    BackendSource::Zeo(ClientOptions::new(addr.to_string()))
}

fn array(mode: Mode, policy: ReadPolicy, sources: Vec<BackendSource>) -> Arc<RaidStorage> {
    let specs = sources
        .into_iter()
        .enumerate()
        .map(|(i, source)| BackendSpec {
            name: format!("b{i}"),
            kind: match source {
                BackendSource::Zeo(_) => "zeo",
                _ => "local",
            },
            source,
            reopen: None,
        })
        .collect();
    let raid = RaidStorage::open(
        RaidOptions {
            fanout: mode,
            read_policy: policy,
            auto_recover: false,
            // What the array's relay costs: every read reaches a backend
            // (`cargo bench --bench cache` measures the object cache).
            cache_size: 0,
            ..RaidOptions::new("1")
        },
        specs,
    )
    .expect("open the array");
    assert_all_optimal(&raid, "at start");
    Arc::new(raid)
}

/// The figures of a run whose array lost a backend would mean nothing.
fn assert_all_optimal(raid: &RaidStorage, when: &str) {
    for b in raid.status().backends {
        assert_eq!(
            b.state.label(),
            "optimal",
            "backend {} degraded {when}: {:?}",
            b.name,
            b.reason
        );
    }
}

/// Reads each backend of the array served so far.
fn reads_per_backend(raid: &RaidStorage) -> Vec<u64> {
    raid.status().backends.iter().map(|b| b.reads).collect()
}

/// An array served in-process; shut down on drop (which closes the array).
struct Served {
    raid: Arc<RaidStorage>,
    server: Option<Server>,
}

impl Served {
    fn new(raid: Arc<RaidStorage>, workers: Option<usize>) -> Served {
        let server = serve(raid.clone(), workers);
        Served {
            raid,
            server: Some(server),
        }
    }

    fn addr(&self) -> String {
        self.server
            .as_ref()
            .map(|s| s.local_addr().to_string())
            .unwrap_or_default()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

fn commits(addr: &str, clients: usize, k: &Knobs) -> PhaseResult {
    commit_phase(addr, "1", clients, k.phase(), 1, 128)
        .unwrap_or_else(|e| panic!("commit phase against {addr}: {e}"))
        .result
}

fn loads(addr: &str, clients: usize, pipeline: usize, oids: &[Oid], k: &Knobs) -> PhaseResult {
    load_phase(addr, "1", clients, k.phase(), pipeline, oids)
        .unwrap_or_else(|e| panic!("load phase against {addr}: {e}"))
}

// ---------------------------------------------------------------------------
// Fan-out.
// ---------------------------------------------------------------------------

/// Per (backends, mode): p50 ms and commits/s of each repeat.
#[derive(Default, Clone)]
struct Samples {
    p50: Vec<f64>,
    p99: Vec<f64>,
    rate: Vec<f64>,
}

impl Samples {
    fn push(&mut self, r: &PhaseResult) {
        self.p50.push(r.p50_ms);
        self.p99.push(r.p99_ms);
        self.rate.push(r.per_second);
    }
}

const MAX_BACKENDS: usize = 4;

fn fanout(k: &Knobs) {
    let modes = [Mode::Sequential, Mode::Parallel];
    // 2 ms one-way: zeoraid memory servers behind delaying proxies.
    let delay = Duration::from_millis(2);
    let servers: Vec<Vec<(Server, Proxy)>> = (1..=MAX_BACKENDS)
        .map(|n| {
            (0..n)
                .map(|i| {
                    let s = memory_server(&format!("n{n}-b{i}"));
                    let p = Proxy::start(s.local_addr()).expect("proxy");
                    p.set_delay(delay);
                    (s, p)
                })
                .collect()
        })
        .collect();
    // 0 ms: memory storages inside the array's process.
    let locals: Vec<Vec<Arc<MemoryStorage>>> = (1..=MAX_BACKENDS)
        .map(|n| {
            (0..n)
                .map(|i| Arc::new(MemoryStorage::new(&format!("local-n{n}-b{i}"), false)))
                .collect()
        })
        .collect();
    // [n-1][mode] samples, for 2 ms, 0 ms with 1 client, 0 ms with 8 clients.
    let mut far = vec![[Samples::default(), Samples::default()]; MAX_BACKENDS];
    let mut near = far.clone();
    let mut near8 = far.clone();
    for rep in 0..k.repeat {
        eprintln!("fanout: repeat {} of {}", rep + 1, k.repeat);
        for n in 1..=MAX_BACKENDS {
            for (m, &mode) in modes.iter().enumerate() {
                let sources = servers[n - 1].iter().map(|(_, p)| zeo(p.addr())).collect();
                let a = Served::new(array(mode, ReadPolicy::RoundRobin, sources), k.workers);
                far[n - 1][m].push(&commits(&a.addr(), 1, k));
                assert_all_optimal(&a.raid, "after the 2 ms run");
                drop(a);
                let sources = || {
                    locals[n - 1]
                        .iter()
                        .map(|s| BackendSource::Local(s.clone() as Arc<dyn Storage>))
                        .collect()
                };
                let a = Served::new(array(mode, ReadPolicy::RoundRobin, sources()), k.workers);
                near[n - 1][m].push(&commits(&a.addr(), 1, k));
                near8[n - 1][m].push(&commits(&a.addr(), 8, k));
                assert_all_optimal(&a.raid, "after the 0 ms runs");
            }
        }
    }
    println!(
        "### Fan-out: commit latency, parallel vs sequential\n\n\
         One client committing one 128-byte object per transaction through an array \
         (served by zeoraid in this process) over N backends; {} s per run, median of {}.\n",
        k.seconds, k.repeat
    );
    println!(
        "**2 ms one-way delay** (each backend an in-process zeoraid memory server behind a \
         proxy adding 2 ms each way):\n"
    );
    println!("| backends | sequential p50 ms | parallel p50 ms | **parallel/sequential p50** | sequential p99 ms | parallel p99 ms | sequential commits/s | parallel commits/s | parallel/sequential commits/s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let med = |s: &Samples| (median(&s.p50), median(&s.p99), median(&s.rate));
    let mut plot_seq = Vec::new();
    let mut plot_par = Vec::new();
    let mut at3 = f64::NAN;
    for n in 1..=MAX_BACKENDS {
        let (sp, s99, sr) = med(&far[n - 1][0]);
        let (pp, p99, pr) = med(&far[n - 1][1]);
        let r = ratio(pp, sp);
        if n == 3 {
            at3 = r;
        }
        println!(
            "| {n} | {sp:.2} | {pp:.2} | **{r:.2}** | {s99:.2} | {p99:.2} | {sr:.0} | {pr:.0} | {:.2} |",
            ratio(pr, sr)
        );
        plot_seq.push((n as f64, sp));
        plot_par.push((n as f64, pp));
    }
    println!(
        "\nTarget parallel/sequential p50 ≤ 0.40 at 3 backends: {at3:.2}, {}.\n",
        mark(at3 <= 0.40)
    );
    println!("**0 ms** (in-process memory backends: what the parallel machinery costs):\n");
    println!("| backends | sequential p50 ms | parallel p50 ms | **parallel/sequential p50** | sequential commits/s | parallel commits/s | 8 clients: sequential commits/s | 8 clients: parallel commits/s | 8 clients: parallel/sequential |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut worst = 0f64;
    for n in 1..=MAX_BACKENDS {
        let (sp, _, sr) = med(&near[n - 1][0]);
        let (pp, _, pr) = med(&near[n - 1][1]);
        let (_, _, s8) = med(&near8[n - 1][0]);
        let (_, _, p8) = med(&near8[n - 1][1]);
        let r = ratio(pp, sp);
        worst = worst.max(r);
        println!(
            "| {n} | {sp:.3} | {pp:.3} | **{r:.2}** | {sr:.0} | {pr:.0} | {s8:.0} | {p8:.0} | {:.2} |",
            ratio(p8, s8)
        );
    }
    println!(
        "\nTarget parallel p50 ≤ 1.10 × sequential at 0 ms: worst {worst:.2}, {}.\n",
        mark(worst <= 1.10)
    );
    machinery(k);
    let svg = line_chart(
        "Commit latency through the array, 2 ms one-way to each backend",
        "backends",
        "commit latency p50, ms (1 client)",
        &[
            Series {
                name: "sequential".into(),
                points: plot_seq,
            },
            Series {
                name: "parallel".into(),
                points: plot_par,
            },
        ],
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target/raid-fanout.svg");
    std::fs::write(&target, &svg).expect("write target/raid-fanout.svg");
    println!("Plot: `{}`", target.display());
    if k.save_plot {
        let docs = root.join("docs");
        std::fs::create_dir_all(&docs).expect("create docs/");
        std::fs::write(docs.join("raid-fanout.svg"), &svg).expect("write docs/raid-fanout.svg");
        println!("Plot saved to `docs/raid-fanout.svg`.");
    }
    println!();
    drop(servers);
}

/// What one fan-out costs by itself: `Fanout::call_all` over no-op backends.
fn machinery(k: &Knobs) {
    use zeoraid::raid::fanout::Fanout;
    let calls = ((k.seconds * 3000.0) as usize).max(300);
    let time = |f: &dyn Fn()| {
        let mut per = Vec::with_capacity(calls);
        for _ in 0..calls {
            let t0 = Instant::now();
            f();
            per.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        median(&per)
    };
    println!(
        "What one fan-out call costs by itself: `raid::fanout::Fanout::call_all` over no-op \
         backends, median of {calls} calls, µs (a commit makes two: vote and finish). \
         *Remote* backends (ZEO) are overlapped on the array's thread pool; *in-process* ones \
         (file, memory) run their vote and finish on the calling worker:\n"
    );
    println!("| backends | sequential µs | parallel, remote backends µs | parallel, in-process backends µs |");
    println!("|---|---|---|---|");
    let sequential = Fanout::new(Mode::Sequential, "bench", MAX_BACKENDS).expect("fanout");
    let parallel = Fanout::new(Mode::Parallel, "bench", MAX_BACKENDS).expect("fanout");
    for n in 1..=MAX_BACKENDS {
        let backends: Vec<usize> = (0..n).collect();
        let deadline = || Duration::from_secs(10);
        let noop = |b: &usize| Ok(std::hint::black_box(*b));
        let seq = time(&|| {
            sequential.call_all(&backends, |_| true, deadline(), noop);
        });
        let remote = time(&|| {
            parallel.call_all(&backends, |_| true, deadline(), noop);
        });
        let local = time(&|| {
            parallel.call_all(&backends, |_| false, deadline(), noop);
        });
        println!("| {n} | {seq:.1} | {remote:.1} | {local:.1} |");
    }
    println!();
}

// ---------------------------------------------------------------------------
// Read distribution.
// ---------------------------------------------------------------------------

const OBJECTS: usize = 1000;
const LOADERS: usize = 8;
const IN_FLIGHT: usize = 4;

/// Backends behind proxies, an array over them, the objects it holds.
struct ReadRig {
    backends: Vec<(Server, Proxy)>,
    oids: Vec<Oid>,
}

impl ReadRig {
    fn new(n: usize) -> ReadRig {
        let backends: Vec<(Server, Proxy)> = (0..n)
            .map(|i| {
                let s = memory_server(&format!("reads-n{n}-b{i}"));
                let p = Proxy::start(s.local_addr()).expect("proxy");
                (s, p)
            })
            .collect();
        let rig = ReadRig {
            backends,
            oids: Vec::new(),
        };
        let a = rig.open(ReadPolicy::RoundRobin, None);
        let oids = fill(&a.addr(), "1", OBJECTS, 100, 128).expect("fill");
        drop(a);
        ReadRig { oids, ..rig }
    }

    fn open(&self, policy: ReadPolicy, workers: Option<usize>) -> Served {
        let sources = self.backends.iter().map(|(_, p)| zeo(p.addr())).collect();
        Served::new(array(Mode::Parallel, policy, sources), workers)
    }

    fn set_service(&self, times: &[Duration]) {
        for ((_, p), t) in self.backends.iter().zip(times) {
            p.set_service_time(*t);
        }
    }

    fn frames(&self) -> Vec<u64> {
        self.backends.iter().map(|(_, p)| p.frames()).collect()
    }
}

fn shares(counts: &[u64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    counts
        .iter()
        .map(|c| ratio(*c as f64, total as f64) * 100.0)
        .collect()
}

fn reads(k: &Knobs) {
    let ms = Duration::from_millis;
    // Enough workers that every loader's request reaches a backend.
    let workers = Some(k.workers.unwrap_or(LOADERS * 2));
    let rigs: Vec<ReadRig> = (1..=3).map(ReadRig::new).collect();
    let mut rate = vec![Vec::new(); 3];
    let mut p50 = vec![Vec::new(); 3];
    // Round-robin over 1, 2, 3 backends of 1 ms service time.
    for rep in 0..k.repeat {
        eprintln!("reads: repeat {} of {}", rep + 1, k.repeat);
        for (i, rig) in rigs.iter().enumerate() {
            rig.set_service(&[ms(1); 3]);
            let a = rig.open(ReadPolicy::RoundRobin, workers);
            let r = loads(&a.addr(), LOADERS, IN_FLIGHT, &rig.oids, k);
            assert_all_optimal(&a.raid, "after the load run");
            drop(a);
            rig.set_service(&[Duration::ZERO; 3]);
            rate[i].push(r.per_second);
            p50[i].push(r.p50_ms);
        }
    }
    println!(
        "### Read distribution\n\n\
         Loads/s through a round-robin array over N zeoraid memory servers, each behind a proxy \
         that serves one request at a time with 1 ms service time (at most ~1000 requests/s per \
         backend); {OBJECTS} objects written through the array, {LOADERS} clients with \
         {IN_FLIGHT} loads in flight each; {} s per run, median of {}.\n",
        k.seconds, k.repeat
    );
    println!("| backends | loads/s | load p50 ms | **vs 1 backend** |");
    println!("|---|---|---|---|");
    let one = median(&rate[0]);
    for n in 1..=3 {
        let r = median(&rate[n - 1]);
        println!(
            "| {n} | {r:.0} | {:.2} | **{:.2}x** |",
            median(&p50[n - 1]),
            ratio(r, one)
        );
    }
    let at3 = ratio(median(&rate[2]), one);
    println!(
        "\nTarget ≥ 2.7x at 3 backends: {at3:.2}x, {}.\n",
        mark(at3 >= 2.7)
    );

    // One slow backend: who serves the reads.
    let rig = &rigs[2];
    let slow = [ms(5), ms(1), ms(1)];
    let policies = [ReadPolicy::RoundRobin, ReadPolicy::LeastLatency];
    let mut split: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); 3]; 2];
    let mut proxied: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); 3]; 2];
    let mut lrate = vec![Vec::new(); 2];
    for rep in 0..k.repeat {
        eprintln!(
            "reads (one slow backend): repeat {} of {}",
            rep + 1,
            k.repeat
        );
        for (pi, &policy) in policies.iter().enumerate() {
            let a = rig.open(policy, workers);
            rig.set_service(&slow);
            let (before, frames_before) = (reads_per_backend(&a.raid), rig.frames());
            let r = loads(&a.addr(), LOADERS, IN_FLIGHT, &rig.oids, k);
            let after = reads_per_backend(&a.raid);
            let frames: Vec<u64> = rig
                .frames()
                .iter()
                .zip(&frames_before)
                .map(|(a, b)| a - b)
                .collect();
            rig.set_service(&[Duration::ZERO; 3]);
            assert_all_optimal(&a.raid, "after the slow-backend run");
            drop(a);
            let counts: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
            for (b, s) in shares(&counts).into_iter().enumerate() {
                split[pi][b].push(s);
            }
            for (b, s) in shares(&frames).into_iter().enumerate() {
                proxied[pi][b].push(s);
            }
            lrate[pi].push(r.per_second);
        }
    }
    println!(
        "**One slow backend**: 3 backends, b0 takes 5 ms per request, b1 and b2 1 ms. Share of \
         the reads each backend served (the array's per-backend `reads` in `ruok`; in brackets \
         the share of requests each proxy passed), median of {}:\n",
        k.repeat
    );
    println!("| read-policy | loads/s | b0 (5 ms) | b1 (1 ms) | b2 (1 ms) |");
    println!("|---|---|---|---|---|");
    for (pi, policy) in ["round-robin", "least-latency"].iter().enumerate() {
        let cell = |b: usize| {
            format!(
                "{:.1}% ({:.1}%)",
                median(&split[pi][b]),
                median(&proxied[pi][b])
            )
        };
        println!(
            "| {policy} | {:.0} | {} | {} | {} |",
            median(&lrate[pi]),
            cell(0),
            cell(1),
            cell(2)
        );
    }
    println!();
}

// ---------------------------------------------------------------------------
// Overhead.
// ---------------------------------------------------------------------------

const CLIENTS: usize = 8;

/// commits/s, loads/s (1 in flight), loads/s (16 in flight), p99s.
#[derive(Default, Clone)]
struct Load {
    commits: Vec<f64>,
    commit_p99: Vec<f64>,
    loads: Vec<f64>,
    load_p99: Vec<f64>,
    loads16: Vec<f64>,
}

fn measure_load(addr: &str, k: &Knobs, into: &mut Load) {
    let c = commit_phase(addr, "1", CLIENTS, k.phase(), 1, 128)
        .unwrap_or_else(|e| panic!("commit phase against {addr}: {e}"));
    let l = loads(addr, CLIENTS, 1, &c.written, k);
    let l16 = loads(addr, CLIENTS, 16, &c.written, k);
    into.commits.push(c.result.per_second);
    into.commit_p99.push(c.result.p99_ms);
    into.loads.push(l.per_second);
    into.load_p99.push(l.p99_ms);
    into.loads16.push(l16.per_second);
}

/// The table of `rows`, with the ratio of the first row to the second
/// (`ratio_label`) and its targets (commits/s, loads/s; `None`: a figure
/// for reference).
fn overhead_table(
    title: &str,
    rows: &[(&str, &Load)],
    ratio_label: &str,
    targets: Option<(f64, f64)>,
) {
    println!("{title}\n");
    println!(
        "| server | commits/s | commit p99 ms | loads/s | load p99 ms | loads/s, 16 in flight |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, l) in rows {
        println!(
            "| {name} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} |",
            median(&l.commits),
            median(&l.commit_p99),
            median(&l.loads),
            median(&l.load_p99),
            median(&l.loads16)
        );
    }
    let (array, single) = (rows[0].1, rows[1].1);
    let rc = ratio(median(&array.commits), median(&single.commits));
    let rl = ratio(median(&array.loads), median(&single.loads));
    let rl16 = ratio(median(&array.loads16), median(&single.loads16));
    println!("| **ratio {ratio_label}** | **{rc:.2}x** | | **{rl:.2}x** | | **{rl16:.2}x** |");
    match targets {
        Some((tc, tl)) => println!(
            "\nTargets ≥ {tc:.2}x commits/s: {}; ≥ {tl:.2}x loads/s: {}.\n",
            mark(rc >= tc),
            mark(rl >= tl)
        ),
        None => println!(),
    }
}

fn file_storage(path: &Path) -> Arc<dyn Storage> {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("data dir");
    Arc::new(
        FileStorage::open(
            path,
            FileOptions {
                read_only: false,
                sync: true,
                pack_gc: true,
                create: true,
            },
        )
        .expect("open a file storage"),
    )
}

fn overhead(k: &Knobs) {
    println!(
        "### Overhead: the array vs one storage\n\n\
         The Rust load generator with {CLIENTS} clients, one 128-byte object per commit; \
         {} s of commits, then {} s of loads with 1 and with 16 in flight per client; \
         median of {}. The array fans out in parallel and reads round-robin.\n",
        k.seconds, k.seconds, k.repeat
    );
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let mirrors = vec![
            BackendSource::Local(file_storage(&dir.path().join("a/Data.fs"))),
            BackendSource::Local(file_storage(&dir.path().join("b/Data.fs"))),
        ];
        let raid = Served::new(
            array(Mode::Parallel, ReadPolicy::RoundRobin, mirrors),
            k.workers,
        );
        let single = serve(file_storage(&dir.path().join("single/Data.fs")), k.workers);
        let single_addr = single.local_addr().to_string();
        let (mut a, mut s) = (Load::default(), Load::default());
        for rep in 0..k.repeat {
            eprintln!("overhead (file): repeat {} of {}", rep + 1, k.repeat);
            measure_load(&raid.addr(), k, &mut a);
            measure_load(&single_addr, k, &mut s);
        }
        assert_all_optimal(&raid.raid, "after the file runs");
        overhead_table(
            "**Two file mirrors** (in-process, fsync on every commit) vs one file storage, both served by zeoraid:",
            &[("array over 2 file mirrors", &a), ("1 file storage", &s)],
            "array/single",
            Some((0.8, 0.9)),
        );
        drop(raid);
        single.shutdown();
    }
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let py = [
            start_runzeo(&dir.path().join("a"), true),
            start_runzeo(&dir.path().join("b"), true),
            start_runzeo(&dir.path().join("single"), true),
            // runzeo's default config: the pickle flavour.
            start_runzeo_with(&dir.path().join("pickle-a"), true, false),
            start_runzeo_with(&dir.path().join("pickle-b"), true, false),
            start_runzeo_with(&dir.path().join("pickle-single"), true, false),
        ];
        // What `zeoraid serve` picks for an array with two ZEO backends.
        let workers = k
            .workers
            .or(Some((zeoraid::config::default_workers() + 16).min(64)));
        let over = |a: usize, b: usize| {
            Served::new(
                array(
                    Mode::Parallel,
                    ReadPolicy::RoundRobin,
                    vec![zeo(py[a].addr), zeo(py[b].addr)],
                ),
                workers,
            )
        };
        let raid = over(0, 1);
        let pickled = over(3, 4);
        let single_addr = py[2].addr.to_string();
        let pickle_single_addr = py[5].addr.to_string();
        let (mut a, mut s) = (Load::default(), Load::default());
        let (mut p, mut ps) = (Load::default(), Load::default());
        for rep in 0..k.repeat {
            eprintln!("overhead (python): repeat {} of {}", rep + 1, k.repeat);
            measure_load(&raid.addr(), k, &mut a);
            measure_load(&single_addr, k, &mut s);
            measure_load(&pickled.addr(), k, &mut p);
            measure_load(&pickle_single_addr, k, &mut ps);
        }
        assert_all_optimal(&raid.raid, "after the runzeo runs");
        assert_all_optimal(&pickled.raid, "after the pickle runzeo runs");
        overhead_table(
            "**Two Python `runzeo`** (`<filestorage>`, `msgpack true`, `client-conflict-resolution true`) under an array served by zeoraid vs one `runzeo` straight:",
            &[("array over 2 runzeo", &a), ("1 runzeo", &s)],
            "array/single",
            Some((0.9, 1.0)),
        );
        overhead_table(
            "**The same array over two default-config `runzeo`** (no `msgpack` line: zeoraid speaks the pickle flavour to them) vs over the two msgpack ones, measured interleaved with the table above:",
            &[("array over 2 pickle runzeo", &p), ("array over 2 msgpack runzeo", &a)],
            "pickle/msgpack",
            Some((0.95, 0.95)),
        );
        overhead_table(
            "For reference, what the flavour costs `runzeo` itself: one default-config `runzeo` vs one msgpack `runzeo`, both straight (the load generator speaks pickle to the first), measured interleaved with the tables above:",
            &[("1 pickle runzeo", &ps), ("1 msgpack runzeo", &s)],
            "pickle/msgpack",
            None,
        );
        drop(pickled);
        drop(raid);
    }
}

// ---------------------------------------------------------------------------
// Where the time goes (`-- profile`).
// ---------------------------------------------------------------------------

mod profile {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use zeoraid::storage::resolve::ConflictResolver;
    use zeoraid::storage::{
        CurrentRecord, Data, HistoryEntry, Loaded, Result, SizeInfo, Tid, Txn, TxnIter, UndoEntry,
        Vote,
    };

    const METHODS: [&str; 10] = [
        "load_before",
        "load_before_nowait (answered)",
        "load_before_nowait (declined)",
        "new_oids",
        "tpc_vote",
        "tpc_finish",
        "finish_log",
        "make_durable",
        "publish",
        "last_transaction",
    ];

    /// A storage that times every call of the methods above.
    pub struct Timed {
        inner: Arc<dyn Storage>,
        pub label: String,
        calls: [AtomicU64; METHODS.len()],
        nanos: [AtomicU64; METHODS.len()],
    }

    impl Timed {
        pub fn wrap(label: &str, inner: Arc<dyn Storage>) -> Arc<Timed> {
            Arc::new(Timed {
                inner,
                label: label.into(),
                calls: Default::default(),
                nanos: Default::default(),
            })
        }

        fn rec<T>(&self, m: usize, f: impl FnOnce() -> T) -> T {
            let t0 = Instant::now();
            let r = f();
            self.add(m, t0);
            r
        }

        fn add(&self, m: usize, t0: Instant) {
            self.calls[m].fetch_add(1, Ordering::Relaxed);
            self.nanos[m].fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }

        /// (method, calls, mean µs) since the last take, and reset.
        pub fn take(&self) -> Vec<(&'static str, u64, f64)> {
            (0..METHODS.len())
                .filter_map(|m| {
                    let c = self.calls[m].swap(0, Ordering::Relaxed);
                    let n = self.nanos[m].swap(0, Ordering::Relaxed);
                    (c > 0).then(|| (METHODS[m], c, n as f64 / c as f64 / 1000.0))
                })
                .collect()
        }
    }

    impl Storage for Timed {
        fn name(&self) -> String {
            self.inner.name()
        }
        fn is_read_only(&self) -> bool {
            self.inner.is_read_only()
        }
        fn supports_undo(&self) -> bool {
            self.inner.supports_undo()
        }
        fn last_transaction(&self) -> Result<Tid> {
            self.rec(9, || self.inner.last_transaction())
        }
        fn load_before(&self, oid: Oid, before: Tid) -> Result<Option<Loaded>> {
            self.rec(0, || self.inner.load_before(oid, before))
        }
        fn load_serial(&self, oid: Oid, serial: Tid) -> Result<Data> {
            self.inner.load_serial(oid, serial)
        }
        fn history(&self, oid: Oid, size: usize) -> Result<Vec<HistoryEntry>> {
            self.inner.history(oid, size)
        }
        fn new_oids(&self, n: usize) -> Result<Vec<Oid>> {
            self.rec(3, || self.inner.new_oids(n))
        }
        fn tpc_vote(&self, txn: &Txn) -> Result<Vote> {
            self.rec(4, || self.inner.tpc_vote(txn))
        }
        fn tpc_finish(&self) -> Result<Tid> {
            self.rec(5, || self.inner.tpc_finish())
        }
        fn group_commit(&self) -> bool {
            self.inner.group_commit()
        }
        fn finish_log(&self) -> Result<Tid> {
            self.rec(6, || self.inner.finish_log())
        }
        fn make_durable(&self, tid: Tid) -> Result<()> {
            self.rec(7, || self.inner.make_durable(tid))
        }
        fn publish(&self, tid: Tid) {
            self.rec(8, || self.inner.publish(tid))
        }
        fn tpc_abort(&self) {
            self.inner.tpc_abort()
        }
        fn undo_log(&self, first: usize, last: usize) -> Result<Vec<UndoEntry>> {
            self.inner.undo_log(first, last)
        }
        fn iterator(&self, start: Option<Tid>, stop: Option<Tid>) -> Result<TxnIter> {
            self.inner.iterator(start, stop)
        }
        fn record_iternext(&self, next: Option<Oid>) -> Result<Option<CurrentRecord>> {
            self.inner.record_iternext(next)
        }
        fn pack(&self, t: f64, gc: bool) -> Result<()> {
            self.inner.pack(t, gc)
        }
        fn size_info(&self) -> SizeInfo {
            self.inner.size_info()
        }
        fn reads_never_block(&self) -> bool {
            self.inner.reads_never_block()
        }
        fn load_before_nowait(&self, oid: Oid, before: Tid) -> Option<Result<Option<Loaded>>> {
            let t0 = Instant::now();
            let r = self.inner.load_before_nowait(oid, before);
            self.add(if r.is_some() { 1 } else { 2 }, t0);
            r
        }
        fn set_conflict_resolver(&self, r: Arc<dyn ConflictResolver>) {
            self.inner.set_conflict_resolver(r)
        }
        fn raid_status(&self) -> Option<zeoraid::status::ArrayStatus> {
            self.inner.raid_status()
        }
        fn close(&self) {
            self.inner.close()
        }
    }

    /// Clock ticks of user + system time in a `/proc/.../stat` line.
    fn stat_ticks(stat: &str) -> Option<(String, u64)> {
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let comm = stat[open + 1..close].to_string();
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After "(comm)": state is field 3, utime 14, stime 15.
        let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        Some((comm, ticks))
    }

    fn proc_ticks(pid: u32) -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| stat_ticks(&s))
            .map_or(0, |t| t.1)
    }

    /// The thread's group: its name without a trailing number.
    fn group(comm: &str) -> String {
        comm.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-')
            .to_string()
    }

    #[derive(Clone, Default)]
    struct Snapshot {
        process: u64,
        threads: BTreeMap<u64, (String, u64)>,
        others: Vec<u64>,
    }

    fn snapshot(pids: &[u32]) -> Snapshot {
        let mut threads = BTreeMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
            for e in dir.flatten() {
                let Ok(tid) = e.file_name().to_string_lossy().parse::<u64>() else {
                    continue;
                };
                if let Some((comm, t)) = std::fs::read_to_string(e.path().join("stat"))
                    .ok()
                    .and_then(|s| stat_ticks(&s))
                {
                    threads.insert(tid, (group(&comm), t));
                }
            }
        }
        Snapshot {
            process: proc_ticks(std::process::id()),
            threads,
            others: pids.iter().map(|p| proc_ticks(*p)).collect(),
        }
    }

    /// CPU µs per operation between two snapshots: per thread group of
    /// this process ("other": threads that ended meanwhile: the load
    /// generator's and the fan-out's), and per other process.
    fn cpu_per_op(a: &Snapshot, b: &Snapshot, ops: u64, names: &[&str]) -> Vec<(String, f64)> {
        let tick_us = 1e6 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let per = |ticks: u64| ticks as f64 * tick_us / ops.max(1) as f64;
        let mut groups: BTreeMap<String, u64> = BTreeMap::new();
        let mut seen = 0u64;
        for (tid, (g, t)) in &b.threads {
            let before = a.threads.get(tid).map_or(0, |x| x.1);
            let d = t.saturating_sub(before);
            seen += d;
            *groups.entry(g.clone()).or_default() += d;
        }
        let total = b.process.saturating_sub(a.process);
        let mut out: Vec<(String, f64)> = groups
            .into_iter()
            .filter(|(_, d)| *d > 0)
            .map(|(g, d)| (format!("zeoraid process: {g}"), per(d)))
            .collect();
        out.push((
            "zeoraid process: threads that ended (load generator, fan-out)".into(),
            per(total.saturating_sub(seen)),
        ));
        out.push(("zeoraid process: total".into(), per(total)));
        for (i, name) in names.iter().enumerate() {
            out.push((
                format!("{name} process"),
                per(b.others[i].saturating_sub(a.others[i])),
            ));
        }
        out
    }

    struct Scenario<'a> {
        name: &'a str,
        addr: String,
        timed: Vec<Arc<Timed>>,
        pids: Vec<u32>,
        pid_names: Vec<&'a str>,
    }

    fn measure(s: &Scenario, phase: Duration) {
        for t in &s.timed {
            t.take();
        }
        let s0 = snapshot(&s.pids);
        let c = commit_phase(&s.addr, "1", CLIENTS, phase, 1, 128).expect("commit phase");
        let s1 = snapshot(&s.pids);
        let commit_calls: Vec<_> = s
            .timed
            .iter()
            .map(|t| (t.label.clone(), t.take()))
            .collect();
        let l = load_phase(&s.addr, "1", CLIENTS, phase, 1, &c.written).expect("load phase");
        let s2 = snapshot(&s.pids);
        let load_calls: Vec<_> = s
            .timed
            .iter()
            .map(|t| (t.label.clone(), t.take()))
            .collect();
        println!("#### {}\n", s.name);
        println!(
            "commits: {:.0}/s (p50 {:.2} ms, p99 {:.2} ms); loads: {:.0}/s (p50 {:.3} ms)\n",
            c.result.per_second, c.result.p50_ms, c.result.p99_ms, l.per_second, l.p50_ms
        );
        println!("| CPU µs per operation | per commit | per load |");
        println!("|---|---|---|");
        let cc = cpu_per_op(&s0, &s1, c.result.ops, &s.pid_names);
        let cl = cpu_per_op(&s1, &s2, l.ops, &s.pid_names);
        let mut rows: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for (k, v) in cc {
            rows.entry(k).or_default().0 = v;
        }
        for (k, v) in cl {
            rows.entry(k).or_default().1 = v;
        }
        for (k, (a, b)) in rows {
            println!("| {k} | {a:.0} | {b:.0} |");
        }
        println!("\n| storage | method | calls (commit phase) | mean µs | calls (load phase) | mean µs |");
        println!("|---|---|---|---|---|---|");
        for ((label, cm), (_, lm)) in commit_calls.iter().zip(&load_calls) {
            let mut rows: BTreeMap<&str, (u64, f64, u64, f64)> = BTreeMap::new();
            for (m, n, us) in cm {
                let r = rows.entry(m).or_default();
                (r.0, r.1) = (*n, *us);
            }
            for (m, n, us) in lm {
                let r = rows.entry(m).or_default();
                (r.2, r.3) = (*n, *us);
            }
            for (m, (a, b, c, d)) in rows {
                println!("| {label} | {m} | {a} | {b:.1} | {c} | {d:.1} |");
            }
        }
        println!();
    }

    pub fn run(phase: Duration, workers: Option<usize>) {
        println!(
            "### Where the time goes: the overhead section's configurations, {CLIENTS} clients, \
             {} s of commits then {} s of loads (1 in flight)\n",
            phase.as_secs_f64(),
            phase.as_secs_f64()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let single = Timed::wrap("file", file_storage(&dir.path().join("single/Data.fs")));
            let server = serve(single.clone(), workers);
            measure(
                &Scenario {
                    name: "one file storage",
                    addr: server.local_addr().to_string(),
                    timed: vec![single],
                    pids: vec![],
                    pid_names: vec![],
                },
                phase,
            );
            server.shutdown();
        }
        for (i, mode) in [Mode::Parallel, Mode::Sequential].into_iter().enumerate() {
            let a = Timed::wrap(
                "backend a",
                file_storage(&dir.path().join(format!("a{i}/Data.fs"))),
            );
            let b = Timed::wrap(
                "backend b",
                file_storage(&dir.path().join(format!("b{i}/Data.fs"))),
            );
            let raid = array(
                mode,
                ReadPolicy::RoundRobin,
                vec![
                    BackendSource::Local(a.clone()),
                    BackendSource::Local(b.clone()),
                ],
            );
            let top = Timed::wrap("array", raid);
            let server = serve(top.clone(), workers);
            measure(
                &Scenario {
                    name: &format!("array over two file mirrors, {mode:?} fan-out"),
                    addr: server.local_addr().to_string(),
                    timed: vec![top, a, b],
                    pids: vec![],
                    pid_names: vec![],
                },
                phase,
            );
            server.shutdown();
        }
        let py = [
            start_runzeo(&dir.path().join("pa"), true),
            start_runzeo(&dir.path().join("pb"), true),
            start_runzeo(&dir.path().join("psingle"), true),
        ];
        measure(
            &Scenario {
                name: "one runzeo",
                addr: py[2].addr.to_string(),
                timed: vec![],
                pids: vec![py[2].child.id()],
                pid_names: vec!["runzeo"],
            },
            phase,
        );
        for mode in [Mode::Parallel, Mode::Sequential] {
            let raid = array(
                mode,
                ReadPolicy::RoundRobin,
                vec![zeo(py[0].addr), zeo(py[1].addr)],
            );
            let top = Timed::wrap("array", raid);
            let server = serve(top.clone(), workers);
            measure(
                &Scenario {
                    name: &format!("array over two runzeo, {mode:?} fan-out"),
                    addr: server.local_addr().to_string(),
                    timed: vec![top],
                    pids: vec![py[0].child.id(), py[1].child.id()],
                    pid_names: vec!["runzeo a", "runzeo b"],
                },
                phase,
            );
            server.shutdown();
        }
    }
}
