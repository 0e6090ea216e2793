"""The validate layer: the chain of trust from the trust anchors to every answer.

It runs after iterate in the consume hook.  Iterate has queued what it accepted from the
response (L{kresolver.resolve.answer.stash}); validate marks each item SECURE, INSECURE or
BOGUS before the cache layer stores it, so the validation status is cached with the data
and a cache hit needs no second check.

Keys come top-down: a zone's DNSKEY set is trusted when a trust anchor or a validated DS of
its parent vouches for it; a zone whose parent proves that no DS exists is insecure.  DS and
DNSKEY sets that are not in the cache are resolved by internal requests that walk the same
layers (cache, iterate, validate), so they are cached and validated like any other data.

Forwarding (``policy.FORWARD``, ``TLS_FORWARD``) validates the same way in a scope of its
own (L{TrustScope}): the target's answers are checked by L{Validator.check_forwarded}, the
DS and DNSKEY sets come from the same targets, never from the shared record cache, and a
name whose signer is not shown is placed in its zone by asking DS for each name on the
way down from the trust anchor (a forwarder does not see zone cuts).

Most data is unsigned, and costs little here: once a zone is known insecure (no anchor
above it, a negative anchor, a delegation proven unsigned), unsigned data from its servers
is marked INSECURE by one lookup by the zone's labels, and the answer's AD check stops at
the first insecure part.  Names are compared and looked up as tuples of lowercase labels
throughout: a dnspython name hashes and compares in Python, label by label.

Failures are remembered briefly, as kresd does: a zone whose keys could not be had keeps
that status for L{BOGUS_TTL} (bogus) or L{UNREACHABLE_TTL} (no server answered) seconds,
and a question whose answer was bogus is answered SERVFAIL from memory for as long as the
record cache keeps the bogus data (at most L{BOGUS_TTL}); CD clients get that data.

Client-facing behaviour, as kresd's:
  - AD on answers whose every part is SECURE, when the client set DO or AD;
  - CD: the data comes back unvalidated-in-effect (bogus is served, never with AD);
  - BOGUS without CD: SERVFAIL with the Extended DNS Error that says why;
  - keys that cannot be fetched (dead servers): SERVFAIL with EDE 22/23 (or 5), not 6;
  - RFC 8198: validated NSEC ranges answer NXDOMAIN and NODATA below them without asking
    upstream (``cache.aggressive`` in the metrics).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
from twisted.internet.defer import Deferred, succeed

from kresolver.cache.cache import Rank, Security
from kresolver.logging import KLogger as Logger
from kresolver.module import Module
from kresolver.resolve import dnssec
from kresolver.resolve.answer import Accepted, Denial, add_proofs, deliver_negative
from kresolver.resolve.dnssec import EDE, Verdict
from kresolver.resolve.driver import drive
from kresolver.resolve.iterate import Kind, classify
from kresolver.resolve.names import canonical, checked_name
from kresolver.resolve.request import FINAL, Query, Request, State, _flag
from kresolver.resolve.response import copy_rrset
from kresolver.resolve.upstream import EDE_NO_REACHABLE_AUTHORITY, UpstreamAnswer

log = Logger()

_T = dns.rdatatype
#: internal DS/DNSKEY requests may nest this deep (each level is one zone up the tree)
MAX_DEPTH = 12
#: seconds a bogus answer or a zone without usable keys is remembered (kresd: 60 s)
BOGUS_TTL = 60
#: seconds a zone whose DS or DNSKEY no server gave is left alone
UNREACHABLE_TTL = 10
#: questions with a remembered bogus answer, at most
MAX_REMEMBERED = 10000
#: zones whose status is remembered by their labels (L{Validator._zones}), at most
MAX_ZONES = 10000
#: RFC 8914: what a lookup that got no answer says (3 Stale Answer: every upstream failed)
_EDE_STALE, _EDE_NETWORK = 3, 23
_UNANSWERED = (EDE_NO_REACHABLE_AUTHORITY, _EDE_NETWORK)
_FAILED = (Security.BOGUS, Security.INDETERMINATE)
_AD = int(dns.flags.AD)  # tested as an int: the flag enum's & makes a new member each time
_FAIL = State.FAIL
#: the rcodes whose answers the validator judges (a tuple of enum lookups made once)
_POSITIVE_OR_NX = frozenset({int(dns.rcode.NOERROR), int(dns.rcode.NXDOMAIN)})
_SECURE = Security.SECURE
_ANSWER = Rank.ANSWER
_INSECURE = Security.INSECURE
_UNCHECKED = Security.UNCHECKED


@dataclass
class ZoneTrust:
    """What a validator knows about one zone: its status and, if SECURE, its keys."""

    security: Security
    keys: dns.rrset.RRset | None = None
    ede: int | None = None
    why: str = ""
    expires: float = 0.0


@dataclass(slots=True)
class Outcome:
    """The validation status of one request's answer (req.vars['validate'])."""

    security: Security = Security.SECURE
    ede: int | None = None
    why: str = ""
    #: (lowercase owner labels, type) of answer RRsets validated from upstream in this
    #: request (labels, not names: a dnspython name hashes in Python, character by character)
    checked: dict[tuple[tuple[bytes, ...], int], Security] = field(default_factory=dict)
    negative: Security | None = None

    def add(self, security: Security, ede: int | None = None, why: str = "") -> None:
        if _RANK[security] > _RANK[self.security]:
            self.security = security
            if security in _FAILED or self.ede is None:
                self.ede, self.why = ede, why


#: how bad each status is: the answer is as good as its worst part
_RANK = {
    Security.SECURE: 0,
    Security.INSECURE: 1,
    Security.UNCHECKED: 2,
    Security.INDETERMINATE: 3,
    Security.BOGUS: 4,
}


@dataclass
class TrustScope:
    """Where a chain of trust is built from, and what is known in it.

    The recursion's scope (C{ask} None) reads validated DS and DNSKEY sets from the shared
    record cache and resolves missing ones with internal requests through the layers.  A
    forwarding target set's scope asks its targets (C{ask(name, rdtype)}: a Deferred
    response, RD and CD set) and keeps its zones' status apart, so one set of targets
    never vouches for the answers of another.
    """

    ask: Callable[[dns.name.Name, int], Deferred[dns.message.Message]] | None = None
    trust: dict[dns.name.Name, ZoneTrust] = field(default_factory=dict)
    #: the same, by the zones' lowercase labels: the per-answer question "what about this
    #: signer's keys" is answered with a tuple of bytes, where a dnspython name hashes in
    #: Python (L{Validator._gen_zone_trust}, L{Validator._known})
    known: dict[tuple[bytes, ...], ZoneTrust] = field(default_factory=dict)
    #: forwarding: what the DS of each name on the way down said (L{Validator._gen_cut}),
    #: by the name's lowercase labels
    cuts: dict[tuple[bytes, ...], _Cut] = field(default_factory=dict)


@dataclass
class _Cut:
    """A name on the way down to unsigned data: a signed zone starts there, nothing
    exists there, the way ends there (C{ends}: an unsigned cut, or a failure), or it is
    just a name inside the zone above (none of these)."""

    expires: float
    signed: bool = False
    empty: bool = False
    ends: ZoneTrust | None = None


