"""Invalidations and write conflicts between two stock ZODB clients.

Two independent ``ZEO.DB`` objects (A and B, each with its own
ClientStorage, cache and connection) talk to one server, through nothing
but the normal ZODB API.  What they check:

* a change A commits reaches B without B reconnecting: B sees the new
  value once it begins a new transaction, and an object B had loaded into
  its cache is invalidated (same Python object, new state);
* within a transaction B keeps its snapshot even after the invalidation
  arrived (MVCC: invalidations apply at the transaction boundary);
* with ``server_sync=True`` B sees A's commit on its very next
  ``begin()``, no waiting: the server delivers the invalidation before it
  answers B's ping;
* each committed transaction reaches every other client exactly once, with
  the committing tid and exactly the stored oids, and never reaches the
  committing client itself;
* a write-write conflict on an object without ``_p_resolveConflict`` makes
  the second committer fail with ConflictError, while on a resolvable one
  (``BTrees.Length.Length``) both commits succeed thanks to the client-side
  conflict resolution that ZEO 5 clients do after ``vote``.

Run with run.py (``python tests/interop/run.py test_invalidations``).
"""

import threading
import time
import unittest

import transaction
import ZEO
from BTrees.Length import Length
from persistent.mapping import PersistentMapping
from ZODB.POSException import ConflictError

import harness
import zeoraid_server
from zeoraid_server import ServerFixture
from zeoraid_server import StorageSpec


# Test name -> why zeoraid fails it (run as expected failures; see
# test_conformance.py).  Empty: every test here must pass.
KNOWN_FAILURES = {
}


# How long to wait for an asynchronous invalidation to arrive.
DELIVERY_TIMEOUT = 10.0
# After the expected invalidations arrived, how long to keep listening for
# duplicates that should not come.
QUIET_PERIOD = 0.5


class InvalidationRecorder:
    """Wraps ``ClientStorage.invalidateTransaction`` on one client storage
    and records every (tid, oids) the server sent, in arrival order.

    The ZEO client thread calls that method on the ClientStorage instance
    for each ``invalidateTransaction`` message, so an instance attribute
    sees exactly what came over the wire."""

    def __init__(self, storage):
        self.calls = []
        self._lock = threading.Lock()
        self._original = storage.invalidateTransaction
        storage.invalidateTransaction = self._record

    def _record(self, tid, oids):
        with self._lock:
            self.calls.append((tid, frozenset(oids)))
        return self._original(tid, oids)

    def snapshot(self):
        with self._lock:
            return list(self.calls)

    def tids(self):
        return [tid for tid, _ in self.snapshot()]

    def wait_for(self, count, timeout=DELIVERY_TIMEOUT):
        """Wait until at least ``count`` calls were recorded."""
        deadline = time.monotonic() + timeout
        while len(self.snapshot()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"expected {count} invalidations within {timeout:g}s, "
                    f"got {len(self.snapshot())}: {self.snapshot()!r}")
            time.sleep(0.01)


class Client:
    """One independent ZODB client: DB, transaction manager, connection."""

    def __init__(self, addr, **options):
        self.db = ZEO.DB(addr, wait_timeout=30, **options)
        self.storage = self.db.storage
        self.tm = transaction.TransactionManager()
        self.conn = self.db.open(self.tm)
        self.recorder = InvalidationRecorder(self.storage)

    def root(self):
        return self.conn.root()

    def commit(self):
        self.tm.commit()

    def begin(self):
        self.tm.begin()

    def ping(self):
        """A round trip to the server: everything the server sent this
        client before answering has been processed when this returns."""
        self.storage._call("ping")

    def close(self):
        try:
            self.tm.abort()
            self.conn.close()
        finally:
            self.db.close()


