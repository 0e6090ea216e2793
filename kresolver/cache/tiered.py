"""A local memory layer in front of a shared, asynchronous storage (Redis, memcached).

The record cache is synchronous: a layer asks ``cache.get_rrset()`` and gets a value, and
the hot path must not wait for a network round trip it does not need.  So reads are
served from local memory only, and the shared storage is consulted in two ways:

- C{fetch(keys)}: the cache layer, on a local miss, asks for the keys a lookup of the
  question would read; the backend's values land in local memory and the layer looks
  again.  The wait is bounded (C{timeout}, 50 ms by default): a slow backend costs at most
  that, then resolution goes upstream as if the backend had nothing.  This is how a
  resolver answers a name another resolver learned, even when the authoritative servers
  are gone.
- writes go to local memory and, fire and forget, to the backend, with a bound on the
  writes in flight: when the backend cannot keep up, writes are dropped (and counted),
  never queued without limit.

When C{rest_after} backend calls in a row fail or time out, the backend is left alone for
C{retry_after} seconds (reads and writes stay local, answers go on from memory and
upstream), then tried again; the clients reconnect by themselves.  Failures are counted
in C{metrics} (``cache.backend_errors``, ``cache.backend_timeouts``,
``cache.backend_dropped``), which the engine points at its own metrics.

Nothing is trusted because it came from the backend: the record cache checks every value
against its key when it reads it (garbage or a truncated value is a miss, and deleted).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    FirstError,
    gatherResults,
    succeed,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from kresolver.interfaces import IStorage
from kresolver.logging import KLogger as Logger

log = Logger()

#: seconds a value fetched from the backend is kept in local memory: the backend does
#: not say how long it has left, and the record cache checks the value's own TTL anyway;
#: this only bounds how long a deletion made by another resolver goes unseen here
FILL_TTL = 30
#: seconds a key the backend did not have is not asked for again
MISS_MEMORY = 1.0
MISS_MEMORY_SIZE = 10000
#: reactor turns a call whose time is up still gets to read its reply
GRACE_PASSES = 2


@implementer(IStorage)
class TieredStorage:
    """L{IStorage} over a local L{IStorage} and a shared L{IAsyncStorage} C{backend}."""

    def __init__(
        self,
        local: Any,
        backend: Any,
        clock: Any,
        *,
        timeout: float = 0.05,
        write_timeout: float = 1.0,
        max_writes: int = 1000,
        retry_after: float = 1.0,
        rest_after: int = 5,
        metrics: dict[str, int] | None = None,
    ) -> None:
        self.local = local
        self.backend = backend
        self.clock = clock
        self.uri = backend.uri
        self.timeout = timeout
        self.write_timeout = write_timeout
        self.max_writes = max_writes
        self.retry_after = retry_after
        self.rest_after = rest_after
        self.failures_in_a_row = 0
        self.metrics: dict[str, int] = metrics if metrics is not None else {}
        self.writes_in_flight = 0
        self._down_until = 0.0
        self._missed: dict[bytes, float] = {}
        self._calls: set[Deferred[Any]] = set()  # backend calls under way, for close()
        #: key being fetched -> the other queries waiting for that fetch
        self._waiters: dict[bytes, list[Deferred[Any]]] = {}
        self._closed = False

    # -- IStorage: local first ------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        return self.local.get(key)

    def set(self, key: bytes, value: bytes, ttl: float) -> None:
        self.local.set(key, value, ttl)
        self._missed.pop(key, None)
        self._write(lambda: self.backend.set(key, value, ttl))

    def delete(self, prefix: bytes) -> int:
        removed = self.local.delete(prefix)
        self._missed.clear()
        self._write(lambda: self.backend.delete(prefix))
        return removed

    def clear(self) -> None:
        self.local.clear()
        self._missed.clear()
        self._write(self.backend.clear)

    def usage(self) -> dict[str, int]:
        usage = dict(self.local.usage())
        for name in ("backend_errors", "backend_timeouts", "backend_dropped", "backend_hits"):
            usage[name] = self.metrics.get(f"cache.{name}", 0)
        return usage

    @property
    def capacity(self) -> int:
        """The local layer's bound; the backend bounds itself (maxmemory, -m)."""
        return int(self.local.capacity)

    @capacity.setter
    def capacity(self, value: int) -> None:
        self.local.capacity = value

    # -- the shared layer -------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """False while the backend is being left alone after a failure."""
        return self.clock.seconds() >= self._down_until

    def fetch(self, keys: Iterable[bytes]) -> Deferred[int] | None:
        """Bring C{keys} the local layer lacks from the backend; None if there is nothing
        to wait for (all local, recently asked, or the backend is resting).

        A key already being fetched for another query is not asked again: this query
        waits for that answer too (a popular name after a restart is one round trip).
        The Deferred fires with how many keys this call brought, never fails, and fires
        within C{timeout} seconds (and a reactor turn or two).
        """
        if not self.available:
            return None
        now = self.clock.seconds()
        missed = self._missed
        wanted: list[bytes] = []
        waits: list[Deferred[Any]] = []
        for key in keys:
            if self.local.get(key) is not None:
                continue
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiting: Deferred[Any] = Deferred()
                waiters.append(waiting)
                waits.append(waiting)
                continue
            asked = missed.get(key)
            if asked is not None and now - asked < MISS_MEMORY:
                continue
            wanted.append(key)
        if wanted:
            asking = self._ask(wanted, now)
            if asking is not None:
                waits.insert(0, asking)
        if not waits:
            return None
        if len(waits) == 1:
            return waits[0]
        return gatherResults(waits).addCallback(lambda counts: counts[0])

    def _ask(self, wanted: list[bytes], now: float) -> Deferred[int] | None:
        missed = self._missed
        if len(missed) > MISS_MEMORY_SIZE:
            missed.clear()
        for key in wanted:
            missed[key] = now
        try:
            asking = self.backend.get_many(wanted)
        except Exception:
            self._failed(Failure(), "fetch")
            return None
        for key in wanted:
            self._waiters[key] = []
        self._track(asking)
        self._bound(asking, self.timeout)
        asking.addCallbacks(self._filled, self._fetch_failed)
        return asking.addBoth(self._wake, wanted)

    def _wake(self, count: int, keys: list[bytes]) -> int:
        """The answer for C{keys} is in: the queries that waited for it go on."""
        for key in keys:
            for waiting in self._waiters.pop(key, ()):
                waiting.callback(0)
        return count

    def _filled(self, found: dict[bytes, bytes]) -> int:
        self.failures_in_a_row = 0
        count = 0
        for key, value in found.items():
            if isinstance(value, bytes) and value:
                self.local.set(key, value, FILL_TTL)
                self._missed.pop(key, None)
                count += 1
        self._count("cache.backend_hits", count)
        return count

    def _fetch_failed(self, failure: Failure) -> int:
        self._failed(failure, "fetch")
        return 0

    def _write(self, call: Any) -> None:
        if not self.available:
            self._count("cache.backend_dropped")
            return
        if self.writes_in_flight >= self.max_writes:
            self._count("cache.backend_dropped")
            return
        try:
            writing = call()
        except Exception:
            self._failed(Failure(), "write")
            return
        self.writes_in_flight += 1
        self._track(writing)
        self._bound(writing, self.write_timeout)
        writing.addCallbacks(self._succeeded, self._failed, errbackArgs=("write",))
        writing.addBoth(self._written)

    def _succeeded(self, _: Any) -> None:
        self.failures_in_a_row = 0

    def _written(self, _: Any) -> None:
        self.writes_in_flight -= 1

    def _failed(self, failure: Failure, what: str) -> None:
        if self._closed:
            return
        if failure.check(FirstError):  # one server of several: its own failure counts
            failure = failure.value.subFailure
        if failure.check(CancelledError):
            self._count("cache.backend_timeouts")
        else:
            self._count("cache.backend_errors")
        self.failures_in_a_row += 1
        if self.failures_in_a_row < self.rest_after:
            # One slow reply under a burst says more about our own busy reactor than
            # about the backend: only a run of failures sends it to rest.
            return
        if self.available:
            log.warn(
                "cache backend {uri} failed ({what}: {error}); using local memory for {s}s",
                uri=self.uri,
                what=what,
                error=failure.getErrorMessage() or failure.type.__name__,
                s=self.retry_after,
            )
        self._down_until = self.clock.seconds() + self.retry_after

    def _bound(self, call: Deferred[Any], seconds: float) -> None:
        """Cancel C{call} if it has no result C{seconds} after it was sent.

        The clock starts at the next reactor turn, when the request actually goes out:
        in a burst, the time this turn still spends answering other queries is ours, not
        the backend's.  When the time is up the reply may already wait in a socket the
        reactor has not read (it runs its timers before its I/O, and a saturated reactor
        takes long turns), so the call gets L{GRACE_PASSES} more passes of I/O before it
        is given up.
        """
        def arm() -> None:
            timers.append(self.clock.callLater(seconds, expire))

        def expire(passes: int = GRACE_PASSES) -> None:
            if passes:
                timers.append(self.clock.callLater(0, expire, passes - 1))
            elif not call.called:
                call.cancel()

        timers = [self.clock.callLater(0, arm)]

        def disarm(result: Any) -> Any:
            for timer in timers:
                if timer.active():
                    timer.cancel()
            return result

        call.addBoth(disarm)

    def _track(self, call: Deferred[Any]) -> None:
        self._calls.add(call)

        def done(result: Any) -> Any:
            self._calls.discard(call)
            return result

        call.addBoth(done)

    def _count(self, name: str, n: int = 1) -> None:
        if n:
            self.metrics[name] = self.metrics.get(name, 0) + n

    def close(self) -> Deferred[Any]:
        """Abandon the calls under way and disconnect from the backend."""
        self._closed = True
        calls, self._calls = self._calls, set()
        for call in calls:
            if not call.called:
                call.cancel()
        try:
            return self.backend.close()
        except Exception:
            return succeed(None)
