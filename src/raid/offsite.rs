//! Off-site mirrors: backends written to after the commit, in commit
//! order, by a thread of their own, so a mirror across a slow link never
//! slows a commit (`mode = "offsite"`).
//!
//! **Design: recovery that never ends.** Each mirror has one OS thread
//! (`zeoraid-offsite-ARRAY-NAME`) that ships every committed transaction
//! with its tid, status, metadata, records and backpointers (restore
//! semantics, as a recovery copies), oldest first:
//!
//! - *Fast path*: at finish the array puts the transaction into the
//!   mirror's bounded queue ([`super::state::offsite::ShipQueue`], by default
//!   64 MiB and 100 000 transactions). The records share the client's
//!   data buffers (reference-counted), so the queue costs no copy, and
//!   the commit path does no extra write, fsync or network call. A
//!   transaction whose records the array does not know at finish (an
//!   undo) is queued as a tid and read back from a synchronous backend.
//!   Only transactions visible on the synchronous backends are shipped.
//! - *Catch-up*: when the queue overflowed (it forgets its oldest entries
//!   and remembers up to where), after a link failure, and after a
//!   restart, the thread reads what the mirror lacks from an optimal
//!   synchronous backend (in-process first), exactly as a recovery does,
//!   then returns to the queue. Nothing is lost: the synchronous backends
//!   are the durable record; memory stays bounded.
//! - *Second in line*: the thread runs at a lower CPU priority (nice
//!   +10), so shipping never takes the CPU from commits and loads.
//! - *Pipelined*: over ZEO the thread keeps a window of transactions in
//!   flight (`tpc_begin`, `restorea`..., `vote`, `tpc_finish` sent back
//!   to back; replies collected as they come), so the round trip does
//!   not bound the rate. A mirror is written only by zeoraid, so its
//!   commit lock is always free and the server takes the transactions in
//!   order.
//!
//! **Where it resumes.** The newest transaction the mirror holds (its
//! `lastTransaction`, checked against its history as for a recovery: a
//! Python FileStorage killed mid-commit may report one it cut off).
//!
//! **Pack while lagging.** A pack of the array is applied to the
//! synchronous backends at once and remembered for each mirror with the
//! array's last transaction at that moment; the mirror is packed with
//! the same pack time once it holds that transaction. Transactions it
//! catches up from the packed source are the packed ones; packing the
//! mirror with the same time then leaves it the same current records and
//! the same history as the source. (A restart forgets pending packs: the
//! mirror is then a superset of the source's history, with the same
//! current state, until the next pack.)
//!
//! **States.** `replicating` (streaming from the queue, or idle and
//! caught up), `catching-up` (reading from the source), `degraded` (the
//! link or the mirror failed: retried with backoff from 1 s to 60 s, and
//! recovered by itself). A mirror is never read from, never votes, and
//! does not count for `min-optimal` or `fail-mode`; its failures never
//! reach a client. Past `max-lag` seconds behind, `ctl status` warns.

use super::backend::{BackendSource, BackendSpec};
use super::state::offsite::{self as plan, Following, Next, ShipQueue};
use super::Core;
use crate::locks::lock;
use crate::storage::{timestamp, Op, Storage, Tid, Txn, TxnRecord};
use crate::zeo::client::{Client, ClientOptions};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

/// How an off-site mirror is run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Seconds behind before the status warns.
    pub max_lag: f64,
    /// Queue bounds: bytes of record data, transactions.
    pub queue_bytes: u64,
    pub queue_entries: usize,
}

impl Options {
    pub fn new(max_lag: f64) -> Options {
        Options {
            max_lag,
            queue_bytes: 64 << 20,
            queue_entries: 100_000,
        }
    }
}

/// Transactions read ahead in a catch-up.
const BATCH: usize = 256;

/// A stream from the queue ends after this long without a new visible
/// transaction (what is in flight is then acknowledged).
const FEED_IDLE: Duration = Duration::from_millis(20);

