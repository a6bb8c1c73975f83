//! The blob directory: committed blob files in ZODB's own on-disk format,
//! so Python's `FilesystemHelper`, `BlobStorage` and
//! `FileStorage(blob_dir=...)` read what we write, and we read theirs.
//!
//! ```text
//! blob-dir/
//!   .layout                      "bushy" (no newline), or "lawn"
//!   .removed                     written by pack: blobs to remove (optional)
//!   tmp/                         uploads being staged (same filesystem)
//!   0x00/0x00/0x00/0x00/0x00/0x00/0x00/0x01/     bushy: one level per oid byte
//!     0x03ed2b5c11223344.blob    one file per revision: `tid_repr(tid)` + ".blob"
//! ```
//!
//! The names are those of `ZODB.blob`: `BushyLayout.oid_to_path` gives the
//! eight `0x%02x` directories of the oid's big-endian bytes,
//! `ZODB.utils.tid_repr` the file name (`0x`, hex digits without leading
//! zero *bytes*: tid 1 is `0x01.blob`, tid 0x100 is `0x0100.blob`). The old
//! `lawn` layout (one directory per oid, named `oid_repr(oid)`) is read and
//! written too, with a warning recommending ZODB's `migrateblobs` script. A
//! directory without a `.layout` marker is chosen as Python's
//! `auto_layout_select` does (visible entries: `lawn`, else `bushy`) and the
//! marker is written, as `FilesystemHelper.create` does.
//!
//! - [`Layout`], [`oid_dir`], [`blob_file_name`], [`parse_blob_path`]: the
//!   names, as pure functions (table-tested against Python's values);
//! - [`BlobDir`]: the directory. An upload is written to
//!   [`BlobDir::new_temp_file`] and moved into place by
//!   [`BlobDir::commit_file`] (a rename: `tmp/` is on the same filesystem;
//!   a copy otherwise, as `rename_or_copy_blob` does);
//! - [`Removal`], [`RemovedWriter`], [`BlobDir::apply_removed`]: the
//!   `.removed` file FileStorage's pack writes (`hexlify(oid)` or
//!   `hexlify(oid + tid)` per line) and applies once the packed file is in
//!   place.
//!
//! Durability: when `commit_file` or `copy_committed` returns, the blob is on
//! disk: the file is fsynced, then the oid directory and the parent of every
//! directory the commit created (up to the blob directory). Python's ZODB does
//! not fsync blobs; we do, because the server acknowledges a commit only
//! once it is durable. Committed files are made read-only, as
//! `set_not_writable` does. Removals are not fsynced: a removal lost in a
//! crash leaves a garbage file, which the next pack removes.
//!
//! Concurrency: making the directories of a commit and removing emptied ones
//! are serialized inside one `BlobDir` (Python's storage lock does the same);
//! two processes must not write the same blob directory (the storage's lock
//! file keeps them apart). Opening cleans `tmp/`: uploads there belong to
//! transactions that never committed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The file naming the layout (`ZODB.blob.LAYOUT_MARKER`).
pub const LAYOUT_MARKER: &str = ".layout";
/// The staging directory for uploads (`FilesystemHelper.temp_dir`).
pub const TMP_DIR: &str = "tmp";
/// The pack's list of blobs to remove (`FileStorage` pack).
pub const REMOVED_FILE: &str = ".removed";
/// The suffix of a committed blob file (`ZODB.blob.BLOB_SUFFIX`).
pub const BLOB_SUFFIX: &str = ".blob";
/// The suffix of staged uploads and of files being moved into place.
pub const TMP_SUFFIX: &str = ".tmp";

/// Errors of the blob directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// There is no committed blob file for this revision (ZODB raises
    /// `POSKeyError`).
    #[error("no blob file for oid 0x{oid:016x} tid 0x{tid:016x} (POSKeyError)")]
    Missing { oid: u64, tid: u64 },
    /// Anything else; the message names the file and says what to do.
    #[error("{0}")]
    Io(String),
}

impl From<BlobError> for crate::storage::Error {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::Missing { oid, .. } => {
                crate::storage::Error::PosKey(crate::storage::Oid(oid))
            }
            BlobError::Io(m) => crate::storage::Error::Io(m),
        }
    }
}

fn io_err(path: &Path, what: &str, e: &io::Error) -> BlobError {
    BlobError::Io(format!("{}: {what}: {e}", path.display()))
}

/// Fill `buf` from `f` as far as the file goes (fewer bytes only at its
/// end): blob files are streamed in fixed-size pieces this way.
pub fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The blob side of a vote, as the memory and the file storage stage it:
/// the uploads to commit and the revisions an undo brings back (pure
/// bookkeeping; [`BlobDir::commit_txn`] puts them in place).
#[derive(Default)]
pub struct StagedBlobs {
    /// The storage keeps blobs (else a blob store is refused).
    pub keeps: bool,
    /// (oid, staged file) to commit as this transaction's revision.
    pub files: Vec<(u64, PathBuf)>,
    /// (oid, tid whose blob file an undo makes this transaction's).
    pub copies: Vec<(u64, u64)>,
}

impl StagedBlobs {
    pub fn new(keeps: bool) -> StagedBlobs {
        StagedBlobs {
            keeps,
            ..StagedBlobs::default()
        }
    }

    /// Refuse a blob store on a storage without blobs.
    pub fn check(&self) -> crate::storage::Result<()> {
        if self.keeps {
            Ok(())
        } else {
            Err(crate::storage::Error::Unsupported(
                crate::storage::NO_BLOBS.into(),
            ))
        }
    }

    /// `oid` is stored again in this transaction: a file staged for it
    /// no longer applies.
    pub fn stored(&mut self, oid: u64) {
        self.files.retain(|(o, _)| *o != oid);
    }

    /// `file` is `oid`'s blob in this transaction (the last one wins).
    pub fn file(&mut self, oid: u64, file: &Path) {
        self.stored(oid);
        self.files.push((oid, file.to_path_buf()));
    }

    /// An undo gives `oid` the state `data` first written by `from`: when
    /// that is a blob record, its file comes back too.
    pub fn undone(&mut self, oid: u64, data: Option<&[u8]>, from: Option<u64>) {
        self.copies.retain(|(o, _)| *o != oid);
        if let (true, Some(d), Some(from)) = (self.keeps, data, from) {
            if crate::storage::pickle_refs::is_blob_record(d) {
                self.copies.push((oid, from));
            }
        }
    }
}

/// A staged file (an upload, a copy for a mirror) that is removed when
/// dropped, unless someone moved it away first (a storage committing it).
#[derive(Debug)]
pub struct StagedFile(PathBuf);

impl StagedFile {
    /// Take charge of `path`.
    pub fn new(path: PathBuf) -> StagedFile {
        StagedFile(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.0) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!(
                    "cannot remove the staged blob file {}: {e}",
                    self.0.display()
                );
            }
        }
    }
}

/// A new, empty file with a unique name ending in `.tmp` in `dir` (mode
/// 0600, as Python's `mkstemp`): where uploads and copies of blobs are
/// staged.
pub fn create_temp(dir: &Path) -> Result<(File, PathBuf), BlobError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut last = None;
    for _ in 0..16 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{}-{n}-{:016x}{TMP_SUFFIX}",
            std::process::id(),
            rand::random::<u64>()
        );
        let p = dir.join(name);
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
        {
            Ok(f) => return Ok((f, p)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => {
                return Err(io_err(
                    &p,
                    "cannot create an upload file (is the disk full, or tmp/ missing?)",
                    &e,
                ))
            }
        }
    }
    let e = last.unwrap_or_else(|| io::Error::other("name collisions"));
    Err(io_err(dir, "cannot find a free upload file name", &e))
}

// ---------------------------------------------------------------------------
// Names (pure)
// ---------------------------------------------------------------------------

/// `ZODB.utils.oid_repr` / `tid_repr` of an 8-byte id: `0x` and its hex
/// digits with leading zeros stripped, padded back to whole bytes (`0x00`
/// for zero).
pub fn id_repr(v: u64) -> String {
    let digits = format!("{v:x}");
    if !digits.len().is_multiple_of(2) {
        format!("0x0{digits}")
    } else {
        format!("0x{digits}")
    }
}

/// The id an [`id_repr`] names; `None` for anything `id_repr` would not
/// write (upper case, odd or extra digits, leading zero bytes), because
/// `getBlobFilename` never finds such a file either.
pub fn parse_id_repr(s: &str) -> Option<u64> {
    let digits = s.strip_prefix("0x")?;
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    if !digits
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let v = u64::from_str_radix(digits, 16).ok()?;
    (id_repr(v) == s).then_some(v)
}

