//! The Rust ZEO client (`zeoraid::zeo::client`) against stock Python
//! `runzeo` (ZEO 6): `msgpack true`, and its default configuration (pickle).
//!
//! The Python interpreter comes from `ZEORAID_PYTHON` (a virtualenv with
//! ZODB and ZEO installed), else `.venv/bin/python` at the crate root. If
//! neither works these tests fail: they are never skipped silently.
//!
//! Each test starts its own `runzeo` on 127.0.0.1 with a free port and a
//! fresh FileStorage in a temporary directory, and kills it at the end.

use crossbeam_channel::{unbounded, Receiver};
use rmpv::Value;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use zeoraid::storage::{timestamp, Error, Oid, Op, Storage, Tid, Txn, TxnMeta, Vote};
use zeoraid::zeo::client::{encode_ext, Client, ClientOptions, EventHandler, ServerEvent};
use zeoraid::zeo::{frame, message};

mod common;
use common::RunZeo;

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

fn opts(addr: &str) -> ClientOptions {
    ClientOptions {
        call_timeout: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(5),
        ..ClientOptions::new(addr)
    }
}

fn connect(z: &RunZeo) -> Client {
    Client::connect(opts(&z.addr()))
        .unwrap_or_else(|e| panic!("connect to runzeo: {e}\n{}", z.log()))
}

/// A client whose events land in a channel.
fn connect_with_events(addr: &str, o: ClientOptions) -> (Client, Receiver<ServerEvent>) {
    let (tx, rx) = unbounded();
    let handler: EventHandler = Arc::new(move |ev| {
        let _ = tx.send(ev);
    });
    let c = Client::connect_with_handler(
        ClientOptions {
            addr: addr.into(),
            ..o
        },
        Some(handler),
    )
    .expect("connect");
    (c, rx)
}

/// `n` new oids, never oid 0 (the root belongs to Python's DB).
fn fresh_oids(c: &Client, n: usize) -> Vec<Oid> {
    let mut oids: Vec<Oid> = c.new_oids(n + 1).expect("new_oids");
    oids.retain(|o| *o != Oid::ZERO);
    oids.truncate(n);
    assert_eq!(oids.len(), n);
    oids
}

fn meta(user: &str, description: &str, ext: &[(&str, &str)]) -> TxnMeta {
    TxnMeta {
        user: user.as_bytes().to_vec(),
        description: description.as_bytes().to_vec(),
        extension: encode_ext(
            ext.iter()
                .map(|(k, v)| (Value::from(*k), Value::from(*v)))
                .collect(),
        ),
    }
}

fn txn(meta: TxnMeta, ops: Vec<Op>) -> Txn {
    Txn {
        meta,
        tid: None,
        status: b' ',
        ops,
    }
}

fn store(oid: Oid, serial: Tid, data: &[u8]) -> Op {
    Op::Store {
        oid,
        serial,
        data: Arc::from(data),
    }
}

/// Vote and finish; the vote must prepare.
fn commit(c: &Client, t: &Txn) -> Tid {
    match c.tpc_vote(t).expect("vote") {
        Vote::Prepared { invalidated, .. } => {
            for op in &t.ops {
                if let Op::Store { oid, .. } = op {
                    assert!(invalidated.contains(oid));
                }
            }
        }
        Vote::Conflicts(cs) => panic!("unexpected conflicts {cs:?}"),
    }
    c.tpc_finish().expect("finish")
}

struct Committed {
    o1: Oid,
    o2: Oid,
    o3: Oid,
    t1: Tid,
    t2: Tid,
}

/// Two transactions: t1 stores o1, o2; t2 stores o1 again and o3.
fn commit_two(c: &Client) -> Committed {
    let [o1, o2, o3]: [Oid; 3] = fresh_oids(c, 3).try_into().expect("three oids");
    let t1 = commit(
        c,
        &txn(
            meta("alice", "first", &[("note", "hello")]),
            vec![
                store(o1, Tid::ZERO, b"one-v1"),
                store(o2, Tid::ZERO, b"two-v1"),
            ],
        ),
    );
    let t2 = commit(
        c,
        &txn(
            meta("bob", "second", &[]),
            vec![store(o1, t1, b"one-v2"), store(o3, Tid::ZERO, b"three-v1")],
        ),
    );
    assert!(t2 > t1, "{t2} > {t1}");
    Committed { o1, o2, o3, t1, t2 }
}

