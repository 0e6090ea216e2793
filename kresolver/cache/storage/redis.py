"""Redis as a cache shared by many resolvers, with txredisapi.

URIs (kresd's forms, plus client-side sharding):

    redis://127.0.0.1:6379              one server (port 6379 if left out)
    redis://9@127.0.0.1:6379            database 9
    redis:///tmp/redis.sock             a UNIX socket (redis://9@/tmp/redis.sock: database 9)
    redis://10.0.0.1:6379,10.0.0.2:6379 keys spread over several servers (consistent hash)

Every key is written with its TTL (``SET key value EX ttl``), so Redis expires entries by
itself; kresolver never prunes.  Give the server a memory bound and an eviction policy, or
it grows until the machine runs out:

    maxmemory 1gb
    maxmemory-policy volatile-ttl    # evict what expires soonest (all our keys have a TTL)
    # or allkeys-lru when the Redis holds nothing but this cache

Keys are ``kres:`` followed by the hex of the record cache's binary key, so a database
shared with other applications keeps them apart, and ``cache.clear()`` removes only
ours (SCAN + DEL, never FLUSHDB).

When one Redis is not enough:

- several masters: list them in the URI (above).  Each key goes to one server by a
  consistent hash ring (L{kresolver.cache.storage.ring}), so adding a server moves only a
  share of the keys; a lost server costs its share of the cache, not the answers.
  (txredisapi's own ShardedConnection hashes text keys only and its MGET is broken.)
- Redis Cluster: txredisapi does not follow MOVED/ASK redirections, so it cannot talk to
  a Cluster; use the sharded form over the same servers run as independent masters, or a
  cluster-aware proxy (Envoy's Redis proxy, twemproxy) and point the URI at the proxy.
- a replica set behind Sentinel: ``redis-sentinel://10.0.0.1:26379,10.0.0.2:26379/NAME``
  (``redis-sentinel://9@...`` for database 9) asks the Sentinels for the master of NAME
  and asks again on every reconnection, so a fail-over costs one reconnection (reads and
  writes stay local meanwhile); txredisapi's C{Sentinel} does the discovery.

txredisapi decodes replies unless told not to: C{charset=None} keeps values as bytes and
C{convertNumbers=False} stops a value that looks like a number coming back as an int.
The resolver never waits for Redis longer than L{TieredStorage}'s timeout; the client
reconnects by itself with a backoff capped at L{MAX_RECONNECT_DELAY} seconds.
"""

from __future__ import annotations

import math
import re
from typing import Any

import txredisapi
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from zope.interface import implementer

from kresolver.cache.storage.memory import MemoryStorage
from kresolver.cache.storage.ring import HashRing
from kresolver.interfaces import IAsyncStorage

NAMESPACE = "kres:"
DEFAULT_PORT = 6379
#: seconds a Redis reply may take before txredisapi drops the connection and reconnects
REPLY_TIMEOUT = 2.0
MAX_RECONNECT_DELAY = 2.0
#: keys per SCAN step and per DEL when clearing
SCAN_BATCH = 500

_DB = re.compile(r"^(\d+)@(.*)$")
_HOST = re.compile(r"^[A-Za-z0-9:][A-Za-z0-9.:-]*$")


def _redis_key(key: bytes) -> str:
    return NAMESPACE + key.hex()


