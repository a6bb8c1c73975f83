//! A connection's server-side state: what ZEO calls a `ZEOStorage`.
//!
//! A [`Session`] holds the storage the client registered with, its ordered
//! [`Queue`] (transaction and iterator messages wait there, in arrival
//! order, for one worker at a time), and its [`State`]: the transaction
//! buffer ([`TxnState`]: stores are only buffered until `vote`, as in ZEO 5)
//! and open iterators. A vote that finds the commit lock held *parks* the
//! queue ([`Flow::Parked`]); it is resumed when the lock is handed over
//! ([`super::commit_lock`], [`release_lock`]).
//!
//! This module holds state only: it imports none of the modules that run
//! requests (`worker`, `handlers`, `commit`, `committer`).

use super::blobs::Upload;
use super::{lock, ConnId, Job, Shared, StorageEntry};
use crate::storage::blobdir::StagedFile;
use crate::storage::{Error, Oid, Op, Result, Tid, TxnIter, TxnMeta, TxnRecord};
use crate::zeo::message::Message;
use rmpv::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// A session's ordered messages waiting for a worker, and whether one is
/// scheduled to drain them or they wait on a parked vote.
#[derive(Default)]
pub(super) struct Queue {
    /// Ordered messages and their frame sizes.
    msgs: VecDeque<(Message, usize)>,
    /// The frame bytes waiting in `msgs`.
    bytes: usize,
    /// The event loop stopped reading this connection ([`QUEUE_HIGH`]).
    paused: bool,
    scheduled: bool,
    pub(super) parked: bool,
    closed: bool,
}

/// Past this many bytes of ordered messages waiting for a worker (a blob
/// upload outrunning the disk), the event loop stops reading the
/// connection: the client waits in TCP flow control instead of the server
/// holding its data in memory.
pub(super) const QUEUE_HIGH: usize = 8 << 20;

/// Reading resumes once the queue is down to this.
pub(super) const QUEUE_LOW: usize = 2 << 20;

/// What queueing a message asks of the event loop.
pub(crate) struct Enqueued {
    /// Schedule a drain of the session's queue.
    pub(crate) drain: bool,
    /// Stop reading the connection until the worker says resume.
    pub(crate) pause: bool,
}

pub(super) struct TxnState {
    pub(super) id: Value,
    pub(super) meta: TxnMeta,
    pub(super) tid: Option<Tid>,
    pub(super) status: u8,
    pub(super) ops: Vec<Op>,
    /// Holds the storage's commit lock and a prepared transaction.
    pub(super) locked: bool,
    pub(super) invalidated: Vec<Oid>,
    /// msgid of a vote waiting for the commit lock.
    pub(super) pending_vote: Option<Value>,
    /// What the last vote answered as conflicts (oid, committed, read): the
    /// client must resolve and vote again before it may finish.
    pub(super) conflicts: Vec<(Oid, Tid, Tid)>,
    /// Oids whose conflicts the server merged ([`super::commit`]): the
    /// client must not cache its own state of them.
    pub(super) server_resolved: Vec<Oid>,
    /// A blob upload between `storeBlobStart` and `storeBlobEnd`.
    pub(super) upload: Option<Upload>,
    /// Blob files of this transaction, removed when it ends.
    pub(super) staged: Vec<StagedFile>,
    /// Why a blob of this transaction cannot commit: the vote fails with
    /// it (blob uploads are one-way messages, without an answer).
    pub(super) blob_failed: Option<String>,
}

impl TxnState {
    /// The transaction `tpc_begin` starts: nothing buffered yet.
    pub(super) fn new(id: Value, meta: TxnMeta, tid: Option<Tid>, status: u8) -> TxnState {
        TxnState {
            id,
            meta,
            tid,
            status,
            ops: Vec::new(),
            locked: false,
            invalidated: Vec::new(),
            pending_vote: None,
            conflicts: Vec::new(),
            server_resolved: Vec::new(),
            upload: None,
            staged: Vec::new(),
            blob_failed: None,
        }
    }
}

pub(super) enum IterState {
    Txns {
        iter: TxnIter,
        last: Option<TxnRecord>,
    },
    Records(std::vec::IntoIter<crate::storage::DataRecord>),
}

#[derive(Default)]
pub(super) struct State {
    pub(super) txn: Option<TxnState>,
    pub(super) iterators: HashMap<i64, IterState>,
    pub(super) next_iid: i64,
    pub(super) label: String,
}

