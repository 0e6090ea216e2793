"""kresolver when authoritative servers (NSD) die, go silent or are lame.

A small hierarchy of its own, one NSD per address, with kresolver running as operators
run it (``twistd -n kresolver`` in a child process); every test gets a fresh hierarchy
and a fresh resolver, because the tests stop servers::

    127.0.32.21  a.root-servers.lab.  .
    127.0.32.22  ns.lab.              lab.
    127.0.32.23  ns.stale.lab.        stale.lab.   (TTL 2, for serve-stale)
    127.0.32.24  ns.gone.lab.         gone.lab.    (stopped mid-test)
    127.0.32.25  ns1.pair.lab.        pair.lab.  mixed.lab.  upward.lab.
    127.0.32.26  ns2.pair.lab.        decoy.lab.   (lame for pair.lab.: REFUSED)
    127.0.32.27  ns2.mixed.lab.       a socket that never answers (mixed.lab.'s second server)

``upward.lab.`` is also delegated to ns.lab., which answers for it with the referral
it came from (a lame server that does not say REFUSED).

A stopped NSD leaves a closed port, which the kernel answers with ICMP port unreachable;
kresolver's upstream sockets are unconnected (as kresd's), so neither resolver hears it and
both time out, as they do for a server that "never answers": a socket bound to the address
that reads nothing (L{Blackhole}).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
from twisted.trial import unittest

from kresolver.modules.iterate import DEFAULT_TIME_LIMIT
from kresolver.testing.daemon import AddressLock, ensure_free, missing_software
from kresolver.testing.nsd import NSD, NSDHierarchy
from kresolver.testing.resolver import KresolverProcess

_MISSING = missing_software(NSD)
if _MISSING is not None:
    raise unittest.SkipTest(f"real-software lab unavailable: {_MISSING}")

ROOT, TLD, STALE, GONE, PAIR1, PAIR2, SILENT = (f"127.0.32.{i}" for i in range(21, 28))
RESOLVER, OUTGOING = "127.0.33.11", "127.0.33.12"
ROOT_HINTS = {"a.root-servers.lab.": [ROOT]}
#: the work cap of one request (below the default, to keep the tests short); SERVFAIL or a
#: stale answer must come before it, give or take scheduling
TIME_LIMIT = DEFAULT_TIME_LIMIT / 2
TIME_CAP = TIME_LIMIT + 1.0
STALE_TTL = 2


def _zone(origin: str, ns: dict[str, str], body: str, ttl: int = 3600, minimum: int = 300) -> str:
    """Zone text: SOA, apex NS with glue, then C{body} (relative names allowed)."""
    lines = [f"$ORIGIN {origin}", f"$TTL {ttl}"]
    first = next(iter(ns))
    lines.append(f"@ SOA {first} hostmaster 1 3600 600 86400 {minimum}")
    lines += [f"@ NS {name}" for name in ns]
    lines += [f"{name} A {address}" for name, address in ns.items() if name.endswith(origin)]
    return "\n".join(lines) + "\n" + body.strip() + "\n"


def hierarchy() -> dict[str, dict[str, str]]:
    root = _zone(
        ".",
        {"a.root-servers.lab.": ROOT},
        f"lab. NS ns.lab.\nns.lab. A {TLD}",
    )
    lab = _zone(
        "lab.",
        {"ns.lab.": TLD},
        f"""
