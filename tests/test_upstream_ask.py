"""Upstream.ask, the resolver's entry: the same exchange as Upstream.query, told to a
waiter rather than through a Deferred (servers on 127.0.20.9x)."""

from __future__ import annotations

from typing import Any

import dns.flags
import dns.name
import dns.rdatatype
from twisted.internet import defer, reactor
from twisted.python.failure import Failure

from kresolver.resolve.outgoing import Outgoing
from kresolver.resolve.upstream import UpstreamAnswer, UpstreamError
from tests.test_upstream import NAME, UpstreamTestCase, silent

A = dns.rdatatype.A


class Recorder:
    """A waiter that is not a Deferred: it keeps what it is told (and how)."""

    called = False

    def __init__(self) -> None:
        self.told: list[tuple[str, Any]] = []
        self.done: defer.Deferred[None] = defer.Deferred()

    def callback(self, result: UpstreamAnswer) -> None:
        self.told.append(("callback", result))
        self.done.callback(None)

    def errback(self, fail: Failure) -> None:
        self.told.append(("errback", fail.value))
        self.done.callback(None)


def outgoing(servers: list[str], **kw: Any) -> Outgoing:
    kw.setdefault("allow_local", True)
    return Outgoing(kw.pop("qname", NAME), kw.pop("rdtype", A), servers, zone=dns.name.root, **kw)


class AskTests(UpstreamTestCase):
    @defer.inlineCallbacks
    def test_answer(self) -> Any:
        """The waiter is told once, by callback, with the checked answer; the query on
        the wire is the one query() sends for the same question."""
        server = self.serve("127.0.20.90")
        waiter = Recorder()
        self.up.ask(outgoing(["127.0.20.90"]), waiter)
        yield waiter.done
        [(how, result)] = waiter.told
        self.assertEqual(how, "callback")
        self.assertAddress(result, "192.0.2.1")
        self.assertEqual(result.server, ("127.0.20.90", 5300))
        yield self.ask(["127.0.20.90"])
        (by_ask, _, tcp), (by_query, _, _) = server.queries
        self.assertFalse(tcp)
        for query in (by_ask, by_query):
            query.id = 0
        self.assertEqual(by_ask.flags, by_query.flags)
        self.assertEqual(by_ask.question[0].name, by_query.question[0].name)  # (either case)
        self.assertEqual((by_ask.edns, by_ask.payload, by_ask.ednsflags),
                         (by_query.edns, by_query.payload, by_query.ednsflags))
        self.assertEqual(self.metrics["iterator.udp"], 2)
        self.assertNoUpstreamSockets()

    @defer.inlineCallbacks
    def test_options_reach_the_wire(self) -> Any:
        """The Outgoing's flags are those asked: no DO, no CD, TCP, name as given."""
        server = self.serve("127.0.20.91")
        waiter = Recorder()
        name = dns.name.from_text("WwW.Example-Lab.")
        self.up.ask(outgoing(["127.0.20.91"], qname=name, dnssec_ok=False,
                             checking_disabled=False, tcp=True, randomize_case=False), waiter)
        yield waiter.done
        [(query, _, tcp)] = server.queries
        self.assertTrue(tcp)
        self.assertFalse(query.flags & (dns.flags.CD | dns.flags.RD))
        self.assertFalse(query.ednsflags & dns.flags.DO)
        self.assertEqual(query.question[0].name.labels, name.labels)  # not randomised
        self.assertEqual(waiter.told[0][0], "callback")
        self.assertTrue(waiter.told[0][1].tcp)

    def test_no_usable_server_tells_at_once(self) -> None:
        waiter = Recorder()
        self.up.ask(outgoing(["127.0.20.92"], allow_local=False), waiter)
        [(how, error)] = waiter.told
        self.assertEqual(how, "errback")
        self.assertIsInstance(error, UpstreamError)
        self.assertIn("no usable server", error.reason)

    def test_deadline_passed_tells_at_once(self) -> None:
        waiter = Recorder()
        self.up.ask(outgoing(["127.0.20.92"], deadline=reactor.seconds() - 1), waiter)
        [(how, error)] = waiter.told
        self.assertEqual(how, "errback")
        self.assertIn("deadline", error.reason)

    @defer.inlineCallbacks
    def test_deadline(self) -> Any:
        server = self.serve("127.0.20.93", silent)
        self.up.max_attempts = 1000
        waiter = Recorder()
        self.up.ask(outgoing(["127.0.20.93"], deadline=reactor.seconds() + 0.3), waiter)
        yield waiter.done
        [(how, error)] = waiter.told
        self.assertEqual(how, "errback")
        self.assertIn("deadline", error.reason)
        self.assertGreater(len(server.queries), 1)
        self.assertNoUpstreamSockets()

    @defer.inlineCallbacks
    def test_shares_an_exchange_with_query(self) -> Any:
        """ask and query of one question at once: one exchange, one answer for both."""
        server = self.serve("127.0.20.94", delay=0.05)
        self.up.min_timeout = self.up.max_timeout = 2.0  # no retransmission in this test
        first, second = Recorder(), Recorder()
        self.up.ask(outgoing(["127.0.20.94"]), first)
        by_query = self.ask(["127.0.20.94"])
        self.up.ask(outgoing(["127.0.20.94"], qname=dns.name.from_text("WWW.example-lab.")),
                    second)
        self.assertEqual(self.up.in_flight, 1)  # one exchange under way for all three
        result = yield by_query
        self.assertEqual(self.up.in_flight, 0)
        yield defer.gatherResults([first.done, second.done])
        self.assertEqual(first.told, [("callback", result)])
        self.assertEqual(second.told, [("callback", result)])
        self.assertEqual(len(server.queries), 1)

    def test_bad_input(self) -> None:
        waiter = Recorder()
        self.assertRaises(ValueError, self.up.ask, outgoing(["ns1.example."]), waiter)
        self.assertRaises(TypeError, self.up.ask, outgoing("127.0.20.95"), waiter)  # type: ignore[arg-type]
        relative = outgoing(["127.0.20.95"], qname=dns.name.from_text("a", None))
        self.assertRaises(ValueError, self.up.ask, relative, waiter)
        self.assertEqual(waiter.told, [])
