"""The record cache: ranks, TTLs, negative caching, clearing, bounds, serve-stale, trust."""

from __future__ import annotations

import dns.name
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.rrset
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial import unittest

from kresolver.cache import Cache, CachedNegative, CachedRRset, Rank, Security
from kresolver.cache.cache import FORMAT_VERSION, name_key
from kresolver.cache.storage.memory import MemoryStorage

START = 1_700_000_000.0


def a(name: str, ttl: int = 300, *addresses: str) -> dns.rrset.RRset:
    return dns.rrset.from_text(name, ttl, "IN", "A", *(addresses or ("192.0.2.1",)))


def soa(zone: str = "example.", ttl: int = 3600, minimum: int = 600) -> dns.rrset.RRset:
    return dns.rrset.from_text(
        zone, ttl, "IN", "SOA", f"ns.{zone} host.{zone} 1 7200 900 1209600 {minimum}"
    )


def rrsig(name: str, covered: str, ttl: int = 300) -> dns.rrset.RRset:
    return dns.rrset.from_text(
        name,
        ttl,
        "IN",
        "RRSIG",
        f"{covered} 13 2 {ttl} 20300101000000 20200101000000 4711 example. AAAA",
    )


class CacheTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.cache = Cache(self.clock)


class PositiveTests(CacheTestCase):
    def test_roundtrip(self) -> None:
        rrset = a("www.example.", 300, "192.0.2.1", "192.0.2.2")
        self.assertTrue(self.cache.put_rrset(rrset, Rank.AUTH_ANSWER))
        hit = self.cache.get_rrset("www.example.", "A")
        self.assertIsInstance(hit, CachedRRset)
        self.assertEqual(hit.rrset, rrset)
        self.assertEqual(hit.rank, Rank.AUTH_ANSWER)
        self.assertEqual(hit.security, Security.UNCHECKED)
        self.assertIsNone(hit.rrsigs)
        self.assertFalse(hit.stale)

    def test_hits_are_independent_copies(self) -> None:
        self.cache.put_rrset(a("www.example.", 300, "192.0.2.1"), Rank.ANSWER)
        first = self.cache.get_rrset("www.example.", "A")
        first.rrset.ttl = 1
        first.rrset.add(dns.rdata.from_text("IN", "A", "192.0.2.99"))
        self.clock.advance(10)
        again = self.cache.get_rrset("www.example.", "A")
        self.assertEqual(again.rrset, a("www.example.", 290, "192.0.2.1"))
        self.assertEqual(again.rrset.ttl, 290)

    def test_case_insensitive_lookup(self) -> None:
        self.cache.put_rrset(a("WwW.ExAmple."), Rank.ANSWER)
        hit = self.cache.get_rrset(dns.name.from_text("www.EXAMPLE."), dns.rdatatype.A)
        self.assertIsNotNone(hit)

    def test_other_type_and_class_miss(self) -> None:
        self.cache.put_rrset(a("www.example."), Rank.ANSWER)
        self.assertIsNone(self.cache.get_rrset("www.example.", "AAAA"))
        self.assertIsNone(self.cache.get_rrset("www.example.", "A", "CH"))
        self.assertIsNone(self.cache.get_rrset("example.", "A"))
        self.assertIsNone(self.cache.get_rrset("x.www.example.", "A"))

    def test_rrsigs_and_security_kept(self) -> None:
        self.cache.put_rrset(
            a("www.example."),
            Rank.AUTH_ANSWER,
            security=Security.SECURE,
            rrsigs=rrsig("www.example.", "A"),
        )
        self.clock.advance(100)
        hit = self.cache.get_rrset("www.example.", "A")
        self.assertEqual(hit.security, Security.SECURE)
        self.assertEqual(hit.rrsigs, rrsig("www.example.", "A"))
        self.assertEqual(hit.rrsigs.ttl, 200)
        self.assertEqual(hit.rrset.ttl, 200)

    def test_rrsigs_must_cover_the_rrset(self) -> None:
        for sigs in (rrsig("www.example.", "AAAA"), rrsig("other.example.", "A"), a("x.")):
            self.assertRaises(
                ValueError, self.cache.put_rrset, a("www.example."), Rank.ANSWER, rrsigs=sigs
            )

    def test_uncacheable_input(self) -> None:
        self.assertRaises(ValueError, self.cache.put_rrset, rrsig("x.example.", "A"), Rank.ANSWER)
        empty = dns.rrset.RRset(dns.name.from_text("x.example."), 1, 1)
        self.assertRaises(ValueError, self.cache.put_rrset, empty, Rank.ANSWER)
        relative = dns.rrset.from_text(dns.name.from_text("x", None), 60, "IN", "A", "192.0.2.1")
        self.assertRaises(ValueError, self.cache.put_rrset, relative, Rank.ANSWER)

    def test_ttl_counts_down(self) -> None:
        self.cache.put_rrset(a("www.example.", 300), Rank.ANSWER)
        self.clock.advance(0.5)
        self.assertEqual(self.cache.get_rrset("www.example.", "A").rrset.ttl, 300)
        self.clock.advance(99.6)
        self.assertEqual(self.cache.get_rrset("www.example.", "A").rrset.ttl, 200)
        self.clock.advance(199)
        self.assertEqual(self.cache.get_rrset("www.example.", "A").rrset.ttl, 1)
        self.clock.advance(1)
        self.assertIsNone(self.cache.get_rrset("www.example.", "A"))

    def test_ttl_clamped(self) -> None:
        self.cache.put_rrset(a("low.example.", 1), Rank.ANSWER)
        self.cache.put_rrset(a("high.example.", 2**31 - 1), Rank.ANSWER)
        self.assertEqual(self.cache.get_rrset("low.example.", "A").rrset.ttl, 5)
        self.assertEqual(self.cache.get_rrset("high.example.", "A").rrset.ttl, 6 * 86400)
        self.cache.min_ttl(60)
        self.cache.max_ttl(3600)
        self.cache.put_rrset(a("low2.example.", 1), Rank.ANSWER)
        self.assertEqual(self.cache.get_rrset("low2.example.", "A").rrset.ttl, 60)
        # Lowering max_ttl also bounds what is already stored.
        self.assertEqual(self.cache.get_rrset("high.example.", "A").rrset.ttl, 3600)


