"""Query policies: filters pick queries, actions block, rewrite, forward or trace them.

``policy.add(policy.suffix(policy.DENY, policy.todnames(['example.com'])))`` as in kresd;
a rule is any callable ``(state, query) -> action or None`` (see L{filters}), an action
any callable ``(state, req) -> State or None`` (see L{actions}).  Rules run in the
``begin`` layer, in the order they were added; postrules (``policy.add(rule, True)``) run
in ``answer_finalize``, on the finished answer.  When no rule ended the evaluation, the
built-in special-use and locally-served names rules (L{special}) apply.

The fast path and the rules
---------------------------
The transports answer repeated questions from the answer cache before any layer runs.
Three things keep that consistent with the rules:

- every change of the rule set (add, delete, an RPZ reload) calls ``engine.changed()``,
  which empties the answer cache;
- a request that any rule matched is not kept for the fast path (``req.cacheable =
  False``), so the next such query runs the rules again and ``rule.count`` is exact; the
  forwarding actions (FORWARD, STUB, TLS_FORWARD) are the exception: they only choose
  where to resolve, so their answers are kept and ``count`` counts answer-cache misses;
- rules whose verdict depends on the client (L{kresolver.modules.view}) switch the
  answer cache off (``engine.answers.enabled = False``) while they exist.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import dns.message
from twisted.logger import Logger

from kresolver.logging import KLogger
from kresolver.module import Module
from kresolver.modules.kres import kres
from kresolver.modules.policy import actions, filters
from kresolver.modules.policy.actions import reqdbg
from kresolver.modules.policy.filters import PolicyQuery
from kresolver.modules.policy.forward import Forward, ForwardScopes
from kresolver.modules.policy.slice import slice_, slice_randomize_psl
from kresolver.modules.policy.special import SpecialNames
from kresolver.modules.renumber import REROUTE
from kresolver.resolve.request import FINAL, Request, State

log = KLogger()
_plain = Logger(namespace="policy")

__all__ = ["Policy", "PolicyApi", "Rule", "evaluate"]


class Rule:
    """A rule in the table: C{id}, the filter C{cb}, and C{count} of matched queries."""

    __slots__ = ("cb", "count", "id", "postrule")

    def __init__(self, rule_id: int, cb: Callable[..., Any], postrule: bool) -> None:
        self.id = rule_id
        self.cb = cb
        self.postrule = postrule
        self.count = 0

    def __repr__(self) -> str:
        kind = "postrule" if self.postrule else "rule"
        return f"<policy {kind} id={self.id} count={self.count} {self.cb!r}>"


def evaluate(rules: Iterable[Rule], state: State, req: Request, query: PolicyQuery) -> Any:
    """Run C{rules} in order until a non-chain action returns a state; return it or None."""
    for rule in rules:
        action = rule.cb(state, query)
        if action is None:
            continue
        rule.count += 1
        # per-action totals for stats and the dashboard: policy.deny, policy.pass, ...
        key = "policy." + getattr(action, "label", "custom").lower()
        metrics = req.engine.metrics
        metrics[key] = metrics.get(key, 0) + 1
        if not getattr(action, "cacheable", False):
            req.cacheable = False
        result = action(state, req)
        flags = req.flags
        if flags.DEBUG or flags.QTRACE:
            _tracing(req.engine)
        if result is not None:
            return result
    return None


def _tracing(engine: Any) -> None:
    """A request is traced: the policy module's tracing hooks are wanted from now on."""
    policy = engine.modules.get("policy")
    if isinstance(policy, Policy):
        policy.trace()


