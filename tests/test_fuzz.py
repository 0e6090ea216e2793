"""Nothing a client sends can crash the server: random and mutated packets (hypothesis).

Two levels: L{QueryHandler.receive} is called directly with many examples (it must
return bytes, None or a Deferred, and never raise), and a running engine gets random and
mutated packets over real UDP and TCP sockets, after which a normal query must still be
answered.
"""

from __future__ import annotations

import socket
import struct

import dns.message
import dns.rcode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from kresolver.engine import Engine
from tests.support import (
    SYNTH_DROPIN,
    frame,
    install_dropins,
    query,
    tcp_connect,
    tcp_exchange,
    udp_exchange,
)

ADDRESS = "127.0.40.2"

#: well-formed queries the mutations start from
SEEDS = [
    query("a.synth.test.").to_wire(),
    query("big.synth.test.", "TXT", use_edns=0, payload=4096).to_wire(),
    query("nx.synth.test.", "AAAA", want_dnssec=True).to_wire(),
    query("slow.synth.test.", use_edns=False).to_wire(),
    query("fail.synth.test.").to_wire(),
    query("synth.test.", "AXFR").to_wire(),
    query("elsewhere.example.", "MX", use_edns=1).to_wire(),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid query with a few things broken: bytes flipped, cut, extended, counts
    changed, or a compression pointer (possibly looping) put into the question."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "extend", "counts", "pointer",
                                     "opcode", "label"]))
        if kind == "flip" and data:
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[draw(st.integers(0, len(data))):]
        elif kind == "extend":
            data += draw(st.binary(min_size=1, max_size=64))
        elif kind == "counts" and len(data) >= 12:
            at = draw(st.sampled_from([4, 6, 8, 10]))
            struct.pack_into(">H", data, at, draw(st.sampled_from([0, 1, 2, 3, 255, 65535])))
        elif kind == "pointer" and len(data) >= 14:
            at = draw(st.integers(12, len(data) - 2))
            target = draw(st.sampled_from([12, at, at - 2, 0, 0x3FFF]))
            struct.pack_into(">H", data, at, 0xC000 | max(0, target) & 0x3FFF)
        elif kind == "opcode" and len(data) >= 3:
            data[2] = (data[2] & 0x87) | draw(st.integers(0, 15)) << 3
        elif kind == "label" and len(data) >= 13:
            data[12] = draw(st.sampled_from([0, 63, 64, 0x40, 0x80, 0xFF]))
    return bytes(data)


packets = st.one_of(st.binary(max_size=600), mutated())


class HandlerFuzzTests(unittest.TestCase):
    """L{QueryHandler.receive} straight, without sockets: many examples quickly."""

    def setUp(self) -> None:
        install_dropins(self, {"kt_fuzz_handler": SYNTH_DROPIN})
        self.engine = Engine(reactor)
        self.engine.modules.load("synth")
        self.handler = self.engine.net.handler
        self.pending: list[Deferred[bytes | None]] = []

    @settings(max_examples=3000, deadline=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow])
    @given(data=packets, transport=st.sampled_from(["udp", "tcp"]))
    def test_receive_never_raises(self, data: bytes, transport: str) -> None:
        result = self.handler.receive(data, ("127.0.40.250", 5300), (ADDRESS, 53), transport)
        if isinstance(result, Deferred):
            self.pending.append(result)
            return
        self.assertIsInstance(result, bytes | None)
        if result is not None:
            self.assertGreaterEqual(len(result), 12)
            self.assertEqual(result[:2], data[:2])
            self.assertTrue(result[2] & 0x80, "an answer must have QR set")
            if transport == "udp":
                self.assertLessEqual(len(result), max(512, self.engine.net.udp_payload))

    def tearDown(self) -> Deferred[None] | None:
        # the synthetic layer's failures are logged on purpose; anything else fails the test
        self.flushLoggedErrors(RuntimeError)
        if not self.pending:
            return None
        waiting: Deferred[None] = Deferred()
        results: list[object] = []

        def check(result: object) -> object:
            results.append(result)
            if len(results) == len(self.pending):
                waiting.callback(None)
            return result

        for d in self.pending:
            d.addBoth(check)
        return waiting.addCallback(self.check_pending, results)

    def check_pending(self, _: None, results: list[object]) -> None:
        for result in results:
            self.assertIsInstance(result, bytes | None)


class ServerFuzzTests(unittest.TestCase):
    """A running engine on real sockets, then a normal query over UDP and TCP."""

    def setUp(self) -> None:
        install_dropins(self, {"kt_fuzz_server": SYNTH_DROPIN})
        self.engine = Engine(reactor)
        self.engine.run_config(f"modules = ['synth']\nnet.listen('{ADDRESS}', 0)")
        self.engine.startService()
        self.addCleanup(self.engine.stopService)
        self.server = self.engine.net.addresses[0]

    def blast(self, udp: list[bytes], tcp: list[list[bytes]]) -> None:
        """Runs in a thread: send every packet, and every TCP batch on its own connection."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.40.251", 0))
            for data in udp:
                s.sendto(data, self.server)
        for batch in tcp:
            with tcp_connect(self.server) as c:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                for data in batch:
                    # some frames lie about their length: the length prefix is data too
                    c.sendall(frame(data) if data[:1] != b"\xff" else data)

    def still_answers(self) -> None:
        for exchange in (udp_exchange, tcp_exchange):
            answer = exchange(self.server, query("alive.synth.test.").to_wire())
            assert answer is not None, f"{exchange.__name__}: no answer after the fuzzing"
            message = dns.message.from_wire(answer)
            assert message.rcode() == dns.rcode.NOERROR, message

    async def test_random_and_mutated_packets(self) -> None:
        udp: list[bytes] = []
        tcp: list[list[bytes]] = []

        @settings(max_examples=300, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(data=st.lists(packets, min_size=1, max_size=4))
        def collect(data: list[bytes]) -> None:
            udp.extend(d for d in data if d)
            tcp.append(data)

        collect()
        await deferToThread(self.blast, udp, tcp)
        await deferToThread(self.still_answers)
        self.assertGreater(self.engine.metrics.get("request.total", 0), 100)
        # let the slow answers still in flight finish before the engine stops
        waiting: Deferred[None] = Deferred()
        reactor.callLater(0.5, waiting.callback, None)
        await waiting
        self.flushLoggedErrors(RuntimeError)
