//! `FileStorage`: the ZODB `Data.fs` format, durable and crash-safe, byte
//! compatible with Python 3 ZODB's `FileStorage` (magic `FS30`; Python 2's
//! `FS21` files are read too): a file written here opens in Python, passes
//! its `fstest`, and the other way round.
//!
//! - [`format`](mod@format): record layouts and the checks applied to them (pure);
//! - [`pickle`]: the transaction extension (a pickled dict in the file, a
//!   msgpack map on the wire);
//! - [`records`]: positional reads, backpointer chasing;
//! - [`index`]: the in-memory object index, the open-time scan with
//!   Python's crash-recovery rules, and our index file;
//! - [`lock`]: the lock file (`Data.fs.lock`), shared with Python's;
//! - `pack`: pack (with [`crate::storage::gc`]) into `Data.fs.pack` and swap.
//!
//! Commit: the whole transaction is written at vote after the last logged
//! one with the checkpoint status `'c'` (a failed write truncates it away
//! again, so a full disk leaves the file valid); abort truncates. Finish is
//! a group commit in three steps ([`Storage::group_commit`]):
//! 1. `finish_log`, under the server's commit lock: flip the status to
//!    `' '` and remember the new positions in an *overlay* that votes
//!    consult but loads do not; the commit lock can pass to the next voter,
//!    which writes after this transaction;
//! 2. `make_durable`, without the lock: one fsync (`sync = true`) covers
//!    every transaction logged before it started; finishers wait on the
//!    `synced` mutex and usually find their work done by the one ahead;
//! 3. `publish`, in tid order: install the positions in the index; now
//!    loads see the transaction and the server acknowledges it.
//!
//! A transaction is acknowledged only after step 2, so a crash loses none
//! that was. A failed fsync marks the storage broken: commits are refused
//! until it is reopened, because the kernel may have dropped the failed
//! pages (retrying the fsync would falsely succeed).
//!
//! At open, a trailing transaction that is truncated
//! or still `'c'` is an unfinished commit: it is copied to `Data.fs.trN`
//! and cut off (with a warning naming the file and position), exactly as
//! Python's `read_index` does. Damage before the end is an error naming the
//! file and byte position; read-only opens never write.
//!
//! Concurrency: loads read with `read_at` on a shared file handle and never
//! wait for a commit: the committed state (file handle, index, end position)
//! sits behind an `RwLock` that finish (steps 1 and 3) and the end of a pack
//! write, briefly. The voted transaction sits in the `commit` mutex, which
//! pack also takes for its final swap, after waiting for every logged
//! transaction to be published; a voted transaction is moved into the
//! packed file then. The index file is saved at close, after a pack, and
//! every `INDEX_SAVE_EVERY` (10 000) commits on a background thread.
//!
//! Semantics (load_before on deleted objects, undo decisions and messages,
//! undo log stopping at packed transactions, restore backpointers, what pack
//! keeps, with and without garbage collection) are those of
//! [`MemoryStorage`](crate::storage::memory::MemoryStorage); the decisions
//! both make are shared in [`crate::storage::rules`]. So RAID mirrors
//! of either kind answer alike (a differential test checks it). Differences
//! from Python's FileStorage, all deliberate: one record per object and
//! transaction (a second store replaces the first), `history` sizes count
//! the data a backpointer reaches, pack keeps previous pointers in packed
//! records, empty object data is refused (the format cannot hold it), and
//! `size_info().bytes` is the file size (`getSize`).

pub mod format;
pub mod index;
pub mod lock;
mod pack;
pub mod pickle;
pub mod records;

use crate::locks::{lock, read, write};
use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use self::format::{
    DataHeader, TxnHeader, MAGIC, STATUS_CHECKPOINT, STATUS_NORMAL, STATUS_OFFSET, STATUS_PACKED,
};
use self::index::Index;
use self::records::{corrupt, io_err, Src};
use super::blobdir::{BlobDir, StagedBlobs};
use super::resolve::{resolve_undo, ConflictResolver};
use super::rules::{self, UndoView, UNDO_INVALID_RECORD};
use super::stage::{self, Stage};
use super::{
    timestamp, Conflict, CurrentRecord, Data, DataRecord, Error, HistoryEntry, Loaded, Oid, Result,
    SizeInfo, Storage, Tid, Txn, TxnIter, TxnRecord, UndoEntry, Vote,
};

pub use super::rules::MAX_NEW_OIDS;

/// Save the index file in the background after this many commits.
const INDEX_SAVE_EVERY: u64 = 10_000;

/// How to open a [`FileStorage`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FileOptions {
    /// Refuse writes; never modify the file (not even to discard an
    /// unfinished tail) and take no lock, as Python's `read_only=True`.
    pub read_only: bool,
    /// fsync at every commit (default true).
    pub sync: bool,
    /// Remove unreachable objects when packing with `gc` (default true).
    pub pack_gc: bool,
    /// Create the file when it does not exist (default true). Unlike
    /// Python's `create=True`, an existing file is never emptied.
    pub create: bool,
}

impl Default for FileOptions {
    fn default() -> FileOptions {
        FileOptions {
            read_only: false,
            sync: true,
            pack_gc: true,
            create: true,
        }
    }
}

/// Everything committed: written by finish (log and publish) and the end
/// of `pack`.
struct Committed {
    file: Arc<File>,
    /// Published records: what loads see.
    index: Index,
    /// Just after the last published transaction.
    pos: u64,
    last_tid: Tid,
    /// Just after the last logged transaction (published or pending): where
    /// the next vote writes.
    tail: u64,
    tail_tid: Tid,
    /// Index entries of logged transactions not yet published: votes see
    /// them (conflicts, previous pointers, undo), loads do not.
    overlay: HashMap<Oid, (u64, bool)>,
    /// Logged transactions awaiting durability and publication, oldest first.
    pending: VecDeque<Prepared>,
    /// Bumped when pack swaps the file in (positions start over).
    generation: u64,
}

