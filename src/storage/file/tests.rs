//! Unit tests of the file storage: the storage contract through the shared
//! suite (`storage::conformance`), its own pure decisions (tables; the
//! shared ones are tested in `storage::rules`), what only a file has (the
//! file's bytes, the index file, the lock, reopening, crash recovery,
//! damage, disk-full, fsync failures, group commit, the page cache, pack
//! into a new file), and a differential run against the memory storage
//! (same operations, same answers).

use super::format::TXN_HDR_LEN;
use super::*;
use crate::storage::conformance::{conformance_suite, Kind};
use crate::storage::memory::MemoryStorage;
use crate::storage::testutil::{
    at, commit, commit_txn, d, o, records, restore_txn, revisions, store, t, txn, undo, undo_tids,
};
use crate::storage::Op;

struct Tmp {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn tmp() -> Tmp {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("Data.fs");
    Tmp { _dir: dir, path }
}

fn open(p: &Path) -> FileStorage {
    FileStorage::open(p, FileOptions::default()).expect("open")
}

fn open_ro(p: &Path) -> FileStorage {
    FileStorage::open(
        p,
        FileOptions {
            read_only: true,
            ..FileOptions::default()
        },
    )
    .expect("open read-only")
}

/// The file storage for the conformance suite.
struct FileKind;

impl Kind for FileKind {
    type S = FileStorage;
    const SIZE_IS_DATA: bool = false;
    /// A read-only storage opens an empty file created for it.
    fn open(path: &Path, read_only: bool) -> FileStorage {
        if read_only {
            open(path).close();
            open_ro(path)
        } else {
            open(path)
        }
    }
    fn name(path: &Path) -> String {
        path.display().to_string()
    }
}

conformance_suite!(FileKind);

fn value(s: &dyn Storage, oid: u64) -> String {
    match s.load_before(o(oid), Tid::MAX) {
        Ok(Some(l)) => String::from_utf8_lossy(&l.data).into_owned(),
        Ok(None) => "None".to_string(),
        Err(e) => format!("{e:?}"),
    }
}

// -- pure decisions -------------------------------------------------------

#[test]
fn restore_payload_table() {
    let a = d("a");
    let b = d("b");
    type Case<'a> = (Option<(u64, Option<&'a Data>)>, Option<Data>, Payload);
    let cases: Vec<Case> = vec![
        (None, Some(a.clone()), Payload::Data(a.clone())),
        (None, None, Payload::Back(0)),
        (Some((7, Some(&a))), Some(a.clone()), Payload::Back(7)),
        (
            Some((7, Some(&a))),
            Some(b.clone()),
            Payload::Data(b.clone()),
        ),
        (Some((7, None)), None, Payload::Back(7)),
        (Some((7, Some(&a))), None, Payload::Back(0)),
        (Some((7, None)), Some(a.clone()), Payload::Data(a.clone())),
    ];
    for (i, (prev, data, want)) in cases.into_iter().enumerate() {
        assert_eq!(restore_payload(prev, &data), want, "case {i}");
    }
}

// -- the storage ----------------------------------------------------------

/// An empty file is the magic alone, and stays so through a pack and an
/// abort (the empty storage's answers are `conformance::empty_storage`).
#[test]
fn empty_storage_and_reopen() {
    let tp = tmp();
    let s = open(&tp.path);
    assert_eq!(
        s.size_info(),
        SizeInfo {
            objects: 0,
            bytes: 4
        }
    );
    assert_eq!(s.pack(at(100, 0.0), true), Ok(()));
    s.tpc_abort();
    s.close();
    drop(s);
    assert_eq!(std::fs::read(&tp.path).expect("read"), b"FS30");
    let s = open(&tp.path);
    assert_eq!(s.last_transaction(), Ok(Tid::ZERO));
}

#[test]
fn second_writer_in_this_process_is_refused() {
    let tp = tmp();
    let _s = open(&tp.path);
    let e = FileStorage::open(&tp.path, FileOptions::default()).err();
    let msg = format!("{e:?}");
    assert!(msg.contains("Data.fs.lock"), "{msg}");
    // Read-only opens take no lock.
    let r = open_ro(&tp.path);
    assert!(r.is_read_only());
}

