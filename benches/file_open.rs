//! Open time of a large Data.fs, with and without zeoraid's index file, and
//! the index's memory per object.
//!
//! Run: `cargo bench --bench file_open` (release build). Builds a Data.fs of
//! `ZEORAID_BENCH_FILE_MIB` MiB (default 1024) in a temporary directory with
//! zeoraid's FileStorage (objects of 2 KiB, each written twice, 500 records
//! per transaction, fsync off while building), closes it (which writes the
//! index file), then opens it `ZEORAID_BENCH_REPEAT` times (default 3) with
//! the index and the same number of times without (full scan), reporting
//! medians, warm (file in the page cache) and cold (page cache dropped first,
//! which needs root; reported as n/a otherwise). Each open runs in a fresh child process (this binary with
//! `--measure-open PATH`), so the memory per object is the growth of a clean
//! process's resident set across the open, divided by the number of objects.

use std::sync::Arc;
use std::time::Instant;
use zeoraid::storage::file::{FileOptions, FileStorage};
use zeoraid::storage::{Op, Storage, Tid, Txn, TxnMeta, Vote};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn build(path: &std::path::Path, mib: u64) -> u64 {
    let fs = FileStorage::open(
        path,
        FileOptions {
            sync: false,
            ..FileOptions::default()
        },
    )
    .expect("create Data.fs");
    let record = 2048usize;
    let objects = (mib << 20) / (2 * (record as u64 + 50));
    let per_txn = 500u64;
    let data: Arc<[u8]> = Arc::from(vec![7u8; record]);
    let mut serials = vec![Tid::ZERO; objects as usize];
    let mut first = Vec::with_capacity(objects as usize);
    while first.len() < objects as usize {
        let n = (objects as usize - first.len()).min(65_536);
        first.extend(fs.new_oids(n).expect("oids"));
    }
    for pass in 0..2 {
        for chunk in (0..objects).collect::<Vec<_>>().chunks(per_txn as usize) {
            let ops = chunk
                .iter()
                .map(|&i| Op::Store {
                    oid: first[i as usize],
                    serial: serials[i as usize],
                    data: data.clone(),
                })
                .collect();
            let txn = Txn {
                meta: TxnMeta::default(),
                tid: None,
                status: b' ',
                ops,
            };
            match fs.tpc_vote(&txn).expect("vote") {
                Vote::Prepared { .. } => {}
                Vote::Conflicts(c) => panic!("pass {pass}: conflicts {c:?}"),
            }
            let tid = fs.tpc_finish().expect("finish");
            for &i in chunk {
                serials[i as usize] = tid;
            }
        }
    }
    fs.close();
    objects
}

/// Child mode: open `path`, print "seconds rss_growth_bytes", close.
fn measure_open(path: &str) {
    let before = rss_kib();
    let t = Instant::now();
    let fs = FileStorage::open(std::path::Path::new(path), FileOptions::default()).expect("open");
    let secs = t.elapsed().as_secs_f64();
    let grown = rss_kib().saturating_sub(before) * 1024;
    println!("{secs} {grown}");
    fs.close();
}

/// Drop the kernel's page cache (root only); false when not permitted.
fn drop_caches() -> bool {
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", b"3").is_ok()
}

fn open_in_child(path: &std::path::Path) -> (f64, f64) {
    let exe = std::env::current_exe().expect("current exe");
    let out = std::process::Command::new(exe)
        .arg("--measure-open")
        .arg(path)
        .output()
        .expect("run child");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text
        .split_whitespace()
        .map(|v| v.parse::<f64>().unwrap_or(f64::NAN));
    (it.next().unwrap_or(f64::NAN), it.next().unwrap_or(f64::NAN))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--measure-open") {
        if let Some(p) = args.get(i + 1) {
            measure_open(p);
        }
        return;
    }
    let mib = env("ZEORAID_BENCH_FILE_MIB", 1024);
    let repeat = env("ZEORAID_BENCH_REPEAT", 3) as usize;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("Data.fs");
    let t0 = Instant::now();
    let objects = build(&path, mib);
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "built {:.0} MiB Data.fs with {objects} objects (2 revisions each) in {:.1} s\n",
        size as f64 / (1 << 20) as f64,
        t0.elapsed().as_secs_f64()
    );
    let index = dir.path().join("Data.fs.zeoraid-index");
    let mut with = Vec::new();
    let mut without = Vec::new();
    let mut cold_with = Vec::new();
    let mut cold_without = Vec::new();
    let mut per_object = Vec::new();
    let mut can_drop = true;
    for _ in 0..repeat {
        for use_index in [true, false] {
            // Cold first: the cold open itself warms the cache for the warm one.
            for cold in [true, false] {
                if !use_index {
                    let _ = std::fs::remove_file(&index);
                }
                if cold {
                    can_drop = can_drop && drop_caches();
                    if !can_drop {
                        continue;
                    }
                }
                // The child's close writes the index file again.
                let (secs, grown) = open_in_child(&path);
                per_object.push(grown / objects as f64);
                match (use_index, cold) {
                    (true, false) => with.push(secs),
                    (false, false) => without.push(secs),
                    (true, true) => cold_with.push(secs),
                    (false, true) => cold_without.push(secs),
                }
            }
        }
    }
    let fmt = |v: Vec<f64>| {
        if v.is_empty() {
            "n/a (needs root to drop the page cache)".to_string()
        } else {
            format!("{:.3} s", median(v))
        }
    };
    println!("| Data.fs | objects | open with index file | open without (scan) | cold cache, with index | cold cache, scan | index memory per object |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {:.0} MiB | {objects} | {} | {} | {} | {} | {:.0} bytes |",
        size as f64 / (1 << 20) as f64,
        fmt(with),
        fmt(without),
        fmt(cold_with),
        fmt(cold_without),
        median(per_object)
    );
}