fn ext_map(ext: &[u8]) -> Value {
    zeoraid::zeo::client::decode_ext(ext).expect("extension decodes")
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// (a) Commit two transactions, read them back with loadBefore, loadSerial,
/// history and undoLog.
#[test]
fn commit_and_load_back() {
    commit_and_load_back_on(RunZeo::start());
}

/// The same over a runzeo with its default configuration (pickle).
#[test]
fn commit_and_load_back_pickle() {
    commit_and_load_back_on(RunZeo::start_pickle_with(true));
}

fn commit_and_load_back_on(z: RunZeo) {
    let c = connect(&z);
    assert!(c.supports_undo(), "FileStorage supports undo");
    assert!(c.name().contains("Data.fs"), "name {:?}", c.name());
    assert_eq!(c.last_transaction().unwrap(), Tid::ZERO);

    let Committed { o1, o2, o3, t1, t2 } = commit_two(&c);
    assert_eq!(c.last_transaction().unwrap(), t2);

    let cur = c.load_before(o1, Tid::MAX).unwrap().expect("o1 exists");
    assert_eq!((&*cur.data, cur.start, cur.end), (&b"one-v2"[..], t2, None));
    let old = c.load_before(o1, t2).unwrap().expect("o1 before t2");
    assert_eq!(
        (&*old.data, old.start, old.end),
        (&b"one-v1"[..], t1, Some(t2))
    );
    assert_eq!(
        c.load_before(o1, t1).unwrap(),
        None,
        "o1 did not exist before t1"
    );
    let two = c.load_before(o2, Tid::MAX).unwrap().expect("o2 exists");
    assert_eq!((&*two.data, two.start), (&b"two-v1"[..], t1));
    assert_eq!(c.load_before(o3, t2).unwrap(), None);
    assert_eq!(&*c.load_serial(o1, t1).unwrap(), b"one-v1");
    assert_eq!(&*c.load_serial(o1, t2).unwrap(), b"one-v2");
    match c.load_before(Oid(0xdead_beef), Tid::MAX) {
        Err(Error::PosKey(oid)) => assert_eq!(oid, Oid(0xdead_beef)),
        other => panic!("expected POSKeyError, got {other:?}"),
    }

    let h = c.history(o1, 10).unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!((h[0].tid, h[1].tid), (t2, t1), "newest first");
    assert_eq!(h[0].meta.user, b"bob");
    assert_eq!(h[1].meta.user, b"alice");
    assert_eq!(h[1].meta.description, b"first");
    assert_eq!(
        ext_map(&h[1].meta.extension),
        Value::Map(vec![(Value::from("note"), Value::from("hello"))])
    );
    assert_eq!(h[1].size, b"one-v1".len() as u64);
    assert_eq!(c.history(o1, 1).unwrap().len(), 1);

    let u = c.undo_log(0, 20).unwrap();
    assert_eq!(u.iter().map(|e| e.tid).collect::<Vec<_>>(), vec![t2, t1]);
    assert_eq!(u[1].meta.description, b"first");
    assert_eq!(
        ext_map(&u[1].meta.extension),
        Value::Map(vec![(Value::from("note"), Value::from("hello"))])
    );

    // The server hands out at most 100 oids per call; the client loops.
    let many = c.new_oids(250).unwrap();
    let mut distinct = many.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 250);

    let size = c.size_info();
    assert_eq!(size.objects, 3);
    assert!(size.bytes > 0);
    c.close();
}

/// (b) The iterator sees exactly the committed transactions and records.
#[test]
fn iterate_transactions_and_records() {
    iterate_transactions_and_records_on(RunZeo::start());
}

/// The same over a runzeo with its default configuration (pickle).
#[test]
fn iterate_transactions_and_records_pickle() {
    iterate_transactions_and_records_on(RunZeo::start_pickle_with(true));
}

