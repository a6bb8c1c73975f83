//! The IO side of [`state::inflight`]: the commit path records which
//! backends hold its transaction and how far each got, and a recovery or
//! a removal waits for (or itself brings about) the end of whatever a
//! backend still holds before it touches that backend.
//!
//! Why: a backend taken out between its vote and its finish (`ctl
//! disable`, `ctl remove`, a deadline, a disagreement) used to keep a
//! transaction nobody ended — an in-process file mirror with a logged but
//! never published transaction claims a tid it does not hold, and every
//! recovery tripped over it. Now the commit path ends it (abort before
//! the finish, durable and publish after a logged finish), and what it
//! cannot know (a call that got no answer) the recovery resolves by
//! reconnecting or reopening the backend before it reads its position.

use super::state::inflight::{FinishEnd, FinishPlan, Readiness, VoteEnd};
use super::Core;
use crate::locks::lock;
use crate::storage::Tid;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a recovery or removal waits for the commit path to end a
/// transaction a backend holds (a commit takes milliseconds; the group
/// committer's fsync follows at once).
const END_WAIT: Duration = Duration::from_secs(if cfg!(test) { 2 } else { 10 });

/// After a ZEO backend's connection was made again, its last transaction
/// must hold still this long before it is believed (what the old
/// connection sent may still be committed by its server meanwhile).
const QUIET: Duration = Duration::from_millis(if cfg!(test) { 300 } else { 1000 });

impl Core {
    /// The vote of `tid` starts: its participants are the optimal
    /// backends now, chosen under the same lock a recovery takes to start.
    pub(super) fn begin_txn(&self, tid: Tid) -> Vec<usize> {
        let mut inf = lock(&self.commit.inflight);
        let optimal = self.optimal();
        inf.begin(tid, &optimal);
        optimal
    }

    /// The vote ended: `kept` hold it prepared, `answered` (the rest of
    /// those that answered) were aborted, the others got no answer.
    pub(super) fn vote_ended(&self, participants: &[usize], kept: &[usize], answered: &[usize]) {
        let mut inf = lock(&self.commit.inflight);
        for &i in participants {
            inf.voted(
                i,
                if kept.contains(&i) {
                    VoteEnd::Kept
                } else if answered.contains(&i) || self.backends[i].local {
                    // An in-process backend's vote has returned (it runs on
                    // the caller) and was aborted.
                    VoteEnd::Ended
                } else {
                    VoteEnd::Unknown
                },
            );
        }
        self.commit.inflight_cv.notify_all();
    }

    /// Who gets the finish, and who left the optimal set since its vote.
    pub(super) fn finish_plan(&self) -> FinishPlan {
        lock(&self.commit.inflight).finish_plan(|i| self.backends[i].is_optimal())
    }

    /// Abort the open transaction on `positions` and note it ended there.
    pub(super) fn abort_held(&self, positions: &[usize]) {
        self.abort_on(positions);
        let mut inf = lock(&self.commit.inflight);
        for &i in positions {
            inf.aborted(i);
        }
        self.commit.inflight_cv.notify_all();
    }

    /// Backend `i`'s finish ended (committed as `tid`).
    pub(super) fn finish_ended(&self, i: usize, tid: Tid, end: FinishEnd) {
        lock(&self.commit.inflight).finished(i, tid, end);
        self.commit.inflight_cv.notify_all();
    }

    /// Backends with logged transactions up to `tid` not yet published.
    pub(super) fn logged_through(&self, tid: Tid) -> Vec<usize> {
        lock(&self.commit.inflight).logged_through(tid)
    }

    /// Backend `i` published everything up to `tid`.
    pub(super) fn published_on(&self, i: usize, tid: Tid) {
        lock(&self.commit.inflight).published(i, tid);
        self.commit.inflight_cv.notify_all();
    }

