//! The array over in-process backends, some of them made to fail.

mod offsite;
mod phases;
mod recovery;
mod sim;
mod sim_backends;

use super::*;
use crate::storage::memory::MemoryStorage;
use crate::storage::{
    timestamp, CurrentRecord, Data, HistoryEntry, Loaded, Oid, Op, SizeInfo, Txn, TxnIter, TxnMeta,
    UndoEntry, Vote,
};
use crate::zeo::client::ClientOptions;

/// What a [`Faulty`] backend does wrong.
#[derive(Clone, Debug, PartialEq)]
enum Fault {
    None,
    /// Every call fails as a lost connection would.
    Down,
    /// Votes take this long.
    SlowVote(Duration),
    /// Votes fail this late, as a ZEO client's own call deadline does.
    LateFailure(Duration),
    /// tpc_finish fails.
    FailFinish,
    /// load_before says POSKeyError.
    LoseObjects,
    /// This many more votes succeed, then every call fails as `Down`.
    DownAfterVotes(usize),
    /// `last_transaction` reports a later tid than the history holds (as
    /// Python's FileStorage does after a crash between vote and finish).
    PhantomLast(Tid),
}

/// A memory storage whose failures the test switches on.
struct Faulty {
    inner: MemoryStorage,
    fault: Mutex<Fault>,
}

impl Faulty {
    fn new(name: &str) -> Arc<Faulty> {
        Arc::new(Faulty {
            inner: MemoryStorage::new(name, false),
            fault: Mutex::new(Fault::None),
        })
    }
    fn set(&self, f: Fault) {
        *lock(&self.fault) = f;
    }
    fn check(&self) -> Result<()> {
        if *lock(&self.fault) == Fault::Down {
            return Err(Error::Disconnected("backend is down (test)".into()));
        }
        Ok(())
    }
}

impl Storage for Faulty {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn supports_undo(&self) -> bool {
        true
    }
    fn last_transaction(&self) -> Result<Tid> {
        self.check()?;
        let last = self.inner.last_transaction()?;
        if let Fault::PhantomLast(t) = *lock(&self.fault) {
            return Ok(last.max(t));
        }
        Ok(last)
    }
    fn load_before(&self, oid: Oid, before: Tid) -> Result<Option<Loaded>> {
        self.check()?;
        if *lock(&self.fault) == Fault::LoseObjects {
            return Err(Error::PosKey(oid));
        }
        self.inner.load_before(oid, before)
    }
    fn load_serial(&self, oid: Oid, serial: Tid) -> Result<Data> {
        self.check()?;
        self.inner.load_serial(oid, serial)
    }
    fn history(&self, oid: Oid, size: usize) -> Result<Vec<HistoryEntry>> {
        self.check()?;
        self.inner.history(oid, size)
    }
    fn new_oids(&self, n: usize) -> Result<Vec<Oid>> {
        self.check()?;
        self.inner.new_oids(n)
    }
    fn tpc_vote(&self, txn: &Txn) -> Result<Vote> {
        self.check()?;
        {
            let mut f = lock(&self.fault);
            if let Fault::DownAfterVotes(n) = *f {
                *f = if n == 0 {
                    Fault::Down
                } else {
                    Fault::DownAfterVotes(n - 1)
                };
            }
        }
        self.check()?;
        let fault = lock(&self.fault).clone();
        if let Fault::SlowVote(d) = fault {
            std::thread::sleep(d);
        }
        if let Fault::LateFailure(d) = fault {
            std::thread::sleep(d);
            return Err(Error::Disconnected(
                "no reply to vote (call timeout)".into(),
            ));
        }
        self.inner.tpc_vote(txn)
    }
    fn tpc_finish(&self) -> Result<Tid> {
        self.check()?;
        if *lock(&self.fault) == Fault::FailFinish {
            self.inner.tpc_abort();
            return Err(Error::Io("disk on fire (test)".into()));
        }
        self.inner.tpc_finish()
    }
    fn tpc_abort(&self) {
        self.inner.tpc_abort()
    }
    fn undo_log(&self, first: usize, last: usize) -> Result<Vec<UndoEntry>> {
        self.check()?;
        self.inner.undo_log(first, last)
    }
    fn iterator(&self, start: Option<Tid>, stop: Option<Tid>) -> Result<TxnIter> {
        self.check()?;
        self.inner.iterator(start, stop)
    }
    fn record_iternext(&self, next: Option<Oid>) -> Result<Option<CurrentRecord>> {
        self.check()?;
        self.inner.record_iternext(next)
    }
    fn pack(&self, t: f64, gc: bool) -> Result<()> {
        self.check()?;
        self.inner.pack(t, gc)
    }
    fn size_info(&self) -> SizeInfo {
        self.inner.size_info()
    }
}

