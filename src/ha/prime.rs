//! Priming a new leader's invalidation queue (issue #26). A ZEO client
//! that reconnects after a failover asks the new leader
//! `getInvalidations(tid)` with the last tid it saw; the server answers
//! from its in-memory queue ([`crate::server::invalidations`]), which on a
//! controller that just took over holds none of the old leader's commits,
//! so the client would drop its whole cache. Before it serves, the
//! controller reads the array's newest transactions (`Storage::iterator`
//! over a window ending at the last transaction, widened until it holds
//! `invalidation-queue-size` of them or reaches the database's start) and
//! loads their tid → oids into the queue.
//!
//! The read is capped by a deadline (the controller's thread also renews
//! the lease): a read cut short, or one that failed, leaves the queue
//! empty, which only costs clients their caches (ZEO's answer when the
//! queue does not reach back far enough). What may be loaded is the pure
//! [`primed`]: only a contiguous run of history that ends at the array's
//! last transaction, the newest `bound` of it.

use crate::storage::timestamp;
use crate::storage::{Oid, Storage, Tid};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far back (seconds before the last transaction) each attempt reads;
/// `None`: from the database's start. An attempt that finds fewer than
/// the queue's size of transactions is retried with the next span.
pub const SPANS: [Option<f64>; 4] = [Some(60.0), Some(3600.0), Some(86400.0), None];

/// What a read of the array's recent history found.
#[derive(Clone, Debug, PartialEq)]
pub struct Read {
    /// Transactions oldest first, each with the oids it changed (the
    /// newest `bound` kept while reading).
    pub txns: Vec<(Tid, Vec<Oid>)>,
    /// The read started at the database's start (nothing older exists).
    pub from_start: bool,
    /// The read reached the end of the window (not cut by the deadline
    /// or an error).
    pub complete: bool,
}

/// What to load into a queue of `bound` entries, given a read of the
/// history up to the array's `last` transaction (pure). `None`: nothing
/// trustworthy; the queue is left empty (clients asking drop their
/// caches). A queue that skipped a transaction would let a client keep
/// stale objects, so only a complete read ending exactly at `last` is
/// loaded.
pub fn primed(read: &Read, last: Tid, bound: usize) -> Option<Vec<(Tid, Vec<Oid>)>> {
    if !read.complete || last == Tid(0) {
        return None;
    }
    let newest = read.txns.last()?.0;
    if newest != last {
        return None;
    }
    if read.txns.windows(2).any(|w| w[0].0 >= w[1].0) {
        return None;
    }
    let skip = read.txns.len().saturating_sub(bound.max(1));
    Some(read.txns[skip..].to_vec())
}

/// Whether an attempt that found `found` transactions is enough for a
/// queue of `bound` (pure): it found a full queue, or nothing older exists.
pub fn enough(found: usize, bound: usize, from_start: bool) -> bool {
    from_start || found >= bound.max(1)
}

/// Read the newest up-to-`bound` transactions of `storage` ending at
/// `last`, giving up at `deadline`.
pub fn read_recent(storage: &dyn Storage, last: Tid, bound: usize, deadline: Instant) -> Read {
    let mut read = Read {
        txns: Vec::new(),
        from_start: false,
        complete: false,
    };
    for span in SPANS {
        let start = span.map(|s| timestamp::from_unix(timestamp::time_time(last) - s));
        read = read_window(storage, start, last, bound, deadline);
        if !read.complete || enough(read.txns.len(), bound, read.from_start) {
            break;
        }
    }
    read
}

fn read_window(
    storage: &dyn Storage,
    start: Option<Tid>,
    last: Tid,
    bound: usize,
    deadline: Instant,
) -> Read {
    let from_start = start.is_none();
    let mut txns: VecDeque<(Tid, Vec<Oid>)> = VecDeque::new();
    let cut = |txns: VecDeque<_>| Read {
        txns: txns.into(),
        from_start,
        complete: false,
    };
    let iter = match storage.iterator(start, Some(last)) {
        Ok(i) => i,
        Err(e) => {
            log::warn!("[ha]: cannot read the recent history to prime invalidations: {e}");
            return cut(txns);
        }
    };
    for t in iter {
        if Instant::now() >= deadline {
            return cut(txns);
        }
        match t {
            Ok(t) => {
                if txns.len() >= bound.max(1) {
                    txns.pop_front();
                }
                txns.push_back((t.tid, t.records.iter().map(|r| r.oid).collect()));
            }
            Err(e) => {
                log::warn!("[ha]: reading the recent history to prime invalidations failed: {e}");
                return cut(txns);
            }
        }
    }
    Read {
        txns: txns.into(),
        from_start,
        complete: true,
    }
}

