//! Sizes in bytes as the config writes them: a number of bytes, or a
//! string with a unit as ZConfig's `byte-size` takes them (`"64MB"`,
//! `"1.5 GB"`, `"512kb"`; KB, MB, GB and TB are powers of 1024, as in
//! ZODB's and ZEO's configs).

use serde::de::{self, Deserializer, Visitor};
use std::fmt;

/// A size in bytes (`cache-size = "256MB"` or `cache-size = 268435456`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// `text` as a size, or why not.
pub fn parse(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_uppercase();
    let scale: u64 = match unit.as_str() {
        "" | "B" => 1,
        "KB" | "K" | "KIB" => 1 << 10,
        "MB" | "M" | "MIB" => 1 << 20,
        "GB" | "G" | "GIB" => 1 << 30,
        "TB" | "T" | "TIB" => 1 << 40,
        _ => {
            return Err(format!(
                "{text:?} is not a size: write a number of bytes or one with KB, MB, GB or TB \
                 (e.g. \"256MB\")"
            ))
        }
    };
    let value: f64 = number.parse().map_err(|_| {
        format!("{text:?} is not a size: it needs a number before the unit (e.g. \"256MB\")")
    })?;
    let bytes = value * scale as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("{text:?} is too large"));
    }
    Ok(bytes.round() as u64)
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size: a number of bytes or a string such as \"256MB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v} is not a size: it must not be negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, shift) in [("TB", 40), ("GB", 30), ("MB", 20), ("KB", 10)] {
            if b >= 1 << shift && b.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", b >> shift);
            }
        }
        write!(f, "{b}")
    }
}

/// `bytes` for people: "512 bytes", "904.8 KB", "64.0 MB" (powers of 1024).
pub fn human(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64;
    let mut unit = "bytes";
    for u in ["KB", "MB", "GB", "TB"] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    format!("{value:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let table: &[(&str, Result<u64, &str>)] = &[
            ("0", Ok(0)),
            ("1024", Ok(1024)),
            ("64MB", Ok(64 << 20)),
            ("64 mb", Ok(64 << 20)),
            ("1.5GB", Ok(3 << 29)),
            ("512kb", Ok(512 << 10)),
            ("2TB", Ok(2 << 40)),
            ("100B", Ok(100)),
            ("64 parsecs", Err("is not a size")),
            ("MB", Err("needs a number")),
            ("-5MB", Err("is not a size")),
            ("1.2.3MB", Err("needs a number")),
        ];
        for (text, want) in table {
            match (parse(text), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, *w, "{text}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{text}: {e}"),
                (got, want) => panic!("{text}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn shown_in_the_largest_whole_unit() {
        assert_eq!(ByteSize(64 << 20).to_string(), "64MB");
        assert_eq!(ByteSize(1536 << 20).to_string(), "1536MB");
        assert_eq!(ByteSize(1000).to_string(), "1000");
        assert_eq!(ByteSize(0).to_string(), "0");
    }

    #[test]
    fn for_people() {
        assert_eq!(human(512), "512 bytes");
        assert_eq!(human(926_464), "904.8 KB");
        assert_eq!(human(64 << 20), "64.0 MB");
        assert_eq!(human(3 << 30), "3.0 GB");
    }

    #[test]
    fn from_toml() {
        #[derive(serde::Deserialize)]
        struct T {
            a: ByteSize,
            b: ByteSize,
        }
        let t: T = toml::from_str("a = 4096\nb = \"2MB\"").unwrap();
        assert_eq!((t.a, t.b), (ByteSize(4096), ByteSize(2 << 20)));
        let e = toml::from_str::<T>("a = -1\nb = 1")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("must not be negative"), "{e}");
        let e = toml::from_str::<T>("a = 1\nb = \"lots\"")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("is not a size"), "{e}");
    }
}
