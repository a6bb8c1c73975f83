//! The status model, rendered three ways: the one-line health of
//! `zeoraid ctl status` with its Nagios exit code ([`health`]), the
//! per-backend table of `ctl details` ([`details_text`]) and the
//! Prometheus text of `/metrics` ([`prometheus`]). All pure functions of
//! the server's status document ([`crate::status::Document`], the same
//! one the `ruok` probe answers: storage name → its counters and, for an
//! array, `raid`).

use crate::config::size::human;
use crate::status::{ArrayState, Document, HaStatus, Histogram, OffsiteState, OffsiteStatus, Role};
use serde::Serialize;
use serde_json::Value;
use std::fmt::Write;

/// The whole server's health, worst storage first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    Optimal,
    Recovering,
    Degraded,
    Failed,
}

impl State {
    pub fn label(self) -> &'static str {
        match self {
            State::Optimal => "optimal",
            State::Recovering => "recovering",
            State::Degraded => "degraded",
            State::Failed => "failed",
        }
    }

    /// Nagios plugin exit code: 0 OK, 1 WARNING, 2 CRITICAL.
    pub fn exit_code(self) -> u8 {
        match self {
            State::Optimal => 0,
            State::Recovering => 1,
            State::Degraded | State::Failed => 2,
        }
    }

    fn nagios(self) -> &'static str {
        match self {
            State::Optimal => "OK",
            State::Recovering => "WARNING",
            State::Degraded | State::Failed => "CRITICAL",
        }
    }
}

impl From<ArrayState> for State {
    fn from(s: ArrayState) -> State {
        match s {
            ArrayState::Optimal => State::Optimal,
            ArrayState::Recovering => State::Recovering,
            ArrayState::Degraded => State::Degraded,
            ArrayState::Failed => State::Failed,
        }
    }
}

impl From<State> for ArrayState {
    fn from(s: State) -> ArrayState {
        match s {
            State::Optimal => ArrayState::Optimal,
            State::Recovering => ArrayState::Recovering,
            State::Degraded => ArrayState::Degraded,
            State::Failed => ArrayState::Failed,
        }
    }
}

/// Exit code when zeoraid cannot be reached or answers nonsense.
pub const UNKNOWN: u8 = 3;

/// The server's state (the worst of its storages; a plain storage is
/// optimal) and a Nagios-style line, or why the document makes no sense.
pub fn health(doc: &Document) -> Result<(State, String), String> {
    if doc.is_empty() {
        return Err("the status document has no storages".into());
    }
    let mut worst = State::Optimal;
    let mut parts = Vec::new();
    for (name, s) in doc {
        let (state, what) = match &s.raid {
            None => (State::Optimal, "served".to_string()),
            Some(r) => {
                let state = State::from(r.state);
                (
                    state,
                    format!(
                        "{} ({} of {} backends optimal)",
                        state.label(),
                        r.optimal,
                        r.backends.len()
                    ),
                )
            }
        };
        worst = worst.max(state);
        parts.push(format!("storage {name}: {what}"));
    }
    // A healthy standby is OK: the role is told, it does not count.
    if let Some(ha) = ha_of(doc) {
        parts.push(ha_words(ha));
    }
    Ok((
        worst,
        format!(
            "ZEORAID {} - {}; {}",
            worst.nagios(),
            worst.label(),
            parts.join("; ")
        ),
    ))
}

/// The controller's HA role, when it runs with `[ha]` (every storage
/// carries the same).
pub fn ha_of(doc: &Document) -> Option<&HaStatus> {
    doc.values().find_map(|s| s.ha.as_ref())
}

/// "controller ctl-b: standby (leader ctl-a)".
fn ha_words(ha: &HaStatus) -> String {
    let leader = match (ha.role.as_str(), &ha.leader) {
        ("leader", _) => match ha.epoch {
            Some(e) => format!("epoch {e}"),
            None => "leading".into(),
        },
        (_, Some(l)) => format!("leader {l}"),
        (_, None) => "no leader known".into(),
    };
    format!("controller {}: {} ({leader})", ha.controller, ha.role)
}

/// Days before expiry from which the server certificate makes the status
/// WARNING.
pub const CERTIFICATE_WARN_DAYS: i64 = 14;

/// The server certificate's part of the status: a Nagios code and words
/// (pure). Expired: CRITICAL; expiring within
/// [`CERTIFICATE_WARN_DAYS`]: WARNING.
pub fn certificate_health(file: &str, not_after: i64, now: i64) -> (u8, String) {
    let date = crate::net::tls::format_utc(not_after);
    let left = not_after - now;
    if left < 0 {
        (
            2,
            format!("TLS certificate {file} EXPIRED on {date}: renew it and reload"),
        )
    } else if left < CERTIFICATE_WARN_DAYS * 86400 {
        (
            1,
            format!(
                "TLS certificate {file} expires in {} days ({date}): renew it and reload",
                left / 86400
            ),
        )
    } else {
        (0, format!("TLS certificate valid until {date}"))
    }
}

