"""DNSSEC validation as pure functions: signatures, DS -> DNSKEY, NSEC and NSEC3 proofs.

dnspython does the cryptography; this module holds the policy a validating resolver adds
around it, so that the validate layer only has to say *what* to check:

  - which algorithms are validated (RFC 8624: 8, 10, 13, 14, 15, 16 where ``cryptography``
    implements them); a zone whose DS records name only other algorithms (1, 3, 5, 6, 7,
    12, unknown) or only unknown digests is INSECURE, not bogus (RFC 4035 5.2);
  - signature validity windows, with a small allowance for clock skew;
  - TTLs capped by the RRSIG's original TTL and its expiration (RFC 4035 5.3.3);
  - the RRSIG labels field, which tells a wildcard expansion (RFC 4035 5.3.4);
  - NSEC (RFC 4035 5.4, RFC 6840 4.1) and NSEC3 (RFC 5155 8) denial of existence, with
    RFC 9276's iteration cap, above which the answer is INSECURE (EDE 27).

Every check returns a L{Verdict}: the L{Security} the cache keeps, and for BOGUS (or an
INSECURE for a reason the client should hear) the Extended DNS Error (RFC 8914) that says
why.  Nothing here does I/O or reads a clock: callers pass C{now}.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import dns.dnssec
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.IN.A
import dns.rrset
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from dns.dnssecalgs.ecdsa import PublicECDSA

from kresolver.cache.cache import Security
from kresolver.resolve.response import rdata_wire

__all__ = [
    "CLOCK_SKEW",
    "EDE",
    "MAX_NSEC3_ITERATIONS",
    "Denial",
    "Verdict",
    "bitmap_has",
    "match_ds",
    "nsec3_hash",
    "nsec_covers",
    "order_key",
    "same_name",
    "supported_algorithm",
    "supported_digest",
    "verify_dnskeys",
    "verify_rrset",
    "within",
]

_T = dns.rdatatype


class EDE:
    """Extended DNS Error codes (RFC 8914) a validator reports."""

    UNSUPPORTED_DNSKEY_ALGORITHM = 1
    UNSUPPORTED_DS_DIGEST = 2
    INDETERMINATE = 5
    BOGUS = 6
    SIGNATURE_EXPIRED = 7
    SIGNATURE_NOT_YET_VALID = 8
    DNSKEY_MISSING = 9
    RRSIGS_MISSING = 10
    NSEC_MISSING = 12
    UNSUPPORTED_NSEC3_ITERATIONS = 27


#: seconds a signature may be early or late, for resolvers and signers whose clocks drift
CLOCK_SKEW = 300
#: RFC 9276 3.2: validators may treat NSEC3 chains with more iterations as insecure
MAX_NSEC3_ITERATIONS = 150

#: RFC 8624 3.1: MUST/RECOMMENDED validation algorithms, filtered by what is installed
_WANTED_ALGORITHMS = (8, 10, 13, 14, 15, 16)
#: RFC 8624 3.3 / RFC 4509 3: SHA-1 only when nothing better is offered
_DIGESTS = {1: hashlib.sha1, 2: hashlib.sha256, 4: hashlib.sha384}


def _installed(algorithm: int) -> bool:
    try:
        cls = dns.dnssec.get_algorithm_cls(algorithm)
    except dns.dnssec.UnsupportedAlgorithm:
        return False
    return cls is not None and getattr(dns.dnssec, "_have_pyca", True)


SUPPORTED_ALGORITHMS = frozenset(a for a in _WANTED_ALGORITHMS if _installed(a))


def supported_algorithm(algorithm: int) -> bool:
    """Whether signatures of this DNSKEY algorithm are validated here."""
    return algorithm in SUPPORTED_ALGORITHMS


def supported_digest(digest_type: int) -> bool:
    """Whether DS records of this digest type are checked here."""
    return digest_type in _DIGESTS


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one check.

    C{ttl}: what is left of the data's life by its signatures (min of the RRset TTL, the
    original TTL and the time to expiry), for callers to cap the cached TTL with.
    C{wildcard}: for a positive RRset, the wildcard owner it was expanded from, whose
    non-existence of the name itself must still be proven.
    """

    security: Security
    ede: int | None = None
    reason: str = ""
    ttl: int | None = None
    wildcard: dns.name.Name | None = None

    @property
    def secure(self) -> bool:
        return self.security == Security.SECURE

    @property
    def bogus(self) -> bool:
        return self.security == Security.BOGUS

    @property
    def insecure(self) -> bool:
        return self.security == Security.INSECURE


