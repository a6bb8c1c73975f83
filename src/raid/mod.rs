//! The RAID-1 array: a [`Storage`] that mirrors every transaction onto
//! several backend storages, so the server serves it like any other.
//!
//! - [`state`]: the decisions (backend and array states, voting among
//!   results, fail mode, the next tid): pure functions, table-tested;
//! - [`fanout`]: one call on many backends, in parallel or in sequence,
//!   against a deadline;
//! - [`balance`]: which backend serves a read (`read-policy`);
//! - [`statefile`]: the array's memory across restarts;
//! - `backend`: one mirror, what the array knows of it, and what a ZEO
//!   backend tells the array unasked;
//! - `storage`: the ZODB storage contract for the array (reads, votes,
//!   finish, group commit);
//! - `commit`: the commit in flight as the shell holds it (the array's
//!   commit lock, what each backend holds, the recovery credit: pure
//!   states from [`state`] behind their locks, and the waits on them);
//!   each backend's role is [`state::roles`]'s, stepped by events;
//! - this file: [`RaidStorage`]'s opening, state changes, the read and
//!   write paths that do the IO and ask the others.
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
mod blobs;
pub mod cache;
pub mod fanout;
pub mod fence;
pub mod members;
pub mod offsite;
pub mod recovery;
pub mod state;
pub mod statefile;
pub mod verify;

use crate::locks::{lock, read};
use crate::storage::{Error, Result, Storage, Tid};
use crate::zeo::client::{Client, ClientOptions};
use balance::ReadPolicy;
use fanout::{Mode, Outcome};
use state::{BackendState, FailMode};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
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
    /// Recover degraded backends that answer again, without an operator.
    pub auto_recover: bool,
    /// While a backend recovers, at least this many transactions are
    /// copied per new commit (> 1; see [`state::credit`]).
    pub recovery_ratio: f64,
    /// The shared object cache's size in bytes (`cache-size`; 0: off).
    pub cache_size: u64,
    /// Opened by a controller with `[ha]`: another controller may lead, so
    /// the array starts standing by ([`fence::FenceState::Standby`]) from
    /// its first moment: no writes, no recovery, the backends' new
    /// transactions are the leader's (not writes behind its back), and
    /// backends are not judged by their last transaction at start (the
    /// leader commits meanwhile); that judgement is made when it fences.
    pub stands_by: bool,
}

impl RaidOptions {
    /// Options with the defaults of everything but the name (the config's
    /// defaults: `backend-timeout` 10 s, `recovery-ratio` 2, ...).
    pub fn new(name: &str) -> RaidOptions {
        RaidOptions {
            name: name.to_string(),
            fanout: Mode::default(),
            read_policy: ReadPolicy::default(),
            min_optimal: 1,
            fail_mode: FailMode::default(),
            backend_timeout: Duration::from_secs(10),
            state_file: None,
            auto_recover: true,
            recovery_ratio: 2.0,
            cache_size: cache::DEFAULT_SIZE,
            stands_by: false,
        }
    }
}

mod backend;
mod commit;
mod roster;
mod settle;
mod storage;
mod wake;

use backend::{event_handler, Backend};
pub use backend::{BackendSource, BackendSpec, Reopen};

/// A backend's storage, or why there is none.
type Opened = (Option<Arc<dyn Storage>>, Option<String>);

pub use state::Reason;

