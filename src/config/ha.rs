//! `[ha]`: controller high availability (issue #26) — where etcd is, the
//! cluster this controller belongs to, its name, and the leadership
//! lease's timing. Schema and validation only; what the server does with
//! it is the HA layer's business ([`crate::ha`]).
//!
//! ```toml
//! [ha]
//! endpoints = ["10.0.0.1:2379", "10.0.0.2:2379", "10.0.0.3:2379"]
//! cluster = "zodb-prod"      # the etcd key prefix of this cluster's controllers
//! name = "ctl-a"             # this controller, unique in the cluster
//! lease-ttl = 3              # seconds without renewal before another takes over
//! renew-interval = 1         # seconds between renewals (default lease-ttl / 3)
//! ```
//!
//! Controllers of one cluster take turns serving the same arrays, so the
//! arrays must mirror onto ZEO servers every controller reaches: an `[ha]`
//! configuration with an in-process `file` or `memory` storage (an array's
//! backend or a storage of its own) is refused at load.

use super::{BackendKind, ConfigError, StorageConfig, StorageKind};
use serde::Deserialize;
use std::collections::HashSet;
use std::time::Duration;

/// The default lease TTL in seconds.
pub const DEFAULT_LEASE_TTL: u64 = 3;

/// The bounds of `lease-ttl`, seconds. etcd raises a shorter lease to its
/// minimum (2 s with its default election timeout); past a few minutes a
/// dead controller would keep its arrays unserved for that long.
const LEASE_TTL_RANGE: (u64, u64) = (2, 300);

/// `[ha]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HaConfig {
    /// `host:port` of each etcd member's client URL (plain HTTP).
    pub endpoints: Vec<String>,
    /// This cluster's name: the prefix of its keys in etcd.
    pub cluster: String,
    /// This controller's name, unique among the cluster's controllers.
    pub name: String,
    /// Whole seconds; default [`DEFAULT_LEASE_TTL`].
    #[serde(default)]
    pub lease_ttl: Option<u64>,
    /// Seconds; default a third of the lease TTL.
    #[serde(default)]
    pub renew_interval: Option<f64>,
}

impl HaConfig {
    /// The leadership lease's time to live.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL))
    }

    /// How often the lease is renewed.
    pub fn renew_interval(&self) -> Duration {
        match self.renew_interval {
            Some(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s),
            _ => self.lease_ttl() / 3,
        }
    }

    /// The etcd key prefix of this cluster (`CLUSTER/`).
    pub fn prefix(&self) -> String {
        format!("{}/", self.cluster)
    }
}

/// A cluster or controller name: what etcd keys and logs can carry plainly.
fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Why `e` is not an endpoint, if it is not: `host:port`, no scheme.
fn endpoint_error(e: &str) -> Option<String> {
    if let Some((scheme, _)) = e.split_once("://") {
        return Some(format!(
            "write host:port without {scheme}:// (the client speaks plain HTTP to etcd's client URL)"
        ));
    }
    let Some((host, port)) = e.rsplit_once(':') else {
        return Some("must be host:port, e.g. \"10.0.0.1:2379\"".into());
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Some("must be host:port with a host name or address before the colon".into());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => None,
        _ => Some(format!("the port {port:?} is not a number from 1 to 65535")),
    }
}

