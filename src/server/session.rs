//! Per-connection sessions and the worker loop that runs their requests.
//!
//! A session is what ZEO calls a `ZEOStorage`: the storage the client
//! registered with, its transaction buffer (stores are only buffered until
//! `vote`, as in ZEO 5), its open iterators. Ordered messages go through the
//! session's queue and are run one at a time, in arrival order; a vote that
//! finds the commit lock held *parks* the queue and frees the worker, and is
//! resumed when the lock is handed over ([`super::commit_lock`]).

use super::blobs::{self, Upload};
use super::commit::{do_vote, finish, vote};
use super::status::{get_info, info_message, size_info_value, status_json};
use super::wire::{
    data_arg, ext_bytes, ext_value, json_to_value, matches_spec, oids_value, parse_undo_id,
    txn_meta_entries, undo_entry_value, undo_range,
};
use super::{lock, ConnId, Job, Out, Shared, StorageEntry};
use crate::handoff::Receiver;
use crate::locks::{read, write};
use crate::storage::blobdir::StagedFile;
use crate::storage::{timestamp, Error, Oid, Op, Result, Tid, TxnIter, TxnMeta, TxnRecord};
use crate::zeo::message::{self, arg, bin, oid_value, opt_tid_value, tid_value, Message};
use rmpv::Value;
use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

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

enum IterState {
    Txns {
        iter: TxnIter,
        last: Option<TxnRecord>,
    },
    Records(std::vec::IntoIter<crate::storage::DataRecord>),
}

#[derive(Default)]
pub(super) struct State {
    pub(super) txn: Option<TxnState>,
    iterators: HashMap<i64, IterState>,
    next_iid: i64,
    label: String,
}

/// One client connection's server-side state.
pub struct Session {
    pub id: ConnId,
    pub peer: String,
    pub(super) queue: Mutex<Queue>,
    state: Mutex<State>,
    storage: OnceLock<Arc<StorageEntry>>,
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

    pub(super) fn entry(&self) -> Result<&Arc<StorageEntry>> {
        self.storage
            .get()
            .ok_or_else(|| Error::Value("register() must be called first".into()))
    }
}

/// The worker thread body.
pub(crate) fn worker(shared: Arc<Shared>, jobs: Receiver<Job>) {
    while let Some(job) = jobs.recv() {
        match job {
            Job::Stop => break,
            Job::Concurrent(id, mut msgs) => {
                if let Some(sess) = shared.session(id) {
                    // Reads that are round trips to other servers run side
                    // by side: hand all but the first back to the pool.
                    let remote = sess
                        .storage
                        .get()
                        .is_some_and(|e| e.storage.reads_wait_on_network());
                    if remote && msgs.len() > 1 {
                        for m in msgs.split_off(1) {
                            let _ = shared.jobs.send(Job::Concurrent(id, vec![m]));
                        }
                    }
                    // Point-read replies are queued under the storage's
                    // visibility lock (see `announce`), so a client never
                    // receives a state older than an invalidation it has
                    // already seen. Long reads (pack, undoLog, history...)
                    // run without it: publication must not wait for them.
                    let entry = sess.storage.get().cloned();
                    let mut visible = None;
                    let mut replies = Vec::with_capacity(msgs.len());
                    for msg in &msgs {
                        let point = super::methods::is_point_read(&msg.method);
                        if !point && visible.is_some() {
                            shared.send(Out::SendMany(id, std::mem::take(&mut replies)));
                            visible = None;
                        }
                        if point && visible.is_none() {
                            visible = entry.as_ref().map(|e| read(&e.visibility));
                        }
                        let result = guarded(&msg.method, || concurrent(&shared, &sess, msg))
                            .and_then(|r| r);
                        if msg.is_oneway() && result.is_err() {
                            reply(&shared, id, msg, result);
                        } else if let Some(payload) = encode_reply(id, msg, result) {
                            replies.push(payload);
                        }
                    }
                    shared.send(Out::SendMany(id, replies));
                    drop(visible);
                }
            }
            Job::Drain(id) => {
                if let Some(sess) = shared.session(id) {
                    drain(&shared, &sess);
                }
            }
            Job::Resume(id) => match shared.session(id) {
                Some(sess) => resume(&shared, &sess),
                None => log::debug!("resume for departed connection {id}"),
            },
            Job::Disconnected(id) => disconnected(&shared, id),
        }
    }
}

