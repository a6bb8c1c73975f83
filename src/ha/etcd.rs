//! A synchronous etcd v3 client over etcd's HTTP/JSON gateway (no gRPC):
//! leases, keys, transactions, a watch and member status — what controller
//! leadership and the array's shared state need.
//!
//! Every call has a deadline: a connect timeout and a read timeout per
//! endpoint tried. On a connection failure or a timeout the next endpoint
//! is tried, and the one that answered is tried first next time. Requests
//! are built and responses parsed by pure functions (tested below); keys
//! and values travel base64-encoded, int64 fields as JSON strings.

use super::http::{self, HttpError};
use serde_json::{json, Value};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// An etcd lease id.
pub type LeaseId = i64;

/// What went wrong talking to etcd, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("no etcd endpoint answered ({0}): check that etcd runs and that the endpoints list reaches it")]
    Unreachable(String),
    #[error("etcd lease {0} is gone (expired or revoked): campaign again with a new lease")]
    LeaseNotFound(LeaseId),
    #[error("etcd at {endpoint} refused the request: {message} (gRPC code {code}); check the request and the cluster's health")]
    Server {
        endpoint: String,
        code: i64,
        message: String,
    },
    #[error("etcd at {endpoint} answered something unreadable: {detail}; is it an etcd 3.4+ JSON gateway?")]
    Protocol { endpoint: String, detail: String },
    #[error("no etcd endpoints configured: list at least one host:port")]
    NoEndpoints,
}

/// Where etcd is and how long to wait for it.
#[derive(Debug, Clone)]
pub struct Options {
    /// host:port of each member's client URL (plain HTTP).
    pub endpoints: Vec<String>,
    /// Bound on each connection attempt.
    pub connect_timeout: Duration,
    /// Bound on each request once connected (write, head and body).
    pub request_timeout: Duration,
}

impl Options {
    pub fn new(endpoints: Vec<String>) -> Options {
        Options {
            endpoints,
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(1),
        }
    }
}

/// A key's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    /// 0: the key is bound to no lease.
    pub lease: LeaseId,
}

/// What [`Client::create_on_new_lease`] did: the key made on a new lease
/// (the lease, its granted TTL, the key's creation revision), or who holds
/// it (`None`: nobody any more).
pub type Created = Result<(LeaseId, Duration, i64), Option<KeyValue>>;

/// A lease's remaining and granted time to live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseTtl {
    pub remaining: Duration,
    pub granted: Duration,
}

/// A condition of a transaction on its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// 0: the key does not exist.
    CreateRevision(i64),
    ModRevision(i64),
    Value(Vec<u8>),
    Lease(LeaseId),
}

/// How a compare-and-set transaction went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cas {
    /// The compares held and the write was applied at this revision.
    Applied { revision: i64 },
    /// They did not: the key as it is now (`None`: absent).
    Stale(Option<KeyValue>),
}

/// One member's answer to `/v3/maintenance/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub version: String,
    pub member_id: u64,
    pub leader: u64,
    pub raft_term: u64,
}

/// What a watch delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    /// The key was deleted (or its lease expired) at `revision`.
    Delete {
        key: Vec<u8>,
        revision: i64,
    },
    /// The stream broke; the watch has ended. Watch again from the last
    /// revision seen + 1.
    Lost(Error),
    /// etcd canceled the watch because its start revision was compacted
    /// away: the events before `compact_revision` are gone. The watch has
    /// ended; re-read the state and watch from after what was read.
    Compacted {
        compact_revision: i64,
    },
}

// ---------------------------------------------------------------------------
// Pure parts: base64, request bodies, response parsing
// ---------------------------------------------------------------------------

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn b64_encode(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Standard base64, padding optional; `None` on any other character.
pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for ch in s.bytes() {
        let v = B64.iter().position(|b| *b == ch)? as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits >= 6 {
        return None; // one character alone cannot end a group
    }
    Some(out)
}

/// An int64 field: a JSON string (the gateway's way) or a number; absent is 0.
fn int(v: &Value, field: &str) -> Result<i64, String> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| format!("{field}: {s:?} is not an integer")),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| format!("{field}: {n} out of range")),
        Some(o) => Err(format!("{field}: {o} is not an integer")),
    }
}

