//! The storage contract, tested once for every storage that keeps its
//! own data: each test here is a generic function over a [`Kind`] (how to
//! open a fresh storage of one kind, and that kind's own consistency check),
//! and [`conformance_suite!`] instantiates all of them as `#[test]`s for one
//! kind. The memory storage's tests (`storage::memory::tests`) and the file
//! storage's (`storage::file::tests`) each invoke it once.
//!
//! What it covers, by ZODB's conformance mixins: basics (an empty storage,
//! oid allocation, read-only, tids, the transaction extension), loads
//! (`loadBefore`, `loadSerial`, history), stores and conflicts, deletes,
//! `checkCurrentSerialInTransaction`,
//! two-phase commit (prepared invisible, abort, empty transactions, status),
//! transactional undo (also merged through a conflict resolver) and the
//! undo log, iteration and `record_iternext`, restore, pack (with and
//! without garbage collection, with a prepared transaction), size counts,
//! loads running during commits and packs, and commits during a pack.
//! Tests of one storage's own decisions, format or limits stay with it.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::locks::lock;
use crate::storage::rules::{
    MAX_NEW_OIDS, UNDO_ADD_CONFLICT, UNDO_INVALID_TXN, UNDO_MODIFIED_LATER, UNDO_NOT_UNDOABLE,
};
use crate::storage::testutil::{
    at, commit, commit_txn, d, meta, o, records, restore_txn, revisions, store, t, txn, undo,
    undo_tids,
};
use crate::storage::{
    timestamp, Conflict, Data, DataRecord, Error, Loaded, Oid, Op, Result, SizeInfo, Storage, Tid,
    TxnRecord, Vote,
};

/// One kind of storage under test.
pub(crate) trait Kind: 'static {
    type S: Storage + 'static;
    /// `size_info().bytes` counts the data of the revisions kept (the
    /// memory storage); otherwise it is the storage's own measure (the
    /// file storage: the file's size) and the suite checks only objects.
    const SIZE_IS_DATA: bool;
    /// A new, empty storage at `path` (a fresh path under a scratch
    /// directory; a storage without files ignores it). A read-only one
    /// refuses every write and stays empty.
    fn open(path: &Path, read_only: bool) -> Self::S;
    /// The name a storage opened at `path` reports.
    fn name(path: &Path) -> String;
    /// The kind's own checks of its internal state (derived counts,
    /// indexes), run where the suite says the storage must be consistent.
    fn check(_s: &Self::S) {}
}

/// A scratch directory handing out fresh paths, removed after the test.
pub(crate) struct Scratch {
    dir: tempfile::TempDir,
    next: Cell<u32>,
}

impl Scratch {
    /// A path nothing uses yet.
    pub(crate) fn path(&self) -> PathBuf {
        let n = self.next.get() + 1;
        self.next.set(n);
        self.dir.path().join(format!("{n}.fs"))
    }
}

/// Run one test of the suite for the kind `K`.
pub(crate) fn run<K: Kind>(test: fn(&Scratch)) {
    let x = Scratch {
        dir: tempfile::tempdir().expect("tempdir"),
        next: Cell::new(0),
    };
    test(&x);
}

/// A new, empty, writable storage of the kind `K`.
fn new<K: Kind>(x: &Scratch) -> K::S {
    K::open(&x.path(), false)
}

/// The backpointer (`data_txn`) of `oid`'s record in the transaction
/// `tid`, as the iterator reports it.
fn data_txn(s: &dyn Storage, oid: u64, tid: Tid) -> Option<Tid> {
    records(s)
        .iter()
        .find(|r| r.tid == tid)
        .and_then(|r| r.records.iter().find(|x| x.oid == o(oid)))
        .and_then(|r| r.data_txn)
}

/// `#[test]`s of the whole suite for the [`Kind`] `$kind` (a type in the
/// invoking module), in a module `conformance` there.
macro_rules! conformance_suite {
    ($kind:ident) => {
        $crate::storage::conformance::conformance_suite!(@tests $kind; empty_storage,
            new_oids_are_monotonic_and_follow_stores,
            read_only_refuses_writes,
            tids_increase_and_last_transaction_follows,
            extension_round_trips,
            load_before_table,
            load_before_consecutive_tids,
            load_before_without_data_is_poskey,
            load_serial_table,
            history_shapes,
            conflicts_are_collected_and_stage_nothing,
            resolved_restore_replaces_the_conflict,
            double_store_keeps_the_later_data,
            delete_semantics,
            check_current_table,
            prepared_is_invisible_until_finish,
            abort_leaves_nothing,
            empty_transactions_are_committed,
            invalid_status_is_refused,
            simple_transactional_undo,
            undo_creation_branches,
            two_object_undo_at_once,
            two_object_undo_again,
            undo_refused_when_modified_later,
            undo_unknown_transaction,
            undo_then_store_in_one_transaction,
            undo_iterator_reports_data_txn,
            undo_log_windows,
            iterator_ranges,
            iterator_is_a_snapshot,
            undo_zombie_iterates_with_no_data,
            record_iternext_order,
            restore_records,
            restore_checks,
            pack_keeps_exactly_the_right_revisions,
            pack_removes_deleted_objects,
            pack_resolves_backpointers,
            pack_and_undo_log,
            pack_edge_cases,
            repeated_packs_after_undo,
            gc_removes_unreachable_objects_and_cycles,
            gc_follows_the_state_at_the_pack_time,
            gc_keeps_what_a_later_undo_brings_back,
            gc_refuses_what_it_cannot_read,
            gc_without_a_root,
            undo_merges_through_the_resolver,
            pack_with_a_prepared_transaction,
            a_voted_transaction_survives_a_pack,
            size_info_counts,
            loads_proceed_during_a_prepared_commit_and_packs,
            readers_run_alongside_commits,
            commits_continue_during_pack,
        );
    };
    (@tests $kind:ident; $($name:ident),* $(,)?) => {
        /// The storage contract ([`crate::storage::conformance`]).
        mod conformance {
            $(
                #[test]
                fn $name() {
                    $crate::storage::conformance::run::<super::$kind>(
                        $crate::storage::conformance::$name::<super::$kind>,
                    );
                }
            )*
        }
    };
}
pub(crate) use conformance_suite;

// -- helpers (the shared ones are in `storage::testutil`) -----------------

fn commit_desc(s: &dyn Storage, tid: Option<Tid>, desc: &str, ops: Vec<Op>) -> Tid {
    let mut tx = txn(tid, ops);
    tx.meta = meta(desc);
    commit_txn(s, tx).0
}

fn vote_err(s: &dyn Storage, ops: Vec<Op>) -> Error {
    let r = s.tpc_vote(&txn(None, ops));
    s.tpc_abort();
    match r {
        Err(e) => e,
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

fn current(s: &dyn Storage, oid: u64) -> Result<(String, Tid)> {
    match s.load_before(o(oid), Tid::MAX)? {
        Some(l) => {
            assert_eq!(l.end, None);
            Ok((String::from_utf8_lossy(&l.data).into_owned(), l.start))
        }
        None => Err(Error::PosKey(o(oid))),
    }
}

fn value(s: &dyn Storage, oid: u64) -> String {
    match current(s, oid) {
        Ok((v, _)) => v,
        Err(e) => format!("{e:?}"),
    }
}

fn undo_err(message: &str, oid: Option<u64>) -> Error {
    Error::Undo {
        message: message.to_string(),
        oid: oid.map(Oid),
    }
}

// -- basics --------------------------------------------------------------

pub(crate) fn empty_storage<K: Kind>(x: &Scratch) {
    let path = x.path();
    let s = K::open(&path, false);
    assert_eq!(s.name(), K::name(&path));
    assert!(!s.is_read_only());
    assert!(s.supports_undo());
    assert_eq!(s.last_transaction(), Ok(Tid::ZERO));
    assert_eq!(s.size_info().objects, 0);
    if K::SIZE_IS_DATA {
        assert_eq!(s.size_info(), SizeInfo::default());
    }
    assert_eq!(s.load_before(o(0), Tid::MAX), Err(Error::PosKey(o(0))));
    assert_eq!(s.load_serial(o(0), t(1)), Err(Error::PosKey(o(0))));
    assert_eq!(s.history(o(0), 1), Err(Error::PosKey(o(0))));
    assert_eq!(s.record_iternext(None), Ok(None));
    assert_eq!(s.undo_log(0, 20), Ok(vec![]));
    assert!(records(&s).is_empty());
    assert_eq!(s.pack(at(100, 0.0), true), Ok(()));
    s.tpc_abort(); // no-op
    assert!(matches!(s.tpc_finish(), Err(Error::Transaction(_))));
}

pub(crate) fn new_oids_are_monotonic_and_follow_stores<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    assert_eq!(s.new_oids(1), Ok(vec![o(1)]));
    assert_eq!(s.new_oids(3), Ok(vec![o(2), o(3), o(4)]));
    assert_eq!(s.new_oids(0), Ok(vec![]));
    // Storing a larger oid reserves it (FileStorage's set_max_oid).
    commit(&s, None, vec![store(0xf0, Tid::ZERO, "x")]);
    assert_eq!(s.new_oids(2), Ok(vec![o(0xf1), o(0xf2)]));
    // A smaller stored oid does not move the counter back.
    commit(&s, None, vec![store(7, Tid::ZERO, "x")]);
    assert_eq!(s.new_oids(1), Ok(vec![o(0xf3)]));
    assert!(matches!(s.new_oids(MAX_NEW_OIDS + 1), Err(Error::Value(_))));
}

pub(crate) fn read_only_refuses_writes<K: Kind>(x: &Scratch) {
    let s = K::open(&x.path(), true);
    assert!(s.is_read_only());
    assert_eq!(s.new_oids(1), Err(Error::ReadOnly));
    assert_eq!(s.tpc_vote(&txn(None, vec![])), Err(Error::ReadOnly));
    assert_eq!(
        s.tpc_vote(&txn(None, vec![store(1, Tid::ZERO, "a")])),
        Err(Error::ReadOnly)
    );
    assert_eq!(s.pack(at(0, 0.0), false), Err(Error::ReadOnly));
    // Reads still work.
    assert_eq!(s.last_transaction(), Ok(Tid::ZERO));
    assert_eq!(s.load_before(o(1), Tid::MAX), Err(Error::PosKey(o(1))));
    assert_eq!(s.undo_log(0, 20), Ok(vec![]));
}

pub(crate) fn tids_increase_and_last_transaction_follows<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    let a = commit(&s, None, vec![store(1, Tid::ZERO, "a")]);
    let b = commit(&s, None, vec![store(1, a, "b")]);
    let c = commit(&s, None, vec![]);
    assert!(Tid::ZERO < a && a < b && b < c);
    assert_eq!(s.last_transaction(), Ok(c));
    // An explicit tid must be later than the last one.
    let e = s.tpc_vote(&txn(Some(b), vec![store(2, Tid::ZERO, "x")]));
    assert!(matches!(e, Err(Error::Transaction(_))), "{e:?}");
    assert_eq!(s.tpc_finish().ok(), None);
}

