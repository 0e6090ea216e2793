"""The plain-query shortcuts of the miss path give what the general path gives.

A plain query (one that L{kresolver.wire.fast_query} accepts) is read from the wire by
L{PlainQuery} and its answer made from a template; every other query is parsed by
dnspython and answered by L{make_answer}.  For randomized plain queries both ways must
make the same request: the same question (in the client's case), flags, payload and answer.
"""

from __future__ import annotations

import random
from typing import Any

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from twisted.internet import reactor
from twisted.trial import unittest

from kresolver.engine import Engine
from kresolver.resolve.request import Flags, PlainQuery, Request, make_answer
from kresolver.server.handler import _META_TYPES, QueryHandler, bucket, question_error
from kresolver.wire import fast_query


def _random_query(rng: random.Random) -> bytes:
    labels = [
        "".join(rng.choice("aBcDeFgHiJ-09xyZ") for _ in range(rng.randint(1, 20)))
        for _ in range(rng.randint(0, 5))
    ]
    name = dns.name.from_text(".".join(labels) + ".") if labels else dns.name.root
    rdtype = rng.choice([1, 28, 2, 15, 16, 33, 43, 48, 255, 65, 999, 65280])
    kw: dict[str, Any] = {}
    if rng.random() < 0.7:
        kw["use_edns"] = 0
        kw["payload"] = rng.choice([0, 100, 512, 1200, 1232, 1400, 4096, 65535])
        kw["want_dnssec"] = rng.random() < 0.5
        if rng.random() < 0.3:
            kw["options"] = [dns.edns.GenericOption(rng.choice([10, 12, 65001]),
                                                    rng.randbytes(rng.randint(0, 12)))]
    query = dns.message.make_query(name, rdtype, **kw)
    query.id = rng.randrange(65536)
    if rng.random() < 0.3:
        query.flags |= dns.flags.CD
    if rng.random() < 0.2:
        query.flags |= dns.flags.AD
    return query.to_wire()


class _RefusedError(Exception):
    pass


