//! The examples an embedder starts from run to completion and print what
//! they promise (issue #14): `embed_server` serves the Rust client and a
//! stock ZODB client from a server started in code; `mirror_library`
//! degrades and recovers an in-process array. `cargo test` builds them.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// target/<profile>/examples/NAME, next to this test's deps directory.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds the examples",
        path.display()
    );
    path
}

/// Run it with a deadline; its stdout (fails the test on a non-zero exit).
fn run(name: &str, args: &[&str]) -> String {
    let mut child = Command::new(example(name))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the example starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("example {name} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "example {name} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn assert_lines(out: &str, wanted: &[&str]) {
    for w in wanted {
        assert!(out.contains(w), "missing {w:?} in:\n{out}");
    }
}

#[test]
fn embed_server_serves_the_rust_and_a_stock_zodb_client_then_stops() {
    let python = common::python();
    let out = run(
        "embed_server",
        &["--python", python.to_str().expect("utf-8 path")],
    );
    assert_lines(
        &out,
        &[
            "serving storage \"1\" (an array of 2 file mirrors) on 127.0.0.1:",
            "Rust client: committed 0x",
            "\"stored by the Rust client\"",
            "stock ZODB client: committed and read back 'hello from ZODB'",
            "server stopped",
        ],
    );
}

#[test]
fn mirror_library_degrades_recovers_and_verifies() {
    let out = run("mirror_library", &[]);
    assert_lines(
        &out,
        &[
            "array: optimal (3 of 3): a optimal, b optimal, c optimal",
            "\"counter = 2\"",
            "after b failed: degraded (2 of 3): a optimal, b degraded, c optimal",
            "loaded: \"counter = 10\"",
            "8 transactions copied; array: optimal (3 of 3)",
            "10 transactions, identical",
        ],
    );
}
