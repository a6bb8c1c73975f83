//! The transaction watchdog: ZEO's `transaction-timeout`, and the bound on
//! how long a client may keep the commit lock while it resolves conflicts.
//!
//! Between `vote` and `tpc_finish` a client holds its storage's commit lock,
//! and every other committer waits for it. A client that stalls there (hung
//! process, lost network without a reset) would stall all writers. This
//! thread (`zeoraid-txn-watchdog`) looks at every commit lock a few times
//! per timeout:
//!
//! - with `transaction-timeout` set, it closes the connection of a holder
//!   that has had the lock too long; closing aborts its transaction and
//!   hands the lock on, exactly as a disconnect does;
//! - a holder whose vote answered conflicts keeps the lock while its client
//!   resolves them ([`super::commit_lock`]); without `transaction-timeout`
//!   that is bounded by [`CONFLICT_HOLD`], after which the lock passes on
//!   and the connection stays open (its re-vote then queues as any other,
//!   and may meet new conflicts).

use super::{lock, Job, Out, Shared};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a client may keep the commit lock while it resolves conflicts
/// when `transaction-timeout` is not set. A stock client needs two
/// `loadSerial`s and an unpickle per object: milliseconds.
pub const CONFLICT_HOLD: Duration = Duration::from_secs(10);

/// How often to look: a quarter of the timeout, between 10 ms and 1 s.
pub(crate) fn tick(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// The limit on a conflict-resolution hold: `transaction-timeout` when set
/// (the holder is then closed like any overdue one), else [`CONFLICT_HOLD`].
pub(crate) fn resolution_limit(transaction_timeout: Option<Duration>) -> Duration {
    transaction_timeout.unwrap_or(CONFLICT_HOLD)
}

/// The thread body: runs until `stop` receives or disconnects.
pub(crate) fn run(shared: Arc<Shared>, timeout: Option<Duration>, stop: Receiver<()>) {
    let hold = resolution_limit(timeout);
    loop {
        match stop.recv_timeout(tick(hold)) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let now = Instant::now();
        for entry in shared.storages.values() {
            let mut commit_lock = lock(&entry.lock);
            if let Some(timeout) = timeout {
                if let Some(conn) = commit_lock.overdue(now, timeout) {
                    drop(commit_lock);
                    log::warn!(
                        "connection {conn} has held the commit lock of storage {:?} for more than \
                         {:.1} s (transaction-timeout); closing it to abort its transaction and \
                         let other clients commit",
                        entry.name,
                        timeout.as_secs_f64()
                    );
                    shared.send(Out::Close(conn));
                    continue;
                }
            }
            if let Some(conn) = commit_lock.resolution_overdue(now, hold) {
                let next = commit_lock.release(conn, now);
                drop(commit_lock);
                log::warn!(
                    "connection {conn} received conflicts on storage {:?} and has not voted \
                     again within {:.1} s; passing the commit lock on (its next vote waits \
                     its turn; set server.transaction-timeout to close such clients instead)",
                    entry.name,
                    hold.as_secs_f64()
                );
                if let Some(next) = next {
                    let _ = shared.jobs.send(Job::Resume(next));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_table() {
        let ms = Duration::from_millis;
        for (timeout, want) in [(ms(1), ms(10)), (ms(400), ms(100)), (ms(60_000), ms(1000))] {
            assert_eq!(tick(timeout), want, "{timeout:?}");
        }
    }

    #[test]
    fn resolution_limit_table() {
        let s = Duration::from_secs;
        for (timeout, want) in [
            (None, CONFLICT_HOLD),
            (Some(s(2)), s(2)),
            (Some(s(60)), s(60)),
        ] {
            assert_eq!(resolution_limit(timeout), want, "{timeout:?}");
        }
    }
}
