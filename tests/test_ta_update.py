"""RFC 5011 trust anchor tracking: the state machine, the file, and a root key rollover."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import dns.dnssec
import dns.name
import dns.rdatatype
import dns.rrset
import dns.zone
from twisted.internet import defer, reactor
from twisted.trial import unittest

from kresolver.engine import Engine
from kresolver.modules.ta_update import (
    MAX_REFRESH,
    MIN_REFRESH,
    Tracked,
    read_pending,
    refresh_interval,
    step,
    write_state,
)
from kresolver.testing.lab import Lab
from kresolver.testing.signing import make_key
from kresolver.testing.zones import _zone

ROOT = dns.name.root
BASE = "127.0.86."


def revoked(key: tuple[Any, Any]) -> tuple[Any, Any]:
    private, dnskey = key
    return private, dnskey.replace(flags=dnskey.flags | dns.dnssec.Flag.REVOKE)


def signed_set(keys: list[tuple[Any, Any]]) -> tuple[dns.rrset.RRset, dns.rrset.RRset]:
    """A root DNSKEY set of C{keys}, signed by each of them."""
    dnskeys = dns.rrset.from_rdata_list(ROOT, 3600, [k for _, k in keys])
    sigs = [
        dns.dnssec.sign(dnskeys, p, ROOT, k, lifetime=86400, policy=dns.dnssec.allow_all_policy)
        for p, k in keys
    ]
    return dnskeys, dns.rrset.from_rdata_list(ROOT, 3600, sigs)


class StepTests(unittest.TestCase):
    def setUp(self) -> None:
        self.k1, self.k2 = make_key(13), make_key(13)

    def test_new_key_waits_out_the_hold_down(self) -> None:
        state = Tracked(ROOT, [self.k1[1]])
        keys, sigs = signed_set([self.k1, self.k2])
        now = time.time()
        self.assertTrue(step(state, keys, sigs, now, hold_down=100))
        self.assertEqual(list(state.pending), [self.k2[1]])
        self.assertEqual(state.trusted, [self.k1[1]])
        self.assertFalse(step(state, keys, sigs, now + 50, hold_down=100))
        self.assertTrue(step(state, keys, sigs, now + 100, hold_down=100))
        self.assertEqual(state.trusted, [self.k1[1], self.k2[1]])
        self.assertEqual(state.pending, {})

    def test_pending_key_that_goes_away_is_forgotten(self) -> None:
        state = Tracked(ROOT, [self.k1[1]])
        now = time.time()
        step(state, *signed_set([self.k1, self.k2]), now, hold_down=100)
        self.assertTrue(step(state, *signed_set([self.k1]), now + 10, hold_down=100))
        self.assertEqual(state.pending, {})

    def test_revocation_needs_the_revoked_key_signature(self) -> None:
        state = Tracked(ROOT, [self.k1[1], self.k2[1]])
        now = time.time()
        # The revoked key is in the set but the set is signed by k2 only: no revocation.
        dnskeys = dns.rrset.from_rdata_list(ROOT, 3600, [revoked(self.k1)[1], self.k2[1]])
        only_k2 = dns.rrset.from_rdata(
            ROOT, 3600, dns.dnssec.sign(dnskeys, self.k2[0], ROOT, self.k2[1], lifetime=86400)
        )
        step(state, dnskeys, only_k2, now)
        self.assertEqual(state.trusted, [self.k1[1], self.k2[1]])
        # Signed by the revoked key itself: k1 is out.
        self.assertTrue(step(state, *signed_set([revoked(self.k1), self.k2]), now))
        self.assertEqual(state.trusted, [self.k2[1]])

    def test_missing_trusted_key_stays_trusted(self) -> None:
        state = Tracked(ROOT, [self.k1[1], self.k2[1]])
        self.assertFalse(step(state, *signed_set([self.k2]), time.time()))
        self.assertEqual(state.trusted, [self.k1[1], self.k2[1]])

    def test_refresh_interval_bounds(self) -> None:
        keys, sigs = signed_set([self.k1])
        now = time.time()
        self.assertEqual(refresh_interval(keys, sigs, now), MIN_REFRESH)  # sigs: one day
        keys.ttl = 10 * 86400 * 10
        self.assertLessEqual(refresh_interval(keys, None, now), MAX_REFRESH)

    def test_state_file_round_trip_is_atomic(self) -> None:
        workdir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, workdir, True)
        path = Path(workdir) / "root.keys"
        state = Tracked(ROOT, [self.k1[1]], {self.k2[1]: 1234567.0})
        write_state(path, state)
        self.assertEqual(os.listdir(workdir), ["root.keys"])  # no temporary file left
        self.assertEqual(read_pending(path, ROOT), {self.k2[1]: 1234567.0})
        self.assertEqual(read_pending(path, dns.name.from_text("lab.")), {})
        engine = Engine(reactor)
        engine.load_defaults()
        engine.run_config(f"trust_anchors.remove('.')\ntrust_anchors.add_file({str(path)!r})")
        anchor = engine.modules["trust_anchors"].anchors[ROOT]
        self.assertEqual(anchor.keys, [self.k1[1]])  # pending keys are not trusted


class LabRootCase(unittest.TestCase):
    """A signed lab root on its own, and a resolver trusting its key from a writable file."""

    def setUp(self) -> None:
        self.k1, self.k2 = make_key(13), make_key(13)
        self.lab = Lab(reactor, base=BASE)
        self.lab.add_server(
            "a.root-servers.lab.", {}, address=BASE + "1", zones=[self.root_zone([self.k1])]
        )
        self.lab.start()
        self.addCleanup(self.lab.stop)
        self.workdir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.path = Path(self.workdir) / "root.keys"
        self.path.write_text(f". 3600 IN DNSKEY {self.k1[1].to_text()}\n")
        engine = self.engine = Engine(reactor)
        engine.load_defaults()
        engine.modules.unload("priming")
        engine.root_hints = self.lab.root_hints()
        engine.option("ALLOW_LOCAL", True)
        engine.net.outgoing_v4(BASE + "254")
        engine.net.ipv6 = False
        self.addCleanup(engine.stopService)
        engine.run_config(
            f"trust_anchors.remove('.')\ntrust_anchors.add_file({str(self.path)!r})\n"
            "modules.load('ta_update')\n"
        )
        self.api = engine.namespace["ta_update"]

    def root_zone(self, keys: list[tuple[Any, Any]]) -> dns.zone.Zone:
        text = _zone(".", ["a.root-servers.lab."], f"a.root-servers.lab. 3600 IN A {BASE}1")
        zone = dns.zone.from_text(text, ROOT, relativize=False)
        dns.dnssec.sign_zone(
            zone,
            keys=keys,
            dnskey_ttl=3600,
            lifetime=30 * 86400,
            policy=dns.dnssec.allow_all_policy,
        )
        return zone

    def serve(self, keys: list[tuple[Any, Any]]) -> None:
        self.lab.server("a.root-servers.lab.").reload([self.root_zone(keys)])

    def trusted(self) -> list[Any]:
        return self.engine.modules["trust_anchors"].anchors[ROOT].keys


class RolloverTests(LabRootCase):
    """The lab root rolls its key; the resolver follows, and rewrites its anchor file."""

    @defer.inlineCallbacks
    def test_rollover(self) -> Any:
        changed = yield self.api.refresh(".")
        self.assertFalse(changed)
        self.assertEqual(self.trusted(), [self.k1[1]])
        # The root publishes a second key: pending, recorded in the file.
        self.serve([self.k1, self.k2])
        changed = yield self.api.refresh(".")
        self.assertTrue(changed)
        self.assertEqual(self.api.pending("."), [dns.dnssec.key_id(self.k2[1])])
        self.assertEqual(self.trusted(), [self.k1[1]])
        self.assertIn("; pending", self.path.read_text())
        # Hold-down over: trusted, and written as a record.
        self.api.hold_down_time = 0
        changed = yield self.api.refresh(".")
        self.assertTrue(changed)
        self.assertEqual(self.trusted(), [self.k1[1], self.k2[1]])
        self.assertEqual(self.path.read_text().count("IN DNSKEY"), 2)
        # The old key is revoked (and signs the set): only the new one is trusted.
        self.serve([revoked(self.k1), self.k2])
        changed = yield self.api.refresh(".")
        self.assertTrue(changed)
        self.assertEqual(self.trusted(), [self.k2[1]])
        text = self.path.read_text()
        self.assertEqual(text.count("IN DNSKEY"), 1)
        self.assertIn(self.k2[1].to_text().split()[-1], text.replace(" ", ""))

    @defer.inlineCallbacks
    def test_readonly_file_is_never_written(self) -> Any:
        self.engine.run_config(
            f"trust_anchors.remove('.')\ntrust_anchors.add_file({str(self.path)!r}, True)"
        )
        before = self.path.read_text()
        self.serve([self.k1, self.k2])
        changed = yield self.api.refresh(".")
        self.assertFalse(changed)  # not managed at all
        self.assertEqual(self.path.read_text(), before)


class SignalTests(LabRootCase):
    """RFC 8145 key tag signalling, in the same one-zone lab."""

    def test_signal_name(self) -> None:
        from kresolver.modules.ta_signal_query import signal_name

        name = signal_name(ROOT, [0x9728, 0x4F66, 0x4F66])
        self.assertEqual(name.to_text(), "_ta-4f66-9728.")
        self.assertEqual(
            signal_name(dns.name.from_text("lab."), [20326]).to_text(), "_ta-4f66.lab."
        )
        self.assertRaises(ValueError, signal_name, ROOT, [])

    @defer.inlineCallbacks
    def test_signal_reaches_the_anchored_zone(self) -> Any:
        self.engine.modules.load("ta_signal_query")
        server = self.lab.server("a.root-servers.lab.")
        server.clear_queries()
        names = yield self.engine.namespace["ta_signal_query"].send()
        expected = f"_ta-{dns.dnssec.key_id(self.k1[1]):04x}."
        self.assertEqual(names, [expected])
        self.assertIn(
            (expected, dns.rdatatype.NULL), [(n.lower(), t) for n, t, _ in server.queries]
        )
        self.assertTrue(self.engine.modules.unload("ta_signal_query"))