/// Answer a point read on the calling (event loop) thread: the reply
/// payload, `None` for a one-way call, `Err` when the connection must close.
pub(crate) fn run_inline(
    shared: &Shared,
    sess: &Session,
    msg: &Message,
) -> std::result::Result<Option<Vec<u8>>, ()> {
    let entry = sess.storage.get().cloned();
    let _visible = entry.as_ref().map(|e| read(&e.visibility));
    let result = guarded(&msg.method, || concurrent(shared, sess, msg)).and_then(|r| r);
    if msg.is_oneway() && result.is_err() {
        return Err(());
    }
    Ok(encode_reply(sess.id, msg, result))
}

/// A `loadBefore` answered on the event loop when the storage can do it
/// without waiting ([`crate::storage::Storage::load_before_nowait`]): the
/// reply payload, or `None` to hand the call to a worker as usual.
pub(crate) fn try_load_inline(sess: &Session, msg: &Message) -> Option<Vec<u8>> {
    if msg.method != "loadBefore" || msg.is_oneway() {
        return None;
    }
    let entry = sess.storage.get()?;
    let a = msg.arg_list();
    let oid = arg::oid(a.first()?, "oid").ok()?;
    let before = arg::tid(a.get(1)?, "tid").ok()?;
    // Never wait here (this is the event loop): a publication in progress
    // or waiting sends the load to a worker.
    let _visible = crate::locks::try_read(&entry.visibility)?;
    let loaded = guarded("loadBefore", || {
        entry.storage.load_before_nowait(oid, before)
    })
    .ok()
    .flatten()?;
    entry.stats.loads.fetch_add(1, Ordering::Relaxed);
    let result = loaded.map(loaded_value);
    encode_reply(sess.id, msg, result)
}

/// `loadBefore`'s answer as ZEO sends it: nil, or (data, start, end).
fn loaded_value(loaded: Option<crate::storage::Loaded>) -> Value {
    match loaded {
        None => Value::Nil,
        Some(l) => Value::Array(vec![bin(&l.data), tid_value(l.start), opt_tid_value(l.end)]),
    }
}

/// Run `f`, turning a panic into an error reply and a log line.
pub(super) fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        log::error!("internal error while handling {what}: {msg} (this is a zeoraid bug; please report it with this log)");
        Error::Remote {
            class: "ZODB.POSException.StorageError".into(),
            message: format!("zeoraid internal error in {what}: {msg}; see the server log"),
        }
    })
}

fn reply(shared: &Shared, id: ConnId, msg: &Message, result: Result<Value>) {
    if msg.is_oneway() {
        if let Err(e) = result {
            log::error!(
                "closing connection {id}: one-way {} failed: {e}",
                msg.method
            );
            shared.send(Out::Close(id));
        }
        return;
    }
    if let Some(payload) = encode_reply(id, msg, result) {
        shared.send(Out::Send(id, payload));
    }
}

/// The reply frame for a call (`None` for one-way messages).
fn encode_reply(id: ConnId, msg: &Message, result: Result<Value>) -> Option<Vec<u8>> {
    if msg.is_oneway() {
        return None;
    }
    Some(match &result {
        Ok(v) => message::encode_reply(&msg.msgid, v),
        Err(e) => {
            if !matches!(e, Error::PosKey(_) | Error::Conflict { .. }) {
                log::warn!("{} from connection {id} failed: {e}", msg.method);
            }
            message::encode_error(&msg.msgid, e)
        }
    })
}

