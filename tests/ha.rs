//! Controller high availability end to end (issue #26): a real 1-member
//! etcd (`tests/common/etcd.rs`), two in-process zeoraid servers on
//! `Data.fs` files as the backends, and two zeoraid controllers with
//! `[ha]` serving one RAID array over both. Exactly one leads and takes a
//! ZEO `register` and commits; the other accepts connections but does not
//! greet them (its status names the leader); when the leader stops (cleanly: it resigns) or is killed
//! (SIGKILL: its lease expires), the standby fences the backends, greets
//! the client that waited on it (as stock `ZEO.ClientStorage` does: one
//! test runs Python ZEO 5 through a SIGKILL failover), serves,
//! and what was committed before reads back through it; on a new database
//! the first leader creates the root as its fence. A leader etcd says lost
//! the key closes its clients and stands by. Starting with an
//! unreachable etcd, or under the name of a live controller, is refused.

mod common;

use common::etcd::Etcd;
use common::wait_for;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeoraid::config::{BackendConfig, Config, StorageConfig};
use zeoraid::server::Server;
use zeoraid::storage::file::{FileOptions, FileStorage};
use zeoraid::storage::{Oid, Storage, Tid};
use zeoraid::zeo::client::{Client, ClientOptions};
use zeoraid::Zeoraid;

const LEASE_TTL: u64 = 2;

/// Two backends: zeoraid servers on a `Data.fs` each; with `root`, a
/// database root (fencing rewrites it) committed through a plain array over
/// both, so they hold the same history. Without, the first leader creates
/// the root as its fence.
struct Backends {
    _dir: tempfile::TempDir,
    servers: Vec<Server>,
}

impl Backends {
    fn start() -> Backends {
        Backends::start_with(true)
    }

    fn start_with(root: bool) -> Backends {
        let dir = tempfile::tempdir().expect("tempdir");
        let servers: Vec<Server> = ["a", "b"]
            .iter()
            .map(|n| {
                let fs =
                    FileStorage::open(&dir.path().join(format!("{n}.fs")), FileOptions::default())
                        .expect("a Data.fs");
                common::serve_with(Arc::new(fs), 4)
            })
            .collect();
        let b = Backends { _dir: dir, servers };
        if !root {
            return b;
        }
        let mut cfg = b.config(None);
        cfg.ha = None;
        let plain = Zeoraid::start(&cfg).expect("a plain array over the backends");
        let array = plain.storage("1").expect("storage 1");
        common::commit_store(&*array, Oid(0), Tid(0), b"root").expect("commit the root");
        plain.shutdown();
        b
    }

    fn addrs(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| s.local_addr().to_string())
            .collect()
    }

    /// A controller's config: the array over both backends and, with
    /// `ha`, `[ha]` as (etcd endpoints, controller name).
    fn config(&self, ha: Option<(Vec<String>, &str)>) -> Config {
        let mut cfg = Config::default();
        cfg.server.listen = "127.0.0.1:0".into();
        cfg.server.workers = Some(2);
        let addrs = self.addrs();
        cfg.storage.push(StorageConfig::raid(
            "1",
            vec![
                BackendConfig::zeo("a", &addrs[0], "1"),
                BackendConfig::zeo("b", &addrs[1], "1"),
            ],
        ));
        cfg.ha = ha.map(|(endpoints, name)| zeoraid::config::ha::HaConfig {
            endpoints,
            cluster: "test".into(),
            name: name.into(),
            lease_ttl: Some(LEASE_TTL),
            renew_interval: Some(0.5),
        });
        cfg
    }

    /// The same as a TOML file for `zeoraid serve`.
    fn toml(&self, etcd: &str, name: &str) -> String {
        let a = self.addrs();
        format!(
            "[server]\nworkers = 2\n\n[[storage]]\nname = \"1\"\nkind = \"raid\"\n\n\
             [[storage.backend]]\nname = \"a\"\nkind = \"zeo\"\naddress = \"{}\"\nstorage = \"1\"\n\n\
             [[storage.backend]]\nname = \"b\"\nkind = \"zeo\"\naddress = \"{}\"\nstorage = \"1\"\n\n\
             [ha]\nendpoints = [\"{etcd}\"]\ncluster = \"test\"\nname = \"{name}\"\n\
             lease-ttl = {LEASE_TTL}\nrenew-interval = 0.5\n",
            a[0], a[1]
        )
    }
}