class PolicyApi:
    """What the config sees as ``policy``."""

    def __init__(self, engine: Any, on_postrules: Callable[[], None] | None = None) -> None:
        self._engine = engine
        #: called when the postrules table changed (the module's layers may change)
        self._on_postrules = on_postrules
        self.rules: list[Rule] = []
        self.postrules: list[Rule] = []
        self._next_id = 0
        #: the RFC 6761 / RFC 6303 default rules; None switches them off
        self.special_names: SpecialNames | None = SpecialNames()
        self._closers: list[Any] = []
        self._scopes = ForwardScopes(engine)
        # filters
        self.all = filters.all_
        self.pattern = filters.pattern
        self.suffix = filters.suffix
        self.suffix_common = filters.suffix_common
        self.domains = filters.domains
        self.todnames = filters.todnames
        self.slice = slice_
        self.slice_randomize_psl = slice_randomize_psl
        # actions
        self.PASS = actions.PASS
        self.DENY = actions.DENY
        self.DENY_MSG = actions.DENY_MSG
        self.DROP = actions.DROP
        self.REFUSE = actions.REFUSE
        self.NO_ANSWER = actions.NO_ANSWER
        self.TC = actions.TC
        self.ANSWER = actions.ANSWER
        self.FLAGS = actions.FLAGS
        self.QTRACE = actions.QTRACE
        self.REQTRACE = actions.REQTRACE
        self.IPTRACE = actions.IPTRACE
        self.DEBUG_ALWAYS = actions.DEBUG_ALWAYS
        self.DEBUG_CACHE_MISS = actions.DEBUG_CACHE_MISS
        self.DEBUG_IF = actions.DEBUG_IF
        self.REROUTE = REROUTE
        setattr(self, "del", self.del_)

    # -- the rule table ---------------------------------------------------------------

    def add(self, rule: Callable[..., Any], postrule: bool = False) -> Rule:
        """Append C{rule} to the rules (or postrules); return its description."""
        if not callable(rule):
            raise TypeError(f"policy.add takes a filter function, not {rule!r}")
        desc = Rule(self._next_id, rule, bool(postrule))
        self._next_id += 1
        (self.postrules if postrule else self.rules).append(desc)
        self._changed(desc.postrule)
        return desc

    def _changed(self, postrules: bool) -> None:
        if postrules and self._on_postrules is not None:
            self._on_postrules()
        self._engine.changed()

    def del_(self, rule_id: int | Rule) -> bool:
        """Remove the rule with C{rule_id}; False if there is none."""
        if isinstance(rule_id, Rule):
            rule_id = rule_id.id
        for table in (self.rules, self.postrules):
            for i, rule in enumerate(table):
                if rule.id == rule_id:
                    del table[i]
                    self._changed(rule.postrule)
                    return True
        return False

    def rule(self, rule_id: int) -> Rule | None:
        for rule in (*self.rules, *self.postrules):
            if rule.id == rule_id:
                return rule
        return None

    # -- actions that hold resources ------------------------------------------------------

    def MIRROR(self, address: str) -> actions.MIRROR:
        """Copy matching queries to C{address} over UDP (a chain action)."""
        action = actions.MIRROR(address, self._engine.reactor)
        self._closers.append(action)
        return action

    def rpz(self, action: Callable[..., Any], path: str, watch: bool = True) -> Any:
        """A filter enforcing the RPZ file at C{path} (L{rpz}); reloaded on change."""
        from kresolver.modules.policy.rpz import RpzRule

        rule = RpzRule(action, path, watch, self._engine.reactor, self._engine.changed)
        self._closers.append(rule)
        return rule

    def FORWARD(self, targets: Any) -> Any:
        """Resolve via up to four resolvers (RD=1, CD=0), in a cache scope of their own."""
        return Forward("FORWARD", targets, self._scopes)

    def STUB(self, targets: Any) -> Any:
        """Like FORWARD, with the client's DO/CD passed through and nothing validated."""
        return Forward("STUB", targets, self._scopes)

    def TLS_FORWARD(self, targets: Any) -> Any:
        """FORWARD over DNS over TLS: ``[{'address': ip[@port], 'pin_sha256': b64}]`` or
        ``[{'address': ip, 'hostname': name, 'ca_file': path}]``; no clear-text fallback."""
        return Forward("TLS_FORWARD", targets, self._scopes)

    def close(self) -> None:
        for thing in self._closers:
            thing.close()
        self._closers.clear()

    def __repr__(self) -> str:
        return f"<policy: {len(self.rules)} rules, {len(self.postrules)} postrules>"


