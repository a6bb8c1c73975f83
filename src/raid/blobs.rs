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

use crate::storage::blobdir::StagedFile;
use crate::storage::{Error, Op, Result, Storage, Txn};
use std::path::{Path, PathBuf};

/// Files made for one backend's vote; removed when dropped (a backend
/// that committed one has moved it away already).
#[derive(Default)]
pub(super) struct Copies(Vec<StagedFile>);

impl Copies {
    pub(super) fn push(&mut self, p: PathBuf) {
        self.0.push(StagedFile::new(p));
    }

    /// The bytes of the copies (for progress figures).
    pub(super) fn bytes(&self) -> u64 {
        self.0
            .iter()
            .filter_map(|p| std::fs::metadata(p.path()).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// `txn` with each blob file replaced by a copy in `s`'s staging
/// directory: the one [`prepare`] made when the upload ended, else one made
/// now (a hard link in the upload's own directory).
pub(super) fn for_backend(txn: &Txn, s: &dyn Storage) -> Result<(Txn, Copies)> {
    let mut copies = Copies::default();
    let mut own = txn.clone();
    for op in &mut own.ops {
        if let Op::StoreBlob { blob, .. } | Op::RestoreBlob { blob, .. } = op {
            let dir = s.blob_staging_dir().ok_or_else(|| {
                Error::Unsupported(format!(
                    "{}: set blob-dir on this backend of the array",
                    crate::storage::NO_BLOBS
                ))
            })?;
            let prepared = prepared_name(blob).map(|n| dir.join(n));
            let copy = match prepared.filter(|p| p.is_file()) {
                // The backend takes it; whoever staged the upload removes
                // what is left when the transaction ends.
                Some(p) => p,
                None => {
                    let c = copy_into(blob, &dir)?;
                    copies.push(c.clone());
                    c
                }
            };
            *blob = copy;
        }
    }
    Ok((own, copies))
}

/// Copy `src` into the new file `to` with plain reads and writes, so the
/// copy's pages are in the page cache when it is read back (a
/// `copy_file_range` copy, what `std::fs::copy` does, left a mirror's
/// blob to be read from the disk by the first download).
fn copy_through_cache(src: &Path, mut to: std::fs::File) -> std::io::Result<()> {
    use std::io::Write;
    let mut from = std::fs::File::open(src)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = crate::storage::blobdir::read_full(&mut from, &mut buf)?;
        to.write_all(&buf[..n])?;
        if n < buf.len() {
            return Ok(());
        }
    }
}

/// The name of the copy [`prepare`] makes of `upload` in another
/// backend's staging directory (pure).
fn prepared_name(upload: &Path) -> Option<String> {
    upload
        .file_name()
        .map(|n| format!("{}.mirror.tmp", n.to_string_lossy()))
}

/// Copy a finished upload into every other blob-keeping backend's staging
/// directory, before the transaction votes (outside the commit lock, so a
/// large blob's copies do not hold up other commits). Returns the copies.
pub(super) fn prepare(
    upload: &Path,
    targets: &[std::sync::Arc<dyn Storage>],
) -> Result<Vec<PathBuf>> {
    let Some(name) = prepared_name(upload) else {
        return Ok(Vec::new());
    };
    let mut made = Vec::new();
    for s in targets {
        let Some(dir) = s.blob_staging_dir() else {
            continue;
        };
        if upload.parent() == Some(dir.as_path()) {
            continue; // linked at vote
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Io(format!("cannot create {}: {e}", dir.display())))?;
        let dst = dir.join(&name);
        let copied = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&dst)
            .and_then(|f| copy_through_cache(upload, f));
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&dst);
            for m in &made {
                let _ = std::fs::remove_file(m);
            }
            return Err(Error::Io(format!(
                "cannot copy the blob {} to {}: {e} (is the disk full?)",
                upload.display(),
                dst.display()
            )));
        }
        made.push(dst);
    }
    Ok(made)
}

/// A new file in `dir` with the content of `src`: a hard link when `src`
/// is in `dir` itself (the upload staged in this backend's own staging
/// directory), else a real copy. Never a link across backends: mirrors
/// sharing one inode would share its corruption.
pub(super) fn copy_into(src: &Path, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Io(format!("cannot create {}: {e}", dir.display())))?;
    if src.parent() == Some(dir) {
        for _ in 0..100 {
            let dst = dir.join(format!(
                "zeoraid-raid-{}-{}.tmp",
                std::process::id(),
                rand::random::<u64>()
            ));
            match std::fs::hard_link(src, &dst) {
                Ok(()) => return Ok(dst),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(_) => break, // copy it instead
            }
        }
    }
    let (file, dst) = crate::storage::blobdir::create_temp(dir)?;
    match copy_through_cache(src, file) {
        Ok(()) => Ok(dst),
        Err(e) => {
            let _ = std::fs::remove_file(&dst);
            Err(Error::Io(format!(
                "cannot copy the blob {} to {}: {e} (is the disk full?)",
                src.display(),
                dst.display()
            )))
        }
    }
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
        let mut copies = Copies::default();
        copies.push(a.clone());
        copies.push(b.clone());
        drop(copies);
        assert!(!b.exists(), "left-over removed");
        assert!(src.exists(), "the upload itself stays with its owner");
    }

    #[test]
    fn copies_made_when_the_upload_ends_are_the_ones_the_vote_uses() {
        use crate::storage::memory::MemoryStorage;
        use crate::storage::{Oid, Tid};
        let d = tempfile::tempdir().expect("tempdir");
        let own = std::sync::Arc::new(
            MemoryStorage::with_blobs("own", false, Some(&d.path().join("own"))).expect("blobs"),
        ) as std::sync::Arc<dyn Storage>;
        let other = std::sync::Arc::new(
            MemoryStorage::with_blobs("other", false, Some(&d.path().join("other")))
                .expect("blobs"),
        ) as std::sync::Arc<dyn Storage>;
        let staging = own.blob_staging_dir().expect("staging");
        let upload = staging.join("up-1.tmp");
        std::fs::write(&upload, b"payload").expect("write");
        let made = prepare(&upload, &[own.clone(), other.clone()]).expect("prepare");
        assert_eq!(
            made.len(),
            1,
            "the upload's own backend links at vote: {made:?}"
        );
        let txn = Txn::new(vec![Op::StoreBlob {
            oid: Oid(1),
            serial: Tid::ZERO,
            data: b"x".to_vec().into(),
            blob: upload.clone(),
        }]);
        let (theirs, copies) = for_backend(&txn, other.as_ref()).expect("for other");
        match &theirs.ops[0] {
            Op::StoreBlob { blob, .. } => assert_eq!(blob, &made[0], "the prepared copy"),
            op => panic!("{op:?}"),
        }
        assert!(copies.0.is_empty(), "nothing copied at vote");
        let (mine, copies) = for_backend(&txn, own.as_ref()).expect("for own");
        match &mine.ops[0] {
            Op::StoreBlob { blob, .. } => assert_ne!(blob, &upload, "its own link"),
            op => panic!("{op:?}"),
        }
        assert_eq!(copies.0.len(), 1);
    }
}
