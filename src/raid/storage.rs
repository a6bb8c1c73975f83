//! The ZODB storage contract for the array: reads through the read
//! policy, votes compared across backends, finish (and group commit's
//! log, durable, publish) on every backend that voted with the majority.
//! The decisions come from [`super::state`]; the calls go through
//! [`super::fanout`].

use super::commit::Pending;
use super::fanout::Outcome;
use super::fence::{self, Fence, FenceState};
use super::state::inflight::FinishEnd;
use super::state::{self, Reason, VoteKey};
use super::{Backend, RaidStorage};
use crate::locks::lock;
use crate::storage::resolve::ConflictResolver;
use crate::storage::{
    timestamp, CurrentRecord, Data, Error, HistoryEntry, Loaded, Oid, Op, Result, SizeInfo,
    Storage, Tid, Txn, TxnIter, UndoEntry, Vote,
};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

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
        Op::Store { oid, .. }
        | Op::StoreBlob { oid, .. }
        | Op::RestoreBlob { oid, .. }
        | Op::Restore { oid, .. }
        | Op::Delete { oid, .. } => Some(*oid),
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
            Err(e) if state::classify(state::Call::Write, e) == state::ErrorKind::Failure => {
                Err(e.to_string())
            }
            r => Ok(key(r)),
        })
        .collect()
}

