//! One established, registered connection ([`Conn`]): callers write whole
//! frames under its writer lock ([`OutFrame`], [`write_frames`]) and wait on
//! a reply slot registered under their msgid; the reader thread (in `link`)
//! hands replies to those slots. Killing a connection fails every waiting
//! caller at once. `connect` makes a `Conn`; `link` replaces it, never
//! reuses it, on reconnect.

use super::wire::Wire;
use crate::locks::lock;
use crate::storage::{Error, Result};
use crate::zeo::flavour::Flavour;
use crate::zeo::message;
use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use rmpv::Value;
use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Object data above this size is written straight from the caller's buffer.
const COALESCE_LIMIT: usize = 32 << 10;

/// One outgoing frame: `prefix`, then `data` written straight from the
/// caller's buffer (object data is not copied into the message), then
/// `suffix`. The length prefix is added when writing.
pub(super) struct OutFrame<'a> {
    prefix: Vec<u8>,
    data: &'a [u8],
    suffix: Vec<u8>,
}

impl<'a> OutFrame<'a> {
    pub(super) fn whole(payload: Vec<u8>) -> OutFrame<'static> {
        OutFrame {
            prefix: payload,
            data: &[],
            suffix: Vec::new(),
        }
    }

    /// A one-way call `method(*before, data, *after)`; `data` `None` is nil.
    pub(super) fn oneway(
        flavour: Flavour,
        method: &str,
        before: &[Value],
        data: Option<&'a [u8]>,
        after: &[Value],
    ) -> Self {
        if flavour == Flavour::Pickle {
            let (prefix, suffix) =
                crate::zeo::pickle::oneway_parts(method, before, data.map(<[u8]>::len), after);
            return OutFrame {
                prefix,
                data: data.unwrap_or_default(),
                suffix,
            };
        }
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

    /// `tpc_begin(id, user, description, ext, tid, status)`, one-way;
    /// `ext` already decoded from the metadata's extension bytes.
    pub(super) fn tpc_begin(
        flavour: Flavour,
        id: &Value,
        meta: &crate::storage::TxnMeta,
        ext: Value,
        tid: Option<crate::storage::Tid>,
        status: u8,
    ) -> OutFrame<'static> {
        OutFrame::whole(flavour.encode_oneway(
            "tpc_begin",
            vec![
                id.clone(),
                message::bin(&meta.user),
                message::bin(&meta.description),
                ext,
                message::opt_tid_value(tid),
                Value::from(super::reply::status_str(status)),
            ],
        ))
    }

    /// `restorea(oid, serial, data, prev_txn, id)`, one-way, the data
    /// written from the caller's buffer.
    pub(super) fn restorea(
        flavour: Flavour,
        oid: crate::storage::Oid,
        serial: crate::storage::Tid,
        data: Option<&'a [u8]>,
        prev_txn: Option<crate::storage::Tid>,
        id: &Value,
    ) -> OutFrame<'a> {
        OutFrame::oneway(
            flavour,
            "restorea",
            &[message::oid_value(oid), message::tid_value(serial)],
            data,
            &[message::opt_tid_value(prev_txn), id.clone()],
        )
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

pub(super) type Reply = Result<Value>;

enum Pending {
    Open(HashMap<i64, Sender<Reply>>),
    /// The connection is gone, and why.
    Dead(String),
}

/// One established, registered connection. Replaced, never reused, on reconnect.
pub(super) struct Conn {
    addr: String,
    writer: Mutex<Wire>,
    /// A handle to shut the socket down without waiting for the writer lock.
    control: Wire,
    pending: Mutex<Pending>,
    last_write: Mutex<Instant>,
    /// The encoding the server announced.
    flavour: Flavour,
}

impl Conn {
    pub(super) fn new(addr: &str, stream: &Wire, flavour: Flavour) -> io::Result<Conn> {
        Ok(Conn {
            addr: addr.to_string(),
            writer: Mutex::new(stream.try_clone()?),
            control: stream.try_clone()?,
            pending: Mutex::new(Pending::Open(HashMap::new())),
            last_write: Mutex::new(Instant::now()),
            flavour,
        })
    }

    /// The encoding of this connection's messages.
    pub(super) fn flavour(&self) -> Flavour {
        self.flavour
    }

    pub(super) fn alive(&self) -> bool {
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
    pub(super) fn kill(&self, reason: &str) {
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
        self.control.shutdown();
        for (_, tx) in waiters {
            let _ = tx.try_send(Err(self.disconnected(reason)));
        }
    }

    /// Hand a reply to the caller waiting for `msgid`; false when nobody waits.
    pub(super) fn deliver(&self, msgid: i64, reply: Reply) -> bool {
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

    pub(super) fn idle_for(&self) -> Duration {
        lock(&self.last_write).elapsed()
    }

    /// Write whole frames; a failed write kills the connection (the stream
    /// may hold half a frame).
    pub(super) fn send(&self, frames: &[OutFrame<'_>]) -> Result<()> {
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
    pub(super) fn heartbeat(&self) -> Result<()> {
        let mut w = match self.writer.try_lock() {
            Ok(w) => w,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(()),
        };
        match write_frames(&mut *w, &[OutFrame::whole(self.flavour.heartbeat())]) {
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

    pub(super) fn send_oneway(&self, method: &str, args: Vec<Value>) -> Result<()> {
        self.send(&[OutFrame::whole(self.flavour.encode_oneway(method, args))])
    }

    /// Register for the reply to `msgid` (sent by the caller later).
    pub(super) fn expect(&self, msgid: i64) -> Result<crossbeam_channel::Receiver<Reply>> {
        let (tx, rx) = bounded(1);
        match &mut *lock(&self.pending) {
            Pending::Open(m) => {
                m.insert(msgid, tx);
                Ok(rx)
            }
            Pending::Dead(r) => Err(self.disconnected(r)),
        }
    }

    /// Wait `wait` for the reply registered with [`Conn::expect`]
    /// (`timeout` is the call timeout the error names).
    pub(super) fn await_reply(
        &self,
        msgid: i64,
        rx: &crossbeam_channel::Receiver<Reply>,
        method: &str,
        wait: Duration,
        timeout: Duration,
    ) -> Result<Value> {
        match rx.recv_timeout(wait) {
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

    /// A synchronous call on this connection, waiting until `deadline`.
    pub(super) fn call(
        &self,
        msgid: i64,
        method: &str,
        args: Vec<Value>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Value> {
        let rx = self.expect(msgid)?;
        let payload = self.flavour.encode(msgid, 0, method, &Value::Array(args));
        if let Err(e) = self.send(&[OutFrame::whole(payload)]) {
            self.forget(msgid);
            return Err(e);
        }
        self.await_reply(
            msgid,
            &rx,
            method,
            deadline.saturating_duration_since(Instant::now()),
            timeout,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zeo::client::tests::{oidv, tidv};
    use crate::zeo::frame;

    #[test]
    fn oneway_frames_match_message_encoding() {
        let data = vec![9u8; COALESCE_LIMIT + 5];
        let id = Value::from(77);
        let cases: Vec<(OutFrame<'_>, Vec<u8>)> = vec![
            (
                OutFrame::oneway(
                    Flavour::Msgpack,
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
                    Flavour::Msgpack,
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
                    Flavour::Msgpack,
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
}
