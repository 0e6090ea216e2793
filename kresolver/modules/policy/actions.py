"""Policy actions: what a matching rule does to a request.

An action is a callable ``(state, req) -> State or None``.  Returning a state ends the
rule evaluation (a *non-chain* action: PASS, DENY, ANSWER...); returning None lets the
next rules run (a *chain* action: FLAGS, MIRROR, the tracing actions), exactly as kresd's
``policy`` does.  Custom action functions follow the same contract.

The rule evaluation marks a request that any rule matched ``req.cacheable = False`` (unless
the action says C{cacheable}): its answer never reaches the fast path's answer cache, so
every such query runs the rules again and each rule's ``count`` stays exact.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.SOA
import dns.rrset
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from kresolver.modules.kres import EXTENDED_ERROR
from kresolver.resolve.request import Request, State

#: request debug lines: printed whatever log_level() says, as kresd's ``[reqdbg]``
reqdbg = Logger(namespace="reqdbg.policy")

#: SOA RDATA of locally made negative answers (kresd's ``mkauth_soa``)
SOA_TAIL = "nobody.invalid. 1 3600 1200 604800 10800"
SOA_TTL = 10800
#: where DENY_MSG puts its explanation
EXPLANATION = dns.name.from_text("explanation.invalid.")

__all__ = [
    "ANSWER",
    "DEBUG_ALWAYS",
    "DEBUG_CACHE_MISS",
    "DEBUG_IF",
    "DENY",
    "DENY_MSG",
    "DROP",
    "FLAGS",
    "IPTRACE",
    "MIRROR",
    "NO_ANSWER",
    "PASS",
    "QTRACE",
    "REFUSE",
    "REQTRACE",
    "TC",
    "Action",
    "reset_answer",
    "soa_rrset",
]


class Action:
    """A built-in action.  C{cacheable}: the answer of a request it matched may be kept
    for the fast path (true only for actions that merely choose where to resolve)."""

    cacheable = False
    chain = False
    label = "action"

    def __call__(self, state: State, req: Request) -> State | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"policy.{self.label}"


def reset_answer(req: Request, rcode: int = dns.rcode.NOERROR, aa: bool = True) -> None:
    """Empty the answer sections and make it a local, authoritative answer."""
    answer = req.answer
    answer.answer.clear()
    answer.authority.clear()
    answer.additional.clear()
    answer.set_rcode(rcode)
    answer.flags &= ~(dns.flags.AD | dns.flags.TC)
    if aa:
        answer.flags |= dns.flags.AA


class _SOA(dns.rdtypes.ANY.SOA.SOA):
    """A constant SOA RDATA whose hash is computed once: dnspython would re-serialise it
    for every answer that carries it, which was most of the cost of a DENY."""

    def __hash__(self) -> int:
        return _SOA_HASH


_SOA_TEMPLATE = dns.rdata.from_text("IN", "SOA", f"invalid. {SOA_TAIL}")
_SOA_HASH = hash(_SOA_TEMPLATE)
_SOA_RDATA = _SOA(
    _SOA_TEMPLATE.rdclass, _SOA_TEMPLATE.rdtype, _SOA_TEMPLATE.mname, _SOA_TEMPLATE.rname,
    _SOA_TEMPLATE.serial, _SOA_TEMPLATE.refresh, _SOA_TEMPLATE.retry, _SOA_TEMPLATE.expire,
    _SOA_TEMPLATE.minimum,
)


def soa_rrset(owner: dns.name.Name, ttl: int = SOA_TTL) -> dns.rrset.RRset:
    """The SOA that locally made negative answers carry in their authority section."""
    rrset = dns.rrset.RRset(owner, dns.rdataclass.IN, dns.rdatatype.SOA)
    rrset.update_ttl(ttl)
    rrset.add(_SOA_RDATA)
    return rrset


class _Pass(Action):
    label = "PASS"

    def __call__(self, state: State, req: Request) -> State:
        return state


class DENY_MSG(Action):  # noqa: N801 - kresd's name
    """NXDOMAIN with an SOA, an explanation as TXT in the additional section and an EDE."""

    label = "DENY_MSG"

    def __init__(self, msg: str | None = None, extended_error: int = EXTENDED_ERROR.BLOCKED):
        self.msg = msg
        self.ede = extended_error
        self.txt: dns.rrset.RRset | None = None
        if msg is not None:
            data = msg.encode("utf-8")
            chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
            rdata = dns.rdata.from_wire(
                dns.rdataclass.IN, dns.rdatatype.TXT,
                b"".join(bytes((len(c),)) + c for c in chunks), 0,
                sum(len(c) + 1 for c in chunks),
            )
            self.txt = dns.rrset.from_rdata(EXPLANATION, 10, rdata)

    def __call__(self, state: State, req: Request) -> State:
        reset_answer(req, dns.rcode.NXDOMAIN)
        req.answer.authority.append(soa_rrset(req.qname))
        if self.txt is not None:
            req.answer.additional.append(self.txt)
        if self.ede is not None:
            req.ede.append((int(self.ede), ""))
        return State.DONE

    def __repr__(self) -> str:
        return f"policy.DENY_MSG({self.msg!r})" if self.msg else "policy.DENY"


class _Drop(Action):
    label = "DROP"

    def __call__(self, state: State, req: Request) -> State:
        reset_answer(req, dns.rcode.SERVFAIL, aa=False)
        req.ede.append((EXTENDED_ERROR.PROHIBITED, ""))
        return State.FAIL


class _Refuse(Action):
    label = "REFUSE"

    def __call__(self, state: State, req: Request) -> State:
        reset_answer(req, dns.rcode.REFUSED, aa=False)
        req.ede.append((EXTENDED_ERROR.PROHIBITED, ""))
        return State.DONE


class _NoAnswer(Action):
    label = "NO_ANSWER"

    def __call__(self, state: State, req: Request) -> State:
        req.flags.NO_ANSWER = True
        req.cacheable = False
        return State.FAIL


class _TC(Action):
    """UDP clients get an empty answer with TC; over TCP the query resolves normally."""

    label = "TC"

    def __call__(self, state: State, req: Request) -> State:
        if not req.udp:
            return state
        reset_answer(req, dns.rcode.NOERROR, aa=False)
        req.answer.flags |= dns.flags.TC
        return State.DONE


PASS = _Pass()
DENY = DENY_MSG()
DROP = _Drop()
REFUSE = _Refuse()
NO_ANSWER = _NoAnswer()
TC = _TC()


def _rdatas(rdtype: int, value: Any) -> list[dns.rdata.Rdata]:
    """RDATA in wire format (bytes, or a str of latin-1 wire octets), one or a list."""
    if isinstance(value, bytes | bytearray | str):
        value = [value]
    out = []
    for item in value:
        if isinstance(item, dns.rdata.Rdata):
            out.append(item)
            continue
        wire = item.encode("latin-1") if isinstance(item, str) else bytes(item)
        try:
            out.append(dns.rdata.from_wire(dns.rdataclass.IN, rdtype, wire, 0, len(wire)))
        except Exception as error:
            raise ValueError(
                f"policy.ANSWER: {wire!r} is not {dns.rdatatype.to_text(rdtype)} RDATA in "
                f"wire format ({error}); use kres.str2ip() or kres.parse_rdata()"
            ) from None
    return out


class ANSWER(Action):
    """Answer with configured records: ``{type: {'rdata': wire or [wire...], 'ttl': 1}}``.

    A question for a type not in the table gets NODATA when C{nodata} is true, and
    otherwise the rule is skipped (the next rules are evaluated).
    """

    label = "ANSWER"

    def __init__(self, rtable: Mapping[Any, Any], nodata: bool = False) -> None:
        self.nodata = nodata
        self.table: dict[int, tuple[int, list[dns.rdata.Rdata]]] = {}
        for key, spec in rtable.items():
            rdtype = dns.rdatatype.from_text(key) if isinstance(key, str) else int(key)
            if isinstance(spec, Mapping):
                if "rdata" not in spec:
                    raise ValueError(f"policy.ANSWER: {key!r} has no 'rdata'")
                rdatas, ttl = spec["rdata"], int(spec.get("ttl", 1))
            else:
                rdatas, ttl = spec, 1
            self.table[rdtype] = (ttl, _rdatas(rdtype, rdatas))

    def __call__(self, state: State, req: Request) -> State | None:
        entry = self.table.get(req.qtype)
        if entry is None and not self.nodata:
            return None
        reset_answer(req)
        req.ede.append((EXTENDED_ERROR.FORGED, ""))
        if entry is None:
            req.answer.authority.append(soa_rrset(req.qname))
        else:
            ttl, rdatas = entry
            req.answer.answer.append(dns.rrset.from_rdata_list(req.qname, ttl, rdatas))
        return State.DONE


def _names(flags: str | Iterable[str] | None) -> list[str]:
    if flags is None:
        return []
    if isinstance(flags, str):
        return [flags]
    return list(flags)


class FLAGS(Action):
    """Set and clear request flags (names of L{kresolver.resolve.request.Flags})."""

    label = "FLAGS"
    chain = True

    def __init__(self, set: str | Iterable[str] | None = None,
                 clear: str | Iterable[str] | None = None) -> None:
        from kresolver.resolve.request import Flags

        self.set, self.clear = _names(set), _names(clear)
        for name in self.set + self.clear:
            if name.upper() not in Flags.NAMES:
                raise KeyError(f"policy.FLAGS: unknown flag {name!r}")

    def __call__(self, state: State, req: Request) -> None:
        req.cacheable = False
        for name in self.set:
            req.flags.set(name, True)
        for name in self.clear:
            req.flags.set(name, False)
        return None


def _start_debug(req: Request, mode: Any) -> None:
    """Collect this request's trace; L{kresolver.modules.policy} prints it at the end."""
    req.cacheable = False
    req.flags.DEBUG = True
    req.flags.QTRACE = True
    if req.trace is None:
        req.trace = []
    req.vars["policy.debug"] = mode