class Policy(Module):
    """The policy layers: rules in begin, postrules in answer_finalize, tracing around I/O.

    Hooks with nothing to do stay out of the engine's layer lists, since every hook in
    them is a call per request: C{answer_finalize} while there are no postrules, and the
    tracing hooks (C{checkout}, C{consume}, C{finish}) until a request is traced, by
    ``option('QTRACE', True)`` or ``option('DEBUG', True)`` or a policy action (QTRACE,
    DEBUG_*, FLAGS): L{trace} puts them in, for good.  A module of one's own that sets
    those flags by itself calls L{trace} too.  (An instance attribute None hides a hook:
    the engine collects a module's hooks with C{getattr}.)
    """

    name = "policy"
    description = "query policies: block, rewrite, forward, trace (kresd's policy)"

    answer_finalize: Callable[[Request], State | None] | None
    checkout: Callable[[Request, Any, Any], None] | None
    consume: Callable[[Request, Any, Any], None] | None
    finish: Callable[[Request], None] | None

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.api = PolicyApi(engine, self._postrules_changed)
        namespace = getattr(engine, "namespace", None)
        if namespace is not None:
            namespace.setdefault("kres", kres)
        self.tracing = False
        self.answer_finalize = self.checkout = self.consume = self.finish = None
        options = getattr(engine, "options", None)
        if options is not None and (options.DEBUG or options.QTRACE):
            self.trace()  # (not loaded yet: the hooks are collected as it loads)

    def trace(self) -> None:
        """Put the tracing hooks into the engine's layers (once; they stay)."""
        if self.tracing:
            return
        self.tracing = True
        self.checkout, self.consume, self.finish = self._checkout, self._consume, self._finish
        self._relayer()

    def option_changed(self, name: str, value: bool) -> None:
        """C{option('QTRACE'/'DEBUG', True)} traces every request from now on, internal
        ones (which pass no begin layer) included."""
        if value and name in ("DEBUG", "QTRACE"):
            self.trace()

    def _postrules_changed(self) -> None:
        hook = self._answer_finalize if self.api.postrules else None
        if hook != self.answer_finalize:
            self.answer_finalize = hook
            self._relayer()

    def _relayer(self) -> None:
        # (only once loaded: the engine collects the hooks of a module as it loads it)
        if self.engine.modules.get(self.name) is self:
            self.engine.relayer()

    def unload(self) -> None:
        self.api.close()

    def begin(self, req: Request) -> State | None:
        state = req.state
        if state & FINAL:
            return None
        if not self.tracing:
            flags = req.flags  # (the defaults, or an earlier begin layer's doing)
            if flags.DEBUG or flags.QTRACE:
                self.trace()
        api = self.api
        special = api.special_names
        if not api.rules:
            if special is None:
                return None
            # The default rules match nothing whose top-level label is not one of theirs
            # (the test their filter starts with), and most names are not: their view of
            # the query is not made for those.  A replacement filter without that list of
            # labels is asked every time.
            tlds = getattr(special, "tlds", None)
            if tlds is not None:
                labels = req.qname.labels
                if len(labels) < 2 or labels[-2].lower() not in tlds:
                    return None
        query = PolicyQuery(req)
        result = evaluate(api.rules, state, req, query) if api.rules else None
        if result is None and special is not None:
            action = special(state, query)
            if action is not None:
                result = action(state, req)
        return result

    def _answer_finalize(self, req: Request) -> State | None:
        if not self.api.postrules:
            return None
        return evaluate(self.api.postrules, req.state, req, PolicyQuery(req))

    def _checkout(self, req: Request, qry: Any, outgoing: Any) -> None:
        if req.flags.DEBUG or req.flags.QTRACE:
            req.vars["policy.asked"] = True
            req.log(f"asking upstream: {qry.sname} {qry.stype}")

    def _consume(self, req: Request, qry: Any, response: Any) -> None:
        if not req.flags.QTRACE:
            return None
        message = getattr(response, "message", response)
        if isinstance(message, dns.message.Message):
            text = f"response from {getattr(response, 'server', '?')}:\n{message.to_text()}"
        else:
            text = f"no response: {message}"
        if req.trace is not None:
            req.log(text)
        else:
            log.debug("[qtrace] {text}", text=text)
        return None

    def _finish(self, req: Request) -> None:
        mode = req.vars.get("policy.debug")
        if mode is None or req.trace is None:
            return None
        if mode == "miss":
            show = bool(req.vars.get("policy.asked"))
        elif mode == "always":
            show = True
        else:
            try:
                show = bool(mode(req))
            except Exception:
                _plain.failure("policy.DEBUG_IF test failed")
                show = False
        if show:
            lines = [*req.trace, f"finished in state {State.to_text(req.state)}, answer:",
                     req.answer.to_text()]
            for line in lines:
                reqdbg.debug("[reqdbg][policy] {line}", line=line)
        return None
