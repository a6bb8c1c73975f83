"""ZODB blobs through stock ZEO against zeoraid, as ZEO tests its own server.

Three parts, each the arrangement of ``ZEO/tests/testZEO.py`` with
zeoraid standing where ZEO's forked ``runzeo`` stands:

1. **ZODB's generic blob suite**, ``ZODB.tests.testblob.
   storage_reusable_suite(prefix, factory)``, with the flags ZEO's
   ``test_suite`` passes -- none, i.e. the defaults
   ``test_blob_storage_recovery=False`` (``ClientStorage`` has no
   ``restoreBlob``, so it is not ``IBlobStorageRestoreable``),
   ``test_packing=False`` (``blob_packing.txt`` fakes ``time.time`` in the
   client and reads the server's files through ``fshelper``) and
   ``test_undo=True``.  That is ``blob_connection.txt``,
   ``blob_importexport.txt``, ``blob_transaction.txt``, the docstring tests
   of ``ZODB.tests.testblob`` (``test_blob_file_permissions``,
   ``loadblob_tmpstore``, ``savepoint_isolation``, ...) and
   ``BlobUndoTests``.  The factory is ZEO's ``ServerManagingClientStorage``:
   every storage a test creates starts its own server and a stock
   ``ClientStorage`` to it, and closing the client stops the server.  Four
   targets, each one prefix (in every test id):

   ``FileNonSharedBlobs``
       ``kind = "file"`` with ``blob-dir = "server-NAME"``; the client has
       its own blob cache (``blob_dir=NAME``): blobs travel over the
       protocol (storeBlobStart/Chunk/End, sendBlob).
   ``FileSharedBlobs``
       ``kind = "file"`` with ``blob-dir = NAME``, and the client opened
       with ``blob_dir=NAME, shared_blob_dir=True``: the same directory on
       the same host (storeBlobShared; the client reads the server's files).
   ``MemoryNonSharedBlobs``
       ``kind = "memory"`` with no ``blob-dir`` key: the server keeps its
       blobs in a temporary directory of its own.
   ``MemorySharedBlobs``
       ``kind = "memory"`` with ``blob-dir = NAME`` shared with the client.

   and three arrays, non-shared (``REUSABLE_TARGETS``): over two file
   backends, over two runzeo and over two default-config runzeo (the
   pickle flavour, ``RaidRunzeoPickle2NonSharedBlobs``).

   zope.testrunner runs the suite in its ``MonotonicallyIncreasing
   TimeMinimalTestLayer``; plain unittest ignores layers, so each test is
   wrapped in the layer's ``testSetUp``/``testTearDown`` (``time.time`` in
   this process increases by at least a second per call, as under ZEO's
   own run).  The layer's ``setUp`` only changes into a temporary
   directory, which every test's own setUp does again, so it is left out.

2. **ZEO's own blob test classes** against ``kind = "file"`` with
   ``blob-dir``: ``CommonBlobTests`` (checkStoreBlob,
   checkStoreBlob_wrong_partition, checkLoadBlob, checkTemporaryDirectory,
   checkTransactionBufferCleanup) non-shared (``FileNonSharedCommonBlob
   Tests``, which also has ``BlobAdaptedFileStorageTests.
   checkStoreAndLoadBlob``: 1 MB stored, found in the client cache and in
   the server's ``blobs/`` in the bushy layout, deleted from the cache and
   loaded back by ten threads at once) and shared (``FileSharedCommonBlob
   Tests``, ZEO's ``BlobWritableCacheTests``; as there, without
   checkStoreAndLoadBlob, which deletes the committed file and so cannot
   pass on a shared directory).  Paths as in ZEO: ``Data.fs``, the server's
   ``blobs`` and the client's ``blob_cache`` in the test's working
   directory.  ZEO's classes also re-run its whole generic suite on the
   blob storage; test_conformance runs that suite against zeoraid already,
   so only the blob tests are here (it would also not fit the module
   time budget).

3. **ZEO's blob doctests that start a server of their own**, given a
   ``start_server(path=..., blob_dir=...)`` that starts zeoraid:
   ``zeo_blob_cache.test`` (blob cache size limits, eleven clients at once),
   testZEO's ``gracefully_handle_abort_while_storing_many_blobs``, and
   ``IExternalGC.test`` through ZEO's
   ``ServerManagingClientStorageForIExternalGCTest`` (``pack-gc = false``,
   deleteObject of a blob, then pack removes it).

Running as root.  ``blob_transaction.txt`` checks that a committed blob
file cannot be opened for writing::

    >>> try:
    ...     open(blob.committed(), 'w') # doctest: +ELLIPSIS
    ... except PermissionError:
    ...     print('Error raised.')
    Error raised.

Committed blob files are mode 0444; root bypasses file permissions, so the
open succeeds, prints the file object instead, and -- because mode 'w'
truncates -- empties the committed blob, so a second example fails too:
line 403, ``open(blob_storage.loadBlob(blob._p_oid, oldserial))`` after
the tpc_abort, reads ``''`` instead of ``"I'm a happy blob."``.  Both fail
the same way with stock ZODB's own FileStorage and with stock runzeo when
the tests run as root, whichever server, so they say nothing about the
server.  When this process runs as root (euid 0), only the first example
(line 367, the one that writes) is removed from each copy of
``blob_transaction.txt`` (see ``ROOT_EXCLUDED_EXAMPLES``); the second is
then a real check again (the abort left the committed blob intact) and
stays.  Nothing else is excluded.  As another user the file runs whole.

KNOWN_FAILURES: as in the other modules (test name -> reason; listed tests
run as expected failures, an unexpected pass fails the run, a name that
matches no test is an error), keyed by method name, ``Class.method``, or a
test id (doctests: ``FileSharedBlobs.blob_transaction.txt``).

Run it::

    ZEORAID_BIN=target/debug/zeoraid .venv/bin/python tests/interop/run.py test_blobs
    ZEORAID_BIN=target/debug/zeoraid .venv/bin/python tests/interop/run.py test_blobs -k FileSharedBlobs
    ZEORAID_INTEROP_TARGET=runzeo .venv/bin/python tests/interop/run.py test_blobs
"""

