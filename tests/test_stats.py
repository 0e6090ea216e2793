"""The stats module: metrics API, sampled frequent questions, expiring answers."""

from __future__ import annotations

from collections import deque

import dns.message
import dns.rcode
from twisted.internet import reactor, task
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from kresolver.cache.answers import AnswerCache
from kresolver.cache.storage.memory import MemoryStorage
from kresolver.engine import Engine
from kresolver.modules.stats import Samples, describe_key
from kresolver.wire import fast_query
from tests.support import SYNTH_DROPIN, install_dropins, udp_exchange


class StatsAPITests(unittest.TestCase):
    def setUp(self) -> None:
        self.engine = Engine(task.Clock())
        self.engine.modules.load("stats")
        self.stats = self.engine.namespace["stats"]

    def test_set_get_list(self) -> None:
        self.stats.set("filter.match", 5)
        self.stats["filter.other"] = 2
        self.engine.metrics["answer.total"] = 7
        self.assertEqual(self.stats.get("filter.match"), 5)
        self.assertEqual(self.stats["filter.other"], 2)
        self.assertIsNone(self.stats.get("nothing"))
        self.assertEqual(self.stats.list("filter"), {"filter.match": 5, "filter.other": 2})
        self.assertEqual(list(self.stats.list()), ["answer.total", "filter.match", "filter.other"])

    def test_set_rejects_bad_values(self) -> None:
        self.assertRaises(ValueError, self.stats.set, "x", "five")
        self.assertRaises(ValueError, self.stats.set, "", 1)
        self.assertRaises(ValueError, self.stats.set, "x", True)

    def test_upstreams(self) -> None:
        class FakeUpstream:
            recent = deque([("127.0.0.2", 1.5), ("127.0.0.3", 20.0), ("127.0.0.2", 2.5)])

        self.engine.upstream = FakeUpstream()
        self.assertEqual(self.stats.upstreams(), {"127.0.0.2": [1.5, 2.5], "127.0.0.3": [20.0]})

    def test_unload_releases_the_answer_cache_hook(self) -> None:
        self.assertEqual(len(self.engine.answers.on_expiring), 1)
        self.engine.modules.unload("stats")
        self.assertEqual(self.engine.answers.on_expiring, [])
        self.assertNotIn("stats", self.engine.namespace)


class SamplesTests(unittest.TestCase):
    def test_bounded_keeps_the_frequent(self) -> None:
        samples = Samples(limit=10)
        for _ in range(5):
            samples.add("popular")
        for i in range(30):
            samples.add(f"rare{i}")
        self.assertLessEqual(len(samples.counts), 10)
        self.assertEqual(samples.counts["popular"], 5)


class ExpiringTests(unittest.TestCase):
    def test_answers_near_expiry_are_reported(self) -> None:
        clock = task.Clock()
        answers = AnswerCache(MemoryStorage(1 << 20, clock), clock)
        seen: list[bytes] = []
        answers.on_expiring.append(seen.append)
        query = dns.message.make_query("www.lab.", "A")
        response = dns.message.make_response(query)
        response.answer.append(dns.rrset.from_text("www.lab.", 10, "IN", "A", "192.0.2.1"))
        wire = query.to_wire()
        fast = fast_query(wire)
        answers.store(fast, response.to_wire())
        self.assertIsNotNone(answers.lookup(wire, fast, 512))
        self.assertEqual(seen, [])
        clock.advance(8.5)
        self.assertIsNotNone(answers.lookup(wire, fast, 512))
        self.assertEqual(seen, [fast.key])
        described = describe_key(fast.key)
        self.assertEqual((described["name"], described["type"]), ("www.lab.", "A"))


class EndToEndTests(unittest.TestCase):
    """Counters from the transports and samples from the full path, on a live engine."""

    def setUp(self) -> None:
        install_dropins(self, {"synth": SYNTH_DROPIN})
        self.engine = Engine(reactor)
        self.engine.run_config("modules = ['synth', 'stats']\nnet.listen('127.0.40.90', 0)\n")
        self.engine.modules["stats"]._random.randrange = lambda n: 0  # sample everything
        self.engine.startService()
        self.addCleanup(self.engine.stopService)
        self.server = self.engine.net.addresses[0]

    async def test_metrics_and_frequent(self) -> None:
        for name in ("a.synth.test.", "a.synth.test.", "nx.synth.test."):
            wire = dns.message.make_query(name, "A", use_edns=0, want_dnssec=True).to_wire()
            reply = await deferToThread(udp_exchange, self.server, wire)
            self.assertIsNotNone(reply)
        stats = self.engine.namespace["stats"]
        self.assertEqual(stats["answer.total"], 3)
        self.assertEqual(stats["answer.cached"], 1)  # the repeat came from the fast path
        self.assertEqual(stats["answer.noerror"], 2)
        self.assertEqual(stats["answer.nxdomain"], 1)
        self.assertEqual(stats["query.dnssec"], 3)
        self.assertEqual(stats["query.edns"], 3)
        buckets = [v for k, v in stats.list("answer.").items() if k.endswith("ms")]
        self.assertEqual(sum(buckets) + (stats.get("answer.slow") or 0), 3)
        frequent = {(f["name"], f["type"]): f["count"] for f in stats.frequent()}
        self.assertEqual(frequent, {("a.synth.test.", "A"): 1, ("nx.synth.test.", "A"): 1})
        stats.clear_frequent()
        self.assertEqual(stats.frequent(), [])
