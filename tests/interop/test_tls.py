"""TLS and Unix sockets (issue #13) with stock ZODB/ZEO clients and servers.

Certificates are made per test by ``certs.py`` (a CA, a server certificate
for ``localhost`` and ``127.0.0.1``, client certificates, an expired
server certificate), never checked in.  Clients are unmodified
``ZEO.ClientStorage`` / ``ZODB.DB`` with an ``ssl.SSLContext``
(``ssl=ctx, ssl_server_hostname="localhost"``), or a socket path for a
Unix socket.  What is checked, as a user would notice it:

* ``TlsClientTests``
  - ``test_commit_load_and_invalidations_over_tls``: two stock ZODB
    clients over TLS to a file storage: commits (one of 2 MB, many TLS
    records), loads, and invalidations: a change one commits reaches the
    other at its next transaction (MVCC snapshot kept before), the cached
    object being invalidated in place.  Both connections really are TLS
    (TLSv1.2 or 1.3, read from the client's transport).
  - ``test_client_ca_*``: with ``client-ca`` set, a client with a
    certificate from that CA commits; one without a certificate, and one
    with a certificate from another CA, cannot connect (ClientDisconnected
    after ``wait_timeout``) and zeoraid logs the peer and the reason; the
    good client is not disturbed by them.  (With TLS 1.3 the client's side
    of the handshake succeeds before the server checks its certificate,
    so the stock client counts each refusal as a lost connection and
    reconnects at once: hundreds of attempts a second until wait_timeout,
    against runzeo as against zeoraid; zeoraid logs one line per host and
    reason per minute for them, checked.)
  - ``test_expired_server_certificate_is_refused_by_the_client``: zeoraid
    starts with an expired certificate (and logs an ERROR saying so); the
    stock client refuses it (its log says "certificate has expired").  The
    stock client (asyncio) drops the connection without sending a TLS
    alert, so zeoraid logs that it gave up during the handshake and asks
    whether it trusts our certificate; Python's blocking ``ssl`` module
    does send the alert, and then zeoraid logs that the peer says our
    certificate has expired.
  - ``test_plaintext_client_on_the_tls_port_is_closed_and_logged``: with
    ``handshake-timeout = 1`` a stock client without an SSL context cannot
    connect, zeoraid logs the "plaintext client on the TLS port?" line,
    and a raw TCP client that sends nothing is closed with a clean EOF
    after about a second; TLS clients still get in afterwards.

* ``TlsFileStorageConformance``: ZODB's conformance mixins through a stock
  ClientStorage over TLS against zeoraid's ``kind = "file"`` storage (the
  classes of test_conformance, with an SSL context): BasicStorage,
  RevisionStorage, SynchronizedStorage, MTStorage (many threads on one TLS
  connection), IteratorStorage, HistoryStorage, PackableStorage,
  ReadOnlyStorage, TransactionalUndoStorage and test_conformance's
  MiscZEOTests (a 1.25 MB record, invalidation to a second TLS client,
  ...): about 100 tests in 15 s.

* ``TlsBackendTests`` (zeoraid only): a RAID array over two stock Python
  ``runzeo`` servers with ``<ssl>`` and ``authenticate`` (client
  certificates required), through ``[storage.backend.tls]`` ca /
  certificate / key (one backend with ``server-hostname = "localhost"``,
  one checked against the IP address of its ``address``).  A stock client
  commits through zeoraid (itself on TLS); both backends are optimal and
  each holds the data (read by stock TLS clients of the runzeos, whose
  histories are identical).  Negative: a backend configured with ``ca``
  but no certificate/key is degraded (status and log) with a reason that
  names its address and says the server probably requires a client
  certificate, and the array serves on the other.

* ``UnixSocketTests`` (zeoraid only): zeoraid on a Unix socket
  (``socket-mode = "0660"``): stock clients commit and load through the
  path; after ``kill -9`` the socket file stays, the next start on the same
  path works (and logs that it removed the stale socket), the data is
  there, and after SIGTERM the file is gone.

``ZEORAID_INTEROP_TARGET=runzeo`` runs ``TlsClientTests`` and the
conformance class against stock runzeo with ``<ssl>`` (which always
requires client certificates, so every client there has one); the
zeoraid-only classes, and the zeoraid log assertions, are skipped there.

Run with run.py (``python tests/interop/run.py test_tls``, or this file
directly); about 30 s.
"""