class RankTests(CacheTestCase):
    def test_glue_never_an_answer(self) -> None:
        self.cache.put_rrset(a("ns.example."), Rank.GLUE)
        self.assertIsNone(self.cache.get_rrset("ns.example.", "A"))
        self.assertIsNotNone(self.cache.get_rrset("ns.example.", "A", min_rank=Rank.GLUE))

    def test_authority_below_answer(self) -> None:
        ns = dns.rrset.from_text("example.", 300, "IN", "NS", "ns.example.")
        self.cache.put_rrset(ns, Rank.AUTHORITY)
        self.assertIsNone(self.cache.get_rrset("example.", "NS"))
        self.assertIsNotNone(self.cache.get_rrset("example.", "NS", min_rank=Rank.AUTHORITY))

    def test_higher_rank_not_overwritten(self) -> None:
        self.cache.put_rrset(a("www.example.", 300, "192.0.2.1"), Rank.AUTH_ANSWER)
        self.assertFalse(self.cache.put_rrset(a("www.example.", 300, "192.0.2.66"), Rank.GLUE))
        self.assertFalse(self.cache.put_rrset(a("www.example.", 300, "192.0.2.66"), Rank.ANSWER))
        hit = self.cache.get_rrset("www.example.", "A")
        self.assertEqual(hit.rrset, a("www.example.", 300, "192.0.2.1"))
        self.assertEqual(self.cache.stats()["skip"], 2)

    def test_equal_or_higher_rank_replaces(self) -> None:
        self.cache.put_rrset(a("www.example.", 300, "192.0.2.1"), Rank.GLUE)
        self.assertTrue(self.cache.put_rrset(a("www.example.", 300, "192.0.2.2"), Rank.GLUE))
        self.assertTrue(self.cache.put_rrset(a("www.example.", 300, "192.0.2.3"), Rank.ANSWER))
        hit = self.cache.get_rrset("www.example.", "A")
        self.assertEqual(hit.rrset, a("www.example.", 300, "192.0.2.3"))
        self.assertEqual(hit.rank, Rank.ANSWER)

    def test_expired_higher_rank_replaced(self) -> None:
        self.cache.put_rrset(a("www.example.", 10, "192.0.2.1"), Rank.AUTH_ANSWER)
        self.clock.advance(10)
        self.assertTrue(self.cache.put_rrset(a("www.example.", 300, "192.0.2.9"), Rank.GLUE))
        hit = self.cache.get_rrset("www.example.", "A", min_rank=Rank.GLUE)
        self.assertEqual(hit.rrset, a("www.example.", 300, "192.0.2.9"))
        self.assertEqual(hit.rank, Rank.GLUE)


