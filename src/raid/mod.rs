//! The RAID-1 array: a [`Storage`] that mirrors every transaction onto
//! several backend storages, so the server serves it like any other.
//!
//! - [`state`]: the decisions (backend and array states, voting among
//!   results, fail mode, the next tid): pure functions, table-tested;
//! - [`fanout`]: one call on many backends, in parallel or in sequence,
//!   against a deadline;
//! - [`balance`]: which backend serves a read (`read-policy`);
//! - [`statefile`]: the array's memory across restarts;
//! - this file: [`RaidStorage`], which does the IO and asks the others.
//!
//! **Writes.** The server calls `tpc_vote` under its commit lock, one
//! transaction at a time. The array gives the transaction its tid (later
//! than its own last and never before the wall clock, [`state::next_tid`])
//! and votes it with that explicit tid on every optimal backend, then
//! finishes it on every backend that voted with the majority. The answers
//! are compared ([`state::decide`]): a backend that fails, misses
//! `backend-timeout` or answers differently is degraded with the reason,
//! and the client sees nothing of it. Conflicts go back to the client as
//! ZEO 5 conflict dicts; a backend that resolved them itself (Python ZEO's
//! default) counts as agreeing and is aborted, so the client resolves once
//! for all ([`state::unify_resolution`]).
//!
//! **Never believing a backend holds what it may not.** A backend is only
//! called for writes while optimal. One that fails or times out during
//! vote is aborted and degraded; one that fails during `tpc_finish` (or
//! `make_durable`) may or may not hold the transaction, so it is degraded
//! at once, before the client is answered, and stays degraded (the state
//! file remembers it) until it is recovered. Backends behind the newest
//! last tid at start-up start degraded ("missing transactions").
//!
//! **Group commit.** When every backend does group commit (file
//! backends), so does the array: `finish_log` on all under the lock,
//! `make_durable` on all in parallel after it, `publish` on all in tid
//! order.
//!
//! **OIDs.** At start the array asks each optimal backend for a new oid and
//! continues above the largest; it hands out oids from its own counter.
//! Every backend raises its own counter past each oid it stores, so after a
//! failover or a restart the array's counter starts above every committed
//! oid. (Oids handed out but never committed before a restart may be
//! handed out again, as with ZODB's FileStorage.)
//!
//! **Invalidations.** The array's own commits reach clients once, through
//! the server, however many backends there are. A ZEO backend sends the
//! array an invalidation only when someone else committed on it directly:
//! that backend is degraded ("written to directly"), as is one whose
//! connection drops.

pub mod balance;
pub mod fanout;
pub mod state;
pub mod statefile;

use crate::locks::{lock, read, write};
use crate::storage::resolve::ConflictResolver;
use crate::storage::{
    timestamp, CurrentRecord, Data, Error, HistoryEntry, Loaded, Oid, Result, SizeInfo, Storage,
    Tid, Txn, TxnIter, UndoEntry, Vote,
};
use crate::zeo::client::{Client, ClientOptions, ServerEvent};
use balance::ReadPolicy;
use fanout::{Mode, Outcome};
use state::{BackendState, FailMode, VoteKey};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

/// The array's settings (the `kind = "raid"` storage section).
#[derive(Clone, Debug)]
pub struct RaidOptions {
    pub name: String,
    pub fanout: Mode,
    pub read_policy: ReadPolicy,
    pub min_optimal: usize,
    pub fail_mode: FailMode,
    /// A backend slower than this is degraded; also the ZEO backends' call deadline.
    pub backend_timeout: Duration,
    /// Where the array remembers degraded backends; `None`: nowhere (tests).
    pub state_file: Option<PathBuf>,
}

/// How to reach one backend.
pub enum BackendSource {
    /// An in-process storage (file, memory), already open.
    Local(Arc<dyn Storage>),
    /// A ZEO server (Python runzeo with `msgpack true`, or zeoraid).
    Zeo(ClientOptions),
    /// A backend that could not be opened: it starts degraded with this reason.
    Unavailable(String),
}

/// A backend to build the array from.
pub struct BackendSpec {
    pub name: String,
    pub kind: &'static str,
    pub source: BackendSource,
}

