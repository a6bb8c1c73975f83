#![cfg(all(feature = "admin", feature = "bench"))]
//! Off-site mirrors end to end: `zeoraid serve` with two file mirrors and
//! an off-site ZEO backend (a zeoraid server with a file storage) behind a
//! proxy that adds a 50 ms one-way delay and caps the bandwidth. Commits
//! never wait for it; it converges to the same history (every transaction
//! and record, through the iterator); a cut link costs clients nothing and
//! heals by itself; `ctl status` warns while it is degraded or past
//! `max-lag` and is OK once it has caught up; after `kill -9` of zeoraid
//! while it lags, the restarted zeoraid catches it up from its file
//! mirrors.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeoraid::bench::fanout::local_server_options;
use zeoraid::bench::proxy::Proxy;
use zeoraid::server::Server;
use zeoraid::storage::file::{FileOptions, FileStorage};
use zeoraid::storage::*;
use zeoraid::zeo::client::{Client, ClientOptions};

/// The off-site site: a zeoraid server with a file storage.
fn dr_server(dir: &Path) -> Server {
    let fs = FileStorage::open(&dir.join("dr.fs"), FileOptions::default()).expect("dr storage");
    Server::start(
        local_server_options(Some(4)),
        vec![("1".into(), Arc::new(fs), false)],
    )
    .expect("dr server")
}

struct Zeoraid {
    child: Child,
    port: u16,
    admin: u16,
}

impl Zeoraid {
    fn start(dir: &Path, dr: std::net::SocketAddr, port: u16, admin: u16) -> Zeoraid {
        let conf = dir.join("zeoraid.toml");
        std::fs::write(
            &conf,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
                 [[storage]]\nname = \"1\"\nkind = \"raid\"\nauto-recover = false\n\
                 [[storage.backend]]\nname = \"a\"\nkind = \"file\"\npath = \"a.fs\"\n\
                 [[storage.backend]]\nname = \"b\"\nkind = \"file\"\npath = \"b.fs\"\n\
                 [[storage.backend]]\nname = \"dr\"\nkind = \"zeo\"\naddress = \"{dr}\"\n\
                 mode = \"offsite\"\nmax-lag = 2\n"
            ),
        )
        .expect("config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_zeoraid"))
            .args(["serve", "--config"])
            .arg(&conf)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start zeoraid");
        common::listening_addr(&mut child);
        Zeoraid { child, port, admin }
    }

    fn client(&self) -> Client {
        connect(&format!("127.0.0.1:{}", self.port))
    }

    /// The array's off-site mirror in the status document.
    fn mirror(&self) -> serde_json::Value {
        let body = common::http_get(([127, 0, 0, 1], self.admin).into(), "/details");
        let doc: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        doc["1"]["raid"]["offsite"][0].clone()
    }

    fn ctl_status(&self) -> (i32, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_zeoraid"))
            .args([
                "ctl",
                "--admin",
                &format!("127.0.0.1:{}", self.admin),
                "status",
            ])
            .output()
            .expect("ctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn wait_for(&self, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let m = self.mirror();
            if ok(&m) {
                return m;
            }
            assert!(Instant::now() < deadline, "{what}: {m}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until the mirror holds the array's last transaction.
    fn converged(&self, array: &Client) -> serde_json::Value {
        let last = array.last_transaction().expect("last").to_string();
        self.wait_for("the off-site mirror did not converge", |m| {
            m["last-tid"].as_str() == Some(last.as_str()) && m["lag-transactions"] == 0
        })
    }

    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Zeoraid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn connect(addr: &str) -> Client {
    Client::connect(ClientOptions {
        addr: addr.to_string(),
        call_timeout: Duration::from_secs(30),
        ..ClientOptions::default()
    })
    .expect("connect")
}

/// `n` commits of `size` bytes on `threads` connections; every one must
/// succeed (the off-site mirror never fails a client).
fn load(z: &Zeoraid, threads: usize, n: usize, size: usize) {
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let c = z.client();
                for i in 0..n {
                    let oid = c.new_oids(1).expect("oid")[0];
                    let txn = Txn {
                        meta: TxnMeta {
                            user: b"offsite".to_vec(),
                            description: format!("thread {t} commit {i}").into_bytes(),
                            extension: Vec::new(),
                        },
                        tid: None,
                        status: b' ',
                        ops: vec![Op::Store {
                            oid,
                            serial: Tid::ZERO,
                            data: vec![(i % 251) as u8; size].into(),
                        }],
                    };
                    match c.tpc_vote(&txn).expect("vote") {
                        Vote::Prepared { .. } => {
                            c.tpc_finish().expect("finish");
                        }
                        Vote::Conflicts(x) => panic!("conflicts {x:?}"),
                    }
                }
                c.close();
            });
        }
    });
}

