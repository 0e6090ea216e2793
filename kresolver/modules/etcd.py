"""The etcd module: a fleet's configuration, watched live in etcd (kresd's ``etcd``).

    modules = {'etcd': {'prefix': '/kresolver', 'peer': 'http://127.0.0.1:2379'}}
    # or: etcd.config({'prefix': ..., 'peer': [...several peers...]})

It reads every key under the prefix once, then watches the prefix and applies each change
as it comes, with the engine's C{run_config()}: etcd is configuration written by the
operators, exactly like the config file, and is evaluated the same way.  Keys:

    <prefix>/cache.size      = 100 * MB            ->  cache.size = (100 * MB)
    <prefix>/cache/size      (the same, kresd's slash form)
    <prefix>/net.listen      = '127.0.0.1@5353'    ->  net.listen('127.0.0.1@5353')
                               (a name that is callable is called with the value)
    <prefix>/policy/<id>     = policy.suffix(policy.DENY, {todname('bad.example.')})
                               a rule: added, replaced when the key changes, and removed
                               when the key is deleted
    <prefix>/config/<id>     any config text, run as it is

A value that does not evaluate (a typo, a bad address) is refused: the change is logged
and counted (``etcd.rejected``) and the last good configuration stays.  When etcd cannot
be reached the resolver keeps what it has, counts the failure (``etcd.errors``), and tries
the next peer with a growing delay; after a reconnection only keys changed meanwhile
(by revision) are applied again.  Under ``--workers`` the supervisor runs this module and
its C{run_config()} relays each change to every worker.

etcd's v3 API is used through its JSON gateway (``POST /v3/kv/range``, ``/v3/watch``, keys
and values in base64), so no gRPC stack is needed; etcd 3.4 serves it under ``/v3/``.
"""

from __future__ import annotations

import base64
import io
import json
import re
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from kresolver.logging import KLogger as Logger
from kresolver.module import Module

log = Logger()

DEFAULT_PREFIX = "/kresolver"
DEFAULT_PEER = "http://127.0.0.1:2379"
#: seconds before the first retry after a failure, and the most it grows to
RETRY_FIRST = 0.5
RETRY_MAX = 10.0
#: a read of the whole prefix must come back within this many seconds
REQUEST_TIMEOUT = 5.0

_TARGET = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_SNIPPET_DIRS = ("config",)
_RULE_DIRS = ("policy",)


