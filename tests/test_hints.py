"""The hints module: its config API, hosts files, the produce layer, and answers on the wire."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.reversename
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial import unittest

import kresolver.plugins
from kresolver.engine import ConfigError, Engine
from kresolver.modules.hints import (
    DEFAULT_TTL,
    Hints,
    HintsAPI,
    parse_address,
    parse_name,
    parse_pair,
    read_hosts,
)
from kresolver.resolve.request import Request, State
from kresolver.testing.lab import ask

SERVER = "127.0.41.1"

HOSTS = """\
# a hosts file as /etc/hosts has them
127.0.41.10   alpha.test   a1.test a2.test   # canonical name last wins PTR
127.0.41.11\tbeta.test

::1           six.test
2001:db8::41  six.test        # a second address of another family
127.0.41.12   multi.test
127.0.41.13   multi.test
"""

BAD_HOSTS = """\
127.0.41.20 good1.test
999.1.1.1 badaddr.test
127.0.41.21
127.0.41.22 bad..name.test
not-an-address
127.0.41.23 good2.test  good-alias.test
fe80::1%eth0 scoped.test
"""


def scratch(case: unittest.TestCase) -> str:
    """A temporary directory that goes away with the test (trial's mktemp() would leave
    one in the working directory when pytest runs the tests)."""
    directory = tempfile.mkdtemp(prefix="kresolver-hints-")
    case.addCleanup(shutil.rmtree, directory, True)
    return directory


def write(case: unittest.TestCase, text: str, name: str = "hosts") -> str:
    directory = scratch(case)
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(text)
    return path


class CountingEngine(Engine):
    """An engine that counts C{changed()}: every hint change must clear stored answers."""

    def __init__(self, reactor: Any) -> None:
        self.changes = 0
        super().__init__(reactor)

    def changed(self) -> None:
        self.changes += 1
        super().changed()


def make_engine(clock: Any = None) -> tuple[CountingEngine, HintsAPI, Hints]:
    engine = CountingEngine(clock if clock is not None else Clock())
    engine.modules.load("hints")
    module = engine.modules["hints"]
    assert isinstance(module, Hints)
    return engine, engine.namespace["hints"], module


def request(engine: Engine, name: str, rdtype: str = "A", **kwargs: Any) -> Request:
    query = dns.message.make_query(name, rdtype, **kwargs)
    return Request(engine, query.to_wire(), query, ("127.0.41.2", 5300), (SERVER, 53), "udp", 0.0)


def resolve(engine: Engine, name: str, rdtype: str = "A") -> tuple[State, Request]:
    req = request(engine, name, rdtype)
    state = engine.resolver.resolve(req)
    assert not isinstance(state, defer.Deferred)
    return state, req


def answer_texts(message: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in message.answer for rd in rrset)


class ParsingTests(unittest.TestCase):
    def test_names_are_lowercased_absolute(self) -> None:
        self.assertEqual(parse_name("LocalHost"), dns.name.from_text("localhost."))
        self.assertEqual(parse_name("LocalHost").to_text(), "localhost.")
        self.assertEqual(parse_name("_srv.Example.test.").to_text(), "_srv.example.test.")

    def test_bad_names(self) -> None:
        for bad in ("", ".", "a..b", "x" * 64 + ".test", "sp ace", "-lead.test", "a\\.b", "*"):
            with self.assertRaises(ValueError, msg=bad) as caught:
                parse_name(bad)
            self.assertIn("bad host name", str(caught.exception))

    def test_addresses(self) -> None:
        self.assertEqual(str(parse_address("127.0.41.1")), "127.0.41.1")
        self.assertEqual(str(parse_address("0:0::1")), "::1")
        for bad in ("127.0.41", "127.0.41.256", "name", "fe80::1%eth0", ""):
            with self.assertRaises(ValueError, msg=bad):
                parse_address(bad)

    def test_pairs(self) -> None:
        name, address = parse_pair("Host.test 127.0.41.5")
        self.assertEqual((name.to_text(), str(address)), ("host.test.", "127.0.41.5"))
        self.assertEqual(parse_pair("host.test", need_address=False)[1], None)
        for bad in ("host.test", "a b c", "", "127.0.41.5 host.test"):
            with self.assertRaises(ValueError, msg=bad):
                parse_pair(bad)


class HostsFileTests(unittest.TestCase):
    def test_syntax(self) -> None:
        entries, problems = read_hosts(write(self, HOSTS))
        self.assertEqual(problems, [])
        table = [(str(a), [n.to_text() for n in names]) for a, names in entries]
        self.assertEqual(table, [
            ("127.0.41.10", ["a1.test.", "a2.test.", "alpha.test."]),  # canonical last
            ("127.0.41.11", ["beta.test."]),
            ("::1", ["six.test."]),
            ("2001:db8::41", ["six.test."]),
            ("127.0.41.12", ["multi.test."]),
            ("127.0.41.13", ["multi.test."]),
        ])

    def test_bad_lines_are_reported_and_skipped(self) -> None:
        path = write(self, BAD_HOSTS)
        entries, problems = read_hosts(path)
        self.assertEqual(
            [(str(a), [n.to_text() for n in names]) for a, names in entries],
            [("127.0.41.20", ["good1.test."]),
             ("127.0.41.23", ["good-alias.test.", "good2.test."])],
        )
        self.assertEqual([p.split(": ", 1)[0] for p in problems],
                         [f"{path}:{n}" for n in (2, 3, 4, 5, 7)])
        self.assertIn("'999.1.1.1'", problems[0])
        self.assertIn("without a name", problems[1])
        self.assertIn("bad host name 'bad..name.test'", problems[2])

    def test_bad_lines_are_logged_and_good_ones_loaded(self) -> None:
        _, hints, _ = make_engine()
        path = write(self, BAD_HOSTS)
        with capturedLogs() as events:
            self.assertFalse(hints.add_hosts(path))
        logged = [formatEvent(e) for e in events]
        for line in (2, 3, 4, 5, 7):
            self.assertTrue(any(f"{path}:{line}: " in text for text in logged), line)
        self.assertEqual(hints["good1.test"], ["127.0.41.20"])
        self.assertEqual(hints["good-alias.test"], ["127.0.41.23"])
        self.assertEqual(hints["badaddr.test"], [])

    def test_missing_file(self) -> None:
        _, hints, _ = make_engine()
        hints["keep.test"] = "127.0.41.30"
        missing = os.path.join(scratch(self), "no-such-hosts")
        for call in (hints.add_hosts, hints.config):
            with self.assertRaises(OSError) as caught:
                call(missing)
            self.assertIn(missing, str(caught.exception))
            self.assertIn("No such file", str(caught.exception))
        # config() read the file before clearing: the hints are still there
        self.assertEqual(hints["keep.test"], ["127.0.41.30"])

    def test_missing_file_in_module_config(self) -> None:
        engine = Engine(Clock())
        missing = os.path.join(scratch(self), "hosts.custom")
        with self.assertRaises(ConfigError) as caught:
            engine.run_config(f"modules = {{'hints': {missing!r}}}\n", "test.conf")
        self.assertIn("test.conf:1:", str(caught.exception))
        self.assertIn(missing, str(caught.exception))

    def test_etc_hosts_is_the_default(self) -> None:
        if not os.path.exists("/etc/hosts"):
            raise unittest.SkipTest("no /etc/hosts here")
        entries, _ = read_hosts("/etc/hosts")
        _, hints, _ = make_engine()
        hints.add_hosts()
        for address, names in entries:
            for name in names:
                self.assertIn(str(address), hints[name.to_text()])


class ApiTests(unittest.TestCase):
    def setUp(self) -> None:
        self.engine, self.hints, self.module = make_engine()

    def test_set_get_case_insensitive(self) -> None:
        before = self.engine.changes
        self.assertTrue(self.hints.set("Host.Test 127.0.41.40"))
        self.hints["HOST.test"] = "127.0.41.41"
        self.hints["host.test."] = "127.0.41.40"  # again: no duplicate
        self.assertEqual(self.hints.get("host.test"), ["127.0.41.40", "127.0.41.41"])
        self.assertEqual(self.hints["hOsT.tEsT"], ["127.0.41.40", "127.0.41.41"])
        self.assertIn("Host.Test", self.hints)
        self.assertEqual(self.hints.get("other.test"), [])
        self.assertGreaterEqual(self.engine.changes, before + 3)
        key = next(iter(self.module.table.forward))
        self.assertIsInstance(key, dns.name.Name)

    def test_setitem_list_and_get_all(self) -> None:
        self.hints["both.test"] = ["127.0.41.42", "::1"]
        self.hints.set("one.test 127.0.41.43")
        self.assertEqual(self.hints.get(), {
            "both.test.": ["127.0.41.42", "::1"],
            "one.test.": ["127.0.41.43"],
        })

    def test_bad_input(self) -> None:
        changes = self.engine.changes
        for bad in ("only-a-name.test", "name.test 300.1.1.1", "bad..name 127.0.41.1", 42):
            with self.assertRaises(ValueError, msg=repr(bad)):
                self.hints.set(bad)  # type: ignore[arg-type]
        with self.assertRaises(ValueError):
            self.hints["x.test"] = "nope"
        with self.assertRaises(ValueError):
            self.hints["x.test"] = [127]  # type: ignore[list-item]
        with self.assertRaises(ValueError):
            self.hints.delete("a.test b c")
        self.assertEqual(self.hints.get(), {})
        self.assertEqual(self.engine.changes, changes)

    def test_delete(self) -> None:
        self.hints["d.test"] = ["127.0.41.44", "127.0.41.45", "::1"]
        changes = self.engine.changes
        self.assertTrue(self.hints.delete("D.test 127.0.41.44"))
        self.assertEqual(self.hints["d.test"], ["127.0.41.45", "::1"])
        self.assertEqual(self.engine.changes, changes + 1)
        self.assertFalse(self.hints.del_("d.test 127.0.41.44"))
        self.assertEqual(self.engine.changes, changes + 1)  # nothing changed
        self.assertTrue(getattr(self.hints, "del")("d.test"))
        self.assertEqual(self.hints["d.test"], [])
        self.assertFalse(self.hints.delete("d.test"))
        # the reverse side went with them
        self.assertEqual(self.module.table.reverse, {})
        self.hints["e.test"] = "127.0.41.46"
        del self.hints["e.test"]
        self.assertRaises(KeyError, self.hints.__delitem__, "e.test")

    def test_delete_keeps_other_names_of_the_address(self) -> None:
        self.hints.set("first.test 127.0.41.47")
        self.hints.set("second.test 127.0.41.47")
        self.hints.delete("second.test")
        _, req = resolve(self.engine, "47.41.0.127.in-addr.arpa.", "PTR")
        self.assertEqual(answer_texts(req.answer), ["first.test."])

    def test_config_clears_hints_not_root_hints(self) -> None:
        self.hints["gone.test"] = "127.0.41.48"
        root = self.hints.root({"ns.root.test": "127.0.41.49"})
        changes = self.engine.changes
        self.assertTrue(self.hints.config())
        self.assertEqual(self.hints.get(), {})
        self.assertEqual(self.hints.root(), root)
        self.assertEqual(self.engine.changes, changes + 1)
        self.assertTrue(self.hints.config(write(self, HOSTS)))
        self.assertEqual(self.hints["multi.test"], ["127.0.41.12", "127.0.41.13"])
        self.assertEqual(self.hints["gone.test"], [])

    def test_root(self) -> None:
        current = self.hints.root()
        self.assertEqual(current, self.engine.root_hints)
        self.assertIn("a.root-servers.net.", current)
        held = self.engine.root_hints
        changes = self.engine.changes
        new = self.hints.root({
            "NS1.root.test": "127.0.41.50",
            "ns2.root.test.": ["127.0.41.51", "::1", "127.0.41.51"],
        })
        expected = {"ns1.root.test.": ["127.0.41.50"],
                    "ns2.root.test.": ["127.0.41.51", "::1"]}
        self.assertEqual(new, expected)
        self.assertEqual(self.engine.root_hints, expected)
        self.assertIs(self.engine.root_hints, held)  # replaced in place
        self.assertEqual(self.engine.changes, changes + 1)
        for bad in ({}, {"ns.test": []}, {"ns.test": "x"}, ["127.0.41.1"], {"ns.test": 5}):
            with self.assertRaises(ValueError, msg=repr(bad)):
                self.hints.root(bad)  # type: ignore[arg-type]
        self.assertEqual(self.engine.root_hints, expected)

    def test_root_file(self) -> None:
        path = write(self, ". 3600 IN NS ns.root.test.\nns.root.test. 3600 IN A 127.0.41.52\n")
        self.assertEqual(self.hints.root_file(path), {"ns.root.test.": ["127.0.41.52"]})
        with self.assertRaises(OSError) as caught:
            self.hints.root_file(path + ".missing")
        self.assertIn(path + ".missing", str(caught.exception))

    def test_ttl_and_nodata_settings(self) -> None:
        self.assertEqual(self.hints.ttl(), DEFAULT_TTL)
        self.assertEqual(self.hints.ttl(60), 60)
        for bad in (-1, 1.5, True, "5"):
            self.assertRaises(ValueError, self.hints.ttl, bad)
        self.assertTrue(self.hints.use_nodata())
        self.assertFalse(self.hints.use_nodata(False))
        self.assertRaises(ValueError, self.hints.use_nodata, 1)

    def test_config_file_names(self) -> None:
        """The seed's config forms, through the engine's namespace."""
        path = write(self, HOSTS, "hosts.custom")
        engine = Engine(Clock())
        engine.run_config(
            f"modules = {{'hints': {path!r}}}\n"
            "hints['LocalHost'] = '127.0.0.1'\n"
            "hints.set('extra.test 127.0.41.53')\n"
            "getattr(hints, 'del')('beta.test')\n"
            "assert hints['localhost'] == ['127.0.0.1']\n"
        )
        hints = engine.namespace["hints"]
        self.assertEqual(hints["alpha.test"], ["127.0.41.10"])
        self.assertEqual(hints["extra.test"], ["127.0.41.53"])
        self.assertEqual(hints["beta.test"], [])
        with self.assertRaises(ConfigError) as caught:
            engine.run_config("modules = {'hints': 5}\n", "bad.conf")
        self.assertIn("bad.conf:1:", str(caught.exception))


class LayerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.engine, self.hints, self.module = make_engine()
        self.hints.add_hosts(write(self, HOSTS))

    def test_a_all_addresses_of_the_family(self) -> None:
        state, req = resolve(self.engine, "multi.test")
        self.assertEqual(state, State.DONE)
        self.assertEqual(req.answer.rcode(), dns.rcode.NOERROR)
        self.assertEqual(answer_texts(req.answer), ["127.0.41.12", "127.0.41.13"])
        self.assertEqual(req.answer.answer[0].ttl, DEFAULT_TTL)
        self.assertFalse(req.answer.flags & dns.flags.AA)
        self.assertFalse(req.cached)
        self.assertEqual(req.rplan, [])

    def test_cname_target_is_answered_into_the_chain(self) -> None:
        """Iterate follows a CNAME to a hinted name with a parentless query for the target:
        its hint belongs in the client's answer, after the CNAME."""
        req = request(self.engine, "alias.elsewhere.", "A")
        target = dns.name.from_text("multi.test.")
        qry = req.push(target, dns.rdatatype.A)
        self.assertEqual(self.module.produce(req, qry), State.DONE)
        self.assertEqual([r.name for r in req.answer.answer], [target])
        self.assertEqual(answer_texts(req.answer), ["127.0.41.12", "127.0.41.13"])

    def test_aaaa(self) -> None:
        _, req = resolve(self.engine, "six.test", "AAAA")
        self.assertEqual(answer_texts(req.answer), ["2001:db8::41", "::1"])
        _, req = resolve(self.engine, "six.test", "A")
        self.assertEqual(answer_texts(req.answer), [])  # NODATA: no IPv4 for six.test
        self.assertEqual(req.answer.rcode(), dns.rcode.NOERROR)

    def test_ptr_last_defined_wins(self) -> None:
        _, req = resolve(self.engine, "10.41.0.127.in-addr.arpa.", "PTR")
        self.assertEqual(answer_texts(req.answer), ["alpha.test."])  # canonical, not alias
        self.hints.set("later.test 127.0.41.10")
        _, req = resolve(self.engine, "10.41.0.127.in-addr.arpa.", "PTR")
        self.assertEqual(answer_texts(req.answer), ["later.test."])
        self.hints.set("alpha.test 127.0.41.10")  # defined again: last again
        _, req = resolve(self.engine, "10.41.0.127.in-addr.arpa.", "PTR")
        self.assertEqual(answer_texts(req.answer), ["alpha.test."])

    def test_ptr_ipv6(self) -> None:
        name = dns.reversename.from_address("2001:db8::41").to_text()
        _, req = resolve(self.engine, name.upper(), "PTR")
        self.assertEqual(answer_texts(req.answer), ["six.test."])
        self.assertEqual(req.answer.answer[0].name.to_text(), name.upper())

    def test_case_of_the_question_is_kept(self) -> None:
        _, req = resolve(self.engine, "MuLtI.TeSt")
        self.assertEqual(req.answer.answer[0].name.to_text(), "MuLtI.TeSt.")

    def test_nodata_for_other_types(self) -> None:
        for name, rdtype in (("alpha.test", "MX"), ("10.41.0.127.in-addr.arpa.", "A")):
            state, req = resolve(self.engine, name, rdtype)
            self.assertEqual(state, State.DONE)
            self.assertEqual((req.answer.rcode(), req.answer.answer), (dns.rcode.NOERROR, []))

    def test_use_nodata_off_passes_the_query_on(self) -> None:
        self.hints.use_nodata(False)
        req = request(self.engine, "alpha.test", "MX")
        qry = req.push(req.qname, req.qtype)
        req.state = State.PRODUCE
        self.assertIsNone(self.module.produce(req, qry))
        self.assertFalse(qry.resolved)

    def test_unhinted_names_pass(self) -> None:
        for name, rdtype in (("other.test", "A"), ("99.41.0.127.in-addr.arpa.", "PTR")):
            req = request(self.engine, name, rdtype)
            qry = req.push(req.qname, req.qtype)
            req.state = State.PRODUCE
            self.assertIsNone(self.module.produce(req, qry))
            self.assertNotIn("hints", qry.vars)

    def test_sub_query_answered_into_vars(self) -> None:
        req = request(self.engine, "client.test", "A")
        top = req.push(req.qname, req.qtype)
        sub = req.push(dns.name.from_text("alpha.test."), dns.rdatatype.A, parent=top)
        sub.outgoing = object()  # as if iterate had planned to ask upstream
        req.state = State.PRODUCE
        self.assertEqual(self.module.produce(req, sub), State.DONE)
        self.assertEqual([rd.to_text() for rd in sub.vars["hints"]], ["127.0.41.10"])
        self.assertTrue(sub.resolved)
        self.assertIsNone(sub.outgoing)
        self.assertEqual(req.answer.answer, [])  # not the client's question

    def test_ttl_setting_applies(self) -> None:
        self.hints.ttl(77)
        _, req = resolve(self.engine, "alpha.test")
        self.assertEqual(req.answer.answer[0].ttl, 77)

    def test_an_earlier_final_state_is_kept(self) -> None:
        req = request(self.engine, "alpha.test", "A")
        qry = req.push(req.qname, req.qtype)
        req.state = State.DONE
        self.assertIsNone(self.module.produce(req, qry))
        self.assertEqual(req.answer.answer, [])


