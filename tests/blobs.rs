//! Blobs with zeoraid's own ZEO client (issue #11): stored and loaded
//! through zeoraid's file storage and through a Python `runzeo` with a
//! `blob-dir`, streamed both ways; the files land in each server's blob
//! directory in ZODB's layout; a client without a blob cache and a storage
//! without a blob directory refuse blobs with errors that say what to set.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;
use zeoraid::storage::blobdir::BlobDir;
use zeoraid::storage::{commit, Error, Oid, Op, Storage, Tid, Txn};
use zeoraid::zeo::client::{Client, ClientOptions};

/// A blob record as ZODB writes it (`ZODB.blob.Blob`, protocol 3).
const BLOB_RECORD: &[u8] = b"\x80\x03cZODB.blob\nBlob\nq\x00.\x80\x03N.";

fn client(addr: &str, cache: Option<&Path>) -> Client {
    Client::connect(ClientOptions {
        call_timeout: Duration::from_secs(30),
        blob_dir: cache.map(Path::to_path_buf),
        ..ClientOptions::new(addr)
    })
    .expect("connect")
}

/// A file of `len` bytes of a pattern that differs along the file.
fn blob_file(dir: &Path, name: &str, len: usize) -> (std::path::PathBuf, Vec<u8>) {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).expect("create blob file");
    f.write_all(&data).expect("write blob file");
    (p, data)
}

/// Store a blob of `len` bytes as a new object, load it back with a fresh
/// cache; the (oid, tid) and the bytes.
fn round_trip(
    c: &Client,
    staging: &Path,
    len: usize,
    fresh_cache: &Path,
    addr: &str,
) -> (Oid, Tid, Vec<u8>) {
    let (path, data) = blob_file(staging, &format!("upload-{len}"), len);
    let oid = c.new_oids(1).expect("oid")[0];
    let tid = commit(
        c,
        &Txn::new(vec![Op::StoreBlob {
            oid,
            serial: Tid::ZERO,
            data: BLOB_RECORD.to_vec().into(),
            blob: path,
        }]),
    )
    .expect("commit a blob");
    let reader = client(addr, Some(fresh_cache));
    let got = reader.load_blob(oid, tid).expect("load the blob");
    assert!(
        got.starts_with(fresh_cache),
        "cached in the client's blob_dir: {}",
        got.display()
    );
    let bytes = std::fs::read(&got).expect("read the cached blob");
    assert!(
        bytes == data,
        "{len}-byte blob came back different ({} bytes)",
        bytes.len()
    );
    // A second load is served from the cache (the server is not asked).
    assert_eq!(reader.load_blob(oid, tid).expect("cached"), got);
    reader.close();
    (oid, tid, data)
}

#[test]
fn the_rust_client_stores_and_loads_blobs_through_zeoraid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "[[storage]]\nname = \"1\"\nkind = \"file\"\npath = \"{0}/Data.fs\"\nblob-dir = \"{0}/blobs\"\n",
        dir.path().display()
    );
    let server = common::ZeoraidProcess::start(dir.path(), &config);
    let addr = server.addr.to_string();
    let cache = dir.path().join("cache");
    let c = client(&addr, Some(&cache));
    let staging = c
        .blob_staging_dir()
        .expect("a client with a cache stages uploads");
    for (i, len) in [0usize, 1, 59_000, 59_001, 3 << 20].into_iter().enumerate() {
        let (oid, tid, data) = round_trip(
            &c,
            &staging,
            len,
            &dir.path().join(format!("fresh-{i}")),
            &addr,
        );
        // In the server's blob directory, ZODB's layout, as Python reads it.
        let server_copy = BlobDir::open(&dir.path().join("blobs"), false)
            .expect("the server's blob dir")
            .path(oid.0, tid.0);
        assert!(std::fs::read(&server_copy).expect("the server's file") == data);
    }
    // A revision that does not exist: POSKeyError, nothing cached.
    let oid = c.new_oids(1).expect("oid")[0];
    match c.load_blob(oid, Tid(12345)) {
        Err(Error::PosKey(o)) => assert_eq!(o, oid),
        other => panic!("expected PosKey, got {other:?}"),
    }
    c.close();
}