/// The checks of `[ha]` against the storages it would serve.
pub(super) fn validate(
    ha: &HaConfig,
    storages: &[StorageConfig],
    invalid: &dyn Fn(&str, String, &str) -> ConfigError,
) -> Result<(), ConfigError> {
    if ha.endpoints.is_empty() {
        return Err(invalid(
            "ha.endpoints",
            "[]".into(),
            "list at least one etcd member as \"host:port\" (three or five for a cluster that survives losing one or two)",
        ));
    }
    let mut seen = HashSet::new();
    for (i, e) in ha.endpoints.iter().enumerate() {
        if let Some(why) = endpoint_error(e) {
            return Err(invalid(
                &format!("ha.endpoints[{i}]"),
                format!("{e:?}"),
                &why,
            ));
        }
        if !seen.insert(e.as_str()) {
            return Err(invalid(
                &format!("ha.endpoints[{i}]"),
                format!("{e:?}"),
                "is listed more than once",
            ));
        }
    }
    for (key, v) in [("ha.cluster", &ha.cluster), ("ha.name", &ha.name)] {
        if !name_ok(v) {
            return Err(invalid(
                key,
                format!("{v:?}"),
                "must be 1 to 128 characters of letters, digits, '.', '_' and '-'",
            ));
        }
    }
    let (lo, hi) = LEASE_TTL_RANGE;
    if let Some(t) = ha.lease_ttl.filter(|t| !(lo..=hi).contains(t)) {
        return Err(invalid(
            "ha.lease-ttl",
            t.to_string(),
            &format!(
                "must be whole seconds from {lo} (etcd's shortest lease with its default \
                 election timeout) to {hi}"
            ),
        ));
    }
    if let Some(r) = ha.renew_interval {
        let ttl = ha.lease_ttl().as_secs_f64();
        if !(r.is_finite() && r > 0.0 && r <= ttl / 2.0) {
            return Err(invalid(
                "ha.renew-interval",
                r.to_string(),
                &format!(
                    "must be a number of seconds above 0 and at most half the lease TTL \
                     ({ttl} s), so that one late renewal does not lose leadership"
                ),
            ));
        }
    }
    let shared = |kind: &str| {
        if kind == "file" {
            "two controllers cannot share a Data.fs: HA arrays mirror onto ZEO servers"
        } else {
            "two controllers cannot share an in-process memory storage: HA arrays mirror onto ZEO servers"
        }
    };
    for (i, s) in storages.iter().enumerate() {
        match s.kind {
            StorageKind::File | StorageKind::Memory => {
                let kind = if s.kind == StorageKind::File {
                    "file"
                } else {
                    "memory"
                };
                return Err(invalid(
                    &format!("storage[{i}].kind"),
                    format!("{kind:?}"),
                    &format!(
                        "{} (with [ha], serve a kind = \"raid\" array)",
                        shared(kind)
                    ),
                ));
            }
            StorageKind::Raid => {
                if let Some((j, b)) = s
                    .backend
                    .iter()
                    .enumerate()
                    .find(|(_, b)| b.kind != BackendKind::Zeo)
                {
                    return Err(invalid(
                        &format!("storage[{i}].backend[{j}].kind"),
                        format!("{:?}", b.kind.label()),
                        shared(b.kind.label()),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Why a reload cannot take the config file's `[ha]` (`None`: it is the
/// running one). `[ha]` is read once, at start: the controller's etcd
/// session, its name in the leader key and its lease live as long as the
/// process, so a change needs a restart (a standby first, then a
/// switchover, then the old leader), and the reload changes nothing
/// rather than leave the file saying what does not run.
pub fn reload_refusal(running: Option<&HaConfig>, file: Option<&HaConfig>) -> Option<String> {
    let why = match (running, file) {
        (None, None) => return None,
        (Some(r), Some(f)) if r == f => return None,
        (None, Some(_)) => "the config adds [ha]".to_string(),
        (Some(_), None) => "the config drops [ha]".to_string(),
        (Some(r), Some(f)) => {
            let mut changed = Vec::new();
            let mut differs = |key: &str, a: String, b: String| {
                if a != b {
                    changed.push(format!("{key} {a} -> {b}"));
                }
            };
            differs(
                "endpoints",
                format!("{:?}", r.endpoints),
                format!("{:?}", f.endpoints),
            );
            differs(
                "cluster",
                format!("{:?}", r.cluster),
                format!("{:?}", f.cluster),
            );
            differs("name", format!("{:?}", r.name), format!("{:?}", f.name));
            differs(
                "lease-ttl",
                format!("{:?}", r.lease_ttl()),
                format!("{:?}", f.lease_ttl()),
            );
            differs(
                "renew-interval",
                format!("{:?}", r.renew_interval()),
                format!("{:?}", f.renew_interval()),
            );
            if changed.is_empty() {
                // The same settings, spelled differently (a default
                // written out): nothing to refuse.
                return None;
            }
            format!("the config changes [ha] ({})", changed.join(", "))
        }
    };
    Some(format!(
        "{why}: [ha] is read at start only; restart this controller to apply it (standbys \
         first, then `zeoraid ctl switchover` and restart the old leader); nothing was changed"
    ))
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;
    use std::path::Path;

    const ARRAY: &str = "[[storage]]\nname=\"1\"\nkind=\"raid\"\n\
        [[storage.backend]]\nname=\"a\"\nkind=\"zeo\"\naddress=\"10.0.1.1:8100\"\n\
        [[storage.backend]]\nname=\"b\"\nkind=\"zeo\"\naddress=\"10.0.1.2:8100\"\n";

    fn parse(ha: &str, storages: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!("{storages}\n[ha]\n{ha}"), Path::new("ha.toml"))
    }

    const MINIMAL: &str =
        "endpoints=[\"10.0.0.1:2379\",\"etcd-2:2379\",\"[::1]:2379\"]\ncluster=\"prod\"\nname=\"ctl-a\"\n";

    #[test]
    fn defaults_and_settings() {
        let c = parse(MINIMAL, ARRAY).expect("valid");
        let ha = c.ha.expect("[ha]");
        assert_eq!(ha.endpoints.len(), 3);
        assert_eq!(ha.lease_ttl(), Duration::from_secs(3));
        assert_eq!(ha.renew_interval(), Duration::from_secs(1));
        assert_eq!(ha.prefix(), "prod/");
        let c = parse(&format!("{MINIMAL}lease-ttl=9\n"), ARRAY).expect("valid");
        assert_eq!(c.ha.expect("[ha]").renew_interval(), Duration::from_secs(3));
        let c = parse(
            &format!("{MINIMAL}lease-ttl=10\nrenew-interval=2.5\n"),
            ARRAY,
        )
        .expect("valid");
        let ha = c.ha.expect("[ha]");
        assert_eq!(
            (ha.lease_ttl(), ha.renew_interval()),
            (Duration::from_secs(10), Duration::from_millis(2500))
        );
        let none = Config::parse(ARRAY, Path::new("ha.toml")).expect("valid");
        assert_eq!(none.ha, None);
    }

    #[test]
    fn errors_name_the_key() {
        let ok_ids = "cluster=\"prod\"\nname=\"ctl-a\"\n";
        let eps = "endpoints=[\"10.0.0.1:2379\"]\n";
        let cases: Vec<(String, &str, &str, &str)> = vec![
            (
                format!("endpoints=[]\n{ok_ids}"),
                ARRAY,
                "ha.endpoints",
                "at least one",
            ),
            (
                format!("endpoints=[\"http://e:2379\"]\n{ok_ids}"),
                ARRAY,
                "ha.endpoints[0]",
                "without http://",
            ),
            (
                format!("endpoints=[\"e1:2379\",\"e2\"]\n{ok_ids}"),
                ARRAY,
                "ha.endpoints[1]",
                "host:port",
            ),
            (
                format!("endpoints=[\"e1:0\"]\n{ok_ids}"),
                ARRAY,
                "ha.endpoints[0]",
                "1 to 65535",
            ),
            (
                format!("endpoints=[\":2379\"]\n{ok_ids}"),
                ARRAY,
                "ha.endpoints[0]",
                "host name",
            ),
            (
                format!("endpoints=[\"e:1\",\"e:1\"]\n{ok_ids}"),
                ARRAY,
                "ha.endpoints[1]",
                "more than once",
            ),
            (
                format!("{eps}cluster=\"\"\nname=\"a\"\n"),
                ARRAY,
                "ha.cluster",
                "1 to 128",
            ),
            (
                format!("{eps}cluster=\"a/b\"\nname=\"a\"\n"),
                ARRAY,
                "ha.cluster",
                "letters",
            ),
            (
                format!("{eps}cluster=\"p\"\nname=\"a b\"\n"),
                ARRAY,
                "ha.name",
                "letters",
            ),
            (
                format!("{eps}{ok_ids}lease-ttl=1\n"),
                ARRAY,
                "ha.lease-ttl",
                "from 2",
            ),
            (
                format!("{eps}{ok_ids}lease-ttl=301\n"),
                ARRAY,
                "ha.lease-ttl",
                "to 300",
            ),
            (
                format!("{eps}{ok_ids}renew-interval=0\n"),
                ARRAY,
                "ha.renew-interval",
                "above 0",
            ),
            (
                format!("{eps}{ok_ids}renew-interval=2\n"),
                ARRAY,
                "ha.renew-interval",
                "half the lease TTL (3 s)",
            ),
            (
                format!("{eps}{ok_ids}lease-ttl=10\nrenew-interval=nan\n"),
                ARRAY,
                "ha.renew-interval",
                "above 0",
            ),
        ];
        for (ha, storages, key, reason) in &cases {
            let err = parse(ha, storages).expect_err(ha).to_string();
            assert!(err.contains("ha.toml"), "{err}");
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
            assert!(err.contains(reason), "{key}: {err}");
        }
        // Unknown keys are refused, and the required ones are required.
        for bad in [
            format!("{eps}{ok_ids}ttl=3\n"),
            format!("{eps}name=\"a\"\n"),
            ok_ids.to_string(),
        ] {
            assert!(parse(&bad, ARRAY).is_err(), "{bad}");
        }
    }

    #[test]
    fn in_process_storages_are_refused() {
        let raid_with = |kind: &str| {
            format!(
                "[[storage]]\nname=\"1\"\nkind=\"raid\"\n\
                 [[storage.backend]]\nname=\"a\"\nkind=\"zeo\"\naddress=\"h:8100\"\n\
                 [[storage.backend]]\nname=\"b\"\nkind=\"{kind}\"\n{}",
                if kind == "file" {
                    "path=\"/d/b.fs\"\n"
                } else {
                    ""
                }
            )
        };
        let cases = [
            (
                raid_with("file"),
                "storage[0].backend[1].kind",
                "cannot share a Data.fs: HA arrays mirror onto ZEO servers",
            ),
            (
                raid_with("memory"),
                "storage[0].backend[1].kind",
                "in-process memory storage",
            ),
            (
                "[[storage]]\nname=\"1\"\nkind=\"file\"\npath=\"/d/x.fs\"\n".into(),
                "storage[0].kind",
                "cannot share a Data.fs",
            ),
            (
                format!("{ARRAY}[[storage]]\nname=\"2\"\nkind=\"memory\"\n"),
                "storage[1].kind",
                "memory",
            ),
        ];
        for (storages, key, reason) in &cases {
            let err = parse(MINIMAL, storages).expect_err(storages).to_string();
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
            assert!(err.contains(reason), "{key}: {err}");
            // Without [ha] the same storages are fine.
            assert!(
                Config::parse(storages, Path::new("x.toml")).is_ok(),
                "{storages}"
            );
        }
    }

    #[test]
    fn a_reload_refuses_a_changed_ha_and_names_what_changed() {
        let ha = |ttl: Option<u64>, name: &str| HaConfig {
            endpoints: vec!["127.0.0.1:2379".into()],
            cluster: "c".into(),
            name: name.into(),
            lease_ttl: ttl,
            renew_interval: None,
        };
        let running = ha(None, "a");
        let cases: Vec<(Option<HaConfig>, Option<HaConfig>, Option<&str>)> = vec![
            (None, None, None),
            (Some(running.clone()), Some(running.clone()), None),
            // The default written out is the same setting.
            (
                Some(running.clone()),
                Some(ha(Some(DEFAULT_LEASE_TTL), "a")),
                None,
            ),
            (None, Some(running.clone()), Some("the config adds [ha]")),
            (Some(running.clone()), None, Some("the config drops [ha]")),
            (
                Some(running.clone()),
                Some(ha(Some(6), "a")),
                Some("lease-ttl 3s -> 6s, renew-interval 1s -> 2s"),
            ),
            (
                Some(running.clone()),
                Some(ha(None, "b")),
                Some("name \"a\" -> \"b\""),
            ),
        ];
        for (r, f, want) in cases {
            let got = reload_refusal(r.as_ref(), f.as_ref());
            match (want, &got) {
                (None, None) => {}
                (Some(w), Some(g)) => {
                    assert!(g.contains(w), "{w}: {g}");
                    assert!(g.ends_with("nothing was changed"), "{g}");
                }
                _ => panic!("{r:?} -> {f:?}: {got:?}"),
            }
        }
    }
}
