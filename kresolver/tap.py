"""``twistd kresolver``: options, and the service tree they make.

Everything that can go wrong with what the operator gave us (options, config, ports) is
found here, before the reactor runs, and reported as one line with a non-zero exit:
twistd turns a C{SystemExit} with a message into exactly that.
"""

from __future__ import annotations

import gc
import signal
import threading
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.error import CannotListenError
from twisted.python import usage

from kresolver.engine import ConfigError, Engine, default_config
from kresolver.logging import KLogger as Logger
from kresolver.server.net import ListenError, parse_address

log = Logger()
#: net allocations between two collections of the youngest generation (Python's default:
#: 700).  A request leaves no cyclic garbage, so what the collector would find is only what
#: is alive in flight (a few hundred requests of ~50 objects under load): a threshold above
#: that keeps it from walking those again and again for nothing.
GC_THRESHOLD = 50_000


class Options(usage.Options):
    synopsis = "[--config FILE] [--listen ADDR[@PORT]]... [--workers N] [--verbose] [--lab]"
    longdesc = (
        "A caching, DNSSEC-validating, recursive DNS resolver modelled on Knot Resolver. "
        "Without options it runs the embedded default configuration."
    )
    optParameters = [
        ["config", "c", None, "Configuration file (Python syntax); default: the embedded one."],
        ["workers", "w", None, "Worker processes sharing the listening sockets "
         "(default: net.workers in the config, else one process)."],
    ]
    optFlags = [
        ["verbose", "v", "Log at debug level."],
        ["lab", None, "Serve a loopback DNS hierarchy in-process and resolve in it."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, value: str) -> None:
        """Listen on ADDR[@PORT] (repeatable, IPv4 or IPv6); replaces the config's listeners."""
        try:
            self["listen"].append(parse_address(value))
        except ValueError as error:
            raise usage.UsageError(str(error)) from None

    opt_l = opt_listen


class ResolverService(MultiService):
    """The engine, plus anything started beside it (the lab); binds ports at start."""

    def __init__(self, engine: Engine, *companions: Any) -> None:
        super().__init__()
        self.engine = engine
        for companion in companions:
            companion.setServiceParent(self)
        engine.setServiceParent(self)

    def privilegedStartService(self) -> None:
        try:
            MultiService.privilegedStartService(self)
        except ListenError as error:
            raise SystemExit(f"kresolver: {error}") from None

    def startService(self) -> None:
        MultiService.startService(self)
        # What exists by now (modules, classes, the config: ~70,000 objects) lives as long
        # as the process.  Frozen, it is no longer walked by every full collection, and
        # with a larger first generation the collector runs less often: on a cache-miss
        # load its share of the CPU went from ~20% to ~10%, and to nearly nothing once
        # requests stopped leaving cycles behind (tests/test_engine.py checks they don't).
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
        # twistd re-raises a SIGTERM after the clean stop it causes, so the exit status
        # would say "killed"; SIGTERM is how supervisors ask a resolver to stop, and a
        # clean stop must exit 0 (as kresd does).  twistd starts services before the
        # reactor runs and installs its own handlers, hence "when running".
        if threading.current_thread() is threading.main_thread():
            self.engine.reactor.callWhenRunning(signal.signal, signal.SIGTERM, self._terminate)

    def _terminate(self, number: int, frame: Any) -> None:
        log.info("Received SIGTERM, shutting down.")
        reactor = self.engine.reactor
        reactor.callFromThread(reactor.stop)


def build_engine(options: Options, reactor: Any) -> tuple[Engine, list[Any]]:
    """An engine configured from C{options}, and the services to run beside it.

    Raises L{ConfigError} on any config problem.
    """
    engine = Engine(reactor)
    if options["verbose"]:
        engine.log_level("debug")
    engine.load_defaults()
    lab = None
    if options["lab"]:
        from kresolver.testing.demo import start_lab

        lab = start_lab(engine, reactor)
    engine.load_config(options["config"] or default_config())
    if lab is not None:
        lab.configure(engine)
    if options["listen"]:
        engine.net.replace(options["listen"])
    if options["verbose"]:
        engine.log_level("debug")
    return engine, [lab] if lab is not None else []


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    try:
        engine, companions = build_engine(options, reactor)
        workers = options["workers"] or getattr(engine.net, "workers", None)
        if workers is not None:
            try:
                count = int(workers)
            except (TypeError, ValueError):
                raise ValueError(f"--workers takes a number of processes, not {workers!r}") \
                    from None
            if not 1 <= count <= 256:
                raise ValueError(f"--workers takes 1..256, not {workers}")
            if options["workers"] or count > 1:
                from kresolver.server.workers import supervisor_service

                return supervisor_service(options, engine, count)
    except ConfigError as error:
        raise SystemExit(f"kresolver: config error: {error}") from None
    except (ValueError, OSError, CannotListenError) as error:
        raise SystemExit(f"kresolver: {error}") from None
    return ResolverService(engine, *companions)