class NegativeTests(CacheTestCase):
    def test_nodata_covers_one_type(self) -> None:
        self.assertTrue(
            self.cache.put_negative("www.example.", "AAAA", dns.rcode.NOERROR, soa("example."))
        )
        neg = self.cache.get_negative("www.example.", "AAAA")
        self.assertIsInstance(neg, CachedNegative)
        self.assertEqual(neg.rcode, dns.rcode.NOERROR)
        self.assertEqual(neg.soa.name, dns.name.from_text("example."))
        self.assertEqual(neg.name, dns.name.from_text("www.example."))
        self.assertIsNone(self.cache.get_negative("www.example.", "MX"))
        self.assertIsNone(self.cache.get_negative("sub.www.example.", "AAAA"))
        self.assertIsNone(self.cache.get_rrset("www.example.", "AAAA"))

    def test_ttl_is_soa_minimum_or_ttl(self) -> None:
        self.cache.put_negative("a.example.", "A", dns.rcode.NOERROR, soa(ttl=3600, minimum=60))
        self.cache.put_negative("b.example.", "A", dns.rcode.NOERROR, soa(ttl=30, minimum=600))
        self.cache.put_negative("c.example.", "A", dns.rcode.NOERROR, soa(ttl=1, minimum=1))
        self.clock.advance(10)
        self.assertEqual(self.cache.get_negative("a.example.", "A").soa.ttl, 50)
        self.assertEqual(self.cache.get_negative("b.example.", "A").soa.ttl, 20)
        self.assertIsNone(self.cache.get_negative("c.example.", "A"))  # min_ttl 5

    def test_nxdomain_covers_all_types_and_below(self) -> None:
        proof = dns.rrset.from_text("nx.example.", 600, "IN", "NSEC", "zz.example. A")
        self.cache.put_negative(
            "nx.example.",
            "A",
            dns.rcode.NXDOMAIN,
            soa(),
            proofs=[proof],
            security=Security.SECURE,
        )
        self.clock.advance(100)
        for name, rdtype in (("nx.example.", "MX"), ("a.b.nx.example.", "A")):
            neg = self.cache.get_negative(name, rdtype)
            self.assertEqual(neg.rcode, dns.rcode.NXDOMAIN)
            self.assertEqual(neg.name, dns.name.from_text("nx.example."))
            self.assertEqual(neg.security, Security.SECURE)
            self.assertEqual(neg.proofs, [proof])
            self.assertEqual(neg.proofs[0].ttl, 500)
            self.assertEqual(neg.soa.ttl, 500)
        self.assertIsNone(self.cache.get_negative("example.", "A"))
        self.assertIsNone(self.cache.get_negative("nx2.example.", "A"))
        self.clock.advance(500)
        self.assertIsNone(self.cache.get_negative("a.b.nx.example.", "A"))

    def test_positive_replaces_nodata_and_ends_nxdomain(self) -> None:
        self.cache.put_negative("www.example.", "A", dns.rcode.NOERROR, soa(), rank=Rank.ANSWER)
        self.cache.put_negative("www.example.", "A", dns.rcode.NXDOMAIN, soa(), rank=Rank.ANSWER)
        self.cache.put_rrset(a("www.example."), Rank.AUTH_ANSWER)
        self.assertIsNone(self.cache.get_negative("www.example.", "A"))
        self.assertIsNone(self.cache.get_negative("www.example.", "TXT"))
        self.assertIsNotNone(self.cache.get_rrset("www.example.", "A"))

    def test_nodata_rank_against_positive(self) -> None:
        self.cache.put_rrset(a("www.example."), Rank.AUTH_ANSWER)
        self.assertFalse(
            self.cache.put_negative("www.example.", "A", dns.rcode.NOERROR, soa(), rank=Rank.ANSWER)
        )
        self.assertIsNotNone(self.cache.get_rrset("www.example.", "A"))
        self.assertIsNone(self.cache.get_negative("www.example.", "A"))

    def test_nxdomain_rank(self) -> None:
        put = self.cache.put_negative
        self.assertTrue(put("x.example.", "A", dns.rcode.NXDOMAIN, soa(minimum=100)))
        self.assertFalse(
            put("x.example.", "A", dns.rcode.NXDOMAIN, soa(minimum=900), rank=Rank.AUTHORITY)
        )
        self.assertTrue(put("x.example.", "MX", dns.rcode.NXDOMAIN, soa(minimum=900)))
        self.assertEqual(self.cache.get_negative("x.example.", "A").soa.ttl, 900)
        self.assertEqual(self.cache.stats()["corrupt"], 0)

    def test_min_rank(self) -> None:
        self.cache.put_negative("x.example.", "A", dns.rcode.NXDOMAIN, soa(), rank=Rank.AUTHORITY)
        self.assertIsNone(self.cache.get_negative("x.example.", "A"))
        self.assertIsNotNone(self.cache.get_negative("x.example.", "A", min_rank=Rank.AUTHORITY))

    def test_bad_input(self) -> None:
        put = self.cache.put_negative
        self.assertRaises(ValueError, put, "x.example.", "A", dns.rcode.SERVFAIL, soa())
        self.assertRaises(ValueError, put, "x.other.", "A", dns.rcode.NXDOMAIN, soa("example."))
        self.assertRaises(ValueError, put, "x.example.", "A", dns.rcode.NXDOMAIN, a("example."))
        self.assertRaises(
            ValueError, put, "x.example.", "A", dns.rcode.NXDOMAIN, soa(), proofs=["nope"]
        )


