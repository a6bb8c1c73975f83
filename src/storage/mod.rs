//! The ZODB storage contract as a Rust trait, and its value types.
//!
//! Everything the server serves is a [`Storage`]: the in-memory storage, the
//! file storage, a remote ZEO server reached through [`crate::zeo::client`],
//! and the RAID array itself ([`crate::raid::RaidStorage`]). The server owns the per-connection
//! commit buffer and the commit lock; a storage sees one whole transaction at
//! vote time ([`Storage::tpc_vote`]) and then exactly one of
//! [`Storage::tpc_finish`] or [`Storage::tpc_abort`].
//!
//! In-process use, with [`commit`] and [`load`] (what a ZODB connection
//! does, minus pickling):
//!
//! ```
//! use zeoraid::storage::memory::MemoryStorage;
//! use zeoraid::storage::{commit, load, Op, Storage, Tid, Txn};
//!
//! let s = MemoryStorage::new("1", false);
//! let oid = s.new_oids(1).unwrap()[0];
//! let store = Op::Store { oid, serial: Tid::ZERO, data: b"hello".to_vec().into() };
//! let tid = commit(&s, &Txn::new(vec![store])).unwrap();
//! assert_eq!(&load(&s, oid).unwrap().data[..], b"hello");
//! assert_eq!(s.last_transaction().unwrap(), tid);
//! ```
//!
//! The rules the memory and file storages share (serial checks, undo
//! decisions, tid choice, ...) are pure functions in [`rules`].

pub mod blobdir;
#[cfg(test)]
pub(crate) mod conformance;
pub mod file;
pub mod gc;
pub mod memory;
pub mod pickle_refs;
pub mod resolve;
pub mod rules;
mod stage;
#[cfg(test)]
pub(crate) mod testutil;
pub mod timestamp;
pub mod undo_id;

use std::fmt;
use std::sync::Arc;

/// Object data (a pickle). Shared so loads do not copy it.
pub type Data = Arc<[u8]>;

/// An object id: 8 bytes big-endian on the wire; ordering matches byte order.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Oid(pub u64);

/// A transaction id (a ZODB TimeStamp, see [`timestamp`]).
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Tid(pub u64);

macro_rules! id8 {
    ($t:ident) => {
        impl $t {
            pub const ZERO: $t = $t(0);
            pub const MAX: $t = $t(u64::MAX);
            pub fn to_bytes(self) -> [u8; 8] {
                self.0.to_be_bytes()
            }
            /// From exactly 8 bytes; `None` for any other length.
            pub fn from_slice(b: &[u8]) -> Option<$t> {
                let a: [u8; 8] = b.try_into().ok()?;
                Some($t(u64::from_be_bytes(a)))
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "0x{:016x}", self.0)
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "0x{:016x}", self.0)
            }
        }
    };
}
id8!(Oid);
id8!(Tid);

/// Transaction metadata as the client sent it. `extension` is the msgpack
/// encoding of the extension mapping (what ZEO's M5 protocol carries).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TxnMeta {
    pub user: Vec<u8>,
    pub description: Vec<u8>,
    pub extension: Vec<u8>,
}