fn connect(addr: String) -> zeoraid::storage::Result<Client> {
    Client::connect(ClientOptions {
        call_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
        ..ClientOptions::new(addr)
    })
}

/// The HA part of a running controller's status.
fn role(z: &Zeoraid) -> zeoraid::status::HaStatus {
    let doc = z.status_source().document();
    doc.get("1")
        .and_then(|s| s.ha.clone())
        .expect("the status shows the HA role")
}

fn leads(z: &Zeoraid) -> bool {
    role(z).role == "leader"
}

/// A controller `name` over `backends`, once it leads (10 s at most).
fn start_leading(backends: &Backends, etcd: &Etcd, name: &str) -> Zeoraid {
    let z = Zeoraid::start(&backends.config(Some((etcd.endpoints(), name)))).expect(name);
    wait_for(Duration::from_secs(10), &format!("{name} leads"), || {
        leads(&z).then_some(())
    });
    z
}

/// Commits `data` to `oid` (new) through a ZEO client of `addr`.
fn commit_through(addr: String, oid: u64, data: &[u8]) -> Tid {
    let c = connect(addr.clone()).unwrap_or_else(|e| panic!("register at {addr}: {e}"));
    let tid = common::commit_store(&c, Oid(oid), Tid(0), data)
        .unwrap_or_else(|e| panic!("commit through {addr}: {e}"));
    c.close();
    tid
}

fn read_through(addr: String, oid: u64) -> Vec<u8> {
    let c = connect(addr.clone()).unwrap_or_else(|e| panic!("register at {addr}: {e}"));
    let got = zeoraid::storage::load(&c, Oid(oid))
        .unwrap_or_else(|e| panic!("load {oid} through {addr}: {e}"));
    c.close();
    got.data.to_vec()
}

/// `ctl status` (through the admin listener of `z`) is OK and its line
/// has `line`; each of `metrics` ends a `zeoraid_ha_*` sample line.
#[cfg(feature = "admin")]
fn admin_shows(z: &Zeoraid, line: &str, metrics: &[&str]) {
    let admin = z.admin_addr().expect("an admin listener");
    let health: serde_json::Value =
        serde_json::from_str(&common::http_get(admin, "/status")).expect("a health document");
    assert_eq!(health["code"], 0, "{health}");
    let got = health["line"].as_str().unwrap_or_default();
    assert!(got.contains(line), "{line:?} in {got}");
    let text = common::http_get(admin, "/metrics");
    for want in metrics {
        assert!(
            text.lines()
                .any(|l| l.starts_with("zeoraid_ha_") && l.ends_with(want)),
            "{want} in {text}"
        );
    }
}

/// A standby accepts a connection but does not greet it: a ZEO client
/// waits (and registers once it leads, see [`connect_waiting`]).
fn assert_not_greeted(addr: String) {
    let tried = Client::connect(ClientOptions {
        call_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_millis(700),
        ..ClientOptions::new(addr.clone())
    });
    assert!(tried.is_err(), "the standby at {addr} greeted a client");
}

/// A client connecting to `addr` on a thread, waiting up to 20 s for the
/// greeting (as a stock ZEO client waits on a standby's address).
fn connect_waiting(addr: String) -> std::thread::JoinHandle<zeoraid::storage::Result<Client>> {
    std::thread::spawn(move || {
        Client::connect(ClientOptions {
            call_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(20),
            ..ClientOptions::new(addr)
        })
    })
}