class ClearTests(CacheTestCase):
    def setUp(self) -> None:
        super().setUp()
        for name in ("example.", "www.example.", "a.b.example.", "examples.", "other."):
            self.cache.put_rrset(a(name), Rank.ANSWER)
        self.cache.put_negative("nx.example.", "A", dns.rcode.NXDOMAIN, soa())

    def test_subtree(self) -> None:
        self.assertEqual(self.cache.clear("example."), 4)
        self.assertIsNone(self.cache.get_rrset("www.example.", "A"))
        self.assertIsNone(self.cache.get_negative("nx.example.", "A"))
        self.assertIsNotNone(self.cache.get_rrset("examples.", "A"))
        self.assertIsNotNone(self.cache.get_rrset("other.", "A"))
        self.assertEqual(self.cache.count(), 2)

    def test_exact(self) -> None:
        self.assertEqual(self.cache.clear("example.", exact=True), 1)
        self.assertIsNone(self.cache.get_rrset("example.", "A"))
        self.assertIsNotNone(self.cache.get_rrset("www.example.", "A"))
        self.assertEqual(self.cache.count(), 5)

    def test_all(self) -> None:
        self.assertEqual(self.cache.clear(), 6)
        self.assertEqual(self.cache.count(), 0)
        self.assertEqual(self.cache.stats()["delete"], 6)

    def test_name_keys_nest(self) -> None:
        parent, child = (
            name_key(dns.name.from_text("example.")),
            name_key(dns.name.from_text("www.Example.")),
        )
        self.assertTrue(child.startswith(parent))
        self.assertFalse(name_key(dns.name.from_text("examples.")).startswith(parent))


class BoundTests(CacheTestCase):
    def test_size_bound_evicts(self) -> None:
        self.cache.size = 20_000
        for i in range(200):
            self.cache.put_rrset(a(f"host{i}.example."), Rank.ANSWER)
        stats = self.cache.stats()
        self.assertLessEqual(stats["bytes"], 20_000)
        self.assertGreater(stats["evict"], 0)
        self.assertEqual(stats["count"], 200 - stats["evict"])
        self.assertIsNotNone(self.cache.get_rrset("host199.example.", "A"))

    def test_shrinking_size_evicts_at_once(self) -> None:
        for i in range(100):
            self.cache.put_rrset(a(f"host{i}.example."), Rank.ANSWER)
        self.cache.size = 5_000
        self.assertEqual(self.cache.size, 5_000)
        self.assertLessEqual(self.cache.stats()["bytes"], 5_000)
        self.assertLess(self.cache.count(), 100)


class StaleTests(CacheTestCase):
    def test_stale_within_window(self) -> None:
        self.cache.put_rrset(a("www.example.", 300), Rank.ANSWER)
        self.clock.advance(300 + 3600)
        self.assertIsNone(self.cache.get_rrset("www.example.", "A"))
        hit = self.cache.get_rrset("www.example.", "A", stale=True)
        self.assertTrue(hit.stale)
        self.assertEqual(hit.rrset.ttl, 30)
        self.assertEqual(self.cache.stats()["stale"], 1)

    def test_live_data_is_not_stale(self) -> None:
        self.cache.put_rrset(a("www.example.", 300), Rank.ANSWER)
        hit = self.cache.get_rrset("www.example.", "A", stale=True)
        self.assertFalse(hit.stale)
        self.assertEqual(hit.rrset.ttl, 300)

    def test_window_ends(self) -> None:
        self.cache.put_rrset(a("www.example.", 300), Rank.ANSWER)
        self.clock.advance(300 + 86400)
        self.assertIsNone(self.cache.get_rrset("www.example.", "A", stale=True))

    def test_disabled(self) -> None:
        self.cache.put_rrset(a("www.example.", 300), Rank.ANSWER)
        self.cache.serve_stale = False
        self.clock.advance(400)
        self.assertIsNone(self.cache.get_rrset("www.example.", "A", stale=True))

    def test_stale_negative(self) -> None:
        self.cache.put_negative("nx.example.", "A", dns.rcode.NXDOMAIN, soa(minimum=60))
        self.clock.advance(120)
        self.assertIsNone(self.cache.get_negative("a.nx.example.", "A"))
        neg = self.cache.get_negative("a.nx.example.", "A", stale=True)
        self.assertTrue(neg.stale)
        self.assertEqual(neg.soa.ttl, 30)

    def test_live_negative_preferred_over_stale(self) -> None:
        self.cache.put_negative("www.example.", "A", dns.rcode.NOERROR, soa(minimum=60))
        self.cache.put_negative("example.", "A", dns.rcode.NXDOMAIN, soa(minimum=600))
        self.clock.advance(120)
        neg = self.cache.get_negative("www.example.", "A", stale=True)
        self.assertFalse(neg.stale)
        self.assertEqual(neg.rcode, dns.rcode.NXDOMAIN)


