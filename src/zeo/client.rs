//! A blocking, multiplexed ZEO 5 client (msgpack flavour, "M5").
//!
//! One [`Client`] owns one TCP connection to one storage of a ZEO server
//! (stock Python `runzeo` with `msgpack true`, or zeoraid itself) and is
//! shared by any number of threads: every method takes `&self`.
//!
//! # Threads and routing
//!
//! - **Callers** encode a whole frame and write it under the connection's
//!   writer mutex (whole frames never interleave), after registering a
//!   `crossbeam_channel::bounded(1)` reply slot under a fresh msgid in the
//!   connection's pending map. They then wait on that slot until the call's
//!   deadline (`call_timeout`). A timed-out call removes its slot; a late
//!   reply is logged and dropped.
//! - **The reader thread** (`zeo-client-reader <addr>`) owns the read half.
//!   It cuts frames ([`frame::FrameDecoder`]), decodes messages, and routes
//!   them: a `.reply` goes to the slot of its msgid (an error reply, flags 2,
//!   becomes a [`storage::Error`] via [`message::error_from_wire`]);
//!   server→client one-way calls (`invalidateTransaction`, `info`) go to the
//!   event handler as [`ServerEvent`]s, in arrival order; anything else is
//!   logged at debug and dropped. Its read timeout doubles as the heartbeat
//!   clock: when nothing was written for `heartbeat`, it sends the heartbeat
//!   frame `[-1, 0, ".reply", nil]`, as ZEO's own client does.
//! - **Disconnects.** When the connection breaks (EOF, read or write error,
//!   a malformed frame), every waiting caller gets [`Error::Disconnected`] at
//!   once, the handler gets [`ServerEvent::Disconnected`], and the reader
//!   thread turns reconnector: it retries with exponential backoff (100 ms
//!   doubling to 5 s, with jitter), re-registers, and emits
//!   [`ServerEvent::Connected`]. Calls made while disconnected wait for the
//!   reconnection up to their deadline, then fail.
//! - **Transactions** are pinned to the connection they began on: a
//!   transaction whose connection was lost fails with
//!   [`Error::Disconnected`] at `tpc_finish` (the server aborted it when the
//!   connection dropped), it is never half-committed on a new connection.
//!
//! The event handler runs on the reader thread: it must be quick and must
//! not make synchronous calls on the same client (the reply could never be
//! read; the call would time out).
//!
//! [`close`](Client::close) (also run on drop) shuts the socket down and
//! joins the reader thread; it waits at most `connect_timeout` when a TCP
//! connect is in progress.
//!
//! `impl Storage for Client` maps the [`Storage`] contract onto the ZEO
//! server methods exactly as ZEO 6's `ClientStorage` does, with these notes:
//!
//! - `tpc_vote` sends one-way `tpc_begin`, `storea`/`deleteObject`/
//!   `checkCurrentSerialInTransaction`/`restorea`/`undoa`, then a synchronous
//!   `vote`. ZEO names the tid only in the `tpc_finish` reply, so
//!   `Vote::Prepared::tid` is the explicit `txn.tid` or [`Tid::ZERO`].
//! - When `vote` answers conflicts, the server has aborted the storage side
//!   but still holds the transaction id; we send a one-way `tpc_abort(id)`
//!   so that the caller's re-vote (a new `Txn`) can `tpc_begin` again.
//!   (Stock ZEO would refuse it with "Multiple simultaneous tpc_begin".)
//! - Undo ids sent in `undoa` are FileStorage's (base64 of the tid).
//! - On reconnect we do not call `getInvalidations`: whoever caches data
//!   must treat [`ServerEvent::Connected`] as "anything may have changed".
//!   The first connection emits no `Connected`; see
//!   [`Client::registered_last_tid`].

use crate::locks::{lock, read, write};
use crate::storage::undo_id::{parse_undo_id, undo_id};
use crate::storage::{
    self, Conflict, Data, DataRecord, Error, HistoryEntry, Loaded, Oid, Op, SizeInfo, Storage, Tid,
    Txn, TxnIter, TxnMeta, TxnRecord, UndoEntry, Vote,
};
use crate::zeo::frame::{self, FrameDecoder};
use crate::zeo::message::{self, short, Message, FLAG_ERROR, REPLY};
use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use rmpv::Value;
use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

type Result<T> = storage::Result<T>;

/// Receives what the server tells the client unasked.
pub type EventHandler = Arc<dyn Fn(ServerEvent) + Send + Sync>;

/// Connection parameters.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `host:port` of the ZEO server.
    pub addr: String,
    /// The storage name to `register` with (ZEO's default is `"1"`).
    pub storage: String,
    /// Register read-only; writes are refused locally.
    pub read_only: bool,
    /// Deadline of every call, including the wait for a reconnection.
    pub call_timeout: Duration,
    /// Deadline of the TCP connect and the server's protocol announcement.
    pub connect_timeout: Duration,
    /// Largest frame accepted from the server.
    pub max_frame: usize,
    /// Send a heartbeat after this long without writing anything.
    pub heartbeat: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            addr: String::new(),
            storage: "1".into(),
            read_only: false,
            call_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            max_frame: frame::DEFAULT_MAX_FRAME,
            heartbeat: Duration::from_secs(60),
        }
    }
}

impl ClientOptions {
    /// Defaults for the server at `addr`.
    pub fn new(addr: impl Into<String>) -> ClientOptions {
        ClientOptions {
            addr: addr.into(),
            ..ClientOptions::default()
        }
    }
}

/// Something the server told us, or a change of the connection.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerEvent {
    /// Another client committed `tid`, changing `oids`.
    Invalidate { tid: Tid, oids: Vec<Oid> },
    /// The server's `info(dict)` call (size information after commits and packs).
    Info(Value),
    /// The connection was lost; the reason. Reconnection is under way.
    Disconnected(String),
    /// Reconnected and registered again; the server's last tid.
    Connected { last_tid: Tid },
}

/// The protocol we speak and answer with.
const PROTOCOL: &[u8] = super::PROTOCOL;
/// Shortest and longest pause between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// `pack` can legitimately run for a long time: its deadline is this many call timeouts.
const PACK_TIMEOUT_FACTOR: u32 = 60;
/// ZEO servers hand out at most this many oids per `new_oids` call.
const OIDS_PER_CALL: usize = 100;
/// Object data above this size is written straight from the caller's buffer.
const COALESCE_LIMIT: usize = 32 << 10;

// ---------------------------------------------------------------------------
// Pure logic: backoff, protocol check, frame encoding, reply shapes.
// ---------------------------------------------------------------------------

/// The pause before reconnection attempt `attempt` (0-based): 100 ms doubling
/// up to 5 s, scaled by `0.5 + jitter / 2` with `jitter` in `[0, 1)` so that
/// many clients of a restarted server do not reconnect in lockstep.
pub fn backoff_delay(attempt: u32, jitter: f64) -> Duration {
    let base = BACKOFF_MIN
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(BACKOFF_MAX)
        .min(BACKOFF_MAX);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    base.mul_f64(0.5 + jitter / 2.0)
}

/// Check the server's protocol announcement. ZEO's rule: the first byte is
/// the encoding (`M` msgpack, `Z` pickle), the rest the version, compared as
/// bytes; we speak version 5 of any server that offers at least 5.
pub fn check_protocol(addr: &str, announced: &[u8]) -> Result<()> {
    match announced.split_first() {
        Some((b'M', version)) if version >= b"5".as_slice() => Ok(()),
        Some((b'M', version)) => Err(Error::Unsupported(format!(
            "server {addr} speaks ZEO protocol version {:?}; at least 5 is required",
            String::from_utf8_lossy(version)
        ))),
        Some((b'Z', _)) => Err(Error::Unsupported(format!(
            "server {addr} speaks the pickle protocol; start runzeo with `msgpack true`"
        ))),
        _ => Err(Error::Unsupported(format!(
            "server {addr} announced an unknown protocol {:?}",
            String::from_utf8_lossy(&announced[..announced.len().min(16)])
        ))),
    }
}

/// One outgoing frame: `prefix`, then `data` written straight from the
/// caller's buffer (object data is not copied into the message), then
/// `suffix`. The length prefix is added when writing.
struct OutFrame<'a> {
    prefix: Vec<u8>,
    data: &'a [u8],
    suffix: Vec<u8>,
}

