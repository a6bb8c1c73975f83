"""zeoraid's conflict-resolution helper.

zeoraid starts this with the interpreter named by `[conflict-resolution]
python` (one that can import ZODB and the application's classes); it is
not meant to be run by hand.  Each request merges two changes of one
object exactly as ZODB's `tryToResolveConflict` does on a Python storage
server: the application class's `_p_resolveConflict(old, committed, new)`.

Frames on stdin: u32 field count, then each field as u32 length + bytes
(big-endian).  Zero fields is a ping.  Four fields: oid, old state,
committed state, new state (pickles).  Reply on stdout: u8 status (0
resolved, 1 not resolvable, 2 helper error), u32 length, bytes (the merged
pickle, or a message).  Extra command-line arguments are put in front of
sys.path.
"""

import struct
import sys


def main():
    inp = sys.stdin.buffer
    out = sys.stdout.buffer
    # Whatever application code prints must not corrupt the replies.
    sys.stdout = sys.stderr
    sys.path[:0] = sys.argv[1:]

    from ZODB.ConflictResolution import ConflictResolvingStorage
    from ZODB.POSException import ConflictError

    old_serial, committed_serial = b"\0" * 7 + b"\1", b"\0" * 7 + b"\2"

    class States(ConflictResolvingStorage):
        """The two states the merge needs, as loadSerial answers them."""

        def __init__(self, old, committed):
            self.states = {old_serial: old, committed_serial: committed}

        def loadSerial(self, oid, serial):
            return self.states[serial]

    def read(n):
        b = inp.read(n)
        if len(b) != n:
            raise EOFError
        return b

    def reply(status, data):
        out.write(struct.pack(">BI", status, len(data)))
        out.write(data)
        out.flush()

    while True:
        try:
            (count,) = struct.unpack(">I", read(4))
            fields = [read(struct.unpack(">I", read(4))[0]) for _ in range(count)]
        except EOFError:
            return
        if not fields:
            reply(0, b"")
            continue
        try:
            oid, old, committed, new = fields
            merged = States(old, committed).tryToResolveConflict(
                oid, committed_serial, old_serial, new, committed)
            reply(0, merged)
        except ConflictError as e:
            reply(1, str(e).encode("utf-8", "replace"))
        except Exception as e:  # noqa: B902 -- reported, never fatal
            reply(2, repr(e).encode("utf-8", "replace"))


main()
