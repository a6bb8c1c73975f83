//! `MemoryStorage`: an MVCC in-memory ZODB storage with undo, iteration,
//! history and pack.
//!
//! It serves `kind = "memory"` and is the reference [`Storage`] the other
//! layers are tested against, so it follows ZODB's `FileStorage` semantics as
//! a stock ZEO client observes them (the conformance suites in
//! `ZODB/tests/{Basic,Revision,History,Iterator,TransactionalUndo,Packable}Storage.py`):
//!
//! - every object keeps its revisions sorted by tid; a revision without data
//!   is a deleted object or an undone creation ("George Bailey" record);
//! - a revision written by undo or restore may *point back* at an earlier
//!   revision of the same object (`data_txn`, FileStorage's backpointer); its
//!   data is held here too, so loads never chase pointers;
//! - undo decisions copy FileStorage's `_transactionalUndoRecord` (including
//!   its error messages); server-side conflict resolution during undo is not
//!   available (it needs the application's Python classes), so where
//!   FileStorage would try it, undo fails with "Some data were modified by a
//!   later transaction";
//! - pack keeps, per object, the newest revision at the pack time (if it has
//!   data) and everything later, drops transactions left empty and marks the
//!   surviving old ones packed (`'p'`), which also ends the undo log;
//! - pack with `gc` also drops, up to the pack time, every object not
//!   reachable from the root at the pack time, by FileStorage's rules
//!   ([`super::gc`]: revisions later undo records point back at are kept,
//!   objects written after the pack time keep those later revisions).
//!
//! Concurrency: committed state sits behind an [`RwLock`] taken for short
//! critical sections; the voted ("prepared") transaction sits in its own
//! [`Mutex`], so loads never wait for a commit in progress and only
//! `tpc_finish` takes the write lock, to install a whole transaction at once.
//! Pack plans under the read lock in batches and applies under one write lock.
//! Decisions are small pure functions, tested table-driven: those the file
//! storage applies too (tid choice, serial checks, undo, undo-log windows)
//! in [`super::rules`], the in-memory ones (pack cuts, revision lookups)
//! below.

use crate::locks::{lock, read, write};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::blobdir::{BlobDir, StagedBlobs};
use super::gc::{self, GcError, PackGc};
use super::resolve::{resolve_undo, ConflictResolver};
use super::rules::{self, UndoView, STATUS_PACKED, UNDO_INVALID_RECORD};
use super::stage::{self, Stage};
use super::{
    pickle_refs, timestamp, Conflict, CurrentRecord, Data, DataRecord, Error, HistoryEntry, Loaded,
    Oid, Result, SizeInfo, Storage, Tid, Txn, TxnIter, TxnMeta, TxnRecord, UndoEntry, Vote,
};

pub use super::rules::MAX_NEW_OIDS;

/// Objects examined per read-lock acquisition while planning a pack.
const PACK_BATCH: usize = 4096;

/// One revision of one object.
#[derive(Clone, Debug, PartialEq)]
struct Revision {
    tid: Tid,
    /// The object's state in this revision (resolved through `data_txn`);
    /// `None`: deleted, or creation undone.
    data: Option<Data>,
    /// The earlier revision of the same object this record points back to.
    data_txn: Option<Tid>,
}

impl Revision {
    /// FileStorage's data pointer: the revision whose record holds the bytes
    /// (`None` for a record with neither data nor backpointer).
    fn data_ptr(&self) -> Option<Tid> {
        match self.data_txn {
            Some(t) => Some(t),
            None => self.data.as_ref().map(|_| self.tid),
        }
    }

    fn size(&self) -> u64 {
        self.data.as_ref().map_or(0, |d| d.len() as u64)
    }
}

/// One committed transaction, shared with iterators by `Arc`.
#[derive(Clone, Debug)]
struct TxnEntry {
    tid: Tid,
    status: u8,
    meta: TxnMeta,
    /// One record per object written, in the order first written.
    records: Vec<DataRecord>,
}

impl TxnEntry {
    fn to_record(&self) -> TxnRecord {
        TxnRecord {
            tid: self.tid,
            status: self.status,
            meta: self.meta.clone(),
            records: self.records.clone(),
        }
    }
}

/// Everything committed. Only `tpc_finish` and `pack` write it.
#[derive(Default)]
struct Committed {
    objects: BTreeMap<Oid, Vec<Revision>>,
    txns: BTreeMap<Tid, Arc<TxnEntry>>,
    last_tid: Tid,
    /// The newest transaction with status `'p'`: undo cannot reach past it.
    last_packed: Option<Tid>,
    /// The time of the last pack (as clamped to the then last transaction).
    pack_tid: Option<Tid>,
    /// Objects whose current revision has data.
    live: u64,
    /// Sum of the data lengths of all revisions kept.
    bytes: u64,
}

impl Committed {
    fn current(&self, oid: Oid) -> Option<&Revision> {
        self.objects.get(&oid).and_then(|revs| revs.last())
    }

    fn revision(&self, oid: Oid, tid: Tid) -> Option<&Revision> {
        let revs = self.objects.get(&oid)?;
        find_revision(revs, tid).map(|i| &revs[i])
    }

    /// Install a prepared transaction (its tid is newer than everything).
    fn install(&mut self, mut entry: TxnEntry) {
        for rec in &mut entry.records {
            let revs = self.objects.entry(rec.oid).or_default();
            // A pack since the vote may have dropped the revision an undo or
            // restore pointed back at; the data itself is held in the record.
            if let Some(d) = rec.data_txn {
                if find_revision(revs, d).is_none() {
                    rec.data_txn = None;
                }
            }
            let was_live = is_live(revs);
            let rev = Revision {
                tid: entry.tid,
                data: rec.data.clone(),
                data_txn: rec.data_txn,
            };
            self.bytes = self.bytes.saturating_add(rev.size());
            revs.push(rev);
            self.live = adjust_live(self.live, was_live, is_live(revs));
        }
        if entry.status == STATUS_PACKED {
            self.last_packed = self.last_packed.max(Some(entry.tid));
        }
        self.last_tid = entry.tid;
        self.txns.insert(entry.tid, Arc::new(entry));
    }

    /// Apply a pack planned for `todo` (objects with revisions to drop or
    /// backpointers to resolve) as of `packtid`. With a GC plan, the
    /// revisions up to `packtid` that survive are exactly those it keeps.
    fn apply_pack(&mut self, packtid: Tid, todo: &[Oid], gc: Option<&PackGc<Tid>>) {
        let mut touched: BTreeSet<Tid> = BTreeSet::new();
        for oid in todo {
            let Some(revs) = self.objects.get_mut(oid) else {
                continue;
            };
            let was_live = is_live(revs);
            // Revisions up to packtid cannot have changed since planning
            // (later commits only append), so the cut is recomputed here.
            let keep = pack_keep(revs, packtid, |tid| gc.map(|g| g.keeps(*oid, tid)));
            let mut i = 0;
            revs.retain(|r| {
                let kept = keep.get(i).copied().unwrap_or(true);
                i += 1;
                if !kept {
                    self.bytes = self.bytes.saturating_sub(r.size());
                    touched.insert(r.tid);
                }
                kept
            });
            for k in 0..revs.len() {
                // Packed records never point back (FileStorage copies the
                // data); later ones lose pointers into what was dropped.
                let resolve = match revs[k].data_txn {
                    None => false,
                    Some(_) if revs[k].tid <= packtid => true,
                    Some(d) => find_revision(revs, d).is_none(),
                };
                if resolve {
                    revs[k].data_txn = None;
                    touched.insert(revs[k].tid);
                }
            }
            let now_live = is_live(revs);
            if revs.is_empty() {
                self.objects.remove(oid);
            }
            self.live = adjust_live(self.live, was_live, now_live);
        }

        // Transactions to rewrite: those whose records changed, and every
        // not-yet-packed one up to the pack time (it becomes 'p').
        let lower = match self.pack_tid {
            Some(p) => Bound::Excluded(p),
            None => Bound::Unbounded,
        };
        let flips = self
            .txns
            .range((lower, Bound::Included(packtid)))
            .filter(|(_, e)| e.status != STATUS_PACKED)
            .map(|(t, _)| *t);
        let candidates: BTreeSet<Tid> = touched.iter().copied().chain(flips).collect();
        for tid in candidates {
            let Some(entry) = self.txns.get(&tid).cloned() else {
                continue;
            };
            let records: Vec<DataRecord> = entry
                .records
                .iter()
                .filter_map(|r| {
                    self.revision(r.oid, tid).map(|rev| DataRecord {
                        oid: r.oid,
                        tid,
                        data: rev.data.clone(),
                        data_txn: rev.data_txn,
                    })
                })
                .collect();
            if tid <= packtid && records.is_empty() {
                self.txns.remove(&tid);
                continue;
            }
            let status = if tid <= packtid {
                STATUS_PACKED
            } else {
                entry.status
            };
            self.txns.insert(
                tid,
                Arc::new(TxnEntry {
                    tid,
                    status,
                    meta: entry.meta.clone(),
                    records,
                }),
            );
        }
        let newest_packed = self.txns.range(..=packtid).next_back().map(|(t, _)| *t);
        self.last_packed = self.last_packed.max(newest_packed);
        self.pack_tid = Some(packtid);
    }
}

/// The voted transaction, waiting for `tpc_finish` or `tpc_abort`.
struct Prepared {
    entry: TxnEntry,
    /// Objects whose blob file for this transaction is in place (removed
    /// again if it aborts).
    blobs: Vec<u64>,
}

/// An MVCC in-memory ZODB storage (see the module documentation).
pub struct MemoryStorage {
    name: String,
    read_only: bool,
    state: RwLock<Committed>,
    prepared: Mutex<Option<Prepared>>,
    /// The largest oid handed out or stored so far (0: only the root).
    max_oid: Mutex<u64>,
    /// Serialises packs.
    pack_lock: Mutex<()>,
    /// Merges states for undos that meet later changes (optional).
    resolver: std::sync::OnceLock<Arc<dyn ConflictResolver>>,
    /// Blob files, when the storage keeps blobs.
    blobs: Option<Blobs>,
}

/// A memory storage's blob directory: one it was given, or a temporary
/// one of its own, removed with the storage.
struct Blobs {
    dir: BlobDir,
    temporary: bool,
}

impl Drop for Blobs {
    fn drop(&mut self) {
        if self.temporary {
            if let Err(e) = std::fs::remove_dir_all(self.dir.base()) {
                log::warn!(
                    "cannot remove the memory storage's blob directory {}: {e}",
                    self.dir.base().display()
                );
            }
        }
    }
}

impl MemoryStorage {
    /// An empty storage. A read-only one refuses every write (and stays empty).
    pub fn new(name: &str, read_only: bool) -> MemoryStorage {
        MemoryStorage {
            name: name.to_string(),
            read_only,
            state: RwLock::new(Committed::default()),
            prepared: Mutex::new(None),
            max_oid: Mutex::new(0),
            pack_lock: Mutex::new(()),
            resolver: std::sync::OnceLock::new(),
            blobs: None,
        }
    }

