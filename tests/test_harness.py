"""The real-software lab: NSD serving a hierarchy on loopback, kresd resolving through it.

These tests prove the harness the recursion tests rely on: one NSD per address answers
only for its own zones, kresd follows the lab's root (never the real one) down to an
answer, and ``compare`` sees a difference when there is one.
"""

from __future__ import annotations

import os
import socket
import tempfile

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
from twisted.trial import unittest

from kresolver.testing.daemon import DaemonError, missing_software
from kresolver.testing.nsd import KNOTD, NSD, KnotServer, NSDHierarchy, NSDServer, ZoneError
from kresolver.testing.reference import (
    KRESD,
    UNBOUND,
    KresdReference,
    UnboundReference,
    compare,
    query,
)
from kresolver.testing.zones import sign_lab, standard_lab

_MISSING = missing_software(NSD, KRESD)
if _MISSING is not None:
    raise unittest.SkipTest(f"real-software lab unavailable: {_MISSING}")

ROOT, TLD, EXAMPLE, OTHER, DEAD = (f"127.0.30.{i}" for i in range(1, 6))
SPARE = "127.0.30.9"
LAB_BASE = "127.0.30."  # the standard lab on 127.0.30.1-8
KRESD_ADDRESS, KRESD_OUTGOING = "127.0.31.1", "127.0.31.201"
UNBOUND_ADDRESS, UNBOUND_OUTGOING = "127.0.31.2", "127.0.31.202"
ROOT_HINTS = {"a.root-servers.lab.": [ROOT]}

SOA = "1 3600 600 86400 300"


def _hierarchy() -> dict[str, dict[str, str]]:
    """Root, the TLD ``lab.``, and three second-level zones, all with glue."""
    root = f"""$TTL 3600
. SOA a.root-servers.lab. admin.lab. {SOA}
. NS a.root-servers.lab.
a.root-servers.lab. A {ROOT}
lab. NS ns.lab.
ns.lab. A {TLD}
"""
    lab = f"""$TTL 3600
@ SOA ns admin {SOA}
@ NS ns
ns A {TLD}
a.root-servers A {ROOT}
example NS ns.example
ns.example A {EXAMPLE}
other NS ns.other
ns.other A {OTHER}
dead NS ns.dead
ns.dead A {DEAD}
"""
    example = f"""$TTL 3600
@ SOA ns admin {SOA}
@ NS ns
ns A {EXAMPLE}
www A 192.0.2.1
alias CNAME chain.other.lab.
txt TXT "Mixed Case"
"""
    other = f"""$TTL 3600
@ SOA ns admin {SOA}
@ NS ns
ns A {OTHER}
chain CNAME www
www A 192.0.2.2
www A 192.0.2.3
"""
    dead = f"""$TTL 3600
@ SOA ns admin {SOA}
@ NS ns
ns A {DEAD}
www A 192.0.2.9
"""
    return {
        ROOT: {".": root},
        TLD: {"lab.": lab},
        EXAMPLE: {"example.lab.": example},
        OTHER: {"other.lab.": other},
        DEAD: {"dead.lab.": dead},
    }


def _rrsets(message: dns.message.Message) -> dict[tuple[str, str], set[str]]:
    return {
        (rrset.name.to_text().lower(), dns.rdatatype.to_text(rrset.rdtype)): {
            rdata.to_text() for rdata in rrset
        }
        for rrset in message.answer
    }


