"""Upstream selection and exchange against scriptable servers on 127.0.20.x (UDP and TCP)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
from twisted.internet import defer, reactor, task
from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.protocols.basic import Int16StringReceiver
from twisted.trial import unittest

from kresolver.resolve.upstream import (
    _ENTROPY,
    EDE_NETWORK_ERROR,
    EDE_NO_REACHABLE_AUTHORITY,
    EDNS_PAYLOAD,
    Upstream,
    UpstreamAnswer,
    UpstreamError,
    _Readers,
    _same_ip,
    _TCPClient,
    _UDPSocket,
    query_wire,
    question_wire,
    randomize_case,
)
from kresolver.testing.lab import AuthoritativeServer, zones_from_text

PORT = 5300
A = dns.rdatatype.A
NAME = dns.name.from_text("www.example-lab.")

# handler(server, query, tcp) -> wire messages to send back, in order (none: stay silent)
Handler = Callable[["FakeAuthority", dns.message.Message, bool], list[bytes]]


def answer(query: dns.message.Message, address: str = "192.0.2.1", **kw: Any) -> bytes:
    """A well-formed authoritative answer echoing the question exactly as asked."""
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    q = query.question[0]
    response.answer.append(dns.rrset.from_text(q.name, 300, "IN", "A", address))
    return response.to_wire(**kw)


def answers(server: FakeAuthority, query: dns.message.Message, tcp: bool) -> list[bytes]:
    return [answer(query)]


def silent(server: FakeAuthority, query: dns.message.Message, tcp: bool) -> list[bytes]:
    return []


class FakeAuthority:
    """A scriptable authoritative server on one loopback address, UDP and TCP on PORT.

    It records every query (parsed, with the source address and transport) so tests can
    look at what the resolver really put on the wire.
    """

    def __init__(self, ip: str, handler: Handler = answers, delay: float = 0.0) -> None:
        self.ip = ip
        self.handler = handler
        self.delay = delay
        self.queries: list[tuple[dns.message.Message, tuple[str, int], bool]] = []
        self.connections: list[Any] = []
        self.udp: Any = None
        self.tcp: Any = None
        self.timers: list[Any] = []

    def start(self) -> FakeAuthority:
        self.udp = reactor.listenUDP(PORT, _FakeUDP(self), interface=self.ip)
        self.tcp = reactor.listenTCP(PORT, _FakeTCPFactory(self), interface=self.ip)
        return self

    def respond(
        self, wire: bytes, addr: tuple[str, int], send: Callable[[bytes], None], tcp: bool
    ) -> None:
        query = dns.message.from_wire(wire)
        self.queries.append((query, addr, tcp))
        for out in self.handler(self, query, tcp):
            if self.delay:
                self.timers.append(reactor.callLater(self.delay, send, out))
            else:
                send(out)

    def stop(self) -> defer.Deferred[Any]:
        for timer in self.timers:
            if timer.active():
                timer.cancel()
        for conn in self.connections:
            conn.transport.abortConnection()
        return defer.DeferredList(
            [defer.maybeDeferred(self.udp.stopListening),
             defer.maybeDeferred(self.tcp.stopListening)]
            + [conn.lost for conn in self.connections]
        )


class _FakeUDP(DatagramProtocol):
    def __init__(self, server: FakeAuthority) -> None:
        self.server = server

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        def send(out: bytes) -> None:
            if self.transport is not None:
                self.transport.write(out, addr)

        self.server.respond(datagram, addr, send, False)


class _FakeTCP(Int16StringReceiver):
    def __init__(self, server: FakeAuthority) -> None:
        self.server = server
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.server.connections.append(self)

    def stringReceived(self, string: bytes) -> None:
        peer = self.transport.getPeer()
        self.server.respond(string, (peer.host, peer.port), self.sendString, True)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class _FakeTCPFactory(Factory):
    def __init__(self, server: FakeAuthority) -> None:
        self.server = server

    def buildProtocol(self, addr: Any) -> _FakeTCP:
        return _FakeTCP(self.server)


def question_text(query: dns.message.Message) -> str:
    """The query name exactly as it arrived, case included."""
    return query.question[0].name.to_text(omit_final_dot=True)


class UpstreamTestCase(unittest.TestCase):
    """Each test gets an Upstream with short timers and checks it leaves no socket behind."""

    def setUp(self) -> None:
        self.metrics: dict[str, int] = {}
        self.up = Upstream(
            reactor, port=PORT, metrics=self.metrics, initial_rtt=50.0, min_timeout=0.05,
            max_timeout=0.2, tcp_timeout=0.5, explore=0.0,
        )

    def serve(self, ip: str, handler: Handler = answers, delay: float = 0.0) -> FakeAuthority:
        server = FakeAuthority(ip, handler, delay).start()
        self.addCleanup(server.stop)
        return server

    def ask(self, servers: list[str], **kw: Any) -> defer.Deferred[UpstreamAnswer]:
        kw.setdefault("allow_local", True)
        return self.up.query(kw.pop("qname", NAME), kw.pop("rdtype", A), servers, **kw)

    def assertNoUpstreamSockets(self) -> None:
        for selectable in list(reactor.getReaders()) + list(reactor.getWriters()):
            self.assertNotIsInstance(selectable, (_UDPSocket, _Readers))
            proto = getattr(selectable, "protocol", None)
            self.assertNotIsInstance(proto, _TCPClient)

    def assertAddress(self, result: UpstreamAnswer, address: str) -> None:
        self.assertEqual([rd.address for rd in result.message.answer[0]], [address])


class AnswerTests(UpstreamTestCase):
    @defer.inlineCallbacks
    def test_answer(self) -> Any:
        """A plain exchange: the query is iterative, EDNS with DO and CD, the answer checked."""
        server = self.serve("127.0.20.1")
        result = yield self.ask(["127.0.20.1"])
        self.assertAddress(result, "192.0.2.1")
        self.assertEqual(result.server, ("127.0.20.1", PORT))
        self.assertFalse(result.tcp)
        self.assertTrue(result.edns)
        self.assertEqual(len(server.queries), 1)
        query, _source, tcp = server.queries[0]
        self.assertFalse(tcp)
        self.assertFalse(query.flags & dns.flags.RD)
        self.assertTrue(query.flags & dns.flags.CD)
        self.assertEqual(query.edns, 0)
        self.assertEqual(query.payload, EDNS_PAYLOAD)
        self.assertTrue(query.ednsflags & dns.flags.DO)
        self.assertEqual(self.metrics["iterator.udp"], 1)
        self.assertEqual(list(self.up.recent), [("127.0.20.1", result.rtt)])
        self.assertNotEqual(self.up.srtt("127.0.20.1"), self.up.initial_rtt)
        self.assertNoUpstreamSockets()

    @defer.inlineCallbacks
    def test_no_dnssec_no_cd(self) -> Any:
        server = self.serve("127.0.20.2")
        self.up.payload = 4096
        yield self.ask(["127.0.20.2"], dnssec_ok=False, checking_disabled=False)
        query = server.queries[0][0]
        self.assertFalse(query.flags & dns.flags.CD)
        self.assertFalse(query.ednsflags & dns.flags.DO)
        self.assertEqual(query.edns, 0)
        self.assertEqual(query.payload, 4096)

    @defer.inlineCallbacks
    def test_exploration(self) -> Any:
        """With exploration on, a server that is not the best still gets asked sometimes."""
        first = self.serve("127.0.20.32")
        second = self.serve("127.0.20.33")
        self.up.explore = 1.0
        for _ in range(30):
            yield self.ask(["127.0.20.32", "127.0.20.33"])
        # every pick is a coin toss, whatever the RTTs: 2**-29 odds of a false failure
        self.assertTrue(first.queries and second.queries)

    @defer.inlineCallbacks
    def test_fresh_port_and_id_per_query(self) -> Any:
        server = self.serve("127.0.20.3")
        for _ in range(4):
            yield self.ask(["127.0.20.3"])
        ports = {source[1] for _, source, _ in server.queries}
        ids = {query.id for query, _, _ in server.queries}
        # four sockets and IDs in a row all equal would mean they are not fresh
        self.assertGreater(len(ports), 1)
        self.assertGreater(len(ids), 1)

    @defer.inlineCallbacks
    def test_dead_then_live(self) -> Any:
        """A silent server costs one timeout; selection then prefers the live one."""
        dead = self.serve("127.0.20.4", silent)
        live = self.serve("127.0.20.5")
        result = yield self.ask(["127.0.20.4", "127.0.20.5"])
        self.assertEqual(result.server, ("127.0.20.5", PORT))
        self.assertEqual(self.metrics["iterator.timeout"], 1)
        self.assertGreater(self.up.srtt("127.0.20.4"), self.up.srtt("127.0.20.5"))
        self.assertGreater(self.up.srtt("127.0.20.4"), self.up.initial_rtt)
        result = yield self.ask(["127.0.20.4", "127.0.20.5"], rdtype=dns.rdatatype.AAAA)
        self.assertEqual(result.server, ("127.0.20.5", PORT))
        self.assertEqual((len(dead.queries), len(live.queries)), (1, 2))
        self.assertNoUpstreamSockets()

    @defer.inlineCallbacks
    def test_late_answer_accepted(self) -> Any:
        """An answer slower than the retransmission timeout still counts if it comes first."""
        slow = self.serve("127.0.20.6", delay=0.08)
        self.serve("127.0.20.7", silent)
        self.up.max_timeout = self.up.min_timeout = 0.05
        result = yield self.ask(["127.0.20.6", "127.0.20.7"])
        self.assertEqual(result.server, ("127.0.20.6", PORT))
        self.assertEqual(len(slow.queries), 1)
        self.assertNoUpstreamSockets()

    @defer.inlineCallbacks
    def test_closed_port_times_out(self) -> Any:
        """Nothing listening: as with kresd, whose UDP sockets are unconnected too, no ICMP
        error is heard, so a closed port is a silent server: timeouts, then the next one."""
        self.up.max_attempts = 2
        error = yield self.assertFailure(self.ask(["127.0.20.8"]), UpstreamError)
        self.assertEqual(error.ede, EDE_NO_REACHABLE_AUTHORITY)
        self.assertEqual(self.metrics["iterator.timeout"], 2)
        self.serve("127.0.20.9")
        result = yield self.ask(["127.0.20.8", "127.0.20.9"])
        self.assertEqual(result.server, ("127.0.20.9", PORT))
        self.assertNoUpstreamSockets()

    @defer.inlineCallbacks
    def test_refused_tries_next_server(self) -> Any:
        def refuse(server: FakeAuthority, query: dns.message.Message, tcp: bool) -> list[bytes]:
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.REFUSED)
            return [response.to_wire()]

        self.serve("127.0.20.10", refuse)
        self.serve("127.0.20.11")
        result = yield self.ask(["127.0.20.10", "127.0.20.11"])
        self.assertEqual(result.server, ("127.0.20.11", PORT))
        # all refuse: the caller gets the REFUSED answer to judge the zone lame
        result = yield self.ask(["127.0.20.10"])
        self.assertEqual(result.message.rcode(), dns.rcode.REFUSED)


class LimitTests(UpstreamTestCase):
    @defer.inlineCallbacks
    def test_deadline(self) -> Any:
        server = self.serve("127.0.20.12", silent)
        self.up.max_attempts = 1000
        d = self.ask(["127.0.20.12"], deadline=reactor.seconds() + 0.4)
        error = yield self.assertFailure(d, UpstreamError)
        self.assertEqual(error.ede, EDE_NO_REACHABLE_AUTHORITY)
        self.assertIn("deadline", error.reason)
        self.assertGreater(len(server.queries), 1)  # retransmitted before giving up
        self.assertNoUpstreamSockets()

    @defer.inlineCallbacks
    def test_deadline_already_passed(self) -> Any:
        server = self.serve("127.0.20.13")
        d = self.ask(["127.0.20.13"], deadline=reactor.seconds() - 1)
        yield self.assertFailure(d, UpstreamError)
        self.assertEqual(server.queries, [])

    @defer.inlineCallbacks
    def test_attempt_cap(self) -> Any:
        server = self.serve("127.0.20.14", silent)
        self.up.max_attempts = 3
        error = yield self.assertFailure(self.ask(["127.0.20.14"]), UpstreamError)
        self.assertEqual(error.ede, EDE_NO_REACHABLE_AUTHORITY)
        self.assertEqual(len(server.queries), 3)
        # backing off: the dead server now scores far worse than an unknown one
        self.assertGreaterEqual(self.up.srtt("127.0.20.14"), 8 * self.up.initial_rtt)
        self.assertNoUpstreamSockets()

    @defer.inlineCallbacks
    def test_cancel_closes_sockets(self) -> Any:
        self.serve("127.0.20.15", silent)
        d = self.ask(["127.0.20.15"])
        d.cancel()
        yield self.assertFailure(d, defer.CancelledError)
        yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertNoUpstreamSockets()


class TransportTests(UpstreamTestCase):
    @defer.inlineCallbacks
    def test_truncated_retried_over_tcp(self) -> Any:
        def truncate(server: FakeAuthority, query: dns.message.Message, tcp: bool) -> list[bytes]:
            if tcp:
                return [answer(query, "192.0.2.53")]
            response = dns.message.make_response(query)
            response.flags |= dns.flags.TC
            return [response.to_wire()]

        server = self.serve("127.0.20.16", truncate)
        result = yield self.ask(["127.0.20.16"])
        self.assertTrue(result.tcp)
        self.assertAddress(result, "192.0.2.53")
        self.assertEqual([tcp for _, _, tcp in server.queries], [False, True])
        self.assertEqual((self.metrics["iterator.udp"], self.metrics["iterator.tcp"]), (1, 1))
        self.assertNoUpstreamSockets()

    @defer.inlineCallbacks
    def test_tcp_requested(self) -> Any:
        server = self.serve("127.0.20.17")
        result = yield self.ask(["127.0.20.17"], tcp=True)
        self.assertTrue(result.tcp)
        self.assertEqual([tcp for _, _, tcp in server.queries], [True])
        self.assertNoUpstreamSockets()

    @defer.inlineCallbacks
    def test_formerr_to_edns_falls_back(self) -> Any:
        def old(server: FakeAuthority, query: dns.message.Message, tcp: bool) -> list[bytes]:
            if query.edns >= 0:
                response = dns.message.make_response(query)
                response.use_edns(False)
                response.set_rcode(dns.rcode.FORMERR)
                return [response.to_wire()]
            return [answer(query)]

        server = self.serve("127.0.20.18", old)
        result = yield self.ask(["127.0.20.18"])
        self.assertFalse(result.edns)
        self.assertEqual(result.message.rcode(), dns.rcode.NOERROR)
        self.assertEqual([q.edns for q, _, _ in server.queries], [0, -1])
        self.assertEqual(self.metrics["iterator.edns_fallback"], 1)
        # remembered: the next question goes without EDNS straight away
        yield self.ask(["127.0.20.18"], rdtype=dns.rdatatype.MX)
        self.assertEqual([q.edns for q, _, _ in server.queries], [0, -1, -1])

    @defer.inlineCallbacks
    def test_formerr_without_question_falls_back(self) -> Any:
        def older(server: FakeAuthority, query: dns.message.Message, tcp: bool) -> list[bytes]:
            if query.edns >= 0:
                wire = bytearray(12)
                wire[0:2] = query.id.to_bytes(2, "big")
                wire[2], wire[3] = 0x80, dns.rcode.FORMERR
                return [bytes(wire)]
            return [answer(query)]

        self.serve("127.0.20.19", older)
        result = yield self.ask(["127.0.20.19"])
        self.assertFalse(result.edns)
        self.assertAddress(result, "192.0.2.1")

    @defer.inlineCallbacks
    def test_edns_dropped_falls_back(self) -> Any:
        """A server (or firewall) that drops EDNS queries gets a plain probe after a timeout."""

        def drops(server: FakeAuthority, query: dns.message.Message, tcp: bool) -> list[bytes]:
            return [] if query.edns >= 0 else [answer(query)]

        server = self.serve("127.0.20.20", drops)
        result = yield self.ask(["127.0.20.20"])
        self.assertFalse(result.edns)
        self.assertEqual([q.edns for q, _, _ in server.queries], [0, -1])
        self.assertEqual(self.metrics["iterator.edns_fallback"], 1)

    @defer.inlineCallbacks
    def test_outgoing_v4(self) -> Any:
        server = self.serve("127.0.20.21")
        self.up.outgoing_v4 = "127.0.20.50"
        yield self.ask(["127.0.20.21"])
        yield self.ask(["127.0.20.21"], tcp=True)
        self.assertEqual([source[0] for _, source, _ in server.queries], ["127.0.20.50"] * 2)
        self.assertEqual([tcp for _, _, tcp in server.queries], [False, True])

    @defer.inlineCallbacks
    def test_outgoing_unusable(self) -> Any:
        """A source address we cannot bind is a network error, not a hang or a crash."""
        self.serve("127.0.20.22")
        self.up.outgoing_v4 = "192.0.2.77"  # TEST-NET: not on this host, so bind fails
        error = yield self.assertFailure(self.ask(["127.0.20.22"]), UpstreamError)
        self.assertEqual(error.ede, EDE_NETWORK_ERROR)
        self.assertNoUpstreamSockets()


class SpoofingTests(UpstreamTestCase):
    @defer.inlineCallbacks
    def test_spoofed_answers_ignored(self) -> Any:
        """Wrong ID, wrong case, wrong source port: all ignored; the real answer wins."""
        other_port = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.20.23")
        self.addCleanup(other_port.stopListening)

        def spoofing(server: FakeAuthority, query: dns.message.Message, tcp: bool) -> list[bytes]:
            source = server.queries[-1][1]
            fake_id = dns.message.from_wire(answer(query, "6.6.6.1"))
            fake_id.id = (query.id + 1) % 65536
            fake_case = dns.message.from_wire(answer(query, "6.6.6.2"))
            name = fake_case.question[0].name
            swapped = dns.name.Name([label.swapcase() for label in name.labels])
            fake_case.question[0].name = swapped
            other_port.write(answer(query, "6.6.6.3"), source)
            return [fake_id.to_wire(), fake_case.to_wire(), answer(query)]

        self.serve("127.0.20.23", spoofing)
        result = yield self.ask(["127.0.20.23"])
        self.assertAddress(result, "192.0.2.1")
        self.assertGreaterEqual(self.metrics["iterator.mismatch"], 2)
        self.assertNoUpstreamSockets()

    @defer.inlineCallbacks
    def test_other_sources_ignored(self) -> Any:
        """The socket is unconnected: a perfect answer from another address, or from the
        server's address but another port, is dropped and counted, and the attempt keeps
        waiting for the server's own."""
        elsewhere = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.20.35")
        self.addCleanup(elsewhere.stopListening)
        other_port = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.20.34")
        self.addCleanup(other_port.stopListening)

        def spoofing(server: FakeAuthority, query: dns.message.Message, tcp: bool) -> list[bytes]:
            source = server.queries[-1][1]
            forged = answer(query, "6.6.6.4")  # ID, question and case right: only the source
            elsewhere.write(forged, source)
            other_port.write(forged, source)
            return [answer(query)]

        server = self.serve("127.0.20.34", spoofing, delay=0.02)  # the forgeries come first
        # No retransmission may blur the count, even if the reactor stalls (a collection
        # of a big test run's heap) between the query and the server's answer.
        self.up.min_timeout = self.up.max_timeout = 2.0
        result = yield self.ask(["127.0.20.34"])
        self.assertAddress(result, "192.0.2.1")
        self.assertEqual(result.server, ("127.0.20.34", PORT))
        self.assertEqual(self.metrics["iterator.mismatch"], 2)
        self.assertEqual(len(server.queries), 1)  # kept waiting: no retransmission
        self.assertNoUpstreamSockets()

    def test_same_ip_spellings(self) -> None:
        """An IPv6 source may be spelt otherwise than the address asked; it still counts."""
        self.assertTrue(_same_ip(("fe80:0:0:0::1", 53, 0, 0), ("fe80::1", 53)))
        self.assertFalse(_same_ip(("::2", 53, 0, 0), ("::1", 53)))
        self.assertFalse(_same_ip(("not an address", 53), ("::1", 53)))

    @defer.inlineCallbacks
    def test_only_spoofs_time_out(self) -> Any:
        def spoofing(server: FakeAuthority, query: dns.message.Message, tcp: bool) -> list[bytes]:
            fake = dns.message.from_wire(answer(query, "6.6.6.1"))
            fake.id = (query.id + 1) % 65536
            return [fake.to_wire()]

        self.serve("127.0.20.24", spoofing)
        self.up.max_attempts = 2
        yield self.assertFailure(self.ask(["127.0.20.24"]), UpstreamError)
        self.assertEqual(self.metrics["iterator.mismatch"], 2)

    @defer.inlineCallbacks
    def test_wrong_type_ignored(self) -> Any:
        def wrong_type(server: FakeAuthority, query: dns.message.Message, tcp: bool) -> list[bytes]:
            fake = dns.message.make_query(query.question[0].name, "AAAA", id=query.id)
            fake.flags |= dns.flags.QR
            return [fake.to_wire(), answer(query)]

        self.serve("127.0.20.25", wrong_type)
        result = yield self.ask(["127.0.20.25"])
        self.assertAddress(result, "192.0.2.1")
        self.assertEqual(self.metrics["iterator.mismatch"], 1)

    @defer.inlineCallbacks
    def test_case_randomised_on_the_wire(self) -> Any:
        server = self.serve("127.0.20.26")
        long_name = dns.name.from_text("abcdefghijklmnopqrstuvwxyz.example-lab.")
        yield self.ask(["127.0.20.26"], qname=long_name)
        sent = question_text(server.queries[0][0])
        self.assertEqual(sent.lower(), "abcdefghijklmnopqrstuvwxyz.example-lab")
        self.assertNotEqual(sent, sent.lower())  # 2**-36 chance of a false failure
        mixed = dns.name.from_text("MiXeD.Example-Lab.")
        yield self.ask(["127.0.20.26"], qname=mixed, randomize_case=False)
        self.assertEqual(question_text(server.queries[1][0]), "MiXeD.Example-Lab")

    @defer.inlineCallbacks
    def test_case_not_preserved(self) -> Any:
        """A server that lowercases the question is asked again plainly, and remembered."""

        def lowercases(server: FakeAuthority, query: dns.message.Message, tcp: bool) -> list[bytes]:
            response = dns.message.from_wire(answer(query))
            response.question[0].name = query.question[0].name.canonicalize()
            return [response.to_wire()]

        server = self.serve("127.0.20.27", lowercases)
        name = dns.name.from_text("MiXeD.Example-Lab.")
        result = yield self.ask(["127.0.20.27"], qname=name)
        self.assertAddress(result, "192.0.2.1")
        self.assertEqual(question_text(server.queries[1][0]), "MiXeD.Example-Lab")
        self.assertEqual(self.metrics["iterator.case_fallback"], 1)
        yield self.ask(["127.0.20.27"], qname=name, rdtype=dns.rdatatype.TXT)
        self.assertEqual(len(server.queries), 3)
        self.assertEqual(question_text(server.queries[2][0]), "MiXeD.Example-Lab")

    def test_id_and_case(self) -> None:
        """IDs and the case of letters vary; nothing else of the name does."""
        wire = b"\x07example\x05x-9_z\x00"
        ids, names = set(), set()
        for _ in range(20):
            qid, mixed = _ENTROPY.id_and_case(wire)
            self.assertEqual(mixed.lower(), wire)
            ids.add(qid)
            names.add(mixed)
        # 20 equal draws of 16 bits, or of the case of 11 letters, would mean no randomness
        self.assertGreater(len(ids), 1)
        self.assertGreater(len(names), 1)

    def test_randomize_case_bits(self) -> None:
        name = dns.name.from_text("ab-c.D.")
        self.assertEqual(randomize_case(name, 0).labels, (b"AB-C", b"D", b""))
        self.assertEqual(randomize_case(name, 0b11111).labels, (b"ab-c", b"d", b""))
        self.assertEqual(randomize_case(name, 0b00001).labels, (b"aB-C", b"D", b""))


