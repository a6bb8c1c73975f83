//! A full disk, for real: the server runs under a file-size limit
//! (RLIMIT_FSIZE via the shell's `ulimit -f`), so a commit that would grow
//! Data.fs past it fails at write time exactly as on a full filesystem. That
//! commit must fail with an error, the file must stay valid, and commits that
//! fit must keep succeeding.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use zeoraid::storage::{Op, Storage, Tid, Txn, TxnMeta, Vote};
use zeoraid::zeo::client::{Client, ClientOptions};

struct Limited(Child);

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// zeoraid with Data.fs limited to `kib` KiB.
fn start_limited(dir: &std::path::Path, kib: u64) -> (Limited, SocketAddr) {
    let conf = dir.join("zeoraid.toml");
    std::fs::write(
        &conf,
        "[[storage]]\nname = \"1\"\nkind = \"file\"\npath = \"Data.fs\"\n",
    )
    .expect("config");
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -f {kib} && exec \"$0\" serve --listen 127.0.0.1:0 --config \"$1\""
        ))
        .arg(env!("CARGO_BIN_EXE_zeoraid"))
        .arg(&conf)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start zeoraid under ulimit");
    let addr = common::listening_addr(&mut child);
    (Limited(child), addr)
}

fn store(c: &Client, size: usize) -> Result<Tid, String> {
    let oid = c.new_oids(1).map_err(|e| e.to_string())?[0];
    let txn = Txn {
        meta: TxnMeta::default(),
        tid: None,
        status: b' ',
        ops: vec![Op::Store {
            oid,
            serial: Tid::ZERO,
            data: Arc::from(vec![b'z'; size]),
        }],
    };
    match c.tpc_vote(&txn).map_err(|e| e.to_string())? {
        Vote::Prepared { .. } => c.tpc_finish().map_err(|e| e.to_string()),
        Vote::Conflicts(cs) => Err(format!("conflicts {cs:?}")),
    }
}

#[test]
fn a_commit_that_does_not_fit_fails_and_the_file_stays_valid() {
    common::python(); // fstest below needs it: fail early when missing
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, addr) = start_limited(dir.path(), 64);
    let c = Client::connect(ClientOptions {
        addr: addr.to_string(),
        call_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    })
    .expect("connect");
    let first = store(&c, 1000).expect("a small commit fits");
    let err = store(&c, 100 * 1024).expect_err("100 KiB cannot fit under a 64 KiB limit");
    assert!(err.contains("Data.fs"), "the error names the file: {err}");
    let after = store(&c, 1000).expect("commits that fit still succeed");
    assert!(after > first);
    let size = std::fs::metadata(dir.path().join("Data.fs"))
        .expect("Data.fs")
        .len();
    assert!(
        size < 64 * 1024,
        "the failed commit was cut back ({size} bytes)"
    );
    c.close();
    drop(server);
    common::assert_fstest_clean(&dir.path().join("Data.fs"));
}
