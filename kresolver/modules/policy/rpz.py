"""Response Policy Zones: block lists in zone-file form, reloaded when the file changes.

Supported (the seed's compatibility table, QNAME triggers only):

=======================  ==========================================================
right-hand side          action
=======================  ==========================================================
``CNAME .``              the rule's default action (``policy.DENY``: NXDOMAIN)
``CNAME *.``             NODATA (NOERROR, no records, SOA in authority)
``CNAME rpz-passthru.``  ``policy.PASS``
``CNAME rpz-drop.``      ``policy.DROP`` (SERVFAIL, as kresd; BIND sends nothing)
``CNAME rpz-tcp-only.``  ``policy.TC``
A, AAAA, TXT, any type   answered locally (all records of the owner; NODATA for
                         other types), EDE "Forged Answer"
``CNAME other.name.``    a fake CNAME: the answer starts with the CNAME and the
                         resolution goes on with the target (chased in the zone's
                         own local data first)
=======================  ==========================================================

``*.name`` triggers match every name below ``name``; an exact trigger wins over a
wildcard, a longer wildcard over a shorter one.  Names are relative to the zone's apex
(its SOA owner): ``bad.example.rpz.local.`` in zone ``rpz.local.`` triggers on
``bad.example.``.  Owners under ``rpz-ip``, ``rpz-nsdname``, ``rpz-client-ip`` ... are other
trigger kinds, which are not supported: they are counted and skipped.

The file is parsed by a small line parser (not dnspython's, which is far too slow for a
million lines): a 1,000,000-entry list loads in seconds and costs one dict entry per
trigger (see bench/rpz.py).  With C{watch}, a LoopingCall polls the file's identity
(inode, size, mtime); a change is parsed in a thread and swapped in at once, so queries
never see half a list.  A file that does not parse leaves the old rules in force and the
error names the file and line.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import dns.exception
import dns.flags
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from twisted.internet import task, threads

from kresolver.logging import KLogger as Logger
from kresolver.modules.kres import EXTENDED_ERROR
from kresolver.modules.policy import actions
from kresolver.modules.policy.actions import reset_answer, soa_rrset
from kresolver.modules.policy.filters import PolicyQuery
from kresolver.resolve.request import Request, State

log = Logger()

__all__ = ["RpzError", "RpzRule", "RpzZone", "parse_rpz"]

# codes of the common right-hand sides, kept as small ints: a million entries, one int each
DEFAULT, NODATA, PASSTHRU, DROP, TCONLY = range(5)
_SPECIAL_TARGETS = {
    b"\x00": DEFAULT,
    b"\x01*\x00": NODATA,
    b"\x0crpz-passthru\x00": PASSTHRU,
    b"\x08rpz-drop\x00": DROP,
    b"\x0crpz-tcp-only\x00": TCONLY,
}
_UNSUPPORTED_TRIGGERS = (b"rpz-ip", b"rpz-nsip", b"rpz-nsdname", b"rpz-client-ip")
_CNAME = dns.rdatatype.CNAME


class RpzError(ValueError):
    """The RPZ file is wrong; the message starts with file:line."""


class LocalData:
    """Records an RPZ owner answers with: {type: (ttl, [rdata])}."""

    __slots__ = ("records",)

    def __init__(self) -> None:
        self.records: dict[int, tuple[int, list[dns.rdata.Rdata]]] = {}

    def add(self, rdtype: int, ttl: int, rdata: dns.rdata.Rdata) -> None:
        old = self.records.get(rdtype)
        if old is None:
            self.records[rdtype] = (ttl, [rdata])
        else:
            old[1].append(rdata)


class RpzZone:
    """One parsed RPZ file: exact and wildcard triggers in wire format."""

    __slots__ = ("exact", "path", "skipped", "wild")

    def __init__(self, path: str) -> None:
        self.path = path
        self.exact: dict[bytes, int | LocalData] = {}
        self.wild: dict[bytes, int | LocalData] = {}
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.exact) + len(self.wild)

    def lookup(self, wire: bytes) -> int | LocalData | None:
        value = self.exact.get(wire)
        if value is not None or not self.wild:
            return value
        pos = wire[0] + 1 if wire[0] else 0
        wild = self.wild
        while wire[pos]:
            value = wild.get(wire[pos:])
            if value is not None:
                return value
            pos += wire[pos] + 1
        return None


def _text_to_wire(token: str, origin: bytes, where: str) -> bytes:
    """A name token of the file to lowercase wire format, relative names under C{origin}."""
    if token == "@":
        return origin
    absolute = token.endswith(".")
    text = token[:-1] if absolute else token
    if "\\" in token or not text.isascii():
        try:
            name = dns.name.from_text(token, dns.name.from_wire(origin, 0)[0])
        except dns.exception.DNSException as error:
            raise RpzError(f"{where}: bad name {token!r}: {error}") from None
        return name.canonicalize().to_wire()
    if text:
        labels = text.lower().encode("ascii").split(b".")
        if b"" in labels or max(map(len, labels)) > 63:
            raise RpzError(f"{where}: bad name {token!r}")
        wire = b"".join([bytes((len(label),)) + label for label in labels])
    else:
        wire = b""
    wire += b"\x00" if absolute else origin
    if len(wire) > 255:
        raise RpzError(f"{where}: name too long: {token!r}")
    return wire


def _tokens(line: str) -> list[str]:
    """Split a zone-file line into tokens; quoted strings stay one token, quotes kept."""
    if '"' not in line:
        return line.split(";", 1)[0].split()
    out: list[str] = []
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c == ";":
            break
        if c.isspace():
            i += 1
            continue
        if c == '"':
            j = i + 1
            while j < n and line[j] != '"':
                j += 2 if line[j] == "\\" else 1
            out.append(line[i : j + 1])
            i = j + 1
            continue
        j = i
        while j < n and not line[j].isspace() and line[j] not in ';"':
            j += 1
        out.append(line[i:j])
        i = j
    return out


def parse_rpz(path: str) -> RpzZone:
    """Read the RPZ file at C{path}; raise L{RpzError} naming the line that is wrong."""
    zone = RpzZone(path)
    origin = b"\x00"
    apex: bytes | None = None
    default_ttl = 3600
    last_owner: bytes | None = None
    exact, wild = zone.exact, zone.wild
    targets: dict[str, bytes] = {}  # CNAME targets repeat: '.', '*.', 'rpz-passthru.'
    try:
        handle = open(path, encoding="utf-8", errors="strict")
    except OSError as error:
        raise RpzError(f"{path}: cannot read: {error.strerror}") from None
    with handle:
        lineno = 0
        pending: list[str] | None = None
        start_line = 0
        blank_owner = False
        try:
            for line in handle:
                lineno += 1
                if pending is None:
                    if not line.strip() or line.lstrip().startswith(";"):
                        continue
                    blank_owner = line[0] in " \t"
                    toks = _tokens(line)
                    start_line = lineno
                    if "(" in line or ")" in line:
                        code_part = line.split(";", 1)[0]
                        if "(" in code_part and ")" not in code_part:
                            pending = toks
                            continue
                        toks = _unparen(toks)
                else:
                    pending += _tokens(line)
                    if ")" not in line.split(";", 1)[0]:
                        continue
                    toks, pending = _unparen(pending), None
                if not toks:
                    continue
                where = f"{path}:{start_line}"
                first = toks[0]
                if first.startswith("$"):
                    directive = first.upper()
                    if directive == "$ORIGIN" and len(toks) >= 2:
                        origin = _text_to_wire(toks[1], b"\x00", where)
                        targets.clear()
                    elif directive == "$TTL" and len(toks) >= 2:
                        default_ttl = _ttl(toks[1], where)
                    else:
                        raise RpzError(f"{where}: unsupported directive {first}")
                    continue
                if blank_owner:
                    if last_owner is None:
                        raise RpzError(f"{where}: record without an owner")
                    owner = last_owner
                    rest = toks
                else:
                    owner = _text_to_wire(first, origin, where)
                    rest = toks[1:]
                last_owner = owner
                ttl = default_ttl
                # [ttl] [class] type or [class] [ttl] type
                while rest and (rest[0][0].isdigit() or rest[0].upper() in ("IN", "CH", "HS")):
                    if rest[0][0].isdigit():
                        ttl = _ttl(rest[0], where)
                    elif rest[0].upper() != "IN":
                        raise RpzError(f"{where}: only class IN is supported")
                    rest = rest[1:]
                if not rest:
                    raise RpzError(f"{where}: no record type")
                try:
                    rdtype = dns.rdatatype.from_text(rest[0])
                except dns.exception.DNSException:
                    raise RpzError(f"{where}: unknown record type {rest[0]!r}") from None
                rdata_toks = rest[1:]
                if rdtype == dns.rdatatype.SOA:
                    if apex is None:
                        apex = owner
                    continue
                if apex is not None and owner == apex:
                    continue  # NS and other apex records are the zone's, not triggers
                trigger = owner
                if apex is not None:
                    if not owner.endswith(apex):
                        raise RpzError(f"{where}: {first!r} is outside the zone")
                    trigger = owner[: len(owner) - len(apex)] + b"\x00"
                if b"rpz-" in trigger and _unsupported(trigger):
                    zone.skipped += 1
                    continue
                table = exact
                if trigger.startswith(b"\x01*"):
                    table, trigger = wild, trigger[2:]
                if rdtype == _CNAME:
                    if len(rdata_toks) != 1:
                        raise RpzError(f"{where}: CNAME takes one name")
                    target_wire = targets.get(rdata_toks[0])
                    if target_wire is None:
                        target_wire = _text_to_wire(rdata_toks[0], origin, where)
                        if len(targets) < 64:
                            targets[rdata_toks[0]] = target_wire
                    code = _SPECIAL_TARGETS.get(target_wire)
                    if code is not None and trigger not in table:
                        table[trigger] = code
                        continue
                    if code is not None:
                        raise RpzError(f"{where}: CNAME and other data for one name")
                    rdata = dns.rdata.from_wire(
                        dns.rdataclass.IN, _CNAME, target_wire, 0, len(target_wire))
                else:
                    try:
                        rdata = dns.rdata.from_text(
                            dns.rdataclass.IN, rdtype, " ".join(rdata_toks),
                            origin=dns.name.from_wire(origin, 0)[0],
                        )
                    except (dns.exception.DNSException, ValueError) as error:
                        raise RpzError(f"{where}: bad {rest[0]} data: {error}") from None
                data = table.get(trigger)
                if data is None:
                    data = table[trigger] = LocalData()
                elif not isinstance(data, LocalData):
                    raise RpzError(f"{where}: a policy CNAME and other data for one name")
                data.add(rdtype, ttl, rdata)
        except UnicodeDecodeError:
            raise RpzError(f"{path}:{lineno + 1}: not UTF-8 text") from None
        if pending is not None:
            raise RpzError(f"{path}:{start_line}: unbalanced parenthesis")
    return zone


def _unparen(toks: list[str]) -> list[str]:
    """Drop the parentheses of a multi-line record."""
    out = []
    for tok in toks:
        if not tok.startswith('"'):
            tok = tok.replace("(", "").replace(")", "")
        if tok:
            out.append(tok)
    return out


def _ttl(token: str, where: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise RpzError(f"{where}: bad TTL {token!r}") from None


def _unsupported(trigger: bytes) -> bool:
    """Triggers on IPs and name servers: their last label before the apex says so."""
    pos, last = 0, b""
    while trigger[pos]:
        last = trigger[pos + 1 : pos + 1 + trigger[pos]]
        pos += trigger[pos] + 1
    return last in _UNSUPPORTED_TRIGGERS


class _LocalAnswer:
    """Answers from an RPZ owner's records; a fake CNAME lets resolution go on."""

    cacheable = False

    def __init__(self, rule: RpzRule, data: LocalData) -> None:
        self.rule = rule
        self.data = data

    def __call__(self, state: State, req: Request) -> State | None:
        records = self.data.records
        entry = records.get(req.qtype)
        reset_answer(req)
        req.ede.append((EXTENDED_ERROR.FORGED, ""))
        if entry is not None:
            ttl, rdatas = entry
            req.answer.answer.append(dns.rrset.from_rdata_list(req.qname, ttl, rdatas))
            return State.DONE
        cname = records.get(_CNAME)
        if cname is None:
            req.answer.authority.append(soa_rrset(req.qname))
            return State.DONE
        return self.rule.chase(state, req, cname[0], cname[1][0].target)

    def __repr__(self) -> str:
        return "rpz local data"