#[test]
fn commits_loads_and_reopen() {
    let tp = tmp();
    let s = open(&tp.path);
    let a = commit(&s, Some(t(1)), vec![store(1, Tid::ZERO, "a")]);
    let b = commit(
        &s,
        Some(t(2)),
        vec![store(1, a, "b"), store(2, Tid::ZERO, "x")],
    );
    let c = commit(&s, Some(t(4)), vec![store(1, b, "c")]);
    let check = |s: &FileStorage| {
        assert_eq!(s.last_transaction(), Ok(c));
        let lb = |before| {
            s.load_before(o(1), before)
                .map(|l| l.map(|l| (l.data, l.start, l.end)))
        };
        assert_eq!(lb(t(1)), Ok(None));
        assert_eq!(lb(t(2)), Ok(Some((d("a"), a, Some(b)))));
        assert_eq!(lb(t(3)), Ok(Some((d("b"), b, Some(c)))));
        assert_eq!(lb(Tid::MAX), Ok(Some((d("c"), c, None))));
        assert_eq!(s.load_serial(o(1), b), Ok(d("b")));
        assert_eq!(s.load_serial(o(1), t(3)), Err(Error::PosKey(o(1))));
        assert_eq!(s.load_serial(o(2), a), Err(Error::PosKey(o(2))));
        let h: Vec<(Tid, u64)> = s
            .history(o(1), 10)
            .expect("history")
            .iter()
            .map(|e| (e.tid, e.size))
            .collect();
        assert_eq!(h, vec![(c, 1), (b, 1), (a, 1)]);
        assert_eq!(s.history(o(1), 2).expect("history").len(), 2);
        assert_eq!(s.history(o(1), 0), Ok(vec![]));
        assert_eq!(
            s.record_iternext(None),
            Ok(Some((o(1), c, d("c"), Some(o(2)))))
        );
        assert_eq!(
            s.record_iternext(Some(o(2))),
            Ok(Some((o(2), b, d("x"), None)))
        );
        assert_eq!(s.record_iternext(Some(o(3))), Ok(None));
        assert_eq!(s.size_info().objects, 2);
        assert_eq!(undo_tids(s), vec![c, b, a]);
        let it: Vec<Tid> = records(s).iter().map(|r| r.tid).collect();
        assert_eq!(it, vec![a, b, c]);
        let it: Vec<Tid> = s
            .iterator(Some(t(2)), Some(t(3)))
            .expect("iterator")
            .map(|r| r.expect("txn").tid)
            .collect();
        assert_eq!(it, vec![b]);
        assert_eq!(s.iterator(Some(t(3)), Some(t(2))).expect("it").count(), 0);
        assert_eq!(s.iterator(Some(t(5)), None).expect("it").count(), 0);
    };
    check(&s);
    assert_eq!(s.new_oids(2), Ok(vec![o(3), o(4)]));
    s.close();
    drop(s);
    // Reopen with the index file, then without it.
    let s = open(&tp.path);
    check(&s);
    assert_eq!(s.new_oids(1), Ok(vec![o(3)]));
    drop(s);
    std::fs::remove_file(with_suffix(&tp.path, ".zeoraid-index")).expect("rm index");
    let s = open(&tp.path);
    check(&s);
    drop(s);
    // A damaged index file is ignored.
    std::fs::write(with_suffix(&tp.path, ".zeoraid-index"), b"ZRAIDIX1garbage").expect("w");
    check(&open(&tp.path));
    check(&open_ro(&tp.path));
}

/// What the format refuses in transaction metadata: an extension that is
/// not a msgpack map of strings, a user name longer than 65535 bytes (the
/// round trip is `conformance::extension_round_trips`).
#[test]
fn metadata_the_format_cannot_hold_is_refused() {
    let tp = tmp();
    let s = open(&tp.path);
    let mut bad = txn(None, vec![]);
    bad.meta.extension = vec![0x01];
    assert!(matches!(s.tpc_vote(&bad), Err(Error::Value(_))));
    let mut long = txn(None, vec![]);
    long.meta.user = vec![b'u'; 70_000];
    assert!(matches!(s.tpc_vote(&long), Err(Error::Transaction(_))));
    assert!(matches!(s.tpc_finish(), Err(Error::Transaction(_))));
}

/// `checkCurrentSerialInTransaction` on an object deleted and stored again
/// (the record read is the new one), and empty data, which the format
/// cannot hold. Conflicts, deletes and the other checks are
/// `conformance::{conflicts_are_collected_and_stage_nothing,
/// delete_semantics, check_current_table}`.
#[test]
fn conflicts_deletes_and_check_current() {
    let tp = tmp();
    let s = open(&tp.path);
    let a = commit(&s, None, vec![store(1, Tid::ZERO, "a")]);
    let b = commit(&s, None, vec![store(1, a, "b")]);
    let del = commit(
        &s,
        None,
        vec![Op::Delete {
            oid: o(1),
            serial: b,
        }],
    );
    let e = s.tpc_vote(&txn(
        None,
        vec![Op::CheckCurrent {
            oid: o(1),
            serial: del,
        }],
    ));
    assert_eq!(e, Err(Error::PosKey(o(1))));
    let c = commit(&s, None, vec![store(1, del, "again")]);
    let e = s.tpc_vote(&txn(
        None,
        vec![Op::CheckCurrent {
            oid: o(1),
            serial: b,
        }],
    ));
    assert!(
        matches!(
            e,
            Err(Error::Conflict {
                read_conflict: true,
                ..
            })
        ),
        "{e:?}"
    );
    commit(
        &s,
        None,
        vec![Op::CheckCurrent {
            oid: o(1),
            serial: c,
        }],
    );
    assert!(matches!(
        s.tpc_vote(&txn(None, vec![store(5, Tid::ZERO, "")])),
        Err(Error::Value(_))
    ));
}

/// The vote writes the transaction, the abort truncates it away (what
/// loads and iteration see meanwhile is
/// `conformance::prepared_is_invisible_until_finish` and
/// `conformance::abort_leaves_nothing`).
#[test]
fn abort_truncates_and_prepared_is_invisible() {
    let tp = tmp();
    let s = open(&tp.path);
    commit(&s, None, vec![store(1, Tid::ZERO, "a")]);
    let size = std::fs::metadata(&tp.path).expect("meta").len();
    let v = s.tpc_vote(&txn(None, vec![store(2, Tid::ZERO, "b")]));
    assert!(matches!(v, Ok(Vote::Prepared { .. })));
    assert!(std::fs::metadata(&tp.path).expect("meta").len() > size);
    s.tpc_abort();
    assert_eq!(std::fs::metadata(&tp.path).expect("meta").len(), size);
    commit(&s, None, vec![store(2, Tid::ZERO, "b")]);
    assert_eq!(value(&s, 2), "b");
}

