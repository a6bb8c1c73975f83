"""Blob interchange with stock ZODB: a Data.fs + blob directory pair
written and read by Python's own ``ZODB.FileStorage.FileStorage``.

For tests that check zeoraid's file storage reads what ZODB writes, and
writes what ZODB reads (same Data.fs format, same bushy blob layout)::

    expected = write_python_pair(d)           # d/Data.fs + d/blobstorage
    ... zeoraid serves / copies / rewrites the pair ...
    assert read_all_blobs_python(fs_path(d), blob_dir(d)) == expected

Both functions return ``{oid_hex: {tid_hex: sha256_hex}}``: one entry per
blob revision, oid and tid as 16 lower-case hex digits (the 8 bytes, big
endian: ``ZODB.utils.u64`` in ``%016x``), the SHA-256 of the blob file's
bytes in lower-case hex.

Also what test_blob_durability and test_blob_raid share: the blob files
of a blob directory (``blob_files``, ``tmp_files``), stock client
processes that commit blobs (``child_init``, ``writer_ready``,
``change_a_blob``) and the ``BlobClientFixture`` mixin (a temporary
directory, stock ClientStorage databases and client processes, cleaned
up with the servers).

Run this file to see both on a fresh pair::

    .venv/bin/python tests/interop/blob_interchange.py [DIR]
"""

import hashlib
import json
import logging
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time

import transaction
import ZODB
import ZODB.blob
import ZODB.FileStorage
import ZODB.serialize
import ZODB.utils
from persistent.mapping import PersistentMapping
from persistent.TimeStamp import TimeStamp
from ZEO.ClientStorage import ClientStorage
from ZODB.POSException import POSKeyError

import zeoraid_server


FS_NAME = "Data.fs"
BLOB_DIR_NAME = "blobstorage"

# Blob sizes: empty, small, one byte over one ZEO chunk (ClientStorage
# sends blobs in 59000-byte chunks), exactly two chunks, and 1 MiB (not a
# multiple of the chunk size).
SIZES = {"empty": 0, "small": 26, "chunk_plus_one": 59001,
         "two_chunks": 118000, "one_mib": 1 << 20}


def fs_path(directory):
    """The Data.fs of the pair in ``directory``."""
    return os.path.join(directory, FS_NAME)


def blob_dir(directory):
    """The blob directory of the pair in ``directory``."""
    return os.path.join(directory, BLOB_DIR_NAME)


def oid_hex(oid):
    return "%016x" % ZODB.utils.u64(oid)


tid_hex = oid_hex


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def _content(label, size):
    """Deterministic bytes (so the same call gives the same files)."""
    return random.Random(f"{label}:{size}").randbytes(size)


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def _tick():
    # Distinct, increasing transaction times (FileStorage makes tids from
    # the clock; the pack time below falls between two of them).
    time.sleep(0.02)


