//! A small TCP proxy that makes a fast local server look like a distant,
//! busy or dead one, for tests and benchmarks.
//!
//! [`Proxy::start`] listens on `127.0.0.1:0` and forwards every connection
//! it accepts to a target address. Its settings apply to every connection
//! and can be changed while it runs (they are atomics behind an `Arc`):
//!
//! - **delay** ([`Proxy::set_delay`]): a one-way delay `D` on each
//!   direction. Whatever is read from one side is delivered to the other
//!   `D` after it was read, in order (each direction is a delay line: a
//!   reader thread queues `(due, bytes)`, a writer thread delivers each at
//!   its due time). A round trip through the proxy takes `2 D` more.
//! - **service time** ([`Proxy::set_service_time`]): the proxy cuts the
//!   client→server stream into ZEO frames (4-byte big-endian length, then
//!   the payload) and lets one frame through at a time *per proxy* (across
//!   all its connections), each after `S`: a backend that serves one
//!   request at a time and needs `S` for each. Replies pass unchanged.
//! - **swallow** ([`Proxy::set_swallow`]): a backend that accepts
//!   connections and never answers. Everything is read and dropped, in
//!   both directions. A connection accepted while swallowing is never
//!   connected to the target at all and stays a sink after swallowing is
//!   turned off; a connection that was forwarding resumes forwarding (what
//!   was dropped meanwhile is lost, so its stream is likely broken).
//! - **bandwidth** ([`Proxy::set_bandwidth`]): each direction is one link
//!   of that many bytes per second, shared by all connections: a chunk is
//!   delivered once the link has had time to carry it after the previous
//!   one (after its delay, as on a real long fat pipe).
//! - [`Proxy::cut`] closes every current connection (both sides, queued
//!   data dropped); new connections are accepted as before.
//!
//! [`Proxy::bytes_up`] counts what crossed the link toward the target
//! (after delay and bandwidth), to measure a transfer against the link.
//!
//! Threads are named `proxy-<port>-...`: one acceptor, and per connection
//! one reader and one writer per direction. Every socket operation has a
//! timeout (reads wake every [`POLL`] to notice a stop or cut; writes give
//! up after [`WRITE_TIMEOUT`] and close the connection). Everything is
//! bounded: at most [`MAX_CONNECTIONS`] live connections (more are closed
//! at once), at most [`QUEUE_CHUNKS`] chunks queued per direction (a full
//! queue stops reading, which pushes back on the sender through TCP).
//! [`Proxy::stop`] (also run on drop) closes everything and joins every
//! thread.
//!
//! ```no_run
//! use std::time::Duration;
//! use zeoraid::bench::proxy::Proxy;
//!
//! # fn main() -> std::io::Result<()> {
//! let backend: std::net::SocketAddr = "127.0.0.1:8100".parse().unwrap();
//! let far = Proxy::start(backend)?;
//! far.set_delay(Duration::from_millis(2)); // 4 ms more per round trip
//! // ... point a client or an array's ZEO backend at far.addr() ...
//! far.set_swallow(true); // from now on it never answers
//! far.cut(); // and drops the connections it had
//! # Ok(())
//! # }
//! ```

use crate::locks::lock;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, SendTimeoutError, Sender};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often blocked threads look at the stop and cut flags.
pub const POLL: Duration = Duration::from_millis(20);
/// A write that cannot complete within this closes its connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The timeout of the proxy's own connection to the target.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections beyond this many are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 64;
/// Chunks waiting in one direction's delay line.
pub const QUEUE_CHUNKS: usize = 1024;
/// Largest read from a socket.
const CHUNK: usize = 64 * 1024;

/// Splits a byte stream into ZEO frames (4-byte big-endian length, then
/// that many bytes) without buffering: it only remembers where it is.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FrameCutter {
    header: [u8; 4],
    have_header: usize,
    remaining: usize,
}

impl FrameCutter {
    pub fn new() -> FrameCutter {
        FrameCutter::default()
    }