FAKE_ITERATE = '''
from kresolver.module import Module, ModulePlugin
from kresolver.resolve.request import State


class FakeIterate(Module):
    """Plans to ask upstream for everything, as iterate's produce does."""

    name = "fakeiterate41"

    def produce(self, req, qry):
        qry.outgoing = ("upstream", qry.sname)
        return State.PRODUCE


fakeiterate41 = ModulePlugin(FakeIterate)
'''


class OrderTests(unittest.TestCase):
    """``modules = {'hints > iterate'}``: hints still answers after a layer that would ask."""

    def setUp(self) -> None:
        top = scratch(self)
        plugins = os.path.join(top, "kresolver", "plugins")
        os.makedirs(plugins)
        with open(os.path.join(plugins, "fakeiterate41.py"), "w") as f:
            f.write(FAKE_ITERATE)
        saved = list(kresolver.plugins.__path__)
        sys.path.append(top)

        def restore() -> None:
            sys.path.remove(top)
            kresolver.plugins.__path__[:] = saved
            sys.modules.pop("kresolver.plugins.fakeiterate41", None)

        self.addCleanup(restore)

    def check(self, config: str, order: list[str]) -> None:
        engine = Engine(Clock())
        sent: list[Any] = []
        engine.resolver.send = lambda req, qry: sent.append(qry.outgoing) or defer.fail(
            OSError("no upstream in this test"))
        engine.run_config(config)
        self.assertEqual(engine.modules.list(), order)
        state, req = resolve(engine, "hinted.test")
        self.assertEqual(state, State.DONE)
        self.assertEqual(answer_texts(req.answer), ["127.0.41.60"])
        self.assertEqual(sent, [])  # nothing went upstream
        other = request(engine, "other.test")
        failed = engine.resolver.resolve(other)  # the upstream "fails" through a Deferred
        self.assertIsInstance(failed, defer.Deferred)
        # (the fake keeps asking until the driver gives up: it has no consume layer)
        self.assertTrue(sent)
        self.assertEqual(set(sent), {("upstream", dns.name.from_text("other.test."))})

    def test_hints_after(self) -> None:
        self.check(
            "modules = ['fakeiterate41']\n"
            "modules = {'hints > fakeiterate41': None}\n"
            "hints['hinted.test'] = '127.0.41.60'\n",
            ["fakeiterate41", "hints"],
        )

    def test_hints_before(self) -> None:
        self.check(
            "modules = ['fakeiterate41', 'hints < fakeiterate41']\n"
            "hints['hinted.test'] = '127.0.41.60'\n",
            ["hints", "fakeiterate41"],
        )