#[test]
fn one_controller_leads_and_the_standby_takes_over_when_it_stops() {
    let etcd = Etcd::start(1);
    let backends = Backends::start();
    let a = start_leading(&backends, &etcd, "ctl-a");
    #[allow(unused_mut)]
    let mut cfg = backends.config(Some((etcd.endpoints(), "ctl-b")));
    #[cfg(feature = "admin")]
    {
        cfg.admin = Some(zeoraid::config::AdminConfig {
            listen: "127.0.0.1:0".into(),
            token_file: None,
        });
    }
    let b = Zeoraid::start(&cfg).expect("ctl-b");
    let seen = wait_for(Duration::from_secs(5), "ctl-b sees ctl-a lead", || {
        let r = role(&b);
        (r.leader.as_deref() == Some("ctl-a")).then_some(r)
    });
    assert_eq!(seen.role, "standby");
    assert_eq!(seen.leader_changes, 0);
    let ra = role(&a);
    assert_eq!(
        (ra.leader.as_deref(), ra.leader_changes, ra.epoch.is_some()),
        (Some("ctl-a"), 1, true)
    );

    let (a_addr, b_addr) = (a.local_addr().to_string(), b.local_addr().to_string());
    commit_through(a_addr.clone(), 1, b"before");
    assert_not_greeted(b_addr.clone());
    // `ctl status` (Nagios): a healthy standby is OK; `/metrics` has the role.
    #[cfg(feature = "admin")]
    admin_shows(
        &b,
        "controller ctl-b: standby (leader ctl-a)",
        &["role=\"standby\"} 1", "leader=\"ctl-a\"} 1"],
    );

    // A client that came to ctl-b while ctl-a led waits for it.
    let waiting = connect_waiting(b_addr.clone());
    std::thread::sleep(Duration::from_millis(300));
    let stopped = Instant::now();
    a.shutdown();
    wait_for(Duration::from_secs(5), "ctl-b leads", || {
        leads(&b).then_some(())
    });
    // Resigned: no need to wait for the lease to expire.
    assert!(
        stopped.elapsed() < Duration::from_secs(LEASE_TTL),
        "took {:?}",
        stopped.elapsed()
    );
    let waited = waiting
        .join()
        .expect("the waiting client's thread")
        .expect("the waiting client registers once ctl-b leads");
    assert_eq!(
        &zeoraid::storage::load(&waited, Oid(1)).expect("load").data[..],
        b"before"
    );
    common::commit_store(&waited, Oid(2), Tid(0), b"after").expect("commit through ctl-b");
    waited.close();
    assert_eq!(read_through(b_addr.clone(), 2), b"after");
    let rb = role(&b);
    assert_eq!(
        (rb.leader.as_deref(), rb.leader_changes),
        (Some("ctl-b"), 1)
    );
    #[cfg(feature = "admin")]
    admin_shows(
        &b,
        "controller ctl-b: leader (epoch ",
        &[
            "role=\"leader\"} 1",
            "zeoraid_ha_leader_changes_total{controller=\"ctl-b\",cluster=\"test\"} 1",
        ],
    );
    // Both backends hold both commits (mirrored, nothing degraded).
    for addr in backends.addrs() {
        let c = connect(addr).expect("a backend");
        for (oid, want) in [(1, &b"before"[..]), (2, &b"after"[..])] {
            assert_eq!(
                &zeoraid::storage::load(&c, Oid(oid)).expect("load").data[..],
                want
            );
        }
    }
    b.shutdown();
}

