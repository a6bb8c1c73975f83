//! Blobs through the array: the server stages an upload once (in the
//! staging directory of the first backend that keeps blobs, so that
//! backend's copy is a hard link); at vote every other backend gets a real
//! copy of its own (never a link: mirrors must not share an inode) in
//! *its* staging directory ([`for_backend`], run on that
//! backend's fan-out thread, so the copies are written in parallel), since
//! a backend moves the file into its blob directory when it commits it. A
//! ZEO backend streams its copy to its server. Loads go to one backend by
//! the read policy and fail over like other reads; a backend that lacks a
//! blob file another has is degraded (see `Core::read_op`).
//!
//! A backend without a blob directory (`blob-dir` unset) refuses the blob
//! and is degraded with that reason, saying what to set.

use crate::storage::{Error, Op, Result, Storage, Txn};
use std::path::{Path, PathBuf};

/// Files made for one backend's vote; removed when dropped (a backend
/// that committed one has moved it away already).
#[derive(Default)]
pub(super) struct Copies(Vec<PathBuf>);

impl Copies {
    pub(super) fn push(&mut self, p: PathBuf) {
        self.0.push(p);
    }

    /// The bytes of the copies (for progress figures).
    pub(super) fn bytes(&self) -> u64 {
        self.0
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }
}

impl Drop for Copies {
    fn drop(&mut self) {
        for p in &self.0 {
            if let Err(e) = std::fs::remove_file(p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("cannot remove the blob copy {}: {e}", p.display());
                }
            }
        }
    }
}

/// `txn` with each blob file replaced by a copy in `s`'s staging
/// directory (a hard link when it is on the same filesystem).
pub(super) fn for_backend(txn: &Txn, s: &dyn Storage) -> Result<(Txn, Copies)> {
    let mut copies = Copies(Vec::new());
    let mut own = txn.clone();
    for op in &mut own.ops {
        if let Op::StoreBlob { blob, .. } | Op::RestoreBlob { blob, .. } = op {
            let dir = s.blob_staging_dir().ok_or_else(|| {
                Error::Unsupported(format!(
                    "{}: set blob-dir on this backend of the array",
                    crate::storage::NO_BLOBS
                ))
            })?;
            let copy = copy_into(blob, &dir)?;
            copies.0.push(copy.clone());
            *blob = copy;
        }
    }
    Ok((own, copies))
}

/// A new file in `dir` with the content of `src`: a hard link when `src`
/// is in `dir` itself (the upload staged in this backend's own staging
/// directory), else a real copy. Never a link across backends: mirrors
/// sharing one inode would share its corruption.
pub(super) fn copy_into(src: &Path, dir: &Path) -> Result<PathBuf> {
    let same_dir = src.parent() == Some(dir);
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Io(format!("cannot create {}: {e}", dir.display())))?;
    for _ in 0..100 {
        let dst = dir.join(format!(
            "zeoraid-raid-{}-{}.tmp",
            std::process::id(),
            rand::random::<u64>()
        ));
        if same_dir && std::fs::hard_link(src, &dst).is_ok() {
            return Ok(dst);
        }
        if dst.exists() {
            continue;
        }
        return match std::fs::copy(src, &dst) {
            Ok(_) => Ok(dst),
            Err(e) => {
                let _ = std::fs::remove_file(&dst);
                Err(Error::Io(format!(
                    "cannot copy the blob {} to {}: {e} (is the disk full?)",
                    src.display(),
                    dst.display()
                )))
            }
        };
    }
    Err(Error::Io(format!(
        "cannot find a free file name in {}",
        dir.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_backend_gets_its_own_copy_and_left_overs_go() {
        let d = tempfile::tempdir().expect("tempdir");
        let src = d.path().join("upload.tmp");
        std::fs::write(&src, b"blob bytes").expect("write");
        // In the upload's own directory: a link; elsewhere: a copy.
        let link = copy_into(&src, d.path()).expect("link");
        use std::os::unix::fs::MetadataExt;
        let ino = |p: &Path| std::fs::metadata(p).expect("meta").ino();
        assert_eq!(ino(&link), ino(&src));
        let other = d.path().join("other");
        let a = copy_into(&src, &other).expect("copy");
        assert_ne!(ino(&a), ino(&src), "another backend's copy is its own file");
        let b = copy_into(&src, &other).expect("copy");
        assert_ne!(a, b);
        assert_eq!(std::fs::read(&a).expect("read"), b"blob bytes");
        // A consumer moving its copy away does not touch the others.
        std::fs::rename(&a, d.path().join("moved")).expect("move");
        let copies = Copies(vec![a.clone(), b.clone()]);
        drop(copies);
        assert!(!b.exists(), "left-over removed");
        assert!(src.exists(), "the upload itself stays with its owner");
    }
}
