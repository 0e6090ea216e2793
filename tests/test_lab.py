"""The loopback lab answers as real authoritative servers do, faults included.

Everything the recursion and DNSSEC tests will believe about the lab is checked here
against the wire: if these pass, a failing resolver test points at the resolver.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
from typing import Any

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import defer, task, threads
from twisted.trial import unittest

from kresolver.testing import AuthoritativeServer, Lab, ask, standard_lab, zones_from_text
from kresolver.testing import zones as zones_module
from kresolver.testing.lab import EDNS_PAYLOAD
from kresolver.testing.zones import SignedLab, sign_lab

BASE = "127.0.10."
PORT = 53
T = dns.rdatatype


def make_query(
    name: str,
    rdtype: int | str,
    *,
    edns: int | bool = 0,
    do: bool = False,
    payload: int = EDNS_PAYLOAD,
) -> dns.message.QueryMessage:
    use_edns: int | bool = edns if edns is not False else -1
    return dns.message.make_query(name, rdtype, use_edns=use_edns, want_dnssec=do, payload=payload)


@defer.inlineCallbacks
def query(
    address: str,
    name: str,
    rdtype: int | str,
    transport: str = "udp",
    **kw: Any,
) -> Any:
    wire = yield ask(make_query(name, rdtype, **kw), address, PORT, transport)
    return dns.message.from_wire(wire)


def rrs(section: list[dns.rrset.RRset], rdtype: int | None = None) -> list[str]:
    """Records as "owner TYPE rdata" strings, sorted: what L{zones.Case} answers use."""
    out = []
    for rrset in section:
        if rdtype is not None and rrset.rdtype != rdtype:
            continue
        for rdata in rrset:
            out.append(f"{rrset.name} {T.to_text(rrset.rdtype)} {rdata.to_text()}")
    return sorted(out)


def find(section: list[dns.rrset.RRset], rdtype: int, covers: int = T.NONE) -> list[Any]:
    return [r for r in section if r.rdtype == rdtype and r.covers == covers]


class StandardLabTests(unittest.TestCase):
    """The standard hierarchy of L{kresolver.testing.zones}, served on port 53."""

    def setUp(self) -> None:
        self.lab = Lab.standard(port=PORT, base=BASE)
        self.lab.start()
        self.addCleanup(self.lab.stop)
        self.alpha = self.lab.server("ns1.alpha.lab.").address

    def test_root_hints(self) -> None:
        self.assertEqual(self.lab.root_hints(), {"a.root-servers.lab.": [BASE + "1"]})
        self.assertEqual(standard_lab(BASE).root_hints(), self.lab.root_hints())

    def test_spec_by_address(self) -> None:
        spec = standard_lab("127.0.30.")
        by_address = spec.by_address()
        self.assertEqual(by_address["127.0.30.5"].keys(), {"beta.kres.", "gamma.lab."})
        self.assertNotIn(spec.dead["ns1.dead.lab."], by_address)
        self.assertIn("127.0.30.6", spec.servers["ns1.nic.lab."].zones["lab."])

    @defer.inlineCallbacks
    def test_authoritative_answer(self) -> Any:
        msg = yield query(self.alpha, "www.alpha.lab.", "A")
        self.assertEqual(msg.rcode(), dns.rcode.NOERROR)
        self.assertTrue(msg.flags & dns.flags.AA)
        self.assertFalse(msg.flags & dns.flags.RA)
        self.assertEqual(rrs(msg.answer), ["www.alpha.lab. A 192.0.2.1"])
        self.assertEqual(msg.authority, [])
        self.assertEqual(msg.edns, 0)
        self.assertEqual(msg.payload, EDNS_PAYLOAD)

    @defer.inlineCallbacks
    def test_referral_with_glue(self) -> Any:
        msg = yield query(BASE + "2", "www.alpha.lab.", "A")
        self.assertFalse(msg.flags & dns.flags.AA)
        self.assertEqual(msg.answer, [])
        self.assertEqual(rrs(msg.authority), ["alpha.lab. NS ns1.alpha.lab."])
        self.assertEqual(rrs(msg.additional), [f"ns1.alpha.lab. A {BASE}4"])

    @defer.inlineCallbacks
    def test_glueless_referral(self) -> Any:
        msg = yield query(BASE + "2", "www.gamma.lab.", "A")
        self.assertEqual(rrs(msg.authority), ["gamma.lab. NS ns1.beta.kres."])
        self.assertEqual(msg.additional, [])

    @defer.inlineCallbacks
    def test_sibling_glue(self) -> Any:
        msg = yield query(BASE + "3", "www.other.kres.", "A")
        self.assertEqual(rrs(msg.additional), [f"ns2.twoserv.kres. A {BASE}8"])

    @defer.inlineCallbacks
    def test_nxdomain_soa(self) -> Any:
        msg = yield query(self.alpha, "nowhere.alpha.lab.", "A")
        self.assertEqual(msg.rcode(), dns.rcode.NXDOMAIN)
        self.assertTrue(msg.flags & dns.flags.AA)
        [soa] = find(msg.authority, T.SOA)
        self.assertEqual(soa.name, dns.name.from_text("alpha.lab."))
        self.assertEqual(soa.ttl, 300)  # min(SOA TTL 3600, minimum 300)

    @defer.inlineCallbacks
    def test_nodata(self) -> Any:
        for name in ("txt.alpha.lab.", "ent.alpha.lab."):
            msg = yield query(self.alpha, name, "A")
            self.assertEqual(msg.rcode(), dns.rcode.NOERROR, name)
            self.assertEqual(msg.answer, [], name)
            self.assertEqual(len(find(msg.authority, T.SOA)), 1, name)

    @defer.inlineCallbacks
    def test_wildcard(self) -> Any:
        msg = yield query(self.alpha, "Some.Thing.wild.alpha.lab.", "A")
        self.assertEqual(rrs(msg.answer), ["Some.Thing.wild.alpha.lab. A 192.0.2.50"])
        nodata = yield query(self.alpha, "thing.wild.alpha.lab.", "AAAA")
        self.assertEqual((nodata.rcode(), nodata.answer), (dns.rcode.NOERROR, []))
        self.assertEqual(len(find(nodata.authority, T.SOA)), 1)
        exact = yield query(self.alpha, "exact.wild.alpha.lab.", "TXT")
        self.assertEqual(exact.answer, [], "an existing name is not wildcard-expanded")

    @defer.inlineCallbacks
    def test_cname_followed_in_zone(self) -> Any:
        msg = yield query(self.alpha, "alias.alpha.lab.", "A")
        self.assertEqual(
            rrs(msg.answer),
            ["alias.alpha.lab. CNAME www.alpha.lab.", "www.alpha.lab. A 192.0.2.1"],
        )
        cname = yield query(self.alpha, "alias.alpha.lab.", "CNAME")
        self.assertEqual(rrs(cname.answer), ["alias.alpha.lab. CNAME www.alpha.lab."])

    @defer.inlineCallbacks
    def test_cname_out_of_zone_not_followed(self) -> Any:
        msg = yield query(self.alpha, "chain.alpha.lab.", "A")
        self.assertTrue(msg.flags & dns.flags.AA)
        self.assertEqual(rrs(msg.answer), ["chain.alpha.lab. CNAME link2.beta.kres."])

    @defer.inlineCallbacks
    def test_dname(self) -> Any:
        msg = yield query(self.alpha, "www.dname.alpha.lab.", "A")
        self.assertEqual(
            rrs(msg.answer),
            ["dname.alpha.lab. DNAME beta.kres.", "www.dname.alpha.lab. CNAME www.beta.kres."],
        )
        [cname] = find(msg.answer, T.CNAME)
        self.assertEqual(cname.ttl, 300)

    @defer.inlineCallbacks
    def test_refused_out_of_zone(self) -> Any:
        msg = yield query(self.alpha, "www.beta.kres.", "A")
        self.assertEqual(msg.rcode(), dns.rcode.REFUSED)
        lame = yield query(BASE + "8", "www.twoserv.kres.", "A")
        self.assertEqual(lame.rcode(), dns.rcode.REFUSED)
        good = yield query(BASE + "7", "www.twoserv.kres.", "A")
        self.assertEqual(rrs(good.answer), ["www.twoserv.kres. A 192.0.2.30"])

    @defer.inlineCallbacks
    def test_truncation_then_tcp(self) -> Any:
        udp = yield query(self.alpha, "big.alpha.lab.", "TXT")
        self.assertTrue(udp.flags & dns.flags.TC)
        self.assertEqual(udp.answer, [])
        tcp = yield query(self.alpha, "big.alpha.lab.", "TXT", transport="tcp")
        self.assertFalse(tcp.flags & dns.flags.TC)
        self.assertEqual(len(tcp.answer[0]), 40)
        self.assertEqual([q[2] for q in self.lab.server("ns1.alpha.lab.").queries], ["udp", "tcp"])

    @defer.inlineCallbacks
    def test_classic_512_limit(self) -> Any:
        """Without EDNS, 512 bytes; with EDNS, the client's payload up to 1232."""
        server = self.lab.server("ns1.alpha.lab.")
        big = zones_from_text({"mid.lab.": _mid_zone(20)})
        server.reload(server.zones + big)  # ~700 bytes of TXT
        plain = yield query(self.alpha, "t.mid.lab.", "TXT", edns=False)
        self.assertTrue(plain.flags & dns.flags.TC)
        self.assertEqual(plain.edns, -1)
        small = yield query(self.alpha, "t.mid.lab.", "TXT", payload=600)
        self.assertTrue(small.flags & dns.flags.TC)
        edns = yield query(self.alpha, "t.mid.lab.", "TXT")
        self.assertFalse(edns.flags & dns.flags.TC)
        self.assertEqual(len(edns.answer[0]), 20)

    @defer.inlineCallbacks
    def test_ds_answered_by_parent(self) -> Any:
        msg = yield query(BASE + "2", "alpha.lab.", "DS")
        self.assertTrue(msg.flags & dns.flags.AA, "DS at a cut is the parent's data")
        self.assertEqual(find(msg.authority, T.SOA)[0].name, dns.name.from_text("lab."))

    @defer.inlineCallbacks
    def test_protocol_errors(self) -> Any:
        badvers = yield query(self.alpha, "www.alpha.lab.", "A", edns=1)
        self.assertEqual(badvers.rcode(), dns.rcode.BADVERS)
        self.assertEqual(badvers.edns, 0)
        notify = make_query("alpha.lab.", "SOA")
        notify.set_opcode(dns.opcode.NOTIFY)
        notimp = dns.message.from_wire((yield ask(notify, self.alpha, PORT)))
        self.assertEqual(notimp.rcode(), dns.rcode.NOTIMP)
        garbage = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff"
        formerr = yield ask(garbage, self.alpha, PORT)
        self.assertEqual(formerr[:2], b"\x12\x34")
        self.assertEqual(dns.message.from_wire(formerr).rcode(), dns.rcode.FORMERR)

    @defer.inlineCallbacks
    def test_dead_server_address_is_silent(self) -> Any:
        self.assertNotIn(BASE + "6", {s.address for s in self.lab.servers.values()})
        yield self.assertFailure(
            ask(make_query("www.dead.lab.", "A"), BASE + "6", PORT, timeout=0.3),
            TimeoutError,
        )

    # -- fault knobs ---------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_drop(self) -> Any:
        server = self.lab.server("ns1.alpha.lab.")
        server.drop = True
        yield self.assertFailure(
            ask(make_query("www.alpha.lab.", "A"), self.alpha, PORT, timeout=0.3),
            TimeoutError,
        )
        self.assertEqual(server.queries, [("www.alpha.lab.", T.A, "udp")])
        server.drop = False
        msg = yield query(self.alpha, "www.alpha.lab.", "A")
        self.assertEqual(len(msg.answer), 1)

    @defer.inlineCallbacks
    def test_refuse(self) -> Any:
        self.lab.server("ns1.alpha.lab.").refuse = True
        msg = yield query(self.alpha, "www.alpha.lab.", "A")
        self.assertEqual((msg.rcode(), msg.answer), (dns.rcode.REFUSED, []))

    @defer.inlineCallbacks
    def test_always_tc(self) -> Any:
        self.lab.server("ns1.alpha.lab.").always_tc = True
        udp = yield query(self.alpha, "www.alpha.lab.", "A")
        self.assertTrue(udp.flags & dns.flags.TC)
        self.assertEqual(udp.answer, [])
        tcp = yield query(self.alpha, "www.alpha.lab.", "A", transport="tcp")
        self.assertEqual(rrs(tcp.answer), ["www.alpha.lab. A 192.0.2.1"])

    @defer.inlineCallbacks
    def test_reject_edns(self) -> Any:
        self.lab.server("ns1.alpha.lab.").reject_edns = True
        msg = yield query(self.alpha, "www.alpha.lab.", "A")
        self.assertEqual((msg.rcode(), msg.edns), (dns.rcode.FORMERR, -1))
        plain = yield query(self.alpha, "www.alpha.lab.", "A", edns=False)
        self.assertEqual(rrs(plain.answer), ["www.alpha.lab. A 192.0.2.1"])

    @defer.inlineCallbacks
    def test_case_preservation(self) -> Any:
        asked = "wWw.AlPhA.lAb."
        msg = yield query(self.alpha, asked, "A")
        self.assertEqual(msg.question[0].name.to_text(), asked)
        self.assertEqual(msg.answer[0].name.to_text(), asked)
        server = self.lab.server("ns1.alpha.lab.")
        server.no_case_preserve = True
        folded = yield query(self.alpha, asked, "A")
        self.assertEqual(folded.question[0].name.to_text(), "www.alpha.lab.")
        self.assertEqual(folded.answer[0].name.to_text(), "www.alpha.lab.")
        self.assertEqual([q[0] for q in server.queries], [asked, asked])
        server.clear_queries()
        self.assertEqual(server.queries, [])

    def test_delay(self) -> None:
        clock = task.Clock()
        zones = zones_from_text(standard_lab(BASE).servers["ns1.alpha.lab."].zones)
        server = AuthoritativeServer(zones, BASE + "90", PORT, reactor=clock)
        server.delay = 1.5
        sent: list[bytes] = []
        server.handle(make_query("www.alpha.lab.", "A").to_wire(), "udp", sent.append)
        clock.advance(1.4)
        self.assertEqual(sent, [])
        clock.advance(0.1)
        self.assertEqual(rrs(dns.message.from_wire(sent[0]).answer), ["www.alpha.lab. A 192.0.2.1"])

    @defer.inlineCallbacks
    def test_stop_cancels_delayed_answers(self) -> Any:
        server = self.lab.server("ns1.alpha.lab.")
        server.delay = 30
        d = ask(make_query("www.alpha.lab.", "A"), self.alpha, PORT, timeout=0.3)
        yield self.assertFailure(d, TimeoutError)
        self.assertEqual(len(server._pending), 1)
        yield server.stop()
        self.assertEqual(server._pending, set())

    # -- the hierarchy as a whole --------------------------------------------------------

    @defer.inlineCallbacks
    def test_cases_by_iteration(self) -> Any:
        """A minimal iterative walk from the root gives every answer of the CASES table."""
        spec = standard_lab(BASE)
        self.assertGreater(len(spec.cases), 20)
        for case in spec.cases:
            rcode, answer = yield iterate(self.lab, case.qname, T.from_text(case.qtype))
            self.assertEqual(
                (dns.rcode.to_text(rcode), tuple(answer)),
                (case.rcode, case.answer),
                f"{case.qname} {case.qtype} ({case.shows})",
            )

    @defer.inlineCallbacks
    def test_kresd_agrees_with_cases(self) -> Any:
        """Knot Resolver, pointed at this lab, gives every answer of the CASES table.

        The strongest check that the lab behaves as real authoritative servers do: the
        reference resolver's own lame, dead-server, glueless, TC and DNAME handling all
        go through it.  (Several seconds: kresd gives up on the dead zone by timeout.)
        """
        kresd = yield start_kresd(self, self.lab)
        for case in standard_lab(BASE).cases:
            msg = yield threads.deferToThread(
                kresd.query, case.qname, case.qtype, tcp=True, timeout=15
            )
            self.assertEqual(
                (dns.rcode.to_text(msg.rcode()), tuple(rrs(msg.answer))),
                (case.rcode, case.answer),
                f"{case.qname} {case.qtype} ({case.shows})",
            )

    def test_docstring_table_lists_every_case(self) -> None:
        doc = zones_module.__doc__ or ""
        for case in standard_lab(BASE).cases:
            line = [ln for ln in doc.splitlines() if ln.split()[:2] == [case.qname, case.qtype]]
            self.assertEqual(len(line), 1, f"{case.qname} {case.qtype} in the docstring")
            self.assertIn(case.rcode, line[0].split())

    def test_special_use_tlds_avoided(self) -> None:
        forbidden = {"test", "example", "invalid", "localhost", "local", "onion"}
        for server in standard_lab(BASE).servers.values():
            for zone in zones_from_text(server.zones):
                for name in zone.nodes:
                    labels = name.labels
                    if len(labels) > 1:
                        self.assertNotIn(labels[-2].decode().lower(), forbidden, name)

    def test_address_clash_is_an_error(self) -> None:
        self.assertRaises(ValueError, self.lab.add_server, "x.lab.", {}, address=BASE + "6")
        self.assertRaises(ValueError, self.lab.add_server, "ns1.nic.lab.", {})
        self.assertRaises(ValueError, zones_from_text, {"bad.lab.": "@ IN A 1.2.3.4"})