a.root-servers A {ROOT}
stale NS ns.stale
ns.stale A {STALE}
gone NS ns.gone
ns.gone A {GONE}
pair NS ns1.pair
pair NS ns2.pair
ns1.pair A {PAIR1}
ns2.pair A {PAIR2}
decoy NS ns2.pair
mixed NS ns1.mixed
mixed NS ns2.mixed
ns1.mixed A {PAIR1}
ns2.mixed A {SILENT}
upward NS ns1.pair
upward NS ns.lab.
""",
    )
    stale = _zone(
        "stale.lab.",
        {"ns.stale.lab.": STALE},
        f"www {STALE_TTL} A 192.0.2.60",
        minimum=STALE_TTL,
    )
    gone = _zone(
        "gone.lab.",
        {"ns.gone.lab.": GONE},
        "www A 192.0.2.70\nalias CNAME www",
    )
    pair = _zone(
        "pair.lab.",
        {"ns1.pair.lab.": PAIR1, "ns2.pair.lab.": PAIR2},
        "\n".join(f"host{i} 300 A 192.0.2.{80 + i}" for i in range(8)),
    )
    decoy = _zone("decoy.lab.", {"ns2.pair.lab.": PAIR2}, "www A 192.0.2.99")
    mixed = _zone(
        "mixed.lab.",
        {"ns1.mixed.lab.": PAIR1, "ns2.mixed.lab.": SILENT},
        "\n".join(f"host{i} 300 A 192.0.2.{100 + i}" for i in range(8)),
    )
    upward = _zone(
        "upward.lab.",
        {"ns1.pair.lab.": PAIR1, "ns.lab.": TLD},
        "\n".join(f"host{i} 300 A 192.0.2.{120 + i}" for i in range(8)),
    )
    return {
        ROOT: {".": root},
        TLD: {"lab.": lab},
        STALE: {"stale.lab.": stale},
        GONE: {"gone.lab.": gone},
        PAIR1: {"pair.lab.": pair, "mixed.lab.": mixed, "upward.lab.": upward},
        PAIR2: {"decoy.lab.": decoy},
    }


class Blackhole:
    """A DNS server that never answers: UDP bound but never read, TCP never accepted.

    It claims the address like a lab server (``AddressLock``), so a concurrent test run
    waits instead of finding the port taken.
    """

    def __init__(self, address: str, port: int = 53) -> None:
        self.address = address
        self.port = port
        self._lock = AddressLock(address, port)
        self._sockets: list[socket.socket] = []

    def start(self) -> None:
        self._lock.acquire(60)
        try:
            ensure_free(self.address, self.port)
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                s = socket.socket(socket.AF_INET, kind)
                self._sockets.append(s)
                s.bind((self.address, self.port))
                if kind == socket.SOCK_STREAM:
                    s.listen(16)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for s in self._sockets:
            s.close()
        self._sockets.clear()
        self._lock.release()


def ask(name: str, rdtype: str = "A") -> dns.message.Message:
    message = dns.message.make_query(name, rdtype, use_edns=0)
    response, _ = dns.query.udp_with_fallback(message, RESOLVER, port=53, timeout=15)
    return response


def answer_of(response: dns.message.Message) -> list[str]:
    return sorted(
        f"{rrset.name.to_text().lower()} {dns.rdatatype.to_text(rrset.rdtype)} {rdata}"
        for rrset in response.answer
        for rdata in rrset
    )


class RecursionThroughNSDTests(unittest.TestCase):
    def setUp(self) -> None:
        workdir = tempfile.mkdtemp(prefix="kresolver-recursion-nsd-")
        self.addCleanup(shutil.rmtree, workdir, True)
        self.lab = NSDHierarchy(hierarchy(), os.path.join(workdir, "nsd"))
        self.addCleanup(self.lab.stop)
        self.lab.start()
        self.resolver = KresolverProcess(
            RESOLVER,
            53,
            ROOT_HINTS,
            os.path.join(workdir, "kresolver"),
            OUTGOING,
            extra_config=f"cache.min_ttl(1)\niterate.time_limit = {TIME_LIMIT}",
        )
        self.addCleanup(self.resolver.stop)
        self.resolver.start(timeout=30)

    def go_silent(self, address: str) -> None:
        """Stop the NSD on C{address} and leave a socket there that never answers."""
        self.lab.stop_server(address)
        silent = Blackhole(address)
        silent.start()
        self.addCleanup(silent.stop)

    def assertServfailWithEDE(self, response: dns.message.Message, elapsed: float) -> None:
        self.assertEqual(dns.rcode.to_text(response.rcode()), "SERVFAIL")
        self.assertLess(elapsed, TIME_CAP)
        codes = [error.code for error in response.extended_errors()]
        self.assertTrue(
            set(codes) & {dns.edns.EDECode.NO_REACHABLE_AUTHORITY, dns.edns.EDECode.NETWORK_ERROR},
            f"EDE codes {codes}",
        )

    def test_zone_whose_only_server_never_answers(self) -> None:
        """The server answers once, then goes silent: a new name fails within the cap."""
        self.assertEqual(answer_of(ask("www.gone.lab.")), ["www.gone.lab. A 192.0.2.70"])
        self.go_silent(GONE)
        started = time.monotonic()
        response = ask("new.gone.lab.")
        self.assertServfailWithEDE(response, time.monotonic() - started)

    def test_zone_whose_only_server_is_stopped(self) -> None:
        """A stopped server (port unreachable) fails fast, with the same SERVFAIL and EDE."""
        ask("www.gone.lab.")
        self.lab.stop_server(GONE)
        started = time.monotonic()
        response = ask("new.gone.lab.", "TXT")
        self.assertServfailWithEDE(response, time.monotonic() - started)

    def test_silent_zone_from_a_cold_cache(self) -> None:
        """Never answered at all: the referral is followed, then SERVFAIL within the cap."""
        self.go_silent(GONE)
        started = time.monotonic()
        response = ask("www.gone.lab.")
        self.assertServfailWithEDE(response, time.monotonic() - started)
        # the resolver stays healthy for other zones
        self.assertEqual(answer_of(ask("host0.pair.lab.")), ["host0.pair.lab. A 192.0.2.80"])

    def test_one_lame_server_of_two(self) -> None:
        """ns2.pair.lab. REFUSES pair.lab.: every name is still answered, as is NXDOMAIN."""
        for i in range(8):
            self.assertEqual(
                answer_of(ask(f"host{i}.pair.lab.")), [f"host{i}.pair.lab. A 192.0.2.{80 + i}"]
            )
        nx = ask("missing.pair.lab.")
        self.assertEqual(dns.rcode.to_text(nx.rcode()), "NXDOMAIN")
        self.assertEqual([r.name.to_text() for r in nx.authority], ["pair.lab."])
        self.assertEqual(answer_of(ask("www.decoy.lab.")), ["www.decoy.lab. A 192.0.2.99"])

    def test_one_silent_server_of_two(self) -> None:
        """ns2.mixed.lab. never answers: every name is answered, each within the cap."""
        silent = Blackhole(SILENT)
        silent.start()
        self.addCleanup(silent.stop)
        for i in range(8):
            started = time.monotonic()
            response = ask(f"host{i}.mixed.lab.")
            self.assertLess(time.monotonic() - started, TIME_CAP)
            self.assertEqual(answer_of(response), [f"host{i}.mixed.lab. A 192.0.2.{100 + i}"])

    def test_lame_server_answering_with_the_same_referral(self) -> None:
        """ns.lab. answers for upward.lab. with the referral it gave: lame, not a loop."""
        for i in range(8):
            started = time.monotonic()
            response = ask(f"host{i}.upward.lab.")
            self.assertLess(time.monotonic() - started, TIME_CAP)
            self.assertEqual(answer_of(response), [f"host{i}.upward.lab. A 192.0.2.{120 + i}"])

    def test_server_back_after_failure(self) -> None:
        """A zone fails while its server is down and resolves again once it is back."""
        self.lab.stop_server(GONE)
        self.assertEqual(dns.rcode.to_text(ask("www.gone.lab.").rcode()), "SERVFAIL")
        self.lab[GONE].start()
        deadline = time.monotonic() + 2 * TIME_CAP
        answers = []
        while time.monotonic() < deadline:
            answers = answer_of(ask("alias.gone.lab."))
            if answers:
                break
            time.sleep(0.5)
        self.assertEqual(
            answers, ["alias.gone.lab. CNAME www.gone.lab.", "www.gone.lab. A 192.0.2.70"]
        )

    def test_cached_answer_served_after_server_killed(self) -> None:
        """NSD goes away between two questions: the second is answered from the cache."""
        target = "www.gone.lab. A 192.0.2.70"
        expected = {
            "alias.gone.lab.": ["alias.gone.lab. CNAME www.gone.lab.", target],
            "www.gone.lab.": [target],
        }
        first = ask("alias.gone.lab.")
        self.assertEqual(answer_of(first), expected["alias.gone.lab."])
        self.lab.stop_server(GONE)
        self.assertFalse(self.lab[GONE].running())
        for name, records in expected.items():
            again = ask(name)
            self.assertEqual(dns.rcode.to_text(again.rcode()), "NOERROR", name)
            self.assertEqual(answer_of(again), records, name)
            self.assertLessEqual(again.answer[-1].ttl, first.answer[-1].ttl)

    def test_serve_stale_after_expiry_when_server_is_silent(self) -> None:
        """RFC 8767: the record expired, its only server is silent; the stale record
        answers (with a short TTL) within the cap instead of SERVFAIL."""
        fresh = ask("www.stale.lab.")
        self.assertEqual(answer_of(fresh), ["www.stale.lab. A 192.0.2.60"])
        self.assertLessEqual(fresh.answer[0].ttl, STALE_TTL)
        self.go_silent(STALE)
        time.sleep(STALE_TTL + 1.5)
        started = time.monotonic()
        stale = ask("www.stale.lab.")
        elapsed = time.monotonic() - started
        self.assertEqual(dns.rcode.to_text(stale.rcode()), "NOERROR")
        self.assertEqual(answer_of(stale), ["www.stale.lab. A 192.0.2.60"])
        self.assertLess(elapsed, TIME_CAP)
        self.assertTrue(1 <= stale.answer[0].ttl <= 30, stale.answer[0].ttl)

    def test_serve_stale_after_expiry_when_server_is_stopped(self) -> None:
        fresh = ask("www.stale.lab.")
        self.assertEqual(answer_of(fresh), ["www.stale.lab. A 192.0.2.60"])
        self.lab.stop_server(STALE)
        time.sleep(STALE_TTL + 1.5)
        stale = ask("www.stale.lab.")
        self.assertEqual(dns.rcode.to_text(stale.rcode()), "NOERROR")
        self.assertEqual(answer_of(stale), ["www.stale.lab. A 192.0.2.60"])