fn drain(shared: &Arc<Shared>, sess: &Arc<Session>) {
    loop {
        let (msg, resume_reading) = {
            let mut q = lock(&sess.queue);
            if q.parked {
                q.scheduled = false;
                return;
            }
            match q.msgs.pop_front() {
                Some((m, size)) => {
                    q.bytes = q.bytes.saturating_sub(size);
                    let resume = q.paused && q.bytes <= QUEUE_LOW;
                    if resume {
                        q.paused = false;
                    }
                    (m, resume)
                }
                None => {
                    q.scheduled = false;
                    return;
                }
            }
        };
        if resume_reading {
            shared.send(Out::ResumeReading(sess.id));
        }
        let flow = guarded(&msg.method, || ordered(shared, sess, &msg))
            .unwrap_or_else(|e| Flow::Reply(Err(e)));
        match flow {
            Flow::Reply(r) => {
                if msg.is_oneway() && r.is_err() {
                    // ZEO closes the connection; run nothing more from it.
                    sess.mark_closed();
                }
                reply(shared, sess.id, &msg, r)
            }
            Flow::Done => {}
            Flow::Parked => {
                // Parked unless `resume` already ran the vote.
                let mut q = lock(&sess.queue);
                if q.parked {
                    q.scheduled = false;
                    return;
                }
            }
        }
    }
}

fn resume(shared: &Arc<Shared>, sess: &Arc<Session>) {
    let outcome = guarded("vote", || {
        let mut st = lock(&sess.state);
        let msgid = st.txn.as_mut().and_then(|t| t.pending_vote.take());
        msgid.map(|m| (m, do_vote(shared, sess, &mut st)))
    });
    match outcome {
        Ok(Some((msgid, result))) => {
            let msg = Message {
                msgid,
                flags: 0,
                method: "vote".into(),
                args: Value::Nil,
            };
            reply(shared, sess.id, &msg, result);
        }
        Ok(None) => {
            // The transaction went away (aborted or disconnected): pass the lock on.
            if let Ok(entry) = sess.entry() {
                release_lock(shared, entry, sess.id);
            }
        }
        Err(e) => log::error!("resuming a vote failed: {e}"),
    }
    let mut q = lock(&sess.queue);
    q.parked = false;
    if !q.scheduled && !q.msgs.is_empty() && !q.closed {
        q.scheduled = true;
        let _ = shared.jobs.send(Job::Drain(sess.id));
    }
}

pub(super) fn release_lock(shared: &Shared, entry: &StorageEntry, id: ConnId) {
    let next = lock(&entry.lock).release(id, Instant::now());
    if let Some(next) = next {
        let _ = shared.jobs.send(Job::Resume(next));
    }
}

fn disconnected(shared: &Arc<Shared>, id: ConnId) {
    let sess = write(&shared.sessions).remove(&id);
    let Some(sess) = sess else { return };
    let Some(entry) = sess.storage.get() else {
        return;
    };
    write(&entry.clients).remove(&id);
    let mut st = lock(&sess.state);
    if let Some(txn) = st.txn.take() {
        log::info!(
            "connection {id} from {} disconnected during a transaction ({}); aborting it",
            sess.peer,
            if txn.locked { "locked" } else { "unlocked" }
        );
        if txn.locked {
            entry.storage.tpc_abort();
        }
        entry.stats.aborts.fetch_add(1, Ordering::Relaxed);
        entry.stats.active_txns.fetch_sub(1, Ordering::Relaxed);
    }
    drop(st);
    release_lock(shared, entry, id);
}

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

