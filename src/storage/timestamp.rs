//! ZODB TimeStamps: the 8-byte transaction ids.
//!
//! The first four bytes count minutes since 1900-01-01 00:00 UTC in a
//! calendar with 31-day months (`((((y-1900)*12 + m-1)*31 + d-1)*24 + h)*60 + mi`);
//! the last four are the fraction of that minute in units of 60/2^32 s.
//! This matches `persistent.TimeStamp` byte for byte (see the vector table
//! in the tests, produced with persistent 6.9).

use super::Tid;

const SCONV: f64 = 60.0 / 4_294_967_296.0;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The broken-down fields of a TimeStamp: year, month, day, hour, minute, seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fields {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: f64,
}

fn encode_minutes(f: &Fields) -> u32 {
    let v = ((((f.year - 1900) * 12 + f.month as i64 - 1) * 31 + f.day as i64 - 1) * 24
        + f.hour as i64)
        * 60
        + f.minute as i64;
    v.clamp(0, u32::MAX as i64) as u32
}

/// Build a TimeStamp from fields (as `persistent.TimeStamp(y, m, d, h, mi, s)`).
pub fn from_fields(f: &Fields) -> Tid {
    let hi = encode_minutes(f) as u64;
    let lo = ((f.second / SCONV) as u64).min(u32::MAX as u64);
    Tid((hi << 32) | lo)
}

/// Decode the fields of a TimeStamp.
pub fn fields(tid: Tid) -> Fields {
    let hi = (tid.0 >> 32) as i64;
    let lo = (tid.0 & 0xffff_ffff) as f64;
    let minute = (hi % 60) as u32;
    let rest = hi / 60;
    let hour = (rest % 24) as u32;
    let rest = rest / 24;
    let day = (rest % 31) as u32 + 1;
    let rest = rest / 31;
    let month = (rest % 12) as u32 + 1;
    let year = rest / 12 + 1900;
    Fields {
        year,
        month,
        day,
        hour,
        minute,
        second: lo * SCONV,
    }
}

/// Seconds since the Unix epoch (as `TimeStamp.timeTime()`).
pub fn time_time(tid: Tid) -> f64 {
    let f = fields(tid);
    let days = days_from_civil(f.year, f.month, f.day);
    (days * 86_400 + f.hour as i64 * 3600 + f.minute as i64 * 60) as f64 + f.second
}

/// The TimeStamp of a Unix time (as ZODB's `TimeStamp(*gmtime(t)[:5] + (t % 60,))`).
pub fn from_unix(t: f64) -> Tid {
    let secs = t.floor() as i64;
    let days = secs.div_euclid(86_400);
    let in_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    from_fields(&Fields {
        year,
        month,
        day,
        hour: (in_day / 3600) as u32,
        minute: ((in_day / 60) % 60) as u32,
        second: t.rem_euclid(60.0),
    })
}

/// The smallest TimeStamp strictly greater than `tid` (as `TimeStamp.laterThan`).
pub fn successor(tid: Tid) -> Tid {
    if tid.0 & 0xffff_ffff != 0xffff_ffff {
        return Tid(tid.0 + 1);
    }
    // The fraction overflows: next minute, with calendar normalisation.
    let f = fields(tid);
    let days = days_from_civil(f.year, f.month, f.day);
    let minutes = days * 1440 + f.hour as i64 * 60 + f.minute as i64 + 1;
    let (year, month, day) = civil_from_days(minutes.div_euclid(1440));
    let m = minutes.rem_euclid(1440);
    from_fields(&Fields {
        year,
        month,
        day,
        hour: (m / 60) as u32,
        minute: (m % 60) as u32,
        second: 0.0,
    })
}

/// A new transaction id: now, but strictly after `last` (ZODB's `newTid`).
pub fn new_tid(now_unix: f64, last: Tid) -> Tid {
    let now = from_unix(now_unix);
    if now > last {
        now
    } else {
        successor(last)
    }
}

/// The current wall-clock time as Unix seconds.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Vector = ((i64, u32, u32, u32, u32, f64), u64, f64);

    /// Vectors produced by persistent 6.9's `TimeStamp(...)`, `.raw()`, `.timeTime()`.
    const VECTORS: &[Vector] = &[
        ((1900, 1, 1, 0, 0, 0.0), 0x0000000000000000, -2208988800.0),
        (
            (2026, 11, 25, 8, 30, 12.5),
            0x040d3fbe35555555,
            1795595412.5,
        ),
        (
            (2000, 2, 29, 23, 59, 59.999),
            0x0332b37ffffee861,
            951868799.9990001,
        ),
        ((1970, 1, 1, 0, 0, 0.0), 0x023c2b0000000000, 0.0),
        ((2038, 1, 19, 3, 14, 7.0), 0x046863021ddddddd, 2147483647.0),
    ];

    #[test]
    fn matches_persistent_timestamp() {
        for &((year, month, day, hour, minute, second), raw, tt) in VECTORS {
            let f = Fields {
                year,
                month,
                day,
                hour,
                minute,
                second,
            };
            let tid = from_fields(&f);
            assert_eq!(tid.0, raw, "raw of {f:?}");
            assert!((time_time(tid) - tt).abs() < 1e-6, "timeTime of {f:?}");
            let back = fields(tid);
            assert_eq!(
                (back.year, back.month, back.day, back.hour, back.minute),
                (year, month, day, hour, minute)
            );
        }
    }

    #[test]
    fn unix_round_trip() {
        for t in [0.0, 1234567890.5, 1795595412.5, 951868799.25] {
            let tid = from_unix(t);
            assert!((time_time(tid) - t).abs() < 1e-6, "{t}");
        }
    }

    #[test]
    fn successor_table() {
        // (input, expected) — the second row is persistent's laterThan on an overflowing fraction.
        let cases = [
            (0x0000000000000000u64, 0x0000000000000001u64),
            (0x03d5e2c0ffffffff, 0x03d5e2c100000000),
            // 1900-01-31 23:59 + 1 minute -> 1900-02-01 00:00
            (
                from_fields(&Fields {
                    year: 1900,
                    month: 1,
                    day: 31,
                    hour: 23,
                    minute: 59,
                    second: 0.0,
                })
                .0 | 0xffff_ffff,
                from_fields(&Fields {
                    year: 1900,
                    month: 2,
                    day: 1,
                    hour: 0,
                    minute: 0,
                    second: 0.0,
                })
                .0,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(successor(Tid(input)).0, expected, "{input:x}");
        }
    }

    #[test]
    fn new_tid_is_strictly_increasing() {
        let last = from_unix(2_000_000_000.0);
        assert!(new_tid(1_000_000_000.0, last) > last);
        assert_eq!(new_tid(1_000_000_000.0, last), successor(last));
        assert!(new_tid(3_000_000_000.0, last) > last);
    }
}