/// Each backend's storage (or why there is none), connecting the ZEO
/// backends in parallel on named scoped threads.
fn open_sources(specs: &[BackendSpec], weak: &Weak<Core>, opts: &RaidOptions) -> Vec<Opened> {
    let connect = |i: usize, copts: &ClientOptions| -> Opened {
        let mut copts = copts.clone();
        copts.call_timeout = opts.backend_timeout;
        copts.connect_timeout = copts.connect_timeout.min(opts.backend_timeout);
        let addr = copts.addr.clone();
        match Client::connect_with_handler(copts, Some(event_handler(weak.clone(), i))) {
            Ok(c) => (Some(Arc::new(c) as Arc<dyn Storage>), None),
            Err(e) => (None, Some(format!("cannot connect to {addr}: {e}"))),
        }
    };
    std::thread::scope(|scope| {
        let pending: Vec<_> = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| match &spec.source {
                BackendSource::Zeo(copts) => {
                    let spawned = std::thread::Builder::new()
                        .name(format!("zeoraid-connect-{}", spec.name))
                        .spawn_scoped(scope, move || connect(i, copts));
                    match spawned {
                        Ok(h) => Err(h),
                        // No thread to be had: connect on this one.
                        Err(_) => Ok(connect(i, copts)),
                    }
                }
                BackendSource::Local(s) => Ok((Some(s.clone()), None)),
                BackendSource::Unavailable(why) => Ok((None, Some(why.clone()))),
            })
            .collect();
        pending
            .into_iter()
            .map(|p| match p {
                Ok(done) => done,
                Err(h) => h.join().unwrap_or_else(|_| {
                    (
                        None,
                        Some("connecting panicked (a zeoraid bug; see the log)".into()),
                    )
                }),
            })
            .collect()
    })
}

/// An error as the operator should read it in a reason: its ZODB (or
/// Python) class and its message.
fn describe(e: &Error) -> String {
    match e {
        Error::Remote { .. } | Error::Disconnected(_) | Error::Io(_) => e.to_string(),
        _ => format!("{}: {e}", crate::zeo::message::error_to_wire(e).0),
    }
}

/// Room for backends added while the array runs (`zeoraid ctl add`).
pub const EXTRA_BACKENDS: usize = 8;

pub(crate) struct Core {
    opts: RaidOptions,
    backends: backend::Backends,
    fanout: fanout::Fanout,
    /// The commit in flight: the array's commit lock, the transaction
    /// between vote and finish, what each backend holds of it, the
    /// recovery credit ([`commit`]).
    commit: commit::CommitPath,
    /// Last tid visible to loads.
    published: AtomicU64,
    reads: AtomicU64,
    /// Packs in progress: backends pack at their own pace, so an object
    /// one has already collected is not evidence of a missing object then.
    packing: AtomicU64,
    /// Each backend's role and the membership ([`state::roles`]), and
    /// the state file that follows them.
    roster: roster::Roster,
    group: bool,
    /// The recovery or verification running, and those asked for.
    work: recovery::Work,
    /// Serialises additions and removals (an added ZEO backend's event
    /// handler is bound to the position it will get).
    reconfig: members::Reconfig,
    /// `read-policy` (a reload may change it).
    read_policy: std::sync::atomic::AtomicU8,
    /// Whether the array closes, and the signal that wakes its sleepers.
    wake: wake::Wake,
    /// Off-site mirrors (`mode = "offsite"`): shipped to after the commit,
    /// never read, never voting.
    offsite: offsite::Mirrors,
    /// The shared object cache ([`cache`]).
    cache: cache::Cache,
}