/// The transaction extension comes back as it was given, from the
/// iterator and the undo log.
pub(crate) fn extension_round_trips<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    let mut ext = Vec::new();
    rmpv::encode::write_value(
        &mut ext,
        &rmpv::Value::Map(vec![(rmpv::Value::from("k"), rmpv::Value::from("v"))]),
    )
    .expect("encode");
    let mut tx = txn(None, vec![store(1, Tid::ZERO, "a")]);
    tx.meta.extension = ext.clone();
    commit_txn(&s, tx);
    assert_eq!(records(&s)[0].meta.extension, ext);
    assert_eq!(s.undo_log(0, 1).expect("log")[0].meta.extension, ext);
}

// -- loads ---------------------------------------------------------------

pub(crate) fn load_before_table<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    commit(&s, Some(t(1)), vec![store(1, Tid::ZERO, "a")]);
    commit(&s, Some(t(2)), vec![store(1, t(1), "b")]);
    commit(&s, Some(t(3)), vec![store(2, Tid::ZERO, "other")]);
    commit(&s, Some(t(4)), vec![store(1, t(2), "c")]);
    type Want = std::result::Result<Option<(&'static str, Tid, Option<Tid>)>, ()>;
    let cases: Vec<(u64, Tid, Want)> = vec![
        (1, Tid::ZERO, Ok(None)),
        (1, t(1), Ok(None)),
        (1, Tid(t(1).0 + 1), Ok(Some(("a", t(1), Some(t(2)))))),
        (1, t(2), Ok(Some(("a", t(1), Some(t(2)))))),
        (1, t(3), Ok(Some(("b", t(2), Some(t(4)))))),
        (1, t(4), Ok(Some(("b", t(2), Some(t(4)))))),
        (1, Tid(t(4).0 + 1), Ok(Some(("c", t(4), None)))),
        (1, Tid::MAX, Ok(Some(("c", t(4), None)))),
        (2, t(3), Ok(None)),
        (2, Tid::MAX, Ok(Some(("other", t(3), None)))),
        (3, Tid::MAX, Err(())),
        (3, Tid::ZERO, Err(())),
    ];
    for (oid, before, want) in cases {
        let got = s.load_before(o(oid), before);
        let want = want
            .map(|w| {
                w.map(|(v, start, end)| Loaded {
                    data: d(v),
                    start,
                    end,
                })
            })
            .map_err(|()| Error::PosKey(o(oid)));
        assert_eq!(got, want, "oid {oid} before {before}");
    }
}

pub(crate) fn load_before_consecutive_tids<K: Kind>(x: &Scratch) {
    // ZODB's testLoadBeforeConsecutiveTids.
    let s = new::<K>(x);
    commit(&s, Some(Tid(1)), vec![store(1, Tid::ZERO, "1")]);
    commit(&s, Some(Tid(2)), vec![store(1, Tid(1), "2")]);
    commit(&s, Some(Tid(3)), vec![store(1, Tid(2), "3")]);
    assert_eq!(
        s.load_before(o(1), Tid(2)),
        Ok(Some(Loaded {
            data: d("1"),
            start: Tid(1),
            end: Some(Tid(2)),
        }))
    );
}

pub(crate) fn load_before_without_data_is_poskey<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    commit(&s, Some(t(1)), vec![store(1, Tid::ZERO, "a")]);
    commit(
        &s,
        Some(t(2)),
        vec![Op::Delete {
            oid: o(1),
            serial: t(1),
        }],
    );
    commit(&s, Some(t(3)), vec![store(1, t(2), "again")]);
    let cases: &[(Tid, std::result::Result<Option<&str>, ()>)] = &[
        (t(1), Ok(None)),
        (t(2), Ok(Some("a"))),
        (t(3), Err(())), // the deleted revision
        (Tid::MAX, Ok(Some("again"))),
    ];
    for (before, want) in cases {
        let got = s.load_before(o(1), *before).map(|l| l.map(|l| l.data));
        let want = want.map(|w| w.map(d)).map_err(|()| Error::PosKey(o(1)));
        assert_eq!(got, want, "before {before}");
    }
}

pub(crate) fn load_serial_table<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    let mut serial = Tid::ZERO;
    let mut revs = Vec::new();
    for i in 31..38 {
        serial = commit(&s, None, vec![store(1, serial, &i.to_string())]);
        revs.push((serial, i.to_string()));
    }
    for (tid, v) in &revs {
        assert_eq!(s.load_serial(o(1), *tid), Ok(d(v)));
    }
    let cases = [(1, Tid(5)), (1, Tid::MAX), (2, revs[0].0)];
    for (oid, tid) in cases {
        assert_eq!(s.load_serial(o(oid), tid), Err(Error::PosKey(o(oid))));
    }
}

pub(crate) fn history_shapes<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    let a = commit_desc(&s, None, "one", vec![store(1, Tid::ZERO, "a")]);
    let b = commit_desc(&s, None, "two", vec![store(1, a, "bb")]);
    let c = commit_desc(&s, None, "three", vec![store(1, b, "ccc")]);
    let full = [(c, "three", 3), (b, "two", 2), (a, "one", 1)];
    for size in 0..5 {
        let h = s.history(o(1), size).expect("history");
        let got: Vec<(Tid, String, u64)> = h
            .iter()
            .map(|e| {
                (
                    e.tid,
                    String::from_utf8_lossy(&e.meta.description).into_owned(),
                    e.size,
                )
            })
            .collect();
        let want: Vec<(Tid, String, u64)> = full
            .iter()
            .take(size)
            .map(|(t, m, n)| (*t, m.to_string(), *n))
            .collect();
        assert_eq!(got, want, "size {size}");
    }
    assert_eq!(s.history(o(2), 1), Err(Error::PosKey(o(2))));
    // A deleted revision shows with size 0.
    commit(
        &s,
        None,
        vec![Op::Delete {
            oid: o(1),
            serial: c,
        }],
    );
    let h = s.history(o(1), 1).expect("history");
    assert_eq!(h[0].size, 0);
}

// -- conflicts -----------------------------------------------------------

pub(crate) fn conflicts_are_collected_and_stage_nothing<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    let a = commit(
        &s,
        None,
        vec![store(1, Tid::ZERO, "a"), store(2, Tid::ZERO, "b")],
    );
    let b = commit(&s, None, vec![store(1, a, "a2"), store(2, a, "b2")]);
    let vote = s.tpc_vote(&txn(
        None,
        vec![
            store(1, a, "a3"),
            store(3, Tid::ZERO, "new"),
            store(2, a, "b3"),
        ],
    ));
    assert_eq!(
        vote,
        Ok(Vote::Conflicts(vec![
            Conflict {
                oid: o(1),
                committed: b,
                read: a,
                data: d("a3"),
            },
            Conflict {
                oid: o(2),
                committed: b,
                read: a,
                data: d("b3"),
            },
        ]))
    );
    // Nothing was prepared: another vote is allowed, finish is not.
    assert!(matches!(s.tpc_finish(), Err(Error::Transaction(_))));
    assert_eq!(s.last_transaction(), Ok(b));
    assert_eq!(s.load_before(o(3), Tid::MAX), Err(Error::PosKey(o(3))));
    assert_eq!(value(&s, 1), "a2");
}

pub(crate) fn resolved_restore_replaces_the_conflict<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    let a = commit(&s, None, vec![store(1, Tid::ZERO, "a")]);
    let b = commit(&s, None, vec![store(1, a, "b")]);
    // ZEO replays the whole buffer: the stale store, then the resolved
    // re-store with serial = committed.
    let (tid, resolved, invalidated) = commit_txn(
        &s,
        txn(
            None,
            vec![
                store(1, a, "stale"),
                store(2, Tid::ZERO, "x"),
                store(1, b, "resolved"),
            ],
        ),
    );
    assert!(resolved.is_empty());
    // Ordered by first successful write: the stale store staged nothing.
    assert_eq!(invalidated, vec![o(2), o(1)]);
    assert_eq!(current(&s, 1), Ok(("resolved".to_string(), tid)));
    // One record per object, in first-written order.
    let last = records(&s).pop().expect("a transaction");
    let oids: Vec<Oid> = last.records.iter().map(|r| r.oid).collect();
    assert_eq!(oids, vec![o(2), o(1)]);
    // A store that conflicts after a good one still conflicts.
    let v = s.tpc_vote(&txn(None, vec![store(1, tid, "ok"), store(1, a, "stale")]));
    assert!(matches!(v, Ok(Vote::Conflicts(ref c)) if c.len() == 1 && c[0].read == a));
}

