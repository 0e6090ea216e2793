"""The http module: settings, built-in endpoints, module endpoints, streams, TLS/HTTP/2, auth.

Every server listens on 127.0.70.1-49 with an OS-chosen port; the client is
twisted.web's Agent (HTTP/1.1), plus curl for the HTTP/2 negotiation.
"""

from __future__ import annotations

import datetime
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock, deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http import H2_ENABLED
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from kresolver.engine import Engine
from kresolver.modules.http import Renewer, Settings
from kresolver.web import tls
from kresolver.web.app import body_text

HOST = "127.0.70.1"


@implementer(IPolicyForHTTPS)
class TrustOne:
    """Trust exactly the server's (self-signed) certificate, as an operator pinning it."""

    def __init__(self, pem: bytes) -> None:
        self.root = Certificate.loadPEM(pem)

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return optionsForClientTLS(hostname.decode(), trustRoot=self.root,
                                   acceptableProtocols=[b"http/1.1"])


class Response:
    def __init__(self, code: int, headers: Headers, body: bytes) -> None:
        self.code, self.headers, self.body = code, headers, body

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None


class Events(Protocol):
    """Collects Server-Sent Events; fires C{got} once C{want} of them arrived."""

    def __init__(self, want: int) -> None:
        self.want = want
        self.buffer = b""
        self.events: list[str] = []
        self.got: Deferred[list[str]] = Deferred()
        self.ended: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            lines = [line[6:] for line in block.decode().split("\n") if line.startswith("data: ")]
            if lines:
                self.events.append("\n".join(lines))
        if len(self.events) >= self.want and not self.got.called:
            self.got.callback(self.events)

    def connectionLost(self, reason: Any) -> None:
        if not self.got.called:
            self.got.callback(self.events)
        self.ended.callback(None)


class HttpCase(unittest.TestCase):
    def setUp(self) -> None:
        self.engine = Engine(reactor)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.engine.modules.unload, "http")

    @inlineCallbacks
    def tearDown(self) -> Any:
        module = self.engine.modules.get("http")
        if module is not None:
            yield module.unload()
        yield self.pool.closeCachedConnections()
        # let the server side of closed connections go before the janitor looks
        yield deferLater(reactor, 0.01, lambda: None)

    def load(self, **settings: Any) -> Any:
        settings.setdefault("host", HOST)
        settings.setdefault("port", 0)
        settings.setdefault("cert", False)
        self.engine.modules.load("http", settings)
        return self.engine.namespace["http"]

    def agent(self, http: Any) -> Agent:
        main = self.engine.modules["http"].main
        policy = TrustOne(main.creator.pair.cert_pem) if main.creator else None
        if policy is None:
            return Agent(reactor, pool=self.pool)
        return Agent(reactor, contextFactory=policy, pool=self.pool)

    @inlineCallbacks
    def fetch(self, path: str, method: bytes = b"GET", body: bytes | None = None,
              headers: dict[str, str] | None = None, url: str | None = None) -> Any:
        http = self.engine.namespace["http"]
        base = url or http.url
        producer = FileBodyProducer(__import__("io").BytesIO(body)) if body is not None else None
        raw = Headers({k: [v] for k, v in (headers or {}).items()})
        response = yield self.agent(http).request(method, (base + path).encode(), raw, producer)
        content = yield readBody(response)
        return Response(response.code, response.headers, content)


class SettingsTests(unittest.TestCase):
    def test_defaults_are_localhost_https(self) -> None:
        settings = Settings.parse(None)
        self.assertEqual((settings.host, settings.port, settings.cert), ("127.0.0.1", 8053, None))
        self.assertFalse(settings.exposed())
        self.assertEqual(Settings.parse({"host": "localhost"}).host, "127.0.0.1")
        self.assertTrue(Settings.parse({"host": "0.0.0.0"}).exposed())

    def test_bad_settings_say_what_is_wrong(self) -> None:
        cases = {
            "unknown setting": {"hots": "x"},
            "port must be": {"port": 70000},
            "needs its key": {"cert": "/tmp/x.crt"},
            "protect_all needs a token": {"protect_all": True},
            "geoip": {"geoip": "x.mmdb"},
            "at least 8": {"token": "short"},
            "interval": {"interval": 0},
            "hosts is a list": {"hosts": "resolver.lab"},
            "dict of settings": "8053",
        }
        for message, value in cases.items():
            with self.assertRaises(ValueError) as raised:
                Settings.parse(value)
            self.assertIn(message, str(raised.exception))

    def test_token_file(self) -> None:
        path = Path(tempfile.mkdtemp()) / "token"
        self.addCleanup(shutil.rmtree, path.parent)
        path.write_text("s3cret-token\n")
        self.assertEqual(Settings.parse({"token_file": str(path)}).token, "s3cret-token")
        with self.assertRaises(ValueError):
            Settings.parse({"token_file": str(path.parent / "missing")})