@dataclass
class _Failure:
    """A question whose answer was bogus, remembered briefly."""

    expires: float
    ede: int | None
    why: str


@dataclass
class _Range:
    owner: dns.name.Name
    nsec: dns.rrset.RRset  # an NSEC or NSEC3 RRset
    rrsig: dns.rrset.RRset
    expires: float


class _ZoneRanges:
    """Validated NSEC and NSEC3 records of one signed zone (RFC 8198 aggressive use).

    Sorted by owner (NSEC, canonical order: L{dnssec.order_key}) or by hash (NSEC3), so
    the records that could prove something about a name are found by bisection; the proof
    itself is the same L{dnssec.Denial} that judges upstream answers.
    """

    def __init__(
        self, zone: dns.name.Name, soa: dns.rrset.RRset, soa_sig: dns.rrset.RRset | None
    ) -> None:
        self.zone = zone
        self.soa, self.soa_sig = soa, soa_sig
        self.owners: list[tuple[bytes, ...]] = []
        self.nsec: dict[tuple[bytes, ...], _Range] = {}
        self.hashes: list[str] = []
        self.nsec3: dict[str, _Range] = {}
        self.params: tuple[int, bytes, int] | None = None

    def add(self, item: _Range) -> None:
        if item.nsec.rdtype == _T.NSEC:
            key = dnssec.order_key(item.owner)
            if key not in self.nsec:
                bisect.insort(self.owners, key)
            self.nsec[key] = item
            return
        rd = item.nsec[0]
        if rd.algorithm != 1:
            return  # an unknown hash (RFC 5155 8.1): it proves nothing
        params = (rd.algorithm, bytes(rd.salt), rd.iterations)
        if self.params is None:
            self.params = params
        elif params != self.params:  # the zone changed its chain: start over
            self.hashes, self.nsec3, self.params = [], {}, params
        hashed = item.owner.labels[0].decode("ascii").upper()
        if hashed not in self.nsec3:
            bisect.insort(self.hashes, hashed)
        self.nsec3[hashed] = item

    @staticmethod
    def _before(keys: list[Any], key: Any) -> int:
        """Index of the last entry at or before C{key}, wrapping to the last one."""
        i = bisect.bisect_right(keys, key) - 1
        return i if i >= 0 else len(keys) - 1

    def candidates(self, name: dns.name.Name, zone: dns.name.Name, now: float) -> list[_Range]:
        """The live records that match or cover C{name}, its ancestors and their wildcards."""
        found: dict[int, _Range] = {}
        key, top = dnssec.order_key(name), dnssec.order_key(zone)
        if key[: len(top)] != top:
            return []
        keys = [key]  # the name, then each ancestor down to the zone and its wildcard
        for end in range(len(key) - 1, len(top) - 1, -1):
            keys += (key[:end], (*key[:end], b"*"))
        for k in keys:
            if self.owners:
                item = self.nsec[self.owners[self._before(self.owners, k)]]
                found[id(item)] = item
            if self.hashes and self.params is not None:
                _, salt, iterations = self.params
                h = dnssec.nsec3_hash(k, salt, iterations)
                item = self.nsec3[self.hashes[self._before(self.hashes, h)]]
                found[id(item)] = item
        return [item for item in found.values() if item.expires > now]


