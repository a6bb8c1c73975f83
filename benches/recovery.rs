//! Recovery figures (issue #8), release build, each comparison side by
//! side in one run:
//!
//! - `copy`: recovering an empty Python `runzeo` target from a Python
//!   `runzeo` source through the array, against Python's own
//!   `copyTransactionsFrom` between two such servers through
//!   `ClientStorage` (a fresh empty target each run; medians of
//!   `ZEORAID_BENCH_REPEAT` runs). Target: ≥ 3×.
//! - `files`: recovering an empty file backend from a file backend (both
//!   `sync = true`) inside zeoraid: MB/s against this disk's sequential
//!   write rate (a file written in 1 MiB blocks and fsynced once), then
//!   `verify` of the two: MB/s of history compared.
//! - `converge`: eight ZEO clients commit as fast as they can to an
//!   in-process zeoraid server over a file backend and an empty Python
//!   `runzeo` backend while the latter recovers with `recovery-ratio = 2`: time to converge, commits/s
//!   before and during, and a plot over time (`target/recovery-converge.svg`,
//!   `docs/recovery-converge.svg` with `--save-plot`).
//!
//! Run: `cargo bench --bench recovery [-- copy|files|converge] [-- --save-plot]`
//! (needs `.venv` with stock ZODB/ZEO, made by `bash tests/run-all.sh`).
//! Knobs: `ZEORAID_BENCH_TXNS` (history size of `copy`, default 2000),
//! `ZEORAID_BENCH_REPEAT` (default 3).

mod common;

use common::{env, python, start_runzeo};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zeoraid::bench::fanout::local_server_options;
use zeoraid::bench::median;
use zeoraid::bench::plot::{line_chart, Series};
use zeoraid::raid::{BackendSource, BackendSpec, RaidOptions, RaidStorage};
use zeoraid::server::Server;
use zeoraid::storage::file::{FileOptions, FileStorage};
use zeoraid::storage::{Data, Oid, Op, Storage, Tid, Txn, TxnMeta, Vote};
use zeoraid::zeo::client::{Client, ClientOptions};

