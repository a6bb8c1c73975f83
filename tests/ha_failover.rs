//! Controller failover under load (issue #26), with `zeoraid serve`
//! processes as the two controllers, two in-process zeoraid servers on a
//! `Data.fs` each as the backends, and a real etcd (`tests/common/etcd.rs`):
//!
//! - the active controller is SIGKILLed under four committing stock Python
//!   ZEO clients (`ZEO.DB([a, b])`, retrying what ZODB says may be
//!   retried), ten times, the killed one restarted as the standby each
//!   time: every acknowledged commit is on both backends, whose histories
//!   are identical, and the clients saw no other error;
//! - the leader is SIGSTOPped for three lease TTLs while clients commit:
//!   the standby takes over (fences), and once continued the old leader
//!   stands by and nothing of it reached the backends after the fence;
//! - two of three etcd members are stopped: the leader keeps serving
//!   commits, nobody takes over, and once they are back the same leader
//!   leads with no leader change counted.
//!
//! etcd and Python (ZODB + ZEO) missing fail the tests, as in `tests/ha.rs`.

#![cfg(feature = "admin")]

mod common;

use common::etcd::Etcd;
use common::wait_for;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeoraid::server::Server;
use zeoraid::storage::file::{FileOptions, FileStorage};
use zeoraid::storage::{Oid, Tid, TxnRecord};
use zeoraid::zeo::client::{Client, ClientOptions};

const LEASE_TTL: u64 = 2;

/// Two backends: zeoraid servers on a `Data.fs` each, no root yet (the
/// first leader creates it as its fence, as ZODB would).
struct Backends {
    _dir: tempfile::TempDir,
    servers: Vec<Server>,
}

impl Backends {
    fn start() -> Backends {
        let dir = tempfile::tempdir().expect("tempdir");
        let servers = ["a", "b"]
            .iter()
            .map(|n| {
                let fs =
                    FileStorage::open(&dir.path().join(format!("{n}.fs")), FileOptions::default())
                        .expect("a Data.fs");
                // As an HA site's backends should: a paused controller's
                // commit lock is taken back after 3 s, so that the new
                // leader's fence does not wait on it.
                let any = "127.0.0.1:0".parse().expect("a loopback address");
                common::serve_on_with(any, Arc::new(fs), 4, Some(Duration::from_secs(3)))
            })
            .collect();
        Backends { _dir: dir, servers }
    }

    fn addrs(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| s.local_addr().to_string())
            .collect()
    }

    /// A controller's TOML: the array over both backends, `[ha]` with
    /// `endpoints`, and an admin listener on `admin`.
    fn toml(&self, endpoints: &[String], name: &str, admin: u16) -> String {
        let a = self.addrs();
        let eps = endpoints
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "[server]\nworkers = 4\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n\
             [[storage]]\nname = \"1\"\nkind = \"raid\"\n\n\
             [[storage.backend]]\nname = \"a\"\nkind = \"zeo\"\naddress = \"{}\"\nstorage = \"1\"\n\n\
             [[storage.backend]]\nname = \"b\"\nkind = \"zeo\"\naddress = \"{}\"\nstorage = \"1\"\n\n\
             [ha]\nendpoints = [{eps}]\ncluster = \"test\"\nname = \"{name}\"\n\
             lease-ttl = {LEASE_TTL}\nrenew-interval = 0.5\n",
            a[0], a[1]
        )
    }

    /// Every transaction of backend `i`, oldest first.
    fn history(&self, i: usize) -> Vec<TxnRecord> {
        common::history_of(self.addrs()[i].clone())
    }

    /// Both backends' histories, or where they part: the transactions
    /// from the first that differs on, each as tid and description.
    fn compared_histories(&self) -> Result<Vec<TxnRecord>, String> {
        let (a, b) = (self.history(0), self.history(1));
        if a == b {
            return Ok(a);
        }
        let from = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        let tail = |h: &[TxnRecord]| {
            h.iter()
                .skip(from)
                .take(5)
                .map(|t| {
                    format!(
                        "{} {:?}",
                        t.tid,
                        String::from_utf8_lossy(&t.meta.description)
                    )
                })
                .collect::<Vec<_>>()
        };
        Err(format!(
            "the backends' histories ({} and {} transactions) part at transaction {from}: \
             a has {:?}, b has {:?}",
            a.len(),
            b.len(),
            tail(&a),
            tail(&b)
        ))
    }
}

