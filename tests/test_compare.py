"""kresolver against kresd, both resolving the standard lab hierarchy served by NSD (and Knot).

Issue 3's proof of conformance: the same questions asked of Knot Resolver (the reference)
and of kresolver (run as operators run it, ``twistd -n kresolver`` in a child process)
give the same rcode and answer set, and both give what the lab's table
(L{kresolver.testing.zones}) says. Beside the table: the dead zone fails with SERVFAIL and
an Extended DNS Error within the iterate layer's time cap, a repeated name comes from the
cache with a TTL that counts down, and answers are shaped as kresd shapes them (AA clear,
RA set, RD copied, the client's case, minimal responses, the SOA with negative answers).

NSD, kresd and kresolver start once for the whole class (a few seconds); the tests only
ask questions, in a fixed order where the cache matters.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import ClassVar

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
from twisted.trial import unittest

from kresolver.modules.iterate import DEFAULT_TIME_LIMIT
from kresolver.testing.daemon import missing_software
from kresolver.testing.nsd import KNOTD, NSD, KnotServer, NSDHierarchy, NSDServer, ServerFactory
from kresolver.testing.reference import KRESD, KresdReference, compare, query
from kresolver.testing.resolver import KresolverProcess
from kresolver.testing.zones import Case, LabSpec, standard_lab

_MISSING = missing_software(NSD, KRESD)
if _MISSING is not None:
    raise unittest.SkipTest(f"real-software lab unavailable: {_MISSING}")

LAB_BASE = "127.0.32."  # NSD: the standard lab on 127.0.32.1-8 (.6 stays silent)
KRESD_ADDRESS, KRESOLVER_ADDRESS = "127.0.33.1", "127.0.33.2"
KRESOLVER_OUTGOING, KRESD_OUTGOING = "127.0.33.3", "127.0.33.4"
#: the work cap of one request; SERVFAIL must come before it (plus scheduling slack)
TIME_CAP = DEFAULT_TIME_LIMIT + 1.0


def case_answer(response: dns.message.Message) -> tuple[str, ...]:
    """The answer section in the form of L{Case.answer}: sorted "owner TYPE rdata"."""
    return tuple(
        sorted(
            f"{rrset.name.to_text().lower()} {dns.rdatatype.to_text(rrset.rdtype)} {rdata}"
            for rrset in response.answer
            for rdata in rrset
        )
    )


def authority(response: dns.message.Message) -> list[tuple[str, str]]:
    return [
        (rrset.name.to_text().lower(), dns.rdatatype.to_text(rrset.rdtype))
        for rrset in response.authority
    ]


def ask(
    address: str, name: str, rdtype: str = "A", *, rd: bool = True, tcp: bool = False,
    fallback: bool = True,
) -> dns.message.Message:
    """One question with EDNS0, RD as given; a TC answer over UDP is retried over TCP."""
    message = dns.message.make_query(name, rdtype, use_edns=0)
    if not rd:
        message.flags &= ~dns.flags.RD
    if tcp:
        return dns.query.tcp(message, address, port=53, timeout=10)
    if fallback:
        response, _ = dns.query.udp_with_fallback(message, address, port=53, timeout=10)
        return response
    return dns.query.udp(message, address, port=53, timeout=10)


class _LabResolvers(unittest.TestCase):
    """NSD serving the standard lab, kresd and kresolver resolving in it (per class)."""

    spec: ClassVar[LabSpec]
    workdir: ClassVar[str]
    lab: ClassVar[NSDHierarchy]
    kresd: ClassVar[KresdReference]
    kresolver: ClassVar[KresolverProcess]
    #: the authoritative software serving the lab (NSD, or Knot DNS)
    server_factory: ClassVar[ServerFactory] = NSDServer

    @classmethod
    def setUpClass(cls) -> None:
        cls.spec = standard_lab(LAB_BASE)
        cls.workdir = tempfile.mkdtemp(prefix="kresolver-compare-")
        hints = cls.spec.root_hints()
        cls.lab = NSDHierarchy(
            cls.spec.by_address(), os.path.join(cls.workdir, "auth"),
            server_factory=cls.server_factory,
        )
        cls.kresd = KresdReference(
            KRESD_ADDRESS, 53, hints, os.path.join(cls.workdir, "kresd"), KRESD_OUTGOING
        )
        cls.kresolver = KresolverProcess(
            KRESOLVER_ADDRESS, 53, hints, os.path.join(cls.workdir, "kresolver"),
            KRESOLVER_OUTGOING,
        )
        try:
            cls.lab.start()
            cls.kresd.start()
            cls.kresolver.start(timeout=30)
        except BaseException:
            cls._stop()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls._stop()

    @classmethod
    def _stop(cls) -> None:
        for daemon in (cls.kresolver, cls.kresd, cls.lab):
            daemon.stop()
        shutil.rmtree(cls.workdir, ignore_errors=True)

    def both(self, name: str, rdtype: str = "A", **options: bool) -> tuple[
        dns.message.Message, dns.message.Message
    ]:
        """(kresd's answer, kresolver's answer) to the same question."""
        return ask(KRESD_ADDRESS, name, rdtype, **options), ask(
            KRESOLVER_ADDRESS, name, rdtype, **options
        )

    def log_tail(self) -> str:
        from kresolver.testing.daemon import tail

        return tail(self.kresolver.log_path, 20)


class CaseTableTests(_LabResolvers):
    """Every case of the lab's table: kresolver == kresd == the table, over UDP and TCP.

    One test method per case (made below the class) so a failure names the case.
    """

    def check_case(self, case: Case) -> None:
        transports = [False, True] if case.qname.startswith("big.") else [False]
        for tcp in transports:
            how = f"{case.qname} {case.qtype} ({case.shows}) over {'TCP' if tcp else 'UDP'}"
            reference, ours = self.both(case.qname, case.qtype, tcp=tcp)
            self.assertEqual(
                compare(reference, ours, labels=("kresd", "kresolver")), [], how
            )
            for label, response in (("kresd", reference), ("kresolver", ours)):
                got = (dns.rcode.to_text(response.rcode()), case_answer(response))
                self.assertEqual(got, (case.rcode, case.answer), f"{label}: {how}")
            self.assertFalse(ours.flags & dns.flags.AA, f"AA set: {how}")
            self.assertTrue(ours.flags & dns.flags.RA, f"RA clear: {how}")
            self.assertTrue(ours.flags & dns.flags.RD, f"RD not copied: {how}")


def _case_test(case: Case):  # type: ignore[no-untyped-def]
    def test(self: CaseTableTests) -> None:
        self.check_case(case)

    test.__doc__ = f"{case.qname} {case.qtype}: {case.shows}"
    return test


for _index, _case in enumerate(standard_lab(LAB_BASE).cases):
    _label = "".join(c if c.isalnum() else "_" for c in f"{_case.qname}{_case.qtype}")
    setattr(CaseTableTests, f"test_{_index:02d}_{_label.strip('_')}", _case_test(_case))


#: Questions beside the table: apex and delegation types, chains asked for other types,
#: DNAME below its target's names, wildcards deeper down, glueless NS names, unknown types.
MORE_QUESTIONS = """
alpha.lab. NS      alpha.lab. SOA     lab. NS            lab. SOA            . NS
. SOA              alpha.lab. DS      beta.kres. NS      gamma.lab. NS       dead.lab. DS
alias.alpha.lab. CNAME                alias.alpha.lab. AAAA                  alias.alpha.lab. TXT
dname.alpha.lab. DNAME                dname.alpha.lab. A nowhere.dname.alpha.lab. A
www.dname.alpha.lab. AAAA             a.b.dname.alpha.lab. A                 link2.beta.kres. A
link3.gamma.lab. CNAME                chain.alpha.lab. AAAA                  chain.alpha.lab. TXT
anything.wild.alpha.lab. TXT          a.b.wild.alpha.lab. A                  wild.alpha.lab. A
ns1.beta.kres. A   ns1.beta.kres. AAAA                    ns2.twoserv.kres. A twoserv.kres. NS
other.kres. SOA    x.other.kres. A    nowhere.kres. A     nowhere.gamma.lab. A www.gamma.lab. MX
ent.alpha.lab. TXT host.ent.alpha.lab. AAAA               big.alpha.lab. A    www.alpha.lab. HINFO
www.alpha.lab. TYPE65534              www.alpha.lab. CAA xn--bcher-kva.lab. A
""".split()


class AnswerShapeTests(_LabResolvers):
    """What the Done-when and item 4 of issue 3 ask beyond the answer sets."""

    def test_more_questions_agree_with_kresd(self) -> None:
        """Rcode, answer set and authority section (owner, type) as kresd gives them."""
        differences = []
        for name, rdtype in zip(MORE_QUESTIONS[::2], MORE_QUESTIONS[1::2], strict=True):
            for dnssec in (False, True):
                reference = query(KRESD_ADDRESS, 53, name, rdtype, dnssec=dnssec)
                ours = query(KRESOLVER_ADDRESS, 53, name, rdtype, dnssec=dnssec)
                how = f"{name} {rdtype}{' +dnssec' if dnssec else ''}"
                differences += [
                    f"{how}: {d}" for d in compare(reference, ours, labels=("kresd", "kresolver"))
                ]
                if authority(reference) != authority(ours):
                    differences.append(
                        f"{how}: authority kresd {authority(reference)}, "
                        f"kresolver {authority(ours)}"
                    )
        self.assertEqual(differences, [])

    def test_dead_zone_servfail_with_ede_within_cap(self) -> None:
        """Nothing listens for dead.lab.: SERVFAIL with an EDE, sooner than the cap."""
        started = time.monotonic()
        response = ask(KRESOLVER_ADDRESS, "never-asked.dead.lab.", "A")
        elapsed = time.monotonic() - started
        self.assertEqual(dns.rcode.to_text(response.rcode()), "SERVFAIL")
        self.assertLess(elapsed, TIME_CAP)
        codes = [error.code for error in response.extended_errors()]
        self.assertTrue(
            set(codes) & {dns.edns.EDECode.NO_REACHABLE_AUTHORITY, dns.edns.EDECode.NETWORK_ERROR},
            f"EDE codes {codes}",
        )
        self.assertEqual(
            dns.rcode.to_text(ask(KRESD_ADDRESS, "never-asked.dead.lab.", "A").rcode()),
            "SERVFAIL",
        )

    def test_repeated_name_from_cache_with_decreasing_ttl(self) -> None:
        """The second answer comes from the cache: same data, a TTL that went down."""
        first = ask(KRESOLVER_ADDRESS, "mail.alpha.lab.", "A")
        time.sleep(2.1)
        second = ask(KRESOLVER_ADDRESS, "mail.alpha.lab.", "A")
        self.assertEqual(case_answer(first), case_answer(second))
        self.assertEqual(case_answer(second), ("mail.alpha.lab. A 192.0.2.2",))
        self.assertLessEqual(first.answer[0].ttl, 300)
        self.assertLess(second.answer[0].ttl, first.answer[0].ttl)
        self.assertGreaterEqual(second.answer[0].ttl, first.answer[0].ttl - 10)

    def test_rd_copied_when_clear(self) -> None:
        """A question without RD gets an answer without RD (and RA set, AA clear)."""
        self.both("www.beta.kres.", "A")
        reference, ours = self.both("www.beta.kres.", "A", rd=False)
        self.assertFalse(ours.flags & dns.flags.RD)
        self.assertFalse(reference.flags & dns.flags.RD)
        self.assertTrue(ours.flags & dns.flags.RA)
        self.assertFalse(ours.flags & dns.flags.AA)

    def test_no_rd_refused_as_kresd(self) -> None:
        """kresd's default module refuse_nord answers RD=0 with REFUSED (no cache snooping)."""
        self.both("www.beta.kres.", "A")
        reference, ours = self.both("www.beta.kres.", "A", rd=False)
        self.assertEqual(dns.rcode.to_text(reference.rcode()), "REFUSED")
        self.assertEqual(compare(reference, ours, labels=("kresd", "kresolver")), [])

    def test_names_in_the_case_the_client_asked(self) -> None:
        asked = "WwW.AlPhA.LaB."
        for first in (True, False):  # resolved, then from the cache
            reference, ours = self.both(asked, "A")
            where = "first answer" if first else "cached answer"
            self.assertEqual(ours.question[0].name.to_text(), asked, where)
            self.assertEqual(
                [r.name.to_text() for r in ours.answer],
                [r.name.to_text() for r in reference.answer],
                where,
            )
            self.assertEqual(ours.answer[0].name.to_text(), asked, where)

    def test_minimal_responses(self) -> None:
        """Positive answers carry no authority or additional records (kresd's default)."""
        for name, rdtype in [
            ("www.alpha.lab.", "A"),
            ("alpha.lab.", "MX"),
            ("chain.alpha.lab.", "A"),
            ("www.gamma.lab.", "A"),
        ]:
            reference, ours = self.both(name, rdtype)
            self.assertTrue(ours.answer, f"{name} {rdtype}")
            self.assertEqual(ours.authority, [], f"{name} {rdtype}")
            self.assertEqual(ours.additional, [], f"{name} {rdtype}")
            self.assertEqual(reference.authority, [], f"kresd {name} {rdtype}")

    def test_negative_answers_carry_the_zone_soa(self) -> None:
        for name, rdtype, rcode, zone in [
            ("nowhere.alpha.lab.", "A", "NXDOMAIN", "alpha.lab."),
            ("txt.alpha.lab.", "A", "NOERROR", "alpha.lab."),
            ("ent.alpha.lab.", "A", "NOERROR", "alpha.lab."),
            ("anything.wild.alpha.lab.", "AAAA", "NOERROR", "alpha.lab."),
            ("nowhere.lab.", "A", "NXDOMAIN", "lab."),
            ("nowhere.", "A", "NXDOMAIN", "."),
        ]:
            for attempt in ("resolved", "cached"):
                reference, ours = self.both(name, rdtype)
                how = f"{name} {rdtype} ({attempt})"
                self.assertEqual(dns.rcode.to_text(ours.rcode()), rcode, how)
                self.assertEqual(ours.answer, [], how)
                self.assertEqual(authority(ours), [(zone, "SOA")], how)
                self.assertEqual(authority(reference), [(zone, "SOA")], f"kresd {how}")
                self.assertLessEqual(ours.authority[0].ttl, 300, how)

    def test_big_answer_truncated_over_udp(self) -> None:
        """2 kB of TXT does not fit the client's 1232 bytes: TC, as from kresd; TCP has all."""
        reference, ours = self.both("big.alpha.lab.", "TXT", fallback=False)
        self.assertTrue(reference.flags & dns.flags.TC)
        self.assertTrue(ours.flags & dns.flags.TC)
        full = ask(KRESOLVER_ADDRESS, "big.alpha.lab.", "TXT", tcp=True)
        self.assertEqual(len(case_answer(full)), 40)