class BuiltinTests(HttpCase):
    @inlineCallbacks
    def test_health_stats_feed_and_404(self) -> Any:
        self.load()
        self.engine.metrics.update({"answer.total": 7, "answer.noerror": 7})
        health = yield self.fetch("/health")
        self.assertEqual(health.code, 200)
        self.assertEqual(health.json()["state"], "up")
        self.assertIn("http", health.json()["modules"])
        stats = yield self.fetch("/stats")
        self.assertEqual(stats.header("content-type"), "application/json")
        self.assertEqual(stats.json()["answer.total"], 7)
        feed = yield self.fetch("/feed")
        self.assertIsInstance(feed.json(), list)
        missing = yield self.fetch("/nothing/here")
        self.assertEqual(missing.code, 404)
        self.assertIn("/nothing/here", missing.json()["error"])

    @inlineCallbacks
    def test_metrics_parse_as_prometheus(self) -> Any:
        self.load()
        self.engine.metrics.update({
            "answer.total": 10, "answer.cached": 4, "answer.noerror": 9, "answer.servfail": 1,
            "answer.1ms": 5, "answer.10ms": 2, "answer.250ms": 1, "answer.slow": 2,
            "request.udp": 10,
        })
        response = yield self.fetch("/metrics")
        self.assertTrue(response.header("content-type").startswith("text/plain; version=0.0.4"))
        families = {f.name: f for f in text_string_to_metric_families(response.body.decode())}
        self.assertEqual(families["kresolver_answer"].type, "counter")
        self.assertEqual(families["kresolver_answer"].samples[0].value, 10)
        self.assertEqual(families["kresolver_request_udp"].samples[0].value, 10)
        latency = families["latency"]
        self.assertEqual(latency.type, "histogram")
        buckets = {s.labels["le"]: s.value for s in latency.samples if s.name == "latency_bucket"}
        self.assertEqual(buckets["1"], 5)
        self.assertEqual(buckets["10"], 7)
        self.assertEqual(buckets["100"], 7)
        self.assertEqual(buckets["250"], 8)
        self.assertEqual(buckets["1500"], 8)
        self.assertEqual(buckets["+Inf"], 10)
        values = list(buckets.values())
        self.assertEqual(values, sorted(values), "buckets must be cumulative")
        count = [s.value for s in latency.samples if s.name == "latency_count"]
        total = [s.value for s in latency.samples if s.name == "latency_sum"]
        self.assertEqual(count, [10])
        self.assertEqual(total, [5 * 1 + 2 * 10 + 1 * 250 + 2 * 1500])

    @inlineCallbacks
    def test_stats_module_metrics_are_included(self) -> Any:
        if "stats" not in self.engine.modules.available():
            raise unittest.SkipTest("no stats module")
        self.engine.modules.load("stats")
        self.load()
        self.engine.namespace["stats"].set("custom.thing", 42)
        stats = yield self.fetch("/stats")
        self.assertEqual(stats.json()["custom.thing"], 42)

    @inlineCallbacks
    def test_dashboard_page_has_snippets_escaped_title(self) -> Any:
        http = self.load()
        http.snippets["/health"] = ("Health <service>", "<p id='up'>UP!</p>")
        page = yield self.fetch("/")
        self.assertEqual(page.code, 200)
        text = page.body.decode()
        self.assertIn("<h2>Health &lt;service&gt;</h2><p id='up'>UP!</p>", text)
        self.assertIn("/static/charts.js", text)
        script = yield self.fetch("/static/charts.js")
        self.assertEqual(script.code, 200)
        self.assertIn(b"KCharts", script.body)

    @inlineCallbacks
    def test_config_file_syntax(self) -> Any:
        self.engine.run_config(
            f"modules = {{'http': {{'host': '{HOST}', 'port': 0, 'cert': False}}}}\n"
        )
        health = yield self.fetch("/health")
        self.assertEqual(health.code, 200)

    @inlineCallbacks
    def test_reconfigure_moves_the_interface(self) -> Any:
        http = self.load()
        old = http.url
        yield http.config({"host": "127.0.70.2"})
        self.assertNotEqual(http.url, old)
        self.assertIn("127.0.70.2", http.url)
        health = yield self.fetch("/health")
        self.assertEqual(health.code, 200)
        with self.assertRaises(ConnectionRefusedError):
            import socket
            with socket.create_connection((HOST, int(old.rsplit(":", 1)[1])), timeout=2):
                pass


