"""FORWARD validates what its targets say: the signed lab behind a forwarding target.

The target is a second, in-process kresolver that resolves the signed lab and honours CD
(kresd's behaviour: it hands out unvalidated data when asked with CD), on 127.0.84.253.
The resolver under test forwards everything to it and validates with its own trust
anchor, asking the same target for the DS and DNSKEY sets.  A front resolver with a
different anchor than the target's shows that the verdict is its own; STUB stays
unvalidated.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

import dns.flags
import dns.message
import dns.rcode
from cryptography import x509
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from kresolver.engine import Engine
from kresolver.modules.policy.forward import spki_pin
from kresolver.resolve import validate
from kresolver.resolve.iterate import classify
from kresolver.testing.lab import Lab, ask
from kresolver.testing.signing import DNSSEC_CASES, make_key, signed_dnssec_lab
from tests.support import lab_kresd
from tests.test_validate import TIME_LIMIT, ValidationCase, ede_codes, start_engine
from tests.test_validate_gaps import seen

BASE = "127.0.84."
FRONT = BASE + "252"
KRESD = BASE + "240"


def start_front(test: unittest.TestCase, rule: str, anchor: str) -> tuple[Engine, int]:
    """The resolver under test on 127.0.84.252 (port returned), with C{rule} and
    C{anchor}; it has no way to recurse (its only root server is dead)."""
    engine = Engine(reactor)
    engine.load_defaults()
    engine.modules.unload("priming")
    engine.root_hints = {"dead.lab.": [BASE + "249"]}
    engine.option("ALLOW_LOCAL", True)
    engine.net.outgoing_v4(BASE + "251")
    engine.net.ipv6 = False
    engine.run_config(
        f"trust_anchors.remove('.')\ntrust_anchors.add({anchor!r})\npolicy.add({rule})\n"
    )
    engine.net.listen(FRONT, 0)
    engine.startService()
    test.addCleanup(engine.stopService)
    [(_, port)] = engine.net.addresses
    return engine, port


def foreign_anchor() -> str:
    """A root key the lab was not signed with."""
    _, key = make_key()
    return f". 3600 IN DNSKEY {key.to_text()}"


class ForwardValidationCase(ValidationCase):
    base = BASE
    listen = FRONT
    action = "FORWARD"

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.signed = signed_dnssec_lab(BASE)
        self.lab = Lab(reactor, base=BASE)
        self.lab.load(self.signed.spec)
        self.lab.start()
        self.addCleanup(self.lab.stop)
        target = yield self.start_target()
        self.front, self.port = start_front(
            self, f"policy.all(policy.{self.action}({target!r}))", self.front_anchor()
        )

    def start_target(self) -> Any:
        """Start the forwarding target; fire with the targets as the action takes them."""
        self.target, port = start_engine(
            self, self.lab.root_hints(), self.signed.trust_anchor, base=BASE
        )
        return defer.succeed(f"{BASE}253@{port}")

    def front_anchor(self) -> str:
        return self.signed.trust_anchor

    def asked_target(self) -> int:
        return self.target.metrics.get("answer.total", 0)


class ForwardValidationTests(ForwardValidationCase):
    @defer.inlineCallbacks
    def test_secure_answers_get_ad(self) -> Any:
        for name, rdtype, rcode in (
            ("www.alpha.lab.", "A", "NOERROR"),
            ("alias.alpha.lab.", "A", "NOERROR"),
            ("nowhere.alpha.lab.", "A", "NXDOMAIN"),
            ("txt.alpha.lab.", "A", "NOERROR"),
            ("www.beta.kres.", "A", "NOERROR"),
            ("nowhere.beta.kres.", "A", "NXDOMAIN"),
            ("gamma.lab.", "DS", "NOERROR"),
        ):
            response = yield self.query(name, rdtype)
            self.assertEqual(seen(response), (rcode, True, []), f"{name} {rdtype}")
        # Forwarded data never enters the shared record cache.
        self.assertEqual(self.front.cache.count(), 0)

    @defer.inlineCallbacks
    def test_insecure_answers_have_no_ad(self) -> Any:
        for name in ("www.gamma.lab.", "chain.alpha.lab.", "www.unsigned.optout.lab."):
            response = yield self.query(name)
            self.assertEqual(seen(response), ("NOERROR", False, []), name)
            self.assertTrue(response.answer, name)
        # The way down to gamma.lab. (an unsigned cut) is remembered: no DS asked again.
        lookups = self.front.metrics.get("validate.subrequest", 0)
        response = yield self.query("nothere.gamma.lab.")
        self.assertEqual(seen(response), ("NXDOMAIN", False, []))
        self.assertEqual(self.front.metrics.get("validate.subrequest", 0), lookups)

    @defer.inlineCallbacks
    def test_bogus_is_servfail_with_ede_and_cd_gets_the_data(self) -> Any:
        for name, ede in (
            ("badsig.bogus.lab.", 6),
            ("expired.bogus.lab.", 7),
            ("wrongkey.bogus.lab.", 9),
            ("nosig.bogus.lab.", 10),
            ("www.nokey.lab.", 9),
            ("nowhere.nonsec.lab.", 12),
        ):
            response = yield self.query(name)
            self.assertEqual(seen(response), ("SERVFAIL", False, [ede]), name)
        response = yield self.query("badsig.bogus.lab.", cd=True)
        self.assertEqual(seen(response), ("NOERROR", False, []))
        self.assertEqual(response.answer[0][0].to_text(), "192.0.2.61")

    @defer.inlineCallbacks
    def test_bogus_answer_is_not_asked_again(self) -> Any:
        first = yield self.query("expired.bogus.lab.")
        self.assertEqual(seen(first), ("SERVFAIL", False, [7]))
        before = self.asked_target()
        second = yield self.query("expired.bogus.lab.")
        self.assertEqual(seen(second), ("SERVFAIL", False, [7]))
        self.assertEqual(self.asked_target(), before)


class NoAnchorTests(ForwardValidationCase):
    """Without any trust anchor, forwarded answers are insecure as a whole."""

    @defer.inlineCallbacks
    def test_everything_is_insecure_without_taking_answers_apart(self) -> Any:
        self.front.run_config("trust_anchors.remove('.')")
        judged = []
        self.patch(validate, "classify", lambda *a: judged.append(a) or classify(*a))
        for name, rcode in (
            ("www.alpha.lab.", "NOERROR"),
            ("nowhere.alpha.lab.", "NXDOMAIN"),
            ("badsig.bogus.lab.", "NOERROR"),  # bogus needs an anchor to be found out
            ("www.gamma.lab.", "NOERROR"),
        ):
            response = yield self.query(name)
            self.assertEqual(seen(response), (rcode, False, []), name)
        self.assertEqual(judged, [])
        self.assertEqual(self.front.metrics.get("validate.subrequest", 0), 0)


class WrongAnchorTests(ForwardValidationCase):
    """The front trusts another root key than the lab's: the target's word is not enough."""

    def front_anchor(self) -> str:
        return foreign_anchor()

    @defer.inlineCallbacks
    def test_forwarded_answers_are_judged_locally(self) -> Any:
        response = yield self.query("www.alpha.lab.")
        self.assertEqual(response.rcode(), dns.rcode.SERVFAIL)
        self.assertIn(ede_codes(response)[0], (6, 9))
        # The target itself, asked directly, finds the same name secure.
        query = dns.message.make_query("www.alpha.lab.", "A", want_dnssec=True)
        [(_, port)] = self.target.net.addresses
        wire = yield ask(query, BASE + "253", port, "udp", timeout=TIME_LIMIT + 4)
        self.assertTrue(dns.message.from_wire(wire).flags & dns.flags.AD)


class StubIsNotValidatedTests(ForwardValidationCase):
    action = "STUB"

    def front_anchor(self) -> str:
        return foreign_anchor()

    @defer.inlineCallbacks
    def test_stub_passes_answers_through_without_ad(self) -> Any:
        response = yield self.query("www.alpha.lab.")
        self.assertEqual(seen(response), ("NOERROR", False, []))
        # CD passes through to the target, which then hands out the bogus data.
        response = yield self.query("badsig.bogus.lab.", cd=True)
        self.assertEqual(seen(response), ("NOERROR", False, []))


class EveryCaseTests(ForwardValidationCase):
    """Each case of the DNSSEC lab, asked through FORWARD, as a validator must answer it."""

    #: cases a kresolver target cannot pass on to a validator (none: it gives DO clients
    #: the NSEC proving a wildcard expansion, as kresd does)
    skip_cases: frozenset[tuple[str, str]] = frozenset()

    @defer.inlineCallbacks
    def test_every_case(self) -> Any:
        wrong = []
        for case in DNSSEC_CASES:
            if (case.qname, case.qtype) in self.skip_cases:
                continue
            response = yield self.query(case.qname, case.qtype)
            got = seen(response)
            want = (case.rcode, case.ad, [case.ede] if case.ede is not None else [])
            if got != want:
                wrong.append(f"{case.qname} {case.qtype} ({case.shows}): {got} != {want}")
        self.assertEqual(wrong, [])


class KresdTargetTests(EveryCaseTests):
    """The same through kresd as the target (it passes wildcard proofs on)."""

    skip_cases = frozenset()

    def start_target(self) -> Any:
        return self.start_kresd().addCallback(lambda _: KRESD)

    def start_kresd(self) -> Any:
        """kresd on KRESD, port 53 and (DNS over TLS, an ephemeral certificate) 853."""
        kresd = lab_kresd(
            self, KRESD, self.lab.root_hints(), self.signed.trust_anchor,
            extra_config=f"net.listen('{KRESD}', 853, {{ kind = 'tls' }})",
        )
        return threads.deferToThread(kresd.start)


def tls_pin(address: str, port: int) -> str:
    """The SPKI pin of the certificate a DoT server shows (blocking: run in a thread)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((address, port), timeout=5) as raw:
        with context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return spki_pin(x509.load_der_x509_certificate(der))


class KresdTLSTargetTests(KresdTargetTests):
    """TLS_FORWARD to kresd's DoT port, pinned: validated like FORWARD."""

    action = "TLS_FORWARD"

    @defer.inlineCallbacks
    def start_target(self) -> Any:
        yield self.start_kresd()
        pin = yield threads.deferToThread(tls_pin, KRESD, 853)
        return [{"address": f"{KRESD}@853", "pin_sha256": pin}]
