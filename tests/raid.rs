//! The RAID array end to end: an in-process zeoraid server serving a
//! `RaidStorage` over real backends (in-process zeoraid servers, stock
//! Python `runzeo`), used through the Rust ZEO client.

use crossbeam_channel::{unbounded, Receiver};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zeoraid::raid::state::FailMode;
use zeoraid::raid::{BackendSource, BackendSpec, RaidOptions, RaidStorage};
use zeoraid::server::Server;
use zeoraid::storage::memory::MemoryStorage;
use zeoraid::storage::{Data, Error, Oid, Op, Storage, Tid, Txn, TxnMeta, Vote};
use zeoraid::zeo::client::{Client, ClientOptions, EventHandler, ServerEvent};

mod common;
use common::RunZeo;

fn serve(storage: Arc<dyn Storage>) -> Server {
    common::serve_with(storage, 8)
}

fn memory_server() -> Server {
    serve(Arc::new(MemoryStorage::new("1", false)))
}

fn opts(name: &str) -> RaidOptions {
    RaidOptions {
        backend_timeout: Duration::from_secs(5),
        auto_recover: false,
        ..RaidOptions::new(name)
    }
}

fn zeo(name: &str, addr: String) -> BackendSpec {
    BackendSpec {
        name: name.into(),
        kind: "zeo",
        source: BackendSource::Zeo(ClientOptions {
            connect_timeout: Duration::from_secs(2),
            ..ClientOptions::new(addr)
        }),
        reopen: None,
    }
}

fn client(addr: String) -> Client {
    Client::connect(ClientOptions {
        call_timeout: Duration::from_secs(20),
        ..ClientOptions::new(addr)
    })
    .expect("connect")
}

fn client_with_events(addr: String) -> (Client, Receiver<ServerEvent>) {
    let (tx, rx) = unbounded();
    let handler: EventHandler = Arc::new(move |ev| {
        let _ = tx.send(ev);
    });
    let c = Client::connect_with_handler(ClientOptions::new(addr), Some(handler)).expect("connect");
    (c, rx)
}

fn store(oid: Oid, serial: Tid, data: &[u8]) -> Op {
    Op::Store {
        oid,
        serial,
        data: Data::from(data),
    }
}

fn commit(c: &dyn Storage, ops: Vec<Op>) -> Result<Tid, Error> {
    let t = Txn {
        meta: TxnMeta::default(),
        tid: None,
        status: b' ',
        ops,
    };
    match c.tpc_vote(&t)? {
        Vote::Prepared { .. } => c.tpc_finish(),
        Vote::Conflicts(cs) => {
            c.tpc_abort();
            Err(Error::Value(format!("unexpected conflicts {cs:?}")))
        }
    }
}

/// Wait (bounded) until `f` holds.
fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn backend_state(raid: &RaidStorage, i: usize) -> (String, String) {
    let b = &raid.status().backends[i];
    (
        b.state.label().to_string(),
        b.reason.clone().unwrap_or_default(),
    )
}

/// Every transaction with its records, through a client of one backend.
/// Every transaction's tid and records.
type History = Vec<(Tid, Vec<(Oid, Option<Data>)>)>;

/// A commit a client was told succeeded: tid, oid, data.
type Acked = (Tid, Oid, Vec<u8>);

fn history(addr: String) -> History {
    let c = client(addr);
    c.iterator(None, None)
        .expect("iterator")
        .map(|t| {
            let t = t.expect("transaction");
            (
                t.tid,
                t.records.into_iter().map(|r| (r.oid, r.data)).collect(),
            )
        })
        .collect()
}