#[test]
fn the_rust_client_stores_and_loads_blobs_through_python_runzeo() {
    let zeo = common::RunZeo::start_with_blobs();
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = zeo.addr();
    let c = client(&addr, Some(&dir.path().join("cache")));
    let staging = c.blob_staging_dir().expect("staging");
    for (i, len) in [10usize, 200_000].into_iter().enumerate() {
        let (oid, tid, data) = round_trip(
            &c,
            &staging,
            len,
            &dir.path().join(format!("fresh-{i}")),
            &addr,
        );
        let theirs = BlobDir::open(&zeo.blob_dir(), false)
            .expect("runzeo's blob dir")
            .path(oid.0, tid.0);
        assert!(
            std::fs::read(&theirs).expect("runzeo's file") == data,
            "runzeo holds the blob at {}",
            theirs.display()
        );
    }
    c.close();
}

#[test]
fn blobs_without_a_cache_or_a_blob_dir_are_refused_saying_what_to_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "[[storage]]\nname = \"1\"\nkind = \"file\"\npath = \"{}/Data.fs\"\n",
        dir.path().display()
    );
    let server = common::ZeoraidProcess::start(dir.path(), &config);
    let addr = server.addr.to_string();
    // No cache on the client: refused before anything is sent.
    let plain = client(&addr, None);
    let (path, _) = blob_file(dir.path(), "x", 10);
    let oid = plain.new_oids(1).expect("oid")[0];
    let store = Txn::new(vec![Op::StoreBlob {
        oid,
        serial: Tid::ZERO,
        data: BLOB_RECORD.to_vec().into(),
        blob: path.clone(),
    }]);
    let e = commit(&plain, &store).expect_err("no cache");
    assert!(e.to_string().contains("blob_dir"), "{e}");
    // A cache on the client, but the server's storage keeps no blobs.
    let cached = client(&addr, Some(&dir.path().join("cache")));
    let e = commit(&cached, &store).expect_err("no blob-dir on the server");
    assert!(e.to_string().contains("blob-dir"), "{e}");
    // The connection is still good.
    let oid2 = cached.new_oids(1).expect("oid")[0];
    commit(
        &cached,
        &Txn::new(vec![Op::Store {
            oid: oid2,
            serial: Tid::ZERO,
            data: b"plain".to_vec().into(),
        }]),
    )
    .expect("a plain commit after the refused blob");
    plain.close();
    cached.close();
}

/// An array over `names`: file backends with a blob directory each (in
/// `dir/NAME/`), plus `zeo` backends (name, address) with a blob cache.
fn array(dir: &Path, files: &[&str], zeo: &[(&str, String)]) -> zeoraid::raid::RaidStorage {
    array_with_offsite(dir, files, zeo, &[])
}

/// [`array`] plus off-site ZEO backends (name, address) with a blob cache.
fn array_with_offsite(
    dir: &Path,
    files: &[&str],
    zeo: &[(&str, String)],
    offsite: &[(&str, String)],
) -> zeoraid::raid::RaidStorage {
    use zeoraid::config::{BackendConfig, BackendMode, StorageConfig};
    let mut backends: Vec<BackendConfig> = files
        .iter()
        .map(|n| BackendConfig {
            blob_dir: Some(dir.join(n).join("blobs")),
            sync: false,
            ..BackendConfig::file(n, dir.join(n).join("Data.fs"))
        })
        .collect();
    for (n, addr) in zeo {
        backends.push(BackendConfig {
            blob_dir: Some(dir.join(format!("{n}-cache"))),
            ..BackendConfig::zeo(n, addr, "1")
        });
    }
    for (n, addr) in offsite {
        backends.push(BackendConfig {
            blob_dir: Some(dir.join(format!("{n}-cache"))),
            mode: BackendMode::Offsite,
            max_lag: Some(60.0),
            ..BackendConfig::zeo(n, addr, "1")
        });
    }
    let cfg = StorageConfig {
        auto_recover: Some(false),
        ..StorageConfig::raid("1", backends)
    };
    zeoraid::open::open_raid(&cfg).expect("the array opens")
}

