"""The wire helpers of the fast path, and the answer cache over a Clock."""

from __future__ import annotations

import struct

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rrset
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial import unittest

from kresolver.cache.answers import MAX_AGE, AnswerCache
from kresolver.cache.storage.memory import MemoryStorage
from kresolver.wire import (
    KEY_AD,
    KEY_CD,
    KEY_DO,
    KEY_EDNS,
    WireError,
    fast_query,
    header_only,
    min_ttl,
    skip_name,
    ttl_offsets,
)


def wire(name: str = "www.example.com.", rdtype: str = "A", **kwargs: object) -> bytes:
    return dns.message.make_query(name, rdtype, **kwargs).to_wire()  # type: ignore[arg-type]


def answer_to(data: bytes, ttl: int = 300, count: int = 1) -> bytes:
    query = dns.message.from_wire(data)
    response = dns.message.make_response(query)
    addresses = [f"127.0.0.{i + 1}" for i in range(count)]
    response.answer.append(dns.rrset.from_text(query.question[0].name, ttl, "IN", "A",
                                               *addresses))
    return response.to_wire()


class FastQueryTests(unittest.TestCase):
    @settings(max_examples=500, deadline=None)
    @given(
        base=st.sampled_from(["plain", "edns", "do cd ad", "options", "small payload"]),
        edits=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=3),
        cut=st.integers(0, 200),
    )
    def test_agrees_with_dnspython(
        self, base: str, edits: list[tuple[int, int]], cut: int
    ) -> None:
        """Whatever fast_query keys (mutated queries among them) is a plain query as
        dnspython reads it, keyed by its question, EDNS and flags."""
        data = bytearray({
            "plain": wire("Www.Example.LAB.", use_edns=False),
            "edns": wire("x.lab.", "AAAA", use_edns=0, payload=1232),
            "do cd ad": wire("x.lab.", "DS", want_dnssec=True),
            "options": wire("x.lab.", "TXT", use_edns=0,
                            options=[dns.edns.GenericOption(10, b"c" * 8)]),
            "small payload": wire("x.lab.", use_edns=0, payload=100),
        }[base])
        if base == "do cd ad":
            data[3] |= 0x30
        for where, value in edits:
            data[where % len(data)] = value
        if cut % 5 == 0:
            del data[cut % len(data):]
        fast = fast_query(bytes(data))
        if fast is None:
            return
        try:
            msg = dns.message.from_wire(bytes(data))
        except dns.exception.DNSException:
            return  # options dnspython refuses: the full path parses (and refuses) those
        self.assertEqual(
            (msg.opcode(), len(msg.question), msg.answer, msg.authority, msg.additional),
            (dns.opcode.QUERY, 1, [], [], []),
        )
        self.assertFalse(msg.flags & dns.flags.QR)
        self.assertTrue(msg.flags & dns.flags.RD)
        self.assertIn(msg.edns, (-1, 0))
        question = msg.question[0]
        flags = (KEY_CD if msg.flags & dns.flags.CD else 0) | (
            KEY_AD if msg.flags & dns.flags.AD else 0)
        if msg.edns == 0:
            flags |= KEY_EDNS | (KEY_DO if msg.ednsflags & dns.flags.DO else 0)
        self.assertEqual(
            fast.key,
            question.name.canonicalize().to_wire()
            + struct.pack(">HHB", question.rdtype, question.rdclass, flags),
        )
        self.assertEqual(fast.qend, 12 + len(question.name.to_wire()) + 4)
        self.assertEqual(fast.payload, max(512, msg.payload) if msg.edns == 0 else 512)

    def test_plain(self) -> None:
        data = wire(use_edns=False)
        fast = fast_query(data)
        assert fast is not None
        self.assertEqual(fast.key, b"\x03www\x07example\x03com\x00\x00\x01\x00\x01\x00")
        self.assertEqual(fast.qend, len(data))
        self.assertEqual(fast.payload, 512)

    def test_edns(self) -> None:
        data = wire(use_edns=0, payload=4096)
        fast = fast_query(data)
        assert fast is not None
        self.assertEqual(fast.key[-1], KEY_EDNS)
        self.assertEqual(fast.payload, 4096)
        self.assertEqual(fast.qend, 12 + 17 + 4)

    def test_small_payload_counts_as_512(self) -> None:
        fast = fast_query(wire(use_edns=0, payload=100))
        assert fast is not None
        self.assertEqual(fast.payload, 512)

    def test_flags_in_key(self) -> None:
        keys = set()
        for flags, ednsflags, expected in [
            (0, 0, KEY_EDNS),
            (0, dns.flags.DO, KEY_EDNS | KEY_DO),
            (dns.flags.CD, 0, KEY_EDNS | KEY_CD),
            (dns.flags.AD, 0, KEY_EDNS | KEY_AD),
            (dns.flags.AD | dns.flags.CD, dns.flags.DO, KEY_EDNS | KEY_DO | KEY_CD | KEY_AD),
        ]:
            query = dns.message.make_query("a.example.", "A", use_edns=0, ednsflags=ednsflags)
            query.flags |= flags
            fast = fast_query(query.to_wire())
            assert fast is not None
            self.assertEqual(fast.key[-1], expected)
            keys.add(fast.key)
        self.assertEqual(len(keys), 5)

    def test_no_rd_takes_the_full_path(self) -> None:
        """RD=0 is refused (refuse_nord) or answered on the full path, never stored answers."""
        without = dns.message.make_query("a.example.", "A")
        without.flags &= ~dns.flags.RD
        self.assertIsNone(fast_query(without.to_wire()))
        self.assertIsNotNone(fast_query(dns.message.make_query("a.example.", "A").to_wire()))

    def test_case_insensitive_key(self) -> None:
        a, b = fast_query(wire("WWW.Example.COM.")), fast_query(wire("www.example.com."))
        assert a is not None and b is not None
        self.assertEqual(a.key, b.key)

    def test_type_and_class_in_key(self) -> None:
        keys = {fast_query(wire(rdtype=t)).key for t in ("A", "AAAA", "MX")}  # type: ignore
        self.assertEqual(len(keys), 3)

    def test_edns_version_1_takes_full_path(self) -> None:
        self.assertIsNone(fast_query(wire(use_edns=1)))

    def test_option_in_opt_is_accepted(self) -> None:
        """Options (a cookie) do not change the key; the OPT is still read to its end."""
        data = dns.message.make_query(
            "a.example.", "A", use_edns=0,
            options=[dns.edns.GenericOption(dns.edns.COOKIE, b"12345678")]).to_wire()
        fast = fast_query(data)
        assert fast is not None
        plain = fast_query(wire("a.example.", use_edns=0))
        assert plain is not None
        self.assertEqual(fast.key, plain.key)

    def test_compression_pointer_in_question(self) -> None:
        data = bytearray(wire("a.example.", use_edns=False))
        data[12:] = b"\xc0\x0c" + bytes(data[-4:])
        self.assertIsNone(fast_query(bytes(data)))

    def test_trailing_garbage(self) -> None:
        self.assertIsNone(fast_query(wire(use_edns=False) + b"\x00"))
        self.assertIsNone(fast_query(wire(use_edns=0) + b"junk"))

    def test_truncated(self) -> None:
        data = wire(use_edns=0)
        for end in range(len(data)):
            self.assertIsNone(fast_query(data[:end]), end)

    def test_not_a_plain_query(self) -> None:
        data = bytearray(wire())
        data[2] |= 0x80  # a response
        self.assertIsNone(fast_query(bytes(data)))
        data = bytearray(wire())
        data[2] |= 4 << 3  # NOTIFY
        self.assertIsNone(fast_query(bytes(data)))
        for count_at in (4, 6, 8):  # QDCOUNT 2, ANCOUNT 1, NSCOUNT 1
            data = bytearray(wire())
            data[count_at + 1] += 1
            self.assertIsNone(fast_query(bytes(data)))
        data = bytearray(wire())
        data[5] = 0  # QDCOUNT 0
        self.assertIsNone(fast_query(bytes(data)))
        data = bytearray(wire())
        data[11] = 2  # ARCOUNT 2
        self.assertIsNone(fast_query(bytes(data)))

    def test_additional_that_is_not_opt(self) -> None:
        query = dns.message.make_query("a.example.", "A", use_edns=False)
        query.additional.append(dns.rrset.from_text("a.example.", 1, "IN", "A", "127.0.0.1"))
        self.assertIsNone(fast_query(query.to_wire()))

    def test_long_label_refused(self) -> None:
        data = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x40" + b"a" * 64 \
            + b"\x00\x00\x01\x00\x01"
        self.assertIsNone(fast_query(data))

    def test_name_running_off_the_end(self) -> None:
        data = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3fabc"
        self.assertIsNone(fast_query(data))


