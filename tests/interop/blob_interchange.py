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

Run this file to see both on a fresh pair::

    .venv/bin/python tests/interop/blob_interchange.py [DIR]
"""

import hashlib
import json
import os
import random
import sys
import time

import transaction
import ZODB
import ZODB.blob
import ZODB.FileStorage
import ZODB.serialize
import ZODB.utils
from persistent.TimeStamp import TimeStamp
from ZODB.POSException import POSKeyError


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


def _file_sha256(path):
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

    on_disk = _blob_files(bdir)
    if on_disk != expected:
        raise AssertionError(f"blob files on disk {on_disk} != expected "
                             f"{expected}")
    read = read_all_blobs_python(path, bdir)
    if read != expected:
        raise AssertionError(f"read back {read} != expected {expected}")
    return expected


def _blob_files(bdir):
    """{oid_hex: {tid_hex: sha256}} of the ``.blob`` files in a bushy
    blob directory."""
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
                _file_sha256(full)
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
                    digest = _file_sha256(
                        storage.loadBlob(record.oid, txn.tid))
                except POSKeyError:
                    digest = None
                found.setdefault(oid_hex(record.oid), {})[
                    tid_hex(txn.tid)] = digest
    finally:
        storage.close()
    return found


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
