"""The built-in rules for special-use (RFC 6761) and locally-served (RFC 6303) names.

They apply when no configured rule ended the evaluation, so a PASS rule overrides them,
as in kresd.  Nothing under these names may be asked of the root: private reverse zones
and .test/.invalid/.onion get an authoritative NXDOMAIN with EDE "Not Supported",
``localhost`` resolves to the loopback addresses and its reverse names to ``localhost.``.
These answers are the same for every client and every time, so they may be kept for the
fast path (the actions are marked cacheable).
"""

from __future__ import annotations

from typing import Any

import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from kresolver.modules.kres import EXTENDED_ERROR
from kresolver.modules.policy.actions import DENY_MSG, reset_answer, soa_rrset
from kresolver.modules.policy.filters import PolicyQuery, suffix_lookup, wire_name
from kresolver.resolve.request import Request, State

_LOCALLY_SERVED = (
    "Blocking is mandated by standards, see references on "
    "https://www.iana.org/assignments/locally-served-dns-zones/locally-served-dns-zones.xhtml"
)
_SPECIAL_USE = (
    "Blocking is mandated by standards, see references on "
    "https://www.iana.org/assignments/special-use-domain-names/special-use-domain-names.xhtml"
)

_V6_LOOPBACK_REV = "1." + "0." * 31 + "ip6.arpa."
_V6_UNSPEC_REV = "0." * 32 + "ip6.arpa."

#: RFC 6303 and the IANA locally-served zones registry (kresd's ``private_zones``)
PRIVATE_ZONES = (
    ["10.in-addr.arpa."]
    + [f"{n}.172.in-addr.arpa." for n in range(16, 32)]
    + ["168.192.in-addr.arpa."]
    + [f"{n}.100.in-addr.arpa." for n in range(64, 128)]
    + [
        "0.in-addr.arpa.",
        "254.169.in-addr.arpa.",
        "2.0.192.in-addr.arpa.",
        "100.51.198.in-addr.arpa.",
        "113.0.203.in-addr.arpa.",
        "255.255.255.255.in-addr.arpa.",
        _V6_UNSPEC_REV,
        "d.f.ip6.arpa.",
        "8.e.f.ip6.arpa.",
        "9.e.f.ip6.arpa.",
        "a.e.f.ip6.arpa.",
        "b.e.f.ip6.arpa.",
        "8.b.d.0.1.0.0.2.ip6.arpa.",
        "home.arpa.",
    ]
)
SPECIAL_USE = ("test.", "onion.", "invalid.")

LOCALHOST = dns.name.from_text("localhost.")
_LOCALHOST_A = dns.rrset.from_text(LOCALHOST, 900, "IN", "A", "127.0.0.1")
_LOCALHOST_AAAA = dns.rrset.from_text(LOCALHOST, 900, "IN", "AAAA", "::1")
_REV4_ZONE = dns.name.from_text("127.in-addr.arpa.")
_REV4_EXACT = dns.name.from_text("1.0.0.127.in-addr.arpa.")
_REV6_EXACT = dns.name.from_text(_V6_LOOPBACK_REV)


class _Deny(DENY_MSG):
    cacheable = True


class _Localhost:
    """localhost. and every name below it: 127.0.0.1 and ::1 (RFC 6761 6.3)."""

    cacheable = True

    def __call__(self, state: State, req: Request) -> State:
        reset_answer(req)
        exact = req.qname == LOCALHOST
        answer = req.answer
        if req.qtype == dns.rdatatype.A:
            answer.answer.append(dns.rrset.from_rdata(req.qname, 900, *_LOCALHOST_A))
        elif req.qtype == dns.rdatatype.AAAA:
            answer.answer.append(dns.rrset.from_rdata(req.qname, 900, *_LOCALHOST_AAAA))
        elif exact and req.qtype == dns.rdatatype.SOA:
            answer.answer.append(soa_rrset(LOCALHOST))
        elif exact and req.qtype == dns.rdatatype.NS:
            answer.answer.append(dns.rrset.from_text(LOCALHOST, 900, "IN", "NS", "localhost."))
        else:
            answer.authority.append(soa_rrset(LOCALHOST))
        return State.DONE


class _LocalhostReversed:
    """127.in-addr.arpa. and ::1's reverse name: PTR localhost. for the loopback address."""

    cacheable = True

    def __call__(self, state: State, req: Request) -> State:
        qname = req.qname
        exact = qname in (_REV4_EXACT, _REV6_EXACT)
        # 127.in-addr.arpa.'s own names above 1.0.0.127 exist (empty non-terminals)
        above = qname.is_subdomain(_REV4_ZONE) and _REV4_EXACT.is_subdomain(qname)
        zone = _REV6_EXACT if qname.is_subdomain(_REV6_EXACT) else _REV4_ZONE
        reset_answer(req, dns.rcode.NOERROR if exact or above else dns.rcode.NXDOMAIN)
        if exact and req.qtype == dns.rdatatype.PTR:
            req.answer.answer.append(dns.rrset.from_text(qname, 900, "IN", "PTR", "localhost."))
        else:
            req.answer.authority.append(soa_rrset(zone))
        return State.DONE


class SpecialNames:
    """The default rules as one filter: one dict lookup on the top-level label first."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {"private": 0, "special": 0, "localhost": 0, "reverse": 0}
        self.private = frozenset(wire_name(z) for z in PRIVATE_ZONES)
        self.special = frozenset(wire_name(z) for z in SPECIAL_USE)
        self.reverse = frozenset(wire_name(z) for z in ("127.in-addr.arpa.", _V6_LOOPBACK_REV))
        self.localhost = frozenset([wire_name("localhost.")])
        self.deny_private = _Deny(_LOCALLY_SERVED, EXTENDED_ERROR.NOTSUP)
        self.deny_special = _Deny(_SPECIAL_USE, EXTENDED_ERROR.NOTSUP)
        self.local = _Localhost()
        self.reversed = _LocalhostReversed()
        self.tlds = {b"arpa", b"test", b"onion", b"invalid", b"localhost"}

    def __call__(self, state: Any, query: PolicyQuery) -> Any:
        wire = query.sname
        # The last label sits just before the final zero; find it without splitting.
        pos, last = 0, -1
        while wire[pos]:
            last = pos
            pos += wire[pos] + 1
        if last < 0 or wire[last + 1 : pos] not in self.tlds:
            return None
        if suffix_lookup(self.reverse, wire) >= 0:
            self.counts["reverse"] += 1
            return self.reversed
        if suffix_lookup(self.private, wire) >= 0:
            self.counts["private"] += 1
            return self.deny_private
        if suffix_lookup(self.special, wire) >= 0:
            self.counts["special"] += 1
            return self.deny_special
        if suffix_lookup(self.localhost, wire) >= 0:
            self.counts["localhost"] += 1
            return self.local
        return None