class SharingAndFilterTests(UpstreamTestCase):
    @defer.inlineCallbacks
    def test_identical_questions_share_one_exchange(self) -> Any:
        server = self.serve("127.0.20.28", delay=0.05)
        self.up.min_timeout = self.up.max_timeout = 2.0  # no retransmission in this test
        first = self.ask(["127.0.20.28"])
        second = self.ask(["127.0.20.28"], qname=dns.name.from_text("WWW.example-LAB."))
        other = self.ask(["127.0.20.28"], rdtype=dns.rdatatype.AAAA)
        results = yield defer.gatherResults([first, second, other])
        self.assertIs(results[0], results[1])
        self.assertIsNot(results[0], results[2])
        self.assertEqual(len(server.queries), 2)
        # once answered, the same question is asked anew
        yield self.ask(["127.0.20.28"])
        self.assertEqual(len(server.queries), 3)

    @defer.inlineCallbacks
    def test_shared_exchange_with_own_deadlines(self) -> Any:
        self.serve("127.0.20.29", delay=0.3)
        short = self.ask(["127.0.20.29"], deadline=reactor.seconds() + 0.1)
        self.up.max_timeout = 1.0
        long = self.ask(["127.0.20.29"], deadline=reactor.seconds() + 2.0)
        yield self.assertFailure(short, UpstreamError)
        result = yield long
        self.assertAddress(result, "192.0.2.1")

    @defer.inlineCallbacks
    def test_one_reactor_reader_for_all_sockets(self) -> Any:
        """The sockets in flight are read through one reader of the reactor, which is
        gone once they are closed and comes back for the next query."""
        self.serve("127.0.20.62", delay=0.05)

        def readers() -> list[Any]:
            return [r for r in reactor.getReaders() if isinstance(r, (_Readers, _UDPSocket))]

        pending = [
            self.ask(["127.0.20.62"], qname=dns.name.from_text(f"n{i}.example-lab."))
            for i in range(4)
        ]
        self.assertEqual(readers(), [self.up._readers])
        self.assertEqual(len(self.up._readers.sockets), 4)
        yield defer.gatherResults(pending)
        self.assertEqual(readers(), [])
        self.assertEqual(self.up._readers.sockets, {})
        result = yield self.ask(["127.0.20.62"])
        self.assertAddress(result, "192.0.2.1")
        self.assertEqual(readers(), [])

    @defer.inlineCallbacks
    def test_reader_taken_away_comes_back(self) -> Any:
        """Should the reactor drop the reader while sockets wait (removeAll), those time
        out, and the next query registers it afresh."""
        self.serve("127.0.20.63", delay=0.05)
        self.up.max_attempts = 1
        lost = self.ask(["127.0.20.63"])
        reactor.removeReader(self.up._readers)
        yield self.assertFailure(lost, UpstreamError)
        result = yield self.ask(["127.0.20.63"], rdtype=dns.rdatatype.AAAA)
        self.assertEqual(result.server, ("127.0.20.63", PORT))
        self.assertNoUpstreamSockets()

    @defer.inlineCallbacks
    def test_one_reactor_timer_for_all_exchanges(self) -> Any:
        """Exchanges in flight share one reactor timer, which still runs each one's
        retransmission and deadline in turn, and is gone once nothing waits."""
        self.serve("127.0.20.60", silent)
        live = self.serve("127.0.20.61")

        def ours() -> list[Any]:
            return [c for c in reactor.getDelayedCalls() if c.func == self.up._expire]

        self.up.max_attempts = 1000
        dead = self.ask(["127.0.20.60"], deadline=reactor.seconds() + 0.3)
        answered = [
            self.ask(["127.0.20.61"], qname=dns.name.from_text(f"n{i}.example-lab."))
            for i in range(5)
        ]
        self.assertEqual(len(ours()), 1)
        yield defer.gatherResults(answered)
        self.assertEqual(len(ours()), 1)  # the dead server's exchange still waits
        error = yield self.assertFailure(dead, UpstreamError)
        self.assertIn("deadline", error.reason)
        self.assertGreater(self.metrics["iterator.timeout"], 1)  # retransmitted meanwhile
        self.assertEqual(len(live.queries), 5)
        self.assertEqual(ours(), [])
        self.assertEqual(self.up._due, [])
        self.assertNoUpstreamSockets()

    @defer.inlineCallbacks
    def test_local_addresses_filtered(self) -> Any:
        server = self.serve("127.0.20.30")
        for servers in (["127.0.20.30"], ["0.0.0.1", "::1", "::", "::ffff:127.0.20.30"]):
            d = self.up.query(NAME, A, servers)
            self.assertTrue(d.called)  # failed at once, nothing sent
            yield self.assertFailure(d, UpstreamError)
        self.assertEqual(server.queries, [])
        result = yield self.ask(["127.0.20.30"])
        self.assertEqual(result.server, ("127.0.20.30", PORT))

    @defer.inlineCallbacks
    def test_families_switched_off(self) -> Any:
        server = self.serve("127.0.20.31")
        self.up.ipv4 = False
        d = self.ask(["127.0.20.31"])
        self.assertTrue(d.called)
        yield self.assertFailure(d, UpstreamError)
        self.assertEqual(server.queries, [])
        self.up.ipv4, self.up.ipv6 = True, False
        result = yield self.ask(["::1", "127.0.20.31"])
        self.assertEqual(result.server, ("127.0.20.31", PORT))

    def test_bad_input(self) -> None:
        self.assertRaises(ValueError, self.up.query, NAME, A, ["ns1.example."])
        self.assertRaises(TypeError, self.up.query, NAME, A, "127.0.20.1")
        self.assertRaises(ValueError, self.up.query, dns.name.from_text("a", None), A, ["1.2.3.4"])



