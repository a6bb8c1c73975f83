//! The ZEO server: a mio event loop that owns every socket, a fixed pool of
//! worker threads, per-connection sessions, the commit lock with parked
//! votes, and invalidation broadcast.
//!
//! Flow of a request:
//! 1. `io` (thread `zeoraid-io`) reads bytes, cuts frames, answers the
//!    handshake, decodes messages, checks each call's name and arity
//!    against [`methods`] and hands it to the pool as a `Job` — concurrent
//!    reads directly, transaction messages through the session's ordered
//!    queue (`session`).
//! 2. A worker (`zeoraid-worker-N`, `worker`) checks what the method
//!    needs of the session and decodes the call once into a typed
//!    `request::Request` ([`methods`]' table gives both for each name),
//!    runs its handler (`handlers`) against the
//!    [`crate::storage::Storage`] and sends the reply back as an `Out`
//!    over a channel, waking the loop with a mio `Waker`.
//! 3. `io` writes it out, buffering when the socket is full.
//!
//! A session's two-phase commit (vote, the conflict hold, finish) is in
//! `commit`; group commit's durable half and the announcement of a
//! committed transaction in `committer`. Decisions live in pure modules:
//! [`methods`] (the method table), `request` (argument decoding),
//! [`commit_lock`] (who holds the lock, who is next), [`invalidations`]
//! (bounded history for `getInvalidations`). `wire` shapes values as ZEO's
//! Python side expects them; `status` answers `get_info`, `server_status`
//! and `ruok`. `serving` is the gate controller HA closes on a standby
//! (connections wait for their greeting, `register` is refused) and opens
//! on the leader ([`ServeSwitch`]); without `[ha]` it is always open.
//!
//! Layering (`a ──► b`: `a` imports `b`; no arrow points back up, so
//! there is no import circle):
//!
//! ```text
//! io        ──► worker, session, methods
//! worker    ──► handlers, commit, session, methods, guard
//! handlers  ──► commit, session, methods, request
//! commit    ──► committer, session
//! committer ──► guard
//! methods   ──► request ──► wire
//! session   ──► (nothing above: the state of a connection)
//! ```
//!
//! `worker` is the loop (queues drained, panics caught by `guard`, votes
//! parked and resumed); `handlers` run the methods; `commit` is `vote` and
//! `tpc_finish`; `committer` group commit and `announce`; `session` holds
//! `Session`, `Queue`, `State`, `TxnState`, `Flow` and the helpers every
//! layer uses (`check_txn`, `release_lock`). All of them may use this
//! module's shared types (`Shared`, `StorageEntry`, `Job`, `Out`) and the
//! pure modules.

pub(crate) mod blobs;
mod commit;
pub mod commit_lock;
mod committer;
mod guard;
mod handlers;
pub mod invalidations;
mod io;
pub mod methods;
mod refusals;
mod request;
mod serving;
mod session;
mod status;
mod transport;
mod watchdog;
mod wire;
mod worker;

use crate::handoff::{self, Receiver, Sender};
use crate::locks::read;
use crate::net::tls::rustls;
use crate::storage::resolve::ConflictResolver;
use crate::storage::Storage;
use crate::zeo::message::Message;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

pub use serving::ServeSwitch;
pub use session::Session;
pub use transport::Listen;

/// How long a TLS client has for its handshake unless configured
/// (`[server.tls] handshake-timeout`).
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// TLS for the listener (`[server.tls]`).
#[derive(Clone)]
pub struct TlsOptions {
    pub config: Arc<rustls::ServerConfig>,
    /// The certificate file and its expiry, for status and metrics.
    pub info: TlsInfo,
    /// A client that has not finished its handshake by then is closed (a
    /// plaintext client on the TLS port waits for our greeting forever).
    pub handshake_timeout: std::time::Duration,
}

/// The served certificate: its file and notAfter (Unix seconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    pub certificate: std::path::PathBuf,
    pub not_after: Option<i64>,
}

impl TlsInfo {
    pub fn of(loaded: &crate::net::tls::ServerTls) -> TlsInfo {
        TlsInfo {
            certificate: loaded.files.certificate.clone(),
            not_after: loaded.not_after,
        }
    }
}

/// The listener's TLS configuration, replaced on reload.
pub(crate) struct TlsState {
    pub config: RwLock<Arc<rustls::ServerConfig>>,
    pub info: RwLock<TlsInfo>,
}

/// Replaces the listener's TLS configuration while the server runs
/// (certificates re-read on reload); new connections use the new one.
#[derive(Clone)]
pub struct TlsSwitch(Arc<TlsState>);

