"""Asking one question of a zone's servers and getting back a response we can trust.

The iterate layer decides WHICH servers may answer (a zone cut's addresses); this module
decides which of them to ask first, how long to wait, when to move on and what to accept.
It is kresd's ``selection`` plus its I/O:

- every server address has a smoothed RTT that decays back towards a moderate default, so
  servers unseen or unseen-for-long are tried again; a timeout doubles the server's score
  (exponential back-off) until a later answer or until the timeout is forgotten;
- every UDP query leaves from a fresh socket (kernel-random source port) with a random ID
  and, unless the zone is on the workaround list, 0x20 case-randomised name; a response is
  accepted only from the address and port asked, with the same ID and the question exactly
  as sent: anything else is counted and ignored, so spoofing needs port, ID and case right;
- TC answers are asked again over TCP; servers that reject EDNS are asked again without it
  and remembered for a while, so are servers that do not preserve the case of the name;
- identical questions in flight at once share one exchange.

Nothing here blocks: the only waits are reactor timers, and every socket is closed before
a caller's Deferred fires, so a finished query leaves nothing registered in the reactor.
"""

from __future__ import annotations

import _socket
import heapq
import ipaddress
import os
import random
import secrets
import select
import socket
import struct
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
from twisted.internet import defer
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.protocol import ClientFactory
from twisted.protocols.basic import Int16StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # no epoll here: every socket goes through addReader/removeReader
    EPollReactor = None

from kresolver.logging import KLogger
from kresolver.resolve.names import checked_name
from kresolver.resolve.outgoing import Outgoing
from kresolver.resolve.response import Response, ResponseError, read_response
from kresolver.resolve.response import name_wire as response_name_wire  # (a local is so named)
from kresolver.wire import HEADER, TYPE_OPT

__all__ = [
    "EDE_NETWORK_ERROR",
    "EDE_NO_REACHABLE_AUTHORITY",
    "EDNS_PAYLOAD",
    "Upstream",
    "UpstreamAnswer",
    "UpstreamError",
    "Waiter",
    "query_wire",
    "question_wire",
    "randomize_case",
]

#: The DNS Flag Day 2020 payload: big enough for most answers, small enough not to fragment.
EDNS_PAYLOAD = 1232
#: RFC 8914 codes for the two ways asking upstream can fail.
EDE_NO_REACHABLE_AUTHORITY = 22
EDE_NETWORK_ERROR = 23

# Answers to an EDNS query with these codes mean "I do not speak EDNS" (RFC 6891 section 7).
_EDNS_REJECTED = frozenset({dns.rcode.FORMERR, dns.rcode.NOTIMP, dns.rcode.BADVERS})
# Answers with these codes say nothing about the name; another server of the zone may do better.
_RETRY_RCODES = frozenset({dns.rcode.SERVFAIL, dns.rcode.REFUSED})
# A score never grows past initial * 2**_MAX_BACKOFF: a dead server stays a last resort.
_MAX_BACKOFF = 6

_NO_QUESTION_RCODES = frozenset({dns.rcode.FORMERR, dns.rcode.NOTIMP})
_TC = int(dns.flags.TC)
_CD = int(dns.flags.CD)
_RD = int(dns.flags.RD)
_HEADER = struct.Struct(">HHHHHH")
_TYPE_CLASS = struct.Struct(">HH")
_OPT = struct.Struct(">HHIH")

_from_bytes = int.from_bytes  # (bound once: looked up on int, it is bound on every call)
#: 0x20 for ASCII letters, 0 for every other octet: the bit 0x20 randomisation may flip
_LETTER_BITS = bytes(0x20 if chr(c).isascii() and chr(c).isalpha() else 0 for c in range(256))

_Name = dns.name.Name
_log = KLogger("kresolver.upstream")
_LOCAL_V4 = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("0.0.0.0/8"))

# Verdicts of matching a datagram against the query it may answer.
_MATCH, _MISMATCH, _CASE, _NO_QUESTION, _TRUNCATED_GARBLE = range(5)


class UpstreamAnswer:
    """A response that passed every check.

    Shared by every caller that asked the same question at once: consumers must not mutate
    C{message} (copy it first).  Names in it are in the case that was sent (0x20), so compare
    them case-insensitively, as dnspython does.

    Read off the network it holds the wire form and the L{Response} read from it; the
    dnspython C{message} is made only when someone asks for it (classification does not).
    """

    __slots__ = ("_message", "_response", "edns", "rtt", "server", "tcp", "wire")

    def __init__(
        self,
        message: dns.message.Message | None,
        server: tuple[str, int],
        rtt: float,  # milliseconds
        tcp: bool,
        edns: bool,  # False if the server had to be asked without EDNS
        wire: bytes | None = None,
        response: Response | None = None,
    ) -> None:
        if message is None and wire is None:
            raise ValueError("an upstream answer needs its message or its wire form")
        self._message = message
        self._response = response
        self.wire = wire
        self.server = server
        self.rtt = rtt
        self.tcp = tcp
        self.edns = edns

    @property
    def message(self) -> dns.message.Message:
        """The response as a dnspython message (parsed on first use)."""
        if self._message is None:
            assert self.wire is not None
            self._message = dns.message.from_wire(self.wire)
        return self._message

    def records(self) -> Response | dns.message.Message:
        """The response for L{kresolver.resolve.iterate.classify}: a L{Response} of
        normalised RRsets, the caller's own (a second caller gets a fresh one), or the
        dnspython message when there is no wire form."""
        response, self._response = self._response, None
        if response is not None:
            return response
        if self.wire is not None:
            return read_response(self.wire)
        return self.message

    def __repr__(self) -> str:
        return (
            f"UpstreamAnswer(server={self.server!r}, rtt={self.rtt:.1f}, tcp={self.tcp},"
            f" edns={self.edns})"
        )


class UpstreamError(Exception):
    """No server gave a usable answer in time; C{ede} is the RFC 8914 code to report."""

    def __init__(self, reason: str, ede: int = EDE_NO_REACHABLE_AUTHORITY) -> None:
        super().__init__(reason)
        self.reason = reason
        self.ede = ede


