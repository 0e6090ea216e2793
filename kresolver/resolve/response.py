"""Upstream responses read straight into normalised RRsets, without a dnspython message.

Every upstream answer on the cache-miss path used to be parsed by dnspython (a message, a
Name per owner, an rdata per record) and then copied once more by
L{kresolver.resolve.answer.normalize} into lowercase form for classification and the
cache.  L{read_response} does both in one pass over the wire and keeps what repeats
between responses (the zone's NS RRset and its glue, the names of a zone) so that the
next response reuses it:

- names are decompressed and lowercased here; a name object is made once per distinct
  name (a bounded memo);
- rdata of the common types (A, AAAA and the other types without names, NS, CNAME,
  PTR, MX, SOA, RRSIG, NSEC) is put in canonical form here and made into an rdata object
  once per distinct value; every other type goes through dnspython's own rdata parser
  and the canonical form of RFC 4034 6.2, exactly as L{normalize} treats it;
- A, RRSIG and NSEC records, which every answer and proof holds and which are hashed as
  soon as they are put in an RRset, are of subclasses of dnspython's (L{AddressRdata},
  L{SignatureRdata}, L{NsecRdata}) equal to its own and hashing alike, whose canonical
  form is written here rather than by dnspython's name and bitmap objects;
- whole RRsets of the authority and additional sections that repeat come out of a
  memo, and so does the whole end of a message (those two sections: a zone's NS and
  glue, its SOA) when its bytes repeat at the same place and the names before it that
  its pointers take are the same (they are checked: the question's, mostly).  Those
  RRsets are shared by every response that reads them, so they are read-only: whoever
  wants to change one (the validator capping a TTL) changes a L{copy_rrset} of it.

What comes out is what dnspython's parse followed by L{normalize} gives, and what
dnspython refuses is refused here too (compression pointers must point backwards, no
pointer loops, names within 255 octets, rdata exactly its length, one OPT in the
additional section, a TSIG we cannot check, trailing bytes): L{ResponseError} then.
"""

from __future__ import annotations

import random
import socket
import struct
import types
from typing import Any, NamedTuple

import dns.dnssectypes
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.NSEC
import dns.rdtypes.ANY.RRSIG
import dns.rdtypes.ANY.SOA
import dns.rdtypes.CH.A
import dns.rdtypes.IN.A
import dns.rdtypes.mxbase
import dns.rdtypes.nsbase
import dns.rdtypes.rrsigbase
import dns.rrset
import dns.wire

from kresolver.resolve.names import checked_name
from kresolver.wire import LENGTH_OCTETS, NO_TTL_TYPES, ttl_offsets

__all__ = [
    "AddressRdata", "NsecRdata", "Response", "ResponseError", "SignatureRdata", "copy_rrset",
    "name_wire", "rdata_wire", "read_response", "render", "use_edns",
]

_T = dns.rdatatype
_RR = struct.Struct(">HHIH")
#: a record owned by a compression pointer: the pointer, then the record's header
_OWNED_BY_POINTER = struct.Struct(">HHHIH")
_HEADER = struct.Struct(">HHHHHH")
#: dnspython's limit on compression pointers followed for one name
_MAX_HOPS = 16
#: entries each memo keeps before it starts afresh
MEMO_SIZE = 2048
#: the longest end of a message (authority and additional sections) remembered: a zone's
#: NS, glue and signatures fit; what is bigger is seldom the same twice
TAIL_SIZE = 1232

#: rdata types that hold no domain names: their wire form is their canonical form
NAMELESS = frozenset({
    _T.A, _T.AAAA, _T.TXT, _T.SPF, _T.DS, _T.CDS, _T.DNSKEY, _T.CDNSKEY, _T.NSEC3,
    _T.NSEC3PARAM, _T.SSHFP, _T.TLSA, _T.SMIMEA, _T.CAA, _T.OPENPGPKEY, _T.HINFO, _T.ZONEMD,
})
#: one compressible name, lowercased in canonical form (dnspython's NSBase)
_ONE_NAME = frozenset({_T.NS, _T.CNAME, _T.PTR})
_SOA = _T.SOA
_MX = _T.MX
_RRSIG = _T.RRSIG
_OPT = _T.OPT
_NSEC = _T.NSEC
#: the types besides those two whose canonical form L{_canonical} reads itself
_CANONICAL_HERE = frozenset({_T.SOA, _T.MX, _T.RRSIG, _T.NSEC})
#: types whose RRsets are told apart by the type they cover
_SIGNATURES = frozenset({_T.RRSIG, _T.SIG})
_TSIG = _T.TSIG


class ResponseError(ValueError):
    """The data is not a DNS message that dnspython would accept."""


class Response:
    """The parts of an upstream response that classification reads.

    C{answer}, C{authority} and C{additional} hold normalised RRsets (lowercase owners and
    rdata names), merged per owner, class, type and covered type as dnspython merges them;
    C{normalized} tells L{kresolver.resolve.iterate.classify} not to copy them again.
    The lists belong to whoever asked for this object.  The answer section's RRsets do
    too, but those of the authority and additional sections are shared with the memos
    (and so with other responses): never change them in place, change a copy.
    """

    __slots__ = ("additional", "answer", "authority", "ednsflags", "flags", "id", "wire")

    normalized = True

    def __init__(self, wire: bytes, qid: int, flags: int) -> None:
        self.wire = wire
        self.id = qid
        self.flags = flags
        self.ednsflags = 0
        self.answer: list[dns.rrset.RRset] = []
        self.authority: list[dns.rrset.RRset] = []
        self.additional: list[dns.rrset.RRset] = []

    def rcode(self) -> int:
        """The rcode, with the extended bits of the OPT record (as dnspython's)."""
        value = (self.flags & 0x000F) | ((self.ednsflags >> 20) & 0xFF0)
        rcode = _RCODES.get(value)
        if rcode is None:
            rcode = _RCODES[value] = dns.rcode.Rcode.make(value)  # at most 4096 of them
        return rcode


_RCODES: dict[int, Any] = {}


# -- memos --------------------------------------------------------------------------------