/// Merge the certificate's part into the status line: the worse code wins
/// and names the line (pure).
pub fn with_certificate(status: (u8, String), cert: (u8, String)) -> (u8, String) {
    let (code, line) = status;
    let worst = code.max(cert.0);
    let label = |c: u8| match c {
        0 => "OK",
        1 => "WARNING",
        2 => "CRITICAL",
        _ => "UNKNOWN",
    };
    let line = if worst != code {
        line.replacen(
            &format!("ZEORAID {} ", label(code)),
            &format!("ZEORAID {} ", label(worst)),
            1,
        )
    } else {
        line
    };
    (worst, format!("{line}; {}", cert.1))
}

/// The off-site mirrors' part of the status: WARNING with their
/// warnings (degraded, or past `max-lag`), or OK with how far behind they
/// are; `None` without off-site mirrors (pure).
pub fn offsite_check(doc: &Document) -> Option<(u8, String)> {
    let mirrors: Vec<&OffsiteStatus> = doc
        .values()
        .filter_map(|s| s.raid.as_ref())
        .flat_map(|r| &r.offsite)
        .collect();
    if mirrors.is_empty() {
        return None;
    }
    let warnings: Vec<String> = mirrors.iter().filter_map(|m| m.warning.clone()).collect();
    if warnings.is_empty() {
        let lags: Vec<String> = mirrors
            .iter()
            .map(|m| format!("off-site {} {} s behind", m.name, t(&m.lag_seconds)))
            .collect();
        Some((0, lags.join("; ")))
    } else {
        Some((1, warnings.join("; ")))
    }
}

/// The certificate's expiry as a Prometheus gauge.
pub fn certificate_metric(file: &str, not_after: i64) -> String {
    format!(
        "# HELP zeoraid_tls_certificate_expiry_timestamp_seconds notAfter of the served TLS certificate\n\
         # TYPE zeoraid_tls_certificate_expiry_timestamp_seconds gauge\n\
         zeoraid_tls_certificate_expiry_timestamp_seconds{{certificate=\"{}\"}} {not_after}\n",
        esc(file)
    )
}

/// A value as the status document writes it (`2.0`, not `2`), `-` for
/// none.
fn t<T: Serialize + ?Sized>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::Null) | Err(_) => "-".into(),
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
    }
}

