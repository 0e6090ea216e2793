"""kresd's DNS Application Firewall: declarative rules compiled into policy rules.

A rule is ``[filter] action [arguments]``; a filter is ``field op operand`` conditions
joined by AND/OR (evaluated left to right, as kresd does: ``a OR b AND c`` is
``(a OR b) AND c``)::

    daf.add('qname = example.com AND src = 192.0.2.0/24 deny')

Fields: ``qname`` (``=``: the name or any name below it; ``~``: a Python regular expression
searched in the lowercase name without its final dot), ``src`` and ``dst`` (``=``: the
client's or our address is in the subnet).  Actions: ``pass``, ``deny``, ``drop``,
``truncate`` (or ``tc``), ``forward ADDR[,ADDR...]`` (needs the policy module's FORWARD),
``mirror ADDR``, ``reroute SUBNET-TARGET...`` (policy's REROUTE: addresses of the answer
inside SUBNET are renumbered into TARGET, keeping their host part), ``rewrite NAME TYPE
ADDR...`` (the A or AAAA records of NAME in the answer become ADDR).

Each rule is one policy rule (reroute and rewrite are postrules, they change finished
answers), so it counts its matches and runs where policy's rules run.  ``daf.disable(id)``
suspends a rule without losing its place or count.  Rules that look at the client or at
our address switch the fast path's answer cache off while they are active, as views do:
a verdict that depends on who asks cannot be served from a cache shared by everyone.

The rule set is kept in ``<state_dir>/daf.json`` (default /var/lib/kresolver), rewritten
atomically (temporary file, fsync, rename) after every change and read back at load, so
rules survive restarts.  With the http module, ``/daf`` is the seed's REST API and the
dashboard gets a panel to create, watch, suspend and delete rules.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rrset

from kresolver.logging import KLogger as Logger
from kresolver.module import Module
from kresolver.modules.policy.filters import suffix_lookup, wire_name
from kresolver.resolve.request import Request, State

log = Logger()

DEFAULT_STATE_DIR = "/var/lib/kresolver"
STATE_FILE = "daf.json"
FIELDS = ("qname", "src", "dst")
#: actions that refuse the query: counted as daf.blocked.<action> (policy counts them too)
BLOCKING = ("deny", "drop", "truncate")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Condition = Callable[[Any], bool]


class RuleError(ValueError):
    """A rule string that cannot be compiled; the message says what is wrong."""


# -- parsing ------------------------------------------------------------------------------


def _network(text: str, what: str) -> Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise RuleError(f"{what}: {text!r} is not an address or subnet") from None


def _condition(field_name: str, op: str, operand: str) -> tuple[Condition, bool]:
    """One ``field op operand`` -> (test on a PolicyQuery, does it look at addresses)."""
    if field_name == "qname":
        if op == "=":
            try:
                table = frozenset({wire_name(operand)})
            except (ValueError, dns.name.NameTooLong, dns.name.LabelTooLong,
                    dns.name.EmptyLabel) as error:
                raise RuleError(f"qname = {operand!r}: not a domain name ({error})") from None
            return (lambda query: suffix_lookup(table, query.sname) >= 0), False
        if op == "~":
            try:
                search = re.compile(operand, re.IGNORECASE).search
            except re.error as error:
                raise RuleError(f"qname ~ {operand!r}: bad regular expression: {error}") from None
            return (lambda query: search(query.name.rstrip(".")) is not None), False
        raise RuleError(f"qname takes '=' or '~', not {op!r}")
    if op != "=":
        raise RuleError(f"{field_name} takes only '=' (an address or subnet), not {op!r}")
    network = _network(operand, field_name)

    def contains(address: Any) -> bool:
        if not address:
            return False
        try:
            return ipaddress.ip_address(address[0]) in network
        except ValueError:
            return False

    if field_name == "src":
        return (lambda query: contains(query.src)), True
    return (lambda query: contains(query.dst)), True


@dataclass
class Parsed:
    """A rule string taken apart: its filter and its action with arguments."""

    test: Condition | None
    by_address: bool
    action: str
    args: list[str] = field(default_factory=list)


def parse(text: str) -> Parsed:
    """Rule string -> L{Parsed}; L{RuleError} says where it went wrong."""
    if not isinstance(text, str):
        raise RuleError(f"a rule is a string, not {type(text).__name__}")
    tokens = text.split()
    if not tokens:
        raise RuleError("empty rule: expected '[filter] action', e.g. 'qname = example.com deny'")
    test: Condition | None = None
    by_address = False
    pos = 0
    joiner: str | None = None
    while pos < len(tokens) and tokens[pos].lower() in FIELDS:
        if len(tokens) - pos < 3:
            raise RuleError(f"incomplete condition {' '.join(tokens[pos:])!r}: "
                            "expected 'field op operand'")
        name, op, operand = tokens[pos].lower(), tokens[pos + 1], tokens[pos + 2]
        condition, looks = _condition(name, op, operand)
        by_address = by_address or looks
        if test is None:
            test = condition
        elif joiner == "AND":
            test = (lambda a, b: lambda query: a(query) and b(query))(test, condition)
        else:
            test = (lambda a, b: lambda query: a(query) or b(query))(test, condition)
        pos += 3
        if pos < len(tokens) and tokens[pos].upper() in ("AND", "OR"):
            joiner = tokens[pos].upper()
            pos += 1
            if pos >= len(tokens) or tokens[pos].lower() not in FIELDS:
                raise RuleError(f"{joiner} must be followed by a condition on "
                                f"{', '.join(FIELDS)}")
        else:
            joiner = None
    if pos >= len(tokens):
        raise RuleError(f"rule {text!r} has no action (one of {', '.join(ACTIONS)})")
    action = tokens[pos].lower()
    if action == "tc":
        action = "truncate"
    if action not in ACTIONS:
        hint = " (fields are qname, src, dst)" if test is None else ""
        raise RuleError(f"unknown action {tokens[pos]!r}{hint}; "
                        f"expected one of {', '.join(ACTIONS)}")
    return Parsed(test, by_address, action, tokens[pos + 1:])


# -- actions ------------------------------------------------------------------------------


def _no_args(name: str) -> Callable[[Any, list[str]], Any]:
    def make(policy: Any, args: list[str]) -> Any:
        if args:
            raise RuleError(f"{name} takes no arguments (got {' '.join(args)!r})")
        return getattr(policy, {"truncate": "TC"}.get(name, name.upper()))

    return make


def _forward(policy: Any, args: list[str]) -> Any:
    if len(args) != 1:
        raise RuleError("forward takes one argument: ADDR[,ADDR...]")
    targets = [a for a in args[0].split(",") if a]
    for target in targets:
        host = target.replace("#", "@").partition("@")[0]
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise RuleError(f"forward: {target!r} is not an address") from None
    make = getattr(policy, "FORWARD", None)
    if make is None:
        raise RuleError("forward needs the policy module's FORWARD action, which is not "
                        "available in this build")
    try:
        return make(targets)
    except ValueError as error:
        raise RuleError(f"forward: {error}") from None


def _mirror(policy: Any, args: list[str]) -> Any:
    if len(args) != 1:
        raise RuleError("mirror takes one argument: ADDR")
    try:
        return policy.MIRROR(args[0])
    except ValueError:
        raise RuleError(f"mirror: {args[0]!r} is not an address (ADDR or ADDR@PORT)") from None


def _reroute(policy: Any, args: list[str]) -> Any:
    """``reroute 192.0.2.0/24-127.0.0.0 ...``: policy's REROUTE (the renumber module)."""
    if not args:
        raise RuleError("reroute takes SUBNET-TARGET pairs, e.g. 192.0.2.0/24-127.0.0.0")
    pairs = []
    for arg in args:
        subnet, dash, target = arg.partition("-")
        if not dash or not subnet or not target:
            raise RuleError(f"reroute: {arg!r} is not SUBNET-TARGET")
        pairs.append((subnet, target))
    try:
        return policy.REROUTE(pairs)
    except ValueError as error:
        raise RuleError(f"reroute: {error}") from None