_names: dict[tuple[bytes, ...], dns.name.Name] = {}
_rdatas: dict[tuple[int, int, bytes], dns.rdata.Rdata] = {}
_rrsets: dict[tuple[Any, ...], dns.rrset.RRset] = {}
#: what the end of a message (authority and additional sections) read as, by where it
#: starts, its counts and its bytes: L{_Tail}
_tails: dict[tuple[int, int, int, bytes], _Tail] = {}
class _Enums(dict[int | str, Any]):
    """The enum members of the values seen (16-bit numbers, or mnemonics such as "A"),
    each made once; a value the enum refuses raises and is not kept."""

    def __init__(self, make: Any) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, value: int | str) -> Any:
        enum = self[value] = self.make(value)
        return enum


_types = _Enums(dns.rdatatype.RdataType.make)
_classes = _Enums(dns.rdataclass.RdataClass.make)
_rdtype = _types.__getitem__
_rdclass = _classes.__getitem__
#: dnspython's C{RdataType.make} / C{RdataClass.make}, each value converted once: the
#: one memo of them for every module on the query path
rdtype_enum = _rdtype
rdclass_enum = _rdclass


def _name(labels: tuple[bytes, ...], keep: bool = True) -> dns.name.Name:
    """The (absolute, lowercase) name of C{labels}, made once if C{keep}.

    The labels were checked by L{_read_name} as dnspython's constructor checks them, so
    the object is made without running those checks again.
    """
    if not keep:
        return checked_name((*labels, b""))
    name = _names.get(labels)
    if name is None:
        if len(_names) >= MEMO_SIZE:
            _names.clear()
        name = checked_name((*labels, b""))
        _names[labels] = name
    return name


def _rdata(rdclass: int, rdtype: int, canonical: bytes, keep: bool = True) -> dns.rdata.Rdata:
    """The rdata object of C{canonical} (uncompressed, lowercase) wire form, made once if
    C{keep}."""
    key = (rdclass, rdtype, canonical)
    rdata = _rdatas.get(key)
    if rdata is None:
        if rdtype == 1 and rdclass == 1 and len(canonical) == 4:
            return _address_rdata(canonical)  # answers' A records: seldom seen twice
        try:
            if rdtype == _RRSIG:
                rdata = _signature_rdata(rdclass, canonical)
            elif rdtype == _NSEC:
                rdata = _nsec_rdata(rdclass, canonical)
            else:
                rdata = dns.rdata.from_wire(
                    _rdclass(rdclass), _rdtype(rdtype), canonical, 0, len(canonical)
                )
        except dns.exception.DNSException as e:
            raise ResponseError(f"bad rdata of type {rdtype}: {e}") from e
        if not keep:
            return rdata
        if len(_rdatas) >= MEMO_SIZE:
            _rdatas.clear()
        _rdatas[key] = rdata
    return rdata


_A_CLASS = dns.rdtypes.IN.A.A
_IN = dns.rdataclass.IN
_A = dns.rdatatype.A
_NO_TYPE = dns.rdatatype.NONE  # what an RRset that covers nothing covers


_set = object.__setattr__  # dnspython rdata are immutable
_SOA_CLASS = dns.rdtypes.ANY.SOA.SOA
_MX_CLASS = dns.rdtypes.mxbase.MXBase
_NS_CLASS = dns.rdtypes.nsbase.NSBase
_PREFERENCE = struct.Struct(">H")
_SOA_TAIL = struct.Struct(">IIIII")


def _named_classes() -> frozenset[type]:
    """The rdata classes whose wire form L{rdata_wire} writes itself: dnspython's NS-,
    MX- and SOA-shaped types (NS, CNAME, PTR, DNAME, MX, KX, RT, AFSDB, ...) whose
    C{_to_wire} is one of their bases' (given no compression table, each writes its names
    as it holds them)."""
    known = {
        cls.__dict__["_to_wire"]
        for cls in (
            _NS_CLASS, dns.rdtypes.nsbase.UncompressedNS, _MX_CLASS,
            dns.rdtypes.mxbase.UncompressedMX, dns.rdtypes.mxbase.UncompressedDowncasingMX,
        )
    }
    found: set[type] = {_SOA_CLASS}
    for rdtype in dns.rdatatype.RdataType:
        if dns.rdatatype.is_metatype(rdtype):
            continue
        cls = dns.rdata.get_rdata_class(dns.rdataclass.IN, rdtype)
        if issubclass(cls, (_NS_CLASS, _MX_CLASS)) and cls._to_wire in known:
            found.add(cls)
    return frozenset(found)


_NAMED = _named_classes()


class AddressRdata(_A_CLASS):  # type: ignore[misc,valid-type]
    """dnspython's IN A rdata, equal to it and hashing as it does, but whose wire form
    comes from C: dnspython's own turns the dotted quad back into octets in Python, and
    every hash of an A record (putting it in an RRset, for one) renders that wire form.

    A valid A rdata holds a canonical dotted quad (its constructor makes it so), which
    C{socket.inet_aton} reads exactly as dnspython's C{inet_aton}; that canonical text
    also makes two A records equal exactly when their addresses are.
    """

    __slots__ = ()

    def __hash__(self) -> int:
        return hash(_inet_aton(self.address))  # hash(self.to_digestable(root))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _A_CLASS):
            return (
                self.address == other.address  # type: ignore[attr-defined]
                and self.rdclass == other.rdclass and self.rdtype == other.rdtype
            )
        return super().__eq__(other)

    def to_digestable(self, origin: dns.name.Name | None = None) -> bytes:
        return _inet_aton(self.address)

    def _to_wire(
        self, file: Any, compress: Any = None, origin: Any = None, canonicalize: bool = False
    ) -> None:
        file.write(_inet_aton(self.address))


_inet_aton = socket.inet_aton
_inet_ntoa = socket.inet_ntoa
#: the A rdata classes whose wire form L{rdata_wire} takes from the address itself
_ADDRESS_CLASSES = frozenset({_A_CLASS, AddressRdata})


def _slot_setter(cls: type, name: str) -> Any:
    """The setter of the slot C{name} of C{cls}'s instances: one C call that sets it,
    where C{object.__setattr__} first looks the name up (an answer's A record is made
    with four of them)."""
    for klass in cls.__mro__:
        slot = klass.__dict__.get(name)
        if slot is not None:
            if not isinstance(slot, types.MemberDescriptorType):
                raise ImportError(f"dnspython's {cls.__name__}.{name} is no longer a slot")
            return slot.__set__
    raise ImportError(f"dnspython's {cls.__name__} has no {name}")


