//! Calling several backends with one operation: in parallel or in sequence.
//!
//! `parallel` (the default) overlaps the calls that wait on something — a
//! ZEO backend's network round trip, a file backend's fsync — on a small
//! rayon pool owned by the array ([`Fanout`]), collects the results over a
//! crossbeam channel against the deadline, and runs the rest on the
//! calling worker. A call marked *inline* (an in-process backend's vote or
//! finish: microseconds of CPU) is run on the caller in order, since
//! handing it to another thread costs more than it could save. `sequential`
//! calls every backend one after another on the caller. Both give the same
//! results in the same (configuration) order, so the two can be compared
//! (`zeoraid bench fanout`).
//!
//! Why a pool and not a thread per call: starting a thread costs 30-140 µs
//! per call on a busy two-core host (measured by `cargo bench --bench
//! raid`), more than a whole in-process commit; the pool's threads are
//! started once. The pool is sized for blocking work, not CPU: two threads
//! per backend plus two, so a vote, a concurrent `make_durable` and a pack
//! never wait for each other's threads. Its threads are named
//! `zeoraid-fanout-ARRAY-N`, and dropping the [`Fanout`] joins them.
//!
//! Deadline: a backend that has not answered by `deadline` is reported as
//! [`Outcome::TimedOut`] and the array degrades it. The call itself ends
//! by its own deadline (a ZEO backend's call timeout is the array's
//! `backend-timeout`), and the scope waits for it then: no call is left
//! running. A panic in a backend call is caught and reported as that
//! backend's failure.

use crate::locks::lock;
use crate::storage::{Error, Result};
use serde::Deserialize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `fanout` in the config.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    Parallel,
    Sequential,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Parallel => "parallel",
            Mode::Sequential => "sequential",
        }
    }
}

/// One backend's result.
#[derive(Debug)]
pub enum Outcome<T> {
    /// It answered (possibly with an error) after this long.
    Done(Result<T>, Duration),
    /// No answer by the deadline.
    TimedOut,
}

fn run_one<B, T>(b: &B, f: &(impl Fn(&B) -> Result<T> + Sync)) -> (Result<T>, Duration) {
    let started = Instant::now();
    let r = catch_unwind(AssertUnwindSafe(|| f(b))).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(Error::Io(format!(
            "internal error (panic) in the backend call: {msg}"
        )))
    });
    (r, started.elapsed())
}

/// A call on the caller, reported as timed out when it ends past the
/// deadline.
fn timed<T>(deadline: Instant, call: impl FnOnce() -> (Result<T>, Duration)) -> Outcome<T> {
    let (r, took) = call();
    if Instant::now() > deadline {
        Outcome::TimedOut
    } else {
        Outcome::Done(r, took)
    }
}

/// Which calls of one fan-out run on the caller and which on the pool:
/// pure, so the plan can be table-tested. `offload[i]` says whether call
/// `i` waits on IO. Returns (inline positions in order, pooled positions).
/// In parallel mode with nothing inline, the caller takes the first
/// offloaded call itself instead of idling.
pub fn plan(mode: Mode, offload: &[bool]) -> (Vec<usize>, Vec<usize>) {
    if mode == Mode::Sequential {
        return ((0..offload.len()).collect(), Vec::new());
    }
    let inline: Vec<usize> = (0..offload.len()).filter(|&i| !offload[i]).collect();
    let mut pooled: Vec<usize> = (0..offload.len()).filter(|&i| offload[i]).collect();
    if inline.is_empty() && !pooled.is_empty() {
        let first = pooled.remove(0);
        return (vec![first], pooled);
    }
    (inline, pooled)
}

/// The array's fan-out machinery: the mode and, for `parallel`, the pool.
pub struct Fanout {
    /// 0 parallel, 1 sequential: changed live by a config reload.
    mode: std::sync::atomic::AtomicU8,
    pool: Option<rayon::ThreadPool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Fanout {
    /// `name` names the threads; `backends` sizes the pool. The pool
    /// exists in both modes, so a reload can switch between them.
    pub fn new(mode: Mode, name: &str, backends: usize) -> std::io::Result<Fanout> {
        let threads: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let pool = {
            let handles = threads.clone();
            let name = name.to_string();
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2 * backends.max(1) + 2)
                .spawn_handler(move |t| {
                    let h = std::thread::Builder::new()
                        .name(format!("zeoraid-fanout-{name}-{}", t.index()))
                        .spawn(move || t.run())?;
                    lock(&handles).push(h);
                    Ok(())
                })
                .build()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Some(pool)
        };
        Ok(Fanout {
            mode: std::sync::atomic::AtomicU8::new(Self::code(mode)),
            pool,
            threads,
        })
    }

    fn code(mode: Mode) -> u8 {
        match mode {
            Mode::Parallel => 0,
            Mode::Sequential => 1,
        }
    }

    pub fn mode(&self) -> Mode {
        match self.mode.load(std::sync::atomic::Ordering::Relaxed) {
            0 => Mode::Parallel,
            _ => Mode::Sequential,
        }
    }

    /// Switch between parallel and sequential (a config reload).
    pub fn set_mode(&self, mode: Mode) {
        self.mode
            .store(Self::code(mode), std::sync::atomic::Ordering::Relaxed);
    }

