"""The ``kres`` object of the config: kresd's constants and wire-format helpers in Python.

kresd's Lua configs lean on ``kres.type.A``, ``kres.extended_error.BLOCKED``,
``kres.str2ip()`` and ``kres.parse_rdata()`` to build policy actions; the same names exist
here so a translated config reads the same.  Types, classes and rcodes are dnspython's
enums (they compare equal to plain ints), so ``query.stype == kres.type.HINFO`` works.
"""

from __future__ import annotations

import enum
import ipaddress
from types import SimpleNamespace

import dns.edns
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tokenizer

from kresolver.resolve.request import State

__all__ = ["dname2str", "kres", "parse_rdata", "str2dname", "str2ip"]


class Section(enum.IntEnum):
    """Message sections, as kresd's ``kres.section``."""

    ANSWER = 0
    AUTHORITY = 1
    ADDITIONAL = 2


#: RFC 8914 codes under kresd's short names (``kres.extended_error.BLOCKED``)
EXTENDED_ERROR = SimpleNamespace(
    NONE=None,
    OTHER=0,
    DNSKEY_ALG=1,
    DS_DIGEST=2,
    STALE=3,
    FORGED=4,
    INDETERMINATE=5,
    BOGUS=6,
    SIG_EXPIRED=7,
    SIG_NOTYET=8,
    DNSKEY_MISS=9,
    RRSIG_MISS=10,
    DNSKEY_BIT=11,
    NSEC_MISS=12,
    CACHED_ERR=13,
    NOT_READY=14,
    BLOCKED=15,
    CENSORED=16,
    FILTERED=17,
    PROHIBITED=18,
    STALE_NXD=19,
    NOTAUTH=20,
    NOTSUP=21,
    NREACH_AUTH=22,
    NETWORK=23,
    INV_DATA=24,
    SYNTHESIZED=29,
)


def str2ip(text: str) -> bytes:
    """An IPv4 or IPv6 address in text to its wire form (the RDATA of an A or AAAA)."""
    try:
        return ipaddress.ip_address(text.strip()).packed
    except ValueError:
        raise ValueError(f"kres.str2ip: not an IP address: {text!r}") from None


def str2dname(name: str) -> bytes:
    """Text name to lowercase wire format (kresd's ``kres.str2dname``/``todname``)."""
    return dns.name.from_text(name).canonicalize().to_wire()


def dname2str(wire: bytes) -> str:
    """Wire-format name to text with a trailing dot."""
    return dns.name.from_wire(wire, 0)[0].to_text()


def parse_rdata(texts: str | list[str]) -> list[bytes]:
    """``['TYPE rdata...', ...]`` to a list of RDATA wire strings, as kresd's helper.

    Each string starts with the RR type mnemonic; the rest is the RDATA in zone-file
    presentation form.  The result feeds ``policy.ANSWER``.
    """
    if isinstance(texts, str):
        texts = [texts]
    out: list[bytes] = []
    for text in texts:
        rtype, _, rest = text.strip().partition(" ")
        try:
            rdtype = dns.rdatatype.from_text(rtype)
            rdata = dns.rdata.from_text(dns.rdataclass.IN, rdtype, rest.strip())
        except (dns.exception.DNSException, ValueError) as error:
            raise ValueError(f"kres.parse_rdata: cannot parse {text!r}: {error}") from None
        out.append(rdata.to_wire())
    return out


kres = SimpleNamespace(
    type=dns.rdatatype.RdataType,
    class_=dns.rdataclass.RdataClass,
    rcode=dns.rcode.Rcode,
    section=Section,
    extended_error=EXTENDED_ERROR,
    ede=dns.edns.EDECode,
    CONSUME=State.CONSUME,
    PRODUCE=State.PRODUCE,
    DONE=State.DONE,
    FAIL=State.FAIL,
    YIELD=State.YIELD,
    str2ip=str2ip,
    str2dname=str2dname,
    dname2str=dname2str,
    parse_rdata=parse_rdata,
)
# ``class`` is a Python keyword; ``getattr(kres, 'class')`` still works, as in kresd.
setattr(kres, "class", dns.rdataclass.RdataClass)
