//! The off-site mirror's decisions (pure): the bounded queue of committed
//! transactions it ships from ([`ShipQueue`]), where the next transaction
//! comes from ([`ShipQueue::plan`]: the queue, or a catch-up read from a
//! synchronous backend), how far behind it is ([`Lag`]) and what that means
//! for the status ([`health`]).
//!
//! The queue is fed at publish time and bounded by bytes and entries.
//! When it overflows it forgets its oldest entries and remembers the
//! newest forgotten tid (`covered_after`): every transaction after that is
//! in the queue, the ones up to it must be read from a synchronous
//! backend. A mirror that stands at or after `covered_after` ships from
//! the queue; one behind it catches up from the source first.

use crate::storage::Tid;
use std::collections::VecDeque;

/// What the shipper does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Ship the queue's transactions after the mirror's position.
    Queue,
    /// Nothing to ship: the mirror holds everything committed.
    Idle,
    /// Read the transactions after `after` up to and including `until`
    /// from a synchronous backend (the queue no longer holds them).
    CatchUp { after: Tid, until: Tid },
}

/// What follows a position in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Following<T> {
    /// The next entries, oldest first (at least one).
    Next(Vec<(Tid, T)>),
    /// Nothing (visible) yet.
    Nothing,
    /// The queue forgot what follows (overflow): read from the source.
    Overflowed,
}

/// What [`ShipQueue::next_after`] may hand out at once: entries up to the
/// `visible` tid (published on the synchronous backends), at most
/// `entries` of them and `bytes` of data (but always one, however big).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    pub visible: Tid,
    pub entries: usize,
    pub bytes: u64,
}

/// Committed transactions waiting to be shipped, oldest first.
#[derive(Debug)]
pub struct ShipQueue<T> {
    entries: VecDeque<(Tid, u64, T)>,
    bytes: u64,
    max_bytes: u64,
    max_entries: usize,
    /// Every transaction after this tid is in `entries` or was shipped.
    covered_after: Tid,
    /// Times the queue forgot entries to stay within its bounds.
    pub overflows: u64,
}

impl<T: Clone> ShipQueue<T> {
    /// An empty queue that covers every transaction after `last_committed`.
    pub fn new(last_committed: Tid, max_bytes: u64, max_entries: usize) -> ShipQueue<T> {
        ShipQueue {
            entries: VecDeque::new(),
            bytes: 0,
            max_bytes,
            max_entries: max_entries.max(1),
            covered_after: last_committed,
            overflows: 0,
        }
    }

    /// Add a committed transaction (tids arrive in commit order; an older
    /// or repeated one is ignored). Forgets the oldest entries past the
    /// bounds.
    pub fn push(&mut self, tid: Tid, bytes: u64, item: T) {
        let newest = self.entries.back().map_or(self.covered_after, |e| e.0);
        if tid <= newest {
            return;
        }
        self.entries.push_back((tid, bytes, item));
        self.bytes += bytes;
        let mut forgot = false;
        while self.entries.len() > self.max_entries
            || (self.bytes > self.max_bytes && self.entries.len() > 1)
        {
            if let Some((t, b, _)) = self.entries.pop_front() {
                self.bytes -= b;
                self.covered_after = t;
                forgot = true;
            }
        }
        if forgot {
            self.overflows += 1;
        }
    }

    /// The inbox in front of the queue overflowed: transaction `tid` (and
    /// maybe some before it) never reached the queue. Forget everything up
    /// to it; those are read from the source.
    pub fn forget_through(&mut self, tid: Tid) {
        self.trim(tid);
        if tid > self.covered_after {
            self.covered_after = tid;
        }
        self.overflows += 1;
    }

    /// Forget the entries the mirror holds (up to `position`).
    pub fn trim(&mut self, position: Tid) {
        while self.entries.front().is_some_and(|e| e.0 <= position) {
            if let Some((_, b, _)) = self.entries.pop_front() {
                self.bytes -= b;
            }
        }
    }

    /// The entries after `after`, as many as `bound` allows.
    pub fn next_after(&self, after: Tid, bound: Batch) -> Following<T> {
        if after < self.covered_after {
            return Following::Overflowed;
        }
        // Entries are in tid order: a binary search, not a scan (the
        // shipper asks for every batch, under the lock the status takes).
        let i = self.entries.partition_point(|e| e.0 <= after);
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for e in self.entries.range(i..) {
            let full = out.len() >= bound.entries || (bytes + e.1 > bound.bytes && !out.is_empty());
            if e.0 > bound.visible || full {
                break;
            }
            bytes += e.1;
            out.push((e.0, e.2.clone()));
        }
        if out.is_empty() {
            Following::Nothing
        } else {
            Following::Next(out)
        }
    }

    /// Drop what the mirror already holds and say what comes next.
    pub fn plan(&mut self, position: Tid) -> Next {
        self.trim(position);
        if position < self.covered_after {
            Next::CatchUp {
                after: position,
                until: self.covered_after,
            }
        } else if self.entries.is_empty() {
            Next::Idle
        } else {
            Next::Queue
        }
    }

