"""End-to-end recursive resolution over real UDP/TCP against the in-process lab.

Every test starts the standard lab hierarchy on 127.0.50.x (port 53 of each address, as
delegations carry no port) and a resolver on 127.0.50.253 (port 0) whose root hints point
at the lab root and whose upstream queries leave from 127.0.50.254.
"""

from __future__ import annotations

import time
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from kresolver.cache.cache import Rank
from kresolver.engine import Engine
from kresolver.testing.lab import Lab, ask
from kresolver.testing.zones import standard_lab

BASE = "127.0.50."
LISTEN = BASE + "253"
OUTGOING = BASE + "254"
#: the resolver's time limit in these tests: short, so dead-server tests stay quick
TIME_LIMIT = 1.5


def answer_set(msg: dns.message.Message) -> list[str]:
    """The answer section as the lab's cases write it: "owner TYPE rdata", sorted."""
    out = []
    for rrset in msg.answer:
        for rdata in rrset:
            out.append(
                f"{rrset.name.to_text().lower()} {dns.rdatatype.to_text(rrset.rdtype)} "
                f"{rdata.to_text()}"
            )
    return sorted(out)


def ede_codes(msg: dns.message.Message) -> list[int]:
    return [opt.code for opt in msg.options if isinstance(opt, dns.edns.EDEOption)]


class ResolutionCase(unittest.TestCase):
    """A started lab and a resolver pointed at it."""

    priming = True
    spec_changes: dict[str, str] = {}

    def setUp(self) -> None:
        spec = standard_lab(BASE)
        self.spec = spec
        self.lab = Lab(reactor, base=BASE)
        self.prepare(spec)
        self.lab.load(spec)
        self.lab.start()
        self.addCleanup(self.lab.stop)
        engine = self.engine = Engine(reactor)
        # The layers under test only: validation is tested on its own (tests/test_validate*)
        for name in ("cache", "iterate", "priming") if self.priming else ("cache", "iterate"):
            engine.modules.load(name)
        engine.root_hints = self.lab.root_hints()
        engine.option("ALLOW_LOCAL", True)
        engine.net.outgoing_v4(OUTGOING)
        engine.net.ipv6 = False
        engine.namespace["iterate"].time_limit = TIME_LIMIT
        engine.upstream.explore = 0.0  # selection by score alone: tests name who is asked
        engine.net.listen(LISTEN, 0)
        engine.startService()
        self.addCleanup(engine.stopService)
        [(_, self.port)] = engine.net.addresses

    def prepare(self, spec: Any) -> None:
        """Change the lab's spec before it starts (subclasses)."""

    @defer.inlineCallbacks
    def query(
        self, name: str, rdtype: str = "A", transport: str = "udp", **kwargs: Any
    ) -> Any:
        kwargs.setdefault("use_edns", 0)
        query = dns.message.make_query(name, rdtype, **kwargs)
        wire = yield ask(query, LISTEN, self.port, transport, timeout=TIME_LIMIT + 4)
        response = dns.message.from_wire(wire)
        self.assertEqual(response.id, query.id)
        self.assertTrue(response.flags & dns.flags.QR)
        self.assertTrue(response.flags & dns.flags.RA)
        self.assertFalse(response.flags & dns.flags.AA)
        self.assertEqual(bool(response.flags & dns.flags.RD), bool(query.flags & dns.flags.RD))
        self.assertEqual(response.question[0].name.to_text(), query.question[0].name.to_text())
        return response

    def asked(self, server: str) -> list[tuple[str, str]]:
        """What lab server C{server} was asked: (name lowercased, type)."""
        return [
            (name.lower(), dns.rdatatype.to_text(rdtype))
            for name, rdtype, _ in self.lab.server(server).queries
        ]

    def total_queries(self) -> int:
        return sum(len(s.queries) for s in self.lab.servers.values())


