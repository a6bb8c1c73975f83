//! The `Data.fs` record layouts (ZODB's `FileStorage/format.py`), as pure
//! encode/decode functions and the checks `read_index` applies to them.
//!
//! ```text
//! file        = "FS30" transaction*        ("FS21": written by Python 2)
//! transaction = tid:8 tlen:8 status:1 ulen:2 dlen:2 elen:2 user desc ext
//!               data-record* tlen:8            (tlen excludes the last 8)
//! data-record = oid:8 tid:8 prev:8 tloc:8 vlen:2 plen:8 (data:plen | back:8 if plen == 0)
//! ```
//!
//! All numbers are big-endian. `prev` is the position of the previous record
//! of the same object (0: none), `tloc` the position of the transaction
//! header, `back` the position of an earlier record whose data this record
//! reuses (0: no data — a deleted object or an undone creation). Status is
//! `' '` (committed), `'p'` (packed), `'u'` (legacy undone) or `'c'`
//! (checkpoint: written at vote, flipped to `' '` at finish; a `'c'` found at
//! open is an unfinished commit and is discarded).

use crate::storage::{Oid, Tid};

/// The file magic Python 3 ZODB writes (and the only one it reads).
pub const MAGIC: &[u8; 4] = b"FS30";
/// The magic of files written by Python 2 ZODB: same layout, protocol 2
/// pickles; read (and appended to) as they are.
pub const MAGIC_PY2: &[u8; 4] = b"FS21";

/// Whether `m` is the magic of a file storage we can read.
pub fn known_magic(m: &[u8]) -> bool {
    m == MAGIC || m == MAGIC_PY2
}
/// Fixed part of a transaction header.
pub const TXN_HDR_LEN: u64 = 23;
/// Fixed part of a data record header (without the backpointer).
pub const DATA_HDR_LEN: u64 = 42;
/// Offset of the status byte inside a transaction header.
pub const STATUS_OFFSET: u64 = 16;

/// The transaction statuses ZODB knows (`' '`, `'p'`, `'u'`).
pub use crate::storage::rules::{STATUS_NORMAL, STATUS_PACKED, STATUS_UNDONE};
/// A transaction being committed (written at vote, flipped at finish).
pub const STATUS_CHECKPOINT: u8 = b'c';

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// A transaction header (without user, description and extension bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnHeader {
    pub tid: Tid,
    /// Length of the record without the trailing redundant length.
    pub tlen: u64,
    pub status: u8,
    pub ulen: u16,
    pub dlen: u16,
    pub elen: u16,
}

impl TxnHeader {
    pub fn decode(b: &[u8; TXN_HDR_LEN as usize]) -> TxnHeader {
        TxnHeader {
            tid: Tid(u64_at(b, 0)),
            tlen: u64_at(b, 8),
            status: b[16],
            ulen: u16_at(b, 17),
            dlen: u16_at(b, 19),
            elen: u16_at(b, 21),
        }
    }

    pub fn encode(&self) -> [u8; TXN_HDR_LEN as usize] {
        let mut b = [0u8; TXN_HDR_LEN as usize];
        b[0..8].copy_from_slice(&self.tid.to_bytes());
        b[8..16].copy_from_slice(&self.tlen.to_be_bytes());
        b[16] = self.status;
        b[17..19].copy_from_slice(&self.ulen.to_be_bytes());
        b[19..21].copy_from_slice(&self.dlen.to_be_bytes());
        b[21..23].copy_from_slice(&self.elen.to_be_bytes());
        b
    }

    /// Header plus user, description and extension.
    pub fn header_len(&self) -> u64 {
        TXN_HDR_LEN + u64::from(self.ulen) + u64::from(self.dlen) + u64::from(self.elen)
    }
}

/// A data record header; `back` is read only when `plen == 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeader {
    pub oid: Oid,
    pub tid: Tid,
    pub prev: u64,
    pub tloc: u64,
    pub vlen: u16,
    pub plen: u64,
    pub back: u64,
}

impl DataHeader {
    pub fn decode(b: &[u8; DATA_HDR_LEN as usize]) -> DataHeader {
        DataHeader {
            oid: Oid(u64_at(b, 0)),
            tid: Tid(u64_at(b, 8)),
            prev: u64_at(b, 16),
            tloc: u64_at(b, 24),
            vlen: u16_at(b, 32),
            plen: u64_at(b, 34),
            back: 0,
        }
    }