SECURE = Verdict(Security.SECURE)


def bogus(ede: int, reason: str) -> Verdict:
    return Verdict(Security.BOGUS, ede, reason)


def insecure(reason: str, ede: int | None = None) -> Verdict:
    return Verdict(Security.INSECURE, ede, reason)


def within(name: dns.name.Name, zone: dns.name.Name) -> bool:
    """C{name.is_subdomain(zone)}: a tuple compare when both are in the same case (as
    normalised data is), dnspython's case-blind compare only when that says no."""
    labels, suffix = name.labels, zone.labels
    if len(suffix) <= len(labels) and labels[len(labels) - len(suffix) :] == suffix:
        return True
    return name.is_subdomain(zone)


def same_name(a: dns.name.Name, b: dns.name.Name) -> bool:
    """C{a == b}, by a tuple compare first (see L{within})."""
    return a.labels == b.labels or a == b


def _rtext(rdtype: int) -> str:
    return dns.rdatatype.to_text(rdtype)


# -- signatures -----------------------------------------------------------------------------


#: DNSKEY flag bits as ints (the flag enum's & makes a new member at each test)
_ZONE_KEY = int(dns.dnssec.Flag.ZONE)
_REVOKED = int(dns.dnssec.Flag.REVOKE)
#: memo sizes: the keys of the zones in use, a few per zone
_KEYS_MEMO = 4096
#: DNSKEY (flags, protocol, algorithm, key) -> key tag; a tuple of ints and bytes hashes
#: in C, where a dnspython rdata hashes its whole wire form in Python
_tags: dict[tuple[int, int, int, bytes], int] = {}
#: (algorithm, key) -> the signature check of that public key, or None (unusable key)
_checks: dict[tuple[int, bytes], Callable[[bytes, bytes], None] | None] = {}


def _key_tag(key: dns.rdata.Rdata) -> int:
    memo = (key.flags, key.protocol, key.algorithm, key.key)
    tag = _tags.get(memo)
    if tag is None:
        if len(_tags) >= _KEYS_MEMO:
            _tags.clear()
        tag = _tags[memo] = dns.dnssec.key_id(key)
    return tag


def _check(key: dns.rdata.Rdata) -> Callable[[bytes, bytes], None] | None:
    """C{check(signature, data)}, raising unless C{key} made C{signature} over C{data};
    built once per key: the public key object is what costs most of a verification after
    the signature itself.  None: the key does not parse."""
    memo = (key.algorithm, key.key)
    try:
        return _checks[memo]
    except KeyError:
        pass
    try:
        public = dns.dnssec.get_algorithm_cls_from_dnskey(key).public_cls.from_dnskey(key)
    except (ValueError, dns.dnssec.UnsupportedAlgorithm):
        check = None
    else:
        check = _ecdsa_check(public) if isinstance(public, PublicECDSA) else public.verify
    if len(_checks) >= _KEYS_MEMO:
        _checks.clear()
    _checks[memo] = check
    return check


def _ecdsa_check(public: PublicECDSA) -> Callable[[bytes, bytes], None]:
    """L{PublicECDSA.verify} with its hash object made once (RFC 6605 4: r and s)."""
    key, scheme, octets = public.key, ec.ECDSA(public.chosen_hash), public.octets

    def check(signature: bytes, data: bytes) -> None:
        if len(signature) != octets * 2:
            raise InvalidSignature
        r = int.from_bytes(signature[:octets], "big")
        key.verify(encode_dss_signature(r, int.from_bytes(signature[octets:], "big")), data, scheme)

    return check


