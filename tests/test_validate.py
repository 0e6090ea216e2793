"""DNSSEC validation end to end: a signed lab hierarchy, a resolver, and what clients see.

The hierarchy (L{kresolver.testing.signing.dnssec_lab}) is signed at test time with fresh
keys; its root DS is the resolver's only trust anchor.  Every case of L{DNSSEC_CASES} is
asked with DO over UDP and its rcode, AD bit and EDE code are checked; then CD, caching of
the validation status, and RFC 8198 aggressive negative answers.
"""

from __future__ import annotations

from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
from twisted.internet import defer, reactor
from twisted.trial import unittest

from kresolver.cache.cache import Security
from kresolver.engine import Engine
from kresolver.resolve.validate import _ZoneRanges
from kresolver.testing.lab import Lab, ask
from kresolver.testing.signing import DNSSEC_CASES, signed_dnssec_lab

BASE = "127.0.80."
LISTEN = BASE + "253"
TIME_LIMIT = 3.0


def ede_codes(msg: dns.message.Message) -> list[int]:
    return [opt.code for opt in msg.options if isinstance(opt, dns.edns.EDEOption)]


def start_engine(
    test: unittest.TestCase, root_hints: dict[str, list[str]], anchor: str, base: str = BASE
) -> tuple[Engine, int]:
    """A started resolver on C{base}253 (port 0, returned), asking from C{base}254, with
    C{root_hints} and C{anchor} as its only trust anchor; stopped at the test's end."""
    engine = Engine(reactor)
    engine.load_defaults()
    engine.modules.unload("priming")
    engine.root_hints = root_hints
    engine.option("ALLOW_LOCAL", True)
    engine.net.outgoing_v4(base + "254")
    engine.net.ipv6 = False
    engine.namespace["iterate"].time_limit = TIME_LIMIT
    engine.run_config(f"trust_anchors.remove('.')\ntrust_anchors.add({anchor!r})\n")
    engine.net.listen(base + "253", 0)
    engine.startService()
    test.addCleanup(engine.stopService)
    [(_, port)] = engine.net.addresses
    return engine, port


class ValidationCase(unittest.TestCase):
    #: the lab's addresses (other test files use other blocks); the resolver is on base253
    base = BASE

    @property
    def listen(self) -> str:
        return self.base + "253"

    def setUp(self) -> None:
        self.signed = signed_dnssec_lab(self.base)
        self.lab = Lab(reactor, base=self.base)
        self.lab.load(self.prepare(self.signed.spec))
        self.lab.start()
        self.addCleanup(self.lab.stop)
        self.engine, self.port = start_engine(
            self, self.lab.root_hints(), self.signed.trust_anchor, self.base
        )

    def prepare(self, spec: Any) -> Any:
        """Change the signed hierarchy before it is served (subclasses)."""
        return spec

    @defer.inlineCallbacks
    def query(self, name: str, rdtype: str = "A", cd: bool = False, do: bool = True) -> Any:
        query = dns.message.make_query(name, rdtype, want_dnssec=do, use_edns=0)
        if cd:
            query.flags |= dns.flags.CD
        wire = yield ask(query, self.listen, self.port, "udp", timeout=TIME_LIMIT + 6)
        return dns.message.from_wire(wire)

    def total_queries(self) -> int:
        return sum(len(s.queries) for s in self.lab.servers.values())