/// One buffered operation of a transaction, applied at vote.
#[derive(Clone, Debug)]
pub enum Op {
    Store {
        oid: Oid,
        serial: Tid,
        data: Data,
    },
    Delete {
        oid: Oid,
        serial: Tid,
    },
    CheckCurrent {
        oid: Oid,
        serial: Tid,
    },
    /// A store whose object has a blob (ZODB's `storeBlob`): `data` is the
    /// `Blob` object's record, `blob` a file holding the blob's bytes. The
    /// storage makes the file part of the transaction at vote (a hard link
    /// into its blob directory, so a re-vote after conflicts finds it
    /// again) and leaves `blob` itself alone: whoever staged it removes it
    /// when the transaction ends.
    StoreBlob {
        oid: Oid,
        serial: Tid,
        data: Data,
        blob: std::path::PathBuf,
    },
    /// A restore of a blob record with its blob file (ZODB's
    /// `restoreBlob`: recovery copying a blob revision). The file is the
    /// storage's to take (a copy made for it in its staging directory).
    RestoreBlob {
        oid: Oid,
        serial: Tid,
        data: Data,
        prev_txn: Option<Tid>,
        blob: std::path::PathBuf,
    },
    /// Copy a record committed elsewhere (recovery, zodbconvert). `data`
    /// `None` means "no data" (an undone creation).
    Restore {
        oid: Oid,
        serial: Tid,
        data: Option<Data>,
        prev_txn: Option<Tid>,
    },
    Undo {
        txn: Tid,
    },
}

/// A whole transaction, handed to the storage at vote.
#[derive(Clone, Debug)]
pub struct Txn {
    pub meta: TxnMeta,
    /// An explicit tid (restore / RAID), or `None` to let the storage choose.
    pub tid: Option<Tid>,
    /// `' '` normally, `'p'` for a packed transaction being restored.
    pub status: u8,
    pub ops: Vec<Op>,
}

/// A write conflict the client resolves itself (ZEO 5 client-side resolution).
#[derive(Clone, Debug, PartialEq)]
pub struct Conflict {
    pub oid: Oid,
    /// (currently committed serial, serial the transaction read)
    pub committed: Tid,
    pub read: Tid,
    pub data: Data,
}

/// The outcome of a successful vote.
#[derive(Clone, Debug, PartialEq)]
pub enum Vote {
    /// Prepared under `tid`; `resolved` are oids whose new state the client
    /// must not cache (undo), `invalidated` every oid the commit changes.
    Prepared {
        tid: Tid,
        resolved: Vec<Oid>,
        invalidated: Vec<Oid>,
    },
    /// Nothing was prepared: the client must resolve these and vote again.
    Conflicts(Vec<Conflict>),
}

/// `loadBefore` result: data, the tid that wrote it, the tid that replaced it.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    pub data: Data,
    pub start: Tid,
    pub end: Option<Tid>,
}

/// One entry of `history(oid)`.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryEntry {
    pub tid: Tid,
    pub meta: TxnMeta,
    pub size: u64,
}

/// One entry of `undoLog`.
#[derive(Clone, Debug, PartialEq)]
pub struct UndoEntry {
    pub tid: Tid,
    pub meta: TxnMeta,
}

/// A data record as iterators return it.
#[derive(Clone, Debug, PartialEq)]
pub struct DataRecord {
    pub oid: Oid,
    pub tid: Tid,
    /// `None`: the object has no data in this transaction (undone creation or delete).
    pub data: Option<Data>,
    /// Set when the record reuses the data of an earlier transaction (undo).
    pub data_txn: Option<Tid>,
}

/// A committed transaction as iterators return it.
#[derive(Clone, Debug, PartialEq)]
pub struct TxnRecord {
    pub tid: Tid,
    pub status: u8,
    pub meta: TxnMeta,
    pub records: Vec<DataRecord>,
}

impl TxnRecord {
    /// Bytes of record data it carries (backpointers carry none).
    pub fn data_bytes(&self) -> u64 {
        self.records
            .iter()
            .map(|r| r.data.as_ref().map_or(0, |d| d.len() as u64))
            .sum()
    }
}

