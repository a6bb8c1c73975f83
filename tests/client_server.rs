//! The Rust client against the Rust server, on the memory storage and on
//! the file storage (whose commits go through group commit: logged under
//! the commit lock, acknowledged by the commit thread after one shared
//! fsync): many threads sharing one multiplexed connection, plus several
//! connections, committing and loading concurrently; invalidations reach
//! the other connection exactly once per transaction, in tid order;
//! conflicts come back for client-side resolution, also against
//! transactions not yet acknowledged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zeoraid::server::Server;
use zeoraid::storage::file::{FileOptions, FileStorage};
use zeoraid::storage::memory::MemoryStorage;
use zeoraid::storage::*;
use zeoraid::zeo::client::{Client, ClientOptions, ServerEvent};

mod common;

/// A server on a memory storage or on a file storage in a fresh directory
/// (kept as long as the server).
struct Running {
    server: Server,
    _dir: Option<tempfile::TempDir>,
}

impl std::ops::Deref for Running {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Memory,
    File,
}

const KINDS: [Kind; 2] = [Kind::Memory, Kind::File];

fn start(kind: Kind) -> Running {
    let (storage, dir): (Arc<dyn Storage>, _) = match kind {
        Kind::Memory => (Arc::new(MemoryStorage::new("1", false)), None),
        Kind::File => {
            let dir = tempfile::tempdir().expect("tempdir");
            let fs = FileStorage::open(&dir.path().join("Data.fs"), FileOptions::default())
                .expect("file storage");
            (Arc::new(fs), Some(dir))
        }
    };
    let server = common::serve_with(storage, 4);
    Running { server, _dir: dir }
}

fn client(server: &Server) -> Client {
    Client::connect(ClientOptions {
        addr: server.local_addr().to_string(),
        call_timeout: Duration::from_secs(20),
        ..ClientOptions::default()
    })
    .expect("client connects")
}

fn txn(ops: Vec<Op>) -> Txn {
    Txn {
        meta: TxnMeta {
            user: b"test".to_vec(),
            description: b"client_server".to_vec(),
            extension: Vec::new(),
        },
        tid: None,
        status: b' ',
        ops,
    }
}

/// Commit, retrying when the vote reports conflicts (none expected here).
fn commit(c: &Client, ops: Vec<Op>) -> Tid {
    match c.tpc_vote(&txn(ops)).expect("vote") {
        Vote::Prepared { .. } => c.tpc_finish().expect("finish"),
        Vote::Conflicts(cs) => panic!("unexpected conflicts {cs:?}"),
    }
}

#[test]
fn many_threads_one_connection_and_many_connections() {
    for kind in KINDS {
        many_threads(kind);
    }
}