/// Every transaction, record by record.
fn history(c: &Client) -> Vec<TxnRecord> {
    c.iterator(None, None)
        .expect("iterator")
        .map(|t| t.expect("transaction"))
        .collect()
}

fn assert_same_history(array: &Client, dr: &Client) {
    let (a, d) = (history(array), history(dr));
    assert_eq!(a.len(), d.len(), "transactions");
    for (x, y) in a.iter().zip(&d) {
        assert_eq!(x, y, "transaction {}", x.tid);
    }
}

#[test]
fn an_offsite_mirror_over_a_slow_link_converges_survives_outages_and_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let dr = dr_server(d);
    let link = Proxy::start(dr.local_addr()).expect("proxy");
    link.set_delay(Duration::from_millis(50));
    link.set_bandwidth(2_000_000);
    let (port, admin) = (common::free_port(), common::free_port());
    let z = Zeoraid::start(d, link.addr(), port, admin);
    let array = z.client();
    let dr_client = connect(&dr.local_addr().to_string());

    // Load: commits answer as without the mirror; it converges.
    load(&z, 4, 100, 1000);
    let m = z.converged(&array);
    assert_eq!(m["state"], "replicating", "{m}");
    assert_eq!(m["reads"], 0, "{m}");
    assert_same_history(&array, &dr_client);
    let (code, line) = z.ctl_status();
    assert_eq!(code, 0, "{line}");
    assert!(line.contains("off-site dr"), "{line}");

    // The link goes down for a few hundred commits: no client notices,
    // status warns, and it heals by itself once the link is back.
    link.set_swallow(true);
    link.cut();
    load(&z, 4, 75, 500);
    z.wait_for("the mirror should be degraded", |m| {
        m["state"] == "degraded"
    });
    let (code, line) = z.ctl_status();
    assert_eq!(code, 1, "{line}");
    assert!(line.contains("off-site dr is degraded"), "{line}");
    link.set_swallow(false);
    z.converged(&array);
    assert_same_history(&array, &dr_client);
    let (code, line) = z.ctl_status();
    assert_eq!(code, 0, "{line}");

    // Past max-lag (2 s) while the link crawls: WARNING, then OK.
    link.set_bandwidth(20_000);
    load(&z, 2, 50, 2000);
    z.wait_for("the mirror should lag past max-lag", |m| {
        m["lag-seconds"].as_f64().unwrap_or(0.0) > 2.0
            || m["lag-transactions"].as_u64().unwrap_or(0) > 50
    });
    std::thread::sleep(Duration::from_millis(2500));
    let (code, line) = z.ctl_status();
    assert_eq!(code, 1, "{line}");
    assert!(line.contains("behind (max-lag 2 s)"), "{line}");

    // kill -9 while it lags; the restarted zeoraid catches it up from its
    // file mirrors.
    array.close();
    z.kill9();
    link.cut();
    link.set_bandwidth(0);
    let z = Zeoraid::start(d, link.addr(), port, admin);
    let array = z.client();
    z.converged(&array);
    assert_same_history(&array, &dr_client);
    let (code, line) = z.ctl_status();
    assert_eq!(code, 0, "{line}");
}