def write_python_pair(directory):
    """Create ``directory/Data.fs`` and ``directory/blobstorage`` with
    stock ``FileStorage(path, blob_dir=...)`` and return
    ``{oid_hex: {tid_hex: sha256}}`` for every blob file that must remain.

    The history, one transaction per step:

    T1  five blobs: 0 bytes, 26 bytes, 59001 bytes, 118000 bytes, 1 MiB
        (``root['empty']`` ... ``root['one_mib']``), and ``root['hist']``
        at revision 1
    T2  ``hist`` revision 2
    T3  ``hist`` revision 3
    T4  ``hist`` revision 4
    T5  undo of T4: ``hist`` is revision 3 again (FileStorage copies the
        blob into a new file for T5)
    --  pack to a time between T3 and T4 (``pack_keep_old=False``, so no
        Data.fs.old / blobstorage.old): revisions 1 and 2 of ``hist`` (T1,
        T2) are removed, with their blob files
    T6  ``hist`` revision 5, and a new blob ``root['late']`` (59000
        bytes) written after the pack

    Remaining: the five T1 blobs at T1; ``hist`` at T3, T4, T5 (same
    bytes as T3) and T6; ``late`` at T6.  The pair is checked before
    returning: the blob files on disk and what ``read_all_blobs_python``
    finds must both be exactly that, or AssertionError.
    """
    os.makedirs(directory, exist_ok=True)
    path, bdir = fs_path(directory), blob_dir(directory)
    for leftover in (path, bdir):
        if os.path.exists(leftover):
            raise FileExistsError(f"{leftover} exists already")

    storage = ZODB.FileStorage.FileStorage(path, blob_dir=bdir,
                                           pack_keep_old=False)
    db = ZODB.DB(storage)
    expected = {}

    def note(obj, tid, data):
        # A blob revision committed in ``tid``: its bytes are ``data``.
        expected.setdefault(oid_hex(obj._p_oid), {})[tid_hex(tid)] = \
            sha256(data)

    try:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        root = conn.root()

        # T1
        contents = {name: _content(name, size)
                    for name, size in SIZES.items()}
        for name, data in contents.items():
            root[name] = ZODB.blob.Blob(data)
        hist_revs = [b"hist revision 1\n"]
        root["hist"] = ZODB.blob.Blob(hist_revs[0])
        tm.get().note("T1: five blobs and hist revision 1")
        tm.commit()
        # (A blob's _p_serial is not reliable right after a commit: the
        # committed blob is a ghost.  One writer, so the last transaction
        # is ours.)
        t1 = storage.lastTransaction()
        for name, data in contents.items():
            note(root[name], t1, data)
        hist = root["hist"]
        hist_tids = [t1]
        _tick()

        # T2, T3, T4
        for n in (2, 3, 4):
            data = b"hist revision %d\n" % n + _content(f"hist{n}", 1000 * n)
            hist_revs.append(data)
            with hist.open("w") as f:
                f.write(data)
            tm.get().note(f"T{n}: hist revision {n}")
            tm.commit()
            hist_tids.append(storage.lastTransaction())
            _tick()

        # T5: undo T4.
        t4 = hist_tids[3]
        undo_id = next(d["id"] for d in db.undoLog(0, 10)
                       if d["description"] == b"T4: hist revision 4"
                       or d["description"] == "T4: hist revision 4")
        tm5 = transaction.TransactionManager()
        db.undo(undo_id, tm5.get())
        tm5.get().note("T5: undo of T4")
        tm5.commit()
        t5 = storage.lastTransaction()
        if t5 == t4:
            raise AssertionError("the undo did not make a new transaction")
        tm.begin()   # see the undo
        with hist.open("r") as f:
            if f.read() != hist_revs[2]:
                raise AssertionError("the undo of T4 did not restore "
                                     "revision 3")
        _tick()

        # Pack between T3 and T4.
        t3 = hist_tids[2]
        pack_time = (TimeStamp(t3).timeTime()
                     + TimeStamp(t4).timeTime()) / 2
        if not TimeStamp(t3).timeTime() < pack_time \
                < TimeStamp(t4).timeTime():
            raise AssertionError("T3 and T4 are too close to pack between")
        storage.pack(pack_time, ZODB.serialize.referencesf)
        _tick()

        # T6, after the pack.
        hist_revs.append(b"hist revision 5\n")
        with hist.open("w") as f:
            f.write(hist_revs[4])
        late = _content("late", 59000)
        root["late"] = ZODB.blob.Blob(late)
        tm.get().note("T6: hist revision 5 and a new blob")
        tm.commit()
        t6 = storage.lastTransaction()
        note(root["late"], t6, late)

        h = oid_hex(hist._p_oid)
        expected[h] = {tid_hex(t3): sha256(hist_revs[2]),
                       tid_hex(t4): sha256(hist_revs[3]),
                       tid_hex(t5): sha256(hist_revs[2]),
                       tid_hex(t6): sha256(hist_revs[4])}
        conn.close()
    finally:
        db.close()

    on_disk = blob_files(bdir)
    if on_disk != expected:
        raise AssertionError(f"blob files on disk {on_disk} != expected "
                             f"{expected}")
    read = read_all_blobs_python(path, bdir)
    if read != expected:
        raise AssertionError(f"read back {read} != expected {expected}")
    return expected


