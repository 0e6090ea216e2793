"""read_response against its specification: dnspython's parse followed by normalize.

Every case is checked both ways: the RRsets must be equal in every detail (owner bytes,
class, type, covered type, TTL, rdata in order), and a message dnspython refuses must
be refused too.  A property test mutates valid messages at random for the same check.
"""

from __future__ import annotations

import collections
import random
import socket
import time
from typing import Any

import dns.dnssec
import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.IN.A
import dns.rrset
import dns.tsig
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from kresolver.resolve.answer import normalize
from kresolver.resolve.iterate import classify
from kresolver.resolve.response import (
    AddressRdata,
    NsecRdata,
    Response,
    ResponseError,
    SignatureRdata,
    read_response,
)
from kresolver.wire import skip_name, ttl_offsets

N = dns.name.from_text
# dnspython remembers the generic class for (ANY, A) once a record of class ANY and type A
# is parsed (mutated messages have them), and then hands it out for the A of any class
# not asked for before: CH A, which these tests make, is asked for first
dns.rdata.get_rdata_class(dns.rdataclass.CH, dns.rdatatype.A)


def rr(text: str) -> dns.rrset.RRset:
    owner, ttl, rdclass, rdtype, *rdata = text.split(None, 4)
    return dns.rrset.from_text(owner, int(ttl), rdclass, rdtype, *rdata[0].split("|"))


def message(
    answer: list[str] = (), authority: list[str] = (), additional: list[str] = (), *,
    qname: str = "wWw.ExAmple.lab.", qtype: str = "A", edns: bool = True,
    options: list[dns.edns.Option] = (), rcode: int = dns.rcode.NOERROR,
) -> dns.message.Message:
    query = dns.message.make_query(qname, qtype, use_edns=0 if edns else False)
    msg = dns.message.make_response(query)
    msg.flags |= dns.flags.AA
    msg.set_rcode(rcode)
    if edns:
        msg.use_edns(0, dns.flags.DO, 1232, options=list(options))
    msg.answer.extend(rr(t) for t in answer)
    msg.authority.extend(rr(t) for t in authority)
    msg.additional.extend(rr(t) for t in additional)
    return msg


def signed() -> dns.message.Message:
    key = ec.generate_private_key(ec.SECP256R1())
    dnskey = dns.dnssec.make_dnskey(key.public_key(), dns.dnssec.Algorithm.ECDSAP256SHA256)
    now = int(time.time())
    data = rr("WwW.example.LAB. 300 IN A 192.0.2.1|192.0.2.2")
    sig = dns.dnssec.sign(data, key, N("Example.LAB."), dnskey, inception=now - 10,
                          expiration=now + 3600)
    nsec = rr("a.example.lab. 300 IN NSEC Zz.Example.lab. A RRSIG NSEC")
    nsec_sig = dns.dnssec.sign(nsec, key, N("example.lab."), dnskey, inception=now - 10,
                               expiration=now + 3600)
    msg = message()
    msg.answer.append(data)
    msg.answer.append(dns.rrset.from_rdata(data.name, 300, sig))
    msg.authority.append(nsec)
    msg.authority.append(dns.rrset.from_rdata(nsec.name, 300, nsec_sig))
    return msg


CASES = {
    "a": message(["wWw.ExAmple.lab. 300 IN A 192.0.2.1|192.0.2.2"]),
    "referral": message(
        [],
        ["ExAmple.lab. 3600 IN NS NS1.example.lab.|ns2.EXAMPLE.lab.|ns.other.lab.",
         "example.lab. 3600 IN DS 12345 13 2 " + "ab" * 32],
        ["ns1.example.lab. 3600 IN A 127.0.51.1", "NS2.example.lab. 3600 IN AAAA ::1"],
    ),
    "chain": message(
        ["www.example.lab. 300 IN CNAME Alias.Example.lab.",
         "alias.example.lab. 300 IN DNAME Target.Other.lab.",
         "x.alias.example.lab. 300 IN CNAME x.TARGET.other.lab.",
         "x.target.other.lab. 60 IN MX 10 Mail.Example.lab."],
    ),
    "negative": message(
        [], ["Example.lab. 300 IN SOA NS1.Example.lab. Host.Master.lab. 1 2 3 4 5"],
        rcode=dns.rcode.NXDOMAIN,
    ),
    "types": message(
        ["www.example.lab. 300 IN TXT \"Hello\" \"World\"",
         "www.example.lab. 300 IN SRV 1 2 3 Srv.Example.lab.",
         "www.example.lab. 300 IN PTR Ptr.Example.lab.",
         "www.example.lab. 300 IN NAPTR 1 2 \"u\" \"E2U+sip\" \"\" Repl.Example.lab.",
         "www.example.lab. 300 IN CAA 0 issue \"ca.lab\""],
    ),
    "merging": message(
        ["www.example.lab. 300 IN A 192.0.2.1", "WWW.example.lab. 100 IN A 192.0.2.2",
         "www.example.lab. 300 IN A 192.0.2.1", "www.EXAMPLE.lab. 300 IN NS a.lab.",
         "www.example.lab. 50 IN CNAME one.lab.", "www.example.lab. 70 IN CNAME two.lab."],
    ),
    "big ttl": message(["www.example.lab. 4294967295 IN A 192.0.2.1"]),
    "no edns": message(["www.example.lab. 300 IN A 192.0.2.1"], edns=False),
    "options": message(
        ["www.example.lab. 300 IN A 192.0.2.1"],
        options=[dns.edns.GenericOption(dns.edns.NSID, b"nsd"),
                 dns.edns.EDEOption(dns.edns.EDECode.OTHER, "hi")],
    ),
    "extended rcode": message(
        [], options=[], rcode=dns.rcode.BADVERS,
    ),
    "signed": signed(),
    "nsec": message(
        ["wWw.example.lab. 300 IN NSEC Zz.EXAMPLE.lab. A NS SOA RRSIG NSEC TYPE1234",
         "a.example.lab. 300 IN NSEC \\000.a.example.lab. TXT"],
        ["b.example.lab. 300 IN NSEC example.lab. A CAA TYPE65000"],
    ),
}


def answer_start(wire: bytes) -> int:
    """Where the answer section of C{wire} starts."""
    pos = 12
    for _ in range(wire[5]):
        pos = skip_name(wire, pos) + 4
    return pos


def answer_end(wire: bytes) -> int:
    """Where the answer section of C{wire} ends."""
    pos = answer_start(wire)
    for _ in range(wire[7]):
        pos = skip_name(wire, pos)
        pos += 10 + (wire[pos + 8] << 8 | wire[pos + 9])
    return pos