impl Committed {
    /// The newest record of `oid` including logged, unpublished transactions.
    fn current(&self, oid: Oid) -> Option<(u64, bool)> {
        self.overlay
            .get(&oid)
            .copied()
            .or_else(|| self.index.get(oid))
    }
}

/// How far the file is known to be on disk (group commit).
#[derive(Default)]
struct Synced {
    generation: u64,
    pos: u64,
}

/// Index updates of a transaction: (oid, record position, has data).
type Updates = Vec<(Oid, u64, bool)>;

/// The voted transaction, written after `start` with status `'c'`.
struct Prepared {
    tid: Tid,
    status: u8,
    start: u64,
    end: u64,
    updates: Updates,
    /// Objects whose blob file for `tid` this transaction put in place
    /// (removed again if it aborts).
    blobs: Vec<Oid>,
}

/// A FileStorage on a `Data.fs` file (see the module documentation).
pub struct FileStorage {
    path: PathBuf,
    name: String,
    opts: FileOptions,
    state: Arc<RwLock<Committed>>,
    /// Serialises index file writes with each other and with pack's swap.
    save_lock: Arc<Mutex<()>>,
    /// The background index saver, if one ran (joined before the next,
    /// at close and at drop).
    saver: Mutex<Option<std::thread::JoinHandle<()>>>,
    commits_since_save: std::sync::atomic::AtomicU64,
    index_save_every: u64,
    /// The voted transaction; held by pack for its final swap.
    commit: Mutex<Option<Prepared>>,
    /// Held while fsyncing: finishers queue here and share one fsync.
    synced: Mutex<Synced>,
    /// Set (to the error) when an fsync failed: what was written may not be
    /// on disk, so the storage refuses commits until it is reopened (and
    /// checked).
    broken: std::sync::OnceLock<String>,
    max_oid: Mutex<u64>,
    pack_lock: Mutex<()>,
    /// The time of the last pack (clamped to the then last transaction).
    pack_tid: Mutex<Option<Tid>>,
    closed: AtomicBool,
    /// Merges states for undos that meet later changes (optional).
    resolver: std::sync::OnceLock<Arc<dyn ConflictResolver>>,
    /// The blob directory (`blob-dir`), in ZODB's own layout; `None`: blob
    /// stores are refused.
    blobs: Option<BlobDir>,
    _lock: Option<lock::LockFile>,
    #[cfg(test)]
    fail_writes: AtomicBool,
    #[cfg(test)]
    fail_syncs: AtomicBool,
}

/// The path with `suffix` appended (`Data.fs` → `Data.fs.lock`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

impl FileStorage {
    /// Open (or create) the storage file at `path`.
    pub fn open(path: &Path, opts: FileOptions) -> Result<FileStorage> {
        FileStorage::open_with_blobs(path, opts, None)
    }

