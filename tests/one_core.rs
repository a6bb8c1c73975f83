//! A constrained host (issue #14): `zeoraid serve` pinned to one core with
//! `workers = 2`, serving an array of two file mirrors, takes a hot
//! counter from eight concurrent writers (conflicts retried, as ZODB
//! applications do) plus their private objects and readers, and loses
//! nothing: every increment lands, both mirrors hold the same history.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use zeoraid::storage::{commit, load, Error, Op, Storage, Tid, Txn};
use zeoraid::zeo::client::{Client, ClientOptions};

const WRITERS: usize = 8;
const INCREMENTS: u64 = 25;

fn connect(addr: &str) -> Client {
    Client::connect(ClientOptions {
        call_timeout: Duration::from_secs(30),
        ..ClientOptions::new(addr)
    })
    .expect("connect")
}

/// Add one to the counter at `oid`, retrying on conflicts; the number of
/// conflicts met.
fn increment(c: &Client, oid: zeoraid::storage::Oid) -> u64 {
    let mut conflicts = 0;
    loop {
        let current = load(c, oid).expect("load the counter");
        let n: u64 = String::from_utf8_lossy(&current.data)
            .parse()
            .expect("a number");
        let data = (n + 1).to_string().into_bytes().into();
        match commit(
            c,
            &Txn::new(vec![Op::Store {
                oid,
                serial: current.start,
                data,
            }]),
        ) {
            Ok(_) => return conflicts,
            Err(Error::Conflict { .. }) => conflicts += 1,
            Err(e) => panic!("increment failed: {e}"),
        }
    }
}

#[test]
fn one_core_two_workers_hot_counter_loses_nothing() {
    assert!(
        Command::new("taskset")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success()),
        "taskset (util-linux) is needed to pin zeoraid to one core"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "[server]\nworkers = 2\n[[storage]]\nname = \"1\"\nkind = \"raid\"\n\
         [[storage.backend]]\nname = \"a\"\nkind = \"file\"\npath = \"{0}/a.fs\"\n\
         [[storage.backend]]\nname = \"b\"\nkind = \"file\"\npath = \"{0}/b.fs\"\n",
        dir.path().display()
    );
    let server = common::ZeoraidProcess::start_under(dir.path(), &config, &["taskset", "-c", "0"]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id()))
        .expect("/proc status");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Cpus_allowed_list:") && l.ends_with("\t0")),
        "zeoraid is not pinned to core 0:\n{status}"
    );
    let addr = server.addr.to_string();

    let setup = connect(&addr);
    let counter = setup.new_oids(1).expect("oid")[0];
    commit(
        &setup,
        &Txn::new(vec![Op::Store {
            oid: counter,
            serial: Tid::ZERO,
            data: b"0".to_vec().into(),
        }]),
    )
    .expect("create the counter");

    let conflicts = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (addr, conflicts) = (addr.clone(), conflicts.clone());
            std::thread::Builder::new()
                .name(format!("writer-{w}"))
                .spawn(move || {
                    let c = connect(&addr);
                    let mine = c.new_oids(1).expect("oid")[0];
                    let mut serial = Tid::ZERO;
                    for i in 0..INCREMENTS {
                        conflicts.fetch_add(increment(&c, counter), Ordering::Relaxed);
                        let data = format!("writer {w} step {i}").into_bytes().into();
                        serial = commit(
                            &c,
                            &Txn::new(vec![Op::Store {
                                oid: mine,
                                serial,
                                data,
                            }]),
                        )
                        .expect("private commit");
                    }
                    let last = load(&c, mine).expect("load own object");
                    assert_eq!(
                        String::from_utf8_lossy(&last.data),
                        format!("writer {w} step {}", INCREMENTS - 1)
                    );
                    c.close();
                })
                .expect("spawn a writer")
        })
        .collect();
    for w in writers {
        w.join().expect("a writer failed");
    }
    let total = load(&setup, counter).expect("load the counter");
    assert_eq!(
        String::from_utf8_lossy(&total.data),
        (WRITERS as u64 * INCREMENTS).to_string(),
        "increments lost ({} conflicts retried)",
        conflicts.load(Ordering::Relaxed)
    );
    eprintln!(
        "{} increments from {WRITERS} writers on one core with 2 workers; {} conflicts retried",
        WRITERS as u64 * INCREMENTS,
        conflicts.load(Ordering::Relaxed)
    );
    setup.close();
    drop(server);
    // Both mirrors hold the whole history (ZODB's own checker agrees).
    for m in ["a", "b"] {
        common::assert_fstest_clean(&dir.path().join(format!("{m}.fs")));
    }
    let a = std::fs::read(dir.path().join("a.fs")).expect("a.fs");
    let b = std::fs::read(dir.path().join("b.fs")).expect("b.fs");
    assert!(
        a == b,
        "the mirrors differ ({} and {} bytes)",
        a.len(),
        b.len()
    );
}
