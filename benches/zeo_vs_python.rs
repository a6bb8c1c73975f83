//! zeoraid vs Python `runzeo`, side by side in one run, both driven by the
//! `zeoraid bench` load generator over the same msgpack ZEO 5 protocol:
//! - `memory`: zeoraid's memory storage vs runzeo's `<mappingstorage>`;
//! - `file`: zeoraid's file storage vs runzeo's `<filestorage>`, both
//!   fsyncing every commit.
//!
//! Run: `cargo bench --bench zeo_vs_python [-- memory|file]` (release build;
//! both by default). Needs a Python
//! with ZODB 6 + ZEO 6: `$ZEORAID_PYTHON` or `.venv/bin/python` (created by
//! `bash tests/run-all.sh`). Knobs: `ZEORAID_BENCH_SECONDS` (per run, default
//! 6), `ZEORAID_BENCH_REPEAT` (default 3; medians are reported),
//! `ZEORAID_BENCH_IDLE` (idle connections for the memory figure, default 1000).
//!
//! A third server shows the machine's ceiling: a no-op ZEO server in this
//! process (a thread per connection, no storage; every load answers the same
//! 128 bytes), measured the same way. No server can load faster here than
//! it does, so `ceiling / python` bounds any ratio.
//!
//! Prints medians and zeoraid/Python ratios; asserts nothing about timing.

mod common;
use common::{free_port, median};
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Child;
use std::time::Duration;
use zeoraid::bench::{run, BenchArgs};
use zeoraid::zeo::frame::{read_frame, write_frame};
use zeoraid::zeo::message;

struct Proc {
    child: Option<Child>,
    addr: SocketAddr,
    name: &'static str,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The no-op server: answers the calls `zeoraid bench` makes, storing
/// nothing. Replies are written when no further request is buffered, so
/// pipelined requests get one write, as the real servers do.
fn start_noop() -> Proc {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::Builder::new()
        .name("noop-accept".into())
        .spawn(move || {
            for (i, conn) in listener.incoming().enumerate() {
                let Ok(conn) = conn else { continue };
                let _ = std::thread::Builder::new()
                    .name(format!("noop-{i}"))
                    .spawn(move || noop_connection(conn));
            }
        })
        .expect("spawn");
    Proc {
        child: None,
        addr,
        name: "no-op server (ceiling)",
    }
}

fn noop_connection(conn: TcpStream) {
    use rmpv::Value;
    use zeoraid::storage::{Oid, Tid};
    use zeoraid::zeo::message::{bin, oid_value, opt_tid_value, tid_value};
    let _ = conn.set_nodelay(true);
    let Ok(w) = conn.try_clone() else { return };
    let mut w = std::io::BufWriter::new(w);
    let mut r = BufReader::new(conn);
    if write_frame(&mut w, b"M5").and_then(|()| w.flush()).is_err() {
        return;
    }
    let data = vec![b'x'; 128];
    let (mut next_oid, mut next_tid) = (1u64, 1u64);
    while let Ok(frame) = read_frame(&mut r, 1 << 24) {
        let Ok(msg) = message::decode(&frame) else {
            continue; // the handshake
        };
        let result = match msg.method.as_str() {
            "loadBefore" => Value::Array(vec![bin(&data), tid_value(Tid(1)), opt_tid_value(None)]),
            "register" | "lastTransaction" => tid_value(Tid(next_tid)),
            "tpc_finish" => {
                next_tid += 1;
                tid_value(Tid(next_tid))
            }
            "new_oids" => Value::Array(
                (0..100)
                    .map(|_| {
                        next_oid += 1;
                        oid_value(Oid(next_oid))
                    })
                    .collect(),
            ),
            _ => Value::Nil,
        };
        if !msg.is_oneway() {
            let reply = message::encode_reply(&msg.msgid, &result);
            if write_frame(&mut w, &reply).is_err() {
                return;
            }
        }
        if r.buffer().is_empty() && w.flush().is_err() {
            return;
        }
    }
}

/// Which storage both servers use.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Memory,
    File,
}

