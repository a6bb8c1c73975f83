#![cfg(all(feature = "admin", feature = "bench", feature = "tls"))]
//! TLS and Unix sockets with the Rust client against the Rust server (the
//! stock Python client's side is in tests/interop/test_tls.py): commits and
//! loads over TLS (a record larger than rustls' buffers included), client
//! certificates required (accepted from the right CA, refused without one
//! and from another CA, with the reason), an expired or foreign server
//! certificate refused by the client, a plaintext client on the TLS port
//! closed with a log line that says so, certificate files that are wrong
//! in the ways operators get them wrong, a Unix socket server (mode, stale
//! file after kill -9, removed at a clean stop), certificates re-read on
//! SIGHUP, certificate expiry in `ctl status` and `/metrics`, TLS 1.2 and
//! 1.3 both served, and an array over a TLS backend that requires client
//! certificates and a Unix socket backend.

mod common;

use common::certs::{Ca, Pair};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeoraid::net::tls::{self, ClientFiles, ServerFiles};
use zeoraid::server::{Listen, Options, Server, TlsOptions};
use zeoraid::storage::memory::MemoryStorage;
use zeoraid::storage::*;
use zeoraid::zeo::client::{Client, ClientOptions};

fn options(listen: Listen, tls: Option<TlsOptions>) -> Options {
    Options {
        listen,
        tls,
        ..zeoraid::bench::fanout::local_server_options(Some(4))
    }
}

fn tcp() -> Listen {
    Listen::Tcp("127.0.0.1:0".parse().expect("addr"))
}

fn tls_server(pair: &Pair, client_ca: Option<&Path>) -> Server {
    let loaded = tls::load_server(&ServerFiles {
        certificate: pair.cert.clone(),
        key: pair.key.clone(),
        client_ca: client_ca.map(Path::to_path_buf),
    })
    .expect("server TLS files load");
    let tls = TlsOptions {
        info: zeoraid::server::TlsInfo::of(&loaded),
        config: loaded.config,
        handshake_timeout: Duration::from_secs(1),
    };
    Server::start(
        options(tcp(), Some(tls)),
        vec![("1".into(), Arc::new(MemoryStorage::new("1", false)), false)],
    )
    .expect("server starts")
}

fn connect(addr: String, tls: Option<ClientFiles>) -> zeoraid::storage::Result<Client> {
    Client::connect(ClientOptions {
        addr,
        tls,
        call_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    })
}

fn trusting(ca: &Ca, me: Option<&Pair>) -> Option<ClientFiles> {
    Some(ClientFiles {
        ca: Some(ca.pem.clone()),
        certificate: me.map(|p| p.cert.clone()),
        key: me.map(|p| p.key.clone()),
        server_hostname: None,
    })
}

fn txn(ops: Vec<Op>) -> Txn {
    Txn {
        meta: TxnMeta::default(),
        tid: None,
        status: b' ',
        ops,
    }
}

/// Commit one new object of `size` bytes and load it back.
fn commit_and_load(c: &Client, size: usize) {
    let (oid, tid, data) = commit(c, size);
    check_load(c, oid, tid, &data);
}

fn commit(c: &Client, size: usize) -> (Oid, Tid, Vec<u8>) {
    let oid = c.new_oids(1).expect("new oid")[0];
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let vote = c
        .tpc_vote(&txn(vec![Op::Store {
            oid,
            serial: Tid::ZERO,
            data: data.clone().into(),
        }]))
        .expect("vote");
    assert!(matches!(vote, Vote::Prepared { .. }), "{vote:?}");
    let tid = c.tpc_finish().expect("finish");
    (oid, tid, data)
}

fn check_load(c: &Client, oid: Oid, tid: Tid, data: &[u8]) {
    let got = c
        .load_before(oid, Tid::MAX)
        .expect("load")
        .expect("the object exists");
    assert_eq!(got.start, tid);
    assert!(
        got.data[..] == data[..],
        "loaded data differs ({} bytes)",
        got.data.len()
    );
}

