"""Walk a request through the layers of the loaded modules (kresd's ``kr_resolve_*``).

The walk is a generator: it yields whenever a layer (or upstream I/O) hands back a
Deferred, and L{drive} resumes it when that fires.  When no layer returns a Deferred the
generator runs to its end inside one call and L{drive} returns the final state itself, so
a request answered by a synchronous layer (hints, cache) costs no Deferred at all.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from kresolver.logging import KLogger as Logger
from kresolver.resolve.request import FINAL, Request, State

log = Logger()

Walk = Generator[Any, Any, State]

#: kresd's defaults for the work one request may cause
MAX_ITERATIONS = 100  # produce/consume rounds for one request
MAX_SUBQUERIES = 50  # planned queries, the client's included
MAX_DEPTH = 15  # sub-query nesting (NS name -> its NS name -> ...)

# State tests as plain int arithmetic: IntFlag's own operators build a new member each
# time, several per round of every request
_FAIL = int(State.FAIL)
_DONE = int(State.DONE)
_FINAL = int(FINAL)


def drive(walk: Walk) -> State | Deferred[State]:
    """Run C{walk}; return its result, or a Deferred of it if it ever has to wait."""
    value: Any = None
    try:
        value = next(walk)
        while not isinstance(value, Deferred):
            value = walk.send(value)
    except StopIteration as stop:
        return stop.value
    return _resume_later(walk, value)


def _resume_later(walk: Walk, waiting: Deferred[Any]) -> Deferred[State]:
    done: Deferred[State] = Deferred()

    def step(result: Any) -> None:
        try:
            while True:
                if isinstance(result, Failure):
                    value = walk.throw(result.value)
                else:
                    value = walk.send(result)
                if isinstance(value, Deferred):
                    value.addBoth(step)
                    return
                result = value
        except StopIteration as stop:
            done.callback(stop.value)
        except BaseException:
            done.errback()

    waiting.addBoth(step)
    return done


class Layers:
    """The hooks of the loaded modules, in load order, one list per hook."""

    HOOKS = ("begin", "produce", "checkout", "consume", "answer_finalize", "finish")

    def __init__(self, modules: Sequence[Any] = ()) -> None:
        self.begin: list[Callable[..., Any]] = []
        self.produce: list[Callable[..., Any]] = []
        self.checkout: list[Callable[..., Any]] = []
        self.consume: list[Callable[..., Any]] = []
        self.answer_finalize: list[Callable[..., Any]] = []
        self.finish: list[Callable[..., Any]] = []
        for module in modules:
            for hook in self.HOOKS:
                method = getattr(module, hook, None)
                if method is not None:
                    getattr(self, hook).append(method)


class Resolver:
    """The request driver: begin, produce/consume rounds per sub-query, finish.

    Upstream I/O is not a layer: a produce hook that wants to ask a server sets
    C{query.outgoing} and returns PRODUCE, the driver runs the checkout hooks and hands
    the query to C{send} (the engine's upstream), then runs the consume hooks with the
    result.
    """

    def __init__(self, layers: Layers, send: Callable[[Request, Any], Deferred[Any]] | None):
        self.layers = layers
        self.send = send

    def resolve(self, req: Request) -> State | Deferred[State]:
        """Resolve C{req}; the answer is in C{req.answer} when the result arrives."""
        return drive(self._walk(req))

    def walk_internal(self, req: Request) -> Walk:
        """The plan and answer_finalize for a request no client made (DS/DNSKEY lookups of
        the validator, prefetches of modules): no begin or finish hooks, so policy and
        statistics see only what clients asked.  Run it with L{drive}, or inside another
        walk with C{yield from}."""
        req.state = State.CONSUME
        yield from self._plan(req)
        yield from self._hooks(self.layers.answer_finalize, req)
        return req.state

    def _hooks(self, hooks: list[Callable[..., Any]], req: Request, *args: Any) -> Walk:
        """Call each hook with the current state in C{req.state}; keep what it returns."""
        for hook in hooks:
            try:
                state = hook(req, *args)
                if isinstance(state, Deferred):
                    state = yield state
            except Exception:
                log.failure("layer {hook} failed", hook=getattr(hook, "__qualname__", hook))
                state = req.fail(0, "internal error in a resolver layer")
            if state is not None:
                req.state = state if type(state) is State else State(state)
        return req.state

    def _walk(self, req: Request) -> Walk:
        layers = self.layers
        req.state = State.CONSUME
        yield from self._hooks(layers.begin, req)
        if not int(req.state) & _FINAL:
            yield from self._plan(req)
        yield from self._hooks(layers.answer_finalize, req)
        state = req.state
        yield from self._hooks(layers.finish, req)
        req.state = state
        for callback in req.on_finish:
            callback(req)
        return state

    def _plan(self, req: Request) -> Walk:
        """Work through the resolution plan until it is empty or something fails."""
        layers = self.layers
        req.push(req.qname, req.qtype, req.qclass)
        rounds = 0
        while req.rplan:
            qry = req.rplan[-1]
            rounds += 1
            if rounds > MAX_ITERATIONS or len(req.resolved) > MAX_SUBQUERIES:
                req.fail(0, "resolution took too many steps")
                return
            depth, parent = 0, qry.parent
            while parent is not None:
                depth, parent = depth + 1, parent.parent
            if depth > MAX_DEPTH:
                req.fail(0, "sub-queries nested too deep")
                return
            qry.outgoing = None
            req.state = State.PRODUCE
            state = yield from self._hooks(layers.produce, req, qry)
            if int(state) & _FAIL:
                return
            if qry.outgoing is not None and not qry.resolved:
                state = yield from self._exchange(req, qry)
                if int(state) & _FAIL:
                    return
            elif not int(state) & _DONE and qry is req.rplan[-1] and not qry.resolved:
                # Nobody could answer and nobody asked upstream: there is no way on.  A
                # layer that stepped aside may have said why (qry.vars['unresolved']).
                ede, why = qry.vars.get("unresolved", (0, "no module could resolve the query"))
                req.fail(ede, why)
                return
            if int(state) & _DONE or qry.resolved:
                qry.resolved = True
                if req.rplan and req.rplan[-1] is qry:
                    req.rplan.pop()
        req.state = State.DONE

    def _exchange(self, req: Request, qry: Any) -> Walk:
        """Send C{qry.outgoing} upstream and run the consume hooks with the result."""
        state = yield from self._hooks(self.layers.checkout, req, qry, qry.outgoing)
        if int(state) & _FAIL:
            return state
        if self.send is None:
            return req.fail(0, "no upstream transport is loaded")
        try:
            response = yield self.send(req, qry)
        except Exception as error:  # the consume hooks decide what a failure means
            response = error
        req.state = State.CONSUME
        return (yield from self._hooks(self.layers.consume, req, qry, response))
