"""``twistd -n kresolver --lab``: the standard lab hierarchy, served in-process.

A machine without internet (or a new user) still sees the whole resolver work: the lab's
authoritative servers listen on their own loopback addresses, and the resolver's root
hints, outgoing address and upstream port are pointed at them after the config ran, so
nothing the config says can send a query off this machine.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred

from kresolver.testing.lab import Lab

#: the demo's own loopback block, apart from the blocks the test suite uses
DEMO_BASE = "127.0.100."
OUTGOING = DEMO_BASE + "254"


class LabService(Service):
    """Keeps the lab's servers for as long as the resolver runs."""

    def __init__(self, lab: Lab, trust_anchor: str | None = None) -> None:
        self.lab = lab
        #: the lab root's DS: the only anchor, since the real root's key signs nothing here
        self.trust_anchor = trust_anchor

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return self.lab.stop()

    def configure(self, engine: Any) -> None:
        """Point C{engine} at the lab, overriding whatever the config said."""
        engine.root_hints = self.lab.root_hints()
        engine.option("ALLOW_LOCAL", True)
        engine.net.outgoing_v4(OUTGOING)
        engine.net.ipv6 = False
        engine.net.upstream_port = self.lab.port
        anchors = engine.modules.get("trust_anchors")
        if anchors is not None and self.trust_anchor is not None:
            for name in list(anchors.anchors):
                anchors.remove(name)
            anchors.api.add(self.trust_anchor)


def start_lab(engine: Any, reactor: Any) -> LabService:
    """Start the standard lab (port 53 as root, 5300 otherwise) and return its service.

    The hierarchy is signed at start (with the DNSSEC test zones of
    L{kresolver.testing.signing.dnssec_lab}: secure, insecure and bogus names), and its
    root key replaces the real root's as trust anchor.
    """
    from kresolver.testing.signing import signed_dnssec_lab

    port = 53 if os.geteuid() == 0 else 5300
    signed = signed_dnssec_lab(DEMO_BASE)
    lab = Lab(reactor, port=port, base=DEMO_BASE)
    lab.load(signed.spec)
    lab.start()
    return LabService(lab, signed.trust_anchor)
