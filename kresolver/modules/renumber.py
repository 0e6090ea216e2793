"""Renumber addresses in answers into another address space (kresd's ``renumber``).

``modules = {'renumber': [('10.10.10.0/24', '192.168.1.0'), ('166.66.0.0/16',
'127.0.0.0')]}``: an A/AAAA record of the answer inside a source subnet gets the target's
network bits and keeps its own host bits (10.10.10.7 -> 192.168.1.7).  A target written
as a prefix (``'192.168.1.0/24'``) is accepted too; its length must be the source's.
The first matching pair wins.  ``policy.REROUTE({subnet: target})`` is the same rewrite
as a postrule action.

Rewritten records would break their signatures, so the RRSIGs of rewritten RRsets are
dropped from the answer; the AD bit still tells whether the data validated, as the seed
says.  The rewrite runs in ``answer_finalize``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from kresolver.module import Module
from kresolver.resolve.request import Request, State

__all__ = ["REROUTE", "Renumber", "Renumberer"]

_A, _AAAA, _RRSIG = dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.RRSIG


def _pairs(spec: Any) -> list[tuple[str, str]]:
    if isinstance(spec, Mapping):
        return [(str(k), str(v)) for k, v in spec.items()]
    out = []
    for item in spec:
        if isinstance(item, Mapping):
            out.extend(_pairs(item))
        elif isinstance(item, list | tuple) and len(item) == 2:
            out.append((str(item[0]), str(item[1])))
        else:
            raise ValueError(f"renumber takes (subnet, target) pairs, not {item!r}")
    return out


class Renumberer:
    """The rewrite itself: (source network, target network bits) pairs."""

    def __init__(self, spec: Any) -> None:
        self.rules: list[tuple[Any, int, int]] = []  # (network, mask, target bits)
        for source, target in _pairs(spec):
            try:
                net = ipaddress.ip_network(source, strict=False)
                if "/" in target:
                    tnet = ipaddress.ip_network(target, strict=False)
                    if tnet.prefixlen != net.prefixlen:
                        raise ValueError(f"{target} is not as long a prefix as {source}")
                    taddr = tnet.network_address
                else:
                    taddr = ipaddress.ip_address(target)
            except ValueError as error:
                raise ValueError(f"renumber: bad pair ({source!r}, {target!r}): {error}") \
                    from None
            if taddr.version != net.version:
                raise ValueError(f"renumber: {source} and {target} are different families")
            mask = int(net.netmask)
            self.rules.append((net, mask, int(taddr) & mask))
        if not self.rules:
            raise ValueError("renumber: no (subnet, target) pairs given")

    def address(self, addr: Any) -> Any | None:
        """The rewritten address, or None when no pair applies."""
        for net, mask, bits in self.rules:
            if addr.version == net.version and addr in net:
                return type(addr)((int(addr) & ~mask & ((1 << addr.max_prefixlen) - 1)) | bits)
        return None

    def rewrite(self, req: Request) -> bool:
        """Rewrite the A/AAAA records of C{req.answer}; True if anything changed."""
        answer = req.answer
        changed_sets: set[tuple[Any, int]] = set()
        for section in (answer.answer, answer.additional):
            for i, rrset in enumerate(section):
                if rrset.rdtype not in (_A, _AAAA):
                    continue
                new, changed = [], False
                for rdata in rrset:
                    addr = ipaddress.ip_address(rdata.address)
                    moved = self.address(addr)
                    if moved is None:
                        new.append(rdata)
                    else:
                        changed = True
                        new.append(dns.rdata.from_text(dns.rdataclass.IN, rrset.rdtype,
                                                       str(moved)))
                if changed:
                    section[i] = dns.rrset.from_rdata_list(rrset.name, rrset.ttl, new)
                    changed_sets.add((rrset.name, rrset.rdtype))
        if not changed_sets:
            return False
        for section in (answer.answer, answer.additional):
            section[:] = [r for r in section
                          if not (r.rdtype == _RRSIG and (r.name, r.covers) in changed_sets)]
        return True


class REROUTE:
    """``policy.REROUTE({'192.0.2.0/24': '127.0.0.0'})``: renumber, as a postrule action."""

    cacheable = False

    def __init__(self, spec: Mapping[str, str] | Iterable[Any]) -> None:
        self.renumberer = Renumberer(spec)

    def __call__(self, state: State, req: Request) -> State:
        self.renumberer.rewrite(req)
        return state

    def __repr__(self) -> str:
        return "policy.REROUTE(...)"


class Renumber(Module):
    """The ``renumber`` module: rewrites answers in answer_finalize."""

    name = "renumber"
    description = "renumber addresses in answers into another address space"

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.renumberer: Renumberer | None = None
        self.api = self

    def configure(self, value: Any) -> None:
        self.renumberer = Renumberer(value)
        self.engine.changed()

    def config(self, value: Any) -> None:
        """``renumber.config([...])``: replace the pairs."""
        self.configure(value)

    def answer_finalize(self, req: Request) -> None:
        if self.renumberer is not None:
            self.renumberer.rewrite(req)
