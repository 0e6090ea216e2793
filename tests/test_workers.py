"""--workers: a supervisor, worker processes sharing the sockets, AMP relays, restarts."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import dns.message
import dns.query
import dns.rcode
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from kresolver.engine import Engine
from kresolver.server.net import ListenError
from kresolver.server.workers import (
    ControlPlaneElsewhere,
    GetMetrics,
    Supervisor,
    open_sockets,
)
from kresolver.testing.daemon import missing_software
from kresolver.testing.lab import ask
from kresolver.testing.services import EtcdServer
from tests.storage_support import wait_until

LISTEN = "127.0.90.51"
TWISTD_LISTEN = "127.0.90.52"
CONFIG = """
cache.open(10 * MB, 'lmdb://{cache}')
hints['w.kres'] = '192.0.2.7'
http.config({{'host': '127.0.90.53', 'port': {http_port}}})  # the supervisor's alone
"""


def a_records(wire: bytes) -> list[str]:
    response = dns.message.from_wire(wire)
    return [rdata.to_text() for rrset in response.answer for rdata in rrset]


@defer.inlineCallbacks
def workers_ready(supervisor: Supervisor) -> Any:
    """Until every worker answers over AMP (its config ran, its sockets are adopted)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        live = supervisor.live()
        if len(live) == supervisor.count and all(w.amp.transport is not None for w in live):
            try:
                yield defer.gatherResults([w.call(GetMetrics) for w in live])
                return
            except Exception:
                pass
        yield task.deferLater(reactor, 0.1, lambda: None)
    raise AssertionError("workers did not come up")


class SocketTests(unittest.TestCase):
    def test_one_port_per_listener_for_every_worker(self) -> None:
        slots = open_sockets([(LISTEN, 0)], 3)
        self.addCleanup(lambda: [s.close() for slot in slots for p in slot.values() for s in p])
        ports = {key for slot in slots for key in slot}
        self.assertEqual(len(ports), 1)
        [(host, port)] = ports
        self.assertEqual(host, LISTEN)
        self.assertNotEqual(port, 0)

    def test_port_in_use_is_a_clear_error(self) -> None:
        import socket

        taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(taken.close)
        taken.bind((LISTEN, 0))
        with self.assertRaises(ListenError) as caught:
            open_sockets([(LISTEN, taken.getsockname()[1])], 2)
        self.assertIn(LISTEN, str(caught.exception))

    def test_udp_queries_spread_by_id_even_from_one_client(self) -> None:
        """The kernel would hash one client's address and port to one worker; the query
        ID picks the worker instead, so one busy client keeps every worker busy."""
        import select
        import socket

        slots = open_sockets([(LISTEN, 0)], 3)
        self.addCleanup(lambda: [s.close() for slot in slots for p in slot.values() for s in p])
        [(where, _)] = slots[0].items()
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(client.close)
        for query_id in range(9):
            client.sendto(query_id.to_bytes(2, "big") + b"\x01\x00" + bytes(8), where)
        received: dict[int, list[int]] = {index: [] for index in range(3)}
        udp = {slot[where][0]: index for index, slot in enumerate(slots)}
        deadline = time.monotonic() + 10
        while sum(map(len, received.values())) < 9 and time.monotonic() < deadline:
            for sock in select.select(list(udp), [], [], 0.5)[0]:
                received[udp[sock]].append(int.from_bytes(sock.recv(512)[:2], "big"))
        self.assertEqual(received, {0: [0, 3, 6], 1: [1, 4, 7], 2: [2, 5, 8]})

    def test_control_plane_is_inert_in_workers(self) -> None:
        http = ControlPlaneElsewhere("http")
        self.assertIsNone(http.config({"port": 8453}))
        http.anything = 1
        self.assertIn("supervisor", repr(http.endpoints["/x"]))


