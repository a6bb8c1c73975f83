//! The transaction watchdog (ZEO's `transaction-timeout`).
//!
//! Between `vote` and `tpc_finish` a client holds its storage's commit lock,
//! and every other committer waits for it. A client that stalls there (hung
//! process, lost network without a reset) would stall all writers. When a
//! timeout is configured, this thread (`zeoraid-txn-watchdog`) looks at
//! every commit lock a few times per timeout and closes the connection of a
//! holder that has had it too long; closing aborts its transaction and hands
//! the lock on, exactly as a disconnect does.

use super::{lock, Out, Shared};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often to look: a quarter of the timeout, between 10 ms and 1 s.
pub(crate) fn tick(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// The thread body: runs until `stop` receives or disconnects.
pub(crate) fn run(shared: Arc<Shared>, timeout: Duration, stop: Receiver<()>) {
    loop {
        match stop.recv_timeout(tick(timeout)) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let now = Instant::now();
        for entry in shared.storages.values() {
            let overdue = lock(&entry.lock).overdue(now, timeout);
            if let Some(conn) = overdue {
                log::warn!(
                    "connection {conn} has held the commit lock of storage {:?} for more than {:.1} s \
                     (transaction-timeout); closing it to abort its transaction and let other \
                     clients commit",
                    entry.name,
                    timeout.as_secs_f64()
                );
                shared.send(Out::Close(conn));
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
}
