//! The server against raw sockets: handshake, ruok, bad input, the commit
//! lock across connections, a client vanishing mid-transaction, a panicking
//! storage. Each test starts its own in-process server on a free port.

use rmpv::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;
use zeoraid::server::{Options, Server};
use zeoraid::storage::memory::MemoryStorage;
use zeoraid::storage::*;
use zeoraid::zeo::frame::{read_frame, write_frame};
use zeoraid::zeo::message::{self, bin, Message};

fn start_with(storage: Arc<dyn Storage>) -> Server {
    start_opts(storage, None)
}

fn start_opts(storage: Arc<dyn Storage>, transaction_timeout: Option<Duration>) -> Server {
    Server::start(
        Options {
            listen: "127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
            workers: 4,
            max_frame: 1 << 20,
            invalidation_queue_size: 10,
            transaction_timeout,
            conflict_resolver: None,
            tls: None,
            socket_mode: None,
            max_blob_size: None,
        },
        vec![("1".into(), storage, false)],
    )
    .expect("server starts")
}

fn start() -> Server {
    start_with(Arc::new(MemoryStorage::new("1", false)))
}

struct Raw {
    s: TcpStream,
    next: i64,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let hello = read_frame(&mut s, 1 << 20).expect("server hello");
        assert_eq!(hello, b"M5");
        write_frame(&mut s, b"M5").unwrap();
        Raw { s, next: 1 }
    }

    fn registered(addr: SocketAddr) -> Raw {
        let mut r = Raw::connect(addr);
        r.call("register", vec![Value::from("1"), Value::Boolean(false)])
            .expect("register");
        r
    }

    fn send(&mut self, msgid: i64, flags: u8, method: &str, args: Vec<Value>) {
        let payload = message::encode(msgid, flags, method, &Value::Array(args));
        write_frame(&mut self.s, &payload).unwrap();
    }

    /// Next reply, skipping server-initiated one-way calls (collected).
    fn reply(
        &mut self,
        msgid: i64,
        oneways: &mut Vec<Message>,
    ) -> std::result::Result<Value, Error> {
        loop {
            let f = read_frame(&mut self.s, 1 << 24).expect("reply frame");
            let m = message::decode(&f).expect("decodes");
            if m.method != message::REPLY {
                oneways.push(m);
                continue;
            }
            assert_eq!(m.msgid_i64(), Some(msgid));
            return if m.flags == message::FLAG_ERROR {
                Err(message::error_from_wire(&m.args))
            } else {
                Ok(m.args)
            };
        }
    }

    fn call(&mut self, method: &str, args: Vec<Value>) -> std::result::Result<Value, Error> {
        let id = self.next;
        self.next += 1;
        self.send(id, 0, method, args);
        self.reply(id, &mut Vec::new())
    }

    fn oneway(&mut self, method: &str, args: Vec<Value>) {
        self.send(0, 1, method, args);
    }

    /// True when the server closed the connection.
    fn closed(&mut self) -> bool {
        self.s
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 64];
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => {
                    return e.kind() == std::io::ErrorKind::ConnectionReset;
                }
            }
        }
    }
}

fn oid(n: u64) -> Value {
    bin(&n.to_be_bytes())
}

fn begin_store(r: &mut Raw, txn: i64, stores: &[(u64, Tid, &[u8])]) {
    r.oneway(
        "tpc_begin",
        vec![
            Value::from(txn),
            bin(b"user"),
            bin(b"desc"),
            Value::Map(vec![]),
            Value::Nil,
            Value::from(" "),
        ],
    );
    for (o, serial, data) in stores {
        r.oneway(
            "storea",
            vec![
                oid(*o),
                bin(&serial.to_bytes()),
                bin(data),
                Value::from(txn),
            ],
        );
    }
}

fn commit(r: &mut Raw, txn: i64, stores: &[(u64, Tid, &[u8])]) -> Tid {
    begin_store(r, txn, stores);
    r.call("vote", vec![Value::from(txn)]).expect("vote");
    let tid = r
        .call("tpc_finish", vec![Value::from(txn)])
        .expect("finish");
    Tid::from_slice(tid.as_slice().expect("tid bytes")).expect("8 bytes")
}

