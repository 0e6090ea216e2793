"""The predict module: prefetch of expiring answers and learning of periodic questions."""

from __future__ import annotations

import dns.message
from twisted.internet import reactor, task
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from kresolver.engine import Engine
from kresolver.modules.predict import query_for_key
from kresolver.wire import fast_query
from tests.support import SYNTH_DROPIN, install_dropins, udp_exchange


def key_of(name: str, rdtype: str = "A") -> bytes:
    return fast_query(dns.message.make_query(name, rdtype).to_wire()).key


class KeyTests(unittest.TestCase):
    def test_query_for_key_round_trip(self) -> None:
        for query in (
            dns.message.make_query("WWW.Lab.", "AAAA"),
            dns.message.make_query("www.lab.", "A", use_edns=0, want_dnssec=True),
        ):
            key = fast_query(query.to_wire()).key
            self.assertEqual(fast_query(query_for_key(key)).key, key)


class LearningTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.engine = Engine(self.clock)
        self.engine.modules.load("predict")
        self.predict = self.engine.modules["predict"]
        self.refreshed: list[bytes] = []
        self.predict.refresh = self.refreshed.append
        self.addCleanup(self.engine.modules.unload, "predict")

    def window(self, *names: str) -> None:
        self.predict.current.update(key_of(n) for n in names)
        self.clock.advance(self.predict.window * 60)

    def test_periodic_question_is_predicted(self) -> None:
        # asked every third window: windows 1, 4, 7
        for epoch in range(1, 8):
            self.window(*(["daily.lab."] if epoch in (1, 4, 7) else []), "noise.lab.")
        self.assertEqual(self.predict.learned, 1)
        self.assertIn(10, self.predict.queue)
        self.assertEqual(self.engine.metrics["predict.queue"], 1)
        for _ in range(3):
            self.window()
        self.assertEqual(self.refreshed, [key_of("daily.lab.")])
        self.assertEqual(self.engine.metrics["predict.epoch"], 10)

    def test_period_zero_only_prefetches(self) -> None:
        self.engine.namespace["predict"].config({"period": 0})
        self.predict.expiring.add(key_of("hot.lab."))
        self.predict.current.add(key_of("other.lab."))
        self.clock.advance(self.predict.window * 60)
        self.assertEqual(self.refreshed, [key_of("hot.lab.")])
        self.assertEqual(self.predict.learned, 0)

    def test_config_validation(self) -> None:
        api = self.engine.namespace["predict"]
        self.assertEqual(api.config({"window": 5, "period": 12}), {"window": 5, "period": 12})
        self.assertRaises(ValueError, api.config, {"window": 0})
        self.assertRaises(ValueError, api.config, {"period": -1})
        self.assertRaises(ValueError, api.config, {"windows": 3})
        self.assertRaises(ValueError, api.config, {"window": "5"})


class PrefetchTests(unittest.TestCase):
    """An answer served near its expiry is resolved again and the fast path renewed."""

    def setUp(self) -> None:
        install_dropins(self, {"synth": SYNTH_DROPIN})
        self.engine = Engine(reactor)
        self.engine.run_config(
            "modules = ['synth', 'predict']\nsynth.ttl = 2\nnet.listen('127.0.40.91', 0)\n"
        )
        self.engine.startService()
        self.addCleanup(self.engine.stopService)
        self.server = self.engine.net.addresses[0]

    async def test_prefetch(self) -> None:
        wire = dns.message.make_query("hot.synth.test.", "A").to_wire()
        for _ in range(2):
            self.assertIsNotNone(await deferToThread(udp_exchange, self.server, wire))
        synth = self.engine.namespace["synth"]
        self.assertEqual(synth.seen, ["hot.synth.test."])  # second answer: fast path
        predict = self.engine.modules["predict"]
        self.assertEqual(predict.expiring, {fast_query(wire).key})
        self.assertEqual(predict.process(), 1)
        self.assertEqual(synth.seen, ["hot.synth.test.", "hot.synth.test."])
        self.assertEqual(self.engine.metrics["answer.total"], 2)  # the refresh is not counted
