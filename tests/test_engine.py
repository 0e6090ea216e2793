"""The engine: config namespace, module loading and order, plugin discovery, the driver."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.rcode
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from kresolver.engine import GB, MB, ConfigError, Engine, parse_spec, todname
from kresolver.resolve.request import Request, State
from tests.support import SLOW_DELAY, SYNTH_DROPIN, install_dropins, query

ORDER_DROPIN = (
    "from kresolver.module import ModulePlugin\n"
    "from tests.support import marker\n"
    "ka = ModulePlugin(marker('ka'))\n"
    "kb = ModulePlugin(marker('kb'))\n"
    "kc = ModulePlugin(marker('kc'))\n"
)


def request(engine: Engine, name: str, rdtype: str = "A") -> Request:
    q = query(name, rdtype)
    return Request(engine, q.to_wire(), q, ("127.0.40.250", 5300), ("127.0.40.1", 53), "udp",
                   engine.reactor.seconds())


class EngineCase(unittest.TestCase):
    """An engine that can load the synthetic and the marker modules."""

    def setUp(self) -> None:
        install_dropins(self, {"kt_synth": SYNTH_DROPIN, "kt_order": ORDER_DROPIN})
        self.engine = Engine(reactor)
        self.addCleanup(self.engine.log_level, "notice")


class ConfigTests(EngineCase):
    def test_net_listen_and_list(self) -> None:
        self.engine.run_config(
            "net.listen('127.0.40.1', 5353)\n"
            "net.listen(['127.0.40.2', '::1'], 5354)\n"
            "listeners = net.list()\n"
        )
        listeners = self.engine.namespace["listeners"]
        self.assertEqual(
            [(e["transport"]["ip"], e["transport"]["port"], e["transport"]["family"])
             for e in listeners],
            [("127.0.40.1", 5353, "inet4"), ("127.0.40.2", 5354, "inet4"),
             ("::1", 5354, "inet6")],
        )
        self.assertEqual({e["kind"] for e in listeners}, {"dns"})
        self.assertFalse(any(e["bound"] for e in listeners))

    def test_modules_list_assignment(self) -> None:
        self.engine.run_config("modules = ['ka', 'kb', 'kc']")
        self.assertEqual(self.engine.modules.list(), ["ka", "kb", "kc"])
        self.assertEqual(self.engine.run_config("loaded = modules.list()"), None)
        self.assertEqual(self.engine.namespace["loaded"], ["ka", "kb", "kc"])

    def test_modules_dict_assignment_configures(self) -> None:
        self.engine.run_config("modules = {'synth': {'ttl': 42}, 'ka': None}")
        self.assertEqual(self.engine.modules.list(), ["synth", "ka"])
        self.assertEqual(self.engine.namespace["synth"].ttl, 42)

    def test_load_unload(self) -> None:
        self.engine.run_config(
            "modules.load('ka')\nmodules.load('kb')\nfirst = modules.unload('ka')\n"
            "second = modules.unload('ka')\n"
        )
        self.assertIs(self.engine.namespace["first"], True)
        self.assertIs(self.engine.namespace["second"], False)
        self.assertEqual(self.engine.modules.list(), ["kb"])

    def test_unload_removes_api_and_layers(self) -> None:
        self.engine.run_config("modules.load('synth')")
        self.assertIn("synth", self.engine.namespace)
        self.assertEqual(len(self.engine.layers.begin), 1)
        self.engine.modules.unload("synth")
        self.assertNotIn("synth", self.engine.namespace)
        self.assertEqual(self.engine.layers.begin, [])

    def test_order_after(self) -> None:
        """``'a > b'`` puts a's layers right after b's."""
        self.engine.run_config("modules = ['kb', 'kc']\nmodules.load('ka > kb')")
        self.assertEqual(self.engine.modules.list(), ["kb", "ka", "kc"])
        req = request(self.engine, "x.example.")
        self.engine.resolver.resolve(req)
        self.assertEqual(req.vars["order"], ["kb", "ka", "kc"])

    def test_order_before(self) -> None:
        """``'a < b'`` puts a's layers right before b's."""
        self.engine.run_config("modules = ['kb', 'kc', 'ka < kc']")
        self.assertEqual(self.engine.modules.list(), ["kb", "ka", "kc"])
        req = request(self.engine, "x.example.")
        self.engine.resolver.resolve(req)
        self.assertEqual(req.vars["order"], ["kb", "ka", "kc"])

    def test_order_relative_to_unloaded(self) -> None:
        error = self.assertRaises(ConfigError, self.engine.run_config, "modules.load('ka > kb')",
                                  "order.conf")
        self.assertIn("order.conf:1:", str(error))
        self.assertIn("'kb' is not loaded", str(error))

    def test_parse_spec(self) -> None:
        self.assertEqual(parse_spec(" a>b "), ("a", ">", "b"))
        self.assertEqual(parse_spec("a < b"), ("a", "<", "b"))
        self.assertEqual(parse_spec("a"), ("a", "", None))
        self.assertRaises(ValueError, parse_spec, "a >")
        self.assertRaises(ValueError, parse_spec, " ")

    def test_cache_size(self) -> None:
        self.engine.run_config("cache.size = 100 * MB")
        self.assertEqual(self.engine.cache.size, 100 * MB)

    def test_constants(self) -> None:
        self.engine.run_config("values = (MB, GB, sec, minute, hour)")
        self.assertEqual(self.engine.namespace["values"], (1024 * 1024, GB, 1, 60, 3600))

    def test_option(self) -> None:
        self.engine.run_config("option('NO_MINIMIZE', True)\nnow = option('NO_MINIMIZE')")
        self.assertIs(self.engine.namespace["now"], True)
        self.assertTrue(self.engine.options.NO_MINIMIZE)
        self.assertTrue(request(self.engine, "x.example.").flags.NO_MINIMIZE)
        error = self.assertRaises(ConfigError, self.engine.run_config, "option('NOPE', True)")
        self.assertIn("NOPE", str(error))

    def test_option_clears_answer_cache(self) -> None:
        self.engine.answers.storage.set(b"k", b"v", 60)
        self.engine.run_config("option('NO_CACHE', True)")
        self.assertIsNone(self.engine.answers.storage.get(b"k"))

    def test_log_level(self) -> None:
        self.engine.run_config("log_level('debug')\nlevel = log_level()")
        self.assertEqual(self.engine.namespace["level"], "debug")
        self.engine.run_config("verbose(False)")
        self.assertEqual(self.engine.log_level(), "notice")
        error = self.assertRaises(ConfigError, self.engine.run_config, "log_level('loud')",
                                  "lvl.conf")
        self.assertIn("lvl.conf:1: ValueError: unknown log level 'loud'", str(error))

    def test_todname(self) -> None:
        self.engine.run_config("wire = todname('Example.COM')")
        self.assertEqual(self.engine.namespace["wire"], b"\x07example\x03com\x00")
        self.assertEqual(todname(b"a."), b"\x01a\x00")

    def test_autoload_on_read(self) -> None:
        """Reading a module's name loads it, so ``synth.ttl = 5`` works without loading."""
        self.engine.run_config("synth.ttl = 5")
        self.assertEqual(self.engine.modules.list(), ["synth"])
        self.assertEqual(self.engine.namespace["synth"].ttl, 5)

    def test_unknown_name_is_name_error(self) -> None:
        error = self.assertRaises(ConfigError, self.engine.run_config,
                                  "a = 1\nnosuchthing.x = 1\n", "f.conf")
        self.assertEqual(str(error), "f.conf:2: NameError: name 'nosuchthing' is not defined")

    def test_syntax_error(self) -> None:
        error = self.assertRaises(ConfigError, self.engine.run_config,
                                  "net.listen('127.0.0.1')\nmodules = [\n", "s.conf")
        self.assertTrue(str(error).startswith("s.conf:2: syntax error:"), str(error))

    def test_bad_value(self) -> None:
        error = self.assertRaises(ConfigError, self.engine.run_config,
                                  "\n\nnet.listen('nonsense', 53)\n", "v.conf")
        self.assertIn("v.conf:3: ValueError:", str(error))
        self.assertIn("'nonsense' is not an IP address", str(error))

    def test_error_inside_helper_points_at_config_line(self) -> None:
        """The line is the config's even when the error is raised deep in the engine."""
        error = self.assertRaises(ConfigError, self.engine.run_config,
                                  "x = 1\n\nmodules = ['nosuchmodule']\n", "m.conf")
        self.assertIn("m.conf:3: ValueError: no module named 'nosuchmodule'", str(error))

    def test_bad_module_config(self) -> None:
        error = self.assertRaises(ConfigError, self.engine.run_config,
                                  "modules = {'synth': 'loud'}", "c.conf")
        self.assertIn("c.conf:1: ValueError: synth takes", str(error))

    def test_load_config_file(self) -> None:
        fd, path = tempfile.mkstemp(suffix=".conf")
        self.addCleanup(os.unlink, path)
        with os.fdopen(fd, "w") as f:
            f.write("cache.size = 2 * MB\nmodules.load('kb')\nboom()\n")
        error = self.assertRaises(ConfigError, self.engine.load_config, path)
        self.assertEqual(str(error), f"{path}:3: NameError: name 'boom' is not defined")
        self.assertEqual(self.engine.cache.size, 2 * MB)

    def test_missing_config_file(self) -> None:
        error = self.assertRaises(ConfigError, self.engine.load_config, "/nonexistent/k.conf")
        self.assertIn("/nonexistent/k.conf: cannot read config", str(error))

    def test_default_config_runs(self) -> None:
        """The embedded config only needs modules that are installed (hints)."""
        from kresolver.engine import default_config

        if "hints" not in self.engine.modules.available():
            raise unittest.SkipTest("the hints module is not written yet")
        self.engine.load_config(default_config())
        self.assertIn("hints", self.engine.modules.list())