@implementer(IAsyncStorage)
class RedisStorage:
    """L{IAsyncStorage} over txredisapi connection handlers, one per server.

    With several servers each key lives on one of them, chosen by a L{HashRing}
    (txredisapi's own sharded handler hashes text keys only, and its MGET is broken).
    """

    def __init__(self, connections: list[Any], uri: str, names: list[str] | None = None) -> None:
        self.connections = connections
        self.uri = uri
        self.ring = HashRing(connections, names or [str(i) for i in range(len(connections))])
        #: the Sentinel manager whose master this is (redis-sentinel://), closed with us
        self.sentinel: Any = None

    def get(self, key: bytes) -> Deferred[bytes | None]:
        return self.ring.node(key).get(_redis_key(key))

    def get_many(self, keys: list[bytes]) -> Deferred[dict[bytes, bytes]]:
        """One MGET per server holding some of C{keys}."""
        groups = self.ring.group(keys)

        def collect(results: list[tuple[list[bytes], list[bytes | None]]]) -> dict[bytes, bytes]:
            found = {}
            for asked, values in results:
                for key, value in zip(asked, values, strict=True):
                    if value is not None:
                        found[key] = value
            return found

        asking = []
        for index, asked in groups.items():
            names = [_redis_key(key) for key in asked]
            mget = self.connections[index].mget(names)
            asking.append(mget.addCallback(lambda values, asked=asked: (asked, values)))
        return gatherResults(asking, consumeErrors=True).addCallback(collect)

    def set(self, key: bytes, value: bytes, ttl: float) -> Deferred[Any]:
        node = self.ring.node(key)
        name = _redis_key(key)
        if ttl <= 0:
            return node.delete(name)
        return node.set(name, value, expire=max(1, math.ceil(ttl)))

    def delete(self, prefix: bytes) -> Deferred[int]:
        return self._delete_matching(_redis_key(prefix) + "*")

    def clear(self) -> Deferred[int]:
        return self._delete_matching(NAMESPACE + "*")

    @inlineCallbacks
    def _delete_matching(self, pattern: str) -> Any:
        """SCAN for C{pattern} on every server and delete what matches; how many went."""
        removed = 0
        for node in self.connections:
            cursor = 0
            while True:
                cursor, names = yield node.scan(cursor, pattern, SCAN_BATCH)
                if names:
                    removed += yield node.delete(names)
                if int(cursor) == 0:
                    break
        return removed

    @inlineCallbacks
    def usage(self) -> Any:
        count = 0
        for node in self.connections:
            count += int((yield node.dbsize()))
        return {"count": count}

    def close(self) -> Deferred[Any]:
        closing = [node.disconnect() for node in self.connections]
        if self.sentinel is not None:
            closing.append(self.sentinel.disconnect())
        return gatherResults(closing)


def parse_redis(rest: str) -> tuple[int | None, str | None, list[tuple[str, int]]]:
    """The text after ``redis://`` -> (database, socket path or None, [(host, port)])."""
    dbid = None
    match = _DB.match(rest)
    if match:
        dbid, rest = int(match.group(1)), match.group(2)
    if rest.startswith("/"):
        return dbid, rest, []
    if not rest:
        raise ValueError("redis:// needs HOST[:PORT] or a socket path, e.g. redis://127.0.0.1")
    servers = []
    for part in rest.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep:
            host, port = part.strip(), str(DEFAULT_PORT)
        host = host.strip("[]")
        if not _HOST.match(host) or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad Redis server {part!r} in redis://{rest}")
        servers.append((host, int(port)))
    return dbid, None, servers


class _ParseWholeReads:
    """Mixed into txredisapi's protocols: parse all of a read in one go.

    After each bulk value txredisapi hands the rest of the read back to the reactor
    (``callLater(0)``) before it parses on, so a read holding N values takes N reactor
    turns; a busy resolver's turns are long, and replies that arrived together were seen
    one per turn and timed out.  Here the rest is parsed in the same call, in a loop.
    """

    _rest = b""
    line_mode: int
    transport: Any

    def setLineMode(self, extra: bytes | str = b"") -> None:
        self.line_mode = 1
        if extra:
            self._rest += bytes(extra)

    def dataReceived(self, data: bytes, unpause: bool = False) -> Any:
        why = super().dataReceived(data, unpause)  # type: ignore[misc]
        while self._rest and not why and not (self.transport and self.transport.disconnecting):
            rest, self._rest = self._rest, b""
            why = super().dataReceived(rest)  # type: ignore[misc]
        return why


class _RedisProtocol(_ParseWholeReads, txredisapi.RedisProtocol):
    pass