/// The array. Cheap to share; the server holds it as `Arc<dyn Storage>`.
///
/// Built from configuration with [`crate::open::open_raid`] (as the
/// server does), or from [`RaidOptions`] and [`BackendSpec`]s with
/// [`RaidStorage::open`]. Operate it with [`RaidStorage::status`],
/// [`RaidStorage::disable`], [`RaidStorage::recover`] and
/// [`RaidStorage::verify`]:
///
/// ```
/// use zeoraid::config::{BackendConfig, StorageConfig};
/// use zeoraid::storage::{commit, Op, Storage, Tid, Txn};
///
/// let dir = std::env::temp_dir().join(format!("zeoraid-doc-raid-{}", std::process::id()));
/// let array = zeoraid::open::open_raid(&StorageConfig::raid(
///     "1",
///     vec![
///         BackendConfig::file("a", dir.join("a.fs")),
///         BackendConfig::file("b", dir.join("b.fs")),
///     ],
/// ))
/// .expect("the array opens");
/// assert_eq!(array.status().state.label(), "optimal");
///
/// array.disable("b").expect("b taken out");
/// let oid = array.new_oids(1).unwrap()[0];
/// let data = b"written while b was out".to_vec().into();
/// commit(&array, &Txn::new(vec![Op::Store { oid, serial: Tid::ZERO, data }])).unwrap();
/// assert_eq!(array.status().state.label(), "degraded");
///
/// let report = array.recover("b", false).expect("recovered");
/// assert_eq!(report.copied, 1);
/// assert_eq!(array.verify("b").unwrap().difference, None);
/// array.close();
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub struct RaidStorage {
    core: Arc<Core>,
    supervisor: Mutex<Option<std::thread::JoinHandle<()>>>,
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
            // ZEO backends connect side by side: one that is down costs its
            // connect timeout once, not once per backend in turn.
            let opened = open_sources(&specs, weak, &opts);
            let backends = specs
                .into_iter()
                .zip(opened)
                .map(|(spec, (storage, problem))| {
                    let added = saved.added.iter().any(|a| a.name() == Some(&spec.name));
                    let state = match (problem, saved.degraded.get(&spec.name)) {
                        (Some(p), _) => BackendState::Degraded(Reason::Unavailable(p)),
                        (None, Some(why)) => {
                            BackendState::Degraded(Reason::BeforeRestart(why.clone()))
                        }
                        (None, None) => BackendState::Optimal,
                    };
                    (Backend::new(spec, storage, state.clone(), added), state)
                })
                .collect::<Vec<_>>();
            let group = backends
                .iter()
                .all(|(b, _)| read(&b.storage).as_ref().is_some_and(|s| s.group_commit()));
            let roles = state::roles::Roles::new(
                &opts.name,
                opts.min_optimal,
                opts.fail_mode,
                backends
                    .iter()
                    .map(|(b, st)| (b.name.clone(), st.clone()))
                    .collect(),
                saved.added.clone(),
                saved.removed.clone(),
            );
            let backends: Vec<Backend> = backends.into_iter().map(|(b, _)| b).collect();
            let capacity = backends.len() + EXTRA_BACKENDS;
            Core {
                opts: opts.clone(),
                backends: backend::Backends::new(backends, capacity),
                fanout,
                commit: commit::CommitPath {
                    fence: Mutex::new(if opts.stands_by {
                        fence::FenceState::Standby
                    } else {
                        fence::FenceState::Off
                    }),
                    ..commit::CommitPath::default()
                },
                published: AtomicU64::new(0),
                reads: AtomicU64::new(0),
                packing: AtomicU64::new(0),
                roster: roster::Roster::new(roles, opts.state_file.clone(), &opts.name),
                group,
                work: recovery::Work::default(),
                read_policy: std::sync::atomic::AtomicU8::new(opts.read_policy.code()),
                reconfig: members::Reconfig::default(),
                wake: wake::Wake::default(),
                offsite: offsite::Mirrors::default(),
                cache: cache::Cache::new(opts.cache_size),
            }
        });
        for (i, b) in core.backends.iter().enumerate() {
            if let Some(why) = core.state_of(i).reason() {
                log::warn!(
                    "RAID array {:?}: backend {:?} starts degraded: {why}",
                    core.opts.name,
                    b.name
                );
            }
        }
        core.start_up();
        // Backends that start degraded (unreachable, behind, named by the
        // file) are on disk before anything is served: after a crash a
        // backend that missed this run's commits is never trusted alone.
        if core.optimal().len() < core.total() {
            core.roster.persist().map_err(|e| {
                format!("{e} (the array must remember its degraded backends before it serves)")
            })?;
        }
        // Always running: it also serves the recoveries operators ask for.
        let supervisor = recovery::spawn_supervisor(&core)?;
        Ok(RaidStorage {
            core,
            supervisor: Mutex::new(Some(supervisor)),
        })
    }

    /// The array's state and each backend's, as the status document
    /// (`ruok`, `ctl details`, `/metrics`) shows them.
    pub fn status(&self) -> crate::status::ArrayStatus {
        self.core.status()
    }

    /// Add an off-site mirror and start shipping to it (at open, before
    /// the array serves).
    pub fn add_offsite(
        &self,
        spec: BackendSpec,
        opts: &offsite::Options,
    ) -> std::result::Result<(), String> {
        let core = &self.core;
        let last = *lock(&core.commit.last_logged);
        let m = Arc::new(offsite::Mirror::new(spec, opts, last));
        m.start(core)?;
        core.offsite.push(m);
        Ok(())
    }

    /// The off-site mirrors' names.
    pub fn offsite_names(&self) -> Vec<String> {
        self.core
            .offsite
            .list()
            .iter()
            .map(|m| m.name.clone())
            .collect()
    }
}