#[test]
fn invalidations_reach_each_client_once_and_a_direct_write_degrades_the_backend() {
    let backends: Vec<Server> = (0..3).map(|_| memory_server()).collect();
    let specs = backends
        .iter()
        .enumerate()
        .map(|(i, s)| zeo(["a", "b", "c"][i], s.local_addr().to_string()))
        .collect();
    let raid = Arc::new(RaidStorage::open(opts("1"), specs).expect("array"));
    let server = serve(raid.clone());
    let writer = client(server.local_addr().to_string());
    let (_reader, events) = client_with_events(server.local_addr().to_string());
    let oids = writer.new_oids(5).unwrap();
    let mut tids = Vec::new();
    for (i, oid) in oids.iter().enumerate() {
        tids.push(
            commit(
                &writer,
                vec![store(*oid, Tid::ZERO, format!("v{i}").as_bytes())],
            )
            .unwrap(),
        );
    }
    // Exactly one invalidation per transaction, in order, however many backends.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.len() < tids.len() && Instant::now() < deadline {
        if let Ok(ServerEvent::Invalidate { tid, oids }) =
            events.recv_timeout(Duration::from_millis(100))
        {
            seen.push((tid, oids));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    while let Ok(ev) = events.try_recv() {
        if let ServerEvent::Invalidate { tid, oids } = ev {
            seen.push((tid, oids));
        }
    }
    let expected: Vec<(Tid, Vec<Oid>)> = tids
        .iter()
        .zip(&oids)
        .map(|(t, o)| (*t, vec![*o]))
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(raid.status().state.label(), "optimal");
    // Someone writes straight to backend c: the array stops trusting it.
    let direct = client(backends[2].local_addr().to_string());
    let stray = direct.new_oids(1).unwrap()[0];
    commit(
        &direct,
        vec![store(stray, Tid::ZERO, b"behind the array's back")],
    )
    .unwrap();
    eventually("backend c is degraded", || {
        backend_state(&raid, 2).0 == "degraded"
    });
    let (_, why) = backend_state(&raid, 2);
    assert!(why.contains("written to directly"), "{why}");
    // The array's clients never hear of the stray transaction, and go on.
    let t = commit(&writer, vec![store(oids[0], tids[0], b"after")]).unwrap();
    assert!(t > tids[4]);
    std::thread::sleep(Duration::from_millis(200));
    while let Ok(ev) = events.try_recv() {
        if let ServerEvent::Invalidate { tid, .. } = ev {
            assert_eq!(tid, t, "only the array's own transactions are announced");
        }
    }
    drop(server);
}

/// An array over `specs` with `fail_mode`; it starts whatever is down.
fn array_with_fail_mode(fail_mode: FailMode, specs: Vec<BackendSpec>) -> Arc<RaidStorage> {
    let opts = RaidOptions {
        fail_mode,
        ..opts("1")
    };
    Arc::new(RaidStorage::open(opts, specs).expect("the array starts with backends down"))
}

#[test]
fn started_with_a_backend_down_it_serves_from_the_other_and_fails_as_configured() {
    let up = memory_server();
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down_addr = down.local_addr().unwrap().to_string();
    drop(down);
    for mode in [FailMode::Close, FailMode::ReadOnly] {
        let specs = vec![
            zeo("gone", down_addr.clone()),
            zeo("up", up.local_addr().to_string()),
        ];
        let raid = array_with_fail_mode(mode, specs);
        assert_eq!(backend_state(&raid, 0).0, "degraded");
        let server = serve(raid.clone());
        let c = client(server.local_addr().to_string());
        let oid = c.new_oids(1).unwrap()[0];
        let t = commit(&c, vec![store(oid, Tid::ZERO, b"served")]).unwrap();
        assert_eq!(
            &c.load_before(oid, Tid::MAX).unwrap().unwrap().data[..],
            b"served"
        );
        // Now the last backend goes too (its connection drops).
        drop(server);
        drop(c);
        let lone = memory_server();
        let specs = vec![
            zeo("gone", down_addr.clone()),
            zeo("lone", lone.local_addr().to_string()),
        ];
        let raid = array_with_fail_mode(mode, specs);
        let server = serve(raid.clone());
        let c = client(server.local_addr().to_string());
        let oid2 = c.new_oids(1).unwrap()[0];
        commit(&c, vec![store(oid2, Tid::ZERO, b"x")]).unwrap();
        drop(lone);
        eventually("the array has failed", || {
            raid.status().state.label() == "failed"
        });
        let w = commit(&c, vec![store(oid2, Tid::ZERO, b"y")]);
        match mode {
            FailMode::ReadOnly => assert!(
                matches!(&w, Err(Error::ReadOnly))
                    || matches!(&w, Err(Error::Remote { class, .. }) if class.contains("ReadOnly")),
                "{w:?}"
            ),
            FailMode::Close => {
                let e = format!("{w:?}");
                assert!(e.contains("has failed") && e.contains("min-optimal"), "{e}");
            }
        }
        let _ = t;
    }
}

#[test]
fn kill_9_of_a_runzeo_backend_under_load_loses_nothing() {
    let mut backends: Vec<RunZeo> = (0..3).map(|_| RunZeo::start_with(true)).collect();
    let specs = backends
        .iter()
        .enumerate()
        .map(|(i, z)| zeo(["a", "b", "c"][i], z.addr()))
        .collect();
    let raid = Arc::new(RaidStorage::open(opts("1"), specs).expect("array"));
    let server = serve(raid.clone());
    let addr = server.local_addr().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (addr, stop, acked, errors) = (
                addr.clone(),
                stop.clone(),
                acknowledged.clone(),
                errors.clone(),
            );
            std::thread::spawn(move || {
                let c = client(addr);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let oid = match c.new_oids(1) {
                        Ok(o) => o[0],
                        Err(e) => {
                            errors
                                .lock()
                                .unwrap()
                                .push(format!("writer {w}: new_oids: {e}"));
                            break;
                        }
                    };
                    let data = format!("writer {w} commit {n}").into_bytes();
                    match commit(&c, vec![store(oid, Tid::ZERO, &data)]) {
                        Ok(tid) => acked.lock().unwrap().push((tid, oid, data)),
                        Err(e) => {
                            errors.lock().unwrap().push(format!("writer {w}: {e}"));
                            break;
                        }
                    }
                    n += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    backends[1].kill();
    let killed_at = acknowledged.lock().unwrap().len();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer thread");
    }
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "clients saw errors: {errors:?}; array: {:?}; backend a's log: {}",
        raid.status(),
        backends[0].log()
    );
    let acked = acknowledged.lock().unwrap().clone();
    assert!(
        acked.len() > killed_at && killed_at > 0,
        "commits before and after the kill: {killed_at} of {}",
        acked.len()
    );
    let (state, why) = backend_state(&raid, 1);
    assert_eq!(state, "degraded");
    assert!(!why.is_empty());
    drop(server);
    drop(raid);
    // Every acknowledged commit is on both survivors, and their histories are identical.
    let h0 = history(backends[0].addr());
    let h2 = history(backends[2].addr());
    assert_eq!(h0, h2, "the survivors' histories differ");
    let by_tid: std::collections::HashMap<Tid, &Vec<(Oid, Option<Data>)>> =
        h0.iter().map(|(t, r)| (*t, r)).collect();
    for (tid, oid, data) in &acked {
        let records = by_tid
            .get(tid)
            .unwrap_or_else(|| panic!("acknowledged {tid} missing on the survivors"));
        assert!(
            records
                .iter()
                .any(|(o, d)| o == oid && d.as_deref() == Some(&data[..])),
            "acknowledged {tid} lacks its record"
        );
    }
}

/// The `ruok` status document of a server.
fn ruok(addr: std::net::SocketAddr) -> serde_json::Value {
    use zeoraid::zeo::frame::{read_frame, write_frame};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    read_frame(&mut s, 1 << 20).expect("hello");
    write_frame(&mut s, b"ruok").unwrap();
    serde_json::from_slice(&read_frame(&mut s, 1 << 20).expect("status")).expect("JSON")
}

fn file_server(path: &std::path::Path, listen: std::net::SocketAddr) -> Server {
    let fs =
        zeoraid::storage::file::FileStorage::open(path, Default::default()).expect("open Data.fs");
    common::serve_on(listen, Arc::new(fs), 4)
}

#[test]
fn a_restart_keeps_a_degraded_backend_degraded() {
    let dir = tempfile::tempdir().unwrap();
    let zdata = dir.path().join("z/Data.fs");
    std::fs::create_dir_all(zdata.parent().unwrap()).unwrap();
    let backend = file_server(&zdata, "127.0.0.1:0".parse().unwrap());
    let zaddr = backend.local_addr();
    let config_with = |auto: bool| {
        format!(
            "[[storage]]\nname = \"1\"\nkind = \"raid\"\nbackend-timeout = 5\n\
             auto-recover = {auto}\n\
             [[storage.backend]]\nname = \"f\"\nkind = \"file\"\npath = \"f/Data.fs\"\n\
             [[storage.backend]]\nname = \"z\"\nkind = \"zeo\"\naddress = \"{zaddr}\"\n"
        )
    };
    // Without auto-recovery, to see what the restart makes of z.
    let config = config_with(false);
    let raid = common::ZeoraidProcess::start(dir.path(), &config);
    {
        let c = client(raid.addr.to_string());
        let oid = c.new_oids(1).unwrap()[0];
        commit(&c, vec![store(oid, Tid::ZERO, b"mirrored")]).unwrap();
        let doc = ruok(raid.addr);
        assert_eq!(doc["1"]["raid"]["state"], "optimal", "{doc}");
    }
    // Backend z goes away: degraded, and the state file says so.
    drop(backend);
    eventually("z is degraded", || {
        ruok(raid.addr)["1"]["raid"]["backends"][1]["state"] == "degraded"
    });
    assert!(dir.path().join("raid-1.state").exists());
    raid.kill9();
    // z comes back with everything it had: the same last transaction as f.
    let backend = file_server(&zdata, zaddr);
    let raid = common::ZeoraidProcess::start(dir.path(), &config);
    let doc = ruok(raid.addr);
    let z = &doc["1"]["raid"]["backends"][1];
    assert_eq!(z["state"], "degraded", "{doc}");
    assert!(
        z["reason"]
            .as_str()
            .unwrap_or("")
            .contains("before the restart"),
        "{doc}"
    );
    assert_eq!(doc["1"]["raid"]["state"], "degraded");
    // The array still serves from f.
    let c = client(raid.addr.to_string());
    let oid = c.new_oids(1).unwrap()[0];
    commit(&c, vec![store(oid, Tid::ZERO, b"on f only")]).unwrap();
    drop(c);
    raid.kill9();
    // With auto-recovery (the default) the next start brings z back: it
    // gets the commit it missed and is optimal again.
    let raid = common::ZeoraidProcess::start(dir.path(), &config_with(true));
    eventually("z is recovered", || {
        ruok(raid.addr)["1"]["raid"]["state"] == "optimal"
    });
    let direct = client(zaddr.to_string());
    let loaded = direct.load_before(oid, Tid::MAX).unwrap().unwrap();
    assert_eq!(&loaded.data[..], b"on f only");
    drop(direct);
    drop(raid);
    drop(backend);
}

/// A memory storage whose loads fail, once switched on, the way Python
/// ZEO's msgpack server answers a load it cannot encode (RelStorage's
/// POSKeyError): `builtins.ValueError("Couldn't pickle response")`.
struct ForeignLoadErrors {
    inner: MemoryStorage,
    on: AtomicBool,
}

impl ForeignLoadErrors {
    fn check(&self) -> Result<(), Error> {
        if self.on.load(Ordering::SeqCst) {
            return Err(Error::Value("Couldn't pickle response".into()));
        }
        Ok(())
    }
}

impl Storage for ForeignLoadErrors {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn supports_undo(&self) -> bool {
        self.inner.supports_undo()
    }
    fn last_transaction(&self) -> zeoraid::storage::Result<Tid> {
        self.inner.last_transaction()
    }
    fn load_before(
        &self,
        oid: Oid,
        before: Tid,
    ) -> zeoraid::storage::Result<Option<zeoraid::storage::Loaded>> {
        self.check()?;
        self.inner.load_before(oid, before)
    }
    fn load_serial(&self, oid: Oid, serial: Tid) -> zeoraid::storage::Result<Data> {
        self.check()?;
        self.inner.load_serial(oid, serial)
    }
    fn history(
        &self,
        oid: Oid,
        size: usize,
    ) -> zeoraid::storage::Result<Vec<zeoraid::storage::HistoryEntry>> {
        self.check()?;
        self.inner.history(oid, size)
    }
    fn new_oids(&self, n: usize) -> zeoraid::storage::Result<Vec<Oid>> {
        self.inner.new_oids(n)
    }
    fn tpc_vote(&self, txn: &Txn) -> zeoraid::storage::Result<Vote> {
        self.inner.tpc_vote(txn)
    }
    fn tpc_finish(&self) -> zeoraid::storage::Result<Tid> {
        self.inner.tpc_finish()
    }
    fn tpc_abort(&self) {
        self.inner.tpc_abort()
    }
    fn undo_log(
        &self,
        first: usize,
        last: usize,
    ) -> zeoraid::storage::Result<Vec<zeoraid::storage::UndoEntry>> {
        self.inner.undo_log(first, last)
    }
    fn iterator(
        &self,
        start: Option<Tid>,
        stop: Option<Tid>,
    ) -> zeoraid::storage::Result<zeoraid::storage::TxnIter> {
        self.inner.iterator(start, stop)
    }
    fn record_iternext(
        &self,
        next: Option<Oid>,
    ) -> zeoraid::storage::Result<Option<zeoraid::storage::CurrentRecord>> {
        self.inner.record_iternext(next)
    }
    fn pack(&self, t: f64, gc: bool) -> zeoraid::storage::Result<()> {
        self.inner.pack(t, gc)
    }
    fn size_info(&self) -> zeoraid::storage::SizeInfo {
        self.inner.size_info()
    }
}

/// Issue #25: a mirror answering reads with a server error that is no
/// storage answer is degraded (the reason names the error) and the read
/// is answered by the other mirror; the client sees nothing of it. On an
/// empty database (the root's first load) and on a populated one.
/// An array with `opts` over "bad" (a [`ForeignLoadErrors`], failing
/// loads from the start if `failing`) and "good", both behind ZEO servers;
/// the array served too. The servers live as long as the returned pair.
fn foreign_array(
    opts: RaidOptions,
    failing: bool,
) -> (
    Arc<ForeignLoadErrors>,
    (Server, Server),
    Arc<RaidStorage>,
    Server,
) {
    let bad = Arc::new(ForeignLoadErrors {
        inner: MemoryStorage::new("1", false),
        on: AtomicBool::new(failing),
    });
    let bad_server = serve(bad.clone());
    let good_server = memory_server();
    let raid = Arc::new(
        RaidStorage::open(
            opts,
            vec![
                zeo("bad", bad_server.local_addr().to_string()),
                zeo("good", good_server.local_addr().to_string()),
            ],
        )
        .expect("array opens"),
    );
    let front = serve(raid.clone());
    (bad, (bad_server, good_server), raid, front)
}

#[test]
fn a_mirror_answering_reads_with_a_foreign_server_error_is_degraded_and_the_read_retried() {
    for populated in [false, true] {
        let (bad, _servers, raid, front) = foreign_array(opts("1"), !populated);
        let c = client(front.local_addr().to_string());
        let mut acked = Vec::new();
        if populated {
            for i in 0..5u8 {
                let oid = c.new_oids(1).unwrap()[0];
                let t = commit(&c, vec![store(oid, Tid::ZERO, &[b'v', i])]).unwrap();
                acked.push((t, oid, vec![b'v', i]));
            }
            bad.on.store(true, Ordering::SeqCst);
        }
        // The root's load: on an empty database both would say POSKeyError.
        match c.load_before(Oid(0), Tid::MAX) {
            Err(Error::PosKey(_)) if !populated => {}
            other if !populated => panic!("empty database: root load gave {other:?}"),
            _ => {}
        }
        for (t, oid, data) in &acked {
            // Read policy round-robin: several loads reach "bad" first.
            for _ in 0..3 {
                let got = c
                    .load_before(*oid, Tid::MAX)
                    .expect("load through the array");
                let got = got.expect("the object exists");
                assert_eq!((got.start, &got.data[..]), (*t, &data[..]));
            }
        }
        let (state, reason) = backend_state(&raid, 0);
        assert_eq!(state, "degraded", "populated {populated}");
        assert!(
            reason.contains("builtins.ValueError") && reason.contains("Couldn't pickle response"),
            "the reason names the error: {reason}"
        );
        assert_eq!(backend_state(&raid, 1).0, "optimal");
        // The client can commit, and reads keep working (from "good").
        let oid = c.new_oids(1).unwrap()[0];
        let t = commit(&c, vec![store(oid, Tid::ZERO, b"after")]).unwrap();
        assert_eq!(c.load_before(oid, Tid::MAX).unwrap().unwrap().start, t);
        drop(c);
        drop(front);
        raid.close();
    }
}

#[test]
fn with_min_optimal_two_a_mirror_failing_reads_is_kept_and_the_other_serves_them() {
    let (bad, _servers, raid, front) = foreign_array(
        RaidOptions {
            min_optimal: 2,
            ..opts("1")
        },
        false,
    );
    let c = client(front.local_addr().to_string());
    let oid = c.new_oids(1).unwrap()[0];
    let t = commit(&c, vec![store(oid, Tid::ZERO, b"kept")]).unwrap();
    bad.on.store(true, Ordering::SeqCst);
    // Degrading "bad" would leave one optimal backend of the two required
    // and fail the array: it is kept, and every read is served by "good".
    for _ in 0..4 {
        let got = c
            .load_before(oid, Tid::MAX)
            .expect("load through the array")
            .expect("the object exists");
        assert_eq!((got.start, &got.data[..]), (t, &b"kept"[..]));
    }
    assert_eq!(backend_state(&raid, 0).0, "optimal");
    assert_eq!(raid.status().state.label(), "optimal");
    // Commits go on on both.
    let t2 = commit(&c, vec![store(oid, t, b"again")]).unwrap();
    assert!(t2 > t);
    drop(c);
    drop(front);
    raid.close();
}

/// The state file keeps what was added and removed at runtime: after a
/// restart an added backend is back (with its settings) and a removed one
/// stays out, though the config still names it.
#[test]
fn backends_added_and_removed_at_runtime_survive_a_restart() {
    use zeoraid::config::{BackendConfig, StorageConfig};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StorageConfig::raid(
        "1",
        vec![
            BackendConfig::file("a", dir.path().join("a.fs")),
            BackendConfig::file("b", dir.path().join("b.fs")),
        ],
    );
    cfg.state_file = Some(dir.path().join("raid.state"));
    cfg.auto_recover = Some(false);
    let array = zeoraid::open::open_raid(&cfg).expect("the array opens");
    let mut c = BackendConfig::file("c", dir.path().join("c.fs"));
    c.pack_gc = false;
    array
        .add_backend(zeoraid::open::backend_spec("1", &c), c.clone())
        .expect("c added");
    array.recover("c", false).expect("c recovered");
    array.remove_backend("b").expect("b removed");
    array.close();
    drop(array);

    let saved = zeoraid::raid::statefile::load(&dir.path().join("raid.state"))
        .expect("the state file reads")
        .expect("the state file exists");
    assert_eq!(saved.removed, vec!["b".to_string()]);
    assert_eq!(
        BackendConfig::from_recipe(&saved.added[0]).expect("c's entry reads back"),
        c,
        "the state file keeps c's settings as given"
    );
    let array = zeoraid::open::open_raid(&cfg).expect("the array opens again");
    assert_eq!(
        array.backend_names(),
        vec!["a".to_string(), "c".to_string()]
    );
    assert_eq!(array.status().state.label(), "optimal");
    array.close();
}

/// Two controllers' arrays over the same backends (`addrs`): the first
/// leads and commits; the second fences the backends and takes over; the
/// first's next vote fails at the fence on every backend, nothing of it is
/// committed, no backend is degraded for it, and it refuses writes after.
fn stale_controller_is_fenced_out(addrs: &[String]) {
    // Shown when the test fails: which backend was degraded, and why.
    let _ = env_logger::builder().is_test(true).try_init();
    let specs = |_: ()| {
        addrs
            .iter()
            .enumerate()
            .map(|(i, a)| zeo(["a", "b"][i], a.clone()))
            .collect::<Vec<_>>()
    };
    let old = RaidStorage::open(opts("1"), specs(())).expect("array of the old leader");
    let new = RaidStorage::open(opts("1"), specs(())).expect("array of the new leader");
    new.stand_by();
    let refused = commit(&new, vec![store(Oid(9), Tid(0), b"no")]);
    assert!(
        matches!(&refused, Err(Error::Disconnected(m)) if m.contains("stands by")),
        "{refused:?}"
    );
    // The old leader: a root, its fence, commits (one storing the root).
    let root0 = commit(&old, vec![store(Oid(0), Tid(0), b"root")]).unwrap_or_else(|e| {
        panic!(
            "root: {e}; {:?}",
            (backend_state(&old, 0), backend_state(&old, 1))
        )
    });
    let f = old.take_fence(1, "old").expect("fence at epoch 1");
    assert!(f.serial > root0);
    commit(&old, vec![store(Oid(1), Tid(0), b"one")]).expect("guarded commit");
    commit(&old, vec![store(Oid(0), f.serial, b"root 2")]).expect("root again");
    let old_last = commit(&old, vec![store(Oid(2), Tid(0), b"two")]).expect("after the root moved");
    // The takeover.
    let g = new.take_fence(2, "new").expect("fence at epoch 2");
    let last = g.serial;
    // A leader paused in the middle of a vote wakes with a tid older than
    // the takeover's: a backend may refuse that tid before it checks the
    // fence. The client must still be told to go to the new leader (a
    // disconnect it retries), not get the refusal as its error.
    let paused = old.tpc_vote(&Txn {
        meta: TxnMeta::default(),
        tid: Some(Tid(old_last.0 + 1)),
        status: b' ',
        ops: vec![store(Oid(3), Tid(0), b"stale")],
    });
    assert!(
        matches!(&paused, Err(Error::Disconnected(m)) if m.contains("fenced out")),
        "{paused:?}"
    );
    // And so does the stale leader's next vote.
    let stale = commit(&old, vec![store(Oid(3), Tid(0), b"stale")]);
    assert!(
        matches!(&stale, Err(Error::Disconnected(m)) if m.contains("fenced out")),
        "{stale:?}"
    );
    assert!(matches!(
        old.fence_state(),
        zeoraid::raid::fence::FenceState::Lost { epoch: 1 }
    ));
    let shown = |a: &RaidStorage| a.status().fence.map(|f| (f.state, f.epoch));
    assert_eq!(shown(&old), Some(("lost".to_string(), Some(1))));
    assert_eq!(shown(&new), Some(("held".to_string(), Some(2))));
    let again = commit(&old, vec![store(Oid(4), Tid(0), b"stale")]);
    assert!(matches!(&again, Err(Error::Disconnected(_))), "{again:?}");
    for addr in addrs {
        let c = client(addr.clone());
        assert_eq!(c.last_transaction().expect("last"), last, "{addr}");
        assert!(matches!(
            c.load_before(Oid(3), Tid(u64::MAX)),
            Err(Error::PosKey(_)) | Ok(None)
        ));
    }
    // The new leader commits; neither array degraded anything.
    commit(&new, vec![store(Oid(5), Tid(0), b"new")]).expect("the new leader commits");
    let root = zeoraid::storage::load(&new, Oid(0)).expect("root");
    assert_eq!(
        &root.data[..],
        b"root 2",
        "the fence left the root's state alone"
    );
    for i in 0..addrs.len() {
        let (o, n) = (backend_state(&old, i), backend_state(&new, i));
        assert_eq!(o.0, "optimal", "the old leader's backend {i}: {o:?}");
        assert_eq!(n.0, "optimal", "the new leader's backend {i}: {n:?}");
    }
    assert_eq!(history(addrs[0].clone()), history(addrs[1].clone()));
    old.close();
    new.close();
}

#[test]
fn a_stale_controller_is_fenced_out_at_zeoraid_backends() {
    let servers = [memory_server(), memory_server()];
    let addrs: Vec<String> = servers.iter().map(|s| s.local_addr().to_string()).collect();
    stale_controller_is_fenced_out(&addrs);
}

#[test]
fn a_stale_controller_is_fenced_out_at_default_config_runzeo() {
    let backends = [
        RunZeo::start_pickle_with(true),
        RunZeo::start_pickle_with(true),
    ];
    let addrs: Vec<String> = backends.iter().map(|z| z.addr()).collect();
    stale_controller_is_fenced_out(&addrs);
}
