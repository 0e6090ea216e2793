"""Reference resolvers (Knot Resolver, Unbound) on loopback, and a comparison of answers.

kresolver must answer as kresd does, so the recursion tests ask both the same questions
in a lab hierarchy (see ``nsd``) and ``compare`` the rcodes and answer sets.

A reference resolver here must never reach the internet: its root hints are replaced
before anything can be resolved, its upstream source address is bound to loopback (Linux
refuses to route a 127/8 source anywhere but ``lo``), IPv6 upstream is off, and the
modules that query on their own (priming, time-skew check, trust-anchor signalling and
RFC 5011 refresh) are unloaded. kresd schedules those with ``event.after`` from its
built-in defaults, so they would only run once the event loop starts, after our config.

Everything here blocks; it is for tests and benchmarks, not for the reactor.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from kresolver.testing.daemon import Daemon, DaemonError, DaemonOwner, require

KRESD = "/usr/sbin/kresd"
UNBOUND = "/usr/sbin/unbound"

# kresd and Unbound both answer localhost. themselves, so asking for it proves the
# resolver is up without sending anything upstream.
_PROBE_NAME = "localhost."


def query(
    address: str,
    port: int,
    name: str | dns.name.Name,
    rdtype: str | int = "A",
    *,
    tcp: bool = False,
    dnssec: bool = False,
    cd: bool = False,
    fallback: bool = True,
    timeout: float = 10.0,
) -> dns.message.Message:
    """Ask a recursive resolver one question (RD set, EDNS0 on) and return its answer.

    Like a stub resolver, a truncated UDP answer is asked again over TCP unless
    ``fallback`` is False (to see the TC answer itself).
    """
    message = dns.message.make_query(name, rdtype, use_edns=0, want_dnssec=dnssec)
    if cd:
        message.flags |= dns.flags.CD
    if tcp:
        return dns.query.tcp(message, address, port=port, timeout=timeout)
    if fallback:
        response, _ = dns.query.udp_with_fallback(message, address, port=port, timeout=timeout)
        return response
    return dns.query.udp(message, address, port=port, timeout=timeout)


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class _Reference(DaemonOwner):
    """A recursive resolver listening on address@port, resolving from the lab's root.

    ``trust_anchor`` is DS or DNSKEY records in zone-file form (the lab root's key for
    the DNSSEC tests); without it the resolver does not validate. ``extra_config`` is
    appended to the generated config, in the resolver's own config language.
    """

    name = "resolver"
    _conf_name = "resolver.conf"

    def __init__(
        self,
        address: str,
        port: int,
        root_hints: Mapping[str, Sequence[str]],
        workdir: str,
        outgoing_v4: str,
        trust_anchor: str | None = None,
        extra_config: str = "",
    ) -> None:
        if not root_hints or not all(root_hints.values()):
            raise ValueError(f"root hints need at least one name with an address: {root_hints!r}")
        self.address = address
        self.port = port
        self.workdir = os.path.abspath(workdir)
        self.root_hints = {name: list(addrs) for name, addrs in root_hints.items()}
        self.outgoing_v4 = outgoing_v4
        self.trust_anchor = trust_anchor
        self.extra_config = extra_config
        self.config_path = os.path.join(self.workdir, self._conf_name)
        self.trust_anchor_path = os.path.join(self.workdir, "trust-anchor.keys")

    def start(self, timeout: float = 10.0) -> None:
        require(self._argv()[0])
        self._claim_address()
        try:
            os.makedirs(self.workdir, exist_ok=True)
            if self.trust_anchor is not None:
                with open(self.trust_anchor_path, "w", encoding="utf-8") as f:
                    f.write(self.trust_anchor.rstrip("\n") + "\n")
            self._write_files()
            with open(self.config_path, "w", encoding="utf-8") as f:
                f.write(self.config())
            name = f"{self.name} on {self.address}@{self.port}"
            daemon = Daemon(name, self._argv(), self.log_path, self.workdir)
            daemon.start(self._ready, timeout)
        except BaseException:
            self._release_address()
            raise
        self._daemon = daemon

    def query(
        self,
        name: str | dns.name.Name,
        rdtype: str | int = "A",
        **options: Any,
    ) -> dns.message.Message:
        """``query`` this resolver; options as there (tcp, dnssec, cd, fallback, timeout)."""
        return query(self.address, self.port, name, rdtype, **options)

    def _ready(self) -> bool:
        try:
            response = self.query(_PROBE_NAME, "A", timeout=0.2)
        except (OSError, dns.exception.DNSException):
            return False
        return response.rcode() == dns.rcode.NOERROR

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def config(self) -> str:
        raise NotImplementedError

    def _write_files(self) -> None:
        """Files the config refers to, besides the trust anchor."""


class KresdReference(_Reference):
    """Knot Resolver 5 (``kresd -n``) with lab root hints and a loopback source address.

    ``extra_config`` is Lua, e.g. ``log_level('debug')`` or policy rules. Set
    ``cache_size_mb`` before ``start`` for a benchmark that must not evict.
    """

    name = "kresd"
    _conf_name = "kresd.conf"
    cache_size_mb = 50

    def _argv(self) -> list[str]:
        return [KRESD, "-n", "-c", self.config_path, self.workdir]

    def config(self) -> str:
        """The Lua config: root hints first, before anything else can run."""
        hints = ", ".join(
            f"[{_lua_string(name)}] = {{{', '.join(_lua_string(a) for a in addrs)}}}"
            for name, addrs in self.root_hints.items()
        )
        lines = [
            "-- generated by kresolver.testing.reference: a loopback-only lab resolver",
            "modules.load('hints > iterate')",
            f"hints.root({{{hints}}})",
            "net.ipv6 = false",
            f"net.outgoing_v4({_lua_string(self.outgoing_v4)})",
            "option('ALLOW_LOCAL', true)",
            # Modules that query by themselves, scheduled by kresd's defaults.
            "modules.unload('priming')",
            "modules.unload('detect_time_skew')",
            "modules.unload('ta_signal_query')",
            "modules.unload('ta_update')",
            "trust_anchors.remove('.')",
            f"net.listen({_lua_string(self.address)}, {self.port}, {{ kind = 'dns' }})",
            f"cache.open({self.cache_size_mb} * MB, "
            f"{_lua_string('lmdb://' + os.path.join(self.workdir, 'cache'))})",
        ]
        if self.trust_anchor is not None:
            lines.append(f"trust_anchors.add_file({_lua_string(self.trust_anchor_path)}, true)")
        if self.extra_config:
            lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    def _write_files(self) -> None:
        # Every start begins with a cold cache, so comparisons and benchmarks repeat.
        shutil.rmtree(os.path.join(self.workdir, "cache"), ignore_errors=True)


class UnboundReference(_Reference):
    """Unbound (``unbound -d``) in the same lab shape as ``KresdReference``."""

    name = "unbound"
    _conf_name = "unbound.conf"

    def _argv(self) -> list[str]:
        return [UNBOUND, "-d", "-p", "-c", self.config_path]

    def root_hints_text(self) -> str:
        lines = []
        for name, addrs in self.root_hints.items():
            lines.append(f". 3600000 IN NS {name}")
            for addr in addrs:
                lines.append(f"{name} 3600000 IN {'AAAA' if ':' in addr else 'A'} {addr}")
        return "\n".join(lines) + "\n"

    def config(self) -> str:
        w = self.workdir
        validating = self.trust_anchor is not None
        lines = [
            "server:",
            f"  interface: {self.address}@{self.port}",
            f"  outgoing-interface: {self.outgoing_v4}",
            "  do-ip6: no",
            "  do-not-query-localhost: no",
            f'  root-hints: "{w}/root.hints"',
            '  chroot: ""',
            '  username: ""',
            f'  directory: "{w}"',
            "  use-syslog: no",
            '  logfile: ""',
            "  verbosity: 1",
            "  num-threads: 1",
            "  so-reuseport: no",
            "  access-control: 127.0.0.0/8 allow",
            f'  module-config: "{"validator iterator" if validating else "iterator"}"',
        ]
        if validating:
            lines.append(f'  trust-anchor-file: "{self.trust_anchor_path}"')
        if self.extra_config:
            lines.append(self.extra_config)
        lines += ["remote-control:", "  control-enable: no"]
        return "\n".join(lines) + "\n"

    def _write_files(self) -> None:
        with open(os.path.join(self.workdir, "root.hints"), "w", encoding="utf-8") as f:
            f.write(self.root_hints_text())


_RRsetKey = tuple[dns.name.Name, int, int, int]


def _answer_sets(message: dns.message.Message) -> dict[_RRsetKey, dict[bytes, str]]:
    """Answer RRsets keyed by (owner, class, type, covered type), rdata in canonical form.

    Canonical wire form (RFC 4034 6.2) ignores the case of names inside rdata, as the
    resolvers may echo 0x20-randomised names; TTLs and order are left out on purpose.
    """
    sets: dict[_RRsetKey, dict[bytes, str]] = {}
    for rrset in message.answer:
        key = (rrset.name.canonicalize(), rrset.rdclass, rrset.rdtype, rrset.covers)
        rdatas = sets.setdefault(key, {})
        for rdata in rrset:
            rdatas[rdata.to_digestable()] = rdata.to_text()
    return sets


def _describe(key: _RRsetKey, rdatas: Iterable[str]) -> str:
    name, rdclass, rdtype, covers = key
    kind = dns.rdatatype.to_text(rdtype)
    if covers:
        kind += f"({dns.rdatatype.to_text(covers)})"
    if rdclass != dns.rdataclass.IN:
        kind = f"{dns.rdataclass.to_text(rdclass)} {kind}"
    return f"{name} {kind} [{', '.join(sorted(rdatas))}]"


def compare(
    a: dns.message.Message,
    b: dns.message.Message,
    *,
    labels: tuple[str, str] = ("a", "b"),
    flags: Iterable[str] = (),
) -> list[str]:
    """Differences between two answers to the same question; empty when they agree.

    Compares the rcode and the answer section as sets of RRsets (owner, type, rdata),
    CNAME and DNAME records included, ignoring TTLs, order and name case. ``flags`` adds
    header flags to compare, e.g. ``("AD",)`` for the DNSSEC tests.
    """
    first, second = labels
    differences: list[str] = []
    if a.rcode() != b.rcode():
        differences.append(
            f"rcode: {first} {dns.rcode.to_text(a.rcode())}, "
            f"{second} {dns.rcode.to_text(b.rcode())}"
        )
    for flag in flags:
        bit = dns.flags.from_text(flag)
        if (a.flags & bit) != (b.flags & bit):
            state = {True: "set", False: "clear"}
            differences.append(
                f"flag {flag.upper()}: {first} {state[bool(a.flags & bit)]}, "
                f"{second} {state[bool(b.flags & bit)]}"
            )
    sets_a, sets_b = _answer_sets(a), _answer_sets(b)
    for key in sorted(sets_a.keys() | sets_b.keys(), key=lambda k: (k[0], k[1], k[2], k[3])):
        in_a, in_b = sets_a.get(key), sets_b.get(key)
        if in_b is None and in_a is not None:
            differences.append(f"only in {first}: {_describe(key, in_a.values())}")
        elif in_a is None and in_b is not None:
            differences.append(f"only in {second}: {_describe(key, in_b.values())}")
        elif in_a is not None and in_b is not None and in_a.keys() != in_b.keys():
            differences.append(
                f"differs: {first} {_describe(key, in_a.values())}, "
                f"{second} {_describe(key, in_b.values())}"
            )
    return differences


__all__ = [
    "KRESD",
    "UNBOUND",
    "DaemonError",
    "KresdReference",
    "UnboundReference",
    "compare",
    "query",
]