def _signed_data(rrset: dns.rrset.RRset, rrsig: dns.rdata.Rdata) -> bytes:
    """The octets C{rrsig} signs over C{rrset} (RFC 4034 3.1.8.1 and 6.2; a wildcard
    expansion's owner is the wildcard, RFC 4035 5.3.2), as dnspython's builder makes
    them; ValueError if the labels field does not fit the owner."""
    name = rrset.name
    labels = name.labels
    if labels[0] == b"*" and rrsig.labels != len(labels) - 2:
        raise ValueError("wild owner name has wrong label length")
    if len(labels) - 1 < rrsig.labels:
        raise ValueError("owner name longer than RRSIG labels")
    if rrsig.labels < len(labels) - 1:
        name = dns.name.Name((b"*", *labels[-1 - rrsig.labels :]))
    head = _RRSIG_HEAD.pack(
        rrsig.type_covered,
        rrsig.algorithm,
        rrsig.labels,
        rrsig.original_ttl,
        rrsig.expiration,
        rrsig.inception,
        rrsig.key_tag,
    )
    owner = name.to_digestable() + _RR_HEAD.pack(rrset.rdtype, rrset.rdclass, rrsig.original_ttl)
    rdatas = [rdata_wire(rd) if type(rd) is _A_RDATA else rd.to_digestable() for rd in rrset]
    if len(rdatas) > 1:
        rdatas.sort()
    parts = [head, _signer_wire(rrsig.signer)]
    for wire in rdatas:
        parts += (owner, _LENGTH.pack(len(wire)), wire)
    return b"".join(parts)


_signer_wires: dict[tuple[bytes, ...], bytes] = {}


def _signer_wire(signer: dns.name.Name) -> bytes:
    """C{signer.to_digestable()}, made once per zone (there are few signers)."""
    wire = _signer_wires.get(signer.labels)
    if wire is None:
        if len(_signer_wires) >= _KEYS_MEMO:
            _signer_wires.clear()
        wire = _signer_wires[signer.labels] = signer.to_digestable()
    return wire


_RRSIG_HEAD = struct.Struct("!HBBIIIH")
_RR_HEAD = struct.Struct("!HHI")
_LENGTH = struct.Struct("!H")
_A_RDATA = dns.rdtypes.IN.A.A


def _verify(rrset: dns.rrset.RRset, rrsig: dns.rdata.Rdata, keys: list[dns.rdata.Rdata]) -> str:
    """'' when one of C{keys} made C{rrsig} over C{rrset}, else why not."""
    try:
        data = _signed_data(rrset, rrsig)
    except ValueError as e:
        return str(e)
    for key in keys:
        check = _check(key)
        if check is None:
            continue
        try:
            check(rrsig.signature, data)
            return ""
        except Exception:  # InvalidSignature, or a malformed signature for this curve
            continue
    return "verify failure"


def _usable_keys(keys: Iterable[dns.rdata.Rdata], rrsig: dns.rdata.Rdata) -> list[dns.rdata.Rdata]:
    """The DNSKEYs that could have made C{rrsig} (RFC 4035 5.3.1, RFC 5011 2.1)."""
    out = []
    for key in keys:
        if (
            key.algorithm == rrsig.algorithm
            and key.protocol == 3
            and key.flags & _ZONE_KEY
            and (not key.flags & _REVOKED or rrsig.type_covered == _T.DNSKEY)
            and _key_tag(key) == rrsig.key_tag
        ):
            out.append(key)
    return out