#[test]
fn commits_and_loads_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "main");
    let server = tls_server(&ca.server(dir.path(), "server"), None);
    let addr = server.local_addr().to_string();
    let c = connect(addr.clone(), trusting(&ca, None)).expect("TLS client connects");
    commit_and_load(&c, 100);
    // Larger than rustls' buffers and the client's encryption chunk.
    commit_and_load(&c, 3 << 20);
    // Many threads share the connection (one transaction at a time, as
    // ClientStorage does; loads concurrently): records from concurrent
    // writers and the reader never interleave.
    let txn_lock = std::sync::Mutex::new(());
    std::thread::scope(|s| {
        for _ in 0..4 {
            let (c, txn_lock) = (&c, &txn_lock);
            s.spawn(move || {
                for _ in 0..20 {
                    let (oid, tid, data) = {
                        let _one_at_a_time = txn_lock.lock().expect("lock");
                        commit(c, 20_000)
                    };
                    for _ in 0..5 {
                        check_load(c, oid, tid, &data);
                    }
                }
            });
        }
    });
    // A hostname from the certificate works too.
    let port = server.local_addr().port();
    let c2 = connect(format!("localhost:{port}"), trusting(&ca, None)).expect("by name");
    commit_and_load(&c2, 10);
    // The same port without TLS on the client: no greeting, closed.
    let e = connect(addr, None).expect_err("plaintext client refused");
    assert!(e.to_string().contains("closed the connection"), "{e}");
}

#[test]
fn client_certificates_required() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = Ca::new(d, "main");
    let clients = Ca::new(d, "clients");
    let other = Ca::new(d, "other");
    let server = tls_server(&ca.server(d, "server"), Some(&clients.pem));
    let addr = server.local_addr().to_string();

    let good = clients.client(d, "good");
    let c = connect(addr.clone(), trusting(&ca, Some(&good))).expect("right CA gets in");
    commit_and_load(&c, 1000);

    let e = connect(addr.clone(), trusting(&ca, None)).expect_err("no certificate");
    assert!(
        e.to_string().contains("requires a client certificate"),
        "{e}"
    );

    let stranger = other.client(d, "stranger");
    let e = connect(addr, trusting(&ca, Some(&stranger))).expect_err("other CA");
    assert!(
        e.to_string().contains("does not trust our certificate"),
        "{e}"
    );
}

#[test]
fn bad_server_certificates_refused_by_the_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = Ca::new(d, "main");
    let other = Ca::new(d, "other");

    let expired = tls_server(&ca.expired_server(d, "expired"), None);
    let e = connect(expired.local_addr().to_string(), trusting(&ca, None))
        .expect_err("expired certificate");
    assert!(e.to_string().contains("has expired"), "{e}");

    let foreign = tls_server(&other.server(d, "foreign"), None);
    let e = connect(foreign.local_addr().to_string(), trusting(&ca, None)).expect_err("unknown CA");
    assert!(e.to_string().contains("not signed by a CA we trust"), "{e}");

    let good = tls_server(&ca.server(d, "good"), None);
    let mut files = trusting(&ca, None).expect("files");
    files.server_hostname = Some("db.example.org".into());
    let e = connect(good.local_addr().to_string(), Some(files)).expect_err("wrong name");
    assert!(
        e.to_string().contains("not valid for the server name"),
        "{e}"
    );
}

