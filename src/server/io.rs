//! The event loop: the only owner of sockets.
//!
//! It accepts connections, performs the handshake (announce `M5`; answer a
//! `ruok` probe with a JSON status and close), cuts frames, decodes messages
//! and routes them to the pool; it writes replies and broadcasts that workers
//! send back, buffering per connection while a socket is full. Bad input
//! (oversize frame, malformed msgpack, bad handshake) closes only the
//! offending connection. Over TLS ([`super::transport`]) the same happens
//! on the decrypted bytes; a client that does not complete its TLS
//! handshake in time (a plaintext client on the TLS port waits for our
//! greeting forever) is closed with a log line that says so.
//!
//! While the serving gate is closed (an HA standby, see `serving`) a new
//! connection is accepted but not greeted: a ZEO client waits for the
//! greeting, and is greeted once this controller leads (or it gave up and
//! closed). Stock `ZEO.ClientStorage([a, b])` needs exactly this to fail
//! over: it keeps the attempt on every address open and registers with
//! the first that greets.

use super::refusals::{host_of, suppressed_note, Refusals, Verdict};
use super::session::{self, Session};
use super::transport::{tls_failure, Listener, Transport};
use super::worker;
use super::{methods, ConnId, Job, Out, Shared};
use crate::locks::write;
use crate::zeo::frame::{FrameDecoder, FrameError};
use crate::zeo::message::{self, Message};
use crate::zeo::PROTOCOL;
use crossbeam_channel::Receiver;
use mio::{Events, Interest, Poll, Token};
use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) const LISTENER: Token = Token(0);
pub(super) const WAKER: Token = Token(1);
const FIRST_CONN: u64 = 2;

enum Payload {
    Owned(Vec<u8>),
    Shared(Arc<Vec<u8>>),
    Metered(super::blobs::Metered),
}

impl Payload {
    fn bytes(&self) -> &[u8] {
        match self {
            Payload::Owned(v) => v,
            Payload::Shared(v) => v,
            Payload::Metered(m) => m.bytes(),
        }
    }
}

/// One queued frame; `pos` counts bytes already written (header included).
struct OutFrame {
    header: [u8; 4],
    payload: Payload,
    pos: usize,
}

impl OutFrame {
    fn new(payload: Payload) -> OutFrame {
        let len = payload.bytes().len() as u32;
        OutFrame {
            header: len.to_be_bytes(),
            payload,
            pos: 0,
        }
    }
    fn total(&self) -> usize {
        4 + self.payload.bytes().len()
    }
}

struct Conn {
    transport: Transport,
    peer: String,
    decoder: FrameDecoder,
    handshake_done: bool,
    outq: VecDeque<OutFrame>,
    want_write: bool,
    close_after_flush: bool,
    session: Arc<Session>,
    /// Not greeted yet: accepted while the serving gate was closed.
    waiting: bool,
    /// Not read while its session's queue is over `session::QUEUE_HIGH`
    /// (resumed by `Out::ResumeReading`).
    paused: bool,
}

/// Bytes one `read` takes from a connection before its frames are routed
/// (and a paused connection stops being read).
const READ_BUDGET: usize = 1 << 20;

struct Loop {
    poll: Poll,
    listener: Option<Listener>,
    conns: HashMap<ConnId, Conn>,
    /// TLS connections still in their handshake, with their deadline.
    handshakes: Vec<(Instant, ConnId)>,
    handshake_timeout: Duration,
    /// Rate limit for the log lines about refused clients.
    refusals: Refusals,
    next_id: u64,
    shared: Arc<Shared>,
    max_frame: usize,
    read_buf: Vec<u8>,
    /// Connections with queued output not yet written this turn.
    dirty: Vec<ConnId>,
    /// Connections accepted while the serving gate was closed, to greet
    /// when it opens.
    ungreeted: Vec<ConnId>,
}