pub(crate) fn double_store_keeps_the_later_data<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    let (tid, _, inv) = commit_txn(
        &s,
        txn(
            None,
            vec![store(1, Tid::ZERO, "first"), store(1, Tid::ZERO, "second")],
        ),
    );
    assert_eq!(inv, vec![o(1)]);
    assert_eq!(current(&s, 1), Ok(("second".to_string(), tid)));
    assert_eq!(records(&s)[0].records.len(), 1);
}

pub(crate) fn delete_semantics<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    let a = commit(&s, None, vec![store(1, Tid::ZERO, "a")]);
    let b = commit(&s, None, vec![store(1, a, "b")]);
    assert_eq!(
        vote_err(
            &s,
            vec![Op::Delete {
                oid: o(1),
                serial: a,
            }]
        ),
        Error::Conflict {
            oid: o(1),
            committed: b,
            read: a,
            message: "database conflict error".to_string(),
            read_conflict: false,
            class_name: None,
        }
    );
    assert_eq!(
        vote_err(
            &s,
            vec![Op::Delete {
                oid: o(9),
                serial: a,
            }]
        ),
        Error::PosKey(o(9))
    );
    let (c, resolved, inv) = commit_txn(
        &s,
        txn(
            None,
            vec![Op::Delete {
                oid: o(1),
                serial: b,
            }],
        ),
    );
    assert!(resolved.is_empty());
    assert_eq!(inv, vec![o(1)]);
    assert_eq!(current(&s, 1), Err(Error::PosKey(o(1))));
    assert_eq!(s.load_serial(o(1), c), Err(Error::PosKey(o(1))));
    assert_eq!(s.load_serial(o(1), b), Ok(d("b")));
    assert_eq!(s.size_info().objects, 0);
    assert_eq!(s.record_iternext(None), Ok(None));
    let last = records(&s).pop().expect("txn");
    assert_eq!(last.records[0].data, None);
}

pub(crate) fn check_current_table<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    let a = commit(&s, None, vec![store(1, Tid::ZERO, "a")]);
    let b = commit(&s, None, vec![store(1, a, "b")]);
    let gone = commit(&s, None, vec![store(2, Tid::ZERO, "x")]);
    commit(
        &s,
        None,
        vec![Op::Delete {
            oid: o(2),
            serial: gone,
        }],
    );
    let read_conflict = Error::Conflict {
        oid: o(1),
        committed: b,
        read: a,
        message: "database read conflict error".to_string(),
        read_conflict: true,
        class_name: None,
    };
    let cases: Vec<(u64, Tid, Option<Error>)> = vec![
        (1, b, None),
        (1, a, Some(read_conflict)),
        (2, gone, Some(Error::PosKey(o(2)))),
        (3, Tid::ZERO, Some(Error::PosKey(o(3)))),
    ];
    for (oid, serial, want) in cases {
        let ops = vec![
            store(10, Tid::ZERO, "other"),
            Op::CheckCurrent {
                oid: o(oid),
                serial,
            },
        ];
        let got = s.tpc_vote(&txn(None, ops));
        s.tpc_abort();
        match want {
            None => match got {
                Ok(Vote::Prepared { invalidated, .. }) => {
                    assert_eq!(invalidated, vec![o(10)], "checked oids are not invalidated")
                }
                other => panic!("oid {oid}: {other:?}"),
            },
            Some(e) => assert_eq!(got, Err(e), "oid {oid}"),
        }
    }
    // A read conflict is not resolvable: it wins over collected conflicts.
    let e = vote_err(
        &s,
        vec![
            store(1, a, "stale"),
            Op::CheckCurrent {
                oid: o(1),
                serial: a,
            },
        ],
    );
    assert!(
        matches!(
            e,
            Error::Conflict {
                read_conflict: true,
                ..
            }
        ),
        "{e:?}"
    );
}

// -- two-phase commit ----------------------------------------------------

pub(crate) fn prepared_is_invisible_until_finish<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    let a = commit(&s, None, vec![store(1, Tid::ZERO, "a")]);
    let v = s.tpc_vote(&txn(None, vec![store(1, a, "b"), store(2, Tid::ZERO, "n")]));
    let Ok(Vote::Prepared { tid, .. }) = v else {
        panic!("{v:?}");
    };
    assert_eq!(s.last_transaction(), Ok(a));
    assert_eq!(current(&s, 1), Ok(("a".to_string(), a)));
    assert_eq!(s.load_before(o(2), Tid::MAX), Err(Error::PosKey(o(2))));
    assert_eq!(records(&s).len(), 1);
    assert_eq!(undo_tids(&s), vec![a]);
    assert_eq!(s.size_info().objects, 1);
    // A second vote while one is prepared is refused.
    assert!(matches!(
        s.tpc_vote(&txn(None, vec![])),
        Err(Error::Transaction(_))
    ));
    assert_eq!(s.tpc_finish(), Ok(tid));
    assert_eq!(current(&s, 1), Ok(("b".to_string(), tid)));
    assert_eq!(current(&s, 2), Ok(("n".to_string(), tid)));
    assert_eq!(s.last_transaction(), Ok(tid));
    assert!(matches!(s.tpc_finish(), Err(Error::Transaction(_))));
    K::check(&s);
}

pub(crate) fn abort_leaves_nothing<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    let a = commit(&s, None, vec![store(1, Tid::ZERO, "a")]);
    let before = s.size_info();
    let v = s.tpc_vote(&txn(None, vec![store(1, a, "b"), store(2, Tid::ZERO, "n")]));
    assert!(matches!(v, Ok(Vote::Prepared { .. })));
    s.tpc_abort();
    assert!(matches!(s.tpc_finish(), Err(Error::Transaction(_))));
    assert_eq!(s.last_transaction(), Ok(a));
    assert_eq!(current(&s, 1), Ok(("a".to_string(), a)));
    assert_eq!(s.load_before(o(2), Tid::MAX), Err(Error::PosKey(o(2))));
    assert_eq!(records(&s).len(), 1);
    assert_eq!(s.size_info(), before);
    // The storage goes on normally.
    let b = commit(&s, None, vec![store(1, a, "c")]);
    assert_eq!(current(&s, 1), Ok(("c".to_string(), b)));
    K::check(&s);
}

pub(crate) fn empty_transactions_are_committed<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    let a = commit(&s, None, vec![]);
    let b = commit(&s, None, vec![]);
    assert!(a < b);
    let txns = records(&s);
    assert_eq!(txns.len(), 2);
    assert!(txns
        .iter()
        .all(|t| t.records.is_empty() && t.status == b' '));
    assert_eq!(undo_tids(&s), vec![b, a]);
    // Undoing an empty transaction is an empty undo.
    let (_, resolved, inv) = commit_txn(&s, txn(None, vec![undo(a)]));
    assert!(resolved.is_empty() && inv.is_empty());
}

pub(crate) fn invalid_status_is_refused<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    let mut tx = txn(None, vec![]);
    tx.status = b'x';
    assert!(matches!(s.tpc_vote(&tx), Err(Error::Value(_))));
    tx.status = b'p';
    assert!(matches!(s.tpc_vote(&tx), Ok(Vote::Prepared { .. })));
    s.tpc_abort();
}

// -- undo ----------------------------------------------------------------

/// ZODB's testSimpleTransactionalUndo, with undo log indices.
pub(crate) fn simple_transactional_undo<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    let r1 = commit(&s, None, vec![store(1, Tid::ZERO, "23")]);
    let r2 = commit(&s, None, vec![store(1, r1, "24")]);
    let _r3 = commit(&s, None, vec![store(1, r2, "25")]);

    let log = undo_tids(&s);
    let (u1, resolved, inv) = commit_txn(&s, txn(None, vec![undo(log[0])]));
    assert_eq!((resolved, inv), (vec![o(1)], vec![o(1)]));
    assert_eq!(current(&s, 1), Ok(("24".to_string(), u1)));

    let log = undo_tids(&s);
    commit(&s, None, vec![undo(log[2])]);
    assert_eq!(value(&s, 1), "23");

    let log = undo_tids(&s);
    assert_eq!(log.len(), 5);
    commit(&s, None, vec![undo(log[4])]);
    assert_eq!(current(&s, 1), Err(Error::PosKey(o(1))));
    assert_eq!(s.load_before(o(1), Tid::MAX), Err(Error::PosKey(o(1))));
    assert_eq!(s.size_info().objects, 0);

    // Redo the creation.
    let log = undo_tids(&s);
    commit(&s, None, vec![undo(log[0])]);
    assert_eq!(value(&s, 1), "23");
    assert_eq!(s.size_info().objects, 1);
    K::check(&s);
}

