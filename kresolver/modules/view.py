"""Views: policy rules chosen by who asks (client subnet, our address, a TSIG key).

``view.addr('10.0.0.0/8', policy.suffix(policy.DENY, ...))`` applies a rule to clients
in a subnet, ``view.dst(subnet, rule)`` to queries that arrived on one of our addresses
in a subnet, ``view.tsig('mykey.', rule)`` to queries signed with a key.  Per request one
view applies, as in kresd: a verified TSIG key's rules if there are any, otherwise those
of the most specific client subnet, otherwise those of the most specific destination
subnet.  Its rules run in the order they were added, with policy's chain semantics.

Unlike kresd, TSIG views verify the signature: keys are configured with their algorithm
and base64 secret, ``view.key('mykey.', 'hmac-sha256', 'c2VjcmV0...')`` (or in the
module's config, ``modules = {'view': {'keys': {'mykey.': ('hmac-sha256', '...')}}}``), and
are kept in ``engine.keyring``, which the transports verify every signed query against
(see L{kresolver.modules.policy.tsig}).  A query signed with an unknown key or a wrong
MAC never gets here.

The view layer runs in ``begin`` in module order: load it before policy
(``modules.load('view < policy')``) so a client's rules run before the global ones, as
the seed's examples intend; after policy otherwise, as in kresd.

Verdicts here depend on the client, so while any view rule exists the fast path's
answer cache is switched off (``engine.answers.enabled = False``): every query takes the
full path and meets its view.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import dns.name

from kresolver.module import Module
from kresolver.modules.policy import Rule, evaluate
from kresolver.modules.policy.filters import PolicyQuery
from kresolver.modules.policy.tsig import key_name, make_key
from kresolver.resolve.request import FINAL, Request, State

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

__all__ = ["View", "ViewApi"]


def _network(subnet: str) -> Network:
    try:
        return ipaddress.ip_network(subnet.strip(), strict=False)
    except ValueError:
        raise ValueError(f"view: not a subnet: {subnet!r}") from None


class _Subnets:
    """Rules by subnet, looked up most specific first."""

    def __init__(self) -> None:
        self.by_net: dict[Network, list[Rule]] = {}
        self.order: list[Network] = []  # longest prefix first

    def add(self, net: Network, rule: Rule) -> None:
        if net not in self.by_net:
            self.by_net[net] = []
            self.order.append(net)
            self.order.sort(key=lambda n: (n.version, -n.prefixlen))
        self.by_net[net].append(rule)

    def match(self, address: str | None) -> list[Rule] | None:
        if address is None or not self.order:
            return None
        try:
            addr = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        for net in self.order:
            if net.version == addr.version and addr in net:
                return self.by_net[net]
        return None


class ViewApi:
    """What the config sees as ``view``."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.src = _Subnets()
        self.dst_rules = _Subnets()
        self.tsig_rules: dict[dns.name.Name, list[Rule]] = {}
        self._next_id = 0
        self._disabled_answers = False
        if getattr(engine, "keyring", None) is None:
            engine.keyring = {}
        self.keyring: dict[dns.name.Name, Any] = engine.keyring

    def _rule(self, rule: Callable[..., Any]) -> Rule:
        if not callable(rule):
            raise TypeError(f"a view takes a policy rule (filter function), not {rule!r}")
        desc = Rule(self._next_id, rule, False)
        self._next_id += 1
        answers = self._engine.answers
        if answers.enabled:
            answers.enabled = False
            self._disabled_answers = True
        self._engine.changed()
        return desc

    def addr(self, subnet: str, rule: Callable[..., Any]) -> Rule:
        """Apply C{rule} to clients in C{subnet} (the most specific subnet wins)."""
        net = _network(subnet)
        desc = self._rule(rule)
        self.src.add(net, desc)
        return desc

    def dst(self, subnet: str, rule: Callable[..., Any]) -> Rule:
        """Apply C{rule} to queries sent to our addresses in C{subnet}."""
        net = _network(subnet)
        desc = self._rule(rule)
        self.dst_rules.add(net, desc)
        return desc

    def tsig(self, key: str | bytes, rule: Callable[..., Any]) -> Rule:
        """Apply C{rule} to queries signed (verifiably) with the key named C{key}."""
        name = key_name(key)
        desc = self._rule(rule)
        self.tsig_rules.setdefault(name, []).append(desc)
        return desc

    def key(self, name: str | bytes, algorithm: str, secret: str | bytes) -> None:
        """Trust the TSIG key C{name} (algorithm like 'hmac-sha256', base64 secret)."""
        key = make_key(name, algorithm, secret)
        self.keyring[key.name] = key
        self._engine.changed()

    def rules_for(self, req: Request) -> list[Rule] | None:
        query = req.query
        if query.had_tsig and self.tsig_rules:
            rules = self.tsig_rules.get(query.keyname)
            if rules is not None:
                return rules
        rules = self.src.match(req.src[0] if req.src else None)
        if rules is None:
            rules = self.dst_rules.match(req.dst[0] if req.dst else None)
        return rules

    def close(self) -> None:
        if self._disabled_answers:
            self._engine.answers.enabled = True
            self._disabled_answers = False

    def __repr__(self) -> str:
        return (f"<view: {len(self.src.order)} client subnets, {len(self.dst_rules.order)} "
                f"destination subnets, {len(self.tsig_rules)} keys>")


class View(Module):
    """The view layer: evaluates the asking client's rules in ``begin``."""

    name = "view"
    description = "views: policy rules per client subnet, destination or verified TSIG key"

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.api = ViewApi(engine)

    def configure(self, value: Any) -> None:
        if not isinstance(value, dict) or set(value) - {"keys"}:
            raise ValueError("view takes {'keys': {name: (algorithm, secret)}}")
        for name, (algorithm, secret) in value.get("keys", {}).items():
            self.api.key(name, algorithm, secret)

    def unload(self) -> None:
        self.api.close()

    def begin(self, req: Request) -> State | None:
        state = req.state
        if state & FINAL:
            return None
        rules = self.api.rules_for(req)
        req.cacheable = False
        if rules is None:
            return None
        return evaluate(rules, state, req, PolicyQuery(req))
