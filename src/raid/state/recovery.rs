//! Recovery's decisions: where a copy starts or why it must not
//! ([`resume_point`]), how far it has come ([`progress`]), which degraded
//! backend auto-recovery takes next and when ([`next_to_recover`],
//! [`backoff`]), and when the copy is close enough to finish under the
//! array's commit lock ([`close_enough`]).

use super::reason::{Divergence, DivergenceKind};
use crate::storage::{timestamp, Tid};
use std::time::Duration;

/// A transaction reduced to what two backends must agree on: its tid and
/// a hash of its status, metadata and records (see `raid::verify`).
pub type Digest = (Tid, u64);

/// Where to copy from: `Ok(None)` copies the whole history (the target is
/// empty), `Ok(Some(t))` everything after `t`; `Err` says how the target
/// diverged from the source (nothing may be written to it).
///
/// `target_last`/`source_last`: last tids; `target_txn`/`source_txn`: the
/// digest of transaction `target_last` on each (`None`: not there).
pub fn resume_point(
    target_last: Tid,
    source_last: Tid,
    target_txn: Option<Digest>,
    source_txn: Option<Digest>,
) -> Result<Option<Tid>, Divergence> {
    if target_last == Tid::ZERO {
        return Ok(None);
    }
    let diverged = |how| {
        Err(Divergence {
            at: target_last,
            how,
        })
    };
    if target_last > source_last {
        return diverged(DivergenceKind::Ahead { source_last });
    }
    match (target_txn, source_txn) {
        (_, None) => diverged(DivergenceKind::NotInSource),
        (None, Some(_)) => diverged(DivergenceKind::Unreadable),
        (Some(t), Some(s)) if t != s => diverged(DivergenceKind::Differs),
        _ => Ok(Some(target_last)),
    }
}

/// A recovery's figures, as status documents show them.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    pub copied: u64,
    /// Estimated transactions left (from the tids' timestamps).
    pub left: u64,
    pub percent: f64,
    /// Transactions copied per second since the start.
    pub rate: f64,
    /// Estimated seconds to go; `None` before anything was copied.
    pub eta: Option<f64>,
}

/// How far a copy has come: it is at `at`, with `goal` the newest
/// transaction to reach, after copying `copied` transactions in `elapsed`
/// seconds, `measured` of them after `start` (the transaction the copy
/// resumed after, or for a copy from scratch the first one it copied;
/// `None` before that). Tids are commit times, so the share of the time
/// span from `start` to `goal` covered estimates the share of the
/// transactions copied.
pub fn progress(
    start: Option<Tid>,
    at: Tid,
    goal: Tid,
    measured: u64,
    copied: u64,
    elapsed: f64,
) -> Progress {
    let secs = |t: Tid| timestamp::time_time(t);
    let done = match start {
        _ if at >= goal => 1.0,
        None => 0.0,
        Some(s) => {
            let span = secs(goal) - secs(s);
            if span <= 0.0 {
                1.0
            } else {
                ((secs(at) - secs(s)) / span).clamp(0.0, 1.0)
            }
        }
    };
    let left = if done >= 1.0 || done <= 0.0 || measured == 0 {
        0
    } else {
        ((measured as f64) * (1.0 - done) / done).round() as u64
    };
    let rate = if elapsed > 0.0 {
        copied as f64 / elapsed
    } else {
        0.0
    };
    let eta = (rate > 0.0 && (left > 0 || done >= 1.0)).then(|| left as f64 / rate);
    Progress {
        copied,
        left,
        percent: (done * 1000.0).round() / 10.0,
        rate,
        eta,
    }
}

/// The pass that copied `copied_in_pass` transactions found the source
/// this close to the array: the rest is copied under the commit lock.
pub fn close_enough(copied_in_pass: u64) -> bool {
    copied_in_pass <= CATCH_UP_UNDER_LOCK
}