/// Commit a new blob revision of `oid` through the array (staged as the
/// server stages an upload); the new serial.
fn put_blob(a: &dyn Storage, oid: Oid, serial: Tid, len: usize, seed: u8) -> Tid {
    let staging = a.blob_staging_dir().expect("the array stages blobs");
    std::fs::create_dir_all(&staging).expect("staging dir");
    let (path, _) = blob_file(&staging, &format!("up-{}-{seed}", oid.0), len);
    // Make the content depend on the seed too.
    let mut bytes = std::fs::read(&path).expect("read");
    for b in bytes.iter_mut() {
        *b = b.wrapping_add(seed);
    }
    std::fs::write(&path, &bytes).expect("write");
    // As the server does when an upload ends (odd seeds: not, so the
    // copies are made at vote instead).
    let prepared = if seed.is_multiple_of(2) {
        a.prepare_blob(&path).expect("copies for the other mirrors")
    } else {
        Vec::new()
    };
    let tid = commit(
        a,
        &Txn::new(vec![Op::StoreBlob {
            oid,
            serial,
            data: BLOB_RECORD.to_vec().into(),
            blob: path.clone(),
        }]),
    )
    .expect("commit a blob through the array");
    for p in &prepared {
        // A file backend moved its copy into its blob directory; a ZEO
        // backend's copy (streamed) is the stager's to remove.
        let _ = std::fs::remove_file(p);
    }
    let _ = std::fs::remove_file(&path); // the server removes its staged upload
    tid
}

fn backend_blob(dir: &Path, name: &str, oid: Oid, tid: Tid) -> Option<Vec<u8>> {
    let d = BlobDir::open(&dir.join(name).join("blobs"), false).expect("blob dir");
    std::fs::read(d.path(oid.0, tid.0)).ok()
}

#[test]
fn an_array_mirrors_blobs_recovers_them_and_verify_finds_a_changed_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = array(dir.path(), &["a", "b"], &[]);
    let oids = a.new_oids(3).expect("oids");
    let mut serials = [Tid::ZERO; 3];
    let mut written = Vec::new();
    for (i, oid) in oids.iter().enumerate() {
        serials[i] = put_blob(&a, *oid, serials[i], 100_000 * (i + 1), 1 + i as u8);
        written.push((*oid, serials[i]));
    }
    for (oid, tid) in &written {
        let on_a = backend_blob(dir.path(), "a", *oid, *tid).expect("on a");
        assert_eq!(
            backend_blob(dir.path(), "b", *oid, *tid),
            Some(on_a),
            "mirrored"
        );
    }
    // Loads go through the read policy; the bytes are the same either way.
    let p = a
        .load_blob(oids[0], serials[0])
        .expect("load through the array");
    assert_eq!(std::fs::read(p).expect("read").len(), 100_000);

    // b is out while blobs are committed; its recovery brings them.
    a.disable("b").expect("disable b");
    for (i, oid) in oids.iter().enumerate() {
        serials[i] = put_blob(&a, *oid, serials[i], 50_000 + i, 2);
        written.push((*oid, serials[i]));
    }
    let report = a.recover("b", false).expect("recover b");
    assert_eq!(report.copied, 3);
    for (oid, tid) in &written {
        assert_eq!(
            backend_blob(dir.path(), "b", *oid, *tid),
            backend_blob(dir.path(), "a", *oid, *tid),
            "after recovery, b holds {oid} at {tid} as a does"
        );
    }
    assert_eq!(a.verify("b").expect("verify").difference, None);

    // One byte of one blob file on b changes: verify names it.
    let (oid, tid) = written[1];
    let victim = BlobDir::open(&dir.path().join("b").join("blobs"), false)
        .expect("dir")
        .path(oid.0, tid.0);
    let mut bytes = std::fs::read(&victim).expect("read");
    bytes[777] ^= 1;
    let mut perms = std::fs::metadata(&victim).expect("meta").permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&victim, perms).expect("chmod");
    std::fs::write(&victim, &bytes).expect("write");
    let d = a
        .verify("b")
        .expect("verify")
        .difference
        .expect("a difference");
    assert_eq!((d.tid, d.oid), (tid, Some(oid)), "{d}");
    assert!(d.what.contains("blob file differs"), "{d}");
    a.close();
}

