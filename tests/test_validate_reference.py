"""DNSSEC validation against real software: the signed lab served by NSD, and kresd's view.

NSD on 127.0.81.x serves the signed hierarchy of L{dnssec_lab} (one process per address)
and kresolver must answer a subset of L{DNSSEC_CASES} exactly as with the in-process lab.
kresd (127.0.82.99), pointed at the in-process lab on 127.0.82.x with the same trust
anchor, must agree with kresolver on rcode and AD for every case it is not known to judge
differently.  Both skip when the software is not installed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.rcode
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from kresolver.testing.lab import Lab, ask
from kresolver.testing.signing import DNSSEC_CASES, signed_dnssec_lab
from tests.test_validate import TIME_LIMIT, ede_codes, start_engine

NSD_BASE = "127.0.81."
KRESD_BASE = "127.0.82."

#: cases asked of the NSD-served hierarchy: one of each kind of proof and failure
NSD_SUBSET = {
    ("www.alpha.lab.", "A"),
    ("nowhere.alpha.lab.", "A"),
    ("anything.wild.alpha.lab.", "A"),
    ("nowhere.beta.kres.", "A"),
    ("www.gamma.lab.", "A"),
    ("www.unsigned.optout.lab.", "A"),
    ("expired.bogus.lab.", "A"),
    ("www.nokey.lab.", "A"),
    ("nosig.bogus.lab.", "A"),
}


@defer.inlineCallbacks
def ask_engine(engine: Any, address: str, port: int, name: str, rdtype: str) -> Any:
    query = dns.message.make_query(name, rdtype, want_dnssec=True, use_edns=0)
    wire = yield ask(query, address, port, "udp", timeout=TIME_LIMIT + 4)
    return dns.message.from_wire(wire)


def verdict(msg: dns.message.Message) -> tuple[str, bool]:
    return dns.rcode.to_text(msg.rcode()), bool(msg.flags & dns.flags.AD)


class NSDTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_signed_hierarchy_served_by_nsd(self) -> Any:
        from kresolver.testing import nsd

        if not os.path.exists("/usr/sbin/nsd"):
            raise unittest.SkipTest("nsd is not installed")
        signed = signed_dnssec_lab(NSD_BASE)
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp, True)
        hierarchy = nsd.NSDHierarchy(signed.spec.by_address(), tmp)
        yield threads.deferToThread(hierarchy.start)
        self.addCleanup(threads.deferToThread, hierarchy.stop)
        engine, port = start_engine(self, signed.spec.root_hints(), signed.trust_anchor, NSD_BASE)
        wrong = []
        for case in DNSSEC_CASES:
            if (case.qname, case.qtype) not in NSD_SUBSET:
                continue
            msg = yield ask_engine(engine, NSD_BASE + "253", port, case.qname, case.qtype)
            got = (*verdict(msg), (ede_codes(msg) or [None])[0])
            if got != (case.rcode, case.ad, case.ede):
                wrong.append(f"{case.qname} {case.qtype} ({case.shows}): {got}")
        self.assertEqual(wrong, [])


class KresdAgreesTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_kresd_agrees_on_rcode_and_ad(self) -> Any:
        from kresolver.testing import reference

        if not os.path.exists(reference.KRESD):
            raise unittest.SkipTest("kresd is not installed")
        signed = signed_dnssec_lab(KRESD_BASE)
        lab = Lab(reactor, base=KRESD_BASE)
        lab.load(signed.spec)
        lab.start()
        self.addCleanup(lab.stop)
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp, True)
        kresd = reference.KresdReference(
            KRESD_BASE + "99",
            53,
            lab.root_hints(),
            tmp,
            outgoing_v4=KRESD_BASE + "99",
            trust_anchor=signed.trust_anchor,
        )
        yield threads.deferToThread(kresd.start)
        self.addCleanup(threads.deferToThread, kresd.stop)
        engine, port = start_engine(self, lab.root_hints(), signed.trust_anchor, KRESD_BASE)
        disagree = []
        for case in DNSSEC_CASES:
            ours = yield ask_engine(engine, KRESD_BASE + "253", port, case.qname, case.qtype)
            theirs = yield threads.deferToThread(
                kresd.query, case.qname, case.qtype, dnssec=True, timeout=10
            )
            if verdict(ours) != verdict(theirs) and not case.kresd_differs:
                disagree.append(
                    f"{case.qname} {case.qtype} ({case.shows}): kresolver {verdict(ours)}"
                    f" kresd {verdict(theirs)}"
                )
        self.assertEqual(disagree, [])
