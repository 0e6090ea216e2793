"""The handler's memo of fast_query() keeps the bodies answered from the answer cache.

A unique cache miss is never asked again byte for byte; keeping it would cost every miss
a store and push out the popular questions the memo is for.
"""

from __future__ import annotations

import dns.edns
import dns.message
import dns.rrset
from twisted.internet import reactor
from twisted.trial import unittest

from kresolver.engine import Engine
from kresolver.server import handler as handler_module
from kresolver.server.handler import QueryHandler
from kresolver.wire import fast_query


class MemoTests(unittest.TestCase):
    def setUp(self) -> None:
        self.engine = Engine(reactor)
        self.engine.root_hints = {"a.root.lab.": ["127.0.40.250"]}  # nothing leaves loopback
        self.handler = QueryHandler(self.engine)

    def store(self, name: str) -> bytes:
        query = dns.message.make_query(name, "A", use_edns=0)
        answer = dns.message.make_response(query)
        answer.answer.append(dns.rrset.from_text(name, 300, "IN", "A", "192.0.2.7"))
        fast = fast_query(query.to_wire())
        assert fast is not None
        self.engine.answers.store(fast, answer.to_wire())
        return query.to_wire()

    def test_hits_kept_as_fast_query_makes_them(self) -> None:
        wire = self.store("www.memo.lab.")
        first = self.handler.receive(wire, None, None, "udp")
        self.assertEqual(self.handler._fast, {wire[2:]: fast_query(wire)})
        again = self.handler.receive(b"\x12\x34" + wire[2:], None, None, "udp")
        assert isinstance(first, bytes) and isinstance(again, bytes)
        self.assertEqual(again[2:], first[2:])
        self.assertEqual(again[:2], b"\x12\x34")
        self.assertEqual(self.engine.metrics["answer.cached"], 2)

    def test_misses_and_others_not_kept(self) -> None:
        self.engine.answers.enabled = False  # every query a miss (answered by the layers)
        self.store("www.memo.lab.")
        wire = dns.message.make_query("www.memo.lab.", "A", use_edns=0).to_wire()
        self.handler.receive(wire, None, None, "internal")
        self.handler.receive(b"\x00\x01\x02", None, None, "udp")  # not even a header
        self.assertEqual(self.handler._fast, {})

    def test_bounded(self) -> None:
        self.patch(handler_module, "_FAST_MEMO_SIZE", 5)
        for i in range(12):
            self.handler.receive(self.store(f"n{i}.memo.lab."), None, None, "udp")
            self.assertLessEqual(len(self.handler._fast), 5)
        self.assertEqual(self.engine.metrics["answer.cached"], 12)

    def test_long_bodies_not_kept(self) -> None:
        """A client's OPT options may fill 64 KB (over TCP): the memo must not pin them,
        or 8,192 padded hits of one cached name would hold half a gigabyte."""
        self.store("www.memo.lab.")
        for i in range(3):
            padded = dns.message.make_query(
                "www.memo.lab.", "A", use_edns=0,
                options=[dns.edns.GenericOption(65001, bytes([i]) * 60000)],
            ).to_wire(max_size=65535)
            answer = self.handler.receive(padded, None, None, "tcp")
            assert isinstance(answer, bytes)
            self.assertEqual(dns.message.from_wire(answer).answer[0][0].to_text(), "192.0.2.7")
        self.assertEqual(self.handler._fast, {})
        self.assertEqual(self.engine.metrics["answer.cached"], 3)
        short = dns.message.make_query(
            "www.memo.lab.", "A", use_edns=0,
            options=[dns.edns.GenericOption(65001, b"c" * 8)],
        ).to_wire()
        self.handler.receive(short, None, None, "udp")
        self.assertEqual(list(self.handler._fast), [short[2:]])
