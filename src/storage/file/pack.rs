//! Pack (ZODB's `fspack`): copy into `Data.fs.pack`, then swap it in.
//!
//! 1. Plan, without locks: scan the transactions up to the pack time and
//!    find each object's current record as of then. Without garbage
//!    collection, those with data survive (the memory storage's rule). With
//!    it ([`crate::storage::gc`], FileStorage's `GC`), the records of objects
//!    reachable from the root at the pack time survive, plus old records
//!    that later records point back at (`findReachableFromFuture`).
//! 2. Copy, without locks (commits continue): surviving old records go into
//!    transactions marked `'p'` with their data inline (no backpointers, as
//!    fspack's `writePackedDataRecord`, but with previous pointers); transactions
//!    left empty disappear. Later transactions are copied whole; their
//!    backpointers are kept when the target record was copied (translated
//!    to its new position) and resolved to inline data otherwise (the
//!    memory storage's rule).
//!    Nothing dropped, nothing to resolve and nothing left unpacked: the
//!    copy is thrown away and the pack does nothing.
//! 3. Under the storage's commit mutex, copy what was committed meanwhile
//!    (and a voted transaction, still `'c'`, which then finishes or aborts
//!    in the new file), fsync, rename `Data.fs` to `Data.fs.old` and
//!    `Data.fs.pack` to `Data.fs`, and install the new file and index at
//!    once. Loads holding the old file keep reading it.
//!
//! Transactions committed during step 2 do not take part in garbage
//! collection (the memory storage decides under its write lock): a record
//! among them pointing back at a revision dropped by the pack gets its data
//! inline, so nothing is lost, only that backpointer.

use crate::locks::lock;
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use super::format::{DataHeader, TxnHeader, DATA_HDR_LEN, MAGIC, STATUS_PACKED, STATUS_UNDONE};
use super::index::Index;
use super::records::{corrupt, io_err, Src};
use super::{with_suffix, FileStorage};
use crate::storage::gc::{self, GcError, PackGc};
use crate::storage::rules::{self, gc_error};
use crate::storage::{pickle_refs, Data, Error, Oid, Result, Tid};

/// How long the pack swap waits for logged transactions to be published.
const PUBLISH_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Copy what was committed during the pack without locks while more than
/// this many bytes are left.
const CATCH_UP_UNLOCKED: u64 = 1 << 20;

/// Which old records (up to the pack time) survive.
enum Keep {
    /// Positions of the current records with data.
    Current(HashSet<u64>),
    /// Garbage collection's verdict, by (oid, position).
    Gc(PackGc<u64>),
}

impl Keep {
    fn keeps(&self, oid: Oid, pos: u64) -> bool {
        match self {
            Keep::Current(set) => set.contains(&pos),
            Keep::Gc(g) => g.keeps(oid, pos),
        }
    }
}

/// The plan of step 1.
struct Plan {
    /// End of the last transaction with tid <= packtid.
    packpos: u64,
    keep: Keep,
    /// Positions referenced by backpointers after `packpos`.
    targets: HashSet<u64>,
    /// Transactions up to the pack time not yet marked packed.
    unpacked: usize,
}

/// Whether a pack changed anything, from what the copy counted.
fn pack_has_work(unpacked_txns: usize, dropped: usize, inline_backpointers: usize) -> bool {
    unpacked_txns > 0 || dropped > 0 || inline_backpointers > 0
}

/// Iterate transactions `[from, to)`: (position, header).
fn for_txns(
    src: Src<'_>,
    from: u64,
    to: u64,
    mut f: impl FnMut(u64, &TxnHeader) -> Result<bool>,
) -> Result<u64> {
    let mut pos = from;
    while pos < to {
        let h = src.txn_header(pos)?;
        if !f(pos, &h)? {
            return Ok(pos);
        }
        pos = pos.saturating_add(h.tlen).saturating_add(8);
    }
    Ok(pos)
}

