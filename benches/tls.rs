//! TLS and Unix sockets (issue #13), side by side in one run, all driven
//! by the `zeoraid bench` load generator (8 clients, 1 object of 128 bytes
//! per commit):
//! - zeoraid over TLS vs zeoraid in plaintext (the cost of TLS);
//! - zeoraid over TLS vs Python `runzeo` over TLS (`<ssl>`); both require
//!   client certificates (Python ZEO's `<ssl>` always does: `authenticate`
//!   is mandatory), so both verify one per connection;
//! - zeoraid on a Unix socket vs zeoraid on loopback TCP.
//!
//! For each storage kind (`memory`: zeoraid's memory storage vs runzeo's
//! `<mappingstorage>`; `file`: both file storages, fsync on every commit),
//! each server is fresh and the runs are interleaved (every server once
//! per round) so all see the same machine conditions.
//!
//! Run: `cargo bench --bench tls [-- memory|file]` (release build; both by
//! default). Needs a Python with ZODB 6 + ZEO 6 (`$ZEORAID_PYTHON` or
//! `.venv/bin/python`, made by `bash tests/run-all.sh`). Knobs:
//! `ZEORAID_BENCH_SECONDS` (per run, default 4), `ZEORAID_BENCH_REPEAT`
//! (rounds, default 3; medians are reported). Certificates are made by
//! the run (rcgen), as the tests make theirs.
//!
//! Prints medians and ratios; asserts nothing about timing.

#[path = "../tests/common/certs.rs"]
mod certs;
mod common;

use common::{free_port, median, spawn_runzeo, spawn_zeoraid, wanted};
use std::path::{Path, PathBuf};
use std::process::Child;
use zeoraid::bench::{run, BenchArgs};

const CLIENTS: usize = 8;

struct Proc {
    child: Child,
    name: &'static str,
    address: String,
    /// The CA to verify the server with, when it speaks TLS.
    tls_ca: Option<PathBuf>,
    /// The client certificate and key the bench presents over TLS.
    client: Option<(PathBuf, PathBuf)>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Memory,
    File,
}

/// What a server listens on.
enum On {
    Tcp,
    Tls,
    Unix,
}

fn start_zeoraid(
    dir: &Path,
    kind: Kind,
    on: On,
    tls: &certs::Pair,
    ca: &Path,
    client: &certs::Pair,
) -> Proc {
    std::fs::create_dir_all(dir).expect("dir");
    let storage = match kind {
        Kind::Memory => "kind = \"memory\"".to_string(),
        Kind::File => format!(
            "kind = \"file\"\npath = {:?}",
            dir.join("Data.fs").display().to_string()
        ),
    };
    let (listen, server_tls, name, tls_ca) = match on {
        On::Tcp => (
            "127.0.0.1:0".to_string(),
            String::new(),
            "zeoraid, TCP",
            None,
        ),
        On::Tls => (
            "127.0.0.1:0".to_string(),
            format!(
                "[server.tls]\ncertificate = {:?}\nkey = {:?}\nclient-ca = {:?}\n",
                tls.cert.display().to_string(),
                tls.key.display().to_string(),
                ca.display().to_string()
            ),
            "zeoraid, TLS",
            Some(ca.to_path_buf()),
        ),
        On::Unix => (
            dir.join("zeo.sock").display().to_string(),
            String::new(),
            "zeoraid, Unix socket",
            None,
        ),
    };
    let conf = dir.join("zeoraid.toml");
    std::fs::write(
        &conf,
        format!(
            "[server]\nlisten = {listen:?}\n{server_tls}[[storage]]\nname = \"1\"\n{storage}\n"
        ),
    )
    .expect("config");
    let (child, address) = spawn_zeoraid(&conf, None);
    Proc {
        child,
        name,
        address,
        client: tls_ca
            .as_ref()
            .map(|_| (client.cert.clone(), client.key.clone())),
        tls_ca,
    }
}

fn start_runzeo_tls(
    dir: &Path,
    kind: Kind,
    tls: &certs::Pair,
    ca: &Path,
    client: &certs::Pair,
) -> Proc {
    std::fs::create_dir_all(dir).expect("dir");
    let port = free_port();
    let storage = match kind {
        Kind::Memory => "<mappingstorage 1>\n</mappingstorage>".to_string(),
        Kind::File => format!(
            "<filestorage 1>\n  path {}\n</filestorage>",
            dir.join("Data.fs").display()
        ),
    };
    let conf = dir.join("zeo.conf");
    std::fs::write(
        &conf,
        format!(
            "<zeo>\n  address 127.0.0.1:{port}\n  msgpack true\n  <ssl>\n    certificate {}\n    key {}\n    authenticate {}\n  </ssl>\n</zeo>\n{storage}\n\
             <eventlog>\n  level ERROR\n  <logfile>\n    path STDERR\n  </logfile>\n</eventlog>\n",
            tls.cert.display(),
            tls.key.display(),
            ca.display()
        ),
    )
    .expect("zeo.conf");
    let (child, addr) = spawn_runzeo(&conf, port, None);
    Proc {
        child,
        name: "python runzeo, TLS",
        address: addr.to_string(),
        tls_ca: Some(ca.to_path_buf()),
        client: Some((client.cert.clone(), client.key.clone())),
    }
}

