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

_FAIL = State.FAIL
_DONE = State.DONE
_CONSUME = State.CONSUME
_PRODUCE = State.PRODUCE
_FINAL = FINAL


def drive(walk: Walk) -> State | Deferred[State]:
    """Run C{walk}; return its result, or a Deferred of it if it ever has to wait."""
    value: Any = None
    try:
        value = next(walk)
        while True:
            kind = type(value)
            if kind is Ask or kind is Deferred or isinstance(value, Deferred):
                break
            value = walk.send(value)
    except StopIteration as stop:
        return stop.value
    resumption = _Resumption(walk)
    resumption.wait(value)
    return resumption.done


class Ask:
    """What a walk yields to have C{qry.outgoing} asked through C{ask}, a direct entry to
    the upstream (L{Resolver.ask}): the walk's resumption itself is the one told, where
    C{send} would hand back a Deferred to wait for and be resumed by."""

    __slots__ = ("ask", "qry", "req")

    def __init__(self, ask: Callable[[Request, Any, Any], None], req: Request, qry: Any):
        self.ask = ask
        self.req = req
        self.qry = qry


class _Resumption:
    """Resumes a walk each time what it waits for fires.

    An object rather than a closure that adds itself as the next callback: such a closure
    refers to itself through its cell, and the cycle kept every finished request (its
    walk, its answer, its Deferreds) alive until the garbage collector found it.

    It is also what an L{Ask} tells (an upstream waiter: L{callback} and L{errback} as a
    Deferred has them): the answer resumes the walk with no Deferred in between.
    """

    __slots__ = ("done", "walk")

    #: (a waiter's flag: a walk waiting for an answer always wants it)
    called = False

    def __init__(self, walk: Walk) -> None:
        self.walk = walk
        self.done: Deferred[State] = Deferred()

    def wait(self, value: Any) -> None:
        """Wait for C{value}, a Deferred or an L{Ask}, to resume the walk."""
        if type(value) is not Ask:
            value.addBoth(self.step)
            return
        try:
            value.ask(value.req, value.qry, self)
        except Exception:  # as if the walk's send had raised it
            self.step(Failure())

    def step(self, result: Any) -> None:
        walk = self.walk
        try:
            while True:
                if isinstance(result, Failure):
                    value = walk.throw(result.value)
                else:
                    value = walk.send(result)
                kind = type(value)
                if kind is Ask or kind is Deferred or isinstance(value, Deferred):
                    break
                result = value
        except StopIteration as stop:
            self.done.callback(stop.value)
            return
        except BaseException:
            self.done.errback()
            return
        self.wait(value)  # (once the walk is suspended: an answer may come at once)

    # what an upstream exchange calls, once, with its answer or its failure
    callback = step
    errback = step


def _call(
    hooks: list[Callable[..., Any]], start: int, req: Request, args: tuple[Any, ...]
) -> tuple[int, Deferred[Any]] | None:
    """Call C{hooks[start:]} in turn with C{args} (C{req} and what the hook takes after
    it, one tuple for them all), keeping each state they return in C{req.state}; stop
    at the first that returns a Deferred and return its index and the Deferred.

    A plain loop, not a generator: nearly every hook answers at once, and a generator
    per hook list costs more than the hooks that do nothing.  A walk calls it, and only
    if a hook returned a Deferred makes the generator (L{_wait}) that waits for it and
    runs the rest, so a request answered at once costs no generator but its own walk.
    """
    i = start - 1
    for hook in hooks[start:] if start else hooks:  # (a slice only after a Deferred)
        i += 1
        try:
            state = hook(*args)
        except Exception:
            _hook_failed(hook)
            state = req.fail(0, "internal error in a resolver layer")
        if state is not None:
            # (a state is a plain int: Deferred's isinstance goes through the ABC machinery
            # of Awaitable, which costs ten times a type test when it says no)
            if type(state) is not int and isinstance(state, Deferred):
                return i, state
            req.state = state
    return None


def _wait(
    hooks: list[Callable[..., Any]], pending: tuple[int, Deferred[Any]] | None,
    req: Request, args: tuple[Any, ...],
) -> Walk:
    """Wait for the hook that returned a Deferred, then run the rest of C{hooks}."""
    while pending is not None:
        i, waiting = pending
        try:
            state = yield waiting
        except Exception:
            _hook_failed(hooks[i])
            state = req.fail(0, "internal error in a resolver layer")
        if state is not None:
            req.state = state
        pending = _call(hooks, i + 1, req, args)
    return req.state


