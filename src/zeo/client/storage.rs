//! `impl Storage for Client`: the [`Storage`] contract mapped onto the ZEO
//! server methods as ZEO 6's `ClientStorage` does (see the notes in the
//! module doc of `client`). `tpc_vote` sends the whole transaction as one
//! batch of one-way frames and a synchronous `vote`, pinned to its
//! connection until `tpc_finish`/`tpc_abort`; [`RemoteTxnIter`] walks the
//! server-side iterators lazily on the connection they live on.

use super::conn::{Conn, OutFrame};
use super::link::{Inner, TxnCtx};
use super::reply::{
    data_of, decode_ext, int_of, parse_data_record, parse_history, parse_loaded, parse_oids,
    parse_record_iternext, parse_size_info, parse_txn_header, parse_undo_log, parse_vote, tid_of,
    CurrentRecord,
};
use super::Client;
use crate::locks::lock;
use crate::storage::undo_id::undo_id;
use crate::storage::{
    Data, Error, HistoryEntry, Loaded, Oid, Op, Result, SizeInfo, Storage, Tid, Txn, TxnIter,
    TxnRecord, UndoEntry, Vote,
};
use crate::zeo::message;
use rmpv::Value;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

fn inner_has_no_cache(c: &Client) -> bool {
    c.inner.blob_cache.is_none()
}

/// What blob calls answer on a client without a blob cache.
const NO_CLIENT_BLOBS: &str =
    "this ZEO client has no blob cache: set ClientOptions::blob_dir to use blobs";

/// `pack` can legitimately run for a long time: its deadline is this many call timeouts.
const PACK_TIMEOUT_FACTOR: u32 = 60;
/// ZEO servers hand out at most this many oids per `new_oids` call.
const OIDS_PER_CALL: usize = 100;