pub(crate) fn undo_creation_branches<K: Kind>(x: &Scratch) {
    // testUndoCreationBranch1: undo the update, then the creation.
    let s = new::<K>(x);
    let r1 = commit(&s, None, vec![store(1, Tid::ZERO, "11")]);
    commit(&s, None, vec![store(1, r1, "12")]);
    commit(&s, None, vec![undo(undo_tids(&s)[0])]);
    assert_eq!(value(&s, 1), "11");
    commit(&s, None, vec![undo(undo_tids(&s)[2])]);
    assert_eq!(s.load_before(o(1), Tid::MAX), Err(Error::PosKey(o(1))));
    let last = records(&s).pop().expect("txn");
    assert_eq!(
        last.records,
        vec![DataRecord {
            oid: o(1),
            tid: last.tid,
            data: None,
            data_txn: None,
        }]
    );

    // testUndoCreationBranch2: undo the update, then redo it.
    let s = new::<K>(x);
    let r1 = commit(&s, None, vec![store(1, Tid::ZERO, "11")]);
    let r2 = commit(&s, None, vec![store(1, r1, "12")]);
    commit(&s, None, vec![undo(undo_tids(&s)[0])]);
    assert_eq!(value(&s, 1), "11");
    let redo = commit(&s, None, vec![undo(undo_tids(&s)[0])]);
    assert_eq!(value(&s, 1), "12");
    // The redo points back at the undo's predecessor: r2.
    assert_eq!(data_txn(&s, 1, redo), Some(r2));
    K::check(&s);
}

pub(crate) fn two_object_undo_at_once<K: Kind>(x: &Scratch) {
    // testTwoObjectUndoAtOnce: two undos in one transaction, then undo it.
    let s = new::<K>(x);
    let a = commit(
        &s,
        None,
        vec![store(1, Tid::ZERO, "30"), store(2, Tid::ZERO, "50")],
    );
    let b = commit(&s, None, vec![store(1, a, "31"), store(2, a, "51")]);
    let c = commit(&s, None, vec![store(1, b, "32"), store(2, b, "52")]);
    let (_, resolved, inv) = commit_txn(&s, txn(None, vec![undo(c), undo(b)]));
    assert_eq!(resolved, vec![o(1), o(2)]);
    assert_eq!(inv, vec![o(1), o(2)]);
    assert_eq!((value(&s, 1), value(&s, 2)), ("30".into(), "50".into()));
    let last = records(&s).pop().expect("txn");
    let pointers: Vec<Option<Tid>> = last.records.iter().map(|r| r.data_txn).collect();
    assert_eq!(pointers, vec![Some(a), Some(a)]);

    commit(&s, None, vec![undo(undo_tids(&s)[0])]);
    assert_eq!((value(&s, 1), value(&s, 2)), ("32".into(), "52".into()));
    K::check(&s);
}

pub(crate) fn two_object_undo_again<K: Kind>(x: &Scratch) {
    // testTwoObjectUndoAgain: the second transaction is undone although
    // one object changed later — to the very same revision of it.
    let s = new::<K>(x);
    let r1 = commit(&s, None, vec![store(1, Tid::ZERO, "31")]);
    let r2 = commit(&s, None, vec![store(2, Tid::ZERO, "51")]);
    commit(&s, None, vec![store(1, r1, "32"), store(2, r2, "52")]);
    let u = commit(&s, None, vec![undo(undo_tids(&s)[0])]);
    assert_eq!((value(&s, 1), value(&s, 2)), ("31".into(), "51".into()));
    let tid = commit(&s, None, vec![store(1, u, "33"), store(2, u, "53")]);
    commit(&s, None, vec![store(1, tid, "34")]);
    commit(&s, None, vec![store(2, tid, "54")]);
    // Undo the "33/53" transaction: both objects were modified later.
    let err = vote_err(&s, vec![undo(undo_tids(&s)[2])]);
    assert_eq!(err, undo_err(UNDO_MODIFIED_LATER, Some(1)));
    // Undo of "34" alone works.
    commit(&s, None, vec![undo(undo_tids(&s)[1])]);
    assert_eq!((value(&s, 1), value(&s, 2)), ("33".into(), "54".into()));
}

pub(crate) fn undo_refused_when_modified_later<K: Kind>(x: &Scratch) {
    // testNotUndoable.
    let s = new::<K>(x);
    let a = commit(&s, None, vec![store(1, Tid::ZERO, "51")]);
    let b = commit(&s, None, vec![store(1, a, "52")]);
    let c = commit(&s, None, vec![store(1, b, "53")]);
    assert_eq!(
        vote_err(&s, vec![undo(b)]),
        undo_err(UNDO_MODIFIED_LATER, Some(1))
    );
    // Undoing the creation, modified later.
    assert_eq!(
        vote_err(&s, vec![undo(a)]),
        undo_err(UNDO_ADD_CONFLICT, Some(1))
    );
    // One object of two modified later: the whole undo fails.
    let tid = commit(&s, None, vec![store(1, c, "81"), store(2, Tid::ZERO, "91")]);
    commit(&s, None, vec![store(2, tid, "92")]);
    assert_eq!(
        vote_err(&s, vec![undo(tid)]),
        undo_err(UNDO_ADD_CONFLICT, Some(2))
    );
    assert_eq!((value(&s, 1), value(&s, 2)), ("81".into(), "92".into()));
    // Nothing was prepared.
    assert!(matches!(s.tpc_finish(), Err(Error::Transaction(_))));
}

pub(crate) fn undo_unknown_transaction<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    commit(&s, Some(t(1)), vec![store(1, Tid::ZERO, "a")]);
    assert_eq!(
        vote_err(&s, vec![undo(t(7))]),
        undo_err(UNDO_INVALID_TXN, None)
    );
    assert_eq!(
        vote_err(&s, vec![undo(Tid::ZERO)]),
        undo_err(UNDO_INVALID_TXN, None)
    );
}

pub(crate) fn undo_then_store_in_one_transaction<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    let a = commit(&s, None, vec![store(1, Tid::ZERO, "a")]);
    let b = commit(&s, None, vec![store(1, a, "b")]);
    // Undo b, then store on top in the same transaction: the store wins
    // (serial checked against committed state), oid listed once.
    let (tid, resolved, inv) = commit_txn(&s, txn(None, vec![undo(b), store(1, b, "c")]));
    assert_eq!((resolved, inv), (vec![o(1)], vec![o(1)]));
    assert_eq!(current(&s, 1), Ok(("c".to_string(), tid)));
    let last = records(&s).pop().expect("txn");
    assert_eq!(last.records.len(), 1);
    assert_eq!(last.records[0].data_txn, None);
}

pub(crate) fn undo_iterator_reports_data_txn<K: Kind>(x: &Scratch) {
    // testTransactionalUndoIterator, scaled down.
    const BATCHES: u64 = 3;
    const OBJECTS: u64 = 3;
    let s = new::<K>(x);
    let mut orig = Vec::new();
    for i in 0..BATCHES {
        let tid = Tid(i + 1);
        let oids = s.new_oids(OBJECTS as usize).expect("oids");
        let ops = oids
            .iter()
            .map(|oid| store(oid.0, Tid::ZERO, &format!("{}", oid.0)))
            .collect();
        commit(&s, Some(tid), ops);
        orig.extend(oids.into_iter().map(|oid| (tid, oid)));
    }
    for (tid, oid) in &orig {
        commit(&s, None, vec![store(oid.0, *tid, "update")]);
    }
    for i in 0..BATCHES {
        let log = s.undo_log(0, 1000).expect("log");
        let base = (i * OBJECTS + i) as usize;
        let ops = (0..OBJECTS as usize)
            .map(|j| undo(log[base + j].tid))
            .collect();
        commit(&s, None, ops);
    }
    let txns = records(&s);
    assert_eq!(txns.len() as u64, (2 + OBJECTS) * BATCHES);
    for (i, txn) in txns.iter().take(BATCHES as usize).enumerate() {
        assert_eq!(txn.tid, Tid(i as u64 + 1));
        assert!(txn
            .records
            .iter()
            .all(|r| r.data_txn.is_none() && r.tid == txn.tid));
    }
    for (i, txn) in txns
        .iter()
        .skip((BATCHES * (OBJECTS + 1)) as usize)
        .enumerate()
    {
        // The undos are performed newest batch first.
        let otid = Tid(BATCHES - i as u64);
        let mut got: Vec<(Oid, Option<Tid>)> =
            txn.records.iter().map(|r| (r.oid, r.data_txn)).collect();
        got.sort();
        let want: Vec<(Oid, Option<Tid>)> = orig
            .iter()
            .filter(|(t, _)| *t == otid)
            .map(|(_, oid)| (*oid, Some(otid)))
            .collect();
        assert_eq!(got, want, "undo batch {i}");
        for r in &txn.records {
            assert_eq!(r.data, Some(d(&format!("{}", r.oid.0))));
        }
    }
    K::check(&s);
}

pub(crate) fn undo_log_windows<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    let mut tids = Vec::new();
    for i in 0..27u64 {
        tids.push(commit(&s, None, vec![store(i, Tid::ZERO, "x")]));
    }
    tids.reverse();
    let cases: &[(usize, usize, std::ops::Range<usize>)] = &[
        (0, 100_000, 0..27),
        (0, 20, 0..20),
        (0, 1, 0..1),
        (11, 17, 11..17),
        (26, 30, 26..27),
        (27, 30, 27..27),
        (5, 5, 5..5),
        (6, 5, 6..6),
    ];
    for (first, last, want) in cases {
        let got: Vec<Tid> = s
            .undo_log(*first, *last)
            .expect("log")
            .iter()
            .map(|e| e.tid)
            .collect();
        assert_eq!(got, tids[want.clone()].to_vec(), "[{first}, {last})");
    }
    let log = s.undo_log(0, 1).expect("log");
    assert_eq!(log[0].meta, meta("t"));
}

// -- iteration -----------------------------------------------------------