#[test]
fn ruok_answers_json_and_closes() {
    let server = start();
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(read_frame(&mut s, 1 << 20).unwrap(), b"M5");
    write_frame(&mut s, b"ruok").unwrap();
    let status = read_frame(&mut s, 1 << 20).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&status).expect("JSON status");
    assert!(json.get("1").is_some(), "{json}");
    let mut buf = [0u8; 8];
    assert_eq!(
        s.read(&mut buf).unwrap_or(0),
        0,
        "connection closed after ruok"
    );
}

#[test]
fn commit_load_and_invalidate_other_clients_once() {
    let server = start();
    let mut a = Raw::registered(server.local_addr());
    let mut b = Raw::registered(server.local_addr());
    let tid = commit(&mut a, 1, &[(1, Tid::ZERO, b"hello")]);
    let loaded = a
        .call("loadBefore", vec![oid(1), bin(&[0xff; 8])])
        .expect("load");
    assert_eq!(
        loaded,
        Value::Array(vec![bin(b"hello"), bin(&tid.to_bytes()), Value::Nil])
    );
    // b receives exactly one invalidation for tid; a receives none (only `info`).
    let mut b_oneways = Vec::new();
    b.send(99, 0, "ping", vec![]);
    b.reply(99, &mut b_oneways).expect("ping");
    let inv: Vec<_> = b_oneways
        .iter()
        .filter(|m| m.method == "invalidateTransaction")
        .collect();
    assert_eq!(inv.len(), 1, "{b_oneways:?}");
    assert_eq!(
        inv[0].args,
        Value::Array(vec![bin(&tid.to_bytes()), Value::Array(vec![oid(1)])])
    );
    let mut a_oneways = Vec::new();
    a.send(98, 0, "ping", vec![]);
    a.reply(98, &mut a_oneways).expect("ping");
    assert!(a_oneways
        .iter()
        .all(|m| m.method != "invalidateTransaction"));
    // getInvalidations: a tid older than the remembered window gets None
    // (the client must drop its cache); the newest tid gets no oids.
    let inv = b
        .call("getInvalidations", vec![bin(&[0; 8])])
        .expect("getInvalidations");
    assert_eq!(inv, Value::Nil);
    let t2 = commit(&mut a, 2, &[(1, tid, b"again")]);
    let inv = b
        .call("getInvalidations", vec![bin(&tid.to_bytes())])
        .expect("getInvalidations");
    assert_eq!(
        inv,
        Value::Array(vec![bin(&t2.to_bytes()), Value::Array(vec![oid(1)])])
    );
}

#[test]
fn conflicts_are_returned_from_vote_for_client_resolution() {
    let server = start();
    let mut a = Raw::registered(server.local_addr());
    let t1 = commit(&mut a, 1, &[(1, Tid::ZERO, b"v1")]);
    let _t2 = commit(&mut a, 2, &[(1, t1, b"v2")]);
    // A stale serial: vote answers a conflict dict instead of raising.
    begin_store(&mut a, 3, &[(1, t1, b"v3")]);
    let v = a.call("vote", vec![Value::from(3)]).expect("vote");
    let Value::Array(items) = v else {
        panic!("{v}")
    };
    assert_eq!(items.len(), 1);
    let Value::Map(m) = &items[0] else {
        panic!("{v:?}", v = items[0])
    };
    let keys: Vec<_> = m.iter().filter_map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, vec!["oid", "serials", "data"]);
    a.call("tpc_abort", vec![Value::from(3)]).expect("abort");
}

#[test]
fn oversize_frame_closes_only_that_connection() {
    let server = start();
    let mut good = Raw::registered(server.local_addr());
    let mut bad = Raw::connect(server.local_addr());
    bad.s.write_all(&(64u32 << 20).to_be_bytes()).unwrap();
    assert!(bad.closed());
    good.call("ping", vec![]).expect("other clients unaffected");
}

#[test]
fn malformed_msgpack_closes_the_connection() {
    let server = start();
    let mut bad = Raw::connect(server.local_addr());
    write_frame(&mut bad.s, &[0xc1, 0x00, 0x01]).unwrap();
    assert!(bad.closed());
    let mut good = Raw::registered(server.local_addr());
    good.call("ping", vec![]).expect("server lives");
}

#[test]
fn bad_handshake_closes() {
    let server = start();
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    read_frame(&mut s, 1 << 20).unwrap();
    write_frame(&mut s, b"Z4").unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0);
}