/// `ctl details`: per storage, each backend's kind, state, reason, last
/// tid, latency, reads and writes, and a recovery's progress.
pub fn details_text(doc: &Document) -> String {
    let mut out = String::new();
    if doc.is_empty() {
        return "no storages\n".into();
    }
    if let Some(ha) = ha_of(doc) {
        let secs = |ms: u64| ms as f64 / 1000.0;
        let lease = match (ha.lease_age_ms, ha.key_seen_age_ms) {
            (Some(ms), _) => format!(", lease renewed {:.1} s ago", secs(ms)),
            (None, Some(ms)) => format!(", leader key read {:.1} s ago", secs(ms)),
            (None, None) => String::new(),
        };
        let _ = writeln!(
            out,
            "{} of cluster {}, {} leader change(s) here{lease}",
            ha_words(ha),
            ha.cluster,
            ha.leader_changes
        );
    }
    for (name, s) in doc {
        let _ = writeln!(
            out,
            "storage {name}: {} connections, {} commits, {} loads, last transaction {}",
            s.connections,
            s.commits,
            s.loads,
            t(&s.last_transaction)
        );
        let Some(r) = &s.raid else {
            continue;
        };
        let _ = writeln!(
            out,
            "  array {} ({} of {} optimal, min-optimal {}), {} fan-out, auto-recover {}, recovery-ratio {}",
            r.state,
            r.optimal,
            r.backends.len(),
            r.min_optimal,
            t(&r.fanout),
            r.auto_recover,
            t(&r.recovery_ratio)
        );
        if let Some(d) = &r.differs_from_config {
            let list = |v: &[String]| {
                if v.is_empty() {
                    "none".to_string()
                } else {
                    v.join(", ")
                }
            };
            let _ = writeln!(
                out,
                "  differs from the config file: running but not in it: {}; in it but not \
                 running: {} (a restart keeps runtime changes; `zeoraid ctl reload` makes the \
                 array match the file)",
                list(&d.only_running),
                list(&d.only_in_config)
            );
        }
        if let Some(th) = &r.throttle {
            let _ = writeln!(
                out,
                "  commit throttle: {} admitted, {} waited, {} forced",
                th.admitted, th.throttled, th.forced
            );
        }
        if let Some(f) = &r.fence {
            let epoch = f
                .epoch
                .map(|e| format!(" at epoch {e}"))
                .unwrap_or_default();
            let what = match f.state.as_str() {
                "lost" => " (another controller took over: writes refused)",
                "standby" => " (another controller leads: writes refused)",
                _ => "",
            };
            let _ = writeln!(out, "  fence: {}{epoch}{what}", f.state);
        }
        if let Some(c) = &r.cache {
            let _ = writeln!(
                out,
                "  object cache: {} of {} in {} objects, {:.1}% of {} reads hit, {} evictions, {} \
                 answered from memory",
                human(c.size),
                human(c.capacity),
                c.objects,
                c.hit_rate() * 100.0,
                c.hits + c.misses,
                c.evictions,
                human(c.bytes_saved)
            );
        }
        let _ = writeln!(
            out,
            "  {:<12} {:<6} {:<11} {:<18} {:>10} {:>9} {:>9}  WHERE",
            "BACKEND", "KIND", "STATE", "LAST TID", "LATENCY", "READS", "WRITES"
        );
        for b in &r.backends {
            let _ = writeln!(
                out,
                "  {:<12} {:<6} {:<11} {:<18} {:>8}ms {:>9} {:>9}  {}",
                b.name,
                b.kind,
                b.state.label(),
                b.last_transaction,
                t(&b.latency_ms),
                b.reads,
                b.writes,
                b.place
            );
            if let Some(why) = &b.reason {
                let _ = writeln!(out, "      reason: {why}");
            }
            if let Some(lag) = b.lag_seconds.filter(|l| *l > 0.0) {
                let _ = writeln!(out, "      behind the array by {lag} s of commits");
            }
            if let Some(rec) = &b.recovery {
                let _ = writeln!(
                    out,
                    "      recovering from {}: {}% ({} copied, about {} left, {}/s, ETA {} s)",
                    rec.source,
                    t(&rec.percent),
                    rec.copied,
                    rec.left,
                    t(&rec.rate),
                    t(&rec.eta_seconds)
                );
            }
            if let Some(err) = &b.last_recovery_error {
                let _ = writeln!(
                    out,
                    "      last recovery attempt ({} failed): {err}",
                    b.recovery_failures
                );
            }
            if let Some(v) = &b.verify {
                let _ = writeln!(
                    out,
                    "      last verify: {}",
                    v.difference
                        .as_ref()
                        .map(|d| format!("DIFFERENT: {d}"))
                        .unwrap_or_else(|| format!(
                            "identical over {} transactions",
                            v.transactions
                        ))
                );
            }
        }
        for m in &r.offsite {
            let _ = writeln!(
                out,
                "  {:<12} {:<6} {:<11} {:<18} {:>10} {:>9} {:>9}  {}",
                m.name,
                m.kind,
                m.state.label(),
                t(&m.last_tid),
                "off-site",
                0,
                m.shipped,
                m.place
            );
            let _ = writeln!(
                out,
                "      behind by {} s, {}{} transactions, {} bytes queued (max-lag {} s); shipping {}/s, {} MB shipped; queue overflows {}",
                t(&m.lag_seconds),
                if m.lag_estimated { "about " } else { "" },
                t(&m.lag_transactions),
                t(&m.lag_bytes),
                t(&m.max_lag),
                t(&m.rate),
                t(&m.shipped_megabytes),
                m.queue.overflows
            );
            if let Some(why) = &m.reason {
                let _ = writeln!(out, "      reason: {why}");
            }
            if let Some(err) = &m.last_error {
                let _ = writeln!(out, "      last error ({} failures): {err}", m.failures);
            }
        }
    }
    out
}

