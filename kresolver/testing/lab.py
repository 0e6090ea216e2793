"""Fake authoritative DNS servers on loopback addresses, served in-process by Twisted.

Recursion and DNSSEC can only be tested against a DNS hierarchy, and ours has no internet:
so the lab serves one from zone text.  Each L{AuthoritativeServer} answers from its
dnspython zones as a real authoritative server does (RFC 1034 4.3.2, wildcards of RFC 4592,
DNAME of RFC 6672, EDNS0, TC, DNSSEC records for DO queries), and carries fault knobs
(dead, lame, always truncating, EDNS-rejecting, case-folding, slow) so the resolver's
error paths can be driven on purpose.  A L{Lab} puts one server per loopback address,
because delegations carry no port: every server needs the same port on its own address.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dns.dnssec
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
import dns.zone
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.protocols.basic import Int16StringReceiver
from twisted.python import log

#: The EDNS payload the lab's servers advertise and the most they send over UDP.
EDNS_PAYLOAD = 1232
#: Classic DNS's UDP limit, for queries without EDNS.
CLASSIC_PAYLOAD = 512
#: How many CNAME/DNAME links inside one zone a server follows before it stops.
MAX_CHAIN = 16

_IN = dns.rdataclass.IN
_T = dns.rdatatype


def _reactor(reactor: Any) -> Any:
    if reactor is None:
        from twisted.internet import reactor as default

        return default
    return reactor


class _ZoneIndex:
    """One zone, indexed for the lookups an authoritative answer needs.

    The sorted lists use DNSSEC canonical order, in which a name's descendants directly
    follow it: that makes "is this an empty non-terminal" and "which NSEC covers this
    name" one bisection each, so a zone of 100,000 names is served as fast as a small one.
    """

    def __init__(self, zone: dns.zone.Zone) -> None:
        if zone.origin is None:
            raise ValueError("a zone without an origin cannot be served")
        self.zone = zone
        self.origin: dns.name.Name = zone.origin
        names: list[dns.name.Name] = []
        nsec: list[dns.name.Name] = []
        nsec3: list[tuple[str, dns.name.Name]] = []
        for rel in zone.nodes:
            name = rel.derelativize(self.origin)
            names.append(name)
            node = zone.nodes[rel]
            if node.get_rdataset(_IN, _T.NSEC) is not None:
                nsec.append(name)
            if node.get_rdataset(_IN, _T.NSEC3) is not None:
                nsec3.append((name.labels[0].decode("ascii").upper(), name))
        self.names = sorted(names)
        self.nsec = sorted(nsec)
        self.nsec3 = sorted(nsec3)
        apex = self.node(self.origin)
        if apex is None or apex.get_rdataset(_IN, _T.SOA) is None:
            raise ValueError(f"zone {self.origin} has no SOA at its apex")
        self.signed = apex.get_rdataset(_IN, _T.DNSKEY) is not None
        param = apex.get_rdataset(_IN, _T.NSEC3PARAM)
        self.nsec3param = param[0] if param else None
        if self.nsec3param is None and self.nsec3:
            # NSEC3 records without NSEC3PARAM: take the hash parameters from the chain.
            first = self.rdataset(self.nsec3[0][1], _T.NSEC3)
            assert first is not None
            self.nsec3param = first[0]

    # -- names -------------------------------------------------------------------------

    def node(self, name: dns.name.Name) -> Any:
        try:
            return self.zone.get_node(name)
        except KeyError:
            return None

    def rdataset(
        self, name: dns.name.Name, rdtype: int, covers: int = _T.NONE
    ) -> dns.rdataset.Rdataset | None:
        node = self.node(name)
        if node is None:
            return None
        return node.get_rdataset(_IN, rdtype, covers)

    def exists(self, name: dns.name.Name) -> bool:
        """True for names with records and for empty non-terminals (RFC 8020)."""
        i = bisect.bisect_left(self.names, name)
        return i < len(self.names) and self.names[i].is_subdomain(name)

    def closest_encloser(self, name: dns.name.Name) -> dns.name.Name:
        while not self.exists(name) and name != self.origin:
            name = name.parent()
        return name

    def target(self, name: dns.name.Name) -> dns.name.Name:
        """Absolute form of a name taken from rdata (zones may be relativized)."""
        return name.derelativize(self.origin)

    def soa_negative(self, do: bool) -> list[dns.rrset.RRset]:
        """The SOA for negative answers, TTL min(SOA TTL, SOA minimum) (RFC 2308 3)."""
        soa = self.rdataset(self.origin, _T.SOA)
        assert soa is not None
        ttl = min(soa.ttl, soa[0].minimum)
        out = [_rrset(self.origin, soa, ttl)]
        sig = self.rdataset(self.origin, _T.RRSIG, _T.SOA)
        if do and sig is not None:
            out.append(_rrset(self.origin, sig, ttl))
        return out

    # -- denial of existence -----------------------------------------------------------

    def nsec_matching(self, name: dns.name.Name) -> list[dns.rrset.RRset]:
        return self._with_sigs(name, _T.NSEC) if self.rdataset(name, _T.NSEC) else []

    def nsec_covering(self, name: dns.name.Name) -> list[dns.rrset.RRset]:
        """The NSEC whose owner precedes C{name} in the chain (wrapping to the last one)."""
        if not self.nsec:
            return []
        i = bisect.bisect_right(self.nsec, name) - 1
        return self._with_sigs(self.nsec[i], _T.NSEC)

    def nsec3_hash(self, name: dns.name.Name) -> str:
        p = self.nsec3param
        return dns.dnssec.nsec3_hash(name, p.salt, p.iterations, p.algorithm).upper()

    def nsec3_matching(self, name: dns.name.Name) -> list[dns.rrset.RRset]:
        h = self.nsec3_hash(name)
        i = bisect.bisect_left(self.nsec3, (h,))
        if i < len(self.nsec3) and self.nsec3[i][0] == h:
            return self._with_sigs(self.nsec3[i][1], _T.NSEC3)
        return []

    def nsec3_covering(self, name: dns.name.Name) -> list[dns.rrset.RRset]:
        h = self.nsec3_hash(name)
        i = bisect.bisect_left(self.nsec3, (h,)) - 1
        return self._with_sigs(self.nsec3[i][1], _T.NSEC3)

    def closest_encloser_proof(self, name: dns.name.Name) -> list[dns.rrset.RRset]:
        """RFC 5155 7.2.1: the closest provable encloser matched, the next closer covered."""
        ce = name
        nxt = name
        while ce != self.origin:
            matching = self.nsec3_matching(ce)
            if matching and ce != name:
                return matching + self.nsec3_covering(nxt)
            nxt = ce
            ce = ce.parent()
        return self.nsec3_matching(ce) + (self.nsec3_covering(nxt) if nxt != ce else [])

    def _with_sigs(self, name: dns.name.Name, rdtype: int) -> list[dns.rrset.RRset]:
        rds = self.rdataset(name, rdtype)
        assert rds is not None
        out = [_rrset(name, rds)]
        sig = self.rdataset(name, _T.RRSIG, rdtype)
        if sig is not None:
            out.append(_rrset(name, sig))
        return out


def _rrset(
    name: dns.name.Name, rds: dns.rdataset.Rdataset, ttl: int | None = None
) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(name, rds.rdclass, rds.rdtype, rds.covers)
    rrset.update(rds)
    if ttl is not None:
        rrset.ttl = ttl
    return rrset


@dataclass
class _Result:
    """The sections of one authoritative answer, before they become a message."""

    zone: _ZoneIndex | None
    rcode: int = dns.rcode.NOERROR
    aa: bool = True
    answer: list[dns.rrset.RRset] = field(default_factory=list)
    authority: list[dns.rrset.RRset] = field(default_factory=list)
    additional: list[dns.rrset.RRset] = field(default_factory=list)

    def add(self, section: list[dns.rrset.RRset], rrsets: Iterable[dns.rrset.RRset]) -> None:
        for rrset in rrsets:
            if not any(
                r.name == rrset.name and r.rdtype == rrset.rdtype and r.covers == rrset.covers
                for r in section
            ):
                section.append(rrset)


class _Engine:
    """The authoritative lookup (RFC 1034 4.3.2) over a set of zones."""

    def __init__(self, zones: Iterable[dns.zone.Zone]) -> None:
        self.zones = [_ZoneIndex(z) for z in zones]

    def find_zone(self, qname: dns.name.Name, qtype: int) -> _ZoneIndex | None:
        candidates = sorted(
            (z for z in self.zones if qname.is_subdomain(z.origin)),
            key=lambda z: len(z.origin),
            reverse=True,
        )
        if not candidates:
            return None
        # DS lives in the parent (RFC 4035 3.1.4.1): prefer it when we serve both sides.
        if qtype == _T.DS and candidates[0].origin == qname and len(candidates) > 1:
            return candidates[1]
        return candidates[0]

    def lookup(self, qname: dns.name.Name, qtype: int, do: bool) -> _Result:
        zone = self.find_zone(qname, qtype)
        result = _Result(zone)
        if zone is None:
            result.rcode = dns.rcode.REFUSED
            result.aa = False
            return result
        do = do and zone.signed
        name: dns.name.Name | None = qname
        seen: set[dns.name.Name] = set()
        while name is not None and len(seen) < MAX_CHAIN:
            seen.add(name)
            name = self._step(zone, name, qtype, do, result)
            if name is not None and (not name.is_subdomain(zone.origin) or name in seen):
                break
        return result

    def _step(
        self, z: _ZoneIndex, name: dns.name.Name, qtype: int, do: bool, r: _Result
    ) -> dns.name.Name | None:
        """Answer C{name} into C{r}; return the name to continue with, if any."""
        # Walk down from the apex: a zone cut or a DNAME above the name wins over the name.
        # The apex may hold a DNAME (it redirects the names below) but is never a cut.
        depth = len(z.origin) - 1
        while depth < len(name):
            depth += 1
            _, here = name.split(depth)
            if here != z.origin and z.rdataset(here, _T.NS) is not None:
                if not (here == name and qtype == _T.DS):
                    self._referral(z, here, do, r)
                    return None
            if here != name:
                dname = z.rdataset(here, _T.DNAME)
                if dname is not None:
                    return self._dname(z, name, here, dname, do, r)
        node = z.node(name)
        if node is not None:
            return self._from_node(z, name, name, node, qtype, do, r, wildcard=False)
        if z.exists(name):  # empty non-terminal
            self._nodata(z, name, do, r)
            return None
        ce = z.closest_encloser(name)
        wild = dns.name.Name((b"*", *ce.labels))
        wnode = z.node(wild)
        if wnode is not None:
            return self._from_node(z, name, wild, wnode, qtype, do, r, wildcard=True)
        r.rcode = dns.rcode.NXDOMAIN
        self._no_name(z, name, wild, do, r, wildcard_exists=False)
        return None

    def _from_node(
        self,
        z: _ZoneIndex,
        name: dns.name.Name,
        owner: dns.name.Name,
        node: Any,
        qtype: int,
        do: bool,
        r: _Result,
        wildcard: bool,
    ) -> dns.name.Name | None:
        """Answer from the node at C{owner} (C{name} itself, or the wildcard expanding it)."""

        def answer(rds: dns.rdataset.Rdataset) -> None:
            r.add(r.answer, [_rrset(name, rds)])
            sig = node.get_rdataset(_IN, _T.RRSIG, rds.rdtype)
            if do and sig is not None:
                r.add(r.answer, [_rrset(name, sig)])

        def wildcard_proof() -> None:
            # The expansion is only valid if the name itself does not exist (RFC 4035 3.1.3.3).
            if do and wildcard:
                ce = owner.parent()
                if z.nsec3param is not None:
                    r.add(r.authority, z.nsec3_covering(_next_closer(name, ce)))
                else:
                    r.add(r.authority, z.nsec_covering(name))

        if qtype == _T.ANY:
            for rds in node.rdatasets:
                if rds.rdtype != _T.RRSIG:
                    answer(rds)
            wildcard_proof()
            return None
        rds = node.get_rdataset(_IN, qtype)
        if rds is not None:
            answer(rds)
            wildcard_proof()
            return None
        cname = node.get_rdataset(_IN, _T.CNAME)
        if cname is not None:
            answer(cname)
            wildcard_proof()
            return z.target(cname[0].target)
        if wildcard:
            self._no_name(z, name, owner, do, r, wildcard_exists=True)
        else:
            self._nodata(z, name, do, r)
        return None

    def _nodata(self, z: _ZoneIndex, name: dns.name.Name, do: bool, r: _Result) -> None:
        r.add(r.authority, z.soa_negative(do))
        if not do:
            return
        if z.nsec3param is not None:
            # Opt-out delegations have no NSEC3 of their own: prove the closest encloser.
            r.add(r.authority, z.nsec3_matching(name) or z.closest_encloser_proof(name))
        else:
            r.add(r.authority, z.nsec_matching(name) or z.nsec_covering(name))

    def _no_name(
        self,
        z: _ZoneIndex,
        name: dns.name.Name,
        wild: dns.name.Name,
        do: bool,
        r: _Result,
        wildcard_exists: bool,
    ) -> None:
        """SOA, and proof that C{name} does not exist and that the wildcard at its closest
        encloser does not either (NXDOMAIN) or lacks the type (wildcard NODATA)."""
        r.add(r.authority, z.soa_negative(do))
        if not do:
            return
        ce = wild.parent()
        if z.nsec3param is not None:
            r.add(r.authority, z.nsec3_matching(ce))
            r.add(r.authority, z.nsec3_covering(_next_closer(name, ce)))
            wildcard_proof = z.nsec3_matching if wildcard_exists else z.nsec3_covering
        else:
            r.add(r.authority, z.nsec_covering(name))
            wildcard_proof = z.nsec_matching if wildcard_exists else z.nsec_covering
        r.add(r.authority, wildcard_proof(wild))

    def _referral(self, z: _ZoneIndex, cut: dns.name.Name, do: bool, r: _Result) -> None:
        ns = z.rdataset(cut, _T.NS)
        assert ns is not None
        r.aa = bool(r.answer)  # a CNAME we own may lead into the delegation
        r.add(r.authority, [_rrset(cut, ns)])
        if do:
            ds = z.rdataset(cut, _T.DS)
            if ds is not None:
                r.add(r.authority, z._with_sigs(cut, _T.DS))
            elif z.nsec3param is not None:
                r.add(r.authority, z.nsec3_matching(cut) or z.closest_encloser_proof(cut))
            else:
                r.add(r.authority, z.nsec_matching(cut))
        for rdata in ns:
            target = z.target(rdata.target)
            if not target.is_subdomain(z.origin):
                continue  # out of bailiwick: the resolver must look it up (glueless)
            for rdtype in (_T.A, _T.AAAA):
                glue = z.rdataset(target, rdtype)
                if glue is not None:
                    r.add(r.additional, [_rrset(target, glue)])

    def _dname(
        self,
        z: _ZoneIndex,
        name: dns.name.Name,
        owner: dns.name.Name,
        dname: dns.rdataset.Rdataset,
        do: bool,
        r: _Result,
    ) -> dns.name.Name | None:
        r.add(r.answer, [_rrset(owner, dname)])
        sig = z.rdataset(owner, _T.RRSIG, _T.DNAME)
        if do and sig is not None:
            r.add(r.answer, [_rrset(owner, sig)])
        try:
            new = name.relativize(owner).derelativize(z.target(dname[0].target))
        except dns.name.NameTooLong:
            r.rcode = dns.rcode.YXDOMAIN  # RFC 6672 2.2
            return None
        # The synthesized CNAME is never signed; validators check it against the DNAME.
        cname = dns.rrset.from_text(name, dname.ttl, _IN, _T.CNAME, new.to_text())
        r.add(r.answer, [cname])
        return new


def _next_closer(name: dns.name.Name, ce: dns.name.Name) -> dns.name.Name:
    """The ancestor of C{name} one label below its closest encloser C{ce} (RFC 5155)."""
    return name.split(len(ce) + 1)[1]


class AuthoritativeServer:
    """An authoritative server for some zones on one address, over UDP and TCP.

    Fault knobs are plain attributes, so a test can turn a healthy server lame or dead
    between two queries:

      - C{drop}: never answer (a dead server);
      - C{refuse}: answer REFUSED to everything (a lame server);
      - C{always_tc}: UDP answers carry TC and no records;
      - C{reject_edns}: FORMERR to any query with an OPT record;
      - C{no_case_preserve}: the question comes back lowercased (0x20 tests);
      - C{delay}: seconds to wait before answering.

    C{queries} lists what arrived, as (qname text as asked, qtype, 'udp' or 'tcp'), so
    tests can check what a resolver asked, or that it asked nothing.  After changing the
    zones' contents in place, call L{reload}.
    """

    def __init__(
        self,
        zones: list[dns.zone.Zone],
        address: str,
        port: int = 53,
        reactor: Any = None,
    ) -> None:
        self.address = address
        self.port = port
        self.reactor = _reactor(reactor)
        self.zones = list(zones)
        self._engine = _Engine(self.zones)
        self.drop = False
        self.refuse = False
        self.always_tc = False
        self.reject_edns = False
        self.no_case_preserve = False
        self.delay: float = 0.0
        self.queries: list[tuple[str, int, str]] = []
        self._ports: list[IListeningPort] = []
        self._pending: set[IDelayedCall] = set()
        self._connections: set[_TCPServerProtocol] = set()

    def __repr__(self) -> str:
        origins = ", ".join(z.origin.to_text() for z in self.zones if z.origin is not None)
        return f"<AuthoritativeServer {self.address}:{self.port} [{origins}]>"

    def reload(self, zones: list[dns.zone.Zone] | None = None) -> None:
        """Re-index the zones (after an in-place edit), or serve new ones."""
        if zones is not None:
            self.zones = list(zones)
        self._engine = _Engine(self.zones)

    def clear_queries(self) -> None:
        self.queries.clear()

    def start(self) -> None:
        """Bind UDP and TCP now, so a busy or missing address fails here, loudly."""
        if self._ports:
            raise RuntimeError(f"{self!r} is already started")
        udp = self.reactor.listenUDP(self.port, _UDPServerProtocol(self), interface=self.address)
        try:
            factory = _TCPServerFactory(self)
            tcp = self.reactor.listenTCP(self.port, factory, interface=self.address)
        except Exception:
            udp.stopListening()
            raise
        self._ports = [udp, tcp]

    def stop(self) -> defer.Deferred[None]:
        """Unbind, drop answers still waiting out a delay, and close TCP connections."""
        for call in list(self._pending):
            if call.active():
                call.cancel()
        self._pending.clear()
        waits = [defer.maybeDeferred(p.stopListening) for p in self._ports]
        self._ports = []
        for conn in list(self._connections):
            waits.append(conn.closed)
            conn.transport.abortConnection()
        return defer.gatherResults(waits, consumeErrors=True).addCallback(lambda _: None)

    # -- the query path ----------------------------------------------------------------

    def handle(self, wire: bytes, transport: str, send: Callable[[bytes], None]) -> None:
        """Answer one query that arrived over C{transport} by calling C{send}."""
        try:
            reply = self._respond(wire, transport)
        except Exception:
            log.err(None, f"lab server {self.address} failed on a query")
            return
        if reply is None:
            return
        if self.delay > 0:
            call: IDelayedCall | None = None

            def later() -> None:
                self._pending.discard(call)  # type: ignore[arg-type]
                send(reply)

            call = self.reactor.callLater(self.delay, later)
            self._pending.add(call)
        else:
            send(reply)

    def _respond(self, wire: bytes, transport: str) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return _formerr(wire)
        if query.flags & dns.flags.QR:
            return None  # never answer an answer
        if len(query.question) == 1:
            q = query.question[0]
            self.queries.append((q.name.to_text(), q.rdtype, transport))
        if self.drop:
            return None
        if self.reject_edns and query.edns >= 0:
            reply = dns.message.make_response(query)
            reply.use_edns(False)
            reply.set_rcode(dns.rcode.FORMERR)
            return reply.to_wire()
        reply = dns.message.make_response(query, our_payload=EDNS_PAYLOAD)
        reply.flags &= ~dns.flags.RA
        do = query.edns >= 0 and bool(query.ednsflags & dns.flags.DO)
        if do:
            reply.ednsflags |= dns.flags.DO
        if self.no_case_preserve:
            for rrset in reply.question:
                rrset.name = dns.name.from_text(rrset.name.to_text().lower())
        if query.edns > 0:
            reply.use_edns(0, dns.flags.DO if do else 0, EDNS_PAYLOAD)
            reply.set_rcode(dns.rcode.BADVERS)
            return reply.to_wire()
        if query.opcode() != dns.opcode.QUERY:
            reply.set_rcode(dns.rcode.NOTIMP)
            return reply.to_wire()
        if len(query.question) != 1:
            reply.set_rcode(dns.rcode.FORMERR)
            return reply.to_wire()
        if self.refuse or query.question[0].rdclass != _IN:
            reply.set_rcode(dns.rcode.REFUSED)
            return reply.to_wire()
        limit = 65535
        if transport == "udp":
            limit = CLASSIC_PAYLOAD
            if query.edns >= 0:
                limit = min(max(query.payload, CLASSIC_PAYLOAD), EDNS_PAYLOAD)
            if self.always_tc:
                reply.flags |= dns.flags.TC
                return reply.to_wire()
        q = query.question[0]
        qname = reply.question[0].name  # as asked, or lowercased by no_case_preserve
        result = self._engine.lookup(qname, q.rdtype, do)
        reply.set_rcode(result.rcode)
        if result.aa:
            reply.flags |= dns.flags.AA
        reply.answer = result.answer
        reply.authority = result.authority
        reply.additional = result.additional
        # One answer's records all come from one zone, which may be relativized.
        origin = result.zone.origin if result.zone is not None else None
        try:
            return reply.to_wire(origin=origin, max_size=limit)
        except dns.exception.TooBig:
            reply.answer, reply.authority, reply.additional = [], [], []
            reply.flags |= dns.flags.TC
            return reply.to_wire()


def _formerr(wire: bytes) -> bytes | None:
    """FORMERR when at least the header is readable and it is a query, else silence."""
    if len(wire) < 12:
        return None
    (qid, flags) = struct.unpack("!HH", wire[:4])
    if flags & dns.flags.QR:
        return None
    flags = dns.flags.QR | (flags & (dns.flags.RD | 0x7800)) | dns.rcode.FORMERR
    return struct.pack("!HHHHHH", qid, flags, 0, 0, 0, 0)


class _UDPServerProtocol(protocol.DatagramProtocol):
    def __init__(self, server: AuthoritativeServer) -> None:
        self.server = server

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        def send(reply: bytes) -> None:
            if self.transport is not None:
                self.transport.write(reply, addr)

        self.server.handle(data, "udp", send)


class _TCPServerProtocol(Int16StringReceiver):
    factory: _TCPServerFactory

    def connectionMade(self) -> None:
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.factory.server._connections.add(self)

    def stringReceived(self, data: bytes) -> None:
        def send(reply: bytes) -> None:
            if self.transport is not None and self.transport.connected:
                self.sendString(reply)

        self.factory.server.handle(data, "tcp", send)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.server._connections.discard(self)
        self.closed.callback(None)


class _TCPServerFactory(protocol.ServerFactory):
    protocol = _TCPServerProtocol
    noisy = False

    def __init__(self, server: AuthoritativeServer) -> None:
        self.server = server


# -- the lab: many servers ---------------------------------------------------------------


def zones_from_text(zones_text: Mapping[str, str]) -> list[dns.zone.Zone]:
    """Parse {origin: zone text} into zones, naming the zone in any parse error."""
    zones = []
    for origin, text in zones_text.items():
        try:
            zones.append(dns.zone.from_text(text, origin=origin, relativize=False))
        except Exception as e:
            raise ValueError(f"zone {origin}: {e}") from e
    return zones


class Lab:
    """A DNS hierarchy of L{AuthoritativeServer}s, one per loopback address.

    Addresses are C{base + N}: given explicitly, or the lowest N from 1 not yet taken.
    L{reserve} keeps an address free for a server that must never answer: a delegation
    to it gives a zone whose only server is dead.
    """

    def __init__(self, reactor: Any = None, port: int = 53, base: str = "127.0.10.") -> None:
        if not base.endswith("."):
            raise ValueError(f"base must end with a dot, like '127.0.10.', not {base!r}")
        self.reactor = _reactor(reactor)
        self.port = port
        self.base = base
        self._servers: dict[str, AuthoritativeServer] = {}
        self._reserved: dict[str, str] = {}
        self._started = False

    @classmethod
    def standard(cls, reactor: Any = None, port: int = 53, base: str = "127.0.10.") -> Lab:
        """The hierarchy of L{kresolver.testing.zones.standard_lab}, ready to start."""
        from kresolver.testing.zones import standard_lab

        lab = cls(reactor, port, base)
        lab.load(standard_lab(base))
        return lab

    def load(self, spec: Any) -> None:
        """Add the servers of a L{kresolver.testing.zones.LabSpec}."""
        for name, address in spec.dead.items():
            self.reserve(name, address)
        for server in spec.servers.values():
            self.add_server(server.name, server.zones, address=server.address)

    def _taken(self) -> set[str]:
        return {s.address for s in self._servers.values()} | set(self._reserved.values())

    def _next_address(self) -> str:
        taken = self._taken()
        for n in range(1, 255):
            if self.base + str(n) not in taken:
                return self.base + str(n)
        raise RuntimeError(f"no free address left under {self.base}")

    def reserve(self, name: str, address: str | None = None) -> str:
        """Keep an address for C{name} on which nothing will listen; return it."""
        name = _absolute(name)
        address = address or self._next_address()
        if address in self._taken():
            raise ValueError(f"address {address} is already used in the lab")
        self._reserved[name] = address
        return address

    def add_server(
        self,
        name: str,
        zones_text: Mapping[str, str],
        address: str | None = None,
        zones: Iterable[dns.zone.Zone] = (),
    ) -> AuthoritativeServer:
        """Add a server called C{name} (its NS name) serving C{zones_text} and C{zones}."""
        name = _absolute(name)
        if name in self._servers:
            raise ValueError(f"server {name} is already in the lab")
        address = address or self._next_address()
        if address in self._taken():
            raise ValueError(f"address {address} is already used in the lab")
        server = AuthoritativeServer(
            zones_from_text(zones_text) + list(zones), address, self.port, self.reactor
        )
        self._servers[name] = server
        if self._started:
            server.start()
        return server

    def server(self, name: str) -> AuthoritativeServer:
        try:
            return self._servers[_absolute(name)]
        except KeyError:
            raise KeyError(f"no server {name} in the lab") from None

    @property
    def servers(self) -> dict[str, AuthoritativeServer]:
        return dict(self._servers)

    def root_hints(self) -> dict[str, list[str]]:
        """{NS name: [address]} of the servers serving the root zone, for ``hints.root()``."""
        return {
            name: [s.address]
            for name, s in self._servers.items()
            if any(z.origin == dns.name.root for z in s.zones)
        }

    def start(self) -> None:
        started: list[AuthoritativeServer] = []
        try:
            for server in self._servers.values():
                server.start()
                started.append(server)
        except Exception:
            for server in started:
                server.stop()
            raise
        self._started = True

    def stop(self) -> defer.Deferred[None]:
        self._started = False
        waits = [s.stop() for s in self._servers.values()]
        return defer.gatherResults(waits, consumeErrors=True).addCallback(lambda _: None)

    def clear_queries(self) -> None:
        for server in self._servers.values():
            server.clear_queries()


def _absolute(name: str) -> str:
    return dns.name.from_text(name).to_text()


# -- a small client, for tests -----------------------------------------------------------


class _UDPClient(protocol.DatagramProtocol):
    def __init__(self, wire: bytes, qid: int, address: tuple[str, int]) -> None:
        self.wire, self.qid, self.address = wire, qid, address
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def startProtocol(self) -> None:
        self.transport.write(self.wire, self.address)

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if addr[:2] == self.address and data[:2] == struct.pack("!H", self.qid):
            if not self.done.called:
                self.done.callback(data)


class _TCPClient(Int16StringReceiver):
    """Sends one query, and fires C{done} once the connection is closed again."""

    def __init__(self, wire: bytes) -> None:
        self.wire = wire
        self.reply: bytes | None = None
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        self.sendString(self.wire)

    def stringReceived(self, data: bytes) -> None:
        if self.reply is None:
            self.reply = data
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if self.reply is not None:
            self.done.callback(self.reply)
        else:
            self.done.errback(TimeoutError("no answer over TCP"))


def ask(
    query: dns.message.Message | bytes,
    address: str,
    port: int = 53,
    transport: str = "udp",
    timeout: float = 2.0,
    reactor: Any = None,
) -> defer.Deferred[bytes]:
    """Send one query and fire with the raw reply (bytes), or fail with TimeoutError.

    Raw bytes, so tests can see exactly what a server sent; parse with
    C{dns.message.from_wire}.  For tests only: no retries, no source-port games.  The
    Deferred fires only after the client's socket is closed, so trial sees a clean reactor.
    """
    reactor = _reactor(reactor)
    wire = query.to_wire() if isinstance(query, dns.message.Message) else query
    if transport == "udp":
        qid = struct.unpack("!H", wire[:2])[0] if len(wire) >= 2 else 0
        client = _UDPClient(wire, qid, (address, port))
        port_ = reactor.listenUDP(0, client, interface="127.0.0.1")
        timer = reactor.callLater(
            timeout,
            lambda: client.done.called or client.done.errback(TimeoutError("no answer")),
        )

        def close(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            closing = defer.maybeDeferred(port_.stopListening)
            return closing.addCallback(lambda _: result)

        return client.done.addBoth(close)
    if transport == "tcp":
        tcp = _TCPClient(wire)
        timer = reactor.callLater(
            timeout, lambda: tcp.transport is not None and tcp.transport.abortConnection()
        )

        def connected(p: _TCPClient) -> defer.Deferred[bytes]:
            return p.done

        def stop_timer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        creator = protocol.ClientCreator(reactor, lambda: tcp)
        d = creator.connectTCP(address, port, timeout=timeout)
        return d.addCallback(connected).addBoth(stop_timer)
    raise ValueError(f"transport must be 'udp' or 'tcp', not {transport!r}")