class Rewrite:
    """Postrule action: the A/AAAA records of a name in the answer get fixed addresses."""

    label = "REWRITE"
    cacheable = False
    chain = True

    def __init__(self, args: list[str]) -> None:
        if not args or len(args) % 3:
            raise RuleError("rewrite takes NAME TYPE ADDR triples, e.g. "
                            "'rewrite example.com A 192.0.2.1'")
        self.table: dict[tuple[dns.name.Name, int], list[str]] = {}
        for i in range(0, len(args), 3):
            name_text, type_text, data = args[i:i + 3]
            try:
                name = dns.name.from_text(name_text).canonicalize()
            except dns.exception.DNSException as error:
                raise RuleError(f"rewrite: {name_text!r} is not a name ({error})") from None
            rdtype = {"A": dns.rdatatype.A, "AAAA": dns.rdatatype.AAAA}.get(type_text.upper())
            if rdtype is None:
                raise RuleError(f"rewrite: type {type_text!r} is not supported (A or AAAA)")
            try:
                address = ipaddress.ip_address(data)
            except ValueError:
                raise RuleError(f"rewrite: {data!r} is not an address") from None
            if (address.version == 4) != (rdtype == dns.rdatatype.A):
                raise RuleError(f"rewrite: {data} is not a {type_text.upper()} address")
            self.table.setdefault((name, rdtype), []).append(str(address))

    def __call__(self, state: State, req: Request) -> None:
        answer = req.answer
        for i, rrset in enumerate(answer.answer):
            addresses = self.table.get((rrset.name.canonicalize(), rrset.rdtype))
            if addresses is not None:
                answer.answer[i] = dns.rrset.from_text_list(
                    rrset.name, rrset.ttl, rrset.rdclass, rrset.rdtype, addresses)
        return None


