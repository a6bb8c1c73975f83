//! Online recovery and verification of file backends (issue #8): a new
//! empty backend gets a 10 000-transaction history with undo, pack and
//! deletions and passes ZODB's `fstest`; a full-speed writer does not keep
//! a recovery from finishing; a diverged target is refused untouched and
//! a forced recovery moves it aside and rebuilds it; verify finds one
//! changed byte.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use zeoraid::config::Config;
use zeoraid::raid::RaidStorage;
use zeoraid::storage::file::{FileOptions, FileStorage};
use zeoraid::storage::{timestamp, Data, Oid, Op, Storage, Tid, Txn, TxnMeta, TxnRecord, Vote};

/// An array over file backends named `names` (in `dir/NAME/Data.fs`).
fn array(dir: &Path, names: &[&str], extra: &str) -> RaidStorage {
    let mut text = format!(
        "[[storage]]\nname = \"1\"\nkind = \"raid\"\nauto-recover = false\n{extra}\n\
         state-file = \"{}\"\n",
        dir.join("raid.state").display()
    );
    for n in names {
        text += &format!(
            "[[storage.backend]]\nname = \"{n}\"\nkind = \"file\"\nsync = false\npath = \"{}\"\n",
            data_fs(dir, n).display()
        );
    }
    let cfg = Config::parse(&text, &dir.join("zeoraid.toml")).expect("valid config");
    zeoraid::open::open_raid(&cfg.storage[0]).expect("the array opens")
}

fn data_fs(dir: &Path, name: &str) -> PathBuf {
    dir.join(name).join("Data.fs")
}

/// Commit as the server does (group commit when the array does it).
fn commit(a: &RaidStorage, ops: Vec<Op>, description: &str) -> Tid {
    let txn = Txn {
        meta: TxnMeta {
            user: b"tester".to_vec(),
            description: description.as_bytes().to_vec(),
            extension: vec![],
        },
        tid: None,
        status: b' ',
        ops,
    };
    match a.tpc_vote(&txn).expect("vote") {
        Vote::Prepared { .. } => {}
        Vote::Conflicts(c) => panic!("conflicts: {c:?}"),
    }
    if a.group_commit() {
        let t = a.finish_log().expect("finish_log");
        a.make_durable(t).expect("durable");
        a.publish(t);
        t
    } else {
        a.tpc_finish().expect("finish")
    }
}

fn store(oid: Oid, serial: Tid, data: &str) -> Op {
    Op::Store {
        oid,
        serial,
        data: Data::from(data.as_bytes()),
    }
}

/// Commits that change a few objects in turn, keeping serials.
struct Writer {
    objects: Vec<(Oid, Tid)>,
    n: usize,
    /// (tid, oid, data) of every store.
    log: Vec<(Tid, Oid, String)>,
}

impl Writer {
    fn new(a: &RaidStorage, objects: usize) -> Writer {
        let oids = a.new_oids(objects).expect("oids");
        Writer {
            objects: oids.into_iter().map(|o| (o, Tid::ZERO)).collect(),
            n: 0,
            log: Vec::new(),
        }
    }

    fn one(&mut self, a: &RaidStorage) -> Tid {
        let k = self.n % self.objects.len();
        let (oid, serial) = self.objects[k];
        let data = format!("value {} of object {k}", self.n);
        let t = commit(
            a,
            vec![store(oid, serial, &data)],
            &format!("commit {}", self.n),
        );
        self.objects[k].1 = t;
        self.log.push((t, oid, data));
        self.n += 1;
        t
    }
}

type Txns = Vec<(Tid, u8, TxnMeta, Vec<(Oid, Option<Data>)>)>;

/// A whole history, read from the file itself.
fn history(path: &Path) -> Txns {
    let s = FileStorage::open(
        path,
        FileOptions {
            read_only: true,
            ..FileOptions::default()
        },
    )
    .expect("opens read-only");
    let out = s
        .iterator(None, None)
        .expect("iterator")
        .map(|t| {
            let t: TxnRecord = t.expect("record");
            (
                t.tid,
                t.status,
                t.meta,
                t.records.into_iter().map(|r| (r.oid, r.data)).collect(),
            )
        })
        .collect();
    s.close();
    out
}

