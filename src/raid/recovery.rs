//! Online recovery: bring a degraded (or new, empty) backend back into
//! the array while clients keep committing.
//!
//! **How.** One recovery runs at a time, on its own OS thread
//! (`zeoraid-recover-ARRAY-BACKEND`). It
//!
//! 1. opens the target if it has no storage (reconnects a ZEO backend that
//!    was down, reopens a local one; a *forced* recovery moves a local
//!    target's data aside first and starts it empty);
//! 2. marks it `recovering` and picks an optimal source (in-process
//!    first, else the fastest);
//! 3. finds where they agree ([`super::state::recovery::resume_point`]): the
//!    target's last transaction must be in the source's history with the
//!    same digest ([`super::verify::digest`]). A target that diverged is
//!    refused with the first differing tid and nothing is written to it;
//! 4. copies every later transaction with its tid, status, metadata,
//!    records and backpointers (`Op::Restore`), oldest first: a reader
//!    thread walks the source's iterator into a bounded channel while this
//!    thread writes, so reading and writing overlap. A group-commit target
//!    (a file backend) shares one fsync among the transactions the
//!    channel has ready. Passes repeat until one copies at most
//!    [`super::state::recovery::CATCH_UP_UNDER_LOCK`] transactions;
//! 5. takes the array's commit lock (the gate: no transaction between
//!    vote and finish), waits for the last one to be visible, copies the
//!    rest and rejoins the target as optimal, atomically for commits.
//!
//! The cost grows with the missing transactions, never with the history.
//!
//! **Rate guarantee.** While a recovery runs, each new commit is admitted
//! against credit the copy earns ([`super::state::Credit`], `recovery-ratio`):
//! commits are slowed, never refused, and the recovery always finishes.
//!
//! **Failures.** If the source or target fails, or the array closes, the
//! target goes back to degraded with the reason; nothing half-joins. The
//! target holds only whole transactions (each restored one is committed on
//! it), so a later recovery — also after a kill -9 of zeoraid — continues
//! from where it stands.
//!
//! **Auto-recovery.** With `auto-recover` (the default) a supervisor
//! thread (`zeoraid-recovery-ARRAY`) recovers degraded backends in
//! configuration order, one after another, with a backoff per backend
//! after failures ([`super::state::recovery::next_to_recover`]). A target found
//! diverged is left to the operator.

use super::state::inflight::FinishEnd;
use super::state::roles::Event;
use super::state::{recovery as plan, BackendState, Credit, Reason, RecoveryError};
use super::verify;
use super::{Core, RaidStorage};
use crate::locks::lock;
use crate::status::Role;
use crate::storage::{timestamp, Error, Op, Storage, Tid, Txn, TxnRecord, Vote};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How often the supervisor looks for backends to recover.
const SUPERVISOR_TICK: Duration = Duration::from_millis(500);

/// Transactions read ahead of the writer.
const READ_AHEAD: usize = 64;

/// At most this many transactions share one fsync on a group-commit target.
const DURABLE_EVERY: u64 = 512;

/// Longest a recovery waits for the transaction between vote and finish
/// before it takes the array's commit lock.
const GATE_WAIT: Duration = Duration::from_secs(if cfg!(test) { 1 } else { 60 });

/// How often a recovery logs its progress.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// A running recovery's figures, for status documents and logs.
pub(crate) struct Running {
    source: String,
    started: Instant,
    from: Option<Tid>,
    /// The first transaction copied.
    first: Option<Tid>,
    at: Tid,
    goal: Tid,
    copied: u64,
    bytes: u64,
    phase: &'static str,
}

impl Running {
    fn progress(&self) -> plan::Progress {
        // Estimated from the resume point, or for a copy from scratch
        // from the first transaction copied.
        let (start, measured) = match self.from {
            Some(t) => (Some(t), self.copied),
            None => (self.first, self.copied.saturating_sub(1)),
        };
        plan::progress(
            start,
            self.at,
            self.goal.max(self.at),
            measured,
            self.copied,
            self.started.elapsed().as_secs_f64(),
        )
    }