class WireTests(unittest.TestCase):
    """A running engine answers hints over UDP and TCP, and from the fast path."""

    def setUp(self) -> defer.Deferred[Any] | None:
        self.engine = Engine(reactor)
        self.engine.load_defaults()
        # No recursion here: the real root hints must never be asked from a test.
        self.engine.modules.unload("iterate")
        # policy's RFC 6761 rules would answer the names under test. once unhinted
        self.engine.modules.unload("policy")
        self.engine.run_config(
            f"net.listen('{SERVER}', 0)\n"
            "hints['localhost'] = '127.0.0.1'\n"
            "hints['localhost'] = '::1'\n"
            "hints.set('multi.test 127.0.41.70')\n"
            "hints.set('multi.test 127.0.41.71')\n"
            "hints.set('first.test 127.0.41.72')\n"
            "hints.set('last.test 127.0.41.72')\n"
        )
        self.engine.startService()
        self.addCleanup(self.engine.stopService)
        [(address, self.port)] = self.engine.net.addresses
        self.assertEqual(address, SERVER)
        self.assertNotEqual(self.port, 0)
        return None

    @defer.inlineCallbacks
    def ask(self, name: str, rdtype: str = "A", transport: str = "udp",
            **kwargs: Any) -> Any:
        query = dns.message.make_query(name, rdtype, **kwargs)
        wire = yield ask(query, SERVER, self.port, transport)
        response = dns.message.from_wire(wire)
        self.assertEqual(response.id, query.id)
        self.assertTrue(response.flags & dns.flags.QR)
        self.assertTrue(response.flags & dns.flags.RA)
        self.assertFalse(response.flags & dns.flags.AA)
        self.assertEqual(bool(response.flags & dns.flags.RD), bool(query.flags & dns.flags.RD))
        self.assertEqual(response.question[0].name.to_text(), query.question[0].name.to_text())
        return response

    @defer.inlineCallbacks
    def test_udp_and_tcp(self) -> Any:
        for transport in ("udp", "tcp"):
            response = yield self.ask("localhost", "A", transport)
            self.assertEqual(response.rcode(), dns.rcode.NOERROR)
            self.assertEqual(answer_texts(response), ["127.0.0.1"])
            self.assertEqual(response.answer[0].ttl, DEFAULT_TTL)
            response = yield self.ask("localhost", "AAAA", transport, use_edns=0)
            self.assertEqual(answer_texts(response), ["::1"])
            response = yield self.ask("1.0.0.127.in-addr.arpa.", "PTR", transport)
            self.assertEqual(answer_texts(response), ["localhost."])
            response = yield self.ask(
                dns.reversename.from_address("::1").to_text(), "PTR", transport)
            self.assertEqual(answer_texts(response), ["localhost."])
            response = yield self.ask("72.41.0.127.in-addr.arpa.", "PTR", transport)
            self.assertEqual(answer_texts(response), ["last.test."])
            response = yield self.ask("Multi.TEST", "A", transport)
            self.assertEqual(answer_texts(response), ["127.0.41.70", "127.0.41.71"])
            self.assertEqual(response.answer[0].name.to_text(), "Multi.TEST.")

    @defer.inlineCallbacks
    def test_rd_clear_is_copied(self) -> Any:
        query = dns.message.make_query("localhost", "A")
        query.flags &= ~dns.flags.RD
        wire = yield ask(query, SERVER, self.port)
        response = dns.message.from_wire(wire)
        self.assertFalse(response.flags & dns.flags.RD)
        # refuse_nord (a default module, as in kresd) refuses non-recursive questions...
        self.assertEqual(response.rcode(), dns.rcode.REFUSED)
        self.assertEqual(answer_texts(response), [])
        # ...and without it hints answer them too
        self.engine.modules.unload("refuse_nord")
        response = dns.message.from_wire((yield ask(query, SERVER, self.port)))
        self.assertFalse(response.flags & dns.flags.RD)
        self.assertEqual(answer_texts(response), ["127.0.0.1"])

    @defer.inlineCallbacks
    def test_fast_path_and_change(self) -> Any:
        answers = self.engine.answers
        response = yield self.ask("multi.test", "A")
        self.assertEqual(answer_texts(response), ["127.0.41.70", "127.0.41.71"])
        hits = answers.hits
        response = yield self.ask("MULTI.test", "A")
        self.assertEqual(answers.hits, hits + 1)  # the same question: from the fast path
        self.assertEqual(response.answer[0].name.to_text(), "MULTI.test.")
        self.assertEqual(answer_texts(response), ["127.0.41.70", "127.0.41.71"])
        self.engine.run_config("hints.set('multi.test 127.0.41.73')\n")
        response = yield self.ask("multi.test", "A")
        self.assertEqual(answers.hits, hits + 1)  # the change cleared the stored answer
        self.assertEqual(answer_texts(response), ["127.0.41.70", "127.0.41.71", "127.0.41.73"])
        self.engine.namespace["hints"].delete("multi.test")
        self.engine.namespace["hints"].use_nodata(False)
        # no longer hinted; no recursion in this engine, so it is not answered from hints
        response = yield self.ask("multi.test", "A")
        self.assertEqual(response.answer, [])
        self.assertEqual(answers.hits, hits + 1)
