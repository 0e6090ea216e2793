"""Wildcard answers carry their proof: the NSEC/NSEC3 showing no closer name exists.

RFC 4035 3.1.3.3 and RFC 5155 7.2.6: a positive answer expanded from a wildcard must come
with the NSEC (NSEC3) that proves the name asked does not exist, or a validator behind the
resolver (a forwarder, a stub that validates) cannot tell it from a forgery.  Only DO clients
get it (minimal responses otherwise), whether the answer is fresh or from the cache.

The signed lab is on 127.0.87.x (resolver .253); kresd, where installed, on 127.0.88.99.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
from twisted.internet import defer, reactor, threads

from kresolver.cache import Rank, Security
from kresolver.testing.lab import Lab, ask
from kresolver.testing.signing import SignedHierarchy, dnssec_lab, sign_hierarchy
from tests.support import lab_kresd
from tests.test_cache import CacheTestCase, a, rrsig
from tests.test_validate import TIME_LIMIT, ValidationCase, start_engine

BASE = "127.0.87."
KRESD = "127.0.88.99"
#: an NSEC3 zone of the lab gets a wildcard of its own here
NSEC3_WILDCARD = "*.wild.beta.kres. 300 IN A 192.0.2.70\n"

_T = dns.rdatatype


def with_nsec3_wildcard(base: str) -> SignedHierarchy:
    """The DNSSEC lab with a wildcard added to beta.kres. (NSEC3) before signing."""
    spec, plans = dnssec_lab(base)
    servers = {}
    for key, server in spec.servers.items():
        zones = dict(server.zones)
        if "beta.kres." in zones:
            zones["beta.kres."] += NSEC3_WILDCARD
        servers[key] = replace(server, zones=zones)
    return sign_hierarchy(replace(spec, servers=servers), plans)


def kinds(section: list[Any]) -> list[tuple[str, str, str]]:
    """(owner, type, covered type) of each RRset, sorted: what a section is made of."""
    return sorted(
        (r.name.to_text().lower(), _T.to_text(r.rdtype), _T.to_text(r.covers) if r.covers else "")
        for r in section
    )


def nsec(owner: str, following: str) -> dns.rrset.RRset:
    return dns.rrset.from_text(owner, 300, "IN", "NSEC", f"{following} A RRSIG NSEC")


class CachedProofTests(CacheTestCase):
    """The record cache keeps a wildcard's proof in the data's own entry."""

    def test_proofs_come_back_with_the_data(self) -> None:
        proofs = [nsec("a.example.", "z.example."), rrsig("a.example.", "NSEC")]
        self.cache.put_rrset(
            a("www.example."), Rank.AUTH_ANSWER, security=Security.SECURE,
            rrsigs=rrsig("www.example.", "A"), proofs=proofs,
        )
        self.clock.advance(100)
        hit = self.cache.get_rrset("www.example.", "A")
        self.assertEqual(hit.rrsigs, rrsig("www.example.", "A"))
        self.assertEqual(hit.proofs, proofs)
        self.assertEqual([p.ttl for p in hit.proofs], [200, 200])
        # Data stored without proofs has none; a later store without them drops them.
        self.cache.put_rrset(a("www.example."), Rank.AUTH_ANSWER, rrsigs=rrsig("www.example.", "A"))
        self.assertEqual(self.cache.get_rrset("www.example.", "A").proofs, [])

    def test_bad_proofs_refused(self) -> None:
        sigs = rrsig("www.example.", "A")
        for proofs, rrsigs in (
            ([nsec("a.example.", "z.example.")], None),  # nothing signed: nothing to prove
            ([a("a.example.")], sigs),  # not an NSEC/NSEC3
            ([rrsig("a.example.", "A")], sigs),  # a signature over something else
        ):
            self.assertRaises(
                ValueError, self.cache.put_rrset, a("www.example."), Rank.ANSWER,
                rrsigs=rrsigs, proofs=proofs,
            )


class WildcardProofTests(ValidationCase):
    base = BASE

    def setUp(self) -> None:
        self.signed = with_nsec3_wildcard(self.base)
        self.lab = Lab(reactor, base=self.base)
        self.lab.load(self.signed.spec)
        self.lab.start()
        self.addCleanup(self.lab.stop)
        self.engine, self.port = start_engine(
            self, self.lab.root_hints(), self.signed.trust_anchor, self.base
        )

    def check_proof(self, response: dns.message.Message, name: str, proof: int) -> None:
        """NOERROR, AD, the expanded A with its RRSIG, and the signed proof in authority."""
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertTrue(response.flags & dns.flags.AD)
        owner = dns.name.from_text(name)
        self.assertEqual(
            kinds(response.answer), [(name, "A", ""), (name, "RRSIG", "A")]
        )
        sigs = response.find_rrset(response.answer, owner, 1, _T.RRSIG, _T.A)
        self.assertLess(sigs[0].labels, len(owner) - 1)  # it is an expansion
        data = [r for r in response.authority if r.rdtype == proof]
        self.assertTrue(data, f"no {_T.to_text(proof)} in {response.authority}")
        for rrset in data:
            self.assertTrue(
                any(s.rdtype == _T.RRSIG and s.covers == proof and s.name == rrset.name
                    for s in response.authority),
                f"{rrset.name} {_T.to_text(proof)} without its RRSIG",
            )
        self.assertEqual({r.rdtype for r in response.authority}, {proof, _T.RRSIG})

    @defer.inlineCallbacks
    def fresh_and_cached(self, name: str, proof: int) -> Any:
        """Ask twice; the second answer, from the record cache, has the same proof."""
        fresh = yield self.query(name)
        self.check_proof(fresh, name, proof)
        self.engine.answers.clear()  # the record cache answers, not the whole-answer one
        before = self.total_queries()
        cached = yield self.query(name)
        self.assertEqual(self.total_queries(), before)
        self.check_proof(cached, name, proof)
        self.assertEqual(kinds(cached.authority), kinds(fresh.authority))
        return fresh

    @defer.inlineCallbacks
    def test_nsec_proof_fresh_and_cached(self) -> Any:
        name = "anything.wild.alpha.lab."
        fresh = yield self.fresh_and_cached(name, _T.NSEC)
        # The NSEC covers the name asked: the proof that no closer match exists.
        [nsec] = [r for r in fresh.authority if r.rdtype == _T.NSEC]
        self.assertLess(nsec.name, dns.name.from_text(name))
        self.assertGreater(nsec[0].next, dns.name.from_text(name))

    def test_nsec3_proof_fresh_and_cached(self) -> Any:
        return self.fresh_and_cached("anything.wild.beta.kres.", _T.NSEC3)

    @defer.inlineCallbacks
    def test_no_proof_without_do(self) -> Any:
        name = "anything.wild.alpha.lab."
        plain = yield self.query(name, do=False)
        self.assertEqual(plain.rcode(), dns.rcode.NOERROR)
        self.assertEqual(kinds(plain.answer), [(name, "A", "")])
        self.assertEqual(plain.authority, [])
        # Neither from the cache, once a DO client had the proof stored with the data.
        signed = yield self.query(name)
        self.check_proof(signed, name, _T.NSEC)
        self.engine.answers.clear()
        before = self.total_queries()
        again = yield self.query(name, do=False)
        self.assertEqual(self.total_queries(), before)
        self.assertEqual(again.authority, [])
        self.assertEqual(kinds(again.answer), [(name, "A", "")])

    @defer.inlineCallbacks
    def test_exact_names_get_no_proof(self) -> Any:
        for name in ("exact.wild.alpha.lab.", "www.alpha.lab."):
            response = yield self.query(name)
            self.assertTrue(response.flags & dns.flags.AD, name)
            self.assertEqual(response.authority, [], name)

    @defer.inlineCallbacks
    def test_same_authority_as_kresd(self) -> Any:
        kresd = lab_kresd(self, KRESD, self.lab.root_hints(), self.signed.trust_anchor)
        yield threads.deferToThread(kresd.start)
        for name in ("anything.wild.alpha.lab.", "anything.wild.beta.kres."):
            query = dns.message.make_query(name, "A", want_dnssec=True, use_edns=0)
            wire = yield ask(query, KRESD, 53, "udp", timeout=TIME_LIMIT + 4)
            theirs = dns.message.from_wire(wire)
            ours = yield self.query(name)
            self.assertEqual(kinds(ours.authority), kinds(theirs.authority), name)
            self.assertEqual(kinds(ours.answer), kinds(theirs.answer), name)
