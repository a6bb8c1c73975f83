//! Helpers shared by the integration tests: the Python interpreter with
//! stock ZODB/ZEO, a `zeoraid serve` child process, an in-process server,
//! a one-store commit and real etcd members ([`etcd`]).
#![allow(dead_code)]

pub mod certs;
pub mod etcd;
pub mod gate;

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use zeoraid::server::{Options, Server};
use zeoraid::storage::{Data, Error, Oid, Op, Storage, Tid, Txn, TxnMeta, Vote};

/// An in-process zeoraid server on `127.0.0.1:0` with `workers` workers,
/// serving `storage` as "1".
pub fn serve_with(storage: Arc<dyn Storage>, workers: usize) -> Server {
    let any = "127.0.0.1:0".parse().expect("a loopback address");
    serve_on(any, storage, workers)
}

/// An in-process zeoraid server on `listen` (say, the port a stopped one
/// had), as [`serve_with`].
pub fn serve_on(listen: SocketAddr, storage: Arc<dyn Storage>, workers: usize) -> Server {
    serve_on_with(listen, storage, workers, None)
}

/// [`serve_on`] with ZEO's `transaction-timeout` (a client holding the
/// commit lock longer is disconnected and its transaction aborted).
#[allow(dead_code)]
pub fn serve_on_with(
    listen: SocketAddr,
    storage: Arc<dyn Storage>,
    workers: usize,
    transaction_timeout: Option<std::time::Duration>,
) -> Server {
    Server::start(
        Options {
            listen: listen.into(),
            workers,
            max_frame: 1 << 24,
            invalidation_queue_size: 100,
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

/// Polls `f` every 50 ms until it gives `Some`, failing after `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Every transaction of the ZEO server at `addr` (storage "1"), oldest
/// first.
pub fn history_of(addr: String) -> Vec<zeoraid::storage::TxnRecord> {
    let c = zeoraid::zeo::client::Client::connect(zeoraid::zeo::client::ClientOptions {
        call_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
        ..zeoraid::zeo::client::ClientOptions::new(addr)
    })
    .expect("connect to a backend");
    let h = c
        .iterator(None, None)
        .expect("iterate a backend")
        .collect::<Result<Vec<_>, _>>()
        .expect("a backend's history");
    c.close();
    h
}

/// `zeoraid ctl ARGS`: (exit code, stdout, stderr).
#[allow(dead_code)]
pub fn ctl(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zeoraid"))
        .arg("ctl")
        .args(args)
        .output()
        .expect("run zeoraid ctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A commit of one store: `data` as the revision of `oid` after `serial`.
/// Conflicts are an error (the caller is the object's only writer).
pub fn commit_store(c: &dyn Storage, oid: Oid, serial: Tid, data: &[u8]) -> Result<Tid, Error> {
    let t = Txn {
        meta: TxnMeta::default(),
        tid: None,
        status: b' ',
        ops: vec![Op::Store {
            oid,
            serial,
            data: Data::from(data),
        }],
    };
    match c.tpc_vote(&t)? {
        Vote::Prepared { .. } => c.tpc_finish(),
        Vote::Conflicts(cs) => {
            c.tpc_abort();
            Err(Error::Value(format!("unexpected conflicts {cs:?}")))
        }
    }
}

/// The venv python, checked to import ZODB, ZEO and msgpack. Panics (fails
/// the test, never skips) with instructions when there is none.
pub fn python() -> PathBuf {
    let (py, origin) = match std::env::var_os("ZEORAID_PYTHON") {
        Some(p) => (PathBuf::from(p), "$ZEORAID_PYTHON"),
        None => (
            Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
            "the crate's .venv/bin/python (ZEORAID_PYTHON is unset)",
        ),
    };
    let out = Command::new(&py)
        .args(["-c", "import ZODB, ZEO, msgpack"])
        .output();
    match out {
        Ok(o) if o.status.success() => py,
        Ok(o) => panic!(
            "{origin} = {} cannot import ZODB, ZEO and msgpack:\n{}\n\
             Run `bash tests/run-all.sh` once (it creates .venv), or point \
             ZEORAID_PYTHON at a virtualenv python with `pip install ZODB ZEO msgpack`.",
            py.display(),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "cannot run {origin} = {}: {e}\n\
             Run `bash tests/run-all.sh` once (it creates .venv), or point \
             ZEORAID_PYTHON at a virtualenv python with `pip install ZODB ZEO msgpack`.",
            py.display()
        ),
    }
}

/// Run the venv python with `args` and return its stdout; a failure fails
/// the test with its stdout and stderr.
pub fn run_python<S: AsRef<OsStr>>(args: &[S]) -> String {
    let out = Command::new(python())
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// ZODB's own checker finds no error in the Data.fs at `path`.
pub fn assert_fstest_clean(path: &Path) {
    run_python(&[
        OsStr::new("-m"),
        OsStr::new("ZODB.scripts.fstest"),
        path.as_os_str(),
    ]);
}

/// What follows "zeoraid: listening on " in the line `zeoraid serve`
/// prints once it listens (`HOST:PORT` or `unix:PATH`; its stdout must be
/// piped); fails the test when the first line is not that.
pub fn listening_on(child: &mut Child) -> String {
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    line.trim()
        .strip_prefix("zeoraid: listening on ")
        .unwrap_or_else(|| panic!("zeoraid did not start: first line {line:?}"))
        .to_string()
}

/// [`listening_on`] for a TCP listener: its address.
pub fn listening_addr(child: &mut Child) -> SocketAddr {
    let at = listening_on(child);
    at.parse()
        .unwrap_or_else(|_| panic!("zeoraid listens on {at:?}, not a TCP address"))
}

/// A `zeoraid serve` child process, killed on drop.
pub struct ZeoraidProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl ZeoraidProcess {
    /// Start the binary with `config` (TOML text written to `dir/zeoraid.toml`),
    /// listening on a free port; waits for the listening line.
    pub fn start(dir: &Path, config: &str) -> ZeoraidProcess {
        ZeoraidProcess::start_under(dir, config, &[])
    }

    /// Start it as `start` does, under a command such as
    /// `taskset -c 0` (`wrapper` empty: directly).
    pub fn start_under(dir: &Path, config: &str, wrapper: &[&str]) -> ZeoraidProcess {
        let conf = dir.join("zeoraid.toml");
        std::fs::write(&conf, config).expect("write config");
        let bin = env!("CARGO_BIN_EXE_zeoraid");
        let mut cmd = match wrapper.split_first() {
            None => Command::new(bin),
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
        };
        let mut child = cmd
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&conf)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start zeoraid");
        let addr = listening_addr(&mut child);
        ZeoraidProcess { child, addr }
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ZeoraidProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A running `runzeo`, killed on drop.
pub struct RunZeo {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    conflict_resolution: bool,
    /// Its FileStorage has a `blob-dir` (`dir/blobs`).
    blobs: bool,
    /// `msgpack true` in its `<zeo>` section; false: runzeo's default
    /// configuration, the pickle flavour ("Z5").
    msgpack: bool,
    pub python: PathBuf,
}

impl RunZeo {
    pub fn start() -> RunZeo {
        RunZeo::start_with(true)
    }

    /// `conflict_resolution`: runzeo's `client-conflict-resolution`, which
    /// makes `vote` answer conflicts instead of raising ConflictError.
    pub fn start_with(conflict_resolution: bool) -> RunZeo {
        RunZeo::start_flavour(conflict_resolution, true)
    }

    /// A runzeo with its default `<zeo>` section (no `msgpack` line): it
    /// speaks the pickle flavour.
    pub fn start_pickle_with(conflict_resolution: bool) -> RunZeo {
        RunZeo::start_flavour(conflict_resolution, false)
    }

    fn start_flavour(conflict_resolution: bool, msgpack: bool) -> RunZeo {
        let mut z = RunZeo {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            conflict_resolution,
            blobs: false,
            msgpack,
            python: python(),
        };
        z.spawn_on_a_free_port();
        z
    }

    /// A runzeo whose FileStorage keeps blobs in [`RunZeo::blob_dir`].
    pub fn start_with_blobs() -> RunZeo {
        let mut z = RunZeo {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            conflict_resolution: true,
            blobs: true,
            msgpack: true,
            python: python(),
        };
        z.spawn_on_a_free_port();
        z
    }

    /// The first start: a port [`free_port`] gave may be taken by another
    /// test before runzeo binds it (runzeo then exits); take another one.
    fn spawn_on_a_free_port(&mut self) {
        for _ in 0..5 {
            match self.try_spawn() {
                Ok(()) => return,
                Err(e) => {
                    eprintln!("runzeo on port {}: {e}; trying another port", self.port);
                    self.port = free_port();
                }
            }
        }
        panic!("runzeo did not start on five ports:\n{}", self.log());
    }

    pub fn blob_dir(&self) -> PathBuf {
        self.dir.path().join("blobs")
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("runzeo.log")).unwrap_or_default()
    }

    /// Start (again) on `self.port`; panics if it does not listen.
    fn spawn(&mut self) {
        if let Err(e) = self.try_spawn() {
            panic!("{e}:\n{}", self.log());
        }
    }

    fn try_spawn(&mut self) -> Result<(), String> {
        // Its own log line, not just an open port: another test's server
        // may have the port, and answer for it.
        let listening = format!("listening on ('127.0.0.1', {})", self.port);
        let before = self.log().matches(&listening).count();
        let dir = self.dir.path();
        let conf = dir.join("zeo.conf");
        std::fs::write(
            &conf,
            format!(
                "<zeo>\n  address 127.0.0.1:{}\n{}  client-conflict-resolution {}\n</zeo>\n\
                 <filestorage 1>\n  path {}\n{}</filestorage>\n",
                self.port,
                if self.msgpack { "  msgpack true\n" } else { "" },
                self.conflict_resolution,
                dir.join("Data.fs").display(),
                if self.blobs {
                    format!("  blob-dir {}\n", self.blob_dir().display())
                } else {
                    String::new()
                }
            ),
        )
        .expect("write zeo.conf");
        let log = File::options()
            .create(true)
            .append(true)
            .open(dir.join("runzeo.log"))
            .expect("open runzeo.log");
        let child = Command::new(&self.python)
            .args(["-m", "ZEO.runzeo", "-C"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone log handle")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start runzeo");
        self.child = Some(child);
        self.wait_ready(&listening, before)
    }

    /// Wait (bounded) until this runzeo logs that it listens (once more
    /// than `before` times) and the port accepts connections.
    fn wait_ready(&mut self, listening: &str, before: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.log().matches(listening).count() > before
                && TcpStream::connect_timeout(
                    &format!("127.0.0.1:{}", self.port).parse().expect("addr"),
                    Duration::from_millis(200),
                )
                .is_ok()
            {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Err(format!("runzeo exited with {status} before listening"));
                }
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "runzeo did not listen on port {} within 30 s",
                    self.port
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill and start again on the same port with the same Data.fs.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RunZeo {
    fn drop(&mut self) {
        self.kill();
    }
}

/// GET `path` from an HTTP listener (the admin listener); the body of a
/// 200 answer (anything else fails the test).
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).expect("connect to the admin listener");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}