/// At most this many transactions are copied while commits wait.
pub const CATCH_UP_UNDER_LOCK: u64 = 16;

/// How long auto-recovery waits after `failures` failed attempts on a
/// backend before it tries again: 1 s doubling to 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let secs = 1u64 << (failures - 1).min(9);
    Duration::from_secs(secs.min(300))
}

/// One backend, as auto-recovery sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// Degraded (not optimal, not recovering).
    pub degraded: bool,
    /// The last attempt was refused because the target diverged: only an
    /// operator's recovery (perhaps forced) may touch it.
    pub diverged: bool,
    /// Seconds since the last attempt (`None`: never tried).
    pub since_attempt: Option<f64>,
    pub failures: u32,
}

/// The backend auto-recovery takes next, if any: the first degraded one in
/// configuration order whose backoff has passed. Recoveries run one after
/// another (the next starts when the running one ends), so each one gets
/// the source's whole bandwidth and the array regains a mirror soonest.
pub fn next_to_recover(candidates: &[Candidate], recovering: bool) -> Option<usize> {
    if recovering {
        return None;
    }
    candidates.iter().position(|c| {
        c.degraded
            && !c.diverged
            && c.since_attempt
                .is_none_or(|s| s >= backoff(c.failures).as_secs_f64())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Tid = Tid(0x03d0_0000_0000_0000);

    fn t(n: u64) -> Tid {
        Tid(T.0 + n)
    }

    #[test]
    fn resume_point_table() {
        let d = |n: u64, h: u64| Some((t(n), h));
        // (name, target last, source last, target digest, source digest, want)
        type Case = (
            &'static str,
            Tid,
            Tid,
            Option<Digest>,
            Option<Digest>,
            Result<Option<Tid>, &'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "empty target copies all",
                Tid::ZERO,
                t(9),
                None,
                None,
                Ok(None),
            ),
            ("empty both", Tid::ZERO, Tid::ZERO, None, None, Ok(None)),
            ("same last", t(9), t(9), d(9, 1), d(9, 1), Ok(Some(t(9)))),
            ("behind", t(5), t(9), d(5, 1), d(5, 1), Ok(Some(t(5)))),
            (
                "ahead of source",
                t(10),
                t(9),
                d(10, 1),
                None,
                Err("holds transactions the source lacks"),
            ),
            (
                "last not on source",
                t(5),
                t(9),
                d(5, 1),
                None,
                Err("not in the source's history"),
            ),
            (
                "content differs",
                t(5),
                t(9),
                d(5, 1),
                d(5, 2),
                Err("differs"),
            ),
            (
                "unreadable target",
                t(5),
                t(9),
                None,
                d(5, 2),
                Err("could not be read back"),
            ),
        ];
        for (name, tl, sl, td, sd, want) in cases {
            let got = resume_point(tl, sl, td, sd);
            match (&got, want) {
                (Ok(g), Ok(w)) => assert_eq!(*g, w, "{name}"),
                (Err(d), Err(w)) => {
                    assert_eq!(d.at, tl, "{name}");
                    let g = d.to_string();
                    assert!(g.contains(w), "{name}: {g}");
                    assert!(g.starts_with("diverged at "), "{name}: {g}");
                    assert!(g.contains(&tl.to_string()), "{name}: names the tid: {g}");
                }
                _ => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn progress_table() {
        let at = |unix: f64| timestamp::new_tid(unix, Tid::ZERO);
        let (a, b, c) = (at(1_000_000.0), at(1_000_050.0), at(1_000_100.0));
        let (d, e) = (at(1_000_000.001), at(1_000_100.0 - 0.001));
        // (name, start, at, goal, measured, copied, elapsed, percent, left, eta)
        let cases = [
            (
                "half way",
                Some(a),
                b,
                c,
                500,
                500,
                10.0,
                50.0,
                500,
                Some(10.0),
            ),
            ("done", Some(a), c, c, 1000, 1000, 10.0, 100.0, 0, Some(0.0)),
            ("nothing yet", Some(a), a, c, 0, 0, 0.0, 0.0, 0, None),
            ("nothing to do", Some(c), c, c, 0, 0, 0.0, 100.0, 0, None),
            (
                "from scratch, none copied",
                None,
                Tid::ZERO,
                c,
                0,
                0,
                0.5,
                0.0,
                0,
                None,
            ),
            (
                "from scratch, first copied",
                Some(a),
                a,
                c,
                0,
                1,
                0.5,
                0.0,
                0,
                None,
            ),
            (
                "from scratch, half way",
                Some(a),
                b,
                c,
                499,
                500,
                10.0,
                50.0,
                499,
                Some(10.0),
            ),
            (
                "a moment in",
                Some(a),
                d,
                c,
                4,
                5,
                0.1,
                0.0,
                400_000,
                Some(8000.0),
            ),
            (
                "nearly there",
                Some(a),
                e,
                c,
                999_990,
                999_991,
                100.0,
                100.0,
                10,
                Some(0.0),
            ),
        ];
        for (name, start, at, goal, measured, copied, elapsed, percent, left, eta) in cases {
            let p = progress(start, at, goal, measured, copied, elapsed);
            assert!((p.percent - percent).abs() < 0.2, "{name}: {p:?}");
            let tolerance = (left / 1000).max(1) as i64;
            assert!(
                (p.left as i64 - left as i64).abs() <= tolerance,
                "{name}: {p:?}, want {left} left"
            );
            match (p.eta, eta) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 0.5, "{name}: {p:?}"),
                (None, None) => {}
                _ => panic!("{name}: {p:?}"),
            }
        }
        // Never more left than the span's share allows: 1 s of a 100 s
        // span with 10 copied leaves about 990.
        let p = progress(Some(a), at(1_000_001.0), c, 10, 10, 1.0);
        assert!((980..=1000).contains(&p.left), "{p:?}");
    }

    #[test]
    fn backoff_doubles_to_five_minutes() {
        let want = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300];
        for (failures, secs) in want.iter().enumerate() {
            assert_eq!(
                backoff(failures as u32),
                Duration::from_secs(*secs),
                "{failures}"
            );
        }
        assert_eq!(backoff(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn next_to_recover_table() {
        let c = |degraded, diverged, since: Option<f64>, failures| Candidate {
            degraded,
            diverged,
            since_attempt: since,
            failures,
        };
        let ok = c(false, false, None, 0);
        let cases = [
            ("all optimal", vec![ok.clone(), ok.clone()], false, None),
            (
                "first degraded",
                vec![ok.clone(), c(true, false, None, 0)],
                false,
                Some(1),
            ),
            (
                "one at a time",
                vec![ok.clone(), c(true, false, None, 0)],
                true,
                None,
            ),
            (
                "configuration order",
                vec![c(true, false, None, 0), c(true, false, None, 0)],
                false,
                Some(0),
            ),
            (
                "diverged is left alone",
                vec![c(true, true, None, 0), c(true, false, None, 0)],
                false,
                Some(1),
            ),
            (
                "backoff not over",
                vec![c(true, false, Some(1.5), 2)],
                false,
                None,
            ),
            (
                "backoff over",
                vec![c(true, false, Some(2.0), 2)],
                false,
                Some(0),
            ),
            (
                "later one ready",
                vec![c(true, false, Some(0.1), 3), c(true, false, Some(9.0), 1)],
                false,
                Some(1),
            ),
        ];
        for (name, cands, recovering, want) in cases {
            assert_eq!(next_to_recover(&cands, recovering), want, "{name}");
        }
    }

    #[test]
    fn close_enough_bound() {
        assert!(close_enough(0));
        assert!(close_enough(CATCH_UP_UNDER_LOCK));
        assert!(!close_enough(CATCH_UP_UNDER_LOCK + 1));
    }
}
