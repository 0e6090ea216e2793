"""What the resolving layers share: accepted data, and the client's answer as it grows.

Both the cache layer (answers from the record cache) and the iterate layer (answers from
upstream) resolve one link of the client's CNAME/DNAME chain at a time, and both must put
it into the answer the same way, so that a chain resolved half from cache and half from
upstream looks like one resolved either way:

- the client's chain is made of the queries without a parent; each resolved link appends
  its records to C{req.answer}, and a CNAME target is asked as a new query of the chain
  (L{follow}), at most L{MAX_CHAIN} links (kresd's limit);
- sub-queries (NS addresses, priming) put their records into C{qry.vars['answer']}, where
  the query that planned them picks them up; they never touch the client's answer;
- what a consume layer accepted is queued in C{req.vars['stash']} as L{Accepted} and
  L{Denial} items: later consume layers (validate) may mark them, and the cache layer
  stores them when the round is over.

Minimal responses, as kresd: a positive answer carries only the chain and the answer
records (RRSIGs when the client set DO); a negative one carries the zone's SOA in the
authority section (with the NSEC/NSEC3 proofs and RRSIGs when the client set DO).  A
positive answer expanded from a wildcard also carries, for DO clients only, the NSEC/NSEC3
proving that no closer name exists (RFC 4035 3.1.3.3, RFC 5155 7.2.6): without it a
validator behind this resolver cannot tell the expansion from a forgery.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import dns.name
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.rrset

from kresolver.cache.cache import Rank, Security
from kresolver.resolve.names import canonical, same_name
from kresolver.resolve.request import Query, Request, State
from kresolver.resolve.response import copy_rrset

__all__ = [
    "MAX_CHAIN",
    "Accepted",
    "Denial",
    "add_proofs",
    "deliver_negative",
    "deliver_positive",
    "follow",
    "normalize",
    "stash",
]

#: CNAME/DNAME links one answer may follow (kresd's KR_CNAME_CHAIN_LIMIT)
MAX_CHAIN = 13
#: EDE INFO-CODE for a chain that is too long or loops (RFC 8914: 0 Other)
_EDE_OTHER = 0

_RRSIG = dns.rdatatype.RRSIG
_RRset = dns.rrset.RRset
_T = dns.rdatatype
#: rdata types that hold no domain names: nothing in them for normalize to lowercase
_NAMELESS = frozenset({
    _T.A, _T.AAAA, _T.TXT, _T.SPF, _T.DS, _T.CDS, _T.DNSKEY, _T.CDNSKEY, _T.NSEC3,
    _T.NSEC3PARAM, _T.SSHFP, _T.TLSA, _T.SMIMEA, _T.CAA, _T.OPENPGPKEY, _T.HINFO, _T.ZONEMD,
})


@dataclass(slots=True)
class Accepted:
    """An RRset a consume layer found trustworthy enough to cache, at C{rank}.

    C{proofs}: for an RRset expanded from a wildcard, the NSEC/NSEC3 RRsets and their
    RRSIGs that prove no closer name exists; the validator fills them in once they proved it.
    """

    rrset: dns.rrset.RRset
    rank: Rank
    rrsigs: dns.rrset.RRset | None = None
    security: Security = Security.UNCHECKED
    proofs: list[dns.rrset.RRset] = field(default_factory=list)


@dataclass(slots=True)
class Denial:
    """A negative answer to cache: NXDOMAIN of C{name} (and below) or NODATA of C{rdtype}."""

    name: dns.name.Name
    rdtype: int
    rcode: int
    soa: dns.rrset.RRset
    proofs: list[dns.rrset.RRset] = field(default_factory=list)
    rank: Rank = Rank.AUTH_ANSWER
    security: Security = Security.UNCHECKED


def normalize(rrset: dns.rrset.RRset, ttl: int | None = None) -> dns.rrset.RRset:
    """A copy of C{rrset} with its owner and the names in its rdata lowercased.

    Upstream answers carry the 0x20 case we sent (and compression pointers into it spread
    that case into other names); the canonical form of RFC 4034 6.2 removes it without
    touching what DNSSEC signs, since signatures are computed over that form.
    """
    out = dns.rrset.RRset(canonical(rrset.name), rrset.rdclass, rrset.rdtype, rrset.covers)
    if rrset.rdtype in _NAMELESS:
        out.update(rrset)  # immutable rdatas without names: shared as they are
    else:
        for rdata in rrset:
            wire = rdata.to_digestable()
            out.add(dns.rdata.from_wire(rdata.rdclass, rdata.rdtype, wire, 0, len(wire)))
    out.ttl = rrset.ttl if ttl is None else ttl
    return out


def stash(req: Request, items: Iterable[Accepted | Denial]) -> None:
    """Queue C{items} for the cache layer (which stores them when this round is over)."""
    if req.flags.NO_CACHE:
        return
    req.vars.setdefault("stash", []).extend(items)


def _copy(rrset: dns.rrset.RRset, owner: dns.name.Name) -> dns.rrset.RRset:
    if type(rrset) is _RRset:
        return copy_rrset(rrset, owner)  # the same records, without hashing each again
    out = dns.rrset.RRset(owner, rrset.rdclass, rrset.rdtype, rrset.covers)
    out.update(rrset)
    out.ttl = rrset.ttl
    return out


def _source(req: Request, from_cache: bool) -> None:
    """Keep C{req.cached} true only while every part of the answer came from the cache."""
    if from_cache and not req.vars.get("upstream_answered"):
        req.cached = True
    elif not from_cache:
        req.vars["upstream_answered"] = True
        req.cached = False


def _owner(req: Request, rrset: dns.rrset.RRset) -> dns.name.Name:
    # The client's own name object, so its case is echoed and the owner compresses into
    # a pointer to the question; every other owner stays lowercase, as kresd's are.
    # (Labels first: in the same case they compare as a tuple, without Python code.)
    qname = req.qname
    owner = rrset.name
    if owner.labels == qname.labels or same_name(owner, qname):
        return qname
    return owner


def deliver_positive(
    req: Request,
    qry: Query,
    rrsets: list[tuple[dns.rrset.RRset, dns.rrset.RRset | None]],
    *,
    from_cache: bool,
    proofs: Iterable[dns.rrset.RRset] = (),
) -> None:
    """C{qry} is answered by C{rrsets} (with their RRSIGs): the chain links and the data;
    C{proofs} are the wildcard proofs of those of them that were expanded from one."""
    if qry.parent is not None:
        qry.vars["answer"] = [rrset for rrset, _ in rrsets]
        return
    section = req.answer.answer
    want_sigs = req.flags.DNSSEC_WANT
    qname = req.qname
    for rrset, sigs in rrsets:
        owner = rrset.name  # (L{_owner}, inline: once per answer)
        if owner.labels == qname.labels or same_name(owner, qname):
            owner = qname
        # (L{_copy}'s usual case, inline)
        section.append(
            copy_rrset(rrset, owner) if type(rrset) is _RRset else _copy(rrset, owner)
        )
        if want_sigs and sigs is not None:
            section.append(_copy(sigs, _owner(req, sigs)))
    if proofs:
        add_proofs(req, proofs)
    _source(req, from_cache)


def add_proofs(req: Request, proofs: Iterable[dns.rrset.RRset]) -> None:
    """Put wildcard proofs into the client's authority section, for DO clients only and
    each RRset once (two expansions in one chain may share an NSEC)."""
    if not req.flags.DNSSEC_WANT:
        return
    section = req.answer.authority
    present = {(r.name, r.rdtype, r.covers) for r in section}
    for proof in proofs:
        key = (proof.name, proof.rdtype, proof.covers)
        if key not in present:
            present.add(key)
            section.append(_copy(proof, proof.name))


def deliver_negative(
    req: Request,
    qry: Query,
    rcode: int,
    soa: dns.rrset.RRset | None,
    proofs: Iterable[dns.rrset.RRset] = (),
    *,
    from_cache: bool,
) -> None:
    """C{qry} has no data: NXDOMAIN or NODATA, with the zone's SOA (and proofs for DO)."""
    if qry.parent is not None:
        qry.vars["answer"] = []
        qry.vars["rcode"] = rcode
        return
    req.answer.set_rcode(rcode)
    if soa is not None:
        req.answer.authority.append(_copy(soa, soa.name))
        if req.flags.DNSSEC_WANT:
            req.answer.authority.extend(_copy(p, p.name) for p in proofs)
    _source(req, from_cache)


