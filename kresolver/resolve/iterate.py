"""Response classification: what an authoritative server's response means for a question.

L{classify} looks at one response to (qname, qtype) asked of the servers of C{zone} and
says what it is (kresd's iterate.c, as pure functions): an answer (with the CNAME/DNAME
chain leading to it), a chain to chase elsewhere, NXDOMAIN, NODATA, a referral to a
child zone, or the sign of a lame server.  It also says which records are fit for the
cache, and at which rank.

Bailiwick: a server of C{zone} is believed only about names in C{zone}.  Records owned
outside it, in any section, are dropped: never cached, never served.  Glue is accepted
only for NS names inside C{zone} (in-domain or sibling glue, as the parent may serve).
Every accepted RRset is normalised (lowercase owner and rdata names, see
L{kresolver.resolve.answer.normalize}), so 0x20 case never reaches the cache.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from kresolver.cache.cache import Rank
from kresolver.resolve.answer import MAX_CHAIN, Accepted, Denial, normalize
from kresolver.resolve.names import canonical
from kresolver.resolve.response import Response
from kresolver.resolve.zonecut import ZoneCut

__all__ = ["Kind", "Verdict", "classify"]

_T = dns.rdatatype
_ADDRESS_TYPES = (_T.A, _T.AAAA)
_DENIAL_TYPES = (_T.NSEC, _T.NSEC3)
_AA = int(dns.flags.AA)  # an int: the enum's & makes a new member at every use
_NOERROR = dns.rcode.NOERROR
#: question types whose answers L{_plain_answer} leaves to the walk: NS answers describe
#: a zone cut (glue), ANY answers are several RRsets, RRSIG answers are signatures
_WALKED = frozenset({_T.NS, _T.ANY, _T.RRSIG})

Pair = tuple[dns.rrset.RRset, dns.rrset.RRset | None]


class Kind(enum.Enum):
    ANSWER = "answer"  #: the data asked for (after any chain in the same response)
    CNAME = "cname"  #: a chain that leaves this zone: chase C{target}
    NXDOMAIN = "nxdomain"  #: C{target} does not exist
    NODATA = "nodata"  #: C{target} exists, without data of the type
    REFERRAL = "referral"  #: ask the child zone C{cut}
    LAME = "lame"  #: this server cannot be believed about the question
    RCODE = "rcode"  #: an error rcode (SERVFAIL, REFUSED, FORMERR, NOTIMP, ...)


@dataclass(slots=True)
class Verdict:
    kind: Kind
    #: answer-section RRsets in chain order, normalised, with their RRSIGs
    chain: list[Pair] = field(default_factory=list)
    #: the name the chain ends at (chase it, or the one denied)
    target: dns.name.Name | None = None
    soa: dns.rrset.RRset | None = None
    #: SOA RRSIG, NSEC/NSEC3 and their RRSIGs, for negative answers
    proofs: list[dns.rrset.RRset] = field(default_factory=list)
    #: REFERRAL, or an NS answer: the zone cut it describes (glue included)
    cut: ZoneCut | None = None
    #: what may be cached
    accepted: list[Accepted | Denial] = field(default_factory=list)
    aa: bool = False
    rcode: int = dns.rcode.NOERROR
    why: str = ""


class _Sections:
    """One response's RRsets by section, normalised, bailiwick-filtered, RRSIGs aside.

    Owners are lowercase here, so names are compared by their labels (a tuple compare)
    rather than by dnspython's case-insensitive, Python-level comparison.
    """

    def __init__(
        self,
        rrsets: list[dns.rrset.RRset],
        zone: dns.name.Name,
        normalized: bool = False,
        inside: tuple[bytes, ...] | None = None,
    ) -> None:
        """C{inside}: the labels of C{zone} lowercased, when the caller has them."""
        self.data: list[dns.rrset.RRset] = []
        self.sigs: dict[tuple[tuple[bytes, ...], int], dns.rrset.RRset] = {}
        self.dropped = 0
        if not rrsets:
            return
        if inside is None:
            inside = canonical(zone).labels
        depth = -len(inside)
        for rrset in rrsets:
            if not normalized:
                if not rrset.name.is_subdomain(zone):
                    self.dropped += 1
                    continue
                rrset = normalize(rrset)
            elif rrset.name.labels[depth:] != inside:  # lowercase: a tuple compare will do
                self.dropped += 1
                continue
            if rrset.rdtype == _T.RRSIG:
                self.sigs[(rrset.name.labels, rrset.covers)] = rrset
            else:
                self.data.append(rrset)

    def find(self, name: dns.name.Name, rdtype: int) -> dns.rrset.RRset | None:
        labels = canonical(name).labels
        if rdtype == _T.RRSIG:  # asked for signatures themselves: any covering the name
            return next((sig for (owner, _), sig in self.sigs.items() if owner == labels), None)
        for rrset in self.data:
            if rrset.rdtype == rdtype and rrset.name.labels == labels:
                return rrset
        return None

    def at(self, name: dns.name.Name) -> list[dns.rrset.RRset]:
        labels = canonical(name).labels
        return [rrset for rrset in self.data if rrset.name.labels == labels]

    def of_type(self, rdtype: int) -> list[dns.rrset.RRset]:
        return [rrset for rrset in self.data if rrset.rdtype == rdtype]

    def sig(self, rrset: dns.rrset.RRset) -> dns.rrset.RRset | None:
        if not self.sigs:
            return None
        return self.sigs.get((canonical(rrset.name).labels, rrset.rdtype))

    def pair(self, rrset: dns.rrset.RRset) -> Pair:
        return rrset, self.sig(rrset)


#: as globals for L{_plain_answer} (an enum's attribute lookup costs more than a global's)
_ANSWER = Kind.ANSWER
_AUTH_ANSWER, _NONAUTH_ANSWER = Rank.AUTH_ANSWER, Rank.ANSWER

#: an empty section, shared: sections are only read once made
_NONE = _Sections([], dns.name.root)


def _section(
    rrsets: list[dns.rrset.RRset], zone: dns.name.Name, normalized: bool,
    inside: tuple[bytes, ...],
) -> _Sections:
    return _Sections(rrsets, zone, normalized, inside) if rrsets else _NONE


def _dname_above(answer: _Sections, name: dns.name.Name) -> dns.rrset.RRset | None:
    for rrset in answer.of_type(_T.DNAME):
        if name.is_subdomain(rrset.name) and name != rrset.name:
            return rrset
    return None


def _synthesize(dname: dns.rrset.RRset, name: dns.name.Name) -> dns.rrset.RRset | None:
    """The CNAME a DNAME implies for C{name} (RFC 6672 2.2), or None if it cannot exist."""
    try:
        target = name.relativize(dname.name).derelativize(dname[0].target)
    except dns.name.NameTooLong:
        return None
    cname = dns.rrset.from_text(name, dname.ttl, dname.rdclass, _T.CNAME, target.to_text())
    return cname


def _glue(
    additional: _Sections, ns: dns.rrset.RRset, zone: dns.name.Name
) -> tuple[dict[dns.name.Name, list[str]], list[Accepted]]:
    """Addresses for C{ns}'s targets inside C{zone}, and the RRsets to cache as glue."""
    addresses: dict[dns.name.Name, list[str]] = {}
    accepted: list[Accepted] = []
    for rdata in ns:
        target = canonical(rdata.target)
        if not target.is_subdomain(zone):
            continue  # out of bailiwick: resolved as a sub-query instead
        for rdtype in _ADDRESS_TYPES:
            rrset = additional.find(target, rdtype)
            if rrset is not None:
                addresses.setdefault(target, []).extend(r.address for r in rrset)
                accepted.append(Accepted(rrset, Rank.GLUE, additional.sig(rrset)))
    return addresses, accepted