#[derive(Default, Clone, Copy)]
struct Figures {
    commits: f64,
    commit_p99: f64,
    loads: f64,
    loads_pipelined: f64,
}

fn once(p: &Proc, pipeline: usize, seconds: f64) -> serde_json::Value {
    let out = run(&BenchArgs {
        address: p.address.clone(),
        clients: CLIENTS,
        duration: seconds,
        objects_per_txn: 1,
        size: 128,
        pipeline,
        storage: "1".into(),
        json: true,
        tls_ca: p.tls_ca.clone(),
        tls_certificate: p.client.as_ref().map(|c| c.0.clone()),
        tls_key: p.client.as_ref().map(|c| c.1.clone()),
        tls_server_hostname: p.tls_ca.as_ref().map(|_| "localhost".to_string()),
    })
    .unwrap_or_else(|e| panic!("bench against {} failed: {e}", p.name));
    serde_json::from_str(&out).expect("json")
}

fn measure(p: &Proc, seconds: f64) -> Figures {
    let a = once(p, 1, seconds);
    let b = once(p, 16, seconds);
    let f = |j: &serde_json::Value, k: &str| j[k].as_f64().unwrap_or(0.0);
    Figures {
        commits: f(&a, "commits_per_s"),
        commit_p99: f(&a, "commit_p99_ms"),
        loads: f(&a, "loads_per_s"),
        loads_pipelined: f(&b, "loads_per_s"),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with --list
    }
    let env = |k: &str, d: f64| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let seconds = env("ZEORAID_BENCH_SECONDS", 4.0);
    let repeat = env("ZEORAID_BENCH_REPEAT", 3.0).max(1.0) as usize;
    if wanted("memory") {
        compare(Kind::Memory, seconds, repeat);
    }
    if wanted("file") {
        compare(Kind::File, seconds, repeat);
    }
}

fn compare(kind: Kind, seconds: f64, repeat: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = certs::Ca::new(d, "bench");
    let pair = ca.server(d, "server");
    let client = ca.client(d, "bench-client");
    let label = match kind {
        Kind::Memory => "memory storage (runzeo: mappingstorage)",
        Kind::File => "file storage, fsync on every commit (runzeo: filestorage)",
    };
    let servers = [
        start_runzeo_tls(&d.join("py"), kind, &pair, &ca.pem, &client),
        start_zeoraid(&d.join("tls"), kind, On::Tls, &pair, &ca.pem, &client),
        start_zeoraid(&d.join("tcp"), kind, On::Tcp, &pair, &ca.pem, &client),
        start_zeoraid(&d.join("unix"), kind, On::Unix, &pair, &ca.pem, &client),
    ];
    let mut runs: Vec<Vec<Figures>> = vec![Vec::new(); servers.len()];
    for _ in 0..repeat {
        for (i, p) in servers.iter().enumerate() {
            runs[i].push(measure(p, seconds));
        }
    }
    let med: Vec<Figures> = runs
        .iter()
        .map(|r| Figures {
            commits: median(&r.iter().map(|f| f.commits).collect::<Vec<_>>()),
            commit_p99: median(&r.iter().map(|f| f.commit_p99).collect::<Vec<_>>()),
            loads: median(&r.iter().map(|f| f.loads).collect::<Vec<_>>()),
            loads_pipelined: median(&r.iter().map(|f| f.loads_pipelined).collect::<Vec<_>>()),
        })
        .collect();
    println!(
        "\n{label}: {CLIENTS} clients, 1 object of 128 bytes per commit, {seconds} s per run (half commits, half loads), median of {repeat}\n"
    );
    println!("| server | commits/s | commit p99 ms | loads/s | loads/s, 16 in flight |");
    println!("|---|---|---|---|---|");
    for (p, f) in servers.iter().zip(&med) {
        println!(
            "| {} | {:.0} | {:.2} | {:.0} | {:.0} |",
            p.name, f.commits, f.commit_p99, f.loads, f.loads_pipelined
        );
    }
    let ratio = |a: &Figures, b: &Figures| {
        format!(
            "**{:.2}x** | | **{:.2}x** | **{:.2}x**",
            a.commits / b.commits.max(1e-9),
            a.loads / b.loads.max(1e-9),
            a.loads_pipelined / b.loads_pipelined.max(1e-9)
        )
    };
    println!(
        "| ratio zeoraid TLS / zeoraid TCP | {} |",
        ratio(&med[1], &med[2])
    );
    println!(
        "| ratio zeoraid TLS / python TLS | {} |",
        ratio(&med[1], &med[0])
    );
    println!(
        "| ratio zeoraid Unix / zeoraid TCP | {} |",
        ratio(&med[3], &med[2])
    );
}