fn connect(addr: String) -> zeoraid::storage::Result<Client> {
    Client::connect(ClientOptions {
        call_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
        ..ClientOptions::new(addr)
    })
}

/// A `zeoraid serve` controller on a fixed port (so that clients given
/// both addresses find it again after a restart), with an admin listener
/// and its stderr in `dir/log`. Killed on drop.
struct Ctl {
    name: String,
    dir: PathBuf,
    port: u16,
    admin: u16,
    config: String,
    child: Option<Child>,
}

impl Ctl {
    fn new(root: &Path, name: &str, backends: &Backends, endpoints: &[String]) -> Ctl {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let admin = common::free_port();
        Ctl {
            name: name.into(),
            port: common::free_port(),
            config: backends.toml(endpoints, name, admin),
            admin,
            dir,
            child: None,
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Start (or restart) it; returns once it listens.
    fn start(&mut self) {
        assert!(self.child.is_none(), "{} runs already", self.name);
        let conf = self.dir.join("zeoraid.toml");
        std::fs::write(&conf, &self.config).expect("write config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .expect("open the log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_zeoraid"))
            .args(["serve", "--listen", &self.addr(), "--config"])
            .arg(&conf)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start zeoraid");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        // Keep reading, so that a later line never meets a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        self.child = Some(child);
        assert!(
            line.starts_with("zeoraid: listening on "),
            "{} did not start: {line:?}\n{}",
            self.name,
            self.log()
        );
    }

    /// Stop it cleanly (SIGTERM: the commit in flight finishes) and wait
    /// for it to exit.
    fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "{} did not stop within 20 s of SIGTERM:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let st = Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill {sig} {pid}");
    }

    /// The admin listener's `/status` document (`None`: no answer).
    fn status(&self) -> Option<serde_json::Value> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.admin).into();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(
            s,
            "GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).ok()?;
        let (_, body) = raw.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    }

    /// The status line (`controller NAME: leader (epoch N) ...`).
    fn line(&self) -> String {
        self.status()
            .and_then(|s| s["line"].as_str().map(String::from))
            .unwrap_or_default()
    }

    fn leads(&self) -> bool {
        self.line()
            .contains(&format!("controller {}: leader (epoch ", self.name))
    }

    /// A standby that sees `leader` lead.
    fn stands_by_for(&self, leader: &str) -> bool {
        self.line().contains(&format!(
            "controller {}: standby (leader {leader})",
            self.name
        ))
    }

    /// A sample of its `/metrics` whose line starts with `prefix`.
    fn metric(&self, prefix: &str) -> Option<u64> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.admin).into();
        let text = common::http_get(addr, "/metrics");
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// Leader changes this controller counted.
    fn leader_changes(&self) -> Option<u64> {
        self.metric("zeoraid_ha_leader_changes_total")
    }

    /// Transactions this controller committed on storage "1".
    fn commits(&self) -> Option<u64> {
        self.metric("zeoraid_commits_total{storage=\"1\"}")
    }
}

impl Drop for Ctl {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A stopped process is killed as well; continue it first
            // anyway, so that nothing is left stopped.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(self.child.as_ref().map_or(0, |c| c.id()).to_string())
                .status();
        }
        self.kill9();
    }
}

/// The database's per-client objects: `root['c0']` ... as
/// `PersistentMapping`s with `n = 0`, created through the leader.
const SETUP: &str = r#"
import sys, transaction, ZEO
from persistent.mapping import PersistentMapping
port, n = int(sys.argv[1]), int(sys.argv[2])
db = ZEO.DB(('127.0.0.1', port), wait_timeout=20)
conn = db.open()
root = conn.root()
for i in range(n):
    root['c%d' % i] = PersistentMapping(n=0)
transaction.commit()
db.close()
"#;