    /// Open `path` with the blob directory `blob_dir` (created when
    /// missing; an existing one, Python's included, is used as it is):
    /// blob stores then commit their file there, and `loadBlob` reads it.
    pub fn open_with_blobs(
        path: &Path,
        opts: FileOptions,
        blob_dir: Option<&Path>,
    ) -> Result<FileStorage> {
        let name = path.display().to_string();
        let lock = if opts.read_only {
            None
        } else {
            Some(lock::lock(&with_suffix(path, ".lock"))?)
        };
        // After the lock: opening a blob directory empties its tmp/
        // (uploads of transactions that never committed).
        let blobs = match blob_dir {
            None => None,
            Some(d) => Some(BlobDir::open(d, !opts.read_only).map_err(Error::Io)?),
        };
        let exists = path.exists();
        let file = if opts.read_only {
            File::open(path).map_err(|e| Error::Io(format!("{name}: {e}")))?
        } else {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(opts.create)
                .truncate(false)
                .open(path)
                .map_err(|e| Error::Io(format!("{name}: {e}")))?
        };
        let mut size = file
            .metadata()
            .map_err(|e| Error::Io(format!("{name}: {e}")))?
            .len();
        if size == 0 {
            if opts.read_only {
                if !exists {
                    return Err(Error::Io(format!("{name}: no such file")));
                }
            } else {
                file.write_all_at(MAGIC, 0)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| io_err(&name, 0, &e))?;
                size = 4;
            }
        }
        let src = Src {
            file: &file,
            name: &name,
        };
        let mut magic = [0u8; 4];
        // An empty file opened read-only is an empty storage (as in Python).
        let empty_ro = size == 0 && opts.read_only;
        if !empty_ro
            && (size < 4 || src.read_exact(0, &mut magic).is_err() || !format::known_magic(&magic))
        {
            return Err(corrupt(&name, 0, "not a FileStorage file (bad magic)"));
        }
        let ix_path = with_suffix(path, ".zeoraid-index");
        let (mut index, start, ltid, used_index) = match index::load_index_file(&ix_path, src, size)
        {
            Some((ix, pos, tid)) => (ix, pos, tid, true),
            None => (Index::default(), 4, Tid::ZERO, false),
        };
        let end = index::scan(src, &mut index, start, ltid, size)?;
        if let Some(why) = &end.discard {
            log::warn!("{name}: {why} at byte {}: discarding it", end.pos);
            if !opts.read_only {
                index::discard_tail(&file, &name, end.pos, size)?;
                // Blob files of that transaction (put in place at its vote)
                // go with it: nothing names them.
                if let Some(b) = &blobs {
                    let orphans = b.sweep_after(end.last_tid.0).map_err(Error::from)?;
                    if orphans > 0 {
                        log::warn!(
                            "{name}: removed {orphans} blob file(s) of the discarded transaction"
                        );
                    }
                }
            }
        }
        let max_oid = index.max_oid().unwrap_or(0);
        let fs = FileStorage {
            path: path.to_path_buf(),
            name,
            opts,
            state: Arc::new(RwLock::new(Committed {
                file: Arc::new(file),
                index,
                pos: end.pos,
                last_tid: end.last_tid,
                tail: end.pos,
                tail_tid: end.last_tid,
                overlay: HashMap::new(),
                pending: VecDeque::new(),
                generation: 0,
            })),
            save_lock: Arc::new(Mutex::new(())),
            saver: Mutex::new(None),
            commits_since_save: std::sync::atomic::AtomicU64::new(0),
            index_save_every: INDEX_SAVE_EVERY,
            commit: Mutex::new(None),
            synced: Mutex::new(Synced::default()),
            broken: std::sync::OnceLock::new(),
            max_oid: Mutex::new(max_oid),
            pack_lock: Mutex::new(()),
            pack_tid: Mutex::new(None),
            closed: AtomicBool::new(false),
            resolver: std::sync::OnceLock::new(),
            blobs,
            _lock: lock,
            #[cfg(test)]
            fail_writes: AtomicBool::new(false),
            #[cfg(test)]
            fail_syncs: AtomicBool::new(false),
        };
        if !used_index || end.pos != start {
            fs.save_index();
        }
        Ok(fs)
    }

    /// The storage file's path.
    /// The file and the position of `oid`'s newest data record (taken
    /// together under the state lock, so a pack swap cannot split them);
    /// `PosKey` when the object is unknown.
    fn newest_record(&self, oid: Oid) -> Result<(Arc<File>, u64)> {
        let st = self.read();
        let pos = st.index.pos(oid).ok_or(Error::PosKey(oid))?;
        Ok((st.file.clone(), pos))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> RwLockReadGuard<'_, Committed> {
        read(&self.state)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Committed> {
        write(&self.state)
    }

    fn slot(&self) -> MutexGuard<'_, Option<Prepared>> {
        lock(&self.commit)
    }

    fn max_oid(&self) -> MutexGuard<'_, u64> {
        lock(&self.max_oid)
    }

    fn index_path(&self) -> PathBuf {
        with_suffix(&self.path, ".zeoraid-index")
    }

    /// Save the index file (not when read-only); failures are logged.
    fn save_index(&self) {
        if self.opts.read_only {
            return;
        }
        save_index_now(&self.state, &self.save_lock, &self.index_path(), &self.name);
        self.commits_since_save.store(0, Ordering::Relaxed);
    }

    /// Count `commits` more; every [`INDEX_SAVE_EVERY`] commits, save the
    /// index file on a named background thread (skipped while the previous
    /// one still runs).
    fn maybe_save_index_in_background(&self, commits: u64) {
        let n = self
            .commits_since_save
            .fetch_add(commits, Ordering::Relaxed)
            + commits;
        if self.opts.read_only || n < self.index_save_every {
            return;
        }
        let mut saver = lock(&self.saver);
        if saver.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        if let Some(h) = saver.take() {
            let _ = h.join();
        }
        self.commits_since_save.store(0, Ordering::Relaxed);
        let (state, lock) = (self.state.clone(), self.save_lock.clone());
        let (path, name) = (self.index_path(), self.name.clone());
        match std::thread::Builder::new()
            .name("zeoraid-fs-index".to_string())
            .spawn(move || save_index_now(&state, &lock, &path, &name))
        {
            Ok(h) => *saver = Some(h),
            Err(e) => log::warn!("{}: cannot start the index saver: {e}", self.name),
        }
    }

    fn join_saver(&self) {
        let h = lock(&self.saver).take();
        if let Some(h) = h {
            let _ = h.join();
        }
    }

    /// The file handle and end position, for a consistent snapshot.
    fn snapshot(&self) -> (Arc<File>, u64) {
        let st = self.read();
        (st.file.clone(), st.pos)
    }

    /// Cut the file back to `pos` (a failed or aborted vote).
    fn truncate_to(&self, pos: u64) {
        let file = self.read().file.clone();
        if let Err(e) = file.set_len(pos) {
            log::error!("{}: cannot truncate back to byte {pos}: {e}", self.name);
        }
    }

    fn check_not_broken(&self) -> Result<()> {
        match self.broken.get() {
            None => Ok(()),
            Some(why) => Err(Error::Io(why.clone())),
        }
    }

    fn sync_file(&self, file: &File) -> std::io::Result<()> {
        #[cfg(test)]
        if self.fail_syncs.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("injected fsync failure"));
        }
        file.sync_data()
    }

    fn write_at(&self, file: &File, buf: &[u8], pos: u64) -> std::io::Result<()> {
        #[cfg(test)]
        if self.fail_writes.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("injected write failure (disk full)"));
        }
        file.write_all_at(buf, pos)
    }
}

/// Write the index file from a consistent snapshot of `state`.
fn save_index_now(state: &RwLock<Committed>, saving: &Mutex<()>, path: &Path, name: &str) {
    let _saving = lock(saving);
    let (img_index, pos, tid) = {
        let st = read(state);
        (st.index.clone(), st.pos, st.last_tid)
    };
    if let Err(e) = index::save_index_file(path, &img_index, pos, tid) {
        log::warn!("{name}: cannot save the index file: {e}");
    }
}

impl Drop for FileStorage {
    fn drop(&mut self) {
        self.join_saver();
    }
}

// ---------------------------------------------------------------------------
// Blobs.

impl FileStorage {
    /// Put a voted transaction's blob files in place (see
    /// [`BlobDir::commit_txn`]); the oids that now hold a file.
    fn commit_blobs(&self, tid: Tid, staged: &StagedBlobs) -> Result<Vec<Oid>> {
        let Some(dir) = &self.blobs else {
            return Ok(Vec::new());
        };
        let done = dir.commit_txn(tid.0, &staged.files, &staged.copies)?;
        Ok(done.into_iter().map(Oid).collect())
    }

