"""The driver's two ways of asking upstream: C{send} (a Deferred to wait for) and C{ask}
(the walk's resumption is told directly), which must resolve alike."""

from __future__ import annotations

from typing import Any

import dns.message
import dns.name
import dns.rdatatype
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest

from kresolver.engine import Engine
from kresolver.resolve.driver import Layers, Resolver
from kresolver.resolve.outgoing import Outgoing
from kresolver.resolve.request import Request, State
from kresolver.resolve.upstream import UpstreamError

ROOT = dns.name.root
SERVER = "127.0.20.99"


class Asking:
    """A layer that asks upstream for its query until C{rounds} responses came back,
    and keeps every response (or error) its consume hook was given."""

    def __init__(self, rounds: int = 1) -> None:
        self.rounds = rounds
        self.responses: list[Any] = []

    def produce(self, req: Request, qry: Any) -> int:
        qry.outgoing = Outgoing(qry.sname, qry.stype, [SERVER], zone=ROOT)
        return State.PRODUCE

    def consume(self, req: Request, qry: Any, response: Any) -> int | None:
        self.responses.append(response)
        if isinstance(response, Exception):
            return req.fail(0, str(response))
        return State.DONE if len(self.responses) >= self.rounds else None


def request(engine: Engine, name: str = "www.example.") -> Request:
    query = dns.message.make_query(name, dns.rdatatype.A)
    return Request(engine, query.to_wire(), query, ("127.0.20.98", 5300), (SERVER, 53), "udp", 0)


class Later:
    """A transport that answers when the test says so: the C{send} form hands back
    Deferreds, the C{ask} form keeps the waiters it is given."""

    def __init__(self) -> None:
        self.pending: list[Any] = []
        self.asked: list[Outgoing] = []

    def send(self, req: Request, qry: Any) -> defer.Deferred[Any]:
        self.asked.append(qry.outgoing)
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending.append(d)
        return d

    def ask(self, req: Request, qry: Any, waiter: Any) -> None:
        self.asked.append(qry.outgoing)
        self.pending.append(waiter)

    def answer(self, result: Any) -> None:
        waiter = self.pending.pop(0)
        if isinstance(result, Exception):
            waiter.errback(Failure(result))
        else:
            waiter.callback(result)