class EndpointTests(HttpCase):
    @inlineCallbacks
    def test_module_endpoint_methods_status_and_prefix(self) -> Any:
        http = self.load()
        value = {"v": 42}

        def service(request: Any) -> Any:
            if request.method == b"GET":
                return {"path": request.path.decode(), "value": value["v"]}
            if request.method == b"POST":
                data = body_text(request)
                if not data.isdigit():
                    return 400, "Not a good request"
                value["v"] = int(data)
                return {"value": value["v"]}
            return 405, "Cannot do that"

        http.endpoints["/service"] = ("application/json", service, None)
        got = yield self.fetch("/service/sub/path")
        self.assertEqual(got.json(), {"path": "/service/sub/path", "value": 42})
        bad = yield self.fetch("/service", b"POST", b"nope")
        self.assertEqual((bad.code, bad.body), (400, b"Not a good request"))
        good = yield self.fetch("/service", b"POST", b"7")
        self.assertEqual(good.json(), {"value": 7})
        other = yield self.fetch("/service", b"PUT", b"")
        self.assertEqual(other.code, 405)

    @inlineCallbacks
    def test_deferred_bytes_none_and_failure(self) -> Any:
        http = self.load()
        http.endpoints["/later"] = ("text/plain", lambda r: succeed("later"), None)
        http.endpoints["/raw"] = ("application/octet-stream", lambda r: b"\x00\x01", None)
        http.endpoints["/none"] = ("application/json", lambda r: None, None)
        http.endpoints["/boom"] = ("application/json", lambda r: 1 / 0, None)
        later = yield self.fetch("/later")
        self.assertEqual((later.body, later.header("content-type")), (b"later", "text/plain"))
        raw = yield self.fetch("/raw")
        self.assertEqual(raw.body, b"\x00\x01")
        none = yield self.fetch("/none")
        self.assertEqual(none.code, 204)
        boom = yield self.fetch("/boom")
        self.assertEqual(boom.code, 500)
        self.assertIn("division by zero", boom.json()["error"])
        self.flushLoggedErrors(ZeroDivisionError)

    @inlineCallbacks
    def test_event_stream(self) -> Any:
        self.load(interval=0.05)
        self.engine.metrics["answer.total"] = 1
        http = self.engine.namespace["http"]
        response = yield self.agent(http).request(
            b"GET", (http.url + "/stats").encode(),
            Headers({"accept": ["text/event-stream"]}))
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/event-stream"])
        events = Events(3)
        response.deliverBody(events)
        self.engine.metrics["answer.total"] = 5
        got = yield events.got
        events.transport.stopProducing()
        yield events.ended
        snapshots = [json.loads(e) for e in got]
        self.assertEqual(set(snapshots[0]), {"time", "metrics", "frequent", "upstreams"})
        self.assertEqual(snapshots[-1]["metrics"]["answer.total"], 5)

    @inlineCallbacks
    def test_stream_ends_when_on_stream_returns_none(self) -> Any:
        http = self.load(interval=0.01)
        left = [3]

        def countdown(request: Any) -> Any:
            left[0] -= 1
            return {"left": left[0]} if left[0] > 0 else None

        http.endpoints["/countdown"] = ("application/json", None, countdown)
        response = yield self.agent(http).request(
            b"GET", (http.url + "/countdown").encode(),
            Headers({"accept": ["text/event-stream"]}))
        events = Events(99)
        response.deliverBody(events)
        yield events.ended
        self.assertEqual([json.loads(e) for e in events.events], [{"left": 2}, {"left": 1}])
        plain = yield self.fetch("/countdown")
        self.assertEqual(plain.code, 405)

    @inlineCallbacks
    def test_second_interface_serves_only_its_endpoints(self) -> Any:
        http = self.load()
        conf = http.interface("127.0.70.3", 0, {
            "/conf": ("application/json", lambda r: {"conf": True}, None)})
        got = yield self.fetch("/conf", url=conf.url)
        self.assertEqual(got.json(), {"conf": True})
        stats = yield self.fetch("/stats", url=conf.url)
        self.assertEqual(stats.code, 404)
        main = yield self.fetch("/conf")
        self.assertEqual(main.code, 404)


