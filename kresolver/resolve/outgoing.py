"""The question a produce layer wants asked upstream, and how the engine sends it.

A produce layer (iterate) sets C{qry.outgoing} to an L{Outgoing}; checkout layers may
still change it (another source of randomness, a TCP-only policy) before the driver calls
the engine's send, which is L{send_outgoing} over the engine's
L{kresolver.resolve.upstream.Upstream}.  Keeping the question a plain value, rather than
a closure, is what lets checkout layers and traces see and edit it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dns.name
import dns.rdataclass
import dns.rdatatype
from twisted.internet.defer import Deferred


@dataclass(slots=True)
class Outgoing:
    """One upstream question: what to ask, whom, and how (see L{Upstream.query}).

    Slotted: one is made per upstream question, and no layer adds attributes to it.
    """

    qname: dns.name.Name
    rdtype: int
    servers: Sequence[str]
    #: the zone whose servers are asked; responses are judged against its bailiwick
    zone: dns.name.Name
    rdclass: int = dns.rdataclass.IN
    dnssec_ok: bool = True
    checking_disabled: bool = True
    tcp: bool = False
    randomize_case: bool = True
    allow_local: bool = False
    deadline: float | None = None

    def __repr__(self) -> str:
        return (
            f"Outgoing({self.qname} {dns.rdatatype.to_text(self.rdtype)} @ {self.zone}"
            f" -> {', '.join(self.servers)})"
        )


def send_outgoing(upstream: Any, req: Any, qry: Any) -> Deferred[Any]:
    """Ask C{qry.outgoing} of its servers through C{upstream}; the driver's send."""
    out: Outgoing = qry.outgoing
    return upstream.query(
        out.qname,
        out.rdtype,
        out.servers,
        rdclass=out.rdclass,
        dnssec_ok=out.dnssec_ok,
        checking_disabled=out.checking_disabled,
        tcp=out.tcp,
        randomize_case=out.randomize_case,
        allow_local=out.allow_local,
        deadline=out.deadline,
    )
