//! The per-storage commit lock as a pure state machine.
//!
//! ZEO 5 takes a storage's commit lock at `vote` and releases it at
//! `tpc_finish`/`tpc_abort`. A vote that finds the lock held is *parked*: the
//! worker returns to the pool and the session waits in a FIFO queue. When the
//! holder releases, [`CommitLock::release`] names the next session, which the
//! caller resumes on a worker. No thread ever blocks on this lock, so a fixed
//! pool cannot deadlock on it. The lock remembers since when its holder has
//! had it (time is passed in), so a watchdog can end transactions that hold
//! it longer than `transaction-timeout`.
//!
//! **Held through the client's conflict resolution.** A vote that answers
//! conflicts (ZEO 5 client-side resolution) does not give the lock up: the
//! holder keeps it while its client resolves and re-stores, until its next
//! vote, its abort, its disconnect, or a deadline
//! ([`CommitLock::conflicts_answered`], [`CommitLock::resolution_overdue`]).
//! Nothing else can commit meanwhile, so the re-vote cannot meet a newer
//! change of the same objects and a client that can resolve commits on its
//! second vote. Without this, concurrent writers to one hot object (a
//! `BTrees.Length`) keep conflicting until the client gives up. The lock is
//! held over one client round trip, and only when conflicts occur.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What `acquire` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquire {
    Granted,
    Queued { position: usize },
}

#[derive(Debug, Default)]
pub struct CommitLock {
    holder: Option<u64>,
    /// When the current holder got the lock.
    since: Option<Instant>,
    /// When the holder's last vote answered conflicts: it keeps the lock
    /// while its client resolves them (cleared by its next vote).
    resolving: Option<Instant>,
    waiting: VecDeque<u64>,
}

impl CommitLock {
    pub fn new() -> CommitLock {
        CommitLock::default()
    }

    /// Ask for the lock on behalf of `session` at time `now`.
    pub fn acquire(&mut self, session: u64, now: Instant) -> Acquire {
        match self.holder {
            None => {
                self.holder = Some(session);
                self.since = Some(now);
                Acquire::Granted
            }
            Some(h) if h == session => {
                // The re-vote after conflicts: the lock was kept for it.
                self.resolving = None;
                Acquire::Granted
            }
            Some(_) => {
                if let Some(p) = self.waiting.iter().position(|&s| s == session) {
                    return Acquire::Queued { position: p };
                }
                self.waiting.push_back(session);
                Acquire::Queued {
                    position: self.waiting.len() - 1,
                }
            }
        }
    }

    /// `session` gives up the lock or its place in the queue (finish, abort,
    /// disconnect) at time `now`. Returns the session that now holds the lock
    /// and must be resumed, if the lock changed hands.
    pub fn release(&mut self, session: u64, now: Instant) -> Option<u64> {
        self.waiting.retain(|&s| s != session);
        if self.holder == Some(session) {
            self.holder = self.waiting.pop_front();
            self.since = self.holder.map(|_| now);
            self.resolving = None;
            return self.holder;
        }
        None
    }

    /// The holder's vote answered conflicts at `now`: it keeps the lock
    /// for its re-vote. False (and nothing changes) when `session` does
    /// not hold the lock.
    pub fn conflicts_answered(&mut self, session: u64, now: Instant) -> bool {
        if self.holder != Some(session) {
            return false;
        }
        self.resolving = Some(now);
        true
    }

    /// The holder, if its client has been resolving conflicts for longer
    /// than `limit` at `now` (the watchdog then passes the lock on).
    pub fn resolution_overdue(&self, now: Instant, limit: Duration) -> Option<u64> {
        match (self.holder, self.resolving) {
            (Some(h), Some(t)) if now.saturating_duration_since(t) > limit => Some(h),
            _ => None,
        }
    }

    /// True while the holder's client resolves conflicts.
    pub fn is_resolving(&self) -> bool {
        self.resolving.is_some()
    }

    /// The holder, if it has held the lock for longer than `timeout` at `now`.
    pub fn overdue(&self, now: Instant, timeout: Duration) -> Option<u64> {
        match (self.holder, self.since) {
            (Some(h), Some(since)) if now.saturating_duration_since(since) > timeout => Some(h),
            _ => None,
        }
    }