def blob_files(bdir):
    """{oid_hex: {tid_hex: sha256}} of the ``.blob`` files in a bushy
    blob directory (tmp/ left out)."""
    layout = ZODB.blob.BushyLayout()
    found = {}
    for base, dirs, files in os.walk(bdir):
        dirs[:] = [d for d in dirs if d != "tmp"]
        for name in files:
            if not name.endswith(".blob"):
                continue
            full = os.path.join(base, name)
            oid = layout.path_to_oid(os.path.relpath(base, bdir))
            tid = ZODB.utils.repr_to_oid(name[:-len(".blob")])
            found.setdefault(oid_hex(oid), {})[tid_hex(tid)] = \
                file_sha256(full)
    return found


def read_all_blobs_python(fs_path, blob_dir):
    """Open the pair read-only with stock ``FileStorage(fs_path,
    blob_dir=blob_dir)`` and return ``{oid_hex: {tid_hex: sha256}}`` for
    every blob revision in its history: each data record the iterator
    yields whose data is a blob record, read through ``loadBlob(oid,
    tid)``.  A blob record whose file ``loadBlob`` cannot find maps to
    None (so a comparison with the expected dict fails on it).  Records
    without data (deletions, undone creations) are not blobs and are left
    out."""
    storage = ZODB.FileStorage.FileStorage(fs_path, blob_dir=blob_dir,
                                           read_only=True)
    found = {}
    try:
        for txn in storage.iterator():
            for record in txn:
                data = record.data
                if data is None or not ZODB.blob.is_blob_record(data):
                    continue
                try:
                    digest = file_sha256(
                        storage.loadBlob(record.oid, txn.tid))
                except POSKeyError:
                    digest = None
                found.setdefault(oid_hex(record.oid), {})[
                    tid_hex(txn.tid)] = digest
    finally:
        storage.close()
    return found


def tmp_files(bdir):
    """[(name, size)] of what is in ``bdir``'s staging directory tmp/."""
    tmp = os.path.join(bdir, "tmp")
    out = []
    try:
        names = os.listdir(tmp)
    except FileNotFoundError:
        return out
    for name in names:
        try:
            out.append((name, os.stat(os.path.join(tmp, name)).st_size))
        except FileNotFoundError:
            pass
    return sorted(out)


# ---------------------------------------------------------------------------
# Stock clients of a blob server, in the test process and in client
# processes (test_blob_durability, test_blob_raid).

CONNECT_TIMEOUT = 30          # seconds a ClientStorage waits to connect
_MP = multiprocessing.get_context("spawn")


def child_init(log_path, parent_pid):
    """First thing in a client process: it dies with the test process (and
    exits if that is gone already), and logs to ``log_path``."""
    zeoraid_server._die_with_parent()
    if os.getppid() != parent_pid:
        os._exit(1)
    logging.basicConfig(
        filename=log_path, level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] "
               "%(message)s")


def writer_ready(db, name, record, go):
    """In a writer process: a connection to ``db`` with a transaction
    manager of its own, root[name] (the writer's PersistentMapping)
    loaded; writes "ready" to ``record`` and waits until ``go`` is set
    (RuntimeError after 60 s).  Returns (the transaction manager,
    root[name])."""
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    mine = conn.root()[name]
    mine["n"]
    tm.abort()
    record.write("ready\n")
    if not go.wait(60):
        raise RuntimeError("never told to go")
    return tm, mine


def change_a_blob(tm, rng, mine, n, data):
    """A writer's next transaction, begun on ``tm`` and not committed: a
    new blob ``mine[f"b{n}"]`` holding ``data`` (while ``mine`` has fewer
    than 3 blobs, else 40% of the time) or ``data`` as the next revision
    of one of ``mine``'s blobs, picked by ``rng``; ``mine["n"] = n``, so
    once committed the mapping's _p_serial is the transaction's tid.
    Returns the blob."""
    tm.begin()
    keys = [k for k in mine if k != "n"]
    if len(keys) < 3 or rng.random() < 0.4:
        blob = ZODB.blob.Blob(data)
        mine[f"b{n}"] = blob
    else:
        blob = mine[rng.choice(keys)]
        with blob.open("w") as f:
            f.write(data)
    mine["n"] = n
    return blob