/// Stateless reads, run concurrently.
fn concurrent(shared: &Shared, sess: &Session, msg: &Message) -> Result<Value> {
    let a = msg.arg_list();
    let entry = sess.entry()?;
    let st = &entry.storage;
    let opt = |i: usize| a.get(i).unwrap_or(&Value::Nil);
    match msg.method.as_str() {
        "loadBefore" => {
            entry.stats.loads.fetch_add(1, Ordering::Relaxed);
            let loaded = st.load_before(arg::oid(&a[0], "oid")?, arg::tid(&a[1], "tid")?)?;
            Ok(loaded_value(loaded))
        }
        "loadSerial" => {
            entry.stats.loads.fetch_add(1, Ordering::Relaxed);
            Ok(bin(&st.load_serial(
                arg::oid(&a[0], "oid")?,
                arg::tid(&a[1], "serial")?,
            )?))
        }
        "getTid" => {
            let oid = arg::oid(&a[0], "oid")?;
            match st.load_before(oid, Tid::MAX)? {
                Some(l) => Ok(tid_value(l.start)),
                None => Err(Error::PosKey(oid)),
            }
        }
        "history" => {
            let size = match opt(1) {
                Value::Nil => 1,
                v => arg::int(v, "size")?.max(1) as usize,
            };
            let h = st.history(arg::oid(&a[0], "oid")?, size)?;
            Ok(Value::Array(
                h.iter()
                    .map(|e| {
                        let mut m = vec![
                            (Value::from("time"), Value::F64(timestamp::time_time(e.tid))),
                            (Value::from("tid"), tid_value(e.tid)),
                            (Value::from("version"), Value::from("")),
                            (Value::from("size"), Value::from(e.size)),
                        ];
                        m.extend(txn_meta_entries(&e.meta));
                        Value::Map(m)
                    })
                    .collect(),
            ))
        }
        "lastTransaction" => Ok(tid_value(st.last_transaction()?)),
        "new_oids" | "new_oid" => {
            if sess.read_only.load(Ordering::Relaxed) || entry.read_only {
                return Err(Error::ReadOnly);
            }
            let n = match opt(0) {
                Value::Nil => 100,
                v => arg::int(v, "n")?,
            };
            let n = n.clamp(1, 100) as usize;
            let oids = st.new_oids(if msg.method == "new_oid" { 1 } else { n })?;
            if msg.method == "new_oid" {
                return oids
                    .first()
                    .map(|o| oid_value(*o))
                    .ok_or_else(|| Error::Value("no oid".into()));
            }
            Ok(oids_value(&oids))
        }
        "getInvalidations" => {
            let since = arg::tid(&a[0], "tid")?;
            Ok(match lock(&entry.invq).since(since) {
                None => Value::Nil,
                Some((tid, oids)) => Value::Array(vec![tid_value(tid), oids_value(&oids)]),
            })
        }
        "pack" => {
            let t = arg::float(&a[0], "time")?;
            log::info!("pack of storage {:?} to {t} started", entry.name);
            st.pack(t, true)?;
            log::info!("pack of storage {:?} complete", entry.name);
            let info = Arc::new(info_message(entry));
            let ids: Vec<ConnId> = read(&entry.clients).iter().copied().collect();
            shared.send(Out::Broadcast(ids, info));
            Ok(Value::Nil)
        }
        "undoLog" | "undoInfo" => {
            let first = arg::int(opt(0), "first")?;
            let last = match opt(1) {
                Value::Nil => -20,
                v => arg::int(v, "last")?,
            };
            let (first, last) = undo_range(first, last);
            let spec = opt(2);
            if !st.supports_undo() {
                return Ok(Value::Array(vec![]));
            }
            if msg.method == "undoInfo" && matches!(spec, Value::Map(m) if !m.is_empty()) {
                let all = st.undo_log(0, usize::MAX)?;
                let matching: Vec<Value> = all
                    .iter()
                    .map(undo_entry_value)
                    .filter(|v| matches_spec(v, spec))
                    .skip(first)
                    .take(last - first)
                    .collect();
                return Ok(Value::Array(matching));
            }
            Ok(Value::Array(
                st.undo_log(first, last)?
                    .iter()
                    .map(undo_entry_value)
                    .collect(),
            ))
        }
        "record_iternext" => {
            let next = arg::opt_oid(opt(0), "next")?;
            Ok(match st.record_iternext(next)? {
                None => Value::Nil,
                Some((oid, tid, data, next)) => Value::Array(vec![
                    oid_value(oid),
                    tid_value(tid),
                    bin(&data),
                    next.map(oid_value).unwrap_or(Value::Nil),
                ]),
            })
        }
        "ping" => Ok(Value::Nil),
        "server_status" => Ok(json_to_value(&status_json(entry))),
        "get_info" => Ok(get_info(entry)),
        "get_size_info" => Ok(size_info_value(entry)),
        "sendBlob" => {
            let oid = arg::oid(&a[0], "oid")?;
            let serial = arg::tid(&a[1], "serial")?;
            let path = st.load_blob(oid, serial)?;
            blobs::send_blob(shared, sess.id, oid, serial, &path, &|| sess.is_closed())?;
            Ok(Value::Nil)
        }
        other => Err(Error::Value(format!("{other} cannot run concurrently"))),
    }
}