def _hook_failed(hook: Callable[..., Any]) -> None:
    log.failure("layer {hook} failed", hook=getattr(hook, "__qualname__", hook))


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

    def __init__(
        self, layers: Layers, send: Callable[[Request, Any], Deferred[Any]] | None,
        ask: Callable[[Request, Any, Any], None] | None = None,
    ):
        self.layers = layers
        self._send = send
        #: C{send}'s direct form, if the transport has one: C{ask(req, qry, waiter)} tells
        #: C{waiter} (L{kresolver.resolve.upstream.Waiter}) rather than return a Deferred
        self.ask = ask

    @property
    def send(self) -> Callable[[Request, Any], Deferred[Any]] | None:
        """The upstream I/O: C{send(req, qry)} returns a Deferred of the response (or the
        response).  Replacing it (tests, other transports) drops L{ask}, its direct form."""
        return self._send

    @send.setter
    def send(self, send: Callable[[Request, Any], Deferred[Any]] | None) -> None:
        self._send = send
        self.ask = None

    def resolve(self, req: Request) -> State | Deferred[State]:
        """Resolve C{req}; the answer is in C{req.answer} when the result arrives."""
        return drive(self._walk(req))

    def walk_internal(self, req: Request) -> Walk:
        """The plan and answer_finalize for a request no client made (DS/DNSKEY lookups of
        the validator, prefetches of modules): no begin or finish hooks, so policy and
        statistics see only what clients asked.  Run it with L{drive}, or inside another
        walk with C{yield from}."""
        req.state = _CONSUME
        yield from self._plan(req)
        hooks = self.layers.answer_finalize
        alone = (req,)
        pending = _call(hooks, 0, req, alone)
        if pending is not None:
            yield from _wait(hooks, pending, req, alone)
        return req.state

    def _walk(self, req: Request) -> Walk:
        # (each hook list as _call runs it; _wait only if a hook returned a Deferred)
        layers = self.layers
        req.state = _CONSUME
        alone = (req,)
        hooks = layers.begin
        pending = _call(hooks, 0, req, alone)
        if pending is not None:
            yield from _wait(hooks, pending, req, alone)
        if not req.state & _FINAL:
            yield from self._plan(req)
        hooks = layers.answer_finalize
        pending = _call(hooks, 0, req, alone)
        if pending is not None:
            yield from _wait(hooks, pending, req, alone)
        state = req.state
        hooks = layers.finish
        if hooks:
            pending = _call(hooks, 0, req, alone)
            if pending is not None:
                yield from _wait(hooks, pending, req, alone)
            req.state = state
        for callback in req.on_finish:
            callback(req)
        return state

    def _plan(self, req: Request) -> Walk:
        """Work through the resolution plan until it is empty or something fails.

        Each round runs the produce hooks of the current query; if one of them set
        C{qry.outgoing}, the checkout hooks, the upstream exchange and the consume hooks.
        """
        layers = self.layers
        req.push(req.qname, req.qtype, req.qclass)
        rounds = 0
        rplan = req.rplan
        while rplan:
            qry = rplan[-1]
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
            req.state = _PRODUCE
            args: tuple[Any, ...] = (req, qry)
            hooks = layers.produce
            pending = _call(hooks, 0, req, args)
            if pending is not None:
                yield from _wait(hooks, pending, req, args)
            state = req.state
            if state & _FAIL:
                return
            if qry.outgoing is not None and not qry.resolved:
                hooks = layers.checkout
                if hooks:
                    args = (req, qry, qry.outgoing)
                    pending = _call(hooks, 0, req, args)
                    if pending is not None:
                        yield from _wait(hooks, pending, req, args)
                    if req.state & _FAIL:
                        return
                ask = self.ask
                if ask is None and self._send is None:
                    req.fail(0, "no upstream transport is loaded")
                    return
                try:
                    response = yield (
                        Ask(ask, req, qry) if ask is not None else self._send(req, qry)
                    )
                except Exception as error:  # the consume hooks decide what a failure means
                    response = error
                req.state = _CONSUME
                args = (req, qry, response)
                hooks = layers.consume
                pending = _call(hooks, 0, req, args)
                if pending is not None:
                    yield from _wait(hooks, pending, req, args)
                state = req.state
                if state & _FAIL:
                    return
            elif not state & _DONE and qry is rplan[-1] and not qry.resolved:
                # Nobody could answer and nobody asked upstream: there is no way on.  A
                # layer that stepped aside may have said why (qry.vars['unresolved']).
                ede, why = qry.vars.get("unresolved", (0, "no module could resolve the query"))
                req.fail(ede, why)
                return
            if state & _DONE or qry.resolved:
                qry.resolved = True
                if rplan and rplan[-1] is qry:
                    rplan.pop()
        req.state = _DONE