#[test]
fn unknown_method_and_wrong_arity_get_error_replies() {
    let server = start();
    let mut r = Raw::registered(server.local_addr());
    match r.call("frobnicate", vec![]) {
        Err(Error::Remote { class, message }) => {
            assert_eq!(class, "builtins.AttributeError");
            assert!(message.contains("frobnicate"));
        }
        other => panic!("{other:?}"),
    }
    match r.call("loadBefore", vec![oid(1)]) {
        Err(Error::Remote { class, .. }) => assert_eq!(class, "builtins.TypeError"),
        other => panic!("{other:?}"),
    }
    match r.call("loadBefore", vec![Value::from(5), bin(&[0xff; 8])]) {
        Err(Error::Value(m)) => assert!(m.contains("oid"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Connection still usable.
    r.call("ping", vec![]).expect("ping");
    // A one-way call that cannot be dispatched closes the connection, as ZEO does.
    r.oneway("frobnicate", vec![]);
    assert!(r.closed());
}

#[test]
fn unknown_oid_is_poskeyerror() {
    let server = start();
    let mut r = Raw::registered(server.local_addr());
    assert_eq!(
        r.call("loadBefore", vec![oid(42), bin(&[0xff; 8])]),
        Err(Error::PosKey(Oid(42)))
    );
}

#[test]
fn read_only_connection_refuses_writes() {
    let server = start();
    let mut r = Raw::connect(server.local_addr());
    r.call("register", vec![Value::from("1"), Value::Boolean(true)])
        .expect("register read-only");
    assert_eq!(r.call("new_oids", vec![]), Err(Error::ReadOnly));
    assert_eq!(
        r.call("register", vec![Value::from("1"), Value::Boolean(true)]),
        Err(Error::Value("duplicate register() call".into()))
    );
}

#[test]
fn unknown_storage_is_refused() {
    let server = start();
    let mut r = Raw::connect(server.local_addr());
    assert_eq!(
        r.call("register", vec![Value::from("nope"), Value::Boolean(false)]),
        Err(Error::Value("unknown storage: nope".into()))
    );
}

#[test]
fn parked_vote_resumes_when_the_lock_frees() {
    let server = start();
    let mut a = Raw::registered(server.local_addr());
    let mut b = Raw::registered(server.local_addr());
    begin_store(&mut a, 1, &[(1, Tid::ZERO, b"a")]);
    a.call("vote", vec![Value::from(1)])
        .expect("a votes, holds the lock");
    begin_store(&mut b, 7, &[(2, Tid::ZERO, b"b")]);
    b.send(50, 0, "vote", vec![Value::from(7)]);
    // b's vote is parked; b's loads still run meanwhile.
    b.send(51, 0, "lastTransaction", vec![]);
    b.reply(51, &mut Vec::new())
        .expect("loads are not blocked by a parked vote");
    a.call("tpc_finish", vec![Value::from(1)]).expect("finish");
    b.reply(50, &mut Vec::new()).expect("b's vote resumed");
    b.call("tpc_finish", vec![Value::from(7)])
        .expect("b finishes");
}

#[test]
fn client_gone_mid_transaction_releases_the_lock() {
    let server = start();
    {
        let mut a = Raw::registered(server.local_addr());
        begin_store(&mut a, 1, &[(1, Tid::ZERO, b"a")]);
        a.call("vote", vec![Value::from(1)]).expect("vote");
        // dropped while holding the commit lock
    }
    let mut b = Raw::registered(server.local_addr());
    let tid = commit(&mut b, 2, &[(2, Tid::ZERO, b"b")]);
    assert!(tid > Tid::ZERO);
    assert_eq!(
        b.call("loadBefore", vec![oid(1), bin(&[0xff; 8])]),
        Err(Error::PosKey(Oid(1))),
        "the abandoned transaction left nothing behind"
    );
}

/// A storage that panics on one oid, to prove the server survives.
struct Panicky(MemoryStorage);

impl Storage for Panicky {
    fn name(&self) -> String {
        self.0.name()
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn supports_undo(&self) -> bool {
        true
    }
    fn last_transaction(&self) -> Result<Tid> {
        self.0.last_transaction()
    }
    fn load_before(&self, oid: Oid, before: Tid) -> Result<Option<Loaded>> {
        if oid == Oid(0xdead) {
            panic!("deliberate test panic");
        }
        self.0.load_before(oid, before)
    }
    fn load_serial(&self, oid: Oid, serial: Tid) -> Result<Data> {
        self.0.load_serial(oid, serial)
    }
    fn history(&self, oid: Oid, size: usize) -> Result<Vec<HistoryEntry>> {
        self.0.history(oid, size)
    }
    fn new_oids(&self, n: usize) -> Result<Vec<Oid>> {
        self.0.new_oids(n)
    }
    fn tpc_vote(&self, txn: &Txn) -> Result<Vote> {
        self.0.tpc_vote(txn)
    }
    fn tpc_finish(&self) -> Result<Tid> {
        self.0.tpc_finish()
    }
    fn tpc_abort(&self) {
        self.0.tpc_abort()
    }
    fn undo_log(&self, first: usize, last: usize) -> Result<Vec<UndoEntry>> {
        self.0.undo_log(first, last)
    }
    fn iterator(&self, start: Option<Tid>, stop: Option<Tid>) -> Result<TxnIter> {
        self.0.iterator(start, stop)
    }
    fn record_iternext(&self, next: Option<Oid>) -> Result<Option<CurrentRecord>> {
        self.0.record_iternext(next)
    }
    fn pack(&self, t: f64, gc: bool) -> Result<()> {
        self.0.pack(t, gc)
    }
    fn size_info(&self) -> SizeInfo {
        self.0.size_info()
    }
}

#[test]
fn a_panicking_request_gets_an_error_and_the_server_lives() {
    let server = start_with(Arc::new(Panicky(MemoryStorage::new("1", false))));
    let mut r = Raw::registered(server.local_addr());
    match r.call("loadBefore", vec![oid(0xdead), bin(&[0xff; 8])]) {
        Err(Error::Remote { class, message }) => {
            assert_eq!(class, "ZODB.POSException.StorageError");
            assert!(message.contains("internal error"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    r.call("ping", vec![])
        .expect("same connection still served");
    let mut other = Raw::registered(server.local_addr());
    other.call("ping", vec![]).expect("new connections served");
}

#[test]
fn graceful_shutdown_joins_and_closes_clients() {
    let server = start();
    let mut r = Raw::registered(server.local_addr());
    begin_store(&mut r, 1, &[(1, Tid::ZERO, b"x")]);
    server.shutdown();
    assert!(r.closed());
}

#[test]
fn a_client_stalled_after_vote_is_cut_off_by_the_transaction_timeout() {
    let server = start_opts(
        Arc::new(MemoryStorage::new("1", false)),
        Some(Duration::from_millis(300)),
    );
    let mut a = Raw::registered(server.local_addr());
    begin_store(&mut a, 1, &[(1, Tid::ZERO, b"stalled")]);
    a.call("vote", vec![Value::from(1)])
        .expect("a votes and then stalls");
    // b's vote waits for the lock until the watchdog closes a's connection.
    let mut b = Raw::registered(server.local_addr());
    let started = std::time::Instant::now();
    let tid = commit(&mut b, 7, &[(2, Tid::ZERO, b"b")]);
    assert!(tid > Tid::ZERO);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(a.closed(), "the stalled client was disconnected");
    assert_eq!(
        b.call("loadBefore", vec![oid(1), bin(&[0xff; 8])]),
        Err(Error::PosKey(Oid(1))),
        "the stalled transaction was aborted"
    );
}

/// Two clients, a committed object 1 at `t1` changed again at `t2`, and
/// client `a` with a transaction (id 3) that stored over the stale `t1`.
fn conflicted_vote(a: &mut Raw) -> (Tid, Tid) {
    let t1 = commit(a, 1, &[(1, Tid::ZERO, b"v1")]);
    let t2 = commit(a, 2, &[(1, t1, b"v2")]);
    begin_store(a, 3, &[(1, t1, b"v3")]);
    let v = a.call("vote", vec![Value::from(3)]).expect("vote");
    assert!(
        matches!(&v, Value::Array(items) if items.len() == 1 && matches!(items[0], Value::Map(_))),
        "one conflict dict: {v}"
    );
    (t1, t2)
}

#[test]
fn a_vote_that_answers_conflicts_keeps_the_lock_until_the_re_vote() {
    let server = start();
    let mut a = Raw::registered(server.local_addr());
    let mut b = Raw::registered(server.local_addr());
    let (_, t2) = conflicted_vote(&mut a);
    // b wants to change object 1 too: its vote must wait while a resolves.
    begin_store(&mut b, 7, &[(1, t2, b"b")]);
    b.send(50, 0, "vote", vec![Value::from(7)]);
    b.send(51, 0, "lastTransaction", vec![]);
    let last = b.reply(51, &mut Vec::new()).expect("reads go on");
    assert_eq!(
        last.as_slice(),
        Some(&t2.to_bytes()[..]),
        "b's vote is parked"
    );
    // a re-stores its resolution over t2 and votes again: no new conflict.
    a.oneway(
        "storea",
        vec![
            oid(1),
            bin(&t2.to_bytes()),
            bin(b"resolved"),
            Value::from(3),
        ],
    );
    let v = a.call("vote", vec![Value::from(3)]).expect("re-vote");
    assert!(
        matches!(&v, Value::Array(items) if items.iter().all(|i| !matches!(i, Value::Map(_)))),
        "the re-vote prepares: {v}"
    );
    let t3 = a.call("tpc_finish", vec![Value::from(3)]).expect("finish");
    // Now b's vote runs, and b (which read t2) gets the conflict with t3.
    let v = b.reply(50, &mut Vec::new()).expect("b's vote resumed");
    let Value::Array(items) = &v else {
        panic!("{v}")
    };
    let Value::Map(m) = &items[0] else {
        panic!("b conflicts with a's commit: {v}")
    };
    let serials = m.iter().find(|(k, _)| k.as_str() == Some("serials"));
    let committed = serials.and_then(|(_, s)| s.as_array()?.first()?.as_slice());
    assert_eq!(committed, t3.as_slice());
    b.call("tpc_abort", vec![Value::from(7)]).expect("abort");
}

#[test]
fn an_abort_after_conflicts_passes_the_lock_on() {
    let server = start();
    let mut a = Raw::registered(server.local_addr());
    let mut b = Raw::registered(server.local_addr());
    conflicted_vote(&mut a);
    begin_store(&mut b, 7, &[(2, Tid::ZERO, b"b")]);
    b.send(50, 0, "vote", vec![Value::from(7)]);
    a.call("tpc_abort", vec![Value::from(3)]).expect("abort");
    b.reply(50, &mut Vec::new()).expect("b's vote resumed");
    b.call("tpc_finish", vec![Value::from(7)])
        .expect("b finishes");
}

#[test]
fn a_disconnect_after_conflicts_passes_the_lock_on() {
    let server = start();
    let mut a = Raw::registered(server.local_addr());
    let mut b = Raw::registered(server.local_addr());
    conflicted_vote(&mut a);
    begin_store(&mut b, 7, &[(2, Tid::ZERO, b"b")]);
    b.send(50, 0, "vote", vec![Value::from(7)]);
    drop(a);
    b.reply(50, &mut Vec::new()).expect("b's vote resumed");
    b.call("tpc_finish", vec![Value::from(7)])
        .expect("b finishes");
}

#[test]
fn finishing_after_unresolved_conflicts_is_a_conflict_error() {
    let server = start();
    let mut a = Raw::registered(server.local_addr());
    let mut b = Raw::registered(server.local_addr());
    let (t1, t2) = conflicted_vote(&mut a);
    begin_store(&mut b, 7, &[(2, Tid::ZERO, b"b")]);
    b.send(50, 0, "vote", vec![Value::from(7)]);
    // ZEO 6's ClientStorage gives up after nine conflicting votes and
    // calls tpc_finish anyway: that must be a ConflictError naming the
    // object (applications retry those), and the lock must pass on.
    match a.call("tpc_finish", vec![Value::from(3)]) {
        Err(Error::Conflict {
            oid,
            committed,
            read,
            read_conflict: false,
            ..
        }) => assert_eq!((oid, committed, read), (Oid(1), t2, t1)),
        other => panic!("expected ConflictError, got {other:?}"),
    }
    b.reply(50, &mut Vec::new()).expect("b's vote resumed");
    b.call("tpc_finish", vec![Value::from(7)])
        .expect("b finishes");
    a.call("tpc_abort", vec![Value::from(3)])
        .expect("the client's abort after the failed finish is harmless");
    let loaded = a
        .call("loadBefore", vec![oid(1), bin(&[0xff; 8])])
        .expect("load");
    let data = loaded.as_array().and_then(|l| l[0].as_slice());
    assert_eq!(
        data,
        Some(&b"v2"[..]),
        "the conflicting store was not committed"
    );
}

#[test]
fn a_client_stalled_in_conflict_resolution_is_cut_off_by_the_transaction_timeout() {
    let server = start_opts(
        Arc::new(MemoryStorage::new("1", false)),
        Some(Duration::from_millis(300)),
    );
    let mut a = Raw::registered(server.local_addr());
    conflicted_vote(&mut a);
    let mut b = Raw::registered(server.local_addr());
    let started = std::time::Instant::now();
    commit(&mut b, 7, &[(2, Tid::ZERO, b"b")]);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(a.closed(), "the stalled client was disconnected");
}

/// Merges by concatenating the committed and the new state.
struct Concat;
impl zeoraid::storage::resolve::ConflictResolver for Concat {
    fn resolve(
        &self,
        _oid: Oid,
        old: &Data,
        committed: &Data,
        new: &Data,
    ) -> std::result::Result<Data, String> {
        if new.starts_with(b"unmergeable") {
            return Err("cannot merge".into());
        }
        let mut merged = committed.to_vec();
        merged.extend_from_slice(b"+");
        merged.extend_from_slice(new);
        merged.extend_from_slice(b"/");
        merged.extend_from_slice(old);
        Ok(merged.into())
    }
}

#[test]
fn with_a_resolver_conflicts_are_merged_on_the_server() {
    let server = Server::start(
        Options {
            listen: "127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
            workers: 4,
            max_frame: 1 << 20,
            invalidation_queue_size: 10,
            transaction_timeout: None,
            conflict_resolver: Some(Arc::new(Concat)),
            tls: None,
            socket_mode: None,
            max_blob_size: None,
        },
        vec![("1".into(), Arc::new(MemoryStorage::new("1", false)), false)],
    )
    .expect("server starts");
    let mut a = Raw::registered(server.local_addr());
    let t1 = commit(&mut a, 1, &[(1, Tid::ZERO, b"v1"), (2, Tid::ZERO, b"w1")]);
    let _t2 = commit(&mut a, 2, &[(1, t1, b"v2"), (2, t1, b"w2")]);
    // Object 1 merges on the server; the client never sees its conflict.
    begin_store(&mut a, 3, &[(1, t1, b"v3")]);
    let v = a.call("vote", vec![Value::from(3)]).expect("vote");
    assert_eq!(
        v,
        Value::Array(vec![oid(1)]),
        "the vote names the server-resolved oid, so the client does not cache its own state"
    );
    a.call("tpc_finish", vec![Value::from(3)]).expect("finish");
    let loaded = a
        .call("loadBefore", vec![oid(1), bin(&[0xff; 8])])
        .expect("load");
    let data = loaded.as_array().and_then(|l| l[0].as_slice());
    assert_eq!(data, Some(&b"v2+v3/v1"[..]));
    // A merge that fails falls back to the client.
    begin_store(&mut a, 4, &[(2, t1, b"unmergeable")]);
    let v = a.call("vote", vec![Value::from(4)]).expect("vote");
    assert!(
        matches!(&v, Value::Array(items) if items.len() == 1 && matches!(items[0], Value::Map(_))),
        "the unmergeable conflict goes to the client: {v}"
    );
    a.call("tpc_abort", vec![Value::from(4)]).expect("abort");
}

#[test]
fn a_second_vote_for_a_voted_transaction_is_refused() {
    let server = start();
    let mut a = Raw::registered(server.local_addr());
    begin_store(&mut a, 1, &[(1, Tid::ZERO, b"v")]);
    a.call("vote", vec![Value::from(1)]).expect("vote");
    match a.call("vote", vec![Value::from(1)]) {
        Err(Error::Transaction(m)) => assert!(m.contains("twice"), "{m}"),
        other => panic!("expected StorageTransactionError, got {other:?}"),
    }
    a.call("tpc_finish", vec![Value::from(1)])
        .expect("the first vote still stands");
}
