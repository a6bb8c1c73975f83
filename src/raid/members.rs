//! Live reconfiguration: backends added and removed while the array runs
//! (`zeoraid ctl add|remove`, a config reload), and the fan-out mode and
//! read policy changed by a reload.
//!
//! An added backend joins **degraded** ("added at runtime") and is
//! brought up to date by recovery (auto-recovery picks it up; with
//! `auto-recover = false` an operator recovers it). A removed backend is
//! taken out under the array's commit lock — after the transaction in
//! flight finishes, before the next one votes — and then closed. Neither
//! is allowed to leave fewer than `min-optimal` optimal backends. The
//! state file remembers both, so a restart neither drops an added backend
//! nor brings a removed one back (the opener merges them into the
//! configured backends: `open::members`).

use super::backend::{Backend, BackendSource, BackendSpec};
use super::balance::ReadPolicy;
use super::fanout::Mode;
use super::state::roles::Event;
use super::state::BackendState;
use super::statefile::Recipe;
use super::RaidStorage;
use crate::locks::lock;
use crate::zeo::client::Client;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Serialises additions and removals (an added ZEO backend's event
/// handler is bound to the position it will get).
#[derive(Default)]
pub(super) struct Reconfig(std::sync::Mutex<()>);

impl Reconfig {
    /// Held while one addition or removal runs.
    pub(super) fn hold(&self) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.0)
    }
}

/// Longest a removal waits for the transaction in flight.
const REMOVE_WAIT: Duration = Duration::from_secs(30);

impl RaidStorage {
    /// The names of the backends in the array now, in order.
    pub fn backend_names(&self) -> Vec<String> {
        self.core
            .backends
            .iter()
            .filter(|b| !b.is_removed())
            .map(|b| b.name.clone())
            .collect()
    }

    /// Add a backend while the array runs: it joins degraded and is
    /// recovered. `recipe` is what the state file remembers to open it
    /// again after a restart (a `config::BackendConfig` converts into one).
    pub fn add_backend(&self, spec: BackendSpec, recipe: impl Into<Recipe>) -> Result<(), String> {
        let recipe = recipe.into();
        let core = &self.core;
        let _one_at_a_time = core.reconfig.hold();
        if self.backend_names().contains(&spec.name) {
            return Err(format!(
                "RAID array {:?} already has a backend {:?}",
                core.opts.name, spec.name
            ));
        }
        if core.backends.len() >= core.backends.capacity() {
            return Err(format!(
                "RAID array {:?} has no room for another backend until it restarts (at most {} \
                 additions per run)",
                core.opts.name,
                super::EXTRA_BACKENDS
            ));
        }
        let i = core.backends.len();
        let (storage, problem) = match &spec.source {
            BackendSource::Zeo(copts) => {
                let mut copts = copts.clone();
                copts.call_timeout = core.opts.backend_timeout;
                copts.connect_timeout = copts.connect_timeout.min(core.opts.backend_timeout);
                let addr = copts.addr.clone();
                let handler = super::backend::event_handler(Arc::downgrade(core), i);
                match Client::connect_with_handler(copts, Some(handler)) {
                    Ok(c) => (Some(Arc::new(c) as Arc<dyn crate::storage::Storage>), None),
                    Err(e) => (None, Some(format!("cannot connect to {addr}: {e}"))),
                }
            }
            BackendSource::Local(s) => (Some(s.clone()), None),
            BackendSource::Unavailable(why) => (None, Some(why.clone())),
        };
        let why = super::Reason::Added(problem.clone());
        let name = spec.name.clone();
        let b = Backend::new(spec, storage, BackendState::Degraded(why), true);
        let at = core
            .backends
            .push(b)
            .ok_or_else(|| "no room for another backend".to_string())?;
        debug_assert_eq!(at, i);
        core.step(Event::Added {
            name: name.clone(),
            recipe,
            problem,
        });
        log::info!(
            "RAID array {:?}: backend {name:?} added; it is recovered before it serves \
             ({} backends now)",
            core.opts.name,
            core.total()
        );
        core.wake.wake_all();
        Ok(())
    }

    /// Remove a backend while the array runs (after the transaction in
    /// flight), and close it. Refused when it would leave fewer than
    /// `min-optimal` optimal backends or while it recovers.
    pub fn remove_backend(&self, name: &str) -> Result<(), String> {
        let core = &self.core;
        let _one_at_a_time = core.reconfig.hold();
        let i = self.position(name)?;
        let b = &core.backends[i];
        if b.role() == crate::status::Role::Recovering {
            return Err(format!(
                "backend {name:?} is recovering; remove it when the recovery has ended (or \
                 disable it first)"
            ));
        }
        if core.total() == 1 {
            return Err(format!("backend {name:?} is the array's last backend"));
        }
        // Under the array's commit lock: no transaction between vote and
        // finish holds it.
        let Some(g) = core.commit.wait_gate(REMOVE_WAIT, core.wake.closing_flag()) else {
            return Err(format!(
                "a transaction held the array's commit lock for more than {} s; try again",
                REMOVE_WAIT.as_secs()
            ));
        };
        let left = core.optimal().iter().filter(|&&j| j != i).count();
        if b.is_optimal() && left < core.opts.min_optimal.max(1) {
            return Err(format!(
                "removing backend {name:?} would leave {left} optimal backend(s), fewer than \
                 min-optimal = {}",
                core.opts.min_optimal
            ));
        }
        // Out of the optimal set at once, under the commit lock: no later
        // vote chooses it. The roles (and the state file) take it next,
        // outside the lock.
        b.removed.store(true, Ordering::Release);
        drop(g);
        core.step(Event::Removed {
            at: i,
            added: b.added,
        });
        // A transaction it logged before the lock passed on is made
        // durable and published on it before it is closed.
        if let super::state::inflight::Readiness::Logged(tid) = core.wait_ended(i) {
            log::warn!(
                "RAID array {:?}: backend {name:?} is removed with transaction {tid} logged \
                 but not durable on it",
                core.opts.name
            );
        }
        // Closed and let go of (a file backend's lock is released, so the
        // same file can be added again).
        if let Err(e) = b.release(REMOVE_WAIT) {
            log::warn!(
                "RAID array {:?}: {e} (it is removed; its file stays locked until that call \
                 ends)",
                core.opts.name
            );
        }
        log::info!(
            "RAID array {:?}: backend {name:?} removed and closed; {} of {} backends optimal, \
             array {}",
            core.opts.name,
            core.optimal().len(),
            core.total(),
            core.array_state()
        );
        Ok(())
    }

    /// Change the object cache's size (a reload): `Ok(true)` if it
    /// changed; turning it on or off needs a restart.
    pub fn set_cache_size(&self, bytes: u64) -> std::result::Result<bool, String> {
        self.core.cache.resize(bytes)
    }

    /// Change the fan-out mode and the read policy (a reload).
    pub fn set_modes(&self, fanout: Mode, read_policy: ReadPolicy) -> Vec<String> {
        let core = &self.core;
        let mut changed = Vec::new();
        if core.fanout.mode() != fanout {
            core.fanout.set_mode(fanout);
            changed.push(format!("fanout = {}", fanout.label()));
        }
        if core.read_policy() != read_policy {
            core.read_policy
                .store(read_policy.code(), Ordering::Relaxed);
            changed.push(format!("read-policy = {}", read_policy.label()));
        }
        changed
    }
}
