"""Root hints: the addresses iteration starts from before it has primed the root.

kresd compiles IANA's ``named.root`` in; kresolver ships it as ``conf/root.hints`` and
``hints.root({...})`` replaces it (the lab and tests point it at loopback servers).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import dns.exception
import dns.name

from kresolver.paths import conf_file


def default_root_hints() -> Path:
    return conf_file("root.hints")


def parse_root_hints(text: str, source: str = "root.hints") -> dict[str, list[str]]:
    """``named.root`` text -> {server name: [addresses]} for the NS names of the root.

    Raises ValueError naming the line when a record cannot be read.
    """
    servers: list[str] = []
    addresses: dict[str, list[str]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(";", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) >= 2 and fields[1].isdigit():
            del fields[1]  # TTL
        if len(fields) >= 2 and fields[1].upper() == "IN":
            del fields[1]
        if len(fields) != 3:
            raise ValueError(f"{source}:{number}: cannot read {raw.strip()!r}")
        owner, rtype, data = fields[0], fields[1].upper(), fields[2]
        try:
            name = dns.name.from_text(owner).to_text().lower()
            if rtype == "NS" and name == ".":
                servers.append(dns.name.from_text(data).to_text().lower())
            elif rtype in ("A", "AAAA"):
                address = ipaddress.ip_address(data)
                if address.version != (4 if rtype == "A" else 6):
                    raise ValueError(f"{data} is not an {rtype} address")
                addresses.setdefault(name, []).append(str(address))
            else:
                raise ValueError(f"unexpected {rtype} record")
        except (ValueError, dns.exception.DNSException) as error:
            raise ValueError(f"{source}:{number}: {error}") from None
    hints = {name: addresses.get(name, []) for name in servers}
    if not any(hints.values()):
        raise ValueError(f"{source}: no root server addresses")
    return hints


def read_root_hints(path: str | Path | None = None) -> dict[str, list[str]]:
    path = Path(path) if path is not None else default_root_hints()
    return parse_root_hints(path.read_text(encoding="ascii"), str(path))