class _SentinelRedisProtocol(_ParseWholeReads, txredisapi.SentinelRedisProtocol):
    """A connection to the master a Sentinel named, checking it still is the master."""

    def connectionMade(self) -> Any:
        def check_role(role: list[Any]) -> Any:
            kind = role[0].decode() if isinstance(role[0], bytes) else role[0]  # charset=None
            if self.factory.is_master and kind != "master":
                self.transport.loseConnection()
                return succeed(None)
            return txredisapi.RedisProtocol.connectionMade(self)

        if self.password is not None:
            self.auth(self.password, self.username)
        return self.role().addCallback(check_role)


class _SentinelFactory(txredisapi.SentinelConnectionFactory):
    protocol = _SentinelRedisProtocol


def _without_nagle(build: Any) -> Any:
    """Wrap a factory's buildProtocol so its TCP connections send at once: with Nagle's
    algorithm, small pipelined commands wait for delayed ACKs (40 ms a time under load)."""

    def build_protocol(addr: Any) -> Any:
        protocol = build(addr)

        def ready(connected: Any) -> Any:
            set_no_delay = getattr(protocol.transport, "setTcpNoDelay", None)
            if set_no_delay is not None:
                set_no_delay(True)
            return connected

        protocol.whenConnected().addCallback(ready)
        return protocol

    return build_protocol


def connect_redis(rest: str) -> RedisStorage:
    """Lazy, self-reconnecting connections to what C{rest} names (no I/O yet)."""
    dbid, path, servers = parse_redis(rest)
    common: dict[str, Any] = {
        "dbid": dbid, "reconnect": True, "charset": None, "convertNumbers": False,
        "replyTimeout": REPLY_TIMEOUT,
    }
    if path is not None:
        connections = [txredisapi.lazyUnixConnection(path, **common)]
        names = [path]
    else:
        connections = [
            txredisapi.lazyConnection(host, port, connectTimeout=1, **common)
            for host, port in servers
        ]
        names = [f"{host}:{port}" for host, port in servers]
    for connection in connections:
        factory = connection._factory
        factory.maxDelay = MAX_RECONNECT_DELAY
        factory.initialDelay = 0.1
        factory.protocol = _RedisProtocol  # before it connects: that is a reactor turn away
        factory.buildProtocol = _without_nagle(factory.buildProtocol)
    return RedisStorage(connections, f"redis://{rest}", names)


def connect_sentinel(rest: str) -> RedisStorage:
    """``[DB@]HOST:PORT[,HOST:PORT...]/SERVICE``: the master Sentinel names for SERVICE,
    followed through fail-overs (txredisapi asks the Sentinels again on each reconnection).
    """
    where, slash, service = rest.rpartition("/")
    if not slash or not service or not where:
        raise ValueError(f"redis-sentinel://{rest}: use redis-sentinel://HOST:PORT/SERVICE")
    dbid, path, sentinels = parse_redis(where)
    if path is not None:
        raise ValueError(f"redis-sentinel://{rest}: Sentinels are reached over TCP")
    manager = txredisapi.Sentinel(sentinels)
    manager.discovery_timeout = 2
    connection = manager.master_for(
        service, factory_class=_SentinelFactory, dbid=dbid, charset=None,
        convertNumbers=False, replyTimeout=REPLY_TIMEOUT,
    )
    factory = connection._factory
    factory.maxDelay = MAX_RECONNECT_DELAY
    factory.buildProtocol = _without_nagle(factory.buildProtocol)
    storage = RedisStorage([connection], f"redis-sentinel://{rest}", [service])
    storage.sentinel = manager
    return storage


def open_redis(rest: str, capacity: int, clock: Any) -> Any:
    """``redis://...`` -> the local memory layer of C{capacity} bytes in front of Redis."""
    from kresolver.cache.tiered import TieredStorage

    backend = connect_redis(rest)
    return TieredStorage(MemoryStorage(capacity, clock), backend, clock)


def open_sentinel(rest: str, capacity: int, clock: Any) -> Any:
    """``redis-sentinel://...`` -> the local memory layer in front of Sentinel's master."""
    from kresolver.cache.tiered import TieredStorage

    backend = connect_sentinel(rest)
    return TieredStorage(MemoryStorage(capacity, clock), backend, clock)