/// The off-site client's call timeout at least.
const MIN_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Backoff after failures: 1 s doubling to this.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One queued transaction.
#[derive(Clone, Debug)]
pub(crate) enum Entry {
    /// Its records, as the mirror gets them.
    Whole(Arc<TxnRecord>),
    /// Read it from a synchronous backend (an undo: its records are
    /// known only to the storages that applied it).
    Fetch,
}

/// A catch-up in progress.
#[derive(Clone, Debug)]
struct Catching {
    after: Tid,
    until: Tid,
    /// The last transaction it shipped.
    at: Tid,
    copied: u64,
}

impl Catching {
    /// Transactions left, estimated from the share of the commit-time span
    /// covered so far (as a recovery's progress estimate); 0 until the
    /// first one is shipped.
    fn left(&self) -> u64 {
        super::state::recovery::progress(
            Some(self.after),
            self.at,
            self.until,
            self.copied,
            self.copied,
            0.0,
        )
        .left
    }
}

/// Where a mirror stands, for status and metrics.
#[derive(Clone, Debug, Default)]
struct Figures {
    state: &'static str,
    reason: Option<String>,
    /// The newest transaction it holds (once known).
    position: Option<Tid>,
    shipped: u64,
    shipped_bytes: u64,
    /// Transactions per second, smoothed.
    rate: f64,
    failures: u64,
    last_error: Option<String>,
    /// While catching up: from where to where, and how many it shipped
    /// (the estimate of what is left comes from these).
    catching: Option<Catching>,
}