impl Client {
    fn tpc_vote_inner(&self, txn: &Txn) -> Result<Vote> {
        if inner_has_no_cache(self)
            && txn
                .ops
                .iter()
                .any(|op| matches!(op, Op::StoreBlob { .. } | Op::RestoreBlob { .. }))
        {
            return Err(Error::Unsupported(NO_CLIENT_BLOBS.into()));
        }
        let inner = &self.inner;
        if inner.opts.read_only {
            return Err(Error::ReadOnly);
        }
        if let Some(old) = lock(&inner.txn).take() {
            log::warn!(
                "{}: tpc_vote while transaction {} was still open; aborting it",
                inner.addr(),
                old.id
            );
            let _ = old.conn.send_oneway("tpc_abort", vec![Value::from(old.id)]);
        }
        let ext = decode_ext(&txn.meta.extension)?;
        let deadline = Instant::now() + inner.opts.call_timeout;
        let conn = inner.wait_conn(deadline, "tpc_vote")?;
        let id = inner.next_txn_id.fetch_add(1, Ordering::Relaxed);
        let idv = Value::from(id);
        *lock(&inner.txn) = Some(TxnCtx {
            id,
            conn: conn.clone(),
        });

        let mut frames = Vec::with_capacity(txn.ops.len() + 1);
        frames.push(OutFrame::tpc_begin(
            conn.flavour(),
            &idv,
            &txn.meta,
            ext,
            txn.tid,
            txn.status,
        ));
        let oid = message::oid_value;
        let tid = message::tid_value;
        for op in &txn.ops {
            frames.push(match op {
                Op::Store {
                    oid: o,
                    serial,
                    data,
                } => OutFrame::oneway(
                    conn.flavour(),
                    "storea",
                    &[oid(*o), tid(*serial)],
                    Some(data),
                    std::slice::from_ref(&idv),
                ),
                Op::Delete { oid: o, serial } => OutFrame::whole(
                    conn.flavour()
                        .encode_oneway("deleteObject", vec![oid(*o), tid(*serial), idv.clone()]),
                ),
                Op::CheckCurrent { oid: o, serial } => {
                    OutFrame::whole(conn.flavour().encode_oneway(
                        "checkCurrentSerialInTransaction",
                        vec![oid(*o), tid(*serial), idv.clone()],
                    ))
                }
                Op::Restore {
                    oid: o,
                    serial,
                    data,
                    prev_txn,
                } => OutFrame::restorea(
                    conn.flavour(),
                    *o,
                    *serial,
                    data.as_deref(),
                    *prev_txn,
                    &idv,
                ),
                Op::Undo { txn: t } => OutFrame::whole(
                    conn.flavour()
                        .encode_oneway("undoa", vec![Value::Binary(undo_id(*t)), idv.clone()]),
                ),
                Op::StoreBlob {
                    oid: o,
                    serial,
                    data,
                    blob,
                } => {
                    // Streamed, a chunk at a time, after what came before.
                    conn.send(&frames)?;
                    frames.clear();
                    super::blobs::store(&conn, blob, *o, *serial, data, &idv)?;
                    continue;
                }
                Op::RestoreBlob {
                    oid: o, data, blob, ..
                } => {
                    // ZEO has no restoreBlob: a store of the record and its
                    // file inside this transaction, begun with the source's
                    // tid, against the target's current revision.
                    conn.send(&frames)?;
                    frames.clear();
                    let current = match self.load_before(*o, Tid::MAX) {
                        Ok(Some(l)) => l.start,
                        Ok(None) | Err(Error::PosKey(_)) => Tid::ZERO,
                        Err(e) => return Err(e),
                    };
                    super::blobs::store(&conn, blob, *o, current, data, &idv)?;
                    continue;
                }
            });
        }
        conn.send(&frames)?;
        drop(frames);

        let reply = inner.call_on(&conn, "vote", vec![idv.clone()], deadline)?;
        let (conflicts, resolved) = parse_vote(&reply)?;
        if !conflicts.is_empty() {
            // The server aborted the storage side but still holds the
            // transaction id: release it so the re-vote can tpc_begin afresh.
            lock(&inner.txn).take();
            let _ = conn.send_oneway("tpc_abort", vec![idv]);
            return Ok(Vote::Conflicts(conflicts));
        }
        let mut seen = HashSet::new();
        let invalidated = txn
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Store { oid, .. }
                | Op::StoreBlob { oid, .. }
                | Op::RestoreBlob { oid, .. }
                | Op::Delete { oid, .. }
                | Op::Restore { oid, .. } => Some(*oid),
                Op::CheckCurrent { .. } | Op::Undo { .. } => None,
            })
            .chain(resolved.iter().copied())
            .filter(|o| seen.insert(*o))
            .collect();
        Ok(Vote::Prepared {
            // ZEO tells the tid only at tpc_finish: an explicit tid, else zero.
            tid: txn.tid.unwrap_or(Tid::ZERO),
            resolved,
            invalidated,
        })
    }
}

/// Lazy `iterator_start` / `iterator_next` / `iterator_record_*` walk, pinned
/// to the connection the server-side iterator lives on.
struct RemoteTxnIter {
    inner: Arc<Inner>,
    conn: Arc<Conn>,
    iid: i64,
    /// No more items: exhausted, or an error ended the walk.
    finished: bool,
    /// The server still holds `iid` (it disposes of it once exhausted).
    iid_open: bool,
    /// A record iterator the server still holds (an error mid-transaction).
    open_riid: Option<i64>,
}

impl RemoteTxnIter {
    fn call(&self, method: &str, args: Vec<Value>) -> Result<Value> {
        let deadline = Instant::now() + self.inner.opts.call_timeout;
        self.inner.call_on(&self.conn, method, args, deadline)
    }