/// A label value escaped for the Prometheus text format.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text (version 0.0.4) of the status document.
pub fn prometheus(doc: &Document) -> String {
    let mut m = Metrics::default();
    if let Some(ha) = ha_of(doc) {
        ha_metrics(&mut m, ha);
    }
    for (name, s) in doc {
        let l = format!("storage=\"{}\"", esc(name));
        let counters = [
            ("loads", s.loads),
            ("stores", s.stores),
            ("commits", s.commits),
            ("aborts", s.aborts),
            ("conflicts", s.conflicts),
            ("conflicts_resolved", s.conflicts_resolved),
        ];
        for (metric, value) in counters {
            m.add(
                &format!("zeoraid_{metric}_total"),
                "counter",
                &format!("{metric} since start, per storage"),
                &l,
                value as f64,
            );
        }
        m.add(
            "zeoraid_connections",
            "gauge",
            "client connections",
            &l,
            s.connections as f64,
        );
        m.add(
            "zeoraid_waiting_votes",
            "gauge",
            "votes waiting for the commit lock",
            &l,
            s.waiting as f64,
        );
        let Some(r) = &s.raid else { continue };
        for st in [
            ArrayState::Optimal,
            ArrayState::Degraded,
            ArrayState::Recovering,
            ArrayState::Failed,
        ] {
            m.add(
                "zeoraid_array_state",
                "gauge",
                "1 for the array's state",
                &format!("{l},state=\"{st}\""),
                f64::from(u8::from(r.state == st)),
            );
        }
        m.add(
            "zeoraid_array_optimal_backends",
            "gauge",
            "optimal backends",
            &l,
            r.optimal as f64,
        );
        if let Some(f) = &r.fence {
            for st in ["held", "taking", "lost", "standby"] {
                m.add(
                    "zeoraid_fence_state",
                    "gauge",
                    "1 for where the array stands with fencing (controller HA)",
                    &format!("{l},state=\"{st}\""),
                    f64::from(u8::from(f.state == st)),
                );
            }
            if let Some(e) = f.epoch {
                m.add(
                    "zeoraid_fence_epoch",
                    "gauge",
                    "the fencing epoch this controller holds or lost",
                    &l,
                    e as f64,
                );
            }
        }
        if let Some(c) = &r.cache {
            for (name, kind, help, v) in [
                (
                    "zeoraid_cache_capacity_bytes",
                    "gauge",
                    "the object cache's size limit (cache-size)",
                    c.capacity,
                ),
                (
                    "zeoraid_cache_size_bytes",
                    "gauge",
                    "bytes the object cache holds",
                    c.size,
                ),
                (
                    "zeoraid_cache_objects",
                    "gauge",
                    "objects the object cache holds",
                    c.objects,
                ),
                (
                    "zeoraid_cache_hits_total",
                    "counter",
                    "reads answered from the object cache",
                    c.hits,
                ),
                (
                    "zeoraid_cache_misses_total",
                    "counter",
                    "reads the object cache could not answer",
                    c.misses,
                ),
                (
                    "zeoraid_cache_evictions_total",
                    "counter",
                    "objects evicted from the object cache",
                    c.evictions,
                ),
                (
                    "zeoraid_cache_saved_bytes_total",
                    "counter",
                    "bytes of data answered from the object cache instead of a backend",
                    c.bytes_saved,
                ),
            ] {
                m.add(name, kind, help, &l, v as f64);
            }
        }
        if let Some(th) = &r.throttle {
            m.add(
                "zeoraid_recovery_throttle_admitted",
                "gauge",
                "commits admitted during the running recovery",
                &l,
                th.admitted as f64,
            );
            m.add(
                "zeoraid_recovery_throttle_waited",
                "gauge",
                "commits that waited for recovery credit",
                &l,
                th.throttled as f64,
            );
            m.add(
                "zeoraid_recovery_throttle_forced",
                "gauge",
                "commits admitted on credit after the longest wait",
                &l,
                th.forced as f64,
            );
        }
        for o in &r.offsite {
            let ol = format!("{l},backend=\"{}\"", esc(&o.name));
            for st in OffsiteState::ALL {
                m.add(
                    "zeoraid_offsite_state",
                    "gauge",
                    "1 for the off-site mirror's state",
                    &format!("{ol},state=\"{st}\""),
                    f64::from(u8::from(o.state == st)),
                );
            }
            let gauges = [
                (o.lag_seconds.unwrap_or(0.0), "zeoraid_offsite_lag_seconds", "commit time the off-site mirror trails the array by"),
                (o.lag_transactions.unwrap_or(0) as f64, "zeoraid_offsite_lag_transactions", "committed transactions not yet on the off-site mirror (estimated while it catches up)"),
                (o.lag_bytes.unwrap_or(0) as f64, "zeoraid_offsite_lag_bytes", "record bytes queued for the off-site mirror"),
                (o.max_lag, "zeoraid_offsite_max_lag_seconds", "lag past which the status warns"),
                (o.rate, "zeoraid_offsite_shipping_rate", "transactions shipped per second (smoothed)"),
            ];
            for (value, metric, help) in gauges {
                m.add(metric, "gauge", help, &ol, value);
            }
            m.add(
                "zeoraid_offsite_shipped_transactions_total",
                "counter",
                "transactions shipped to the off-site mirror since start",
                &ol,
                o.shipped as f64,
            );
            m.add(
                "zeoraid_offsite_shipped_megabytes_total",
                "counter",
                "record megabytes shipped to the off-site mirror since start",
                &ol,
                o.shipped_megabytes,
            );
            m.add(
                "zeoraid_offsite_queue_overflows_total",
                "counter",
                "times the queue forgot transactions (read back from a synchronous backend)",
                &ol,
                o.queue.overflows as f64,
            );
            m.add(
                "zeoraid_offsite_failures_total",
                "counter",
                "shipping failures (link or mirror) since start",
                &ol,
                o.failures as f64,
            );
        }
        for b in &r.backends {
            let bl = format!("{l},backend=\"{}\"", esc(&b.name));
            for st in Role::ALL {
                m.add(
                    "zeoraid_backend_state",
                    "gauge",
                    "1 for the backend's state",
                    &format!("{bl},state=\"{st}\""),
                    f64::from(u8::from(b.state == st)),
                );
            }
            m.add(
                "zeoraid_backend_latency_seconds",
                "gauge",
                "recent call latency (moving average)",
                &bl,
                b.latency_ms / 1000.0,
            );
            m.add_histogram(
                "zeoraid_backend_call_seconds",
                "backend call latency (reads, votes, finishes)",
                &bl,
                &b.latency_histogram,
            );
            if let Some(lag) = b.lag_seconds {
                m.add(
                    "zeoraid_backend_lag_seconds",
                    "gauge",
                    "commit time between the array's newest transaction and the backend's",
                    &bl,
                    lag,
                );
            }
            m.add(
                "zeoraid_backend_reads_total",
                "counter",
                "reads served",
                &bl,
                b.reads as f64,
            );
            m.add(
                "zeoraid_backend_writes_total",
                "counter",
                "transactions committed",
                &bl,
                b.writes as f64,
            );
            m.add(
                "zeoraid_backend_errors_total",
                "counter",
                "times the backend was degraded or a recovery of it failed",
                &bl,
                b.errors as f64,
            );
            m.add(
                "zeoraid_backend_recovery_failures",
                "gauge",
                "failed recovery attempts in a row",
                &bl,
                b.recovery_failures as f64,
            );
            if let Some(rec) = &b.recovery {
                m.add(
                    "zeoraid_recovery_copied",
                    "gauge",
                    "transactions copied by the running recovery",
                    &bl,
                    rec.copied as f64,
                );
                m.add(
                    "zeoraid_recovery_left",
                    "gauge",
                    "transactions left to copy (estimate)",
                    &bl,
                    rec.left as f64,
                );
                m.add(
                    "zeoraid_recovery_percent",
                    "gauge",
                    "recovery progress, percent",
                    &bl,
                    rec.percent,
                );
                m.add(
                    "zeoraid_recovery_rate",
                    "gauge",
                    "transactions copied per second",
                    &bl,
                    rec.rate,
                );
            }
            if let Some(v) = &b.verify {
                m.add(
                    "zeoraid_verify_identical",
                    "gauge",
                    "1 when the last verify found the histories identical",
                    &bl,
                    f64::from(u8::from(v.difference.is_none())),
                );
                m.add(
                    "zeoraid_verify_transactions",
                    "gauge",
                    "transactions compared by the last verify",
                    &bl,
                    v.transactions as f64,
                );
            }
        }
    }
    m.render()
}