fn iterate_transactions_and_records_on(z: RunZeo) {
    let c = connect(&z);
    let Committed { o1, o2, o3, t1, t2 } = commit_two(&c);

    let all: Vec<_> = c
        .iterator(None, None)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!((all[0].tid, all[1].tid), (t1, t2));
    assert_eq!(all[0].status, b' ');
    assert_eq!(all[0].meta.user, b"alice");
    assert_eq!(all[0].meta.description, b"first");
    assert_eq!(
        ext_map(&all[0].meta.extension),
        Value::Map(vec![(Value::from("note"), Value::from("hello"))])
    );
    assert!(all[1].meta.extension.is_empty());
    let recs = |i: usize| {
        all[i]
            .records
            .iter()
            .map(|r| {
                (
                    r.oid,
                    r.tid,
                    r.data.as_deref().map(<[u8]>::to_vec),
                    r.data_txn,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        recs(0),
        vec![
            (o1, t1, Some(b"one-v1".to_vec()), None),
            (o2, t1, Some(b"two-v1".to_vec()), None)
        ]
    );
    assert_eq!(
        recs(1),
        vec![
            (o1, t2, Some(b"one-v2".to_vec()), None),
            (o3, t2, Some(b"three-v1".to_vec()), None)
        ]
    );

    // Ranges are inclusive.
    let from_t2: Vec<Tid> = c
        .iterator(Some(t2), None)
        .unwrap()
        .map(|t| t.unwrap().tid)
        .collect();
    assert_eq!(from_t2, vec![t2]);
    let to_t1: Vec<Tid> = c
        .iterator(None, Some(t1))
        .unwrap()
        .map(|t| t.unwrap().tid)
        .collect();
    assert_eq!(to_t1, vec![t1]);

    // Dropping an iterator early makes the client send iterator_gc; the
    // connection stays healthy.
    {
        let mut it = c.iterator(None, None).unwrap();
        assert_eq!(it.next().unwrap().unwrap().tid, t1);
    }
    assert_eq!(c.last_transaction().unwrap(), t2);

    // record_iternext walks the current records in oid order.
    let mut seen = Vec::new();
    let mut next = None;
    loop {
        let (oid, tid, data, nxt) = c.record_iternext(next).unwrap().expect("a record");
        seen.push((oid, tid, data.to_vec()));
        match nxt {
            Some(n) => next = Some(n),
            None => break,
        }
    }
    let mut want = vec![
        (o1, t2, b"one-v2".to_vec()),
        (o2, t1, b"two-v1".to_vec()),
        (o3, t2, b"three-v1".to_vec()),
    ];
    want.sort();
    assert_eq!(seen, want);
    c.close();
}

/// (c) A commit by a stock Python client reaches our event handler as an
/// invalidation.
#[test]
fn invalidations_from_a_python_client() {
    invalidations_from_a_python_client_on(RunZeo::start());
}

/// The same over a runzeo with its default configuration (pickle).
#[test]
fn invalidations_from_a_python_client_pickle() {
    invalidations_from_a_python_client_on(RunZeo::start_pickle_with(true));
}

fn invalidations_from_a_python_client_on(z: RunZeo) {
    let (c, events) = connect_with_events(&z.addr(), opts(&z.addr()));
    let script = r#"
import sys, ZEO, transaction
db = ZEO.DB(('127.0.0.1', int(sys.argv[1])))
conn = db.open()
root = conn.root()
root['counter'] = root.get('counter', 0) + 1
transaction.commit()
print(root._p_serial.hex(), flush=True)
conn.close()
db.close()
"#;
    let out = Command::new(&z.python)
        .args(["-c", script, &z.port.to_string()])
        .output()
        .expect("run the python client");
    assert!(
        out.status.success(),
        "python client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        z.log()
    );
    let tid_hex = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let tid = Tid(u64::from_str_radix(&tid_hex, 16).expect("python printed a tid"));

    // The DB first commits the root's creation, then our change: wait for
    // the invalidation of exactly that tid.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(ServerEvent::Invalidate { tid: t, oids }) if t == tid => {
                assert_eq!(oids, vec![Oid::ZERO], "the root changed");
                break;
            }
            Ok(_) => {}
            Err(_) => panic!("no invalidation for {tid} within 10 s"),
        }
    }
    assert_eq!(c.last_transaction().unwrap(), tid);
    let root = c.load_before(Oid::ZERO, Tid::MAX).unwrap().expect("root");
    assert_eq!(root.start, tid);

    // Pack (the server collects garbage itself); the root survives.
    c.pack(timestamp::now(), true).expect("pack");
    let root = c.load_before(Oid::ZERO, Tid::MAX).unwrap().expect("root");
    assert_eq!(root.start, tid);
    c.close();
}

