"""The cache's shortcuts give what their general paths give, for random data.

Each test runs a shortcut next to the path it stands for: Cache.closest (which reads
each level itself and calls _derived only where something is stored) against a walk of
Cache.derive up the name; MemoryStorage's eviction (one popitem per entry) against the
iterator and move_to_end it replaced; AnswerCache.store of a lone record against the
value min_ttl's reading gives.  Expiry, clear() and ranks are part of the mix.
"""

from __future__ import annotations

import random
import struct

import dns.message
import dns.name
import dns.rrset
from twisted.internet.task import Clock
from twisted.trial import unittest

from kresolver.cache import Cache, Rank, Security
from kresolver.cache.answers import MAX_AGE, AnswerCache
from kresolver.cache.storage.memory import ENTRY_OVERHEAD, MemoryStorage
from kresolver.wire import fast_query, min_ttl, ttl_offsets

START = 1_700_000_000.0
LABELS = ["a", "b", "c", "Ex", "org"]


def random_name(rng: random.Random, depth: int) -> dns.name.Name:
    return dns.name.from_text(".".join(rng.choice(LABELS) for _ in range(depth)) + ".")


def owner(rrset: dns.rrset.RRset) -> dns.name.Name:
    return rrset.name


class ClosestIsDeriveUpTheNameTests(unittest.TestCase):
    def test_random_trees(self) -> None:
        """closest() finds what derive() of the name, then of each ancestor, finds first
        (not BOGUS unless cd), and counts the same hits and misses."""
        rng = random.Random(8020)
        for _ in range(30):
            clock = Clock()
            clock.advance(START)
            cache = Cache(clock, size=1 << 20)
            for _ in range(300):
                action = rng.random()
                if action < 0.5:
                    name = random_name(rng, rng.randint(0, 4))
                    ns = dns.rrset.from_text(name, rng.choice([1, 5, 30, 300]), "IN", "NS",
                                             "ns.example.")
                    cache.put_rrset(ns, rng.choice(list(Rank)),
                                    security=rng.choice(list(Security)))
                elif action < 0.6:
                    clock.advance(rng.choice([0.5, 3, 20, 100]))
                elif action < 0.63:
                    cache.clear(random_name(rng, rng.randint(1, 2)))
                elif action < 0.64:
                    cache.clear()
                else:
                    self.compare(cache, random_name(rng, rng.randint(1, 5)),
                                 rng.choice(list(Rank)), rng.random() < 0.3)

    def compare(self, cache: Cache, name: dns.name.Name, min_rank: Rank, cd: bool) -> None:
        before = cache.stats()
        found = cache.closest(name, "NS", owner, min_rank=min_rank, cd=cd)
        after = cache.stats()
        expected = None
        for up in range(len(name.labels)):
            hit = cache.derive(dns.name.Name(name.labels[up:]), "NS", owner, min_rank=min_rank)
            if hit is not None and (cd or hit[1] != Security.BOGUS):
                expected = (hit[0], hit[1], up)
                break
        walked = cache.stats()
        self.assertEqual(found, expected, name)
        for counter in ("hit", "miss"):
            self.assertEqual(after[counter] - before[counter],
                             walked[counter] - after[counter], (counter, name))


class _IteratorClock(MemoryStorage):
    """MemoryStorage with the CLOCK hand as it was written before popitem: next(iter())
    and pop() per entry, move_to_end() for one read since."""

    def _evict(self, target: int, now: float | None = None) -> None:
        if now is None:
            now = self._seconds()
        expiries, expires = self._expiries, self._expires
        while expiries and struct.unpack_from(">d", expiries[0])[0] <= now:
            key = __import__("heapq").heappop(expiries)[8:]
            when = expires.get(key)
            if when is not None and when <= now:
                self._drop(key)
                self.expired += 1
        data, used = self._data, self._used
        excess = self._bytes - target
        evicted = 0
        while excess > 0:
            key = next(iter(data))
            if key in used:
                used.discard(key)
                data.move_to_end(key)
            else:
                excess -= len(key) + len(data.pop(key)) + ENTRY_OVERHEAD
                del expires[key]
                evicted += 1
        self._bytes = target + excess
        self.evicted += evicted


class EvictionTests(unittest.TestCase):
    def test_same_as_iterator_clock(self) -> None:
        """Random writes, reads, deletions and time: the same entries, in the same order,
        with the same counts, whichever way the hand moves."""
        rng = random.Random(2308)
        for capacity in (4096, 20_000, 1 << 20):
            clock = Clock()
            clock.advance(START)
            mine = MemoryStorage(capacity, clock)
            reference = _IteratorClock(capacity, clock)
            for _ in range(3000):
                key = b"k%d" % rng.randint(0, 300)
                action = rng.random()
                ttl = rng.choice([0, 1, 100, 10_000, 10_000])
                for storage in (mine, reference):
                    if action < 0.55:
                        storage.set(key, b"v" * (key[-1] % 50), ttl)
                    elif action < 0.9:
                        storage.get(key)
                    elif action < 0.92:
                        storage.delete(key[:2])
                if action >= 0.92:
                    clock.advance(rng.choice([0.5, 2, 20]))
                self.assertEqual(list(mine._data.items()), list(reference._data.items()))
            self.assertEqual(mine.usage(), reference.usage())
            self.assertEqual(mine._used, reference._used)
            if capacity < 1 << 20:
                self.assertGreater(mine.evicted, 100, capacity)  # the hand did move


class LoneRecordStoreTests(unittest.TestCase):
    def test_same_value_as_min_ttl(self) -> None:
        """An answer of one record is kept under the value the general reading gives:
        the lifetime is its TTL (at most MAX_AGE); TTL 0 is not kept."""
        rng = random.Random(1035)
        clock = Clock()
        clock.advance(START)
        answers = AnswerCache(MemoryStorage(1 << 20, clock), clock)
        for i in range(300):
            query = dns.message.make_query(f"n{i}.example.", "A")
            response = dns.message.make_response(query)
            ttl = rng.choice([0, 1, 59, MAX_AGE - 1, MAX_AGE, MAX_AGE + 1, 2**31 - 1])
            response.answer.append(
                dns.rrset.from_text(f"n{i}.example.", ttl, "IN", "A", "192.0.2.1")
            )
            data, answer = query.to_wire(), response.to_wire()
            fast = fast_query(data)
            assert fast is not None
            offsets = ttl_offsets(answer)
            self.assertEqual(len(offsets), 1)
            stored = answers.store(fast, answer, offsets)
            general = min_ttl(answer, offsets)
            self.assertEqual(stored, bool(general))
            value = answers.storage.get(fast.key)
            if not general:
                self.assertIsNone(value)
                continue
            lifetime = min(general, MAX_AGE)
            head = struct.pack(">dIHH", clock.seconds(), lifetime, 1, offsets[0])
            self.assertEqual(value, head + answer)