def _b64(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return base64.b64encode(data).decode("ascii")


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with C{prefix} (etcd's range_end)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"


class EtcdSettings:
    def __init__(self, prefix: str = DEFAULT_PREFIX, peers: list[str] | None = None) -> None:
        if not isinstance(prefix, str) or not prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f"etcd prefix must look like '/kresolver', not {prefix!r}")
        self.prefix = prefix
        self.peers = peers or [DEFAULT_PEER]
        for peer in self.peers:
            if not isinstance(peer, str) or not re.match(r"^https?://[^/]+$", peer):
                raise ValueError(f"etcd peer must be 'http://host:port', not {peer!r}")

    @classmethod
    def parse(cls, value: Any) -> EtcdSettings:
        if not isinstance(value, dict) or set(value) - {"prefix", "peer", "peers"}:
            raise ValueError(f"etcd takes {{'prefix': '/kresolver', 'peer': URL}}, not {value!r}")
        peers = value.get("peers", value.get("peer"))
        if isinstance(peers, str):
            peers = [peers]
        return cls(value.get("prefix", DEFAULT_PREFIX), list(peers) if peers else None)


def statement(prefix: str, key: str, value: str | None) -> str | None:
    """The config text that applies C{key} = C{value} (None: deleted), or None when the
    deletion of such a key cannot be undone.

    @raise ValueError: the key names nothing a config can set.
    """
    if not key.startswith(prefix + "/"):
        raise ValueError(f"{key} is not under {prefix}")
    path = key[len(prefix) + 1 :]
    top, _, rest = path.partition("/")
    if top in _RULE_DIRS and rest:
        k = repr(key)
        lines = ["_etcd_rules = globals().get('_etcd_rules') or {}"]
        if value is None:
            lines.append(f"if {k} in _etcd_rules: policy.del_(_etcd_rules.pop({k}))")
        else:
            lines += [
                f"_etcd_new = policy.add({value})",  # evaluated first: a bad rule changes nothing
                f"if {k} in _etcd_rules: policy.del_(_etcd_rules.pop({k}))",
                f"_etcd_rules[{k}] = _etcd_new",
            ]
        return "\n".join(lines) + "\n"
    if top in _SNIPPET_DIRS and rest:
        return value
    if value is None:
        return None
    target = path.replace("/", ".")
    if not _TARGET.match(target):
        raise ValueError(f"etcd key {key} names no config setting")
    return f"__etcd_target__ = {target}\n" + (
        f"if callable(__etcd_target__): {target}({value})\n"
        f"else: {target} = ({value})\n"
    )


class _WatchStream(Protocol):
    """Reads the watch response: a stream of JSON objects, one per event batch."""

    def __init__(self, module: Etcd) -> None:
        self.module = module
        self.buffer = ""
        self.decoder = json.JSONDecoder()
        self.finished: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data.decode("utf-8", "replace")
        while True:
            text = self.buffer.lstrip()
            if not text:
                self.buffer = ""
                return
            try:
                message, end = self.decoder.raw_decode(text)
            except ValueError:
                self.buffer = text
                return
            self.buffer = text[end:]
            self.module.watched(message)

    def connectionLost(self, reason: Any = None) -> None:
        self.finished.callback(None)


class EtcdApi:
    """``etcd`` in the config namespace."""

    def __init__(self, module: Etcd) -> None:
        self._module = module

    def config(self, value: dict[str, Any]) -> None:
        """Watch C{value['prefix']} at C{value['peer']} (replacing the current watch)."""
        self._module.configure(value)

    @property
    def prefix(self) -> str:
        return self._module.settings.prefix

    @property
    def revision(self) -> int:
        """The etcd revision the configuration is applied up to."""
        return self._module.revision

    @property
    def connected(self) -> bool:
        return self._module.watching

    def __repr__(self) -> str:
        module = self._module
        return (
            f"etcd(prefix={module.settings.prefix!r}, peers={module.settings.peers}, "
            f"revision={module.revision}, watching={module.watching})"
        )


class Etcd(Module):
    name = "etcd"
    description = "Watch a prefix in etcd and apply its keys as configuration, live"

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.api = EtcdApi(self)
        self.settings = EtcdSettings()
        self.revision = 0
        self.watching = False
        self._configured = False
        self._running = False
        self._peer = 0
        self._delay = RETRY_FIRST
        self._retry: Any = None
        self._stream: _WatchStream | None = None
        self._pending: Deferred[Any] | None = None
        self._pool = HTTPConnectionPool(engine.reactor, persistent=False)
        self._agent = Agent(engine.reactor, pool=self._pool, connectTimeout=REQUEST_TIMEOUT)
        #: what each applied key's value was, to skip replays after a reconnection
        self.applied: dict[str, int] = {}
        engine.reactor.callWhenRunning(self._default)

    # -- lifecycle ------------------------------------------------------------------------------

    def _default(self) -> None:
        if not self._configured:
            self.configure({})

    def configure(self, value: Any) -> None:
        settings = EtcdSettings.parse(value if value is not None else {})
        self._configured = True
        self._stop()
        if settings.prefix != self.settings.prefix:
            self.revision = 0
            self.applied.clear()
        self.settings = settings
        self._running = True
        self._delay = RETRY_FIRST
        self._start()

    def unload(self) -> Deferred[None]:  # type: ignore[override]
        self._running = False
        return self._stop()

    def _stop(self) -> Deferred[None]:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        stream, self._stream = self._stream, None
        self.watching = False
        if stream is not None and stream.transport is not None:
            stream.transport.stopProducing()
            return stream.finished
        return succeed(None)

    # -- reading and watching -----------------------------------------------------------------

    @property
    def peer(self) -> str:
        return self.settings.peers[self._peer % len(self.settings.peers)]

    def _post(self, path: str, body: dict[str, Any]) -> Deferred[Any]:
        producer = FileBodyProducer(io.BytesIO(json.dumps(body).encode()))
        return self._agent.request(
            b"POST", (self.peer + path).encode(),
            Headers({b"Content-Type": [b"application/json"]}), producer,
        )

    def _range_body(self) -> dict[str, Any]:
        prefix = (self.settings.prefix + "/").encode()
        return {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}

    def _start(self) -> None:
        """Read the whole prefix, apply what changed, then watch from the next revision."""
        if not self._running:
            return
        reading = self._post("/v3/kv/range", self._range_body())
        reading.addTimeout(REQUEST_TIMEOUT, self.engine.reactor)
        reading.addCallback(self._range_response)
        reading.addCallback(self._watch)
        reading.addErrback(self._failed)
        self._pending = reading

    def _range_response(self, response: Any) -> Deferred[Any]:
        if response.code != 200:
            raise OSError(f"etcd answered {response.code} to a range read")
        return readBody(response).addCallback(self._range_body_read)

    def _range_body_read(self, body: bytes) -> None:
        result = json.loads(body)
        revision = int(result.get("header", {}).get("revision", 0))
        for kv in sorted(result.get("kvs", []), key=lambda kv: int(kv.get("mod_revision", 0))):
            self._apply_kv(kv, deleted=False)
        self.revision = max(self.revision, revision)

    def _watch(self, _: Any) -> Deferred[Any]:
        self._pending = None
        body = {"create_request": {**self._range_body(), "start_revision": self.revision + 1}}
        watching = self._post("/v3/watch", body)
        self._pending = watching

        def streaming(response: Any) -> Deferred[Any]:
            self._pending = None
            if response.code != 200:
                raise OSError(f"etcd answered {response.code} to a watch")
            stream = self._stream = _WatchStream(self)
            response.deliverBody(stream)
            self.watching = True
            self._delay = RETRY_FIRST
            log.info("etcd: watching {prefix} at {peer} from revision {rev}",
                     prefix=self.settings.prefix, peer=self.peer, rev=self.revision + 1)
            return stream.finished.addCallback(self._stream_ended)

        return watching.addCallback(streaming)

    def _stream_ended(self, _: Any) -> None:
        self.watching = False
        if self._running:
            raise ConnectionError("the watch stream ended")

    def watched(self, message: dict[str, Any]) -> None:
        """One message of the watch stream."""
        result = message.get("result", message)
        if "error" in message:
            log.warn("etcd: watch error {error}", error=message["error"])
            return
        if result.get("compact_revision"):
            # The revisions we missed are gone: read everything again.
            log.warn("etcd: history compacted past revision {rev}; rereading", rev=self.revision)
            self.revision = 0
            if self._stream is not None and self._stream.transport is not None:
                self._stream.transport.stopProducing()
            return
        for event in result.get("events", []):
            self._apply_kv(event.get("kv", {}), deleted=event.get("type") == "DELETE")
        revision = int(result.get("header", {}).get("revision", 0))
        self.revision = max(self.revision, revision)

    def _failed(self, failure: Any) -> None:
        self._pending = None
        self.watching = False
        if not self._running:
            return None
        self._count("etcd.errors")
        log.warn("etcd: {peer} failed ({error}); keeping the current configuration, "
                 "retrying in {delay}s", peer=self.peer, error=failure.getErrorMessage(),
                 delay=round(self._delay, 1))
        self._peer += 1
        self._retry = self.engine.reactor.callLater(self._delay, self._start)
        self._delay = min(self._delay * 2, RETRY_MAX)
        return None

    # -- applying -------------------------------------------------------------------------------

    def _apply_kv(self, kv: dict[str, Any], deleted: bool) -> None:
        key = base64.b64decode(kv.get("key", "")).decode("utf-8", "replace")
        revision = int(kv.get("mod_revision", 0))
        if not deleted and self.applied.get(key) == revision:
            return  # seen before a reconnection
        value = None if deleted else base64.b64decode(kv.get("value", "")).decode(
            "utf-8", "replace"
        )
        try:
            text = statement(self.settings.prefix, key, value)
        except ValueError as error:
            self._reject(key, str(error))
            return
        if deleted:
            self.applied.pop(key, None)
        else:
            self.applied[key] = revision
        if text is None:
            log.warn("etcd: {key} was deleted; its setting stays until changed or restarted",
                     key=key)
            return
        from kresolver.engine import ConfigError

        try:
            self.engine.run_config(text, f"etcd:{key}")
        except ConfigError as error:
            self._reject(key, str(error))
            return
        self._count("etcd.applied")
        log.info("etcd: applied {key}", key=key)

    def _reject(self, key: str, why: str) -> None:
        self._count("etcd.rejected")
        log.warn("etcd: {key} refused, keeping the last good configuration: {why}",
                 key=key, why=why)

    def _count(self, name: str) -> None:
        metrics = self.engine.metrics
        metrics[name] = metrics.get(name, 0) + 1
