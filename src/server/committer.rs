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

use super::commit::announce;
use super::session::guarded;
use super::status::info_message;
use super::{ConnId, Out, Shared, StorageEntry};
use crate::handoff::Receiver;
use crate::locks::write;
use crate::storage::{Oid, Tid};
use crate::zeo::message::{self, tid_value};
use rmpv::Value;
use std::sync::Arc;

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
