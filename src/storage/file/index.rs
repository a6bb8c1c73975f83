//! The object index (oid → position of the current data record), how it is
//! rebuilt by scanning `Data.fs` (ZODB's `read_index`, including its rules
//! for discarding an unfinished trailing transaction), and the index file
//! that saves the scan at the next open.
//!
//! Memory: a `BTreeMap<u64, u64>` costs about 25–35 bytes per object (16
//! bytes of key and value, B-tree nodes about two-thirds full). The top bit
//! of the position marks a current record without data (deleted object or
//! undone creation), so no other per-object state is kept.
//!
//! The index file (`Data.fs.zeoraid-index`, our own format, not Python's
//! `.index` pickle): magic `ZRAIDIX1`, the file position the index is valid
//! up to, the last tid, the entry count, the entries (oid, position) — all
//! u64 big-endian — and an FNV-1a 64 checksum of everything before it. It
//! is used only if the checksum holds, the position is within the file and
//! the transaction ending there has the saved tid; the tail after it is
//! scanned as usual.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::ops::Bound;
use std::path::Path;

use super::format::{
    check_data, junk_at_end, txn_verdict, valid_status, DataHeader, TxnHeader, TxnVerdict,
    DATA_HDR_LEN, STATUS_UNDONE, TXN_HDR_LEN,
};
use super::records::{corrupt, io_err, Src, Window};
use crate::storage::{Oid, Result, Tid};

const NO_DATA: u64 = 1 << 63;
const INDEX_MAGIC: &[u8; 8] = b"ZRAIDIX1";

/// oid → current record position, plus the count of objects with data.
#[derive(Default, Clone, Debug, PartialEq)]
pub struct Index {
    map: BTreeMap<u64, u64>,
    live: u64,
}

impl Index {
    /// (position, has data) of the current record.
    pub fn get(&self, oid: Oid) -> Option<(u64, bool)> {
        self.map
            .get(&oid.0)
            .map(|e| (e & !NO_DATA, e & NO_DATA == 0))
    }

    pub fn pos(&self, oid: Oid) -> Option<u64> {
        self.get(oid).map(|(p, _)| p)
    }

    pub fn set(&mut self, oid: Oid, pos: u64, has_data: bool) {
        let entry = if has_data { pos } else { pos | NO_DATA };
        let old = self.map.insert(oid.0, entry);
        let was = old.is_some_and(|e| e & NO_DATA == 0);
        match (was, has_data) {
            (false, true) => self.live += 1,
            (true, false) => self.live = self.live.saturating_sub(1),
            _ => {}
        }
    }

    /// Objects whose current record has data.
    pub fn live(&self) -> u64 {
        self.live
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn max_oid(&self) -> Option<u64> {
        self.map.keys().next_back().copied()
    }

    /// The first two objects with data at or after `from` (record_iternext).
    pub fn live_from(&self, from: Oid) -> (Option<(Oid, u64)>, Option<Oid>) {
        let mut it = self
            .map
            .range((Bound::Included(from.0), Bound::Unbounded))
            .filter(|(_, e)| **e & NO_DATA == 0);
        let first = it.next().map(|(o, p)| (Oid(*o), *p));
        let second = it.next().map(|(o, _)| Oid(*o));
        (first, second)
    }

    pub fn entries(&self) -> impl Iterator<Item = (Oid, u64, bool)> + '_ {
        self.map
            .iter()
            .map(|(o, e)| (Oid(*o), e & !NO_DATA, e & NO_DATA == 0))
    }
}

fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
    let mut h = h;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Encode an index file image.
pub fn encode_index_file(index: &Index, pos: u64, last_tid: Tid) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + index.len() * 16);
    out.extend_from_slice(INDEX_MAGIC);
    out.extend_from_slice(&pos.to_be_bytes());
    out.extend_from_slice(&last_tid.0.to_be_bytes());
    out.extend_from_slice(&(index.map.len() as u64).to_be_bytes());
    for (o, e) in &index.map {
        out.extend_from_slice(&o.to_be_bytes());
        out.extend_from_slice(&e.to_be_bytes());
    }
    let sum = fnv1a(FNV_OFFSET, &out);
    out.extend_from_slice(&sum.to_be_bytes());
    out
}

/// Decode an index file image: (index, valid-up-to position, last tid), or
/// why it is unusable.
pub fn decode_index_file(b: &[u8]) -> std::result::Result<(Index, u64, Tid), &'static str> {
    let u = |at: usize| -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[at..at + 8]);
        u64::from_be_bytes(a)
    };
    if b.len() < 40 || &b[..8] != INDEX_MAGIC {
        return Err("not a zeoraid index file");
    }
    let body = b.len() - 8;
    if fnv1a(FNV_OFFSET, &b[..body]) != u(body) {
        return Err("checksum mismatch");
    }
    let (pos, tid, count) = (u(8), Tid(u(16)), u(24));
    if count.checked_mul(16).and_then(|n| n.checked_add(40)) != Some(b.len() as u64) {
        return Err("entry count does not match the size");
    }
    let mut index = Index::default();
    let mut at = 32;
    while at < body {
        let (oid, e) = (u(at), u(at + 8));
        index.set(Oid(oid), e & !NO_DATA, e & NO_DATA == 0);
        at += 16;
    }
    Ok((index, pos, tid))
}

