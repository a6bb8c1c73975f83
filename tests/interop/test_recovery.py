"""Online recovery of a RAID array's backends, seen by stock ZODB clients.

Writers are separate OS processes running unmodified ``ZEO.DB`` clients
(test_raid's ``keyed_writer``, one OOBTree each); the backends are stock
Python ``runzeo`` servers and zeoraid's own file storages.  The array
recovers degraded backends by itself (``auto-recover``, the default).
A runzeo is killed with SIGKILL at a moment its Data.fs holds only
finished transactions (``kill_runzeo``: it is stopped, its file looked at,
and killed or let go on), except in the test of the window between a vote
and its finish.  What is checked:

* ``test_recovery_under_four_stock_writers_runzeo_to_runzeo``: two runzeo
  backends, four writers committing as fast as they can; backend 1 is
  killed with SIGKILL, stays away for a while, and is started again on the
  same port with the same Data.fs.  The array reports it ``recovering``
  (polled) and then ``optimal`` again, without help, while the writers go
  on; no writer sees an error; every acknowledged commit is on both
  backends; both histories are identical (every transaction, its metadata
  and every record, read through stock clients).
* ``test_recovery_under_four_stock_writers_runzeo_pickle``: the same over
  two default-config runzeo (no ``msgpack`` line: the pickle flavour),
  checking that the array spoke pickle to both (``pickle_problems``).
* ``test_recovery_file_source_runzeo_target``: the same with a zeoraid file
  backend as the source and the runzeo as the target; the file also passes
  ZODB's ``fstest``.
* ``test_a_runzeo_killed_between_vote_and_finish_is_recovered``: the
  runzeo is killed while its Data.fs ends with a voted, unfinished
  transaction.  Stock FileStorage cuts that transaction off when it opens
  the file but still reports its tid as ``lastTransaction()``; the backend
  must be recovered all the same, from the newest transaction it holds
  (two writers; a file source).
* ``test_new_empty_file_backend_recovered_from_runzeo``: an array of one
  runzeo backend builds a history with undo, deleted objects and a pack;
  zeoraid is restarted with a new, empty file backend added.  It starts
  degraded and gets the whole history copied while four writers commit;
  afterwards it is optimal, passes ``fstest`` and holds the runzeo's
  history exactly.
* ``test_killing_the_target_mid_recovery_then_recovering_later``: the
  runzeo target misses thousands of transactions; it is killed again in
  the middle of its recovery: it goes back to degraded with a reason and
  the writers (from its restart into its second recovery) notice
  nothing; started once more, it is recovered from where it stood (the
  second copy starts after a later transaction) and identical.
* ``test_kill_9_of_zeoraid_mid_recovery``: zeoraid itself is killed with
  SIGKILL in the middle of a recovery and started again with the same
  config, data and state file: the target comes back degraded, the copy
  resumes after the transactions it already holds, and it ends optimal
  and identical.

Each test prints its figures (transactions copied, seconds, commits the
writers made meanwhile).  zeoraid only (runzeo has no arrays): skipped
under ZEORAID_INTEROP_TARGET=runzeo.
"""

import os
import re
import signal
import struct
import subprocess
import sys
import time
import unittest

import transaction
import ZEO
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping

import harness
import zeoraid_server
from test_hot_objects import CONNECT_DEADLINE, _MP, _read, _write
from test_raid import WritersFixture, keyed_writer, ruok
from zeoraid_server import RAID_LAYOUTS
from zeoraid_server import StorageSpec


KNOWN_FAILURES = {}

WRITERS = 4
BACKEND_TIMEOUT = 2.0
RAID_OPTIONS = f"backend-timeout = {BACKEND_TIMEOUT}"
# Transactions the target misses in the mid-recovery tests: enough for a
# copy that lasts long enough to be interrupted.
MISSED = 3000
# How long a degraded backend may take to be optimal again after it is
# back (auto-recovery's backoff doubles from 1 s after each failed
# attempt, and every attempt on a dead target waits backend-timeout). A
# bound for "it does finish while the writers go on", not a speed target:
# a slow run of the fresh-clone CI copied at 290 transactions/s under the
# writers and needed more than 30 s (the recovery figures are in
# benches/, in release builds).
RECOVER_DEADLINE = 90.0
POLL = 0.01

# zeoraid's log lines about recoveries.
RECOVERED_RE = re.compile(
    r'backend "(?P<backend>[^"]+)" recovered from "(?P<source>[^"]+)" and '
    r'optimal again: (?P<copied>\d+) transactions \((?P<mb>[\d.]+) MB\) '
    r'copied in (?P<seconds>[\d.]+) s')