/// The controller's role (one sample per role, 1 for the current one),
/// the leader it sees, and how often it took the leader key.
fn ha_metrics(m: &mut Metrics, ha: &HaStatus) {
    let l = format!(
        "controller=\"{}\",cluster=\"{}\"",
        esc(&ha.controller),
        esc(&ha.cluster)
    );
    for role in ["standby", "fencing", "reconciling", "leader"] {
        m.add(
            "zeoraid_ha_role",
            "gauge",
            "1 for this controller's HA role",
            &format!("{l},role=\"{role}\""),
            f64::from(u8::from(ha.role == role)),
        );
    }
    if let Some(leader) = &ha.leader {
        m.add(
            "zeoraid_ha_leader",
            "gauge",
            "1 for the controller this one sees leading",
            &format!("{l},leader=\"{}\"", esc(leader)),
            1.0,
        );
    }
    m.add(
        "zeoraid_ha_leader_changes_total",
        "counter",
        "times this controller took the leader key",
        &l,
        ha.leader_changes as f64,
    );
    if let Some(ms) = ha.key_seen_age_ms {
        m.add(
            "zeoraid_ha_key_seen_age_seconds",
            "gauge",
            "seconds since etcd last told this standby who holds the leader key",
            &l,
            ms as f64 / 1000.0,
        );
    }
    if let Some(ms) = ha.lease_age_ms {
        m.add(
            "zeoraid_ha_lease_age_seconds",
            "gauge",
            "seconds since this controller last renewed its lease (while it holds the key)",
            &l,
            ms as f64 / 1000.0,
        );
    }
}

/// Samples grouped by metric (the text format wants each metric's
/// samples together, after one HELP and TYPE).
#[derive(Default)]
struct Metrics {
    order: Vec<String>,
    by_name: std::collections::HashMap<String, (String, String, Vec<String>)>,
}

impl Metrics {
    fn add(&mut self, name: &str, kind: &str, help: &str, labels: &str, value: f64) {
        let e = self.by_name.entry(name.to_string()).or_insert_with(|| {
            self.order.push(name.to_string());
            (kind.to_string(), help.to_string(), Vec::new())
        });
        e.2.push(format!("{name}{{{labels}}} {value}"));
    }

