//! The shell around [`state::roles`]: the roles behind their one lock,
//! each step's `Ready` carried out under it — every backend's role
//! published to the backend (the read and write paths read that atomic,
//! never this lock), errors counted, lines logged, the state file written
//! — so the file always follows the roles' order of changes.

use super::backend::Backends;
use super::state::roles::{Event, Level, Roles};
use super::state::BackendState;
use super::statefile;
use crate::locks::lock;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

pub(super) struct Roster {
    roles: Mutex<Roles>,
    /// Where the array remembers its degraded backends (`None`: nowhere).
    state_file: Option<PathBuf>,
    array: String,
}

impl Roster {
    pub(super) fn new(roles: Roles, state_file: Option<PathBuf>, array: &str) -> Roster {
        Roster {
            roles: Mutex::new(roles),
            state_file,
            array: array.to_string(),
        }
    }

    /// Advance the roles by `event` and carry out its `Ready` (see the
    /// module doc). Whether a role changed.
    pub(super) fn step(&self, event: Event, backends: &Backends) -> bool {
        let mut roles = lock(&self.roles);
        let open = |i: usize| i < backends.len() && backends[i].is_open();
        let ready = roles.step(event, open);
        for (i, m) in roles.members().iter().enumerate() {
            if i < backends.len() {
                backends[i].publish(&m.state, m.removed);
            }
        }
        for &i in &ready.errors {
            if i < backends.len() {
                backends[i].errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        for (level, line) in &ready.log {
            match level {
                Level::Error => log::error!("{line}"),
                Level::Warn => log::warn!("{line}"),
                Level::Info => log::info!("{line}"),
            }
        }
        if let Some(saved) = &ready.persist {
            if let Err(e) = self.write(saved) {
                log::error!(
                    "RAID array {:?}: {e}; a restart may trust a degraded backend again",
                    self.array
                );
            }
        }
        ready.changed
    }

    /// Backend `i`'s state, with its reason.
    pub(super) fn state(&self, i: usize) -> BackendState {
        lock(&self.roles).state(i)
    }

    /// Write the state file now, saying why not (the array must remember
    /// its degraded backends before it serves).
    pub(super) fn persist(&self) -> Result<(), String> {
        let roles = lock(&self.roles);
        self.write(&roles.saved())
    }

    fn write(&self, saved: &statefile::Saved) -> Result<(), String> {
        match &self.state_file {
            Some(path) => statefile::save(path, saved),
            None => Ok(()),
        }
    }
}