/// One mirror and what the array knows of it.
struct Backend {
    name: String,
    kind: &'static str,
    storage: Option<Arc<dyn Storage>>,
    /// In process (file, memory): its calls are CPU, not round trips.
    local: bool,
    state: RwLock<BackendState>,
    /// Moving average of call latency, microseconds (f64 bits).
    latency_us: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    last_tid: AtomicU64,
}

impl Backend {
    fn latency(&self) -> f64 {
        f64::from_bits(self.latency_us.load(Ordering::Relaxed))
    }

    fn observe(&self, took: Duration) {
        let next = balance::ewma(self.latency(), took.as_secs_f64() * 1e6);
        self.latency_us.store(next.to_bits(), Ordering::Relaxed);
    }

    fn is_optimal(&self) -> bool {
        self.storage.is_some() && read(&self.state).is_optimal()
    }

    fn storage(&self) -> Result<&Arc<dyn Storage>> {
        self.storage
            .as_ref()
            .ok_or_else(|| Error::Disconnected(format!("backend {:?} is not open", self.name)))
    }
}

/// The transaction between vote and finish.
#[derive(Default)]
struct Pending {
    tid: Option<Tid>,
    /// Backends that prepared it (positions).
    prepared: Vec<usize>,
}

struct Core {
    opts: RaidOptions,
    backends: Vec<Backend>,
    fanout: fanout::Fanout,
    pending: Mutex<Pending>,
    /// Last tid logged (voted and finished, perhaps not yet durable).
    last_logged: Mutex<Tid>,
    /// Last tid visible to loads.
    published: AtomicU64,
    next_oid: Mutex<u64>,
    reads: AtomicU64,
    /// Serialises state changes and state-file writes.
    states: Mutex<()>,
    group: bool,
}

/// The array. Cheap to share; the server holds it as `Arc<dyn Storage>`.
pub struct RaidStorage {
    core: Arc<Core>,
}

impl RaidStorage {
    /// Open the array over `specs` (in configuration order): connect the
    /// ZEO backends, apply the state file, compare last tids.
    pub fn open(
        opts: RaidOptions,
        specs: Vec<BackendSpec>,
    ) -> std::result::Result<RaidStorage, String> {
        if specs.is_empty() {
            return Err(format!("RAID array {:?} has no backends", opts.name));
        }
        let saved = match &opts.state_file {
            Some(p) => statefile::load(p)?,
            None => None,
        };
        if saved.is_none() {
            if let Some(p) = &opts.state_file {
                log::info!(
                    "RAID array {:?}: no state file at {} (first start); backends are judged by their last transaction",
                    opts.name,
                    p.display()
                );
            }
        }
        let saved = saved.unwrap_or_default();
        let fanout = fanout::Fanout::new(opts.fanout, &opts.name, specs.len()).map_err(|e| {
            format!(
                "cannot start the fan-out threads of RAID array {:?}: {e}",
                opts.name
            )
        })?;
        // Build the core first: ZEO backends' event handlers point at it.
        let core = Arc::new_cyclic(|weak: &Weak<Core>| {
            let backends = specs
                .into_iter()
                .enumerate()
                .map(|(i, spec)| {
                    let local = matches!(spec.source, BackendSource::Local(_));
                    let (storage, problem) = match spec.source {
                        BackendSource::Local(s) => (Some(s), None),
                        BackendSource::Unavailable(why) => (None, Some(why)),
                        BackendSource::Zeo(mut copts) => {
                            copts.call_timeout = opts.backend_timeout;
                            copts.connect_timeout = copts.connect_timeout.min(opts.backend_timeout);
                            let addr = copts.addr.clone();
                            match Client::connect_with_handler(
                                copts,
                                Some(event_handler(weak.clone(), i)),
                            ) {
                                Ok(c) => (Some(Arc::new(c) as Arc<dyn Storage>), None),
                                Err(e) => (None, Some(format!("cannot connect to {addr}: {e}"))),
                            }
                        }
                    };
                    let state = match (problem, saved.degraded.get(&spec.name)) {
                        (Some(p), _) => BackendState::Degraded(p),
                        (None, Some(why)) => {
                            BackendState::Degraded(format!("degraded before the restart: {why}"))
                        }
                        (None, None) => BackendState::Optimal,
                    };
                    Backend {
                        name: spec.name,
                        kind: spec.kind,
                        storage,
                        local,
                        state: RwLock::new(state),
                        latency_us: AtomicU64::new(0f64.to_bits()),
                        reads: AtomicU64::new(0),
                        writes: AtomicU64::new(0),
                        last_tid: AtomicU64::new(0),
                    }
                })
                .collect::<Vec<_>>();
            let group = backends
                .iter()
                .all(|b| b.storage.as_ref().is_some_and(|s| s.group_commit()));
            Core {
                opts: opts.clone(),
                backends,
                fanout,
                pending: Mutex::new(Pending::default()),
                last_logged: Mutex::new(Tid::ZERO),
                published: AtomicU64::new(0),
                next_oid: Mutex::new(0),
                reads: AtomicU64::new(0),
                states: Mutex::new(()),
                group,
            }
        });
        for b in &core.backends {
            if let Some(why) = read(&b.state).reason() {
                log::warn!(
                    "RAID array {:?}: backend {:?} starts degraded: {why}",
                    core.opts.name,
                    b.name
                );
            }
        }
        core.start_up();
        Ok(RaidStorage { core })
    }

