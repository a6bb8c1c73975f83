#![cfg(all(feature = "admin", feature = "bench"))]
//! The admin listener and `zeoraid ctl` against a running `zeoraid serve`
//! (issue #9): `ctl status` exit codes for each state (optimal,
//! recovering, degraded, failed) and for an unreachable server and a
//! non-admin port; changes refused without the token, reads without it;
//! `ctl disable`, `ctl recover --wait`, `ctl verify`, `ctl details`;
//! `/metrics` parsed by Python's `prometheus_client` with counters that
//! move when clients commit and load.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeoraid::bench::proxy::Proxy;
use zeoraid::server::Server;
use zeoraid::storage::memory::MemoryStorage;
use zeoraid::storage::{Oid, Storage, Tid};
use zeoraid::zeo::client::{Client, ClientOptions};

use common::ctl;

fn memory_zeo() -> Server {
    common::serve_with(Arc::new(MemoryStorage::new("1", false)), 4)
}

fn config(dir: &Path, admin: SocketAddr, extra: &str, zeo: &str) -> String {
    std::fs::write(dir.join("admin.token"), "s3cret\n").unwrap();
    format!(
        "[admin]\nlisten = \"{admin}\"\ntoken-file = \"admin.token\"\n\
         [[storage]]\nname = \"1\"\nkind = \"raid\"\nauto-recover = false\nbackend-timeout = 5\n{extra}\n\
         [[storage.backend]]\nname = \"a\"\nkind = \"file\"\npath = \"a/Data.fs\"\n\
         [[storage.backend]]\nname = \"z\"\nkind = \"zeo\"\naddress = \"{zeo}\"\n"
    )
}

/// The value of the sample `line_prefix` (metric name and labels).
fn sample(metrics: &str, line_prefix: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {line_prefix} in\n{metrics}"))
}

fn commit_n(addr: SocketAddr, n: usize) -> Oid {
    let c = Client::connect(ClientOptions {
        call_timeout: Duration::from_secs(30),
        ..ClientOptions::new(addr.to_string())
    })
    .expect("connect");
    let oid = c.new_oids(1).unwrap()[0];
    let mut serial = Tid::ZERO;
    for i in 0..n {
        serial =
            common::commit_store(&c, oid, serial, format!("value {i}").as_bytes()).expect("commit");
    }
    let _ = c.load_before(oid, Tid::MAX).unwrap();
    Storage::close(&c);
    oid
}