_new_address = AddressRdata.__new__
_set_rdclass = _slot_setter(AddressRdata, "rdclass")
_set_rdtype = _slot_setter(AddressRdata, "rdtype")
_set_rdcomment = _slot_setter(AddressRdata, "rdcomment")
_set_address = _slot_setter(AddressRdata, "address")


def _address_rdata(octets: bytes) -> dns.rdata.Rdata:
    """The IN A rdata of C{octets}, as dnspython's parser makes it (its constructor would
    only turn the text it was given back into octets to check it), of the kind that
    hashes without rendering its wire form in Python (L{AddressRdata})."""
    rdata = _new_address(AddressRdata)
    _set_rdclass(rdata, _IN)
    _set_rdtype(rdata, _A)
    _set_rdcomment(rdata, None)
    _set_address(rdata, _inet_ntoa(octets))  # the dotted quad, as dnspython writes it
    return rdata


_RRSIG_CLASS = dns.rdtypes.ANY.RRSIG.RRSIG
_ROOT = dns.name.root
#: RRSIG and SIG rdata: a header, the signer (never compressed), the signature
_SIGNATURE_HEAD = struct.Struct(">HBBIIIH")
_algorithm = _Enums(dns.dnssectypes.Algorithm.make)


class SignatureRdata(_RRSIG_CLASS):  # type: ignore[misc,valid-type]
    """dnspython's RRSIG rdata, equal to it and hashing as it does, whose canonical form
    (what its hash and every comparison render) is written here: dnspython's makes
    several name objects to write the signer, and an RRSIG is hashed as soon as it is
    put in an RRset."""

    __slots__ = ()

    def __hash__(self) -> int:
        return hash(self.to_digestable(_ROOT))

    def to_digestable(self, origin: dns.name.Name | None = None) -> bytes:
        labels = self.signer.labels
        if not labels or labels[-1]:  # relative: dnspython's rules for its origin
            return super().to_digestable(origin)
        return (
            _SIGNATURE_HEAD.pack(
                self.type_covered, self.algorithm, self.labels, self.original_ttl,
                self.expiration, self.inception, self.key_tag,
            )
            + name_wire(self.signer).lower()  # lengths are below 64: only labels change
            + self.signature
        )


def _signature_rdata(rdclass: int, canonical: bytes) -> dns.rdata.Rdata:
    """The RRSIG rdata of C{canonical} form, as dnspython's parser makes it (every
    field of the wire form is one its constructor takes as it is)."""
    covered, algorithm, labels, ttl, expiration, inception, tag = (
        _SIGNATURE_HEAD.unpack_from(canonical)
    )
    signer, after = _read_name(canonical, 18, len(canonical), compressed=False)
    rdata = SignatureRdata.__new__(SignatureRdata)
    _set(rdata, "rdclass", _classes[rdclass])
    _set(rdata, "rdtype", _types[_RRSIG])
    _set(rdata, "rdcomment", None)
    _set(rdata, "type_covered", _types[covered])
    _set(rdata, "algorithm", _algorithm[algorithm])
    _set(rdata, "labels", labels)
    _set(rdata, "original_ttl", ttl)
    _set(rdata, "expiration", expiration)
    _set(rdata, "inception", inception)
    _set(rdata, "key_tag", tag)
    _set(rdata, "signer", _name(signer))  # a zone's name: one of few
    _set(rdata, "signature", canonical[after:])
    return rdata


_NSEC_CLASS = dns.rdtypes.ANY.NSEC.NSEC


class NsecRdata(_NSEC_CLASS):  # type: ignore[misc,valid-type]
    """dnspython's NSEC rdata, equal to it and hashing as it does, whose canonical form
    (the next name as it is, then the type bitmap) is written here rather than by
    dnspython's name and bitmap objects, made anew at every hash."""

    __slots__ = ()

    def __hash__(self) -> int:
        return hash(self.to_digestable(_ROOT))

    def to_digestable(self, origin: dns.name.Name | None = None) -> bytes:
        labels = self.next.labels
        if not labels or labels[-1]:  # relative: dnspython's rules for its origin
            return super().to_digestable(origin)
        parts = [name_wire(self.next)]
        for window, bitmap in self.windows:
            parts.append(_LENGTHS[window])
            parts.append(_LENGTHS[len(bitmap)])
            parts.append(bitmap)
        return b"".join(parts)


def _nsec_rdata(rdclass: int, canonical: bytes) -> dns.rdata.Rdata:
    """The NSEC rdata of C{canonical} form (its next name, uncompressed, checked by
    L{_canonical}), with the checks of dnspython's bitmap: windows in increasing order,
    each of 1 to 32 octets, the last of which is not zero."""
    labels = []
    pos = 0
    end = len(canonical)
    while canonical[pos]:
        stop = pos + 1 + canonical[pos]
        labels.append(canonical[pos + 1 : stop])
        pos = stop
    pos += 1
    windows = []
    last = -1
    while pos < end:
        if pos + 2 > end:
            raise ResponseError("NSEC bitmap window without its length")
        window = canonical[pos]
        stop = pos + 2 + canonical[pos + 1]
        if stop > end or stop == pos + 2 or stop > pos + 34 or window <= last:
            raise ResponseError("bad NSEC bitmap window")
        bitmap = canonical[pos + 2 : stop]
        if not bitmap[-1]:
            raise ResponseError("NSEC bitmap window with a trailing zero octet")
        windows.append((window, bitmap))
        last = window
        pos = stop
    rdata = NsecRdata.__new__(NsecRdata)
    _set(rdata, "rdclass", _classes[rdclass])
    _set(rdata, "rdtype", _types[_NSEC])
    _set(rdata, "rdcomment", None)
    _set(rdata, "next", checked_name((*labels, b"")))
    _set(rdata, "windows", tuple(windows))
    return rdata


_LENGTHS = LENGTH_OCTETS


def name_wire(name: dns.name.Name) -> bytes:
    """C{name.to_wire()} of an absolute name (uncompressed, its case kept), without
    dnspython's checks, file and the name objects its derelativising makes."""
    labels = name.labels
    if not labels or labels[-1]:
        raise dns.name.NeedAbsoluteNameOrOrigin
    parts = []
    for label in labels:
        parts.append(_LENGTHS[len(label)])
        parts.append(label)
    return b"".join(parts)


