"""Static hints (kresd's ``hints`` module): A/AAAA for hinted names, PTR for their addresses.

Hints are answered before anything is resolved, from a table the operator fills from the
config (``hints['localhost'] = '127.0.0.1'``, ``hints.set('name addr')``) or from
/etc/hosts-like files (``hints.add_hosts(path)``, ``modules = {'hints': 'hosts.custom'}``).
The same config object also gets and replaces the engine's root hints (``hints.root()``).

What kresd 5 does, and so do we (modules/hints/hints.c):
 - every address of the asked family is answered, in the order they were defined, with a
   TTL of 5 seconds (``hints.ttl()``);
 - for a reverse name, the LAST name defined for that address wins;
 - a hosts line ``addr canonical alias...`` defines the aliases first and the canonical
   name last, so the canonical name is what PTR answers;
 - a name that is hinted but has no record of the asked type gets NOERROR with an empty
   answer (NODATA, ``hints.use_nodata(False)`` turns that off and lets the query be
   resolved normally); a reverse name without a hint is left to the other layers.
Where we differ, on purpose:
 - kresd sets AA on its synthesised NODATA; a recursive answer never carries AA here.
 - kresd answers a PTR record whatever type was asked for a hinted reverse name; we
   answer PTR only to PTR questions and NODATA to the others.
 - kresd stops a hosts file at its first bad line; we log every bad line as file:line and
   load the good ones (issue 2, item 6).
 - defining a pair again moves its name to the end of the address's name list, so it
   becomes the PTR answer again ("the last one defined" taken literally).
 - ``hints.config()`` clears the hints but keeps ``ttl`` and ``use_nodata``.

Sub-queries (e.g. the address of a name server) are answered too: every answered query
gets the RRset in ``qry.vars['hints']`` (None for NODATA), which is what the iterate layer
reads; only the client's own question puts records into ``req.answer``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.PTR
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.reversename
import dns.rrset

from kresolver.logging import KLogger as Logger
from kresolver.module import Module
from kresolver.resolve.request import FINAL, Query, Request, State
from kresolver.resolve.roothints import read_root_hints

log = Logger()

#: kresd's HINTS_TTL_DEFAULT
DEFAULT_TTL = 5
DEFAULT_HOSTS = "/etc/hosts"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_A = dns.rdatatype.A
_AAAA = dns.rdatatype.AAAA
_PTR = dns.rdatatype.PTR
_IN = dns.rdataclass.IN
_ARPA = dns.name.from_text("arpa.")
#: host names as hosts(5) allows them, plus the underscore that service names use
_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")


def parse_name(text: str) -> dns.name.Name:
    """A host name as written in a hosts file or the config -> lowercased absolute name.

    Raises ValueError saying what is wrong: hints are for host names, so anything else
    (empty labels, spaces, escapes, the root) is a typo rather than an intent.
    """
    if not isinstance(text, str):
        raise ValueError(f"a host name must be a string, not {text!r}")
    labels = text[:-1].split(".") if text.endswith(".") else text.split(".")
    if not text or text == "." or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"bad host name {text!r}")
    try:
        return dns.name.from_text(text).canonicalize()
    except dns.exception.DNSException as error:
        raise ValueError(f"bad host name {text!r}: {error}") from None


def parse_address(text: str) -> Address:
    """An IPv4 or IPv6 address (no scope: a DNS record cannot carry one)."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"bad address {text!r}") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise ValueError(f"bad address {text!r}: a scoped address cannot be a hint")
    return address


def parse_pair(pair: str, need_address: bool = True) -> tuple[dns.name.Name, Address | None]:
    """``'name addr'`` (kresd's argument of ``hints.set``/``hints.del``) -> (name, addr)."""
    if not isinstance(pair, str):
        raise ValueError(f"expected 'name address', not {pair!r}")
    fields = pair.split()
    if len(fields) == 2:
        return parse_name(fields[0]), parse_address(fields[1])
    if len(fields) == 1 and not need_address:
        return parse_name(fields[0]), None
    wanted = "'name address'" if need_address else "'name [address]'"
    raise ValueError(f"expected {wanted}, not {pair!r}")