#[test]
fn disk_full_at_vote_truncates_and_recovers() {
    let tp = tmp();
    let s = open(&tp.path);
    commit(&s, None, vec![store(1, Tid::ZERO, "a")]);
    let size = std::fs::metadata(&tp.path).expect("meta").len();
    s.fail_writes.store(true, Ordering::Relaxed);
    let e = s.tpc_vote(&txn(None, vec![store(2, Tid::ZERO, "b")]));
    assert!(
        matches!(&e, Err(Error::Io(m)) if m.contains("Data.fs")),
        "{e:?}"
    );
    assert_eq!(std::fs::metadata(&tp.path).expect("meta").len(), size);
    assert!(matches!(s.tpc_finish(), Err(Error::Transaction(_))));
    s.fail_writes.store(false, Ordering::Relaxed);
    let b = commit(&s, None, vec![store(2, Tid::ZERO, "b")]);
    drop(s);
    let s = open(&tp.path);
    assert_eq!(s.last_transaction(), Ok(b));
    assert_eq!(value(&s, 2), "b");
}

#[test]
fn index_file_is_saved_in_the_background() {
    let tp = tmp();
    let mut s = open(&tp.path);
    s.index_save_every = 3;
    let ix = with_suffix(&tp.path, ".zeoraid-index");
    let img = |p: &Path| {
        std::fs::read(p)
            .ok()
            .and_then(|b| index::decode_index_file(&b).ok())
    };
    let first = img(&ix).map(|(_, pos, _)| pos);
    assert_eq!(first, Some(4)); // written by the first open's scan
    let mut serial = Tid::ZERO;
    for i in 0..3 {
        serial = commit(&s, None, vec![store(1, serial, &format!("{i}"))]);
    }
    s.join_saver();
    let (saved, pos, tid) = img(&ix).expect("index file");
    assert_eq!((pos, tid), (s.read().pos, serial));
    assert_eq!(saved, s.read().index);
    // Without close, the saved index is used and the tail scanned.
    let last = commit(&s, None, vec![store(2, Tid::ZERO, "x")]);
    drop(s);
    let s = open(&tp.path);
    assert_eq!(s.last_transaction(), Ok(last));
    assert_eq!(value(&s, 1), "2");
    assert_eq!(value(&s, 2), "x");
}

#[test]
fn an_index_file_that_disagrees_with_the_data_is_ignored() {
    let tp = tmp();
    let ix = with_suffix(&tp.path, ".zeoraid-index");
    let s = open(&tp.path);
    let a = commit(
        &s,
        None,
        vec![store(1, Tid::ZERO, "a"), store(2, Tid::ZERO, "b")],
    );
    commit(&s, None, vec![store(1, a, "a2")]);
    s.close();
    drop(s);
    let (mut index, pos, tid) =
        index::decode_index_file(&std::fs::read(&ix).expect("read")).expect("decode");
    let (p2, _) = index.get(o(2)).expect("oid 2");
    // oid 1 (written by the last transaction) pointing at oid 2's record.
    index.set(o(1), p2, true);
    std::fs::write(&ix, index::encode_index_file(&index, pos, tid)).expect("write");
    let s = open(&tp.path);
    assert_eq!(value(&s, 1), "a2");
    assert_eq!(value(&s, 2), "b");
    drop(s);
    // A saved position beyond the file, or a wrong tid, are refused too.
    for (p, t) in [(pos + 1000, tid), (pos, Tid(tid.0 - 1))] {
        std::fs::write(&ix, index::encode_index_file(&Index::default(), p, t)).expect("w");
        assert_eq!(value(&open(&tp.path), 1), "a2");
    }
}

fn three_commits(p: &Path) -> (Vec<Tid>, Vec<u64>) {
    let s = open(p);
    let mut tids = Vec::new();
    let mut ends = Vec::new();
    let mut serial = Tid::ZERO;
    for i in 0..3 {
        serial = commit(&s, None, vec![store(1, serial, &format!("v{i}"))]);
        tids.push(serial);
        ends.push(std::fs::metadata(p).expect("meta").len());
    }
    s.close();
    (tids, ends)
}

#[test]
fn crash_recovery_truncated_and_checkpoint_tails() {
    for cut in [1u64, 10, 23, 30, 60] {
        let tp = tmp();
        let (tids, ends) = three_commits(&tp.path);
        // Truncate inside the last transaction.
        let f = OpenOptions::new().write(true).open(&tp.path).expect("open");
        f.set_len(ends[1] + cut).expect("truncate");
        drop(f);
        let s = open(&tp.path);
        assert_eq!(s.last_transaction(), Ok(tids[1]), "cut {cut}");
        assert_eq!(value(&s, 1), "v1");
        assert_eq!(std::fs::metadata(&tp.path).expect("m").len(), ends[1]);
        assert!(with_suffix(&tp.path, ".tr0").exists());
        commit(&s, None, vec![store(1, tids[1], "after")]);
        drop(s);
        assert_eq!(value(&open(&tp.path), 1), "after");
    }
    // A trailing transaction still marked 'c'.
    let tp = tmp();
    let (tids, ends) = three_commits(&tp.path);
    let f = OpenOptions::new().write(true).open(&tp.path).expect("open");
    f.write_all_at(b"c", ends[1] + STATUS_OFFSET)
        .expect("write");
    drop(f);
    // Read-only: sees the prefix, modifies nothing.
    let before = std::fs::read(&tp.path).expect("read");
    let r = open_ro(&tp.path);
    assert_eq!(r.last_transaction(), Ok(tids[1]));
    assert!(matches!(
        r.tpc_vote(&txn(None, vec![])),
        Err(Error::ReadOnly)
    ));
    assert_eq!(r.new_oids(1), Err(Error::ReadOnly));
    assert_eq!(r.pack(at(0, 0.0), false), Err(Error::ReadOnly));
    drop(r);
    assert_eq!(std::fs::read(&tp.path).expect("read"), before);
    let s = open(&tp.path);
    assert_eq!(s.last_transaction(), Ok(tids[1]));
    assert_eq!(std::fs::metadata(&tp.path).expect("m").len(), ends[1]);
}

