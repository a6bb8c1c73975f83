//! The array's shared object cache (issue #24), side by side in one run,
//! each figure the median of `ZEORAID_BENCH_REPEAT` interleaved runs:
//!
//! - `python`: stock Python ZODB clients, 8 processes, each reading
//!   random objects of a shared working set of 20 000 objects (512
//!   bytes) through `ClientStorage.load` with a 100 kB client cache (the
//!   shape of many workers after invalidations), for `ZEORAID_BENCH_SECONDS`
//!   (default 5): through an array over two Python `runzeo` (cache on,
//!   the default 64 MB) ÷ straight from one `runzeo` (target ≥ 2×); an
//!   array over two file mirrors ÷ one file storage served by zeoraid
//!   (target ≥ 1.2×). Every server is warmed by one unmeasured run.
//! - `commits`: the Rust load generator, 8 clients committing one
//!   128-byte object each, through an array over two file mirrors (fsync)
//!   and over two memory mirrors, with the cache on ÷ off (target ≥ 0.97×).
//! - `memory`: the process's resident memory grown by a cache of 64 MB
//!   and of 256 MB filled with three times its size of objects (64 bytes
//!   to 4 kB), ÷ its size (target ≤ 1.10).
//!
//! Run: `cargo bench --bench cache [-- python|commits|memory]`. Needs a
//! Python with ZODB 6 + ZEO 6 (`$ZEORAID_PYTHON` or `.venv/bin/python`,
//! made by `bash tests/run-all.sh`). The clients share the machine's cores
//! with the servers; nothing here asserts timing.

mod common;
use common::{cpu_seconds, env, mark, median, python, ratio, start_runzeo, status_kib, wanted};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use zeoraid::bench::fanout::local_server_options;
use zeoraid::bench::{commit_phase, fill, load_phase};
use zeoraid::raid::cache::Cache;
use zeoraid::raid::{BackendSource, BackendSpec, RaidOptions, RaidStorage};
use zeoraid::server::Server;
use zeoraid::storage::file::{FileOptions, FileStorage};
use zeoraid::storage::memory::MemoryStorage;
use zeoraid::storage::{Loaded, Oid, Storage, Tid};
use zeoraid::zeo::client::ClientOptions;

const OBJECTS: usize = 20_000;
const SIZE: usize = 512;
const CLIENT_CACHE: usize = 100_000;

/// One reader process: loads random objects of the working set (oids in
/// the file, one hex per line) from its start time for `seconds`, 50 at a
/// time, each batch first handed to ZEO's `prefetch` when asked; prints
/// loads per second.
const READER_PY: &str = r#"
import logging, sys, time, random
from ZEO.ClientStorage import ClientStorage
from ZODB.utils import p64
host, port = sys.argv[1].rsplit(":", 1)
oids = [p64(int(l, 16)) for l in open(sys.argv[2]) if l.strip()]
seconds, cache, seed, start = float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
batch = int(sys.argv[7])
cs = ClientStorage((host, int(port)), "1", cache_size=cache, wait_timeout=60)
rnd = random.Random(seed)
cs.load(oids[0])
while time.time() < start:
    time.sleep(0.005)
t0 = time.time()
end = t0 + seconds
n = 0
while time.time() < end:
    wanted = [oids[rnd.randrange(len(oids))] for _ in range(50)]
    if batch:
        # ZEO's prefetch: the loads go out at once, in the background.
        cs.prefetch(wanted, cs.lastTransaction())
    for oid in wanted:
        cs.load(oid)
    n += 50
print(n / (time.time() - t0))
# Prefetches of the last batch may still be in flight: closing fails them,
# and ZEO logs each; nothing measured depends on them.
logging.disable(logging.ERROR)
cs.close()
"#;

/// Reader processes (`ZEORAID_BENCH_PROCESSES`, default 8).
fn processes() -> usize {
    env("ZEORAID_BENCH_PROCESSES").unwrap_or(8)
}

fn seconds() -> f64 {
    env("ZEORAID_BENCH_SECONDS").unwrap_or(5.0)
}

fn repeat() -> usize {
    env("ZEORAID_BENCH_REPEAT").unwrap_or(3)
}

fn serve(storage: Arc<dyn Storage>, workers: Option<usize>) -> Server {
    Server::start(
        local_server_options(workers),
        vec![("1".into(), storage, false)],
    )
    .expect("start an in-process server")
}

