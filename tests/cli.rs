//! `zeoraid serve` as an operator meets it: a bad config or a resolver that
//! cannot work stops it at start with exit code 2 and a message naming the
//! file, the key or the interpreter; a good one (with the resolver) listens
//! and stops cleanly on SIGTERM.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Run `zeoraid serve` on `config`, expecting it to exit by itself within
/// 30 s (it is killed and the test fails if it keeps serving).
fn serve(dir: &std::path::Path, config: &str) -> Output {
    let conf = dir.join("zeoraid.toml");
    std::fs::write(&conf, config).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_zeoraid"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&conf)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run zeoraid");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "zeoraid kept running with\n{config}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

const MEMORY: &str = "[[storage]]\nname = \"1\"\nkind = \"memory\"\n";

#[test]
fn start_up_errors_name_what_to_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-python");
    let cases: Vec<(String, Vec<String>)> = vec![
        (
            format!("{MEMORY}[server]\nworkers = 0\n"),
            vec!["zeoraid.toml".into(), "server.workers".into()],
        ),
        (
            format!(
                "{MEMORY}[conflict-resolution]\npython = {:?}\n",
                missing.display().to_string()
            ),
            vec![
                "conflict-resolution".into(),
                missing.display().to_string(),
                "import ZODB".into(),
                "zeoraid.toml".into(),
            ],
        ),
        (
            "[[storage]]\nname = \"1\"\nkind = \"file\"\npath = \"junk.fs\"\n".into(),
            vec!["storage \"1\"".into(), "junk.fs".into(), "bad magic".into()],
        ),
    ];
    std::fs::write(dir.path().join("junk.fs"), b"this is not a Data.fs").expect("junk");
    for (config, needles) in cases {
        let out = serve(dir.path(), &config);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{config}\n{err}");
        for n in needles {
            assert!(err.contains(&n), "{n:?} not in {err:?}");
        }
        assert!(out.stdout.is_empty(), "it must not claim to listen");
    }
}

/// `[ha]` with no etcd answering: the start fails (exit 1: the host, not
/// the file), naming the endpoints, before anything listens.
#[test]
fn an_unreachable_etcd_refuses_the_start_naming_the_endpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nowhere = format!("127.0.0.1:{}", common::free_port());
    let config = format!(
        "[[storage]]\nname = \"1\"\nkind = \"raid\"\n[[storage.backend]]\nname = \"a\"\n\
         kind = \"zeo\"\naddress = \"127.0.0.1:1\"\n[ha]\nendpoints = [\"{nowhere}\"]\n\
         cluster = \"c\"\nname = \"x\"\n"
    );
    let out = serve(dir.path(), &config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for n in [
        "[ha]: cannot reach etcd at ",
        nowhere.as_str(),
        "ha.endpoints",
    ] {
        assert!(err.contains(n), "{n:?} not in {err:?}");
    }
    assert!(out.stdout.is_empty(), "it must not claim to listen");
}

#[test]
fn serves_with_the_resolver_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let python = common::python();
    let config = format!(
        "{MEMORY}[conflict-resolution]\npython = {:?}\ntimeout = 5\n",
        python.display().to_string()
    );
    let mut p = common::ZeoraidProcess::start(dir.path(), &config);
    assert!(std::net::TcpStream::connect(p.addr).is_ok());
    let killed = Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = p.child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
}

// examples/zeoraid.toml has an [admin] section.
#[cfg(feature = "admin")]
#[test]
fn the_example_configs_are_valid_and_the_default_serves_a_mirrored_array() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for name in ["zeoraid.toml", "memory.toml", "raid-zeo.toml"] {
        zeoraid::config::Config::load(&examples.join(name))
            .unwrap_or_else(|e| panic!("examples/{name}: {e}"));
    }
    // The README's main command, in a scratch checkout: the array over two
    // Data.fs mirrors under ../data, both written by one commit.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("examples")).unwrap();
    let text = std::fs::read_to_string(examples.join("zeoraid.toml"))
        .unwrap()
        .replace(
            "127.0.0.1:8101",
            &format!("127.0.0.1:{}", common::free_port()),
        );
    let server = common::ZeoraidProcess::start(&dir.path().join("examples"), &text);
    let c = zeoraid::zeo::client::Client::connect(zeoraid::zeo::client::ClientOptions::new(
        server.addr.to_string(),
    ))
    .expect("connect");
    use zeoraid::storage::{Data, Op, Storage, Tid, Txn, TxnMeta, Vote};
    let oid = c.new_oids(1).unwrap()[0];
    let txn = Txn {
        meta: TxnMeta::default(),
        tid: None,
        status: b' ',
        ops: vec![Op::Store {
            oid,
            serial: Tid::ZERO,
            data: Data::from(&b"hello"[..]),
        }],
    };
    assert!(matches!(c.tpc_vote(&txn), Ok(Vote::Prepared { .. })));
    let tid = c.tpc_finish().expect("commit");
    drop(c);
    drop(server);
    for mirror in ["a", "b"] {
        let path = dir.path().join("data").join(mirror).join("Data.fs");
        let fs = zeoraid::storage::file::FileStorage::open(
            &path,
            zeoraid::storage::file::FileOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(fs.last_transaction().unwrap(), tid, "mirror {mirror}");
    }
}

#[test]
fn completions_and_the_man_page_come_from_the_cli_definition() {
    for args in [
        vec!["completions", "bash"],
        vec!["completions", "zsh"],
        vec!["completions", "fish"],
        vec!["man"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_zeoraid"))
            .args(&args)
            .output()
            .expect("run zeoraid");
        assert!(out.status.success(), "{args:?}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("zeoraid"), "{args:?}: {text}");
        assert!(text.contains("serve"), "{args:?} names the subcommands");
    }
}