#[test]
fn an_empty_backend_gets_a_10000_transaction_history_with_undo_pack_and_deletes() {
    common::python(); // fstest below needs it: fail early when missing
    let dir = tempfile::tempdir().unwrap();
    let a = array(dir.path(), &["a"], "");
    let mut w = Writer::new(&a, 20);
    let mut doomed: Vec<(Oid, Tid)> = Vec::new();
    let mut packed_at = None;
    for i in 0..12_000 {
        if i % 500 == 499 {
            // Undo the previous transaction (one store).
            let (t, oid, _) = w.log.last().cloned().unwrap();
            let u = commit(&a, vec![Op::Undo { txn: t }], "undo");
            for o in w.objects.iter_mut().filter(|o| o.0 == oid) {
                o.1 = u;
            }
        } else if i % 1000 == 250 {
            // An object that will be deleted.
            let oid = a.new_oids(1).unwrap()[0];
            let t = commit(&a, vec![store(oid, Tid::ZERO, "short-lived")], "create");
            doomed.push((oid, t));
        } else if i % 1000 == 750 {
            let (oid, serial) = doomed.pop().unwrap();
            commit(&a, vec![Op::Delete { oid, serial }], "delete");
        } else if i == 1500 {
            a.pack(timestamp::now(), false).expect("pack");
            packed_at = Some(i);
        } else {
            w.one(&a);
        }
    }
    assert!(packed_at.is_some());
    a.close();
    drop(a);
    // The new backend, empty, joins the configuration.
    let a = array(dir.path(), &["a", "b"], "");
    assert_eq!(a.status().backends[1].state.label(), "degraded");
    let r = a.recover("b", false).expect("recovers");
    assert_eq!(r.from, None, "the whole history");
    assert_eq!(a.status().state.label(), "optimal");
    let v = a.verify("b").expect("verify runs");
    assert_eq!(v.difference, None, "{v:?}");
    // It takes commits like the other.
    w.one(&a);
    a.close();
    drop(a);
    let (ha, hb) = (
        history(&data_fs(dir.path(), "a")),
        history(&data_fs(dir.path(), "b")),
    );
    // Pack drops the transactions whose records it all removed.
    assert!(ha.len() >= 10_000, "{}", ha.len());
    assert!(ha.iter().any(|t| t.1 == b'p'), "packed transactions");
    assert_eq!(ha.len(), hb.len());
    assert!(ha == hb, "identical histories");
    assert_eq!(r.copied as usize, ha.len() - 1);
    common::assert_fstest_clean(&data_fs(dir.path(), "b"));
    println!(
        "[{} transactions, {:.1} MB copied in {:.2} s]",
        r.copied,
        r.bytes as f64 / 1e6,
        r.seconds
    );
}

#[test]
fn a_full_speed_writer_does_not_keep_recovery_from_finishing() {
    let dir = tempfile::tempdir().unwrap();
    let a = array(dir.path(), &["a"], "recovery-ratio = 2.0");
    let mut w = Writer::new(&a, 10);
    for _ in 0..3000 {
        w.one(&a);
    }
    a.close();
    drop(a);
    let a = Arc::new(array(dir.path(), &["a", "b"], "recovery-ratio = 2.0"));
    assert!(a.group_commit(), "file backends: the group-commit path");
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let (r, during) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                w.one(&a);
                n += 1;
            }
            n
        });
        let r = a.recover("b", false);
        stop.store(true, Ordering::Release);
        (r, writer.join().unwrap())
    });
    let secs = started.elapsed().as_secs_f64();
    let r = r.expect("recovery finishes");
    assert!(during > 0, "commits went on");
    // The rate guarantee: at most one commit per two copied, plus the
    // saved burst and one forced admission per second of stall.
    let bound = r.copied as f64 / 2.0 + 9.0 + secs.ceil();
    assert!(
        (during as f64) <= bound,
        "{during} commits while {} were copied in {secs:.1} s",
        r.copied
    );
    assert_eq!(a.status().state.label(), "optimal");
    a.close();
    drop(a);
    assert!(history(&data_fs(dir.path(), "a")) == history(&data_fs(dir.path(), "b")));
    println!(
        "[copied {} while {during} commits went on, {secs:.1} s]",
        r.copied
    );
}

