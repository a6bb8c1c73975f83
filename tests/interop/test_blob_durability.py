"""Blob durability and interchange: zeoraid's blob files against stock
ZODB's, through crashes, limits, a full disk and vanishing clients.

Every client here is stock ``ZEO.ClientStorage`` with a blob cache of its
own (``shared_blob_dir=False``: blobs travel over the protocol); every
server is started and stopped by the test, on loopback.  What is checked:

* ``test_python_pair_served_by_zeoraid``: ``blob_interchange.
  write_python_pair`` builds a Data.fs + blobstorage with Python's own
  FileStorage (undo and pack included); zeoraid serves that pair as it is
  (``kind = "file"``, ``path``, a relative ``blob-dir``).  A client reads
  every blob revision back: the current ones through ``root``, every
  revision through iterating the storage + ``loadBlob``, the history of
  ``hist`` through ``loadBefore`` / ``loadSerial`` +
  ``openCommittedBlobFile``; a revision the pack removed is a
  POSKeyError.  All SHA-256 equal the dict; the pair is unchanged on disk
  afterwards and passes ``fstest``.
* ``test_zeoraid_pair_read_by_python``: clients write blobs through
  zeoraid (0 bytes to ~3 MB, several revisions, an undo of a blob
  revision through ``db.undo``, ``db.pack(t)`` removing old revisions,
  blobs written after the pack); zeoraid is stopped and Python's
  ``FileStorage(path, blob_dir=..., read_only=True)`` reads back exactly
  the revisions the client committed (tids as the client saw them via
  ``_p_serial``), the packed revisions' files are gone, ``tmp/`` is empty
  and ``fstest`` is clean.
* ``test_kill_9_during_blob_uploads``: four client processes commit blobs
  of random sizes (1 KB - 2 MB) in a loop, each recording an
  acknowledged commit (oid, tid, sha256) only after ``commit()``
  returned; zeoraid is killed with SIGKILL at a random moment after ~2 s
  while uploads are staged, and restarted on the same files.  Every
  acknowledged blob loads through a fresh client and is identical,
  ``tmp/`` is empty after the restart and ``fstest`` is clean.  Also:
  every blob record Python's FileStorage finds in the Data.fs has its
  file, holding bytes some writer tried to commit (a commit whose answer
  the kill cut off may be there too).  Printed, not asserted: blob files
  without a record in Data.fs (left by a transaction that was voted but
  not finished when the server died: the file storage drops it at open,
  as Python's does, and leaves its blob files, as Python's does).
* ``test_max_blob_size``: with ``max-blob-size = 1000000`` a 2 MB blob
  and a 1 000 001-byte blob fail their commits with an error naming
  max-blob-size, the connection stays up, 1 000 000 bytes and 500 KB then
  commit; no blob file exists for the failed transactions and ``tmp/`` is
  empty once they ended.  (zeoraid only: runzeo has no such limit.)
* ``test_disk_full_during_a_blob_upload``: the server's ``blob-dir`` is a
  4 MB tmpfs (mounted by the test; ``ulimit -f`` on the server if no
  tmpfs can be mounted).  A blob larger than the space fails its commit
  with an error, leaves nothing in the blob directory (files, ``tmp/``,
  and the space itself: statvfs free blocks are back); smaller blobs then
  commit; filling the disk with committed blobs fails the next one
  cleanly, and a small one still commits after it.  (zeoraid only:
  stock ZEO drops the connection when a chunk cannot be written.)
* ``test_client_killed_during_an_upload``: a client process uploading a
  50 MB blob is stopped once the server's staging file in ``tmp/`` has
  grown past 1 MB, then killed with SIGKILL: ``tmp/`` is empty once the
  server noticed (polled), no blob file for it exists, and a fresh client
  commits and reads a blob afterwards.  (zeoraid only: stock ZEO leaves
  the partial upload in ``tmp/``.)

Under ``ZEORAID_INTEROP_TARGET=runzeo`` the tests of zeoraid's own
promises are skipped (and the tmp/ checks of the kill -9 test left out):
stock ZEO fails them, which says nothing about zeoraid.  Each test prints
its evidence in brackets.  Run it::

    ZEORAID_BIN=target/debug/zeoraid .venv/bin/python tests/interop/run.py test_blob_durability
"""

import functools
import logging
import os
import random
import signal
import subprocess
import time
import traceback
import unittest

import transaction
import ZODB
import ZODB.blob
import ZODB.utils
from persistent.mapping import PersistentMapping
from persistent.TimeStamp import TimeStamp
from ZEO.ClientStorage import ClientStorage
from ZODB.POSException import POSKeyError

