//! One mirror of the array: how to reach it ([`BackendSource`]), what the
//! array knows of it ([`Backend`]: state, recent latency, reads and
//! transactions served, last tid), and what a ZEO backend tells the array
//! unasked ([`event_handler`]: an invalidation means someone wrote to it
//! directly, a lost connection means it may miss transactions), and how
//! to open it again ([`Backend::reopen`]: reconnect a ZEO backend that was
//! down at start, reopen a local one, or move its file aside for a forced
//! rebuild).

use super::balance;
use super::state::BackendState;
use super::Core;
use crate::locks::{lock, read, write};
use crate::status::Role;
use crate::storage::{Error, Result, Storage};
use crate::zeo::client::{Client, ClientOptions, ServerEvent};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

/// Opens a local backend's storage again; `fresh`: move its data aside
/// first and start empty (a forced rebuild). Returns what was moved where.
pub type Reopen = Arc<
    dyn Fn(bool) -> std::result::Result<(Arc<dyn Storage>, Option<String>), String> + Send + Sync,
>;

/// How to reach one backend.
// One per backend, built once: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum BackendSource {
    /// An in-process storage (file, memory), already open.
    Local(Arc<dyn Storage>),
    /// A ZEO server (Python runzeo with `msgpack true`, or zeoraid).
    Zeo(ClientOptions),
    /// A backend that could not be opened: it starts degraded with this reason.
    Unavailable(String),
}

/// A backend to build the array from.
pub struct BackendSpec {
    pub name: String,
    pub kind: &'static str,
    pub source: BackendSource,
    /// How to open a local backend again (`None`: it cannot be).
    pub reopen: Option<Reopen>,
}

/// The array's backends: append-only, so a backend's position never
/// changes while the array runs (positions are held across calls: the
/// transaction between vote and finish, a recovery's target). A removed
/// backend stays in its slot, marked removed. Capacity is fixed at open.
pub(crate) struct Backends {
    slots: Vec<std::sync::OnceLock<Backend>>,
    len: std::sync::atomic::AtomicUsize,
    adding: Mutex<()>,
}

