//! Group commit: the second half of `tpc_finish` for storages that split it
//! ([`Storage::group_commit`](crate::storage::Storage::group_commit)).
//!
//! A worker logs the transaction under the commit lock
//! ([`Storage::finish_log`](crate::storage::Storage::finish_log)), hands the
//! lock on and passes the transaction here. One named thread per storage
//! (`zeoraid-commit-NAME`) takes every transaction waiting, makes them
//! durable with one call (one fsync), then, oldest first, publishes each
//! under the storage's visibility lock, queues its invalidations and
//! acknowledges it. The queue (`handoff`) is FIFO and logging happens
//! under the commit lock, so transactions arrive here in tid order and are
//! published in it.
//!
//! Nothing is acknowledged before it is durable. When durability fails the
//! whole batch gets the error and the storage refuses later commits.
//!
//! [`announce`], which every commit ends with (here, or on the worker for a
//! storage without group commit), sends a visible transaction's
//! invalidations to the storage's other clients.

use super::guard::guarded;
use super::status::info_message;
use super::wire::oids_value;
use super::{lock, ConnId, Out, Shared, StorageEntry};
use crate::handoff::Receiver;
use crate::locks::{read, write};
use crate::storage::{Oid, Tid};
use crate::zeo::message::{self, tid_value};
use rmpv::Value;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A transaction became visible: count it, remember its invalidations for
/// `getInvalidations` and send them to every other client of the storage.
/// The caller holds the write side of the storage's visibility lock around
/// making the transaction visible and this: every load reply is queued
/// either before both (old state, then the invalidation) or after both (new
/// state). Without it a client can cache a stale state as current (ZEO
/// issue #155, ZODB's test_race_load_vs_external_invalidate).
pub(super) fn announce(
    shared: &Shared,
    entry: &StorageEntry,
    committer: ConnId,
    tid: Tid,
    invalidated: &[Oid],
) {
    entry.stats.commits.fetch_add(1, Ordering::Relaxed);
    lock(&entry.invq).push(tid, invalidated.to_vec());
    let others: Vec<ConnId> = read(&entry.clients)
        .iter()
        .copied()
        .filter(|c| *c != committer)
        .collect();
    if !others.is_empty() {
        let inv = message::encode_oneway(
            "invalidateTransaction",
            vec![tid_value(tid), oids_value(invalidated)],
        );
        shared.send(Out::Broadcast(others, Arc::new(inv)));
    }
}

/// A logged transaction waiting to be made durable and acknowledged.
pub(crate) struct Finished {
    pub conn: ConnId,
    /// The `tpc_finish` call to answer (`None`: it was sent one-way).
    pub msgid: Option<Value>,
    pub tid: Tid,
    pub invalidated: Vec<Oid>,
}

pub(crate) enum Msg {
    Finished(Finished),
    /// Finish what came before, then end the thread.
    Stop,
}

/// The thread body: batches of whatever is waiting, until `Stop`.
pub(crate) fn run(shared: Arc<Shared>, entry: Arc<StorageEntry>, rx: Receiver<Msg>) {
    loop {
        let first = match rx.recv() {
            Some(Msg::Finished(f)) => f,
            Some(Msg::Stop) | None => return,
        };
        let mut batch = vec![first];
        let mut stop = false;
        while let Some(m) = rx.try_recv() {
            match m {
                Msg::Finished(f) => batch.push(f),
                Msg::Stop => {
                    stop = true;
                    break;
                }
            }
        }
        complete(&shared, &entry, batch);
        if stop {
            return;
        }
    }
}

/// Make `batch` (in tid order) durable, publish and acknowledge each.
pub(crate) fn complete(shared: &Shared, entry: &StorageEntry, batch: Vec<Finished>) {
    let Some(last) = batch.last().map(|f| f.tid) else {
        return;
    };
    let durable = guarded("tpc_finish", || entry.storage.make_durable(last)).and_then(|r| r);
    if let Err(e) = &durable {
        log::error!(
            "storage {:?}: {} transaction(s) up to {last} could not be made durable: {e}; \
             their clients get an error (the transactions may or may not be on disk)",
            entry.name,
            batch.len()
        );
    }
    for f in batch {
        let result = match &durable {
            Ok(()) => {
                let published = guarded("tpc_finish", || {
                    let _visible = write(&entry.visibility);
                    entry.storage.publish(f.tid);
                    announce(shared, entry, f.conn, f.tid, &f.invalidated);
                });
                published.map(|()| {
                    shared.send(Out::Send(f.conn, info_message(entry)));
                    tid_value(f.tid)
                })
            }
            Err(e) => Err(e.clone()),
        };
        match (&f.msgid, &result) {
            (Some(id), Ok(v)) => shared.send(Out::Send(f.conn, message::encode_reply(id, v))),
            (Some(id), Err(e)) => shared.send(Out::Send(f.conn, message::encode_error(id, e))),
            (None, Ok(_)) => {}
            // A failed one-way call closes the connection, as ZEO does.
            (None, Err(_)) => shared.send(Out::Close(f.conn)),
        }
    }
}
