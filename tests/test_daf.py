"""The DNS application firewall: rule language, enforcement through policy, persistence, REST.

Queries go through the transports' handler (the fast path included) to an engine that
answers names from hints, so every verdict is observed in a real answer.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from twisted.trial import unittest
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from kresolver.engine import Engine
from kresolver.modules.daf import RuleError, parse

CLIENT = ("127.0.70.50", 40000)
OTHER = ("127.0.70.51", 40000)
SERVER = ("127.0.70.52", 53)
HTTP_HOST = "127.0.70.20"


def make_engine(state_dir: str) -> Engine:
    engine = Engine(reactor)
    engine.modules.load("hints")
    engine.run_config(
        "hints['www.daf.lab'] = '192.0.2.7'\n"
        "hints['blocked.daf.lab'] = '192.0.2.8'\n"
        "hints['ads.tracker.lab'] = '192.0.2.9'\n"
    )
    engine.modules.load("daf", {"state_dir": state_dir})
    return engine


class DafCase(unittest.TestCase):
    def setUp(self) -> None:
        self.state = tempfile.mkdtemp(prefix="kresolver-daf-")
        self.addCleanup(shutil.rmtree, self.state, True)
        self.engine = make_engine(self.state)
        self.daf = self.engine.namespace["daf"]

    def ask(self, name: str, rdtype: str = "A", src: tuple[str, int] = CLIENT,
            transport: str = "udp") -> dns.message.Message:
        wire = dns.message.make_query(name, rdtype, use_edns=True).to_wire()
        answer = self.engine.net.handler.receive(wire, src, SERVER, transport)
        self.assertNotIsInstance(answer, Deferred)
        self.assertIsNotNone(answer)
        return dns.message.from_wire(answer)

    def addresses(self, message: dns.message.Message) -> list[str]:
        return sorted(r.address for rrset in message.answer for r in rrset)


class ParseTests(unittest.TestCase):
    def test_valid_rules(self) -> None:
        for text, action in [
            ("qname = example.com deny", "deny"),
            ("qname ~ ^ads\\. AND src = 192.0.2.0/24 drop", "drop"),
            ("src = 2001:db8::/32 OR dst = 127.0.0.1 tc", "truncate"),
            ("deny", "deny"),
            ("qname = example.com reroute 192.0.2.0/24-127.0.0.0", "reroute"),
            ("rewrite example.com A 192.0.2.1 example.com AAAA ::1", "rewrite"),
            ("qname ~ example mirror 127.0.0.2@5353", "mirror"),
        ]:
            self.assertEqual(parse(text).action, action, text)
        self.assertTrue(parse("src = 192.0.2.1 pass").by_address)
        self.assertFalse(parse("qname = a.test pass").by_address)

    def test_invalid_rules_say_why(self) -> None:
        cases = {
            "": "empty rule",
            "qname = example.com": "no action",
            "qname = example.com block": "unknown action 'block'",
            "qname > example.com deny": "qname takes '=' or '~'",
            "src ~ 10.0.0.0/8 deny": "src takes only '='",
            "src = 10.0.0.300 deny": "not an address or subnet",
            "qname ~ ([ deny": "bad regular expression",
            "qname = example.com AND deny": "AND must be followed by a condition",
            "qname =": "incomplete condition",
            "qname = a..b deny": "not a domain name",
            "deny now": "takes no arguments",
            "reroute 10.0.0.0/8": "not SUBNET-TARGET",
            "reroute 10.0.0.0/8-::1": "different families",
            "reroute 10.0.0.0/8-x": "reroute:",
            "rewrite example.com MX 192.0.2.1": "type 'MX' is not supported",
            "rewrite example.com A ::1": "not a A address",
            "rewrite example.com A": "NAME TYPE ADDR triples",
        }
        for text, message in cases.items():
            with self.assertRaises(RuleError) as raised:
                make_action(text)
            self.assertIn(message, str(raised.exception), text)


def make_action(text: str) -> Any:
    from kresolver.modules.daf import ACTIONS

    engine = Engine(reactor)
    engine.modules.load("policy")
    parsed = parse(text)
    return ACTIONS[parsed.action](engine.namespace["policy"], parsed.args)


class EnforcementTests(DafCase):
    def test_deny_counts_suspends_resumes_deletes(self) -> None:
        self.assertEqual(self.ask("blocked.daf.lab").rcode(), dns.rcode.NOERROR)
        rule = self.daf.add("qname = blocked.daf.lab deny")
        self.assertEqual(rule, {"id": 1, "info": "qname = blocked.daf.lab deny",
                                "active": True, "count": 0})
        for _ in range(3):
            self.assertEqual(self.ask("blocked.daf.lab").rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(self.ask("www.daf.lab").rcode(), dns.rcode.NOERROR)
        self.assertEqual(self.daf.get(1)["count"], 3)
        self.assertEqual(self.engine.metrics["daf.blocked.deny"], 3)
        self.assertFalse(self.daf.disable(1)["active"])
        self.assertEqual(self.addresses(self.ask("blocked.daf.lab")), ["192.0.2.8"])
        self.assertTrue(self.daf.enable(1)["active"])
        self.assertEqual(self.ask("blocked.daf.lab").rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(self.daf.rules[0]["count"], 4)
        self.assertTrue(getattr(self.daf, "del")(1))
        self.assertFalse(self.daf.del_(1))
        self.assertEqual(self.ask("blocked.daf.lab").rcode(), dns.rcode.NOERROR)
        self.assertEqual(self.daf.rules, [])

    def test_source_rules_switch_the_answer_cache_off(self) -> None:
        self.ask("www.daf.lab")
        self.ask("www.daf.lab")
        self.assertTrue(self.engine.answers.enabled)
        self.daf.add("qname = www.daf.lab AND src = 127.0.70.50/32 deny")
        self.assertFalse(self.engine.answers.enabled)
        self.assertEqual(self.ask("www.daf.lab", src=OTHER).rcode(), dns.rcode.NOERROR)
        self.assertEqual(self.ask("www.daf.lab").rcode(), dns.rcode.NXDOMAIN)
        self.daf.disable(1)
        self.assertTrue(self.engine.answers.enabled)
        self.daf.enable(1)
        self.assertFalse(self.engine.answers.enabled)
        self.daf.del_(1)
        self.assertTrue(self.engine.answers.enabled)

    def test_and_or_left_to_right(self) -> None:
        # (qname = ads.tracker.lab OR qname = www.daf.lab) AND src = CLIENT
        self.daf.add("qname = ads.tracker.lab OR qname = www.daf.lab "
                     "AND src = 127.0.70.50 deny")
        self.assertEqual(self.ask("ads.tracker.lab").rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(self.ask("www.daf.lab").rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(self.ask("ads.tracker.lab", src=OTHER).rcode(), dns.rcode.NOERROR)
        self.assertEqual(self.ask("blocked.daf.lab").rcode(), dns.rcode.NOERROR)

    def test_regex_drop_and_truncate(self) -> None:
        self.daf.add(r"qname ~ ^ads\. drop")
        self.daf.add("qname = blocked.daf.lab truncate")
        self.assertEqual(self.ask("ads.tracker.lab").rcode(), dns.rcode.SERVFAIL)
        self.assertEqual(self.engine.metrics["daf.blocked.drop"], 1)
        truncated = self.ask("blocked.daf.lab")
        self.assertTrue(truncated.flags & dns.flags.TC)
        self.assertEqual(truncated.answer, [])
        over_tcp = self.ask("blocked.daf.lab", transport="tcp")
        self.assertEqual(self.addresses(over_tcp), ["192.0.2.8"])

    def test_reroute_and_rewrite(self) -> None:
        self.daf.add("qname = www.daf.lab reroute 192.0.2.0/24-127.0.0.0")
        self.assertEqual(self.addresses(self.ask("www.daf.lab")), ["127.0.0.7"])
        self.daf.add("rewrite ads.tracker.lab A 127.0.70.99")
        self.assertEqual(self.addresses(self.ask("ads.tracker.lab")), ["127.0.70.99"])
        self.assertEqual(self.addresses(self.ask("blocked.daf.lab")), ["192.0.2.8"])
        self.assertEqual(self.daf.get(1)["count"], 1)

    @inlineCallbacks
    def test_mirror(self) -> Any:
        got: Deferred[bytes] = Deferred()

        class Catch(DatagramProtocol):
            def datagramReceived(self, data: bytes, addr: Any) -> None:
                if not got.called:
                    got.callback(data)

        port = reactor.listenUDP(0, Catch(), interface="127.0.70.60")
        self.addCleanup(port.stopListening)
        self.daf.add(f"qname = www.daf.lab mirror 127.0.70.60@{port.getHost().port}")
        self.assertEqual(self.addresses(self.ask("www.daf.lab")), ["192.0.2.7"])
        data = yield got
        self.assertEqual(str(dns.message.from_wire(data).question[0].name), "www.daf.lab.")
        self.daf.del_(1)

    @inlineCallbacks
    def test_forward(self) -> Any:
        """Queries from a subnet go to a forwarder of the rule's (RD set), others do not."""
        seen: list[dns.message.Message] = []

        class Forwarder(DatagramProtocol):
            def datagramReceived(self, data: bytes, addr: Any) -> None:
                query = dns.message.from_wire(data)
                seen.append(query)
                reply = dns.message.make_response(query)
                reply.answer.append(dns.rrset.from_text(
                    query.question[0].name, 60, "IN", "A", "192.0.2.55"))
                self.transport.write(reply.to_wire(), addr)

        port = reactor.listenUDP(53, Forwarder(), interface="127.0.70.55")
        self.addCleanup(port.stopListening)
        with self.assertRaisesRegex(RuleError, "not an address"):
            self.daf.add("forward nowhere")
        with self.assertRaisesRegex(RuleError, "forward: .*1 to 4 targets"):
            self.daf.add("forward " + ",".join(["127.0.70.55"] * 5))
        self.daf.add("qname = fwd.lab AND src = 127.0.70.50 forward 127.0.70.55")
        wire = dns.message.make_query("a.fwd.lab", "A").to_wire()
        answer = yield self.engine.net.handler.receive(wire, CLIENT, SERVER, "udp")
        self.assertEqual(self.addresses(dns.message.from_wire(answer)), ["192.0.2.55"])
        self.assertEqual(len(seen), 1)
        self.assertTrue(seen[0].flags & dns.flags.RD)
        self.assertEqual(self.daf.get(1)["count"], 1)
        self.daf.del_(1)

    def test_invalid_rule_changes_nothing(self) -> None:
        self.daf.add("qname = blocked.daf.lab deny")
        before = Path(self.state, "daf.json").read_bytes()
        policy_rules = list(self.engine.namespace["policy"].rules)
        with self.assertRaisesRegex(RuleError, "unknown action"):
            self.daf.add("qname = www.daf.lab blok")
        self.assertEqual(Path(self.state, "daf.json").read_bytes(), before)
        self.assertEqual(self.engine.namespace["policy"].rules, policy_rules)
        self.assertEqual(len(self.daf.rules), 1)
        self.assertEqual(self.daf.add("pass")["id"], 2)