/// Write the index file atomically (temporary file, fsync, rename).
pub fn save_index_file(path: &Path, index: &Index, pos: u64, last_tid: Tid) -> std::io::Result<()> {
    let img = encode_index_file(index, pos, last_tid);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&img)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Load the index file if it is usable for `data` (of `file_size` bytes):
/// the transaction ending at the saved position must carry the saved tid.
pub fn load_index_file(path: &Path, data: Src<'_>, file_size: u64) -> Option<(Index, u64, Tid)> {
    let b = std::fs::read(path).ok()?;
    let (index, pos, tid) = match decode_index_file(&b) {
        Ok(x) => x,
        Err(why) => {
            log::warn!("ignoring index file {}: {why}", path.display());
            return None;
        }
    };
    let ok = if pos == 4 {
        tid == Tid::ZERO && index.is_empty()
    } else {
        pos <= file_size && last_txn_matches(data, pos, tid, &index)
    };
    if !ok {
        log::warn!(
            "ignoring index file {}: it does not match {}",
            path.display(),
            data.name
        );
        return None;
    }
    Some((index, pos, tid))
}

/// Python's `_check_sanity`, a little stronger: the transaction ending at
/// `pos` has the saved tid, a committed status, and the index points at
/// its records (the last one of each object).
fn last_txn_matches(data: Src<'_>, pos: u64, tid: Tid, index: &Index) -> bool {
    let Ok((tpos, h)) = data.txn_before(pos) else {
        return false;
    };
    if h.tid != tid || !valid_status(h.status) || h.tlen < h.header_len() {
        return false;
    }
    if h.status == STATUS_UNDONE {
        return true;
    }
    let tend = tpos + h.tlen;
    let mut p = tpos + h.header_len();
    let mut last: Vec<(Oid, u64)> = Vec::new();
    while p < tend {
        let Ok(dh) = data.data_header(p) else {
            return false;
        };
        if dh.tloc != tpos || check_data(&dh, tpos, tend, p).is_err() {
            return false;
        }
        last.retain(|(o, _)| *o != dh.oid);
        last.push((dh.oid, p));
        p = p.saturating_add(dh.record_len());
    }
    p == tend && last.iter().all(|(o, at)| index.pos(*o) == Some(*at))
}

/// How a scan ended.
#[derive(Debug, PartialEq)]
pub struct ScanEnd {
    /// Just after the last complete transaction.
    pub pos: u64,
    pub last_tid: Tid,
    /// An unfinished or damaged tail starts at `pos`: why (the caller
    /// truncates it away unless read-only).
    pub discard: Option<String>,
}