def read_hosts(path: str | Path) -> tuple[list[tuple[Address, list[dns.name.Name]]], list[str]]:
    """Read an /etc/hosts-like file: ``addr canonical [aliases...]``, ``#`` comments.

    Returns the good lines as (address, [names, canonical last]) and one message per bad
    line, ``file:line: why``; a file that cannot be read raises OSError naming it.
    """
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise OSError(
            error.errno, f"hints: cannot read hosts file {str(path)!r}: {error.strerror}"
        ) from None
    entries: list[tuple[Address, list[dns.name.Name]]] = []
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            if len(fields) < 2:
                raise ValueError(f"address {fields[0]!r} without a name")
            address = parse_address(fields[0])
            names = [parse_name(name) for name in fields[1:]]
        except ValueError as error:
            problems.append(f"{path}:{number}: {error}; line skipped")
            continue
        entries.append((address, [*names[1:], names[0]]))
    return entries, problems


def reverse_name(address: Address) -> dns.name.Name:
    return dns.reversename.from_address(str(address))


class HintsTable:
    """Name -> addresses and reverse name -> names, kept consistent with each other."""

    def __init__(self) -> None:
        self.forward: dict[dns.name.Name, list[Address]] = {}
        self.reverse: dict[dns.name.Name, list[dns.name.Name]] = {}
        self._loose: frozenset[bytes] | None = None

    def might_hold(self, labels: tuple[bytes, ...]) -> bool:
        """False if no hint can exist for the name of C{labels}: a test that costs two
        C calls, where a lookup by dnspython name hashes it character by character.
        (Its keys join labels with dots, so a few names share one: True means "look".)
        """
        loose = self._loose
        if loose is None:
            loose = self._loose = frozenset(
                b".".join(name.labels).lower() for name in (*self.forward, *self.reverse)
            )
        return b".".join(labels).lower() in loose

    def add(self, name: dns.name.Name, address: Address) -> None:
        self._loose = None
        addresses = self.forward.setdefault(name, [])
        if address not in addresses:
            addresses.append(address)
        names = self.reverse.setdefault(reverse_name(address), [])
        if name in names:
            names.remove(name)
        names.append(name)

    def delete(self, name: dns.name.Name, address: Address | None = None) -> bool:
        """Remove one pair, or every address of C{name}; False if there was nothing."""
        addresses = self.forward.get(name)
        if not addresses:
            return False
        self._loose = None
        gone = list(addresses) if address is None else [address]
        if address is not None and address not in addresses:
            return False
        for one in gone:
            addresses.remove(one)
            key = reverse_name(one)
            names = self.reverse.get(key, [])
            if name in names:
                names.remove(name)
            if not names:
                self.reverse.pop(key, None)
        if not addresses:
            del self.forward[name]
        return True

    def clear(self) -> None:
        self._loose = None
        self.forward.clear()
        self.reverse.clear()