pub(crate) fn iterator_ranges<K: Kind>(x: &Scratch) {
    // testExtendedIteration.
    let s = new::<K>(x);
    let r: Vec<Tid> = (1..=4).map(|i| t(i * 10)).collect();
    let mut serial = Tid::ZERO;
    for (i, tid) in r.iter().enumerate() {
        serial = commit(
            &s,
            Some(*tid),
            vec![store(1, serial, &format!("{}", 11 + i))],
        );
    }
    let mid = |a: Tid, b: Tid| Tid((a.0 + b.0) / 2);
    let cases: Vec<(Option<Tid>, Option<Tid>, Vec<Tid>)> = vec![
        (None, None, r.clone()),
        (Some(r[0]), Some(r[3]), r.clone()),
        (Some(r[2]), None, r[2..].to_vec()),
        (None, Some(r[1]), r[..2].to_vec()),
        (Some(r[1]), Some(r[2]), r[1..3].to_vec()),
        (Some(r[1]), Some(mid(r[2], r[3])), r[1..3].to_vec()),
        (
            Some(mid(r[0], r[1])),
            Some(mid(r[2], r[3])),
            r[1..3].to_vec(),
        ),
        (Some(r[2]), Some(r[1]), vec![]),
        (Some(r[2]), Some(r[2]), vec![r[2]]),
        (Some(Tid::MAX), None, vec![]),
        (None, Some(Tid::ZERO), vec![]),
    ];
    for (start, stop, want) in cases {
        let got: Vec<TxnRecord> = s
            .iterator(start, stop)
            .expect("iterator")
            .map(|x| x.expect("txn"))
            .collect();
        let tids: Vec<Tid> = got.iter().map(|x| x.tid).collect();
        assert_eq!(tids, want, "{start:?}..={stop:?}");
        for txn in &got {
            let i = r.iter().position(|x| *x == txn.tid).expect("known tid");
            assert_eq!(
                txn.records,
                vec![DataRecord {
                    oid: o(1),
                    tid: txn.tid,
                    data: Some(d(&format!("{}", 11 + i))),
                    data_txn: None,
                }]
            );
            assert_eq!(txn.status, b' ');
            assert_eq!(txn.meta, meta("t"));
        }
    }
}

pub(crate) fn iterator_is_a_snapshot<K: Kind>(x: &Scratch) {
    // testIterateWhileWriting, and iteration during a prepared commit.
    let s = new::<K>(x);
    commit(&s, None, vec![store(1, Tid::ZERO, "a")]);
    let mut it = s.iterator(None, None).expect("iterator");
    let v = s.tpc_vote(&txn(None, vec![store(2, Tid::ZERO, "b")]));
    assert!(matches!(v, Ok(Vote::Prepared { .. })));
    assert_eq!(s.iterator(None, None).expect("iterator").count(), 1);
    s.tpc_finish().expect("finish");
    assert!(it.next().is_some());
    assert!(it.next().is_none());
    assert_eq!(s.iterator(None, None).expect("iterator").count(), 2);
}

pub(crate) fn undo_zombie_iterates_with_no_data<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    let a = commit(&s, None, vec![store(1, Tid::ZERO, "94")]);
    commit(&s, None, vec![undo(a)]);
    let last = records(&s).pop().expect("txn");
    assert_eq!(last.records.len(), 1);
    assert_eq!(last.records[0].oid, o(1));
    assert_eq!(last.records[0].data, None);
}

pub(crate) fn record_iternext_order<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    let a = commit(
        &s,
        None,
        vec![
            store(5, Tid::ZERO, "five"),
            store(1, Tid::ZERO, "one"),
            store(3, Tid::ZERO, "three"),
            store(8, Tid::ZERO, "eight"),
        ],
    );
    let b = commit(
        &s,
        None,
        vec![
            Op::Delete {
                oid: o(5),
                serial: a,
            },
            store(3, a, "3"),
        ],
    );
    // Walk like ZEO's record_iternext loop.
    let mut got = Vec::new();
    let mut next = None;
    while let Some((oid, tid, data, following)) = s.record_iternext(next).expect("next") {
        got.push((oid, tid, String::from_utf8_lossy(&data).into_owned()));
        match following {
            Some(n) => next = Some(n),
            None => break,
        }
    }
    assert_eq!(
        got,
        vec![
            (o(1), a, "one".to_string()),
            (o(3), b, "3".to_string()),
            (o(8), a, "eight".to_string()),
        ]
    );
    type Case = (Option<u64>, Option<(u64, Option<u64>)>);
    let cases: &[Case] = &[
        (None, Some((1, Some(3)))),
        (Some(0), Some((1, Some(3)))),
        (Some(2), Some((3, Some(8)))),
        (Some(4), Some((8, None))), // 5 is deleted: skipped
        (Some(8), Some((8, None))),
        (Some(9), None),
    ];
    for (start, want) in cases {
        let got = s
            .record_iternext(start.map(Oid))
            .expect("next")
            .map(|(oid, _, _, n)| (oid.0, n.map(|x| x.0)));
        assert_eq!(got, *want, "from {start:?}");
    }
}

// -- undo merged by a conflict resolver ---------------------------------

/// Answers "merged" and remembers what it was asked (old, committed, new).
#[derive(Default)]
struct Recording(Mutex<Vec<(String, String, String)>>);

impl crate::storage::resolve::ConflictResolver for Recording {
    fn resolve(
        &self,
        _: Oid,
        old: &Data,
        committed: &Data,
        new: &Data,
    ) -> std::result::Result<Data, String> {
        let s = |d: &Data| String::from_utf8_lossy(d).into_owned();
        lock(&self.0).push((s(old), s(committed), s(new)));
        Ok(d("merged"))
    }
}

/// An undo meeting later changes fails without a resolver and is merged
/// by one, which is asked (undone, current, before the undone).
pub(crate) fn undo_merges_through_the_resolver<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    let a = commit(&s, Some(t(1)), vec![store(1, Tid::ZERO, "1")]);
    let b = commit(&s, Some(t(2)), vec![store(1, a, "2")]);
    commit(&s, Some(t(3)), vec![store(1, b, "3")]);
    // Without a resolver: UndoError, as before.
    let e = s.tpc_vote(&txn(Some(t(4)), vec![undo(b)]));
    assert!(matches!(e, Err(Error::Undo { .. })), "{e:?}");
    let r = Arc::new(Recording::default());
    s.set_conflict_resolver(r.clone());
    let (tid, resolved, _) = commit_txn(&s, txn(Some(t(4)), vec![undo(b)]));
    assert_eq!((tid, resolved), (t(4), vec![o(1)]));
    assert_eq!(value(&s, 1), "merged");
    // Undone state, current state, the state before the undone one.
    assert_eq!(
        lock(&r.0).clone(),
        vec![("2".into(), "3".into(), "1".into())]
    );
}

// -- restore -------------------------------------------------------------

pub(crate) fn restore_records<K: Kind>(x: &Scratch) {
    let src = new::<K>(x);
    let a = commit(&src, Some(t(1)), vec![store(1, Tid::ZERO, "a")]);
    let b = commit(&src, Some(t(2)), vec![store(1, a, "b")]);
    let u = commit(&src, Some(t(3)), vec![undo(b)]);
    let z = commit(&src, Some(t(4)), vec![undo(a)]);
    let _ = (u, z);
    // Copy everything, as copyTransactionsFrom / RAID recovery does.
    let dst = new::<K>(x);
    for txn_rec in records(&src) {
        let (tid, resolved, inv) = commit_txn(&dst, restore_txn(&txn_rec));
        assert_eq!(tid, txn_rec.tid);
        assert!(resolved.is_empty());
        assert_eq!(inv.len(), txn_rec.records.len());
    }
    assert_eq!(records(&dst), records(&src));
    assert_eq!(value(&dst, 1), value(&src, 1));
    K::check(&dst);
}

pub(crate) fn restore_checks<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    // The serial must be the transaction's tid.
    let e = s.tpc_vote(&txn(
        Some(t(2)),
        vec![Op::Restore {
            oid: o(1),
            serial: t(1),
            data: Some(d("a")),
            prev_txn: None,
        }],
    ));
    assert!(matches!(e, Err(Error::Transaction(_))), "{e:?}");
    // A prev_txn this storage does not have is only a hint.
    commit(
        &s,
        Some(t(2)),
        vec![Op::Restore {
            oid: o(1),
            serial: t(2),
            data: Some(d("a")),
            prev_txn: Some(t(1)),
        }],
    );
    assert_eq!(records(&s)[0].records[0].data_txn, None);
    assert_eq!(value(&s, 1), "a");
    // No conflict check; a restored oid reserves the oid space.
    commit(
        &s,
        Some(t(3)),
        vec![Op::Restore {
            oid: o(40),
            serial: t(3),
            data: Some(d("x")),
            prev_txn: None,
        }],
    );
    assert_eq!(s.new_oids(1), Ok(vec![o(41)]));
    // A restored packed transaction ends the undo log.
    let mut tx = txn(Some(t(4)), vec![]);
    tx.status = b'p';
    commit_txn(&s, tx);
    commit(&s, Some(t(5)), vec![]);
    assert_eq!(undo_tids(&s), vec![t(5)]);
    assert_eq!(
        vote_err(&s, vec![undo(t(4))]),
        undo_err(UNDO_NOT_UNDOABLE, None)
    );
    assert_eq!(
        vote_err(&s, vec![undo(t(3))]),
        undo_err(UNDO_INVALID_TXN, None)
    );
}

// -- pack ----------------------------------------------------------------