import json
import logging
import os
import re
import shutil
import socket
import ssl
import stat
import struct
import sys
import tempfile
import threading
import time
import unittest

import transaction
import ZODB
from persistent.mapping import PersistentMapping
from ZEO.ClientStorage import ClientStorage
from ZEO.Exceptions import ClientDisconnected
from ZODB.tests import BasicStorage
from ZODB.tests import HistoryStorage
from ZODB.tests import IteratorStorage
from ZODB.tests import MTStorage
from ZODB.tests import PackableStorage
from ZODB.tests import ReadOnlyStorage
from ZODB.tests import RevisionStorage
from ZODB.tests import Synchronization
from ZODB.tests import TransactionalUndoStorage

import certs
import harness
import zeoraid_server
from test_conformance import MiscZEOTests
from test_conformance import ZEOServerTestBase
from zeoraid_server import ServerFixture
from zeoraid_server import StorageSpec
from zeoraid_server import TlsSpec


# Test name -> why zeoraid fails it (see test_conformance.py).  Empty:
# every test here must pass.
KNOWN_FAILURES = {}

# wait_timeout of clients that must connect.
CONNECT_TIMEOUT = 30.0
# wait_timeout of clients that must be refused: ClientStorage gives up
# with ClientDisconnected after this long.
REFUSED_WAIT = 3.0
# How long a log line or a state may take to show up.
LOG_TIMEOUT = 10.0
# [server.tls] handshake-timeout in the plaintext-client test.
HANDSHAKE_TIMEOUT = 1
# How long an invalidation may take to reach the other client.
DELIVERY_TIMEOUT = 10.0
# A client reads this from a root it did not write.
BIG = 2 * 1024 * 1024


def is_zeoraid():
    return zeoraid_server.target() == "zeoraid"


# ---------------------------------------------------------------------------
# Helpers


class Pki:
    """A temporary directory with a CA, a server certificate and a client
    certificate from it (more on demand)."""

    def __init__(self):
        # Not under tempfile.tempdir: ZODB's setUp points it at a per-test
        # directory that its tearDown deletes before the servers stop.
        self.dir = tempfile.mkdtemp(prefix="zeoraid-tls-",
                                    dir=zeoraid_server._BASE_TMP)
        self.ca = certs.CA(self.dir, "main")
        self.server = self.ca.server("server")
        self.client = self.ca.client("client")

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def client_context(ca_pem, pair=None):
    """A stock client's SSL context: trust ``ca_pem``; present ``pair``
    (a certs.Pair) if given."""
    ctx = ssl.create_default_context(cafile=ca_pem)
    if pair is not None:
        ctx.load_cert_chain(pair.cert, pair.key)
    return ctx


def tls_version(storage):
    """The TLS version of a connected ClientStorage's connection (None for
    plaintext), read from its asyncio transport."""
    protocol = storage._server.client.protocol
    if protocol is None:
        raise AssertionError("the client is not connected")
    ssl_object = protocol.sm_protocol.transport.get_extra_info("ssl_object")
    return None if ssl_object is None else ssl_object.version()


