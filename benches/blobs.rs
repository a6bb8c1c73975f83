//! Blobs (issue #11) through stock Python ZEO clients, zeoraid vs Python
//! `runzeo` side by side in one run, printed as markdown tables with
//! ratios:
//!
//! - `throughput`: upload and download MB/s (10^6 bytes/s) of 1 MiB and
//!   100 MiB blobs with 1 and 8 concurrent clients (1 MiB: 500 blobs with
//!   one client, 200 per client with eight; 100 MiB: 24 with one client, 4
//!   per client with eight: each phase takes a few seconds here, ~1 GB/s
//!   for large blobs).
//!   zeoraid serves `kind = "file"` (fsync) with `blob-dir`; `runzeo` a
//!   `<filestorage>` with `blob-dir` and `msgpack true`. The clients are
//!   stock `ZEO.ClientStorage` processes, each with a blob cache of its own
//!   (`blob_dir`, not shared), run by a small Python driver this bench
//!   writes: upload = N transactions, each `Blob.consumeFile` of a hard
//!   link to a pre-made file (so the client copies nothing) committed
//!   through `ZODB.DB`; download = a fresh client with an empty cache
//!   fetching them all back (`Blob.committed()`, i.e. `loadBlob` ->
//!   `sendBlob`), sizes checked afterwards. Each client times its part with
//!   `time.perf_counter()` after a common start signal; a phase's rate is
//!   the bytes of all clients over (last end - first start). Also the CPU
//!   seconds per GB moved of the server (`/proc/PID/stat` utime + stime
//!   around the phase) and of the clients (`os.times()`), which show each
//!   server's own cost whatever limits the clients, and how many of the
//!   machine's cores were busy (`/proc/stat`, every process and the
//!   kernel's writeback threads: near the core count, the machine was the
//!   limit, not the server). Target: zeoraid at
//!   least 2x Python's MB/s. Every cell gets fresh servers, Python and
//!   zeoraid alternating.
//! - `memory`: the resident memory of each server while one client stores
//!   a single `ZEORAID_BENCH_BLOB_GB` (default 2) GiB blob and a fresh
//!   client loads it back: VmRSS idle 1 s after start, VmRSS sampled every
//!   100 ms during each phase, VmHWM (the kernel's peak) at the end; the
//!   blob's SHA-256 is checked on the way back. Target: zeoraid grows by
//!   less than 64 MiB over its idle RSS.
//! - `array`: the same upload/download cells through zeoraid serving an
//!   array of two file mirrors (fsync, a blob-dir each: every blob written
//!   twice) vs zeoraid serving one file storage, alternating. Target: the
//!   array at least 0.8x the single storage.
//!
//! - `rust`: the `throughput` cells against the same two servers, driven
//!   by zeoraid's own ZEO client (threads, each with its own connection
//!   and blob cache; the same ZEO chunking both ways) instead of Python
//!   processes, so the servers, not the clients, are what is measured.
//!
//! Run: `cargo bench --bench blobs [-- throughput|rust|memory|array]` (all by
//! default). Needs a Python with ZODB 6 + ZEO 6 (`$ZEORAID_PYTHON` or
//! `.venv/bin/python`, made by `bash tests/run-all.sh`). Knobs:
//! `ZEORAID_BENCH_REPEAT` (rounds; default 3 for `throughput`, 1 for
//! `memory`; medians are reported), `ZEORAID_BENCH_BLOB_GB` (the `memory`
//! blob, GiB, default 2). Files go to a temporary directory under
//! `$TMPDIR` (default /tmp), checked for free space first and removed at
//! the end (`memory` needs about 4x the blob size: the source, the
//! server's copy and staging file, the client's download).
//!
//! Asserts nothing about timing or memory.

mod common;

use common::{
    cpu_seconds, env, free_port, mark, median, python, ratio, spawn_runzeo, spawn_zeoraid,
    status_kib, wanted, write_runzeo_conf,
};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The `memory` target: growth of zeoraid's RSS over idle, bytes.
const GROWTH_TARGET: f64 = 64.0 * MIB as f64;

/// The `throughput` target: zeoraid MB/s over Python's.
const SPEED_TARGET: f64 = 2.0;

/// One `throughput` cell: blob size, concurrent clients, blobs per client.
const CELLS: [(u64, usize, usize); 4] = [
    (MIB, 1, 500),
    (MIB, 8, 200),
    (100 * MIB, 1, 24),
    (100 * MIB, 8, 4),
];

/// The Python client, written next to the data at run time.
const DRIVER: &str = r##""""Blob client for benches/blobs.rs: stock ZEO ClientStorage, non-shared blob_dir.

driver.py mkfile PATH BYTES
    Write PATH (8 MiB random blocks, each stamped with its index) and print
    {"sha256": ...}.
driver.py setup ADDR KEY...
    Create the root and one PersistentMapping per KEY (before the timed
    clients start, so they never conflict on the root).