class CasesTests(ValidationCase):
    @defer.inlineCallbacks
    def test_every_case(self) -> Any:
        wrong = []
        for case in DNSSEC_CASES:
            response = yield self.query(case.qname, case.qtype)
            got = (
                dns.rcode.to_text(response.rcode()),
                bool(response.flags & dns.flags.AD),
                ede_codes(response)[:1] or [None],
            )
            want = (case.rcode, case.ad, [case.ede])
            if got != want:
                wrong.append(f"{case.qname} {case.qtype} ({case.shows}): {got} != {want}")
        self.assertEqual(wrong, [])

    @defer.inlineCallbacks
    def test_cd_gets_bogus_data_and_status_is_cached(self) -> Any:
        response = yield self.query("expired.bogus.lab.", cd=True)
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertFalse(response.flags & dns.flags.AD)
        self.assertEqual([r.to_text().split()[-1] for r in response.answer[:1]], ["192.0.2.61"])
        # Cached as BOGUS: never served without CD, served (without AD) with it.
        response = yield self.query("expired.bogus.lab.")
        self.assertEqual(response.rcode(), dns.rcode.SERVFAIL)
        self.assertEqual(ede_codes(response), [7])
        self.engine.answers.clear()
        before = self.total_queries()
        response = yield self.query("expired.bogus.lab.", cd=True)
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertFalse(response.flags & dns.flags.AD)
        self.assertEqual(self.total_queries(), before)

    @defer.inlineCallbacks
    def test_secure_answer_from_cache_keeps_ad(self) -> Any:
        first = yield self.query("www.alpha.lab.")
        self.assertTrue(first.flags & dns.flags.AD)
        self.engine.answers.clear()  # not the whole-answer cache: the record cache
        before = self.total_queries()
        second = yield self.query("www.alpha.lab.")
        self.assertTrue(second.flags & dns.flags.AD)
        self.assertEqual(self.total_queries(), before)
        self.assertTrue(any(r.rdtype == dns.rdatatype.RRSIG for r in second.answer))
        plain = yield self.query("www.alpha.lab.", do=False)
        self.assertFalse(plain.flags & dns.flags.AD)
        self.assertFalse(any(r.rdtype == dns.rdatatype.RRSIG for r in plain.answer))

    @defer.inlineCallbacks
    def test_ad_without_do_when_client_sets_ad(self) -> Any:
        query = dns.message.make_query("www.alpha.lab.", "A", use_edns=0)
        query.flags |= dns.flags.AD
        wire = yield ask(query, LISTEN, self.port, "udp", timeout=TIME_LIMIT + 4)
        self.assertTrue(dns.message.from_wire(wire).flags & dns.flags.AD)

    @defer.inlineCallbacks
    def test_aggressive_nxdomain(self) -> Any:
        first = yield self.query("aaa-nothing.alpha.lab.")
        self.assertEqual(first.rcode(), dns.rcode.NXDOMAIN)
        self.assertTrue(first.flags & dns.flags.AD)
        alpha = self.lab.server("ns1.alpha.lab.")
        before = len(alpha.queries)
        # Another name in the same NSEC range (between alpha.lab. and alias.alpha.lab.)
        second = yield self.query("aab-nothing.alpha.lab.")
        self.assertEqual(second.rcode(), dns.rcode.NXDOMAIN)
        self.assertTrue(second.flags & dns.flags.AD)
        self.assertEqual(len(alpha.queries), before)
        self.assertGreaterEqual(self.engine.metrics.get("cache.aggressive", 0), 1)
        # A name outside the range goes upstream.
        third = yield self.query("zzz-nothing.alpha.lab.")
        self.assertEqual(third.rcode(), dns.rcode.NXDOMAIN)
        self.assertGreater(len(alpha.queries), before)

    @defer.inlineCallbacks
    def test_aggressive_nodata_and_nsec3(self) -> Any:
        # NODATA from the NSEC at txt.alpha.lab. (it has TXT only): AAAA needs no query.
        first = yield self.query("txt.alpha.lab.", "A")
        self.assertEqual((first.rcode(), len(first.answer)), (dns.rcode.NOERROR, 0))
        alpha = self.lab.server("ns1.alpha.lab.")
        before = len(alpha.queries)
        second = yield self.query("txt.alpha.lab.", "AAAA")
        self.assertEqual((second.rcode(), len(second.answer)), (dns.rcode.NOERROR, 0))
        self.assertTrue(second.flags & dns.flags.AD)
        self.assertEqual(len(alpha.queries), before)
        # NSEC3 (beta.kres., no opt-out): once the small chain is known, new names are
        # denied from it; the proof needs the closest encloser, the next closer name and
        # the wildcard, so ask until the cache holds enough (bounded).
        beta = self.lab.server("ns1.beta.kres.")
        answered_locally = 0
        for i in range(30):
            asked = len(beta.queries)
            response = yield self.query(f"none{i}.beta.kres.")
            self.assertEqual(response.rcode(), dns.rcode.NXDOMAIN)
            self.assertTrue(response.flags & dns.flags.AD)
            if len(beta.queries) == asked:
                answered_locally += 1
        self.assertGreater(answered_locally, 0)
        # Opt-out spans never answer aggressively: every NXDOMAIN there goes upstream.
        optout = self.lab.server("ns1.sec.lab.")
        for i in range(5):
            asked = len(optout.queries)
            response = yield self.query(f"none{i}.optout.lab.")
            self.assertEqual(response.rcode(), dns.rcode.NXDOMAIN)
            self.assertFalse(response.flags & dns.flags.AD)
            self.assertGreater(len(optout.queries), asked)

    @defer.inlineCallbacks
    def test_insecure_zone_is_judged_without_the_chain_of_trust(self) -> Any:
        first = yield self.query("www.gamma.lab.")
        self.assertFalse(first.flags & dns.flags.AD)
        validator = self.engine.modules["validate"].validator
        full = []
        judge = validator._gen_consume
        self.patch(validator, "_gen_consume", lambda *a: full.append(a[1]) or judge(*a))
        # lab.'s NSECs (they proved gamma.lab. has no DS) say nothing below the cut
        self.assertIn((b"lab", b""), validator._ranges)
        searched = []
        search = _ZoneRanges.candidates
        self.patch(_ZoneRanges, "candidates", lambda *a: searched.append(a[1]) or search(*a))
        lookups = self.engine.metrics.get("validate.subrequest", 0)
        nx = yield self.query("nowhere.gamma.lab.")
        nodata = yield self.query("www.gamma.lab.", "TXT")
        self.assertEqual((nx.rcode(), nodata.rcode()), (dns.rcode.NXDOMAIN, dns.rcode.NOERROR))
        self.assertFalse(nx.flags & dns.flags.AD or nodata.flags & dns.flags.AD)
        self.assertEqual(full, [])  # gamma.lab. was known insecure: no chain, no lookup
        self.assertEqual(searched, [])
        self.assertEqual(self.engine.metrics.get("validate.subrequest", 0), lookups)
        cache = self.engine.cache
        for name, rdtype in (("nowhere.gamma.lab.", "A"), ("www.gamma.lab.", "TXT")):
            hit = cache.get_negative(dns.name.from_text(name), dns.rdatatype.from_text(rdtype))
            self.assertEqual(hit.security, Security.INSECURE)
        # A negative anchor's zone and a signed zone's answers keep their status.
        self.engine.run_config("trust_anchors.set_insecure(['alpha.lab.'])")
        self.assertEqual(validator._insecure, {})
        response = yield self.query("www.alpha.lab.")
        self.assertFalse(response.flags & dns.flags.AD)
        self.engine.run_config("trust_anchors.set_insecure([])")
        response = yield self.query("www.beta.kres.")
        self.assertTrue(response.flags & dns.flags.AD)

    @defer.inlineCallbacks
    def test_negative_trust_anchor(self) -> Any:
        self.engine.run_config("trust_anchors.set_insecure(['bogus.lab.'])")
        response = yield self.query("expired.bogus.lab.")
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertFalse(response.flags & dns.flags.AD)
        response = yield self.query("www.alpha.lab.")
        self.assertTrue(response.flags & dns.flags.AD)