/// How long priming may delay serving, for a lease renewed every `renew`
/// (pure): at most a renew interval, between 200 ms and 2 s.
pub fn budget(renew: Duration) -> Duration {
    renew.clamp(Duration::from_millis(200), Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txns(tids: &[u64]) -> Vec<(Tid, Vec<Oid>)> {
        tids.iter().map(|&t| (Tid(t), vec![Oid(t)])).collect()
    }

    fn read(tids: &[u64], complete: bool) -> Read {
        Read {
            txns: txns(tids),
            from_start: false,
            complete,
        }
    }

    #[test]
    fn only_a_complete_run_ending_at_the_last_transaction_is_loaded() {
        let cases: &[(Read, u64, usize, Option<&[u64]>)] = &[
            (read(&[1, 2, 3], true), 3, 10, Some(&[1, 2, 3])),
            (read(&[1, 2, 3], true), 3, 2, Some(&[2, 3])),
            (read(&[1, 2, 3], true), 3, 0, Some(&[3])),
            // Cut by the deadline or an error.
            (read(&[1, 2, 3], false), 3, 10, None),
            // Does not reach the last transaction (a commit raced it).
            (read(&[1, 2], true), 3, 10, None),
            // Nothing read, or an empty database.
            (read(&[], true), 3, 10, None),
            (read(&[], true), 0, 10, None),
            // Out of order: not a history.
            (read(&[2, 1, 3], true), 3, 10, None),
            (read(&[1, 3, 3], true), 3, 10, None),
        ];
        for (r, last, bound, want) in cases {
            let want = want.map(txns);
            assert_eq!(primed(r, Tid(*last), *bound), want, "{r:?} last {last}");
        }
    }

    #[test]
    fn a_window_is_enough_when_full_or_from_the_start() {
        assert!(enough(100, 100, false));
        assert!(!enough(99, 100, false));
        assert!(enough(3, 100, true));
        assert!(enough(1, 0, false));
    }

    #[test]
    fn the_budget_is_bounded() {
        assert_eq!(
            budget(Duration::from_millis(500)),
            Duration::from_millis(500)
        );
        assert_eq!(budget(Duration::from_secs(10)), Duration::from_secs(2));
        assert_eq!(budget(Duration::ZERO), Duration::from_millis(200));
    }

    #[test]
    fn a_primed_queue_answers_exactly_the_oids_after_a_tid() {
        use crate::server::invalidations::InvalidationHistory;
        let r = Read {
            txns: vec![
                (Tid(10), vec![Oid(0)]),
                (Tid(20), vec![Oid(1), Oid(2)]),
                (Tid(30), vec![Oid(2), Oid(3)]),
            ],
            from_start: false,
            complete: true,
        };
        let mut q = InvalidationHistory::new(3);
        q.replace(primed(&r, Tid(30), 3).unwrap_or_default());
        let cases = [
            (Tid(5), None),
            (Tid(10), Some((Tid(30), vec![Oid(1), Oid(2), Oid(3)]))),
            (Tid(20), Some((Tid(30), vec![Oid(2), Oid(3)]))),
            (Tid(30), Some((Tid(30), vec![]))),
        ];
        for (since, want) in cases {
            assert_eq!(q.since(since), want, "since {since}");
        }
        // A failed read empties the queue: every client drops its cache.
        q.replace(primed(&read(&[10], false), Tid(30), 3).unwrap_or_default());
        assert_eq!(q.since(Tid(20)), None);
    }

    #[test]
    fn reading_a_memory_storage_keeps_the_newest() {
        use crate::storage::memory::MemoryStorage;
        use crate::storage::testutil::{commit, store};
        let s = MemoryStorage::new("m", false);
        let mut tids = Vec::new();
        for i in 0..5u64 {
            tids.push(commit(&s, None, vec![store(i, Tid(0), "x")]));
        }
        let last = *tids.last().unwrap();
        let far = Instant::now() + Duration::from_secs(10);
        let r = read_recent(&s, last, 3, far);
        assert!(r.complete, "{r:?}");
        let got: Vec<Tid> = r.txns.iter().map(|t| t.0).collect();
        assert_eq!(got, tids[2..].to_vec());
        assert_eq!(r.txns[2].1, vec![Oid(4)]);
        // An expired deadline gives nothing to load.
        let r = read_recent(&s, last, 3, Instant::now());
        assert_eq!(primed(&r, last, 3), None);
    }
}