LAB_ZONE = """
$TTL 300
@ SOA ns.example-lab. hostmaster.example-lab. 1 3600 600 86400 300
@ NS ns.example-lab.
ns A 127.0.20.40
www A 192.0.2.80
big TXT "{}" "{}" "{}" "{}" "{}"
""".format(*["x" * 200] * 5)


class LabServerTests(UpstreamTestCase):
    """The same paths against the shared lab's authoritative server and its fault knobs."""

    def setUp(self) -> None:
        super().setUp()
        zones = zones_from_text({"example-lab.": LAB_ZONE})
        self.lab = AuthoritativeServer(zones, "127.0.20.40", port=PORT, reactor=reactor)
        self.lab.start()
        self.addCleanup(self.lab.stop)

    @defer.inlineCallbacks
    def test_answer_in_sent_case(self) -> Any:
        result = yield self.ask(["127.0.20.40"])
        self.assertAddress(result, "192.0.2.80")
        self.assertTrue(result.message.flags & dns.flags.AA)
        sent = self.lab.queries[0][0]
        self.assertEqual(result.message.question[0].name.to_text(), sent)

    @defer.inlineCallbacks
    def test_big_answer_over_tcp_without_edns(self) -> Any:
        """1 kB of TXT cannot come over UDP without EDNS: TC, then TCP."""
        self.lab.reject_edns = True
        result = yield self.ask(["127.0.20.40"], qname=dns.name.from_text("big.example-lab."),
                                rdtype=dns.rdatatype.TXT)
        self.assertFalse(result.edns)
        self.assertTrue(result.tcp)
        self.assertEqual(len(result.message.answer[0][0].strings), 5)
        self.assertEqual([t for _, _, t in self.lab.queries], ["udp", "udp", "tcp"])
        self.assertNoUpstreamSockets()

    @defer.inlineCallbacks
    def test_always_truncating(self) -> Any:
        self.lab.always_tc = True
        result = yield self.ask(["127.0.20.40"])
        self.assertTrue(result.tcp)
        self.assertAddress(result, "192.0.2.80")

    @defer.inlineCallbacks
    def test_case_folding_server(self) -> Any:
        self.lab.no_case_preserve = True
        result = yield self.ask(["127.0.20.40"])
        self.assertAddress(result, "192.0.2.80")
        self.assertEqual(self.metrics["iterator.case_fallback"], 1)


