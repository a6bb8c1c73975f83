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
//!   the commit path does no extra write, fsync or network call, and
//!   takes no lock the shipper holds: the transaction goes through a
//!   lock-free inbox the shipper moves into the queue (bounded the same
//!   way). A transaction whose records the array does not know at finish
//!   (an undo, a blob store) is queued as a tid and read back from a
//!   synchronous backend.
//!   Only transactions visible on the synchronous backends are shipped.
//! - *Catch-up*: when the queue overflowed (it forgets its oldest entries
//!   and remembers up to where), after a link failure, and after a
//!   restart, the thread reads what the mirror lacks from an optimal
//!   synchronous backend (in-process first), exactly as a recovery does,
//!   then returns to the queue. Nothing is lost: the synchronous backends
//!   are the durable record; memory stays bounded.
//! - *Second in line*: the thread runs at nice +10, so commits and loads
//!   get the CPU first, yet it keeps a share on a host that is never idle.
//! - *Blobs*: a transaction with blob records goes alone, between
//!   pipelined runs, with its blob files read from a synchronous backend
//!   and stored as a recovery stores them (`BlobSplit`).
//! - *Write-behind*: the stream goes out in batches, everything published
//!   since the last one, at most every `LINGER` (one write and one
//!   wake-up per batch, not per commit).
//! - *Pipelined*: over ZEO the thread keeps a window of transactions in
//!   flight (`tpc_begin`, `restorea`..., `vote`, `tpc_finish` sent back
//!   to back; replies collected as they come), so the round trip does
//!   not bound the rate. A mirror is written only by zeoraid, so its
//!   commit lock is always free and the server takes the transactions in
//!   order.
//!
//! **Where it resumes.** The newest transaction the mirror holds (its
//! `lastTransaction`, checked against its history as for a recovery: a
//! Python FileStorage killed mid-commit may report one it cut off), read
//! once it has held still for `SETTLE`: what an earlier connection (a
//! killed process, a failed link) sent may still be arriving and being
//! committed, and must not be shipped a second time.
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
use crate::status::{OffsiteQueue, OffsiteState, OffsiteStatus};
use crate::storage::{timestamp, Op, Storage, Tid, Txn, TxnRecord};
use crate::zeo::client::{Client, ClientOptions, Shipped};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
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

/// After shipping a batch the shipper lets the next one gather this long
/// (write-behind): under a steady load it wakes at most 200 times a
/// second and sends one write per wake-up, instead of waking and writing
/// per commit. Nothing waits for it but the mirror's lag, which a WAN's
/// round trip dwarfs. Measured (`cargo bench --bench offsite -- commit`,
/// commit p99 with vs without the mirror, medians of 9 paired rounds):
/// 1.24x with no linger (a wake-up per publish), 1.21–1.27x at 2 ms,
/// 1.12x at 5 ms, 1.11–1.23x at 10 ms, 1.15x at 20 ms, 1.44x at 50 ms
/// (bigger bursts delay more commits).
const LINGER: Duration = Duration::from_millis(5);

/// A batch (one write to the mirror) holds at most this many
/// transactions and this many bytes of records (but always one).
const BATCH_ENTRIES: usize = 1024;
const BATCH_BYTES: u64 = 4 << 20;

/// The off-site client's call timeout at least.
const MIN_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A mirror's last transaction must hold still this long before the
/// shipper takes it as its position (see [`settled_last`]).
const SETTLE: Duration = Duration::from_secs(2);

/// ... and gives up (the mirror is degraded, retried later) after this.
const SETTLE_AT_MOST: Duration = Duration::from_secs(120);

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
    state: OffsiteState,
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

/// The array's off-site mirrors (added at open, before it serves).
#[derive(Default)]
pub(crate) struct Mirrors(std::sync::RwLock<Vec<Arc<Mirror>>>);

impl Mirrors {
    pub(crate) fn push(&self, m: Arc<Mirror>) {
        crate::locks::write(&self.0).push(m);
    }