    /// A histogram from its bounds, cumulative counts (then `+Inf`), sum
    /// and count.
    fn add_histogram(&mut self, name: &str, help: &str, labels: &str, h: &Histogram) {
        let e = self.by_name.entry(name.to_string()).or_insert_with(|| {
            self.order.push(name.to_string());
            ("histogram".to_string(), help.to_string(), Vec::new())
        });
        for (k, c) in h.counts.iter().enumerate() {
            let le =
                h.le.get(k)
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "+Inf".into());
            e.2.push(format!("{name}_bucket{{{labels},le=\"{le}\"}} {c}"));
        }
        e.2.push(format!("{name}_sum{{{labels}}} {}", h.sum));
        e.2.push(format!("{name}_count{{{labels}}} {}", h.count));
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for name in &self.order {
            let (kind, help, samples) = &self.by_name[name];
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for s in samples {
                let _ = writeln!(out, "{s}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A document from JSON, as `ctl` reads it.
    fn d(v: &Value) -> Document {
        crate::status::from_value(v.clone()).expect("a status document")
    }

    fn array(state: &str, optimal: u64, backends: &[(&str, &str)]) -> Value {
        json!({
            "storage": "1", "connections": 2, "loads": 10, "stores": 3, "commits": 3,
            "aborts": 0, "conflicts": 1, "conflicts_resolved": 0, "waiting": 0,
            "last-transaction": "03d0",
            "raid": {
                "state": state, "optimal": optimal, "min-optimal": 1,
                "fanout": "parallel", "throttle": null,
                "backends": backends.iter().map(|(n, s)| json!({
                    "name": n, "kind": "file", "state": s, "reason": null,
                    "latency-ms": 1.5, "reads": 4, "writes": 3, "errors": 0,
                    "recovery": null, "recovery-failures": 0,
                    "last-recovery-error": null, "last-transaction": "03d0",
                    "latency-histogram": {"le": [0.001, 0.01], "counts": [2, 5, 6], "sum": 0.03, "count": 6},
                })).collect::<Vec<_>>(),
            }
        })
    }

    #[test]
    fn health_and_exit_codes() {
        let plain = json!({"storage": "1", "connections": 0});
        let cases = [
            (
                json!({"1": array("optimal", 2, &[("a", "optimal"), ("b", "optimal")])}),
                State::Optimal,
                0,
            ),
            (
                json!({"1": array("recovering", 1, &[("a", "optimal"), ("b", "recovering")])}),
                State::Recovering,
                1,
            ),
            (
                json!({"1": array("degraded", 1, &[("a", "optimal"), ("b", "degraded")])}),
                State::Degraded,
                2,
            ),
            (
                json!({"1": array("failed", 0, &[("a", "degraded")])}),
                State::Failed,
                2,
            ),
            (json!({"plain": plain.clone()}), State::Optimal, 0),
            (
                json!({"plain": plain, "1": array("recovering", 1, &[("a", "optimal"), ("b", "recovering")])}),
                State::Recovering,
                1,
            ),
            (
                json!({"1": array("optimal", 2, &[]), "2": array("degraded", 1, &[])}),
                State::Degraded,
                2,
            ),
        ];
        for (doc, state, code) in cases {
            let (got, line) = health(&d(&doc)).unwrap();
            assert_eq!(got, state, "{doc}");
            assert_eq!(got.exit_code(), code);
            assert!(line.starts_with("ZEORAID "), "{line}");
            assert!(line.contains(state.label()), "{line}");
        }
        for nonsense in [
            json!({}),
            json!([1, 2]),
            json!("ok"),
            json!({"1": {"raid": {"state": "weird"}}}),
        ] {
            assert!(
                crate::status::from_value(nonsense.clone())
                    .map_or(true, |doc| health(&doc).is_err()),
                "{nonsense}"
            );
        }
        let (_, line) = health(&d(
            &json!({"1": array("degraded", 1, &[("a", "optimal"), ("b", "degraded")])}),
        ))
        .unwrap();
        assert_eq!(
            line,
            "ZEORAID CRITICAL - degraded; storage 1: degraded (1 of 2 backends optimal)"
        );
    }

    #[test]
    fn details_show_each_backend_and_a_recovery() {
        let mut doc =
            json!({"1": array("recovering", 1, &[("a", "optimal"), ("b", "recovering")])});
        doc["1"]["raid"]["backends"][1]["reason"] = json!("connection lost");
        doc["1"]["raid"]["backends"][1]["recovery"] = json!({
            "source": "a", "percent": 42.5, "copied": 425, "left": 575, "rate": 100.0, "eta-seconds": 6.0
        });
        let t = details_text(&d(&doc));
        assert!(t.contains("array recovering (1 of 2 optimal"), "{t}");
        assert!(t.contains("reason: connection lost"), "{t}");
        assert!(
            t.contains("recovering from a: 42.5% (425 copied, about 575 left, 100.0/s, ETA 6.0 s)"),
            "{t}"
        );
    }

    #[test]
    fn offsite_checks() {
        let doc =
            |mirrors: Value| d(&json!({"1": {"raid": {"state": "optimal", "offsite": mirrors}}}));
        assert_eq!(offsite_check(&d(&json!({"1": {"loads": 1}}))), None);
        assert_eq!(offsite_check(&doc(json!([]))), None);
        let (code, line) = offsite_check(&doc(
            json!([{"name": "dr", "lag-seconds": 1.5, "warning": null}]),
        ))
        .unwrap();
        assert_eq!((code, line.as_str()), (0, "off-site dr 1.5 s behind"));
        let (code, line) = offsite_check(&doc(json!([
            {"name": "dr", "lag-seconds": 1.5, "warning": null},
            {"name": "dr2", "lag-seconds": 90, "warning": "off-site dr2 is 90 s behind (max-lag 60 s)"}
        ])))
        .unwrap();
        assert_eq!(code, 1);
        assert!(line.contains("dr2 is 90 s behind"), "{line}");
    }

    #[test]
    fn certificate_expiry() {
        let day = 86400;
        // (days left, code, words)
        let table = [
            (400, 0, "valid until"),
            (14, 0, "valid until"),
            (13, 1, "expires in 13 days"),
            (0, 1, "expires in 0 days"),
            (-1, 2, "EXPIRED on"),
        ];
        for (days, code, words) in table {
            let (c, line) = certificate_health("s.pem", 1_000_000_000 + days * day, 1_000_000_000);
            assert_eq!(c, code, "{days}: {line}");
            assert!(line.contains(words), "{days}: {line}");
        }
        let ok = (0, "ZEORAID OK - optimal; storage 1: served".to_string());
        let (c, line) = with_certificate(
            ok.clone(),
            (1, "TLS certificate s.pem expires in 3 days".into()),
        );
        assert_eq!(c, 1);
        assert!(
            line.starts_with("ZEORAID WARNING - optimal; storage 1: served; TLS"),
            "{line}"
        );
        let crit = (2, "ZEORAID CRITICAL - degraded; x".to_string());
        let (c, line) = with_certificate(crit, (1, "cert".into()));
        assert_eq!(
            (c, line.as_str()),
            (2, "ZEORAID CRITICAL - degraded; x; cert")
        );
        let (c, line) = with_certificate(ok, (0, "TLS certificate valid until".into()));
        assert_eq!(c, 0);
        assert!(line.starts_with("ZEORAID OK - "), "{line}");
        let m = certificate_metric("/etc/s.pem", 42);
        assert!(
            m.contains(
                "zeoraid_tls_certificate_expiry_timestamp_seconds{certificate=\"/etc/s.pem\"} 42\n"
            ),
            "{m}"
        );
    }

    #[test]
    fn the_fence_shows_in_details_and_metrics() {
        let mut doc = json!({"1": array("optimal", 2, &[("a", "optimal"), ("b", "optimal")])});
        let text = details_text(&d(&doc));
        assert!(
            !text.contains("fence"),
            "one controller: no fence line\n{text}"
        );
        doc["1"]["raid"]["fence"] = json!({"state": "lost", "epoch": 7});
        let text = details_text(&d(&doc));
        assert!(
            text.contains("fence: lost at epoch 7 (another controller took over"),
            "{text}"
        );
        let t = prometheus(&d(&doc));
        for want in [
            "zeoraid_fence_state{storage=\"1\",state=\"lost\"} 1\n",
            "zeoraid_fence_state{storage=\"1\",state=\"held\"} 0\n",
            "zeoraid_fence_epoch{storage=\"1\"} 7\n",
        ] {
            assert!(t.contains(want), "{want} in {t}");
        }
    }

    #[test]
    fn the_object_cache_shows_in_details_and_metrics() {
        let mut doc = json!({"1": array("optimal", 2, &[("a", "optimal"), ("b", "optimal")])});
        assert!(
            !details_text(&d(&doc)).contains("object cache"),
            "off: no line"
        );
        doc["1"]["raid"]["cache"] = json!({
            "capacity": 64 << 20, "size": 3 << 20, "objects": 1200, "hits": 900,
            "misses": 100, "evictions": 5, "bytes-saved": 2 << 20,
        });
        let text = details_text(&d(&doc));
        assert!(
            text.contains(
                "object cache: 3.0 MB of 64.0 MB in 1200 objects, 90.0% of 1000 reads hit, 5 \
                 evictions, 2.0 MB answered from memory"
            ),
            "{text}"
        );
        let t = prometheus(&d(&doc));
        for want in [
            "zeoraid_cache_capacity_bytes{storage=\"1\"} 67108864\n",
            "zeoraid_cache_size_bytes{storage=\"1\"} 3145728\n",
            "zeoraid_cache_hits_total{storage=\"1\"} 900\n",
            "zeoraid_cache_misses_total{storage=\"1\"} 100\n",
            "zeoraid_cache_evictions_total{storage=\"1\"} 5\n",
            "zeoraid_cache_saved_bytes_total{storage=\"1\"} 2097152\n",
            "# TYPE zeoraid_cache_hits_total counter\n",
        ] {
            assert!(t.contains(want), "{want} in {t}");
        }
    }

    #[test]
    fn the_ha_role_shows_in_status_details_and_metrics() {
        let mut doc = json!({"1": array("optimal", 2, &[("a", "optimal"), ("b", "optimal")])});
        let (_, line) = health(&d(&doc)).expect("health");
        assert!(!line.contains("controller"), "no [ha]: {line}");
        assert!(!prometheus(&d(&doc)).contains("zeoraid_ha_"));
        doc["1"]["ha"] = json!({
            "controller": "ctl-b", "cluster": "prod", "role": "standby",
            "leader": "ctl-a", "leader-changes": 2
        });
        let (state, line) = health(&d(&doc)).expect("health");
        assert_eq!(state, State::Optimal, "a healthy standby is OK");
        assert!(
            line.starts_with("ZEORAID OK - ")
                && line.ends_with("; controller ctl-b: standby (leader ctl-a)"),
            "{line}"
        );
        let text = details_text(&d(&doc));
        assert!(
            text.starts_with(
                "controller ctl-b: standby (leader ctl-a) of cluster prod, 2 leader change(s) here\n"
            ),
            "{text}"
        );
        let t = prometheus(&d(&doc));
        let l = "controller=\"ctl-b\",cluster=\"prod\"";
        for want in [
            format!("zeoraid_ha_role{{{l},role=\"standby\"}} 1\n"),
            format!("zeoraid_ha_role{{{l},role=\"leader\"}} 0\n"),
            format!("zeoraid_ha_leader{{{l},leader=\"ctl-a\"}} 1\n"),
            format!("zeoraid_ha_leader_changes_total{{{l}}} 2\n"),
        ] {
            assert!(t.contains(&want), "{want} in {t}");
        }
        doc["1"]["ha"]["role"] = json!("leader");
        doc["1"]["ha"]["leader"] = json!("ctl-b");
        doc["1"]["ha"]["epoch"] = json!(9);
        doc["1"]["ha"]["lease-age-ms"] = json!(300);
        let (_, line) = health(&d(&doc)).expect("health");
        assert!(
            line.ends_with("; controller ctl-b: leader (epoch 9)"),
            "{line}"
        );
        let text = details_text(&d(&doc));
        assert!(
            text.starts_with(
                "controller ctl-b: leader (epoch 9) of cluster prod, 2 leader change(s) here, \
                 lease renewed 0.3 s ago\n"
            ),
            "{text}"
        );
        let t = prometheus(&d(&doc));
        assert!(
            t.contains(&format!("zeoraid_ha_lease_age_seconds{{{l}}} 0.3\n")),
            "{t}"
        );
        // A standby shows how fresh its view of the leader is.
        doc["1"]["ha"]["role"] = json!("standby");
        doc["1"]["ha"]["leader"] = json!("ctl-a");
        doc["1"]["ha"]["epoch"] = json!(null);
        doc["1"]["ha"]["lease-age-ms"] = json!(null);
        doc["1"]["ha"]["key-seen-age-ms"] = json!(400);
        let text = details_text(&d(&doc));
        assert!(
            text.starts_with(
                "controller ctl-b: standby (leader ctl-a) of cluster prod, 2 leader change(s) \
                 here, leader key read 0.4 s ago\n"
            ),
            "{text}"
        );
        let t = prometheus(&d(&doc));
        assert!(
            t.contains(&format!("zeoraid_ha_key_seen_age_seconds{{{l}}} 0.4\n")),
            "{t}"
        );
        assert!(!t.contains("zeoraid_ha_lease_age_seconds"), "{t}");
    }

    #[test]
    fn prometheus_text_groups_samples_under_one_help_and_type() {
        let mut doc = json!({"1": array("degraded", 1, &[("a", "optimal"), ("b\"x", "degraded")])});
        doc["1"]["raid"]["backends"][0]["verify"] = json!({"difference": null, "transactions": 7});
        let t = prometheus(&d(&doc));
        assert_eq!(
            t.matches("# TYPE zeoraid_backend_state gauge").count(),
            1,
            "{t}"
        );
        assert!(
            t.contains("zeoraid_commits_total{storage=\"1\"} 3\n"),
            "{t}"
        );
        assert!(
            t.contains("zeoraid_array_state{storage=\"1\",state=\"degraded\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains(
                "zeoraid_backend_state{storage=\"1\",backend=\"b\\\"x\",state=\"degraded\"} 1\n"
            ),
            "{t}"
        );
        assert!(
            t.contains("zeoraid_backend_latency_seconds{storage=\"1\",backend=\"a\"} 0.0015\n"),
            "{t}"
        );
        assert!(
            t.contains("zeoraid_verify_identical{storage=\"1\",backend=\"a\"} 1\n"),
            "{t}"
        );
        for want in [
            "# TYPE zeoraid_backend_call_seconds histogram\n",
            "zeoraid_backend_call_seconds_bucket{storage=\"1\",backend=\"a\",le=\"0.01\"} 5\n",
            "zeoraid_backend_call_seconds_bucket{storage=\"1\",backend=\"a\",le=\"+Inf\"} 6\n",
            "zeoraid_backend_call_seconds_count{storage=\"1\",backend=\"a\"} 6\n",
        ] {
            assert!(t.contains(want), "{want} in {t}");
        }
        // Every sample line follows its metric's TYPE line.
        let mut current = String::new();
        for line in t.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap().to_string();
            } else if !line.starts_with('#') {
                let name = line.split('{').next().unwrap();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| *b == current))
                    .unwrap_or(name);
                assert_eq!(base, current, "{line} under {current}");
            }
        }
    }
}