class KnotServedTests(_LabResolvers):
    """The same lab served by Knot DNS instead of NSD: the same answers from both resolvers.

    Another authoritative implementation answers minimised questions, DNAME and
    wildcards in its own way; kresolver must still agree with kresd and with the table.
    """

    server_factory = KnotServer

    @classmethod
    def setUpClass(cls) -> None:
        if missing_software(KNOTD):
            raise unittest.SkipTest(str(missing_software(KNOTD)))
        super().setUpClass()

    def test_table_and_more_questions_agree(self) -> None:
        questions = [(case.qname, case.qtype) for case in self.spec.cases]
        questions += list(zip(MORE_QUESTIONS[::2], MORE_QUESTIONS[1::2], strict=True))
        differences = []
        for name, rdtype in questions:
            reference, ours = self.both(name, rdtype)
            differences += [
                f"{name} {rdtype}: {d}"
                for d in compare(reference, ours, labels=("kresd", "kresolver"))
            ]
            if authority(reference) != authority(ours):
                differences.append(
                    f"{name} {rdtype}: authority kresd {authority(reference)}, "
                    f"kresolver {authority(ours)}"
                )
        for case in self.spec.cases:
            ours = ask(KRESOLVER_ADDRESS, case.qname, case.qtype)
            got = (dns.rcode.to_text(ours.rcode()), case_answer(ours))
            if got != (case.rcode, case.answer):
                differences.append(f"table: {case.qname} {case.qtype} ({case.shows}): {got}")
        self.assertEqual(differences, [])