class TtlOffsetTests(unittest.TestCase):
    def test_offsets_skip_opt(self) -> None:
        query = dns.message.make_query("a.example.", "A", use_edns=0)
        response = dns.message.make_response(query)
        response.answer.append(dns.rrset.from_text("a.example.", 100, "IN", "A", "127.0.0.1",
                                                   "127.0.0.2"))
        response.authority.append(dns.rrset.from_text(
            "example.", 200, "IN", "NS", "ns.example."))
        response.additional.append(dns.rrset.from_text("ns.example.", 300, "IN", "A",
                                                       "127.0.0.3"))
        data = response.to_wire()
        offsets = ttl_offsets(data)
        self.assertEqual(len(offsets), 4)  # two A, one NS, one glue A; not the OPT
        ttls = [struct.unpack_from(">I", data, off)[0] for off in offsets]
        self.assertEqual(ttls, [100, 100, 200, 300])
        self.assertEqual(min_ttl(data, offsets), 100)
        self.assertEqual(min_ttl(data, offsets[::-1]), 100)
        self.assertEqual(min_ttl(data, offsets[:1:-1]), 200)
        self.assertEqual(min_ttl(data, offsets[3:]), 300)

    def test_no_records(self) -> None:
        data = dns.message.make_response(dns.message.make_query("a.", "A")).to_wire()
        self.assertEqual(ttl_offsets(data), [])
        self.assertIsNone(min_ttl(data, []))

    def test_broken_messages(self) -> None:
        data = answer_to(wire())
        self.assertRaises(WireError, ttl_offsets, data[:10])
        self.assertRaises(WireError, ttl_offsets, data[:-1])
        self.assertRaises(WireError, ttl_offsets, data + b"\x00")
        self.assertRaises(WireError, ttl_offsets, data[:-8])

    def test_skip_name(self) -> None:
        self.assertEqual(skip_name(b"\x01a\x00", 0), 3)
        self.assertEqual(skip_name(b"\x01a\xc0\x0c", 0), 4)
        self.assertRaises(WireError, skip_name, b"\x01a\x80", 0)
        self.assertRaises(WireError, skip_name, b"\x05ab", 0)


