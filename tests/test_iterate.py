"""Unit tests of response classification, zone cuts and the iterate/cache layers.

The layer tests run the real driver with a task.Clock and a fake upstream: every server
is a function from question to dns.message, so each case says exactly what the servers
answer and checks what the resolver asked and answered.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
from twisted.internet import defer, task
from twisted.trial import unittest

from kresolver.cache.cache import Cache, Rank
from kresolver.engine import Engine
from kresolver.resolve.answer import MAX_CHAIN, Accepted, Denial, normalize
from kresolver.resolve.iterate import Kind, classify
from kresolver.resolve.names import canonical, checked_name, same_name
from kresolver.resolve.request import Request
from kresolver.resolve.response import read_response
from kresolver.resolve.upstream import UpstreamAnswer, UpstreamError
from kresolver.resolve.zonecut import find_cut

N = dns.name.from_text
ROOT_IP = "127.0.51.1"


def rr(text: str) -> dns.rrset.RRset:
    owner, ttl, rdclass, rdtype, *rdata = text.split(None, 4)
    return dns.rrset.from_text(owner, int(ttl), rdclass, rdtype, *rdata[0].split("|"))


def reply(
    qname: str, qtype: str, *, answer: list[str] = (), authority: list[str] = (),  # type: ignore[assignment]
    additional: list[str] = (), rcode: int = dns.rcode.NOERROR, aa: bool = True,  # type: ignore[assignment]
) -> dns.message.Message:
    msg = dns.message.make_response(dns.message.make_query(qname, qtype))
    if aa:
        msg.flags |= dns.flags.AA
    msg.set_rcode(rcode)
    msg.answer = [rr(t) for t in answer]
    msg.authority = [rr(t) for t in authority]
    msg.additional = [rr(t) for t in additional]
    return msg


class ClassifyTests(unittest.TestCase):
    def test_referral_keeps_in_bailiwick_glue_only(self) -> None:
        msg = reply(
            "www.alpha.lab.", "A", aa=False,
            authority=["alpha.lab. 3600 IN NS ns1.alpha.lab.|ns.other.kres."],
            additional=["ns1.alpha.lab. 3600 IN A 127.0.51.4",
                        "ns.other.kres. 3600 IN A 6.6.6.6",
                        "www.beta.kres. 3600 IN A 6.6.6.7"],
        )
        v = classify(msg, N("www.alpha.lab."), dns.rdatatype.A, N("lab."))
        self.assertIs(v.kind, Kind.REFERRAL)
        assert v.cut is not None
        self.assertEqual(v.cut.name, N("alpha.lab."))
        self.assertEqual(v.cut.servers[N("ns1.alpha.lab.")], ["127.0.51.4"])
        self.assertEqual(v.cut.servers[N("ns.other.kres.")], [])
        cached = {(a.rrset.name.to_text(), a.rrset.rdtype, a.rank) for a in v.accepted}
        self.assertEqual(cached, {("alpha.lab.", dns.rdatatype.NS, Rank.AUTHORITY),
                                  ("ns1.alpha.lab.", dns.rdatatype.A, Rank.GLUE)})

    def test_upward_and_sideways_referrals_are_lame(self) -> None:
        up = reply("www.alpha.lab.", "A", aa=False, authority=["lab. 3600 IN NS ns.lab."])
        self.assertIs(classify(up, N("www.alpha.lab."), 1, N("lab.")).kind, Kind.LAME)
        root = reply("www.alpha.lab.", "A", aa=False, authority=[". 3600 IN NS a.root."])
        self.assertIs(classify(root, N("www.alpha.lab."), 1, N("lab.")).kind, Kind.LAME)
        side = reply("www.alpha.lab.", "A", aa=False, authority=["beta.lab. 3600 IN NS ns.lab."])
        self.assertIs(classify(side, N("www.alpha.lab."), 1, N("lab.")).kind, Kind.LAME)

    def test_answer_outside_bailiwick_is_lame(self) -> None:
        msg = reply("www.alpha.lab.", "A", answer=["www.alpha.lab. 300 IN A 192.0.2.1"])
        v = classify(msg, N("www.alpha.lab."), 1, N("kres."))
        self.assertIs(v.kind, Kind.LAME)
        self.assertEqual(v.accepted, [])

    def test_chain_leaving_the_zone_is_chased_and_nothing_outside_is_kept(self) -> None:
        msg = reply("a.alpha.lab.", "A", answer=[
            "a.alpha.lab. 300 IN CNAME b.alpha.lab.",
            "b.alpha.lab. 300 IN CNAME c.beta.kres.",
            "c.beta.kres. 300 IN A 6.6.6.6",
        ])
        v = classify(msg, N("a.alpha.lab."), 1, N("alpha.lab."))
        self.assertIs(v.kind, Kind.CNAME)
        self.assertEqual(v.target, N("c.beta.kres."))
        self.assertEqual([p[0].name for p in v.chain], [N("a.alpha.lab."), N("b.alpha.lab.")])
        self.assertTrue(all(a.rrset.name.is_subdomain(N("alpha.lab.")) for a in v.accepted
                            if isinstance(a, Accepted)))

    def test_dname_synthesises_its_cname(self) -> None:
        msg = reply("www.d.alpha.lab.", "A", answer=[
            "d.alpha.lab. 300 IN DNAME beta.kres.",
            "www.d.alpha.lab. 300 IN CNAME evil.kres.",  # a server's CNAME is not believed
        ])
        v = classify(msg, N("www.d.alpha.lab."), 1, N("alpha.lab."))
        self.assertIs(v.kind, Kind.CNAME)
        self.assertEqual(v.target, N("www.beta.kres."))
        types = [p[0].rdtype for p in v.chain]
        self.assertEqual(types, [dns.rdatatype.DNAME, dns.rdatatype.CNAME])
        # the DNAME is cached, our own CNAME is not
        self.assertEqual([a.rrset.rdtype for a in v.accepted], [dns.rdatatype.DNAME])

    def test_nxdomain_with_soa_is_a_denial_to_cache(self) -> None:
        msg = reply("x.alpha.lab.", "A", rcode=dns.rcode.NXDOMAIN, authority=[
            "alpha.lab. 300 IN SOA ns. host. 1 2 3 4 60",
        ])
        v = classify(msg, N("x.alpha.lab."), 1, N("alpha.lab."))
        self.assertIs(v.kind, Kind.NXDOMAIN)
        [denial] = v.accepted
        assert isinstance(denial, Denial)
        self.assertEqual((denial.name, denial.rcode), (N("x.alpha.lab."), dns.rcode.NXDOMAIN))

    def test_soa_of_another_zone_denies_nothing(self) -> None:
        msg = reply("x.alpha.lab.", "A", rcode=dns.rcode.NXDOMAIN, authority=[
            "beta.lab. 300 IN SOA ns. host. 1 2 3 4 60",
        ])
        v = classify(msg, N("x.alpha.lab."), 1, N("lab."))
        self.assertIs(v.kind, Kind.LAME)
        self.assertEqual(v.accepted, [])

    def test_nodata_and_empty_non_authoritative(self) -> None:
        soa = "alpha.lab. 300 IN SOA ns. host. 1 2 3 4 60"
        nodata = reply("x.alpha.lab.", "A", authority=[soa])
        self.assertIs(classify(nodata, N("x.alpha.lab."), 1, N("alpha.lab.")).kind, Kind.NODATA)
        empty = reply("x.alpha.lab.", "A", aa=False)
        self.assertIs(classify(empty, N("x.alpha.lab."), 1, N("alpha.lab.")).kind, Kind.LAME)

    def test_rrsig_question(self) -> None:
        sig = "www.lab. 300 IN RRSIG A 13 2 300 20300101000000 20200101000000 1 lab. AAAA"
        msg = reply("www.lab.", "RRSIG", answer=[sig])
        v = classify(msg, N("www.lab."), dns.rdatatype.RRSIG, N("lab."))
        self.assertIs(v.kind, Kind.ANSWER)
        self.assertEqual(v.chain[0][0].rdtype, dns.rdatatype.RRSIG)

    def test_plain_answers_read_from_the_wire_are_judged_as_the_walk_judges_them(self) -> None:
        # classify() takes a plain answer (the data asked for, with its RRSIGs) from a
        # Response without walking the sections; every verdict must be the walk's.
        sig = ("www.alpha.lab. 300 IN RRSIG A 13 3 300 20300101000000 20200101000000 1"
               " alpha.lab. AAAA")
        cases = [
            ("www.alpha.lab.", "A", ["www.alpha.lab. 300 IN A 192.0.2.1"], "alpha.lab.", True),
            ("www.alpha.lab.", "A", ["www.alpha.lab. 300 IN A 192.0.2.1", sig], "alpha.lab.",
             True),
            ("www.alpha.lab.", "A", ["www.alpha.lab. 300 IN A 192.0.2.1"], "alpha.lab.", False),
            # outside the bailiwick of the servers asked: lame, nothing kept
            ("www.alpha.lab.", "A", ["www.alpha.lab. 300 IN A 192.0.2.1"], "beta.lab.", True),
            # the asked name in 0x20 case, and a zone in capitals
            ("wWw.ALPHA.lab.", "A", ["www.alpha.lab. 300 IN A 192.0.2.1"], "Alpha.LAB.", True),
            # another type than asked, NS (glue, a cut), and a signature of another type
            ("www.alpha.lab.", "AAAA", ["www.alpha.lab. 300 IN A 192.0.2.1"], "alpha.lab.", True),
            ("alpha.lab.", "NS", ["alpha.lab. 300 IN NS ns.alpha.lab."], "alpha.lab.", True),
            ("www.alpha.lab.", "A", ["www.alpha.lab. 300 IN A 192.0.2.1",
                                     sig.replace("RRSIG A", "RRSIG AAAA")], "alpha.lab.", True),
        ]

        def seen(v: Any) -> tuple[Any, ...]:
            return (
                v.kind, v.target, v.aa, v.rcode,
                [(r.name, r.rdtype, r.to_text(), s and s.to_text()) for r, s in v.chain],
                [(a.rrset.to_text(), a.rank, a.rrsigs is not None) for a in v.accepted],
            )

        for qname, qtype, answer, zone, aa in cases:
            msg = reply(qname, qtype, answer=answer, aa=aa)
            rdtype = dns.rdatatype.from_text(qtype)
            walked = classify(msg, N(qname), rdtype, N(zone))
            read = classify(read_response(msg.to_wire()), N(qname), rdtype, N(zone))
            self.assertEqual(seen(read), seen(walked), (qname, qtype, answer, zone))

    def test_error_rcodes(self) -> None:
        msg = reply("x.alpha.lab.", "A", rcode=dns.rcode.REFUSED, aa=False)
        v = classify(msg, N("x.alpha.lab."), 1, N("alpha.lab."))
        self.assertEqual((v.kind, v.rcode), (Kind.RCODE, dns.rcode.REFUSED))

    def test_normalize_lowercases_owner_and_rdata_names(self) -> None:
        out = normalize(rr("WwW.ALPHA.lab. 300 IN CNAME TaRGet.Alpha.LAB."))
        self.assertEqual(out.name.to_text(), "www.alpha.lab.")
        self.assertEqual(out[0].target.to_text(), "target.alpha.lab.")
        txt = normalize(rr('X.lab. 300 IN TXT "MiXeD"'))
        self.assertEqual(txt[0].to_text(), '"MiXeD"')


class ZoneCutTests(unittest.TestCase):
    def setUp(self) -> None:
        self.cache = Cache(task.Clock())
        self.hints = {"a.root.": [ROOT_IP]}

    def test_closest_cached_cut_with_glue(self) -> None:
        self.cache.put_rrset(rr("lab. 3600 IN NS ns1.nic.lab."), Rank.AUTHORITY)
        self.cache.put_rrset(rr("ns1.nic.lab. 3600 IN A 127.0.51.2"), Rank.GLUE)
        cut = find_cut(self.cache, N("www.alpha.lab."), dns.rdatatype.A, self.hints)
        self.assertEqual(cut.name, N("lab."))
        self.assertEqual(cut.addresses(), ["127.0.51.2"])
        self.assertFalse(cut.hints)

    def test_cuts_from_the_cache_do_not_share_changes(self) -> None:
        self.cache.put_rrset(rr("lab. 3600 IN NS ns1.nic.lab."), Rank.AUTHORITY)
        self.cache.put_rrset(rr("ns1.nic.lab. 3600 IN A 127.0.51.2"), Rank.GLUE)
        first = find_cut(self.cache, N("www.alpha.lab."), dns.rdatatype.A, self.hints)
        first.add(N("ns1.nic.lab."), ["127.0.51.9"])
        first.add(N("ns2.nic.lab."), ["127.0.51.8"])
        again = find_cut(self.cache, N("www.alpha.lab."), dns.rdatatype.A, self.hints)
        self.assertEqual(again.servers, {N("ns1.nic.lab."): ["127.0.51.2"]})
        # New glue shows in the next cut.
        self.cache.put_rrset(rr("ns1.nic.lab. 3600 IN A 127.0.51.3"), Rank.GLUE)
        later = find_cut(self.cache, N("www.alpha.lab."), dns.rdatatype.A, self.hints)
        self.assertEqual(later.addresses(), ["127.0.51.3"])
        self.assertEqual(first.addresses(), ["127.0.51.2", "127.0.51.9", "127.0.51.8"])

    def test_ds_starts_at_the_parent(self) -> None:
        self.cache.put_rrset(rr("lab. 3600 IN NS ns1.nic.lab."), Rank.AUTHORITY)
        self.cache.put_rrset(rr("alpha.lab. 3600 IN NS ns1.alpha.lab."), Rank.AUTHORITY)
        cut = find_cut(self.cache, N("alpha.lab."), dns.rdatatype.DS, self.hints)
        self.assertEqual(cut.name, N("lab."))
        cut = find_cut(self.cache, N("alpha.lab."), dns.rdatatype.A, self.hints)
        self.assertEqual(cut.name, N("alpha.lab."))

    def test_root_hints_without_cache(self) -> None:
        cut = find_cut(None, N("www.alpha.lab."), dns.rdatatype.A, self.hints)
        self.assertEqual((cut.name, cut.addresses(), cut.hints), (dns.name.root, [ROOT_IP], True))

    def test_primed_root_without_glue_uses_hint_addresses(self) -> None:
        self.cache.put_rrset(rr(". 3600 IN NS a.root."), Rank.AUTH_ANSWER)
        cut = find_cut(self.cache, N("lab."), dns.rdatatype.NS, self.hints)
        self.assertEqual((cut.addresses(), cut.hints), ([ROOT_IP], False))

    def test_addresses_memo_matches_the_servers(self) -> None:
        # Cuts from one cached NS RRset share their list of addresses (ZoneCut.known)
        # while the cache's addresses stay the same; every cut's addresses() must still be
        # what its own servers say, whatever was added to it or to the cache meanwhile.
        def expected(cut: Any, exclude: set[str]) -> list[str]:
            out: list[str] = []
            for addresses in cut.servers.values():
                out += [a for a in addresses if a not in exclude and a not in out]
            return out

        rng = random.Random(7)
        ns_names = [f"ns{i}.nic.lab." for i in range(4)]
        ips = [f"127.0.51.{i}" for i in range(2, 9)]
        self.cache.put_rrset(
            rr("lab. 3600 IN NS " + "|".join(ns_names)), Rank.AUTHORITY)
        cuts = []
        for _ in range(400):
            step = rng.random()
            if step < 0.2:  # the cache learns (or relearns) an address
                owner = rng.choice(ns_names)
                chosen = rng.sample(ips, rng.randint(1, 2))
                self.cache.put_rrset(rr(f"{owner} 3600 IN A {'|'.join(chosen)}"), Rank.GLUE)
            elif step < 0.5 or not cuts:
                cuts.append(find_cut(self.cache, N("www.alpha.lab."), dns.rdatatype.A,
                                     self.hints))
            elif step < 0.7:  # an NS name's address found by a sub-query
                rng.choice(cuts).add(N(rng.choice(ns_names)), rng.sample(ips, 1))
            else:
                cut = rng.choice(cuts)
                exclude = set(rng.sample(ips, rng.randint(0, 3)))
                got = cut.addresses(exclude=exclude if exclude or rng.random() < 0.5 else ())
                self.assertEqual(got, expected(cut, exclude))
                got.append("127.0.51.99")  # a caller's list is its own
                self.assertEqual(cut.addresses(), expected(cut, set()))


Server = Callable[[dns.name.Name, int], dns.message.Message | None]


class FakeUpstream:
    """Servers by address; records every question; None from a server means a timeout."""

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock
        self.servers: dict[str, Server] = {}
        self.asked: list[tuple[str, str, str]] = []
        self.randomized: list[bool] = []

    def send(self, req: Any, qry: Any) -> defer.Deferred[Any]:
        out = qry.outgoing
        self.randomized.append(out.randomize_case)
        for ip in out.servers:
            server = self.servers.get(ip)
            self.asked.append((ip, out.qname.to_text(), dns.rdatatype.to_text(out.rdtype)))
            if server is None:
                continue
            msg = server(out.qname, out.rdtype)
            if msg is not None:
                if msg.rcode() in (dns.rcode.REFUSED, dns.rcode.SERVFAIL) and ip != out.servers[-1]:
                    continue
                return defer.succeed(UpstreamAnswer(msg, (ip, 53), 1.0, False, True))
        d: defer.Deferred[Any] = defer.Deferred()
        delay = max(0.0, (out.deadline or 0) - self.clock.seconds()) if out.deadline else 1.0
        self.clock.callLater(min(delay, 1.0), d.errback, UpstreamError("timed out"))
        return d


def zone_server(records: dict[str, list[str]], zone: str, *,
                delegations: dict[str, tuple[list[str], list[str]]] | None = None) -> Server:
    """A tiny authoritative server: {owner text: [record texts]}, plus delegations
    {child: ([NS records], [glue records])}; NXDOMAIN with an SOA for other names."""
    origin = N(zone)
    soa = f"{zone} 300 IN SOA ns.{zone} host.{zone} 1 2 3 4 60"

    def serve(qname: dns.name.Name, qtype: int) -> dns.message.Message:
        name = qname.canonicalize()
        for child, (ns, glue) in (delegations or {}).items():
            if name.is_subdomain(N(child)):
                return reply(qname.to_text(), dns.rdatatype.to_text(qtype), aa=False,
                             authority=ns, additional=glue)
        text = name.to_text()
        here = [r for r in records.get(text, [])]
        typed = [r for r in here if r.split()[3] == dns.rdatatype.to_text(qtype)]
        cname = [r for r in here if r.split()[3] == "CNAME"]
        if typed or cname:
            return reply(qname.to_text(), dns.rdatatype.to_text(qtype), answer=typed or cname)
        exists = any(N(o).is_subdomain(name) for o in records) or name == origin
        return reply(qname.to_text(), dns.rdatatype.to_text(qtype), authority=[soa],
                     rcode=dns.rcode.NOERROR if exists else dns.rcode.NXDOMAIN)

    return serve


class LayerCase(unittest.TestCase):
    """An engine on a Clock with the cache and iterate layers and a fake upstream."""

    modules = ("cache", "iterate")

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_000_000)
        self.engine = Engine(self.clock)
        for name in self.modules:
            self.engine.modules.load(name)
        self.engine.root_hints = {"a.root.": [ROOT_IP]}
        self.engine.option("ALLOW_LOCAL", True)
        self.up = FakeUpstream(self.clock)
        self.engine.resolver.send = self.up.send
        self.up.servers[ROOT_IP] = zone_server({}, ".", delegations={
            "lab.": (["lab. 3600 IN NS ns.lab."], ["ns.lab. 3600 IN A 127.0.51.2"]),
        })

    def resolve(self, name: str, rdtype: str = "A", *, do: bool = False,
                settle: float = 10.0) -> Request:
        query = dns.message.make_query(name, rdtype, want_dnssec=do)
        req = Request(self.engine, query.to_wire(), query, ("127.0.0.1", 5353), None, "udp",
                      self.clock.seconds())
        result = self.engine.resolver.resolve(req)
        if isinstance(result, defer.Deferred):
            for _ in range(int(settle * 10)):
                if result.called:
                    break
                self.clock.advance(0.1)
            self.assertTrue(result.called, "resolution did not finish")
        return req

    def ede(self, req: Request) -> list[int]:
        return [code for code, _ in req.ede]


class LayerTests(LayerCase):
    def test_loop_of_glueless_delegations_fails_in_bounds(self) -> None:
        # loop.lab. is served by ns.loop2.lab., loop2.lab. by ns.loop.lab.: no way in.
        self.up.servers["127.0.51.2"] = zone_server({}, "lab.", delegations={
            "loop.lab.": (["loop.lab. 3600 IN NS ns.loop2.lab."], []),
            "loop2.lab.": (["loop2.lab. 3600 IN NS ns.loop.lab."], []),
        })
        req = self.resolve("www.loop.lab.")
        self.assertEqual(req.answer.rcode(), dns.rcode.SERVFAIL)
        self.assertIn(22, self.ede(req))
        self.assertLess(len(self.up.asked), 20)

    def test_cname_chain_is_capped(self) -> None:
        records = {f"c{i}.lab.": [f"c{i}.lab. 300 IN CNAME c{i + 1}.lab."] for i in range(30)}
        self.up.servers["127.0.51.2"] = zone_server(records, "lab.")
        req = self.resolve("c0.lab.")
        self.assertEqual(req.answer.rcode(), dns.rcode.SERVFAIL)
        self.assertLessEqual(
            len([q for q in self.up.asked if q[1].startswith("c")]), MAX_CHAIN + 2
        )

    def test_cname_loop_fails(self) -> None:
        self.up.servers["127.0.51.2"] = zone_server({
            "a.lab.": ["a.lab. 300 IN CNAME b.lab."],
            "b.lab.": ["b.lab. 300 IN CNAME a.lab."],
        }, "lab.")
        req = self.resolve("a.lab.")
        self.assertEqual(req.answer.rcode(), dns.rcode.SERVFAIL)

    def test_minimisation_falls_back_when_ns_questions_fail(self) -> None:
        good = zone_server({"www.deep.sub.lab.": ["www.deep.sub.lab. 300 IN A 192.0.2.9"]}, "lab.")

        def picky(qname: dns.name.Name, qtype: int) -> dns.message.Message:
            if qtype == dns.rdatatype.NS:
                return reply(qname.to_text(), "NS", rcode=dns.rcode.FORMERR, aa=False)
            return good(qname, qtype)

        self.up.servers["127.0.51.2"] = picky
        req = self.resolve("www.deep.sub.lab.")
        self.assertEqual(req.answer.rcode(), dns.rcode.NOERROR)
        self.assertEqual(req.answer.answer[0][0].to_text(), "192.0.2.9")
        lab_questions = [q[1:] for q in self.up.asked if q[0] == "127.0.51.2"]
        self.assertEqual(lab_questions, [("sub.lab.", "NS"), ("www.deep.sub.lab.", "A")])

    def test_long_names_are_minimised_in_bounded_steps(self) -> None:
        name = ".".join(f"l{i}" for i in range(30)) + ".lab."
        self.up.servers["127.0.51.2"] = zone_server({name: [f"{name} 300 IN A 192.0.2.8"]}, "lab.")
        req = self.resolve(name)
        self.assertEqual(req.answer.answer[0][0].to_text(), "192.0.2.8")
        lab = [q[1:] for q in self.up.asked if q[0] == "127.0.51.2"]
        self.assertLessEqual(len(lab), 11)  # at most 10 minimised questions, then the name
        self.assertEqual(lab[-1], (name, "A"))
        # the root's "lab. NS" was the first: three more one label at a time, then faster
        depths = [len(dns.name.from_text(q[0])) for q in lab]
        self.assertEqual(depths[:3], [3, 4, 5])
        self.assertGreater(depths[3] - depths[2], 1)

    def test_minimised_nxdomain_ends_the_query(self) -> None:
        self.up.servers["127.0.51.2"] = zone_server({}, "lab.")
        req = self.resolve("a.b.nothing.lab.", "AAAA")
        self.assertEqual(req.answer.rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual([q[1:] for q in self.up.asked if q[0] == "127.0.51.2"],
                         [("nothing.lab.", "NS")])
        # ... and it covers the names below (RFC 8020) from the cache
        before = len(self.up.asked)
        req = self.resolve("other.nothing.lab.", "A")
        self.assertEqual(req.answer.rcode(), dns.rcode.NXDOMAIN)
        self.assertTrue(req.cached)
        self.assertEqual(len(self.up.asked), before)

    def test_negative_ttl_is_the_soa_minimum(self) -> None:
        self.up.servers["127.0.51.2"] = zone_server({"x.lab.": ["x.lab. 300 IN TXT t"]}, "lab.")
        self.resolve("x.lab.", "A")
        hit = self.engine.cache.get_negative("x.lab.", "A")
        assert hit is not None
        self.assertEqual(hit.soa.ttl, 60)  # min(SOA TTL 300, MINIMUM 60)

    def test_dead_zone_fails_at_the_time_limit(self) -> None:
        self.engine.namespace["iterate"].time_limit = 2.0
        # lab.'s only server never answers
        started = self.clock.seconds()
        req = self.resolve("www.lab.")
        self.assertEqual(req.answer.rcode(), dns.rcode.SERVFAIL)
        self.assertIn(22, self.ede(req))
        self.assertLessEqual(self.clock.seconds() - started, 2.0 + 0.2)

    def test_max_upstream_questions(self) -> None:
        self.engine.namespace["iterate"].max_upstream = 2
        records = {f"c{i}.lab.": [f"c{i}.lab. 300 IN CNAME c{i + 1}.lab."] for i in range(5)}
        self.up.servers["127.0.51.2"] = zone_server(records, "lab.")
        req = self.resolve("c0.lab.")
        self.assertEqual(req.answer.rcode(), dns.rcode.SERVFAIL)
        self.assertEqual(len(self.up.asked), 2)

    def test_sideways_referral_then_other_server(self) -> None:
        self.up.servers[ROOT_IP] = zone_server({}, ".", delegations={
            "lab.": (["lab. 3600 IN NS ns1.lab.|ns2.lab."],
                     ["ns1.lab. 3600 IN A 127.0.51.2", "ns2.lab. 3600 IN A 127.0.51.3"]),
        })
        self.up.servers["127.0.51.2"] = lambda qname, qtype: reply(
            qname.to_text(), dns.rdatatype.to_text(qtype), aa=False,
            authority=["kres. 3600 IN NS ns.kres."])
        self.up.servers["127.0.51.3"] = zone_server({"www.lab.": ["www.lab. 300 IN A 192.0.2.7"]},
                                                    "lab.")
        req = self.resolve("www.lab.")
        self.assertEqual(req.answer.rcode(), dns.rcode.NOERROR)
        self.assertIn(("127.0.51.2", "www.lab.", "A"), self.up.asked)

    def test_ds_referral_to_the_child_is_lame(self) -> None:
        self.up.servers[ROOT_IP] = zone_server({}, ".", delegations={
            "lab.": (["lab. 3600 IN NS ns1.lab.|ns2.lab."],
                     ["ns1.lab. 3600 IN A 127.0.51.2", "ns2.lab. 3600 IN A 127.0.51.3"]),
        })
        ds = "x.lab. 300 IN DS 12345 13 2 " + "ab" * 32
        self.up.servers["127.0.51.2"] = lambda qname, qtype: reply(
            qname.to_text(), dns.rdatatype.to_text(qtype), aa=False,
            authority=["x.lab. 3600 IN NS ns.x.lab."])
        self.up.servers["127.0.51.3"] = zone_server({"x.lab.": [ds]}, "lab.")
        req = self.resolve("x.lab.", "DS")
        self.assertEqual(req.answer.rcode(), dns.rcode.NOERROR)
        self.assertEqual([r.rdtype for r in req.answer.answer], [dns.rdatatype.DS])

    def test_dnssec_records_only_for_do(self) -> None:
        sig = "www.lab. 300 IN RRSIG A 13 2 300 20300101000000 20200101000000 1 lab. AAAA"
        nsec = "x.lab. 300 IN NSEC y.lab. A"
        nsec_sig = "x.lab. 300 IN RRSIG NSEC 13 2 300 20300101000000 20200101000000 1 lab. AAAA"
        soa = "lab. 300 IN SOA ns.lab. host.lab. 1 2 3 4 60"

        def signed(qname: dns.name.Name, qtype: int) -> dns.message.Message:
            if qname.canonicalize() == N("www.lab."):
                return reply("www.lab.", "A", answer=["www.lab. 300 IN A 192.0.2.1", sig])
            return reply(qname.to_text(), dns.rdatatype.to_text(qtype),
                         rcode=dns.rcode.NXDOMAIN, authority=[soa, nsec, nsec_sig])

        self.up.servers["127.0.51.2"] = signed
        plain = self.resolve("www.lab.")
        self.assertEqual([r.rdtype for r in plain.answer.answer], [dns.rdatatype.A])
        with_do = self.resolve("www.lab.", do=True)
        self.assertEqual([r.rdtype for r in with_do.answer.answer],
                         [dns.rdatatype.A, dns.rdatatype.RRSIG])
        self.assertTrue(with_do.cached)
        hit = self.engine.cache.get_rrset("www.lab.", "A")
        assert hit is not None and hit.rrsigs is not None
        plain = self.resolve("x.lab.")
        self.assertEqual([r.rdtype for r in plain.answer.authority], [dns.rdatatype.SOA])
        with_do = self.resolve("x.lab.", do=True)
        self.assertEqual(sorted(r.rdtype for r in with_do.answer.authority),
                         sorted([dns.rdatatype.SOA, dns.rdatatype.NSEC, dns.rdatatype.RRSIG]))

    def test_sub_query_for_glueless_ns_then_answer(self) -> None:
        self.up.servers["127.0.51.2"] = zone_server(
            {"ns.other.lab.": ["ns.other.lab. 300 IN A 127.0.51.5"]}, "lab.",
            delegations={"glueless.lab.": (["glueless.lab. 3600 IN NS ns.other.lab."], [])},
        )
        self.up.servers["127.0.51.5"] = zone_server(
            {"www.glueless.lab.": ["www.glueless.lab. 300 IN A 192.0.2.5"]}, "glueless.lab.")
        req = self.resolve("www.glueless.lab.")
        self.assertEqual(req.answer.answer[0][0].to_text(), "192.0.2.5")
        self.assertIn(("127.0.51.2", "ns.other.lab.", "A"), self.up.asked)


    def test_0x20_switches(self) -> None:
        self.up.servers["127.0.51.2"] = zone_server({"www.lab.": ["www.lab. 300 IN A 1.2.3.4"]},
                                                    "lab.")
        self.resolve("www.lab.")
        self.assertEqual(self.up.randomized, [True, True])
        self.engine.cache.clear()
        self.engine.namespace["iterate"].no_0x20("www.lab.")
        self.resolve("www.lab.")
        self.assertEqual(self.up.randomized[2:], [True, False])  # "lab. NS": still random
        self.engine.cache.clear()
        self.engine.option("NO_0X20", True)
        self.resolve("www.lab.")
        self.assertEqual(self.up.randomized[4:], [False, False])


class PrimingTests(LayerCase):
    modules = ("cache", "iterate", "priming")

    def test_primes_once_and_caches_the_root_ns(self) -> None:
        root = self.up.servers[ROOT_IP]

        def with_apex(qname: dns.name.Name, qtype: int) -> dns.message.Message:
            if qname == dns.name.root and qtype == dns.rdatatype.NS:
                return reply(".", "NS", answer=[". 3600 IN NS a.root."],
                             additional=[f"a.root. 3600 IN A {ROOT_IP}"])
            return root(qname, qtype)

        self.up.servers[ROOT_IP] = with_apex
        self.up.servers["127.0.51.2"] = zone_server({"www.lab.": ["www.lab. 300 IN A 1.2.3.4"]},
                                                    "lab.")
        self.resolve("www.lab.")
        self.assertEqual(self.up.asked[0], (ROOT_IP, ".", "NS"))
        self.assertIsNotNone(self.engine.cache.get_rrset(".", "NS", min_rank=Rank.AUTHORITY))
        glue = self.engine.cache.get_rrset("a.root.", "A", min_rank=Rank.GLUE)
        self.assertIsNotNone(glue)
        self.engine.cache.clear("lab.")
        self.clock.advance(60)
        self.resolve("www.lab.")
        self.assertEqual(len([q for q in self.up.asked if q[1:] == (".", "NS")]), 1)


    def test_a_later_layer_answering_cancels_priming(self) -> None:
        # hints after iterate: iterate plans the priming question, hints answers first
        self.engine.modules.load("hints")
        self.engine.run_config("hints['hinted.lab'] = '127.0.51.9'")
        req = self.resolve("hinted.lab.")
        self.assertEqual(req.answer.answer[0][0].to_text(), "127.0.51.9")
        self.assertEqual(self.up.asked, [])


class ApiTests(LayerCase):
    def test_iterate_config_api(self) -> None:
        api = self.engine.namespace["iterate"]
        self.assertEqual(api.no_0x20("Broken.Example."), ["broken.example."])
        self.assertTrue(api.allow_0x20("broken.example."))
        self.assertFalse(api.allow_0x20("broken.example."))
        with self.assertRaises(ValueError):
            api.time_limit = 0
        with self.assertRaises(ValueError):
            api.max_upstream = 0
        api.time_limit = 2.5
        self.assertEqual(api.time_limit, 2.5)

    def test_net_settings_reach_the_upstream(self) -> None:
        self.engine.run_config("net.ipv6 = False\nnet.outgoing_v4('127.0.51.254')\n"
                               "net.upstream_port = 5300")
        up = self.engine.upstream
        self.assertEqual((up.ipv6, up.outgoing_v4, up.port), (False, "127.0.51.254", 5300))
        self.assertFalse(self.engine.net.ipv6)



class NameHelperTests(unittest.TestCase):
    """kresolver.resolve.names against dnspython, on random names of mixed case (letters,
    digits, octets above ASCII, which lower() leaves alone)."""

    def test_helpers_agree_with_dnspython(self) -> None:
        rng = random.Random(7)
        alphabet = b"aAzZqQ09-_\x80\xc3\xff"
        for _ in range(3000):
            labels = [
                bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 6)))
                for _ in range(rng.randint(0, 4))
            ]
            name = dns.name.Name([*labels, b""])
            lowered = name.canonicalize()
            ours = canonical(name)
            self.assertEqual(ours.labels, lowered.labels)
            if name.labels == lowered.labels:
                self.assertIs(ours, name)  # already canonical: the same object
            made = checked_name(name.labels)
            self.assertEqual((made, hash(made), made.labels), (name, hash(name), name.labels))
            flip = [  # the same name in another case, or another name of as many labels
                bytes(c ^ 0x20 if c in b"aAzZqQ" and rng.random() < 0.5 else c for c in label)
                if rng.random() < 0.8 else bytes([rng.choice(alphabet)])
                for label in labels
            ]
            other = dns.name.Name([*flip, b""])
            self.assertEqual(same_name(name, other), name == other)
            self.assertTrue(same_name(name, lowered))