/// The file name of revision `tid` of a blob: `tid_repr(tid) + ".blob"`.
pub fn blob_file_name(tid: u64) -> String {
    format!("{}{BLOB_SUFFIX}", id_repr(tid))
}

/// The revision a blob file name names (the inverse of [`blob_file_name`]).
pub fn parse_blob_file_name(name: &str) -> Option<u64> {
    parse_id_repr(name.strip_suffix(BLOB_SUFFIX)?)
}

/// The bushy directory of an oid, relative to the blob directory:
/// `0x00/0x00/0x00/0x00/0x00/0x00/0x00/0x01` for oid 1.
pub fn oid_dir(oid: u64) -> PathBuf {
    Layout::Bushy.oid_dir(oid)
}

/// The oid and tid of a committed blob file in the bushy layout, from its
/// path relative to the blob directory; `None` for every other path.
pub fn parse_blob_path(rel: &Path) -> Option<(u64, u64)> {
    Layout::Bushy.parse_blob_path(rel)
}

/// One bushy directory level: `0x` and two lower-case hex digits (what
/// `binascii.hexlify` writes; Python's parser also rejects one digit).
fn is_byte_dir(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 4
        && b.starts_with(b"0x")
        && b[2..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// The plain names of a relative path; `None` if it has any other component
/// (root, `..`, `.`) or a name that is not UTF-8.
fn plain_names(rel: &Path) -> Option<Vec<&str>> {
    rel.components()
        .map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect()
}

/// The directory layouts of `ZODB.blob` (`LAYOUTS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `BushyLayout`: eight levels, one per oid byte (the default).
    Bushy,
    /// `LawnLayout`: one directory per oid, `oid_repr(oid)` (deprecated).
    Lawn,
}

impl Layout {
    /// The name in the `.layout` marker.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Bushy => "bushy",
            Layout::Lawn => "lawn",
        }
    }

    /// The layout a marker names (surrounding whitespace ignored, as
    /// Python's `.strip()` does).
    pub fn from_marker(s: &str) -> Option<Layout> {
        match s.trim() {
            "bushy" => Some(Layout::Bushy),
            "lawn" => Some(Layout::Lawn),
            _ => None,
        }
    }

    /// How many directory levels an oid's directory is below the blob dir.
    fn depth(self) -> usize {
        match self {
            Layout::Bushy => 8,
            Layout::Lawn => 1,
        }
    }

    /// Whether a directory named `name`, `depth` levels below the blob
    /// directory (0: directly in it), can lead to blob files.
    fn leads_to_blobs(self, depth: usize, name: &str) -> bool {
        match self {
            Layout::Bushy => depth < 8 && is_byte_dir(name),
            Layout::Lawn => depth == 0 && parse_id_repr(name).is_some(),
        }
    }

    /// The directory of an oid, relative to the blob directory
    /// (`oid_to_path`).
    pub fn oid_dir(self, oid: u64) -> PathBuf {
        match self {
            Layout::Bushy => oid
                .to_be_bytes()
                .iter()
                .map(|b| format!("0x{b:02x}"))
                .collect(),
            Layout::Lawn => PathBuf::from(id_repr(oid)),
        }
    }

    /// The oid whose directory `rel` is (`path_to_oid`, accepting only what
    /// [`Layout::oid_dir`] writes).
    pub fn parse_oid_dir(self, rel: &Path) -> Option<u64> {
        let names = plain_names(rel)?;
        match self {
            Layout::Bushy => {
                if names.len() != 8 || !names.iter().all(|n| is_byte_dir(n)) {
                    return None;
                }
                let mut oid = 0u64;
                for n in names {
                    oid = (oid << 8) | u64::from(u8::from_str_radix(&n[2..], 16).ok()?);
                }
                Some(oid)
            }
            Layout::Lawn => match names[..] {
                [one] => parse_id_repr(one),
                _ => None,
            },
        }
    }

    /// A committed blob file, relative to the blob directory
    /// (`getBlobFilePath`).
    pub fn blob_path(self, oid: u64, tid: u64) -> PathBuf {
        self.oid_dir(oid).join(blob_file_name(tid))
    }

    /// The oid and tid of a committed blob file from its path relative to
    /// the blob directory (`splitBlobFilename`); `None` for other paths.
    pub fn parse_blob_path(self, rel: &Path) -> Option<(u64, u64)> {
        let tid = parse_blob_file_name(rel.file_name()?.to_str()?)?;
        let oid = self.parse_oid_dir(rel.parent()?)?;
        Some((oid, tid))
    }
}

/// The layout of a blob directory, as `auto_layout_select` chooses it: the
/// marker's if there is one (an unknown name is an error), else `lawn` when
/// the directory has a visible (not dot-) entry, else `bushy`.
pub fn choose_layout(marker: Option<&str>, has_visible_entries: bool) -> Result<Layout, String> {
    match marker {
        Some(m) => Layout::from_marker(m).ok_or_else(|| {
            format!(
                "unknown blob directory layout `{}`: ZODB knows `bushy` and `lawn`; \
                 fix the marker or point the storage at the right blob directory",
                m.trim()
            )
        }),
        None if has_visible_entries => Ok(Layout::Lawn),
        None => Ok(Layout::Bushy),
    }
}

/// The mode `set_not_writable` gives a committed file: no write bits, plus
/// the read bits of its directory.
pub fn not_writable_mode(file_mode: u32, dir_mode: u32) -> u32 {
    ((file_mode & 0o7777) & !0o222) | (dir_mode & 0o444)
}

/// The directories to fsync after a file was put in `oid_dir`, for which
/// the directories `created` (top-down, ending with `oid_dir` if it was
/// made) were created: `oid_dir` (the new file's entry) and the parent of
/// every created directory (its entry). Deepest first.
pub fn dirs_to_sync(oid_dir: &Path, created: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = vec![oid_dir.to_path_buf()];
    for d in created.iter().rev() {
        if let Some(p) = d.parent() {
            if !out.iter().any(|o| o == p) {
                out.push(p.to_path_buf());
            }
        }
    }
    out
}

/// The directories that may be removed, innermost first, once `path` was
/// removed (`maybe_remove_empty_dir_containing`): its ancestors strictly
/// inside `base`, never `base` itself nor `base/tmp`. Empty when `path` is
/// not below `base` (or climbs out with `..`).
pub fn empty_parent_candidates(base: &Path, path: &Path) -> Vec<PathBuf> {
    let Ok(rel) = path.strip_prefix(base) else {
        return Vec::new();
    };
    let Some(names) = plain_names(rel) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    // Every proper prefix of `rel`, longest first.
    for n in (1..names.len()).rev() {
        let d: PathBuf = names[..n].iter().collect();
        if d == Path::new(TMP_DIR) {
            break;
        }
        out.push(base.join(d));
    }
    out
}

// ---------------------------------------------------------------------------
// The .removed file (pure)
// ---------------------------------------------------------------------------

/// One line of `.removed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// The object is garbage: its whole directory goes.
    Oid(u64),
    /// One revision goes.
    Revision { oid: u64, tid: u64 },
}

/// The line pack writes for a removal: `binascii.hexlify(oid)` or
/// `hexlify(oid + tid)`, and a newline.
pub fn removed_line(r: Removal) -> String {
    match r {
        Removal::Oid(oid) => format!("{oid:016x}\n"),
        Removal::Revision { oid, tid } => format!("{oid:016x}{tid:016x}\n"),
    }
}

fn unhex(s: &[u8]) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks(2)
        .map(|p| {
            let hi = (p[0] as char).to_digit(16)?;
            let lo = (p[1] as char).to_digit(16)?;
            Some((hi * 16 + lo) as u8)
        })
        .collect()
}

/// The removals in a `.removed` file, read as FileStorage's
/// `_remove_blob_files_tagged_for_removal_during_pack` reads it: lines split
/// at `\n`, stripped, unhexlified (either case), 8 bytes an oid, 16 an oid
/// and a tid. Any other line is an error naming it (1-based), and nothing of
/// the file is applied (Python would have applied the lines before it).
pub fn parse_removed(text: &[u8]) -> Result<Vec<Removal>, String> {
    let mut lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop(); // after the last newline: not a line
    }
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_ascii();
        let bytes = unhex(t).unwrap_or_default();
        let be = |b: &[u8]| b.iter().fold(0u64, |v, &x| (v << 8) | u64::from(x));
        let r = match bytes.len() {
            8 => Removal::Oid(be(&bytes)),
            16 => Removal::Revision {
                oid: be(&bytes[..8]),
                tid: be(&bytes[8..]),
            },
            _ => {
                return Err(format!(
                "line {}: expected 16 or 32 hex digits (an oid, or an oid and a tid), found `{}`",
                i + 1,
                String::from_utf8_lossy(t)
            ))
            }
        };
        out.push(r);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// The directory (IO)