class PlainMatchesParsedTests(unittest.TestCase):
    """Randomized: PlainQuery's request equals the one made of dnspython's parse."""

    def setUp(self) -> None:
        self.engine = Engine(reactor)

    def pair(self, data: bytes, transport: str, refresh: bool | None) -> tuple[Request, Request]:
        fast = fast_query(data)
        assert fast is not None
        plain = PlainQuery.read(data, fast)
        if plain is None:  # dnspython's parser decides: it refuses
            self.assertRaises(dns.exception.DNSException, dns.message.from_wire, data)
            raise _RefusedError()
        query = dns.message.from_wire(data)
        args = (("127.0.40.9", 5300), ("127.0.40.1", 53), transport, 1.0)
        return (Request(self.engine, data, None, *args, plain, refresh),
                Request(self.engine, data, query, *args, None, refresh))

    def test_random(self) -> None:
        rng = random.Random(4711)
        refused = 0
        for i in range(400):
            data = _random_query(rng)
            transport = rng.choice(["udp", "udp", "tcp", "internal"])
            refresh = rng.choice([None, False, True])
            if i % 50 == 0:
                self.engine.net.bufsize(rng.choice([512, 1232, 4096, 65535]))
            try:
                fast, parsed = self.pair(data, transport, refresh)
            except _RefusedError:
                refused += 1
                continue
            self.assertEqual(fast.qname.labels, parsed.qname.labels)  # case kept
            self.assertEqual((fast.qtype, fast.qclass), (parsed.qtype, parsed.qclass))
            self.assertIs(type(fast.qtype), type(parsed.qtype))
            self.assertEqual(fast.query_flags, parsed.query_flags)
            self.assertEqual(vars(fast.flags), vars(parsed.flags))
            self.assertEqual(fast.payload, parsed.payload)
            self.assertEqual(fast.payload, _old_payload(parsed))
            self.assertEqual(fast.answer.to_wire(), parsed.answer.to_wire())
            self.assertEqual(_attrs(fast.answer), _attrs(parsed.answer))
            self.assertEqual(fast.query, parsed.query)
            self.assertEqual(fast.query.to_wire(), data)
        self.assertLess(refused, 40)

    def test_answers_are_separate(self) -> None:
        """Messages made from the template share nothing a layer may change."""
        data = dns.message.make_query("a.lab.", "A", use_edns=0).to_wire()
        one, _ = self.pair(data, "udp", None)
        two, _ = self.pair(data, "udp", None)
        a, b = one.answer, two.answer
        for name in ("sections", "index", "errors", "opt"):
            self.assertIsNot(getattr(a, name), getattr(b, name), name)
        for x, y in zip(a.sections, b.sections, strict=True):
            self.assertIsNot(x, y)
        self.assertIsNot(a.question[0], b.question[0])
        self.assertIsNot(a.question[0].items, b.question[0].items)
        a.set_rcode(16)  # BADVERS: the extended rcode is kept in the OPT's TTL
        self.assertEqual(b.rcode(), 0)

    def test_flags_copied(self) -> None:
        """The engine's defaults are copied, not shared, and REFRESH is the caller's."""
        self.engine.options.set("NO_0X20", True)
        data = dns.message.make_query("a.lab.", "A", use_edns=0, want_dnssec=True).to_wire()
        req, _ = self.pair(data, "udp", None)
        self.assertTrue(req.flags.NO_0X20 and req.flags.DNSSEC_WANT)
        self.assertFalse(req.flags.REFRESH)
        req.flags.NO_CACHE = True
        self.assertFalse(self.engine.options.NO_CACHE)
        self.assertFalse(self.engine.options.DNSSEC_WANT)
        self.engine.options.set("REFRESH", True)
        self.assertTrue(self.pair(data, "udp", None)[0].flags.REFRESH)
        self.assertFalse(self.pair(data, "udp", False)[0].flags.REFRESH)
        with self.assertRaises(AttributeError):
            req.flags.NO_CAHCE = True  # the check stays for everyone else

    def test_class_defaults_per_request(self) -> None:
        """State kept by the class until a request sets it is per request once set."""
        data = dns.message.make_query("a.lab.", "A").to_wire()
        one, two = self.pair(data, "udp", None)
        one.cacheable = False
        one.cached = True
        one.trace = ["x"]
        self.assertEqual((two.cacheable, two.cached, two.trace), (True, False, None))
        self.assertIsNot(one.ede, two.ede)
        self.assertIsNot(one.vars, two.vars)
        self.assertIsNot(one.on_finish, two.on_finish)

    def test_without_engine(self) -> None:
        data = dns.message.make_query("a.lab.", "A", use_edns=0, payload=4096).to_wire()
        query = dns.message.from_wire(data)
        req = Request(None, data, query, None, None, "udp", 0.0)
        self.assertEqual(vars(req.flags), {**vars(Flags()), "DNSSEC_WANT": False})
        self.assertEqual(req.payload, 1232)


def _old_payload(req: Request) -> int:
    """Request.payload as the property computed it before it was kept."""
    if req.transport != "udp":
        return 65535
    query = req.query
    if query.edns < 0:
        return 512
    return max(512, min(query.payload, req.engine.net.udp_payload))


def _attrs(message: dns.message.Message) -> dict[str, Any]:
    out = dict(vars(message))
    out["sections"] = [[(r.name.labels, r.rdclass, r.rdtype, r.covers, r.deleting, r.ttl,
                         list(r)) for r in section] for section in message.sections]
    out["opt"] = None if message.opt is None else (message.opt.ttl, list(message.opt))
    out["flags"] = int(message.flags)
    return out


class MakeAnswerTests(unittest.TestCase):
    def test_template_matches_constructor(self) -> None:
        """PlainQuery.answer's message has every attribute dnspython's has."""
        data = dns.message.make_query("x.lab.", "A").to_wire()
        fast = fast_query(data)
        assert fast is not None
        plain = PlainQuery.read(data, fast)
        assert plain is not None
        ours = plain.answer()
        theirs = make_answer(dns.message.from_wire(data))
        self.assertEqual(_attrs(ours), _attrs(theirs))
        self.assertEqual(set(vars(ours)), set(vars(dns.message.QueryMessage())))


