//! The recovery rate guarantee (`recovery-ratio`): while a backend
//! recovers, a new commit goes ahead only against credit the copy has
//! earned, so the recovery copies at least `ratio` transactions for each
//! transaction committed meanwhile, and therefore always finishes.
//!
//! The controller is a plain value the array keeps under a mutex; time is
//! passed in (seconds on any monotonic clock). Two promises, both
//! table-tested below:
//!
//! - **the backlog never grows**: every commit admitted is paid for with
//!   `1 / ratio` of a copied transaction's credit — in advance, or (after
//!   a forced admission) out of the next credit earned, before any other
//!   commit goes ahead;
//! - **commits are never starved**: a commit waits at most
//!   [`MAX_STALL`] since the last admission, even when the copy earns
//!   nothing (a stalled source); it is then admitted on credit (the debt
//!   is paid first, see above). Commits are slowed, never refused.
//!
//! Credit saved while nobody commits is capped at [`BURST`] commits, so a
//! quiet spell does not buy a burst that outruns the copy.

/// Longest a commit waits for credit after the previous admission.
pub const MAX_STALL: f64 = 1.0;

/// Most commits that saved credit admits at once.
pub const BURST: f64 = 8.0;

/// Whether a commit may go ahead now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Admission {
    /// Go ahead.
    Now,
    /// Ask again after this many seconds at the latest (or as soon as the
    /// copy earns credit).
    Wait(f64),
}

/// The credit account of one recovery.
#[derive(Clone, Debug, PartialEq)]
pub struct Credit {
    ratio: f64,
    /// Commits that may go ahead now; negative after a forced admission.
    balance: f64,
    /// When the last commit was admitted.
    last_admit: f64,
    /// Commits admitted while the recovery ran.
    pub admitted: u64,
    /// Of those, admitted on credit after waiting [`MAX_STALL`].
    pub forced: u64,
    /// Commits that had to wait at least once.
    pub throttled: u64,
}

impl Credit {
    /// A new account for a recovery with `ratio` (> 1) starting at `now`;
    /// the first commit goes ahead at once.
    pub fn new(ratio: f64, now: f64) -> Credit {
        Credit {
            ratio: if ratio.is_finite() && ratio >= 1.0 {
                ratio
            } else {
                1.0
            },
            balance: 1.0,
            last_admit: now,
            admitted: 0,
            forced: 0,
            throttled: 0,
        }
    }

    /// The copy wrote `copied` more transactions.
    pub fn earn(&mut self, copied: u64) {
        self.balance = (self.balance + copied as f64 / self.ratio).min(BURST);
    }

    /// Whether a commit asking at `now` goes ahead. `waited`: this commit
    /// has asked before (counts it as throttled once).
    pub fn admit(&mut self, now: f64, waited: bool) -> Admission {
        if self.balance >= 1.0 - 1e-9 || now - self.last_admit >= MAX_STALL {
            if self.balance < 1.0 - 1e-9 {
                self.forced += 1;
            }
            self.balance -= 1.0;
            self.last_admit = now;
            self.admitted += 1;
            if waited {
                self.throttled += 1;
            }
            return Admission::Now;
        }
        Admission::Wait((MAX_STALL - (now - self.last_admit)).max(0.001))
    }

