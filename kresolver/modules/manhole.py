"""The manhole module: a live Python console on the engine's namespace.

Two doors, both admin-only by construction:

 - a UNIX socket (``{'socket': '/run/kresolver/console'}``, mode 0600): one line of input
   at a time, the answer printed back, like kresd's control socket; scriptable with
   ``nc -U`` or a few lines of Python;
 - SSH on a loopback port with public-key authentication only
   (``{'port': 2222, 'authorized_keys': '~/.ssh/authorized_keys'}``): a full
   twisted.conch manhole with line editing and history.

Both evaluate in the config namespace through the same scope as the config file, so
``stats.list()``, ``policy.add(...)``, ``cache.clear()`` and ``modules = [...]`` act on the
running resolver exactly as they would at start.
"""

from __future__ import annotations

import code
import contextlib
import io
import os
import stat
from pathlib import Path
from typing import Any

from twisted.conch import manhole, manhole_ssh
from twisted.conch.insults import insults
from twisted.conch.ssh import keys
from twisted.cred import portal
from twisted.internet import protocol
from twisted.protocols.basic import LineReceiver

from kresolver.logging import KLogger as Logger
from kresolver.module import Module

log = Logger()

DEFAULT_SOCKET = "/run/kresolver/console"
PROMPT = b"> "
#: one console line may not be longer than this (a paste of a policy list fits)
MAX_LINE = 65536


def run_in_scope(interpreter: code.InteractiveInterpreter, engine: Any, compiled: Any,
                 source: str) -> None:
    """Run console input as config: in the engine's scope, then relayed (to the workers)
    if it worked.  A SystemExit is refused: a typo must not stop the resolver."""
    try:
        exec(compiled, engine.namespace, engine.scope())
    except SystemExit:
        interpreter.write("SystemExit is not allowed here\n")
        return
    except BaseException:
        interpreter.showtraceback()
        return
    engine.applied(source, "<console>")


class InScope:
    """Console input runs as config (L{run_in_scope}); mixed into both interpreters."""

    engine: Any = None
    source = ""

    def runsource(self, source: str, filename: str = "<console>", symbol: str = "single") -> bool:
        self.source = source
        return super().runsource(source, filename, symbol)  # type: ignore[misc]

    def runcode(self, compiled: Any) -> None:
        run_in_scope(self, self.engine, compiled, self.source)  # type: ignore[arg-type]


class ScopedInterpreter(InScope, code.InteractiveInterpreter):
    """The UNIX console's interpreter."""

    def __init__(self, engine: Any) -> None:
        super().__init__(engine.namespace)
        self.engine = engine


class LineConsole(LineReceiver):
    """The UNIX-socket console: lines in, printed results out, multi-line blocks allowed."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self, engine: Any) -> None:
        self.interpreter = ScopedInterpreter(engine)
        self.interpreter.write = self._collect  # type: ignore[method-assign]
        self.buffer: list[str] = []
        self.output = io.StringIO()

    def _collect(self, text: str) -> None:
        self.output.write(text)

    def connectionMade(self) -> None:
        self.transport.write(PROMPT)

    def lineReceived(self, line: bytes) -> None:
        self.buffer.append(line.decode("utf-8", "replace").rstrip("\r"))
        self.output = io.StringIO()
        with contextlib.redirect_stdout(self.output):
            more = self.interpreter.runsource("\n".join(self.buffer), "<console>")
        if not more:
            self.buffer = []
        self.transport.write(self.output.getvalue().encode("utf-8"))
        self.transport.write(b"... " if more else PROMPT)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.transport.write(b"line too long\n")
        self.transport.loseConnection()


class LineConsoleFactory(protocol.Factory):
    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def buildProtocol(self, addr: Any) -> LineConsole:
        return LineConsole(self.engine)


class ScopedManholeInterpreter(InScope, manhole.ManholeInterpreter):
    """twisted.conch's interpreter, evaluating in the engine's config scope."""

    def __init__(self, handler: Any, engine: Any) -> None:
        super().__init__(handler, engine.namespace)
        self.engine = engine

    def runcode(self, compiled: Any) -> None:
        with self.monkeyPatcher:
            InScope.runcode(self, compiled)


class EngineManhole(manhole.ColoredManhole):
    engine: Any = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.interpreter = ScopedManholeInterpreter(self, self.engine)


class ConsoleSession(manhole_ssh.TerminalSession):
    """conch's terminal session, which also accepts end-of-input (a scripted client)."""

    channel: Any = None

    def openShell(self, proto: Any) -> None:
        self.channel = proto
        super().openShell(proto)

    def eofReceived(self) -> None:
        if self.channel is not None:
            self.channel.loseConnection()