class StandardLabTests(ResolutionCase):
    @defer.inlineCallbacks
    def test_every_case_of_the_lab(self) -> Any:
        for case in self.spec.cases:
            transport = "tcp" if case.qtype == "TXT" else "udp"
            response = yield self.query(case.qname, case.qtype, transport)
            self.assertEqual(
                dns.rcode.to_text(response.rcode()), case.rcode, f"{case.qname} {case.qtype}"
            )
            self.assertEqual(answer_set(response), list(case.answer), case.shows)

    @defer.inlineCallbacks
    def test_glue_delegation_minimal_answer_in_the_clients_case(self) -> Any:
        response = yield self.query("WwW.Alpha.LAB.", "A")
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertEqual(answer_set(response), ["www.alpha.lab. A 192.0.2.1"])
        self.assertEqual(response.answer[0].name.to_text(), "WwW.Alpha.LAB.")
        self.assertEqual(response.authority, [])
        self.assertEqual(response.additional, [])

    @defer.inlineCallbacks
    def test_glueless_delegation(self) -> Any:
        response = yield self.query("www.gamma.lab.", "A")
        self.assertEqual(answer_set(response), ["www.gamma.lab. A 192.0.2.20"])
        # the NS name was resolved by itself: its server was asked for its address
        self.assertIn(("ns1.beta.kres.", "A"), self.asked("ns1.beta.kres."))

    @defer.inlineCallbacks
    def test_cname_chain_across_zones(self) -> Any:
        response = yield self.query("chain.alpha.lab.", "A")
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        owners = [rrset.name.to_text().lower() for rrset in response.answer]
        self.assertEqual(
            owners, ["chain.alpha.lab.", "link2.beta.kres.", "link3.gamma.lab.", "end.alpha.lab."]
        )
        self.assertEqual(response.answer[-1][0].to_text(), "192.0.2.4")

    @defer.inlineCallbacks
    def test_dname(self) -> Any:
        response = yield self.query("www.dname.alpha.lab.", "A")
        types = [dns.rdatatype.to_text(rrset.rdtype) for rrset in response.answer]
        self.assertEqual(types, ["DNAME", "CNAME", "A"])
        self.assertEqual(response.answer[1][0].target.to_text(), "www.beta.kres.")
        self.assertEqual(response.answer[2][0].to_text(), "192.0.2.10")

    @defer.inlineCallbacks
    def test_nxdomain_carries_the_zone_soa(self) -> Any:
        response = yield self.query("nowhere.alpha.lab.", "A")
        self.assertEqual(response.rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(response.answer, [])
        [soa] = response.authority
        self.assertEqual(soa.rdtype, dns.rdatatype.SOA)
        self.assertEqual(soa.name.to_text().lower(), "alpha.lab.")
        self.assertLessEqual(soa.ttl, 300)  # min(SOA TTL, MINIMUM), RFC 2308

    @defer.inlineCallbacks
    def test_nxdomain_below_a_cached_nxdomain_needs_no_upstream(self) -> Any:
        yield self.query("nowhere.alpha.lab.", "A")
        before = self.total_queries()
        response = yield self.query("deeper.nowhere.alpha.lab.", "AAAA")
        self.assertEqual(response.rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(response.authority[0].rdtype, dns.rdatatype.SOA)
        self.assertEqual(self.total_queries(), before)  # RFC 8020, from the cache

    @defer.inlineCallbacks
    def test_nodata_carries_the_zone_soa(self) -> Any:
        for name in ("txt.alpha.lab.", "ent.alpha.lab."):
            response = yield self.query(name, "A")
            self.assertEqual(response.rcode(), dns.rcode.NOERROR)
            self.assertEqual(response.answer, [])
            self.assertEqual([r.rdtype for r in response.authority], [dns.rdatatype.SOA])

    @defer.inlineCallbacks
    def test_cname_chain_ending_in_nxdomain(self) -> Any:
        # the chain's last link decides the rcode (RFC 6604)
        zone = self.lab.server("ns1.alpha.lab.").zones[0]
        node = zone.find_node("broken", create=True)
        node.replace_rdataset(
            dns.rrset.from_text("broken.alpha.lab.", 300, "IN", "CNAME", "gone.beta.kres.")
            .to_rdataset()
        )
        self.lab.server("ns1.alpha.lab.").reload()
        response = yield self.query("broken.alpha.lab.", "A")
        self.assertEqual(response.rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(answer_set(response), ["broken.alpha.lab. CNAME gone.beta.kres."])
        self.assertEqual(response.authority[0].name.to_text().lower(), "beta.kres.")

    @defer.inlineCallbacks
    def test_wildcard(self) -> Any:
        response = yield self.query("anything.wild.alpha.lab.", "A")
        self.assertEqual(answer_set(response), ["anything.wild.alpha.lab. A 192.0.2.50"])
        response = yield self.query("anything.wild.alpha.lab.", "AAAA")
        self.assertEqual(response.answer, [])
        self.assertEqual(response.authority[0].rdtype, dns.rdatatype.SOA)

    @defer.inlineCallbacks
    def test_dead_zone_servfail_with_ede_within_the_limit(self) -> Any:
        started = time.monotonic()
        response = yield self.query("www.dead.lab.", "A")
        self.assertEqual(response.rcode(), dns.rcode.SERVFAIL)
        self.assertEqual(response.answer, [])
        codes = ede_codes(response)
        self.assertTrue(set(codes) & {22, 23}, codes)
        # the client's timeout is TIME_LIMIT + 4 s: an answer at all means within the cap
        self.assertLess(time.monotonic() - started, TIME_LIMIT + 4)

    @defer.inlineCallbacks
    def test_over_tcp(self) -> Any:
        response = yield self.query("big.alpha.lab.", "TXT", "tcp")
        self.assertEqual(len(response.answer[0]), 40)
        # the resolver had to use TCP upstream too: the answer does not fit 1232 bytes
        self.assertIn(("big.alpha.lab.", "TXT", "tcp"),
                      [(n.lower(), dns.rdatatype.to_text(t), tr)
                       for n, t, tr in self.lab.server("ns1.alpha.lab.").queries])

    @defer.inlineCallbacks
    def test_case_randomisation_visible_at_the_servers(self) -> Any:
        yield self.query("www.alpha.lab.", "A")
        yield self.query("www.beta.kres.", "A")
        names = [name for s in self.lab.servers.values() for name, _, _ in s.queries]
        self.assertTrue(any(n != n.lower() for n in names if n != "."), names)

    @defer.inlineCallbacks
    def test_no_0x20_for_listed_zones(self) -> Any:
        self.engine.run_config("iterate.no_0x20({'alpha.lab.'})")
        self.assertEqual(self.engine.namespace["iterate"].no_0x20(), ["alpha.lab."])
        yield self.query("www.alpha.lab.", "A")
        yield self.query("mail.alpha.lab.", "A")
        yield self.query("txt.alpha.lab.", "TXT")
        names = [name for name, _, _ in self.lab.server("ns1.alpha.lab.").queries]
        self.assertEqual(names, [n.lower() for n in names])

    @defer.inlineCallbacks
    def test_qname_minimisation_at_the_root(self) -> Any:
        yield self.query("www.alpha.lab.", "A")
        root = [q for q in self.asked("a.root-servers.lab.") if q != (".", "NS")]
        self.assertEqual(root, [("lab.", "NS")])
        self.assertEqual(self.asked("ns1.nic.lab."), [("alpha.lab.", "NS")])
        self.assertEqual(self.asked("ns1.alpha.lab."), [("www.alpha.lab.", "A")])

    @defer.inlineCallbacks
    def test_no_minimize(self) -> Any:
        self.engine.run_config("option('NO_MINIMIZE', True)")
        yield self.query("www.alpha.lab.", "A")
        root = [q for q in self.asked("a.root-servers.lab.") if q != (".", "NS")]
        self.assertEqual(root, [("www.alpha.lab.", "A")])
        self.assertEqual(self.asked("ns1.nic.lab."), [("www.alpha.lab.", "A")])

    @defer.inlineCallbacks
    def test_second_query_from_cache_with_smaller_ttl(self) -> Any:
        first = yield self.query("www.alpha.lab.", "A")
        before = self.total_queries()
        yield task.deferLater(reactor, 1.1, lambda: None)
        self.engine.answers.clear()  # the record cache answers, not the whole-answer cache
        cached = self.engine.metrics.get("answer.cached", 0)
        second = yield self.query("www.alpha.lab.", "A")
        self.assertEqual(answer_set(second), answer_set(first))
        self.assertLess(second.answer[0].ttl, first.answer[0].ttl)
        self.assertEqual(self.total_queries(), before)
        self.assertEqual(self.engine.metrics.get("answer.cached", 0), cached + 1)
        # and once more through the fast path: still nothing upstream
        third = yield self.query("www.alpha.lab.", "A")
        self.assertEqual(answer_set(third), answer_set(first))
        self.assertEqual(self.total_queries(), before)

    @defer.inlineCallbacks
    def test_cached_chain_is_answered_whole(self) -> Any:
        first = yield self.query("chain.alpha.lab.", "A")
        before = self.total_queries()
        self.engine.answers.clear()
        second = yield self.query("chain.alpha.lab.", "A")
        self.assertEqual(answer_set(second), answer_set(first))
        self.assertEqual(self.total_queries(), before)

    @defer.inlineCallbacks
    def test_glue_is_not_an_answer(self) -> Any:
        yield self.query("www.alpha.lab.", "A")  # the lab. referral had ns1.alpha.lab's glue
        glue = self.engine.cache.get_rrset("ns1.alpha.lab.", "A", min_rank=Rank.GLUE)
        self.assertIsNotNone(glue)
        self.assertEqual(glue.rank, Rank.GLUE)
        before = self.lab.server("ns1.alpha.lab.").queries[:]
        response = yield self.query("ns1.alpha.lab.", "A")
        self.assertEqual(answer_set(response), [f"ns1.alpha.lab. A {BASE}4"])
        # asked of the zone's own server, not served from the glue
        self.assertEqual(len(self.lab.server("ns1.alpha.lab.").queries), len(before) + 1)

    @defer.inlineCallbacks
    def test_allow_local_off_means_servfail(self) -> Any:
        self.engine.option("ALLOW_LOCAL", False)
        response = yield self.query("www.alpha.lab.", "A")
        self.assertEqual(response.rcode(), dns.rcode.SERVFAIL)
        self.assertTrue(ede_codes(response))
        self.assertEqual(self.total_queries(), 0)

    @defer.inlineCallbacks
    def test_serve_stale_when_every_upstream_fails(self) -> Any:
        self.engine.cache.min_ttl(0)
        self.engine.cache.max_ttl(1)
        fresh = yield self.query("www.alpha.lab.", "A")
        self.assertEqual(answer_set(fresh), ["www.alpha.lab. A 192.0.2.1"])
        yield task.deferLater(reactor, 1.2, lambda: None)
        for server in self.lab.servers.values():
            server.drop = True
        self.engine.answers.clear()
        stale = yield self.query("www.alpha.lab.", "A")
        self.assertEqual(stale.rcode(), dns.rcode.NOERROR)
        self.assertEqual(answer_set(stale), ["www.alpha.lab. A 192.0.2.1"])
        self.assertEqual(stale.answer[0].ttl, self.engine.cache.stale_ttl)
        self.assertIn(3, ede_codes(stale))

    @defer.inlineCallbacks
    def test_no_stale_answer_when_serve_stale_is_off(self) -> Any:
        self.engine.cache.min_ttl(0)
        self.engine.cache.max_ttl(1)
        self.engine.cache.serve_stale = False
        yield self.query("www.alpha.lab.", "A")
        yield task.deferLater(reactor, 1.2, lambda: None)
        for server in self.lab.servers.values():
            server.drop = True
        self.engine.answers.clear()
        response = yield self.query("www.alpha.lab.", "A")
        self.assertEqual(response.rcode(), dns.rcode.SERVFAIL)

    @defer.inlineCallbacks
    def test_priming_sends_root_ns_first(self) -> Any:
        yield self.query("www.alpha.lab.", "A")
        self.assertEqual(self.asked("a.root-servers.lab.")[0], (".", "NS"))
        yield self.query("www.beta.kres.", "A")
        primes = [q for q in self.asked("a.root-servers.lab.") if q == (".", "NS")]
        self.assertEqual(len(primes), 1)  # the primed NS is in the cache now

    @defer.inlineCallbacks
    def test_no_cache_option(self) -> Any:
        self.engine.option("NO_CACHE", True)
        yield self.query("www.alpha.lab.", "A")
        before = self.total_queries()
        self.engine.answers.clear()
        response = yield self.query("www.alpha.lab.", "A")
        self.assertEqual(answer_set(response), ["www.alpha.lab. A 192.0.2.1"])
        self.assertGreater(self.total_queries(), before)
        self.assertIsNone(self.engine.cache.get_rrset("www.alpha.lab.", "A"))


class WithoutPrimingTests(ResolutionCase):
    priming = False

    @defer.inlineCallbacks
    def test_unloaded_priming_sends_nothing_extra(self) -> Any:
        response = yield self.query("www.alpha.lab.", "A")
        self.assertEqual(answer_set(response), ["www.alpha.lab. A 192.0.2.1"])
        self.assertEqual(self.asked("a.root-servers.lab."), [("lab.", "NS")])


class LameServerTests(ResolutionCase):
    """lame.kres. has two servers: ns0.lame.kres. (with glue) answers with an upward
    referral; lamens.alpha.lab. (no glue: its address needs a sub-query, so it is asked
    only after the first one failed) answers."""

    def prepare(self, spec: Any) -> None:
        kres = spec.servers["ns1.nic.kres."].zones
        kres["kres."] += (
            "lame.kres. 3600 IN NS ns0.lame.kres.\n"
            "lame.kres. 3600 IN NS lamens.alpha.lab.\n"
            f"ns0.lame.kres. 3600 IN A {BASE}20\n"
        )
        alpha = spec.servers["ns1.alpha.lab."].zones
        alpha["alpha.lab."] += f"lamens.alpha.lab. 300 IN A {BASE}21\n"
        lame_zone = (
            "$ORIGIN lame.kres.\n$TTL 300\n"
            "@ IN SOA ns0.lame.kres. hostmaster.lame.kres. 1 7200 900 1209600 300\n"
            "@ IN NS ns0.lame.kres.\n@ IN NS lamens.alpha.lab.\n"
            f"ns0 IN A {BASE}20\nwww IN A 192.0.2.40\n"
        )
        self.extra = [
            # serves kres. itself: asked about lame.kres., it refers us to lame.kres. again
            ("ns0.lame.kres.", {"kres.": kres["kres."]}, BASE + "20"),
            ("lamens.alpha.lab.", {"lame.kres.": lame_zone}, BASE + "21"),
        ]

    def setUp(self) -> None:
        super().setUp()
        for name, zones, address in self.extra:
            self.lab.add_server(name, zones, address=address)

    @defer.inlineCallbacks
    def test_upward_referral_is_lame_other_server_answers(self) -> Any:
        response = yield self.query("www.lame.kres.", "A")
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertEqual(answer_set(response), ["www.lame.kres. A 192.0.2.40"])
        self.assertEqual(self.asked("ns0.lame.kres."), [("www.lame.kres.", "A")])
        self.assertEqual(self.asked("lamens.alpha.lab."), [("www.lame.kres.", "A")])

    @defer.inlineCallbacks
    def test_refusing_server_of_two(self) -> Any:
        # ns2.twoserv.kres. refuses twoserv.kres.; make it look fast so it is asked first
        yield self.query("www.other.kres.", "A")
        response = yield self.query("www.twoserv.kres.", "A")
        self.assertEqual(answer_set(response), ["www.twoserv.kres. A 192.0.2.30"])
        self.assertIn(("www.twoserv.kres.", "A"), self.asked("ns2.twoserv.kres."))


class PoisonTests(ResolutionCase):
    """The lab. servers add a bogus A record for a name of another zone to every answer."""

    BOGUS = "www.beta.kres. 300 IN A 6.6.6.6"

    def setUp(self) -> None:
        super().setUp()
        server = self.lab.server("ns1.nic.lab.")
        respond = server._respond

        def poisoned(wire: bytes, transport: str) -> bytes | None:
            reply = respond(wire, transport)
            if reply is None:
                return None
            msg = dns.message.from_wire(reply)
            msg.additional.append(dns.rrset.from_text(*self.BOGUS.split()))
            msg.answer.append(dns.rrset.from_text("www.beta.kres.", 300, "IN", "A", "6.6.6.7"))
            msg.authority.append(
                dns.rrset.from_text("beta.kres.", 300, "IN", "NS", "ns1.alpha.lab.")
            )
            return msg.to_wire()

        server._respond = poisoned  # type: ignore[method-assign]

    @defer.inlineCallbacks
    def test_out_of_bailiwick_records_are_never_cached(self) -> Any:
        response = yield self.query("www.alpha.lab.", "A")
        self.assertEqual(answer_set(response), ["www.alpha.lab. A 192.0.2.1"])
        cache = self.engine.cache
        self.assertIsNone(cache.get_rrset("www.beta.kres.", "A", min_rank=Rank.GLUE))
        self.assertIsNone(cache.get_rrset("beta.kres.", "NS", min_rank=Rank.GLUE))
        response = yield self.query("www.beta.kres.", "A")
        self.assertEqual(answer_set(response), ["www.beta.kres. A 192.0.2.10"])
        # and it came from beta.kres.'s own server
        self.assertIn(("www.beta.kres.", "A"), self.asked("ns1.beta.kres."))