def verify_rrset(
    rrset: dns.rrset.RRset,
    rrsigs: dns.rrset.RRset | None,
    keys: Sequence[dns.rdata.Rdata] | dns.rrset.RRset,
    zone: dns.name.Name,
    now: float,
    skew: int = CLOCK_SKEW,
) -> Verdict:
    """Check that one of C{rrsigs} over C{rrset} was made by one of C{keys} of C{zone}.

    SECURE as soon as one signature verifies.  Otherwise BOGUS, with the most telling
    reason among the signatures tried: a signature that only failed on its validity
    window says expired (7) or not yet valid (8); no key for any signature says DNSKEY
    missing (9); no signatures at all, RRSIGs missing (10).
    """
    name = rrset.name
    if not rrsigs:
        return bogus(EDE.RRSIGS_MISSING, f"no RRSIG for {name} {_rtext(rrset.rdtype)}")
    if not within(name, zone):
        return bogus(EDE.BOGUS, f"{name} is outside the zone {zone} that signs it")
    owner_labels = len(name) - 1 - (1 if name.is_wild() else 0)
    keyset = list(keys)
    failures: list[Verdict] = []
    for rrsig in rrsigs:
        if rrsig.type_covered != rrset.rdtype or rrsigs.rdclass != rrset.rdclass:
            continue
        if not same_name(rrsig.signer, zone):
            failures.append(bogus(EDE.BOGUS, f"signer {rrsig.signer} is not the zone {zone}"))
            continue
        if rrsig.labels > owner_labels:
            failures.append(bogus(EDE.BOGUS, f"RRSIG labels {rrsig.labels} exceed {name}"))
            continue
        if not supported_algorithm(rrsig.algorithm):
            failures.append(bogus(EDE.UNSUPPORTED_DNSKEY_ALGORITHM, f"algorithm {rrsig.algorithm}"))
            continue
        candidates = _usable_keys(keyset, rrsig)
        if not candidates:
            failures.append(
                bogus(EDE.DNSKEY_MISSING, f"no DNSKEY {rrsig.key_tag} of {zone} for {name}")
            )
            continue
        if now > rrsig.expiration + skew:
            failures.append(
                bogus(EDE.SIGNATURE_EXPIRED, f"RRSIG over {name} {_rtext(rrset.rdtype)} expired")
            )
            continue
        if now < rrsig.inception - skew:
            failures.append(
                bogus(
                    EDE.SIGNATURE_NOT_YET_VALID,
                    f"RRSIG over {name} {_rtext(rrset.rdtype)} is not valid yet",
                )
            )
            continue
        why = _verify(rrset, rrsig, candidates)
        if why:
            failures.append(bogus(EDE.BOGUS, f"RRSIG over {name} does not verify: {why}"))
            continue
        ttl = max(0, min(rrset.ttl, rrsig.original_ttl, int(rrsig.expiration - now)))
        wildcard = None
        if rrsig.labels < owner_labels:
            wildcard = dns.name.Name((b"*", *name.labels[-1 - rrsig.labels :]))
        return Verdict(Security.SECURE, ttl=ttl, wildcard=wildcard)
    if not failures:
        return bogus(EDE.RRSIGS_MISSING, f"no RRSIG covers {name} {_rtext(rrset.rdtype)}")
    order = (
        EDE.SIGNATURE_EXPIRED,
        EDE.SIGNATURE_NOT_YET_VALID,
        EDE.BOGUS,
        EDE.DNSKEY_MISSING,
        EDE.UNSUPPORTED_DNSKEY_ALGORITHM,
    )
    return min(failures, key=lambda v: order.index(v.ede) if v.ede in order else len(order))


# -- the chain of trust --------------------------------------------------------------------


def ds_digest(owner: dns.name.Name, key: dns.rdata.Rdata, digest_type: int) -> bytes:
    """The digest a DS of C{digest_type} holds for C{key} at C{owner} (RFC 4034 5.1.4)."""
    h = _DIGESTS[digest_type]()
    h.update(owner.canonicalize().to_wire())
    h.update(key.to_wire())
    return h.digest()


def match_ds(
    owner: dns.name.Name, ds_set: Iterable[dns.rdata.Rdata], dnskeys: Iterable[dns.rdata.Rdata]
) -> tuple[Verdict, list[dns.rdata.Rdata]]:
    """The DNSKEYs of C{owner} that a DS of C{ds_set} vouches for.

    Returns (SECURE, keys) when at least one matches.  When no DS names an algorithm and
    a digest validated here, the zone is INSECURE (EDE 1 or 2): RFC 4035 5.2 says to treat
    it as unsigned.  SHA-1 digests count only when no better digest is offered (RFC 4509 3).
    When DS records are usable but no DNSKEY matches: BOGUS, DNSKEY missing (9).
    """
    ds_list = list(ds_set)
    usable = [
        ds
        for ds in ds_list
        if supported_algorithm(ds.algorithm) and supported_digest(ds.digest_type)
    ]
    if not usable:
        if any(not supported_algorithm(ds.algorithm) for ds in ds_list):
            return insecure(
                f"no DS of {owner} has a supported algorithm", EDE.UNSUPPORTED_DNSKEY_ALGORITHM
            ), []
        return insecure(f"no DS of {owner} has a supported digest", EDE.UNSUPPORTED_DS_DIGEST), []
    if any(ds.digest_type != 1 for ds in usable):
        usable = [ds for ds in usable if ds.digest_type != 1]
    keys = list(dnskeys)
    matched: list[dns.rdata.Rdata] = []
    for key in keys:
        if (
            key.protocol != 3
            or not key.flags & _ZONE_KEY
            or key.flags & _REVOKED
        ):
            continue
        tag = _key_tag(key)
        for ds in usable:
            if (
                ds.key_tag == tag
                and ds.algorithm == key.algorithm
                and ds.digest == ds_digest(owner, key, ds.digest_type)
            ):
                matched.append(key)
                break
    if not matched:
        return bogus(EDE.DNSKEY_MISSING, f"no DNSKEY of {owner} matches its DS"), []
    return SECURE, matched