ACTIONS: dict[str, Callable[[Any, list[str]], Any]] = {
    "pass": _no_args("pass"),
    "deny": _no_args("deny"),
    "drop": _no_args("drop"),
    "truncate": _no_args("truncate"),
    "forward": _forward,
    "mirror": _mirror,
    "reroute": _reroute,
    "rewrite": lambda policy, args: Rewrite(args),
}
#: actions that change the finished answer, so they run as postrules
POSTRULES = frozenset({"reroute", "rewrite"})


# -- the rule table -----------------------------------------------------------------------


class DafRule:
    """One firewall rule: its text, id, state, and the policy rule that enforces it."""

    def __init__(self, rule_id: int, info: str, parsed: Parsed, action: Any,
                 metrics: dict[str, int]) -> None:
        self.id = rule_id
        self.info = " ".join(info.split())
        self.parsed = parsed
        self.action = action
        self.active = True
        self.policy_rule: Any = None
        test = parsed.test
        counter = f"daf.blocked.{parsed.action}" if parsed.action in BLOCKING else None

        def daf_filter(state: Any, query: Any) -> Any:
            if not self.active or (test is not None and not test(query)):
                return None
            if counter is not None:
                metrics[counter] = metrics.get(counter, 0) + 1
            return action

        self.filter = daf_filter

    @property
    def count(self) -> int:
        return self.policy_rule.count if self.policy_rule is not None else 0

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "info": self.info, "active": self.active, "count": self.count}

    def stored(self) -> dict[str, Any]:
        return {"id": self.id, "info": self.info, "active": self.active}