#[test]
fn damage_is_an_error_naming_file_and_position() {
    let tp = tmp();
    let (_, ends) = three_commits(&tp.path);
    let _ = std::fs::remove_file(with_suffix(&tp.path, ".zeoraid-index"));
    let good = std::fs::read(&tp.path).expect("read");
    let name = tp.path.display().to_string();
    // (what, byte to change, new value, expected position in the message)
    let first_rec = 4 + TXN_HDR_LEN + 1 + 1; // user "u", description "t"
    let cases: Vec<(&str, u64, u8, u64)> = vec![
        ("tloc of a data record", first_rec + 31, 0x55, first_rec),
        ("redundant length", ends[0] - 1, 0x77, ends[0] - 8),
        ("header length of a middle txn", ends[0] + 15, 0x01, ends[0]),
    ];
    for (what, at, v, pos) in cases {
        let mut b = good.clone();
        b[at as usize] = v;
        std::fs::write(&tp.path, &b).expect("write");
        let e = FileStorage::open(&tp.path, FileOptions::default()).err();
        let msg = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains(&name) && msg.contains(&format!("at byte {pos}")),
            "{what}: {msg}"
        );
        // Nothing was written.
        assert_eq!(std::fs::read(&tp.path).expect("read"), b, "{what}");
    }
    std::fs::write(&tp.path, b"FS20").expect("write");
    let e = FileStorage::open(&tp.path, FileOptions::default()).err();
    assert!(format!("{e:?}").contains("bad magic"), "{e:?}");
    std::fs::write(&tp.path, b"FS").expect("write");
    assert!(FileStorage::open(&tp.path, FileOptions::default()).is_err());
    // An empty file read-only is an empty storage.
    std::fs::write(&tp.path, b"").expect("write");
    assert_eq!(open_ro(&tp.path).last_transaction(), Ok(Tid::ZERO));
    assert_eq!(std::fs::read(&tp.path).expect("read"), b"");
    let missing = tp.path.with_file_name("missing.fs");
    assert!(FileStorage::open(
        &missing,
        FileOptions {
            read_only: true,
            ..FileOptions::default()
        }
    )
    .is_err());
    assert!(!missing.exists());
    assert!(FileStorage::open(
        &missing,
        FileOptions {
            create: false,
            ..FileOptions::default()
        }
    )
    .is_err());
}

#[test]
fn corrupted_bytes_never_panic() {
    let tp = tmp();
    {
        let s = open(&tp.path);
        let a = commit(
            &s,
            None,
            vec![store(1, Tid::ZERO, "a"), store(2, Tid::ZERO, "b")],
        );
        let b = commit(&s, None, vec![store(1, a, "a2")]);
        commit(&s, None, vec![undo(b)]);
        commit(
            &s,
            None,
            vec![Op::Delete {
                oid: o(2),
                serial: a,
            }],
        );
        s.close();
    }
    let _ = std::fs::remove_file(with_suffix(&tp.path, ".zeoraid-index"));
    let good = std::fs::read(&tp.path).expect("read");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..400 {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let at = (x >> 33) as usize % good.len();
        let mut b = good.clone();
        b[at] = (x >> 13) as u8;
        std::fs::write(&tp.path, &b).expect("write");
        // Read-only: never modifies the file; errors are fine, panics are not.
        if let Ok(s) = FileStorage::open(
            &tp.path,
            FileOptions {
                read_only: true,
                ..FileOptions::default()
            },
        ) {
            if let Ok(it) = s.iterator(None, None) {
                for r in it {
                    let _ = r;
                }
            }
            for oid in 0..4 {
                let _ = s.load_before(o(oid), Tid::MAX);
                let _ = s.history(o(oid), 10);
            }
            let _ = s.undo_log(0, 10);
            let _ = s.record_iternext(None);
        }
        assert_eq!(std::fs::read(&tp.path).expect("read"), b);
    }
}

/// Undo records are backpointers, and survive a reopen (the undo decisions
/// and states are `conformance::simple_transactional_undo` and the undo
/// tests after it).
#[test]
fn undo_through_backpointers() {
    let tp = tmp();
    let s = open(&tp.path);
    let r1 = commit(&s, None, vec![store(1, Tid::ZERO, "23")]);
    let r2 = commit(&s, None, vec![store(1, r1, "24")]);
    let _r3 = commit(&s, None, vec![store(1, r2, "25")]);
    let u1 = commit(&s, None, vec![undo(undo_tids(&s)[0])]);
    let last = records(&s).pop().expect("txn");
    assert_eq!(
        last.records,
        vec![DataRecord {
            oid: o(1),
            tid: u1,
            data: Some(d("24")),
            data_txn: Some(r2),
        }]
    );
    commit(&s, None, vec![undo(undo_tids(&s)[2])]);
    commit(&s, None, vec![undo(undo_tids(&s)[4])]);
    let last = records(&s).pop().expect("txn");
    assert_eq!(
        (last.records[0].data.clone(), last.records[0].data_txn),
        (None, None)
    );
    commit(&s, None, vec![undo(undo_tids(&s)[0])]);
    assert_eq!(value(&s, 1), "23");
    // Everything survives a reopen.
    let before = records(&s);
    drop(s);
    assert_eq!(records(&open(&tp.path)), before);
}

