"""Review of Upstream.ask: waiters of both kinds on one exchange, each leaving on its own
(a cancelled query, a deadline of one ask) without ending it for the others, and each told
once (servers on 127.0.20.24x)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task

from kresolver.resolve.upstream import UpstreamAnswer
from tests.test_upstream import UpstreamTestCase, silent
from tests.test_upstream_ask import Recorder, outgoing


class SharedExchangeTests(UpstreamTestCase):
    def settle(self) -> defer.Deferred[None]:
        """A moment for late answers or timers that should not come."""
        return task.deferLater(reactor, 0.05, lambda: None)

    def assertFinished(self) -> None:
        self.assertEqual(self.up._inflight, {})
        self.assertIsNone(self.up._timer)
        self.assertNoUpstreamSockets()

    @defer.inlineCallbacks
    def test_cancelled_query_leaves_the_ask(self) -> Any:
        """The query that started the exchange is cancelled: the ask that joined it is
        still answered, by the one query sent."""
        server = self.serve("127.0.20.240", delay=0.1)
        self.up.min_timeout = self.up.max_timeout = 2.0  # no retransmission in this test
        by_query = self.ask(["127.0.20.240"])
        waiter = Recorder()
        self.up.ask(outgoing(["127.0.20.240"]), waiter)
        by_query.cancel()
        yield self.assertFailure(by_query, defer.CancelledError)
        yield waiter.done
        [(how, result)] = waiter.told
        self.assertEqual(how, "callback")
        self.assertIsInstance(result, UpstreamAnswer)
        self.assertEqual(len(server.queries), 1)
        yield self.settle()
        self.assertEqual(len(waiter.told), 1)
        self.assertFinished()

    @defer.inlineCallbacks
    def test_ask_deadline_then_query_cancelled(self) -> Any:
        """An ask's deadline tells that ask alone; the query waiting on the same exchange
        is not told, and cancelling it then ends the exchange, leaving nothing behind."""
        self.serve("127.0.20.241", silent)
        waiter = Recorder()
        self.up.ask(outgoing(["127.0.20.241"], deadline=reactor.seconds() + 0.15), waiter)
        by_query = self.ask(["127.0.20.241"])
        yield waiter.done
        [(how, error)] = waiter.told
        self.assertEqual(how, "errback")
        self.assertIn("deadline", error.reason)
        self.assertFalse(by_query.called)
        by_query.cancel()
        yield self.assertFailure(by_query, defer.CancelledError)
        yield self.settle()
        self.assertEqual(len(waiter.told), 1)
        self.assertFinished()

    @defer.inlineCallbacks
    def test_asks_with_their_own_deadlines(self) -> Any:
        """Two asks of one question, the second joining with a later deadline: each is
        told once, at its own deadline."""
        self.serve("127.0.20.242", silent)
        self.up.max_attempts = 1000
        early, late = Recorder(), Recorder()
        self.up.ask(outgoing(["127.0.20.242"], deadline=reactor.seconds() + 0.1), early)
        self.up.ask(outgoing(["127.0.20.242"], deadline=reactor.seconds() + 0.3), late)
        yield early.done
        self.assertEqual([how for how, _ in early.told], ["errback"])
        self.assertEqual(late.told, [])
        yield late.done
        self.assertEqual([how for how, _ in late.told], ["errback"])
        yield self.settle()
        self.assertEqual((len(early.told), len(late.told)), (1, 1))
        self.assertFinished()