    /// Remove the blob files of an aborted transaction.
    fn remove_blobs(&self, tid: Tid, oids: &[Oid]) {
        if let Some(dir) = &self.blobs {
            dir.remove_txn(tid.0, &oids.iter().map(|o| o.0).collect::<Vec<_>>());
        }
    }

    /// After a pack: remove the blob files no record of the packed file
    /// names, up to `packtid` (see [`BlobDir::sweep`]).
    pub(super) fn sweep_blobs(&self, packtid: Tid) -> Result<usize> {
        let Some(dir) = &self.blobs else {
            return Ok(0);
        };
        let keep = crate::storage::blob_revisions(self, packtid)?;
        Ok(dir.sweep(packtid.0, &keep)?)
    }
}

// ---------------------------------------------------------------------------
// Pure decisions (those the memory storage makes too are in `rules`).

/// What a staged data record holds in the file.
#[derive(Clone, Debug, PartialEq)]
enum Payload {
    Data(Data),
    /// A backpointer (0: no data).
    Back(u64),
}

/// The payload of a restored record: a backpointer to `prev` (the position
/// and data of the object's record in `prev_txn`, when this file has it) by
/// [`rules::restore_backpointer`], else the data itself.
fn restore_payload(prev: Option<(u64, Option<&Data>)>, data: &Option<Data>) -> Payload {
    match rules::restore_backpointer(prev, data) {
        Some(p) => Payload::Back(p),
        None => data.clone().map_or(Payload::Back(0), Payload::Data),
    }
}

// ---------------------------------------------------------------------------
// Vote.

struct Staged {
    oid: Oid,
    payload: Payload,
    /// The resolved state (for later undos in the same transaction).
    data: Option<Data>,
}

struct Staging<'a> {
    src: Src<'a>,
    /// Looked up briefly per object (loads and publication go on meanwhile;
    /// what a vote sees cannot change: the commit mutex excludes the other
    /// writers, and publication only moves entries from overlay to index).
    state: &'a RwLock<Committed>,
    resolver: Option<&'a dyn ConflictResolver>,
    end: u64,
    tid: Tid,
    records: Vec<Staged>,
    at: HashMap<Oid, usize>,
    conflicts: Vec<Conflict>,
    resolved: Vec<Oid>,
    invalidated: Vec<Oid>,
    max_oid: u64,
    /// Blob files to commit with this transaction.
    blobs: StagedBlobs,
}

impl<'a> Staging<'a> {
    fn put(&mut self, oid: Oid, payload: Payload, data: Option<Data>) {
        let rec = Staged { oid, payload, data };
        match self.at.get(&oid) {
            Some(&i) => self.records[i] = rec,
            None => {
                self.at.insert(oid, self.records.len());
                self.records.push(rec);
                self.invalidated.push(oid);
            }
        }
        self.max_oid = self.max_oid.max(oid.0);
    }

    fn current(&self, oid: Oid) -> Option<(u64, bool)> {
        read(self.state).current(oid)
    }

    fn committed(&self, oid: Oid) -> Result<Option<(u64, DataHeader)>> {
        match self.current(oid).map(|c| c.0) {
            None => Ok(None),
            Some(p) => {
                let h = self.src.data_header(p)?;
                if h.oid != oid {
                    return Err(corrupt(self.src.name, p, "index points at another object"));
                }
                Ok(Some((p, h)))
            }
        }
    }

    /// The object's state as this transaction sees it so far.
    fn view(&self, oid: Oid) -> Result<Option<UndoView<u64>>> {
        if let Some(&i) = self.at.get(&oid) {
            let r = &self.records[i];
            return Ok(Some(UndoView {
                record: None,
                data_ptr: match r.payload {
                    Payload::Back(p) if p != 0 => Some(p),
                    _ => None,
                },
                data: r.data.clone(),
            }));
        }
        let Some((p, h)) = self.committed(oid)? else {
            return Ok(None);
        };
        let data_ptr = if h.plen != 0 {
            Some(p)
        } else if h.back != 0 {
            Some(h.back)
        } else {
            None
        };
        Ok(Some(UndoView {
            record: Some(p),
            data_ptr,
            data: self.src.record_data(p, &h)?,
        }))
    }
}