#[test]
fn certificate_file_errors_name_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = Ca::new(d, "main");
    let a = ca.server(d, "a");
    let b = ca.server(d, "b");
    let garbage = d.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let encrypted = d.join("encrypted.key");
    std::fs::write(
        &encrypted,
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .expect("write");
    let files = |cert: &PathBuf, key: &PathBuf| ServerFiles {
        certificate: cert.clone(),
        key: key.clone(),
        client_ca: None,
    };
    // (certificate, key, what the error must say)
    let table: Vec<(PathBuf, PathBuf, String)> = vec![
        (
            a.cert.clone(),
            b.key.clone(),
            format!(
                "{} does not belong to the certificate {}",
                b.key.display(),
                a.cert.display()
            ),
        ),
        (
            a.key.clone(),
            a.cert.clone(),
            format!("{} holds no PEM certificate", a.key.display()),
        ),
        (
            garbage.clone(),
            a.key.clone(),
            format!("{} holds no PEM certificate", garbage.display()),
        ),
        (
            a.cert.clone(),
            garbage.clone(),
            format!("{} holds no PEM private key", garbage.display()),
        ),
        (
            a.cert.clone(),
            encrypted.clone(),
            format!("{} holds an encrypted private key", encrypted.display()),
        ),
        (
            d.join("missing.pem"),
            a.key.clone(),
            format!(
                "cannot read TLS certificate file {}",
                d.join("missing.pem").display()
            ),
        ),
    ];
    for (cert, key, want) in table {
        let e = tls::load_server(&files(&cert, &key)).expect_err("must fail");
        assert!(e.contains(&want), "{e}\nwant: {want}");
    }
    // An expired certificate of our own: the client refuses to present it.
    let expired = ca.expired_server(d, "old");
    let e = tls::load_client(&ClientFiles {
        ca: Some(ca.pem.clone()),
        certificate: Some(expired.cert.clone()),
        key: Some(expired.key.clone()),
        server_hostname: None,
    })
    .expect_err("expired client certificate");
    assert!(
        e.contains(&format!("{} expired on 2021-01-01", expired.cert.display())),
        "{e}"
    );
}

#[test]
fn unix_socket_server_and_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("zeo.sock");
    // A stale socket file, as a crashed server leaves it.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    assert!(path.exists());
    let mut opts = options(Listen::Unix(path.clone()), None);
    opts.socket_mode = Some(0o600);
    let server = Server::start(
        opts,
        vec![("1".into(), Arc::new(MemoryStorage::new("1", false)), false)],
    )
    .expect("starts over a stale socket file");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let c = connect(path.display().to_string(), None).expect("client over the Unix socket");
    commit_and_load(&c, 5000);
    // A second server on the same live socket is refused.
    let e = Server::start(
        options(Listen::Unix(path.clone()), None),
        vec![("1".into(), Arc::new(MemoryStorage::new("1", false)), false)],
    )
    .err()
    .expect("second server refused");
    assert!(e.to_string().contains("another server answers"), "{e}");
    c.close();
    server.shutdown();
    assert!(!path.exists(), "a clean stop removes the socket file");
}

/// A `zeoraid serve` child with stderr captured to a file.
struct Proc {
    child: Child,
    stderr: PathBuf,
    first_line: String,
}

