"""TSIG (RFC 8945) for client queries: the keyring, and the answers to bad signatures.

Unlike kresd, a TSIG view (``view.tsig``) is chosen only after the signature verified:
the transports parse every query with ``engine.keyring`` ({key name: dns.tsig.Key}), so a
query signed with an unknown key, a wrong MAC or a stale time never reaches a layer.  It
gets NOTAUTH with the TSIG error RFC 8945 section 5.2 prescribes instead: BADKEY and
BADSIG unsigned (MAC empty, as the server cannot or must not sign), BADTIME signed with
the client's key and our time in "other data".  Answers to good queries are signed with
the client's key by dnspython's ``make_response`` (see ``make_answer``).
"""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig

__all__ = ["TSIG_ERRORS", "key_name", "make_key", "tsig_error_reply"]

#: what dnspython raises while verifying a query's TSIG -> the TSIG error to report
TSIG_ERRORS: tuple[type[Exception], ...] = (
    dns.message.UnknownTSIGKey,
    dns.tsig.BadKey,
    dns.tsig.BadAlgorithm,
    dns.tsig.BadSignature,
    dns.tsig.BadTime,
)

_ALGORITHMS = {
    "hmac-md5": dns.tsig.HMAC_MD5,
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}


def key_name(name: str | bytes | dns.name.Name) -> dns.name.Name:
    """A key name given as text (``'mykey.'``) or wire (kresd's ``'\\5mykey'``)."""
    if isinstance(name, dns.name.Name):
        return name
    if isinstance(name, str) and not (name and ord(name[0]) < 32):
        return dns.name.from_text(name)
    wire = name.encode("latin-1") if isinstance(name, str) else bytes(name)
    return dns.name.from_wire(wire if wire.endswith(b"\x00") else wire + b"\x00", 0)[0]


def make_key(name: str | bytes | dns.name.Name, algorithm: str, secret: str | bytes) -> Any:
    """A dns.tsig.Key from a name (text or wire), an algorithm name and a base64 secret."""
    name = key_name(name)
    alg = _ALGORITHMS.get(algorithm.lower().rstrip("."))
    if alg is None:
        raise ValueError(f"unknown TSIG algorithm {algorithm!r}; known: {', '.join(_ALGORITHMS)}")
    if isinstance(secret, str):
        try:
            secret = base64.b64decode(secret, validate=True)
        except ValueError:
            raise ValueError(f"TSIG secret of {name} is not base64") from None
    if not secret:
        raise ValueError(f"TSIG secret of {name} is empty")
    return dns.tsig.Key(name, secret, alg)


def _unsigned_tsig(query: dns.message.Message, error: int, now: int) -> bytes:
    """A TSIG RR with an empty MAC carrying C{error} (BADKEY/BADSIG, RFC 8945 5.3.2)."""
    rdata = query.tsig[0]
    body = (
        rdata.algorithm.to_wire()
        + struct.pack(">HIHH", (now >> 32) & 0xFFFF, now & 0xFFFFFFFF, rdata.fudge, 0)
        + struct.pack(">HHH", query.id, error, 0)
    )
    return (
        query.keyname.to_wire()
        + struct.pack(">HHIH", dns.rdatatype.TSIG, dns.rdataclass.ANY, 0, len(body))
        + body
    )


def tsig_error_reply(data: bytes, error: Exception, keyring: Any, udp_payload: int) -> bytes | None:
    """The NOTAUTH answer to the signed query C{data} whose TSIG failed with C{error}."""
    try:
        query = dns.message.from_wire(data, keyring=False)
    except (dns.exception.DNSException, ValueError):
        return None
    if not query.had_tsig:
        return None
    now = int(time.time())
    response = dns.message.make_response(query, recursion_available=True)
    response.set_rcode(dns.rcode.NOTAUTH)
    if isinstance(error, dns.tsig.BadTime):
        key = keyring.get(query.keyname) if isinstance(keyring, dict) else None
        if key is not None:
            response.use_tsig(key, tsig_error=dns.rcode.BADTIME,
                              other_data=struct.pack(">Q", now)[2:],
                              algorithm=query.keyalgorithm)
            response.request_mac = query.mac
            return response.to_wire()
    code = dns.rcode.BADSIG if isinstance(error, dns.tsig.BadSignature) else dns.rcode.BADKEY
    wire = bytearray(response.to_wire())
    arcount = struct.unpack_from(">H", wire, 10)[0]
    struct.pack_into(">H", wire, 10, arcount + 1)
    return bytes(wire) + _unsigned_tsig(query, code, now)