impl Stage for Staging<'_> {
    fn blobs(&mut self) -> &mut StagedBlobs {
        &mut self.blobs
    }

    fn store(&mut self, oid: Oid, serial: Tid, data: &Data) -> Result<()> {
        self.blobs.stored(oid.0);
        if data.is_empty() {
            return Err(Error::Value(format!(
                "{oid}: empty object data cannot be stored in a FileStorage"
            )));
        }
        let committed = self.committed(oid)?.map(|(_, h)| h.tid);
        let conflict = rules::store_conflict(oid, committed, serial, data);
        if rules::note_store(&mut self.conflicts, oid, conflict) {
            self.put(oid, Payload::Data(data.clone()), Some(data.clone()));
        }
        Ok(())
    }

    fn delete(&mut self, oid: Oid, serial: Tid) -> Result<()> {
        let committed = self.committed(oid)?.map(|(_, h)| h.tid);
        rules::check_delete(oid, committed, serial)?;
        self.put(oid, Payload::Back(0), None);
        Ok(())
    }

    fn check_current(&mut self, oid: Oid, serial: Tid) -> Result<()> {
        let has_data = matches!(self.current(oid), Some((_, true)));
        let committed = self.committed(oid)?.filter(|_| has_data);
        rules::check_current(oid, committed.map(|(_, h)| h.tid), serial)
    }

    fn restore(
        &mut self,
        oid: Oid,
        serial: Tid,
        data: &Option<Data>,
        prev_txn: Option<Tid>,
    ) -> Result<()> {
        rules::check_restore_serial(oid, serial, self.tid)?;
        if data.as_ref().is_some_and(|d| d.is_empty()) {
            return Err(Error::Value(format!(
                "{oid}: empty object data cannot be stored in a FileStorage"
            )));
        }
        let prev = match prev_txn {
            Some(t) => match find_txn(self.src, self.end, t, false)? {
                Some((tpos, th)) => match record_in_txn(self.src, tpos, &th, oid)? {
                    Some((p, h)) => Some((p, self.src.record_data(p, &h)?)),
                    None => None,
                },
                None => None,
            },
            None => None,
        };
        let payload = restore_payload(prev.as_ref().map(|(p, d)| (*p, d.as_ref())), data);
        let resolved = match &payload {
            Payload::Data(d) => Some(d.clone()),
            Payload::Back(_) => prev.and_then(|(_, d)| d),
        };
        self.put(oid, payload, resolved);
        Ok(())
    }

    /// Undo by [`rules::undo_check`]: the undo record points back at the
    /// undone record's predecessor (0 for a creation: no data).
    fn undo(&mut self, target: Tid) -> Result<()> {
        let found = find_txn(self.src, self.end, target, true)?;
        let (tpos, th) = rules::undo_target(found, |(_, th)| th.status)?;
        let mut failures: Vec<(Oid, &'static str)> = Vec::new();
        let tend = tpos.saturating_add(th.tlen);
        let mut pos = tpos + th.header_len();
        while pos < tend {
            let h = self.src.data_header(pos)?;
            failures.retain(|(o, _)| *o != h.oid);
            let outcome = match self.view(h.oid)? {
                None => Err(UNDO_INVALID_RECORD),
                Some(current) => {
                    let undone = self.src.record_data(pos, &h)?;
                    match rules::undo_check(pos, undone.as_ref(), h.prev == 0, &current) {
                        Ok(()) => Ok(None),
                        Err(m) if rules::undo_may_resolve(m) => {
                            // Merge with the later changes, as FileStorage's
                            // tryToResolveConflict; the result is new data.
                            let before = self.src.load_back(h.prev)?.map(|(d, _)| d);
                            let data = current.data.as_ref();
                            let (u, b) = (undone.as_ref(), before.as_ref());
                            resolve_undo(self.resolver, h.oid, u, data, b)
                                .map(Some)
                                .ok_or(m)
                        }
                        Err(m) => Err(m),
                    }
                }
            };
            let staged = match outcome {
                Ok(None) => {
                    let back = self.src.load_back(h.prev)?;
                    // Undoing to a blob revision: that revision's file
                    // becomes the undo's too (FileStorage.undo).
                    self.blobs.undone(
                        h.oid.0,
                        back.as_ref().map(|(d, _)| &d[..]),
                        back.as_ref().map(|(_, from)| from.0),
                    );
                    Some((Payload::Back(h.prev), back.map(|(d, _)| d)))
                }
                Ok(Some(merged)) => Some((Payload::Data(merged.clone()), Some(merged))),
                Err(m) => {
                    failures.push((h.oid, m));
                    None
                }
            };
            if let Some((payload, data)) = staged {
                self.put(h.oid, payload, data);
                if !self.resolved.contains(&h.oid) {
                    self.resolved.push(h.oid);
                }
            }
            pos = pos.saturating_add(h.record_len());
        }
        rules::undo_outcome(failures.first().copied())
    }
}

/// Find the transaction `tid` walking back from `end`; with `stop_at_pack`
/// the walk ends at the first packed transaction (after comparing it), as
/// FileStorage's `_txn_find`.
fn find_txn(
    src: Src<'_>,
    end: u64,
    tid: Tid,
    stop_at_pack: bool,
) -> Result<Option<(u64, TxnHeader)>> {
    let mut pos = end;
    while pos > 4 {
        let (tpos, h) = src.txn_before(pos)?;
        if h.tid == tid {
            return Ok(Some((tpos, h)));
        }
        if h.tid < tid || (stop_at_pack && h.status == STATUS_PACKED) {
            break;
        }
        pos = tpos;
    }
    Ok(None)
}

/// The last record of `oid` in the transaction at `tpos` (`_data_find`).
fn record_in_txn(
    src: Src<'_>,
    tpos: u64,
    th: &TxnHeader,
    oid: Oid,
) -> Result<Option<(u64, DataHeader)>> {
    let tend = tpos.saturating_add(th.tlen);
    let mut pos = tpos + th.header_len();
    let mut found = None;
    while pos < tend {
        let h = src.data_header(pos)?;
        if h.oid == oid {
            found = Some((pos, h));
        }
        pos = pos.saturating_add(h.record_len());
    }
    Ok(found)
}

/// Encode a whole transaction: header (status `'c'`), records, length.
/// Returns the bytes and the (oid, position, has data) of each record.
fn encode_txn(
    tid: Tid,
    start: u64,
    meta: (&[u8], &[u8], &[u8]),
    records: &[Staged],
    prev_of: impl Fn(Oid) -> Option<u64>,
) -> Result<(Vec<u8>, Updates)> {
    let (user, desc, ext) = meta;
    let len16 = |b: &[u8], what: &str| {
        u16::try_from(b.len()).map_err(|_| Error::Transaction(format!("{what} too long")))
    };
    let mut h = TxnHeader {
        tid,
        tlen: 0,
        status: STATUS_CHECKPOINT,
        ulen: len16(user, "user name")?,
        dlen: len16(desc, "description")?,
        elen: len16(ext, "extension data")?,
    };
    let mut out = Vec::with_capacity(
        h.header_len() as usize
            + records
                .iter()
                .map(|r| match &r.payload {
                    Payload::Data(d) => 42 + d.len(),
                    Payload::Back(_) => 50,
                })
                .sum::<usize>()
            + 8,
    );
    out.extend_from_slice(&h.encode());
    out.extend_from_slice(user);
    out.extend_from_slice(desc);
    out.extend_from_slice(ext);
    let mut updates = Vec::with_capacity(records.len());
    for r in records {
        let here = start + out.len() as u64;
        let (plen, back) = match &r.payload {
            Payload::Data(d) => (d.len() as u64, 0),
            Payload::Back(b) => (0, *b),
        };
        let dh = DataHeader {
            oid: r.oid,
            tid,
            prev: prev_of(r.oid).unwrap_or(0),
            tloc: start,
            vlen: 0,
            plen,
            back,
        };
        dh.encode_into(&mut out);
        if let Payload::Data(d) = &r.payload {
            out.extend_from_slice(d);
        }
        updates.push((r.oid, here, r.data.is_some()));
    }
    h.tlen = out.len() as u64;
    out[8..16].copy_from_slice(&h.tlen.to_be_bytes());
    out.extend_from_slice(&h.tlen.to_be_bytes());
    Ok((out, updates))
}

