"""The byte storages under the record cache: expiry, bounds, eviction, prefix deletion."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from kresolver.cache.storage import open_storage
from kresolver.cache.storage.memory import ENTRY_OVERHEAD, EVICT_SLACK_SHIFT, MemoryStorage
from kresolver.interfaces import IStorage


def cost(key: bytes, value: bytes) -> int:
    return len(key) + len(value) + ENTRY_OVERHEAD


class MemoryStorageTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.storage = MemoryStorage(1024 * 1024, self.clock)

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IStorage, self.storage))

    def test_get_set(self) -> None:
        self.assertIsNone(self.storage.get(b"k"))
        self.storage.set(b"k", b"v", 10)
        self.assertEqual(self.storage.get(b"k"), b"v")
        self.storage.set(b"k", b"w", 10)
        self.assertEqual(self.storage.get(b"k"), b"w")
        self.assertEqual(self.storage.usage()["count"], 1)
        self.assertEqual(self.storage.usage()["bytes"], cost(b"k", b"w"))

    def test_expiry(self) -> None:
        self.storage.set(b"k", b"v", 10)
        self.clock.advance(9.9)
        self.assertEqual(self.storage.get(b"k"), b"v")
        self.clock.advance(0.1)
        self.assertIsNone(self.storage.get(b"k"))
        self.assertEqual(self.storage.usage()["count"], 0)
        self.assertEqual(self.storage.usage()["bytes"], 0)

    def test_zero_ttl_removes(self) -> None:
        self.storage.set(b"k", b"v", 10)
        self.storage.set(b"k", b"w", 0)
        self.assertIsNone(self.storage.get(b"k"))
        self.assertEqual(self.storage.usage()["count"], 0)
        self.assertEqual(self.storage.usage()["bytes"], 0)

    def test_types_checked(self) -> None:
        self.assertRaises(TypeError, self.storage.set, "k", b"v", 10)
        self.assertRaises(TypeError, self.storage.set, b"k", "v", 10)

    def test_delete_prefix(self) -> None:
        for key in (b"ab", b"abc", b"abd", b"b", b"a"):
            self.storage.set(key, b"v", 10)
        self.assertEqual(self.storage.delete(b"ab"), 3)
        self.assertEqual(self.storage.get(b"a"), b"v")
        self.assertEqual(self.storage.get(b"b"), b"v")
        self.assertIsNone(self.storage.get(b"abc"))
        self.assertEqual(self.storage.delete(b"zz"), 0)
        self.assertEqual(self.storage.usage()["bytes"], cost(b"a", b"v") + cost(b"b", b"v"))

    def test_clear(self) -> None:
        self.storage.set(b"a", b"v", 10)
        self.storage.clear()
        self.assertIsNone(self.storage.get(b"a"))
        self.assertEqual(self.storage.usage()["count"], 0)
        self.assertEqual(self.storage.usage()["bytes"], 0)

    def test_contains_is_not_a_read(self) -> None:
        """``key in storage``: stored and not expired; the eviction hand does not spare
        an entry for being asked about."""
        value = b"x" * 100
        storage = MemoryStorage(cost(b"k00", value) * 2, self.clock)
        storage.set(b"k00", value, 100)
        storage.set(b"k01", value, 100)
        self.assertIn(b"k00", storage)
        self.assertNotIn(b"zz", storage)
        storage.set(b"k02", value, 100)  # k00, asked about but never read, goes first
        self.assertNotIn(b"k00", storage)
        self.assertIsNone(storage.get(b"k00"))
        self.assertEqual(storage.get(b"k01"), value)
        storage.set(b"k03", value, 5)
        self.assertIn(b"k03", storage)
        self.clock.advance(5)
        self.assertNotIn(b"k03", storage)

    def test_bound_evicts_least_recently_used(self) -> None:
        value = b"x" * 100
        per = cost(b"k00", value)
        storage = MemoryStorage(per * 10, self.clock)
        for i in range(10):
            storage.set(b"k%02d" % i, value, 100)
        # k00..k04 are read, so the next five inserts must push out k05..k09 instead.
        for i in range(5):
            self.assertEqual(storage.get(b"k%02d" % i), value)
        for i in range(10, 15):
            storage.set(b"k%02d" % i, value, 100)
        usage = storage.usage()
        self.assertLessEqual(usage["bytes"], usage["capacity"])
        self.assertEqual(usage["evicted"], 5)
        for i in range(5):
            self.assertEqual(storage.get(b"k%02d" % i), value)
        for i in range(5, 10):
            self.assertIsNone(storage.get(b"k%02d" % i))
        for i in range(10, 15):
            self.assertEqual(storage.get(b"k%02d" % i), value)

    def test_full_storage_evicts_a_batch(self) -> None:
        """A big storage that fills up evicts a little more than one write's worth (what
        it would have evicted over the next writes, in the same order), not on each."""
        value = b"x" * 100
        per = cost(b"k0000", value)
        storage = MemoryStorage(per * 4000, self.clock)  # above EVICT_BATCH_MIN
        for i in range(4000):
            storage.set(b"k%04d" % i, value, 100)
        self.assertEqual(storage.usage()["evicted"], 0)
        storage.get(b"k0000")  # read: spared once
        storage.set(b"k4000", value, 100)
        evicted = storage.usage()["evicted"]
        self.assertGreater(evicted, 1)
        self.assertLessEqual(evicted, (per * 4000 >> EVICT_SLACK_SHIFT) // per + 2)
        self.assertEqual(storage.get(b"k0000"), value)
        for i in range(1, evicted + 1):
            self.assertIsNone(storage.get(b"k%04d" % i))
        self.assertEqual(storage.get(b"k%04d" % (evicted + 1)), value)
        storage.set(b"k4001", value, 100)  # room left: nothing more goes
        self.assertEqual(storage.usage()["evicted"], evicted)

    def test_expired_evicted_first(self) -> None:
        value = b"x" * 100
        per = cost(b"k00", value)
        storage = MemoryStorage(per * 4, self.clock)
        storage.set(b"k00", value, 100)
        storage.set(b"k01", value, 5)  # newer, but it will have expired
        storage.set(b"k02", value, 100)
        storage.set(b"k03", value, 100)
        self.clock.advance(6)
        storage.set(b"k04", value, 100)
        self.assertEqual(storage.get(b"k00"), value)
        self.assertEqual(storage.usage()["expired"], 1)
        self.assertEqual(storage.usage()["evicted"], 0)

    def test_oversized_value_not_stored(self) -> None:
        storage = MemoryStorage(1000, self.clock)
        storage.set(b"small", b"v", 10)
        storage.set(b"big", b"x" * 1000, 10)
        self.assertIsNone(storage.get(b"big"))
        self.assertEqual(storage.get(b"small"), b"v")

    def test_shrinking_capacity_evicts_at_once(self) -> None:
        value = b"x" * 100
        for i in range(10):
            self.storage.set(b"k%02d" % i, value, 100)
        self.storage.capacity = cost(b"k00", value) * 3
        usage = self.storage.usage()
        self.assertEqual(usage["count"], 3)
        self.assertLessEqual(usage["bytes"], usage["capacity"])
        self.assertEqual(self.storage.capacity, cost(b"k00", value) * 3)

    def test_bad_capacity(self) -> None:
        for bad in (-1, "10", None, True, float("nan")):
            self.assertRaises(ValueError, MemoryStorage, bad, self.clock)
        with self.assertRaises(ValueError):
            self.storage.capacity = -5

    def test_expiry_heap_stays_bounded(self) -> None:
        """Rewriting one key again and again must not grow the storage's bookkeeping."""
        for i in range(10_000):
            self.storage.set(b"k", b"%d" % i, 100)
        self.assertLess(len(self.storage._expiries), 200)
        self.assertEqual(self.storage.get(b"k"), b"9999")

    def test_bytes_account_for_what_is_kept(self) -> None:
        """Whatever mix of writes, rewrites, reads, expiry and eviction, the byte count is
        that of the entries kept, and stays within the capacity."""
        import random

        rng = random.Random(8)
        storage = MemoryStorage(cost(b"k000", b"x" * 50) * 20, self.clock)
        for _ in range(3000):
            key = b"k%03d" % rng.randrange(60)
            action = rng.random()
            if action < 0.6:
                storage.set(key, b"x" * rng.randrange(1, 100), rng.choice((0, 1, 5, 100)))
            elif action < 0.9:
                storage.get(key)
            elif action < 0.95:
                storage.delete(key)
            else:
                self.clock.advance(rng.choice((1, 3)))
            kept = sum(cost(k, v) for k, v in storage._data.items())
            self.assertEqual(storage.usage()["bytes"], kept)
            self.assertLessEqual(kept, storage.capacity)
        self.assertGreater(storage.usage()["evicted"], 0)
        self.assertGreater(storage.usage()["expired"], 0)


class OpenStorageTests(unittest.TestCase):
    def test_memory(self) -> None:
        storage = open_storage("memory://", 4096, Clock())
        self.assertIsInstance(storage, MemoryStorage)
        self.assertEqual(storage.usage()["capacity"], 4096)

    def test_unsupported(self) -> None:
        for uri in ("sqlite:///var/cache/x", "bogus", "", "mongodb://127.0.0.1"):
            with self.assertRaises(ValueError) as caught:
                open_storage(uri, 4096, Clock())
            self.assertIn("unsupported cache storage", str(caught.exception))
            self.assertIn("supported: memory://", str(caught.exception))

    def test_memory_takes_no_path(self) -> None:
        self.assertRaises(ValueError, open_storage, "memory://somewhere", 4096, Clock())

    def test_not_a_string(self) -> None:
        self.assertRaises(ValueError, open_storage, None, 4096, Clock())

    def test_bad_size(self) -> None:
        self.assertRaises(ValueError, open_storage, "memory://", -1, Clock())
