"""Redis storage against a real redis-server on 127.0.90.10-11, and the local layer's faults."""

from __future__ import annotations

import time
from typing import Any

import dns.rrset
from twisted.internet import defer, reactor, task
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kresolver.cache.cache import Cache, Rank
from kresolver.cache.storage import open_storage
from kresolver.cache.storage.memory import MemoryStorage
from kresolver.cache.storage.redis import (
    RedisStorage,
    _RedisProtocol,
    connect_redis,
    parse_redis,
)
from kresolver.cache.tiered import TieredStorage
from kresolver.interfaces import IAsyncStorage, IStorage
from kresolver.testing.daemon import missing_software
from kresolver.testing.services import RedisServer, SentinelServer
from tests.storage_support import SharedCacheTests, wait_until

SKIP = missing_software("redis-server")


class ParseTests(unittest.TestCase):
    def test_forms(self) -> None:
        self.assertEqual(parse_redis("127.0.0.1:6379"), (None, None, [("127.0.0.1", 6379)]))
        self.assertEqual(parse_redis("9@127.0.0.1"), (9, None, [("127.0.0.1", 6379)]))
        self.assertEqual(parse_redis("/tmp/redis.sock"), (None, "/tmp/redis.sock", []))
        self.assertEqual(parse_redis("3@/tmp/r.sock"), (3, "/tmp/r.sock", []))
        self.assertEqual(
            parse_redis("10.0.0.1:1,10.0.0.2:2"), (None, None, [("10.0.0.1", 1), ("10.0.0.2", 2)])
        )
        self.assertEqual(parse_redis("[::1]:6380"), (None, None, [("::1", 6380)]))

    def test_errors(self) -> None:
        for bad in ("", "host:port", "127.0.0.1:99999", "x@127.0.0.1", ":6379"):
            self.assertRaises(ValueError, parse_redis, bad)


class ProtocolTests(unittest.TestCase):
    def test_one_read_of_many_replies_is_parsed_at_once(self) -> None:
        # txredisapi alone parses one bulk value per reactor turn; under load that made
        # replies that had arrived time out
        protocol = _RedisProtocol(charset=None, convertNumbers=False)
        protocol.makeConnection(StringTransport())
        replies = [protocol.get("a"), protocol.get("b"), protocol.mget(["a", "b"])]
        protocol.dataReceived(b"$3\r\nx\r\n\r\n$2\r\n12\r\n*2\r\n$1\r\nq\r\n$-1\r\n")
        self.assertEqual([self.successResultOf(d) for d in replies],
                         [b"x\r\n", b"12", [b"q", None]])


@implementer(IAsyncStorage)
class _Backend:
    """A backend whose calls the test answers (or never answers) by hand."""

    uri = "fake://"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.pending: list[defer.Deferred[Any]] = []

    def _call(self, name: str, arg: Any) -> defer.Deferred[Any]:
        self.calls.append((name, arg))
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending.append(d)
        return d

    def get(self, key: bytes) -> defer.Deferred[Any]:
        return self._call("get", key)

    def get_many(self, keys: list[bytes]) -> defer.Deferred[Any]:
        return self._call("get_many", keys)

    def set(self, key: bytes, value: bytes, ttl: float) -> defer.Deferred[Any]:
        return self._call("set", key)

    def delete(self, prefix: bytes) -> defer.Deferred[Any]:
        return self._call("delete", prefix)

    def clear(self) -> defer.Deferred[Any]:
        return self._call("clear", None)

    def usage(self) -> defer.Deferred[Any]:
        return defer.succeed({"count": 0})

    def close(self) -> defer.Deferred[Any]:
        return defer.succeed(None)


