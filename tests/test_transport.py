"""UDP and TCP against a running engine: EDNS0, protocol errors, pipelining, limits.

The clients are plain blocking sockets run in a thread (deferToThread) while the reactor
serves them: what a client sees is exactly what went over the loopback wire.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.update
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from kresolver.engine import Engine
from kresolver.server.net import Net
from tests.support import (
    SYNTH_DROPIN,
    frame,
    install_dropins,
    query,
    tcp_connect,
    tcp_exchange,
    tcp_read_message,
    udp_exchange,
)

T = TypeVar("T")
ADDRESS = "127.0.40.1"


class ServerCase(unittest.TestCase):
    """An engine with the synthetic module, listening on ADDRESS, a port of its choosing."""

    def setUp(self) -> Deferred[None] | None:
        install_dropins(self, {"kt_transport": SYNTH_DROPIN})
        self.engine = Engine(reactor)
        self.configure(self.engine.net)
        self.engine.run_config(f"modules = ['synth']\nnet.listen('{ADDRESS}', 0)")
        self.engine.startService()
        self.addCleanup(self.engine.stopService)
        self.server = self.engine.net.addresses[0]
        return None

    def configure(self, net: Net) -> None:
        """Change listener settings before the engine binds."""

    def client(self, work: Callable[..., T], *args: Any) -> Deferred[T]:
        return deferToThread(work, *args)

    def udp(self, message: dns.message.Message | bytes) -> Deferred[dns.message.Message]:
        data = message if isinstance(message, bytes) else message.to_wire()
        return self.client(udp_exchange, self.server, data).addCallback(self.parse)

    def tcp(self, message: dns.message.Message | bytes) -> Deferred[dns.message.Message]:
        data = message if isinstance(message, bytes) else message.to_wire()
        return self.client(tcp_exchange, self.server, data).addCallback(self.parse)

    def parse(self, data: bytes | None) -> dns.message.Message:
        self.assertIsNotNone(data, "no answer")
        self.last_wire = data
        return dns.message.from_wire(data)  # type: ignore[arg-type]

    def metric(self, name: str) -> int:
        return self.engine.metrics.get(name, 0)


class AnswerTests(ServerCase):
    async def test_udp(self) -> None:
        answer = await self.udp(query("a.synth.test."))
        self.assertEqual(answer.rcode(), dns.rcode.NOERROR)
        self.assertEqual(answer.answer[0].to_text(), "a.synth.test. 300 IN A 127.0.0.1")
        self.assertTrue(answer.flags & dns.flags.RA)
        self.assertEqual(self.metric("request.udp"), 1)
        self.assertEqual(self.metric("answer.noerror"), 1)

    async def test_tcp(self) -> None:
        answer = await self.tcp(query("a.synth.test.", use_edns=0))
        self.assertEqual(answer.answer[0].to_text(), "a.synth.test. 300 IN A 127.0.0.1")
        self.assertEqual(self.metric("request.tcp"), 1)

    async def test_nxdomain(self) -> None:
        answer = await self.udp(query("nx.synth.test."))
        self.assertEqual(answer.rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(len(answer.authority), 1)

    async def test_layer_failure_is_servfail(self) -> None:
        answer = await self.udp(query("fail.synth.test."))
        self.assertEqual(answer.rcode(), dns.rcode.SERVFAIL)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        # and the server is still fine
        answer = await self.udp(query("a.synth.test."))
        self.assertEqual(answer.rcode(), dns.rcode.NOERROR)

    async def test_fast_path(self) -> None:
        """A repeated question is answered from the answer cache: ID and case patched."""
        first = query("fast.synth.test.", use_edns=0)
        await self.udp(first)
        self.assertEqual(self.engine.answers.hits, 0)
        again = query("FaSt.Synth.TEST.", use_edns=0)
        again.id = (first.id + 1) % 65536
        answer = await self.udp(again)
        self.assertEqual(self.engine.answers.hits, 1)
        self.assertEqual(answer.id, again.id)
        self.assertEqual(answer.question[0].name.to_text(), "FaSt.Synth.TEST.")
        self.assertEqual(answer.answer[0].ttl, 300)  # less than a second old
        self.assertEqual(self.engine.namespace["synth"].seen, ["fast.synth.test."])
        self.assertEqual(self.metric("answer.cached"), 1)
        self.assertEqual(self.metric("answer.total"), 2)
        # also over TCP, and a different flag set is a different answer
        await self.tcp(again)
        self.assertEqual(self.engine.answers.hits, 2)
        await self.udp(query("fast.synth.test.", use_edns=0, want_dnssec=True))
        self.assertEqual(self.engine.answers.hits, 2)

    async def test_servfail_not_cached(self) -> None:
        await self.udp(query("fail.synth.test."))
        await self.udp(query("fail.synth.test."))
        self.assertEqual(self.engine.answers.hits, 0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)


class EdnsTests(ServerCase):
    async def test_payload_capped_at_bufsize(self) -> None:
        """A 2 kB answer does not fit the default 1232: TC, no records, our payload in OPT."""
        answer = await self.udp(query("big.synth.test.", "TXT", use_edns=0, payload=4096))
        self.assertTrue(answer.flags & dns.flags.TC)
        self.assertEqual(answer.answer, [])
        self.assertLessEqual(len(self.last_wire), 1232)
        self.assertEqual(answer.payload, 1232)
        self.assertEqual(self.metric("answer.truncated"), 1)

    async def test_client_payload_honoured(self) -> None:
        self.engine.net.bufsize(4096)
        answer = await self.udp(query("big.synth.test.", "TXT", use_edns=0, payload=4096))
        self.assertFalse(answer.flags & dns.flags.TC)
        self.assertEqual(len(answer.answer[0]), 20)
        self.assertGreater(len(self.last_wire), 1232)
        answer = await self.udp(query("big.synth.test.", "TXT", use_edns=0, payload=1400))
        self.assertTrue(answer.flags & dns.flags.TC)

    async def test_no_edns_is_512(self) -> None:
        answer = await self.udp(query("big.synth.test.", "TXT", use_edns=False))
        self.assertTrue(answer.flags & dns.flags.TC)
        self.assertLessEqual(len(self.last_wire), 512)
        self.assertEqual(answer.edns, -1)

    async def test_full_answer_over_tcp(self) -> None:
        answer = await self.tcp(query("big.synth.test.", "TXT", use_edns=0))
        self.assertFalse(answer.flags & dns.flags.TC)
        self.assertEqual(len(answer.answer[0]), 20)

    async def test_fast_path_capped_at_bufsize(self) -> None:
        """An answer stored from TCP must not go out over UDP bigger than net.bufsize()."""
        await self.tcp(query("big.synth.test.", "TXT", use_edns=0))
        answer = await self.udp(query("big.synth.test.", "TXT", use_edns=0, payload=4096))
        self.assertTrue(answer.flags & dns.flags.TC)
        self.assertLessEqual(len(self.last_wire), 1232)

    async def test_badvers(self) -> None:
        answer = await self.udp(query("a.synth.test.", use_edns=1))
        self.assertEqual(answer.rcode(), dns.rcode.BADVERS)
        self.assertEqual(answer.edns, 0)
        self.assertEqual(answer.answer, [])
        self.assertEqual(self.engine.namespace["synth"].seen, [])
        answer = await self.tcp(query("a.synth.test.", use_edns=1))
        self.assertEqual(answer.rcode(), dns.rcode.BADVERS)

    async def test_unknown_options_not_echoed(self) -> None:
        options = [dns.edns.GenericOption(65001, b"private"),
                   dns.edns.GenericOption(dns.edns.COOKIE, b"clientck")]
        for send in (self.udp, self.tcp, self.udp):  # the last one is a fast-path hit
            answer = await send(query("opts.synth.test.", use_edns=0, options=options))
            self.assertEqual(answer.rcode(), dns.rcode.NOERROR)
            self.assertEqual([o.otype for o in answer.options], [])
        self.assertEqual(self.engine.answers.hits, 2)

    async def test_do_bit_echoed(self) -> None:
        answer = await self.udp(query("do.synth.test.", want_dnssec=True))
        self.assertTrue(answer.ednsflags & dns.flags.DO)
        answer = await self.udp(query("do.synth.test.", use_edns=0))
        self.assertFalse(answer.ednsflags & dns.flags.DO)


class ProtocolErrorTests(ServerCase):
    async def test_broken_body_is_formerr(self) -> None:
        data = query("a.synth.test.").to_wire()
        broken = data[:12] + b"\x3fabc"  # a label that runs past the end
        answer = await self.udp(broken)
        self.assertEqual(answer.rcode(), dns.rcode.FORMERR)
        self.assertEqual(answer.id, int.from_bytes(data[:2], "big"))
        self.assertEqual(self.metric("request.malformed"), 1)
        self.assertEqual(self.metric("answer.total"), 1)  # answers to garbage count too
        self.assertEqual(self.metric("answer.other"), 1)
        answer = await self.tcp(broken)
        self.assertEqual(answer.rcode(), dns.rcode.FORMERR)

    async def test_short_is_dropped(self) -> None:
        data = await self.client(udp_exchange, self.server, b"\x12\x34\x01\x00\x00", 0.5)
        self.assertIsNone(data)
        self.assertEqual(self.metric("request.malformed"), 1)
        self.assertEqual(self.metric("answer.total"), 0)
        # the server is still there
        answer = await self.udp(query("a.synth.test."))
        self.assertEqual(answer.rcode(), dns.rcode.NOERROR)

    async def test_response_is_dropped(self) -> None:
        response = dns.message.make_response(query("a.synth.test."))
        data = await self.client(udp_exchange, self.server, response.to_wire(), 0.5)
        self.assertIsNone(data)

    async def test_notify_and_update_notimp(self) -> None:
        notify = query("synth.test.", "SOA")
        notify.set_opcode(dns.opcode.NOTIFY)
        answer = await self.udp(notify)
        self.assertEqual(answer.rcode(), dns.rcode.NOTIMP)
        self.assertEqual(answer.opcode(), dns.opcode.NOTIFY)
        update = dns.update.UpdateMessage("synth.test.")
        update.add("a.synth.test.", 300, "A", "127.0.0.2")
        answer = await self.tcp(update.to_wire())
        self.assertEqual(answer.rcode(), dns.rcode.NOTIMP)

    async def test_qdcount_zero_and_two(self) -> None:
        empty = dns.message.Message()
        answer = await self.udp(empty)
        self.assertEqual(answer.rcode(), dns.rcode.FORMERR)
        two = query("a.synth.test.")
        two.question.append(query("b.synth.test.").question[0])
        answer = await self.udp(two)
        self.assertEqual(answer.rcode(), dns.rcode.FORMERR)
        self.assertEqual(self.engine.namespace["synth"].seen, [])

    async def test_axfr_refused(self) -> None:
        for send in (self.udp, self.tcp):
            answer = await send(query("synth.test.", "AXFR"))
            self.assertEqual(answer.rcode(), dns.rcode.REFUSED)
        answer = await self.tcp(query("synth.test.", "IXFR"))
        self.assertEqual(answer.rcode(), dns.rcode.REFUSED)

    async def test_chaos_refused(self) -> None:
        answer = await self.udp(query("version.bind.", "TXT", rdclass=dns.rdataclass.CH))
        self.assertEqual(answer.rcode(), dns.rcode.REFUSED)

    async def test_answer_section_in_query_is_formerr(self) -> None:
        bogus = query("a.synth.test.")
        bogus.answer.append(dns.rrset.from_text("a.synth.test.", 1, "IN", "A", "127.0.0.9"))
        answer = await self.udp(bogus)
        self.assertEqual(answer.rcode(), dns.rcode.FORMERR)


class PipelineTests(ServerCase):
    async def test_out_of_order(self) -> None:
        """Three queries in one write, the first slow: the other two are answered first."""
        slow, one, two = (query(n) for n in ("slow.synth.test.", "one.synth.test.",
                                              "two.synth.test."))
        one.id, two.id, slow.id = 1, 2, 3

        def exchange() -> list[int]:
            with tcp_connect(self.server) as s:
                s.sendall(b"".join(frame(q.to_wire()) for q in (slow, one, two)))
                return [dns.message.from_wire(tcp_read_message(s)).id  # type: ignore[arg-type]
                        for _ in range(3)]

        ids = await self.client(exchange)
        self.assertEqual(ids, [1, 2, 3])

    async def test_split_writes(self) -> None:
        """A message may arrive a byte at a time, and two in one segment."""
        data = frame(query("split.synth.test.").to_wire()) * 2

        def exchange() -> list[bytes | None]:
            with tcp_connect(self.server) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for i in range(len(data) // 2):
                    s.sendall(data[i:i + 1])
                    time.sleep(0.001)
                s.sendall(data[len(data) // 2:])
                return [tcp_read_message(s), tcp_read_message(s)]

        answers = await self.client(exchange)
        for answer in answers:
            self.assertEqual(dns.message.from_wire(answer).rcode(),  # type: ignore[arg-type]
                             dns.rcode.NOERROR)


class IdleTimeoutTests(ServerCase):
    def configure(self, net: Net) -> None:
        net.tcp_idle_timeout = 0.3

    async def test_idle_connection_closed(self) -> None:
        def idle() -> tuple[bytes | None, bytes | None]:
            with tcp_connect(self.server, timeout=5) as s:
                s.sendall(frame(query("a.synth.test.").to_wire()))
                first = tcp_read_message(s)
                return first, tcp_read_message(s)  # nothing more comes: the server closes

        first, then = await self.client(idle)
        self.assertIsNotNone(first)
        self.assertIsNone(then)


    async def test_not_idle_while_answering(self) -> None:
        """RFC 7766 6.2.3: a connection with a query in flight is not idle."""
        def slow() -> bytes | None:
            with tcp_connect(self.server, timeout=5) as s:
                s.sendall(frame(query("slow.synth.test.").to_wire()))  # 0.4 s > 0.3 s
                return tcp_read_message(s)

        answer = await self.client(slow)
        self.assertIsNotNone(answer, "closed as idle while a query was being answered")


class ConnectionCapTests(ServerCase):
    def configure(self, net: Net) -> None:
        net.tcp_max_connections = 2

    async def test_third_connection_closed(self) -> None:
        def connect() -> tuple[bytes | None, list[bytes | None]]:
            held = [tcp_connect(self.server) for _ in range(2)]
            try:
                try:
                    with tcp_connect(self.server) as third:
                        refused = tcp_read_message(third)
                except ConnectionResetError:
                    refused = None  # the reset can reach the client before connect() returns
                answers = []
                for s in held:
                    s.sendall(frame(query("a.synth.test.").to_wire()))
                    answers.append(tcp_read_message(s))
                return refused, answers
            finally:
                for s in held:
                    s.close()

        refused, answers = await self.client(connect)
        self.assertIsNone(refused)
        self.assertEqual(len([a for a in answers if a is not None]), 2)
        self.assertEqual(self.metric("request.tcp_refused"), 1)


class UDPSendTests(unittest.TestCase):
    """Answers go out through the port's socket; a send that fails loses one answer only."""

    class _Socket:
        def __init__(self, error: OSError | None) -> None:
            self.error = error
            self.sent: list[tuple[bytes, Any]] = []

        def sendto(self, data: bytes, addr: Any) -> int:
            if self.error is not None:
                raise self.error
            self.sent.append((data, addr))
            return len(data)

    class _Transport:
        def __init__(self, sock: Any) -> None:
            self.socket = sock

    class _Handler:
        def __init__(self) -> None:
            self.metrics: dict[str, int] = {}

        def receive(self, data: bytes, src: Any, dst: Any, transport: str) -> bytes:
            return b"answer to " + data

        def count(self, key: str, n: int = 1) -> None:
            self.metrics[key] = self.metrics.get(key, 0) + n

    def protocol(self, error: OSError | None = None, turn: Any = None) -> tuple[Any, Any, Any]:
        from kresolver.server.udp import DNSDatagramProtocol

        handler, sock = self._Handler(), self._Socket(error)
        proto = DNSDatagramProtocol(handler, ("127.0.40.1", 53), turn)
        proto.makeConnection(self._Transport(sock))
        return proto, handler, sock

    def test_answers_of_a_turn_go_out_together_at_its_end(self) -> None:
        from twisted.internet.task import Clock

        from kresolver.server.turn import TurnQueue

        clock = Clock()
        turn = TurnQueue(clock)
        proto, _handler, sock = self.protocol(turn=turn)
        proto.datagramReceived(b"q1", ("127.0.40.9", 5353))
        proto.datagramReceived(b"q2", ("127.0.40.8", 5354))
        self.assertEqual(sock.sent, [])  # the reactor is still handling this turn
        self.assertEqual(len(clock.getDelayedCalls()), 1)  # one flush for the turn
        clock.advance(0)
        self.assertEqual(sock.sent, [(b"answer to q1", ("127.0.40.9", 5353)),
                                     (b"answer to q2", ("127.0.40.8", 5354))])
        self.assertEqual(len(turn), 0)
        proto.datagramReceived(b"q3", ("127.0.40.9", 5353))  # the next turn: a new flush
        clock.advance(0)
        self.assertEqual(sock.sent[-1], (b"answer to q3", ("127.0.40.9", 5353)))

    def test_a_failed_send_in_a_turn_loses_only_that_answer(self) -> None:
        from twisted.internet.task import Clock

        from kresolver.server.turn import TurnQueue

        clock = Clock()
        proto, handler, _sock = self.protocol(BlockingIOError(), TurnQueue(clock))
        proto.datagramReceived(b"q1", ("127.0.40.9", 5353))
        proto.datagramReceived(b"q2", ("127.0.40.9", 5353))
        clock.advance(0)
        self.assertEqual(handler.metrics, {"answer.unsent": 2})

    def test_answers_queued_when_the_port_closes_are_dropped(self) -> None:
        from twisted.internet.task import Clock

        from kresolver.server.turn import TurnQueue

        clock = Clock()
        proto, handler, sock = self.protocol(turn=TurnQueue(clock))
        proto.datagramReceived(b"q1", ("127.0.40.9", 5353))
        proto.doStop()
        clock.advance(0)
        self.assertEqual(sock.sent, [])
        self.assertEqual(handler.metrics, {})


    def test_answer_sent_to_the_asker(self) -> None:
        proto, handler, sock = self.protocol()
        proto.datagramReceived(b"q1", ("127.0.40.9", 5353))
        self.assertEqual(sock.sent, [(b"answer to q1", ("127.0.40.9", 5353))])
        self.assertEqual(handler.metrics, {})

    def test_full_send_buffer_loses_the_answer_and_counts_it(self) -> None:
        for error in (BlockingIOError(), ConnectionRefusedError(), OSError(90, "too long")):
            proto, handler, _ = self.protocol(error)
            proto.datagramReceived(b"q1", ("127.0.40.9", 5353))
            proto.datagramReceived(b"q2", ("127.0.40.9", 5353))
            self.assertEqual(handler.metrics, {"answer.unsent": 2})


