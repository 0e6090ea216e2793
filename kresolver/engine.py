"""The engine: one namespace for the config, the modules and their layers, the caches.

Everything an operator can touch lives in C{Engine.namespace}: the config file is Python
evaluated there, and the manhole console and the etcd watcher act on the same dict, so a
setting made in one place is seen in all of them (kresd's Lua sandbox, in Python).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import dns.name
import dns.rdata
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher
from twisted.plugin import getPlugins, pluginPackagePaths

import kresolver.plugins
from kresolver.cache.answers import AnswerCache
from kresolver.interfaces import IModule, IModuleFactory
from kresolver.logging import THRESHOLD
from kresolver.logging import KLogger as Logger
from kresolver.paths import conf_file
from kresolver.resolve.driver import Layers, Resolver
from kresolver.resolve.outgoing import send_outgoing
from kresolver.resolve.request import Flags
from kresolver.resolve.roothints import read_root_hints
from kresolver.resolve.upstream import Upstream

# dnspython picks each (class, type)'s rdata class on first use and remembers it; a record
# of class ANY and type A parsed first makes CH A records generic ones from then on. Loaded
# all at once, what parses a record no longer depends on what traffic came first.
dns.rdata.load_all_types()

log = Logger()

KB = 1024
MB = 1024 * KB
GB = 1024 * MB
sec = 1
second = 1
minute = 60
hour = 3600
day = 86400

#: loaded before the config runs, as kresd loads its core layers (only those installed).
#: cache comes first so that its produce (a cache hit) runs before iterate plans a question;
#: it stashes what the consume layers (iterate, then validate) accepted at the start of the
#: next round, once validation has had its say.
DEFAULT_MODULES = ("refuse_nord", "policy", "cache", "iterate", "validate", "priming")


class ConfigError(Exception):
    """The configuration is wrong; the message says where and why."""


def default_config() -> Path:
    """The embedded default configuration."""
    return conf_file("kresolver.conf")


def todname(name: str | bytes | dns.name.Name) -> bytes:
    """Text name to wire format, as kresd's ``todname('example.com')`` (lowercased)."""
    if isinstance(name, bytes):
        name = name.decode("ascii")
    if isinstance(name, str):
        name = dns.name.from_text(name)
    return name.canonicalize().to_wire()


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """``'a > b'`` -> (a, '>', b): load a after b; ``'a < b'``: before; plain: append."""
    for op in (">", "<"):
        if op in spec:
            name, _, other = spec.partition(op)
            name, other = name.strip(), other.strip()
            if not name or not other:
                raise ValueError(f"bad module spec {spec!r}: use 'a > b' or 'a < b'")
            return name, op, other
    name = spec.strip()
    if not name:
        raise ValueError("empty module name")
    return name, "", None