impl Core {
    fn read_policy(&self) -> ReadPolicy {
        ReadPolicy::from_code(self.read_policy.load(Ordering::Relaxed))
    }

    /// How many backends the array has (not counting removed ones).
    fn total(&self) -> usize {
        self.backends.iter().filter(|b| !b.is_removed()).count()
    }

    fn optimal(&self) -> Vec<usize> {
        (0..self.backends.len())
            .filter(|&i| self.backends[i].is_optimal())
            .collect()
    }

    /// Degrade backend `i` with `why` (if it is optimal), log it,
    /// persist it.
    /// A controller that does not write keeps no judgement of its own
    /// calls ([`fence::judges`]): the backend is only let go, and
    /// connected again.
    fn degrade(&self, i: usize, why: Reason) {
        let fence = *lock(&self.commit.fence);
        if !fence::judges(&fence, &why) {
            log::info!(
                "RAID array {:?}: backend {:?}: {why}; this controller does not lead, so the \
                 backend is not degraded (a takeover judges it again)",
                self.opts.name,
                self.backends[i].name
            );
            return;
        }
        self.step(state::roles::Event::Failed { at: i, reason: why });
    }

    /// Advance the roles by `event` ([`roster::Roster::step`]).
    fn step(&self, event: state::roles::Event) -> bool {
        self.roster.step(event, &self.backends)
    }

    /// Backend `i`'s state, with its reason, as the roles hold it.
    fn state_of(&self, i: usize) -> BackendState {
        self.roster.state(i)
    }

    /// The array's state from the roles the backends were last given
    /// (lock-free: the read path asks it on every read).
    fn array_state(&self) -> state::ArrayState {
        let optimal = self.backends.iter().filter(|b| b.is_optimal()).count();
        let recovering = self
            .backends
            .iter()
            .filter(|b| !b.is_removed() && b.role() == crate::status::Role::Recovering)
            .count();
        state::array_state_of(optimal, recovering, self.total(), self.opts.min_optimal)
    }

    /// Compare last tids, pick the oid counter, report.
    fn start_up(&self) {
        let lasts = self.last_tids("at start-up");
        // A standby's backends move on under the leader while it reads
        // them: it judges them when it fences ([`Core::reconcile`]).
        if !self.opts.stands_by {
            for (i, behind) in state::behind_at_start(&lasts).into_iter().enumerate() {
                if let Some(why) = behind {
                    self.degrade(i, why);
                }
            }
        }
        let last = self.adopt_last(&lasts);
        self.adopt_next_oid("at start-up");
        log::info!(
            "RAID array {:?}: {} ({} of {} backends optimal), last transaction {last}, {} fan-out, {} reads",
            self.opts.name,
            self.array_state(),
            self.optimal().len(),
            self.total(),
            self.fanout.mode().label(),
            self.read_policy().label()
        );
    }