class NoCacheTests(ValidationCase):
    @defer.inlineCallbacks
    def test_validated_without_the_cache(self) -> Any:
        self.engine.option("NO_CACHE", True)
        response = yield self.query("badsig.bogus.lab.")
        self.assertEqual(response.rcode(), dns.rcode.SERVFAIL)
        self.assertEqual(ede_codes(response), [6])
        response = yield self.query("www.alpha.lab.")
        self.assertTrue(response.flags & dns.flags.AD)
        response = yield self.query("nowhere.beta.kres.")
        self.assertEqual(response.rcode(), dns.rcode.NXDOMAIN)
        self.assertTrue(response.flags & dns.flags.AD)


class NoAnchorTests(ValidationCase):
    @defer.inlineCallbacks
    def test_without_anchor_everything_is_insecure(self) -> Any:
        self.engine.run_config("trust_anchors.remove('.')")
        response = yield self.query("www.alpha.lab.")
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertFalse(response.flags & dns.flags.AD)
        response = yield self.query("expired.bogus.lab.")
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)


class ForgedCutTests(ValidationCase):
    """A referral the signed parent's NSEC chain does not know: an on-path forgery."""

    def prepare(self, spec: Any) -> Any:
        from dataclasses import replace

        servers = dict(spec.servers)
        alpha = servers["ns1.alpha.lab."]
        text = alpha.zones["alpha.lab."] + "txt.alpha.lab. 3600 IN NS ns1.unsigned.lab.\n"
        servers["ns1.alpha.lab."] = replace(alpha, zones={"alpha.lab.": text})
        unsigned = servers["ns1.unsigned.lab."]
        zones = dict(unsigned.zones)
        zones["txt.alpha.lab."] = (
            "txt.alpha.lab. 3600 IN SOA ns1.unsigned.lab. h.txt.alpha.lab. 1 2 3 4 300\n"
            "txt.alpha.lab. 3600 IN NS ns1.unsigned.lab.\n"
            "www.txt.alpha.lab. 300 IN A 203.0.113.1\n"
        )
        servers["ns1.unsigned.lab."] = replace(unsigned, zones=zones)
        return replace(spec, servers=servers)

    @defer.inlineCallbacks
    def test_forged_unsigned_cut_is_bogus(self) -> Any:
        response = yield self.query("www.txt.alpha.lab.")
        self.assertEqual(response.rcode(), dns.rcode.SERVFAIL)
        self.assertEqual(ede_codes(response), [6])
        # The real insecure delegation beside it is still fine.
        response = yield self.query("www.gamma.lab.")
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertFalse(response.flags & dns.flags.AD)