class ZeoLogCapture(logging.Handler):
    """Collects what the stock ZEO client logs (it reports each failed
    connection attempt with the reason at INFO) while in a ``with``."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []
        self._lock = threading.Lock()
        self._logger = logging.getLogger("ZEO")

    def emit(self, record):
        try:
            text = record.getMessage()
        except Exception:
            text = str(record.msg)
        with self._lock:
            self.messages.append(text)

    def text(self):
        with self._lock:
            return "\n".join(self.messages)

    def __enter__(self):
        self._old_level = self._logger.level
        self._logger.setLevel(logging.INFO)
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self._logger.removeHandler(self)
        self._logger.setLevel(self._old_level)


def status(addr, ctx=None):
    """zeoraid's status document (the ``ruok`` probe), over TLS with
    ``ctx``."""
    sock = socket.create_connection(addr, timeout=10)
    if ctx is not None:
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
    with sock:
        def exactly(n):
            buf = b""
            while len(buf) < n:
                chunk = sock.recv(n - len(buf))
                if not chunk:
                    raise ConnectionError("closed")
                buf += chunk
            return buf

        def frame():
            return exactly(struct.unpack(">I", exactly(4))[0])

        frame()   # the protocol announcement
        sock.sendall(struct.pack(">I", 4) + b"ruok")
        return json.loads(frame())


def history(storage):
    """[(tid, status, [(oid, data), ...]), ...] of a ClientStorage."""
    return [(txn.tid, txn.status, [(r.oid, r.data) for r in txn])
            for txn in storage.iterator()]


# ---------------------------------------------------------------------------


class TlsFixture(ServerFixture, unittest.TestCase):
    """Certificates, servers and stock clients of one test, all cleaned
    up after it."""

    # Why the class does not run against runzeo (None: it does).
    zeoraid_only = None

    def setUp(self):
        if self.zeoraid_only and not is_zeoraid():
            self.skipTest(self.zeoraid_only)
        self.runzeo = not is_zeoraid()
        self.closers = []
        self.pki = Pki()

    def tearDown(self):
        errors = []
        for close in reversed(self.closers):
            try:
                close()
            except Exception as exc:   # close the others all the same
                errors.append(exc)
        transaction.abort()
        self.stop_servers()
        if errors:
            raise errors[0]

    def interop_cleanup(self):
        super().interop_cleanup()
        if hasattr(self, "pki"):
            self.pki.cleanup()

    # -- servers -------------------------------------------------------------

    def start_tls_server(self, pair=None, client_ca=None,
                         handshake_timeout=None, storages=None, **kwargs):
        """A server on TLS with ``pair`` (default: the server certificate)
        serving ``storages`` (default: a file storage).  runzeo's <ssl>
        always authenticates clients: there it requires a certificate from
        the main CA unless ``client_ca`` says otherwise."""
        pair = pair or self.pki.server
        if client_ca is None and self.runzeo:
            client_ca = self.pki.ca.pem
        tls = TlsSpec(certificate=pair.cert, key=pair.key,
                      client_ca=client_ca,
                      handshake_timeout=handshake_timeout)
        return self.start_server(
            storages or [StorageSpec(name="1", kind="file")], tls=tls,
            log_level="info", **kwargs)

    def context(self, ca=None, pair="default"):
        """A client SSL context trusting ``ca`` (default: the main CA) and
        presenting ``pair`` (default: none on zeoraid, the main client
        certificate on runzeo, which requires one)."""
        if pair == "default":
            pair = self.pki.client if self.runzeo else None
        return client_context(ca or self.pki.ca.pem, pair)

    # -- clients -------------------------------------------------------------

    def client_storage(self, addr, ctx=None, **options):
        """A connected stock ClientStorage (closed after the test)."""
        options.setdefault("wait_timeout", CONNECT_TIMEOUT)
        options.setdefault("blob_dir", None)
        if ctx is not None:
            options.update(ssl=ctx, ssl_server_hostname="localhost")
        storage = ClientStorage(addr, **options)
        self.closers.append(storage.close)
        return storage

    def close_clients(self):
        """Close every client opened so far (in reverse order)."""
        closers, self.closers = self.closers, []
        for close in reversed(closers):
            close()

    def open_db(self, addr, ctx=None, **options):
        """(db, transaction manager, connection) of a stock ZODB client."""
        db = ZODB.DB(self.client_storage(addr, ctx, **options))
        self.closers.append(db.close)
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        self.closers.append(lambda: (tm.abort(), conn.close()))
        return db, tm, conn

    def assert_refused(self, addr, ctx=None):
        """A stock ClientStorage to ``addr`` cannot connect: it raises
        ClientDisconnected after REFUSED_WAIT.  Returns what the ZEO client
        logged meanwhile (its failed attempts and why)."""
        options = dict(wait_timeout=REFUSED_WAIT, blob_dir=None)
        if ctx is not None:
            options.update(ssl=ctx, ssl_server_hostname="localhost")
        with ZeoLogCapture() as log:
            started = time.monotonic()
            try:
                storage = ClientStorage(addr, **options)
            except ClientDisconnected:
                pass
            else:
                version = tls_version(storage)
                storage.close()
                self.fail(f"the client connected to {addr} (TLS version "
                          f"{version!r}) but must have been refused")
            took = time.monotonic() - started
        # It gave up because its wait ran out, not for another reason.
        self.assertGreater(took, REFUSED_WAIT - 0.5)
        return log.text()

    def wait_for_tid(self, storage, tid, what):
        """Wait until ``storage`` (a ClientStorage) has heard of ``tid``:
        the invalidation arrived, so its next transaction sees it."""
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while storage.lastTransaction() != tid:
            self.assertLess(time.monotonic(), deadline,
                            f"{what} within {DELIVERY_TIMEOUT:g}s")
            time.sleep(0.02)

    def wait_for_log(self, server, pattern, timeout=LOG_TIMEOUT):
        """The first match of regex ``pattern`` in the server's stderr,
        waiting up to ``timeout`` for it."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, server.log_text())
            if m:
                return m
            if time.monotonic() > deadline:
                self.fail(f"the server never logged /{pattern}/ within "
                          f"{timeout:g}s; its log:\n{server.log_tail()}")
            time.sleep(0.05)

    def commit_and_read_back(self, addr, ctx, key="value", value="ok"):
        """Commit root[key] = value through one stock client, read it
        through another."""
        _, tm, conn = self.open_db(addr, ctx)
        conn.root()[key] = value
        tm.commit()
        _, tm2, conn2 = self.open_db(addr, ctx)
        self.assertEqual(conn2.root()[key], value)
        return conn.db().storage