class Hints(Module):
    """The hints layer: answers hinted names and addresses from the produce hook."""

    name = "hints"
    description = "static hints: A/AAAA/PTR from the config and hosts files; root hints"

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.table = HintsTable()
        self.ttl = DEFAULT_TTL
        self.use_nodata = True
        self.api = HintsAPI(self)

    def configure(self, value: Any) -> None:
        """``modules = {'hints': 'hosts.custom'}``: start over from that hosts file."""
        if value is not None and not isinstance(value, str | Path):
            raise ValueError(f"hints takes the path of a hosts file, not {value!r}")
        self.api.config(value)

    def unload(self) -> None:
        self.table.clear()

    # -- changes, all of which end in engine.changed() ------------------------------------

    def load_hosts(self, path: str | Path, clear: bool = False) -> bool:
        """Add the hints of a hosts file (after clearing the table if C{clear}).

        Bad lines are logged and skipped; True when there were none.  The file is read
        before anything is cleared, so a missing file leaves the hints as they were.
        """
        entries, problems = read_hosts(path)
        for problem in problems:
            log.warn("{problem}", problem=problem)
        if clear:
            self.table.clear()
        for address, names in entries:
            for name in names:
                self.table.add(name, address)
        log.info("hints: loaded {count} lines from {path}", count=len(entries), path=str(path))
        self.engine.changed()
        return not problems

    def clear(self) -> None:
        self.table.clear()
        self.engine.changed()

    def add(self, name: dns.name.Name, address: Address) -> None:
        self.table.add(name, address)
        self.engine.changed()

    def delete(self, name: dns.name.Name, address: Address | None) -> bool:
        removed = self.table.delete(name, address)
        if removed:
            self.engine.changed()
        return removed

    # -- the layer ------------------------------------------------------------------------

    def produce(self, req: Request, qry: Query) -> State | None:
        """Answer C{qry} from the hints, or leave it (and the state) alone."""
        if req.state & FINAL or qry.resolved or qry.sclass != _IN:
            return None
        sname, stype = qry.sname, qry.stype
        if not self.table.might_hold(sname.labels):
            return None
        # The client's question and the targets of its CNAME chain (queries without a
        # parent) go into the answer; the client's own name keeps the case it was asked in.
        mine = qry.parent is None
        owner = req.qname if sname == req.qname else sname
        rrset: dns.rrset.RRset | None
        if sname.is_subdomain(_ARPA):
            names = self.table.reverse.get(sname)
            if not names:
                return None
            if stype == _PTR:
                rrset = dns.rrset.RRset(owner, _IN, _PTR)
                rrset.update_ttl(self.ttl)
                rrset.add(dns.rdtypes.ANY.PTR.PTR(_IN, _PTR, names[-1]))
            elif self.use_nodata:
                rrset = None
            else:
                return None
        else:
            addresses = self.table.forward.get(sname)
            if not addresses:
                return None
            rrset = None
            if stype == _A or stype == _AAAA:
                rrset = self._addresses(owner, stype, addresses)
            if rrset is None and not self.use_nodata:
                return None
        qry.vars["hints"] = rrset
        qry.flags.DNSSEC_WANT = False  # never authenticated
        qry.outgoing = None  # a layer before us may have planned to ask upstream
        qry.resolved = True
        if mine:
            if rrset is not None:
                req.answer.answer.append(rrset)
            if req.trace is not None:  # the text costs more than the answer
                req.log(f"[hint] answered {sname} {dns.rdatatype.to_text(stype)} from hints")
        return State.DONE

    def _addresses(
        self, owner: dns.name.Name, stype: int, addresses: list[Address]
    ) -> dns.rrset.RRset | None:
        """Every address of the asked family, in the order they were defined."""
        version = 4 if stype == _A else 6
        rrset = dns.rrset.RRset(owner, _IN, stype)
        rrset.update_ttl(self.ttl)
        for address in addresses:
            if address.version == version:
                rrset.add(_address_rdata(address))
        return rrset if rrset else None


@functools.lru_cache(maxsize=4096)
def _address_rdata(address: Address) -> dns.rdata.Rdata:
    """The A or AAAA rdata of C{address}, made once: rdata are immutable, and parsing the
    address text again for every answer costs more than the rest of it."""
    if address.version == 4:
        return dns.rdtypes.IN.A.A(_IN, _A, str(address))
    return dns.rdtypes.IN.AAAA.AAAA(_IN, _AAAA, str(address))


