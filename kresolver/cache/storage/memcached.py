"""memcached as a cache shared by many resolvers, with Twisted's memcache protocol.

URIs follow kresd's libmemcached configuration strings:

    memcached://--SERVER=127.0.0.1:11211
    memcached://--SERVER=10.0.0.1:11211 --SERVER=10.0.0.2 --SOCKET="/run/memcached.sock"

Keys are spread over the servers by a consistent hash ring (ketama-style, as
libmemcached does), so a fleet of resolvers configured with the same list agree on where
each key lives, and losing one server costs only its share.  memcached evicts by itself
(LRU within its ``-m`` memory bound); every value is stored with its TTL.

memcached keys are at most 250 bytes of printable ASCII without spaces, and the record
cache's keys are binary: they go as ``k`` + base64url of the key, or, for the few keys
too long for that (names near 255 bytes), ``h`` + the SHA-256 of the key.  Values name
their own key (the record cache checks it), so even a hash collision could not serve one
name's data for another.

memcached cannot list keys: C{delete(prefix)} removes the one key equal to C{prefix}
(which is what the record cache's check of a bad value needs), and C{clear()} flushes
every server: give kresolver its own memcached instances.  ``cache.clear('name')``
therefore empties a subtree of the local layer and of memcached only for the exact keys;
the rest of the subtree ages out with its TTLs (memcached has no way to find it).
"""

from __future__ import annotations

import base64
import hashlib
import shlex
from typing import Any

from twisted.application.internet import ClientService
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.protocols.memcache import MemCacheProtocol
from zope.interface import implementer

from kresolver.cache.storage.memory import MemoryStorage
from kresolver.cache.storage.ring import HashRing
from kresolver.interfaces import IAsyncStorage

DEFAULT_PORT = 11211
MAX_KEY = 250
#: memcached reads expiry times above 30 days as absolute UNIX times
MAX_RELATIVE_TTL = 30 * 24 * 3600
#: seconds a request may wait for its reply before the connection is dropped and redone
REPLY_TIMEOUT = 2
MAX_RECONNECT_DELAY = 2.0


def memcached_key(key: bytes) -> bytes:
    """A memcached-safe key for the binary C{key}."""
    encoded = b"k" + base64.urlsafe_b64encode(key).rstrip(b"=")
    if len(encoded) <= MAX_KEY:
        return encoded
    return b"h" + hashlib.sha256(key).hexdigest().encode()


def _retry(attempt: int) -> float:
    return min(0.1 * 2**attempt, MAX_RECONNECT_DELAY)


class _Protocol(MemCacheProtocol):
    """Twisted's memcache client without Nagle's delays, and minus the reply timer it
    leaves behind on a lost connection (that timer would fire later to close a transport
    already gone)."""

    def connectionMade(self) -> None:
        super().connectionMade()
        # small requests must go at once, not wait for delayed ACKs (Nagle)
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)

    def connectionLost(self, reason: Any) -> None:
        self.setTimeout(None)
        super().connectionLost(reason)


class _Server:
    """One memcached: a connection that comes back by itself when lost."""

    def __init__(self, reactor: Any, description: str) -> None:
        self.description = description
        endpoint = endpoints.clientFromString(reactor, description)
        factory = Factory.forProtocol(lambda: _Protocol(timeOut=REPLY_TIMEOUT))
        self.service = ClientService(endpoint, factory, retryPolicy=_retry, clock=reactor)
        self.service.startService()

    def call(self, method: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
        connected = self.service.whenConnected(failAfterFailures=1)
        return connected.addCallback(lambda proto: getattr(proto, method)(*args, **kwargs))

    def close(self) -> Deferred[Any]:
        return self.service.stopService()


@implementer(IAsyncStorage)
class MemcachedStorage:
    """L{IAsyncStorage} over one or more memcached servers."""

    def __init__(self, reactor: Any, servers: list[str], uri: str) -> None:
        if not servers:
            raise ValueError(f"{uri}: name at least one --SERVER=host:port or --SOCKET=path")
        self.uri = uri
        self.servers = [_Server(reactor, description) for description in servers]
        self.ring = HashRing(self.servers, servers)

    def get(self, key: bytes) -> Deferred[bytes | None]:
        return self.ring.node(key).call("get", memcached_key(key)).addCallback(
            lambda flags_value: flags_value[1]
        )

    def get_many(self, keys: list[bytes]) -> Deferred[dict[bytes, bytes]]:
        """One ``get k1 k2 ...`` per server holding some of C{keys}."""
        asking = []
        for index, asked in self.ring.group(keys).items():
            by_name = {memcached_key(key): key for key in asked}
            d = self.servers[index].call("getMultiple", list(by_name))
            asking.append(d.addCallback(lambda found, by_name=by_name: {
                by_name[name]: value for name, (_, value) in found.items()
                if value is not None and name in by_name
            }))

        def merge(results: list[dict[bytes, bytes]]) -> dict[bytes, bytes]:
            merged: dict[bytes, bytes] = {}
            for found in results:
                merged.update(found)
            return merged

        return gatherResults(asking, consumeErrors=True).addCallback(merge)

    def set(self, key: bytes, value: bytes, ttl: float) -> Deferred[Any]:
        name = memcached_key(key)
        server = self.ring.node(key)
        if ttl <= 0:
            return server.call("delete", name)
        expire = min(max(1, int(ttl + 0.999)), MAX_RELATIVE_TTL)
        return server.call("set", name, value, expireTime=expire)

    def delete(self, prefix: bytes) -> Deferred[int]:
        """Only the key equal to C{prefix}: memcached cannot find keys by prefix."""
        if not prefix:
            return self.clear().addCallback(lambda _: 0)
        return self.ring.node(prefix).call("delete", memcached_key(prefix)).addCallback(int)

    def clear(self) -> Deferred[Any]:
        return gatherResults([server.call("flushAll") for server in self.servers])

    @inlineCallbacks
    def usage(self) -> Any:
        count = 0
        for server in self.servers:
            stats = yield server.call("stats")
            count += int(stats.get(b"curr_items", 0))
        return {"count": count}

    def close(self) -> Deferred[Any]:
        return gatherResults([server.close() for server in self.servers])


def parse_memcached(rest: str) -> list[str]:
    """``--SERVER=host[:port] --SOCKET="/path"`` -> Twisted client endpoint descriptions."""
    try:
        words = shlex.split(rest)
    except ValueError as error:
        raise ValueError(f"memcached://{rest}: {error}") from None
    servers = []
    for word in words:
        option, sep, value = word.partition("=")
        option = option.upper()
        if option == "--SERVER" and sep and value:
            host, colon, port = value.rpartition(":")
            if not colon or "]" in port:
                host, port = value, str(DEFAULT_PORT)
            host = host.strip("[]")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"bad memcached server {value!r}")
            servers.append(f"tcp:host={host.replace(':', chr(92) + ':')}:port={port}:timeout=1")
        elif option == "--SOCKET" and sep and value:
            servers.append(f"unix:path={value}:timeout=1")
        else:
            raise ValueError(
                f"unsupported memcached option {word!r} (use --SERVER=host:port or --SOCKET=path)"
            )
    if not servers:
        raise ValueError("memcached:// needs --SERVER=host:port or --SOCKET=path")
    return servers


def open_memcached(rest: str, capacity: int, clock: Any) -> Any:
    """``memcached://...`` -> the local memory layer of C{capacity} bytes before memcached."""
    from kresolver.cache.tiered import TieredStorage

    backend = MemcachedStorage(clock, parse_memcached(rest), f"memcached://{rest}")
    return TieredStorage(MemoryStorage(capacity, clock), backend, clock)