impl TlsSwitch {
    pub fn replace(&self, loaded: crate::net::tls::ServerTls) {
        *crate::locks::write(&self.0.info) = TlsInfo::of(&loaded);
        *crate::locks::write(&self.0.config) = loaded.config;
    }

    /// The certificate served now.
    pub fn info(&self) -> TlsInfo {
        crate::locks::read(&self.0.info).clone()
    }
}

/// Connection ids are never reused, so a late reply cannot reach a new peer.
pub type ConnId = u64;

pub(crate) use crate::locks::lock;

/// Work for the pool.
pub(crate) enum Job {
    /// Stateless reads (one read burst of one connection); run immediately.
    Concurrent(ConnId, Vec<Message>),
    /// Process the session's ordered queue.
    Drain(ConnId),
    /// The session's parked vote now holds the commit lock.
    Resume(ConnId),
    /// The connection is gone: abort its transaction, forget it.
    Disconnected(ConnId),
    /// A liveness probe that came through the event loop: count it
    /// (see [`Liveness`]).
    Probe(Arc<AtomicU64>),
    Stop,
}

/// Work for the event loop.
pub(crate) enum Out {
    Send(ConnId, Vec<u8>),
    SendMany(ConnId, Vec<Vec<u8>>),
    Broadcast(Vec<ConnId>, Arc<Vec<u8>>),
    /// A frame of a streamed download, counted until written.
    SendMetered(ConnId, blobs::Metered),
    /// The connection's queue drained: read from it again.
    ResumeReading(ConnId),
    Close(ConnId),
    /// A liveness probe: hand it on to the pool (see [`Liveness`]).
    Probe(Arc<AtomicU64>),
    /// The serving gate opened: greet the connections that wait for it.
    Greet,
}

/// Whether the event loop and the worker pool still turn, for the systemd
/// watchdog (`notify`): a probe goes to the event loop, which hands it to
/// the pool, where a worker counts it. A count that stops growing while
/// probes are sent means one of them is stuck.
#[derive(Clone)]
pub struct Liveness {
    shared: Arc<Shared>,
    answered: Arc<AtomicU64>,
}

impl Liveness {
    /// Send one probe through the event loop and the pool.
    pub fn probe(&self) {
        self.shared.send(Out::Probe(self.answered.clone()));
    }

    /// How many probes have come through so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Acquire)
    }
}

/// Per-storage counters, as ZEO's `server_status` reports them.
#[derive(Default)]
pub struct Stats {
    pub loads: AtomicU64,
    pub stores: AtomicU64,
    pub commits: AtomicU64,
    pub aborts: AtomicU64,
    pub conflicts: AtomicU64,
    /// Conflicts merged on the server (with `[conflict-resolution]`).
    pub conflicts_resolved: AtomicU64,
    pub active_txns: AtomicU64,
}

/// A storage served under a name, with its commit lock and invalidation state.
pub struct StorageEntry {
    pub name: String,
    pub storage: Arc<dyn Storage>,
    pub read_only: bool,
    pub(crate) lock: Mutex<commit_lock::CommitLock>,
    pub(crate) invq: Mutex<invalidations::InvalidationHistory>,
    pub(crate) clients: RwLock<BTreeSet<ConnId>>,
    /// Readers: a load and the queueing of its reply. Writer: making a
    /// transaction visible and queueing its invalidations.
    pub(crate) visibility: RwLock<()>,
    /// The storage's commit thread, when it does group commit.
    pub(crate) committer: Option<Sender<committer::Msg>>,
    /// Merges store conflicts on the server under the commit lock, when
    /// `[conflict-resolution]` is configured; else clients resolve them.
    pub(crate) resolver: Option<Arc<dyn ConflictResolver>>,
    pub stats: Stats,
    pub started: Instant,
}

/// Server settings (from `[server]` in the config).
#[derive(Clone)]
pub struct Options {
    /// TCP address or Unix socket path.
    pub listen: Listen,
    pub workers: usize,
    pub max_frame: usize,
    pub invalidation_queue_size: usize,
    /// Close a client that holds a commit lock (between vote and finish)
    /// longer than this; `None`: no limit (ZEO's default).
    pub transaction_timeout: Option<std::time::Duration>,
    /// Resolve store conflicts on the server (`[conflict-resolution]`);
    /// `None`: answer them to the client (ZEO 5 client-side resolution).
    pub conflict_resolver: Option<Arc<dyn ConflictResolver>>,
    /// `None`: plaintext.
    pub tls: Option<TlsOptions>,
    /// Unix socket permission bits (`socket-mode`); `None`: the umask's.
    pub socket_mode: Option<u32>,
    /// The largest blob a client may upload, in bytes (`max-blob-size`);
    /// `None`: no limit.
    pub max_blob_size: Option<u64>,
}