impl<'a> OutFrame<'a> {
    fn whole(payload: Vec<u8>) -> OutFrame<'static> {
        OutFrame {
            prefix: payload,
            data: &[],
            suffix: Vec::new(),
        }
    }

    /// A one-way call `method(*before, data, *after)`; `data` `None` is nil.
    fn oneway(method: &str, before: &[Value], data: Option<&'a [u8]>, after: &[Value]) -> Self {
        let mut prefix = Vec::with_capacity(64);
        // Writing to a Vec cannot fail.
        let _ = rmp::encode::write_array_len(&mut prefix, 4);
        let _ = rmp::encode::write_sint(&mut prefix, 0);
        let _ = rmp::encode::write_bool(&mut prefix, true);
        let _ = rmp::encode::write_str(&mut prefix, method);
        let _ = rmp::encode::write_array_len(&mut prefix, (before.len() + 1 + after.len()) as u32);
        for v in before {
            let _ = rmpv::encode::write_value(&mut prefix, v);
        }
        let data = match data {
            Some(d) => {
                let _ = rmp::encode::write_bin_len(&mut prefix, d.len() as u32);
                d
            }
            None => {
                let _ = rmp::encode::write_nil(&mut prefix);
                &[][..]
            }
        };
        let mut suffix = Vec::with_capacity(16);
        for v in after {
            let _ = rmpv::encode::write_value(&mut suffix, v);
        }
        OutFrame {
            prefix,
            data,
            suffix,
        }
    }

    fn len(&self) -> usize {
        self.prefix.len() + self.data.len() + self.suffix.len()
    }
}

/// Write frames, coalescing small ones into few writes.
fn write_frames<W: Write + ?Sized>(w: &mut W, frames: &[OutFrame<'_>]) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
    for f in frames {
        let len = u32::try_from(f.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("message of {} bytes does not fit in a frame", f.len()),
            )
        })?;
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(&f.prefix);
        if f.data.len() > COALESCE_LIMIT {
            w.write_all(&buf)?;
            buf.clear();
            w.write_all(f.data)?;
        } else {
            buf.extend_from_slice(f.data);
        }
        buf.extend_from_slice(&f.suffix);
        if buf.len() >= 64 << 10 {
            w.write_all(&buf)?;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        w.write_all(&buf)?;
    }
    w.flush()
}

fn malformed(what: &str, v: &Value) -> Error {
    Error::Value(format!("malformed {what} from the server: {}", short(v)))
}

fn get<'a>(entries: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    entries
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

fn oid_of(v: &Value, what: &str) -> Result<Oid> {
    v.as_slice()
        .and_then(Oid::from_slice)
        .ok_or_else(|| malformed(what, v))
}

fn tid_of(v: &Value, what: &str) -> Result<Tid> {
    v.as_slice()
        .and_then(Tid::from_slice)
        .ok_or_else(|| malformed(what, v))
}

fn opt_tid_of(v: &Value, what: &str) -> Result<Option<Tid>> {
    match v {
        Value::Nil => Ok(None),
        other => tid_of(other, what).map(Some),
    }
}

fn data_of(v: &Value, what: &str) -> Result<Data> {
    v.as_slice()
        .map(Arc::from)
        .ok_or_else(|| malformed(what, v))
}

fn opt_data_of(v: &Value, what: &str) -> Result<Option<Data>> {
    match v {
        Value::Nil => Ok(None),
        other => data_of(other, what).map(Some),
    }
}

fn bytes_or_empty(v: Option<&Value>) -> Vec<u8> {
    v.and_then(|v| v.as_slice()).unwrap_or_default().to_vec()
}

fn int_of(v: &Value, what: &str) -> Result<i64> {
    match v {
        Value::Integer(i) => i.as_i64().ok_or_else(|| malformed(what, v)),
        Value::F64(f) if f.is_finite() => Ok(*f as i64),
        other => Err(malformed(what, other)),
    }
}

fn array_of<'a>(v: &'a Value, what: &str) -> Result<&'a [Value]> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Nil => Ok(&[]),
        other => Err(malformed(what, other)),
    }
}

/// The msgpack encoding of extension entries (empty for no entries), the
/// form [`TxnMeta::extension`] carries.
pub fn encode_ext(entries: Vec<(Value, Value)>) -> Vec<u8> {
    if entries.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let _ = rmpv::encode::write_value(&mut out, &Value::Map(entries));
    out
}

/// [`TxnMeta::extension`] back into a msgpack map (empty map for no bytes).
pub fn decode_ext(ext: &[u8]) -> Result<Value> {
    if ext.is_empty() {
        return Ok(Value::Map(Vec::new()));
    }
    let mut cur = ext;
    match rmpv::decode::read_value(&mut cur) {
        Ok(v @ Value::Map(_)) if cur.is_empty() => Ok(v),
        _ => Err(Error::Value(
            "the transaction extension is not the msgpack encoding of a map".into(),
        )),
    }
}

/// Metadata from a history/undo dict: `user_name`, `description`, and every
/// key not in `known` as the extension.
fn meta_from_dict(entries: &[(Value, Value)], known: &[&str]) -> TxnMeta {
    let ext: Vec<(Value, Value)> = entries
        .iter()
        .filter(|(k, _)| !k.as_str().map(|k| known.contains(&k)).unwrap_or(false))
        .cloned()
        .collect();
    TxnMeta {
        user: bytes_or_empty(get(entries, "user_name")),
        description: bytes_or_empty(get(entries, "description")),
        extension: encode_ext(ext),
    }
}

/// Extension as the iterator sends it: a map (FileStorage decodes it for us).
fn ext_from_value(v: &Value) -> Vec<u8> {
    match v {
        Value::Map(m) => encode_ext(m.clone()),
        Value::Nil => Vec::new(),
        other => {
            log::debug!(
                "ignoring a transaction extension that is not a map: {}",
                short(other)
            );
            Vec::new()
        }
    }
}

/// `loadBefore` reply: `None` or `[data, start, end|None]`.
pub fn parse_loaded(v: &Value) -> Result<Option<Loaded>> {
    match v {
        Value::Nil => Ok(None),
        Value::Array(a) if a.len() == 3 => Ok(Some(Loaded {
            data: data_of(&a[0], "loadBefore data")?,
            start: tid_of(&a[1], "loadBefore start tid")?,
            end: opt_tid_of(&a[2], "loadBefore end tid")?,
        })),
        other => Err(malformed("loadBefore reply", other)),
    }
}

/// `history` reply: a list of dicts `{tid, time, user_name, description, size, ...ext}`.
pub fn parse_history(v: &Value) -> Result<Vec<HistoryEntry>> {
    const KNOWN: &[&str] = &["tid", "time", "user_name", "description", "size", "version"];
    array_of(v, "history reply")?
        .iter()
        .map(|e| {
            let Value::Map(m) = e else {
                return Err(malformed("history entry", e));
            };
            let tid = get(m, "tid").ok_or_else(|| malformed("history entry", e))?;
            let size = match get(m, "size") {
                Some(s) => int_of(s, "history size")?.max(0) as u64,
                None => 0,
            };
            Ok(HistoryEntry {
                tid: tid_of(tid, "history tid")?,
                meta: meta_from_dict(m, KNOWN),
                size,
            })
        })
        .collect()
}

/// `undoLog` reply: a list of dicts `{id, time, user_name, description, ...ext}`.
pub fn parse_undo_log(v: &Value) -> Result<Vec<UndoEntry>> {
    const KNOWN: &[&str] = &["id", "time", "user_name", "description", "size"];
    array_of(v, "undoLog reply")?
        .iter()
        .map(|e| {
            let Value::Map(m) = e else {
                return Err(malformed("undoLog entry", e));
            };
            let tid = get(m, "id")
                .and_then(|id| id.as_slice())
                .and_then(parse_undo_id)
                .ok_or_else(|| malformed("undoLog id", e))?;
            Ok(UndoEntry {
                tid,
                meta: meta_from_dict(m, KNOWN),
            })
        })
        .collect()
}

