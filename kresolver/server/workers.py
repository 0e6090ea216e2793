"""Worker processes: one resolver per core behind the same listening sockets.

``twistd -n kresolver --workers N`` (or ``net.workers = N`` in the config) makes the
twistd process a supervisor:

- it runs the config itself, so the control plane lives there once: the web UI, the
  console, the etcd watcher, stats as operators see them;
- it opens the DNS sockets (so port 53 works before privileges are dropped): for every
  listener, one UDP and one TCP socket per worker, bound with SO_REUSEPORT so the kernel
  spreads clients over the workers without waking them all for every packet;
- it spawns N workers (``python -m kresolver.server.workers``) with those sockets passed
  down as inherited file descriptors, which each worker adopts (L{Net.inherited});
- it restarts a worker that dies (with a growing delay if it keeps dying at once), and on
  SIGTERM stops them all and exits 0;
- it talks to each worker over AMP on the worker's stdin/stdout: L{GetMetrics} (the
  supervisor adds the workers' counters into its own ``engine.metrics``, so ``stats``,
  the web UI and Prometheus show the totals) and L{RunConfig}: whatever the supervisor's
  C{engine.run_config()} applies (etcd changes, the web UI, ``workers.run('...')`` from the
  console) runs in every worker too.

Workers run the same config file with the control-plane modules (L{CONTROL_PLANE})
replaced by an inert name, so ``http.config(...)`` in a shared config does not try to
bind the web port N times.  They answer from one shared cache: when the config leaves the
cache in memory, the workers open ``lmdb://`` in L{DEFAULT_CACHE_DIR} (LMDB is shared
by all processes of the machine).

Limits: listeners are fixed at start in worker mode (``net.listen`` at run time would
bind in one worker only); console lines typed into the supervisor's console act on the
supervisor; use ``workers.run('policy.add(...)')`` to reach every worker from there.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet import address
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ReactorNotRunning
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.protocols import amp
from twisted.python import usage
from twisted.python.failure import Failure

from kresolver.logging import KLogger as Logger
from kresolver.server.net import ListenError, parse_address

log = Logger()

#: modules that listen for operators, run by the supervisor only
CONTROL_PLANE = frozenset({"http", "manhole", "etcd", "graphite"})
DEFAULT_CACHE_DIR = "/var/cache/kresolver"
#: seconds between two collections of the workers' counters
METRICS_INTERVAL = 1.0
#: a worker that dies sooner than this after its start is restarted with a growing delay
STABLE_AFTER = 5.0
MAX_RESTART_DELAY = 10.0
#: seconds workers get to stop after SIGTERM before SIGKILL
STOP_TIMEOUT = 10.0


# -- the AMP conversation ------------------------------------------------------------------


class GetMetrics(amp.Command):
    """The worker's C{engine.metrics}, as JSON (counters only)."""

    arguments: list[tuple[bytes, amp.Argument]] = []
    response = [(b"metrics", amp.Unicode())]


class RunConfig(amp.Command):
    """Apply config text in the worker; say whether it worked and why not."""

    arguments = [(b"text", amp.Unicode()), (b"filename", amp.Unicode())]
    response = [(b"ok", amp.Boolean()), (b"error", amp.Unicode())]


