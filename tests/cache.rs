//! The array's shared object cache end to end (issue #24): MVCC readers
//! through it while writers commit (in process and through the server),
//! undo and pack through a warm cache, a backend written to directly,
//! and what `ctl details` counts. Each test compares the array's answers
//! with what a backend itself answers at the same snapshot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeoraid::raid::{BackendSource, BackendSpec, RaidOptions, RaidStorage};
use zeoraid::storage::file::{FileOptions, FileStorage};
use zeoraid::storage::memory::MemoryStorage;
use zeoraid::storage::{Data, Error, Loaded, Oid, Op, Storage, Tid, Txn, TxnMeta, Vote};
use zeoraid::zeo::client::{Client, ClientOptions};

mod common;

fn commit(s: &dyn Storage, ops: Vec<Op>) -> Result<Tid, Error> {
    let t = Txn {
        meta: TxnMeta::default(),
        tid: None,
        status: b' ',
        ops,
    };
    match s.tpc_vote(&t)? {
        Vote::Prepared { .. } => s.tpc_finish(),
        Vote::Conflicts(c) => {
            s.tpc_abort();
            Err(Error::Value(format!("conflicts {c:?}")))
        }
    }
}

fn store(oid: Oid, serial: Tid, data: &[u8]) -> Op {
    Op::Store {
        oid,
        serial,
        data: Data::from(data),
    }
}

/// An array over two in-process file mirrors in `dir`, with `cache_size`;
/// also the mirrors, to ask them directly.
fn file_array(dir: &std::path::Path, cache_size: u64) -> (Arc<RaidStorage>, Vec<Arc<FileStorage>>) {
    let opts = FileOptions {
        sync: false,
        ..FileOptions::default()
    };
    let mirrors: Vec<Arc<FileStorage>> = ["a", "b"]
        .iter()
        .map(|n| {
            Arc::new(FileStorage::open(&dir.join(format!("{n}.fs")), opts).expect("file storage"))
        })
        .collect();
    let specs = mirrors
        .iter()
        .zip(["a", "b"])
        .map(|(m, n)| BackendSpec {
            name: n.into(),
            kind: "file",
            source: BackendSource::Local(m.clone() as Arc<dyn Storage>),
            reopen: None,
        })
        .collect();
    let array = RaidStorage::open(
        RaidOptions {
            cache_size,
            auto_recover: false,
            ..RaidOptions::new("1")
        },
        specs,
    )
    .expect("array");
    (Arc::new(array), mirrors)
}

/// An answer as comparable text: data, start, end, or the error.
fn answer(r: Result<Option<Loaded>, Error>) -> String {
    match r {
        Ok(Some(l)) => format!(
            "{:?} {} {:?}",
            String::from_utf8_lossy(&l.data),
            l.start,
            l.end
        ),
        Ok(None) => "did not exist".into(),
        Err(e) => format!("error: {e}"),
    }
}

fn cache(array: &RaidStorage) -> zeoraid::status::CacheStatus {
    array.status().cache.expect("the cache is on")
}