class OptMemoTests(unittest.TestCase):
    def test_long_records_not_kept(self) -> None:
        """OPT records of up to 64 KB of options are read, but not pinned in the memo."""
        from kresolver.resolve import request

        for size in (60000, 8):
            data = dns.message.make_query(
                "a.lab.", "A", use_edns=0, payload=1400,
                options=[dns.edns.GenericOption(65001, b"p" * size)],
            ).to_wire(max_size=65535)
            fast = fast_query(data)
            assert fast is not None
            record = data[fast.qend + 1 :]
            plain = PlainQuery.read(data, fast)
            assert plain is not None and plain.opt is not None
            self.assertEqual((plain.payload, len(plain.opt[0].options[0].data)), (1400, size))
            self.assertEqual(plain.message(data), dns.message.from_wire(data))
            self.assertEqual(record in request._OPTS, size == 8)


class QuestionErrorTests(unittest.TestCase):
    def test_meta_types_prefilter(self) -> None:
        """Every type outside _META_TYPES is fine in class IN: the skipped call says so."""
        for rdtype in range(65536):
            if rdtype not in _META_TYPES:
                self.assertIsNone(question_error(rdtype, dns.rdataclass.IN), rdtype)
        self.assertIsNotNone(question_error(dns.rdatatype.AXFR, dns.rdataclass.IN))
        self.assertIsNone(question_error(dns.rdatatype.ANY, dns.rdataclass.IN))


class AccountTests(unittest.TestCase):
    """account() counts as the seed's names say, for every rcode and latency."""

    def test_counters(self) -> None:
        handler = QueryHandler(Engine(reactor))
        names = {0: "answer.noerror", 2: "answer.servfail", 3: "answer.nxdomain"}
        rng = random.Random(5)
        for _ in range(300):
            rcode = rng.choice([0, 0, 1, 2, 3, 4, 5, 9, 15])
            ancount = rng.choice([0, 1, 2, 256, 257])
            latency = rng.choice([0.0, 0.5, 1.0, 3.0, 10.0, 77.7, 1500.0, 2000.0])
            cached = rng.random() < 0.5
            wire = bytes((1, 2, 0x81, 0x80 | rcode, 0, 1)) + ancount.to_bytes(2, "big") + \
                b"\x00" * 4
            before = dict(handler.metrics)
            handler.account(wire, latency, cached)
            name = names.get(rcode, "answer.other")
            if rcode == 0 and ancount == 0:
                name = "answer.nodata"
            expected = dict(before)
            for key in ("answer.total", name, bucket(latency)) + (
                    ("answer.cached",) if cached else ()):
                expected[key] = expected.get(key, 0) + 1
            self.assertEqual(handler.metrics, expected)

    def test_request_counters(self) -> None:
        engine = Engine(reactor)
        handler = QueryHandler(engine)
        data = dns.message.make_query("a.lab.", "A").to_wire()
        for transport in ("udp", "tcp", "doh"):
            fast = fast_query(data)
            # a class other than IN: answered before any layer, counted all the same
            bad = data[:-2] + b"\x00\x03"
            handler.full(bad, None, None, transport, fast_query(bad))
            del fast
        self.assertEqual(
            {k: v for k, v in handler.metrics.items() if k.startswith("request.")},
            {"request.total": 3, "request.udp": 1, "request.tcp": 1, "request.doh": 1},
        )


class PushTests(unittest.TestCase):
    def test_query_flags_are_a_copy(self) -> None:
        data = dns.message.make_query("a.lab.", "A", use_edns=0, want_dnssec=True).to_wire()
        req = Request(Engine(reactor), data, dns.message.from_wire(data), None, None, "udp", 0.0)
        one = req.push(req.qname, req.qtype)
        two = req.push(req.qname, 2, parent=one)
        self.assertEqual((one.uid, two.uid), (1, 2))
        self.assertEqual(req.rplan, [one, two])
        self.assertEqual(req.resolved, [one, two])
        self.assertEqual(vars(one.flags), vars(req.flags))
        one.flags.NO_CACHE = True
        self.assertFalse(req.flags.NO_CACHE or two.flags.NO_CACHE)
        self.assertTrue(two.flags.DNSSEC_WANT)
        with self.assertRaises(AttributeError):
            two.flags.NO_CAHCE = True
