"""Zone cuts: which zone's servers to ask about a name, and at which addresses.

A L{ZoneCut} is the closest enclosing zone we know of, with its NS names and whatever
addresses we have for them.  L{find_cut} builds it from the record cache (the closest
cached NS RRset of rank AUTHORITY or better, with addresses from the cache, glue
included) and falls back to the root hints; the iterate layer replaces it on every
referral and resolves the NS names without addresses as sub-queries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from kresolver.cache.cache import Rank, Security
from kresolver.resolve.names import canonical

__all__ = ["ZoneCut", "fill_from_cache", "find_cut", "root_cut"]

_A = dns.rdatatype.A
_AAAA = dns.rdatatype.AAAA
_NS = dns.rdatatype.NS
_DS = dns.rdatatype.DS


_SETS = (set, frozenset)


@dataclass
class ZoneCut:
    """A zone (C{name}) and its servers: {NS name: [addresses]} in the order learned.

    C{hints} says the addresses came from the root hints rather than from the zone's
    own NS RRset, which is what priming (RFC 8109) replaces.  Cuts found in the cache
    share their address lists: they are replaced (L{add}), never changed in place.
    """

    name: dns.name.Name
    servers: dict[dns.name.Name, list[str]] = field(default_factory=dict)
    hints: bool = False
    #: every known address once, in order (L{addresses} without exclusions), made on
    #: first use and dropped by L{add}; cuts made from one cached NS RRset share it
    #: while its addresses stay the same, so it is never changed in place
    known: list[str] | None = field(default=None, repr=False, compare=False)

    def addresses(self, exclude: Iterable[str] = ()) -> list[str]:
        """Every known address, once, without those in C{exclude}."""
        known = self.known
        if known is None:
            known = []
            for addresses in self.servers.values():
                for address in addresses:
                    if address not in known:
                        known.append(address)
            self.known = known
        if not exclude:
            return known[:]
        skip = exclude if isinstance(exclude, _SETS) else set(exclude)
        return [address for address in known if address not in skip]

    def unresolved(self) -> list[dns.name.Name]:
        """NS names we have no address for yet."""
        return [name for name, addresses in self.servers.items() if not addresses]

    def add(self, name: dns.name.Name, addresses: Iterable[str]) -> None:
        name = canonical(name)
        known = self.servers.get(name)
        grown = [] if known is None else known
        for address in addresses:
            if address not in grown:
                if grown is known:
                    grown = list(known)  # a copy: the list may be another cut's too
                grown.append(address)
        if grown is not known:
            self.servers[name] = grown
            self.known = None

    def __repr__(self) -> str:
        return f"ZoneCut({self.name} {dict(self.servers)!r}{' hints' if self.hints else ''})"


def root_cut(root_hints: Mapping[str, list[str]]) -> ZoneCut:
    """The root zone cut from the root hints ({server name: [addresses]}).

    Made once per content of the hints: parsing thirteen server names costs more than
    the rest of a query that falls back to them.  Each caller gets its own cut (the
    address lists are shared, and L{ZoneCut.add} never changes a list in place).
    """
    key = tuple((name, tuple(addresses)) for name, addresses in root_hints.items())
    template = _ROOT_CUTS.get(key)
    if template is None:
        template = ZoneCut(dns.name.root, hints=True)
        for name, addresses in root_hints.items():
            template.add(dns.name.from_text(name), addresses)
        if len(_ROOT_CUTS) >= 8:  # hints rarely change; never keep more than a few
            _ROOT_CUTS.clear()
        _ROOT_CUTS[key] = template
    return ZoneCut(template.name, dict(template.servers), hints=True)


_ROOT_CUTS: dict[tuple[tuple[str, tuple[str, ...]], ...], ZoneCut] = {}


#: the address types looked up for NS names; callers drop a family switched off
BOTH = (_A, _AAAA)


class _NSNames:
    """What a zone cut needs of a cached NS RRset, kept with the cache entry
    (L{kresolver.cache.Cache.derive}): its owner and NS names, lowercased.

    Also the servers dict last built from them (with the addresses C{found} then), which
    the next cut copies while the addresses stay the same: a dict copy hashes no names.
    """

    __slots__ = ("found", "known", "owner", "servers", "targets")

    def __init__(self, ns: dns.rrset.RRset) -> None:
        self.owner = canonical(ns.name)
        self.targets = tuple(dict.fromkeys(canonical(rdata.target) for rdata in ns))
        self.found: tuple[tuple[str, ...], ...] | None = None
        self.servers: dict[dns.name.Name, list[str]] = {}
        #: the cuts' L{ZoneCut.known}, shared by those made while C{found} stays
        self.known: list[str] | None = None

    def cut(self, cache: Any, cd: bool, rdtypes: tuple[int, ...]) -> ZoneCut:
        """A new cut of these servers with the addresses the cache has for them now.

        The address tuples are the ones the cache keeps with its entries, so while they
        stay the same the comparison with the last ones is mostly by identity.
        """
        found = _cached_addresses(cache, self.targets, cd, rdtypes)
        if found != self.found:
            self.found = found
            self.servers = {
                target: list(addresses)
                for target, addresses in zip(self.targets, found, strict=True)
            }
            self.known = None
        cut = ZoneCut(self.owner, self.servers.copy(), False, self.known)
        if self.known is None:
            cut.addresses()  # (makes the cut's list of them, kept for the next cuts)
            self.known = cut.known
        return cut


def _addresses_of(rrset: dns.rrset.RRset) -> tuple[str, ...]:
    """The addresses of a cached A or AAAA RRset (kept with the cache entry)."""
    return tuple(rdata.address for rdata in rrset)


_GLUE = Rank.GLUE
_AUTHORITY = Rank.AUTHORITY
_BOGUS = Security.BOGUS


def _cached_addresses(
    cache: Any, names: Iterable[dns.name.Name], cd: bool, rdtypes: tuple[int, ...] = BOTH
) -> tuple[tuple[str, ...], ...]:
    """The cached addresses (glue included) of the types C{rdtypes} of each of C{names}:
    the cache's own tuple where one type has them."""
    derive = cache.derive
    found: list[tuple[str, ...]] = []
    for name in names:
        out: tuple[str, ...] = ()
        for rdtype in rdtypes:
            hit = derive(name, rdtype, _addresses_of, min_rank=_GLUE)
            if hit is not None and (cd or hit[1] != _BOGUS):
                out = out + hit[0] if out else hit[0]
        found.append(out)
    return tuple(found)


