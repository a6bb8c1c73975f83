"""The RAID array under the load of stock ZODB clients (issue #7).

Writers are separate OS processes running unmodified ``ZEO.DB`` clients
against a zeoraid array (the worker machinery of test_hot_objects).  What
is checked:

* ``test_kill_9_of_a_runzeo_backend_under_load``: three stock Python
  ``runzeo`` backends; four writer processes commit as fast as they can;
  one backend is killed with SIGKILL in the middle.  No writer sees any
  error; the array reports the backend degraded with a reason; every
  commit a writer was told succeeded is on both surviving backends (read
  through ZEO clients of the backends themselves), and the survivors'
  histories are identical, transaction by transaction and record by record.
* ``test_a_backend_that_swallows_traffic``: one backend sits behind a proxy
  that, at some point, keeps accepting bytes and answers nothing.  The
  array degrades it within ``backend-timeout`` and the writer goes on with
  no error.
* ``test_each_client_hears_each_transaction_once``: three backends, two
  stock clients: each transaction one commits reaches the other exactly
  once, with its tid and oids, however many backends stored it.

zeoraid only (runzeo has no arrays): skipped under
ZEORAID_INTEROP_TARGET=runzeo.
"""

import json
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
import traceback
import unittest

import ZEO
from persistent.mapping import PersistentMapping

import harness
import zeoraid_server
from test_hot_objects import (CONNECT_DEADLINE, RUN_DEADLINE, Workers, _MP,
                              _commit_retrying, _connect, _finish,
                              _new_outcome, _read, _worker_init, _write)
from test_invalidations import Client
from zeoraid_server import ServerFixture
from zeoraid_server import StorageSpec


KNOWN_FAILURES = {}

WRITERS = 4
BACKEND_TIMEOUT = 2.0


def keyed_writer(name, results, log_path, parent_pid, addr, go, stop):
    """Until ``stop``: store a new key in root[name] per transaction and
    report each acknowledged (key, value) as ("acked", name, pair)."""
    _worker_init(log_path, parent_pid)
    outcome = _new_outcome(name)
    db = tm = None
    try:
        db, tm, conn = _connect(addr)
        conn.root()[name]          # created by the test: ready to go
        tm.abort()
        results.put(("ready", name, None))
        if not go.wait(CONNECT_DEADLINE + RUN_DEADLINE):
            raise RuntimeError("never told to go")
        i = 0
        while not stop.is_set():
            key, value = f"k{i}", f"{name} commit {i}"
            _commit_retrying(
                tm, lambda: conn.root()[name].__setitem__(key, value),
                outcome)
            outcome["committed"] += 1
            results.put(("acked", name, (key, value)))
            i += 1
    except BaseException:
        outcome["error"] = traceback.format_exc()
    _finish(results, name, outcome, db, tm)


def ruok(addr):
    """The server's status document (the ``ruok`` probe)."""
    with socket.create_connection(addr, timeout=10) as s:
        def frame():
            size = struct.unpack(">I", _exactly(s, 4))[0]
            return _exactly(s, size)
        frame()   # the protocol announcement
        s.sendall(struct.pack(">I", 4) + b"ruok")
        return json.loads(frame())


def _exactly(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def history(addr):
    """[(tid, status, [(oid, data), ...]), ...] through a stock client."""
    from ZEO.ClientStorage import ClientStorage
    storage = ClientStorage(addr, wait_timeout=30, read_only=True)
    try:
        out = []
        for txn in storage.iterator():
            out.append((txn.tid, txn.status,
                        [(r.oid, r.data) for r in txn]))
        return out
    finally:
        storage.close()


class SwallowingProxy:
    """A TCP proxy to ``target`` that forwards both ways until
    ``swallow()``; from then on it reads everything and answers nothing
    (a backend that accepts connections and never replies)."""

    def __init__(self, target):
        self.target = target
        self.swallowing = threading.Event()
        self.closed = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.addr = self.listener.getsockname()
        self.threads = []
        self._spawn(self._accept)

    def _spawn(self, fn, *args):
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self.threads.append(t)

    def _accept(self):
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=10)
            for s in (client, upstream):
                s.settimeout(0.2)
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    def _pump(self, src, dst):
        while not self.closed.is_set():
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            if self.swallowing.is_set():
                continue
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass

    def swallow(self):
        self.swallowing.set()

    def close(self):
        self.closed.set()
        self.listener.close()
        for t in self.threads:
            t.join(2)


