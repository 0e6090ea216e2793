"""The dashboard in a real browser: headless Chromium, driven over the DevTools protocol.

The resolver answers real queries (hints, through the transports' handler) while the
page follows the /stats stream over HTTPS/2; the test reads the drawn SVG back from the
page and saves a screenshot to artifacts/dashboard.png.  The DevTools client is ours: a
blocking WebSocket client run in a thread, so the reactor keeps serving the page.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import dns.rrset
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from kresolver.engine import Engine

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
HOST = "127.0.70.10"
TOKEN = "dashboard-token"
#: how long the browser may take to start and to show enough updates (seconds)
PATIENCE = 30.0


class DevToolsError(Exception):
    pass


class DevTools:
    """A minimal Chrome DevTools protocol client over a WebSocket (RFC 6455, client side)."""

    def __init__(self, url: str, timeout: float = PATIENCE) -> None:
        parsed = urlparse(url)
        self.sock = socket.create_connection((parsed.hostname, parsed.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {parsed.path} HTTP/1.1\r\nHost: {parsed.hostname}:{parsed.port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise DevToolsError("DevTools closed the WebSocket handshake")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise DevToolsError(f"DevTools refused the WebSocket: {head[:80]!r}")
        self.next_id = 0

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise DevToolsError("DevTools connection closed")
            data += chunk
        return data

    def send(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", 0x81, 0x80 | size)
        elif size < 65536:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, size)
        else:
            header = struct.pack("!BBQ", 0x81, 0x80 | 127, size)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def receive(self) -> str:
        message = b""
        while True:
            first, second = self._read(2)
            size = second & 0x7F
            if size == 126:
                size = struct.unpack("!H", self._read(2))[0]
            elif size == 127:
                size = struct.unpack("!Q", self._read(8))[0]
            payload = self._read(size)
            opcode = first & 0x0F
            if opcode == 0x8:
                raise DevToolsError("DevTools closed the WebSocket")
            if opcode in (0x9, 0xA):  # ping, pong: not part of a message
                continue
            message += payload
            if first & 0x80:
                return message.decode()

    def call(self, method: str, **params: Any) -> Any:
        self.next_id += 1
        ident = self.next_id
        self.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            reply = json.loads(self.receive())
            if reply.get("id") == ident:
                if "error" in reply:
                    raise DevToolsError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        self.sock.close()


class Browser:
    """A headless Chromium of our own (own profile directory, killed by its pid)."""

    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="kresolver-chromium-")
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--disable-extensions", "--disable-default-apps",
             "--ignore-certificate-errors", "--window-size=1400,1000",
             f"--user-data-dir={self.profile}", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.tools: DevTools | None = None

    def connect(self) -> DevTools:
        """Wait for DevTools, attach to the page target (blocking: run in a thread)."""
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + PATIENCE
        while not port_file.exists() or not port_file.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise DevToolsError("chromium did not start its DevTools server")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            targets = json.load(r)
        page = next(t for t in targets if t["type"] == "page")
        self.tools = DevTools(page["webSocketDebuggerUrl"])
        return self.tools

    def close(self) -> None:
        if self.tools is not None:
            self.tools.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


class Authority(DatagramProtocol):
    """An authoritative server on loopback answering every A question after C{delay} s,
    so the upstream chart has real exchanges with two different RTTs."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        query = dns.message.from_wire(data)
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.AA
        reply.answer.append(dns.rrset.from_text(
            query.question[0].name, 60, "IN", "A", "192.0.2.200"))
        reactor.callLater(self.delay, self.transport.write, reply.to_wire(), addr)


def query(name: str, rdtype: str = "A") -> bytes:
    return dns.message.make_query(name, rdtype, use_edns=True).to_wire()


class DashboardTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        if not os.path.exists(CHROMIUM):
            raise unittest.SkipTest("no chromium")
        self.engine = Engine(reactor)
        modules = self.engine.modules
        modules.load("hints")
        if "stats" in modules.available():
            modules.load("stats")
        self.engine.run_config(
            "hints['www.example.lab'] = '192.0.2.1'\n"
            "hints['mail.example.lab'] = '192.0.2.2'\n"
            "hints['api.example.lab'] = '192.0.2.3'\n"
            "hints['ads.example.lab'] = '192.0.2.4'\n"
        )
        self.state = tempfile.mkdtemp(prefix="kresolver-daf-")
        self.addCleanup(shutil.rmtree, self.state, True)
        modules.load("daf", {"state_dir": self.state})
        modules.load("http", {"host": HOST, "port": 0, "interval": 0.25, "token": TOKEN})
        self.http = self.engine.namespace["http"]
        self.authorities = {}
        for address, delay in (("127.0.70.12", 0.002), ("127.0.70.13", 0.02)):
            port = reactor.listenUDP(53, Authority(delay), interface=address)
            self.addCleanup(port.stopListening)
            self.authorities[address] = port
        self.sent = 0
        self.traffic = LoopingCall(self.send_some)
        self.traffic.clock = reactor
        self.traffic.start(0.05)
        self.addCleanup(lambda: self.traffic.running and self.traffic.stop())

    @inlineCallbacks
    def tearDown(self) -> Any:
        # No new traffic, then let the exchanges under way end (the authorities answer
        # within 20 ms): a query sent by the last tick would leave the reactor unclean.
        if self.traffic.running:
            self.traffic.stop()
        for _ in range(100):
            if not self.engine.upstream.in_flight:
                break
            yield deferLater(reactor, 0.02, lambda: None)
        yield self.engine.modules["http"].unload()
        yield deferLater(reactor, 0.05, lambda: None)

    def send_some(self) -> None:
        """Real queries through the transports' handler: answers, NODATA, varied names."""
        handler = self.engine.net.handler
        names = ["www.example.lab"] * 5 + ["mail.example.lab"] * 2 + ["api.example.lab"]
        names.append("ads.example.lab")
        for i, name in enumerate(names):
            rdtype = "AAAA" if i == 7 and self.sent % 3 == 0 else "A"
            handler.receive(query(name, rdtype), ("127.0.70.11", 5353), (HOST, 53), "udp")
            self.sent += 1
        # what iteration would ask: the engine's upstream, so stats.upstreams() sees RTTs
        for address in self.authorities:
            asked = self.engine.upstream.query(
                dns.name.from_text(f"q{self.sent}.upstream.lab"), dns.rdatatype.A, [address],
                allow_local=True)
            asked.addErrback(lambda failure: None)  # a lost exchange only shows as a gap

    @inlineCallbacks
    def open_page(self) -> Any:
        browser = Browser()
        self.addCleanup(browser.close)
        tools = yield deferToThread(browser.connect)
        yield deferToThread(tools.call, "Page.enable")
        yield deferToThread(tools.call, "Page.navigate", url=self.http.url + "/")
        return tools

    def wait_for(self, tools: DevTools, expression: str) -> Deferred[Any]:
        """The first truthy value of C{expression} in the page (polled in a thread)."""

        def poll() -> Any:
            deadline = time.monotonic() + PATIENCE
            while time.monotonic() < deadline:
                try:
                    value = tools.evaluate(expression)
                except DevToolsError:
                    value = None  # the page is still loading
                if value:
                    return value
                time.sleep(0.1)
            raise DevToolsError(f"never true in the page: {expression}")

        return deferToThread(poll)

    @inlineCallbacks
    def screenshot(self, tools: DevTools, name: str) -> Any:
        ARTIFACTS.mkdir(exist_ok=True)
        height = yield deferToThread(tools.evaluate, "document.documentElement.scrollHeight")
        yield deferToThread(tools.call, "Emulation.setDeviceMetricsOverride", width=1400,
                            height=int(height), deviceScaleFactor=1, mobile=False)
        yield deferLater(reactor, 0.6, lambda: None)
        shot = yield deferToThread(tools.call, "Page.captureScreenshot", format="png")
        (ARTIFACTS / name).write_bytes(base64.b64decode(shot["data"]))

    @inlineCallbacks
    def test_charts_render_live_data(self) -> Any:
        tools = yield self.open_page()
        updates = yield self.wait_for(tools, "window.kres && kres.updates >= 6 && kres.updates")
        self.assertGreaterEqual(updates, 6)
        found = yield deferToThread(tools.evaluate, """(() => {
          const points = sel => Number(document.querySelector(sel + ' path.series')
              ?.getAttribute('data-points') || 0);
          const qps = document.querySelector('#chart-qps path.series');
          return {
            protocol: performance.getEntriesByType('navigation')[0].nextHopProtocol,
            status: document.getElementById('status').textContent,
            qpsPoints: points('#chart-qps'),
            qpsPath: qps ? qps.getAttribute('d') : '',
            hitPoints: points('#chart-hit'),
            rcodeSeries: document.querySelectorAll('#chart-rcode path.series').length,
            latencyBars: [...document.querySelectorAll('#chart-latency rect.bar')]
                .map(r => Number(r.getAttribute('data-value'))),
            kpiQps: document.getElementById('kpi-qps').textContent,
            total: document.getElementById('kpi-total').textContent,
            names: [...document.querySelectorAll('#table-names tbody tr')]
                .map(r => r.cells[0].textContent),
            upstreams: [...document.querySelectorAll('#chart-upstreams rect.bar')]
                .map(r => Number(r.getAttribute('data-value'))),
            upstreamLabels: [...document.querySelectorAll('#chart-upstreams text.axis')]
                .map(t => t.textContent),
          };
        })()""")
        self.assertEqual(found["protocol"], "h2")
        self.assertEqual(found["status"], "live")
        self.assertGreaterEqual(found["qpsPoints"], 3)
        self.assertGreaterEqual(found["hitPoints"], 3)
        self.assertEqual(found["rcodeSeries"], 5)
        self.assertEqual(len(found["latencyBars"]), 9)
        self.assertAlmostEqual(sum(found["latencyBars"]), 100, delta=0.5)
        self.assertNotEqual(found["kpiQps"], "0", "queries per second must be above zero")
        # the line is not flat on the axis: some point is above the zero line
        ys = {float(p.split()[1]) for p in found["qpsPath"][1:].split(" L")}
        self.assertGreater(len(ys) + (max(ys) - min(ys) > 0), 1)
        if "stats" in self.engine.modules:
            self.assertEqual(sorted(found["upstreamLabels"]), sorted(self.authorities))
            self.assertTrue(all(rtt > 0 for rtt in found["upstreams"]), found["upstreams"])
            # stats samples a share of the full path (cache misses): names come in time
            names = yield self.wait_for(tools, """(() => {
              const rows = [...document.querySelectorAll('#table-names tbody tr')];
              return rows.length > 0 && rows.map(r => r.cells[0].textContent);
            })()""")
            self.assertTrue(all(n.endswith("example.lab.") for n in names), names)
        yield self.screenshot(tools, "dashboard.png")

    @inlineCallbacks
    def test_firewall_panel_creates_suspends_and_deletes_rules(self) -> Any:
        daf = self.engine.namespace["daf"]
        tools = yield self.open_page()
        yield self.wait_for(tools, "window.kres && kres.updates >= 2")
        # without the token the change is refused, and the page says why
        yield deferToThread(tools.evaluate, """(() => {
          document.getElementById('daf-rule').value = 'qname = ads.example.lab deny';
          document.getElementById('daf-form').requestSubmit();
        })()""")
        refused = yield self.wait_for(tools, "document.getElementById('daf-error').textContent")
        self.assertIn("token", refused)
        self.assertEqual(daf.rules, [])
        yield deferToThread(tools.evaluate, f"""(() => {{
          const token = document.getElementById('token');
          token.value = '{TOKEN}';
          token.dispatchEvent(new Event('change'));
          document.getElementById('daf-rule').value = 'qname = ads.example.lab AND';
          document.getElementById('daf-form').requestSubmit();
        }})()""")
        invalid = yield self.wait_for(
            tools, "document.getElementById('daf-error').textContent.includes('AND') && "
                   "document.getElementById('daf-error').textContent")
        self.assertIn("AND must be followed by a condition", invalid)
        for rule in ("qname = ads.example.lab deny", "src = 192.0.2.0/24 truncate"):
            yield deferToThread(tools.evaluate, f"""(() => {{
              document.getElementById('daf-rule').value = '{rule}';
              document.getElementById('daf-form').requestSubmit();
            }})()""")
            yield self.wait_for(tools, "document.getElementById('daf-rule').value === ''")
        # the panel follows the rule's match count as traffic hits it
        count = yield self.wait_for(tools, """(() => {
          const row = document.querySelector('#daf-rules tr[data-id="1"]');
          const n = row ? Number(row.cells[2].textContent) : 0;
          return document.querySelectorAll('#daf-rules tbody tr').length === 2 && n >= 3 && n;
        })()""")
        self.assertGreaterEqual(count, 3)
        self.assertEqual([r["info"] for r in daf.rules],
                         ["qname = ads.example.lab deny", "src = 192.0.2.0/24 truncate"])
        blocked = yield self.wait_for(
            tools, "Number(document.getElementById('kpi-blocked').textContent) > 0 && "
                   "document.querySelectorAll('#chart-policy path.series').length")
        self.assertEqual(blocked, 1)
        yield self.screenshot(tools, "dashboard-daf.png")
        # suspend rule 1, then delete rule 2, with the panel's buttons
        yield deferToThread(tools.evaluate, """document.querySelector(
          '#daf-rules tr[data-id="1"] button').click()""")
        yield self.wait_for(tools, """document.querySelector(
          '#daf-rules tr[data-id="1"]').cells[3].textContent === 'suspended'""")
        self.assertFalse(daf.get(1)["active"])
        yield deferToThread(tools.evaluate, """document.querySelectorAll(
          '#daf-rules tr[data-id="2"] button')[1].click()""")
        yield self.wait_for(tools, "!document.querySelector('#daf-rules tr[data-id=\"2\"]')")
        self.assertEqual([r["id"] for r in daf.rules], [1])
