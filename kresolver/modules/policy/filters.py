"""Policy filters: which queries a rule's action applies to.

A filter is a callable ``(state, query) -> action or None``; C{query} is a
L{PolicyQuery}.  The built-in filters work on the query name in lowercase DNS wire
format (``b'\\x07example\\x03com\\x00'``), as kresd's do:

- L{suffix} keeps its names in a set and looks the query name up once per label
  boundary, so a million suffixes cost the same per query as ten;
- L{pattern} is a Python regular expression searched (``re.search``) in the WIRE form of
  the name, so the seed's examples keep their meaning: ``'\\4www[0-9]\\6badboy\\2cz'``
  matches www0.badboy.cz and ``'[0-9]+\\2cz'`` a label ending in digits right above cz.
  A ``str`` pattern is matched as if its characters were bytes (latin-1).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import dns.name

from kresolver.wire import skip_name

Filter = Callable[[Any, "PolicyQuery"], Any]

__all__ = [
    "PolicyQuery",
    "all_",
    "domains",
    "pattern",
    "suffix",
    "suffix_common",
    "todnames",
    "wire_name",
]


class PolicyQuery:
    """What a filter sees of a request (kresd passes its ``kr_query``).

    C{sname} is the query name in lowercase wire format, C{name} the same in text,
    C{dname} as a dnspython Name; C{stype}/C{qtype}, C{sclass}; C{src}/C{dst} are
    (address, port) of the client and of our listener, C{transport} 'udp' or 'tcp',
    C{tsig} the name (text, lowercase) of a verified TSIG key or None; C{req} is the
    whole L{kresolver.resolve.request.Request}.
    """

    __slots__ = ("_name", "req", "sname", "stype")

    def __init__(self, req: Any) -> None:
        self.req = req
        wire = req.wire
        try:
            end = skip_name(wire, 12)
            self.sname: bytes = wire[12:end].lower()
        except Exception:  # not from a client's wire (internal request): ask dnspython
            self.sname = req.qname.canonicalize().to_wire()
        self.stype: int = req.qtype
        self._name: str | None = None

    @property
    def qtype(self) -> int:
        return self.stype

    @property
    def sclass(self) -> int:
        return self.req.qclass

    @property
    def dname(self) -> dns.name.Name:
        return self.req.qname

    @property
    def name(self) -> str:
        if self._name is None:
            self._name = self.req.qname.to_text().lower()
        return self._name

    def qname(self) -> bytes:
        """kresd's ``query:qname()``: the wire name."""
        return self.sname

    # Reading who asked makes the verdict depend on the client: such an answer must not
    # be kept for the fast path, which would hand it to every other client.

    @property
    def src(self) -> Any:
        self.req.cacheable = False
        return self.req.src

    @property
    def dst(self) -> Any:
        self.req.cacheable = False
        return self.req.dst

    @property
    def transport(self) -> str:
        self.req.cacheable = False
        return self.req.transport

    @property
    def tsig(self) -> str | None:
        self.req.cacheable = False
        query = self.req.query
        if not query.had_tsig:
            return None
        return query.keyname.to_text().lower()

    def __repr__(self) -> str:
        return f"<PolicyQuery {self.name} {self.stype}>"


def wire_name(name: str | bytes | dns.name.Name) -> bytes:
    """A name for the suffix tables, in lowercase wire format ending in the root label.

    Accepted: wire bytes (``todname()``'s output, or kresd-style ``b'\\7example\\3com'``
    without the final zero), a str that holds wire data (its first character is a label
    length below 32, or it ends in NUL, as a translated Lua literal does), a text name,
    or a dnspython Name.
    """
    if isinstance(name, dns.name.Name):
        return name.canonicalize().to_wire()
    if isinstance(name, str):
        if name and (ord(name[0]) < 32 or name.endswith("\x00")):
            name = name.encode("latin-1")
        else:
            return dns.name.from_text(name).canonicalize().to_wire()
    if not isinstance(name, bytes | bytearray):
        raise TypeError(f"a domain name is a str or wire bytes, not {name!r}")
    wire = bytes(name).lower()
    if not wire.endswith(b"\x00"):
        wire += b"\x00"
    # Validate: the labels must add up exactly to the data.
    pos = 0
    while True:
        if pos >= len(wire):
            raise ValueError(f"not a wire-format name: {bytes(name)!r}")
        length = wire[pos]
        if length == 0:
            if pos != len(wire) - 1:
                raise ValueError(f"not a wire-format name: {bytes(name)!r}")
            return wire
        if length > 63:
            raise ValueError(f"not a wire-format name: {bytes(name)!r}")
        pos += length + 1


def todnames(names: Iterable[str] | str) -> list[bytes]:
    """``policy.todnames({'example.com', 'me.cz'})``: text names to wire format."""
    if isinstance(names, str | bytes):
        names = [names]  # type: ignore[list-item]
    return [wire_name(n) for n in names]


def suffix_lookup(table: set[bytes] | frozenset[bytes] | dict[bytes, Any], wire: bytes) -> int:
    """Offset in C{wire} where its longest suffix found in C{table} starts, or -1.

    One set
    lookup per label boundary, longest name first, so the cost is the depth of the name.
    """
    pos = 0
    while True:
        if wire[pos:] in table:
            return pos
        length = wire[pos]
        if length == 0:
            return -1
        pos += length + 1


def all_(action: Any) -> Filter:
    """Apply C{action} to every query."""

    def match_all(state: Any, query: PolicyQuery) -> Any:
        return action

    return match_all


def pattern(action: Any, regex: str | bytes | re.Pattern[bytes]) -> Filter:
    """Apply C{action} when the regular expression is found in the query's wire name."""
    if isinstance(regex, str):
        regex = regex.encode("latin-1")
    compiled = regex if isinstance(regex, re.Pattern) else re.compile(regex, re.IGNORECASE)
    if isinstance(compiled.pattern, str):
        raise TypeError("policy.pattern needs a bytes pattern (it matches wire names)")
    search = compiled.search

    def match_pattern(state: Any, query: PolicyQuery) -> Any:
        return action if search(query.sname) is not None else None

    return match_pattern


def suffix(action: Any, table: Iterable[str | bytes]) -> Filter:
    """Apply C{action} to names at or below any name of C{table}."""
    names = frozenset(wire_name(n) for n in table)

    def match_suffix(state: Any, query: PolicyQuery) -> Any:
        return action if suffix_lookup(names, query.sname) >= 0 else None

    return match_suffix


def suffix_common(
    action: Any, table: Iterable[str | bytes], common: str | bytes | None = None
) -> Filter:
    """Like L{suffix}, first checking a suffix all names share (a cheap early exit)."""
    names = [wire_name(n) for n in table]
    if common is None:
        return suffix(action, names)
    tail = wire_name(common)
    if tail == b"\x00":
        return suffix(action, names)
    for name in names:
        if not name.endswith(tail):
            raise ValueError(f"{name!r} does not end in the common suffix {tail!r}")
    inner = suffix(action, names)

    def match_suffix_common(state: Any, query: PolicyQuery) -> Any:
        if not query.sname.endswith(tail):
            return None
        return inner(state, query)

    return match_suffix_common


def domains(action: Any, table: Iterable[str | bytes]) -> Filter:
    """Apply C{action} to exactly the names of C{table}, not to names below them."""
    names = frozenset(wire_name(n) for n in table)

    def match_domains(state: Any, query: PolicyQuery) -> Any:
        return action if query.sname in names else None

    return match_domains
