//! The status document: what a running zeoraid says about itself, as one
//! set of serde types shared by whoever writes it and whoever reads it.
//!
//! Producers: the server (each storage's counters, `server/status.rs`) and
//! the array (its state, backends, recoveries and off-site mirrors,
//! `raid`). Consumers: the `ruok` probe and ZEO's `server_status` (as
//! JSON / msgpack), and the admin side (`ctl status`'s Nagios line,
//! `ctl details`' table, `/metrics`' Prometheus text), which reads it back
//! over HTTP with [`parse`]. A field renamed here is renamed for all of
//! them, or the build fails: no silently missing metric.
//!
//! The JSON names (kebab-case, and ZEO's own `conflicts_resolved`,
//! `active_txns`) are the documented wire names; readers accept documents
//! that lack optional fields (an older server), never one without an
//! array's `state`.
//!
//! A leaf module: it imports nothing of the crate, so every layer may use
//! it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Every served storage's status, by storage name.
pub type Document = BTreeMap<String, StorageStatus>;

/// Read a status document (as `/details` and `ruok` answer it); the error
/// says what does not fit.
pub fn parse(json: &str) -> Result<Document, String> {
    serde_json::from_str(json).map_err(|e| format!("not a zeoraid status document: {e}"))
}

/// Read a status document from a JSON value (see [`parse`]).
pub fn from_value(v: serde_json::Value) -> Result<Document, String> {
    serde_json::from_value(v).map_err(|e| format!("not a zeoraid status document: {e}"))
}

/// One served storage: the server's counters (ZEO's `server_status`
/// names) and, for an array, [`ArrayStatus`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct StorageStatus {
    pub storage: String,
    pub connections: u64,
    pub loads: u64,
    pub stores: u64,
    pub commits: u64,
    pub aborts: u64,
    pub conflicts: u64,
    #[serde(rename = "conflicts_resolved")]
    pub conflicts_resolved: u64,
    #[serde(rename = "active_txns")]
    pub active_txns: u64,
    /// Votes waiting for the commit lock.
    pub waiting: u64,
    pub uptime_seconds: u64,
    /// 16 hex digits; empty for an empty storage.
    pub last_transaction: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raid: Option<ArrayStatus>,
    /// The controller's HA role (the same for every storage of the
    /// server); absent without `[ha]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ha: Option<HaStatus>,
}

/// A controller's HA role (issue #26): `role` is `standby`, `fencing`,
/// `reconciling` or `leader`; `leader` the holder of the leader key last
/// seen; `leader-changes` how often this controller took the key;
/// `lease-age-ms` how long ago its lease was renewed, while it holds it;
/// `key-seen-age-ms` how long ago etcd told a standby who leads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct HaStatus {
    pub controller: String,
    pub cluster: String,
    pub role: String,
    pub leader: Option<String>,
    pub epoch: Option<u64>,
    pub leader_changes: u64,
    /// Milliseconds since the lease was last renewed, while this
    /// controller holds the key.
    pub lease_age_ms: Option<u64>,
    /// Milliseconds since etcd last told this standby who holds the key:
    /// how fresh its view of the leader is.
    pub key_seen_age_ms: Option<u64>,
}

/// The array's state (see `raid::state::array_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArrayState {
    /// Every backend is optimal.
    Optimal,
    /// Some backend is not optimal, but at least `min-optimal` are.
    Degraded,
    /// Like degraded, and a backend is being recovered.
    Recovering,
    /// Fewer than `min-optimal` optimal backends: `fail-mode` applies.
    Failed,
}

impl ArrayState {
    pub const ALL: [ArrayState; 4] = [
        ArrayState::Optimal,
        ArrayState::Degraded,
        ArrayState::Recovering,
        ArrayState::Failed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ArrayState::Optimal => "optimal",
            ArrayState::Degraded => "degraded",
            ArrayState::Recovering => "recovering",
            ArrayState::Failed => "failed",
        }
    }
}

impl fmt::Display for ArrayState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A RAID array.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ArrayStatus {
    pub state: ArrayState,
    #[serde(default)]
    pub optimal: u64,
    #[serde(default)]
    pub min_optimal: u64,
    #[serde(default)]
    pub fanout: String,
    #[serde(default)]
    pub read_policy: String,
    #[serde(default)]
    pub auto_recover: bool,
    #[serde(default)]
    pub recovery_ratio: f64,
    /// The recovery rate guarantee, while a backend recovers.
    #[serde(default)]
    pub throttle: Option<Throttle>,
    /// Fencing at the backends (controller HA); absent for a single
    /// controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<FenceStatus>,
    /// The shared object cache; absent when it is off (`cache-size = 0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheStatus>,
    #[serde(default)]
    pub backends: Vec<BackendStatus>,
    #[serde(default)]
    pub offsite: Vec<OffsiteStatus>,
    /// Added by the admin side: how the running backends differ from the
    /// config file's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub differs_from_config: Option<ConfigDiff>,
}

