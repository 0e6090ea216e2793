"""From client bytes to answer bytes, for every transport.

Two paths.  The fast path slices the question out of the wire and, when the answer cache
has it, patches the stored answer: no dnspython, no Request, no Deferred.  Everything else
takes the full path: dnspython parses the query, protocol errors are answered as RFC 1035
and RFC 6891 say, and a L{Request} walks the layers.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from twisted.internet.defer import Deferred

from kresolver.logging import KLogger as Logger
from kresolver.modules.policy.tsig import TSIG_ERRORS, tsig_error_reply
from kresolver.resolve.request import OPCODE_BITS, PlainQuery, Request, State, make_answer
from kresolver.resolve.response import render, use_edns
from kresolver.wire import KEY_DO, KEY_EDNS, FastQuery, fast_query, header_only

log = Logger()

#: latency buckets of the seed's stats (milliseconds), the last one catches the rest
BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 1500)
BUCKET_NAMES = tuple(f"answer.{ms}ms" for ms in BUCKETS)
_RCODE_NAMES = {0: "answer.noerror", 2: "answer.servfail", 3: "answer.nxdomain"}

# flag bits as plain ints: the enums' operators make a new member at every use
_QR = int(dns.flags.QR)
_DO = int(dns.flags.DO)
_DONE = State.DONE
#: the rcodes of answers kept for the fast path (read from the wire's header)
_STORED_RCODES = (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)

#: types a client may not ask a recursive resolver for
_ZONE_TRANSFER = (dns.rdatatype.AXFR, dns.rdatatype.IXFR)


_FAST_MEMO_SIZE = 8192
#: the longest body the memo keeps: a question with cookie and padding fits; a client's
#: OPT options may fill 64 KB over TCP, and 8,192 of those would pin half a gigabyte
_FAST_MEMO_BODY = 512


#: the request.* counter of each transport, named once
_REQUEST_COUNTERS = {name: f"request.{name}" for name in ("udp", "tcp", "internal")}
_IN = dns.rdataclass.IN
#: every type L{question_error} may refuse (dnspython's meta types): others need no call
_META_TYPES = frozenset(t for t in range(65536) if dns.rdatatype.is_metatype(t))


def question_error(rdtype: int, rdclass: int) -> int | None:
    """The rcode a question gets before any layer sees it (meta types, classes other
    than IN), or None if a resolver may answer it."""
    if dns.rdatatype.is_metatype(rdtype) and rdtype != dns.rdatatype.ANY:
        return dns.rcode.REFUSED if rdtype in _ZONE_TRANSFER else dns.rcode.FORMERR
    if rdclass != dns.rdataclass.IN:
        return dns.rcode.REFUSED
    return None


_BUCKET_OF = (*BUCKET_NAMES, "answer.slow")


def bucket(latency_ms: float) -> str:
    """The seed's latency counter for an answer: the first bucket it fits in."""
    return _BUCKET_OF[bisect_left(BUCKETS, latency_ms)]


