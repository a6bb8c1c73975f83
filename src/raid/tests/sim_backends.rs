//! Simulated backends for the array's tests (issue #22): a storage
//! wrapper over an in-process file mirror whose fault plan makes a chosen
//! call (`load_before`, `tpc_vote`, `finish_log`, `make_durable`,
//! `tpc_abort`, `last_transaction`, `new_oids`, `iterator`) at a chosen
//! occurrence fail (a dropped connection or an IO error, before or after
//! doing the work), hang (answer late, past the array's deadline), answer
//! slowly, disagree, or drop the connection (every call fails until the
//! backend is reopened, and the array hears of it as a ZEO backend's
//! event); and the server's half of a commit (its commit lock, its group
//! committer), so several clients can commit at once as through a server.
//!
//! A campaign over them follows; here, the bug it found first.

use super::*;
use crate::storage::file::{FileOptions, FileStorage};
use crate::zeo::client::{EventHandler, ServerEvent};
use std::sync::Condvar;

/// How long a hung call blocks unless it is released first.
const HANG: Duration = Duration::from_millis(320);

/// A call of the storage contract a fault can be armed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    LoadBefore,
    Vote,
    FinishLog,
    MakeDurable,
    Abort,
    LastTransaction,
    NewOids,
    Iterator,
}

/// What an armed call does.
// The campaign (next) arms every kind; this commit's test one.
#[allow(dead_code)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Fails at once, as a lost connection ("storage unavailable").
    Disconnect,
    /// Fails at once with an IO error.
    Io,
    /// Does its work, then reports an IO error (it may hold it).
    FailsAfterDoing,
    /// Blocks until released or [`HANG`] has passed, then does its work
    /// (a late answer).
    Hang,
    /// Answers after this many milliseconds (within the timeout).
    Slow(u64),
    /// A vote that prepared, then answers as no other backend does.
    Disagree,
    /// The connection drops: this call and every later one fail until
    /// the backend is reopened or the connection comes back.
    Drop,
}

/// One armed fault: on the `skip + 1`-th call of `call` from now.
#[derive(Clone, Copy, Debug)]
struct Armed {
    call: Call,
    skip: u32,
    fault: Fault,
}

#[derive(Default)]
struct Plan {
    armed: Vec<Armed>,
    dropped: bool,
    /// Bumped to release the calls hanging now.
    release: u64,
    /// What fired, for the trail.
    fired: Vec<String>,
}

