"""Views: client subnet, destination and verified TSIG keys; RFC 8945 errors."""

from __future__ import annotations

import base64
from unittest import mock

import dns.message
import dns.rcode
import dns.tsig
import dns.tsigkeyring
from twisted.internet import defer

from tests.policy_support import EngineCase, ask_from, rcode

SECRET = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
KEYRING = dns.tsigkeyring.from_text({"mykey.": ("hmac-sha256", SECRET)})
WRONG = dns.tsigkeyring.from_text(
    {"mykey.": ("hmac-sha256", base64.b64encode(b"x" * 32).decode())})
UNKNOWN = dns.tsigkeyring.from_text({"other.": ("hmac-sha256", SECRET)})


class ViewCase(EngineCase):
    modules = ("view", "policy", "answerer")

    def setUp(self) -> None:
        super().setUp()
        self.engine.net.listen("127.0.60.2", self.port)
        self.view = self.engine.namespace["view"]

    def query(self, name: str, source: str, to: str = "127.0.60.1",
              message: dns.message.Message | None = None) -> defer.Deferred:
        message = message or dns.message.make_query(name, "A")
        d = ask_from(source, message.to_wire(), (to, self.port))
        return d.addCallback(dns.message.from_wire, keyring=False)


class SubnetTests(ViewCase):
    @defer.inlineCallbacks
    def test_most_specific_subnet_wins(self):
        self.config(
            "view.addr('127.0.0.0/8', policy.all(policy.DENY))\n"
            "view.addr('127.0.61.0/24', policy.suffix(policy.REFUSE, ['bad.example']))\n"
            "view.addr('127.0.61.0/24', policy.all(policy.PASS))\n"
            "view.addr('::/0', policy.all(policy.DROP))\n"
        )
        self.assertFalse(self.engine.answers.enabled)
        self.assertEqual(rcode((yield self.query("a.example.", "127.0.62.5"))), "NXDOMAIN")
        self.assertEqual(rcode((yield self.query("a.example.", "127.0.61.5"))), "NOERROR")
        self.assertEqual(rcode((yield self.query("x.bad.example.", "127.0.61.5"))), "REFUSED")
        # the same question from another client is not answered from the first one's answer
        self.assertEqual(rcode((yield self.query("a.example.", "127.0.62.5"))), "NXDOMAIN")

    @defer.inlineCallbacks
    def test_dst_subnet(self):
        self.config("view.dst('127.0.60.2/32', policy.all(policy.REFUSE))")
        self.assertEqual(rcode((yield self.query("a.example.", "127.0.62.6", "127.0.60.2"))),
                         "REFUSED")
        self.assertEqual(rcode((yield self.query("a.example.", "127.0.62.6", "127.0.60.1"))),
                         "NOERROR")

    @defer.inlineCallbacks
    def test_view_chain_then_policy(self):
        self.config(
            "view.addr('127.0.63.0/24', policy.all(policy.FLAGS('NO_CACHE')))\n"
            "policy.add(policy.suffix(policy.DENY, ['global.example']))\n"
        )
        self.assertEqual(rcode((yield self.query("global.example.", "127.0.63.1"))),
                         "NXDOMAIN")
        yield self.query("ok.example.", "127.0.63.1")
        self.assertTrue(self.answerer.seen[-1][2].NO_CACHE)
        yield self.query("ok.example.", "127.0.64.1")
        self.assertFalse(self.answerer.seen[-1][2].NO_CACHE)

    def test_bad_subnet(self):
        self.assertRaises(ValueError, self.view.addr, "not-a-net", lambda s, q: None)
        self.assertRaises(TypeError, self.view.addr, "10.0.0.0/8", "DENY")

    @defer.inlineCallbacks
    def test_unload_restores_answer_cache(self):
        self.config("view.addr('10.0.0.0/8', policy.all(policy.DENY))")
        self.assertFalse(self.engine.answers.enabled)
        self.engine.modules.unload("view")
        self.assertTrue(self.engine.answers.enabled)
        yield self.query("a.example.", "127.0.62.9")


class TsigTests(ViewCase):
    def setUp(self) -> None:
        super().setUp()
        self.config(
            f"view.key('mykey.', 'hmac-sha256', {SECRET!r})\n"
            "view.tsig('\\5mykey', policy.all(policy.REFUSE))\n"
            "view.addr('127.0.0.0/8', policy.all(policy.DENY))\n"
        )

    def signed(self, name: str, keyring: dict, keyname: str = "mykey.") -> dns.message.Message:
        message = dns.message.make_query(name, "A")
        message.use_tsig(keyring, keyname=keyname)
        return message

    @defer.inlineCallbacks
    def test_verified_key_selects_view_and_answer_is_signed(self):
        message = self.signed("a.example.", KEYRING)
        wire = yield ask_from("127.0.65.1", message.to_wire(), ("127.0.60.1", self.port))
        answer = dns.message.from_wire(wire, keyring=KEYRING, request_mac=message.mac)
        self.assertEqual(rcode(answer), "REFUSED")  # the key's view, not the subnet's
        self.assertTrue(answer.had_tsig)
        answer = yield self.query("a.example.", "127.0.65.1")  # unsigned: subnet view
        self.assertEqual(rcode(answer), "NXDOMAIN")

    @defer.inlineCallbacks
    def test_unknown_key_is_badkey(self):
        message = self.signed("a.example.", UNKNOWN, "other.")
        answer = yield self.query("", "127.0.65.2", message=message)
        self.assertEqual(rcode(answer), "NOTAUTH")
        self.assertEqual(answer.tsig_error, dns.rcode.BADKEY)
        self.assertEqual(answer.tsig[0].mac, b"")
        self.assertEqual(answer.question[0].name.to_text(), "a.example.")

    @defer.inlineCallbacks
    def test_wrong_secret_is_badsig(self):
        message = self.signed("a.example.", WRONG)
        answer = yield self.query("", "127.0.65.3", message=message)
        self.assertEqual(rcode(answer), "NOTAUTH")
        self.assertEqual(answer.tsig_error, dns.rcode.BADSIG)
        self.assertEqual(answer.tsig[0].mac, b"")

    @defer.inlineCallbacks
    def test_stale_time_is_badtime_signed(self):
        message = self.signed("a.example.", KEYRING)
        with mock.patch("time.time", return_value=1_000_000_000.0):
            wire = message.to_wire()
        reply = yield ask_from("127.0.65.4", wire, ("127.0.60.1", self.port))
        answer = dns.message.from_wire(reply, keyring=False)
        self.assertEqual(rcode(answer), "NOTAUTH")
        self.assertEqual(answer.tsig_error, dns.rcode.BADTIME)
        self.assertEqual(len(answer.tsig[0].other), 6)
        self.assertNotEqual(answer.tsig[0].mac, b"")
        self.assertEqual(answer.keyname.to_text(), "mykey.")
        self.assertRaises(dns.tsig.PeerBadTime, dns.message.from_wire, reply,
                          keyring=KEYRING, request_mac=message.mac)

    def test_bad_key_config(self):
        self.assertRaises(ValueError, self.view.key, "k.", "hmac-nope", SECRET)
        self.assertRaises(ValueError, self.view.key, "k.", "hmac-sha256", "not base64!")