/// One object, five revisions at t(10..50); which survive a pack at
/// each time.
pub(crate) fn pack_keeps_exactly_the_right_revisions<K: Kind>(x: &Scratch) {
    let cases: &[(f64, &[u32])] = &[
        (at(5, 0.0), &[10, 20, 30, 40, 50]),
        (at(10, 0.0), &[10, 20, 30, 40, 50]),
        (at(15, 0.0), &[10, 20, 30, 40, 50]),
        (at(20, 0.5), &[20, 30, 40, 50]),
        (at(39, 0.0), &[30, 40, 50]),
        (at(50, 0.0), &[50]),
        (at(500, 0.0), &[50]),
    ];
    for (packtime, kept) in cases {
        let s = new::<K>(x);
        let mut serial = Tid::ZERO;
        for i in 1..=5 {
            serial = commit(&s, Some(t(i * 10)), vec![store(1, serial, &i.to_string())]);
        }
        s.pack(*packtime, false).expect("pack");
        let kept: Vec<Tid> = kept.iter().map(|i| t(*i)).collect();
        assert_eq!(revisions(&s, 1), kept, "pack at {packtime}");
        for i in 1..=5u32 {
            let want = if kept.contains(&t(i * 10)) {
                Ok(d(&i.to_string()))
            } else {
                Err(Error::PosKey(o(1)))
            };
            assert_eq!(
                s.load_serial(o(1), t(i * 10)),
                want,
                "pack at {packtime}, rev {i}"
            );
        }
        // Transactions before the pack time that lost their records vanish;
        // survivors up to the pack time are packed.
        let txns: Vec<(Tid, u8)> = records(&s).iter().map(|x| (x.tid, x.status)).collect();
        let packtid = timestamp::from_unix(*packtime).min(t(50));
        let want: Vec<(Tid, u8)> = kept
            .iter()
            .map(|t| (*t, if *t <= packtid { b'p' } else { b' ' }))
            .collect();
        assert_eq!(txns, want, "pack at {packtime}");
        assert_eq!(value(&s, 1), "5");
        K::check(&s);
    }
}

pub(crate) fn pack_removes_deleted_objects<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    let a = commit(
        &s,
        Some(t(1)),
        vec![store(1, Tid::ZERO, "a"), store(2, Tid::ZERO, "b")],
    );
    commit(
        &s,
        Some(t(2)),
        vec![Op::Delete {
            oid: o(1),
            serial: a,
        }],
    );
    // Object 3: created and its creation undone.
    let c = commit(&s, Some(t(3)), vec![store(3, Tid::ZERO, "c")]);
    commit(&s, Some(t(4)), vec![undo(c)]);
    // Object 4: deleted, then stored again after the pack time.
    let e = commit(&s, Some(t(5)), vec![store(4, Tid::ZERO, "e")]);
    commit(
        &s,
        Some(t(6)),
        vec![Op::Delete {
            oid: o(4),
            serial: e,
        }],
    );
    commit(&s, Some(t(8)), vec![store(4, t(6), "e2")]);
    assert_eq!(s.size_info().objects, 2);

    s.pack(at(7, 0.0), false).expect("pack");
    assert_eq!(s.history(o(1), 10), Err(Error::PosKey(o(1))));
    assert_eq!(s.history(o(3), 10), Err(Error::PosKey(o(3))));
    assert_eq!(s.history(o(2), 10).map(|h| h.len()), Ok(1));
    let h4: Vec<Tid> = s
        .history(o(4), 10)
        .expect("history")
        .iter()
        .map(|h| h.tid)
        .collect();
    assert_eq!(h4, vec![t(8)]);
    assert_eq!(s.load_before(o(4), t(8)), Ok(None));
    assert_eq!(value(&s, 4), "e2");
    // t(2), t(3), t(4), t(5), t(6) had only dropped records.
    let txns: Vec<(Tid, u8)> = records(&s).iter().map(|x| (x.tid, x.status)).collect();
    assert_eq!(txns, vec![(t(1), b'p'), (t(8), b' ')]);
    let first = &records(&s)[0];
    assert_eq!(
        first.records.iter().map(|r| r.oid).collect::<Vec<_>>(),
        vec![o(2)]
    );
    assert_eq!(s.size_info().objects, 2);
    if K::SIZE_IS_DATA {
        assert_eq!(
            s.size_info(),
            SizeInfo {
                objects: 2,
                bytes: 3
            }
        );
    }
    K::check(&s);
}

pub(crate) fn pack_resolves_backpointers<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    let a = commit(&s, Some(t(1)), vec![store(1, Tid::ZERO, "a")]);
    let b = commit(&s, Some(t(2)), vec![store(1, a, "b")]);
    let u = commit(&s, Some(t(3)), vec![undo(b)]); // -> a, points at t(1)
    let r = commit(&s, Some(t(4)), vec![undo(u)]); // -> b, points at t(2)
    let _ = r;
    // Pack at t(3): t(3) survives (packed, pointer resolved); t(4) points
    // at t(2), which is dropped: resolved too.
    s.pack(at(3, 0.5), false).expect("pack");
    let txns = records(&s);
    let got: Vec<(Tid, u8, Option<Tid>, Option<Data>)> = txns
        .iter()
        .map(|x| {
            (
                x.tid,
                x.status,
                x.records[0].data_txn,
                x.records[0].data.clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (t(3), b'p', None, Some(d("a"))),
            (t(4), b' ', None, Some(d("b")))
        ]
    );
    assert_eq!(value(&s, 1), "b");
    K::check(&s);

    // A pointer to a surviving revision is kept.
    let s = new::<K>(x);
    let a = commit(&s, Some(t(1)), vec![store(1, Tid::ZERO, "a")]);
    let b = commit(&s, Some(t(2)), vec![store(1, a, "b")]);
    commit(&s, Some(t(3)), vec![undo(b)]); // points at t(1)
    s.pack(at(1, 0.5), false).expect("pack");
    let txns = records(&s);
    assert_eq!(txns.len(), 3);
    assert_eq!(txns[2].records[0].data_txn, Some(t(1)));
    K::check(&s);
}

pub(crate) fn pack_and_undo_log<K: Kind>(x: &Scratch) {
    // testPackUndoLog and testTransactionalUndoAfterPack.
    let s = new::<K>(x);
    let r0 = commit(&s, Some(t(1)), vec![store(0, Tid::ZERO, "root")]);
    let _ = r0;
    let r1 = commit(&s, Some(t(2)), vec![store(1, Tid::ZERO, "50")]);
    let r2 = commit(&s, Some(t(3)), vec![store(1, r1, "51")]);
    let r3 = commit(&s, Some(t(5)), vec![store(1, r2, "52")]);
    let r4 = commit(&s, Some(t(6)), vec![store(1, r3, "53")]);
    assert_eq!(undo_tids(&s).len(), 5);
    s.pack(at(4, 0.0), false).expect("pack");
    assert_eq!(undo_tids(&s), vec![r4, r3]);
    // Undo the last transaction: back to the second state.
    let (_, resolved, _) = commit_txn(&s, txn(None, vec![undo(r4)]));
    assert_eq!(resolved, vec![o(1)]);
    assert_eq!(value(&s, 1), "52");
    // Undoing a packed transaction, or one before it, is refused.
    assert_eq!(
        vote_err(&s, vec![undo(r2)]),
        undo_err(UNDO_NOT_UNDOABLE, None)
    );
    assert_eq!(
        vote_err(&s, vec![undo(r1)]),
        undo_err(UNDO_INVALID_TXN, None)
    );
    // Undoing r3 (its pre is the packed r2) works: back to "51".
    commit(&s, None, vec![undo(r3)]);
    assert_eq!(value(&s, 1), "51");
    K::check(&s);
}

pub(crate) fn pack_edge_cases<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    let a = commit(&s, Some(t(10)), vec![store(1, Tid::ZERO, "a")]);
    let b = commit(&s, Some(t(20)), vec![store(1, a, "b")]);
    // Yesterday: nothing to do.
    s.pack(at(0, 0.0), false).expect("pack");
    assert_eq!(records(&s).len(), 2);
    assert!(records(&s).iter().all(|x| x.status == b' '));
    // Invalid times.
    assert!(matches!(s.pack(f64::NAN, false), Err(Error::Value(_))));
    assert!(matches!(s.pack(f64::INFINITY, false), Err(Error::Value(_))));
    // Tomorrow: packs as of the last transaction.
    s.pack(timestamp::now() + 86_400.0, false).expect("pack");
    assert_eq!(s.history(o(1), 10).map(|h| h.len()), Ok(1));
    assert_eq!(
        records(&s)
            .iter()
            .map(|x| (x.tid, x.status))
            .collect::<Vec<_>>(),
        vec![(b, b'p')]
    );
    assert_eq!(undo_tids(&s), vec![]);
    // Commits after the pack are not touched by it, and the storage goes on.
    let c = commit(&s, None, vec![store(1, b, "c")]);
    assert_eq!(undo_tids(&s), vec![c]);
    // A redundant (earlier) pack is a no-op.
    s.pack(at(15, 0.0), false).expect("pack");
    assert_eq!(records(&s).len(), 2);
    assert_eq!(value(&s, 1), "c");
    K::check(&s);
}

pub(crate) fn repeated_packs_after_undo<K: Kind>(x: &Scratch) {
    // testPackAfterUndoManyTimes, with explicit times.
    let s = new::<K>(x);
    let mut i = 1;
    let mut next = || {
        i += 1;
        Some(t(i * 10))
    };
    let a = commit(
        &s,
        next(),
        vec![store(0, Tid::ZERO, "root"), store(1, Tid::ZERO, "1")],
    );
    commit(&s, next(), vec![store(2, Tid::ZERO, "2")]);
    commit(&s, next(), vec![store(1, a, "3")]);
    let mut packtimes = Vec::new();
    for k in 0..10 {
        let last = undo_tids(&s)[0];
        let tid = commit(&s, next(), vec![undo(last)]);
        assert_eq!(value(&s, 1), if k % 2 == 1 { "3" } else { "1" });
        packtimes.push(timestamp::time_time(tid) + 1.0);
    }
    for p in packtimes {
        s.pack(p, false).expect("pack");
        assert_eq!(value(&s, 1), "3");
        assert_eq!(value(&s, 2), "2");
        assert_eq!(value(&s, 0), "root");
        K::check(&s);
    }
    // Everything is packed: every object has one revision.
    for oid in 0..3 {
        assert_eq!(s.history(o(oid), 100).map(|h| h.len()), Ok(1));
    }
}

