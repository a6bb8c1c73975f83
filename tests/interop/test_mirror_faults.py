"""Mirrors that misbehave, seen by stock ZODB clients (issues #21, #25).

Writers are separate OS processes running unmodified ``ZEO.DB`` clients
(test_raid's ``keyed_writer``); the operator's actions are the zeoraid
binary's own ``ctl`` against ``[admin]``.  What is checked:

* ``test_disable_then_recover_under_load_file_mirrors``: the operator's
  loop of issue #21 — two in-process file mirrors, four writers
  committing as fast as they can, 100 rounds of ``ctl disable`` then,
  0-50 ms later, ``ctl recover --wait``.  Each round lands somewhere
  else in a commit (before, between or after a mirror's vote and
  finish).  Every recovery succeeds, no writer sees an error (no
  ConflictError nobody caused), ``ctl verify`` finds the mirrors
  identical, and afterwards both Data.fs files hold every acknowledged
  commit and the same history, read by ZODB's own FileStorage.
* ``test_a_mirror_answering_loads_with_a_foreign_error``: a file mirror
  and a stock Python ZEO server whose storage raises an exception ZEO's
  msgpack mode cannot encode (as RelStorage's POSKeyError), so it answers
  every load with ``ValueError("Couldn't pickle response")``
  (foreign_error_zeo.py).  On an empty database (the root's first load)
  and on a populated one: ``ZEO.DB`` opens, reads and commits as if
  nothing were wrong; the mirror is degraded with a reason that names the
  error; the file mirror served the reads.

zeoraid only (runzeo has no arrays): skipped under
ZEORAID_INTEROP_TARGET=runzeo.
"""

import os
import random
import subprocess
import sys
import tempfile
import time
import unittest

import ZEO

import harness
import zeoraid_server
from test_raid import WritersFixture, ruok
from test_recovery import file_history, first_difference, read_file
from test_offsite import free_port
from zeoraid_server import StorageSpec


KNOWN_FAILURES = {}

ROUNDS = int(os.environ.get("ZEORAID_INTEROP_DISABLE_ROUNDS", "100"))
WRITERS = 4
HERE = os.path.dirname(os.path.abspath(__file__))


