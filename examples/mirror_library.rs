//! The RAID-1 array as a library: no network, no server. Three `Data.fs`
//! mirrors in a temporary directory behind one `Storage`; commit, load,
//! take a mirror out as a failed disk would be, keep committing while the
//! array is degraded, recover the mirror online and verify it.
//!
//! ```text
//! cargo run --release --example mirror_library
//! ```

use std::error::Error;
use zeoraid::config::{BackendConfig, StorageConfig};
use zeoraid::storage::{commit, load, Op, Storage, Tid, Txn};

fn main() -> Result<(), Box<dyn Error>> {
    // Logs go where the embedder says; here, warnings and errors to stderr.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let dir = std::env::temp_dir().join(format!("zeoraid-mirror-library-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run(&dir);
    std::fs::remove_dir_all(&dir)?;
    result
}

fn run(dir: &std::path::Path) -> Result<(), Box<dyn Error>> {
    let config = StorageConfig::raid(
        "1",
        ["a", "b", "c"]
            .iter()
            .map(|n| BackendConfig::file(n, dir.join(format!("{n}.fs"))))
            .collect(),
    );
    let array = zeoraid::open::open_raid(&config)?;
    println!("array: {}", summary(&array));

    // Commit an object, then a new revision of it.
    let oid = array.new_oids(1)?[0];
    let mut serial = Tid::ZERO;
    for n in 1..=2 {
        let data = format!("counter = {n}").into_bytes();
        serial = commit(
            &array,
            &Txn::new(vec![Op::Store {
                oid,
                serial,
                data: data.into(),
            }]),
        )?;
    }
    let loaded = load(&array, oid)?;
    println!(
        "loaded {oid}: {:?} (written by {})",
        text(&loaded.data),
        loaded.start
    );

    // Mirror "b" fails (here: the operator takes it out, as `zeoraid ctl
    // disable` does); the array keeps serving from the other two.
    array.disable("b")?;
    println!("after b failed: {}", summary(&array));
    for n in 3..=10 {
        let data = format!("counter = {n}").into_bytes();
        serial = commit(
            &array,
            &Txn::new(vec![Op::Store {
                oid,
                serial,
                data: data.into(),
            }]),
        )?;
    }
    println!(
        "committed 8 transactions while degraded; loaded: {:?}",
        text(&load(&array, oid)?.data)
    );

    // Recover it online: copies what it missed, rejoins under the commit
    // lock.
    let report = array.recover("b", false)?;
    println!(
        "recovered b from {}: {} transactions copied; array: {}",
        report.source,
        report.copied,
        summary(&array)
    );
    let verified = array.verify("b")?;
    println!(
        "verified b against {}: {} transactions, {}",
        verified.reference,
        verified.transactions,
        match &verified.difference {
            None => "identical".to_string(),
            Some(d) => format!("DIFFERENT: {d}"),
        }
    );
    array.close();
    Ok(())
}

/// "optimal (3 of 3): a optimal, b optimal, c optimal".
fn summary(array: &zeoraid::raid::RaidStorage) -> String {
    let doc = array.status();
    let states: Vec<String> = doc
        .backends
        .iter()
        .map(|b| format!("{} {}", b.name, b.state))
        .collect();
    format!(
        "{} ({} of {}): {}",
        doc.state,
        doc.optimal,
        doc.backends.len(),
        states.join(", ")
    )
}

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}
