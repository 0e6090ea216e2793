"""TLS for the web interface: an ephemeral self-signed certificate, or the operator's.

kresd's http module starts HTTPS/2 with a certificate it makes itself, valid for 90 days
and renewed before it expires; so do we.  The listening port keeps one
L{SwappableServerCreator} for its whole life, so a renewed certificate is used by the next
connection without closing the port.  ALPN offers ``h2`` first, which is what makes
twisted.web speak HTTP/2 to browsers and ``curl --http2``.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

#: kresd's ephemeral certificate lifetime
LIFETIME = datetime.timedelta(days=90)
#: renew this long before the certificate expires
RENEW_BEFORE = datetime.timedelta(days=10)
#: what ALPN offers, best first
PROTOCOLS = [b"h2", b"http/1.1"]
#: TLS 1.2 suites with forward secrecy and AEAD (TLS 1.3 suites are always AEAD)
CIPHERS = b"ECDHE+AESGCM:ECDHE+CHACHA20"


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM private key, and when the certificate expires."""

    cert_pem: bytes
    key_pem: bytes
    not_after: datetime.datetime

    def context(self) -> SSL.Context:
        """A server context: TLS 1.2+, AEAD ciphers only (HTTP/2 requires it), ALPN h2."""
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
        context.set_cipher_list(CIPHERS)
        context.use_certificate(x509.load_pem_x509_certificate(self.cert_pem))
        context.use_privatekey(serialization.load_pem_private_key(self.key_pem, None))
        context.check_privatekey()
        context.set_alpn_select_callback(_select_protocol)
        return context


def _select_protocol(connection: SSL.Connection, offered: list[bytes]) -> bytes:
    for protocol in PROTOCOLS:
        if protocol in offered:
            return protocol
    return SSL.NO_OVERLAPPING_PROTOCOLS  # type: ignore[return-value]


def ephemeral(
    hosts: Iterable[str],
    now: datetime.datetime | None = None,
    lifetime: datetime.timedelta = LIFETIME,
) -> KeyPair:
    """A fresh P-256 key and a self-signed certificate for C{hosts} (names or addresses)."""
    now = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys([*hosts, "localhost", "127.0.0.1", "::1"]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kresolver ephemeral")])
    not_after = now + lifetime
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        not_after,
    )


def load(cert_path: str | Path, key_path: str | Path) -> KeyPair:
    """The operator's PEM certificate and key; errors name the file and the problem."""
    texts = []
    for what, path in (("certificate", cert_path), ("key", key_path)):
        try:
            texts.append(Path(path).read_bytes())
        except OSError as error:
            raise ValueError(f"http: cannot read {what} {str(path)!r}: {error.strerror}") from None
    try:
        cert = x509.load_pem_x509_certificate(texts[0])
    except ValueError as error:
        raise ValueError(f"http: {str(cert_path)!r} is not a PEM certificate: {error}") from None
    try:
        key = serialization.load_pem_private_key(texts[1], password=None)
    except (ValueError, TypeError) as error:
        raise ValueError(f"http: {str(key_path)!r} is not a PEM private key: {error}") from None
    if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        raise ValueError(f"http: key {str(key_path)!r} does not match {str(cert_path)!r}")
    return KeyPair(texts[0], texts[1], cert.not_valid_after_utc)


@implementer(IOpenSSLServerConnectionCreator)
class SwappableServerCreator:
    """Makes each new TLS connection with the current key pair; L{swap} replaces it."""

    def __init__(self, pair: KeyPair) -> None:
        self.swap(pair)

    def swap(self, pair: KeyPair) -> None:
        self.pair = pair
        self._context = pair.context()

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self._context, None)
