//! Running a request with a panic turned into an error reply: a bug in one
//! request must not take a worker (or the commit thread) down with it.

use crate::storage::{Error, Result};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Run `f`, turning a panic into an error reply and a log line.
pub(super) fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        log::error!("internal error while handling {what}: {msg} (this is a zeoraid bug; please report it with this log)");
        Error::Remote {
            class: "ZODB.POSException.StorageError".into(),
            message: format!("zeoraid internal error in {what}: {msg}; see the server log"),
        }
    })
}