// ---------------------------------------------------------------------------

/// An open blob directory. See the module documentation.
#[derive(Debug)]
pub struct BlobDir {
    base: PathBuf,
    tmp: PathBuf,
    layout: Layout,
    /// Held while making an oid's directories and moving a file in, and
    /// while removing emptied directories, so neither undoes the other.
    dirs: Mutex<()>,
}

fn fsync_dir(d: &Path) -> Result<(), BlobError> {
    File::open(d)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err(d, "cannot fsync the directory", &e))
}

fn fsync_file(p: &Path) -> Result<(), BlobError> {
    File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err(p, "cannot fsync", &e))
}

fn mode_of(p: &Path) -> Result<u32, BlobError> {
    fs::symlink_metadata(p)
        .map(|m| m.permissions().mode())
        .map_err(|e| io_err(p, "cannot stat", &e))
}

/// `set_not_writable(path)` given the mode of its directory.
fn set_not_writable(p: &Path, dir_mode: u32) -> Result<(), BlobError> {
    let mode = not_writable_mode(mode_of(p)?, dir_mode);
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .map_err(|e| io_err(p, "cannot make the blob file read-only", &e))
}

/// A name for a file being moved into `dir` as revision `tid`, as
/// `blob_mkstemp` names them (`tid_repr` prefix, `.tmp` suffix).
fn staging_name(dir: &Path, tid: u64) -> PathBuf {
    dir.join(format!(
        "{}{:016x}{TMP_SUFFIX}",
        id_repr(tid),
        rand::random::<u64>()
    ))
}

