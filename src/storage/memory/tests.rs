//! Unit tests of the memory storage: the storage contract through the
//! shared suite (`storage::conformance`, with [`assert_consistent`] as this
//! kind's check of its derived state: live objects, bytes, revision order,
//! records matching revisions), its own pure decisions (revision lookups,
//! pack cuts, undo records, undo targets and windows, restore backpointers;
//! tables), and the limit of its oid counter.

use super::*;
use crate::storage::conformance::{conformance_suite, Kind};
use crate::storage::rules::{
    UNDO_ADD_CONFLICT, UNDO_INVALID_TXN, UNDO_LOADBACK_FAILED, UNDO_MODIFIED_LATER,
    UNDO_NOT_UNDOABLE,
};
use crate::storage::testutil::{d, o, t};

// -- helpers (the shared ones are in `storage::testutil`) -----------------

/// The memory storage for the conformance suite.
struct MemoryKind;

impl Kind for MemoryKind {
    type S = MemoryStorage;
    const SIZE_IS_DATA: bool = true;
    fn open(_path: &std::path::Path, read_only: bool) -> MemoryStorage {
        MemoryStorage::new("test", read_only)
    }
    fn name(_path: &std::path::Path) -> String {
        "test".to_string()
    }
    fn check(s: &MemoryStorage) {
        assert_consistent(s);
    }
}

conformance_suite!(MemoryKind);

fn undo_err(message: &str, oid: Option<u64>) -> Error {
    Error::Undo {
        message: message.to_string(),
        oid: oid.map(Oid),
    }
}

fn rev(tid: Tid, data: Option<&str>, data_txn: Option<Tid>) -> Revision {
    Revision {
        tid,
        data: data.map(d),
        data_txn,
    }
}

/// Recompute the derived state from scratch and compare.
fn assert_consistent(s: &MemoryStorage) {
    let st = s.read();
    let live = st.objects.values().filter(|r| is_live(r)).count() as u64;
    let bytes: u64 = st.objects.values().flatten().map(|r| r.size()).sum();
    assert_eq!(st.live, live, "live objects");
    assert_eq!(st.bytes, bytes, "bytes");
    for (oid, revs) in &st.objects {
        assert!(!revs.is_empty(), "{oid} has no revisions");
        assert!(revs.windows(2).all(|w| w[0].tid < w[1].tid), "{oid} order");
        for r in revs {
            let e = st.txns.get(&r.tid).expect("revision's transaction");
            let rec = e.records.iter().find(|x| x.oid == *oid).expect("record");
            assert_eq!((&rec.data, rec.data_txn), (&r.data, r.data_txn));
            if let Some(dt) = r.data_txn {
                assert!(find_revision(revs, dt).is_some(), "dangling {dt}");
            }
        }
    }
    for (tid, e) in &st.txns {
        assert_eq!(*tid, e.tid);
        for rec in &e.records {
            assert!(
                st.revision(rec.oid, *tid).is_some(),
                "record without revision"
            );
        }
    }
    if let Some((t, _)) = st.txns.iter().next_back() {
        assert_eq!(*t, st.last_tid);
    }
}

// -- basics ---------------------------------------------------------------

#[test]
fn new_oids_end_at_the_largest_oid() {
    let s = MemoryStorage::new("test", false);
    *s.max_oid() = u64::MAX - 1;
    assert_eq!(s.new_oids(1), Ok(vec![o(u64::MAX)]));
    assert!(matches!(s.new_oids(1), Err(Error::Value(_))));
}

// -- loads ----------------------------------------------------------------

#[test]
fn pick_before_table() {
    let revs = vec![
        rev(Tid(10), Some("a"), None),
        rev(Tid(20), None, None),
        rev(Tid(30), Some("c"), Some(Tid(10))),
    ];
    let cases = [
        (Tid(0), Before::Nothing),
        (Tid(10), Before::Nothing),
        (Tid(11), Before::Found(0)),
        (Tid(20), Before::Found(0)),
        (Tid(21), Before::NoData(1)),
        (Tid(30), Before::NoData(1)),
        (Tid(31), Before::Found(2)),
        (Tid::MAX, Before::Found(2)),
    ];
    for (before, want) in cases {
        assert_eq!(pick_before(&revs, before), want, "before {before}");
    }
    assert_eq!(pick_before(&[], Tid::MAX), Before::Nothing);
}

// -- conflicts --------------------------------------------------------------

// -- two-phase commit ---------------------------------------------------------

// -- undo -----------------------------------------------------------------

