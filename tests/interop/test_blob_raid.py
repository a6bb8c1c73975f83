"""Blobs through a RAID array under a backend crash, and one huge blob.

Every client here is stock ``ZEO.ClientStorage`` with a blob cache of its
own (``shared_blob_dir=False``: blobs travel over the protocol); every
server is started and stopped by the test, on loopback.  What is checked:

* ``test_kill_a_backend_while_clients_store_blobs``: an array over two
  stock Python ``runzeo`` servers, each with a ``blob-dir`` (zeoraid keeps
  a blob cache per backend), ``backend-timeout = 2``, auto-recovery on
  (the default).  Three client processes store blobs of random sizes
  (1 KB - 1 MB: new objects and new revisions of their existing ones)
  for ~6 s, each recording every acknowledged commit (oid, tid, sha256)
  only after ``commit()`` returned, and counting every exception.  At
  ~2 s runzeo 1 is killed with SIGKILL (whatever it was doing: what its
  Data.fs tail and blob ``tmp/`` held at that moment is printed), at ~4 s
  it is started again on the same port and files.  No client sees an
  error; the killed backend is degraded, then recovered by itself
  (``ruok``: optimal again within 60 s); every acknowledged blob revision
  is then a file in BOTH runzeo servers' blob directories
  (``FilesystemHelper(blob_dir).getBlobFilename(oid, tid)``, read
  directly) with the acknowledged bytes, and loads identical through a
  fresh client of zeoraid.  With everything stopped: both Data.fs
  histories, read with ZODB's FileStorage, are identical transaction by
  transaction and record by record, both pass ``fstest``, and stock
  ``FileStorage(blob_dir=...)`` finds the same blob files, byte for byte,
  for every blob record of either history.
* ``test_kill_a_default_config_runzeo_while_clients_store_blobs``: the
  same over two runzeo of runzeo's default config (no ``msgpack`` line:
  the pickle flavour), checking that zeoraid spoke pickle to both.
* ``test_two_gib_blob_with_bounded_server_memory``: zeoraid with a file
  storage and ``blob-dir``; one client stores a single blob of
  ``ZEORAID_INTEROP_BIG_BLOB_MB`` MiB (default 2048), a file written in
  8 MiB chunks of a repeating pattern and handed over with
  ``Blob.consumeFile``; a second client with a fresh blob cache loads it
  and its size and (streamed) sha256 are compared.  The server's VmRSS
  is sampled every 100 ms over the whole store and load: its growth over
  the RSS before the upload (and the growth of VmHWM, which catches peaks
  between samples) stays below 64 MiB (stock runzeo, which stops reading
  the socket while it writes, grows by less than 1 MiB).  The free space
  of the temporary directory is checked first (three copies: the
  client's file, the server's, the second client's cache); all big files
  are deleted at the end.  2 GiB take 15-20 s on a 2-core machine (a
  debug build), well inside the per-test timeout.

The array test is zeoraid only (runzeo has no arrays; skipped under
``ZEORAID_INTEROP_TARGET=runzeo`` like test_raid and test_recovery); the
big-blob test runs against runzeo too.  Each test prints its evidence in
brackets.  Run it::

    ZEORAID_BIN=target/debug/zeoraid .venv/bin/python tests/interop/run.py test_blob_raid
    ZEORAID_INTEROP_BIG_BLOB_MB=256 ZEORAID_BIN=target/debug/zeoraid \\
        .venv/bin/python tests/interop/run.py test_blob_raid -k two_gib
"""

import hashlib
import os
import random
import shutil
import signal
import threading
import time
import unittest

import transaction
import ZODB
import ZODB.blob
import ZODB.utils
from ZEO.ClientStorage import ClientStorage
from ZODB.POSException import POSKeyError

import harness
import zeoraid_server
from blob_interchange import CONNECT_TIMEOUT
from blob_interchange import _MP
from blob_interchange import BlobClientFixture
from blob_interchange import change_a_blob
from blob_interchange import child_init
from blob_interchange import file_sha256
from blob_interchange import oid_hex
from blob_interchange import read_all_blobs_python
from blob_interchange import sha256
from blob_interchange import tid_hex
from blob_interchange import tmp_files
from blob_interchange import writer_ready
from test_raid import ruok
from test_recovery import RecoveryTests
from test_recovery import data_fs_tail
from test_recovery import file_history
from test_recovery import first_difference
from zeoraid_server import StorageSpec