class _Entropy:
    """Unpredictable octets from the OS, fetched a few kilobytes at a time.

    A query needs some for its ID and as many as its name has octets for 0x20: one
    system call per query for each, otherwise.  A forked process starts afresh, so two
    workers never share octets.
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.buffer = b""
        self.pos = 0
        os.register_at_fork(after_in_child=self.clear)

    def clear(self) -> None:
        self.buffer, self.pos = b"", 0

    def take(self, count: int) -> bytes:
        end = self.pos + count
        if end > len(self.buffer):
            self.buffer, self.pos, end = secrets.token_bytes(max(self.size, count)), 0, count
        out = self.buffer[self.pos : end]
        self.pos = end
        return out

    def id_and_case(self, octets: bytes) -> tuple[int, bytes]:
        """A random query ID, and C{octets} with the case of each letter taken from the
        0x20 bit of a random octet in the same place (draft-vixie-dnsext-dns0x20), from
        one take and all in C: uppercase everything, then set the bit on the letters the
        mask picks.  Works on a name's wire form as well as on its labels: length octets
        (below 64) are no letters, so they stay as they are."""
        size = len(octets)
        start = self.pos
        end = start + size + 2
        buffer = self.buffer
        if end > len(buffer):
            buffer = self.buffer = secrets.token_bytes(max(self.size, size + 2))
            start, end = 0, size + 2
        self.pos = end
        # One number: the ID in its top two octets, the case bits below (the letter mask
        # has no bits there, so it keeps none of the ID).
        # (big-endian is the default: naming it costs more than the conversion itself)
        bits = _from_bytes(buffer[start:end])
        mask = bits & _from_bytes(octets.translate(_LETTER_BITS))
        return bits >> (size << 3), (_from_bytes(octets.upper()) | mask).to_bytes(size)


_ENTROPY = _Entropy()


def randomize_case(name: dns.name.Name, bits: int | None = None) -> dns.name.Name:
    """Return C{name} with each letter's case chosen at random (draft-vixie-dnsext-dns0x20).

    C{bits} supplies the random bits (one per octet) for tests; by default they come
    from L{secrets}, since the case is part of what a spoofer must guess.
    """
    if bits is None:
        # One random octet per octet of the name, its 0x20 bit choosing the case.
        mixed = _ENTROPY.id_and_case(b"".join(name.labels))[1]
        labels, start = [], 0
        for label in name.labels:
            labels.append(mixed[start : start + len(label)])
            start += len(label)
        return checked_name(tuple(labels))  # the lengths of a valid name
    labels = []
    for label in name.labels:
        out = bytearray(label)
        for i, c in enumerate(out):
            if 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A:
                out[i] = c | 0x20 if bits & 1 else c & ~0x20
            bits >>= 1
        labels.append(bytes(out))
    return dns.name.Name(labels)


def _address(text: str) -> tuple[str, bool, bool, bool]:
    """(normal form, IPv4, local, loopback) of an address; ValueError if it is none."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"not an IP address: {text!r}") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if isinstance(addr, ipaddress.IPv4Address):
        local = any(addr in net for net in _LOCAL_V4)
        return str(addr), True, local, addr.is_loopback
    return str(addr), False, addr.is_loopback or addr.is_unspecified, addr.is_loopback


def question_wire(qname: dns.name.Name, rdtype: int, rdclass: int) -> bytes:
    """The question section as sent: the name uncompressed, in its exact case, type, class."""
    return qname.to_wire() + _TYPE_CLASS.pack(rdtype, rdclass)


def query_wire(
    qid: int, question: bytes, *, checking_disabled: bool, edns: bool, dnssec_ok: bool,
    payload: int = EDNS_PAYLOAD, recursion_desired: bool = False,
) -> bytes:
    """A query built directly (dnspython costs more than the I/O): iterative (RD clear)
    unless C{recursion_desired}, which forwarding to another resolver needs."""
    flags = _CD if checking_disabled else 0
    if recursion_desired:
        flags |= _RD
    header = _HEADER.pack(qid, flags, 1, 0, 0, 1 if edns else 0)
    if not edns:
        return header + question
    return header + question + _opt_wire(payload, dnssec_ok)


def _opt_wire(payload: int, dnssec_ok: bool) -> bytes:
    """The OPT record of a query: root owner, class = payload, TTL = ext-rcode 0,
    version 0, DO bit; no options."""
    return b"\x00" + _OPT.pack(TYPE_OPT, payload, 0x8000 if dnssec_ok else 0, 0)


def _parse(data: bytes) -> Response | None:
    try:
        return read_response(data)
    except ResponseError:  # any malformation: the message is simply not an answer
        return None


@dataclass(slots=True)
class _ServerState:
    """What we know of one server address (kresd's ``kr_rtt_state`` plus workaround bits)."""

    srtt: float  # ms, from answers only; the back-off is applied on top when scoring
    rttvar: float
    updated: float  # reactor time of the last RTT sample (or of creation)
    measured: bool = False
    timeouts: int = 0  # consecutive, since the last answer
    last_timeout: float = 0.0
    no_edns_until: float = 0.0
    edns_seen_until: float = 0.0  # answered an EDNS query recently: a timeout is not EDNS's fault
    no_0x20_until: float = 0.0