impl Proc {
    fn start(dir: &Path, config: &str) -> Proc {
        let conf = dir.join("zeoraid.toml");
        std::fs::write(&conf, config).expect("config");
        let stderr = dir.join(format!("stderr-{}", Instant::now().elapsed().as_nanos()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_zeoraid"))
            .args(["serve", "--config"])
            .arg(&conf)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start zeoraid");
        let mut first_line = String::new();
        let out = child.stdout.take().expect("stdout");
        BufReader::new(out)
            .read_line(&mut first_line)
            .expect("read");
        assert!(
            first_line.starts_with("zeoraid: listening on "),
            "zeoraid did not start: {first_line:?}\n{}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
        Proc {
            child,
            stderr,
            first_line,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn plaintext_client_on_the_tls_port_is_closed_and_logged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = Ca::new(d, "main");
    let s = ca.server(d, "server");
    let port = common::free_port();
    let p = Proc::start(
        d,
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[server.tls]\ncertificate = \"{}\"\nkey = \"{}\"\nhandshake-timeout = 1\n[[storage]]\nname = \"1\"\nkind = \"memory\"\n",
            s.cert.display(),
            s.key.display()
        ),
    );
    // A plaintext ZEO client waits for the server's greeting: it gets a
    // clean close instead, never a greeting.
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = sock.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "got bytes {:?}", &buf[..n]);
    assert!(started.elapsed() < Duration::from_secs(5));
    p.wait_log("no TLS handshake within 1s; a plaintext client on the TLS port?");
    // A client that speaks plaintext first (a ruok probe) is refused at once.
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    use std::io::Write;
    sock.write_all(b"\x00\x00\x00\x04ruok").expect("write");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let n = sock.read(&mut buf).unwrap_or(0);
    assert!(
        n == 0 || buf[0] == 0x15,
        "an alert or a close, got {:?}",
        &buf[..n]
    );
    p.wait_log("does not speak TLS (a plaintext client on the TLS port?)");
}

#[test]
fn unix_socket_left_by_kill_9_does_not_stop_the_next_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let sock = d.join("zeo.sock");
    let config = format!(
        "[server]\nlisten = \"{}\"\nsocket-mode = \"0660\"\n[[storage]]\nname = \"1\"\nkind = \"file\"\npath = \"Data.fs\"\n",
        sock.display()
    );
    let mut p = Proc::start(d, &config);
    assert_eq!(
        p.first_line.trim(),
        format!("zeoraid: listening on unix:{}", sock.display())
    );
    let c = connect(sock.display().to_string(), None).expect("connect");
    commit_and_load(&c, 100);
    c.close();
    let _ = p.child.kill();
    let _ = p.child.wait();
    assert!(sock.exists(), "kill -9 leaves the socket file");
    let mut p = Proc::start(d, &config);
    p.wait_log("removing stale Unix socket");
    let c = connect(sock.display().to_string(), None).expect("connect after restart");
    commit_and_load(&c, 100);
    c.close();
    // SIGTERM: a clean stop removes the socket.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
    let status = p.child.wait().expect("wait");
    assert!(status.success(), "{status:?}\n{}", p.log());
    assert!(!sock.exists(), "a clean stop removes the socket file");
}

#[test]
fn certificates_are_re_read_on_sighup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let old_ca = Ca::new(d, "old");
    let new_ca = Ca::new(d, "new");
    let live = (d.join("server.pem"), d.join("server.key"));
    let install = |p: &Pair| {
        std::fs::copy(&p.cert, &live.0).expect("copy cert");
        std::fs::copy(&p.key, &live.1).expect("copy key");
    };
    install(&old_ca.server(d, "s-old"));
    let port = common::free_port();
    let p = Proc::start(
        d,
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[server.tls]\ncertificate = \"server.pem\"\nkey = \"server.key\"\n[[storage]]\nname = \"1\"\nkind = \"memory\"\n"
        ),
    );
    let addr = format!("127.0.0.1:{port}");
    let c = connect(addr.clone(), trusting(&old_ca, None)).expect("old certificate");
    commit_and_load(&c, 10);
    install(&new_ca.server(d, "s-new"));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(p.child.id() as i32, libc::SIGHUP) };
    p.wait_log("TLS certificate");
    let c2 = connect(addr.clone(), trusting(&new_ca, None)).expect("new certificate after SIGHUP");
    commit_and_load(&c2, 10);
    // The established connection keeps working.
    commit_and_load(&c, 10);
    let e = connect(addr, trusting(&old_ca, None)).expect_err("old CA no longer matches");
    assert!(e.to_string().contains("not signed by a CA we trust"), "{e}");
}