@defer.inlineCallbacks
def start_kresd(test: unittest.TestCase, lab: Lab, trust_anchor: str | None = None) -> Any:
    """Knot Resolver on BASE+99, resolving from the lab's root; skips the test without it."""
    from kresolver.testing import reference

    if not os.path.exists(reference.KRESD):
        raise unittest.SkipTest("kresd is not installed")
    tmp = tempfile.mkdtemp()
    test.addCleanup(shutil.rmtree, tmp, True)
    kresd = reference.KresdReference(
        BASE + "99",
        PORT,
        lab.root_hints(),
        tmp,
        outgoing_v4=BASE + "99",
        trust_anchor=trust_anchor,
    )
    # kresd's client is blocking: keep it off the reactor that serves the lab.
    yield threads.deferToThread(kresd.start)
    test.addCleanup(threads.deferToThread, kresd.stop)
    return kresd


class SignedLabTests(unittest.TestCase):
    """L{sign_lab}: the standard hierarchy signed, checked in-process and by kresd."""

    def serve(self, origins: list[str] | None = None) -> SignedLab:
        signed = sign_lab(standard_lab(BASE), origins)
        self.lab = Lab(port=PORT, base=BASE)
        self.lab.load(signed.spec)
        self.lab.start()
        self.addCleanup(self.lab.stop)
        return signed

    @defer.inlineCallbacks
    def test_ds_chain(self) -> Any:
        signed = self.serve()
        self.assertTrue(signed.trust_anchor.startswith(". 3600 IN DS "))
        lab_keys = dns.rrset.from_rdata("lab.", 3600, signed.keys["lab."][1])
        msg = yield query(BASE + "2", "alpha.lab.", "DS", do=True)
        [ds] = find(msg.answer, T.DS)
        [sig] = find(msg.answer, T.RRSIG, T.DS)
        dns.dnssec.validate(ds, sig, {dns.name.from_text("lab."): lab_keys})
        self.assertEqual(ds[0], dns.dnssec.make_ds("alpha.lab.", signed.keys["alpha.lab."][1], 2))
        self.assertEqual(f"alpha.lab. 3600 IN DS {ds[0]}", signed.ds("alpha.lab."))

    @defer.inlineCallbacks
    def test_unsigned_child_is_insecure_delegation(self) -> Any:
        signed = self.serve([".", "lab."])
        self.assertNotIn("alpha.lab.", signed.keys)
        msg = yield query(BASE + "2", "www.alpha.lab.", "A", do=True)
        self.assertEqual(find(msg.authority, T.DS), [])
        [nsec] = find(msg.authority, T.NSEC)
        self.assertEqual(nsec.name, dns.name.from_text("alpha.lab."))
        self.assertRaises(ValueError, sign_lab, standard_lab(BASE), ["dead.lab."])

    @defer.inlineCallbacks
    def test_kresd_validates(self) -> Any:
        """Every zone but alpha.lab. signed: AD exactly where the chain of trust reaches."""
        zones = [o for s in standard_lab(BASE).servers.values() for o in s.zones]
        signed = self.serve([o for o in zones if o != "alpha.lab."])
        kresd = yield start_kresd(self, self.lab, signed.trust_anchor)
        for case in standard_lab(BASE).cases:
            if case.rcode == "SERVFAIL":
                continue  # the dead zone: signing changes nothing, and it costs a timeout
            msg = yield threads.deferToThread(
                kresd.query, case.qname, case.qtype, tcp=True, dnssec=True, timeout=15
            )
            answer = [r for r in msg.answer if r.rdtype != T.RRSIG]
            secure = not case.qname.endswith("alpha.lab.")
            self.assertEqual(
                (
                    dns.rcode.to_text(msg.rcode()),
                    tuple(rrs(answer)),
                    bool(msg.flags & dns.flags.AD),
                ),
                (case.rcode, case.answer, secure),
                f"{case.qname} {case.qtype} ({case.shows})",
            )

    @defer.inlineCallbacks
    def test_kresd_validates_denials_and_wildcards(self) -> Any:
        signed = self.serve()
        kresd = yield start_kresd(self, self.lab, signed.trust_anchor)
        for case in standard_lab(BASE).cases:
            if case.rcode == "SERVFAIL" or not case.qname.endswith("alpha.lab."):
                continue
            msg = yield threads.deferToThread(
                kresd.query, case.qname, case.qtype, tcp=True, dnssec=True, timeout=15
            )
            self.assertEqual(
                (dns.rcode.to_text(msg.rcode()), bool(msg.flags & dns.flags.AD)),
                (case.rcode, True),
                f"{case.qname} {case.qtype} ({case.shows})",
            )