# ---------------------------------------------------------------------------


class TlsClientTests(TlsFixture):
    """Stock clients over TLS against a server's file storage."""

    def test_commit_load_and_invalidations_over_tls(self):
        server = self.start_tls_server()
        if is_zeoraid():
            self.wait_for_log(server, r"listening on 127\.0\.0\.1:\d+ \(TLS\)")
        db_a, tm_a, conn_a = self.open_db(server.addr, self.context())
        db_b, tm_b, conn_b = self.open_db(server.addr, self.context())
        for db in (db_a, db_b):
            self.assertIn(tls_version(db.storage), ("TLSv1.2", "TLSv1.3"))

        # A commits; B sees it in its next transaction.
        conn_a.root()["doc"] = PersistentMapping(title="first")
        conn_a.root()["big"] = b"x" * BIG
        tm_a.commit()
        self.wait_for_tid(db_b.storage, db_a.storage.lastTransaction(),
                          "A's first commit never reached client B")
        tm_b.begin()
        doc_b = conn_b.root()["doc"]
        self.assertEqual(doc_b["title"], "first")
        self.assertEqual(conn_b.root()["big"], b"x" * BIG)

        # A changes the object B has loaded; B keeps its snapshot until its
        # transaction ends, then sees the change on the same object.
        conn_a.root()["doc"]["title"] = "second"
        tm_a.commit()
        self.wait_for_tid(db_b.storage, db_a.storage.lastTransaction(),
                          "the invalidation never reached client B")
        self.assertEqual(doc_b["title"], "first", "B's snapshot changed "
                         "within its transaction")
        tm_b.begin()
        self.assertEqual(doc_b["title"], "second")
        self.assertIs(conn_b.root()["doc"], doc_b)

        # And the other way round, with a big record over TLS.
        conn_b.root()["big"] = b"y" * BIG
        tm_b.commit()
        self.wait_for_tid(db_a.storage, db_b.storage.lastTransaction(),
                          "B's commit never reached client A")
        tm_a.begin()
        self.assertEqual(conn_a.root()["big"], b"y" * BIG)

    def test_client_ca_admits_a_client_with_a_certificate_from_it(self):
        server = self.start_tls_server(client_ca=self.pki.ca.pem)
        ctx = self.context(pair=self.pki.client)
        storage = self.commit_and_read_back(server.addr, ctx)
        self.assertIn(tls_version(storage), ("TLSv1.2", "TLSv1.3"))

    def test_client_ca_refuses_a_client_without_a_certificate(self):
        server = self.start_tls_server(client_ca=self.pki.ca.pem)
        self.assert_refused(server.addr, self.context(pair=None))
        if is_zeoraid():
            self.wait_for_log(
                server,
                r"refused TLS connection from 127\.0\.0\.1:\d+: the "
                r"client presented no certificate, and `client-ca` "
                r"requires one")
            # The stock client reconnected hundreds of times in those
            # seconds; the log has one line for them (per host and reason
            # per minute), not one per attempt. (Closing the client can
            # cut one last attempt mid-handshake: that is another reason,
            # with a line of its own.)
            lines = [l for l in server.log_text().splitlines()
                     if "refused TLS connection from" in l
                     and "presented no certificate" in l]
            self.assertEqual(len(lines), 1, "\n".join(lines[:5]))
        # A client with the right certificate is not disturbed.
        self.commit_and_read_back(server.addr,
                                  self.context(pair=self.pki.client))

    def test_client_ca_refuses_a_client_certificate_from_another_ca(self):
        server = self.start_tls_server(client_ca=self.pki.ca.pem)
        other = certs.CA(self.pki.dir, "other")
        stranger = other.client("stranger")
        self.assert_refused(server.addr, self.context(pair=stranger))
        if is_zeoraid():
            self.wait_for_log(
                server,
                r"refused TLS connection from 127\.0\.0\.1:\d+: its "
                r"certificate is not signed by a CA we trust \(check "
                r"`client-ca` / `ca`\)")
        self.commit_and_read_back(server.addr,
                                  self.context(pair=self.pki.client))

    def test_expired_server_certificate_is_refused_by_the_client(self):
        expired = self.pki.ca.expired_server("expired-server")
        server = self.start_tls_server(pair=expired)
        if is_zeoraid():
            self.wait_for_log(
                server,
                r"ERROR .*TLS certificate \S*expired-server\.pem expired on "
                r"2021-01-01 00:00:00 UTC: clients will refuse the "
                r"connection")
        client_log = self.assert_refused(server.addr, self.context())
        self.assertIn("certificate has expired", client_log,
                      "the stock client's log names the reason")
        if is_zeoraid():
            # The stock client gives up mid-handshake without an alert;
            # zeoraid says what that usually means.
            self.wait_for_log(
                server,
                r"WARN .*refused TLS connection from 127\.0\.0\.1:\d+: it "
                r"closed the connection during the TLS handshake; does it "
                r"trust our certificate\?")
        # The stock client (asyncio) drops the connection without sending
        # the TLS alert, so zeoraid only sees the peer go away.  Python's
        # blocking ssl module does send it (certificate_expired), and then
        # zeoraid says why the handshake failed.
        with socket.create_connection(server.addr, timeout=10) as raw:
            with self.assertRaises(ssl.SSLCertVerificationError) as cm:
                self.context().wrap_socket(raw,
                                           server_hostname="localhost")
        self.assertIn("certificate has expired", str(cm.exception))
        if is_zeoraid():
            self.wait_for_log(
                server,
                r"refused TLS connection from 127\.0\.0\.1:\d+: the peer "
                r"says our certificate has expired")

    def test_plaintext_client_on_the_tls_port_is_closed_and_logged(self):
        if not is_zeoraid():
            self.skipTest("zeoraid's handshake-timeout")
        server = self.start_tls_server(handshake_timeout=HANDSHAKE_TIMEOUT)
        # A stock client without an SSL context waits for the server's
        # protocol announcement, which never comes in plaintext.
        self.assert_refused(server.addr, ctx=None)
        self.wait_for_log(
            server,
            r"WARN .*closing connection from 127\.0\.0\.1:\d+: no TLS "
            r"handshake within 1s; a plaintext client on the TLS port\? "
            r"\(give the client an SSL context\)")
        # On the wire: a client that sends nothing is closed cleanly (EOF,
        # not a reset) after about handshake-timeout.
        with socket.create_connection(server.addr, timeout=10) as sock:
            started = time.monotonic()
            self.assertEqual(sock.recv(100), b"", "expected a clean EOF")
            took = time.monotonic() - started
        self.assertGreater(took, HANDSHAKE_TIMEOUT * 0.8)
        self.assertLess(took, HANDSHAKE_TIMEOUT + 4)
        # TLS clients still get in.
        self.commit_and_read_back(server.addr, self.context())