class _Trace(Action):
    chain = True

    def __init__(self, label: str, apply: Callable[[Request], None]) -> None:
        self.label = label
        self._apply = apply

    def __call__(self, state: State, req: Request) -> None:
        req.cacheable = False
        self._apply(req)
        return None


def _qtrace(req: Request) -> None:
    req.flags.QTRACE = True


def _reqtrace(req: Request) -> None:
    text = req.query.to_text()
    reqdbg.debug("[reqdbg][policy] request packet:\n{text}", text=text)
    req.log(f"request packet:\n{text}")


def _iptrace(req: Request) -> None:
    if req.src is None:
        line = "request packet arrived internally"
    else:
        src, dst = req.src, req.dst or ("?", 0)
        line = (
            f"request packet arrived from {src[0]}#{src[1]} to {dst[0]}#{dst[1]:05d} "
            f"({req.transport.upper()})"
        )
    reqdbg.debug("[reqdbg][policy] {line}", line=line)
    req.log(line)


QTRACE = _Trace("QTRACE", _qtrace)
REQTRACE = _Trace("REQTRACE", _reqtrace)
IPTRACE = _Trace("IPTRACE", _iptrace)
DEBUG_ALWAYS = _Trace("DEBUG_ALWAYS", lambda req: _start_debug(req, "always"))
DEBUG_CACHE_MISS = _Trace("DEBUG_CACHE_MISS", lambda req: _start_debug(req, "miss"))