    /// The header, followed by the backpointer when `plen == 0`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.oid.to_bytes());
        out.extend_from_slice(&self.tid.to_bytes());
        out.extend_from_slice(&self.prev.to_be_bytes());
        out.extend_from_slice(&self.tloc.to_be_bytes());
        out.extend_from_slice(&self.vlen.to_be_bytes());
        out.extend_from_slice(&self.plen.to_be_bytes());
        if self.plen == 0 {
            out.extend_from_slice(&self.back.to_be_bytes());
        }
    }

    /// Header, then data or backpointer.
    pub fn record_len(&self) -> u64 {
        DATA_HDR_LEN.saturating_add(if self.plen == 0 { 8 } else { self.plen })
    }
}

/// What `read_index` makes of a transaction header at `pos` in a file of
/// `file_size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnVerdict {
    /// Plausible: read its data records.
    Complete,
    /// Runs past the end of the file, or still has the checkpoint flag: an
    /// unfinished commit, discarded (the file is truncated at `pos`).
    Incomplete,
    /// `tlen` is smaller than the header itself.
    BadLength,
}

pub fn txn_verdict(h: &TxnHeader, pos: u64, file_size: u64) -> TxnVerdict {
    let end = pos.checked_add(h.tlen).and_then(|e| e.checked_add(8));
    if end.is_none_or(|e| e > file_size) || h.status == STATUS_CHECKPOINT {
        TxnVerdict::Incomplete
    } else if h.tlen < h.header_len() {
        TxnVerdict::BadLength
    } else {
        TxnVerdict::Complete
    }
}

/// For a transaction with a bad length at `pos`: is it junk at the end of
/// the file (a crash: truncate) rather than damage in the middle (an error)?
/// Python's rule: the redundant length `rtl` of the file's last 8 bytes does
/// not point back at or after `pos`, or is absurdly small.
pub fn junk_at_end(pos: u64, file_size: u64, rtl: u64) -> bool {
    file_size.checked_sub(rtl).is_none_or(|s| s < pos) || rtl < TXN_HDR_LEN
}

/// The checks of `read_index`/`checkData` on a data record at `pos` of the
/// transaction at `tpos` ending at `tend`; the error names what is wrong.
pub fn check_data(h: &DataHeader, tpos: u64, tend: u64, pos: u64) -> Result<(), String> {
    if h.tloc != tpos {
        return Err(format!(
            "data record does not point to its transaction header: {} != {tpos}",
            h.tloc
        ));
    }
    if pos.checked_add(h.record_len()).is_none_or(|e| e > tend) {
        return Err("data record exceeds transaction record".to_string());
    }
    if h.vlen != 0 {
        return Err("data record with a version (unsupported)".to_string());
    }
    if h.prev >= pos {
        return Err(format!("invalid previous pointer: {}", h.prev));
    }
    if h.back >= pos {
        return Err(format!("invalid back pointer: {}", h.back));
    }
    Ok(())
}