# ---------------------------------------------------------------------------


class TlsFileStorageConformance(
        ZEOServerTestBase,
        BasicStorage.BasicStorage,
        RevisionStorage.RevisionStorage,
        Synchronization.SynchronizedStorage,
        MTStorage.MTStorage,
        IteratorStorage.IteratorStorage,
        HistoryStorage.HistoryStorage,
        PackableStorage.PackableStorage,
        ReadOnlyStorage.ReadOnlyStorage,
        TransactionalUndoStorage.TransactionalUndoStorage,
        MiscZEOTests):
    """test_conformance's arrangement (a fresh server per test, a stock
    ClientStorage to it), every client on TLS to a ``kind = "file"``
    storage."""

    storage_kind = "file"

    def _start(self):
        self.pki = Pki()
        tls = TlsSpec(certificate=self.pki.server.cert,
                      key=self.pki.server.key,
                      client_ca=None if is_zeoraid() else self.pki.ca.pem)
        return self.start_server(
            [StorageSpec(name="1", kind=self.storage_kind)], tls=tls)

    def _client_options(self):
        pair = None if is_zeoraid() else self.pki.client
        return dict(ssl=client_context(self.pki.ca.pem, pair),
                    ssl_server_hostname="localhost")

    def interop_cleanup(self):
        super().interop_cleanup()
        if hasattr(self, "pki"):
            self.pki.cleanup()

    def test_zeo_connection_is_tls(self):
        self.assertIn(tls_version(self._storage), ("TLSv1.2", "TLSv1.3"))


