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