CLAIMED_RE = re.compile(
    r'reports 0x(?P<claimed>[0-9a-f]{16}) as its last transaction but holds '
    r'transactions up to 0x(?P<held>[0-9a-f]{16})')
COPYING_RE = re.compile(
    r'backend "(?P<backend>[^"]+)": copying (?:the transactions after '
    r'0x(?P<after>[0-9a-f]{16})|(?P<whole>the whole history))')


# ---------------------------------------------------------------------------
# Reading what the backends hold


def txn_history(storage):
    """[(tid, status, user, description, extension, [(oid, data), ...])]
    of ``storage``'s whole history (records in storage order)."""
    out = []
    it = storage.iterator()
    try:
        for txn in it:
            out.append((txn.tid, txn.status, txn.user, txn.description,
                        dict(txn.extension),
                        [(r.oid, r.data) for r in txn]))
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
    return out


def zeo_history(addr):
    """The history of a ZEO server's storage "1", through a stock client
    (test_raid's ``history``, with the transactions' metadata)."""
    from ZEO.ClientStorage import ClientStorage
    storage = ClientStorage(addr, wait_timeout=30, read_only=True)
    try:
        return txn_history(storage)
    finally:
        storage.close()


def file_history(path):
    """The history of a Data.fs, opened read-only by ZODB's FileStorage."""
    import ZODB.FileStorage
    storage = ZODB.FileStorage.FileStorage(path, read_only=True)
    try:
        return txn_history(storage)
    finally:
        storage.close()


def read_file(path, func):
    """``func(root)`` on a Data.fs opened read-only."""
    import ZODB
    import ZODB.FileStorage
    db = ZODB.DB(ZODB.FileStorage.FileStorage(path, read_only=True))
    try:
        with db.transaction() as conn:
            return func(conn.root())
    finally:
        db.close()