impl BlobDir {
    /// Open the blob directory at `path`. With `create`, a missing directory
    /// is created; otherwise it must exist. As `FilesystemHelper.create`
    /// does, a missing `.layout` marker (chosen by [`choose_layout`]) and
    /// `tmp/` are created. Leftover uploads in `tmp/` are removed.
    pub fn open(path: &Path, create: bool) -> Result<BlobDir, String> {
        let base = std::path::absolute(path)
            .map_err(|e| format!("{}: cannot resolve the blob directory: {e}", path.display()))?;
        let shown = base.display().to_string();
        match fs::metadata(&base) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "{shown}: is not a directory: the blob directory must be one; \
                     check the configured blob directory"
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !create {
                    return Err(format!(
                        "{shown}: the blob directory does not exist: check the path, \
                         or create it (open with create)"
                    ));
                }
                fs::create_dir_all(&base)
                    .map_err(|e| format!("{shown}: cannot create the blob directory: {e}"))?;
                if let Some(parent) = base.parent() {
                    fsync_dir(parent).map_err(|e| e.to_string())?;
                }
                log::info!("{shown}: created the blob directory");
            }
            Err(e) => return Err(format!("{shown}: cannot open the blob directory: {e}")),
        }

        let marker_path = base.join(LAYOUT_MARKER);
        let marker = match fs::read_to_string(&marker_path) {
            Ok(s) => Some(s),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(format!(
                    "{}: cannot read the layout marker: {e}",
                    marker_path.display()
                ))
            }
        };
        let visible = match &marker {
            Some(_) => false,
            None => has_visible_entries(&base)?,
        };
        let layout = choose_layout(marker.as_deref(), visible)
            .map_err(|e| format!("{}: {e}", marker_path.display()))?;
        if marker.is_none() {
            if visible {
                log::warn!(
                    "{shown}: the blob directory has files but no {LAYOUT_MARKER} marker: \
                     selected the `lawn` layout, as ZODB does"
                );
            }
            // Before tmp/: a crash in between never makes a fresh directory
            // look used (auto-detection counts visible entries).
            write_marker(&base, layout)?;
        }
        if layout == Layout::Lawn {
            log::warn!(
                "{shown}: the `lawn` blob directory layout is deprecated (slow with many \
                 objects); migrate it with ZODB's script: \
                 python -m ZODB.scripts.migrateblobs --layout bushy {shown} NEW-DIR"
            );
        }

        let tmp = base.join(TMP_DIR);
        match fs::create_dir(&tmp) {
            Ok(()) => fsync_dir(&base).map_err(|e| e.to_string())?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(format!(
                    "{}: cannot create the upload directory: {e}",
                    tmp.display()
                ))
            }
        }
        let dir = BlobDir {
            base,
            tmp,
            layout,
            dirs: Mutex::new(()),
        };
        let n = dir.clean_tmp().map_err(|e| e.to_string())?;
        if n > 0 {
            log::info!(
                "{}: removed {n} leftover upload(s) of transactions that never committed",
                dir.tmp.display()
            );
        }
        Ok(dir)
    }

    /// The blob directory (absolute).
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Its layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Where uploads are staged (`tmp/`, on the blob directory's
    /// filesystem, so committing is a rename).
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    fn lock_dirs(&self) -> MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic elsewhere leaves nothing broken.
        self.dirs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new, empty, uniquely named file in `tmp/` (name ending in `.tmp`,
    /// mode 0600 as `mkstemp` makes), open for reading and writing.
    pub fn new_temp_file(&self) -> Result<(File, PathBuf), BlobError> {
        create_temp(&self.tmp)
    }

    /// The committed file of revision `tid` of `oid` (it may not exist).
    pub fn path(&self, oid: u64, tid: u64) -> PathBuf {
        self.base.join(self.layout.blob_path(oid, tid))
    }

    /// The directory of `oid` (it may not exist).
    pub fn oid_path(&self, oid: u64) -> PathBuf {
        self.base.join(self.layout.oid_dir(oid))
    }

    /// Whether revision `tid` of `oid` has a committed file.
    pub fn exists(&self, oid: u64, tid: u64) -> bool {
        self.path(oid, tid).is_file()
    }

    /// Open a committed blob file for reading; [`BlobError::Missing`] when
    /// there is none (`loadBlob`'s `POSKeyError`).
    pub fn open_blob(&self, oid: u64, tid: u64) -> Result<File, BlobError> {
        let p = self.path(oid, tid);
        match File::open(&p) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(BlobError::Missing { oid, tid }),
            Err(e) => Err(io_err(&p, "cannot open the blob file", &e)),
        }
    }

    /// Make the directory of `oid` and its missing parents; the ones made,
    /// top-down. Called with the `dirs` lock held.
    fn make_oid_dir(&self, oid: u64) -> Result<Vec<PathBuf>, BlobError> {
        let rel = self.layout.oid_dir(oid);
        let mut created = Vec::new();
        if self.base.join(&rel).is_dir() {
            return Ok(created);
        }
        let mut cur = self.base.clone();
        for c in rel.components() {
            cur.push(c);
            match fs::create_dir(&cur) {
                Ok(()) => created.push(cur.clone()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(
                    &cur,
                    "cannot create a blob directory (is the disk full or the directory read-only?)",
                    &e,
                )),
            }
        }
        Ok(created)
    }

    /// Commit the file `src` (an upload, usually in [`BlobDir::tmp_dir`]) as
    /// revision `tid` of `oid`: move it into place (a rename, or a copy and
    /// removal when the rename fails, e.g. across filesystems), make it
    /// read-only, and make it durable. Returns the committed path. An
    /// existing file of the same revision is replaced, as in Python.
    pub fn commit_file(&self, src: &Path, oid: u64, tid: u64) -> Result<PathBuf, BlobError> {
        let target = self.path(oid, tid);
        let oid_dir = self.oid_path(oid);
        // The data first, outside the lock (it may be large).
        File::open(src)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_err(src, "cannot fsync the uploaded blob", &e))?;
        let created = {
            let _g = self.lock_dirs();
            let created = self.make_oid_dir(oid)?;
            let dir_mode = mode_of(&oid_dir)?;
            set_not_writable(src, dir_mode)?;
            match fs::rename(src, &target) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound && !src.exists() => {
                    return Err(io_err(src, "the uploaded blob file is gone", &e));
                }
                Err(e) => {
                    log::debug!(
                        "cannot rename {} to {} ({e}): copying it",
                        src.display(),
                        target.display()
                    );
                    copy_into_place(src, &target, dir_mode)?;
                    // The blob is committed; a leftover in tmp/ goes at the next open.
                    if let Err(e) = fs::remove_file(src) {
                        log::warn!("{}: cannot remove the copied upload: {e}", src.display());
                    }
                }
            }
            created
        };
        // The mode change (the data is clean already), then the entries.
        fsync_file(&target)?;
        for d in dirs_to_sync(&oid_dir, &created) {
            fsync_dir(&d)?;
        }
        Ok(target)
    }

    /// Make revision `to_tid` of an object a copy of its committed revision
    /// `from` = (oid, tid) (undo): a hard link when possible, else a copy;
    /// read-only and durable like [`BlobDir::commit_file`]. Returns the new
    /// path; [`BlobError::Missing`] when the source is not there.
    pub fn copy_committed(&self, from: (u64, u64), to_tid: u64) -> Result<PathBuf, BlobError> {
        let (oid, from_tid) = from;
        let src = self.path(oid, from_tid);
        let dst = self.path(oid, to_tid);
        if from_tid == to_tid {
            return if src.is_file() {
                Ok(dst)
            } else {
                Err(BlobError::Missing { oid, tid: from_tid })
            };
        }
        let oid_dir = self.oid_path(oid);
        {
            let _g = self.lock_dirs();
            if !src.is_file() {
                return Err(BlobError::Missing { oid, tid: from_tid });
            }
            let staged = staging_name(&oid_dir, to_tid);
            if fs::hard_link(&src, &staged).is_ok() {
                let done = fsync_file(&staged).and_then(|()| {
                    fs::rename(&staged, &dst)
                        .map_err(|e| io_err(&dst, "cannot put the blob revision in place", &e))
                });
                if let Err(e) = done {
                    let _ = fs::remove_file(&staged);
                    return Err(e);
                }
            } else {
                copy_into_place(&src, &dst, mode_of(&oid_dir)?)?;
            }
        }
        fsync_dir(&oid_dir)?;
        Ok(dst)
    }

    /// Remove revision `tid` of `oid` and the directories that leaves empty.
    /// `Ok(false)`: it was not there.
    pub fn remove(&self, oid: u64, tid: u64) -> Result<bool, BlobError> {
        let p = self.path(oid, tid);
        match fs::remove_file(&p) {
            Ok(()) => {
                self.remove_empty_parents(&p)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(&p, "cannot remove the blob file", &e)),
        }
    }

    /// Remove every revision of `oid` (its directory) and the directories
    /// that leaves empty. Returns how many files were removed.
    pub fn remove_oid(&self, oid: u64) -> Result<usize, BlobError> {
        let d = self.oid_path(oid);
        let mut n = 0;
        {
            let _g = self.lock_dirs();
            let entries = match fs::read_dir(&d) {
                Ok(it) => it,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(io_err(&d, "cannot list the object's blob directory", &e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| io_err(&d, "cannot list", &e))?;
                let p = entry.path();
                let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                let r = if is_dir {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                match r {
                    Ok(()) => n += usize::from(!is_dir),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(&p, "cannot remove", &e)),
                }
            }
            match fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&d, "cannot remove the directory", &e)),
            }
        }
        self.remove_empty_parents(&d)?;
        Ok(n)
    }

    /// Remove the directories containing `path` (absolute, or relative to
    /// the blob directory) while they are empty, innermost first, as
    /// `maybe_remove_empty_dir_containing` does; never the blob directory
    /// itself nor `tmp/`. Returns how many were removed.
    pub fn remove_empty_parents(&self, path: &Path) -> Result<usize, BlobError> {
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        };
        let _g = self.lock_dirs();
        let mut n = 0;
        for d in empty_parent_candidates(&self.base, &abs) {
            match fs::remove_dir(&d) {
                Ok(()) => n += 1,
                // Gone already: its parent may be empty now.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => break,
                Err(e) => return Err(io_err(&d, "cannot remove the empty directory", &e)),
            }
        }
        Ok(n)
    }

    /// Every committed blob file, as (oid, tid), sorted. Only what the
    /// layout names counts: `tmp/`, markers, `.tmp` files and other names
    /// are skipped.
    pub fn list(&self) -> Result<Vec<(u64, u64)>, BlobError> {
        let mut out = Vec::new();
        self.walk(&self.base, &mut PathBuf::new(), 0, &mut out)?;
        out.sort_unstable();
        Ok(out)
    }

    fn walk(
        &self,
        dir: &Path,
        rel: &mut PathBuf,
        depth: usize,
        out: &mut Vec<(u64, u64)>,
    ) -> Result<(), BlobError> {
        let entries = match fs::read_dir(dir) {
            Ok(it) => it,
            // Removed while we walk (a pack): nothing there.
            Err(e) if e.kind() == io::ErrorKind::NotFound && depth > 0 => return Ok(()),
            Err(e) => return Err(io_err(dir, "cannot list the blob directory", &e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_err(dir, "cannot list the blob directory", &e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(ft) = entry.file_type() else { continue };
            if depth == self.layout.depth() {
                if !ft.is_dir() {
                    if let Some(found) = self.layout.parse_blob_path(&rel.join(name)) {
                        out.push(found);
                    }
                }
            } else if ft.is_dir() && self.layout.leads_to_blobs(depth, name) {
                rel.push(name);
                let r = self.walk(&entry.path(), rel, depth + 1, out);
                rel.pop();
                r?;
            }
        }
        Ok(())
    }

    /// Remove the files left in `tmp/` (uploads of transactions that never
    /// committed). Returns how many. Directories there are left alone.
    pub fn clean_tmp(&self) -> Result<usize, BlobError> {
        let entries = match fs::read_dir(&self.tmp) {
            Ok(it) => it,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err(&self.tmp, "cannot list the upload directory", &e)),
        };
        let mut n = 0;
        for entry in entries {
            let entry = entry.map_err(|e| io_err(&self.tmp, "cannot list", &e))?;
            let p = entry.path();
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                log::warn!(
                    "{}: unexpected directory in the upload directory: left alone",
                    p.display()
                );
                continue;
            }
            match fs::remove_file(&p) {
                Ok(()) => n += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&p, "cannot remove the leftover upload", &e)),
            }
        }
        Ok(n)
    }

    /// The `.removed` file.
    pub fn removed_path(&self) -> PathBuf {
        self.base.join(REMOVED_FILE)
    }

    /// Start a `.removed` file (replacing any), as pack does.
    pub fn removed_writer(&self) -> Result<RemovedWriter, BlobError> {
        let path = self.removed_path();
        let f = File::create(&path).map_err(|e| io_err(&path, "cannot create", &e))?;
        Ok(RemovedWriter {
            out: BufWriter::new(f),
            path,
        })
    }

    /// The removals in `.removed`; `None` when there is no such file.
    pub fn read_removed(&self) -> Result<Option<Vec<Removal>>, BlobError> {
        let path = self.removed_path();
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path, "cannot read", &e)),
        };
        parse_removed(&text).map(Some).map_err(|e| {
            BlobError::Io(format!(
                "{}: {e}; no blob was removed: delete the file and pack again",
                path.display()
            ))
        })
    }

    /// Apply `.removed` (once the packed file is in place, as
    /// `_remove_blob_files_tagged_for_removal_during_pack` does without
    /// `pack_keep_old`): remove each listed oid's directory or revision
    /// (already gone: skipped) and the directories left empty, then delete
    /// the file. Idempotent: a crash midway is finished by applying again.
    /// Returns how many files were removed; 0 when there is no `.removed`.
    pub fn apply_removed(&self) -> Result<usize, BlobError> {
        self.apply_removed_file()
    }

    /// Put a voted transaction's blob files in place as revision `tid`:
    /// the staged `files` (oid, upload) moved in, the `copies` (oid, tid of
    /// the revision whose file an undo brings back) copied; all durable
    /// when this returns. Returns the oids now holding a file for `tid`;
    /// on an error, what was put in place is removed again. A copy whose
    /// source is gone (packed away) is skipped, as Python's undo does.
    pub fn commit_txn(
        &self,
        tid: u64,
        files: &[(u64, PathBuf)],
        copies: &[(u64, u64)],
    ) -> Result<Vec<u64>, BlobError> {
        let mut done = Vec::with_capacity(files.len() + copies.len());
        let mut failed = None;
        for (oid, src) in files {
            match self.commit_file(src, *oid, tid) {
                Ok(_) => done.push(*oid),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if failed.is_none() {
            for (oid, from) in copies {
                match self.copy_committed((*oid, *from), tid) {
                    Ok(_) => done.push(*oid),
                    Err(BlobError::Missing { .. }) => {}
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
        }
        match failed {
            None => Ok(done),
            Some(e) => {
                self.remove_txn(tid, &done);
                Err(e)
            }
        }
    }

    /// Remove revision `tid` of each of `oids` (an aborted transaction's
    /// files); failures are logged, the rest goes on.
    pub fn remove_txn(&self, tid: u64, oids: &[u64]) {
        for oid in oids {
            if let Err(e) = self.remove(*oid, tid) {
                log::warn!("{e}");
            }
        }
    }

    /// After a pack: remove every blob file of a revision up to `upto`
    /// that is not in `keep` (revisions the pack removed, objects it
    /// collected) and the directories that leaves empty. Files after
    /// `upto` are never touched (commits go on during a pack). Returns how
    /// many files went.
    pub fn sweep(
        &self,
        upto: u64,
        keep: &std::collections::HashSet<(u64, u64)>,
    ) -> Result<usize, BlobError> {
        let mut removed = 0;
        for (oid, tid) in self.list()? {
            if tid <= upto && !keep.contains(&(oid, tid)) && self.remove(oid, tid)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Remove every blob file of a revision after `tid` (those of a
    /// transaction a crash left unfinished, which nothing names). Returns
    /// how many went.
    pub fn sweep_after(&self, tid: u64) -> Result<usize, BlobError> {
        let mut removed = 0;
        for (oid, t) in self.list()? {
            if t > tid && self.remove(oid, t)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn apply_removed_file(&self) -> Result<usize, BlobError> {
        let Some(removals) = self.read_removed()? else {
            return Ok(0);
        };
        let mut n = 0;
        for r in removals {
            n += match r {
                Removal::Oid(oid) => self.remove_oid(oid)?,
                Removal::Revision { oid, tid } => usize::from(self.remove(oid, tid)?),
            };
        }
        let path = self.removed_path();
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path, "cannot remove the applied file", &e)),
        }
        Ok(n)
    }
}

/// Whether a directory has an entry whose name does not start with `.`.
fn has_visible_entries(dir: &Path) -> Result<bool, String> {
    let entries = fs::read_dir(dir)
        .map_err(|e| format!("{}: cannot list the blob directory: {e}", dir.display()))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| format!("{}: cannot list the blob directory: {e}", dir.display()))?;
        if !entry.file_name().as_encoded_bytes().starts_with(b".") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Write `.layout` (the name, no newline, as Python writes it) durably:
/// a staged file, fsynced and renamed, then the directory fsynced.
fn write_marker(base: &Path, layout: Layout) -> Result<(), String> {
    let staged = base.join(format!("{LAYOUT_MARKER}{TMP_SUFFIX}"));
    let marker = base.join(LAYOUT_MARKER);
    let written = File::create(&staged).and_then(|mut f| {
        f.write_all(layout.name().as_bytes())?;
        f.sync_all()
    });
    written
        .and_then(|()| fs::rename(&staged, &marker))
        .map_err(|e| {
            let _ = fs::remove_file(&staged);
            format!(
                "{}: cannot write the layout marker: {e} (is the blob directory writable?)",
                marker.display()
            )
        })?;
    fsync_dir(base).map_err(|e| e.to_string())
}

/// Copy `src` to `target` through a staged file in the target's directory
/// (so a crash never leaves a partial blob under the final name): copy,
/// make read-only, fsync, rename. The caller fsyncs the directory.
fn copy_into_place(src: &Path, target: &Path, dir_mode: u32) -> Result<(), BlobError> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let tid_hint = target
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_blob_file_name)
        .unwrap_or(0);
    let staged = staging_name(dir, tid_hint);
    let done = fs::copy(src, &staged)
        .map_err(|e| {
            BlobError::Io(format!(
                "cannot copy {} to {}: {e} (is the disk full?)",
                src.display(),
                staged.display()
            ))
        })
        .and_then(|_| set_not_writable(&staged, dir_mode))
        .and_then(|()| fsync_file(&staged))
        .and_then(|()| {
            fs::rename(&staged, target)
                .map_err(|e| io_err(target, "cannot put the blob file in place", &e))
        });
    if done.is_err() {
        let _ = fs::remove_file(&staged);
    }
    done
}

/// Writes a `.removed` file, one [`removed_line`] per removal. Nothing is
/// durable before [`RemovedWriter::finish`].
#[derive(Debug)]
pub struct RemovedWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

impl RemovedWriter {
    /// Add a removal.
    pub fn add(&mut self, r: Removal) -> Result<(), BlobError> {
        self.out
            .write_all(removed_line(r).as_bytes())
            .map_err(|e| io_err(&self.path, "cannot write (is the disk full?)", &e))
    }

    /// Flush and fsync the file.
    pub fn finish(self) -> Result<(), BlobError> {
        let path = self.path;
        let f = self
            .out
            .into_inner()
            .map_err(|e| io_err(&path, "cannot write (is the disk full?)", e.error()))?;
        f.sync_all().map_err(|e| io_err(&path, "cannot fsync", &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::process::Command;

    // Values from `.venv/bin/python` (ZODB 6): `BushyLayout().oid_to_path(p64(v))`,
    // `utils.tid_repr(p64(v))`, `LawnLayout().oid_to_path(p64(v))`.
    const NAMES: &[(u64, &str, &str)] = &[
        (0, "0x00/0x00/0x00/0x00/0x00/0x00/0x00/0x00", "0x00"),
        (1, "0x00/0x00/0x00/0x00/0x00/0x00/0x00/0x01", "0x01"),
        (0xff, "0x00/0x00/0x00/0x00/0x00/0x00/0x00/0xff", "0xff"),
        (0x100, "0x00/0x00/0x00/0x00/0x00/0x00/0x01/0x00", "0x0100"),
        (0x1000, "0x00/0x00/0x00/0x00/0x00/0x00/0x10/0x00", "0x1000"),
        (
            0xabcdef,
            "0x00/0x00/0x00/0x00/0x00/0xab/0xcd/0xef",
            "0xabcdef",
        ),
        (
            0x0102030405060708,
            "0x01/0x02/0x03/0x04/0x05/0x06/0x07/0x08",
            "0x0102030405060708",
        ),
        (
            0x03ed2b5c11223344,
            "0x03/0xed/0x2b/0x5c/0x11/0x22/0x33/0x44",
            "0x03ed2b5c11223344",
        ),
        (
            u64::MAX,
            "0xff/0xff/0xff/0xff/0xff/0xff/0xff/0xff",
            "0xffffffffffffffff",
        ),
    ];

    #[test]
    fn names_match_python() {
        for &(v, bushy, repr) in NAMES {
            assert_eq!(oid_dir(v), Path::new(bushy), "{v:#x}");
            assert_eq!(id_repr(v), repr, "{v:#x}");
            assert_eq!(blob_file_name(v), format!("{repr}.blob"), "{v:#x}");
            assert_eq!(Layout::Lawn.oid_dir(v), Path::new(repr), "{v:#x}");
            // getBlobFilePath(p64(v), p64(v))
            let file = format!("{bushy}/{repr}.blob");
            assert_eq!(Layout::Bushy.blob_path(v, v), Path::new(&file));
            assert_eq!(parse_blob_path(Path::new(&file)), Some((v, v)));
            assert_eq!(Layout::Bushy.parse_oid_dir(Path::new(bushy)), Some(v));
            assert_eq!(Layout::Lawn.parse_oid_dir(Path::new(repr)), Some(v));
            let lawn = format!("{repr}/{repr}.blob");
            assert_eq!(Layout::Lawn.parse_blob_path(Path::new(&lawn)), Some((v, v)));
            assert_eq!(parse_id_repr(repr), Some(v));
        }
    }

    #[test]
    fn blob_paths_table() {
        let o1 = "0x00/0x00/0x00/0x00/0x00/0x00/0x00/0x01";
        let cases: Vec<(String, Option<(u64, u64)>)> = vec![
            (
                format!("{o1}/0x03ed2b5c11223344.blob"),
                Some((1, 0x03ed2b5c11223344)),
            ),
            (format!("{o1}/0x01.blob"), Some((1, 1))),
            // Python's parser rejects one-digit levels and 7 or 9 levels.
            (
                "0x00/0x00/0x00/0x00/0x00/0x00/0x00/0x1/0x01.blob".into(),
                None,
            ),
            ("0x00/0x00/0x00/0x00/0x00/0x00/0x01/0x01.blob".into(), None),
            (format!("0x00/{o1}/0x01.blob"), None),
            (
                "0x00/0x00/0x00/0x00/0x00/0x00/0x00/0xAB/0x01.blob".into(),
                None,
            ),
            // Names getBlobFilename never produces.
            (format!("{o1}/0x0001.blob"), None),
            (format!("{o1}/0x1.blob"), None),
            (format!("{o1}/0xAB.blob"), None),
            (format!("{o1}/01.blob"), None),
            (format!("{o1}/0x.blob"), None),
            (format!("{o1}/.blob"), None),
            (format!("{o1}/0x010203040506070809.blob"), None),
            (format!("{o1}/0x01.blob.tmp"), None),
            (format!("{o1}/0x01abcdefabcdef.tmp"), None),
            (format!("{o1}/0x01"), None),
            ("tmp/0x01.blob".into(), None),
            (".layout".into(), None),
            (format!("/{o1}/0x01.blob"), None),
            (format!("./{o1}/0x01.blob"), None),
        ];
        for (p, want) in cases {
            assert_eq!(parse_blob_path(Path::new(&p)), want, "{p}");
        }
        // Lawn: one level, canonical oid_repr.
        for (p, want) in [
            ("0x01/0x02.blob", Some((1, 2))),
            ("0x0001/0x02.blob", None),
            ("tmp/0x02.blob", None),
            ("0x01/0x01/0x02.blob", None),
        ] {
            assert_eq!(Layout::Lawn.parse_blob_path(Path::new(p)), want, "{p}");
        }
    }

    #[test]
    fn layout_choice_table() {
        // (marker, visible entries, layout) as auto_layout_select decides.
        let cases = [
            (Some("bushy"), true, Some(Layout::Bushy)),
            (Some("bushy\n"), false, Some(Layout::Bushy)),
            (Some(" lawn "), false, Some(Layout::Lawn)),
            (Some("lawn"), true, Some(Layout::Lawn)),
            (Some("Bushy"), false, None),
            (Some(""), false, None),
            (None, false, Some(Layout::Bushy)),
            (None, true, Some(Layout::Lawn)),
        ];
        for (marker, visible, want) in cases {
            assert_eq!(
                choose_layout(marker, visible).ok(),
                want,
                "{marker:?} {visible}"
            );
        }
        let e = choose_layout(Some("weird"), false)
            .err()
            .unwrap_or_default();
        assert!(e.contains("`weird`") && e.contains("bushy"), "{e}");
    }

    #[test]
    fn not_writable_mode_matches_python() {
        // (st_mode of file, st_mode of dir, mode set_not_writable gives)
        let cases = [
            (0o100600, 0o40755, 0o444),
            (0o100644, 0o40700, 0o444),
            (0o100600, 0o40700, 0o400),
            (0o104755, 0o40755, 0o4555),
            (0o100666, 0o40000, 0o444),
            (0o100200, 0o40750, 0o440),
        ];
        for (f, d, want) in cases {
            assert_eq!(not_writable_mode(f, d), want, "{f:o} {d:o}");
        }
    }

    #[test]
    fn dirs_to_sync_table() {
        let p = |s: &str| PathBuf::from(s);
        let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
            // The oid directory existed: only it.
            ("/b/x/y", vec![], vec!["/b/x/y"]),
            // Only the oid directory was made: it and its parent.
            ("/b/x/y", vec!["/b/x/y"], vec!["/b/x/y", "/b/x"]),
            // The whole chain: up to the blob directory.
            (
                "/b/x/y",
                vec!["/b/x", "/b/x/y"],
                vec!["/b/x/y", "/b/x", "/b"],
            ),
        ];
        for (oid, created, want) in cases {
            let created: Vec<PathBuf> = created.into_iter().map(p).collect();
            let want: Vec<PathBuf> = want.into_iter().map(p).collect();
            assert_eq!(dirs_to_sync(Path::new(oid), &created), want, "{oid}");
        }
    }

    #[test]
    fn empty_parent_candidates_table() {
        let cases: Vec<(&str, Vec<&str>)> = vec![
            ("/b/x/y/f.blob", vec!["/b/x/y", "/b/x"]),
            ("/b/x/y", vec!["/b/x"]),
            ("/b/x", vec![]),
            ("/b", vec![]),
            ("/b/tmp/f", vec![]),
            ("/b/tmp/a/f", vec!["/b/tmp/a"]),
            ("/other/x/f", vec![]),
            ("/b/../x/f", vec![]),
            ("/bb/x/f", vec![]),
        ];
        for (path, want) in cases {
            let want: Vec<PathBuf> = want.into_iter().map(PathBuf::from).collect();
            assert_eq!(
                empty_parent_candidates(Path::new("/b"), Path::new(path)),
                want,
                "{path}"
            );
        }
    }

    #[test]
    fn removed_lines_table() {
        // binascii.hexlify(p64(1) + p64(0x03ed2b5c11223344)) and hexlify(p64(2)).
        let r = Removal::Revision {
            oid: 1,
            tid: 0x03ed2b5c11223344,
        };
        assert_eq!(removed_line(r), "000000000000000103ed2b5c11223344\n");
        assert_eq!(removed_line(Removal::Oid(2)), "0000000000000002\n");
        // (file content, removals or a part of the error)
        type Case<'a> = (&'a [u8], Result<Vec<Removal>, &'a str>);
        let cases: Vec<Case> = vec![
            (b"", Ok(vec![])),
            (
                b"000000000000000103ed2b5c11223344\n0000000000000002\n",
                Ok(vec![r, Removal::Oid(2)]),
            ),
            // No final newline, CRLF, upper case, spaces: Python's strip/unhexlify accept them.
            (b"0000000000000002", Ok(vec![Removal::Oid(2)])),
            (b" 00000000000000FF \r\n", Ok(vec![Removal::Oid(255)])),
            (b"0000000000000002\n\n", Err("line 2")),
            (b"0000000000000002\n00000000000002\n", Err("line 2")),
            (b"000000000000000x\n", Err("line 1")),
            (b"0000000000000000000000000000000000\n", Err("line 1")),
        ];
        for (text, want) in cases {
            let got = parse_removed(text);
            match want {
                Ok(v) => assert_eq!(got, Ok(v), "{text:?}"),
                Err(needle) => {
                    let e = got.err().unwrap_or_default();
                    assert!(e.contains(needle), "{text:?}: {e}");
                }
            }
        }
    }

    // ------------------------------------------------------------------
    // On disk
    // ------------------------------------------------------------------

    fn stage(d: &BlobDir, content: &[u8]) -> PathBuf {
        let (mut f, p) = d.new_temp_file().expect("temp file");
        f.write_all(content).expect("write");
        p
    }

    fn read(d: &BlobDir, oid: u64, tid: u64) -> Vec<u8> {
        let mut v = Vec::new();
        d.open_blob(oid, tid)
            .expect("open blob")
            .read_to_end(&mut v)
            .expect("read");
        v
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn open_creates_marker_and_tmp() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("blobs");
        let e = BlobDir::open(&p, false).err().unwrap_or_default();
        assert!(e.contains("blobs") && e.contains("does not exist"), "{e}");
        let d = BlobDir::open(&p, true).expect("open");
        assert_eq!(d.layout(), Layout::Bushy);
        assert_eq!(
            fs::read_to_string(p.join(".layout")).expect("marker"),
            "bushy"
        );
        assert!(d.tmp_dir().is_dir() && d.tmp_dir() == p.join("tmp"));
        assert_eq!(names_in(&p), [".layout", "tmp"]);
        drop(d);
        // Reopen: the same.
        assert_eq!(
            BlobDir::open(&p, false).expect("reopen").layout(),
            Layout::Bushy
        );
        // An existing empty directory without a marker: bushy.
        let q = t.path().join("empty");
        fs::create_dir(&q).expect("mkdir");
        assert_eq!(
            BlobDir::open(&q, false).expect("open").layout(),
            Layout::Bushy
        );
    }

    #[test]
    fn markers_and_lawn() {
        let t = tempfile::tempdir().expect("tempdir");
        // A used directory without a marker is lawn (old ZODB), and stays so.
        let lawn = t.path().join("lawn");
        fs::create_dir_all(lawn.join("0x01")).expect("mkdir");
        fs::write(lawn.join("0x01/0x05.blob"), b"old").expect("write");
        let d = BlobDir::open(&lawn, false).expect("open lawn");
        assert_eq!(d.layout(), Layout::Lawn);
        assert_eq!(
            fs::read_to_string(lawn.join(".layout")).expect("marker"),
            "lawn"
        );
        assert_eq!(d.list().expect("list"), [(1, 5)]);
        assert_eq!(read(&d, 1, 5), b"old");
        let src = stage(&d, b"new");
        assert_eq!(
            d.commit_file(&src, 1, 6).expect("commit"),
            lawn.join("0x01/0x06.blob")
        );
        assert_eq!(d.list().expect("list"), [(1, 5), (1, 6)]);
        // An unknown marker is refused, naming the file.
        let odd = t.path().join("odd");
        fs::create_dir(&odd).expect("mkdir");
        fs::write(odd.join(".layout"), "flat").expect("write");
        let e = BlobDir::open(&odd, false).err().unwrap_or_default();
        assert!(e.contains("odd/.layout") && e.contains("`flat`"), "{e}");
        // A file where the directory should be.
        let file = t.path().join("file");
        fs::write(&file, b"x").expect("write");
        let e = BlobDir::open(&file, true).err().unwrap_or_default();
        assert!(e.contains("not a directory"), "{e}");
    }

    #[test]
    fn commit_open_read_back_read_only() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = BlobDir::open(t.path(), true).expect("open");
        let (oid, tid) = (0x0102030405060708, 0x03ed2b5c11223344);
        assert!(!d.exists(oid, tid));
        assert_eq!(
            d.open_blob(oid, tid).err(),
            Some(BlobError::Missing { oid, tid })
        );
        let src = stage(&d, b"hello blob");
        assert!(src.starts_with(d.tmp_dir()) && src.to_string_lossy().ends_with(".tmp"));
        let p = d.commit_file(&src, oid, tid).expect("commit");
        assert_eq!(
            p,
            t.path()
                .join("0x01/0x02/0x03/0x04/0x05/0x06/0x07/0x08/0x03ed2b5c11223344.blob")
        );
        assert_eq!(p, d.path(oid, tid));
        assert!(!src.exists());
        assert!(d.exists(oid, tid));
        assert_eq!(read(&d, oid, tid), b"hello blob");
        let mode = fs::metadata(&p).expect("stat").permissions().mode();
        let dir_mode = mode_of(&d.oid_path(oid)).expect("stat dir");
        assert_eq!(mode & 0o222, 0, "{mode:o}");
        // Staged as 0600, plus the directory's read bits.
        assert_eq!(mode & 0o7777, 0o400 | (dir_mode & 0o444), "{mode:o}");
        assert!(names_in(d.tmp_dir()).is_empty());
        // A missing upload names itself.
        let e = d.commit_file(&d.tmp_dir().join("gone.tmp"), 1, 1).err();
        assert!(
            matches!(&e, Some(BlobError::Io(m)) if m.contains("gone.tmp")),
            "{e:?}"
        );
        // Into storage::Error: a POSKeyError.
        let se: crate::storage::Error = BlobError::Missing { oid: 7, tid: 8 }.into();
        assert_eq!(se, crate::storage::Error::PosKey(crate::storage::Oid(7)));
    }

    #[test]
    fn copy_fallback_puts_a_read_only_copy_in_place() {
        let t = tempfile::tempdir().expect("tempdir");
        let src = t.path().join("src");
        fs::write(&src, b"data").expect("write");
        let dir = t.path().join("d");
        fs::create_dir(&dir).expect("mkdir");
        let target = dir.join("0x05.blob");
        copy_into_place(&src, &target, 0o40755).expect("copy");
        assert_eq!(fs::read(&target).expect("read"), b"data");
        assert_eq!(
            fs::metadata(&target).expect("stat").permissions().mode() & 0o777,
            0o444
        );
        assert_eq!(names_in(&dir), ["0x05.blob"]);
    }

    #[test]
    fn copy_committed_links_a_new_revision() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = BlobDir::open(t.path(), true).expect("open");
        let src = stage(&d, b"v1");
        d.commit_file(&src, 3, 10).expect("commit");
        let p = d.copy_committed((3, 10), 20).expect("copy");
        assert_eq!(p, d.path(3, 20));
        assert_eq!(read(&d, 3, 20), b"v1");
        assert_eq!(
            fs::metadata(&p).expect("stat").permissions().mode() & 0o222,
            0
        );
        assert_eq!(d.list().expect("list"), [(3, 10), (3, 20)]);
        // Removing one revision keeps the other.
        assert!(d.remove(3, 10).expect("remove"));
        assert_eq!(read(&d, 3, 20), b"v1");
        assert_eq!(
            d.copy_committed((3, 10), 30).err(),
            Some(BlobError::Missing { oid: 3, tid: 10 })
        );
        assert_eq!(
            d.copy_committed((9, 1), 2).err(),
            Some(BlobError::Missing { oid: 9, tid: 1 })
        );
        // No staged files left behind.
        assert_eq!(names_in(&d.oid_path(3)), ["0x14.blob"]);
    }

    #[test]
    fn remove_cleans_empty_parents() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = BlobDir::open(t.path(), true).expect("open");
        // oids 0x0101 and 0x0102 share seven levels.
        for (oid, tid) in [(0x0101, 1), (0x0101, 2), (0x0102, 1)] {
            let src = stage(&d, b"x");
            d.commit_file(&src, oid, tid).expect("commit");
        }
        assert!(d.remove(0x0101, 1).expect("remove"));
        assert!(!d.remove(0x0101, 1).expect("remove again"));
        assert!(d.oid_path(0x0101).is_dir()); // revision 2 is still there
        assert!(d.remove(0x0101, 2).expect("remove"));
        assert!(!d.oid_path(0x0101).exists());
        assert!(d.oid_path(0x0102).is_dir());
        assert_eq!(d.remove_oid(0x0102).expect("remove oid"), 1);
        assert_eq!(d.remove_oid(0x0102).expect("remove oid again"), 0);
        // Everything below the base went; the base, tmp and the marker stay.
        assert_eq!(names_in(t.path()), [".layout", "tmp"]);
        // Never the base, nor tmp.
        assert_eq!(
            d.remove_empty_parents(&t.path().join("tmp/x")).expect("rm"),
            0
        );
        assert_eq!(d.remove_empty_parents(Path::new("tmp/x")).expect("rm"), 0);
        assert!(d.tmp_dir().is_dir());
        // A relative path, and a non-empty parent stops the climb.
        fs::create_dir_all(t.path().join("a/b")).expect("mkdir");
        fs::write(t.path().join("a/keep"), b"").expect("write");
        assert_eq!(d.remove_empty_parents(Path::new("a/b/c")).expect("rm"), 1);
        assert_eq!(names_in(&t.path().join("a")), ["keep"]);
    }

    #[test]
    fn list_skips_what_is_not_a_blob() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = BlobDir::open(t.path(), true).expect("open");
        let want = [
            (0, 1),
            (1, 0x03ed2b5c11223344),
            (1, 0x03ed2b5c11223345),
            (u64::MAX, 7),
        ];
        for (oid, tid) in want {
            let src = stage(&d, b"x");
            d.commit_file(&src, oid, tid).expect("commit");
        }
        let o1 = d.oid_path(1);
        fs::write(o1.join("0x03ed2b5c11223346abc.tmp"), b"").expect("write"); // blob_mkstemp leftover
        fs::write(o1.join("0x0001.blob"), b"").expect("write"); // not canonical
        fs::write(o1.join("notes.txt"), b"").expect("write");
        fs::write(t.path().join("0x00/stray.blob"), b"").expect("write");
        fs::write(t.path().join("tmp/0x01.blob"), b"").expect("write");
        fs::create_dir_all(t.path().join("other/0x00")).expect("mkdir");
        fs::write(t.path().join(".lock"), b"").expect("write");
        assert_eq!(d.list().expect("list"), want);
    }

    #[test]
    fn leftover_uploads_are_removed_at_open() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = BlobDir::open(t.path(), true).expect("open");
        let (_a, pa) = d.new_temp_file().expect("temp");
        let (_b, pb) = d.new_temp_file().expect("temp");
        assert_ne!(pa, pb);
        fs::create_dir(d.tmp_dir().join("sub")).expect("mkdir");
        let src = stage(&d, b"kept");
        d.commit_file(&src, 1, 1).expect("commit");
        drop(d);
        let d = BlobDir::open(t.path(), false).expect("reopen");
        assert_eq!(names_in(d.tmp_dir()), ["sub"]);
        assert_eq!(read(&d, 1, 1), b"kept");
        assert_eq!(d.clean_tmp().expect("clean"), 0);
    }

    #[test]
    fn removed_file_round_trip() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = BlobDir::open(t.path(), true).expect("open");
        for (oid, tid) in [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1)] {
            let src = stage(&d, b"x");
            d.commit_file(&src, oid, tid).expect("commit");
        }
        assert_eq!(d.apply_removed().expect("nothing to apply"), 0);
        let removals = [
            Removal::Revision { oid: 1, tid: 1 },
            Removal::Oid(2),
            Removal::Revision { oid: 3, tid: 9 }, // already gone
            Removal::Oid(4),                      // already gone
        ];
        let mut w = d.removed_writer().expect("writer");
        for r in removals {
            w.add(r).expect("add");
        }
        w.finish().expect("finish");
        assert_eq!(
            fs::read_to_string(d.removed_path()).expect("read"),
            "00000000000000010000000000000001\n0000000000000002\n\
             00000000000000030000000000000009\n0000000000000004\n"
        );
        assert_eq!(d.read_removed().expect("read"), Some(removals.to_vec()));
        assert_eq!(d.apply_removed().expect("apply"), 3);
        assert!(!d.removed_path().exists());
        assert_eq!(d.list().expect("list"), [(1, 2), (3, 1)]);
        assert!(!d.oid_path(2).exists());
        // A damaged file is refused whole, naming it.
        fs::write(d.removed_path(), b"0000000000000001\nzz\n").expect("write");
        let e = d.apply_removed().err();
        assert!(
            matches!(&e, Some(BlobError::Io(m)) if m.contains(".removed: line 2") && m.contains("pack again")),
            "{e:?}"
        );
        assert_eq!(d.list().expect("list"), [(1, 2), (3, 1)]);
    }

    // ------------------------------------------------------------------
    // With Python's ZODB
    // ------------------------------------------------------------------

    /// The venv python (`$ZEORAID_PYTHON`, else the crate's `.venv`),
    /// checked to import ZODB. Fails the test, never skips.
    fn python() -> PathBuf {
        let py = match std::env::var_os("ZEORAID_PYTHON") {
            Some(p) => PathBuf::from(p),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
        };
        let ok = Command::new(&py)
            .args(["-c", "import ZODB.blob"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            ok,
            "{} cannot import ZODB: run `bash tests/run-all.sh` once (it creates .venv), \
             or point ZEORAID_PYTHON at a python with ZODB installed",
            py.display()
        );
        py
    }

    fn run_python(script: &str, args: &[&Path]) -> String {
        let out = Command::new(python())
            .arg("-c")
            .arg(script)
            .args(args)
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "python failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Lines of `oid-hex tid-hex content-hex` into a sorted list.
    fn parse_listing(out: &str) -> Vec<(u64, u64, Vec<u8>)> {
        let mut v: Vec<(u64, u64, Vec<u8>)> = out
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                assert_eq!(f.len(), 3, "{l}");
                let n = |s: &str| u64::from_str_radix(s, 16).expect("hex");
                (n(f[0]), n(f[1]), unhex(f[2].as_bytes()).expect("hex"))
            })
            .collect();
        v.sort();
        v
    }

    const PY_WRITE: &str = r#"
