//! Blobs through zeoraid's ZEO client, streamed both ways, so a remote
//! ZEO server (Python `runzeo` with a `blob-dir`, or zeoraid) can be a
//! blob backend:
//!
//! - **Store**: an [`Op::StoreBlob`](crate::storage::Op::StoreBlob) goes
//!   out as `storeBlobStart`, `storeBlobChunk` × n (59 000 bytes each, read
//!   from the file as they are sent) and `storeBlobEnd(oid, serial, data,
//!   id)`, as Python's `ClientStorage` sends them to a non-shared server.
//! - **Load**: `sendBlob(oid, serial)`; the server answers with
//!   `receiveBlobStart`, `receiveBlobChunk` × n and `receiveBlobStop`
//!   before the call's reply. The reader thread appends the chunks to a
//!   file in the client's blob cache ([`ClientOptions::blob_dir`], ZODB's
//!   layout); the call returns the committed file's path. Nothing is held
//!   in memory beyond one chunk.
//!
//! [`ClientOptions::blob_dir`]: super::ClientOptions::blob_dir

use super::conn::{Conn, OutFrame};
use super::link::Inner;
use crate::locks::lock;
use crate::storage::blobdir::BlobDir;
use crate::storage::{Error, Oid, Result, Tid};
use crate::zeo::message::{self, oid_value, tid_value};
use rmpv::Value;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Bytes per `storeBlobChunk`, as ZEO's client sends them.
const CHUNK: usize = 59_000;

/// Downloads in progress, keyed by (oid, serial).
#[derive(Default)]
pub(super) struct Downloads(Mutex<HashMap<(u64, u64), Download>>);

struct Download {
    path: PathBuf,
    file: Option<std::fs::File>,
    stopped: bool,
    error: Option<String>,
}

impl Downloads {
    /// A server call of the download protocol, on the reader thread; false
    /// when `method` is not one.
    pub(super) fn handle(&self, method: &str, args: &[Value]) -> bool {
        let key = match (args.first(), args.get(1)) {
            (Some(o), Some(t)) => {
                match (message::arg::oid(o, "oid"), message::arg::tid(t, "serial")) {
                    (Ok(o), Ok(t)) => (o.0, t.0),
                    _ => {
                        return matches!(
                            method,
                            "receiveBlobStart" | "receiveBlobChunk" | "receiveBlobStop"
                        )
                    }
                }
            }
            _ => {
                return matches!(
                    method,
                    "receiveBlobStart" | "receiveBlobChunk" | "receiveBlobStop"
                )
            }
        };
        let mut all = lock(&self.0);
        let Some(d) = all.get_mut(&key) else {
            if method.starts_with("receiveBlob") {
                log::warn!("ignoring {method} for a blob nobody asked for");
                return true;
            }
            return false;
        };
        match method {
            "receiveBlobStart" => match std::fs::File::create(&d.path) {
                Ok(f) => d.file = Some(f),
                Err(e) => d.error = Some(format!("cannot create {}: {e}", d.path.display())),
            },
            "receiveBlobChunk" => {
                let chunk = args
                    .get(2)
                    .and_then(|v| message::arg::bytes(v, "chunk").ok());
                match (d.file.as_mut(), chunk) {
                    (Some(f), Some(c)) => {
                        if let Err(e) = f.write_all(c) {
                            d.error = Some(format!("cannot write {}: {e}", d.path.display()));
                            d.file = None;
                        }
                    }
                    (None, _) if d.error.is_some() => {}
                    _ => d.error = Some("a blob chunk arrived out of order".into()),
                }
            }
            "receiveBlobStop" => {
                d.file = None;
                d.stopped = true;
            }
            _ => return false,
        }
        true
    }

    fn begin(&self, key: (u64, u64), path: PathBuf) -> bool {
        let mut all = lock(&self.0);
        if all.contains_key(&key) {
            return false;
        }
        all.insert(
            key,
            Download {
                path,
                file: None,
                stopped: false,
                error: None,
            },
        );
        true
    }

    fn end(&self, key: (u64, u64)) -> Option<Download> {
        lock(&self.0).remove(&key)
    }
}

/// Fetch revision `serial` of `oid`'s blob into the cache `dir` (unless it
/// is there already) and return its path.
pub(super) fn load(inner: &Inner, dir: &BlobDir, oid: Oid, serial: Tid) -> Result<PathBuf> {
    let target = dir.path(oid.0, serial.0);
    if target.is_file() {
        return Ok(target);
    }
    let key = (oid.0, serial.0);
    let (file, tmp) = dir.new_temp_file()?;
    drop(file);
    // Another thread fetching the same revision: wait for it.
    let started = std::time::Instant::now();
    while !inner.downloads.begin(key, tmp.clone()) {
        if started.elapsed() > inner.opts.call_timeout {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::Disconnected(format!(
                "{}: another download of blob {oid} at {serial} did not finish",
                inner.addr()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        if target.is_file() {
            let _ = std::fs::remove_file(&tmp);
            return Ok(target);
        }
    }
    let called = inner.call("sendBlob", vec![oid_value(oid), tid_value(serial)]);
    let got = inner.downloads.end(key);
    let outcome = match (called, got) {
        (Err(e), _) => Err(e),
        (Ok(_), Some(d)) if d.stopped && d.error.is_none() => Ok(()),
        (Ok(_), Some(d)) => Err(Error::Io(format!(
            "{}: blob {oid} at {serial} did not arrive whole: {}",
            inner.addr(),
            d.error
                .unwrap_or_else(|| "the server sent no receiveBlobStop".into())
        ))),
        (Ok(_), None) => Err(Error::Io("the blob download vanished".into())),
    };
    match outcome {
        Ok(()) => Ok(dir.commit_file(&tmp, oid.0, serial.0)?),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Send the blob file `path` of a store as `storeBlobStart`, chunks and
/// `storeBlobEnd`, one frame at a time.
pub(super) fn store(
    conn: &Conn,
    path: &Path,
    oid: Oid,
    serial: Tid,
    data: &[u8],
    txn_id: &Value,
) -> Result<()> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| Error::Io(format!("cannot open the blob file {}: {e}", path.display())))?;
    conn.send(&[OutFrame::whole(
        conn.flavour().encode_oneway("storeBlobStart", vec![]),
    )])?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = crate::storage::blobdir::read_full(&mut f, &mut buf)
            .map_err(|e| Error::Io(format!("cannot read the blob file {}: {e}", path.display())))?;
        if n > 0 {
            conn.send(&[OutFrame::oneway(
                conn.flavour(),
                "storeBlobChunk",
                &[],
                Some(&buf[..n]),
                &[],
            )])?;
        }
        if n < CHUNK {
            break;
        }
    }
    conn.send(&[OutFrame::oneway(
        conn.flavour(),
        "storeBlobEnd",
        &[oid_value(oid), tid_value(serial)],
        Some(data),
        std::slice::from_ref(txn_id),
    )])
}