class CorruptionTests(CacheTestCase):
    """Shared storages are not trusted: what does not decode is a miss, never an error."""

    def setUp(self) -> None:
        super().setUp()
        self.storage = MemoryStorage(1024 * 1024, self.clock)
        self.cache = Cache(self.clock, self.storage)
        self.cache.put_rrset(a("www.example."), Rank.ANSWER, rrsigs=rrsig("www.example.", "A"))
        self.cache.put_negative("nx.example.", "A", dns.rcode.NXDOMAIN, soa())
        self.keys = list(self.storage._data)
        self.values = [self.storage.get(key) for key in self.keys]

    def assertAllMiss(self) -> None:
        self.assertIsNone(self.cache.get_rrset("www.example.", "A"))
        self.assertIsNone(self.cache.get_negative("nx.example.", "A"))
        self.assertEqual(self.cache.count(), 0)

    def overwrite(self, change) -> None:
        for key, value in zip(self.keys, self.values, strict=True):
            self.storage.set(key, change(value), 3600)

    def test_garbage(self) -> None:
        self.overwrite(lambda value: b"\x01\x02garbage")
        self.assertAllMiss()
        self.assertEqual(self.cache.stats()["corrupt"], 2)

    def test_truncated(self) -> None:
        for cut in (1, 5, 17, 30):
            self.overwrite(lambda value, cut=cut: value[:-cut])
            self.assertAllMiss()

    def test_trailing_bytes(self) -> None:
        self.overwrite(lambda value: value + b"\x00")
        self.assertAllMiss()

    def test_foreign_version(self) -> None:
        self.overwrite(lambda value: bytes([FORMAT_VERSION + 1]) + value[1:])
        self.assertAllMiss()

    def test_bad_rank(self) -> None:
        self.overwrite(lambda value: value[:2] + b"\x63" + value[3:])
        self.assertAllMiss()

    def test_swapped_values(self) -> None:
        """A value stored under another key (a confused or hostile backend) is not served."""
        self.storage.set(self.keys[0], self.values[1], 3600)
        self.storage.set(self.keys[1], self.values[0], 3600)
        self.assertAllMiss()

    def test_swapped_after_hits(self) -> None:
        """Values already decoded once are still checked against the key they are under."""
        self.assertIsNotNone(self.cache.get_rrset("www.example.", "A"))
        self.assertIsNotNone(self.cache.get_negative("nx.example.", "A"))
        self.test_swapped_values()

    def test_every_byte_flip(self) -> None:
        """Flipping any single byte either still decodes to the same question or misses."""
        original = self.values[0]
        for i in range(len(original)):
            self.storage.set(
                self.keys[0], original[:i] + bytes([original[i] ^ 0xFF]) + original[i + 1 :], 3600
            )
            hit = self.cache.get_rrset("www.example.", "A")
            if hit is not None:
                self.assertEqual(hit.rrset.name, dns.name.from_text("www.example."))
                self.assertEqual(hit.rrset.rdtype, dns.rdatatype.A)

    def test_future_stored_at_bounded(self) -> None:
        self.clock.advance(-1000)
        self.assertEqual(self.cache.get_rrset("www.example.", "A").rrset.ttl, 300)


class ConfigTests(CacheTestCase):
    def test_defaults(self) -> None:
        self.assertEqual(self.cache.size, 100 * 1024**2)
        self.assertEqual(self.cache.min_ttl(), 5)
        self.assertEqual(self.cache.max_ttl(), 6 * 86400)
        self.assertTrue(self.cache.serve_stale)
        self.assertEqual(self.cache.storage, "memory://")
        self.assertEqual(self.cache.count(), 0)
        stats = self.cache.stats()
        for name in ("hit", "miss", "insert", "delete", "evict", "stale"):
            self.assertEqual(stats[name], 0)

    def test_ttl_setters(self) -> None:
        self.assertEqual(self.cache.max_ttl(3600), 3600)
        self.assertEqual(self.cache.min_ttl(10), 10)
        self.assertRaises(ValueError, self.cache.min_ttl, 7200)
        self.assertRaises(ValueError, self.cache.max_ttl, 5)
        self.assertRaises(ValueError, self.cache.min_ttl, -1)
        self.assertRaises(ValueError, self.cache.max_ttl, 2**31)
        self.assertRaises(ValueError, self.cache.max_ttl, "1h")
        self.assertEqual((self.cache.min_ttl(), self.cache.max_ttl()), (10, 3600))

    def test_bad_size(self) -> None:
        for bad in (-1, "big", None):
            with self.assertRaises(ValueError):
                self.cache.size = bad
        self.assertRaises(ValueError, Cache, self.clock, size=-1)
        self.assertEqual(self.cache.size, 100 * 1024**2)

    def test_open_and_storage(self) -> None:
        self.cache.put_rrset(a("www.example."), Rank.ANSWER)
        self.assertTrue(self.cache.open(10 * 1024**2))
        self.assertEqual(self.cache.size, 10 * 1024**2)
        self.assertEqual(self.cache.count(), 0)
        with self.assertRaises(ValueError) as caught:
            self.cache.storage = "sqlite:///tmp/nowhere"
        self.assertIn("unsupported cache storage", str(caught.exception))
        self.assertEqual(self.cache.storage, "memory://")
        self.assertRaises(ValueError, self.cache.open, -1)
        self.cache.storage = "memory://"
        self.assertEqual(self.cache.size, 10 * 1024**2)

    def test_serve_stale_validated(self) -> None:
        with self.assertRaises(ValueError):
            self.cache.serve_stale = "yes"
        with self.assertRaises(ValueError):
            self.cache.stale_ttl = 0

    def test_stats_count(self) -> None:
        self.cache.put_rrset(a("www.example."), Rank.ANSWER)
        self.cache.get_rrset("www.example.", "A")
        self.cache.get_rrset("nothing.example.", "A")
        stats = self.cache.stats()
        self.assertEqual((stats["insert"], stats["hit"], stats["miss"]), (1, 1, 1))
        self.assertEqual(stats["count"], 1)


