"""kresd's ``http`` module: HTTPS/2 web services on Klein (dashboard, metrics, module APIs).

``modules = {'http': {'host': '127.0.0.1', 'port': 8053}}`` or ``http.config({...})``:

 - ``host``, ``port``: where to listen; loopback by default, because this is an admin plane
   (binding anything else without a ``token`` is logged as a warning);
 - ``cert``: None (default) makes an ephemeral self-signed certificate valid 90 days and
   renews it 10 days before it expires; ``False`` serves plain HTTP; a path (with ``key``)
   serves the operator's PEM certificate and key.  ALPN offers h2, so HTTPS is HTTP/2;
 - ``token`` or ``token_file``: a bearer token every mutating request must carry;
   ``protect_all``: every request must carry it (browsers: open ``/?token=...`` once);
 - ``hosts``: names (besides addresses and localhost) that browsers may use to reach the
   interface; any other Host is refused, which defeats DNS rebinding;
 - ``max_body`` (bytes, default 64 KiB), ``interval`` (stream tick, seconds, default 1).

For modules: ``http.endpoints[path] = (mime, on_serve, on_stream)``, ``http.snippets[path] =
(title, html)`` (a snippet's script should wait for DOMContentLoaded, when the page's
``kres`` object is ready: ``kres.fetch`` adds the API token, ``kres.onUpdate`` follows
the stream), ``http.interface(addr, port, endpoints)`` for another interface with its own
table.  A loaded module that has a ``publish(http)`` method is asked to add its parts when
http loads (and may call it itself when it loads after http), so load order does not matter.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.web.server import Site

from kresolver.logging import KLogger as Logger
from kresolver.module import Module
from kresolver.web import tls
from kresolver.web.app import MAX_BODY, Endpoint, Security, WebApp, request_factory
from kresolver.web.dashboard import Builtins

log = Logger()

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8053
_KEYS = {"host", "port", "cert", "key", "token", "token_file", "protect_all", "max_body",
         "interval", "hosts"}


@dataclass(frozen=True)
class Settings:
    """One interface's configuration, checked when it is made."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    cert: str | bool | None = None
    key: str | None = None
    token: str | None = None
    protect_all: bool = False
    max_body: int = MAX_BODY
    interval: float = 1.0
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, value: Any, base: Settings | None = None) -> Settings:
        """kresd-style table -> Settings; ValueError says which key is wrong and why."""
        base = base or cls()
        if value is None:
            return base
        if not isinstance(value, dict):
            raise ValueError(f"http takes a dict of settings, not {value!r}")
        unknown = set(value) - _KEYS
        if "geoip" in unknown:
            raise ValueError("http: geoip is not supported")
        if unknown:
            raise ValueError(f"http: unknown setting(s) {', '.join(sorted(map(str, unknown)))}"
                             f" (known: {', '.join(sorted(_KEYS))})")
        changes: dict[str, Any] = {}
        if "host" in value:
            host = value["host"]
            if not isinstance(host, str) or not host:
                raise ValueError(f"http: host must be an address, not {host!r}")
            changes["host"] = "127.0.0.1" if host == "localhost" else host
        if "port" in value:
            port = value["port"]
            if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
                raise ValueError(f"http: port must be 0-65535, not {port!r}")
            changes["port"] = port
        if "cert" in value:
            cert = value["cert"]
            if cert is True:
                cert = None
            if cert is not None and cert is not False and not isinstance(cert, str):
                raise ValueError(f"http: cert must be False, None or a file, not {cert!r}")
            changes["cert"] = cert
        if "key" in value:
            if not isinstance(value["key"], str):
                raise ValueError(f"http: key must be a file name, not {value['key']!r}")
            changes["key"] = value["key"]
        if "token" in value:
            changes["token"] = _check_token(value["token"], "token")
        if "token_file" in value:
            changes["token"] = read_token(value["token_file"])
        if "protect_all" in value:
            if not isinstance(value["protect_all"], bool):
                raise ValueError("http: protect_all is true or false")
            changes["protect_all"] = value["protect_all"]
        if "max_body" in value:
            size = value["max_body"]
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ValueError(f"http: max_body must be a byte count, not {size!r}")
            changes["max_body"] = size
        if "interval" in value:
            interval = value["interval"]
            if isinstance(interval, bool) or not isinstance(interval, int | float) \
                    or interval <= 0:
                raise ValueError(f"http: interval must be positive seconds, not {interval!r}")
            changes["interval"] = float(interval)
        if "hosts" in value:
            hosts = value["hosts"]
            if isinstance(hosts, str) or not all(isinstance(h, str) and h for h in hosts):
                raise ValueError(f"http: hosts is a list of names, not {hosts!r}")
            changes["hosts"] = frozenset(h.lower().rstrip(".") for h in hosts)
        settings = replace(base, **changes)
        if isinstance(settings.cert, str) and not settings.key:
            raise ValueError("http: a cert file needs its key file ('key')")
        if settings.protect_all and settings.token is None:
            raise ValueError("http: protect_all needs a token (or token_file)")
        return settings

    def security(self) -> Security:
        return Security(self.token, self.protect_all, self.max_body, self.hosts)

    def exposed(self) -> bool:
        """Is the interface reachable from other machines?"""
        try:
            return not ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host != "localhost"