KNOWN_FAILURES = {}

# test_kill_a_backend_while_clients_store_blobs
WRITERS = 3
MIN_BLOB, MAX_BLOB = 1000, 1000 * 1000
BACKEND_TIMEOUT = 2.0
KILL_AT = 2.0                 # seconds after the writers start
RESTART_AT = 4.0
STOP_AT = 6.0
RECOVER_DEADLINE = 60.0       # optimal again, counted from the restart
WRITER_EXIT_DEADLINE = 30.0   # writers finish their last commit and exit
MAX_WRITER_ERRORS = 20        # a writer gives up after this many
POLL = 0.05

# test_two_gib_blob_with_bounded_server_memory
BIG_BLOB_MB = int(os.environ.get("ZEORAID_INTEROP_BIG_BLOB_MB", "2048"))
PATTERN_CHUNK = 8 << 20       # the source file is written in these
RSS_SAMPLE_INTERVAL = 0.1
RSS_GROWTH_LIMIT = 64 << 20
# Room the big-blob test needs: three copies, plus this.
DISK_MARGIN = 512 << 20


# ---------------------------------------------------------------------------
# Helpers


def p64_hex(h):
    return ZODB.utils.p64(int(h, 16))


def proc_status(pid):
    """{field: bytes} of the VmRSS, VmHWM, RssAnon and RssFile lines of
    /proc/PID/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


def count_blob_files(bdir):
    """How many .blob files ``bdir`` holds (tmp/ left out)."""
    count = 0
    for root, dirs, files in os.walk(bdir):
        if root == bdir and "tmp" in dirs:
            dirs.remove("tmp")
        count += sum(1 for f in files if f.endswith(".blob"))
    return count


def mib(n):
    return n / (1 << 20)


class RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds in a thread."""

    def __init__(self, pid, interval=RSS_SAMPLE_INTERVAL):
        self.pid = pid
        self.interval = interval
        self.samples = []            # (monotonic, VmRSS, RssAnon) bytes
        self.error = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"rss-{pid}")

    def _run(self):
        while not self._stop.is_set():
            try:
                status = proc_status(self.pid)
                sample = (time.monotonic(), status["VmRSS"],
                          status["RssAnon"])
            except (OSError, KeyError) as exc:
                self.error = repr(exc)
                return
            self.samples.append(sample)
            self._stop.wait(self.interval)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(5)

    def peak(self, since, until=None):
        """(the largest VmRSS, the largest RssAnon) sampled from ``since``
        to ``until`` (None: the end)."""
        window = [(rss, anon) for t, rss, anon in self.samples
                  if t >= since and (until is None or t <= until)]
        if not window:
            return 0, 0
        return max(r for r, _ in window), max(a for _, a in window)


# ---------------------------------------------------------------------------
# Client processes.  Module-level, so 'spawn' can import them.


def raid_blob_writer(name, log_path, parent_pid, addr, cache_dir,
                     record_path, seed, go, stop):
    """Until ``stop``: commit blobs of random sizes into root[name] (a
    PersistentMapping of this writer's alone).  Each commit either adds a
    blob or rewrites one of the writer's blobs, and bumps root[name]['n']
    so the mapping's _p_serial is the commit's tid.  Appends (flushed)
    "ack OID TID SHA256 SIZE MONOTONIC SECONDS" only after ``commit()``
    returned, "error: MONOTONIC ..." for every exception (the transaction
    is aborted and the loop goes on, up to MAX_WRITER_ERRORS), and
    "done" at the end."""
    child_init(log_path, parent_pid)
    rng = random.Random(seed)
    record = open(record_path, "a", buffering=1)
    db = None
    errors = 0
    try:
        db = ZODB.DB(ClientStorage(addr, blob_dir=cache_dir,
                                   wait_timeout=CONNECT_TIMEOUT))
        tm, mine = writer_ready(db, name, record, go)
        n = 0
        while not stop.is_set():
            n += 1
            size = rng.randint(MIN_BLOB, MAX_BLOB)
            data = rng.randbytes(size)
            try:
                blob = change_a_blob(tm, rng, mine, n, data)
                started = time.monotonic()
                tm.commit()
                took = time.monotonic() - started
                # Acknowledged: the mapping changed in the same
                # transaction and is not a ghost: its _p_serial is the tid.
                record.write(
                    f"ack {oid_hex(blob._p_oid)} {tid_hex(mine._p_serial)} "
                    f"{sha256(data)} {size} {time.monotonic():.3f} "
                    f"{took:.3f}\n")
            except Exception as exc:
                errors += 1
                record.write(f"error: {time.monotonic():.3f} "
                             + repr(exc).replace("\n", " ")[:300] + "\n")
                try:
                    tm.abort()
                except Exception:
                    pass
                if errors >= MAX_WRITER_ERRORS:
                    break
                time.sleep(0.1)
    except BaseException as exc:
        try:
            record.write(f"error: {time.monotonic():.3f} "
                         + repr(exc).replace("\n", " ")[:300] + "\n")
        except Exception:
            pass
    try:
        if db is not None:
            db.close()
    except Exception:
        pass
    record.write("done\n")
    record.close()
    os._exit(0)