/// Undo (FileStorage's undo id in `undoa`) and restore (an explicit tid in
/// `tpc_begin`, `restorea`) travel through the server.
#[test]
fn undo_and_restore() {
    undo_and_restore_on(RunZeo::start());
}

/// The same over a runzeo with its default configuration (pickle).
#[test]
fn undo_and_restore_pickle() {
    undo_and_restore_on(RunZeo::start_pickle_with(true));
}

fn undo_and_restore_on(z: RunZeo) {
    let c = connect(&z);
    let Committed { o1, o3, t1, t2, .. } = commit_two(&c);

    let undo = txn(meta("", "undo t2", &[]), vec![Op::Undo { txn: t2 }]);
    match c.tpc_vote(&undo).expect("vote") {
        Vote::Prepared {
            resolved,
            invalidated,
            ..
        } => {
            let mut want = vec![o1, o3];
            want.sort();
            let mut got = resolved.clone();
            got.sort();
            assert_eq!(got, want, "the server reports the undone oids");
            let mut inv = invalidated.clone();
            inv.sort();
            assert_eq!(inv, want);
        }
        other => panic!("expected a prepared undo, got {other:?}"),
    }
    let t3 = c.tpc_finish().expect("finish");
    assert!(t3 > t2);
    let cur = c.load_before(o1, Tid::MAX).unwrap().expect("o1");
    assert_eq!((&*cur.data, cur.start), (&b"one-v1"[..], t3));
    let undone = c
        .iterator(Some(t3), None)
        .unwrap()
        .next()
        .expect("t3")
        .unwrap();
    let r1 = undone
        .records
        .iter()
        .find(|r| r.oid == o1)
        .expect("o1 in the undo");
    assert_eq!(r1.data.as_deref(), Some(&b"one-v1"[..]));
    assert_eq!(r1.data_txn, Some(t1));
    assert_eq!(c.undo_log(0, 1).unwrap()[0].tid, t3);

    // Restore a record under a tid we choose, as recovery does.
    let [o4]: [Oid; 1] = fresh_oids(&c, 1).try_into().expect("one oid");
    let t4 = timestamp::new_tid(timestamp::now(), t3);
    let restore = Txn {
        meta: meta("copier", "restored", &[("origin", "elsewhere")]),
        tid: Some(t4),
        status: b' ',
        ops: vec![Op::Restore {
            oid: o4,
            serial: t4,
            data: Some(Arc::from(&b"copied"[..])),
            prev_txn: None,
        }],
    };
    match c.tpc_vote(&restore).expect("vote") {
        Vote::Prepared {
            tid, invalidated, ..
        } => {
            assert_eq!(tid, t4, "an explicit tid is known at vote");
            assert_eq!(invalidated, vec![o4]);
        }
        other => panic!("expected a prepared restore, got {other:?}"),
    }
    assert_eq!(c.tpc_finish().expect("finish"), t4);
    let got = c.load_before(o4, Tid::MAX).unwrap().expect("o4");
    assert_eq!((&*got.data, got.start), (&b"copied"[..], t4));
    let h = c.history(o4, 1).unwrap();
    assert_eq!(h[0].meta.user, b"copier");
    assert_eq!(
        ext_map(&h[0].meta.extension),
        Value::Map(vec![(Value::from("origin"), Value::from("elsewhere"))])
    );
    c.close();
}

/// (d) Two commits with the same stale serial: the second vote reports the
/// conflict with the right serials; resolving and voting again works.
#[test]
fn write_conflict_is_reported() {
    write_conflict_is_reported_on(RunZeo::start());
}

/// The same over a runzeo with its default configuration (pickle).
#[test]
fn write_conflict_is_reported_pickle() {
    write_conflict_is_reported_on(RunZeo::start_pickle_with(true));
}

