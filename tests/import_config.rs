//! `zeoraid import-config` on real-shaped ZConfig files
//! (`tests/data/zconfig/`, as ZEO's and gocept.zeoraid's documentation
//! show them): each is imported, the TOML loads with zeoraid's own loader,
//! and a zeoraid serving it is used by a stock `ZEO.ClientStorage` (commit,
//! then read back over a new connection; blobs too where configured). The
//! gocept `<raidstorage>` runs over three `runzeo` servers. A file it
//! cannot read exits 2 naming the file and the line.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/zconfig")
        .join(name)
}

/// Copy `name` into `dir` (with `replace`d text), import it, check the
/// TOML loads; returns the TOML's path and text.
fn import(dir: &Path, name: &str, replace: &[(&str, String)]) -> (PathBuf, String) {
    let mut text = std::fs::read_to_string(data(name)).expect("a test config");
    for (from, to) in replace {
        text = text.replace(from, to);
    }
    let conf = dir.join(name);
    std::fs::write(&conf, text).expect("copy the config");
    let toml = dir.join("zeoraid.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_zeoraid"))
        .arg("import-config")
        .arg(&conf)
        .arg("-o")
        .arg(&toml)
        .output()
        .expect("run zeoraid import-config");
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&toml).expect("the imported config");
    toml::from_str::<toml::Value>(&text)
        .unwrap_or_else(|e| panic!("{name}: not TOML: {e}\n{text}"));
    zeoraid::config::Config::load(&toml).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
    (toml, text)
}

/// `zeoraid serve` on `toml` (`listen`: override, or the file's own);
/// returns the child and the address it printed (`HOST:PORT` or `unix:PATH`).
fn serve(toml: &Path, listen: Option<&str>) -> (Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zeoraid"));
    cmd.args(["serve", "--config"]).arg(toml);
    if let Some(l) = listen {
        cmd.args(["--listen", l]);
    }
    let mut child = cmd
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start zeoraid");
    let addr = common::listening_on(&mut child);
    (child, addr)
}

const CLIENT: &str = r#"
import json, ssl, sys
import transaction, ZODB, ZEO.ClientStorage
from ZODB.blob import Blob
addr, name, opts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if addr.startswith("unix:"):
    addr = addr[5:]
else:
    host, port = addr.rsplit(":", 1)
    addr = (host, int(port))
kw = {}
if opts.get("ca"):
    ctx = ssl.create_default_context(cafile=opts["ca"])
    ctx.load_cert_chain(opts["cert"], opts["key"])
    kw.update(ssl=ctx, ssl_server_hostname="localhost")
def db(n):
    if opts.get("blobs"):
        kw["blob_dir"] = opts["blobs"] + str(n)
    return ZODB.DB(ZEO.ClientStorage.ClientStorage(addr, storage=name, wait_timeout=30, **kw))
d = db(1)
c = d.open()
c.root()["imported"] = "yes"
if opts.get("blobs"):
    b = Blob()
    with b.open("w") as f:
        f.write(b"blob data")
    c.root()["blob"] = b
transaction.commit()
d.close()
d = db(2)
c = d.open()
assert c.root()["imported"] == "yes"
if opts.get("blobs"):
    with c.root()["blob"].open() as f:
        assert f.read() == b"blob data"
d.close()
print("ok")
"#;

fn client(addr: &str, storage: &str, opts: serde_json::Value) {
    let out = common::run_python(&[
        "-c".to_string(),
        CLIENT.to_string(),
        addr.to_string(),
        storage.to_string(),
        opts.to_string(),
    ]);
    assert_eq!(out.trim(), "ok", "{addr} {storage}");
}

fn stop(mut child: Child) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
}

#[test]
fn plain_filestorage() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("var")).expect("var");
    let (toml, text) = import(dir.path(), "filestorage.conf", &[]);
    for needle in [
        "listen = \"0.0.0.0:8100\"",
        "transaction-timeout = 30.0",
        "# invalidation-age 3600",
        "# quota 10GB",
        "# pid-filename",
        "# <eventlog>",
    ] {
        assert!(text.contains(needle), "{needle:?} in\n{text}");
    }
    let (child, addr) = serve(&toml, Some("127.0.0.1:0"));
    client(&addr, "1", serde_json::json!({}));
    stop(child);
    assert!(dir.path().join("var/Data.fs").exists());
}