class Upstream:
    """Upstream server selection and the exchange of one question with it.

    The engine's ``net`` object maps onto the plain attributes C{outgoing_v4},
    C{outgoing_v6}, C{ipv4}, C{ipv6}, C{port} (``net.upstream_port``) and C{payload}
    (``net.bufsize()``, the EDNS payload we advertise); changes apply to the next query.
    Timings are in seconds of reactor time except RTTs, which are milliseconds as in kresd.

    C{metrics} counts, kresd-style: ``iterator.udp`` / ``iterator.tcp`` (queries sent),
    ``iterator.timeout``, ``iterator.mismatch`` (responses ignored: wrong source, ID,
    question or case, malformed), ``iterator.edns_fallback`` (servers found not to speak
    EDNS) and ``iterator.case_fallback`` (servers found not to preserve case).
    """

    def __init__(
        self,
        reactor: Any,
        *,
        port: int = 53,
        metrics: dict[str, int] | None = None,
        ring_size: int = 512,
        initial_rtt: float = 400.0,
        min_timeout: float = 0.2,
        max_timeout: float = 1.5,
        tcp_timeout: float = 3.0,
        max_attempts: int = 8,
        explore: float = 0.05,
        decay_half_life: float = 300.0,
        timeout_memory: float = 60.0,
        workaround_memory: float = 900.0,
        max_servers: int = 10000,
        rng: random.Random | None = None,
    ) -> None:
        if min_timeout <= 0 or max_timeout < min_timeout:
            raise ValueError("need 0 < min_timeout <= max_timeout")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0.0 <= explore <= 1.0:
            raise ValueError("explore is a probability")
        self.reactor = reactor
        self.port = port
        self.outgoing_v4: str | None = None
        self.outgoing_v6: str | None = None
        self.ipv4 = True
        self.ipv6 = True
        #: a safety net for test labs and benchmarks: with KRESOLVER_LOOPBACK_ONLY=1 in the
        #: environment nothing but loopback addresses is ever asked, whatever the config says
        self.loopback_only = os.environ.get("KRESOLVER_LOOPBACK_ONLY") == "1"
        self.payload = EDNS_PAYLOAD
        self.metrics: dict[str, int] = metrics if metrics is not None else {}
        self.recent: deque[tuple[str, float]] = deque(maxlen=ring_size)
        self.initial_rtt = initial_rtt
        self.min_timeout = min_timeout
        self.max_timeout = max_timeout
        self.tcp_timeout = tcp_timeout
        self.max_attempts = max_attempts
        self.explore = explore
        self.decay_half_life = decay_half_life
        self.timeout_memory = timeout_memory
        self.workaround_memory = workaround_memory
        self.max_servers = max_servers
        # Selection randomness needs no secrecy (and a seeded one makes tests repeatable);
        # IDs and case do, and come from secrets.
        self._rng = rng if rng is not None else random.Random()
        self._servers: OrderedDict[str, _ServerState] = OrderedDict()
        self._inflight: dict[tuple[Any, ...], _Exchange] = {}
        #: what usable() needs to know of an address text, parsed once
        self._addresses: dict[str, tuple[str, bool, bool, bool]] = {}
        self._readers = _readers_of(reactor)
        #: when set (the engine's), UDP queries are sent at the end of the reactor's turn
        #: with the others of that turn: the server is woken once for them all
        #: (kresolver.server.turn)
        self.turn: Any = None
        #: the UDP attempts of this turn whose query is still to be sent (see _send_turn)
        self._outbox: list[_UDPSocket] = []
        #: the OPT records of queries for the payload they were built for: (payload,
        #: without DO bit, with it), built again when the payload changes
        self._opts: tuple[int, bytes, bytes] = (-1, b"", b"")
        # One reactor timer serves every exchange (see _arm): a DelayedCall per query
        # and the reactor's heap upkeep for it cost more than a heap entry of our own.
        self._timer: Any = None
        self._timer_at = 0.0
        self._due: list[list[Any]] = []  # heap of [due, sequence number, exchange or None]
        self._seq = 0
        self._live = 0  # entries whose exchange is still set (not given up)

    # -- the public face ------------------------------------------------------------------

    def query(
        self,
        qname: dns.name.Name,
        rdtype: int,
        servers: Sequence[str],
        *,
        rdclass: int = dns.rdataclass.IN,
        dnssec_ok: bool = True,
        checking_disabled: bool = True,
        tcp: bool = False,
        randomize_case: bool = True,
        allow_local: bool = False,
        deadline: float | None = None,
        recursion_desired: bool = False,
    ) -> defer.Deferred[UpstreamAnswer]:
        """Ask C{servers} (IP address strings, best first if all else is equal).

        Fires with an L{UpstreamAnswer} or fails with L{UpstreamError}: at once when no
        address is usable (family switched off, local without C{allow_local}), at
        C{deadline} (reactor seconds), or when the attempts are spent.  An answer with
        SERVFAIL or REFUSED makes the next server be asked; if all do so, the last such
        answer is returned, so the caller can tell a lame zone from a dead one.
        """
        if type(qname) is not _Name and isinstance(qname, str):
            qname = dns.name.from_text(qname)
        return self._ask(  # type: ignore[return-value]  # (a Deferred without a waiter)
            qname, int(rdtype), int(rdclass), servers, dnssec_ok, checking_disabled, tcp,
            randomize_case, allow_local, deadline, recursion_desired, None,
        )

    def ask(self, out: Outgoing, waiter: Waiter) -> None:
        """Ask C{out}'s question as L{query} would, and tell C{waiter} what comes of it.

        The resolver's own entry: it hands over its L{Outgoing} as it stands and is told
        directly, without a Deferred between the exchange and the request it serves.
        C{waiter} is called once, by C{callback} with an L{UpstreamAnswer} or by
        C{errback} with a L{Failure} of L{UpstreamError}, possibly before this returns.
        """
        self._ask(
            out.qname, out.rdtype, out.rdclass, out.servers, out.dnssec_ok,
            out.checking_disabled, out.tcp, out.randomize_case, out.allow_local, out.deadline,
            False, waiter,
        )

    def _ask(
        self, qname: dns.name.Name, rdtype: int, rdclass: int, servers: Sequence[str],
        dnssec_ok: bool, checking_disabled: bool, tcp: bool, randomize_case: bool,
        allow_local: bool, deadline: float | None, recursion_desired: bool,
        waiter: Waiter | None,
    ) -> defer.Deferred[UpstreamAnswer] | None:
        """L{query} and L{ask}: tell C{waiter}, or without one return a Deferred."""
        if (
            type(qname) is not _Name and not isinstance(qname, _Name)
        ) or not qname.labels or qname.labels[-1]:
            raise ValueError(f"qname must be an absolute dns.name.Name, not {qname!r}")
        if type(servers) is not list and isinstance(servers, str):
            raise TypeError("servers is a sequence of addresses, not one string")
        now = self.reactor.seconds()
        error = None
        if deadline is not None and deadline <= now:
            error = UpstreamError("deadline passed before asking")
        else:
            usable = self.usable(servers, allow_local)
            if not usable:
                error = UpstreamError(f"no usable server address among {list(servers)!r}")
        if error is not None:
            if waiter is None:
                return defer.fail(error)
            waiter.errback(Failure(error))
            return None
        # The name's wire form serves the key (lowercase: ASCII case is all DNS folds)
        # and every query the exchange sends.
        name_wire = response_name_wire(qname)
        key = (
            name_wire.lower(), rdtype, rdclass,
            usable[0] if len(usable) == 1 else tuple(sorted(usable)),
            dnssec_ok, checking_disabled, tcp, randomize_case, recursion_desired,
        )
        exchange = self._inflight.get(key)
        if exchange is not None:
            return exchange.add_waiter(deadline, waiter)
        opts = self._opts
        if opts[0] != self.payload:
            payload = self.payload
            opts = self._opts = (payload, _opt_wire(payload, False), _opt_wire(payload, True))
        opt = opts[2] if dnssec_ok else opts[1]
        exchange = self._inflight[key] = _Exchange(
            self, key, name_wire, _TYPE_CLASS.pack(rdtype, rdclass), usable,
            (_CD if checking_disabled else 0) | (_RD if recursion_desired else 0), opt,
            tcp, randomize_case,
        )
        deferred = None
        if waiter is None:
            deferred = waiter = defer.Deferred(exchange._cancel)
        exchange.waiters.append((waiter, deadline))
        exchange._next()  # the first attempt
        return deferred

    @property
    def in_flight(self) -> int:
        """How many exchanges are under way: a clean stop (or a test) waits for none."""
        return len(self._inflight)

    def srtt(self, ip: str) -> float:
        """The score selection uses for C{ip}: decayed SRTT times the timeout back-off (ms)."""
        state = self._servers.get(ip)
        if state is None:
            return self.initial_rtt
        return self._score(state, self.reactor.seconds())

    # -- addresses ------------------------------------------------------------------------

    def usable(self, servers: Sequence[str], allow_local: bool) -> list[str]:
        """Drop addresses of switched-off families and, unless allowed, local ones."""
        out: list[str] = []
        addresses = self._addresses
        for text in servers:
            known = addresses.get(text)
            if known is None:
                known = _address(text)
                if len(addresses) >= self.max_servers:
                    addresses.clear()
                addresses[text] = known
            ip, v4, local, loopback = known
            if not (self.ipv4 if v4 else self.ipv6):
                continue
            if local and not allow_local:
                continue
            if self.loopback_only and not loopback:
                self._count("iterator.not_loopback")
                continue
            if ip not in out:
                out.append(ip)
        return out

    # -- the RTT book ---------------------------------------------------------------------

    def _state(self, ip: str) -> _ServerState:
        state = self._servers.get(ip)
        if state is None:
            state = _ServerState(
                srtt=self.initial_rtt, rttvar=self.initial_rtt / 2, updated=self.reactor.seconds()
            )
            self._servers[ip] = state
            if len(self._servers) > self.max_servers:
                self._servers.popitem(last=False)
        else:
            self._servers.move_to_end(ip)
        return state

    def _decayed(self, state: _ServerState, now: float) -> float:
        """Old knowledge fades back to the default, so a once-slow server is tried again."""
        age = max(0.0, now - state.updated)
        weight = 0.5 ** (age / self.decay_half_life) if self.decay_half_life > 0 else 1.0
        return self.initial_rtt + (state.srtt - self.initial_rtt) * weight

    def _backoff(self, state: _ServerState, now: float) -> int:
        if state.timeouts and now - state.last_timeout > self.timeout_memory:
            state.timeouts = 0
        return min(state.timeouts, _MAX_BACKOFF)

    def _score(self, state: _ServerState, now: float) -> float:
        return self._decayed(state, now) * (2 ** self._backoff(state, now))

    def _rto(self, state: _ServerState | None, now: float) -> float:
        """Retransmission timeout in seconds for a server whose state is C{state} (None:
        not known yet): SRTT + 4 RTTVAR (RFC 6298), backed off, bounded."""
        if state is None:
            return min(max(self.initial_rtt / 1000, self.min_timeout), self.max_timeout)
        base = state.srtt
        age = now - state.updated
        if age > 0.0 and self.decay_half_life > 0:  # _decayed(), inline: once per query
            initial = self.initial_rtt
            base = initial + (base - initial) * 0.5 ** (age / self.decay_half_life)
        if state.measured:
            base += 4 * state.rttvar
        base /= 1000
        if base < self.min_timeout:
            base = self.min_timeout
        if state.timeouts:  # (no streak, no back-off: the common case spares the call)
            base *= 2 ** self._backoff(state, now)
        return base if base < self.max_timeout else self.max_timeout

    def _record_rtt(self, ip: str, rtt: float, now: float) -> _ServerState:
        servers = self._servers
        state = servers.get(ip)
        if state is None:
            state = self._state(ip)
        else:
            servers.move_to_end(ip)  # (as _state() keeps the order of use)
        if state.measured:
            srtt = state.srtt
            age = now - state.updated
            if age > 0.0 and self.decay_half_life > 0:  # _decayed(), inline: once per answer
                initial = self.initial_rtt
                srtt = initial + (srtt - initial) * 0.5 ** (age / self.decay_half_life)
            state.rttvar = 0.75 * state.rttvar + 0.25 * abs(srtt - rtt)
            state.srtt = 0.875 * srtt + 0.125 * rtt
        else:
            state.srtt, state.rttvar, state.measured = rtt, rtt / 2, True
        state.updated = now
        state.timeouts = 0
        return state

    def _record_timeout(self, ip: str, now: float) -> None:
        state = self._state(ip)
        self._backoff(state, now)  # forget a stale streak before extending it
        state.timeouts += 1
        state.last_timeout = now

    # -- the shared timer -----------------------------------------------------------------

    def _arm(self, exchange: _Exchange) -> None:
        """Have C{exchange._fire} run at the earliest of its retransmission time and its
        callers' deadlines (reactor time), or not at all when it has neither.

        Most exchanges are answered long before their time, so an entry is not taken out
        of the heap when dropped, only emptied; the reactor timer stays set for the
        earliest entry, and moves only when a new entry is due before it (rare: the
        retransmission time of a server changes slowly and time moves on).
        """
        due = exchange.retry_at
        for _, deadline in exchange.waiters:
            if deadline is not None and (due is None or deadline < due):
                due = deadline
        entry = exchange.entry
        if entry is not None:
            if due == entry[0]:
                return
            entry[2] = None  # emptied; the timer stays set if a new entry follows
            self._live -= 1
        if due is None:
            exchange.entry = None
            if not self._live:
                self._idle()
            return
        seq = self._seq = self._seq + 1
        entry = exchange.entry = [due, seq, exchange]
        heapq.heappush(self._due, entry)
        self._live += 1
        timer = self._timer
        if timer is None:
            if self._timer_at >= 0.0:  # not while _expire runs: it sets the timer after
                reactor = self.reactor
                self._timer = reactor.callLater(max(0.0, due - reactor.seconds()), self._expire)
                self._timer_at = due
        elif due < self._timer_at:
            timer.reset(max(0.0, due - self.reactor.seconds()))
            self._timer_at = due

    def _idle(self) -> None:
        """Nothing is waiting: leave nothing in the reactor (a stopped engine or a finished
        test finds it clean)."""
        self._due.clear()
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()

    def _expire(self) -> None:
        """The shared timer: run every exchange whose time has come, then set the timer
        for the earliest one still waiting."""
        self._timer = None
        self._timer_at = -1.0  # _arm leaves the timer to us meanwhile
        heap = self._due
        try:
            # A timer set for time t may run at a time that rounds a hair below t.
            limit = self.reactor.seconds() + 1e-6
            while heap and heap[0][0] <= limit:
                entry = heapq.heappop(heap)
                exchange = entry[2]
                if exchange is not None:
                    entry[2] = None
                    self._live -= 1
                    exchange.entry = None
                    exchange._fire()
        finally:
            self._timer_at = 0.0
            while heap and heap[0][2] is None:
                heapq.heappop(heap)
            if heap:
                due = heap[0][0]
                reactor = self.reactor
                self._timer = reactor.callLater(max(0.0, due - reactor.seconds()), self._expire)
                self._timer_at = due

    def _count(self, key: str) -> None:
        self.metrics[key] = self.metrics.get(key, 0) + 1

    def _send_turn(self) -> None:
        """The end of the turn: send the queries held in the outbox, those of attempts
        still open.  One queued call per turn for them all (rather than a call, a bound
        method and its queue entry per query); a failure now is the exchange's to act
        on, as a read error is."""
        outbox, self._outbox = self._outbox, []
        for attempt in outbox:
            if attempt.fd < 0:
                continue  # ended before its query left
            try:
                attempt.sock.sendto(attempt.wire, attempt.peer)
            except OSError as e:
                exchange = attempt.exchange
                if exchange is not None:
                    exchange.network_error(attempt, f"sending failed: {e}")


