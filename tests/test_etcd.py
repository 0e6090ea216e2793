"""The etcd module against a real etcd on 127.0.90.30: live changes, bad values, outages."""

from __future__ import annotations

import base64
import http.client
import json
from typing import Any

import dns.message
import dns.rcode
from twisted.internet import defer, reactor
from twisted.trial import unittest

from kresolver.engine import MB, Engine
from kresolver.modules.etcd import EtcdSettings, prefix_end, statement
from kresolver.testing.daemon import missing_software
from kresolver.testing.lab import ask
from kresolver.testing.services import EtcdServer
from tests.storage_support import wait_until

LISTEN = "127.0.90.33"
LIVE_LISTEN = "127.0.90.34"


class StatementTests(unittest.TestCase):
    def test_settings_calls_and_rules(self) -> None:
        text = statement("/k", "/k/cache.size", "64 * MB")
        self.assertIn("cache.size = (64 * MB)", text)
        self.assertEqual(text, statement("/k", "/k/cache/size", "64 * MB"))
        self.assertIn("net.listen('127.0.0.1@53')", statement("/k", "/k/net.listen",
                                                              "'127.0.0.1@53'"))
        self.assertIn("policy.add(policy.PASS)", statement("/k", "/k/policy/1", "policy.PASS"))
        self.assertIn("policy.del_", statement("/k", "/k/policy/1", None))
        self.assertEqual(statement("/k", "/k/config/x", "verbose(True)"), "verbose(True)")
        self.assertIsNone(statement("/k", "/k/cache.size", None))

    def test_bad_keys(self) -> None:
        for key in ("/other/x", "/k/1abc", "/k/cache size", "/k/"):
            self.assertRaises(ValueError, statement, "/k", key, "1")

    def test_prefix_end_and_settings(self) -> None:
        self.assertEqual(prefix_end(b"/k/"), b"/k0")
        self.assertEqual(prefix_end(b"a\xff"), b"b")
        for bad in ({"prefix": "k"}, {"prefix": "/k/"}, {"peer": "127.0.0.1:2379"}, {"x": 1}):
            self.assertRaises(ValueError, EtcdSettings.parse, bad)
        self.assertEqual(EtcdSettings.parse({"peer": "http://a:1"}).peers, ["http://a:1"])


class EtcdTests(unittest.TestCase):
    skip = missing_software("etcd")

    def setUp(self) -> Any:
        self.server = EtcdServer()
        self.server.start()
        self.addCleanup(self.server.cleanup)
        self.put("/kresolver/cache.size", "32 * MB")
        self.put("/kresolver/config/hint", "hints['etcd.kres'] = '192.0.2.77'")
        self.put("/elsewhere/cache.size", "1 * MB")  # not under our prefix
        engine = self.engine = Engine(reactor)
        engine.load_defaults()
        engine.net.listen(LISTEN, 0)
        engine.startService()
        self.addCleanup(engine.stopService)
        engine.modules.load("etcd", {"prefix": "/kresolver", "peer": self.server.uri})
        self.etcd = engine.modules.get("etcd")
        self.addCleanup(self.etcd.unload)  # waits for the watch connection to close
        return wait_until(lambda: self.etcd.watching)

    def put(self, key: str, value: str) -> None:
        self._call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

    def delete(self, key: str) -> None:
        self._call("/v3/kv/deleterange", {"key": _b64(key)})

    def _call(self, path: str, body: dict[str, str]) -> None:
        conn = http.client.HTTPConnection(self.server.address, self.server.port, timeout=5)
        conn.request("POST", path, json.dumps(body))
        response = conn.getresponse()
        response.read()
        conn.close()
        self.assertEqual(response.status, 200)

    @defer.inlineCallbacks
    def query(self, name: str, address: str | None = None, port: int | None = None) -> Any:
        if address is None:
            [(address, port)] = self.engine.net.addresses[:1]
        wire = yield ask(dns.message.make_query(name, "A"), address, port, "udp", timeout=5)
        return dns.message.from_wire(wire)

    @defer.inlineCallbacks
    def test_initial_keys_applied(self) -> Any:
        self.assertEqual(self.engine.cache.size, 32 * MB)
        response = yield self.query("etcd.kres.")
        self.assertEqual([r.to_text() for rrset in response.answer for r in rrset],
                         ["192.0.2.77"])
        self.assertGreater(self.etcd.api.revision, 0)

    @defer.inlineCallbacks
    def test_changes_apply_live(self) -> Any:
        self.put("/kresolver/cache/size", "64 * MB")
        yield wait_until(lambda: self.engine.cache.size == 64 * MB)
        self.put("/kresolver/net.listen", f"'{LIVE_LISTEN}', 0")
        yield wait_until(lambda: any(a == LIVE_LISTEN for a, _ in self.engine.net.addresses))
        [(address, port)] = [e for e in self.engine.net.addresses if e[0] == LIVE_LISTEN]
        self.assertNotEqual(port, 0)
        response = yield self.query("etcd.kres.", address, port)
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)

    @defer.inlineCallbacks
    def test_policy_rules_added_replaced_removed(self) -> Any:
        key = "/kresolver/policy/block"
        self.put(key, "policy.suffix(policy.DENY, policy.todnames(['etcd.kres']))")
        yield wait_until(lambda: "policy" in self.engine.namespace)
        policy = self.engine.namespace["policy"]
        yield wait_until(lambda: len(policy.rules) == 1)
        response = yield self.query("etcd.kres.")
        self.assertEqual(response.rcode(), dns.rcode.NXDOMAIN)
        self.put(key, "policy.suffix(policy.DENY, policy.todnames(['other.kres']))")
        yield wait_until(lambda: self.engine.metrics.get("etcd.applied", 0) >= 4)
        self.assertEqual(len(policy.rules), 1)  # replaced, not added
        response = yield self.query("etcd.kres.")
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.delete(key)
        yield wait_until(lambda: len(policy.rules) == 0)

    @defer.inlineCallbacks
    def test_bad_value_keeps_the_last_good_configuration(self) -> Any:
        self.put("/kresolver/cache.size", "lots and lots")
        self.put("/kresolver/no-such-thing", "1")
        yield wait_until(lambda: self.engine.metrics.get("etcd.rejected", 0) >= 2)
        self.assertEqual(self.engine.cache.size, 32 * MB)
        self.put("/kresolver/cache.size", "48 * MB")  # and the watch goes on
        yield wait_until(lambda: self.engine.cache.size == 48 * MB)

    @defer.inlineCallbacks
    def test_outage_keeps_config_and_reconnects(self) -> Any:
        self.server.crash()
        yield wait_until(lambda: self.engine.metrics.get("etcd.errors", 0) >= 1)
        self.assertEqual(self.engine.cache.size, 32 * MB)
        response = yield self.query("etcd.kres.")
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.server.start()  # same data directory: the keys are still there
        self.put("/kresolver/cache.size", "40 * MB")
        yield wait_until(lambda: self.engine.cache.size == 40 * MB, timeout=30)
        self.assertTrue(self.etcd.watching)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