    fn fetch(&mut self) -> Result<Option<TxnRecord>> {
        let header = self.call("iterator_next", vec![Value::from(self.iid)])?;
        let Some((tid, status, meta)) = parse_txn_header(&header)? else {
            self.iid_open = false;
            return Ok(None);
        };
        let riid = int_of(
            &self.call(
                "iterator_record_start",
                vec![Value::from(self.iid), message::tid_value(tid)],
            )?,
            "iterator_record_start reply",
        )?;
        self.open_riid = Some(riid);
        let mut records = Vec::new();
        loop {
            let r = self.call("iterator_record_next", vec![Value::from(riid)])?;
            match parse_data_record(&r)? {
                Some(rec) => records.push(rec),
                None => break,
            }
        }
        self.open_riid = None;
        Ok(Some(TxnRecord {
            tid,
            status,
            meta,
            records,
        }))
    }
}

impl Iterator for RemoteTxnIter {
    type Item = Result<TxnRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        match self.fetch() {
            Ok(Some(t)) => Some(Ok(t)),
            Ok(None) => {
                self.finished = true;
                None
            }
            Err(e) => {
                // Stop here; Drop tells the server to forget the iterators.
                self.finished = true;
                Some(Err(e))
            }
        }
    }
}

impl Drop for RemoteTxnIter {
    fn drop(&mut self) {
        let mut ids = Vec::new();
        if self.iid_open {
            ids.push(Value::from(self.iid));
        }
        if let Some(r) = self.open_riid {
            ids.push(Value::from(r));
        }
        if !ids.is_empty() && self.conn.alive() {
            let _ = self
                .conn
                .send_oneway("iterator_gc", vec![Value::Array(ids)]);
        }
    }
}

impl Storage for Client {
    fn name(&self) -> String {
        match self.inner.info_value("name") {
            Some(Value::String(s)) => s.into_str().unwrap_or_else(|| self.addr().to_string()),
            Some(Value::Binary(b)) => String::from_utf8_lossy(&b).into_owned(),
            _ => self.addr().to_string(),
        }
    }

    fn is_read_only(&self) -> bool {
        self.inner.opts.read_only
    }

    fn supports_undo(&self) -> bool {
        self.inner
            .info_value("supportsUndo")
            .map(|v| message::arg::truthy(&v))
            .unwrap_or(false)
    }

    fn last_transaction(&self) -> Result<Tid> {
        tid_of(
            &self.call("lastTransaction", vec![])?,
            "lastTransaction reply",
        )
    }

    fn load_before(&self, oid: Oid, before: Tid) -> Result<Option<Loaded>> {
        parse_loaded(&self.call(
            "loadBefore",
            vec![message::oid_value(oid), message::tid_value(before)],
        )?)
    }

    fn load_serial(&self, oid: Oid, serial: Tid) -> Result<Data> {
        data_of(
            &self.call(
                "loadSerial",
                vec![message::oid_value(oid), message::tid_value(serial)],
            )?,
            "loadSerial reply",
        )
    }

    fn history(&self, oid: Oid, size: usize) -> Result<Vec<HistoryEntry>> {
        parse_history(&self.call(
            "history",
            vec![message::oid_value(oid), Value::from(size as u64)],
        )?)
    }

