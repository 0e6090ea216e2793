"""What the policy, view, RPZ, renumber and dns64 tests share: an engine with a fake resolver.

The C{answerer} module stands in for recursion: its produce layer answers every query
from a small table (A, AAAA, TXT for any name, NXDOMAIN under C{nx.}), so rules evaluated
before resolution can be seen doing their work without any network.  Engines listen on
127.0.60.x-127.0.69.x only.
"""

from __future__ import annotations

import itertools
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

from kresolver.engine import Engine
from kresolver.module import Module
from kresolver.resolve.request import Request, State
from kresolver.testing.lab import ask
from tests.support import install_dropins

NX = dns.name.from_text("nx.")
_addresses = itertools.count(10)


class Answerer(Module):
    """Answers every query in produce: A 127.0.60.200 / AAAA 2001:db8::200 / TXT / PTR
    host.example., TTL 300; NODATA for AAAA of names whose first label starts with
    ``v4``, AAAA ::ffff:192.0.2.1 for ``mapped``, NXDOMAIN under ``nx.``.

    Also records what it saw in C{seen} (name, type, flags of the request), so tests can
    tell whether a query reached resolution.
    """

    name = "answerer"
    description = "test stand-in for recursion"

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.seen: list[tuple[str, int, Any]] = []
        self.api = self
        #: extra addresses to answer with, by lowercase text name
        self.addresses: dict[str, list[str]] = {}

    def produce(self, req: Request, qry: Any) -> State:
        self.seen.append((qry.sname.to_text().lower(), qry.stype, req.flags.copy()))
        name = qry.sname
        if name.is_subdomain(NX):
            req.answer.set_rcode(dns.rcode.NXDOMAIN)
            req.answer.authority.append(dns.rrset.from_text(
                NX, 300, "IN", "SOA", "ns.nx. host.nx. 1 2 3 4 60"))
        elif qry.stype == dns.rdatatype.A:
            addrs = self.addresses.get(name.to_text().lower(), ["127.0.60.200"])
            req.answer.answer.append(dns.rrset.from_text(name, 300, "IN", "A", *addrs))
        elif qry.stype == dns.rdatatype.AAAA and name.labels[0].startswith(b"v4"):
            req.answer.authority.append(dns.rrset.from_text(  # NODATA: IPv4 only
                name.parent(), 300, "IN", "SOA", "ns.example. host.example. 1 2 3 4 60"))
        elif qry.stype == dns.rdatatype.AAAA and name.labels[0] == b"mapped":
            req.answer.answer.append(
                dns.rrset.from_text(name, 300, "IN", "AAAA", "::ffff:192.0.2.1"))
        elif qry.stype == dns.rdatatype.PTR:
            req.answer.answer.append(dns.rrset.from_text(name, 300, "IN", "PTR", "host.example."))
        elif qry.stype == dns.rdatatype.AAAA:
            addrs = self.addresses.get(name.to_text().lower(), ["2001:db8::200"])
            req.answer.answer.append(dns.rrset.from_text(name, 300, "IN", "AAAA", *addrs))
        elif qry.stype == dns.rdatatype.TXT:
            req.answer.answer.append(dns.rrset.from_text(name, 300, "IN", "TXT", '"hello"'))
        qry.resolved = True
        return State.DONE


ANSWERER_DROPIN = (
    "from kresolver.module import ModulePlugin\n"
    "from tests.policy_support import Answerer\n"
    "answerer = ModulePlugin(Answerer)\n"
)


class EngineCase(unittest.TestCase):
    """An engine with the policy module and the answerer, listening on 127.0.60.x."""

    modules: tuple[str, ...] = ("policy", "answerer")
    address = "127.0.60.1"

    def setUp(self) -> None:
        install_dropins(self, {"answerer": ANSWERER_DROPIN})
        self.engine = Engine(reactor)
        for name in self.modules:
            self.engine.modules.load(name)
        self.engine.net.listen(self.address, 0)
        self.engine.startService()
        self.port = self.engine.net.addresses[0][1]
        self.addCleanup(self.engine.stopService)

    @property
    def policy(self) -> Any:
        return self.engine.namespace["policy"]

    @property
    def answerer(self) -> Answerer:
        return self.engine.modules["answerer"]

    def config(self, text: str) -> None:
        self.engine.run_config(text)

    @defer.inlineCallbacks
    def ask(self, name: str, rdtype: str = "A", transport: str = "udp",
            want_dnssec: bool = False, use_edns: Any = 0, flags: int | None = None,
            timeout: float = 2.0, query: dns.message.Message | None = None) -> Any:
        if query is None:
            query = dns.message.make_query(name, rdtype, use_edns=use_edns,
                                           want_dnssec=want_dnssec)
            if flags is not None:
                query.flags |= flags
        wire = yield ask(query, self.address, self.port, transport, timeout)
        return dns.message.from_wire(wire)


def ede_codes(message: dns.message.Message) -> list[int]:
    return [opt.code for opt in message.options if opt.otype == dns.edns.OptionType.EDE]


def rcode(message: dns.message.Message) -> str:
    return dns.rcode.to_text(message.rcode())


def flags(message: dns.message.Message) -> set[str]:
    return set(dns.flags.to_text(message.flags).split())


class _OneShot(protocol.DatagramProtocol):
    def __init__(self, wire: bytes, to: tuple[str, int]) -> None:
        self.wire, self.to = wire, to
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def startProtocol(self) -> None:
        self.transport.write(self.wire, self.to)

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if not self.done.called:
            self.done.callback(data)


def ask_from(source: str, wire: bytes, to: tuple[str, int], timeout: float = 2.0) -> Any:
    """One UDP exchange from the address C{source}; fires with the reply bytes."""
    client = _OneShot(wire, to)
    port = reactor.listenUDP(0, client, interface=source)
    timer = reactor.callLater(
        timeout, lambda: client.done.called or client.done.errback(TimeoutError("no answer")))

    def close(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        return defer.maybeDeferred(port.stopListening).addCallback(lambda _: result)

    return client.done.addBoth(close)