#[test]
fn a_diverged_target_is_refused_untouched_and_a_forced_recovery_rebuilds_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = array(dir.path(), &["a", "b"], "");
    let mut w = Writer::new(&a, 3);
    let last = (0..10).map(|_| w.one(&a)).last().unwrap();
    a.close();
    drop(a);
    // Someone commits to b directly.
    let sneaky = timestamp::successor(last);
    {
        let b = FileStorage::open(&data_fs(dir.path(), "b"), FileOptions::default()).unwrap();
        let txn = Txn {
            meta: TxnMeta::default(),
            tid: Some(sneaky),
            status: b' ',
            ops: vec![store(w.objects[0].0, w.objects[0].1, "sneaky")],
        };
        assert!(matches!(b.tpc_vote(&txn), Ok(Vote::Prepared { .. })));
        b.tpc_finish().unwrap();
        b.close();
    }
    // The array goes on without b, past b's last.
    let a = array(dir.path(), &["a"], "");
    w.one(&a);
    w.one(&a);
    a.close();
    drop(a);
    let a = array(dir.path(), &["a", "b"], "");
    assert_eq!(a.status().backends[1].state.label(), "degraded");
    let bytes = std::fs::read(data_fs(dir.path(), "b")).unwrap();
    let e = a.recover("b", false).unwrap_err();
    assert!(e.starts_with(&format!("diverged at {sneaky}")), "{e}");
    assert_eq!(
        std::fs::read(data_fs(dir.path(), "b")).unwrap(),
        bytes,
        "nothing written"
    );
    let reason = format!("{:?}", a.status().backends[1].reason);
    assert!(reason.contains("diverged at"), "{reason}");
    // Forced: the old file is moved aside (kept), b rebuilt from a.
    let r = a.recover("b", true).expect("forced recovery");
    let aside = r.moved_aside.clone().expect("moved aside");
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        bytes,
        "the old data is kept"
    );
    assert_eq!(r.from, None);
    assert_eq!(a.status().state.label(), "optimal");
    a.close();
    drop(a);
    assert!(history(&data_fs(dir.path(), "a")) == history(&data_fs(dir.path(), "b")));
}

#[test]
fn verify_finds_one_changed_byte_and_names_its_transaction_and_object() {
    let dir = tempfile::tempdir().unwrap();
    let a = array(dir.path(), &["a", "b"], "");
    let mut w = Writer::new(&a, 7);
    for _ in 0..300 {
        w.one(&a);
    }
    a.close();
    drop(a);
    let (tid, oid, data) = w.log[123].clone();
    // Flip one byte of that record's data in b's file.
    let path = data_fs(dir.path(), "b");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(data.len())
        .position(|x| x == data.as_bytes())
        .expect("the record's data is in the file");
    assert_eq!(
        bytes
            .windows(data.len())
            .filter(|x| *x == data.as_bytes())
            .count(),
        1
    );
    bytes[at + 2] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let a = array(dir.path(), &["a", "b"], "");
    assert_eq!(a.status().state.label(), "optimal", "nothing noticed yet");
    let v = a.verify("b").expect("verify runs");
    let d = v.difference.expect("the changed byte is found");
    assert_eq!((d.tid, d.oid), (tid, Some(oid)), "{d}");
    let st = a.status();
    assert_eq!(st.backends[1].state.label(), "degraded");
    let reason = st.backends[1].reason.clone().unwrap();
    assert!(
        reason.contains(&tid.to_string()) && reason.contains(&oid.to_string()),
        "{reason}"
    );
    a.close();
}

/// An embedder that commits with plain `tpc_finish` (no group-commit
/// steps, as `zeoraid::storage::commit` does) can still recover a file
/// backend: finishing must count as publishing, or the recovery waits for
/// a publish that never comes and gives up after backend-timeout.
#[test]
fn recovery_finishes_when_commits_use_plain_tpc_finish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = array(dir.path(), &["a", "b"], "backend-timeout = 5");
    assert!(a.group_commit(), "file backends do group commit");
    let oid = a.new_oids(1).expect("oid")[0];
    let mut serial = Tid::ZERO;
    let mut put = |n: usize| {
        let txn = Txn::new(vec![store(oid, serial, &format!("v{n}"))]);
        serial = zeoraid::storage::commit(&a, &txn).expect("commit");
    };
    put(0);
    a.disable("b").expect("disable b");
    (1..=5).for_each(&mut put);
    let started = Instant::now();
    let report = a.recover("b", false).expect("recovery finishes");
    assert_eq!(report.copied, 5);
    assert!(
        started.elapsed().as_secs_f64() < 4.0,
        "recovery waited {:?}: for a publish that never came?",
        started.elapsed()
    );
    assert_eq!(a.verify("b").expect("verify").difference, None);
}
