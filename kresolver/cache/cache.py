"""The record cache: DNS semantics over a storage of bytes.

A storage (L{kresolver.interfaces.IStorage}) only keeps bytes under bytes for a while; this
module decides what those bytes mean: which data may replace which (ranks), how long it
is true (TTL clamps, RFC 2308 negative TTLs), what is left of its TTL when read, and what
may be served after it ran out (RFC 8767 serve-stale).

Keys put a name's labels in reverse order, each behind its length, so every key of a
zone's subtree starts with the zone's key and ``clear(name)`` is one prefix deletion:

    name key  = len(label) label ... from the root down, lowercased
    RRset     = name key 0x00 'T' type class   (also NODATA for that type: one replaces
                                                the other under the rank rules)
    NXDOMAIN  = name key 0x00 'X' class        (RFC 8020: covers the names below too)

Values are a versioned header (format, kind, rank, security, stored-at, TTL) followed by
RRsets in uncompressed wire form: an RRset entry holds the data, its RRSIGs and, for data
expanded from a wildcard, the NSEC/NSEC3 proofs (with RRSIGs) that a DO client is owed.
Storages may be shared with other machines (Redis, memcached), so whatever does not
decode, or decodes to data for another key, is deleted and counted as a miss; nothing
read back ever raises to the caller.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import dns.exception
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.wire

from kresolver.cache.storage import open_storage
from kresolver.cache.storage.memory import MemoryStorage, check_capacity
from kresolver.resolve.response import name_wire, rdata_wire, rdclass_enum, rdtype_enum
from kresolver.wire import LENGTH_OCTETS

__all__ = [
    "Cache",
    "CachedNegative",
    "CachedRRset",
    "Rank",
    "Security",
    "name_key",
]


class Rank(IntEnum):
    """How much a piece of data is trusted; higher ranks replace lower ones (RFC 2181 5.4.1)."""

    GLUE = 1  #: additional section: only to reach servers, never an answer
    AUTHORITY = 2  #: authority section of a non-authoritative answer (a referral's NS)
    ANSWER = 3  #: answer section without AA
    AUTH_ANSWER = 4  #: answer section with AA: the zone's own word


class Security(IntEnum):
    """The DNSSEC status the validator gave the data; kept with it so a hit needs no check."""

    UNCHECKED = 0
    INSECURE = 1
    SECURE = 2
    BOGUS = 3
    INDETERMINATE = 4


@dataclass(frozen=True, slots=True)
class CachedRRset:
    """A positive cache hit; C{rrset}, C{rrsigs} and C{proofs} carry the remaining TTL.

    C{proofs}: for data expanded from a wildcard, the NSEC/NSEC3 RRsets and RRSIGs proving
    that no closer name exists (empty otherwise).
    """

    rrset: dns.rrset.RRset
    rank: Rank
    security: Security
    rrsigs: dns.rrset.RRset | None = None
    stale: bool = False
    proofs: list[dns.rrset.RRset] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CachedNegative:
    """A negative cache hit (RFC 2308).

    C{name} is the owner the entry was stored for: for an NXDOMAIN found above the name
    asked (RFC 8020) it is that ancestor.  C{soa} and C{proofs} carry the remaining TTL.
    """

    rcode: dns.rcode.Rcode
    soa: dns.rrset.RRset
    name: dns.name.Name
    rank: Rank
    security: Security
    proofs: list[dns.rrset.RRset] = field(default_factory=list)
    stale: bool = False


FORMAT_VERSION = 1
_KIND_RRSET, _KIND_NODATA, _KIND_NXDOMAIN = 1, 2, 3
# version, kind, rank, security, stored-at (wall clock), TTL as stored, number of RRsets,
# length of the key, which follows: a value is only ever served for the key it names
_HEADER = struct.Struct("!BBBBdIBH")
_RRSET_HEAD = struct.Struct("!HHHH")  # type, class, covers, number of rdatas
_TYPE_CLASS = struct.Struct("!HH")
_CLASS = struct.Struct("!H")
#: how many read values are kept (header, RRsets, what callers derived from them) to skip
#: parsing again on repeated hits
DECODED_MEMO_SIZE = 4096
#: the NXDOMAIN key index (L{Cache._nx}) is swept of evicted keys beyond this size
NX_INDEX_MIN = 4096
#: RFC 2181 8: TTLs are 31-bit
MAX_TTL_LIMIT = 2**31 - 1
_UNCACHEABLE_TYPES = frozenset(
    {
        dns.rdatatype.RRSIG,  # signatures travel with the RRset they cover
        dns.rdatatype.OPT,
        dns.rdatatype.ANY,
        dns.rdatatype.AXFR,
        dns.rdatatype.IXFR,
        dns.rdatatype.TSIG,
        dns.rdatatype.TKEY,
    }
)
#: what a wildcard proof kept with an RRset is made of
_PROOF_TYPES = frozenset({dns.rdatatype.NSEC, dns.rdatatype.NSEC3})


#: name keys by labels (of absolute names only): a resolution looks the same few names up
#: again and again
_NAME_KEYS: dict[tuple[bytes, ...], bytes] = {}
#: their names' wire forms (case kept), made with the keys
_NAME_WIRES: dict[tuple[bytes, ...], bytes] = {}
_NAME_KEYS_SIZE = 8192
#: what follows a name key in a data (RRset or NODATA) key, by (type, class) as callers
#: pass them, with the type and class as enums and the tails of the class's CNAME and
#: NXDOMAIN keys (which a lookup reads next): L{_data_tail}
_DATA_TAILS: dict[tuple[Any, Any], tuple[bytes, Any, Any, bytes, bytes]] = {}
_Name = dns.name.Name
_CNAME = dns.rdatatype.CNAME
#: a label's length octet, by length
_LENGTHS = LENGTH_OCTETS
_UNMADE = object()
_UNREAD = object()
#: rdata types and classes as dnspython's enums, by what callers pass (int, enum, text)
_RANK_OF = {int(rank): rank for rank in Rank}
_SECURITY_OF = {int(security): security for security in Security}
#: members read per lookup, as globals (an enum class's attribute costs ~50 ns more)
_ANSWER = Rank.ANSWER
_BOGUS = Security.BOGUS


def _rank(value: int) -> Rank:
    rank = _RANK_OF.get(value)
    return rank if rank is not None else Rank(value)  # Rank() says what is wrong


def _security(value: int) -> Security:
    security = _SECURITY_OF.get(value)
    return security if security is not None else Security(value)


def name_key(name: dns.name.Name) -> bytes:
    """The key prefix of C{name}'s subtree: lowercased labels from the root down.

    Each label goes behind its length, so no name's key is a prefix of another's unless
    that one lies below it (``example`` does not prefix ``examples``).
    """
    labels = name.labels
    key = _NAME_KEYS.get(labels)
    if key is None:
        if not labels or labels[-1]:
            raise ValueError(f"cache names must be absolute, got {name}")
        # The name's wire form comes almost free from the same pieces, and a name looked
        # up is often stored next (a miss's answer): its value starts with that form.
        pieces = []
        for label in labels:  # a loop: a comprehension is one more frame (Python 3.11)
            pieces.append(_LENGTHS[len(label)] + label)
        wire = b"".join(pieces)
        pieces.pop()
        pieces.reverse()
        key = b"".join(pieces).lower()  # lengths are below 64: lower() leaves them be
        if len(_NAME_KEYS) >= _NAME_KEYS_SIZE:
            _NAME_KEYS.clear()
            _NAME_WIRES.clear()
        _NAME_KEYS[labels] = key
        _NAME_WIRES[labels] = wire
    return key


def _data_key(name: dns.name.Name, rdtype: int, rdclass: int) -> bytes:
    return name_key(name) + b"\x00T" + _TYPE_CLASS.pack(rdtype, rdclass)


def _prefix(name: dns.name.Name | str) -> bytes:
    """C{name_key} of what callers pass as a name: a memo hit for names seen before."""
    key = _NAME_KEYS.get(name.labels) if type(name) is _Name else None
    return key if key is not None else name_key(_as_name(name))


def _data_tail(rdtype: Any, rdclass: Any) -> tuple[bytes, Any, Any, bytes, bytes]:
    """(what follows the name key in a data key, type enum, class enum, what follows it
    in the CNAME key, in the NXDOMAIN key)."""
    tail = _DATA_TAILS.get((rdtype, rdclass))
    if tail is None:
        rdtype_, rdclass_ = rdtype_enum(rdtype), rdclass_enum(rdclass)
        tail = (
            b"\x00T" + _TYPE_CLASS.pack(rdtype_, rdclass_),
            rdtype_,
            rdclass_,
            b"\x00T" + _TYPE_CLASS.pack(_CNAME, rdclass_),
            b"\x00X" + _CLASS.pack(rdclass_),
        )
        if len(_DATA_TAILS) < 4096:
            _DATA_TAILS[(rdtype, rdclass)] = tail
    return tail


def _nxdomain_key(name: dns.name.Name, rdclass: int) -> bytes:
    return name_key(name) + b"\x00X" + _CLASS.pack(rdclass)


def _negative_keys(
    prefix: bytes, tail: bytes, labels: tuple[bytes, ...], rdclass: int
) -> Iterator[tuple[bytes, int, int]]:
    """(key, labels up from the name to the owner, kind): NODATA of the name (whose key
    is C{prefix}, C{labels}), then NXDOMAIN of it and of each ancestor (whose keys are
    prefixes of its key)."""
    yield prefix + tail, 0, _KIND_NODATA
    nx_tail = b"\x00X" + _CLASS.pack(rdclass)
    end = len(prefix)
    for up in range(len(labels)):
        yield prefix[:end] + nx_tail, up, _KIND_NXDOMAIN
        end -= len(labels[up]) + 1


def _ancestor(name: dns.name.Name, up: int) -> dns.name.Name:
    """C{name} without its first C{up} labels."""
    return name if up == 0 else dns.name.Name(name.labels[up:])


def _as_name(name: dns.name.Name | str) -> dns.name.Name:
    if isinstance(name, dns.name.Name):
        if not name.is_absolute():
            raise ValueError(f"cache names must be absolute, got {name}")
        return name
    if isinstance(name, str):
        return dns.name.from_text(name)
    raise ValueError(f"expected a domain name, got {name!r}")


def _encode_rrsets(rrsets: list[dns.rrset.RRset], out: list[bytes]) -> None:
    """Append the stored form of C{rrsets} (owner, L{_RRSET_HEAD}, sized rdatas) to C{out}."""
    for rrset in rrsets:
        items = rrset.items  # the records, without the set's Python-level len() and iter()
        name = rrset.name
        out.append(_NAME_WIRES.get(name.labels) or name_wire(name))
        out.append(_RRSET_HEAD.pack(rrset.rdtype, rrset.rdclass, rrset.covers, len(items)))
        for rdata in items:
            wire = rdata_wire(rdata)
            out.append(_CLASS.pack(len(wire)) + wire)


def _decode_rrsets(parser: dns.wire.Parser, count: int) -> list[dns.rrset.RRset]:
    rrsets = []
    for _ in range(count):
        owner = dns.name.from_wire_parser(parser)
        rdtype, rdclass, covers, n = parser.get_struct(_RRSET_HEAD.format)
        rrset = dns.rrset.RRset(owner, rdclass, rdtype, covers)
        for _ in range(n):
            length = parser.get_uint16()
            end = parser.current + length
            with parser.restrict_to(length):
                rrset.add(dns.rdata.from_wire_parser(rdclass, rdtype, parser))
            if parser.current != end:
                raise ValueError("rdata shorter than its length")
        if not rrset:
            raise ValueError("empty RRset")
        rrsets.append(rrset)
    if parser.remaining():
        raise ValueError("trailing bytes")
    return rrsets


def _belongs(
    kind: int, key: bytes, owner: dns.name.Name, rdclass: int, rrsets: list[dns.rrset.RRset]
) -> bool:
    """Whether decoded C{rrsets} of C{kind} are what C{key} (for C{owner}) may hold."""
    first = rrsets[0]
    if kind == _KIND_RRSET:
        if _data_key(first.name, first.rdtype, first.rdclass) != key:
            return False
        if len(rrsets) == 1:
            return True
        sigs = rrsets[1]
        return (
            sigs.rdtype == dns.rdatatype.RRSIG
            and sigs.covers == first.rdtype
            and sigs.name == first.name
            and sigs.rdclass == first.rdclass
            and all(_is_proof(proof) for proof in rrsets[2:])
        )
    return (
        first.rdtype == dns.rdatatype.SOA
        and first.rdclass == rdclass
        and owner.is_subdomain(first.name)
    )


def _is_proof(rrset: dns.rrset.RRset) -> bool:
    """Whether C{rrset} may be part of a wildcard proof: NSEC, NSEC3, or their RRSIGs."""
    covered = rrset.covers if rrset.rdtype == dns.rdatatype.RRSIG else rrset.rdtype
    return covered in _PROOF_TYPES


@dataclass(slots=True)
class _Entry:
    """A value's header, read before (and often instead of) its RRsets.

    A value never changes meaning, so one L{_Entry} serves every read of it (the memo is
    keyed by the value's bytes, which name their key): its RRsets are decoded once, and
    what callers derive from them (L{Cache.derive}) is computed once.
    """

    kind: int
    rank: Rank
    security: Security
    stored_at: float
    ttl: int
    count: int
    value: bytes
    start: int  #: where the RRsets begin
    key: bytes
    #: the RRsets once decoded and found to belong under C{key} (templates: copied out)
    rrsets: list[dns.rrset.RRset] | None = None
    #: L{Cache.derive}'s results, by the function that made them
    derived: dict[Any, Any] | None = None


class Cache:
    """DNS data with kresd's ``cache`` config API (``cache.size``, ``cache.clear()``...).

    C{clock} gives wall-clock seconds (an L{IReactorTime}); C{storage} defaults to a
    L{MemoryStorage} of C{size} bytes.
    """

    def __init__(self, clock: Any, storage: Any | None = None, size: int = 100 * 1024**2) -> None:
        self._clock = clock
        #: the NXDOMAIN keys this cache stored and has not seen go, when it is the only
        #: writer of its storage (a memory one it opened): the RFC 8020 search of every
        #: miss reads only those.  None when others may write the storage (passed in,
        #: shared: LMDB, Redis...): then every ancestor's key is read.
        self._nx: set[bytes] | None = None
        self._nx_bound = NX_INDEX_MIN
        if storage is None:
            self._size = check_capacity(size)
            storage = MemoryStorage(self._size, clock)
            self._nx = set()
        else:
            self._size = int(storage.usage().get("capacity", size))
        self._storage = storage
        #: whether the storage shares data with other resolvers, so that a lookup may
        #: want to L{fetch} first (a plain attribute: the cache layer reads it per query)
        self.shared = getattr(storage, "fetch", None) is not None
        self._uri: str = getattr(storage, "uri", None) or f"<{type(storage).__name__}>"
        self._min_ttl = 5
        self._max_ttl = 6 * 24 * 3600
        self._serve_stale = True
        self._stale_window = 24 * 3600
        self._stale_ttl = 30
        self._evicted_before = 0
        # value bytes -> their header and RRsets: a value's meaning never changes, and
        # bytes cache their hash, so a repeated hit on the same stored object costs a
        # dict lookup
        self._entries: dict[bytes, _Entry] = {}
        self._stats = dict.fromkeys(
            ("hit", "miss", "stale", "insert", "skip", "delete", "corrupt"), 0
        )
        #: called after every clear(): caches built from this one (whole answers) follow
        self.on_clear: list[Callable[[], None]] = []
        #: where shared storages count backend failures (the engine's metrics)
        self.metrics: dict[str, int] | None = None

    # -- data -------------------------------------------------------------------------

    def put_rrset(
        self,
        rrset: dns.rrset.RRset,
        rank: Rank,
        *,
        security: Security = Security.UNCHECKED,
        rrsigs: dns.rrset.RRset | None = None,
        proofs: Iterable[dns.rrset.RRset] = (),
    ) -> bool:
        """Keep C{rrset} (with its C{rrsigs}) unless a live entry of higher rank holds it.

        C{proofs}: for data expanded from a wildcard, the NSEC/NSEC3 RRsets and RRSIGs that
        prove no closer name exists, returned with every hit (they need C{rrsigs}: unsigned
        data has no wildcard to prove).  Returns whether it was stored.  A positive answer
        also ends a cached NXDOMAIN of the same name that does not outrank it: the name
        exists after all.
        """
        if type(rank) is not Rank:
            rank = _rank(rank)
        if type(security) is not Security:
            security = _security(security)
        name = rrset.name
        prefix = _NAME_KEYS.get(name.labels)
        if prefix is None:
            prefix = name_key(name)
        if not rrset.items:
            raise ValueError(f"cannot cache the empty RRset {name} {rrset.rdtype!r}")
        rdtype, rdclass = rrset.rdtype, rrset.rdclass
        if rdtype in _UNCACHEABLE_TYPES:
            raise ValueError(
                f"cannot cache {dns.rdatatype.to_text(rdtype)} RRsets as data"
                " (signatures go in rrsigs=)"
            )
        rrsets = [rrset]
        if rrsigs is not None:
            if (
                rrsigs.rdtype != dns.rdatatype.RRSIG
                or rrsigs.covers != rdtype
                or (rrsigs.name.labels != name.labels and rrsigs.name != name)
                or rrsigs.rdclass != rdclass
            ):
                raise ValueError(f"rrsigs do not cover {name} {rdtype!r}")
            if rrsigs:
                rrsets.append(rrsigs)
        if proofs and (proofs := list(proofs)):
            if len(rrsets) < 2:
                raise ValueError(f"wildcard proofs for {name} without the RRSIGs they explain")
            if not all(isinstance(p, dns.rrset.RRset) and p and _is_proof(p) for p in proofs):
                raise ValueError("wildcard proofs must be non-empty NSEC, NSEC3 or RRSIG RRsets")
            rrsets.extend(proofs)
        tails = _DATA_TAILS.get((rdtype, rdclass)) or _data_tail(rdtype, rdclass)
        ttl = rrset.ttl
        ttl = self._min_ttl if ttl < self._min_ttl else ttl
        ttl = self._max_ttl if ttl > self._max_ttl else ttl
        if not self._put(prefix + tails[0], _KIND_RRSET, rank, security, ttl, rrsets):
            return False
        nx_key = prefix + tails[4]
        nx = self._nx
        if nx is None or nx_key in nx:
            nxdomain = self._read(nx_key, nxdomain=True)
            if nxdomain is not None and not self._outranks(nxdomain, rank):
                self._stats["delete"] += self._storage.delete(nx_key)
                nxdomain = None
            if nxdomain is None and nx is not None:
                nx.discard(nx_key)
        return True

    def get_rrset(
        self,
        name: dns.name.Name | str,
        rdtype: int | str,
        rdclass: int | str = dns.rdataclass.IN,
        *,
        min_rank: Rank = Rank.ANSWER,
        stale: bool = False,
    ) -> CachedRRset | None:
        """The cached RRset of C{rank >= min_rank}, with its TTL counted down, or None.

        With C{stale}, data expired less than C{stale_window} ago comes back with TTL
        C{stale_ttl} and C{stale=True} (RFC 8767), if C{serve_stale} is on.
        """
        tail, _, rdclass, _, _ = _data_tail(rdtype, rdclass)
        return self._get(_prefix(name) + tail, name, rdclass, min_rank, stale)

    def lookup(
        self,
        name: dns.name.Name | str,
        rdtype: int | str,
        rdclass: int | str = dns.rdataclass.IN,
        *,
        cd: bool = False,
        stale: bool = False,
    ) -> CachedRRset | CachedNegative | None:
        """What the cache tells a resolver about C{name} C{rdtype}: its data, else (for
        types but CNAME) the name's CNAME to follow, else the proof that there is no data
        (L{get_negative}); each of rank ANSWER or better, and not BOGUS unless C{cd}.

        The three lookups a resolver makes in that order, in one call that builds the
        name's key once; the stats count them as those three.  C{stale} as in
        L{get_rrset} and L{get_negative}.
        """
        if type(name) is not _Name:
            name = _as_name(name)
        prefix = _NAME_KEYS.get(name.labels)
        if prefix is None:
            prefix = name_key(name)
        tail, rdtype, rdclass, cname_tail, nx_tail = (
            _DATA_TAILS.get((rdtype, rdclass)) or _data_tail(rdtype, rdclass)
        )
        get = self._storage.get
        missed = 0  # lookups that found nothing, counted at once
        key = prefix + tail
        value = get(key)  # the data, or NODATA of the type
        data = None if value is None else self._entry(key, value, False)
        if data is not None:
            hit = self._positive(data, name, rdclass, _ANSWER, stale)
            if hit is not None and (cd or hit.security != _BOGUS):
                return hit
        else:
            missed = 1
        if rdtype != _CNAME:
            key = prefix + cname_tail
            value = get(key)
            if value is not None:
                alias = self._entry(key, value, False)
                hit = self._positive(alias, name, rdclass, _ANSWER, stale)
                if hit is not None and (cd or hit.security != _BOGUS):
                    self._stats["miss"] += missed
                    return hit
            else:
                missed += 1
        if data is None and self._nx is not None and not self._nx:
            self._stats["miss"] += missed + 1  # no NODATA there, no NXDOMAIN anywhere
            return None
        if missed:
            self._stats["miss"] += missed
        negative = self._negative(name, prefix, tail, nx_tail, rdclass, _ANSWER, stale, data)
        if negative is not None and (cd or negative.security != _BOGUS):
            return negative
        return None

    def _get(
        self,
        key: bytes,
        name: dns.name.Name | str,
        rdclass: int,
        min_rank: Rank,
        stale: bool,
    ) -> CachedRRset | None:
        """L{get_rrset} of the data key C{key} (for C{name}, C{rdclass})."""
        return self._positive(self._read(key), name, rdclass, min_rank, stale)

    def _positive(
        self,
        entry: _Entry | None,
        name: dns.name.Name | str,
        rdclass: int,
        min_rank: Rank,
        stale: bool,
    ) -> CachedRRset | None:
        """L{get_rrset} of the C{entry} read under a data key."""
        if entry is None or entry.kind != _KIND_RRSET or entry.rank < min_rank:
            self._stats["miss"] += 1
            return None
        ttl, is_stale = self._ttl_left(entry, stale)
        if ttl <= 0:
            self._stats["miss"] += 1
            return None
        rrsets = self._body(entry, ttl, name, rdclass)
        if rrsets is None:
            self._stats["miss"] += 1
            return None
        self._stats["stale" if is_stale else "hit"] += 1
        rrsigs = rrsets[1] if len(rrsets) >= 2 else None
        return CachedRRset(
            rrsets[0], entry.rank, entry.security, rrsigs, is_stale, rrsets[2:]
        )

    def derive(
        self,
        name: dns.name.Name | str,
        rdtype: int | str,
        make: Callable[[dns.rrset.RRset], Any],
        *,
        min_rank: Rank = Rank.ANSWER,
        rdclass: int | str = dns.rdataclass.IN,
    ) -> tuple[Any, Security] | None:
        """(C{make(rrset)}, security) for the live cached RRset of C{rank >= min_rank}, or
        None; counted as a lookup like L{get_rrset}.

        C{make} runs once per stored value (its result is kept with the value, which never
        changes meaning) and gets the decoded RRset itself, TTL as stored, to read and not
        to keep: what it returns is shared by every later call, so it must not change
        either (beyond a memo of its own).  For callers that want a few
        facts of hot data again and again (a zone cut's NS names and addresses) without
        copying the RRsets each time.
        """
        tail, _, rdclass, _, _ = _DATA_TAILS.get((rdtype, rdclass)) or _data_tail(rdtype, rdclass)
        prefix = _NAME_KEYS.get(name.labels) if type(name) is _Name else None
        key = (prefix if prefix is not None else _prefix(name)) + tail
        value = self._storage.get(key)
        if value is None:
            self._stats["miss"] += 1
            return None
        return self._derived(
            key, value, name, 0, rdclass, make, min_rank, self._clock.seconds()
        )

    def closest(
        self,
        name: dns.name.Name,
        rdtype: int | str,
        make: Callable[[dns.rrset.RRset], Any],
        *,
        min_rank: Rank = Rank.ANSWER,
        rdclass: int | str = dns.rdataclass.IN,
        cd: bool = False,
    ) -> tuple[Any, Security, int] | None:
        """L{derive} of C{name}, else of its parent, and so on up to the root: (what
        C{make} made, security, labels up from C{name}) of the first hit that is not
        BOGUS (unless C{cd}), or None.  Each level counts as one L{derive}.

        A zone cut's search: the ancestors' keys are prefixes of the name's key, so a
        level costs a slice and a storage read, not a name and a call.
        """
        tail, _, rdclass, _, _ = _DATA_TAILS.get((rdtype, rdclass)) or _data_tail(rdtype, rdclass)
        labels = name.labels
        prefix = _NAME_KEYS.get(labels)
        if prefix is None:
            prefix = name_key(name)
        now = self._clock.seconds()
        get = self._storage.get
        stats = self._stats
        end = len(prefix)
        for up in range(len(labels)):
            key = prefix[:end] + tail
            end -= len(labels[up]) + 1
            value = get(key)
            if value is None:  # most levels below a cut: counted here, no call
                stats["miss"] += 1
                continue
            found = self._derived(key, value, name, up, rdclass, make, min_rank, now)
            if found is not None and (cd or found[1] != _BOGUS):
                return found[0], found[1], up
        return None

    def _derived(
        self, key: bytes, value: bytes, name: dns.name.Name | str, up: int, rdclass: int,
        make: Callable[[dns.rrset.RRset], Any], min_rank: Rank, now: float,
    ) -> tuple[Any, Security] | None:
        """L{derive} of the RRset at C{key} (whose C{value} the caller read), owned by
        C{name} less its first C{up} labels, live at C{now}; counted as one lookup."""
        stats = self._stats
        entry = self._entries.get(value)  # L{_entry}'s memo, looked at here: hot
        if entry is None or entry.key != key:
            entry = self._entry(key, value, False)
        if entry is None or entry.kind != _KIND_RRSET or entry.rank < min_rank:
            stats["miss"] += 1
            return None
        max_ttl = self._max_ttl
        ttl = entry.ttl if entry.ttl < max_ttl else max_ttl  # L{_live}, inline
        if ttl <= 0 or now - entry.stored_at >= ttl:
            stats["miss"] += 1
            return None
        derived = entry.derived
        made = _UNMADE if derived is None else derived.get(make, _UNMADE)
        if made is _UNMADE:
            made = self._make(entry, _ancestor(name, up), rdclass, make)
            if made is _UNMADE:
                stats["miss"] += 1
                return None
        stats["hit"] += 1
        return made, entry.security

    def _make(
        self, entry: _Entry, owner: dns.name.Name | str, rdclass: int, make: Callable[..., Any]
    ) -> Any:
        """C{make} of the entry's RRset, kept with the entry; _UNMADE if it is corrupt."""
        rrsets = self._decoded(entry, owner, rdclass)
        if rrsets is None:
            return _UNMADE
        derived = entry.derived
        if derived is None:
            derived = entry.derived = {}
        made = derived[make] = make(rrsets[0])
        return made

    def put_negative(
        self,
        name: dns.name.Name | str,
        rdtype: int | str,
        rcode: int,
        soa: dns.rrset.RRset,
        *,
        proofs: Iterable[dns.rrset.RRset] = (),
        security: Security = Security.UNCHECKED,
        rank: Rank = Rank.AUTH_ANSWER,
    ) -> bool:
        """Keep a negative answer: NXDOMAIN for C{name} (every type, and the names below
        it) or NODATA for C{name} and C{rdtype}.

        The TTL is the smaller of the SOA's TTL and its MINIMUM (RFC 2308 5), clamped.
        C{proofs} are the NSEC/NSEC3 RRsets and their RRSIGs, returned with the entry.
        Returns whether it was stored (a live entry of higher rank wins).
        """
        rank, security = _rank(rank), _security(security)
        name = _as_name(name)
        rdtype = rdtype_enum(rdtype)
        rcode = dns.rcode.Rcode.make(rcode)
        if soa.rdtype != dns.rdatatype.SOA or not soa:
            raise ValueError(f"negative answers are cached with their SOA, not {soa!r}")
        if not name.is_subdomain(soa.name):
            raise ValueError(f"the SOA of {soa.name} cannot deny {name}")
        proofs = list(proofs)
        if not all(isinstance(proof, dns.rrset.RRset) and proof for proof in proofs):
            raise ValueError("proofs must be non-empty RRsets")
        if rcode == dns.rcode.NXDOMAIN:
            kind, key = _KIND_NXDOMAIN, _nxdomain_key(name, soa.rdclass)
        elif rcode == dns.rcode.NOERROR:
            if rdtype in _UNCACHEABLE_TYPES:
                raise ValueError(f"cannot cache NODATA for {dns.rdatatype.to_text(rdtype)}")
            kind, key = _KIND_NODATA, _data_key(name, rdtype, soa.rdclass)
        else:
            raise ValueError(
                f"only NXDOMAIN and NODATA (NOERROR) are cached, not {dns.rcode.to_text(rcode)}"
            )
        ttl = self._clamp(min(soa.ttl, soa[0].minimum))
        return self._put(key, kind, rank, security, ttl, [soa, *proofs])

    def get_negative(
        self,
        name: dns.name.Name | str,
        rdtype: int | str,
        rdclass: int | str = dns.rdataclass.IN,
        *,
        min_rank: Rank = Rank.ANSWER,
        stale: bool = False,
    ) -> CachedNegative | None:
        """The cached proof that C{name} C{rdtype} does not exist, or None.

        Looks for NODATA of the type, then NXDOMAIN of the name, then NXDOMAIN of each
        ancestor (RFC 8020).  A live RRset of the type means the answer is not negative.
        Look up L{get_rrset} first: a name's positive data replaces NODATA, but a cached
        NXDOMAIN above a name is not searched for on every positive store.
        """
        if type(name) is not _Name:
            name = _as_name(name)
        tail, _, rdclass, _, nx_tail = _data_tail(rdtype, rdclass)
        return self._negative(name, _prefix(name), tail, nx_tail, rdclass, min_rank, stale)

    def _negative(
        self,
        name: dns.name.Name,
        prefix: bytes,
        tail: bytes,
        nx_tail: bytes,
        rdclass: int,
        min_rank: Rank,
        stale: bool,
        nodata: Any = _UNREAD,
    ) -> CachedNegative | None:
        """L{get_negative} of C{name}, whose key is C{prefix}, for the type of C{tail}
        (C{nx_tail}: what follows a name key in an NXDOMAIN key of the class).

        C{nodata}: what L{_read} gave for the data key (C{prefix + tail}) just before, to
        use instead of reading it again (None: nothing, or nothing valid, is there).
        """
        fallback: CachedNegative | None = None
        if nodata is _UNREAD or (
            nodata is not None and self._entries.get(nodata.value) is not nodata
        ):  # not read yet, or found corrupt since, or no longer remembered: read it
            nodata = self._read(prefix + tail)
        if nodata is not None and nodata.rank >= min_rank:
            if nodata.kind == _KIND_RRSET:
                if self._live(nodata):  # the type exists: nothing to deny
                    self._stats["miss"] += 1
                    return None
            else:
                fallback = self._denial(nodata, name, rdclass, stale, False)
                if fallback is not None and not fallback.stale:
                    self._stats["hit"] += 1
                    return fallback
        # NXDOMAIN of the name, then of each ancestor: their keys are prefixes of its key
        nx = self._nx
        get = self._storage.get
        end = len(prefix)
        for up, label in enumerate(name.labels):
            key = prefix[:end] + nx_tail
            end -= len(label) + 1
            if nx is not None and key not in nx:
                continue  # this cache never stored it, and no one else writes its storage
            value = get(key)
            if value is None:
                if nx is not None:
                    nx.discard(key)  # evicted or expired
                continue
            entry = self._entry(key, value, True)
            if entry is None or entry.rank < min_rank:
                continue
            found = self._denial(entry, _ancestor(name, up), rdclass, stale, fallback is not None)
            if found is None:
                continue
            if not found.stale:
                self._stats["hit"] += 1
                return found
            fallback = found
        if fallback is not None:
            self._stats["stale"] += 1
        else:
            self._stats["miss"] += 1
        return fallback

    def _denial(
        self, entry: _Entry, owner: dns.name.Name, rdclass: int, stale: bool, fallback: bool
    ) -> CachedNegative | None:
        """The denial a NODATA or NXDOMAIN C{entry} for C{owner} gives, if it may: live,
        or (C{stale}) stale when there is no stale C{fallback} yet."""
        ttl, is_stale = self._ttl_left(entry, stale)
        if ttl <= 0 or (is_stale and fallback):
            return None
        rrsets = self._body(entry, ttl, owner, rdclass)
        if rrsets is None:
            return None
        rcode = dns.rcode.NXDOMAIN if entry.kind == _KIND_NXDOMAIN else dns.rcode.NOERROR
        return CachedNegative(
            rcode, rrsets[0], owner, entry.rank, entry.security, rrsets[1:], is_stale
        )

    # -- config API (kresd's ``cache`` table) -----------------------------------------

    @property
    def size(self) -> int:
        """The storage's bound in bytes; assigning it resizes, evicting at once."""
        return self._size

    @size.setter
    def size(self, value: int) -> None:
        value = check_capacity(value)
        if isinstance(getattr(type(self._storage), "capacity", None), property):
            self._storage.capacity = value
            self._size = value
        else:
            self.open(value, self._uri)

    @property
    def storage(self) -> str:
        """The storage URI (``memory://``); assigning one reopens the cache there."""
        return self._uri

    @storage.setter
    def storage(self, uri: str) -> None:
        self.open(self._size, uri)

    @property
    def backend(self) -> Any:
        """The L{IStorage} object itself, for code that needs more than the URI."""
        return self._storage

    def open(self, size: int, uri: str = "memory://") -> bool:
        """Replace the storage by C{uri} bounded by C{size} bytes (kresd's ``cache.open``).

        The old storage stays in use when the new one cannot be opened.
        """
        size = check_capacity(size)
        storage = open_storage(uri, size, self._clock)
        if self.metrics is not None and hasattr(storage, "metrics"):
            storage.metrics = self.metrics  # shared storages count their failures there
        old = self._storage
        self._evicted_before += old.usage().get("evicted", 0)
        self._storage, self._size, self._uri = storage, size, uri
        self._nx = set() if type(storage) is MemoryStorage else None  # made here: ours alone
        self.shared = getattr(storage, "fetch", None) is not None
        close = getattr(old, "close", None)  # files and connections of LMDB, Redis...
        if close is not None:
            close()
        return True

    def fetch(
        self, name: dns.name.Name | str, rdtype: int | str, rdclass: int | str = dns.rdataclass.IN
    ) -> Any:
        """A Deferred that fires once what a lookup of C{name} C{rdtype} reads (its data,
        its CNAME, NXDOMAIN of it and of its ancestors) was brought from a shared storage
        (Redis, memcached) into the local layer; None when there is nothing to wait for.

        The wait is bounded and never fails (L{kresolver.cache.tiered.TieredStorage}).
        Always None unless L{shared}.
        """
        fetch = getattr(self._storage, "fetch", None)
        if fetch is None:
            return None
        name = _as_name(name)
        prefix = _prefix(name)
        tail, rdtype, rdclass, _, _ = _data_tail(rdtype, rdclass)
        data_key = prefix + tail
        if self._storage.get(data_key) is not None:
            return None  # held here (data or NODATA): a hit must not wait for the network
        keys = [data_key, _data_key(name, dns.rdatatype.CNAME, rdclass)]
        keys.extend(
            key
            for key, _, kind in _negative_keys(prefix, tail, name.labels, rdclass)
            if kind == _KIND_NXDOMAIN
        )
        return fetch(keys)

    def min_ttl(self, value: int | None = None) -> int:
        """Get, or set and return, the smallest TTL data is kept for (default 5 s)."""
        if value is not None:
            value = self._check_ttl("min_ttl", value)
            if value > self._max_ttl:
                raise ValueError(f"min_ttl {value} is above max_ttl {self._max_ttl}")
            self._min_ttl = value
        return self._min_ttl

    def max_ttl(self, value: int | None = None) -> int:
        """Get, or set and return, the largest TTL data is kept for (default 6 days)."""
        if value is not None:
            value = self._check_ttl("max_ttl", value)
            if value < self._min_ttl:
                raise ValueError(f"max_ttl {value} is below min_ttl {self._min_ttl}")
            self._max_ttl = value
        return self._max_ttl

    @property
    def serve_stale(self) -> bool:
        """Whether expired data may answer when every upstream fails (RFC 8767)."""
        return self._serve_stale

    @serve_stale.setter
    def serve_stale(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"cache.serve_stale is true or false, not {value!r}")
        self._serve_stale = value

    @property
    def stale_window(self) -> int:
        """How long after expiry data may still be served stale (RFC 8767: 1 to 7 days)."""
        return self._stale_window

    @stale_window.setter
    def stale_window(self, value: int) -> None:
        self._stale_window = self._check_ttl("stale_window", value)

    @property
    def stale_ttl(self) -> int:
        """The TTL stale answers carry (RFC 8767 recommends 30 s)."""
        return self._stale_ttl

    @stale_ttl.setter
    def stale_ttl(self, value: int) -> None:
        value = self._check_ttl("stale_ttl", value)
        if value == 0:
            raise ValueError("cache.stale_ttl must be at least 1 second")
        self._stale_ttl = value

    def clear(self, name: dns.name.Name | str | None = None, exact: bool = False) -> int:
        """Remove everything, C{name}'s subtree, or (C{exact}) C{name} alone.

        Returns how many entries went.
        """
        nx = self._nx
        if name is None:
            removed = self.count()
            self._storage.clear()
            if nx is not None:
                nx.clear()
        else:
            prefix = name_key(_as_name(name))
            if exact:
                prefix += b"\x00"
            removed = self._storage.delete(prefix)
            if nx is not None:
                self._nx = {key for key in nx if not key.startswith(prefix)}
        self._stats["delete"] += removed
        for callback in self.on_clear:
            callback()
        return removed

    def count(self) -> int:
        """How many entries the storage holds (expired ones not yet evicted included)."""
        return int(self._storage.usage()["count"])

    def stats(self) -> dict[str, int]:
        """Counters since start: C{hit}, C{miss} (per lookup), C{stale} (stale hits),
        C{insert}, C{skip} (refused by rank), C{delete}, C{evict}, C{corrupt}, and the
        storage's C{count}, C{bytes}, C{capacity}."""
        usage = self._storage.usage()
        stats = dict(self._stats)
        stats["evict"] = self._evicted_before + int(usage.get("evicted", 0))
        for name in ("count", "bytes", "capacity"):
            if name in usage:
                stats[name] = int(usage[name])
        return stats

    # -- internals --------------------------------------------------------------------

    @staticmethod
    def _check_ttl(what: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"cache.{what} takes whole seconds, not {value!r}")
        if not 0 <= value <= MAX_TTL_LIMIT:
            raise ValueError(f"cache.{what} must be within 0..{MAX_TTL_LIMIT}, got {value}")
        return value

    def _clamp(self, ttl: int) -> int:
        return min(max(ttl, self._min_ttl), self._max_ttl)

    def _put(
        self,
        key: bytes,
        kind: int,
        rank: Rank,
        security: Security,
        ttl: int,
        rrsets: list[dns.rrset.RRset],
    ) -> bool:
        """Store unless a live entry of higher rank holds C{key}; say whether stored."""
        if len(rrsets) > 255:  # the header counts them in one byte
            raise ValueError(f"too many RRsets ({len(rrsets)}) for one cache entry")
        value = self._storage.get(key)
        if value is not None:
            old = self._entry(key, value, kind == _KIND_NXDOMAIN)
            if old is not None and old.rank > rank and self._live(old):
                self._stats["skip"] += 1
                return False
        parts = [
            _HEADER.pack(
                FORMAT_VERSION,
                kind,
                rank,
                security,
                self._clock.seconds(),
                ttl,
                len(rrsets),
                len(key),
            ),
            key,
        ]
        try:
            _encode_rrsets(rrsets, parts)
        except dns.exception.DNSException as e:
            raise ValueError(f"cannot encode {rrsets[0].name} for the cache: {e}") from e
        keep = ttl + (self._stale_window if self._serve_stale else 0)
        self._storage.set(key, b"".join(parts), keep)
        self._stats["insert"] += 1
        if kind == _KIND_NXDOMAIN and self._nx is not None:
            self._index_nxdomain(key)
        return True

    def _index_nxdomain(self, key: bytes) -> None:
        """Note that C{key}, an NXDOMAIN key, was stored.

        Keys the storage evicted are only noticed when read, so once the index has grown
        to twice what was live at the last sweep, those the storage no longer holds go.
        """
        nx = self._nx
        assert nx is not None
        nx.add(key)
        if len(nx) > self._nx_bound:
            storage = self._storage
            self._nx = nx = {key for key in nx if key in storage}
            self._nx_bound = max(2 * len(nx), NX_INDEX_MIN)

    def _read(self, key: bytes, nxdomain: bool = False) -> _Entry | None:
        """The header of the value under C{key}; a value that is not ours is deleted.

        C{nxdomain} says the key is an NXDOMAIN key, which holds nothing else.
        """
        value = self._storage.get(key)
        if value is None:
            return None
        return self._entry(key, value, nxdomain)

    def _entry(self, key: bytes, value: bytes, nxdomain: bool) -> _Entry | None:
        """L{_read} of a C{value} found under C{key}: remembered, or parsed and checked."""
        entry = self._entries.get(value)
        if entry is not None and entry.key == key:
            return entry
        if len(value) >= _HEADER.size:
            head = _HEADER.unpack_from(value)
            version, kind, rank, security, stored_at, ttl, count, key_length = head
            start = _HEADER.size + key_length
            if (
                version == FORMAT_VERSION
                and (kind == _KIND_NXDOMAIN) == nxdomain
                and _KIND_RRSET <= kind <= _KIND_NXDOMAIN
                and rank in _RANK_OF
                and security in _SECURITY_OF
                and math.isfinite(stored_at)
                and count > 0
                and value[_HEADER.size : start] == key
            ):
                entry = _Entry(
                    kind, _RANK_OF[rank], _SECURITY_OF[security], stored_at, ttl, count,
                    value, start, key,
                )
                entries = self._entries
                if len(entries) >= DECODED_MEMO_SIZE:
                    entries.clear()
                entries[value] = entry
                return entry
        self._corrupt(key)
        return None

    def _live(self, entry: _Entry) -> bool:
        """C{self._ttl_left(entry, False)[0] > 0}, without the tuple: whether the entry
        has TTL left (whole seconds: the elapsed time is below its TTL)."""
        ttl = entry.ttl if entry.ttl < self._max_ttl else self._max_ttl
        return ttl > 0 and self._clock.seconds() - entry.stored_at < ttl

    def _ttl_left(self, entry: _Entry, stale: bool) -> tuple[int, bool]:
        """(TTL to answer with, whether stale): TTL 0 when the entry may not answer.

        The stored TTL is clamped again with today's max_ttl, which also bounds what a
        shared storage could claim; a stored-at time in the future counts as now.
        """
        ttl = min(entry.ttl, self._max_ttl)
        elapsed = max(self._clock.seconds() - entry.stored_at, 0.0)
        left = ttl - int(elapsed)
        if left > 0:
            return left, False
        if stale and self._serve_stale and elapsed - ttl < self._stale_window:
            return self._stale_ttl, True
        return 0, False

    def _decoded(
        self, entry: _Entry, owner: dns.name.Name | str, rdclass: int
    ) -> list[dns.rrset.RRset] | None:
        """The entry's RRsets as stored (templates, not to be changed); None (and the value
        deleted) if they do not decode or do not belong under its key, which is for
        C{owner} and C{rdclass}."""
        decoded = entry.rrsets
        if decoded is None:
            try:
                parser = dns.wire.Parser(entry.value, entry.start)
                decoded = _decode_rrsets(parser, entry.count)
                valid = _belongs(entry.kind, entry.key, _as_name(owner), rdclass, decoded)
            except Exception:  # anything at all: the bytes may come from a foreign writer
                valid = False
            if not valid:
                self._entries.pop(entry.value, None)
                self._corrupt(entry.key)
                return None
            entry.rrsets = decoded
        return decoded

    def _body(
        self, entry: _Entry, ttl: int, owner: dns.name.Name | str, rdclass: int
    ) -> list[dns.rrset.RRset] | None:
        """Fresh copies of the entry's RRsets (L{_decoded}) with C{ttl}."""
        decoded = self._decoded(entry, owner, rdclass)
        if decoded is None:
            return None
        rrsets = []
        for template in decoded:
            rrset = template.copy()  # rdatas are immutable; the set and its TTL are not
            rrset.ttl = ttl
            rrsets.append(rrset)
        return rrsets

    def _outranks(self, entry: _Entry | None, rank: Rank) -> bool:
        """Whether C{entry} is live and of higher rank, so data of C{rank} must not replace it."""
        return entry is not None and entry.rank > rank and self._live(entry)

    def _corrupt(self, key: bytes) -> None:
        self._stats["corrupt"] += 1
        self._storage.delete(key)