class DriverTests(unittest.TestCase):
    def setUp(self) -> None:
        self.engine = Engine(Clock())

    def resolver(self, layer: Asking, transport: Later, direct: bool) -> Resolver:
        if direct:
            return Resolver(Layers([layer]), transport.send, transport.ask)
        return Resolver(Layers([layer]), transport.send)

    def run_both(self, script: list[Any], rounds: int) -> list[tuple[Any, list[Any], Any]]:
        """Resolve with C{send} and with C{ask}, the transport answering C{script} one
        by one; what each way ended with: (final state, responses consumed, outgoings)."""
        out = []
        for direct in (False, True):
            layer, transport = Asking(rounds), Later()
            result = self.resolver(layer, transport, direct).resolve(request(self.engine))
            self.assertIsInstance(result, defer.Deferred)
            states: list[Any] = []
            result.addCallback(states.append)
            for item in script:
                self.assertEqual(states, [])
                transport.answer(item)
            self.assertEqual(transport.pending, [])
            self.assertEqual(len(states), 1)
            out.append((states[0], layer.responses, [o.qname for o in transport.asked]))
        return out

    def test_answer_later(self) -> None:
        """An answer that comes later resumes the walk, by either way."""
        by_send, by_ask = self.run_both(["answer"], 1)
        self.assertEqual(by_send, by_ask)
        self.assertEqual(by_ask, (State.DONE, ["answer"], [dns.name.from_text("www.example.")]))

    def test_several_rounds(self) -> None:
        """The same resumption is told again for each round's question."""
        by_send, by_ask = self.run_both(["one", "two", "three"], 3)
        self.assertEqual(by_send, by_ask)
        self.assertEqual(by_ask[:2], (State.DONE, ["one", "two", "three"]))

    def test_failure_reaches_consume(self) -> None:
        """An upstream failure is what the consume hooks get, as with send."""
        error = UpstreamError("no answer")
        by_send, by_ask = self.run_both([error], 1)
        self.assertEqual(by_send, by_ask)
        self.assertEqual(by_ask[:2], (State.FAIL, [error]))

    def test_answer_at_once(self) -> None:
        """A waiter told before ask returns (a failure known at once) resumes the walk
        then and there."""
        layer = Asking()
        told = []

        def ask(req: Request, qry: Any, waiter: Any) -> None:
            told.append(qry.outgoing)
            waiter.callback("at once")

        resolver = Resolver(Layers([layer]), None, ask)
        result = resolver.resolve(request(self.engine))
        states: list[Any] = []
        result.addCallback(states.append)  # type: ignore[union-attr]
        self.assertEqual(states, [State.DONE])
        self.assertEqual(layer.responses, ["at once"])
        self.assertEqual(len(told), 1)

    def test_ask_raising(self) -> None:
        """An exception from ask itself reaches the consume hooks, as one from send does."""
        for direct in (False, True):
            layer = Asking()
            error = ValueError("bad question")

            def boom(*args: Any, error: Exception = error) -> Any:
                raise error

            resolver = Resolver(Layers([layer]), boom, boom if direct else None)
            result = resolver.resolve(request(self.engine))
            states: list[Any] = []
            defer.maybeDeferred(lambda r=result: r).addCallback(states.append)
            self.assertEqual(states, [State.FAIL])
            self.assertEqual(layer.responses, [error])

    def test_replacing_send_drops_ask(self) -> None:
        """A test or module that replaces send replaces the whole upstream I/O."""
        layer, transport = Asking(), Later()
        resolver = self.resolver(layer, Later(), direct=True)
        resolver.send = transport.send
        self.assertIsNone(resolver.ask)
        resolver.resolve(request(self.engine))
        self.assertEqual(len(transport.asked), 1)
        self.assertIsInstance(transport.pending[0], defer.Deferred)

    def test_no_transport(self) -> None:
        layer = Asking()
        result = Resolver(Layers([layer]), None).resolve(request(self.engine))
        self.assertEqual(result, State.FAIL)
        self.assertEqual(layer.responses, [])

    def test_engine_asks_its_upstream(self) -> None:
        """The engine's resolver asks the engine's upstream (whichever it is by then)
        with the query's Outgoing, and the answer resumes the request."""
        engine = self.engine
        self.assertIsNotNone(engine.resolver.ask)
        asked: list[tuple[Outgoing, Any]] = []

        class Upstream:
            def ask(self, out: Outgoing, waiter: Any) -> None:
                asked.append((out, waiter))

        engine.upstream = Upstream()  # type: ignore[assignment]
        layer = Asking()
        engine.resolver.layers = Layers([layer])
        result = engine.resolver.resolve(request(engine))
        states: list[Any] = []
        result.addCallback(states.append)  # type: ignore[union-attr]
        [(out, waiter)] = asked
        self.assertEqual(out.qname, dns.name.from_text("www.example."))
        self.assertFalse(waiter.called)
        waiter.callback("answer")
        self.assertEqual(states, [State.DONE])
        self.assertEqual(layer.responses, ["answer"])


class HookListTests(unittest.TestCase):
    """Each hook list runs in order with the same arguments, through a Deferred too."""

    def test_hooks_around_a_deferred(self) -> None:
        engine = Engine(Clock())
        calls: list[tuple[str, Any]] = []
        later: defer.Deferred[Any] = defer.Deferred()

        class Module:
            def __init__(self, name: str, result: Any = None) -> None:
                self.name, self.result = name, result

            def begin(self, req: Request) -> Any:
                calls.append((self.name, req))
                return self.result

        class Raising:
            def begin(self, req: Request) -> Any:
                calls.append(("raising", req))
                raise RuntimeError("a broken layer")

        modules = [Module("first"), Module("waits", later), Module("third", State.DONE),
                   Raising(), Module("last")]
        req = request(engine)
        result = Resolver(Layers(modules), None).resolve(req)
        self.assertEqual([name for name, _ in calls], ["first", "waits"])
        states: list[Any] = []
        result.addCallback(states.append)  # type: ignore[union-attr]
        later.callback(None)
        self.assertEqual([name for name, _ in calls],
                         ["first", "waits", "third", "raising", "last"])
        self.assertTrue(all(r is req for _, r in calls))
        self.assertEqual(states, [State.FAIL])  # the broken layer failed the request
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
