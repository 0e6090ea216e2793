"""The Klein application behind every web interface: endpoint table, auth, streams.

kresd's http module serves a table of endpoints, ``path -> {mime, on_serve, on_websocket}``,
that modules are free to extend; this is that table on Klein.  Each interface has its own
table (the main one is ``http.endpoints``); a request is served by the longest registered
path that is a prefix of its own at a ``/`` boundary, so ``/daf`` also serves
``/daf/3/active/false``.

What an ``on_serve(request)`` may return: a dict or list (sent as JSON), str or bytes (sent
with the endpoint's MIME type), ``(status, body)`` with body any of those, None (204), or
a Deferred of any of them.  ``on_stream(request)`` is called once per stream tick and its
value is sent as one Server-Sent Event; returning None ends the stream.  A client asks for
the stream with ``Accept: text/event-stream`` (what EventSource sends).

The admin plane is guarded here, once for every endpoint: an optional bearer token
protects every mutating method (and, with ``protect_all``, every request), bodies are
limited in size, and nothing a client sends is ever evaluated as code.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.web import server
from twisted.web.iweb import IRequest
from twisted.web.static import File

from kresolver.logging import KLogger as Logger

log = Logger()

OnServe = Callable[[Any], Any]
OnStream = Callable[[Any], Any]
Endpoint = tuple[str, OnServe | None, OnStream | None]

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
#: methods that change state and so need the token when one is configured
MUTATING = frozenset({b"POST", b"PUT", b"PATCH", b"DELETE"})
#: default limit of a request body (a DAF rule is a line; nothing needs more)
MAX_BODY = 64 * 1024
TOKEN_COOKIE = b"kresolver_token"
JSON = "application/json"


@dataclass
class Security:
    """Who may do what on one interface.

    Besides the token, two checks keep a browser on the operator's machine from being
    used against the interface: the Host header must be an address, ``localhost`` or one
    of C{hosts} (a page on a rebound name like evil.example -> 127.0.0.1 is refused), and
    a changing request that carries an Origin must come from this interface's own origin
    (a form on another site cannot POST a firewall rule, token or not).
    """

    token: str | None = None
    protect_all: bool = False
    max_body: int = MAX_BODY
    hosts: frozenset[str] = frozenset()

    def host_allowed(self, request: Any) -> bool:
        host = request.getHeader(b"host")
        if host is None:
            return True  # HTTP/1.0 clients; HTTP/1.1 and h2 always send one
        name = _hostname(host.decode("latin-1"))
        if name == "localhost" or name in self.hosts:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    def origin_allowed(self, request: Any) -> bool:
        if request.method not in MUTATING:
            return True
        origin = request.getHeader(b"origin")
        if origin is None:
            return True  # not a browser's cross-site request
        host = request.getHeader(b"host") or b""
        return origin.split(b"://", 1)[-1].rstrip(b"/").lower() == host.lower()

    def allows(self, request: Any) -> bool:
        """Does C{request} carry what its method needs?

        Mutating requests must carry ``Authorization: Bearer <token>``; a cookie is not
        enough for them, so another site cannot make a browser change anything (CSRF).
        With ``protect_all``, reads may show the token in that header or in the cookie
        that ``/?token=...`` sets, so a browser can open the dashboard and its stream.
        """
        if self.token is None:
            return True
        mutating = request.method in MUTATING
        if not mutating and not self.protect_all:
            return True
        if self.matches(bearer(request)):
            return True
        return not mutating and self.matches(request.getCookie(TOKEN_COOKIE))

    def matches(self, given: bytes | str | None) -> bool:
        if given is None or self.token is None:
            return False
        if isinstance(given, str):
            given = given.encode("utf-8", "replace")
        return hmac.compare_digest(given, self.token.encode("utf-8"))


def _hostname(host: str) -> str:
    """``[::1]:8053`` -> ``::1``, ``Example.NET:8053`` -> ``example.net``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def bearer(request: Any) -> bytes | None:
    header = request.getHeader(b"authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(b" ")
    return value.strip() if scheme.lower() == b"bearer" else None


class LimitedRequest(server.Request):
    """A request that stops storing its body past C{max_body} bytes and says so.

    The endpoint is still dispatched (so the client gets a clear 413 rather than a
    reset), but the oversized body never reaches it nor fills memory or disk.
    """

    max_body = MAX_BODY
    too_large = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self.too_large = True
            length = 0
        super().gotLength(length if length is not None else 0)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self.max_body:
            self.too_large = True
        if not self.too_large:
            super().handleContentChunk(data)


def request_factory(max_body: int) -> type[LimitedRequest]:
    """A request class with its own body limit (the Site calls the class itself)."""
    return type("LimitedRequest", (LimitedRequest,), {"max_body": max_body})


def body_text(request: Any) -> str:
    """The request body as text (what REST endpoints read, e.g. a DAF rule)."""
    request.content.seek(0)
    return request.content.read().decode("utf-8", "replace")


def encode(value: Any, mime: str) -> tuple[bytes, str]:
    """What an on_serve returned -> (bytes, content type)."""
    if isinstance(value, bytes):
        return value, mime
    if isinstance(value, str):
        return value.encode("utf-8"), mime if mime != JSON else "text/plain; charset=utf-8"
    return json.dumps(value, default=str).encode("utf-8") + b"\n", JSON


class EventStream:
    """One Server-Sent Events stream: ``on_stream(request)`` once per tick, until it ends.

    The Deferred that L{start} returns fires when the stream ends; Klein cancels it when
    the client goes away, which stops the ticks.
    """

    def __init__(self, request: Any, on_stream: OnStream, clock: Any, interval: float) -> None:
        self.request = request
        self.on_stream = on_stream
        self.loop = LoopingCall(self.tick)
        self.loop.clock = clock
        self.interval = interval
        self.done: Deferred[bytes] = Deferred(lambda _: self.stop())

    def start(self) -> Deferred[bytes]:
        request = self.request
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-accel-buffering", b"no")
        request.write(b"retry: 2000\n\n")
        self.loop.start(self.interval, now=True).addErrback(self.failed)
        return self.done

    def tick(self) -> None:
        value = self.on_stream(self.request)
        if value is None:
            self.stop()
            if not self.done.called:
                self.done.callback(b"")
            return
        data = value if isinstance(value, str) else json.dumps(value, default=str)
        payload = "".join(f"data: {line}\n" for line in data.split("\n"))
        self.request.write(payload.encode("utf-8") + b"\n")

    def failed(self, failure: Any) -> None:
        log.failure("event stream of {path} failed", failure, path=self.request.path)
        if not self.done.called:
            self.done.callback(b"")

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()


class WebApp:
    """One interface's Klein app over an endpoint table (shared, so changes are live)."""

    def __init__(
        self,
        endpoints: Mapping[str, Endpoint],
        security: Security,
        clock: Any,
        interval: float = 1.0,
        static: Path | None = STATIC,
    ) -> None:
        self.endpoints = endpoints
        self.security = security
        self.clock = clock
        self.interval = interval
        self.app = Klein()
        if static is not None:
            self.app.route("/static/", branch=True)(self.static(static))
        self.app.route("/", branch=True)(self.dispatch)

    def resource(self) -> Any:
        return self.app.resource()

    def static(self, directory: Path) -> Callable[[Any], Any]:
        def serve(request: Any) -> Any:
            if not self.security.host_allowed(request):
                return self.error(request, 421, "unknown Host")
            if not self.security.allows(request):
                return self.refuse(request)
            return File(str(directory))

        return serve

    def find(self, path: str) -> tuple[str, Endpoint] | None:
        """The endpoint serving C{path}: exact, else the longest prefix at a '/'."""
        endpoints = self.endpoints
        if path in endpoints:
            return path, endpoints[path]
        probe = path.rstrip("/")
        while probe:
            if probe in endpoints:
                return probe, endpoints[probe]
            probe = probe.rpartition("/")[0]
        return None

    def refuse(self, request: Any) -> bytes:
        request.setResponseCode(401)
        request.setHeader(b"www-authenticate", b'Bearer realm="kresolver"')
        request.setHeader(b"content-type", b"application/json")
        return b'{"error": "this needs the API token (Authorization: Bearer ...)"}\n'

    def error(self, request: Any, status: int, message: str) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", JSON.encode())
        return json.dumps({"error": message}).encode("utf-8") + b"\n"

    def dispatch(self, request: IRequest) -> Any:
        security = self.security
        if not security.host_allowed(request):
            return self.error(request, 421, "unknown Host: add it to http's 'hosts' setting")
        if not security.origin_allowed(request):
            return self.error(request, 403, "cross-origin change refused")
        if (
            security.token is not None
            and request.method == b"GET"
            and request.args.get(b"token")  # type: ignore[attr-defined]
            and security.matches(request.args[b"token"][0])  # type: ignore[attr-defined]
        ):
            # A browser's way in when protect_all is on: trade the token for a cookie.
            request.addCookie(  # type: ignore[attr-defined]
                TOKEN_COOKIE, security.token.encode("utf-8"), path=b"/", httpOnly=True,
                sameSite="strict", secure=request.isSecure(),
            )
            request.redirect(request.path)  # type: ignore[attr-defined]
            return b""
        if not security.allows(request):
            return self.refuse(request)
        if getattr(request, "too_large", False):
            return self.error(request, 413, f"request body over {security.max_body} bytes")
        path = request.path.decode("utf-8", "replace")  # type: ignore[attr-defined]
        found = self.find(path)
        if found is None:
            return self.error(request, 404, f"no endpoint {path}")
        _, (mime, on_serve, on_stream) = found
        accept = request.getHeader(b"accept") or b""
        if on_stream is not None and b"text/event-stream" in accept:
            return EventStream(request, on_stream, self.clock, self.interval).start()
        if on_serve is None:
            return self.error(request, 405, f"{path} is a stream only")
        result = maybeDeferred(on_serve, request)
        result.addCallback(self.respond, request, mime)
        result.addErrback(self.failed, request, path)
        return result

    def respond(self, value: Any, request: Any, mime: str) -> bytes:
        status = 200
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], int):
            status, value = value
        if value is None:
            request.setResponseCode(204 if status == 200 else status)
            return b""
        body, content_type = encode(value, mime)
        request.setResponseCode(status)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return body

    def failed(self, failure: Any, request: Any, path: str) -> bytes:
        if failure.check(CancelledError):
            return b""
        log.failure("endpoint {path} failed", failure, path=path)
        return self.error(request, 500, f"{path} failed: {failure.getErrorMessage()}")
