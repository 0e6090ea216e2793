"""Trust anchors: where every chain of trust starts (kresd's ``trust_anchors`` table).

The IANA root key is built in (``conf/root.keys``, read-only); the config adds or removes
anchors in DS or DNSKEY form and sets negative trust anchors (RFC 7646), below which
nothing is validated.  The validate layer asks L{TrustAnchors.anchor_for} and
L{TrustAnchors.insecure} for every zone it meets.

    trust_anchors.remove('.')
    trust_anchors.add('. IN DS 20326 8 2 E06D...')
    trust_anchors.add_file('/etc/kresolver/root.keys', readonly=True)
    trust_anchors.set_insecure({'corp.example.'})
    trust_anchors.summary()
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.zonefile

from kresolver.logging import KLogger as Logger
from kresolver.module import Module
from kresolver.paths import conf_file
from kresolver.resolve.names import canonical

log = Logger()

_T = dns.rdatatype


@dataclass
class Anchor:
    """The trusted DS and/or DNSKEY records of one zone, and the file they came from."""

    name: dns.name.Name
    ds: list[dns.rdata.Rdata] = field(default_factory=list)
    keys: list[dns.rdata.Rdata] = field(default_factory=list)
    path: Path | None = None
    readonly: bool = True

    def text(self) -> list[str]:
        rows = [f"{self.name} IN DS {rd.to_text()}" for rd in self.ds]
        rows += [f"{self.name} IN DNSKEY {rd.to_text()}" for rd in self.keys]
        return rows


def parse_anchors(text: str, source: str = "<text>") -> dict[dns.name.Name, Anchor]:
    """DS and DNSKEY records in zone-file form, grouped by owner; anything else is an error."""
    try:
        rrsets = dns.zonefile.read_rrsets(
            text, rdclass=None, default_ttl=0, origin=dns.name.root, relativize=False
        )
    except dns.exception.DNSException as error:
        raise ValueError(f"{source}: not DS or DNSKEY records in zone-file form: {error}") from None
    anchors: dict[dns.name.Name, Anchor] = {}
    for rrset in rrsets:
        if rrset.rdtype not in (_T.DS, _T.DNSKEY) or rrset.rdclass != dns.rdataclass.IN:
            raise ValueError(
                f"{source}: {rrset.name} {_T.to_text(rrset.rdtype)}: a trust anchor is a DS"
                " or DNSKEY record of class IN"
            )
        anchor = anchors.setdefault(rrset.name, Anchor(rrset.name))
        target = anchor.ds if rrset.rdtype == _T.DS else anchor.keys
        for rdata in rrset:
            if rrset.rdtype == _T.DNSKEY and not rdata.flags & 0x0100:
                raise ValueError(f"{source}: DNSKEY of {rrset.name} is not a zone key")
            if rdata not in target:
                target.append(rdata)
    if not anchors:
        raise ValueError(f"{source}: no DS or DNSKEY records found")
    return anchors


def _name(value: str | dns.name.Name) -> dns.name.Name:
    if isinstance(value, dns.name.Name):
        return value
    if not isinstance(value, str):
        raise TypeError(f"expected a domain name, got {value!r}")
    return dns.name.from_text(value)


class TrustAnchorsAPI:
    """What the config sees as ``trust_anchors``."""

    def __init__(self, module: TrustAnchors) -> None:
        self._m = module

    def add(self, text: str) -> bool:
        """Add DS or DNSKEY record(s) in zone-file form: ``'. IN DS 20326 8 2 E06D...'``."""
        self._m.merge(parse_anchors(text, "trust_anchors.add"), None, True)
        return True

    def add_file(self, path: str, readonly: bool = False) -> bool:
        """Add the DS/DNSKEY records of a file; ``readonly=True``: never written back.

        Without it, the ``ta_update`` module (RFC 5011) may rewrite the file when the
        zone's keys roll.
        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as error:
            raise ValueError(f"trust_anchors.add_file: cannot read {p}: {error.strerror}") from None
        self._m.merge(parse_anchors(text, str(p)), p, readonly)
        return True

    def remove(self, name: str) -> bool:
        """Forget the anchor of C{name}; False if there was none."""
        return self._m.remove(_name(name))

    def set_insecure(self, names: Iterable[str] | str) -> list[str]:
        """Negative trust anchors (RFC 7646): replace the list; nothing below is validated."""
        if isinstance(names, str):
            names = [names]
        self._m.negative = {_name(n) for n in names}
        self._m.changed()
        return self.insecure()

    def insecure(self) -> list[str]:
        return sorted(n.to_text() for n in self._m.negative)

    def summary(self) -> str:
        """One line per anchor record, then the negative anchors."""
        rows = []
        for anchor in sorted(self._m.anchors.values(), key=lambda a: a.name):
            rows += anchor.text()
        rows += [f"{n} negative trust anchor" for n in sorted(self._m.negative)]
        return "\n".join(rows)

    def keysets(self) -> dict[str, list[str]]:
        """{zone: [record text]} of the positive anchors."""
        return {a.name.to_text(): a.text() for a in self._m.anchors.values()}

    def __repr__(self) -> str:
        return f"trust_anchors({', '.join(sorted(self.keysets()))})"