/// A memory storage's history restored into a file storage reads back the
/// same (the restore checks are `conformance::restore_checks`).
#[test]
fn restore_copies_with_backpointers() {
    let src = MemoryStorage::new("src", false);
    let a = commit(&src, Some(t(1)), vec![store(1, Tid::ZERO, "a")]);
    let b = commit(&src, Some(t(2)), vec![store(1, a, "b")]);
    commit(&src, Some(t(3)), vec![undo(b)]);
    commit(&src, Some(t(4)), vec![undo(a)]);
    let tp = tmp();
    let dst = open(&tp.path);
    for rec in records(&src) {
        commit_txn(&dst, restore_txn(&rec));
    }
    assert_eq!(records(&dst), records(&src));
}

/// With a later transaction of another object (so a pack "tomorrow" is
/// not clamped to the packed object's last revision): the revisions kept,
/// `Data.fs.old`, and the packed file after a reopen (the full table of
/// pack times is `conformance::pack_keeps_exactly_the_right_revisions`).
#[test]
fn pack_keeps_exactly_the_right_revisions() {
    let cases: &[(f64, &[u32])] = &[
        (at(5, 0.0), &[10, 20, 30, 40, 50]),
        (at(20, 0.5), &[20, 30, 40, 50]),
        (at(39, 0.0), &[30, 40, 50]),
        (at(500, 0.0), &[50]),
    ];
    for (packtime, kept) in cases {
        let tp = tmp();
        let s = open(&tp.path);
        let mut serial = Tid::ZERO;
        for i in 1..=5 {
            serial = commit(&s, Some(t(i * 10)), vec![store(1, serial, &i.to_string())]);
        }
        commit(&s, Some(t(60)), vec![store(2, Tid::ZERO, "other")]);
        s.pack(*packtime, false).expect("pack");
        let mut kept: Vec<Tid> = kept.iter().map(|i| t(*i)).collect();
        assert_eq!(revisions(&s, 1), kept, "pack at {packtime}");
        assert_eq!(value(&s, 1), "5");
        assert_eq!(value(&s, 2), "other");
        kept.push(t(60));
        let txns: Vec<Tid> = records(&s).iter().map(|r| r.tid).collect();
        assert_eq!(txns, kept);
        let old = with_suffix(&tp.path, ".old");
        assert_eq!(old.exists(), *packtime > at(10, 0.0), "{packtime}");
        let after = records(&s);
        drop(s);
        assert_eq!(records(&open(&tp.path)), after);
    }
}

/// `conformance::commits_continue_during_pack`, then the packed file
/// with the commits made during the pack survives a reopen.
#[test]
fn commits_continue_during_pack() {
    let tp = tmp();
    let s = Arc::new(open(&tp.path));
    crate::storage::conformance::commit_during_a_pack(&s);
    let before = records(s.as_ref());
    s.close();
    drop(s);
    assert_eq!(records(&open(&tp.path)), before);
}

/// `conformance::a_voted_transaction_survives_a_pack`, then the file:
/// its size is what `size_info` says, and it reopens with the same
/// transactions.
#[test]
fn a_voted_transaction_moves_with_the_pack() {
    for finish in [true, false] {
        let tp = tmp();
        let s = open(&tp.path);
        crate::storage::conformance::pack_with_a_voted_transaction(&s, finish);
        let want = records(&s);
        let size = std::fs::metadata(&tp.path).expect("m").len();
        assert_eq!(size, s.size_info().bytes);
        drop(s);
        let s = open(&tp.path);
        assert_eq!(records(&s), want);
        assert_eq!(value(&s, 2), "x");
    }
}

// -- undo merged by a conflict resolver -----------------------------------

/// An undo merged by the resolver
/// (`conformance::undo_merges_through_the_resolver`) is written as data and
/// survives a reopen.
#[test]
fn a_merged_undo_survives_a_reopen() {
    let tp = tmp();
    let s = open(&tp.path);
    let a = commit(&s, Some(t(1)), vec![store(1, Tid::ZERO, "1")]);
    let b = commit(&s, Some(t(2)), vec![store(1, a, "2")]);
    commit(&s, Some(t(3)), vec![store(1, b, "3")]);
    s.set_conflict_resolver(Arc::new(Merged));
    commit(&s, Some(t(4)), vec![undo(b)]);
    assert_eq!(value(&s, 1), "merged");
    drop(s);
    assert_eq!(value(&open(&tp.path), 1), "merged");
}

/// Answers "merged".
struct Merged;

impl crate::storage::resolve::ConflictResolver for Merged {
    fn resolve(&self, _: Oid, _: &Data, _: &Data, _: &Data) -> std::result::Result<Data, String> {
        Ok(d("merged"))
    }
}

// -- group commit ----------------------------------------------------------

fn vote_ok(s: &FileStorage, tx: Txn) -> Tid {
    match s.tpc_vote(&tx) {
        Ok(Vote::Prepared { tid, .. }) => tid,
        other => panic!("expected Prepared, got {other:?}"),
    }
}