fn eventually_status(admin: &str, code: i32, what: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (c, out, err) = ctl(&["--admin", admin, "status"]);
        if c == code {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "ctl status never exited {code} ({what}); last {c}: {out}{err}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctl_status_follows_the_array_and_changes_need_the_token() {
    common::python(); // the metrics are parsed by prometheus_client
    let dir = tempfile::tempdir().unwrap();
    let zeo = memory_zeo();
    let proxy = Proxy::start(zeo.local_addr()).expect("proxy");
    let admin_addr: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let admin = admin_addr.to_string();
    let text = config(dir.path(), admin_addr, "", &proxy.addr().to_string());
    let raid = common::ZeoraidProcess::start(dir.path(), &text);
    let conf = dir.path().join("zeoraid.toml");
    let conf = conf.to_str().unwrap();

    // Optimal: exit 0, one Nagios line.
    let (code, out, _) = ctl(&["--admin", &admin, "status"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.trim(),
        "ZEORAID OK - optimal; storage 1: optimal (2 of 2 backends optimal)"
    );
    let (code, out, _) = ctl(&["--admin", &admin, "--json", "status"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"state\":\"optimal\""), "{out}");

    // A change without the token is refused; reads need none.
    let (code, _, err) = ctl(&["--admin", &admin, "disable", "z"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("needs the admin token") && err.contains("401"),
        "{err}"
    );
    assert_eq!(ctl(&["--admin", &admin, "status"]).0, 0);
    // With it (from the config's token-file): degraded, exit 2.
    let (code, out, err) = ctl(&["--config", conf, "disable", "z"]);
    assert_eq!(code, 0, "{out}{err}");
    let out = eventually_status(&admin, 2, "degraded", 5);
    assert!(out.starts_with("ZEORAID CRITICAL - degraded"), "{out}");

    // Commits while z is out; then a slow link to z, and recover it.
    commit_n(raid.addr, 150);
    proxy.set_delay(Duration::from_millis(20));
    let (code, out, err) = ctl(&["--config", conf, "recover", "z"]);
    assert_eq!(code, 0, "{out}{err}");
    let out = eventually_status(&admin, 1, "recovering", 10);
    assert!(out.starts_with("ZEORAID WARNING - recovering"), "{out}");
    let (code, details, _) = ctl(&["--admin", &admin, "details"]);
    assert_eq!(code, 0);
    assert!(details.contains("recovering from a:"), "{details}");
    proxy.set_delay(Duration::ZERO);
    eventually_status(&admin, 0, "optimal again", 60);

    // Verify, and disable + recover --wait once more.
    let (code, out, err) = ctl(&["--config", conf, "verify", "z"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("z: identical to a over 150 transactions"),
        "{out}"
    );
    assert_eq!(ctl(&["--config", conf, "disable", "z"]).0, 0);
    commit_n(raid.addr, 5);
    let (code, out, err) = ctl(&["--config", conf, "recover", "z", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("z is optimal again"), "{out}");

    // Metrics: real Prometheus text, counters that moved.
    let metrics = common::http_get(admin_addr, "/metrics");
    assert!(sample(&metrics, "zeoraid_commits_total{storage=\"1\"}") >= 155.0);
    assert!(sample(&metrics, "zeoraid_loads_total{storage=\"1\"}") >= 2.0);
    assert_eq!(
        sample(
            &metrics,
            "zeoraid_array_state{storage=\"1\",state=\"optimal\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "zeoraid_verify_identical{storage=\"1\",backend=\"z\"}"
        ),
        1.0
    );
    let path = dir.path().join("metrics.txt");
    std::fs::write(&path, &metrics).unwrap();
    let parsed = common::run_python(&[
        "-c",
        "import sys\n\
         from prometheus_client.parser import text_string_to_metric_families as parse\n\
         fams = {f.name: f for f in parse(open(sys.argv[1]).read())}\n\
         assert fams['zeoraid_commits'].type == 'counter', fams['zeoraid_commits'].type\n\
         assert fams['zeoraid_backend_state'].type == 'gauge'\n\
         h = fams['zeoraid_backend_call_seconds']\n\
         assert h.type == 'histogram', h.type\n\
         assert any(s.name.endswith('_count') and s.value > 0 for s in h.samples)\n\
         print(len(fams), sum(len(f.samples) for f in fams.values()))",
        path.to_str().unwrap(),
    ]);
    let counts: Vec<usize> = parsed
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(
        counts.len() == 2 && counts[0] >= 15 && counts[1] >= 30,
        "{parsed}"
    );

    // Not zeoraid's admin interface: the ZEO port; nothing listening.
    let (code, out, _) = ctl(&["--admin", &raid.addr.to_string(), "status"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.starts_with("ZEORAID UNKNOWN"), "{out}");
    drop(raid);
    let (code, out, _) = ctl(&["--admin", &admin, "status"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("cannot reach"), "{out}");
    drop(proxy);
    drop(zeo);
}

#[test]
fn ctl_status_is_critical_when_the_array_has_failed() {
    let dir = tempfile::tempdir().unwrap();
    let admin_addr: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let down = format!("127.0.0.1:{}", common::free_port());
    let text = config(
        dir.path(),
        admin_addr,
        "min-optimal = 2\nfail-mode = \"read-only\"",
        &down,
    );
    let _raid = common::ZeoraidProcess::start(dir.path(), &text);
    let (code, out, _) = ctl(&["--admin", &admin_addr.to_string(), "status"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.starts_with("ZEORAID CRITICAL - failed"), "{out}");
}

/// Names of the array's backends and their states, from `ctl details --json`.
fn backends(admin: &str) -> Vec<(String, String)> {
    let (code, out, err) = ctl(&["--admin", admin, "--json", "details"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("json");
    doc["1"]["raid"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn eventually_backends(admin: &str, want: &[(&str, &str)], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect();
    loop {
        let got = backends(admin);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {got:?}, want {want:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn file_array(dir: &Path, admin: SocketAddr, backends: &[&str], extra: &str) -> String {
    std::fs::write(dir.join("admin.token"), "s3cret\n").unwrap();
    let mut text = format!(
        "[admin]\nlisten = \"{admin}\"\ntoken-file = \"admin.token\"\n\
         [[storage]]\nname = \"1\"\nkind = \"raid\"\n{extra}\n"
    );
    for b in backends {
        text += &format!(
            "[[storage.backend]]\nname = \"{b}\"\nkind = \"file\"\npath = \"{b}/Data.fs\"\n"
        );
    }
    text
}

#[test]
fn backends_added_and_removed_live_through_ctl_reload_and_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let admin_addr: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let admin = admin_addr.to_string();
    let raid = common::ZeoraidProcess::start(
        dir.path(),
        &file_array(dir.path(), admin_addr, &["a", "b"], ""),
    );
    let conf = dir.path().join("zeoraid.toml");
    let conf = conf.to_str().unwrap().to_string();
    let c = |args: &[&str]| {
        let mut all = vec!["--config", conf.as_str()];
        all.extend_from_slice(args);
        ctl(&all)
    };
    commit_n(raid.addr, 50);

    // ctl add under commit load: the new, empty backend recovers.
    let addr = raid.addr;
    let writer = std::thread::spawn(move || commit_n(addr, 300));
    let (code, out, err) = c(&["add", "c", "--kind", "file", "--path", "c/Data.fs"]);
    assert_eq!(code, 0, "{out}{err}");
    writer.join().unwrap();
    eventually_backends(
        &admin,
        &[("a", "optimal"), ("b", "optimal"), ("c", "optimal")],
        "c added",
    );
    let (code, out, _) = c(&["verify", "c"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("identical to a over 350 transactions"),
        "{out}"
    );
    let (_, details, _) = c(&["details"]);
    assert!(details.contains("running but not in it: c"), "{details}");
    // Adding it twice, or without the token, is refused.
    assert_eq!(
        c(&["add", "c", "--kind", "file", "--path", "c/Data.fs"]).0,
        2
    );
    let (code, _, err) = ctl(&["--admin", &admin, "remove", "c"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("token"), "{err}");

    // A restart keeps the added backend.
    raid.kill9();
    let raid = common::ZeoraidProcess::start(dir.path(), &std::fs::read_to_string(&conf).unwrap());
    eventually_backends(
        &admin,
        &[("a", "optimal"), ("b", "optimal"), ("c", "optimal")],
        "c kept",
    );
    // ctl remove; a restart does not bring it back.
    let (code, out, err) = c(&["remove", "c"]);
    assert_eq!(code, 0, "{out}{err}");
    eventually_backends(&admin, &[("a", "optimal"), ("b", "optimal")], "c removed");
    let (code, out, err) = c(&["remove", "b"]);
    assert_eq!(code, 0, "{out}{err}");
    raid.kill9();
    let raid = common::ZeoraidProcess::start(dir.path(), &std::fs::read_to_string(&conf).unwrap());
    eventually_backends(&admin, &[("a", "optimal")], "b and c stay out");
    let (_, details, _) = c(&["details"]);
    assert!(details.contains("in it but not running: b"), "{details}");

    // reload makes the array match the file: b back (recovered), d new,
    // and the fan-out switched.
    std::fs::write(
        &conf,
        file_array(
            dir.path(),
            admin_addr,
            &["a", "b", "d"],
            "fanout = \"sequential\"",
        ),
    )
    .unwrap();
    let (code, out, err) = c(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("added backend b")
            && out.contains("added backend d")
            && out.contains("fanout = sequential"),
        "{out}"
    );
    commit_n(raid.addr, 10);
    eventually_backends(
        &admin,
        &[("a", "optimal"), ("b", "optimal"), ("d", "optimal")],
        "reloaded",
    );
    let (_, details, _) = c(&["details"]);
    assert!(details.contains("sequential fan-out"), "{details}");
    // A broken file changes nothing and says why.
    let good = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        good.replace(
            "kind = \"file\"\npath = \"d/Data.fs\"",
            "kind = \"tape\"\npath = \"d/Data.fs\"",
        ),
    )
    .unwrap();
    // (ctl cannot read its address from the broken file: say it.)
    let token = dir.path().join("admin.token");
    let (code, _, err) = ctl(&[
        "--admin",
        &admin,
        "--token-file",
        token.to_str().unwrap(),
        "reload",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("nothing was changed") && err.contains("zeoraid.toml"),
        "{err}"
    );
    eventually_backends(
        &admin,
        &[("a", "optimal"), ("b", "optimal"), ("d", "optimal")],
        "unchanged",
    );
    // SIGHUP reloads too: d leaves.
    std::fs::write(&conf, file_array(dir.path(), admin_addr, &["a", "b"], "")).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &raid.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    eventually_backends(
        &admin,
        &[("a", "optimal"), ("b", "optimal")],
        "SIGHUP removed d",
    );
    drop(raid);
}