/// Transaction and iterator messages, run in arrival order.
fn ordered(shared: &Shared, sess: &Session, msg: &Message) -> Flow {
    let a = msg.arg_list();
    if msg.method == "vote" {
        return vote(shared, sess, &mut lock(&sess.state), msg);
    }
    if msg.method == "tpc_finish" {
        return finish(shared, sess, &mut lock(&sess.state), msg);
    }
    if super::methods::lookup(&msg.method).map(|m| m.kind) == Some(super::methods::Kind::Concurrent)
    {
        // A read that arrived before register() completed took the ordered path.
        return Flow::Reply(concurrent(shared, sess, msg));
    }
    let mut guard = lock(&sess.state);
    let st = &mut *guard;
    let r: Result<Value> = (|| match msg.method.as_str() {
        "register" => register(shared, sess, a).map(tid_value),
        "tpc_begin" => {
            let entry = sess.entry()?;
            if sess.read_only.load(Ordering::Relaxed) || entry.read_only {
                return Err(Error::ReadOnly);
            }
            if let Some(t) = &st.txn {
                if t.id == a[0] {
                    log::info!("duplicate tpc_begin({}) from {}", a[0], sess.peer);
                    return Ok(Value::Nil);
                }
                return Err(Error::Transaction(
                    "Multiple simultaneous tpc_begin requests from one client.".into(),
                ));
            }
            let status = match a.get(5) {
                None | Some(Value::Nil) => b' ',
                Some(v) => arg::bytes(v, "status")?.first().copied().unwrap_or(b' '),
            };
            st.txn = Some(TxnState {
                id: a[0].clone(),
                meta: TxnMeta {
                    user: arg::bytes(&a[1], "user")?.to_vec(),
                    description: arg::bytes(&a[2], "description")?.to_vec(),
                    extension: ext_bytes(&a[3]),
                },
                tid: match a.get(4) {
                    Some(v) => arg::opt_tid(v, "tid")?,
                    None => None,
                },
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
            });
            entry.stats.active_txns.fetch_add(1, Ordering::Relaxed);
            Ok(Value::Nil)
        }
        "storea" => {
            let t = check_txn(sess, st, &a[3], "storea")?;
            t.ops.push(Op::Store {
                oid: arg::oid(&a[0], "oid")?,
                serial: arg::serial(&a[1], "serial")?,
                data: data_arg(&a[2], "data")?,
            });
            sess.entry()?.stats.stores.fetch_add(1, Ordering::Relaxed);
            Ok(Value::Nil)
        }
        "deleteObject" => {
            let t = check_txn(sess, st, &a[2], "deleteObject")?;
            t.ops.push(Op::Delete {
                oid: arg::oid(&a[0], "oid")?,
                serial: arg::serial(&a[1], "serial")?,
            });
            Ok(Value::Nil)
        }
        "checkCurrentSerialInTransaction" => {
            let t = check_txn(sess, st, &a[2], "checkCurrentSerialInTransaction")?;
            t.ops.push(Op::CheckCurrent {
                oid: arg::oid(&a[0], "oid")?,
                serial: arg::serial(&a[1], "serial")?,
            });
            Ok(Value::Nil)
        }
        "restorea" => {
            let t = check_txn(sess, st, &a[4], "restorea")?;
            t.ops.push(Op::Restore {
                oid: arg::oid(&a[0], "oid")?,
                serial: arg::serial(&a[1], "serial")?,
                data: match &a[2] {
                    Value::Nil => None,
                    v => Some(data_arg(v, "data")?),
                },
                prev_txn: arg::opt_tid(&a[3], "prev_txn")?,
            });
            Ok(Value::Nil)
        }
        "undoa" => {
            let t = check_txn(sess, st, &a[1], "undoa")?;
            t.ops.push(Op::Undo {
                txn: parse_undo_id(arg::bytes(&a[0], "trans_id")?)?,
            });
            Ok(Value::Nil)
        }
        "tpc_abort" => {
            let entry = sess.entry()?.clone();
            let matches = st.txn.as_ref().map(|t| t.id == a[0]).unwrap_or(false);
            if !matches {
                return Ok(Value::Nil);
            }
            if let Some(t) = st.txn.take() {
                if t.locked {
                    entry.storage.tpc_abort();
                }
                entry.stats.aborts.fetch_add(1, Ordering::Relaxed);
                entry.stats.active_txns.fetch_sub(1, Ordering::Relaxed);
            }
            release_lock(shared, &entry, sess.id);
            Ok(Value::Nil)
        }
        "iterator_start" => {
            let entry = sess.entry()?;
            let start = arg::opt_tid(a.first().unwrap_or(&Value::Nil), "start")?;
            let stop = arg::opt_tid(a.get(1).unwrap_or(&Value::Nil), "stop")?;
            let iter = entry.storage.iterator(start, stop)?;
            let iid = st.next_iid;
            st.next_iid += 1;
            st.iterators
                .insert(iid, IterState::Txns { iter, last: None });
            Ok(Value::from(iid))
        }
        "iterator_next" => {
            let iid = arg::int(&a[0], "iid")?;
            let Some(IterState::Txns { iter, last }) = st.iterators.get_mut(&iid) else {
                return Err(Error::Remote {
                    class: "builtins.KeyError".into(),
                    message: iid.to_string(),
                });
            };
            match iter.next() {
                None => {
                    st.iterators.remove(&iid);
                    Ok(Value::Nil)
                }
                Some(Err(e)) => Err(e),
                Some(Ok(t)) => {
                    let v = Value::Array(vec![
                        tid_value(t.tid),
                        Value::from(String::from(t.status as char)),
                        bin(&t.meta.user),
                        bin(&t.meta.description),
                        ext_value(&t.meta.extension),
                    ]);
                    *last = Some(t);
                    Ok(v)
                }
            }
        }
        "iterator_record_start" => {
            let iid = arg::int(&a[0], "txn_iid")?;
            let tid = arg::tid(&a[1], "tid")?;
            let records = match st.iterators.get(&iid) {
                Some(IterState::Txns { last: Some(t), .. }) if t.tid == tid => t.records.clone(),
                _ => {
                    return Err(Error::Value(format!(
                        "Out-of-order request for record iterator for transaction {tid}"
                    )))
                }
            };
            let riid = st.next_iid;
            st.next_iid += 1;
            st.iterators
                .insert(riid, IterState::Records(records.into_iter()));
            Ok(Value::from(riid))
        }
        "iterator_record_next" => {
            let iid = arg::int(&a[0], "iid")?;
            let Some(IterState::Records(recs)) = st.iterators.get_mut(&iid) else {
                return Err(Error::Remote {
                    class: "builtins.KeyError".into(),
                    message: iid.to_string(),
                });
            };
            match recs.next() {
                None => {
                    st.iterators.remove(&iid);
                    Ok(Value::Nil)
                }
                Some(r) => Ok(Value::Array(vec![
                    oid_value(r.oid),
                    tid_value(r.tid),
                    r.data.as_deref().map(bin).unwrap_or(Value::Nil),
                    opt_tid_value(r.data_txn),
                ])),
            }
        }
        "iterator_gc" => {
            if let Value::Array(ids) = &a[0] {
                for id in ids {
                    if let Ok(i) = arg::int(id, "iid") {
                        st.iterators.remove(&i);
                    }
                }
            }
            Ok(Value::Nil)
        }
        "set_client_label" => {
            st.label = arg::string(&a[0], "label").unwrap_or_default();
            Ok(Value::Nil)
        }
        "storeBlobStart" => {
            let dir = blob_staging(sess);
            let t = st.txn.as_mut().ok_or_else(|| {
                Error::Transaction("no current transaction: storeBlobStart()".into())
            })?;
            if t.upload.take().is_some() {
                fail_blob(t, "storeBlobStart before the previous blob ended".into());
            }
            match dir.and_then(|d| Upload::start(&d)) {
                Ok(u) => t.upload = Some(u),
                Err(e) => fail_blob(t, e.to_string()),
            }
            Ok(Value::Nil)
        }
        "storeBlobChunk" => {
            let chunk = arg::bytes(&a[0], "chunk")?;
            let t = st.txn.as_mut().ok_or_else(|| {
                Error::Transaction("no current transaction: storeBlobChunk()".into())
            })?;
            match t.upload.as_mut() {
                Some(u) => u.chunk(chunk, shared.max_blob_size),
                // (Its start failed, and said why.)
                None => fail_blob(t, "storeBlobChunk without storeBlobStart".into()),
            }
            Ok(Value::Nil)
        }
        "storeBlobEnd" => {
            let t = check_txn(sess, st, &a[3], "storeBlobEnd")?;
            let oid = arg::oid(&a[0], "oid")?;
            let serial = arg::serial(&a[1], "serial")?;
            let data = data_arg(&a[2], "data")?;
            match t.upload.take().map(Upload::end) {
                Some(Ok(staged)) => {
                    // Copies the storage wants (an array's mirrors), made
                    // now rather than under the commit lock.
                    match sess.entry()?.storage.prepare_blob(staged.path()) {
                        Ok(extra) => t.staged.extend(extra.into_iter().map(StagedFile::new)),
                        Err(e) => fail_blob(t, e.to_string()),
                    }
                    t.ops.push(Op::StoreBlob {
                        oid,
                        serial,
                        data,
                        blob: staged.path().to_path_buf(),
                    });
                    t.staged.push(staged);
                }
                Some(Err(why)) => fail_blob(t, why),
                None => fail_blob(t, "storeBlobEnd without storeBlobStart".into()),
            }
            sess.entry()?.stats.stores.fetch_add(1, Ordering::Relaxed);
            Ok(Value::Nil)
        }
        "storeBlobShared" => {
            let entry = sess.entry()?.clone();
            let t = check_txn(sess, st, &a[4], "storeBlobShared")?;
            let oid = arg::oid(&a[0], "oid")?;
            let serial = arg::serial(&a[1], "serial")?;
            let data = data_arg(&a[2], "data")?;
            let name = arg::string(&a[3], "filename")?;
            if !blobs::shared_name_ok(&name) {
                log::error!(
                    "connection {} from {}: refused storeBlobShared file name {name:?} (not a \
                     plain name ending in .tmp: a client sharing the blob directory names only \
                     its own upload); the transaction fails",
                    sess.id,
                    sess.peer
                );
                fail_blob(t, format!("bad file name for storeBlobShared: {name:?}"));
                return Ok(Value::Nil);
            }
            let Some(path) = entry.storage.shared_blob_path(oid, &name) else {
                fail_blob(t, crate::storage::NO_BLOBS.into());
                return Ok(Value::Nil);
            };
            if !path.is_file() {
                fail_blob(
                    t,
                    format!(
                        "the shared blob upload {} does not exist: is the client's blob_dir \
                     really zeoraid's blob-dir (shared_blob_dir = True needs the same directory)?",
                        path.display()
                    ),
                );
            }
            t.ops.push(Op::StoreBlob {
                oid,
                serial,
                data,
                blob: path.clone(),
            });
            t.staged.push(StagedFile::new(path));
            entry.stats.stores.fetch_add(1, Ordering::Relaxed);
            Ok(Value::Nil)
        }
        other => Err(Error::Value(format!("{other} is not an ordered method"))),
    })();
    if msg.is_oneway() && r.is_ok() {
        Flow::Done
    } else {
        Flow::Reply(r)
    }
}