/// [`opts`] without the object cache: for tests of which backend serves
/// a read.
fn uncached() -> RaidOptions {
    RaidOptions {
        cache_size: 0,
        ..opts()
    }
}

fn opts() -> RaidOptions {
    RaidOptions {
        backend_timeout: Duration::from_secs(5),
        // The tests here degrade backends on purpose and look at them.
        auto_recover: false,
        ..RaidOptions::new("1")
    }
}

fn array_over(backends: &[Arc<Faulty>], opts: RaidOptions) -> RaidStorage {
    let specs = backends
        .iter()
        .enumerate()
        .map(|(i, b)| BackendSpec {
            name: ["a", "b", "c", "d"][i].into(),
            kind: "memory",
            source: BackendSource::Local(b.clone()),
            reopen: None,
        })
        .collect();
    RaidStorage::open(opts, specs).expect("array opens")
}

fn faulty(n: usize) -> Vec<Arc<Faulty>> {
    (0..n).map(|i| Faulty::new(&format!("m{i}"))).collect()
}

fn store(oid: Oid, serial: Tid, data: &[u8]) -> Op {
    Op::Store {
        oid,
        serial,
        data: Data::from(data),
    }
}

fn txn(ops: Vec<Op>) -> Txn {
    Txn {
        meta: TxnMeta::default(),
        tid: None,
        status: b' ',
        ops,
    }
}

/// Vote and finish; the tid.
fn commit(a: &RaidStorage, ops: Vec<Op>) -> Result<Tid> {
    match a.tpc_vote(&txn(ops))? {
        Vote::Prepared { .. } => a.tpc_finish(),
        Vote::Conflicts(c) => {
            a.tpc_abort();
            Err(Error::Value(format!("conflicts: {c:?}")))
        }
    }
}

/// Why backend `i` was degraded (fails the test when it was not).
fn reason(a: &RaidStorage, i: usize) -> String {
    a.core
        .state_of(i)
        .reason()
        .unwrap_or_else(|| panic!("backend {i} is not degraded"))
        .to_string()
}

/// Someone commits a change of `oid` straight to backend `b`, behind the
/// array's back, right after `t1`.
fn write_behind_the_arrays_back(b: &Faulty, oid: Oid, t1: Tid) {
    let sneaky = Txn {
        tid: Some(timestamp::successor(t1)),
        ..txn(vec![store(oid, t1, b"sneaky")])
    };
    b.inner.tpc_vote(&sneaky).unwrap();
    b.inner.tpc_finish().unwrap();
}

fn states(a: &RaidStorage) -> Vec<String> {
    a.core
        .backends
        .iter()
        .map(|b| b.role().label().to_string())
        .collect()
}

/// Every transaction's tid and records.
type History = Vec<(Tid, Vec<(Oid, Option<Data>)>)>;

fn history_of(s: &dyn Storage) -> History {
    s.iterator(None, None)
        .unwrap()
        .map(|t| {
            let t = t.unwrap();
            (
                t.tid,
                t.records.into_iter().map(|r| (r.oid, r.data)).collect(),
            )
        })
        .collect()
}