/// An off-site mirror of an array.
pub(crate) struct Mirror {
    pub name: String,
    pub kind: &'static str,
    pub location: String,
    pub max_lag: f64,
    source: BackendSource,
    queue: Mutex<ShipQueue<Entry>>,
    queue_cv: Condvar,
    /// Packs to apply once the mirror holds the given transaction.
    packs: Mutex<Vec<(Tid, f64, bool)>>,
    figures: Mutex<Figures>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Mirror {
    /// A mirror whose queue covers everything after `last_committed`.
    pub(crate) fn new(spec: BackendSpec, opts: &Options, last: Tid) -> Mirror {
        let location = match &spec.source {
            BackendSource::Zeo(c) => c.addr.clone(),
            BackendSource::Local(s) => s.name(),
            BackendSource::Unavailable(_) => "-".into(),
        };
        Mirror {
            name: spec.name,
            kind: spec.kind,
            location,
            max_lag: opts.max_lag,
            source: spec.source,
            queue: Mutex::new(ShipQueue::new(last, opts.queue_bytes, opts.queue_entries)),
            queue_cv: Condvar::new(),
            packs: Mutex::new(Vec::new()),
            figures: Mutex::new(Figures {
                state: "connecting",
                ..Figures::default()
            }),
            thread: Mutex::new(None),
        }
    }

    /// Start the shipping thread.
    pub(crate) fn start(self: &Arc<Self>, core: &Arc<Core>) -> Result<(), String> {
        let (me, weak) = (self.clone(), Arc::downgrade(core));
        let h = std::thread::Builder::new()
            .name(format!("zeoraid-offsite-{}-{}", core.opts.name, self.name))
            .spawn(move || run(&me, &weak))
            .map_err(|e| format!("cannot start the off-site thread of {:?}: {e}", self.name))?;
        *lock(&self.thread) = Some(h);
        Ok(())
    }

    /// Wake the thread (the array closes) and join it.
    pub(crate) fn stop(&self) {
        {
            let _q = lock(&self.queue);
            self.queue_cv.notify_all();
        }
        if let Some(h) = lock(&self.thread).take() {
            if h.join().is_err() {
                log::error!("the off-site thread of {:?} panicked", self.name);
            }
        }
    }

    /// A transaction the array committed (called at finish, in tid order).
    /// No wake-up here: the shipper ships only what is visible, and
    /// [`Mirror::published`] wakes it once the transaction is (one wake-up
    /// per publish, not two per commit).
    pub(crate) fn enqueue(&self, tid: Tid, txn: &Txn) {
        let (entry, bytes) = entry_of(tid, txn);
        lock(&self.queue).push(tid, bytes, entry);
    }

    /// Transactions up to `tid` are visible on the synchronous backends
    /// (group commit publishes after the fsync): wake a waiting shipper.
    pub(crate) fn published(&self) {
        let _q = lock(&self.queue);
        self.queue_cv.notify_all();
    }

    /// The array was packed at `t` after committing `after`.
    pub(crate) fn request_pack(&self, after: Tid, t: f64, gc: bool) {
        lock(&self.packs).push((after, t, gc));
        self.queue_cv.notify_all();
    }

    /// Status: state, lag, shipping, queue.
    pub(crate) fn status(&self, newest: Tid) -> serde_json::Value {
        let f = lock(&self.figures).clone();
        let (oldest, queued, queued_bytes, overflows) = {
            let q = lock(&self.queue);
            let pos = f.position.unwrap_or(Tid::ZERO);
            let (first, n, bytes) = q.after(pos);
            (first, n, bytes, q.overflows)
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let lag = plan::lag(
            newest,
            f.position.unwrap_or(Tid::ZERO),
            oldest,
            queued,
            queued_bytes,
            f.catching.as_ref().map(Catching::left),
            now,
        );
        // Until the mirror says where it stands, the lag is unknown.
        let known = f.position.is_some();
        serde_json::json!({
            "name": self.name,
            "kind": self.kind,
            "mode": "offsite",
            "where": self.location,
            "state": f.state,
            "reason": f.reason,
            "last-tid": f.position.map(|t| t.to_string()),
            "lag-transactions": known.then_some(lag.transactions),
            "lag-estimated": lag.estimated,
            "lag-bytes": known.then_some(lag.bytes),
            "lag-seconds": known.then_some(lag.seconds),
            "max-lag": self.max_lag,
            "warning": plan::health(&self.name, if known { lag.seconds } else { 0.0 }, self.max_lag,
                if f.state == "degraded" { f.reason.as_deref() } else { None }),
            "shipped": f.shipped,
            "shipped-megabytes": (f.shipped_bytes as f64 / 1e5).round() / 10.0,
            "rate": (f.rate * 10.0).round() / 10.0,
            "queue": {"transactions": queued, "bytes": queued_bytes, "overflows": overflows},
            "failures": f.failures,
            "last-error": f.last_error,
            "reads": 0,
        })
    }

    fn set(&self, f: impl FnOnce(&mut Figures)) {
        f(&mut lock(&self.figures));
    }
}

/// The queue entry of a committed transaction and its data bytes.
fn entry_of(tid: Tid, txn: &Txn) -> (Entry, u64) {
    let mut records = Vec::with_capacity(txn.ops.len());
    let mut bytes = 0u64;
    for op in &txn.ops {
        let rec = match op {
            Op::Store { oid, data, .. } => {
                bytes += data.len() as u64;
                crate::storage::DataRecord {
                    oid: *oid,
                    tid,
                    data: Some(data.clone()),
                    data_txn: None,
                }
            }
            Op::Restore {
                oid,
                data,
                prev_txn,
                ..
            } => {
                bytes += data.as_ref().map_or(0, |d| d.len() as u64);
                crate::storage::DataRecord {
                    oid: *oid,
                    tid,
                    data: data.clone(),
                    data_txn: *prev_txn,
                }
            }
            Op::CheckCurrent { .. } => continue,
            // Their records are the storage's doing.
            Op::Delete { .. } | Op::Undo { .. } | Op::StoreBlob { .. } | Op::RestoreBlob { .. } => {
                return (Entry::Fetch, 0)
            }
        };
        records.push(rec);
    }
    let rec = TxnRecord {
        tid,
        status: txn.status,
        meta: txn.meta.clone(),
        records,
    };
    (Entry::Whole(Arc::new(rec)), bytes)
}

/// Lower this thread's CPU priority (nice +10): shipping yields the CPU
/// to commits and loads when both want it, and takes what is left.
fn yield_to_commits() {
    // SAFETY: gettid and setpriority on the calling thread only; no memory
    // is passed.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10)
    };
    if rc != 0 {
        log::debug!(
            "cannot lower the off-site thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The thread: connect, find the position, ship, retry after failures.
fn run(m: &Arc<Mirror>, weak: &Weak<Core>) {
    yield_to_commits();
    let mut target: Option<Arc<dyn Storage>> = None;
    let mut position: Option<Tid> = None;
    let mut backoff = Duration::ZERO;
    loop {
        let Some(core) = weak.upgrade() else { return };
        if core.closing.load(Ordering::Acquire) {
            break;
        }
        if !backoff.is_zero() {
            sleep(&core, backoff);
            if core.closing.load(Ordering::Acquire) {
                break;
            }
        }
        let step = step(m, &core, &mut target, &mut position);
        match step {
            Ok(()) => backoff = Duration::ZERO,
            Err(why) => {
                if core.closing.load(Ordering::Acquire) {
                    break;
                }
                let first = lock(&m.figures).state != "degraded";
                if first {
                    log::error!(
                        "RAID array {:?}: off-site backend {:?} degraded: {why}; clients are not \
                         affected, it catches up by itself once it answers (retried with backoff)",
                        core.opts.name,
                        m.name
                    );
                } else {
                    log::debug!("off-site {:?}: still failing: {why}", m.name);
                }
                m.set(|f| {
                    f.state = "degraded";
                    f.reason = Some(why.clone());
                    f.last_error = Some(why.clone());
                    f.failures += 1;
                    f.catching = None;
                });
                if let Some(t) = target.take() {
                    t.close();
                }
                position = None;
                backoff = (backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
            }
        }
    }
    if let Some(t) = target.take() {
        t.close();
    }
}

/// Sleep `d` (a backoff) unless the array closes.
fn sleep(core: &Core, d: Duration) {
    let deadline = Instant::now() + d;
    let mut g = lock(&core.closing_cv.0);
    while !core.closing.load(Ordering::Acquire) {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        g = core
            .closing_cv
            .1
            .wait_timeout(g, (deadline - now).min(Duration::from_millis(200)))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// Wait at most `d` for work: a new transaction, a pack, or the array
/// closing (the array notifies the queue's condition then).
fn wait_for_work(m: &Mirror, d: Duration) {
    let q = lock(&m.queue);
    let _ = m.queue_cv.wait_timeout(q, d);
}

/// One round: (re)connect if needed, then ship what is next.
fn step(
    m: &Mirror,
    core: &Arc<Core>,
    target: &mut Option<Arc<dyn Storage>>,
    position: &mut Option<Tid>,
) -> Result<(), String> {
    if target.is_none() {
        *target = Some(open(m, core)?);
    }
    let t = target.clone().ok_or("not connected")?;
    if let Some(c) = t.as_zeo_client() {
        if !c.is_connected() {
            return Err(format!("the connection to {} is down", c.addr()));
        }
    }
    if position.is_none() {
        let held = super::recovery::newest_held(
            t.as_ref(),
            t.last_transaction()
                .map_err(|e| format!("cannot read its last transaction: {e}"))?,
        )
        .map_err(|e| format!("cannot read its history: {e}"))?;
        let p = held.map_or(Tid::ZERO, |r| r.tid);
        *position = Some(p);
        m.set(|f| f.position = Some(p));
        log::info!(
            "RAID array {:?}: off-site backend {:?} connected; it holds the history up to {p}",
            core.opts.name,
            m.name
        );
    }
    let pos = position.unwrap_or(Tid::ZERO);
    apply_packs(m, core, &t, pos)?;
    let next = lock(&m.queue).plan(pos);
    match next {
        Next::Idle => {
            m.set(|f| {
                f.state = "replicating";
                f.reason = None;
                f.catching = None;
            });
            wait_for_work(m, Duration::from_secs(1));
            Ok(())
        }
        Next::Queue => {
            m.set(|f| {
                f.state = "replicating";
                f.reason = None;
                f.catching = None;
            });
            let feed = QueueFeed {
                m,
                core,
                after: pos,
            };
            ship(m, core, &t, feed, position)
        }
        Next::CatchUp { after, until } => {
            let (si, source) = source(core)?;
            m.set(|f| {
                if f.state != "catching-up" {
                    log::info!(
                        "RAID array {:?}: off-site backend {:?} catching up from {:?}: the \
                         transactions after {after} up to {until}",
                        core.opts.name,
                        m.name,
                        core.backends[si].name
                    );
                }
                f.state = "catching-up";
                f.reason = None;
                f.catching = Some(Catching {
                    after,
                    until,
                    at: after,
                    copied: 0,
                });
            });
            let (tx, rx) = crossbeam_channel::bounded(BATCH);
            let start = if after == Tid::ZERO {
                None
            } else {
                Some(timestamp::successor(after))
            };
            std::thread::scope(|scope| {
                let src = source.as_ref();
                let reader = std::thread::Builder::new()
                    .name(format!("zeoraid-offsite-read-{}", m.name))
                    .spawn_scoped(scope, move || {
                        super::recovery::feed(src, start, Some(until), &tx)
                    })
                    .map_err(|e| format!("cannot start a reader thread: {e}"))?;
                let recs = rx.iter().map(|r| {
                    r.map(Arc::new)
                        .map_err(|e| format!("reading from the source failed: {e}"))
                });
                let shipped = ship(m, core, &t, recs, position);
                drop(rx);
                if reader.join().is_err() {
                    return Err("the off-site reader thread panicked (a zeoraid bug)".into());
                }
                shipped
            })
        }
    }
}

/// The queue's transactions after a position, oldest first, each once the
/// synchronous backends show it; ends when none comes for [`FEED_IDLE`],
/// when the queue no longer covers the next one, or when the array closes.
struct QueueFeed<'a> {
    m: &'a Mirror,
    core: &'a Core,
    after: Tid,
}

impl Iterator for QueueFeed<'_> {
    type Item = Result<Arc<TxnRecord>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        let deadline = Instant::now() + FEED_IDLE;
        loop {
            if self.core.closing.load(Ordering::Acquire) {
                return None;
            }
            // Under the queue's lock: publish notifies under it too, so no
            // wake-up is lost between this look and the wait.
            let q = lock(&self.m.queue);
            let visible = Tid(self.core.published.load(Ordering::Acquire));
            let next = match q.next_after(self.after) {
                Following::Overflowed => return None,
                Following::Next(tid, entry) => Some((tid, entry)),
                Following::Nothing => None,
            };
            match next {
                Some((tid, entry)) if tid <= visible => {
                    drop(q);
                    self.after = tid;
                    return Some(match entry {
                        Entry::Whole(r) => Ok(r),
                        Entry::Fetch => fetch(self.core, tid).map(Arc::new),
                    });
                }
                pending => {
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    // Logged but not yet visible (publish wakes us), or
                    // nothing yet (enqueue wakes us).
                    drop(pending);
                    let _ = self.m.queue_cv.wait_timeout(q, deadline - now);
                }
            }
        }
    }
}

/// The synchronous backend to read from (in-process first, as a
/// recovery's source) and its storage.
fn source(core: &Core) -> Result<(usize, Arc<dyn Storage>), String> {
    let si = core
        .pick_source(usize::MAX)
        .ok_or("no optimal synchronous backend to read from")?;
    let s = core.backends[si]
        .storage()
        .map_err(|e| format!("its source: {e}"))?;
    Ok((si, s))
}

/// Read one committed transaction back from a synchronous backend.
fn fetch(core: &Core, tid: Tid) -> Result<TxnRecord, String> {
    let (_, s) = source(core)?;
    let mut it = s
        .iterator(Some(tid), Some(tid))
        .map_err(|e| format!("cannot read transaction {tid} from the source: {e}"))?;
    match it.next() {
        Some(Ok(r)) if r.tid == tid => Ok(r),
        Some(Err(e)) => Err(format!(
            "cannot read transaction {tid} from the source: {e}"
        )),
        _ => Err(format!("the source does not hold transaction {tid}")),
    }
}

/// Apply the packs whose transaction the mirror holds.
fn apply_packs(m: &Mirror, core: &Core, t: &Arc<dyn Storage>, pos: Tid) -> Result<(), String> {
    let due: Vec<(Tid, f64, bool)> = {
        let mut p = lock(&m.packs);
        let (due, later) = p.drain(..).partition(|(after, _, _)| *after <= pos);
        *p = later;
        due
    };
    for (after, time, gc) in due {
        if let Err(e) = t.pack(time, gc) {
            lock(&m.packs).push((after, time, gc));
            return Err(format!("pack failed: {e}"));
        }
        log::info!(
            "RAID array {:?}: off-site backend {:?} packed as the array was (after {after})",
            core.opts.name,
            m.name
        );
    }
    Ok(())
}

/// Open the mirror's storage.
fn open(m: &Mirror, core: &Core) -> Result<Arc<dyn Storage>, String> {
    match &m.source {
        BackendSource::Local(s) => Ok(s.clone()),
        BackendSource::Unavailable(why) => Err(why.clone()),
        BackendSource::Zeo(o) => {
            let opts = ClientOptions {
                // A slow link carries big transactions and history reads:
                // a minute at least (a dead connection is noticed sooner,
                // by the client's own reconnect).
                call_timeout: core.opts.backend_timeout.max(MIN_CALL_TIMEOUT),
                connect_timeout: o.connect_timeout.min(core.opts.backend_timeout),
                ..o.clone()
            };
            let addr = opts.addr.clone();
            Client::connect(opts)
                .map(|c| Arc::new(c) as Arc<dyn Storage>)
                .map_err(|e| format!("cannot connect to {addr}: {e}"))
        }
    }
}

/// Ship transactions in order; `position` follows each one the mirror
/// acknowledged.
fn ship(
    m: &Mirror,
    core: &Core,
    t: &Arc<dyn Storage>,
    recs: impl Iterator<Item = Result<Arc<TxnRecord>, String>>,
    position: &mut Option<Tid>,
) -> Result<(), String> {
    let started = Instant::now();
    let mut n = 0u64;
    let mut on_done = |tid: Tid, bytes: u64| {
        *position = Some(tid);
        n += 1;
        lock(&m.queue).trim(tid);
        m.set(|f| {
            f.position = Some(tid);
            f.shipped += 1;
            f.shipped_bytes += bytes;
            if let Some(c) = f.catching.as_mut() {
                c.copied += 1;
                c.at = tid;
            }
        });
    };
    let closing = || core.closing.load(Ordering::Acquire);
    let result = match t.as_zeo_client() {
        Some(client) => client
            .restore_pipelined(recs, &closing, &mut on_done)
            .map_err(|e| format!("shipping failed: {e}")),
        None => ship_local(t.as_ref(), recs, &closing, &mut on_done),
    };
    let secs = started.elapsed().as_secs_f64();
    if n > 0 && secs > 0.0 {
        let r = n as f64 / secs;
        m.set(|f| {
            f.rate = if f.rate == 0.0 {
                r
            } else {
                0.7 * f.rate + 0.3 * r
            }
        });
    }
    result
}

/// Ship to an in-process storage, one restore after another (a group
/// commit target shares one fsync per batch).
fn ship_local(
    t: &dyn Storage,
    recs: impl Iterator<Item = Result<Arc<TxnRecord>, String>>,
    closing: &dyn Fn() -> bool,
    on_done: &mut dyn FnMut(Tid, u64),
) -> Result<(), String> {
    let group = t.group_commit();
    for r in recs {
        if closing() {
            break;
        }
        let rec = r?;
        let bytes = super::recovery::restore(None, t, &rec, group)?;
        if group {
            t.make_durable(rec.tid)
                .map_err(|e| format!("writing to it failed: {e}"))?;
            t.publish(rec.tid);
        }
        on_done(rec.tid, bytes);
    }
    Ok(())
}
