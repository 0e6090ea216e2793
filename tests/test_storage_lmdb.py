"""The LMDB storage: expiry, bounds, eviction by expiry, sharing, restarts, bad files."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import time

import dns.message
import dns.rcode
import dns.rrset
import lmdb
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from kresolver.cache.cache import Cache, Rank
from kresolver.cache.storage import open_storage
from kresolver.cache.storage.lmdb import LMDBStorage
from kresolver.engine import Engine
from kresolver.interfaces import IStorage
from kresolver.testing.lab import Lab, ask
from kresolver.testing.zones import standard_lab
from tests.storage_support import BASE as LAB
from tests.storage_support import lab_engine


class _WallClock:
    def seconds(self) -> float:
        return time.time()


def _writer(path: str) -> None:
    """Another process writes into the same directory."""
    storage = LMDBStorage(path, 4 * 1024 * 1024, _WallClock())
    storage.set(b"from-child", b"hello", 60)
    storage.close()


class LMDBStorageTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="kresolver-lmdb-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.storage = self.open()

    def open(self, capacity: int = 4 * 1024 * 1024) -> LMDBStorage:
        storage = LMDBStorage(self.dir, capacity, self.clock)
        self.addCleanup(storage.close)
        return storage

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IStorage, self.storage))

    def test_get_set_expiry(self) -> None:
        self.assertIsNone(self.storage.get(b"k"))
        self.storage.set(b"k", b"v", 10)
        self.assertEqual(self.storage.get(b"k"), b"v")
        self.storage.set(b"k", b"w", 10)
        self.assertEqual(self.storage.get(b"k"), b"w")
        self.assertEqual(self.storage.usage()["count"], 1)
        self.clock.advance(10)
        self.assertIsNone(self.storage.get(b"k"))

    def test_zero_ttl_removes(self) -> None:
        self.storage.set(b"k", b"v", 10)
        self.storage.set(b"k", b"w", 0)
        self.assertIsNone(self.storage.get(b"k"))
        self.assertEqual(self.storage.usage()["count"], 0)

    def test_bad_input(self) -> None:
        self.assertRaises(TypeError, self.storage.set, "k", b"v", 10)
        self.assertRaises(ValueError, self.storage.set, b"", b"v", 10)
        self.assertRaises(ValueError, self.storage.set, b"k" * 600, b"v", 10)

    def test_delete_prefix_and_clear(self) -> None:
        for key in (b"ab", b"abc", b"abd", b"b", b"a"):
            self.storage.set(key, b"v", 10)
        self.assertEqual(self.storage.delete(b"ab"), 3)
        self.assertEqual(self.storage.get(b"a"), b"v")
        self.assertIsNone(self.storage.get(b"abc"))
        self.assertEqual(self.storage.delete(b"zz"), 0)
        self.storage.clear()
        self.assertEqual(self.storage.usage()["count"], 0)
        self.assertIsNone(self.storage.get(b"a"))

    def test_expired_entries_are_swept_by_writes(self) -> None:
        for i in range(5):
            self.storage.set(b"old%d" % i, b"v", 5)
        self.clock.advance(6)
        self.storage.set(b"new", b"v", 5)
        self.assertEqual(self.storage.usage()["count"], 1)
        self.assertEqual(self.storage.usage()["expired"], 5)

    def test_bounded_evicts_soonest_expiry_first(self) -> None:
        storage = self.open(1024 * 1024)
        value = b"x" * 200
        for i in range(20000):
            storage.set(b"k%06d" % i, value, 100 + i)  # later keys live longer
        usage = storage.usage()
        self.assertLess(usage["bytes"], 1024 * 1024)
        self.assertGreater(usage["evicted"], 0)
        self.assertGreater(usage["count"], 100)
        self.assertEqual(storage.get(b"k019999"), value)
        self.assertIsNone(storage.get(b"k000000"))

    def test_survives_reopen(self) -> None:
        self.storage.set(b"k", b"v", 100)
        self.storage.close()
        self.assertEqual(self.open().get(b"k"), b"v")

    def test_shared_between_processes(self) -> None:
        storage = LMDBStorage(self.dir, 4 * 1024 * 1024, _WallClock())
        self.addCleanup(storage.close)
        child = multiprocessing.get_context("spawn").Process(target=_writer, args=(self.dir,))
        child.start()
        child.join(30)
        self.assertEqual(child.exitcode, 0)
        self.assertEqual(storage.get(b"from-child"), b"hello")

    def _capture_warnings(self) -> list[str]:
        seen: list[str] = []

        def observer(event: dict) -> None:
            if "LMDB" in event.get("log_format", ""):
                seen.append(event["log_format"])

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return seen

    def test_garbage_file_starts_empty_with_warning(self) -> None:
        self.storage.set(b"k", b"v", 100)
        self.storage.close()
        with open(os.path.join(self.dir, "data.mdb"), "wb") as f:
            f.write(os.urandom(64 * 1024))
        warnings = self._capture_warnings()
        storage = self.open()
        self.assertEqual(storage.recovered, 1)
        self.assertTrue(warnings)
        self.assertIsNone(storage.get(b"k"))
        storage.set(b"k", b"w", 100)
        self.assertEqual(storage.get(b"k"), b"w")

    def test_foreign_lmdb_file_starts_empty(self) -> None:
        other = tempfile.mkdtemp(prefix="kresolver-lmdb-foreign-")
        self.addCleanup(shutil.rmtree, other, True)
        env = lmdb.open(other)
        with env.begin(write=True) as txn:
            txn.put(b"somebody", b"else's data")
        env.close()
        warnings = self._capture_warnings()
        storage = LMDBStorage(other, 1024 * 1024, self.clock)
        self.addCleanup(storage.close)
        self.assertEqual(storage.recovered, 1)
        self.assertTrue(warnings)
        storage.set(b"k", b"v", 10)
        self.assertEqual(storage.get(b"k"), b"v")

    def test_capacity_change(self) -> None:
        self.storage.set(b"k", b"v", 100)
        self.storage.capacity = 8 * 1024 * 1024
        self.assertEqual(self.storage.usage()["capacity"], 8 * 1024 * 1024)
        self.assertEqual(self.storage.get(b"k"), b"v")


class LMDBCacheTests(unittest.TestCase):
    """The record cache over LMDB, opened the way the config does it."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="kresolver-lmdb-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.clock = Clock()
        self.clock.advance(1_000_000)

    def test_open_by_uri_and_restart(self) -> None:
        cache = Cache(self.clock)
        self.assertTrue(cache.open(10 * 1024 * 1024, f"lmdb://{self.dir}"))
        self.assertEqual(cache.storage, f"lmdb://{self.dir}")
        rrset = dns.rrset.from_text("www.example.", 300, "IN", "A", "192.0.2.1")
        cache.put_rrset(rrset, Rank.AUTH_ANSWER)
        cache.backend.close()
        again = Cache(self.clock)
        again.open(10 * 1024 * 1024, f"lmdb://{self.dir}")
        self.addCleanup(again.backend.close)
        hit = again.get_rrset("www.example.", "A")
        self.assertIsNotNone(hit)
        self.assertEqual(hit.rrset, rrset)

    def test_uri_errors(self) -> None:
        self.assertRaises(ValueError, open_storage, "lmdb://", 1024 * 1024, self.clock)
        self.assertRaises(
            ValueError, open_storage, "lmdb:///proc/no/such/place", 1024 * 1024, self.clock
        )