/// Iterate the data records of a transaction: (position, header).
fn for_records(
    src: Src<'_>,
    tpos: u64,
    th: &TxnHeader,
    mut f: impl FnMut(u64, &DataHeader) -> Result<()>,
) -> Result<()> {
    let tend = tpos.saturating_add(th.tlen);
    let mut pos = tpos + th.header_len();
    while pos < tend {
        let h = src.data_header(pos)?;
        if pos.saturating_add(h.record_len()) > tend {
            return Err(corrupt(
                src.name,
                pos,
                "data record exceeds transaction record",
            ));
        }
        f(pos, &h)?;
        pos = pos.saturating_add(h.record_len());
    }
    Ok(())
}

fn plan(src: Src<'_>, end: u64, packtid: Tid, collect: bool) -> Result<Plan> {
    // oid -> (position, has data) of the current record at the pack time.
    let mut cur: HashMap<Oid, (u64, bool)> = HashMap::new();
    let mut unpacked = 0;
    let packpos = for_txns(src, 4, end, |tpos, th| {
        if th.tid > packtid {
            return Ok(false);
        }
        if th.status != STATUS_PACKED {
            unpacked += 1;
        }
        if th.status != STATUS_UNDONE {
            for_records(src, tpos, th, |pos, h| {
                cur.insert(h.oid, (pos, src.record_has_data(h)?));
                Ok(())
            })?;
        }
        Ok(true)
    })?;
    // Backpointers of later records, in commit order.
    let mut backs: Vec<(Oid, u64)> = Vec::new();
    for_txns(src, packpos, end, |tpos, th| {
        if th.status != STATUS_UNDONE {
            for_records(src, tpos, th, |_, h| {
                if h.plen == 0 && h.back != 0 {
                    backs.push((h.oid, h.back));
                }
                Ok(())
            })?;
        }
        Ok(true)
    })?;
    let targets: HashSet<u64> = backs.iter().map(|(_, b)| *b).collect();
    let keep = if collect {
        Keep::Gc(collect_garbage(src, &cur, packpos, &backs)?)
    } else {
        Keep::Current(
            cur.values()
                .filter(|(_, has)| *has)
                .map(|(p, _)| *p)
                .collect(),
        )
    };
    Ok(Plan {
        packpos,
        keep,
        targets,
        unpacked,
    })
}

/// FileStorage's pack GC over file positions (see [`crate::storage::gc`]).
fn collect_garbage(
    src: Src<'_>,
    cur: &HashMap<Oid, (u64, bool)>,
    packpos: u64,
    backs: &[(Oid, u64)],
) -> Result<PackGc<u64>> {
    let mut failed: Option<Error> = None;
    let mut current = |oid: Oid| -> Option<(u64, Data)> {
        let (pos, has) = cur.get(&oid).copied()?;
        if !has {
            return None;
        }
        let loaded = src.data_header(pos).and_then(|h| src.record_data(pos, &h));
        match loaded {
            Ok(d) => d.map(|d| (pos, d)),
            Err(e) => {
                failed.get_or_insert(e);
                None
            }
        }
    };
    let mut g = PackGc::new();
    g.mark_from([gc::ROOT], &mut current).map_err(gc_error)?;
    if !g.is_reachable(gc::ROOT) {
        // FileStorage refuses (KeyError) unless nothing exists then.
        if let Some((oid, _)) = cur.iter().find(|(_, (_, has))| *has) {
            return Err(rules::gc_without_root(*oid));
        }
    }
    let mut extra = Vec::new();
    for (oid, back) in backs {
        if *back < packpos && g.note_future_backpointer(*oid, *back) {
            extra.push((*oid, *back));
        }
    }
    for (oid, back) in extra {
        let Some((data, _)) = src.load_back(back)? else {
            continue;
        };
        let refs = pickle_refs::references(&data)
            .map_err(|error| gc_error(GcError::Unreadable { oid, error }))?;
        g.mark_from(refs, &mut current).map_err(gc_error)?;
    }
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(g)
}