driver.py upload ADDR CACHE SRC N KEY
    Hard-link SRC N times next to CACHE, connect with blob_dir=CACHE, print
    "ready", wait for a line on stdin, then commit N transactions, each
    root[KEY][i] = a Blob that consumeFile()s one link; print JSON.
driver.py download ADDR CACHE N KEY BYTES [SHA256]
    Connect with a fresh blob_dir=CACHE, print "ready", wait for a line,
    then fetch root[KEY][0..N) from the server (Blob.committed() ->
    ClientStorage.loadBlob -> sendBlob into CACHE); print JSON. Sizes (and
    the SHA-256 when given) are checked after the timed part.
"""

import hashlib
import json
import os
import struct
import sys
import time


def client(addr, cache):
    import ZODB
    from ZEO.ClientStorage import ClientStorage

    host, port = addr.rsplit(":", 1)
    kw = {}
    if cache is not None:
        kw = dict(blob_dir=cache, shared_blob_dir=False)
    storage = ClientStorage((host, int(port)), wait_timeout=120, **kw)
    return ZODB.DB(storage)


def cpu():
    t = os.times()
    return t.user + t.system


def go():
    print("ready", flush=True)
    sys.stdin.readline()


def mkfile(path, size):
    block = bytearray(os.urandom(8 << 20))
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left, i = size, 0
        while left > 0:
            block[:8] = struct.pack(">Q", i)
            chunk = memoryview(block)[: min(left, len(block))]
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
            i += 1
    print(json.dumps({"sha256": h.hexdigest()}), flush=True)


def setup(addr, keys):
    from persistent.mapping import PersistentMapping

    db = client(addr, None)
    with db.transaction() as conn:
        root = conn.root()
        for k in keys:
            root[k] = PersistentMapping()
    db.close()


def upload(addr, cache, src, n, key):
    import transaction
    from ZODB.blob import Blob

    links = cache + "-links"
    os.makedirs(links)
    paths = []
    for i in range(n):
        p = os.path.join(links, str(i))
        os.link(src, p)
        paths.append(p)
    size = os.path.getsize(src)
    db = client(addr, cache)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    container = conn.root()[key]
    go()
    c0, t0 = cpu(), time.perf_counter()
    for i, p in enumerate(paths):
        tm.begin()
        b = Blob()
        conn.add(b)
        b.consumeFile(p)
        container[i] = b
        tm.commit()
    t1, c1 = time.perf_counter(), cpu()
    conn.close()
    db.close()
    print(json.dumps({"bytes": n * size, "start": t0, "end": t1, "cpu": c1 - c0}), flush=True)


def download(addr, cache, n, key, size, sha=None):
    import transaction

    db = client(addr, cache)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    container = conn.root()[key]
    assert len(container) == n, (len(container), n)
    go()
    c0, t0 = cpu(), time.perf_counter()
    files = [container[i].committed() for i in range(n)]
    t1, c1 = time.perf_counter(), cpu()
    got = [os.path.getsize(f) for f in files]
    assert got == [size] * n, ("sizes", got[:5], size)
    out = {"bytes": sum(got), "start": t0, "end": t1, "cpu": c1 - c0}
    if sha:
        h = hashlib.sha256()
        with open(files[0], "rb") as f:
            while True:
                chunk = f.read(8 << 20)
                if not chunk:
                    break
                h.update(chunk)
        out["sha256_ok"] = h.hexdigest() == sha
    conn.close()
    db.close()
    print(json.dumps(out), flush=True)


def main(argv):
    cmd = argv[0]
    if cmd == "mkfile":
        mkfile(argv[1], int(argv[2]))
    elif cmd == "setup":
        setup(argv[1], argv[2:])
    elif cmd == "upload":
        upload(argv[1], argv[2], argv[3], int(argv[4]), argv[5])
    elif cmd == "download":
        download(argv[1], argv[2], int(argv[3]), argv[4], int(argv[5]),
                 argv[6] if len(argv) > 6 else None)
    else:
        sys.exit("unknown command %r" % cmd)


if __name__ == "__main__":
    main(sys.argv[1:])
"##;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with --list
    }
    let started = Instant::now();
    let root = tempfile::Builder::new()
        .prefix("zeoraid-bench-blobs-")
        .tempdir()
        .expect("tempdir");
    let root_path = root.path().to_path_buf();
    let driver = root_path.join("driver.py");
    std::fs::write(&driver, DRIVER).expect("write the Python driver");
    if wanted("throughput") {
        throughput(&driver, &root_path, false);
    }
    if wanted("rust") {
        throughput(&driver, &root_path, true);
    }
    if wanted("memory") {
        memory(&driver, &root_path);
    }
    if wanted("array") {
        array(&driver, &root_path);
    }
    drop(root);
    println!(
        "\n(temporary directory {} {})",
        root_path.display(),
        if root_path.exists() {
            "**was not removed**"
        } else {
            "removed"
        }
    );
    eprintln!("(bench took {:.0} s)", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------
// Building blocks.
// ---------------------------------------------------------------------------

fn size_label(bytes: u64) -> String {
    if bytes >= GIB && bytes.is_multiple_of(GIB) {
        format!("{} GiB", bytes / GIB)
    } else if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} B")
    }
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / MIB as f64)
}

/// Bytes available to an unprivileged writer on the filesystem of `path`
/// (what `df` calls Avail).
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs with a NUL-terminated path and a zeroed struct to fill.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return None;
        }
        Some(st.f_bavail as u64 * st.f_frsize as u64)
    }
}

/// Say how much room there is under `dir`; false (and why) when less than `need`.
fn enough_disk(dir: &Path, need: u64, what: &str) -> bool {
    match free_bytes(dir) {
        Some(free) => {
            println!(
                "\n(disk: {:.1} GiB available under {}; {what} needs about {:.1} GiB)",
                free as f64 / GIB as f64,
                dir.display(),
                need as f64 / GIB as f64
            );
            if free < need {
                println!(
                    "\n{what}: **skipped**, not enough free disk space under {} (set TMPDIR to a larger filesystem)",
                    dir.display()
                );
                return false;
            }
            true
        }
        None => {
            println!(
                "\n(disk: cannot statvfs {}: {}; going on)",
                dir.display(),
                std::io::Error::last_os_error()
            );
            true
        }
    }
}

/// A memory field of `/proc/PID/status`, in bytes.
fn status_bytes(pid: u32, key: &str) -> f64 {
    status_kib(pid, key) * 1024.0
}

/// Busy CPU seconds of the whole machine (all cores: user, nice, system,
/// irq, softirq, steal from the first line of `/proc/stat`).
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return f64::NAN;
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    if v.len() < 8 {
        return f64::NAN;
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // user nice system idle iowait irq softirq steal
    (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / hz
}

#[derive(Clone, Copy, PartialEq)]
enum Impl {
    Python,
    Zeoraid,
    /// zeoraid serving an array of two file mirrors, each with blob-dir.
    Array,
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Python => "python runzeo (filestorage + blob-dir)",
            Impl::Zeoraid => "zeoraid (file, fsync, blob-dir)",
            Impl::Array => "zeoraid (array of 2 file mirrors, fsync, blob-dir each)",
        }
    }
}

/// A server child, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh server over `dir/Data.fs` with blobs in `dir/blobs`.
fn start(which: Impl, dir: &Path) -> Server {
    std::fs::create_dir_all(dir).expect("server dir");
    match which {
        Impl::Zeoraid => {
            let conf = dir.join("zeoraid.toml");
            std::fs::write(
                &conf,
                "[server]\nlisten = \"127.0.0.1:0\"\n\
                 [[storage]]\nname = \"1\"\nkind = \"file\"\npath = \"Data.fs\"\nsync = true\nblob-dir = \"blobs\"\n",
            )
            .expect("write zeoraid.toml");
            let (child, addr) = spawn_zeoraid(&conf, None);
            Server { child, addr }
        }
        Impl::Array => {
            let conf = dir.join("zeoraid.toml");
            let mut text = String::from(
                "[server]\nlisten = \"127.0.0.1:0\"\n\
                 [[storage]]\nname = \"1\"\nkind = \"raid\"\n",
            );
            for m in ["a", "b"] {
                text += &format!(
                    "[[storage.backend]]\nname = \"{m}\"\nkind = \"file\"\npath = \"{m}/Data.fs\"\n\
                     sync = true\nblob-dir = \"{m}/blobs\"\n"
                );
            }
            std::fs::write(&conf, text).expect("write zeoraid.toml");
            let (child, addr) = spawn_zeoraid(&conf, None);
            Server { child, addr }
        }
        Impl::Python => {
            let port = free_port();
            let storage = format!(
                "<filestorage 1>\n  path {}\n  blob-dir {}\n</filestorage>",
                dir.join("Data.fs").display(),
                dir.join("blobs").display()
            );
            let conf = write_runzeo_conf(dir, port, &storage, false);
            let (child, addr) = spawn_runzeo(&conf, port, None);
            Server {
                child,
                addr: addr.to_string(),
            }
        }
    }
}

/// `python driver.py ARGS...` to completion; its stdout.
fn driver_run(driver: &Path, args: &[String]) -> String {
    let out = Command::new(python())
        .arg(driver)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run the Python driver");
    assert!(
        out.status.success(),
        "driver {args:?} failed: {}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A driver process that said "ready" and waits for the start signal;
/// killed on drop.
struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    what: String,
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_client(driver: &Path, args: Vec<String>) -> Client {
    let mut child = Command::new(python())
        .arg(driver)
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start a Python client");
    let stdin = child.stdin.take();
    let stdout = BufReader::new(child.stdout.take().expect("client stdout"));
    Client {
        child,
        stdin,
        stdout,
        what: args.join(" "),
    }
}

/// Per cell of [`CELLS`], per server: (upload, download) of each round.
type CellRuns = Vec<[Vec<(Phase, Phase)>; 2]>;

/// What one phase (all clients uploading, or all downloading) measured.
#[derive(Clone, Copy, Default)]
struct Phase {
    bytes: f64,
    seconds: f64,
    /// Server CPU seconds over the phase.
    server_cpu: f64,
    /// The clients' CPU seconds in their timed parts, summed.
    client_cpu: f64,
    /// The server's largest VmRSS sample, bytes.
    rss_max: f64,
    /// Busy cores of the whole machine over the phase (busy CPU seconds /
    /// wall seconds, from the start signal until the last client exited).
    cores_busy: f64,
    /// All clients that were asked to check the SHA-256 found it right.
    sha_ok: Option<bool>,
}

impl Phase {
    fn mb_per_s(&self) -> f64 {
        ratio(self.bytes / 1e6, self.seconds)
    }
    fn server_cpu_per_gb(&self) -> f64 {
        ratio(self.server_cpu, self.bytes / 1e9)
    }
    fn client_cpu_per_gb(&self) -> f64 {
        ratio(self.client_cpu, self.bytes / 1e9)
    }
}

/// Wait until every client is ready, start them together, sample the
/// server's VmRSS every 100 ms until they are all done, and gather their
/// reports.
fn phase(server: &Server, mut clients: Vec<Client>) -> Phase {
    for c in &mut clients {
        let mut line = String::new();
        let _ = c.stdout.read_line(&mut line);
        assert!(
            line.trim() == "ready",
            "client `{}` did not get ready: {line:?}",
            c.what
        );
    }
    let pid = server.pid();
    let mut rss_max = status_bytes(pid, "VmRSS");
    let cpu0 = cpu_seconds(pid);
    let (busy0, wall0) = (machine_busy_seconds(), Instant::now());
    for c in &mut clients {
        let mut stdin = c.stdin.take().expect("client stdin");
        stdin.write_all(b"go\n").expect("start a client");
    }
    loop {
        rss_max = rss_max.max(status_bytes(pid, "VmRSS"));
        let mut running = false;
        for c in &mut clients {
            if c.child.try_wait().expect("wait for a client").is_none() {
                running = true;
            }
        }
        if !running {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let server_cpu = cpu_seconds(pid) - cpu0;
    let cores_busy = ratio(
        machine_busy_seconds() - busy0,
        wall0.elapsed().as_secs_f64(),
    );
    let (mut bytes, mut start, mut end, mut client_cpu) = (0.0, f64::INFINITY, 0.0f64, 0.0);
    let mut sha_ok = None;
    for c in &mut clients {
        let status = c.child.wait().expect("client status");
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut c.stdout, &mut out);
        assert!(status.success(), "client `{}` failed: {status}", c.what);
        let j: serde_json::Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("client `{}` printed no JSON ({e}): {out:?}", c.what));
        let f = |k: &str| j[k].as_f64().unwrap_or(f64::NAN);
        bytes += f("bytes");
        start = start.min(f("start"));
        end = end.max(f("end"));
        client_cpu += f("cpu");
        if let Some(ok) = j["sha256_ok"].as_bool() {
            sha_ok = Some(sha_ok.unwrap_or(true) && ok);
        }
    }
    Phase {
        bytes,
        seconds: end - start,
        server_cpu,
        client_cpu,
        rss_max,
        cores_busy,
        sha_ok,
    }
}

/// The median of `f` over a cell's rounds, of the uploads or downloads.
fn cell_median(v: &[(Phase, Phase)], f: &dyn Fn(&Phase) -> f64, down: bool) -> f64 {
    median(
        &v.iter()
            .map(|(u, d)| f(if down { d } else { u }))
            .collect::<Vec<_>>(),
    )
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

/// Upload `per_client` copies of `src` (`size` bytes) from each of
/// `clients` clients, then download them all through fresh clients.
/// `sha`: the source's SHA-256, checked on the way back.
#[allow(clippy::too_many_arguments)]
fn up_and_down(
    driver: &Path,
    server: &Server,
    dir: &Path,
    src: &Path,
    size: u64,
    clients: usize,
    per_client: usize,
    sha: Option<&str>,
) -> (Phase, Phase) {
    let keys: Vec<String> = (0..clients).map(|i| format!("c{i}")).collect();
    let mut args = vec!["setup".to_string(), server.addr.clone()];
    args.extend(keys.iter().cloned());
    driver_run(driver, &args);
    let ups = keys
        .iter()
        .map(|k| {
            spawn_client(
                driver,
                vec![
                    "upload".into(),
                    server.addr.clone(),
                    path_arg(&dir.join(format!("up-{k}"))),
                    path_arg(src),
                    per_client.to_string(),
                    k.clone(),
                ],
            )
        })
        .collect();
    let up = phase(server, ups);
    let downs = keys
        .iter()
        .map(|k| {
            let mut a = vec![
                "download".into(),
                server.addr.clone(),
                path_arg(&dir.join(format!("down-{k}"))),
                per_client.to_string(),
                k.clone(),
                size.to_string(),
            ];
            a.extend(sha.map(str::to_string));
            spawn_client(driver, a)
        })
        .collect();
    let down = phase(server, downs);
    (up, down)
}

/// Make `path` (`size` bytes) with the driver; its SHA-256.
fn make_source(driver: &Path, path: &Path, size: u64) -> String {
    let out = driver_run(driver, &["mkfile".into(), path_arg(path), size.to_string()]);
    let j: serde_json::Value = serde_json::from_str(out.trim()).expect("mkfile JSON");
    j["sha256"].as_str().expect("sha256").to_string()
}

// ---------------------------------------------------------------------------
// throughput
// ---------------------------------------------------------------------------

/// Every cell of [`CELLS`], `repeat` rounds, for the two servers `impls`
/// (fresh servers per cell, which goes first alternating by round):
/// `runs[cell][i]` = (upload, download) of `impls[i]`, one per round. The
/// source files are made in `root` under `prefix`. `rust`: drive them
/// with zeoraid's own client ([`rust_up_and_down`]) instead of Python's.
fn run_cells(
    driver: &Path,
    root: &Path,
    prefix: &str,
    impls: [Impl; 2],
    repeat: usize,
    rust: bool,
) -> CellRuns {
    let sources: Vec<PathBuf> = [MIB, 100 * MIB]
        .iter()
        .map(|&s| {
            let p = root.join(format!("{prefix}-{s}"));
            make_source(driver, &p, s);
            p
        })
        .collect();
    let source = |s: u64| &sources[usize::from(s != MIB)];
    let mut runs: CellRuns = CELLS.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    for round in 0..repeat {
        for (ci, &(size, clients, per)) in CELLS.iter().enumerate() {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for si in order {
                let which = impls[si];
                let t = Instant::now();
                let dir = tempfile::tempdir_in(root).expect("cell dir");
                let server = start(which, &dir.path().join("server"));
                let r = if rust {
                    rust_up_and_down(&server, dir.path(), source(size), size, clients, per)
                } else {
                    up_and_down(
                        driver,
                        &server,
                        dir.path(),
                        source(size),
                        size,
                        clients,
                        per,
                        None,
                    )
                };
                drop(server);
                drop(dir);
                eprintln!(
                    "round {}/{repeat}, {} x {clients} clients x {per}, {}: up {:.0} MB/s, down {:.0} MB/s ({:.1} s)",
                    round + 1,
                    size_label(size),
                    which.name(),
                    r.0.mb_per_s(),
                    r.1.mb_per_s(),
                    t.elapsed().as_secs_f64()
                );
                runs[ci][si].push(r);
            }
        }
    }
    runs
}

/// [`run_cells`] for Python runzeo vs zeoraid, if the disk has room for
/// the largest cell (its blobs on the server and in the download caches);
/// `section` names the files and the message when it has not.
fn python_vs_zeoraid(
    driver: &Path,
    root: &Path,
    section: &str,
    repeat: usize,
    rust: bool,
) -> Option<CellRuns> {
    let need = CELLS
        .iter()
        .map(|&(s, c, n)| 2 * s * (c * n) as u64)
        .max()
        .unwrap_or(0)
        + 101 * MIB
        + GIB;
    enough_disk(root, need, section).then(|| {
        run_cells(
            driver,
            root,
            &format!("{section}-src"),
            [Impl::Python, Impl::Zeoraid],
            repeat,
            rust,
        )
    })
}

/// The `throughput` section (`rust`: the `rust` section, the same cells
/// driven by zeoraid's own client).
fn throughput(driver: &Path, root: &Path, rust: bool) {
    let repeat = env::<usize>("ZEORAID_BENCH_REPEAT").unwrap_or(3).max(1);
    let section = if rust { "rust" } else { "throughput" };
    // runs[cell][0 python, 1 zeoraid] = (upload, download) per round
    let Some(runs) = python_vs_zeoraid(driver, root, section, repeat, rust) else {
        return;
    };
    // Medians per cell, server and direction.
    let med = cell_median;
    if rust {
        println!(
            "\nBlob throughput driven by zeoraid's own ZEO client (Rust threads, each its own connection and \
             blob cache, ZEO's chunking both ways), so the servers are what is measured; otherwise as \
             `throughput`; median of {repeat}\n"
        );
    } else {
        println!(
            "\nBlob throughput, stock Python `ZEO.ClientStorage` clients (each its own blob cache, not shared), \
             MB = 10^6 bytes; upload = one blob per transaction (`consumeFile` of a hard link, committed through \
             `ZODB.DB`), download = a fresh client with an empty cache fetching every blob (`loadBlob` -> `sendBlob`); \
             a phase's rate is all clients' bytes over (last end - first start); fresh servers per cell, median of {repeat}\n"
        );
    }
    println!(
        "| blob | clients x blobs each | python upload MB/s | zeoraid upload MB/s | **zeoraid/python** | \
         python download MB/s | zeoraid download MB/s | **zeoraid/python** |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let mut worst_up = (f64::INFINITY, String::new());
    let mut worst_down = (f64::INFINITY, String::new());
    for (ci, &(size, clients, per)) in CELLS.iter().enumerate() {
        let rate = |si: usize, down: bool| med(&runs[ci][si], &Phase::mb_per_s, down);
        let (pu, ru, pd, rd) = (rate(0, false), rate(1, false), rate(0, true), rate(1, true));
        let (up, down) = (ratio(ru, pu), ratio(rd, pd));
        let label = format!("{} x {clients} clients", size_label(size));
        if up.is_nan() || up < worst_up.0 {
            worst_up = (up, label.clone());
        }
        if down.is_nan() || down < worst_down.0 {
            worst_down = (down, label);
        }
        println!(
            "| {} | {clients} x {per} | {pu:.0} | {ru:.0} | **{up:.2}x** | {pd:.0} | {rd:.0} | **{down:.2}x** |",
            size_label(size)
        );
    }
    println!(
        "\nTarget zeoraid >= {SPEED_TARGET}x Python's MB/s in every cell: upload worst **{:.2}x** ({}), {}; \
         download worst **{:.2}x** ({}), {}.",
        worst_up.0,
        worst_up.1,
        mark(worst_up.0 >= SPEED_TARGET),
        worst_down.0,
        worst_down.1,
        mark(worst_down.0 >= SPEED_TARGET)
    );
    println!(
        "\n{}zeoraid fsyncs every blob file and its \
         directory before the vote answers; Python's FileStorage fsyncs Data.fs only, not blob files. \
         So zeoraid's server CPU includes the writeback of its blob files (done by the fsyncing thread), \
         while Python's is done later by kernel threads: counted in the cores busy, not in its server CPU.",
        if rust {
            ""
        } else {
            "The clients are Python on the same 2 cores as the server: the client itself may be the \
             bottleneck (see its CPU below), capping both servers at a similar rate. "
        }
    );
    println!(
        "\nCPU seconds per GB moved (/proc/PID/stat utime + stime of the server over the phase; the clients' \
         `os.times()` over their timed parts, summed), and the machine's busy cores over the phase \
         (`/proc/stat`, all processes and kernel threads, of {cores}), median of {repeat}:\n",
        cores = std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| blob | clients | direction | python server | zeoraid server | **zeoraid/python** | \
         clients, vs python | clients, vs zeoraid | cores busy, python | cores busy, zeoraid |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for (ci, &(size, clients, _)) in CELLS.iter().enumerate() {
        for down in [false, true] {
            let srv = |si: usize| med(&runs[ci][si], &Phase::server_cpu_per_gb, down);
            let cli = |si: usize| med(&runs[ci][si], &Phase::client_cpu_per_gb, down);
            let busy = |si: usize| med(&runs[ci][si], &|p: &Phase| p.cores_busy, down);
            let (p, r) = (srv(0), srv(1));
            println!(
                "| {} | {clients} | {} | {p:.2} | {r:.2} | **{:.2}x** | {:.2} | {:.2} | {:.2} | {:.2} |",
                size_label(size),
                if down { "download" } else { "upload" },
                ratio(r, p),
                cli(0),
                cli(1),
                busy(0),
                busy(1)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// rust: the same cells driven by zeoraid's own ZEO client
// ---------------------------------------------------------------------------

/// A blob record as ZODB writes it (`ZODB.blob.Blob`, protocol 3).
const BLOB_RECORD: &[u8] = b"\x80\x03cZODB.blob\nBlob\nq\x00.\x80\x03N.";

/// Upload `per_client` blobs of `src` (`size` bytes) from each of
/// `clients` threads, each with its own connection and blob cache, one
/// blob per transaction; then download them all through fresh connections
/// with empty caches (each file's size checked, then removed). zeoraid's
/// client streams both ways in ZEO's chunks, as Python's does, at a
/// fraction of its CPU: the servers are what is measured.
fn rust_up_and_down(
    server: &Server,
    dir: &Path,
    src: &Path,
    size: u64,
    clients: usize,
    per_client: usize,
) -> (Phase, Phase) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Barrier, Mutex};
    use zeoraid::storage::{commit, Oid, Op, Storage, Tid, Txn};
    use zeoraid::zeo::client::{Client, ClientOptions};
    let connect = |cache: PathBuf| {
        Client::connect(ClientOptions {
            call_timeout: Duration::from_secs(600),
            blob_dir: Some(cache),
            ..ClientOptions::new(&server.addr)
        })
        .unwrap_or_else(|e| panic!("connect to {}: {e}", server.addr))
    };
    let stored: Mutex<Vec<Vec<(Oid, Tid)>>> = Mutex::new(vec![Vec::new(); clients]);
    // One phase: every thread connects, waits for the others, runs `work`
    // timed; the main thread samples the server meanwhile.
    let run = |what: &str, work: &(dyn Fn(usize, &Client) -> f64 + Sync)| -> Phase {
        let pid = server.pid();
        let barrier = Barrier::new(clients + 1);
        let done = AtomicUsize::new(0);
        let times: Mutex<Vec<(Instant, Instant, f64)>> = Mutex::new(Vec::new());
        let mut rss_max = status_bytes(pid, "VmRSS");
        let (mut cpu0, mut busy0, mut wall0) = (0.0, 0.0, Instant::now());
        std::thread::scope(|scope| {
            for i in 0..clients {
                let (barrier, done, times) = (&barrier, &done, &times);
                std::thread::Builder::new()
                    .name(format!("blob-{what}-{i}"))
                    .spawn_scoped(scope, move || {
                        let c = connect(dir.join(format!("{what}-cache-{i}")));
                        barrier.wait();
                        let t0 = Instant::now();
                        let bytes = work(i, &c);
                        times
                            .lock()
                            .expect("times")
                            .push((t0, Instant::now(), bytes));
                        done.fetch_add(1, Ordering::SeqCst);
                        c.close();
                    })
                    .expect("spawn a blob client thread");
            }
            barrier.wait();
            cpu0 = cpu_seconds(pid);
            busy0 = machine_busy_seconds();
            wall0 = Instant::now();
            while done.load(Ordering::SeqCst) < clients {
                rss_max = rss_max.max(status_bytes(pid, "VmRSS"));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let times = times.into_inner().expect("times");
        let start = times.iter().map(|t| t.0).min().unwrap_or(wall0);
        let end = times.iter().map(|t| t.1).max().unwrap_or(wall0);
        Phase {
            bytes: times.iter().map(|t| t.2).sum(),
            seconds: (end - start).as_secs_f64(),
            server_cpu: cpu_seconds(pid) - cpu0,
            client_cpu: f64::NAN,
            rss_max,
            cores_busy: ratio(
                machine_busy_seconds() - busy0,
                wall0.elapsed().as_secs_f64(),
            ),
            sha_ok: None,
        }
    };
    let up = run("up", &|i, c| {
        let oids = c.new_oids(per_client).expect("new oids");
        let mut mine = Vec::with_capacity(per_client);
        for oid in oids {
            let tid = commit(
                c,
                &Txn::new(vec![Op::StoreBlob {
                    oid,
                    serial: Tid::ZERO,
                    data: BLOB_RECORD.to_vec().into(),
                    blob: src.to_path_buf(),
                }]),
            )
            .expect("store a blob");
            mine.push((oid, tid));
        }
        stored.lock().expect("stored")[i] = mine;
        (size * per_client as u64) as f64
    });
    let down = run("down", &|i, c| {
        let mine = stored.lock().expect("stored")[i].clone();
        let mut bytes = 0.0;
        for (oid, tid) in mine {
            let p = c.load_blob(oid, tid).expect("load a blob");
            let len = std::fs::metadata(&p).expect("the loaded blob").len();
            assert_eq!(len, size, "the blob of {oid} at {tid} came back whole");
            bytes += len as f64;
            let _ = std::fs::remove_file(&p);
        }
        bytes
    });
    (up, down)
}

// ---------------------------------------------------------------------------
// array
// ---------------------------------------------------------------------------

/// The array's target: at least this fraction of one file storage's MB/s.
const ARRAY_TARGET: f64 = 0.8;

/// Blob MB/s through an array of two file mirrors vs one file storage,
/// both zeoraid, same clients, alternating, fresh servers.
fn array(driver: &Path, root: &Path) {
    let repeat = env::<usize>("ZEORAID_BENCH_REPEAT").unwrap_or(3).max(1);
    // Every blob is written twice (two mirrors), plus the caches.
    let need = CELLS
        .iter()
        .map(|&(s, c, n)| 3 * s * (c * n) as u64)
        .max()
        .unwrap_or(0)
        + GIB;
    if !enough_disk(root, need, "array") {
        return;
    }
    // runs[cell][0 one file storage, 1 the array]
    let runs = run_cells(
        driver,
        root,
        "array-src",
        [Impl::Zeoraid, Impl::Array],
        repeat,
        false,
    );
    let med = |v: &[(Phase, Phase)], down: bool| cell_median(v, &Phase::mb_per_s, down);
    println!(
        "\nBlobs through an array of two file mirrors (each with fsync and its own blob-dir; every blob \
         written to both) vs one file storage, both zeoraid, the same stock Python clients as `throughput`; \
         fresh servers per cell, alternating, median of {repeat}\n"
    );
    println!(
        "| blob | clients x blobs each | file upload MB/s | array upload MB/s | **array/file** | \
         file download MB/s | array download MB/s | **array/file** |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let mut worst = f64::INFINITY;
    for (ci, &(size, clients, per)) in CELLS.iter().enumerate() {
        let (fu, au) = (med(&runs[ci][0], false), med(&runs[ci][1], false));
        let (fd, ad) = (med(&runs[ci][0], true), med(&runs[ci][1], true));
        let (up, down) = (ratio(au, fu), ratio(ad, fd));
        worst = worst.min(up).min(down);
        println!(
            "| {} | {clients} x {per} | {fu:.0} | {au:.0} | **{up:.2}x** | {fd:.0} | {ad:.0} | **{down:.2}x** |",
            size_label(size)
        );
    }
    println!(
        "\nTarget the array >= {ARRAY_TARGET}x one file storage in every cell: worst **{worst:.2}x**, {}.",
        mark(worst >= ARRAY_TARGET)
    );
}

// ---------------------------------------------------------------------------
// memory
// ---------------------------------------------------------------------------

/// One server's `memory` run, bytes.
#[derive(Clone, Copy)]
struct MemRun {
    idle: f64,
    up: Phase,
    down: Phase,
    hwm: f64,
}

impl MemRun {
    fn peak(&self) -> f64 {
        self.hwm.max(self.up.rss_max).max(self.down.rss_max)
    }
    fn growth(&self) -> f64 {
        self.peak() - self.idle
    }
}

fn memory(driver: &Path, root: &Path) {
    let repeat = env::<usize>("ZEORAID_BENCH_REPEAT").unwrap_or(1).max(1);
    let gb: f64 = env("ZEORAID_BENCH_BLOB_GB").unwrap_or(2.0);
    let size = ((gb * GIB as f64) as u64).max(1);
    // The source, the server's blob and its staging file, the client's download.
    if !enough_disk(root, 4 * size + GIB, "memory") {
        return;
    }
    let src = root.join("src-big");
    let t = Instant::now();
    let sha = make_source(driver, &src, size);
    eprintln!(
        "made the {} source in {:.1} s",
        size_label(size),
        t.elapsed().as_secs_f64()
    );
    let mut runs: [Vec<MemRun>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..repeat {
        for (si, which) in [Impl::Python, Impl::Zeoraid].into_iter().enumerate() {
            let dir = tempfile::tempdir_in(root).expect("run dir");
            let server = start(which, &dir.path().join("server"));
            std::thread::sleep(Duration::from_secs(1));
            let idle = status_bytes(server.pid(), "VmRSS");
            let (up, down) = up_and_down(driver, &server, dir.path(), &src, size, 1, 1, Some(&sha));
            let hwm = status_bytes(server.pid(), "VmHWM");
            drop(server);
            drop(dir);
            let r = MemRun {
                idle,
                up,
                down,
                hwm,
            };
            eprintln!(
                "{}: idle {}, peak {}, up {:.0} MB/s, down {:.0} MB/s",
                which.name(),
                mib(idle),
                mib(r.peak()),
                up.mb_per_s(),
                down.mb_per_s()
            );
            runs[si].push(r);
        }
    }
    let m =
        |si: usize, f: &dyn Fn(&MemRun) -> f64| median(&runs[si].iter().map(f).collect::<Vec<_>>());
    println!(
        "\nServer memory while one client stores a single {} blob and a fresh client loads it back \
         (VmRSS idle 1 s after start; VmRSS sampled every 100 ms during each phase; VmHWM, the kernel's peak, \
         at the end; growth = the larger peak - idle); fresh servers, median of {repeat}\n",
        size_label(size)
    );
    println!(
        "| server | RSS idle | max RSS, upload | max RSS, download | peak (VmHWM) | **growth over idle** | \
         upload MB/s | download MB/s | server CPU s, up + down | SHA-256 back |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for (si, which) in [Impl::Python, Impl::Zeoraid].into_iter().enumerate() {
        let sha_ok = runs[si].iter().all(|r| r.down.sha_ok == Some(true));
        println!(
            "| {} | {} | {} | {} | {} | **{}** | {:.0} | {:.0} | {:.1} | {} |",
            which.name(),
            mib(m(si, &|r| r.idle)),
            mib(m(si, &|r| r.up.rss_max)),
            mib(m(si, &|r| r.down.rss_max)),
            mib(m(si, &|r| r.hwm)),
            mib(m(si, &MemRun::growth)),
            m(si, &|r| r.up.mb_per_s()),
            m(si, &|r| r.down.mb_per_s()),
            m(si, &|r| r.up.server_cpu + r.down.server_cpu),
            if sha_ok { "same" } else { "**differs**" }
        );
    }
    let (pg, rg) = (m(0, &MemRun::growth), m(1, &MemRun::growth));
    println!(
        "| **ratio zeoraid/python** | **{:.2}x** | | | **{:.2}x** | **{:.2}x** | **{:.2}x** | **{:.2}x** | | |",
        ratio(m(1, &|r| r.idle), m(0, &|r| r.idle)),
        ratio(m(1, &|r| r.hwm), m(0, &|r| r.hwm)),
        ratio(rg, pg),
        ratio(m(1, &|r| r.up.mb_per_s()), m(0, &|r| r.up.mb_per_s())),
        ratio(m(1, &|r| r.down.mb_per_s()), m(0, &|r| r.down.mb_per_s())),
    );
    println!(
        "\nTarget zeoraid's RSS growth over idle < {}: **{}**, {}.",
        mib(GROWTH_TARGET),
        mib(rg),
        mark(rg < GROWTH_TARGET)
    );
}