class WorkerProtocol(amp.AMP):
    """The worker's end: answers the supervisor with its engine's state."""

    def __init__(self, engine: Any) -> None:
        super().__init__()
        self.engine = engine

    @GetMetrics.responder
    def get_metrics(self) -> dict[str, str]:
        counters = {
            key: value
            for key, value in self.engine.metrics.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        return {"metrics": json.dumps(counters)}

    @RunConfig.responder
    def run_config(self, text: str, filename: str) -> dict[str, Any]:
        from kresolver.engine import ConfigError

        try:
            self.engine.run_config(text, filename)
        except ConfigError as error:
            return {"ok": False, "error": str(error)}
        return {"ok": True, "error": ""}

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        super().connectionLost(reason)
        # stdin closed: the supervisor is gone, and a worker must not outlive it
        try:
            self.engine.reactor.stop()
        except ReactorNotRunning:  # already stopping (SIGTERM came first)
            pass


# -- the worker process ----------------------------------------------------------------------


class ControlPlaneElsewhere:
    """What a worker's config sees under a control-plane module's name: accepts every
    call and setting and does nothing, because the supervisor runs that module."""

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_name", name)

    def __getattr__(self, attribute: str) -> Any:
        return self

    def __setattr__(self, attribute: str, value: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getitem__(self, key: Any) -> Any:
        return self

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{self._name}: runs in the supervisor process>"


def worker_modules(engine: Any) -> Any:
    """The engine's module loader, minus the control plane (see L{CONTROL_PLANE})."""
    from kresolver.engine import Modules, parse_spec

    class WorkerModules(Modules):
        def load(self, spec: str, config: Any = None) -> bool:
            name = parse_spec(spec)[0]
            if name in CONTROL_PLANE:
                engine.namespace[name] = ControlPlaneElsewhere(name)
                return True
            return super().load(spec, config)

    return WorkerModules(engine)


class WorkerOptions(usage.Options):
    optParameters = [
        ["id", None, "0", "This worker's number."],
        ["count", None, "1", "How many workers there are."],
        ["config", "c", None, "Configuration file."],
        ["cache", None, None, "Cache storage URI to open after the config."],
    ]
    optFlags = [["verbose", "v", "Log at debug level."]]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, value: str) -> None:
        """ADDR@PORT=UDPFD,TCPFD: a listener and the inherited descriptors to adopt."""
        where, _, fds = value.rpartition("=")
        udp, _, tcp = fds.partition(",")
        self["listen"].append((parse_address(where), (int(udp), int(tcp))))


class WorkerInfo:
    """``worker`` in the config namespace: which process this is (kresd's ``worker.id``)."""

    def __init__(self, index: int | None, count: int) -> None:
        self.id = index
        self.count = count
        self.pid = os.getpid()

    def __repr__(self) -> str:
        return f"worker(id={self.id}, count={self.count}, pid={self.pid})"


def worker_main(argv: list[str]) -> int:
    """Run one worker; returns the exit status."""
    from twisted.internet import reactor
    from twisted.internet.stdio import StandardIO
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from kresolver.engine import ConfigError, Engine, default_config

    options = WorkerOptions()
    options.parseOptions(argv)
    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(sys.stderr)], redirectStandardIO=False
    )
    index, count = int(options["id"]), int(options["count"])
    engine = Engine(reactor)
    engine.modules = worker_modules(engine)
    engine.namespace["modules"] = engine.modules
    engine.namespace["worker"] = WorkerInfo(index, count)
    try:
        if options["verbose"]:
            engine.log_level("debug")
        engine.load_defaults()
        engine.load_config(options["config"] or default_config())
        engine.net.replace([where for where, _ in options["listen"]])
        engine.net.inherited = dict(options["listen"])
        if options["cache"]:
            engine.cache.open(engine.cache.size, options["cache"])
        if options["verbose"]:
            engine.log_level("debug")
        engine.startService()
    except (ConfigError, ValueError, OSError) as error:
        sys.stderr.write(f"kresolver worker {index}: {error}\n")
        return 1
    StandardIO(WorkerProtocol(engine))
    reactor.addSystemEventTrigger("before", "shutdown", engine.stopService)
    log.info("worker {index} of {count} running (pid {pid})", index=index, count=count,
             pid=os.getpid())
    reactor.run()
    return 0


# -- the supervisor --------------------------------------------------------------------------


#: Linux's option for a classic BPF program that picks the socket of a SO_REUSEPORT group
SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)