class MirrorFaultTests(WritersFixture, unittest.TestCase):

    log_prefix = "zeoraid-mirror-faults-"

    def ctl(self, admin, *args, timeout=60):
        """(exit code, output) of ``zeoraid ctl --admin ... ARGS``."""
        proc = subprocess.run(
            [zeoraid_server.zeoraid_binary(), "ctl", "--admin",
             f"127.0.0.1:{admin}", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        return proc.returncode, proc.stdout.decode("utf-8", "replace")

    def test_disable_then_recover_under_load_file_mirrors(self):
        admin = free_port()
        server = self.start_server(
            [StorageSpec(name="1", kind="raid", backends=("file", "file"),
                         raid_options="backend-timeout = 5")],
            extra_toml=f'[admin]\nlisten = "127.0.0.1:{admin}"\n')
        names, stop = self.start_writers(server.addr, WRITERS)
        rng = random.Random(21)
        started = time.monotonic()
        for round_ in range(ROUNDS):
            rc, out = self.ctl(admin, "disable", "file-1")
            self.assertEqual(rc, 0, f"round {round_}: disable: {out}")
            time.sleep(rng.uniform(0.0, 0.05))
            rc, out = self.ctl(admin, "recover", "file-1", "--wait")
            self.assertEqual(
                rc, 0, f"round {round_}: the recovery failed: {out}; "
                f"backend: {self.backend_state(server, 1)[:2]}")
        seconds = time.monotonic() - started
        done = self.finish_writers(names, stop)
        acked = self.acked()
        rc, out = self.ctl(admin, "verify", "file-1", timeout=300)
        self.assertEqual(rc, 0, f"verify: {out}")
        state, reason, _ = self.backend_state(server, 1)
        self.assertEqual(state, "optimal", reason)
        self.stop_servers()
        paths = [os.path.join(server.dir, f"raid-1-{i}.fs") for i in (0, 1)]
        histories = [file_history(p) for p in paths]
        self.assertGreater(len(histories[0]), ROUNDS)
        self.assertEqual(histories[0] == histories[1], True,
                         first_difference(*histories))
        for path in paths:
            def check(root):
                missing = [(n, k) for n, (k, v) in acked
                           if root[n].get(k) != v]
                self.assertEqual(missing[:5], [], f"{len(missing)} "
                                 f"acknowledged commits missing on {path}")
            read_file(path, check)
        commits = sum(o["committed"] for o in done.values())
        print(f"\n    {ROUNDS} rounds of disable + recover in {seconds:.1f} s "
              f"under {WRITERS} writers: every recovery succeeded, "
              f"{commits} commits acknowledged, none failed; "
              f"{len(histories[0])} transactions identical on both mirrors",
              end=" ")

    def start_foreign_error_server(self, failing):
        """A stock ZEO server whose loads fail while ``failing``; returns
        (its address, the flag file, the process)."""
        directory = tempfile.mkdtemp(prefix="zeoraid-foreign-")
        self.cleanups.append(lambda: __import__("shutil").rmtree(
            directory, ignore_errors=True))
        flag = os.path.join(directory, "fail-loads")
        if failing:
            open(flag, "w").close()
        proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "foreign_error_zeo.py"),
             directory],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

        def stop():
            proc.kill()
            proc.wait()
        self.cleanups.append(stop)
        line = proc.stdout.readline().decode().strip()
        self.assertTrue(line.startswith("listening on "),
                        f"the stub ZEO server did not start: {line!r}")
        return line.split()[-1], flag, proc

    def foreign_error_case(self, populated):
        address, flag, _ = self.start_foreign_error_server(not populated)
        server = self.start_server(
            [StorageSpec(name="1", kind="raid",
                         backends=("file", ("zeo", address)),
                         # Every read must reach a mirror: no object cache.
                         raid_options="auto-recover = false\ncache-size = 0")])
        values = {f"k{i}": f"value {i}" for i in range(20)}
        if populated:
            db = ZEO.DB(server.addr)
            try:
                with db.transaction() as conn:
                    for k, v in values.items():
                        conn.root()[k] = v
            finally:
                db.close()
            self.assertEqual(self.backend_state(server, 1)[0], "optimal")
            open(flag, "w").close()
        # A fresh client with no cache: every read reaches the array, and
        # (its cache off) a mirror.
        db = ZEO.DB(server.addr, cache_size=0)
        try:
            with db.transaction() as conn:
                root = conn.root()
                if populated:
                    self.assertEqual({k: root[k] for k in values}, values)
                root["after"] = "committed with a mirror failing loads"
            with db.transaction() as conn:
                self.assertEqual(conn.root()["after"],
                                 "committed with a mirror failing loads")
        finally:
            db.close()
        state, reason, doc = self.backend_state(server, 1)
        self.assertEqual(state, "degraded", doc)
        self.assertIn("ValueError", reason)
        self.assertIn("Couldn't pickle response", reason)
        self.assertEqual(self.backend_state(server, 0)[0], "optimal")
        reads = [b["reads"] for b in ruok(server.addr)["1"]["raid"]["backends"]]
        self.assertGreater(reads[0], 0, f"the file mirror served reads: {reads}")

    def test_a_mirror_answering_loads_with_a_foreign_error(self):
        for populated in (False, True):
            with self.subTest(populated=populated):
                self.foreign_error_case(populated)
                self.stop_servers()
                self._interop_servers = []


load_suite = harness.prepare_module(
    [MirrorFaultTests], KNOWN_FAILURES,
    mark=zeoraid_server.target() == "zeoraid")