class KresdThroughNSDTests(unittest.TestCase):
    """kresd resolving from the lab root, with a fresh lab and cache for every test."""

    def setUp(self) -> None:
        workdir = tempfile.mkdtemp(prefix="kresolver-harness-")
        self.lab = NSDHierarchy(_hierarchy(), os.path.join(workdir, "nsd"))
        self.addCleanup(self.lab.stop)
        self.lab.start()
        self.kresd = KresdReference(
            KRESD_ADDRESS, 53, ROOT_HINTS, os.path.join(workdir, "kresd"), KRESD_OUTGOING
        )
        self.addCleanup(self.kresd.stop)
        self.kresd.start()

    def test_config_replaces_root_hints_first(self) -> None:
        config = self.kresd.config().splitlines()
        self.assertEqual(
            config[1:3],
            [
                "modules.load('hints > iterate')",
                'hints.root({["a.root-servers.lab."] = {"127.0.30.1"}})',
            ],
        )
        self.assertIn('net.outgoing_v4("127.0.31.201")', config)
        self.assertIn("trust_anchors.remove('.')", config)

    def test_answers_from_lab_root_not_real_root(self) -> None:
        """A real TLD does not exist in the lab: the lab root's NXDOMAIN comes back."""
        response = self.kresd.query("com.", "NS")
        self.assertEqual(response.rcode(), dns.rcode.NXDOMAIN)
        (soa,) = response.authority
        self.assertEqual(soa.name.to_text(), ".")
        self.assertEqual(soa[0].mname.to_text(), "a.root-servers.lab.")

    def test_positive_answer(self) -> None:
        response = self.kresd.query("www.example.lab.", "A")
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertTrue(response.flags & dns.flags.RA)
        self.assertEqual(_rrsets(response), {("www.example.lab.", "A"): {"192.0.2.1"}})

    def test_positive_answer_over_tcp(self) -> None:
        response = self.kresd.query("txt.example.lab.", "TXT", tcp=True)
        self.assertEqual(_rrsets(response), {("txt.example.lab.", "TXT"): {'"Mixed Case"'}})

    def test_nxdomain_carries_zone_soa(self) -> None:
        response = self.kresd.query("missing.example.lab.", "A")
        self.assertEqual(response.rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(response.answer, [])
        self.assertEqual(
            [(r.name.to_text(), r.rdtype) for r in response.authority],
            [("example.lab.", dns.rdatatype.SOA)],
        )

    def test_nodata(self) -> None:
        response = self.kresd.query("www.example.lab.", "AAAA")
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertEqual(response.answer, [])
        self.assertEqual(
            [(r.name.to_text(), r.rdtype) for r in response.authority],
            [("example.lab.", dns.rdatatype.SOA)],
        )

    def test_cname_chain_across_zones(self) -> None:
        response = self.kresd.query("alias.example.lab.", "A")
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        self.assertEqual(
            _rrsets(response),
            {
                ("alias.example.lab.", "CNAME"): {"chain.other.lab."},
                ("chain.other.lab.", "CNAME"): {"www.other.lab."},
                ("www.other.lab.", "A"): {"192.0.2.2", "192.0.2.3"},
            },
        )

    def test_compare_with_authoritative_answer(self) -> None:
        """kresd's answer matches the zone's own; a different name's answer does not."""
        resolved = self.kresd.query("www.other.lab.", "A")
        authoritative = query(OTHER, 53, "www.other.lab.", "A")
        self.assertTrue(authoritative.flags & dns.flags.AA)
        self.assertEqual(compare(resolved, authoritative), [])
        elsewhere = query(EXAMPLE, 53, "www.example.lab.", "A")
        differences = compare(resolved, elsewhere, labels=("kresd", "nsd"))
        self.assertEqual(
            differences,
            [
                "only in nsd: www.example.lab. A [192.0.2.1]",
                "only in kresd: www.other.lab. A [192.0.2.2, 192.0.2.3]",
            ],
        )

    def test_stopped_server_gives_servfail(self) -> None:
        """stop_server makes a zone dead: kresd then fails instead of answering."""
        self.assertEqual(self.kresd.query("ns.dead.lab.", "A").rcode(), dns.rcode.NOERROR)
        self.lab.stop_server(DEAD)
        self.assertFalse(self.lab[DEAD].running())
        self.assertEqual(self.kresd.query("www.dead.lab.", "A").rcode(), dns.rcode.SERVFAIL)

    def test_unbound_agrees_with_kresd(self) -> None:
        if missing_software(UNBOUND):
            raise unittest.SkipTest(missing_software(UNBOUND))
        unbound = UnboundReference(
            UNBOUND_ADDRESS, 53, ROOT_HINTS, tempfile.mkdtemp(), UNBOUND_OUTGOING
        )
        self.addCleanup(unbound.stop)
        unbound.start()
        for name, rdtype in [
            ("www.example.lab.", "A"),
            ("alias.example.lab.", "A"),
            ("missing.other.lab.", "A"),
            ("www.example.lab.", "AAAA"),
        ]:
            differences = compare(
                self.kresd.query(name, rdtype),
                unbound.query(name, rdtype),
                labels=("kresd", "unbound"),
            )
            self.assertEqual(differences, [], f"{name} {rdtype}")


def _case_answer(response: dns.message.Message) -> tuple[str, ...]:
    """The answer section in the form of L{Case.answer}: sorted "owner TYPE rdata"."""
    return tuple(
        sorted(
            f"{rrset.name.to_text().lower()} {dns.rdatatype.to_text(rrset.rdtype)} {rdata}"
            for rrset in response.answer
            for rdata in rrset
        )
    )


class StandardLabThroughKresdTests(unittest.TestCase):
    """The shared lab hierarchy (``zones``) on NSD: kresd gives every answer its table says.

    This checks the table against the reference before the recursion tests hold
    kresolver to it, and shows that the hierarchy works on real authoritative software.
    """

    def _start(self, spec_servers: dict[str, dict[str, str]], **kresd: str) -> KresdReference:
        workdir = tempfile.mkdtemp(prefix="kresolver-standard-")
        lab = NSDHierarchy(spec_servers, os.path.join(workdir, "nsd"))
        self.addCleanup(lab.stop)
        lab.start()
        resolver = KresdReference(
            KRESD_ADDRESS,
            53,
            standard_lab(LAB_BASE).root_hints(),
            os.path.join(workdir, "kresd"),
            KRESD_OUTGOING,
            **kresd,
        )
        self.addCleanup(resolver.stop)
        resolver.start()
        return resolver

    def test_every_case(self) -> None:
        spec = standard_lab(LAB_BASE)
        kresd = self._start(spec.by_address())
        mismatches = []
        for case in spec.cases:
            response = kresd.query(case.qname, case.qtype)
            got = (dns.rcode.to_text(response.rcode()), _case_answer(response))
            if got != (case.rcode, case.answer):
                mismatches.append(f"{case.qname} {case.qtype} ({case.shows}): {got}")
        self.assertEqual(mismatches, [])

    def test_signed_lab_validates_with_trust_anchor(self) -> None:
        """The trust_anchor argument makes kresd validate: AD on a signed name."""
        signed = sign_lab(standard_lab(LAB_BASE), [".", "lab.", "alpha.lab."])
        kresd = self._start(signed.spec.by_address(), trust_anchor=signed.trust_anchor)
        secure = kresd.query("www.alpha.lab.", "A", dnssec=True)
        self.assertEqual(secure.rcode(), dns.rcode.NOERROR)
        self.assertTrue(secure.flags & dns.flags.AD)
        insecure = kresd.query("www.beta.kres.", "A", dnssec=True)
        self.assertEqual(_case_answer(insecure), ("www.beta.kres. A 192.0.2.10",))
        self.assertFalse(insecure.flags & dns.flags.AD)


class AuthoritativeServerTests(unittest.TestCase):
    """One server process per address, with clear errors for bad zones and taken ports."""

    def setUp(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix="kresolver-nsd-")

    def _zone(self, origin: str, address: str) -> str:
        return f"$TTL 60\n@ SOA ns admin {SOA}\n@ NS ns\nns A {address}\nwww A 192.0.2.7\n"

    def test_serves_only_its_own_zones(self) -> None:
        server = NSDServer(SPARE, {"solo.lab": self._zone("solo.lab.", SPARE)}, self.workdir)
        self.addCleanup(server.stop)
        server.start()
        answer = query(SPARE, 53, "www.solo.lab.", "A")
        self.assertTrue(answer.flags & dns.flags.AA)
        self.assertEqual(_rrsets(answer), {("www.solo.lab.", "A"): {"192.0.2.7"}})
        self.assertEqual(query(SPARE, 53, "www.example.lab.", "A").rcode(), dns.rcode.REFUSED)

    def test_bad_zone_text_names_the_error(self) -> None:
        server = NSDServer(SPARE, {"bad.lab.": "$TTL 60\nwww IN A 1.2.3\n"}, self.workdir)
        self.addCleanup(server.stop)
        with self.assertRaisesRegex(ZoneError, "invalid IPv4 address"):
            server.start()
        self.assertFalse(server.running())

    def test_taken_address_is_refused_and_freed_by_stop(self) -> None:
        zones = {"solo.lab.": self._zone("solo.lab.", SPARE)}
        first = NSDServer(SPARE, zones, os.path.join(self.workdir, "1"))
        self.addCleanup(first.stop)
        first.start()
        second = NSDServer(SPARE, zones, os.path.join(self.workdir, "2"))
        second.lock_timeout = 0.0  # the claim is ours already: do not wait for it
        self.addCleanup(second.stop)
        with self.assertRaisesRegex(DaemonError, "in use by another lab server"):
            second.start()
        first.stop()
        second.start()
        self.assertEqual(query(SPARE, 53, "www.solo.lab.", "A").rcode(), dns.rcode.NOERROR)

    def test_port_taken_outside_the_lab_is_refused(self) -> None:
        """Something that is not a lab server holds the port: a clear error, no wait."""
        squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(squatter.close)
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((SPARE, 53))
        server = NSDServer(SPARE, {"solo.lab.": self._zone("solo.lab.", SPARE)}, self.workdir)
        self.addCleanup(server.stop)
        with self.assertRaisesRegex(DaemonError, "udp port 53 is already in use"):
            server.start()
        squatter.close()
        server.start()
        self.assertTrue(server.running())

    def test_knot_serves_the_same_zone(self) -> None:
        if missing_software(KNOTD):
            raise unittest.SkipTest(missing_software(KNOTD))
        server = KnotServer(SPARE, {"solo.lab.": self._zone("solo.lab.", SPARE)}, self.workdir)
        self.addCleanup(server.stop)
        server.start()
        answer = query(SPARE, 53, "www.solo.lab.", "A")
        self.assertTrue(answer.flags & dns.flags.AA)
        self.assertEqual(_rrsets(answer), {("www.solo.lab.", "A"): {"192.0.2.7"}})


def _response(rcode: int, *records: str, flags: int = 0) -> dns.message.Message:
    """A response to an A question for a.lab. with the given answer records."""
    response = dns.message.make_response(dns.message.make_query("a.lab.", "A"))
    response.set_rcode(rcode)
    response.flags |= flags
    for text in records:
        name, ttl, rdtype, *rdata = text.split()
        response.answer.append(dns.rrset.from_text(name, int(ttl), "IN", rdtype, " ".join(rdata)))
    return response


class CompareTests(unittest.TestCase):
    """compare ignores TTL, order and name case; reports rcode, RRset and flag differences."""

    def test_same_answer_in_other_order_case_and_ttl(self) -> None:
        a = _response(0, "a.lab. 60 CNAME b.lab.", "b.lab. 60 A 192.0.2.1", "b.lab. 60 A 192.0.2.2")
        b = _response(
            0, "B.lab. 10 A 192.0.2.2", "b.LAB. 10 A 192.0.2.1", "A.lab. 3600 CNAME B.Lab."
        )
        self.assertEqual(compare(a, b), [])

    def test_rcode_difference(self) -> None:
        self.assertEqual(
            compare(_response(dns.rcode.NXDOMAIN), _response(dns.rcode.SERVFAIL)),
            ["rcode: a NXDOMAIN, b SERVFAIL"],
        )

    def test_rdata_difference(self) -> None:
        a = _response(0, "a.lab. 60 A 192.0.2.1")
        b = _response(0, "a.lab. 60 A 192.0.2.1", "a.lab. 60 A 192.0.2.2")
        self.assertEqual(
            compare(a, b, labels=("kresolver", "kresd")),
            ["differs: kresolver a.lab. A [192.0.2.1], kresd a.lab. A [192.0.2.1, 192.0.2.2]"],
        )

    def test_text_rdata_is_case_sensitive(self) -> None:
        a = _response(0, 'a.lab. 60 TXT "Hello"')
        b = _response(0, 'a.lab. 60 TXT "hello"')
        self.assertEqual(len(compare(a, b)), 1)

    def test_missing_end_of_cname_chain(self) -> None:
        a = _response(0, "a.lab. 60 CNAME b.lab.", "b.lab. 60 A 192.0.2.1")
        b = _response(0, "a.lab. 60 CNAME b.lab.")
        self.assertEqual(compare(a, b), ["only in a: b.lab. A [192.0.2.1]"])

    def test_flags_only_when_asked(self) -> None:
        a = _response(0, "a.lab. 60 A 192.0.2.1", flags=dns.flags.AD)
        b = _response(0, "a.lab. 60 A 192.0.2.1")
        self.assertEqual(compare(a, b), [])
        self.assertEqual(compare(a, b, flags=("AD",)), ["flag AD: a set, b clear"])