fn write_conflict_is_reported_on(z: RunZeo) {
    let c = connect(&z);
    let [o]: [Oid; 1] = fresh_oids(&c, 1).try_into().expect("one oid");
    let t1 = commit(
        &c,
        &txn(meta("", "create", &[]), vec![store(o, Tid::ZERO, b"v1")]),
    );
    let t2 = commit(
        &c,
        &txn(meta("", "first writer", &[]), vec![store(o, t1, b"v2")]),
    );

    let stale = txn(meta("", "second writer", &[]), vec![store(o, t1, b"v3")]);
    match c.tpc_vote(&stale).expect("vote answers") {
        Vote::Conflicts(cs) => {
            assert_eq!(cs.len(), 1, "{cs:?}");
            assert_eq!((cs[0].oid, cs[0].committed, cs[0].read), (o, t2, t1));
            assert_eq!(&*cs[0].data, b"v3");
        }
        other => panic!("expected conflicts, got {other:?}"),
    }
    // Nothing was committed.
    assert_eq!(c.last_transaction().unwrap(), t2);
    // The caller resolves and votes again with a new transaction.
    let t3 = commit(
        &c,
        &txn(meta("", "resolved", &[]), vec![store(o, t2, b"v2+v3")]),
    );
    assert!(t3 > t2);
    let cur = c.load_before(o, Tid::MAX).unwrap().expect("o");
    assert_eq!((&*cur.data, cur.start), (&b"v2+v3"[..], t3));
    c.close();

    // Without client-side conflict resolution the server raises ConflictError.
    let z = RunZeo::start_with(false);
    let c = connect(&z);
    let [o] = fresh_oids(&c, 1).try_into().expect("one oid");
    let t1 = commit(
        &c,
        &txn(meta("", "create", &[]), vec![store(o, Tid::ZERO, b"v1")]),
    );
    let t2 = commit(&c, &txn(meta("", "first", &[]), vec![store(o, t1, b"v2")]));
    match c.tpc_vote(&txn(meta("", "stale", &[]), vec![store(o, t1, b"v3")])) {
        Err(Error::Conflict {
            oid,
            committed,
            read,
            read_conflict: false,
            ..
        }) => assert_eq!((oid, committed, read), (o, t2, t1)),
        other => panic!("expected ConflictError, got {other:?}"),
    }
    c.tpc_abort();
    let t3 = commit(&c, &txn(meta("", "after", &[]), vec![store(o, t2, b"v4")]));
    assert!(t3 > t2);
    c.close();
}

/// A fake server: accept, send `M5`, then hand the socket to `script`.
fn fake_server(
    script: impl FnOnce(TcpStream) + Send + 'static,
) -> (String, thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let h = thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let _ = frame::write_frame(&mut s, b"M5");
            script(s);
        }
    });
    (addr, h)
}

/// Read until the client hangs up (or 10 s pass).
fn drain(mut s: TcpStream) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = [0u8; 4096];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

/// (e) A server that never answers: calls fail within their deadline.
#[test]
fn silent_server_times_out() {
    let short = |addr: &str| ClientOptions {
        call_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(1),
        ..ClientOptions::new(addr)
    };

    // Silent right after the protocol announcement: `register` times out.
    let (addr, server) = fake_server(drain);
    let started = Instant::now();
    let err = Client::connect(short(&addr)).expect_err("connect must fail");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert!(matches!(err, Error::Disconnected(_)), "{err}");
    assert!(
        err.to_string().contains("register") && err.to_string().contains(&addr),
        "{err}"
    );
    server.join().expect("server thread");

    // Registers fine, then goes silent: each call fails at its deadline,
    // naming the server and the method.
    let (addr, server) = fake_server(|mut s| {
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = frame::read_frame(&mut s, 16); // our "M5"
        for _ in 0..2 {
            let Ok(f) = frame::read_frame(&mut s, 1 << 20) else {
                return;
            };
            let Ok(m) = message::decode(&f) else { return };
            let reply = match m.method.as_str() {
                "register" => message::tid_value(Tid(1)),
                _ => Value::Map(vec![]),
            };
            let _ = frame::write_frame(&mut s, &message::encode_reply(&m.msgid, &reply));
        }
        drain(s);
    });
    let c = Client::connect(short(&addr)).expect("connect");
    for _ in 0..2 {
        let started = Instant::now();
        let err = c.call("lastTransaction", vec![]).expect_err("no answer");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "took {took:?}"
        );
        let msg = err.to_string();
        assert!(matches!(err, Error::Disconnected(_)), "{msg}");
        assert!(
            msg.contains("lastTransaction") && msg.contains(&addr),
            "{msg}"
        );
    }
    let started = Instant::now();
    assert!(c.load_before(Oid(1), Tid::MAX).is_err());
    assert!(started.elapsed() < Duration::from_secs(3));
    c.close();
    server.join().expect("server thread");
}

