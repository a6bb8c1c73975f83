//! Restoring whole transactions on a server with many in flight
//! ([`Client::restore_pipelined`], the off-site mirrors' writer): each
//! transaction's `tpc_begin`, `restorea` calls, `vote` and `tpc_finish` go
//! out in one write without waiting for the previous transaction's
//! replies, which are collected as they arrive. The server handles a
//! connection's messages in order, and a mirror's commit lock is never
//! held by anyone else, so a long round trip costs latency, not rate.

use super::conn::{Conn, OutFrame, Reply};
use super::reply::{decode_ext, parse_vote, tid_of};
use super::Client;
use crate::storage::{Error, Result, Tid, TxnRecord};
use crossbeam_channel::Receiver;
use rmpv::Value;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// Transactions in flight at most (the bytes bound usually decides: a
/// window must cover the link's bandwidth-delay product).
const WINDOW: usize = 8192;
/// Record bytes in flight at most.
const WINDOW_BYTES: u64 = 16 << 20;
/// A transaction's replies may take this long per byte beyond the call
/// timeout (a link slower than 16 KB/s counts as down).
const SLOWEST_LINK: f64 = 16_000.0;

/// A transaction the server finished: its tid and record bytes.
pub type Shipped = (Tid, u64);

struct InFlight {
    tid: Tid,
    bytes: u64,
    vote: (i64, Receiver<Reply>),
    finish: (i64, Receiver<Reply>),
}

impl Client {
    /// Restore `batches` in order (same tids, status, metadata, records,
    /// backpointers), keeping up to `WINDOW` transactions
    /// (`WINDOW_BYTES`) in flight. Each batch goes out in one write, so
    /// a stream of small transactions costs a few system calls per batch,
    /// not per transaction. `on_done` follows the transactions the server
    /// finished, in order, a run at a time (tid and record bytes each).
    /// Stops early when `stop()` says so. The first failure ends it: what
    /// was acknowledged is on the server, the rest is not.
    pub fn restore_pipelined(
        &self,
        batches: impl Iterator<Item = std::result::Result<Vec<Arc<TxnRecord>>, String>>,
        stop: &dyn Fn() -> bool,
        on_done: &mut dyn FnMut(&[Shipped]),
    ) -> Result<()> {
        let inner = &self.inner;
        let conn = inner.wait_conn(Instant::now() + inner.opts.call_timeout, "restore")?;
        let mut flying: VecDeque<InFlight> = VecDeque::new();
        let mut flying_bytes = 0u64;
        let mut done = Vec::new();
        for batch in batches {
            if stop() {
                break;
            }
            let batch = batch.map_err(Error::Io)?;
            for f in self.send_restores(&conn, &batch)? {
                flying_bytes += f.bytes;
                flying.push_back(f);
            }
            // Wait while the window is full; take whatever is answered.
            while flying.len() >= WINDOW
                || flying_bytes > WINDOW_BYTES
                || flying
                    .front()
                    .is_some_and(|f| !f.vote.1.is_empty() && !f.finish.1.is_empty())
            {
                let Some(f) = flying.pop_front() else { break };
                flying_bytes -= f.bytes;
                done.push(self.complete(&conn, f)?);
            }
            if !done.is_empty() {
                on_done(&done);
                done.clear();
            }
        }
        while let Some(f) = flying.pop_front() {
            done.push(self.complete(&conn, f)?);
            if done.len() >= 256 {
                on_done(&done);
                done.clear();
            }
        }
        if !done.is_empty() {
            on_done(&done);
        }
        Ok(())
    }

    /// Send the transactions of a batch back to back, in one write.
    fn send_restores(&self, conn: &Conn, batch: &[Arc<TxnRecord>]) -> Result<Vec<InFlight>> {
        let inner = &self.inner;
        let mut frames = Vec::with_capacity(batch.iter().map(|r| r.records.len() + 3).sum());
        let mut sent = Vec::with_capacity(batch.len());
        for rec in batch {
            let id = inner.next_txn_id.fetch_add(1, Ordering::Relaxed);
            let idv = Value::from(id);
            frames.push(OutFrame::tpc_begin(
                conn.flavour(),
                &idv,
                &rec.meta,
                decode_ext(&rec.meta.extension)?,
                Some(rec.tid),
                rec.status,
            ));
            for r in &rec.records {
                frames.push(OutFrame::restorea(
                    conn.flavour(),
                    r.oid,
                    rec.tid,
                    r.data.as_deref(),
                    r.data_txn,
                    &idv,
                ));
            }
            let vote_id = inner.msgid();
            let vote_rx = conn.expect(vote_id)?;
            let finish_id = inner.msgid();
            let finish_rx = conn.expect(finish_id)?;
            frames.push(OutFrame::whole(conn.flavour().encode(
                vote_id,
                0,
                "vote",
                &Value::Array(vec![idv.clone()]),
            )));
            frames.push(OutFrame::whole(conn.flavour().encode(
                finish_id,
                0,
                "tpc_finish",
                &Value::Array(vec![idv]),
            )));
            sent.push(InFlight {
                tid: rec.tid,
                bytes: rec.data_bytes(),
                vote: (vote_id, vote_rx),
                finish: (finish_id, finish_rx),
            });
        }
        conn.send(&frames)?;
        Ok(sent)
    }

    /// Wait for a transaction's replies: its tid and record bytes once
    /// the server finished it.
    fn complete(&self, conn: &Conn, f: InFlight) -> Result<Shipped> {
        // A big transaction needs time to cross a slow link: giving up
        // early would abandon one the server may still commit.
        let timeout = self.inner.opts.call_timeout
            + std::time::Duration::from_secs_f64(f.bytes as f64 / SLOWEST_LINK);
        let vote = conn.await_reply(f.vote.0, &f.vote.1, "vote", timeout, timeout)?;
        let (conflicts, _) = parse_vote(&vote)?;
        if !conflicts.is_empty() {
            return Err(Error::Transaction(format!(
                "{} conflicts restoring transaction {}",
                conflicts.len(),
                f.tid
            )));
        }
        let finished = conn.await_reply(f.finish.0, &f.finish.1, "tpc_finish", timeout, timeout)?;
        let tid = tid_of(&finished, "tpc_finish reply")?;
        if tid != f.tid {
            return Err(Error::Transaction(format!(
                "transaction {} was committed as {tid}",
                f.tid
            )));
        }
        Ok((tid, f.bytes))
    }
}
