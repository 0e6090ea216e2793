"""DNS64 (RFC 6147): AAAA synthesis, exclusions, PTR for the prefix, DNSSEC handling."""

from __future__ import annotations

import dns.flags
import dns.rdatatype
import dns.reversename
from twisted.internet import defer

from tests.policy_support import EngineCase, flags, rcode


class DNS64Tests(EngineCase):
    modules = ("policy", "answerer", "dns64")

    @defer.inlineCallbacks
    def test_synthesis_from_a(self):
        answer = yield self.ask("v4only.example.", "AAAA")
        self.assertEqual(rcode(answer), "NOERROR")
        self.assertEqual(answer.answer[0].rdtype, dns.rdatatype.AAAA)
        self.assertEqual(answer.answer[0][0].to_text(), "64:ff9b::7f00:3cc8")
        self.assertEqual(answer.answer[0].ttl, 60)  # the SOA minimum of the NODATA
        self.assertNotIn("AD", flags(answer))

    @defer.inlineCallbacks
    def test_real_aaaa_untouched_and_mapped_excluded(self):
        answer = yield self.ask("dual.example.", "AAAA")
        self.assertEqual(answer.answer[0][0].to_text(), "2001:db8::200")
        answer = yield self.ask("mapped.example.", "AAAA")
        self.assertEqual([r.to_text() for r in answer.answer[0]], ["64:ff9b::7f00:3cc8"])

    @defer.inlineCallbacks
    def test_do_cd_client_gets_no_synthesis(self):
        answer = yield self.ask("v4only.example.", "AAAA", want_dnssec=True,
                                flags=dns.flags.CD)
        self.assertEqual((rcode(answer), answer.answer), ("NOERROR", []))

    @defer.inlineCallbacks
    def test_configured_prefix_and_ptr(self):
        self.config("dns64.config({'prefix': '2001:67c:64::/96', 'rev_ttl': 77})")
        answer = yield self.ask("v4x.example.", "AAAA")
        self.assertEqual(answer.answer[0][0].to_text(), "2001:67c:64::7f00:3cc8")
        answer = yield self.ask(
            dns.reversename.from_address("2001:67c:64::c000:201").to_text(), "PTR")
        self.assertEqual(answer.answer[0].rdtype, dns.rdatatype.CNAME)
        self.assertEqual(answer.answer[0][0].to_text(), "1.2.0.192.in-addr.arpa.")
        self.assertEqual(answer.answer[0].ttl, 77)
        self.assertEqual(answer.answer[1][0].to_text(), "host.example.")
        self.assertRaises(ValueError, self.engine.namespace['dns64'].config, '2001:db8::/64')

