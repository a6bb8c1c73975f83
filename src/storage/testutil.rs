//! Test helpers shared by the storages' unit tests: tids on a fixed clock,
//! short constructors for data, oids and operations, and commit / read-back
//! shortcuts over any [`Storage`].

use std::sync::Arc;

use super::{timestamp, Data, Oid, Op, Storage, Tid, Txn, TxnMeta, TxnRecord, Vote};

/// The Unix time the test clock starts at.
pub const BASE: f64 = 1_700_000_000.0;

/// A tid `i` seconds after BASE.
pub fn t(i: u32) -> Tid {
    timestamp::from_unix(BASE + f64::from(i))
}

/// The Unix time of `t(i)` plus `frac` seconds (for pack times).
pub fn at(i: u32, frac: f64) -> f64 {
    BASE + f64::from(i) + frac
}

pub fn d(s: &str) -> Data {
    Arc::from(s.as_bytes())
}

pub fn o(n: u64) -> Oid {
    Oid(n)
}

pub fn meta(desc: &str) -> TxnMeta {
    TxnMeta {
        user: b"u".to_vec(),
        description: desc.as_bytes().to_vec(),
        extension: Vec::new(),
    }
}

pub fn txn(tid: Option<Tid>, ops: Vec<Op>) -> Txn {
    Txn {
        meta: meta("t"),
        tid,
        status: b' ',
        ops,
    }
}

pub fn store(oid: u64, serial: Tid, data: &str) -> Op {
    Op::Store {
        oid: o(oid),
        serial,
        data: d(data),
    }
}

pub fn undo(tid: Tid) -> Op {
    Op::Undo { txn: tid }
}

/// Vote and finish; panics (test only) on anything but Prepared.
pub fn commit_txn(s: &dyn Storage, tx: Txn) -> (Tid, Vec<Oid>, Vec<Oid>) {
    match s.tpc_vote(&tx) {
        Ok(Vote::Prepared {
            tid,
            resolved,
            invalidated,
        }) => {
            assert_eq!(s.tpc_finish(), Ok(tid));
            (tid, resolved, invalidated)
        }
        other => panic!("expected Prepared, got {other:?}"),
    }
}

pub fn commit(s: &dyn Storage, tid: Option<Tid>, ops: Vec<Op>) -> Tid {
    commit_txn(s, txn(tid, ops)).0
}

/// The transaction that copies `rec` into another storage as restores (as
/// `copyTransactionsFrom` / RAID recovery does).
pub fn restore_txn(rec: &TxnRecord) -> Txn {
    let ops = rec
        .records
        .iter()
        .map(|r| Op::Restore {
            oid: r.oid,
            serial: r.tid,
            data: r.data.clone(),
            prev_txn: r.data_txn,
        })
        .collect();
    Txn {
        meta: rec.meta.clone(),
        tid: Some(rec.tid),
        status: rec.status,
        ops,
    }
}

/// Every committed transaction, oldest first.
pub fn records(s: &dyn Storage) -> Vec<TxnRecord> {
    s.iterator(None, None)
        .expect("iterator")
        .map(|r| r.expect("iteration"))
        .collect()
}

/// The tids of `oid`'s revisions, oldest first (none when it has no
/// history).
pub fn revisions(s: &dyn Storage, oid: u64) -> Vec<Tid> {
    let mut v: Vec<Tid> = s
        .history(o(oid), 100)
        .map(|h| h.iter().map(|e| e.tid).collect())
        .unwrap_or_default();
    v.reverse();
    v
}

/// The tids of the whole undo log, newest first.
pub fn undo_tids(s: &dyn Storage) -> Vec<Tid> {
    s.undo_log(0, 1_000_000)
        .expect("undo log")
        .iter()
        .map(|e| e.tid)
        .collect()
}
