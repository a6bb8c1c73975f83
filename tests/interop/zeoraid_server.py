"""Start and stop a ZEO server for the interop tests.

The interop suite talks to the server only through stock ZEO clients, so
the server under test is a black box behind ``(host, port)``.  Two targets
can stand behind it, chosen by the environment variable
``ZEORAID_INTEROP_TARGET``:

``zeoraid`` (the default)
    The binary named by ``ZEORAID_BIN`` (``target/debug/zeoraid``), started
    as ``zeoraid serve --config FILE`` with a TOML config written to a fresh
    temporary directory.  When it listens it prints exactly one line to
    stdout, ``zeoraid: listening on HOST:PORT``; its logs go to stderr.
    Unless ``resolver=False``, the config names this interpreter (which can
    import ZODB's test classes) in ``[conflict-resolution]``, so undo merges
    states on the server as ZEO's own test setup does.

``runzeo``
    Stock Python ``ZEO.runzeo`` (through ``runzeo_shim.py``, which prints the
    same listening line), with ``msgpack true`` so it speaks the protocol
    zeoraid serves (``Server(..., msgpack=False)`` leaves the line out:
    runzeo's default, the pickle flavour "Z5", which zeoraid's backend
    client also speaks; an array's backend kind "runzeo-pickle").  This validates the harness and the tests themselves
    against the reference implementation, configured as ZEO's own test
    suite configures it.  Conflicts are resolved on the server, as ZEO does
    by default; ``ZEORAID_INTEROP_RUNZEO_CLIENT_CR=1`` adds
    ``client-conflict-resolution true``, which is how zeoraid behaves (it
    never unpickles, so the client resolves conflicts after ``vote``; the
    one thing that cannot work that way is conflict resolution *inside an
    undo*, which ZODB only does in the server).  zeoraid's ``memory``
    storages support undo, history and iteration, which ``MappingStorage``
    does not, so runzeo serves every storage as a ``<filestorage>`` unless
    ``ZEORAID_INTEROP_RUNZEO_STORAGE=mapping``.

Typical use::

    server = Server([StorageSpec(name="1", kind="memory")])
    host, port = server.start()
    try:
        ...  # ZEO.ClientStorage.ClientStorage((host, port)) etc.
    finally:
        server.stop()
        server.cleanup()

TLS and Unix sockets (test_tls): ``Server(..., tls=TlsSpec(certificate,
key, client_ca))`` puts the listener on TLS (zeoraid's ``[server.tls]``,
runzeo's ``<ssl>``, which requires ``client_ca`` as ``authenticate``);
``listen="/dir/zeo.sock"`` makes zeoraid listen on a Unix socket, and then
``addr`` is that path (what ClientStorage takes); ``server_toml`` adds
lines to zeoraid's ``[server]``; ``log_level`` sets its ``RUST_LOG``.

Everything the server wrote to stderr is kept in a file in its temporary
directory; ``log_tail()`` returns the end of it so a failing test can show
what the server said, ``log_text()`` all of it for log assertions.
"""

import atexit
import ctypes
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass


TARGET_ENV = "ZEORAID_INTEROP_TARGET"
BIN_ENV = "ZEORAID_BIN"
RUNZEO_STORAGE_ENV = "ZEORAID_INTEROP_RUNZEO_STORAGE"
RUNZEO_PYTHON_ENV = "ZEORAID_RUNZEO_PYTHON"
RUNZEO_CLIENT_CR_ENV = "ZEORAID_INTEROP_RUNZEO_CLIENT_CR"

TARGETS = ("zeoraid", "runzeo")

# How long a server may take to print its listening line, and how long it
# may take to exit after SIGTERM before it is killed.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

# The one line a server prints on stdout once it accepts connections:
# "zeoraid: listening on HOST:PORT", or "... on unix:PATH" for a server on
# a Unix socket.
LISTEN_RE = re.compile(
    r"^zeoraid: listening on (?:unix:(?P<path>/\S.*?)|"
    r"(?P<host>\[[^\]]+\]|[^\s:]+):(?P<port>\d+))\s*$")