/// A uint64 field (member and cluster ids are random 64-bit numbers, half
/// of them above `i64::MAX`): a JSON string or a number; absent is 0.
fn uint(v: &Value, field: &str) -> Result<u64, String> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| format!("{field}: {s:?} is not an unsigned integer")),
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| format!("{field}: {n} out of range")),
        Some(o) => Err(format!("{field}: {o} is not an unsigned integer")),
    }
}

fn bytes(v: &Value, field: &str) -> Result<Vec<u8>, String> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => b64_decode(s).ok_or_else(|| format!("{field}: bad base64 {s:?}")),
        Some(o) => Err(format!("{field}: {o} is not base64 text")),
    }
}

/// A `mvccpb.KeyValue` from its JSON.
pub fn parse_kv(v: &Value) -> Result<KeyValue, String> {
    Ok(KeyValue {
        key: bytes(v, "key")?,
        value: bytes(v, "value")?,
        create_revision: int(v, "create_revision")?,
        mod_revision: int(v, "mod_revision")?,
        version: int(v, "version")?,
        lease: int(v, "lease")?,
    })
}

/// The first key of a range response (its `kvs`).
pub fn parse_range(v: &Value) -> Result<Option<KeyValue>, String> {
    match v.get("kvs").and_then(Value::as_array) {
        Some(kvs) if !kvs.is_empty() => parse_kv(&kvs[0]).map(Some),
        _ => Ok(None),
    }
}

/// Every key of a range response (its `kvs`), in etcd's (key) order.
pub fn parse_range_all(v: &Value) -> Result<Vec<KeyValue>, String> {
    match v.get("kvs").and_then(Value::as_array) {
        Some(kvs) => kvs.iter().map(parse_kv).collect(),
        None => Ok(Vec::new()),
    }
}

/// What an answer body says: the result, or the error etcd gave
/// (`{"error":"etcdserver: requested lease not found","code":5}`; newer
/// gateways say `message` too).
pub fn parse_answer(status: u16, body: &[u8]) -> Result<Value, (i64, String)> {
    // A streamed call (keepalive) answers lines of {"result": ...} or {"error": ...}.
    let first = body
        .split(|b| *b == b'\n')
        .find(|l| !l.iter().all(u8::is_ascii_whitespace))
        .unwrap_or(b"");
    let v: Value = serde_json::from_slice(first).map_err(|e| {
        (
            -1,
            format!(
                "HTTP {status}, body not JSON ({e}): {}",
                String::from_utf8_lossy(body)
            ),
        )
    })?;
    let err = v.get("error").filter(|e| !e.is_null());
    if status != 200 || err.is_some() {
        let e = err.unwrap_or(&v);
        let message = e
            .get("message")
            .and_then(Value::as_str)
            .or_else(|| e.as_str())
            .or_else(|| v.get("message").and_then(Value::as_str))
            .unwrap_or("no message")
            .to_string();
        let code = int(e, "code")
            .ok()
            .filter(|c| *c != 0)
            .unwrap_or_else(|| int(&v, "code").unwrap_or(-1));
        return Err((code, message));
    }
    Ok(v.get("result").cloned().unwrap_or(v))
}

fn compare_json(key: &[u8], c: &Compare) -> Value {
    let k = b64_encode(key);
    match c {
        Compare::CreateRevision(r) => {
            json!({"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": r.to_string()})
        }
        Compare::ModRevision(r) => {
            json!({"key": k, "target": "MOD", "result": "EQUAL", "mod_revision": r.to_string()})
        }
        Compare::Value(val) => {
            json!({"key": k, "target": "VALUE", "result": "EQUAL", "value": b64_encode(val)})
        }
        Compare::Lease(l) => {
            json!({"key": k, "target": "LEASE", "result": "EQUAL", "lease": l.to_string()})
        }
    }
}

fn put_json(key: &[u8], value: &[u8], lease: Option<LeaseId>) -> Value {
    let mut p = json!({"key": b64_encode(key), "value": b64_encode(value)});
    if let Some(l) = lease {
        p["lease"] = Value::String(l.to_string());
    }
    p
}