    /// Call `f` on each of `backends`; one outcome per backend, in order.
    /// `offload(b)` says whether the call on `b` waits on IO (see [`plan`]).
    /// Each call has `timeout`: the overlapped ones from the start, each
    /// call on the caller from its own start (a slow first backend does
    /// not use up the next one's time).
    pub fn call_all<B: Sync, T: Send>(
        &self,
        backends: &[B],
        offload: impl Fn(&B) -> bool,
        timeout: Duration,
        f: impl Fn(&B) -> Result<T> + Sync,
    ) -> Vec<Outcome<T>> {
        let deadline = Instant::now() + timeout;
        let flags: Vec<bool> = backends.iter().map(&offload).collect();
        let (inline, pooled) = match &self.pool {
            Some(_) => plan(self.mode(), &flags),
            // Sequential: everything on the caller.
            None => plan(Mode::Sequential, &flags),
        };
        let mut out: Vec<Option<Outcome<T>>> = (0..backends.len()).map(|_| None).collect();
        let on_caller = |out: &mut Vec<Option<Outcome<T>>>| {
            for &i in &inline {
                out[i] = Some(timed(Instant::now() + timeout, || {
                    run_one(&backends[i], &f)
                }));
            }
        };
        match &self.pool {
            Some(pool) if !pooled.is_empty() => {
                let (tx, rx) = crossbeam_channel::bounded(pooled.len());
                let f = &f;
                pool.in_place_scope(|scope| {
                    for &i in &pooled {
                        let tx = tx.clone();
                        let b = &backends[i];
                        scope.spawn(move |_| {
                            let _ = tx.send((i, run_one(b, f)));
                        });
                    }
                    on_caller(&mut out);
                    let mut left = pooled.len();
                    while left > 0 {
                        match rx.recv_deadline(deadline) {
                            Ok((i, (r, took))) => {
                                out[i] = Some(Outcome::Done(r, took));
                                left -= 1;
                            }
                            Err(_) => break,
                        }
                    }
                });
            }
            _ => on_caller(&mut out),
        }
        out.into_iter()
            .map(|o| o.unwrap_or(Outcome::TimedOut))
            .collect()
    }
}

impl Drop for Fanout {
    fn drop(&mut self) {
        // Dropping the pool lets its threads finish their current call and
        // exit; then they are joined.
        drop(self.pool.take());
        for h in lock(&self.threads).drain(..) {
            if h.join().is_err() {
                log::error!("a fan-out thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_table() {
        let (p, s) = (Mode::Parallel, Mode::Sequential);
        type Case = (Mode, Vec<bool>, Vec<usize>, Vec<usize>);
        let cases: Vec<Case> = vec![
            (s, vec![true, true, false], vec![0, 1, 2], vec![]),
            (p, vec![], vec![], vec![]),
            (p, vec![false, false], vec![0, 1], vec![]),
            // Nothing inline: the caller takes the first IO call itself.
            (p, vec![true, true, true], vec![0], vec![1, 2]),
            (p, vec![true], vec![0], vec![]),
            // In-process calls on the caller while the IO calls overlap.
            (p, vec![true, false, true], vec![1], vec![0, 2]),
        ];
        for (mode, offload, inline, pooled) in cases {
            assert_eq!(
                plan(mode, &offload),
                (inline, pooled),
                "{mode:?} {offload:?}"
            );
        }
    }

    #[test]
    fn both_modes_give_the_same_results_in_order() {
        let backends = [1u64, 2, 3, 4];
        for mode in [Mode::Parallel, Mode::Sequential] {
            let fan = Fanout::new(mode, "t", 4).unwrap();
            let out = fan.call_all(
                &backends,
                |b| b % 2 == 0,
                Duration::from_secs(5),
                |b| {
                    if *b == 3 {
                        Err(Error::Io("three fails".into()))
                    } else {
                        Ok(b * 10)
                    }
                },
            );
            let got: Vec<std::result::Result<u64, String>> = out
                .into_iter()
                .map(|o| match o {
                    Outcome::Done(r, _) => r.map_err(|e| e.to_string()),
                    Outcome::TimedOut => Err("timeout".into()),
                })
                .collect();
            assert_eq!(
                got,
                vec![Ok(10), Ok(20), Err("I/O error: three fails".into()), Ok(40)],
                "{mode:?}"
            );
        }
    }

    #[test]
    fn parallel_calls_overlap_and_threads_are_named_and_joined() {
        let backends = [0u8; 4];
        let fan = Fanout::new(Mode::Parallel, "overlap", 4).unwrap();
        let started = Instant::now();
        let names = Mutex::new(Vec::new());
        fan.call_all(
            &backends,
            |_| true,
            Duration::from_secs(5),
            |_| {
                lock(&names).push(std::thread::current().name().unwrap_or("").to_string());
                std::thread::sleep(Duration::from_millis(100));
                Ok(())
            },
        );
        assert!(
            started.elapsed() < Duration::from_millis(350),
            "{:?}",
            started.elapsed()
        );
        let names = lock(&names).clone();
        assert_eq!(
            names
                .iter()
                .filter(|n| n.starts_with("zeoraid-fanout-overlap-"))
                .count(),
            3,
            "{names:?}"
        );
        let threads = fan.threads.clone();
        drop(fan);
        assert!(lock(&threads).is_empty(), "joined on drop");
    }

    #[test]
    fn a_late_backend_times_out_and_a_panic_is_a_failure() {
        let backends = [0u64, 1, 2];
        let fan = Fanout::new(Mode::Parallel, "t", 3).unwrap();
        let out = fan.call_all(
            &backends,
            |_| true,
            Duration::from_millis(1000),
            |b| match b {
                1 => {
                    std::thread::sleep(Duration::from_millis(1500));
                    Ok(1)
                }
                2 => panic!("backend bug"),
                _ => Ok(0),
            },
        );
        assert!(matches!(out[0], Outcome::Done(Ok(0), _)));
        assert!(matches!(out[1], Outcome::TimedOut));
        assert!(
            matches!(&out[2], Outcome::Done(Err(Error::Io(m)), _) if m.contains("backend bug"))
        );
    }
}
