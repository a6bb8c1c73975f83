//! # zeoraid
//!
//! A RAID-1 controller and ZEO 5 server for ZODB, as a library. The
//! `zeoraid` binary is a thin command line over it; a program can embed
//! the same server, or use the array in-process with no network at all.
//!
//! ## A tour of the layers
//!
//! Each layer imports only the ones above it in this list (no arrow points
//! back up; the leaves at the top import nothing of the crate):
//!
//! - [`net`] (leaf): addresses (host:port or a Unix socket path), TLS
//!   files to rustls configurations, Unix socket files.
//! - [`status`] (leaf): the status document's types, shared by whoever
//!   writes it (server, array) and whoever reads it (admin, `ctl`).
//! - [`storage`]: the ZODB storage contract as the [`storage::Storage`]
//!   trait (load, two-phase commit, undo, iteration, pack), its value
//!   types, and the storages zeoraid serves: [`storage::memory`] and
//!   [`storage::file`] (ZODB's own `Data.fs` format, interchangeable with
//!   Python's FileStorage). [`storage::commit`] and [`storage::load`] use
//!   any storage in-process. Imports `status`.
//! - [`zeo`]: the ZEO 5 wire protocol and a client,
//!   [`zeo::client::Client`], which is itself a `Storage` (a remote ZEO
//!   server, Python `runzeo` or zeoraid, used like a local one). Imports
//!   `storage`, `net`.
//! - `server` (internal): the ZEO server — a mio event loop, a worker
//!   pool, sessions, typed requests, the commit lock and group commit —
//!   serving any `Storage`. Imports `zeo`, `storage`, `net`, `status`.
//! - [`raid`]: the RAID-1 array, [`raid::RaidStorage`]: a `Storage` over
//!   several backends (files, memory, ZEO servers) that mirrors every
//!   transaction onto all of them in parallel, spreads reads, degrades a
//!   failing backend and recovers it online; off-site mirrors trail over
//!   slow links. Its decisions are pure functions in [`raid::state`].
//!   Imports `zeo`, `storage`, `status`; knows nothing of the config (it
//!   persists a description of added backends its opener gives it).
//! - [`ha`]: controller high availability's edge to etcd — a
//!   synchronous etcd v3 client over the JSON gateway ([`ha::etcd`]) and
//!   leader election on a lease-bound key ([`ha::lease`]); the role
//!   machine ([`ha::role`]) and the controller thread that drives it,
//!   fencing the arrays and gating the server's `register`
//!   ([`ha::controller`]). Imports `server`, `raid`, `status`.
//! - [`config`]: the configuration, from TOML or built in code. Imports
//!   `raid`'s and `server`'s option types, `zeo`'s, `net`.
//! - [`open`]: turns a [`config::StorageConfig`] into a storage, and an
//!   array's typed handle for its operators ([`open::Opened`]); what a
//!   reload changes ([`open::members`]). Imports `config`, `raid`,
//!   `storage`, `zeo`.
//! - `admin` (internal, feature `admin`): the admin HTTP listener,
//!   `zeoraid ctl`, the status rendered as a Nagios line, a table and
//!   Prometheus text. Imports `open`, `config`, `raid`, `server`,
//!   `status`, `net`.
//! - `notify` (internal): systemd's `sd_notify` protocol — `READY=1`,
//!   reloads, `STOPPING=1`, `STATUS=` and the watchdog pings that stop
//!   when the event loop or the workers hang. Imports `server`, `status`.
//! - [`Zeoraid`]: one running server — its storages, the ZEO listener and
//!   the admin listener — started from a [`config::Config`], stopped by
//!   its owner. Then the `zeoraid` binary (`src/main.rs`), a thin command
//!   line over it.
//!
//! Two small helpers sit beside the leaves: `locks` (poison-tolerant lock
//! guards) and `handoff` (the workers' wait queue). `tests/layers.rs`
//! checks this order on the source: an import that points up fails it.
//!
//! ## Serving ZEO clients from a program
//!
//! ```
//! use zeoraid::config::{Config, StorageConfig};
//! use zeoraid::Zeoraid;
//!
//! let mut cfg = Config::default();
//! cfg.server.listen = "127.0.0.1:0".into();
//! cfg.storage.push(StorageConfig::memory("1"));
//! let server = Zeoraid::start(&cfg).expect("started");
//! // ... stock ZEO.ClientStorage clients connect to server.local_addr() ...
//! server.shutdown();
//! ```
//!
//! ## An array in-process
//!
//! ```
//! use zeoraid::config::{BackendConfig, StorageConfig};
//! use zeoraid::storage::{commit, load, Op, Storage, Tid, Txn};
//!
//! let array = zeoraid::open::open_raid(&StorageConfig::raid(
//!     "1",
//!     vec![BackendConfig::memory("a"), BackendConfig::memory("b")],
//! ))
//! .expect("the array opens");
//! let oid = array.new_oids(1).unwrap()[0];
//! let data = b"state".to_vec().into();
//! commit(&array, &Txn::new(vec![Op::Store { oid, serial: Tid::ZERO, data }])).unwrap();
//! assert_eq!(&load(&array, oid).unwrap().data[..], b"state");
//! ```
//!
//! See `examples/embed_server.rs` and `examples/mirror_library.rs` for
//! whole programs.
//!
//! ## The public API
//!
//! The documented items — [`Zeoraid`], [`Stopper`], [`StartError`],
//! [`config`], [`open`], [`storage`], [`status`], [`raid::RaidStorage`]
//! and its options, [`zeo::client`] and [`net`]'s address and TLS file
//! types — are
//! the API this crate keeps stable across minor releases. Modules hidden
//! from these docs (the server's internals, the admin listener, the
//! benchmark tool, lock helpers) are public only for the `zeoraid` binary,
//! the tests and the benchmarks, and may change in any release.
//!
//! ## Cargo features
//!
//! All on by default; `default-features = false` leaves the ZEO server,
//! the storages, the array (with recovery and off-site mirrors) and the
//! ZEO client.
//!
//! - `tls`: TLS on the listener and to backends (rustls, no OpenSSL).
//! - `admin`: the admin HTTP listener (`[admin]`: status, metrics,
//!   recover, reload).
//! - `bench`: `zeoraid bench`, the load generator the benchmarks use.

#[doc(hidden)]
pub mod admin;
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench;
pub mod config;
pub mod ha;
pub(crate) mod handoff;
mod instance;
#[doc(hidden)]
pub mod locks;
pub mod net;
#[doc(hidden)]
pub mod notify;
pub mod open;
pub mod raid;
#[doc(hidden)]
pub mod server;
pub mod status;
pub mod storage;
pub mod zeo;

pub use instance::{StartError, Stopper, Zeoraid};
pub use server::Listen;