class TurnQueueTests(unittest.TestCase):
    """Calls queued in a turn run in order at its end; one that raises stops no other."""

    def test_order_and_errors(self) -> None:
        from twisted.internet.task import Clock

        from kresolver.server.turn import TurnQueue

        clock = Clock()
        turn = TurnQueue(clock)
        done: list[int] = []
        turn.later(done.append, 1)
        turn.later(lambda: 1 / 0)
        turn.later(done.append, 2)
        self.assertEqual((done, len(turn)), ([], 3))
        clock.advance(0)
        self.assertEqual(done, [1, 2])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(clock.getDelayedCalls(), [])

class FastQueryMemoTests(unittest.TestCase):
    """The handler remembers what fast_query() made of a query by all but its ID."""

    def setUp(self) -> None:
        from kresolver.server.handler import QueryHandler
        from kresolver.wire import fast_query

        self.engine = Engine(reactor)
        self.handler = QueryHandler(self.engine)
        query = dns.message.make_query("www.memo.lab.", "A", use_edns=0)
        answer = dns.message.make_response(query)
        answer.answer.append(
            dns.rrset.from_text("www.memo.lab.", 300, "IN", "A", "192.0.2.7")
        )
        fast = fast_query(query.to_wire())
        assert fast is not None
        self.engine.answers.store(fast, answer.to_wire())

    def ask(self, name: str, qid: int) -> dns.message.Message:
        query = dns.message.make_query(name, "A", use_edns=0)
        query.id = qid
        wire = self.handler.receive(query.to_wire(), ("127.0.40.9", 5353), None, "udp")
        assert isinstance(wire, bytes)
        return dns.message.from_wire(wire)

    def test_each_query_gets_its_own_id_and_case(self) -> None:
        for qid, name in ((1, "www.memo.lab."), (2, "www.memo.lab."), (3, "WwW.mEmO.lab.")):
            answer = self.ask(name, qid)
            self.assertEqual(answer.id, qid)
            self.assertEqual(answer.question[0].name.to_text(), name)
            self.assertEqual(answer.answer[0][0].to_text(), "192.0.2.7")
        # the two spellings are two entries; the IDs share one
        self.assertEqual(len(self.handler._fast), 2)

    def test_bounded(self) -> None:
        from kresolver.server import handler

        for i in range(handler._FAST_MEMO_SIZE + 10):
            self.handler.receive(
                dns.message.make_query(f"n{i}.memo.lab.", "A").to_wire(), None, None, "udp"
            )
            self.assertLessEqual(len(self.handler._fast), handler._FAST_MEMO_SIZE)


class LatencyBucketTests(unittest.TestCase):
    """An answer counts in the first of the seed's latency buckets it fits in."""

    def test_bounds(self) -> None:
        from kresolver.server.handler import bucket

        cases = {0.0: "answer.1ms", 1.0: "answer.1ms", 1.001: "answer.10ms",
                 10.0: "answer.10ms", 10.5: "answer.50ms", 250.0: "answer.250ms",
                 1500.0: "answer.1500ms", 1500.01: "answer.slow", 1e9: "answer.slow"}
        for latency, name in cases.items():
            self.assertEqual(bucket(latency), name, latency)
