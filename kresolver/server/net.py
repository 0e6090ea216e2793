"""The ``net`` object of the config: where kresolver listens and how it talks upstream.

Names follow kresd: ``net.listen(addr, port, kind='dns')``, ``net.close(addr, port)``,
``net.list()``, ``net.outgoing_v4(addr)``, ``net.ipv4 = False``, ``net.bufsize(1232)``.
Before the engine starts, ``listen`` only records the address (twistd binds them all at
start, so a port it may not bind stops it with one clear line); afterwards it binds at
once, so the console can add listeners to a running resolver.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import CannotListenError

from kresolver.logging import KLogger as Logger
from kresolver.server.handler import QueryHandler
from kresolver.server.tcp import DNSStreamFactory
from kresolver.server.udp import DNSDatagramProtocol

log = Logger()

KINDS = ("dns",)


class ListenError(Exception):
    """A listening socket could not be opened; the message names the address."""


def parse_address(text: str, default_port: int = 53) -> tuple[str, int]:
    """``'127.0.0.1'``, ``'127.0.0.1@5353'``, ``'::1@5353'`` or ``'[::1]:5353'`` -> (ip, port)."""
    text = text.strip()
    port = default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = int(rest.lstrip(":@"))
    elif "@" in text:
        host, _, port_text = text.rpartition("@")
        port = int(port_text)
    else:
        host = text
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address (use ADDR or ADDR@PORT)") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range in {text!r}")
    return host, port


class Endpoint:
    """One listening address: a UDP port and a TCP port with the same number."""

    def __init__(self, address: str, port: int, kind: str) -> None:
        self.address = address
        self.port = port
        self.kind = kind
        self.ports: list[Any] = []

    @property
    def bound(self) -> bool:
        return bool(self.ports)

    def describe(self) -> dict[str, Any]:
        return {
            "transport": {"ip": self.address, "port": self.port, "family": self.family,
                          "protocols": ["udp", "tcp"]},
            "kind": self.kind,
            "bound": self.bound,
        }

    @property
    def family(self) -> str:
        return "inet6" if ":" in self.address else "inet4"


class Net:
    """Listening addresses and upstream transport settings."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self._endpoints: dict[tuple[str, int], Endpoint] = {}
        self._started = False
        self._outgoing: dict[int, str | None] = {4: None, 6: None}
        self._bufsize = 1232
        #: the EDNS payload we advertise and the cap on UDP answers: L{bufsize}, kept as a
        #: plain attribute in step with it (read on every answer; a property is a call)
        self.udp_payload = 1232
        self.handler = QueryHandler(engine)
        # ipv4, ipv6, upstream_port and the outgoing addresses live on the engine's
        # Upstream (when it has one), so a change here applies to the next upstream query.
        self._upstream_settings: dict[str, Any] = {"ipv4": True, "ipv6": True, "port": 53}
        #: TCP: seconds an idle connection stays open, open connections, queries in flight
        self.tcp_idle_timeout = 10.0
        self.tcp_max_connections = 1000
        self.tcp_pipeline = 100
        #: called after a listener is opened or closed (workers, web UI)
        self.on_change: list[Callable[[], None]] = []
        #: (address, port) -> (UDP fd, TCP fd) of sockets a parent process opened for this
        #: worker: bound by adopting them instead of binding anew (kresolver.server.workers)
        self.inherited: dict[tuple[str, int], tuple[int, int]] = {}

    # -- listening ------------------------------------------------------------------------

    def listen(self, addr: str | list[str], port: int = 53, kind: str = "dns") -> bool:
        """Listen on C{addr} (one address or a list), port C{port}, for C{kind}."""
        if kind not in KINDS:
            raise ValueError(f"unsupported kind {kind!r} (supported: {', '.join(KINDS)})")
        if isinstance(addr, list | tuple):
            return all(self.listen(one, port, kind) for one in addr)
        host, port = parse_address(addr, port)
        key = (host, port)
        if key in self._endpoints:
            return True
        endpoint = Endpoint(host, port, kind)
        if self._started:
            self._bind(endpoint)
        self._endpoints[key] = endpoint
        return True

    def close(self, addr: str, port: int = 53) -> bool:
        """Stop listening on C{addr}@C{port}; False if it was not a listener."""
        host, port = parse_address(addr, port)
        endpoint = self._endpoints.pop((host, port), None)
        if endpoint is None:
            return False
        self._unbind(endpoint)
        return True

    def list(self) -> list[dict[str, Any]]:
        """Every configured listener, as kresd's ``net.list()`` describes them."""
        return [endpoint.describe() for endpoint in self._endpoints.values()]

    def replace(self, addresses: list[tuple[str, int]]) -> None:
        """Forget the configured listeners and use C{addresses} (``--listen`` does this)."""
        for endpoint in list(self._endpoints.values()):
            self._unbind(endpoint)
        self._endpoints.clear()
        for host, port in addresses:
            self.listen(host, port)

    def _bind(self, endpoint: Endpoint) -> None:
        reactor = self._engine.reactor
        address = (endpoint.address, endpoint.port)
        inherited = self.inherited.get(address)
        family = socket.AF_INET6 if ":" in endpoint.address else socket.AF_INET
        try:
            if inherited is not None:  # a worker: the parent bound it (server/workers.py)
                udp = reactor.adoptDatagramPort(
                    inherited[0], family,
                    DNSDatagramProtocol(self.handler, address, self._engine.turn), 65535,
                )
            else:
                udp = reactor.listenUDP(
                    endpoint.port,
                    DNSDatagramProtocol(self.handler, address, self._engine.turn),
                    interface=endpoint.address,
                    maxPacketSize=65535,
                )
            port = udp.getHost().port
            endpoint.ports.append(udp)
            factory = DNSStreamFactory(
                self.handler,
                idle_timeout=self.tcp_idle_timeout,
                max_connections=self.tcp_max_connections,
                pipeline=self.tcp_pipeline,
            )
            if inherited is not None:
                endpoint.ports.append(reactor.adoptStreamPort(inherited[1], family, factory))
            else:
                endpoint.ports.append(
                    reactor.listenTCP(port, factory, interface=endpoint.address, backlog=128)
                )
            endpoint.port = port
        except CannotListenError as error:
            self._unbind(endpoint)
            reason = error.socketError
            why = getattr(reason, "strerror", None) or str(reason)
            raise ListenError(
                f"cannot listen on {endpoint.address}@{endpoint.port}: {why}"
            ) from None
        try:
            udp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        except OSError:
            pass
        log.info("listening on {addr}@{port}", addr=endpoint.address, port=endpoint.port)
        for callback in self.on_change:
            callback()

    def _unbind(self, endpoint: Endpoint) -> Deferred[Any]:
        ports, endpoint.ports = endpoint.ports, []
        waits = [d for d in (p.stopListening() for p in ports) if isinstance(d, Deferred)]
        return DeferredList(waits) if waits else succeed(None)

    def start(self) -> None:
        """Bind every configured listener (raises L{ListenError} on the first failure)."""
        self._started = True
        try:
            for endpoint in list(self._endpoints.values()):
                self._bind(endpoint)
        except ListenError:
            self.stop()
            raise

    def stop(self) -> Deferred[Any]:
        self._started = False
        return DeferredList([self._unbind(e) for e in self._endpoints.values()])

    @property
    def started(self) -> bool:
        return self._started

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(address, port) of every listener; bound ports are the real ones (port 0)."""
        return [(e.address, e.port) for e in self._endpoints.values()]

    # -- upstream -------------------------------------------------------------------------

    def outgoing_v4(self, addr: str | None = None) -> str | None:
        """Get or set the source address of IPv4 queries to upstream servers."""
        return self._outgoing_address(4, addr)

    def outgoing_v6(self, addr: str | None = None) -> str | None:
        """Get or set the source address of IPv6 queries to upstream servers."""
        return self._outgoing_address(6, addr)

    def _outgoing_address(self, version: int, addr: str | None) -> str | None:
        if addr is not None:
            if addr and ipaddress.ip_address(addr).version != version:
                raise ValueError(f"{addr!r} is not an IPv{version} address")
            self._outgoing[version] = addr or None
            upstream = getattr(self._engine, "upstream", None)
            if upstream is not None:
                setattr(upstream, f"outgoing_v{version}", addr or None)
        return self._outgoing[version]

    def _upstream_get(self, name: str) -> Any:
        upstream = getattr(self._engine, "upstream", None)
        if upstream is not None:
            return getattr(upstream, name)
        return self._upstream_settings[name]

    def _upstream_set(self, name: str, value: Any) -> None:
        self._upstream_settings[name] = value
        upstream = getattr(self._engine, "upstream", None)
        if upstream is not None:
            setattr(upstream, name, value)

    @property
    def ipv4(self) -> bool:
        """Use IPv4 to talk to upstream servers (kresd's ``net.ipv4``)."""
        return bool(self._upstream_get("ipv4"))

    @ipv4.setter
    def ipv4(self, value: bool) -> None:
        self._upstream_set("ipv4", bool(value))

    @property
    def ipv6(self) -> bool:
        """Use IPv6 to talk to upstream servers (kresd's ``net.ipv6``)."""
        return bool(self._upstream_get("ipv6"))

    @ipv6.setter
    def ipv6(self, value: bool) -> None:
        self._upstream_set("ipv6", bool(value))

    @property
    def upstream_port(self) -> int:
        """The port of authoritative servers (53; tests without root may change it)."""
        return int(self._upstream_get("port"))

    @upstream_port.setter
    def upstream_port(self, value: int) -> None:
        if not 1 <= int(value) <= 65535:
            raise ValueError(f"upstream_port must be within 1..65535, not {value}")
        self._upstream_set("port", int(value))

    def bufsize(self, size: int | None = None) -> int:
        """Get or set the largest UDP answer (EDNS payload), 512..65535; default 1232."""
        if size is not None:
            if not 512 <= int(size) <= 65535:
                raise ValueError(f"bufsize must be within 512..65535, not {size}")
            self._bufsize = self.udp_payload = int(size)
            self._engine.changed()
        return self._bufsize

    def __repr__(self) -> str:
        return f"net(listen={self.addresses})"