import doctest
import os
import re
import unittest

import ZEO.ClientStorage
import ZEO.tests.testZEO as testZEO
import ZODB.tests.testblob
import ZODB.tests.util
import zope.testing.setupstack
from ZEO.ClientStorage import ClientStorage
from ZEO.tests import forker
from ZODB.tests import PackableStorage
from zope.testing import renormalizing

import harness
import zeoraid_server
from test_conformance import DummyDB
from test_conformance import ZEOServerTestBase
from zeoraid_server import HarnessError
from zeoraid_server import ServerFixture
from zeoraid_server import StorageSpec


# Test -> why zeoraid fails it.  Keys: a method name, "Class.method", or a
# test id as printed by the runner (doctests).
KNOWN_FAILURES = {}

# Examples left out when this process runs as root: (doctest name, a
# substring of the example's source) -> why.  Each must match exactly one
# example of each copy of that doctest, or loading fails.
ROOT_EXCLUDED_EXAMPLES = {
    ("blob_transaction.txt", "open(blob.committed(), 'w')"):
        "expects PermissionError opening a committed (0444) blob file for "
        "writing; root is not refused, and the open truncates the blob",
}

# The targets of part 1: (prefix, storage kind, shared blob directory).
REUSABLE_TARGETS = [
    ("FileNonSharedBlobs", "file", False),
    ("FileSharedBlobs", "file", True),
    ("MemoryNonSharedBlobs", "memory", False),
    ("MemorySharedBlobs", "memory", True),
    # Arrays (clients of an array do not share its backends' directories):
    # over two file backends with blob-dir, and over two Python runzeo
    # servers with blob-dir (zeoraid streams blobs to them and caches what
    # it loads).
    ("RaidFile2NonSharedBlobs", "raid:file2", False),
    ("RaidRunzeo2NonSharedBlobs", "raid:runzeo2", False),
    # ... and over two runzeo of runzeo's default config (pickle).
    ("RaidRunzeoPickle2NonSharedBlobs", "raid:runzeo-pickle2", False),
]

# Seconds a ClientStorage waits for its first connection (ZEO's default is
# forever; the per-test timeout would then be the only bound).
CONNECT_TIMEOUT = 30


# ---------------------------------------------------------------------------
# Servers started from inside ZODB's and ZEO's tests


class _TestServers(ServerFixture):
    """The servers one test started (for stop, logs and cleanup)."""

    def stop_quietly(self):
        """Stop them all now (graceful exit checked later, by
        stop_servers)."""
        for server in getattr(self, "_interop_servers", []):
            try:
                server.stop()
            except Exception:
                server._kill_quietly()

    def stop_servers(self):
        """ServerFixture.stop_servers, leaving out servers that never
        listened (their start already failed the test, with the reason)."""
        super().stop_servers(listening_only=True)