// -- pack with garbage collection ----------------------------------------

/// A ZODB-like record: protocol 3, class `m.K`, state a tuple of
/// `(oid, class)` references and the text `tag`.
fn pk(refs: &[u64], tag: &str) -> Data {
    let mut v = b"\x80\x03cm\nK\nq\x00.\x80\x03(".to_vec();
    for r in refs {
        v.extend_from_slice(b"C\x08");
        v.extend_from_slice(&r.to_be_bytes());
        v.extend_from_slice(b"h\x00\x86Q");
    }
    v.push(0x8c);
    v.push(tag.len() as u8);
    v.extend_from_slice(tag.as_bytes());
    v.extend_from_slice(b"t.");
    Arc::from(v)
}

fn put(oid: u64, serial: Tid, refs: &[u64], tag: &str) -> Op {
    Op::Store {
        oid: o(oid),
        serial,
        data: pk(refs, tag),
    }
}

fn exists(s: &dyn Storage, oid: u64) -> bool {
    s.history(o(oid), 1).is_ok()
}

pub(crate) fn gc_removes_unreachable_objects_and_cycles<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    // 0 -> 1 -> 2; 3 alone; 4 <-> 5 a cycle nobody reaches; 6 -> 0
    // (reaches the root, but nothing reaches 6).
    let a = commit(
        &s,
        Some(t(10)),
        vec![
            put(0, Tid::ZERO, &[1], "root"),
            put(1, Tid::ZERO, &[2], "one"),
            put(2, Tid::ZERO, &[], "two"),
            put(3, Tid::ZERO, &[], "three"),
            put(4, Tid::ZERO, &[5], "four"),
            put(5, Tid::ZERO, &[4], "five"),
            put(6, Tid::ZERO, &[0], "six"),
        ],
    );
    commit(&s, Some(t(20)), vec![put(1, a, &[2], "one'")]);
    assert_eq!(s.size_info().objects, 7);
    s.pack(at(30, 0.0), true).expect("pack");
    for oid in 0..=2 {
        assert!(exists(&s, oid), "{oid} is reachable");
    }
    for oid in 3..=6 {
        assert!(!exists(&s, oid), "{oid} is garbage");
        assert_eq!(s.load_before(o(oid), Tid::MAX), Err(Error::PosKey(o(oid))));
    }
    assert_eq!(revisions(&s, 1), vec![t(20)]);
    assert_eq!(s.size_info().objects, 3);
    let recs = records(&s);
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].records.len(), 2, "t10 keeps 0 and 2");
    assert!(recs.iter().all(|r| r.status == b'p'));
    K::check(&s);
    // The same pack without GC would have kept everything.
    let s2 = new::<K>(x);
    commit(
        &s2,
        Some(t(10)),
        vec![put(0, Tid::ZERO, &[], "root"), put(3, Tid::ZERO, &[], "x")],
    );
    s2.pack(at(30, 0.0), false).expect("pack");
    assert!(exists(&s2, 3));
}

pub(crate) fn gc_follows_the_state_at_the_pack_time<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    let a = commit(
        &s,
        Some(t(10)),
        vec![
            put(0, Tid::ZERO, &[1, 3], "root"),
            put(1, Tid::ZERO, &[], "one"),
            put(2, Tid::ZERO, &[], "two"),
            put(3, Tid::ZERO, &[], "three"),
            put(4, Tid::ZERO, &[], "four"),
        ],
    );
    // After the pack time (t25): root drops 1 and links 4; 2, unreachable
    // at the pack time, is modified; 7 is created unreachable.
    let b = commit(&s, Some(t(30)), vec![put(0, a, &[3, 4], "root'")]);
    commit(
        &s,
        Some(t(40)),
        vec![put(2, a, &[], "two'"), put(7, Tid::ZERO, &[], "seven")],
    );
    s.pack(at(25, 0.0), true).expect("pack");
    // Reachable at the pack time: kept, although unlinked later.
    assert_eq!(revisions(&s, 1), vec![t(10)]);
    assert_eq!(revisions(&s, 3), vec![t(10)]);
    assert_eq!(revisions(&s, 0), vec![t(10), b]);
    // Written after the pack time: those revisions are kept, the old
    // unreachable one goes (FileStorage drops it too).
    assert_eq!(revisions(&s, 2), vec![t(40)]);
    assert_eq!(revisions(&s, 7), vec![t(40)]);
    assert!(value(&s, 2).contains("two'"));
    // Unreachable at the pack time and only linked later, never
    // rewritten: FileStorage's GC removes it as well (pack times must
    // lie before anything a client may still link).
    assert!(!exists(&s, 4));
    K::check(&s);
}

pub(crate) fn gc_keeps_what_a_later_undo_brings_back<K: Kind>(x: &Scratch) {
    // testPackUnlinkedFromRoot's shape with explicit times: root links 1,
    // then unlinks it; after the pack time that unlink is undone.
    let s = new::<K>(x);
    let a = commit(
        &s,
        Some(t(10)),
        vec![
            put(0, Tid::ZERO, &[1], "root"),
            put(1, Tid::ZERO, &[2], "one"),
            put(2, Tid::ZERO, &[], "two"),
        ],
    );
    let b = commit(&s, Some(t(20)), vec![put(0, a, &[], "root'")]);
    let c = commit(&s, Some(t(30)), vec![undo(b)]);
    assert_eq!(data_txn(&s, 0, c), Some(a));
    s.pack(at(25, 0.0), true).expect("pack");
    // 1 and 2 were unreachable at t25, but the undo at t30 points back
    // at root@t10, whose references are followed (fspack's extra roots),
    // and root@t10 itself is kept.
    assert_eq!(revisions(&s, 0), vec![a, b, c]);
    assert_eq!(revisions(&s, 1), vec![a]);
    assert_eq!(revisions(&s, 2), vec![a]);
    assert_eq!(s.load_serial(o(0), a), Ok(pk(&[1], "root")));
    assert_eq!(
        s.load_before(o(1), Tid::MAX).map(|l| l.map(|l| l.data)),
        Ok(Some(pk(&[2], "one")))
    );
    K::check(&s);
    // Without the undo they would have gone.
    let s = new::<K>(x);
    let a = commit(
        &s,
        Some(t(10)),
        vec![
            put(0, Tid::ZERO, &[1], "root"),
            put(1, Tid::ZERO, &[], "one"),
        ],
    );
    commit(&s, Some(t(20)), vec![put(0, a, &[], "root'")]);
    s.pack(at(25, 0.0), true).expect("pack");
    assert!(!exists(&s, 1));
    assert_eq!(revisions(&s, 0), vec![t(20)]);
    K::check(&s);
}