// ---------------------------------------------------------------------------
// Iteration.

struct FileIter {
    file: Arc<File>,
    name: String,
    pos: u64,
    end: u64,
    stop: Option<Tid>,
    done: bool,
}

impl FileIter {
    fn read_txn(&self, pos: u64, th: &TxnHeader) -> Result<TxnRecord> {
        let src = Src {
            file: &self.file,
            name: &self.name,
        };
        let meta = src.txn_meta(pos, th)?;
        let tend = pos.saturating_add(th.tlen);
        let mut p = pos + th.header_len();
        let mut records = Vec::new();
        while p < tend {
            let h = src.data_header(p)?;
            if p.saturating_add(h.record_len()) > tend || h.tloc != pos {
                return Err(corrupt(
                    &self.name,
                    p,
                    "data record exceeds transaction record",
                ));
            }
            let (data, data_txn) = if h.plen != 0 {
                (
                    Some(Arc::from(src.read_vec(p + format::DATA_HDR_LEN, h.plen)?)),
                    None,
                )
            } else if h.back == 0 {
                (None, None)
            } else {
                let data = src.load_back(h.back)?.map(|(d, _)| d);
                (data, Some(src.data_header(h.back)?.tid))
            };
            records.push(DataRecord {
                oid: h.oid,
                tid: h.tid,
                data,
                data_txn,
            });
            p = p.saturating_add(h.record_len());
        }
        Ok(TxnRecord {
            tid: th.tid,
            status: th.status,
            meta,
            records,
        })
    }
}

impl Iterator for FileIter {
    type Item = Result<TxnRecord>;

    fn next(&mut self) -> Option<Result<TxnRecord>> {
        if self.done || self.pos >= self.end {
            return None;
        }
        let src = Src {
            file: &self.file,
            name: &self.name,
        };
        let pos = self.pos;
        let th = match src.txn_header(pos) {
            Ok(h) => h,
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        };
        if self.stop.is_some_and(|s| th.tid > s) {
            self.done = true;
            return None;
        }
        self.pos = pos.saturating_add(th.tlen).saturating_add(8);
        let r = self.read_txn(pos, &th);
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }
}

// ---------------------------------------------------------------------------

impl Storage for FileStorage {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn is_read_only(&self) -> bool {
        self.opts.read_only
    }

    fn supports_undo(&self) -> bool {
        true
    }

    fn last_transaction(&self) -> Result<Tid> {
        Ok(self.read().last_tid)
    }

    fn load_before(&self, oid: Oid, before: Tid) -> Result<Option<Loaded>> {
        let (file, mut pos) = self.newest_record(oid)?;
        let src = Src {
            file: &file,
            name: &self.name,
        };
        let mut end = None;
        let mut first = true;
        loop {
            // Usually the newest record is the one wanted: read it and its
            // data at once. Older records in the chain are reached by headers.
            let (h, prefetched) = if first {
                src.data_header_prefetch(pos)?
            } else {
                (src.data_header(pos)?, None)
            };
            first = false;
            if h.oid != oid {
                return Err(corrupt(
                    &self.name,
                    pos,
                    "record of another object in a chain",
                ));
            }
            if h.tid < before {
                let data = match prefetched {
                    Some(d) => Some(d),
                    None => src.record_data(pos, &h)?,
                };
                return match data {
                    Some(data) => Ok(Some(Loaded {
                        data,
                        start: h.tid,
                        end,
                    })),
                    None => Err(Error::PosKey(oid)),
                };
            }
            end = Some(h.tid);
            if h.prev == 0 {
                return Ok(None);
            }
            if h.prev >= pos {
                return Err(corrupt(&self.name, pos, "invalid previous pointer"));
            }
            pos = h.prev;
        }
    }

    /// The newest record only, read with `RWF_NOWAIT`: the common load of a
    /// small object in the page cache; everything else goes to a worker.
    fn load_before_nowait(&self, oid: Oid, before: Tid) -> Option<Result<Option<Loaded>>> {
        let (file, pos) = {
            // Not even a brief wait for a writer of the state.
            let st = crate::locks::try_read(&self.state)?;
            match st.index.pos(oid) {
                Some(pos) => (st.file.clone(), pos),
                None => return Some(Err(Error::PosKey(oid))),
            }
        };
        let src = Src {
            file: &file,
            name: &self.name,
        };
        let (h, data) = src.data_header_prefetch_nowait(pos)?;
        // Older revisions are reached through the chain: a worker's job.
        (h.oid == oid && h.tid < before).then_some(Ok(Some(Loaded {
            data,
            start: h.tid,
            end: None,
        })))
    }

    /// Sees logged transactions not yet published too: a client resolving
    /// a conflict with one of them loads its state by serial.
    fn load_serial(&self, oid: Oid, serial: Tid) -> Result<Data> {
        let (file, mut pos) = {
            let st = self.read();
            let pos = st.current(oid).ok_or(Error::PosKey(oid))?.0;
            (st.file.clone(), pos)
        };
        let src = Src {
            file: &file,
            name: &self.name,
        };
        loop {
            let h = src.data_header(pos)?;
            if h.oid != oid {
                return Err(corrupt(
                    &self.name,
                    pos,
                    "record of another object in a chain",
                ));
            }
            if h.tid == serial {
                return src.record_data(pos, &h)?.ok_or(Error::PosKey(oid));
            }
            if h.tid < serial || h.prev == 0 {
                return Err(Error::PosKey(oid));
            }
            if h.prev >= pos {
                return Err(corrupt(&self.name, pos, "invalid previous pointer"));
            }
            pos = h.prev;
        }
    }

