"""A slow-link TCP proxy for the interop tests: a WAN between zeoraid and an
off-site mirror, on localhost.

``LinkProxy(target, delay=0.05, bandwidth=1_500_000)`` listens on
``127.0.0.1`` (``proxy.addr``) and forwards every connection to ``target``
(``(host, port)``), shaping each direction of each connection:

* **One-way delay.** A delay line per direction: a reader thread takes
  what arrives and queues it with the time it is due (arrival + delay); a
  writer thread sends each piece at its due time, in order.  A round trip
  therefore costs twice the delay, however the bytes are cut.
* **Bandwidth cap.** Per direction, shared by all connections (the link's
  capacity, in bytes per second; 0 is unlimited): the writers reserve
  transmission time on the direction's pacer and send a piece once it
  has been transmitted, in chunks of about 10 ms of the link.
* **Bounded buffers.** Each direction of a connection holds at most
  ``buffer_bytes`` on its delay line; beyond that its reader stops
  reading, so the sender meets TCP back-pressure as on a real link.
* **Outages.** ``cut()`` closes every connection (both ends) and, until
  ``restore()``, refuses new ones (``mode="refuse"``: accepted and reset
  at once) or swallows them (``mode="swallow"``: accepted, read and never
  answered, the way a black-holed route looks to a client waiting for a
  handshake; they are closed at ``restore()``).  ``restore()`` forwards
  new connections again.

What the proxy has read is on the wire: it arrives even if its sender
closes or dies meanwhile.  End-of-stream and resets travel through the
delay line like data, after the bytes before them (a half-close is
forwarded as a half-close, a reset as a reset); when a destination is
gone, what is still on its line is lost.  ``forwarded`` counts the bytes each direction has
delivered ("up": to the target, "down": back to the client),
``connections`` the connections forwarded, ``turned_away`` the ones
refused or swallowed.
"""

import collections
import socket
import struct
import threading
import time

UP, DOWN = "up", "down"


class Pacer:
    """Transmission time of one direction of the link (all connections)."""

    def __init__(self, bandwidth):
        self.lock = threading.Lock()
        self.bandwidth = bandwidth
        self.next_free = 0.0
        self.generation = 0      # bumped when the bandwidth changes

    def set(self, bandwidth):
        with self.lock:
            self.bandwidth = bandwidth
            self.next_free = time.monotonic()
            self.generation += 1

    def reserve(self, n):
        """(time the ``n`` bytes are through, generation); None if
        unlimited."""
        with self.lock:
            if not self.bandwidth:
                return None
            start = max(time.monotonic(), self.next_free)
            self.next_free = start + n / self.bandwidth
            return self.next_free, self.generation

    def chunk(self):
        """Bytes to send at once: about 10 ms of the link."""
        bw = self.bandwidth
        return max(1024, int(bw / 100)) if bw else 1 << 20


_EOF = object()
_RESET = object()


class _Pipe:
    """One direction of one connection: a delay line from ``src`` to
    ``dst``."""

    def __init__(self, link, direction, src, dst):
        self.link = link
        self.proxy = link.proxy
        self.direction = direction
        self.src, self.dst = src, dst
        self.line = collections.deque()   # (due, bytes | _EOF | _RESET)
        self.buffered = 0
        self.cond = threading.Condition()
        self.done = False

    def start(self):
        for fn, role in ((self._read, "read"), (self._write, "write")):
            threading.Thread(
                target=fn, daemon=True,
                name=f"linkproxy-{self.direction}-{role}").start()

    def stop(self):
        with self.cond:
            self.done = True
            self.cond.notify_all()

    def _read(self):
        try:
            while True:
                with self.cond:
                    while (self.buffered >= self.proxy.buffer_bytes
                           and not self.done):
                        self.cond.wait(0.2)
                    if self.done:
                        return
                try:
                    data = self.src.recv(65536)
                except OSError:
                    data = _RESET
                due = time.monotonic() + self.proxy.delay
                with self.cond:
                    if not data or data is _RESET:
                        # What was read is on the wire: it arrives, then
                        # the end of the stream (or the reset).
                        self.line.append((due, data or _EOF))
                        self.cond.notify_all()
                        return
                    self.line.append((due, data))
                    self.buffered += len(data)
                    self.cond.notify_all()
        finally:
            self.link.pipe_done(self, "read")

    def _write(self):
        pacer = self.proxy.pacers[self.direction]
        try:
            while True:
                with self.cond:
                    while not self.line and not self.done:
                        self.cond.wait(0.2)
                    if self.done:
                        return
                    due, data = self.line[0]
                if not self._sleep_until(due):
                    return
                if data is _EOF:
                    self.dst.shutdown(socket.SHUT_WR)
                    return
                if data is _RESET:
                    self.link.reset(self.dst)
                    return
                view = memoryview(data)
                while view:
                    piece = view[:pacer.chunk()]
                    reserved = pacer.reserve(len(piece))
                    if reserved is not None:
                        through, gen = reserved
                        if not self._sleep_until(
                                through, lambda: pacer.generation != gen):
                            return
                    self.dst.sendall(piece)
                    view = view[len(piece):]
                    self.proxy._count(self.direction, len(piece))
                with self.cond:
                    self.line.popleft()
                    self.buffered -= len(data)
                    self.cond.notify_all()
        except OSError:
            # The destination is gone: what is still on this line is
            # lost; the other direction notices by itself (its reader
            # reads from that end).
            pass
        finally:
            self.stop()
            self.link.pipe_done(self, "write")

    def _sleep_until(self, when, cancel=None):
        """Sleep until ``when`` (monotonic); False if the pipe stopped.
        Ends early once ``cancel()`` is true."""
        while True:
            if self.done:
                return False
            left = when - time.monotonic()
            if left <= 0 or (cancel is not None and cancel()):
                return True
            time.sleep(min(left, 0.05))


