"""The cache layer: answers from the record cache, and keeps what resolution learned.

produce answers a query from the engine's record cache (L{kresolver.cache.Cache}): data of
rank ANSWER or better (glue never answers), a cached CNAME (the chain goes on with its
target, from the cache or upstream), or a cached denial (NODATA, NXDOMAIN of the name or
of an ancestor: RFC 8020).  Bogus data answers only clients that set CD.

Stashing: the consume layers queue what they accepted (L{kresolver.resolve.answer.stash});
this layer stores it at the start of the next round and when the request ends, that is
after every consume layer of the round ran, so a validator that runs after iterate has
marked the data's security before it is stored.

Serve-stale (RFC 8767): when resolution failed because upstreams failed and
``cache.serve_stale`` is on, the answer is rebuilt from expired data, if the cache still
has all of it, with EDE 3 (Stale Answer).  ``option('NO_CACHE', True)`` (or a policy
setting it for one request) skips all of it.
"""

from __future__ import annotations

import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
from twisted.internet.defer import Deferred

from kresolver.cache.cache import CachedNegative
from kresolver.logging import KLogger as Logger
from kresolver.module import Module
from kresolver.resolve.answer import (
    MAX_CHAIN,
    Accepted,
    Denial,
    deliver_negative,
    deliver_positive,
    follow,
)
from kresolver.resolve.request import FINAL, Query, Request, State

log = Logger()

_T = dns.rdatatype
#: RFC 8914 INFO-CODE 3
EDE_STALE_ANSWER = 3
_NO_LOOKUP = frozenset({_T.ANY, _T.RRSIG, _T.OPT})
_FINAL = int(FINAL)  # tested as an int: IntFlag's & makes a new member each time
_FAIL = State.FAIL


class CacheLayer(Module):
    """The ``cache`` module: the record cache's produce and stash layers.

    Its config API is the engine's L{kresolver.cache.Cache} itself (``cache.size``,
    ``cache.clear()``...), which stays in the namespace whether this layer is loaded or not.
    """

    name = "cache"
    description = "answers from the record cache and stores what resolution learned"

    # -- produce: a cache hit -------------------------------------------------------------

    def produce(self, req: Request, qry: Query) -> State | Deferred[State | None] | None:
        if "stash" in req.vars:
            self.flush(req)
        flags = qry.flags.__dict__  # a known name: not Flags.__setattr__'s spelling check
        if req.state & _FINAL or qry.resolved or req.flags.NO_CACHE or flags["CACHE_TRIED"]:
            return None
        flags["CACHE_TRIED"] = True
        if qry.stype in _NO_LOOKUP:
            return None
        cache = self.engine.cache
        if cache.shared:
            waiting = cache.fetch(qry.sname, qry.stype, qry.sclass)
            if waiting is not None:
                # A shared storage (Redis, memcached) may have what local memory lacks:
                # wait for it (bounded), then look again; by then nothing is left to fetch.
                qry.flags.CACHE_TRIED = False
                return waiting.addCallback(lambda _: self.produce(req, qry))
        found = cache.lookup(qry.sname, qry.stype, qry.sclass, cd=req.flags.DNSSEC_CD)
        if found is None:
            return None
        if isinstance(found, CachedNegative):
            deliver_negative(req, qry, found.rcode, found.soa, found.proofs, from_cache=True)
            qry.resolved = True
            return State.DONE
        deliver_positive(
            req, qry, [(found.rrset, found.rrsigs)], from_cache=True, proofs=found.proofs
        )
        if found.rrset.rdtype == _T.CNAME and qry.stype != _T.CNAME:
            return follow(req, qry, found.rrset[0].target)  # an alias: on to its target
        qry.resolved = True
        return State.DONE

    # -- stash ------------------------------------------------------------------------------

    def flush(self, req: Request) -> None:
        """Store what the consume layers accepted since the last round."""
        items = req.vars.pop("stash", None)
        if not items or req.flags.NO_CACHE:
            return
        cache = self.engine.cache
        for item in items:
            try:
                if isinstance(item, Accepted):
                    cache.put_rrset(
                        item.rrset, item.rank, security=item.security, rrsigs=item.rrsigs,
                        proofs=item.proofs,
                    )
                elif isinstance(item, Denial):
                    cache.put_negative(
                        item.name, item.rdtype, item.rcode, item.soa, proofs=item.proofs,
                        security=item.security, rank=item.rank,
                    )
            except ValueError as error:
                log.debug("not cached: {error}", error=error)

    # -- the end of the request: stash, serve-stale ---------------------------------------

    def answer_finalize(self, req: Request) -> State | None:
        self.flush(req)
        if not req.state & _FAIL:  # answered: nothing stale to serve
            return None
        work = req.vars.get("iterate")
        if (
            work is not None
            and work.upstream_failed
            and not req.flags.NO_CACHE
            and self.engine.cache.serve_stale
        ):
            return self._serve_stale(req)
        return None

    def _serve_stale(self, req: Request) -> State | None:
        """Answer the client's question from (possibly expired) cache data, if complete."""
        cache = self.engine.cache
        cd = req.flags.DNSSEC_CD
        name, qtype, qclass = req.qname, req.qtype, req.qclass
        positive: list[tuple[dns.rrset.RRset, dns.rrset.RRset | None]] = []
        proofs: list[dns.rrset.RRset] = []
        negative: CachedNegative | None = None
        for _ in range(MAX_CHAIN + 1):
            found = cache.lookup(name, qtype, qclass, cd=cd, stale=True)
            if found is None:
                return None
            if isinstance(found, CachedNegative):
                negative = found
                break
            positive.append((found.rrset, found.rrsigs))
            proofs.extend(found.proofs)
            if found.rrset.rdtype != _T.CNAME or qtype == _T.CNAME:
                break
            name = found.rrset[0].target  # an alias: on to its target
        else:
            return None
        client = Query(req.qname, qtype, qclass)
        answer = req.answer
        answer.answer.clear()
        answer.authority.clear()
        answer.additional.clear()
        answer.set_rcode(dns.rcode.NOERROR)
        req.ede = [(EDE_STALE_ANSWER, "stale answer: every upstream failed")]
        req.vars.pop("upstream_answered", None)
        deliver_positive(req, client, positive, from_cache=True, proofs=proofs)
        if negative is not None:
            deliver_negative(
                req, client, negative.rcode, negative.soa, negative.proofs, from_cache=True
            )
        req.cacheable = False  # the fast path must not keep serving it once upstream is back
        return State.DONE


__all__ = ["EDE_STALE_ANSWER", "CacheLayer"]