#[test]
fn the_standby_takes_over_from_a_killed_leader_of_a_new_database() {
    let etcd = Etcd::start(1);
    // No root yet: ctl-a creates it (as ZODB would) when it fences.
    let backends = Backends::start_with(false);
    let dir = tempfile::tempdir().expect("tempdir");
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).expect("mkdir");
    std::fs::create_dir_all(&db).expect("mkdir");
    let ep = etcd.endpoint(0);
    let a = common::ZeoraidProcess::start(&da, &backends.toml(&ep, "ctl-a"));
    let a_addr = a.addr.to_string();
    wait_for(Duration::from_secs(10), "ctl-a takes register", || {
        connect(a_addr.clone()).ok().map(|c| c.close())
    });
    let b = common::ZeoraidProcess::start(&db, &backends.toml(&ep, "ctl-b"));
    let b_addr = b.addr.to_string();
    commit_through(a_addr.clone(), 1, b"before");
    assert_not_greeted(b_addr.clone());
    for addr in backends.addrs() {
        let c = connect(addr.clone()).expect("a backend");
        let root = zeoraid::storage::load(&c, Oid(0)).expect("the root ctl-a created");
        assert_eq!(&root.data[..], zeoraid::raid::fence::NEW_ROOT, "{addr}");
    }

    let waiting = connect_waiting(b_addr.clone());
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    a.kill9();
    let c = waiting
        .join()
        .expect("the waiting client's thread")
        .expect("ctl-b greets the waiting client once it leads");
    let took = killed.elapsed();
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_secs(LEASE_TTL + 5),
        "not after the lease expired: {took:?}"
    );
    c.close();
    assert_eq!(read_through(b_addr.clone(), 1), b"before");
    commit_through(b_addr.clone(), 2, b"after");
    assert_eq!(read_through(b_addr.clone(), 2), b"after");
    // ctl-b fenced by rewriting the root ctl-a created, unchanged.
    assert_eq!(
        &read_through(b_addr.clone(), 0)[..],
        zeoraid::raid::fence::NEW_ROOT
    );
    drop(b);
}

#[test]
fn start_is_refused_without_etcd_or_under_a_live_controllers_name() {
    let backends = Backends::start();
    let nowhere = format!("127.0.0.1:{}", common::free_port());
    let e = Zeoraid::start(&backends.config(Some((vec![nowhere.clone()], "ctl-a"))))
        .err()
        .expect("refused without etcd");
    let e = e.to_string();
    assert!(
        e.contains("cannot reach etcd at") && e.contains(&nowhere),
        "{e}"
    );

    let etcd = Etcd::start(1);
    let a = start_leading(&backends, &etcd, "ctl-a");
    let e = Zeoraid::start(&backends.config(Some((etcd.endpoints(), "ctl-a"))))
        .err()
        .expect("a second ctl-a is refused");
    let e = e.to_string();
    assert!(e.contains("another live controller named \"ctl-a\""), "{e}");
    assert!(leads(&a), "the first ctl-a still leads");
    // A standby's name is taken as well (it holds no leader key, only its
    // registration).
    let b = Zeoraid::start(&backends.config(Some((etcd.endpoints(), "ctl-b")))).expect("ctl-b");
    let e = Zeoraid::start(&backends.config(Some((etcd.endpoints(), "ctl-b"))))
        .err()
        .expect("a second ctl-b is refused");
    let e = e.to_string();
    assert!(
        e.contains("another live controller named \"ctl-b\" runs in cluster"),
        "{e}"
    );
    // A clean stop frees the name at once.
    b.shutdown();
    let started = Instant::now();
    let b = Zeoraid::start(&backends.config(Some((etcd.endpoints(), "ctl-b"))))
        .expect("ctl-b again, after the first one stopped");
    // (A registration left behind would have cost the lease's TTL, 2 s.)
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the name was free at once: {:?}",
        started.elapsed()
    );
    b.shutdown();
    assert!(leads(&a), "ctl-a leads throughout");
    a.shutdown();
}

