"""The manhole console: the config namespace, live, over a UNIX socket and over SSH."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from kresolver.engine import Engine


def converse(path: str, lines: list[str]) -> str:
    """Send C{lines} to the console at C{path}; return everything it printed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        output = b""
        for line in [*lines, None]:
            while not output.endswith((b"> ", b"... ")):
                chunk = s.recv(65536)
                if not chunk:
                    return output.decode()
                output += chunk
            if line is None:
                break
            output += b"\n"
            s.sendall(line.encode() + b"\n")
        return output.decode()


class UnixConsoleTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="kresolver-manhole-")
        self.path = os.path.join(self.dir, "console")
        self.engine = Engine(reactor)
        self.engine.run_config(
            f"modules = {{'manhole': {{'socket': {self.path!r}}}, 'stats': None}}"
        )
        self.addCleanup(self.engine.modules.unload, "manhole")

    async def test_console_acts_on_the_live_engine(self) -> None:
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        self.engine.metrics["answer.total"] = 42
        out = await deferToThread(converse, self.path, [
            "stats.list('answer')",
            "cache.size = 2 * MB",
            "modules = ['predict']",
            "for name in modules.list():",
            "    print('loaded', name)",
            "",
            "1 / 0",
        ])
        self.assertIn("{'answer.total': 42}", out)
        self.assertEqual(self.engine.cache.size, 2 * 1024 * 1024)
        self.assertIn("predict", self.engine.modules)
        self.assertIn("loaded predict", out)
        self.assertIn("ZeroDivisionError", out)
        self.engine.modules.unload("predict")

    async def test_autoload_and_exit_refused(self) -> None:
        out = await deferToThread(converse, self.path, [
            "hints.set('console.lab 192.0.2.7')", "raise SystemExit(1)", "'still here'",
        ])
        self.assertIn("hints", self.engine.modules)
        self.assertIn("SystemExit is not allowed here", out)
        self.assertIn("'still here'", out)

    async def test_applied_lines_are_relayed(self) -> None:
        """What worked is handed to the engine's config listeners (the worker supervisor
        relays it to every worker); what raised is not."""
        relayed: list[tuple[str, str]] = []
        self.engine.on_config.append(lambda source, name: relayed.append((source, name)))
        await deferToThread(converse, self.path, ["cache.size = 3 * MB", "nonsense_name"])
        self.assertEqual(relayed, [("cache.size = 3 * MB", "<console>")])

    def test_bad_config(self) -> None:
        self.assertRaises(ValueError, self.engine.modules["manhole"].configure, {"sockets": "x"})
        self.assertRaises(ValueError, self.engine.modules["manhole"].configure, {"port": 0})


class SSHConsoleTests(unittest.TestCase):
    """A real OpenSSH client logs in with a key and runs stats.list()."""

    def setUp(self) -> None:
        if not os.path.exists("/usr/bin/ssh"):
            raise unittest.SkipTest("OpenSSH client not installed")
        self.dir = tempfile.mkdtemp(prefix="kresolver-manhole-ssh-")
        self.key = os.path.join(self.dir, "id")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.key],
                       check=True)
        os.rename(self.key + ".pub", os.path.join(self.dir, "authorized_keys"))
        self.engine = Engine(reactor)
        self.engine.run_config(
            "modules = {'manhole': {'port': 0, 'host': '127.0.40.92', "
            f"'authorized_keys': {os.path.join(self.dir, 'authorized_keys')!r}}}}}"
        )
        self.addCleanup(self.engine.modules.unload, "manhole")
        self.port = self.engine.modules["manhole"].ssh_port

    def ssh(self, key: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-tt", "-i", key, "-p", str(self.port), "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
             "-o", "ConnectTimeout=5", "admin@127.0.40.92"],
            input="stats.list('answer')\n\x04", capture_output=True, text=True, timeout=20,
        )

    async def test_key_login(self) -> None:
        self.engine.metrics["answer.total"] = 7
        result = await deferToThread(self.ssh, self.key)
        self.assertIn("answer.total", result.stdout)

    async def test_other_key_refused(self) -> None:
        other = os.path.join(self.dir, "other")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other], check=True)
        result = await deferToThread(self.ssh, other)
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("answer.total", result.stdout)