class Waiter(Protocol):
    """Who is told how an exchange ended: a Deferred (L{Upstream.query}'s), or anything
    else that takes the same two calls (L{Upstream.ask}'s, the resolver's own).  It is
    told once; C{called} true means it wants to be told nothing (a cancelled Deferred)."""

    called: bool

    def callback(self, result: UpstreamAnswer) -> Any: ...

    def errback(self, fail: Failure) -> Any: ...


#: One caller of L{Upstream.query} or L{Upstream.ask}: who to tell and the reactor time
#: it gives up at (a tuple: one is made per query, and a class would cost a call more).
_Waiter = tuple[Waiter, float | None]


class _Attempt:
    """One query sent to one server over one connection (TCP; L{_UDPSocket} for UDP)."""

    __slots__ = (
        "case_retry", "closed", "connector", "edns", "ip", "open", "peer", "protocol", "qid",
        "question", "randomize", "sent", "tcp", "wire",
    )

    def __init__(
        self, ip: str, peer: tuple[str, int], qid: int, question: bytes, wire: bytes,
        sent: float, tcp: bool, edns: bool, randomize: bool, case_retry: bool,
    ) -> None:
        self.ip = ip
        self.peer = peer  # (ip, port) asked: the answer's server
        self.qid = qid
        self.question = question  # as sent, the name's case and all
        self.wire = wire  # the whole query
        self.sent = sent  # reactor time
        self.tcp = tcp
        self.edns = edns
        self.randomize = randomize
        self.case_retry = case_retry
        self.open = True
        #: fires once the reactor has let go of a TCP connection; a UDP socket is closed
        #: when close() returns, so nobody need wait for it (and no Deferred is made)
        self.closed: defer.Deferred[None] | None = defer.Deferred() if tcp else None
        self.connector: Any = None
        self.protocol: _TCPClient | None = None

    def close(self) -> None:
        """Release the connection; C{closed} fires once the reactor has let go of it."""
        if not self.open:
            return
        self.open = False
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.abortConnection()  # connectionLost fires closed
        elif self.connector is not None and self.connector.state == "connecting":
            self.connector.stopConnecting()  # clientConnectionFailed fires closed
        else:
            self.lost()

    def lost(self) -> None:
        closed = self.closed
        if closed is not None and not closed.called:
            closed.callback(None)


