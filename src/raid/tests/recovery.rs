//! Recovery and verification over in-process backends made to fail.

use super::*;
use std::sync::atomic::AtomicBool;

/// Commits `n` transactions, each changing one of a few objects (and
/// creating them first); keeps the serials right.
struct Writer {
    objects: Vec<(Oid, Tid)>,
    next: usize,
}

impl Writer {
    fn new(a: &RaidStorage, objects: usize) -> Writer {
        let oids = a.new_oids(objects).unwrap();
        Writer {
            objects: oids.into_iter().map(|o| (o, Tid::ZERO)).collect(),
            next: 0,
        }
    }

    fn commit(&mut self, a: &RaidStorage) -> Result<Tid> {
        let k = self.next % self.objects.len();
        let (oid, serial) = self.objects[k];
        let data = format!("value {} of {oid}", self.next);
        let t = commit(a, vec![store(oid, serial, data.as_bytes())])?;
        self.objects[k].1 = t;
        self.next += 1;
        Ok(t)
    }

    fn commit_n(&mut self, a: &RaidStorage, n: usize) -> Tid {
        let mut last = Tid::ZERO;
        for _ in 0..n {
            last = self.commit(a).unwrap();
        }
        last
    }
}

/// An array of two where backend "b" missed `missed` transactions.
fn with_b_behind(missed: usize, opts: RaidOptions) -> (Vec<Arc<Faulty>>, RaidStorage, Writer) {
    let b = faulty(2);
    let a = array_over(&b, opts);
    let mut w = Writer::new(&a, 5);
    w.commit_n(&a, 5);
    b[1].set(Fault::Down);
    w.commit_n(&a, missed);
    assert_eq!(states(&a), vec!["optimal", "degraded"]);
    b[1].set(Fault::None);
    (b, a, w)
}

#[test]
fn a_backend_that_missed_transactions_is_recovered_and_rejoins() {
    let (b, a, mut w) = with_b_behind(100, opts());
    let before = b[1].inner.last_transaction().unwrap();
    let r = a.recover("b", false).unwrap();
    assert_eq!(r.copied, 100, "{r:?}");
    assert_eq!(r.from, Some(before), "only what is missing is copied");
    assert_eq!(r.source, "a");
    assert_eq!(states(&a), vec!["optimal", "optimal"]);
    assert_eq!(history_of(b[0].as_ref()), history_of(b[1].as_ref()));
    // It takes writes again, and reads.
    let t = w.commit(&a).unwrap();
    assert_eq!(b[1].inner.last_transaction().unwrap(), t);
    assert_eq!(a.status().state.label(), "optimal");
    // And it verifies clean.
    let v = a.verify("b").unwrap();
    assert_eq!(v.difference, None, "{v:?}");
    assert_eq!(v.transactions as usize, 5 + 100 + 1);
    // Recovering an optimal backend is refused, saying so.
    let e = a.recover("b", false).unwrap_err();
    assert!(e.contains("optimal"), "{e}");
    let e = a.recover("zz", false).unwrap_err();
    assert!(e.contains("no backend \"zz\"") && e.contains("a, b"), "{e}");
}

#[test]
fn an_empty_backend_gets_the_whole_history_with_the_same_tids() {
    let (b, a, _w) = with_b_behind(20, opts());
    // Undo and delete in the history too.
    let oid = a.new_oids(1).unwrap()[0];
    let t1 = commit(&a, vec![store(oid, Tid::ZERO, b"first")]).unwrap();
    let t2 = commit(&a, vec![store(oid, t1, b"second")]).unwrap();
    commit(&a, vec![Op::Undo { txn: t2 }]).unwrap();
    let last = a.last_transaction().unwrap();
    commit(&a, vec![Op::Delete { oid, serial: last }]).unwrap();
    let fresh = Faulty::new("fresh");
    let specs = vec![
        BackendSpec {
            name: "a".into(),
            kind: "memory",
            source: BackendSource::Local(b[0].clone()),
            reopen: None,
        },
        BackendSpec {
            name: "new".into(),
            kind: "memory",
            source: BackendSource::Local(fresh.clone()),
            reopen: None,
        },
    ];
    drop(a);
    let a = RaidStorage::open(opts(), specs).unwrap();
    assert_eq!(states(&a), vec!["optimal", "degraded"]);
    let r = a.recover("new", false).unwrap();
    assert_eq!(r.from, None);
    assert_eq!(history_of(b[0].as_ref()), history_of(fresh.as_ref()));
    assert_eq!(r.copied as usize, history_of(fresh.as_ref()).len());
    assert_eq!(a.verify("new").unwrap().difference, None);
}