def spread_by_query_id(sock: socket.socket, count: int) -> bool:
    """Have the kernel hand each UDP query to worker C{ID % count} of C{sock}'s
    SO_REUSEPORT group (members in the order they were bound: worker 0 first).

    The kernel's own choice hashes the client's address and port, so a handful of busy
    clients (a load balancer, dnsperf's few sockets, one forwarder) can land mostly on one
    worker while the other idles. The query ID is random per query, so it spreads them
    evenly whoever sends them. The program sees the UDP payload from its first byte; a
    datagram too short to hold an ID goes to worker 0. Returns False where the kernel
    refuses (not Linux, or too old): the hash stays, which is correct, only less even.
    """
    program = b"".join([
        struct.pack("=HBBI", 0x28, 0, 0, 0),  # ld half [0]: A = the query ID
        struct.pack("=HBBI", 0x94, 0, 0, count),  # mod #count
        struct.pack("=HBBI", 0x16, 0, 0, 0),  # ret A: that member of the group
    ])
    code = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("@HP", len(program) // 8, ctypes.addressof(code))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError as error:
        log.info("workers: UDP queries spread by the kernel's hash ({e})", e=error.strerror)
        return False
    return True


def open_sockets(addresses: list[tuple[str, int]], count: int) -> list[dict[Any, Any]]:
    """Per worker, {(address, port): (UDP socket, TCP socket)}, all with SO_REUSEPORT.

    A port 0 listener gets its number from the first socket; the others bind that number.
    UDP queries are spread over the workers by query ID (L{spread_by_query_id}).
    """
    slots: list[dict[Any, Any]] = [{} for _ in range(count)]
    try:
        for host, port in addresses:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            wanted = port
            for slot in slots:
                pair = []
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    sock = socket.socket(family, kind)
                    pair.append(sock)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    if kind == socket.SOCK_STREAM:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    else:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
                    sock.bind((host, wanted))
                    wanted = sock.getsockname()[1]
                    if kind == socket.SOCK_STREAM:
                        sock.listen(128)
                    sock.setblocking(False)
                slot[(host, wanted)] = tuple(pair)
            if count > 1:
                spread_by_query_id(slots[0][(host, wanted)][0], count)
    except OSError as error:
        for slot in slots:
            for pair in slot.values():
                for sock in pair:
                    sock.close()
        raise ListenError(f"cannot listen on {host}@{port}: {error.strerror}") from None
    return slots


class _ToChild:
    """AMP's transport in the supervisor: writes go to the worker's stdin."""

    def __init__(self, process: Any) -> None:
        self.process = process

    def write(self, data: bytes) -> None:
        self.process.writeToChild(0, data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.process.closeStdin()

    def getPeer(self) -> Any:
        return address.UNIXAddress(None)

    def getHost(self) -> Any:
        return address.UNIXAddress(None)


class WorkerProcess(ProcessProtocol):
    """One running worker, seen from the supervisor."""

    def __init__(self, supervisor: Supervisor, index: int, started: float) -> None:
        self.supervisor = supervisor
        self.index = index
        self.started = started
        self.amp = amp.AMP()
        self.ended: Deferred[None] = Deferred()
        self.metrics: dict[str, float] = {}
        self.pid: int | None = None

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # kept: the transport forgets it at exit
        self.amp.makeConnection(_ToChild(self.transport))

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            self.amp.dataReceived(data)

    def processEnded(self, reason: Failure) -> None:
        self.amp.connectionLost(reason)
        self.supervisor.worker_ended(self, reason)
        self.ended.callback(None)

    def call(self, command: type[amp.Command], **kwargs: Any) -> Deferred[Any]:
        return self.amp.callRemote(command, **kwargs)


class WorkersApi:
    """``workers`` in the supervisor's config namespace."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    @property
    def count(self) -> int:
        return self._supervisor.count

    def pids(self) -> list[int | None]:
        """The PID of each worker slot (None while one is being restarted)."""
        return [w.pid if w is not None else None for w in self._supervisor.workers]

    def run(self, text: str) -> Deferred[list[str]]:
        """Run config C{text} in every worker (and in workers started later); fires with
        the errors (empty: all fine)."""
        self._supervisor.journal.append((text, "<workers.run>"))
        return self._supervisor.broadcast(text, "<workers.run>")

    def metrics(self) -> Deferred[dict[str, float]]:
        """Collect the workers' counters now; fires with the supervisor's metrics."""
        return self._supervisor.collect().addCallback(
            lambda _: dict(self._supervisor.engine.metrics)
        )

    @property
    def restarts(self) -> int:
        return self._supervisor.restarts

    def __repr__(self) -> str:
        return f"workers(count={self.count}, pids={self.pids()})"


class Supervisor(Service):
    """Spawns, watches, restarts and stops the workers; relays metrics and config."""

    def __init__(self, engine: Any, count: int, config: str | None, verbose: bool,
                 cache_uri: str | None) -> None:
        self.engine = engine
        self.reactor = engine.reactor
        self.count = count
        self.config = config
        self.verbose = verbose
        self.cache_uri = cache_uri
        self.workers: list[WorkerProcess | None] = [None] * count
        self.slots: list[dict[Any, Any]] = []
        self.restarts = 0
        self.stopping = False
        #: config relayed to the workers since start, replayed to each replacement worker
        self.journal: list[tuple[str, str]] = []
        self._delays = [0.0] * count
        self._metrics_loop = LoopingCall(self.collect)
        self._metrics_loop.clock = self.reactor
        engine.namespace["workers"] = WorkersApi(self)
        engine.namespace["worker"] = WorkerInfo(None, count)

    # -- start ------------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        # Bound before twistd drops privileges, like the single-process engine does.
        self.slots = open_sockets(self.engine.net.addresses, self.count)
        super().privilegedStartService()

    def startService(self) -> None:
        if not self.slots:
            self.slots = open_sockets(self.engine.net.addresses, self.count)
        super().startService()
        self._relay_config()
        for index in range(self.count):
            self.spawn(index)
        self._metrics_loop.start(METRICS_INTERVAL, now=False)
        listeners = ", ".join(f"{host}@{port}" for host, port in self.slots[0])
        log.info("supervising {n} workers on {listeners}", n=self.count, listeners=listeners)

    def _relay_config(self) -> None:
        """From now on, config the supervisor applies is applied by every worker too."""

        def relay(source: str, filename: str) -> None:
            # only config that applied cleanly here is relayed (and replayed to new workers)
            self.journal.append((source, filename))
            self.broadcast(source, filename)

        self.engine.on_config.append(relay)

    def argv(self, index: int) -> tuple[list[str], dict[int, Any]]:
        args = [sys.executable, "-m", "kresolver.server.workers",
                "--id", str(index), "--count", str(self.count)]
        if self.config:
            args += ["--config", self.config]
        if self.verbose:
            args.append("--verbose")
        if self.cache_uri:
            args += ["--cache", self.cache_uri]
        fds: dict[int, Any] = {0: "w", 1: "r", 2: 2}
        child_fd = 3
        for (host, port), (udp, tcp) in self.slots[index].items():
            fds[child_fd], fds[child_fd + 1] = udp.fileno(), tcp.fileno()
            args += ["--listen", f"{host}@{port}={child_fd},{child_fd + 1}"]
            child_fd += 2
        return args, fds

    def spawn(self, index: int) -> None:
        if self.stopping:
            return
        args, fds = self.argv(index)
        env = dict(os.environ)
        top = str(Path(__file__).resolve().parent.parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (top, env.get("PYTHONPATH", "")) if p
        )
        worker = WorkerProcess(self, index, self.reactor.seconds())
        self.workers[index] = worker
        self.reactor.spawnProcess(worker, sys.executable, args, env=env, childFDs=fds)
        # A replacement worker read only the config file: give it the live changes too,
        # in order (AMP keeps the order; the worker reads them once its config ran).
        for source, filename in self.journal:
            worker.call(RunConfig, text=source, filename=filename).addErrback(
                lambda failure: log.warn("replaying config to a worker failed: {e}",
                                         e=failure.getErrorMessage()))
        log.info("worker {index} started (pid {pid})", index=index, pid=worker.pid)

    # -- worker deaths --------------------------------------------------------------------------

    def worker_ended(self, worker: WorkerProcess, reason: Failure) -> None:
        if self.workers[worker.index] is worker:
            self.workers[worker.index] = None
        if self.stopping:
            return
        self.restarts += 1
        metrics = self.engine.metrics
        metrics["workers.restarts"] = metrics.get("workers.restarts", 0) + 1
        lived = self.reactor.seconds() - worker.started
        delay = self._delays[worker.index]
        delay = 0.1 if lived >= STABLE_AFTER or not delay else min(delay * 2, MAX_RESTART_DELAY)
        self._delays[worker.index] = delay
        log.warn(
            "worker {index} (pid {pid}) ended ({why}); restarting in {delay}s",
            index=worker.index, pid=worker.pid, why=reason.getErrorMessage(), delay=delay,
        )
        self.reactor.callLater(delay, self.spawn, worker.index)

    # -- relaying ---------------------------------------------------------------------------------

    def live(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w is not None]

    def broadcast(self, text: str, filename: str) -> Deferred[list[str]]:
        """RunConfig in every live worker; fires with their error messages."""
        calls = [w.call(RunConfig, text=text, filename=filename) for w in self.live()]

        def errors(results: list[tuple[bool, Any]]) -> list[str]:
            found = []
            for ok, result in results:
                if not ok:
                    found.append(result.getErrorMessage())
                elif not result["ok"]:
                    found.append(result["error"])
            for error in found:
                log.warn("a worker refused relayed config: {error}", error=error)
            return found

        return DeferredList(calls, consumeErrors=True).addCallback(errors)

    def collect(self) -> Deferred[None]:
        """Fold each worker's counters into the supervisor's metrics (by difference, so
        the counts of a worker that died stay in the totals)."""
        metrics = self.engine.metrics

        def fold(result: dict[str, str], worker: WorkerProcess) -> None:
            fresh = json.loads(result["metrics"])
            for key, value in fresh.items():
                metrics[key] = metrics.get(key, 0) + value - worker.metrics.get(key, 0)
            worker.metrics = fresh

        calls = [
            w.call(GetMetrics).addCallback(fold, w) for w in self.live()
        ]
        return DeferredList(calls, consumeErrors=True).addCallback(lambda _: None)

    # -- stop ---------------------------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.stopping = True
        if self._metrics_loop.running:
            self._metrics_loop.stop()
        waits = []
        for worker in self.live():
            waits.append(worker.ended)
            try:
                worker.transport.signalProcess("TERM")
            except Exception:  # already gone
                pass
        timer = self.reactor.callLater(STOP_TIMEOUT, self._kill_stragglers)

        def done(_: Any) -> Any:
            if timer.active():
                timer.cancel()
            for slot in self.slots:
                for pair in slot.values():
                    for sock in pair:
                        sock.close()
            stopped = self.engine.stopService()
            return stopped if isinstance(stopped, Deferred) else succeed(None)

        return DeferredList(waits).addCallback(done).addCallback(lambda _: None)

    def _kill_stragglers(self) -> None:
        for worker in self.live():
            log.warn("worker {index} did not stop; killing it", index=worker.index)
            try:
                worker.transport.signalProcess("KILL")
            except Exception:
                pass


def supervisor_service(options: Any, engine: Any, count: int) -> Any:
    """The service tree of ``--workers N``: a L{Supervisor} under the resolver service,
    with the engine itself not started in this process (its sockets go to the workers)."""
    from kresolver.tap import ResolverService

    if options["lab"]:
        raise ValueError("--lab serves its hierarchy in one process; it cannot use --workers")
    cache_uri = None
    if engine.cache.storage == "memory://" and count > 1:
        try:
            os.makedirs(DEFAULT_CACHE_DIR, exist_ok=True)
        except OSError as error:
            raise ValueError(
                f"workers share an LMDB cache in {DEFAULT_CACHE_DIR}, which cannot be made "
                f"({error.strerror}); open one elsewhere in the config: "
                "cache.open(100 * MB, 'lmdb:///some/dir')"
            ) from None
        cache_uri = f"lmdb://{DEFAULT_CACHE_DIR}"
    service = ResolverService(engine)
    service.removeService(engine)
    supervisor = Supervisor(engine, count, options["config"], bool(options["verbose"]),
                            cache_uri)
    supervisor.setServiceParent(service)
    return service


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when workers stop
    sys.exit(worker_main(sys.argv[1:]))
