//! Helpers the benchmarks share: the Python with stock ZODB/ZEO, free
//! ports, waiting for a server to listen.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `$ZEORAID_PYTHON`, else the crate's `.venv/bin/python` (made by
/// `bash tests/run-all.sh`).
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("ZEORAID_PYTHON") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if !p.exists() {
        panic!("no Python with ZODB/ZEO: set ZEORAID_PYTHON or run `bash tests/run-all.sh` once to create .venv");
    }
    p
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Wait (30 s at most) until `addr` accepts connections.
pub fn wait_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "server at {addr} did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
}