HERE = os.path.dirname(os.path.abspath(__file__))

# The directory relative paths in the environment are taken from: ZODB's
# test setUp changes directory, so it is captured at import time.
_INITIAL_CWD = os.getcwd()

# Captured at import time: ZODB's test setUp points tempfile.tempdir at a
# per-test directory that it deletes in tearDown, and server directories
# must not live (or die) inside it.
_BASE_TMP = tempfile.gettempdir()


class HarnessError(RuntimeError):
    """The harness could not start or stop a server (not a test failure of
    the server's protocol behaviour, but still a failure)."""


def target():
    """The server implementation under test: 'zeoraid' or 'runzeo'."""
    value = os.environ.get(TARGET_ENV, "zeoraid").strip() or "zeoraid"
    if value not in TARGETS:
        raise HarnessError(
            f"{TARGET_ENV}={value!r}: expected one of {', '.join(TARGETS)}")
    return value


def zeoraid_binary():
    """Path of the zeoraid binary from $ZEORAID_BIN; fails loudly if unusable
    (a missing binary must fail the suite, never skip it)."""
    path = os.environ.get(BIN_ENV)
    if not path:
        raise HarnessError(
            f"{BIN_ENV} is not set: point it at the zeoraid binary "
            "(e.g. target/debug/zeoraid after `cargo build --bins`), or set "
            f"{TARGET_ENV}=runzeo to test against stock Python runzeo")
    path = os.path.join(_INITIAL_CWD, path)   # no-op if already absolute
    if not os.path.isfile(path):
        raise HarnessError(f"{BIN_ENV}={path!r}: no such file "
                           "(run `cargo build --bins` first)")
    if not os.access(path, os.X_OK):
        raise HarnessError(f"{BIN_ENV}={path!r}: not executable")
    return path


@dataclass
class TlsSpec:
    """TLS on a server's listener: zeoraid's ``[server.tls]``, runzeo's
    ``<ssl>`` (PEM file paths)."""
    certificate: str
    key: str
    # Only clients with a certificate from this CA get in (zeoraid's
    # client-ca, runzeo's authenticate; runzeo requires it).
    client_ca: str = None
    # zeoraid only: seconds a client has for its handshake (None: default).
    handshake_timeout: float = None


@dataclass
class StorageSpec:
    """One ``[[storage]]`` section of the server config."""
    name: str = "1"          # ZEO's default storage name
    kind: str = "memory"     # "memory", "file" or "raid"
    read_only: bool = False
    path: str = None         # kind="file": data file; default in server dir
    # kind="raid": one entry per backend, in order: "file" or "memory" (in
    # process), "runzeo" (a stock Python ZEO server this harness starts,
    # msgpack on, otherwise ZEO's defaults: it resolves conflicts itself),
    # "runzeo-pickle" (the same without the msgpack line: runzeo's default
    # config, the pickle flavour) or "zeoraid" (a second zeoraid server
    # with a memory storage).  Or a
    # tuple ("zeo", ADDRESS) for a ZEO server the test runs itself, or
    # ("zeo", ADDRESS, EXTRA) where EXTRA is TOML added to that backend's
    # section (e.g. its [storage.backend.tls] table).
    backends: tuple = ()
    raid_options: str = ""   # extra TOML lines for the [[storage]] section
    # kind="file" or "memory": the server's blob directory (zeoraid's
    # blob-dir, runzeo's <filestorage> blob-dir); None: no key (a zeoraid
    # memory storage then keeps its blobs in a temporary directory).
    blob_dir: str = None
    # kind="file": False writes pack-gc = false (zeoraid) / pack-gc false
    # (runzeo); None leaves the server's default (gc on).
    pack_gc: bool = None
    # kind="raid": the backends keep blobs (file backends: a blob-dir of
    # their own; runzeo backends: a blob-dir on their server and a blob
    # cache in zeoraid).
    backend_blobs: bool = False