    /// Newest first; `size` is the data length (0 without data), as the
    /// memory storage reports it (FileStorage reports 0 for backpointers).
    fn history(&self, oid: Oid, size: usize) -> Result<Vec<HistoryEntry>> {
        let (file, mut pos) = self.newest_record(oid)?;
        let src = Src {
            file: &file,
            name: &self.name,
        };
        let mut out = Vec::new();
        while out.len() < size {
            let h = src.data_header(pos)?;
            let th = src.txn_header(h.tloc)?;
            if th.tid != h.tid {
                return Err(corrupt(&self.name, pos, "record and transaction disagree"));
            }
            let size = if h.plen != 0 {
                h.plen
            } else {
                src.load_back(h.back)?.map_or(0, |(d, _)| d.len() as u64)
            };
            out.push(HistoryEntry {
                tid: h.tid,
                meta: src.txn_meta(h.tloc, &th)?,
                size,
            });
            if h.prev == 0 {
                break;
            }
            if h.prev >= pos {
                return Err(corrupt(&self.name, pos, "invalid previous pointer"));
            }
            pos = h.prev;
        }
        Ok(out)
    }

    fn new_oids(&self, n: usize) -> Result<Vec<Oid>> {
        if self.opts.read_only {
            return Err(Error::ReadOnly);
        }
        rules::allocate_oids(&mut self.max_oid(), n)
    }

    fn tpc_vote(&self, txn: &Txn) -> Result<Vote> {
        rules::check_vote(self.opts.read_only, txn.status)?;
        self.check_not_broken()?;
        let mut slot = self.slot();
        if slot.is_some() {
            return Err(Error::Transaction(
                "another transaction is already voted".to_string(),
            ));
        }
        let ext = pickle::ext_to_pickle(&txn.meta.extension).map_err(Error::Value)?;
        // Only finish_log and the pack swap move the tail or the file, and
        // both hold `commit`, which we hold.
        let (file, start, tail_tid) = {
            let st = self.read();
            (st.file.clone(), st.tail, st.tail_tid)
        };
        let tid = rules::choose_tid(txn.tid, tail_tid, timestamp::now())?;
        let mut stage = Staging {
            src: Src {
                file: &file,
                name: &self.name,
            },
            state: &self.state,
            resolver: self.resolver.get().map(|r| r.as_ref()),
            end: start,
            tid,
            records: Vec::new(),
            at: HashMap::new(),
            conflicts: Vec::new(),
            resolved: Vec::new(),
            invalidated: Vec::new(),
            max_oid: 0,
            blobs: StagedBlobs::new(self.blobs.is_some()),
        };
        for op in &txn.ops {
            stage::apply(&mut stage, op)?;
        }
        if !stage.conflicts.is_empty() {
            return Ok(Vote::Conflicts(stage.conflicts));
        }
        let (bytes, updates) = {
            let st = self.read();
            encode_txn(
                tid,
                start,
                (&txn.meta.user, &txn.meta.description, &ext),
                &stage.records,
                |oid| st.current(oid).map(|c| c.0),
            )?
        };
        if let Err(e) = self.write_at(&file, &bytes, start) {
            // Maybe the disk is full: leave no partial transaction behind.
            self.truncate_to(start);
            return Err(io_err(&self.name, start, &e));
        }
        let Staging {
            resolved,
            invalidated,
            max_oid,
            blobs: staged_blobs,
            ..
        } = stage;
        // The blob files, durable before the vote answers: a crash after
        // the commit is acknowledged never loses one.
        let blobs = match self.commit_blobs(tid, &staged_blobs) {
            Ok(b) => b,
            Err(e) => {
                self.truncate_to(start);
                return Err(e);
            }
        };
        {
            let mut max = self.max_oid();
            *max = (*max).max(max_oid);
        }
        *slot = Some(Prepared {
            tid,
            status: txn.status,
            start,
            end: start + bytes.len() as u64,
            updates,
            blobs,
        });
        Ok(Vote::Prepared {
            tid,
            resolved,
            invalidated,
        })
    }

    fn tpc_finish(&self) -> Result<Tid> {
        let tid = self.finish_log()?;
        self.make_durable(tid)?;
        self.publish(tid);
        Ok(tid)
    }

    fn group_commit(&self) -> bool {
        true
    }

    /// Flip the status to `' '` (no fsync yet) and queue the transaction
    /// for publication; the next vote writes after it.
    fn finish_log(&self) -> Result<Tid> {
        let mut slot = self.slot();
        let p = slot.take().ok_or_else(|| {
            Error::Transaction("tpc_finish without a voted transaction".to_string())
        })?;
        if let Err(e) = self.check_not_broken() {
            self.truncate_to(p.start);
            return Err(e);
        }
        let file = self.read().file.clone();
        if let Err(e) = self.write_at(&file, &[p.status], p.start + STATUS_OFFSET) {
            self.truncate_to(p.start);
            return Err(io_err(&self.name, p.start, &e));
        }
        let tid = p.tid;
        let mut st = self.write();
        for (oid, pos, has) in &p.updates {
            st.overlay.insert(*oid, (*pos, *has));
        }
        st.tail = p.end;
        st.tail_tid = p.tid;
        st.pending.push_back(p);
        Ok(tid)
    }

