"""DNS over TCP (RFC 7766): length-prefixed messages, pipelined, answered out of order.

Each connection may carry many queries at once; each is answered as soon as its own
resolution finishes.  Idle connections are closed, and so is a connection whose client
sends a length it never completes; the factory caps how many are open at once.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import TimeoutMixin

from kresolver.logging import KLogger as Logger

log = Logger()

_length = struct.Struct(">H")


class DNSStreamProtocol(Protocol, TimeoutMixin):
    """One client connection."""

    def __init__(self, factory: DNSStreamFactory) -> None:
        self.factory = factory
        self.buffer = b""
        self.pending = 0

    def connectionMade(self) -> None:
        self.factory.open += 1
        if self.factory.open > self.factory.max_connections:
            self.factory.handler.count("request.tcp_refused")
            self.transport.abortConnection()
            return
        self.setTimeout(self.factory.idle_timeout)
        peer = self.transport.getPeer()
        host = self.transport.getHost()
        self.peer = (peer.host, peer.port)
        self.host = (host.host, host.port)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.open -= 1
        self.setTimeout(None)

    def timeoutConnection(self) -> None:
        if self.pending:
            # RFC 7766 6.2.3: a connection waiting for our answers is not idle
            self.resetTimeout()
            return
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        buffer = self.buffer + data
        while len(buffer) >= 2:
            (size,) = _length.unpack_from(buffer)
            if len(buffer) < size + 2:
                break
            message, buffer = buffer[2 : size + 2], buffer[size + 2 :]
            self.query(message)
        self.buffer = buffer

    def query(self, message: bytes) -> None:
        if self.pending >= self.factory.pipeline:
            # RFC 7766 6.2.1.1: the client outruns us; stop reading until we catch up
            self.factory.handler.count("request.tcp_pipeline_full")
            self.transport.pauseProducing()
        self.pending += 1
        try:
            answer = self.factory.handler.receive(message, self.peer, self.host, "tcp")
        except Exception:
            log.failure("TCP query from {peer} crashed the handler", peer=self.peer)
            answer = None
        if isinstance(answer, Deferred):
            answer.addErrback(self._failed).addCallback(self.send)
        else:
            self.send(answer)

    def send(self, answer: bytes | None) -> None:
        self.pending -= 1
        self.resetTimeout()  # the idle time starts when the last answer leaves
        if self.pending < self.factory.pipeline:
            self.transport.resumeProducing()
        if answer is not None and self.transport.connected:
            self.transport.write(_length.pack(len(answer)) + answer)

    def _failed(self, failure: Any) -> None:
        log.failure("TCP query from {peer} failed", failure, peer=self.peer)
        return None


class DNSStreamFactory(Factory):
    """Makes L{DNSStreamProtocol}s for one listening address."""

    def __init__(self, handler: Any, idle_timeout: float = 10.0, max_connections: int = 1000,
                 pipeline: int = 100) -> None:
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.pipeline = pipeline
        self.open = 0

    def buildProtocol(self, addr: Any) -> DNSStreamProtocol:
        return DNSStreamProtocol(self)
