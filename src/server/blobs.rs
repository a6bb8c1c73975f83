//! Blobs over ZEO 5, as Python's `StorageServer` speaks it, streamed both
//! ways so a blob is never held whole in memory:
//!
//! - **Upload, a client with its own blob cache**: `storeBlobStart`,
//!   `storeBlobChunk` × n, `storeBlobEnd(oid, serial, data, id)`, all
//!   one-way. Chunks are appended to a file in the storage's staging
//!   directory ([`Upload`]); the end turns it into an
//!   [`Op::StoreBlob`](crate::storage::Op::StoreBlob) of the transaction.
//!   A chunk that cannot be written (disk full) or goes past the
//!   configured largest blob fails the *vote* with the reason: one-way
//!   messages have no answer, and a half-written blob must never commit
//!   (Python's server logs such an error and commits what it got).
//! - **Upload, a client sharing the blob directory**
//!   (`storeBlobShared(oid, serial, data, filename, id)`): the client left
//!   the file in the object's directory; a name with a path separator or
//!   not ending in `.tmp` is refused and logged, as ZEO does
//!   ([`shared_name_ok`]).
//! - **Download** (`sendBlob(oid, serial)`): the server calls the client's
//!   `receiveBlobStart`, `receiveBlobChunk` (59 000 bytes each, read from
//!   the file as they go) and `receiveBlobStop`, then answers the call, in
//!   that order on the connection. A sender waits while more than
//!   [`STREAM_WINDOW`] bytes of its own are queued for the client
//!   ([`OutMeter`]), so a slow reader holds back the file, not memory.
//!
//! Staged files are [`StagedFile`]s: removed when the transaction ends, however
//! it ends (finish, abort, the client vanishing), so no upload outlives its
//! transaction; the storage keeps its own link to the files it committed.

use super::{ConnId, Out, Shared};
use crate::locks::lock;
use crate::storage::blobdir::StagedFile;
use crate::storage::{Error, Oid, Result, Tid};
use crate::zeo::message::{self, bin, oid_value, tid_value};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Bytes per `receiveBlobChunk`, as ZEO sends them.
pub(crate) const CHUNK: usize = 59_000;

/// How many bytes of one download may wait in the connection's queue.
pub(crate) const STREAM_WINDOW: usize = 4 << 20;

/// How long a download waits for a client that reads nothing at all.
const STALL_LIMIT: Duration = Duration::from_secs(300);

/// An upload between `storeBlobStart` and `storeBlobEnd`.
pub(crate) struct Upload {
    file: std::fs::File,
    staged: StagedFile,
    bytes: u64,
    /// Why this upload cannot commit (kept for the vote to report).
    failed: Option<String>,
}

impl Upload {
    /// A fresh staging file in `dir`.
    pub(crate) fn start(dir: &Path) -> Result<Upload> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Io(format!(
                "cannot create the blob staging directory {}: {e}",
                dir.display()
            ))
        })?;
        let (file, path) = crate::storage::blobdir::create_temp(dir)?;
        Ok(Upload {
            file,
            staged: StagedFile::new(path),
            bytes: 0,
            failed: None,
        })
    }

    /// Append a chunk; past `max` bytes or on a write error the upload is
    /// marked failed (and stops writing).
    pub(crate) fn chunk(&mut self, data: &[u8], max: Option<u64>) {
        if self.failed.is_some() {
            return;
        }
        self.bytes += data.len() as u64;
        if let Some(why) = too_large(self.bytes, max) {
            self.failed = Some(why);
            return;
        }
        if let Err(e) = self.file.write_all(data) {
            self.failed = Some(format!(
                "cannot write the uploaded blob to {}: {e}",
                self.staged.path().display()
            ));
        }
    }

    /// The staged file, or why the upload failed.
    pub(crate) fn end(self) -> std::result::Result<StagedFile, String> {
        match self.failed {
            Some(why) => Err(why),
            None => Ok(self.staged),
        }
    }
}

/// Why an upload of `bytes` so far is refused under the limit `max`
/// (pure).
pub(crate) fn too_large(bytes: u64, max: Option<u64>) -> Option<String> {
    match max {
        Some(m) if bytes > m => Some(format!(
            "the blob is larger than the configured largest blob ({m} bytes, max-blob-size); \
             raise max-blob-size or store a smaller file"
        )),
        _ => None,
    }
}

/// May a sharing client's upload be called `name`? Only a name without a
/// path separator ending in `.tmp` (or `.tmp` plus one character, ZODB's
/// own `blob_mkstemp` names), as ZEO checks (pure).
pub(crate) fn shared_name_ok(name: &str) -> bool {
    if name.is_empty() || name.contains('/') {
        return false;
    }
    let without_last = name
        .char_indices()
        .last()
        .map(|(i, _)| &name[..i])
        .unwrap_or("");
    name.ends_with(".tmp") || without_last.ends_with(".tmp")
}

// ---------------------------------------------------------------------------
// Downloads.

/// Bytes one streaming sender has queued on a connection and not yet
/// written; the event loop counts them down as frames leave.
#[derive(Default)]
pub(crate) struct OutMeter {
    queued: Mutex<usize>,
    cv: Condvar,
}

impl OutMeter {
    fn add(&self, n: usize) {
        *lock(&self.queued) += n;
    }