class HintsAPI:
    """What the config sees as ``hints``; kresd's names, Python values.

    kresd's ``hints.del`` is ``hints.delete`` (or ``hints.del_``) here, since ``del`` is
    a Python keyword; ``getattr(hints, 'del')`` works too.
    """

    def __init__(self, module: Hints) -> None:
        self._module = module

    # kresd: hints.config([path]) -> {result: bool}
    def config(self, path: str | Path | None = None) -> bool:
        """Clear every hint (not the root hints), then load the hosts file C{path} if given.

        Returns True, or False when some lines of the file were bad (they are logged).
        """
        if path:
            return self._module.load_hosts(path, clear=True)
        self._module.clear()
        return True

    def add_hosts(self, path: str | Path = DEFAULT_HOSTS) -> bool:
        """Add the hints of a hosts-like file; False when some lines were bad (logged)."""
        return self._module.load_hosts(path)

    def get(self, name: str | None = None) -> list[str] | dict[str, list[str]]:
        """The addresses hinted for C{name} ([] if none); without a name, every hint as
        {name: [addresses]}, the table format of L{root}."""
        table = self._module.table.forward
        if name is None:
            return {key.to_text(): [str(a) for a in value] for key, value in table.items()}
        return [str(a) for a in table.get(parse_name(name), [])]

    def set(self, pair: str) -> bool:
        """Add the hint ``'name address'``; a bad name or address raises ValueError."""
        name, address = parse_pair(pair)
        assert address is not None
        self._module.add(name, address)
        return True

    def delete(self, pair: str) -> bool:
        """Remove ``'name address'``, or every address of ``'name'``; False if not hinted."""
        name, address = parse_pair(pair, need_address=False)
        return self._module.delete(name, address)

    del_ = delete

    def ttl(self, ttl: int | None = None) -> int:
        """Get or set the TTL of hinted records (default 5 s)."""
        if ttl is not None:
            if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl < 2**31:
                raise ValueError(f"hints.ttl() takes seconds in 0..2**31-1, not {ttl!r}")
            self._module.ttl = ttl
            self._module.engine.changed()
        return self._module.ttl

    def use_nodata(self, on: bool | None = None) -> bool:
        """Answer NODATA for a hinted name asked with another type (default True)."""
        if on is not None:
            if not isinstance(on, bool):
                raise ValueError(f"hints.use_nodata() takes True or False, not {on!r}")
            self._module.use_nodata = on
            self._module.engine.changed()
        return self._module.use_nodata

    def root(self, table: dict[str, str | Iterable[str]] | None = None) -> dict[str, list[str]]:
        """Get, or replace and get, the root hints: {server name: address or [addresses]}."""
        hints = self._module.engine.root_hints
        if table is not None:
            new = _root_table(table)
            hints.clear()
            hints.update(new)
            self._module.engine.changed()
        return {name: list(addresses) for name, addresses in hints.items()}

    def root_file(self, path: str | Path) -> dict[str, list[str]]:
        """Replace the root hints with those of a named.root-style zone file."""
        try:
            new = read_root_hints(path)
        except OSError as error:
            raise OSError(
                error.errno, f"hints: cannot read root hints {str(path)!r}: {error.strerror}"
            ) from None
        return self.root(new)

    def __getitem__(self, name: str) -> list[str]:
        """``hints['name']``: the addresses of C{name}."""
        result = self.get(name)
        assert isinstance(result, list)
        return result

    def __setitem__(self, name: str, address: str | Iterable[str]) -> None:
        """``hints['name'] = 'addr'`` (or a list of addresses) adds hints."""
        addresses = [address] if isinstance(address, str) else list(address)
        key = parse_name(name)
        parsed = [_address(a) for a in addresses]
        for one in parsed:
            self._module.table.add(key, one)
        self._module.engine.changed()

    def __delitem__(self, name: str) -> None:
        """``del hints['name']``: remove every address of C{name}."""
        if not self.delete(name):
            raise KeyError(name)

    def __contains__(self, name: str) -> bool:
        return parse_name(name) in self._module.table.forward

    def __repr__(self) -> str:
        return f"hints({len(self._module.table.forward)} names)"


# kresd calls it hints.del, a Python keyword: reachable as getattr(hints, "del")
setattr(HintsAPI, "del", HintsAPI.delete)


def _address(value: Any) -> Address:
    if not isinstance(value, str):
        raise ValueError(f"an address must be a string, not {value!r}")
    return parse_address(value)


def _root_table(table: Any) -> dict[str, list[str]]:
    """Check a ``hints.root()`` table; names as the engine keeps them (lowercase text)."""
    if not isinstance(table, dict):
        raise ValueError(f"hints.root() takes {{name: address or [addresses]}}, not {table!r}")
    new: dict[str, list[str]] = {}
    for name, value in table.items():
        addresses = [value] if isinstance(value, str) else value
        if not isinstance(addresses, list | tuple):
            raise ValueError(f"hints.root(): addresses of {name!r} must be a string or a list")
        key = parse_name(name).to_text()
        found = new.setdefault(key, [])
        for address in addresses:
            text = str(_address(address))
            if text not in found:
                found.append(text)
    if not any(new.values()):
        raise ValueError("hints.root() needs at least one address")
    return new