class WritersFixture(ServerFixture):
    """Arrays under stock writer processes: zeoraid only, a log dir for
    the writers, cleanups run in reverse, servers stopped (shared with
    test_recovery)."""

    log_prefix = "zeoraid-raid-"

    def setUp(self):
        if zeoraid_server.target() != "zeoraid":
            self.skipTest("RAID arrays are a zeoraid feature")
        self.log_dir = tempfile.mkdtemp(prefix=self.log_prefix)
        self.workers = Workers(self.log_dir)
        self.cleanups = []

    def tearDown(self):
        try:
            self.workers.close()
            for c in reversed(self.cleanups):
                c()
        finally:
            self.stop_servers()

    def interop_logs(self):
        workers = getattr(self, "workers", None)
        return super().interop_logs() + (workers.logs() if workers else [])

    def interop_cleanup(self):
        super().interop_cleanup()
        if hasattr(self, "log_dir"):       # not when setUp skipped
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def backend_state(self, server, i):
        doc = ruok(server.addr)["1"]["raid"]
        b = doc["backends"][i]
        return b["state"], b["reason"], doc

    def wait_until(self, what, pred, timeout=15.0):
        deadline = time.monotonic() + timeout
        while not pred():
            self.assertLess(time.monotonic(), deadline,
                            f"timed out waiting until {what}")
            time.sleep(0.05)

    # What each writer's keys go into: a PersistentMapping here (small
    # runs); test_recovery uses an OOBTree, so each transaction stays a
    # bucket however long the writers run.
    writer_container = PersistentMapping

    def start_writers(self, addr, count, go=None):
        """``count`` keyed writers on ``addr``, each with its own container
        in the root.  With ``go`` (an Event of _MP) they connect and wait
        until it is set; without, they start at once."""
        later = go is not None
        go, stop = go or _MP.Event(), _MP.Event()
        names = [f"w{i}" for i in range(count)]

        def create(root):
            for name in names:
                root[name] = self.writer_container()
        _write(addr, create)
        for name in names:
            self.workers.start(name, keyed_writer, addr, go, stop)
        self.workers.wait_for("ready", names,
                              time.monotonic() + CONNECT_DEADLINE,
                              "connecting")
        if not later:
            go.set()
        return names, stop

    def acked(self):
        # Take in whatever the writers reported so far.
        while self.workers._receive(0.01) is not None:
            pass
        return [(name, pair) for kind, name, pair in self.workers.messages
                if kind == "acked"]

    def finish_writers(self, names, stop):
        stop.set()
        done = self.workers.wait_for("done", names,
                                     time.monotonic() + RUN_DEADLINE,
                                     "stopping", fail_on_done=False)
        failed = sorted(n for n, o in done.items() if o["error"])
        if failed:
            self.fail(f"{len(failed)} writers saw errors; the first:\n"
                      f"{self.workers.describe(failed[:1])}")
        return done