import sys, time, transaction, ZODB, ZODB.FileStorage, ZODB.blob
d, pack = sys.argv[1], sys.argv[2] == 'pack'
fs = ZODB.FileStorage.FileStorage(d + '/Data.fs', blob_dir=d + '/blobs')
if pack:
    # Leave .removed for BlobDir to apply.
    fs._remove_blob_files_tagged_for_removal_during_pack = lambda: None
db = ZODB.DB(fs)
c = db.open()
root = c.root()
def commit(blob, data):
    transaction.commit()
    print(blob._p_oid.hex(), fs.lastTransaction().hex(), data.hex())
a = ZODB.blob.Blob(b'first blob'); root['a'] = a; commit(a, b'first blob')
b = ZODB.blob.Blob(b'second blob'); root['b'] = b; commit(b, b'second blob')
with a.open('w') as f:
    f.write(b'first blob, revision 2')
commit(a, b'first blob, revision 2')
if pack:
    del root['b']
    transaction.commit()
    time.sleep(0.01)
    db.pack(time.time())
db.close()
"#;

    #[test]
    fn python_written_blobs_read() {
        let t = tempfile::tempdir().expect("tempdir");
        let want = parse_listing(&run_python(PY_WRITE, &[t.path(), Path::new("nopack")]));
        assert_eq!(want.len(), 3);
        let d = BlobDir::open(&t.path().join("blobs"), false).expect("open");
        assert_eq!(d.layout(), Layout::Bushy);
        let listed = d.list().expect("list");
        assert_eq!(listed, want.iter().map(|w| (w.0, w.1)).collect::<Vec<_>>());
        for (oid, tid, data) in &want {
            assert_eq!(&read(&d, *oid, *tid), data, "{oid:x} {tid:x}");
        }
    }

    #[test]
    fn python_pack_removals_applied() {
        let t = tempfile::tempdir().expect("tempdir");
        let written = parse_listing(&run_python(PY_WRITE, &[t.path(), Path::new("pack")]));
        let (a, b) = (written[0].0, written[2].0);
        assert_ne!(a, b);
        let d = BlobDir::open(&t.path().join("blobs"), false).expect("open");
        assert!(d.read_removed().expect("read").is_some());
        assert_eq!(d.list().expect("list").len(), 3);
        // a's first revision and all of b (garbage after `del root['b']`).
        assert_eq!(d.apply_removed().expect("apply"), 2);
        let a_latest = written.iter().filter(|w| w.0 == a).map(|w| w.1).max();
        assert_eq!(
            d.list().expect("list"),
            vec![(a, a_latest.unwrap_or_default())]
        );
        assert!(!d.oid_path(b).exists());
    }

    const PY_READ: &str = r#"