class FuzzTests(CacheTestCase):
    """Whatever bytes a backend returns, lookups answer None or well-formed data."""

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=120), st.integers(0, 200))
    def test_random_values_never_raise(self, noise: bytes, cut: int) -> None:
        storage = MemoryStorage(1024 * 1024, self.clock)
        cache = Cache(self.clock, storage)
        cache.put_rrset(a("www.example."), Rank.ANSWER, rrsigs=rrsig("www.example.", "A"))
        cache.put_negative("nx.example.", "A", dns.rcode.NXDOMAIN, soa())
        for key in list(storage._data):
            good = storage.get(key)
            # Keep a valid header (and key) half of the time, so the body parser is reached.
            storage.set(key, good[: min(cut, len(good))] + noise, 3600)
        hit = cache.get_rrset("www.example.", "A")
        if hit is not None:
            self.assertEqual(hit.rrset.name, dns.name.from_text("www.example."))
        neg = cache.get_negative("a.nx.example.", "A")
        if neg is not None:
            self.assertEqual(neg.soa.rdtype, dns.rdatatype.SOA)


class LookupTests(CacheTestCase):
    """Cache.lookup: data, else the CNAME, else a denial, as a resolver asks; derive()."""

    def cname(self, name: str, target: str) -> dns.rrset.RRset:
        return dns.rrset.from_text(name, 300, "IN", "CNAME", target)

    def test_data_then_alias_then_denial(self) -> None:
        self.assertIsNone(self.cache.lookup("www.example.", "A"))
        self.cache.put_negative("www.example.", "A", dns.rcode.NOERROR, soa())
        found = self.cache.lookup("www.example.", "A")
        self.assertIsInstance(found, CachedNegative)
        self.assertEqual(found.rcode, dns.rcode.NOERROR)
        self.cache.put_rrset(self.cname("www.example.", "web.example."), Rank.ANSWER)
        found = self.cache.lookup("www.example.", "A")
        self.assertEqual(found.rrset.rdtype, dns.rdatatype.CNAME)
        self.cache.put_rrset(a("www.example."), Rank.AUTH_ANSWER)  # replaces the NODATA
        self.assertEqual(self.cache.lookup("www.example.", "A").rrset.rdtype, dns.rdatatype.A)
        # A CNAME question gets the CNAME as its data.
        found = self.cache.lookup("www.example.", "CNAME")
        self.assertEqual(found.rrset.rdtype, dns.rdatatype.CNAME)

    def test_bogus_only_for_cd(self) -> None:
        self.cache.put_rrset(a("www.example."), Rank.ANSWER, security=Security.BOGUS)
        self.assertIsNone(self.cache.lookup("www.example.", "A"))
        self.assertEqual(self.cache.lookup("www.example.", "A", cd=True).security, Security.BOGUS)
        # A bogus RRset does not hide a usable alias or denial behind it.
        self.cache.put_rrset(self.cname("www.example.", "web.example."), Rank.ANSWER)
        self.assertEqual(
            self.cache.lookup("www.example.", "A").rrset.rdtype, dns.rdatatype.CNAME
        )

    def test_nxdomain_above_and_stale(self) -> None:
        self.cache.put_negative("nx.example.", "A", dns.rcode.NXDOMAIN, soa(minimum=60))
        found = self.cache.lookup("deep.nx.example.", "AAAA")
        self.assertEqual(found.rcode, dns.rcode.NXDOMAIN)
        self.assertEqual(found.name, dns.name.from_text("nx.example."))
        self.clock.advance(61)
        self.assertIsNone(self.cache.lookup("deep.nx.example.", "AAAA"))
        self.assertTrue(self.cache.lookup("deep.nx.example.", "AAAA", stale=True).stale)

    def test_counted_as_three_lookups(self) -> None:
        self.cache.lookup("nothing.example.", "A")
        self.assertEqual(self.cache.stats()["miss"], 3)

    def test_derive_once_per_value(self) -> None:
        made: list[dns.rrset.RRset] = []

        def count(rrset: dns.rrset.RRset) -> int:
            made.append(rrset)
            return len(rrset)

        self.assertIsNone(self.cache.derive("www.example.", "A", count))
        self.cache.put_rrset(a("www.example.", 300, "192.0.2.1", "192.0.2.2"), Rank.GLUE)
        self.assertIsNone(self.cache.derive("www.example.", "A", count))  # below ANSWER
        self.assertEqual(
            self.cache.derive("www.example.", "A", count, min_rank=Rank.GLUE),
            (2, Security.UNCHECKED),
        )
        self.cache.derive("www.example.", "A", count, min_rank=Rank.GLUE)
        self.assertEqual(len(made), 1)
        # A new value is derived again; an expired one is not served.
        self.cache.put_rrset(a("www.example.", 60, "192.0.2.3"), Rank.ANSWER)
        self.assertEqual(self.cache.derive("www.example.", "A", count)[0], 1)
        self.assertEqual(len(made), 2)
        self.clock.advance(61)
        self.assertIsNone(self.cache.derive("www.example.", "A", count))

    def test_closest_walks_up(self) -> None:
        """closest(): the nearest ancestor with a usable RRset, skipping BOGUS ones
        unless cd, expired ones and those below min_rank; each level counts once."""
        def ns(name: str, target: str) -> dns.rrset.RRset:
            return dns.rrset.from_text(name, 60, "IN", "NS", target)

        def owner(rrset: dns.rrset.RRset) -> dns.name.Name:
            return rrset.name

        name = dns.name.from_text("a.b.example.")
        self.assertIsNone(self.cache.closest(name, "NS", owner))
        self.assertEqual(self.cache.stats()["miss"], 4)  # a.b.example, b.example, example, .
        self.cache.put_rrset(ns(".", "root."), Rank.AUTH_ANSWER)
        self.cache.put_rrset(ns("example.", "ns.example."), Rank.GLUE)  # below min_rank
        self.cache.put_rrset(ns("b.example.", "ns.b.example."), Rank.AUTHORITY,
                             security=Security.BOGUS)
        self.assertEqual(self.cache.closest(name, "NS", owner, min_rank=Rank.AUTHORITY),
                         (dns.name.root, Security.UNCHECKED, 3))
        self.assertEqual(
            self.cache.closest(name, "NS", owner, min_rank=Rank.AUTHORITY, cd=True),
            (dns.name.from_text("b.example."), Security.BOGUS, 1),
        )
        self.assertEqual(self.cache.closest(name, "NS", owner, min_rank=Rank.GLUE, cd=True)[2], 1)
        self.assertEqual(self.cache.closest(dns.name.from_text("b.example."), "NS", owner,
                                            min_rank=Rank.GLUE)[2], 1)
        self.cache.put_rrset(ns("b.example.", "ns.b.example."), Rank.AUTH_ANSWER,
                             security=Security.SECURE)
        self.assertEqual(self.cache.closest(name, "NS", owner)[1:], (Security.SECURE, 1))
        self.clock.advance(61)
        self.assertIsNone(self.cache.closest(name, "NS", owner, min_rank=Rank.GLUE, cd=True))

    def test_corrupt_data_then_denial_above(self) -> None:
        """A value under the data key that does not decode is dropped once, and the
        denial of an ancestor still answers."""
        storage = MemoryStorage(1024 * 1024, self.clock)
        cache = Cache(self.clock, storage)
        cache.put_negative("nx.example.", "A", dns.rcode.NXDOMAIN, soa())
        cache.put_rrset(a("www.nx.example."), Rank.ANSWER)  # a positive entry, read first
        key = name_key(dns.name.from_text("www.nx.example.")) + b"\x00T\x00\x01\x00\x01"
        storage.set(key, storage.get(key)[:-3], 3600)  # the header reads, the body does not
        found = cache.lookup("www.nx.example.", "A")
        self.assertEqual(found.rcode, dns.rcode.NXDOMAIN)
        self.assertEqual(cache.stats()["corrupt"], 1)
        self.assertIsNone(storage.get(key))