class Modules:
    """The ``modules`` object of the config: load, unload and list modules in order.

    The order is the layer order: ``modules.load('hints > iterate')`` puts the hints
    layers after those of iterate.  Assigning ``modules = [...]`` (or a dict of
    name -> config) in the config loads each in turn, like kresd's ``modules = {...}``.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._order: list[str] = []
        self._loaded: dict[str, IModule] = {}
        self._known: dict[str, IModuleFactory] | None = None
        #: drop-ins that failed to import at the last scan: {path: "Error: message"}
        self.broken: dict[str, str] = {}

    def available(self, refresh: bool = False) -> dict[str, IModuleFactory]:
        """Every module the plugin drop-ins offer, by name (a broken drop-in is skipped)."""
        if self._known is None or refresh:
            package = kresolver.plugins
            own = str(Path(package.__file__).parent)
            package.__path__[:] = [own, *pluginPackagePaths(package.__name__)]
            known: dict[str, IModuleFactory] = {}
            # twisted.plugin logs a drop-in that fails to import and skips it; under twistd
            # that log is only shown once the service runs, so a config that then fails
            # would never say why its module is missing: keep the reasons for the errors.
            self.broken = {}
            globalLogPublisher.addObserver(self._note_broken)
            try:
                for factory in getPlugins(IModuleFactory, package):
                    if factory.name in known:
                        log.warn("module {name} is offered twice; keeping the first",
                                 name=factory.name)
                        continue
                    known[factory.name] = factory
            finally:
                globalLogPublisher.removeObserver(self._note_broken)
            self._known = known
        return self._known

    def _note_broken(self, event: dict[str, Any]) -> None:
        """Remember which drop-in failed to import, and why (from twisted.plugin's log)."""
        failure = event.get("log_failure") or event.get("failure")  # new or legacy event
        if failure is None:
            return
        error = failure.value
        path = getattr(error, "filename", None) if isinstance(error, SyntaxError) else None
        for frame in failure.frames:
            if path is None and Path(frame[1]).parent.name == "plugins":
                path = frame[1]
        if path is not None:
            self.broken[path] = f"{type(error).__name__}: {error}"

    def why_missing(self, name: str) -> str:
        """'' or a note naming broken drop-ins (the one called C{name}.py first)."""
        if not self.broken:
            return ""
        paths = sorted(self.broken, key=lambda p: (Path(p).stem != name, p))
        return "; broken plugin drop-ins: " + "; ".join(
            f"{path}: {self.broken[path]}" for path in paths
        )

    def load(self, spec: str, config: Any = None) -> bool:
        """Load a module by name (``'a > b'`` / ``'a < b'`` set its place); configure it."""
        name, op, other = parse_spec(spec)
        if name in self._loaded:
            if config is not None:
                self._loaded[name].configure(config)
            return True
        factory = self.available().get(name) or self.available(refresh=True).get(name)
        if factory is None:
            raise ValueError(
                f"no module named {name!r} (available: {', '.join(sorted(self.available()))})"
                + self.why_missing(name)
            )
        if other is not None and other not in self._loaded:
            raise ValueError(f"cannot load {name!r} {op} {other!r}: {other!r} is not loaded")
        module = factory(self._engine)
        if not IModule.providedBy(module):
            raise TypeError(f"module {name!r} does not provide IModule")
        if config is not None:
            module.configure(config)
        if other is None:
            self._order.append(name)
        else:
            at = self._order.index(other)
            self._order.insert(at + 1 if op == ">" else at, name)
        self._loaded[name] = module
        if module.api is not None:
            self._engine.namespace[name] = module.api
        self._engine.relayer()
        log.info("module {name} loaded", name=name)
        return True

    def unload(self, name: str) -> bool:
        """Unload C{name}; False if it was not loaded."""
        module = self._loaded.pop(name, None)
        if module is None:
            return False
        self._order.remove(name)
        if self._engine.namespace.get(name) is module.api and module.api is not None:
            del self._engine.namespace[name]
        module.unload()
        self._engine.relayer()
        return True

    def list(self) -> list[str]:
        """Loaded modules in layer order."""
        return list(self._order)

    def assign(self, value: Any) -> None:
        """``modules = ['a', 'b > c']`` or ``modules = {'a': config, ...}``."""
        if isinstance(value, str):
            value = [value]
        if isinstance(value, dict):
            for spec, config in value.items():
                self.load(spec, config)
        elif isinstance(value, Iterable):
            for spec in value:
                self.load(spec)
        else:
            raise TypeError(f"modules = takes a list or dict of module names, not {value!r}")

    def get(self, name: str) -> IModule | None:
        return self._loaded.get(name)

    def __getitem__(self, name: str) -> IModule:
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:
        return name in self._loaded

    def __iter__(self) -> Iterator[IModule]:
        return (self._loaded[name] for name in self._order)

    def __repr__(self) -> str:
        return f"modules{self._order!r}"


class ConfigScope(MutableMapping[str, Any]):
    """The locals of a config evaluation: the namespace, plus kresd's two conveniences.

    Reading a name that is a module's loads that module (``hints['x'] = ...`` just works,
    as in kresd), and ``modules = [...]`` loads instead of rebinding the name.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._ns = engine.namespace

    def __getitem__(self, key: str) -> Any:
        try:
            return self._ns[key]
        except KeyError:
            modules = self._engine.modules
            if key in modules.available():
                modules.load(key)
                if key in self._ns:
                    return self._ns[key]
            if any(Path(path).stem == key for path in modules.broken):
                raise NameError(
                    f"name {key!r} is not defined{modules.why_missing(key)}"
                ) from None
            raise

    def __setitem__(self, key: str, value: Any) -> None:
        if key == "modules":
            self._engine.modules.assign(value)
        else:
            self._ns[key] = value

    def __delitem__(self, key: str) -> None:
        del self._ns[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ns)

    def __len__(self) -> int:
        return len(self._ns)


class Engine(Service):
    """The resolver's state: namespace, modules, caches, listeners; a twistd service."""

    def __init__(self, reactor: Any) -> None:
        from kresolver.cache import Cache
        from kresolver.cache.storage.memory import MemoryStorage
        from kresolver.server.net import Net
        from kresolver.server.turn import TurnQueue

        self.reactor = reactor
        self.options = Flags()
        self.metrics: dict[str, int] = {}
        #: datagrams held until the reactor has handled this turn's events (server/turn.py)
        self.turn = TurnQueue(reactor)
        self.net = Net(self)
        #: asks authoritative servers; ``net`` maps its settings onto this object
        self.upstream = Upstream(reactor, metrics=self.metrics)
        self.upstream.turn = self.turn
        self.cache = Cache(reactor)
        self.cache.metrics = self.metrics  # shared storages count backend failures here
        self.answers = AnswerCache(MemoryStorage(16 * MB, reactor), reactor)
        self.cache.on_clear.append(self.answers.clear)
        #: where iteration starts: {server name: [addresses]}; ``hints.root()`` replaces it
        self.root_hints: dict[str, list[str]] = read_root_hints()
        self.modules = Modules(self)
        self.layers = Layers()
        self.resolver = Resolver(self.layers, self.send, self.ask)
        self.namespace: dict[str, Any] = {}
        #: called with (source, filename) after config text was applied successfully
        self.on_config: list[Callable[[str, str], None]] = []
        self.namespace.update(
            engine=self,
            net=self.net,
            cache=self.cache,
            modules=self.modules,
            option=self.option,
            log_level=self.log_level,
            verbose=self.verbose,
            todname=todname,
            KB=KB, MB=MB, GB=GB, sec=sec, second=second, minute=minute, hour=hour, day=day,
        )

    def send(self, req: Any, qry: Any) -> Deferred[Any]:
        """The driver's upstream I/O: ask C{qry.outgoing} through L{upstream}."""
        return send_outgoing(self.upstream, req, qry)

    def ask(self, req: Any, qry: Any, waiter: Any) -> None:
        """L{send}'s direct form: C{waiter} is told, with no Deferred in between."""
        self.upstream.ask(qry.outgoing, waiter)

    # -- config API -----------------------------------------------------------------

    def option(self, name: str, value: bool | None = None) -> bool:
        """Get or set a default request flag, as kresd's ``option('NO_MINIMIZE', true)``."""
        if value is not None:
            self.options.set(name, value)
            # modules that keep hooks out of the layers until a flag needs them (policy's
            # tracing hooks) hear of the change: internal requests pass no begin layer
            for module in self.modules:
                heard = getattr(module, "option_changed", None)
                if heard is not None:
                    heard(name.upper(), bool(value))
            self.changed()
        return self.options.get(name)

    def log_level(self, level: str | None = None) -> str:
        """Get or set the log level: debug, info, notice, warning, error, crit."""
        if level is not None:
            THRESHOLD.set(level)
        return THRESHOLD.name

    def verbose(self, on: bool | None = None) -> bool:
        """kresd's ``verbose(true)``: shorthand for ``log_level('debug')``."""
        if on is not None:
            self.log_level("debug" if on else "notice")
        return THRESHOLD.name == "debug"

    # -- modules and layers -------------------------------------------------------------

    def load_defaults(self) -> None:
        """Load the core modules that are installed, before the config runs."""
        available = self.modules.available()
        for name in DEFAULT_MODULES:
            if name in available:
                self.modules.load(name)

    def relayer(self) -> None:
        """Rebuild the per-hook lists after the module list, or a module's hooks, changed
        (policy adds its tracing hooks only once a request is traced)."""
        self.layers.__init__(list(self.modules))
        self.changed()

    def changed(self) -> None:
        """Something that shapes answers changed: stored whole answers may be wrong now."""
        self.answers.clear()

    # -- configuration ----------------------------------------------------------------

    def scope(self) -> ConfigScope:
        return ConfigScope(self)

    def run_config(self, source: str, filename: str = "<config>") -> None:
        """Evaluate config text in the namespace; raise L{ConfigError} naming file:line."""
        try:
            code = compile(source, filename, "exec")
        except SyntaxError as error:
            raise ConfigError(
                f"{error.filename}:{error.lineno}: syntax error: {error.msg}"
            ) from None
        try:
            exec(code, self.namespace, self.scope())
        except Exception as error:
            line = "?"
            for frame in traceback.extract_tb(sys.exc_info()[2]):
                if frame.filename == filename:
                    line = str(frame.lineno)
            raise ConfigError(
                f"{filename}:{line}: {type(error).__name__}: {error}"
            ) from None
        self.applied(source, filename)

    def applied(self, source: str, filename: str) -> None:
        """Config text was applied here (file, console, etcd, web UI): tell the listeners,
        such as the worker supervisor, which applies it in every worker too."""
        for listener in self.on_config:
            listener(source, filename)

    def load_config(self, path: str | Path) -> None:
        path = Path(path)
        try:
            source = path.read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"{path}: cannot read config: {error.strerror}") from None
        self.run_config(source, str(path))

    # -- service --------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        # Bound before twistd drops privileges, so port 53 works for an unprivileged run.
        Service.privilegedStartService(self)
        self.net.start()

    def startService(self) -> None:
        Service.startService(self)
        if not self.net.started:
            self.net.start()

    def stopService(self) -> Deferred[None] | None:
        Service.stopService(self)
        for module in reversed(list(self.modules)):
            try:
                module.unload()
            except Exception:
                log.failure("module {name} failed to unload", name=module.name)
        return self.net.stop()