# ---------------------------------------------------------------------------


class BlobRaidTests(BlobClientFixture, unittest.TestCase):

    dir_prefix = "zeoraid-blobraid-"

    assert_fstest = RecoveryTests.assert_fstest
    log_text = RecoveryTests.log_text
    wait_for_log = RecoveryTests.wait_for_log
    recovered_line = RecoveryTests.recovered_line

    # -- 1. kill -9 of a runzeo backend under blob writers -----------------

    def test_kill_a_backend_while_clients_store_blobs(self):
        self.kill_a_backend_while_clients_store_blobs("runzeo2")

    def test_kill_a_default_config_runzeo_while_clients_store_blobs(self):
        # runzeo without "msgpack true": blobs through the pickle flavour.
        self.kill_a_backend_while_clients_store_blobs("runzeo-pickle2")

    def kill_a_backend_while_clients_store_blobs(self, layout):
        """The first test over ``layout`` (a RAID_LAYOUTS name of two
        runzeo)."""
        if zeoraid_server.target() != "zeoraid":
            self.skipTest("RAID arrays are a zeoraid feature")
        kinds = zeoraid_server.RAID_LAYOUTS[layout]
        victim_name = f"{kinds[1]}-1"
        server = self.start_server([StorageSpec(
            name="1", kind="raid", backends=kinds,
            backend_blobs=True,
            raid_options=f"backend-timeout = {BACKEND_TIMEOUT}")])
        backends = list(server.backend_servers)
        victim = backends[1]
        fs_paths = [b._storage_path(b.storages[0]) for b in backends]
        blob_dirs = [b.storages[0].blob_dir for b in backends]
        doc = ruok(server.addr)["1"]["raid"]
        self.assertEqual([b["state"] for b in doc["backends"]],
                         ["optimal", "optimal"], doc)

        names = [f"w{i}" for i in range(WRITERS)]
        go, stop = _MP.Event(), _MP.Event()
        procs, lines, seed = self.start_writers(raid_blob_writer,
                                                server.addr, names, go, stop)

        # The schedule, polling ruok all along: backend 1's states, with
        # the moment each was first seen.
        states = []              # [(state, monotonic)]
        other_states = set()     # backend 0's

        def poll():
            doc = ruok(server.addr)["1"]["raid"]
            state = doc["backends"][1]["state"]
            if not states or states[-1][0] != state:
                states.append((state, time.monotonic()))
            other_states.add(doc["backends"][0]["state"])
            return doc

        def poll_until(when):
            while time.monotonic() < when:
                poll()
                time.sleep(POLL)

        go.set()
        started = time.monotonic()
        poll_until(started + KILL_AT)
        # SIGKILL at whatever it is doing; first a look (stopped) at what
        # its Data.fs ends with and what its blob tmp/ holds.
        os.kill(victim.proc.pid, signal.SIGSTOP)
        tail = data_fs_tail(fs_paths[1])
        staged = tmp_files(blob_dirs[1])
        victim.proc.kill()
        victim.proc.wait(5)
        killed = time.monotonic()
        poll_until(started + RESTART_AT)
        degraded_seen = [t for s, t in states if s == "degraded"]
        self.assertTrue(degraded_seen, f"backend 1 not degraded "
                        f"{RESTART_AT - KILL_AT:g} s after its SIGKILL; "
                        f"states seen {states}")
        noticed = degraded_seen[0] - killed
        victim.restart()
        restarted = time.monotonic()
        poll_until(started + STOP_AT)
        stop.set()
        stopped = time.monotonic()

        # Recovered by itself: optimal again.
        deadline = restarted + RECOVER_DEADLINE
        while True:
            doc = poll()
            b = doc["backends"][1]
            if b["state"] == "optimal" and doc["state"] == "optimal":
                break
            error = b["last-recovery-error"] or ""
            if "diverged" in error and b["state"] == "degraded":
                self.fail(f"auto-recovery gave backend 1 up: {error}; "
                          f"status {doc}")
            self.assertLess(time.monotonic(), deadline,
                            f"backend 1 not optimal again within "
                            f"{RECOVER_DEADLINE:g} s of its restart; states "
                            f"seen {[s for s, _ in states]}; status {doc}")
            time.sleep(POLL)
        optimal_after = time.monotonic() - restarted
        for proc in procs:
            proc.join(max(0.1, stopped + WRITER_EXIT_DEADLINE
                          - time.monotonic()))
        alive = [p.name for p in procs if p.is_alive()]
        self.assertEqual(alive, [], "writers still running")

        acked, errors = [], []
        for name in names:
            ls = lines(name)
            self.assertIn("done", ls, f"writer {name} did not finish")
            for line in ls:
                if line.startswith("ack "):
                    o, t, digest, size, at, took = line.split()[1:]
                    acked.append((o, t, digest, int(size), float(at),
                                  float(took)))
                elif line.startswith("error: "):
                    errors.append(f"{name}: {line}")
        self.assertEqual(errors, [], f"{len(errors)} exceptions in the "
                         "writers (none allowed)")
        before = sum(1 for a in acked if a[4] < killed)
        down = sum(1 for a in acked if killed <= a[4] < restarted)
        after = sum(1 for a in acked if a[4] >= restarted)
        self.assertGreater(before, 0, "commits before the kill")
        self.assertGreater(down, 0, "commits while the backend was down")
        self.assertNotIn("optimal", [s for s, t in states
                                     if killed < t < restarted],
                         "backend 1 was never optimal while it was dead")
        self.assertEqual(other_states, {"optimal"},
                         "backend 0 stayed optimal all along")
        # ruok can say optimal a moment before the line is logged: wait.
        line = self.recovered_line(server, victim_name)
        if "runzeo-pickle" in kinds:
            self.assertEqual([], zeoraid_server.pickle_problems(server))

        # Every acknowledged revision, read directly from both runzeo
        # servers' blob directories.
        for i, bdir in enumerate(blob_dirs):
            helper = ZODB.blob.FilesystemHelper(bdir)
            self.assertEqual(helper.layout_name, "bushy", bdir)
            wrong = []
            for o, t, digest, size, *_ in acked:
                path = helper.getBlobFilename(p64_hex(o), p64_hex(t))
                try:
                    got = file_sha256(path)
                except FileNotFoundError:
                    got = "missing"
                if got != digest:
                    wrong.append((o, t, size, got, path))
            self.assertEqual(wrong[:5], [], f"{len(wrong)} acknowledged "
                             f"blob revisions missing or different in "
                             f"runzeo-{i}'s blob directory {bdir}")

        # ... and through a fresh client of zeoraid.
        db = self.open_db(server.addr, "check-cache")
        wrong = []
        for o, t, digest, size, *_ in acked:
            try:
                got = file_sha256(db.storage.loadBlob(p64_hex(o),
                                                      p64_hex(t)))
            except POSKeyError as exc:
                got = f"POSKeyError {exc}"
            if got != digest:
                wrong.append((o, t, size, got))
        self.close_db(db)
        self.assertEqual(wrong[:5], [], f"{len(wrong)} acknowledged blob "
                         "revisions not loadable or different through "
                         "zeoraid")

        # Everything stopped: both histories, both blob sets.
        server.stop()
        self.assertIsNone(server.graceful_problem())
        for b in backends:
            self.assertIsNone(b.graceful_problem(), f"runzeo {b.addr}")
        h0, h1 = (file_history(p) for p in fs_paths)
        self.assertGreater(len(h0), len(acked))
        if h0 != h1:
            self.fail(f"runzeo-0 vs runzeo-1: histories differ ({len(h0)} "
                      f"vs {len(h1)} transactions); "
                      f"{first_difference(h0, h1)}")
        for path in fs_paths:
            self.assert_fstest(path)
        found = [read_all_blobs_python(p, d)
                 for p, d in zip(fs_paths, blob_dirs)]
        for i, f in enumerate(found):
            missing = sorted((o, t) for o, ts in f.items()
                             for t, d in ts.items() if d is None)
            self.assertEqual(missing[:5], [], f"{len(missing)} blob records "
                             f"of runzeo-{i}'s Data.fs without a file")
        self.assertEqual(found[0], found[1],
                         "the two runzeo servers' blob files differ")
        for o, t, digest, *_ in acked:
            self.assertEqual(found[0].get(o, {}).get(t), digest,
                             f"acknowledged {o}@{t} in the Data.fs")
        revisions = sum(len(ts) for ts in found[0].values())
        # Not asserted: files no Data.fs record names (stock runzeo leaves
        # those of a transaction a SIGKILL cut off between vote and
        # finish), and what is left in the runzeo servers' tmp/.
        unnamed = [count_blob_files(d) - revisions for d in blob_dirs]
        left = [len(tmp_files(d)) for d in blob_dirs]
        mb = sum(a[3] for a in acked) / 1e6
        longest = max(a[5] for a in acked)
        print(f"[{len(acked)} acknowledged blob commits ({mb:.0f} MB) by "
              f"{WRITERS} writers, 0 errors: {before} before the SIGKILL, "
              f"{down} while {victim_name} was down, {after} after its restart; "
              f"killed with its Data.fs {tail}, {len(staged)} uploads in "
              f"its tmp/; degraded {noticed:.2f} s after the kill; states "
              f"{' -> '.join(s for s, _ in states)}; optimal "
              f"{optimal_after:.1f} s after the restart (recovered "
              f"{line['copied']} transactions, {line['mb']} MB, in "
              f"{line['seconds']} s); longest commit {longest:.2f} s; "
              f"every acknowledged revision identical in both runzeo "
              f"blob dirs and through zeoraid; histories identical over "
              f"{len(h0)} transactions, {revisions} blob revisions "
              f"identical, fstest clean; blob files no record names: "
              f"{unnamed}, files in tmp/: {left}; seed {seed}]", end=" ... ",
              flush=True)

    # -- 2. one huge blob, the server's memory bounded ---------------------

    def test_two_gib_blob_with_bounded_server_memory(self):
        test_started = time.monotonic()
        size = BIG_BLOB_MB << 20
        self.assertGreater(size, 0, "ZEORAID_INTEROP_BIG_BLOB_MB")
        need = 3 * size + DISK_MARGIN
        free = shutil.disk_usage(self.dir).free
        if free < need:
            self.fail(f"not enough disk space in {self.dir} for a "
                      f"{BIG_BLOB_MB} MiB blob: {mib(free):.0f} MiB free, "
                      f"{mib(need):.0f} MiB needed (the client's file, the "
                      f"server's, the second client's cache, and "
                      f"{mib(DISK_MARGIN):.0f} MiB); set "
                      f"ZEORAID_INTEROP_BIG_BLOB_MB lower or free space")
        fs = os.path.join(self.dir, "Data.fs")
        bdir = os.path.join(self.dir, "blobs")
        server = self.start_server([StorageSpec(
            name="1", kind="file", path=fs, blob_dir=bdir)])
        pid = server.proc.pid
        cache1 = os.path.join(self.dir, "cache1")
        cache2 = os.path.join(self.dir, "cache2")
        try:
            db1 = self.open_db(server.addr, "cache1")
            tm1 = transaction.TransactionManager()
            conn1 = db1.open(tm1)
            conn1.root()["n"] = 0
            tm1.commit()

            # The source file, in 8 MiB chunks of a repeating pattern,
            # next to the client's cache (consumeFile renames it).
            src = os.path.join(self.dir, "big.src")
            chunk = random.Random(BIG_BLOB_MB).randbytes(PATTERN_CHUNK)
            expected = hashlib.sha256()
            t0 = time.monotonic()
            with open(src, "wb") as f:
                left = size
                while left:
                    piece = chunk if left >= len(chunk) else chunk[:left]
                    f.write(piece)
                    expected.update(piece)
                    left -= len(piece)
            written = time.monotonic() - t0
            expected = expected.hexdigest()

            status_before = proc_status(pid)
            sampler = RssSampler(pid).start()
            time.sleep(0.3)      # a few samples of the idle server
            baseline = proc_status(pid)["VmRSS"]
            t1 = time.monotonic()
            tm1.begin()
            blob = ZODB.blob.Blob()
            conn1.root()["big"] = blob
            blob.consumeFile(src)
            conn1.root()["n"] = 1
            tm1.commit()
            stored = time.monotonic() - t1
            oid, tid = blob._p_oid, conn1.root()._p_serial
            self.assertFalse(os.path.exists(src), "consumeFile moved it")
            server_file = ZODB.blob.FilesystemHelper(bdir).getBlobFilename(
                oid, tid)
            self.assertEqual(os.path.getsize(server_file), size,
                             f"the server's blob file {server_file}")

            # A second client with an empty cache loads it.
            t2 = time.monotonic()
            db2 = self.open_db(server.addr, "cache2")
            tm2 = transaction.TransactionManager()
            conn2 = db2.open(tm2)
            big = conn2.root()["big"]
            got = hashlib.sha256()
            got_size = 0
            with big.open("r") as f:
                loaded = time.monotonic() - t2
                while True:
                    piece = f.read(1 << 20)
                    if not piece:
                        break
                    got.update(piece)
                    got_size += len(piece)
            checked = time.monotonic() - t2
            self.assertEqual(big._p_serial, tid)
            tm2.abort()
            sampler.stop()
            status_after = proc_status(pid)
            self.assertIsNone(sampler.error, "sampling VmRSS")
            self.assertEqual(got_size, size, "size of the loaded blob")
            self.assertEqual(got.hexdigest(), expected,
                             "sha256 of the loaded blob")

            samples = [s for s in sampler.samples if s[0] >= t1]
            self.assertGreater(len(samples), 5, "RSS samples")
            peak, peak_anon = sampler.peak(t1)
            store_peak, _ = sampler.peak(t1, t2)
            load_peak, _ = sampler.peak(t2)
            before_load = [rss for t, rss, _ in sampler.samples if t < t2]
            after_store = before_load[-1] if before_load else 0
            growth = peak - baseline
            hwm_growth = max(0, status_after["VmHWM"]
                             - max(baseline, status_before["VmHWM"]))
            summary = (
                f"{BIG_BLOB_MB} MiB blob: file written in {written:.1f} s, "
                f"stored in {stored:.1f} s "
                f"({mib(size) / max(stored, 1e-9):.0f} MiB/s), loaded by a "
                f"fresh client in {loaded:.1f} s "
                f"({mib(size) / max(loaded, 1e-9):.0f} MiB/s; sha256 "
                f"streamed {checked - loaded:.1f} s more), size and sha256 "
                f"identical; {server.target} RSS {mib(baseline):.1f} MiB "
                f"before the upload, peak {mib(peak):.1f} MiB over "
                f"{len(samples)} samples (store {mib(store_peak):.1f}, "
                f"load {mib(load_peak):.1f}; anonymous "
                f"{mib(peak_anon):.1f}; {mib(after_store):.1f} after the "
                f"store, {mib(status_after['VmRSS']):.1f} after the load; "
                f"growth {mib(growth):.1f} MiB, "
                f"VmHWM growth {mib(hwm_growth):.1f} MiB; limit "
                f"{mib(RSS_GROWTH_LIMIT):.0f} MiB)")
            self.assertLess(growth, RSS_GROWTH_LIMIT,
                            f"server RSS grew too much: {summary}")
            self.assertLess(hwm_growth, RSS_GROWTH_LIMIT,
                            f"server peak RSS (VmHWM) grew too much: "
                            f"{summary}")
        finally:
            for db in list(self.dbs):
                self.close_db(db)
            self.stop_servers()
            for path in (os.path.join(self.dir, "big.src"), cache1, cache2,
                         bdir, fs):
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                elif os.path.exists(path):
                    os.remove(path)
        total = time.monotonic() - test_started
        print(f"[{summary}; big files deleted; {total:.1f} s in all]",
              end=" ... ", flush=True)


load_suite = harness.prepare_module(
    [BlobRaidTests], KNOWN_FAILURES,
    mark=zeoraid_server.target() == "zeoraid")