#: RRSIG and SIG: what dnspython's C{RRSIGBase} writes (a header, the signer never
#: compressed, the signature)
_SIGNATURE_CLASSES = frozenset(
    {SignatureRdata}
    | {dns.rdata.get_rdata_class(dns.rdataclass.IN, rdtype) for rdtype in (_T.RRSIG, _T.SIG)}
)
if any(cls._to_wire is not dns.rdtypes.rrsigbase.RRSIGBase._to_wire for cls in _SIGNATURE_CLASSES):
    raise ImportError("dnspython's RRSIG has changed: check rdata_wire")


def rdata_wire(rdata: dns.rdata.Rdata) -> bytes:
    """C{rdata.to_wire()}: an IN A record's in C (dnspython parses its text form again),
    and the rdata of one name (NS, CNAME, PTR, DNAME), MX-like, SOA and RRSIG written
    here (dnspython makes several name objects per name it writes)."""
    cls = type(rdata)
    if cls in _ADDRESS_CLASSES:
        return _inet_aton(rdata.address)  # the dotted quad a valid A rdata holds
    if cls in _NAMED:
        if issubclass(cls, _NS_CLASS):
            return name_wire(rdata.target)
        if issubclass(cls, _MX_CLASS):
            return _PREFERENCE.pack(rdata.preference) + name_wire(rdata.exchange)
        return (
            name_wire(rdata.mname) + name_wire(rdata.rname) + _SOA_TAIL.pack(
                rdata.serial, rdata.refresh, rdata.retry, rdata.expire, rdata.minimum
            )
        )
    if cls is NsecRdata:
        return rdata.to_digestable()  # an NSEC's names keep their case in that form too
    if cls in _SIGNATURE_CLASSES:
        return (
            _SIGNATURE_HEAD.pack(
                rdata.type_covered, rdata.algorithm, rdata.labels, rdata.original_ttl,
                rdata.expiration, rdata.inception, rdata.key_tag,
            )
            + name_wire(rdata.signer)
            + rdata.signature
        )
    return rdata.to_wire()


# -- reading ------------------------------------------------------------------------------


#: a message's names by where they start: labels, their octets, compression hops, and
#: where the part of the name at that place ends (after its terminating octet or pointer)
Seen = dict[int, tuple[tuple[bytes, ...], int, int, int]]


class _Watched(dict[int, tuple[tuple[bytes, ...], int, int, int]]):
    """The names read so far (L{Seen}) while the end of a message is read: notes which
    names before C{floor} the pointers there take (by where each starts and ends), on
    which what that end reads as then depends; C{blind} if it may depend on more (a
    name there not read as one uncompressed part, or read by dnspython's own parser)."""

    __slots__ = ("blind", "deps", "floor")

    def __init__(self, seen: Seen, floor: int) -> None:
        super().__init__(seen)
        self.floor = floor
        self.deps: dict[int, int] = {}
        self.blind = False

    def get(self, key: int, default: Any = None) -> Any:  # type: ignore[override]
        value = dict.get(self, key)
        if key < self.floor:
            if value is None or value[2]:
                self.blind = True
            else:
                self.deps[key] = value[3]
        return default if value is None else value


class _Tail(NamedTuple):
    """What the authority and additional sections of a message read as, and the names
    before them (where each starts, ends, and its octets lowercased) their pointers
    take: the same bytes after the same names read the same."""

    deps: tuple[tuple[int, int, bytes], ...]
    authority: list[dns.rrset.RRset]
    additional: list[dns.rrset.RRset]
    ednsflags: int


def _read_name(
    wire: bytes, pos: int, end: int, compressed: bool = True, seen: Seen | None = None
) -> tuple[tuple[bytes, ...], int]:
    """The lowercased labels (root left out) of the name at C{pos}, and where it ends.

    As dnspython reads names: pointers must point before the part of the name that holds
    them, and the part pointed at may not run into that part; where compression is not
    allowed (C{compressed} false), a pointer is an error.

    C{seen} remembers, for one message, the names read so far at each label they start
    with, so that a pointer to one (the question's name, mostly) takes its labels at once.
    What it holds was read by the same rules, so following the pointer would only read it
    again: what is left to check is that its first part ends before the part that points
    at it begins, the length, and the length of the pointer chain.
    """
    labels: list[bytes] = []
    starts: list[int] = []  # where the labels before the first pointer start
    biggest = start = pos
    limit = end
    hops = 0
    after = -1
    total = 1
    while True:
        if pos >= limit:
            raise ResponseError("name runs past its end")
        count = wire[pos]
        if count == 0:
            pos += 1
            break
        if count < 64:
            stop = pos + 1 + count
            if stop > limit:
                raise ResponseError("label runs past its end")
            if after < 0:
                starts.append(pos)
            labels.append(wire[pos + 1 : stop].lower())
            total += count + 1
            pos = stop
        elif count >= 192:
            if not compressed:
                raise ResponseError("compression where it is not allowed")
            pos += 1
            if pos >= limit:
                raise ResponseError("pointer runs past its end")
            target = (count & 0x3F) << 8 | wire[pos]
            pos += 1
            if target >= biggest:
                raise ResponseError("compression pointer does not point backwards")
            biggest = target
            hops += 1
            if after < 0:
                after = pos
            if seen is not None:
                known = seen.get(target)
                if known is not None and known[3] <= start:
                    suffix, octets, more, _ = known
                    labels.extend(suffix)
                    total += octets
                    hops += more
                    if hops > _MAX_HOPS:
                        raise ResponseError("compression pointer chain too long")
                    break
            if hops > _MAX_HOPS:
                raise ResponseError("compression pointer chain too long")
            limit = start
            pos = start = target
        else:
            raise ResponseError("bad label type")
    if total > 255:
        raise ResponseError("name too long")
    out = tuple(labels)
    if after < 0:
        after = pos
    if seen is not None:
        octets = total - 1  # the name's octets from its first label on, root left out
        index = 0
        for offset in starts:
            seen[offset] = (out[index:], octets, hops, after)
            octets -= len(out[index]) + 1
            index += 1
    return out, after