/// Errors of the storage layer. Mapped to ZODB exception class names only at
/// the protocol edge (`zeo::message`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("object {0} does not exist (POSKeyError)")]
    PosKey(Oid),
    #[error("{message} (oid {oid}, committed {committed}, read {read})")]
    Conflict {
        oid: Oid,
        committed: Tid,
        read: Tid,
        message: String,
        /// ReadConflictError rather than ConflictError.
        read_conflict: bool,
        /// The object's class, when known (a Python server names it; ZODB
        /// applications show it in the error message).
        class_name: Option<String>,
    },
    #[error("the storage is read-only")]
    ReadOnly,
    #[error("transaction error: {0}")]
    Transaction(String),
    #[error("undo error: {message}")]
    Undo { message: String, oid: Option<Oid> },
    #[error("{0}")]
    Value(String),
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("storage unavailable: {0}")]
    Disconnected(String),
    #[error("I/O error: {0}")]
    Io(String),
    /// An exception raised by a remote server, passed on by its class name.
    #[error("{class}: {message}")]
    Remote { class: String, message: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Size statistics (`get_size_info`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SizeInfo {
    pub objects: u64,
    pub bytes: u64,
}

/// One `record_iternext` step: (oid, tid, data, next oid).
pub type CurrentRecord = (Oid, Tid, Data, Option<Oid>);

/// An iterator over committed transactions, oldest first.
pub type TxnIter = Box<dyn Iterator<Item = Result<TxnRecord>> + Send>;

impl Txn {
    /// A transaction of `ops` with empty metadata, its tid chosen by the
    /// storage.
    pub fn new(ops: Vec<Op>) -> Txn {
        Txn {
            meta: TxnMeta::default(),
            tid: None,
            status: b' ',
            ops,
        }
    }
}

/// The error an in-process committer gets for a vote's conflicts: the
/// first conflicting object's (it has no client to resolve them).
pub fn conflicts_error(c: &[Conflict]) -> Error {
    let first = c.first();
    Error::Conflict {
        oid: first.map_or(Oid(0), |c| c.oid),
        committed: first.map_or(Tid::ZERO, |c| c.committed),
        read: first.map_or(Tid::ZERO, |c| c.read),
        message: format!("{} object(s) changed since they were read", c.len()),
        read_conflict: false,
        class_name: None,
    }
}

/// Vote and finish `txn` on `s` (the storage's whole two-phase commit, as
/// the server runs it for a client); returns the new transaction's tid.
/// A conflict aborts and is answered as [`Error::Conflict`] for the first
/// conflicting object (in-process callers have no client to resolve it).
/// The caller keeps to the storage's rule: one transaction at a time.
pub fn commit(s: &dyn Storage, txn: &Txn) -> Result<Tid> {
    match s.tpc_vote(txn) {
        Ok(Vote::Prepared { .. }) => s.tpc_finish().inspect_err(|_| s.tpc_abort()),
        Ok(Vote::Conflicts(c)) => {
            s.tpc_abort();
            Err(conflicts_error(&c))
        }
        Err(e) => {
            s.tpc_abort();
            Err(e)
        }
    }
}

/// The (oid, tid) of every blob record of `s` up to `upto`: the blob
/// files that must stay after a pack (every blob revision, undo copies
/// included, has a file named by its own tid).
pub(crate) fn blob_revisions(
    s: &dyn Storage,
    upto: Tid,
) -> Result<std::collections::HashSet<(u64, u64)>> {
    let mut keep = std::collections::HashSet::new();
    for t in s.iterator(None, Some(upto))? {
        for r in t?.records {
            if r.data.as_deref().is_some_and(pickle_refs::is_blob_record) {
                keep.insert((r.oid.0, r.tid.0));
            }
        }
    }
    Ok(keep)
}

/// The current revision of `oid` (ZODB's `load`): `Err(PosKey)` when it
/// does not exist.
pub fn load(s: &dyn Storage, oid: Oid) -> Result<Loaded> {
    s.load_before(oid, Tid::MAX)?.ok_or(Error::PosKey(oid))
}

/// What blob calls answer on a storage without a blob directory.
pub const NO_BLOBS: &str =
    "this storage keeps no blobs: set blob-dir on it in the zeoraid configuration, or open the ClientStorage without blob_dir";

/// The ZODB storage contract. Every storage zeoraid serves implements it
/// (memory, file, the array, the ZEO client), and so can an embedder's
/// own; the server serves any `Arc<dyn Storage>`.
///
/// ```
/// use zeoraid::storage::file::{FileOptions, FileStorage};
/// use zeoraid::storage::{commit, Op, Storage, Tid, Txn};
///
/// let dir = std::env::temp_dir().join(format!("zeoraid-doc-file-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let fs = FileStorage::open(&dir.join("Data.fs"), FileOptions::default()).unwrap();
/// let oid = fs.new_oids(1).unwrap()[0];
/// let data = b"v1".to_vec().into();
/// let t1 = commit(&fs, &Txn::new(vec![Op::Store { oid, serial: Tid::ZERO, data }])).unwrap();
/// let data = b"v2".to_vec().into();
/// let t2 = commit(&fs, &Txn::new(vec![Op::Store { oid, serial: t1, data }])).unwrap();
/// // Every revision stays readable until a pack.
/// assert_eq!(&fs.load_before(oid, t2).unwrap().unwrap().data[..], b"v1");
/// assert_eq!(fs.history(oid, 10).unwrap().len(), 2);
/// fs.close();
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
///
/// Implementations are shared between threads;
/// loads must not wait for a commit in progress. The caller guarantees that
/// at most one transaction is between `tpc_vote` and `tpc_finish`/`tpc_abort`
/// at a time (the server's commit lock).
pub trait Storage: Send + Sync {
    /// A human-readable name (`getName`).
    fn name(&self) -> String;
    fn is_read_only(&self) -> bool;
    fn supports_undo(&self) -> bool;
    /// The tid of the last committed transaction (zero when empty).
    fn last_transaction(&self) -> Result<Tid>;
    /// The revision of `oid` current just before `before`, or `None` when the
    /// object did not exist then. `Err(PosKey)` when it never existed.
    fn load_before(&self, oid: Oid, before: Tid) -> Result<Option<Loaded>>;
    /// The data of `oid` written by exactly `serial`.
    fn load_serial(&self, oid: Oid, serial: Tid) -> Result<Data>;
    /// Up to `size` revisions of `oid`, newest first.
    fn history(&self, oid: Oid, size: usize) -> Result<Vec<HistoryEntry>>;
    /// Allocate `n` new object ids.
    fn new_oids(&self, n: usize) -> Result<Vec<Oid>>;
    /// Apply a whole transaction and prepare it for commit (the storage's
    /// `tpc_begin` + stores + `tpc_vote`). Must not be visible to loads yet.
    fn tpc_vote(&self, txn: &Txn) -> Result<Vote>;
    /// Make the prepared transaction durable and visible; returns its tid.
    fn tpc_finish(&self) -> Result<Tid>;
    /// True when the storage splits `tpc_finish` for group commit into
    /// [`Storage::finish_log`] (under the commit lock), then, after the lock
    /// is handed on, [`Storage::make_durable`] and [`Storage::publish`]
    /// (in tid order). Many transactions then share one fsync.
    fn group_commit(&self) -> bool {
        false
    }
    /// Group commit, step 1 (under the commit lock): make the voted
    /// transaction final, so that the next vote sees it (conflicts, undo)
    /// and is written after it; loads do not see it yet and it is not yet
    /// durable. Returns its tid.
    fn finish_log(&self) -> Result<Tid> {
        self.tpc_finish()
    }
    /// Group commit, step 2 (without the commit lock): return once every
    /// transaction logged up to `tid` is durable. An error here means the
    /// storage can no longer promise durability: it refuses further commits.
    fn make_durable(&self, _tid: Tid) -> Result<()> {
        Ok(())
    }
    /// Group commit, step 3 (after `make_durable`, in tid order): make every
    /// logged transaction up to `tid` visible to loads.
    fn publish(&self, _tid: Tid) {}
    /// Forget the prepared transaction (no-op when none).
    fn tpc_abort(&self);
    /// Transactions for `undoLog(first, last)`, newest first.
    fn undo_log(&self, first: usize, last: usize) -> Result<Vec<UndoEntry>>;
    /// Committed transactions with `start <= tid <= stop`, oldest first.
    fn iterator(&self, start: Option<Tid>, stop: Option<Tid>) -> Result<TxnIter>;
    /// Current records in oid order starting at `next` (`record_iternext`):
    /// (oid, tid, data, next oid).
    fn record_iternext(&self, next: Option<Oid>) -> Result<Option<CurrentRecord>>;
    /// Pack: forget revisions not needed to read the database as of `t` (Unix time).
    fn pack(&self, t: f64, gc: bool) -> Result<()>;
    fn size_info(&self) -> SizeInfo;
    /// True when point reads (`load_before`, `load_serial`, ...) never wait
    /// for IO (memory storage): the server then answers them on its event
    /// loop instead of handing them to a worker.
    fn reads_never_block(&self) -> bool {
        false
    }
    /// True when reads are network round trips (a ZEO client, an array
    /// over ZEO servers): the server then runs a client's burst of reads
    /// on several workers at once instead of one after another.
    fn reads_wait_on_network(&self) -> bool {
        false
    }
    /// `load_before`'s answer when it needs no waiting (no disk read: the
    /// page cache has it), for the event loop; `None`: ask `load_before` on
    /// a worker.
    fn load_before_nowait(&self, _oid: Oid, _before: Tid) -> Option<Result<Option<Loaded>>> {
        None
    }
    /// Whether the error `e` of the client's call `method` means the client
    /// should write through another server (an HA controller standing by,
    /// fenced out, or one whose finish failed on every backend: the
    /// outcome is for the next leader to settle). The server then closes
    /// the client's connection rather than answer, as a ZEO server that
    /// went away would, so a stock client raises `ClientDisconnected`
    /// (which applications retry; in `tpc_finish`, ZODB's "outcome
    /// unknown") and reconnects to another address.
    fn sends_writers_away(&self, _method: &str, _e: &Error) -> bool {
        false
    }
    /// Use `r` to merge states where an undo meets later changes (see
    /// [`resolve`]); storages that never merge ignore it.
    fn set_conflict_resolver(&self, _r: Arc<dyn resolve::ConflictResolver>) {}
    /// For a RAID array: its state and each backend's (the `ruok` document
    /// shows it); `None` for plain storages.
    fn raid_status(&self) -> Option<crate::status::ArrayStatus> {
        None
    }
    /// Blob support: the directory where blob uploads for this storage are
    /// staged (on the blob directory's filesystem, so that committing one
    /// is a link, not a copy); `None`: the storage keeps no blobs and blob
    /// calls are refused.
    fn blob_staging_dir(&self) -> Option<std::path::PathBuf> {
        None
    }
    /// Where a client sharing the blob directory (`shared_blob_dir`) left
    /// the upload named `file_name` for `oid`: the object's directory in
    /// the blob directory. `None` without a blob directory.
    fn shared_blob_path(&self, _oid: Oid, _file_name: &str) -> Option<std::path::PathBuf> {
        None
    }
    /// An upload staged at `upload` has arrived whole (the server calls
    /// this before the transaction votes, outside the commit lock): a
    /// storage that needs more copies of it (an array: one per mirror)
    /// makes them now and returns them; the caller removes them when the
    /// transaction ends. The default needs none.
    fn prepare_blob(&self, _upload: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
        Ok(Vec::new())
    }
    /// The committed blob file of `oid` written by `serial`
    /// (`loadBlob`); `Err(PosKey)` when there is none.
    fn load_blob(&self, _oid: Oid, _serial: Tid) -> Result<std::path::PathBuf> {
        Err(Error::Unsupported(NO_BLOBS.into()))
    }
    /// Flush and release resources.
    fn close(&self) {}
}