class Validator:
    """The validation logic; the module (L{ValidateModule}) gives it the engine's hooks."""

    def __init__(self, engine: Any, anchors: Any) -> None:
        self.engine = engine
        self.anchors = anchors
        self.skew = dnssec.CLOCK_SKEW
        self.max_iterations = dnssec.MAX_NSEC3_ITERATIONS
        self.aggressive = True
        self._recursion = TrustScope()
        self._trust = self._recursion.trust
        self._forwarding: dict[Any, TrustScope] = {}
        #: RFC 8198: each signed zone's validated NSEC/NSEC3 records, by the zone's labels
        self._ranges: dict[tuple[bytes, ...], _ZoneRanges] = {}
        self._bogus: dict[tuple[dns.name.Name, int, int], _Failure] = {}
        #: the status of the recursion's zones by their labels (L{TrustScope.known}): the
        #: per-miss questions "which zone is this in" and "is it insecure" too
        self._zones = self._recursion.known
        #: those of them that are INSECURE with no anchor below: unsigned data from them
        #: is insecure without a look at anything else (L{_quick_insecure})
        self._insecure: dict[tuple[bytes, ...], ZoneTrust] = {}
        anchors.listeners.append(self.forget)

    def forget(self) -> None:
        """Anchors changed: every key, range and verdict derived from the old ones goes."""
        self._trust.clear()
        self._zones.clear()
        self._insecure.clear()
        self._ranges.clear()
        self._bogus.clear()
        for scope in self._forwarding.values():
            scope.trust.clear()
            scope.known.clear()
            scope.cuts.clear()

    def forward_scope(
        self, key: Any, ask: Callable[[dns.name.Name, int], Deferred[dns.message.Message]]
    ) -> TrustScope:
        """The trust scope of the forwarding target set C{key} (made on first use)."""
        scope = self._forwarding.get(key)
        if scope is None:
            scope = self._forwarding[key] = TrustScope(ask)
        scope.ask = ask
        return scope

    def _scope(self, req: Request) -> TrustScope:
        scope: TrustScope | None = req.vars.get("validate_scope")
        return scope if scope is not None else self._recursion

    def now(self) -> float:
        return self.engine.reactor.seconds()

    def count(self, key: str) -> None:
        metrics = self.engine.metrics
        metrics[key] = metrics.get(key, 0) + 1

    # -- the chain of trust ----------------------------------------------------------------

    def _gen_zone_trust(self, req: Request, zone: dns.name.Name) -> Generator[Any, Any, ZoneTrust]:
        """The status of C{zone}'s apex, with its validated DNSKEYs when SECURE."""
        now = self.now()
        scope = self._scope(req)
        # by labels first: a signer's name is lowercase (normalised)
        memo = scope.known.get(zone.labels)
        if memo is None:
            memo = scope.trust.get(zone)
            if memo is not None and memo.expires > now:
                self._note_zone(scope, zone, memo)
        if memo is not None and memo.expires > now:
            return memo
        busy: frozenset[dns.name.Name] = req.vars.get("validate_busy", frozenset())
        if zone in busy:
            # The DNSKEY lookup of this zone needs this zone's keys (a denial of its own
            # DNSKEY set): there are none to be had, and asking again would loop.
            return ZoneTrust(
                Security.BOGUS, None, EDE.DNSKEY_MISSING, f"no DNSKEY for {zone}", now
            )
        entry = yield from self._gen_entry(req, zone)
        cached = None
        if entry.security == Security.SECURE and scope.ask is None:
            cached = self.engine.cache.get_rrset(zone, _T.DNSKEY)
        if entry.security != Security.SECURE:
            trust = ZoneTrust(entry.security, None, entry.ede, entry.why, entry.expires)
        elif cached is not None and cached.security == Security.SECURE:
            trust = ZoneTrust(Security.SECURE, cached.rrset, expires=now + cached.rrset.ttl)
        else:
            sub = yield from self._gen_lookup(req, zone, _T.DNSKEY, busy | {zone})
            keys = _find(sub.answer.answer, zone, _T.DNSKEY)
            sigs = _find(sub.answer.answer, zone, _T.RRSIG, _T.DNSKEY)
            if keys is None or _unanswered(sub):
                if _unanswered(sub):
                    security, ede, why = _why_failed(sub, f"the DNSKEY of {zone}")
                else:
                    outcome = sub.vars.get("validate")
                    ede = outcome.ede if outcome and outcome.ede else EDE.DNSKEY_MISSING
                    security, why = Security.BOGUS, f"no DNSKEY for {zone}"
                trust = ZoneTrust(security, None, ede, why, now + _failure_ttl(security))
            else:
                verdict = entry.verify(zone, keys, sigs, now, self.skew)
                ttl = min(keys.ttl, verdict.ttl if verdict.ttl is not None else keys.ttl)
                if not verdict.secure:
                    ttl = min(ttl, BOGUS_TTL)
                trust = ZoneTrust(
                    verdict.security,
                    keys if verdict.secure else None,
                    verdict.ede,
                    verdict.reason,
                    now + max(ttl, 5),
                )
        scope.trust[zone] = trust
        self._note_zone(scope, zone, trust)
        return trust

    def _note_zone(self, scope: TrustScope, zone: dns.name.Name, trust: ZoneTrust) -> None:
        """Keep C{zone}'s status by its labels too (L{TrustScope.known}; the recursion's
        insecure zones in L{_insecure} as well)."""
        key = canonical(zone).labels
        zones = scope.known
        if zones.get(key) is trust:
            return
        recursion = scope is self._recursion
        if len(zones) >= MAX_ZONES:
            zones.clear()
            if recursion:
                self._insecure.clear()
        zones[key] = trust
        if not recursion:
            return
        # An anchor below an insecure zone could make part of it secure again (anchors
        # change only with a call of forget, which empties both).
        if trust.security == Security.INSECURE and not any(
            a != zone and a.is_subdomain(zone) for a in self.anchors.anchors
        ):
            self._insecure[key] = trust
        else:
            self._insecure.pop(key, None)

    def _known(
        self, req: Request, zone: dns.name.Name | None, now: float
    ) -> ZoneTrust | None:
        """What L{_gen_zone_trust} would say at once of C{zone}'s keys, when it is
        remembered (by labels) in C{req}'s scope; None when it must be asked."""
        if zone is None:
            return None
        trust = self._scope(req).known.get(zone.labels)
        return trust if trust is not None and trust.expires > now else None

    def _gen_entry(self, req: Request, zone: dns.name.Name) -> Generator[Any, Any, _Entry]:
        """What vouches for C{zone}'s keys: an anchor, its parent's DS, or nothing."""
        now = self.now()
        if self.anchors.insecure(zone):
            return _Entry(
                Security.INSECURE,
                why=f"{zone} is under a negative trust anchor",
                expires=now + 3600,
            )
        anchor = self.anchors.anchor_for(zone)
        if anchor is None:
            return _Entry(
                Security.INSECURE, why=f"no trust anchor above {zone}", expires=now + 3600
            )
        if anchor.name == zone:
            return _Entry(
                Security.SECURE,
                ds=list(anchor.ds),
                anchor_keys=list(anchor.keys),
                expires=now + 3600,
            )
        if self._scope(req).ask is None:
            cache = self.engine.cache
            ds = cache.get_rrset(zone, _T.DS, min_rank=Rank.AUTHORITY)
            if ds is not None and ds.security in (
                Security.SECURE, Security.INSECURE, Security.BOGUS
            ):
                return self._entry_from_ds(zone, ds.rrset, ds.security, now)
            negative = cache.get_negative(zone, _T.DS)
            if negative is not None and negative.security != Security.UNCHECKED:
                return self._entry_from_negative(
                    zone, negative.security, negative.rcode, negative.proofs,
                    now + negative.soa.ttl,
                )
        sub = yield from self._gen_lookup(req, zone, _T.DS)
        if _unanswered(sub):
            # No server of the parent answered: that proves nothing either way.
            security, ede, why = _why_failed(sub, f"the DS of {zone}")
            return _Entry(security, ede=ede, why=why, expires=now + _failure_ttl(security))
        outcome: Outcome | None = sub.vars.get("validate")
        security = outcome.security if outcome is not None else Security.BOGUS
        if sub.answer.rcode() == dns.rcode.SERVFAIL:  # the DS answer itself was bogus
            ede = outcome.ede if outcome is not None and outcome.ede else EDE.BOGUS
            why = outcome.why if outcome is not None else f"the DS of {zone} is bogus"
            return _Entry(Security.BOGUS, ede=ede, why=why, expires=now + BOGUS_TTL)
        rrset = _find(sub.answer.answer, zone, _T.DS)
        if rrset is not None:
            return self._entry_from_ds(zone, rrset, security, now)
        return self._entry_from_negative(
            zone, security, sub.answer.rcode(), sub.answer.authority, now + 300
        )

    def _gen_trust(
        self, req: Request, signer: dns.name.Name | None, zone: dns.name.Name | None,
        name: dns.name.Name, rdtype: int,
    ) -> Generator[Any, Any, ZoneTrust]:
        """The keys to check C{name} C{rdtype} with: the signer's zone, else the zone the
        answer came from, else (a forwarder's unsigned data) the enclosing zone found from
        the trust anchor down."""
        if signer is not None or zone is not None:
            return (yield from self._gen_zone_trust(req, signer if signer is not None else zone))
        return (yield from self._gen_enclosing(req, name, rdtype))

    def _gen_enclosing(
        self, req: Request, name: dns.name.Name, rdtype: int
    ) -> Generator[Any, Any, ZoneTrust]:
        """The status of the zone holding C{name} C{rdtype} when no signature names it.

        A forwarder's answers show no zone cuts, so they are found as a validator behind
        one must: from the closest trust anchor down, the DS of each name on the way says
        whether a signed zone starts there, an unsigned one (the rest is insecure), or no
        zone at all (RFC 4035 5.2, 4.3).  Each lookup is cached in the scope's answers.
        """
        now = self.now()
        if self.anchors.insecure(name):
            return ZoneTrust(Security.INSECURE, why=f"{name} is under a negative trust anchor")
        anchor = self.anchors.anchor_for(name)
        if anchor is None:
            return ZoneTrust(Security.INSECURE, why=f"no trust anchor above {name}")
        trust = yield from self._gen_zone_trust(req, anchor.name)
        # The names below the anchor down to the owner, as lowercase label tuples (a
        # dnspython name is made only for a name whose DS must be asked).
        owner = canonical(name).labels
        if rdtype == _T.DS and len(owner) > 1:
            owner = owner[1:]
        top = canonical(anchor.name).labels
        below = len(owner) - len(top)
        if below <= 0 or owner[below:] != top:
            return trust
        cuts = self._scope(req).cuts
        for i in range(below - 1, -1, -1):
            if trust.security != Security.SECURE:
                return trust
            labels = owner[i:]
            child = None
            if self.anchors.negative:
                child = checked_name(labels)
                if self.anchors.insecure(child):
                    return ZoneTrust(Security.INSECURE, why=f"{child} is under a negative anchor")
            cut = cuts.get(labels)
            if cut is None or cut.expires <= now:
                child = child or checked_name(labels)
                cut = cuts[labels] = yield from self._gen_cut(req, child)
            if cut.ends is not None:
                return cut.ends
            if cut.signed:
                trust = yield from self._gen_zone_trust(req, child or checked_name(labels))
            elif cut.empty:
                break  # nothing exists below: the zone above answers for the name
        return trust

    def _gen_cut(self, req: Request, child: dns.name.Name) -> Generator[Any, Any, _Cut]:
        """What the (validated) DS answer for C{child} says about a zone cut there."""
        now = self.now()
        sub = yield from self._gen_lookup(req, child, _T.DS)
        if _unanswered(sub):
            security, ede, why = _why_failed(sub, f"the DS of {child}")
            expires = now + _failure_ttl(security)
            return _Cut(expires, ends=ZoneTrust(security, None, ede, why, expires))
        answer = sub.answer
        ttl = min((r.ttl for r in (*answer.answer, *answer.authority)), default=0)
        outcome: Outcome | None = sub.vars.get("validate")
        security = outcome.security if outcome is not None else Security.UNCHECKED
        if security != Security.SECURE:
            ede = outcome.ede if outcome is not None else None
            expires = now + min(ttl, _failure_ttl(security))
            why = f"the DS of {child} is not secure"
            return _Cut(expires, ends=ZoneTrust(security, None, ede, why, expires))
        if _find(answer.answer, child, _T.DS) is not None:
            return _Cut(now + ttl, signed=True)
        if answer.rcode() == dns.rcode.NXDOMAIN:
            return _Cut(now + ttl, empty=True)
        if self._unsigned_cut(child, answer.authority):
            why = f"{child} is an unsigned delegation"
            return _Cut(now + ttl, ends=ZoneTrust(Security.INSECURE, why=why))
        return _Cut(now + ttl)  # a name inside the zone above

    @staticmethod
    def _entry_from_ds(
        zone: dns.name.Name, rrset: dns.rrset.RRset, security: Security, now: float
    ) -> _Entry:
        if security == Security.SECURE:
            return _Entry(Security.SECURE, ds=list(rrset), expires=now + rrset.ttl)
        if security == Security.INSECURE:
            return _Entry(
                Security.INSECURE, why=f"the parent of {zone} is insecure", expires=now + rrset.ttl
            )
        return _Entry(
            Security.BOGUS, ede=EDE.BOGUS, why=f"the DS of {zone} is bogus", expires=now + 60
        )

    def _entry_from_negative(
        self,
        zone: dns.name.Name,
        security: Security,
        rcode: int,
        proofs: list[dns.rrset.RRset],
        expires: float,
    ) -> _Entry:
        """No DS for C{zone}: an unsigned delegation, if the proof shows a delegation.

        A parent that proves "no DS" for a name that is not a cut (no NS in its NSEC
        bitmap) or does not exist says that the data claiming to come from a zone there
        is forged: BOGUS, not insecure.
        """
        if security == Security.INSECURE:
            return _Entry(
                Security.INSECURE, why=f"the parent of {zone} is insecure", expires=expires
            )
        if security == Security.SECURE:
            if rcode == dns.rcode.NXDOMAIN:
                return _Entry(
                    Security.BOGUS, ede=EDE.BOGUS, why=f"{zone} does not exist", expires=expires
                )
            if self._unsigned_cut(zone, proofs):
                return _Entry(
                    Security.INSECURE, why=f"{zone} is an unsigned delegation", expires=expires
                )
            return _Entry(
                Security.BOGUS,
                ede=EDE.BOGUS,
                why=f"{zone} is not a delegation of its parent",
                expires=expires,
            )
        return _Entry(
            Security.BOGUS,
            ede=EDE.NSEC_MISSING,
            why=f"no valid proof that {zone} is unsigned",
            expires=expires,
        )

    def _unsigned_cut(self, cut: dns.name.Name, proofs: list[dns.rrset.RRset]) -> bool:
        """Whether the (validated) denial C{proofs} show a delegation at C{cut} without DS."""
        signer = next((r[0].signer for r in proofs if r.rdtype == _T.RRSIG), None)
        if signer is None:
            return False
        return not dnssec.Denial(signer, proofs, self.max_iterations).no_ds(cut).bogus

    def _gen_lookup(
        self,
        req: Request,
        name: dns.name.Name,
        rdtype: int,
        busy: frozenset[dns.name.Name] | None = None,
    ) -> Generator[Any, Any, Request]:
        """Resolve C{name} C{rdtype} as an internal request: through the same layers, or
        from the forwarding targets of C{req}'s scope, validated either way."""
        sub = self._internal(name, rdtype, req.flags, req.vars.get("validate_depth", 0) + 1)
        sub.vars["validate_busy"] = req.vars.get("validate_busy", frozenset()) | (busy or set())
        scope = self._scope(req)
        if sub.state & State.FAIL:
            return sub
        if scope.ask is None:
            state = drive(self.engine.resolver.walk_internal(sub))
            if isinstance(state, Deferred):
                yield state
            return sub
        sub.vars["validate_scope"] = scope
        try:
            message = yield scope.ask(name, rdtype)
        except Exception as error:
            sub.fail(getattr(error, "ede", _EDE_NETWORK), f"{name} {_T.to_text(rdtype)}: {error}")
            return sub
        answer = sub.answer
        answer.answer = list(message.answer)
        answer.authority = list(message.authority)
        answer.set_rcode(message.rcode())
        yield from self._gen_forwarded(sub, message)
        return sub

    def _internal(self, name: dns.name.Name, rdtype: int, flags: Any, depth: int) -> Request:
        query = dns.message.make_query(name, rdtype, want_dnssec=True)
        sub = Request(self.engine, b"", query, None, None, "internal", self.now())
        sub.vars["validate_depth"] = depth
        sub.flags = flags.copy()
        sub.flags.DNSSEC_WANT = True
        sub.flags.DNSSEC_CD = False
        sub.cacheable = False
        if depth > MAX_DEPTH:
            sub.fail(EDE.INDETERMINATE, "chain of trust too deep")
        else:
            self.count("validate.subrequest")
        return sub

    def resolve(
        self, name: dns.name.Name, rdtype: int, *, no_cache: bool = False
    ) -> Deferred[Request]:
        """Resolve and validate C{name} C{rdtype} for a module (not for a client): fires
        with the finished internal request; its answer has the RRSIGs, and
        C{vars['validate']} the L{Outcome}.  C{no_cache}: ask upstream, store nothing."""
        flags = self.engine.options.copy()
        flags.NO_CACHE = no_cache
        sub = self._internal(name, rdtype, flags, 1)
        state = drive(self.engine.resolver.walk_internal(sub))
        if isinstance(state, Deferred):
            return state.addCallback(lambda _: sub)
        return succeed(sub)

    # -- checking a response ----------------------------------------------------------------

    def consume(
        self, req: Request, qry: Query, response: Any
    ) -> State | Deferred[State | None] | None:
        """Judge what iterate accepted from C{response}: at once when it all comes from a
        zone known to be insecure, else through the chain of trust (L{_gen_consume})."""
        out = qry.outgoing
        if req.state & _FAIL or out is None or not isinstance(response, UpstreamAnswer):
            return None
        if req.flags.NO_CACHE:
            # Nothing is queued for a cache that is not used: judge the response anew, since
            # data kept out of the cache must still be validated before a client sees it.
            items = classify(response.records(), out.qname, out.rdtype, out.zone).accepted
        else:
            items = []
            for item in req.vars.get("stash", ()):  # (a loop: a comprehension is a call)
                if item.security == _UNCHECKED:
                    items.append(item)
        if not items:
            return None
        outcome: Outcome | None = req.vars.get("validate")
        if outcome is None:
            outcome = req.vars["validate"] = Outcome()
        # A QNAME-minimised probe's data is not the answer: only its bogus parts count.
        # (labels first: equal names in the same case, without dnspython's compare)
        asked = out.rdtype == qry.stype and (
            out.qname.labels == qry.sname.labels or out.qname == qry.sname
        )
        # Unsigned data from a zone known insecure (no anchor above it, a negative anchor,
        # an unsigned delegation) is INSECURE: what L{_gen_consume} would conclude, for a
        # dict lookup.  Anything signed takes the full check: a signature names its
        # signer, whose zone may differ.
        trust = self._insecure.get(out.zone.labels)
        if (
            trust is None
            or trust.expires <= self.engine.reactor.seconds()
            or req.vars.get("validate_scope") is not None
        ):
            return drive(self._gen_consume(req, qry, response, out, items, outcome, asked))
        for item in items:
            if type(item) is Accepted:
                if item.rrsigs:
                    break
            elif any(r.rdtype == _T.RRSIG and r.covers == _T.SOA for r in item.proofs):
                break
        else:
            self._mark_insecure(items, outcome, trust, asked and qry.parent is None)
            if outcome.security in _FAILED and qry.parent is None and not req.flags.DNSSEC_CD:
                return req.fail(outcome.ede if outcome.ede is not None else EDE.BOGUS, outcome.why)
            return None
        return drive(self._gen_consume(req, qry, response, out, items, outcome, asked))

    @staticmethod
    def _mark_insecure(
        items: list[Accepted | Denial], outcome: Outcome, trust: ZoneTrust, record: bool
    ) -> None:
        """Mark unsigned C{items} of an insecure zone INSECURE; C{record} (the client's
        question, asked as it is): in C{outcome} too, for L{finalize}."""
        judged = False
        checked = outcome.checked
        for item in items:
            if type(item) is Accepted:
                if item.rank < _ANSWER:
                    continue  # unsigned referral NS and glue: never judged
                item.security = _INSECURE
                if record:
                    rrset = item.rrset  # (L{_accepted_key}, inline: once per answer)
                    checked[rrset.name.labels, rrset.rdtype] = _INSECURE
            else:
                item.security = _INSECURE
                if record:
                    outcome.negative = _INSECURE
            judged = True
        if record and judged and outcome.security == _SECURE:
            # (L{Outcome.add} inline: only a SECURE outcome gets worse by an INSECURE part)
            outcome.security = _INSECURE
            if outcome.ede is None:
                outcome.ede, outcome.why = trust.ede, trust.why

    def _gen_consume(
        self,
        req: Request,
        qry: Query,
        response: Any,
        out: Any,
        items: list[Accepted | Denial],
        outcome: Outcome,
        asked: bool,
    ) -> Generator[Any, Any, State | None]:
        proofs: list[Any] = []

        def authority() -> list[tuple[dns.rrset.RRset | None, dns.rrset.RRset | None]]:
            # Only a wildcard answer needs the authority section's proofs: parse it then.
            if not proofs:
                proofs.append(_signed_sets(response.message.authority))
            return proofs[0]

        client = qry.parent is None
        for item in items:
            if isinstance(item, Accepted) and (
                item.rank == Rank.GLUE or (item.rank == Rank.AUTHORITY and not item.rrsigs)
            ):
                continue  # referral NS and glue are never signed
            verdict = yield from self._gen_item(req, out.zone, item, authority)
            failed = verdict.security in _FAILED
            if isinstance(item, Accepted) and item.rank < Rank.ANSWER:
                continue
            if client and (asked or failed):
                if isinstance(item, Accepted):
                    outcome.checked[_accepted_key(item)] = verdict.security
                elif asked:
                    outcome.negative = verdict.security
                outcome.add(verdict.security, verdict.ede, verdict.reason)
                if asked and verdict.bogus and not req.flags.NO_CACHE:
                    self._remember_bogus(item, qry, verdict)
            elif not client and failed and isinstance(item, Accepted):
                qry.vars["answer"] = []
        queued = req.vars.get("stash")
        if queued:
            # Data whose keys could not be had is neither good nor bad: it is not kept.
            queued[:] = [i for i in queued if i.security != Security.INDETERMINATE]
        if client and outcome.security in _FAILED and not req.flags.DNSSEC_CD:
            return req.fail(outcome.ede if outcome.ede is not None else EDE.BOGUS, outcome.why)
        if client and asked:
            # iterate delivered the data before it was judged; a wildcard's proof is known
            # only now, and the client is owed it with the expanded data (RFC 4035 3.1.3.3)
            for item in items:
                if isinstance(item, Accepted) and item.proofs:
                    add_proofs(req, item.proofs)
        return None

    def _gen_item(
        self,
        req: Request,
        zone: dns.name.Name | None,
        item: Accepted | Denial,
        authority: Callable[[], list[tuple[dns.rrset.RRset | None, dns.rrset.RRset | None]]],
    ) -> Generator[Any, Any, Verdict]:
        """Judge one accepted RRset or denial, mark it, and cap its cached life."""
        if isinstance(item, Accepted):
            verdict = yield from self._gen_rrset(req, zone, item, authority)
            ttl = item.rrset.ttl
            if verdict.ttl is not None:
                ttl = min(ttl, verdict.ttl)
            if verdict.bogus:
                ttl = min(ttl, BOGUS_TTL)
            if ttl != item.rrset.ttl:
                # Capped on a copy, whatever the rank: below ANSWER the response's memo
                # shares the RRset, and an answer RRset is shared by every request that
                # joined the same upstream exchange (one request's cap is not another's).
                item.rrset = copy_rrset(item.rrset, item.rrset.name)
                item.rrset.ttl = ttl
        else:
            verdict = yield from self._gen_denial(req, zone, item)
            if verdict.bogus and item.soa.ttl > BOGUS_TTL:
                item.soa = copy_rrset(item.soa, item.soa.name)  # (shared, as above)
                item.soa.ttl = BOGUS_TTL
        item.security = verdict.security
        if verdict.bogus:
            self.count("validate.bogus")
            req.log(f"[validate] bogus: {verdict.reason}")
        return verdict

    # -- forwarded answers ------------------------------------------------------------------

    def check_forwarded(
        self, req: Request, message: dns.message.Message, scope: TrustScope
    ) -> State | Deferred[State | None] | None:
        """Validate C{message}, a forwarding target's answer to C{req} (already copied into
        C{req.answer}); the DS and DNSKEY sets come from C{scope}.  FAIL (SERVFAIL with
        EDE) when it is bogus and the client did not set CD; AD is set by L{finalize}."""
        req.vars["validate_scope"] = scope
        return drive(self._gen_forwarded(req, message))

    def _gen_forwarded(
        self, req: Request, message: dns.message.Message
    ) -> Generator[Any, Any, State | None]:
        outcome: Outcome = req.vars.setdefault("validate", Outcome())
        if message.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return None
        if not self.anchors.anchors:
            # No anchor at all: every part would be judged "no trust anchor above" it, so
            # the answer is insecure without taking it apart.
            outcome.add(Security.INSECURE, None, f"no trust anchor above {req.qname}")
            return None
        # A resolver's answer holds the whole chain; the root is every name's bailiwick.
        verdict = classify(message, req.qname, req.qtype, dns.name.root)
        proofs: list[Any] = []

        def authority() -> list[tuple[dns.rrset.RRset | None, dns.rrset.RRset | None]]:
            if not proofs:
                proofs.append(_signed_sets(message.authority))
            return proofs[0]

        denied = False
        for item in verdict.accepted:
            if isinstance(item, Accepted) and item.rank < Rank.ANSWER:
                continue  # a referral's NS or glue: not what was asked
            judged = yield from self._gen_item(req, None, item, authority)
            if isinstance(item, Accepted):
                outcome.checked[_accepted_key(item)] = judged.security
            else:
                outcome.negative, denied = judged.security, True
            outcome.add(judged.security, judged.ede, judged.reason)
        if not denied and verdict.kind != Kind.ANSWER:
            # No data and no denial to check (no SOA): fine only where nothing is signed.
            name = verdict.name if verdict.name is not None else req.qname
            trust = yield from self._gen_enclosing(req, name, req.qtype)
            if trust.security == Security.SECURE:
                outcome.add(Security.BOGUS, EDE.NSEC_MISSING, f"unproven denial of {name}")
            else:
                outcome.negative = trust.security
                outcome.add(trust.security, trust.ede, trust.why)
        if outcome.security in _FAILED and not req.flags.DNSSEC_CD:
            return req.fail(outcome.ede if outcome.ede is not None else EDE.BOGUS, outcome.why)
        return None

    # -- bogus answers, remembered briefly ----------------------------------------------------

    def _remember_bogus(self, item: Accepted | Denial, qry: Query, verdict: Verdict) -> None:
        """Keep the verdict on the question C{item} answered (its owner, the asked type)."""
        owner = item.rrset.name if isinstance(item, Accepted) else item.name
        ttl = item.rrset.ttl if isinstance(item, Accepted) else item.soa.ttl
        key = (canonical(owner), qry.stype, qry.sclass)
        remembered = self._bogus
        remembered.pop(key, None)
        if len(remembered) >= MAX_REMEMBERED:
            del remembered[next(iter(remembered))]
        remembered[key] = _Failure(self.now() + min(ttl, BOGUS_TTL), verdict.ede, verdict.reason)

    def known_bogus(self, req: Request, qry: Query) -> State | None:
        """SERVFAIL for a question whose answer was found bogus moments ago, without asking
        again; only while the record cache still holds that bogus data (cache.clear()
        forgets it too).  CD clients get the data from the cache instead."""
        if not self._bogus or req.flags.DNSSEC_CD or req.flags.NO_CACHE:
            return None
        key = (canonical(qry.sname), qry.stype, qry.sclass)
        failure = self._bogus.get(key)
        if failure is None:
            return None
        cache = self.engine.cache
        held = (
            cache.get_rrset(qry.sname, qry.stype, qry.sclass),
            cache.get_rrset(qry.sname, _T.CNAME, qry.sclass),
            cache.get_negative(qry.sname, qry.stype, qry.sclass),
        )
        if failure.expires <= self.now() or not any(
            hit is not None and hit.security == Security.BOGUS for hit in held
        ):
            del self._bogus[key]
            return None
        outcome: Outcome = req.vars.setdefault("validate", Outcome())
        outcome.add(Security.BOGUS, failure.ede, failure.why)
        self.count("validate.bogus_cached")
        qry.outgoing = None
        return req.fail(failure.ede if failure.ede is not None else EDE.BOGUS, failure.why)

    def _gen_rrset(
        self,
        req: Request,
        zone: dns.name.Name | None,
        item: Accepted,
        authority: Callable[[], list[tuple[dns.rrset.RRset | None, dns.rrset.RRset | None]]],
    ) -> Generator[Any, Any, Verdict]:
        rrset, rrsigs = item.rrset, item.rrsigs
        now = self.now()
        if rrset.rdtype == _T.DNSKEY and rrsigs and rrset.name == rrsigs[0].signer:
            entry = yield from self._gen_entry(req, rrset.name)
            if entry.security != Security.SECURE:
                return Verdict(entry.security, entry.ede, entry.why)
            return entry.verify(rrset.name, rrset, rrsigs, now, self.skew)
        signer = _signer(rrset, rrsigs)
        trust = self._known(req, signer, now)
        if trust is None:
            trust = yield from self._gen_trust(req, signer, zone, rrset.name, rrset.rdtype)
        if trust.security != Security.SECURE:
            return Verdict(trust.security, trust.ede, trust.why)
        if signer is None:
            return Verdict(
                Security.BOGUS,
                EDE.RRSIGS_MISSING,
                f"{rrset.name} {_T.to_text(rrset.rdtype)} is unsigned in a signed zone",
            )
        assert trust.keys is not None
        verdict = dnssec.verify_rrset(rrset, rrsigs, trust.keys, signer, now, self.skew)
        if verdict.secure and verdict.wildcard is not None:
            denial = self._denial(signer, trust.keys, authority(), now)
            proof = denial.wildcard_answer(rrset.name, verdict.wildcard)
            if not proof.secure:
                return Verdict(proof.security, proof.ede, proof.reason)
            item.proofs = _proof_sets(authority(), signer)
        return verdict

    def _gen_denial(
        self, req: Request, zone: dns.name.Name | None, item: Denial
    ) -> Generator[Any, Any, Verdict]:
        now = self.now()
        sets = _signed_sets(item.proofs)
        soa_sig = next(
            (s for r, s in sets if r is None and s is not None and s.covers == _T.SOA), None
        )
        signer = soa_sig[0].signer if soa_sig else None
        trust = self._known(req, signer, now)
        if trust is None:
            trust = yield from self._gen_trust(req, signer, zone, item.name, item.rdtype)
        if trust.security != Security.SECURE:
            return Verdict(trust.security, trust.ede, trust.why)
        if signer is None:
            return Verdict(
                Security.BOGUS, EDE.RRSIGS_MISSING, f"unsigned denial of {item.name}"
            )
        assert trust.keys is not None
        soa_verdict = dnssec.verify_rrset(item.soa, soa_sig, trust.keys, signer, now, self.skew)
        if not soa_verdict.secure:
            return soa_verdict
        # Only the recursion's NSEC ranges answer aggressively: a forwarder's stay its own.
        soa = (item.soa, soa_sig) if self._scope(req).ask is None else None
        denial = self._denial(signer, trust.keys, sets, now, soa=soa)
        if item.rcode == dns.rcode.NXDOMAIN:
            return denial.nxdomain(item.name)
        if item.rdtype == _T.DS:
            proof = denial.no_ds(item.name)
            if not proof.bogus:
                return proof
        return denial.nodata(item.name, item.rdtype)

    def _denial(
        self,
        signer: dns.name.Name,
        keys: dns.rrset.RRset,
        sets: list[tuple[dns.rrset.RRset | None, dns.rrset.RRset | None]],
        now: float,
        soa: tuple[dns.rrset.RRset, dns.rrset.RRset | None] | None = None,
    ) -> dnssec.Denial:
        good = []
        for rrset, sigs in sets:
            if rrset is None or rrset.rdtype not in (_T.NSEC, _T.NSEC3):
                continue
            verdict = dnssec.verify_rrset(rrset, sigs, keys, signer, now, self.skew)
            if verdict.secure:
                good.append(rrset)
                if (
                    soa is not None
                    and self.aggressive
                    and (rrset.rdtype == _T.NSEC or rrset[0].iterations <= self.max_iterations)
                ):
                    self._remember(signer, rrset, sigs, soa, now + (verdict.ttl or 0))
        return dnssec.Denial(signer, good, self.max_iterations)

    # -- RFC 8198 ---------------------------------------------------------------------------

    def _remember(
        self,
        zone: dns.name.Name,
        nsec: dns.rrset.RRset,
        sigs: dns.rrset.RRset | None,
        soa: tuple[dns.rrset.RRset, dns.rrset.RRset | None],
        expires: float,
    ) -> None:
        if sigs is None:
            return
        key = canonical(zone).labels
        ranges = self._ranges.get(key)
        if ranges is None:
            ranges = self._ranges[key] = _ZoneRanges(zone, *soa)
        else:
            ranges.soa, ranges.soa_sig = soa  # the freshest SOA answers
        ranges.add(_Range(nsec.name, nsec, sigs, expires))

    def aggressive_answer(self, req: Request, qry: Query) -> State | None:
        """Answer C{qry} from validated NSEC/NSEC3 records when they prove it (RFC 8198 5).

        Only SECURE proofs answer: an NSEC3 opt-out span or a chain over the iteration cap
        proves nothing here, and the question goes upstream as usual.
        """
        if not self.aggressive or not self._ranges:
            return None
        name = qry.sname
        labels = canonical(name).labels
        # The closest enclosing zone with known NSEC records, unless a zone cut below it
        # is known: its parent's records say nothing about the names in it.  A DS is the
        # parent's: its search starts there.
        i = 1 if qry.stype == _T.DS and len(labels) > 1 else 0
        while True:
            key = labels[i:]
            ranges = self._ranges.get(key)
            if ranges is not None:
                break
            i += 1
            if key in self._zones or i == len(labels):
                return None
        zone = ranges.zone
        trust = self._trust.get(zone)
        now = self.now()
        if trust is None or trust.security != Security.SECURE or trust.expires <= now:
            return None
        found = ranges.candidates(name, zone, now)
        if not found:
            return None
        denial = dnssec.Denial(zone, [item.nsec for item in found], self.max_iterations)
        rcode = dns.rcode.NXDOMAIN
        if not denial.nxdomain(name).secure:
            rcode = dns.rcode.NOERROR
            if not denial.nodata(name, qry.stype).secure:
                return None
        proofs: list[dns.rrset.RRset] = []
        for item in found:
            proofs += [item.nsec, item.rrsig]
        expires = min(item.expires for item in found)
        soa = ranges.soa.copy()
        soa.ttl = max(1, min(soa.ttl, soa[0].minimum, int(expires - now)))
        if ranges.soa_sig is not None:
            proofs.insert(0, ranges.soa_sig)
        # Not stashed for the record cache, as kresd stores no synthesised answer: the
        # ranges answer again at no upstream cost, and the names such answers are for
        # (random subdomains, RFC 8198's case) seldom come twice; storing each cost more
        # than synthesising it.
        deliver_negative(req, qry, rcode, soa, proofs, from_cache=True)
        outcome: Outcome = req.vars.setdefault("validate", Outcome())
        if qry.parent is None:
            outcome.negative = Security.SECURE
        self.count("cache.aggressive")
        qry.resolved = True
        qry.outgoing = None
        return State.DONE

    # -- the answer -------------------------------------------------------------------------

    def finalize(self, req: Request) -> None:
        """Set or clear AD from the security of every part of the answer."""
        answer = req.answer
        outcome: Outcome | None = req.vars.get("validate")
        if outcome is None:
            outcome = req.vars["validate"] = Outcome()
        flags = int(answer.flags)
        opt = answer.opt  # (dnspython's ednsflags, without its call to the RRset's len)
        rcode = flags & 0xF | (opt.ttl >> 20 & 0xFF0 if opt is not None else 0)
        if req.state & _FAIL or rcode not in _POSITIVE_OR_NX:
            if flags & _AD:
                answer.flags &= ~dns.flags.AD
            if rcode == dns.rcode.SERVFAIL:
                outcome.add(
                    Security.BOGUS if outcome.security == Security.BOGUS else Security.INDETERMINATE
                )
            return
        if req.flags.STUB or (
            # Insecure already, with nothing to say why: no part of the answer can make it
            # secure, and only sub-requests (the validator's own) read a worse status.
            outcome.security == _INSECURE
            and outcome.ede is None
            and req.transport != "internal"
        ):
            if flags & _AD:  # STUB: nobody validated it
                answer.flags &= ~dns.flags.AD
            return
        # A forwarded answer's parts were all checked here; the shared cache is not its.
        cache = None if req.flags.FORWARD else self.engine.cache
        security = _SECURE
        section = answer.answer
        checked = outcome.checked
        last: dns.name.Name = req.qname
        found_type = False
        for rrset in section:
            if rrset.rdtype == _T.RRSIG:
                continue
            status = checked.get(_key(rrset))
            if status is None:
                if rrset.rdtype == _T.CNAME and any(
                    rrset.name.is_subdomain(d.name) for d in section if d.rdtype == _T.DNAME
                ):
                    status = Security.SECURE  # synthesised: as good as its DNAME
                else:
                    hit = None
                    if cache is not None:
                        hit = cache.get_rrset(rrset.name, rrset.rdtype, rrset.rdclass)
                    status = hit.security if hit is not None else Security.UNCHECKED
            security = _worse(security, status)
            if rrset.rdtype == _T.CNAME:
                last = rrset[0].target
            if rrset.rdtype == req.qtype:
                found_type = True
        if not found_type and req.qtype not in (_T.CNAME, _T.DNAME, _T.ANY):
            status = outcome.negative
            if status is None:
                neg = None
                if cache is not None:
                    neg = cache.get_negative(last, req.qtype, req.qclass)
                status = neg.security if neg is not None else Security.UNCHECKED
            security = _worse(security, status)
        outcome.add(security)
        if outcome.security == Security.INSECURE and outcome.ede is not None:
            req.ede.append((outcome.ede, outcome.why))
        want = req.flags.DNSSEC_WANT or bool(req.query_flags & _AD)
        if security == _SECURE and outcome.security == _SECURE and want:
            answer.flags = _flag(flags | _AD)  # (the enum's | makes a new member)
            self.count("validate.secure")
        elif flags & _AD:
            answer.flags &= ~dns.flags.AD