class DiscoveryTests(unittest.TestCase):
    """Third-party drop-ins: found on the plugin path; broken ones reported and skipped."""

    def test_third_party_dropin(self) -> None:
        install_dropins(self, {"mymod": SYNTH_DROPIN})
        engine = Engine(reactor)
        self.assertIn("synth", engine.modules.available())
        engine.modules.load("synth")
        req = request(engine, "a.synth.test.")
        state = engine.resolver.resolve(req)
        self.assertEqual(state, State.DONE)
        self.assertEqual(engine.namespace["synth"].seen, ["a.synth.test."])
        self.assertEqual(req.answer.answer[0].to_text(), "a.synth.test. 300 IN A 127.0.0.1")

    def test_broken_dropins_are_skipped(self) -> None:
        install_dropins(self, {
            "kt_good": SYNTH_DROPIN,
            "kt_syntax": "def broken(:\n",
            "kt_raises": "raise RuntimeError('broken drop-in')\n",
        })
        engine = Engine(reactor)
        available = engine.modules.available()
        self.assertIn("synth", available)
        errors = self.flushLoggedErrors(SyntaxError, RuntimeError)
        self.assertEqual(sorted(type(e.value).__name__ for e in errors),
                         ["RuntimeError", "SyntaxError"])
        engine.modules.load("synth")
        self.assertEqual(engine.resolver.resolve(request(engine, "a.synth.test.")), State.DONE)

    def test_broken_dropin_named_in_errors(self) -> None:
        """A config that needs a broken module says which drop-in failed and why."""
        top = install_dropins(self, {"kt_good2": SYNTH_DROPIN,
                                     "kt_broken": "raise RuntimeError('half installed')\n"})
        engine = Engine(reactor)
        error = self.assertRaises(ConfigError, engine.run_config, "kt_broken.x = 1", "b.conf")
        self.flushLoggedErrors(RuntimeError)
        path = os.path.join(top, "kresolver", "plugins", "kt_broken.py")
        self.assertEqual(str(error), "b.conf:1: NameError: name 'kt_broken' is not defined; "
                         f"broken plugin drop-ins: {path}: RuntimeError: half installed")
        error = self.assertRaises(ConfigError, engine.run_config, "modules = ['kt_broken']")
        self.assertIn(f"{path}: RuntimeError: half installed", str(error))
        # a name no drop-in could have provided stays a plain NameError
        error = self.assertRaises(ConfigError, engine.run_config, "other.x = 1", "b.conf")
        self.assertEqual(str(error), "b.conf:1: NameError: name 'other' is not defined")
        self.flushLoggedErrors(RuntimeError)

    def test_late_dropin_found_on_load(self) -> None:
        """A module installed after the first scan is found when it is loaded by name."""
        engine = Engine(reactor)
        self.assertNotIn("synth", engine.modules.available())
        install_dropins(self, {"kt_late": SYNTH_DROPIN})
        engine.modules.load("synth")
        self.assertEqual(engine.modules.list(), ["synth"])

    def test_plugin_dirs_leave_no_trace(self) -> None:
        top = install_dropins(self, {"kt_trace": SYNTH_DROPIN})
        Engine(reactor).modules.available()
        self.assertTrue(os.path.isdir(top))