/// Transactions up to `tid` are visible on the backends: a recovery
/// finishing and the off-site shippers wait for this.
fn mark_published(core: &super::Core, tid: Tid) {
    core.cache.published(tid);
    {
        let _g = lock(&core.commit.gate);
        core.published.fetch_max(tid.0, Ordering::AcqRel);
        core.commit.gate_cv.notify_all();
    }
    core.offsite.each(|m| m.published());
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
            .filter_map(|b| b.storage().ok())
            .all(|s| s.supports_undo())
    }

    fn last_transaction(&self) -> Result<Tid> {
        self.core.check_readable()?;
        Ok(Tid(self.core.published.load(Ordering::Acquire)))
    }

    fn load_before(&self, oid: Oid, before: Tid) -> Result<Option<Loaded>> {
        let core = &self.core;
        let cache = &core.cache;
        if cache.enabled() {
            core.check_readable()?;
            if let Some(hit) = cache.load_before(oid, before) {
                core.reads.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(hit));
            }
        }
        let ticket = cache.ticket(oid);
        let r = core.read_op("loadBefore", |s| s.load_before(oid, before));
        if let Ok(Some(loaded)) = &r {
            cache.fill(oid, ticket, loaded);
        }
        r
    }

    fn load_serial(&self, oid: Oid, serial: Tid) -> Result<Data> {
        let core = &self.core;
        if core.cache.enabled() {
            core.check_readable()?;
            if let Some(data) = core.cache.load_serial(oid, serial) {
                core.reads.fetch_add(1, Ordering::Relaxed);
                return Ok(data);
            }
        }
        core.read_op("loadSerial", |s| s.load_serial(oid, serial))
    }

    fn history(&self, oid: Oid, size: usize) -> Result<Vec<HistoryEntry>> {
        self.core.read_op("history", |s| s.history(oid, size))
    }

    fn new_oids(&self, n: usize) -> Result<Vec<Oid>> {
        let core = &self.core;
        core.check_writable(core.optimal().len())?;
        let mut next = lock(&core.commit.next_oid);
        let first = *next + 1;
        *next += n as u64;
        Ok((first..=*next).map(Oid).collect())
    }

    fn tpc_vote(&self, txn: &Txn) -> Result<Vote> {
        let core = &self.core;
        core.commit.admit();
        core.commit.enter();
        let r = self.vote_locked(txn);
        if !matches!(r, Ok(Vote::Prepared { .. })) {
            core.commit.leave();
        }
        r
    }

    fn tpc_finish(&self) -> Result<Tid> {
        let r = self.finish_with("tpc_finish", false, |s| s.tpc_finish());
        self.core.commit.leave();
        // Without group commit (an in-process caller), finishing also
        // made it durable and visible: tell whoever waits for that.
        if let Ok(tid) = r {
            mark_published(&self.core, tid);
        }
        r
    }

    fn sends_writers_away(&self, method: &str, e: &Error) -> bool {
        fence::sends_away(&lock(&self.core.commit.fence), method, e)
    }

    fn group_commit(&self) -> bool {
        self.core.group
    }

    fn finish_log(&self) -> Result<Tid> {
        let r = self.finish_with("finish_log", true, |s| s.finish_log());
        self.core.commit.leave();
        r
    }

    /// On every backend that logged transactions up to `tid`, optimal or
    /// not (one that left the array after its `finish_log` still holds
    /// them: the log is final). Only the optimal ones count for the client.
    fn make_durable(&self, tid: Tid) -> Result<()> {
        let core = &self.core;
        let logged = core.logged_through(tid);
        if logged.is_empty() {
            // Every transaction up to `tid` is durable and published.
            return Ok(());
        }
        let answered = core.write_op("make_durable", state::Call::Finish, &logged, true, |s| {
            s.make_durable(tid)
        });
        let mut durable = 0;
        for (i, r) in answered {
            match r {
                Ok(()) if core.backends[i].is_optimal() => durable += 1,
                Ok(()) => {}
                Err(e) => core.degrade(
                    i,
                    Reason::NotDurable {
                        tid,
                        error: e.to_string(),
                    },
                ),
            }
        }
        if durable == 0 {
            return Err(Error::Io(format!(
                "RAID array {:?}: transaction {tid} could not be made durable on any backend",
                core.opts.name
            )));
        }
        if durable < core.opts.min_optimal.max(1) {
            log::error!(
                "RAID array {:?}: transaction {tid} is durable on only {durable} backend(s), fewer \
                 than min-optimal = {}",
                core.opts.name,
                core.opts.min_optimal
            );
        }
        Ok(())
    }

    /// On every backend that logged transactions up to `tid`, optimal or
    /// not, so none is left holding a logged transaction it does not show.
    fn publish(&self, tid: Tid) {
        let core = &self.core;
        for i in core.logged_through(tid) {
            if let Ok(s) = core.backends[i].storage() {
                s.publish(tid);
            }
            core.published_on(i, tid);
        }
        mark_published(core, tid);
    }

    fn tpc_abort(&self) {
        let core = &self.core;
        *lock(&core.commit.pending) = Pending::default();
        let held = lock(&core.commit.inflight).abortable();
        core.abort_held(&held);
        core.commit.leave();
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
        if let Some(what) = lock(&core.work.busy).as_deref() {
            return Err(Error::Value(format!(
                "RAID array {:?} cannot pack while {what}: its backends would no longer hold \
                 the same history; pack again when it has finished",
                core.opts.name
            )));
        }
        // Pack may take long: no array deadline beyond the backends' own.
        let targets: Vec<&Backend> = optimal.iter().map(|&i| &core.backends[i]).collect();
        core.packing.fetch_add(1, Ordering::AcqRel);
        let outcomes = core.fanout.call_all(
            &targets,
            |_| true,
            Duration::from_secs(86_400),
            |b| b.storage().and_then(|s| s.pack(t, gc)),
        );
        core.packing.fetch_sub(1, Ordering::AcqRel);
        // Whatever the outcome: revisions a backend collected must not be
        // served from memory.
        core.cache.forget_all("the array packed");
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
            core.degrade(answered[pos].0, Reason::Pack(why));
        }
        let packed = match decision.agree.first().map(|&p| &answered[p].1) {
            Some(r) => r.clone(),
            None => Err(Error::Disconnected(format!(
                "RAID array {:?}: no backend could pack",
                core.opts.name
            ))),
        };
        if packed.is_ok() {
            let after = *lock(&core.commit.last_logged);
            core.offsite.each(|m| m.request_pack(after, t, gc));
        }
        packed
    }

    fn size_info(&self) -> SizeInfo {
        let core = &self.core;
        core.optimal()
            .first()
            .and_then(|&i| core.backends[i].storage().ok())
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
            .all(|b| b.local && b.storage().is_ok_and(|s| s.reads_never_block()))
    }

    /// A load the chosen backend can answer without waiting (a file
    /// backend whose page cache holds it), for the event loop. Anything
    /// else — no answer without waiting, a POSKeyError to confirm, a
    /// failure — goes the normal way on a worker.
    fn load_before_nowait(&self, oid: Oid, before: Tid) -> Option<Result<Option<Loaded>>> {
        let core = &self.core;
        if !core.readable() {
            return None;
        }
        if let Some(hit) = core.cache.load_before(oid, before) {
            core.reads.fetch_add(1, Ordering::Relaxed);
            return Some(Ok(Some(hit)));
        }
        // A peek: if this backend cannot answer at once, the worker's
        // read picks the same one.
        let b = &core.backends[core.pick_optimal_reader(false)?];
        if !b.local {
            return None;
        }
        let ticket = core.cache.ticket(oid);
        match b.storage().ok()?.load_before_nowait(oid, before)? {
            Ok(loaded) => {
                core.reads.fetch_add(1, Ordering::Relaxed);
                b.reads.fetch_add(1, Ordering::Relaxed);
                if let Some(l) = &loaded {
                    core.cache.fill(oid, ticket, l);
                }
                Some(Ok(loaded))
            }
            Err(_) => None,
        }
    }

    fn set_conflict_resolver(&self, r: Arc<dyn ConflictResolver>) {
        for b in &self.core.backends {
            if let Ok(s) = b.storage() {
                s.set_conflict_resolver(r.clone());
            }
        }
    }

    fn raid_status(&self) -> Option<crate::status::ArrayStatus> {
        Some(self.core.status())
    }

    /// The staging directory of the first optimal backend that keeps
    /// blobs: that backend's copy is then a hard link.
    fn blob_staging_dir(&self) -> Option<std::path::PathBuf> {
        let core = &self.core;
        core.optimal()
            .into_iter()
            .filter_map(|i| core.backends[i].storage().ok())
            .find_map(|s| s.blob_staging_dir())
    }

    fn load_blob(&self, oid: Oid, serial: Tid) -> Result<std::path::PathBuf> {
        self.core.read_op("loadBlob", |s| s.load_blob(oid, serial))
    }

    fn prepare_blob(&self, upload: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
        let core = &self.core;
        let targets: Vec<Arc<dyn Storage>> = core
            .optimal()
            .into_iter()
            .filter_map(|i| core.backends[i].storage().ok())
            .collect();
        super::blobs::prepare(upload, &targets)
    }

    fn close(&self) {
        self.stop_supervisor();
        let mirrors: Vec<_> = self.core.offsite.list();
        for m in mirrors {
            m.stop();
        }
        for b in self.core.backends.iter().filter(|b| !b.is_removed()) {
            if let Ok(s) = b.storage() {
                s.close();
            }
        }
        self.core.step(super::state::roles::Event::Persist);
    }
}