def _mid_zone(count: int) -> str:
    txt = "\n".join(f't IN TXT "{i:02d} {"y" * 26}"' for i in range(count))
    return f"$TTL 300\n@ IN SOA ns h 1 7200 900 1209600 300\n@ IN NS ns\nns IN A {BASE}4\n{txt}\n"


@defer.inlineCallbacks
def iterate(lab: Lab, qname: str, qtype: int, depth: int = 0) -> Any:
    """Resolve like a (very) simple recursive resolver; return (rcode, answer records)."""
    answer: list[str] = []
    name = dns.name.from_text(qname)
    roots = [a for addrs in lab.root_hints().values() for a in addrs]
    servers = roots
    for _ in range(30):
        reply = None
        for address in servers:
            try:
                wire = yield ask(make_query(name, qtype), address, lab.port, timeout=0.3)
            except TimeoutError:
                continue
            msg = dns.message.from_wire(wire)
            if msg.flags & dns.flags.TC:
                wire = yield ask(make_query(name, qtype), address, lab.port, "tcp")
                msg = dns.message.from_wire(wire)
            if msg.rcode() != dns.rcode.REFUSED:
                reply = msg
                break
        if reply is None:
            return dns.rcode.SERVFAIL, []
        if reply.answer:
            answer += rrs(reply.answer)
            for _ in range(len(reply.answer) + 1):
                if any(r.name == name and r.rdtype == qtype for r in reply.answer):
                    return reply.rcode(), sorted(answer)
                cnames = [r for r in reply.answer if r.name == name and r.rdtype == T.CNAME]
                if not cnames:
                    break
                name = cnames[0][0].target
            if reply.rcode() != dns.rcode.NOERROR or find(reply.authority, T.SOA):
                return reply.rcode(), sorted(answer)
            servers = roots
            continue
        ns = find(reply.authority, T.NS)
        if reply.rcode() == dns.rcode.NOERROR and ns and not reply.flags & dns.flags.AA:
            servers = []
            for target in (r.target for r in ns[0]):
                glue = [r for r in reply.additional if r.name == target and r.rdtype == T.A]
                if glue:
                    servers += [g.address for g in glue[0]]
                elif depth < 3:
                    _, addrs = yield iterate(lab, target.to_text(), T.A, depth + 1)
                    servers += [a.split()[-1] for a in addrs if " A " in a]
            continue
        return reply.rcode(), sorted(answer)
    return dns.rcode.SERVFAIL, []


