"""Policy filters and actions, as a client sees them through a running engine."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
from twisted.internet import defer

from kresolver.modules.kres import kres
from kresolver.modules.policy import filters
from tests.policy_support import EngineCase, ede_codes, flags, rcode


class FilterTests(EngineCase):
    @defer.inlineCallbacks
    def test_suffix_denies_name_and_below_only(self):
        self.config("policy.add(policy.suffix(policy.DENY, policy.todnames(['example.com'])))")
        for name in ("example.com.", "www.Example.COM."):
            answer = yield self.ask(name)
            self.assertEqual(rcode(answer), "NXDOMAIN")
            self.assertIn("AA", flags(answer))
            self.assertEqual(answer.answer, [])
            soa = answer.authority[0]
            self.assertEqual(soa.rdtype, dns.rdatatype.SOA)
            self.assertEqual(soa.name.to_text().lower(), name.lower())
            self.assertEqual(ede_codes(answer), [kres.extended_error.BLOCKED])
        answer = yield self.ask("notexample.com.")
        self.assertEqual(rcode(answer), "NOERROR")
        self.assertEqual(answer.answer[0][0].to_text(), "127.0.60.200")
        # verdicts are counted per action for stats and the dashboard
        self.assertEqual(self.engine.metrics["policy.deny_msg"], 2)

    @defer.inlineCallbacks
    def test_pattern_matches_wire_form(self):
        # the seed's examples, with the PASS overriding the wider DENY
        self.config(
            "policy.add(policy.pattern(policy.PASS, '\\4www[0-9]\\6badboy\\2cz'))\n"
            "policy.add(policy.suffix(policy.DENY, {todname('badboy.cz')}))\n"
            "policy.add(policy.pattern(policy.REFUSE, '[0-9]+\\2cz'))\n"
        )
        self.assertEqual(rcode((yield self.ask("www1.badboy.cz."))), "NOERROR")
        self.assertEqual(rcode((yield self.ask("wwwx.badboy.cz."))), "NXDOMAIN")
        self.assertEqual(rcode((yield self.ask("abc123.cz."))), "REFUSED")
        self.assertEqual(rcode((yield self.ask("abc.cz."))), "NOERROR")

    @defer.inlineCallbacks
    def test_domains_is_exact(self):
        self.config("policy.add(policy.domains(policy.DENY, policy.todnames(['a.example.'])))")
        self.assertEqual(rcode((yield self.ask("a.example."))), "NXDOMAIN")
        self.assertEqual(rcode((yield self.ask("b.a.example."))), "NOERROR")

    @defer.inlineCallbacks
    def test_suffix_common(self):
        self.config(
            "policy.add(policy.suffix_common(policy.DENY, "
            "policy.todnames(['a.example.', 'b.example.']), todname('example.')))"
        )
        self.assertEqual(rcode((yield self.ask("x.b.example."))), "NXDOMAIN")
        self.assertEqual(rcode((yield self.ask("c.example."))), "NOERROR")
        self.assertRaises(ValueError, filters.suffix_common, None, ["\x01a\x00"], "\x01b\x00")

    @defer.inlineCallbacks
    def test_custom_filter_on_qtype(self):
        self.config(
            "def match_query_type(action, target_qtype):\n"
            "    def f(state, query):\n"
            "        if query.stype == target_qtype:\n"
            "            return action\n"
            "    return f\n"
            "policy.add(match_query_type(policy.DENY, kres.type.TXT))\n"
        )
        self.assertEqual(rcode((yield self.ask("x.example.", "TXT"))), "NXDOMAIN")
        self.assertEqual(rcode((yield self.ask("x.example.", "A"))), "NOERROR")

    @defer.inlineCallbacks
    def test_all_and_rule_count_and_del(self):
        rule = self.policy.add(self.policy.all(self.policy.REFUSE))
        self.assertEqual(rcode((yield self.ask("a.example."))), "REFUSED")
        self.assertEqual(rcode((yield self.ask("a.example."))), "REFUSED")
        self.assertEqual(rule.count, 2)
        self.assertTrue(getattr(self.policy, "del")(rule.id))
        self.assertFalse(self.policy.del_(rule.id))
        self.assertEqual(rcode((yield self.ask("a.example."))), "NOERROR")

    @defer.inlineCallbacks
    def test_count_stays_true_with_the_answer_cache(self):
        # The first answer is kept for the fast path; a rule added later must see
        # the next query anyway (policy.add empties the answer cache).
        self.assertEqual(rcode((yield self.ask("fast.example."))), "NOERROR")
        self.assertEqual(rcode((yield self.ask("fast.example."))), "NOERROR")
        self.assertGreaterEqual(self.engine.answers.hits, 1)
        rule = self.policy.add(self.policy.suffix(self.policy.PASS, ["fast.example."]))
        for _ in range(3):
            yield self.ask("fast.example.")
        self.assertEqual(rule.count, 3)

    def test_wire_names(self):
        self.assertEqual(filters.wire_name("Example.COM"), b"\x07example\x03com\x00")
        self.assertEqual(filters.wire_name(b"\x07example\x03com"), b"\x07example\x03com\x00")
        self.assertEqual(filters.wire_name("\x03xxx"), b"\x03xxx\x00")
        self.assertEqual(filters.wire_name("1.0.0.127.in-addr.arpa"),
                         b"\x011\x010\x010\x03127\x07in-addr\x04arpa\x00")
        self.assertRaises(ValueError, filters.wire_name, b"\x09short")
        self.assertEqual(self.policy.todnames(["example.com", "me.cz"]),
                         [b"\x07example\x03com\x00", b"\x02me\x02cz\x00"])


class ActionTests(EngineCase):
    @defer.inlineCallbacks
    def test_deny_msg_with_txt_and_ede(self):
        self.config(
            "policy.add(policy.suffix(policy.DENY_MSG('go away', "
            "extended_error=kres.extended_error.CENSORED), ['bad.example']))"
        )
        answer = yield self.ask("bad.example.")
        self.assertEqual(rcode(answer), "NXDOMAIN")
        txt = answer.additional[0]
        self.assertEqual(txt.rdtype, dns.rdatatype.TXT)
        self.assertEqual(txt.name.to_text(), "explanation.invalid.")
        self.assertEqual(txt[0].strings, (b"go away",))
        self.assertEqual(ede_codes(answer), [kres.extended_error.CENSORED])

    @defer.inlineCallbacks
    def test_drop_is_servfail(self):
        self.config("policy.add(policy.all(policy.DROP))")
        answer = yield self.ask("a.example.")
        self.assertEqual(rcode(answer), "SERVFAIL")
        self.assertEqual(ede_codes(answer), [kres.extended_error.PROHIBITED])
        self.assertEqual(self.answerer.seen, [])

    @defer.inlineCallbacks
    def test_refuse(self):
        self.config("policy.add(policy.all(policy.REFUSE))")
        answer = yield self.ask("a.example.", use_edns=False)
        self.assertEqual(rcode(answer), "REFUSED")
        self.assertNotIn("AA", flags(answer))

    @defer.inlineCallbacks
    def test_no_answer_sends_nothing(self):
        self.config("policy.add(policy.suffix(policy.NO_ANSWER, ['quiet.example']))")
        yield self.assertFailure(self.ask("quiet.example.", timeout=0.5), TimeoutError)
        self.assertEqual(rcode((yield self.ask("loud.example."))), "NOERROR")

    @defer.inlineCallbacks
    def test_tc_udp_only(self):
        self.config("policy.add(policy.all(policy.TC))")
        answer = yield self.ask("a.example.")
        self.assertIn("TC", flags(answer))
        self.assertEqual(answer.answer, [])
        self.assertEqual(self.answerer.seen, [])
        answer = yield self.ask("a.example.", transport="tcp")
        self.assertNotIn("TC", flags(answer))
        self.assertEqual(answer.answer[0][0].to_text(), "127.0.60.200")

    @defer.inlineCallbacks
    def test_answer_records_ttl_and_nodata(self):
        self.config(
            "policy.add(policy.suffix(policy.ANSWER("
            "{kres.type.A: {'rdata': kres.str2ip('192.0.2.7'), 'ttl': 300}}), "
            "[todname('example.com')]))\n"
            "policy.add(policy.suffix(policy.ANSWER("
            "{kres.type.TXT: {'rdata': ['\\005first', '\\006second'], 'ttl': 5}}, True), "
            "[todname('example.net')]))\n"
            "policy.add(policy.suffix(policy.ANSWER({kres.type.SVCB: {'rdata': "
            "kres.parse_rdata(['SVCB 1 resolver.example. alpn=dot'])}}), "
            "[todname('svc.example')]))\n"
        )
        answer = yield self.ask("example.com.")
        self.assertEqual(rcode(answer), "NOERROR")
        self.assertEqual([r.to_text() for r in answer.answer[0]], ["192.0.2.7"])
        self.assertEqual(answer.answer[0].ttl, 300)
        self.assertIn("AA", flags(answer))
        self.assertEqual(ede_codes(answer), [kres.extended_error.FORGED])
        # a type the first rule does not know: nodata=false, evaluation goes on
        answer = yield self.ask("example.com.", "AAAA")
        self.assertEqual(answer.answer[0][0].to_text(), "2001:db8::200")
        answer = yield self.ask("example.net.", "TXT")
        self.assertEqual(sorted(answer.answer[0][0].strings + answer.answer[0][1].strings),
                         [b"first", b"second"])
        self.assertEqual(answer.answer[0].ttl, 5)
        answer = yield self.ask("example.net.", "A")  # nodata=true
        self.assertEqual(rcode(answer), "NOERROR")
        self.assertEqual(answer.answer, [])
        self.assertEqual(answer.authority[0].rdtype, dns.rdatatype.SOA)
        answer = yield self.ask("svc.example.", "SVCB")
        self.assertEqual(answer.answer[0][0].to_text(), "1 resolver.example. alpn=\"dot\"")
        answer = yield self.ask("svc.example.", "A")
        self.assertEqual(answer.answer[0].ttl, 300)  # resolved normally

    @defer.inlineCallbacks
    def test_custom_action_fake_record(self):
        self.config(
            "import dns.rrset\n"
            "def fake_A_record(state, req):\n"
            "    if req.qtype != kres.type.A:\n"
            "        return state\n"
            "    req.answer.answer.append(dns.rrset.from_text(req.qname, 900, 'IN', 'A',"
            " '192.168.1.3'))\n"
            "    return kres.DONE\n"
            "policy.add(policy.suffix(fake_A_record, policy.todnames(['example.net'])))\n"
        )
        answer = yield self.ask("www.example.net.")
        self.assertEqual(answer.answer[0][0].to_text(), "192.168.1.3")
        self.assertEqual(answer.answer[0].ttl, 900)
        answer = yield self.ask("www.example.net.", "AAAA")  # returned state: normal path
        self.assertEqual(answer.answer[0][0].to_text(), "2001:db8::200")

    @defer.inlineCallbacks
    def test_chain_actions_continue_and_custom_none_chains(self):
        self.config(
            "seen = []\n"
            "def note(state, req):\n"
            "    seen.append(req.qname.to_text())\n"
            "policy.add(policy.all(note))\n"
            "r1 = policy.add(policy.all(policy.FLAGS(['NO_CACHE', 'TCP'])))\n"
            "r2 = policy.add(policy.suffix(policy.FLAGS(None, 'TCP'), ['keep.example']))\n"
            "r3 = policy.add(policy.all(policy.QTRACE))\n"
            "r4 = policy.add(policy.suffix(policy.DENY, ['deny.example']))\n"
        )
        ns = self.engine.namespace
        answer = yield self.ask("keep.example.")
        self.assertEqual(rcode(answer), "NOERROR")
        _, _, req_flags = self.answerer.seen[-1]
        self.assertTrue(req_flags.NO_CACHE)
        self.assertFalse(req_flags.TCP)
        self.assertTrue(req_flags.QTRACE)
        answer = yield self.ask("x.deny.example.")
        self.assertEqual(rcode(answer), "NXDOMAIN")
        self.assertEqual(ns["seen"], ["keep.example.", "x.deny.example."])
        self.assertEqual((ns["r1"].count, ns["r2"].count, ns["r3"].count, ns["r4"].count),
                         (2, 1, 2, 1))

    @defer.inlineCallbacks
    def test_rule_order_first_non_chain_wins(self):
        self.config(
            "policy.add(policy.suffix(policy.REFUSE, ['a.example']))\n"
            "policy.add(policy.suffix(policy.DENY, ['example']))\n"
        )
        self.assertEqual(rcode((yield self.ask("a.example."))), "REFUSED")
        self.assertEqual(rcode((yield self.ask("b.example."))), "NXDOMAIN")

    @defer.inlineCallbacks
    def test_tracing_actions_log(self):
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.config(
            "policy.add(policy.suffix(policy.IPTRACE, ['ip.example']))\n"
            "policy.add(policy.suffix(policy.REQTRACE, ['req.example']))\n"
            "policy.add(policy.suffix(policy.DEBUG_ALWAYS, ['dbg.example']))\n"
            "policy.add(policy.suffix(policy.DEBUG_IF(lambda req: req.state & kres.FAIL),"
            " ['dbgif.example']))\n"
            "policy.add(policy.suffix(policy.DEBUG_CACHE_MISS, ['miss.example']))\n"
        )

        def lines():
            out = [e.get("line") or e.get("text") or "" for e in events
                   if e.get("log_namespace") == "reqdbg.policy"]
            events.clear()
            return "\n".join(out)

        yield self.ask("ip.example.")
        self.assertRegex(lines(), r"request packet arrived from 127\.0\.0\.1#\d+ to "
                                  r"127\.0\.60\.1#\d+ \(UDP\)")
        yield self.ask("req.example.")
        self.assertIn("req.example. IN A", lines())
        yield self.ask("dbg.example.")
        self.assertIn("127.0.60.200", lines())
        yield self.ask("dbgif.example.")  # succeeds: the test says no
        self.assertEqual(lines(), "")
        yield self.ask("miss.example.")  # answered locally: never asked upstream
        self.assertEqual(lines(), "")


class SpecialNamesTests(EngineCase):
    @defer.inlineCallbacks
    def test_special_use_and_private_reverse_blocked(self):
        for name in ("foo.test.", "x.invalid.", "abc.onion.", "1.0.168.192.in-addr.arpa.",
                     "10.in-addr.arpa.", "5.16.172.in-addr.arpa."):
            answer = yield self.ask(name)
            self.assertEqual(rcode(answer), "NXDOMAIN", name)
            self.assertIn("AA", flags(answer))
            self.assertEqual(ede_codes(answer), [kres.extended_error.NOTSUP])
        self.assertEqual(self.answerer.seen, [])
        # 172.32/16 is public
        self.assertEqual(rcode((yield self.ask("1.0.32.172.in-addr.arpa."))), "NOERROR")

    @defer.inlineCallbacks
    def test_special_names_in_any_case(self):
        # begin() skips the rules' filters for names outside their top-level labels: that
        # test must fold case as the filters do
        for name in ("Foo.TEST.", "X.Invalid.", "ABC.onion.", "1.0.168.192.IN-ADDR.Arpa."):
            answer = yield self.ask(name)
            self.assertEqual(rcode(answer), "NXDOMAIN", name)
            self.assertIn("AA", flags(answer))
        answer = yield self.ask("LocalHost.")
        self.assertEqual(answer.answer[0][0].to_text(), "127.0.0.1")
        self.assertEqual(self.answerer.seen, [])

    @defer.inlineCallbacks
    def test_localhost(self):
        answer = yield self.ask("localhost.")
        self.assertEqual(answer.answer[0][0].to_text(), "127.0.0.1")
        answer = yield self.ask("foo.localhost.", "AAAA")
        self.assertEqual(answer.answer[0][0].to_text(), "::1")
        answer = yield self.ask("1.0.0.127.in-addr.arpa.", "PTR")
        self.assertEqual(answer.answer[0][0].to_text(), "localhost.")
        answer = yield self.ask("2.0.0.127.in-addr.arpa.", "PTR")
        self.assertEqual(rcode(answer), "NXDOMAIN")
        answer = yield self.ask("0.127.in-addr.arpa.", "PTR")
        self.assertEqual(rcode(answer), "NOERROR")
        self.assertEqual(answer.answer, [])
        answer = yield self.ask("1." + "0." * 31 + "ip6.arpa.", "PTR")
        self.assertEqual(answer.answer[0][0].to_text(), "localhost.")

    @defer.inlineCallbacks
    def test_pass_overrides(self):
        self.config("policy.add(policy.suffix(policy.PASS, ['mine.test']))")
        self.assertEqual(rcode((yield self.ask("a.mine.test."))), "NOERROR")
        self.assertEqual(rcode((yield self.ask("other.test."))), "NXDOMAIN")


class MirrorTests(EngineCase):
    @defer.inlineCallbacks
    def test_mirror_copies_query_and_continues(self):
        from twisted.internet import reactor
        from twisted.internet.protocol import DatagramProtocol

        got: list[bytes] = []
        arrived: defer.Deferred[None] = defer.Deferred()

        class Sink(DatagramProtocol):
            def datagramReceived(self, data, addr):
                got.append(data)
                if not arrived.called:
                    arrived.callback(None)

        port = reactor.listenUDP(0, Sink(), interface="127.0.60.2")
        self.addCleanup(port.stopListening)
        rule = self.policy.add(self.policy.all(
            self.policy.MIRROR(f"127.0.60.2@{port.getHost().port}")))
        answer = yield self.ask("mirrored.example.")
        self.assertEqual(rcode(answer), "NOERROR")
        yield arrived
        self.assertEqual(dns.message.from_wire(got[0]).question[0].name.to_text(),
                         "mirrored.example.")
        self.assertEqual(rule.count, 1)


class KresTests(EngineCase):
    def test_helpers(self):
        self.assertEqual(kres.str2ip("192.0.2.1"), b"\xc0\x00\x02\x01")
        self.assertEqual(len(kres.str2ip("2001:db8::1")), 16)
        self.assertRaises(ValueError, kres.str2ip, "nope")
        self.assertRaises(ValueError, kres.parse_rdata, ["A not-an-address"])
        self.assertIs(self.engine.namespace["kres"], kres)
        self.assertEqual(dns.rcode.NXDOMAIN, kres.rcode.NXDOMAIN)
        self.assertTrue(dns.flags.AA)


class SliceTests(EngineCase):
    @defer.inlineCallbacks
    def test_slices_keep_registrable_domains_together(self):
        self.config(
            "policy.add(policy.slice(policy.slice_randomize_psl(seed=7), "
            "policy.DENY, policy.REFUSE, policy.PASS))"
        )
        fn = self.policy.slice_randomize_psl(seed=7)
        seen = set()
        for site in ("example.co.uk.", "example.com.", "nic.cz.", "foo.github.io.",
                     "a.org.", "b.org.", "c.net.", "d.net.", "e.info.", "f.info."):
            codes = set()
            for prefix in ("", "www.", "a.b.c."):
                codes.add(rcode((yield self.ask(prefix + site))))
            self.assertEqual(len(codes), 1, site)  # the whole site in one slice
            seen |= codes
        self.assertEqual(seen, {"NXDOMAIN", "REFUSED", "NOERROR"})

        class Q:
            name = "www.example.co.uk."

        other = type("Q2", (), {"name": "example.co.uk."})
        self.assertEqual(fn(Q, 5), fn(other, 5))
        self.assertRaises(ValueError, self.policy.slice, fn)


class ExampleConfigTests(EngineCase):
    modules = ("answerer",)

    def test_example_config_loads(self):
        from kresolver.paths import conf_file

        path = conf_file("policy-example.conf")
        self.engine.namespace["__file__"] = str(path)
        self.engine.load_config(path)
        policy = self.engine.namespace["policy"]
        self.assertEqual(len(policy.rules), 24)
        self.assertEqual(len(policy.postrules), 1)
        self.assertFalse(self.engine.answers.enabled)  # views are loaded
        order = self.engine.modules.list()
        self.assertLess(order.index("view"), order.index("policy"))


class HookTests(EngineCase):
    """Policy's hooks that would do nothing stay out of the engine's layer lists."""

    def hooks(self) -> set[str]:
        policy = self.engine.modules["policy"]
        layers = self.engine.layers
        return {
            hook for hook in ("checkout", "consume", "answer_finalize", "finish")
            if any(getattr(f, "__self__", None) is policy for f in getattr(layers, hook))
        }

    @defer.inlineCallbacks
    def test_postrules_bring_answer_finalize(self):
        self.assertEqual(self.hooks(), set())
        self.config("r = policy.add(policy.all(policy.DENY), True)\n"
                    "policy.add(policy.all(policy.PASS))")
        self.assertEqual(self.hooks(), {"answer_finalize"})
        self.assertEqual(rcode((yield self.ask("a.example."))), "NXDOMAIN")
        self.config("policy.del_(r)")
        self.assertEqual(self.hooks(), set())
        self.assertEqual(rcode((yield self.ask("a.example."))), "NOERROR")

    @defer.inlineCallbacks
    def test_option_brings_tracing_hooks(self):
        yield self.ask("a.example.")
        self.assertEqual(self.hooks(), set())
        self.engine.option("QTRACE", True)
        yield self.ask("b.example.")
        self.assertEqual(self.hooks(), {"checkout", "consume", "finish"})

    @defer.inlineCallbacks
    def test_tracing_actions_bring_tracing_hooks(self):
        for action in ("QTRACE", "DEBUG_ALWAYS", "FLAGS(['QTRACE'])"):
            self.engine.modules.unload("policy")
            self.engine.modules.load("policy")
            self.config(f"policy.add(policy.suffix(policy.{action}, ['t.example']))")
            yield self.ask("a.example.")
            self.assertEqual(self.hooks(), set(), action)
            yield self.ask("x.t.example.")
            self.assertEqual(self.hooks(), {"checkout", "consume", "finish"}, action)