class QuickInsecureTests(unittest.TestCase):
    """Unsigned data from a zone known insecure is judged at once (Validator.consume's
    shortcut); what it concludes must be what the chain of trust concludes, for any mix
    of answer, referral, glue and denial items, signed or not (randomised)."""

    def test_shortcut_agrees_with_the_chain_of_trust(self) -> None:
        import random

        import dns.rrset

        from kresolver.cache.cache import Rank
        from kresolver.resolve.answer import Accepted, Denial
        from kresolver.resolve.outgoing import Outgoing
        from kresolver.resolve.request import Request
        from kresolver.resolve.upstream import UpstreamAnswer
        from kresolver.resolve.validate import ZoneTrust

        engine = Engine(reactor)
        engine.load_defaults()
        validator = engine.modules["validate"].validator
        zone = dns.name.from_text("gamma.lab.")
        wire = dns.message.make_response(dns.message.make_query("gamma.lab.", "A")).to_wire()
        rng = random.Random(5)

        def rrset(text: str) -> dns.rrset.RRset:
            owner, rdtype, rdata = text.split(None, 2)
            return dns.rrset.from_text(owner, 300, "IN", rdtype, rdata)

        # Signatures by lab. (a signed zone above: a signer's zone may differ from the
        # zone asked), which do not verify: the chain of trust finds such items BOGUS.
        sig = ("{owner} RRSIG {covered} 13 3 300 20300101000000 20200101000000 1 "
               "lab. " + "A" * 88)
        lab_keys = dns.rrset.from_text("lab.", 300, "IN", "DNSKEY", "257 3 13 " + "B" * 88)

        def item(seed: int) -> Any:
            r = random.Random(seed)
            owner = r.choice(["www.gamma.lab.", "ns.gamma.lab.", "gamma.lab."])
            signed = r.random() < 0.2
            if r.random() < 0.7:
                data = rrset(r.choice([f"{owner} A 192.0.2.1", f"{owner} TXT hi",
                                       f"{owner} NS ns.gamma.lab."]))
                sigs = rrset(sig.format(owner=owner, covered=_type(data))) if signed else None
                return Accepted(data, r.choice(list(Rank)), sigs)
            soa = rrset("gamma.lab. SOA ns.gamma.lab. h.gamma.lab. 1 2 3 4 60")
            proofs = [rrset(f"{owner} NSEC z.gamma.lab. A")]
            if r.random() < 0.5:
                proofs.append(rrset(sig.format(owner=owner, covered="NSEC")))
            if signed:
                proofs.append(rrset(sig.format(owner="gamma.lab.", covered="SOA")))
            return Denial(dns.name.from_text(owner), r.choice([1, 16]), r.choice([0, 3]),
                          soa, proofs, r.choice([Rank.ANSWER, Rank.AUTH_ANSWER]))

        def judge(seeds: list[int], quick: bool, case: random.Random) -> Any:
            trust = ZoneTrust(Security.INSECURE, None, case.choice([None, 9]), "unsigned",
                              reactor.seconds() + 3600)
            validator._zones[zone.labels] = trust
            validator._zones[(b"lab", b"")] = ZoneTrust(
                Security.SECURE, lab_keys, expires=reactor.seconds() + 3600)
            validator._insecure.clear()
            validator._bogus.clear()
            if quick:
                validator._insecure[zone.labels] = trust
            query = dns.message.make_query("www.gamma.lab.", "A", want_dnssec=True)
            req = Request(engine, b"", query, None, None, "udp", reactor.seconds())
            qry = req.push(req.qname, req.qtype, req.qclass)
            if case.random() < 0.3:
                qry = req.push(dns.name.from_text("ns.gamma.lab."), 1, 1, parent=qry)
            req.flags.DNSSEC_CD = case.random() < 0.2
            asked = (qry.sname, qry.stype) if case.random() < 0.7 else (zone, 2)
            qry.outgoing = Outgoing(asked[0], asked[1], ["127.0.80.1"], zone)
            items = [item(seed) for seed in seeds]
            req.vars["stash"] = list(items)
            judged = []
            full = validator._gen_consume
            validator._gen_consume = lambda *a: judged.append(a) or full(*a)  # type: ignore
            try:
                answer = UpstreamAnswer(None, ("127.0.80.1", 53), 1.0, False, True, wire=wire)
                state = validator.consume(req, qry, answer)
            finally:
                del validator._gen_consume
            outcome = req.vars.get("validate")
            return (
                [i.security for i in items], state, req.state,
                None if outcome is None else (outcome.security, outcome.ede, outcome.why,
                                              outcome.checked, outcome.negative),
            ), bool(judged)

        shortcuts = 0
        for _ in range(300):
            seeds = [rng.randrange(10**6) for _ in range(rng.randint(1, 4))]
            case = rng.randrange(10**6)
            quick, walked = judge(seeds, True, random.Random(case))
            full, _ = judge(seeds, False, random.Random(case))
            self.assertEqual(quick, full, seeds)
            shortcuts += not walked
        self.assertGreater(shortcuts, 100)  # the shortcut was taken, not only the walk


