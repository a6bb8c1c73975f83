//! Whether this server takes new clients: the gate controller high
//! availability (issue #26) flips. A standby controller accepts
//! connections but does not greet them (the event loop greets them when
//! the gate opens), so a stock `ZEO.ClientStorage([a, b])` registers
//! with the leader and, when the leader dies, with this controller as
//! soon as it took over. (A standby that answered `register` with an
//! error would not be asked again: the client retries only once every
//! attempt ended, and the attempt on a dead leader's address never ends.)
//! A connection greeted just before the gate closed has its `register`
//! refused with the reason (which controller leads). When the controller
//! stops leading it also closes the connected clients, which reconnect to
//! the new leader.
//!
//! Without `[ha]` the gate is open from the start and never closes: a
//! single controller behaves exactly as before. Checking it is one atomic
//! load per `register`; the reason is read only when refusing.

use super::{Out, Shared};
use crate::locks::{lock, read, write};
use crate::status::HaStatus;
use crate::storage::{Error, Oid, Tid};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// The gate's state, in [`Shared`].
pub(crate) struct Gate {
    open: AtomicBool,
    /// Why `register` is refused while closed.
    refusal: RwLock<String>,
    /// The controller's HA role, for the status document (`None`: no
    /// `[ha]`).
    ha: RwLock<Option<HaStatus>>,
}

impl Gate {
    /// Open: a single controller.
    pub(crate) fn open() -> Gate {
        Gate {
            open: AtomicBool::new(true),
            refusal: RwLock::new(String::new()),
            ha: RwLock::new(None),
        }
    }

    /// Closed from the start, refusing with `refusal` (an HA controller
    /// starts as a standby).
    pub(crate) fn closed(refusal: String, ha: HaStatus) -> Gate {
        Gate {
            open: AtomicBool::new(false),
            refusal: RwLock::new(refusal),
            ha: RwLock::new(Some(ha)),
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// `Ok` when `register` may proceed; else the refusal.
    pub(crate) fn admit(&self) -> Result<(), Error> {
        if self.open.load(Ordering::Acquire) {
            return Ok(());
        }
        Err(Error::Disconnected(read(&self.refusal).clone()))
    }

    pub(crate) fn ha(&self) -> Option<HaStatus> {
        read(&self.ha).clone()
    }
}

/// The handle the HA controller flips the gate with (see
/// [`super::Server::serving`]).
#[derive(Clone)]
pub struct ServeSwitch(pub(crate) Arc<Shared>);

impl ServeSwitch {
    /// Take new clients, and greet those that waited.
    pub fn serve(&self) {
        self.0.gate.open.store(true, Ordering::Release);
        self.0.send(Out::Greet);
    }

    /// Refuse `register` with `refusal` from now on (an already closed gate
    /// gets the new reason, say a new leader's name). Connected clients stay.
    pub fn refuse(&self, refusal: String) {
        *write(&self.0.gate.refusal) = refusal;
        self.0.gate.open.store(false, Ordering::Release);
    }

    /// Refuse `register` with `refusal` and close every connection (their
    /// transactions are aborted); ZEO clients reconnect, to the leader.
    pub fn stop_serving(&self, refusal: String) {
        self.refuse(refusal);
        let ids: Vec<_> = read(&self.0.sessions).keys().copied().collect();
        for id in ids {
            self.0.send(Out::Close(id));
        }
    }

    /// The invalidation queue's size of storage `name` (`None`: not served).
    pub fn invalidation_queue_size(&self, name: &str) -> Option<usize> {
        self.0.storages.get(name).map(|e| lock(&e.invq).bound())
    }

    /// Replace storage `name`'s invalidation queue with `entries` (oldest
    /// first), before serving; false when `name` is not served.
    pub fn prime_invalidations(&self, name: &str, entries: Vec<(Tid, Vec<Oid>)>) -> bool {
        let Some(e) = self.0.storages.get(name) else {
            return false;
        };
        lock(&e.invq).replace(entries);
        true
    }

    pub fn is_serving(&self) -> bool {
        self.0.gate.open.load(Ordering::Acquire)
    }

    /// What the status document shows about the controller's HA role.
    pub fn set_status(&self, ha: HaStatus) {
        *write(&self.0.gate.ha) = Some(ha);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_gate_admits_and_a_closed_one_says_why() {
        let open = Gate::open();
        assert!(open.is_open() && open.admit().is_ok() && open.ha().is_none());
        let ha = HaStatus {
            controller: "b".into(),
            role: "standby".into(),
            ..Default::default()
        };
        let closed = Gate::closed("b is a standby; the leader is a".into(), ha.clone());
        assert!(!closed.is_open());
        assert!(matches!(
            closed.admit(),
            Err(Error::Disconnected(m)) if m == "b is a standby; the leader is a"
        ));
        assert_eq!(closed.ha(), Some(ha));
    }
}