class HeaderOnlyTests(unittest.TestCase):
    def test_formerr(self) -> None:
        data = wire("a.example.")
        out = header_only(data, dns.rcode.FORMERR)
        assert out is not None
        self.assertEqual(out[:2], data[:2])
        message = dns.message.from_wire(out)
        self.assertEqual(message.rcode(), dns.rcode.FORMERR)
        self.assertTrue(message.flags & dns.flags.QR)
        self.assertTrue(message.flags & dns.flags.RD)
        self.assertEqual(len(out), 12)

    def test_opcode_kept(self) -> None:
        data = bytearray(wire())
        data[2] = 4 << 3  # NOTIFY, no RD
        out = header_only(bytes(data), dns.rcode.NOTIMP)
        assert out is not None
        self.assertEqual(out[2], 0x80 | 4 << 3)
        self.assertEqual(out[3] & 0x0F, dns.rcode.NOTIMP)

    def test_nothing_for_short_or_response(self) -> None:
        self.assertIsNone(header_only(b"\x00" * 11, dns.rcode.FORMERR))
        self.assertIsNone(header_only(b"\x00\x00\x80" + b"\x00" * 9, dns.rcode.FORMERR))


class AnswerCacheTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.answers = AnswerCache(MemoryStorage(1 << 20, self.clock), self.clock)

    def stored(self, query: bytes, ttl: int = 300, count: int = 1) -> bytes:
        fast = fast_query(query)
        assert fast is not None
        answer = answer_to(query, ttl, count)
        self.assertTrue(self.answers.store(fast, answer))
        return answer

    def lookup(self, query: bytes, limit: int = 65535) -> bytes | None:
        fast = fast_query(query)
        assert fast is not None
        return self.answers.lookup(query, fast, limit)

    def ttls(self, data: bytes) -> list[int]:
        return [rr.ttl for rr in dns.message.from_wire(data).answer]

    def test_hit_is_the_stored_answer(self) -> None:
        query = wire()
        answer = self.stored(query)
        self.assertEqual(self.lookup(query), answer)
        self.assertEqual(self.answers.hits, 1)

    def test_offsets_given_are_used(self) -> None:
        """store() with the TTL offsets render() reported keeps what it finds itself."""
        query = wire()
        fast = fast_query(query)
        assert fast is not None
        answer = answer_to(query, 100, 3)
        self.assertTrue(self.answers.store(fast, answer))
        found = self.answers.storage.get(fast.key)
        self.assertTrue(self.answers.store(fast, answer, ttl_offsets(answer)))
        self.assertEqual(self.answers.storage.get(fast.key), found)
        self.assertFalse(self.answers.store(fast, answer, []))  # no TTL: not kept
        self.clock.advance(30)
        self.assertTrue(self.answers.store(fast, answer, ttl_offsets(answer)[:1]))
        self.clock.advance(10)
        hit = self.lookup(query)
        assert hit is not None
        ttls = [struct.unpack_from(">I", hit, off)[0] for off in ttl_offsets(hit)]
        self.assertEqual(ttls, [90, 100, 100])  # only the TTL it was told of counts down

    def test_ttl_counts_down_and_expires(self) -> None:
        query = wire()
        self.stored(query, ttl=100)
        self.clock.advance(0.9)
        self.assertEqual(self.ttls(self.lookup(query)), [100])  # type: ignore[arg-type]
        self.clock.advance(40)
        self.assertEqual(self.ttls(self.lookup(query)), [60])  # type: ignore[arg-type]
        self.clock.advance(59)
        self.assertEqual(self.ttls(self.lookup(query)), [1])  # type: ignore[arg-type]
        self.clock.advance(1)
        self.assertIsNone(self.lookup(query))

    def test_kept_no_longer_than_max_age(self) -> None:
        query = wire()
        self.stored(query, ttl=86400)
        self.clock.advance(MAX_AGE - 1)
        self.assertEqual(self.ttls(self.lookup(query)), [86400 - MAX_AGE + 1])  # type: ignore
        self.clock.advance(1)
        self.assertIsNone(self.lookup(query))

    def test_id_and_case_patched(self) -> None:
        self.stored(wire("www.example.com."))
        query = dns.message.make_query("WwW.ExAmple.COM.", "A")
        query.id = 4711
        hit = self.lookup(query.to_wire())
        assert hit is not None
        message = dns.message.from_wire(hit)
        self.assertEqual(message.id, 4711)
        self.assertTrue(message.flags & dns.flags.RD)
        self.assertEqual(message.question[0].name.to_text(), "WwW.ExAmple.COM.")
        self.assertEqual(message.answer[0].name.to_text().lower(), "www.example.com.")

    def test_too_big_for_limit(self) -> None:
        query = wire()
        answer = self.stored(query, count=40)
        self.assertIsNone(self.lookup(query, limit=len(answer) - 1))
        self.assertEqual(self.lookup(query, limit=len(answer)), answer)

    def test_different_flags_miss(self) -> None:
        self.stored(wire(use_edns=0))
        self.assertIsNone(self.lookup(wire(use_edns=0, ednsflags=dns.flags.DO)))
        self.assertIsNone(self.lookup(wire(use_edns=False)))

    def test_not_stored_without_ttl_or_when_disabled(self) -> None:
        query = wire()
        fast = fast_query(query)
        assert fast is not None
        empty = dns.message.make_response(dns.message.from_wire(query)).to_wire()
        self.assertFalse(self.answers.store(fast, empty))
        self.assertFalse(self.answers.store(fast, answer_to(query, ttl=0)))
        self.assertFalse(self.answers.store(fast, b"\x00" * 12 + b"junk"))
        self.answers.enabled = False
        self.assertFalse(self.answers.store(fast, answer_to(query)))
        self.assertIsNone(self.lookup(query))

    def test_clear(self) -> None:
        query = wire()
        self.stored(query)
        self.answers.clear()
        self.assertIsNone(self.lookup(query))