/// `vote` reply: conflict dicts `{oid, serials: [committed, read], data}` and
/// oids the server resolved (undo).
pub fn parse_vote(v: &Value) -> Result<(Vec<Conflict>, Vec<Oid>)> {
    let mut conflicts = Vec::new();
    let mut resolved = Vec::new();
    for item in array_of(v, "vote reply")? {
        match item {
            Value::Map(m) => {
                let oid = get(m, "oid").ok_or_else(|| malformed("conflict", item))?;
                let serials = match get(m, "serials") {
                    Some(Value::Array(s)) if s.len() == 2 => s,
                    _ => return Err(malformed("conflict serials", item)),
                };
                conflicts.push(Conflict {
                    oid: oid_of(oid, "conflict oid")?,
                    committed: tid_of(&serials[0], "conflict serial")?,
                    read: tid_of(&serials[1], "conflict serial")?,
                    data: match get(m, "data") {
                        Some(Value::Nil) | None => Arc::from(&[][..]),
                        Some(d) => data_of(d, "conflict data")?,
                    },
                });
            }
            other => resolved.push(oid_of(other, "resolved oid")?),
        }
    }
    Ok((conflicts, resolved))
}

/// `iterator_next` reply: `[tid, status, user, description, extension]` or `None`.
pub fn parse_txn_header(v: &Value) -> Result<Option<(Tid, u8, TxnMeta)>> {
    let a = match v {
        Value::Nil => return Ok(None),
        Value::Array(a) if a.len() == 5 => a,
        other => return Err(malformed("iterator_next reply", other)),
    };
    let status = a[1]
        .as_slice()
        .and_then(|s| s.first().copied())
        .unwrap_or(b' ');
    Ok(Some((
        tid_of(&a[0], "iterator tid")?,
        status,
        TxnMeta {
            user: bytes_or_empty(Some(&a[2])),
            description: bytes_or_empty(Some(&a[3])),
            extension: ext_from_value(&a[4]),
        },
    )))
}

/// `iterator_record_next` reply: `[oid, tid, data|None, data_txn|None]` or `None`.
pub fn parse_data_record(v: &Value) -> Result<Option<DataRecord>> {
    match v {
        Value::Nil => Ok(None),
        Value::Array(a) if a.len() == 4 => Ok(Some(DataRecord {
            oid: oid_of(&a[0], "record oid")?,
            tid: tid_of(&a[1], "record tid")?,
            data: opt_data_of(&a[2], "record data")?,
            data_txn: opt_tid_of(&a[3], "record data_txn")?,
        })),
        other => Err(malformed("iterator_record_next reply", other)),
    }
}

/// A current record as `record_iternext` returns it: (oid, tid, data, next oid).
pub type CurrentRecord = (Oid, Tid, Data, Option<Oid>);

/// `record_iternext` reply: `[oid, tid, data, next_oid|None]` (or `None`).
pub fn parse_record_iternext(v: &Value) -> Result<Option<CurrentRecord>> {
    match v {
        Value::Nil => Ok(None),
        Value::Array(a) if a.len() == 4 => Ok(Some((
            oid_of(&a[0], "record_iternext oid")?,
            tid_of(&a[1], "record_iternext tid")?,
            data_of(&a[2], "record_iternext data")?,
            match &a[3] {
                Value::Nil => None,
                n => Some(oid_of(n, "record_iternext next oid")?),
            },
        ))),
        other => Err(malformed("record_iternext reply", other)),
    }
}

/// `new_oids` reply: a list of oids.
pub fn parse_oids(v: &Value) -> Result<Vec<Oid>> {
    array_of(v, "new_oids reply")?
        .iter()
        .map(|o| oid_of(o, "new oid"))
        .collect()
}

/// `invalidateTransaction(tid, oids)` arguments.
pub fn parse_invalidation(args: &[Value]) -> Result<(Tid, Vec<Oid>)> {
    match args {
        [tid, oids] => Ok((
            tid_of(tid, "invalidation tid")?,
            array_of(oids, "invalidated oids")?
                .iter()
                .map(|o| oid_of(o, "invalidated oid"))
                .collect::<Result<_>>()?,
        )),
        _ => Err(malformed(
            "invalidateTransaction arguments",
            &Value::Array(args.to_vec()),
        )),
    }
}

/// `get_size_info` / `get_info` dict: `length` objects, `size` bytes.
pub fn parse_size_info(v: &Value) -> SizeInfo {
    let n = |k| match v {
        Value::Map(m) => get(m, k)
            .and_then(|x| x.as_u64().or_else(|| x.as_f64().map(|f| f.max(0.0) as u64)))
            .unwrap_or(0),
        _ => 0,
    };
    SizeInfo {
        objects: n("length"),
        bytes: n("size"),
    }
}

fn status_str(status: u8) -> String {
    if status.is_ascii_graphic() || status == b' ' {
        (status as char).to_string()
    } else {
        " ".to_string()
    }
}

// ---------------------------------------------------------------------------
// One connection.
// ---------------------------------------------------------------------------

type Reply = Result<Value>;

enum Pending {
    Open(HashMap<i64, Sender<Reply>>),
    /// The connection is gone, and why.
    Dead(String),
}

/// One established, registered connection. Replaced, never reused, on reconnect.
struct Conn {
    addr: String,
    writer: Mutex<TcpStream>,
    /// A handle to shut the socket down without waiting for the writer lock.
    control: TcpStream,
    pending: Mutex<Pending>,
    last_write: Mutex<Instant>,
}

impl Conn {
    fn new(addr: &str, stream: &TcpStream) -> io::Result<Conn> {
        Ok(Conn {
            addr: addr.to_string(),
            writer: Mutex::new(stream.try_clone()?),
            control: stream.try_clone()?,
            pending: Mutex::new(Pending::Open(HashMap::new())),
            last_write: Mutex::new(Instant::now()),
        })
    }

    fn alive(&self) -> bool {
        matches!(*lock(&self.pending), Pending::Open(_))
    }

    fn disconnected(&self, reason: &str) -> Error {
        Error::Disconnected(format!("{}: {reason}", self.addr))
    }

    fn dead_error(&self) -> Error {
        match &*lock(&self.pending) {
            Pending::Dead(r) => self.disconnected(r),
            Pending::Open(_) => self.disconnected("connection lost"),
        }
    }

    /// Mark the connection dead, shut the socket down, fail every waiting caller.
    fn kill(&self, reason: &str) {
        let waiters = {
            let mut p = lock(&self.pending);
            match std::mem::replace(&mut *p, Pending::Dead(reason.to_string())) {
                Pending::Open(m) => m,
                dead @ Pending::Dead(_) => {
                    *p = dead;
                    return;
                }
            }
        };
        let _ = self.control.shutdown(Shutdown::Both);
        for (_, tx) in waiters {
            let _ = tx.try_send(Err(self.disconnected(reason)));
        }
    }

    /// Hand a reply to the caller waiting for `msgid`; false when nobody waits.
    fn deliver(&self, msgid: i64, reply: Reply) -> bool {
        let tx = match &mut *lock(&self.pending) {
            Pending::Open(m) => m.remove(&msgid),
            Pending::Dead(_) => None,
        };
        match tx {
            Some(tx) => tx.try_send(reply).is_ok(),
            None => false,
        }
    }

    fn forget(&self, msgid: i64) {
        if let Pending::Open(m) = &mut *lock(&self.pending) {
            m.remove(&msgid);
        }
    }

    fn idle_for(&self) -> Duration {
        lock(&self.last_write).elapsed()
    }

