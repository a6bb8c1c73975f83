//! The commit in flight, as the IO shell holds it: the array's commit
//! lock ([`state::gate`]), the oid counter, the transaction between vote
//! and finish, which
//! backends hold what of it ([`state::inflight`]), the last tid logged,
//! and the recovery rate guarantee ([`state::credit`]) — each a pure state
//! from `raid::state` behind its own lock, with the condition variable
//! its waiters sleep on. The decisions are the states'; this module only
//! waits and wakes.

use super::state::{self, Admission, Credit};
use crate::locks::lock;
use crate::storage::{Tid, Txn};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The transaction between vote and finish (which backends hold it, and
/// how far, is [`state::inflight`]'s).
#[derive(Default)]
pub(super) struct Pending {
    pub(super) tid: Option<Tid>,
    /// The transaction, kept for the off-site mirrors' queues.
    pub(super) txn: Option<Txn>,
    /// What it does to the fencing object's serial.
    pub(super) fence_move: Option<super::fence::Move>,
    /// What it does to the object cache once published.
    pub(super) cached: Vec<super::cache::Change>,
}

/// See the module doc.
#[derive(Default)]
pub(super) struct CommitPath {
    pub(super) pending: Mutex<Pending>,
    /// Which backends hold the array's transactions, phase by phase: a
    /// backend that leaves the optimal set mid-commit has its transaction
    /// ended before a recovery or a removal touches it.
    pub(super) inflight: Mutex<state::inflight::Inflight>,
    /// Signalled whenever a backend's share of a transaction ends.
    pub(super) inflight_cv: Condvar,
    /// Last tid logged (voted and finished, perhaps not yet durable).
    pub(super) last_logged: Mutex<Tid>,
    /// The array's own commit lock, from vote to finish or abort: a
    /// recovery takes it to copy the last transactions and rejoin.
    pub(super) gate: Mutex<state::gate::Gate>,
    /// Signalled when the commit lock is let go, and when transactions
    /// are published (a finishing recovery waits for that).
    pub(super) gate_cv: Condvar,
    /// The last oid handed out (new oids come from the array's own
    /// counter, see `raid`'s module doc).
    pub(super) next_oid: Mutex<u64>,
    /// The recovery rate guarantee while a backend recovers.
    pub(super) credit: Mutex<Option<Credit>>,
    pub(super) credit_cv: Condvar,
    /// The fence this controller's votes carry ([`super::fence`]).
    pub(super) fence: Mutex<super::fence::FenceState>,
}

/// Seconds on a monotonic clock (since the first call): the credit
/// controller only compares times.
pub(super) fn clock() -> f64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_secs_f64()
}

impl CommitPath {
    /// The commit lock once no transaction holds it and no recovery
    /// finishes, waiting at most `within` (or until `closing`); `None`
    /// when that did not happen.
    pub(super) fn wait_gate(
        &self,
        within: Duration,
        closing: &AtomicBool,
    ) -> Option<MutexGuard<'_, state::gate::Gate>> {
        let deadline = Instant::now() + within;
        let mut g = lock(&self.gate);
        while !g.is_free() {
            let now = Instant::now();
            if now >= deadline || closing.load(Ordering::Acquire) {
                return None;
            }
            g = self
                .gate_cv
                .wait_timeout(g, (deadline - now).min(Duration::from_millis(100)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Some(g)
    }

    /// Enter the commit lock (vote): waits while a recovery finishes.
    pub(super) fn enter(&self) {
        let mut g = lock(&self.gate);
        while !g.may_vote() {
            g = self.gate_cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        g.vote_entered();
    }

    /// Leave it (finish, abort, a vote that prepared nothing). Idempotent.
    pub(super) fn leave(&self) {
        let mut g = lock(&self.gate);
        if g.txn_left() {
            self.gate_cv.notify_all();
        }
    }

    /// A finishing recovery lets the commit lock go.
    pub(super) fn recovery_done(&self) {
        let mut g = lock(&self.gate);
        g.set_recovery(false);
        self.gate_cv.notify_all();
    }

    /// Wait for recovery credit before a commit (no-op when no backend
    /// recovers). Never refuses: see [`state::credit`].
    pub(super) fn admit(&self) {
        let mut credit = lock(&self.credit);
        let mut waited = false;
        loop {
            let Some(c) = credit.as_mut() else { return };
            match c.admit(clock(), waited) {
                Admission::Now => return,
                Admission::Wait(secs) => {
                    waited = true;
                    let d = Duration::from_secs_f64(secs);
                    credit = self
                        .credit_cv
                        .wait_timeout(credit, d)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }

    /// A recovery starts (`Some`: its guarantee) or ends (`None`): commits
    /// waiting for credit are woken either way.
    pub(super) fn set_credit(&self, credit: Option<Credit>) {
        *lock(&self.credit) = credit;
        self.credit_cv.notify_all();
    }
}