/// Remember why a blob of `t` cannot commit (the first reason wins): its
/// vote fails with it.
fn fail_blob(t: &mut TxnState, why: String) {
    t.blob_failed.get_or_insert(why);
}

/// The registered storage's blob staging directory, or the error blob
/// calls get without one.
fn blob_staging(sess: &Session) -> Result<std::path::PathBuf> {
    sess.entry()?
        .storage
        .blob_staging_dir()
        .ok_or_else(|| Error::Unsupported(crate::storage::NO_BLOBS.into()))
}

fn register(shared: &Shared, sess: &Session, a: &[Value]) -> Result<Tid> {
    if sess.is_registered() {
        return Err(Error::Value("duplicate register() call".into()));
    }
    let name = arg::string(&a[0], "storage_id")?;
    let ro = arg::truthy(&a[1]);
    let entry = shared
        .storages
        .get(&name)
        .cloned()
        .ok_or_else(|| Error::Value(format!("unknown storage: {name}")))?;
    if !ro && entry.read_only {
        return Err(Error::ReadOnly);
    }
    sess.read_only.store(ro, Ordering::Relaxed);
    let last = entry.storage.last_transaction()?;
    write(&entry.clients).insert(sess.id);
    let _ = sess.storage.set(entry);
    log::info!(
        "connection {} from {} registered with storage {name:?}{}",
        sess.id,
        sess.peer,
        if ro { " read-only" } else { "" }
    );
    Ok(last)
}