def srv_in_authority() -> bytes:
    """A response whose authority holds an SRV record with its target compressed into
    the question (dnspython reads such names; it never writes them)."""
    msg = message(["www.example.lab. 300 IN A 192.0.2.1"],
                  ["example.lab. 300 IN SRV 1 2 3 www.example.lab."])
    wire = msg.to_wire()
    target = wire.rindex(b"\x03www\x07example\x03lab\x00")
    # the target as a pointer to the question, the rdata 6 + 2 octets long
    return wire[: target - 8] + b"\x00\x08" + wire[target - 6 : target] + b"\xc0\x0c" + wire[
        target + 17 :
    ]


def tailed() -> dict[str, bytes]:
    """Messages with an authority or additional section, the bench's shape among them."""
    bench = message(["n000123.bench.lab. 3600 IN A 10.0.0.123"],
                    ["bench.lab. 3600 IN NS ns.bench.lab."],
                    ["ns.bench.lab. 3600 IN A 127.0.53.23"], qname="n000123.bench.lab.")
    out = {name: msg.to_wire() for name, msg in CASES.items() if msg.authority or msg.additional}
    out["bench"] = bench.to_wire()
    out["srv"] = srv_in_authority()
    return out


def parse_both(wire: bytes) -> tuple[object, object]:
    try:
        theirs: object = dns.message.from_wire(wire)
    except Exception as e:  # any refusal is the reference answer
        theirs = type(e)
    try:
        ours: object = read_response(wire)
    except ResponseError as e:
        ours = e
    return theirs, ours


def kind(rdata: dns.rdata.Rdata) -> type:
    """The dnspython class of C{rdata} (read_response's A and RRSIG records are of
    subclasses)."""
    if type(rdata) in (AddressRdata, NsecRdata, SignatureRdata):
        return type(rdata).__mro__[1]
    return type(rdata)


def shape(rrsets: list[dns.rrset.RRset]) -> list[tuple[object, ...]]:
    return [
        (r.name.labels, int(r.rdclass), int(r.rdtype), int(r.covers), r.ttl,
         [rd.to_digestable() for rd in r], [kind(rd) for rd in r])
        for r in rrsets
    ]


TAILED = tailed()


def lone() -> dict[str, bytes]:
    """Messages whose answer is one record owned by a pointer to the question, of
    types with names in their rdata and without."""
    out = {}
    for rdtype, rdata in (
        ("A", "192.0.2.1"), ("AAAA", "2001:db8::1"), ("TXT", '"x"'), ("CNAME", "a.lab."),
        ("MX", "10 www.example.lab."), ("DS", f"1 13 2 {'ab' * 32}"),
    ):
        for tail in ([], ["example.lab. 300 IN NS ns.example.lab."]):
            msg = message([f"wWw.ExAmple.lab. 300 IN {rdtype} {rdata}"], tail)
            out[f"{rdtype} {len(tail)}"] = msg.to_wire()
    out["no edns"] = CASES["no edns"].to_wire()
    out["big ttl"] = CASES["big ttl"].to_wire()
    return out


LONE = lone()