impl RaidStorage {
    /// Vote `txn` on every optimal backend; each of them holds the
    /// transaction prepared or has it ended when this returns
    /// ([`Core::vote_ended`]).
    fn vote_locked(&self, txn: &Txn) -> Result<Vote> {
        let core = &self.core;
        core.check_writable(core.optimal().len())?;
        let mut kept = Vec::new();
        let mut answered_at = Vec::new();
        let mut participants = Vec::new();
        let r = self.vote_on(txn, &mut participants, &mut kept, &mut answered_at);
        core.vote_ended(&participants, &kept, &answered_at);
        r
    }

    /// [`RaidStorage::vote_locked`]'s work: fills in the participants,
    /// those that keep it prepared and those that answered.
    fn vote_on(
        &self,
        txn: &Txn,
        optimal: &mut Vec<usize>,
        kept: &mut Vec<usize>,
        answered_at: &mut Vec<usize>,
    ) -> Result<Vote> {
        let core = &self.core;
        let last = *lock(&core.commit.last_logged);
        let tid = match txn.tid {
            Some(t) if t <= last => {
                return Err(Error::Transaction(format!(
                    "the transaction's tid {t} is not later than the array's last, {last}"
                )))
            }
            Some(t) => t,
            None => state::next_tid(timestamp::now(), last, &[]),
        };
        *optimal = core.begin_txn(tid);
        // Read once: a fence seen lost between a check and a second read
        // would let this vote through unguarded.
        let fence_now = *lock(&core.commit.fence);
        if let Err(e) = core.check_writable_at(fence_now, optimal.len()) {
            // None of them was called: none holds anything.
            answered_at.clone_from(optimal);
            return Err(e);
        }
        let optimal = &*optimal;
        let mut whole = txn.clone();
        whole.tid = Some(tid);
        let held = match fence_now {
            FenceState::Held(f) => Some(f),
            _ => None,
        };
        if let Some(f) = &held {
            fence::guard(&mut whole.ops, f);
        }
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
            let mut next = lock(&core.commit.next_oid);
            *next = (*next).max(top);
        }
        // Each backend commits its own copy of a blob (a backend moves the
        // file into its blob directory): made on the backend's thread, so
        // the copies are written in parallel; left-overs go when the vote
        // returns.
        let has_blobs = whole
            .ops
            .iter()
            .any(|op| matches!(op, Op::StoreBlob { .. } | Op::RestoreBlob { .. }));
        let answered = core.write_op("vote", state::Call::Write, optimal, false, |s| {
            if !has_blobs {
                return s.tpc_vote(&whole);
            }
            let (own, _copies) = super::blobs::for_backend(&whole, s)?;
            s.tpc_vote(&own)
        });
        // Every backend called and not kept prepared is aborted, whatever it
        // answered (`tpc_abort` is a no-op where nothing is prepared), and
        // so is an in-process one that answered too late (its call has
        // ended; it may have prepared). A ZEO backend that missed the
        // deadline is not called again (it is degraded, and would only make
        // this commit wait once more); its server drops the transaction
        // when the connection goes or by its own transaction-timeout.
        *answered_at = answered.iter().map(|(i, _)| *i).collect();
        let answered_at = &*answered_at;
        let abort_all_but = |keep: &[usize]| {
            let others: Vec<usize> = optimal
                .iter()
                .copied()
                .filter(|i| !keep.contains(i))
                .filter(|i| answered_at.contains(i) || core.backends[*i].local)
                .collect();
            core.abort_on(&others);
        };
        // Another controller's fence on any backend: this one no longer
        // leads. Nothing is degraded for it (the backends are fine) and
        // nothing more is written.
        if let Some(f) = held {
            let now = *lock(&core.commit.fence);
            let met = match fence::vote_fence(&f, &now, &answered) {
                fence::VoteFence::Clear => None,
                fence::VoteFence::FencedAt(p) => Some(format!(
                    "backend {:?} carries another controller's fence (the root was written by \
                     someone else since this controller fenced at epoch {})",
                    core.backends[answered[p].0].name, f.epoch
                )),
                fence::VoteFence::SeenMeanwhile => Some(format!(
                    "another controller's fence reached a backend's connection while the vote \
                     was out (this controller fenced at epoch {})",
                    f.epoch
                )),
            };
            if let Some(met) = met {
                abort_all_but(&[]);
                {
                    // (Unless it moved on meanwhile: stood by, say.)
                    let mut state = lock(&core.commit.fence);
                    if *state == FenceState::Held(f) {
                        *state = FenceState::Lost { epoch: f.epoch };
                    }
                }
                log::error!(
                    "RAID array {:?}: {met}: this controller no longer leads and refuses \
                     writes; transaction {tid} was aborted everywhere",
                    core.opts.name,
                );
                return Err(fence::lost_error(&core.opts.name, f.epoch));
            }
        }
        let mut keys = replies(&answered, vote_key);
        if state::unify_resolution(&mut keys) {
            log::debug!(
                "RAID array {:?}: vote of {tid}: some backends resolved conflicts others report; \
                 the client resolves them",
                core.opts.name
            );
        }
        let decision = state::decide(&keys);
        for &(pos, ref why) in &decision.degrade {
            core.degrade(
                answered[pos].0,
                Reason::Vote {
                    tid,
                    why: why.clone(),
                },
            );
        }
        // Answers of the winners, in configuration order.
        let winners: Vec<&(usize, Result<Vote>)> =
            decision.agree.iter().map(|&p| &answered[p]).collect();
        match decision.winner {
            None => {
                abort_all_but(&[]);
                Err(Error::Disconnected(format!(
                    "RAID array {:?}: no backend could vote transaction {tid}; see the log",
                    core.opts.name
                )))
            }
            Some(VoteKey::Prepared { .. }) => {
                let prepared: Vec<usize> = winners.iter().map(|(i, _)| *i).collect();
                if let Err(e) = core.check_writable(prepared.len()) {
                    abort_all_but(&[]);
                    return Err(e);
                }
                abort_all_but(&prepared);
                let Some((
                    _,
                    Ok(Vote::Prepared {
                        resolved,
                        invalidated,
                        ..
                    }),
                )) = winners.first()
                else {
                    abort_all_but(&[]);
                    return Err(Error::Value("RAID: inconsistent vote outcome".into()));
                };
                let vote = Vote::Prepared {
                    tid,
                    resolved: resolved.clone(),
                    invalidated: invalidated.clone(),
                };
                // Only a fenced array follows the root's serial.
                let fence_move = held.map(|_| fence::moves(&whole.ops));
                let cached = if core.cache.enabled() {
                    super::cache::changes(&whole.ops, resolved, invalidated)
                } else {
                    Vec::new()
                };
                *lock(&core.commit.pending) = Pending {
                    tid: Some(tid),
                    txn: (!core.offsite.is_empty()).then_some(whole),
                    fence_move,
                    cached,
                };
                *kept = prepared;
                Ok(vote)
            }
            Some(VoteKey::Conflicts(_)) => {
                // Backends that resolved the conflicts themselves prepared:
                // they are aborted too, the client resolves for all.
                abort_all_but(&[]);
                let reported = winners.iter().find_map(|(_, r)| match r {
                    Ok(Vote::Conflicts(c)) => Some(c.clone()),
                    _ => None,
                });
                reported
                    .map(Vote::Conflicts)
                    .ok_or_else(|| Error::Value("RAID: inconsistent vote outcome".into()))
            }
            Some(VoteKey::Refused(_)) | Some(VoteKey::ConflictError(_)) => {
                abort_all_but(&[]);
                match winners.first() {
                    Some((_, Err(e))) => Err(e.clone()),
                    _ => Err(Error::Value("RAID: inconsistent vote outcome".into())),
                }
            }
        }
    }

    /// Finish the pending transaction on every backend that prepared it
    /// and is still optimal (`tpc_finish`, or `finish_log` for group
    /// commit: `logs`); one that left the optimal set since its vote is
    /// aborted instead, so it holds nothing a recovery would trip over.
    fn finish_with(
        &self,
        what: &str,
        logs: bool,
        f: impl Fn(&dyn Storage) -> Result<Tid> + Sync,
    ) -> Result<Tid> {
        let core = &self.core;
        let pending = std::mem::take(&mut *lock(&core.commit.pending));
        let Some(tid) = pending.tid else {
            return Err(Error::Transaction(format!(
                "{what} without a voted transaction"
            )));
        };
        let plan = core.finish_plan();
        if !plan.abort.is_empty() {
            for &i in &plan.abort {
                log::info!(
                    "RAID array {:?}: backend {:?} left the array between its vote and its finish \
                     of {tid}: aborted there (a recovery copies it)",
                    core.opts.name,
                    core.backends[i].name
                );
            }
            core.abort_held(&plan.abort);
        }
        let answered = core.write_op(what, state::Call::Finish, &plan.finish, false, f);
        let ok = if logs {
            FinishEnd::Logged
        } else {
            FinishEnd::Committed
        };
        // Those that did not answer by the deadline (degraded by
        // write_op) may or may not hold it.
        for &i in &plan.finish {
            if !answered.iter().any(|(j, _)| *j == i) {
                core.finish_ended(i, tid, FinishEnd::Unknown);
            }
        }
        let mut finished = 0;
        for (i, r) in answered {
            let judged = state::judge_finish(what, tid, r.as_ref().map(|t| *t), ok);
            core.finish_ended(i, judged.at, judged.end);
            match judged.degrade {
                None => {
                    finished += 1;
                    let b = &core.backends[i];
                    b.last_tid.store(tid.0, Ordering::Relaxed);
                    b.writes.fetch_add(1, Ordering::Relaxed);
                }
                Some(why) => core.degrade(i, why),
            }
        }
        // Timed-out backends were degraded by write_op.
        if finished == 0 {
            // Nowhere for certain (every backend that may hold it is now
            // degraded): not visible, not acknowledged.
            return Err(Error::Io(format!(
                "RAID array {:?}: transaction {tid} could not be finished on any backend; \
                 whether a degraded backend holds it is unknown, see the log",
                core.opts.name
            )));
        }
        // Committed (durable and visible on `finished` backends): the
        // client is told so even if fewer than min-optimal remain; the
        // array applies fail-mode to what comes next.
        {
            // The off-site mirrors' entry, made before the lock (one for
            // all of them: its records are shared).
            let entry_of = |txn| super::offsite::entry_of(tid, txn);
            let mut entry = match &pending.txn {
                Some(txn) if !core.offsite.is_empty() => Some(entry_of(txn)),
                _ => None,
            };
            let mut last = lock(&core.commit.last_logged);
            *last = (*last).max(tid);
            // In tid order (under last_logged), for the off-site mirrors
            // (one added meanwhile gets it too).
            if let Some(txn) = &pending.txn {
                core.offsite
                    .each(|m| m.enqueue(tid, entry.get_or_insert_with(|| entry_of(txn))));
            }
        }
        if !core.group {
            core.published.fetch_max(tid.0, Ordering::AcqRel);
            core.offsite.each(|m| m.published());
        }
        if let Some(how) = pending.fence_move {
            self.fence_committed(how, tid);
        }
        core.cache.logged(tid, pending.cached);
        if finished < core.opts.min_optimal.max(1) {
            log::error!(
                "RAID array {:?}: transaction {tid} committed on only {finished} backend(s), fewer \
                 than min-optimal = {}",
                core.opts.name,
                core.opts.min_optimal
            );
        }
        Ok(tid)
    }
}

