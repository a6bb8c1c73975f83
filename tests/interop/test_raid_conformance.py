"""ZODB's storage conformance tests through stock ZEO against a zeoraid
RAID-1 array, over each kind of backend layout.

The same mixins as test_conformance (ZEO's testZEO arrangement: a fresh
server per test, a stock ClientStorage to it), against a ``kind = "raid"``
storage whose backends are

* two stock Python ZEO servers (``runzeo``, msgpack, client conflict
  resolution) -- ``RaidRunzeoConformance``;
* two in-process Data.fs files -- ``RaidFileConformance``;
* one of each -- ``RaidMixedConformance``;
* two other zeoraid servers -- ``RaidZeoraidConformance``.

Every test must pass exactly as it does against a single storage: the
array is invisible to the client.  These run against the zeoraid target
only (runzeo has no arrays); under ZEORAID_INTEROP_TARGET=runzeo they are
skipped.
"""

import unittest

import harness
import zeoraid_server
from test_conformance import MemoryStorageConformance
from zeoraid_server import RAID_LAYOUTS
from zeoraid_server import StorageSpec


KNOWN_FAILURES = {}


class RaidConformance(MemoryStorageConformance):
    """The conformance mixins against an array of ``layout``."""

    layout = None

    def setUp(self):
        if zeoraid_server.target() != "zeoraid":
            self.skipTest("RAID arrays are a zeoraid feature")
        super().setUp()

    def _start(self):
        return self.start_server([StorageSpec(
            name="1", kind="raid", backends=RAID_LAYOUTS[self.layout])])


class RaidRunzeoConformance(RaidConformance):
    layout = "runzeo2"


class RaidFileConformance(RaidConformance):
    layout = "file2"


class RaidMixedConformance(RaidConformance):
    layout = "mixed"


class RaidZeoraidConformance(RaidConformance):
    layout = "zeoraid2"


TEST_CLASSES = [RaidRunzeoConformance, RaidFileConformance,
                RaidMixedConformance, RaidZeoraidConformance]

load_suite = harness.prepare_module(
    TEST_CLASSES, KNOWN_FAILURES, mark=zeoraid_server.target() == "zeoraid")