fn array(cache_size: u64, sources: Vec<BackendSource>) -> Arc<RaidStorage> {
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
            auto_recover: false,
            cache_size,
            ..RaidOptions::new("1")
        },
        specs,
    )
    .expect("open the array");
    Arc::new(raid)
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

fn main() {
    // One memory measurement, in a process of its own (see `memory`).
    let args: Vec<String> = std::env::args().collect();
    if let Some(mb) = args
        .iter()
        .position(|a| a == "memory-child")
        .and_then(|i| args.get(i + 1)?.parse::<u64>().ok())
    {
        memory_child(mb);
        return;
    }
    if wanted("python") {
        python_readers();
    }
    if wanted("commits") {
        commits();
    }
    if wanted("memory") {
        memory();
    }
}

// ---------------------------------------------------------------------------
// Python readers.
// ---------------------------------------------------------------------------

/// A server the readers read from, with the working set written to it,
/// and the processes whose CPU serves its reads.
struct Target {
    name: &'static str,
    addr: String,
    oids: Vec<Oid>,
    oid_file: std::path::PathBuf,
    raid: Option<Arc<RaidStorage>>,
    /// Server processes outside this one (runzeo).
    pids: Vec<u32>,
    /// Served by this process (zeoraid in process).
    here: bool,
}

impl Target {
    fn cpu(&self) -> f64 {
        let mut t: f64 = self.pids.iter().map(|&p| cpu_seconds(p)).sum();
        if self.here {
            t += cpu_seconds(std::process::id());
        }
        t
    }
}

fn prepare(
    name: &'static str,
    addr: String,
    dir: &Path,
    raid: Option<Arc<RaidStorage>>,
    pids: Vec<u32>,
) -> Target {
    let oids =
        fill(&addr, "1", OBJECTS, 100, SIZE).unwrap_or_else(|e| panic!("filling {name}: {e}"));
    let oid_file = dir.join(format!("{}.oids", name.replace(' ', "-")));
    let text: String = oids.iter().map(|o| format!("{:x}\n", o.0)).collect();
    std::fs::write(&oid_file, text).expect("write the oid list");
    let here = raid.is_some() || pids.is_empty();
    Target {
        name,
        addr,
        oids,
        oid_file,
        raid,
        pids,
        here,
    }
}

/// One measured run: loads/s and the servers' CPU microseconds per load.
#[derive(Clone, Copy)]
struct Run {
    rate: f64,
    cpu_us: f64,
}

/// All processes at once; their summed loads/s.
fn read_run(script: &Path, t: &Target, secs: f64, seed: u64, prefetch: bool) -> Run {
    let start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
        + 4.0;
    let children: Vec<_> = (0..processes())
        .map(|i| {
            Command::new(python())
                .arg(script)
                .arg(&t.addr)
                .arg(&t.oid_file)
                .arg(secs.to_string())
                .arg(CLIENT_CACHE.to_string())
                .arg((seed * 100 + i as u64).to_string())
                .arg(start.to_string())
                .arg(if prefetch { "1" } else { "0" })
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start a reader")
        })
        .collect();
    // The servers' CPU over the measured seconds only (the readers sleep
    // until `start`; connecting and imports come before).
    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64()
    };
    std::thread::sleep(Duration::from_secs_f64((start - now()).max(0.0)));
    let cpu0 = t.cpu();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let cpu = t.cpu() - cpu0;
    let rate: f64 = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("reader ends");
            let text = String::from_utf8_lossy(&out.stdout);
            text.trim()
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("{}: a reader printed {text:?}", t.name))
        })
        .sum();
    Run {
        rate,
        cpu_us: cpu * 1e6 / (rate * secs).max(1.0),
    }
}