# -- DNSSEC ------------------------------------------------------------------------------

SIGNED = "127.0.10.50"
SIGNED_BOTH = "127.0.10.51"

_SEC_PARENT = f"""$TTL 300
@ 3600 IN SOA ns1 hostmaster 1 7200 900 1209600 300
@ 3600 IN NS ns1
ns1 IN A {SIGNED}
www IN A 192.0.2.1
txt IN TXT "signed"
*.w IN TXT "wild"
host.ent IN A 192.0.2.2
child IN NS ns1.child
ns1.child IN A {SIGNED}
plain IN NS ns1.plain
ns1.plain IN A {SIGNED}
"""

_SEC_CHILD = f"""$TTL 300
@ 3600 IN SOA ns1 hostmaster 1 7200 900 1209600 300
@ 3600 IN NS ns1
ns1 IN A {SIGNED}
www IN A 192.0.2.9
"""


def _sign(
    text: str, origin: str, extra: str = ""
) -> tuple[dns.zone.Zone, dns.rrset.RRset, dns.rrset.RRset]:
    """Sign a zone with a fresh ECDSAP256SHA256 key; return it, its DNSKEY RRset, its DS."""
    zone = dns.zone.from_text(text + extra, origin, relativize=False)
    key = ec.generate_private_key(ec.SECP256R1())
    dnskey = dns.dnssec.make_dnskey(key.public_key(), dns.dnssec.Algorithm.ECDSAP256SHA256, 257)
    dns.dnssec.sign_zone(zone, keys=[(key, dnskey)], lifetime=3600)
    keys = zone.find_rrset(origin, T.DNSKEY)
    ds = dns.dnssec.make_ds(origin, dnskey, "SHA256")
    return zone, keys, dns.rrset.from_rdata(origin, 300, ds)


