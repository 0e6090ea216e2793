"""DNS64 (RFC 6147): AAAA records synthesised from A records, for IPv6-only clients.

``modules = {'dns64': '64:ff9b::'}`` (a /96 prefix; the well-known one by default), or
``modules = {'dns64': {'prefix': '2001:db8:64::/96', 'exclude': ['::ffff:0:0/96'],
'rev_ttl': 300}}``; ``dns64.config(...)`` changes it later.

- An AAAA question whose answer has no AAAA records (NODATA, or only addresses in the
  excluded ranges: IPv4-mapped ``::ffff:0:0/96`` by default, RFC 6147 5.1.4) is asked
  again for A, and each A address is put into the prefix.  The TTL is the smaller of the
  A record's and the negative AAAA answer's SOA minimum (RFC 6147 5.1.7).  A CNAME chain
  in the answer is kept and the synthesis is for its last target.
- DNSSEC, as the seed warns: the A data may validate, the synthetic AAAA cannot, so a
  synthesised answer never has AD; a client that set DO and CD validates itself and
  gets the real (empty) answer, no synthesis (RFC 6147 5.5).
- PTR questions for names in the prefix's ip6.arpa zone are answered with a CNAME to
  the matching in-addr.arpa name, and resolution continues there (RFC 6147 5.3.1).
"""

from __future__ import annotations

import ipaddress
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset
from twisted.internet.defer import Deferred

from kresolver.logging import KLogger as Logger
from kresolver.module import Module
from kresolver.resolve.request import FINAL, Request, State

log = Logger()

__all__ = ["DNS64"]

WELL_KNOWN = "64:ff9b::/96"
_A, _AAAA, _CNAME, _SOA, _PTR = (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.CNAME,
                                 dns.rdatatype.SOA, dns.rdatatype.PTR)


class DNS64(Module):
    """The dns64 module: PTR in begin, AAAA synthesis in answer_finalize."""

    name = "dns64"
    description = "DNS64 (RFC 6147): AAAA synthesis from A records, PTR for the prefix"

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.api = self
        self.rev_ttl = 300
        self.exclude: list[Any] = []
        self._set_prefix(WELL_KNOWN)
        self.exclude = [ipaddress.ip_network("::ffff:0:0/96")]

    # -- config -------------------------------------------------------------------------

    def _set_prefix(self, text: str) -> None:
        if "/" not in text:
            text += "/96"
        net = ipaddress.ip_network(text, strict=False)
        if net.version != 6 or net.prefixlen != 96:
            raise ValueError(f"dns64: the prefix must be an IPv6 /96, not {text!r}")
        self.prefix = net
        # the reverse zone of the prefix: the 24 nibbles of its network part
        rev = dns.reversename.from_address(str(net.network_address))
        self.rev_zone = dns.name.Name(rev.labels[8:])

    def configure(self, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, str):
            self._set_prefix(value)
        elif isinstance(value, dict):
            unknown = set(value) - {"prefix", "exclude", "exclude_subnets", "rev_ttl"}
            if unknown:
                raise ValueError(f"dns64: unknown settings {sorted(unknown)}")
            if "prefix" in value:
                self._set_prefix(value["prefix"])
            nets = value.get("exclude", value.get("exclude_subnets"))
            if nets is not None:
                self.exclude = [ipaddress.ip_network(n, strict=False) for n in nets]
            self.rev_ttl = int(value.get("rev_ttl", self.rev_ttl))
        else:
            raise ValueError(f"dns64 takes a prefix or a dict of settings, not {value!r}")
        self.engine.changed()

    def config(self, value: Any) -> None:
        self.configure(value)

    # -- PTR ------------------------------------------------------------------------------

    def begin(self, req: Request) -> State | None:
        if req.state & FINAL or req.qtype != _PTR or not req.qname.is_subdomain(self.rev_zone):
            return None
        labels = req.qname.labels
        if len(labels) != 35:  # 32 nibbles + ip6 + arpa + root: only whole addresses
            return None
        try:
            addr = dns.reversename.to_address(req.qname)
            v4 = ipaddress.IPv4Address(int(ipaddress.IPv6Address(addr)) & 0xFFFFFFFF)
        except (dns.exception.SyntaxError, ValueError):
            return None
        target = dns.reversename.from_address(str(v4))
        req.answer.answer.append(
            dns.rrset.from_text(req.qname, self.rev_ttl, "IN", "CNAME", target.to_text()))
        req.vars["dns64.qname"] = req.qname
        req.qname = target
        return None

    # -- AAAA -----------------------------------------------------------------------------

    def answer_finalize(self, req: Request) -> State | Deferred[State] | None:
        if req.qtype != _AAAA or req.answer.rcode() != dns.rcode.NOERROR:
            return None
        if req.flags.DNSSEC_WANT and req.flags.DNSSEC_CD:
            return None
        if req.vars.get("dns64.internal"):
            return None
        answer = req.answer
        owner = req.qname
        for rrset in answer.answer:  # follow the chain to the name that has no AAAA
            if rrset.rdtype == _CNAME and rrset.name == owner:
                owner = rrset[0].target
        real = [r for rrset in answer.answer if rrset.rdtype == _AAAA and rrset.name == owner
                for r in rrset]
        if any(not self._excluded(r.address) for r in real):
            return None
        soa_min = min((min(r.ttl, r[0].minimum) for r in answer.authority if r.rdtype == _SOA),
                      default=600)
        sub = self._sub_request(req, owner)
        state = self.engine.resolver.resolve(sub)
        if isinstance(state, Deferred):
            return state.addCallback(lambda _: self._synthesise(req, sub, owner, soa_min))
        return self._synthesise(req, sub, owner, soa_min)

    def _excluded(self, address: str) -> bool:
        addr = ipaddress.ip_address(address)
        return any(addr in net for net in self.exclude)

    def _sub_request(self, req: Request, owner: dns.name.Name) -> Request:
        query = dns.message.make_query(owner, _A, use_edns=0)
        sub = Request(self.engine, query.to_wire(), query, None, None, "internal",
                      self.engine.reactor.seconds())
        sub.flags.NO_ANSWER = False
        sub.vars["dns64.internal"] = True
        return sub

    def _synthesise(self, req: Request, sub: Request, owner: dns.name.Name,
                    soa_min: int) -> State | None:
        if sub.answer.rcode() != dns.rcode.NOERROR:
            return None
        a_sets = [r for r in sub.answer.answer if r.rdtype == _A]
        if not a_sets:
            return None
        base = int(self.prefix.network_address)
        answer = req.answer
        answer.answer = [r for r in answer.answer if r.rdtype != _AAAA
                         and not (r.rdtype == dns.rdatatype.RRSIG and r.covers == _AAAA)]
        for a in a_sets:
            if a.name != owner and not any(
                    c.rdtype == _CNAME and c[0].target == a.name for c in answer.answer):
                # the A query went through a CNAME of its own: keep that link too
                answer.answer.extend(c for c in sub.answer.answer if c.rdtype == _CNAME)
            rdatas = [
                dns.rdata.from_text(dns.rdataclass.IN, _AAAA,
                                    str(ipaddress.IPv6Address(base | int(
                                        ipaddress.IPv4Address(r.address)))))
                for r in a
            ]
            answer.answer.append(dns.rrset.from_rdata_list(a.name, min(a.ttl, soa_min),
                                                           rdatas))
        answer.authority.clear()
        answer.flags &= ~dns.flags.AD
        req.cacheable = req.cacheable and sub.cacheable
        return None