class SafetyTests(HttpCase):
    def mutable(self, http: Any) -> list[str]:
        seen: list[str] = []

        def change(request: Any) -> Any:
            seen.append(body_text(request))
            return {"ok": True}

        http.endpoints["/change"] = ("application/json", change, None)
        return seen

    @inlineCallbacks
    def test_token_protects_mutations_only(self) -> Any:
        http = self.load(token="s3cret-token")
        seen = self.mutable(http)
        read = yield self.fetch("/stats")
        self.assertEqual(read.code, 200)
        for headers in (None, {"authorization": "Bearer wrong-token"},
                        {"authorization": "Basic s3cret-token"},
                        {"cookie": "kresolver_token=s3cret-token"}):
            refused = yield self.fetch("/change", b"POST", b"x", headers)
            self.assertEqual(refused.code, 401, headers)
            self.assertEqual(refused.header("www-authenticate"), 'Bearer realm="kresolver"')
        self.assertEqual(seen, [])
        ok = yield self.fetch("/change", b"POST", b"x",
                              {"authorization": "Bearer s3cret-token"})
        self.assertEqual(ok.code, 200)
        self.assertEqual(seen, ["x"])

    @inlineCallbacks
    def test_protect_all_and_the_browser_cookie(self) -> Any:
        self.load(token="s3cret-token", protect_all=True)
        for path in ("/stats", "/", "/static/charts.js", "/metrics"):
            refused = yield self.fetch(path)
            self.assertEqual(refused.code, 401, path)
        wrong = yield self.fetch("/?token=nope")
        self.assertEqual(wrong.code, 401)
        login = yield self.fetch("/?token=s3cret-token")
        self.assertEqual(login.code, 302)
        cookie = login.header("set-cookie")
        self.assertIn("HttpOnly", cookie)
        self.assertIn("SameSite=strict", cookie)
        page = yield self.fetch("/", headers={"cookie": cookie.split(";")[0]})
        self.assertEqual(page.code, 200)
        header = yield self.fetch("/stats", headers={"authorization": "Bearer s3cret-token"})
        self.assertEqual(header.code, 200)

    @inlineCallbacks
    def test_body_size_limit(self) -> Any:
        http = self.load(max_body=100)
        seen = self.mutable(http)
        big = yield self.fetch("/change", b"POST", b"x" * 101)
        self.assertEqual(big.code, 413)
        self.assertEqual(seen, [])
        small = yield self.fetch("/change", b"POST", b"x" * 100)
        self.assertEqual(small.code, 200)

    @inlineCallbacks
    def test_dns_rebinding_and_cross_site_changes_are_refused(self) -> Any:
        http = self.load(hosts=["resolver.lab"])
        seen = self.mutable(http)
        port = http.url.rsplit(":", 1)[1]
        rebound = yield self.fetch("/stats", headers={"host": f"evil.example:{port}"})
        self.assertEqual(rebound.code, 421)
        static = yield self.fetch("/static/charts.js", headers={"host": "evil.example"})
        self.assertEqual(static.code, 421)
        for host in (f"resolver.lab:{port}", f"{HOST}:{port}", f"localhost:{port}"):
            ok = yield self.fetch("/stats", headers={"host": host})
            self.assertEqual(ok.code, 200, host)
        cross = yield self.fetch("/change", b"POST", b"x",
                                 {"origin": "https://evil.example"})
        self.assertEqual(cross.code, 403)
        self.assertEqual(seen, [])
        same = yield self.fetch("/change", b"POST", b"x", {"origin": http.url})
        self.assertEqual(same.code, 200)
        self.assertEqual(seen, ["x"])

    def test_nothing_evaluates_request_data(self) -> None:
        """The app has no code path from a request to eval/exec/compile."""
        import re

        import kresolver.modules.http
        import kresolver.web as web

        forbidden = re.compile(r"(?<![\w.])(eval|exec|compile)\(|run_config|pickle|namespace\[")
        files = [*Path(web.__file__).parent.rglob("*.py"), Path(kresolver.modules.http.__file__)]
        for path in files:
            found = forbidden.search(path.read_text())
            self.assertIsNone(found, f"{path.name} uses {found and found.group()}")


