"""Stock ZEO ``runzeo``, announcing its address the way zeoraid does.

Used by zeoraid_server.py when ZEORAID_INTEROP_TARGET=runzeo.  It runs the
unmodified ``ZEO.runzeo.ZEOServer`` (same options, same ZConfig file, same
signal handling: SIGTERM exits 0) and only adds one thing: once the server
socket is bound, it prints ``zeoraid: listening on HOST:PORT`` on stdout.
runzeo itself logs only the address it was asked for ("127.0.0.1:0"), not
the port the kernel picked, so this is how the harness learns the port
without racing for a free one.

    python runzeo_shim.py -C zeo.conf
"""

import sys

from ZEO.runzeo import ZEOOptions
from ZEO.runzeo import ZEOServer


class AnnouncingZEOServer(ZEOServer):

    def create_server(self):
        super().create_server()
        host, port = self.server.acceptor.addr[:2]
        print(f"zeoraid: listening on {host}:{port}", flush=True)


def main(args=None):
    options = ZEOOptions()
    options.realize(args)
    AnnouncingZEOServer(options).main()


if __name__ == "__main__":
    main(sys.argv[1:])
