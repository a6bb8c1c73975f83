//! Read balancing: which optimal backend serves the next read.
//!
//! Pure: the caller passes the candidates (optimal, in configuration
//! order), a round-robin counter, each candidate's recent latency and a
//! random number; [`pick`] returns the position to use. Latency is tracked
//! as an exponentially weighted moving average ([`ewma`]), so a backend
//! that turns slow loses its share of reads within a few requests (the
//! idea of Linux md's `read_balance`, which picks the least busy mirror).

use serde::Deserialize;

/// `read-policy` in the config.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ReadPolicy {
    /// Each read goes to the next optimal backend in turn.
    #[default]
    RoundRobin,
    /// Each read goes to a uniformly random optimal backend.
    Random,
    /// Reads go to the backend with the lowest recent latency; the others
    /// get a small share so their latency stays known.
    LeastLatency,
    /// Reads go to the first optimal backend in configuration order.
    Primary,
}

impl ReadPolicy {
    const ALL: [ReadPolicy; 4] = [
        ReadPolicy::RoundRobin,
        ReadPolicy::Random,
        ReadPolicy::LeastLatency,
        ReadPolicy::Primary,
    ];

    /// A small number for an atomic (a reload changes the policy live).
    pub fn code(self) -> u8 {
        ReadPolicy::ALL.iter().position(|p| *p == self).unwrap_or(0) as u8
    }

    pub fn from_code(c: u8) -> ReadPolicy {
        ReadPolicy::ALL.get(c as usize).copied().unwrap_or_default()
    }

    /// The config spelling.
    pub fn label(self) -> &'static str {
        match self {
            ReadPolicy::RoundRobin => "round-robin",
            ReadPolicy::Random => "random",
            ReadPolicy::LeastLatency => "least-latency",
            ReadPolicy::Primary => "primary",
        }
    }
}

/// Every this many reads, `least-latency` sends one to the next backend in
/// turn, so a backend that recovered from being slow is noticed.
pub const PROBE_EVERY: u64 = 16;

/// The position in `latency_us` (one entry per candidate) of the backend to
/// read from. `counter` increases by one per read; `random` is in `[0, 1)`.
/// `None` when there is no candidate.
pub fn pick(policy: ReadPolicy, latency_us: &[f64], counter: u64, random: f64) -> Option<usize> {
    let n = latency_us.len();
    if n == 0 {
        return None;
    }
    let turn = (counter % n as u64) as usize;
    Some(match policy {
        ReadPolicy::Primary => 0,
        ReadPolicy::RoundRobin => turn,
        ReadPolicy::Random => ((random * n as f64) as usize).min(n - 1),
        ReadPolicy::LeastLatency => {
            if counter % PROBE_EVERY == PROBE_EVERY - 1 {
                turn
            } else {
                // Lowest latency; the first listed among equals.
                latency_us
                    .iter()
                    .enumerate()
                    .fold(
                        (0, f64::INFINITY),
                        |best, (i, &l)| {
                            if l < best.1 {
                                (i, l)
                            } else {
                                best
                            }
                        },
                    )
                    .0
            }
        }
    })
}

/// The next moving average of a latency after a sample (weight 1/8, like
/// TCP's smoothed RTT); the first sample is taken as is.
pub fn ewma(previous_us: f64, sample_us: f64) -> f64 {
    if previous_us <= 0.0 {
        sample_us
    } else {
        previous_us + (sample_us - previous_us) / 8.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReadPolicy::*;

    #[test]
    fn pick_table() {
        type Case = (ReadPolicy, Vec<f64>, u64, f64, Option<usize>);
        let cases: Vec<Case> = vec![
            (RoundRobin, vec![], 0, 0.0, None),
            (Primary, vec![], 0, 0.0, None),
            (RoundRobin, vec![1.0, 1.0, 1.0], 0, 0.0, Some(0)),
            (RoundRobin, vec![1.0, 1.0, 1.0], 1, 0.0, Some(1)),
            (RoundRobin, vec![1.0, 1.0, 1.0], 5, 0.0, Some(2)),
            (Primary, vec![9.0, 1.0], 7, 0.5, Some(0)),
            (Random, vec![1.0, 1.0], 0, 0.0, Some(0)),
            (Random, vec![1.0, 1.0], 0, 0.49, Some(0)),
            (Random, vec![1.0, 1.0], 0, 0.5, Some(1)),
            (Random, vec![1.0, 1.0], 0, 0.999_999, Some(1)),
            (LeastLatency, vec![300.0, 100.0, 200.0], 0, 0.0, Some(1)),
            (LeastLatency, vec![100.0, 100.0], 3, 0.0, Some(0)),
            // Every PROBE_EVERY-th read goes round-robin.
            (
                LeastLatency,
                vec![300.0, 100.0, 200.0],
                PROBE_EVERY - 1,
                0.0,
                Some(((PROBE_EVERY - 1) % 3) as usize),
            ),
            // Unknown latency (0) counts as fastest: a new backend gets tried.
            (LeastLatency, vec![100.0, 0.0], 0, 0.0, Some(1)),
        ];
        for (policy, lat, counter, random, want) in cases {
            assert_eq!(
                pick(policy, &lat, counter, random),
                want,
                "{policy:?} {lat:?} {counter}"
            );
        }
    }

    #[test]
    fn least_latency_moves_load_off_a_slow_backend() {
        let mut lat = [0.0, 0.0];
        let mut served = [0usize; 2];
        for counter in 0..1000u64 {
            let i = pick(LeastLatency, &lat, counter, 0.0).unwrap();
            served[i] += 1;
            // Backend 1 is ten times slower.
            lat[i] = ewma(lat[i], if i == 0 { 100.0 } else { 1000.0 });
        }
        assert!(served[0] > 900, "{served:?}");
        assert!(served[1] > 0, "the slow one is still probed: {served:?}");
    }

    #[test]
    fn ewma_table() {
        for (prev, sample, want) in [
            (0.0, 80.0, 80.0),
            (80.0, 80.0, 80.0),
            (80.0, 160.0, 90.0),
            (80.0, 0.0, 70.0),
        ] {
            assert_eq!(ewma(prev, sample), want);
        }
    }
}