/// The body of a transaction on one key: if every compare holds, put
/// (`Some(value)`) or delete (`None`); else read the key.
pub fn txn_json(key: &[u8], compares: &[Compare], put: Option<(&[u8], Option<LeaseId>)>) -> Value {
    let success = match put {
        Some((value, lease)) => json!({"request_put": put_json(key, value, lease)}),
        None => json!({"request_delete_range": {"key": b64_encode(key)}}),
    };
    json!({
        "compare": compares.iter().map(|c| compare_json(key, c)).collect::<Vec<_>>(),
        "success": [success],
        "failure": [{"request_range": {"key": b64_encode(key)}}],
    })
}

/// A `/v3/maintenance/status` answer.
pub fn parse_status(v: &Value) -> Result<MemberStatus, String> {
    let h = v.get("header").unwrap_or(&Value::Null);
    Ok(MemberStatus {
        version: v
            .get("version")
            .and_then(Value::as_str)
            .unwrap_or("")
            .into(),
        member_id: uint(h, "member_id")?,
        leader: uint(v, "leader")?,
        raft_term: uint(v, "raftTerm")?,
    })
}

/// The end of the range of every key that starts with `prefix` (etcd's
/// `range_end`): the prefix with its last byte below 0xff incremented and
/// what follows dropped; `[0]` (every key) when there is no such byte.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|b| *b < 0xff) {
        Some(i) => {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            end
        }
        None => vec![0],
    }
}

/// A transaction's answer as [`Cas`].
pub fn parse_txn(v: &Value) -> Result<Cas, String> {
    let succeeded = v.get("succeeded").and_then(Value::as_bool).unwrap_or(false);
    if succeeded {
        let revision = int(v.get("header").unwrap_or(&Value::Null), "revision")?;
        return Ok(Cas::Applied { revision });
    }
    let range = v
        .get("responses")
        .and_then(Value::as_array)
        .and_then(|r| r.first())
        .and_then(|r| r.get("response_range"));
    match range {
        Some(r) => parse_range(r).map(Cas::Stale),
        None => Ok(Cas::Stale(None)),
    }
}

