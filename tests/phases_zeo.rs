//! A ZEO backend taken out at every phase of a commit (issue #21), for
//! each kind of server behind a ZEO backend: a `zeoraid serve` of its own
//! Data.fs, and stock Python `runzeo`. (The in-process file backend has
//! its phase tests in `src/raid/tests/phases.rs`.)
//!
//! The array (in process, served to Rust ZEO clients) has two mirrors:
//! "b1" straight to its server and "b2" through a [`Gate`], a proxy that
//! holds one chosen frame until the test says what becomes of it. So each
//! phase is hit deterministically, while two more clients commit:
//!
//! | phase                          | the frame held                        |
//! |--------------------------------|---------------------------------------|
//! | after `tpc_begin`              | b2's first `storea`                   |
//! | after the stores               | b2's `vote`                           |
//! | after its vote                 | the reply to b2's `vote`              |
//! | after b1's finish, before b2's | b2's `tpc_finish` (once b1 holds it)  |
//! | after its own finish           | the reply to b2's `tpc_finish`        |
//!
//! The faults: `disable`, `remove` (then added back), kill -9 of b2's
//! server (then restarted), a call that times out (the backend timeout
//! passes before the frame goes on), a vote that disagrees (b2's vote is
//! answered with an error). After each, b2 is recovered under the running
//! writers; every time the recovery succeeds, `verify` finds the histories
//! identical, every acknowledged commit is on both mirrors, and no client
//! saw an error.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use zeoraid::config::BackendConfig;
use zeoraid::raid::{BackendSource, BackendSpec, RaidOptions, RaidStorage};
use zeoraid::server::Server;
use zeoraid::storage::{Error, Oid, Storage, Tid};
use zeoraid::zeo::client::{Client, ClientOptions};

mod common;
use common::gate::{Gate, Hold, Release};
use common::{commit_store, serve_with, RunZeo, ZeoraidProcess};

/// The array's backend timeout: a held call past this degrades b2.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Begun,
    Stored,
    Voted,
    OthersFinished,
    Finished,
}

const PHASES: [Phase; 5] = [
    Phase::Begun,
    Phase::Stored,
    Phase::Voted,
    Phase::OthersFinished,
    Phase::Finished,
];