    /// One fsync covers every transaction logged before it started:
    /// finishers queue on `synced` and most find their work done.
    fn make_durable(&self, tid: Tid) -> Result<()> {
        let needed = {
            let st = self.read();
            match st.pending.iter().find(|p| p.tid == tid) {
                Some(p) => (st.generation, p.end),
                None => return Ok(()), // already published
            }
        };
        if !self.opts.sync {
            return Ok(());
        }
        let mut synced = lock(&self.synced);
        self.check_not_broken()?;
        if synced.generation == needed.0 && synced.pos >= needed.1 {
            return Ok(());
        }
        let (file, generation, target) = {
            let st = self.read();
            (st.file.clone(), st.generation, st.tail)
        };
        if let Err(e) = self.sync_file(&file) {
            let msg = format!(
                "{}: fsync failed: {e}; transactions since byte {} may not be on disk. \
                 Commits are refused until zeoraid is restarted (the file is checked \
                 when it is opened); check the disk and the kernel log",
                self.name, synced.pos
            );
            log::error!("{msg}");
            // Only the first failure is kept; any later one is logged above.
            let _ = self.broken.set(msg.clone());
            return Err(Error::Io(msg));
        }
        *synced = Synced {
            generation,
            pos: target,
        };
        Ok(())
    }

    /// Install every pending transaction up to `tid` in the index.
    fn publish(&self, tid: Tid) {
        let mut published = 0;
        {
            let mut st = self.write();
            while st.pending.front().is_some_and(|p| p.tid <= tid) {
                let Some(p) = st.pending.pop_front() else {
                    break;
                };
                for (oid, pos, has) in &p.updates {
                    st.index.set(*oid, *pos, *has);
                    if st.overlay.get(oid).is_some_and(|c| c.0 == *pos) {
                        st.overlay.remove(oid);
                    }
                }
                st.pos = p.end;
                st.last_tid = p.tid;
                published += 1;
            }
        }
        if published > 0 {
            self.maybe_save_index_in_background(published);
        }
    }

    fn tpc_abort(&self) {
        let mut slot = self.slot();
        if let Some(p) = slot.take() {
            self.truncate_to(p.start);
            self.remove_blobs(p.tid, &p.blobs);
        }
    }

    fn undo_log(&self, first: usize, last: usize) -> Result<Vec<UndoEntry>> {
        let (file, end) = self.snapshot();
        let src = Src {
            file: &file,
            name: &self.name,
        };
        let mut found: Vec<(u64, TxnHeader)> = Vec::new();
        let mut pos = end;
        let mut normal = 0usize;
        while pos > 4 && normal < last {
            let (tpos, h) = src.txn_before(pos)?;
            found.push((tpos, h));
            if h.status == STATUS_PACKED {
                break;
            }
            if h.status == STATUS_NORMAL {
                normal += 1;
            }
            pos = tpos;
        }
        rules::undo_window(&found, |(_, h)| h.status, first, last)
            .into_iter()
            .map(|(tpos, h)| {
                Ok(UndoEntry {
                    tid: h.tid,
                    meta: src.txn_meta(*tpos, h)?,
                })
            })
            .collect()
    }

    /// A snapshot taken now: later commits and packs do not show.
    fn iterator(&self, start: Option<Tid>, stop: Option<Tid>) -> Result<TxnIter> {
        let (file, end) = self.snapshot();
        let mut pos = 4;
        if let Some(s) = start {
            // Walk back from the end: costs O(transactions after start).
            let src = Src {
                file: &file,
                name: &self.name,
            };
            pos = end;
            while pos > 4 {
                let (tpos, h) = src.txn_before(pos)?;
                if h.tid < s {
                    break;
                }
                pos = tpos;
            }
        }
        Ok(Box::new(FileIter {
            file,
            name: self.name.clone(),
            pos,
            end,
            stop,
            done: matches!((start, stop), (Some(a), Some(b)) if a > b),
        }))
    }

    fn record_iternext(&self, next: Option<Oid>) -> Result<Option<CurrentRecord>> {
        let (file, first, following) = {
            let st = self.read();
            let (first, following) = st.index.live_from(next.unwrap_or(Oid::ZERO));
            (st.file.clone(), first, following)
        };
        let Some((oid, pos)) = first else {
            return Ok(None);
        };
        let src = Src {
            file: &file,
            name: &self.name,
        };
        let h = src.data_header(pos)?;
        let data = src.record_data(pos, &h)?.ok_or(Error::PosKey(oid))?;
        Ok(Some((oid, h.tid, data, following)))
    }

    fn pack(&self, t: f64, gc: bool) -> Result<()> {
        if self.opts.read_only {
            return Err(Error::ReadOnly);
        }
        self.pack_to(rules::pack_time(t)?, gc && self.opts.pack_gc)
    }

    /// `objects`: objects whose current record has data; `bytes`: the size
    /// of the committed file (FileStorage's `getSize`).
    fn size_info(&self) -> SizeInfo {
        let st = self.read();
        SizeInfo {
            objects: st.index.live(),
            bytes: st.pos,
        }
    }

    fn blob_staging_dir(&self) -> Option<PathBuf> {
        self.blobs.as_ref().map(|b| b.tmp_dir().to_path_buf())
    }

    fn shared_blob_path(&self, oid: Oid, file_name: &str) -> Option<PathBuf> {
        self.blobs
            .as_ref()
            .map(|b| b.oid_path(oid.0).join(file_name))
    }

    fn load_blob(&self, oid: Oid, serial: Tid) -> Result<PathBuf> {
        let Some(dir) = &self.blobs else {
            return Err(Error::Unsupported(crate::storage::NO_BLOBS.into()));
        };
        let path = dir.path(oid.0, serial.0);
        if path.is_file() {
            Ok(path)
        } else {
            Err(Error::PosKey(oid))
        }
    }

    fn set_conflict_resolver(&self, r: Arc<dyn ConflictResolver>) {
        if self.resolver.set(r).is_err() {
            log::warn!("{}: a conflict resolver was already set", self.name);
        }
    }

    /// Save the index file (once); the lock is released when dropped.
    fn close(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            self.tpc_abort();
            self.join_saver();
            self.save_index();
        }
    }
}

#[cfg(test)]
mod tests;