/// One client connection's server-side state.
pub struct Session {
    pub id: ConnId,
    pub peer: String,
    pub(super) queue: Mutex<Queue>,
    pub(super) state: Mutex<State>,
    pub(super) storage: OnceLock<Arc<StorageEntry>>,
    pub(super) read_only: AtomicBool,
}

/// What running an ordered message produced.
pub(super) enum Flow {
    Reply(Result<Value>),
    /// One-way message handled.
    Done,
    /// The vote waits for the commit lock.
    Parked,
}

impl Session {
    pub fn new(id: ConnId, peer: String) -> Session {
        Session {
            id,
            peer,
            queue: Mutex::new(Queue::default()),
            state: Mutex::new(State::default()),
            storage: OnceLock::new(),
            read_only: AtomicBool::new(false),
        }
    }

    pub fn is_registered(&self) -> bool {
        self.storage.get().is_some()
    }

    /// The registered storage answers point reads without blocking.
    pub fn reads_never_block(&self) -> bool {
        self.storage
            .get()
            .map(|e| e.storage.reads_never_block())
            .unwrap_or(false)
    }

    /// Queue an ordered message of `size` frame bytes.
    pub(crate) fn enqueue(&self, msg: Message, size: usize) -> Enqueued {
        let mut q = lock(&self.queue);
        if q.closed {
            return Enqueued {
                drain: false,
                pause: false,
            };
        }
        q.msgs.push_back((msg, size));
        q.bytes += size;
        let pause = !q.paused && q.bytes > QUEUE_HIGH;
        if pause {
            q.paused = true;
        }
        if q.scheduled || q.parked {
            return Enqueued {
                drain: false,
                pause,
            };
        }
        q.scheduled = true;
        Enqueued { drain: true, pause }
    }

    /// The connection is gone (a streaming reply stops).
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.queue).closed
    }

    pub(crate) fn mark_closed(&self) {
        let mut q = lock(&self.queue);
        q.closed = true;
        q.msgs.clear();
        q.bytes = 0;
    }

    /// The next ordered message to run and whether the event loop may read
    /// the connection again (its queue is down to [`QUEUE_LOW`]); `None`
    /// when the queue is parked or empty, and the drain ends.
    pub(super) fn next_ordered(&self) -> Option<(Message, bool)> {
        let mut q = lock(&self.queue);
        if q.parked {
            q.scheduled = false;
            return None;
        }
        match q.msgs.pop_front() {
            Some((m, size)) => {
                q.bytes = q.bytes.saturating_sub(size);
                let resume = q.paused && q.bytes <= QUEUE_LOW;
                if resume {
                    q.paused = false;
                }
                Some((m, resume))
            }
            None => {
                q.scheduled = false;
                None
            }
        }
    }

    /// After a vote parked: `true` (and the drain ends) unless the vote was
    /// already resumed.
    pub(super) fn stop_if_parked(&self) -> bool {
        let mut q = lock(&self.queue);
        if q.parked {
            q.scheduled = false;
        }
        q.parked
    }

    /// The parked vote was answered: `true` when the queue has messages
    /// waiting and a drain must be scheduled for them.
    pub(super) fn unpark(&self) -> bool {
        let mut q = lock(&self.queue);
        q.parked = false;
        let drain = !q.scheduled && !q.msgs.is_empty() && !q.closed;
        if drain {
            q.scheduled = true;
        }
        drain
    }

    pub(super) fn entry(&self) -> Result<&Arc<StorageEntry>> {
        self.storage
            .get()
            .ok_or_else(|| Error::Value("register() must be called first".into()))
    }
}

/// The session `id` gives up the commit lock (or its place in the queue
/// for it): the next voter's parked vote is resumed.
pub(super) fn release_lock(shared: &Shared, entry: &StorageEntry, id: ConnId) {
    let next = lock(&entry.lock).release(id, Instant::now());
    if let Some(next) = next {
        let _ = shared.jobs.send(Job::Resume(next));
    }
}

/// The session's current transaction, if `id` names it and the session may
/// write; else the error ZEO answers (`StorageTransactionError`, read-only).
pub(super) fn check_txn<'a>(
    sess: &Session,
    st: &'a mut State,
    id: &Value,
    method: &str,
) -> Result<&'a mut TxnState> {
    if sess.read_only.load(Ordering::Relaxed) {
        return Err(Error::ReadOnly);
    }
    match st.txn.as_mut() {
        None => Err(Error::Transaction(format!(
            "no current transaction: {method}()"
        ))),
        Some(t) if &t.id != id => Err(Error::Transaction(format!(
            "{method}({id}) invalid; current transaction = {}",
            t.id
        ))),
        Some(t) => Ok(t),
    }
}
