"""Test certificates for the TLS interop tests, made on the fly.

Nothing here is ever checked in: every test makes its own CA and
certificates (EC P-256 keys, PEM files) in a temporary directory with the
``cryptography`` package, the counterpart of the Rust tests'
``tests/common/certs.rs`` (rcgen).

The certificates carry the extensions OpenSSL's ``VERIFY_X509_STRICT``
insists on (stock runzeo's server context sets it when it checks client
certificates): a critical basicConstraints, keyUsage, subject and
authority key identifiers.

    ca = CA(directory, "main")                 # ca.pem: the CA certificate
    server = ca.server("server")               # .cert/.key: localhost + 127.0.0.1
    client = ca.client("client")               # clientAuth EKU
    expired = ca.expired_server("old-server")  # not_after in 2021
"""

import datetime
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.oid import NameOID


@dataclass
class Pair:
    """A certificate and its private key, as PEM files."""
    cert: str
    key: str


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory, filename, data, private=False):
    path = os.path.join(directory, filename)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class CA:
    """A certificate authority whose certificate is at ``pem``."""

    def __init__(self, directory, name):
        self.directory = directory
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        public = self.key.public_key()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"zeoraid test CA {name}"))
            .issuer_name(_name(f"zeoraid test CA {name}"))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                           critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public),
                           critical=False)
            .sign(self.key, hashes.SHA256()))
        self.pem = _write(directory, f"{name}-ca.pem",
                          self.cert.public_bytes(serialization.Encoding.PEM))

    def _issue(self, name, server, expired=False):
        key = ec.generate_private_key(ec.SECP256R1())
        public = key.public_key()
        now = datetime.datetime.now(datetime.timezone.utc)
        if expired:
            not_before = datetime.datetime(2020, 1, 1,
                                           tzinfo=datetime.timezone.utc)
            not_after = datetime.datetime(2021, 1, 1,
                                          tzinfo=datetime.timezone.utc)
        else:
            not_before = now - datetime.timedelta(days=1)
            not_after = now + datetime.timedelta(days=30)
        if server:
            sans = [x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            usage = ExtendedKeyUsageOID.SERVER_AUTH
        else:
            sans = [x509.DNSName(f"{name}.clients.invalid")]
            usage = ExtendedKeyUsageOID.CLIENT_AUTH
        ski = self.cert.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"zeoraid test {name}"))
            .issuer_name(self.cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                           critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public),
                           critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                    ski), critical=False)
            .sign(self.key, hashes.SHA256()))
        return Pair(
            cert=_write(self.directory, f"{name}.pem",
                        cert.public_bytes(serialization.Encoding.PEM)),
            key=_write(self.directory, f"{name}.key", _key_pem(key),
                       private=True))

    def server(self, name):
        """A server certificate for ``localhost`` and ``127.0.0.1``."""
        return self._issue(name, server=True)

    def expired_server(self, name):
        """A server certificate (localhost, 127.0.0.1) that expired on
        2021-01-01."""
        return self._issue(name, server=True, expired=True)

    def client(self, name):
        """A client certificate (extended key usage clientAuth)."""
        return self._issue(name, server=False)