    /// Wait (at most [`END_WAIT`]) until the commit path holds nothing
    /// open or logged on backend `i`; what is left then.
    pub(super) fn wait_ended(&self, i: usize) -> Readiness {
        let deadline = Instant::now() + END_WAIT;
        let mut inf = lock(&self.commit.inflight);
        loop {
            let r = inf.readiness(i);
            let now = Instant::now();
            if !matches!(r, Readiness::Busy(_) | Readiness::Logged(_)) || now >= deadline {
                return r;
            }
            inf = self
                .commit
                .inflight_cv
                .wait_timeout(inf, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Start a recovery of backend `i` (degraded because `was`): once it
    /// Start a recovery of backend `i` (degraded): once it
    /// or resolved here — mark it recovering, atomically with respect to
    /// votes choosing their backends. Refused (it stays degraded) when a
    /// transaction is still open on it after [`END_WAIT`].
    pub(super) fn take_for_recovery(self: &Arc<Self>, i: usize) -> Result<(), String> {
        loop {
            match self.wait_ended(i) {
                Readiness::Idle => {
                    let inf = lock(&self.commit.inflight);
                    if inf.readiness(i) != Readiness::Idle {
                        continue;
                    }
                    self.step(super::state::roles::Event::RecoveryStarted { at: i });
                    drop(inf);
                    return Ok(());
                }
                Readiness::Busy(tid) => {
                    return Err(format!(
                        "it still holds the array's transaction {tid} after {} s (the commit \
                         path has not ended it); the next attempt tries again",
                        END_WAIT.as_secs()
                    ))
                }
                Readiness::Logged(tid) => {
                    // Logged, never made durable and published (the
                    // array's make_durable failed): the log is final.
                    let b = &self.backends[i];
                    log::warn!(
                        "RAID array {:?}: backend {:?} holds transaction {tid} logged but not \
                         durable; completing it before the recovery",
                        self.opts.name,
                        b.name
                    );
                    let s = b.storage().map_err(|e| e.to_string())?;
                    s.make_durable(tid)
                        .map_err(|e| format!("making its logged transaction {tid} durable: {e}"))?;
                    s.publish(tid);
                    lock(&self.commit.inflight).settled(i);
                }
                Readiness::Unknown(tid) => {
                    self.resolve_unknown(i, tid)?;
                    lock(&self.commit.inflight).settled(i);
                }
            }
        }
    }

    /// Backend `i` may or may not hold `tid` (a call on it got no answer,
    /// or failed): make its position honest before it is read. A ZEO
    /// backend gets a new connection (its server aborts what was not
    /// finished on the old one) and its last transaction must then hold
    /// still; an in-process one is reopened (an unfinished transaction is
    /// cut off, a logged one kept).
    fn resolve_unknown(self: &Arc<Self>, i: usize, tid: Tid) -> Result<(), String> {
        let b = &self.backends[i];
        log::info!(
            "RAID array {:?}: whether backend {:?} holds transaction {tid} is unknown (a call on \
             it got no answer); {} before the recovery reads where it stands",
            self.opts.name,
            b.name,
            if b.local {
                "reopening it"
            } else {
                "connecting to it again"
            }
        );
        b.reset(Arc::downgrade(self), i, self.opts.backend_timeout)?;
        if b.local {
            return Ok(());
        }
        let s = b.storage().map_err(|e| e.to_string())?;
        let deadline = Instant::now() + self.opts.backend_timeout.max(QUIET * 3);
        let mut last = s.last_transaction().map_err(|e| e.to_string())?;
        let mut since = Instant::now();
        while since.elapsed() < QUIET {
            if Instant::now() >= deadline {
                return Err(format!(
                    "its last transaction kept changing for {:.0} s after it was connected \
                     again: someone else writes to it",
                    self.opts.backend_timeout.max(QUIET * 3).as_secs_f64()
                ));
            }
            std::thread::sleep(QUIET / 6);
            let now = s.last_transaction().map_err(|e| e.to_string())?;
            if now != last {
                last = now;
                since = Instant::now();
            }
        }
        Ok(())
    }
}