/// The output file being written, with the new index and position map.
struct Out {
    w: BufWriter<File>,
    name: String,
    pos: u64,
    index: Index,
    /// old position → new position, for backpointer targets.
    moved: HashMap<u64, u64>,
    /// Old records dropped, backpointers resolved to inline data.
    dropped: usize,
    inlined: usize,
}

impl Out {
    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.w
            .write_all(b)
            .map_err(|e| io_err(&self.name, self.pos, &e))?;
        self.pos += b.len() as u64;
        Ok(())
    }

    /// Copy one transaction; `packed`: only records in `keep`, data inline,
    /// status 'p', dropped when empty. With `install`, the new positions go
    /// into the new index; they are returned either way.
    fn copy_txn(
        &mut self,
        src: Src<'_>,
        tpos: u64,
        th: &TxnHeader,
        packed: Option<&Keep>,
        targets: &HashSet<u64>,
        install: bool,
    ) -> Result<Vec<(Oid, u64, bool)>> {
        let var = src.read_vec(
            tpos + super::format::TXN_HDR_LEN,
            th.header_len() - super::format::TXN_HDR_LEN,
        )?;
        let new_tpos = self.pos;
        let mut body: Vec<u8> = Vec::new();
        let mut updates: Vec<(Oid, u64, bool, u64)> = Vec::new();
        let head_len = th.header_len();
        for_records(src, tpos, th, |pos, h| {
            if let Some(keep) = packed {
                if !keep.keeps(h.oid, pos) {
                    self.dropped += 1;
                    return Ok(());
                }
            }
            let here = new_tpos + head_len + body.len() as u64;
            let (payload, back, has) = if h.plen != 0 {
                (Some(src.read_vec(pos + DATA_HDR_LEN, h.plen)?), 0, true)
            } else if h.back == 0 {
                (None, 0, false)
            } else {
                let found = match (packed, self.moved.get(&h.back)) {
                    (Some(_), _) => None,
                    (None, Some(nb)) => Some(*nb),
                    (None, None) => self.find_copied(src, h.back)?,
                };
                match found {
                    Some(nb) => (None, nb, src.record_has_data(h)?),
                    None => {
                        self.inlined += 1;
                        match src.load_back(h.back)? {
                            Some((d, _)) => (Some(d.to_vec()), 0, true),
                            None => (None, 0, false),
                        }
                    }
                }
            };
            // Unlike fspack (which writes 0 for packed records), keep the
            // chain: garbage collection may keep two old revisions.
            let prev = updates
                .iter()
                .rev()
                .find(|u| u.0 == h.oid)
                .map(|u| u.1)
                .or_else(|| self.index.pos(h.oid))
                .unwrap_or(0);
            let dh = DataHeader {
                oid: h.oid,
                tid: h.tid,
                prev,
                tloc: new_tpos,
                vlen: 0,
                plen: payload.as_ref().map_or(0, |d| d.len() as u64),
                back,
            };
            dh.encode_into(&mut body);
            if let Some(d) = &payload {
                body.extend_from_slice(d);
            }
            updates.push((h.oid, here, has, pos));
            Ok(())
        })?;
        if packed.is_some() && updates.is_empty() {
            return Ok(Vec::new());
        }
        let tlen = head_len + body.len() as u64;
        let nh = TxnHeader {
            tlen,
            status: if packed.is_some() {
                STATUS_PACKED
            } else {
                th.status
            },
            ..*th
        };
        self.put(&nh.encode())?;
        self.put(&var)?;
        self.put(&body)?;
        self.put(&tlen.to_be_bytes())?;
        if install && th.status != STATUS_UNDONE {
            for (oid, here, has, old) in &updates {
                self.index.set(*oid, *here, *has);
                if targets.contains(old) {
                    self.moved.insert(*old, *here);
                }
            }
        }
        Ok(updates.into_iter().map(|(o, p, h, _)| (o, p, h)).collect())
    }

    /// The new position of the old record at `old`, if it was copied:
    /// walk its object's chain in the new file to the record with its tid.
    fn find_copied(&mut self, src: Src<'_>, old: u64) -> Result<Option<u64>> {
        let target = src.data_header(old)?;
        let Some(mut pos) = self.index.pos(target.oid) else {
            return Ok(None);
        };
        self.w
            .flush()
            .map_err(|e| io_err(&self.name, self.pos, &e))?;
        let new = Src {
            file: self.w.get_ref(),
            name: &self.name,
        };
        loop {
            let h = new.data_header(pos)?;
            if h.tid == target.tid {
                return Ok(Some(pos));
            }
            if h.tid < target.tid || h.prev == 0 || h.prev >= pos {
                return Ok(None);
            }
            pos = h.prev;
        }
    }

    fn copy_range(
        &mut self,
        src: Src<'_>,
        from: u64,
        to: u64,
        targets: &HashSet<u64>,
    ) -> Result<()> {
        for_txns(src, from, to, |tpos, th| {
            self.copy_txn(src, tpos, th, None, targets, true)?;
            Ok(true)
        })?;
        Ok(())
    }
}