impl Backends {
    /// Room for `capacity` backends, holding `first`.
    pub(crate) fn new(first: Vec<Backend>, capacity: usize) -> Backends {
        let capacity = capacity.max(first.len());
        let slots: Vec<std::sync::OnceLock<Backend>> =
            (0..capacity).map(|_| std::sync::OnceLock::new()).collect();
        let len = first.len();
        for (slot, b) in slots.iter().zip(first) {
            let _ = slot.set(b);
        }
        Backends {
            slots,
            len: std::sync::atomic::AtomicUsize::new(len),
            adding: Mutex::new(()),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Backend> {
        self.slots[..self.len()].iter().filter_map(|s| s.get())
    }

    /// Append `b`; its position, or `None` when the array is full.
    pub(crate) fn push(&self, b: Backend) -> Option<usize> {
        let _g = lock(&self.adding);
        let i = self.len();
        self.slots.get(i)?.set(b).ok()?;
        self.len.store(i + 1, Ordering::Release);
        Some(i)
    }
}

impl std::ops::Index<usize> for Backends {
    type Output = Backend;

    /// Positions come from this array (below `len`, set before `len` grew).
    fn index(&self, i: usize) -> &Backend {
        match self.slots.get(i).and_then(|s| s.get()) {
            Some(b) => b,
            None => panic!("no backend at position {i} (a zeoraid bug)"),
        }
    }
}

impl<'a> IntoIterator for &'a Backends {
    type Item = &'a Backend;
    type IntoIter = Box<dyn Iterator<Item = &'a Backend> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

/// Upper bounds (seconds) of the call-latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A latency histogram updated without locks (Prometheus buckets).
#[derive(Default)]
pub(crate) struct Histogram {
    /// Per bucket (not cumulative), the last one for +Inf.
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let at = LATENCY_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[at].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Bounds, cumulative counts (then `+Inf`), sum and count.
    pub(crate) fn summary(&self) -> crate::status::Histogram {
        let mut total = 0;
        let cumulative: Vec<u64> = self
            .counts
            .iter()
            .map(|c| {
                total += c.load(Ordering::Relaxed);
                total
            })
            .collect();
        crate::status::Histogram {
            le: LATENCY_BUCKETS.to_vec(),
            counts: cumulative,
            sum: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            count: total,
        }
    }
}

/// Auto-recovery's memory of one backend.
#[derive(Clone, Debug, Default)]
pub(crate) struct Attempts {
    pub(crate) last: Option<Instant>,
    pub(crate) failures: u32,
    /// The last attempt found it diverged: left to the operator.
    pub(crate) diverged: bool,
    /// Why the last attempt failed.
    pub(crate) error: Option<String>,
    /// Disabled by the operator: auto-recovery leaves it alone.
    pub(crate) disabled: bool,
}

const ROLE_OPTIMAL: u8 = 0;
const ROLE_DEGRADED: u8 = 1;
const ROLE_RECOVERING: u8 = 2;

fn role_code(r: Role) -> u8 {
    match r {
        Role::Optimal => ROLE_OPTIMAL,
        Role::Degraded => ROLE_DEGRADED,
        Role::Recovering => ROLE_RECOVERING,
    }
}

/// One mirror and what the array knows of it.
pub(crate) struct Backend {
    pub(crate) name: String,
    pub(crate) kind: &'static str,
    pub(crate) storage: RwLock<Option<Arc<dyn Storage>>>,
    /// Whether `storage` is set (read without its lock on every load).
    pub(crate) opened: AtomicBool,
    /// A ZEO backend's connection settings (to connect when it was down).
    pub(crate) zeo: Option<ClientOptions>,
    pub(crate) reopen: Option<Reopen>,
    /// In process (file, memory): its calls are CPU, not round trips.
    pub(crate) local: bool,
    /// Its role as `state::roles` last published it (`Role` as a byte):
    /// read without a lock on every call. The roles own the state and the
    /// reason; this is their view for the read and write paths.
    role: AtomicU8,
    /// Moving average of call latency, microseconds (f64 bits).
    pub(crate) latency_us: AtomicU64,
    /// Every call's latency, for the metrics' histogram.
    pub(crate) calls: Histogram,
    pub(crate) reads: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) last_tid: AtomicU64,
    /// The running recovery's figures (while recovering).
    pub(crate) recovery: Mutex<Option<super::recovery::Running>>,
    /// Times it was degraded or a recovery of it failed.
    pub(crate) errors: AtomicU64,
    /// Where it lives (address or path), for status documents.
    pub(crate) place: String,
    /// The last verify's result, for status documents.
    pub(crate) verified: Mutex<Option<crate::status::VerifySummary>>,
    pub(crate) removed: AtomicBool,
    /// Added at runtime (not from the config the array was opened with).
    pub(crate) added: bool,
    pub(crate) attempts: Mutex<Attempts>,
}

impl Backend {
    /// A backend from its spec, its storage (if open) and its first state.
    pub(crate) fn new(
        spec: BackendSpec,
        storage: Option<Arc<dyn Storage>>,
        state: BackendState,
        added: bool,
    ) -> Backend {
        let local = !matches!(spec.source, BackendSource::Zeo(_));
        let zeo = match &spec.source {
            BackendSource::Zeo(c) => Some(c.clone()),
            _ => None,
        };
        // A file storage is named by its path.
        let place = match &spec.source {
            BackendSource::Zeo(c) => c.addr.clone(),
            BackendSource::Local(s) => s.name(),
            BackendSource::Unavailable(_) => "-".into(),
        };
        Backend {
            name: spec.name,
            kind: spec.kind,
            opened: AtomicBool::new(storage.is_some()),
            storage: RwLock::new(storage),
            zeo,
            reopen: spec.reopen,
            local,
            role: AtomicU8::new(role_code(state.role())),
            latency_us: AtomicU64::new(0f64.to_bits()),
            calls: Histogram::default(),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            last_tid: AtomicU64::new(0),
            recovery: Mutex::new(None),
            attempts: Mutex::new(Attempts::default()),
            errors: AtomicU64::new(0),
            place,
            verified: Mutex::new(None),
            removed: AtomicBool::new(false),
            added,
        }
    }

    pub(crate) fn latency(&self) -> f64 {
        f64::from_bits(self.latency_us.load(Ordering::Relaxed))
    }

    pub(crate) fn observe(&self, took: Duration) {
        let next = balance::ewma(self.latency(), took.as_secs_f64() * 1e6);
        self.latency_us.store(next.to_bits(), Ordering::Relaxed);
        self.calls.observe(took);
    }

    pub(crate) fn is_optimal(&self) -> bool {
        self.is_open() && !self.is_removed() && self.role() == Role::Optimal
    }

    /// Its role as last published.
    pub(crate) fn role(&self) -> Role {
        match self.role.load(Ordering::Acquire) {
            ROLE_OPTIMAL => Role::Optimal,
            ROLE_RECOVERING => Role::Recovering,
            _ => Role::Degraded,
        }
    }

    /// Take what the roles say of it (the shell, after each step).
    pub(crate) fn publish(&self, state: &BackendState, removed: bool) {
        self.role.store(role_code(state.role()), Ordering::Release);
        if removed {
            self.removed.store(true, Ordering::Release);
        }
    }

    /// Taken out of the array at runtime (its slot stays).
    pub(crate) fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    pub(crate) fn is_open(&self) -> bool {
        self.opened.load(Ordering::Acquire)
    }

    pub(crate) fn set_storage(&self, s: Option<Arc<dyn Storage>>) {
        let mut g = write(&self.storage);
        self.opened.store(s.is_some(), Ordering::Release);
        *g = s;
    }

    pub(crate) fn storage(&self) -> Result<Arc<dyn Storage>> {
        read(&self.storage)
            .clone()
            .ok_or_else(|| Error::Disconnected(format!("backend {:?} is not open", self.name)))
    }

    /// Open the backend again: connect a ZEO backend that has no
    /// connection, reopen a local one (`fresh`: moved aside and empty).
    /// Only for a backend that is not optimal. Returns a note on what was
    /// moved aside, if anything.
    pub(crate) fn reopen(
        &self,
        core: Weak<Core>,
        i: usize,
        fresh: bool,
        timeout: Duration,
    ) -> std::result::Result<Option<String>, String> {
        if let Some(copts) = &self.zeo {
            if fresh {
                return Err(format!(
                    "backend {:?} is a ZEO server: zeoraid cannot empty it; stop it, move its \
                     Data.fs aside, start it empty and recover it",
                    self.name
                ));
            }
            if self.is_open() {
                return Ok(None);
            }
            let mut copts = copts.clone();
            copts.call_timeout = timeout;
            copts.connect_timeout = copts.connect_timeout.min(timeout);
            let addr = copts.addr.clone();
            let c = Client::connect_with_handler(copts, Some(event_handler(core, i)))
                .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
            self.set_storage(Some(Arc::new(c)));
            return Ok(None);
        }
        if self.is_open() && !fresh {
            return Ok(None);
        }
        let Some(reopen) = &self.reopen else {
            return Err(format!("backend {:?} cannot be opened again", self.name));
        };
        // Close the old one first: a file storage holds a lock on its file.
        let old = write(&self.storage).take();
        self.opened.store(false, Ordering::Release);
        if let Some(old) = old {
            self.let_go(old, timeout)?;
        }
        let (s, note) = reopen(fresh)?;
        self.set_storage(Some(s));
        Ok(note)
    }

    /// Make its connection or file handle anew, whether it is open or not
    /// (a ZEO backend: a new connection, so its server ends whatever the
    /// old one left open; a local one: closed and opened again, so an
    /// unfinished transaction is cut off). A local backend that cannot be
    /// reopened (memory) is left as it is.
    pub(crate) fn reset(
        &self,
        core: Weak<Core>,
        i: usize,
        timeout: Duration,
    ) -> std::result::Result<(), String> {
        if self.zeo.is_none() && self.reopen.is_none() {
            return Ok(());
        }
        let old = write(&self.storage).take();
        self.opened.store(false, Ordering::Release);
        if let Some(old) = old {
            self.let_go(old, timeout)?;
        }
        self.reopen(core, i, false, timeout).map(|_| ())
    }

    /// Take its handle out, close it and wait (up to `timeout`) for the
    /// calls still running on it ([`Backend::let_go`]): a removed
    /// backend's file can be added again at once.
    pub(crate) fn release(&self, timeout: Duration) -> std::result::Result<(), String> {
        let old = write(&self.storage).take();
        self.opened.store(false, Ordering::Release);
        match old {
            Some(old) => self.let_go(old, timeout),
            None => Ok(()),
        }
    }

    /// Close a handle taken out of the backend and wait, up to `timeout`,
    /// for the calls still running on it to let go (a fan-out thread that
    /// has answered but not yet dropped its clone, or one past its
    /// deadline): a file storage's lock on its file goes with the last
    /// handle, and a new handle must not write beside an old one.
    fn let_go(&self, old: Arc<dyn Storage>, timeout: Duration) -> std::result::Result<(), String> {
        old.close();
        let deadline = Instant::now() + timeout;
        while Arc::strong_count(&old) > 1 {
            if Instant::now() >= deadline {
                return Err(format!(
                    "backend {:?}: a call on its old handle has not ended after {:.1} s, so it \
                     cannot be opened anew yet; try again (auto-recovery does)",
                    self.name,
                    timeout.as_secs_f64()
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    pub(crate) fn note_attempt(
        &self,
        result: &std::result::Result<(), super::state::RecoveryError>,
    ) {
        let mut a = lock(&self.attempts);
        a.last = Some(Instant::now());
        match result {
            Ok(()) => {
                *a = Attempts {
                    disabled: a.disabled,
                    ..Attempts::default()
                }
            }
            Err(why) => {
                a.failures = a.failures.saturating_add(1);
                a.diverged = why.is_divergence();
                a.error = Some(why.to_string());
            }
        }
    }
}

/// The handler for a ZEO backend's unasked messages (runs on its reader
/// thread: it must not call that backend).
pub(crate) fn event_handler(core: Weak<Core>, i: usize) -> crate::zeo::client::EventHandler {
    Arc::new(move |ev: ServerEvent| {
        let Some(core) = core.upgrade() else { return };
        match ev {
            ServerEvent::Invalidate { tid, oids } => match core.invalidated(&oids) {
                // Another controller leads: its commits, expected.
                super::fence::Invalidated::Expected => {}
                // Someone else rewrote the fencing object: a takeover.
                super::fence::Invalidated::TakenOver { epoch } => {
                    core.cache.forget_all("another controller took over");
                    log::error!(
                        "RAID array {:?}: backend {:?} committed {tid}, which rewrites the \
                         fencing object: another controller took over from this one (epoch \
                         {epoch}); this one refuses writes from now on",
                        core.opts.name,
                        core.backends[i].name
                    )
                }
                super::fence::Invalidated::Foreign => {
                    // What the cache holds may be what was just overwritten.
                    core.cache.forget_all("a backend was written to directly");
                    core.degrade(
                        i,
                        super::Reason::WrittenDirectly {
                            tid,
                            objects: oids.len(),
                        },
                    )
                }
            },
            // A controller that does not write (standing by, fenced out)
            // does not judge backends: it lets the connection go and
            // connects again; the takeover judges ([`Core::reconcile`]).
            ServerEvent::Disconnected(why) if lock(&core.commit.fence).stands_by() => {
                log::info!(
                    "RAID array {:?}: lost the connection to backend {:?} ({why}); standing \
                     by, so it is connected again rather than degraded",
                    core.opts.name,
                    core.backends[i].name
                );
                core.backends[i].set_storage(None);
            }
            ServerEvent::Disconnected(why) => {
                core.degrade(i, super::Reason::ConnectionLost(why.to_string()))
            }
            ServerEvent::Connected { .. } | ServerEvent::Info(_) => {}
        }
    })
}
