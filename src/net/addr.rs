//! Addresses as ZEO takes them: `host:port` for TCP, or a filesystem path
//! for a Unix socket (ZEO's `address` is either a `(host, port)` pair or a
//! path string). A value containing `/` is a path; anything else is
//! `host:port`.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `host:port`, resolved when used (a server needs an IP address).
    Tcp(String),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl Address {
    /// Parse a configured address; relative socket paths are taken
    /// relative to `base` (the config file's directory).
    pub fn parse(value: &str, base: Option<&Path>) -> Result<Address, String> {
        let v = value.trim();
        if v.is_empty() {
            return Err("empty address: give host:port or a Unix socket path".into());
        }
        if v.contains('/') {
            let p = PathBuf::from(v);
            if v.ends_with('/') || p.file_name().is_none() {
                return Err(format!("{v:?} names a directory, not a socket file"));
            }
            let p = match base {
                Some(b) if p.is_relative() => b.join(p),
                _ => p,
            };
            // sun_path holds 108 bytes including the terminating NUL.
            if p.as_os_str().len() > 107 {
                return Err(format!(
                    "Unix socket path {} is {} bytes; the system allows 107 (use a shorter path)",
                    p.display(),
                    p.as_os_str().len()
                ));
            }
            return Ok(Address::Unix(p));
        }
        match v.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Address::Tcp(v.to_string()))
            }
            _ => Err(format!(
                "{v:?} is neither host:port (port 0-65535) nor a Unix socket path (which contains a /)"
            )),
        }
    }

    /// The host part of a TCP address, without IPv6 brackets (the TLS
    /// server name when none is configured).
    pub fn host(&self) -> Option<&str> {
        match self {
            Address::Tcp(a) => a
                .rsplit_once(':')
                .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']')),
            Address::Unix(_) => None,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(a) => f.write_str(a),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let base = Path::new("/etc/zeoraid");
        let long = format!("/{}", "x".repeat(120));
        // (input, expected address or error fragment)
        let table: Vec<(&str, Result<Address, &str>)> = vec![
            ("127.0.0.1:8100", Ok(Address::Tcp("127.0.0.1:8100".into()))),
            ("[::1]:8100", Ok(Address::Tcp("[::1]:8100".into()))),
            (
                "db.example.org:0",
                Ok(Address::Tcp("db.example.org:0".into())),
            ),
            (" /run/z.sock ", Ok(Address::Unix("/run/z.sock".into()))),
            (
                "var/z.sock",
                Ok(Address::Unix("/etc/zeoraid/var/z.sock".into())),
            ),
            (
                "./z.sock",
                Ok(Address::Unix("/etc/zeoraid/./z.sock".into())),
            ),
            ("", Err("empty address")),
            ("nowhere", Err("neither host:port")),
            ("host:99999", Err("neither host:port")),
            (":8100", Err("neither host:port")),
            ("/run/", Err("names a directory")),
            (&long, Err("the system allows 107")),
        ];
        for (input, want) in table {
            match (Address::parse(input, Some(base)), want) {
                (Ok(a), Ok(w)) => assert_eq!(a, w, "{input:?}"),
                (Err(e), Err(frag)) => assert!(e.contains(frag), "{input:?}: {e}"),
                (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn host_and_display() {
        let a = Address::parse("[::1]:8100", None).unwrap();
        assert_eq!(a.host(), Some("::1"));
        assert_eq!(a.to_string(), "[::1]:8100");
        let u = Address::parse("/run/z.sock", None).unwrap();
        assert_eq!(u.host(), None);
        assert_eq!(u.to_string(), "unix:/run/z.sock");
    }
}