#[test]
fn blobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("var")).expect("var");
    let (toml, text) = import(dir.path(), "blobs.conf", &[]);
    assert!(text.contains("blob-dir = \"var/blobs\""), "{text}");
    let (child, addr) = serve(&toml, Some("127.0.0.1:0"));
    let cache = dir.path().join("client-blobs");
    client(&addr, "1", serde_json::json!({ "blobs": cache }));
    stop(child);
}

/// Needs the `tls` feature: a build without it refuses `[server.tls]`
/// (`config::import`'s table test checks that refusal).
#[cfg(feature = "tls")]
#[test]
fn ssl_with_authenticate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = common::certs::Ca::new(dir.path(), "ca");
    let server = ca.server(dir.path(), "srv");
    let me = ca.client(dir.path(), "me");
    std::fs::copy(&ca.pem, dir.path().join("ca.pem")).ok();
    std::fs::copy(&server.cert, dir.path().join("server.pem")).expect("cert");
    std::fs::copy(&server.key, dir.path().join("server.key")).expect("key");
    let (toml, text) = import(dir.path(), "ssl.conf", &[]);
    assert!(
        text.contains("[server.tls]") && text.contains("client-ca = \"ca.pem\""),
        "{text}"
    );
    let (child, addr) = serve(&toml, Some("127.0.0.1:0"));
    client(
        &addr,
        "1",
        serde_json::json!({ "ca": ca.pem, "cert": me.cert, "key": me.key }),
    );
    stop(child);
}

#[test]
fn unix_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (toml, text) = import(dir.path(), "unix.conf", &[]);
    assert!(text.contains("listen = \"./zeo.sock\""), "{text}");
    let (child, addr) = serve(&toml, None);
    assert!(
        addr.starts_with("unix:") && addr.ends_with("zeo.sock"),
        "{addr}"
    );
    client(&addr, "1", serde_json::json!({}));
    stop(child);
}

#[test]
fn two_storages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (toml, text) = import(dir.path(), "two-storages.conf", &[]);
    assert!(
        text.contains("name = \"main\"") && text.contains("pack-gc = false"),
        "{text}"
    );
    let (child, addr) = serve(&toml, Some("127.0.0.1:0"));
    client(&addr, "main", serde_json::json!({}));
    client(&addr, "catalog", serde_json::json!({}));
    stop(child);
}

#[test]
fn gocept_raidstorage_over_three_zeo_servers() {
    let zeos = [
        common::RunZeo::start(),
        common::RunZeo::start(),
        common::RunZeo::start(),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let replace: Vec<(&str, String)> = ["localhost:8101", "localhost:8102", "localhost:8103"]
        .into_iter()
        .zip(zeos.iter().map(|z| z.addr()))
        .collect();
    let (toml, text) = import(dir.path(), "gocept-raid.conf", &replace);
    for needle in [
        "kind = \"raid\"",
        "fail-mode = \"read-only\"",
        "# cluster-mode single",
        "# blob-dir raid-blobs",
    ] {
        assert!(text.contains(needle), "{needle:?} in\n{text}");
    }
    let (child, addr) = serve(&toml, Some("127.0.0.1:0"));
    client(&addr, "1", serde_json::json!({}));
    stop(child);
    // Every member got the transaction.
    for z in &zeos {
        let out = common::run_python(&[
            "-c".to_string(),
            "import sys, ZODB, ZEO.ClientStorage\n\
             h, p = sys.argv[1].rsplit(':', 1)\n\
             d = ZODB.DB(ZEO.ClientStorage.ClientStorage((h, int(p)), wait_timeout=30))\n\
             print(d.open().root()['imported'])\nd.close()"
                .to_string(),
            z.addr(),
        ]);
        assert_eq!(out.trim(), "yes", "{}", z.addr());
    }
}

#[test]
fn what_it_cannot_read_exits_2_naming_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("bad.conf");
    std::fs::write(
        &conf,
        "<zeo>\n  address 8100\n</zeo>\n<filestorage 1>\n  path $nope\n</filestorage>\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_zeoraid"))
        .arg("import-config")
        .arg(&conf)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("bad.conf:5:") && err.contains("$nope"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}