# The running test's servers: create_storage and start_server, called
# from ZODB's and ZEO's test code, register theirs here.
_active = None


def _servers():
    if _active is None:
        raise HarnessError("a server was requested outside a running test")
    return _active


def _server_blob_dir(kind, shared, blob_dir):
    """The server's blob-dir key for a client whose blob_dir is
    ``blob_dir`` (None: no key)."""
    if shared:
        return os.path.abspath(blob_dir)
    if kind == "memory" and zeoraid_server.target() == "zeoraid":
        # zeoraid's memory storage has blobs without any key.  (runzeo
        # serves "memory" as a FileStorage, which needs a blob-dir.)
        return None
    return os.path.abspath("server-" + blob_dir)


class ZeoraidClientStorage(ClientStorage):
    """ZEO's ``ServerManagingClientStorage`` with a zeoraid server: a
    ClientStorage that starts its own server, and stops it on close.

    As in ZEO: a non-shared client caches blobs in ``blob_dir`` and the
    server keeps them in ``server-<blob_dir>``; a shared client's
    ``blob_dir`` is the server's blob directory.  ``<name>.fs`` is the
    Data.fs of a file storage.  Paths are relative to the test's working
    directory."""

    def __init__(self, name, blob_dir, shared=False, kind="file",
                 pack_gc=None):
        if kind.startswith("raid:"):
            spec = StorageSpec(
                name="1", kind="raid",
                backends=zeoraid_server.RAID_LAYOUTS[kind[len("raid:"):]],
                backend_blobs=True)
        else:
            spec = StorageSpec(
                name="1", kind=kind,
                path=os.path.abspath(f"{name}.fs") if kind == "file" else None,
                blob_dir=_server_blob_dir(kind, shared, blob_dir),
                pack_gc=pack_gc)
        self._interop_server = _servers().start_server([spec])
        ClientStorage.__init__(
            self, self._interop_server.addr, blob_dir=blob_dir,
            shared_blob_dir=shared, wait_timeout=CONNECT_TIMEOUT)

    def close(self):
        try:
            ClientStorage.close(self)
        finally:
            self._interop_server.stop()


class ZeoraidClientStorageForIExternalGCTest(ZeoraidClientStorage):
    """ZEO's ``ServerManagingClientStorageForIExternalGCTest``."""

    def pack(self, t=None, referencesf=None):
        ZeoraidClientStorage.pack(self, t, referencesf, wait=True)
        # Packing doesn't clear old versions out of zeo client caches,
        # so we'll clear the caches.
        self._cache.clear()
        ZEO.ClientStorage._check_blob_cache_size(self.blob_dir, 0)


def _forker_setUp(test):
    """ZEO's ``forker.setUp`` with a ``start_server`` that starts zeoraid
    (a file storage at ``path``, with ``blob_dir`` if given)."""
    ZODB.tests.util.setUp(test)

    def start_server(storage_conf=None, zeo_conf=None, port=None,
                     keep=False, addr=None, path="Data.fs", protocol=None,
                     blob_dir=None, suicide=True, debug=False, **kw):
        if storage_conf or zeo_conf or port or addr or keep or protocol \
                or kw:
            raise HarnessError("start_server: only path and blob_dir are "
                               "supported against zeoraid")
        server = _servers().start_server([StorageSpec(
            name="1", kind="file", path=os.path.abspath(path),
            blob_dir=os.path.abspath(blob_dir) if blob_dir else None)])
        return server.addr, server.stop

    test.globs["start_server"] = start_server
    test.globs["stop_server"] = lambda stop: stop()
    test.globs["wait_until"] = forker.wait_until
    test.globs["wait_connected"] = forker.wait_connected
    test.globs["wait_disconnected"] = forker.wait_disconnected


# testZEO.test_suite's output normalization for its doctests.
ZEO_DOCTEST_CHECKER = renormalizing.RENormalizing([
    (re.compile(r"'start': '[^\n]+'"), 'start'),
    (re.compile(r"'last-transaction': '[0-9a-f]+'"), 'last-transaction'),
    (re.compile("ZODB.POSException.ConflictError"), "ConflictError"),
    (re.compile("ZODB.POSException.POSKeyError"), "POSKeyError"),
    (re.compile("ZEO.Exceptions.ClientStorageError"), "ClientStorageError"),
    (re.compile("ZEO.Exceptions.ClientDisconnected"), "ClientDisconnected"),
    (re.compile(r"\[Errno \d+\]"), '[Errno N]'),
    (re.compile(r"loads=\d+\.\d+"), 'loads=42.42'),
])


