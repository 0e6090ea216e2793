"""A client's request on its way through the layers (kresd's ``kr_request``).

A L{Request} is made by a transport for every query that the fast path could not answer.
It carries the parsed query, the answer being built, who asked and how, the resolution
plan (a stack of L{Query} sub-queries) and the per-request flags, so that every layer of
every module sees one consistent picture.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
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

from kresolver.resolve.names import checked_name
from kresolver.resolve.response import _new_rrset, rdclass_enum, rdtype_enum, use_edns
from kresolver.wire import FastQuery


class State:
    """What a layer says about the request after it ran (kresd's ``kr_layer_state``).

    Plain int bits, not an C{enum.IntFlag}: every layer tests them several times per
    request, and the enum's operators build a new member at each test.
    """

    CONSUME = 1  #: waiting for (or digesting) an upstream answer
    PRODUCE = 2  #: has something to send upstream, or wants to produce again
    DONE = 4  #: the answer (or this sub-query) is complete
    FAIL = 8  #: resolution failed: the client gets SERVFAIL
    YIELD = 16  #: paused; a Deferred resumes it

    NAMES = {1: "CONSUME", 2: "PRODUCE", 4: "DONE", 8: "FAIL", 16: "YIELD"}

    @classmethod
    def to_text(cls, state: int) -> str:
        """C{DONE|FAIL}-style text of a state, for logs and traces."""
        return "|".join(name for bit, name in cls.NAMES.items() if state & bit) or "0"


FINAL = State.DONE | State.FAIL


class Flags:
    """Per-request switches, named as kresd's ``option()`` flags.

    The engine keeps one instance of defaults (``option('NO_MINIMIZE', True)``) and every
    request starts from a copy, so a policy rule may change them for one request only.
    """

    NAMES = (
        "NO_MINIMIZE",  # no QNAME minimisation (RFC 9156)
        "NO_THROTTLE",  # do not penalise slow upstreams
        "NO_IPV4",
        "NO_IPV6",
        "TCP",  # use TCP upstream
        "ALLOW_LOCAL",  # allow upstream addresses in 127/8, ::1, 0/8
        "NO_0X20",  # no case randomisation of upstream names
        "NO_CACHE",  # neither read nor write the cache
        "REFRESH",  # prefetch: read nothing from the cache, store what comes back
        "CACHE_TRIED",
        "DNSSEC_CD",  # the client set CD: hand out unvalidated data
        "DNSSEC_WANT",  # the client set DO
        "DNSSEC_INSECURE",
        "STUB",  # send the client's question to a fixed upstream with RD=1
        "FORWARD",  # like STUB, but validated and cached
        "NO_ANSWER",  # send nothing back
        "REORDER_RR",
        "NO_EDNS",
        "SERVE_STALE",
        "QTRACE",  # log upstream answers of this request
        "DEBUG",  # verbose log of this request only
    )
    _KNOWN = frozenset(NAMES)

    def __init__(self, **values: bool) -> None:
        self.__dict__.update(dict.fromkeys(self.NAMES, False))
        for name, value in values.items():
            self.set(name, value)

    def __setattr__(self, name: str, value: bool) -> None:
        # a misspelt flag must fail loudly rather than set an attribute nobody reads
        if name not in _KNOWN_FLAGS:  # (module globals: cheaper than the class's)
            raise AttributeError(f"unknown option {name!r}; known: {', '.join(self.NAMES)}")
        self.__dict__[name] = value

    def set(self, name: str, value: bool = True) -> None:
        """Set flag C{name}; an unknown name is an error, as in kresd's ``option()``."""
        key = name.upper()
        if key not in self._KNOWN:
            raise KeyError(f"unknown option {name!r}; known: {', '.join(self.NAMES)}")
        self.__dict__[key] = bool(value)

    def get(self, name: str) -> bool:
        key = name.upper()
        if key not in self._KNOWN:
            raise KeyError(f"unknown option {name!r}")
        return bool(self.__dict__[key])

    def copy(self) -> Flags:
        """A copy made with one dict update: every request copies the defaults, and
        every sub-query its request's flags."""
        new = Flags.__new__(Flags)
        new.__dict__.update(self.__dict__)
        return new

    def __repr__(self) -> str:
        on = [n for n in self.NAMES if getattr(self, n)]
        return f"Flags({', '.join(on)})"


_new_flags = Flags.__new__
_KNOWN_FLAGS = Flags._KNOWN
#: every flag off: the defaults of a request made without an engine
_DEFAULT_FLAGS = dict.fromkeys(Flags.NAMES, False)


class Query:
    """One step of the resolution plan (kresd's ``kr_query``): a name, a type, a zone cut.

    The client's question is the first query; the iterate layer pushes sub-queries for NS
    addresses, DS and DNSKEY lookups and CNAME targets.  Layers keep their own state in
    C{vars} rather than in attributes of this class.
    """

    __slots__ = (
        "flags",
        "iterations",
        "outgoing",
        "parent",
        "resolved",
        "sclass",
        "sname",
        "stype",
        "uid",
        "vars",
        "zone_cut",
    )

    def __init__(
        self,
        sname: dns.name.Name,
        stype: int,
        sclass: int = dns.rdataclass.IN,
        parent: Query | None = None,
        flags: Flags | None = None,
        uid: int = 0,
    ) -> None:
        self.sname = sname
        self.stype = stype
        self.sclass = sclass
        self.parent = parent
        self.flags = flags if flags is not None else Flags()
        self.resolved = False
        #: set by the iterate layer: the closest known zone cut for sname
        self.zone_cut: Any = None
        #: set by a produce layer that wants to ask upstream; the driver sends it
        self.outgoing: Any = None
        self.vars: dict[str, Any] = {}
        self.uid = uid
        self.iterations = 0

    def __repr__(self) -> str:
        return (
            f"Query({self.sname} {dns.rdatatype.to_text(self.stype)}"
            f"{' resolved' if self.resolved else ''})"
        )


class Request:
    """A client's query, the answer being built, and everything the layers need to know.

    Made by a transport from the client's wire data; the driver walks it through the
    layers; the transport sends C{answer} (or nothing, if C{flags.NO_ANSWER} is set).
    """

    def __init__(
        self,
        engine: Any,
        wire: bytes,
        query: dns.message.Message | None,
        src: tuple[str, int] | None,
        dst: tuple[str, int] | None,
        transport: str,
        now: float,
        plain: PlainQuery | None = None,
        refresh: bool | None = None,
    ) -> None:
        """C{query} is the parsed query; or None for a plain query, whose question and
        header C{plain} holds (L{PlainQuery.read}): most requests never need anything
        else of the query, and dnspython builds a message at several times that cost, so
        it is made only if a layer reads C{query}.  C{refresh}, unless None, is the
        request's REFRESH flag (else it is the engine's default, as every other flag)."""
        self.engine = engine
        self.wire = wire
        self.src = src
        self.dst = dst
        self.transport = transport
        self.started = now
        # the engine's default flags with the client's DO and CD: one dict copy, without
        # the misspelling check of Flags.__setattr__ (these names are known)
        flags = self.flags = _new_flags(Flags)
        values = flags.__dict__
        if engine is not None:
            values.update(engine.options.__dict__)
            limit = engine.net.udp_payload
        else:
            values.update(_DEFAULT_FLAGS)
            limit = 1232
        if refresh is not None:
            values["REFRESH"] = refresh
        if query is not None:
            self._query = query
            question = query.question[0]
            self.qname: dns.name.Name = question.name
            self.qtype: int = question.rdtype
            self.qclass: int = question.rdclass
            #: the query's header flags, as an int
            self.query_flags: int = int(query.flags)
            values["DNSSEC_WANT"] = bool(int(query.ednsflags) & _DO)
            self.answer: dns.message.Message = make_answer(query, limit)
            edns, payload = query.edns >= 0, query.payload
        else:
            assert plain is not None
            self._plain = plain
            self.qname, self.qtype, self.qclass = plain.qname, plain.rdtype, plain.rdclass
            self.query_flags = plain.flags
            values["DNSSEC_WANT"] = bool(plain.ednsflags & _DO)
            self.answer = plain.answer(limit)
            edns, payload = plain.opt is not None, plain.payload
        values["DNSSEC_CD"] = bool(self.query_flags & _CD)
        #: how many bytes the client can take over this transport (the answer's limit)
        self.payload: int = (
            65535 if transport != "udp" else max(512, min(payload, limit)) if edns else 512
        )
        #: the answer's OPT as made here: the transport need not make it again unless
        #: a layer replaced it or there are Extended DNS Errors to add
        self.own_opt = self.answer.opt
        #: Extended DNS Errors (RFC 8914) to add to the answer: (code, text)
        self.ede: list[tuple[int, str]] = []
        #: the resolution plan: pending queries, last is current
        self.rplan: list[Query] = []
        #: every query ever planned, for tracing and limits
        self.resolved: list[Query] = []
        #: modules' per-request data, keyed by module name
        self.vars: dict[str, Any] = {}
        #: called with the finished request, after the answer was built
        self.on_finish: list[Callable[[Request], None]] = []

    # Immutable defaults of every request, kept by the class until a layer sets one for
    # its request (which then shadows the class's): fewer stores per request.
    #: the driver's current state
    state: int = State.CONSUME
    #: trace lines, when a policy asked for tracing (REQTRACE, DEBUG_*)
    trace: list[str] | None = None
    #: the answer came from the cache (for stats and the answer cache)
    cached: bool = False
    #: the answer may be stored in the answer cache for the fast path
    cacheable: bool = True
    _uid = 0
    _query: dns.message.Message | None = None
    _plain: PlainQuery | None = None

    @property
    def query(self) -> dns.message.Message:
        """The client's query as dnspython parses it (made on first use for a plain one)."""
        query = self._query
        if query is None:
            plain = self._plain
            assert plain is not None
            query = self._query = plain.message(self.wire)
        return query

    @property
    def udp(self) -> bool:
        return self.transport == "udp"

    def push(
        self, sname: dns.name.Name, stype: int, sclass: int = dns.rdataclass.IN,
        parent: Query | None = None,
    ) -> Query:
        """Plan a (sub-)query; it becomes the current one."""
        uid = self._uid = self._uid + 1
        flags = _new_flags(Flags)  # (L{Flags.copy}, inline: once per query)
        flags.__dict__.update(self.flags.__dict__)
        qry = Query(sname, stype, sclass, parent, flags, uid)
        self.rplan.append(qry)
        self.resolved.append(qry)
        return qry

    @property
    def current(self) -> Query | None:
        return self.rplan[-1] if self.rplan else None

    def log(self, message: str) -> None:
        """Add a line to this request's trace, when tracing is on."""
        if self.trace is not None:
            self.trace.append(message)

    def set_rcode(self, rcode: int, ede: int | None = None, text: str = "") -> None:
        """Set the answer's rcode, with an Extended DNS Error when one says why."""
        self.answer.set_rcode(rcode)
        if ede is not None:
            self.ede.append((ede, text))

    def fail(self, ede: int | None = None, text: str = "") -> State:
        """Make the answer SERVFAIL (with EDE C{ede}) and return FAIL."""
        self.answer.answer.clear()
        self.answer.authority.clear()
        self.answer.additional.clear()
        self.set_rcode(dns.rcode.SERVFAIL, ede, text)
        # The driver's own failures (no module answered, too many steps) return without
        # a layer to pass this on, so the state is set here for the finish layers to see.
        self.state = State.FAIL
        return State.FAIL


# flag bits as plain ints: the enums' operators make a new member at every use
_DO = int(dns.flags.DO)
_CD = int(dns.flags.CD)
_RD_CD = int(dns.flags.RD | dns.flags.CD)
_QR_RA = int(dns.flags.QR | dns.flags.RA)
#: the opcode's bits in the header flags (QUERY is 0): tested as an int, not parsed to an enum
OPCODE_BITS = 0x7800


_FLAGS: dict[int, dns.flags.Flag] = {}


def _flag(value: int) -> dns.flags.Flag:
    """C{dns.flags.Flag(value)}, made once per value (the enum's constructor is slow)."""
    flag = _FLAGS.get(value)
    if flag is None:
        flag = _FLAGS[value] = dns.flags.Flag(value)
    return flag


def make_answer(query: dns.message.Message, payload: int = 1232) -> dns.message.Message:
    """An empty recursive answer to C{query}: RA set, RD and CD copied, AA never set;
    EDNS (offering C{payload}) if the query had it."""
    if (
        type(query) is dns.message.QueryMessage
        and not int(query.flags) & OPCODE_BITS
        and not query.had_tsig
    ):
        # What make_response below gives a plain QUERY, made directly: its OPT and
        # padding are replaced here anyway, and its enum arithmetic costs more than this.
        answer = dns.message.QueryMessage(id=query.id)
        answer.flags = _flag(_QR_RA | int(query.flags) & _RD_CD)
        answer.question = list(query.question)
    else:
        answer = dns.message.make_response(query, recursion_available=True)
        answer.flags &= ~dns.flags.AA
        answer.flags |= query.flags & dns.flags.CD
    if query.edns >= 0:
        use_edns(answer, int(query.ednsflags) & _DO, payload)
    return answer


_QUESTION = dns.message.MessageSection.QUESTION
_TYPE0 = dns.rdatatype.RdataType.TYPE0
_NONE = dns.rdatatype.RdataType.NONE
_TYPE_CLASS = struct.Struct(">HH")
_OPT_FIELDS = struct.Struct(">HI")  # an OPT record's class (the payload) and TTL (flags)
#: a plain query's OPT record as it came (from its type on) -> the OPT RRset dnspython
#: makes of it, its payload and extended flags: clients send the same few again and again
_OPTS: dict[bytes, tuple[dns.rrset.RRset, int, int]] = {}
_OPT_MEMO_SIZE = 1024
#: the longest OPT record the memo keeps (cookies and padding fit): options may fill 64 KB
#: over TCP, and 1,024 of those (with what dnspython makes of them) would pin 120 MB
_OPT_MEMO_RECORD = 512

_Message = dns.message.QueryMessage
_new_message = _Message.__new__
#: what dnspython's constructor sets in every message but the ID, flags and the three
#: containers that each message needs of its own (set by L{PlainQuery.answer})
_MESSAGE = {
    name: value for name, value in vars(_Message(id=0)).items()
    if name not in ("id", "flags", "sections", "index", "errors")
}
if any(type(value) not in (int, float, bool, bytes, type(None)) for value in _MESSAGE.values()):
    raise ImportError("dnspython's Message has a new mutable attribute: check PlainQuery.answer")


class PlainQuery:
    """The question and header of a plain query, read without dnspython's parser (which
    costs more than the rest of a cache miss here).

    A plain query is one that L{kresolver.wire.fast_query} accepted: QUERY with RD, one
    uncompressed question and nothing else but an EDNS0 OPT record whose length is exact,
    so the header, the question and the OPT are all there is.
    """

    __slots__ = ("ednsflags", "flags", "id", "opt", "payload", "qname", "rdclass", "rdtype")

    @classmethod
    def read(cls, data: bytes, fast: FastQuery) -> PlainQuery | None:
        """The plain query in C{data}; None if dnspython might see it differently (a name
        too long, OPT options it refuses): its parser decides then."""
        qend = fast.qend
        end = qend - 5  # the root label's zero octet, where fast_query's walk stopped
        if end - 11 > 255:
            return None  # too long a name: a FORMERR, which dnspython's refusal gives
        labels: list[bytes] = []
        pos = 12
        while pos < end:
            start = pos + 1
            pos = start + data[pos]
            labels.append(data[start:pos])
        labels.append(b"")
        plain = cls.__new__(cls)
        plain.qname = checked_name(tuple(labels))
        rdtype, rdclass = _TYPE_CLASS.unpack_from(data, end + 1)
        plain.rdtype, plain.rdclass = rdtype_enum(rdtype), rdclass_enum(rdclass)
        plain.id = data[0] << 8 | data[1]
        plain.flags = data[2] << 8 | data[3]
        if qend < len(data):
            record = data[qend + 1 :]
            edns = _OPTS.get(record)
            if edns is None:
                payload, ttl = _OPT_FIELDS.unpack_from(data, qend + 3)
                options = data[qend + 11 :]
                try:
                    rdata = dns.rdata.from_wire(payload, dns.rdatatype.OPT, options, 0,
                                                len(options))
                except dns.exception.DNSException:
                    return None
                edns = (dns.rrset.from_rdata(dns.name.root, ttl, rdata), payload, ttl)
                if len(record) <= _OPT_MEMO_RECORD:
                    if len(_OPTS) >= _OPT_MEMO_SIZE:
                        _OPTS.clear()
                    _OPTS[record] = edns
            plain.opt, plain.payload, plain.ednsflags = edns
        else:
            plain.payload, plain.ednsflags, plain.opt = 0, 0, None
        return plain

    def answer(self, payload: int = 1232) -> dns.message.Message:
        """L{make_answer} of this query, made as dnspython's constructor would make it
        (its seventeen attribute stores, and the question's three levels of constructors,
        cost more than copying what they set)."""
        answer = _new_message(_Message)
        answer.__dict__.update(_MESSAGE)
        answer.id = self.id
        flags = _QR_RA | self.flags & _RD_CD
        answer.flags = _FLAGS.get(flags) or _flag(flags)  # (never 0: QR is set)
        answer.sections = [[_new_rrset(self.qname, self.rdclass, self.rdtype, _NONE, 0, {})],
                           [], [], []]
        answer.index = {}
        answer.errors = []
        if self.opt is not None:
            use_edns(answer, self.ednsflags & _DO, payload)
        return answer

    def message(self, wire: bytes) -> dns.message.QueryMessage:
        """The message dnspython's parser makes of C{wire}, this query."""
        message = dns.message.QueryMessage(id=self.id)
        message.flags = dns.flags.Flag(self.flags)
        message.wire = wire
        # the question and its index entry as find_rrset would make them, without its
        # lookups and enum conversions
        qname, rdclass, rdtype = self.qname, self.rdclass, self.rdtype
        question = dns.rrset.RRset(qname, rdclass, rdtype)
        message.question = [question]
        message.index[(_QUESTION, qname, rdclass, rdtype, _TYPE0, None)] = question
        if self.opt is not None:
            message.opt = self.opt.copy()
        return message


def ede_option(code: int, text: str = "") -> dns.edns.EDEOption:
    return dns.edns.EDEOption(code, text or None)
