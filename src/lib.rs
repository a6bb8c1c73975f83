//! zeoraid: a RAID-1 controller and ZEO 5 server for ZODB.
//!
//! Layers, each knowing only the ones below it:
//! - [`zeo`]: the ZEO 5 wire protocol (frames, msgpack messages) and a client;
//! - [`storage`]: the ZODB storage contract and the storages we serve;
//! - [`server`]: the mio event loop, worker pool, sessions and commit lock;
//! - [`raid`]: the RAID-1 array, itself a storage the server serves;
//! - [`admin`]: the admin HTTP listener (status, metrics, recover, verify,
//!   disable) and `zeoraid ctl`, its client;
//! - [`config`]: the TOML configuration;
//! - [`bench`]: the load generator behind `zeoraid bench`.

pub mod admin;
#[cfg(feature = "bench")]
pub mod bench;
pub mod config;
mod instance;
pub mod locks;
pub mod net;
pub mod open;
pub mod raid;
pub mod server;
pub mod storage;
pub mod zeo;

pub use instance::{StartError, Stopper, Zeoraid};