class ReadResponseTests(unittest.TestCase):
    def assertSame(self, wire: bytes) -> None:
        theirs, ours = parse_both(wire)
        if isinstance(theirs, type):
            self.assertIsInstance(ours, ResponseError, f"dnspython refused ({theirs.__name__})")
            return
        self.assertFalse(isinstance(ours, ResponseError), f"we refused ({ours}), dnspython not")
        assert isinstance(theirs, dns.message.Message) and isinstance(ours, Response)
        self.assertEqual(ours.rcode(), theirs.rcode())
        self.assertEqual(ours.flags, int(theirs.flags))
        self.assertEqual(ours.id, theirs.id)
        for section in ("answer", "authority", "additional"):
            expected = [normalize(r) for r in getattr(theirs, section)]
            got = getattr(ours, section)
            self.assertEqual(shape(got), shape(expected), section)
            self.assertEqual(got, expected, section)

    def test_cases(self) -> None:
        for name, msg in CASES.items():
            with self.subTest(name=name):
                self.assertSame(msg.to_wire())

    def test_refused(self) -> None:
        good = CASES["a"].to_wire()
        bad = {
            "short": good[:11],
            "truncated": good[:-3],
            "trailing": good + b"\x00",
            "forward pointer": good[:12] + b"\xc0\x20" + good[14:],
            "self pointer": good[:12] + b"\xc0\x0c" + good[14:],
            "bad label type": good[:12] + b"\x80" + good[13:],
        }
        tsig = message(["a.lab. 1 IN A 192.0.2.1"])
        tsig.use_tsig(dns.tsig.Key("key.lab.", b"secret" * 4, dns.tsig.HMAC_SHA256))
        bad["tsig"] = tsig.to_wire()
        opt_in_answer = dns.message.from_wire(good)
        opt_in_answer.answer.append(dns.rrset.from_text(".", 0, 1232, "OPT"))
        bad["opt in answer"] = opt_in_answer.to_wire()
        # the OPT record's place: the additional section, once, owned by the root
        opt = good[good.rindex(b"\x00\x00\x29") :]
        plain = CASES["no edns"].to_wire()
        bad["opt in authority"] = plain[:8] + b"\x00\x01" + plain[10:] + opt
        two = bytearray(good + opt)
        two[11] += 1
        bad["two opts"] = bytes(two)
        bad["opt of a name"] = good[: -len(opt)] + b"\xc0\x0c" + opt[1:]
        bad["opt of the root"] = good
        # A name read before ("\\192\\019.a." at 19, its first part 19..23) is pointed at
        # (from 20, inside that part, reached by a pointer at 38): read again from 19 it
        # runs into the part that points at it, so the memo of names read may not serve it.
        record = b"\x00\x01\x00\x01\x00\x00\x0e\x10\x00\x04\x0a\x00\x00\x01"
        bad["pointer into the part pointing at it"] = (
            b"\x12\x34\x84\x00\x00\x01\x00\x02\x00\x00\x00\x00" + b"\x01a\x00\x00\x01\x00\x01"
            + b"\x02\xc0\x13\xc0\x0c" + record + b"\xc0\x14" + record
        )
        for name, wire in bad.items():
            with self.subTest(name=name):
                self.assertSame(wire)
        self.assertRaises(ResponseError, read_response, good[:-3])
        header = b"\x12\x34\x84\x00\x00\x00\x00\x01\x00\x00\x00\x00"
        record = b"\x00\x01\x00\x01\x00\x00\x00\x01\x00\x04\xc0\x00\x02\x01"
        for last in (61, 62):  # a name of 255 octets, and one of 256
            name = (b"\x3fA" + b"b" * 62) * 3 + bytes((last,)) + b"c" * last + b"\x00"
            self.assertSame(header + name + record)
            if last == 61:
                self.assertEqual(len(read_response(header + name + record).answer), 1)
            else:
                self.assertRaises(ResponseError, read_response, header + name + record)

    @settings(max_examples=400, deadline=None)
    @given(
        case=st.sampled_from(sorted(CASES)),
        edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3),
        cut=st.integers(0, 10_000),
    )
    def test_mutations(self, case: str, edits: list[tuple[int, int]], cut: int) -> None:
        wire = bytearray(CASES[case].to_wire())
        for where, value in edits:
            wire[12 + where % (len(wire) - 12)] = value
        if cut % 7 == 0:
            del wire[cut % len(wire):]
        self.assertSame(bytes(wire))

    def test_question(self) -> None:
        """The one question's name is read without the general name reader when it is
        uncompressed: of any case and length (255 octets, or one too many), cut short
        anywhere, compressed, a bad label type, the root: as dnspython reads it; the
        names pointed at in it then are the same."""
        header = b"\x12\x34\x84\x00\x00\x01\x00\x01\x00\x00\x00\x00"
        record = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x01\x00\x04\xc0\x00\x02\x01"
        suffix = b"\xc0\x10\x00\x01\x00\x01\x00\x00\x00\x01\x00\x04\xc0\x00\x02\x02"
        names = {
            "plain": b"\x03wWw\x07ExAmple\x03LAB\x00",
            "root": b"\x00",
            "pointer": b"\x03www\xc0\x02",
            "bad label type": b"\x03www\x40\x00",
        }
        for last in (61, 62):  # a name of 255 octets, and one of 256
            names[f"long {last}"] = (
                (b"\x3fA" + b"b" * 62) * 3 + bytes((last,)) + b"c" * last + b"\x00"
            )
        for name, qname in names.items():
            question = qname + b"\x00\x01\x00\x01"
            for cut in range(len(question) + 1):
                with self.subTest(name=name, cut=cut):
                    self.assertSame(header[:5] + b"\x01" + header[6:7] + b"\x00"
                                    + header[8:] + question[:cut])
            with self.subTest(name=name):
                self.assertSame(header + question + record)
                two = bytearray(header + question + record + suffix)
                two[7] = 2
                self.assertSame(bytes(two))
        for last in (59, 60):  # a question of 253 and 254 octets: an owner one label
            # longer, pointing at it, of 255 (read) and 256 (refused)
            qname = (b"\x3fA" + b"b" * 62) * 3 + bytes((last,)) + b"c" * last + b"\x00"
            wire = header + qname + b"\x00\x01\x00\x01" + b"\x01x" + record
            self.assertSame(wire)
            if last == 59:
                self.assertEqual(len(read_response(wire).answer[0].name.to_wire()), 255)
            else:
                self.assertRaises(ResponseError, read_response, wire)
        # an owner pointing at the second label of a question of 253 octets (its 189)
        qname = (b"\x3fA" + b"b" * 62) * 3 + b"\x3b" + b"c" * 59 + b"\x00"
        label = b"\x3f" + b"d" * 63
        for prefix, fits in ((label + b"\x01x", True), (label + b"\x02xy", False)):
            wire = header + qname + b"\x00\x01\x00\x01" + prefix + b"\xc0\x4c" + record[2:]
            self.assertSame(wire)
            self.assertEqual(fits, not isinstance(parse_both(wire)[1], ResponseError))
        read = read_response(header + names["plain"] + b"\x00\x01\x00\x01" + record)
        self.assertEqual(read.answer[0].name, N("www.example.lab."))
        self.assertEqual(read.answer[0].name.labels, (b"www", b"example", b"lab", b""))

    @settings(max_examples=400, deadline=None)
    @given(
        case=st.sampled_from(sorted(LONE)),
        edits=st.lists(st.tuples(st.integers(0, 15), st.integers(0, 255)), max_size=3),
        cut=st.integers(0, 40),
    )
    def test_lone_answer(self, case: str, edits: list[tuple[int, int]], cut: int) -> None:
        """An answer section of one record owned by a pointer is read without the loop
        over records: any change to its owner, header or rdata (a pointer elsewhere, or
        forwards, another type, class, length, TTL) or a message cut short reads as
        dnspython reads it."""
        wire = bytearray(LONE[case])
        start = answer_start(bytes(wire))
        for where, value in edits:
            wire[min(start + where, len(wire) - 1)] = value
        if cut < 20:
            del wire[len(wire) - cut :]
        self.assertSame(bytes(wire))

    @settings(max_examples=400, deadline=None)
    @given(
        case=st.sampled_from(sorted(TAILED)),
        edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.booleans()),
                       min_size=1, max_size=3),
    )
    def test_tail_memo(self, case: str, edits: list[tuple[int, int, bool]]) -> None:
        """The end of a message (authority, additional) read before serves again only
        while the names before it that it points at are the same: messages whose end is
        one read before, but not what precedes it (case changed, or any octet), read as
        dnspython reads them."""
        original = TAILED[case]
        read_response(original)  # its end is remembered
        end = answer_end(original)
        wire = bytearray(original)
        for where, value, flip in edits:
            where = 12 + where % (end - 12)
            wire[where] = wire[where] ^ 0x20 if flip else value
        self.assertSame(bytes(wire))
        self.assertSame(original)

    def test_tail_memo_cases(self) -> None:
        """Ends read before, after other questions: of another case, other names of the
        same length, a compressed question, another position; an end with a record read
        by dnspython's own parser (an SRV target compressed into the question)."""
        wire = TAILED["bench"]
        first = read_response(wire)
        qname = wire.index(b"\x05bench")
        for changed in (
            wire[:qname] + b"\x05BeNcH" + wire[qname + 6 :],
            wire[:qname] + b"\x05bxnch" + wire[qname + 6 :],
            wire[:qname] + b"\x05bench\x00\x00" + wire[qname + 8 :],
            wire[:12] + b"\x06n00123" + wire[20:],  # one octet shorter: elsewhere
        ):
            self.assertSame(changed)
        again = read_response(wire[:13] + b"x" + wire[14:])
        self.assertEqual(again.authority, first.authority)
        self.assertIs(again.authority[0], first.authority[0])  # shared, read-only
        self.assertIsNot(again.authority, first.authority)
        srv = TAILED["srv"]
        self.assertSame(srv)
        self.assertEqual(read_response(srv).authority[0][0].target, N("www.example.lab."))
        target = srv.index(b"\x03wWw")
        self.assertSame(srv[:target] + b"\x03wxw" + srv[target + 4 :])
        self.assertEqual(
            read_response(srv[:target] + b"\x03wxw" + srv[target + 4 :]).authority[0][0].target,
            N("wxw.example.lab."),
        )

    def test_memo_shares_rrsets_not_lists(self) -> None:
        """Authority and additional RRsets are shared with the memo (read-only); the
        section lists are each response's own; answers are never shared."""
        for wire in (CASES["referral"].to_wire(), TAILED["bench"]):
            first, second = read_response(wire), read_response(wire)
            self.assertEqual(first.authority, second.authority)
            self.assertIs(first.authority[0], second.authority[0])
            self.assertIsNot(first.authority, second.authority)
            self.assertIsNot(first.additional, second.additional)
            first.authority.clear()
            self.assertTrue(read_response(wire).authority)
        answer = TAILED["bench"]
        self.assertIsNot(read_response(answer).answer[0], read_response(answer).answer[0])

    def test_memo_never_swaps_a_long_authority_section(self) -> None:
        """Two answers laid out alike whose authority sections differ, too long for the
        memo, and the same additional section (the OPT only): the second must read as its
        own. (The memo once looked up the additional section alone and handed back the
        authority of whatever message had been stored under it: a way to poison.)"""

        def answer(prefix: str) -> bytes:
            query = dns.message.make_query("www.victim.lab.", "A", use_edns=0, payload=1232)
            msg = dns.message.make_response(query)
            msg.flags |= dns.flags.AA
            msg.authority.append(dns.rrset.from_text_list(
                "victim.lab.", 300, "IN", "NS",
                [f"{prefix}{i:02d}.example.net." for i in range(80)],
            ))
            return msg.to_wire(max_size=65535)

        evil, good = answer("evil-ns"), answer("good-ns")
        self.assertEqual(len(evil), len(good))
        read_response(evil)
        targets = {rd.target.to_text() for rd in read_response(good).authority[0]}
        self.assertIn("good-ns00.example.net.", targets)
        self.assertNotIn("evil-ns00.example.net.", targets)
        self.assertSame(good)

    def test_classify_agrees(self) -> None:
        for name, msg in CASES.items():
            with self.subTest(name=name):
                wire = msg.to_wire()
                ours = classify(read_response(wire), N("www.example.lab."), 1, N("lab."))
                theirs = classify(dns.message.from_wire(wire), N("www.example.lab."), 1,
                                  N("lab."))
                self.assertEqual(ours.kind, theirs.kind)
                self.assertEqual(ours.chain, theirs.chain)
                self.assertEqual(ours.target, theirs.target)
                self.assertEqual(ours.soa, theirs.soa)
                self.assertEqual(ours.proofs, theirs.proofs)
                self.assertEqual(repr(ours.cut), repr(theirs.cut))
                self.assertEqual(repr(ours.accepted), repr(theirs.accepted))