#[test]
fn every_commit_lands_on_every_backend_with_the_same_tid() {
    for fanout in [Mode::Parallel, Mode::Sequential] {
        let b = faulty(3);
        let a = array_over(&b, RaidOptions { fanout, ..opts() });
        let oids = a.new_oids(2).unwrap();
        let t1 = commit(&a, vec![store(oids[0], Tid::ZERO, b"one")]).unwrap();
        let t2 = commit(
            &a,
            vec![store(oids[0], t1, b"two"), store(oids[1], Tid::ZERO, b"x")],
        )
        .unwrap();
        assert!(t2 > t1);
        assert_eq!(a.last_transaction().unwrap(), t2);
        let h0 = history_of(b[0].as_ref());
        assert_eq!(h0.len(), 2);
        for other in &b[1..] {
            assert_eq!(
                history_of(other.as_ref()),
                h0,
                "{fanout:?}: mirrors identical"
            );
        }
        assert_eq!(states(&a), vec!["optimal"; 3]);
    }
}

#[test]
fn a_backend_failing_at_vote_drops_out_and_the_commit_goes_on() {
    let b = faulty(3);
    let a = array_over(&b, opts());
    let oid = a.new_oids(1).unwrap()[0];
    b[1].set(Fault::Down);
    let t = commit(&a, vec![store(oid, Tid::ZERO, b"v")]).unwrap();
    assert_eq!(states(&a), vec!["optimal", "degraded", "optimal"]);
    let why = reason(&a, 1);
    assert!(why.contains("vote") && why.contains("down"), "{why}");
    assert_eq!(history_of(b[0].as_ref()), history_of(b[2].as_ref()));
    assert_eq!(b[1].inner.last_transaction().unwrap(), Tid::ZERO);
    // A degraded backend is not written to any more, even once it works.
    b[1].set(Fault::None);
    let t2 = commit(&a, vec![store(oid, t, b"w")]).unwrap();
    assert_eq!(b[1].inner.last_transaction().unwrap(), Tid::ZERO);
    assert_eq!(b[0].inner.last_transaction().unwrap(), t2);
}

#[test]
fn a_backend_failing_at_finish_is_degraded_and_the_commit_succeeds() {
    let b = faulty(2);
    let a = array_over(&b, opts());
    let oid = a.new_oids(1).unwrap()[0];
    b[0].set(Fault::FailFinish);
    let t = commit(&a, vec![store(oid, Tid::ZERO, b"v")]).unwrap();
    assert_eq!(states(&a), vec!["degraded", "optimal"]);
    assert_eq!(b[1].inner.last_transaction().unwrap(), t);
    // Reads now come from the survivor only.
    for _ in 0..4 {
        assert!(a.load_before(oid, Tid::MAX).unwrap().is_some());
    }
}

#[test]
fn finish_on_fewer_than_min_optimal_commits_and_then_the_array_fails() {
    let b = faulty(2);
    let a = array_over(
        &b,
        RaidOptions {
            min_optimal: 2,
            ..opts()
        },
    );
    let oid = a.new_oids(1).unwrap()[0];
    b[0].set(Fault::FailFinish);
    // Durable and visible on b: the client is told it committed.
    let t = commit(&a, vec![store(oid, Tid::ZERO, b"v")]).unwrap();
    assert_eq!(b[1].inner.last_transaction().unwrap(), t);
    assert_eq!(a.core.published.load(Ordering::Acquire), t.0);
    // Then the array has failed (close): every call is refused, saying why.
    let e = a.load_before(oid, Tid::MAX).unwrap_err();
    assert!(
        matches!(&e, Error::Disconnected(m) if m.contains("failed")),
        "{e}"
    );
    assert!(a.new_oids(1).is_err());
}