def _check_token(token: Any, what: str) -> str | None:
    if token is None:
        return None
    if not isinstance(token, str) or len(token.strip()) < 8 or token != token.strip():
        raise ValueError(f"http: {what} must be a string of at least 8 characters, no spaces"
                         " around it")
    return token


def read_token(path: Any) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, TypeError) as error:
        raise ValueError(f"http: cannot read token_file {path!r}: {error}") from None
    token = _check_token(text, f"token_file {path!r}")
    assert token is not None
    return token


class Renewer:
    """Keeps an ephemeral certificate fresh: a new one C{tls.RENEW_BEFORE} before expiry."""

    def __init__(self, clock: Any, creator: tls.SwappableServerCreator, hosts: list[str]) -> None:
        self.clock = clock
        self.creator = creator
        self.hosts = hosts
        self.call: Any = None
        self.schedule()

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)

    def schedule(self) -> None:
        due = self.creator.pair.not_after - tls.RENEW_BEFORE - self.now()
        self.call = self.clock.callLater(max(due.total_seconds(), 0.0), self.renew)

    def renew(self) -> None:
        self.creator.swap(tls.ephemeral(self.hosts, now=self.now()))
        log.info("http: ephemeral certificate renewed, valid until {when}",
                 when=self.creator.pair.not_after.isoformat())
        self.schedule()

    def stop(self) -> None:
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None


@dataclass
class Interface:
    """One listening web interface: its settings, endpoint table, port and certificate."""

    reactor: Any
    settings: Settings
    endpoints: dict[str, Endpoint]
    port: Any = None
    creator: tls.SwappableServerCreator | None = None
    renewer: Renewer | None = None
    app: WebApp | None = field(default=None, repr=False)

    def start(self) -> None:
        """Listen now; errors (bad cert, port in use) raise here, naming the cause."""
        settings = self.settings
        pair: tls.KeyPair | None = None
        if settings.cert is None:
            now = datetime.datetime.fromtimestamp(self.reactor.seconds(), datetime.UTC)
            pair = tls.ephemeral([settings.host], now=now)
        elif isinstance(settings.cert, str):
            assert settings.key is not None
            pair = tls.load(settings.cert, settings.key)
        self.app = WebApp(self.endpoints, settings.security(), self.reactor, settings.interval)
        site = Site(self.app.resource(), requestFactory=request_factory(settings.max_body))
        site.displayTracebacks = False
        if pair is None:
            self.port = self.reactor.listenTCP(settings.port, site, interface=settings.host)
        else:
            self.creator = tls.SwappableServerCreator(pair)
            self.port = self.reactor.listenSSL(settings.port, site, self.creator,
                                               interface=settings.host)
            if settings.cert is None:
                self.renewer = Renewer(self.reactor, self.creator, [settings.host])
        if settings.exposed() and settings.token is None:
            log.warn("http: listening on {host} without a token: anyone who can reach it can "
                     "change the firewall", host=settings.host)
        log.info("http: listening on {url}", url=self.url)

    @property
    def scheme(self) -> str:
        return "http" if self.settings.cert is False else "https"

    @property
    def address(self) -> tuple[str, int]:
        host = self.port.getHost()
        return host.host, host.port

    @property
    def url(self) -> str:
        host, port = self.address
        if ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{port}"

    def stop(self) -> Deferred[Any]:
        if self.renewer is not None:
            self.renewer.stop()
            self.renewer = None
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return port.stopListening() or succeed(None)


