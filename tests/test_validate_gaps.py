"""What a validator remembers about failures, and how it names them.

- a bogus answer is not asked again for a while: the next client without CD gets
  SERVFAIL with the same EDE from memory, a CD client the data from the cache;
- a zone whose keys cannot be had is remembered (the real root key over an unsigned lab:
  one ``. DNSKEY`` query for several questions, not one per level of nesting);
- a DS that no server of the parent gives is not "bogus": SERVFAIL with EDE 22.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
from twisted.internet import defer, reactor
from twisted.trial import unittest

from kresolver.engine import Engine
from kresolver.testing.lab import Lab, ask
from kresolver.testing.zones import standard_lab
from tests.test_validate import TIME_LIMIT, ValidationCase, ede_codes

BASE = "127.0.85."
UNSIGNED_BASE = "127.0.86."


def seen(response: dns.message.Message) -> tuple[str, bool, list[int]]:
    return (
        dns.rcode.to_text(response.rcode()),
        bool(response.flags & dns.flags.AD),
        ede_codes(response),
    )


class Case(ValidationCase):
    base = BASE


class BogusRememberedTests(Case):
    @defer.inlineCallbacks
    def test_second_bogus_question_is_not_asked_upstream(self) -> Any:
        first = yield self.query("badsig.bogus.lab.")
        self.assertEqual(seen(first), ("SERVFAIL", False, [6]))
        before = self.total_queries()
        second = yield self.query("badsig.bogus.lab.")
        self.assertEqual(seen(second), ("SERVFAIL", False, [6]))
        self.assertEqual(self.total_queries(), before)
        # CD: the data, from the cache, without AD and without asking.
        response = yield self.query("badsig.bogus.lab.", cd=True)
        self.assertEqual(seen(response), ("NOERROR", False, []))
        self.assertEqual(response.answer[0][0].to_text(), "192.0.2.61")
        self.assertEqual(self.total_queries(), before)
        self.assertLessEqual(response.answer[0].ttl, 60)  # kept briefly
        # Emptying the cache forgets the verdict too: the next question goes out.
        self.engine.cache.clear()
        self.engine.answers.clear()
        third = yield self.query("badsig.bogus.lab.")
        self.assertEqual(seen(third), ("SERVFAIL", False, [6]))
        self.assertGreater(self.total_queries(), before)

    @defer.inlineCallbacks
    def test_bogus_for_want_of_keys_is_remembered(self) -> Any:
        for name, ede in (("www.nokey.lab.", 9), ("nowhere.nonsec.lab.", 12)):
            first = yield self.query(name)
            self.assertEqual(seen(first), ("SERVFAIL", False, [ede]), name)
            before = self.total_queries()
            second = yield self.query(name)
            self.assertEqual(seen(second), ("SERVFAIL", False, [ede]), name)
            self.assertEqual(self.total_queries(), before, name)

    @defer.inlineCallbacks
    def test_good_names_beside_a_bogus_one_still_resolve(self) -> Any:
        yield self.query("badsig.bogus.lab.")
        response = yield self.query("www.bogus.lab.")
        self.assertEqual(seen(response), ("NOERROR", True, []))
        response = yield self.query("badsig.bogus.lab.", "AAAA")
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)


class DeadParentTests(Case):
    """alpha.lab.'s DS is served with TTL 0 (its signature allows any lower TTL), so it
    is asked anew once the validator forgot it, when the parent's server is dead."""

    def prepare(self, spec: Any) -> Any:
        servers = dict(spec.servers)
        nic = servers["ns1.nic.lab."]
        text = re.sub(r"^alpha\.lab\. 3600 IN DS", "alpha.lab. 0 IN DS", nic.zones["lab."],
                      flags=re.M)
        assert text != nic.zones["lab."]
        servers["ns1.nic.lab."] = replace(nic, zones={"lab.": text})
        return replace(spec, servers=servers)

    @defer.inlineCallbacks
    def test_unreachable_parent_is_not_bogus(self) -> Any:
        self.engine.cache.min_ttl(0)
        first = yield self.query("www.alpha.lab.")
        self.assertEqual(seen(first), ("NOERROR", True, []))
        nic = self.lab.server("ns1.nic.lab.")
        nic.drop = True
        self.engine.modules["validate"].validator.forget()
        self.engine.cache.clear("www.alpha.lab.", exact=True)
        self.engine.answers.clear()
        response = yield self.query("www.alpha.lab.")
        self.assertEqual(response.rcode(), dns.rcode.SERVFAIL)
        [code] = ede_codes(response)
        self.assertIn(code, (22, 23, 5))
        # Remembered briefly: the next name of the zone does not try the dead parent again.
        asked = len(nic.queries)
        response = yield self.query("txt.alpha.lab.", "TXT")
        self.assertEqual(ede_codes(response), [code])
        self.assertEqual(len(nic.queries), asked)
        # Not bogus data either: CD gets it, and nothing unvalidated is cached for later.
        response = yield self.query("www.alpha.lab.", cd=True)
        self.assertEqual(seen(response), ("NOERROR", False, []))
        hit = self.engine.cache.get_rrset(dns.name.from_text("www.alpha.lab."), "A")
        self.assertIsNone(hit)


class UnsignedUnderRealRootTests(unittest.TestCase):
    """The IANA root key over the unsigned lab: every answer is bogus (no root DNSKEY),
    and the root's DNSKEY is asked once, not once per nesting level and question."""

    def setUp(self) -> None:
        self.lab = Lab(reactor, base=UNSIGNED_BASE)
        self.lab.load(standard_lab(UNSIGNED_BASE))
        self.lab.start()
        self.addCleanup(self.lab.stop)
        engine = Engine(reactor)
        engine.load_defaults()  # the built-in root anchor stays
        engine.modules.unload("priming")
        engine.root_hints = self.lab.root_hints()
        engine.option("ALLOW_LOCAL", True)
        engine.net.outgoing_v4(UNSIGNED_BASE + "254")
        engine.net.ipv6 = False
        engine.namespace["iterate"].time_limit = TIME_LIMIT
        engine.net.listen(UNSIGNED_BASE + "253", 0)
        engine.startService()
        self.addCleanup(engine.stopService)
        [(_, self.port)] = engine.net.addresses

    @defer.inlineCallbacks
    def test_root_dnskey_asked_once(self) -> Any:
        for name in ("www.alpha.lab.", "www.beta.kres.", "chain.alpha.lab."):
            query = dns.message.make_query(name, "A", want_dnssec=True)
            wire = yield ask(query, UNSIGNED_BASE + "253", self.port, "udp",
                             timeout=TIME_LIMIT + 4)
            self.assertEqual(seen(dns.message.from_wire(wire)), ("SERVFAIL", False, [9]))
        root = next(s for s in self.lab.servers.values() if s.address in
                    {a for addrs in self.lab.root_hints().values() for a in addrs})
        asked = [q for q in root.queries if q[0] == "." and q[1] == dns.rdatatype.DNSKEY]
        self.assertEqual(len(asked), 1)
