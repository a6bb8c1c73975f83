//! The array's lifetime as its threads see it: whether it is closing,
//! and the one signal that wakes its sleepers (the recovery supervisor's
//! tick, off-site backoffs) when it closes or there is work (an operator
//! asked for a recovery, a backend was added).

use crate::locks::lock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub(super) struct Wake {
    closing: AtomicBool,
    signal: (Mutex<()>, Condvar),
}

impl Wake {
    /// The array is closing: recoveries stop, sleepers return.
    pub(super) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// The flag itself, for waits that watch it (the commit lock's).
    pub(super) fn closing_flag(&self) -> &AtomicBool {
        &self.closing
    }

    /// Close: every sleeper wakes and sees it.
    pub(super) fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.wake_all();
    }

    /// Wake every sleeper (there is work).
    pub(super) fn wake_all(&self) {
        let _g = lock(&self.signal.0);
        self.signal.1.notify_all();
    }

    /// Sleep at most `d`, returning early when woken, when the array
    /// closes or when `done()` (checked under the signal's lock, so a
    /// wake-up between the check and the sleep is not lost).
    pub(super) fn sleep(&self, d: Duration, done: impl Fn() -> bool) {
        let g = lock(&self.signal.0);
        if self.is_closing() || done() {
            return;
        }
        drop(self.signal.1.wait_timeout(g, d));
    }

    /// Sleep `d` unless the array closes, doing `every` at least every
    /// `step` meanwhile (a backoff that keeps a queue moving).
    pub(super) fn sleep_doing(&self, d: Duration, step: Duration, every: impl Fn()) {
        let deadline = Instant::now() + d;
        let mut g = lock(&self.signal.0);
        while !self.is_closing() {
            every();
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            g = self
                .signal
                .1
                .wait_timeout(g, (deadline - now).min(step))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn sleepers_wake_on_close_and_on_work() {
        let w = Arc::new(Wake::default());
        let t = Instant::now();
        w.sleep(Duration::from_millis(20), || false);
        assert!(
            t.elapsed() >= Duration::from_millis(15),
            "a plain sleep sleeps"
        );
        let t = Instant::now();
        w.sleep(Duration::from_secs(10), || true);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "work waiting: no sleep"
        );
        let w2 = w.clone();
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            w2.close();
        });
        let t = Instant::now();
        w.sleep_doing(Duration::from_secs(10), Duration::from_millis(200), || {});
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "closing wakes a backoff"
        );
        closer.join().unwrap();
        assert!(w.is_closing());
        let t = Instant::now();
        w.sleep(Duration::from_secs(10), || false);
        assert!(t.elapsed() < Duration::from_secs(1), "closed: no sleep");
    }
}
