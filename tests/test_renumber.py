"""renumber and policy.REROUTE: addresses in answers moved into another space."""

from __future__ import annotations

import dns.message
import dns.rdatatype
import dns.rrset
from twisted.internet import defer
from twisted.trial import unittest

from kresolver.modules.renumber import Renumberer
from kresolver.resolve.request import Request
from tests.policy_support import EngineCase


class RenumberTests(EngineCase):
    modules = ("policy", "answerer")

    def setUp(self) -> None:
        super().setUp()
        self.answerer.addresses["www.example."] = ["10.10.10.7", "192.0.2.1"]
        self.answerer.addresses["v6.example."] = ["2001:db8:1::5"]

    @defer.inlineCallbacks
    def test_module_config(self):
        self.config("modules = {'renumber': [('10.10.10.0/24', '192.168.1.0'), "
                    "('2001:db8:1::/48', 'fd00:1:2::')]}")
        answer = yield self.ask("www.example.")
        self.assertEqual(sorted(r.to_text() for r in answer.answer[0]),
                         ["192.0.2.1", "192.168.1.7"])
        self.assertEqual(answer.answer[0].ttl, 300)
        answer = yield self.ask("v6.example.", "AAAA")
        self.assertEqual(answer.answer[0][0].to_text(), "fd00:1:2::5")

    @defer.inlineCallbacks
    def test_reroute_postrule(self):
        self.config("rule = policy.add(policy.all(policy.REROUTE("
                    "{'10.0.0.0/8': '127.0.0.0'})), True)")
        answer = yield self.ask("www.example.")
        self.assertEqual(sorted(r.to_text() for r in answer.answer[0]),
                         ["127.10.10.7", "192.0.2.1"])
        self.assertEqual(self.engine.namespace["rule"].count, 1)
        self.assertTrue(self.engine.namespace["rule"].postrule)


class RenumbererTests(unittest.TestCase):
    def test_signatures_of_rewritten_sets_go(self):
        query = dns.message.make_query("a.example.", "A")
        req = Request(None, query.to_wire(), query, None, None, "udp", 0)
        req.answer.answer.append(dns.rrset.from_text("a.example.", 60, "IN", "A", "10.0.0.1"))
        req.answer.answer.append(dns.rrset.from_text(
            "a.example.", 60, "IN", "RRSIG",
            "A 13 2 60 20300101000000 20200101000000 1 example. AAAA"))
        self.assertTrue(Renumberer([("10.0.0.0/8", "172.16.0.0")]).rewrite(req))
        self.assertEqual([r.rdtype for r in req.answer.answer], [dns.rdatatype.A])
        self.assertEqual(req.answer.answer[0][0].to_text(), "172.0.0.1")
        self.assertFalse(Renumberer([("192.0.2.0/24", "10.0.0.0")]).rewrite(req))

    def test_bad_config(self):
        self.assertRaises(ValueError, Renumberer, [("10.0.0.0/8", "::1")])
        self.assertRaises(ValueError, Renumberer, [("10.0.0.0/8", "1.2.3.0/24")])
        self.assertRaises(ValueError, Renumberer, [("nope", "1.2.3.4")])
        self.assertRaises(ValueError, Renumberer, [])
