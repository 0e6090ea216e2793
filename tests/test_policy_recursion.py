"""Policy, RPZ fake CNAMEs, dns64 and renumber on top of real recursion in the lab."""

from __future__ import annotations

import os
import tempfile

import dns.rdatatype
from twisted.internet import defer

from kresolver.testing.lab import Lab
from tests.policy_support import EngineCase, rcode


class RecursionCase(EngineCase):
    modules = ("policy", "cache", "iterate", "dns64")

    def setUp(self) -> None:
        super().setUp()
        self.lab = Lab.standard(base="127.0.62.")
        self.lab.start()
        self.addCleanup(self.lab.stop)
        self.engine.root_hints = self.lab.root_hints()
        self.engine.option("ALLOW_LOCAL", True)

    @defer.inlineCallbacks
    def test_rules_and_recursion(self):
        self.config("policy.add(policy.suffix(policy.DENY, ['beta.kres']))")
        answer = yield self.ask("www.alpha.lab.", timeout=5)
        self.assertEqual(answer.answer[0][0].to_text(), "192.0.2.1")
        self.assertEqual(rcode((yield self.ask("www.beta.kres."))), "NXDOMAIN")

    @defer.inlineCallbacks
    def test_rpz_fake_cname_continues_in_the_lab(self):
        directory = tempfile.mkdtemp(prefix="rpz-rec-")
        path = os.path.join(directory, "r.rpz")
        with open(path, "w") as f:
            f.write("redirect.example CNAME www.alpha.lab.\n")
        self.addCleanup(lambda: (os.unlink(path), os.rmdir(directory)))
        self.config(f"policy.add(policy.rpz(policy.DENY, {path!r}, watch=False))")
        answer = yield self.ask("redirect.example.", timeout=5)
        self.assertEqual(rcode(answer), "NOERROR")
        self.assertEqual([(r.rdtype, r[0].to_text()) for r in answer.answer],
                         [(dns.rdatatype.CNAME, "www.alpha.lab."),
                          (dns.rdatatype.A, "192.0.2.1")])

    @defer.inlineCallbacks
    def test_dns64_over_recursion(self):
        answer = yield self.ask("mail.alpha.lab.", "AAAA", timeout=5)
        self.assertEqual(answer.answer[-1].rdtype, dns.rdatatype.AAAA)
        self.assertEqual(answer.answer[-1][0].to_text(), "64:ff9b::c000:202")
        answer = yield self.ask("www.alpha.lab.", "AAAA", timeout=5)  # has a real AAAA
        self.assertEqual(answer.answer[0][0].to_text(), "2001:db8::1")

    @defer.inlineCallbacks
    def test_first_traced_request_is_traced_whole(self):
        # The tracing hooks join the layers when a rule first turns tracing on, in the
        # begin layer of that very request: its checkout must still see it asked upstream.
        from twisted.logger import globalLogPublisher

        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.config("policy.add(policy.suffix(policy.DEBUG_CACHE_MISS, ['alpha.lab']))")
        answer = yield self.ask("www.alpha.lab.", timeout=5)
        self.assertEqual(answer.answer[0][0].to_text(), "192.0.2.1")
        lines = "\n".join(e.get("line", "") for e in events
                          if e.get("log_namespace") == "reqdbg.policy")
        self.assertIn("asking upstream: www.alpha.lab.", lines)
        self.assertIn("192.0.2.1", lines)