/// Writers commit groups of objects, all set to the same counter in one
/// transaction; readers take a snapshot and read a whole group through
/// `reader`. Every group they read is whole (not torn), never older than
/// the one read before (not backwards), and exactly what a mirror answers
/// at that snapshot (not stale).
fn mvcc_round(array: Arc<RaidStorage>, mirror: Arc<FileStorage>, reader: Arc<dyn Storage>) {
    const GROUPS: usize = 2;
    const SIZE: usize = 6;
    let oids: Vec<Vec<Oid>> = (0..GROUPS)
        .map(|_| array.new_oids(SIZE).expect("oids"))
        .collect();
    for group in &oids {
        commit(
            &*array,
            group.iter().map(|&o| store(o, Tid::ZERO, b"0")).collect(),
        )
        .expect("create");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let commit_lock = Arc::new(std::sync::Mutex::new(()));
    let deadline = Instant::now() + Duration::from_secs(3);
    std::thread::scope(|s| {
        for group in &oids {
            let (array, stop, lock) = (array.clone(), stop.clone(), commit_lock.clone());
            s.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    // The server's commit lock: one transaction at a time.
                    let _held = lock.lock().unwrap();
                    let ops = group
                        .iter()
                        .map(|&o| {
                            let serial = array.load_before(o, Tid::MAX).unwrap().unwrap().start;
                            store(o, serial, n.to_string().as_bytes())
                        })
                        .collect();
                    commit(&*array, ops).expect("writer commits");
                }
            });
        }
        for r in 0..3 {
            let (reader, mirror, oids) = (reader.clone(), mirror.clone(), &oids);
            s.spawn(move || {
                let mut last = [0u64; GROUPS];
                let mut reads = 0;
                while Instant::now() < deadline {
                    let snap = reader.last_transaction().expect("last tid");
                    let before = Tid(snap.0 + 1);
                    for (g, group) in oids.iter().enumerate() {
                        let got: Vec<Loaded> = group
                            .iter()
                            .map(|&o| {
                                reader
                                    .load_before(o, before)
                                    .expect("load")
                                    .expect("exists")
                            })
                            .collect();
                        let values: Vec<u64> = got
                            .iter()
                            .map(|l| String::from_utf8_lossy(&l.data).parse().expect("a counter"))
                            .collect();
                        assert!(
                            values.iter().all(|v| *v == values[0]),
                            "reader {r}: torn group {g} at {snap}: {values:?}"
                        );
                        assert!(
                            values[0] >= last[g],
                            "reader {r}: group {g} went back: {} after {}",
                            values[0],
                            last[g]
                        );
                        last[g] = values[0];
                        for (&o, l) in group.iter().zip(&got) {
                            let truth = mirror
                                .load_before(o, before)
                                .expect("mirror")
                                .expect("exists");
                            assert_eq!(
                                (&l.data, l.start),
                                (&truth.data, truth.start),
                                "reader {r}: {o} before {before}"
                            );
                            // The mirror is asked later: it may know the
                            // revision's end (after the snapshot) already.
                            match (l.end, truth.end) {
                                (None, None) => {}
                                (None, Some(e)) => assert!(
                                    e > snap,
                                    "reader {r}: {o}: current at {snap}, but replaced at {e}"
                                ),
                                (a, b) => assert_eq!(a, b, "reader {r}: {o}: end before {before}"),
                            }
                        }
                        reads += group.len();
                    }
                }
                assert!(reads > 0);
            });
        }
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
    });
}

#[test]
fn mvcc_readers_see_whole_current_snapshots_while_writers_commit() {
    for cache_size in [2 * 1024, 64 << 20] {
        let dir = tempfile::tempdir().unwrap();
        let (array, mirrors) = file_array(dir.path(), cache_size);
        mvcc_round(array.clone(), mirrors[0].clone(), array.clone());
        let c = cache(&array);
        assert!(c.hits > 0, "cache-size {cache_size}: {c:?}");
        assert!(c.size <= cache_size, "cache-size {cache_size}: {c:?}");
        if cache_size < 4096 {
            assert!(c.evictions > 0, "a tiny cache evicts: {c:?}");
        }
        array.close();
    }
}

#[test]
fn mvcc_readers_through_the_server_see_whole_current_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let (array, mirrors) = file_array(dir.path(), 64 << 20);
    let server = common::serve_with(array.clone(), 4);
    let client = Client::connect(ClientOptions {
        call_timeout: Duration::from_secs(20),
        ..ClientOptions::new(server.local_addr().to_string())
    })
    .expect("connect");
    mvcc_round(array.clone(), mirrors[0].clone(), Arc::new(client));
    assert!(cache(&array).hits > 0);
    drop(server);
}

#[test]
fn commits_fill_the_cache_and_reads_of_them_never_reach_a_backend() {
    let dir = tempfile::tempdir().unwrap();
    let (array, _mirrors) = file_array(dir.path(), 64 << 20);
    let oid = array.new_oids(1).unwrap()[0];
    let t1 = commit(&*array, vec![store(oid, Tid::ZERO, b"hello")]).unwrap();
    let reads = |a: &RaidStorage| a.status().backends.iter().map(|b| b.reads).sum::<u64>();
    let before = reads(&array);
    for _ in 0..10 {
        let l = array.load_before(oid, Tid::MAX).unwrap().unwrap();
        assert_eq!((&l.data[..], l.start, l.end), (&b"hello"[..], t1, None));
        assert_eq!(&array.load_serial(oid, t1).unwrap()[..], b"hello");
    }
    assert_eq!(reads(&array), before, "no backend was asked");
    let c = cache(&array);
    assert_eq!((c.hits, c.misses, c.objects), (20, 0, 1), "{c:?}");
    assert_eq!(c.bytes_saved, 100);
    // Off: every read reaches a backend, and status shows no cache.
    let dir = tempfile::tempdir().unwrap();
    let (off, _m) = file_array(dir.path(), 0);
    let oid = off.new_oids(1).unwrap()[0];
    commit(&*off, vec![store(oid, Tid::ZERO, b"x")]).unwrap();
    let before = reads(&off);
    off.load_before(oid, Tid::MAX).unwrap();
    assert_eq!(reads(&off), before + 1);
    assert_eq!(off.status().cache, None);
}

