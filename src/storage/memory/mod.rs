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
mod tests;