/// Scan transactions from `start` (ZODB's `read_index`), updating `index`.
/// Damage in the middle of the file is an error naming the position; an
/// unfinished tail is reported in [`ScanEnd::discard`].
pub fn scan(
    src: Src<'_>,
    index: &mut Index,
    start: u64,
    ltid: Tid,
    file_size: u64,
) -> Result<ScanEnd> {
    let mut win = Window::new(src);
    let mut pos = start;
    let mut ltid = ltid;
    let mut tindex: Vec<(Oid, u64, DataHeader)> = Vec::new();
    let end = |pos, ltid, why: Option<String>| ScanEnd {
        pos,
        last_tid: ltid,
        discard: why,
    };
    loop {
        let raw = win.get(pos, TXN_HDR_LEN as usize)?;
        if raw.is_empty() {
            return Ok(end(pos, ltid, None));
        }
        if raw.len() < TXN_HDR_LEN as usize {
            return Ok(end(pos, ltid, Some("truncated transaction header".into())));
        }
        let mut hb = [0u8; TXN_HDR_LEN as usize];
        hb.copy_from_slice(raw);
        let th = TxnHeader::decode(&hb);
        match txn_verdict(&th, pos, file_size) {
            TxnVerdict::Incomplete => {
                let why = if th.status == b'c' {
                    "unfinished (checkpoint) transaction"
                } else {
                    "truncated transaction"
                };
                return Ok(end(pos, ltid, Some(why.into())));
            }
            TxnVerdict::BadLength => {
                let rtl = src.read_u64(file_size.saturating_sub(8))?;
                if junk_at_end(pos, file_size, rtl) {
                    return Ok(end(pos, ltid, Some("invalid data at the end".into())));
                }
                return Err(corrupt(src.name, pos, "invalid transaction header"));
            }
            TxnVerdict::Complete => {}
        }
        if th.tid <= ltid {
            log::warn!("{}: time-stamp reduction at byte {pos}", src.name);
        }
        if !valid_status(th.status) {
            log::warn!(
                "{}: invalid transaction status {:?} at byte {pos}",
                src.name,
                char::from(th.status)
            );
        }
        ltid = th.tid;
        let tpos = pos;
        let tend = tpos + th.tlen;
        if th.status != STATUS_UNDONE {
            let mut dpos = tpos + th.header_len();
            tindex.clear();
            while dpos < tend {
                let raw = win.get(dpos, DATA_HDR_LEN as usize + 8)?;
                if raw.len() < DATA_HDR_LEN as usize {
                    return Err(corrupt(src.name, dpos, "truncated data record"));
                }
                let mut db = [0u8; DATA_HDR_LEN as usize];
                db.copy_from_slice(&raw[..DATA_HDR_LEN as usize]);
                let mut dh = DataHeader::decode(&db);
                if dh.plen == 0 {
                    if raw.len() < DATA_HDR_LEN as usize + 8 {
                        return Err(corrupt(src.name, dpos, "truncated data record"));
                    }
                    let mut bb = [0u8; 8];
                    bb.copy_from_slice(&raw[DATA_HDR_LEN as usize..]);
                    dh.back = u64::from_be_bytes(bb);
                }
                check_data(&dh, tpos, tend, dpos).map_err(|m| corrupt(src.name, dpos, &m))?;
                let expected_prev = tindex
                    .iter()
                    .rev()
                    .find(|(o, _, _)| *o == dh.oid)
                    .map(|(_, p, _)| *p)
                    .or_else(|| index.pos(dh.oid))
                    .unwrap_or(0);
                if expected_prev != dh.prev {
                    log::warn!("{}: incorrect previous pointer at byte {dpos}", src.name);
                }
                tindex.push((dh.oid, dpos, dh));
                dpos = dpos.saturating_add(dh.record_len());
            }
            if dpos != tend {
                return Err(corrupt(src.name, tpos, "data records don't add up"));
            }
            for (oid, p, dh) in &tindex {
                let has = src.record_has_data(dh)?;
                index.set(*oid, *p, has);
            }
        }
        let rtl = src.read_u64(tend)?;
        if rtl != th.tlen {
            return Err(corrupt(
                src.name,
                tend,
                "redundant transaction length check failed",
            ));
        }
        pos = tend + 8;
    }
}

/// Copy the discarded tail to `Data.fs.trN` (as Python does) and truncate.
pub fn discard_tail(file: &File, name: &str, pos: u64, file_size: u64) -> Result<()> {
    let mut i = 0;
    let tr = loop {
        let p = format!("{name}.tr{i}");
        if !Path::new(&p).exists() {
            break p;
        }
        i += 1;
    };
    let tail = Src { file, name }.read_vec(pos, file_size - pos)?;
    std::fs::write(&tr, &tail).map_err(|e| io_err(&tr, 0, &e))?;
    log::warn!("{name}: wrote the discarded data to {tr}");
    file.set_len(pos).map_err(|e| io_err(name, pos, &e))?;
    file.sync_all().map_err(|e| io_err(name, pos, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_set_counts_live() {
        let mut ix = Index::default();
        // (oid, pos, has data, expected live)
        let steps = [
            (1, 10, true, 1),
            (2, 20, false, 1),
            (2, 30, true, 2),
            (1, 40, false, 1),
            (1, 50, false, 1),
            (3, 60, true, 2),
        ];
        for (o, p, h, live) in steps {
            ix.set(Oid(o), p, h);
            assert_eq!(ix.live(), live, "after {o} {p} {h}");
            assert_eq!(ix.get(Oid(o)), Some((p, h)));
        }
        assert_eq!(ix.max_oid(), Some(3));
        assert_eq!(ix.live_from(Oid(0)), (Some((Oid(2), 30)), Some(Oid(3))));
        assert_eq!(ix.live_from(Oid(3)), (Some((Oid(3), 60)), None));
        assert_eq!(ix.live_from(Oid(4)), (None, None));
    }

    #[test]
    fn index_file_round_trip_and_damage() {
        let mut ix = Index::default();
        ix.set(Oid(0), 4, true);
        ix.set(Oid(7), 99, false);
        let img = encode_index_file(&ix, 1234, Tid(42));
        assert_eq!(decode_index_file(&img), Ok((ix.clone(), 1234, Tid(42))));
        let mut bad = img.clone();
        bad[33] ^= 1;
        assert_eq!(decode_index_file(&bad), Err("checksum mismatch"));
        assert!(decode_index_file(&img[..img.len() - 1]).is_err());
        assert!(decode_index_file(b"short").is_err());
        let mut wrong = img.clone();
        wrong[0] = b'X';
        assert_eq!(decode_index_file(&wrong), Err("not a zeoraid index file"));
    }
}