    /// Call `f` on each mirror, under the list's read lock (the commit
    /// path's way: no copy of the list per transaction).
    pub(crate) fn each(&self, mut f: impl FnMut(&Mirror)) {
        for m in crate::locks::read(&self.0).iter() {
            f(m);
        }
    }

    /// The mirrors now, to keep past the lock (closing, status).
    pub(crate) fn list(&self) -> Vec<Arc<Mirror>> {
        crate::locks::read(&self.0).clone()
    }

    pub(crate) fn is_empty(&self) -> bool {
        crate::locks::read(&self.0).is_empty()
    }
}

/// An off-site mirror of an array.
pub(crate) struct Mirror {
    pub name: String,
    pub kind: &'static str,
    pub location: String,
    pub max_lag: f64,
    source: BackendSource,
    queue: Mutex<ShipQueue<Entry>>,
    /// The commit path's way into the queue: a lock-free channel, so a
    /// commit never waits for a lock the shipper holds (the shipper runs at
    /// a lower priority and may be preempted holding the queue's lock). The
    /// shipper moves it into the queue ([`Mirror::queue`]).
    inbox: Inbox,
    /// The shipping thread, to wake (set once it runs).
    shipper: std::sync::OnceLock<std::thread::Thread>,
    /// The shipper is about to park until a publish: a publish wakes it
    /// only then, so a commit makes no wake-up system call while it
    /// lingers or ships.
    shipper_waits: AtomicBool,
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
            inbox: Inbox::new(opts.queue_bytes, opts.queue_entries),
            shipper: std::sync::OnceLock::new(),
            shipper_waits: AtomicBool::new(false),
            packs: Mutex::new(Vec::new()),
            figures: Mutex::new(Figures {
                state: OffsiteState::Connecting,
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
        let _ = self.shipper.set(h.thread().clone());
        *lock(&self.thread) = Some(h);
        Ok(())
    }

    /// Wake the thread (the array closes) and join it.
    pub(crate) fn stop(&self) {
        self.wake();
        if let Some(h) = lock(&self.thread).take() {
            if h.join().is_err() {
                log::error!("the off-site thread of {:?} panicked", self.name);
            }
        }
    }

    /// A transaction the array committed (called at finish, in tid order,
    /// under the array's `last_logged` lock; `entry` made by [`entry_of`]
    /// before it, once for every mirror). Lock-free: into the inbox.
    /// No wake-up here: the shipper ships only what is visible, and
    /// [`Mirror::published`] wakes it once the transaction is.
    pub(crate) fn enqueue(&self, tid: Tid, (entry, bytes): &(Entry, u64)) {
        self.inbox.put(tid, *bytes, entry.clone());
    }

    /// Transactions up to `tid` are visible on the synchronous backends
    /// (group commit publishes after the fsync; the array stores its
    /// `published` tid before calling this): wake the shipper if it waits.
    pub(crate) fn published(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.shipper_waits.swap(false, Ordering::SeqCst) {
            self.wake();
        }
    }

    fn wake(&self) {
        if let Some(t) = self.shipper.get() {
            t.unpark();
        }
    }

    /// The shipper waits at most `d` for a publish, unless `ready` says
    /// there is something already (checked after telling publishers to
    /// wake it, so none is missed).
    fn wait(&self, d: Duration, ready: impl Fn() -> bool) {
        self.shipper_waits.store(true, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        if !ready() {
            std::thread::park_timeout(d);
        }
        self.shipper_waits.store(false, Ordering::SeqCst);
    }

    /// The queue, with what the inbox holds moved in (in commit order; the
    /// lock makes one mover at a time).
    fn queue(&self) -> std::sync::MutexGuard<'_, ShipQueue<Entry>> {
        let mut q = lock(&self.queue);
        self.inbox.drain_into(&mut q);
        q
    }

    /// The array was packed at `t` after committing `after`.
    pub(crate) fn request_pack(&self, after: Tid, t: f64, gc: bool) {
        lock(&self.packs).push((after, t, gc));
        self.wake();
    }

    /// Status: state, lag, shipping, queue.
    pub(crate) fn status(&self, newest: Tid) -> OffsiteStatus {
        let f = lock(&self.figures).clone();
        let (oldest, queued, queued_bytes, overflows) = {
            let q = self.queue();
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
        let warning = plan::health(
            &self.name,
            if known { lag.seconds } else { 0.0 },
            self.max_lag,
            if f.state == OffsiteState::Degraded {
                f.reason.as_deref()
            } else {
                None
            },
        );
        OffsiteStatus {
            name: self.name.clone(),
            kind: self.kind.to_string(),
            mode: "offsite".into(),
            place: self.location.clone(),
            state: f.state,
            reason: f.reason.clone(),
            last_tid: f.position.map(|t| t.to_string()),
            lag_transactions: known.then_some(lag.transactions),
            lag_estimated: lag.estimated,
            lag_bytes: known.then_some(lag.bytes),
            lag_seconds: known.then_some(lag.seconds),
            max_lag: self.max_lag,
            warning,
            shipped: f.shipped,
            shipped_megabytes: (f.shipped_bytes as f64 / 1e5).round() / 10.0,
            rate: (f.rate * 10.0).round() / 10.0,
            queue: OffsiteQueue {
                transactions: queued,
                bytes: queued_bytes,
                overflows,
            },
            failures: f.failures,
            last_error: f.last_error.clone(),
            reads: 0,
        }
    }

    fn set(&self, f: impl FnOnce(&mut Figures)) {
        f(&mut lock(&self.figures));
    }
}

/// The commit path's side of the queue: an unbounded lock-free channel
/// kept within the queue's bounds by counting. Past them a transaction is
/// not put in; the newest one left out is remembered, and when the
/// shipper moves the inbox into the queue everything up to it is
/// forgotten there too ([`ShipQueue::forget_through`]) and read from the
/// source instead. Puts come in tid order (under `last_logged`), so
/// draining before looking at what was left out never leaves a hole: a
/// transaction that reached the queue after one left out was put after
/// that one was recorded.
struct Inbox {
    tx: crossbeam_channel::Sender<(Tid, u64, Entry)>,
    rx: crossbeam_channel::Receiver<(Tid, u64, Entry)>,
    len: std::sync::atomic::AtomicUsize,
    bytes: std::sync::atomic::AtomicU64,
    max_entries: usize,
    max_bytes: u64,
    /// The newest tid left out (0: none since the last drain).
    left_out: std::sync::atomic::AtomicU64,
}

impl Inbox {
    fn new(max_bytes: u64, max_entries: usize) -> Inbox {
        let (tx, rx) = crossbeam_channel::unbounded();
        Inbox {
            tx,
            rx,
            len: Default::default(),
            bytes: Default::default(),
            max_entries: max_entries.max(1),
            max_bytes,
            left_out: Default::default(),
        }
    }

    fn put(&self, tid: Tid, bytes: u64, entry: Entry) {
        let len = self.len.load(Ordering::Relaxed);
        let held = self.bytes.load(Ordering::Relaxed);
        if len >= self.max_entries || (len > 0 && held + bytes > self.max_bytes) {
            self.left_out.fetch_max(tid.0, Ordering::AcqRel);
            return;
        }
        self.len.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        // The receiver lives as long as the sender (both are ours).
        let _ = self.tx.send((tid, bytes, entry));
    }

    /// Move everything into `q`, then forget there what was left out.
    fn drain_into(&self, q: &mut ShipQueue<Entry>) {
        while let Ok((tid, bytes, entry)) = self.rx.try_recv() {
            self.len.fetch_sub(1, Ordering::Relaxed);
            self.bytes.fetch_sub(bytes, Ordering::Relaxed);
            q.push(tid, bytes, entry);
        }
        let left_out = self.left_out.swap(0, Ordering::AcqRel);
        if left_out != 0 {
            q.forget_through(Tid(left_out));
        }
    }
}

/// The queue entry of a committed transaction and its data bytes.
pub(crate) fn entry_of(tid: Tid, txn: &Txn) -> (Entry, u64) {
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

/// How far the shipping thread stands back: nice +10. Commits and loads
/// (nice 0) get the CPU first when both want it, yet the mirror keeps a
/// share on a host that is never idle, so it catches up by itself.
/// (`SCHED_IDLE`, which runs only on CPU time nothing else wants, would
/// starve it there, and measured no better for commits: commit p99 with /
/// without the mirror 1.14x, median of nine runs of the bench's "site
/// elsewhere" rows, against 1.10x at nice +10, `benches/offsite.rs`.)
const NICE: libc::c_int = 10;

/// Put the calling thread at [`NICE`] (threads it starts inherit it:
/// the mirror's ZEO client's reader too). A failure is logged at debug:
/// the thread then ships at normal priority.
fn stand_back() {
    // SAFETY: gettid and setpriority on the calling thread only.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, NICE)
    };
    if rc != 0 {
        log::debug!(
            "cannot set the off-site thread's nice value to {NICE}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The thread: connect, find the position, ship, retry after failures.
fn run(m: &Arc<Mirror>, weak: &Weak<Core>) {
    stand_back();
    let mut target: Option<Target> = None;
    let mut position: Option<Tid> = None;
    let mut backoff = Duration::ZERO;
    loop {
        let Some(core) = weak.upgrade() else { return };
        if core.wake.is_closing() {
            break;
        }
        if !backoff.is_zero() {
            // The inbox moves into the queue meanwhile, so what overflows
            // is the queue's oldest (the bounds hold either way).
            sleep(&core, backoff, || drop(m.queue()));
            if core.wake.is_closing() {
                break;
            }
        }
        let step = step(m, &core, &mut target, &mut position);
        match step {
            Ok(()) => backoff = Duration::ZERO,
            Err(why) => {
                if core.wake.is_closing() {
                    break;
                }
                let first = lock(&m.figures).state != OffsiteState::Degraded;
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
                    f.state = OffsiteState::Degraded;
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

/// Sleep `d` (a backoff) unless the array closes, doing `every_200ms`.
fn sleep(core: &Core, d: Duration, every_200ms: impl Fn()) {
    core.wake
        .sleep_doing(d, Duration::from_millis(200), every_200ms)
}

/// Wait at most `d` for work: a new transaction (a publish wakes the
/// shipper), a pack or the array closing (both unpark it).
fn wait_for_work(m: &Mirror, core: &Core, d: Duration) {
    let seen = core.published.load(Ordering::Acquire);
    m.wait(d, || core.published.load(Ordering::Acquire) != seen);
}

/// One round: (re)connect if needed, then ship what is next.
fn step(
    m: &Mirror,
    core: &Arc<Core>,
    target: &mut Option<Target>,
    position: &mut Option<Tid>,
) -> Result<(), String> {
    if target.is_none() {
        *target = Some(open(m, core)?);
    }
    let t = target.clone().ok_or("not connected")?;
    if let Some(c) = t.client() {
        if !c.is_connected() {
            return Err(format!("the connection to {} is down", c.addr()));
        }
    }
    if position.is_none() {
        let held = super::recovery::newest_held(t.storage(), settled_last(m, core, &t)?)
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
    let next = m.queue().plan(pos);
    match next {
        Next::Idle => {
            m.set(|f| {
                f.state = OffsiteState::Replicating;
                f.reason = None;
                f.catching = None;
            });
            wait_for_work(m, core, Duration::from_secs(1));
            Ok(())
        }
        Next::Queue => {
            m.set(|f| {
                f.state = OffsiteState::Replicating;
                f.reason = None;
                f.catching = None;
            });
            ship(m, core, &t, QueueFeed::new(m, core, pos), position)
        }
        Next::CatchUp { after, until } => {
            let (si, source) = source(core)?;
            m.set(|f| {
                if f.state != OffsiteState::CatchingUp {
                    log::info!(
                        "RAID array {:?}: off-site backend {:?} catching up from {:?}: the \
                         transactions after {after} up to {until}",
                        core.opts.name,
                        m.name,
                        core.backends[si].name
                    );
                }
                f.state = OffsiteState::CatchingUp;
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
                let shipped = ship(m, core, &t, ReadAhead::new(&rx), position);
                drop(rx);
                if reader.join().is_err() {
                    return Err("the off-site reader thread panicked (a zeoraid bug)".into());
                }
                shipped
            })
        }
    }
}

/// The queue's transactions after a position, oldest first, in batches of
/// what the synchronous backends show; after a batch the next one gathers
/// for [`LINGER`]. Ends when none comes for [`FEED_IDLE`], when the queue
/// no longer covers the next one, or when the array closes.
struct QueueFeed<'a> {
    m: &'a Mirror,
    core: &'a Core,
    after: Tid,
    /// The last call handed out a batch: let the next one gather.
    linger: bool,
}

impl QueueFeed<'_> {
    fn new<'a>(m: &'a Mirror, core: &'a Core, after: Tid) -> QueueFeed<'a> {
        QueueFeed {
            m,
            core,
            after,
            linger: false,
        }
    }
}

impl Iterator for QueueFeed<'_> {
    type Item = Result<Vec<Arc<TxnRecord>>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if std::mem::take(&mut self.linger) {
            std::thread::sleep(LINGER);
        }
        let deadline = Instant::now() + FEED_IDLE;
        let entries = loop {
            if self.core.wake.is_closing() {
                return None;
            }
            let visible = self.core.published.load(Ordering::Acquire);
            let bound = plan::Batch {
                visible: Tid(visible),
                entries: BATCH_ENTRIES,
                bytes: BATCH_BYTES,
            };
            match self.m.queue().next_after(self.after, bound) {
                Following::Overflowed => return None,
                Following::Next(entries) => break entries,
                Following::Nothing => {
                    // Logged but not yet visible, or nothing yet: a
                    // publish wakes us.
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    let published = &self.core.published;
                    self.m.wait(deadline - now, || {
                        published.load(Ordering::Acquire) != visible
                    });
                }
            }
        };
        let mut batch = Vec::with_capacity(entries.len());
        for (tid, entry) in entries {
            match entry {
                Entry::Whole(r) => batch.push(r),
                Entry::Fetch => match fetch(self.core, tid) {
                    Ok(r) => batch.push(Arc::new(r)),
                    Err(e) if batch.is_empty() => return Some(Err(e)),
                    // Ship what came before it; the next call fails.
                    Err(_) => break,
                },
            }
            self.after = tid;
        }
        self.linger = true;
        Some(Ok(batch))
    }
}

/// A catch-up's transactions in batches of what the reader thread has
/// read ahead (one blocking receive, then what is already there).
struct ReadAhead<'a> {
    rx: &'a crossbeam_channel::Receiver<crate::storage::Result<TxnRecord>>,
    /// A read failure that ended the previous batch: the next item.
    failed: Option<String>,
}

impl<'a> ReadAhead<'a> {
    fn new(rx: &'a crossbeam_channel::Receiver<crate::storage::Result<TxnRecord>>) -> Self {
        ReadAhead { rx, failed: None }
    }
}

impl Iterator for ReadAhead<'_> {
    type Item = Result<Vec<Arc<TxnRecord>>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.failed.take() {
            return Some(Err(e));
        }
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        let mut next = self.rx.recv().ok();
        while let Some(r) = next {
            match r {
                Ok(r) => {
                    bytes += r.data_bytes();
                    batch.push(Arc::new(r));
                }
                Err(e) => {
                    let e = format!("reading from the source failed: {e}");
                    if batch.is_empty() {
                        return Some(Err(e));
                    }
                    self.failed = Some(e);
                    break;
                }
            }
            if batch.len() >= BATCH_ENTRIES || bytes >= BATCH_BYTES {
                break;
            }
            next = self.rx.try_recv().ok();
        }
        (!batch.is_empty()).then_some(Ok(batch))
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

/// The mirror's last transaction once it holds still for [`SETTLE`]. After
/// a crash or a failed link, transactions an earlier connection sent may
/// still be on their way (on the link, in the mirror's buffers) and be
/// committed after this connection looked: shipping from a position read
/// meanwhile would restore some of them twice (a Python FileStorage takes
/// a repeated or older tid without a word). Only zeoraid writes to a
/// mirror, so once nothing changes for a while that backlog is through.
/// (A single transaction taking longer than `SETTLE` to cross the link
/// could still slip by.)
fn settled_last(m: &Mirror, core: &Core, target: &Target) -> Result<Tid, String> {
    let t = target.storage();
    let read = || {
        t.last_transaction()
            .map_err(|e| format!("cannot read its last transaction: {e}"))
    };
    let mut last = read()?;
    if target.client().is_none() {
        // In-process: nothing can be on its way.
        return Ok(last);
    }
    let (started, mut still_since) = (Instant::now(), Instant::now());
    let mut said = false;
    loop {
        if core.wake.is_closing() {
            return Err("the array is closing".into());
        }
        if started.elapsed() > SETTLE_AT_MOST {
            return Err(format!(
                "its last transaction kept changing for {} s: something other than this \
                 array writes to it; an off-site mirror must be written by its array alone",
                SETTLE_AT_MOST.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
        let now = read()?;
        if now != last {
            if !said {
                log::info!(
                    "RAID array {:?}: off-site backend {:?} is still committing what an earlier \
                     connection sent (now at {now}); waiting until it holds still",
                    core.opts.name,
                    m.name
                );
            }
            said = true;
            last = now;
            still_since = Instant::now();
        } else if still_since.elapsed() >= SETTLE {
            return Ok(last);
        }
    }
}

/// Apply the packs whose transaction the mirror holds.
fn apply_packs(m: &Mirror, core: &Core, t: &Target, pos: Tid) -> Result<(), String> {
    let due: Vec<(Tid, f64, bool)> = {
        let mut p = lock(&m.packs);
        let (due, later) = p.drain(..).partition(|(after, _, _)| *after <= pos);
        *p = later;
        due
    };
    for (after, time, gc) in due {
        if let Err(e) = t.storage().pack(time, gc) {
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

/// What an off-site mirror ships to: a ZEO server through the array's own
/// client (pipelined restores), or an in-process storage.
#[derive(Clone)]
enum Target {
    Zeo(Arc<Client>),
    Local(Arc<dyn Storage>),
}

impl Target {
    fn storage(&self) -> &dyn Storage {
        match self {
            Target::Zeo(c) => c.as_ref(),
            Target::Local(s) => s.as_ref(),
        }
    }

    /// The ZEO client, for a mirror that is a ZEO server.
    fn client(&self) -> Option<&Client> {
        match self {
            Target::Zeo(c) => Some(c),
            Target::Local(_) => None,
        }
    }

    fn close(&self) {
        self.storage().close()
    }
}

/// Open the mirror's storage.
fn open(m: &Mirror, core: &Core) -> Result<Target, String> {
    match &m.source {
        BackendSource::Local(s) => Ok(Target::Local(s.clone())),
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
                .map(|c| Target::Zeo(Arc::new(c)))
                .map_err(|e| format!("cannot connect to {addr}: {e}"))
        }
    }
}

/// Ship batches of transactions in order; `position` follows the ones the
/// mirror acknowledged.
fn ship(
    m: &Mirror,
    core: &Core,
    t: &Target,
    batches: impl Iterator<Item = Result<Vec<Arc<TxnRecord>>, String>>,
    position: &mut Option<Tid>,
) -> Result<(), String> {
    let started = Instant::now();
    let mut n = 0u64;
    // Once per acknowledged run, not per transaction: one trim of the
    // queue and one update of the figures (locks the status shares).
    let mut on_done = |done: &[Shipped]| {
        let Some(&(tid, _)) = done.last() else { return };
        let bytes: u64 = done.iter().map(|d| d.1).sum();
        let count = done.len() as u64;
        *position = Some(tid);
        n += count;
        m.queue().trim(tid);
        m.set(|f| {
            f.position = Some(tid);
            f.shipped += count;
            f.shipped_bytes += bytes;
            if let Some(c) = f.catching.as_mut() {
                c.copied += count;
                c.at = tid;
            }
        });
    };
    let closing = || core.wake.is_closing();
    let result = match t.client() {
        // Pipelined, up to a transaction with blobs: that one goes alone
        // with its blob files (ZEO has no pipelined blob restore), then
        // the pipeline resumes.
        Some(client) => {
            let mut stream = BlobSplit::new(batches);
            loop {
                client
                    .restore_pipelined(&mut stream, &closing, &mut on_done)
                    .map_err(|e| format!("shipping failed: {e}"))?;
                let Some(rec) = stream.blob.take() else {
                    break Ok(());
                };
                if closing() {
                    break Ok(());
                }
                let bytes = restore_with_blobs(core, t.storage(), &rec, false)?;
                on_done(&[(rec.tid, bytes)]);
            }
        }
        None => ship_local(core, t.storage(), batches, &closing, &mut on_done),
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

/// Does the transaction hold a blob record (whose file must go along)?
fn has_blobs(rec: &TxnRecord) -> bool {
    rec.records.iter().any(|r| {
        r.data
            .as_deref()
            .is_some_and(crate::storage::pickle_refs::is_blob_record)
    })
}

/// Restore one transaction with its blob files read from a synchronous
/// backend (as a recovery copies them; onto a ZEO mirror as stores of the
/// blob inside the transaction begun with its tid).
fn restore_with_blobs(
    core: &Core,
    t: &dyn Storage,
    rec: &TxnRecord,
    group: bool,
) -> Result<u64, String> {
    source(core).and_then(|(_, s)| super::recovery::restore(Some(s.as_ref()), t, rec, group))
}

/// A stream of batches cut before each transaction with blobs: the
/// iterator ends there (what came before it is shipped), the transaction
/// waits in `blob`, and the next use goes on after it.
struct BlobSplit<I> {
    inner: I,
    /// Transactions of a cut batch still to come.
    rest: std::collections::VecDeque<Arc<TxnRecord>>,
    /// The transaction with blobs the stream stopped at.
    blob: Option<Arc<TxnRecord>>,
}

impl<I> BlobSplit<I> {
    fn new(inner: I) -> Self {
        BlobSplit {
            inner,
            rest: Default::default(),
            blob: None,
        }
    }
}

impl<I> Iterator for BlobSplit<I>
where
    I: Iterator<Item = Result<Vec<Arc<TxnRecord>>, String>>,
{
    type Item = Result<Vec<Arc<TxnRecord>>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.blob.is_some() {
            return None;
        }
        loop {
            if self.rest.is_empty() {
                match self.inner.next()? {
                    Ok(batch) => self.rest.extend(batch),
                    Err(e) => return Some(Err(e)),
                }
            }
            let mut plain = Vec::new();
            while let Some(rec) = self.rest.pop_front() {
                if has_blobs(&rec) {
                    self.blob = Some(rec);
                    break;
                }
                plain.push(rec);
            }
            match (plain.is_empty(), self.blob.is_some()) {
                (false, _) => return Some(Ok(plain)),
                // The batch began with one: end here, it goes alone.
                (true, true) => return None,
                (true, false) => continue,
            }
        }
    }
}

/// Ship to an in-process storage, one restore after another (a group
/// commit target shares one fsync per batch).
fn ship_local(
    core: &Core,
    t: &dyn Storage,
    batches: impl Iterator<Item = Result<Vec<Arc<TxnRecord>>, String>>,
    closing: &dyn Fn() -> bool,
    on_done: &mut dyn FnMut(&[Shipped]),
) -> Result<(), String> {
    let group = t.group_commit();
    for batch in batches {
        let mut done = Vec::new();
        for rec in batch? {
            if closing() {
                break;
            }
            let bytes = if has_blobs(&rec) {
                restore_with_blobs(core, t, &rec, group)?
            } else {
                super::recovery::restore(None, t, &rec, group)?
            };
            done.push((rec.tid, bytes));
        }
        if group {
            if let Some(&(last, _)) = done.last() {
                t.make_durable(last)
                    .map_err(|e| format!("writing to it failed: {e}"))?;
                t.publish(last);
            }
        }
        on_done(&done);
        if closing() {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{DataRecord, Oid, TxnMeta};

    /// Transaction `n`, with a blob record when `blob`.
    fn txn(n: u64, blob: bool) -> Arc<TxnRecord> {
        let data: &[u8] = if blob {
            b"\x80\x03cZODB.blob\nBlob\nq\x00.\x80\x03N."
        } else {
            b"\x80\x03cfoo\nBar\nq\x00.N."
        };
        Arc::new(TxnRecord {
            tid: Tid(n),
            status: b' ',
            meta: TxnMeta::default(),
            records: vec![DataRecord {
                oid: Oid(n),
                tid: Tid(n),
                data: Some(data.to_vec().into()),
                data_txn: None,
            }],
        })
    }

    #[test]
    fn an_inbox_past_its_bounds_leaves_transactions_out_and_the_queue_forgets_up_to_them() {
        let inbox = Inbox::new(1000, 3);
        let mut q: ShipQueue<Entry> = ShipQueue::new(Tid(10), 1000, 100);
        for n in 11..=15 {
            inbox.put(Tid(n), 10, Entry::Fetch);
        }
        // 11, 12, 13 went in; 14 and 15 were left out: the queue forgets
        // everything up to 15 (read from the source instead).
        inbox.drain_into(&mut q);
        assert_eq!((q.len(), q.covered_after(), q.overflows), (0, Tid(15), 1));
        // Drained: room again, and nothing more is forgotten.
        for n in 16..=17 {
            inbox.put(Tid(n), 10, Entry::Fetch);
        }
        inbox.drain_into(&mut q);
        assert_eq!((q.len(), q.covered_after(), q.overflows), (2, Tid(15), 1));
        // The byte bound: one entry always goes in, however big.
        let inbox = Inbox::new(25, 100);
        for (n, bytes) in [(21, 100), (22, 10)] {
            inbox.put(Tid(n), bytes, Entry::Fetch);
        }
        let mut q: ShipQueue<Entry> = ShipQueue::new(Tid(20), 1000, 100);
        inbox.drain_into(&mut q);
        assert_eq!((q.len(), q.covered_after()), (0, Tid(22)));
    }

    #[test]
    fn a_stream_is_cut_before_each_transaction_with_blobs() {
        // (batches, tids: (plain runs the pipeline gets, the blob it stops
        // at) until the end); a negative tid is a blob transaction.
        type Stop = (Vec<Vec<u64>>, Option<u64>);
        let cases: [(Vec<Vec<i64>>, Vec<Stop>); 4] = [
            (
                vec![vec![1, 2], vec![3]],
                vec![(vec![vec![1, 2], vec![3]], None)],
            ),
            (
                vec![vec![1, -2, 3], vec![4]],
                vec![(vec![vec![1]], Some(2)), (vec![vec![3], vec![4]], None)],
            ),
            // One at the start of a batch, two in a row, one at the end.
            (
                vec![vec![-1, -2], vec![3, -4]],
                vec![
                    (vec![], Some(1)),
                    (vec![], Some(2)),
                    (vec![vec![3]], Some(4)),
                    (vec![], None),
                ],
            ),
            // Empty batches are skipped, not taken for the end.
            (vec![vec![], vec![1]], vec![(vec![vec![1]], None)]),
        ];
        for (batches, want) in cases {
            let input: Vec<Result<Vec<Arc<TxnRecord>>, String>> = batches
                .iter()
                .map(|b| Ok(b.iter().map(|&n| txn(n.unsigned_abs(), n < 0)).collect()))
                .collect();
            let mut split = BlobSplit::new(input.into_iter());
            let mut got = Vec::new();
            loop {
                let runs: Vec<Vec<u64>> = split
                    .by_ref()
                    .map(|b| b.unwrap().iter().map(|r| r.tid.0).collect())
                    .collect();
                let blob = split.blob.take().map(|r| r.tid.0);
                let end = blob.is_none();
                got.push((runs, blob));
                if end {
                    break;
                }
            }
            assert_eq!(got, want, "{batches:?}");
        }
    }
}