#[test]
fn logged_transactions_are_seen_by_votes_and_not_by_loads() {
    let tp = tmp();
    let s = open(&tp.path);
    let a = commit(&s, Some(t(1)), vec![store(1, Tid::ZERO, "a")]);
    let b = vote_ok(
        &s,
        txn(Some(t(2)), vec![store(1, a, "b"), store(2, Tid::ZERO, "x")]),
    );
    assert_eq!(s.finish_log(), Ok(b));
    // Not published: loads, the last transaction and iteration are as before.
    assert_eq!(value(&s, 1), "a");
    assert_eq!(value(&s, 2), format!("{:?}", Error::PosKey(o(2))));
    assert_eq!(s.last_transaction(), Ok(a));
    assert_eq!(records(&s).len(), 1);
    // A client resolving a conflict with it can load it by serial.
    assert_eq!(s.load_serial(o(1), b), Ok(d("b")));
    // The next vote sees it: a stale serial conflicts with b ...
    match s.tpc_vote(&txn(None, vec![store(1, a, "c")])) {
        Ok(Vote::Conflicts(c)) => assert_eq!((c[0].oid, c[0].committed), (o(1), b)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // ... and a current one is written after it, with a later tid.
    let c = vote_ok(&s, txn(None, vec![store(1, b, "c")]));
    assert!(c > b);
    assert_eq!(s.finish_log(), Ok(c));
    s.make_durable(c).expect("durable");
    s.publish(b);
    assert_eq!((value(&s, 1), s.last_transaction()), ("b".into(), Ok(b)));
    s.publish(c);
    assert_eq!((value(&s, 1), s.last_transaction()), ("c".into(), Ok(c)));
    assert_eq!(value(&s, 2), "x");
    let l = s.load_before(o(1), c).expect("load").expect("some");
    assert_eq!((l.data, l.start, l.end), (d("b"), b, Some(c)));
    let want = records(&s);
    assert_eq!(want.len(), 3);
    drop(s);
    let s = open(&tp.path);
    assert_eq!(records(&s), want);
    assert_eq!(value(&s, 1), "c");
}

#[test]
fn a_failed_fsync_refuses_commits_until_reopened() {
    let tp = tmp();
    let s = open(&tp.path);
    let a = commit(&s, None, vec![store(1, Tid::ZERO, "a")]);
    let b = vote_ok(&s, txn(None, vec![store(1, a, "b")]));
    assert_eq!(s.finish_log(), Ok(b));
    s.fail_syncs.store(true, Ordering::Relaxed);
    let e = s.make_durable(b);
    assert!(
        matches!(&e, Err(Error::Io(m)) if m.contains("Data.fs") && m.contains("fsync failed") && m.contains("restarted")),
        "{e:?}"
    );
    s.fail_syncs.store(false, Ordering::Relaxed);
    // Still refused: the kernel may have dropped the pages that failed.
    assert!(matches!(s.make_durable(b), Err(Error::Io(_))));
    let v = s.tpc_vote(&txn(None, vec![store(2, Tid::ZERO, "n")]));
    assert!(
        matches!(&v, Err(Error::Io(m)) if m.contains("fsync failed")),
        "{v:?}"
    );
    // Reads go on, showing what was acknowledged.
    assert_eq!(value(&s, 1), "a");
    drop(s);
    // Reopened, the file is checked and commits work again.
    let s = open(&tp.path);
    let now = s.last_transaction().expect("last");
    commit(&s, None, vec![store(2, Tid::ZERO, "n")]);
    assert_eq!(value(&s, 2), "n");
    assert!(now == b || now == a);
}

#[test]
fn pack_waits_for_logged_transactions_to_be_published() {
    let tp = tmp();
    let s = Arc::new(open(&tp.path));
    let a = commit(s.as_ref(), Some(t(1)), vec![store(1, Tid::ZERO, "a")]);
    let b = commit(s.as_ref(), Some(t(2)), vec![store(1, a, "b")]);
    let c = vote_ok(
        &s,
        txn(Some(t(3)), vec![store(1, b, "c"), store(2, Tid::ZERO, "x")]),
    );
    assert_eq!(s.finish_log(), Ok(c));
    let publisher = {
        let s = s.clone();
        std::thread::Builder::new()
            .name("publish-later".into())
            .spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(200));
                s.make_durable(c).expect("durable");
                s.publish(c);
            })
            .expect("spawn")
    };
    let started = std::time::Instant::now();
    s.pack(at(2, 0.5), false).expect("pack");
    assert!(started.elapsed() >= std::time::Duration::from_millis(150));
    publisher.join().expect("join");
    assert_eq!(s.load_serial(o(1), a), Err(Error::PosKey(o(1))));
    assert_eq!(
        (value(s.as_ref(), 1), value(s.as_ref(), 2)),
        ("c".into(), "x".into())
    );
    let d2 = commit(s.as_ref(), None, vec![store(2, c, "y")]);
    assert_eq!(value(s.as_ref(), 2), "y");
    let want = records(s.as_ref());
    assert_eq!(want.last().map(|r| r.tid), Some(d2));
    drop(s);
    assert_eq!(records(&open(&tp.path)), want);
}

#[test]
fn concurrent_finishers_share_fsyncs_and_publish_in_order() {
    // Writers log under a lock (the server's commit lock) and then make
    // their transactions durable concurrently, as the commit thread does.
    let tp = tmp();
    let s = Arc::new(open(&tp.path));
    let commit_lock = Arc::new(Mutex::new(()));
    let order = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (s, commit_lock, order) = (s.clone(), commit_lock.clone(), order.clone());
            std::thread::Builder::new()
                .name(format!("gc-writer-{w}"))
                .spawn(move || {
                    for i in 0..50u64 {
                        let tid = {
                            let _l = lock(&commit_lock);
                            vote_ok(&s, txn(None, vec![store(1 + w * 100 + i, Tid::ZERO, "v")]));
                            let tid = s.finish_log().expect("log");
                            lock(&order).push(tid);
                            tid
                        };
                        s.make_durable(tid).expect("durable");
                    }
                })
                .expect("spawn")
        })
        .collect();
    for w in writers {
        w.join().expect("join");
    }
    let tids = lock(&order).clone();
    s.publish(*tids.last().expect("tids"));
    assert_eq!(
        records(s.as_ref())
            .iter()
            .map(|r| r.tid)
            .collect::<Vec<_>>(),
        tids
    );
    assert_eq!(s.last_transaction(), Ok(*tids.last().expect("tids")));
    for w in 0..4u64 {
        for i in 0..50u64 {
            assert_eq!(value(s.as_ref(), 1 + w * 100 + i), "v");
        }
    }
}