/// A stock ZODB client committing increments of its own counter in a
/// loop until `STOP` exists, retrying what ZODB says may be retried (a
/// disconnect, a conflict, a transient error), and printing every
/// acknowledged commit as `ack N OID TID` (hex) and, at the end, the
/// retried errors by class.
const CLIENT: &str = r#"
import os, sys, time, collections, transaction, ZEO
from ZEO.Exceptions import ClientDisconnected
from ZODB.POSException import ConflictError
from transaction.interfaces import TransientError
i, ports, stop = int(sys.argv[1]), sys.argv[2].split(','), sys.argv[3]
db = ZEO.DB([('127.0.0.1', int(p)) for p in ports], wait_timeout=30)
conn = db.open()
tm = transaction.manager
key = 'c%d' % i
retried = collections.Counter()
while not os.path.exists(stop):
    try:
        tm.begin()
        obj = conn.root()[key]
        obj['n'] = obj['n'] + 1
        tm.commit()
    except (ClientDisconnected, ConflictError, TransientError) as e:
        retried[type(e).__name__] += 1
        try:
            tm.abort()
        except Exception:
            pass
        time.sleep(0.05)
        continue
    print('ack %d %s %s' % (obj['n'], obj._p_oid.hex(), obj._p_serial.hex()), flush=True)
print('retried', dict(retried), flush=True)
db.close()
"#;