def covers(nsec: dns.rrset.RRset, name: dns.name.Name) -> bool:
    owner, nxt = nsec.name, nsec[0].next
    if owner < nxt:
        return owner < name < nxt
    return name > owner or name < nxt  # the last NSEC wraps to the apex


class DNSSECTests(unittest.TestCase):
    """A signed parent with a secure and an insecure delegation, on NSEC."""

    def setUp(self) -> None:
        self.child, self.child_keys, ds = _sign(_SEC_CHILD, "child.sec.lab.")
        ds_text = f"child IN DS {ds[0].to_text()}\n"
        self.parent, self.keys, _ = _sign(_SEC_PARENT, "sec.lab.", ds_text)
        self.server = AuthoritativeServer([self.parent], SIGNED, PORT)
        self.both = AuthoritativeServer([self.parent, self.child], SIGNED_BOTH, PORT)
        for server in (self.server, self.both):
            server.start()
            self.addCleanup(server.stop)

    def validate(self, section: list[dns.rrset.RRset], keys: Any = None) -> int:
        """Check every RRset of the section against its RRSIG; return how many."""
        keys = keys or {dns.name.from_text("sec.lab."): self.keys}
        checked = 0
        for rrset in section:
            if rrset.rdtype == T.RRSIG:
                continue
            [sig] = [r for r in find(section, T.RRSIG, rrset.rdtype) if r.name == rrset.name]
            dns.dnssec.validate(rrset, sig, keys)
            checked += 1
        return checked

    @defer.inlineCallbacks
    def test_signed_answer(self) -> Any:
        msg = yield query(SIGNED, "www.sec.lab.", "A", do=True)
        self.assertTrue(msg.ednsflags & dns.flags.DO)
        self.assertEqual(self.validate(msg.answer), 1)
        plain = yield query(SIGNED, "www.sec.lab.", "A")
        self.assertEqual([r.rdtype for r in plain.answer], [T.A])

    @defer.inlineCallbacks
    def test_dnskey(self) -> Any:
        msg = yield query(SIGNED, "sec.lab.", "DNSKEY", do=True)
        self.assertEqual(self.validate(msg.answer), 1)

    @defer.inlineCallbacks
    def test_nxdomain_proof(self) -> Any:
        qname = dns.name.from_text("nope.sec.lab.")
        msg = yield query(SIGNED, "nope.sec.lab.", "A", do=True)
        self.assertEqual(msg.rcode(), dns.rcode.NXDOMAIN)
        self.validate(msg.authority)
        [soa] = find(msg.authority, T.SOA)
        self.assertEqual(soa.ttl, 300)
        self.assertEqual(find(msg.authority, T.RRSIG, T.SOA)[0].ttl, 300)
        nsecs = find(msg.authority, T.NSEC)
        self.assertTrue(any(covers(n, qname) for n in nsecs), "qname covered")
        wild = dns.name.from_text("*.sec.lab.")
        self.assertTrue(any(covers(n, wild) for n in nsecs), "no wildcard at the encloser")

    @defer.inlineCallbacks
    def test_nodata_proof(self) -> Any:
        msg = yield query(SIGNED, "www.sec.lab.", "AAAA", do=True)
        self.assertEqual((msg.rcode(), msg.answer), (dns.rcode.NOERROR, []))
        self.validate(msg.authority)
        [nsec] = find(msg.authority, T.NSEC)
        self.assertEqual(nsec.name, dns.name.from_text("www.sec.lab."))
        types = {t for window in nsec[0].windows for t in _bitmap(window)}
        self.assertIn(T.A, types)
        self.assertNotIn(T.AAAA, types)

    @defer.inlineCallbacks
    def test_empty_non_terminal_nodata_proof(self) -> Any:
        msg = yield query(SIGNED, "ent.sec.lab.", "A", do=True)
        self.assertEqual((msg.rcode(), msg.answer), (dns.rcode.NOERROR, []))
        [nsec] = find(msg.authority, T.NSEC)
        self.assertTrue(covers(nsec, dns.name.from_text("ent.sec.lab.")))
        self.assertTrue(nsec[0].next.is_subdomain(dns.name.from_text("ent.sec.lab.")))

    @defer.inlineCallbacks
    def test_wildcard_answer_proof(self) -> Any:
        qname = dns.name.from_text("x.w.sec.lab.")
        msg = yield query(SIGNED, "x.w.sec.lab.", "TXT", do=True)
        self.assertEqual(rrs(msg.answer, T.TXT), ['x.w.sec.lab. TXT "wild"'])
        self.assertEqual(self.validate(msg.answer), 1)
        self.assertEqual(find(msg.answer, T.RRSIG, T.TXT)[0][0].labels, 3)
        self.validate(msg.authority)
        [nsec] = find(msg.authority, T.NSEC)
        self.assertTrue(covers(nsec, qname))

    @defer.inlineCallbacks
    def test_wildcard_nodata_proof(self) -> Any:
        qname = dns.name.from_text("x.w.sec.lab.")
        msg = yield query(SIGNED, "x.w.sec.lab.", "A", do=True)
        self.assertEqual((msg.rcode(), msg.answer), (dns.rcode.NOERROR, []))
        self.validate(msg.authority)
        nsecs = find(msg.authority, T.NSEC)
        self.assertTrue(any(covers(n, qname) for n in nsecs))
        self.assertIn(dns.name.from_text("*.w.sec.lab."), [n.name for n in nsecs])

    @defer.inlineCallbacks
    def test_secure_referral_has_ds(self) -> Any:
        msg = yield query(SIGNED, "www.child.sec.lab.", "A", do=True)
        self.assertFalse(msg.flags & dns.flags.AA)
        self.assertEqual(rrs(msg.authority, T.NS), ["child.sec.lab. NS ns1.child.sec.lab."])
        self.assertEqual(len(find(msg.authority, T.RRSIG, T.NS)), 0, "NS at a cut is unsigned")
        self.assertEqual(len(find(msg.authority, T.DS)), 1)
        self.validate([r for r in msg.authority if r.rdtype != T.NS])
        self.assertEqual(rrs(msg.additional, T.A), [f"ns1.child.sec.lab. A {SIGNED}"])
        [ds] = find(msg.authority, T.DS)
        child_key = self.child_keys[0]
        self.assertEqual(ds[0], dns.dnssec.make_ds("child.sec.lab.", child_key, "SHA256"))

    @defer.inlineCallbacks
    def test_insecure_referral_proves_no_ds(self) -> Any:
        msg = yield query(SIGNED, "www.plain.sec.lab.", "A", do=True)
        self.assertEqual(find(msg.authority, T.DS), [])
        [nsec] = find(msg.authority, T.NSEC)
        self.assertEqual(nsec.name, dns.name.from_text("plain.sec.lab."))
        types = {t for window in nsec[0].windows for t in _bitmap(window)}
        self.assertEqual(types & {T.DS, T.SOA}, set())
        self.assertIn(T.NS, types)
        self.validate([r for r in msg.authority if r.rdtype != T.NS])

    @defer.inlineCallbacks
    def test_parent_and_child_on_one_server(self) -> Any:
        ds = yield query(SIGNED_BOTH, "child.sec.lab.", "DS", do=True)
        self.assertTrue(ds.flags & dns.flags.AA)
        self.assertEqual(self.validate(ds.answer), 1)
        child = dns.name.from_text("child.sec.lab.")
        www = yield query(SIGNED_BOTH, "www.child.sec.lab.", "A", do=True)
        self.assertEqual(self.validate(www.answer, {child: self.child_keys}), 1)

    @defer.inlineCallbacks
    def test_unsigned_zone_gets_no_dnssec_records(self) -> Any:
        zones = zones_from_text({"sec.lab.": _SEC_PARENT})
        self.server.reload(zones)
        msg = yield query(SIGNED, "nope.sec.lab.", "A", do=True)
        self.assertEqual([r.rdtype for r in msg.authority], [T.SOA])