    /// An empty storage that keeps blobs: in `dir` (ZODB's layout), or
    /// without one in a temporary directory of its own, removed with the
    /// storage (the blobs are as volatile as the rest).
    pub fn with_blobs(
        name: &str,
        read_only: bool,
        dir: Option<&std::path::Path>,
    ) -> std::result::Result<MemoryStorage, String> {
        let (path, temporary) = match dir {
            Some(d) => (d.to_path_buf(), false),
            None => {
                let d = std::env::temp_dir().join(format!(
                    "zeoraid-memory-blobs-{}-{}",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                (d, true)
            }
        };
        let dir = BlobDir::open(&path, true)?;
        Ok(MemoryStorage {
            blobs: Some(Blobs { dir, temporary }),
            ..MemoryStorage::new(name, read_only)
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, Committed> {
        read(&self.state)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Committed> {
        write(&self.state)
    }

    fn prepared(&self) -> MutexGuard<'_, Option<Prepared>> {
        lock(&self.prepared)
    }

    fn max_oid(&self) -> MutexGuard<'_, u64> {
        lock(&self.max_oid)
    }

    /// The objects a pack to `packtid` has work on, found in batches so
    /// that loads and commits interleave with the scan. With GC, that is
    /// also every object with revisions up to `packtid` that is not
    /// reachable at the pack time (steps 2 and 3 of GC only make more
    /// objects reachable, so this is a superset).
    fn plan_pack(&self, packtid: Tid, gc: Option<&PackGc<Tid>>) -> Vec<Oid> {
        let mut todo = Vec::new();
        let mut cursor: Option<Oid> = None;
        loop {
            let st = self.read();
            let lower = match cursor {
                Some(c) => Bound::Excluded(c),
                None => Bound::Unbounded,
            };
            let mut seen = 0;
            for (oid, revs) in st.objects.range((lower, Bound::Unbounded)).take(PACK_BATCH) {
                seen += 1;
                cursor = Some(*oid);
                let unreachable = gc.is_some_and(|g| !g.is_reachable(*oid))
                    && revs.first().is_some_and(|r| r.tid <= packtid);
                if unreachable || pack_cut(revs, packtid).has_work() {
                    todo.push(*oid);
                }
            }
            if seen < PACK_BATCH {
                return todo;
            }
        }
    }

    /// GC step 1: what is reachable from the root as of `packtid`. Revisions
    /// up to `packtid` change only by pack (serialised by `pack_lock`), so
    /// the walk takes the read lock per object.
    fn gc_at_packtime(&self, packtid: Tid) -> Result<PackGc<Tid>> {
        let mut plan = PackGc::new();
        plan.mark_from([gc::ROOT], |oid| {
            current_at(self.read().objects.get(&oid)?, packtid)
        })
        .map_err(rules::gc_error)?;
        if !plan.is_reachable(gc::ROOT) {
            // FileStorage refuses (KeyError) unless nothing exists then.
            let st = self.read();
            if let Some(oid) = st
                .objects
                .iter()
                .find(|(_, revs)| current_at(revs, packtid).is_some())
                .map(|(oid, _)| *oid)
            {
                return Err(rules::gc_without_root(oid));
            }
        }
        Ok(plan)
    }
}

impl Committed {
    /// GC steps 2 and 3 (under the write lock, so no commit slips in before
    /// the pack is applied): records after `packtid` that point back at a
    /// revision up to `packtid` keep it, and may make more objects reachable.
    fn gc_from_future(&self, packtid: Tid, plan: &mut PackGc<Tid>) -> Result<()> {
        let mut extra_roots = Vec::new();
        for (tid, entry) in self
            .txns
            .range((Bound::Excluded(packtid), Bound::Unbounded))
        {
            for rec in &entry.records {
                let Some(back) = self.revision(rec.oid, *tid).and_then(|r| r.data_txn) else {
                    continue;
                };
                if back <= packtid && plan.note_future_backpointer(rec.oid, back) {
                    extra_roots.push((rec.oid, back));
                }
            }
        }
        for (oid, back) in extra_roots {
            let Some(data) = self.revision(oid, back).and_then(|r| r.data.clone()) else {
                continue;
            };
            let refs = pickle_refs::references(&data)
                .map_err(|error| rules::gc_error(GcError::Unreadable { oid, error }))?;
            plan.mark_from(refs, |o| current_at(self.objects.get(&o)?, packtid))
                .map_err(rules::gc_error)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Pure decisions.

/// The revision current at `packtid` and its data, if it has data.
fn current_at(revs: &[Revision], packtid: Tid) -> Option<(Tid, Data)> {
    let n = revs.partition_point(|r| r.tid <= packtid);
    let r = revs.get(n.checked_sub(1)?)?;
    r.data.as_ref().map(|d| (r.tid, d.clone()))
}

/// Which revisions survive a pack at `packtid`, one flag per revision.
/// Later revisions always survive. Up to `packtid`, `gc_keeps(tid)` decides
/// when it answers (`Some`, garbage collection on); otherwise [`pack_cut`].
fn pack_keep(revs: &[Revision], packtid: Tid, gc_keeps: impl Fn(Tid) -> Option<bool>) -> Vec<bool> {
    let cut = pack_cut(revs, packtid);
    revs.iter()
        .enumerate()
        .map(|(i, r)| {
            if r.tid > packtid {
                true
            } else {
                gc_keeps(r.tid).unwrap_or(i >= cut.drop)
            }
        })
        .collect()
}

fn find_revision(revs: &[Revision], tid: Tid) -> Option<usize> {
    revs.binary_search_by_key(&tid, |r| r.tid).ok()
}

fn is_live(revs: &[Revision]) -> bool {
    revs.last().is_some_and(|r| r.data.is_some())
}

fn adjust_live(live: u64, was: bool, now: bool) -> u64 {
    match (was, now) {
        (false, true) => live.saturating_add(1),
        (true, false) => live.saturating_sub(1),
        _ => live,
    }
}

/// What `loadBefore` finds among an object's revisions.
#[derive(Debug, PartialEq)]
enum Before {
    /// No revision older than the bound.
    Nothing,
    /// Revision at this index; the object had no data then.
    NoData(usize),
    /// Revision at this index, with data.
    Found(usize),
}

fn pick_before(revs: &[Revision], before: Tid) -> Before {
    let n = revs.partition_point(|r| r.tid < before);
    match n.checked_sub(1) {
        None => Before::Nothing,
        Some(i) if revs[i].data.is_none() => Before::NoData(i),
        Some(i) => Before::Found(i),
    }
}

/// The (data, data_txn) of the record that undoes `undone`, given the
/// revision before it and the object's current revision (staged or
/// committed), by [`rules::undo_check`]. `Err` is the UndoError reason.
fn undo_record(
    undone: &Revision,
    pre: Option<&Revision>,
    current: &Revision,
) -> std::result::Result<(Option<Data>, Option<Tid>), &'static str> {
    let view = UndoView {
        record: Some(current.tid),
        data_ptr: current.data_ptr(),
        data: current.data.clone(),
    };
    rules::undo_check(undone.tid, undone.data.as_ref(), pre.is_none(), &view)?;
    Ok(match pre {
        // Undo of the creation: no data, no backpointer.
        None => (None, None),
        Some(p) => (p.data.clone(), Some(p.tid)),
    })
}

/// Whether the transaction `target` may be undone: it must exist, and no
/// packed transaction may be newer (FileStorage's `_txn_find` stops there),
/// and it must have the ordinary status ([`rules::undo_target`]).
fn check_undo_target(
    entry: Option<&TxnEntry>,
    target: Tid,
    last_packed: Option<Tid>,
) -> Result<&TxnEntry> {
    let reachable = last_packed.is_none_or(|p| p <= target);
    rules::undo_target(entry.filter(|_| reachable), |e| e.status)
}

/// The undo log window `[first, last)` over transactions newest first
/// ([`rules::undo_window`]).
fn undo_window<'a, I>(newest_first: I, first: usize, last: usize) -> Vec<UndoEntry>
where
    I: Iterator<Item = &'a TxnEntry>,
{
    rules::undo_window(newest_first, |e| e.status, first, last)
        .into_iter()
        .map(|e| UndoEntry {
            tid: e.tid,
            meta: e.meta.clone(),
        })
        .collect()
}

/// What pack does to one object's revisions.
#[derive(Debug, PartialEq, Clone, Copy)]
struct PackCut {
    /// Leading revisions to drop.
    drop: usize,
    /// The revision current at the pack time survives but points back.
    resolve: bool,
}

impl PackCut {
    fn has_work(self) -> bool {
        self.drop > 0 || self.resolve
    }
}

/// Keep the newest revision at or before `packtid` if it has data, and
/// every later one; drop the rest.
fn pack_cut(revs: &[Revision], packtid: Tid) -> PackCut {
    let n = revs.partition_point(|r| r.tid <= packtid);
    match n.checked_sub(1) {
        None => PackCut {
            drop: 0,
            resolve: false,
        },
        Some(i) if revs[i].data.is_none() => PackCut {
            drop: n,
            resolve: false,
        },
        Some(i) => PackCut {
            drop: i,
            resolve: revs[i].data_txn.is_some(),
        },
    }
}

/// The backpointer a restored record keeps ([`rules::restore_backpointer`]):
/// `prev_txn`'s revision of the object, if this storage has it with the same
/// data. Returns the data to hold (shared when possible).
fn restore_backpointer(
    prev: Option<&Revision>,
    data: &Option<Data>,
) -> (Option<Data>, Option<Tid>) {
    match rules::restore_backpointer(prev.map(|p| (p, p.data.as_ref())), data) {
        Some(p) => (p.data.clone(), Some(p.tid)),
        None => (data.clone(), None),
    }
}

// ---------------------------------------------------------------------------
// Vote: applying a transaction's operations to a staged set.

struct Staging<'a> {
    state: &'a Committed,
    resolver: Option<&'a dyn ConflictResolver>,
    tid: Tid,
    records: Vec<DataRecord>,
    index: HashMap<Oid, usize>,
    conflicts: Vec<Conflict>,
    resolved: Vec<Oid>,
    invalidated: Vec<Oid>,
    seen_resolved: HashSet<Oid>,
    seen_invalidated: HashSet<Oid>,
    max_oid: u64,
    /// Blob files to commit with this transaction.
    blobs: StagedBlobs,
}

impl<'a> Staging<'a> {
    fn new(
        state: &'a Committed,
        resolver: Option<&'a dyn ConflictResolver>,
        tid: Tid,
    ) -> Staging<'a> {
        Staging {
            state,
            resolver,
            tid,
            records: Vec::new(),
            index: HashMap::new(),
            conflicts: Vec::new(),
            resolved: Vec::new(),
            invalidated: Vec::new(),
            seen_resolved: HashSet::new(),
            seen_invalidated: HashSet::new(),
            max_oid: 0,
            blobs: StagedBlobs::default(),
        }
    }

    /// Stage a record; a later write of the same object replaces it.
    fn put(&mut self, oid: Oid, data: Option<Data>, data_txn: Option<Tid>) {
        let rec = DataRecord {
            oid,
            tid: self.tid,
            data,
            data_txn,
        };
        match self.index.get(&oid) {
            Some(&i) => self.records[i] = rec,
            None => {
                self.index.insert(oid, self.records.len());
                self.records.push(rec);
            }
        }
        if self.seen_invalidated.insert(oid) {
            self.invalidated.push(oid);
        }
        self.max_oid = self.max_oid.max(oid.0);
    }

    /// The object's revision as this transaction sees it so far.
    fn current(&self, oid: Oid) -> Option<Revision> {
        match self.index.get(&oid) {
            Some(&i) => {
                let r = &self.records[i];
                Some(Revision {
                    tid: r.tid,
                    data: r.data.clone(),
                    data_txn: r.data_txn,
                })
            }
            None => self.state.current(oid).cloned(),
        }
    }
}

impl Stage for Staging<'_> {
    fn blobs(&mut self) -> &mut StagedBlobs {
        &mut self.blobs
    }

    /// A store checks the committed serial; conflicts are collected for
    /// the client to resolve ([`rules::note_store`]).
    fn store(&mut self, oid: Oid, serial: Tid, data: &Data) -> Result<()> {
        self.blobs.stored(oid.0);
        let committed = self.state.current(oid).map(|r| r.tid);
        let conflict = rules::store_conflict(oid, committed, serial, data);
        if rules::note_store(&mut self.conflicts, oid, conflict) {
            self.put(oid, Some(data.clone()), None);
        }
        Ok(())
    }

    fn delete(&mut self, oid: Oid, serial: Tid) -> Result<()> {
        let committed = self.state.current(oid).map(|r| r.tid);
        rules::check_delete(oid, committed, serial)?;
        self.put(oid, None, None);
        Ok(())
    }

    fn check_current(&mut self, oid: Oid, serial: Tid) -> Result<()> {
        let committed = self.state.current(oid).filter(|r| r.data.is_some());
        rules::check_current(oid, committed.map(|r| r.tid), serial)
    }

    fn restore(
        &mut self,
        oid: Oid,
        serial: Tid,
        data: &Option<Data>,
        prev_txn: Option<Tid>,
    ) -> Result<()> {
        rules::check_restore_serial(oid, serial, self.tid)?;
        let prev = prev_txn.and_then(|p| self.state.revision(oid, p));
        let (data, data_txn) = restore_backpointer(prev, data);
        self.put(oid, data, data_txn);
        Ok(())
    }

    fn undo(&mut self, target: Tid) -> Result<()> {
        let state = self.state;
        let entry = state.txns.get(&target).map(|e| e.as_ref());
        let entry = check_undo_target(entry, target, state.last_packed)?;
        let mut failure: Option<(Oid, &'static str)> = None;
        for rec in &entry.records {
            let oid = rec.oid;
            let revs = state.objects.get(&oid).map(|v| v.as_slice()).unwrap_or(&[]);
            let outcome = match (find_revision(revs, target), self.current(oid)) {
                (Some(i), Some(current)) => {
                    let pre = i.checked_sub(1).map(|p| &revs[p]);
                    undo_record(&revs[i], pre, &current).or_else(|m| {
                        // Merge with the later changes, as FileStorage's
                        // tryToResolveConflict; the result is new data.
                        let (u, c) = (revs[i].data.as_ref(), current.data.as_ref());
                        let before = pre.and_then(|p| p.data.as_ref());
                        rules::undo_may_resolve(m)
                            .then(|| resolve_undo(self.resolver, oid, u, c, before))
                            .flatten()
                            .map(|merged| (Some(merged), None))
                            .ok_or(m)
                    })
                }
                _ => Err(UNDO_INVALID_RECORD),
            };
            match outcome {
                Ok((data, data_txn)) => {
                    // Undoing to a blob revision brings its file back.
                    self.blobs
                        .undone(oid.0, data.as_deref(), data_txn.map(|t| t.0));
                    self.put(oid, data, data_txn);
                    if self.seen_resolved.insert(oid) {
                        self.resolved.push(oid);
                    }
                }
                Err(m) => {
                    failure.get_or_insert((oid, m));
                }
            }
        }
        rules::undo_outcome(failure)
    }
}

// ---------------------------------------------------------------------------

impl Storage for MemoryStorage {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn set_conflict_resolver(&self, r: Arc<dyn ConflictResolver>) {
        if self.resolver.set(r).is_err() {
            log::warn!("{}: a conflict resolver was already set", self.name);
        }
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn supports_undo(&self) -> bool {
        true
    }

    fn last_transaction(&self) -> Result<Tid> {
        Ok(self.read().last_tid)
    }

    /// FileStorage semantics: `Err(PosKey)` for an unknown object *and* when
    /// the revision found has no data (deleted, creation undone — ZODB's
    /// undo tests require it); `Ok(None)` when no revision is old enough.
    fn load_before(&self, oid: Oid, before: Tid) -> Result<Option<Loaded>> {
        let st = self.read();
        let revs = st.objects.get(&oid).ok_or(Error::PosKey(oid))?;
        match pick_before(revs, before) {
            Before::Nothing => Ok(None),
            Before::NoData(_) => Err(Error::PosKey(oid)),
            Before::Found(i) => {
                let r = &revs[i];
                Ok(r.data.clone().map(|data| Loaded {
                    data,
                    start: r.tid,
                    end: revs.get(i + 1).map(|n| n.tid),
                }))
            }
        }
    }

    fn load_serial(&self, oid: Oid, serial: Tid) -> Result<Data> {
        self.read()
            .revision(oid, serial)
            .and_then(|r| r.data.clone())
            .ok_or(Error::PosKey(oid))
    }

    /// Newest first; `size` is the data length (0 for a revision without data).
    fn history(&self, oid: Oid, size: usize) -> Result<Vec<HistoryEntry>> {
        let st = self.read();
        let revs = st.objects.get(&oid).ok_or(Error::PosKey(oid))?;
        Ok(revs
            .iter()
            .rev()
            .take(size)
            .map(|r| HistoryEntry {
                tid: r.tid,
                meta: st
                    .txns
                    .get(&r.tid)
                    .map(|e| e.meta.clone())
                    .unwrap_or_default(),
                size: r.size(),
            })
            .collect())
    }

    /// Oids after the largest one handed out or stored (the first is 1: 0 is
    /// the root). At most [`MAX_NEW_OIDS`] per call.
    fn new_oids(&self, n: usize) -> Result<Vec<Oid>> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        rules::allocate_oids(&mut self.max_oid(), n)
    }

    fn tpc_vote(&self, txn: &Txn) -> Result<Vote> {
        rules::check_vote(self.read_only, txn.status)?;
        let mut slot = self.prepared();
        if slot.is_some() {
            return Err(Error::Transaction(
                "another transaction is already voted".to_string(),
            ));
        }
        let st = self.read();
        let tid = rules::choose_tid(txn.tid, st.last_tid, timestamp::now())?;
        let mut stage = Staging::new(&st, self.resolver.get().map(|r| r.as_ref()), tid);
        stage.blobs = StagedBlobs::new(self.blobs.is_some());
        for op in &txn.ops {
            stage::apply(&mut stage, op)?;
        }
        if !stage.conflicts.is_empty() {
            return Ok(Vote::Conflicts(stage.conflicts));
        }
        let Staging {
            records,
            resolved,
            invalidated,
            max_oid,
            blobs: staged_blobs,
            ..
        } = stage;
        drop(st);
        let blobs = match &self.blobs {
            Some(b) => b
                .dir
                .commit_txn(tid.0, &staged_blobs.files, &staged_blobs.copies)?,
            None => Vec::new(),
        };
        {
            let mut max = self.max_oid();
            *max = (*max).max(max_oid);
        }
        *slot = Some(Prepared {
            entry: TxnEntry {
                tid,
                status: txn.status,
                meta: txn.meta.clone(),
                records,
            },
            blobs,
        });
        Ok(Vote::Prepared {
            tid,
            resolved,
            invalidated,
        })
    }

    fn tpc_finish(&self) -> Result<Tid> {
        let mut slot = self.prepared();
        let prepared = slot.take().ok_or_else(|| {
            Error::Transaction("tpc_finish without a voted transaction".to_string())
        })?;
        let tid = prepared.entry.tid;
        let mut st = self.write();
        if tid <= st.last_tid {
            return Err(Error::Transaction(format!(
                "transaction id {tid} is not later than the last transaction {}",
                st.last_tid
            )));
        }
        st.install(prepared.entry);
        Ok(tid)
    }

    fn tpc_abort(&self) {
        if let (Some(p), Some(b)) = (self.prepared().take(), &self.blobs) {
            b.dir.remove_txn(p.entry.tid.0, &p.blobs);
        }
    }

    fn blob_staging_dir(&self) -> Option<std::path::PathBuf> {
        self.blobs.as_ref().map(|b| b.dir.tmp_dir().to_path_buf())
    }

    fn shared_blob_path(&self, oid: Oid, file_name: &str) -> Option<std::path::PathBuf> {
        self.blobs
            .as_ref()
            .map(|b| b.dir.oid_path(oid.0).join(file_name))
    }

    fn load_blob(&self, oid: Oid, serial: Tid) -> Result<std::path::PathBuf> {
        let Some(b) = &self.blobs else {
            return Err(Error::Unsupported(crate::storage::NO_BLOBS.into()));
        };
        let path = b.dir.path(oid.0, serial.0);
        if path.is_file() {
            Ok(path)
        } else {
            Err(Error::PosKey(oid))
        }
    }

    /// `first`/`last` are already normalised by the caller (ZODB's
    /// `undoLog(first, last)` with `last < 0` means `last = first - last`).
    fn undo_log(&self, first: usize, last: usize) -> Result<Vec<UndoEntry>> {
        let st = self.read();
        Ok(undo_window(
            st.txns.values().rev().map(|e| e.as_ref()),
            first,
            last,
        ))
    }

    /// A snapshot taken now: later commits and packs do not show.
    fn iterator(&self, start: Option<Tid>, stop: Option<Tid>) -> Result<TxnIter> {
        if let (Some(a), Some(b)) = (start, stop) {
            if a > b {
                return Ok(Box::new(std::iter::empty()));
            }
        }
        let lower = start.map_or(Bound::Unbounded, Bound::Included);
        let upper = stop.map_or(Bound::Unbounded, Bound::Included);
        let snapshot: Vec<Arc<TxnEntry>> = self
            .read()
            .txns
            .range((lower, upper))
            .map(|(_, e)| e.clone())
            .collect();
        Ok(Box::new(snapshot.into_iter().map(|e| Ok(e.to_record()))))
    }

    /// Objects whose current revision has no data are skipped.
    fn record_iternext(&self, next: Option<Oid>) -> Result<Option<CurrentRecord>> {
        let st = self.read();
        let mut live = st
            .objects
            .range(next.unwrap_or(Oid::ZERO)..)
            .filter_map(|(oid, revs)| {
                let r = revs.last()?;
                r.data.as_ref().map(|d| (*oid, r.tid, d))
            });
        let Some((oid, tid, data)) = live.next() else {
            return Ok(None);
        };
        let following = live.next().map(|(o, _, _)| o);
        Ok(Some((oid, tid, data.clone(), following)))
    }

    /// Pack as of Unix time `t`, clamped to the last transaction (a pack
    /// "tomorrow" packs as of now; commits during the pack are untouched).
    /// A pack not later than the previous one does nothing.
    ///
    /// With `gc`, objects not reachable from the root at the pack time lose
    /// their revisions up to it, as FileStorage's pack GC does (see
    /// [`super::gc`]); a record GC cannot scan fails the pack, unchanged.
    fn pack(&self, t: f64, gc: bool) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let requested = rules::pack_time(t)?;
        let _packing = lock(&self.pack_lock);
        let packtid = {
            let st = self.read();
            if st.objects.is_empty() {
                return Ok(());
            }
            match rules::pack_tid(requested, st.last_tid, st.pack_tid) {
                Some(packtid) => packtid,
                None => return Ok(()),
            }
        };
        let mut plan = if gc {
            Some(self.gc_at_packtime(packtid)?)
        } else {
            None
        };
        let todo = self.plan_pack(packtid, plan.as_ref());
        let mut st = self.write();
        if let Some(plan) = plan.as_mut() {
            st.gc_from_future(packtid, plan)?;
        }
        st.apply_pack(packtid, &todo, plan.as_ref());
        drop(st);
        if let Some(b) = &self.blobs {
            let keep = super::blob_revisions(self, packtid)?;
            b.dir.sweep(packtid.0, &keep)?;
        }
        Ok(())
    }

    fn size_info(&self) -> SizeInfo {
        let st = self.read();
        SizeInfo {
            objects: st.live,
            bytes: st.bytes,
        }
    }

    fn reads_never_block(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::rules::{
        UNDO_ADD_CONFLICT, UNDO_INVALID_TXN, UNDO_LOADBACK_FAILED, UNDO_MODIFIED_LATER,
        UNDO_NOT_UNDOABLE,
    };
    use crate::storage::testutil::{
        at, commit, commit_txn, d, meta, o, records, restore_txn, revisions, store, t, txn, undo,
        undo_tids,
    };
    use crate::storage::Op;

    // -- helpers (the shared ones are in `storage::testutil`) -----------------

    fn mem() -> MemoryStorage {
        MemoryStorage::new("test", false)
    }

    fn commit_desc(s: &MemoryStorage, tid: Option<Tid>, desc: &str, ops: Vec<Op>) -> Tid {
        let mut tx = txn(tid, ops);
        tx.meta = meta(desc);
        commit_txn(s, tx).0
    }

    fn vote_err(s: &MemoryStorage, ops: Vec<Op>) -> Error {
        let r = s.tpc_vote(&txn(None, ops));
        s.tpc_abort();
        match r {
            Err(e) => e,
            Ok(v) => panic!("expected an error, got {v:?}"),
        }
    }

    fn current(s: &MemoryStorage, oid: u64) -> Result<(String, Tid)> {
        match s.load_before(o(oid), Tid::MAX)? {
            Some(l) => {
                assert_eq!(l.end, None);
                Ok((String::from_utf8_lossy(&l.data).into_owned(), l.start))
            }
            None => Err(Error::PosKey(o(oid))),
        }
    }

    fn value(s: &MemoryStorage, oid: u64) -> String {
        match current(s, oid) {
            Ok((v, _)) => v,
            Err(e) => format!("{e:?}"),
        }
    }

    fn undo_err(message: &str, oid: Option<u64>) -> Error {
        Error::Undo {
            message: message.to_string(),
            oid: oid.map(Oid),
        }
    }

    fn rev(tid: Tid, data: Option<&str>, data_txn: Option<Tid>) -> Revision {
        Revision {
            tid,
            data: data.map(d),
            data_txn,
        }
    }

    /// Recompute the derived state from scratch and compare.
    fn assert_consistent(s: &MemoryStorage) {
        let st = s.read();
        let live = st.objects.values().filter(|r| is_live(r)).count() as u64;
        let bytes: u64 = st.objects.values().flatten().map(|r| r.size()).sum();
        assert_eq!(st.live, live, "live objects");
        assert_eq!(st.bytes, bytes, "bytes");
        for (oid, revs) in &st.objects {
            assert!(!revs.is_empty(), "{oid} has no revisions");
            assert!(revs.windows(2).all(|w| w[0].tid < w[1].tid), "{oid} order");
            for r in revs {
                let e = st.txns.get(&r.tid).expect("revision's transaction");
                let rec = e.records.iter().find(|x| x.oid == *oid).expect("record");
                assert_eq!((&rec.data, rec.data_txn), (&r.data, r.data_txn));
                if let Some(dt) = r.data_txn {
                    assert!(find_revision(revs, dt).is_some(), "dangling {dt}");
                }
            }
        }
        for (tid, e) in &st.txns {
            assert_eq!(*tid, e.tid);
            for rec in &e.records {
                assert!(
                    st.revision(rec.oid, *tid).is_some(),
                    "record without revision"
                );
            }
        }
        if let Some((t, _)) = st.txns.iter().next_back() {
            assert_eq!(*t, st.last_tid);
        }
    }

    // -- basics ---------------------------------------------------------------

    #[test]
    fn empty_storage() {
        let s = mem();
        assert_eq!(s.name(), "test");
        assert!(!s.is_read_only());
        assert!(s.supports_undo());
        assert_eq!(s.last_transaction(), Ok(Tid::ZERO));
        assert_eq!(s.size_info(), SizeInfo::default());
        assert_eq!(s.load_before(o(0), Tid::MAX), Err(Error::PosKey(o(0))));
        assert_eq!(s.load_serial(o(0), t(1)), Err(Error::PosKey(o(0))));
        assert_eq!(s.history(o(0), 1), Err(Error::PosKey(o(0))));
        assert_eq!(s.record_iternext(None), Ok(None));
        assert_eq!(s.undo_log(0, 20), Ok(vec![]));
        assert!(records(&s).is_empty());
        assert_eq!(s.pack(at(100, 0.0), true), Ok(()));
        s.tpc_abort(); // no-op
        assert!(matches!(s.tpc_finish(), Err(Error::Transaction(_))));
    }

    #[test]
    fn new_oids_are_monotonic_and_follow_stores() {
        let s = mem();
        assert_eq!(s.new_oids(1), Ok(vec![o(1)]));
        assert_eq!(s.new_oids(3), Ok(vec![o(2), o(3), o(4)]));
        assert_eq!(s.new_oids(0), Ok(vec![]));
        // Storing a larger oid reserves it (FileStorage's set_max_oid).
        commit(&s, None, vec![store(0xf0, Tid::ZERO, "x")]);
        assert_eq!(s.new_oids(2), Ok(vec![o(0xf1), o(0xf2)]));
        // A smaller stored oid does not move the counter back.
        commit(&s, None, vec![store(7, Tid::ZERO, "x")]);
        assert_eq!(s.new_oids(1), Ok(vec![o(0xf3)]));
        assert!(matches!(s.new_oids(MAX_NEW_OIDS + 1), Err(Error::Value(_))));
        *s.max_oid() = u64::MAX - 1;
        assert_eq!(s.new_oids(1), Ok(vec![o(u64::MAX)]));
        assert!(matches!(s.new_oids(1), Err(Error::Value(_))));
    }

    #[test]
    fn read_only_refuses_writes() {
        let s = MemoryStorage::new("ro", true);
        assert!(s.is_read_only());
        assert_eq!(s.new_oids(1), Err(Error::ReadOnly));
        assert_eq!(s.tpc_vote(&txn(None, vec![])), Err(Error::ReadOnly));
        assert_eq!(
            s.tpc_vote(&txn(None, vec![store(1, Tid::ZERO, "a")])),
            Err(Error::ReadOnly)
        );
        assert_eq!(s.pack(at(0, 0.0), false), Err(Error::ReadOnly));
        // Reads still work.
        assert_eq!(s.last_transaction(), Ok(Tid::ZERO));
        assert_eq!(s.load_before(o(1), Tid::MAX), Err(Error::PosKey(o(1))));
        assert_eq!(s.undo_log(0, 20), Ok(vec![]));
    }

    #[test]
    fn tids_increase_and_last_transaction_follows() {
        let s = mem();
        let a = commit(&s, None, vec![store(1, Tid::ZERO, "a")]);
        let b = commit(&s, None, vec![store(1, a, "b")]);
        let c = commit(&s, None, vec![]);
        assert!(Tid::ZERO < a && a < b && b < c);
        assert_eq!(s.last_transaction(), Ok(c));
        // An explicit tid must be later than the last one.
        let e = s.tpc_vote(&txn(Some(b), vec![store(2, Tid::ZERO, "x")]));
        assert!(matches!(e, Err(Error::Transaction(_))), "{e:?}");
        assert_eq!(s.tpc_finish().ok(), None);
    }

    // -- loads ----------------------------------------------------------------

    #[test]
    fn load_before_table() {
        let s = mem();
        commit(&s, Some(t(1)), vec![store(1, Tid::ZERO, "a")]);
        commit(&s, Some(t(2)), vec![store(1, t(1), "b")]);
        commit(&s, Some(t(3)), vec![store(2, Tid::ZERO, "other")]);
        commit(&s, Some(t(4)), vec![store(1, t(2), "c")]);
        type Want = std::result::Result<Option<(&'static str, Tid, Option<Tid>)>, ()>;
        let cases: Vec<(u64, Tid, Want)> = vec![
            (1, Tid::ZERO, Ok(None)),
            (1, t(1), Ok(None)),
            (1, Tid(t(1).0 + 1), Ok(Some(("a", t(1), Some(t(2)))))),
            (1, t(2), Ok(Some(("a", t(1), Some(t(2)))))),
            (1, t(3), Ok(Some(("b", t(2), Some(t(4)))))),
            (1, t(4), Ok(Some(("b", t(2), Some(t(4)))))),
            (1, Tid(t(4).0 + 1), Ok(Some(("c", t(4), None)))),
            (1, Tid::MAX, Ok(Some(("c", t(4), None)))),
            (2, t(3), Ok(None)),
            (2, Tid::MAX, Ok(Some(("other", t(3), None)))),
            (3, Tid::MAX, Err(())),
            (3, Tid::ZERO, Err(())),
        ];
        for (oid, before, want) in cases {
            let got = s.load_before(o(oid), before);
            let want = want
                .map(|w| {
                    w.map(|(v, start, end)| Loaded {
                        data: d(v),
                        start,
                        end,
                    })
                })
                .map_err(|()| Error::PosKey(o(oid)));
            assert_eq!(got, want, "oid {oid} before {before}");
        }
    }

    #[test]
    fn load_before_consecutive_tids() {
        // ZODB's testLoadBeforeConsecutiveTids.
        let s = mem();
        commit(&s, Some(Tid(1)), vec![store(1, Tid::ZERO, "1")]);
        commit(&s, Some(Tid(2)), vec![store(1, Tid(1), "2")]);
        commit(&s, Some(Tid(3)), vec![store(1, Tid(2), "3")]);
        assert_eq!(
            s.load_before(o(1), Tid(2)),
            Ok(Some(Loaded {
                data: d("1"),
                start: Tid(1),
                end: Some(Tid(2)),
            }))
        );
    }

    #[test]
    fn load_before_without_data_is_poskey() {
        let s = mem();
        commit(&s, Some(t(1)), vec![store(1, Tid::ZERO, "a")]);
        commit(
            &s,
            Some(t(2)),
            vec![Op::Delete {
                oid: o(1),
                serial: t(1),
            }],
        );
        commit(&s, Some(t(3)), vec![store(1, t(2), "again")]);
        let cases: &[(Tid, std::result::Result<Option<&str>, ()>)] = &[
            (t(1), Ok(None)),
            (t(2), Ok(Some("a"))),
            (t(3), Err(())), // the deleted revision
            (Tid::MAX, Ok(Some("again"))),
        ];
        for (before, want) in cases {
            let got = s.load_before(o(1), *before).map(|l| l.map(|l| l.data));
            let want = want.map(|w| w.map(d)).map_err(|()| Error::PosKey(o(1)));
            assert_eq!(got, want, "before {before}");
        }
    }

    #[test]
    fn pick_before_table() {
        let revs = vec![
            rev(Tid(10), Some("a"), None),
            rev(Tid(20), None, None),
            rev(Tid(30), Some("c"), Some(Tid(10))),
        ];
        let cases = [
            (Tid(0), Before::Nothing),
            (Tid(10), Before::Nothing),
            (Tid(11), Before::Found(0)),
            (Tid(20), Before::Found(0)),
            (Tid(21), Before::NoData(1)),
            (Tid(30), Before::NoData(1)),
            (Tid(31), Before::Found(2)),
            (Tid::MAX, Before::Found(2)),
        ];
        for (before, want) in cases {
            assert_eq!(pick_before(&revs, before), want, "before {before}");
        }
        assert_eq!(pick_before(&[], Tid::MAX), Before::Nothing);
    }

    #[test]
    fn load_serial_table() {
        let s = mem();
        let mut serial = Tid::ZERO;
        let mut revs = Vec::new();
        for i in 31..38 {
            serial = commit(&s, None, vec![store(1, serial, &i.to_string())]);
            revs.push((serial, i.to_string()));
        }
        for (tid, v) in &revs {
            assert_eq!(s.load_serial(o(1), *tid), Ok(d(v)));
        }
        let cases = [(1, Tid(5)), (1, Tid::MAX), (2, revs[0].0)];
        for (oid, tid) in cases {
            assert_eq!(s.load_serial(o(oid), tid), Err(Error::PosKey(o(oid))));
        }
    }

    #[test]
    fn history_shapes() {
        let s = mem();
        let a = commit_desc(&s, None, "one", vec![store(1, Tid::ZERO, "a")]);
        let b = commit_desc(&s, None, "two", vec![store(1, a, "bb")]);
        let c = commit_desc(&s, None, "three", vec![store(1, b, "ccc")]);
        let full = [(c, "three", 3), (b, "two", 2), (a, "one", 1)];
        for size in 0..5 {
            let h = s.history(o(1), size).expect("history");
            let got: Vec<(Tid, String, u64)> = h
                .iter()
                .map(|e| {
                    (
                        e.tid,
                        String::from_utf8_lossy(&e.meta.description).into_owned(),
                        e.size,
                    )
                })
                .collect();
            let want: Vec<(Tid, String, u64)> = full
                .iter()
                .take(size)
                .map(|(t, m, n)| (*t, m.to_string(), *n))
                .collect();
            assert_eq!(got, want, "size {size}");
        }
        assert_eq!(s.history(o(2), 1), Err(Error::PosKey(o(2))));
        // A deleted revision shows with size 0.
        commit(
            &s,
            None,
            vec![Op::Delete {
                oid: o(1),
                serial: c,
            }],
        );
        let h = s.history(o(1), 1).expect("history");
        assert_eq!(h[0].size, 0);
    }

    // -- conflicts --------------------------------------------------------------

    #[test]
    fn conflicts_are_collected_and_stage_nothing() {
        let s = mem();
        let a = commit(
            &s,
            None,
            vec![store(1, Tid::ZERO, "a"), store(2, Tid::ZERO, "b")],
        );
        let b = commit(&s, None, vec![store(1, a, "a2"), store(2, a, "b2")]);
        let vote = s.tpc_vote(&txn(
            None,
            vec![
                store(1, a, "a3"),
                store(3, Tid::ZERO, "new"),
                store(2, a, "b3"),
            ],
        ));
        assert_eq!(
            vote,
            Ok(Vote::Conflicts(vec![
                Conflict {
                    oid: o(1),
                    committed: b,
                    read: a,
                    data: d("a3"),
                },
                Conflict {
                    oid: o(2),
                    committed: b,
                    read: a,
                    data: d("b3"),
                },
            ]))
        );
        // Nothing was prepared: another vote is allowed, finish is not.
        assert!(matches!(s.tpc_finish(), Err(Error::Transaction(_))));
        assert_eq!(s.last_transaction(), Ok(b));
        assert_eq!(s.load_before(o(3), Tid::MAX), Err(Error::PosKey(o(3))));
        assert_eq!(value(&s, 1), "a2");
    }

    #[test]
    fn resolved_restore_replaces_the_conflict() {
        let s = mem();
        let a = commit(&s, None, vec![store(1, Tid::ZERO, "a")]);
        let b = commit(&s, None, vec![store(1, a, "b")]);
        // ZEO replays the whole buffer: the stale store, then the resolved
        // re-store with serial = committed.
        let (tid, resolved, invalidated) = commit_txn(
            &s,
            txn(
                None,
                vec![
                    store(1, a, "stale"),
                    store(2, Tid::ZERO, "x"),
                    store(1, b, "resolved"),
                ],
            ),
        );
        assert!(resolved.is_empty());
        // Ordered by first successful write: the stale store staged nothing.
        assert_eq!(invalidated, vec![o(2), o(1)]);
        assert_eq!(current(&s, 1), Ok(("resolved".to_string(), tid)));
        // One record per object, in first-written order.
        let last = records(&s).pop().expect("a transaction");
        let oids: Vec<Oid> = last.records.iter().map(|r| r.oid).collect();
        assert_eq!(oids, vec![o(2), o(1)]);
        // A store that conflicts after a good one still conflicts.
        let v = s.tpc_vote(&txn(None, vec![store(1, tid, "ok"), store(1, a, "stale")]));
        assert!(matches!(v, Ok(Vote::Conflicts(ref c)) if c.len() == 1 && c[0].read == a));
    }

    #[test]
    fn double_store_keeps_the_later_data() {
        let s = mem();
        let (tid, _, inv) = commit_txn(
            &s,
            txn(
                None,
                vec![store(1, Tid::ZERO, "first"), store(1, Tid::ZERO, "second")],
            ),
        );
        assert_eq!(inv, vec![o(1)]);
        assert_eq!(current(&s, 1), Ok(("second".to_string(), tid)));
        assert_eq!(records(&s)[0].records.len(), 1);
    }

    #[test]
    fn delete_semantics() {
        let s = mem();
        let a = commit(&s, None, vec![store(1, Tid::ZERO, "a")]);
        let b = commit(&s, None, vec![store(1, a, "b")]);
        assert_eq!(
            vote_err(
                &s,
                vec![Op::Delete {
                    oid: o(1),
                    serial: a,
                }]
            ),
            Error::Conflict {
                oid: o(1),
                committed: b,
                read: a,
                message: "database conflict error".to_string(),
                read_conflict: false,
                class_name: None,
            }
        );
        assert_eq!(
            vote_err(
                &s,
                vec![Op::Delete {
                    oid: o(9),
                    serial: a,
                }]
            ),
            Error::PosKey(o(9))
        );
        let (c, resolved, inv) = commit_txn(
            &s,
            txn(
                None,
                vec![Op::Delete {
                    oid: o(1),
                    serial: b,
                }],
            ),
        );
        assert!(resolved.is_empty());
        assert_eq!(inv, vec![o(1)]);
        assert_eq!(current(&s, 1), Err(Error::PosKey(o(1))));
        assert_eq!(s.load_serial(o(1), c), Err(Error::PosKey(o(1))));
        assert_eq!(s.load_serial(o(1), b), Ok(d("b")));
        assert_eq!(s.size_info().objects, 0);
        assert_eq!(s.record_iternext(None), Ok(None));
        let last = records(&s).pop().expect("txn");
        assert_eq!(last.records[0].data, None);
    }

    #[test]
    fn check_current_table() {
        let s = mem();
        let a = commit(&s, None, vec![store(1, Tid::ZERO, "a")]);
        let b = commit(&s, None, vec![store(1, a, "b")]);
        let gone = commit(&s, None, vec![store(2, Tid::ZERO, "x")]);
        commit(
            &s,
            None,
            vec![Op::Delete {
                oid: o(2),
                serial: gone,
            }],
        );
        let read_conflict = Error::Conflict {
            oid: o(1),
            committed: b,
            read: a,
            message: "database read conflict error".to_string(),
            read_conflict: true,
            class_name: None,
        };
        let cases: Vec<(u64, Tid, Option<Error>)> = vec![
            (1, b, None),
            (1, a, Some(read_conflict)),
            (2, gone, Some(Error::PosKey(o(2)))),
            (3, Tid::ZERO, Some(Error::PosKey(o(3)))),
        ];
        for (oid, serial, want) in cases {
            let ops = vec![
                store(10, Tid::ZERO, "other"),
                Op::CheckCurrent {
                    oid: o(oid),
                    serial,
                },
            ];
            let got = s.tpc_vote(&txn(None, ops));
            s.tpc_abort();
            match want {
                None => match got {
                    Ok(Vote::Prepared { invalidated, .. }) => {
                        assert_eq!(invalidated, vec![o(10)], "checked oids are not invalidated")
                    }
                    other => panic!("oid {oid}: {other:?}"),
                },
                Some(e) => assert_eq!(got, Err(e), "oid {oid}"),
            }
        }
        // A read conflict is not resolvable: it wins over collected conflicts.
        let e = vote_err(
            &s,
            vec![
                store(1, a, "stale"),
                Op::CheckCurrent {
                    oid: o(1),
                    serial: a,
                },
            ],
        );
        assert!(
            matches!(
                e,
                Error::Conflict {
                    read_conflict: true,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    // -- two-phase commit ---------------------------------------------------------

    #[test]
    fn prepared_is_invisible_until_finish() {
        let s = mem();
        let a = commit(&s, None, vec![store(1, Tid::ZERO, "a")]);
        let v = s.tpc_vote(&txn(None, vec![store(1, a, "b"), store(2, Tid::ZERO, "n")]));
        let Ok(Vote::Prepared { tid, .. }) = v else {
            panic!("{v:?}");
        };
        assert_eq!(s.last_transaction(), Ok(a));
        assert_eq!(current(&s, 1), Ok(("a".to_string(), a)));
        assert_eq!(s.load_before(o(2), Tid::MAX), Err(Error::PosKey(o(2))));
        assert_eq!(records(&s).len(), 1);
        assert_eq!(undo_tids(&s), vec![a]);
        assert_eq!(s.size_info().objects, 1);
        // A second vote while one is prepared is refused.
        assert!(matches!(
            s.tpc_vote(&txn(None, vec![])),
            Err(Error::Transaction(_))
        ));
        assert_eq!(s.tpc_finish(), Ok(tid));
        assert_eq!(current(&s, 1), Ok(("b".to_string(), tid)));
        assert_eq!(current(&s, 2), Ok(("n".to_string(), tid)));
        assert_eq!(s.last_transaction(), Ok(tid));
        assert!(matches!(s.tpc_finish(), Err(Error::Transaction(_))));
        assert_consistent(&s);
    }

    #[test]
    fn abort_leaves_nothing() {
        let s = mem();
        let a = commit(&s, None, vec![store(1, Tid::ZERO, "a")]);
        let before = s.size_info();
        let v = s.tpc_vote(&txn(None, vec![store(1, a, "b"), store(2, Tid::ZERO, "n")]));
        assert!(matches!(v, Ok(Vote::Prepared { .. })));
        s.tpc_abort();
        assert!(matches!(s.tpc_finish(), Err(Error::Transaction(_))));
        assert_eq!(s.last_transaction(), Ok(a));
        assert_eq!(current(&s, 1), Ok(("a".to_string(), a)));
        assert_eq!(s.load_before(o(2), Tid::MAX), Err(Error::PosKey(o(2))));
        assert_eq!(records(&s).len(), 1);
        assert_eq!(s.size_info(), before);
        // The storage goes on normally.
        let b = commit(&s, None, vec![store(1, a, "c")]);
        assert_eq!(current(&s, 1), Ok(("c".to_string(), b)));
        assert_consistent(&s);
    }

    #[test]
    fn empty_transactions_are_committed() {
        let s = mem();
        let a = commit(&s, None, vec![]);
        let b = commit(&s, None, vec![]);
        assert!(a < b);
        let txns = records(&s);
        assert_eq!(txns.len(), 2);
        assert!(txns
            .iter()
            .all(|t| t.records.is_empty() && t.status == b' '));
        assert_eq!(undo_tids(&s), vec![b, a]);
        // Undoing an empty transaction is an empty undo.
        let (_, resolved, inv) = commit_txn(&s, txn(None, vec![undo(a)]));
        assert!(resolved.is_empty() && inv.is_empty());
    }

    #[test]
    fn invalid_status_is_refused() {
        let s = mem();
        let mut tx = txn(None, vec![]);
        tx.status = b'x';
        assert!(matches!(s.tpc_vote(&tx), Err(Error::Value(_))));
        tx.status = b'p';
        assert!(matches!(s.tpc_vote(&tx), Ok(Vote::Prepared { .. })));
        s.tpc_abort();
    }

    // -- undo -----------------------------------------------------------------

    #[test]
    fn undo_record_table() {
        let a = Some("a");
        let b = Some("b");
        // (undone, pre, current, expected)
        type Want = std::result::Result<(Option<&'static str>, Option<Tid>), &'static str>;
        let cases: Vec<(Revision, Option<Revision>, Revision, Want)> = vec![
            // Undo of the current modification: back to pre, pointing at it.
            (
                rev(Tid(2), b, None),
                Some(rev(Tid(1), a, None)),
                rev(Tid(2), b, None),
                Ok((a, Some(Tid(1)))),
            ),
            // Undo of the current creation: George Bailey.
            (
                rev(Tid(1), a, None),
                None,
                rev(Tid(1), a, None),
                Ok((None, None)),
            ),
            // Modified later with other data.
            (
                rev(Tid(2), b, None),
                Some(rev(Tid(1), a, None)),
                rev(Tid(3), Some("c"), None),
                Err(UNDO_MODIFIED_LATER),
            ),
            // Created, then modified later.
            (
                rev(Tid(1), a, None),
                None,
                rev(Tid(3), Some("c"), None),
                Err(UNDO_ADD_CONFLICT),
            ),
            // Modified later, but to identical bytes: allowed.
            (
                rev(Tid(2), b, None),
                Some(rev(Tid(1), a, None)),
                rev(Tid(3), b, None),
                Ok((a, Some(Tid(1)))),
            ),
            // The current record points back at the undone one (a redo of an
            // undo of it): allowed without comparing.
            (
                rev(Tid(2), b, None),
                Some(rev(Tid(1), a, None)),
                rev(Tid(4), b, Some(Tid(2))),
                Ok((a, Some(Tid(1)))),
            ),
            // Current is deleted: the data cannot be compared.
            (
                rev(Tid(2), b, None),
                Some(rev(Tid(1), a, None)),
                rev(Tid(3), None, None),
                Err(UNDO_LOADBACK_FAILED),
            ),
            // Undoing an undone creation that is no longer current.
            (
                rev(Tid(2), None, None),
                Some(rev(Tid(1), a, None)),
                rev(Tid(3), a, None),
                Err(UNDO_LOADBACK_FAILED),
            ),
            // Redo of an undone creation (it is current): back to pre.
            (
                rev(Tid(2), None, None),
                Some(rev(Tid(1), a, Some(Tid(0)))),
                rev(Tid(2), None, None),
                Ok((a, Some(Tid(1)))),
            ),
            // Pre has no data: the undo record points at it, without data.
            (
                rev(Tid(3), a, None),
                Some(rev(Tid(2), None, None)),
                rev(Tid(3), a, None),
                Ok((None, Some(Tid(2)))),
            ),
            // Staged current (from an earlier undo in the same transaction)
            // pointing at the undone record.
            (
                rev(Tid(2), b, None),
                Some(rev(Tid(1), a, None)),
                rev(Tid(9), b, Some(Tid(2))),
                Ok((a, Some(Tid(1)))),
            ),
        ];
        for (i, (undone, pre, cur, want)) in cases.into_iter().enumerate() {
            let got = undo_record(&undone, pre.as_ref(), &cur);
            let want = want.map(|(data, dt)| (data.map(d), dt));
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn check_undo_target_table() {
        let entry = |tid: Tid, status: u8| TxnEntry {
            tid,
            status,
            meta: TxnMeta::default(),
            records: vec![],
        };
        let normal = entry(t(5), b' ');
        let packed = entry(t(5), b'p');
        let cases: Vec<(Option<&TxnEntry>, Option<Tid>, Option<&str>)> = vec![
            (Some(&normal), None, None),
            (Some(&normal), Some(t(4)), None),
            (Some(&normal), Some(t(6)), Some(UNDO_INVALID_TXN)),
            (None, None, Some(UNDO_INVALID_TXN)),
            (Some(&packed), Some(t(5)), Some(UNDO_NOT_UNDOABLE)),
            (Some(&packed), None, Some(UNDO_NOT_UNDOABLE)),
        ];
        for (e, last_packed, want) in cases {
            let got = check_undo_target(e, t(5), last_packed).map(|e| e.tid);
            let want = match want {
                None => Ok(t(5)),
                Some(m) => Err(undo_err(m, None)),
            };
            assert_eq!(got, want, "{e:?} {last_packed:?}");
        }
    }

    /// ZODB's testSimpleTransactionalUndo, with undo log indices.
    #[test]
    fn simple_transactional_undo() {
        let s = mem();
        let r1 = commit(&s, None, vec![store(1, Tid::ZERO, "23")]);
        let r2 = commit(&s, None, vec![store(1, r1, "24")]);
        let _r3 = commit(&s, None, vec![store(1, r2, "25")]);

        let log = undo_tids(&s);
        let (u1, resolved, inv) = commit_txn(&s, txn(None, vec![undo(log[0])]));
        assert_eq!((resolved, inv), (vec![o(1)], vec![o(1)]));
        assert_eq!(current(&s, 1), Ok(("24".to_string(), u1)));

        let log = undo_tids(&s);
        commit(&s, None, vec![undo(log[2])]);
        assert_eq!(value(&s, 1), "23");

        let log = undo_tids(&s);
        assert_eq!(log.len(), 5);
        commit(&s, None, vec![undo(log[4])]);
        assert_eq!(current(&s, 1), Err(Error::PosKey(o(1))));
        assert_eq!(s.load_before(o(1), Tid::MAX), Err(Error::PosKey(o(1))));
        assert_eq!(s.size_info().objects, 0);

        // Redo the creation.
        let log = undo_tids(&s);
        commit(&s, None, vec![undo(log[0])]);
        assert_eq!(value(&s, 1), "23");
        assert_eq!(s.size_info().objects, 1);
        assert_consistent(&s);
    }

    #[test]
    fn undo_creation_branches() {
        // testUndoCreationBranch1: undo the update, then the creation.
        let s = mem();
        let r1 = commit(&s, None, vec![store(1, Tid::ZERO, "11")]);
        commit(&s, None, vec![store(1, r1, "12")]);
        commit(&s, None, vec![undo(undo_tids(&s)[0])]);
        assert_eq!(value(&s, 1), "11");
        commit(&s, None, vec![undo(undo_tids(&s)[2])]);
        assert_eq!(s.load_before(o(1), Tid::MAX), Err(Error::PosKey(o(1))));
        let last = records(&s).pop().expect("txn");
        assert_eq!(
            last.records,
            vec![DataRecord {
                oid: o(1),
                tid: last.tid,
                data: None,
                data_txn: None,
            }]
        );

        // testUndoCreationBranch2: undo the update, then redo it.
        let s = mem();
        let r1 = commit(&s, None, vec![store(1, Tid::ZERO, "11")]);
        let r2 = commit(&s, None, vec![store(1, r1, "12")]);
        commit(&s, None, vec![undo(undo_tids(&s)[0])]);
        assert_eq!(value(&s, 1), "11");
        let redo = commit(&s, None, vec![undo(undo_tids(&s)[0])]);
        assert_eq!(value(&s, 1), "12");
        // The redo points back at the undo's predecessor: r2.
        assert_eq!(
            s.read().revision(o(1), redo).and_then(|r| r.data_txn),
            Some(r2)
        );
        assert_consistent(&s);
    }

    #[test]
    fn two_object_undo_at_once() {
        // testTwoObjectUndoAtOnce: two undos in one transaction, then undo it.
        let s = mem();
        let a = commit(
            &s,
            None,
            vec![store(1, Tid::ZERO, "30"), store(2, Tid::ZERO, "50")],
        );
        let b = commit(&s, None, vec![store(1, a, "31"), store(2, a, "51")]);
        let c = commit(&s, None, vec![store(1, b, "32"), store(2, b, "52")]);
        let (_, resolved, inv) = commit_txn(&s, txn(None, vec![undo(c), undo(b)]));
        assert_eq!(resolved, vec![o(1), o(2)]);
        assert_eq!(inv, vec![o(1), o(2)]);
        assert_eq!((value(&s, 1), value(&s, 2)), ("30".into(), "50".into()));
        let last = records(&s).pop().expect("txn");
        let pointers: Vec<Option<Tid>> = last.records.iter().map(|r| r.data_txn).collect();
        assert_eq!(pointers, vec![Some(a), Some(a)]);

        commit(&s, None, vec![undo(undo_tids(&s)[0])]);
        assert_eq!((value(&s, 1), value(&s, 2)), ("32".into(), "52".into()));
        assert_consistent(&s);
    }

    #[test]
    fn two_object_undo_again() {
        // testTwoObjectUndoAgain: the second transaction is undone although
        // one object changed later — to the very same revision of it.
        let s = mem();
        let r1 = commit(&s, None, vec![store(1, Tid::ZERO, "31")]);
        let r2 = commit(&s, None, vec![store(2, Tid::ZERO, "51")]);
        commit(&s, None, vec![store(1, r1, "32"), store(2, r2, "52")]);
        let u = commit(&s, None, vec![undo(undo_tids(&s)[0])]);
        assert_eq!((value(&s, 1), value(&s, 2)), ("31".into(), "51".into()));
        let tid = commit(&s, None, vec![store(1, u, "33"), store(2, u, "53")]);
        commit(&s, None, vec![store(1, tid, "34")]);
        commit(&s, None, vec![store(2, tid, "54")]);
        // Undo the "33/53" transaction: both objects were modified later.
        let err = vote_err(&s, vec![undo(undo_tids(&s)[2])]);
        assert_eq!(err, undo_err(UNDO_MODIFIED_LATER, Some(1)));
        // Undo of "34" alone works.
        commit(&s, None, vec![undo(undo_tids(&s)[1])]);
        assert_eq!((value(&s, 1), value(&s, 2)), ("33".into(), "54".into()));
    }

    #[test]
    fn undo_refused_when_modified_later() {
        // testNotUndoable.
        let s = mem();
        let a = commit(&s, None, vec![store(1, Tid::ZERO, "51")]);
        let b = commit(&s, None, vec![store(1, a, "52")]);
        let c = commit(&s, None, vec![store(1, b, "53")]);
        assert_eq!(
            vote_err(&s, vec![undo(b)]),
            undo_err(UNDO_MODIFIED_LATER, Some(1))
        );
        // Undoing the creation, modified later.
        assert_eq!(
            vote_err(&s, vec![undo(a)]),
            undo_err(UNDO_ADD_CONFLICT, Some(1))
        );
        // One object of two modified later: the whole undo fails.
        let tid = commit(&s, None, vec![store(1, c, "81"), store(2, Tid::ZERO, "91")]);
        commit(&s, None, vec![store(2, tid, "92")]);
        assert_eq!(
            vote_err(&s, vec![undo(tid)]),
            undo_err(UNDO_ADD_CONFLICT, Some(2))
        );
        assert_eq!((value(&s, 1), value(&s, 2)), ("81".into(), "92".into()));
        // Nothing was prepared.
        assert!(matches!(s.tpc_finish(), Err(Error::Transaction(_))));
    }

    #[test]
    fn undo_unknown_transaction() {
        let s = mem();
        commit(&s, Some(t(1)), vec![store(1, Tid::ZERO, "a")]);
        assert_eq!(
            vote_err(&s, vec![undo(t(7))]),
            undo_err(UNDO_INVALID_TXN, None)
        );
        assert_eq!(
            vote_err(&s, vec![undo(Tid::ZERO)]),
            undo_err(UNDO_INVALID_TXN, None)
        );
    }

    #[test]
    fn undo_then_store_in_one_transaction() {
        let s = mem();
        let a = commit(&s, None, vec![store(1, Tid::ZERO, "a")]);
        let b = commit(&s, None, vec![store(1, a, "b")]);
        // Undo b, then store on top in the same transaction: the store wins
        // (serial checked against committed state), oid listed once.
        let (tid, resolved, inv) = commit_txn(&s, txn(None, vec![undo(b), store(1, b, "c")]));
        assert_eq!((resolved, inv), (vec![o(1)], vec![o(1)]));
        assert_eq!(current(&s, 1), Ok(("c".to_string(), tid)));
        let last = records(&s).pop().expect("txn");
        assert_eq!(last.records.len(), 1);
        assert_eq!(last.records[0].data_txn, None);
    }

    #[test]
    fn undo_iterator_reports_data_txn() {
        // testTransactionalUndoIterator, scaled down.
        const BATCHES: u64 = 3;
        const OBJECTS: u64 = 3;
        let s = mem();
        let mut orig = Vec::new();
        for i in 0..BATCHES {
            let tid = Tid(i + 1);
            let oids = s.new_oids(OBJECTS as usize).expect("oids");
            let ops = oids
                .iter()
                .map(|oid| store(oid.0, Tid::ZERO, &format!("{}", oid.0)))
                .collect();
            commit(&s, Some(tid), ops);
            orig.extend(oids.into_iter().map(|oid| (tid, oid)));
        }
        for (tid, oid) in &orig {
            commit(&s, None, vec![store(oid.0, *tid, "update")]);
        }
        for i in 0..BATCHES {
            let log = s.undo_log(0, 1000).expect("log");
            let base = (i * OBJECTS + i) as usize;
            let ops = (0..OBJECTS as usize)
                .map(|j| undo(log[base + j].tid))
                .collect();
            commit(&s, None, ops);
        }
        let txns = records(&s);
        assert_eq!(txns.len() as u64, (2 + OBJECTS) * BATCHES);
        for (i, txn) in txns.iter().take(BATCHES as usize).enumerate() {
            assert_eq!(txn.tid, Tid(i as u64 + 1));
            assert!(txn
                .records
                .iter()
                .all(|r| r.data_txn.is_none() && r.tid == txn.tid));
        }
        for (i, txn) in txns
            .iter()
            .skip((BATCHES * (OBJECTS + 1)) as usize)
            .enumerate()
        {
            // The undos are performed newest batch first.
            let otid = Tid(BATCHES - i as u64);
            let mut got: Vec<(Oid, Option<Tid>)> =
                txn.records.iter().map(|r| (r.oid, r.data_txn)).collect();
            got.sort();
            let want: Vec<(Oid, Option<Tid>)> = orig
                .iter()
                .filter(|(t, _)| *t == otid)
                .map(|(_, oid)| (*oid, Some(otid)))
                .collect();
            assert_eq!(got, want, "undo batch {i}");
            for r in &txn.records {
                assert_eq!(r.data, Some(d(&format!("{}", r.oid.0))));
            }
        }
        assert_consistent(&s);
    }

    #[test]
    fn undo_log_windows() {
        let s = mem();
        let mut tids = Vec::new();
        for i in 0..27u64 {
            tids.push(commit(&s, None, vec![store(i, Tid::ZERO, "x")]));
        }
        tids.reverse();
        let cases: &[(usize, usize, std::ops::Range<usize>)] = &[
            (0, 100_000, 0..27),
            (0, 20, 0..20),
            (0, 1, 0..1),
            (11, 17, 11..17),
            (26, 30, 26..27),
            (27, 30, 27..27),
            (5, 5, 5..5),
            (6, 5, 6..6),
        ];
        for (first, last, want) in cases {
            let got: Vec<Tid> = s
                .undo_log(*first, *last)
                .expect("log")
                .iter()
                .map(|e| e.tid)
                .collect();
            assert_eq!(got, tids[want.clone()].to_vec(), "[{first}, {last})");
        }
        let log = s.undo_log(0, 1).expect("log");
        assert_eq!(log[0].meta, meta("t"));
    }

    #[test]
    fn undo_window_stops_at_packed() {
        let e = |n: u64, status: u8| TxnEntry {
            tid: Tid(n),
            status,
            meta: TxnMeta::default(),
            records: vec![],
        };
        let newest_first = [e(6, b' '), e(5, b'u'), e(4, b' '), e(3, b'p'), e(2, b' ')];
        let got: Vec<Tid> = undo_window(newest_first.iter(), 0, 100)
            .into_iter()
            .map(|u| u.tid)
            .collect();
        assert_eq!(got, vec![Tid(6), Tid(4)]);
        let got: Vec<Tid> = undo_window(newest_first.iter(), 1, 100)
            .into_iter()
            .map(|u| u.tid)
            .collect();
        assert_eq!(got, vec![Tid(4)]);
    }

    // -- iteration --------------------------------------------------------------

    #[test]
    fn iterator_ranges() {
        // testExtendedIteration.
        let s = mem();
        let r: Vec<Tid> = (1..=4).map(|i| t(i * 10)).collect();
        let mut serial = Tid::ZERO;
        for (i, tid) in r.iter().enumerate() {
            serial = commit(
                &s,
                Some(*tid),
                vec![store(1, serial, &format!("{}", 11 + i))],
            );
        }
        let mid = |a: Tid, b: Tid| Tid((a.0 + b.0) / 2);
        let cases: Vec<(Option<Tid>, Option<Tid>, Vec<Tid>)> = vec![
            (None, None, r.clone()),
            (Some(r[0]), Some(r[3]), r.clone()),
            (Some(r[2]), None, r[2..].to_vec()),
            (None, Some(r[1]), r[..2].to_vec()),
            (Some(r[1]), Some(r[2]), r[1..3].to_vec()),
            (Some(r[1]), Some(mid(r[2], r[3])), r[1..3].to_vec()),
            (
                Some(mid(r[0], r[1])),
                Some(mid(r[2], r[3])),
                r[1..3].to_vec(),
            ),
            (Some(r[2]), Some(r[1]), vec![]),
            (Some(r[2]), Some(r[2]), vec![r[2]]),
            (Some(Tid::MAX), None, vec![]),
            (None, Some(Tid::ZERO), vec![]),
        ];
        for (start, stop, want) in cases {
            let got: Vec<TxnRecord> = s
                .iterator(start, stop)
                .expect("iterator")
                .map(|x| x.expect("txn"))
                .collect();
            let tids: Vec<Tid> = got.iter().map(|x| x.tid).collect();
            assert_eq!(tids, want, "{start:?}..={stop:?}");
            for txn in &got {
                let i = r.iter().position(|x| *x == txn.tid).expect("known tid");
                assert_eq!(
                    txn.records,
                    vec![DataRecord {
                        oid: o(1),
                        tid: txn.tid,
                        data: Some(d(&format!("{}", 11 + i))),
                        data_txn: None,
                    }]
                );
                assert_eq!(txn.status, b' ');
                assert_eq!(txn.meta, meta("t"));
            }
        }
    }

    #[test]
    fn iterator_is_a_snapshot() {
        // testIterateWhileWriting, and iteration during a prepared commit.
        let s = mem();
        commit(&s, None, vec![store(1, Tid::ZERO, "a")]);
        let mut it = s.iterator(None, None).expect("iterator");
        let v = s.tpc_vote(&txn(None, vec![store(2, Tid::ZERO, "b")]));
        assert!(matches!(v, Ok(Vote::Prepared { .. })));
        assert_eq!(s.iterator(None, None).expect("iterator").count(), 1);
        s.tpc_finish().expect("finish");
        assert!(it.next().is_some());
        assert!(it.next().is_none());
        assert_eq!(s.iterator(None, None).expect("iterator").count(), 2);
    }

    #[test]
    fn undo_zombie_iterates_with_no_data() {
        let s = mem();
        let a = commit(&s, None, vec![store(1, Tid::ZERO, "94")]);
        commit(&s, None, vec![undo(a)]);
        let last = records(&s).pop().expect("txn");
        assert_eq!(last.records.len(), 1);
        assert_eq!(last.records[0].oid, o(1));
        assert_eq!(last.records[0].data, None);
    }

    #[test]
    fn record_iternext_order() {
        let s = mem();
        let a = commit(
            &s,
            None,
            vec![
                store(5, Tid::ZERO, "five"),
                store(1, Tid::ZERO, "one"),
                store(3, Tid::ZERO, "three"),
                store(8, Tid::ZERO, "eight"),
            ],
        );
        let b = commit(
            &s,
            None,
            vec![
                Op::Delete {
                    oid: o(5),
                    serial: a,
                },
                store(3, a, "3"),
            ],
        );
        // Walk like ZEO's record_iternext loop.
        let mut got = Vec::new();
        let mut next = None;
        while let Some((oid, tid, data, following)) = s.record_iternext(next).expect("next") {
            got.push((oid, tid, String::from_utf8_lossy(&data).into_owned()));
            match following {
                Some(n) => next = Some(n),
                None => break,
            }
        }
        assert_eq!(
            got,
            vec![
                (o(1), a, "one".to_string()),
                (o(3), b, "3".to_string()),
                (o(8), a, "eight".to_string()),
            ]
        );
        type Case = (Option<u64>, Option<(u64, Option<u64>)>);
        let cases: &[Case] = &[
            (None, Some((1, Some(3)))),
            (Some(0), Some((1, Some(3)))),
            (Some(2), Some((3, Some(8)))),
            (Some(4), Some((8, None))), // 5 is deleted: skipped
            (Some(8), Some((8, None))),
            (Some(9), None),
        ];
        for (start, want) in cases {
            let got = s
                .record_iternext(start.map(Oid))
                .expect("next")
                .map(|(oid, _, _, n)| (oid.0, n.map(|x| x.0)));
            assert_eq!(got, *want, "from {start:?}");
        }
    }

    // -- restore ------------------------------------------------------------------

    #[test]
    fn restore_records() {
        let src = mem();
        let a = commit(&src, Some(t(1)), vec![store(1, Tid::ZERO, "a")]);
        let b = commit(&src, Some(t(2)), vec![store(1, a, "b")]);
        let u = commit(&src, Some(t(3)), vec![undo(b)]);
        let z = commit(&src, Some(t(4)), vec![undo(a)]);
        let _ = (u, z);
        // Copy everything, as copyTransactionsFrom / RAID recovery does.
        let dst = mem();
        for txn_rec in records(&src) {
            let (tid, resolved, inv) = commit_txn(&dst, restore_txn(&txn_rec));
            assert_eq!(tid, txn_rec.tid);
            assert!(resolved.is_empty());
            assert_eq!(inv.len(), txn_rec.records.len());
        }
        assert_eq!(records(&dst), records(&src));
        assert_eq!(value(&dst, 1), value(&src, 1));
        assert_consistent(&dst);
    }

    #[test]
    fn restore_backpointer_table() {
        let with = rev(Tid(1), Some("a"), None);
        let without = rev(Tid(2), None, None);
        type Case<'a> = (
            Option<&'a Revision>,
            Option<&'a str>,
            (Option<&'a str>, Option<Tid>),
        );
        let cases: Vec<Case> = vec![
            (None, Some("a"), (Some("a"), None)),
            (None, None, (None, None)),
            (Some(&with), Some("a"), (Some("a"), Some(Tid(1)))),
            (Some(&with), Some("other"), (Some("other"), None)),
            (Some(&with), None, (None, None)),
            (Some(&without), None, (None, Some(Tid(2)))),
            (Some(&without), Some("a"), (Some("a"), None)),
        ];
        for (prev, data, (want_data, want_txn)) in cases {
            let got = restore_backpointer(prev, &data.map(d));
            assert_eq!(got, (want_data.map(d), want_txn), "{prev:?} {data:?}");
        }
    }

    #[test]
    fn restore_checks() {
        let s = mem();
        // The serial must be the transaction's tid.
        let e = s.tpc_vote(&txn(
            Some(t(2)),
            vec![Op::Restore {
                oid: o(1),
                serial: t(1),
                data: Some(d("a")),
                prev_txn: None,
            }],
        ));
        assert!(matches!(e, Err(Error::Transaction(_))), "{e:?}");
        // A prev_txn this storage does not have is only a hint.
        commit(
            &s,
            Some(t(2)),
            vec![Op::Restore {
                oid: o(1),
                serial: t(2),
                data: Some(d("a")),
                prev_txn: Some(t(1)),
            }],
        );
        assert_eq!(records(&s)[0].records[0].data_txn, None);
        assert_eq!(value(&s, 1), "a");
        // No conflict check; a restored oid reserves the oid space.
        commit(
            &s,
            Some(t(3)),
            vec![Op::Restore {
                oid: o(40),
                serial: t(3),
                data: Some(d("x")),
                prev_txn: None,
            }],
        );
        assert_eq!(s.new_oids(1), Ok(vec![o(41)]));
        // A restored packed transaction ends the undo log.
        let mut tx = txn(Some(t(4)), vec![]);
        tx.status = b'p';
        commit_txn(&s, tx);
        commit(&s, Some(t(5)), vec![]);
        assert_eq!(undo_tids(&s), vec![t(5)]);
        assert_eq!(
            vote_err(&s, vec![undo(t(4))]),
            undo_err(UNDO_NOT_UNDOABLE, None)
        );
        assert_eq!(
            vote_err(&s, vec![undo(t(3))]),
            undo_err(UNDO_INVALID_TXN, None)
        );
    }

    // -- pack -------------------------------------------------------------------

    #[test]
    fn pack_cut_table() {
        let revs = vec![
            rev(Tid(10), Some("a"), None),
            rev(Tid(20), Some("b"), Some(Tid(10))),
            rev(Tid(30), None, None),
            rev(Tid(40), Some("d"), None),
        ];
        let cut = |drop, resolve| PackCut { drop, resolve };
        let cases = [
            (Tid(5), cut(0, false)),
            (Tid(10), cut(0, false)),
            (Tid(15), cut(0, false)),
            (Tid(20), cut(1, true)),
            (Tid(25), cut(1, true)),
            (Tid(30), cut(3, false)), // at-pack revision has no data: dropped
            (Tid(40), cut(3, false)),
            (Tid::MAX, cut(3, false)),
        ];
        for (packtid, want) in cases {
            assert_eq!(pack_cut(&revs, packtid), want, "pack at {packtid}");
        }
        let gone = vec![rev(Tid(10), Some("a"), None), rev(Tid(20), None, None)];
        assert_eq!(pack_cut(&gone, Tid(25)), cut(2, false));
        assert_eq!(pack_cut(&[], Tid(25)), cut(0, false));
    }

    /// One object, five revisions at t(10..50); which survive a pack at
    /// each time.
    #[test]
    fn pack_keeps_exactly_the_right_revisions() {
        let cases: &[(f64, &[u32])] = &[
            (at(5, 0.0), &[10, 20, 30, 40, 50]),
            (at(10, 0.0), &[10, 20, 30, 40, 50]),
            (at(15, 0.0), &[10, 20, 30, 40, 50]),
            (at(20, 0.5), &[20, 30, 40, 50]),
            (at(39, 0.0), &[30, 40, 50]),
            (at(50, 0.0), &[50]),
            (at(500, 0.0), &[50]),
        ];
        for (packtime, kept) in cases {
            let s = mem();
            let mut serial = Tid::ZERO;
            for i in 1..=5 {
                serial = commit(&s, Some(t(i * 10)), vec![store(1, serial, &i.to_string())]);
            }
            s.pack(*packtime, false).expect("pack");
            let kept: Vec<Tid> = kept.iter().map(|i| t(*i)).collect();
            assert_eq!(revisions(&s, 1), kept, "pack at {packtime}");
            for i in 1..=5u32 {
                let want = if kept.contains(&t(i * 10)) {
                    Ok(d(&i.to_string()))
                } else {
                    Err(Error::PosKey(o(1)))
                };
                assert_eq!(
                    s.load_serial(o(1), t(i * 10)),
                    want,
                    "pack at {packtime}, rev {i}"
                );
            }
            // Transactions before the pack time that lost their records vanish;
            // survivors up to the pack time are packed.
            let txns: Vec<(Tid, u8)> = records(&s).iter().map(|x| (x.tid, x.status)).collect();
            let packtid = timestamp::from_unix(*packtime).min(t(50));
            let want: Vec<(Tid, u8)> = kept
                .iter()
                .map(|t| (*t, if *t <= packtid { b'p' } else { b' ' }))
                .collect();
            assert_eq!(txns, want, "pack at {packtime}");
            assert_eq!(value(&s, 1), "5");
            assert_consistent(&s);
        }
    }

    #[test]
    fn pack_removes_deleted_objects() {
        let s = mem();
        let a = commit(
            &s,
            Some(t(1)),
            vec![store(1, Tid::ZERO, "a"), store(2, Tid::ZERO, "b")],
        );
        commit(
            &s,
            Some(t(2)),
            vec![Op::Delete {
                oid: o(1),
                serial: a,
            }],
        );
        // Object 3: created and its creation undone.
        let c = commit(&s, Some(t(3)), vec![store(3, Tid::ZERO, "c")]);
        commit(&s, Some(t(4)), vec![undo(c)]);
        // Object 4: deleted, then stored again after the pack time.
        let e = commit(&s, Some(t(5)), vec![store(4, Tid::ZERO, "e")]);
        commit(
            &s,
            Some(t(6)),
            vec![Op::Delete {
                oid: o(4),
                serial: e,
            }],
        );
        commit(&s, Some(t(8)), vec![store(4, t(6), "e2")]);
        assert_eq!(s.size_info().objects, 2);

        s.pack(at(7, 0.0), false).expect("pack");
        assert_eq!(s.history(o(1), 10), Err(Error::PosKey(o(1))));
        assert_eq!(s.history(o(3), 10), Err(Error::PosKey(o(3))));
        assert_eq!(s.history(o(2), 10).map(|h| h.len()), Ok(1));
        let h4: Vec<Tid> = s
            .history(o(4), 10)
            .expect("history")
            .iter()
            .map(|h| h.tid)
            .collect();
        assert_eq!(h4, vec![t(8)]);
        assert_eq!(s.load_before(o(4), t(8)), Ok(None));
        assert_eq!(value(&s, 4), "e2");
        // t(2), t(3), t(4), t(5), t(6) had only dropped records.
        let txns: Vec<(Tid, u8)> = records(&s).iter().map(|x| (x.tid, x.status)).collect();
        assert_eq!(txns, vec![(t(1), b'p'), (t(8), b' ')]);
        let first = &records(&s)[0];
        assert_eq!(
            first.records.iter().map(|r| r.oid).collect::<Vec<_>>(),
            vec![o(2)]
        );
        assert_eq!(
            s.size_info(),
            SizeInfo {
                objects: 2,
                bytes: 3
            }
        );
        assert_consistent(&s);
    }

    #[test]
    fn pack_resolves_backpointers() {
        let s = mem();
        let a = commit(&s, Some(t(1)), vec![store(1, Tid::ZERO, "a")]);
        let b = commit(&s, Some(t(2)), vec![store(1, a, "b")]);
        let u = commit(&s, Some(t(3)), vec![undo(b)]); // -> a, points at t(1)
        let r = commit(&s, Some(t(4)), vec![undo(u)]); // -> b, points at t(2)
        let _ = r;
        // Pack at t(3): t(3) survives (packed, pointer resolved); t(4) points
        // at t(2), which is dropped: resolved too.
        s.pack(at(3, 0.5), false).expect("pack");
        let txns = records(&s);
        let got: Vec<(Tid, u8, Option<Tid>, Option<Data>)> = txns
            .iter()
            .map(|x| {
                (
                    x.tid,
                    x.status,
                    x.records[0].data_txn,
                    x.records[0].data.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (t(3), b'p', None, Some(d("a"))),
                (t(4), b' ', None, Some(d("b")))
            ]
        );
        assert_eq!(value(&s, 1), "b");
        assert_consistent(&s);

        // A pointer to a surviving revision is kept.
        let s = mem();
        let a = commit(&s, Some(t(1)), vec![store(1, Tid::ZERO, "a")]);
        let b = commit(&s, Some(t(2)), vec![store(1, a, "b")]);
        commit(&s, Some(t(3)), vec![undo(b)]); // points at t(1)
        s.pack(at(1, 0.5), false).expect("pack");
        let txns = records(&s);
        assert_eq!(txns.len(), 3);
        assert_eq!(txns[2].records[0].data_txn, Some(t(1)));
        assert_consistent(&s);
    }

    #[test]
    fn pack_and_undo_log() {
        // testPackUndoLog and testTransactionalUndoAfterPack.
        let s = mem();
        let r0 = commit(&s, Some(t(1)), vec![store(0, Tid::ZERO, "root")]);
        let _ = r0;
        let r1 = commit(&s, Some(t(2)), vec![store(1, Tid::ZERO, "50")]);
        let r2 = commit(&s, Some(t(3)), vec![store(1, r1, "51")]);
        let r3 = commit(&s, Some(t(5)), vec![store(1, r2, "52")]);
        let r4 = commit(&s, Some(t(6)), vec![store(1, r3, "53")]);
        assert_eq!(undo_tids(&s).len(), 5);
        s.pack(at(4, 0.0), false).expect("pack");
        assert_eq!(undo_tids(&s), vec![r4, r3]);
        // Undo the last transaction: back to the second state.
        let (_, resolved, _) = commit_txn(&s, txn(None, vec![undo(r4)]));
        assert_eq!(resolved, vec![o(1)]);
        assert_eq!(value(&s, 1), "52");
        // Undoing a packed transaction, or one before it, is refused.
        assert_eq!(
            vote_err(&s, vec![undo(r2)]),
            undo_err(UNDO_NOT_UNDOABLE, None)
        );
        assert_eq!(
            vote_err(&s, vec![undo(r1)]),
            undo_err(UNDO_INVALID_TXN, None)
        );
        // Undoing r3 (its pre is the packed r2) works: back to "51".
        commit(&s, None, vec![undo(r3)]);
        assert_eq!(value(&s, 1), "51");
        assert_consistent(&s);
    }

    #[test]
    fn pack_edge_cases() {
        let s = mem();
        let a = commit(&s, Some(t(10)), vec![store(1, Tid::ZERO, "a")]);
        let b = commit(&s, Some(t(20)), vec![store(1, a, "b")]);
        // Yesterday: nothing to do.
        s.pack(at(0, 0.0), false).expect("pack");
        assert_eq!(records(&s).len(), 2);
        assert!(records(&s).iter().all(|x| x.status == b' '));
        // Invalid times.
        assert!(matches!(s.pack(f64::NAN, false), Err(Error::Value(_))));
        assert!(matches!(s.pack(f64::INFINITY, false), Err(Error::Value(_))));
        // Tomorrow: packs as of the last transaction.
        s.pack(timestamp::now() + 86_400.0, false).expect("pack");
        assert_eq!(s.history(o(1), 10).map(|h| h.len()), Ok(1));
        assert_eq!(
            records(&s)
                .iter()
                .map(|x| (x.tid, x.status))
                .collect::<Vec<_>>(),
            vec![(b, b'p')]
        );
        assert_eq!(undo_tids(&s), vec![]);
        // Commits after the pack are not touched by it, and the storage goes on.
        let c = commit(&s, None, vec![store(1, b, "c")]);
        assert_eq!(undo_tids(&s), vec![c]);
        // A redundant (earlier) pack is a no-op.
        s.pack(at(15, 0.0), false).expect("pack");
        assert_eq!(records(&s).len(), 2);
        assert_eq!(value(&s, 1), "c");
        assert_consistent(&s);
    }

    #[test]
    fn repeated_packs_after_undo() {
        // testPackAfterUndoManyTimes, with explicit times.
        let s = mem();
        let mut i = 1;
        let mut next = || {
            i += 1;
            Some(t(i * 10))
        };
        let a = commit(
            &s,
            next(),
            vec![store(0, Tid::ZERO, "root"), store(1, Tid::ZERO, "1")],
        );
        commit(&s, next(), vec![store(2, Tid::ZERO, "2")]);
        commit(&s, next(), vec![store(1, a, "3")]);
        let mut packtimes = Vec::new();
        for k in 0..10 {
            let last = undo_tids(&s)[0];
            let tid = commit(&s, next(), vec![undo(last)]);
            assert_eq!(value(&s, 1), if k % 2 == 1 { "3" } else { "1" });
            packtimes.push(timestamp::time_time(tid) + 1.0);
        }
        for p in packtimes {
            s.pack(p, false).expect("pack");
            assert_eq!(value(&s, 1), "3");
            assert_eq!(value(&s, 2), "2");
            assert_eq!(value(&s, 0), "root");
            assert_consistent(&s);
        }
        // Everything is packed: every object has one revision.
        for oid in 0..3 {
            assert_eq!(s.history(o(oid), 100).map(|h| h.len()), Ok(1));
        }
    }

    // -- pack with garbage collection ----------------------------------------

    /// A ZODB-like record: protocol 3, class `m.K`, state a tuple of
    /// `(oid, class)` references and the text `tag`.
    fn pk(refs: &[u64], tag: &str) -> Data {
        let mut v = b"\x80\x03cm\nK\nq\x00.\x80\x03(".to_vec();
        for r in refs {
            v.extend_from_slice(b"C\x08");
            v.extend_from_slice(&r.to_be_bytes());
            v.extend_from_slice(b"h\x00\x86Q");
        }
        v.push(0x8c);
        v.push(tag.len() as u8);
        v.extend_from_slice(tag.as_bytes());
        v.extend_from_slice(b"t.");
        Arc::from(v)
    }

    fn put(oid: u64, serial: Tid, refs: &[u64], tag: &str) -> Op {
        Op::Store {
            oid: o(oid),
            serial,
            data: pk(refs, tag),
        }
    }

    fn exists(s: &MemoryStorage, oid: u64) -> bool {
        s.history(o(oid), 1).is_ok()
    }

    #[test]
    fn gc_removes_unreachable_objects_and_cycles() {
        let s = mem();
        // 0 -> 1 -> 2; 3 alone; 4 <-> 5 a cycle nobody reaches; 6 -> 0
        // (reaches the root, but nothing reaches 6).
        let a = commit(
            &s,
            Some(t(10)),
            vec![
                put(0, Tid::ZERO, &[1], "root"),
                put(1, Tid::ZERO, &[2], "one"),
                put(2, Tid::ZERO, &[], "two"),
                put(3, Tid::ZERO, &[], "three"),
                put(4, Tid::ZERO, &[5], "four"),
                put(5, Tid::ZERO, &[4], "five"),
                put(6, Tid::ZERO, &[0], "six"),
            ],
        );
        commit(&s, Some(t(20)), vec![put(1, a, &[2], "one'")]);
        assert_eq!(s.size_info().objects, 7);
        s.pack(at(30, 0.0), true).expect("pack");
        for oid in 0..=2 {
            assert!(exists(&s, oid), "{oid} is reachable");
        }
        for oid in 3..=6 {
            assert!(!exists(&s, oid), "{oid} is garbage");
            assert_eq!(s.load_before(o(oid), Tid::MAX), Err(Error::PosKey(o(oid))));
        }
        assert_eq!(revisions(&s, 1), vec![t(20)]);
        assert_eq!(s.size_info().objects, 3);
        let recs = records(&s);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].records.len(), 2, "t10 keeps 0 and 2");
        assert!(recs.iter().all(|r| r.status == b'p'));
        assert_consistent(&s);
        // The same pack without GC would have kept everything.
        let s2 = mem();
        commit(
            &s2,
            Some(t(10)),
            vec![put(0, Tid::ZERO, &[], "root"), put(3, Tid::ZERO, &[], "x")],
        );
        s2.pack(at(30, 0.0), false).expect("pack");
        assert!(exists(&s2, 3));
    }

    #[test]
    fn gc_follows_the_state_at_the_pack_time() {
        let s = mem();
        let a = commit(
            &s,
            Some(t(10)),
            vec![
                put(0, Tid::ZERO, &[1, 3], "root"),
                put(1, Tid::ZERO, &[], "one"),
                put(2, Tid::ZERO, &[], "two"),
                put(3, Tid::ZERO, &[], "three"),
                put(4, Tid::ZERO, &[], "four"),
            ],
        );
        // After the pack time (t25): root drops 1 and links 4; 2, unreachable
        // at the pack time, is modified; 7 is created unreachable.
        let b = commit(&s, Some(t(30)), vec![put(0, a, &[3, 4], "root'")]);
        commit(
            &s,
            Some(t(40)),
            vec![put(2, a, &[], "two'"), put(7, Tid::ZERO, &[], "seven")],
        );
        s.pack(at(25, 0.0), true).expect("pack");
        // Reachable at the pack time: kept, although unlinked later.
        assert_eq!(revisions(&s, 1), vec![t(10)]);
        assert_eq!(revisions(&s, 3), vec![t(10)]);
        assert_eq!(revisions(&s, 0), vec![t(10), b]);
        // Written after the pack time: those revisions are kept, the old
        // unreachable one goes (FileStorage drops it too).
        assert_eq!(revisions(&s, 2), vec![t(40)]);
        assert_eq!(revisions(&s, 7), vec![t(40)]);
        assert!(value(&s, 2).contains("two'"));
        // Unreachable at the pack time and only linked later, never
        // rewritten: FileStorage's GC removes it as well (pack times must
        // lie before anything a client may still link).
        assert!(!exists(&s, 4));
        assert_consistent(&s);
    }

    #[test]
    fn gc_keeps_what_a_later_undo_brings_back() {
        // testPackUnlinkedFromRoot's shape with explicit times: root links 1,
        // then unlinks it; after the pack time that unlink is undone.
        let s = mem();
        let a = commit(
            &s,
            Some(t(10)),
            vec![
                put(0, Tid::ZERO, &[1], "root"),
                put(1, Tid::ZERO, &[2], "one"),
                put(2, Tid::ZERO, &[], "two"),
            ],
        );
        let b = commit(&s, Some(t(20)), vec![put(0, a, &[], "root'")]);
        let c = commit(&s, Some(t(30)), vec![undo(b)]);
        assert_eq!(s.read().revision(o(0), c).and_then(|r| r.data_txn), Some(a));
        s.pack(at(25, 0.0), true).expect("pack");
        // 1 and 2 were unreachable at t25, but the undo at t30 points back
        // at root@t10, whose references are followed (fspack's extra roots),
        // and root@t10 itself is kept.
        assert_eq!(revisions(&s, 0), vec![a, b, c]);
        assert_eq!(revisions(&s, 1), vec![a]);
        assert_eq!(revisions(&s, 2), vec![a]);
        assert_eq!(s.load_serial(o(0), a), Ok(pk(&[1], "root")));
        assert_eq!(
            s.load_before(o(1), Tid::MAX).map(|l| l.map(|l| l.data)),
            Ok(Some(pk(&[2], "one")))
        );
        assert_consistent(&s);
        // Without the undo they would have gone.
        let s = mem();
        let a = commit(
            &s,
            Some(t(10)),
            vec![
                put(0, Tid::ZERO, &[1], "root"),
                put(1, Tid::ZERO, &[], "one"),
            ],
        );
        commit(&s, Some(t(20)), vec![put(0, a, &[], "root'")]);
        s.pack(at(25, 0.0), true).expect("pack");
        assert!(!exists(&s, 1));
        assert_eq!(revisions(&s, 0), vec![t(20)]);
        assert_consistent(&s);
    }

    #[test]
    fn gc_refuses_what_it_cannot_read() {
        // An unreadable reachable record fails the pack and changes nothing.
        let s = mem();
        let a = commit(
            &s,
            Some(t(10)),
            vec![
                put(0, Tid::ZERO, &[1], "root"),
                store(1, Tid::ZERO, "not a pickle"),
                put(2, Tid::ZERO, &[], "garbage"),
            ],
        );
        commit(&s, Some(t(20)), vec![put(0, a, &[1], "root'")]);
        match s.pack(at(30, 0.0), true) {
            Err(Error::Value(m)) => assert!(m.contains("0x0000000000000001"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(revisions(&s, 0), vec![t(10), t(20)]);
        assert!(exists(&s, 2));
        assert!(records(&s).iter().all(|r| r.status == b' '));
        // An unreadable unreachable record is simply garbage.
        let s = mem();
        commit(
            &s,
            Some(t(10)),
            vec![put(0, Tid::ZERO, &[], "root"), store(1, Tid::ZERO, "junk")],
        );
        s.pack(at(30, 0.0), true).expect("pack");
        assert!(!exists(&s, 1));
        assert_consistent(&s);
    }

    #[test]
    fn gc_without_a_root() {
        // Objects but no root at the pack time: refused (FileStorage's
        // KeyError), nothing changed.
        let s = mem();
        commit(&s, Some(t(10)), vec![put(1, Tid::ZERO, &[], "one")]);
        assert!(matches!(s.pack(at(30, 0.0), true), Err(Error::Value(_))));
        assert!(exists(&s, 1));
        // Nothing at the pack time yet: nothing to do.
        let s = mem();
        commit(&s, Some(t(10)), vec![put(0, Tid::ZERO, &[1], "root")]);
        commit(&s, Some(t(20)), vec![put(1, Tid::ZERO, &[], "one")]);
        s.pack(at(5, 0.0), true).expect("pack");
        assert!(exists(&s, 0) && exists(&s, 1));
        // Root deleted (no data) at the pack time while others live: refused.
        let s = mem();
        let a = commit(
            &s,
            Some(t(10)),
            vec![
                put(0, Tid::ZERO, &[], "root"),
                put(1, Tid::ZERO, &[], "one"),
            ],
        );
        commit(
            &s,
            Some(t(20)),
            vec![Op::Delete {
                oid: o(0),
                serial: a,
            }],
        );
        assert!(matches!(s.pack(at(30, 0.0), true), Err(Error::Value(_))));
        assert!(exists(&s, 1));
    }

    #[test]
    fn pack_keep_table() {
        let revs = vec![
            rev(Tid(10), Some("a"), None),
            rev(Tid(20), Some("b"), None),
            rev(Tid(30), Some("c"), None),
        ];
        let none = |_: Tid| None;
        assert_eq!(pack_keep(&revs, Tid(25), none), vec![false, true, true]);
        assert_eq!(pack_keep(&revs, Tid(5), none), vec![true, true, true]);
        let gc_drop = |_: Tid| Some(false);
        assert_eq!(pack_keep(&revs, Tid(25), gc_drop), vec![false, false, true]);
        let gc_first = |t: Tid| Some(t == Tid(10));
        assert_eq!(pack_keep(&revs, Tid(25), gc_first), vec![true, false, true]);
        assert_eq!(
            pack_keep(&revs, Tid::MAX, gc_first),
            vec![true, false, false]
        );
        assert_eq!(pack_keep(&[], Tid(25), gc_first), Vec::<bool>::new());
    }

    #[test]
    fn current_at_table() {
        let revs = vec![
            rev(Tid(10), Some("a"), None),
            rev(Tid(20), None, None),
            rev(Tid(30), Some("c"), Some(Tid(10))),
        ];
        let cases = [
            (Tid(5), None),
            (Tid(10), Some((Tid(10), d("a")))),
            (Tid(25), None),
            (Tid(30), Some((Tid(30), d("c")))),
        ];
        for (packtid, want) in cases {
            assert_eq!(current_at(&revs, packtid), want, "{packtid}");
        }
    }

    #[test]
    fn pack_with_a_prepared_transaction() {
        let s = mem();
        let a = commit(&s, Some(t(1)), vec![store(1, Tid::ZERO, "a")]);
        let b = commit(&s, Some(t(2)), vec![store(1, a, "b")]);
        let c = commit(&s, Some(t(3)), vec![store(1, b, "c")]);
        // Vote an undo of c (points back at b), then pack b away.
        let v = s.tpc_vote(&txn(None, vec![undo(c), store(2, Tid::ZERO, "n")]));
        assert!(matches!(v, Ok(Vote::Prepared { .. })), "{v:?}");
        s.pack(at(3, 0.5), false).expect("pack");
        let tid = s.tpc_finish().expect("finish");
        assert_eq!(current(&s, 1), Ok(("b".to_string(), tid)));
        // The pointer to the dropped revision was resolved at finish.
        let last = records(&s).pop().expect("txn");
        assert_eq!(last.records[0].data_txn, None);
        assert_consistent(&s);
    }

    #[test]
    fn size_info_counts() {
        let s = mem();
        let a = commit(
            &s,
            None,
            vec![store(1, Tid::ZERO, "aa"), store(2, Tid::ZERO, "bbb")],
        );
        assert_eq!(
            s.size_info(),
            SizeInfo {
                objects: 2,
                bytes: 5
            }
        );
        let b = commit(&s, None, vec![store(1, a, "a")]);
        assert_eq!(
            s.size_info(),
            SizeInfo {
                objects: 2,
                bytes: 6
            }
        );
        commit(
            &s,
            None,
            vec![Op::Delete {
                oid: o(2),
                serial: a,
            }],
        );
        assert_eq!(
            s.size_info(),
            SizeInfo {
                objects: 1,
                bytes: 6
            }
        );
        commit(&s, None, vec![undo(b)]);
        assert_eq!(
            s.size_info(),
            SizeInfo {
                objects: 1,
                bytes: 8
            }
        );
        assert_consistent(&s);
    }

    // -- concurrency --------------------------------------------------------------

    #[test]
    fn loads_proceed_during_a_prepared_commit_and_packs() {
        let s = Arc::new(mem());
        let mut serial = commit(s.as_ref(), None, vec![store(1, Tid::ZERO, "0")]);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Readers start before the commits do, and load at least once.
        let started = Arc::new(std::sync::Barrier::new(3));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let s = Arc::clone(&s);
                let stop = Arc::clone(&stop);
                let started = Arc::clone(&started);
                std::thread::spawn(move || {
                    started.wait();
                    let mut last = 0u64;
                    let mut loads = 0u64;
                    loop {
                        let l = s.load_before(o(1), Tid::MAX).ok().flatten();
                        let v: u64 = l
                            .and_then(|l| std::str::from_utf8(&l.data).ok()?.parse().ok())
                            .unwrap_or(u64::MAX);
                        assert!(v >= last && v != u64::MAX, "went back: {v} < {last}");
                        last = v;
                        loads += 1;
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            return loads;
                        }
                    }
                })
            })
            .collect();
        started.wait();
        for i in 1..200u64 {
            let v = s.tpc_vote(&txn(None, vec![store(1, serial, &i.to_string())]));
            let Ok(Vote::Prepared { tid, .. }) = v else {
                panic!("{v:?}");
            };
            // Loads see the previous state until finish.
            assert_eq!(value(&s, 1), (i - 1).to_string());
            if i % 50 == 0 {
                s.pack(timestamp::now() + 1.0, false).expect("pack");
            }
            assert_eq!(s.tpc_finish(), Ok(tid));
            serial = tid;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in readers {
            assert!(r.join().expect("reader") > 0);
        }
        assert_eq!(value(&s, 1), "199");
        assert_consistent(&s);
    }
}
