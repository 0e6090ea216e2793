"""What the shared-cache tests (Redis, memcached) have in common.

L{SharedCacheTests} is a mixin: a test module combines it with C{unittest.TestCase} and a
C{start_backend()} that starts the real server and returns it
(L{kresolver.testing.services}).  Resolvers are real engines resolving in the in-process
lab on 127.0.91.x, so "the second resolver answers without the authoritative servers"
is shown by stopping the lab between the two.
"""

from __future__ import annotations

import time
from typing import Any

import dns.message
import dns.name
import dns.rcode
from twisted.internet import defer, reactor, task

from kresolver.cache.cache import name_key
from kresolver.engine import MB, Engine
from kresolver.testing.lab import Lab, ask
from kresolver.testing.zones import standard_lab

BASE = "127.0.91."
OUTGOING = BASE + "254"
LISTENERS = (BASE + "253", BASE + "252")


@defer.inlineCallbacks
def wait_until(predicate: Any, timeout: float = 10.0) -> Any:
    """Poll C{predicate} on the reactor until it is true; fail after C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        yield task.deferLater(reactor, 0.02, lambda: None)


def lab_engine(lab: Lab, listen: str, storage: str) -> Engine:
    """A started resolver on C{listen} (port 0) over cache C{storage}, asking C{lab}."""
    engine = Engine(reactor)
    engine.load_defaults()
    for name in ("validate", "trust_anchors"):  # the lab is unsigned
        if name in engine.modules:
            engine.modules.unload(name)
    engine.root_hints = lab.root_hints()
    engine.option("ALLOW_LOCAL", True)
    engine.net.outgoing_v4(OUTGOING)
    engine.net.ipv6 = False
    engine.namespace["iterate"].time_limit = 1.5
    engine.cache.open(16 * MB, storage)
    engine.net.listen(listen, 0)
    engine.startService()
    return engine


class SharedCacheTests:
    """Two resolvers over one shared backend; faults of that backend."""

    backend: Any

    def start_backend(self) -> Any:
        raise NotImplementedError

    def setUp(self) -> None:
        self.backend = self.start_backend()
        self.addCleanup(self.backend.cleanup)
        self.lab = Lab(reactor, base=BASE)
        self.lab.load(standard_lab(BASE))
        self.lab.start()
        self.addCleanup(self.lab.stop)

    def engine(self, listen: str) -> Engine:
        engine = lab_engine(self.lab, listen, self.backend.uri)
        self.addCleanup(engine.cache.backend.close)
        self.addCleanup(engine.stopService)
        return engine

    @defer.inlineCallbacks
    def query(self, engine: Engine, name: str, rdtype: str = "A") -> Any:
        [(address, port)] = engine.net.addresses
        query = dns.message.make_query(name, rdtype)
        wire = yield ask(query, address, port, "udp", timeout=5)
        return dns.message.from_wire(wire)

    @defer.inlineCallbacks
    def test_second_resolver_answers_what_the_first_learned(self) -> Any:
        first = self.engine(LISTENERS[0])
        response = yield self.query(first, "www.alpha.lab.")
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        storage = first.cache.backend
        yield wait_until(lambda: storage.writes_in_flight == 0)
        yield self.lab.stop()  # nobody authoritative is left to ask
        second = self.engine(LISTENERS[1])
        response = yield self.query(second, "www.alpha.lab.")
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertEqual(
            [rdata.to_text() for rrset in response.answer for rdata in rrset], ["192.0.2.1"]
        )
        self.assertGreater(second.metrics.get("cache.backend_hits", 0), 0)
        self.assertEqual(second.metrics.get("cache.backend_errors", 0), 0)

    @defer.inlineCallbacks
    def test_backend_killed_mid_load_loses_no_query(self) -> Any:
        engine = self.engine(LISTENERS[0])
        names = [f"q{i}.wild.alpha.lab." for i in range(120)]
        answers = []
        for i, name in enumerate(names):
            if i == 40:
                self.backend.crash()
            response = yield self.query(engine, name)
            answers.append(response.rcode())
        self.assertEqual(answers, [dns.rcode.NOERROR] * len(names))
        failures = engine.metrics.get("cache.backend_errors", 0) + engine.metrics.get(
            "cache.backend_timeouts", 0
        )
        self.assertGreater(failures, 0)

    @defer.inlineCallbacks
    def test_backend_comes_back(self) -> Any:
        engine = self.engine(LISTENERS[0])
        self.backend.crash()
        response = yield self.query(engine, "www.alpha.lab.")
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.backend.start()
        storage = engine.cache.backend
        storage._down_until = 0.0  # do not wait out the rest period in a test

        @defer.inlineCallbacks
        def stored() -> Any:
            storage.set(b"probe", b"value", 60)
            yield wait_until(lambda: storage.writes_in_flight == 0)
            found = yield storage.backend.get(b"probe")
            return found

        found = None
        deadline = time.monotonic() + 15
        while found != b"value" and time.monotonic() < deadline:
            try:
                found = yield stored()
            except Exception:
                found = None
            storage._down_until = 0.0
            yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(found, b"value")

    @defer.inlineCallbacks
    def test_garbage_from_the_backend_is_a_miss(self) -> Any:
        first = self.engine(LISTENERS[0])
        response = yield self.query(first, "www.alpha.lab.")
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        storage = first.cache.backend
        yield wait_until(lambda: storage.writes_in_flight == 0)
        # Cut the shared answer record in half, as a broken writer or network might.
        key = name_key(dns.name.from_text("www.alpha.lab.")) + b"\x00T\x00\x01\x00\x01"
        value = yield storage.backend.get(key)
        self.assertIsNotNone(value)
        yield storage.backend.set(key, value[: len(value) // 2], 300)
        second = self.engine(LISTENERS[1])
        response = yield self.query(second, "www.alpha.lab.")
        # The truncated value is not served: the second resolver asks the lab instead.
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertEqual(
            [rdata.to_text() for rrset in response.answer for rdata in rrset], ["192.0.2.1"]
        )
        self.assertGreater(second.cache.stats()["corrupt"], 0)
        alpha = self.lab.server("ns1.alpha.lab.")
        self.assertIn("www.alpha.lab.", [str(q[0]).lower() for q in alpha.queries])