    /// Write whole frames; a failed write kills the connection (the stream
    /// may hold half a frame).
    fn send(&self, frames: &[OutFrame<'_>]) -> Result<()> {
        let mut w = lock(&self.writer);
        if !self.alive() {
            return Err(self.dead_error());
        }
        match write_frames(&mut *w, frames) {
            Ok(()) => {
                *lock(&self.last_write) = Instant::now();
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => Err(Error::Value(e.to_string())),
            Err(e) => {
                drop(w);
                let reason = format!("write failed: {e}");
                self.kill(&reason);
                Err(self.disconnected(&reason))
            }
        }
    }

    /// Send the heartbeat unless a caller is writing right now (then the
    /// connection is not idle, and the reader must not block behind it).
    fn heartbeat(&self) -> Result<()> {
        let mut w = match self.writer.try_lock() {
            Ok(w) => w,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(()),
        };
        match write_frames(&mut *w, &[OutFrame::whole(message::heartbeat())]) {
            Ok(()) => {
                *lock(&self.last_write) = Instant::now();
                Ok(())
            }
            Err(e) => {
                drop(w);
                let reason = format!("write failed: {e}");
                self.kill(&reason);
                Err(self.disconnected(&reason))
            }
        }
    }

    fn send_oneway(&self, method: &str, args: Vec<Value>) -> Result<()> {
        self.send(&[OutFrame::whole(message::encode_oneway(method, args))])
    }

    /// A synchronous call on this connection, waiting until `deadline`.
    fn call(
        &self,
        msgid: i64,
        method: &str,
        args: Vec<Value>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Value> {
        let (tx, rx) = bounded(1);
        match &mut *lock(&self.pending) {
            Pending::Open(m) => {
                m.insert(msgid, tx);
            }
            Pending::Dead(r) => return Err(self.disconnected(r)),
        }
        let payload = message::encode(msgid, 0, method, &Value::Array(args));
        if let Err(e) = self.send(&[OutFrame::whole(payload)]) {
            self.forget(msgid);
            return Err(e);
        }
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(reply) => reply,
            Err(RecvTimeoutError::Timeout) => {
                self.forget(msgid);
                // The reply may have arrived between the timeout and `forget`.
                if let Ok(reply) = rx.try_recv() {
                    return reply;
                }
                Err(Error::Disconnected(format!(
                    "{}: no reply to {method} within {timeout:?} (call timeout)",
                    self.addr
                )))
            }
            Err(RecvTimeoutError::Disconnected) => Err(self.dead_error()),
        }
    }
}

/// What a successful handshake yields.
struct Established {
    conn: Arc<Conn>,
    reader: TcpStream,
    decoder: FrameDecoder,
    last_tid: Tid,
    info: Value,
    /// Server calls that arrived during the handshake, delivered after it.
    early: Vec<Message>,
}

fn open_stream(opts: &ClientOptions) -> Result<TcpStream> {
    let addrs = opts
        .addr
        .to_socket_addrs()
        .map_err(|e| Error::Disconnected(format!("cannot resolve {:?}: {e}", opts.addr)))?;
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, opts.connect_timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(Error::Disconnected(format!(
        "cannot connect to {}: {}",
        opts.addr,
        last.map(|e| e.to_string())
            .unwrap_or_else(|| "the name resolves to no address".into())
    )))
}

/// Read one frame, waiting at most until `deadline`.
fn read_frame_by(
    addr: &str,
    stream: &mut TcpStream,
    dec: &mut FrameDecoder,
    deadline: Instant,
    waiting_for: &str,
) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match dec.next_frame() {
            Ok(Some(f)) => return Ok(f),
            Ok(None) => {}
            Err(e) => return Err(Error::Disconnected(format!("{addr}: {e}"))),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Disconnected(format!(
                "{addr}: no {waiting_for} within the deadline"
            )));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| Error::Disconnected(format!("{addr}: {e}")))?;
        match stream.read(&mut buf) {
            Ok(0) => {
                return Err(Error::Disconnected(format!(
                    "{addr}: the server closed the connection while we waited for {waiting_for}"
                )))
            }
            Ok(n) => dec.feed(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                return Err(Error::Disconnected(format!(
                    "{addr}: read failed while we waited for {waiting_for}: {e}"
                )))
            }
        }
    }
}

/// The synchronous conversation of a handshake, before the reader thread runs.
struct Handshake<'a> {
    addr: &'a str,
    stream: &'a mut TcpStream,
    dec: FrameDecoder,
    /// Server calls that arrived meanwhile (delivered once connected).
    early: Vec<Message>,
}