    pub fn holder(&self) -> Option<u64> {
        self.holder
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    enum Step {
        Ask(u64, Acquire),
        Give(u64, Option<u64>),
        /// `conflicts_answered(session)` returns this.
        Conflicts(u64, bool),
        /// After this many seconds, `resolution_overdue(limit 1 s)` names this session.
        Overdue(u64, Option<u64>),
    }
    use Step::*;

    #[test]
    fn table() {
        let cases: Vec<(&str, Vec<Step>)> = vec![
            ("free lock is granted", vec![Ask(1, Acquire::Granted)]),
            (
                "re-acquire by the holder is granted",
                vec![Ask(1, Acquire::Granted), Ask(1, Acquire::Granted)],
            ),
            (
                "waiters are FIFO",
                vec![
                    Ask(1, Acquire::Granted),
                    Ask(2, Acquire::Queued { position: 0 }),
                    Ask(3, Acquire::Queued { position: 1 }),
                    Give(1, Some(2)),
                    Give(2, Some(3)),
                    Give(3, None),
                    Ask(4, Acquire::Granted),
                ],
            ),
            (
                "a waiter that disconnects leaves the queue",
                vec![
                    Ask(1, Acquire::Granted),
                    Ask(2, Acquire::Queued { position: 0 }),
                    Ask(3, Acquire::Queued { position: 1 }),
                    Give(2, None),
                    Give(1, Some(3)),
                ],
            ),
            (
                "release by a stranger changes nothing",
                vec![
                    Ask(1, Acquire::Granted),
                    Give(9, None),
                    Ask(2, Acquire::Queued { position: 0 }),
                ],
            ),
            (
                "a queued session asking again keeps its place",
                vec![
                    Ask(1, Acquire::Granted),
                    Ask(2, Acquire::Queued { position: 0 }),
                    Ask(2, Acquire::Queued { position: 0 }),
                ],
            ),
            (
                "conflicts answered: the holder keeps the lock for its re-vote",
                vec![
                    Ask(1, Acquire::Granted),
                    Ask(2, Acquire::Queued { position: 0 }),
                    Conflicts(1, true),
                    Ask(3, Acquire::Queued { position: 1 }),
                    Ask(1, Acquire::Granted),
                    Give(1, Some(2)),
                    Give(2, Some(3)),
                ],
            ),
            (
                "conflicts answered, then abort: the next waiter gets the lock",
                vec![
                    Ask(1, Acquire::Granted),
                    Ask(2, Acquire::Queued { position: 0 }),
                    Conflicts(1, true),
                    Give(1, Some(2)),
                    Overdue(5, None),
                ],
            ),
            (
                "conflicts answered, then disconnect with nobody waiting: the lock is free",
                vec![
                    Ask(1, Acquire::Granted),
                    Conflicts(1, true),
                    Give(1, None),
                    Ask(2, Acquire::Granted),
                    Overdue(5, None),
                ],
            ),
            (
                "a client that stalls after conflicts is overdue",
                vec![
                    Ask(1, Acquire::Granted),
                    Ask(2, Acquire::Queued { position: 0 }),
                    Conflicts(1, true),
                    Overdue(0, None),
                    Overdue(1, None),
                    Overdue(2, Some(1)),
                    Give(1, Some(2)),
                    Overdue(5, None),
                ],
            ),
            (
                "the re-vote ends the resolution: no longer overdue for it",
                vec![
                    Ask(1, Acquire::Granted),
                    Conflicts(1, true),
                    Ask(1, Acquire::Granted),
                    Overdue(5, None),
                ],
            ),
            (
                "conflicts answered by a session that does not hold the lock change nothing",
                vec![
                    Ask(1, Acquire::Granted),
                    Ask(2, Acquire::Queued { position: 0 }),
                    Conflicts(2, false),
                    Overdue(5, None),
                    Conflicts(9, false),
                    Give(1, Some(2)),
                ],
            ),
            (
                "conflicts answered again after a re-vote restart the clock",
                vec![
                    Ask(1, Acquire::Granted),
                    Conflicts(1, true),
                    Ask(1, Acquire::Granted),
                    Conflicts(1, true),
                    Overdue(0, None),
                    Overdue(2, Some(1)),
                ],
            ),
        ];
        for (name, steps) in cases {
            let mut lock = CommitLock::new();
            let now = Instant::now();
            for step in steps {
                match step {
                    Ask(s, want) => assert_eq!(lock.acquire(s, now), want, "{name}: acquire {s}"),
                    Give(s, want) => assert_eq!(lock.release(s, now), want, "{name}: release {s}"),
                    Conflicts(s, want) => assert_eq!(
                        lock.conflicts_answered(s, now),
                        want,
                        "{name}: conflicts answered by {s}"
                    ),
                    Overdue(secs, want) => assert_eq!(
                        lock.resolution_overdue(
                            now + Duration::from_secs(secs),
                            Duration::from_secs(1)
                        ),
                        want,
                        "{name}: overdue after {secs} s"
                    ),
                }
            }
        }
    }

    #[test]
    fn overdue_table() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let mut lock = CommitLock::new();
        assert_eq!(lock.overdue(t0 + secs(100), secs(1)), None, "free lock");
        lock.acquire(1, t0);
        lock.acquire(2, t0);
        let cases = [(t0, None), (t0 + secs(1), None), (t0 + secs(2), Some(1))];
        for (now, want) in cases {
            assert_eq!(lock.overdue(now, secs(1)), want);
        }
        // The next holder's clock starts when it gets the lock.
        assert_eq!(lock.release(1, t0 + secs(5)), Some(2));
        assert_eq!(lock.overdue(t0 + secs(5), secs(1)), None);
        assert_eq!(lock.overdue(t0 + secs(7), secs(1)), Some(2));
        lock.release(2, t0 + secs(8));
        assert_eq!(lock.overdue(t0 + secs(100), secs(1)), None);
    }
}