class TieredTests(unittest.TestCase):
    """The local layer's rules, with a backend the test drives and a fake clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.backend = _Backend()
        self.metrics: dict[str, int] = {}
        self.storage = TieredStorage(
            MemoryStorage(1024 * 1024, self.clock), self.backend, self.clock,
            max_writes=3, metrics=self.metrics,
        )

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IStorage, self.storage))
        self.assertTrue(verifyObject(IAsyncStorage, self.backend))

    def test_reads_are_local_writes_go_to_both(self) -> None:
        self.storage.set(b"k", b"v", 10)
        self.assertEqual(self.storage.get(b"k"), b"v")
        self.assertEqual(self.backend.calls, [("set", b"k")])
        self.assertIsNone(self.storage.get(b"other"))
        self.assertEqual(len(self.backend.calls), 1)  # a plain miss costs no round trip

    def test_fetch_fills_local(self) -> None:
        self.storage.set(b"have", b"v", 10)
        self.backend.pending[-1].callback(True)
        fetching = self.storage.fetch([b"have", b"a", b"b"])
        self.assertEqual(self.backend.calls[-1], ("get_many", [b"a", b"b"]))
        self.backend.pending[-1].callback({b"a": b"from backend"})
        self.assertEqual(self.successResultOf(fetching), 1)
        self.assertEqual(self.storage.get(b"a"), b"from backend")
        # b was asked a moment ago: asking again now would only repeat the miss
        self.assertIsNone(self.storage.fetch([b"a", b"b"]))
        self.clock.advance(2)
        self.assertIsNotNone(self.storage.fetch([b"b"]))

    def test_concurrent_fetches_of_a_key_share_one_round_trip(self) -> None:
        first = self.storage.fetch([b"a"])
        second = self.storage.fetch([b"a", b"b"])
        third = self.storage.fetch([b"a"])
        self.assertEqual([c for c in self.backend.calls if c[0] == "get_many"],
                         [("get_many", [b"a"]), ("get_many", [b"b"])])
        self.assertNoResult(third)
        self.backend.pending[0].callback({b"a": b"v"})
        self.assertEqual(self.successResultOf(first), 1)
        self.assertEqual(self.successResultOf(third), 0)
        self.assertEqual(self.storage.get(b"a"), b"v")  # what the waiters look up next
        self.assertNoResult(second)  # b is still on its way
        self.backend.pending[1].callback({})
        self.successResultOf(second)
        self.assertEqual(self.storage._waiters, {})

    def test_slow_backend_times_out_and_rests(self) -> None:
        for i in range(5):  # one slow reply is not enough to give up on the backend
            self.assertTrue(self.storage.available)
            fetching = self.storage.fetch([b"a%d" % i])
            self.assertNoResult(fetching)
            self.clock.pump([0, 0.05])
            self.assertEqual(self.successResultOf(fetching), 0)
        self.assertEqual(self.metrics["cache.backend_timeouts"], 5)
        # resting: no reads asked, writes dropped and counted, answers stay local
        self.assertIsNone(self.storage.fetch([b"c"]))
        self.storage.set(b"k", b"v", 10)
        self.assertEqual(self.storage.get(b"k"), b"v")
        self.assertEqual(self.metrics["cache.backend_dropped"], 1)
        self.clock.advance(1)
        self.assertIsNotNone(self.storage.fetch([b"c"]))

    def test_time_spent_before_sending_does_not_count(self) -> None:
        fetching = self.storage.fetch([b"a"])
        self.clock.advance(0.2)  # this turn went on answering other queries for 200 ms
        self.assertNoResult(fetching)
        self.backend.pending[-1].callback({b"a": b"v"})
        self.assertEqual(self.successResultOf(fetching), 1)
        self.assertNotIn("cache.backend_timeouts", self.metrics)

    def test_errors_are_counted_and_a_success_resets_the_run(self) -> None:
        for i in range(4):
            fetching = self.storage.fetch([b"a%d" % i])
            self.backend.pending[-1].errback(ConnectionError("refused"))
            self.assertEqual(self.successResultOf(fetching), 0)
        self.assertEqual(self.metrics["cache.backend_errors"], 4)
        self.assertEqual(self.storage.usage()["backend_errors"], 4)
        fetching = self.storage.fetch([b"b"])
        self.backend.pending[-1].callback({})
        self.assertEqual(self.storage.failures_in_a_row, 0)
        fetching = self.storage.fetch([b"c"])
        self.backend.pending[-1].errback(ConnectionError("refused"))
        self.assertTrue(self.storage.available)

    def test_writes_in_flight_are_bounded(self) -> None:
        for i in range(5):
            self.storage.set(b"k%d" % i, b"v", 10)
        self.assertEqual(self.storage.writes_in_flight, 3)
        self.assertEqual(self.metrics["cache.backend_dropped"], 2)
        for d in self.backend.pending:
            d.callback(True)
        self.assertEqual(self.storage.writes_in_flight, 0)
        for i in range(5):
            self.assertEqual(self.storage.get(b"k%d" % i), b"v")  # local copies all kept

    def test_write_timeout_frees_the_slot(self) -> None:
        self.storage.set(b"k", b"v", 10)
        self.clock.pump([0, 1.0])  # the clock starts when the request goes out
        self.assertEqual(self.storage.writes_in_flight, 0)
        self.assertEqual(self.metrics["cache.backend_timeouts"], 1)
        self.assertEqual(self.storage.failures_in_a_row, 1)

    def test_record_cache_fetch(self) -> None:
        cache = Cache(self.clock, self.storage)
        fetching = cache.fetch("www.example.", "A")
        name, asked = self.backend.calls[-1]
        self.assertEqual(name, "get_many")
        # the data, a CNAME, and NXDOMAIN of the name and of each ancestor up to the root
        self.assertEqual(len(asked), 2 + 3)
        self.backend.pending[-1].callback({})
        self.assertEqual(self.successResultOf(fetching), 0)
        cache.put_rrset(dns.rrset.from_text("www.example.", 60, "IN", "A", "192.0.2.1"),
                        Rank.AUTH_ANSWER)
        self.clock.advance(2)
        self.assertIsNone(cache.fetch("www.example.", "A"))  # a local hit never waits
        self.assertIsNone(Cache(self.clock).fetch("www.example.", "A"))  # memory only

    def test_delete_and_clear_reach_the_backend(self) -> None:
        self.storage.set(b"ab", b"v", 10)
        self.assertEqual(self.storage.delete(b"a"), 1)
        self.storage.clear()
        self.assertEqual([c[0] for c in self.backend.calls], ["set", "delete", "clear"])


class RedisStorageTests(unittest.TestCase):
    skip = SKIP

    def setUp(self) -> None:
        self.server = RedisServer()
        self.server.start()
        self.addCleanup(self.server.cleanup)

    def connect(self, rest: str) -> RedisStorage:
        storage = connect_redis(rest)
        self.addCleanup(storage.close)
        return storage

    @defer.inlineCallbacks
    def roundtrip(self, storage: RedisStorage) -> Any:
        self.assertTrue(verifyObject(IAsyncStorage, storage))
        # numeric-looking and binary values come back as the same bytes
        yield storage.set(b"\x00ab1", b"12345", 10)
        yield storage.set(b"\x00ab2", b"\xff\x00\r\n", 10)
        yield storage.set(b"\x00zz", b"3.5", 10)
        self.assertEqual((yield storage.get(b"\x00ab1")), b"12345")
        found = yield storage.get_many([b"\x00ab1", b"\x00ab2", b"\x00zz", b"none"])
        self.assertEqual(found, {b"\x00ab1": b"12345", b"\x00ab2": b"\xff\x00\r\n",
                                 b"\x00zz": b"3.5"})
        self.assertEqual((yield storage.delete(b"\x00ab")), 2)
        self.assertIsNone((yield storage.get(b"\x00ab1")))
        self.assertEqual((yield storage.usage())["count"], 1)
        yield storage.clear()
        self.assertEqual((yield storage.usage())["count"], 0)

    def test_tcp(self) -> Any:
        return self.roundtrip(self.connect(f"{self.server.address}:{self.server.port}"))

    def test_unix_socket(self) -> Any:
        return self.roundtrip(self.connect(self.server.socket_path))

    @defer.inlineCallbacks
    def test_database_index(self) -> Any:
        storage = self.connect(f"9@{self.server.address}:{self.server.port}")
        yield self.roundtrip(storage)
        yield storage.set(b"k", b"v", 10)
        self.assertEqual(self.server.command("INFO", "keyspace").count(b"db9:keys=1"), 1)

    @defer.inlineCallbacks
    def test_keys_carry_ttls_and_clear_spares_foreign_keys(self) -> Any:
        storage = self.connect(f"{self.server.address}:{self.server.port}")
        yield storage.set(b"k", b"v", 42.2)
        ttl = int(self.server.command("TTL", "kres:" + b"k".hex()).strip(b":\r\n"))
        self.assertTrue(40 <= ttl <= 43, ttl)
        self.server.command("SET", "someone-else", "1")
        yield storage.clear()
        self.assertEqual(self.server.command("EXISTS", "someone-else"), b":1\r\n")

    @defer.inlineCallbacks
    def test_sharded_over_two_servers(self) -> Any:
        other = RedisServer("127.0.90.11", 6391)
        other.start()
        self.addCleanup(other.cleanup)
        storage = self.connect(
            f"{self.server.address}:{self.server.port},{other.address}:{other.port}"
        )
        for i in range(40):
            yield storage.set(b"key%d" % i, b"v%d" % i, 30)
        found = yield storage.get_many([b"key%d" % i for i in range(40)])
        self.assertEqual(len(found), 40)
        counts = [int(s.command("DBSIZE").strip(b":\r\n")) for s in (self.server, other)]
        self.assertEqual(sum(counts), 40)
        self.assertTrue(all(counts), counts)  # both servers hold a share
        self.assertEqual((yield storage.clear()), 40)

    def test_open_storage_gives_a_tiered_storage(self) -> Any:
        storage = open_storage(self.server.uri, 1024 * 1024, reactor)
        self.addCleanup(storage.close)
        self.assertIsInstance(storage, TieredStorage)
        self.assertEqual(storage.uri, self.server.uri)


class SentinelTests(unittest.TestCase):
    skip = SKIP

    @defer.inlineCallbacks
    def test_master_found_through_sentinel(self) -> Any:
        master = RedisServer()
        master.start()
        self.addCleanup(master.cleanup)
        sentinel = SentinelServer(master)
        sentinel.start()
        self.addCleanup(sentinel.cleanup)
        storage = open_storage(sentinel.uri, 1024 * 1024, reactor)
        self.addCleanup(storage.close)
        backend = storage.backend
        yield backend.set(b"k", b"v", 30)
        self.assertEqual((yield backend.get_many([b"k"])), {b"k": b"v"})
        self.assertEqual(master.command("EXISTS", "kres:" + b"k".hex()), b":1\r\n")

    @defer.inlineCallbacks
    def test_fail_over_to_the_replica(self) -> Any:
        master = RedisServer()
        master.start()
        self.addCleanup(master.cleanup)
        replica = RedisServer("127.0.90.11", 6391, replica_of=master)
        replica.start()
        self.addCleanup(replica.cleanup)
        sentinel = SentinelServer(master)
        sentinel.start()
        self.addCleanup(sentinel.cleanup)
        yield wait_until(lambda: b"connected_slaves:1" in master.command("INFO", "replication"))
        storage = open_storage(sentinel.uri, 1024 * 1024, reactor)
        self.addCleanup(storage.close)
        backend = storage.backend
        yield backend.set(b"before", b"1", 60)
        # replication is asynchronous: what the master had not passed on would be lost
        yield wait_until(lambda: replica.command("EXISTS", "kres:" + b"before".hex()) == b":1\r\n")
        master.crash()
        # Sentinel notices (down-after 1 s), promotes the replica; the client asks it again
        found = None
        deadline = time.monotonic() + 30
        while found != {b"before": b"1"} and time.monotonic() < deadline:
            try:
                found = yield backend.get_many([b"before"]).addTimeout(1, reactor)
                yield backend.set(b"after", b"2", 60).addTimeout(1, reactor)
            except Exception:
                found = None
                yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(found, {b"before": b"1"})
        self.assertEqual(replica.command("GET", "kres:" + b"after".hex()), b"$1\r\n2\r\n")

    def test_uri_errors(self) -> None:
        for bad in ("127.0.0.1:26379", "/name", "/tmp/s.sock/name"):
            self.assertRaises(ValueError, open_storage, f"redis-sentinel://{bad}", 4096, reactor)


class RedisSharedCacheTests(SharedCacheTests, unittest.TestCase):
    skip = SKIP

    def start_backend(self) -> RedisServer:
        server = RedisServer()
        server.start()
        return server