class HttpApi:
    """What the config sees as ``http``."""

    def __init__(self, module: Http) -> None:
        self._module = module
        #: the main interface's endpoint table (built-ins first; modules add theirs)
        self.endpoints: dict[str, Endpoint] = {}
        #: path -> (title, html) shown at the end of the dashboard
        self.snippets: dict[str, tuple[str, str]] = {}

    def config(self, value: Any = None) -> Deferred[Any]:
        """Apply settings (see the module doc); fires when the interface listens again."""
        return self._module.reconfigure(value)

    def interface(self, addr: str, port: int, endpoints: dict[str, Endpoint],
                  **options: Any) -> Interface:
        """Another interface serving only C{endpoints} (main settings, unless overridden)."""
        return self._module.add_interface(addr, port, endpoints, options)

    @property
    def interfaces(self) -> list[Interface]:
        return list(self._module.interfaces)

    @property
    def url(self) -> str | None:
        main = self._module.main
        return main.url if main is not None and main.port is not None else None

    def __repr__(self) -> str:
        return f"http(url={self.url!r}, endpoints={sorted(self.endpoints)!r})"


class Http(Module):
    """Serves the dashboard and module endpoints; starts on the first reactor turn."""

    name = "http"
    description = "HTTPS/2 web services: dashboard, /stats, /metrics, module REST APIs"

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.api = HttpApi(self)
        self.builtins = Builtins(engine, self.api.snippets)
        self.api.endpoints.update(self.builtins.endpoints())
        self.settings = Settings()
        self.main: Interface | None = None
        self.interfaces: list[Interface] = []
        # kresd starts listening at load; a config given with the load comes first.
        self._autostart = engine.reactor.callLater(0, self._start_default)
        for module in list(engine.modules):
            publish = getattr(module, "publish", None)
            if publish is not None:
                publish(self.api)

    def _start_default(self) -> None:
        self._autostart = None
        if self.main is None:
            try:
                self.start_main()
            except Exception:
                log.failure("http: cannot start the web interface")

    def _cancel_autostart(self) -> None:
        if self._autostart is not None and self._autostart.active():
            self._autostart.cancel()
        self._autostart = None

    def start_main(self) -> Interface:
        main = Interface(self.engine.reactor, self.settings, self.api.endpoints)
        main.start()
        self.main = main
        self.interfaces.append(main)
        return main

    def configure(self, value: Any) -> None:
        """``modules = {'http': {...}}``: the settings replace the current ones.

        The first time, the interface listens before the next config line runs, so a
        port in use is a config error; later, it restarts once the old port is closed.
        """
        self.replace(Settings.parse(value, Settings()))

    def reconfigure(self, value: Any) -> Deferred[Any]:
        """``http.config({...})``: changes the given settings, keeps the others."""
        return self.replace(Settings.parse(value, self.settings))

    def replace(self, settings: Settings) -> Deferred[Any]:
        self._cancel_autostart()
        old, self.main = self.main, None
        self.settings = settings
        if old is None:
            self.start_main()
            return succeed(self.api)
        self.interfaces.remove(old)

        def restart(_: Any) -> HttpApi:
            self.start_main()
            return self.api

        return old.stop().addCallback(restart)

    def add_interface(self, addr: str, port: int, endpoints: dict[str, Endpoint],
                      options: dict[str, Any]) -> Interface:
        settings = Settings.parse({**options, "host": addr, "port": port}, self.settings)
        interface = Interface(self.engine.reactor, settings, endpoints)
        interface.start()
        self.interfaces.append(interface)
        return interface

    def unload(self) -> Deferred[Any]:  # type: ignore[override]
        self._cancel_autostart()
        interfaces, self.interfaces, self.main = self.interfaces, [], None
        return DeferredList([interface.stop() for interface in interfaces])