def _wire_of(labels: tuple[bytes, ...]) -> bytes:
    """The uncompressed wire form of the name of C{labels} (root left out)."""
    parts = []
    for label in labels:
        parts.append(_LENGTHS[len(label)])
        parts.append(label)
    parts.append(b"\x00")
    return b"".join(parts)


def _canonical(
    wire: bytes, pos: int, end: int, rdclass: int, rdtype: int, seen: Seen | None = None
) -> bytes:
    """The canonical form of the rdata at C{pos}..C{end} (what dnspython's
    C{to_digestable} gives after parsing it), for types neither L{NAMELESS} nor of
    L{_ONE_NAME} (which L{read_response} reads itself)."""
    if rdtype == _SOA:
        mname, pos = _read_name(wire, pos, end, True, seen)
        rname, pos = _read_name(wire, pos, end, True, seen)
        if end - pos != 20:
            raise ResponseError("SOA rdata of the wrong length")
        return _wire_of(mname) + _wire_of(rname) + wire[pos:end]
    if rdtype == _RRSIG:
        # header, then the signer: never compressed (RFC 4034 3.1.7), lowercased in the
        # canonical form, then the signature
        if end - pos < 18:
            raise ResponseError("RRSIG rdata too short")
        labels, after = _read_name(wire, pos + 18, end, compressed=False)
        return wire[pos : pos + 18] + _wire_of(labels) + wire[after:end]
    if rdtype == _NSEC:
        # the next name, never compressed and its case kept (RFC 6840 5.1), then the
        # type bitmap: the rdata as it is (dnspython's parser checks the bitmap when the
        # rdata object is made of it)
        _read_name(wire, pos, end, compressed=False)
        return wire[pos:end]
    if rdtype == _MX:
        if end - pos < 3:
            raise ResponseError("MX rdata too short")
        labels, after = _read_name(wire, pos + 2, end, True, seen)
        if after != end:
            raise ResponseError("rdata longer than its name")
        return wire[pos : pos + 2] + _wire_of(labels)
    # anything else: dnspython's parser (it knows every type) and its canonical form
    parser = dns.wire.Parser(wire, pos)
    try:
        with parser.restrict_to(end - pos):
            rdata = dns.rdata.from_wire_parser(_rdclass(rdclass), _rdtype(rdtype), parser)
        return rdata.to_digestable()
    except dns.exception.DNSException as e:
        raise ResponseError(f"bad rdata of type {rdtype}: {e}") from e


def _check_opt(wire: bytes, pos: int, rdlen: int, rdclass: int) -> None:
    """An OPT record's options must parse, as dnspython parses them."""
    if rdlen:
        try:
            dns.rdata.from_wire(_rdclass(rdclass), _OPT, wire, pos, rdlen)
        except dns.exception.DNSException as e:
            raise ResponseError(f"bad OPT record: {e}") from e


_RRSET = dns.rrset.RRset
#: every attribute of an RRset (the slots of its classes), which L{_new_rrset} sets
_RRSET_SLOTS = {"name", "deleting", "rdclass", "rdtype", "covers", "ttl", "items"}
if {slot for cls in _RRSET.__mro__ for slot in getattr(cls, "__slots__", ())} != _RRSET_SLOTS:
    raise ImportError("dnspython's RRset has changed: check _new_rrset")


def _new_rrset(
    name: dns.name.Name, rdclass: Any, rdtype: Any, covers: Any, ttl: int,
    items: dict[dns.rdata.Rdata, None],
) -> dns.rrset.RRset:
    """An RRset of C{items} made as dnspython's own copy makes one: its constructor and
    add() would check again what the caller knows (one record, or a template's)."""
    rrset = _RRSET.__new__(_RRSET)
    rrset.name = name
    rrset.deleting = None
    rrset.rdclass = rdclass
    rrset.rdtype = rdtype
    rrset.covers = covers
    rrset.ttl = ttl
    rrset.items = items
    return rrset


def copy_rrset(rrset: dns.rrset.RRset, name: dns.name.Name) -> dns.rrset.RRset:
    """C{rrset.copy()} (a plain RRset) owned by C{name}: its records, not hashed again,
    without dnspython's three levels of clone calls (nor L{_new_rrset}'s: one per answer)."""
    copy = _RRSET.__new__(_RRSET)
    copy.name = name
    copy.deleting = None
    copy.rdclass = rrset.rdclass
    copy.rdtype = rrset.rdtype
    copy.covers = rrset.covers
    copy.ttl = rrset.ttl
    copy.items = rrset.items.copy()
    return copy


def _lone_rrset(
    labels: tuple[bytes, ...], rdclass: int, rdtype: int, covers: int, value: Any, ttl: int,
    keep: bool,
) -> dns.rrset.RRset:
    """The RRset of one record (nothing to merge: no duplicate, no TTL to lower), as
    L{_rrset} makes it, but not remembered itself (its rdata and name are if C{keep})."""
    if rdclass == 1 and rdtype == 1 and len(value) == 4:  # (an answer's, mostly)
        return _new_rrset(
            _name(labels) if keep else checked_name((*labels, b"")), _IN, _A, _NO_TYPE,
            ttl, {_address_rdata(value): None},  # as _rdata() makes it, not memoised
        )
    if rdtype in _ONE_NAME:
        rdata = _rdata(rdclass, rdtype, _wire_of(value), keep)
    else:
        rdata = _rdata(rdclass, rdtype, value, keep)
    return _new_rrset(
        _name(labels) if keep else checked_name((*labels, b"")),
        _classes[rdclass], _types[rdtype], _types[covers], ttl, {rdata: None},
    )


def _rrset(
    labels: tuple[bytes, ...], rdclass: int, rdtype: int, covers: int,
    records: list[tuple[Any, int]], keep: bool,
) -> dns.rrset.RRset:
    """The RRset of C{records} (rdata, TTL), as dnspython would assemble it: the rdata in
    canonical form, but the labels of the name for the types of L{_ONE_NAME} (whose
    canonical form is only needed when the rdata is made, not to find it in the memo).

    With C{keep} (the authority and additional sections: a zone's NS, glue, SOA, which
    come again and again) what is made is remembered and shared (read-only, see
    L{Response}); answers mostly differ, and keeping them would only give the garbage
    collector more to walk.
    """
    if keep:
        key = (labels, rdclass, rdtype, covers, *records)
        template = _rrsets.get(key)
        if template is not None:
            return template
    named = rdtype in _ONE_NAME
    if len(records) == 1:
        rrset = _lone_rrset(labels, rdclass, rdtype, covers, *records[0], keep)
    else:
        rrset = dns.rrset.RRset(
            _name(labels, keep), _rdclass(rdclass), _rdtype(rdtype), _rdtype(covers)
        )
        for value, ttl in records:
            rrset.add(_rdata(rdclass, rdtype, _wire_of(value) if named else value, keep), ttl)
    if not keep:
        return rrset
    if len(_rrsets) >= MEMO_SIZE:
        _rrsets.clear()
    _rrsets[key] = rrset
    return rrset


