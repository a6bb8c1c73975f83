//! Helpers shared by the integration tests: the Python interpreter with
//! stock ZODB/ZEO, and a `zeoraid serve` child process.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

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

/// The address from the line `zeoraid serve` prints once it listens (its
/// stdout must be piped); fails the test when the first line is not that.
pub fn listening_addr(child: &mut Child) -> SocketAddr {
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    line.trim()
        .strip_prefix("zeoraid: listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("zeoraid did not start: first line {line:?}"))
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
        let conf = dir.join("zeoraid.toml");
        std::fs::write(&conf, config).expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_zeoraid"))
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