# ---------------------------------------------------------------------------


class TlsBackendTests(TlsFixture):
    """zeoraid as a TLS client of stock runzeo servers that require client
    certificates."""

    zeoraid_only = "RAID arrays are a zeoraid feature"

    def setUp(self):
        super().setUp()
        # zeoraid's certificate as a client of the runzeos.
        self.zeoraid_pair = self.pki.ca.client("zeoraid")

    def start_runzeo(self):
        """A stock runzeo with <ssl>: our server certificate, and
        ``authenticate`` = the main CA (client certificates required)."""
        return self.start_server(
            [StorageSpec(name="1", kind="file")], target_name="runzeo",
            client_conflict_resolution=False,
            tls=TlsSpec(certificate=self.pki.server.cert,
                        key=self.pki.server.key,
                        client_ca=self.pki.ca.pem))

    def backend_tls(self, hostname=None, certificate=True):
        q = json.dumps
        lines = ["[storage.backend.tls]", f"ca = {q(self.pki.ca.pem)}"]
        if certificate:
            pair = self.zeoraid_pair
            lines += [f"certificate = {q(pair.cert)}",
                      f"key = {q(pair.key)}"]
        if hostname:
            lines.append(f"server-hostname = {q(hostname)}")
        return "\n".join(lines)

    def start_array(self, backend_tls):
        """zeoraid on TLS with an array over two TLS runzeos; backend i
        gets the TOML ``backend_tls[i]``."""
        self.runzeos = [self.start_runzeo(), self.start_runzeo()]
        backends = tuple(
            ("zeo", f"{r.addr[0]}:{r.addr[1]}", tls)
            for r, tls in zip(self.runzeos, backend_tls))
        return self.start_tls_server(
            storages=[StorageSpec(name="1", kind="raid", backends=backends)])

    def backend_states(self, server):
        doc = status(server.addr, self.context())["1"]["raid"]
        return [(b["state"], b["reason"]) for b in doc["backends"]], doc

    def wait_for_states(self, server, want):
        deadline = time.monotonic() + LOG_TIMEOUT
        while True:
            states, doc = self.backend_states(server)
            if [s for s, _ in states] == want:
                return states
            self.assertLess(time.monotonic(), deadline,
                            f"backends never became {want}: {doc}")
            time.sleep(0.1)

    def runzeo_client(self, runzeo, **options):
        """A stock TLS client of a runzeo, with a certificate it accepts."""
        return self.client_storage(
            runzeo.addr, self.context(pair=self.pki.client), **options)

    def test_array_over_runzeo_backends_with_client_certificates(self):
        server = self.start_array([self.backend_tls(hostname="localhost"),
                                   self.backend_tls()])
        self.wait_for_states(server, ["optimal", "optimal"])
        _, tm, conn = self.open_db(server.addr, self.context())
        conn.root()["tls"] = PersistentMapping(payload=b"z" * 300000)
        tm.commit()
        conn.root()["tls"]["second"] = 2
        tm.commit()
        last = conn.db().storage.lastTransaction()
        self.wait_for_states(server, ["optimal", "optimal"])

        histories = []
        for runzeo in self.runzeos:
            storage = self.runzeo_client(runzeo, read_only=True)
            self.assertEqual(storage.lastTransaction(), last)
            db = ZODB.DB(storage)
            self.closers.append(db.close)
            c = db.open()
            try:
                self.assertEqual(c.root()["tls"]["payload"], b"z" * 300000)
                self.assertEqual(c.root()["tls"]["second"], 2)
            finally:
                c.close()
            histories.append(history(storage))
        self.assertEqual(len(histories[0]), 3)   # root, and our two
        self.assertEqual(histories[0], histories[1],
                         "the two runzeo backends hold different histories")

    def test_backend_without_a_client_certificate_is_degraded(self):
        server = self.start_array([self.backend_tls(),
                                   self.backend_tls(certificate=False)])
        states = self.wait_for_states(server, ["optimal", "degraded"])
        # The reason names the backend's address.  (runzeo, asyncio, closes
        # without the TLS alert that would say "certificate required", so
        # zeoraid can only say that the server closed the connection.)
        reason = states[1][1] or ""
        runzeo = self.runzeos[1].addr
        self.assertIn(f"{runzeo[0]}:{runzeo[1]}", reason)
        # ... and what probably happened.
        self.assertIn("the server probably requires a client certificate",
                      reason)
        # The array serves on the other backend.
        self.commit_and_read_back(server.addr, self.context(),
                                  value="degraded but serving")
        storage = self.runzeo_client(self.runzeos[0], read_only=True)
        db = ZODB.DB(storage)
        self.closers.append(db.close)
        c = db.open()
        try:
            self.assertEqual(c.root()["value"], "degraded but serving")
        finally:
            c.close()
        self.wait_for_log(
            server, r'RAID array "1": backend "zeo-1" starts degraded: '
            + re.escape(f"cannot connect to {runzeo[0]}:{runzeo[1]}"))