pub(super) fn run(
    poll: Poll,
    mut listener: Listener,
    shared: Arc<Shared>,
    out_rx: Receiver<Out>,
    max_frame: usize,
    handshake_timeout: Duration,
) {
    if let Err(e) = poll
        .registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
    {
        log::error!("cannot register the listener: {e}");
        return;
    }
    let mut lp = Loop {
        poll,
        listener: Some(listener),
        conns: HashMap::new(),
        handshakes: Vec::new(),
        handshake_timeout,
        refusals: Refusals::default(),
        next_id: FIRST_CONN,
        shared,
        max_frame,
        read_buf: vec![0u8; 64 << 10],
        dirty: Vec::new(),
        ungreeted: Vec::new(),
    };
    let mut events = Events::with_capacity(1024);
    loop {
        let timeout = lp.expire_handshakes();
        if let Err(e) = lp.poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("event loop poll failed: {e}; stopping the server loop");
            break;
        }
        for ev in events.iter() {
            match ev.token() {
                LISTENER => lp.accept(),
                WAKER => {}
                Token(t) => {
                    let id = t as u64;
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        lp.read(id);
                    }
                    if ev.is_writable() {
                        lp.flush(id);
                    }
                }
            }
        }
        lp.shared.wake_pending.store(false, Ordering::SeqCst);
        while let Ok(out) = out_rx.try_recv() {
            lp.deliver(out);
        }
        lp.flush_dirty();
        if lp.shared.stopping.load(Ordering::SeqCst) {
            lp.stop();
            break;
        }
    }
}

