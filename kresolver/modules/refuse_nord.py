"""The refuse_nord module: REFUSED to queries without RD, as kresd does by default.

A recursive resolver that answers non-recursive queries from its cache lets anyone probe
what its users visited (cache snooping).  kresd refuses them; so does kresolver while this
module is loaded.  The fast path never answers RD=0 queries (L{kresolver.wire.fast_query}
leaves them to the full path), so unloading the module is all it takes to answer them.
"""

from __future__ import annotations

import dns.flags
import dns.rcode

from kresolver.module import Module
from kresolver.resolve.request import FINAL, Request, State

#: RFC 8914: the resolver is not authoritative and will not recurse for this query
EDE_NOT_AUTHORITATIVE = 20
_RD = int(dns.flags.RD)


class RefuseNoRD(Module):
    name = "refuse_nord"
    description = "REFUSED for queries without the RD bit (no cache snooping)"

    def begin(self, req: Request) -> State | None:
        if req.state & FINAL or req.query_flags & _RD:
            return None
        req.set_rcode(dns.rcode.REFUSED, EDE_NOT_AUTHORITATIVE, "recursion not desired")
        req.cacheable = False
        return State.DONE