class BlobClientFixture(zeoraid_server.ServerFixture):
    """Mixin for unittest.TestCase: a temporary directory ``self.dir`` for
    the blob caches and the client processes' files; stock ClientStorage
    databases (``open_db``) and client processes (``start_proc``,
    ``start_writers``) that tearDown closes and kills before it stops the
    servers; the tails of the client processes' files offered with the
    servers' logs."""

    dir_prefix = "zeoraid-blobs-"
    # The files in self.dir that interop_logs shows, by their ending.
    client_files = (".log", ".acked")

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix=self.dir_prefix)
        self.dbs = []
        self.procs = []

    def tearDown(self):
        for db in self.dbs:
            try:
                db.close()
            except Exception:
                pass
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
            proc.join(5)
        self.stop_servers()

    def interop_logs(self):
        logs = super().interop_logs()
        log_dir = getattr(self, "dir", None)
        if log_dir and os.path.isdir(log_dir):
            for name in sorted(os.listdir(log_dir)):
                if name.endswith(self.client_files):
                    with open(os.path.join(log_dir, name), "rb") as f:
                        text = f.read()[-6000:].decode("utf-8", "replace")
                    logs.append((f"client file {name}", text))
        return logs

    def interop_cleanup(self):
        super().interop_cleanup()
        if hasattr(self, "dir"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def open_db(self, addr, cache_name):
        storage = ClientStorage(addr, blob_dir=os.path.join(self.dir,
                                                            cache_name),
                                wait_timeout=CONNECT_TIMEOUT)
        db = ZODB.DB(storage)
        self.dbs.append(db)
        return db

    def close_db(self, db):
        db.close()
        self.dbs.remove(db)

    def start_proc(self, target, name, *args):
        """``target(name, log_path, parent_pid, *args)`` in a client
        process (log_path: ``self.dir/NAME.log``)."""
        log_path = os.path.join(self.dir, f"{name}.log")
        proc = _MP.Process(target=target, name=name, daemon=True,
                           args=(name, log_path, os.getpid()) + args)
        proc.start()
        self.procs.append(proc)
        return proc

    def start_writers(self, target, addr, names, *events):
        """A writer process for each of ``names``: root[name] =
        PersistentMapping(n=0) is committed through ``addr``, then
        ``target(name, log_path, parent_pid, addr, cache_dir, record_path,
        seed + i, *events)`` is started (cache_dir ``self.dir/NAME-cache``,
        record_path ``self.dir/NAME.acked``, ``seed`` random) and each has
        written "ready" to its record (the test fails if one exits first
        or they are not all ready within CONNECT_TIMEOUT).  Returns
        (procs, lines, seed): ``lines(name)``, the lines of name's record
        so far."""
        db = self.open_db(addr, "setup-cache")
        with db.transaction() as conn:
            for name in names:
                conn.root()[name] = PersistentMapping(n=0)
        self.close_db(db)

        records = {name: os.path.join(self.dir, f"{name}.acked")
                   for name in names}
        seed = random.randrange(1 << 30)
        procs = [self.start_proc(target, name, addr,
                                 os.path.join(self.dir, f"{name}-cache"),
                                 records[name], seed + i, *events)
                 for i, name in enumerate(names)]

        def lines(name):
            try:
                with open(records[name]) as f:
                    return f.read().splitlines()
            except FileNotFoundError:
                return []

        deadline = time.monotonic() + CONNECT_TIMEOUT
        while not all("ready" in lines(n) for n in names):
            for name, proc in zip(names, procs):
                self.assertTrue(proc.is_alive() or "ready" in lines(name),
                                f"writer {name} exited: {lines(name)}")
            self.assertLess(time.monotonic(), deadline,
                            "writers not connected in time")
            time.sleep(0.05)
        return procs, lines, seed


def main(argv):
    import tempfile
    directory = argv[1] if len(argv) > 1 else tempfile.mkdtemp(
        prefix="blob-interchange-")
    expected = write_python_pair(directory)
    read = read_all_blobs_python(fs_path(directory), blob_dir(directory))
    print(f"pair: {fs_path(directory)} + {blob_dir(directory)}")
    print("write_python_pair:")
    print(json.dumps(expected, indent=2, sort_keys=True))
    print("read_all_blobs_python:")
    print(json.dumps(read, indent=2, sort_keys=True))
    print("equal:", read == expected)
    return 0 if read == expected else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
