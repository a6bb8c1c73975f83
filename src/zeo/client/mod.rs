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
//!
//! # Modules
//!
//! This file holds the public [`Client`], [`ClientOptions`] and
//! [`ServerEvent`]; the rest lives in private submodules, their public
//! functions re-exported here:
//!
//! - `conn`: one established connection — whole frames written under the
//!   writer lock (`OutFrame`, `write_frames`), the reply slots by msgid,
//!   synchronous and one-way calls, heartbeats, and killing the connection;
//! - `connect`: establishing a connection — TCP connect, the protocol
//!   announcement ([`check_protocol`]), the `register`/`get_info` handshake;
//! - `link`: the state callers and the reader thread share (`Inner`): the
//!   current connection or why there is none, waiting for a reconnection,
//!   routing frames from the server, the reader thread itself, and
//!   reconnection with [`backoff_delay`];
//! - `reply`: server replies parsed into the storage value types
//!   ([`parse_vote`], [`parse_history`], ...) and the msgpack form of
//!   transaction extensions ([`encode_ext`], [`decode_ext`]);
//! - `storage`: `impl Storage for Client`, including `tpc_vote`, and the
//!   remote transaction iterator.
//!
//! [`storage::Error`]: crate::storage::Error
//! [`message::error_from_wire`]: crate::zeo::message::error_from_wire
//! [`Storage`]: crate::storage::Storage

mod blobs;
mod conn;
mod connect;
mod link;
mod reply;
mod ship;
mod storage;
pub(crate) mod wire;

pub use connect::check_protocol;
pub use link::backoff_delay;
pub use reply::{
    decode_ext, encode_ext, parse_data_record, parse_history, parse_invalidation, parse_loaded,
    parse_oids, parse_record_iternext, parse_size_info, parse_txn_header, parse_undo_log,
    parse_vote, CurrentRecord,
};
pub use ship::Shipped;

use crate::locks::{lock, write};
use crate::storage::{Error, Oid, Tid};
use crate::zeo::frame;
use link::{reader_main, Inner, Link};
use rmpv::Value;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

type Result<T> = crate::storage::Result<T>;

/// Receives what the server tells the client unasked.
pub type EventHandler = Arc<dyn Fn(ServerEvent) + Send + Sync>;

/// Connection parameters.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `host:port` of the ZEO server, or its Unix socket path.
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
    /// TLS to the server (its files are read at every connect, so renewed
    /// certificates are used from the next reconnection); `None`: plaintext.
    pub tls: Option<crate::net::tls::ClientFiles>,
    /// The client's blob cache (ZODB's directory layout; created when
    /// missing): loaded blobs are kept there and uploads staged in its
    /// `tmp/`. `None`: blob calls are refused.
    pub blob_dir: Option<std::path::PathBuf>,
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
            tls: None,
            blob_dir: None,
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

// ---------------------------------------------------------------------------
// The public client.
// ---------------------------------------------------------------------------

/// A blocking, multiplexed ZEO 5 client. Share it (e.g. in an `Arc`); every
/// method takes `&self`. It is a [`crate::storage::Storage`], so a remote
/// ZEO server (Python `runzeo` or zeoraid) is used like a local storage;
/// it reconnects by itself and every call has a deadline
/// ([`ClientOptions::call_timeout`]).
///
/// ```
/// use zeoraid::config::{Config, StorageConfig};
/// use zeoraid::storage::{commit, load, Op, Storage, Tid, Txn};
/// use zeoraid::zeo::client::{Client, ClientOptions};
///
/// # let mut cfg = Config::default();
/// # cfg.server.listen = "127.0.0.1:0".into();
/// # cfg.storage.push(StorageConfig::memory("1"));
/// # let server = zeoraid::Zeoraid::start(&cfg).unwrap();
/// # let addr = server.local_addr().to_string();
/// // addr: "host:port" of a ZEO server, or its Unix socket path.
/// let client = Client::connect(ClientOptions::new(addr)).expect("connected");
/// let oid = client.new_oids(1).unwrap()[0];
/// let data = b"over the wire".to_vec().into();
/// let tid = commit(&client, &Txn::new(vec![Op::Store { oid, serial: Tid::ZERO, data }])).unwrap();
/// assert_eq!(load(&client, oid).unwrap().start, tid);
/// client.close();
/// # server.shutdown();
/// ```
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
        let blob_cache = match &opts.blob_dir {
            None => None,
            Some(d) => Some(
                crate::storage::blobdir::BlobDir::open(d, true)
                    .map_err(|e| Error::Io(format!("the client's blob cache: {e}")))?,
            ),
        };
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
            downloads: blobs::Downloads::default(),
            blob_cache,
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
}

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Storage;
    use crate::zeo::message::{self, Message, REPLY};
    use std::net::{Shutdown, TcpListener, TcpStream};

    pub(super) fn s(x: &str) -> Value {
        Value::from(x)
    }
    pub(super) fn map(e: Vec<(&str, Value)>) -> Value {
        Value::Map(e.into_iter().map(|(k, v)| (s(k), v)).collect())
    }
    pub(super) fn oidv(n: u64) -> Value {
        message::oid_value(Oid(n))
    }
    pub(super) fn tidv(n: u64) -> Value {
        message::tid_value(Tid(n))
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
    fn pickle_servers_are_spoken_to_in_pickle() {
        use crate::zeo::pickle;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let h = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            send(&mut s, b"Z5");
            assert_eq!(frame::read_frame(&mut s, 1 << 20).unwrap(), b"Z5");
            loop {
                let Ok(f) = frame::read_frame(&mut s, 1 << 20) else {
                    return;
                };
                let m = pickle::decode(&f).expect("the client pickles");
                let reply = match m.method.as_str() {
                    "register" => pickle::encode(&m.msgid, 0, REPLY, &tidv(42)),
                    "get_info" => pickle::encode(&m.msgid, 0, REPLY, &map(vec![])),
                    "echo" => pickle::encode(&m.msgid, 0, REPLY, &m.args),
                    _ => pickle::encode(
                        &m.msgid,
                        2,
                        REPLY,
                        &Value::Array(vec![
                            s_("ZODB.POSException.POSKeyError"),
                            Value::Array(vec![oidv(5)]),
                        ]),
                    ),
                };
                send(&mut s, &reply);
            }
        });
        let c = Client::connect(quick(&addr)).expect("connects to a pickle server");
        assert_eq!(c.registered_last_tid(), Tid(42));
        let args = vec![oidv(1), s_("x"), Value::from(7)];
        assert_eq!(c.call("echo", args.clone()).unwrap(), Value::Array(args));
        assert_eq!(c.call("nope", vec![]).unwrap_err(), Error::PosKey(Oid(5)));
        c.close();
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