class DriverTests(EngineCase):
    def setUp(self) -> None:
        super().setUp()
        self.engine.modules.load("synth")

    def test_synchronous_path(self) -> None:
        """A request answered by a synchronous layer never makes a Deferred."""
        req = request(self.engine, "a.synth.test.")
        state = self.engine.resolver.resolve(req)
        self.assertNotIsInstance(state, Deferred)
        self.assertEqual(state, State.DONE)
        self.assertEqual(req.answer.rcode(), dns.rcode.NOERROR)
        self.assertTrue(req.answer.flags & dns.flags.RA)
        self.assertFalse(req.answer.flags & dns.flags.AA)

    def test_deferred_layer(self) -> None:
        req = request(self.engine, "deferred.synth.test.")
        result = self.engine.resolver.resolve(req)
        self.assertIsInstance(result, Deferred)
        self.assertEqual(self.successResultOf(result), State.DONE)
        self.assertEqual(len(req.answer.answer), 1)

    def test_slow_layer(self) -> None:
        req = request(self.engine, "slow.synth.test.")
        result = self.engine.resolver.resolve(req)
        self.assertIsInstance(result, Deferred)
        self.assertNoResult(result)

        def check(state: State) -> None:
            self.assertEqual(state, State.DONE)
            self.assertEqual(len(req.answer.answer), 1)

        return result.addCallback(check)

    test_slow_layer.timeout = SLOW_DELAY * 10  # type: ignore[attr-defined]

    def test_layer_raising_is_servfail(self) -> None:
        req = request(self.engine, "fail.synth.test.")
        state = self.engine.resolver.resolve(req)
        self.assertEqual(state, State.FAIL)
        self.assertEqual(req.answer.rcode(), dns.rcode.SERVFAIL)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_nobody_answers_is_servfail(self) -> None:
        req = request(self.engine, "elsewhere.example.")
        self.assertEqual(self.engine.resolver.resolve(req), State.FAIL)
        self.assertEqual(req.answer.rcode(), dns.rcode.SERVFAIL)

    def test_finish_runs_after_failure(self) -> None:
        self.engine.modules.load("ka")
        seen: list[State] = []
        module = self.engine.modules["ka"]
        module.finish = lambda req: seen.append(req.state)  # type: ignore[attr-defined]
        self.engine.relayer()
        req = request(self.engine, "fail.synth.test.")
        self.engine.resolver.resolve(req)
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(seen, [State.FAIL])
        self.assertEqual(req.vars["order"], ["ka"])

    def test_relayer_clears_answers(self) -> None:
        self.engine.answers.storage.set(b"k", b"v", 60)
        self.engine.modules.load("kb")
        self.assertIsNone(self.engine.answers.storage.get(b"k"))
        self.assertIsInstance(dns.message.make_query("x.", "A"), dns.message.Message)


