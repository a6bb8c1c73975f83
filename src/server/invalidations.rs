//! The bounded history of committed transactions behind `getInvalidations`.
//!
//! A reconnecting client asks "what changed since tid T?". If T is within the
//! remembered window we answer the newest tid and the union of oids changed
//! after T, and the client keeps its cache; otherwise `None`, and it drops
//! its cache (ZEO's `invalidation-queue-size`).

use crate::storage::{Oid, Tid};
use std::collections::{BTreeSet, VecDeque};

#[derive(Debug)]
pub struct InvalidationHistory {
    /// Newest last.
    entries: VecDeque<(Tid, Vec<Oid>)>,
    bound: usize,
}

impl InvalidationHistory {
    pub fn new(bound: usize) -> InvalidationHistory {
        InvalidationHistory {
            entries: VecDeque::new(),
            bound: bound.max(1),
        }
    }

    pub fn push(&mut self, tid: Tid, oids: Vec<Oid>) {
        if self.entries.len() >= self.bound {
            self.entries.pop_front();
        }
        self.entries.push_back((tid, oids));
    }

    /// Forget every entry and remember `entries` (oldest first, the newest
    /// `bound` of them) instead: a controller that takes over primes its
    /// queue from the array's history ([`crate::ha::prime`]).
    pub fn replace(&mut self, entries: Vec<(Tid, Vec<Oid>)>) {
        self.entries.clear();
        let skip = entries.len().saturating_sub(self.bound);
        self.entries.extend(entries.into_iter().skip(skip));
    }

    /// The queue's size (`invalidation-queue-size`).
    pub fn bound(&self) -> usize {
        self.bound
    }

    /// Changes after `since`: `(newest tid, oids)`, or `None` when the
    /// window does not reach back to `since`.
    pub fn since(&self, since: Tid) -> Option<(Tid, Vec<Oid>)> {
        let (oldest, _) = self.entries.front()?;
        if *oldest > since {
            return None;
        }
        let newest = self.entries.back()?.0;
        let mut oids = BTreeSet::new();
        for (tid, changed) in self.entries.iter().rev() {
            if *tid <= since {
                break;
            }
            oids.extend(changed.iter().copied());
        }
        Some((newest, oids.into_iter().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let mut h = InvalidationHistory::new(3);
        assert_eq!(h.since(Tid(0)), None, "empty history knows nothing");
        h.push(Tid(10), vec![Oid(1)]);
        h.push(Tid(20), vec![Oid(2), Oid(1)]);
        h.push(Tid(30), vec![Oid(3)]);
        let cases = [
            (Tid(5), None),
            (Tid(10), Some((Tid(30), vec![Oid(1), Oid(2), Oid(3)]))),
            (Tid(20), Some((Tid(30), vec![Oid(3)]))),
            (Tid(25), Some((Tid(30), vec![Oid(3)]))),
            (Tid(30), Some((Tid(30), vec![]))),
            (Tid(99), Some((Tid(30), vec![]))),
        ];
        for (since, want) in cases {
            assert_eq!(h.since(since), want, "since {since}");
        }
        h.push(Tid(40), vec![Oid(4)]);
        assert_eq!(
            h.since(Tid(10)),
            None,
            "oldest entry fell out of the window"
        );
        assert_eq!(h.since(Tid(20)), Some((Tid(40), vec![Oid(3), Oid(4)])));
    }

    #[test]
    fn replacing_keeps_the_newest_within_the_bound() {
        let mut h = InvalidationHistory::new(2);
        h.push(Tid(1), vec![Oid(9)]);
        h.replace(vec![
            (Tid(10), vec![Oid(1)]),
            (Tid(20), vec![Oid(2)]),
            (Tid(30), vec![Oid(3)]),
        ]);
        let cases = [
            (Tid(1), None),
            (Tid(10), None),
            (Tid(20), Some((Tid(30), vec![Oid(3)]))),
        ];
        for (since, want) in cases {
            assert_eq!(h.since(since), want, "since {since}");
        }
        h.replace(Vec::new());
        assert_eq!(h.since(Tid(20)), None, "an empty queue knows nothing");
        assert_eq!(h.bound(), 2);
    }
}