def _bitmap(window: tuple[int, bytes]) -> list[int]:
    number, bits = window
    return [
        number * 256 + i * 8 + j
        for i, byte in enumerate(bits)
        for j in range(8)
        if byte & (0x80 >> j)
    ]


class NSEC3Tests(unittest.TestCase):
    """NSEC3 denial (RFC 5155), on a zone signed by ldns-signzone."""

    flags: tuple[str, ...] = ()

    def setUp(self) -> None:
        if not shutil.which("ldns-signzone") or not shutil.which("ldns-keygen"):
            raise unittest.SkipTest("ldns-signzone is not installed")
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        path = os.path.join(tmp, "zone")
        with open(path, "w") as f:
            f.write(f"$ORIGIN sec.lab.\n{_SEC_PARENT}")
        keybase = subprocess.run(
            ["ldns-keygen", "-a", "ECDSAP256SHA256", "-k", "sec.lab."],
            cwd=tmp,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        subprocess.run(
            ["ldns-signzone", "-n", *self.flags, "-s", "ab12", "-t", "0", path, keybase],
            cwd=tmp,
            check=True,
            capture_output=True,
        )
        with open(path + ".signed") as f:
            self.zone = dns.zone.from_text(f.read(), "sec.lab.", relativize=False)
        self.keys = self.zone.find_rrset("sec.lab.", T.DNSKEY)
        with open(os.path.join(tmp, keybase + ".private")) as f:
            secret = dict(line.split(": ", 1) for line in f.read().splitlines() if ": " in line)
        scalar = int.from_bytes(base64.b64decode(secret["PrivateKey"]), "big")
        self.private = ec.derive_private_key(scalar, ec.SECP256R1())
        self.prepare()
        self.server = AuthoritativeServer([self.zone], SIGNED, PORT)
        self.server.start()
        self.addCleanup(self.server.stop)

    def prepare(self) -> None:
        """Adjust the signed zone before it is served."""

    def hashes(self, msg: dns.message.Message) -> list[tuple[str, str]]:
        out = []
        for rrset in find(msg.authority, T.NSEC3):
            nxt = base64.b32hexencode(rrset[0].next).decode().rstrip("=")
            out.append((rrset.name.labels[0].decode().upper(), nxt.upper()))
        return out

    def h(self, name: str) -> str:
        return dns.dnssec.nsec3_hash(name, "ab12", 0, 1).upper()

    def covered(self, pairs: list[tuple[str, str]], name: str) -> bool:
        h = self.h(name)
        return any((o < h < n) if o < n else (h > o or h < n) for o, n in pairs)

    def check_sigs(self, msg: dns.message.Message) -> None:
        origin = dns.name.from_text("sec.lab.")
        for rrset in msg.authority:
            if rrset.rdtype not in (T.RRSIG, T.NS):  # NS at a cut is unsigned
                sigs = [
                    r for r in find(msg.authority, T.RRSIG, rrset.rdtype) if r.name == rrset.name
                ]
                dns.dnssec.validate(rrset, sigs[0], {origin: self.keys})

    @defer.inlineCallbacks
    def test_nxdomain(self) -> Any:
        msg = yield query(SIGNED, "a.nope.sec.lab.", "A", do=True)
        self.assertEqual(msg.rcode(), dns.rcode.NXDOMAIN)
        self.check_sigs(msg)
        pairs = self.hashes(msg)
        self.assertIn(self.h("sec.lab."), [o for o, _ in pairs], "closest encloser matched")
        self.assertTrue(self.covered(pairs, "nope.sec.lab."), "next closer covered")
        self.assertTrue(self.covered(pairs, "*.sec.lab."), "wildcard covered")

    @defer.inlineCallbacks
    def test_nodata(self) -> Any:
        msg = yield query(SIGNED, "www.sec.lab.", "AAAA", do=True)
        self.check_sigs(msg)
        self.assertEqual([o for o, _ in self.hashes(msg)], [self.h("www.sec.lab.")])

    @defer.inlineCallbacks
    def test_wildcard(self) -> Any:
        answer = yield query(SIGNED, "x.w.sec.lab.", "TXT", do=True)
        self.assertTrue(self.covered(self.hashes(answer), "x.w.sec.lab."))
        nodata = yield query(SIGNED, "x.w.sec.lab.", "A", do=True)
        self.check_sigs(nodata)
        owners = [o for o, _ in self.hashes(nodata)]
        self.assertIn(self.h("*.w.sec.lab."), owners)
        self.assertIn(self.h("w.sec.lab."), owners)

    @defer.inlineCallbacks
    def test_insecure_referral(self) -> Any:
        msg = yield query(SIGNED, "www.plain.sec.lab.", "A", do=True)
        self.check_sigs(msg)
        self.assertEqual([o for o, _ in self.hashes(msg)], [self.h("plain.sec.lab.")])


class NSEC3OptOutTests(NSEC3Tests):
    """With opt-out, an unsigned delegation has no NSEC3: the closest encloser proves it."""

    flags = ("-p",)

    def prepare(self) -> None:
        """Drop the NSEC3 of unsigned delegations and relink the chain, re-signed.

        ldns-signzone sets the opt-out flag but keeps those records; signers may omit them
        (RFC 5155 6), and a resolver must cope with both, so the lab serves the sparse form.
        """
        origin = dns.name.from_text("sec.lab.")
        chain = sorted(
            (name, node.get_rdataset(dns.rdataclass.IN, T.NSEC3))
            for name, node in self.zone.nodes.items()
            if node.get_rdataset(dns.rdataclass.IN, T.NSEC3) is not None
        )
        unsigned = {self.h(n).lower() for n in ("plain.sec.lab.", "child.sec.lab.")}
        kept = [(n, r) for n, r in chain if n.labels[0].decode().lower() not in unsigned]
        self.assertEqual(len(kept), len(chain) - 2)
        sig = self.zone.find_rdataset(origin, T.RRSIG, T.SOA)[0]
        with self.zone.writer() as txn:
            for name, _ in chain:
                txn.delete(name)
            for i, (name, rds) in enumerate(kept):
                nxt_owner = kept[(i + 1) % len(kept)][0].labels[0].decode()
                nxt = base64.b32hexdecode(nxt_owner.upper() + "=" * (-len(nxt_owner) % 8))
                rrset = dns.rrset.from_rdata(name, rds.ttl, rds[0].replace(next=nxt))
                rrsig = dns.dnssec.sign(
                    rrset,
                    self.private,
                    origin,
                    self.keys[0],
                    inception=sig.inception,
                    expiration=sig.expiration,
                )
                txn.add(rrset)
                txn.add(dns.rrset.from_rdata(name, rds.ttl, rrsig))

    @defer.inlineCallbacks
    def test_insecure_referral(self) -> Any:
        msg = yield query(SIGNED, "www.plain.sec.lab.", "A", do=True)
        self.assertEqual(rrs(msg.authority, T.NS), ["plain.sec.lab. NS ns1.plain.sec.lab."])
        self.check_sigs(msg)
        pairs = self.hashes(msg)
        self.assertIn(self.h("sec.lab."), [o for o, _ in pairs], "closest encloser matched")
        self.assertTrue(self.covered(pairs, "plain.sec.lab."), "next closer covered")
        self.assertTrue(all(r[0].flags & 1 for r in find(msg.authority, T.NSEC3)))

    @defer.inlineCallbacks
    def test_ds_nodata_at_opt_out_cut(self) -> Any:
        msg = yield query(SIGNED, "plain.sec.lab.", "DS", do=True)
        self.assertTrue(msg.flags & dns.flags.AA)
        self.assertTrue(self.covered(self.hashes(msg), "plain.sec.lab."))


def respond(server: AuthoritativeServer, msg: dns.message.Message) -> dns.message.Message:
    """Ask a server without sockets: L{AuthoritativeServer.handle} answers synchronously."""
    sent: list[bytes] = []
    server.handle(msg.to_wire(), "udp", sent.append)
    [wire] = sent
    return dns.message.from_wire(wire)


class EngineEdgeTests(unittest.TestCase):
    """Corners of the lookup algorithm, asked without sockets."""

    def server(self, text: str, origin: str = "edge.lab.") -> AuthoritativeServer:
        return AuthoritativeServer(zones_from_text({origin: text}), BASE + "91", PORT)

    def test_dname_at_apex(self) -> None:
        server = self.server(
            "$TTL 300\n@ IN SOA ns h 1 7200 900 1209600 300\n@ IN NS ns\n"
            "@ IN DNAME edge2.lab.\nns IN A 127.0.10.91\n"
        )
        msg = respond(server, make_query("www.edge.lab.", "A"))
        self.assertEqual(
            rrs(msg.answer), ["edge.lab. DNAME edge2.lab.", "www.edge.lab. CNAME www.edge2.lab."]
        )
        apex = respond(server, make_query("edge.lab.", "DNAME"))
        self.assertEqual(rrs(apex.answer), ["edge.lab. DNAME edge2.lab."])

    def test_dname_too_long_is_yxdomain(self) -> None:
        long_target = ".".join(["x" * 60] * 4) + "."
        server = self.server(
            "$TTL 300\n@ IN SOA ns h 1 7200 900 1209600 300\n@ IN NS ns\n"
            f"d IN DNAME {long_target}\nns IN A 127.0.10.91\n"
        )
        msg = respond(server, make_query("a" * 50 + ".d.edge.lab.", "A"))
        self.assertEqual(msg.rcode(), dns.rcode.YXDOMAIN)

    def test_cname_loop_ends(self) -> None:
        server = self.server(
            "$TTL 300\n@ IN SOA ns h 1 7200 900 1209600 300\n@ IN NS ns\n"
            "a IN CNAME b\nb IN CNAME a\nns IN A 127.0.10.91\n"
        )
        msg = respond(server, make_query("a.edge.lab.", "A"))
        self.assertEqual(
            rrs(msg.answer), ["a.edge.lab. CNAME b.edge.lab.", "b.edge.lab. CNAME a.edge.lab."]
        )

    def test_cname_to_nxdomain_in_zone(self) -> None:
        server = self.server(
            "$TTL 300\n@ IN SOA ns h 1 7200 900 1209600 300\n@ IN NS ns\n"
            "a IN CNAME gone\nns IN A 127.0.10.91\n"
        )
        msg = respond(server, make_query("a.edge.lab.", "A"))
        self.assertEqual(msg.rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(rrs(msg.answer), ["a.edge.lab. CNAME gone.edge.lab."])
        self.assertEqual(len(find(msg.authority, T.SOA)), 1)

    def test_relativized_zone(self) -> None:
        """Zones parsed with relativize=True (dnspython's default) serve the same."""
        text = "$TTL 300\n@ IN SOA ns h 1 7200 900 1209600 300\n@ IN NS ns\nns IN A 127.0.10.91\n"
        zone = dns.zone.from_text(text + "sub IN NS ns.sub\nns.sub IN A 127.0.10.92\n", "edge.lab.")
        server = AuthoritativeServer([zone], BASE + "91", PORT)
        msg = respond(server, make_query("x.sub.edge.lab.", "A"))
        self.assertEqual(rrs(msg.authority), ["sub.edge.lab. NS ns.sub.edge.lab."])
        self.assertEqual(rrs(msg.additional), ["ns.sub.edge.lab. A 127.0.10.92"])