/// State shared by the loop and the workers.
pub(crate) struct Shared {
    pub storages: HashMap<String, Arc<StorageEntry>>,
    pub sessions: RwLock<HashMap<ConnId, Arc<Session>>>,
    pub jobs: Sender<Job>,
    pub out: crossbeam_channel::Sender<Out>,
    pub waker: Arc<mio::Waker>,
    /// Set by `send` when it woke the loop; cleared by the loop before it drains.
    pub wake_pending: AtomicBool,
    pub stopping: AtomicBool,
    /// The listener's TLS configuration; `None`: plaintext.
    pub tls: Option<Arc<TlsState>>,
    /// `Options::max_blob_size`.
    pub max_blob_size: Option<u64>,
    /// Whether `register` is admitted (closed on an HA standby).
    pub gate: serving::Gate,
}

impl Shared {
    /// Hand work to the event loop, waking it unless a wake is already
    /// pending (saves a syscall per reply when the loop is busy).
    pub fn send(&self, out: Out) {
        if self.out.send(out).is_ok() && !self.wake_pending.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.waker.wake() {
                log::error!("cannot wake the event loop: {e}");
            }
        }
    }

    pub fn session(&self, id: ConnId) -> Option<Arc<Session>> {
        read(&self.sessions).get(&id).cloned()
    }
}

/// A running server.
pub struct Server {
    listening: Listen,
    shared: Arc<Shared>,
    io: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    /// Group-commit threads, one per storage that does group commit.
    committers: Vec<(Sender<committer::Msg>, JoinHandle<()>)>,
    /// Dropping the sender stops the watchdog thread.
    watchdog: Option<(crossbeam_channel::Sender<()>, JoinHandle<()>)>,
}

/// Reads the running server's status document (see [`Server::status_source`]).
#[derive(Clone)]
pub struct StatusSource(Arc<Shared>);

impl StatusSource {
    pub fn document(&self) -> crate::status::Document {
        status::status_document(&self.0)
    }
}

/// A storage to serve: (name, storage, read-only).
pub type Served = (String, Arc<dyn Storage>, bool);

impl Server {
    /// Bind the listener and start the event loop and the worker pool.
    pub fn start(opts: Options, storages: Vec<Served>) -> std::io::Result<Server> {
        Server::start_gated(opts, storages, serving::Gate::open())
    }

    /// [`Server::start`] as a controller-HA standby: `register` is refused
    /// with `refusal` until the controller flips [`Server::serving`].
    pub fn start_standby(
        opts: Options,
        storages: Vec<Served>,
        refusal: String,
        ha: crate::status::HaStatus,
    ) -> std::io::Result<Server> {
        Server::start_gated(opts, storages, serving::Gate::closed(refusal, ha))
    }