class DenialSearchTests(CacheTestCase):
    """The RFC 8020 search reads only the NXDOMAIN keys a cache stored when it alone
    writes its storage; a storage others write is searched in full."""

    def nx(self, cache: Cache, name: str) -> bool:
        return cache.put_negative(name, "A", dns.rcode.NXDOMAIN, soa())

    def test_storage_written_by_another_cache(self) -> None:
        storage = MemoryStorage(1024 * 1024, self.clock)
        writer, reader = Cache(self.clock, storage), Cache(self.clock, storage)
        reader.lookup("a.b.nx.example.", "A")  # nothing yet, nothing remembered
        self.assertTrue(self.nx(writer, "nx.example."))
        root_soa = dns.rrset.from_text(".", 3600, "IN", "SOA", "a.root. host.root. 1 2 3 4 600")
        self.assertTrue(
            writer.put_negative(".", "A", dns.rcode.NXDOMAIN, root_soa, rank=Rank.ANSWER)
        )
        found = reader.lookup("a.b.nx.example.", "A")
        self.assertEqual(found.rcode, dns.rcode.NXDOMAIN)
        self.assertEqual(found.name, dns.name.from_text("nx.example."))
        self.assertEqual(reader.lookup("www.example.", "A").name, dns.name.root)
        # Data stored by the reader ends the NXDOMAIN the writer stored for that name.
        reader.put_rrset(a("nx.example."), Rank.AUTH_ANSWER)
        self.assertIsNone(writer.get_negative("nx.example.", "MX", min_rank=Rank.AUTH_ANSWER))
        self.assertEqual(writer.lookup("www.example.", "A").name, dns.name.root)

    def test_own_storage_opened(self) -> None:
        self.cache.open(1024 * 1024)
        self.assertIsNone(self.cache.lookup("deep.nx.example.", "A"))
        self.nx(self.cache, "nx.example.")
        self.assertEqual(self.cache.lookup("deep.nx.example.", "A").rcode, dns.rcode.NXDOMAIN)
        self.cache.put_rrset(a("nx.example."), Rank.AUTH_ANSWER)
        self.assertIsNone(self.cache.lookup("deep.nx.example.", "A"))

    def test_cleared_then_stored_again(self) -> None:
        self.nx(self.cache, "nx.example.")
        self.cache.clear("example.")
        self.assertIsNone(self.cache.lookup("a.nx.example.", "A"))
        self.nx(self.cache, "nx.example.")
        self.assertEqual(self.cache.lookup("a.nx.example.", "A").rcode, dns.rcode.NXDOMAIN)
        self.cache.clear()
        self.assertIsNone(self.cache.lookup("a.nx.example.", "A"))
        self.nx(self.cache, "nx.example.")
        self.assertEqual(self.cache.lookup("a.nx.example.", "A").rcode, dns.rcode.NXDOMAIN)

    def test_evicted_denials_forgotten(self) -> None:
        """A flood of NXDOMAINs through a small cache: what is still stored still denies,
        and the keys the storage evicted are not remembered without bound."""
        self.cache.size = 60_000
        for i in range(5000):
            self.nx(self.cache, f"nx{i}.example.")
        stats = self.cache.stats()
        self.assertGreater(stats["evict"], 4500)
        self.assertLess(len(self.cache._nx), 4200)
        self.assertEqual(self.cache.lookup("a.nx4999.example.", "A").rcode, dns.rcode.NXDOMAIN)
        self.assertIsNone(self.cache.lookup("a.nx0.example.", "A"))

    def test_expired_denial_is_a_miss(self) -> None:
        self.cache.serve_stale = False
        self.nx(self.cache, "nx.example.")
        self.clock.advance(601)
        self.assertIsNone(self.cache.lookup("a.nx.example.", "A"))
        self.assertIsNone(self.cache.lookup("a.nx.example.", "A", stale=True))