    /// A controller taking over (issue #26), before it fences: the old
    /// leader committed past what this one has seen, and may have died
    /// between finishing a transaction on one backend and the next. Read
    /// every optimal backend's last transaction: those behind the newest
    /// miss the old leader's in-doubt transaction(s) and are degraded
    /// (recovery copies them once this controller holds the fence: never
    /// left silently different); the array's last tid and oid counter
    /// move past everything the old leader handed out.
    pub(crate) fn reconcile(self: &Arc<Self>) -> Result<()> {
        // What this controller judged while it led before, or stood by,
        // may be stale: another controller may have led since. Backends
        // degraded for a connection's or a call's sake are reached again
        // and judged by their last transaction below.
        for (i, b) in self.backends.iter().enumerate() {
            let rejudged = matches!(
                self.state_of(i),
                BackendState::Degraded(r) if r.rejudged_at_takeover()
            );
            if !rejudged || b.is_removed() {
                continue;
            }
            b.set_storage(None);
            if b.reopen(Arc::downgrade(self), i, false, self.opts.backend_timeout)
                .is_ok()
            {
                self.step(state::roles::Event::Rejoined { at: i });
            }
        }
        self.reconnect_idle(true);
        let lasts = self.last_tids("at takeover");
        for (i, behind) in state::behind_at_start(&lasts).into_iter().enumerate() {
            if let Some(why) = behind {
                log::warn!(
                    "RAID array {:?}: backend {:?} lacks the previous controller's last \
                     transaction(s) (it died between finishing on one backend and the next): \
                     degraded, recovered once this controller holds the fence",
                    self.opts.name,
                    self.backends[i].name
                );
                self.degrade(i, why);
            }
        }
        let last = self.adopt_last(&lasts);
        self.adopt_next_oid("at takeover");
        self.check_writable(self.optimal().len())?;
        log::info!(
            "RAID array {:?}: reconciled at takeover: last transaction {last}, {} of {} backends \
             optimal",
            self.opts.name,
            self.optimal().len(),
            self.total()
        );
        Ok(())
    }

    /// Make every ZEO backend's connection anew, for a controller that
    /// stops leading: a transaction of its own still in flight is cut off
    /// there (the server aborts it and lets its commit lock go), so the
    /// new leader's fence neither waits for it nor deadlocks with it (each
    /// holding one backend's commit lock and waiting for the other's), and
    /// the worker that ran it gets an error (its client is sent away). One
    /// that cannot be reached now is connected again later.
    pub(crate) fn cut_off_writes(self: &Arc<Self>) {
        for (i, b) in self.backends.iter().enumerate() {
            if b.zeo.is_none() || b.is_removed() || !b.is_open() {
                continue;
            }
            if let Err(e) = b.reset(Arc::downgrade(self), i, self.opts.backend_timeout) {
                log::info!(
                    "RAID array {:?}: backend {:?}: {e}; connected again later",
                    self.opts.name,
                    b.name
                );
            }
        }
    }

    /// Connect the optimal ZEO backends whose connection went while this
    /// controller stood by (nothing is written). `judge`: one that cannot
    /// be reached is degraded (at a takeover); otherwise it is tried
    /// again later.
    pub(crate) fn reconnect_idle(self: &Arc<Self>, judge: bool) {
        for (i, b) in self.backends.iter().enumerate() {
            if b.is_removed() || b.is_open() || self.state_of(i) != BackendState::Optimal {
                continue;
            }
            match b.reopen(Arc::downgrade(self), i, false, self.opts.backend_timeout) {
                Ok(_) => log::info!(
                    "RAID array {:?}: connected to backend {:?} again",
                    self.opts.name,
                    b.name
                ),
                Err(e) if judge => self.degrade(i, Reason::Unavailable(e)),
                Err(_) => {}
            }
        }
    }