import blob_interchange
import harness
import zeoraid_server
from blob_interchange import CONNECT_TIMEOUT
from blob_interchange import _MP
from blob_interchange import BlobClientFixture
from blob_interchange import blob_files
from blob_interchange import change_a_blob
from blob_interchange import child_init
from blob_interchange import file_sha256
from blob_interchange import oid_hex
from blob_interchange import read_all_blobs_python
from blob_interchange import sha256
from blob_interchange import tid_hex
from blob_interchange import tmp_files
from blob_interchange import write_python_pair
from blob_interchange import writer_ready
from test_recovery import RecoveryTests
from zeoraid_server import Server
from zeoraid_server import StorageSpec


KNOWN_FAILURES = {}

# test_kill_9_during_blob_uploads
WRITERS = 4
MIN_BLOB, MAX_BLOB = 1024, 2 * 1024 * 1024
KILL_AFTER = 2.0              # seconds of writing before the kill (+ 0-1 s)
WRITER_WAIT_TIMEOUT = 3.0     # their ClientStorage's wait_timeout
WRITER_EXIT_DEADLINE = 20.0   # writers notice the dead server and exit

# test_max_blob_size
MAX_BLOB_SIZE = 1000000

# test_disk_full_during_a_blob_upload
TMPFS_SIZE = 4 * 1024 * 1024

# test_client_killed_during_an_upload
BIG_UPLOAD = 50 * 1024 * 1024
STAGED_BEFORE_KILL = 1024 * 1024
TMP_EMPTY_DEADLINE = 10.0


# ---------------------------------------------------------------------------
# Helpers


def blob_path(bdir, oid, tid):
    """Where a bushy blob directory keeps ``oid``'s revision ``tid``."""
    return os.path.join(bdir, ZODB.blob.BushyLayout().getBlobFilePath(
        oid, tid))


def oid_dir(bdir, oid):
    return os.path.join(bdir, ZODB.blob.BushyLayout().oid_to_path(oid))


def content(label, size):
    return random.Random(label).randbytes(size)


def read_blob(blob):
    with blob.open("r") as f:
        return f.read()


def desc_matches(d, text):
    desc = d["description"]
    if isinstance(desc, bytes):
        desc = desc.decode("utf-8", "replace")
    return desc == text


def is_mount_point(path):
    return os.path.ismount(path)


# How a write past the end of the space fails: ENOSPC on a full file
# system, EFBIG past RLIMIT_FSIZE.
DISK_FULL_CAUSES = ("No space left on device", "os error 28",
                    "File too large", "os error 27")


def disk_full_cause(text):
    """The phrase of DISK_FULL_CAUSES in ``text``, or None."""
    return next((c for c in DISK_FULL_CAUSES if c in text), None)


# ---------------------------------------------------------------------------
# Client processes.  Module-level, so 'spawn' can import them.


def blob_writer(name, log_path, parent_pid, addr, cache_dir, record_path,
                seed, go):
    """Commit blobs of random sizes into root[name] (a PersistentMapping
    of this writer's alone) until something fails.  Each commit either
    adds a blob or rewrites one of the writer's blobs, and bumps
    root[name]['n'] so the mapping's _p_serial is the commit's tid.  A
    line "OID TID SHA256" is appended to ``record_path`` (and flushed)
    only after ``commit()`` returned; the first exception ends the loop
    with a line "error: ..."."""
    child_init(log_path, parent_pid)
    rng = random.Random(seed)
    record = open(record_path, "a", buffering=1)
    db = None
    try:
        # A short wait_timeout: once the server is killed, calls that
        # wait for a connection (new_oids) give up soon.
        db = ZODB.DB(ClientStorage(addr, blob_dir=cache_dir,
                                   wait_timeout=WRITER_WAIT_TIMEOUT))
        tm, mine = writer_ready(db, name, record, go)
        n = 0
        while True:
            n += 1
            size = rng.randint(MIN_BLOB, MAX_BLOB)
            data = rng.randbytes(size)
            blob = change_a_blob(tm, rng, mine, n, data)
            # What is about to be committed (a blob file of a commit that
            # was never acknowledged must still be one of these).
            record.write(f"try {sha256(data)} {size}\n")
            tm.commit()
            # Acknowledged: the mapping was changed in the same
            # transaction and is not a ghost, so its _p_serial is the tid.
            record.write(f"{oid_hex(blob._p_oid)} {tid_hex(mine._p_serial)} "
                         f"{sha256(data)} {size}\n")
    except BaseException as exc:
        try:
            record.write("error: " + repr(exc).replace("\n", " ")[:300]
                         + "\n")
        except Exception:
            pass
    record.close()
    logging.shutdown()
    os._exit(0)