def query_cases() -> dict[str, bytes]:
    """Client queries of every shape fast_query takes."""
    ecs = dns.edns.ECSOption("192.0.2.0", 24)
    cases = {
        "plain": dns.message.make_query("wWw.Example.LAB.", "A", use_edns=False),
        "edns": dns.message.make_query("www.example.lab.", "AAAA", use_edns=0, payload=4096),
        "do cd": dns.message.make_query("www.example.lab.", "DS", want_dnssec=True),
        "options": dns.message.make_query(
            "x.lab.", "TXT", use_edns=0, options=[ecs, dns.edns.GenericOption(10, b"c" * 8)]
        ),
        "padding": dns.message.make_query("x.lab.", "A", use_edns=0, pad=128),
        "root": dns.message.make_query(".", "NS", use_edns=0),
        "any class": dns.message.make_query("x.lab.", "A", rdclass="CH"),
    }
    cases["do cd"].flags |= dns.flags.CD | dns.flags.AD
    wires = {name: msg.to_wire() for name, msg in cases.items()}
    ext = bytearray(wires["edns"])
    ext[-6] = 0xAB  # an extended rcode in a query: odd, but dnspython reads it
    wires["extended rcode"] = bytes(ext)
    long_name = (b"\x3f" + b"a" * 63) * 3 + b"\x3e" + b"b" * 62 + b"\x00"  # 256 octets
    wires["long name"] = wires["plain"][:12] + long_name + b"\x00\x01\x00\x01"
    bad_option = bytearray(wires["options"])
    bad_option[-9] = 99  # the last option's length runs past the end of the OPT
    wires["bad option"] = bytes(bad_option)
    return wires


class PlainQueryTests(unittest.TestCase):
    """A plain query read off the wire makes what dnspython's parser makes."""

    def test_same_as_dnspython(self) -> None:
        from kresolver.resolve.request import PlainQuery
        from kresolver.wire import fast_query

        for name, wire in query_cases().items():
            with self.subTest(name=name):
                fast = fast_query(wire)
                self.assertIsNotNone(fast)
                assert fast is not None
                plain = PlainQuery.read(wire, fast)
                ours = None if plain is None else plain.message(wire)
                try:
                    theirs = dns.message.from_wire(wire)
                except dns.exception.DNSException:
                    self.assertIsNone(ours)
                    continue
                self.assertIsNotNone(ours)
                assert ours is not None
                self.assertEqual(type(ours), type(theirs))
                self.assertEqual(ours, theirs)
                mine, reference = vars(ours), vars(theirs)
                self.assertEqual(sorted(mine), sorted(reference))
                for attribute in reference:
                    self.assertEqual(repr(mine[attribute]), repr(reference[attribute]),
                                     attribute)
                self.assertEqual(ours.question[0].name.labels, theirs.question[0].name.labels)
                self.assertEqual(ours.options, theirs.options)
                self.assertEqual(
                    (ours.edns, ours.ednsflags, ours.payload),
                    (theirs.edns, theirs.ednsflags, theirs.payload),
                )
                self.assertEqual(ours.to_wire(), theirs.to_wire())

    def test_answer_as_make_response_makes_it(self) -> None:
        from kresolver.resolve.request import make_answer

        def reference(query: dns.message.Message) -> dns.message.Message:
            answer = dns.message.make_response(query, recursion_available=True)
            answer.flags &= ~dns.flags.AA
            answer.flags |= query.flags & dns.flags.CD
            if query.edns >= 0:
                answer.use_edns(0, query.ednsflags & dns.flags.DO, 1232)
            return answer

        queries = {name: dns.message.from_wire(wire) for name, wire in query_cases().items()
                   if name not in ("long name", "bad option")}
        norec = dns.message.make_query("x.lab.", "A", use_edns=0)
        norec.flags = dns.flags.AA | dns.flags.TC
        queries["no rd, aa, tc"] = norec
        queries["notify"] = dns.message.make_query("x.lab.", "SOA")
        queries["notify"].set_opcode(dns.opcode.NOTIFY)
        for name, query in queries.items():
            with self.subTest(name=name):
                ours, theirs = make_answer(query), reference(query)
                self.assertEqual(type(ours), type(theirs))
                mine, expected = vars(ours), vars(theirs)
                self.assertEqual(sorted(mine), sorted(expected))
                for attribute in expected:
                    self.assertEqual(repr(mine[attribute]), repr(expected[attribute]),
                                     attribute)
                self.assertEqual(ours.to_wire(), theirs.to_wire())