# ---------------------------------------------------------------------------
# Part 2: ZEO's blob test classes


class BlobServerTestBase(ZEOServerTestBase):
    """testZEO's GenericTestBase with CommonBlobTests' configuration: a
    file storage (``Data.fs``, blob-dir ``blobs``) and a ClientStorage with
    ``blob_dir=self.blob_cache_dir``, all in the test's directory."""

    blobdir = "blobs"
    blob_cache_dir = "blob_cache"
    shared_blob_dir = False

    def _start(self):
        return self.start_server([StorageSpec(
            name="1", kind="file", path=os.path.abspath("Data.fs"),
            blob_dir=os.path.abspath(self.blobdir))])

    def _open_client(self, server):
        # testZEO's GenericTestBase.setUp, word for word.
        self._storage = ClientStorage(
            server.addr, '1', cache_size=20000000,
            min_disconnect_poll=0.5, wait=1,
            wait_timeout=60, blob_dir=self.blob_cache_dir,
            shared_blob_dir=self.shared_blob_dir)
        self._storage.registerDB(DummyDB())

    def tearDown(self):
        # The client, then the server (as testZEO), before ZODB's tearDown
        # removes the directory holding the server's files.
        try:
            self._close()
            for server in getattr(self, "_interop_servers", []):
                server.stop()
        finally:
            super().tearDown()


class FileNonSharedCommonBlobTests(BlobServerTestBase,
                                   testZEO.CommonBlobTests):
    """testZEO's BlobAdaptedFileStorageTests (its blob tests)."""

    checkStoreAndLoadBlob = \
        testZEO.BlobAdaptedFileStorageTests.checkStoreAndLoadBlob


class FileSharedCommonBlobTests(BlobServerTestBase,
                                testZEO.CommonBlobTests):
    """testZEO's BlobWritableCacheTests (its blob tests): the client's blob
    directory is the server's."""

    blob_cache_dir = "blobs"
    shared_blob_dir = True


TEST_CLASSES = [FileNonSharedCommonBlobTests, FileSharedCommonBlobTests]


# ---------------------------------------------------------------------------
# Assembling the suite


def _flatten(suite):
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            yield from _flatten(test)
        else:
            yield test


def _exclude_root_examples(case):
    """Drop ROOT_EXCLUDED_EXAMPLES from a doctest case when running as
    root."""
    if os.geteuid() != 0:
        return
    dt = getattr(case, "_dt_test", None)
    if dt is None:
        return
    for (name, needle), _reason in ROOT_EXCLUDED_EXAMPLES.items():
        if dt.name != name:
            continue
        kept = [ex for ex in dt.examples if needle not in ex.source]
        if len(kept) != len(dt.examples) - 1:
            raise ValueError(
                f"ROOT_EXCLUDED_EXAMPLES: {needle!r} matches "
                f"{len(dt.examples) - len(kept)} examples of {name}, "
                "expected exactly one")
        dt.examples = kept


class _TimeoutAwareRunner(doctest.DocTestRunner):
    """doctest's runner, except that after the runner's per-test timeout
    (harness.TestTimeout, which doctest reports as the example's
    exception) the remaining examples are skipped: each would otherwise
    wait out the harness's grace period again until its backstop ends the
    whole module."""

    def report_unexpected_exception(self, out, test, example, exc_info):
        super().report_unexpected_exception(out, test, example, exc_info)
        if issubclass(exc_info[0], harness.TestTimeout):
            out("(the harness timed this test out: the remaining examples "
                "are skipped)\n")
            for later in test.examples:
                later.options[doctest.SKIP] = True


def _run_doctest_stopping_at_timeout(run_test):
    def runTest():
        saved = doctest.DocTestRunner
        doctest.DocTestRunner = _TimeoutAwareRunner
        try:
            return run_test()
        finally:
            doctest.DocTestRunner = saved
    return runTest