def verify_dnskeys(
    owner: dns.name.Name,
    dnskeys: dns.rrset.RRset,
    rrsigs: dns.rrset.RRset | None,
    now: float,
    *,
    ds: Iterable[dns.rdata.Rdata] = (),
    anchor_keys: Iterable[dns.rdata.Rdata] = (),
    skew: int = CLOCK_SKEW,
) -> Verdict:
    """Validate a zone's DNSKEY RRset from its parent's DS set or from trusted DNSKEYs.

    The entry keys are those the DS records vouch for (or the C{anchor_keys} present in the
    set); the RRset must be signed by one of them (RFC 4035 5.2).
    """
    if not dnskeys:
        return bogus(EDE.DNSKEY_MISSING, f"no DNSKEY for {owner}")
    anchors = {key.to_digestable() for key in anchor_keys}
    entry = [key for key in dnskeys if key.to_digestable() in anchors]
    ds_list = list(ds)
    if ds_list:
        verdict, matched = match_ds(owner, ds_list, dnskeys)
        if not verdict.secure and not entry:
            return verdict
        entry += [key for key in matched if key not in entry]
    elif anchors and not entry:
        supported = [k for k in anchor_keys if supported_algorithm(k.algorithm)]
        if not supported:
            return insecure(
                f"no trusted key of {owner} has a supported algorithm",
                EDE.UNSUPPORTED_DNSKEY_ALGORITHM,
            )
        return bogus(EDE.DNSKEY_MISSING, f"the trusted DNSKEY of {owner} is not served")
    if not entry:
        return bogus(EDE.DNSKEY_MISSING, f"nothing vouches for the DNSKEYs of {owner}")
    return verify_rrset(dnskeys, rrsigs, entry, owner, now, skew)


# -- denial of existence -------------------------------------------------------------------


def bitmap_has(rdata: dns.rdata.Rdata, rdtype: int) -> bool:
    """Whether an NSEC or NSEC3 type bitmap lists C{rdtype}."""
    window, low = divmod(int(rdtype), 256)
    for number, bitmap in rdata.windows:
        if number == window:
            octet = low // 8
            return octet < len(bitmap) and bool(bitmap[octet] & (0x80 >> (low % 8)))
    return False


_Key = tuple[bytes, ...]
#: a name's labels -> its L{order_key} (the names of NSEC records come by again and again)
_order_keys: dict[_Key, _Key] = {}
_ORDER_MEMO = 50_000


def order_key(name: dns.name.Name) -> tuple[bytes, ...]:
    """C{name}'s lowercase labels from the root down: Python orders these tuples as RFC
    4034 6.1 orders names (label by label from the root, octet by octet, an ancestor
    before its descendants), and a name lies at or below another when the other's key
    starts its own.  Tuples of bytes compare and hash in C; dnspython names in Python."""
    labels = name.labels
    key = _order_keys.get(labels)
    if key is None:
        if len(_order_keys) >= _ORDER_MEMO:
            _order_keys.clear()
        key = _order_keys[labels] = tuple([label.lower() for label in reversed(labels)])
    return key


def nsec3_hash(key: tuple[bytes, ...], salt: bytes, iterations: int) -> str:
    """RFC 5155 5: the SHA-1 NSEC3 hash of the name of L{order_key} C{key}, in upper-case
    base32hex, as the owner label of an NSEC3 record spells it."""
    wire = b"".join([bytes((len(label),)) + label for label in reversed(key)])
    digest = hashlib.sha1(wire + salt).digest()
    for _ in range(iterations):
        digest = hashlib.sha1(digest + salt).digest()
    return base64.b32hexencode(digest).decode("ascii")


def _covers(owner: tuple[bytes, ...], nxt: tuple[bytes, ...], name: tuple[bytes, ...]) -> bool:
    if owner < nxt:
        return owner < name < nxt
    return name > owner or name < nxt  # the last NSEC of the chain