class RdataClassesTests(unittest.TestCase):
    """What parses a record does not depend on the records parsed before it."""

    def test_class_specific_types_stay_specific(self) -> None:
        import dns.rdata
        import dns.rdataclass
        import dns.rdatatype
        import dns.rdtypes.CH.A

        # dnspython would remember a generic class for (ANY, A) and hand it to CH A too
        with contextlib.suppress(dns.exception.DNSException):
            dns.rdata.from_wire(dns.rdataclass.ANY, dns.rdatatype.A, b"\x01\x02\x03\x04", 0, 4)
        self.assertIs(
            dns.rdata.get_rdata_class(dns.rdataclass.CH, dns.rdatatype.A), dns.rdtypes.CH.A.A
        )


class PlainRequestTests(unittest.TestCase):
    """A plain query's Request reads its header and question from the wire; dnspython's
    message of it is made only when a layer asks, and says the same."""

    def request(self, transport: str = "udp", **kw: Any) -> Request:
        from kresolver.resolve.request import PlainQuery
        from kresolver.wire import fast_query

        q = dns.message.make_query("Www.Plain.Lab.", "AAAA", **kw)
        data = q.to_wire()
        fast = fast_query(data)
        assert fast is not None
        plain = PlainQuery.read(data, fast)
        assert plain is not None
        return Request(Engine(reactor), data, None, ("127.0.40.9", 5300), ("127.0.40.1", 53),
                       transport, 0.0, plain)

    def test_payload(self) -> None:
        self.assertEqual(self.request().payload, 512)  # no EDNS
        self.assertEqual(self.request(use_edns=0, payload=100).payload, 512)
        self.assertEqual(self.request(use_edns=0, payload=1400).payload, 1232)  # net.bufsize
        self.assertEqual(self.request(use_edns=0, payload=1000).payload, 1000)
        self.assertEqual(self.request("tcp", use_edns=0, payload=1000).payload, 65535)

    def test_lazy_query_matches_dnspython(self) -> None:
        req = self.request(use_edns=0, payload=1400, want_dnssec=True)
        self.assertIsNone(req._query)
        self.assertEqual((req.qname.to_text(), req.qtype), ("Www.Plain.Lab.", 28))
        self.assertTrue(req.flags.DNSSEC_WANT)
        parsed = dns.message.from_wire(req.wire)
        self.assertEqual(req.query, parsed)
        self.assertEqual(req.query.payload, 1400)
        self.assertEqual(req.query_flags, int(parsed.flags))
        self.assertEqual(req.answer.question[0].name.to_text(), "Www.Plain.Lab.")
        self.assertEqual(req.answer.payload, 1232)