def big_uploader(name, log_path, parent_pid, addr, cache_dir, size,
                 status_path):
    """Commit one blob of ``size`` bytes (the test kills us during the
    upload)."""
    child_init(log_path, parent_pid)
    status = open(status_path, "a", buffering=1)
    try:
        db = ZODB.DB(ClientStorage(addr, blob_dir=cache_dir,
                                   wait_timeout=CONNECT_TIMEOUT))
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        chunk = os.urandom(1 << 20)
        blob = ZODB.blob.Blob()
        with blob.open("w") as f:
            for _ in range(size // len(chunk)):
                f.write(chunk)
            f.write(chunk[:size % len(chunk)])
        conn.root()["big"] = blob
        status.write("committing\n")
        tm.commit()
        status.write("committed\n")
    except BaseException:
        status.write("error: " + traceback.format_exc().replace("\n", " | ")
                     + "\n")
    status.close()
    os._exit(0)


# ---------------------------------------------------------------------------


class BlobDurabilityTests(BlobClientFixture, unittest.TestCase):

    dir_prefix = "zeoraid-blobdur-"
    client_files = (".log", ".acked", ".status")

    def setUp(self):
        super().setUp()
        self.mounts = []

    def tearDown(self):
        try:
            super().tearDown()
        finally:
            for mount in reversed(self.mounts):
                if is_mount_point(mount):
                    if subprocess.run(["umount", mount]).returncode != 0:
                        subprocess.run(["umount", "-l", mount])

    assert_fstest = RecoveryTests.assert_fstest

    # -- helpers -------------------------------------------------------------

    def zeoraid_only(self, why):
        """Skip under ZEORAID_INTEROP_TARGET=runzeo: the test checks a
        promise of zeoraid's that stock ZEO does not make."""
        if zeoraid_server.target() != "zeoraid":
            self.skipTest(f"zeoraid only: {why}")

    def file_server(self, path, bdir, relative=False, server_toml="",
                    wrap=None):
        """Start zeoraid (or runzeo) serving a file storage ``path`` with
        ``blob-dir`` ``bdir`` (relative to the config's directory when
        ``relative``).  ``wrap(argv)``: the command line to run instead."""
        spec = StorageSpec(name="1", kind="file", path=path, blob_dir=bdir)
        cls = Server if wrap is None else _wrapped_server(wrap)
        server = cls([spec], server_toml=server_toml)
        if not hasattr(self, "_interop_servers"):
            self._interop_servers = []
        self._interop_servers.append(server)
        if relative and server.target == "zeoraid":
            spec.blob_dir = os.path.relpath(bdir, server.dir)
        server.start()
        return server

    def wait_tmp_empty(self, bdir, timeout):
        """Seconds until ``bdir``/tmp is empty (fails after ``timeout``
        with what is still there)."""
        started = time.monotonic()
        while True:
            left = tmp_files(bdir)
            if not left:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                self.fail(f"{bdir}/tmp still holds {left} "
                          f"{timeout:g} s after the transaction ended")
            time.sleep(0.02)

    def commit_blob(self, db, tm, conn, key, data):
        """root[key] = Blob(data), committed; returns (oid, tid) from the
        ``root['log']`` mapping changed in the same transaction."""
        root = conn.root()
        tm.begin()
        root[key] = ZODB.blob.Blob(data)
        log = root.setdefault("log", PersistentMapping())
        log["n"] = log.get("n", 0) + 1
        tm.commit()
        return root[key]._p_oid, root["log"]._p_serial

    def fail_commit(self, tm, conn, key, data):
        """root[key] = Blob(data) must fail to commit; returns (the
        exception, the blob's oid); the transaction is aborted."""
        root = conn.root()
        tm.begin()
        blob = ZODB.blob.Blob(data)
        root[key] = blob
        conn.add(blob)          # its oid now (an abort takes it away)
        oid = blob._p_oid
        try:
            tm.commit()
        except Exception as exc:
            tm.abort()
            return exc, oid
        self.fail(f"a {len(data)}-byte blob committed; it must fail")

    def commit_noted(self, committed, db, tm, conn, key, size):
        """commit_blob of ``content(key, size)``, its sha256 noted in
        ``committed`` ({oid_hex: {tid_hex: sha256}})."""
        data = content(key, size)
        oid, tid = self.commit_blob(db, tm, conn, key, data)
        committed.setdefault(oid_hex(oid), {})[tid_hex(tid)] = \
            sha256(data)

    # -- 1. Python -> zeoraid ------------------------------------------------

    def test_python_pair_served_by_zeoraid(self):
        pair = os.path.join(self.dir, "pair")
        expected = write_python_pair(pair)
        fs, bdir = blob_interchange.fs_path(pair), \
            blob_interchange.blob_dir(pair)
        with open(fs, "rb") as f:
            fs_before = sha256(f.read())
        server = self.file_server(fs, bdir, relative=True)
        db = self.open_db(server.addr, "cache")
        storage = db.storage

        # Current revisions, through the root.
        current = {}
        with db.transaction() as conn:
            root = conn.root()
            names = sorted(k for k in root
                           if isinstance(root[k], ZODB.blob.Blob))
            for name in names:
                blob = root[name]
                data = read_blob(blob)
                current[name] = (oid_hex(blob._p_oid),
                                 tid_hex(blob._p_serial), sha256(data),
                                 blob._p_oid)
        self.assertEqual(
            names, sorted(list(blob_interchange.SIZES) + ["hist", "late"]))
        for name, (o, t, digest, _) in current.items():
            self.assertIn(o, expected, name)
            self.assertEqual(t, max(expected[o]),
                             f"{name}: the current revision")
            self.assertEqual(digest, expected[o][t], f"{name}: bytes")

        # Every revision: iterate the storage through the client.
        found = {}
        records = 0
        for txn in storage.iterator():
            for rec in txn:
                records += 1
                if rec.data is None or \
                        not ZODB.blob.is_blob_record(rec.data):
                    continue
                found.setdefault(oid_hex(rec.oid), {})[tid_hex(txn.tid)] = \
                    file_sha256(storage.loadBlob(rec.oid, txn.tid))
        self.assertEqual(found, expected)

        # The history of hist: loadBefore, loadSerial, openCommittedBlobFile.
        hist_oid = current["hist"][3]
        h = oid_hex(hist_oid)
        tids = sorted(expected[h])
        for i, t in enumerate(tids):
            tid = ZODB.utils.p64(int(t, 16))
            data, start, end = storage.loadBefore(
                hist_oid, ZODB.utils.p64(int(t, 16) + 1))
            self.assertEqual(tid_hex(start), t)
            self.assertEqual(None if end is None else tid_hex(end),
                             tids[i + 1] if i + 1 < len(tids) else None,
                             f"hist at {t}: the end of its validity")
            self.assertTrue(ZODB.blob.is_blob_record(data))
            self.assertEqual(storage.loadSerial(hist_oid, tid), data)
            with storage.openCommittedBlobFile(hist_oid, start) as f:
                self.assertEqual(sha256(f.read()), expected[h][t],
                                 f"hist at {t}")
        # Before its oldest kept revision, hist has packed-away
        # revisions (T1, T2): they are gone, through loadBlob too.
        t1 = min(min(v) for v in expected.values())
        self.assertLess(t1, tids[0])
        with self.assertRaises(POSKeyError):
            storage.loadBlob(hist_oid, ZODB.utils.p64(int(t1, 16)))
        db.close()
        self.dbs.remove(db)
        self.stop_servers()

        # The pair is as Python left it.
        with open(fs, "rb") as f:
            self.assertEqual(sha256(f.read()), fs_before,
                             "serving the pair changed Data.fs")
        self.assertEqual(blob_files(bdir), expected)
        self.assertEqual(tmp_files(bdir), [])
        self.assertEqual(read_all_blobs_python(fs, bdir), expected)
        self.assert_fstest(fs)
        revs = sum(len(v) for v in expected.values())
        print(f"[Python pair: {revs} blob revisions of {len(expected)} "
              f"objects ({records} records iterated) read through "
              f"{server.target} with blob-dir "
              f"{server.storages[0].blob_dir!r}: "
              f"all identical; hist {len(tids)} revisions via loadBefore; "
              f"packed revision -> POSKeyError]", end=" ... ", flush=True)

    # -- 2. zeoraid -> Python ------------------------------------------------

    def test_zeoraid_pair_read_by_python(self):
        pair = os.path.join(self.dir, "zpair")
        os.makedirs(pair)
        fs = os.path.join(pair, "Data.fs")
        bdir = os.path.join(pair, "blobstorage")
        server = self.file_server(fs, bdir)
        db = self.open_db(server.addr, "cache")
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        root = conn.root()
        expected = {}
        removed = []

        def note(name, tid, data):
            expected.setdefault(oid_hex(root[name]._p_oid), {})[
                tid_hex(tid)] = sha256(data)

        def commit(note_text):
            log = root.setdefault("log", PersistentMapping())
            log["n"] = log.get("n", 0) + 1
            tm.get().note(note_text)
            tm.commit()
            return root["log"]._p_serial

        # C1: blobs of several sizes, hist and big at revision 1.
        sizes = {"empty": 0, "small": 26, "chunk_plus_one": 59001,
                 "two_chunks": 118000}
        first = {name: content(name, size) for name, size in sizes.items()}
        hist = [content("hist1", 5000)]
        big = [content("big1", 3 * 1000 * 1000 + 7)]
        tm.begin()
        for name, data in first.items():
            root[name] = ZODB.blob.Blob(data)
        root["hist"] = ZODB.blob.Blob(hist[0])
        root["big"] = ZODB.blob.Blob(big[0])
        c1 = commit("C1")
        for name, data in first.items():
            note(name, c1, data)
        note("hist", c1, hist[0])
        note("big", c1, big[0])

        def write(name, data):
            with root[name].open("w") as f:
                f.write(data)

        # C2: hist revision 2; C3: hist revision 3 and big revision 2.
        tm.begin()
        hist.append(content("hist2", 200000))
        write("hist", hist[1])
        c2 = commit("C2")
        note("hist", c2, hist[1])
        tm.begin()
        hist.append(content("hist3", 70000))
        big.append(content("big2", 3 * 1000 * 1000 + 11))
        write("hist", hist[2])
        write("big", big[1])
        c3 = commit("C3")
        note("hist", c3, hist[2])
        note("big", c3, big[1])
        time.sleep(0.2)       # room for a pack time between C3 and C4

        # C4: hist revision 4; C5: the undo of C4 (hist is revision 3).
        tm.begin()
        hist.append(content("hist4", 123))
        write("hist", hist[3])
        c4 = commit("C4")
        note("hist", c4, hist[3])
        undo_id = next(d["id"] for d in db.undoLog(0, 20)
                       if desc_matches(d, "C4"))
        tm.begin()
        db.undo(undo_id, tm.get())
        tm.get().note("C5: undo of C4")
        tm.commit()
        tm.begin()                       # see the undo
        self.assertEqual(read_blob(root["hist"]), hist[2],
                         "the undo of C4 restored hist revision 3")
        c5 = root["hist"]._p_serial
        self.assertGreater(c5, c4)
        self.assertEqual(c5, db.storage.lastTransaction())
        note("hist", c5, hist[2])
        tm.abort()

        # Pack to a time between C3 and C4: hist C1, C2 and big C1 go.
        pack_time = (TimeStamp(c3).timeTime() + TimeStamp(c4).timeTime()) / 2
        self.assertTrue(TimeStamp(c3).timeTime() < pack_time
                        < TimeStamp(c4).timeTime())
        for name, tid in (("hist", c1), ("hist", c2), ("big", c1)):
            oid = root[name]._p_oid
            removed.append((name, oid, tid))
            del expected[oid_hex(oid)][tid_hex(tid)]
        db.pack(t=pack_time)
        # A fresh client (empty blob cache) finds the packed revision gone.
        fresh = self.open_db(server.addr, "fresh-cache")
        with self.assertRaises(POSKeyError):
            fresh.storage.loadBlob(root["hist"]._p_oid, c1)
        self.assertEqual(
            file_sha256(fresh.storage.loadBlob(root["hist"]._p_oid, c3)),
            sha256(hist[2]))
        fresh.close()
        self.dbs.remove(fresh)

        # C6, after the pack: hist revision 5 and a new blob.
        tm.begin()
        hist.append(b"hist revision 5\n")
        write("hist", hist[4])
        late = content("late", 1)
        root["late"] = ZODB.blob.Blob(late)
        c6 = commit("C6")
        note("hist", c6, hist[4])
        note("late", c6, late)
        tm.abort()
        conn.close()
        db.close()
        self.dbs.remove(db)
        self.stop_servers()

        # What Python's FileStorage reads from the pair zeoraid left.
        for name, oid, tid in removed:
            path = blob_path(bdir, oid, tid)
            self.assertFalse(os.path.exists(path),
                             f"{name} at {tid_hex(tid)} was packed away "
                             f"but {path} is still there")
        self.assertEqual(tmp_files(bdir), [])
        self.assertEqual(read_all_blobs_python(fs, bdir), expected)
        self.assertEqual(blob_files(bdir), expected,
                         "the .blob files on disk are exactly those")
        self.assert_fstest(fs)
        revs = sum(len(v) for v in expected.values())
        print(f"[{revs} blob revisions of {len(expected)} objects written "
              f"through {server.target} (0 B to {len(big[1]) / 1e6:.1f} "
              f"MB, undo, pack, writes after it) read back identical by "
              f"Python's FileStorage; {len(removed)} packed revisions' "
              f"files gone; fstest clean]", end=" ... ", flush=True)

    # -- 3. kill -9 during uploads -------------------------------------------

    def test_kill_9_during_blob_uploads(self):
        fs = os.path.join(self.dir, "Data.fs")
        bdir = os.path.join(self.dir, "blobs")
        server = self.file_server(fs, bdir)
        names = [f"w{i}" for i in range(WRITERS)]
        go = _MP.Event()
        procs, lines, seed = self.start_writers(blob_writer, server.addr,
                                                names, go)
        go.set()
        started = time.monotonic()
        time.sleep(KILL_AFTER + random.uniform(0, 1.0))
        # Kill while an upload is staged (there nearly always is one).
        staged = []
        until = time.monotonic() + 2.0
        while time.monotonic() < until:
            staged = tmp_files(bdir)
            if any(size > 0 for _, size in staged):
                break
            time.sleep(0.001)
        server.proc.kill()                      # SIGKILL
        server.proc.wait(5)
        ran = time.monotonic() - started
        for proc in procs:
            proc.join(WRITER_EXIT_DEADLINE)
        alive = [p.name for p in procs if p.is_alive()]
        self.assertEqual(alive, [], "writers still running after the kill")

        acked = []
        attempted = set()
        errors = {}
        for name in names:
            for line in lines(name):
                if line == "ready":
                    continue
                if line.startswith("try "):
                    attempted.add(line.split()[1])
                    continue
                if line.startswith("error: "):
                    errors[name] = line
                    continue
                o, t, digest, size = line.split()
                acked.append((o, t, digest, int(size)))
        self.assertEqual(sorted(errors), names,
                         "each writer stopped on an error once the server "
                         f"died: {errors}")
        self.assertGreater(len(acked), 4, "commits before the kill")
        left_at_kill = tmp_files(bdir)

        server.restart()
        tmp_after = tmp_files(bdir)
        db = self.open_db(server.addr, "check-cache")
        storage = db.storage
        wrong = []
        for o, t, digest, size in acked:
            try:
                got = file_sha256(storage.loadBlob(
                    ZODB.utils.p64(int(o, 16)), ZODB.utils.p64(int(t, 16))))
            except POSKeyError as exc:
                got = f"POSKeyError {exc}"
            if got != digest:
                wrong.append((o, t, size, got))
        # The current revision of each object, as the writers last
        # acknowledged it, is what a fresh connection sees.
        last = {}
        for o, t, digest, size in acked:
            if t >= last.get(o, ("",))[0]:
                last[o] = (t, digest)
        current_wrong = []
        with db.transaction() as conn:
            for name in names:
                for key, blob in conn.root()[name].items():
                    if key == "n":
                        continue
                    blob._p_activate()
                    o = oid_hex(blob._p_oid)
                    if o in last and tid_hex(blob._p_serial) < last[o][0]:
                        current_wrong.append(
                            (name, key, tid_hex(blob._p_serial), last[o]))
        db.close()
        self.dbs.remove(db)
        self.stop_servers()
        on_disk = blob_files(bdir)
        in_fs = read_all_blobs_python(fs, bdir)
        known = {(o, t) for o, t, _, _ in acked}
        # Every blob record in Data.fs has its file, with bytes a writer
        # committed (acknowledged or not: the kill may have cut off the
        # answer of a commit that happened).
        bad_records = sorted(
            (o, t, d) for o, ts in in_fs.items() for t, d in ts.items()
            if d not in attempted)
        unacked = sorted((o, t) for o, ts in in_fs.items() for t in ts
                         if (o, t) not in known)
        # Blob files without a record in Data.fs: a vote the kill cut
        # short (FileStorage drops the unfinished transaction at open).
        orphans = sorted((o, t) for o, ts in on_disk.items() for t in ts
                         if t not in in_fs.get(o, {}))
        self.assertEqual(wrong, [], "acknowledged blobs not loadable or "
                         "not identical after the restart")
        self.assertEqual(bad_records, [], "blob records in Data.fs whose "
                         "file is missing (None) or holds bytes no writer "
                         "committed")
        self.assertEqual(current_wrong, [],
                         "objects older than their last acknowledged "
                         "revision")
        if server.target == "zeoraid":
            # (Stock ZEO leaves the uploads it was receiving in tmp/, and
            # the blob files of a transaction a crash left unfinished.)
            self.assertEqual(tmp_after, [], "tmp/ after the restart")
            self.assertEqual(tmp_files(bdir), [], "tmp/ after the stop")
            self.assertEqual(orphans, [], "blob files of a transaction "
                             "the restart discarded (nothing names them)")
        self.assert_fstest(fs)
        mb = sum(size for *_, size in acked) / 1e6
        print(f"[{len(acked)} acknowledged blob commits ({mb:.0f} MB) by "
              f"{WRITERS} writers in {ran:.1f} s; SIGKILL with "
              f"{len(staged)} uploads staged "
              f"({sum(s for _, s in staged) / 1e6:.1f} MB), "
              f"{len(left_at_kill)} files in tmp/ after the kill, "
              f"{len(tmp_after)} after the restart; seed {seed}; all "
              f"identical; {len(unacked)} committed but "
              f"unacknowledged, intact; {len(orphans)} blob files without "
              f"a Data.fs record; fstest clean]", end=" ... ", flush=True)

    # -- 4. max-blob-size ----------------------------------------------------

    def test_max_blob_size(self):
        self.zeoraid_only("max-blob-size is a zeoraid setting")
        fs = os.path.join(self.dir, "Data.fs")
        bdir = os.path.join(self.dir, "blobs")
        server = self.file_server(
            fs, bdir, server_toml=f"max-blob-size = {MAX_BLOB_SIZE}")
        db = self.open_db(server.addr, "cache")
        storage = db.storage
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        committed = {}
        ok = functools.partial(self.commit_noted, committed, db, tm, conn)

        ok("first", 1000)
        failures = []
        for key, size in (("two_mb", 2 * 1000 * 1000),
                          ("one_over", MAX_BLOB_SIZE + 1)):
            exc, oid = self.fail_commit(tm, conn, key, content(key, size))
            self.assertIn("max-blob-size", str(exc),
                          f"the error of a {size}-byte blob: {exc!r}")
            self.assertTrue(storage.is_connected(),
                            "the connection stays up")
            waited = self.wait_tmp_empty(bdir, 5.0)
            failures.append((key, size, oid, exc, waited))
            self.assertIsNotNone(oid)
            self.assertFalse(
                os.path.exists(oid_dir(bdir, oid)) and any(
                    n.endswith(".blob")
                    for n in os.listdir(oid_dir(bdir, oid))),
                f"a blob file of the failed {key} in {oid_dir(bdir, oid)}")
        ok("at_limit", MAX_BLOB_SIZE)
        ok("half_mb", 500 * 1000)
        self.assertTrue(storage.is_connected())
        # Read back through a fresh cache.
        db2 = self.open_db(server.addr, "cache2")
        with db2.transaction() as c2:
            for key, size in (("first", 1000), ("at_limit", MAX_BLOB_SIZE),
                              ("half_mb", 500 * 1000)):
                self.assertEqual(read_blob(c2.root()[key]),
                                 content(key, size), key)
            self.assertNotIn("two_mb", c2.root())
            self.assertNotIn("one_over", c2.root())
        tm.abort()
        conn.close()
        self.assertEqual(blob_files(bdir), committed,
                         "only the committed blobs have files")
        self.assertEqual(tmp_files(bdir), [])
        msg = str(failures[0][3])
        print(f"[max-blob-size {MAX_BLOB_SIZE}: 2 MB and "
              f"{MAX_BLOB_SIZE + 1} B refused at the vote "
              f"({type(failures[0][3]).__name__}: {msg[:90]!r}...), tmp/ "
              f"empty {max(f[4] for f in failures):.2f} s after; "
              f"{MAX_BLOB_SIZE} B and 500 KB then committed on the same "
              f"connection]", end=" ... ", flush=True)

    # -- 5. disk full --------------------------------------------------------

    def test_disk_full_during_a_blob_upload(self):
        self.zeoraid_only(
            "stock ZEO's server drops the connection when a storeBlobChunk "
            "cannot be written (ClientDisconnected, not an error of the "
            "vote)")
        fs = os.path.join(self.dir, "Data.fs")
        mnt = os.path.join(self.dir, "small-fs")
        os.makedirs(mnt)
        how = self.mount_tmpfs(mnt, TMPFS_SIZE)
        wrap = None
        if how is None:
            # No tmpfs: a file-size limit on the server instead (as
            # tests/file_full.rs); writes past it fail with EFBIG.
            kib = TMPFS_SIZE // 1024
            how = f"ulimit -f {kib} (no tmpfs: {self._mount_error})"

            def wrap(argv, kib=kib):
                return ["bash", "-c",
                        f'ulimit -f {kib} && exec "$0" "$@"'] + argv
        bdir = os.path.join(mnt, "blobs")
        server = self.file_server(fs, bdir, wrap=wrap)
        db = self.open_db(server.addr, "cache")
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        storage = db.storage
        committed = {}
        ok = functools.partial(self.commit_noted, committed, db, tm, conn)

        def free():
            st = os.statvfs(mnt)
            return st.f_bavail * st.f_frsize

        def assert_clean_failure(key, size):
            before = free()
            exc, oid = self.fail_commit(tm, conn, key, content(key, size))
            self.assertTrue(
                disk_full_cause(str(exc)),
                f"the error of a {size}-byte blob on a full disk names "
                f"the cause: {exc!r}")
            self.assertTrue(storage.is_connected(),
                            "the connection stays up")
            waited = self.wait_tmp_empty(bdir, 5.0)
            self.assertEqual(blob_files(bdir), committed,
                             "no file of the failed transaction")
            if wrap is None:
                # The staged file's space is really freed (not unlinked
                # and still open).
                deadline = time.monotonic() + 5.0
                while free() < before - 64 * 1024:
                    self.assertLess(
                        time.monotonic(), deadline,
                        f"free space {free()} B after the failure, "
                        f"{before} B before it")
                    time.sleep(0.05)
            return exc, waited

        ok("one", 1000 * 1000)
        exc, waited = assert_clean_failure("too_big", 6 * 1000 * 1000)
        ok("two", 1000 * 1000)         # the space came back
        filled = "no filling (a per-file limit)"
        if wrap is None:
            # Fill the disk with committed blobs until one does not fit.
            fills = 0
            while True:
                self.assertLess(fills, 8, "the tmpfs never filled up")
                try:
                    ok(f"fill{fills}", 700 * 1000)
                except Exception as e:
                    tm.abort()
                    filled_exc = e
                    break
                fills += 1
            # The failed commit left nothing; a small blob still fits.
            self.assertTrue(disk_full_cause(str(filled_exc)),
                            f"the error on a full disk: {filled_exc!r}")
            self.assertTrue(storage.is_connected())
            self.wait_tmp_empty(bdir, 5.0)
            self.assertEqual(blob_files(bdir), committed)
            ok("small_after", 50 * 1000)
            filled = (f"{fills} 700 KB blobs filled it, the next failed "
                      f"({disk_full_cause(str(filled_exc))}), 50 KB "
                      "committed after")
        db2 = self.open_db(server.addr, "cache2")
        with db2.transaction() as c2:
            got = {}
            for key, blob in c2.root().items():
                if isinstance(blob, ZODB.blob.Blob):
                    digest = sha256(read_blob(blob))    # (activates it)
                    got.setdefault(oid_hex(blob._p_oid), {})[
                        tid_hex(blob._p_serial)] = digest
        tm.abort()
        conn.close()
        self.assertEqual(got, committed)
        self.stop_servers()
        self.assertEqual(blob_files(bdir), committed)
        self.assertEqual(tmp_files(bdir), [])
        self.assert_fstest(fs)
        print(f"[{how}: a 6 MB blob failed ({type(exc).__name__}: "
              f"...{disk_full_cause(str(exc))}...), nothing left, tmp/ "
              f"empty {waited:.2f} s after"
              f"{', space back' if wrap is None else ''}; 1 MB committed "
              f"after it; {filled}; "
              f"{sum(len(v) for v in committed.values())} blobs identical, "
              f"fstest clean]", end=" ... ", flush=True)

    _mount_error = None

    def mount_tmpfs(self, mnt, size):
        """Mount a tmpfs of ``size`` bytes on ``mnt``; a description, or
        None if it cannot be mounted (then ``_mount_error`` says why)."""
        try:
            proc = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                 mnt],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except OSError as exc:           # no mount command
            self._mount_error = str(exc)
            return None
        if proc.returncode != 0:
            self._mount_error = proc.stdout.decode("utf-8", "replace").strip()
            return None
        self.mounts.append(mnt)
        # It must really be a small file system of its own.
        st = os.statvfs(mnt)
        total = st.f_blocks * st.f_frsize
        self.assertTrue(is_mount_point(mnt), "tmpfs mounted")
        self.assertLessEqual(total, size + 65536)
        return f"blob-dir on a {total // 1024} KiB tmpfs"

    # -- 6. a client killed mid-upload ---------------------------------------

    def test_client_killed_during_an_upload(self):
        self.zeoraid_only(
            "stock ZEO's server leaves the staged upload of a client that "
            "vanished in its blob tmp/ directory")
        fs = os.path.join(self.dir, "Data.fs")
        bdir = os.path.join(self.dir, "blobs")
        server = self.file_server(fs, bdir)
        status = os.path.join(self.dir, "uploader.status")
        proc = self.start_proc(big_uploader, "uploader", server.addr,
                               os.path.join(self.dir, "uploader-cache"),
                               BIG_UPLOAD, status)
        deadline = time.monotonic() + CONNECT_TIMEOUT
        seen = []
        while True:
            seen = tmp_files(bdir)
            if any(size >= STAGED_BEFORE_KILL for _, size in seen):
                os.kill(proc.pid, signal.SIGSTOP)
                break
            with open(status, "a+") as f:
                f.seek(0)
                said = f.read()
            self.assertNotIn("committed", said.replace("committing", ""),
                             "the upload finished before it could be "
                             "interrupted")
            self.assertTrue(proc.is_alive(), f"uploader exited: {said}")
            self.assertLess(time.monotonic(), deadline,
                            f"no staged upload of {STAGED_BEFORE_KILL} B "
                            f"in tmp/: {seen}")
            time.sleep(0.001)
        staged = tmp_files(bdir)
        self.assertTrue(staged, "the upload is staged while the client "
                        "is stopped")
        self.assertTrue(all(size < BIG_UPLOAD for _, size in staged),
                        f"the upload is partial: {staged}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(5)
        killed = time.monotonic()
        waited = self.wait_tmp_empty(bdir, TMP_EMPTY_DEADLINE)
        self.assertEqual(blob_files(bdir), {},
                         "no blob file from the killed upload")
        # The server serves on.
        db = self.open_db(server.addr, "cache")
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        data = content("after", 300000)
        oid, tid = self.commit_blob(db, tm, conn, "after", data)
        tm.abort()
        conn.close()
        with db.transaction() as c:
            self.assertNotIn("big", c.root())
        self.assertEqual(blob_files(bdir),
                         {oid_hex(oid): {tid_hex(tid): sha256(data)}})
        self.stop_servers()
        self.assert_fstest(fs)
        print(f"[a {BIG_UPLOAD >> 20} MB upload stopped with "
              f"{max(s for _, s in staged) / 1e6:.1f} MB staged, client "
              f"SIGKILLed: tmp/ empty {waited:.2f} s later; the server "
              f"committed a blob afterwards]", end=" ... ", flush=True)


def _wrapped_server(wrap):
    class Wrapped(Server):
        def _prepare(self):
            super()._prepare()
            self.argv = wrap(self.argv)
    return Wrapped


load_suite = harness.prepare_module(
    [BlobDurabilityTests], KNOWN_FAILURES,
    mark=zeoraid_server.target() == "zeoraid")