    /// Cut `data` (the next bytes of the stream) into pieces: the ranges
    /// of `data` in order, each with whether it ends a frame. Only the
    /// last piece can leave a frame unfinished.
    pub fn cut(&mut self, data: &[u8]) -> Vec<(std::ops::Range<usize>, bool)> {
        let mut out = Vec::new();
        let (mut i, mut start) = (0, 0);
        while i < data.len() {
            if self.have_header < 4 {
                self.header[self.have_header] = data[i];
                self.have_header += 1;
                i += 1;
                if self.have_header == 4 {
                    self.remaining = u32::from_be_bytes(self.header) as usize;
                } else {
                    continue;
                }
            } else {
                let take = self.remaining.min(data.len() - i);
                i += take;
                self.remaining -= take;
            }
            if self.remaining == 0 {
                out.push((start..i, true));
                start = i;
                self.have_header = 0;
            }
        }
        if start < data.len() {
            out.push((start..data.len(), false));
        }
        out
    }
}

/// Settings and bookkeeping shared by the proxy's threads.
struct Shared {
    target: SocketAddr,
    port: u16,
    delay_us: AtomicU64,
    service_us: AtomicU64,
    swallow: AtomicBool,
    /// Bytes per second per direction (0: unlimited).
    bandwidth: AtomicU64,
    /// When each direction's link is free again (0 up, 1 down).
    link_free: [Mutex<Instant>; 2],
    stopping: AtomicBool,
    /// Held while a frame is served in service-time mode.
    service: Mutex<()>,
    conns: Mutex<Vec<Conn>>,
    next_id: AtomicU64,
    frames: AtomicU64,
    accepted: AtomicU64,
    /// Bytes written to the target, over all connections.
    bytes_up: AtomicU64,
}

impl Shared {
    fn delay(&self) -> Duration {
        Duration::from_micros(self.delay_us.load(Ordering::Relaxed))
    }

    fn service(&self) -> Duration {
        Duration::from_micros(self.service_us.load(Ordering::Relaxed))
    }

    fn swallowing(&self) -> bool {
        self.swallow.load(Ordering::Relaxed)
    }
}

/// One proxied connection: what closes it and the threads to join.
struct Conn {
    closed: Arc<AtomicBool>,
    sockets: Vec<TcpStream>,
    threads: Vec<JoinHandle<()>>,
}

impl Conn {
    fn close(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        for s in &self.sockets {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn join(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    fn finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }
}

/// What travels through a delay line.
enum Item {
    Data(Instant, Vec<u8>),
    /// The source closed its side (delivered as a write shutdown).
    Eof(Instant),
}

/// A running proxy; see the module documentation.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("target", &self.shared.target)
            .finish()
    }
}