/// Where an array stands with fencing: `state` is `held` (its votes
/// carry the fence of `epoch`), `taking` (writing it), `lost` (another
/// controller fenced it out at `epoch`; writes refused) or `standby`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct FenceStatus {
    pub state: String,
    pub epoch: Option<u64>,
}

/// The array's shared object cache: its size limit and what it holds
/// (bytes), its hits and misses since start, evictions, and the bytes of
/// data it answered instead of a backend.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct CacheStatus {
    pub capacity: u64,
    pub size: u64,
    pub objects: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub bytes_saved: u64,
}

impl CacheStatus {
    /// Hits per read it was asked for (0 before the first).
    pub fn hit_rate(&self) -> f64 {
        let asked = self.hits + self.misses;
        if asked == 0 {
            0.0
        } else {
            self.hits as f64 / asked as f64
        }
    }
}

/// Commits admitted, throttled and forced while a backend recovers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct Throttle {
    pub admitted: u64,
    pub throttled: u64,
    pub forced: u64,
    pub credit: f64,
}

/// Running backends the config file lacks, and the reverse.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct ConfigDiff {
    pub only_running: Vec<String>,
    pub only_in_config: Vec<String>,
}

/// A synchronous backend's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    #[default]
    Optimal,
    Degraded,
    Recovering,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Optimal, Role::Degraded, Role::Recovering];

    pub fn label(self) -> &'static str {
        match self {
            Role::Optimal => "optimal",
            Role::Degraded => "degraded",
            Role::Recovering => "recovering",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// One synchronous backend of an array.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct BackendStatus {
    pub name: String,
    /// `file`, `memory`, `zeo`.
    pub kind: String,
    pub state: Role,
    /// Why it is not optimal.
    pub reason: Option<String>,
    pub last_transaction: String,
    /// Commit time between the array's newest transaction and its own.
    pub lag_seconds: Option<f64>,
    /// Moving average of its calls' latency.
    pub latency_ms: f64,
    pub reads: u64,
    pub writes: u64,
    /// The running recovery, while it recovers.
    pub recovery: Option<RecoveryStatus>,
    /// Its address or path.
    #[serde(rename = "where")]
    pub place: String,
    pub added_at_runtime: bool,
    pub latency_histogram: Histogram,
    /// Times it was degraded or a recovery of it failed.
    pub errors: u64,
    /// Disabled by the operator (auto-recovery leaves it alone).
    pub disabled: bool,
    /// The last `ctl verify` of it.
    pub verify: Option<VerifySummary>,
    /// Failed automatic recovery attempts in a row.
    pub recovery_failures: u64,
    pub last_recovery_error: Option<String>,
}

/// A latency histogram: bucket bounds (seconds), cumulative counts (one
/// more than bounds: `+Inf`), the sum (seconds) and the count.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Histogram {
    pub le: Vec<f64>,
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

/// A recovery in progress.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct RecoveryStatus {
    /// The optimal backend it copies from.
    pub source: String,
    /// `comparing`, `copying`, `finishing`.
    pub phase: String,
    pub copied: u64,
    /// Estimated transactions left.
    pub left: u64,
    pub percent: f64,
    /// Transactions per second.
    pub rate: f64,
    pub eta_seconds: Option<f64>,
    pub megabytes: f64,
    /// The newest transaction copied.
    pub at: String,
    /// It copies what follows this tid (`None`: the whole history).
    pub from: Option<String>,
}

/// What a verify found (also `ctl verify`'s answer).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct VerifySummary {
    pub backend: String,
    /// The optimal backend compared with.
    pub reference: String,
    pub transactions: u64,
    pub megabytes: f64,
    pub seconds: f64,
    pub upto: String,
    /// The first difference; `None`: identical.
    pub difference: Option<String>,
}

/// An off-site mirror's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OffsiteState {
    /// Not connected yet (or again).
    #[default]
    Connecting,
    /// Shipping from the queue as commits arrive.
    Replicating,
    /// Behind the queue: reading history from a synchronous backend.
    CatchingUp,
    /// Failing; retried with backoff.
    Degraded,
}

