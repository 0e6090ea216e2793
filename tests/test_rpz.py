"""RPZ: the compatibility table, wildcards, errors by line, reloads under load."""

from __future__ import annotations

import os
import tempfile

import dns.rdatatype
from twisted.internet import defer, reactor, task

from kresolver.engine import ConfigError
from kresolver.modules.kres import kres
from kresolver.modules.policy.rpz import RpzError, parse_rpz
from tests.policy_support import EngineCase, ede_codes, flags, rcode

ZONE = """\
$TTL 300
$ORIGIN rpz.local.
@   SOA ns.rpz.local. hostmaster.rpz.local. (
        1 3600 600 86400 300 )  ; multi-line SOA
    NS  ns.rpz.local.
blocked.domain.example    600 IN CNAME .            ; block main domain
*.blocked.domain.example  600 IN CNAME .            ; block subdomains
nodata.example            CNAME *.
ok.blocked.domain.example CNAME rpz-passthru.
drop.example              CNAME rpz-drop.
tcp.example               CNAME rpz-tcp-only.
local.example             120 A 192.0.2.1
                          120 A 192.0.2.2
local.example             AAAA 2001:db8::1
local.example             TXT "hello; world"
*.wild.example            A 192.0.2.9
alias.example             CNAME local.example.
elsewhere.example         CNAME target.example.
32.1.2.0.192.rpz-ip       CNAME .
"""


def write(path: str, text: str) -> None:
    """Replace the file atomically, as the seed recommends (write, then rename)."""
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class RpzCase(EngineCase):
    def setUp(self) -> None:
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix="rpz-test-")
        self.path = os.path.join(self.dir, "block.rpz")
        write(self.path, ZONE)

        def clean() -> None:
            for name in os.listdir(self.dir):
                os.unlink(os.path.join(self.dir, name))
            os.rmdir(self.dir)

        self.addCleanup(clean)


class ParseTests(RpzCase):
    def test_parse(self):
        zone = parse_rpz(self.path)
        self.assertIn(b"\x07blocked\x06domain\x07example\x00", zone.exact)
        self.assertIn(b"\x07blocked\x06domain\x07example\x00", zone.wild)
        self.assertEqual(zone.skipped, 1)  # rpz-ip trigger
        self.assertEqual(len(zone.exact[b"\x05local\x07example\x00"].records), 3)

    def test_errors_name_the_line(self):
        write(self.path, ZONE + "bad.example CNAME\n")
        error = self.assertRaises(RpzError, parse_rpz, self.path)
        self.assertTrue(str(error).startswith(f"{self.path}:{ZONE.count(chr(10)) + 1}:"),
                        str(error))
        write(self.path, "$ORIGIN rpz.local.\nfoo.example 300 IN A not-an-ip\n")
        self.assertIn(":2: bad A data", str(self.assertRaises(RpzError, parse_rpz, self.path)))
        write(self.path, "$INCLUDE other\n")
        self.assertIn(":1: unsupported", str(self.assertRaises(RpzError, parse_rpz, self.path)))
        error = self.assertRaises(ConfigError, self.config,
                                  f"policy.add(policy.rpz(policy.DENY, {self.path!r}))")
        self.assertIn(":1:", str(error))
        self.assertRaises(RpzError, parse_rpz, os.path.join(self.dir, "missing.rpz"))


