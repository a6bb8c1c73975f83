//! Off-site mirrors over in-process backends: every transaction shipped in
//! order with its tid; a mirror that is down never reaches a client and
//! catches up by itself; a queue that overflows falls back to the source;
//! a pack while it lags is applied once it holds the pack's transaction.

use super::*;
use crate::raid::offsite::Options;

fn mirror_spec(m: &Arc<Faulty>) -> BackendSpec {
    BackendSpec {
        name: "dr".into(),
        kind: "memory",
        source: BackendSource::Local(m.clone()),
        reopen: None,
    }
}

/// Wait until the mirror holds the array's last transaction.
fn converge(a: &RaidStorage, m: &Faulty) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let last = a.last_transaction().unwrap();
    while m.inner.last_transaction().unwrap() != last {
        assert!(
            Instant::now() < deadline,
            "the mirror did not catch up: {}",
            offsite_status(a)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn offsite_status(a: &RaidStorage) -> serde_json::Value {
    serde_json::to_value(&a.status().offsite[0]).unwrap()
}

fn commits(a: &RaidStorage, n: usize, size: usize) -> Vec<Tid> {
    let mut oids = a.new_oids(n).unwrap().into_iter();
    (0..n)
        .map(|i| {
            let oid = oids.next().unwrap();
            commit(a, vec![store(oid, Tid::ZERO, &vec![i as u8; size])]).unwrap()
        })
        .collect()
}

#[test]
fn every_transaction_is_shipped_in_order_and_the_mirror_is_never_read() {
    let b = faulty(2);
    let a = array_over(&b, opts());
    let m = Faulty::new("dr");
    a.add_offsite(mirror_spec(&m), &Options::new(60.0)).unwrap();
    let tids = commits(&a, 200, 100);
    // An undo: queued as a tid, read back from a synchronous backend.
    let undone = tids[10];
    match a.tpc_vote(&txn(vec![Op::Undo { txn: undone }])).unwrap() {
        Vote::Prepared { .. } => {
            a.tpc_finish().unwrap();
        }
        Vote::Conflicts(c) => panic!("{c:?}"),
    }
    for oid in 1..=20u64 {
        let _ = a.load_before(Oid(oid), Tid::MAX);
    }
    converge(&a, &m);
    assert_eq!(history_of(m.as_ref()), history_of(b[0].as_ref()));
    let s = offsite_status(&a);
    assert_eq!(s["state"], "replicating", "{s}");
    assert_eq!(s["reads"], 0);
    assert_eq!(s["lag-transactions"], 0);
    assert_eq!(s["shipped"], 201);
    // The mirror is not a voter or a reader.
    assert_eq!(a.status().backends.len(), 2);
}

#[test]
fn a_mirror_that_is_down_costs_clients_nothing_and_catches_up_by_itself() {
    let b = faulty(2);
    let a = array_over(&b, opts());
    let m = Faulty::new("dr");
    a.add_offsite(mirror_spec(&m), &Options::new(60.0)).unwrap();
    commits(&a, 10, 10);
    converge(&a, &m);
    m.set(Fault::Down);
    // Every commit succeeds while the mirror is down.
    commits(&a, 300, 10);
    let deadline = Instant::now() + Duration::from_secs(10);
    while offsite_status(&a)["state"] != "degraded" {
        assert!(Instant::now() < deadline, "{}", offsite_status(&a));
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = offsite_status(&a);
    assert!(s["lag-transactions"].as_u64().unwrap() > 0, "{s}");
    assert!(s["last-error"].as_str().unwrap().contains("down"), "{s}");
    assert_eq!(states(&a), vec!["optimal", "optimal"]);
    m.set(Fault::None);
    converge(&a, &m);
    assert_eq!(history_of(m.as_ref()), history_of(b[0].as_ref()));
}

#[test]
fn an_overflowing_queue_falls_back_to_the_source() {
    let b = faulty(2);
    let a = array_over(&b, opts());
    let m = Faulty::new("dr");
    let small = Options {
        queue_bytes: 1000,
        queue_entries: 5,
        ..Options::new(60.0)
    };
    a.add_offsite(mirror_spec(&m), &small).unwrap();
    m.set(Fault::Down);
    commits(&a, 100, 50);
    let s = offsite_status(&a);
    assert!(s["queue"]["overflows"].as_u64().unwrap() > 0, "{s}");
    assert!(s["queue"]["transactions"].as_u64().unwrap() <= 5, "{s}");
    m.set(Fault::None);
    converge(&a, &m);
    assert_eq!(history_of(m.as_ref()), history_of(b[0].as_ref()));
}

#[test]
fn a_pack_while_the_mirror_lags_is_applied_once_it_holds_the_packs_transaction() {
    let b = faulty(2);
    let a = array_over(&b, opts());
    let m = Faulty::new("dr");
    a.add_offsite(mirror_spec(&m), &Options::new(60.0)).unwrap();
    m.set(Fault::Down);
    // Revisions of one object, then a pack that drops the old ones.
    let oid = a.new_oids(1).unwrap()[0];
    let mut serial = Tid::ZERO;
    for i in 0..20u8 {
        serial = commit(&a, vec![store(oid, serial, &[i])]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(20));
    a.pack(timestamp::time_time(serial) + 0.001, false).unwrap();
    commits(&a, 5, 10);
    assert!(
        history_of(b[0].as_ref()).len() < 26,
        "the source was packed"
    );
    m.set(Fault::None);
    converge(&a, &m);
    let deadline = Instant::now() + Duration::from_secs(10);
    while history_of(m.as_ref()) != history_of(b[0].as_ref()) {
        assert!(Instant::now() < deadline, "the mirror was not packed");
        std::thread::sleep(Duration::from_millis(20));
    }
}