#[test]
fn undo_and_pack_through_a_warm_cache_answer_as_the_backends_do() {
    let dir = tempfile::tempdir().unwrap();
    let (array, mirrors) = file_array(dir.path(), 64 << 20);
    let root = Oid(0);
    let oid = array.new_oids(1).unwrap()[0];
    let t0 = commit(&*array, vec![store(root, Tid::ZERO, b"root")]).unwrap();
    let t1 = commit(&*array, vec![store(oid, Tid::ZERO, b"v1")]).unwrap();
    let t2 = commit(&*array, vec![store(oid, t1, b"v2")]).unwrap();
    let t3 = commit(&*array, vec![store(oid, t2, b"v3")]).unwrap();
    let befores = |last: Tid| {
        vec![
            t1,
            Tid(t1.0 + 1),
            t2,
            Tid(t2.0 + 1),
            t3,
            Tid(t3.0 + 1),
            last,
            Tid::MAX,
        ]
    };
    let warm = |last: Tid| {
        for b in befores(last) {
            let _ = array.load_before(oid, b);
        }
    };
    let same = |what: &str, last: Tid| {
        for b in befores(last) {
            assert_eq!(
                answer(array.load_before(oid, b)),
                answer(mirrors[0].load_before(oid, b)),
                "{what}: loadBefore({oid}, {b})"
            );
        }
    };
    warm(t3);
    same("warm", t3);
    assert!(cache(&array).hits > 0);
    // Undo the last change: the object's current state is v2's again.
    let t4 = commit(&*array, vec![Op::Undo { txn: t3 }]).unwrap();
    assert_eq!(
        &array.load_before(oid, Tid::MAX).unwrap().unwrap().data[..],
        b"v2"
    );
    same("after undo", t4);
    warm(t4);
    same("after undo, warm", t4);
    // Pack: the revisions before it go.
    let hits = cache(&array).hits;
    std::thread::sleep(Duration::from_millis(20));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    array.pack(now, false).expect("pack");
    assert_eq!(cache(&array).objects, 0, "a pack empties the cache");
    same("after pack", t4);
    assert_eq!(
        cache(&array).hits,
        hits,
        "nothing packed away was served from memory"
    );
    assert!(array.load_before(root, Tid::MAX).is_ok());
    let _ = t0;
}

#[test]
fn a_backend_written_to_directly_empties_the_cache() {
    let backends: Vec<_> = (0..2)
        .map(|_| common::serve_with(Arc::new(MemoryStorage::new("1", false)), 4))
        .collect();
    let specs = backends
        .iter()
        .zip(["a", "b"])
        .map(|(s, n)| BackendSpec {
            name: n.into(),
            kind: "zeo",
            source: BackendSource::Zeo(ClientOptions {
                connect_timeout: Duration::from_secs(2),
                ..ClientOptions::new(s.local_addr().to_string())
            }),
            reopen: None,
        })
        .collect();
    let array = RaidStorage::open(
        RaidOptions {
            backend_timeout: Duration::from_secs(5),
            auto_recover: false,
            ..RaidOptions::new("1")
        },
        specs,
    )
    .expect("array");
    let oid = array.new_oids(1).unwrap()[0];
    let t1 = commit(&array, vec![store(oid, Tid::ZERO, b"through the array")]).unwrap();
    array.load_before(oid, Tid::MAX).unwrap();
    assert_eq!(cache(&array).objects, 1);
    // Someone writes the same object straight to backend b.
    let direct = Client::connect(ClientOptions::new(backends[1].local_addr().to_string())).unwrap();
    commit(&direct, vec![store(oid, t1, b"behind the array's back")]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while array.status().backends[1].state.label() != "degraded" {
        assert!(Instant::now() < deadline, "b is degraded");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(cache(&array).objects, 0, "the cache forgot what it held");
    // The array serves what its own commits left, from a mirror it trusts.
    let l = array.load_before(oid, Tid::MAX).unwrap().unwrap();
    assert_eq!((&l.data[..], l.start), (&b"through the array"[..], t1));
    array.close();
}