#[test]
fn a_leader_that_etcd_says_lost_the_key_stops_serving_and_closes_its_clients() {
    let etcd = Etcd::start(1);
    let backends = Backends::start();
    let a = start_leading(&backends, &etcd, "ctl-a");
    let b = Zeoraid::start(&backends.config(Some((etcd.endpoints(), "ctl-b")))).expect("ctl-b");
    let (a_addr, b_addr) = (a.local_addr().to_string(), b.local_addr().to_string());
    commit_through(a_addr.clone(), 1, b"before");
    let held = connect(a_addr.clone()).expect("register at ctl-a");
    assert!(held.is_connected());

    // The key now names a third controller (as after ctl-a's lease ran
    // out and ctl-x won): ctl-a learns it at its next renewal.
    let etcd_client =
        zeoraid::ha::etcd::Client::new(zeoraid::ha::etcd::Options::new(etcd.endpoints()))
            .expect("an etcd client");
    let (lease, _) = etcd_client
        .grant(Duration::from_secs(LEASE_TTL))
        .expect("a lease");
    etcd_client.delete(b"test/leader").expect("delete the key");
    etcd_client
        .put(b"test/leader", b"ctl-x", Some(lease))
        .expect("put the key");
    wait_for(Duration::from_secs(5), "ctl-a stands by", || {
        let r = role(&a);
        (r.role == "standby" && r.leader.as_deref() == Some("ctl-x")).then_some(())
    });
    wait_for(Duration::from_secs(5), "ctl-a closed its client", || {
        (!held.is_connected()).then_some(())
    });
    assert_not_greeted(a_addr.clone());
    wait_for(Duration::from_secs(5), "ctl-b sees ctl-x", || {
        (role(&b).leader.as_deref() == Some("ctl-x")).then_some(())
    });
    assert_not_greeted(b_addr.clone());
    held.close();

    // ctl-x goes away: one of the two takes over, and serves.
    etcd_client.revoke(lease).expect("revoke");
    let leader = wait_for(Duration::from_secs(10), "a new leader", || {
        match (leads(&a), leads(&b)) {
            (true, false) => Some(a_addr.clone()),
            (false, true) => Some(b_addr.clone()),
            _ => None,
        }
    });
    assert_eq!(read_through(leader.clone(), 1), b"before");
    commit_through(leader.clone(), 2, b"after");
    assert!(!(leads(&a) && leads(&b)), "exactly one controller leads");
    a.shutdown();
    b.shutdown();
}

#[test]
fn a_leader_fenced_out_at_the_backends_stops_serving_without_etcd_saying_so() {
    let etcd = Etcd::start(1);
    let backends = Backends::start();
    let a = start_leading(&backends, &etcd, "ctl-a");
    let b = Zeoraid::start(&backends.config(Some((etcd.endpoints(), "ctl-b")))).expect("ctl-b");
    let (a_addr, b_addr) = (a.local_addr().to_string(), b.local_addr().to_string());
    commit_through(a_addr.clone(), 1, b"before");
    let held = connect(a_addr.clone()).expect("register at ctl-a");

    // Another controller fences the backends behind etcd's back (say it
    // won the key while ctl-a was paused, and ctl-a has not renewed yet).
    let mut plain = backends.config(None);
    plain.ha = None;
    let other = zeoraid::open::open_served(&plain.storage[0]).expect("another controller's array");
    let other_array = other.array.clone().expect("a RAID array");
    other_array
        .take_fence(1 << 40, "ctl-x")
        .expect("ctl-x fences the backends");
    // Its vote fails at the fence; the client is sent away (its
    // connection closed, as a ZEO server going away would), so a stock
    // client raises ClientDisconnected, which applications retry.
    let refused = common::commit_store(&held, Oid(3), Tid(0), b"stale");
    assert!(
        matches!(&refused, Err(zeoraid::storage::Error::Disconnected(e)) if e.contains("closed")),
        "{refused:?}"
    );
    assert!(
        a.status_source().document()["1"]
            .raid
            .as_ref()
            .and_then(|r| r.fence.as_ref())
            .is_some_and(|f| f.state == "lost" || f.state == "standby"),
        "ctl-a knows it was fenced out (and may already stand by)"
    );
    other.storage.close();
    wait_for(Duration::from_secs(5), "ctl-a closed its client", || {
        (!held.is_connected()).then_some(())
    });
    held.close();
    // ctl-a gave its key up: one of the two takes over and fences anew.
    let leader = wait_for(Duration::from_secs(10), "a new leader", || {
        match (leads(&a) && role(&a).leader_changes == 2, leads(&b)) {
            (true, false) => Some(a_addr.clone()),
            (false, true) => Some(b_addr.clone()),
            _ => None,
        }
    });
    assert_eq!(read_through(leader.clone(), 1), b"before");
    commit_through(leader.clone(), 2, b"after");
    for addr in backends.addrs() {
        let c = connect(addr).expect("a backend");
        assert!(
            zeoraid::storage::load(&c, Oid(3)).is_err(),
            "nothing stale committed"
        );
    }
    a.shutdown();
    b.shutdown();
}