def _soa_for(
    authority: _Sections, name: dns.name.Name, zone: dns.name.Name
) -> dns.rrset.RRset | None:
    """The authority section's SOA, if it is the SOA of a zone (at or below C{zone})
    that encloses C{name}: the only SOA that may deny C{name}."""
    for soa in authority.of_type(_T.SOA):
        if name.is_subdomain(soa.name) and soa.name.is_subdomain(zone):
            return soa
    return None


def _proofs(authority: _Sections, soa: dns.rrset.RRset) -> list[dns.rrset.RRset]:
    out: list[dns.rrset.RRset] = []
    sig = authority.sig(soa)
    if sig is not None:
        out.append(sig)
    for rrset in authority.data:
        if rrset.rdtype in _DENIAL_TYPES:
            out.append(rrset)
            sig = authority.sig(rrset)
            if sig is not None:
                out.append(sig)
    return out


def _plain_answer(
    rrsets: list[dns.rrset.RRset], qname: dns.name.Name, qtype: int, zone: dns.name.Name,
    aa: bool,
) -> Verdict | None:
    """The verdict on a normalised NOERROR answer section that is just the data asked for
    (with its RRSIGs), owned by C{qname} inside C{zone}: what the chain walk below makes of
    it, without sorting the section; None for anything else (the walk decides then).

    Labels are compared as tuples: the RRsets' owners are lowercase, so equal labels mean
    C{qname} and C{zone} are lowercase too (else the walk canonicalises them).
    """
    count = len(rrsets)
    if not count or count > 2 or qtype in _WALKED:
        return None
    data = rrsets[0]
    labels = data.name.labels
    if data.rdtype != qtype or labels != qname.labels:
        return None
    inside = zone.labels
    if labels[-len(inside):] != inside:
        return None  # out of the bailiwick, or a zone in capitals: the walk sorts it out
    sigs = None
    if count == 2:
        sigs = rrsets[1]
        if sigs.rdtype != _T.RRSIG or sigs.covers != qtype or sigs.name.labels != labels:
            return None
    rank = _AUTH_ANSWER if aa else _NONAUTH_ANSWER
    return Verdict(
        _ANSWER, [(data, sigs)], qname, accepted=[Accepted(data, rank, sigs)], aa=aa,
        rcode=_NOERROR,
    )