#[test]
fn commits_go_on_during_recovery_and_it_still_finishes() {
    let (b, a, mut w) = with_b_behind(3000, opts());
    let a = Arc::new(a);
    let stop = AtomicBool::new(false);
    let (during, seen_recovering, pack_refused) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut n = 0u64;
            let mut seen = false;
            let mut pack_refused = false;
            while !stop.load(Ordering::Acquire) {
                w.commit(&a).unwrap();
                n += 1;
                let st = a.status();
                if st.backends[1].state == crate::status::Role::Recovering {
                    seen = true;
                    assert_eq!(st.state, crate::status::ArrayState::Recovering);
                    let rec = st.backends[1].recovery.as_ref();
                    assert!(rec.is_some_and(|r| r.percent >= 0.0), "{rec:?}");
                    if !pack_refused {
                        let e = a.pack(timestamp::now(), false).unwrap_err();
                        pack_refused = e.to_string().contains("recovering");
                    }
                }
            }
            (n, seen, pack_refused)
        });
        let r = a.recover("b", false);
        stop.store(true, Ordering::Release);
        let out = writer.join().unwrap();
        let r = r.unwrap();
        assert!(r.copied >= 3000, "{r:?}");
        out
    });
    assert!(during > 0, "commits went on during the recovery");
    assert!(seen_recovering, "the status showed it recovering");
    assert!(pack_refused, "pack is refused while a backend recovers");
    assert_eq!(states(&a), vec!["optimal", "optimal"]);
    assert_eq!(history_of(b[0].as_ref()), history_of(b[1].as_ref()));
    assert!(
        lock(&a.core.commit.credit).is_none(),
        "the throttle ends with the recovery"
    );
    assert_eq!(a.status().backends[1].recovery, None);
}

#[test]
fn a_diverged_target_is_refused_and_left_untouched() {
    let b = faulty(2);
    let a = array_over(&b, opts());
    let oid = a.new_oids(1).unwrap()[0];
    let t1 = commit(&a, vec![store(oid, Tid::ZERO, b"v")]).unwrap();
    b[1].set(Fault::Down);
    commit(&a, vec![store(oid, t1, b"w")]).unwrap();
    b[1].set(Fault::None);
    write_behind_the_arrays_back(&b[1], oid, t1);
    let untouched = history_of(b[1].as_ref());
    let e = a.recover("b", false).unwrap_err();
    let sneaky = timestamp::successor(t1);
    assert!(e.starts_with(&format!("diverged at {sneaky}")), "{e}");
    assert_eq!(history_of(b[1].as_ref()), untouched);
    let why = reason(&a, 1);
    assert!(why.contains("diverged at"), "{why}");
    assert!(
        lock(&a.core.backends[1].attempts).diverged,
        "auto-recovery leaves it alone"
    );
    // Forcing needs a backend zeoraid can empty (not this test double).
    let e = a.recover("b", true).unwrap_err();
    assert!(e.contains("cannot be opened again"), "{e}");
    assert_eq!(history_of(b[1].as_ref()), untouched);
}

#[test]
fn a_target_failing_mid_recovery_is_degraded_and_a_later_recovery_finishes() {
    let (b, a, _w) = with_b_behind(50, opts());
    b[1].set(Fault::DownAfterVotes(10));
    let e = a.recover("b", false).unwrap_err();
    assert!(e.contains("writing transaction"), "{e}");
    let why = reason(&a, 1);
    assert!(why.starts_with("recovery failed: "), "{why}");
    assert_eq!(states(&a), vec!["optimal", "degraded"]);
    // It holds whole transactions only: the ten it took.
    assert_eq!(history_of(&b[1].inner).len(), 5 + 10);
    b[1].set(Fault::None);
    let r = a.recover("b", false).unwrap();
    assert_eq!(r.copied, 40, "continues from where it stands");
    assert_eq!(history_of(b[0].as_ref()), history_of(b[1].as_ref()));
}

