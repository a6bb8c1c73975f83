"""ZODB's storage conformance tests through stock ZEO against a zeoraid
RAID-1 array, over each kind of backend layout.

The same mixins as test_conformance (ZEO's testZEO arrangement: a fresh
server per test, a stock ClientStorage to it), against a ``kind = "raid"``
storage whose backends are

* two stock Python ZEO servers (``runzeo``, msgpack, client conflict
  resolution) -- ``RaidRunzeoConformance``;
* two in-process Data.fs files -- ``RaidFileConformance``;
* two Data.fs files behind a 2 KB object cache (always evicting) --
  ``RaidFileTinyCacheConformance`` (the others run with the default
  cache, 64 MB);
* one of each -- ``RaidMixedConformance``;
* two other zeoraid servers -- ``RaidZeoraidConformance``;
* two default-config runzeo (no ``msgpack`` line: the pickle flavour,
  "Z5", which zeoraid's backend client speaks too) --
  ``RaidRunzeoPickleConformance``.  The whole set over this layout takes
  about two minutes on a two-core machine, so it runs the mixins that put
  the most variety on the wire (Basic, Revision, Synchronization, MT,
  Packable, Iterator, TransactionalUndo, ConflictResolution, History) and
  ``test_backends_talk_pickle``, which checks that the backends really
  were spoken to in pickle.

Every test must pass exactly as it does against a single storage: the
array is invisible to the client.  These run against the zeoraid target
only (runzeo has no arrays); under ZEORAID_INTEROP_TARGET=runzeo they are
skipped.
"""

import unittest

from ZODB.tests import BasicStorage
from ZODB.tests import ConflictResolution
from ZODB.tests import HistoryStorage
from ZODB.tests import IteratorStorage
from ZODB.tests import MTStorage
from ZODB.tests import PackableStorage
from ZODB.tests import RevisionStorage
from ZODB.tests import Synchronization
from ZODB.tests import TransactionalUndoStorage

import harness
import zeoraid_server
from test_conformance import MemoryStorageConformance
from test_conformance import ZEOServerTestBase
from test_raid import ruok
from zeoraid_server import RAID_LAYOUTS
from zeoraid_server import StorageSpec


KNOWN_FAILURES = {}


class RaidArray:
    """Mixin for a ZEOServerTestBase: the server is an array of
    ``layout``, zeoraid only."""

    layout = None
    raid_options = ""

    def setUp(self):
        if zeoraid_server.target() != "zeoraid":
            self.skipTest("RAID arrays are a zeoraid feature")
        super().setUp()

    def _start(self):
        return self.start_server([StorageSpec(
            name="1", kind="raid", backends=RAID_LAYOUTS[self.layout],
            raid_options=self.raid_options)])


class RaidConformance(RaidArray, MemoryStorageConformance):
    """The conformance mixins against an array of ``layout``."""


class RaidRunzeoConformance(RaidConformance):
    layout = "runzeo2"


class RaidFileConformance(RaidConformance):
    layout = "file2"


class RaidFileTinyCacheConformance(RaidConformance):
    """Two file mirrors behind an object cache of 2 KB: it evicts at
    nearly every fill, so every mixin runs through fills, evictions and
    misses racing commits.  (Every other class runs with the default
    cache, 64 MB: nearly everything it reads after a commit is a hit.)"""

    layout = "file2"
    raid_options = 'cache-size = "2KB"'

    def test_the_object_cache_is_tiny_and_used(self):
        self._dostore()
        status = ruok(self._interop_servers[0].addr)["1"]["raid"]["cache"]
        self.assertEqual(status["capacity"], 2048)
        self.assertLessEqual(status["size"], 2048)


class RaidMixedConformance(RaidConformance):
    layout = "mixed"


class RaidZeoraidConformance(RaidConformance):
    layout = "zeoraid2"


class RaidRunzeoPickleConformance(
        RaidArray, ZEOServerTestBase,
        BasicStorage.BasicStorage,
        RevisionStorage.RevisionStorage,
        Synchronization.SynchronizedStorage,
        MTStorage.MTStorage,
        PackableStorage.PackableStorage,
        IteratorStorage.IteratorStorage,
        TransactionalUndoStorage.TransactionalUndoStorage,
        ConflictResolution.ConflictResolvingStorage,
        HistoryStorage.HistoryStorage):
    """The wire-heavy mixins against an array of two default-config
    (pickle) runzeo."""

    layout = "runzeo-pickle2"

    def test_backends_talk_pickle(self):
        self._dostore()
        self.assertEqual(
            [], zeoraid_server.pickle_problems(self._interop_servers[0]))


TEST_CLASSES = [RaidRunzeoConformance, RaidFileConformance,
                RaidFileTinyCacheConformance,
                RaidMixedConformance, RaidZeoraidConformance,
                RaidRunzeoPickleConformance]

load_suite = harness.prepare_module(
    TEST_CLASSES, KNOWN_FAILURES, mark=zeoraid_server.target() == "zeoraid")