class OptionsTests(unittest.TestCase):
    def service(self, config: str, *argv: str) -> Any:
        from kresolver.tap import Options, makeService

        path = os.path.join(tempfile.mkdtemp(prefix="kresolver-workers-opt-"), "k.conf")
        self.addCleanup(shutil.rmtree, os.path.dirname(path), True)
        with open(path, "w") as f:
            f.write(config)
        options = Options()
        options.parseOptions(["-c", path, "--listen", f"{LISTEN}@0", *argv])
        return makeService(options)

    def supervisor(self, service: Any) -> Supervisor | None:
        found = [s for s in service if isinstance(s, Supervisor)]
        return found[0] if found else None

    def test_net_workers_in_the_config(self) -> None:
        supervisor = self.supervisor(self.service("net.workers = 3\n"))
        self.assertIsNotNone(supervisor)
        self.assertEqual(supervisor.count, 3)
        # left in memory by the config, the workers share an LMDB cache instead
        self.assertTrue(supervisor.cache_uri.startswith("lmdb://"))

    def test_option_wins_and_one_worker_is_supervised(self) -> None:
        supervisor = self.supervisor(self.service("net.workers = 3\n", "--workers", "1"))
        self.assertEqual(supervisor.count, 1)
        self.assertIsNone(supervisor.cache_uri)

    def test_single_process_by_default(self) -> None:
        self.assertIsNone(self.supervisor(self.service("")))

    def test_bad_counts(self) -> None:
        for argv in (("--workers", "0"), ("--workers", "lots")):
            self.assertRaises(SystemExit, self.service, "", *argv)