    fn start_gated(
        opts: Options,
        storages: Vec<Served>,
        gate: serving::Gate,
    ) -> std::io::Result<Server> {
        let (listener, listening) = transport::Listener::bind(&opts.listen, opts.socket_mode)?;
        let poll = mio::Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), io::WAKER)?);
        let (job_tx, job_rx) = handoff::queue();
        let (out_tx, out_rx) = crossbeam_channel::unbounded();
        let mut commit_rx = Vec::new();
        let storages = storages
            .into_iter()
            .map(|(name, storage, read_only)| {
                let committer = storage.group_commit().then(|| {
                    let (tx, rx) = handoff::queue();
                    commit_rx.push((name.clone(), tx.clone(), rx));
                    tx
                });
                let entry = StorageEntry {
                    name: name.clone(),
                    read_only: read_only || storage.is_read_only(),
                    storage,
                    lock: Mutex::new(commit_lock::CommitLock::new()),
                    invq: Mutex::new(invalidations::InvalidationHistory::new(
                        opts.invalidation_queue_size,
                    )),
                    clients: RwLock::new(BTreeSet::new()),
                    visibility: RwLock::new(()),
                    committer,
                    resolver: opts.conflict_resolver.clone(),
                    stats: Stats::default(),
                    started: Instant::now(),
                };
                (name, Arc::new(entry))
            })
            .collect();
        let shared = Arc::new(Shared {
            storages,
            sessions: RwLock::new(HashMap::new()),
            jobs: job_tx,
            out: out_tx,
            waker,
            wake_pending: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            tls: opts.tls.as_ref().map(|t| {
                Arc::new(TlsState {
                    config: RwLock::new(t.config.clone()),
                    info: RwLock::new(t.info.clone()),
                })
            }),
            max_blob_size: opts.max_blob_size,
            gate,
        });
        let mut workers = Vec::new();
        for i in 0..opts.workers.max(1) {
            let shared = shared.clone();
            let rx: Receiver<Job> = job_rx.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("zeoraid-worker-{i}"))
                    .spawn(move || worker::run(shared, rx))?,
            );
        }
        let mut committers = Vec::new();
        for (name, tx, rx) in commit_rx {
            let (shared, entry) = (shared.clone(), shared.storages[&name].clone());
            let handle = std::thread::Builder::new()
                .name(format!("zeoraid-commit-{name}"))
                .spawn(move || committer::run(shared, entry, rx))?;
            committers.push((tx, handle));
        }
        let watchdog = {
            let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
            let shared = shared.clone();
            let timeout = opts.transaction_timeout;
            let handle = std::thread::Builder::new()
                .name("zeoraid-txn-watchdog".into())
                .spawn(move || watchdog::run(shared, timeout, stop_rx))?;
            Some((stop_tx, handle))
        };
        let io_shared = shared.clone();
        let max_frame = opts.max_frame;
        let handshake_timeout = opts
            .tls
            .as_ref()
            .map_or(DEFAULT_TLS_HANDSHAKE_TIMEOUT, |t| t.handshake_timeout);
        let io = std::thread::Builder::new()
            .name("zeoraid-io".into())
            .spawn(move || {
                io::run(
                    poll,
                    listener,
                    io_shared,
                    out_rx,
                    max_frame,
                    handshake_timeout,
                )
            })?;
        log::info!(
            "listening on {listening}{}",
            if opts.tls.is_some() { " (TLS)" } else { "" }
        );
        Ok(Server {
            listening,
            shared,
            io: Some(io),
            workers,
            committers,
            watchdog,
        })
    }

    /// A handle that reads every storage's status document (the `ruok`
    /// document) while the server runs, for the admin interface.
    pub fn status_source(&self) -> StatusSource {
        StatusSource(self.shared.clone())
    }

    /// The TCP address the server listens on (the bound port when the
    /// config said 0); for a Unix socket server `0.0.0.0:0` (see
    /// [`Server::listening`]).
    pub fn local_addr(&self) -> SocketAddr {
        match &self.listening {
            Listen::Tcp(a) => *a,
            Listen::Unix(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }

    /// Where the server listens: TCP address or Unix socket path.
    pub fn listening(&self) -> &Listen {
        &self.listening
    }

    /// A handle that probes whether the event loop and the workers turn
    /// (for the systemd watchdog).
    pub fn liveness(&self) -> Liveness {
        Liveness {
            shared: self.shared.clone(),
            answered: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The gate on `register` that controller HA flips (a single
    /// controller never closes it).
    pub fn serving(&self) -> ServeSwitch {
        ServeSwitch(self.shared.clone())
    }

    /// A handle to replace the TLS configuration on reload; `None` for a
    /// plaintext server.
    pub fn tls_switch(&self) -> Option<TlsSwitch> {
        self.shared.tls.clone().map(TlsSwitch)
    }

    /// Graceful shutdown: stop accepting, close connections (aborting their
    /// transactions), stop the workers, close the storages, join every thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if self.io.is_none() {
            return;
        }
        if let Some((stop, handle)) = self.watchdog.take() {
            drop(stop);
            if handle.join().is_err() {
                log::error!("the transaction watchdog thread panicked");
            }
        }
        // Make durable and acknowledge what was logged while the event loop
        // still delivers replies (a transaction logged after this finishes
        // on its worker: the channel is closed).
        for (tx, handle) in self.committers.drain(..) {
            let _ = tx.send(committer::Msg::Stop);
            if handle.join().is_err() {
                log::error!("a commit thread panicked");
            }
        }
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = self.shared.waker.wake();
        if let Some(io) = self.io.take() {
            if io.join().is_err() {
                log::error!("the event loop thread panicked");
            }
        }
        if let Listen::Unix(path) = &self.listening {
            crate::net::unix::remove(path);
        }
        // The loop queued a Disconnected job per connection before exiting;
        // Stop comes after them in the FIFO.
        for _ in &self.workers {
            let _ = self.shared.jobs.send(Job::Stop);
        }
        for w in self.workers.drain(..) {
            if w.join().is_err() {
                log::error!("a worker thread panicked");
            }
        }
        for entry in self.shared.storages.values() {
            log::info!("closing storage {:?}", entry.name);
            entry.storage.close();
        }
        log::info!("server stopped");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
