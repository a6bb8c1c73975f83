//! TLS configuration from PEM files, for the server (`[server.tls]`) and
//! for the client's backends (`[storage.backend.tls]`), with errors that
//! name the file and say what is wrong with it: unreadable, no certificate
//! in it, no key in it, a key that does not belong to the certificate, a
//! certificate that has expired or is not valid yet.
//!
//! rustls with the `ring` provider; TLS 1.2 and 1.3. The server asks for
//! client certificates only when `client-ca` is set, and then refuses a
//! client without one from that CA. The client verifies the server against
//! `ca` (or the system's CA bundle when `ca` is not set) and the server
//! name (`server-hostname`, else the host of the address).
//!
//! Dates: an expired server certificate is served (clients refuse it and
//! say so) but logged as an error at start and reload, so a restart does
//! not turn an expiry into a refusal to start; the client refuses to use
//! an expired certificate of its own (the server would refuse it anyway).
//! [`validity`] reads a certificate's dates with a small DER walk.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[cfg(feature = "tls")]
mod load;
#[cfg(feature = "tls")]
pub use ::rustls;
#[cfg(feature = "tls")]
pub use load::{explain, load_certs, load_client, load_key, load_server, server_name};

#[cfg(not(feature = "tls"))]
mod off;
#[cfg(not(feature = "tls"))]
pub use off::{explain, load_client, load_server, rustls, server_name};

/// `[server.tls]` as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
    /// Only clients with a certificate from this CA get in.
    pub client_ca: Option<PathBuf>,
}

/// `[storage.backend.tls]` as files.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientFiles {
    /// CA that signed the server's certificate; `None`: the system's CAs.
    pub ca: Option<PathBuf>,
    /// Our certificate and key, for a server that authenticates clients.
    pub certificate: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name the server's certificate must carry; `None`: the host of
    /// the address.
    pub server_hostname: Option<String>,
}

/// A loaded server configuration.
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub files: ServerFiles,
    /// The certificate's notAfter (Unix seconds), for status and metrics.
    pub not_after: Option<i64>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .field("not_after", &self.not_after)
            .finish()
    }
}

#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64
}

/// Why a certificate's dates make it unusable now, naming the file (pure).
pub fn date_problem(file: &Path, dates: (i64, i64), now: i64) -> Option<String> {
    let (not_before, not_after) = dates;
    if now > not_after {
        Some(format!(
            "TLS certificate {} expired on {}",
            file.display(),
            format_utc(not_after)
        ))
    } else if now < not_before {
        Some(format!(
            "TLS certificate {} is not valid before {}",
            file.display(),
            format_utc(not_before)
        ))
    } else {
        None
    }
}

// ---------------------------------------------------------------------------
// Certificate dates.

/// One DER element: (tag, content, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// (notBefore, notAfter) of an X.509 certificate in Unix seconds; `None`
/// when it is not one (pure).
pub fn validity(cert: &[u8]) -> Option<(i64, i64)> {
    let (0x30, cert, _) = der(cert)? else {
        return None;
    };
    let (0x30, tbs, _) = der(cert)? else {
        return None;
    };
    let (mut tag, _, mut rest) = der(tbs)?;
    if tag == 0xa0 {
        // [0] version, then the serial number.
        (tag, _, rest) = der(rest)?;
    }
    if tag != 0x02 {
        return None;
    }
    let (0x30, _, rest) = der(rest)? else {
        return None; // signature algorithm
    };
    let (0x30, _, rest) = der(rest)? else {
        return None; // issuer
    };
    let (0x30, validity, _) = der(rest)? else {
        return None;
    };
    let (t1, v1, rest) = der(validity)?;
    let (t2, v2, _) = der(rest)?;
    Some((asn1_time(t1, v1)?, asn1_time(t2, v2)?))
}

/// UTCTime (0x17, YYMMDDHHMMSSZ) or GeneralizedTime (0x18,
/// YYYYMMDDHHMMSSZ) to Unix seconds.
fn asn1_time(tag: u8, v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if s.len() == 12 => {
            let yy: i64 = s[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &s[2..])
        }
        0x18 if s.len() == 14 => (s[..4].parse().ok()?, &s[4..]),
        _ => return None,
    };
    let num = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (mo, d, h, mi, se) = (num(0)?, num(2)?, num(4)?, num(6)?, num(8)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    Some(days_from_civil(year, mo, d) * 86400 + h * 3600 + mi * 60 + se)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_utc(t: i64) -> String {
    let days = t.div_euclid(86400);
    let secs = t.rem_euclid(86400);
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        let table: [(u8, &str, Option<i64>); 8] = [
            (0x17, "700101000000Z", Some(0)),
            (0x17, "491231235959Z", Some(2524607999)),
            (0x18, "20261130060000Z", Some(1796018400)),
            (0x18, "99991231235959Z", Some(253402300799)),
            (0x17, "7001010000Z", None),
            (0x17, "701301000000Z", None),
            (0x17, "700101000000", None),
            (0x05, "700101000000Z", None),
        ];
        for (tag, s, want) in table {
            assert_eq!(asn1_time(tag, s.as_bytes()), want, "{s}");
        }
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(1796018400), "2026-11-30 06:00:00 UTC");
        assert_eq!(format_utc(951782400), "2000-02-29 00:00:00 UTC");
        for t in [0, 86399, 951782400, 2524607999, 4102444800] {
            let s = format_utc(t);
            let g = format!(
                "{}{}{}{}{}{}Z",
                &s[0..4],
                &s[5..7],
                &s[8..10],
                &s[11..13],
                &s[14..16],
                &s[17..19]
            );
            assert_eq!(asn1_time(0x18, g.as_bytes()), Some(t), "{s}");
        }
    }

    #[test]
    fn dates() {
        let f = Path::new("server.pem");
        let table = [
            ((100, 200), 150, None),
            (
                (100, 200),
                201,
                Some("server.pem expired on 1970-01-01 00:03:20 UTC"),
            ),
            (
                (100, 200),
                99,
                Some("server.pem is not valid before 1970-01-01 00:01:40 UTC"),
            ),
            ((100, 200), 200, None),
        ];
        for (d, now, want) in table {
            let got = date_problem(f, d, now);
            match want {
                None => assert_eq!(got, None),
                Some(w) => assert!(got.as_deref().unwrap_or("").contains(w), "{got:?}"),
            }
        }
    }

    #[test]
    fn not_certificates() {
        for bad in [&b""[..], b"\x30", b"\x30\x03\x02\x01\x00", b"\x04\x00"] {
            assert_eq!(validity(bad), None, "{bad:?}");
        }
    }
}
