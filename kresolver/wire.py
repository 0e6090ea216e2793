"""Wire-format DNS without dnspython, for the paths where every microsecond counts.

dnspython's full parse of a message costs 100 µs or more; a cached answer must cost a
small fraction of that.  These functions read just enough of the wire: the question of a
plain query (to key the answer cache), and where the TTLs of a stored answer are (to count
them down in place).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

HEADER = 12
TYPE_OPT = 41
TYPE_TSIG = 250
TYPE_SIG = 24
#: record types whose TTL field is not a TTL: OPT's holds flags, TSIG's and SIG's are signed
NO_TTL_TYPES = frozenset({TYPE_OPT, TYPE_TSIG, TYPE_SIG})
#: the length octet of every label length, made once (names are written as length + label)
LENGTH_OCTETS = [bytes((length,)) for length in range(256)]

#: flag bits of the fast key's last byte: what, besides the question, shapes an answer
KEY_EDNS = 1
KEY_DO = 2
KEY_CD = 4
KEY_AD = 8

_u16 = struct.Struct(">H")
_u32 = struct.Struct(">I")
_u32_at = _u32.unpack_from


class FastQuery(NamedTuple):
    """The parts of a plain query the answer cache needs."""

    key: bytes  #: lowercased qname + qtype + qclass + one byte of KEY_* flags
    qend: int  #: offset just past the question section
    payload: int  #: what the client can take over UDP (512 without EDNS)


class WireError(ValueError):
    """The data is not a well-formed DNS message (or not the part of one we expected)."""


_FLAG_BYTES = [bytes((flags,)) for flags in range(16)]  # the KEY_* combinations
#: an OPT record's fixed part: owner (the root's one octet), type, class (the payload),
#: extended rcode, version, flags, rdata length
_OPT_HEAD = struct.Struct(">BHHBBHH")
_new_fast = tuple.__new__


def fast_query(data: bytes) -> FastQuery | None:
    """Key a plain query: opcode QUERY, one question, at most an EDNS0 OPT record.

    Returns None for anything else (and for anything malformed), which then takes the
    full path, where it is parsed properly and answered or refused.
    """
    size = len(data)
    # QR=0, opcode QUERY, RD=1 (non-recursive queries are refused or answered on the full
    # path, never from stored answers); QDCOUNT=1, ANCOUNT=0, NSCOUNT=0
    if size < 17 or data[2] & 0xF9 != 0x01 or data[4:10] != b"\x00\x01\x00\x00\x00\x00":
        return None
    pos = HEADER
    while True:
        length = data[pos]
        if length == 0:
            break
        if length > 63:
            return None
        pos += length + 1
        if pos >= size:
            return None
    qend = pos + 5
    if qend > size:
        return None
    flags = (data[3] & 0x10) and KEY_CD  # CD
    if data[3] & 0x20:  # AD
        flags |= KEY_AD
    arcount = data[11] | data[10] << 8
    payload = 512
    if arcount == 0:
        if qend != size:
            return None
    elif arcount == 1:
        # the OPT pseudo-record: root owner, type 41, class = payload, ttl = ext. flags
        if size < qend + 11:
            return None
        root, rtype, payload, _, version, eflags, rdlen = _OPT_HEAD.unpack_from(data, qend)
        if root or rtype != TYPE_OPT or version or qend + 11 + rdlen != size:
            return None  # not OPT, or an EDNS version we must answer with BADVERS
        if payload < 512:
            payload = 512
        flags |= KEY_EDNS | KEY_DO if eflags & 0x8000 else KEY_EDNS
    else:
        return None
    key = data[HEADER:pos].lower() + data[pos:qend] + _FLAG_BYTES[flags]
    return _new_fast(FastQuery, (key, qend, payload))  # FastQuery(...), one call fewer


def skip_name(data: bytes, pos: int) -> int:
    """Return the offset just past the (possibly compressed) name at C{pos}."""
    size = len(data)
    while pos < size:
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        if length & 0xC0:
            raise WireError("bad label type")
        pos += length + 1
    raise WireError("name runs past the end of the message")


def ttl_offsets(data: bytes) -> list[int]:
    """Offsets of the TTL field of every record that has a real TTL.

    The OPT record's TTL field holds flags and TSIG's must stay as signed, so both are left
    out.  Raises L{WireError} if the message does not hold together.
    """
    if len(data) < HEADER:
        raise WireError("message shorter than a header")
    qd, an, ns, ar = struct.unpack_from(">4H", data, 4)
    pos = HEADER
    for _ in range(qd):
        pos = skip_name(data, pos) + 4
    offsets = []
    size = len(data)
    for _ in range(an + ns + ar):
        pos = skip_name(data, pos)
        if pos + 10 > size:
            raise WireError("record header runs past the end of the message")
        rtype = data[pos] << 8 | data[pos + 1]
        if rtype not in NO_TTL_TYPES:
            offsets.append(pos + 4)
        pos += 10 + (data[pos + 8] << 8 | data[pos + 9])
    if pos != size:
        raise WireError("records do not end where the message ends")
    return offsets


def min_ttl(data: bytes, offsets: list[int]) -> int | None:
    """The smallest TTL of the records at C{offsets}, or None when there are none."""
    low = None
    for off in offsets:  # a plain loop: a generator for min() costs more than the reading
        (ttl,) = _u32_at(data, off)
        if low is None or ttl < low:
            low = ttl
    return low


def header_only(data: bytes, rcode: int) -> bytes | None:
    """A bare response with C{rcode} to whatever query C{data} holds, or None.

    For messages we cannot parse: if at least the header is readable the client learns
    it sent garbage (FORMERR) instead of timing out; with less than a header, or for
    something that is itself a response, there is nobody sensible to answer.
    """
    if len(data) < HEADER or data[2] & 0x80:
        return None
    flags1 = 0x80 | (data[2] & 0x79)  # QR, keep opcode and RD
    flags2 = 0x80 | (rcode & 0x0F)  # RA
    return data[:2] + bytes((flags1, flags2)) + b"\x00" * 8