def follow(req: Request, qry: Query, target: dns.name.Name) -> State:
    """Continue C{qry}'s chain at C{target}: C{qry} is done, a query for the target follows.

    The new query replaces C{qry} in the plan, so the driver goes on with it at once;
    loops and chains longer than L{MAX_CHAIN} make the request fail.
    """
    chain: dict[str, Any] = req.vars.setdefault("chain", {"links": 0, "seen": set()})
    chain["links"] += 1
    seen: set[dns.name.Name] = chain["seen"]
    seen.add(canonical(qry.sname))
    target = canonical(target)
    qry.resolved = True
    if target in seen:
        return _chain_failure(req, qry, f"CNAME loop at {target}")
    if chain["links"] > MAX_CHAIN:
        return _chain_failure(req, qry, f"CNAME chain longer than {MAX_CHAIN} links")
    if qry in req.rplan:
        req.rplan.remove(qry)
    if qry.parent is not None:
        # A sub-query (an NS name) must not be an alias (RFC 2181 10.3): no address here.
        qry.vars["answer"] = []
        return State.DONE
    req.push(target, qry.stype, qry.sclass, None)
    return State.PRODUCE


def _chain_failure(req: Request, qry: Query, why: str) -> State:
    if qry.parent is not None:
        qry.vars["answer"] = []
        return State.DONE
    return req.fail(_EDE_OTHER, why)
