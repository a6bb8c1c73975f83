"""A stock Python ZEO server (msgpack) whose loads fail the way RelStorage's
do behind ZEO's msgpack mode: the storage raises a POSKeyError whose
arguments msgpack cannot encode, so ZEO's server answers the client with
``ValueError("Couldn't pickle response")`` instead (issue #25).

    python foreign_error_zeo.py DIR

serves ``DIR/Data.fs`` as storage "1" on a free loopback port, prints
``listening on HOST:PORT`` once it listens, and fails every ``loadBefore``
while the file ``DIR/fail-loads`` exists.  Runs until killed.
"""

import os
import sys

import ZODB.FileStorage
import ZODB.POSException
from ZEO.StorageServer import StorageServer


class Opaque:
    """Something msgpack cannot encode (as RelStorage's exception args)."""


def main():
    directory = sys.argv[1]
    flag = os.path.join(directory, "fail-loads")

    class FlakyFileStorage(ZODB.FileStorage.FileStorage):
        def loadBefore(self, oid, tid):
            if os.path.exists(flag):
                raise ZODB.POSException.POSKeyError(oid, Opaque())
            return super().loadBefore(oid, tid)

    storage = FlakyFileStorage(os.path.join(directory, "Data.fs"))
    server = StorageServer(("127.0.0.1", 0), {"1": storage}, msgpack=True)
    host, port = server.acceptor.addr[:2]
    print(f"listening on {host}:{port}", flush=True)
    server.loop()


if __name__ == "__main__":
    main()