class ConsoleRealm(manhole_ssh.TerminalRealm):
    sessionFactory = ConsoleSession


def ssh_factory(engine: Any, authorized_keys: Path, host_key: keys.Key) -> Any:
    """A conch SSH factory that admits the keys in C{authorized_keys} and nothing else."""
    from twisted.conch.checkers import SSHPublicKeyChecker

    def keys_for(username: bytes) -> Any:
        with open(authorized_keys, "rb") as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith(b"#"):
                    try:
                        yield keys.Key.fromString(line)
                    except keys.BadKeyError:
                        log.warn("manhole: unreadable key in {path}", path=authorized_keys)

    class KeysDB:
        def getAuthorizedKeys(self, username: bytes) -> Any:
            return keys_for(username)

    bound = type("EngineManhole", (EngineManhole,), {"engine": engine})

    def make_protocol() -> Any:
        return insults.ServerProtocol(bound)

    realm = ConsoleRealm()
    realm.chainedProtocolFactory = make_protocol
    the_portal = portal.Portal(realm, [SSHPublicKeyChecker(KeysDB())])
    factory = manhole_ssh.ConchFactory(the_portal)
    factory.publicKeys = {b"ssh-ed25519": host_key.public()}
    factory.privateKeys = {b"ssh-ed25519": host_key}
    return factory


def ephemeral_host_key() -> keys.Key:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return keys.Key(ed25519.Ed25519PrivateKey.generate())


class Manhole(Module):
    name = "manhole"
    description = "Live Python console on the config namespace (UNIX socket or SSH)"

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.ports: list[Any] = []
        self.socket_path: str | None = None
        self.ssh_port: int | None = None
        self._configured = False
        # Loaded without configuration (modules.load('manhole')): the default socket.
        engine.reactor.callWhenRunning(self._default)

    def _default(self) -> None:
        if not self._configured:
            self.configure({"socket": DEFAULT_SOCKET})

    def configure(self, value: Any) -> None:
        if isinstance(value, str):
            value = {"socket": value}
        if not isinstance(value, dict) or not value or set(value) - {
            "socket", "host", "port", "authorized_keys", "host_key"
        }:
            raise ValueError(
                "manhole takes {'socket': path} and/or {'port': N, 'authorized_keys': path, "
                f"'host': '127.0.0.1', 'host_key': path}}, not {value!r}"
            )
        self._configured = True
        self.unload()
        if "socket" in value:
            self._listen_unix(str(value["socket"]))
        if "port" in value:
            self._listen_ssh(value)

    def _listen_unix(self, path: str) -> None:
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)  # a stale socket from a previous run
        port = self.engine.reactor.listenUNIX(path, LineConsoleFactory(self.engine), mode=0o600)
        self.ports.append(port)
        self.socket_path = path
        log.info("manhole: console on {path}", path=path)

    def _listen_ssh(self, value: dict[str, Any]) -> None:
        if "authorized_keys" not in value:
            raise ValueError("manhole over SSH needs 'authorized_keys' (key authentication only)")
        authorized = Path(os.path.expanduser(str(value["authorized_keys"])))
        if not authorized.is_file():
            raise ValueError(f"manhole: authorized_keys file {authorized} does not exist")
        if "host_key" in value:
            host_key = keys.Key.fromFile(os.path.expanduser(str(value["host_key"])))
        else:
            host_key = ephemeral_host_key()
        host = str(value.get("host", "127.0.0.1"))
        factory = ssh_factory(self.engine, authorized, host_key)
        port = self.engine.reactor.listenTCP(int(value["port"]), factory, interface=host)
        self.ports.append(port)
        self.ssh_port = port.getHost().port
        log.info("manhole: SSH on {host}@{port}", host=host, port=self.ssh_port)

    def unload(self) -> None:
        ports, self.ports = self.ports, []
        for port in ports:
            port.stopListening()
        self.socket_path = None
        self.ssh_port = None