class RaidLoadTests(WritersFixture, unittest.TestCase):

    def test_kill_9_of_a_runzeo_backend_under_load(self):
        server = self.start_server([StorageSpec(
            name="1", kind="raid",
            backends=("runzeo", "runzeo", "runzeo"),
            raid_options=f"backend-timeout = {BACKEND_TIMEOUT}")])
        names, stop = self.start_writers(server.addr, WRITERS)
        time.sleep(1.5)
        victim = server.backend_servers[1]
        victim.proc.kill()          # SIGKILL
        victim.proc.wait(5)
        before = len(self.acked())
        time.sleep(2.0)
        self.finish_writers(names, stop)
        acked = self.acked()
        self.assertGreater(before, 0, "commits before the kill")
        self.assertGreater(len(acked), before, "commits after the kill")
        state, reason, doc = self.backend_state(server, 1)
        self.assertEqual(state, "degraded", doc)
        self.assertTrue(reason, doc)
        self.assertEqual(doc["state"], "degraded")
        survivors = [server.backend_servers[0], server.backend_servers[2]]
        server.stop(stop_backends=False)
        for backend in survivors:
            def check(root):
                for name, (key, value) in acked:
                    self.assertEqual(root[name].get(key), value,
                                     f"{name} {key} missing on "
                                     f"{backend.addr}")
            _read(backend.addr, check)
        h0, h2 = (history(b.addr) for b in survivors)
        self.assertGreater(len(h0), len(acked))
        self.assertEqual(h0, h2, "the survivors' histories differ")
        print(f"[{len(acked)} commits acknowledged, {before} before the "
              f"kill; survivors identical over {len(h0)} transactions]",
              end=" ... ", flush=True)

    def test_a_backend_that_swallows_traffic(self):
        backend = zeoraid_server.Server(
            [StorageSpec(name="1", kind="memory")], target_name="zeoraid")
        self.cleanups.append(backend.cleanup)
        proxy = SwallowingProxy(backend.start())
        self.cleanups.append(proxy.close)
        server = self.start_server([StorageSpec(
            name="1", kind="raid",
            backends=("memory", ("zeo", f"{proxy.addr[0]}:{proxy.addr[1]}")),
            raid_options=f"backend-timeout = {BACKEND_TIMEOUT}")])
        names, stop = self.start_writers(server.addr, 1)
        time.sleep(0.5)
        swallowed_at = time.monotonic()
        proxy.swallow()
        self.wait_until(
            "the swallowing backend is degraded",
            lambda: self.backend_state(server, 1)[0] == "degraded",
            timeout=BACKEND_TIMEOUT * 3 + 5)
        took = time.monotonic() - swallowed_at
        acked_then = len(self.acked())
        time.sleep(1.0)
        done = self.finish_writers(names, stop)
        self.assertGreater(len(self.acked()), acked_then,
                           "the writer goes on after the degrade")
        self.assertLess(done["w0"]["max_wait"], BACKEND_TIMEOUT * 2 + 1)
        _, reason, _ = self.backend_state(server, 1)
        self.assertIn("backend-timeout", reason)
        print(f"[degraded {took:.1f}s after it went silent; longest "
              f"commit {done['w0']['max_wait']:.1f}s]", end=" ... ",
              flush=True)

    def test_each_client_hears_each_transaction_once(self):
        server = self.start_server([StorageSpec(
            name="1", kind="raid", backends=("memory", "file", "zeoraid"))])
        a = Client(server.addr)
        b = Client(server.addr)
        self.cleanups += [a.close, b.close]
        a.root()["n"] = 0
        a.commit()
        b.ping()
        base = len(b.recorder.snapshot())
        tids = []
        for i in range(10):
            a.begin()
            a.root()["n"] = i
            a.commit()
            tids.append(a.db.lastTransaction())
        b.recorder.wait_for(base + len(tids))
        time.sleep(0.5)
        b.ping()
        got = b.recorder.tids()[base:]
        self.assertEqual(got, tids, "one invalidation per transaction, in "
                         "order, none twice")
        self.assertFalse(set(a.recorder.tids()) & set(tids),
                         "a client never hears of its own commits")


load_suite = harness.prepare_module(
    [RaidLoadTests], KNOWN_FAILURES,
    mark=zeoraid_server.target() == "zeoraid")