class RpzRule:
    """The filter ``policy.rpz(action, path, watch)`` returns; also owns the file watch."""

    def __init__(self, action: Callable[..., Any], path: str, watch: bool = True,
                 reactor: Any = None, changed: Callable[[], None] | None = None,
                 interval: float = 1.0) -> None:
        self.path = os.fspath(path)
        self.action = action
        self.reactor = reactor
        self._changed = changed or (lambda: None)
        self.actions: dict[int, Any] = {
            DEFAULT: action,
            NODATA: actions.ANSWER({}, nodata=True),
            PASSTHRU: actions.PASS,
            DROP: actions.DROP,
            TCONLY: actions.TC,
        }
        self._identity = self._stat()
        self.zone = parse_rpz(self.path)
        self.reloads = 0
        self.errors: list[str] = []
        self._reloading = False
        self._loop: task.LoopingCall | None = None
        if watch:
            self._loop = task.LoopingCall(self.check)
            if reactor is not None:
                self._loop.clock = reactor
            self._loop.start(interval, now=False)
        log.info("rpz {path}: {n} triggers", path=self.path, n=len(self.zone))

    def __call__(self, state: Any, query: PolicyQuery) -> Any:
        value = self.zone.lookup(query.sname)
        if value is None:
            return None
        if isinstance(value, int):
            return self.actions[value]
        return _LocalAnswer(self, value)

    def chase(self, state: State, req: Request, ttl: int, target: dns.name.Name) -> State:
        """Answer with CNAME -> target and continue with the target (RPZ "fake CNAME")."""
        req.answer.flags &= ~dns.flags.AA
        req.answer.answer.append(
            dns.rrset.from_text(req.qname, ttl, "IN", "CNAME", target.to_text()))
        for _ in range(8):  # follow the zone's own local data first, a few links deep
            value = self.zone.lookup(target.canonicalize().to_wire())
            if not isinstance(value, LocalData):
                break
            entry = value.records.get(req.qtype)
            if entry is not None:
                req.answer.answer.append(dns.rrset.from_rdata_list(target, *entry))
                return State.DONE
            nxt = value.records.get(_CNAME)
            if nxt is None:
                return State.DONE
            req.answer.answer.append(
                dns.rrset.from_text(target, nxt[0], "IN", "CNAME", nxt[1][0].target.to_text()))
            target = nxt[1][0].target
        req.vars["policy.qname"] = req.qname
        req.qname = target
        return state

    # -- reloading ------------------------------------------------------------------------

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def check(self) -> Any:
        """Poll the file; parse a changed one in a thread and swap it in."""
        identity = self._stat()
        if identity is None or identity == self._identity or self._reloading:
            return None
        self._identity = identity
        self._reloading = True
        d = threads.deferToThreadPool(
            self._reactor(), self._reactor().getThreadPool(), parse_rpz, self.path)
        d.addCallbacks(self._swap, self._broken)
        d.addBoth(self._done)
        return d

    def reload(self) -> None:
        """Parse the file now (blocking) and swap it in; raise L{RpzError} if broken."""
        self._identity = self._stat()
        self._swap(parse_rpz(self.path))

    def _reactor(self) -> Any:
        if self.reactor is None:
            from twisted.internet import reactor

            self.reactor = reactor
        return self.reactor

    def _swap(self, zone: RpzZone) -> None:
        self.zone = zone
        self.reloads += 1
        self._changed()
        log.info("rpz {path} reloaded: {n} triggers", path=self.path, n=len(zone))

    def _broken(self, failure: Any) -> None:
        error = failure.value
        text = str(error) if isinstance(error, RpzError) else f"{self.path}: {error!r}"
        self.errors.append(text)
        log.error("rpz reload failed, keeping the old rules: {error}", error=text)

    def _done(self, _: Any) -> None:
        self._reloading = False

    def close(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def __repr__(self) -> str:
        return f"policy.rpz({self.action!r}, {self.path!r})"