#[test]
fn undo_record_table() {
    let a = Some("a");
    let b = Some("b");
    // (undone, pre, current, expected)
    type Want = std::result::Result<(Option<&'static str>, Option<Tid>), &'static str>;
    let cases: Vec<(Revision, Option<Revision>, Revision, Want)> = vec![
        // Undo of the current modification: back to pre, pointing at it.
        (
            rev(Tid(2), b, None),
            Some(rev(Tid(1), a, None)),
            rev(Tid(2), b, None),
            Ok((a, Some(Tid(1)))),
        ),
        // Undo of the current creation: George Bailey.
        (
            rev(Tid(1), a, None),
            None,
            rev(Tid(1), a, None),
            Ok((None, None)),
        ),
        // Modified later with other data.
        (
            rev(Tid(2), b, None),
            Some(rev(Tid(1), a, None)),
            rev(Tid(3), Some("c"), None),
            Err(UNDO_MODIFIED_LATER),
        ),
        // Created, then modified later.
        (
            rev(Tid(1), a, None),
            None,
            rev(Tid(3), Some("c"), None),
            Err(UNDO_ADD_CONFLICT),
        ),
        // Modified later, but to identical bytes: allowed.
        (
            rev(Tid(2), b, None),
            Some(rev(Tid(1), a, None)),
            rev(Tid(3), b, None),
            Ok((a, Some(Tid(1)))),
        ),
        // The current record points back at the undone one (a redo of an
        // undo of it): allowed without comparing.
        (
            rev(Tid(2), b, None),
            Some(rev(Tid(1), a, None)),
            rev(Tid(4), b, Some(Tid(2))),
            Ok((a, Some(Tid(1)))),
        ),
        // Current is deleted: the data cannot be compared.
        (
            rev(Tid(2), b, None),
            Some(rev(Tid(1), a, None)),
            rev(Tid(3), None, None),
            Err(UNDO_LOADBACK_FAILED),
        ),
        // Undoing an undone creation that is no longer current.
        (
            rev(Tid(2), None, None),
            Some(rev(Tid(1), a, None)),
            rev(Tid(3), a, None),
            Err(UNDO_LOADBACK_FAILED),
        ),
        // Redo of an undone creation (it is current): back to pre.
        (
            rev(Tid(2), None, None),
            Some(rev(Tid(1), a, Some(Tid(0)))),
            rev(Tid(2), None, None),
            Ok((a, Some(Tid(1)))),
        ),
        // Pre has no data: the undo record points at it, without data.
        (
            rev(Tid(3), a, None),
            Some(rev(Tid(2), None, None)),
            rev(Tid(3), a, None),
            Ok((None, Some(Tid(2)))),
        ),
        // Staged current (from an earlier undo in the same transaction)
        // pointing at the undone record.
        (
            rev(Tid(2), b, None),
            Some(rev(Tid(1), a, None)),
            rev(Tid(9), b, Some(Tid(2))),
            Ok((a, Some(Tid(1)))),
        ),
    ];
    for (i, (undone, pre, cur, want)) in cases.into_iter().enumerate() {
        let got = undo_record(&undone, pre.as_ref(), &cur);
        let want = want.map(|(data, dt)| (data.map(d), dt));
        assert_eq!(got, want, "case {i}");
    }
}

#[test]
fn check_undo_target_table() {
    let entry = |tid: Tid, status: u8| TxnEntry {
        tid,
        status,
        meta: TxnMeta::default(),
        records: vec![],
    };
    let normal = entry(t(5), b' ');
    let packed = entry(t(5), b'p');
    let cases: Vec<(Option<&TxnEntry>, Option<Tid>, Option<&str>)> = vec![
        (Some(&normal), None, None),
        (Some(&normal), Some(t(4)), None),
        (Some(&normal), Some(t(6)), Some(UNDO_INVALID_TXN)),
        (None, None, Some(UNDO_INVALID_TXN)),
        (Some(&packed), Some(t(5)), Some(UNDO_NOT_UNDOABLE)),
        (Some(&packed), None, Some(UNDO_NOT_UNDOABLE)),
    ];
    for (e, last_packed, want) in cases {
        let got = check_undo_target(e, t(5), last_packed).map(|e| e.tid);
        let want = match want {
            None => Ok(t(5)),
            Some(m) => Err(undo_err(m, None)),
        };
        assert_eq!(got, want, "{e:?} {last_packed:?}");
    }
}

#[test]
fn undo_window_stops_at_packed() {
    let e = |n: u64, status: u8| TxnEntry {
        tid: Tid(n),
        status,
        meta: TxnMeta::default(),
        records: vec![],
    };
    let newest_first = [e(6, b' '), e(5, b'u'), e(4, b' '), e(3, b'p'), e(2, b' ')];
    let got: Vec<Tid> = undo_window(newest_first.iter(), 0, 100)
        .into_iter()
        .map(|u| u.tid)
        .collect();
    assert_eq!(got, vec![Tid(6), Tid(4)]);
    let got: Vec<Tid> = undo_window(newest_first.iter(), 1, 100)
        .into_iter()
        .map(|u| u.tid)
        .collect();
    assert_eq!(got, vec![Tid(4)]);
}

// -- iteration --------------------------------------------------------------

// -- restore ------------------------------------------------------------------

#[test]
fn restore_backpointer_table() {
    let with = rev(Tid(1), Some("a"), None);
    let without = rev(Tid(2), None, None);
    type Case<'a> = (
        Option<&'a Revision>,
        Option<&'a str>,
        (Option<&'a str>, Option<Tid>),
    );
    let cases: Vec<Case> = vec![
        (None, Some("a"), (Some("a"), None)),
        (None, None, (None, None)),
        (Some(&with), Some("a"), (Some("a"), Some(Tid(1)))),
        (Some(&with), Some("other"), (Some("other"), None)),
        (Some(&with), None, (None, None)),
        (Some(&without), None, (None, Some(Tid(2)))),
        (Some(&without), Some("a"), (Some("a"), None)),
    ];
    for (prev, data, (want_data, want_txn)) in cases {
        let got = restore_backpointer(prev, &data.map(d));
        assert_eq!(got, (want_data.map(d), want_txn), "{prev:?} {data:?}");
    }
}

// -- pack -------------------------------------------------------------------

#[test]
fn pack_cut_table() {
    let revs = vec![
        rev(Tid(10), Some("a"), None),
        rev(Tid(20), Some("b"), Some(Tid(10))),
        rev(Tid(30), None, None),
        rev(Tid(40), Some("d"), None),
    ];
    let cut = |drop, resolve| PackCut { drop, resolve };
    let cases = [
        (Tid(5), cut(0, false)),
        (Tid(10), cut(0, false)),
        (Tid(15), cut(0, false)),
        (Tid(20), cut(1, true)),
        (Tid(25), cut(1, true)),
        (Tid(30), cut(3, false)), // at-pack revision has no data: dropped
        (Tid(40), cut(3, false)),
        (Tid::MAX, cut(3, false)),
    ];
    for (packtid, want) in cases {
        assert_eq!(pack_cut(&revs, packtid), want, "pack at {packtid}");
    }
    let gone = vec![rev(Tid(10), Some("a"), None), rev(Tid(20), None, None)];
    assert_eq!(pack_cut(&gone, Tid(25)), cut(2, false));
    assert_eq!(pack_cut(&[], Tid(25)), cut(0, false));
}

// -- pack with garbage collection ----------------------------------------

#[test]
fn pack_keep_table() {
    let revs = vec![
        rev(Tid(10), Some("a"), None),
        rev(Tid(20), Some("b"), None),
        rev(Tid(30), Some("c"), None),
    ];
    let none = |_: Tid| None;
    assert_eq!(pack_keep(&revs, Tid(25), none), vec![false, true, true]);
    assert_eq!(pack_keep(&revs, Tid(5), none), vec![true, true, true]);
    let gc_drop = |_: Tid| Some(false);
    assert_eq!(pack_keep(&revs, Tid(25), gc_drop), vec![false, false, true]);
    let gc_first = |t: Tid| Some(t == Tid(10));
    assert_eq!(pack_keep(&revs, Tid(25), gc_first), vec![true, false, true]);
    assert_eq!(
        pack_keep(&revs, Tid::MAX, gc_first),
        vec![true, false, false]
    );
    assert_eq!(pack_keep(&[], Tid(25), gc_first), Vec::<bool>::new());
}

#[test]
fn current_at_table() {
    let revs = vec![
        rev(Tid(10), Some("a"), None),
        rev(Tid(20), None, None),
        rev(Tid(30), Some("c"), Some(Tid(10))),
    ];
    let cases = [
        (Tid(5), None),
        (Tid(10), Some((Tid(10), d("a")))),
        (Tid(25), None),
        (Tid(30), Some((Tid(30), d("c")))),
    ];
    for (packtid, want) in cases {
        assert_eq!(current_at(&revs, packtid), want, "{packtid}");
    }
}

// -- concurrency --------------------------------------------------------------
