//! A ZEO proxy that holds one chosen call, for tests that must hit a phase
//! of a commit deterministically (issue #21).
//!
//! [`Gate::start`] listens on `127.0.0.1:0` and forwards every connection
//! to an upstream ZEO server, frame by frame (4-byte big-endian length,
//! then the payload; the handshake passes as any other frame). Armed with
//! a [`Hold`], it stops the first frame that matches — a request by method
//! name on its way to the server, or the reply to such a request on its
//! way back — and tells the test ([`Gate::wait_held`]). The frame waits
//! until the test says what becomes of it ([`Gate::release`]): delivered,
//! answered or replaced by an error reply, or the connection cut. Frames
//! behind it on the same direction of that connection wait with it, as
//! they would behind a slow server.
//!
//! Threads are named `gate-<port>-...` and joined on drop; every wait is
//! bounded, and a stop or cut unblocks them (sockets are shut down).

use rmpv::Value;
use std::io::{ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use zeoraid::storage;
use zeoraid::zeo::frame;
use zeoraid::zeo::message;

/// Which frame to hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The first request (or one-way call) with this method name, before
    /// the server sees it.
    Request(&'static str),
    /// The server's reply to the first request with this method name,
    /// before the client sees it (the server has done the call).
    Reply(&'static str),
}

/// What becomes of the held frame.
#[derive(Clone, Debug)]
pub enum Release {
    /// Delivered as if nothing happened.
    Forward,
    /// A request: not delivered, the client gets this error as its reply.
    /// A reply: replaced by this error.
    Error(storage::Error),
    /// The connection is closed, both sides, the frame dropped.
    Cut,
}

#[derive(Default)]
struct State {
    armed: Option<Hold>,
    /// The msgid of the request whose reply is to be held.
    reply_to: Option<Value>,
    /// A frame is held (what it is).
    held: Option<String>,
    release: Option<Release>,
    /// Holds that fired since start.
    fired: u64,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
    stop: AtomicBool,
    upstream: Mutex<SocketAddr>,
    /// Both sockets of every connection, to shut down on cut or stop.
    sockets: Mutex<Vec<TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The proxy (see the module doc).
pub struct Gate {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// How long a held frame waits for the test before it is let through (a
/// test that forgot it must not hang).
const HOLD_LIMIT: Duration = Duration::from_secs(60);

impl Gate {
    pub fn start(upstream: SocketAddr) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").expect("gate binds");
        listener
            .set_nonblocking(true)
            .expect("gate listener non-blocking");
        let addr = listener.local_addr().expect("gate address");
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
            upstream: Mutex::new(upstream),
            sockets: Mutex::default(),
            threads: Mutex::default(),
        });
        let s = shared.clone();
        let acceptor = thread::Builder::new()
            .name(format!("gate-{}-accept", addr.port()))
            .spawn(move || accept_loop(listener, s))
            .expect("spawn the gate's acceptor");
        Gate {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where new connections go (a restarted server on another port).
    pub fn set_upstream(&self, addr: SocketAddr) {
        *guard(&self.shared.upstream) = addr;
    }

    /// Hold the next frame that matches `hold`.
    pub fn arm(&self, hold: Hold) {
        let mut st = guard(&self.shared.state);
        st.armed = Some(hold);
        st.reply_to = None;
        st.held = None;
        st.release = None;
    }

    /// Wait (bounded) until the armed frame is held; what it is.
    pub fn wait_held(&self, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        let mut st = guard(&self.shared.state);
        loop {
            if let Some(h) = &st.held {
                return Some(h.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            st = self
                .shared
                .cv
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Decide the held frame's fate (no effect if nothing is held).
    pub fn release(&self, r: Release) {
        let mut st = guard(&self.shared.state);
        if st.held.is_some() {
            st.release = Some(r);
            self.shared.cv.notify_all();
        }
    }

    /// How many holds have fired.
    pub fn fired(&self) -> u64 {
        guard(&self.shared.state).fired
    }

    /// Close every current connection.
    pub fn cut(&self) {
        for s in guard(&self.shared.sockets).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.release(Release::Cut);
        self.shared.cv.notify_all();
        self.cut();
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let threads: Vec<_> = guard(&self.shared.threads).drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut n = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => continue,
        };
        n += 1;
        let _ = client.set_nonblocking(false);
        let up_addr = *guard(&shared.upstream);
        let server = match TcpStream::connect_timeout(&up_addr, Duration::from_secs(2)) {
            Ok(s) => s,
            Err(_) => {
                // The server is down: so is this connection.
                let _ = client.shutdown(Shutdown::Both);
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        ) else {
            continue;
        };
        guard(&shared.sockets).extend([c3, s3]);
        // The client side is written by both directions (error replies
        // to held requests): one writer behind a lock.
        let to_client = Arc::new(Mutex::new(c2));
        let (sh_up, sh_down) = (shared.clone(), shared.clone());
        let tc = to_client.clone();
        let up = thread::Builder::new()
            .name(format!("gate-{port}-{n}-up"))
            .spawn(move || pump(client, server, tc, true, sh_up));
        let down = thread::Builder::new()
            .name(format!("gate-{port}-{n}-down"))
            .spawn(move || {
                let sink = match to_client.lock() {
                    Ok(g) => g.try_clone(),
                    Err(e) => e.into_inner().try_clone(),
                };
                if let Ok(sink) = sink {
                    pump(s2, sink, to_client, false, sh_down)
                }
            });
        let mut threads = guard(&shared.threads);
        threads.extend(up.ok());
        threads.extend(down.ok());
    }
}

/// Whether this frame is the one to hold (and bookkeeping for a held
/// reply's request).
fn matches(st: &mut State, m: &message::Message, upward: bool) -> bool {
    match (&st.armed, upward) {
        (Some(Hold::Request(name)), true) if m.method == *name => true,
        (Some(Hold::Reply(name)), true) if m.method == *name && st.reply_to.is_none() => {
            st.reply_to = Some(m.msgid.clone());
            false
        }
        (Some(Hold::Reply(_)), false) => {
            m.method == message::REPLY && st.reply_to.as_ref() == Some(&m.msgid)
        }
        _ => false,
    }
}

/// Copy frames from `from` to `to`; `upward`: client → server. A held
/// frame waits for its release.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    to_client: Arc<Mutex<TcpStream>>,
    upward: bool,
    shared: Arc<Shared>,
) {
    while let Ok(payload) = frame::read_frame(&mut from, frame::DEFAULT_MAX_FRAME) {
        let decoded = message::decode(&payload).ok();
        let fate = match decoded {
            Some(m) => {
                let mut st = guard(&shared.state);
                if matches(&mut st, &m, upward) {
                    st.armed = None;
                    st.fired += 1;
                    st.held = Some(format!(
                        "{} {} (msgid {})",
                        if upward { "request" } else { "reply to" },
                        if upward {
                            m.method.as_str()
                        } else {
                            "the call"
                        },
                        message::short(&m.msgid)
                    ));
                    shared.cv.notify_all();
                    let deadline = Instant::now() + HOLD_LIMIT;
                    while st.release.is_none()
                        && !shared.stop.load(Ordering::SeqCst)
                        && Instant::now() < deadline
                    {
                        st = shared
                            .cv
                            .wait_timeout(st, Duration::from_millis(50))
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                    st.held = None;
                    let r = st.release.take().unwrap_or(Release::Forward);
                    Some((r, m.msgid))
                } else {
                    None
                }
            }
            None => None,
        };
        let ok = match fate {
            None | Some((Release::Forward, _)) => {
                if upward {
                    frame::write_frame(&mut to, &payload).is_ok()
                } else {
                    frame::write_frame(&mut *guard(&to_client), &payload).is_ok()
                }
            }
            Some((Release::Error(e), msgid)) => {
                let reply = message::encode_error(&msgid, &e);
                let mut c = guard(&to_client);
                frame::write_frame(&mut *c, &reply).is_ok() && c.flush().is_ok()
            }
            Some((Release::Cut, _)) => false,
        };
        if !ok {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    let _ = guard(&to_client).shutdown(Shutdown::Both);
}