class QueryHandler:
    """Answers queries for the transports of one engine."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.metrics: dict[str, int] = engine.metrics
        #: what fast_query() made of recent queries answered from the answer cache, by
        #: everything but their ID: clients repeat popular questions byte for byte, and a
        #: lookup costs a fifth of a parse
        self._fast: dict[bytes, FastQuery] = {}

    def count(self, key: str, n: int = 1) -> None:
        metrics = self.metrics
        metrics[key] = metrics.get(key, 0) + n

    def account(self, answer: bytes | None, latency_ms: float, cached: bool) -> None:
        """The seed's answer.* counters, for both paths."""
        if answer is None:
            self.count("answer.dropped")
            return
        metrics = self.metrics
        metrics["answer.total"] = metrics.get("answer.total", 0) + 1
        if cached:
            metrics["answer.cached"] = metrics.get("answer.cached", 0) + 1
        rcode = answer[3] & 0x0F
        if rcode:
            name = _RCODE_NAMES.get(rcode, "answer.other")
        else:
            name = "answer.nodata" if answer[6] == 0 == answer[7] else "answer.noerror"
        metrics[name] = metrics.get(name, 0) + 1
        name = _BUCKET_OF[bisect_left(BUCKETS, latency_ms)]  # bucket(), without its call
        metrics[name] = metrics.get(name, 0) + 1

    def receive(
        self, data: bytes, src: Any, dst: Any, transport: str
    ) -> bytes | Deferred[bytes | None] | None:
        """The answer to C{data}, None to send nothing, or a Deferred of either."""
        body = data[2:]
        fast = self._fast.get(body)
        seen = fast is not None
        if not seen:
            fast = fast_query(data)  # a pure function of the bytes after the ID
        if fast is not None:
            flags = fast.key[-1]
            if flags & KEY_EDNS:
                metrics = self.metrics
                metrics["query.edns"] = metrics.get("query.edns", 0) + 1
                if flags & KEY_DO:
                    metrics["query.dnssec"] = metrics.get("query.dnssec", 0) + 1
            answers = self.engine.answers
            if answers.enabled:
                # over UDP the cap is ours as well as the client's: the stored answer may
                # have been made for TCP, or before net.bufsize() was lowered
                if transport == "udp":
                    limit = self.engine.net.udp_payload
                    if fast.payload < limit:
                        limit = fast.payload
                else:
                    limit = 65535
                hit = answers.lookup(data, fast, limit)
                if hit is not None:
                    if not seen and len(body) <= _FAST_MEMO_BODY:
                        # kept once it was answered from the answer cache: a miss would
                        # only push out the bodies that are asked again
                        memo = self._fast
                        if len(memo) >= _FAST_MEMO_SIZE:
                            memo.clear()
                        memo[body] = fast
                    self.account(hit, 0.0, True)
                    return hit
        return self.full(data, src, dst, transport, fast)

    # -- the full path --------------------------------------------------------------------

    def full(
        self, data: bytes, src: Any, dst: Any, transport: str, fast: FastQuery | None,
        refresh: bool = False,
    ) -> bytes | Deferred[bytes | None] | None:
        """Parse, check and resolve C{data}.

        C{refresh} resolves afresh, reading nothing from the record cache: how predict
        renews answers before they expire (its C{transport} is ``internal``, and its
        answers are stored but not counted as answers to clients).
        """
        engine = self.engine
        now = engine.reactor.seconds()
        metrics = self.metrics
        metrics["request.total"] = metrics.get("request.total", 0) + 1
        name = _REQUEST_COUNTERS.get(transport) or f"request.{transport}"
        metrics[name] = metrics.get(name, 0) + 1
        plain = PlainQuery.read(data, fast) if fast is not None else None
        if plain is not None:
            # fast_query() let through only QUERY, one question, EDNS version 0 at most
            if plain.rdclass != _IN or plain.rdtype in _META_TYPES:
                error = question_error(plain.rdtype, plain.rdclass)
                if error is not None:
                    return self.finish_error(plain.message(data), error)
            req = Request(engine, data, None, src, dst, transport, now, plain, refresh)
        else:
            keyring = getattr(engine, "keyring", None)
            try:
                query = dns.message.from_wire(data, keyring=keyring, continue_on_error=False)
            except dns.message.ShortHeader:
                self.count("request.malformed")
                return None
            except TSIG_ERRORS as error:
                # RFC 8945 5.2: NOTAUTH with BADKEY/BADSIG/BADTIME, not FORMERR
                self.count("request.tsig_error")
                reply = tsig_error_reply(data, error, keyring, engine.net.udp_payload)
                if reply is not None:
                    self.account(reply, 0.0, False)
                return reply
            except (dns.message.UnknownTSIGKey, dns.exception.DNSException, ValueError,
                    IndexError, UnicodeError) as error:
                self.count("request.malformed")
                log.debug("malformed query from {src}: {error}", src=src, error=error)
                answer = header_only(data, dns.rcode.FORMERR)
                if answer is not None:
                    self.account(answer, 0.0, False)
                return answer
            if int(query.flags) & _QR:
                self.count("request.malformed")
                return None
            if query.edns >= 0 and fast is None:  # else receive() counted it
                self.count("query.edns")
                if int(query.ednsflags) & _DO:
                    self.count("query.dnssec")
            error = self.protocol_error(query)
            if error is not None:
                return self.finish_error(query, error)
            req = Request(engine, data, query, src, dst, transport, now, None, refresh)
        state = engine.resolver.resolve(req)
        if type(state) is int or not isinstance(state, Deferred):
            return self.respond(state, req, fast)
        return state.addCallback(self.respond, req, fast)

    def protocol_error(self, query: dns.message.Message) -> int | None:
        """The rcode a query gets before any layer sees it, or None if it is fine."""
        if int(query.flags) & OPCODE_BITS:  # not QUERY (0); the enum's parse costs more
            return dns.rcode.NOTIMP
        if query.edns > 0:
            return dns.rcode.BADVERS
        if len(query.question) != 1 or query.answer or query.authority:
            return dns.rcode.FORMERR
        question = query.question[0]
        return question_error(question.rdtype, question.rdclass)

    def finish_error(self, query: dns.message.Message, rcode: int) -> bytes:
        answer = make_answer(query, self.engine.net.udp_payload)
        if rcode == dns.rcode.BADVERS:
            answer.use_edns(0, 0, self.engine.net.udp_payload)
        answer.set_rcode(rcode)
        wire = answer.to_wire()
        self.account(wire, 0.0, False)
        return wire

    def respond(self, _state: object, req: Request, fast: FastQuery | None) -> bytes | None:
        """Serialise C{req.answer} for its transport; keep it for the fast path if it may.

        (C{_state}, the driver's result, is unused: the signature of a callback of it,
        so that no closure has to be made for each request that waits upstream.)"""
        latency = (self.engine.reactor.seconds() - req.started) * 1000
        if req.flags.NO_ANSWER:
            self.account(None, latency, False)
            return None
        answer = req.answer
        # (the OPT itself, not dnspython's edns/ednsflags properties: each tests its length)
        opt = answer.opt
        if opt is not None and (req.ede or opt is not req.own_opt):
            options = [dns.edns.EDEOption(code, text or None) for code, text in req.ede]
            use_edns(answer, opt.ttl, self.engine.net.udp_payload, options)
            opt = answer.opt
        offsets: list[int] = []  # where render() wrote TTLs: the answer cache needs them
        try:
            wire = render(answer, req.payload, offsets)
        except dns.exception.TooBig:
            wire = self.truncated(req)
        else:
            if (
                fast is not None
                and req.cacheable
                and req.state & _DONE
                and (wire[3] & 0x0F) in _STORED_RCODES
                and (opt is None or not opt.ttl >> 24)  # no extended rcode bits
            ):
                self.engine.answers.store(fast, wire, offsets)
        if req.transport != "internal":
            self.account(wire, latency, req.cached)
        return wire

    def truncated(self, req: Request) -> bytes:
        """The client's buffer is too small: an empty answer with TC tells it to use TCP."""
        answer = req.answer
        answer.answer.clear()
        answer.authority.clear()
        answer.additional.clear()
        answer.flags |= dns.flags.TC
        self.count("answer.truncated")
        return answer.to_wire()