class DafApi:
    """What the config sees as ``daf``."""

    def __init__(self, module: Daf) -> None:
        self._module = module
        setattr(self, "del", self.del_)

    @property
    def rules(self) -> list[dict[str, Any]]:
        """Every rule with its id, text, state and match count."""
        self._module.ensure_restored()
        return [rule.describe() for rule in self._module.table.values()]

    def add(self, rule: str) -> dict[str, Any]:
        """Compile and enforce C{rule}; returns its description (RuleError if invalid)."""
        return self._module.add(rule).describe()

    def get(self, rule_id: int) -> dict[str, Any] | None:
        self._module.ensure_restored()
        rule = self._module.table.get(_rule_id(rule_id))
        return rule.describe() if rule is not None else None

    def del_(self, rule_id: int) -> bool:
        """Delete rule C{rule_id}; False if there is none."""
        return self._module.delete(_rule_id(rule_id))

    def disable(self, rule_id: int) -> dict[str, Any]:
        return self._module.set_active(_rule_id(rule_id), False).describe()

    def enable(self, rule_id: int) -> dict[str, Any]:
        return self._module.set_active(_rule_id(rule_id), True).describe()

    def sync(self) -> None:
        """Re-read the saved rules: how workers follow changes made in the supervisor."""
        self._module.sync()

    def config(self, value: Any = None) -> dict[str, Any]:
        """``daf.config({'state_dir': path})``: where the rules are kept (they are reloaded)."""
        if value is not None:
            self._module.configure(value)
        return {"state_dir": str(self._module.state_dir)}

    def __repr__(self) -> str:
        return f"daf({len(self._module.table)} rules)"