class WireTests(unittest.TestCase):
    def test_query_wire_parses_as_intended(self) -> None:
        name = dns.name.from_text("MiXeD.example-lab.")
        question = question_wire(name, dns.rdatatype.HTTPS, 1)
        for edns, do, cd in [(True, True, True), (True, False, False), (False, False, True)]:
            query = dns.message.from_wire(
                query_wire(4711, question, checking_disabled=cd, edns=edns, dnssec_ok=do)
            )
            self.assertEqual(query.id, 4711)
            self.assertEqual(query.question[0].name.labels, name.labels)
            self.assertEqual(query.question[0].rdtype, dns.rdatatype.HTTPS)
            self.assertFalse(query.flags & dns.flags.RD)
            self.assertEqual(bool(query.flags & dns.flags.CD), cd)
            self.assertEqual(query.edns, 0 if edns else -1)
            self.assertEqual(bool(query.ednsflags & dns.flags.DO), do)
            if edns:
                self.assertEqual(query.payload, EDNS_PAYLOAD)


class SelectionBookTests(unittest.TestCase):
    """The RTT book on a fake clock: decay towards the default, back-off and its end."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.up = Upstream(self.clock, initial_rtt=400.0, decay_half_life=100.0,
                           timeout_memory=30.0, min_timeout=0.2, max_timeout=1.5)

    def rto(self, ip: str) -> float:
        return self.up._rto(self.up._servers.get(ip), self.clock.seconds())

    def test_unknown_server_gets_the_default(self) -> None:
        self.assertEqual(self.up.srtt("192.0.2.1"), 400.0)
        self.assertEqual(self.rto("192.0.2.1"), 0.4)

    def test_smoothing_and_decay(self) -> None:
        self.up._record_rtt("192.0.2.1", 20.0, self.clock.seconds())
        self.assertEqual(self.up.srtt("192.0.2.1"), 20.0)
        self.up._record_rtt("192.0.2.1", 100.0, self.clock.seconds())
        self.assertEqual(self.up.srtt("192.0.2.1"), 30.0)  # 7/8 * 20 + 1/8 * 100
        self.clock.advance(100.0)  # one half-life: halfway back to the default
        self.assertAlmostEqual(self.up.srtt("192.0.2.1"), 215.0)
        # RTO = SRTT + 4 RTTVAR, RTTVAR = 3/4 * 10 + 1/4 * |20 - 100|
        self.assertAlmostEqual(self.rto("192.0.2.1"), 0.325)
        self.clock.advance(1000.0)
        self.up._record_timeout("192.0.2.1", self.clock.seconds())
        self.up._record_timeout("192.0.2.1", self.clock.seconds())
        self.assertEqual(self.rto("192.0.2.1"), 1.5)  # bounded

    def test_timeouts_back_off_then_are_forgotten(self) -> None:
        self.up._record_rtt("192.0.2.2", 50.0, 0.0)
        self.up._record_timeout("192.0.2.2", 0.0)
        self.up._record_timeout("192.0.2.2", 0.0)
        self.assertEqual(self.up.srtt("192.0.2.2"), 200.0)
        self.assertEqual(self.rto("192.0.2.2"), 0.8)  # max(0.05+0.1, 0.2) * 4
        self.clock.advance(31.0)
        self.assertLess(self.up.srtt("192.0.2.2"), 200.0)
        self.up._record_timeout("192.0.2.2", self.clock.seconds())  # a fresh streak of one
        self.assertEqual(self.up._servers["192.0.2.2"].timeouts, 1)
        self.up._record_rtt("192.0.2.2", 50.0, self.clock.seconds())
        self.assertEqual(self.up._servers["192.0.2.2"].timeouts, 0)

    def test_bad_settings(self) -> None:
        self.assertRaises(ValueError, Upstream, self.clock, min_timeout=0)
        self.assertRaises(ValueError, Upstream, self.clock, max_attempts=0)
        self.assertRaises(ValueError, Upstream, self.clock, explore=2)


class LoopbackOnlyTests(unittest.TestCase):
    """The test-suite safety net: KRESOLVER_LOOPBACK_ONLY=1 drops every other address."""

    def test_only_loopback_is_asked(self) -> None:
        up = Upstream(reactor)
        self.assertTrue(up.loopback_only)  # tests/conftest.py sets it for the whole suite
        self.assertEqual(up.usable(["198.41.0.4", "127.0.20.50", "2001:db8::1", "::1"], True),
                         ["127.0.20.50", "::1"])
        self.assertEqual(up.metrics.get("iterator.not_loopback"), 2)
        up.loopback_only = False
        self.assertEqual(len(up.usable(["198.41.0.4", "127.0.20.50"], True)), 2)


class _FailingSend:
    """A socket whose sends fail (an unreachable route), reads and closes as the real one."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock

    def sendto(self, data: bytes, peer: Any) -> int:
        raise OSError(101, "Network is unreachable")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


