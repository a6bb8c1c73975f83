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
            Some(h) if h == session => Acquire::Granted,
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
            return self.holder;
        }
        None
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
        ];
        for (name, steps) in cases {
            let mut lock = CommitLock::new();
            let now = Instant::now();
            for step in steps {
                match step {
                    Ask(s, want) => assert_eq!(lock.acquire(s, now), want, "{name}: acquire {s}"),
                    Give(s, want) => assert_eq!(lock.release(s, now), want, "{name}: release {s}"),
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
