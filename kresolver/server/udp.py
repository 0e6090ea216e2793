"""DNS over UDP (RFC 1035 4.2.1): one datagram in, at most one datagram out."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol

from kresolver.logging import KLogger as Logger

log = Logger()


class DNSDatagramProtocol(DatagramProtocol):
    """Hands each datagram to the engine's L{QueryHandler} and sends back what it says."""

    def __init__(self, handler: Any, address: tuple[str, int]) -> None:
        self.handler = handler
        self.address = address

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        try:
            answer = self.handler.receive(data, addr, self.address, "udp")
        except Exception:
            log.failure("query from {addr} crashed the UDP handler", addr=addr)
            self.handler.count("request.error")
            return
        if answer is None:
            return
        if isinstance(answer, Deferred):
            answer.addCallback(self._send, addr).addErrback(self._failed, addr)
        else:
            self.transport.write(answer, addr)

    def _send(self, answer: bytes | None, addr: Any) -> None:
        if answer is not None and self.transport is not None:
            self.transport.write(answer, addr)

    def _failed(self, failure: Any, addr: Any) -> None:
        log.failure("query from {addr} failed", failure, addr=addr)
        self.handler.count("request.error")