/// Fencing (issue #26): what the HA layer calls, and the commit path's
/// bookkeeping of the fencing object's serial ([`fence`]'s module doc).
impl RaidStorage {
    /// Where this array stands with fencing.
    pub fn fence_state(&self) -> FenceState {
        *lock(&self.core.commit.fence)
    }

    /// Stand by: refuse writes, cut off a transaction still in flight on
    /// the backends (`Core::cut_off_writes`), and take the backends'
    /// invalidations for the leader's commits (see
    /// [`FenceState::Standby`]).
    /// Standing by already, there is nothing of its own to cut off.
    pub fn stand_by(&self) {
        let was = std::mem::replace(&mut *lock(&self.core.commit.fence), FenceState::Standby);
        if was != FenceState::Standby {
            self.left_the_lead();
        }
    }

    /// What stopping to write involves besides refusing writes.
    fn left_the_lead(&self) {
        self.core.cut_off_writes();
        self.core
            .cache
            .forget_all("another controller leads: its commits do not pass through this one");
    }

    /// Stand by after the commit in flight, for a planned handover: wait
    /// up to `within` for the array's commit lock to be free and refuse
    /// writes while holding it, so that no transaction is cut off and no
    /// vote starts after (its client is sent away and retries on the new
    /// leader). Whether the commit lock was free in time (if not, the
    /// transaction in flight is cut off, as [`RaidStorage::stand_by`] does).
    pub fn stand_by_after_commit(&self, within: Duration) -> bool {
        let core = &self.core;
        let free = {
            let gate = core.commit.wait_gate(within, core.wake.closing_flag());
            *lock(&core.commit.fence) = FenceState::Standby;
            gate.is_some()
        };
        self.left_the_lead();
        free
    }