#[test]
fn loads_without_waiting_only_when_the_page_cache_has_them() {
    // Under target/, on the disk the build uses: in a tmpfs /tmp the page
    // cache is the file and cannot be dropped.
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).expect("target dir");
    let dir = tempfile::tempdir_in(&target).expect("tempdir");
    let tp = Tmp {
        path: dir.path().join("Data.fs"),
        _dir: dir,
    };
    let s = open(&tp.path);
    let a = commit(
        &s,
        Some(t(1)),
        vec![store(1, Tid::ZERO, "a"), store(2, Tid::ZERO, "x")],
    );
    let b = commit(&s, Some(t(2)), vec![store(1, a, "b")]);
    let loaded = |oid: u64, before: Tid| s.load_before_nowait(o(oid), before);
    // The newest revision, as load_before answers it.
    assert_eq!(
        loaded(1, Tid::MAX),
        Some(Ok(Some(Loaded {
            data: d("b"),
            start: b,
            end: None
        })))
    );
    assert_eq!(loaded(1, Tid::MAX), Some(s.load_before(o(1), Tid::MAX)));
    assert_eq!(loaded(9, Tid::MAX), Some(Err(Error::PosKey(o(9)))));
    // An older revision needs the chain: not answered here.
    assert_eq!(loaded(1, b), None);
    // A record without data of its own (an undo's backpointer): neither.
    commit(&s, Some(t(3)), vec![undo(b)]);
    assert_eq!(loaded(1, Tid::MAX), None);
    assert_eq!(value(&s, 1), "a");
    // Out of the page cache: would wait for the disk, so not answered.
    let file = File::open(&tp.path).expect("open");
    file.sync_all().expect("sync");
    // SAFETY: a plain advisory call on an open descriptor.
    let rc = unsafe {
        use std::os::fd::AsRawFd;
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED)
    };
    assert_eq!(rc, 0);
    assert_eq!(loaded(2, Tid::MAX), None);
    assert_eq!(value(&s, 2), "x");
    assert!(matches!(loaded(2, Tid::MAX), Some(Ok(Some(_)))));
}

// -- differential: file vs memory ------------------------------------------

/// Compare observations, showing the first lines that differ.
fn same(file: &str, mem: &str, ctx: &str) {
    if file == mem {
        return;
    }
    let diff: Vec<String> = file
        .lines()
        .zip(mem.lines())
        .filter(|(a, b)| a != b)
        .take(3)
        .map(|(a, b)| format!("file: {a}\nmem:  {b}"))
        .collect();
    panic!("{ctx}: file and memory differ:\n{}", diff.join("\n"));
}

/// Everything a client can observe.
fn observe(s: &dyn Storage, oids: u64) -> String {
    let mut out = String::new();
    out += &format!("last {:?}\n", s.last_transaction());
    out += &format!("objects {}\n", s.size_info().objects);
    let txns = records(s);
    for r in &txns {
        out += &format!("{r:?}\n");
    }
    out += &format!("undo {:?}\n", s.undo_log(0, 1000));
    out += &format!("undo window {:?}\n", s.undo_log(1, 3));
    for oid in 0..oids {
        out += &format!("h {oid} {:?}\n", s.history(o(oid), 1000));
        out += &format!("cur {oid} {:?}\n", s.load_before(o(oid), Tid::MAX));
        for r in &txns {
            out += &format!("lb {oid} {} {:?}\n", r.tid, s.load_before(o(oid), r.tid));
            out += &format!("ls {oid} {} {:?}\n", r.tid, s.load_serial(o(oid), r.tid));
        }
    }
    let mut next = None;
    loop {
        match s.record_iternext(next) {
            Ok(Some((oid, tid, data, following))) => {
                out += &format!("rec {oid} {tid} {data:?}\n");
                match following {
                    Some(f) => next = Some(f),
                    None => break,
                }
            }
            other => {
                out += &format!("rec end {other:?}\n");
                break;
            }
        }
    }
    out
}

/// A ZODB-like record (class pickle, then a state list) holding `tag` and
/// persistent references to `refs`, for pack's garbage collection.
fn rec(tag: &str, refs: &[u64]) -> Data {
    let mut v = b"\x80\x03cm\nK\nq\x00.\x80\x03]q\x01(".to_vec();
    v.push(b'C');
    v.push(tag.len() as u8);
    v.extend_from_slice(tag.as_bytes());
    for r in refs {
        v.push(b'C');
        v.push(8);
        v.extend_from_slice(&r.to_be_bytes());
        v.extend_from_slice(b"h\x00\x86Q");
    }
    v.extend_from_slice(b"e.");
    Arc::from(v)
}

fn gstore(oid: u64, serial: Tid, tag: &str, refs: &[u64]) -> Op {
    Op::Store {
        oid: o(oid),
        serial,
        data: rec(tag, refs),
    }
}

#[test]
fn same_answers_as_the_memory_storage() {
    for gc in [false, true] {
        differential(gc);
    }
}