def read_response(wire: bytes) -> Response:
    """Read C{wire}; raise L{ResponseError} for whatever dnspython's parser would refuse."""
    size = len(wire)
    if size < 12:
        raise ResponseError("message shorter than a header")
    qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(wire)
    response = Response(wire, qid, flags)
    seen: Seen = {}
    pos = 12
    count = -1
    if qdcount == 1:
        # the one question (of every response to ours), its name uncompressed: what
        # _read_name makes of it, without the bookkeeping of pointers
        labels: list[bytes] = []
        while pos < size:
            count = wire[pos]
            if not count or count >= 64:
                break
            stop = pos + 1 + count
            labels.append(wire[pos + 1 : stop].lower())
            pos = stop
        else:
            count = -1  # past the end
    if not count and pos - 11 <= 255 and pos + 5 <= size:
        octets = pos - 12  # the name's octets, root left out
        after = pos + 1
        name = tuple(labels)
        start = 12
        index = 0
        for label in name:
            seen[start] = (name[index:], octets, 0, after)
            index += 1
            start += len(label) + 1
            octets -= len(label) + 1
        pos = after + 4
    else:
        pos = 12
        for _ in range(qdcount):
            _, pos = _read_name(wire, pos, size, True, seen)
            pos += 4
            if pos > size:
                raise ResponseError("question runs past the end")
    if ancount == 1 and pos + 12 <= size and wire[pos] >= 0xC0:
        # one answer record (most answers) owned by a pointer to a name read before
        # (the question's): what _read_section makes of it, without its loop
        pointer, rdtype, rdclass, ttl, rdlen = _OWNED_BY_POINTER.unpack_from(wire, pos)
        target = pointer & 0x3FFF
        known = seen.get(target) if target < pos else None
        end = pos + 12 + rdlen
        if (
            known is not None and known[2] < _MAX_HOPS and known[3] <= pos
            and rdtype in NAMELESS and end <= size
        ):
            response.answer.append(_lone_rrset(
                known[0], rdclass, rdtype, 0, wire[pos + 12 : end],
                0 if ttl > 0x7FFFFFFF else ttl, False,
            ))
            pos = end
        else:
            pos = _read_section(wire, pos, size, 1, response.answer, False, seen, None)
    elif ancount:
        pos = _read_section(wire, pos, size, ancount, response.answer, False, seen, None)
    if not (nscount or arcount):
        if pos != size:
            raise ResponseError("trailing bytes after the last record")
        return response
    watched = None
    if size - pos <= TAIL_SIZE:
        # the end of the message: a zone's NS and glue, or its SOA, as it ended the last
        # response from there (whose question was as long) more often than not
        key = (pos, nscount, arcount, wire[pos:])
        tail = _tails.get(key)
        if tail is not None:
            for start, stop, octets in tail.deps:
                if wire[start:stop].lower() != octets:
                    break
            else:
                # the RRsets shared (read-only), the lists the caller's own
                response.authority = tail.authority.copy()
                response.additional = tail.additional.copy()
                response.ednsflags = tail.ednsflags
                return response
        seen = watched = _Watched(seen, pos)
    if nscount:
        pos = _read_section(wire, pos, size, nscount, response.authority, True, seen, None)
    if arcount:
        pos = _read_section(
            wire, pos, size, arcount, response.additional, True, seen, response
        )
    if pos != size:
        raise ResponseError("trailing bytes after the last record")
    if watched is not None and not watched.blind:
        if len(_tails) >= MEMO_SIZE:
            _tails.clear()
        _tails[key] = _Tail(
            tuple(
                (start, stop, wire[start:stop].lower())
                for start, stop in watched.deps.items()
            ),
            response.authority.copy(),
            response.additional.copy(),
            response.ednsflags,
        )
    return response


def _read_section(
    wire: bytes, pos: int, size: int, count: int, section: list[dns.rrset.RRset],
    keep: bool, seen: Seen, response: Response | None,
) -> int:
    """Read the C{count} records at C{pos} into C{section} (merged as dnspython merges
    them, and kept in the memos if C{keep}); where they end.  C{response} is given for
    the additional section, the one place for an OPT record (whose flags go there)."""
    have_opt = False
    groups: dict[tuple[Any, ...], list[tuple[Any, int]]] = {}
    for _ in range(count):
        known = None
        first = wire[pos] if pos < size else -1
        if first >= 0xC0 and pos + 1 < size:
            # an owner that is a pointer to a name read before (the qname, mostly):
            # backwards, and with a chain within bounds, it is that name
            target = (first & 0x3F) << 8 | wire[pos + 1]
            known = seen.get(target) if target < pos else None
        if known is not None and known[2] < _MAX_HOPS and known[3] <= pos:
            labels = known[0]
            pos += 2
        elif first == 0:  # the root (an OPT record's owner)
            labels = ()
            pos += 1
        else:
            labels, pos = _read_name(wire, pos, size, True, seen)
        if pos + 10 > size:
            raise ResponseError("record header runs past the end")
        rdtype, rdclass, ttl, rdlen = _RR.unpack_from(wire, pos)
        pos += 10
        end = pos + rdlen
        if end > size:
            raise ResponseError("rdata runs past the end")
        covers = 0
        if rdtype in NAMELESS:
            value: Any = wire[pos:end]
        elif rdtype in _ONE_NAME:
            value, after = _read_name(wire, pos, end, True, seen)
            if after != end:
                raise ResponseError("rdata longer than its name")
        elif rdtype == _OPT:
            if response is None or have_opt or labels:
                raise ResponseError("misplaced OPT record")
            if rdlen:
                _check_opt(wire, pos, rdlen, rdclass)
            have_opt = True
            response.ednsflags = ttl
            pos = end
            continue
        elif rdtype == _TSIG:
            raise ResponseError("signed (TSIG) response without a key to check it")
        else:
            value = _canonical(wire, pos, end, rdclass, rdtype, seen)
            if rdtype not in _CANONICAL_HERE and type(seen) is _Watched:
                seen.blind = True  # dnspython's parser follows pointers unwatched
            if rdtype in _SIGNATURES:
                covers = value[0] << 8 | value[1]
        if ttl > 0x7FFFFFFF:
            ttl = 0
        pos = end
        if count == 1:  # a section of one record (most are): nothing to merge
            section.append(
                _rrset(labels, rdclass, rdtype, covers, [(value, ttl)], True) if keep
                else _lone_rrset(labels, rdclass, rdtype, covers, value, ttl, False)
            )
            return pos
        group = (labels, rdclass, rdtype, covers)
        records = groups.get(group)
        if records is None:
            groups[group] = [(value, ttl)]
        else:
            records.append((value, ttl))
    for (labels, rdclass, rdtype, covers), records in groups.items():
        section.append(_rrset(labels, rdclass, rdtype, covers, records, keep))
    return pos


