//! How often refused connections are logged. A client that is refused
//! (a TLS handshake without a valid certificate, a plaintext client on the
//! TLS port) usually reconnects at once — a stock ZEO client does so in a
//! loop, about 500 times a second — so the first refusal from a host is
//! logged, the repeats (same host, same reason) within [`WINDOW`] are
//! counted, and the next line after the window says how many were not
//! logged. A different reason from the same host gets its own line.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One line per host per this long.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Hosts remembered at most (older entries are dropped first).
const MAX_HOSTS: usize = 4096;

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` refusals from this host were not logged since
    /// the last line.
    Log { suppressed: u64 },
    /// Count it, do not log it.
    Quiet,
}

struct Entry {
    logged_at: Instant,
    suppressed: u64,
}

#[derive(Default)]
pub struct Refusals {
    hosts: HashMap<String, Entry>,
}

/// The host part of a peer name: `10.0.0.7:51234` → `10.0.0.7`,
/// `[::1]:8100` → `[::1]`; other names (a Unix socket peer) as they are.
pub fn host_of(peer: &str) -> &str {
    match peer.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() && !host.is_empty() => host,
        _ => peer,
    }
}

impl Refusals {
    /// Whether to log a refusal of `peer` for `reason` now.
    pub fn check(&mut self, peer: &str, reason: &str, now: Instant) -> Verdict {
        let key = format!("{}\n{reason}", host_of(peer));
        if let Some(e) = self.hosts.get_mut(&key) {
            if now.saturating_duration_since(e.logged_at) < WINDOW {
                e.suppressed += 1;
                return Verdict::Quiet;
            }
            let suppressed = e.suppressed;
            *e = Entry {
                logged_at: now,
                suppressed: 0,
            };
            return Verdict::Log { suppressed };
        }
        if self.hosts.len() >= MAX_HOSTS {
            self.hosts
                .retain(|_, e| now.saturating_duration_since(e.logged_at) < WINDOW);
            if self.hosts.len() >= MAX_HOSTS {
                self.hosts.clear();
            }
        }
        self.hosts.insert(
            key,
            Entry {
                logged_at: now,
                suppressed: 0,
            },
        );
        Verdict::Log { suppressed: 0 }
    }
}

/// The suffix a logged refusal gets when others were counted.
pub fn suppressed_note(host: &str, suppressed: u64) -> String {
    if suppressed == 0 {
        String::new()
    } else {
        format!(
            " ({suppressed} more refusals from {host} in the last {} s were not logged)",
            WINDOW.as_secs()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let table = [
            ("10.0.0.7:51234", "10.0.0.7"),
            ("[::1]:8100", "[::1]"),
            ("unix socket (pid 7, uid 0)", "unix socket (pid 7, uid 0)"),
            ("host:notaport", "host:notaport"),
        ];
        for (peer, host) in table {
            assert_eq!(host_of(peer), host, "{peer}");
        }
    }

    #[test]
    fn one_line_per_host_per_window() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut r = Refusals::default();
        // (peer, reason, seconds after t0, verdict)
        let table = [
            ("10.0.0.7:1", "a", 0, Verdict::Log { suppressed: 0 }),
            ("10.0.0.7:2", "a", 0, Verdict::Quiet),
            ("10.0.0.7:2", "b", 0, Verdict::Log { suppressed: 0 }),
            ("10.0.0.7:3", "a", 59, Verdict::Quiet),
            ("10.0.0.8:1", "a", 59, Verdict::Log { suppressed: 0 }),
            ("10.0.0.7:4", "a", 60, Verdict::Log { suppressed: 2 }),
            ("10.0.0.7:5", "a", 61, Verdict::Quiet),
            ("10.0.0.7:6", "a", 200, Verdict::Log { suppressed: 1 }),
            ("10.0.0.7:7", "a", 300, Verdict::Log { suppressed: 0 }),
        ];
        for (peer, reason, at, want) in table {
            assert_eq!(
                r.check(peer, reason, s(at)),
                want,
                "{peer} {reason} at {at}"
            );
        }
        assert_eq!(suppressed_note("h", 0), "");
        assert!(suppressed_note("h", 3).contains("3 more refusals from h"));
    }

    #[test]
    fn the_table_stays_bounded() {
        let t0 = Instant::now();
        let mut r = Refusals::default();
        for i in 0..(MAX_HOSTS as u32 * 2) {
            r.check(
                &format!("10.{}.{}.{}:1", i >> 16, (i >> 8) & 255, i & 255),
                "x",
                t0,
            );
        }
        assert!(r.hosts.len() <= MAX_HOSTS);
    }
}