    /// Each optimal backend's last transaction (`None` for the others);
    /// one that cannot say is degraded.
    fn last_tids(&self, when: &'static str) -> Vec<Option<Tid>> {
        let optimal = self.optimal();
        self.backends
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
                        self.degrade(
                            i,
                            Reason::StartUp {
                                call: "lastTransaction",
                                error: format!("{e} ({when})"),
                            },
                        );
                        None
                    }
                }
            })
            .collect()
    }

    /// Make the newest of `lasts` the array's last tid (never lower).
    fn adopt_last(&self, lasts: &[Option<Tid>]) -> Tid {
        let newest = lasts.iter().flatten().copied().max().unwrap_or(Tid::ZERO);
        let mut last = lock(&self.commit.last_logged);
        *last = (*last).max(newest);
        self.published.fetch_max(last.0, Ordering::AcqRel);
        *last
    }

    /// Move the oid counter past every oid an optimal backend handed out.
    /// `next_oid` is the last oid handed out: the first a backend offers
    /// is still free (a fresh array hands out 1 first, as a single
    /// storage does).
    fn adopt_next_oid(&self, when: &'static str) {
        let mut next = 0u64;
        for i in self.optimal() {
            match self.backends[i].storage().and_then(|s| s.new_oids(1)) {
                Ok(o) => next = next.max(o.first().map(|o| o.0.saturating_sub(1)).unwrap_or(0)),
                Err(Error::ReadOnly) => {}
                Err(e) => self.degrade(
                    i,
                    Reason::StartUp {
                        call: "new_oids",
                        error: format!("{e} ({when})"),
                    },
                ),
            }
        }
        let mut counter = lock(&self.commit.next_oid);
        *counter = (*counter).max(next);
    }

    /// Whether reads are served now (without building the array's state:
    /// this runs on every read).
    fn readable(&self) -> bool {
        state::read_allowed(self.array_state(), self.opts.fail_mode)
    }

    fn check_readable(&self) -> Result<()> {
        if self.readable() {
            return Ok(());
        }
        state::write_allowed(
            self.optimal().len(),
            self.opts.min_optimal,
            FailMode::Close,
            &self.opts.name,
        )
    }

    /// Judge an invalidation of `oids` this array did not commit
    /// ([`fence::invalidated`]), moving the fence state under the same
    /// lock.
    fn invalidated(&self, oids: &[crate::storage::Oid]) -> fence::Invalidated {
        let mut state = lock(&self.commit.fence);
        let (verdict, next) = fence::invalidated(*state, oids);
        *state = next;
        verdict
    }

    fn check_writable(&self, optimal: usize) -> Result<()> {
        let fence = *lock(&self.commit.fence);
        self.check_writable_at(fence, optimal)
    }

    /// [`Core::check_writable`] for a fence state already read: a vote
    /// reads it once, so that the state it was let through by is the one
    /// whose fence it carries.
    fn check_writable_at(&self, fence: fence::FenceState, optimal: usize) -> Result<()> {
        if let Some(e) = fence.refusal(&self.opts.name) {
            return Err(e);
        }
        state::write_allowed(
            optimal,
            self.opts.min_optimal,
            self.opts.fail_mode,
            &self.opts.name,
        )
    }

    /// The backend (of `candidates`) the read policy gives the next read.
    fn pick_reader(&self, candidates: &[usize]) -> Option<usize> {
        let latencies: Vec<f64> = candidates
            .iter()
            .map(|&i| self.backends[i].latency())
            .collect();
        self.pick_by_policy(&latencies, true).map(|p| candidates[p])
    }

    /// Which of the backends with these recent `latencies` the read
    /// policy gives the next read (its position among them).
    /// `advance`: count this pick (a peek leaves the round-robin where it
    /// is, so a read that the peeked backend cannot answer at once goes to
    /// the same backend the normal way).
    fn pick_by_policy(&self, latencies: &[f64], advance: bool) -> Option<usize> {
        let counter = if advance {
            self.reads.fetch_add(1, Ordering::Relaxed)
        } else {
            self.reads.load(Ordering::Relaxed)
        };
        let policy = self.read_policy();
        let random = if policy == ReadPolicy::Random {
            rand::random::<f64>()
        } else {
            0.0
        };
        balance::pick(policy, latencies, counter, random)
    }

    /// [`Core::pick_reader`] over every optimal backend, without allocating
    /// (this runs on the event loop for every page-cache load); a peek
    /// (`advance` false) does not count the pick.
    fn pick_optimal_reader(&self, advance: bool) -> Option<usize> {
        const MAX: usize = 16;
        if self.backends.len() > MAX {
            let optimal = self.optimal();
            let latencies: Vec<f64> = optimal
                .iter()
                .map(|&i| self.backends[i].latency())
                .collect();
            return self.pick_by_policy(&latencies, advance).map(|p| optimal[p]);
        }
        let (mut at, mut latency, mut n) = ([0usize; MAX], [0f64; MAX], 0);
        for (i, b) in self.backends.iter().enumerate() {
            if b.is_optimal() {
                at[n] = i;
                latency[n] = b.latency();
                n += 1;
            }
        }
        self.pick_by_policy(&latency[..n], advance).map(|p| at[p])
    }

    /// A read on one optimal backend chosen by the read policy; a failed
    /// backend is degraded and the read retried on another; a POSKeyError
    /// is confirmed on a second backend before it is believed.
    fn read_op<T>(&self, what: &str, f: impl Fn(&dyn Storage) -> Result<T>) -> Result<T> {
        self.check_readable()?;
        let mut tried: Vec<usize> = Vec::new();
        let mut missing: Option<(usize, Error)> = None;
        // A failure kept rather than degraded ([`state::ReadFailure::Relay`]):
        // the client's answer if no other backend gives one.
        let mut kept: Option<Error> = None;
        loop {
            let candidates: Vec<usize> = self
                .optimal()
                .into_iter()
                .filter(|i| !tried.contains(i))
                .collect();
            let Some(i) = self.pick_reader(&candidates) else {
                // An unconfirmed POSKeyError is passed on only when no
                // other backend could be asked (not when one failed).
                return Err(match (kept, missing) {
                    (Some(e), _) => e,
                    // state::MissingObject::Believe: nobody else has it.
                    (None, Some((_, e))) => e,
                    (None, None) => Error::Disconnected(format!(
                        "RAID array {:?}: no optimal backend left to serve {what}",
                        self.opts.name
                    )),
                });
            };
            let b = &self.backends[i];
            tried.push(i);
            let started = Instant::now();
            let r = b.storage().and_then(|s| f(s.as_ref()));
            b.observe(started.elapsed());
            b.reads.fetch_add(1, Ordering::Relaxed);
            match r {
                Ok(v) => {
                    if let Some((j, Error::PosKey(oid))) = missing {
                        let packing = self.packing.load(Ordering::Acquire) > 0;
                        match state::on_missing_object(true, packing) {
                            state::MissingObject::Degrade => self.degrade(
                                j,
                                Reason::MissingObject {
                                    oid,
                                    on: b.name.clone(),
                                },
                            ),
                            state::MissingObject::Tolerate => {
                                log::debug!("{oid} missing on one backend during a pack")
                            }
                            state::MissingObject::Believe => {}
                        }
                    }
                    return Ok(v);
                }
                Err(Error::PosKey(oid)) if missing.is_none() => {
                    missing = Some((i, Error::PosKey(oid)))
                }
                Err(e) if state::classify(state::Call::Read, &e) == state::ErrorKind::Failure => {
                    let others = self.optimal().iter().filter(|&&j| j != i).count();
                    match state::on_read_failure(&e, others, self.opts.min_optimal) {
                        state::ReadFailure::Degrade => self.degrade(
                            i,
                            Reason::Failed {
                                what: what.to_string(),
                                error: describe(&e),
                            },
                        ),
                        state::ReadFailure::Relay => {
                            log::warn!(
                                "RAID array {:?}: backend {:?} failed {what}: {}; it is kept \
                                 (degrading it would leave fewer than min-optimal = {} optimal \
                                 backends) and the read is tried on the others; check that \
                                 backend's server log",
                                self.opts.name,
                                b.name,
                                describe(&e),
                                self.opts.min_optimal
                            );
                            kept.get_or_insert(e);
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Call `f` on the backends at `positions`, degrading those that miss
    /// the deadline. Returns (position, result) of those that answered.
    /// `call` is what kind of call it is ([`state::classify`]): a failure
    /// that came when the deadline fired is reported as the timeout it is.
    /// `io`: the operation waits on IO even on an in-process backend
    /// (fsync, pack), so it is overlapped there too ([`fanout::plan`]).
    fn write_op<T: Send>(
        &self,
        what: &str,
        call: state::Call,
        positions: &[usize],
        io: bool,
        f: impl Fn(&dyn Storage) -> Result<T> + Sync,
    ) -> Vec<(usize, Result<T>)> {
        let targets: Vec<&Backend> = positions.iter().map(|&i| &self.backends[i]).collect();
        let outcomes = self.fanout.call_all(
            &targets,
            |b| io || !b.local,
            self.opts.backend_timeout,
            |b| b.storage().and_then(|s| f(s.as_ref())),
        );
        let mut answered = Vec::with_capacity(positions.len());
        for (&i, outcome) in positions.iter().zip(outcomes) {
            let b = &self.backends[i];
            let outcome = match outcome {
                Outcome::Done(r, took)
                    if state::timed_out(call, &r, took, self.opts.backend_timeout) =>
                {
                    Outcome::TimedOut
                }
                o => o,
            };
            match outcome {
                Outcome::Done(r, took) => {
                    b.observe(took);
                    answered.push((i, r));
                }
                Outcome::TimedOut => self.degrade(
                    i,
                    Reason::TimedOut {
                        what: what.to_string(),
                        after: self.opts.backend_timeout,
                    },
                ),
            }
        }
        answered
    }

    fn abort_on(&self, positions: &[usize]) {
        if positions.is_empty() {
            return;
        }
        self.write_op("tpc_abort", state::Call::Write, positions, false, |s| {
            s.tpc_abort();
            Ok(())
        });
    }

    fn status(&self) -> crate::status::ArrayStatus {
        use crate::status::{ArrayStatus, BackendStatus, Throttle};
        let newest = Tid(self.published.load(Ordering::Acquire));
        let backends = self
            .backends
            .iter()
            .enumerate()
            .filter(|(_, b)| !b.is_removed())
            .map(|(i, b)| {
                let attempts = lock(&b.attempts).clone();
                let st = self.state_of(i);
                let st = if !b.is_open() && st.is_optimal() {
                    BackendState::Degraded(Reason::NotOpen)
                } else {
                    st
                };
                let last = b.last_tid.load(Ordering::Relaxed);
                BackendStatus {
                    name: b.name.clone(),
                    kind: b.kind.to_string(),
                    state: st.role(),
                    reason: st.reason().map(Reason::to_string),
                    last_transaction: format!("{last:016x}"),
                    lag_seconds: state::lag_seconds(newest, Tid(last)),
                    latency_ms: (b.latency() / 1000.0 * 1000.0).round() / 1000.0,
                    reads: b.reads.load(Ordering::Relaxed),
                    writes: b.writes.load(Ordering::Relaxed),
                    recovery: lock(&b.recovery).as_ref().map(|r| r.status()),
                    place: b.place.clone(),
                    added_at_runtime: b.added,
                    latency_histogram: b.calls.summary(),
                    errors: b.errors.load(Ordering::Relaxed),
                    disabled: attempts.disabled,
                    verify: lock(&b.verified).clone(),
                    recovery_failures: u64::from(attempts.failures),
                    last_recovery_error: attempts.error,
                }
            })
            .collect();
        ArrayStatus {
            state: self.array_state(),
            optimal: self.optimal().len() as u64,
            min_optimal: self.opts.min_optimal as u64,
            fanout: self.fanout.mode().label().to_string(),
            read_policy: self.read_policy().label().to_string(),
            auto_recover: self.opts.auto_recover,
            recovery_ratio: self.opts.recovery_ratio,
            throttle: lock(&self.commit.credit).as_ref().map(|c| Throttle {
                admitted: c.admitted,
                throttled: c.throttled,
                forced: c.forced,
                credit: (c.balance() * 10.0).round() / 10.0,
            }),
            fence: lock(&self.commit.fence).status(),
            cache: self.cache.enabled().then(|| self.cache.counters()),
            backends,
            offsite: self
                .offsite
                .list()
                .iter()
                .map(|m| m.status(newest))
                .collect(),
            differs_from_config: None,
        }
    }
}

#[cfg(test)]
mod tests;