fn start_zeoraid(dir: &std::path::Path, kind: Kind) -> Proc {
    let conf = dir.join("zeoraid.toml");
    let storage = match kind {
        Kind::Memory => "kind = \"memory\"".to_string(),
        Kind::File => {
            let data = dir.join("zeoraid-data");
            std::fs::create_dir_all(&data).expect("data dir");
            format!(
                "kind = \"file\"\npath = {:?}",
                data.join("Data.fs").display().to_string()
            )
        }
    };
    std::fs::write(
        &conf,
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[[storage]]\nname = \"1\"\n{storage}\n"),
    )
    .expect("write config");
    let (child, addr) = common::spawn_zeoraid(&conf, None);
    let addr = addr.parse().expect("a TCP address");
    Proc {
        child: Some(child),
        addr,
        name: "zeoraid",
    }
}

fn start_runzeo(dir: &std::path::Path, kind: Kind) -> Proc {
    let port = free_port();
    let storage = match kind {
        Kind::Memory => "<mappingstorage 1>\n</mappingstorage>".to_string(),
        Kind::File => {
            let data = dir.join("python-data");
            std::fs::create_dir_all(&data).expect("data dir");
            format!(
                "<filestorage 1>\n  path {}\n</filestorage>",
                data.join("Data.fs").display()
            )
        }
    };
    // ZEO's defaults otherwise (the server resolves conflicts).
    let conf = common::write_runzeo_conf(dir, port, &storage, false);
    let (child, addr) = common::spawn_runzeo(&conf, port, None);
    Proc {
        child: Some(child),
        addr,
        name: "python runzeo",
    }
}

#[derive(Default, Clone)]
struct Figures {
    commits: f64,
    commit_p99: f64,
    loads: f64,
    load_p99: f64,
    /// Loads/s with 16 requests in flight per connection.
    loads_pipelined: f64,
}