/// Stock `ZEO.ClientStorage([standby, leader])` through a failover: it
/// commits through the leader, and after the leader is SIGKILLed its next
/// commit (retried by the application, as ZODB apps retry a
/// `ClientDisconnected`) goes through the new leader, which sees the
/// earlier one.
const STOCK_CLIENT: &str = r#"
import sys, time, transaction, ZEO.ClientStorage
from ZODB import DB
standby, leader = int(sys.argv[1]), int(sys.argv[2])
st = ZEO.ClientStorage.ClientStorage(
    [('127.0.0.1', standby), ('127.0.0.1', leader)], wait_timeout=5)
db = DB(st)
conn = db.open()
root = conn.root()
root['x'] = 1
transaction.commit()
print('first', flush=True)
sys.stdin.readline()
deadline = time.time() + 30
while True:
    try:
        transaction.begin()
        root['x'] = root['x'] + 1
        transaction.commit()
        break
    except Exception as e:
        transaction.abort()
        if time.time() > deadline:
            raise
        time.sleep(0.2)
print('second', root['x'], flush=True)
db.close()
"#;

#[test]
fn a_stock_zeo_client_fails_over_when_the_leader_is_killed() {
    use std::io::{BufRead, BufReader, Write};
    let python = common::python();
    let etcd = Etcd::start(1);
    // A new database: ZODB opens the root ctl-a creates when it fences.
    let backends = Backends::start_with(false);
    let dir = tempfile::tempdir().expect("tempdir");
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).expect("mkdir");
    std::fs::create_dir_all(&db).expect("mkdir");
    let ep = etcd.endpoint(0);
    let a = common::ZeoraidProcess::start(&da, &backends.toml(&ep, "ctl-a"));
    let a_addr = a.addr.to_string();
    wait_for(Duration::from_secs(10), "ctl-a takes register", || {
        connect(a_addr.clone()).ok().map(|c| c.close())
    });
    let b = common::ZeoraidProcess::start(&db, &backends.toml(&ep, "ctl-b"));
    let mut client = std::process::Command::new(python)
        .args(["-c", STOCK_CLIENT])
        .arg(b.addr.port().to_string())
        .arg(a.addr.port().to_string())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the stock ZEO client");
    let mut out = BufReader::new(client.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read");
    if line.trim() != "first" {
        let _ = client.kill();
        let mut err = String::new();
        if let Some(mut e) = client.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        panic!("the stock client did not commit through ctl-a: {line}\n{err}");
    }
    let killed = Instant::now();
    a.kill9();
    writeln!(client.stdin.as_mut().expect("stdin")).expect("tell the client");
    line.clear();
    out.read_line(&mut line).expect("read");
    let status = client.wait().expect("the client ends");
    let mut err = String::new();
    if let Some(mut e) = client.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert!(status.success(), "stock client: {line}\n{err}");
    assert_eq!(line.trim(), "second 2", "through ctl-b, after x = 1\n{err}");
    assert!(
        killed.elapsed() < Duration::from_secs(25),
        "{:?}",
        killed.elapsed()
    );
    drop(b);
}