struct Knobs {
    txns: usize,
    repeat: usize,
    save_plot: bool,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with --list
    }
    let k = Knobs {
        txns: env("ZEORAID_BENCH_TXNS").unwrap_or(2000),
        repeat: env::<usize>("ZEORAID_BENCH_REPEAT").unwrap_or(3).max(1),
        save_plot: args.iter().any(|a| a == "--save-plot"),
    };
    let names: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let want = |n: &str| names.is_empty() || names.iter().any(|a| *a == n);
    let started = Instant::now();
    if want("copy") {
        copy(&k);
    }
    if want("files") {
        files(&k);
    }
    if want("converge") {
        converge(&k);
    }
    eprintln!("(bench took {:.0} s)", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------
// Building blocks.
// ---------------------------------------------------------------------------

fn client(addr: SocketAddr) -> Client {
    Client::connect(ClientOptions {
        call_timeout: Duration::from_secs(60),
        ..ClientOptions::new(addr.to_string())
    })
    .expect("connect")
}

/// `n` transactions, each storing `per` objects of `size` bytes (new
/// objects and updates of earlier ones, as applications do).
fn fill(s: &dyn Storage, n: usize, per: usize, size: usize) -> u64 {
    let objects = s.new_oids(per * 8).expect("oids");
    let mut serials = vec![Tid::ZERO; objects.len()];
    let mut bytes = 0u64;
    for i in 0..n {
        let ops = (0..per)
            .map(|j| {
                let k = (i * per + j) % objects.len();
                let mut data = format!("txn {i} object {k} ").into_bytes();
                data.resize(size, b'x' + (i % 3) as u8);
                bytes += data.len() as u64;
                Op::Store {
                    oid: objects[k],
                    serial: serials[k],
                    data: Data::from(data),
                }
            })
            .collect();
        let txn = Txn {
            meta: TxnMeta {
                user: b"bench".to_vec(),
                description: format!("fill {i}").into_bytes(),
                extension: vec![],
            },
            tid: None,
            status: b' ',
            ops,
        };
        match s.tpc_vote(&txn).expect("vote") {
            Vote::Prepared { .. } => {}
            Vote::Conflicts(c) => panic!("conflicts while filling: {c:?}"),
        }
        let t = s.tpc_finish().expect("finish");
        for j in 0..per {
            serials[(i * per + j) % objects.len()] = t;
        }
    }
    bytes
}

fn array(specs: Vec<BackendSpec>, ratio: f64) -> RaidStorage {
    let opts = RaidOptions {
        auto_recover: false,
        recovery_ratio: ratio,
        backend_timeout: Duration::from_secs(30),
        ..RaidOptions::new("1")
    };
    RaidStorage::open(opts, specs).expect("open the array")
}

fn zeo_spec(name: &str, addr: SocketAddr) -> BackendSpec {
    BackendSpec {
        name: name.into(),
        kind: "zeo",
        source: BackendSource::Zeo(ClientOptions::new(addr.to_string())),
        reopen: None,
    }
}

fn file_spec(name: &str, path: &Path) -> BackendSpec {
    BackendSpec {
        name: name.into(),
        kind: "file",
        source: BackendSource::Local(file_storage(path)),
        reopen: None,
    }
}

fn file_storage(path: &Path) -> Arc<dyn Storage> {
    std::fs::create_dir_all(path.parent().expect("dir")).expect("dir");
    Arc::new(
        FileStorage::open(
            path,
            FileOptions {
                create: true,
                ..FileOptions::default()
            },
        )
        .expect("open the file storage"),
    )
}

fn count_txns(addr: SocketAddr) -> usize {
    let c = client(addr);
    let n = c.iterator(None, None).expect("iterator").count();
    Storage::close(&c);
    n
}

// ---------------------------------------------------------------------------
// copy: runzeo → runzeo, zeoraid's recovery vs copyTransactionsFrom.
// ---------------------------------------------------------------------------

const PY_COPY: &str = r#"
import sys, time
from ZEO.ClientStorage import ClientStorage
def addr(a):
    host, port = a.rsplit(":", 1)
    return (host, int(port))
src = ClientStorage(addr(sys.argv[1]), read_only=True, wait_timeout=30)
dst = ClientStorage(addr(sys.argv[2]), wait_timeout=30)
t0 = time.perf_counter()
dst.copyTransactionsFrom(src)
print(time.perf_counter() - t0)
src.close(); dst.close()
"#;

fn copy(k: &Knobs) {
    let dir = tempfile::tempdir().expect("tmp");
    let source = start_runzeo(&dir.path().join("source"), false);
    let c = client(source.addr);
    let (per, size) = (3, 400);
    let bytes = fill(&c, k.txns, per, size);
    Storage::close(&c);
    let mb = bytes as f64 / 1e6;
    println!(
        "\n## Recovery copy rate: Python runzeo → Python runzeo, {} transactions \
         ({per} records of {size} B each, {mb:.1} MB)\n",
        k.txns
    );
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 0..k.repeat {
        // zeoraid: an array over the source and an empty target.
        let target = start_runzeo(&dir.path().join(format!("ours{run}")), false);
        let a = array(
            vec![
                zeo_spec("source", source.addr),
                zeo_spec("target", target.addr),
            ],
            2.0,
        );
        let r = a.recover("target", false).expect("recovery");
        assert_eq!(r.copied as usize, k.txns);
        ours.push(r.seconds);
        a.close();
        drop(a);
        assert_eq!(count_txns(target.addr), k.txns);
        drop(target);
        // Python: copyTransactionsFrom between the same source and a new target.
        let target = start_runzeo(&dir.path().join(format!("theirs{run}")), false);
        let out = Command::new(python())
            .args(["-c", PY_COPY])
            .arg(source.addr.to_string())
            .arg(target.addr.to_string())
            .output()
            .expect("run Python");
        assert!(
            out.status.success(),
            "copyTransactionsFrom failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let secs: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("seconds");
        theirs.push(secs);
        assert_eq!(count_txns(target.addr), k.txns);
        eprintln!(
            "  run {run}: zeoraid {:.2} s, copyTransactionsFrom {secs:.2} s",
            r.seconds
        );
    }
    let (o, t) = (median(&ours), median(&theirs));
    println!(
        "| copy | seconds (median of {}) | transactions/s | MB/s |",
        k.repeat
    );
    println!("|---|---:|---:|---:|");
    for (name, s) in [
        ("zeoraid recovery", o),
        ("Python `copyTransactionsFrom` via `ClientStorage`", t),
    ] {
        println!(
            "| {name} | {s:.2} | {:.0} | {:.2} |",
            k.txns as f64 / s,
            mb / s
        );
    }
    println!(
        "\nzeoraid / Python: {:.2}× (target ≥ 3×: {})\n",
        t / o,
        if t / o >= 3.0 { "met" } else { "NOT met" }
    );
}

// ---------------------------------------------------------------------------
// files: file → file MB/s against the disk; verify MB/s.
// ---------------------------------------------------------------------------

/// This disk's sequential write rate, MB/s: `mb` MiB in 1 MiB blocks,
/// one fsync at the end (a recovery writes sequentially and fsyncs every
/// few hundred transactions).
fn disk_rate(dir: &Path, mb: usize) -> f64 {
    let path = dir.join("disk-rate.tmp");
    let block = vec![0x5au8; 1 << 20];
    let t0 = Instant::now();
    let mut f = std::fs::File::create(&path).expect("create");
    for _ in 0..mb {
        f.write_all(&block).expect("write");
    }
    f.sync_all().expect("fsync");
    let secs = t0.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    (mb as f64 * 1.048_576) / secs
}

fn files(k: &Knobs) {
    let dir = tempfile::tempdir().expect("tmp");
    let (n, per, size) = (4000, 4, 4096);
    let a_path = dir.path().join("a/Data.fs");
    {
        let a = file_storage(&a_path);
        fill(a.as_ref(), n, per, size);
        a.close();
    }
    let history_mb = std::fs::metadata(&a_path).expect("size").len() as f64 / 1e6;
    println!(
        "\n## Recovery file → file inside zeoraid, and verify ({n} transactions of {per} × \
         {size} B, Data.fs {history_mb:.0} MB, sync = true)\n"
    );
    let (mut copy_rates, mut disk_rates, mut verify_rates, mut txn_rates) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..k.repeat {
        let b_path = dir.path().join(format!("b{run}/Data.fs"));
        let a = array(vec![file_spec("a", &a_path), file_spec("b", &b_path)], 2.0);
        let r = a.recover("b", false).expect("recovery");
        let written = std::fs::metadata(&b_path).expect("size").len() as f64 / 1e6;
        copy_rates.push(written / r.seconds);
        txn_rates.push(r.copied as f64 / r.seconds);
        let v = a.verify("b").expect("verify");
        assert!(v.difference.is_none(), "{v:?}");
        verify_rates.push(written / v.seconds);
        a.close();
        drop(a);
        // Larger than the history, so the page cache cannot hide the disk.
        disk_rates.push(disk_rate(dir.path(), (history_mb.ceil() as usize).max(512)));
        let _ = std::fs::remove_dir_all(b_path.parent().expect("dir"));
        eprintln!(
            "  run {run}: copy {:.0} MB/s, disk {:.0} MB/s, verify {:.0} MB/s",
            copy_rates[run], disk_rates[run], verify_rates[run]
        );
    }
    let (c, d, v) = (
        median(&copy_rates),
        median(&disk_rates),
        median(&verify_rates),
    );
    println!("| (median of {} runs) | MB/s | |", k.repeat);
    println!("|---|---:|---|");
    println!(
        "| recovery, file → file | {c:.0} | {:.0} transactions/s; {:.0}% of the disk |",
        median(&txn_rates),
        100.0 * c / d
    );
    println!("| this disk, sequential write of 512 MB + one fsync | {d:.0} | |");
    println!("| verify, file against file (both histories read and hashed) | {v:.0} | MB of one history per second |\n");
}

// ---------------------------------------------------------------------------
// converge: a full-speed writer while a backend recovers, ratio 2.
// ---------------------------------------------------------------------------

fn converge(k: &Knobs) {
    let dir = tempfile::tempdir().expect("tmp");
    let a_path = dir.path().join("a/Data.fs");
    let behind = 10_000;
    {
        let a = file_storage(&a_path);
        fill(a.as_ref(), behind, 2, 200);
        a.close();
    }
    // The target is a Python runzeo: a copy at a few thousand
    // transactions/s, slower than the clients commit to the file backend
    // alone, so the throttle has work to do.
    let b = start_runzeo(&dir.path().join("b"), false);
    let raid = Arc::new(array(
        vec![file_spec("a", &a_path), zeo_spec("b", b.addr)],
        2.0,
    ));
    let server = Server::start(
        local_server_options(None),
        vec![("1".into(), raid.clone() as Arc<dyn Storage>, false)],
    )
    .expect("serve");
    let addr = server.local_addr();
    let clients = 8;
    let stop = AtomicBool::new(false);
    let commits: Mutex<Vec<f64>> = Mutex::new(Vec::new());
    let copied: Mutex<Vec<(f64, u64)>> = Mutex::new(Vec::new());
    let t0 = Instant::now();
    let (mut rec_start, mut rec_end) = (0.0, 0.0);
    let mut report = None;
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                let c = client(addr);
                let oid: Oid = c.new_oids(1).expect("oid")[0];
                let mut serial = Tid::ZERO;
                let mut mine = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    let txn = Txn {
                        meta: TxnMeta::default(),
                        tid: None,
                        status: b' ',
                        ops: vec![Op::Store {
                            oid,
                            serial,
                            data: Data::from(
                                &b"counter value, about a hundred bytes of pickle......"[..],
                            ),
                        }],
                    };
                    match c.tpc_vote(&txn).expect("vote") {
                        Vote::Prepared { .. } => {}
                        Vote::Conflicts(_) => panic!("own object conflicts"),
                    }
                    serial = c.tpc_finish().expect("finish");
                    mine.push(t0.elapsed().as_secs_f64());
                }
                commits.lock().expect("lock").extend(mine);
                Storage::close(&c);
            });
        }
        // Watch the copy.
        s.spawn(|| {
            while !stop.load(Ordering::Acquire) {
                let st = raid.status();
                if let Some(n) = st.backends[1].recovery.as_ref().map(|r| r.copied) {
                    copied
                        .lock()
                        .expect("lock")
                        .push((t0.elapsed().as_secs_f64(), n));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        std::thread::sleep(Duration::from_secs(2));
        rec_start = t0.elapsed().as_secs_f64();
        report = Some(raid.recover("b", false).expect("recovery finishes"));
        rec_end = t0.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Release);
    });
    let r = report.expect("report");
    server.shutdown();
    raid.close();
    drop(b);
    let commits = commits.into_inner().expect("lock");
    let end = commits.iter().copied().fold(0.0, f64::max);
    // Commits per second in 250 ms bins.
    let bin = 0.25;
    let bins = (end / bin).ceil() as usize + 1;
    let mut per_bin = vec![0u64; bins];
    for t in &commits {
        per_bin[(t / bin) as usize] += 1;
    }
    let rate = |from: f64, to: f64| {
        let v: Vec<f64> = per_bin
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                let t = *i as f64 * bin;
                t >= from && t + bin <= to
            })
            .map(|(_, n)| *n as f64 / bin)
            .collect();
        median(&v)
    };
    let (before, during, after) = (
        rate(0.5, rec_start),
        rate(rec_start, rec_end),
        rate(rec_end, end),
    );
    let during_commits = commits
        .iter()
        .filter(|t| **t >= rec_start && **t <= rec_end)
        .count();
    println!(
        "\n## Convergence under {clients} clients committing at full speed, recovery-ratio = 2 \
         (source: file backend, sync = true; target: Python runzeo, empty, missing the {behind} \
         transactions of the fill and those of the first 2 s)\n"
    );
    println!("| | |\n|---|---:|");
    println!("| time to converge | {:.1} s |", rec_end - rec_start);
    println!(
        "| transactions copied | {} ({:.0}/s) |",
        r.copied,
        r.copied as f64 / r.seconds
    );
    println!(
        "| commits during the recovery | {during_commits} ({:.2} copied per commit) |",
        r.copied as f64 / during_commits.max(1) as f64
    );
    println!("| commits/s before (median of 250 ms bins) | {before:.0} |");
    println!(
        "| commits/s during | {during:.0} ({:.0}% of before) |",
        100.0 * during / before
    );
    println!("| commits/s after | {after:.0} |\n");
    // The last bins are cut short by the stop.
    let commit_series: Vec<(f64, f64)> = per_bin[..per_bin.len().saturating_sub(2)]
        .iter()
        .enumerate()
        .map(|(i, n)| (i as f64 * bin, *n as f64 / bin))
        .collect();
    let copied = copied.into_inner().expect("lock");
    let copy_series: Vec<(f64, f64)> = copied
        .windows(2)
        .map(|w| (w[1].0, (w[1].1 - w[0].1) as f64 / (w[1].0 - w[0].0)))
        .collect();
    let svg = line_chart(
        &format!("Recovery under {clients} full-speed writers, recovery-ratio 2 (file → runzeo)"),
        "seconds",
        "transactions per second",
        &[
            Series {
                name: "commits/s".into(),
                points: commit_series,
            },
            Series {
                name: "copied/s (recovery)".into(),
                points: copy_series,
            },
        ],
    );
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target/recovery-converge.svg");
    std::fs::write(&target, &svg).expect("write the plot");
    println!("Plot: `{}`", target.display());
    if k.save_plot {
        let docs = root.join("docs");
        std::fs::create_dir_all(&docs).expect("docs/");
        std::fs::write(docs.join("recovery-converge.svg"), &svg).expect("write the plot");
        println!("Plot saved to `docs/recovery-converge.svg`.");
    }
}