/// A backend's fault plan; it outlives the backend's handles (a reopen
/// keeps it, a reopen also reconnects a dropped connection).
#[derive(Default)]
struct SimCell {
    plan: Mutex<Plan>,
    cv: Condvar,
    /// Told when the connection drops, as a ZEO backend's event handler.
    on_drop: Mutex<Option<EventHandler>>,
    events: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl SimCell {
    fn arm(&self, a: Armed) {
        lock(&self.plan).armed.push(a);
    }

    /// The fault for this call, if one is due.
    fn enter(&self, call: Call) -> Option<Fault> {
        let mut p = lock(&self.plan);
        if p.dropped {
            return Some(Fault::Disconnect);
        }
        let at = p.armed.iter().position(|a| a.call == call)?;
        if p.armed[at].skip > 0 {
            p.armed[at].skip -= 1;
            return None;
        }
        let a = p.armed.remove(at);
        p.fired.push(format!("{:?} {:?}", a.call, a.fault));
        if a.fault == Fault::Drop {
            p.dropped = true;
            drop(p);
            if let Some(h) = lock(&self.on_drop).clone() {
                // As a ZEO client's reader thread hears of it.
                let t = std::thread::spawn(move || {
                    h(ServerEvent::Disconnected(
                        "connection dropped (simulated)".into(),
                    ))
                });
                lock(&self.events).push(t);
            }
        }
        Some(a.fault)
    }

    fn hang(&self) {
        let deadline = Instant::now() + HANG;
        let mut p = lock(&self.plan);
        let gen = p.release;
        while p.release == gen {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            p = self
                .cv
                .wait_timeout(p, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The end of a step: hung calls answer, the connection is back,
    /// nothing is armed. Returns what fired.
    fn clear(&self) -> Vec<String> {
        let fired = {
            let mut p = lock(&self.plan);
            p.release += 1;
            p.dropped = false;
            p.armed.clear();
            std::mem::take(&mut p.fired)
        };
        self.cv.notify_all();
        for t in lock(&self.events).drain(..) {
            let _ = t.join();
        }
        fired
    }

    fn reconnect(&self) {
        lock(&self.plan).dropped = false;
    }

    #[allow(dead_code)]
    fn active(&self) -> bool {
        let p = lock(&self.plan);
        p.dropped || !p.armed.is_empty() || !p.fired.is_empty()
    }
}

/// A file storage behind a fault plan.
struct SimBackend {
    inner: Arc<dyn Storage>,
    cell: Arc<SimCell>,
}

impl SimBackend {
    fn call<T>(&self, call: Call, f: impl FnOnce() -> Result<T>) -> Result<T> {
        match self.cell.enter(call) {
            None => f(),
            Some(Fault::Disconnect | Fault::Drop) => Err(Error::Disconnected(format!(
                "connection dropped at {call:?} (simulated)"
            ))),
            Some(Fault::Io) => Err(Error::Io(format!("disk error at {call:?} (simulated)"))),
            Some(Fault::FailsAfterDoing) => {
                let _ = f();
                Err(Error::Io(format!(
                    "{call:?} done, then reported failed (simulated)"
                )))
            }
            Some(Fault::Hang) => {
                self.cell.hang();
                f()
            }
            Some(Fault::Slow(ms)) => {
                std::thread::sleep(Duration::from_millis(ms));
                f()
            }
            Some(Fault::Disagree) => {
                let _ = f();
                Err(Error::Transaction(format!(
                    "this mirror disagrees at {call:?} (simulated)"
                )))
            }
        }
    }
}

impl Storage for SimBackend {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn is_read_only(&self) -> bool {
        self.inner.is_read_only()
    }
    fn supports_undo(&self) -> bool {
        self.inner.supports_undo()
    }
    fn last_transaction(&self) -> Result<Tid> {
        self.call(Call::LastTransaction, || self.inner.last_transaction())
    }
    fn load_before(&self, oid: Oid, before: Tid) -> Result<Option<Loaded>> {
        self.call(Call::LoadBefore, || self.inner.load_before(oid, before))
    }
    fn load_serial(&self, oid: Oid, serial: Tid) -> Result<Data> {
        self.call(Call::LoadBefore, || self.inner.load_serial(oid, serial))
    }
    fn history(&self, oid: Oid, size: usize) -> Result<Vec<HistoryEntry>> {
        self.inner.history(oid, size)
    }
    fn new_oids(&self, n: usize) -> Result<Vec<Oid>> {
        self.call(Call::NewOids, || self.inner.new_oids(n))
    }
    fn tpc_vote(&self, txn: &Txn) -> Result<Vote> {
        self.call(Call::Vote, || self.inner.tpc_vote(txn))
    }
    fn tpc_finish(&self) -> Result<Tid> {
        let tid = self.finish_log()?;
        self.make_durable(tid)?;
        self.publish(tid);
        Ok(tid)
    }
    fn group_commit(&self) -> bool {
        self.inner.group_commit()
    }
    fn finish_log(&self) -> Result<Tid> {
        self.call(Call::FinishLog, || self.inner.finish_log())
    }
    fn make_durable(&self, tid: Tid) -> Result<()> {
        self.call(Call::MakeDurable, || self.inner.make_durable(tid))
    }
    fn publish(&self, tid: Tid) {
        self.inner.publish(tid)
    }
    fn tpc_abort(&self) {
        // An abort has no answer to fail: a dropped connection's server
        // aborts by itself. It can only be late.
        let _ = self.call(Call::Abort, || {
            self.inner.tpc_abort();
            Ok(())
        });
        if lock(&self.cell.plan).dropped {
            self.inner.tpc_abort();
        }
    }
    fn undo_log(&self, first: usize, last: usize) -> Result<Vec<UndoEntry>> {
        self.inner.undo_log(first, last)
    }
    fn iterator(&self, start: Option<Tid>, stop: Option<Tid>) -> Result<TxnIter> {
        self.call(Call::Iterator, || self.inner.iterator(start, stop))
    }
    fn record_iternext(&self, next: Option<Oid>) -> Result<Option<CurrentRecord>> {
        self.inner.record_iternext(next)
    }
    fn pack(&self, t: f64, gc: bool) -> Result<()> {
        self.inner.pack(t, gc)
    }
    fn size_info(&self) -> SizeInfo {
        self.inner.size_info()
    }
    fn close(&self) {
        self.inner.close()
    }
}

fn open_sim(
    path: &std::path::Path,
    cell: &Arc<SimCell>,
) -> std::result::Result<Arc<dyn Storage>, String> {
    let options = FileOptions {
        sync: false,
        ..FileOptions::default()
    };
    let fs = FileStorage::open(path, options)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    Ok(Arc::new(SimBackend {
        inner: Arc::new(fs),
        cell: cell.clone(),
    }))
}

/// A simulated backend "name" over the file at `path`; a reopen makes a
/// new connection (a dropped one is back).
fn sim_spec(
    name: &str,
    path: std::path::PathBuf,
    cell: &Arc<SimCell>,
) -> std::result::Result<BackendSpec, String> {
    let s = open_sim(&path, cell)?;
    let c = cell.clone();
    Ok(BackendSpec {
        name: name.into(),
        kind: "file",
        source: BackendSource::Local(s),
        reopen: Some(Arc::new(move |_fresh| {
            c.reconnect();
            Ok((open_sim(&path, &c)?, None))
        })),
    })
}

/// One writer's object and what it was told committed.
struct Own {
    oid: Oid,
    serial: Tid,
    acked: Vec<(Tid, Vec<u8>)>,
}

impl Own {
    fn new(a: &RaidStorage) -> Own {
        Own {
            oid: a.new_oids(1).expect("an oid")[0],
            serial: Tid::ZERO,
            acked: Vec::new(),
        }
    }

    /// One commit as the server runs it; acknowledged once durable.
    fn commit(&mut self, server: &Server, a: &RaidStorage) -> Result<Tid> {
        let data = format!("value {}", self.acked.len()).into_bytes();
        let t = server.commit(a, vec![store(self.oid, self.serial, &data)])?;
        self.serial = t;
        self.acked.push((t, data));
        Ok(t)
    }
}

/// A logged transaction waiting for the committer, and where to answer.
type Logged = (Tid, crossbeam_channel::Sender<Result<()>>);

/// The server's half of a commit, as `server::commit` and
/// `server::committer` run it: vote and `finish_log` under the storage's
/// commit lock, one transaction at a time (the array is called so); then
/// a committer thread makes each batch durable with one call and
/// publishes it in tid order, and only then is the client answered.
struct Server {
    commit_lock: Mutex<Option<crossbeam_channel::Sender<Logged>>>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Server {
    fn start(a: &Arc<RaidStorage>) -> Server {
        let (tx, rx) = crossbeam_channel::unbounded::<Logged>();
        let a = a.clone();
        let committer = std::thread::Builder::new()
            .name("sim-committer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let last = batch.last().map(|(t, _)| *t).expect("one");
                    match a.make_durable(last) {
                        Ok(()) => {
                            for (t, reply) in batch {
                                a.publish(t);
                                let _ = reply.send(Ok(()));
                            }
                        }
                        Err(e) => {
                            for (_, reply) in batch {
                                let _ = reply.send(Err(e.clone()));
                            }
                        }
                    }
                }
            })
            .expect("the committer thread starts");
        Server {
            commit_lock: Mutex::new(Some(tx)),
            committer: Mutex::new(Some(committer)),
        }
    }

    fn commit(&self, a: &RaidStorage, ops: Vec<Op>) -> Result<Tid> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let tid = {
            let g = lock(&self.commit_lock);
            let Some(committer) = g.as_ref() else {
                return Err(Error::Disconnected("the server is closing".into()));
            };
            match a.tpc_vote(&txn(ops)) {
                Ok(Vote::Prepared { .. }) => {}
                Ok(Vote::Conflicts(c)) => {
                    a.tpc_abort();
                    return Err(Error::Value(format!("conflicts: {c:?}")));
                }
                Err(e) => {
                    a.tpc_abort();
                    return Err(e);
                }
            }
            let tid = match a.finish_log() {
                Ok(t) => t,
                Err(e) => {
                    a.tpc_abort();
                    return Err(e);
                }
            };
            committer
                .send((tid, reply))
                .map_err(|_| Error::Disconnected("the committer has stopped".into()))?;
            tid
        };
        match answer.recv() {
            Ok(Ok(())) => Ok(tid),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Disconnected("the committer has stopped".into())),
        }
    }

    fn stop(&self) {
        drop(lock(&self.commit_lock).take());
        if let Some(t) = lock(&self.committer).take() {
            let _ = t.join();
        }
    }
}

/// Found by the simulation campaign (issue #22): a recovery pass that
/// fails after it logged transactions on the target with group commit
/// (`finish_log`), before it made them durable and published them, left
/// the target holding transactions its `last_transaction` does not show.
/// Every later recovery read the older position, tried to write a
/// transaction the target already had logged, and failed ("transaction id
/// ... is not later than the last transaction ..."): the backend could
/// never be recovered again without a restart.
#[test]
fn a_recovery_that_fails_after_logging_leaves_the_target_recoverable() {
    let dir = tempfile::tempdir().unwrap();
    let cells: Vec<Arc<SimCell>> = (0..2).map(|_| Arc::new(SimCell::default())).collect();
    let specs = ["a", "b"]
        .iter()
        .zip(&cells)
        .map(|(n, c)| sim_spec(n, dir.path().join(format!("{n}.fs")), c).unwrap())
        .collect();
    let a = Arc::new(RaidStorage::open(opts(), specs).unwrap());
    let server = Server::start(&a);
    let mut own = Own::new(&a);
    own.commit(&server, &a).unwrap();
    a.disable("b").unwrap();
    for _ in 0..200 {
        own.commit(&server, &a).unwrap();
    }
    // The copy's 100th restore loses the connection: the 99 before it
    // were logged, and (the reader being ahead) not yet made durable.
    cells[1].arm(Armed {
        call: Call::Vote,
        skip: 99,
        fault: Fault::Drop,
    });
    let first = a.recover("b", false);
    assert!(first.is_err(), "the fault fired: {first:?}");
    cells[1].clear();
    let again = a.recover("b", false);
    assert!(
        again.is_ok(),
        "once the connection is back, b is recoverable: {again:?}"
    );
    assert_eq!(a.verify("b").unwrap().difference, None);
    own.commit(&server, &a).unwrap();
    server.stop();
    a.close();
}