#[test]
fn finish_on_no_backend_is_an_error_and_nothing_is_visible() {
    let b = faulty(2);
    let a = array_over(&b, opts());
    let oid = a.new_oids(1).unwrap()[0];
    b[0].set(Fault::FailFinish);
    b[1].set(Fault::FailFinish);
    let r = commit(&a, vec![store(oid, Tid::ZERO, b"v")]);
    assert!(
        matches!(&r, Err(Error::Io(m)) if m.contains("any backend")),
        "{r:?}"
    );
    assert_eq!(a.core.published.load(Ordering::Acquire), 0);
}

#[test]
fn an_explicit_tid_must_be_later_than_the_arrays_last() {
    let b = faulty(2);
    let a = array_over(&b, opts());
    let oid = a.new_oids(1).unwrap()[0];
    let t = commit(&a, vec![store(oid, Tid::ZERO, b"v")]).unwrap();
    let stale = Txn {
        tid: Some(t),
        ..txn(vec![store(oid, t, b"w")])
    };
    assert!(matches!(a.tpc_vote(&stale), Err(Error::Transaction(_))));
    assert_eq!(states(&a), vec!["optimal"; 2], "nobody is blamed for it");
}

#[test]
fn a_backend_unreachable_at_start_is_written_to_the_state_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("raid.state");
    let b = faulty(1);
    let specs = vec![
        BackendSpec {
            name: "here".into(),
            kind: "memory",
            source: BackendSource::Local(b[0].clone()),
            reopen: None,
        },
        BackendSpec {
            name: "gone".into(),
            kind: "file",
            source: BackendSource::Unavailable("cannot open x/Data.fs (test)".into()),
            reopen: None,
        },
    ];
    let _a = RaidStorage::open(
        RaidOptions {
            state_file: Some(state_file.clone()),
            ..opts()
        },
        specs,
    )
    .unwrap();
    let saved = statefile::load(&state_file)
        .unwrap()
        .expect("written at open");
    assert!(saved
        .degraded
        .get("gone")
        .is_some_and(|why| why.contains("cannot open")));
    assert!(!saved.degraded.contains_key("here"));
}

#[test]
fn a_slow_backend_is_degraded_at_the_backend_timeout() {
    let b = faulty(2);
    let a = array_over(
        &b,
        RaidOptions {
            backend_timeout: Duration::from_millis(200),
            ..opts()
        },
    );
    let oid = a.new_oids(1).unwrap()[0];
    b[1].set(Fault::SlowVote(Duration::from_millis(600)));
    let t = commit(&a, vec![store(oid, Tid::ZERO, b"v")]).unwrap();
    assert_eq!(states(&a), vec!["optimal", "degraded"]);
    let why = reason(&a, 1);
    assert!(why.contains("backend-timeout"), "{why}");
    assert_eq!(b[0].inner.last_transaction().unwrap(), t);
    // The slow backend's late vote prepared a transaction; it was aborted,
    // so the backend is usable again (a later recovery writes to it).
    assert_eq!(b[1].inner.last_transaction().unwrap(), Tid::ZERO);
}

#[test]
fn a_call_that_fails_at_its_own_deadline_counts_as_the_backend_timeout() {
    let b = faulty(2);
    let a = array_over(
        &b,
        RaidOptions {
            backend_timeout: Duration::from_millis(300),
            ..opts()
        },
    );
    let oid = a.new_oids(1).unwrap()[0];
    b[1].set(Fault::LateFailure(Duration::from_millis(300)));
    commit(&a, vec![store(oid, Tid::ZERO, b"v")]).unwrap();
    let why = reason(&a, 1);
    assert!(why.contains("backend-timeout"), "{why}");
}

#[test]
fn conflicts_go_to_the_client_and_nothing_is_degraded() {
    let b = faulty(3);
    let a = array_over(&b, opts());
    let oid = a.new_oids(1).unwrap()[0];
    let t1 = commit(&a, vec![store(oid, Tid::ZERO, b"1")]).unwrap();
    let t2 = commit(&a, vec![store(oid, t1, b"2")]).unwrap();
    match a.tpc_vote(&txn(vec![store(oid, t1, b"stale")])).unwrap() {
        Vote::Conflicts(c) => {
            assert_eq!(
                (c.len(), c[0].oid, c[0].committed, c[0].read),
                (1, oid, t2, t1)
            );
        }
        v => panic!("expected conflicts, got {v:?}"),
    }
    a.tpc_abort();
    assert_eq!(states(&a), vec!["optimal"; 3]);
}

