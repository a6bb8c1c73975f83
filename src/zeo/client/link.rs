//! The state shared by callers and the reader thread ([`Inner`]): the
//! current connection or why there is none ([`Link`]), waiting for a
//! reconnection, calls on a connection, the server's info dict, the open
//! transaction ([`TxnCtx`]). And the reader thread ([`reader_main`]): it
//! routes frames (replies to their callers via `conn`, server calls to the
//! event handler as [`ServerEvent`]s), sends heartbeats, and when the
//! connection breaks reconnects with [`backoff_delay`] via `connect`.

use super::conn::Conn;
use super::connect::Established;
use super::reply::{get, parse_invalidation};
use super::wire::Wire;
use super::{ClientOptions, EventHandler, ServerEvent};
use crate::locks::{lock, read};
use crate::storage::{Error, Result, Tid};
use crate::zeo::frame::FrameDecoder;
use crate::zeo::message::{self, short, Message, FLAG_ERROR, REPLY};
use rmpv::Value;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Shortest and longest pause between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

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

// ---------------------------------------------------------------------------
// The shared state and the reader thread.
// ---------------------------------------------------------------------------

pub(super) enum Link {
    Up(Arc<Conn>),
    /// Not connected; why.
    Down(String),
    Closed,
}

/// The transaction between `tpc_vote` and `tpc_finish`/`tpc_abort`, pinned
/// to the connection it was sent on.
pub(super) struct TxnCtx {
    pub(super) id: i64,
    pub(super) conn: Arc<Conn>,
}

pub(super) struct Inner {
    pub(super) opts: ClientOptions,
    pub(super) link: Mutex<Link>,
    pub(super) link_changed: Condvar,
    pub(super) closed: AtomicBool,
    pub(super) next_msgid: AtomicI64,
    pub(super) next_txn_id: AtomicI64,
    pub(super) handler: RwLock<Option<EventHandler>>,
    pub(super) txn: Mutex<Option<TxnCtx>>,
    /// The server's `get_info` dict, updated by `info` calls.
    pub(super) info: Mutex<Vec<(Value, Value)>>,
    pub(super) last_tid: Mutex<Tid>,
    /// The socket of a reconnection in progress, so `close` can interrupt it.
    pub(super) connecting: Mutex<Option<Wire>>,
    /// Blob downloads waiting for their `receiveBlob*` calls.
    pub(super) downloads: super::blobs::Downloads,
    /// The blob cache (`ClientOptions::blob_dir`).
    pub(super) blob_cache: Option<crate::storage::blobdir::BlobDir>,
}

impl Inner {
    pub(super) fn addr(&self) -> &str {
        &self.opts.addr
    }

    pub(super) fn msgid(&self) -> i64 {
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

    /// Publish a new connection; false when the client was closed meanwhile.
    pub(super) fn install(&self, est: &Established) -> bool {
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

    pub(super) fn is_connected(&self) -> bool {
        matches!(&*lock(&self.link), Link::Up(c) if c.alive())
    }

    /// The current connection, waiting for a reconnection until `deadline`.
    pub(super) fn wait_conn(&self, deadline: Instant, method: &str) -> Result<Arc<Conn>> {
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

    pub(super) fn call_on(
        &self,
        conn: &Conn,
        method: &str,
        args: Vec<Value>,
        deadline: Instant,
    ) -> Result<Value> {
        conn.call(self.msgid(), method, args, deadline, self.opts.call_timeout)
    }

    pub(super) fn call_with_deadline(
        &self,
        method: &str,
        args: Vec<Value>,
        deadline: Instant,
    ) -> Result<Value> {
        let conn = self.wait_conn(deadline, method)?;
        self.call_on(&conn, method, args, deadline)
    }

    pub(super) fn call(&self, method: &str, args: Vec<Value>) -> Result<Value> {
        self.call_with_deadline(method, args, Instant::now() + self.opts.call_timeout)
    }

    pub(super) fn info_value(&self, key: &str) -> Option<Value> {
        get(&lock(&self.info), key).cloned()
    }

    pub(super) fn merge_info(&self, v: &Value) {
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
    pub(super) fn shutdown(&self) {
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
            s.shutdown();
        }
        lock(&self.txn).take();
    }

    /// Route one frame from the server. An error closes the connection.
    fn handle_frame(&self, conn: &Conn, payload: &[u8]) -> std::result::Result<(), String> {
        let msg = conn
            .flavour()
            .decode(payload)
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
        if self.downloads.handle(&msg.method, msg.arg_list()) {
            return;
        }
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
        stream: &mut Wire,
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
pub(super) fn reader_main(inner: Arc<Inner>, mut est: Established) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