def _rule_id(value: Any) -> int:
    if isinstance(value, bool):
        raise RuleError(f"a rule id is a number, not {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise RuleError(f"a rule id is a number, not {value!r}") from None


class Daf(Module):
    """Firewall rules on top of policy, persisted, with a REST API and a dashboard panel."""

    name = "daf"
    description = "DNS application firewall: declarative rules, REST API, web panel"

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        if "policy" not in engine.modules:
            engine.modules.load("policy")
        self.policy = engine.modules["policy"].api
        self.api = DafApi(self)
        self.table: dict[int, DafRule] = {}
        self.next_id = 1
        self.state_dir = Path(DEFAULT_STATE_DIR)
        self._disabled_answers = False
        self._http: Any = None
        # The saved rules are read once the config has run (so a state_dir it sets is the
        # only one read), or before the first change or look, whichever comes first.
        self._restored = False
        self._pending = engine.reactor.callLater(0, self.ensure_restored)
        http = engine.modules.get("http")
        if http is not None:
            self.publish(http.api)

    # -- configuration and persistence ----------------------------------------------------

    def configure(self, value: Any) -> None:
        if not isinstance(value, dict) or set(value) - {"state_dir"}:
            raise ValueError(f"daf takes {{'state_dir': path}}, not {value!r}")
        if "state_dir" in value:
            state_dir = value["state_dir"]
            if not isinstance(state_dir, str | os.PathLike) or not str(state_dir):
                raise ValueError(f"daf: state_dir must be a directory, not {state_dir!r}")
            self._cancel_pending()
            self.clear()
            self.state_dir = Path(state_dir)
            self._restored = True
            self.restore()

    def _cancel_pending(self) -> None:
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None

    def ensure_restored(self) -> None:
        self._pending = None
        if not self._restored:
            self._restored = True
            self.restore()

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE

    def restore(self) -> None:
        """Read the saved rules; a broken file or rule is logged, never fatal."""
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as error:
            log.error("daf: cannot read {path}: {error}; starting with no rules",
                      path=str(self.state_file), error=error)
            return
        for entry in data.get("rules", []) if isinstance(data, dict) else []:
            try:
                rule = self.compile(int(entry["id"]), str(entry["info"]))
            except (KeyError, TypeError, ValueError) as error:
                log.error("daf: saved rule {entry!r} skipped: {error}", entry=entry, error=error)
                continue
            rule.active = bool(entry.get("active", True))
            self.enforce(rule)
        saved_next = data.get("next_id", 1) if isinstance(data, dict) else 1
        self.next_id = max([self.next_id, int(saved_next), *(i + 1 for i in self.table)])
        self.update()

    def save(self) -> None:
        """Write the rule set atomically: readers see the old file or the new, never half."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = {"next_id": self.next_id,
                "rules": [rule.stored() for rule in self.table.values()]}
        fd, temp = tempfile.mkstemp(prefix=".daf-", suffix=".json", dir=self.state_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out, indent=1)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.state_file)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    # -- the rules --------------------------------------------------------------------------

    def compile(self, rule_id: int, text: str) -> DafRule:
        parsed = parse(text)
        action = ACTIONS[parsed.action](self.policy, parsed.args)
        return DafRule(rule_id, text, parsed, action, self.engine.metrics)

    def enforce(self, rule: DafRule) -> None:
        rule.policy_rule = self.policy.add(rule.filter, rule.parsed.action in POSTRULES)
        self.table[rule.id] = rule

    def withdraw(self, rule: DafRule) -> None:
        self.table.pop(rule.id, None)
        if rule.policy_rule is not None:
            self.policy.del_(rule.policy_rule)
        close = getattr(rule.action, "close", None)
        if close is not None:
            close()

    def add(self, text: str) -> DafRule:
        self.ensure_restored()
        rule = self.compile(self.next_id, text)
        self.enforce(rule)
        self.next_id += 1
        try:
            self.save()
        except OSError as error:
            self.withdraw(rule)
            self.next_id -= 1
            raise RuleError(f"daf: cannot save the rules in {self.state_dir}: "
                            f"{error.strerror or error}") from None
        self.update()
        self.changed()
        log.info("daf: rule {id} added: {info}", id=rule.id, info=rule.info)
        return rule

    def delete(self, rule_id: int) -> bool:
        self.ensure_restored()
        rule = self.table.get(rule_id)
        if rule is None:
            return False
        self.withdraw(rule)
        self.save()
        self.update()
        self.changed()
        return True

    def set_active(self, rule_id: int, active: bool) -> DafRule:
        self.ensure_restored()
        rule = self.table.get(rule_id)
        if rule is None:
            raise KeyError(f"daf: no rule {rule_id}")
        if rule.active != active:
            rule.active = active
            self.save()
            self.update()
            self.changed()
        return rule

    def changed(self) -> None:
        """The saved rules changed here: processes sharing the state file (the workers of a
        supervisor) re-read it; the engine relays this like any applied config."""
        self.engine.applied("daf.sync()", "<daf>")

    def sync(self) -> None:
        self._cancel_pending()
        self.clear()
        self._restored = True
        self.restore()

    def clear(self) -> None:
        """Withdraw every rule from policy (the saved file is kept)."""
        for rule in list(self.table.values()):
            self.withdraw(rule)
        self.next_id = 1
        self.update()

    def update(self) -> None:
        """After a change: answers may differ now, and the answer cache must be off while
        an active rule depends on who asks."""
        by_address = any(r.active and r.parsed.by_address for r in self.table.values())
        answers = self.engine.answers
        if by_address and answers.enabled:
            answers.enabled = False
            self._disabled_answers = True
        elif not by_address and self._disabled_answers:
            answers.enabled = True
            self._disabled_answers = False
        self.engine.metrics["daf.rules"] = sum(r.active for r in self.table.values())
        self.engine.changed()

    def unload(self) -> None:
        self._cancel_pending()
        for rule in list(self.table.values()):
            self.withdraw(rule)
        self.update()
        if self._http is not None:
            from kresolver.web.daf import unpublish

            unpublish(self._http)
            self._http = None

    # -- web --------------------------------------------------------------------------------

    def publish(self, http: Any) -> None:
        """Add the REST API at /daf and the dashboard panel (called by http)."""
        from kresolver.web.daf import publish

        publish(http, self)
        self._http = http