#[test]
fn the_odd_one_out_is_degraded() {
    let b = faulty(3);
    let a = array_over(&b, opts());
    let oid = a.new_oids(1).unwrap()[0];
    let t1 = commit(&a, vec![store(oid, Tid::ZERO, b"1")]).unwrap();
    // Someone changes the object on backend c behind the array's back.
    write_behind_the_arrays_back(&b[2], oid, t1);
    // Now a commit over t1 prepares on a and b and conflicts on c.
    let t = commit(&a, vec![store(oid, t1, b"2")]).unwrap();
    assert_eq!(states(&a), vec!["optimal", "optimal", "degraded"]);
    let why = reason(&a, 2);
    assert!(why.contains("disagreed"), "{why}");
    assert_eq!(b[0].inner.last_transaction().unwrap(), t);
}

#[test]
fn a_tie_goes_to_the_first_listed_backend() {
    let b = faulty(2);
    let a = array_over(&b, opts());
    let oid = a.new_oids(1).unwrap()[0];
    let t1 = commit(&a, vec![store(oid, Tid::ZERO, b"1")]).unwrap();
    write_behind_the_arrays_back(&b[0], oid, t1);
    // a conflicts, b prepares: one each; a is listed first and wins.
    let v = a.tpc_vote(&txn(vec![store(oid, t1, b"2")])).unwrap();
    assert!(matches!(v, Vote::Conflicts(_)), "{v:?}");
    assert_eq!(states(&a), vec!["optimal", "degraded"]);
    assert_eq!(
        b[1].inner.last_transaction().unwrap(),
        t1,
        "b's prepared vote was aborted"
    );
}

#[test]
fn a_missing_object_is_confirmed_on_a_second_backend() {
    let b = faulty(2);
    let a = array_over(
        &b,
        RaidOptions {
            // Reads of what the array committed must reach the backends here.
            cache_size: 0,
            read_policy: ReadPolicy::Primary,
            ..opts()
        },
    );
    let oid = a.new_oids(1).unwrap()[0];
    commit(&a, vec![store(oid, Tid::ZERO, b"v")]).unwrap();
    b[0].set(Fault::LoseObjects);
    let l = a.load_before(oid, Tid::MAX).unwrap().expect("found on b");
    assert_eq!(&l.data[..], b"v");
    assert_eq!(states(&a), vec!["degraded", "optimal"]);
    let why = reason(&a, 0);
    assert!(why.contains("missing object"), "{why}");
    // Really missing everywhere: POSKeyError, nobody degraded.
    assert_eq!(
        a.load_before(Oid(999), Tid::MAX),
        Err(Error::PosKey(Oid(999)))
    );
    let c = array_over(&faulty(2), opts());
    assert_eq!(c.load_before(Oid(5), Tid::MAX), Err(Error::PosKey(Oid(5))));
    assert_eq!(states(&c), vec!["optimal"; 2]);
}

#[test]
fn reads_are_spread_and_a_failed_read_is_retried_elsewhere() {
    let b = faulty(3);
    let a = array_over(&b, uncached());
    let oid = a.new_oids(1).unwrap()[0];
    commit(&a, vec![store(oid, Tid::ZERO, b"v")]).unwrap();
    let before: Vec<u64> = a
        .core
        .backends
        .iter()
        .map(|b| b.reads.load(Ordering::Relaxed))
        .collect();
    for _ in 0..30 {
        a.load_before(oid, Tid::MAX).unwrap();
    }
    let after: Vec<u64> = a
        .core
        .backends
        .iter()
        .map(|b| b.reads.load(Ordering::Relaxed))
        .collect();
    for i in 0..3 {
        assert_eq!(
            after[i] - before[i],
            10,
            "round-robin: {before:?} -> {after:?}"
        );
    }
    b[1].set(Fault::Down);
    for _ in 0..6 {
        assert!(a.load_before(oid, Tid::MAX).unwrap().is_some());
    }
    assert_eq!(states(&a), vec!["optimal", "degraded", "optimal"]);
}