    fn new_oids(&self, n: usize) -> Result<Vec<Oid>> {
        if self.inner.opts.read_only {
            return Err(Error::ReadOnly);
        }
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let want = (n - out.len()).min(OIDS_PER_CALL);
            let got = parse_oids(&self.call("new_oids", vec![Value::from(want as u64)])?)?;
            if got.is_empty() {
                return Err(Error::Value(format!(
                    "{}: new_oids({want}) returned no oids",
                    self.addr()
                )));
            }
            out.extend(got.into_iter().take(n - out.len()));
        }
        Ok(out)
    }

    /// Sends `tpc_begin`, the operations (one-way) and a synchronous `vote`.
    /// ZEO reveals the tid only at `tpc_finish`, so `Vote::Prepared::tid` is
    /// `txn.tid` when given, else [`Tid::ZERO`].
    fn tpc_vote(&self, txn: &Txn) -> Result<Vote> {
        self.tpc_vote_inner(txn)
    }

    fn blob_staging_dir(&self) -> Option<std::path::PathBuf> {
        self.inner
            .blob_cache
            .as_ref()
            .map(|b| b.tmp_dir().to_path_buf())
    }

    fn load_blob(&self, oid: Oid, serial: Tid) -> Result<std::path::PathBuf> {
        match &self.inner.blob_cache {
            Some(dir) => super::blobs::load(&self.inner, dir, oid, serial),
            None => Err(Error::Unsupported(NO_CLIENT_BLOBS.into())),
        }
    }

    fn tpc_finish(&self) -> Result<Tid> {
        let inner = &self.inner;
        let ctx = lock(&inner.txn)
            .take()
            .ok_or_else(|| Error::Transaction("tpc_finish without a voted transaction".into()))?;
        if !ctx.conn.alive() {
            return Err(Error::Disconnected(format!(
                "{}: the connection was lost after the vote; the server aborted the transaction",
                inner.addr()
            )));
        }
        let deadline = Instant::now() + inner.opts.call_timeout;
        match inner.call_on(&ctx.conn, "tpc_finish", vec![Value::from(ctx.id)], deadline) {
            Ok(v) => tid_of(&v, "tpc_finish reply"),
            Err(Error::Disconnected(m)) => Err(Error::Disconnected(format!(
                "{m} (during tpc_finish; whether the transaction committed is unknown)"
            ))),
            Err(e) => Err(e),
        }
    }

    fn tpc_abort(&self) {
        let inner = &self.inner;
        let Some(ctx) = lock(&inner.txn).take() else {
            return;
        };
        if !ctx.conn.alive() {
            return; // the server aborted it when the connection dropped
        }
        let deadline = Instant::now() + inner.opts.call_timeout;
        if let Err(e) = inner.call_on(&ctx.conn, "tpc_abort", vec![Value::from(ctx.id)], deadline) {
            log::warn!("{}: tpc_abort failed: {e}", inner.addr());
        }
    }

    fn undo_log(&self, first: usize, last: usize) -> Result<Vec<UndoEntry>> {
        parse_undo_log(&self.call(
            "undoLog",
            vec![Value::from(first as u64), Value::from(last as u64)],
        )?)
    }

    fn iterator(&self, start: Option<Tid>, stop: Option<Tid>) -> Result<TxnIter> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.opts.call_timeout;
        let conn = inner.wait_conn(deadline, "iterator_start")?;
        let iid = int_of(
            &inner.call_on(
                &conn,
                "iterator_start",
                vec![message::opt_tid_value(start), message::opt_tid_value(stop)],
                deadline,
            )?,
            "iterator_start reply",
        )?;
        Ok(Box::new(RemoteTxnIter {
            inner: inner.clone(),
            conn,
            iid,
            finished: false,
            iid_open: true,
            open_riid: None,
        }))
    }

    fn record_iternext(&self, next: Option<Oid>) -> Result<Option<CurrentRecord>> {
        parse_record_iternext(&self.call(
            "record_iternext",
            vec![next.map(message::oid_value).unwrap_or(Value::Nil)],
        )?)
    }

    /// `pack(t, wait=1)`; the ZEO server collects garbage itself, so `gc` is
    /// not sent. The deadline is `PACK_TIMEOUT_FACTOR` call timeouts.
    fn pack(&self, t: f64, _gc: bool) -> Result<()> {
        let deadline = Instant::now()
            + self
                .inner
                .opts
                .call_timeout
                .saturating_mul(PACK_TIMEOUT_FACTOR);
        self.inner
            .call_with_deadline("pack", vec![Value::F64(t), Value::from(1)], deadline)
            .map(|_| ())
    }

    fn reads_wait_on_network(&self) -> bool {
        true
    }

    /// From what the server reported (`get_info` at register, then its
    /// `info` messages after commits and packs): no call, so it is cheap
    /// and works with Python ZEO, whose server has no `get_size_info`
    /// method and closes the connection of a client that calls one.
    fn size_info(&self) -> SizeInfo {
        parse_size_info(&self.server_info())
    }

    fn close(&self) {
        Client::close(self)
    }
}