# -- writing ------------------------------------------------------------------------------

#: OPT RRsets without options by (flags, payload): an answer's OPT is one of very few
_opts: dict[tuple[int, int], dns.rrset.RRset] = {}


def use_edns(
    message: dns.message.Message, ednsflags: int, payload: int,
    options: list[Any] | None = None,
) -> None:
    """C{message.use_edns(0, ednsflags, payload, options=options)}, with the OPT record
    (when it has no options) copied from one made before rather than made anew."""
    if options:
        message.use_edns(0, ednsflags, payload, options=options)
        return
    key = (int(ednsflags) & 0xFF00FFFF, payload)  # EDNS version 0
    opt = _opts.get(key)
    if opt is None:
        if len(_opts) >= 256:
            _opts.clear()
        opt = _opts[key] = dns.message.Message._make_opt(key[0], payload, [])
    message.opt = _new_rrset(
        opt.name, opt.rdclass, opt.rdtype, opt.covers, opt.ttl, opt.items.copy()
    )
    message.request_payload = payload
    message.pad = 0


_TYPE_CLASS_TTL = struct.Struct(">HHI")
_TYPE_CLASS = struct.Struct(">HH")
_COUNTS = struct.Struct(">HHHHHH")
_lower = bytes.lower
_POINTER = struct.Struct(">H")
#: the question's name as every later name equal to it is written (a pointer to it)
_TO_QUESTION = b"\xc0\x0c"
#: the rdata length of an IN A record
_ADDRESS_LENGTH = b"\x00\x04"
#: record types without a TTL to count down (as L{kresolver.wire.ttl_offsets} sees them)
_NO_TTL = NO_TTL_TYPES

#: how an rdata is written, by the C{_to_wire} of its class: dnspython compresses the
#: names of NS, CNAME, PTR (one name), MX (after the preference), SOA (both names) and
#: CH A (before the address), and of nothing else, whose wire form is then its own
_PLAIN, _TARGET, _EXCHANGE, _SOA_NAMES, _CHAOS_A = range(5)
_WRITERS = {
    _NS_CLASS._to_wire: _TARGET,
    _MX_CLASS._to_wire: _EXCHANGE,
    _SOA_CLASS._to_wire: _SOA_NAMES,
    dns.rdtypes.CH.A.A._to_wire: _CHAOS_A,
}
_kinds: dict[type, int] = {}


def _write_name(
    out: bytearray, name: dns.name.Name, compress: dict[tuple[bytes, ...], int]
) -> None:
    """C{name} as dnspython's C{Name.to_wire} writes it with a compression table: each
    suffix of two labels or more is remembered (case-insensitively) where it starts, and
    the first remembered one becomes a pointer.  A relative name raises as there."""
    labels = name.labels
    if not labels or labels[-1]:
        raise dns.name.NeedAbsoluteNameOrOrigin
    last = len(labels) - 1
    if not last:  # the root
        out.append(0)
        return
    lowered = tuple(map(_lower, labels))
    if compress:
        pos = compress.get(lowered)  # the whole name, most often (an owner, a target)
        if pos is not None:
            out += _POINTER.pack(0xC000 + pos)
            return
    elif len(out) + 255 <= 0x3FFF:  # the first name (the question's): nothing to look up
        pos = len(out)
        for label in labels:
            compress[lowered] = pos
            out.append(len(label))
            out += label
            pos += len(label) + 1
            lowered = lowered[1:]
            if len(lowered) == 1:  # the root
                out.append(0)
                return
    i = 0
    for label in labels:
        if i:
            if i < last:
                suffix = lowered[i:]
                pos = compress.get(suffix)
                if pos is not None:
                    out += _POINTER.pack(0xC000 + pos)
                    return
        else:
            suffix = lowered
        if i < last:
            pos = len(out)
            if pos <= 0x3FFF:
                compress[suffix] = pos
        out.append(len(label))
        out += label
        i += 1


def _prime(compress: dict[tuple[bytes, ...], int], question: dns.name.Name) -> None:
    """Put in C{compress} what L{_write_name} puts there when it writes C{question}
    first (at 12): where each of its suffixes of two labels or more starts."""
    labels = question.labels
    lowered = tuple(map(_lower, labels))
    pos = 12
    for label in labels[:-1]:
        compress[lowered] = pos
        pos += len(label) + 1
        lowered = lowered[1:]


def _kind(cls: type) -> int:
    """How L{render} writes an rdata of class C{cls} (one of L{_WRITERS}' values)."""
    kind = _kinds[cls] = _WRITERS.get(getattr(cls, "_to_wire", None), _PLAIN)
    return kind


def _write_rdata(
    out: bytearray, rdata: Any, kind: int, compress: dict[tuple[bytes, ...], int]
) -> None:
    """The rdata of a type whose names dnspython compresses, compressed as it does."""
    if kind == _TARGET:
        _write_name(out, rdata.target, compress)
    elif kind == _EXCHANGE:
        out += _PREFERENCE.pack(rdata.preference)
        _write_name(out, rdata.exchange, compress)
    elif kind == _SOA_NAMES:
        _write_name(out, rdata.mname, compress)
        _write_name(out, rdata.rname, compress)
        out += _SOA_TAIL.pack(
            rdata.serial, rdata.refresh, rdata.retry, rdata.expire, rdata.minimum
        )
    else:
        _write_name(out, rdata.domain, compress)
        out += _PREFERENCE.pack(rdata.address)