fn python_readers() {
    let (secs, reps) = (seconds(), repeat());
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("reader.py");
    std::fs::write(&script, READER_PY).expect("write the reader");
    let py = [
        start_runzeo(&dir.path().join("a"), true),
        start_runzeo(&dir.path().join("b"), true),
        start_runzeo(&dir.path().join("single"), true),
    ];
    let zeo = |addr: std::net::SocketAddr| BackendSource::Zeo(ClientOptions::new(addr.to_string()));
    let workers = Some((zeoraid::config::default_workers() + 16).min(64));
    let over_runzeo = array(
        zeoraid::raid::cache::DEFAULT_SIZE,
        vec![zeo(py[0].addr), zeo(py[1].addr)],
    );
    let over_runzeo_server = serve(over_runzeo.clone(), workers);
    let over_files = array(
        zeoraid::raid::cache::DEFAULT_SIZE,
        vec![
            BackendSource::Local(file_storage(&dir.path().join("fa/Data.fs"))),
            BackendSource::Local(file_storage(&dir.path().join("fb/Data.fs"))),
        ],
    );
    let over_files_server = serve(over_files.clone(), None);
    let single_file = serve(file_storage(&dir.path().join("fs/Data.fs")), None);
    let targets = [
        prepare(
            "array over 2 runzeo, cache on",
            over_runzeo_server.local_addr().to_string(),
            dir.path(),
            Some(over_runzeo.clone()),
            vec![py[0].child.id(), py[1].child.id()],
        ),
        prepare(
            "1 runzeo straight",
            py[2].addr.to_string(),
            dir.path(),
            None,
            vec![py[2].child.id()],
        ),
        prepare(
            "array over 2 file mirrors, cache on",
            over_files_server.local_addr().to_string(),
            dir.path(),
            Some(over_files.clone()),
            vec![],
        ),
        prepare(
            "1 file storage (zeoraid)",
            single_file.local_addr().to_string(),
            dir.path(),
            None,
            vec![],
        ),
    ];
    for t in &targets {
        eprintln!("python readers: warming {}", t.name);
        read_run(&script, t, 2.0, 0, false);
    }
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
    let mut prefetched: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
    let mut rust: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for rep in 0..reps {
        eprintln!("python readers: repeat {} of {reps}", rep + 1);
        // Interleaved, in a different order each time.
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if rep % 2 == 1 {
            order.reverse();
        }
        for &i in &order {
            runs[i].push(read_run(&script, &targets[i], secs, rep as u64 + 1, false));
        }
        for &i in &order {
            prefetched[i].push(read_run(&script, &targets[i], secs, rep as u64 + 1, true));
        }
        for &i in &order {
            let t = &targets[i];
            let r = load_phase(&t.addr, "1", 8, Duration::from_secs_f64(secs), 16, &t.oids)
                .unwrap_or_else(|e| panic!("{}: {e}", t.name));
            rust[i].push(r.per_second);
        }
    }
    println!(
        "### The object cache: stock Python readers\n\n\
         {} stock ZODB client processes (`ClientStorage`, {CLIENT_CACHE}-byte client cache), \
         each loading random objects of one shared working set of {OBJECTS} objects of {SIZE} \
         bytes for {secs} s; loads/s summed over the processes, and the CPU the servers spent \
         per load (zeoraid and the runzeo processes it uses, or the runzeo read straight); \
         the same with each batch of 50 loads first handed to ZEO's `prefetch` (the loads go \
         out together); then the Rust load generator on the same working set, 8 connections \
         with 16 loads in flight each. Medians of {reps} interleaved runs, after one warm-up \
         run each.\n",
        processes()
    );
    println!(
        "| server | Python readers, loads/s | server CPU µs per load | prefetching, loads/s | server CPU µs per load | Rust generator, loads/s | cache hit rate |"
    );
    println!("|---|---|---|---|---|---|---|");
    let med = |v: &[Run], f: fn(&Run) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    for (i, t) in targets.iter().enumerate() {
        let hit = t
            .raid
            .as_ref()
            .and_then(|a| a.status().cache)
            .map(|c| format!("{:.1}%", c.hit_rate() * 100.0))
            .unwrap_or_default();
        println!(
            "| {} | {:.0} | {:.1} | {:.0} | {:.1} | {:.0} | {hit} |",
            t.name,
            med(&runs[i], |x| x.rate),
            med(&runs[i], |x| x.cpu_us),
            med(&prefetched[i], |x| x.rate),
            med(&prefetched[i], |x| x.cpu_us),
            median(&rust[i])
        );
    }
    for (a, b, target, what) in [
        (0, 1, 2.0, "array over 2 runzeo ÷ 1 runzeo"),
        (2, 3, 1.2, "array over 2 file mirrors ÷ 1 file storage"),
    ] {
        let py = ratio(med(&runs[a], |x| x.rate), med(&runs[b], |x| x.rate));
        let cpu = ratio(med(&runs[b], |x| x.cpu_us), med(&runs[a], |x| x.cpu_us));
        let pre = ratio(
            med(&prefetched[a], |x| x.rate),
            med(&prefetched[b], |x| x.rate),
        );
        let gen = ratio(median(&rust[a]), median(&rust[b]));
        println!(
            "\n**{what}**: Python readers' loads/s **{py:.2}x** (target ≥ {target}x: {}); \
             loads per server CPU second **{cpu:.2}x**; prefetching Python readers **{pre:.2}x**; \
             Rust generator **{gen:.2}x**.",
            mark(py >= target)
        );
    }
    println!();
    over_runzeo_server.shutdown();
    over_files_server.shutdown();
    single_file.shutdown();
}