import os, sys
from ZODB.blob import FilesystemHelper
from ZODB.utils import u64
fsh = FilesystemHelper(sys.argv[1])
fsh.create()
assert fsh.layout_name == 'bushy', fsh.layout_name
for oid, path in fsh.listOIDs():
    for name in sorted(os.listdir(path)):
        o, tid = fsh.splitBlobFilename(os.path.join(path, name))
        assert o == oid, (o, oid)
        with open(fsh.getBlobFilename(u64(oid), u64(tid)), 'rb') as f:
            print(oid.hex(), tid.hex(), f.read().hex())
"#;

    const PY_APPLY_REMOVED: &str = r#"
import sys, ZODB.FileStorage
# A new Data.fs with a blob_dir would wipe the blob directory: make it first.
ZODB.FileStorage.FileStorage(sys.argv[1] + '/Data.fs').close()
fs = ZODB.FileStorage.FileStorage(sys.argv[1] + '/Data.fs', blob_dir=sys.argv[1] + '/blobs',
                                  pack_keep_old=False)
fs._remove_blob_files_tagged_for_removal_during_pack()
fs.close()
"#;

    #[test]
    fn blobdir_written_blobs_read_by_python() {
        let t = tempfile::tempdir().expect("tempdir");
        let blobs = t.path().join("blobs");
        let d = BlobDir::open(&blobs, true).expect("open");
        let (o1, o2) = (1u64, 0x0102030405060708u64);
        let (t1, t2, t3, t4) = (
            0x03ed2b5c11223344u64,
            0x03ed2b5c11223355,
            0x0100,
            0x03ed2b5c11223366,
        );
        for (oid, tid, data) in [
            (o1, t1, &b"one"[..]),
            (o1, t2, b"one, v2"),
            (o2, t3, b"two"),
        ] {
            let src = stage(&d, data);
            d.commit_file(&src, oid, tid).expect("commit");
        }
        d.copy_committed((o1, t1), t4).expect("undo copy");
        let got = parse_listing(&run_python(PY_READ, &[&blobs]));
        let want = vec![
            (o1, t1, b"one".to_vec()),
            (o1, t2, b"one, v2".to_vec()),
            (o1, t4, b"one".to_vec()),
            (o2, t3, b"two".to_vec()),
        ];
        assert_eq!(got, want);

        // Our .removed, applied by FileStorage's pack code.
        let mut w = d.removed_writer().expect("writer");
        w.add(Removal::Revision { oid: o1, tid: t1 }).expect("add");
        w.add(Removal::Oid(o2)).expect("add");
        w.finish().expect("finish");
        drop(d);
        run_python(PY_APPLY_REMOVED, &[t.path()]);
        let d = BlobDir::open(&blobs, false).expect("reopen");
        assert!(!d.removed_path().exists());
        assert_eq!(d.list().expect("list"), [(o1, t2), (o1, t4)]);
        // Python removed the emptied directories of o2 too.
        assert_eq!(names_in(&blobs), [".layout", "0x00", "tmp"]);
    }

    #[test]
    fn staged_blobs_keep_the_last_word_per_object() {
        let blob: &[u8] = b"\x80\x03cZODB.blob\nBlob\nq\x00.\x80\x03N.";
        let mut s = StagedBlobs::new(true);
        assert!(s.check().is_ok());
        s.file(1, Path::new("a.tmp"));
        s.file(1, Path::new("b.tmp"));
        s.file(2, Path::new("c.tmp"));
        s.stored(2); // a plain store of 2 after its blob
        assert_eq!(s.files, vec![(1, PathBuf::from("b.tmp"))]);
        s.undone(3, Some(blob), Some(7));
        s.undone(4, Some(b"\x80\x03cfoo\nBar\nq\x00."), Some(8));
        s.undone(5, None, None);
        s.undone(3, Some(blob), Some(9));
        assert_eq!(s.copies, vec![(3, 9)]);
        let none = StagedBlobs::new(false);
        assert!(none.check().is_err());
        let mut none = none;
        none.undone(3, Some(blob), Some(7));
        assert!(none.copies.is_empty(), "no blob directory, nothing to copy");
    }
}