# The backend combinations the conformance suites run against (the RAID
# issue's (a) to (d)).
RAID_LAYOUTS = {
    "runzeo2": ("runzeo", "runzeo"),
    "runzeo-pickle2": ("runzeo-pickle", "runzeo-pickle"),
    "file2": ("file", "file"),
    "mixed": ("runzeo", "file"),
    "zeoraid2": ("zeoraid", "zeoraid"),
}

# The backend kinds the harness starts a server process for (the others
# live inside zeoraid), and for each its (target, msgpack).
SERVER_BACKENDS = {
    "runzeo": ("runzeo", True),
    "runzeo-pickle": ("runzeo", False),
    "zeoraid": ("zeoraid", True),
}


# ---------------------------------------------------------------------------
# Making sure no server outlives the test process.
#
# atexit covers normal exits; PR_SET_PDEATHSIG covers the test process being
# killed (e.g. by the per-test watchdog in harness.py, which exits through
# os._exit and so skips atexit).  Note that Linux delivers the death signal
# when the *thread* that forked the server exits, so servers must be started
# from a long-lived thread (the harness only starts them from the main one).

_live_servers = set()
_live_lock = threading.Lock()


def _kill_live_servers():
    """Kill every server still running and delete its directory."""
    with _live_lock:
        servers = list(_live_servers)
    for server in servers:
        server._kill_quietly()
        shutil.rmtree(server.dir, ignore_errors=True)


atexit.register(_kill_live_servers)

try:
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _PRCTL = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent():
    # Runs in the child between fork and exec: keep it minimal.
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


# ---------------------------------------------------------------------------