def nsec_covers(owner: dns.name.Name, nxt: dns.name.Name, name: dns.name.Name) -> bool:
    """Whether the NSEC owner -> nxt proves nothing exists at C{name} (canonical order).

    The last NSEC of a chain points back to the apex, so its range wraps around.
    """
    return _covers(order_key(owner), order_key(nxt), order_key(name))


def _common(a: tuple[bytes, ...], b: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """The L{order_key} of the longest common ancestor of two names."""
    i = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        i += 1
    return a[:i]


def _b32(data: bytes) -> str:
    return base64.b32hexencode(data).decode("ascii").rstrip("=").upper()


@dataclass(frozen=True, slots=True)
class _NSEC3:
    owner: dns.name.Name
    hashed: str  # base32hex, upper case
    nxt: str
    rdata: dns.rdata.Rdata

    @property
    def opt_out(self) -> bool:
        return bool(self.rdata.flags & 1)


class Denial:
    """Proofs of non-existence from the validated NSEC or NSEC3 RRsets of one zone.

    Give it only RRsets whose signatures verified with C{zone}'s keys.  Each proof returns
    SECURE when proven, INSECURE when proven only up to an opt-out span or past the NSEC3
    iteration cap (EDE 27), and BOGUS with NSEC missing (12) when it does not hold.
    """

    def __init__(
        self,
        zone: dns.name.Name,
        rrsets: Iterable[dns.rrset.RRset],
        max_iterations: int = MAX_NSEC3_ITERATIONS,
    ) -> None:
        self.zone = zone
        self._zone = order_key(zone)
        #: NSEC records by their owner's L{order_key}: (owner, rdata, the key of next)
        self.nsec: dict[_Key, tuple[dns.name.Name, dns.rdata.Rdata, _Key]] = {}
        self.nsec3: list[_NSEC3] = []
        self.too_many_iterations = False
        self.unknown_hash = False
        self._params: tuple[int, bytes, int] | None = None
        self._hashes: dict[tuple[bytes, ...], str] = {}
        top = self._zone
        for rrset in rrsets:
            key = order_key(rrset.name)
            if key[: len(top)] != top or not rrset:
                continue
            if rrset.rdtype == _T.NSEC:
                rd = rrset[0]
                self.nsec[key] = (rrset.name, rd, order_key(rd.next))
            elif rrset.rdtype == _T.NSEC3 and len(key) == len(top) + 1:
                rd = rrset[0]
                if rd.algorithm != 1 or rd.flags & ~1:
                    self.unknown_hash = True  # RFC 5155 8.1/8.2: ignore, do not fail
                    continue
                if rd.iterations > max_iterations:
                    self.too_many_iterations = True
                    continue
                params = (rd.algorithm, bytes(rd.salt), rd.iterations)
                if self._params is None:
                    self._params = params
                elif params != self._params:
                    continue  # one chain per answer; mixed parameters prove nothing
                label = rrset.name.labels[0].decode("ascii").upper()
                self.nsec3.append(_NSEC3(rrset.name, label, _b32(rd.next), rd))

    @property
    def empty(self) -> bool:
        return not self.nsec and not self.nsec3

    def _no_proof(self, what: str) -> Verdict:
        if not self.nsec and not self.nsec3:
            if self.too_many_iterations:
                return insecure(
                    f"NSEC3 of {self.zone} uses too many iterations",
                    EDE.UNSUPPORTED_NSEC3_ITERATIONS,
                )
            if self.unknown_hash:
                return insecure(f"NSEC3 of {self.zone} uses an unknown hash")
        return bogus(EDE.NSEC_MISSING, f"no proof that {what}")

    # -- NSEC -----------------------------------------------------------------------------

    def _nsec_covering(
        self, name: tuple[bytes, ...]
    ) -> tuple[tuple[bytes, ...], dns.rdata.Rdata, tuple[bytes, ...]] | None:
        """The NSEC whose span holds the name of L{order_key} C{name}: (its owner's key,
        its rdata, its next name's key)."""
        for owner, (_, rd, nxt) in self.nsec.items():
            if owner == name or not _covers(owner, nxt, name):
                continue
            # RFC 6840 4.1: a delegation's or a DNAME's NSEC says nothing about names below.
            if name[: len(owner)] == owner and (
                bitmap_has(rd, _T.DNAME) or (bitmap_has(rd, _T.NS) and not bitmap_has(rd, _T.SOA))
            ):
                continue
            return owner, rd, nxt
        return None

    def _nsec_nxdomain(self, name: tuple[bytes, ...]) -> tuple[bytes, ...] | None:
        """The closest encloser of C{name} (keys: L{order_key}) if an NSEC proves that
        C{name} does not exist."""
        found = self._nsec_covering(name)
        if found is None:
            return None
        owner, _, nxt = found
        if nxt[: len(name)] == name:
            return None  # an empty non-terminal: the name exists
        ce = _common(name, owner)
        other = _common(name, nxt)
        if len(other) > len(ce):
            ce = other
        return ce if ce[: len(self._zone)] == self._zone else self._zone

    # -- NSEC3 ----------------------------------------------------------------------------

    def _hash(self, name: dns.name.Name) -> str:
        key = order_key(name)
        h = self._hashes.get(key)
        if h is None:
            assert self._params is not None
            _, salt, iterations = self._params  # (algorithm 1, SHA-1: the others are left out)
            h = self._hashes[key] = nsec3_hash(key, salt, iterations)
        return h

    def _n3_matching(self, name: dns.name.Name) -> _NSEC3 | None:
        h = self._hash(name)
        for n3 in self.nsec3:
            if n3.hashed == h:
                return n3
        return None

    def _n3_covering(self, name: dns.name.Name) -> _NSEC3 | None:
        h = self._hash(name)
        for n3 in self.nsec3:
            if n3.hashed < n3.nxt:
                if n3.hashed < h < n3.nxt:
                    return n3
            elif h > n3.hashed or h < n3.nxt:
                return n3
        return None

    def _n3_closest_encloser(self, name: dns.name.Name) -> tuple[dns.name.Name, _NSEC3] | None:
        """RFC 5155 8.3: (closest encloser, NSEC3 covering the next closer name)."""
        nc: dns.name.Name | None = None
        sname = name
        while sname.is_subdomain(self.zone):
            match = self._n3_matching(sname)
            if match is not None:
                rd = match.rdata
                if nc is None:
                    return None  # the name itself exists
                if bitmap_has(rd, _T.DNAME) or (
                    bitmap_has(rd, _T.NS) and not bitmap_has(rd, _T.SOA)
                ):
                    return None  # the encloser is a delegation or DNAME: wrong server
                cover = self._n3_covering(nc)
                return (sname, cover) if cover is not None else None
            if sname == self.zone:
                return None
            nc, sname = sname, sname.parent()
        return None

    # -- proofs ---------------------------------------------------------------------------

    def nxdomain(self, name: dns.name.Name) -> Verdict:
        """C{name} does not exist, and no wildcard could have answered for it."""
        if self.nsec:
            ce = self._nsec_nxdomain(order_key(name))
            if ce is not None:
                wild = (*ce, b"*")
                if self._nsec_covering(wild) is not None and wild not in self.nsec:
                    return SECURE
        if self.nsec3:
            found = self._n3_closest_encloser(name)
            if found is not None:
                ce, cover = found
                wild = dns.name.Name((b"*", *ce.labels))
                if self._n3_covering(wild) is not None:
                    if cover.opt_out:
                        return insecure(f"{name} is in an NSEC3 opt-out span")
                    return SECURE
        return self._no_proof(f"{name} does not exist")

    def nodata(self, name: dns.name.Name, rdtype: int) -> Verdict:
        """C{name} exists but has no C{rdtype} (nor a CNAME), directly or by a wildcard."""
        if self.nsec:
            key = order_key(name)
            at = self.nsec.get(key)
            if at is not None:
                if self._nsec_type_absent(at[1], name, rdtype):
                    return SECURE
            else:
                found = self._nsec_covering(key)
                if found is not None and found[2][: len(key)] == key:
                    return SECURE  # an empty non-terminal (RFC 4035 3.1.3.2)
                ce = self._nsec_nxdomain(key)
                if ce is not None:
                    wild = self.nsec.get((*ce, b"*"))
                    if wild is not None and self._nsec_type_absent(wild[1], wild[0], rdtype):
                        return SECURE
        if self.nsec3:
            match = self._n3_matching(name)
            if match is not None:
                rd = match.rdata
                if self._type_absent(rd, rdtype) and (
                    rdtype == _T.DS or not bitmap_has(rd, _T.NS) or bitmap_has(rd, _T.SOA)
                ):
                    if rdtype == _T.DS and bitmap_has(rd, _T.SOA) and name != dns.name.root:
                        return self._no_proof(f"{name} has no DS (the child answered)")
                    return SECURE
            else:
                found = self._n3_closest_encloser(name)
                if found is not None:
                    ce, cover = found
                    if rdtype == _T.DS and cover.opt_out:
                        return insecure(f"{name} is in an NSEC3 opt-out span")
                    wild = self._n3_matching(dns.name.Name((b"*", *ce.labels)))
                    if wild is not None and self._type_absent(wild.rdata, rdtype):
                        return SECURE
                    if cover.opt_out and len(name) == len(ce) + 1:
                        return insecure(f"{name} is in an NSEC3 opt-out span")
        return self._no_proof(f"{name} has no {_rtext(rdtype)}")

    def wildcard_answer(self, name: dns.name.Name, wildcard: dns.name.Name) -> Verdict:
        """An answer expanded from C{wildcard}: C{name} itself (and anything closer) must
        not exist (RFC 4035 5.3.4, RFC 5155 8.8)."""
        ce = wildcard.parent()
        if self.nsec:
            key = order_key(name)
            found = self._nsec_covering(key)
            if found is not None:
                owner, _, nxt = found
                closest = _common(key, owner)
                other = _common(key, nxt)
                if len(other) > len(closest):
                    closest = other
                if closest == order_key(ce):
                    return SECURE
        if self.nsec3:
            next_closer = name.split(len(ce) + 1)[1]
            if self._n3_covering(next_closer) is not None:
                return SECURE
        return self._no_proof(f"{name} does not exist beside the wildcard {wildcard}")

    def no_ds(self, cut: dns.name.Name) -> Verdict:
        """The delegation at C{cut} has no DS: the child is unsigned (RFC 4035 5.2).

        SECURE means the absence of a DS is proven; INSECURE means the delegation lies in
        an NSEC3 opt-out span (RFC 5155 6): the child is unsigned all the same.
        """
        at = self.nsec.get(order_key(cut))
        if at is not None:
            rd = at[1]
            if (
                bitmap_has(rd, _T.NS)
                and not bitmap_has(rd, _T.DS)
                and not bitmap_has(rd, _T.SOA)
                and not bitmap_has(rd, _T.CNAME)
            ):
                return SECURE
            return bogus(EDE.NSEC_MISSING, f"the NSEC at {cut} does not prove an unsigned cut")
        if self.nsec3:
            match = self._n3_matching(cut)
            if match is not None:
                m = match.rdata
                if bitmap_has(m, _T.NS) and not bitmap_has(m, _T.DS) and not bitmap_has(m, _T.SOA):
                    return SECURE
                return bogus(EDE.NSEC_MISSING, f"the NSEC3 of {cut} does not prove an unsigned cut")
            found = self._n3_closest_encloser(cut)
            if found is not None and found[1].opt_out:
                return insecure(f"{cut} is in an NSEC3 opt-out span")
        return self._no_proof(f"{cut} has no DS")

    @staticmethod
    def _type_absent(rd: dns.rdata.Rdata, rdtype: int) -> bool:
        return not bitmap_has(rd, rdtype) and not bitmap_has(rd, _T.CNAME)

    def _nsec_type_absent(self, rd: dns.rdata.Rdata, owner: dns.name.Name, rdtype: int) -> bool:
        if not self._type_absent(rd, rdtype):
            return False
        if rdtype == _T.DS:
            # The child's apex NSEC cannot deny the parent's DS (RFC 4035 5.4).
            return not bitmap_has(rd, _T.SOA) or owner == dns.name.root
        # A delegation's NSEC (NS without SOA) comes from the parent: it cannot speak for
        # the child's data.
        return not (bitmap_has(rd, _T.NS) and not bitmap_has(rd, _T.SOA))


def signer_of(rrsigs: dns.rrset.RRset | None) -> dns.name.Name | None:
    """The zone that signed an RRset (the first RRSIG's signer), if it is signed at all."""
    if not rrsigs:
        return None
    return rrsigs[0].signer
