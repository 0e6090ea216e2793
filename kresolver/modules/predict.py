"""The predict module: refresh answers before they expire, and learn periodic questions.

Two jobs, as in kresd.  Prefetch: the answer cache reports answers served in the last
1% of their lifetime (L{kresolver.cache.answers.AnswerCache.on_expiring}); each window the
module resolves those again, reading nothing from the record cache, so popular names never
fall out of the cache.  Prediction: every window it notes the questions asked (from the
stats module's samples); a question seen at regular intervals (every k windows, twice in a
row) is scheduled to be resolved again k windows later, just before it is expected.
``predict.config({'window': 15, 'period': 24})`` sets the window (minutes) and the period
(windows remembered); period 0 only prefetches.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import dns.flags
import dns.message
import dns.name
from twisted.internet.task import LoopingCall

from kresolver.logging import KLogger as Logger
from kresolver.module import Module
from kresolver.modules.stats import describe_key
from kresolver.wire import KEY_AD, KEY_CD, KEY_DO, KEY_EDNS, fast_query

log = Logger()

#: prefetches and predictions resolved per window, at most (they cost upstream queries)
MAX_PER_WINDOW = 1000


def query_for_key(key: bytes) -> bytes:
    """The query wire a fast key stands for: same name, type, class and flags."""
    name, used = dns.name.from_wire(key, 0)
    rdtype = key[used] << 8 | key[used + 1]
    rdclass = key[used + 2] << 8 | key[used + 3]
    flags = key[-1]
    query = dns.message.make_query(
        name, rdtype, rdclass,
        use_edns=0 if flags & KEY_EDNS else False,
        want_dnssec=bool(flags & KEY_DO),
    )
    if flags & KEY_CD:
        query.flags |= dns.flags.CD
    if flags & KEY_AD:
        query.flags |= dns.flags.AD
    return query.to_wire()


class PredictAPI:
    """``predict`` in the config: config() and the module's state for the console."""

    def __init__(self, module: Predict) -> None:
        self._module = module

    def config(self, value: dict[str, Any] | None = None) -> dict[str, int]:
        """Set C{window} (minutes) and/or C{period} (windows); return the settings."""
        if value is not None:
            self._module.configure(value)
        return {"window": self._module.window, "period": self._module.period}

    @property
    def queue(self) -> dict[int, list[dict[str, Any]]]:
        """Scheduled predictions: epoch -> questions."""
        return {
            epoch: [describe_key(key) for key in keys]
            for epoch, keys in self._module.queue.items()
        }

    @property
    def epoch(self) -> int:
        return self._module.epoch

    @property
    def learned(self) -> int:
        return self._module.learned

    def process(self) -> int:
        """Run one window's work now (what the timer does); returns how many were resolved."""
        return self._module.process()


class Predict(Module):
    name = "predict"
    description = "Prefetch expiring answers and predict periodic questions"

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.window = 15
        self.period = 24
        self.epoch = 0
        self.expiring: set[bytes] = set()
        #: the keys asked in each of the last C{period} windows, newest last
        self.history: deque[set[bytes]] = deque(maxlen=self.period)
        self.current: set[bytes] = set()
        self.queue: dict[int, set[bytes]] = {}
        self.learned = 0
        self.api = PredictAPI(self)
        engine.answers.on_expiring.append(self._expiring)
        self._timer = LoopingCall(self.process)
        self._timer.clock = engine.reactor
        self._timer.start(self.window * 60, now=False)
        self._export()

    def configure(self, value: Any) -> None:
        if not isinstance(value, dict) or set(value) - {"window", "period"}:
            raise ValueError(
                f"predict takes {{'window': minutes, 'period': windows}}, not {value!r}"
            )
        window = value.get("window", self.window)
        period = value.get("period", self.period)
        for name, number in (("window", window), ("period", period)):
            if isinstance(number, bool) or not isinstance(number, int) or number < 0:
                raise ValueError(f"predict {name} must be a whole number >= 0, not {number!r}")
        if window == 0:
            raise ValueError("predict window must be at least 1 minute")
        self.window, self.period = window, period
        self.history = deque(self.history, maxlen=max(period, 1))
        if self._timer.running:
            self._timer.stop()
        self._timer.start(self.window * 60, now=False)

    def _expiring(self, key: bytes) -> None:
        if len(self.expiring) < MAX_PER_WINDOW:
            self.expiring.add(key)

    def finish(self, req: Any) -> None:
        """Note the question of every full-path request (prediction learns from these)."""
        if self.period and req.transport != "internal":
            fast = fast_query(req.wire)
            if fast is not None:
                self.current.add(fast.key)

    def process(self) -> int:
        """End the current window: prefetch, learn, resolve what was predicted for now."""
        self.epoch += 1
        todo = set(self.expiring)
        self.expiring.clear()
        if self.period:
            self._learn()
            todo |= self.queue.pop(self.epoch, set())
        resolved = 0
        for key in list(todo)[:MAX_PER_WINDOW]:
            self.refresh(key)
            resolved += 1
        self._export()
        return resolved

    def _learn(self) -> None:
        seen, self.current = self.current, set()
        history = self.history
        for key in seen:
            # windows ago the key was last seen (1 = the previous window)
            ago = [i for i, past in enumerate(reversed(history), 1) if key in past]
            if len(ago) >= 2 and ago[0] > 1 and ago[1] == 2 * ago[0]:
                interval = ago[0]
                self.queue.setdefault(self.epoch + interval, set()).add(key)
                self.learned += 1
        history.append(seen)

    def refresh(self, key: bytes) -> None:
        """Resolve the question of C{key} again, reading no cached data, answering nobody."""
        handler = self.engine.net.handler
        wire = query_for_key(key)
        result = handler.full(wire, None, None, "internal", fast_query(wire), refresh=True)
        if hasattr(result, "addErrback"):
            result.addErrback(lambda f: log.failure("prefetch failed", f))

    def _export(self) -> None:
        metrics = self.engine.metrics
        metrics["predict.epoch"] = self.epoch
        metrics["predict.queue"] = sum(len(keys) for keys in self.queue.values())
        metrics["predict.learned"] = self.learned

    def unload(self) -> None:
        if self._timer.running:
            self._timer.stop()
        if self._expiring in self.engine.answers.on_expiring:
            self.engine.answers.on_expiring.remove(self._expiring)