fn differential(gc: bool) {
    let tp = tmp();
    let f = open(&tp.path);
    let m = MemoryStorage::new("m", false);
    let both: [&dyn Storage; 2] = [&f, &m];
    let mut step = 0u32;
    let mut next_tid = || {
        step += 1;
        Some(t(step * 10))
    };
    let cur = |s: &dyn Storage, oid: u64| {
        s.history(o(oid), 1)
            .ok()
            .and_then(|h| h.first().map(|e| e.tid))
            .unwrap_or(Tid::ZERO)
    };
    // A script: (ops builder) applied to both; results compared.
    type Script = Box<dyn Fn(&dyn Storage) -> Vec<Op>>;
    let undo_nth = |n: usize| -> Script {
        Box::new(move |s| {
            let log = undo_tids(s);
            log.get(n).map(|t| vec![undo(*t)]).unwrap_or_default()
        })
    };
    let st = |oid: u64, v: &'static str, refs: &'static [u64]| -> Script {
        Box::new(move |s| vec![gstore(oid, cur(s, oid), v, refs)])
    };
    let script: Vec<Script> = vec![
        Box::new(|_| {
            vec![
                gstore(0, Tid::ZERO, "root", &[1]),
                gstore(1, Tid::ZERO, "a1", &[]),
            ]
        }),
        st(1, "a2", &[]),
        Box::new(move |s| {
            vec![
                gstore(2, Tid::ZERO, "b1", &[]),
                gstore(1, cur(s, 1), "a3", &[2]),
            ]
        }),
        undo_nth(0),
        undo_nth(0),
        st(2, "b2", &[]),
        Box::new(move |s| {
            vec![Op::Delete {
                oid: o(2),
                serial: cur(s, 2),
            }]
        }),
        undo_nth(0),
        undo_nth(3),
        Box::new(|_| vec![gstore(3, Tid::ZERO, "c1", &[])]),
        st(0, "root2", &[1, 3]),
        undo_nth(0),
        undo_nth(0),
        st(1, "a4", &[2]),
        Box::new(move |s| {
            let log = undo_tids(s);
            vec![undo(log[0]), undo(log[1])]
        }),
        st(3, "c2", &[]),
        st(0, "root3", &[1]),
    ];
    for (i, build) in script.iter().enumerate() {
        let tid = next_tid();
        let results: Vec<String> = both
            .iter()
            .map(|s| {
                let ops = build(*s);
                let r = s.tpc_vote(&txn(tid, ops));
                let out = format!("{r:?}");
                match r {
                    Ok(Vote::Prepared { .. }) => {
                        s.tpc_finish().expect("finish");
                    }
                    _ => s.tpc_abort(),
                }
                out
            })
            .collect();
        assert_eq!(results[0], results[1], "gc {gc} step {i}");
        same(
            &observe(&f, 5),
            &observe(&m, 5),
            &format!("gc {gc} after step {i}"),
        );
    }
    let txns = records(&f);
    let backpointers = txns
        .iter()
        .flat_map(|r| &r.records)
        .filter(|r| r.data_txn.is_some());
    assert!(backpointers.count() >= 3, "the script exercises undo");
    assert!(txns
        .iter()
        .flat_map(|r| &r.records)
        .any(|r| r.data.is_none()));
    // Packs at several times, then more commits and undos.
    for p in [35u32, 75, 75, 40, 125, 165, 205] {
        for s in both {
            s.pack(at(p, 0.0), gc).expect("pack");
        }
        same(
            &observe(&f, 5),
            &observe(&m, 5),
            &format!("gc {gc} after pack at {p}"),
        );
        let tid = next_tid();
        for s in both {
            commit(s, tid, vec![gstore(4, cur(s, 4), "d", &[])]);
        }
        let tid = next_tid();
        let r: Vec<String> = both
            .iter()
            .map(|s| {
                let log = undo_tids(*s);
                let ops = log.get(2).map(|t| vec![undo(*t)]).unwrap_or_default();
                let r = format!("{:?}", s.tpc_vote(&txn(tid, ops)));
                if s.tpc_finish().is_err() {
                    s.tpc_abort();
                }
                r
            })
            .collect();
        assert_eq!(r[0], r[1], "gc {gc} undo after pack at {p}");
        assert_eq!(
            observe(&f, 5),
            observe(&m, 5),
            "gc {gc} after undo after pack at {p}"
        );
    }
    let statuses: Vec<u8> = records(&f).iter().map(|r| r.status).collect();
    assert!(
        statuses.contains(&b'p') && statuses.contains(&b' '),
        "{statuses:?}"
    );
    let final_view = observe(&f, 5);
    f.close();
    drop(f);
    assert_eq!(observe(&open(&tp.path), 5), final_view);
}

#[test]
fn loads_of_every_size_around_the_prefetch() {
    // The newest record is read with its data in one pread when it fits in
    // records::PREFETCH; larger ones, and the last record of the file (a
    // short read), take the general path. All must load the same.
    let tp = tmp();
    let s = open(&tp.path);
    let sizes = [
        1usize,
        100,
        super::records::PREFETCH - 43,
        super::records::PREFETCH - 42,
        super::records::PREFETCH - 41,
        super::records::PREFETCH,
        3 * super::records::PREFETCH,
    ];
    let mut tid = Tid::ZERO;
    for (i, n) in sizes.iter().enumerate() {
        let data = "x".repeat(*n);
        tid = commit(
            &s,
            Some(t(i as u32 + 1)),
            vec![store(i as u64 + 1, Tid::ZERO, &data)],
        );
        // Loaded while it is the last record of the file, and again later.
        assert_eq!(value(&s, i as u64 + 1).len(), *n, "size {n} at the end");
    }
    for (i, n) in sizes.iter().enumerate() {
        assert_eq!(value(&s, i as u64 + 1), "x".repeat(*n), "size {n}");
    }
    // A record without data of its own (undo through a backpointer).
    let a = commit(&s, None, vec![store(1, t(1), "second")]);
    commit(&s, None, vec![undo(a)]);
    assert_eq!(value(&s, 1), "x");
    assert!(tid > Tid::ZERO);
}