    fn done(&self, n: usize) {
        let mut q = lock(&self.queued);
        *q = q.saturating_sub(n);
        self.cv.notify_all();
    }

    /// Wait until at most `limit` bytes are queued; false when `gone()`
    /// says the connection closed, or nothing moved for `stall`.
    fn wait_below(&self, limit: usize, stall: Duration, gone: &dyn Fn() -> bool) -> bool {
        let mut q = lock(&self.queued);
        let mut last_move = Instant::now();
        let mut seen = *q;
        while *q > limit {
            if gone() || last_move.elapsed() > stall {
                return false;
            }
            q = self
                .cv
                .wait_timeout(q, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
            if *q != seen {
                seen = *q;
                last_move = Instant::now();
            }
        }
        true
    }
}

/// A frame whose bytes count against its sender's [`OutMeter`] until the
/// event loop has written it (or dropped it with its connection).
pub(crate) struct Metered {
    bytes: Vec<u8>,
    meter: Arc<OutMeter>,
}

impl Metered {
    fn new(bytes: Vec<u8>, meter: &Arc<OutMeter>) -> Metered {
        meter.add(bytes.len());
        Metered {
            bytes,
            meter: meter.clone(),
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        self.meter.done(self.bytes.len());
    }
}

/// Stream the committed blob file `path` of `oid`/`serial` to connection
/// `id` as `receiveBlobStart`, chunks and `receiveBlobStop`. The caller
/// answers `sendBlob` after this returns, so the answer follows the
/// chunks on the connection.
pub(crate) fn send_blob(
    shared: &Shared,
    id: ConnId,
    oid: Oid,
    serial: Tid,
    path: &Path,
    gone: &dyn Fn() -> bool,
) -> Result<()> {
    let mut file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::PosKey(oid),
        _ => Error::Io(format!("cannot open blob file {}: {e}", path.display())),
    })?;
    let meter = Arc::new(OutMeter::default());
    let send = |bytes: Vec<u8>| -> Result<()> {
        if !meter.wait_below(STREAM_WINDOW, STALL_LIMIT, gone) {
            return Err(Error::Disconnected(format!(
                "the client stopped reading the blob {oid} at {serial}"
            )));
        }
        shared.send(Out::SendMetered(id, Metered::new(bytes, &meter)));
        Ok(())
    };
    send(message::encode_oneway(
        "receiveBlobStart",
        vec![oid_value(oid), tid_value(serial)],
    ))?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = crate::storage::blobdir::read_full(&mut file, &mut buf)
            .map_err(|e| Error::Io(format!("cannot read blob file {}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        send(message::encode_oneway(
            "receiveBlobChunk",
            vec![oid_value(oid), tid_value(serial), bin(&buf[..n])],
        ))?;
        if n < CHUNK {
            break;
        }
    }
    send(message::encode_oneway(
        "receiveBlobStop",
        vec![oid_value(oid), tid_value(serial)],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_names() {
        let table = [
            ("0x03a1b2.tmp", true),
            ("abcdef.tmpX", true),
            ("x.tmp-", true),
            ("blob.blob", false),
            ("../x.tmp", false),
            ("a/b.tmp", false),
            // Only the path separator matters (ZODB names uploads after
            // the repr of the oid, quotes and backslashes included).
            ("'\\x00\\x01'8wedu7v9.tmp-", true),
            ("", false),
            (".tmp", true),
            ("x.tmpXY", false),
        ];
        for (name, ok) in table {
            assert_eq!(shared_name_ok(name), ok, "{name:?}");
        }
    }

    #[test]
    fn size_limit() {
        assert_eq!(too_large(10, None), None);
        assert_eq!(too_large(10, Some(10)), None);
        assert!(too_large(11, Some(10))
            .unwrap_or_default()
            .contains("max-blob-size"));
    }

    #[test]
    fn uploads_are_removed_when_dropped_and_fail_past_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut up = Upload::start(&dir.path().join("tmp")).expect("start");
        up.chunk(b"hello ", Some(100));
        up.chunk(b"world", Some(100));
        let staged = up.end().expect("ended");
        assert_eq!(std::fs::read(staged.path()).expect("read"), b"hello world");
        let path = staged.path().to_path_buf();
        drop(staged);
        assert!(!path.exists(), "removed with its transaction");

        let mut big = Upload::start(dir.path()).expect("start");
        big.chunk(&[0u8; 8], Some(10));
        big.chunk(&[0u8; 8], Some(10));
        let why = big.end().expect_err("too large");
        assert!(why.contains("max-blob-size"), "{why}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .collect();
        assert!(left.is_empty(), "a failed upload leaves nothing: {left:?}");
    }

    #[test]
    fn the_meter_waits_for_the_loop_and_gives_up_when_the_client_is_gone() {
        let meter = Arc::new(OutMeter::default());
        let a = Metered::new(vec![0u8; 100], &meter);
        assert!(meter.wait_below(100, Duration::from_secs(5), &|| false));
        let m2 = meter.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(a);
            drop(m2);
        });
        assert!(meter.wait_below(10, Duration::from_secs(5), &|| false));
        writer.join().expect("join");
        let _b = Metered::new(vec![0u8; 100], &meter);
        assert!(!meter.wait_below(10, Duration::from_secs(5), &|| true));
        assert!(!meter.wait_below(10, Duration::from_millis(150), &|| false));
    }
}