def fstest(path):
    """(exit code, output) of ZODB's ``fstest`` on ``path``."""
    proc = subprocess.run(
        [sys.executable, "-m", "ZODB.scripts.fstest", path],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


def first_difference(a, b):
    """A sentence on where two histories first differ."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            if x[0] != y[0]:
                return (f"transaction {i}: tid {x[0].hex()} vs "
                        f"{y[0].hex()}")
            parts = ["status", "user", "description", "extension", "records"]
            what = [name for name, u, v in zip(parts, x[1:], y[1:]) if u != v]
            return f"transaction {i} ({x[0].hex()}) differs in {what}"
    return (f"one is a prefix of the other: {len(a)} vs {len(b)} "
            f"transactions")


def data_fs_tail(path):
    """How a Data.fs ends, as FileStorage would see it when it opens the
    file: "clean" (only whole, finished transactions), "checkpoint" (the
    last one was voted, not finished: status 'c') or "partial" (cut off in
    the middle of a transaction)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        pos = 4
        while pos < size:
            f.seek(pos)
            header = f.read(23)
            if len(header) < 23:
                return "partial"
            _tid, length, status = struct.unpack(">8sQc", header[:17])
            if pos + length + 8 > size:
                return "partial"
            if status == b"c":
                return "checkpoint"
            pos += length + 8
    return "clean"


class Watch:
    """What polling ``ruok`` saw of backend ``index`` of array "1"."""

    def __init__(self, index):
        self.index = index
        self.states = []           # its distinct states, in order
        self.recovering_polls = 0
        self.commits_at_recovering = None   # the storage's commit count
        self.max_copied = 0
        self.max_left = 0          # the largest "left" estimate seen
        self.throttle = None       # the last non-null throttle seen
        # Most commits admitted beyond what the copy paid for (see
        # check_ratio), over every poll that showed both.
        self.max_excess = None

    def poll(self, addr):
        """(the storage's document, the array's, the backend's)."""
        top = ruok(addr)["1"]
        doc = top["raid"]
        b = doc["backends"][self.index]
        if not self.states or self.states[-1] != b["state"]:
            self.states.append(b["state"])
        if b["state"] == "recovering":
            self.recovering_polls += 1
            if self.commits_at_recovering is None:
                self.commits_at_recovering = top["commits"]
        rec, throttle = b["recovery"], doc["throttle"]
        if rec:
            self.max_copied = max(self.max_copied, rec["copied"])
            if rec["copied"] > 0:
                self.max_left = max(self.max_left, rec["left"])
        if throttle:
            self.throttle = throttle
        if rec and throttle:
            # recovery-ratio: each commit admitted is paid for with 1/ratio
            # of a copied transaction (one is free; one admitted after
            # waiting MAX_STALL is paid for afterwards).
            excess = (throttle["admitted"] - throttle["forced"] - 1
                      - rec["copied"] / doc["recovery-ratio"])
            self.max_excess = (excess if self.max_excess is None
                               else max(self.max_excess, excess))
        return top, doc, b


class RecoveryTests(WritersFixture, unittest.TestCase):

    log_prefix = "zeoraid-recovery-"
    writer_container = OOBTree

    # -- helpers ---------------------------------------------------------------

    def stop_and_compare_file_with_runzeo(self, server, path, target, acked,
                                          at_least):
        """Stop zeoraid (not the runzeo): a clean stop, the file passes
        fstest, every acknowledged commit is on both, and both histories
        (more than ``at_least`` transactions) are identical.  Returns the
        file's history."""
        server.stop(stop_backends=False)
        self.assertIsNone(server.graceful_problem())
        self.assert_fstest(path)
        self.assert_acked_on(acked, lambda f: read_file(path, f), path)
        self.assert_acked_on(acked, lambda f: _read(target.addr, f),
                             f"runzeo {target.addr}")
        h0, h1 = file_history(path), zeo_history(target.addr)
        self.assertGreater(len(h0), at_least)
        self.assert_same_history(h0, h1, "file-0 vs runzeo-1")
        return h0

    def start_array(self, backends):
        return self.start_server([StorageSpec(
            name="1", kind="raid", backends=backends,
            raid_options=RAID_OPTIONS)])

    @staticmethod
    def backend_server(server, index):
        """The runzeo Server behind backend ``index`` of array "1"."""
        spec = server.storages[0]
        started = [i for i, kind in enumerate(spec.backends)
                   if kind in zeoraid_server.SERVER_BACKENDS]
        return server.backend_servers[started.index(index)]

    @staticmethod
    def file_path(server, index):
        """The Data.fs of file backend ``index`` of array "1"."""
        return os.path.join(server.dir, f"raid-1-{index}.fs")

    @staticmethod
    def commits(server):
        """The storage's commit count (ruok)."""
        return ruok(server.addr)["1"]["commits"]

    def kill_runzeo(self, backend, tail="clean", deadline=15.0):
        """SIGKILL a runzeo at a moment its Data.fs ends ``tail`` (see
        data_fs_tail): it is stopped (SIGSTOP), its file looked at, and
        killed or let go on for a few milliseconds.  Returns how many
        looks it took.

        "clean" keeps the kill out of the window between a vote and its
        finish (see test_a_runzeo_killed_between_vote_and_finish for that
        window); "checkpoint" kills it inside it."""
        path = backend._storage_path(backend.storages[0])
        pid = backend.proc.pid
        until = time.monotonic() + deadline
        seen = {}
        looks = 0
        while True:
            looks += 1
            os.kill(pid, signal.SIGSTOP)
            try:
                found = data_fs_tail(path)
                seen[found] = seen.get(found, 0) + 1
                if found == tail:
                    backend.proc.kill()
                    backend.proc.wait(5)
                    return looks
            finally:
                if backend.proc.poll() is None:
                    os.kill(pid, signal.SIGCONT)
            self.assertLess(time.monotonic(), until,
                            f"the runzeo's Data.fs never ended {tail!r} "
                            f"when looked at: {seen}")
            time.sleep(0.002 + 0.001 * (looks % 7))

    def log_text(self, server, offset=0):
        with open(server.stderr_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def wait_for_log(self, server, regex, offset=0, timeout=5.0):
        """The matches of ``regex`` in the server's log after ``offset``,
        once there is at least one."""
        deadline = time.monotonic() + timeout
        while True:
            found = list(regex.finditer(self.log_text(server, offset)))
            if found:
                return found
            self.assertLess(time.monotonic(), deadline,
                            f"no log line matching {regex.pattern!r}")
            time.sleep(0.05)

    def recovered_line(self, server, backend_name, offset=0):
        """The last "recovered from" line of ``backend_name``."""
        deadline = time.monotonic() + 5.0
        while True:
            found = [m for m in self.wait_for_log(server, RECOVERED_RE,
                                                  offset)
                     if m["backend"] == backend_name]
            if found:
                return found[-1]
            self.assertLess(time.monotonic(), deadline,
                            f"no 'recovered from' line for backend "
                            f"{backend_name!r}")
            time.sleep(0.05)

    def copy_starts(self, server, backend_name, offset=0):
        """The "copying ..." lines of ``backend_name``, in order: each the
        tid the copy started after, as an int (0: the whole history)."""
        return [int(m["after"], 16) if m["after"] else 0
                for m in COPYING_RE.finditer(self.log_text(server, offset))
                if m["backend"] == backend_name]

    def wait_degraded(self, server, index, timeout=BACKEND_TIMEOUT * 3 + 5):
        """Wait until backend ``index`` is degraded; returns its reason."""
        self.wait_until(
            f"backend {index} is degraded",
            lambda: self.backend_state(server, index)[0] == "degraded",
            timeout=timeout)
        state, reason, doc = self.backend_state(server, index)
        self.assertTrue(reason, f"a degraded backend has a reason: {doc}")
        self.assertIsNone(doc["backends"][index]["recovery"],
                          f"no recovery runs on a degraded backend: {doc}")
        self.assertEqual(doc["state"], "degraded", doc)
        return reason

    def watch_until_optimal(self, server, index, timeout=RECOVER_DEADLINE):
        """Poll ruok until backend ``index`` and the array are optimal;
        returns the Watch.  Fails at once if auto-recovery gave up on the
        backend (a divergence: it is then left to the operator)."""
        watch = Watch(index)
        deadline = time.monotonic() + timeout
        while True:
            top, doc, b = watch.poll(server.addr)
            if b["state"] == "optimal" and doc["state"] == "optimal":
                return watch
            error = b["last-recovery-error"] or ""
            if "diverged" in error and b["state"] == "degraded":
                self.fail(f"auto-recovery gave backend {index} up: {error}; "
                          f"states seen {watch.states}; status {doc}")
            if time.monotonic() > deadline:
                self.fail(f"backend {index} not optimal again within "
                          f"{timeout:g}s; states seen {watch.states}; "
                          f"last status {doc}")
            time.sleep(POLL)

    def assert_clean_after_recovery(self, server, index, watch):
        """What ruok says once a recovery succeeded, and what it said
        during it."""
        doc = ruok(server.addr)["1"]["raid"]
        b = doc["backends"][index]
        self.assertEqual(b["state"], "optimal", doc)
        self.assertIsNone(b["reason"], doc)
        self.assertIsNone(b["recovery"], doc)
        self.assertEqual(b["recovery-failures"], 0, doc)
        self.assertIsNone(b["last-recovery-error"], doc)
        self.assertIsNone(doc["throttle"], "no throttle once recovered")
        self.assertEqual(doc["optimal"], len(doc["backends"]), doc)
        if watch.max_excess is not None:
            # A little slack: ruok reads the copy's count and the
            # throttle's one after the other while both move.
            self.assertLess(
                watch.max_excess, 10,
                f"more commits admitted during the recovery than the copy "
                f"paid for at recovery-ratio {doc['recovery-ratio']} "
                f"(last throttle {watch.throttle})")

    def assert_same_history(self, a, b, what):
        self.assertGreater(len(a), 0, f"{what}: empty history")
        if a != b:
            self.fail(f"{what}: histories differ ({len(a)} vs {len(b)} "
                      f"transactions); {first_difference(a, b)}")

    def assert_acked_on(self, acked, read, where):
        def check(root):
            missing = [(name, key) for name, (key, value) in acked
                       if root[name].get(key) != value]
            self.assertEqual(missing[:5], [], f"{len(missing)} acknowledged "
                             f"commits missing on {where}")
        read(check)

    def assert_fstest(self, path):
        rc, out = fstest(path)
        self.assertEqual(rc, 0, f"fstest {path} failed:\n{out}")

    def commit_many(self, addr, count, prefix):
        """``count`` small transactions from one client in this process,
        as fast as it goes; returns the seconds they took."""
        db = ZEO.DB(addr, wait_timeout=30)
        try:
            tm = transaction.TransactionManager()
            conn = db.open(tm)
            tm.begin()
            conn.root()[prefix] = PersistentMapping()
            tm.commit()
            bucket = conn.root()[prefix]
            started = time.monotonic()
            for i in range(count):
                tm.begin()
                bucket[i % 50] = f"{prefix} {i}"
                tm.commit()
            return time.monotonic() - started
        finally:
            db.close()

    # -- a runzeo backend killed and started again under four writers ---------

    def kill_and_recover_under_writers(self, layout):
        """Backend 1 (a runzeo) of ``layout`` is killed under four writers,
        kept away 2 s and started again on the same port and Data.fs;
        returns (server, acknowledged commits, figures)."""
        server = self.start_array(layout)
        victim = self.backend_server(server, 1)
        name = f"{layout[1]}-1"
        names, stop = self.start_writers(server.addr, WRITERS)
        time.sleep(1.0)
        self.kill_runzeo(victim)
        killed = time.monotonic()
        reason = self.wait_degraded(server, 1)
        down = self.commits(server)
        time.sleep(2.0)
        at_restart = self.commits(server)
        victim.restart()
        restarted = time.monotonic()
        watch = self.watch_until_optimal(server, 1)
        took = time.monotonic() - restarted
        at_optimal = self.commits(server)
        time.sleep(0.5)             # commits on the whole array again
        at_end = self.commits(server)
        self.finish_writers(names, stop)
        acked = self.acked()
        self.assertGreater(at_restart, down,
                           "the writers commit while the backend is down")
        self.assertGreater(at_end, at_optimal,
                           "the writers commit after the recovery")
        self.assert_clean_after_recovery(server, 1, watch)
        line = self.recovered_line(server, name)
        self.assertGreater(int(line["copied"]), 0, line[0])
        # The copy started where the target stood, not from scratch.
        starts = self.copy_starts(server, name)
        self.assertTrue(starts and 0 not in starts,
                        f"the copy resumes after the target's last "
                        f"transaction: {starts}")
        self.assertIn("recovering", watch.states,
                      f"ruok never showed the backend recovering "
                      f"(states seen: {watch.states}; {line[0]})")
        # The 'left' estimate comes from the tids' timestamps: rough when
        # commits come in bursts, but of the order of what is copied.
        self.assertLessEqual(watch.max_left, 10 * int(line["copied"]) + 100,
                             "ruok's 'left' estimate is far off")
        during = (at_optimal - watch.commits_at_recovering
                  if watch.commits_at_recovering is not None else "?")
        figures = (f"recovered {line['copied']} transactions in "
                   f"{line['seconds']} s, optimal {took:.1f} s after the "
                   f"restart ({restarted - killed:.1f} s after the kill); "
                   f"writers committed {during} during the recovery, "
                   f"{len(acked)} in all; throttle {watch.throttle}")
        return server, acked, figures

    def recover_runzeo_to_runzeo(self, layout):
        """kill_and_recover_under_writers over two runzeo of ``layout`` (a
        RAID_LAYOUTS name); both end with every acknowledged commit and
        identical histories.  Over default-config runzeo, the array (not
        only the stock clients that read the backends at the end) spoke
        pickle to both."""
        backends = RAID_LAYOUTS[layout]
        server, acked, figures = self.kill_and_recover_under_writers(
            backends)
        if "runzeo-pickle" in backends:
            # Before any stock client of the test's own talks to them.
            self.assertEqual([], zeoraid_server.pickle_problems(server))
        b0, b1 = server.backend_servers
        server.stop(stop_backends=False)
        self.assertIsNone(server.graceful_problem())
        for b in (b0, b1):
            self.assert_acked_on(acked, lambda f, b=b: _read(b.addr, f),
                                 f"runzeo {b.addr}")
        h0, h1 = zeo_history(b0.addr), zeo_history(b1.addr)
        self.assertGreater(len(h0), len(acked))
        self.assert_same_history(h0, h1,
                                 f"{backends[0]}-0 vs {backends[1]}-1")
        print(f"[{figures}; identical over {len(h0)} transactions]",
              end=" ... ", flush=True)

    def test_recovery_under_four_stock_writers_runzeo_to_runzeo(self):
        self.recover_runzeo_to_runzeo("runzeo2")

    def test_recovery_under_four_stock_writers_runzeo_pickle(self):
        # Default-config runzeo: the pickle flavour both ways.
        self.recover_runzeo_to_runzeo("runzeo-pickle2")

    def test_recovery_file_source_runzeo_target(self):
        server, acked, figures = self.kill_and_recover_under_writers(
            ("file", "runzeo"))
        target = self.backend_server(server, 1)
        path = self.file_path(server, 0)
        h0 = self.stop_and_compare_file_with_runzeo(
            server, path, target, acked, len(acked))
        print(f"[{figures}; identical over {len(h0)} transactions]",
              end=" ... ", flush=True)

    def test_a_runzeo_killed_between_vote_and_finish_is_recovered(self):
        # Stock FileStorage, opened after a kill between vote and finish,
        # cuts the unfinished transaction off but still reports its tid as
        # lastTransaction().  The array committed that transaction on the
        # other backend (or not at all); either way the backend must come
        # back.
        server = self.start_array(("file", "runzeo"))
        victim = self.backend_server(server, 1)
        path = self.file_path(server, 0)
        names, stop = self.start_writers(server.addr, 2)
        time.sleep(0.5)
        looks = self.kill_runzeo(victim, tail="checkpoint")
        reason = self.wait_degraded(server, 1)
        victim.restart()
        restarted = time.monotonic()
        watch = self.watch_until_optimal(server, 1)
        took = time.monotonic() - restarted
        # The case this test is about did happen: the runzeo claimed a
        # transaction it does not hold (zeoraid says so in its log).
        claimed = self.wait_for_log(server, CLAIMED_RE)[0]
        time.sleep(0.3)
        self.finish_writers(names, stop)
        acked = self.acked()
        self.assert_clean_after_recovery(server, 1, watch)
        server.stop(stop_backends=False)
        self.assert_acked_on(acked, lambda f: _read(victim.addr, f),
                             f"runzeo {victim.addr}")
        h0, h1 = file_history(path), zeo_history(victim.addr)
        self.assert_same_history(h0, h1, "file-0 vs runzeo-1")
        print(f"[killed after {looks} looks; degraded: {reason[:70]}...; "
              f"it claimed {claimed['claimed']}, held {claimed['held']}; "
              f"optimal {took:.1f} s after the restart; identical over "
              f"{len(h0)} transactions]", end=" ... ", flush=True)

    # -- a new, empty file backend ----------------------------------------------

    def build_history(self, addr):
        """Transactions with undos, deleted objects and a pack, then a bulk
        of small ones; returns a description of it."""
        from ZEO.ClientStorage import ClientStorage
        from ZODB.Connection import TransactionMetaData
        db = ZEO.DB(addr, wait_timeout=30)
        try:
            tm = transaction.TransactionManager()
            conn = db.open(tm)
            root = conn.root()

            def commit(change, note=""):
                tm.begin()
                change()
                if note:
                    tm.get().note(note)
                tm.commit()

            def undo_newest(key):
                # The newest transaction set root["b"][key]: undo it.
                entry = db.undoLog(0, 1)[0]
                tm.begin()
                db.undo(entry["id"], tm.get())
                tm.get().note(f"undo setting {key}")
                tm.commit()
                tm.begin()
                self.assertNotIn(key, root["b"], "the undo took")
                tm.abort()

            commit(lambda: root.update(
                a=PersistentMapping(), b=PersistentMapping(),
                trash=PersistentMapping()), "objects")
            for i in range(150):
                commit(lambda i=i: root["a"].__setitem__(i % 20, f"a{i}"),
                       f"a {i}")
            commit(lambda: root["b"].__setitem__("x", "to be undone"))
            undo_newest("x")
            for i in range(100):
                commit(lambda i=i: root["b"].__setitem__(i % 20, f"b{i}"),
                       f"b {i}")
            time.sleep(0.05)
            db.pack()                # to now: old revisions are gone
            for i in range(100):
                commit(lambda i=i: root["a"].__setitem__(i % 20, f"c{i}"),
                       f"after the pack {i}")
            # Objects that are unlinked, then deleted (IExternalGC).
            for i in range(10):
                commit(lambda i=i: root["trash"].__setitem__(
                    i, PersistentMapping(n=i)))
            doomed = [(v._p_oid, v._p_serial)
                      for v in root["trash"].values()]
            commit(lambda: root.__delitem__("trash"), "unlink the trash")
            storage = ClientStorage(addr, wait_timeout=30)
            try:
                t = TransactionMetaData(description="delete the trash")
                storage.tpc_begin(t)
                for oid, serial in doomed:
                    storage.deleteObject(oid, serial, t)
                storage.tpc_vote(t)
                storage.tpc_finish(t)
            finally:
                storage.close()
            commit(lambda: root["b"].__setitem__("y", "undone after pack"))
            undo_newest("y")
        finally:
            db.close()
        # A bulk, so the copy lasts a moment.
        self.commit_many(addr, 1500, "bulk")
        return ("150 + 100 transactions, an undo, a pack, 100 + 10 "
                f"transactions, {len(doomed)} objects deleted, an undo, "
                "1500 small ones")

    def test_new_empty_file_backend_recovered_from_runzeo(self):
        first = self.start_array(("runzeo",))
        source = first.backend_servers[0]
        built = self.build_history(first.addr)
        first.stop(stop_backends=False)
        self.assertIsNone(first.graceful_problem())
        before = zeo_history(source.addr)
        address = f"{source.addr[0]}:{source.addr[1]}"
        server = self.start_array((("zeo", address), "file"))
        path = self.file_path(server, 1)
        started = time.monotonic()
        names, stop = self.start_writers(server.addr, WRITERS)
        writing = time.monotonic() - started
        watch = self.watch_until_optimal(server, 1)
        took = time.monotonic() - started
        at_optimal = self.commits(server)
        time.sleep(0.5)
        at_end = self.commits(server)
        self.finish_writers(names, stop)
        acked = self.acked()
        self.assertGreater(at_end, at_optimal,
                           "the writers commit after the recovery")
        self.assert_clean_after_recovery(server, 1, watch)
        self.assertIn("missing transactions", self.log_text(server),
                      "the new, empty backend starts degraded")
        self.assertEqual(self.copy_starts(server, "file-1"), [0],
                         "one copy, of the whole history")
        line = self.recovered_line(server, "file-1")
        self.assertGreaterEqual(int(line["copied"]), len(before))
        server.stop()
        self.assertIsNone(server.graceful_problem())
        self.assert_fstest(path)
        h_file, h_zeo = file_history(path), zeo_history(source.addr)
        self.assertEqual(h_zeo[:len(before)], before,
                         "the source's history before the writers")
        self.assertGreater(len(h_zeo), len(before))
        self.assert_same_history(h_file, h_zeo, "file-1 vs runzeo")
        self.assert_acked_on(acked, lambda f: read_file(path, f), path)
        # The undos and the deletions are in what was copied.
        deleted = sum(1 for t in h_file for _, data in t[5] if data is None)
        self.assertGreater(deleted, 0, "deletion records were copied")
        undos = sum(1 for t in h_file if t[3].startswith(b"undo"))
        self.assertGreater(undos, 0, "undo transactions were copied")
        # The 'left' estimate comes from the tids' timestamps: rough when
        # commits come in bursts, but of the order of the history.
        self.assertLessEqual(watch.max_left, 10 * len(h_zeo),
                             "ruok's 'left' estimate is far off")
        during = (at_optimal - watch.commits_at_recovering
                  if watch.commits_at_recovering is not None else "?")
        print(f"[{built}: {len(before)} transactions after the pack; "
              f"recovered {line['copied']} in {line['seconds']} s, "
              f"optimal {took:.1f} s after the start (writers committing "
              f"after {writing:.1f} s, {during} commits during the "
              f"recovery; ruok's largest 'left' estimate "
              f"{watch.max_left}); identical over {len(h_file)} "
              f"transactions, "
              f"{deleted} deletion records]", end=" ... ", flush=True)

    # -- interrupted recoveries ---------------------------------------------------

    def target_misses_transactions(self, server, go=None):
        """Kill the runzeo behind backend 1, commit MISSED transactions
        without it, start it again (and set ``go``); returns (its Server,
        seconds the commits took)."""
        target = self.backend_server(server, 1)
        self.commit_many(server.addr, 20, "before")   # on both
        self.kill_runzeo(target)
        self.wait_degraded(server, 1)
        seconds = self.commit_many(server.addr, MISSED, "missed")
        target.restart()
        if go is not None:
            go.set()
        return target, seconds

    def wait_copying(self, server, index, timeout=RECOVER_DEADLINE,
                     optimal_ok=False):
        """Poll until backend ``index`` is recovering and has copied at
        least one transaction; returns its ruok entry (None if it is
        optimal already and ``optimal_ok``)."""
        deadline = time.monotonic() + timeout
        while True:
            doc = ruok(server.addr)["1"]["raid"]
            b = doc["backends"][index]
            if (b["state"] == "recovering" and b["recovery"]
                    and b["recovery"]["copied"] > 0):
                return b
            if b["state"] == "optimal":
                if optimal_ok:
                    return None
                self.fail(f"backend {index} was recovered before it could "
                          f"be interrupted: {doc}")
            error = b["last-recovery-error"] or ""
            if "diverged" in error and b["state"] == "degraded":
                self.fail(f"auto-recovery gave backend {index} up: {error}")
            if time.monotonic() > deadline:
                self.fail(f"backend {index} never recovering with copied > "
                          f"0 within {timeout:g}s; last status {doc}")
            time.sleep(POLL)

    def test_killing_the_target_mid_recovery_then_recovering_later(self):
        server = self.start_array(("file", "runzeo"))
        path = self.file_path(server, 0)
        # The writers commit from the target's restart on (while it was
        # away, the MISSED transactions were all it missed) until its
        # second recovery is under way: through the first recovery, the
        # kill in its middle and auto-recovery's backoff after it.  They
        # stop there: the second recovery catches up at about half the
        # copy rate while they commit (recovery-ratio 2), and the backlog
        # of the backoff (up to 8 s of commits) would cost half a minute.
        go = _MP.Event()
        names, stop = self.start_writers(server.addr, 2, go)
        target, seconds = self.target_misses_transactions(server, go)
        first = self.wait_copying(server, 1)
        self.kill_runzeo(target)
        reason = self.wait_degraded(server, 1)
        failed = self.backend_state(server, 1)[2]["backends"][1]
        self.assertGreaterEqual(failed["recovery-failures"], 1, failed)
        self.assertTrue(failed["last-recovery-error"], failed)
        at_second_kill = self.commits(server)
        target.restart()
        restarted = time.monotonic()
        second = self.wait_copying(server, 1, optimal_ok=True)
        at_stop = self.commits(server)
        self.finish_writers(names, stop)
        acked = self.acked()
        watch = self.watch_until_optimal(server, 1)
        took = time.monotonic() - restarted
        self.assertGreater(at_stop, at_second_kill,
                           "the writers commit after the second kill")
        self.assert_clean_after_recovery(server, 1, watch)
        self.commit_many(server.addr, 20, "after")    # on both again
        starts = self.copy_starts(server, "runzeo-1")
        self.assertGreaterEqual(len(starts), 2, starts)
        self.assertNotIn(0, starts, "no copy from scratch")
        self.assertGreater(
            starts[-1], starts[0],
            "the last copy starts after what the interrupted one copied, "
            "not where that one started")
        line = self.recovered_line(server, "runzeo-1")
        h0 = self.stop_and_compare_file_with_runzeo(
            server, path, target, acked, MISSED)
        copied, left = first["recovery"]["copied"], first["recovery"]["left"]
        print(f"[{MISSED} missed in {seconds:.1f} s; killed at {copied}+ "
              f"copied (ruok: {left} left); degraded: {reason[:60]}...; "
              f"{failed['recovery-failures']} failed attempts; optimal "
              f"{took:.1f} s after the restart, the last recovery copied "
              f"{line['copied']} in {line['seconds']} s; the writers "
              f"committed {at_stop - at_second_kill} from the second kill "
              f"into the second recovery"
              + ("" if second else " (it was over before a poll saw it)")
              + f"; identical over {len(h0)} transactions]", end=" ... ",
              flush=True)

    def test_kill_9_of_zeoraid_mid_recovery(self):
        server = self.start_array(("file", "runzeo"))
        path = self.file_path(server, 0)
        target, seconds = self.target_misses_transactions(server)
        first = self.wait_copying(server, 1)
        server.proc.kill()          # SIGKILL
        server.proc.wait(5)
        first_starts = self.copy_starts(server, "runzeo-1")
        self.assertEqual(len(first_starts), 1, first_starts)
        offset = os.path.getsize(server.stderr_path)
        server.restart()
        watch = self.watch_until_optimal(server, 1)
        self.assertIn(watch.states[0], ("degraded", "recovering"),
                      "after the restart the target is not trusted until "
                      "recovered (the state file)")
        resumed = self.copy_starts(server, "runzeo-1", offset)
        self.assertTrue(resumed, "the second run copies to the target")
        self.assertNotIn(0, resumed, "no copy from scratch")
        self.assertGreater(
            resumed[0], first_starts[0],
            "the copy resumes after what the first run copied")
        line = self.recovered_line(server, "runzeo-1", offset)
        self.assertIn('backend "runzeo-1" starts degraded',
                      self.log_text(server, offset),
                      "the state file remembers the unfinished recovery")
        self.assert_clean_after_recovery(server, 1, watch)
        # The array writes to both again.
        self.commit_many(server.addr, 20, "after")
        server.stop(stop_backends=False)
        self.assertIsNone(server.graceful_problem())
        self.assert_fstest(path)
        h0, h1 = file_history(path), zeo_history(target.addr)
        self.assertGreater(len(h0), MISSED)
        self.assert_same_history(h0, h1, "file-0 vs runzeo-1")
        copied, left = first["recovery"]["copied"], first["recovery"]["left"]
        print(f"[{MISSED} missed in {seconds:.1f} s; zeoraid killed at "
              f"{copied}+ copied (ruok: {left} left); the second run "
              f"copied {line['copied']} in {line['seconds']} s; identical "
              f"over {len(h0)} transactions]", end=" ... ", flush=True)


load_suite = harness.prepare_module(
    [RecoveryTests], KNOWN_FAILURES,
    mark=zeoraid_server.target() == "zeoraid")