fn many_threads(kind: Kind) {
    let server = start(kind);
    let shared = Arc::new(client(&server));
    let commit_lock = Arc::new(Mutex::new(()));
    let threads = 8;
    let per_thread = 25;
    let written: Vec<(Oid, Vec<u8>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let shared = shared.clone();
                let commit_lock = commit_lock.clone();
                let server = &server;
                s.spawn(move || {
                    // Half the threads share one connection (one transaction at a
                    // time on it, as ClientStorage does); the others have their own.
                    let own = if t % 2 == 0 {
                        Some(client(server))
                    } else {
                        None
                    };
                    let c: &Client = own.as_ref().unwrap_or(&shared);
                    let mut out = Vec::new();
                    for i in 0..per_thread {
                        let oid = c.new_oids(1).expect("oid")[0];
                        let data = format!("thread {t} object {i}").into_bytes();
                        let _guard = if own.is_none() {
                            Some(commit_lock.lock().unwrap_or_else(|e| e.into_inner()))
                        } else {
                            None
                        };
                        let tid = commit(
                            c,
                            vec![Op::Store {
                                oid,
                                serial: Tid::ZERO,
                                data: Arc::from(data.clone()),
                            }],
                        );
                        drop(_guard);
                        let loaded = c.load_before(oid, Tid::MAX).expect("load").expect("exists");
                        assert_eq!((&loaded.data[..], loaded.start), (&data[..], tid));
                        out.push((oid, data));
                    }
                    if let Some(c) = own {
                        c.close();
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(written.len(), threads * per_thread);
    // Every object is readable afterwards from a fresh connection, and the
    // storage iterates exactly that many transactions.
    let fresh = client(&server);
    for (oid, data) in &written {
        let l = fresh
            .load_before(*oid, Tid::MAX)
            .expect("load")
            .expect("exists");
        assert_eq!(&l.data[..], &data[..]);
    }
    let txns: Vec<TxnRecord> = fresh
        .iterator(None, None)
        .expect("iterator")
        .collect::<Result<_>>()
        .expect("iterate");
    assert_eq!(txns.len(), threads * per_thread);
    assert!(
        txns.windows(2).all(|w| w[0].tid < w[1].tid),
        "tids strictly increase"
    );
    fresh.close();
    shared.close();
}

#[test]
fn invalidations_reach_other_clients_exactly_once() {
    for kind in KINDS {
        invalidations_once(kind);
    }
}

fn invalidations_once(kind: Kind) {
    let server = start(kind);
    let writer = client(&server);
    let reader = client(&server);
    let seen: Arc<Mutex<HashMap<Tid, usize>>> = Arc::new(Mutex::new(HashMap::new()));
    let seen2 = seen.clone();
    reader.set_event_handler(Arc::new(move |ev| {
        if let ServerEvent::Invalidate { tid, .. } = ev {
            *seen2
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(tid)
                .or_default() += 1;
        }
    }));
    let own: Arc<Mutex<usize>> = Arc::new(Mutex::new(0));
    let own2 = own.clone();
    writer.set_event_handler(Arc::new(move |ev| {
        if let ServerEvent::Invalidate { .. } = ev {
            *own2.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        }
    }));
    let mut tids = Vec::new();
    for i in 0..10u8 {
        let oid = writer.new_oids(1).expect("oid")[0];
        tids.push(commit(
            &writer,
            vec![Op::Store {
                oid,
                serial: Tid::ZERO,
                data: Arc::from(vec![i]),
            }],
        ));
    }
    // A round trip on the reader's connection orders it after the broadcasts.
    reader.last_transaction().expect("ping");
    std::thread::sleep(Duration::from_millis(100));
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for tid in &tids {
        assert_eq!(seen.get(tid), Some(&1), "tid {tid} seen {seen:?}");
    }
    assert_eq!(seen.len(), tids.len());
    assert_eq!(
        *own.lock().unwrap_or_else(|e| e.into_inner()),
        0,
        "no self-invalidation"
    );
    writer.close();
    reader.close();
}

#[test]
fn stale_serial_comes_back_as_a_conflict() {
    for kind in KINDS {
        stale_serial(kind);
    }
}

fn stale_serial(kind: Kind) {
    let server = start(kind);
    let a = client(&server);
    let b = client(&server);
    let oid = a.new_oids(1).expect("oid")[0];
    let t1 = commit(
        &a,
        vec![Op::Store {
            oid,
            serial: Tid::ZERO,
            data: Arc::from(&b"v1"[..]),
        }],
    );
    let t2 = commit(
        &a,
        vec![Op::Store {
            oid,
            serial: t1,
            data: Arc::from(&b"v2"[..]),
        }],
    );
    match b
        .tpc_vote(&txn(vec![Op::Store {
            oid,
            serial: t1,
            data: Arc::from(&b"stale"[..]),
        }]))
        .expect("vote")
    {
        Vote::Conflicts(cs) => {
            assert_eq!(cs.len(), 1);
            assert_eq!((cs[0].oid, cs[0].committed, cs[0].read), (oid, t2, t1));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Resolved: store against the committed serial.
    let t3 = commit(
        &b,
        vec![Op::Store {
            oid,
            serial: t2,
            data: Arc::from(&b"resolved"[..]),
        }],
    );
    let l = a.load_before(oid, Tid::MAX).expect("load").expect("exists");
    assert_eq!((&l.data[..], l.start), (&b"resolved"[..], t3));
    a.close();
    b.close();
}

#[test]
fn contended_counter_counts_every_increment() {
    for kind in KINDS {
        contended_counter(kind);
    }
}

/// Clients increment one counter, resolving conflicts as ZODB does (load
/// the committed state by serial, apply the change, vote again). With group
/// commit the committed state is often a transaction that is logged but not
/// yet acknowledged: loadSerial must find it. Invalidations arrive in tid
/// order at a watching client.
fn contended_counter(kind: Kind) {
    let server = start(kind);
    let setup = client(&server);
    let oid = setup.new_oids(1).expect("oid")[0];
    let first = commit(
        &setup,
        vec![Op::Store {
            oid,
            serial: Tid::ZERO,
            data: Arc::from(&b"0"[..]),
        }],
    );
    let watched: Arc<Mutex<Vec<Tid>>> = Arc::new(Mutex::new(Vec::new()));
    let watched2 = watched.clone();
    setup.set_event_handler(Arc::new(move |ev| {
        if let ServerEvent::Invalidate { tid, .. } = ev {
            watched2.lock().unwrap_or_else(|e| e.into_inner()).push(tid);
        }
    }));
    let (clients, per_client) = (6u64, 30u64);
    let mut acknowledged: Vec<Tid> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let server = &server;
                s.spawn(move || {
                    let c = client(server);
                    let mut tids = Vec::new();
                    let l = c.load_before(oid, Tid::MAX).expect("load").expect("exists");
                    let (mut serial, mut value) = (l.start, parse(&l.data));
                    for _ in 0..per_client {
                        loop {
                            let ops = vec![Op::Store {
                                oid,
                                serial,
                                data: Arc::from((value + 1).to_string().into_bytes()),
                            }];
                            match c.tpc_vote(&txn(ops)).expect("vote") {
                                Vote::Prepared { .. } => {
                                    let tid = c.tpc_finish().expect("finish");
                                    tids.push(tid);
                                    (serial, value) = (tid, value + 1);
                                    break;
                                }
                                Vote::Conflicts(cs) => {
                                    serial = cs[0].committed;
                                    value = parse(&c.load_serial(oid, serial).expect("loadSerial"));
                                }
                            }
                        }
                    }
                    c.close();
                    tids
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("client thread"))
            .collect()
    });
    let total = clients * per_client;
    let l = setup
        .load_before(oid, Tid::MAX)
        .expect("load")
        .expect("exists");
    assert_eq!(parse(&l.data), total, "{kind:?}: every increment counted");
    acknowledged.sort();
    assert_eq!(l.start, *acknowledged.last().expect("tids"));
    assert_eq!(setup.last_transaction().expect("last"), l.start);
    let history: Vec<Tid> = setup
        .iterator(None, None)
        .expect("iterator")
        .map(|r| r.expect("txn").tid)
        .collect();
    assert_eq!(history[0], first);
    assert_eq!(&history[1..], &acknowledged[..], "{kind:?}");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        *watched.lock().unwrap_or_else(|e| e.into_inner()),
        acknowledged,
        "{kind:?}: the watcher saw every transaction once, in tid order"
    );
    setup.close();
}

fn parse(data: &[u8]) -> u64 {
    std::str::from_utf8(data)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a counter: {data:?}"))
}