/// `getInvalidations(tid)` through `c`: `None` (drop the cache) or the
/// newest tid and the oids changed after `tid`.
fn get_invalidations(c: &Client, since: Tid) -> Option<(Tid, Vec<Oid>)> {
    let got = c
        .call(
            "getInvalidations",
            vec![zeoraid::zeo::message::tid_value(since)],
        )
        .expect("getInvalidations");
    match got {
        rmpv::Value::Nil => None,
        rmpv::Value::Array(a) => {
            Some(zeoraid::zeo::client::parse_invalidation(&a).expect("a (tid, oids) reply"))
        }
        other => panic!("getInvalidations answered {other:?}"),
    }
}

#[test]
fn a_new_leader_answers_get_invalidations_for_the_old_leaders_commits() {
    use zeoraid::storage::Storage as _;
    let etcd = Etcd::start(1);
    let backends = Backends::start();
    let a = start_leading(&backends, &etcd, "ctl-a");
    let b = Zeoraid::start(&backends.config(Some((etcd.endpoints(), "ctl-b")))).expect("ctl-b");
    wait_for(Duration::from_secs(5), "ctl-b sees ctl-a lead", || {
        (role(&b).leader.as_deref() == Some("ctl-a")).then_some(())
    });
    let (a_addr, b_addr) = (a.local_addr().to_string(), b.local_addr().to_string());
    // A client of ctl-a saw this commit last, then others committed.
    let seen = commit_through(a_addr.clone(), 1, b"seen");
    let mut last = seen;
    for oid in [7, 3, 5] {
        last = commit_through(a_addr.clone(), oid, b"after");
    }
    let on_a = connect(a_addr).expect("register at ctl-a");
    assert_eq!(
        get_invalidations(&on_a, seen),
        Some((last, vec![Oid(3), Oid(5), Oid(7)]))
    );
    on_a.close();

    a.shutdown();
    wait_for(Duration::from_secs(10), "ctl-b leads", || {
        leads(&b).then_some(())
    });
    let c = connect(b_addr).expect("register at ctl-b");
    let newest = c.last_transaction().expect("lastTransaction at ctl-b");
    // ctl-b's fence rewrote the root after ctl-a's last commit: the
    // client learns that too, and nothing it keeps is stale.
    assert!(newest > last, "the fence committed after {last}: {newest}");
    assert_eq!(
        get_invalidations(&c, seen),
        Some((newest, vec![Oid(0), Oid(3), Oid(5), Oid(7)])),
        "the old leader's commits after the client's tid, and the fence"
    );
    assert_eq!(get_invalidations(&c, last), Some((newest, vec![Oid(0)])));
    assert_eq!(get_invalidations(&c, newest), Some((newest, vec![])));
    c.close();
    b.shutdown();
}

/// The old leader died between finishing a transaction on backend a and
/// on backend b (simulated: the transaction is committed on a alone, with
/// an oid past the array's). The standby sees the leader's commits
/// without degrading anything; when it takes over it finds b behind,
/// degrades it, fences, and recovers b (the in-doubt transaction and the
/// fence copied): the backends end identical, the transaction kept, and
/// new oids come after it.
#[test]
fn a_takeover_completes_the_old_leaders_in_doubt_transaction_on_every_backend() {
    let etcd = Etcd::start(1);
    let backends = Backends::start();
    let addrs = backends.addrs();
    let a = start_leading(&backends, &etcd, "ctl-a");
    let b = Zeoraid::start(&backends.config(Some((etcd.endpoints(), "ctl-b")))).expect("ctl-b");
    let optimal = |z: &Zeoraid| {
        let doc = z.status_source().document();
        doc.get("1").and_then(|s| s.raid.clone()).map(|r| r.optimal)
    };
    for oid in 40..45 {
        commit_through(a.local_addr().to_string(), oid, b"through the leader");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        optimal(&b),
        Some(2),
        "the standby took the leader's commits for its own"
    );
    let on_a = connect(addrs[0].clone()).expect("backend a");
    let in_doubt = common::commit_store(&on_a, Oid(99), Tid(0), b"in doubt").expect("on a alone");
    on_a.close();
    a.shutdown();

    wait_for(Duration::from_secs(10), "ctl-b leads", || {
        leads(&b).then_some(())
    });
    wait_for(Duration::from_secs(20), "backend b recovered", || {
        (optimal(&b) == Some(2)).then_some(())
    });
    let (ha, hb) = (
        common::history_of(addrs[0].clone()),
        common::history_of(addrs[1].clone()),
    );
    assert_eq!(ha, hb, "the backends hold the same transactions");
    assert!(
        ha.iter().any(|t| t.tid == in_doubt),
        "the in-doubt transaction is kept"
    );
    let addr = b.local_addr().to_string();
    assert_eq!(read_through(addr.clone(), 99), b"in doubt");
    let client = connect(addr).expect("register at ctl-b");
    let oid = client.new_oids(1).expect("a new oid")[0];
    assert!(oid.0 > 99, "new oids come after the old leader's: {oid}");
    client.close();
    b.shutdown();
}

