"""The real ``twistd -n kresolver`` in a subprocess: it answers, fails clearly, stops cleanly.

Each run happens in a temporary directory with ``--pidfile=`` and ``-n`` (log to stdout),
so twistd writes nothing into the checkout.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import dns.message
import dns.query
import dns.rcode
from twisted.trial import unittest

import kresolver

ADDRESS = "127.0.40.3"
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(kresolver.__file__)))


def free_port(address: str) -> int:
    """A port free for both UDP and TCP on C{address} (checked, then released)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((address, 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((address, port))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no free port on {address}")


class TwistdCase(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="kresolver-twistd-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (CHECKOUT, os.environ.get("PYTHONPATH")) if p)

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def run_twistd(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run twistd to its end (for the runs that must fail at start)."""
        return subprocess.run(
            [*TWISTD, "-n", "--pidfile=", "kresolver", *args], cwd=self.dir, env=self.env,
            capture_output=True, text=True, timeout=timeout,
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile=", "kresolver", *args], cwd=self.dir, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

        def stop() -> None:
            if process.poll() is None:
                process.kill()
            process.communicate()

        self.addCleanup(stop)
        return process

    def assertOneLineFailure(self, result: subprocess.CompletedProcess[str],
                             *expected: str) -> str:
        """Non-zero exit, no traceback, exactly one line naming kresolver's complaint."""
        output = result.stdout + result.stderr
        self.assertNotEqual(result.returncode, 0, output)
        self.assertNotIn("Traceback", output)
        lines = [line for line in output.splitlines() if "kresolver:" in line]
        self.assertEqual(len(lines), 1, output)
        for text in expected:
            self.assertIn(text, lines[0])
        self.assertEqual(os.listdir(self.dir), [n for n in os.listdir(self.dir)
                                                if n.endswith(".conf")])
        return lines[0]


def wait_for_answer(process: subprocess.Popen[str], address: str, port: int,
                    name: str = "localhost.", seconds: float = 20) -> dns.message.Message:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"twistd exited early: {process.communicate()[0]}")
        try:
            return dns.query.udp(dns.message.make_query(name, "A"), address, port=port,
                                 timeout=0.5)
        except (dns.exception.Timeout, ConnectionRefusedError):
            continue
    raise AssertionError("twistd did not answer in time")


class RunTests(TwistdCase):
    def test_answers_and_stops_on_sigterm(self) -> None:
        config = self.write("k.conf", "hints['localhost'] = '127.0.0.1'\n"
                                      "net.listen('127.0.0.1', 53)\n")
        port = free_port(ADDRESS)
        process = self.start("-c", config, "--listen", f"{ADDRESS}@{port}")
        answer = wait_for_answer(process, ADDRESS, port)
        self.assertEqual(answer.rcode(), dns.rcode.NOERROR)
        self.assertEqual([rr.to_text() for rr in answer.answer[0]], ["127.0.0.1"])
        ptr = dns.query.tcp(dns.message.make_query("1.0.0.127.in-addr.arpa.", "PTR"),
                            ADDRESS, port=port, timeout=2)
        self.assertEqual(ptr.answer[0][0].to_text(), "localhost.")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=15)
        self.assertEqual(process.returncode, 0, output)
        self.assertNotIn("Traceback", output)
        self.assertEqual(sorted(os.listdir(self.dir)), ["k.conf"])


class FailureTests(TwistdCase):
    def setUp(self) -> None:
        super().setUp()
        self.config = self.write("ok.conf", "cache.size = 10 * MB\n")

    def test_address_not_local(self) -> None:
        line = self.assertOneLineFailure(
            self.run_twistd("-c", self.config, "--listen", "192.0.2.1@5353"),
            "cannot listen on 192.0.2.1@5353")
        self.assertIn("assign requested address", line)

    def test_port_in_use(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
            taken.bind((ADDRESS, 0))
            port = taken.getsockname()[1]
            self.assertOneLineFailure(
                self.run_twistd("-c", self.config, "--listen", f"{ADDRESS}@{port}"),
                f"cannot listen on {ADDRESS}@{port}", "in use")

    def test_missing_config(self) -> None:
        self.assertOneLineFailure(
            self.run_twistd("-c", "nosuch.conf", "--listen", f"{ADDRESS}@0"),
            "nosuch.conf", "cannot read config")

    def test_config_error(self) -> None:
        config = self.write("bad.conf", "cache.size = 10 * MB\n\nnet.listen('nope')\n")
        self.assertOneLineFailure(
            self.run_twistd("-c", config, "--listen", f"{ADDRESS}@0"),
            f"{config}:3:", "'nope' is not an IP address")

    def test_config_syntax_error(self) -> None:
        config = self.write("syntax.conf", "modules = [\n")
        self.assertOneLineFailure(self.run_twistd("-c", config), f"{config}:1: syntax error")

    def test_broken_dropin_named(self) -> None:
        """A module whose drop-in does not import: the one line says which file and why."""
        plugins = os.path.join(self.dir, "site", "kresolver", "plugins")
        os.makedirs(plugins)
        with open(os.path.join(plugins, "ktbroken.py"), "w") as f:
            f.write("import no_such_dependency_of_ktbroken\n")
        self.env["PYTHONPATH"] += os.pathsep + os.path.join(self.dir, "site")
        config = self.write("needs.conf", "ktbroken.enabled = True\n")
        result = self.run_twistd("-c", config, "--listen", f"{ADDRESS}@0")
        shutil.rmtree(os.path.join(self.dir, "site"))
        # twisted.plugin prints the drop-in's own traceback (it is that module's error, and
        # shows where to look); kresolver's line must still name the file and the reason
        self.assertNotEqual(result.returncode, 0)
        lines = [line for line in (result.stdout + result.stderr).splitlines()
                 if line.startswith("kresolver:")]
        self.assertEqual(len(lines), 1, result.stdout + result.stderr)
        self.assertIn(f"{config}:1: NameError", lines[0])
        self.assertIn("ktbroken.py: ModuleNotFoundError: No module named "
                      "'no_such_dependency_of_ktbroken'", lines[0])

    def test_bad_option(self) -> None:
        result = self.run_twistd("--listen", "nonsense")
        self.assertNotEqual(result.returncode, 0)
        output = result.stdout + result.stderr
        self.assertNotIn("Traceback", output)
        self.assertIn("Usage:", output)
        self.assertIn("'nonsense' is not an IP address", output)