class RenderTests(unittest.TestCase):
    """render() writes what dnspython's to_wire writes, byte for byte."""

    def messages(self) -> dict[str, dns.message.Message]:
        from kresolver.resolve.request import make_answer

        out: dict[str, dns.message.Message] = {}
        for name, wire in query_cases().items():
            try:
                query = dns.message.from_wire(wire)
            except dns.exception.DNSException:
                continue
            answer = make_answer(query)
            answer.answer.append(rr(f"{query.question[0].name} 300 IN A 192.0.2.1|192.0.2.2"))
            answer.answer.append(rr("alias.example.lab. 300 IN CNAME Www.Example.lab."))
            answer.authority.append(
                rr("Example.lab. 300 IN SOA ns1.example.lab. host.example.lab. 1 2 3 4 5")
            )
            answer.authority.append(rr("example.lab. 300 IN NS ns1.Example.lab.|ns2.other.lab."))
            answer.additional.append(rr("ns1.example.lab. 300 IN MX 10 mail.example.lab."))
            answer.additional.append(rr("ns1.example.lab. 300 IN TXT \"x\""))
            if answer.edns >= 0:
                answer.use_edns(0, answer.ednsflags, 1232, options=[
                    dns.edns.EDEOption(dns.edns.EDECode.STALE_ANSWER, "stale")])
            answer.set_rcode(dns.rcode.BADCOOKIE if answer.edns >= 0 else dns.rcode.NXDOMAIN)
            out[name] = answer
        for name, msg in CASES.items():  # signed ones go to dnspython's renderer
            out[f"upstream {name}"] = msg
        empty = make_answer(dns.message.from_wire(query_cases()["edns"]))
        empty.answer.append(dns.rrset.RRset(N("x.lab."), 1, 1))
        out["empty rrset"] = empty
        return out

    def test_same_bytes(self) -> None:
        import random

        from kresolver.resolve.response import render

        for name, msg in self.messages().items():
            with self.subTest(name=name):
                random.seed(7)
                theirs = msg.to_wire(max_size=65535)
                random.seed(7)
                offsets = [1]  # render adds to what is there
                ours = render(msg, 65535, offsets)
                self.assertEqual(ours, theirs)
                self.assertEqual(msg.wire, theirs)
                self.assertEqual(offsets, [1, *ttl_offsets(theirs)])
                size = len(theirs)
                random.seed(8)
                theirs = msg.to_wire(max_size=size)
                random.seed(8)
                self.assertEqual(render(msg, size), theirs)
                for limit in (size - 1, 0, 100, 70000):
                    try:
                        random.seed(9)
                        theirs = msg.to_wire(max_size=limit)
                    except dns.exception.TooBig:
                        offsets = []
                        self.assertRaises(dns.exception.TooBig, render, msg, limit, offsets)
                        self.assertEqual(offsets, [])  # nothing for what was not written
                    else:
                        random.seed(9)
                        self.assertEqual(render(msg, limit), theirs)
        big = self.messages()["edns"]
        big.answer.append(rr("big.lab. 1 IN TXT " + " ".join(['"' + "x" * 200 + '"'] * 3)))
        self.assertRaises(dns.exception.TooBig, render, big, 600)
        self.assertRaises(dns.exception.TooBig, big.to_wire, max_size=600)

    def test_question_suffixes(self) -> None:
        """A lone question's name is written at once and its suffixes put in the
        compression table only when another name is written: whichever comes first (an
        owner, a name in rdata, of any case), names after it compress against the
        question as dnspython's do."""
        from kresolver.resolve.request import make_answer
        from kresolver.resolve.response import render

        query = dns.message.make_query("wWw.Example.LAB.", "A", use_edns=0)
        qname = query.question[0].name
        firsts = [
            dns.rrset.from_text(qname, 300, "IN", "A", "192.0.2.1"),  # a pointer: no table
            dns.rrset.from_text(qname, 300, "IN", "CNAME", "a.EXAMPLE.lab."),  # in rdata
            dns.rrset.from_text(qname, 300, "IN", "MX", "10 example.lab."),
            rr("EXAMPLE.lab. 300 IN NS ns.example.LAB."),  # an owner that is a suffix
            rr("www.example.lab. 300 IN A 192.0.2.2"),  # the question's name, another object
            rr("other.lab. 300 IN TXT \"x\""),
        ]
        for first in firsts:
            for second in firsts:
                with self.subTest(first=first.to_text(), second=second.to_text()):
                    answer = make_answer(query)
                    answer.answer.append(first)
                    answer.authority.append(second)
                    answer.additional.append(rr("ns.Example.lab. 300 IN A 192.0.2.3"))
                    offsets: list[int] = []
                    ours = render(answer, 65535, offsets)
                    self.assertEqual(ours, answer.to_wire(max_size=65535))
                    self.assertEqual(offsets, ttl_offsets(ours))
        answer = make_answer(dns.message.make_query("rel.", "A"))
        answer.question[0].name = dns.name.from_text("rel", origin=None)
        self.assertRaises(dns.name.NeedAbsoluteNameOrOrigin, render, answer, 65535)
        self.assertRaises(dns.name.NeedAbsoluteNameOrOrigin, answer.to_wire)

    def test_random_messages(self) -> None:
        """Random messages render as dnspython renders them, TTL offsets and errors too:
        rdata of every kind (compressed names or not), names sharing suffixes in any
        case, owners that are the question's own name object, several questions (the
        root first, even), deleting classes, relative names, sizes that do not fit."""
        from kresolver.resolve.response import _address_rdata, render

        rng = random.Random(6891)
        words = ["a", "Bc", "lab", "LAB", "example", "ExAmple", "x-y", "n000123", "NS"]

        def text_name(relative: bool = False) -> str:
            labels = [rng.choice(words) for _ in range(rng.randint(0, 3))]
            if relative:
                return ".".join(labels or ["rel"])
            return ".".join([*labels, rng.choice(["lab", "Lab", "example.lab"])]) + "."

        def rdata_text(rdtype: str, relative: bool) -> str:
            target = text_name(relative)
            number = rng.randint(0, 65535)
            return {
                "A": f"10.{number >> 8}.{number & 255}.{rng.randint(0, 255)}",
                "AAAA": f"2001:db8::{number:x}",
                "TXT": f'"{target}" "x"',
                "MX": f"{number} {target}",
                "SOA": f"{target} {text_name(relative)} {number} 2 3 4 5",
                "SRV": f"1 2 {number} {target}",
                "RRSIG": f"A 13 2 300 20300101000000 20200101000000 {number} {target} AAAA",
                "SIG": f"A 13 2 300 20300101000000 20200101000000 {number} {target} AAAA",
                "NSEC": f"{target} A RRSIG NSEC",
                "DS": f"{number} 13 2 {'ab' * 32}",
                "CAA": '0 issue "ca.lab"',
                "NAPTR": f'1 2 "u" "E2U+sip" "" {target}',
                "AFSDB": f"{number % 3 + 1} {target}",
                "TYPE65280": "\\# 3 abcdef",
            }.get(rdtype, target)

        def rrset(owner: dns.name.Name) -> dns.rrset.RRset:
            relative = rng.random() < 0.03
            rdclass, rdtype = rng.choice(
                [("IN", t) for t in ("A", "AAAA", "TXT", "NS", "CNAME", "PTR", "DNAME", "MX",
                                     "SOA", "SRV", "RRSIG", "SIG", "NSEC", "DS", "CAA",
                                     "NAPTR", "AFSDB", "TYPE65280")]
                + [("CH", "A"), ("CH", "NS"), ("CH", "TXT")]
            )
            out = dns.rrset.RRset(owner, dns.rdataclass.from_text(rdclass),
                                  dns.rdatatype.from_text(rdtype))
            for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
                text = rdata_text(rdtype, relative)
                if rdclass == "CH" and rdtype == "A":
                    text = f"{text_name(relative)} {rng.randint(0, 0o177777):o}"
                rdata = dns.rdata.from_text(rdclass, rdtype, text, origin=None,
                                            relativize=False)
                if rdclass == "IN" and rdtype == "A" and rng.random() < 0.5:
                    rdata = _address_rdata(socket.inet_aton(rdata.address))  # read_response's
                out.add(rdata, rng.randint(0, 2**31 - 1))
            if rng.random() < 0.05:
                out.deleting = rng.choice([dns.rdataclass.ANY, dns.rdataclass.NONE])
            return out

        outcomes: collections.Counter[type] = collections.Counter()
        for case in range(400):
            msg = dns.message.Message(id=rng.randint(0, 65535))
            msg.flags = dns.flags.Flag(rng.randint(0, 0xFFFF) & ~0x7800)
            questions = [N(text_name()) for _ in range(rng.choice([0, 1, 1, 1, 2]))]
            if questions and rng.random() < 0.1:
                questions[0] = dns.name.root
            for qname in questions:
                msg.question.append(dns.rrset.RRset(qname, 1, rng.choice([1, 28, 2])))
            for section in (msg.answer, msg.authority, msg.additional):
                for _ in range(rng.choice([0, 1, 1, 2, 4])):
                    if questions and rng.random() < 0.5:
                        owner = questions[0]  # the question's own object
                    elif rng.random() < 0.02:
                        owner = dns.name.from_text(text_name(True), origin=None)
                    else:
                        owner = N(text_name())
                    section.append(rrset(owner))
            if rng.random() < 0.5:  # big enough for a limit to matter (512 at least)
                msg.additional.append(rr(f"big.lab. 1 IN TXT \"{'x' * 250}\"|\"{'y' * 250}\""))
            if rng.random() < 0.5:
                options = [dns.edns.EDEOption(dns.edns.EDECode.OTHER, "x")] * rng.randint(0, 1)
                msg.use_edns(0, rng.choice([0, dns.flags.DO]), 1232, options=options)
            size = 65535
            for attempt in range(2):
                # then about the size it took: it fits or it does not
                limit = rng.randint(size - 20, size + 20) if attempt else 65535
                with self.subTest(case=case, limit=limit):
                    seed = rng.random()
                    random.seed(seed)
                    try:
                        theirs: object = msg.to_wire(max_size=limit)
                    except Exception as e:  # the error is the reference answer
                        theirs = type(e)
                    random.seed(seed)
                    offsets: list[int] = [7]
                    try:
                        ours: object = render(msg, limit, offsets)
                    except Exception as e:
                        ours = type(e)
                    self.assertEqual(ours, theirs)
                    if isinstance(theirs, bytes):
                        self.assertEqual(offsets, [7, *ttl_offsets(theirs)])
                        size = max(len(theirs), 532)
                    else:
                        self.assertEqual(offsets, [7])
                    outcomes[theirs if isinstance(theirs, type) else bytes] += 1
        # most render; some are too big, some hold a relative name
        self.assertGreater(outcomes[bytes], 400)
        self.assertGreater(outcomes[dns.exception.TooBig], 50)
        self.assertGreater(outcomes[dns.name.NeedAbsoluteNameOrOrigin], 10)