class ActionTests(RpzCase):
    def setUp(self) -> None:
        super().setUp()
        self.config(
            f"rule = policy.add(policy.rpz(policy.DENY_MSG('blocked by rpz'), {self.path!r}))"
        )

    @defer.inlineCallbacks
    def test_nxdomain_with_default_action_and_wildcard(self):
        for name in ("blocked.domain.example.", "a.b.blocked.domain.example."):
            answer = yield self.ask(name)
            self.assertEqual(rcode(answer), "NXDOMAIN", name)
            self.assertEqual(answer.additional[0][0].strings, (b"blocked by rpz",))
            self.assertEqual(ede_codes(answer), [kres.extended_error.BLOCKED])
        self.assertEqual(rcode((yield self.ask("domain.example."))), "NOERROR")
        self.assertEqual(self.engine.namespace["rule"].count, 2)

    @defer.inlineCallbacks
    def test_passthru_nodata_drop_tcp(self):
        answer = yield self.ask("ok.blocked.domain.example.")
        self.assertEqual(answer.answer[0][0].to_text(), "127.0.60.200")
        answer = yield self.ask("nodata.example.")
        self.assertEqual((rcode(answer), answer.answer), ("NOERROR", []))
        self.assertEqual(answer.authority[0].rdtype, dns.rdatatype.SOA)
        self.assertEqual(rcode((yield self.ask("drop.example."))), "SERVFAIL")
        answer = yield self.ask("tcp.example.")
        self.assertIn("TC", flags(answer))
        answer = yield self.ask("tcp.example.", transport="tcp")
        self.assertEqual(answer.answer[0][0].to_text(), "127.0.60.200")

    @defer.inlineCallbacks
    def test_local_data(self):
        answer = yield self.ask("local.example.")
        self.assertEqual(sorted(r.to_text() for r in answer.answer[0]),
                         ["192.0.2.1", "192.0.2.2"])
        self.assertEqual(answer.answer[0].ttl, 120)
        self.assertEqual(ede_codes(answer), [kres.extended_error.FORGED])
        answer = yield self.ask("local.example.", "TXT")
        self.assertEqual(answer.answer[0][0].strings, (b"hello; world",))
        answer = yield self.ask("local.example.", "MX")
        self.assertEqual((rcode(answer), answer.answer), ("NOERROR", []))
        answer = yield self.ask("x.y.wild.example.")
        self.assertEqual(answer.answer[0].name.to_text(), "x.y.wild.example.")
        self.assertEqual(answer.answer[0][0].to_text(), "192.0.2.9")

    @defer.inlineCallbacks
    def test_fake_cname(self):
        answer = yield self.ask("alias.example.", "AAAA")
        self.assertEqual([(r.rdtype, r[0].to_text()) for r in answer.answer],
                         [(dns.rdatatype.CNAME, "local.example."),
                          (dns.rdatatype.AAAA, "2001:db8::1")])
        answer = yield self.ask("elsewhere.example.")
        self.assertEqual([(r.name.to_text(), r[0].to_text()) for r in answer.answer],
                         [("elsewhere.example.", "target.example."),
                          ("target.example.", "127.0.60.200")])
        self.assertEqual(answer.question[0].name.to_text(), "elsewhere.example.")


class ReloadTests(RpzCase):
    def setUp(self) -> None:
        super().setUp()
        self.config(f"rule = policy.add(policy.rpz(policy.DENY, {self.path!r}))")
        self.rule = self.engine.namespace["rule"].cb

    @defer.inlineCallbacks
    def test_reload_and_broken_file_keeps_old_rules(self):
        self.assertEqual(rcode((yield self.ask("new.example."))), "NOERROR")
        write(self.path, "new.example CNAME .\n")
        yield self.rule.check()
        self.assertEqual(self.rule.reloads, 1)
        self.assertEqual(rcode((yield self.ask("new.example."))), "NXDOMAIN")
        self.assertEqual(rcode((yield self.ask("blocked.domain.example."))), "NOERROR")
        write(self.path, "new.example CNAME .\nnewer.example CNAME .\nbroken A 1.2.3\n")
        yield self.rule.check()
        self.assertEqual(self.rule.reloads, 1)
        self.assertEqual(len(self.rule.errors), 1)
        self.assertIn(f"{self.path}:3:", self.rule.errors[0])
        self.assertEqual(rcode((yield self.ask("new.example."))), "NXDOMAIN")
        self.assertEqual(rcode((yield self.ask("newer.example."))), "NOERROR")

    @defer.inlineCallbacks
    def test_watch_polls_and_swaps_under_load(self):
        big = "".join(f"n{i}.bulk.example CNAME .\n" for i in range(20000))
        results: list[str] = []

        @defer.inlineCallbacks
        def client(n: int):
            for i in range(40):
                answer = yield self.ask(f"n{(n * 40 + i) % 20000}.bulk.example.")
                results.append(rcode(answer))

        write(self.path, ZONE + big)
        clients = [client(n) for n in range(5)]
        # the LoopingCall (1 s) notices the new file while the clients run
        while self.rule.reloads == 0:
            yield task.deferLater(reactor, 0.05, lambda: None)
        yield defer.gatherResults(clients)
        self.assertEqual(len(results), 200)
        self.assertTrue(set(results) <= {"NOERROR", "NXDOMAIN"}, set(results))
        answer = yield self.ask("n5.bulk.example.")
        self.assertEqual(rcode(answer), "NXDOMAIN")