class RestartTests(unittest.TestCase):
    """A resolver restarted on the same LMDB directory answers without asking upstream."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="kresolver-lmdb-restart-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.lab = Lab(reactor, base=LAB)
        self.lab.load(standard_lab(LAB))
        self.lab.start()
        self.addCleanup(self.lab.stop)

    def engine(self) -> Engine:
        return lab_engine(self.lab, LAB + "253", f"lmdb://{self.dir}")

    @defer.inlineCallbacks
    def ask(self, engine: Engine) -> defer.Deferred[dns.message.Message]:
        [(address, port)] = engine.net.addresses
        wire = yield ask(dns.message.make_query("www.alpha.lab.", "A"), address, port, "udp", 5)
        return dns.message.from_wire(wire)

    def asked(self) -> int:
        return sum(len(server.queries) for server in self.lab.servers.values())

    @defer.inlineCallbacks
    def test_restart_answers_from_the_file(self) -> defer.Deferred[None]:
        first = self.engine()
        response = yield self.ask(first)
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        yield first.stopService()
        first.cache.backend.close()
        before = self.asked()
        self.assertGreater(before, 0)
        second = self.engine()
        self.addCleanup(second.cache.backend.close)
        self.addCleanup(second.stopService)
        response = yield self.ask(second)
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertEqual(
            [rdata.to_text() for rrset in response.answer for rdata in rrset], ["192.0.2.1"]
        )
        self.assertEqual(self.asked(), before)  # nothing went upstream