class InvalidationTests(ServerFixture, unittest.TestCase):

    def setUp(self):
        self.clients = []
        try:
            self.server = self.start_server([StorageSpec(name="1",
                                                         kind="memory")])
            # A first: its DB creates the root object (the first commit).
            self.a = self.new_client()
            self.b = self.new_client()
        except BaseException:
            # unittest skips tearDown when setUp fails: clean up here.
            try:
                self.tearDown()
            except Exception:
                pass   # the setUp error is the one worth reporting
            raise

    def tearDown(self):
        errors = []
        for client in self.clients:
            try:
                client.close()
            except Exception as exc:   # close the others all the same
                errors.append(exc)
        self.stop_servers()
        if errors:
            raise errors[0]

    def new_client(self, **options):
        client = Client(self.server.addr, **options)
        self.clients.append(client)
        return client

    def eventually(self, client, predicate, what,
                   timeout=DELIVERY_TIMEOUT):
        """Begin new transactions on ``client`` until ``predicate()`` holds.

        Invalidations are asynchronous, so a client may need a moment (but
        only a moment) to learn of another client's commit."""
        deadline = time.monotonic() + timeout
        while True:
            client.begin()
            if predicate():
                return
            if time.monotonic() > deadline:
                self.fail(f"within {timeout:g}s the client never saw {what}")
            time.sleep(0.01)

    # -- visibility ----------------------------------------------------------

    def test_commit_becomes_visible_to_other_client(self):
        self.a.root()["x"] = 1
        self.a.commit()
        self.eventually(self.b, lambda: self.b.root().get("x") == 1,
                        "root['x'] == 1")
        # B now has the root cached; only an invalidation can make it
        # notice the next change.
        self.a.root()["x"] = 2
        self.a.commit()
        self.eventually(self.b, lambda: self.b.root().get("x") == 2,
                        "root['x'] == 2")

    def test_cached_object_is_invalidated_at_transaction_boundary(self):
        self.a.root()["obj"] = PersistentMapping(value=1)
        self.a.commit()
        self.eventually(self.b, lambda: "obj" in self.b.root(),
                        "root['obj']")
        obj_b = self.b.root()["obj"]
        self.assertEqual(obj_b["value"], 1)   # loaded into B's cache
        seen = len(self.b.recorder.snapshot())

        obj_a = self.a.root()["obj"]
        obj_a["value"] = 2
        self.a.commit()
        tid = obj_a._p_serial

        # Wait until B's client has received the invalidation ...
        self.b.recorder.wait_for(seen + 1)
        self.assertEqual(self.b.recorder.tids()[-1], tid)
        # ... B's current transaction still sees its snapshot (MVCC) ...
        self.assertEqual(obj_b["value"], 1)
        # ... and the next one sees the change, in the same cached object.
        self.b.begin()
        self.assertIs(self.b.root()["obj"], obj_b)
        self.assertEqual(obj_b["value"], 2)
        self.assertEqual(obj_b._p_serial, tid)

    def test_server_sync_client_sees_commit_on_next_begin(self):
        # With server_sync, begin() pings the server; the invalidation for
        # A's commit must be delivered before that ping is answered.
        c = self.new_client(server_sync=True)
        c.begin()
        self.assertNotIn("y", c.root())
        for value in range(1, 6):
            self.a.root()["y"] = value
            self.a.commit()
            c.begin()   # no polling: visible right away
            self.assertEqual(c.root()["y"], value)

    # -- delivery: once per transaction, never to the committer ---------------

    def test_each_transaction_invalidated_exactly_once(self):
        root_a = self.a.root()
        objs = [PersistentMapping(n=i) for i in range(5)]
        root_a["objs"] = objs
        self.a.commit()
        setup_tid = self.a.conn.root()._p_serial
        # Let the set-up commit arrive everywhere, then take a baseline.
        self.eventually(self.b, lambda: "objs" in self.b.root(), "objs")
        self.assertIn(setup_tid, self.b.recorder.tids())
        self.b.ping()
        self.a.ping()
        b_before = len(self.b.recorder.snapshot())
        a_before = self.a.recorder.snapshot()

        expected = []
        for i in range(5):
            first, second = objs[i], objs[(i + 1) % 5]
            first["n"] += 10
            second["touched"] = i
            self.a.commit()
            self.assertEqual(first._p_serial, second._p_serial)
            expected.append((first._p_serial,
                             frozenset([first._p_oid, second._p_oid])))

        self.b.recorder.wait_for(b_before + len(expected))
        time.sleep(QUIET_PERIOD)   # room for duplicates to (not) show up
        self.b.ping()
        self.a.ping()
        got = self.b.recorder.snapshot()[b_before:]
        self.assertEqual(got, expected,
                         "B must get each transaction once, in commit "
                         "order, with exactly the stored oids")
        # The committing client never hears about its own transactions.
        self.assertEqual(self.a.recorder.snapshot(), a_before)
        own = {tid for tid, _ in expected} | {setup_tid}
        self.assertFalse(own & set(self.a.recorder.tids()))

    def test_committer_gets_no_invalidation_but_others_do(self):
        c = self.new_client()
        self.a.root()["z"] = "from a"
        self.a.commit()
        tid = self.a.root()._p_serial
        for other in (self.b, c):
            self.eventually(other, lambda: tid in other.recorder.tids(),
                            "the invalidation for A's commit")
            self.assertEqual(other.recorder.tids().count(tid), 1)
        self.a.ping()
        self.assertNotIn(tid, self.a.recorder.tids())
        # And the other way round: B commits, A hears about it once.
        self.b.root()["z"] = "from b"
        self.b.commit()
        tid_b = self.b.root()._p_serial
        self.eventually(self.a, lambda: self.a.root()["z"] == "from b",
                        "B's change")
        self.b.ping()
        self.assertEqual(self.a.recorder.tids().count(tid_b), 1)
        self.assertNotIn(tid_b, self.b.recorder.tids())

    # -- write conflicts -------------------------------------------------------

    def test_unresolvable_write_conflict_raises_in_second_committer(self):
        self.a.root()["m"] = PersistentMapping(v=0)
        self.a.commit()
        self.eventually(self.b, lambda: "m" in self.b.root(), "root['m']")
        m_b = self.b.root()["m"]
        self.assertEqual(m_b["v"], 0)   # B read it in this transaction

        m_a = self.a.root()["m"]
        m_a["v"] = 1
        self.a.commit()

        m_b["v"] = 2                   # B writes based on the old state
        with self.assertRaises(ConflictError):
            self.b.commit()
        self.b.tm.abort()
        # A's write won; B sees it after the abort.
        self.eventually(self.b, lambda: self.b.root()["m"]["v"] == 1,
                        "A's value after the conflict")

    def test_resolvable_write_conflict_both_commit(self):
        self.a.root()["len"] = Length(0)
        self.a.commit()
        self.eventually(self.b, lambda: "len" in self.b.root(),
                        "root['len']")
        len_b = self.b.root()["len"]
        self.assertEqual(len_b(), 0)   # B read it in this transaction

        len_a = self.a.root()["len"]
        len_a.change(1)
        self.a.commit()

        len_b.change(1)                # based on the old state (0)
        self.b.commit()                # conflict at vote, resolved by B
        # B's commit is a later transaction than A's.  (len_b itself is a
        # ghost now: ZODB invalidates a resolved object after commit.)
        self.assertGreater(self.b.db.lastTransaction(), len_a._p_serial)

        for client in (self.a, self.b):
            self.eventually(client,
                            lambda: client.root()["len"]() == 2,
                            "both increments (Length == 2)")
        fresh = self.new_client()
        fresh.begin()
        self.assertEqual(fresh.root()["len"](), 2)


TEST_CLASSES = [InvalidationTests]

# Known failures apply to zeoraid only; under runzeo the names are still
# checked so a typo is caught either way.
load_suite = harness.prepare_module(
    TEST_CLASSES, KNOWN_FAILURES, mark=zeoraid_server.target() == "zeoraid")