fn measure(p: &Proc, clients: usize, pipeline: usize, seconds: f64, repeat: usize) -> Vec<Figures> {
    (0..repeat)
        .map(|_| {
            let out = run(&BenchArgs {
                address: p.addr.to_string(),
                clients,
                duration: seconds,
                objects_per_txn: 1,
                size: 128,
                pipeline,
                storage: "1".into(),
                json: true,
                tls_ca: None,
                tls_certificate: None,
                tls_key: None,
                tls_server_hostname: None,
            })
            .unwrap_or_else(|e| panic!("bench against {} failed: {e}", p.name));
            let j: serde_json::Value = serde_json::from_str(&out).expect("json");
            let f = |k: &str| j[k].as_f64().unwrap_or(0.0);
            Figures {
                commits: f("commits_per_s"),
                commit_p99: f("commit_p99_ms"),
                loads: f("loads_per_s"),
                load_p99: f("load_p99_ms"),
                loads_pipelined: 0.0,
            }
        })
        .collect()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn idle_connections(p: &Proc, n: usize) -> (u64, u64) {
    let pid = p.child.as_ref().map_or(0, |c| c.id());
    let before = rss_kib(pid);
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(p.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        read_frame(&mut s, 1 << 20).expect("hello");
        write_frame(&mut s, b"M5").expect("handshake");
        let reg = message::encode(
            1,
            0,
            "register",
            &rmpv::Value::Array(vec![rmpv::Value::from("1"), rmpv::Value::Boolean(false)]),
        );
        write_frame(&mut s, &reg).expect("register");
        read_frame(&mut s, 1 << 20).expect("register reply");
        conns.push(s);
    }
    std::thread::sleep(Duration::from_secs(1));
    let after = rss_kib(pid);
    drop(conns);
    (before, after)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with --list
    }
    let seconds: f64 = std::env::var("ZEORAID_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6.0);
    let repeat: usize = std::env::var("ZEORAID_BENCH_REPEAT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let idle: usize = std::env::var("ZEORAID_BENCH_IDLE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |k: &str| args.is_empty() || args.iter().any(|a| a == k);
    if want("memory") {
        compare(Kind::Memory, seconds, repeat, Some(idle));
    }
    if want("file") {
        compare(Kind::File, seconds, repeat, None);
    }
}

fn compare(kind: Kind, seconds: f64, repeat: usize, idle: Option<usize>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (py_name, our_name) = match kind {
        Kind::Memory => ("python runzeo (mappingstorage)", "zeoraid (memory)"),
        Kind::File => (
            "python runzeo (filestorage, fsync)",
            "zeoraid (file, fsync)",
        ),
    };
    // Idle connections first, on fresh servers, so stored data does not
    // blur the per-connection cost.
    if let Some(idle) = idle {
        let ours = start_zeoraid(dir.path(), kind);
        let python = start_runzeo(dir.path(), kind);
        println!("Resident memory with {idle} idle registered connections (fresh servers):\n");
        println!("| server | RSS before | RSS with {idle} idle connections |");
        println!("|---|---|---|");
        for p in [&python, &ours] {
            let (before, after) = idle_connections(p, idle);
            println!(
                "| {} | {:.1} MiB | {:.1} MiB |",
                p.name,
                before as f64 / 1024.0,
                after as f64 / 1024.0
            );
        }
        println!();
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ours = start_zeoraid(dir.path(), kind);
    let python = start_runzeo(dir.path(), kind);
    let noop = start_noop();
    println!(
        "{our_name} vs {py_name}: 1 object of 128 bytes per commit, {seconds} s per run (half commits, half loads), median of {repeat}\n"
    );
    println!("| clients | server | commits/s | commit p99 ms | loads/s | load p99 ms | loads/s, 16 in flight |");
    println!("|---|---|---|---|---|---|---|");
    for clients in [1usize, 8] {
        let mut py = Vec::new();
        let mut rs = Vec::new();
        let mut top = Vec::new();
        // Interleave so all see the same machine conditions.
        for _ in 0..repeat {
            for (p, out) in [(&python, &mut py), (&ours, &mut rs), (&noop, &mut top)] {
                let mut f = measure(p, clients, 1, seconds, 1).remove(0);
                f.loads_pipelined = measure(p, clients, 16, seconds, 1).remove(0).loads;
                out.push(f);
            }
        }
        let med = |v: &Vec<Figures>| Figures {
            commits: median(&v.iter().map(|f| f.commits).collect::<Vec<_>>()),
            commit_p99: median(&v.iter().map(|f| f.commit_p99).collect::<Vec<_>>()),
            loads: median(&v.iter().map(|f| f.loads).collect::<Vec<_>>()),
            load_p99: median(&v.iter().map(|f| f.load_p99).collect::<Vec<_>>()),
            loads_pipelined: median(&v.iter().map(|f| f.loads_pipelined).collect::<Vec<_>>()),
        };
        let (p, r, c) = (med(&py), med(&rs), med(&top));
        for (name, f) in [(py_name, &p), (our_name, &r), (noop.name, &c)] {
            println!(
                "| {clients} | {name} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} |",
                f.commits, f.commit_p99, f.loads, f.load_p99, f.loads_pipelined
            );
        }
        println!(
            "| {clients} | **ratio zeoraid/python** | **{:.1}x** | | **{:.1}x** | | **{:.1}x** |",
            r.commits / p.commits.max(1e-9),
            r.loads / p.loads.max(1e-9),
            r.loads_pipelined / p.loads_pipelined.max(1e-9)
        );
        println!(
            "| {clients} | *ceiling/python (the most any server can show here)* | | | *{:.1}x* | | *{:.1}x* |",
            c.loads / p.loads.max(1e-9),
            c.loads_pipelined / p.loads_pipelined.max(1e-9)
        );
    }
    println!();
}