class TlsTests(HttpCase):
    @inlineCallbacks
    def test_ephemeral_https(self) -> Any:
        self.load(cert=None)
        main = self.engine.modules["http"].main
        self.assertTrue(main.url.startswith("https://"))
        lifetime = main.creator.pair.not_after - datetime.datetime.now(datetime.UTC)
        self.assertTrue(datetime.timedelta(days=89) < lifetime <= datetime.timedelta(days=90))
        self.assertIsNotNone(main.renewer)
        health = yield self.fetch("/health")
        self.assertEqual(health.json()["state"], "up")

    @inlineCallbacks
    def test_http2_negotiated(self) -> Any:
        if not H2_ENABLED:
            raise unittest.SkipTest("twisted has no HTTP/2 (h2, priority)")
        curl = shutil.which("curl")
        if curl is None:
            raise unittest.SkipTest("no curl")
        http = self.load(cert=None)
        out, err, code = yield getProcessOutputAndValue(
            curl, ["-sk", "--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                   http.url + "/health"])
        self.assertEqual((code, out), (0, b"2 200"), err)

    @inlineCallbacks
    def test_operator_certificate(self) -> Any:
        pair = tls.ephemeral([HOST])
        folder = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, folder)
        (folder / "c.pem").write_bytes(pair.cert_pem)
        (folder / "k.pem").write_bytes(pair.key_pem)
        self.load(cert=str(folder / "c.pem"), key=str(folder / "k.pem"))
        main = self.engine.modules["http"].main
        self.assertEqual(main.creator.pair.cert_pem, pair.cert_pem)
        self.assertIsNone(main.renewer)
        health = yield self.fetch("/health")
        self.assertEqual(health.code, 200)

    def test_bad_operator_files(self) -> None:
        folder = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, folder)
        (folder / "c.pem").write_text("not a certificate")
        other = tls.ephemeral([HOST])
        (folder / "k.pem").write_bytes(other.key_pem)
        with self.assertRaisesRegex(ValueError, "not a PEM certificate"):
            tls.load(folder / "c.pem", folder / "k.pem")
        with self.assertRaisesRegex(ValueError, "cannot read certificate"):
            tls.load(folder / "missing.pem", folder / "k.pem")
        (folder / "c.pem").write_bytes(tls.ephemeral([HOST]).cert_pem)
        with self.assertRaisesRegex(ValueError, "does not match"):
            tls.load(folder / "c.pem", folder / "k.pem")

    def test_renewal_before_expiry(self) -> None:
        clock = Clock()
        clock.advance(1_800_000_000)
        now = datetime.datetime.fromtimestamp(clock.seconds(), datetime.UTC)
        creator = tls.SwappableServerCreator(tls.ephemeral([HOST], now=now))
        first = creator.pair
        renewer = Renewer(clock, creator, [HOST])
        self.addCleanup(renewer.stop)
        clock.advance((tls.LIFETIME - tls.RENEW_BEFORE).total_seconds() - 60)
        self.assertIs(creator.pair, first)
        clock.advance(61)
        self.assertIsNot(creator.pair, first)
        moved = creator.pair.not_after - first.not_after
        self.assertEqual(moved.days, (tls.LIFETIME - tls.RENEW_BEFORE).days)
        self.assertTrue(renewer.call.active(), "the next renewal is scheduled")