@dataclass
class _Entry:
    security: Security
    ds: list[Any] = field(default_factory=list)
    anchor_keys: list[Any] = field(default_factory=list)
    ede: int | None = None
    why: str = ""
    expires: float = 0.0

    def verify(
        self,
        zone: dns.name.Name,
        dnskeys: dns.rrset.RRset,
        rrsigs: dns.rrset.RRset | None,
        now: float,
        skew: int,
    ) -> Verdict:
        """Check C{zone}'s DNSKEY set against what vouches for it (DS or anchor keys)."""
        return dnssec.verify_dnskeys(
            zone, dnskeys, rrsigs, now, ds=self.ds, anchor_keys=self.anchor_keys, skew=skew
        )


def _key(rrset: dns.rrset.RRset) -> tuple[tuple[bytes, ...], int]:
    """The key of C{rrset} in L{Outcome.checked}."""
    return canonical(rrset.name).labels, rrset.rdtype


def _accepted_key(item: Accepted) -> tuple[tuple[bytes, ...], int]:
    """L{_key} of an accepted RRset, lowercase already (L{iterate.classify} normalises)."""
    rrset = item.rrset
    return rrset.name.labels, rrset.rdtype


def _worse(a: Security, b: Security) -> Security:
    return a if _RANK[a] >= _RANK[b] else b