impl Phase {
    fn hold(self) -> Hold {
        match self {
            Phase::Begun => Hold::Request("storea"),
            Phase::Stored => Hold::Request("vote"),
            Phase::Voted => Hold::Reply("vote"),
            Phase::OthersFinished => Hold::Request("tpc_finish"),
            Phase::Finished => Hold::Reply("tpc_finish"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Fault {
    Disable,
    Remove,
    Kill,
    Timeout,
    VoteDisagrees,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Zeoraid,
    RunZeo,
}

/// b2's server, of either kind; restartable on the same data.
enum Mirror {
    Zeoraid {
        dir: tempfile::TempDir,
        process: Option<ZeoraidProcess>,
    },
    RunZeo(RunZeo),
}

const FILE_SERVER: &str = "[[storage]]\nname = \"1\"\nkind = \"file\"\npath = \"Data.fs\"\n";

impl Mirror {
    fn start(kind: Kind) -> Mirror {
        match kind {
            Kind::Zeoraid => {
                let dir = tempfile::tempdir().expect("tempdir");
                let process = Some(ZeoraidProcess::start(dir.path(), FILE_SERVER));
                Mirror::Zeoraid { dir, process }
            }
            Kind::RunZeo => Mirror::RunZeo(RunZeo::start()),
        }
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Mirror::Zeoraid { process, .. } => process.as_ref().expect("running").addr,
            Mirror::RunZeo(z) => z.addr().parse().expect("runzeo address"),
        }
    }

    fn kill9(&mut self) {
        match self {
            Mirror::Zeoraid { process, .. } => {
                if let Some(p) = process.take() {
                    p.kill9();
                }
            }
            Mirror::RunZeo(z) => z.kill(),
        }
    }

    /// Start again on the same data (after [`Mirror::kill9`]).
    fn restart(&mut self) {
        match self {
            Mirror::Zeoraid { dir, process } => {
                *process = Some(ZeoraidProcess::start(dir.path(), FILE_SERVER));
            }
            Mirror::RunZeo(z) => z.restart(),
        }
    }
}

fn zeo_spec(name: &str, addr: SocketAddr) -> BackendSpec {
    BackendSpec {
        name: name.into(),
        kind: "zeo",
        source: BackendSource::Zeo(ClientOptions {
            connect_timeout: Duration::from_secs(2),
            call_timeout: BACKEND_TIMEOUT,
            ..ClientOptions::new(addr.to_string())
        }),
        reopen: None,
    }
}

fn client(addr: SocketAddr) -> Client {
    Client::connect(ClientOptions {
        call_timeout: Duration::from_secs(30),
        ..ClientOptions::new(addr.to_string())
    })
    .expect("connect")
}

/// What every client was told: acknowledged (tid, oid, data), and errors.
#[derive(Default)]
struct Ledger {
    acked: Mutex<Vec<(Tid, Oid, Vec<u8>)>>,
    errors: Mutex<Vec<String>>,
}

impl Ledger {
    fn ack(&self, tid: Tid, oid: Oid, data: Vec<u8>) {
        self.acked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((tid, oid, data));
    }
    fn error(&self, what: String) {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(what);
    }
}

/// Clients each committing its own object in a loop; pausable, so a test
/// can arm the gate while no commit is under way.
struct Writers {
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    busy: Arc<AtomicUsize>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Writers {
    fn start(addr: SocketAddr, n: usize, ledger: Arc<Ledger>) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(AtomicBool::new(false));
        let busy = Arc::new(AtomicUsize::new(0));
        let threads = (0..n)
            .map(|w| {
                let (stop, pause, busy, ledger) =
                    (stop.clone(), pause.clone(), busy.clone(), ledger.clone());
                thread::Builder::new()
                    .name(format!("writer-{w}"))
                    .spawn(move || {
                        let c = client(addr);
                        let oid = c.new_oids(1).expect("new oid")[0];
                        let mut serial = Tid::ZERO;
                        let mut n = 0u64;
                        while !stop.load(Ordering::SeqCst) {
                            busy.fetch_add(1, Ordering::SeqCst);
                            if pause.load(Ordering::SeqCst) {
                                busy.fetch_sub(1, Ordering::SeqCst);
                                thread::sleep(Duration::from_millis(2));
                                continue;
                            }
                            n += 1;
                            let data = format!("writer {w} value {n}").into_bytes();
                            match commit_store(&c, oid, serial, &data) {
                                Ok(t) => {
                                    serial = t;
                                    ledger.ack(t, oid, data);
                                }
                                Err(e) => ledger.error(format!("writer {w}: {e}")),
                            }
                            busy.fetch_sub(1, Ordering::SeqCst);
                            thread::sleep(Duration::from_millis(15));
                        }
                    })
                    .expect("spawn a writer")
            })
            .collect();
        Writers {
            stop,
            pause,
            busy,
            threads,
        }
    }

    /// Hold the writers between commits (bounded wait).
    fn pause(&self) {
        self.pause.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.busy.load(Ordering::SeqCst) > 0 {
            assert!(Instant::now() < deadline, "writers did not pause");
            thread::sleep(Duration::from_millis(1));
        }
    }

    fn resume(&self) {
        self.pause.store(false, Ordering::SeqCst);
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.resume();
        for t in self.threads {
            t.join().expect("a writer panicked");
        }
    }
}

fn state_of(raid: &RaidStorage, name: &str) -> Option<(String, String)> {
    raid.status().backends.into_iter().find_map(|b| {
        (b.name == name).then(|| (b.state.label().to_string(), b.reason.unwrap_or_default()))
    })
}

fn eventually(what: &str, limit: Duration, f: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

struct Rig {
    kind: Kind,
    b1: Mirror,
    b2: Mirror,
    gate: Gate,
    raid: Arc<RaidStorage>,
    server: Server,
    ledger: Arc<Ledger>,
}

impl Rig {
    fn new(kind: Kind) -> Rig {
        let b1 = Mirror::start(kind);
        let b2 = Mirror::start(kind);
        let gate = Gate::start(b2.addr());
        let opts = RaidOptions {
            backend_timeout: BACKEND_TIMEOUT,
            auto_recover: false,
            ..RaidOptions::new("1")
        };
        let raid = Arc::new(
            RaidStorage::open(
                opts,
                vec![zeo_spec("b1", b1.addr()), zeo_spec("b2", gate.addr())],
            )
            .expect("the array opens"),
        );
        let server = serve_with(raid.clone(), 8);
        Rig {
            kind,
            b1,
            b2,
            gate,
            raid,
            server,
            ledger: Arc::default(),
        }
    }

    /// One case: `fault` at `phase`, under `writers`, then recovery and
    /// the checks.
    fn case(&mut self, writers: &Writers, probe: &Client, phase: Phase, fault: Fault) {
        let what = format!("{:?} backend: {fault:?} at {phase:?}", self.kind);
        let started = Instant::now();
        log::info!("case {what}: begins");
        let probe_oid = probe.new_oids(1).expect("oid")[0];
        writers.pause();
        let b1 = client(self.b1.addr());
        let b1_before = b1.last_transaction().expect("b1's last transaction");
        self.gate.arm(phase.hold());
        let committing = {
            let addr = self.server.local_addr();
            let data = format!("probe for {what}").into_bytes();
            thread::Builder::new()
                .name("probe".into())
                .spawn(move || {
                    let c = client(addr);
                    commit_store(&c, probe_oid, Tid::ZERO, &data).map(|t| (t, data))
                })
                .expect("spawn the probe")
        };
        let held = self
            .gate
            .wait_held(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{what}: the phase was never reached"));
        // The writers queue up behind the held commit.
        writers.resume();
        if phase == Phase::OthersFinished {
            eventually(
                &format!("{what}: b1 finished"),
                Duration::from_secs(10),
                || {
                    b1.last_transaction()
                        .map(|t| t > b1_before)
                        .unwrap_or(false)
                },
            );
        }
        let mut removal = None;
        match fault {
            Fault::Disable => {
                self.raid.disable("b2").expect("b2 disabled");
                self.gate.release(Release::Forward);
            }
            Fault::Remove => {
                let raid = self.raid.clone();
                removal = Some(
                    thread::Builder::new()
                        .name("remove".into())
                        .spawn(move || raid.remove_backend("b2"))
                        .expect("spawn the removal"),
                );
                thread::sleep(Duration::from_millis(30));
                self.gate.release(Release::Forward);
            }
            Fault::Kill => {
                self.b2.kill9();
                self.gate.release(Release::Forward);
            }
            Fault::Timeout => {
                eventually(
                    &format!("{what}: b2 degraded by the timeout"),
                    BACKEND_TIMEOUT * 5,
                    || state_of(&self.raid, "b2").map(|s| s.0) == Some("degraded".into()),
                );
                // Late, it goes on: the server does the call after all.
                self.gate.release(Release::Forward);
            }
            Fault::VoteDisagrees => {
                self.gate.release(Release::Error(Error::Transaction(
                    "this mirror disagrees (test)".into(),
                )));
            }
        }
        let (tid, data) = committing
            .join()
            .expect("the probe panicked")
            .unwrap_or_else(|e| panic!("{what} ({held}): the client's commit failed: {e}"));
        self.ledger.ack(tid, probe_oid, data);
        if let Some(r) = removal {
            r.join()
                .expect("the removal panicked")
                .unwrap_or_else(|e| panic!("{what}: removing b2: {e}"));
            assert_eq!(state_of(&self.raid, "b2"), None, "{what}: b2 removed");
        }
        // A few commits without b2.
        thread::sleep(Duration::from_millis(100));
        if fault == Fault::Kill {
            self.b2.restart();
            self.gate.set_upstream(self.b2.addr());
        }
        if fault == Fault::Remove {
            self.raid
                .add_backend(
                    zeo_spec("b2", self.gate.addr()),
                    BackendConfig::zeo("b2", &self.gate.addr().to_string(), "1"),
                )
                .unwrap_or_else(|e| panic!("{what}: adding b2 back: {e}"));
        }
        if state_of(&self.raid, "b2").map(|s| s.0) != Some("optimal".into()) {
            if let Err(e) = self.raid.recover("b2", false) {
                panic!("{what}: the recovery failed: {e}");
            }
        }
        assert_eq!(
            state_of(&self.raid, "b2").map(|s| s.0),
            Some("optimal".into()),
            "{what}: b2 optimal after the recovery"
        );
        // Verify reads both whole histories up to the newest transaction:
        // with the writers paused, so it has an end to reach.
        writers.pause();
        let v = self
            .raid
            .verify("b2")
            .unwrap_or_else(|e| panic!("{what}: verify: {e}"));
        writers.resume();
        assert_eq!(v.difference, None, "{what}: the histories differ");
        let errors = self
            .ledger
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        assert!(errors.is_empty(), "{what}: clients saw errors: {errors:?}");
        log::info!(
            "case {what}: done in {:.2} s",
            started.elapsed().as_secs_f64()
        );
    }

    /// Every acknowledged commit is on both mirrors, with its data.
    fn check_acked(&self) -> usize {
        let acked = self
            .ledger
            .acked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (name, addr) in [("b1", self.b1.addr()), ("b2", self.b2.addr())] {
            let c = client(addr);
            for (tid, oid, data) in &acked {
                let got = c
                    .load_serial(*oid, *tid)
                    .unwrap_or_else(|e| panic!("{name}: acknowledged {tid} of {oid} missing: {e}"));
                assert_eq!(&got[..], &data[..], "{name}: {tid} of {oid}");
            }
        }
        acked.len()
    }
}

fn cases() -> Vec<(Phase, Fault)> {
    let mut v = Vec::new();
    for fault in [Fault::Disable, Fault::Remove, Fault::Kill] {
        for phase in PHASES {
            v.push((phase, fault));
        }
    }
    for phase in [
        Phase::Stored,
        Phase::Voted,
        Phase::OthersFinished,
        Phase::Finished,
    ] {
        v.push((phase, Fault::Timeout));
    }
    v.push((Phase::Voted, Fault::VoteDisagrees));
    v.push((Phase::Stored, Fault::VoteDisagrees));
    v
}

fn every_phase_every_fault(kind: Kind) {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut rig = Rig::new(kind);
    let writers = Writers::start(rig.server.local_addr(), 2, rig.ledger.clone());
    let probe = client(rig.server.local_addr());
    let started = Instant::now();
    let mut seen: HashMap<Fault, usize> = HashMap::new();
    for (phase, fault) in cases() {
        rig.case(&writers, &probe, phase, fault);
        *seen.entry(fault).or_default() += 1;
    }
    writers.stop();
    let n = rig.check_acked();
    assert!(n > 20, "the writers committed ({n} acknowledged)");
    eprintln!(
        "{kind:?} backends: {} cases ({seen:?}) in {:.1} s, {n} acknowledged commits on both mirrors, \
         no client error",
        cases().len(),
        started.elapsed().as_secs_f64()
    );
    drop(probe);
    drop(rig.server);
    rig.raid.close();
}

#[test]
fn zeoraid_file_servers_taken_out_at_every_phase_are_recovered() {
    every_phase_every_fault(Kind::Zeoraid);
}

#[test]
fn runzeo_servers_taken_out_at_every_phase_are_recovered() {
    every_phase_every_fault(Kind::RunZeo);
}
