//! Crash safety of `kind = "file"`: writers on several connections commit
//! as fast as they can (so group commit has transactions logged and not yet
//! durable at any moment) while the server is killed with SIGKILL at random
//! moments and restarted. Every commit that was acknowledged must be there
//! after each restart, and the final file must pass ZODB's own `fstest`.

mod common;

use common::{python, ZeoraidProcess};
use rand::Rng;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zeoraid::storage::{Oid, Op, Storage, Tid, Txn, TxnMeta, Vote};
use zeoraid::zeo::client::{Client, ClientOptions};

const ROUNDS: usize = 5;
const WRITERS: usize = 4;

fn connect(p: &ZeoraidProcess) -> Client {
    Client::connect(ClientOptions {
        addr: p.addr.to_string(),
        call_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    })
    .expect("connect")
}

type Acked = Arc<Mutex<Vec<(Oid, Tid, Vec<u8>)>>>;

/// Commit new objects until the server goes away; record what was acknowledged.
fn writer(c: &Client, acked: &Acked, stop: &AtomicBool, round: usize, w: usize) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Ok(oids) = c.new_oids(1) else { return };
        let data = format!("round {round} writer {w} commit {n}").into_bytes();
        n += 1;
        let txn = Txn {
            meta: TxnMeta::default(),
            tid: None,
            status: b' ',
            ops: vec![Op::Store {
                oid: oids[0],
                serial: Tid::ZERO,
                data: Arc::from(data.clone()),
            }],
        };
        match c.tpc_vote(&txn) {
            Ok(Vote::Prepared { .. }) => {}
            _ => return,
        }
        match c.tpc_finish() {
            Ok(tid) => acked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((oids[0], tid, data)),
            Err(_) => return,
        }
    }
}

fn verify(p: &ZeoraidProcess, acked: &Acked) {
    let c = connect(p);
    let acked = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (oid, tid, data) in &acked {
        let l = c
            .load_before(*oid, Tid::MAX)
            .unwrap_or_else(|e| panic!("acknowledged commit {tid} of {oid} lost: {e}"))
            .unwrap_or_else(|| panic!("acknowledged commit {tid} of {oid} lost"));
        assert_eq!((&l.data[..], l.start), (&data[..], *tid), "{oid}");
    }
    c.close();
}

#[test]
fn sigkill_loses_no_acknowledged_commit_and_fstest_passes() {
    python(); // fail early when the Python side is missing
    let dir = tempfile::tempdir().expect("tempdir");
    let config = "[[storage]]\nname = \"1\"\nkind = \"file\"\npath = \"Data.fs\"\n";
    let acked: Acked = Arc::new(Mutex::new(Vec::new()));
    let mut rng = rand::thread_rng();
    for round in 0..ROUNDS {
        let p = ZeoraidProcess::start(dir.path(), config);
        verify(&p, &acked);
        let stop = AtomicBool::new(false);
        let clients: Vec<Client> = (0..WRITERS).map(|_| connect(&p)).collect();
        std::thread::scope(|s| {
            let hs: Vec<_> = clients
                .iter()
                .enumerate()
                .map(|(w, c)| {
                    let (acked, stop) = (&acked, &stop);
                    s.spawn(move || writer(c, acked, stop, round, w))
                })
                .collect();
            std::thread::sleep(Duration::from_millis(rng.gen_range(100..600)));
            p.kill9();
            stop.store(true, Ordering::Relaxed);
            for h in hs {
                let _ = h.join();
            }
        });
        for c in clients {
            c.close();
        }
    }
    let mut p = ZeoraidProcess::start(dir.path(), config);
    verify(&p, &acked);
    let n = acked.lock().unwrap_or_else(|e| e.into_inner()).len();
    assert!(n > ROUNDS, "the writer committed only {n} transactions");
    // Graceful stop, then ZODB's own checker on the file.
    let _ = Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status();
    let _ = p.child.wait();
    drop(p);
    common::assert_fstest_clean(&dir.path().join("Data.fs"));
}