    /// The array's state and each backend's, for `ruok` and logs.
    pub fn status(&self) -> serde_json::Value {
        self.core.status()
    }
}

/// The handler for a ZEO backend's unasked messages (runs on its reader
/// thread: it must not call that backend).
fn event_handler(core: Weak<Core>, i: usize) -> crate::zeo::client::EventHandler {
    Arc::new(move |ev: ServerEvent| {
        let Some(core) = core.upgrade() else { return };
        match ev {
            ServerEvent::Invalidate { tid, oids } => core.degrade(
                i,
                format!(
                    "written to directly: transaction {tid} ({} objects) was committed on it by \
                     another client, not through the array; stop writing to backends directly and \
                     recover it",
                    oids.len()
                ),
            ),
            ServerEvent::Disconnected(why) => core.degrade(
                i,
                format!("connection lost: {why}; recover it once it is back"),
            ),
            ServerEvent::Connected { .. } | ServerEvent::Info(_) => {}
        }
    })
}

impl Core {
    fn optimal(&self) -> Vec<usize> {
        (0..self.backends.len())
            .filter(|&i| self.backends[i].is_optimal())
            .collect()
    }

    /// Degrade backend `i` with `why` (idempotent), log it, persist it.
    fn degrade(&self, i: usize, why: String) {
        let _g = lock(&self.states);
        let b = &self.backends[i];
        {
            let mut st = write(&b.state);
            if !st.is_optimal() {
                return;
            }
            *st = BackendState::Degraded(why.clone());
        }
        let left = self.optimal().len();
        log::error!(
            "RAID array {:?}: backend {:?} degraded: {why}; {left} of {} backends optimal, array {}",
            self.opts.name,
            b.name,
            self.backends.len(),
            self.array_state()
        );
        if left < self.opts.min_optimal.max(1) {
            log::error!(
                "RAID array {:?} has failed: fewer than min-optimal = {} optimal backends; {}",
                self.opts.name,
                self.opts.min_optimal,
                match self.opts.fail_mode {
                    FailMode::Close => "every request is refused until backends are repaired and the server restarted",
                    FailMode::ReadOnly => "it serves reads only (writes get ReadOnlyError) until backends are repaired",
                }
            );
        }
        self.save_state();
    }

    fn save_state(&self) {
        let Some(path) = &self.opts.state_file else {
            return;
        };
        let mut saved = statefile::Saved::default();
        for b in &self.backends {
            if let Some(why) = read(&b.state).reason() {
                saved.degraded.insert(b.name.clone(), why.to_string());
            }
        }
        if let Err(e) = statefile::save(path, &saved) {
            log::error!(
                "RAID array {:?}: {e}; a restart may trust a degraded backend again",
                self.opts.name
            );
        }
    }

    fn array_state(&self) -> state::ArrayState {
        let states: Vec<BackendState> = self
            .backends
            .iter()
            .map(|b| {
                if b.is_optimal() {
                    BackendState::Optimal
                } else {
                    read(&b.state).clone()
                }
            })
            .collect();
        state::array_state(&states, self.opts.min_optimal)
    }