#[test]
fn fail_modes_when_too_few_backends_remain() {
    for (mode, read_only) in [(FailMode::Close, false), (FailMode::ReadOnly, true)] {
        let b = faulty(2);
        let a = array_over(
            &b,
            RaidOptions {
                // Reads of what the array committed must reach the backends here.
                cache_size: 0,
                fail_mode: mode,
                min_optimal: 2,
                ..opts()
            },
        );
        let oid = a.new_oids(1).unwrap()[0];
        commit(&a, vec![store(oid, Tid::ZERO, b"v")]).unwrap();
        let fresh = a.new_oids(1).unwrap()[0];
        b[1].set(Fault::Down);
        let r = commit(&a, vec![store(fresh, Tid::ZERO, b"w")]);
        assert!(r.is_err(), "{r:?}");
        assert_eq!(states(&a), vec!["optimal", "degraded"]);
        let w = a.tpc_vote(&txn(vec![store(fresh, Tid::ZERO, b"w")]));
        if read_only {
            assert_eq!(w.unwrap_err(), Error::ReadOnly);
        } else {
            assert!(
                matches!(&w, Err(Error::Disconnected(m)) if m.contains("min-optimal")),
                "{w:?}"
            );
        }
        // Reads: served from the survivor in read-only mode, refused when closed.
        assert_eq!(a.load_before(oid, Tid::MAX).is_ok(), read_only, "{mode:?}");
        // With no optimal backend at all nothing is served.
        b[0].set(Fault::Down);
        let _ = a.load_before(oid, Tid::MAX);
        assert!(a.load_before(oid, Tid::MAX).is_err());
    }
}

#[test]
fn behind_at_start_and_the_state_file_keep_backends_degraded() {
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("raid.state");
    let with_file = || RaidOptions {
        state_file: Some(state_file.clone()),
        ..opts()
    };
    let b = faulty(3);
    {
        let a = array_over(&b, with_file());
        let oid = a.new_oids(1).unwrap()[0];
        commit(&a, vec![store(oid, Tid::ZERO, b"v")]).unwrap();
        b[2].set(Fault::Down);
        commit(&a, vec![store(oid, a.last_transaction().unwrap(), b"w")]).unwrap();
        b[2].set(Fault::None);
        a.close();
    }
    // Restart over the same backends: c misses a transaction and the state
    // file says it was degraded.
    let a = array_over(&b, with_file());
    assert_eq!(states(&a), vec!["optimal", "optimal", "degraded"]);
    assert!(reason(&a, 2).contains("before the restart"));
    // Even with the same last tid, a backend the file names stays degraded.
    let fresh = faulty(2);
    statefile::save(
        &state_file,
        &statefile::Saved {
            degraded: [("b".to_string(), "disagreed (test)".to_string())].into(),
            ..Default::default()
        },
    )
    .unwrap();
    let a = array_over(&fresh, with_file());
    assert_eq!(states(&a), vec!["optimal", "degraded"]);
    // Without a state file: judged by last tid only.
    std::fs::remove_file(&state_file).unwrap();
    let a = array_over(&b, with_file());
    assert_eq!(states(&a), vec!["optimal", "optimal", "degraded"]);
    assert!(reason(&a, 2).contains("missing transactions"));
    // A corrupt state file stops the start, naming the file.
    std::fs::write(&state_file, "garbage").unwrap();
    let specs = vec![BackendSpec {
        name: "a".into(),
        kind: "memory",
        source: BackendSource::Local(b[0].clone()),
        reopen: None,
    }];
    let err = RaidStorage::open(with_file(), specs)
        .err()
        .expect("refused");
    assert!(err.contains("raid.state"), "{err}");
}