impl FileStorage {
    /// Wait (holding the commit mutex, so no more are logged) until every
    /// logged transaction is published: their positions are in the old file.
    /// Publication needs neither that mutex nor the pack lock.
    fn wait_published(&self) -> Result<()> {
        let deadline = std::time::Instant::now() + PUBLISH_WAIT;
        loop {
            self.check_not_broken()?;
            if self.read().pending.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::Io(format!(
                    "{}: pack gave up waiting {PUBLISH_WAIT:?} for committed transactions \
                     to be published; the pack is abandoned, try it again",
                    self.name
                )));
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }

    /// Pack as of `requested`, clamped to the last transaction.
    pub(super) fn pack_to(&self, requested: Tid, collect: bool) -> Result<()> {
        let _packing = lock(&self.pack_lock);
        let (file, end, last_tid) = {
            let st = self.read();
            if st.index.is_empty() {
                return Ok(());
            }
            (st.file.clone(), st.pos, st.last_tid)
        };
        let mut last_pack = lock(&self.pack_tid);
        // Clamped to the last transaction; not later than the previous pack:
        // nothing to do ([`rules::pack_tid`], as the memory storage).
        let Some(packtid) = rules::pack_tid(requested, last_tid, *last_pack) else {
            return Ok(());
        };
        let src = Src {
            file: &file,
            name: &self.name,
        };
        let plan = plan(src, end, packtid, collect)?;
        let pack_path = with_suffix(&self.path, ".pack");
        let result = self.write_pack(src, end, &plan, &pack_path);
        if !matches!(result, Ok(true)) {
            let _ = std::fs::remove_file(&pack_path);
        }
        if result.is_ok() {
            *last_pack = Some(packtid);
        }
        if matches!(result, Ok(true)) {
            match self.sweep_blobs(packtid) {
                Ok(0) => {}
                Ok(n) => log::info!("{}: pack removed {n} blob file(s)", self.name),
                // The pack itself succeeded; what is left is only space.
                Err(e) => log::error!(
                    "{}: pack could not remove the blob files of removed revisions: {e}; \
                     they stay on disk until the next pack",
                    self.name
                ),
            }
        }
        result.map(|_| ())
    }