class TrustAnchors(Module):
    """The anchors a validator starts from; the IANA root key is loaded at start."""

    name = "trust_anchors"
    description = "DNSSEC trust anchors (IANA root built in) and negative trust anchors"

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.anchors: dict[dns.name.Name, Anchor] = {}
        #: the anchors by their lowercase labels (L{anchor_for}), remade by L{changed}
        self._by_labels: dict[tuple[bytes, ...], Anchor] = {}
        self.negative: set[dns.name.Name] = set()
        #: called (without arguments) whenever anchors change: validators drop their keys
        self.listeners: list[Any] = []
        self.api = TrustAnchorsAPI(self)
        builtin = conf_file("root.keys")
        if builtin.exists():
            self.merge(
                parse_anchors(builtin.read_text(encoding="utf-8"), str(builtin)), builtin, True
            )

    def merge(
        self, anchors: dict[dns.name.Name, Anchor], path: Path | None, readonly: bool
    ) -> None:
        for name, new in anchors.items():
            anchor = self.anchors.setdefault(name, Anchor(name, path=path, readonly=readonly))
            anchor.ds += [rd for rd in new.ds if rd not in anchor.ds]
            anchor.keys += [rd for rd in new.keys if rd not in anchor.keys]
            if path is not None:
                anchor.path, anchor.readonly = path, readonly
        self.changed()

    def remove(self, name: dns.name.Name) -> bool:
        if self.anchors.pop(name, None) is None:
            return False
        self.changed()
        return True

    def changed(self) -> None:
        self._index()
        for listener in list(self.listeners):
            listener()
        if self.engine is not None:
            self.engine.changed()

    def _index(self) -> None:
        self._by_labels = {canonical(name).labels: a for name, a in self.anchors.items()}

    # -- for the validator ----------------------------------------------------------------

    def insecure(self, name: dns.name.Name) -> bool:
        """Whether C{name} is at or below a negative trust anchor."""
        return bool(self.negative) and any(name.is_subdomain(n) for n in self.negative)

    def anchor_for(self, name: dns.name.Name) -> Anchor | None:
        """The closest anchor at or above C{name}, or None: then C{name} is insecure."""
        if not self.anchors:
            return None
        if len(self._by_labels) != len(self.anchors):
            self._index()  # (the dict was changed behind merge and remove)
        # Label tuples from the name up: a dnspython name would be made per label and
        # hashed in Python at each step.
        by_labels = self._by_labels
        labels = canonical(name).labels
        for i in range(len(labels)):
            anchor = by_labels.get(labels[i:])
            if anchor is not None:
                return anchor
        return None


__all__ = ["Anchor", "TrustAnchors", "TrustAnchorsAPI", "parse_anchors"]