class _Link:
    """A forwarded connection: client <-> proxy <-> target."""

    def __init__(self, proxy, client, upstream):
        self.proxy = proxy
        self.client, self.upstream = client, upstream
        self.lock = threading.Lock()
        self.dead = False
        self.finished = set()
        self.pipes = [_Pipe(self, UP, client, upstream),
                      _Pipe(self, DOWN, upstream, client)]

    def start(self):
        for p in self.pipes:
            p.start()

    def pipe_done(self, pipe, role):
        """A thread of a pipe ended; the connection is closed once all
        four have."""
        with self.lock:
            self.finished.add((pipe.direction, role))
            all_done = len(self.finished) == 4
        if all_done:
            self.kill()

    def reset(self, s):
        """Reset ``s`` (the far end of a stream whose sender was reset),
        waking the thread that reads from it."""
        try:
            s.shutdown(socket.SHUT_RD)
        except OSError:
            pass
        _close(s, reset=True)

    def kill(self):
        with self.lock:
            if self.dead:
                return
            self.dead = True
        for p in self.pipes:
            p.stop()
        for s in (self.client, self.upstream):
            _close(s)
        self.proxy._forget(self)


def _close(s, reset=False):
    try:
        if reset:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                         struct.pack("ii", 1, 0))
        else:
            s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


class LinkProxy:
    """See the module doc."""

    def __init__(self, target, delay=0.0, bandwidth=0,
                 buffer_bytes=256 * 1024):
        self.target = tuple(target)
        self.delay = float(delay)
        self.buffer_bytes = int(buffer_bytes)
        self.pacers = {UP: Pacer(bandwidth), DOWN: Pacer(bandwidth)}
        self.lock = threading.Lock()
        self.links = set()
        self.swallowed = []
        self.mode = None            # None: forwarding; "refuse"/"swallow"
        self.forwarded = {UP: 0, DOWN: 0}
        self.connections = 0
        self.turned_away = 0
        self.closed = threading.Event()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.2)
        self.addr = self.listener.getsockname()
        self._acceptor = threading.Thread(target=self._accept, daemon=True,
                                          name="linkproxy-accept")
        self._acceptor.start()

    @property
    def address(self):
        """``HOST:PORT`` for a config file."""
        return f"{self.addr[0]}:{self.addr[1]}"

    # -- shaping -------------------------------------------------------------

    def set_delay(self, seconds):
        """One-way delay of what arrives from now on."""
        self.delay = float(seconds)

    def set_bandwidth(self, bytes_per_second):
        """Capacity of each direction (0: unlimited); takes effect at once,
        also for what is already on the delay line."""
        for p in self.pacers.values():
            p.set(bytes_per_second)

    # -- outages -------------------------------------------------------------

    def cut(self, mode="swallow"):
        """Close every connection; until ``restore()``, refuse or swallow
        new ones."""
        if mode not in ("refuse", "swallow"):
            raise ValueError(mode)
        with self.lock:
            self.mode = mode
            links = list(self.links)
        for link in links:
            link.kill()

    def restore(self):
        """Forward new connections again (swallowed ones are closed)."""
        with self.lock:
            self.mode = None
            swallowed, self.swallowed = self.swallowed, []
        for s in swallowed:
            _close(s)

    @property
    def is_cut(self):
        return self.mode is not None

    # -- life cycle ----------------------------------------------------------

    def close(self):
        self.closed.set()
        try:
            self.listener.close()
        except OSError:
            pass
        self._acceptor.join(2)
        self.cut("refuse")
        self.restore()

    def _accept(self):
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self.lock:
                mode = self.mode
                if mode is not None:
                    self.turned_away += 1
            if mode == "refuse":
                _close(client, reset=True)
                continue
            if mode == "swallow":
                with self.lock:
                    self.swallowed.append(client)
                threading.Thread(target=self._swallow, args=(client,),
                                 daemon=True,
                                 name="linkproxy-swallow").start()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                # The far end is down: the client sees its connection
                # closed, as it would through a working link.
                _close(client, reset=True)
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(self, client, upstream)
            with self.lock:
                if self.mode is not None:       # cut meanwhile
                    _close(client, reset=True)
                    _close(upstream)
                    continue
                self.links.add(link)
                self.connections += 1
            link.start()

    def _swallow(self, s):
        try:
            while s.recv(65536):
                pass
        except OSError:
            pass

    def _forget(self, link):
        with self.lock:
            self.links.discard(link)

    def _count(self, direction, n):
        with self.lock:
            self.forwarded[direction] += n
