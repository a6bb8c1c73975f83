//! Real etcd servers for the HA tests (issue #26): one member or a
//! cluster of several on loopback, each on free ports with a data
//! directory of its own, started from `$ZEORAID_ETCD` (default `etcd` on
//! `PATH`) and waited for (bounded) until `/health` says it has a leader.
//! Every member is killed and reaped on drop.
//!
//! A missing binary fails the test (never skips) with how to install it.

use super::free_port;
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long a cluster may take to start and elect a leader.
const START_LIMIT: Duration = Duration::from_secs(20);

/// One etcd member.
struct Member {
    name: String,
    client_port: u16,
    child: Option<Child>,
    log: PathBuf,
}

/// A running etcd cluster on loopback, killed on drop.
pub struct Etcd {
    members: Vec<Member>,
    pub dir: tempfile::TempDir,
}

/// The etcd binary, checked to run. Panics with install instructions when
/// there is none.
pub fn etcd_binary() -> PathBuf {
    let (bin, origin) = match std::env::var_os("ZEORAID_ETCD") {
        Some(p) => (PathBuf::from(p), "$ZEORAID_ETCD"),
        None => (
            PathBuf::from("etcd"),
            "`etcd` on PATH (ZEORAID_ETCD is unset)",
        ),
    };
    let how = "Run `bash tests/run-all.sh` (it installs etcd), or install etcd 3.4+ \
               yourself (Debian: apt-get install etcd-server) and put it on PATH or \
               point ZEORAID_ETCD at the binary.";
    match Command::new(&bin).arg("--version").output() {
        Ok(o) if o.status.success() => bin,
        Ok(o) => panic!(
            "{origin} = {} --version failed:\n{}\n{how}",
            bin.display(),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("cannot run {origin} = {}: {e}\n{how}", bin.display()),
    }
}

impl Etcd {
    /// A cluster of `n` members; returns once every member is healthy.
    pub fn start(n: usize) -> Etcd {
        let bin = etcd_binary();
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        let cluster = names
            .iter()
            .zip(&ports)
            .map(|(name, (_, peer))| format!("{name}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("zeoraid-test-{}-{}", std::process::id(), ports[0].0);
        let mut members = Vec::new();
        for (name, (client, peer)) in names.iter().zip(&ports) {
            let log = dir.path().join(format!("{name}.log"));
            let out = File::create(&log).expect("create the etcd log");
            let child = Command::new(&bin)
                .arg("--name")
                .arg(name)
                .arg("--data-dir")
                .arg(dir.path().join(name))
                .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
                .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
                ))
                .arg(format!("--initial-cluster={cluster}"))
                .arg(format!("--initial-cluster-token={token}"))
                .arg("--initial-cluster-state=new")
                // Fast elections: a killed leader is replaced within a second.
                .args(["--heartbeat-interval=50", "--election-timeout=500"])
                .stdin(Stdio::null())
                .stdout(Stdio::from(out.try_clone().expect("clone log handle")))
                .stderr(Stdio::from(out))
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
            members.push(Member {
                name: name.clone(),
                client_port: *client,
                child: Some(child),
                log,
            });
        }
        let mut e = Etcd { members, dir };
        e.wait_healthy();
        e
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + START_LIMIT;
        for i in 0..self.members.len() {
            loop {
                if health(self.members[i].client_port) {
                    break;
                }
                if let Some(c) = self.members[i].child.as_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        panic!(
                            "etcd {} exited with {status} before it was healthy:\n{}",
                            self.members[i].name,
                            self.log(i)
                        );
                    }
                }
                if Instant::now() > deadline {
                    panic!(
                        "etcd {} not healthy within {START_LIMIT:?}:\n{}",
                        self.members[i].name,
                        self.log(i)
                    );
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// host:port of every member's client URL, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client_port)
    }

    /// Member `i`'s output so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.members[i].log).unwrap_or_default()
    }

    /// SIGKILLs member `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOPs member `i` (`cont`: SIGCONTs it): it keeps its sockets but
    /// answers nothing, as a hung or partitioned member would.
    pub fn freeze(&mut self, i: usize, cont: bool) {
        let Some(c) = self.members[i].child.as_ref() else {
            panic!("etcd {} is not running", self.members[i].name)
        };
        let sig = if cont { "-CONT" } else { "-STOP" };
        let st = Command::new("kill")
            .arg(sig)
            .arg(c.id().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill {sig} {}: {st}", c.id());
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// `GET /health` on the member at `port` answers `"health":"true"`.
fn health(port: u16) -> bool {
    let addr = ([127, 0, 0, 1], port).into();
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    raw.starts_with("HTTP/1.1 200") && raw.contains(r#""health":"true""#)
}