#[test]
fn oids_are_never_handed_out_twice_across_a_restart() {
    let b = faulty(2);
    let first = {
        let a = array_over(&b, opts());
        let oids = a.new_oids(5).unwrap();
        commit(&a, vec![store(oids[4], Tid::ZERO, b"v")]).unwrap();
        oids
    };
    let a = array_over(&b, opts());
    let again = a.new_oids(3).unwrap();
    assert!(
        again.iter().all(|o| *o > first[4]),
        "{first:?} then {again:?}"
    );
    // Stores of oids the array did not hand out move its counter too.
    commit(&a, vec![store(Oid(1000), Tid::ZERO, b"restored")]).unwrap();
    assert!(a.new_oids(1).unwrap()[0] > Oid(1000));
}

#[test]
fn a_backend_that_cannot_be_opened_starts_degraded() {
    let b = faulty(1);
    let specs = vec![
        BackendSpec {
            name: "gone".into(),
            kind: "zeo",
            source: BackendSource::Zeo(ClientOptions {
                connect_timeout: Duration::from_millis(300),
                ..ClientOptions::new("127.0.0.1:1")
            }),
            reopen: None,
        },
        BackendSpec {
            name: "here".into(),
            kind: "memory",
            source: BackendSource::Local(b[0].clone()),
            reopen: None,
        },
    ];
    let a = RaidStorage::open(opts(), specs).expect("opens with one backend down");
    assert_eq!(states(&a), vec!["degraded", "optimal"]);
    let oid = a.new_oids(1).unwrap()[0];
    commit(&a, vec![store(oid, Tid::ZERO, b"v")]).unwrap();
    let status = a.status();
    assert_eq!(status.state, crate::status::ArrayState::Degraded);
    assert_eq!(status.backends[0].state, crate::status::Role::Degraded);
    assert!(status.backends[0]
        .reason
        .as_deref()
        .unwrap()
        .contains("cannot connect"));
}

#[test]
fn zeo_backends_that_do_not_answer_are_waited_for_side_by_side() {
    // Listeners that accept (the kernel's backlog) and never speak.
    let silent: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let mut specs: Vec<BackendSpec> = silent
        .iter()
        .enumerate()
        .map(|(i, l)| BackendSpec {
            name: format!("silent{i}"),
            kind: "zeo",
            source: BackendSource::Zeo(ClientOptions {
                connect_timeout: Duration::from_millis(800),
                ..ClientOptions::new(l.local_addr().unwrap().to_string())
            }),
            reopen: None,
        })
        .collect();
    specs.push(BackendSpec {
        name: "here".into(),
        kind: "memory",
        source: BackendSource::Local(faulty(1)[0].clone()),
        reopen: None,
    });
    let started = Instant::now();
    let a = RaidStorage::open(opts(), specs).expect("opens");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2000),
        "connects waited in turn: {took:?}"
    );
    assert_eq!(
        states(&a),
        vec!["degraded", "degraded", "degraded", "optimal"]
    );
}

#[test]
fn a_load_the_event_loop_cannot_answer_goes_to_the_backend_round_robin_chose() {
    // Memory backends answer no load "without waiting" (the event loop
    // path); the server then loads on a worker. Round-robin must still
    // alternate: the event loop's pick is a peek.
    let b = faulty(2);
    let a = array_over(&b, uncached());
    let oid = a.new_oids(1).unwrap()[0];
    commit(&a, vec![store(oid, Tid::ZERO, b"x")]).unwrap();
    for _ in 0..100 {
        if a.load_before_nowait(oid, Tid::MAX).is_none() {
            a.load_before(oid, Tid::MAX).unwrap();
        }
    }
    let reads: Vec<u64> = a.status().backends.iter().map(|b| b.reads).collect();
    assert_eq!(reads, vec![50, 50]);
}