    /// Fence every optimal backend at `epoch` for `controller`: rewrite the
    /// root with its own data (create it, in a database that has none),
    /// then guard every vote with its new serial. A failure leaves the
    /// array standing by.
    pub fn take_fence(&self, epoch: u64, controller: &str) -> Result<Fence> {
        *lock(&self.core.commit.fence) = FenceState::Taking { epoch };
        // Another controller committed since this one's cache was filled.
        self.core
            .cache
            .forget_all("this controller takes over from another one");
        match self.fence_backends(epoch, controller) {
            Ok(f) => {
                *lock(&self.core.commit.fence) = FenceState::Held(f);
                log::info!(
                    "RAID array {:?}: fenced the backends at epoch {epoch} for {controller:?} \
                     (root rewritten at {}); every vote now checks it",
                    self.core.opts.name,
                    f.serial
                );
                Ok(f)
            }
            Err(e) => {
                self.stand_by();
                Err(e)
            }
        }
    }

    /// [`RaidStorage::take_fence`]'s work: reconcile, then commit the fence
    /// transaction, judging the backends while it holds their commit locks
    /// ([`fence::under_fence`]). A root changed meanwhile (a stale
    /// controller still committing) makes the rewrite conflict; it is
    /// retried on the new root, a few times.
    fn fence_backends(&self, epoch: u64, controller: &str) -> Result<Fence> {
        self.core.reconcile()?;
        let mut last = None;
        for _ in 0..5 {
            let root = fence::root_to_fence(crate::storage::load(self, fence::FENCE_OID))?;
            let tid = match self.tpc_vote(&fence::fence_txn(epoch, controller, &root)) {
                Ok(Vote::Prepared { tid, .. }) => tid,
                Ok(Vote::Conflicts(c)) => {
                    self.tpc_abort();
                    last = Some(crate::storage::conflicts_error(&c));
                    continue;
                }
                Err(e) => {
                    self.tpc_abort();
                    match e {
                        Error::Conflict { .. } => {
                            last = Some(e);
                            continue;
                        }
                        e => return Err(e),
                    }
                }
            };
            let lasts = self.core.last_tids("under the takeover's fence");
            match fence::under_fence(&lasts, tid) {
                fence::UnderFence::Retry { newest } => {
                    self.tpc_abort();
                    log::info!(
                        "RAID array {:?}: a backend already holds {newest}, past the fence's tid \
                         {tid} (the previous controller's clock runs ahead): fencing again after it",
                        self.core.opts.name
                    );
                    self.core.adopt_last(&lasts);
                    last = Some(Error::Transaction(format!(
                        "a backend's last transaction {newest} stayed past the fence's tid"
                    )));
                    continue;
                }
                fence::UnderFence::Finish { behind } => {
                    for (i, why) in behind {
                        log::warn!(
                            "RAID array {:?}: backend {:?} lacks the previous controller's last \
                             transaction(s) (it finished them on other backends only, while \
                             this controller took over): degraded, recovered once the fence \
                             holds",
                            self.core.opts.name,
                            self.core.backends[i].name
                        );
                        self.core.degrade(i, why);
                    }
                }
            }
            let serial = self.tpc_finish().inspect_err(|_| self.tpc_abort())?;
            // The previous controller's last transactions may have used
            // oids past what the backends offered before the fence.
            self.core.adopt_next_oid("after the takeover's fence");
            return Ok(Fence { epoch, serial });
        }
        Err(last.unwrap_or_else(|| Error::Transaction("fencing failed".into())))
    }

    /// After a guarded commit at `tid` (under the array's commit lock):
    /// keep the fence's serial current.
    fn fence_committed(&self, how: fence::Move, tid: Tid) {
        // Read without the fence's lock held: loading the root may
        // degrade a backend, which looks at the fence.
        let FenceState::Held(f) = self.fence_state() else {
            return;
        };
        let next = match fence::after_commit(f, how, tid) {
            Some(f) => FenceState::Held(f),
            // An undo may have restored the root: read its serial back.
            None => match crate::storage::load(self, fence::FENCE_OID) {
                Ok(root) => FenceState::Held(Fence {
                    serial: root.start,
                    ..f
                }),
                Err(e) => {
                    log::error!(
                        "RAID array {:?}: cannot read the root back after undo {tid} ({e}); \
                         refusing writes until this controller fences again",
                        self.core.opts.name
                    );
                    FenceState::Lost { epoch: f.epoch }
                }
            },
        };
        let mut state = lock(&self.core.commit.fence);
        // Unless another controller's fence was seen meanwhile.
        if *state == FenceState::Held(f) {
            *state = next;
        }
    }
}