def classify(
    msg: dns.message.Message | Response, qname: dns.name.Name, qtype: int, zone: dns.name.Name
) -> Verdict:
    """Judge C{msg}, the response to C{qname} C{qtype} from a server of C{zone}.

    C{msg} is a dnspython message, or a L{Response} whose RRsets are normalised already
    (and this call's to keep: they are not copied again).
    """
    rcode = msg.rcode()
    aa = bool(int(msg.flags) & _AA)
    normalized = isinstance(msg, Response)
    if normalized and rcode == _NOERROR:
        verdict = _plain_answer(msg.answer, qname, qtype, zone, aa)
        if verdict is not None:
            return verdict
    elif rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return Verdict(Kind.RCODE, rcode=rcode, aa=aa, why=dns.rcode.to_text(rcode))
    qname = canonical(qname)
    inside = canonical(zone).labels
    answer = _Sections(msg.answer, zone, normalized, inside)
    # the other sections are sorted only where they are read: an answer reads neither
    # (but for an NS answer's glue)
    rank = Rank.AUTH_ANSWER if aa else Rank.ANSWER

    # The chain in the answer section: CNAMEs, DNAMEs (their CNAMEs synthesised by us),
    # then the data, each link owned inside the zone we asked.
    chain: list[Pair] = []
    accepted: list[Accepted | Denial] = []
    name = qname
    final: list[dns.rrset.RRset] = []
    seen: set[tuple[bytes, ...]] = set()  # lowercase names by labels
    while len(seen) <= MAX_CHAIN and name.labels not in seen:
        seen.add(name.labels)
        if qtype == _T.ANY:
            final = [r for r in answer.at(name) if r.rdtype != _T.CNAME] or answer.at(name)
        else:
            hit = answer.find(name, qtype)
            final = [hit] if hit is not None else []
        if final:
            break
        # Below a DNAME nothing exists (RFC 6672 2.3): the server's CNAME for the name is a
        # copy of what we synthesise ourselves, so the DNAME is looked at first.
        dname = _dname_above(answer, name) if qtype != _T.DNAME else None
        if dname is not None:
            synthesized = _synthesize(dname, name)
            if synthesized is None:
                return Verdict(Kind.RCODE, rcode=dns.rcode.YXDOMAIN, aa=aa,
                               why="DNAME substitution too long")
            if not any(p[0] is dname for p in chain):
                chain.append(answer.pair(dname))
                accepted.append(Accepted(dname, rank, answer.sig(dname)))
            chain.append((synthesized, None))  # never cached: the DNAME is the data
            name = canonical(synthesized[0].target)
            continue
        cname = answer.find(name, _T.CNAME) if qtype != _T.CNAME else None
        if cname is not None:
            chain.append(answer.pair(cname))
            accepted.append(Accepted(cname, rank, answer.sig(cname)))
            name = canonical(cname[0].target)
            continue
        break
    if final:
        for rrset in final:
            chain.append(answer.pair(rrset))
            accepted.append(Accepted(rrset, rank, answer.sig(rrset)))
        verdict = Verdict(Kind.ANSWER, chain, name, accepted=accepted, aa=aa, rcode=rcode)
        if qtype == _T.NS and final[0].rdtype == _T.NS:
            additional = _section(msg.additional, zone, normalized, inside)
            glue, glue_accepted = _glue(additional, final[0], zone)
            verdict.accepted.extend(glue_accepted)
            verdict.cut = ZoneCut(final[0].name)
            for rdata in final[0]:
                verdict.cut.add(rdata.target, glue.get(canonical(rdata.target), ()))
        return verdict

    if chain and not name.is_subdomain(zone):
        # The chain leaves the zone: whatever the rcode says about the target, this server
        # is not the one to believe about it (RFC 6604 3).
        return Verdict(Kind.CNAME, chain, name, accepted=accepted, aa=aa, rcode=rcode)
    authority = _section(msg.authority, zone, normalized, inside)
    soa = _soa_for(authority, name, zone)
    if soa is None and any(r.rdtype == _T.SOA for r in msg.authority):
        # The SOA of a zone that does not hold the name: not the server we meant to ask.
        return Verdict(Kind.LAME, aa=aa, rcode=rcode, why="SOA of another zone")
    if rcode == dns.rcode.NXDOMAIN:
        if soa is None:
            # Without the zone's SOA it proves nothing we can cache; the caller decides
            # whether to believe it (AA) or to treat the server as broken.
            return Verdict(Kind.NXDOMAIN, chain, name, accepted=accepted, aa=aa, rcode=rcode,
                           why="NXDOMAIN without SOA")
        proofs = _proofs(authority, soa)
        accepted.append(Denial(name, qtype, rcode, soa, proofs, rank))
        return Verdict(Kind.NXDOMAIN, chain, name, soa, proofs, accepted=accepted, aa=aa,
                       rcode=rcode)
    if soa is not None:
        proofs = _proofs(authority, soa)
        accepted.append(Denial(name, qtype, rcode, soa, proofs, rank))
        return Verdict(Kind.NODATA, chain, name, soa, proofs, accepted=accepted, aa=aa,
                       rcode=rcode)
    if chain:
        return Verdict(Kind.CNAME, chain, name, accepted=accepted, aa=aa, rcode=rcode)

    # Nothing for the name: a referral, or nothing we can use.
    ns_sets = authority.of_type(_T.NS)
    if ns_sets:
        ns = ns_sets[0]
        if ns.name == zone or not ns.name.is_subdomain(zone):
            return Verdict(Kind.LAME, aa=aa, rcode=rcode, why=f"upward referral to {ns.name}")
        if not qname.is_subdomain(ns.name):
            return Verdict(Kind.LAME, aa=aa, rcode=rcode, why=f"sideways referral to {ns.name}")
        additional = _section(msg.additional, zone, normalized, inside)
        glue, glue_accepted = _glue(additional, ns, zone)
        cut = ZoneCut(ns.name)
        for rdata in ns:
            cut.add(rdata.target, glue.get(canonical(rdata.target), ()))
        accepted = [Accepted(ns, Rank.AUTHORITY, authority.sig(ns)), *glue_accepted]
        ds = authority.find(ns.name, _T.DS)
        if ds is not None:
            accepted.append(Accepted(ds, Rank.AUTHORITY, authority.sig(ds)))
        return Verdict(Kind.REFERRAL, cut=cut, accepted=accepted, aa=aa, rcode=rcode)
    if aa and not msg.answer:
        # NODATA from a server that sends no SOA: true, but nothing to cache it with.
        return Verdict(Kind.NODATA, [], name, aa=aa, rcode=rcode, why="NODATA without SOA")
    if answer.dropped or msg.answer:
        why = "answer outside the zone's bailiwick"
    else:
        why = "empty non-authoritative answer"
    return Verdict(Kind.LAME, aa=aa, rcode=rcode, why=why)