# ---------------------------------------------------------------------------


class UnixSocketTests(TlsFixture):
    """zeoraid listening on a Unix socket."""

    zeoraid_only = ("zeoraid's stale-socket handling (the harness starts "
                    "runzeo on TCP only)")

    def test_unix_socket_kill_9_and_restart(self):
        path = os.path.join(self.pki.dir, "zeo.sock")
        server = self.start_server(
            [StorageSpec(name="1", kind="file")], listen=path,
            server_toml='socket-mode = "0660"', log_level="info")
        self.assertEqual(server.addr, path)
        mode = os.stat(path).st_mode
        self.assertTrue(stat.S_ISSOCK(mode), oct(mode))
        self.assertEqual(stat.S_IMODE(mode), 0o660)

        # Stock clients through the path: commit, and load in another.
        db, tm, conn = self.open_db(path)
        conn.root()["unix"] = "over a Unix socket"
        tm.commit()
        db2, _, conn2 = self.open_db(path)
        self.assertEqual(conn2.root()["unix"], "over a Unix socket")
        self.close_clients()

        # kill -9: the socket file stays behind.
        server.proc.kill()
        server.proc.wait(5)
        self.assertTrue(stat.S_ISSOCK(os.stat(path).st_mode),
                        "the socket file is gone after kill -9")
        with self.assertRaises(ConnectionRefusedError):
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)

        # The next start on the same path replaces it.
        server.restart()
        self.wait_for_log(
            server,
            r"WARN .*removing stale Unix socket " + re.escape(path)
            + r" \(left by a server that did not stop cleanly\)")
        _, _, conn3 = self.open_db(path)
        self.assertEqual(conn3.root()["unix"], "over a Unix socket")
        self.close_clients()

        # SIGTERM: a clean stop removes the socket file.
        server.stop()
        self.assertIsNone(server.graceful_problem())
        self.assertFalse(os.path.exists(path),
                         "the socket file is still there after SIGTERM")


TEST_CLASSES = [TlsClientTests, TlsFileStorageConformance, TlsBackendTests,
                UnixSocketTests]

load_suite = harness.prepare_module(
    TEST_CLASSES, KNOWN_FAILURES, mark=is_zeoraid())


if __name__ == "__main__":
    import run
    sys.exit(run.main(["test_tls"] + sys.argv[1:]))