def fill_from_cache(
    cut: ZoneCut, cache: Any | None, cd: bool = False, rdtypes: tuple[int, ...] = BOTH
) -> ZoneCut:
    """Add the cached addresses (glue included) of C{cut}'s NS names that have none."""
    if cache is not None:
        names = cut.unresolved()
        for name, addresses in zip(names, _cached_addresses(cache, names, cd, rdtypes),
                                   strict=True):
            cut.add(name, addresses)
    return cut


def find_cut(
    cache: Any | None,
    name: dns.name.Name,
    rdtype: int,
    root_hints: Mapping[str, list[str]],
    cd: bool = False,
    rdtypes: tuple[int, ...] = BOTH,
) -> ZoneCut:
    """The closest zone cut enclosing C{name} that the cache knows, else the root's.

    DS records live on the parent's side of a cut (RFC 4035 2.4), so a DS question starts
    its search at the parent.  Without a C{cache} (NO_CACHE) every search starts at the
    root hints.  A primed root (its NS in the cache) with no usable address known gets the
    hints' addresses, so a root NS RRset without glue cannot strand the resolver.
    """
    if rdtype == _DS and name != dns.name.root:
        name = name.parent()
    if cache is not None:
        hit = cache.closest(name, _NS, _NSNames, min_rank=_AUTHORITY, cd=cd)
        if hit is not None:
            cut: ZoneCut = hit[0].cut(cache, cd, rdtypes)
            if hit[2] == len(name.labels) - 1 and not cut.addresses():  # the root's
                hints = root_cut(root_hints)
                for server, addresses in hints.servers.items():
                    cut.add(server, addresses)
            return cut
    return root_cut(root_hints)