    /// Credit left, in commits (negative: owed).
    pub fn balance(&self) -> f64 {
        self.balance
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug)]
    enum Ev {
        Earn(u64),
        /// A commit asks at this time; expected answer.
        Ask(f64, bool),
    }

    #[test]
    fn admission_table() {
        use Ev::*;
        // (name, ratio, events) — Ask(t, admitted?)
        let cases: Vec<(&str, f64, Vec<Ev>)> = vec![
            ("first commit goes at once", 2.0, vec![Ask(0.0, true)]),
            (
                "second waits for credit",
                2.0,
                vec![Ask(0.0, true), Ask(0.1, false)],
            ),
            (
                "two copies buy one commit at ratio 2",
                2.0,
                vec![
                    Ask(0.0, true),
                    Earn(1),
                    Ask(0.1, false),
                    Earn(1),
                    Ask(0.1, true),
                ],
            ),
            (
                "ratio 4 needs four",
                4.0,
                vec![
                    Ask(0.0, true),
                    Earn(3),
                    Ask(0.1, false),
                    Earn(1),
                    Ask(0.1, true),
                ],
            ),
            (
                "a stalled copy still admits one commit per MAX_STALL",
                2.0,
                vec![
                    Ask(0.0, true),
                    Ask(0.5, false),
                    Ask(1.0, true),
                    Ask(1.5, false),
                    Ask(2.0, true),
                ],
            ),
            (
                "a forced admission is paid back before the next",
                2.0,
                vec![
                    Ask(0.0, true),
                    Ask(1.0, true), // forced: balance -1
                    Earn(2),        // pays the debt: 0
                    Ask(1.1, false),
                    Earn(2),
                    Ask(1.1, true),
                ],
            ),
            (
                "saved credit is capped at BURST",
                2.0,
                vec![
                    Earn(1000),
                    Ask(0.0, true),
                    Ask(0.0, true),
                    Ask(0.0, true),
                    Ask(0.0, true),
                    Ask(0.0, true),
                    Ask(0.0, true),
                    Ask(0.0, true),
                    Ask(0.0, true),
                    Ask(0.0, false),
                ],
            ),
            (
                "a ratio below 1 is taken as 1",
                0.5,
                vec![Ask(0.0, true), Earn(1), Ask(0.0, true), Ask(0.0, false)],
            ),
        ];
        for (name, ratio, events) in cases {
            let mut c = Credit::new(ratio, 0.0);
            for (k, ev) in events.iter().enumerate() {
                if let Ask(t, want) = *ev {
                    let got = c.admit(t, false) == Admission::Now;
                    assert_eq!(got, want, "{name}: event {k} {ev:?}, {c:?}");
                } else if let Earn(n) = *ev {
                    c.earn(n);
                }
            }
        }
    }

    #[test]
    fn wait_says_when_to_ask_again() {
        let mut c = Credit::new(2.0, 0.0);
        assert_eq!(c.admit(0.0, false), Admission::Now);
        match c.admit(0.25, false) {
            Admission::Wait(w) => assert!((w - 0.75).abs() < 1e-9, "{w}"),
            a => panic!("{a:?}"),
        }
        assert_eq!(c.admit(1.0, true), Admission::Now);
        assert_eq!((c.admitted, c.forced, c.throttled), (2, 1, 1));
    }

    /// Simulated runs: a copy earning at `copy_rate` transactions/s while
    /// commits ask as fast as they can (every millisecond). The backlog
    /// (committed − copied) must shrink by at least (1 − 1/ratio) of what
    /// is copied, and commits must go on.
    #[test]
    fn never_grows_the_backlog_never_starves_commits() {
        // (ratio, copies per second, seconds)
        let cases = [
            (2.0, 1000.0, 5.0),
            (2.0, 10.0, 5.0),
            (3.0, 250.0, 4.0),
            (1.5, 5000.0, 2.0),
            (2.0, 0.0, 5.0),
            (10.0, 0.3, 10.0),
        ];
        for (ratio, rate, secs) in cases {
            let mut c = Credit::new(ratio, 0.0);
            let (mut t, step) = (0.0, 0.001);
            let (mut copied, mut earned_part) = (0u64, 0.0f64);
            while t < secs {
                earned_part += rate * step;
                let whole = earned_part.floor();
                if whole >= 1.0 {
                    c.earn(whole as u64);
                    copied += whole as u64;
                    earned_part -= whole;
                }
                let _ = c.admit(t, false);
                t += step;
            }
            let admitted = c.admitted as f64;
            // Commits paid for by copies, plus the first, the saved
            // burst, and one per stall at most.
            let allowed = copied as f64 / ratio + 1.0 + BURST + c.forced as f64;
            assert!(
                admitted <= allowed,
                "ratio {ratio} rate {rate}: {admitted} commits for {copied} copies"
            );
            if rate * ratio < 1.0 / MAX_STALL {
                // The copy is slower than one commit per stall: commits
                // still go on, at one per MAX_STALL.
                assert!(
                    admitted >= (secs / MAX_STALL).floor(),
                    "ratio {ratio} rate {rate}: only {admitted} commits in {secs} s"
                );
            } else {
                // A working copy sets the pace (or the commits' own, when
                // they ask less often than the copy pays for).
                let asks = (secs / step).floor();
                assert!(
                    admitted >= (copied as f64 / ratio - 2.0).min(asks - 1.0),
                    "ratio {ratio} rate {rate}: {admitted} commits for {copied} copies"
                );
                assert!(
                    admitted - copied as f64 / ratio <= 1.0 + BURST + c.forced as f64,
                    "ratio {ratio} rate {rate}"
                );
            }
        }
    }
}