/// A server restart: the client reports the disconnect, reconnects with
/// backoff, and a transaction voted before the restart fails instead of
/// being half-committed.
#[test]
fn reconnects_after_a_server_restart() {
    let mut z = RunZeo::start();
    let (c, events) = connect_with_events(
        &z.addr(),
        ClientOptions {
            call_timeout: Duration::from_secs(20),
            ..opts(&z.addr())
        },
    );
    let [o] = fresh_oids(&c, 1).try_into().expect("one oid");
    let t1 = commit(
        &c,
        &txn(meta("", "before", &[]), vec![store(o, Tid::ZERO, b"v1")]),
    );

    // Vote a transaction, then lose the server before tpc_finish.
    let pending = txn(meta("", "in flight", &[]), vec![store(o, t1, b"lost")]);
    assert!(matches!(
        c.tpc_vote(&pending).unwrap(),
        Vote::Prepared { .. }
    ));
    z.restart();

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut saw_disconnect = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(ServerEvent::Disconnected(reason)) => {
                assert!(reason.contains(&z.addr()), "{reason}");
                saw_disconnect = true;
            }
            Ok(ServerEvent::Connected { last_tid }) => {
                assert!(saw_disconnect, "Disconnected comes first");
                // FileStorage reports the tid of a truncated, never committed
                // transaction as its last tid after a crash: only >= holds.
                assert!(last_tid >= t1, "{last_tid} >= {t1}");
                break;
            }
            Ok(_) => {}
            Err(_) => panic!("no reconnection within 30 s:\n{}", z.log()),
        }
    }
    assert!(c.is_connected());
    match c.tpc_finish() {
        Err(Error::Disconnected(_)) => {}
        other => panic!("a transaction across a reconnect must fail, got {other:?}"),
    }
    c.tpc_abort();
    // Nothing of the voted transaction survived.
    let cur = c.load_before(o, Tid::MAX).unwrap().expect("o");
    assert_eq!((&*cur.data, cur.start), (&b"v1"[..], t1));
    assert_eq!(c.history(o, 10).unwrap().len(), 1);
    assert_eq!(c.iterator(None, None).unwrap().count(), 1);

    // The new connection commits normally.
    let t2 = commit(&c, &txn(meta("", "after", &[]), vec![store(o, t1, b"v2")]));
    assert!(t2 > t1);

    // A call made right after another restart waits for the reconnection
    // (the client may still be backing off) instead of failing.
    z.restart();
    assert_eq!(c.last_transaction().unwrap(), t2);
    c.close();
}

/// `zeoraid bench`'s load phase (its own pipelined connections, not the
/// client) against a default-config runzeo: it speaks the pickle flavour
/// the server announces instead of refusing it (it used to insist on
/// msgpack), and each load is answered. (`zeoraid bench` is the `bench`
/// feature's.)
#[cfg(feature = "bench")]
#[test]
fn bench_load_phase_pickle() {
    let z = RunZeo::start_pickle_with(true);
    let addr = z.addr();
    let c = zeoraid::bench::commit_phase(addr.as_str(), "1", 2, Duration::from_millis(300), 1, 64)
        .unwrap_or_else(|e| panic!("commit phase: {e}\n{}", z.log()));
    assert!(!c.written.is_empty(), "commits were made");
    let l = zeoraid::bench::load_phase(
        addr.as_str(),
        "1",
        2,
        Duration::from_millis(300),
        4,
        &c.written,
    )
    .unwrap_or_else(|e| panic!("load phase: {e}\n{}", z.log()));
    assert!(l.per_second > 0.0, "loads were answered");
}