/// A Python client process, killed on drop.
struct Py {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

impl Py {
    fn start(python: &Path, dir: &Path, i: usize, ports: &[u16], stop: &Path) -> Py {
        let out = dir.join(format!("client{i}.out"));
        let err = dir.join(format!("client{i}.err"));
        let ports = ports
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let child = Command::new(python)
            .args(["-c", CLIENT])
            .arg(i.to_string())
            .arg(ports)
            .arg(stop)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&out).expect("out")))
            .stderr(Stdio::from(std::fs::File::create(&err).expect("err")))
            .spawn()
            .expect("start a Python client");
        Py {
            child: Some(child),
            out,
            err,
        }
    }

    /// The acknowledged commits so far: (n, oid, tid).
    fn acks(&self) -> Vec<(u64, Oid, Tid)> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter(|l| l.ends_with(|c: char| c.is_ascii_hexdigit()))
            .filter_map(|l| {
                let mut f = l.strip_prefix("ack ")?.split(' ');
                let n = f.next()?.parse().ok()?;
                let oid = u64::from_str_radix(f.next()?, 16).ok()?;
                let tid = u64::from_str_radix(f.next()?, 16).ok()?;
                (f.next().is_none()).then_some((n, Oid(oid), Tid(tid)))
            })
            .collect()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits (bounded) for it to end; asserts it succeeded; its stdout.
    fn finish(&mut self) -> String {
        let mut c = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(40);
        let status = loop {
            if let Some(st) = c.try_wait().expect("wait") {
                break st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("a Python client did not end:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "a Python client failed:\n{}",
            self.stderr()
        );
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn setup_counters(python: &Path, port: u16, n: usize) {
    let out = Command::new(python)
        .args(["-c", SETUP])
        .arg(port.to_string())
        .arg(n.to_string())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run the setup");
    assert!(
        out.status.success(),
        "setup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Which of `ctls` leads, waiting for exactly one to.
fn leader_of(ctls: &[Ctl], limit: Duration) -> usize {
    wait_for(limit, "exactly one controller leads", || {
        let leading: Vec<usize> = (0..ctls.len()).filter(|&i| ctls[i].leads()).collect();
        (leading.len() == 1).then(|| leading[0])
    })
}

/// Every acknowledged commit is a revision of its client's object on both
/// backends (`history` is theirs, identical), each client's values grow
/// one by one where nothing failed in between.
fn assert_acks_on_backends(acks: &[Vec<(u64, Oid, Tid)>], history: &[TxnRecord]) {
    let stored: HashSet<(Oid, Tid)> = history
        .iter()
        .flat_map(|t| t.records.iter().map(|r| (r.oid, r.tid)))
        .collect();
    for (i, a) in acks.iter().enumerate() {
        let mut last = 0;
        for &(n, oid, tid) in a {
            assert!(n > last, "client {i}: ack {n} after {last}");
            last = n;
            assert!(
                stored.contains(&(oid, tid)),
                "client {i}: acknowledged commit {n} ({oid}, tid {tid}) is not on the backends"
            );
        }
    }
}

/// etcd, two backends, two controllers (ctl-a leading, ctl-b standing
/// by) and four stock clients committing through them.
struct Site {
    etcd: Etcd,
    backends: Backends,
    _dir: tempfile::TempDir,
    ctls: Vec<Ctl>,
    clients: Vec<Py>,
    stop: PathBuf,
}

const CLIENTS: usize = 4;

impl Site {
    fn start(etcd_members: usize) -> Site {
        let python = common::python();
        let etcd = Etcd::start(etcd_members);
        let backends = Backends::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let eps = etcd.endpoints();
        let mut ctls = vec![
            Ctl::new(dir.path(), "ctl-a", &backends, &eps),
            Ctl::new(dir.path(), "ctl-b", &backends, &eps),
        ];
        ctls[0].start();
        wait_for(Duration::from_secs(10), "ctl-a leads", || {
            ctls[0].leads().then_some(())
        });
        ctls[1].start();
        wait_for(Duration::from_secs(10), "ctl-b stands by", || {
            ctls[1].stands_by_for("ctl-a").then_some(())
        });
        setup_counters(&python, ctls[0].port, CLIENTS);
        let stop = dir.path().join("STOP");
        let ports = [ctls[0].port, ctls[1].port];
        let clients: Vec<Py> = (0..CLIENTS)
            .map(|i| Py::start(&python, dir.path(), i, &ports, &stop))
            .collect();
        let site = Site {
            etcd,
            backends,
            _dir: dir,
            ctls,
            clients,
            stop,
        };
        site.wait_progress(
            &[0; CLIENTS],
            3,
            Duration::from_secs(20),
            "every client commits",
        );
        site
    }

    /// Waits until controller `i` has both backends optimal (a backend
    /// degraded at a takeover is recovered by then), showing both logs if
    /// not within 30 s.
    fn wait_optimal(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ctls[i].line().contains("(2 of 2 backends optimal)") {
            assert!(
                Instant::now() < deadline,
                "{} did not get both backends optimal within 30 s: {:?}\nctl-a log:\n{}\n\
                 ctl-b log:\n{}",
                self.ctls[i].name,
                self.ctls[i].line(),
                self.ctls[0].log(),
                self.ctls[1].log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn acks(&self) -> Vec<usize> {
        self.clients.iter().map(|c| c.acks().len()).collect()
    }

    /// Waits until every client acknowledged `by` more commits than
    /// `from`, panicking with both logs and the clients' errors after
    /// `limit`.
    fn wait_progress(&self, from: &[usize], by: usize, limit: Duration, what: &str) {
        let deadline = Instant::now() + limit;
        loop {
            let now = self.acks();
            if now.iter().zip(from).all(|(n, f)| *n >= f + by) {
                return;
            }
            if Instant::now() > deadline {
                let errs: Vec<String> = self.clients.iter().map(Py::stderr).collect();
                panic!(
                    "{what}: not every client committed {by} more within {limit:?}: acks \
                     {from:?} -> {now:?}; statuses {:?} / {:?}\nctl-a log:\n{}\nctl-b log:\n{}\n\
                     clients' stderr:\n{}",
                    self.ctls[0].line(),
                    self.ctls[1].line(),
                    self.ctls[0].log(),
                    self.ctls[1].log(),
                    errs.join("\n---\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the clients (each must end cleanly, having caught only the
    /// retried classes) and checks what the backends hold: identical
    /// histories with every acknowledged commit. Returns the number of
    /// acknowledged commits.
    fn finish(&mut self) -> usize {
        std::fs::write(&self.stop, b"").expect("stop the clients");
        let leader = leader_of(&self.ctls, Duration::from_secs(10));
        self.wait_optimal(leader);
        let mut acks = Vec::new();
        for c in self.clients.iter_mut() {
            let out = c.finish();
            let retried = out
                .lines()
                .find_map(|l| l.strip_prefix("retried "))
                .unwrap_or_else(|| panic!("the client's summary:\n{out}\n{}", c.stderr()))
                .to_string();
            eprintln!("client retried {retried}");
            acks.push(c.acks());
        }
        // Nothing may commit while the histories are read (a client's
        // last finish still under way, a takeover's fence): both
        // controllers stop first, cleanly.
        for c in self.ctls.iter_mut() {
            c.stop();
        }
        let history = self.backends.compared_histories().unwrap_or_else(|e| {
            panic!(
                "{e}\nctl-a log:\n{}\nctl-b log:\n{}",
                self.ctls[0].log(),
                self.ctls[1].log()
            )
        });
        assert_acks_on_backends(&acks, &history);
        let total: usize = acks.iter().map(Vec::len).sum();
        eprintln!(
            "{total} acknowledged commits, {} transactions on each backend",
            history.len()
        );
        total
    }
}

/// The serial of the root (the fencing object) on backend `i`: the tid of
/// the latest takeover's fence.
fn fence_tid(backends: &Backends, i: usize) -> Tid {
    let c = connect(backends.addrs()[i].clone()).expect("a backend");
    let root = zeoraid::storage::load(&c, Oid(0)).expect("the root");
    c.close();
    root.start
}

#[test]
fn kill9_of_the_leader_under_four_committing_stock_clients_ten_times() {
    let started = Instant::now();
    let mut site = Site::start(1);
    let mut failovers = Vec::new();
    for round in 0..10 {
        let l = leader_of(&site.ctls, Duration::from_secs(10));
        let other = 1 - l;
        let before = site.acks();
        let killed = Instant::now();
        site.ctls[l].kill9();
        site.wait_progress(
            &before,
            2,
            Duration::from_secs(20),
            &format!("round {round}: through the new leader"),
        );
        failovers.push(killed.elapsed());
        assert!(site.ctls[other].leads(), "round {round}: the standby leads");
        site.ctls[l].start();
        let new_leader = site.ctls[other].name.clone();
        wait_for(
            Duration::from_secs(10),
            &format!("round {round}: the restarted controller stands by"),
            || site.ctls[l].stands_by_for(&new_leader).then_some(()),
        );
    }
    site.finish();
    eprintln!("failovers {failovers:?}, test took {:?}", started.elapsed());
}

/// SIGSTOP the leader for three lease TTLs under the clients: the standby
/// takes over and fences (the backends' `transaction-timeout` takes back
/// the commit lock the paused leader held). Stock ZEO clients wait on
/// their connection to the paused one (ZEO has no call deadline once
/// connected); SIGCONT it: it finds its lease gone, stands by and closes
/// them, and they commit through the new leader. Its commit count moves by
/// at most the commits it held when stopped (they fail at the backends,
/// which aborted them), both backends carry the new fence, and their
/// histories are identical with every acknowledged commit.
#[test]
fn a_leader_paused_past_its_lease_is_fenced_and_stands_by_when_it_wakes() {
    let mut site = Site::start(1);
    for round in 0..2 {
        let l = leader_of(&site.ctls, Duration::from_secs(10));
        let other = 1 - l;
        let commits_before = site.ctls[l].commits().expect("the leader's commit count");
        site.ctls[l].signal("-STOP");
        let stopped = Instant::now();
        wait_for(
            Duration::from_secs(15),
            &format!("round {round}: the standby takes over"),
            || site.ctls[other].leads().then_some(()),
        );
        eprintln!(
            "round {round}: the standby leads {:?} after the SIGSTOP",
            stopped.elapsed()
        );
        let fence = fence_tid(&site.backends, 0);
        std::thread::sleep(Duration::from_secs(3 * LEASE_TTL).saturating_sub(stopped.elapsed()));
        site.ctls[l].signal("-CONT");
        let leader = site.ctls[other].name.clone();
        wait_for(
            Duration::from_secs(10),
            &format!("round {round}: the woken controller stands by"),
            || site.ctls[l].stands_by_for(&leader).then_some(()),
        );
        let commits_after = site.ctls[l].commits().expect("its commit count");
        assert!(
            commits_after <= commits_before + CLIENTS as u64,
            "round {round}: the paused controller counted {} commits after it was stopped",
            commits_after - commits_before
        );
        let before = site.acks();
        site.wait_progress(
            &before,
            2,
            Duration::from_secs(20),
            &format!("round {round}: through the new leader"),
        );
        site.wait_optimal(other);
        assert_eq!(
            fence_tid(&site.backends, 0),
            fence,
            "round {round}: no newer fence on a"
        );
        assert_eq!(
            fence_tid(&site.backends, 1),
            fence,
            "round {round}: both carry the fence"
        );
        // Clients still commit: the backend read second may hold more.
        let (a, b) = (site.backends.history(0), site.backends.history(1));
        let n = a.len().min(b.len());
        if a[..n] != b[..n] {
            panic!(
                "round {round}: the backends differ\nctl-a log:\n{}\nctl-b log:\n{}",
                site.ctls[0].log(),
                site.ctls[1].log()
            );
        }
    }
    site.finish();
}

/// Stop two of three etcd members (SIGSTOP: they hold their sockets and
/// answer nothing) for three lease TTLs: the leader keeps committing and
/// nobody takes over; once they are back, the same leader leads (at once,
/// or after taking the key again if etcd dropped its lease) and no leader
/// change was counted.
#[test]
fn commits_go_on_while_the_etcd_majority_is_down_and_no_failover_follows() {
    let mut site = Site::start(3);
    let changes =
        |site: &Site| -> Vec<Option<u64>> { site.ctls.iter().map(Ctl::leader_changes).collect() };
    let at_start = changes(&site);
    for m in [1, 2] {
        site.etcd.freeze(m, false);
    }
    let before = site.acks();
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(3 * LEASE_TTL) {
        std::thread::sleep(Duration::from_millis(200));
        assert!(site.ctls[0].leads(), "ctl-a leads while etcd has no quorum");
    }
    site.wait_progress(
        &before,
        5,
        Duration::from_secs(5),
        "while etcd has no quorum",
    );
    for m in [1, 2] {
        site.etcd.freeze(m, true);
    }
    // etcd may have dropped ctl-a's lease as it came back (a member
    // stopped past the TTL revokes it on waking): ctl-a asks for the key
    // again at once, and ctl-b, back from the outage, leaves it that turn.
    let settled = Instant::now();
    while !(site.ctls[0].leads() && site.ctls[1].stands_by_for("ctl-a")) {
        assert!(
            settled.elapsed() < Duration::from_secs(3 * LEASE_TTL),
            "ctl-a leads again, ctl-b stands by for it; ctl-a says {:?}, ctl-b says {:?}\n\
             ctl-a log:\n{}\nctl-b log:\n{}",
            site.ctls[0].line(),
            site.ctls[1].line(),
            site.ctls[0].log(),
            site.ctls[1].log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(changes(&site), at_start, "no leader change");
    let before = site.acks();
    site.wait_progress(&before, 2, Duration::from_secs(10), "after etcd returned");
    site.finish();
}

/// `zeoraid ctl ARGS` against controller `c`'s admin listener: exit code,
/// stdout, stderr.
fn ctl(c: &Ctl, args: &[&str]) -> (i32, String, String) {
    let admin = format!("127.0.0.1:{}", c.admin);
    let mut all = vec!["--admin", admin.as_str()];
    all.extend_from_slice(args);
    common::ctl(&all)
}

/// Planned handovers under the four committing stock clients: `ctl
/// switchover` on the leader (three rounds, alternately with `--to`)
/// lets the commit in flight finish, sends the clients over and resigns;
/// the standby takes over and the clients go on with nothing but retried
/// disconnects. Asked of the wrong controller, both requests are refused
/// with a reason. `ctl failover` on the standby while the leader is
/// stopped (SIGSTOP) takes the key from it at once (not by its lease
/// running out: the answer names the leader it took the key from); the
/// woken leader stands by. Every acknowledged commit is on both
/// backends, whose histories are identical.
#[test]
fn switchover_and_failover_on_request_under_four_committing_stock_clients() {
    let mut site = Site::start(1);
    let (code, _, err) = ctl(&site.ctls[1], &["switchover"]);
    assert_eq!(code, 2, "a standby refuses a switchover: {err}");
    assert!(err.contains("does not lead"), "{err}");
    let (code, _, err) = ctl(&site.ctls[0], &["failover"]);
    assert_eq!(code, 2, "the leader refuses a failover: {err}");
    assert!(err.contains("not a standby"), "{err}");
    let (code, _, err) = ctl(&site.ctls[0], &["switchover", "--to", "ctl-a"]);
    assert_eq!(code, 2, "a switchover to itself: {err}");
    let (code, _, err) = ctl(&site.ctls[0], &["switchover", "--to", "ctl-x"]);
    assert_eq!(code, 2, "a switchover to a name nobody runs: {err}");
    assert!(
        err.contains("no controller named \"ctl-x\"") && err.contains("ctl-b"),
        "{err}"
    );
    assert!(site.ctls[0].leads(), "ctl-a still leads");
    // `[ha]` is read at start only: a reload that would change it is
    // refused, naming the change, and the controller goes on as it was.
    let conf = site.ctls[0].dir.join("zeoraid.toml");
    let running = std::fs::read_to_string(&conf).expect("the config");
    let changed = running.replace(
        &format!("lease-ttl = {LEASE_TTL}"),
        &format!("lease-ttl = {}", LEASE_TTL + 1),
    );
    assert_ne!(changed, running, "the test changes the lease TTL");
    std::fs::write(&conf, &changed).expect("write the config");
    let (code, _, err) = ctl(&site.ctls[0], &["reload"]);
    assert_eq!(code, 2, "a reload changing [ha]: {err}");
    assert!(
        err.contains("lease-ttl") && err.contains("restart this controller"),
        "{err}"
    );
    std::fs::write(&conf, &running).expect("restore the config");
    let (code, out, err) = ctl(&site.ctls[0], &["reload"]);
    assert_eq!(code, 0, "the same [ha] reloads: {out}{err}");
    assert!(site.ctls[0].leads(), "ctl-a still leads");
    for round in 0..3 {
        let l = leader_of(&site.ctls, Duration::from_secs(10));
        let other = 1 - l;
        let to = site.ctls[other].name.clone();
        let args: Vec<&str> = if round % 2 == 0 {
            vec!["switchover"]
        } else {
            vec!["switchover", "--to", &to]
        };
        let before = site.acks();
        let asked = Instant::now();
        let (code, out, err) = ctl(&site.ctls[l], &args);
        assert_eq!(code, 0, "round {round}: {args:?}: {out}{err}");
        assert!(out.contains("stopped leading"), "{out}");
        wait_for(
            Duration::from_secs(10),
            &format!("round {round}: {to} leads"),
            || site.ctls[other].leads().then_some(()),
        );
        site.wait_progress(
            &before,
            2,
            Duration::from_secs(20),
            &format!("round {round}: through the new leader"),
        );
        eprintln!(
            "round {round}: {args:?}: commits through {to} {:?} after the request",
            asked.elapsed()
        );
        let leader = site.ctls[other].name.clone();
        wait_for(
            Duration::from_secs(10),
            &format!("round {round}: the old leader stands by"),
            || site.ctls[l].stands_by_for(&leader).then_some(()),
        );
    }
    for c in &site.ctls {
        assert!(
            !c.log().contains("cut off"),
            "a switchover cut a commit off:\n{}",
            c.log()
        );
    }
    // The leader is gone (stopped): the standby takes the key now.
    let l = leader_of(&site.ctls, Duration::from_secs(10));
    let other = 1 - l;
    let before = site.acks();
    site.ctls[l].signal("-STOP");
    let (code, out, err) = ctl(&site.ctls[other], &["failover"]);
    assert_eq!(code, 0, "failover: {out}{err}");
    assert!(
        out.contains(&format!("took the leader key from {}", site.ctls[l].name)),
        "{out}"
    );
    wait_for(Duration::from_secs(10), "the standby leads", || {
        site.ctls[other].leads().then_some(())
    });
    site.ctls[l].signal("-CONT");
    site.wait_progress(
        &before,
        2,
        Duration::from_secs(30),
        "through the controller that failed over",
    );
    let leader = site.ctls[other].name.clone();
    wait_for(
        Duration::from_secs(10),
        "the woken leader stands by",
        || site.ctls[l].stands_by_for(&leader).then_some(()),
    );
    site.finish();
}