    /// Compare last tids, pick the oid counter, report.
    fn start_up(&self) {
        let optimal = self.optimal();
        let lasts: Vec<Option<Tid>> = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if !optimal.contains(&i) {
                    return None;
                }
                match b.storage().and_then(|s| s.last_transaction()) {
                    Ok(t) => {
                        b.last_tid.store(t.0, Ordering::Relaxed);
                        Some(t)
                    }
                    Err(e) => {
                        self.degrade(i, format!("lastTransaction failed at start-up: {e}"));
                        None
                    }
                }
            })
            .collect();
        for (i, behind) in state::behind_at_start(&lasts).into_iter().enumerate() {
            if let Some(why) = behind {
                self.degrade(i, why);
            }
        }
        let last = lasts.iter().flatten().copied().max().unwrap_or(Tid::ZERO);
        *lock(&self.last_logged) = last;
        self.published.store(last.0, Ordering::Release);
        let mut next = 0u64;
        for i in self.optimal() {
            match self.backends[i].storage().and_then(|s| s.new_oids(1)) {
                Ok(o) => next = next.max(o.first().map(|o| o.0).unwrap_or(0)),
                Err(Error::ReadOnly) => {}
                Err(e) => self.degrade(i, format!("new_oids failed at start-up: {e}")),
            }
        }
        *lock(&self.next_oid) = next;
        log::info!(
            "RAID array {:?}: {} ({} of {} backends optimal), last transaction {last}, {} fan-out, {} reads",
            self.opts.name,
            self.array_state(),
            self.optimal().len(),
            self.backends.len(),
            self.opts.fanout.label(),
            self.opts.read_policy.label()
        );
    }

    fn check_readable(&self) -> Result<()> {
        if state::read_allowed(self.array_state(), self.opts.fail_mode) {
            return Ok(());
        }
        state::write_allowed(
            self.optimal().len(),
            self.opts.min_optimal,
            FailMode::Close,
            &self.opts.name,
        )
    }

    fn check_writable(&self, optimal: usize) -> Result<()> {
        state::write_allowed(
            optimal,
            self.opts.min_optimal,
            self.opts.fail_mode,
            &self.opts.name,
        )
    }

    /// A read on one optimal backend chosen by the read policy; a failed
    /// backend is degraded and the read retried on another; a POSKeyError
    /// is confirmed on a second backend before it is believed.
    fn read_op<T>(&self, what: &str, f: impl Fn(&dyn Storage) -> Result<T>) -> Result<T> {
        self.check_readable()?;
        let mut tried: Vec<usize> = Vec::new();
        let mut missing: Option<(usize, Error)> = None;
        loop {
            let candidates: Vec<usize> = self
                .optimal()
                .into_iter()
                .filter(|i| !tried.contains(i))
                .collect();
            let latencies: Vec<f64> = candidates
                .iter()
                .map(|&i| self.backends[i].latency())
                .collect();
            let counter = self.reads.fetch_add(1, Ordering::Relaxed);
            let random = if self.opts.read_policy == ReadPolicy::Random {
                rand::random::<f64>()
            } else {
                0.0
            };
            let Some(pos) = balance::pick(self.opts.read_policy, &latencies, counter, random)
            else {
                return Err(match missing {
                    Some((_, e)) => e,
                    None => Error::Disconnected(format!(
                        "RAID array {:?}: no optimal backend left to serve {what}",
                        self.opts.name
                    )),
                });
            };
            let i = candidates[pos];
            let b = &self.backends[i];
            tried.push(i);
            let started = Instant::now();
            let r = b.storage().and_then(|s| f(s.as_ref()));
            b.observe(started.elapsed());
            b.reads.fetch_add(1, Ordering::Relaxed);
            match r {
                Ok(v) => {
                    if let Some((j, Error::PosKey(oid))) = missing {
                        self.degrade(
                            j,
                            format!(
                                "missing object: {oid} is on backend {:?}; recover it",
                                b.name
                            ),
                        );
                    }
                    return Ok(v);
                }
                Err(Error::PosKey(oid)) if missing.is_none() => {
                    missing = Some((i, Error::PosKey(oid)))
                }
                Err(e) if state::classify(&e) == state::ErrorKind::Failure => {
                    self.degrade(i, format!("{what} failed: {e}"));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Call `f` on the backends at `positions`, degrading those that fail
    /// or miss the deadline. Returns (position, result) of those that answered.
    /// `io`: the operation waits on IO even on an in-process backend
    /// (fsync, pack), so it is overlapped there too ([`fanout::plan`]).
    fn write_op<T: Send>(
        &self,
        what: &str,
        positions: &[usize],
        io: bool,
        f: impl Fn(&dyn Storage) -> Result<T> + Sync,
    ) -> Vec<(usize, Result<T>)> {
        let targets: Vec<&Backend> = positions.iter().map(|&i| &self.backends[i]).collect();
        let deadline = Instant::now() + self.opts.backend_timeout;
        let outcomes = self.fanout.call_all(
            &targets,
            |b| io || !b.local,
            deadline,
            |b| b.storage().and_then(|s| f(s.as_ref())),
        );
        let mut answered = Vec::with_capacity(positions.len());
        for (&i, outcome) in positions.iter().zip(outcomes) {
            let b = &self.backends[i];
            match outcome {
                Outcome::Done(r, took) => {
                    b.observe(took);
                    answered.push((i, r));
                }
                Outcome::TimedOut => self.degrade(
                    i,
                    format!(
                        "{what} did not answer within backend-timeout ({:.1} s)",
                        self.opts.backend_timeout.as_secs_f64()
                    ),
                ),
            }
        }
        answered
    }

    fn abort_on(&self, positions: &[usize]) {
        if positions.is_empty() {
            return;
        }
        self.write_op("tpc_abort", positions, false, |s| {
            s.tpc_abort();
            Ok(())
        });
    }

    fn status(&self) -> serde_json::Value {
        let backends: Vec<serde_json::Value> = self
            .backends
            .iter()
            .map(|b| {
                let st = read(&b.state).clone();
                let st = if b.storage.is_none() && st.is_optimal() {
                    BackendState::Degraded("not open".into())
                } else {
                    st
                };
                serde_json::json!({
                    "name": b.name,
                    "kind": b.kind,
                    "state": st.label(),
                    "reason": st.reason(),
                    "last-transaction": format!("{:016x}", b.last_tid.load(Ordering::Relaxed)),
                    "latency-ms": (b.latency() / 1000.0 * 1000.0).round() / 1000.0,
                    "reads": b.reads.load(Ordering::Relaxed),
                    "writes": b.writes.load(Ordering::Relaxed),
                })
            })
            .collect();
        serde_json::json!({
            "state": self.array_state().to_string(),
            "optimal": self.optimal().len(),
            "min-optimal": self.opts.min_optimal,
            "fanout": self.opts.fanout.label(),
            "backends": backends,
        })
    }
}

fn vote_key(v: &Result<Vote>) -> VoteKey {
    match v {
        Ok(Vote::Prepared { resolved, .. }) => {
            let mut r = resolved.clone();
            r.sort();
            VoteKey::Prepared { resolved: r }
        }
        Ok(Vote::Conflicts(c)) => {
            let mut k: Vec<(Oid, Tid, Tid)> =
                c.iter().map(|c| (c.oid, c.committed, c.read)).collect();
            k.sort();
            VoteKey::Conflicts(k)
        }
        Err(Error::Conflict {
            oid,
            read_conflict: false,
            ..
        }) => VoteKey::ConflictError(*oid),
        Err(e) => VoteKey::Refused(crate::zeo::message::error_to_wire(e).0),
    }
}

fn op_oid(op: &crate::storage::Op) -> Option<Oid> {
    use crate::storage::Op;
    match op {
        Op::Store { oid, .. } | Op::Restore { oid, .. } | Op::Delete { oid, .. } => Some(*oid),
        Op::CheckCurrent { .. } | Op::Undo { .. } => None,
    }
}

/// Reduce answers to comparable replies: failures become `Err(reason)`.
fn replies<T, K>(
    answered: &[(usize, Result<T>)],
    key: impl Fn(&Result<T>) -> K,
) -> Vec<state::Reply<K>> {
    answered
        .iter()
        .map(|(_, r)| match r {
            Err(e) if state::classify(e) == state::ErrorKind::Failure => Err(e.to_string()),
            r => Ok(key(r)),
        })
        .collect()
}

impl Storage for RaidStorage {
    fn name(&self) -> String {
        self.core.opts.name.clone()
    }

    fn is_read_only(&self) -> bool {
        false
    }

    fn supports_undo(&self) -> bool {
        self.core
            .backends
            .iter()
            .filter_map(|b| b.storage.as_ref())
            .all(|s| s.supports_undo())
    }

    fn last_transaction(&self) -> Result<Tid> {
        self.core.check_readable()?;
        Ok(Tid(self.core.published.load(Ordering::Acquire)))
    }

    fn load_before(&self, oid: Oid, before: Tid) -> Result<Option<Loaded>> {
        self.core
            .read_op("loadBefore", |s| s.load_before(oid, before))
    }

    fn load_serial(&self, oid: Oid, serial: Tid) -> Result<Data> {
        self.core
            .read_op("loadSerial", |s| s.load_serial(oid, serial))
    }

    fn history(&self, oid: Oid, size: usize) -> Result<Vec<HistoryEntry>> {
        self.core.read_op("history", |s| s.history(oid, size))
    }

    fn new_oids(&self, n: usize) -> Result<Vec<Oid>> {
        let core = &self.core;
        core.check_writable(core.optimal().len())?;
        let mut next = lock(&core.next_oid);
        let first = *next + 1;
        *next += n as u64;
        Ok((first..=*next).map(Oid).collect())
    }

    fn tpc_vote(&self, txn: &Txn) -> Result<Vote> {
        let core = &self.core;
        let optimal = core.optimal();
        core.check_writable(optimal.len())?;
        let tid = match txn.tid {
            Some(t) => t,
            None => state::next_tid(timestamp::now(), *lock(&core.last_logged), &[]),
        };
        let mut whole = txn.clone();
        whole.tid = Some(tid);
        // Oids stored with ids the array did not hand out (restores, or a
        // client that allocated elsewhere) move its counter past them.
        let top = txn
            .ops
            .iter()
            .filter_map(op_oid)
            .map(|o| o.0)
            .max()
            .unwrap_or(0);
        {
            let mut next = lock(&core.next_oid);
            *next = (*next).max(top);
        }
        let answered = core.write_op("vote", &optimal, false, |s| s.tpc_vote(&whole));
        let mut keys = replies(&answered, vote_key);
        if state::unify_resolution(&mut keys) {
            log::debug!(
                "RAID array {:?}: vote of {tid}: some backends resolved conflicts others report; \
                 the client resolves them",
                core.opts.name
            );
        }
        let decision = state::decide(&keys);
        let mut to_abort = Vec::new();
        for &(pos, ref why) in &decision.degrade {
            let (i, r) = &answered[pos];
            if matches!(r, Ok(Vote::Prepared { .. })) {
                to_abort.push(*i);
            }
            core.degrade(*i, format!("vote of {tid}: {why}"));
        }
        // Answers of the winners, in configuration order.
        let winners: Vec<&(usize, Result<Vote>)> =
            decision.agree.iter().map(|&p| &answered[p]).collect();
        match decision.winner {
            None => {
                core.abort_on(&to_abort);
                Err(Error::Disconnected(format!(
                    "RAID array {:?}: no backend could vote transaction {tid}; see the log",
                    core.opts.name
                )))
            }
            Some(VoteKey::Prepared { .. }) => {
                let prepared: Vec<usize> = winners.iter().map(|(i, _)| *i).collect();
                if let Err(e) = core.check_writable(prepared.len()) {
                    to_abort.extend(&prepared);
                    core.abort_on(&to_abort);
                    return Err(e);
                }
                core.abort_on(&to_abort);
                let Some((
                    _,
                    Ok(Vote::Prepared {
                        resolved,
                        invalidated,
                        ..
                    }),
                )) = winners.first()
                else {
                    return Err(Error::Value("RAID: inconsistent vote outcome".into()));
                };
                let vote = Vote::Prepared {
                    tid,
                    resolved: resolved.clone(),
                    invalidated: invalidated.clone(),
                };
                *lock(&core.pending) = Pending {
                    tid: Some(tid),
                    prepared,
                };
                Ok(vote)
            }
            Some(VoteKey::Conflicts(_)) => {
                // Backends that resolved the conflicts themselves prepared:
                // abort them too, the client resolves for all.
                for (i, r) in &winners {
                    if matches!(r, Ok(Vote::Prepared { .. })) {
                        to_abort.push(*i);
                    }
                }
                core.abort_on(&to_abort);
                let reported = winners.iter().find_map(|(_, r)| match r {
                    Ok(Vote::Conflicts(c)) => Some(c.clone()),
                    _ => None,
                });
                reported
                    .map(Vote::Conflicts)
                    .ok_or_else(|| Error::Value("RAID: inconsistent vote outcome".into()))
            }
            Some(VoteKey::Refused(_)) | Some(VoteKey::ConflictError(_)) => {
                core.abort_on(&to_abort);
                match winners.first() {
                    Some((_, Err(e))) => Err(e.clone()),
                    _ => Err(Error::Value("RAID: inconsistent vote outcome".into())),
                }
            }
        }
    }

    fn tpc_finish(&self) -> Result<Tid> {
        self.finish_with("tpc_finish", |s| s.tpc_finish())
    }

    fn group_commit(&self) -> bool {
        self.core.group
    }

    fn finish_log(&self) -> Result<Tid> {
        self.finish_with("finish_log", |s| s.finish_log())
    }

    fn make_durable(&self, tid: Tid) -> Result<()> {
        let core = &self.core;
        let optimal = core.optimal();
        let answered = core.write_op("make_durable", &optimal, true, |s| s.make_durable(tid));
        let mut durable = 0;
        for (i, r) in answered {
            match r {
                Ok(()) => durable += 1,
                Err(e) => core.degrade(i, format!("could not make {tid} durable: {e}; it may lack recent transactions, recover it")),
            }
        }
        if durable < core.opts.min_optimal.max(1) {
            return Err(Error::Io(format!(
                "RAID array {:?}: transaction {tid} is durable on {durable} backend(s), fewer than min-optimal = {}",
                core.opts.name, core.opts.min_optimal
            )));
        }
        Ok(())
    }

    fn publish(&self, tid: Tid) {
        let core = &self.core;
        for i in core.optimal() {
            if let Ok(s) = core.backends[i].storage() {
                s.publish(tid);
            }
        }
        core.published.fetch_max(tid.0, Ordering::AcqRel);
    }

    fn tpc_abort(&self) {
        let core = &self.core;
        let pending = std::mem::take(&mut *lock(&core.pending));
        core.abort_on(&pending.prepared);
    }

    fn undo_log(&self, first: usize, last: usize) -> Result<Vec<UndoEntry>> {
        self.core.read_op("undoLog", |s| s.undo_log(first, last))
    }

    fn iterator(&self, start: Option<Tid>, stop: Option<Tid>) -> Result<TxnIter> {
        self.core.read_op("iterator", |s| s.iterator(start, stop))
    }

    fn record_iternext(&self, next: Option<Oid>) -> Result<Option<CurrentRecord>> {
        self.core
            .read_op("record_iternext", |s| s.record_iternext(next))
    }

    fn pack(&self, t: f64, gc: bool) -> Result<()> {
        let core = &self.core;
        let optimal = core.optimal();
        core.check_writable(optimal.len())?;
        // Pack may take long: no array deadline beyond the backends' own.
        let targets: Vec<&Backend> = optimal.iter().map(|&i| &core.backends[i]).collect();
        let outcomes = core.fanout.call_all(
            &targets,
            |_| true,
            Instant::now() + Duration::from_secs(86_400),
            |b| b.storage().and_then(|s| s.pack(t, gc)),
        );
        let answered: Vec<(usize, Result<()>)> = optimal
            .iter()
            .zip(outcomes)
            .filter_map(|(&i, o)| match o {
                Outcome::Done(r, _) => Some((i, r)),
                Outcome::TimedOut => None,
            })
            .collect();
        let decision = state::decide(&replies(&answered, |r| {
            r.as_ref()
                .err()
                .map(|e| crate::zeo::message::error_to_wire(e).0)
        }));
        for (pos, why) in decision.degrade {
            core.degrade(answered[pos].0, format!("pack: {why}"));
        }
        match decision.agree.first().map(|&p| &answered[p].1) {
            Some(r) => r.clone(),
            None => Err(Error::Disconnected(format!(
                "RAID array {:?}: no backend could pack",
                core.opts.name
            ))),
        }
    }

    fn size_info(&self) -> SizeInfo {
        let core = &self.core;
        core.optimal()
            .first()
            .and_then(|&i| core.backends[i].storage.as_ref())
            .map(|s| s.size_info())
            .unwrap_or_default()
    }

    fn reads_wait_on_network(&self) -> bool {
        self.core.backends.iter().any(|b| !b.local)
    }

    /// True when every backend is in process and never blocks on reads
    /// (memory backends): the server then answers reads on its event loop.
    fn reads_never_block(&self) -> bool {
        self.core
            .backends
            .iter()
            .all(|b| b.local && b.storage.as_ref().is_some_and(|s| s.reads_never_block()))
    }

    /// A load the chosen backend can answer without waiting (a file
    /// backend whose page cache holds it), for the event loop. Anything
    /// else — no answer without waiting, a POSKeyError to confirm, a
    /// failure — goes the normal way on a worker.
    fn load_before_nowait(&self, oid: Oid, before: Tid) -> Option<Result<Option<Loaded>>> {
        let core = &self.core;
        if !state::read_allowed(core.array_state(), core.opts.fail_mode) {
            return None;
        }
        let candidates = core.optimal();
        let latencies: Vec<f64> = candidates
            .iter()
            .map(|&i| core.backends[i].latency())
            .collect();
        let counter = core.reads.fetch_add(1, Ordering::Relaxed);
        let random = if core.opts.read_policy == ReadPolicy::Random {
            rand::random::<f64>()
        } else {
            0.0
        };
        let b = &core.backends
            [candidates[balance::pick(core.opts.read_policy, &latencies, counter, random)?]];
        if !b.local {
            return None;
        }
        match b.storage.as_ref()?.load_before_nowait(oid, before)? {
            Ok(loaded) => {
                b.reads.fetch_add(1, Ordering::Relaxed);
                Some(Ok(loaded))
            }
            Err(_) => None,
        }
    }

    fn set_conflict_resolver(&self, r: Arc<dyn ConflictResolver>) {
        for b in &self.core.backends {
            if let Some(s) = &b.storage {
                s.set_conflict_resolver(r.clone());
            }
        }
    }

    fn raid_status(&self) -> Option<serde_json::Value> {
        Some(self.core.status())
    }

    fn close(&self) {
        for b in &self.core.backends {
            if let Some(s) = &b.storage {
                s.close();
            }
        }
        let _g = lock(&self.core.states);
        self.core.save_state();
    }
}

impl RaidStorage {
    /// Finish the pending transaction on every backend that prepared it
    /// (`tpc_finish`, or `finish_log` for group commit).
    fn finish_with(
        &self,
        what: &str,
        f: impl Fn(&dyn Storage) -> Result<Tid> + Sync,
    ) -> Result<Tid> {
        let core = &self.core;
        let pending = std::mem::take(&mut *lock(&core.pending));
        let Some(tid) = pending.tid else {
            return Err(Error::Transaction(format!(
                "{what} without a voted transaction"
            )));
        };
        let answered = core.write_op(what, &pending.prepared, false, f);
        let mut finished = 0;
        let answered_positions: Vec<usize> = answered.iter().map(|(i, _)| *i).collect();
        for (i, r) in answered {
            match r {
                Ok(t) if t == tid => {
                    finished += 1;
                    let b = &core.backends[i];
                    b.last_tid.store(tid.0, Ordering::Relaxed);
                    b.writes.fetch_add(1, Ordering::Relaxed);
                }
                Ok(t) => core.degrade(i, format!("{what} committed as {t}, the array gave it {tid}; recover it")),
                Err(e) => core.degrade(
                    i,
                    format!("{what} of {tid} failed: {e}; it may or may not hold that transaction, recover it"),
                ),
            }
        }
        // Timed-out backends were degraded by write_op.
        debug_assert!(answered_positions.len() <= pending.prepared.len());
        *lock(&core.last_logged) = tid;
        if !core.group {
            core.published.fetch_max(tid.0, Ordering::AcqRel);
        }
        if finished < core.opts.min_optimal.max(1) {
            return Err(Error::Io(format!(
                "RAID array {:?}: transaction {tid} finished on {finished} backend(s), fewer than \
                 min-optimal = {}; whether it is committed is unknown, see the log",
                core.opts.name, core.opts.min_optimal
            )));
        }
        Ok(tid)
    }
}

#[cfg(test)]
mod tests;