def _instrument(case, prefix=None, time_layer=None):
    """Give a test built by ZODB's or ZEO's suite functions what the
    runner expects: a unique id (``prefix.`` + the doctest name), the
    servers it starts stopped and checked after it (before its temporary
    directory is removed), their logs on failure, and the per-test part of
    its zope.testrunner layer."""
    fixture = _TestServers()
    orig_setUp, orig_tearDown = case.setUp, case.tearDown

    if prefix is not None and hasattr(case, "_dt_test"):
        test_id = f"{prefix}.{case._dt_test.name}"
        case.id = lambda: test_id

    def finish():
        global _active
        if time_layer is not None:
            time_layer.testTearDown()
        _active = None

    def setUp():
        global _active
        _active = fixture
        if time_layer is not None:
            time_layer.testSetUp()
        try:
            orig_setUp()
        except BaseException:
            # unittest skips tearDown when setUp fails.
            fixture.stop_quietly()
            try:
                orig_tearDown()
            except Exception:
                pass
            finish()
            raise

    def tearDown():
        try:
            fixture.stop_quietly()
            orig_tearDown()
        finally:
            finish()
            fixture.stop_servers()   # raises if one did not exit cleanly

    case.setUp = setUp
    case.tearDown = tearDown
    if isinstance(case, doctest.DocTestCase):
        case.runTest = _run_doctest_stopping_at_timeout(case.runTest)
    case.interop_logs = fixture.interop_logs
    case.interop_cleanup = fixture.interop_cleanup
    return case


def _reusable_tests(prefix, kind, shared):
    """Part 1 for one target: ZODB's storage_reusable_suite, with the
    flags ZEO's test_suite passes (none)."""

    def factory(name, blob_dir):
        return ZeoraidClientStorage(name, blob_dir, shared=shared, kind=kind)

    suite = ZODB.tests.testblob.storage_reusable_suite(prefix, factory)
    layer = suite.layer   # MonotonicallyIncreasingTimeMinimalTestLayer
    tests = []
    for case in _flatten(suite):
        _exclude_root_examples(case)
        tests.append(_instrument(case, prefix, layer))
    return tests


def _zeo_doctests():
    """Part 3: ZEO's blob doctests that start their own server."""
    tests = []
    suite = doctest.DocFileSuite(
        "zeo_blob_cache.test", package="ZEO.tests",
        setUp=_forker_setUp, tearDown=zope.testing.setupstack.tearDown,
        checker=ZEO_DOCTEST_CHECKER)
    tests += list(_flatten(suite))
    finder = doctest.DocTestFinder()
    func = testZEO.gracefully_handle_abort_while_storing_many_blobs
    for dt in finder.find(func, f"testZEO.{func.__name__}", module=testZEO,
                          globs=vars(testZEO).copy()):
        tests.append(doctest.DocTestCase(
            dt, setUp=_forker_setUp,
            tearDown=zope.testing.setupstack.tearDown,
            checker=ZEO_DOCTEST_CHECKER))
    suite = PackableStorage.IExternalGC_suite(
        lambda: ZeoraidClientStorageForIExternalGCTest(
            "data.fs", "blobs", pack_gc=False))
    tests += list(_flatten(suite))
    return [_instrument(case, "ZEOBlobDoctests") for case in tests]


def _all_tests():
    tests = []
    for prefix, kind, shared in REUSABLE_TARGETS:
        tests += _reusable_tests(prefix, kind, shared)
    for cls in TEST_CLASSES:
        tests += list(harness.load_class(cls))
    tests += _zeo_doctests()
    return tests


def _mark_known_failures(tests, known, mark):
    """KNOWN_FAILURES on test instances (the generated classes of part 1
    and the doctests exist only once the suite is built)."""
    matched = set()
    for case in tests:
        name = case._testMethodName
        keys = (case.id(), f"{type(case).__name__}.{name}", name)
        key = next((k for k in keys if k in known), None)
        if key is None:
            continue
        matched.add(key)
        if not mark:
            continue
        method = getattr(case, name)

        def wrapper(*args, _method=method, **kwargs):
            return _method(*args, **kwargs)
        wrapper.known_failure_reason = known[key]
        wrapper.__unittest_expecting_failure__ = True
        setattr(case, name, wrapper)
    missing = sorted(set(known) - matched)
    if missing:
        raise ValueError(f"KNOWN_FAILURES names {', '.join(missing)}, "
                         "which match no test of test_blobs")


for _cls in TEST_CLASSES:
    harness.skip_long_tests(_cls)


def load_suite(name_filter=None):
    """All tests of the module, in a fixed order."""
    tests = _all_tests()
    _mark_known_failures(tests, KNOWN_FAILURES,
                         mark=zeoraid_server.target() == "zeoraid")
    suite = unittest.TestSuite()
    for case in tests:
        if name_filter and not any(f in case.id() for f in name_filter):
            continue
        suite.addTest(case)
    return suite