class SupervisorTests(unittest.TestCase):
    """A supervisor in this process, with two real worker processes."""

    def setUp(self) -> Any:
        self.dir = tempfile.mkdtemp(prefix="kresolver-workers-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        config = os.path.join(self.dir, "kresolver.conf")
        with open(config, "w") as f:
            f.write(CONFIG.format(cache=os.path.join(self.dir, "cache"), http_port=8453))
        engine = self.engine = Engine(reactor)
        engine.load_defaults()
        engine.load_config(config)
        engine.net.listen(LISTEN, 0)
        self.supervisor = Supervisor(engine, 2, config, False, None)
        self.supervisor.startService()
        self.addCleanup(self.supervisor.stopService)
        [(self.host, self.port)] = self.supervisor.slots[0]
        self.workers = engine.namespace["workers"]
        return self.wait_for_workers()

    def wait_for_workers(self) -> Any:
        return workers_ready(self.supervisor)

    @defer.inlineCallbacks
    def ask(self, name: str, transport: str = "udp") -> Any:
        query = dns.message.make_query(name, "A")
        wire = yield ask(query, self.host, self.port, transport, timeout=5)
        return wire

    @defer.inlineCallbacks
    def test_answers_and_metrics_are_summed(self) -> Any:
        for transport in ("udp", "tcp") * 10:
            wire = yield self.ask("w.kres.", transport)
            self.assertEqual(a_records(wire), ["192.0.2.7"])
        metrics = yield self.workers.metrics()
        self.assertGreaterEqual(metrics.get("answer.total", 0), 20)
        per_worker = [w.metrics.get("answer.total", 0) for w in self.supervisor.live()]
        self.assertEqual(sum(per_worker), metrics["answer.total"])
        # the web port is the supervisor's alone: a worker binding it too would have failed
        self.assertEqual(len(self.engine.namespace["http"].interfaces), 1)

    @defer.inlineCallbacks
    def test_config_reaches_every_worker(self) -> Any:
        errors = yield self.workers.run("hints['new.kres'] = '192.0.2.9'")
        self.assertEqual(errors, [])
        for _ in range(20):  # fresh source ports: the kernel spreads them over both workers
            wire = yield self.ask("new.kres.")
            self.assertEqual(a_records(wire), ["192.0.2.9"])
        errors = yield self.workers.run("this is not python")
        self.assertEqual(len(errors), 2)
        # what the supervisor's own engine applies (etcd, the web UI) is relayed too
        self.engine.run_config("hints['relayed.kres'] = '192.0.2.10'")
        yield task.deferLater(reactor, 0.5, lambda: None)
        for _ in range(10):
            wire = yield self.ask("relayed.kres.")
            self.assertEqual(a_records(wire), ["192.0.2.10"])

    @defer.inlineCallbacks
    def test_killed_worker_is_restarted(self) -> Any:
        errors = yield self.workers.run("hints['live.kres'] = '192.0.2.11'")
        self.assertEqual(errors, [])
        old = self.workers.pids()
        os.kill(old[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pids = self.workers.pids()
            if pids[0] not in (None, old[0]):
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertNotIn(self.workers.pids()[0], (None, old[0]))
        self.assertEqual(self.workers.pids()[1], old[1])
        self.assertEqual(self.engine.metrics["workers.restarts"], 1)
        yield self.wait_for_workers()
        for _ in range(10):
            wire = yield self.ask("w.kres.")
            self.assertEqual(a_records(wire), ["192.0.2.7"])
            # the replacement was given the live change too, not only the config file
            wire = yield self.ask("live.kres.")
            self.assertEqual(a_records(wire), ["192.0.2.11"])


class EtcdWorkersTests(unittest.TestCase):
    """etcd is watched once, by the supervisor, and its changes reach every worker."""

    skip = missing_software("etcd")

    def setUp(self) -> Any:
        self.etcd = EtcdServer()
        self.etcd.start()
        self.addCleanup(self.etcd.cleanup)
        self.dir = tempfile.mkdtemp(prefix="kresolver-workers-etcd-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        config = os.path.join(self.dir, "kresolver.conf")
        with open(config, "w") as f:
            f.write(f"cache.open(10 * MB, 'lmdb://{self.dir}/cache')\n"
                    f"modules = {{'etcd': {{'peer': {self.etcd.uri!r}}}}}\n")
        engine = self.engine = Engine(reactor)
        engine.load_defaults()
        engine.load_config(config)
        engine.net.listen(LISTEN, 0)
        self.supervisor = Supervisor(engine, 2, config, False, None)
        self.supervisor.startService()
        self.addCleanup(self.supervisor.stopService)
        self.addCleanup(engine.modules.get("etcd").unload)
        [(self.host, self.port)] = self.supervisor.slots[0]
        return workers_ready(self.supervisor)

    @defer.inlineCallbacks
    def test_a_key_change_reaches_every_worker(self) -> Any:
        body = {"key": base64.b64encode(b"/kresolver/config/hint").decode(),
                "value": base64.b64encode(b"hints['etcd.kres'] = '192.0.2.12'").decode()}
        conn = http.client.HTTPConnection(self.etcd.address, self.etcd.port, timeout=5)
        conn.request("POST", "/v3/kv/put", json.dumps(body))
        self.assertEqual(conn.getresponse().status, 200)
        conn.close()
        yield wait_until(lambda: self.engine.metrics.get("etcd.applied", 0) >= 1)
        yield task.deferLater(reactor, 0.5, lambda: None)  # relayed over AMP
        for _ in range(20):  # fresh source ports: both workers are asked
            wire = yield ask(dns.message.make_query("etcd.kres.", "A"), self.host, self.port,
                             "udp", timeout=5)
            self.assertEqual(a_records(wire), ["192.0.2.12"])


class TwistdWorkersTests(unittest.TestCase):
    """``twistd -n kresolver --workers 2`` as an operator runs it."""

    def test_answers_and_sigterm_exits_zero(self) -> None:
        workdir = tempfile.mkdtemp(prefix="kresolver-twistd-workers-")
        self.addCleanup(shutil.rmtree, workdir, True)
        config = os.path.join(workdir, "kresolver.conf")
        with open(config, "w") as f:
            f.write(CONFIG.format(cache=os.path.join(workdir, "cache"), http_port=8454))
        log = open(os.path.join(workdir, "log"), "wb")
        self.addCleanup(log.close)
        process = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
             "--pidfile=", "kresolver", "-c", config, "--listen", f"{TWISTD_LISTEN}@5391",
             "--workers", "2"],
            stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
        )
        self.addCleanup(lambda: process.poll() is None and process.kill())
        query = dns.message.make_query("w.kres.", "A")
        deadline = time.monotonic() + 30
        response = None
        while time.monotonic() < deadline and response is None:
            try:
                response = dns.query.udp(query, TWISTD_LISTEN, port=5391, timeout=0.5)
            except Exception:
                time.sleep(0.2)
        self.assertIsNotNone(response, open(os.path.join(workdir, "log")).read())
        self.assertEqual(response.rcode(), dns.rcode.NOERROR)
        children = open(f"/proc/{process.pid}/task/{process.pid}/children").read().split()
        self.assertEqual(len(children), 2)
        process.send_signal(signal.SIGTERM)
        self.assertEqual(process.wait(30), 0)
        for child in children:
            self.assertFalse(os.path.exists(f"/proc/{child}/status") and
                             "zombie" not in open(f"/proc/{child}/status").read())