class HelperTests(unittest.TestCase):
    def test_use_edns(self) -> None:
        from kresolver.resolve.response import use_edns

        options = [dns.edns.EDEOption(dns.edns.EDECode.OTHER, "x")]
        for flags, payload, opts in ((0, 1232, None), (0x8000, 4096, []), (0x18000, 512, None),
                                     (0x8000, 1232, options)):
            with self.subTest(flags=flags, payload=payload):
                ours = dns.message.make_response(dns.message.make_query("x.lab.", "A"))
                theirs = dns.message.make_response(dns.message.make_query("x.lab.", "A"))
                ours.id = theirs.id
                for _ in range(2):  # the second time from the memo
                    use_edns(ours, flags, payload, opts)
                theirs.use_edns(0, flags, payload, options=opts)
                self.assertEqual(
                    {k: repr(v) for k, v in vars(ours).items()},
                    {k: repr(v) for k, v in vars(theirs).items()},
                )
                self.assertEqual(ours.to_wire(), theirs.to_wire())
                ours.ednsflags = 0x1000000  # a change to one answer's OPT stays there
                again = dns.message.make_response(dns.message.make_query("x.lab.", "A"))
                use_edns(again, flags, payload, opts)
                self.assertEqual(again.ednsflags, flags & 0xFF00FFFF)

    def test_address_rdata(self) -> None:
        """read_response's A rdata is dnspython's in all but the cost of its wire form:
        the same slots, equal and hashing equal to dnspython's, in both directions, and
        the same wire, canonical form, text and order."""
        import pickle

        from kresolver.resolve.response import _address_rdata

        rng = random.Random(1035)
        samples = [b"\x00\x00\x00\x00", b"\x0a\x01\xff\x07", b"\xff" * 4]
        samples += [rng.randbytes(4) for _ in range(300)]
        for octets in samples:
            ours = _address_rdata(octets)
            theirs = dns.rdata.from_wire(1, 1, octets, 0, 4)
            self.assertIsInstance(ours, AddressRdata)
            self.assertIsInstance(ours, type(theirs))
            self.assertEqual(kind(ours), type(theirs))
            self.assertTrue(ours == theirs and theirs == ours)
            self.assertFalse(ours != theirs or theirs != ours)
            self.assertEqual(hash(ours), hash(theirs))
            for slot in ("rdclass", "rdtype", "rdcomment", "address"):
                self.assertEqual(repr(getattr(ours, slot)), repr(getattr(theirs, slot)))
            self.assertEqual(ours.to_wire(), octets)
            self.assertEqual(ours.to_digestable(), theirs.to_digestable())
            self.assertEqual(ours.to_digestable(N("lab.")), theirs.to_digestable())
            self.assertEqual((repr(ours), ours.to_text()), (repr(theirs), theirs.to_text()))
            other = dns.rdata.from_wire(1, 1, rng.randbytes(4), 0, 4)
            self.assertEqual(ours == other, theirs == other)
            self.assertEqual(other == ours, other == theirs)
            self.assertEqual(ours < other, theirs < other)
            self.assertEqual(other < ours, other < theirs)
            self.assertEqual(ours != other, theirs != other)
            self.assertNotEqual(ours, _address_rdata(bytes(x ^ 1 for x in octets)))
            copy = pickle.loads(pickle.dumps(ours))
            self.assertEqual((type(copy), copy), (AddressRdata, theirs))
            moved = ours.replace(address="192.0.2.77")
            self.assertEqual(moved, theirs.replace(address="192.0.2.77"))
            self.assertEqual(hash(moved), hash(theirs.replace(address="192.0.2.77")))
        aaaa = dns.rdata.from_text("IN", "AAAA", "::1")
        self.assertNotEqual(_address_rdata(b"\x7f\x00\x00\x01"), aaaa)
        self.assertNotEqual(aaaa, _address_rdata(b"\x7f\x00\x00\x01"))
        self.assertNotEqual(_address_rdata(b"\x7f\x00\x00\x01"), "127.0.0.1")
        chaos = dns.rdata.from_text("CH", "A", "lab. 177")
        self.assertNotEqual(_address_rdata(b"\x00\x00\x00\x7f"), chaos)

    def made(self, make: Any, rdclass: str, rdtype: str, text: str) -> tuple[Any, Any, bytes]:
        """Our rdata made by C{make} of the canonical form of dnspython's of C{text},
        dnspython's, and that form."""
        theirs = dns.rdata.from_text(rdclass, rdtype, text)
        canonical = theirs.to_digestable()
        ours = make(theirs.rdclass, canonical)
        self.assertEqual(kind(ours), type(theirs))
        return ours, theirs, canonical

    def assertLikeTheirs(
        self, ours: dns.rdata.Rdata, theirs: dns.rdata.Rdata, other: dns.rdata.Rdata,
        field: str,
    ) -> None:
        """C{ours} (of read_response's subclass) is equal to, hashes, orders, pickles and
        is replaced (C{field} given an absolute or a relative name) as dnspython's
        C{theirs}; C{other} is another rdata of the kind to compare with."""
        import pickle

        self.assertEqual(kind(ours), type(theirs))
        self.assertTrue(ours == theirs and theirs == ours and not ours != theirs)
        self.assertEqual(hash(ours), hash(theirs))
        self.assertEqual(ours.to_digestable(N("lab.")), theirs.to_digestable(N("lab.")))
        self.assertEqual((ours == other, ours < other, other < ours),
                         (theirs == other, theirs < other, other < theirs))
        copy = pickle.loads(pickle.dumps(ours))
        self.assertEqual((type(copy), copy), (type(ours), theirs))
        for name in (N("Other.LAB."), dns.name.from_text("rel", origin=None)):
            moved, reference = ours.replace(**{field: name}), theirs.replace(**{field: name})
            self.assertEqual(moved, reference)
            self.assertEqual(hash(moved), hash(reference))
            self.assertEqual(moved.to_digestable(N("lab.")), reference.to_digestable(N("lab.")))
            if not name.is_absolute():
                self.assertRaises(dns.name.NeedAbsoluteNameOrOrigin, moved.to_digestable)
                self.assertRaises(dns.name.NeedAbsoluteNameOrOrigin, reference.to_digestable)

    def test_signature_rdata(self) -> None:
        """read_response's RRSIG rdata is dnspython's in all but the cost of its canonical
        form: every field the same, equal and hashing equal both ways, the same wire,
        text, order, covered type; and after replace() (a signer in any case, or a
        relative one) still as dnspython's would be."""

        from kresolver.resolve.response import _signature_rdata

        rng = random.Random(4034)
        for _ in range(200):
            signer = ".".join(rng.choice(["a", "Lab", "eXample", "x-1"])
                              for _ in range(rng.randint(0, 3)))
            text = (
                f"{rng.choice(['A', 'NS', 'DNSKEY', 'TYPE999'])} {rng.choice([8, 13, 200])} "
                f"{rng.randint(0, 255)} {rng.randint(0, 2**32 - 1)} "
                f"{rng.randint(0, 2**32 - 1)} {rng.randint(0, 2**32 - 1)} "
                f"{rng.randint(0, 65535)} {signer}. {rng.choice(['AAAA', 'YWJj' * 20])}"
            )
            rdclass = rng.choice(["IN", "CH"])
            ours, theirs, canonical = self.made(_signature_rdata, rdclass, "RRSIG", text)
            self.assertIsInstance(ours, SignatureRdata)
            for slot in ("rdclass", "rdtype", "rdcomment", "type_covered", "algorithm",
                         "labels", "original_ttl", "expiration", "inception", "key_tag",
                         "signature"):
                self.assertEqual(repr(getattr(ours, slot)), repr(getattr(theirs, slot)))
            self.assertEqual(ours.signer, theirs.signer)
            self.assertEqual(ours.signer.labels, theirs.signer.canonicalize().labels)
            lowered = theirs.replace(signer=theirs.signer.canonicalize())
            self.assertEqual((ours.to_wire(), ours.to_text()), (lowered.to_wire(),
                                                                lowered.to_text()))
            self.assertEqual(ours.covers(), theirs.covers())
            self.assertEqual(ours.to_digestable(), canonical)
            other = dns.rdata.from_text(rdclass, "RRSIG", text.replace(" AAAA", " AAAB"))
            self.assertLikeTheirs(ours, theirs, other, "signer")

    def test_nsec_rdata(self) -> None:
        """read_response's NSEC rdata is dnspython's in all but the cost of its canonical
        form (its next name's case kept), and refuses the bitmaps dnspython refuses."""

        from kresolver.resolve.response import _nsec_rdata, rdata_wire

        rng = random.Random(6840)
        types = ["A", "NS", "SOA", "MX", "TXT", "AAAA", "RRSIG", "NSEC", "DNSKEY", "CAA",
                 "TYPE1234", "TYPE65000", "TYPE300"]
        for _ in range(300):
            nxt = ".".join(rng.choice(["a", "Lab", "eXample", "\\000", "*"])
                           for _ in range(rng.randint(0, 3)))
            text = f"{nxt}. " + " ".join(rng.sample(types, rng.randint(0, 6)))
            rdclass = rng.choice(["IN", "CH"])
            ours, theirs, canonical = self.made(_nsec_rdata, rdclass, "NSEC", text)
            self.assertIsInstance(ours, NsecRdata)
            for slot in ("rdclass", "rdtype", "rdcomment", "windows"):
                self.assertEqual(repr(getattr(ours, slot)), repr(getattr(theirs, slot)))
            self.assertEqual(ours.next.labels, theirs.next.labels)
            self.assertEqual((ours.to_wire(), ours.to_text(), rdata_wire(ours)),
                             (theirs.to_wire(), theirs.to_text(), theirs.to_wire()))
            self.assertEqual(ours.to_digestable(), canonical)
            other = dns.rdata.from_text(rdclass, "NSEC", "z.lab. A")
            self.assertLikeTheirs(ours, theirs, other, "next")
            # any bitmap octets: refused exactly where dnspython refuses them
            bitmap = bytes(rng.choice([0, 1, 2, 3, 32, 33, 128, 255])
                           for _ in range(rng.randint(0, 8)))
            name = canonical[: len(theirs.next.to_wire())]
            try:
                reference = dns.rdata.from_wire(1, "NSEC", name + bitmap, 0,
                                                len(name + bitmap))
            except dns.exception.DNSException:
                self.assertRaises(ResponseError, _nsec_rdata, 1, name + bitmap)
            else:
                self.assertEqual(_nsec_rdata(1, name + bitmap), reference)

    def test_address_rrsets_merge(self) -> None:
        """RRsets of read_response's A records and of dnspython's hold, merge and compare
        as RRsets of one kind would."""
        wire = CASES["a"].to_wire()
        ours = read_response(wire).answer[0]
        theirs = normalize(dns.message.from_wire(wire).answer[0])
        self.assertEqual(ours, theirs)
        self.assertEqual(theirs, ours)
        for rdata in theirs:
            self.assertIn(rdata, ours)
        merged = ours.union(theirs)
        self.assertEqual(len(merged), 2)
        theirs.add(dns.rdata.from_text("IN", "A", "192.0.2.9"))
        self.assertNotEqual(ours, theirs)
        self.assertEqual(len(theirs.union(ours)), 3)
        self.assertEqual(len(theirs.intersection(ours)), 2)
        self.assertEqual(sorted(ours), sorted(normalize(dns.message.from_wire(wire).answer[0])))

    def test_rdata_wire(self) -> None:
        from kresolver.resolve.response import rdata_wire

        for text in ("x. 1 IN A 10.0.255.1", "x. 1 IN A 0.0.0.0",
                     "x. 1 IN AAAA 2001:db8::1", "x. 1 IN NS ns.lab."):
            rdata = rr(text)[0]
            self.assertEqual(rdata_wire(rdata), rdata.to_wire())

    def test_rdata_wire_random(self) -> None:
        """rdata_wire writes named rdata itself: the bytes of dnspython's to_wire() for
        random names in any case, and its error for a relative name."""
        from kresolver.resolve.response import rdata_wire

        rng = random.Random(4034)
        letters = "aBcDeFgHxYz019-_"
        for _ in range(600):
            rdtype = rng.choice(["NS", "CNAME", "PTR", "DNAME", "MX", "KX", "RT", "AFSDB",
                                 "SOA", "NSAP-PTR", "TXT", "SRV", "A", "RRSIG", "SIG"])
            labels = [
                "".join(rng.choice(letters) for _ in range(rng.randint(1, 12)))
                for _ in range(rng.randint(0, 4))
            ]
            relative = bool(labels) and rng.random() < 0.2
            name = ".".join(labels) + ("" if relative else ".") if labels else "."
            number = rng.randint(0, 65535)
            rdata_text = {
                "MX": f"{number} {name}", "KX": f"{number} {name}", "RT": f"{number} {name}",
                "AFSDB": f"{number % 3 + 1} {name}",
                "SOA": f"{name} Host.{name if name != '.' else ''} {number} 2 3 4 {number}",
                "TXT": f'"{name}"', "SRV": f"{number} 1 {number} {name}",
                "A": f"10.{number >> 8}.{number & 255}.{len(name)}",
                "RRSIG": f"{rng.choice(['A', 'NS', 'TYPE999'])} {number % 256} {len(labels)} "
                f"{number * 7} {rng.randint(0, 2**32 - 1)} {rng.randint(0, 2**32 - 1)} "
                f"{number} {name} {rng.choice(['AAAA', 'AQIDBA==', 'YWJj' * 20])}",
                "SIG": f"SOA 8 1 {number} 20300101000000 20200101000000 {number} {name} AAAA",
            }.get(rdtype, name)
            rdata = dns.rdata.from_text(
                "IN", rdtype, rdata_text, origin=None if relative else dns.name.root,
                relativize=False,
            )
            with self.subTest(rdata=rdata_text, rdtype=rdtype):
                try:
                    theirs = rdata.to_wire()
                except dns.name.NeedAbsoluteNameOrOrigin:
                    with self.assertRaises(dns.name.NeedAbsoluteNameOrOrigin):
                        rdata_wire(rdata)
                else:
                    self.assertEqual(rdata_wire(rdata), theirs)

    def test_copy_rrset(self) -> None:
        """copy_rrset is dnspython's copy with a new owner: every slot the same, the
        records shared, the set its own."""
        from kresolver.resolve.response import copy_rrset

        for text in ("x.lab. 5 IN A 10.0.0.1|10.0.0.2", "x.lab. 7 CH TXT \"a\"",
                     "x.lab. 9 IN RRSIG A 8 2 300 20300101000000 20200101000000 1 lab. AA=="):
            rrset = rr(text)
            owner = N("Y.Lab.")
            ours = copy_rrset(rrset, owner)
            theirs = rrset.copy()
            theirs.name = owner
            for slot in ("name", "deleting", "rdclass", "rdtype", "covers", "ttl", "items"):
                self.assertEqual(repr(getattr(ours, slot)), repr(getattr(theirs, slot)))
            self.assertIs(type(ours), dns.rrset.RRset)
            self.assertIsNot(ours.items, rrset.items)
            if rrset.rdtype == dns.rdatatype.A:
                ours.add(rr("x.lab. 5 IN A 10.9.9.9")[0])
                self.assertEqual((len(ours), len(rrset)), (3, 2))

    def test_entropy_pool(self) -> None:
        from kresolver.resolve.upstream import _Entropy

        pool = _Entropy(size=16)
        taken = [pool.take(5) for _ in range(10)] + [pool.take(40)]
        self.assertEqual([len(t) for t in taken], [5] * 10 + [40])
        self.assertGreater(len(set(taken[:10])), 1)  # not the same octets again
        pool.clear()
        self.assertEqual((pool.buffer, pool.pos), (b"", 0))
        self.assertEqual(len(pool.take(3)), 3)

    def test_names(self) -> None:
        from kresolver.resolve.names import canonical, checked_name

        for text in ("wWw.Example.LAB.", "www.example.lab.", ".", "123.lab."):
            name = N(text)
            self.assertEqual(canonical(name).labels, name.canonicalize().labels)
            made = checked_name(name.labels)
            self.assertEqual(made, name)
            self.assertEqual(hash(made), hash(name))
            self.assertEqual(made.to_wire(), name.to_wire())
        lower = N("www.example.lab.")
        self.assertIs(canonical(lower), lower)