// ---------------------------------------------------------------------------
// Commits, cache on and off.
// ---------------------------------------------------------------------------

fn commits() {
    let (secs, reps) = (seconds(), repeat());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rows = Vec::new();
    for kind in ["file mirrors (fsync)", "memory mirrors"] {
        let mirrors = |tag: &str| -> Vec<BackendSource> {
            ["a", "b"]
                .iter()
                .map(|n| {
                    BackendSource::Local(if kind.starts_with("file") {
                        file_storage(&dir.path().join(format!("{tag}-{n}/Data.fs")))
                    } else {
                        Arc::new(MemoryStorage::new("1", false)) as Arc<dyn Storage>
                    })
                })
                .collect()
        };
        let on = serve(
            array(zeoraid::raid::cache::DEFAULT_SIZE, mirrors("on")),
            None,
        );
        let off = serve(array(0, mirrors("off")), None);
        let (mut r_on, mut r_off) = (Vec::new(), Vec::new());
        for rep in 0..reps {
            eprintln!("commits over {kind}: repeat {} of {reps}", rep + 1);
            let run = |s: &Server| {
                commit_phase(
                    &s.local_addr().to_string(),
                    "1",
                    8,
                    Duration::from_secs_f64(secs),
                    1,
                    128,
                )
                .expect("commit phase")
                .result
                .per_second
            };
            if rep % 2 == 0 {
                r_on.push(run(&on));
                r_off.push(run(&off));
            } else {
                r_off.push(run(&off));
                r_on.push(run(&on));
            }
        }
        rows.push((kind, r_on, r_off));
        on.shutdown();
        off.shutdown();
    }
    println!(
        "### The object cache: commit rate, cache on and off\n\n\
         The Rust load generator, 8 clients each committing one new 128-byte object per \
         transaction for {secs} s; median of {reps} interleaved runs.\n"
    );
    println!("| array over 2 | cache on, commits/s | cache off, commits/s | on ÷ off |");
    println!("|---|---|---|---|");
    for (kind, on, off) in &rows {
        let r = ratio(median(on), median(off));
        println!(
            "| {kind} | {:.0} | {:.0} | **{r:.2}x** {} |",
            median(on),
            median(off),
            mark(r >= 0.97)
        );
    }
    println!("\nTarget ≥ 0.97x.\n");
}

// ---------------------------------------------------------------------------
// Memory.
// ---------------------------------------------------------------------------

fn rss_bytes() -> f64 {
    status_kib(std::process::id(), "VmRSS") * 1024.0
}

fn memory() {
    println!(
        "### The object cache: memory\n\n\
         A cache filled through its load path with three times its size of objects (sizes \
         64 bytes to 4 kB, uniformly), so that it evicts all along; the resident memory it \
         added to a fresh process, ÷ `cache-size`.\n"
    );
    println!("| cache-size | objects held | bytes counted | RSS growth | growth ÷ cache-size |");
    println!("|---|---|---|---|---|");
    for mb in [64u64, 256] {
        let out = Command::new(std::env::current_exe().expect("this bench"))
            .args(["memory-child", &mb.to_string()])
            .stderr(Stdio::inherit())
            .output()
            .expect("run the measurement");
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    println!("\nTarget ≤ 1.10.\n");
}

fn memory_child(mb: u64) {
    use rand::{Rng, SeedableRng};
    let capacity = mb << 20;
    let before = rss_bytes();
    let cache = Cache::new(capacity);
    let mut rng = rand::rngs::StdRng::seed_from_u64(mb);
    let mut written = 0u64;
    let mut oid = 0u64;
    while written < 3 * capacity {
        let size = rng.gen_range(64..4096usize);
        let data: zeoraid::storage::Data = vec![b'x'; size].into();
        oid += 1;
        let ticket = cache.ticket(Oid(oid));
        cache.fill(
            Oid(oid),
            ticket,
            &Loaded {
                data,
                start: Tid(1),
                end: None,
            },
        );
        written += size as u64;
    }
    let grown = rss_bytes() - before;
    let c = cache.counters();
    let r = grown / capacity as f64;
    println!(
        "| {mb} MB | {} | {:.1} MB | {:.1} MB | **{r:.2}** {} |",
        c.objects,
        c.size as f64 / 1048576.0,
        grown / 1048576.0,
        mark(r <= 1.10)
    );
}