impl OffsiteState {
    pub const ALL: [OffsiteState; 4] = [
        OffsiteState::Replicating,
        OffsiteState::CatchingUp,
        OffsiteState::Degraded,
        OffsiteState::Connecting,
    ];

    pub fn label(self) -> &'static str {
        match self {
            OffsiteState::Connecting => "connecting",
            OffsiteState::Replicating => "replicating",
            OffsiteState::CatchingUp => "catching-up",
            OffsiteState::Degraded => "degraded",
        }
    }
}

impl fmt::Display for OffsiteState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// An off-site mirror of an array.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct OffsiteStatus {
    pub name: String,
    pub kind: String,
    /// Always `offsite`.
    pub mode: String,
    #[serde(rename = "where")]
    pub place: String,
    pub state: OffsiteState,
    pub reason: Option<String>,
    /// The newest transaction it holds (once known).
    pub last_tid: Option<String>,
    /// Committed transactions not on it yet (`None` until it says where it
    /// stands).
    pub lag_transactions: Option<u64>,
    /// The lag is an estimate (while catching up).
    pub lag_estimated: bool,
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<f64>,
    pub max_lag: f64,
    /// Set when it is degraded or past `max-lag`: the status warns.
    pub warning: Option<String>,
    pub shipped: u64,
    pub shipped_megabytes: f64,
    /// Transactions per second (smoothed).
    pub rate: f64,
    pub queue: OffsiteQueue,
    pub failures: u64,
    pub last_error: Option<String>,
    /// Always 0: off-site mirrors serve no reads.
    pub reads: u64,
}

/// The queue of committed transactions waiting to be shipped.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OffsiteQueue {
    pub transactions: u64,
    pub bytes: u64,
    pub overflows: u64,
}

/// `GET /status`'s answer: the health line and its Nagios code.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// The worst storage's state.
    pub state: ArrayState,
    pub line: String,
    /// 0 OK, 1 WARNING, 2 CRITICAL.
    pub code: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire names are the contract: a document written by the types
    /// reads back the same, and the names are the documented ones.
    #[test]
    fn a_document_round_trips_with_its_wire_names() {
        let mut doc = Document::new();
        doc.insert(
            "1".into(),
            StorageStatus {
                storage: "1".into(),
                conflicts_resolved: 2,
                active_txns: 1,
                uptime_seconds: 5,
                last_transaction: "03d0".into(),
                raid: Some(ArrayStatus {
                    state: ArrayState::Recovering,
                    optimal: 1,
                    min_optimal: 1,
                    fanout: "parallel".into(),
                    read_policy: "round-robin".into(),
                    auto_recover: true,
                    recovery_ratio: 2.0,
                    throttle: None,
                    fence: None,
                    cache: None,
                    backends: vec![BackendStatus {
                        name: "b".into(),
                        state: Role::Recovering,
                        place: "/x/b.fs".into(),
                        ..Default::default()
                    }],
                    offsite: vec![OffsiteStatus {
                        state: OffsiteState::CatchingUp,
                        ..Default::default()
                    }],
                    differs_from_config: None,
                }),
                ..Default::default()
            },
        );
        let v = serde_json::to_value(&doc).unwrap();
        for path in [
            "/1/conflicts_resolved",
            "/1/active_txns",
            "/1/uptime-seconds",
            "/1/last-transaction",
            "/1/raid/min-optimal",
            "/1/raid/read-policy",
            "/1/raid/backends/0/where",
            "/1/raid/backends/0/latency-histogram/le",
        ] {
            assert!(v.pointer(path).is_some(), "{path} in {v}");
        }
        assert_eq!(v["1"]["raid"]["state"], "recovering");
        assert_eq!(v["1"]["raid"]["backends"][0]["state"], "recovering");
        assert_eq!(v["1"]["raid"]["offsite"][0]["state"], "catching-up");
        assert_eq!(parse(&v.to_string()).unwrap(), doc);
    }

    #[test]
    fn readers_take_old_documents_but_not_nonsense() {
        let plain = parse(r#"{"1": {"storage": "1", "connections": 3}}"#).unwrap();
        assert_eq!(plain["1"].connections, 3);
        assert!(plain["1"].raid.is_none());
        for nonsense in [
            "[1, 2]",
            "\"ok\"",
            r#"{"1": {"raid": {"state": "weird"}}}"#,
            r#"{"1": {"raid": {"optimal": 1}}}"#,
            r#"{"1": {"loads": "many"}}"#,
        ] {
            assert!(parse(nonsense).is_err(), "{nonsense}");
        }
        for s in ArrayState::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.label());
        }
        for s in Role::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.label());
        }
        for s in OffsiteState::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.label());
        }
    }
}
