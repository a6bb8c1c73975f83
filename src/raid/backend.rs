//! One mirror of the array: how to reach it ([`BackendSource`]), what the
//! array knows of it ([`Backend`]: state, recent latency, reads and
//! transactions served, last tid), and what a ZEO backend tells the array
//! unasked ([`event_handler`]: an invalidation means someone wrote to it
//! directly, a lost connection means it may miss transactions).

use super::balance;
use super::state::BackendState;
use super::Core;
use crate::locks::read;
use crate::storage::{Error, Result, Storage};
use crate::zeo::client::{ClientOptions, ServerEvent};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

/// How to reach one backend.
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
}

/// One mirror and what the array knows of it.
pub(crate) struct Backend {
    pub(crate) name: String,
    pub(crate) kind: &'static str,
    pub(crate) storage: Option<Arc<dyn Storage>>,
    /// In process (file, memory): its calls are CPU, not round trips.
    pub(crate) local: bool,
    pub(crate) state: RwLock<BackendState>,
    /// Moving average of call latency, microseconds (f64 bits).
    pub(crate) latency_us: AtomicU64,
    pub(crate) reads: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) last_tid: AtomicU64,
}

impl Backend {
    pub(crate) fn latency(&self) -> f64 {
        f64::from_bits(self.latency_us.load(Ordering::Relaxed))
    }

    pub(crate) fn observe(&self, took: Duration) {
        let next = balance::ewma(self.latency(), took.as_secs_f64() * 1e6);
        self.latency_us.store(next.to_bits(), Ordering::Relaxed);
    }

    pub(crate) fn is_optimal(&self) -> bool {
        self.storage.is_some() && read(&self.state).is_optimal()
    }

    pub(crate) fn storage(&self) -> Result<&Arc<dyn Storage>> {
        self.storage
            .as_ref()
            .ok_or_else(|| Error::Disconnected(format!("backend {:?} is not open", self.name)))
    }
}

/// The handler for a ZEO backend's unasked messages (runs on its reader
/// thread: it must not call that backend).
pub(crate) fn event_handler(core: Weak<Core>, i: usize) -> crate::zeo::client::EventHandler {
    Arc::new(move |ev: ServerEvent| {
        let Some(core) = core.upgrade() else { return };
        match ev {
            ServerEvent::Invalidate { tid, oids } => core.degrade(
                i,
                format!(
                    "written to directly: transaction {tid} ({} objects) was committed on it by \
                     another client, not through the array; stop writing to backends directly and \
                     recover it",
                    oids.len()
                ),
            ),
            ServerEvent::Disconnected(why) => core.degrade(
                i,
                format!("connection lost: {why}; recover it once it is back"),
            ),
            ServerEvent::Connected { .. } | ServerEvent::Info(_) => {}
        }
    })
}