class Server:
    """One server process (zeoraid or runzeo) serving ``storages``."""

    def __init__(self, storages=None, workers=4, invalidation_queue_size=100,
                 target_name=None, extra_toml="", resolver=True,
                 transaction_timeout=None, client_conflict_resolution=None,
                 listen=None, server_toml="", tls=None, log_level=None,
                 msgpack=True):
        self.storages = list(storages or [StorageSpec()])
        self.workers = workers
        self.invalidation_queue_size = invalidation_queue_size
        # Seconds a client may hold a commit lock (None: no limit); zeoraid's
        # [server] transaction-timeout, runzeo's <zeo> transaction-timeout.
        self.transaction_timeout = transaction_timeout
        # runzeo only: True adds client-conflict-resolution (conflicts go
        # back to the client after vote, as zeoraid without a resolver);
        # None leaves it to ZEORAID_INTEROP_RUNZEO_CLIENT_CR.
        self.client_conflict_resolution = client_conflict_resolution
        self.target = target_name or target()
        self.extra_toml = extra_toml
        self.resolver = resolver
        # Where to listen: None is 127.0.0.1 on a free port; a path (with a
        # "/") is a Unix socket (zeoraid only); then ``addr`` is that path,
        # which is what ZEO's ClientStorage takes for a Unix socket.
        self.listen = listen
        # zeoraid only: extra TOML at the end of [server] (keys such as
        # socket-mode, then subtables).
        self.server_toml = server_toml
        # TlsSpec: TLS on the listener (None: plaintext).
        self.tls = tls
        # RUST_LOG for zeoraid (None: the environment's, or zeoraid's
        # default, info).
        self.log_level = log_level
        # runzeo only: False leaves out ``msgpack true`` (runzeo's default
        # config: the pickle flavour).
        self.msgpack = msgpack
        if not msgpack and self.target != "runzeo":
            raise HarnessError("msgpack=False is a runzeo setting (zeoraid "
                               "serves msgpack only)")
        if listen is not None and self.target != "zeoraid":
            raise HarnessError("listen= is supported for zeoraid only")
        self.dir = tempfile.mkdtemp(prefix="zeoraid-interop-", dir=_BASE_TMP)
        # Backend servers of RAID storages (started before, stopped after).
        self.backend_servers = []
        self.config_path = None
        self.stderr_path = os.path.join(self.dir, "server.stderr")
        self.argv = None
        self.proc = None
        self.addr = None
        self.returncode = None
        self.killed = False            # needed SIGKILL after SIGTERM timed out
        self._stop_timeout = STOP_TIMEOUT
        self.exited_early = False      # process was gone before stop()
        self._stdout_lines = []
        self._reader = None

    # -- configuration -------------------------------------------------------

    def _storage_path(self, spec):
        return spec.path or os.path.join(self.dir, f"storage-{spec.name}.fs")

    def _zeoraid_config(self):
        # json.dumps yields valid TOML basic strings for our values.
        q = json.dumps
        lines = [
            "[server]",
            f"listen = {q(self.listen or '127.0.0.1:0')}",
            f"workers = {int(self.workers)}",
            f"invalidation-queue-size = {int(self.invalidation_queue_size)}",
        ]
        if self.transaction_timeout is not None:
            lines.append(
                f"transaction-timeout = {float(self.transaction_timeout)!r}")
        if self.server_toml:
            lines.append(self.server_toml)
        if self.tls is not None:
            lines += ["[server.tls]",
                      f"certificate = {q(self.tls.certificate)}",
                      f"key = {q(self.tls.key)}"]
            if self.tls.client_ca:
                lines.append(f"client-ca = {q(self.tls.client_ca)}")
            if self.tls.handshake_timeout is not None:
                lines.append(f"handshake-timeout = "
                             f"{float(self.tls.handshake_timeout)!r}")
        lines.append("")
        for spec in self.storages:
            lines += [
                "[[storage]]",
                f"name = {q(spec.name)}",
                f"kind = {q(spec.kind)}",
                f"read-only = {'true' if spec.read_only else 'false'}",
            ]
            if spec.kind == "file":
                lines.append(f"path = {q(self._storage_path(spec))}")
            if spec.blob_dir is not None:
                lines.append(f"blob-dir = {q(spec.blob_dir)}")
            if spec.pack_gc is not None:
                lines.append(
                    f"pack-gc = {'true' if spec.pack_gc else 'false'}")
            if spec.kind == "raid":
                lines += self._raid_lines(spec)
            lines.append("")
        if self.resolver:
            lines += ["[conflict-resolution]",
                      f"python = {q(sys.executable)}", ""]
        if self.extra_toml:
            lines.append(self.extra_toml)
        return "\n".join(lines) + "\n"

    def _raid_lines(self, spec):
        """The array's keys and its [[storage.backend]] sections; starts
        the backend servers it needs."""
        q = json.dumps
        lines = [f"state-file = {q(os.path.join(self.dir, f'raid-{spec.name}.state'))}"]
        if spec.raid_options:
            lines.append(spec.raid_options)
        if not spec.backends:
            raise HarnessError("a raid StorageSpec needs backends")
        for i, kind in enumerate(spec.backends):
            if isinstance(kind, tuple):
                # ("zeo", "HOST:PORT"[, EXTRA]): a ZEO server the test runs
                # itself; EXTRA is more TOML for this backend.
                _, address, *extra = kind
                lines += ["[[storage.backend]]", f'name = "zeo-{i}"',
                          'kind = "zeo"', f"address = {q(address)}"]
                lines += [e for e in extra if e]
                continue
            name = f"{kind}-{i}"
            lines.append("[[storage.backend]]")
            lines.append(f"name = {q(name)}")
            if kind in ("file", "memory"):
                lines.append(f"kind = {q(kind)}")
                if kind == "file":
                    path = os.path.join(self.dir, f"raid-{spec.name}-{i}.fs")
                    lines.append(f"path = {q(path)}")
                    if spec.backend_blobs:
                        blobs = os.path.join(self.dir,
                                             f"raid-{spec.name}-{i}.blobs")
                        lines.append(f"blob-dir = {q(blobs)}")
            elif kind in SERVER_BACKENDS:
                backend_target, msgpack = SERVER_BACKENDS[kind]
                blobs = None
                if spec.backend_blobs:
                    blobs = os.path.join(self.dir,
                                         f"raid-{spec.name}-{i}.server-blobs")
                    lines.append(f"blob-dir = {q(os.path.join(self.dir, f'raid-{spec.name}-{i}.cache'))}")
                backend = Server(
                    [StorageSpec(name="1", kind="file"
                                 if backend_target == "runzeo" else "memory",
                                 blob_dir=blobs)],
                    target_name=backend_target, resolver=self.resolver,
                    client_conflict_resolution=False, msgpack=msgpack)
                self.backend_servers.append(backend)
                host, port = backend.start()
                lines += ['kind = "zeo"', f"address = {q(f'{host}:{port}')}",
                          'storage = "1"']
            else:
                raise HarnessError(f"unknown RAID backend kind {kind!r}")
        return lines

    def _runzeo_config(self):
        lines = ["<zeo>", "  address 127.0.0.1:0"]
        if self.msgpack:
            lines.append("  msgpack true")
        lines.append(
            f"  invalidation-queue-size {int(self.invalidation_queue_size)}")
        client_cr = self.client_conflict_resolution
        if client_cr is None:
            client_cr = os.environ.get(RUNZEO_CLIENT_CR_ENV, "0") not in (
                "", "0")
        if client_cr:
            # As zeoraid: conflicts go back to the client after vote.
            lines.append("  client-conflict-resolution true")
        if self.transaction_timeout is not None:
            # ZConfig's "integer" datatype: whole seconds, at least 1.
            lines.append(f"  transaction-timeout "
                         f"{max(1, round(self.transaction_timeout))}")
        if self.tls is not None:
            if not self.tls.client_ca:
                raise HarnessError("runzeo's <ssl> requires authenticate: "
                                   "give the TlsSpec a client_ca")
            if self.tls.handshake_timeout is not None:
                raise HarnessError("runzeo has no TLS handshake timeout")
            lines += ["  <ssl>",
                      f"    certificate {self.tls.certificate}",
                      f"    key {self.tls.key}",
                      f"    authenticate {self.tls.client_ca}",
                      "  </ssl>"]
        lines.append("</zeo>")
        flavour = os.environ.get(RUNZEO_STORAGE_ENV, "file")
        if flavour not in ("file", "mapping"):
            raise HarnessError(
                f"{RUNZEO_STORAGE_ENV}={flavour!r}: expected file or mapping")
        for spec in self.storages:
            if spec.kind == "memory" and flavour == "mapping":
                if spec.read_only:
                    raise HarnessError(
                        "runzeo: a read-only mappingstorage cannot be "
                        "configured; use the file flavour")
                if spec.blob_dir is not None:
                    lines += [f"<blobstorage {spec.name}>",
                              f"  blob-dir {spec.blob_dir}",
                              "  <mappingstorage>", "  </mappingstorage>",
                              "</blobstorage>"]
                    continue
                lines += [f"<mappingstorage {spec.name}>",
                          "</mappingstorage>"]
                continue
            path = self._storage_path(spec)
            if spec.read_only and not os.path.exists(path):
                # A read-only FileStorage must exist: create an empty one.
                import ZODB.FileStorage
                ZODB.FileStorage.FileStorage(path).close()
            lines += [f"<filestorage {spec.name}>",
                      f"  path {path}",
                      f"  read-only {'true' if spec.read_only else 'false'}"]
            if spec.blob_dir is not None:
                lines.append(f"  blob-dir {spec.blob_dir}")
            if spec.pack_gc is not None:
                lines.append(
                    f"  pack-gc {'true' if spec.pack_gc else 'false'}")
            lines.append("</filestorage>")
        return "\n".join(lines) + "\n"

    def _prepare(self):
        if self.target == "zeoraid":
            self.config_path = os.path.join(self.dir, "zeoraid.toml")
            text = self._zeoraid_config()
            self.argv = [zeoraid_binary(), "serve", "--config",
                         self.config_path]
        else:
            self.config_path = os.path.join(self.dir, "zeo.conf")
            text = self._runzeo_config()
            python = os.environ.get(RUNZEO_PYTHON_ENV) or sys.executable
            self.argv = [python, os.path.join(HERE, "runzeo_shim.py"),
                         "-C", self.config_path]
        with open(self.config_path, "w") as f:
            f.write(text)

    # -- life cycle ----------------------------------------------------------

    def start(self, timeout=START_TIMEOUT, _prepare=True):
        """Start the server; return (host, port) once it listens.

        Raises HarnessError (with the server's stderr) if it exits or stays
        silent for ``timeout`` seconds."""
        if self.proc is not None:
            raise HarnessError("server already started")
        if _prepare:
            self._prepare()
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        if self.log_level is not None:
            env["RUST_LOG"] = self.log_level
        stderr = open(self.stderr_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=stderr, cwd=self.dir, env=env,
                preexec_fn=_die_with_parent)
        except OSError as exc:
            raise HarnessError(f"cannot start {self.argv[0]}: {exc}") from exc
        finally:
            stderr.close()
        with _live_lock:
            _live_servers.add(self)

        # A reader thread owns stdout: it hands over the first line and keeps
        # draining afterwards so the server can never block on a full pipe.
        first_line = queue.Queue()
        self._reader = threading.Thread(
            target=self._read_stdout, args=(first_line,),
            name=f"zeoraid-stdout-{self.proc.pid}", daemon=True)
        self._reader.start()

        deadline = time.monotonic() + timeout
        line = None
        while line is None:
            left = deadline - time.monotonic()
            if left <= 0:
                self._kill_quietly()
                raise HarnessError(
                    f"server did not print its listening line within "
                    f"{timeout:g}s\n{self.describe()}")
            try:
                line = first_line.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
        if line == "":  # EOF: the process closed stdout, i.e. it exited
            rc = self._wait_briefly()
            self._forget()
            raise HarnessError(
                f"server exited (rc={rc}) before listening\n"
                f"{self.describe()}")
        m = LISTEN_RE.match(line.rstrip("\r\n"))
        if not m:
            self._kill_quietly()
            raise HarnessError(
                f"unexpected first stdout line {line!r} (expected "
                f"'zeoraid: listening on HOST:PORT' or '... on unix:PATH')"
                f"\n{self.describe()}")
        if m.group("path"):
            self.addr = m.group("path")
            return self.addr
        host = m.group("host").strip("[]")
        self.addr = (host, int(m.group("port")))
        return self.addr

    def restart(self, timeout=START_TIMEOUT):
        """Start the server again after it stopped or was killed: same
        config file, same data, same directory (and state file), same port,
        stderr appended to the same file.  A RAID array's backend servers
        are left as they are (they are not started again)."""
        if self.proc is None or self.addr is None:
            raise HarnessError("restart: the server was never started")
        if self.proc.poll() is None:
            raise HarnessError("restart: the server is still running")
        self._forget()
        # Listen on the port it had: an array names its backends by address.
        # (A Unix socket server listens on the configured path again.)
        unix = isinstance(self.addr, str)
        port = None if unix else self.addr[1]
        with open(self.config_path) as f:
            text = f.read()
        if unix:
            pass   # the config names the path; nothing to pin
        elif self.target == "zeoraid":
            text = re.sub(r'(?m)^listen = "127\.0\.0\.1:\d+"$',
                          f'listen = "127.0.0.1:{port}"', text, count=1)
        else:
            text = re.sub(r"(?m)^  address 127\.0\.0\.1:\d+$",
                          f"  address 127.0.0.1:{port}", text, count=1)
        with open(self.config_path, "w") as f:
            f.write(text)
        self.proc = None
        self.addr = None
        self.stopped = False
        self.killed = False
        self.exited_early = False
        self.returncode = None
        self._stdout_lines = []
        self._reader = None
        addr = self.start(timeout, _prepare=False)
        if unix:
            if addr != self.listen:
                raise HarnessError(f"restart: listening on {addr}, not on "
                                   f"{self.listen}\n{self.describe()}")
            return addr
        if addr[1] != port:
            raise HarnessError(f"restart: listening on {addr}, not on port "
                               f"{port}\n{self.describe()}")
        return addr

    def _read_stdout(self, first_line):
        handed_over = False
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace")
            self._stdout_lines.append(line)
            if not handed_over:
                first_line.put(line)
                handed_over = True
        if not handed_over:
            first_line.put("")  # EOF marker
        self.proc.stdout.close()

    def _wait_briefly(self):
        try:
            return self.proc.wait(2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def is_running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=STOP_TIMEOUT, stop_backends=True):
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL.  Returns the exit
        code; sets ``killed``/``exited_early`` so callers can check that the
        shutdown was graceful.  A second call does nothing (but may stop
        the backends a first call with ``stop_backends=False`` left)."""
        if self.proc is None or getattr(self, "stopped", False):
            if stop_backends:
                self._stop_backends()
            return self.returncode
        self.stopped = True
        self._stop_timeout = timeout
        if self.proc.poll() is not None:
            self.exited_early = True
        else:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.proc.kill()
                self.proc.wait()
        self.returncode = self.proc.returncode
        self._forget()
        if stop_backends:
            self._stop_backends()
        return self.returncode

    def _stop_backends(self):
        for backend in self.backend_servers:
            try:
                backend.stop()
            except Exception:
                backend._kill_quietly()

    def graceful_problem(self):
        """None if the last stop() was a clean exit 0 after SIGTERM, else a
        sentence saying what went wrong."""
        if self.exited_early:
            return (f"server had already exited (rc={self.returncode}) "
                    "before the test stopped it")
        if self.killed:
            return (f"server did not exit within {self._stop_timeout:g}s of "
                    "SIGTERM and was killed")
        if self.returncode not in (0, None):
            return f"server exited with rc={self.returncode} after SIGTERM"
        return None

    def _forget(self):
        if self._reader is not None:
            self._reader.join(5)
        with _live_lock:
            _live_servers.discard(self)

    def _kill_quietly(self):
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                proc.kill()
                proc.wait(5)
            except Exception:
                pass
        if proc is not None:
            self.returncode = proc.returncode
        with _live_lock:
            _live_servers.discard(self)

    def cleanup(self):
        """Stop if needed and delete the temporary directory."""
        if self.is_running():
            self.stop()
        self._stop_backends()
        for backend in self.backend_servers:
            backend.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        self.cleanup()

    # -- diagnostics ---------------------------------------------------------

    def log_tail(self, max_chars=20000):
        """The end of what the server wrote to stderr (and any stdout after
        the listening line)."""
        try:
            with open(self.stderr_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - max_chars))
                text = f.read().decode("utf-8", "replace")
                if size > max_chars:
                    text = f"[... {size - max_chars} bytes cut ...]\n" + text
        except OSError:
            text = "(no stderr file)"
        extra = "".join(self._stdout_lines[1:])
        if extra:
            text += "\n--- stdout after the listening line ---\n" + extra
        return text

    def log_text(self):
        """Everything the server wrote to stderr so far."""
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def describe(self):
        """Command, config and stderr: what a human needs to reproduce."""
        config = ""
        if self.config_path and os.path.exists(self.config_path):
            with open(self.config_path) as f:
                config = f.read()
        return (f"target: {self.target}\n"
                f"command: {' '.join(self.argv or [])}\n"
                f"--- config ---\n{config}"
                f"--- server stderr ---\n{self.log_tail()}")


def announced_protocol(addr, timeout=5.0):
    """The first frame a ZEO server at ``(host, port)`` sends: its protocol,
    b"M5" (msgpack) or b"Z5" (pickle)."""
    import socket
    import struct
    with socket.create_connection(addr, timeout=timeout) as sock:
        data = b""
        while len(data) < 4 or len(data) < 4 + struct.unpack(
                ">I", data[:4])[0]:
            chunk = sock.recv(64)
            if not chunk:
                raise HarnessError(f"{addr} closed before announcing its "
                                   f"protocol (got {data!r})")
            data += chunk
        size = struct.unpack(">I", data[:4])[0]
        return data[4:4 + size]


def pickle_problems(server):
    """Why the array of ``server`` is not talking pickle to its
    "runzeo-pickle" backends, or [] if it is (``pickle_backend_problems``
    of each)."""
    kinds = [kind for spec in server.storages for kind in spec.backends
             if not isinstance(kind, tuple) and kind in SERVER_BACKENDS]
    pickled = [backend for kind, backend in zip(kinds, server.backend_servers)
               if kind == "runzeo-pickle"]
    if not pickled:
        return ["the array has no runzeo-pickle backend"]
    return [p for backend in pickled for p in pickle_backend_problems(backend)]


def pickle_backend_problems(backend):
    """Why a runzeo ``backend`` (a Server) is not being spoken to in
    pickle, or [] if it is: it has no ``msgpack`` line in its config,
    announces b"Z5", and logged that its clients answered the handshake
    with b"Z5" (runzeo logs "received handshake 'Z5'"), never b"M5".  (A
    ZEO server takes whichever encoding the client answers with, so only
    its log shows what a client really spoke.)  Call it before the test's
    own stock clients talk to the backend."""
    problems = []
    with open(backend.config_path) as f:
        if re.search(r"(?m)^\s*msgpack\b", f.read()):
            problems.append(f"{backend.config_path} sets msgpack")
    if backend.is_running():
        announced = announced_protocol(backend.addr)
        if announced != b"Z5":
            problems.append(f"{backend.addr} announced {announced!r}")
    log = backend.log_text()
    if "received handshake 'Z5'" not in log:
        problems.append(f"{backend.addr} never logged a Z5 handshake")
    if "received handshake 'M5'" in log:
        problems.append(f"{backend.addr} logged an M5 handshake")
    return problems


class ServerFixture:
    """Mixin for unittest.TestCase: servers started by a test are stopped
    (and checked for a graceful exit) by ``stop_servers()``, and their
    stderr is offered to the runner through ``interop_logs()`` when the test
    fails."""

    def start_server(self, storages=None, **kwargs):
        """Start a Server, remember it for cleanup; return it (listening)."""
        if not hasattr(self, "_interop_servers"):
            self._interop_servers = []
        server = Server(storages, **kwargs)
        self._interop_servers.append(server)
        server.start()
        return server

    def stop_servers(self, listening_only=False):
        """Stop every server this test started (with ``listening_only``,
        those that got as far as listening).  Raises AssertionError if
        one did not shut down gracefully (exit 0 soon after SIGTERM): that is
        part of what zeoraid promises (DESIGN.md, rule 4)."""
        problems = []
        for server in getattr(self, "_interop_servers", []):
            if server.proc is None or (listening_only
                                       and server.addr is None):
                continue
            server.stop()
            problem = server.graceful_problem()
            if problem:
                problems.append(f"{server.addr}: {problem}")
        if problems:
            raise AssertionError("; ".join(problems))

    def interop_logs(self):
        """(label, text) for each server this test started."""
        logs = []
        for server in getattr(self, "_interop_servers", []):
            label = f"{server.target} server {server.addr} stderr"
            logs.append((label, server.log_tail()))
            for backend in server.backend_servers:
                label = f"{backend.target} backend {backend.addr} stderr"
                logs.append((label, backend.log_tail()))
        return logs

    def interop_cleanup(self):
        """Kill leftovers and delete the servers' temporary directories.
        Called by the runner (harness.py) after it has reported the test,
        so a failing test's server logs are still there to be shown."""
        for server in getattr(self, "_interop_servers", []):
            server.cleanup()
        self._interop_servers = []