def _failure_ttl(security: Security) -> int:
    return BOGUS_TTL if security == Security.BOGUS else UNREACHABLE_TTL


def _unanswered(sub: Request) -> bool:
    """Whether the DS or DNSKEY lookup C{sub} got no answer (as opposed to a bad one):
    SERVFAIL not of the validator's making, or stale data served because no server
    answered."""
    outcome: Outcome | None = sub.vars.get("validate")
    if outcome is not None and outcome.security == Security.BOGUS:
        return False
    if sub.answer.rcode() == dns.rcode.SERVFAIL:
        return True
    return any(code == _EDE_STALE for code, _ in sub.ede)


def _why_failed(sub: Request, what: str) -> tuple[Security, int, str]:
    """INDETERMINATE, with the EDE that says why C{sub} got no answer: 22 No Reachable
    Authority or 23 Network Error as the lookup found, else 5 DNSSEC Indeterminate."""
    outcome: Outcome | None = sub.vars.get("validate")
    if outcome is not None and outcome.security == Security.INDETERMINATE and outcome.ede:
        return Security.INDETERMINATE, outcome.ede, outcome.why
    for code, text in sub.ede:
        if code in _UNANSWERED:
            return Security.INDETERMINATE, code, f"{what}: {text}"
        if code == _EDE_STALE:
            return Security.INDETERMINATE, EDE_NO_REACHABLE_AUTHORITY, f"{what}: no answer"
    return Security.INDETERMINATE, EDE.INDETERMINATE, f"no answer for {what}"