class SharedStorageTests(CacheTestCase):
    """Cache.shared says whether fetch() may have anything to wait for."""

    def test_local_storages_are_not_shared(self) -> None:
        self.assertFalse(self.cache.shared)
        self.assertIsNone(self.cache.fetch("www.example.", "A"))
        self.assertFalse(Cache(self.clock, MemoryStorage(1024, self.clock)).shared)

    def test_a_storage_that_fetches(self) -> None:
        asked: list[list[bytes]] = []

        class Fetching(MemoryStorage):
            def fetch(self, keys: list[bytes]) -> str:
                asked.append(list(keys))
                return "waiting"

        cache = Cache(self.clock, Fetching(1024 * 1024, self.clock))
        self.assertTrue(cache.shared)
        self.assertEqual(cache.fetch("www.example.", "A"), "waiting")
        prefix = name_key(dns.name.from_text("www.example."))
        self.assertEqual(
            asked[0][:2], [prefix + b"\x00T\x00\x01\x00\x01", prefix + b"\x00T\x00\x05\x00\x01"]
        )
        self.assertEqual(len(asked[0]), 5)  # and NXDOMAIN of the name, example. and the root
        cache.put_rrset(a("www.example."), Rank.ANSWER)
        self.assertIsNone(cache.fetch("www.example.", "A"))  # held here: nothing to wait for
        cache.open(1024 * 1024)
        self.assertFalse(cache.shared)


class EncodingTests(unittest.TestCase):
    """The storage format stays what FORMAT_VERSION 1 says, however the bytes are made."""

    def test_encode_as_dnspython_writes(self) -> None:
        import random
        import struct

        from kresolver.cache.cache import _encode_rrsets

        rng = random.Random(2181)
        letters = "aBcDxYz09-"
        for _ in range(400):
            def name() -> str:
                labels = ["".join(rng.choice(letters) for _ in range(rng.randint(1, 9)))
                          for _ in range(rng.randint(0, 3))]
                return ".".join(labels) + "." if labels else "."

            rdtype, make = rng.choice([
                ("A", lambda: f"10.0.{rng.randint(0, 255)}.{rng.randint(0, 255)}"),
                ("AAAA", lambda: f"2001:db8::{rng.randint(0, 65535):x}"),
                ("NS", name), ("CNAME", name), ("PTR", name), ("DNAME", name),
                ("MX", lambda: f"{rng.randint(0, 65535)} {name()}"),
                ("SOA", lambda: f"{name()} {name()} {rng.randint(0, 2**32 - 1)} 1 2 3 4"),
                ("TXT", lambda: f'"{name()}"'),
                ("SRV", lambda: f"1 2 {rng.randint(0, 65535)} {name()}"),
            ])
            texts = {make() for _ in range(rng.randint(1, 4))}
            rrset = dns.rrset.from_text(name(), 300, "IN", rdtype, *texts)
            expected = [
                rrset.name.to_wire(),
                struct.pack("!HHHH", rrset.rdtype, rrset.rdclass, rrset.covers, len(rrset)),
            ]
            for rdata in rrset:
                wire = rdata.to_wire()
                expected += [struct.pack("!H", len(wire)), wire]
            parts: list[bytes] = []
            _encode_rrsets([rrset], parts)
            self.assertEqual(b"".join(parts), b"".join(expected), rrset.to_text())