class PersistenceTests(DafCase):
    def test_rules_survive_a_restart(self) -> None:
        self.daf.add("qname = blocked.daf.lab deny")
        self.daf.add("src = 127.0.70.51 deny")
        self.daf.add("qname = www.daf.lab pass")
        self.daf.disable(2)
        self.daf.del_(3)
        self.assertEqual(sorted(os.listdir(self.state)), ["daf.json"], "no temp files left")
        self.engine.modules.unload("daf")
        self.assertEqual(self.ask("blocked.daf.lab").rcode(), dns.rcode.NOERROR)

        engine = make_engine(self.state)
        daf = engine.namespace["daf"]
        self.assertEqual([(r["id"], r["info"], r["active"]) for r in daf.rules],
                         [(1, "qname = blocked.daf.lab deny", True),
                          (2, "src = 127.0.70.51 deny", False)])
        self.engine = engine
        self.assertEqual(self.ask("blocked.daf.lab").rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(self.ask("www.daf.lab", src=OTHER).rcode(), dns.rcode.NOERROR)
        self.assertEqual(daf.add("deny")["id"], 4, "ids are never reused")

    def test_changes_reach_processes_sharing_the_state(self) -> None:
        """A supervisor's workers share its state file: each change is announced as
        ``daf.sync()`` (relayed to every worker), which re-reads the file."""
        relayed: list[str] = []
        self.engine.on_config.append(lambda source, name: relayed.append(source))
        worker = make_engine(self.state)  # a second process on the same state directory
        self.daf.add("qname = blocked.daf.lab deny")
        self.daf.add("qname = www.daf.lab deny")
        self.daf.disable(2)
        self.assertEqual(relayed, ["daf.sync()"] * 3)
        for source in relayed:
            worker.run_config(source, "<relayed>")
        self.assertEqual([(r["id"], r["active"]) for r in worker.namespace["daf"].rules],
                         [(1, True), (2, False)])
        self.engine = worker
        self.assertEqual(self.ask("blocked.daf.lab").rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(self.ask("www.daf.lab").rcode(), dns.rcode.NOERROR)

    def test_broken_state_file_is_not_fatal(self) -> None:
        self.engine.modules.unload("daf")
        Path(self.state, "daf.json").write_text('{"rules": [{"id": 1, "info": "blah"}, '
                                                 '{"id": 5, "info": "deny"}]}')
        engine = make_engine(self.state)
        self.assertEqual([r["id"] for r in engine.namespace["daf"].rules], [5])
        self.assertEqual(engine.namespace["daf"].add("pass")["id"], 6)
        self.flushLoggedErrors()
        Path(self.state, "daf.json").write_text("{not json")
        engine = make_engine(self.state)
        self.assertEqual(engine.namespace["daf"].rules, [])

    def test_unwritable_state_dir_refuses_the_change(self) -> None:
        blocker = Path(self.state, "file")
        blocker.write_text("")
        self.daf.config({"state_dir": str(blocker / "sub")})
        with self.assertRaisesRegex(RuleError, "cannot save"):
            self.daf.add("deny")
        self.assertEqual(self.daf.rules, [])
        self.assertEqual(self.engine.namespace["policy"].rules, [])
        self.assertEqual(self.ask("www.daf.lab").rcode(), dns.rcode.NOERROR)


class RestTests(DafCase):
    def setUp(self) -> None:
        super().setUp()
        self.engine.modules.load("http", {"host": HTTP_HOST, "port": 0, "cert": False,
                                          "token": "daf-token-123"})
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    @inlineCallbacks
    def tearDown(self) -> Any:
        yield self.engine.modules["http"].unload()
        yield self.pool.closeCachedConnections()
        yield deferLater(reactor, 0.01, lambda: None)

    @inlineCallbacks
    def call(self, method: bytes, path: str, body: bytes | None = None,
             token: bool = True, content_type: str | None = None) -> Any:
        import io

        url = self.engine.namespace["http"].url + path
        headers = Headers({"authorization": ["Bearer daf-token-123"]} if token else {})
        if content_type is not None:
            headers.addRawHeader("content-type", content_type)
        producer = FileBodyProducer(io.BytesIO(body)) if body is not None else None
        response = yield Agent(reactor, pool=self.pool).request(
            method, url.encode(), headers, producer)
        data = yield readBody(response)
        return response.code, json.loads(data) if data else None

    @inlineCallbacks
    def test_rest_api(self) -> Any:
        code, rules = yield self.call(b"GET", "/daf", token=False)
        self.assertEqual((code, rules), (200, []))
        code, _ = yield self.call(b"POST", "/daf", b"qname = blocked.daf.lab deny",
                                  token=False)
        self.assertEqual(code, 401)
        code, rule = yield self.call(b"POST", "/daf", b"qname = blocked.daf.lab deny")
        self.assertEqual((code, rule), (200, {"id": 1, "info": "qname = blocked.daf.lab "
                                              "deny", "active": True, "count": 0}))
        # it blocks at once
        self.assertEqual(self.ask("blocked.daf.lab").rcode(), dns.rcode.NXDOMAIN)
        code, error = yield self.call(b"POST", "/daf", b"qname = x.test AND deny")
        self.assertEqual(code, 400)
        self.assertIn("AND must be followed by a condition", error["error"])
        code, rule = yield self.call(b"GET", "/daf/1", token=False)
        self.assertEqual((code, rule["count"]), (200, 1))
        code, rule = yield self.call(b"PATCH", "/daf/1/active/false")
        self.assertEqual((code, rule["active"]), (200, False))
        self.assertEqual(self.ask("blocked.daf.lab").rcode(), dns.rcode.NOERROR)
        code, error = yield self.call(b"PATCH", "/daf/1/active/maybe")
        self.assertEqual(code, 400)
        code, error = yield self.call(b"PATCH", "/daf/1/color/red")
        self.assertEqual(code, 400)
        code, rules = yield self.call(b"GET", "/daf")
        self.assertEqual([r["id"] for r in rules], [1])
        code, gone = yield self.call(b"DELETE", "/daf/1")
        self.assertEqual((code, gone), (200, {"id": 1, "deleted": True}))
        code, _ = yield self.call(b"GET", "/daf/1")
        self.assertEqual(code, 404)
        code, _ = yield self.call(b"GET", "/daf/one")
        self.assertEqual(code, 400)
        code, rule = yield self.call(b"POST", "/daf", b'{"rule": "deny"}',
                                     content_type="application/json")
        self.assertEqual((code, rule["info"]), (200, "deny"))

    @inlineCallbacks
    def test_snippet_on_the_dashboard_whatever_the_load_order(self) -> Any:
        url = self.engine.namespace["http"].url
        response = yield Agent(reactor, pool=self.pool).request(b"GET", (url + "/").encode())
        page = yield readBody(response)
        self.assertIn(b'id="snippet-daf"', page)
        self.assertIn(b"Application firewall", page)
        # daf loaded after http (setUp) published itself; unloading takes the parts away
        self.engine.modules.unload("daf")
        self.assertNotIn("/daf", self.engine.namespace["http"].endpoints)
        self.engine.modules.load("daf", {"state_dir": self.state})
        self.assertIn("/daf", self.engine.namespace["http"].endpoints)


class DaemonTests(unittest.TestCase):
    """The issue's acceptance run: ``twistd -n kresolver`` with http and daf; a rule posted
    over REST blocks a name at once and is still there after a restart."""

    timeout = 120
    address = "127.0.70.30"

    def setUp(self) -> None:
        import socket

        self.dir = tempfile.mkdtemp(prefix="kresolver-daf-daemon-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        ports = []
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind((self.address, 0))
                ports.append(s.getsockname()[1])
        self.dns_port, self.http_port = ports
        self.config = Path(self.dir, "kresolver.conf")
        self.config.write_text(
            "hints['blocked.daf.lab'] = '192.0.2.8'\n"
            "hints['localhost'] = '127.0.0.1'\n"
            f"modules = {{'http': {{'host': {self.address!r}, 'port': {self.http_port}, "
            "'cert': False, 'token': 'daemon-token'}}\n"
            f"modules = {{'daf': {{'state_dir': {str(Path(self.dir, 'state'))!r}}}}}\n")

    def start(self) -> Any:
        import subprocess
        import sys
        import time

        import kresolver

        checkout = os.path.dirname(os.path.dirname(os.path.abspath(kresolver.__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (checkout, os.environ.get("PYTHONPATH")) if p))
        process = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
             "--pidfile=", "kresolver", "-c", str(self.config),
             "--listen", f"{self.address}@{self.dns_port}"],
            cwd=self.dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def stop() -> None:
            if process.poll() is None:
                process.terminate()
            process.communicate(timeout=30)

        self.addCleanup(stop)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.http("GET", "/health")
                return process
            except OSError:
                if process.poll() is not None:
                    break
                time.sleep(0.1)
        stop()
        self.fail(f"twistd did not start:\n{process.stdout.read() if process.stdout else ''}")

    def http(self, method: str, path: str, body: bytes | None = None) -> Any:
        import urllib.request

        request = urllib.request.Request(
            f"http://{self.address}:{self.http_port}{path}", data=body, method=method,
            headers={"Authorization": "Bearer daemon-token"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)

    def rcode(self, name: str) -> int:
        import dns.query

        query = dns.message.make_query(name, "A")
        return dns.query.udp(query, self.address, port=self.dns_port, timeout=5).rcode()

    def test_posted_rule_blocks_at_once_and_survives_a_restart(self) -> None:
        first = self.start()
        self.assertEqual(self.rcode("blocked.daf.lab"), dns.rcode.NOERROR)
        self.assertEqual(self.rcode("blocked.daf.lab"), dns.rcode.NOERROR)  # now cached
        rule = self.http("POST", "/daf", b"qname = blocked.daf.lab deny")
        self.assertEqual(rule["id"], 1)
        self.assertEqual(self.rcode("blocked.daf.lab"), dns.rcode.NXDOMAIN)
        first.terminate()
        self.assertEqual(first.wait(30), 0)
        self.start()
        self.assertEqual(self.rcode("blocked.daf.lab"), dns.rcode.NXDOMAIN)
        rules = self.http("GET", "/daf")
        self.assertEqual([(r["id"], r["info"], r["active"]) for r in rules],
                         [(1, "qname = blocked.daf.lab deny", True)])