pub(crate) fn gc_refuses_what_it_cannot_read<K: Kind>(x: &Scratch) {
    // An unreadable reachable record fails the pack and changes nothing.
    let s = new::<K>(x);
    let a = commit(
        &s,
        Some(t(10)),
        vec![
            put(0, Tid::ZERO, &[1], "root"),
            store(1, Tid::ZERO, "not a pickle"),
            put(2, Tid::ZERO, &[], "garbage"),
        ],
    );
    commit(&s, Some(t(20)), vec![put(0, a, &[1], "root'")]);
    match s.pack(at(30, 0.0), true) {
        Err(Error::Value(m)) => assert!(m.contains("0x0000000000000001"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(revisions(&s, 0), vec![t(10), t(20)]);
    assert!(exists(&s, 2));
    assert!(records(&s).iter().all(|r| r.status == b' '));
    // An unreadable unreachable record is simply garbage.
    let s = new::<K>(x);
    commit(
        &s,
        Some(t(10)),
        vec![put(0, Tid::ZERO, &[], "root"), store(1, Tid::ZERO, "junk")],
    );
    s.pack(at(30, 0.0), true).expect("pack");
    assert!(!exists(&s, 1));
    K::check(&s);
}

pub(crate) fn gc_without_a_root<K: Kind>(x: &Scratch) {
    // Objects but no root at the pack time: refused (FileStorage's
    // KeyError), nothing changed.
    let s = new::<K>(x);
    commit(&s, Some(t(10)), vec![put(1, Tid::ZERO, &[], "one")]);
    assert!(matches!(s.pack(at(30, 0.0), true), Err(Error::Value(_))));
    assert!(exists(&s, 1));
    // Nothing at the pack time yet: nothing to do.
    let s = new::<K>(x);
    commit(&s, Some(t(10)), vec![put(0, Tid::ZERO, &[1], "root")]);
    commit(&s, Some(t(20)), vec![put(1, Tid::ZERO, &[], "one")]);
    s.pack(at(5, 0.0), true).expect("pack");
    assert!(exists(&s, 0) && exists(&s, 1));
    // Root deleted (no data) at the pack time while others live: refused.
    let s = new::<K>(x);
    let a = commit(
        &s,
        Some(t(10)),
        vec![
            put(0, Tid::ZERO, &[], "root"),
            put(1, Tid::ZERO, &[], "one"),
        ],
    );
    commit(
        &s,
        Some(t(20)),
        vec![Op::Delete {
            oid: o(0),
            serial: a,
        }],
    );
    assert!(matches!(s.pack(at(30, 0.0), true), Err(Error::Value(_))));
    assert!(exists(&s, 1));
}

// -- pack during a commit, sizes -----------------------------------------

pub(crate) fn pack_with_a_prepared_transaction<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    let a = commit(&s, Some(t(1)), vec![store(1, Tid::ZERO, "a")]);
    let b = commit(&s, Some(t(2)), vec![store(1, a, "b")]);
    let c = commit(&s, Some(t(3)), vec![store(1, b, "c")]);
    // Vote an undo of c (points back at b), then pack b away.
    let v = s.tpc_vote(&txn(None, vec![undo(c), store(2, Tid::ZERO, "n")]));
    assert!(matches!(v, Ok(Vote::Prepared { .. })), "{v:?}");
    s.pack(at(3, 0.5), false).expect("pack");
    let tid = s.tpc_finish().expect("finish");
    assert_eq!(current(&s, 1), Ok(("b".to_string(), tid)));
    // The pointer to the dropped revision was resolved at finish.
    let last = records(&s).pop().expect("txn");
    assert_eq!(last.records[0].data_txn, None);
    K::check(&s);
}

/// A transaction voted before a pack is finished, or aborted, after it
/// (`pack_with_a_voted_transaction`, both ways).
pub(crate) fn a_voted_transaction_survives_a_pack<K: Kind>(x: &Scratch) {
    for finish in [true, false] {
        let s = new::<K>(x);
        pack_with_a_voted_transaction(&s, finish);
        K::check(&s);
    }
}

/// On an empty `s`: three revisions of object 1 (and object 2), a vote of
/// an undo of the last (a backpointer to the second) with a new object 3,
/// a pack to the second, then finish (or abort): the pack dropped only the
/// first revision, the voted transaction stayed invisible through it, and
/// finishing it makes it whole (its backpointer kept); aborting leaves
/// the packed state.
pub(crate) fn pack_with_a_voted_transaction(s: &dyn Storage, finish: bool) {
    let a = commit(
        s,
        Some(t(1)),
        vec![store(1, Tid::ZERO, "a"), store(2, Tid::ZERO, "x")],
    );
    let b = commit(s, Some(t(2)), vec![store(1, a, "b")]);
    let c = commit(s, Some(t(3)), vec![store(1, b, "c")]);
    // Voted: undo c (a backpointer to b's record) and a new object.
    let v = s.tpc_vote(&txn(Some(t(5)), vec![undo(c), store(3, Tid::ZERO, "n")]));
    assert!(matches!(v, Ok(Vote::Prepared { .. })), "{v:?}");
    // Pack to t(2): drops a's revision of 1, keeps b (the undo's target).
    s.pack(at(2, 0.5), false).expect("pack");
    assert_eq!(s.load_serial(o(1), a), Err(Error::PosKey(o(1))));
    assert_eq!(value(s, 3), format!("{:?}", Error::PosKey(o(3))));
    if finish {
        assert_eq!(s.tpc_finish(), Ok(t(5)));
        assert_eq!(value(s, 1), "b");
        assert_eq!(value(s, 3), "n");
        let last = records(s).pop().expect("txn");
        assert_eq!(last.records[0].data_txn, Some(b));
    } else {
        s.tpc_abort();
        assert_eq!(value(s, 1), "c");
        assert_eq!(s.last_transaction(), Ok(c));
    }
}

pub(crate) fn size_info_counts<K: Kind>(x: &Scratch) {
    let s = new::<K>(x);
    let a = commit(
        &s,
        None,
        vec![store(1, Tid::ZERO, "aa"), store(2, Tid::ZERO, "bbb")],
    );
    assert_eq!(s.size_info().objects, 2);
    if K::SIZE_IS_DATA {
        assert_eq!(
            s.size_info(),
            SizeInfo {
                objects: 2,
                bytes: 5
            }
        );
    }
    let b = commit(&s, None, vec![store(1, a, "a")]);
    assert_eq!(s.size_info().objects, 2);
    if K::SIZE_IS_DATA {
        assert_eq!(
            s.size_info(),
            SizeInfo {
                objects: 2,
                bytes: 6
            }
        );
    }
    commit(
        &s,
        None,
        vec![Op::Delete {
            oid: o(2),
            serial: a,
        }],
    );
    assert_eq!(s.size_info().objects, 1);
    if K::SIZE_IS_DATA {
        assert_eq!(
            s.size_info(),
            SizeInfo {
                objects: 1,
                bytes: 6
            }
        );
    }
    commit(&s, None, vec![undo(b)]);
    assert_eq!(s.size_info().objects, 1);
    if K::SIZE_IS_DATA {
        assert_eq!(
            s.size_info(),
            SizeInfo {
                objects: 1,
                bytes: 8
            }
        );
    }
    K::check(&s);
}

// -- concurrency ---------------------------------------------------------

pub(crate) fn loads_proceed_during_a_prepared_commit_and_packs<K: Kind>(x: &Scratch) {
    let s = Arc::new(new::<K>(x));
    let mut serial = commit(s.as_ref(), None, vec![store(1, Tid::ZERO, "0")]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Readers start before the commits do, and load at least once.
    let started = Arc::new(std::sync::Barrier::new(3));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let s = Arc::clone(&s);
            let stop = Arc::clone(&stop);
            let started = Arc::clone(&started);
            std::thread::spawn(move || {
                started.wait();
                let mut last = 0u64;
                let mut loads = 0u64;
                loop {
                    let l = s.load_before(o(1), Tid::MAX).ok().flatten();
                    let v: u64 = l
                        .and_then(|l| std::str::from_utf8(&l.data).ok()?.parse().ok())
                        .unwrap_or(u64::MAX);
                    assert!(v >= last && v != u64::MAX, "went back: {v} < {last}");
                    last = v;
                    loads += 1;
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return loads;
                    }
                }
            })
        })
        .collect();
    started.wait();
    for i in 1..200u64 {
        let v = s.tpc_vote(&txn(None, vec![store(1, serial, &i.to_string())]));
        let Ok(Vote::Prepared { tid, .. }) = v else {
            panic!("{v:?}");
        };
        // Loads see the previous state until finish.
        assert_eq!(value(s.as_ref(), 1), (i - 1).to_string());
        if i % 50 == 0 {
            s.pack(timestamp::now() + 1.0, false).expect("pack");
        }
        assert_eq!(s.tpc_finish(), Ok(tid));
        serial = tid;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.join().expect("reader") > 0);
    }
    assert_eq!(value(s.as_ref(), 1), "199");
    K::check(&s);
}

pub(crate) fn readers_run_alongside_commits<K: Kind>(x: &Scratch) {
    let s = Arc::new(new::<K>(x));
    let first = commit(s.as_ref(), None, vec![store(1, Tid::ZERO, "0")]);
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("reader-{i}"))
                .spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let l = s.load_before(o(1), Tid::MAX).expect("load").expect("some");
                        // Every revision's data is its commit number; the
                        // history's newest entry is never older than the load.
                        let v: u64 = std::str::from_utf8(&l.data)
                            .expect("utf8")
                            .parse()
                            .expect("n");
                        assert!(v >= n, "went back from {n} to {v}");
                        n = v;
                        assert_eq!(s.load_serial(o(1), l.start), Ok(l.data.clone()));
                        assert!(s.history(o(1), 1).expect("history")[0].tid >= l.start);
                    }
                    n
                })
                .expect("spawn")
        })
        .collect();
    let mut serial = first;
    for i in 1..=200u64 {
        let tx = txn(None, vec![store(1, serial, &i.to_string())]);
        match s.tpc_vote(&tx) {
            Ok(Vote::Prepared { tid, .. }) => {
                // Prepared but not finished: readers still see the old state.
                assert_eq!(
                    s.load_before(o(1), Tid::MAX).expect("l").expect("s").start,
                    serial
                );
                serial = s.tpc_finish().expect("finish");
                assert_eq!(serial, tid);
            }
            other => panic!("{other:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().expect("reader") <= 200);
    }
    assert_eq!(value(s.as_ref(), 1), "200");
}

/// Commits go on while a pack runs (`commit_during_a_pack`).
pub(crate) fn commits_continue_during_pack<K: Kind>(x: &Scratch) {
    let s = Arc::new(new::<K>(x));
    commit_during_a_pack(&s);
    K::check(&s);
}

/// 200 commits over 7 objects, then a pack to the last of them while
/// another thread commits 100 new objects: every one of those is there
/// afterwards, as it was committed.
pub(crate) fn commit_during_a_pack<S: Storage + 'static>(s: &Arc<S>) {
    let mut serial = Tid::ZERO;
    for i in 0..200 {
        serial = commit(
            s.as_ref(),
            None,
            vec![store(
                1 + i % 7,
                if i < 7 {
                    Tid::ZERO
                } else {
                    s.load_before(o(1 + i % 7), Tid::MAX)
                        .expect("l")
                        .expect("s")
                        .start
                },
                &format!("{i}"),
            )],
        );
    }
    let _ = serial;
    let writer = {
        let s = s.clone();
        std::thread::Builder::new()
            .name("pack-test-writer".into())
            .spawn(move || {
                let mut tids = Vec::new();
                for i in 0..100u64 {
                    tids.push(commit(
                        s.as_ref(),
                        None,
                        vec![store(100 + i, Tid::ZERO, "w")],
                    ));
                }
                tids
            })
            .expect("spawn")
    };
    s.pack(
        timestamp::time_time(s.last_transaction().expect("last")),
        false,
    )
    .expect("pack");
    let tids = writer.join().expect("join");
    for (i, tid) in tids.iter().enumerate() {
        let l = s
            .load_before(o(100 + i as u64), Tid::MAX)
            .expect("load")
            .expect("some");
        assert_eq!((l.data, l.start), (d("w"), *tid));
    }
}
