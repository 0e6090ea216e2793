"""memcached storage against real memcached servers on 127.0.90.20-21."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from kresolver.cache.storage import open_storage
from kresolver.cache.storage.memcached import (
    MAX_KEY,
    MemcachedStorage,
    memcached_key,
    parse_memcached,
)
from kresolver.cache.tiered import TieredStorage
from kresolver.interfaces import IAsyncStorage
from kresolver.testing.daemon import missing_software
from kresolver.testing.services import MemcachedServer
from tests.storage_support import SharedCacheTests

SKIP = missing_software("memcached")


class KeyAndUriTests(unittest.TestCase):
    def test_keys_are_memcached_safe(self) -> None:
        for key in (b"\x00\x01 \r\n", b"x" * 100, bytes(range(256)), b"\xff" * 300):
            encoded = memcached_key(key)
            self.assertLessEqual(len(encoded), MAX_KEY)
            self.assertTrue(all(33 <= c < 127 for c in encoded), encoded)
        self.assertNotEqual(memcached_key(b"a"), memcached_key(b"b"))
        self.assertNotEqual(memcached_key(b"\xff" * 300), memcached_key(b"\xff" * 301))

    def test_uri(self) -> None:
        self.assertEqual(
            parse_memcached('--SERVER=127.0.0.1:11211 --SERVER=10.0.0.2 --SOCKET="/run/m.sock"'),
            ["tcp:host=127.0.0.1:port=11211:timeout=1", "tcp:host=10.0.0.2:port=11211:timeout=1",
             "unix:path=/run/m.sock:timeout=1"],
        )
        for bad in ("", "--SERVER=", "--SERVER=h:99999", "--FOO=1", "--SERVER='unterminated"):
            self.assertRaises(ValueError, parse_memcached, bad)


class MemcachedStorageTests(unittest.TestCase):
    skip = SKIP

    def setUp(self) -> None:
        self.servers = [MemcachedServer(), MemcachedServer("127.0.90.21", 11291)]
        for server in self.servers:
            server.start()
            self.addCleanup(server.cleanup)
        rest = " ".join(f"--SERVER={s.address}:{s.port}" for s in self.servers)
        self.storage = MemcachedStorage(reactor, parse_memcached(rest), f"memcached://{rest}")
        self.addCleanup(self.storage.close)

    @defer.inlineCallbacks
    def test_roundtrip_over_two_servers(self) -> Any:
        storage = self.storage
        self.assertTrue(verifyObject(IAsyncStorage, storage))
        keys = [b"\x00key %d\r\n" % i for i in range(40)] + [b"\xfe" * 255]
        for i, key in enumerate(keys):
            yield storage.set(key, b"%d" % i, 30)
        self.assertEqual((yield storage.get(keys[3])), b"3")
        found = yield storage.get_many([*keys, b"absent"])
        self.assertEqual(found, {key: b"%d" % i for i, key in enumerate(keys)})
        counts = []
        for server in self.servers:
            probe = MemcachedStorage(reactor, parse_memcached(f"--SERVER={server.address}:"
                                                             f"{server.port}"), "one")
            counts.append((yield probe.usage())["count"])
            yield probe.close()
        self.assertEqual(sum(counts), len(keys))
        self.assertTrue(all(counts), counts)  # both servers hold a share
        self.assertEqual((yield storage.delete(keys[0])), 1)
        self.assertIsNone((yield storage.get(keys[0])))
        yield storage.clear()
        self.assertEqual((yield storage.get_many(keys)), {})

    @defer.inlineCallbacks
    def test_zero_ttl_deletes(self) -> Any:
        yield self.storage.set(b"k", b"v", 30)
        yield self.storage.set(b"k", b"v", 0)
        self.assertIsNone((yield self.storage.get(b"k")))

    def test_open_storage_gives_a_tiered_storage(self) -> None:
        storage = open_storage(self.servers[0].uri, 1024 * 1024, reactor)
        self.addCleanup(storage.close)
        self.assertIsInstance(storage, TieredStorage)


class MemcachedSharedCacheTests(SharedCacheTests, unittest.TestCase):
    skip = SKIP

    def start_backend(self) -> MemcachedServer:
        server = MemcachedServer()
        server.start()
        return server
