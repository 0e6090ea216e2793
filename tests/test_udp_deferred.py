"""UDP answers that come later (a Deferred): sent, or the failure logged and counted.

The protocol adds one pair of callbacks to the handler's Deferred; a failure of the
resolution and a failure of the send itself must both end as C{request.error}, as they
did when the errback came after the callback.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial import unittest

from kresolver.server.udp import DNSDatagramProtocol
from tests import test_transport  # (its socket doubles; the module, so its tests stay there)

_Socket = test_transport.UDPSendTests._Socket
_Transport = test_transport.UDPSendTests._Transport


class _Handler:
    def __init__(self) -> None:
        self.metrics: dict[str, int] = {}
        self.pending: list[Deferred[bytes | None]] = []

    def receive(self, data: bytes, src: Any, dst: Any, transport: str) -> Deferred[Any]:
        d: Deferred[bytes | None] = Deferred()
        self.pending.append(d)
        return d

    def count(self, key: str, n: int = 1) -> None:
        self.metrics[key] = self.metrics.get(key, 0) + n


class DeferredAnswerTests(unittest.TestCase):
    def protocol(self, error: Exception | None = None) -> tuple[Any, _Handler, Any]:
        handler, sock = _Handler(), _Socket(error)
        proto = DNSDatagramProtocol(handler, ("127.0.40.1", 53))
        proto.makeConnection(_Transport(sock))
        return proto, handler, sock

    def test_sent_when_it_comes(self) -> None:
        proto, handler, sock = self.protocol(None)
        proto.datagramReceived(b"q", ("127.0.40.9", 5353))
        self.assertEqual(sock.sent, [])
        handler.pending[0].callback(b"a")
        self.assertEqual(sock.sent, [(b"a", ("127.0.40.9", 5353))])
        self.assertEqual(handler.metrics, {})

    def test_nothing_to_send(self) -> None:
        proto, handler, sock = self.protocol(None)
        proto.datagramReceived(b"q", ("127.0.40.9", 5353))
        handler.pending[0].callback(None)
        self.assertEqual((sock.sent, handler.metrics), ([], {}))

    def test_resolution_failure_counted(self) -> None:
        proto, handler, _sock = self.protocol(None)
        proto.datagramReceived(b"q", ("127.0.40.9", 5353))
        handler.pending[0].errback(RuntimeError("layer crashed"))
        self.assertEqual(handler.metrics, {"request.error": 1})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_send_failure_counted(self) -> None:
        """Not an OSError (which loses one datagram quietly): a bug, logged and counted."""
        proto, handler, _sock = self.protocol(TypeError("not bytes"))
        proto.datagramReceived(b"q", ("127.0.40.9", 5353))
        result: list[Any] = []
        handler.pending[0].callback(b"a")
        handler.pending[0].addBoth(result.append)
        self.assertEqual(result, [None])  # handled: nothing left unhandled in the Deferred
        self.assertEqual(handler.metrics, {"request.error": 1})
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_os_error_loses_one_answer(self) -> None:
        proto, handler, _sock = self.protocol(BlockingIOError())
        proto.datagramReceived(b"q", ("127.0.40.9", 5353))
        handler.pending[0].callback(b"a")
        self.assertEqual(handler.metrics, {"answer.unsent": 1})


class _PickySocket(_Socket):
    """Fails the sends to some ports: OSError (lost datagram) or another error (a bug)."""

    def __init__(self, failures: dict[int, Exception]) -> None:
        super().__init__(None)
        self.failures = failures

    def sendto(self, data: bytes, addr: Any) -> int:
        error = self.failures.get(addr[1])
        if error is not None:
            raise error
        self.sent.append((data, addr))
        return len(data)


class _WriteTransport:
    """A transport without a socket of its own: answers go through its write()."""

    def __init__(self, failures: dict[int, Exception]) -> None:
        self.written: list[tuple[bytes, Any]] = []
        self.failures = failures

    def write(self, data: bytes, addr: Any) -> None:
        error = self.failures.get(addr[1])
        if error is not None:
            raise error
        self.written.append((data, addr))


class _SyncHandler(_Handler):
    def receive(self, data: bytes, src: Any, dst: Any, transport: str) -> Any:
        return b"answer to " + data


class TurnOutboxTests(unittest.TestCase):
    """Answers held to the end of the turn go out in order; each fails alone."""

    def setUp(self) -> None:
        from twisted.internet.task import Clock

        from kresolver.server.turn import TurnQueue

        self.clock = Clock()
        self.turn = TurnQueue(self.clock)
        self.handler = _SyncHandler()
        self.proto = DNSDatagramProtocol(self.handler, ("127.0.40.1", 53), self.turn)

    def ask(self, *ports: int) -> None:
        for port in ports:
            self.proto.datagramReceived(b"q%d" % port, ("127.0.40.9", port))

    def test_each_fails_alone(self) -> None:
        sock = _PickySocket({2: BlockingIOError(), 3: TypeError("bug")})
        self.proto.makeConnection(_Transport(sock))
        self.ask(1, 2, 3, 4)
        self.assertEqual((sock.sent, len(self.clock.getDelayedCalls())), ([], 1))
        self.clock.advance(0)
        self.assertEqual(sock.sent, [(b"answer to q1", ("127.0.40.9", 1)),
                                     (b"answer to q4", ("127.0.40.9", 4))])
        self.assertEqual(self.handler.metrics, {"answer.unsent": 1})
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.ask(5)  # the next turn has an outbox of its own
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0)
        self.assertEqual(sock.sent[-1], (b"answer to q5", ("127.0.40.9", 5)))

    def test_transport_write(self) -> None:
        transport = _WriteTransport({2: OSError("no route"), 3: TypeError("bug")})
        self.proto.makeConnection(transport)
        self.ask(1, 2, 3, 4)
        self.clock.advance(0)
        self.assertEqual(transport.written, [(b"answer to q1", ("127.0.40.9", 1)),
                                             (b"answer to q4", ("127.0.40.9", 4))])
        self.assertEqual(len(self.flushLoggedErrors(OSError, TypeError)), 2)
        self.assertEqual(self.handler.metrics, {})

    def test_closed_port_drops_the_outbox(self) -> None:
        sock = _Socket(None)
        self.proto.makeConnection(_Transport(sock))
        self.ask(1, 2)
        self.proto.doStop()
        self.clock.advance(0)
        self.assertEqual((sock.sent, self.handler.metrics), ([], {}))
