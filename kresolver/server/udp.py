"""DNS over UDP (RFC 1035 4.2.1): one datagram in, at most one datagram out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.python.failure import Failure

from kresolver.logging import KLogger as Logger
from kresolver.server.turn import TurnQueue

log = Logger()


class DNSDatagramProtocol(DatagramProtocol):
    """Hands each datagram to the engine's L{QueryHandler} and sends back what it says.

    Answers go out through the port's socket directly: the address is the one the query
    came from on this very socket, so the checks C{Port.write} makes of it on every
    datagram (IPv4 or IPv6 text, the right family) can only pass, and cost a third of
    what sending does.  With a L{TurnQueue} they are sent at the end of the reactor's
    turn, together with the others of that turn (see L{kresolver.server.turn}): held in
    an outbox of this port's, which is one queued call per turn, not one per answer.
    """

    def __init__(
        self, handler: Any, address: tuple[str, int], turn: TurnQueue | None = None
    ) -> None:
        self.handler = handler
        self.address = address
        self._turn = turn
        self._sendto: Callable[[bytes, Any], int] | None = None
        #: the answers of this turn still to be sent, with their addresses
        self._outbox: list[tuple[bytes, Any]] = []

    def startProtocol(self) -> None:
        sock = getattr(self.transport, "socket", None)
        self._sendto = getattr(sock, "sendto", None)

    def stopProtocol(self) -> None:
        self._sendto = None

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        try:
            answer = self.handler.receive(data, addr, self.address, "udp")
        except Exception:
            log.failure("query from {addr} crashed the UDP handler", addr=addr)
            self.handler.count("request.error")
            return
        if answer is None:
            return
        if type(answer) is bytes or not isinstance(answer, Deferred):
            self._send(answer, addr)
        else:
            # one pair of callbacks, not a callback and then an errback: the errback then
            # sees only the resolution's failures, so _send reports its own
            answer.addCallbacks(self._send, self._failed, (addr,), None, (addr,))

    def _send(self, answer: bytes | None, addr: Any) -> None:
        if answer is None:
            return
        try:
            turn = self._turn
            if turn is not None:
                outbox = self._outbox
                outbox.append((answer, addr))
                if len(outbox) == 1:  # the first of the turn: the outbox goes at its end
                    turn.later(self._send_turn)
            else:
                self._send_now(answer, addr)
        except Exception:
            self._failed(Failure(), addr)

    def _send_turn(self) -> None:
        """The end of the turn: send the answers held in the outbox.  Each fails alone,
        as each did when it was a queued call of its own."""
        outbox, self._outbox = self._outbox, []
        if self.transport is None:  # the port closed meanwhile (doStop let go of it)
            return
        sendto = self._sendto
        for answer, addr in outbox:
            try:
                if sendto is None:  # no socket of its own: the transport's write
                    self._send_now(answer, addr)
                    continue
                try:
                    sendto(answer, addr)
                except OSError as error:
                    self._unsent(addr, error)
            except Exception:
                log.failure("answer to {addr} not sent", addr=addr)

    def _send_now(self, answer: bytes, addr: Any) -> None:
        if self.transport is None:  # the port closed meanwhile (doStop let go of it)
            return
        sendto = self._sendto
        if sendto is None:
            self.transport.write(answer, addr)
            return
        try:
            sendto(answer, addr)
        except OSError as error:
            self._unsent(addr, error)

    def _unsent(self, addr: Any, error: OSError) -> None:
        # The send buffer is full (a flood) or the client's host said it has nobody
        # listening: the answer is lost as a datagram may be, and the client retries.
        self.handler.count("answer.unsent")
        log.debug("answer to {addr} not sent: {error}", addr=addr, error=error)

    def _failed(self, failure: Any, addr: Any) -> None:
        log.failure("query from {addr} failed", failure, addr=addr)
        self.handler.count("request.error")