    /// The oldest entry after `position`, how many there are and their
    /// bytes (for the lag; no copy).
    pub fn after(&self, position: Tid) -> (Option<Tid>, u64, u64) {
        // Shipped entries are trimmed as they are acknowledged: the ones
        // at or before the position are few, at the front. Counting them
        // instead of the rest keeps a status call short (it holds the lock
        // commits take).
        let i = self.entries.partition_point(|e| e.0 <= position);
        let before: u64 = self.entries.range(..i).map(|e| e.1).sum();
        (
            self.entries.get(i).map(|e| e.0),
            (self.entries.len() - i) as u64,
            self.bytes - before,
        )
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn covered_after(&self) -> Tid {
        self.covered_after
    }
}

/// How far an off-site mirror trails the array.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lag {
    /// Transactions committed and not yet on the mirror (an estimate while
    /// it catches up from the source: `estimated`).
    pub transactions: u64,
    pub estimated: bool,
    /// Data bytes waiting in the queue.
    pub bytes: u64,
    /// How long ago the oldest transaction the mirror lacks was committed
    /// (0 when it lacks none).
    pub seconds: f64,
}

/// The lag of a mirror at `position` at `now` (Unix seconds) (pure).
/// `oldest_queued` is the queue's oldest entry after the position and
/// `queued` how many there are; `catching_up_left` is the estimate of what
/// a catch-up still has to read (None when streaming from the queue).
/// While catching up the oldest missing transaction is not known: the
/// position's commit time stands for it (an upper bound).
pub fn lag(
    newest: Tid,
    position: Tid,
    oldest_queued: Option<Tid>,
    queued: u64,
    queued_bytes: u64,
    catching_up_left: Option<u64>,
    now: f64,
) -> Lag {
    let seconds = if newest <= position {
        0.0
    } else {
        let oldest = match (catching_up_left, oldest_queued) {
            (None, Some(t)) => t,
            _ => position.max(Tid(1)),
        };
        let secs = now - crate::storage::timestamp::time_time(oldest);
        (secs.max(0.0) * 1000.0).round() / 1000.0
    };
    Lag {
        transactions: if newest <= position {
            0
        } else {
            queued + catching_up_left.unwrap_or(0)
        },
        estimated: catching_up_left.is_some(),
        bytes: if newest <= position { 0 } else { queued_bytes },
        seconds,
    }
}

