"""The loopback lab: real and fake DNS servers on 127.0.0.x for tests and benchmarks.

In-process: L{Lab} runs a hierarchy of L{AuthoritativeServer}s (``lab``), one per
address; L{standard_lab} (``zones``) is the hierarchy the tests, the ``--lab`` demo and the
NSD-based tests share.  Real software in child processes: ``nsd`` (NSD, Knot DNS),
``reference`` (kresd, Unbound), ``daemon`` (their common start/stop).
"""

from kresolver.testing.lab import AuthoritativeServer, Lab, ask, zones_from_text
from kresolver.testing.zones import (
    Case,
    LabSpec,
    ServerSpec,
    SignedLab,
    sign_lab,
    standard_lab,
)

__all__ = [
    "AuthoritativeServer",
    "Case",
    "Lab",
    "LabSpec",
    "ServerSpec",
    "SignedLab",
    "ask",
    "sign_lab",
    "standard_lab",
    "zones_from_text",
]