#[test]
fn recovery_copies_blobs_onto_a_python_zeo_target() {
    let zeo = common::RunZeo::start_with_blobs();
    let dir = tempfile::tempdir().expect("tempdir");
    let a = array(dir.path(), &["a"], &[("py", zeo.addr())]);
    let oid = a.new_oids(1).expect("oid")[0];
    let t1 = put_blob(&a, oid, Tid::ZERO, 70_000, 3);
    a.disable("py").expect("disable py");
    let t2 = put_blob(&a, oid, t1, 130_000, 4);
    let oid2 = a.new_oids(1).expect("oid")[0];
    let t3 = put_blob(&a, oid2, Tid::ZERO, 10, 5);
    let report = a.recover("py", false).expect("recover onto runzeo");
    assert_eq!(report.copied, 2);
    let theirs = BlobDir::open(&zeo.blob_dir(), false).expect("runzeo's blob dir");
    for (o, t) in [(oid, t1), (oid, t2), (oid2, t3)] {
        assert_eq!(
            std::fs::read(theirs.path(o.0, t.0)).ok(),
            backend_blob(dir.path(), "a", o, t),
            "runzeo holds {o} at {t} as the file backend does"
        );
    }
    assert_eq!(a.verify("py").expect("verify").difference, None);
    a.close();
}

#[test]
fn an_offsite_mirror_gets_every_blob_file() {
    // The off-site site: Python runzeo with a blob directory (ZEO has no
    // restoreBlob: each blob goes as a store inside the transaction begun
    // with the source's tid, between pipelined plain transactions).
    let zeo = common::RunZeo::start_with_blobs();
    let dir = tempfile::tempdir().expect("tempdir");
    let a = array_with_offsite(dir.path(), &["a", "b"], &[], &[("dr", zeo.addr())]);
    let oids = a.new_oids(4).expect("oids");
    let mut written = Vec::new();
    let mut serial = Tid::ZERO;
    for round in 0..3u8 {
        // Plain transactions around each blob, so batches mix the two.
        for i in 0..5u8 {
            commit(
                &a,
                &Txn::new(vec![Op::Store {
                    oid: oids[3],
                    serial,
                    data: vec![round, i].into(),
                }]),
            )
            .map(|t| serial = t)
            .expect("a plain commit");
        }
        for (i, oid) in oids[..3].iter().enumerate() {
            let prev = written
                .iter()
                .rev()
                .find(|(o, _)| o == oid)
                .map_or(Tid::ZERO, |(_, t)| *t);
            let tid = put_blob(&a, *oid, prev, 20_000 + 7_000 * i, 10 + round);
            written.push((*oid, tid));
        }
    }
    let last = a.last_transaction().expect("last");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = serde_json::to_value(&a.status().offsite[0]).unwrap();
        if m["last-tid"].as_str() == Some(last.to_string().as_str()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the off-site mirror did not catch up: {m}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let theirs = BlobDir::open(&zeo.blob_dir(), false).expect("runzeo's blob dir");
    for (o, t) in &written {
        let mirrored = std::fs::read(theirs.path(o.0, t.0)).ok();
        assert!(
            mirrored.is_some(),
            "the mirror lacks the blob of {o} at {t}"
        );
        assert_eq!(
            mirrored,
            backend_blob(dir.path(), "a", *o, *t),
            "the mirror's blob of {o} at {t} is a's"
        );
    }
    // Its history is the array's, plain transactions included.
    let dr = client(&zeo.addr(), None);
    assert_eq!(dr.last_transaction().expect("dr last"), last);
    a.close();
}