/// One line of the watch stream as events (none for the creation answer
/// or a progress notice).
pub fn parse_watch_line(line: &[u8]) -> Result<Vec<WatchEvent>, (i64, String)> {
    let v = parse_answer(200, line)?;
    if v.get("canceled").and_then(Value::as_bool) == Some(true) {
        // etcd 3.4 gives no cancel_reason for a compacted start revision,
        // only compact_revision, and keeps the stream open.
        let compact_revision = int(&v, "compact_revision").map_err(|d| (-1, d))?;
        if compact_revision > 0 {
            return Ok(vec![WatchEvent::Compacted { compact_revision }]);
        }
        let reason = v
            .get("cancel_reason")
            .and_then(Value::as_str)
            .unwrap_or("no reason given");
        return Err((-1, format!("watch canceled: {reason}")));
    }
    let mut out = Vec::new();
    for e in v
        .get("events")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let kv = e.get("kv").unwrap_or(&Value::Null);
        let kv = parse_kv(kv).map_err(|d| (-1, d))?;
        // PUT is enum value 0, which the gateway leaves out.
        if e.get("type").and_then(Value::as_str) == Some("DELETE") {
            out.push(WatchEvent::Delete {
                key: kv.key,
                revision: kv.mod_revision,
            });
        } else {
            out.push(WatchEvent::Put(kv));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// The client (IO)
// ---------------------------------------------------------------------------

/// A synchronous etcd client; cheap to share behind an `Arc`.
pub struct Client {
    opts: Options,
    /// The endpoint that answered last: tried first.
    preferred: AtomicUsize,
}

/// A failed attempt on one endpoint: `Next` tries another.
enum Attempt {
    Next(String),
    Final(Error),
}

impl Client {
    pub fn new(opts: Options) -> Result<Client, Error> {
        if opts.endpoints.is_empty() {
            return Err(Error::NoEndpoints);
        }
        Ok(Client {
            opts,
            preferred: AtomicUsize::new(0),
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.opts.endpoints
    }

    /// The endpoint that answered last (the first configured before any
    /// call): the one the next call tries first.
    pub fn current_endpoint(&self) -> &str {
        let n = self.opts.endpoints.len();
        &self.opts.endpoints[self.preferred.load(Ordering::Relaxed) % n]
    }

    /// The endpoints in the order to try them.
    fn order(&self) -> Vec<usize> {
        let n = self.opts.endpoints.len();
        let p = self.preferred.load(Ordering::Relaxed) % n;
        (0..n).map(|i| (p + i) % n).collect()
    }

    fn one(&self, endpoint: &str, path: &str, body: &[u8]) -> Result<Value, Attempt> {
        let t = self.opts.request_timeout;
        let resp = http::post(endpoint, path, body, self.opts.connect_timeout, t)
            .map_err(|e| Attempt::Next(format!("{endpoint}: {}", desc(&e))))?;
        let status = resp.status;
        let body = resp
            .body(t)
            .map_err(|e| Attempt::Next(format!("{endpoint}: {}", desc(&e))))?;
        match parse_answer(status, &body) {
            Ok(v) => Ok(v),
            // 14 Unavailable (no leader, stopping): another member may do.
            Err((14, m)) => Err(Attempt::Next(format!("{endpoint}: {m}"))),
            Err((-1, detail)) => Err(Attempt::Final(Error::Protocol {
                endpoint: endpoint.into(),
                detail,
            })),
            Err((code, message)) => Err(Attempt::Final(Error::Server {
                endpoint: endpoint.into(),
                code,
                message,
            })),
        }
    }

    /// POSTs `body` to `path`, endpoint after endpoint until one answers.
    fn call(&self, path: &str, body: &Value) -> Result<(String, Value), Error> {
        let body = body.to_string().into_bytes();
        let mut tried = Vec::new();
        for i in self.order() {
            let ep = &self.opts.endpoints[i];
            match self.one(ep, path, &body) {
                Ok(v) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok((ep.clone(), v));
                }
                Err(Attempt::Next(why)) => tried.push(why),
                Err(Attempt::Final(e)) => return Err(e),
            }
        }
        Err(Error::Unreachable(tried.join("; ")))
    }

    fn proto(endpoint: String) -> impl FnOnce(String) -> Error {
        move |detail| Error::Protocol { endpoint, detail }
    }

    /// A new lease of `ttl` (whole seconds, at least 1).
    pub fn grant(&self, ttl: Duration) -> Result<(LeaseId, Duration), Error> {
        let secs = ttl.as_secs().max(1);
        let (ep, v) = self.call("/v3/lease/grant", &json!({"TTL": secs.to_string()}))?;
        let id = int(&v, "ID").map_err(Self::proto(ep.clone()))?;
        let granted = int(&v, "TTL").map_err(Self::proto(ep))?;
        Ok((id, Duration::from_secs(granted.max(0) as u64)))
    }

    /// Renews `lease` once; its new TTL, or `None` if it is gone.
    pub fn keepalive(&self, lease: LeaseId) -> Result<Option<Duration>, Error> {
        match self.call("/v3/lease/keepalive", &json!({"ID": lease.to_string()})) {
            Ok((ep, v)) => {
                let ttl = int(&v, "TTL").map_err(Self::proto(ep))?;
                Ok((ttl > 0).then(|| Duration::from_secs(ttl as u64)))
            }
            Err(Error::Server { code: 5, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Revokes `lease` (its keys go with it); `false` if it was already gone.
    pub fn revoke(&self, lease: LeaseId) -> Result<bool, Error> {
        match self.call("/v3/lease/revoke", &json!({"ID": lease.to_string()})) {
            Ok(_) => Ok(true),
            Err(Error::Server { code: 5, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// How long `lease` has left; `None` if it is gone.
    pub fn time_to_live(&self, lease: LeaseId) -> Result<Option<LeaseTtl>, Error> {
        let (ep, v) = self.call("/v3/lease/timetolive", &json!({"ID": lease.to_string()}))?;
        let ttl = int(&v, "TTL").map_err(Self::proto(ep.clone()))?;
        let granted = int(&v, "grantedTTL").map_err(Self::proto(ep))?;
        Ok((ttl >= 0 && granted > 0).then(|| LeaseTtl {
            remaining: Duration::from_secs(ttl as u64),
            granted: Duration::from_secs(granted as u64),
        }))
    }

    /// The key's current state, `None` if absent.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, Error> {
        let (ep, v) = self.call("/v3/kv/range", &json!({"key": b64_encode(key)}))?;
        parse_range(&v).map_err(Self::proto(ep))
    }

    /// Every key that starts with `prefix`.
    pub fn get_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, Error> {
        let (ep, v) = self.call(
            "/v3/kv/range",
            &json!({"key": b64_encode(prefix), "range_end": b64_encode(&prefix_end(prefix))}),
        )?;
        parse_range_all(&v).map_err(Self::proto(ep))
    }

    /// Sets the key (bound to `lease` if given); the new revision.
    pub fn put(&self, key: &[u8], value: &[u8], lease: Option<LeaseId>) -> Result<i64, Error> {
        let (ep, v) = self
            .call("/v3/kv/put", &put_json(key, value, lease))
            .map_err(|e| lease_gone(e, lease))?;
        int(v.get("header").unwrap_or(&Value::Null), "revision").map_err(Self::proto(ep))
    }

    /// Deletes the key; how many keys went (0 or 1).
    pub fn delete(&self, key: &[u8]) -> Result<i64, Error> {
        let (ep, v) = self.call("/v3/kv/deleterange", &json!({"key": b64_encode(key)}))?;
        int(&v, "deleted").map_err(Self::proto(ep))
    }

    /// Discards the history before `revision` (a watch from before it is
    /// then answered [`WatchEvent::Compacted`]).
    pub fn compact(&self, revision: i64) -> Result<(), Error> {
        self.call(
            "/v3/kv/compaction",
            &json!({"revision": revision.to_string()}),
        )
        .map(|_| ())
    }

    /// Creates the key with `value` bound to `lease` if it does not exist;
    /// else [`Cas::Stale`] with whoever holds it.
    pub fn create_if_absent(&self, key: &[u8], value: &[u8], lease: LeaseId) -> Result<Cas, Error> {
        self.txn(
            key,
            &[Compare::CreateRevision(0)],
            Some((value, Some(lease))),
        )
    }

    /// Grants a lease of `ttl` and creates the key with `value` on it if
    /// absent: the lease, its granted TTL and the key's creation revision;
    /// or, with the new lease revoked, whoever holds the key (`None`: it
    /// vanished between the two steps).
    pub fn create_on_new_lease(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Duration,
    ) -> Result<Created, Error> {
        let (lease, granted) = self.grant(ttl)?;
        match self.create_if_absent(key, value, lease) {
            Ok(Cas::Applied { revision }) => Ok(Ok((lease, granted, revision))),
            // A retried request that had been applied: the key is ours.
            Ok(Cas::Stale(Some(kv))) if kv.lease == lease => {
                Ok(Ok((lease, granted, kv.create_revision)))
            }
            Ok(Cas::Stale(holder)) => {
                let _ = self.revoke(lease);
                Ok(Err(holder))
            }
            Err(e) => {
                let _ = self.revoke(lease);
                Err(e)
            }
        }
    }

    /// Puts `value` if every compare holds.
    pub fn compare_and_put(
        &self,
        key: &[u8],
        compares: &[Compare],
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Cas, Error> {
        self.txn(key, compares, Some((value, lease)))
    }

    /// Deletes the key if every compare holds.
    pub fn compare_and_delete(&self, key: &[u8], compares: &[Compare]) -> Result<Cas, Error> {
        self.txn(key, compares, None)
    }

    fn txn(
        &self,
        key: &[u8],
        compares: &[Compare],
        put: Option<(&[u8], Option<LeaseId>)>,
    ) -> Result<Cas, Error> {
        let lease = put.and_then(|(_, l)| l);
        let (ep, v) = self
            .call("/v3/kv/txn", &txn_json(key, compares, put))
            .map_err(|e| lease_gone(e, lease))?;
        parse_txn(&v).map_err(Self::proto(ep))
    }

    /// Each endpoint's status (or why it gave none), in the configured order.
    pub fn status(&self) -> Vec<(String, Result<MemberStatus, Error>)> {
        let body = b"{}";
        self.opts
            .endpoints
            .iter()
            .map(|ep| {
                let r = match self.one(ep, "/v3/maintenance/status", body) {
                    Ok(v) => parse_status(&v).map_err(Self::proto(ep.clone())),
                    Err(Attempt::Next(why)) => Err(Error::Unreachable(why)),
                    Err(Attempt::Final(e)) => Err(e),
                };
                (ep.clone(), r)
            })
            .collect()
    }

    /// Watches `key` from `start_revision` (`None`: from now) on a thread
    /// of its own ("etcd-watch"), events on the returned channel. A stream
    /// silent for `idle` is probed with a status call to its endpoint; a
    /// probe that fails ends the watch with [`WatchEvent::Lost`]. Dropping
    /// the [`Watch`] cancels it and joins the thread.
    pub fn watch(
        &self,
        key: &[u8],
        start_revision: Option<i64>,
        idle: Duration,
    ) -> Result<Watch, Error> {
        self.watch_range(key, None, start_revision, idle)
    }

    /// Watches every key that starts with `prefix`, as [`Client::watch`].
    pub fn watch_prefix(
        &self,
        prefix: &[u8],
        start_revision: Option<i64>,
        idle: Duration,
    ) -> Result<Watch, Error> {
        self.watch_range(prefix, Some(&prefix_end(prefix)), start_revision, idle)
    }

    fn watch_range(
        &self,
        key: &[u8],
        range_end: Option<&[u8]>,
        start_revision: Option<i64>,
        idle: Duration,
    ) -> Result<Watch, Error> {
        let mut create = json!({"key": b64_encode(key)});
        if let Some(end) = range_end {
            create["range_end"] = Value::String(b64_encode(end));
        }
        if let Some(r) = start_revision {
            create["start_revision"] = Value::String(r.to_string());
        }
        let body = json!({"create_request": create}).to_string().into_bytes();
        let mut tried = Vec::new();
        let mut opened = None;
        for i in self.order() {
            let ep = self.opts.endpoints[i].clone();
            match http::post(
                &ep,
                "/v3/watch",
                &body,
                self.opts.connect_timeout,
                self.opts.request_timeout,
            ) {
                Ok(r) if r.status == 200 => {
                    opened = Some((ep, r));
                    break;
                }
                Ok(r) => tried.push(format!("{ep}: HTTP {}", r.status)),
                Err(e) => tried.push(format!("{ep}: {}", desc(&e))),
            }
        }
        let Some((ep, mut resp)) = opened else {
            return Err(Error::Unreachable(tried.join("; ")));
        };
        let poll = Duration::from_millis(100);
        resp.set_read_timeout(poll)
            .map_err(|e| Error::Unreachable(format!("{ep}: {}", desc(&e))))?;
        let closer = resp
            .closer()
            .map_err(|e| Error::Unreachable(format!("{ep}: {}", desc(&e))))?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let probe = Client::new(Options {
            endpoints: vec![ep.clone()],
            ..self.opts.clone()
        })?;
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("etcd-watch".into())
            .spawn(move || {
                let mut last = Instant::now();
                while !stop2.load(Ordering::Relaxed) {
                    match resp.next_line() {
                        Ok(Some(line)) => {
                            last = Instant::now();
                            match parse_watch_line(&line) {
                                Ok(evs) => {
                                    for e in evs {
                                        let end = matches!(e, WatchEvent::Compacted { .. });
                                        if tx.send(e).is_err() || end {
                                            return;
                                        }
                                    }
                                }
                                Err((_, m)) => {
                                    let _ = tx.send(WatchEvent::Lost(Error::Server {
                                        endpoint: ep.clone(),
                                        code: -1,
                                        message: m,
                                    }));
                                    return;
                                }
                            }
                        }
                        Ok(None) => {
                            if last.elapsed() >= idle {
                                if let Err(e) = probe.call("/v3/maintenance/status", &json!({})) {
                                    let _ = tx.send(WatchEvent::Lost(e));
                                    return;
                                }
                                last = Instant::now();
                            }
                        }
                        Err(e) => {
                            if !stop2.load(Ordering::Relaxed) {
                                let _ = tx.send(WatchEvent::Lost(Error::Unreachable(format!(
                                    "{ep}: watch stream: {}",
                                    desc(&e)
                                ))));
                            }
                            return;
                        }
                    }
                }
            })
            .map_err(|e| Error::Unreachable(format!("cannot start the etcd-watch thread: {e}")))?;
        Ok(Watch {
            events: rx,
            stop,
            closer: Mutex::new(Some(closer)),
            thread: Some(thread),
        })
    }
}

/// A write bound to `lease` that etcd refused with gRPC code 5 (NotFound:
/// "requested lease not found") as [`Error::LeaseNotFound`].
fn lease_gone(e: Error, lease: Option<LeaseId>) -> Error {
    match (e, lease) {
        (Error::Server { code: 5, .. }, Some(l)) => Error::LeaseNotFound(l),
        (e, _) => e,
    }
}

fn desc(e: &HttpError) -> String {
    match e {
        HttpError::Connect(m) => format!("no connection: {m}"),
        HttpError::Io(m) => format!("exchange failed: {m}"),
        HttpError::Protocol(m) => format!("not HTTP: {m}"),
    }
}

/// A running watch: events arrive on [`Watch::events`]; drop to cancel.
pub struct Watch {
    pub events: crossbeam_channel::Receiver<WatchEvent>,
    stop: Arc<AtomicBool>,
    closer: Mutex<Option<TcpStream>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(mut c) = self.closer.lock() {
            if let Some(s) = c.take() {
                http::shutdown(&s);
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_rejects() {
        let cases: &[(&[u8], &str)] = &[
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"zeoraid/leader", "emVvcmFpZC9sZWFkZXI="),
            (&[0xff, 0xfe, 0x00], "//4A"),
        ];
        for (raw, text) in cases {
            assert_eq!(b64_encode(raw), *text);
            assert_eq!(b64_decode(text).as_deref(), Some(*raw));
        }
        for bad in ["Z", "Zm9v!", "é"] {
            assert_eq!(b64_decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn answers_and_errors() {
        type Case<'a> = (u16, &'a str, Result<&'a str, (i64, &'a str)>);
        let cases: &[Case] = &[
            (200, r#"{"header":{"revision":"5"},"ID":"7","TTL":"3"}"#, Ok("7")),
            (200, "{\"result\":{\"ID\":\"9\",\"TTL\":\"2\"}}\n", Ok("9")),
            (404, r#"{"error":"etcdserver: requested lease not found","code":5}"#, Err((5, "etcdserver: requested lease not found"))),
            (503, r#"{"error":"etcdserver: no leader","code":14,"message":"etcdserver: no leader"}"#, Err((14, "etcdserver: no leader"))),
            (200, "{\"error\":{\"grpc_code\":5,\"http_code\":404,\"message\":\"etcdserver: requested lease not found\",\"code\":5}}\n", Err((5, "etcdserver: requested lease not found"))),
            (200, "not json", Err((-1, ""))),
        ];
        for (status, body, want) in cases {
            let got = parse_answer(*status, body.as_bytes());
            match (got, want) {
                (Ok(v), Ok(id)) => assert_eq!(v["ID"], *id, "{body}"),
                (Err((c, m)), Err((wc, wm))) => {
                    assert_eq!(c, *wc, "{body}");
                    assert!(m.contains(wm), "{m} / {body}");
                }
                (g, w) => panic!("{body}: got {g:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn key_values_and_transactions() {
        let kv = r#"{"key":"YQ==","value":"Yg==","create_revision":"3","mod_revision":"4","version":"2","lease":"77"}"#;
        let v: Value = serde_json::from_str(kv).unwrap();
        let want = KeyValue {
            key: b"a".to_vec(),
            value: b"b".to_vec(),
            create_revision: 3,
            mod_revision: 4,
            version: 2,
            lease: 77,
        };
        assert_eq!(parse_kv(&v), Ok(want.clone()));
        let bad: Value = serde_json::from_str(r#"{"key":"YQ==","mod_revision":"x"}"#).unwrap();
        assert!(parse_kv(&bad).is_err());
        let won: Value = serde_json::from_str(r#"{"header":{"revision":"9"},"succeeded":true,"responses":[{"response_put":{"header":{}}}]}"#).unwrap();
        assert_eq!(parse_txn(&won), Ok(Cas::Applied { revision: 9 }));
        let lost: Value = serde_json::from_str(&format!(r#"{{"header":{{"revision":"9"}},"responses":[{{"response_range":{{"kvs":[{kv}],"count":"1"}}}}]}}"#)).unwrap();
        assert_eq!(parse_txn(&lost), Ok(Cas::Stale(Some(want))));
        let gone: Value = serde_json::from_str(
            r#"{"header":{"revision":"9"},"responses":[{"response_range":{}}]}"#,
        )
        .unwrap();
        assert_eq!(parse_txn(&gone), Ok(Cas::Stale(None)));

        let t = txn_json(
            b"k",
            &[Compare::CreateRevision(0), Compare::Value(b"me".to_vec())],
            Some((b"v", Some(12))),
        );
        assert_eq!(
            t["compare"][0],
            json!({"key": "aw==", "target": "CREATE", "result": "EQUAL", "create_revision": "0"})
        );
        assert_eq!(t["compare"][1]["value"], "bWU=");
        assert_eq!(
            t["success"][0]["request_put"],
            json!({"key": "aw==", "value": "dg==", "lease": "12"})
        );
        assert_eq!(t["failure"][0]["request_range"]["key"], "aw==");
        let d = txn_json(b"k", &[Compare::ModRevision(5)], None);
        assert_eq!(d["success"][0]["request_delete_range"]["key"], "aw==");
        assert_eq!(d["compare"][0]["mod_revision"], "5");
    }

    #[test]
    fn watch_lines() {
        let created = br#"{"result":{"header":{"revision":"3"},"created":true}}"#;
        assert_eq!(parse_watch_line(created), Ok(vec![]));
        let put = br#"{"result":{"header":{},"events":[{"kv":{"key":"YQ==","value":"Yg==","mod_revision":"4","create_revision":"4","version":"1"}}]}}"#;
        assert!(
            matches!(&parse_watch_line(put).unwrap()[..], [WatchEvent::Put(kv)] if kv.value == b"b")
        );
        let del =
            br#"{"result":{"events":[{"type":"DELETE","kv":{"key":"YQ==","mod_revision":"5"}}]}}"#;
        assert_eq!(
            parse_watch_line(del),
            Ok(vec![WatchEvent::Delete {
                key: b"a".to_vec(),
                revision: 5
            }])
        );
        // etcd 3.4.23's answer to a watch from a compacted revision.
        let compacted = br#"{"result":{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","raft_term":"2"},"canceled":true,"compact_revision":"4"}}"#;
        assert_eq!(
            parse_watch_line(compacted),
            Ok(vec![WatchEvent::Compacted {
                compact_revision: 4
            }])
        );
        let canceled = br#"{"result":{"canceled":true,"cancel_reason":"permission denied"}}"#;
        assert!(
            matches!(parse_watch_line(canceled), Err((-1, m)) if m.contains("permission denied"))
        );
        assert!(parse_watch_line(b"{oops").is_err());
    }

    #[test]
    fn member_status_with_ids_above_i64_max() {
        // A real etcd 3.4.23 answer; member ids are random uint64s, and
        // this one does not fit an i64.
        let v: Value = serde_json::from_str(
            r#"{"header":{"cluster_id":"324952591200643719","member_id":"13319814642761637952","revision":"1","raft_term":"2"},"version":"3.4.23","dbSize":"28672","leader":"13319814642761637952","raftIndex":"7","raftTerm":"2","raftAppliedIndex":"7","dbSizeInUse":"16384"}"#,
        )
        .unwrap();
        assert_eq!(
            parse_status(&v),
            Ok(MemberStatus {
                version: "3.4.23".into(),
                member_id: 13319814642761637952,
                leader: 13319814642761637952,
                raft_term: 2,
            })
        );
        let bad: Value = serde_json::from_str(r#"{"header":{"member_id":"-1"}}"#).unwrap();
        assert!(parse_status(&bad).is_err());
    }

    #[test]
    fn prefix_ends() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"arr/", b"arr0"),
            (b"a", b"b"),
            (b"a\xff", b"b"),
            (b"a\xfe\xff\xff", b"a\xff"),
            (b"\xff\xff", b"\x00"),
            (b"", b"\x00"),
        ];
        for (prefix, end) in cases {
            assert_eq!(prefix_end(prefix), *end, "{prefix:?}");
        }
    }

    #[test]
    fn writes_on_a_gone_lease_name_it() {
        // What etcd answers a put or txn on a revoked lease (HTTP 404).
        let body = br#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#;
        let (code, message) = parse_answer(404, body).unwrap_err();
        let e = Error::Server {
            endpoint: "e".into(),
            code,
            message,
        };
        assert_eq!(lease_gone(e.clone(), Some(7)), Error::LeaseNotFound(7));
        assert_eq!(lease_gone(e.clone(), None), e);
        let other = Error::Server {
            endpoint: "e".into(),
            code: 3,
            message: "bad".into(),
        };
        assert_eq!(lease_gone(other.clone(), Some(7)), other);
    }
}