impl Loop {
    fn accept(&mut self) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    let id = self.next_id;
                    self.next_id += 1;
                    let tls = self
                        .shared
                        .tls
                        .as_ref()
                        .map(|t| crate::locks::read(&t.config).clone());
                    let mut transport = match Transport::new(stream, tls) {
                        Ok(t) => t,
                        Err(e) => {
                            log::error!("closing connection from {peer}: {e}");
                            continue;
                        }
                    };
                    if let Err(e) = self.poll.registry().register(
                        transport.source(),
                        Token(id as usize),
                        Interest::READABLE,
                    ) {
                        log::error!("cannot register connection from {peer}: {e}");
                        continue;
                    }
                    if transport.is_tls() {
                        self.handshakes
                            .push((Instant::now() + self.handshake_timeout, id));
                    }
                    log::debug!("connection {id} from {peer}");
                    let session = Arc::new(Session::new(id, peer.clone()));
                    write(&self.shared.sessions).insert(id, session.clone());
                    let waiting = !self.shared.gate.is_open();
                    let mut conn = Conn {
                        transport,
                        peer,
                        decoder: FrameDecoder::new(self.max_frame),
                        handshake_done: false,
                        outq: VecDeque::new(),
                        want_write: false,
                        close_after_flush: false,
                        session,
                        waiting,
                        paused: false,
                    };
                    if waiting {
                        log::debug!(
                            "connection {id} from {} waits for its greeting: this \
                             controller stands by",
                            conn.peer
                        );
                        self.ungreeted.push(id);
                    } else {
                        conn.outq
                            .push_back(OutFrame::new(Payload::Owned(PROTOCOL.to_vec())));
                    }
                    self.conns.insert(id, conn);
                    self.flush(id);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: log and retry on the next event.
                    log::error!("accept failed: {e} (check the open-file limit, ulimit -n)");
                    return;
                }
            }
        }
    }

    /// Read what the connection has, a budget at a time, until it would
    /// block or its session asks the loop to pause it.
    fn read(&mut self, id: ConnId) {
        while self.read_some(id) {}
    }

    /// One budget's worth; true when there may be more to read now.
    fn read_some(&mut self, id: ConnId) -> bool {
        let mut frames = Vec::new();
        let mut more = false;
        let mut closed = None;
        // A TLS client turned away: (peer, why), logged rate-limited.
        let mut refused: Option<(String, String)> = None;
        {
            let Some(conn) = self.conns.get_mut(&id) else {
                return false;
            };
            if conn.paused {
                return false;
            }
            let mut got = 0usize;
            loop {
                if got >= READ_BUDGET {
                    more = true;
                    break;
                }
                match conn.transport.read(&mut self.read_buf) {
                    Ok(0) => {
                        if conn.transport.abandoned_handshake() {
                            refused = Some((
                                conn.peer.clone(),
                                "it closed the connection during the TLS handshake; does it trust our certificate? (check the CA it was given, the name it expects and our certificate's dates)".into(),
                            ));
                        }
                        closed = Some(None);
                        break;
                    }
                    Ok(n) => {
                        got += n;
                        conn.decoder.feed(&self.read_buf[..n]);
                        loop {
                            match conn.decoder.next_frame() {
                                Ok(Some(f)) => frames.push(f),
                                Ok(None) => break,
                                Err(FrameError::TooLarge { declared, limit }) => {
                                    closed = Some(Some(format!(
                                        "closing connection from {}: declared frame of {declared} bytes exceeds max-frame-size {limit}",
                                        conn.peer
                                    )));
                                    break;
                                }
                            }
                        }
                        if closed.is_some() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if peer_went_away(e.kind()) => {
                        // A client process that exits without closing
                        // cleanly: routine, not a server problem.
                        log::info!("connection from {} closed by the peer: {e}", conn.peer);
                        closed = Some(None);
                        break;
                    }
                    Err(e) => {
                        closed = Some(match tls_failure(&e) {
                            Some(why) => {
                                refused = Some((conn.peer.clone(), why.to_string()));
                                None
                            }
                            None => Some(format!("connection from {} failed: {e}", conn.peer)),
                        });
                        break;
                    }
                }
            }
            if closed.is_none() && conn.transport.is_tls() {
                // Handshake records to answer, or output the handshake held.
                self.dirty.push(id);
            }
        }
        let mut reads = Vec::new();
        for f in frames {
            if !self.conns.contains_key(&id) {
                return false;
            }
            self.frame(id, f, &mut reads);
        }
        if !reads.is_empty() {
            // One job for the whole burst: one worker wake-up, one reply write.
            let _ = self.shared.jobs.send(Job::Concurrent(id, reads));
        }
        if let Some((peer, why)) = refused {
            self.log_refusal(&peer, &why, |note| {
                format!("refused TLS connection from {peer}: {why}{note}")
            });
        }
        if let Some(reason) = closed {
            if let Some(r) = reason {
                log::error!("{r}");
            }
            self.close(id);
            return false;
        }
        more && self.conns.get(&id).is_some_and(|c| !c.paused)
    }

    /// Log a refused client at warn level, once per host per minute (a
    /// refused ZEO client reconnects at once, hundreds of times a second).
    fn log_refusal(&mut self, peer: &str, reason: &str, line: impl FnOnce(&str) -> String) {
        if let Verdict::Log { suppressed } = self.refusals.check(peer, reason, Instant::now()) {
            log::warn!("{}", line(&suppressed_note(host_of(peer), suppressed)));
        }
    }

    /// Handle one frame; stateless reads are appended to `reads`.
    fn frame(&mut self, id: ConnId, frame: Vec<u8>, reads: &mut Vec<Message>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if !conn.handshake_done {
            if frame == b"ruok" {
                let status = super::status::ruok_json(&self.shared);
                conn.outq
                    .push_back(OutFrame::new(Payload::Owned(status.into_bytes())));
                conn.close_after_flush = true;
                self.flush(id);
            } else if frame == PROTOCOL {
                conn.handshake_done = true;
                log::debug!("connection {id} from {}: handshake M5", conn.peer);
            } else {
                log::error!(
                    "closing connection from {}: bad handshake {:?} (zeoraid speaks the msgpack protocol M5; stock ZEO 5/6 clients adapt automatically)",
                    conn.peer,
                    String::from_utf8_lossy(&frame[..frame.len().min(16)])
                );
                self.close(id);
            }
            return;
        }
        let msg = match message::decode(&frame) {
            Ok(m) => m,
            Err(e) => {
                log::error!("closing connection from {}: {e}", conn.peer);
                self.close(id);
                return;
            }
        };
        if msg.is_heartbeat() || msg.method == message::REPLY {
            return; // heartbeat
        }
        self.route(id, msg, frame.len(), reads);
    }

    fn route(&mut self, id: ConnId, msg: Message, size: usize, reads: &mut Vec<Message>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let method = match methods::check(&msg.method, msg.arg_list().len()) {
            Ok(m) => m,
            Err(refusal) => {
                if msg.is_oneway() {
                    log::error!(
                        "closing connection from {}: one-way call refused: {refusal}",
                        conn.peer
                    );
                    self.close(id);
                } else {
                    log::warn!("{}: {refusal}", conn.peer);
                    let err = refusal.error();
                    conn.outq
                        .push_back(OutFrame::new(Payload::Owned(message::encode_error(
                            &msg.msgid, &err,
                        ))));
                    self.flush(id);
                }
                return;
            }
        };
        let session = conn.session.clone();
        if method.kind == methods::Kind::Concurrent && session.is_registered() {
            if session.reads_never_block() && method.point_read {
                // In-memory point reads: answering here saves two thread
                // hand-offs per request.
                match worker::run_inline(&self.shared, &session, &msg) {
                    Ok(Some(payload)) => self.queue(id, Payload::Owned(payload)),
                    Ok(None) => {}
                    Err(()) => self.close(id),
                }
            } else if let Some(payload) = worker::try_load_inline(&session, &msg) {
                // A file storage load the page cache could answer at once.
                self.queue(id, Payload::Owned(payload));
            } else {
                reads.push(msg);
            }
        } else {
            let queued = session.enqueue(msg, size);
            if queued.pause {
                conn.paused = true;
                log::debug!(
                    "connection {id} from {}: more than {} MiB waiting for a worker; not reading it until it drains",
                    conn.peer,
                    session::QUEUE_HIGH >> 20
                );
            }
            if queued.drain {
                let _ = self.shared.jobs.send(Job::Drain(id));
            }
        }
    }

    /// Queue what a worker sent; sockets are written once per loop turn
    /// (`flush_dirty`), so replies that arrive together go out in one writev.
    fn deliver(&mut self, out: Out) {
        match out {
            Out::Send(id, payload) => self.queue(id, Payload::Owned(payload)),
            Out::SendMetered(id, m) => self.queue(id, Payload::Metered(m)),
            Out::ResumeReading(id) => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.paused = false;
                }
                self.read(id);
            }
            Out::SendMany(id, payloads) => {
                for p in payloads {
                    self.queue(id, Payload::Owned(p));
                }
            }
            Out::Broadcast(ids, payload) => {
                for id in ids {
                    self.queue(id, Payload::Shared(payload.clone()));
                }
            }
            Out::Close(id) => {
                self.flush(id);
                self.close(id);
            }
            Out::Probe(answered) => {
                stall_hook();
                let _ = self.shared.jobs.send(Job::Probe(answered));
            }
            Out::Greet => self.greet_waiting(),
        }
    }

    /// The serving gate opened: greet the connections that waited.
    fn greet_waiting(&mut self) {
        for id in std::mem::take(&mut self.ungreeted) {
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            if conn.waiting {
                conn.waiting = false;
                conn.outq
                    .push_front(OutFrame::new(Payload::Owned(PROTOCOL.to_vec())));
                self.flush(id);
            }
        }
    }

    fn queue(&mut self, id: ConnId, payload: Payload) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.outq.push_back(OutFrame::new(payload));
            self.dirty.push(id);
        }
    }

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for id in dirty.drain(..) {
            self.flush(id);
        }
        self.dirty = dirty;
    }

    /// Write as much of the queue as the socket takes.
    fn flush(&mut self, id: ConnId) {
        let mut failed = None;
        let mut done_close = false;
        {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            while !conn.outq.is_empty() {
                let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(64);
                for f in conn.outq.iter().take(32) {
                    if f.pos < 4 {
                        slices.push(IoSlice::new(&f.header[f.pos..]));
                        slices.push(IoSlice::new(f.payload.bytes()));
                    } else {
                        slices.push(IoSlice::new(&f.payload.bytes()[f.pos - 4..]));
                    }
                }
                match conn.transport.write_vectored(&slices) {
                    Ok(0) => {
                        failed = Some("peer stopped reading".to_string());
                        break;
                    }
                    Ok(mut n) => {
                        while n > 0 {
                            let Some(front) = conn.outq.front_mut() else {
                                break;
                            };
                            let left = front.total() - front.pos;
                            if n >= left {
                                n -= left;
                                conn.outq.pop_front();
                            } else {
                                front.pos += n;
                                n = 0;
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        failed = Some(e.to_string());
                        break;
                    }
                }
            }
            if failed.is_none() {
                match conn.transport.push() {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => failed = Some(e.to_string()),
                }
            }
            if failed.is_none() {
                let want = !conn.outq.is_empty() || conn.transport.wants_write();
                if want != conn.want_write {
                    let interest = if want {
                        Interest::READABLE | Interest::WRITABLE
                    } else {
                        Interest::READABLE
                    };
                    if let Err(e) = self.poll.registry().reregister(
                        conn.transport.source(),
                        Token(id as usize),
                        interest,
                    ) {
                        failed = Some(e.to_string());
                    }
                    conn.want_write = want;
                }
                done_close = !want && conn.close_after_flush;
            }
        }
        if let Some(e) = failed {
            log::debug!("connection {id}: write failed: {e}");
            self.close(id);
        } else if done_close {
            self.close(id);
        }
    }

    fn close(&mut self, id: ConnId) {
        if let Some(mut conn) = self.conns.remove(&id) {
            if conn.waiting {
                self.ungreeted.retain(|w| *w != id);
            }
            conn.transport.close_notify();
            let _ = self.poll.registry().deregister(conn.transport.source());
            log::debug!("connection {id} from {} closed", conn.peer);
            conn.session.mark_closed();
            let _ = self.shared.jobs.send(Job::Disconnected(id));
        }
    }

    /// Close TLS connections whose handshake ran out of time; the poll
    /// timeout until the next deadline (`None`: no handshake pending).
    fn expire_handshakes(&mut self) -> Option<Duration> {
        if self.handshakes.is_empty() {
            return None;
        }
        let now = Instant::now();
        let mut expired = Vec::new();
        let conns = &self.conns;
        self.handshakes
            .retain(|&(deadline, id)| match conns.get(&id) {
                Some(c) if c.transport.handshaking() => {
                    if deadline <= now {
                        expired.push(id);
                        false
                    } else {
                        true
                    }
                }
                _ => false,
            });
        for id in expired {
            if let Some(peer) = self.conns.get(&id).map(|c| c.peer.clone()) {
                let timeout = self.handshake_timeout;
                self.log_refusal(&peer, "handshake timeout", |note| {
                    format!(
                        "closing connection from {peer}: no TLS handshake within {timeout:?}; a plaintext client on the TLS port? (give the client an SSL context){note}"
                    )
                });
            }
            self.close(id);
        }
        self.handshakes
            .iter()
            .map(|&(d, _)| d.saturating_duration_since(now))
            .min()
            .map(|d| d.max(Duration::from_millis(1)))
    }

    fn stop(&mut self) {
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.flush(id);
            self.close(id);
        }
    }
}

/// Read errors that only mean the client is gone (logged at info, not as
/// errors).
fn peer_went_away(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Test hook (debug builds only): while the file named by
/// `ZEORAID_DEBUG_STALL_LOOP` exists, the event loop sleeps here when a
/// liveness probe reaches it, as a hung loop would, so a test can check
/// that the systemd watchdog pings stop. Release builds have no hook.
#[cfg(debug_assertions)]
fn stall_hook() {
    use std::sync::OnceLock;
    static FILE: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    let file = FILE.get_or_init(|| std::env::var_os("ZEORAID_DEBUG_STALL_LOOP").map(Into::into));
    if let Some(f) = file {
        while f.exists() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(not(debug_assertions))]
fn stall_hook() {}