    pub(crate) fn status(&self) -> crate::status::RecoveryStatus {
        let p = self.progress();
        crate::status::RecoveryStatus {
            source: self.source.clone(),
            phase: self.phase.to_string(),
            copied: p.copied,
            left: p.left,
            percent: p.percent,
            rate: (p.rate * 10.0).round() / 10.0,
            eta_seconds: p.eta.map(|e| e.round()),
            megabytes: (self.bytes as f64 / 1e5).round() / 10.0,
            at: self.at.to_string(),
            from: self.from.map(|t| t.to_string()),
        }
    }
}

/// What a finished recovery did.
#[derive(Clone, Debug)]
pub struct Report {
    pub backend: String,
    pub source: String,
    /// Transactions and data bytes copied.
    pub copied: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Copied everything after this tid (`None`: the whole history).
    pub from: Option<Tid>,
    /// Where a forced recovery moved the old data.
    pub moved_aside: Option<String>,
}

/// The recovery (or verification) running, one at a time, and the
/// recoveries operators asked for, which the supervisor serves in order.
#[derive(Default)]
pub(super) struct Work {
    pub(super) busy: Mutex<Option<String>>,
    /// (backend, forced).
    pub(super) requests: Mutex<VecDeque<(usize, bool)>>,
}

/// Marks the array busy (one recovery or verification at a time).
pub(crate) struct Busy<'a>(&'a Core);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        *lock(&self.0.work.busy) = None;
    }
}

impl Core {
    /// Claim the array for `what`, or say what holds it.
    pub(crate) fn claim(&self, what: String) -> Result<Busy<'_>, String> {
        let mut busy = lock(&self.work.busy);
        if let Some(other) = busy.as_deref() {
            return Err(format!(
                "RAID array {:?} is busy: {other}; try again when it has finished",
                self.opts.name
            ));
        }
        *busy = Some(what);
        Ok(Busy(self))
    }

    fn closing(&self) -> bool {
        self.wake.is_closing()
    }

    /// The source for a recovery of `target`: an optimal backend, in
    /// process first (no network), else the fastest.
    pub(super) fn pick_source(&self, target: usize) -> Option<usize> {
        let optimal: Vec<usize> = self
            .optimal()
            .into_iter()
            .filter(|&i| i != target)
            .collect();
        optimal
            .iter()
            .copied()
            .find(|&i| self.backends[i].local)
            .or_else(|| {
                optimal.iter().copied().min_by(|&a, &b| {
                    self.backends[a]
                        .latency()
                        .total_cmp(&self.backends[b].latency())
                })
            })
    }
}

impl RaidStorage {
    /// Recover backend `name` now, on a dedicated thread, and wait for it.
    /// `force`: a target that diverged is moved aside (local backends
    /// only; nothing is deleted) and rebuilt from scratch.
    pub fn recover(&self, name: &str, force: bool) -> Result<Report, String> {
        let i = self.position(name)?;
        // `disabled` is cleared once this recovery holds the array, not
        // before: auto-recovery would take the backend in between, and
        // this call would find the array busy with it.
        run_on_thread(&self.core, i, force, true).map_err(|e| e.to_string())
    }

    /// Ask for a recovery of backend `name` (`force`: rebuild a diverged
    /// local backend) and return at once: the supervisor thread runs it
    /// after any running one. Refused, saying why, when the backend is
    /// unknown, optimal or already recovering.
    pub fn request_recovery(&self, name: &str, force: bool) -> Result<(), String> {
        let core = &self.core;
        let i = self.position(name)?;
        let b = &core.backends[i];
        match core.state_of(i) {
            BackendState::Optimal if b.is_open() => {
                return Err(format!("backend {name:?} is optimal: nothing to recover"))
            }
            BackendState::Recovering(_) => {
                return Err(format!("backend {name:?} is already recovering"))
            }
            _ => {}
        }
        let mut q = lock(&core.work.requests);
        if q.iter().any(|(j, _)| *j == i) {
            return Err(format!(
                "a recovery of backend {name:?} is already asked for"
            ));
        }
        q.push_back((i, force));
        drop(q);
        lock(&b.attempts).disabled = false;
        core.wake.wake_all();
        log::info!(
            "RAID array {:?}: recovery of backend {name:?} asked for{}",
            core.opts.name,
            if force { " (forced)" } else { "" }
        );
        Ok(())
    }