def _find(
    rrsets: list[dns.rrset.RRset], name: dns.name.Name, rdtype: int, covers: int = 0
) -> dns.rrset.RRset | None:
    for rrset in rrsets:
        if rrset.rdtype == rdtype and rrset.covers == covers and rrset.name == name:
            return rrset
    return None


def _signer(rrset: dns.rrset.RRset, rrsigs: dns.rrset.RRset | None) -> dns.name.Name | None:
    """The signer of C{rrsigs} if it may sign C{rrset} (an ancestor of its owner)."""
    if not rrsigs:
        return None
    signer = rrsigs[0].signer
    return signer if dnssec.within(rrset.name, signer) else None


def _signed_sets(
    rrsets: list[dns.rrset.RRset],
) -> list[tuple[dns.rrset.RRset | None, dns.rrset.RRset | None]]:
    """Pair each RRset with its RRSIGs; RRSIGs without their data come as (None, sigs)."""
    data = [r for r in rrsets if r.rdtype != _T.RRSIG]
    sigs = {(r.name, r.covers): r for r in rrsets if r.rdtype == _T.RRSIG}
    pairs: list[tuple[dns.rrset.RRset | None, dns.rrset.RRset | None]] = [
        (r, sigs.pop((r.name, r.rdtype), None)) for r in data
    ]
    pairs += [(None, s) for s in sigs.values()]
    return pairs