def DEBUG_IF(test: Callable[[Request], Any]) -> Action:
    """Collect the debug trace; print it at the end only if C{test(req)} is true."""
    if not callable(test):
        raise TypeError("policy.DEBUG_IF takes a function of the request")
    return _Trace("DEBUG_IF", lambda req: _start_debug(req, test))


class _MirrorSender(DatagramProtocol):
    """One unconnected UDP socket per MIRROR target, opened on first use."""


class MIRROR(Action):
    """Send a copy of the client's query over UDP to C{address} (``ip`` or ``ip@port``)."""

    label = "MIRROR"
    chain = True

    def __init__(self, address: str, reactor: Any = None) -> None:
        host, _, port = address.replace("#", "@").partition("@")
        ipaddress.ip_address(host)
        self.address = (host, int(port) if port else 53)
        self.reactor = reactor
        self._port: Any = None
        self._proto = _MirrorSender()

    def __call__(self, state: State, req: Request) -> None:
        req.cacheable = False
        if self._port is None:
            reactor = self.reactor or req.engine.reactor
            interface = "::" if ":" in self.address[0] else ""
            self._port = reactor.listenUDP(0, self._proto, interface=interface)
        try:
            self._proto.transport.write(req.wire, self.address)
        except OSError:
            pass  # a mirror is best effort: the client's own query must not suffer
        return None

    def close(self) -> Any:
        port, self._port = self._port, None
        return port.stopListening() if port is not None else None

    def __repr__(self) -> str:
        return f"policy.MIRROR({self.address[0]!r})"