def _type(rrset: Any) -> str:
    return dns.rdatatype.to_text(rrset.rdtype)


class SharedExchangeTests(unittest.TestCase):
    """Requests that joined one upstream exchange are handed the same Response, and so the
    same answer RRsets: one request's TTL cap (bogus data, a verdict's shorter life) is
    made on a copy and never shows in another's answer."""

    def test_cap_leaves_the_shared_answer_alone(self) -> None:
        import dns.rrset

        from kresolver.cache.cache import Rank
        from kresolver.resolve.answer import Accepted
        from kresolver.resolve.dnssec import EDE, Verdict
        from kresolver.resolve.driver import drive
        from kresolver.resolve.request import Request
        from kresolver.resolve.response import Response
        from kresolver.resolve.validate import BOGUS_TTL

        engine = Engine(reactor)
        engine.load_defaults()
        validator = engine.modules["validate"].validator
        response = Response(b"", 1, 0x8180)
        response.answer.append(
            dns.rrset.from_text("www.gamma.lab.", 300, "IN", "A", "192.0.2.1"))
        shared = response.answer[0]
        verdicts = {
            "bogus": Verdict(Security.BOGUS, EDE.BOGUS, "forged"),
            "short": Verdict(Security.SECURE, ttl=30),
            "plain": Verdict(Security.INSECURE, None, "unsigned"),
        }

        def judge(kind: str, rank: Rank) -> Accepted:
            def verdict(*_: Any) -> Any:
                return verdicts[kind]
                yield  # a generator, as _gen_rrset is

            query = dns.message.make_query("www.gamma.lab.", "A", want_dnssec=True)
            req = Request(engine, b"", query, None, None, "udp", reactor.seconds())
            item = Accepted(response.answer[0], rank)
            validator._gen_rrset = verdict  # type: ignore[method-assign]
            try:
                drive(validator._gen_item(req, None, item, lambda: []))
            finally:
                del validator._gen_rrset
            return item

        for rank in (Rank.ANSWER, Rank.AUTH_ANSWER, Rank.AUTHORITY):
            bogus = judge("bogus", rank)
            short = judge("short", rank)
            plain = judge("plain", rank)
            self.assertEqual(bogus.rrset.ttl, BOGUS_TTL)
            self.assertEqual(short.rrset.ttl, 30)
            self.assertEqual(list(bogus.rrset), list(shared))
            # the exchange's own RRset, and so every other request's, keeps its TTL
            self.assertIs(response.answer[0], shared)
            self.assertEqual(shared.ttl, 300)
            # nothing capped, nothing copied: the plain miss pays nothing
            self.assertIs(plain.rrset, shared)
            self.assertEqual(plain.rrset.ttl, 300)