#[test]
fn auto_recovery_brings_back_a_backend_that_answers_again() {
    let (b, a, mut w) = with_b_behind(
        30,
        RaidOptions {
            auto_recover: true,
            ..opts()
        },
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while states(&a) != vec!["optimal", "optimal"] {
        assert!(Instant::now() < deadline, "not recovered: {:?}", a.status());
        w.commit(&a).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(history_of(b[0].as_ref()), history_of(b[1].as_ref()));
    // A later failure is recovered too, after the backend answers again.
    b[1].set(Fault::Down);
    w.commit_n(&a, 3);
    assert_eq!(states(&a), vec!["optimal", "degraded"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        states(&a),
        vec!["optimal", "degraded"],
        "down: not recovered"
    );
    b[1].set(Fault::None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while states(&a) != vec!["optimal", "optimal"] {
        assert!(Instant::now() < deadline, "not recovered: {:?}", a.status());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(history_of(b[0].as_ref()), history_of(b[1].as_ref()));
    a.close();
}

#[test]
fn verify_names_the_first_transaction_a_backend_lacks() {
    let (_b, a, _w) = with_b_behind(3, opts());
    let first_missed = history_of(_b[0].as_ref())[5].0;
    let v = a.verify("b").unwrap();
    let d = v.difference.expect("a difference");
    assert_eq!(d.tid, first_missed);
    assert!(reason(&a, 1).starts_with(&format!("diverged at {first_missed}")));
    // Verifying the reference against itself is not possible alone.
    let e = a.verify("a").unwrap_err();
    assert!(e.contains("no other optimal backend"), "{e}");
}

#[test]
fn several_degraded_backends_recover_one_after_another() {
    let b = faulty(3);
    let a = array_over(
        &b,
        RaidOptions {
            auto_recover: true,
            ..opts()
        },
    );
    let mut w = Writer::new(&a, 4);
    b[1].set(Fault::Down);
    b[2].set(Fault::Down);
    w.commit_n(&a, 2000);
    assert_eq!(states(&a), vec!["optimal", "degraded", "degraded"]);
    b[1].set(Fault::None);
    b[2].set(Fault::None);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen_recovering = 0;
    while states(&a) != vec!["optimal"; 3] {
        assert!(Instant::now() < deadline, "not recovered: {:?}", a.status());
        let st = states(&a);
        let recovering = st.iter().filter(|s| *s == "recovering").count();
        assert!(recovering <= 1, "one at a time: {st:?}");
        seen_recovering += recovering;
        w.commit(&a).unwrap();
    }
    assert!(seen_recovering > 0, "a recovery was seen running");
    assert_eq!(history_of(b[0].as_ref()), history_of(b[1].as_ref()));
    assert_eq!(history_of(b[0].as_ref()), history_of(b[2].as_ref()));
    a.close();
}

#[test]
fn a_target_claiming_a_transaction_it_does_not_hold_copies_from_what_it_holds() {
    let (b, a, _w) = with_b_behind(20, opts());
    let held = b[1].inner.last_transaction().unwrap();
    b[1].set(Fault::PhantomLast(timestamp::successor(held)));
    let r = a.recover("b", false).unwrap();
    assert_eq!(r.from, Some(held));
    assert_eq!(r.copied, 20);
    assert_eq!(history_of(&b[0].inner), history_of(&b[1].inner));
}

#[test]
fn a_transaction_held_between_vote_and_finish_delays_the_rejoin_not_the_copy() {
    let (b, a, w) = with_b_behind(30, opts());
    // A client votes and then stalls before finishing.
    let (oid, serial) = w.objects[0];
    assert!(matches!(
        a.tpc_vote(&txn(vec![store(oid, serial, b"held")])),
        Ok(Vote::Prepared { .. })
    ));
    let e = a.recover("b", false).unwrap_err();
    assert!(e.contains("held the array's commit lock"), "{e}");
    assert_eq!(states(&a), vec!["optimal", "degraded"]);
    // The copy it made stays: the next attempt only finishes it.
    assert_eq!(history_of(&b[1].inner).len(), 5 + 30);
    a.tpc_abort();
    let r = a.recover("b", false).unwrap();
    assert_eq!(r.copied, 0);
    assert_eq!(states(&a), vec!["optimal", "optimal"]);
}