def _proof_sets(
    pairs: list[tuple[dns.rrset.RRset | None, dns.rrset.RRset | None]], signer: dns.name.Name
) -> list[dns.rrset.RRset]:
    """The signed NSEC/NSEC3 RRsets (each followed by its RRSIGs) that C{signer}'s zone
    gave beside a wildcard expansion: what a validator behind us needs to check it."""
    out: list[dns.rrset.RRset] = []
    for rrset, sigs in pairs:
        if (
            rrset is not None
            and sigs is not None
            and rrset.rdtype in (_T.NSEC, _T.NSEC3)
            and any(sig.signer == signer for sig in sigs)
        ):
            out += (rrset, sigs)
    return out


def validator_of(engine: Any) -> tuple[Any, Validator]:
    """The engine's trust_anchors module and validator, loading validate if it is not:
    for modules that act on trust anchors (ta_update, ta_signal_query)."""
    if "validate" not in engine.modules:
        engine.modules.load("validate")
    return engine.modules["trust_anchors"], engine.modules["validate"].validator


class ValidateModule(Module):
    """The ``validate`` module: DNSSEC validation of everything resolved (on by default).

    Loads ``trust_anchors`` if it is not loaded yet, since a validator without anchors
    would call everything insecure.
    """

    name = "validate"
    description = "DNSSEC validation: chain of trust, AD bit, bogus -> SERVFAIL, RFC 8198"

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        if "trust_anchors" not in engine.modules:
            engine.modules.load("trust_anchors")
        self.anchors = engine.modules["trust_anchors"]
        self.validator = Validator(engine, self.anchors)
        # The validator's own methods are the hooks: a method here that only passed the
        # call on would be one call more per upstream answer and per request.
        self.consume = self.validator.consume
        self.answer_finalize = self.validator.finalize

    def produce(self, req: Request, qry: Query) -> State | None:
        if req.state & FINAL or qry.resolved:
            return None
        validator = self.validator
        if qry.parent is None and validator._bogus:
            state = validator.known_bogus(req, qry)
            if state is not None:
                return state
        if validator.aggressive and validator._ranges:
            return validator.aggressive_answer(req, qry)
        return None

    def unload(self) -> None:
        listeners = self.anchors.listeners
        if self.validator.forget in listeners:
            listeners.remove(self.validator.forget)


__all__ = [
    "BOGUS_TTL",
    "MAX_DEPTH",
    "Outcome",
    "TrustScope",
    "ValidateModule",
    "Validator",
    "ZoneTrust",
    "validator_of",
]
