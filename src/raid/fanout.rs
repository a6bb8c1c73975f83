//! Calling several backends with one operation: in parallel or in sequence.
//!
//! `parallel` (the default) runs the call on every backend at once: the
//! calling worker runs the first itself and a scoped thread each of the
//! others, and collects their results over a crossbeam channel against the
//! deadline. `sequential` calls them one after another on the caller. Both
//! give the same results in the same (configuration) order, so the two
//! can be compared (`zeoraid bench fanout`).
//!
//! Deadline: a backend that has not answered by `deadline` is reported as
//! [`Outcome::TimedOut`] and the array degrades it. The call itself ends
//! by its own deadline (a ZEO backend's call timeout is the array's
//! `backend-timeout`), and the scope joins it then: threads are never left
//! behind. A panic in a backend call is caught and reported as that
//! backend's failure.

use crate::storage::{Error, Result};
use serde::Deserialize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// `fanout` in the config.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    Parallel,
    Sequential,
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

/// Call `f` on each of `backends`; one outcome per backend, in order.
pub fn call_all<B: Sync, T: Send>(
    mode: Mode,
    backends: &[B],
    deadline: Instant,
    f: impl Fn(&B) -> Result<T> + Sync,
) -> Vec<Outcome<T>> {
    if mode == Mode::Sequential || backends.len() <= 1 {
        return backends
            .iter()
            .map(|b| {
                if Instant::now() > deadline {
                    return Outcome::TimedOut;
                }
                let (r, took) = run_one(b, &f);
                if Instant::now() > deadline {
                    Outcome::TimedOut
                } else {
                    Outcome::Done(r, took)
                }
            })
            .collect();
    }
    let (tx, rx) = crossbeam_channel::bounded(backends.len());
    let f = &f;
    std::thread::scope(|scope| {
        let mut spawn_failed = Vec::new();
        for (i, b) in backends.iter().enumerate().skip(1) {
            let tx = tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("zeoraid-fanout-{i}"))
                .spawn_scoped(scope, move || {
                    let _ = tx.send((i, run_one(b, f)));
                });
            if let Err(e) = spawned {
                spawn_failed.push((i, e.to_string()));
            }
        }
        let first = run_one(&backends[0], f);
        let mut out: Vec<Option<Outcome<T>>> = (0..backends.len()).map(|_| None).collect();
        out[0] = Some(if Instant::now() > deadline {
            Outcome::TimedOut
        } else {
            Outcome::Done(first.0, first.1)
        });
        for (i, why) in spawn_failed {
            out[i] = Some(Outcome::Done(
                Err(Error::Io(format!("cannot start a fan-out thread: {why}"))),
                Duration::ZERO,
            ));
        }
        while out.iter().any(Option::is_none) {
            match rx.recv_deadline(deadline) {
                Ok((i, (r, took))) => out[i] = Some(Outcome::Done(r, took)),
                Err(_) => break,
            }
        }
        out.into_iter()
            .map(|o| o.unwrap_or(Outcome::TimedOut))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_modes_give_the_same_results_in_order() {
        let backends = [1u64, 2, 3, 4];
        for mode in [Mode::Parallel, Mode::Sequential] {
            let out = call_all(
                mode,
                &backends,
                Instant::now() + Duration::from_secs(5),
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
    fn parallel_calls_overlap() {
        let backends = [0u8; 4];
        let started = Instant::now();
        call_all(
            Mode::Parallel,
            &backends,
            Instant::now() + Duration::from_secs(5),
            |_| {
                std::thread::sleep(Duration::from_millis(100));
                Ok(())
            },
        );
        assert!(
            started.elapsed() < Duration::from_millis(350),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_late_backend_times_out_and_a_panic_is_a_failure() {
        let backends = [0u64, 1, 2];
        let out = call_all(
            Mode::Parallel,
            &backends,
            Instant::now() + Duration::from_millis(1000),
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