impl Proxy {
    /// Listen on `127.0.0.1:0` and forward to `target`, with no delay, no
    /// service time and no swallowing.
    pub fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        // A blocking accept: an idle proxy wakes no core (stop connects
        // to it to end the accept).
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            port: addr.port(),
            delay_us: AtomicU64::new(0),
            service_us: AtomicU64::new(0),
            swallow: AtomicBool::new(false),
            bandwidth: AtomicU64::new(0),
            link_free: [Mutex::new(Instant::now()), Mutex::new(Instant::now())],
            stopping: AtomicBool::new(false),
            service: Mutex::new(()),
            conns: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
        });
        let for_thread = shared.clone();
        let acceptor = thread::Builder::new()
            .name(format!("proxy-{}-accept", addr.port()))
            .spawn(move || accept_loop(listener, for_thread))?;
        Ok(Proxy {
            addr,
            shared,
            acceptor: Mutex::new(Some(acceptor)),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// One-way delay added to each direction (zero: none). Applies to
    /// bytes read from now on, on current and new connections.
    pub fn set_delay(&self, d: Duration) {
        self.shared
            .delay_us
            .store(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn delay(&self) -> Duration {
        self.shared.delay()
    }

    /// Serve client→server frames one at a time per proxy, `s` each
    /// (zero: forward as they come).
    pub fn set_service_time(&self, s: Duration) {
        self.shared
            .service_us
            .store(s.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn service_time(&self) -> Duration {
        self.shared.service()
    }

    /// Drop everything in both directions (a backend that never answers).
    pub fn set_swallow(&self, on: bool) {
        self.shared.swallow.store(on, Ordering::Relaxed);
    }

    pub fn swallowing(&self) -> bool {
        self.shared.swallowing()
    }

    /// Limit each direction to `bytes_per_second` (0: unlimited).
    pub fn set_bandwidth(&self, bytes_per_second: u64) {
        self.shared
            .bandwidth
            .store(bytes_per_second, Ordering::Relaxed);
    }

    /// Close every current connection and wait for its threads.
    pub fn cut(&self) {
        let conns = std::mem::take(&mut *lock(&self.shared.conns));
        close_all(conns);
    }

    /// Complete client→server frames forwarded so far (requests a backend
    /// behind this proxy received), over all connections.
    pub fn frames(&self) -> u64 {
        self.shared.frames.load(Ordering::Relaxed)
    }

    /// Bytes delivered to the target so far (client→server, over all
    /// connections): what crossed the link, after its delay and bandwidth.
    /// Swallowed bytes are not counted.
    pub fn bytes_up(&self) -> u64 {
        self.shared.bytes_up.load(Ordering::Relaxed)
    }

    /// Connections accepted so far (including refused and swallowed ones).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Connections currently open.
    pub fn connections(&self) -> usize {
        lock(&self.shared.conns)
            .iter()
            .filter(|c| !c.finished())
            .count()
    }

    /// Stop accepting, close every connection, join every thread.
    /// Idempotent; also run on drop.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(h) = lock(&self.acceptor).take() {
            // Wake the blocked accept; it sees `stopping` and ends.
            let _ = TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT);
            let _ = h.join();
        }
        self.cut();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn close_all(mut conns: Vec<Conn>) {
    for c in &mut conns {
        c.close();
    }
    for c in &mut conns {
        c.join();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        reap(&shared);
        match accepted {
            Ok((client, _)) => {
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = admit(&shared, client) {
                    log::debug!("proxy {}: connection dropped: {e}", shared.port);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("proxy {}: accept failed: {e}", shared.port);
                thread::sleep(POLL);
            }
        }
    }
}

/// Join the threads of connections that ended on their own.
fn reap(shared: &Shared) {
    let done: Vec<Conn> = {
        let mut conns = lock(&shared.conns);
        if conns.iter().all(|c| !c.finished()) {
            return;
        }
        let (done, live): (Vec<Conn>, Vec<Conn>) = std::mem::take(&mut *conns)
            .into_iter()
            .partition(Conn::finished);
        *conns = live;
        done
    };
    close_all(done);
}

fn configure(s: &TcpStream) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(POLL))?;
    s.set_write_timeout(Some(WRITE_TIMEOUT))
}

/// Set up one accepted connection and its threads.
fn admit(shared: &Arc<Shared>, client: TcpStream) -> std::io::Result<()> {
    reap(shared);
    if lock(&shared.conns).len() >= MAX_CONNECTIONS {
        let _ = client.shutdown(Shutdown::Both);
        return Err(std::io::Error::other(format!(
            "more than {MAX_CONNECTIONS} connections"
        )));
    }
    configure(&client)?;
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let closed = Arc::new(AtomicBool::new(false));
    let name = |what: &str| format!("proxy-{}-{id}-{what}", shared.port);
    if shared.swallowing() {
        let (sh, cl, src) = (shared.clone(), closed.clone(), client.try_clone()?);
        let t = thread::Builder::new()
            .name(name("sink"))
            .spawn(move || sink(&sh, &cl, src))?;
        lock(&shared.conns).push(Conn {
            closed,
            sockets: vec![client],
            threads: vec![t],
        });
        return Ok(());
    }
    let server = match TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(e) => {
            let _ = client.shutdown(Shutdown::Both);
            return Err(e);
        }
    };
    configure(&server)?;
    let mut conn = Conn {
        closed: closed.clone(),
        sockets: vec![client.try_clone()?, server.try_clone()?],
        threads: Vec::new(),
    };
    let (up_tx, up_rx) = bounded(QUEUE_CHUNKS);
    let (down_tx, down_rx) = bounded(QUEUE_CHUNKS);
    let spawned = (|| -> std::io::Result<()> {
        let pairs: [(&str, TcpStream, Sender<Item>, bool); 2] = [
            ("up-read", client.try_clone()?, up_tx, true),
            ("down-read", server.try_clone()?, down_tx, false),
        ];
        for (what, src, tx, upstream) in pairs {
            let (sh, cl) = (shared.clone(), closed.clone());
            conn.threads.push(
                thread::Builder::new()
                    .name(name(what))
                    .spawn(move || reader(&sh, &cl, src, tx, upstream))?,
            );
        }
        let pairs: [(&str, TcpStream, Receiver<Item>, usize); 2] = [
            ("up-write", server.try_clone()?, up_rx, 0),
            ("down-write", client.try_clone()?, down_rx, 1),
        ];
        for (what, dst, rx, dir) in pairs {
            let (sh, cl) = (shared.clone(), closed.clone());
            conn.threads.push(
                thread::Builder::new()
                    .name(name(what))
                    .spawn(move || writer(&sh, &cl, dst, rx, dir))?,
            );
        }
        Ok(())
    })();
    if let Err(e) = spawned {
        conn.close();
        conn.join();
        return Err(e);
    }
    lock(&shared.conns).push(conn);
    Ok(())
}

fn alive(shared: &Shared, closed: &AtomicBool) -> bool {
    !closed.load(Ordering::Relaxed) && !shared.stopping.load(Ordering::Relaxed)
}

/// Close the whole connection (both sockets) from one of its threads.
fn kill(closed: &AtomicBool, socket: &TcpStream) {
    closed.store(true, Ordering::SeqCst);
    let _ = socket.shutdown(Shutdown::Both);
}

/// A read with the poll timeout: `Some(n)` bytes (0: EOF), `None`: nothing yet.
fn read_some(src: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    match src.read(buf) {
        Ok(n) => Ok(Some(n)),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A swallowed connection: read and drop until the client goes away.
fn sink(shared: &Shared, closed: &AtomicBool, mut src: TcpStream) {
    let mut buf = vec![0u8; CHUNK];
    while alive(shared, closed) {
        match read_some(&mut src, &mut buf) {
            Ok(None) => {}
            Ok(Some(0)) | Err(_) => break,
            Ok(Some(_)) => {}
        }
    }
    kill(closed, &src);
}

/// Queue `item`, waiting while the queue is full; false when the
/// connection closed meanwhile.
fn push(shared: &Shared, closed: &AtomicBool, tx: &Sender<Item>, mut item: Item) -> bool {
    loop {
        match tx.send_timeout(item, POLL) {
            Ok(()) => return true,
            Err(SendTimeoutError::Timeout(back)) => {
                if !alive(shared, closed) {
                    return false;
                }
                item = back;
            }
            Err(SendTimeoutError::Disconnected(_)) => return false,
        }
    }
}

/// Read one direction and queue what was read with its due time. The
/// client→server reader (`upstream`) also cuts frames: it counts them and,
/// in service-time mode, lets each through only after its service.
fn reader(
    shared: &Shared,
    closed: &AtomicBool,
    mut src: TcpStream,
    tx: Sender<Item>,
    upstream: bool,
) {
    let mut buf = vec![0u8; CHUNK];
    let mut cutter = FrameCutter::new();
    // Bytes of a frame waiting for its service (service-time mode).
    let mut frame: Vec<u8> = Vec::new();
    while alive(shared, closed) {
        let n = match read_some(&mut src, &mut buf) {
            Ok(None) => continue,
            Ok(Some(0)) => {
                push(
                    shared,
                    closed,
                    &tx,
                    Item::Eof(Instant::now() + shared.delay()),
                );
                return;
            }
            Ok(Some(n)) => n,
            Err(_) => break,
        };
        if shared.swallowing() {
            continue;
        }
        let data = &buf[..n];
        if !upstream {
            if !push(
                shared,
                closed,
                &tx,
                Item::Data(Instant::now() + shared.delay(), data.to_vec()),
            ) {
                break;
            }
            continue;
        }
        let mut passing: Vec<u8> = Vec::new();
        for (range, ends) in cutter.cut(data) {
            let service = shared.service();
            if service.is_zero() && frame.is_empty() {
                passing.extend_from_slice(&data[range]);
                if ends {
                    shared.frames.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            frame.extend_from_slice(&data[range]);
            if !ends {
                continue;
            }
            // Whatever came before this frame goes first, in order.
            if !passing.is_empty() {
                let before = std::mem::take(&mut passing);
                if !push(
                    shared,
                    closed,
                    &tx,
                    Item::Data(Instant::now() + shared.delay(), before),
                ) {
                    return kill(closed, &src);
                }
            }
            let whole = std::mem::take(&mut frame);
            let served = {
                let _one_at_a_time = lock(&shared.service);
                thread::sleep(service);
                shared.frames.fetch_add(1, Ordering::Relaxed);
                push(
                    shared,
                    closed,
                    &tx,
                    Item::Data(Instant::now() + shared.delay(), whole),
                )
            };
            if !served {
                return kill(closed, &src);
            }
        }
        if !passing.is_empty()
            && !push(
                shared,
                closed,
                &tx,
                Item::Data(Instant::now() + shared.delay(), passing),
            )
        {
            break;
        }
    }
    kill(closed, &src);
}

/// When `item` may leave: its due time, and for data on a capped link
/// after the chunks before it have crossed (books the link's time).
fn departure(shared: &Shared, dir: usize, item: &Item) -> Instant {
    let due = match item {
        Item::Data(due, _) | Item::Eof(due) => *due,
    };
    let bw = shared.bandwidth.load(Ordering::Relaxed);
    match item {
        Item::Data(_, bytes) if bw > 0 => {
            // The link carries one chunk after another at `bw`.
            let mut free = lock(&shared.link_free[dir]);
            let start = (*free).max(due);
            *free = start + Duration::from_secs_f64(bytes.len() as f64 / bw as f64);
            *free
        }
        _ => due,
    }
}

/// Deliver queued chunks at their due time, in order. Chunks already due
/// when one is written go out in the same write (a link has no threads to
/// wake per chunk: the proxy should not cost the machine that either).
fn writer(
    shared: &Shared,
    closed: &AtomicBool,
    mut dst: TcpStream,
    rx: Receiver<Item>,
    dir: usize,
) {
    let mut held: Option<(Instant, Item)> = None;
    let mut out: Vec<u8> = Vec::new();
    while alive(shared, closed) {
        let (due, item) = match held.take() {
            Some(h) => h,
            None => match rx.recv_timeout(POLL) {
                Ok(i) => (departure(shared, dir, &i), i),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            },
        };
        loop {
            let now = Instant::now();
            if now >= due || !alive(shared, closed) {
                break;
            }
            thread::sleep((due - now).min(POLL));
        }
        if !alive(shared, closed) {
            break;
        }
        let mut eof = false;
        let mut next = Some(item);
        while let Some(item) = next.take() {
            match item {
                Item::Data(_, bytes) => out.extend_from_slice(&bytes),
                Item::Eof(_) => {
                    eof = true;
                    break;
                }
            }
            if let Ok(i) = rx.try_recv() {
                let d = departure(shared, dir, &i);
                if d <= Instant::now() {
                    next = Some(i);
                } else {
                    held = Some((d, i));
                }
            }
        }
        if !out.is_empty() && !shared.swallowing() {
            if dst.write_all(&out).is_err() {
                break;
            }
            if dir == 0 {
                shared
                    .bytes_up
                    .fetch_add(out.len() as u64, Ordering::Relaxed);
            }
        }
        out.clear();
        if eof {
            let _ = dst.shutdown(Shutdown::Write);
            return;
        }
    }
    kill(closed, &dst);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// An echo server on 127.0.0.1:0 (threads joined on drop).
    struct Echo {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        accepted: Arc<AtomicUsize>,
        thread: Option<JoinHandle<()>>,
    }

    impl Echo {
        fn start() -> Echo {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let addr = listener.local_addr().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let accepted = Arc::new(AtomicUsize::new(0));
            let (st, acc) = (stop.clone(), accepted.clone());
            let thread = thread::Builder::new()
                .name("test-echo".into())
                .spawn(move || {
                    let mut conns = Vec::new();
                    while !st.load(Ordering::SeqCst) {
                        match listener.accept() {
                            Ok((mut s, _)) => {
                                acc.fetch_add(1, Ordering::SeqCst);
                                s.set_nonblocking(false).unwrap();
                                s.set_read_timeout(Some(POLL)).unwrap();
                                let st = st.clone();
                                conns.push(thread::spawn(move || {
                                    let mut buf = [0u8; 4096];
                                    while !st.load(Ordering::SeqCst) {
                                        match read_some(&mut s, &mut buf) {
                                            Ok(None) => {}
                                            Ok(Some(0)) | Err(_) => return,
                                            Ok(Some(n)) => {
                                                if s.write_all(&buf[..n]).is_err() {
                                                    return;
                                                }
                                            }
                                        }
                                    }
                                }));
                            }
                            Err(_) => thread::sleep(Duration::from_millis(1)),
                        }
                    }
                    for c in conns {
                        let _ = c.join();
                    }
                })
                .unwrap();
            Echo {
                addr,
                stop,
                accepted,
                thread: Some(thread),
            }
        }
    }

    impl Drop for Echo {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(t) = self.thread.take() {
                t.join().unwrap();
            }
        }
    }

    fn connect(p: &Proxy) -> TcpStream {
        let s = TcpStream::connect(p.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        crate::zeo::frame::encode(payload)
    }

    fn read_exactly(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).unwrap();
        buf
    }

    #[test]
    fn a_proxy_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Proxy>();
    }

    #[test]
    fn cutter_table() {
        // (chunks fed in order, pieces expected per chunk)
        type Case = (Vec<Vec<u8>>, Vec<Vec<(std::ops::Range<usize>, bool)>>);
        let f = |p: &[u8]| frame(p);
        let two = [f(b"ab"), f(b"c")].concat(); // 6 + 5 bytes
        let cases: Vec<Case> = vec![
            (vec![vec![]], vec![vec![]]),
            (vec![f(b"ab")], vec![vec![(0..6, true)]]),
            (vec![two.clone()], vec![vec![(0..6, true), (6..11, true)]]),
            // A header split over three reads, then the payload.
            (
                vec![vec![0, 0], vec![0], vec![2, b'x'], vec![b'y', 0]],
                vec![
                    vec![(0..2, false)],
                    vec![(0..1, false)],
                    vec![(0..2, false)],
                    vec![(0..1, true), (1..2, false)],
                ],
            ),
            // An empty frame is just its header.
            (vec![f(b"")], vec![vec![(0..4, true)]]),
            (
                vec![two[..8].to_vec(), two[8..].to_vec()],
                vec![vec![(0..6, true), (6..8, false)], vec![(0..3, true)]],
            ),
        ];
        for (chunks, want) in cases {
            let mut c = FrameCutter::new();
            let got: Vec<_> = chunks.iter().map(|ch| c.cut(ch)).collect();
            assert_eq!(got, want, "{chunks:?}");
        }
    }

    #[test]
    fn forwards_both_ways_and_counts_frames() {
        let echo = Echo::start();
        let p = Proxy::start(echo.addr).unwrap();
        let mut s = connect(&p);
        let msg = [frame(b"hello"), frame(b"world")].concat();
        s.write_all(&msg).unwrap();
        assert_eq!(read_exactly(&mut s, msg.len()), msg);
        assert_eq!(p.frames(), 2);
        assert_eq!(p.connections(), 1);
        // Counted once written (the echo may answer a moment before).
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.bytes_up() < msg.len() as u64 {
            assert!(Instant::now() < deadline, "bytes_up {}", p.bytes_up());
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(p.bytes_up(), msg.len() as u64);
        drop(s);
        // The connection ends on its own once the client left.
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.connections() > 0 {
            assert!(Instant::now() < deadline, "connection never ended");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn delay_applies_to_each_direction_in_order() {
        let echo = Echo::start();
        let p = Proxy::start(echo.addr).unwrap();
        let mut s = connect(&p);
        // Warm up the connection without delay.
        s.write_all(b"x").unwrap();
        read_exactly(&mut s, 1);
        p.set_delay(Duration::from_millis(50));
        assert_eq!(p.delay(), Duration::from_millis(50));
        let t0 = Instant::now();
        let mut sent = Vec::new();
        for i in 0..20u8 {
            s.write_all(&[i]).unwrap();
            sent.push(i);
            thread::sleep(Duration::from_millis(1));
        }
        let got = read_exactly(&mut s, sent.len());
        let took = t0.elapsed();
        assert_eq!(got, sent, "order is kept");
        assert!(took >= Duration::from_millis(100), "{took:?}");
        // The chunks travel together, not one delay after another.
        assert!(took < Duration::from_millis(400), "{took:?}");
        p.set_delay(Duration::ZERO);
        let t0 = Instant::now();
        s.write_all(b"y").unwrap();
        read_exactly(&mut s, 1);
        assert!(
            t0.elapsed() < Duration::from_millis(50),
            "{:?}",
            t0.elapsed()
        );
    }

    #[test]
    fn service_time_serves_one_frame_at_a_time_per_proxy() {
        let echo = Echo::start();
        let p = Proxy::start(echo.addr).unwrap();
        let mut a = connect(&p);
        let mut b = connect(&p);
        p.set_service_time(Duration::from_millis(20));
        assert_eq!(p.service_time(), Duration::from_millis(20));
        let burst: Vec<u8> = (0..5u8).flat_map(|i| frame(&[i; 10])).collect();
        let t0 = Instant::now();
        a.write_all(&burst).unwrap();
        b.write_all(&burst).unwrap();
        assert_eq!(read_exactly(&mut a, burst.len()), burst);
        assert_eq!(read_exactly(&mut b, burst.len()), burst);
        let took = t0.elapsed();
        // Ten frames over both connections, one at a time.
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_millis(1000), "{took:?}");
        assert_eq!(p.frames(), 10);
        // A frame split across writes is served once, whole.
        let one = frame(b"split");
        a.write_all(&one[..3]).unwrap();
        thread::sleep(Duration::from_millis(30));
        a.write_all(&one[3..]).unwrap();
        assert_eq!(read_exactly(&mut a, one.len()), one);
        assert_eq!(p.frames(), 11);
    }

    #[test]
    fn swallow_answers_nothing() {
        let echo = Echo::start();
        let p = Proxy::start(echo.addr).unwrap();
        // A connection that was forwarding stops answering.
        let mut old = connect(&p);
        old.write_all(b"ping").unwrap();
        read_exactly(&mut old, 4);
        p.set_swallow(true);
        assert!(p.swallowing());
        // A new connection is accepted but never reaches the target.
        let mut new = connect(&p);
        for s in [&mut old, &mut new] {
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            s.write_all(&frame(b"anyone there?")).unwrap();
            let mut buf = [0u8; 16];
            let err = s.read(&mut buf).expect_err("no answer");
            assert!(
                matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "{err:?}"
            );
        }
        assert_eq!(echo.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(p.accepted(), 2);
        // Turned off, the forwarding connection works again.
        p.set_swallow(false);
        old.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        old.write_all(b"pong").unwrap();
        assert_eq!(read_exactly(&mut old, 4), b"pong");
    }

    #[test]
    fn cut_closes_current_connections_only() {
        let echo = Echo::start();
        let p = Proxy::start(echo.addr).unwrap();
        let mut a = connect(&p);
        a.write_all(b"1").unwrap();
        read_exactly(&mut a, 1);
        p.set_delay(Duration::from_millis(200));
        a.write_all(b"queued").unwrap();
        thread::sleep(Duration::from_millis(10));
        let t0 = Instant::now();
        p.cut();
        assert!(
            t0.elapsed() < Duration::from_millis(150),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(p.connections(), 0);
        let mut buf = [0u8; 8];
        match a.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() != ErrorKind::WouldBlock && e.kind() != ErrorKind::TimedOut => {}
            other => panic!("the cut connection still answers: {other:?}"),
        }
        p.set_delay(Duration::ZERO);
        let mut b = connect(&p);
        b.write_all(b"2").unwrap();
        assert_eq!(read_exactly(&mut b, 1), b"2");
    }

    #[test]
    fn stop_joins_everything_and_refuses_new_connections() {
        let echo = Echo::start();
        let p = Proxy::start(echo.addr).unwrap();
        let mut a = connect(&p);
        a.write_all(b"1").unwrap();
        read_exactly(&mut a, 1);
        let addr = p.addr();
        p.stop();
        p.stop(); // idempotent
        assert_eq!(p.connections(), 0);
        assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn a_dead_target_closes_the_client() {
        let dead = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let p = Proxy::start(dead).unwrap();
        let mut s = connect(&p);
        let mut buf = [0u8; 1];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() != ErrorKind::WouldBlock && e.kind() != ErrorKind::TimedOut => {}
            other => panic!("expected the connection to close: {other:?}"),
        }
    }
}