impl Handshake<'_> {
    fn call(
        &mut self,
        msgid: i64,
        method: &str,
        args: Vec<Value>,
        deadline: Instant,
    ) -> Result<Value> {
        let addr = self.addr;
        frame::write_frame(
            self.stream,
            &message::encode(msgid, 0, method, &Value::Array(args)),
        )
        .map_err(|e| Error::Disconnected(format!("{addr}: write failed: {e}")))?;
        loop {
            let waiting_for = format!("reply to {method}");
            let f = read_frame_by(addr, self.stream, &mut self.dec, deadline, &waiting_for)?;
            let msg = message::decode(&f)
                .map_err(|e| Error::Disconnected(format!("{addr}: malformed message: {e}")))?;
            if msg.method != REPLY {
                self.early.push(msg);
            } else if msg.msgid_i64() == Some(msgid) {
                return if msg.flags & FLAG_ERROR != 0 {
                    Err(message::error_from_wire(&msg.args))
                } else {
                    Ok(msg.args)
                };
            } else {
                log::debug!("{addr}: dropping a reply to unknown msgid {}", msg.msgid);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The shared state and the reader thread.
// ---------------------------------------------------------------------------

enum Link {
    Up(Arc<Conn>),
    /// Not connected; why.
    Down(String),
    Closed,
}

/// The transaction between `tpc_vote` and `tpc_finish`/`tpc_abort`, pinned
/// to the connection it was sent on.
struct TxnCtx {
    id: i64,
    conn: Arc<Conn>,
}

struct Inner {
    opts: ClientOptions,
    link: Mutex<Link>,
    link_changed: Condvar,
    closed: AtomicBool,
    next_msgid: AtomicI64,
    next_txn_id: AtomicI64,
    handler: RwLock<Option<EventHandler>>,
    txn: Mutex<Option<TxnCtx>>,
    /// The server's `get_info` dict, updated by `info` calls.
    info: Mutex<Vec<(Value, Value)>>,
    last_tid: Mutex<Tid>,
    /// The socket of a reconnection in progress, so `close` can interrupt it.
    connecting: Mutex<Option<TcpStream>>,
}

impl Inner {
    fn addr(&self) -> &str {
        &self.opts.addr
    }

    fn msgid(&self) -> i64 {
        self.next_msgid.fetch_add(1, Ordering::Relaxed)
    }

    fn emit(&self, ev: ServerEvent) {
        let handler = read(&self.handler).clone();
        if let Some(h) = handler {
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h(ev)));
            if caught.is_err() {
                log::error!("{}: the client event handler panicked", self.addr());
            }
        }
    }

    /// Connect, check the protocol, register, fetch the server info.
    fn establish(&self) -> Result<Established> {
        let addr = self.addr();
        let mut stream = open_stream(&self.opts)?;
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::Disconnected(format!("{addr}: the client is closed")));
        }
        *lock(&self.connecting) = stream.try_clone().ok();
        let r = self.handshake(&mut stream);
        *lock(&self.connecting) = None;
        match r {
            Ok((decoder, last_tid, info, early)) => {
                let conn = Conn::new(addr, &stream)
                    .map_err(|e| Error::Disconnected(format!("{addr}: {e}")))?;
                Ok(Established {
                    conn: Arc::new(conn),
                    reader: stream,
                    decoder,
                    last_tid,
                    info,
                    early,
                })
            }
            Err(e) => {
                let _ = stream.shutdown(Shutdown::Both);
                Err(e)
            }
        }
    }

    /// Protocol, `register`, `get_info`: (decoder, last tid, info, early calls).
    fn handshake(
        &self,
        stream: &mut TcpStream,
    ) -> Result<(FrameDecoder, Tid, Value, Vec<Message>)> {
        let addr = self.addr();
        let opts = &self.opts;
        let io_err = |e: io::Error| Error::Disconnected(format!("{addr}: {e}"));
        let _ = stream.set_nodelay(true);
        stream
            .set_write_timeout(Some(opts.call_timeout.max(Duration::from_millis(1))))
            .map_err(io_err)?;
        let mut dec = FrameDecoder::new(opts.max_frame);
        let deadline = Instant::now() + opts.connect_timeout;
        let announced = read_frame_by(addr, stream, &mut dec, deadline, "protocol announcement")?;
        check_protocol(addr, &announced)?;
        frame::write_frame(stream, PROTOCOL).map_err(io_err)?;

        let deadline = Instant::now() + opts.call_timeout;
        let mut hs = Handshake {
            addr,
            stream,
            dec,
            early: Vec::new(),
        };
        let reg = hs.call(
            self.msgid(),
            "register",
            vec![
                Value::from(opts.storage.as_str()),
                Value::Boolean(opts.read_only),
            ],
            deadline,
        )?;
        let last_tid = tid_of(&reg, "register reply")?;
        let info = match hs.call(self.msgid(), "get_info", vec![], deadline) {
            Ok(v @ Value::Map(_)) => v,
            Ok(other) => {
                log::warn!("{addr}: get_info answered {}", short(&other));
                Value::Map(vec![])
            }
            Err(e @ Error::Disconnected(_)) => return Err(e),
            Err(e) => {
                log::warn!("{addr}: get_info failed: {e}");
                Value::Map(vec![])
            }
        };
        Ok((hs.dec, last_tid, info, hs.early))
    }

    /// Publish a new connection; false when the client was closed meanwhile.
    fn install(&self, est: &Established) -> bool {
        let mut l = lock(&self.link);
        if matches!(*l, Link::Closed) {
            return false;
        }
        *lock(&self.last_tid) = est.last_tid;
        if let Value::Map(m) = &est.info {
            *lock(&self.info) = m.clone();
        }
        *l = Link::Up(est.conn.clone());
        self.link_changed.notify_all();
        true
    }

    fn set_down(&self, reason: &str) {
        let mut l = lock(&self.link);
        if !matches!(*l, Link::Closed) {
            *l = Link::Down(reason.to_string());
            self.link_changed.notify_all();
        }
    }

    fn is_connected(&self) -> bool {
        matches!(&*lock(&self.link), Link::Up(c) if c.alive())
    }

    /// The current connection, waiting for a reconnection until `deadline`.
    fn wait_conn(&self, deadline: Instant, method: &str) -> Result<Arc<Conn>> {
        let mut l = lock(&self.link);
        loop {
            match &*l {
                Link::Up(c) if c.alive() => return Ok(c.clone()),
                Link::Closed => {
                    return Err(Error::Disconnected(format!(
                        "{}: the client is closed",
                        self.addr()
                    )))
                }
                _ => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let why = match &*l {
                    Link::Down(r) => r.clone(),
                    _ => "connection lost".to_string(),
                };
                return Err(Error::Disconnected(format!(
                    "{}: not connected ({why}); gave up on {method} after {:?}",
                    self.addr(),
                    self.opts.call_timeout
                )));
            }
            l = self
                .link_changed
                .wait_timeout(l, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Sleep `d`; false when the client was closed.
    fn sleep_unless_closed(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut l = lock(&self.link);
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            l = self
                .link_changed
                .wait_timeout(l, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn call_on(
        &self,
        conn: &Conn,
        method: &str,
        args: Vec<Value>,
        deadline: Instant,
    ) -> Result<Value> {
        conn.call(self.msgid(), method, args, deadline, self.opts.call_timeout)
    }

    fn call_with_deadline(
        &self,
        method: &str,
        args: Vec<Value>,
        deadline: Instant,
    ) -> Result<Value> {
        let conn = self.wait_conn(deadline, method)?;
        self.call_on(&conn, method, args, deadline)
    }

    fn call(&self, method: &str, args: Vec<Value>) -> Result<Value> {
        self.call_with_deadline(method, args, Instant::now() + self.opts.call_timeout)
    }

    fn info_value(&self, key: &str) -> Option<Value> {
        get(&lock(&self.info), key).cloned()
    }

    fn merge_info(&self, v: &Value) {
        if let Value::Map(new) = v {
            let mut info = lock(&self.info);
            for (k, val) in new {
                match info.iter_mut().find(|(ik, _)| ik == k) {
                    Some(slot) => slot.1 = val.clone(),
                    None => info.push((k.clone(), val.clone())),
                }
            }
        }
    }

    /// Close: no more calls, no more reconnects; the reader thread exits.
    fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let prev = {
            let mut l = lock(&self.link);
            let prev = std::mem::replace(&mut *l, Link::Closed);
            self.link_changed.notify_all();
            prev
        };
        if let Link::Up(c) = prev {
            c.kill("the client was closed");
        }
        if let Some(s) = lock(&self.connecting).take() {
            let _ = s.shutdown(Shutdown::Both);
        }
        lock(&self.txn).take();
    }

    /// Route one frame from the server. An error closes the connection.
    fn handle_frame(&self, conn: &Conn, payload: &[u8]) -> std::result::Result<(), String> {
        let msg = message::decode(payload)
            .map_err(|e| format!("malformed message from the server: {e}"))?;
        if msg.method == REPLY {
            if msg.is_heartbeat() {
                return Ok(());
            }
            let Some(msgid) = msg.msgid_i64() else {
                log::debug!("{}: dropping a reply to msgid {}", self.addr(), msg.msgid);
                return Ok(());
            };
            let reply = if msg.flags & FLAG_ERROR != 0 {
                Err(message::error_from_wire(&msg.args))
            } else {
                Ok(msg.args)
            };
            if !conn.deliver(msgid, reply) {
                log::debug!(
                    "{}: dropping a reply to msgid {msgid} nobody waits for (timed out?)",
                    self.addr()
                );
            }
            return Ok(());
        }
        self.handle_server_call(msg);
        Ok(())
    }

    fn handle_server_call(&self, msg: Message) {
        match msg.method.as_str() {
            "invalidateTransaction" => match parse_invalidation(msg.arg_list()) {
                Ok((tid, oids)) => self.emit(ServerEvent::Invalidate { tid, oids }),
                Err(e) => log::warn!("{}: ignoring invalidation: {e}", self.addr()),
            },
            "info" => {
                let v = msg.arg_list().first().cloned().unwrap_or(Value::Nil);
                log::debug!("{}: server info {}", self.addr(), short(&v));
                self.merge_info(&v);
                self.emit(ServerEvent::Info(v));
            }
            other => log::debug!(
                "{}: ignoring server call {other}({})",
                self.addr(),
                short(&msg.args)
            ),
        }
    }

    /// Read and route until the connection breaks; returns why it broke.
    fn read_loop(
        &self,
        conn: &Conn,
        stream: &mut TcpStream,
        dec: &mut FrameDecoder,
        early: Vec<Message>,
    ) -> String {
        for msg in early {
            self.handle_server_call(msg);
        }
        let hb = self.opts.heartbeat.max(Duration::from_millis(10));
        let tick = (hb / 4).max(Duration::from_millis(10));
        if let Err(e) = stream.set_read_timeout(Some(tick)) {
            return format!("cannot set a read timeout: {e}");
        }
        let mut buf = vec![0u8; 64 << 10];
        loop {
            loop {
                match dec.next_frame() {
                    Ok(Some(f)) => {
                        if let Err(reason) = self.handle_frame(conn, &f) {
                            return reason;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return e.to_string(),
                }
            }
            if self.closed.load(Ordering::SeqCst) || !conn.alive() {
                return "the connection was closed".into();
            }
            match stream.read(&mut buf) {
                Ok(0) => return "the server closed the connection".into(),
                Ok(n) => dec.feed(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if conn.idle_for() >= hb {
                        if let Err(e) = conn.heartbeat() {
                            return format!("heartbeat failed: {e}");
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return format!("read failed: {e}"),
            }
        }
    }

    /// Reconnect with backoff until it works or the client closes.
    fn reconnect(&self) -> Option<Established> {
        let mut attempt = 0u32;
        loop {
            if !self.sleep_unless_closed(backoff_delay(attempt, rand::random::<f64>())) {
                return None;
            }
            match self.establish() {
                Ok(est) => {
                    if !self.install(&est) {
                        est.conn.kill("the client was closed");
                        return None;
                    }
                    log::info!(
                        "{}: reconnected to storage {:?}, last tid {}",
                        self.addr(),
                        self.opts.storage,
                        est.last_tid
                    );
                    self.emit(ServerEvent::Connected {
                        last_tid: est.last_tid,
                    });
                    return Some(est);
                }
                Err(e) => {
                    if self.closed.load(Ordering::SeqCst) {
                        return None;
                    }
                    log::debug!(
                        "{}: reconnection attempt {attempt} failed: {e}",
                        self.addr()
                    );
                    self.set_down(&e.to_string());
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }
}

/// The reader thread: read, route, and reconnect when the connection breaks.
fn reader_main(inner: Arc<Inner>, mut est: Established) {
    loop {
        let Established {
            conn,
            mut reader,
            mut decoder,
            early,
            ..
        } = est;
        let reason = inner.read_loop(&conn, &mut reader, &mut decoder, early);
        conn.kill(&reason);
        drop(reader);
        if inner.closed.load(Ordering::SeqCst) {
            return;
        }
        log::warn!("{}: connection lost: {reason}; reconnecting", inner.addr());
        inner.set_down(&reason);
        inner.emit(ServerEvent::Disconnected(format!(
            "{}: {reason}",
            inner.addr()
        )));
        match inner.reconnect() {
            Some(next) => est = next,
            None => return,
        }
    }
}

// ---------------------------------------------------------------------------
// The public client.
// ---------------------------------------------------------------------------

/// A blocking, multiplexed ZEO 5 client. Share it (e.g. in an `Arc`); every
/// method takes `&self`.
pub struct Client {
    inner: Arc<Inner>,
    reader: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.opts.addr)
            .field("storage", &self.inner.opts.storage)
            .field("connected", &self.inner.is_connected())
            .finish()
    }
}

impl Client {
    /// Connect and register; fails when the first connection cannot be
    /// established (later disconnects are healed in the background).
    pub fn connect(opts: ClientOptions) -> Result<Client> {
        Client::connect_with_handler(opts, None)
    }

    /// [`connect`](Client::connect) with the event handler in place before
    /// the first message is read, so no invalidation can be missed.
    pub fn connect_with_handler(
        opts: ClientOptions,
        handler: Option<EventHandler>,
    ) -> Result<Client> {
        let inner = Arc::new(Inner {
            opts,
            link: Mutex::new(Link::Down("connecting".into())),
            link_changed: Condvar::new(),
            closed: AtomicBool::new(false),
            next_msgid: AtomicI64::new(1),
            next_txn_id: AtomicI64::new(1),
            handler: RwLock::new(handler),
            txn: Mutex::new(None),
            info: Mutex::new(Vec::new()),
            last_tid: Mutex::new(Tid::ZERO),
            connecting: Mutex::new(None),
        });
        let est = inner.establish()?;
        inner.install(&est);
        let conn = est.conn.clone();
        let for_thread = inner.clone();
        let spawned = thread::Builder::new()
            .name(format!("zeo-client-reader {}", inner.opts.addr))
            .spawn(move || reader_main(for_thread, est));
        match spawned {
            Ok(handle) => Ok(Client {
                inner,
                reader: Mutex::new(Some(handle)),
            }),
            Err(e) => {
                conn.kill("cannot start the reader thread");
                inner.shutdown();
                Err(Error::Io(format!("cannot start the reader thread: {e}")))
            }
        }
    }

    /// Replace the event handler (runs on the reader thread; must not make
    /// synchronous calls on this client).
    pub fn set_event_handler(&self, f: EventHandler) {
        *write(&self.inner.handler) = Some(f);
    }

    /// The server address this client talks to.
    pub fn addr(&self) -> &str {
        &self.inner.opts.addr
    }

    /// The options this client was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    pub fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }

    /// The last tid the server reported when we (re)registered.
    pub fn registered_last_tid(&self) -> Tid {
        *lock(&self.inner.last_tid)
    }

    /// The server's `get_info` dict, as updated by its `info` calls.
    pub fn server_info(&self) -> Value {
        Value::Map(lock(&self.inner.info).clone())
    }

    /// A synchronous call; waits for a reconnection and the reply until
    /// `call_timeout`. An error reply becomes the mapped [`Error`].
    pub fn call(&self, method: &str, args: Vec<Value>) -> Result<Value> {
        self.inner.call(method, args)
    }

    /// A one-way call (no reply); waits for a reconnection until `call_timeout`.
    pub fn call_oneway(&self, method: &str, args: Vec<Value>) -> Result<()> {
        let conn = self
            .inner
            .wait_conn(Instant::now() + self.inner.opts.call_timeout, method)?;
        conn.send_oneway(method, args)
    }

    /// Close the connection, stop reconnecting, join the reader thread.
    pub fn close(&self) {
        self.inner.shutdown();
        let handle = lock(&self.reader).take();
        if let Some(h) = handle {
            // Closing from the event handler must not join its own thread.
            if h.thread().id() != thread::current().id() {
                let _ = h.join();
            }
        }
    }

    fn tpc_vote_inner(&self, txn: &Txn) -> Result<Vote> {
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
        frames.push(OutFrame::whole(message::encode_oneway(
            "tpc_begin",
            vec![
                idv.clone(),
                message::bin(&txn.meta.user),
                message::bin(&txn.meta.description),
                ext,
                message::opt_tid_value(txn.tid),
                Value::from(status_str(txn.status)),
            ],
        )));
        let oid = message::oid_value;
        let tid = message::tid_value;
        for op in &txn.ops {
            frames.push(match op {
                Op::Store {
                    oid: o,
                    serial,
                    data,
                } => OutFrame::oneway(
                    "storea",
                    &[oid(*o), tid(*serial)],
                    Some(data),
                    std::slice::from_ref(&idv),
                ),
                Op::Delete { oid: o, serial } => OutFrame::whole(message::encode_oneway(
                    "deleteObject",
                    vec![oid(*o), tid(*serial), idv.clone()],
                )),
                Op::CheckCurrent { oid: o, serial } => OutFrame::whole(message::encode_oneway(
                    "checkCurrentSerialInTransaction",
                    vec![oid(*o), tid(*serial), idv.clone()],
                )),
                Op::Restore {
                    oid: o,
                    serial,
                    data,
                    prev_txn,
                } => OutFrame::oneway(
                    "restorea",
                    &[oid(*o), tid(*serial)],
                    data.as_deref(),
                    &[message::opt_tid_value(*prev_txn), idv.clone()],
                ),
                Op::Undo { txn: t } => OutFrame::whole(message::encode_oneway(
                    "undoa",
                    vec![Value::Binary(undo_id(*t)), idv.clone()],
                )),
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
                Op::Store { oid, .. } | Op::Delete { oid, .. } | Op::Restore { oid, .. } => {
                    Some(*oid)
                }
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

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
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

    fn size_info(&self) -> SizeInfo {
        match self.call("get_size_info", vec![]) {
            Ok(v) => {
                self.inner.merge_info(&v);
                parse_size_info(&v)
            }
            Err(e) => {
                log::debug!("{}: get_size_info failed: {e}", self.addr());
                parse_size_info(&self.server_info())
            }
        }
    }

    fn close(&self) {
        Client::close(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn s(x: &str) -> Value {
        Value::from(x)
    }
    fn map(e: Vec<(&str, Value)>) -> Value {
        Value::Map(e.into_iter().map(|(k, v)| (s(k), v)).collect())
    }
    fn oidv(n: u64) -> Value {
        message::oid_value(Oid(n))
    }
    fn tidv(n: u64) -> Value {
        message::tid_value(Tid(n))
    }

    #[test]
    fn backoff_schedule() {
        let ms = |d: Duration| d.as_millis();
        // (attempt, jitter, expected ms)
        let table = [
            (0, 1.0, 100),
            (0, 0.0, 50),
            (1, 1.0, 200),
            (2, 1.0, 400),
            (3, 1.0, 800),
            (5, 1.0, 3200),
            (6, 1.0, 5000),
            (6, 0.0, 2500),
            (40, 1.0, 5000),
            (u32::MAX, 0.5, 3750),
            (0, f64::NAN, 50),
            (0, -3.0, 50),
            (0, 7.0, 100),
        ];
        for (attempt, jitter, want) in table {
            assert_eq!(
                ms(backoff_delay(attempt, jitter)),
                want,
                "attempt {attempt} jitter {jitter}"
            );
        }
        for a in 0..50 {
            assert!(backoff_delay(a, 0.3) <= backoff_delay(a + 1, 0.3));
        }
    }

    #[test]
    fn protocol_announcements() {
        let table: [(&[u8], Option<&str>); 8] = [
            (b"M5", None),
            (b"M6", None),
            (b"M51", None),
            (b"M4", Some("at least 5")),
            (b"M310", Some("at least 5")),
            (b"Z5", Some("start runzeo with `msgpack true`")),
            (b"", Some("unknown protocol")),
            (b"HTTP/1.1", Some("unknown protocol")),
        ];
        for (p, err) in table {
            match (check_protocol("h:1", p), err) {
                (Ok(()), None) => {}
                (Err(e), Some(want)) => assert!(e.to_string().contains(want), "{p:?}: {e}"),
                (r, _) => panic!("{p:?}: unexpected {r:?}"),
            }
        }
    }

    #[test]
    fn oneway_frames_match_message_encoding() {
        let data = vec![9u8; COALESCE_LIMIT + 5];
        let id = Value::from(77);
        let cases: Vec<(OutFrame<'_>, Vec<u8>)> = vec![
            (
                OutFrame::oneway(
                    "storea",
                    &[oidv(1), tidv(2)],
                    Some(b"abc"),
                    std::slice::from_ref(&id),
                ),
                message::encode_oneway(
                    "storea",
                    vec![oidv(1), tidv(2), message::bin(b"abc"), id.clone()],
                ),
            ),
            (
                OutFrame::oneway(
                    "storea",
                    &[oidv(1), tidv(2)],
                    Some(&data),
                    std::slice::from_ref(&id),
                ),
                message::encode_oneway(
                    "storea",
                    vec![oidv(1), tidv(2), message::bin(&data), id.clone()],
                ),
            ),
            (
                OutFrame::oneway(
                    "restorea",
                    &[oidv(1), tidv(2)],
                    None,
                    &[Value::Nil, id.clone()],
                ),
                message::encode_oneway(
                    "restorea",
                    vec![oidv(1), tidv(2), Value::Nil, Value::Nil, id.clone()],
                ),
            ),
            (OutFrame::whole(message::heartbeat()), message::heartbeat()),
        ];
        let mut all = Vec::new();
        let mut want_all = Vec::new();
        for (f, want) in &cases {
            let mut out = Vec::new();
            write_frames(&mut out, std::slice::from_ref(f)).unwrap();
            assert_eq!(out, frame::encode(want));
            want_all.extend(frame::encode(want));
        }
        let frames: Vec<OutFrame<'_>> = cases.into_iter().map(|(f, _)| f).collect();
        write_frames(&mut all, &frames).unwrap();
        assert_eq!(all, want_all);
        let m = message::decode(&frame::encode(&frames[0].prefix)[4..]);
        assert!(m.is_err(), "a prefix alone is not a message");
    }

    #[test]
    fn ext_round_trip() {
        assert_eq!(decode_ext(b"").unwrap(), Value::Map(vec![]));
        let ext = encode_ext(vec![(s("k"), s("v"))]);
        assert_eq!(decode_ext(&ext).unwrap(), map(vec![("k", s("v"))]));
        assert!(encode_ext(vec![]).is_empty());
        assert!(decode_ext(&[0xc1]).is_err());
        assert!(decode_ext(&[0x01]).is_err()); // an int, not a map
    }

    #[test]
    fn loaded_shapes() {
        let table = vec![
            (Value::Nil, Ok(None)),
            (
                Value::Array(vec![message::bin(b"d"), tidv(1), Value::Nil]),
                Ok(Some(Loaded {
                    data: Arc::from(&b"d"[..]),
                    start: Tid(1),
                    end: None,
                })),
            ),
            (
                Value::Array(vec![message::bin(b"d"), tidv(1), tidv(2)]),
                Ok(Some(Loaded {
                    data: Arc::from(&b"d"[..]),
                    start: Tid(1),
                    end: Some(Tid(2)),
                })),
            ),
            (Value::Array(vec![message::bin(b"d"), tidv(1)]), Err(())),
            (
                Value::Array(vec![Value::from(1), tidv(1), Value::Nil]),
                Err(()),
            ),
            (
                Value::Array(vec![message::bin(b"d"), message::bin(b"short"), Value::Nil]),
                Err(()),
            ),
            (s("x"), Err(())),
        ];
        for (v, want) in table {
            assert_eq!(parse_loaded(&v).map_err(|_| ()), want, "{v}");
        }
    }

    #[test]
    fn history_and_undo_shapes() {
        let h = Value::Array(vec![
            map(vec![
                ("time", Value::F64(1.5)),
                ("user_name", message::bin(b"alice")),
                ("description", message::bin(b"first")),
                ("tid", tidv(5)),
                ("size", Value::from(12)),
                ("note", s("x")),
            ]),
            map(vec![
                ("tid", tidv(4)),
                ("version", s("")),
                ("user_name", s("bob")),
            ]),
        ]);
        let got = parse_history(&h).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].tid, Tid(5));
        assert_eq!(got[0].size, 12);
        assert_eq!(got[0].meta.user, b"alice");
        assert_eq!(got[0].meta.description, b"first");
        assert_eq!(
            decode_ext(&got[0].meta.extension).unwrap(),
            map(vec![("note", s("x"))])
        );
        assert_eq!(got[1].meta.user, b"bob");
        assert!(got[1].meta.extension.is_empty());
        assert!(parse_history(&Value::Nil).unwrap().is_empty());
        assert!(parse_history(&Value::Array(vec![map(vec![("size", Value::from(1))])])).is_err());
        assert!(parse_history(&Value::Array(vec![s("x")])).is_err());

        let u = Value::Array(vec![map(vec![
            ("id", message::bin(&undo_id(Tid(7)))),
            ("time", Value::F64(2.0)),
            ("user_name", message::bin(b"")),
            ("description", message::bin(b"d")),
            ("x", Value::from(1)),
        ])]);
        let got = parse_undo_log(&u).unwrap();
        assert_eq!(got[0].tid, Tid(7));
        assert_eq!(got[0].meta.description, b"d");
        assert_eq!(
            decode_ext(&got[0].meta.extension).unwrap(),
            map(vec![("x", Value::from(1))])
        );
        assert!(parse_undo_log(&Value::Array(vec![map(vec![("id", s("nope"))])])).is_err());
        assert!(parse_undo_log(&Value::Array(vec![])).unwrap().is_empty());
    }

    #[test]
    fn vote_shapes() {
        let conflict = map(vec![
            ("oid", oidv(3)),
            ("serials", Value::Array(vec![tidv(9), tidv(8)])),
            ("data", message::bin(b"mine")),
        ]);
        let (c, r) = parse_vote(&Value::Array(vec![conflict.clone()])).unwrap();
        assert_eq!(
            c,
            vec![Conflict {
                oid: Oid(3),
                committed: Tid(9),
                read: Tid(8),
                data: Arc::from(&b"mine"[..])
            }]
        );
        assert!(r.is_empty());
        let (c, r) = parse_vote(&Value::Array(vec![oidv(1), oidv(2)])).unwrap();
        assert!(c.is_empty());
        assert_eq!(r, vec![Oid(1), Oid(2)]);
        assert_eq!(parse_vote(&Value::Nil).unwrap(), (vec![], vec![]));
        for bad in [
            s("x"),
            Value::Array(vec![map(vec![("oid", oidv(3))])]),
            Value::Array(vec![map(vec![
                ("oid", oidv(3)),
                ("serials", Value::Array(vec![tidv(1)])),
            ])]),
            Value::Array(vec![Value::from(5)]),
        ] {
            assert!(parse_vote(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn iterator_shapes() {
        let h = Value::Array(vec![
            tidv(3),
            s("p"),
            message::bin(b"u"),
            message::bin(b"d"),
            map(vec![("a", Value::from(1))]),
        ]);
        let (tid, status, meta) = parse_txn_header(&h).unwrap().unwrap();
        assert_eq!((tid, status), (Tid(3), b'p'));
        assert_eq!(meta.user, b"u");
        assert_eq!(
            decode_ext(&meta.extension).unwrap(),
            map(vec![("a", Value::from(1))])
        );
        let h = Value::Array(vec![tidv(3), s(" "), s(""), s(""), map(vec![])]);
        let (_, status, meta) = parse_txn_header(&h).unwrap().unwrap();
        assert_eq!(status, b' ');
        assert!(meta.extension.is_empty());
        assert_eq!(parse_txn_header(&Value::Nil).unwrap(), None);
        assert!(parse_txn_header(&Value::Array(vec![tidv(3)])).is_err());

        let r = Value::Array(vec![oidv(1), tidv(2), message::bin(b"x"), Value::Nil]);
        assert_eq!(
            parse_data_record(&r).unwrap(),
            Some(DataRecord {
                oid: Oid(1),
                tid: Tid(2),
                data: Some(Arc::from(&b"x"[..])),
                data_txn: None
            })
        );
        let r = Value::Array(vec![oidv(1), tidv(2), Value::Nil, tidv(1)]);
        assert_eq!(
            parse_data_record(&r).unwrap(),
            Some(DataRecord {
                oid: Oid(1),
                tid: Tid(2),
                data: None,
                data_txn: Some(Tid(1))
            })
        );
        assert_eq!(parse_data_record(&Value::Nil).unwrap(), None);
        assert!(parse_data_record(&Value::Array(vec![oidv(1)])).is_err());

        let r = Value::Array(vec![oidv(1), tidv(2), message::bin(b"x"), oidv(5)]);
        assert_eq!(
            parse_record_iternext(&r).unwrap(),
            Some((Oid(1), Tid(2), Arc::from(&b"x"[..]), Some(Oid(5))))
        );
        let r = Value::Array(vec![oidv(1), tidv(2), message::bin(b"x"), Value::Nil]);
        assert_eq!(parse_record_iternext(&r).unwrap().and_then(|r| r.3), None);
    }

    #[test]
    fn small_shapes() {
        assert_eq!(
            parse_oids(&Value::Array(vec![oidv(1), oidv(2)])).unwrap(),
            vec![Oid(1), Oid(2)]
        );
        assert!(parse_oids(&Value::Array(vec![s("x")])).is_err());
        assert_eq!(
            parse_invalidation(&[tidv(4), Value::Array(vec![oidv(0), oidv(7)])]).unwrap(),
            (Tid(4), vec![Oid(0), Oid(7)])
        );
        assert!(parse_invalidation(&[tidv(4)]).is_err());
        assert!(parse_invalidation(&[tidv(4), s("x")]).is_err());
        assert_eq!(
            parse_size_info(&map(vec![
                ("length", Value::from(3)),
                ("size", Value::from(4096))
            ])),
            SizeInfo {
                objects: 3,
                bytes: 4096
            }
        );
        assert_eq!(parse_size_info(&Value::Nil), SizeInfo::default());
        assert_eq!(status_str(b' '), " ");
        assert_eq!(status_str(b'p'), "p");
        assert_eq!(status_str(0), " ");
    }

    // -- an in-process fake server, to test routing and multiplexing --------

    fn read_msg(s: &mut TcpStream) -> Option<Message> {
        let f = frame::read_frame(s, 1 << 20).ok()?;
        message::decode(&f).ok()
    }

    fn send(s: &mut TcpStream, payload: &[u8]) {
        let _ = frame::write_frame(s, payload);
    }

    /// Accept one client, handshake, then run `script` on the socket.
    fn fake_server(
        script: impl FnOnce(&mut TcpStream) + Send + 'static,
    ) -> (String, thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let h = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            send(&mut s, b"M5");
            let p = frame::read_frame(&mut s, 100).unwrap();
            assert_eq!(p, b"M5");
            for _ in 0..2 {
                let m = read_msg(&mut s).unwrap();
                let reply = match m.method.as_str() {
                    "register" => tidv(42),
                    "get_info" => map(vec![
                        ("name", s_("fake")),
                        ("supportsUndo", Value::Boolean(true)),
                    ]),
                    other => panic!("unexpected {other}"),
                };
                send(&mut s, &message::encode_reply(&m.msgid, &reply));
            }
            script(&mut s);
        });
        (addr, h)
    }

    fn s_(x: &str) -> Value {
        Value::from(x)
    }

    fn quick(addr: &str) -> ClientOptions {
        ClientOptions {
            call_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            ..ClientOptions::new(addr)
        }
    }

    #[test]
    fn routes_replies_and_server_calls() {
        let (addr, server) = fake_server(|s| {
            // Two calls arrive; answer them in reverse order, with noise between.
            let a = read_msg(s).unwrap();
            let b = read_msg(s).unwrap();
            send(
                s,
                &message::encode_oneway("info", vec![map(vec![("length", Value::from(9))])]),
            );
            send(s, &message::encode_reply(&Value::from(99_999), &Value::Nil)); // nobody waits
            send(s, &message::encode_oneway("fooBar", vec![]));
            send(
                s,
                &message::encode_oneway(
                    "invalidateTransaction",
                    vec![tidv(7), Value::Array(vec![oidv(1)])],
                ),
            );
            send(
                s,
                &message::encode_oneway("invalidateTransaction", vec![s_("junk")]),
            );
            for m in [b, a] {
                let reply = match m.method.as_str() {
                    "echo" => message::encode_reply(&m.msgid, &m.args),
                    _ => message::encode_error(&m.msgid, &Error::PosKey(Oid(5))),
                };
                send(s, &reply);
            }
            // Wait for the client to go away.
            while read_msg(s).is_some() {}
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        let handler: EventHandler = Arc::new(move |ev| {
            let _ = tx.send(ev);
        });
        let c = Arc::new(Client::connect_with_handler(quick(&addr), Some(handler)).unwrap());
        assert_eq!(c.registered_last_tid(), Tid(42));
        assert_eq!(c.name(), "fake");
        assert!(c.supports_undo());
        let c2 = c.clone();
        let t = thread::spawn(move || c2.call("echo", vec![s_("hello")]));
        // Make sure "echo" is sent first.
        thread::sleep(Duration::from_millis(100));
        let err = c.call("boom", vec![]).unwrap_err();
        assert_eq!(err, Error::PosKey(Oid(5)));
        assert_eq!(t.join().unwrap().unwrap(), Value::Array(vec![s_("hello")]));
        let ev1 = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(
            ev1,
            ServerEvent::Info(map(vec![("length", Value::from(9))]))
        );
        let ev2 = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(
            ev2,
            ServerEvent::Invalidate {
                tid: Tid(7),
                oids: vec![Oid(1)]
            }
        );
        assert_eq!(parse_size_info(&c.server_info()).objects, 9);
        c.close();
        server.join().unwrap();
    }

    #[test]
    fn pickle_servers_are_refused() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let h = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            send(&mut s, b"Z5");
            thread::sleep(Duration::from_millis(200));
        });
        let err = Client::connect(quick(&addr)).unwrap_err();
        assert!(err.to_string().contains("msgpack true"), "{err}");
        h.join().unwrap();
    }

    #[test]
    fn disconnect_fails_waiting_calls_and_heartbeats_flow() {
        let (addr, server) = fake_server(|s| {
            // Expect at least one heartbeat, then a call that we never answer:
            // close the connection instead.
            let mut saw_heartbeat = false;
            while let Some(m) = read_msg(s) {
                if m.is_heartbeat() && m.method == REPLY {
                    saw_heartbeat = true;
                } else {
                    assert!(saw_heartbeat, "a heartbeat comes before the call");
                    let _ = s.shutdown(Shutdown::Both);
                    return;
                }
            }
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        let handler: EventHandler = Arc::new(move |ev| {
            let _ = tx.send(ev);
        });
        let opts = ClientOptions {
            heartbeat: Duration::from_millis(50),
            call_timeout: Duration::from_secs(2),
            ..quick(&addr)
        };
        let c = Client::connect_with_handler(opts, Some(handler)).unwrap();
        thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let err = c.call("lastTransaction", vec![]).unwrap_err();
        assert!(matches!(err, Error::Disconnected(_)), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "failed at once, not at the deadline"
        );
        match rx.recv_timeout(Duration::from_secs(5)).unwrap() {
            ServerEvent::Disconnected(m) => assert!(m.contains(&addr), "{m}"),
            other => panic!("{other:?}"),
        }
        server.join().unwrap();
        // The server is gone for good: a call waits for a reconnection until
        // its deadline, then says so.
        let started = Instant::now();
        let err = c.call("lastTransaction", vec![]).unwrap_err();
        let waited = started.elapsed();
        assert!(err.to_string().contains("not connected"), "{err}");
        assert!(
            waited >= Duration::from_millis(1900) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        let started = Instant::now();
        c.close();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(matches!(c.call("x", vec![]), Err(Error::Disconnected(_))));
    }
}
