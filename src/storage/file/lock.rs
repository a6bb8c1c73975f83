//! The `Data.fs.lock` file: one writer per storage file.
//!
//! Python's FileStorage takes an exclusive, non-blocking `flock` on
//! `Data.fs.lock` (zc.lockfile) and writes its pid there. We take the same
//! lock with std's `File::try_lock` (also `flock` on Unix), so a Python
//! process and zeoraid exclude each other, and two opens in one process do
//! too (`flock` locks belong to the open file, not the process).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::storage::{Error, Result};

/// A held lock; released when dropped (the file is closed).
#[derive(Debug)]
pub struct LockFile {
    _file: File,
}

/// Lock `path` (e.g. `Data.fs.lock`) for writing the storage.
pub fn lock(path: &Path) -> Result<LockFile> {
    let shown = path.display().to_string();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::Io(format!("{shown}: cannot open the lock file: {e}")))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut content = String::new();
            let _ = f.read_to_string(&mut content);
            let pid = content.trim();
            let holder = if pid.is_empty() {
                "another process".to_string()
            } else {
                format!("another process (pid {pid})")
            };
            return Err(Error::Io(format!(
                "{shown}: the storage is already open for writing by {holder}: \
                 the lock file {shown} is locked"
            )));
        }
        Err(TryLockError::Error(e)) => {
            return Err(Error::Io(format!("{shown}: cannot lock: {e}")));
        }
    }
    // Like zc.lockfile: " <pid>\n".
    let _ = f.set_len(0);
    let _ = f.seek(SeekFrom::Start(0));
    let _ = writeln!(f, " {}", std::process::id());
    let _ = f.flush();
    Ok(LockFile { _file: f })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_until_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("Data.fs.lock");
        let held = lock(&p).expect("lock");
        let e = lock(&p).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            e.contains("Data.fs.lock") && e.contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        drop(held);
        lock(&p).expect("lock again");
    }
}
