"""The iterate layer: recursive resolution from the root down (kresd's ``iterate``).

For each query of the plan, produce finds the closest known zone cut (cache, else root
hints; priming first when the root is not primed), picks the question to ask its servers
and sets C{qry.outgoing}; consume classifies the response
(L{kresolver.resolve.iterate.classify}) and follows it: down a referral, along a CNAME or
DNAME chain, to an answer or a denial, or away from a lame server.  NS names without
addresses are resolved as sub-queries (never one already pending among the parents).

QNAME minimisation (RFC 9156), as kresd does it: the servers of a zone are asked for
``NS`` of the name one label below the zone (below the deepest name already found not to
be a cut), and for the real question only once that name is the one asked.  NODATA goes
one label deeper, a referral moves to the child, NXDOMAIN with the zone's SOA and AA ends
the query (RFC 8020: nothing exists below a name that does not exist).  A zone's servers
that answer a minimised question with REFUSED, FORMERR, SERVFAIL or NOTIMP, with an
NXDOMAIN lacking AA or the SOA, or with an answer we did not ask for, get the full name
instead for the rest of that zone.  ``option('NO_MINIMIZE', True)`` turns it off.

0x20 case randomisation is on by default (the upstream does it); ``option('NO_0X20',
True)`` turns it off, and ``iterate.no_0x20({'zone.'})`` turns it off for names in listed
zones only (servers that do not echo the question's case; the upstream also notices those
by itself and remembers them for a while).

Limits on the work of one request (kresd-like): a time limit (``iterate.time_limit``,
4 seconds, so that the SERVFAIL reaches a stub before its usual 5-second timeout), upstream
questions (``iterate.max_upstream``, 50), plus the driver's rounds, sub-queries and depth.
When they run out, or no server of a zone answers usefully, the client gets SERVFAIL with
an Extended DNS Error: 22 No Reachable Authority, 23 Network Error.  The cache layer then
may answer from stale data instead (RFC 8767).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import dns.name
import dns.rcode
import dns.rdatatype

from kresolver.logging import KLogger as Logger
from kresolver.module import Module
from kresolver.resolve.answer import deliver_negative, deliver_positive, follow, stash
from kresolver.resolve.iterate import Kind, Verdict, classify
from kresolver.resolve.names import canonical, same_name
from kresolver.resolve.outgoing import Outgoing
from kresolver.resolve.request import FINAL, Query, Request, State
from kresolver.resolve.upstream import (
    EDE_NETWORK_ERROR,
    EDE_NO_REACHABLE_AUTHORITY,
    UpstreamAnswer,
)
from kresolver.resolve.zonecut import ZoneCut, fill_from_cache, find_cut, root_cut

log = Logger()

_T = dns.rdatatype
#: rcodes that make us ask a zone's servers the full name instead of a minimised one
_QMIN_BROKEN = frozenset(
    {dns.rcode.REFUSED, dns.rcode.FORMERR, dns.rcode.SERVFAIL, dns.rcode.NOTIMP}
)

#: RFC 9156 2.3: minimised questions one label at a time, then at most this many in all
MINIMISE_ONE_LAB = 4
MAX_MINIMISE_COUNT = 10

#: address types of NS names by (IPv4 in use, IPv6 in use)
_FAMILIES = {
    (v4, v6): tuple(t for t, on in ((_T.A, v4), (_T.AAAA, v6)) if on)
    for v4 in (False, True)
    for v6 in (False, True)
}

#: the verdicts every upstream answer is tested for, as globals (an enum's attribute
#: lookup costs more than the test)
_ANSWER, _RCODE, _REFERRAL, _LAME = Kind.ANSWER, Kind.RCODE, Kind.REFERRAL, Kind.LAME

DEFAULT_TIME_LIMIT = 4.0
DEFAULT_MAX_UPSTREAM = 50

#: a query's first L{_Step} has tried and failed nothing yet: it shares these until then
_NO_ADDRESSES: frozenset[str] = frozenset()
_NO_LOOKUPS: frozenset[tuple[dns.name.Name, int]] = frozenset()


class _Work:
    """What one request has cost so far (req.vars['iterate']).

    A plain class whose defaults are class attributes, as L{_Step} is: one is made per
    request, and a dataclass's __init__ would set every field of it first.
    """

    sent: int = 0
    #: an upstream failed or gave nothing usable: serve-stale may step in
    upstream_failed: bool = False

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline


class _Step:
    """Where one query stands (qry.vars['iterate']).

    The defaults are class attributes, so a new step costs an empty instance; a field is
    stored in the instance when first set (the sets are replaced, never changed in place,
    so the shared empty ones are never changed either).
    """

    cut: ZoneCut | None = None
    #: addresses of the current cut that failed or were lame for this query
    bad: frozenset[str] = _NO_ADDRESSES
    #: QNAME minimisation is still on for the current cut
    minimize: bool = True
    #: the deepest name below the cut known not to be a zone cut (minimisation's progress)
    known: dns.name.Name | None = None
    #: (NS name, type) address lookups already tried for the current cut
    tried: frozenset[tuple[dns.name.Name, int]] = _NO_LOOKUPS
    #: the address sub-query we wait for: (NS name, its query)
    waiting: tuple[dns.name.Name, Query] | None = None
    primed: bool = False
    #: minimised questions asked for this query (RFC 9156 MINIMISE_COUNT)
    minimised: int = 0
    #: the outgoing question is the root priming one
    priming: bool = False
    ede: int = EDE_NO_REACHABLE_AUTHORITY
    why: str = ""


class IterateAPI:
    """What the config sees as ``iterate``."""

    def __init__(self, module: Iterate) -> None:
        self._module = module

    def no_0x20(self, zones: Iterable[str] | str | None = None) -> list[str]:
        """Send names in C{zones} without case randomisation; return the list (sorted).

        ``iterate.no_0x20({'broken.example.'})`` adds; ``iterate.no_0x20()`` lists.
        """
        if zones is not None:
            if isinstance(zones, str):
                zones = [zones]
            for zone in zones:
                self._module.no_0x20.add(dns.name.from_text(zone).canonicalize())
        return sorted(zone.to_text() for zone in self._module.no_0x20)

    def allow_0x20(self, zone: str) -> bool:
        """Randomise case for C{zone} again; False if it was not listed."""
        name = dns.name.from_text(zone).canonicalize()
        if name in self._module.no_0x20:
            self._module.no_0x20.discard(name)
            return True
        return False

    @property
    def time_limit(self) -> float:
        """Seconds one request may take before it gets SERVFAIL (default 4)."""
        return self._module.time_limit

    @time_limit.setter
    def time_limit(self, seconds: float) -> None:
        seconds = float(seconds)
        if not 0 < seconds <= 60:
            raise ValueError(f"iterate.time_limit must be within (0, 60] seconds, not {seconds}")
        self._module.time_limit = seconds

    @property
    def max_upstream(self) -> int:
        """Upstream questions one request may cause (default 50)."""
        return self._module.max_upstream

    @max_upstream.setter
    def max_upstream(self, count: int) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"iterate.max_upstream must be a positive integer, not {count!r}")
        self._module.max_upstream = count

    def __repr__(self) -> str:
        return (
            f"iterate(time_limit={self.time_limit}, max_upstream={self.max_upstream},"
            f" no_0x20={self.no_0x20()})"
        )


class Iterate(Module):
    """Recursive resolution: zone cuts, referrals, chains, minimisation, lame servers."""

    name = "iterate"
    description = "recursive resolution from the root: referrals, CNAME/DNAME, QNAME minimisation"

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.no_0x20: set[dns.name.Name] = set()
        self.time_limit = DEFAULT_TIME_LIMIT
        self.max_upstream = DEFAULT_MAX_UPSTREAM
        self.api = IterateAPI(self)

    # -- produce --------------------------------------------------------------------------

    def produce(self, req: Request, qry: Query) -> State | None:
        if req.state & FINAL or qry.resolved or qry.outgoing is not None:
            return None
        if qry.parent is not None and _orphan(qry):
            qry.resolved = True  # planned for a query that another layer answered since
            return State.DONE
        work = req.vars.get("iterate")
        if work is None:
            work = req.vars["iterate"] = _Work(req.started + self.time_limit)
        step: _Step | None = qry.vars.get("iterate")
        if step is None:
            step = qry.vars["iterate"] = _Step()
        engine = self.engine
        if engine.reactor.seconds() >= work.deadline:
            return self._give_up(
                req, qry, EDE_NO_REACHABLE_AUTHORITY,
                f"resolution time limit of {self.time_limit:g}s reached",
            )
        flags = qry.flags
        # (L{_cache}, L{_families} and L{_servers} inline: this runs once per question)
        cache = None if req.flags.NO_CACHE or "cache" not in engine.modules else engine.cache
        up = engine.upstream
        cut = step.cut
        if cut is None:
            cut = step.cut = find_cut(
                cache, qry.sname, qry.stype, engine.root_hints, req.flags.DNSSEC_CD,
                _FAMILIES[bool(up.ipv4), bool(up.ipv6)],
            )
            if cut.hints and not step.primed:
                step.primed = True
                if self._prime(req, qry, step):
                    return State.PRODUCE
        else:  # (a priming question and a sub-query are planned only once a cut is known)
            if step.priming:
                step.priming = False  # planned but not sent: a later layer answered meanwhile
            if step.waiting is not None:
                self._collect(step)
        servers = up.usable(cut.addresses(exclude=step.bad), flags.ALLOW_LOCAL)
        if not servers:
            if self._resolve_ns_address(req, qry, step):
                return State.PRODUCE
            why = step.why or "no usable address"
            why = f"no reachable authority for {cut.name}: {why}"
            if qry.parent is None:
                # A later layer (hints, say) may still answer the client's question; if
                # none does, the driver fails the request with this reason.
                qry.vars["unresolved"] = (step.ede, why)
                return None
            return self._give_up(req, qry, step.ede, why)
        if work.sent >= self.max_upstream:
            return self._give_up(
                req, qry, EDE_NO_REACHABLE_AUTHORITY,
                f"more than {self.max_upstream} upstream questions",
            )
        sname = qry.sname
        if (
            flags.NO_MINIMIZE or not step.minimize or step.minimised >= MAX_MINIMISE_COUNT
            # one label below the cut: nothing to hide (what L{_question} would find)
            or (step.known is None and len(sname.labels) - len(cut.name.labels) <= 1)
        ):
            name, rdtype = sname, qry.stype
        else:
            name, rdtype = self._question(qry, step, cache)
        name = canonical(name)  # the upstream picks the case (0x20), not the client
        work.sent += 1
        # (by position: keywords cost more than the rest of the call; DO and CD set)
        qry.outgoing = Outgoing(
            name, rdtype, servers, cut.name, qry.sclass, True, True, flags.TCP,
            not flags.NO_0X20 and (not self.no_0x20 or self._randomize(cut, name)),
            flags.ALLOW_LOCAL, work.deadline,
        )
        if req.trace is not None:  # the text costs more than the rest of this hook
            req.log(f"[iterate] asking {qry.outgoing!r}")
        return State.PRODUCE

    def _work(self, req: Request) -> _Work:
        work = req.vars.get("iterate")
        if work is None:
            work = req.vars["iterate"] = _Work(req.started + self.time_limit)
        return work

    def _families(self) -> tuple[int, ...]:
        """Address types of NS names worth knowing: those of the families in use."""
        up = self.engine.upstream
        return _FAMILIES[bool(up.ipv4), bool(up.ipv6)]

    def _cache(self, req: Request) -> Any | None:
        if req.flags.NO_CACHE or "cache" not in self.engine.modules:
            return None
        return self.engine.cache

    def _prime(self, req: Request, qry: Query, step: _Step) -> bool:
        """Ask ``. NS`` of the root hints before anything else (RFC 8109), when wanted.

        The priming question is sent on behalf of C{qry} rather than as a sub-query, so a
        produce layer after this one that answers C{qry} (hints) cancels it with the rest.
        """
        priming = self.engine.modules.get("priming")
        if priming is None or self._cache(req) is None:
            return False
        now = self.engine.reactor.seconds()
        if not priming.wanted(now):
            return False
        assert step.cut is not None
        servers = self._servers(qry, step)
        if not servers:
            return False
        priming.started(now)
        step.priming = True
        self._work(req).sent += 1
        qry.outgoing = Outgoing(
            dns.name.root,
            _T.NS,
            servers,
            zone=dns.name.root,
            rdclass=qry.sclass,
            tcp=qry.flags.TCP,
            randomize_case=False,
            allow_local=qry.flags.ALLOW_LOCAL,
            deadline=self._work(req).deadline,
        )
        req.log("[iterate] priming the root")
        return True

    def _primed(self, req: Request, step: _Step, response: Any) -> State:
        """The priming answer: the root's NS and glue replace the hints (and are cached)."""
        step.priming = False
        if not isinstance(response, UpstreamAnswer):
            return State.PRODUCE  # go on with the hints
        verdict = classify(response.records(), dns.name.root, _T.NS, dns.name.root)
        if verdict.kind is not Kind.ANSWER or verdict.cut is None:
            return State.PRODUCE
        stash(req, verdict.accepted)
        cut = fill_from_cache(
            verdict.cut, self._cache(req), req.flags.DNSSEC_CD, self._families()
        )
        if not cut.addresses():
            # A root NS RRset without glue: the hints still say where those servers are.
            for server, addresses in root_cut(self.engine.root_hints).servers.items():
                if server in cut.servers:
                    cut.add(server, addresses)
        if cut.addresses():
            step.cut = cut
        return State.PRODUCE

    def _servers(self, qry: Query, step: _Step) -> list[str]:
        assert step.cut is not None
        addresses = step.cut.addresses(exclude=step.bad)
        # The upstream's own filter (families switched off, local addresses): an address
        # it would refuse must not keep us from resolving another NS name instead.
        return self.engine.upstream.usable(addresses, qry.flags.ALLOW_LOCAL)

    def _collect(self, step: _Step) -> None:
        """Take the addresses an NS-name sub-query found."""
        assert step.waiting is not None and step.cut is not None
        name, sub = step.waiting
        step.waiting = None
        rrsets = sub.vars.get("answer") or []
        hint = sub.vars.get("hints")
        if not rrsets and hint is not None:
            rrsets = [hint]
        addresses = [
            rdata.address for rrset in rrsets if rrset.rdtype in (_T.A, _T.AAAA) for rdata in rrset
        ]
        step.cut.add(name, addresses)

    def _resolve_ns_address(self, req: Request, qry: Query, step: _Step) -> bool:
        """Plan a sub-query for an NS name of the cut we have no address for."""
        assert step.cut is not None
        for name in step.cut.unresolved():
            for rdtype in self._families():
                if (name, rdtype) in step.tried:
                    continue
                step.tried |= {(name, rdtype)}
                if _pending(qry, name, rdtype):
                    continue  # resolving it needs this very answer: a loop
                sub = req.push(name, rdtype, qry.sclass, parent=qry)
                step.waiting = (name, sub)
                req.log(f"[iterate] resolving NS address {name} {_T.to_text(rdtype)}")
                return True
        return False

    def _question(
        self, qry: Query, step: _Step, cache: Any | None
    ) -> tuple[dns.name.Name, int]:
        """The question while minimisation is on (RFC 9156): its minimised form, or the
        full question once nothing is left to uncover.

        Names whose NS NODATA is cached (an earlier minimised question found them not to
        be zone cuts) are stepped over without asking again.  Long names are uncovered
        as RFC 9156 2.3 says: one label at a time for the first MINIMISE_ONE_LAB
        questions, then in larger steps, and the full name after MAX_MINIMISE_COUNT
        (which L{produce} checks before it calls this).
        """
        assert step.cut is not None
        sname = qry.sname
        while True:
            base = step.known if step.known is not None else step.cut.name
            hidden = len(sname.labels) - len(base.labels)
            labels = 1
            if step.minimised >= MINIMISE_ONE_LAB:
                labels = max(1, hidden // (MAX_MINIMISE_COUNT - step.minimised))
            if labels >= hidden:
                return sname, qry.stype
            _, name = sname.split(len(base) + labels)
            if cache is not None:
                known = cache.get_negative(name, _T.NS, qry.sclass)
                if known is not None and known.rcode == dns.rcode.NOERROR:
                    step.known = name.canonicalize()
                    continue
            step.minimised += 1
            return name, _T.NS

    def _randomize(self, cut: ZoneCut, name: dns.name.Name) -> bool:
        """Whether C{name}, asked of C{cut}'s servers, is outside the C{no_0x20} zones."""
        for zone in self.no_0x20:
            if name.is_subdomain(zone) or cut.name.is_subdomain(zone):
                return False
        return True

    # -- consume --------------------------------------------------------------------------

    def consume(self, req: Request, qry: Query, response: Any) -> State | None:
        out: Outgoing | None = qry.outgoing
        step: _Step | None = qry.vars.get("iterate")
        if qry.resolved or out is None or step is None or req.state & FINAL:
            return None
        if step.priming:
            return self._primed(req, step, response)
        if not isinstance(response, UpstreamAnswer):
            step.ede = getattr(response, "ede", EDE_NETWORK_ERROR)
            step.why = str(response)
            step.bad = step.bad.union(out.servers)
            self._work(req).upstream_failed = True
            req.log(f"[iterate] {out!r} failed: {response}")
            return State.PRODUCE
        qname = out.qname
        verdict = classify(response.records(), qname, out.rdtype, out.zone)
        minimised = out.rdtype != qry.stype or (
            qname.labels != qry.sname.labels and not same_name(qname, qry.sname)
        )
        if req.trace is not None:
            req.log(
                f"[iterate] {response.server[0]} says {verdict.kind.value} {verdict.why}".rstrip()
            )
        kind = verdict.kind
        if kind is _RCODE:
            return self._error_rcode(req, qry, step, verdict, out, minimised, response.server[0])
        if (
            qry.stype == _T.DS
            and kind is _REFERRAL
            and verdict.cut is not None
            and verdict.cut.name == qry.sname
        ):
            # DS lives on the parent's side (RFC 4035 2.4): a referral to the child is lame.
            verdict = Verdict(_LAME, why="referral to the child for a DS question")
            kind = _LAME
        if kind is _LAME:
            server = response.server[0]
            step.bad |= {server}
            step.why = f"{server}: {verdict.why}"
            return State.PRODUCE
        stash(req, verdict.accepted)
        if minimised:
            return self._minimised(req, qry, step, verdict, out)
        return self._resolved(req, qry, step, verdict)

    def _error_rcode(
        self, req: Request, qry: Query, step: _Step, verdict: Verdict, out: Outgoing,
        minimised: bool, server: str,
    ) -> State:
        if minimised and step.minimize and verdict.rcode in _QMIN_BROKEN:
            step.minimize = False  # ask this zone's servers the full name from now on
            return State.PRODUCE
        if verdict.rcode == dns.rcode.YXDOMAIN and not minimised:
            # A DNAME substitution that would make a too long name (RFC 6672 2.2).
            if qry.parent is None:
                req.answer.set_rcode(dns.rcode.YXDOMAIN)
            qry.resolved = True
            return State.DONE
        # The upstream tried every server before settling for SERVFAIL or REFUSED.
        if verdict.rcode in (dns.rcode.SERVFAIL, dns.rcode.REFUSED):
            step.bad = step.bad.union(out.servers)
        else:
            step.bad |= {server}
        step.why = f"{dns.rcode.to_text(verdict.rcode)} from {server}"
        self._work(req).upstream_failed = True
        return State.PRODUCE

    def _minimised(
        self, req: Request, qry: Query, step: _Step, verdict: Verdict, out: Outgoing
    ) -> State:
        kind = verdict.kind
        if kind is Kind.REFERRAL:
            assert verdict.cut is not None
            return self._descend(req, step, verdict.cut)
        if kind is Kind.NODATA:
            step.known = out.qname.canonicalize()  # not a cut: one label deeper next time
            return State.PRODUCE
        if (
            kind is Kind.ANSWER
            and out.rdtype == _T.NS
            and verdict.cut is not None
            and verdict.cut.name == out.qname
            and len(verdict.chain) == 1
        ):
            # These servers are authoritative for the child too: it is a zone of its own.
            return self._descend(req, step, verdict.cut)
        if kind is Kind.NXDOMAIN and verdict.aa and verdict.soa is not None and not verdict.chain:
            # RFC 8020: nothing exists below a name that does not exist.
            deliver_negative(req, qry, dns.rcode.NXDOMAIN, verdict.soa, verdict.proofs,
                             from_cache=False)
            qry.resolved = True
            return State.DONE
        step.minimize = False  # an answer we cannot use: ask the full name instead
        return State.PRODUCE

    def _resolved(self, req: Request, qry: Query, step: _Step, verdict: Verdict) -> State:
        kind = verdict.kind
        if kind is _ANSWER:
            deliver_positive(req, qry, verdict.chain, from_cache=False)
            qry.resolved = True
            return State.DONE
        if kind is _REFERRAL:
            assert verdict.cut is not None
            return self._descend(req, step, verdict.cut)
        if kind is Kind.CNAME:
            assert verdict.target is not None
            deliver_positive(req, qry, verdict.chain, from_cache=False)
            return follow(req, qry, verdict.target)
        # NXDOMAIN or NODATA, maybe at the end of a chain (RFC 6604: the rcode is the last's)
        if verdict.chain:
            deliver_positive(req, qry, verdict.chain, from_cache=False)
        deliver_negative(req, qry, verdict.rcode, verdict.soa, verdict.proofs, from_cache=False)
        qry.resolved = True
        return State.DONE

    def _descend(self, req: Request, step: _Step, cut: ZoneCut) -> State:
        """Move C{step} to the child zone C{cut}."""
        step.cut = fill_from_cache(cut, self._cache(req), req.flags.DNSSEC_CD, self._families())
        step.bad = _NO_ADDRESSES
        step.known = None
        step.tried = _NO_LOOKUPS
        step.minimize = True
        return State.PRODUCE

    # -- failure --------------------------------------------------------------------------

    def _give_up(self, req: Request, qry: Query, ede: int, why: str) -> State:
        """C{qry} cannot be resolved: a sub-query ends empty, the client's gets SERVFAIL."""
        req.log(f"[iterate] giving up on {qry.sname}: {why}")
        if qry.parent is not None:
            qry.vars["answer"] = []
            qry.resolved = True
            return State.DONE
        log.debug("{qname} {qtype}: {why}", qname=qry.sname, qtype=_T.to_text(qry.stype), why=why)
        return req.fail(ede, why)


def _orphan(qry: Query) -> bool:
    """Whether a query that C{qry} was planned for is resolved already."""
    q = qry.parent
    while q is not None:
        if q.resolved:
            return True
        q = q.parent
    return False


def _pending(qry: Query, name: dns.name.Name, rdtype: int) -> bool:
    """Whether C{name} C{rdtype} is C{qry} or one of its parents."""
    q: Query | None = qry
    while q is not None:
        if q.stype == rdtype and q.sname == name:
            return True
        q = q.parent
    return False