/// Statuses a committed transaction may have.
pub fn valid_status(s: u8) -> bool {
    matches!(s, STATUS_NORMAL | STATUS_PACKED | STATUS_UNDONE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn th(tlen: u64, status: u8, ulen: u16) -> TxnHeader {
        TxnHeader {
            tid: Tid(0x0102030405060708),
            tlen,
            status,
            ulen,
            dlen: 2,
            elen: 3,
        }
    }

    #[test]
    fn txn_header_round_trip_matches_python_layout() {
        let h = th(0x1112, b' ', 1);
        let b = h.encode();
        // struct.pack(">8sQcHHH", tid, 0x1112, b" ", 1, 2, 3)
        let want: Vec<u8> = [
            &[1u8, 2, 3, 4, 5, 6, 7, 8][..],
            &[0, 0, 0, 0, 0, 0, 0x11, 0x12],
            b" ",
            &[0, 1, 0, 2, 0, 3],
        ]
        .concat();
        assert_eq!(&b[..], &want[..]);
        assert_eq!(TxnHeader::decode(&b), h);
        assert_eq!(h.header_len(), 23 + 6);
    }

    #[test]
    fn data_header_round_trip() {
        for (plen, back, len) in [(5u64, 0u64, 42 + 5), (0, 77, 50), (0, 0, 50)] {
            let h = DataHeader {
                oid: Oid(9),
                tid: Tid(10),
                prev: 11,
                tloc: 12,
                vlen: 0,
                plen,
                back,
            };
            let mut out = Vec::new();
            h.encode_into(&mut out);
            assert_eq!(out.len() as u64, if plen == 0 { 50 } else { 42 });
            let mut fixed = [0u8; 42];
            fixed.copy_from_slice(&out[..42]);
            let mut d = DataHeader::decode(&fixed);
            if plen == 0 {
                d.back = u64_at(&out, 42);
            }
            assert_eq!(d, h);
            assert_eq!(h.record_len(), len);
        }
    }

    #[test]
    fn txn_verdict_table() {
        use TxnVerdict::*;
        // (tlen, status, pos, file size, verdict)
        let cases = [
            (100, b' ', 4, 112, Complete),
            (100, b' ', 4, 111, Incomplete),
            (100, b'c', 4, 1000, Incomplete),
            (100, b'p', 4, 1000, Complete),
            (100, b'u', 4, 1000, Complete),
            (10, b' ', 4, 1000, BadLength),
            (u64::MAX, b' ', 4, 1000, Incomplete),
            (28, b' ', 4, 1000, BadLength), // header_len is 23 + 1 + 2 + 3
            (29, b' ', 4, 1000, Complete),
        ];
        for (tlen, status, pos, size, want) in cases {
            assert_eq!(
                txn_verdict(&th(tlen, status, 1), pos, size),
                want,
                "tlen {tlen} status {status} pos {pos} size {size}"
            );
        }
    }

    #[test]
    fn junk_at_end_table() {
        // (pos, file size, last redundant length, junk?)
        let cases = [
            (100, 200, 50, false), // the last transaction starts at 142 > 100: damage in the middle
            (100, 200, 150, true), // points before pos
            (100, 200, 300, true), // points before the file
            (100, 200, 5, true),   // too small to be a length
            (100, 200, 100, false),
        ];
        for (pos, size, rtl, want) in cases {
            assert_eq!(junk_at_end(pos, size, rtl), want, "{pos} {size} {rtl}");
        }
    }

    #[test]
    fn check_data_table() {
        let base = DataHeader {
            oid: Oid(1),
            tid: Tid(2),
            prev: 0,
            tloc: 100,
            vlen: 0,
            plen: 10,
            back: 0,
        };
        let with = |f: &dyn Fn(&mut DataHeader)| {
            let mut h = base;
            f(&mut h);
            h
        };
        // (header, tpos, tend, pos, ok?)
        let cases = [
            (base, 100, 200, 130, true),
            (base, 100, 181, 130, false), // 130 + 52 > 181
            (base, 100, 182, 130, true),
            (with(&|h| h.tloc = 99), 100, 200, 130, false),
            (with(&|h| h.vlen = 1), 100, 200, 130, false),
            (with(&|h| h.prev = 130), 100, 200, 130, false),
            (with(&|h| h.prev = 129), 100, 200, 130, true),
            (
                with(&|h| {
                    h.plen = 0;
                    h.back = 140
                }),
                100,
                200,
                130,
                false,
            ),
            (
                with(&|h| {
                    h.plen = 0;
                    h.back = 40
                }),
                100,
                200,
                130,
                true,
            ),
        ];
        for (i, (h, tpos, tend, pos, ok)) in cases.iter().enumerate() {
            assert_eq!(check_data(h, *tpos, *tend, *pos).is_ok(), *ok, "case {i}");
        }
    }

    #[test]
    fn magic_table() {
        for (m, ok) in [
            (&b"FS30"[..], true),
            (b"FS21", true),
            (b"FS20", false),
            (b"FS3", false),
        ] {
            assert_eq!(known_magic(m), ok, "{m:?}");
        }
    }

    #[test]
    fn statuses() {
        for (s, ok) in [
            (b' ', true),
            (b'p', true),
            (b'u', true),
            (b'c', false),
            (b'x', false),
        ] {
            assert_eq!(valid_status(s), ok);
        }
    }
}