    /// Take backend `name` out of the array (degraded, "disabled by the
    /// operator"); auto-recovery leaves it alone until a recovery is asked
    /// for. Refused when it would leave fewer than `min-optimal` optimal
    /// backends.
    pub fn disable(&self, name: &str) -> Result<(), String> {
        let core = &self.core;
        let i = self.position(name)?;
        let b = &core.backends[i];
        if !b.is_optimal() {
            lock(&b.attempts).disabled = true;
            return Ok(());
        }
        let left = core.optimal().len() - 1;
        if left < core.opts.min_optimal.max(1) {
            return Err(format!(
                "disabling backend {name:?} would leave {left} optimal backend(s), fewer than \
                 min-optimal = {}; recover another backend first",
                core.opts.min_optimal
            ));
        }
        lock(&b.attempts).disabled = true;
        core.degrade(i, Reason::Disabled);
        Ok(())
    }

    pub(super) fn position(&self, name: &str) -> Result<usize, String> {
        let core = &self.core;
        core.backends
            .iter()
            .position(|b| b.name == name && !b.is_removed())
            .ok_or_else(|| {
                format!(
                    "RAID array {:?} has no backend {name:?} (its backends: {})",
                    core.opts.name,
                    core.backends
                        .iter()
                        .filter(|b| !b.is_removed())
                        .map(|b| b.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }

    /// Stop auto-recovery and any running recovery, and join the thread.
    pub(crate) fn stop_supervisor(&self) {
        let core = &self.core;
        core.wake.close();
        if let Some(h) = lock(&self.supervisor).take() {
            if h.join().is_err() {
                log::error!(
                    "RAID array {:?}: the recovery supervisor panicked (a zeoraid bug)",
                    core.opts.name
                );
            }
        }
    }
}

impl Drop for RaidStorage {
    fn drop(&mut self) {
        self.stop_supervisor();
    }
}

/// Run one recovery on its own named thread and wait for it.
/// `operator`: asked for by name ([`RaidStorage::recover`]), so a backend
/// the operator disabled is taken back.
fn run_on_thread(
    core: &Arc<Core>,
    i: usize,
    force: bool,
    operator: bool,
) -> Result<Report, RecoveryError> {
    let name = format!(
        "zeoraid-recover-{}-{}",
        core.opts.name, core.backends[i].name
    );
    let c = core.clone();
    let h = std::thread::Builder::new()
        .name(name)
        .spawn(move || recover_now(&c, i, force, operator))
        .map_err(|e| format!("cannot start a recovery thread: {e}"))?;
    h.join().unwrap_or_else(|_| {
        Err(RecoveryError::Failed(
            "the recovery thread panicked (a zeoraid bug; see the log)".into(),
        ))
    })
}

/// The supervisor thread of auto-recovery.
pub(super) fn spawn_supervisor(core: &Arc<Core>) -> Result<std::thread::JoinHandle<()>, String> {
    let weak = Arc::downgrade(core);
    std::thread::Builder::new()
        .name(format!("zeoraid-recovery-{}", core.opts.name))
        .spawn(move || supervise(weak))
        .map_err(|e| format!("cannot start the recovery supervisor: {e}"))
}

fn supervise(weak: Weak<Core>) {
    loop {
        let Some(core) = weak.upgrade() else { return };
        if core.closing() {
            return;
        }
        // Recoveries an operator asked for come first.
        let asked = lock(&core.work.requests).pop_front();
        if let Some((i, force)) = asked {
            if let Err(why) = run_on_thread(&core, i, force, false) {
                log::warn!(
                    "RAID array {:?}: the recovery of backend {:?} asked for did not succeed: {why}",
                    core.opts.name,
                    core.backends[i].name
                );
            }
            continue;
        }
        // Another controller leads (or this one is taking over): only the
        // fence holder writes to the backends, recoveries included.
        let fence = *lock(&core.commit.fence);
        if fence.stands_by() {
            core.reconnect_idle(false);
        }
        if !core.opts.auto_recover || fence.others_write() {
            wait_tick(&core);
            continue;
        }
        let candidates: Vec<plan::Candidate> = core
            .backends
            .iter()
            .map(|b| {
                let a = lock(&b.attempts).clone();
                let role = b.role();
                plan::Candidate {
                    degraded: !b.is_removed()
                        && (role == Role::Degraded || (!b.is_open() && role == Role::Optimal)),
                    diverged: a.diverged || a.disabled,
                    since_attempt: a.last.map(|t| t.elapsed().as_secs_f64()),
                    failures: a.failures,
                }
            })
            .collect();
        let busy = lock(&core.work.busy).is_some();
        if let Some(i) = plan::next_to_recover(&candidates, busy) {
            if core.pick_source(i).is_some() {
                match run_on_thread(&core, i, false, false) {
                    Ok(_) => {}
                    Err(why) => log::warn!(
                        "RAID array {:?}: auto-recovery of backend {:?} did not succeed: {why}{}",
                        core.opts.name,
                        core.backends[i].name,
                        if why.is_divergence() {
                            "; it is left to the operator (recover it with force to rebuild it)"
                                .to_string()
                        } else {
                            format!(
                                "; next attempt in {} s",
                                plan::backoff(lock(&core.backends[i].attempts).failures).as_secs()
                            )
                        }
                    ),
                }
            }
        }
        wait_tick(&core);
    }
}

/// Sleep a supervisor tick, or less when the array closes or an operator
/// asks for a recovery.
fn wait_tick(core: &Core) {
    core.wake
        .sleep(SUPERVISOR_TICK, || !lock(&core.work.requests).is_empty());
}

/// Recover backend `i` on this thread.
fn recover_now(
    core: &Arc<Core>,
    i: usize,
    force: bool,
    operator: bool,
) -> Result<Report, RecoveryError> {
    let b = &core.backends[i];
    if b.is_removed() {
        return Err(format!("backend {:?} was removed", b.name).into());
    }
    if lock(&core.commit.fence).others_write() {
        return Err(format!(
            "this controller does not hold the fence (another controller leads, or it is \
             taking over): recover backend {:?} through the leader",
            b.name
        )
        .into());
    }
    let _busy = core.claim(format!("backend {:?} is recovering", b.name))?;
    if operator {
        lock(&b.attempts).disabled = false;
    }
    let was = match &core.state_of(i) {
        BackendState::Optimal if b.is_open() => {
            return Err(format!("backend {:?} is optimal: nothing to recover", b.name).into())
        }
        BackendState::Optimal => Reason::NotOpen,
        BackendState::Degraded(why) => why.clone(),
        BackendState::Recovering(_) => {
            return Err(format!("backend {:?} is already recovering", b.name).into())
        }
    };
    let result = attempt(core, i, force, &was);
    b.note_attempt(&result.as_ref().map(|_| ()).map_err(|e| e.clone()));
    core.commit.set_credit(None);
    *lock(&b.recovery) = None;
    match &result {
        Ok(r) => log::info!(
            "RAID array {:?}: backend {:?} recovered from {:?} and optimal again: {} transactions \
             ({:.1} MB) copied in {:.1} s; array {}",
            core.opts.name,
            b.name,
            r.source,
            r.copied,
            r.bytes as f64 / 1e6,
            r.seconds,
            core.array_state()
        ),
        // It never started (the target or a source cannot be reached):
        // the backend keeps the reason it was degraded with.
        Err(_) if b.role() != Role::Recovering => {}
        Err(why) => {
            b.errors.fetch_add(1, Ordering::Relaxed);
            core.step(Event::RecoveryFailed {
                at: i,
                why: why.to_string(),
            });
            log::error!(
                "RAID array {:?}: recovery of backend {:?} failed: {why}; it stays degraded",
                core.opts.name,
                b.name
            );
        }
    }
    result
}

fn attempt(core: &Arc<Core>, i: usize, force: bool, was: &Reason) -> Result<Report, RecoveryError> {
    let b = &core.backends[i];
    let timeout = core.opts.backend_timeout;
    let mut moved_aside = b.reopen(Arc::downgrade(core), i, false, timeout)?;
    let si = core.pick_source(i).ok_or_else(|| {
        "no optimal backend to copy from; recover when another backend is optimal".to_string()
    })?;
    let source_b = &core.backends[si];
    let source = source_b.storage().map_err(|e| e.to_string())?;
    // Does it answer at all? (Before it is marked recovering: one that
    // does not keeps its reason.)
    b.storage()
        .and_then(|t| t.last_transaction())
        .map_err(|e| format!("it does not answer: {e}"))?;
    let started = Instant::now();
    *lock(&b.recovery) = Some(Running {
        source: source_b.name.clone(),
        started,
        from: None,
        first: None,
        at: Tid::ZERO,
        goal: *lock(&core.commit.last_logged),
        copied: 0,
        bytes: 0,
        phase: "comparing",
    });
    // Nothing of the array's may still be open on it (ended by the commit
    // path, or resolved now), and no vote may choose it from here on.
    core.take_for_recovery(i)?;
    log::info!(
        "RAID array {:?}: recovering backend {:?} from {:?} (it was degraded: {was})",
        core.opts.name,
        b.name,
        source_b.name
    );
    let mut target = b.storage().map_err(|e| e.to_string())?;
    let from = match resume_point(source.as_ref(), target.as_ref()) {
        Ok(from) => from,
        Err(why) if force && why.is_divergence() => {
            log::warn!(
                "RAID array {:?}: backend {:?} {why}; forced: rebuilding it from scratch",
                core.opts.name,
                b.name
            );
            // Its old handle goes first (a file's lock goes with it).
            drop(target);
            moved_aside = b.reopen(Arc::downgrade(core), i, true, timeout)?;
            target = b.storage().map_err(|e| e.to_string())?;
            if target.last_transaction().map_err(|e| e.to_string())? != Tid::ZERO {
                return Err("the rebuilt target is not empty".into());
            }
            None
        }
        Err(why) => return Err(why),
    };
    log::info!(
        "RAID array {:?}: backend {:?}: copying {}",
        core.opts.name,
        b.name,
        match from {
            Some(t) => format!("the transactions after {t} (it holds the history up to there)"),
            None => "the whole history (it is empty)".to_string(),
        }
    );
    if let Some(r) = lock(&b.recovery).as_mut() {
        r.from = from;
        r.at = from.unwrap_or(Tid::ZERO);
        r.phase = "copying";
    }
    core.commit.set_credit(Some(Credit::new(
        core.opts.recovery_ratio,
        super::commit::clock(),
    )));
    let mut copier = Copier {
        core,
        si,
        source: &source,
        i,
        target: &target,
        after: from,
        last_log: Instant::now(),
    };
    // Copy passes until one finds the source close.
    loop {
        let copied = copier.pass()?;
        if plan::close_enough(copied) {
            break;
        }
    }
    // Finish under the array's commit lock.
    if let Some(r) = lock(&b.recovery).as_mut() {
        r.phase = "finishing";
    }
    let Some(mut g) = core.commit.wait_gate(GATE_WAIT, core.wake.closing_flag()) else {
        return Err(format!(
            "a transaction held the array's commit lock for more than {} s; the copy is done \
             up to {}, the next attempt finishes it",
            GATE_WAIT.as_secs(),
            copier.after.map(|t| t.to_string()).unwrap_or_default()
        )
        .into());
    };
    g.set_recovery(true);
    drop(g);
    let finished = copier.finish_under_gate();
    core.commit.recovery_done();
    let (copied, bytes) = finished?.map(|r| (r.copied, r.bytes)).unwrap_or((0, 0));
    Ok(Report {
        backend: b.name.clone(),
        source: source_b.name.clone(),
        copied,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        from,
        moved_aside,
    })
}

/// Where the copy starts, or why the target diverged.
fn resume_point(source: &dyn Storage, target: &dyn Storage) -> Result<Option<Tid>, RecoveryError> {
    let claimed = target
        .last_transaction()
        .map_err(|e| format!("cannot read its last transaction: {e}"))?;
    let source_last = source
        .last_transaction()
        .map_err(|e| format!("cannot read the source's last transaction: {e}"))?;
    // What counts is the newest transaction the target *holds*: Python's
    // FileStorage, killed between a vote and its finish, cuts the
    // unfinished transaction off when it opens again but still reports its
    // tid as `lastTransaction()`.
    let held = newest_held(target, claimed).map_err(|e| format!("cannot read its history: {e}"))?;
    let Some(held) = held else {
        return Ok(plan::resume_point(Tid::ZERO, source_last, None, None)?);
    };
    if held.tid != claimed {
        log::warn!(
            "a recovery target reports {claimed} as its last transaction but holds transactions \
             up to {} only (an unfinished transaction cut off after a crash); copying after {}",
            held.tid,
            held.tid
        );
    }
    let target_last = held.tid;
    let on_source = if target_last > source_last {
        None
    } else {
        let mut it = source
            .iterator(Some(target_last), Some(target_last))
            .map_err(|e| format!("cannot read transaction {target_last} on the source: {e}"))?;
        match it.next() {
            Some(Ok(t)) if t.tid == target_last => Some((t.tid, verify::digest(&t))),
            Some(Err(e)) => {
                return Err(
                    format!("cannot read transaction {target_last} on the source: {e}").into(),
                )
            }
            _ => None,
        }
    };
    Ok(plan::resume_point(
        target_last,
        source_last,
        Some((held.tid, verify::digest(&held))),
        on_source,
    )?)
}

/// The newest transaction in `s`'s history at or before `claimed` (its
/// `lastTransaction`), looking back over a widening window; `None` when
/// it holds none.
pub(super) fn newest_held(
    s: &dyn Storage,
    claimed: Tid,
) -> crate::storage::Result<Option<TxnRecord>> {
    if claimed == Tid::ZERO {
        return Ok(None);
    }
    let at = timestamp::time_time(claimed);
    for window in [0.0, 60.0, 3600.0, 7.0 * 86_400.0, f64::INFINITY] {
        let start = if window == 0.0 {
            Some(claimed)
        } else if window.is_finite() {
            Some(timestamp::from_unix(at - window))
        } else {
            None
        };
        let mut newest = None;
        for t in s.iterator(start, Some(claimed))? {
            newest = Some(t?);
        }
        if newest.is_some() {
            return Ok(newest);
        }
    }
    Ok(None)
}

/// One recovery's copy: where it reads, where it writes, how far it is.
struct Copier<'a> {
    core: &'a Arc<Core>,
    /// Source and target positions in the array.
    si: usize,
    source: &'a Arc<dyn Storage>,
    i: usize,
    target: &'a Arc<dyn Storage>,
    /// The last transaction the target holds (`None`: nothing yet).
    after: Option<Tid>,
    last_log: Instant,
}

impl Copier<'_> {
    /// Copy every transaction of the source after `after` to the target;
    /// returns how many. Reads on a named thread, writes on this one.
    fn pass(&mut self) -> Result<u64, String> {
        let (core, i, source, target) = (self.core, self.i, self.source, self.target);
        let start = self.after.map(timestamp::successor);
        let (tx, rx) = crossbeam_channel::bounded::<Result<TxnRecord, Error>>(READ_AHEAD);
        let b = &core.backends[i];
        let group = target.group_commit();
        let name = format!("zeoraid-recover-read-{}", b.name);
        let goal = *lock(&core.commit.last_logged);
        if let Some(r) = lock(&b.recovery).as_mut() {
            r.goal = goal;
        }
        std::thread::scope(|scope| -> Result<u64, String> {
            let reader = std::thread::Builder::new()
                .name(name)
                .spawn_scoped(scope, move || feed(source.as_ref(), start, None, &tx))
                .map_err(|e| format!("cannot start a reader thread: {e}"))?;
            let written = self.write_all(&rx, group);
            drop(rx);
            if reader.join().is_err() {
                return Err("the recovery's reader thread panicked (a zeoraid bug)".into());
            }
            written
        })
    }

    /// The writing half of [`Copier::pass`].
    fn write_all(
        &mut self,
        rx: &crossbeam_channel::Receiver<Result<TxnRecord, Error>>,
        group: bool,
    ) -> Result<u64, String> {
        let mut at_risk = None;
        let written = self.write_each(rx, group, &mut at_risk);
        if let (Err(_), Some(tid)) = (&written, at_risk) {
            // The pass stopped with transactions logged on the target
            // (`finish_log`) and not yet made durable and published: its
            // last transaction does not show them, yet its next vote
            // refuses their tids. As after a commit's failed finish, the
            // next recovery makes the target's position honest first
            // (reopens it: a local one keeps what it logged) before it
            // reads where it stands.
            self.core.finish_ended(self.i, tid, FinishEnd::Unknown);
        }
        written
    }

    /// [`Copier::write_all`]'s loop; `at_risk`: the newest transaction
    /// the target may hold logged but not published (group commit).
    fn write_each(
        &mut self,
        rx: &crossbeam_channel::Receiver<Result<TxnRecord, Error>>,
        group: bool,
        at_risk: &mut Option<Tid>,
    ) -> Result<u64, String> {
        let (core, si, source, target) = (self.core, self.si, self.source, self.target);
        let b = &core.backends[self.i];
        let source_name = &core.backends[si].name;
        let mut copied = 0u64;
        let mut undurable: Option<Tid> = None;
        let mut since_durable = 0u64;
        let make_durable = |tid: Tid| -> Result<(), String> {
            target
                .make_durable(tid)
                .map_err(|e| format!("writing to it failed: {e}"))?;
            target.publish(tid);
            Ok(())
        };
        for item in rx.iter() {
            if core.closing() {
                return Err("the array is closing; the recovery continues after a restart".into());
            }
            if !core.backends[si].is_optimal() {
                return Err(format!("the source {source_name:?} was degraded meanwhile"));
            }
            let rec =
                item.map_err(|e| format!("reading from the source {source_name:?} failed: {e}"))?;
            if self.after.is_some_and(|a| rec.tid <= a) {
                continue;
            }
            if group {
                *at_risk = Some(rec.tid);
            }
            let bytes = restore(Some(source.as_ref()), target.as_ref(), &rec, group)?;
            self.after = Some(rec.tid);
            copied += 1;
            if group {
                undurable = Some(rec.tid);
                since_durable += 1;
                if rx.is_empty() || since_durable >= DURABLE_EVERY {
                    make_durable(rec.tid)?;
                    undurable = None;
                    *at_risk = None;
                    since_durable = 0;
                }
            }
            if let Some(c) = lock(&core.commit.credit).as_mut() {
                c.earn(1);
            }
            core.commit.credit_cv.notify_all();
            let goal = *lock(&core.commit.last_logged);
            if let Some(r) = lock(&b.recovery).as_mut() {
                r.at = rec.tid;
                r.first.get_or_insert(rec.tid);
                r.copied += 1;
                r.bytes += bytes;
                r.goal = goal.max(rec.tid);
                if self.last_log.elapsed() >= LOG_EVERY {
                    self.last_log = Instant::now();
                    let p = r.progress();
                    log::info!(
                    "RAID array {:?}: recovering backend {:?} from {source_name:?}: {:.1}% ({} \
                     copied, about {} left, {:.0} transactions/s{})",
                    core.opts.name,
                    b.name,
                    p.percent,
                    p.copied,
                    p.left,
                    p.rate,
                    p.eta
                        .map(|e| format!(", about {e:.0} s to go"))
                        .unwrap_or_default()
                );
                }
            }
        }
        if let Some(t) = undurable {
            make_durable(t)?;
            *at_risk = None;
        }
        Ok(copied)
    }

    /// With the gate held: wait until every logged transaction is visible,
    /// copy what is left, check, rejoin. Returns the recovery's final
    /// figures: the status fields a monitor reads (progress, failures,
    /// throttle) are settled before the state turns optimal, so nobody sees
    /// an optimal backend that still reports a recovery.
    fn finish_under_gate(&mut self) -> Result<Option<Running>, String> {
        let (core, i, target) = (self.core, self.i, self.target);
        let last = *lock(&core.commit.last_logged);
        // Group commit: the last transactions may be logged but not yet
        // published (make_durable runs after the server's lock); the gate
        // keeps new ones out, so this ends soon.
        let deadline = Instant::now() + core.opts.backend_timeout;
        {
            let mut g = lock(&core.commit.gate);
            while core.published.load(Ordering::Acquire) < last.0 {
                if Instant::now() >= deadline {
                    return Err(format!(
                        "transaction {last} did not become visible within backend-timeout"
                    ));
                }
                g = core
                    .commit
                    .gate_cv
                    .wait_timeout(g, Duration::from_millis(10))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        self.pass()?;
        let have = target.last_transaction().map_err(|e| e.to_string())?;
        if have != last {
            return Err(format!(
                "after the copy its last transaction is {have}, the array's is {last}"
            ));
        }
        let b = &core.backends[i];
        b.last_tid.store(have.0, Ordering::Relaxed);
        b.latency_us.store(0f64.to_bits(), Ordering::Relaxed);
        let figures = lock(&b.recovery).take();
        b.note_attempt(&Ok(()));
        core.commit.set_credit(None);
        core.step(Event::Recovered { at: i });
        Ok(figures)
    }
}

/// A copy of `source`'s blob file of `oid` at `tid` in `target`'s
/// staging directory; `None` when the source has no file for it (ZODB's
/// `copyTransactionsFrom` copies such a record without its blob too, with
/// a warning here).
fn blob_copy(
    source: &dyn Storage,
    target: &dyn Storage,
    oid: crate::storage::Oid,
    tid: Tid,
    copies: &mut super::blobs::Copies,
) -> Result<Option<std::path::PathBuf>, String> {
    let file = match source.load_blob(oid, tid) {
        Ok(p) => p,
        Err(Error::PosKey(_)) => {
            log::warn!("the source has no blob file for {oid} at {tid}: copied without it");
            return Ok(None);
        }
        Err(e) => return Err(format!("reading the blob of {oid} at {tid} failed: {e}")),
    };
    let dir = target.blob_staging_dir().ok_or_else(|| {
        format!("{oid} at {tid} is a blob and the target keeps no blobs: set blob-dir on it")
    })?;
    let copy = super::blobs::copy_into(&file, &dir).map_err(|e| e.to_string())?;
    copies.push(copy.clone());
    Ok(Some(copy))
}

/// Send `s`'s transactions from `start` to `stop` down `tx`, until the
/// history ends, an error (sent too) or the receiver goes away.
pub(super) fn feed(
    s: &dyn Storage,
    start: Option<Tid>,
    stop: Option<Tid>,
    tx: &crossbeam_channel::Sender<Result<TxnRecord, Error>>,
) {
    let it = match s.iterator(start, stop) {
        Ok(it) => it,
        Err(e) => {
            let _ = tx.send(Err(e));
            return;
        }
    };
    for item in it {
        let failed = item.is_err();
        if tx.send(item).is_err() || failed {
            return;
        }
    }
}

/// Write one transaction to the target as it is on the source (same tid,
/// status, metadata, records, backpointers). Returns its data bytes.
pub(super) fn restore(
    source: Option<&dyn Storage>,
    target: &dyn Storage,
    rec: &TxnRecord,
    group: bool,
) -> Result<u64, String> {
    // Blob records bring their file: a copy in the target's staging
    // directory, which the target takes (left-overs go with `_copies`).
    let mut copies = super::blobs::Copies::default();
    let mut ops: Vec<Op> = Vec::with_capacity(rec.records.len());
    for r in &rec.records {
        let blob = match (source, &r.data) {
            (Some(s), Some(d)) if crate::storage::pickle_refs::is_blob_record(d) => {
                blob_copy(s, target, r.oid, rec.tid, &mut copies)?
            }
            _ => None,
        };
        ops.push(match (blob, &r.data) {
            (Some(blob), Some(data)) => Op::RestoreBlob {
                oid: r.oid,
                serial: rec.tid,
                data: data.clone(),
                prev_txn: r.data_txn,
                blob,
            },
            _ => Op::Restore {
                oid: r.oid,
                serial: rec.tid,
                data: r.data.clone(),
                prev_txn: r.data_txn,
            },
        });
    }
    // Records and the blob files copied with them.
    let bytes = rec.data_bytes() + copies.bytes();
    let txn = Txn {
        meta: rec.meta.clone(),
        tid: Some(rec.tid),
        status: rec.status,
        ops,
    };
    let fail = |e: String| {
        target.tpc_abort();
        format!("writing transaction {} to it failed: {e}", rec.tid)
    };
    match target.tpc_vote(&txn) {
        Ok(Vote::Prepared { .. }) => {}
        Ok(Vote::Conflicts(c)) => {
            return Err(fail(format!("{} conflicts on a restore", c.len())));
        }
        Err(e) => return Err(fail(e.to_string())),
    }
    let finished = if group {
        target.finish_log()
    } else {
        target.tpc_finish()
    };
    match finished {
        Ok(t) if t == rec.tid => Ok(bytes),
        Ok(t) => Err(format!(
            "transaction {} was committed on it as {t}",
            rec.tid
        )),
        Err(e) => Err(format!(
            "finishing transaction {} on it failed: {e}",
            rec.tid
        )),
    }
}