/// The status an off-site mirror gives the array's health check (pure):
/// `Ok`, or a warning with the reason.
pub fn health(name: &str, lag_seconds: f64, max_lag: f64, down: Option<&str>) -> Option<String> {
    match down {
        Some(why) => Some(format!("off-site {name} is degraded: {why}")),
        None if lag_seconds > max_lag => Some(format!(
            "off-site {name} is {lag_seconds:.0} s behind (max-lag {max_lag:.0} s)"
        )),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: u64) -> Tid {
        Tid(n)
    }

    fn catch_up(after: u64, until: u64) -> Next {
        Next::CatchUp {
            after: t(after),
            until: t(until),
        }
    }

    #[test]
    fn queue_plans() {
        // Bounds: 100 bytes, 4 entries; covers everything after tid 10.
        let mut q: ShipQueue<()> = ShipQueue::new(t(10), 100, 4);
        assert_eq!(q.plan(t(10)), Next::Idle);
        assert_eq!(q.plan(t(5)), catch_up(5, 10));
        q.push(t(11), 10, ());
        q.push(t(12), 10, ());
        q.push(t(12), 10, ()); // repeated: ignored
        q.push(t(9), 10, ()); // older: ignored
        assert_eq!((q.len(), q.bytes()), (2, 20));
        assert_eq!(q.plan(t(10)), Next::Queue);
        assert_eq!(q.after(t(10)), (Some(t(11)), 2, 20));
        assert_eq!(q.after(t(12)), (None, 0, 0));
        let all = Batch {
            visible: t(99),
            entries: 100,
            bytes: 1000,
        };
        assert_eq!(
            q.next_after(t(10), all),
            Following::Next(vec![(t(11), ()), (t(12), ())])
        );
        assert_eq!(q.next_after(t(12), all), Following::Nothing);
        assert_eq!(q.next_after(t(9), all), Following::Overflowed);
        // Shipped 11: it leaves the queue.
        assert_eq!(q.plan(t(11)), Next::Queue);
        assert_eq!((q.len(), q.bytes()), (1, 10));
        // Entries bound: 13, 14, 15, 16 push 12 out.
        for n in 13..=16 {
            q.push(t(n), 10, ());
        }
        assert_eq!(q.covered_after(), t(12));
        assert_eq!(q.overflows, 1);
        assert_eq!(q.plan(t(11)), catch_up(11, 12));
        // The catch-up shipped 12: back to the queue.
        assert_eq!(q.plan(t(12)), Next::Queue);
        // Bytes bound: one big entry pushes out all older ones but itself.
        q.push(t(17), 95, ());
        assert_eq!(q.covered_after(), t(16));
        assert_eq!((q.len(), q.bytes()), (1, 95));
        // A single entry larger than the bound is kept (shipped as is).
        q.push(t(18), 500, ());
        assert_eq!((q.len(), q.bytes(), q.covered_after()), (1, 500, t(17)));
        assert_eq!(q.plan(t(18)), Next::Idle);
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn forgetting_what_the_inbox_dropped() {
        let mut q: ShipQueue<()> = ShipQueue::new(t(10), 1000, 100);
        for n in [11, 12, 14] {
            q.push(t(n), 10, ());
        }
        // 13 was dropped on its way in: 11 and 12 go too, 14 stays.
        q.forget_through(t(13));
        assert_eq!(
            (q.len(), q.bytes(), q.covered_after(), q.overflows),
            (1, 10, t(13), 1)
        );
        assert_eq!(q.plan(t(12)), catch_up(12, 13));
        assert_eq!(q.plan(t(13)), Next::Queue);
        // A drop older than what the queue covers changes nothing else.
        q.forget_through(t(12));
        assert_eq!((q.len(), q.covered_after(), q.overflows), (1, t(13), 2));
    }

    #[test]
    fn batches_stop_at_the_visible_tid_and_the_bounds() {
        let mut q: ShipQueue<u64> = ShipQueue::new(t(10), 1000, 100);
        for (n, bytes) in [(11, 10), (12, 10), (13, 50), (14, 10), (15, 10)] {
            q.push(t(n), bytes, n);
        }
        let tids = |f: Following<u64>| match f {
            Following::Next(v) => v.into_iter().map(|(t, _)| t.0).collect(),
            Following::Nothing => vec![],
            Following::Overflowed => vec![0],
        };
        let b = |visible: u64, entries: usize, bytes: u64| Batch {
            visible: t(visible),
            entries,
            bytes,
        };
        // (after, bound, want)
        let cases: [(u64, Batch, Vec<u64>); 8] = [
            (10, b(99, 100, 1000), vec![11, 12, 13, 14, 15]),
            // Logged but not yet published: not handed out.
            (10, b(12, 100, 1000), vec![11, 12]),
            (12, b(12, 100, 1000), vec![]),
            // Entries bound.
            (10, b(99, 2, 1000), vec![11, 12]),
            // Bytes bound: 11 + 12 fit in 25, 13 does not.
            (10, b(99, 100, 25), vec![11, 12]),
            // One entry bigger than the bound still goes, alone.
            (12, b(99, 100, 25), vec![13]),
            (13, b(99, 100, 25), vec![14, 15]),
            // Before what the queue covers: read from the source.
            (9, b(99, 100, 1000), vec![0]),
        ];
        for (after, bound, want) in cases {
            assert_eq!(
                tids(q.next_after(t(after), bound)),
                want,
                "after {after}, {bound:?}"
            );
        }
    }

    #[test]
    fn lags() {
        use crate::storage::timestamp;
        let at = |s: f64| timestamp::from_unix(1_700_000_000.0 + s);
        let now = 1_700_000_020.0;
        // (newest, position, oldest queued, queued, bytes, catching up,
        //  want txns, estimated, bytes, seconds)
        let table = [
            (at(10.0), at(10.0), None, 0, 0, None, 0, false, 0, 0.0),
            // Streaming: the oldest queued was committed 15 s ago.
            (
                at(10.0),
                at(4.0),
                Some(at(5.0)),
                3,
                300,
                None,
                3,
                false,
                300,
                15.0,
            ),
            // Catching up: from the position's time.
            (
                at(10.0),
                at(0.0),
                Some(at(9.0)),
                5,
                500,
                Some(100),
                105,
                true,
                500,
                20.0,
            ),
            (at(10.0), at(12.0), None, 2, 9, None, 0, false, 0, 0.0),
        ];
        for (newest, pos, oldest, q, b, c, txns, est, bytes, secs) in table {
            let l = lag(newest, pos, oldest, q, b, c, now);
            assert_eq!((l.transactions, l.estimated, l.bytes), (txns, est, bytes));
            assert!((l.seconds - secs).abs() < 0.01, "{l:?}");
        }
    }

    #[test]
    fn health_table() {
        let table = [
            (5.0, 60.0, None, None),
            (61.0, 60.0, None, Some("is 61 s behind (max-lag 60 s)")),
            (0.0, 60.0, Some("link down"), Some("degraded: link down")),
        ];
        for (lag, max, down, want) in table {
            let got = health("dr", lag, max, down);
            match want {
                None => assert_eq!(got, None),
                Some(w) => assert!(got.as_deref().unwrap_or("").contains(w), "{got:?}"),
            }
        }
    }
}