    /// Steps 2 and 3; `Ok(false)` when the pack would change nothing.
    fn write_pack(&self, src: Src<'_>, end: u64, plan: &Plan, pack_path: &Path) -> Result<bool> {
        let pack_name = pack_path.display().to_string();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(pack_path)
            .map_err(|e| Error::Io(format!("{pack_name}: {e}")))?;
        let mut out = Out {
            w: BufWriter::with_capacity(1 << 20, f),
            name: pack_name.clone(),
            pos: 0,
            index: Index::default(),
            moved: HashMap::new(),
            dropped: 0,
            inlined: 0,
        };
        // Keep the magic of the source (as fspack copies the metadata).
        let mut magic = *MAGIC;
        src.read_exact(0, &mut magic)?;
        out.put(&magic)?;
        for_txns(src, 4, plan.packpos, |tpos, th| {
            if th.status != STATUS_UNDONE {
                out.copy_txn(src, tpos, th, Some(&plan.keep), &plan.targets, true)?;
            }
            Ok(true)
        })?;
        out.copy_range(src, plan.packpos, end, &plan.targets)?;
        if !pack_has_work(plan.unpacked, out.dropped, out.inlined) {
            return Ok(false);
        }

        // Catch up without locks while much was committed meanwhile.
        // Transactions committed during the pack may point back at any
        // record: those not mapped are resolved to inline data.
        let mut copied = end;
        loop {
            let now_end = self.read().pos;
            if now_end.saturating_sub(copied) < CATCH_UP_UNLOCKED {
                break;
            }
            out.copy_range(src, copied, now_end, &HashSet::new())?;
            copied = now_end;
        }
        // Step 3: hold the commit mutex (votes and finishes wait for it only
        // while the last few transactions are copied). A voted transaction
        // moves along: its records are copied after the committed ones, and
        // it is re-pointed there once the new file is in place (waiting for
        // its finish instead could deadlock: the client that asked for the
        // pack may be the one that has to send it).
        let mut slot = self.slot();
        self.wait_published()?;
        let now_end = self.read().pos;
        if now_end > copied {
            out.copy_range(src, copied, now_end, &HashSet::new())?;
        }
        let new_end = out.pos;
        let moved_prepared = match slot.as_ref() {
            Some(p) => {
                let th = src.txn_header(p.start)?;
                let updates = out.copy_txn(src, p.start, &th, None, &HashSet::new(), false)?;
                Some((new_end, out.pos, updates))
            }
            None => None,
        };
        let f = out
            .w
            .into_inner()
            .map_err(|e| Error::Io(format!("{pack_name}: {}", e.error())))?;
        f.sync_all().map_err(|e| io_err(&pack_name, new_end, &e))?;
        let old_path = with_suffix(&self.path, ".old");
        // No index file of the old file may be written after this point.
        let saving = lock(&self.save_lock);
        let _ = std::fs::remove_file(self.index_path());
        // Python's own index of the old file would not match the new one.
        let _ = std::fs::remove_file(with_suffix(&self.path, ".index"));
        let _ = std::fs::remove_file(&old_path);
        std::fs::rename(&self.path, &old_path)
            .map_err(|e| Error::Io(format!("{}: cannot rename to .old: {e}", self.name)))?;
        if let Err(e) = std::fs::rename(pack_path, &self.path) {
            // Put the original back; the pack is abandoned.
            let _ = std::fs::rename(&old_path, &self.path);
            return Err(Error::Io(format!("{pack_name}: cannot rename: {e}")));
        }
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        {
            let mut st = self.write();
            st.file = Arc::new(f);
            st.index = out.index;
            st.pos = new_end;
            st.tail = new_end;
            st.generation += 1;
        }
        if let (Some(p), Some((start, end, updates))) = (slot.as_mut(), moved_prepared) {
            p.start = start;
            p.end = end;
            p.updates = updates;
        }
        drop(slot);
        drop(saving);
        self.save_index();
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_has_work_table() {
        let cases = [
            ((0, 0, 0), false),
            ((1, 0, 0), true),
            ((0, 1, 0), true),
            ((0, 0, 1), true),
        ];
        for ((u, d, b), want) in cases {
            assert_eq!(pack_has_work(u, d, b), want, "{u} {d} {b}");
        }
    }
}