class TurnTests(UpstreamTestCase):
    """With the engine's TurnQueue, UDP queries leave at the end of the reactor's turn."""

    @defer.inlineCallbacks
    def test_queries_of_a_turn_leave_together(self) -> Any:
        from kresolver.server.turn import TurnQueue

        server = self.serve("127.0.20.70")
        self.up.turn = TurnQueue(reactor)
        first = self.ask(["127.0.20.70"])
        second = self.ask(["127.0.20.70"], rdtype=dns.rdatatype.AAAA)
        self.assertEqual(len(self.up._outbox), 2)  # held, not sent yet
        self.assertEqual(len(self.up.turn), 1)  # one call at the end of the turn sends both
        self.assertEqual(server.queries, [])
        results = yield defer.gatherResults([first, second])
        self.assertEqual([r.server for r in results], [("127.0.20.70", PORT)] * 2)
        self.assertEqual(len(server.queries), 2)
        self.assertNoUpstreamSockets()

    @defer.inlineCallbacks
    def test_a_queued_send_that_fails_moves_on_to_the_next_server(self) -> Any:
        from kresolver.server.turn import TurnQueue

        self.serve("127.0.20.71")
        live = self.serve("127.0.20.72")
        clock = task.Clock()
        self.up.turn = TurnQueue(clock)
        result = self.ask(["127.0.20.71", "127.0.20.72"])
        (exchange,) = self.up._inflight.values()
        attempt = exchange.current
        self.assertEqual(attempt.ip, "127.0.20.71")
        attempt.sock = _FailingSend(attempt.sock)
        clock.advance(0)  # the end of the turn: the send fails, the next server is asked
        self.assertFalse(attempt.open)
        self.assertEqual(exchange.current.ip, "127.0.20.72")
        clock.advance(0)
        answer = yield result
        self.assertEqual(answer.server, ("127.0.20.72", PORT))
        self.assertEqual(len(live.queries), 1)
        self.assertNoUpstreamSockets()