#: a UDP socket born non-blocking (no separate system call to make it so)
_UDP = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
_EPOLLIN = getattr(select, "EPOLLIN", 1)


def _same_ip(source: tuple[Any, ...], peer: tuple[str, int]) -> bool:
    """Whether a datagram's source address is the server's written differently (IPv6:
    another spelling, a scope); the port is compared by the caller."""
    try:
        return ipaddress.ip_address(source[0]) == ipaddress.ip_address(peer[0])
    except ValueError:
        return False


def _readers_of(reactor: Any) -> _Readers | None:
    """Where an upstream's UDP sockets wait for answers: a L{_Readers} if C{reactor} is
    Twisted's epoll reactor, else None (each socket is then a reader of the reactor)."""
    if EPollReactor is not None and isinstance(reactor, EPollReactor):
        return _Readers(reactor)
    return None


@implementer(IReadDescriptor)
class _Readers:
    """The open UDP sockets of one L{Upstream}, behind one reader of the epoll reactor.

    The reactor hands each ready descriptor to its reader through its logging context
    (C{log.callWithLogger} and C{_doReadOrWrite}: ~1.3 us a descriptor), and under load
    dozens of upstream sockets are ready at each of its turns.  In an epoll set of our
    own, itself one descriptor the reactor reads, they are all read for one dispatch and
    one epoll_wait().  A socket joins the set when opened and leaves it when closed (the
    kernel drops a closed descriptor: no system call).  With no socket open the set is
    empty, so never ready: it then leaves the reactor's books but stays in its epoll set
    (no system call either), so an idle upstream or a finished test leaves nothing
    registered, and going busy again costs no system call.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.poller: Any = None  # made on first use (after a fork, if any)
        self.fd = -1
        self.sockets: dict[int, _UDPSocket] = {}
        self.in_kernel = False  # our descriptor is in the reactor's epoll set

    # A socket is added (registered, put in C{sockets}) by L{_UDPSocket.__init__} and
    # removed by L{_UDPSocket.close}: once per query each, so inline rather than calls.

    def _wake(self) -> None:
        reactor = self.reactor
        if self.poller is None:
            self.poller = select.epoll()  # close-on-exec
            self.fd = self.poller.fileno()
        fd = self.fd
        if not self.in_kernel:
            try:
                reactor._poller.register(fd, _EPOLLIN)
            except FileExistsError:  # (still there: nothing lost)
                pass
            self.in_kernel = True
        reactor._reads.add(fd)
        reactor._selectables[fd] = self

    def _rest(self) -> None:
        reactor, fd = self.reactor, self.fd
        if reactor._selectables.get(fd) is self:
            del reactor._selectables[fd]
            reactor._reads.discard(fd)
        else:  # the reactor let go of us meanwhile (removeAll): register afresh next time
            self.in_kernel = False

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        sockets = self.sockets
        if len(sockets) == 1:
            # The one socket in our set is the ready one (if none is after all, its read
            # finds nothing): no epoll_wait() to learn so, as a lone query would pay.
            ready: Any = [(fd, _EPOLLIN) for fd in sockets]
        else:
            ready = self.poller.poll(0, len(sockets) or 1)
        for fd, _ in ready:
            sock = sockets.get(fd)  # (None: closed by an answer read before it)
            if sock is None:
                continue
            try:
                # The first datagram is read here (the socket's doRead reads any more): most
                # sockets get one, the server's answer, and are closed by it.
                try:
                    data, source = sock.sock.recvfrom(65535)
                except BlockingIOError:
                    continue
                except OSError as e:
                    sock.exchange.network_error(sock, f"socket error: {e}")
                    continue
                if source == sock.peer:  # (IPv4; anything else is looked at closely)
                    sock.exchange.message(sock, data)
                else:
                    sock.datagram(data, source)
                if sock.fd >= 0:
                    sock.doRead()
            except Exception:
                _log.failure("reading an upstream answer failed")
                sock.connectionLost(Failure())

    def connectionLost(self, reason: Any) -> None:
        # The reactor dropped us (an error it saw): take the sockets still open back.
        self.in_kernel = False
        if self.sockets:
            self._wake()

    def logPrefix(self) -> str:
        return "upstream-udp"


@implementer(IReadDescriptor)
class _UDPSocket(_Attempt):
    """A UDP attempt: one unconnected UDP socket for one query, read straight from the
    upstream's L{_Readers} (or the reactor): the attempt is its own reader.

    A Twisted UDP port per query costs more than the DNS work (protocol start/stop, two
    log lines, a deferred close); a bare non-blocking socket registered as a reader does
    only what a query needs, and closes at once.  It is the C socket object itself, not
    the Python wrapper of L{socket.socket}, whose methods add a layer of calls.

    As kresd's, the socket is never connected: sendto() binds it to a random ephemeral
    port (unless a source address is configured), and every datagram's source is checked
    here instead of by the kernel, which spares a connect() system call per query.  The
    price is ICMP: the kernel reports "port unreachable" only to connected sockets, so a
    server whose port is closed is noticed by its timeout, and backed off like a silent
    one (kresd behaves the same; and a forged ICMP error cannot take a server away).
    """

    __slots__ = ("__weakref__", "error", "exchange", "fd", "reactor", "readers", "sock")

    def __init__(
        self, exchange: _Exchange, ip: str, qid: int, question: bytes, wire: bytes,
        sent: float, edns: bool, randomize: bool, case_retry: bool,
    ) -> None:
        """Open the socket and register it (with the upstream's L{_Readers}, else the
        reactor), then send C{wire} or, with the engine's turn queue, leave it in the
        upstream's outbox for the end of the turn: all here, a call less per query.  If
        any of that fails, C{error} says why (for the exchange to act on:
        L{_Exchange.network_error}) and the socket is closed or left to close().
        """
        # _Attempt's fields, set here rather than through its __init__ (a call less)
        self.ip = ip
        self.qid = qid
        self.question = question
        self.wire = wire
        self.sent = sent
        self.tcp = False
        self.edns = edns
        self.randomize = randomize
        self.case_retry = case_retry
        self.open = True
        self.closed = None
        self.exchange: _Exchange | None = exchange
        self.fd = -1
        self.error: Exception | None = None
        up = exchange.up
        reactor = self.reactor = up.reactor
        readers = self.readers = up._readers
        peer = self.peer = (ip, up.port)
        try:
            if ":" in ip:
                sock = self.sock = _socket.socket(_socket.AF_INET6, _UDP)
                source = up.outgoing_v6
            else:
                sock = self.sock = _socket.socket(_socket.AF_INET, _UDP)
                source = up.outgoing_v4
            if source:
                sock.bind((source, 0))
            fd = sock.fileno()
            if readers is not None:  # (the readers' books, kept here: a call less)
                sockets = readers.sockets
                if not sockets:
                    readers._wake()
                readers.poller.register(fd, _EPOLLIN)
                sockets[fd] = self
            else:
                reactor.addReader(self)
            self.fd = fd  # registered: close() takes it from here
            if up.turn is not None:
                outbox = up._outbox
                outbox.append(self)
                if len(outbox) == 1:  # the first of the turn: the outbox goes at its end
                    up.turn.later(up._send_turn)
            else:
                sock.sendto(wire, peer)
        except Exception as e:  # bind, route or send failure: this server is out of reach
            self.error = e
            if self.fd < 0 and getattr(self, "sock", None) is not None:
                self.sock.close()

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        sock = self.sock
        for _ in range(16):  # a few datagrams at most; spoofers get no more of our time
            try:
                data, source = sock.recvfrom(65535)
            except BlockingIOError:
                return
            except OSError as e:
                exchange = self.exchange
                assert exchange is not None
                exchange.network_error(self, f"socket error: {e}")
                return
            self.datagram(data, source)
            if self.fd < 0:
                return

    def datagram(self, data: bytes, source: tuple[Any, ...]) -> None:
        """Judge a datagram from C{source}: unconnected, anyone may send to our port, and
        only the address and port asked may answer (an IPv6 source has flow and scope
        too; its text may differ)."""
        exchange, peer = self.exchange, self.peer
        assert exchange is not None
        if source[1] != peer[1] or (source[0] != peer[0] and not _same_ip(source, peer)):
            exchange.up._count("iterator.mismatch")
            return
        exchange.message(self, data)

    def close(self) -> None:
        """Stop reading and close the socket: at once, so nobody need wait for it."""
        self.open = False
        # The exchange holds its attempts and each attempt its exchange: letting go of it
        # here breaks that cycle, so reference counting frees a finished exchange (and
        # the names and sets it holds) at once instead of leaving it to the collector.
        self.exchange = None
        fd = self.fd
        if fd < 0:
            return
        readers = self.readers
        if readers is not None:
            # Closing the (never shared: close-on-exec) descriptor takes it out of the
            # epoll set: only the books need it removed.
            sockets = readers.sockets
            if sockets.pop(fd, None) is not None and not sockets:
                readers._rest()
        else:
            self.reactor.removeReader(self)
        self.fd = -1
        self.sock.close()

    stopListening = close

    def connectionLost(self, reason: Any) -> None:
        # Without _Readers the reactor drops a descriptor it finds in error (EPOLLERR,
        # EPOLLHUP) rather than letting recvfrom() raise: the attempt cannot go on.
        exchange = self.exchange
        if exchange is not None:
            exchange.network_error(self, "socket error")  # which closes us
        self.close()

    def logPrefix(self) -> str:
        return "upstream-udp"


class _TCPClient(Int16StringReceiver):
    def __init__(self, exchange: _Exchange, attempt: _Attempt) -> None:
        self.exchange = exchange
        self.attempt = attempt

    def connectionMade(self) -> None:
        if not self.attempt.open:
            self.transport.abortConnection()
            return
        self.sendString(self.attempt.wire)

    def stringReceived(self, string: bytes) -> None:
        self.exchange.message(self.attempt, string)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.attempt.lost()
        self.exchange.network_error(self.attempt, "TCP connection closed without an answer")


class _TCPFactory(ClientFactory):
    noisy = False

    def __init__(self, exchange: _Exchange, attempt: _Attempt) -> None:
        self.exchange = exchange
        self.attempt = attempt

    def buildProtocol(self, addr: Any) -> _TCPClient:
        proto = _TCPClient(self.exchange, self.attempt)
        self.attempt.protocol = proto
        return proto

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.attempt.lost()
        self.exchange.network_error(self.attempt, f"TCP connect failed: {reason.value}")


class _Exchange:
    """The attempts made for one question on behalf of everyone waiting for it.

    Only the newest attempt has a retransmission time; older ones keep listening, so a
    slow server's late answer still wins if it comes before anything better.  One
    entry in the upstream's timer heap serves both that retransmission and the callers'
    deadlines: it is due at whichever comes first (a query answered in time, as most are,
    then costs a heap push and no reactor timer of its own).
    """

    # Most exchanges are one attempt answered at once: what only retries and failures
    # need starts as a shared class default (the sets as empty frozensets), and becomes
    # the exchange's own when first changed.
    __slots__ = (
        "__dict__", "attempts", "current", "done", "entry", "header_flags", "key",
        "name_wire", "opt", "randomize", "retry_at", "servers", "tcp", "type_class", "up",
        "waiters",
    )

    timeouts = 0
    network_errors = 0
    last_error = ""
    fallback: UpstreamAnswer | None = None  # a SERVFAIL/REFUSED, if nothing better
    unusable: frozenset[str] | set[str] = frozenset()  # refused, unreachable, SERVFAIL...
    edns_timed_out: frozenset[str] | set[str] = frozenset()
    case_retried: frozenset[str] | set[str] = frozenset()

    def __init__(
        self, upstream: Upstream, key: tuple[Any, ...], name_wire: bytes, type_class: bytes,
        servers: list[str], header_flags: int, opt: bytes, tcp: bool, randomize: bool,
    ) -> None:
        self.up = upstream
        self.key = key
        #: the name as asked when the case is not randomised, and the rest of the question
        self.name_wire = name_wire
        self.type_class = type_class
        self.header_flags = header_flags  # CD and RD as asked
        self.opt = opt  # the OPT record sent while the server speaks EDNS
        self.servers = servers
        self.tcp = tcp
        self.randomize = randomize
        self.waiters: list[_Waiter] = []
        self.attempts: list[_Attempt] = []
        self.current: _Attempt | None = None
        #: reactor time the current attempt is given up on, if it has a limit
        self.retry_at: float | None = None
        #: our entry in the upstream's timer heap, for the earliest of those times
        self.entry: list[Any] | None = None
        self.done = False

    # -- waiters --------------------------------------------------------------------------

    def add_waiter(
        self, deadline: float | None, waiter: Waiter | None = None
    ) -> defer.Deferred[UpstreamAnswer] | None:
        """Tell C{waiter} too (or, without one, return a Deferred that will be told)."""
        deferred = None
        if waiter is None:
            deferred = waiter = defer.Deferred(self._cancel)
        self.waiters.append((waiter, deadline))
        if deadline is not None:
            self.up._arm(self)
        return deferred

    def _cancel(self, deferred: defer.Deferred[UpstreamAnswer]) -> None:
        """A caller cancelled its Deferred: the exchange ends when nobody else waits."""
        for waiter in self.waiters:
            if waiter[0] is deferred:
                self.waiters.remove(waiter)
                if not self.waiters:
                    self._finish(None, [])
                return

    # -- the timer ------------------------------------------------------------------------

    def _fire(self) -> None:
        """Our time has come (the upstream's L{Upstream._expire} calls us)."""
        # A timer set for time t may run at a time that rounds a hair below t.
        limit = self.up.reactor.seconds() + 1e-6
        for waiter in [w for w in self.waiters if w[1] is not None and w[1] <= limit]:
            if self.done or waiter not in self.waiters:
                continue  # an earlier caller's callback changed things
            self.waiters.remove(waiter)
            error = UpstreamError(f"deadline passed asking {', '.join(self.servers)}")
            if self.waiters:
                waiter[0].errback(Failure(error))
            else:
                self._finish(error, [waiter])
        if self.done:
            return
        retry_at = self.retry_at
        if retry_at is not None and retry_at <= limit:
            self.retry_at = None
            assert self.current is not None
            self._timeout(self.current)
        if not self.done:
            self.up._arm(self)

    # -- the course of the exchange -------------------------------------------------------

    def _next(self) -> None:
        """Ask the best server not yet asked in this exchange (or the best one again)."""
        if self.done:
            return
        up = self.up
        unusable = self.unusable
        usable = [ip for ip in self.servers if ip not in unusable] if unusable else self.servers
        if not usable:
            self._give_up("every server failed")
            return
        if len(usable) == 1:
            ip = usable[0]  # nothing to choose (_rto below forgets a stale back-off)
        else:
            tried = {attempt.ip for attempt in self.attempts}
            fresh = [ip for ip in usable if ip not in tried] or usable
            if len(fresh) == 1:
                ip = fresh[0]
            elif up._rng.random() < up.explore:
                ip = up._rng.choice(fresh)
            else:
                now = up.reactor.seconds()
                ip = min(fresh, key=lambda a: up._score(up._state(a), now))
        now = up.reactor.seconds()
        state = up._servers.get(ip)  # (not _state(): an answer records the server, if any)
        if state is None:
            edns, randomize = ip not in self.edns_timed_out, self.randomize
        else:
            # A server that times out on EDNS and has never shown it speaks EDNS may be one
            # of those that drop EDNS queries: probe it with plain DNS (as Unbound does).
            edns = state.no_edns_until <= now and (
                state.edns_seen_until > now or ip not in self.edns_timed_out
            )
            randomize = self.randomize and state.no_0x20_until <= now
        self._send(ip, self.tcp, edns, randomize, False, now)

    def _send(
        self, ip: str, tcp: bool, edns: bool, randomize: bool, case_retry: bool, now: float
    ) -> None:
        """Ask C{ip} at reactor time C{now}, as the flags say; the newest attempt's timer
        moves on to the next server if no answer comes in time."""
        if self.done:
            return
        up = self.up
        if len(self.attempts) >= up.max_attempts:
            self._give_up(f"no answer after {len(self.attempts)} attempts")
            return
        name = self.name_wire
        if randomize:
            qid, name = _ENTROPY.id_and_case(name)
        else:
            octets = _ENTROPY.take(2)
            qid = octets[0] << 8 | octets[1]
        question = name + self.type_class
        # as query_wire() builds it, from the parts that stay the same for every attempt
        if edns:
            wire = _HEADER.pack(qid, self.header_flags, 1, 0, 0, 1) + question + self.opt
        else:
            wire = _HEADER.pack(qid, self.header_flags, 1, 0, 0, 0) + question
        metrics = up.metrics
        if not tcp:
            udp = _UDPSocket(self, ip, qid, question, wire, now, edns, randomize, case_retry)
            self.attempts.append(udp)
            self.current = udp
            metrics["iterator.udp"] = metrics.get("iterator.udp", 0) + 1
            if udp.error is not None:
                self.retry_at = None
                self.network_error(udp, f"sending failed: {udp.error}")
                return
            # (sending calls nothing back: the attempt is still open and the newest)
            self.retry_at = now + up._rto(up._servers.get(ip), now)
            self.up._arm(self)
            return
        attempt = _Attempt(
            ip, (ip, up.port), qid, question, wire, now, True, edns, randomize, case_retry
        )
        self.attempts.append(attempt)
        self.retry_at = None
        self.current = attempt
        metrics["iterator.tcp"] = metrics.get("iterator.tcp", 0) + 1
        source = up.outgoing_v6 if ":" in ip else up.outgoing_v4
        try:
            attempt.connector = up.reactor.connectTCP(
                ip, up.port, _TCPFactory(self, attempt), timeout=up.tcp_timeout,
                bindAddress=(source, 0) if source else None,
            )
        except Exception as e:  # an unusable source address, say
            self.network_error(attempt, f"sending failed: {e}")
            return
        if self.done:
            return
        if attempt.open and self.current is attempt:
            self.retry_at = now + up.tcp_timeout
        self.up._arm(self)

    def _timeout(self, attempt: _Attempt) -> None:
        up = self.up
        up._count("iterator.timeout")
        up._record_timeout(attempt.ip, up.reactor.seconds())
        self.timeouts += 1
        self.last_error = f"{attempt.ip} timed out"
        if attempt.edns:
            self.edns_timed_out = self.edns_timed_out | {attempt.ip}
        if attempt.tcp:
            attempt.close()  # a stuck TCP connection is no use; UDP keeps listening
        self._next()

    def network_error(self, attempt: _Attempt, why: str) -> None:
        if self.done or not attempt.open:
            return
        self.network_errors += 1
        self.last_error = f"{attempt.ip}: {why}"
        self.unusable = self.unusable | {attempt.ip}
        attempt.close()
        if self.current is attempt:
            self._next()

    # -- what comes back ------------------------------------------------------------------

    def message(self, attempt: _Attempt, data: bytes) -> None:
        """Judge one response on C{attempt}'s socket or connection."""
        if self.done or not attempt.open:
            return
        up = self.up
        sent = attempt.question
        if (
            data[HEADER : HEADER + len(sent)] == sent
            and (data[0] << 8 | data[1]) == attempt.qid
            and data[2] & 0xF8 == 0x80
            and not data[4]
            and data[5] == 1
        ):  # the usual answer, _match()'s first case inline: one question, exactly as sent
            try:
                verdict, msg = _MATCH, read_response(data)
            except ResponseError:
                verdict, msg = self._match(attempt, data)
        else:
            verdict, msg = self._match(attempt, data)
        if verdict == _MISMATCH:
            up._count("iterator.mismatch")
            return
        now = up.reactor.seconds()
        rtt = (now - attempt.sent) * 1000
        if rtt < 0.0:
            rtt = 0.0
        ip = attempt.ip
        if verdict != _MATCH:
            if verdict == _CASE:
                # Right ID, right name, wrong case: a server that does not preserve case (or
                # a spoofer).  Keep listening, and ask once more without randomisation.
                up._count("iterator.mismatch")
                if attempt.randomize and ip not in self.case_retried:
                    self.case_retried = self.case_retried | {ip}
                    self._send(ip, attempt.tcp, attempt.edns, False, True, now)
                return
            if verdict == _NO_QUESTION and not attempt.edns:
                # Old servers answer FORMERR to EDNS without copying the question: good
                # only as the signal to fall back, never as an answer.
                up._count("iterator.mismatch")
                return
        state = up._record_rtt(ip, rtt, now)
        if msg is None or (msg.flags & _TC and not attempt.tcp):  # None: a garbled TC answer
            if attempt.tcp:
                up._count("iterator.mismatch")
                return
            attempt.close()
            self._send(ip, True, attempt.edns, attempt.randomize, attempt.case_retry, now)
            return
        # msg.rcode() as a plain number (the sets below hold enums, equal to their numbers)
        rcode = (msg.flags & 0x000F) | ((msg.ednsflags >> 20) & 0xFF0)
        edns = attempt.edns
        if edns:
            if verdict == _NO_QUESTION or rcode in _EDNS_REJECTED:
                self._remember_no_edns(ip, now)
                attempt.close()
                self._send(ip, attempt.tcp, False, attempt.randomize, attempt.case_retry, now)
                return
            state.edns_seen_until = now + up.workaround_memory
        elif ip in self.edns_timed_out and state.no_edns_until <= now:
            self._remember_no_edns(ip, now)  # the plain probe worked where EDNS did not
        if attempt.case_retry:
            state.no_0x20_until = now + up.workaround_memory
            up._count("iterator.case_fallback")
        answer = UpstreamAnswer(None, attempt.peer, rtt, attempt.tcp, edns, data, msg)
        up.recent.append((ip, rtt))
        if rcode in _RETRY_RCODES:
            self.fallback = answer
            self.unusable = self.unusable | {ip}
            attempt.close()
            if self.current is attempt or self.retry_at is None:
                self._next()  # else the newest attempt's timer moves on in due course
            return
        self._finish(answer, self.waiters)

    def _remember_no_edns(self, ip: str, now: float) -> None:
        self.up._state(ip).no_edns_until = now + self.up.workaround_memory
        self.up._count("iterator.edns_fallback")

    def _match(self, attempt: _Attempt, data: bytes) -> tuple[int, Response | None]:
        if len(data) < 12 or (data[0] << 8 | data[1]) != attempt.qid:
            return _MISMATCH, None
        if data[2] & 0xF8 != 0x80:  # QR set, opcode QUERY
            return _MISMATCH, None
        sent = attempt.question
        if data[4] or data[5] != 1:  # QDCOUNT
            if not data[4] and not data[5] and data[3] & 0x0F in _NO_QUESTION_RCODES:
                msg = _parse(data)
                return (_NO_QUESTION, msg) if msg is not None else (_MISMATCH, None)
            return _MISMATCH, None
        # The question is never compressed (nothing precedes it to point at), so bytes
        # compare exactly: case, type and class at once.
        got = data[HEADER : HEADER + len(sent)]
        if got == sent:
            verdict = _MATCH
        elif got[-4:] == sent[-4:] and got[:-4].lower() == sent[:-4].lower():
            # Case is a check only when we chose it; unrandomised, any case will do, so
            # servers that lowercase questions stay usable once asked without 0x20.
            verdict = _CASE if attempt.randomize else _MATCH
        else:
            return _MISMATCH, None
        try:
            return verdict, read_response(data)
        except ResponseError:  # any malformation: the message is simply not an answer
            if data[2] & 0x02:  # TC: a cut message may not parse; TCP will verify properly
                return _TRUNCATED_GARBLE, None
            return _MISMATCH, None

    # -- the end --------------------------------------------------------------------------

    def _give_up(self, why: str) -> None:
        if self.fallback is not None:
            self._finish(self.fallback, self.waiters)
            return
        ede = EDE_NETWORK_ERROR if self.network_errors and not self.timeouts else (
            EDE_NO_REACHABLE_AUTHORITY
        )
        detail = f" (last: {self.last_error})" if self.last_error else ""
        self._finish(UpstreamError(why + detail, ede), self.waiters)

    def _finish(
        self, result: UpstreamAnswer | UpstreamError | None, waiters: list[_Waiter]
    ) -> None:
        """Close every socket, then tell C{waiters}: nothing is left in the reactor by then."""
        if self.done:
            return
        self.done = True
        up = self.up
        inflight = up._inflight
        other = inflight.pop(self.key, None)  # (one hash of the key, not two)
        if other is not self and other is not None:
            inflight[self.key] = other  # a newer exchange's: not ours to drop
        entry = self.entry
        if entry is not None:
            self.entry = None
            entry[2] = None  # (as up._arm() drops an entry)
            up._live -= 1
            if not up._live:
                up._idle()
        self.waiters = []  # C{waiters} may be the old list: it is ours alone from here on
        pending = None
        for attempt in self.attempts:
            attempt.close()
            closed = attempt.closed
            if closed is not None and not closed.called:
                if pending is None:
                    pending = []
                pending.append(closed)
        if pending:  # TCP connections wait for the reactor to let go of them
            defer.DeferredList(pending).addCallback(lambda _: _tell(waiters, result))
        elif type(result) is UpstreamAnswer:  # _tell(), inline: once per answer
            for deferred, _ in waiters:
                if not deferred.called:
                    deferred.callback(result)
        else:
            _tell(waiters, result)


def _tell(waiters: list[_Waiter], result: UpstreamAnswer | UpstreamError | None) -> None:
    for deferred, _ in waiters:
        if deferred.called:  # cancelled while the sockets were closing
            continue
        if isinstance(result, UpstreamAnswer):
            deferred.callback(result)
        elif result is not None:
            deferred.errback(Failure(result))