#[test]
fn array_over_tls_and_unix_socket_backends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = Ca::new(d, "main");
    let clients = Ca::new(d, "clients");
    let me = clients.client(d, "zeoraid");
    // Backend a: TLS with client certificates required; b: a Unix socket.
    let a = tls_server(&ca.server(d, "a"), Some(&clients.pem));
    let b_path = d.join("b.sock");
    let _b = Server::start(
        options(Listen::Unix(b_path.clone()), None),
        vec![("1".into(), Arc::new(MemoryStorage::new("1", false)), false)],
    )
    .expect("unix backend");
    let port = common::free_port();
    let admin = common::free_port();
    let p = Proc::start(
        d,
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [[storage]]\nname = \"1\"\nkind = \"raid\"\n\
             [[storage.backend]]\nname = \"a\"\nkind = \"zeo\"\naddress = \"{}\"\n\
             [storage.backend.tls]\nca = \"{}\"\ncertificate = \"{}\"\nkey = \"{}\"\nserver-hostname = \"localhost\"\n\
             [[storage.backend]]\nname = \"b\"\nkind = \"zeo\"\naddress = \"{}\"\n",
            a.local_addr(),
            ca.pem.display(),
            me.cert.display(),
            me.key.display(),
            b_path.display()
        ),
    );
    let c = connect(format!("127.0.0.1:{port}"), None).expect("client of the array");
    let (oid, tid, data) = commit(&c, 4000);
    // The transaction is on both mirrors, read directly from each.
    let on_a = connect(a.local_addr().to_string(), trusting(&ca, Some(&me))).expect("a");
    check_load(&on_a, oid, tid, &data);
    let on_b = connect(b_path.display().to_string(), None).expect("b");
    check_load(&on_b, oid, tid, &data);
    // Both backends count as optimal.
    let out = Command::new(env!("CARGO_BIN_EXE_zeoraid"))
        .args(["ctl", "--admin", &format!("127.0.0.1:{admin}"), "status"])
        .output()
        .expect("ctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", p.log());
    assert!(text.contains("2 of 2 backends optimal"), "{text}");
}

#[test]
fn certificate_expiry_in_status_and_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = Ca::new(d, "main");
    for (pair, code, words) in [
        (ca.server(d, "fresh"), 0, "TLS certificate valid until"),
        (ca.expired_server(d, "old"), 2, "EXPIRED on 2021-01-01"),
    ] {
        let sub = d.join(pair.cert.file_stem().expect("stem"));
        std::fs::create_dir_all(&sub).expect("dir");
        let admin = common::free_port();
        let p = Proc::start(
            &sub,
            &format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncertificate = \"{}\"\nkey = \"{}\"\n\
                 [admin]\nlisten = \"127.0.0.1:{admin}\"\n[[storage]]\nname = \"1\"\nkind = \"memory\"\n",
                pair.cert.display(),
                pair.key.display()
            ),
        );
        let ctl = |what: &str| {
            Command::new(env!("CARGO_BIN_EXE_zeoraid"))
                .args(["ctl", "--admin", &format!("127.0.0.1:{admin}"), what])
                .output()
                .expect("ctl")
        };
        let out = ctl("status");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(code), "{text}\n{}", p.log());
        assert!(text.contains(words), "{text}");
        let metrics = common::http_get(([127, 0, 0, 1], admin).into(), "/metrics");
        assert!(
            metrics.contains(&format!(
                "zeoraid_tls_certificate_expiry_timestamp_seconds{{certificate=\"{}\"}}",
                pair.cert.display()
            )),
            "{metrics}"
        );
        if code == 2 {
            p.wait_log("expired on 2021-01-01 00:00:00 UTC: clients will refuse the connection");
        }
    }
}

/// The greeting read through a rustls client limited to one TLS version.
fn greeting_over(
    version: &'static rustls::SupportedProtocolVersion,
    ca: &Path,
    port: u16,
) -> Vec<u8> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(c.expect("cert")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .expect("version")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from("localhost").expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("conn");
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let mut frame = [0u8; 6];
    tls.read_exact(&mut frame).expect("greeting");
    assert_eq!(
        conn.protocol_version(),
        Some(version.version),
        "negotiated version"
    );
    frame.to_vec()
}

#[test]
fn tls_1_2_and_1_3_both_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "main");
    let server = tls_server(&ca.server(dir.path(), "server"), None);
    let port = server.local_addr().port();
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        assert_eq!(greeting_over(v, &ca.pem, port), b"\x00\x00\x00\x02M5");
    }
}