def _write_rrset(
    out: bytearray, rrset: dns.rrset.RRset, compress: dict[tuple[bytes, ...], int],
    ttls: list[int], question: dns.name.Name | None,
) -> int:
    """Write the records of C{rrset} as dnspython's C{RRset.to_wire} does (shuffled, or
    in order under the class of C{deleting}); how many.  Where each record's TTL field
    lies goes on C{ttls}; an owner that is the name object C{question}, written first
    in the message, becomes a pointer to it at once."""
    name = rrset.name
    rdtype = rrset.rdtype
    rdclass = rrset.rdclass
    items = rrset.items
    deleting = rrset.deleting
    if deleting is not None:
        rdclass = deleting
    timed = rdtype not in _NO_TTL
    if items:
        rdatas: list[Any] = list(items)
        if len(rdatas) > 1 and deleting is None:
            random.shuffle(rdatas)  # as dnspython does when it renders an RRset
        head = _TYPE_CLASS_TTL.pack(rdtype, rdclass, rrset.ttl)
    else:  # one record without rdata, TTL 0, as dnspython writes an empty RRset
        rdatas = [None]
        head = _RR.pack(rdtype, rdclass, 0, 0)
    for rdata in rdatas:
        if name is question:
            out += _TO_QUESTION
        else:
            if not compress and question is not None:
                _prime(compress, question)
            _write_name(out, name, compress)
        if timed:
            ttls.append(len(out) + 4)
        out += head
        if rdata is None:
            break
        cls = type(rdata)
        if cls is AddressRdata:  # (an answer's, mostly)
            out += _ADDRESS_LENGTH
            out += _inet_aton(rdata.address)
            continue
        kind = _kinds.get(cls)
        if kind is None:
            kind = _kind(cls)
        if kind == _PLAIN:
            data = rdata_wire(rdata)
            out += _POINTER.pack(len(data))
            out += data
        else:
            if not compress and question is not None:
                _prime(compress, question)
            start = len(out)
            out += b"\x00\x00"
            _write_rdata(out, rdata, kind, compress)
            _POINTER.pack_into(out, start, len(out) - start - 2)
    return len(rdatas)


def render(
    message: dns.message.Message, max_size: int, offsets: list[int] | None = None
) -> bytes:
    """C{message.to_wire(max_size=max_size)}, without dnspython's renderer (the same
    bytes, the same random order of the records of an RRset, L{dns.exception.TooBig}
    when it does not fit, the same error for a relative name).  A message to sign or
    pad, or with an origin, goes to dnspython's renderer.

    C{offsets}, if given, gets what L{kresolver.wire.ttl_offsets} would find in the
    result (where each TTL lies), so that the answer cache need not read the message
    again to count its TTLs down.
    """
    if message.tsig is not None or message.pad or message.origin is not None:
        wire = message.to_wire(max_size=max_size)
        if offsets is not None:
            offsets += ttl_offsets(wire)
        return wire
    if max_size == 0:
        max_size = message.request_payload or 65535
    if max_size < 512:  # as to_wire bounds it
        max_size = 512
    elif max_size > 65535:
        max_size = 65535
    out = bytearray(12)
    compress: dict[tuple[bytes, ...], int] = {}
    questions, answer, authority, additional = message.sections
    if len(questions) == 1:
        # the one question's name as the first name is written (compressing nothing);
        # what it would put in the compression table is put there when a name other
        # than it is written (L{_prime}), which most answers never do
        question = questions[0]
        first = question.name
        out += name_wire(first)
        out += _TYPE_CLASS.pack(question.rdtype, question.rdclass)
    else:
        for rrset in questions:
            _write_name(out, rrset.name, compress)
            out += _TYPE_CLASS.pack(rrset.rdtype, rrset.rdclass)
        first = questions[0].name if questions else None
    # the first question's name, written at 12 (a pointer there serves it, but the root)
    if first is not None and len(first.labels) < 2:
        first = None
    opt = message.opt
    tail = b""  # the OPT record, last: the root as owner, the payload as class, the
    extra = 0  # extended flags as TTL
    if opt is not None:
        items = opt.items
        if not items:
            tail = b"\x00" + _RR.pack(opt.rdtype, opt.rdclass, 0, 0)
        for rdata in items:
            if getattr(rdata, "options", True):
                data = rdata.to_wire()
                tail += b"\x00" + _RR.pack(opt.rdtype, opt.rdclass, opt.ttl, len(data)) + data
            else:  # (an answer's, mostly)
                tail += b"\x00" + _RR.pack(opt.rdtype, opt.rdclass, opt.ttl, 0)
        extra = len(items) or 1
    ttls = [] if offsets is None else offsets
    mark = len(ttls)
    answers = authorities = additionals = 0
    try:
        for rrset in answer:
            items = rrset.items
            if rrset.name is first and len(items) == 1 and rrset.deleting is None:
                [rdata] = items
                if type(rdata) is AddressRdata and rrset.rdtype == _A:
                    # (an answer's A record, mostly: what _write_rrset writes of it)
                    ttls.append(len(out) + 6)
                    out += _TO_QUESTION
                    out += _TYPE_CLASS_TTL.pack(rrset.rdtype, rrset.rdclass, rrset.ttl)
                    out += _ADDRESS_LENGTH
                    out += _inet_aton(rdata.address)
                    answers += 1
                    continue
            answers += _write_rrset(out, rrset, compress, ttls, first)
        for rrset in authority:
            authorities += _write_rrset(out, rrset, compress, ttls, first)
        for rrset in additional:
            additionals += _write_rrset(out, rrset, compress, ttls, first)
        if len(out) + len(tail) > max_size:
            raise dns.exception.TooBig
    except BaseException:
        del ttls[mark:]  # nothing for what was not written
        raise
    out += tail
    _COUNTS.pack_into(
        out, 0, message.id, int(message.flags) & 0xFFFF, len(questions), answers,
        authorities, additionals + extra,
    )
    wire = bytes(out)
    message.wire = wire
    return wire