/// The old leader voted a transaction on both backends and finishes it on
/// a alone while the standby takes over (simulated: a ZEO client of each
/// backend holds the vote, so the commit locks, then finishes on a and
/// aborts on b once the standby is fencing). The standby read both
/// backends' last transactions before it fenced, equal then; its fence
/// waits for the commit locks, and under them it finds b behind: it
/// degrades b, fences a, and recovers b. The backends end identical and
/// the transaction is on both (fenced on both without that look, a would
/// hold a transaction b never gets).
#[test]
fn a_transaction_the_old_leader_finishes_during_the_takeover_is_copied_not_lost() {
    use zeoraid::storage::{Data, Op, Txn, TxnMeta, Vote};
    let etcd = Etcd::start(1);
    let backends = Backends::start();
    let addrs = backends.addrs();
    let a = start_leading(&backends, &etcd, "ctl-a");
    let b = Zeoraid::start(&backends.config(Some((etcd.endpoints(), "ctl-b")))).expect("ctl-b");
    for oid in 40..43 {
        commit_through(a.local_addr().to_string(), oid, b"through the leader");
    }
    let txn = Txn {
        meta: TxnMeta::default(),
        tid: None,
        status: b' ',
        ops: vec![Op::Store {
            oid: Oid(99),
            serial: Tid(0),
            data: Data::from(&b"in doubt"[..]),
        }],
    };
    let on_a = connect(addrs[0].clone()).expect("backend a");
    let on_b = connect(addrs[1].clone()).expect("backend b");
    for (c, n) in [(&on_a, "a"), (&on_b, "b")] {
        let v = c.tpc_vote(&txn);
        assert!(matches!(v, Ok(Vote::Prepared { .. })), "vote on {n}: {v:?}");
    }
    a.shutdown();
    wait_for(Duration::from_secs(10), "ctl-b fences", || {
        (role(&b).role == "fencing").then_some(())
    });
    // Its fence's vote now waits for the commit locks.
    std::thread::sleep(Duration::from_millis(500));
    let in_doubt = on_a.tpc_finish().expect("finish on a");
    on_b.tpc_abort();
    on_b.close();
    on_a.close();
    wait_for(Duration::from_secs(10), "ctl-b leads", || {
        leads(&b).then_some(())
    });
    let optimal = || {
        let doc = b.status_source().document();
        doc.get("1").and_then(|s| s.raid.clone()).map(|r| r.optimal)
    };
    wait_for(Duration::from_secs(20), "backend b recovered", || {
        (optimal() == Some(2)).then_some(())
    });
    let (ha, hb) = (
        common::history_of(addrs[0].clone()),
        common::history_of(addrs[1].clone()),
    );
    assert!(
        ha.iter().any(|t| t.tid == in_doubt),
        "the transaction is on a"
    );
    assert_eq!(ha, hb, "the backends hold the same transactions");
    assert_eq!(read_through(b.local_addr().to_string(), 99), b"in doubt");
    b.shutdown();
}
