"""The stats module: kresd's metrics as a key-value store, plus samples of what is asked.

The counters themselves live in C{engine.metrics} and are counted by the transports (the
fast path included) whether or not this module is loaded, so loading it costs the cache
hit path nothing.  What this module adds is the config API (``stats.list()``...), the
sample of frequent questions and the list of expiring answers, both taken on the full path
or reported by the answer cache.
"""

from __future__ import annotations

import random
from typing import Any

import dns.name
import dns.rdatatype

from kresolver.module import Module
from kresolver.resolve.request import Request
from kresolver.wire import KEY_CD, KEY_DO

#: the seed's limits: at most this many frequent questions and expiring records
MAX_ENTRIES = 5000
#: one request in this many is sampled for stats.frequent(), as kresd samples
SAMPLE_EVERY = 4


def describe_key(key: bytes) -> dict[str, Any]:
    """A fast key (question wire + type + class + flags) as name, type and flags."""
    qname = dns.name.from_wire(key, 0)[0]
    end = len(key) - 5
    rdtype = key[end] << 8 | key[end + 1]
    return {
        "name": qname.to_text(),
        "type": dns.rdatatype.to_text(rdtype),
        "dnssec": bool(key[-1] & KEY_DO),
        "cd": bool(key[-1] & KEY_CD),
    }


class Samples:
    """Counts of keys, bounded: when full, the rarest half is forgotten."""

    def __init__(self, limit: int = MAX_ENTRIES) -> None:
        self.limit = limit
        self.counts: dict[Any, int] = {}

    def add(self, key: Any) -> None:
        counts = self.counts
        if key in counts:
            counts[key] += 1
            return
        if len(counts) >= self.limit:
            keep = sorted(counts.items(), key=lambda item: item[1], reverse=True)
            self.counts = counts = dict(keep[: self.limit // 2])
        counts[key] = 1

    def clear(self) -> None:
        self.counts.clear()


class StatsAPI:
    """What the config and the console see as ``stats``."""

    def __init__(self, module: Stats) -> None:
        self._module = module
        self._metrics: dict[str, int] = module.engine.metrics

    def get(self, key: str) -> int | None:
        """The value of metric C{key}, or None if nothing counted it yet."""
        return self._metrics.get(key)

    def set(self, key: str, value: int | float) -> None:
        """Set metric C{key}: modules add their own metrics this way."""
        if not isinstance(key, str) or not key:
            raise ValueError(f"a metric name is a non-empty string, not {key!r}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"metric {key!r} takes a number, not {value!r}")
        self._metrics[key] = value  # type: ignore[assignment]

    def __getitem__(self, key: str) -> int:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: int | float) -> None:
        self.set(key, value)

    def list(self, prefix: str = "") -> dict[str, int]:
        """Every metric whose name starts with C{prefix}, sorted by name."""
        return {k: v for k, v in sorted(self._metrics.items()) if k.startswith(prefix)}

    def upstreams(self) -> dict[str, list[float]]:
        """Recently contacted upstream servers and their RTTs (ms), oldest first."""
        upstream = getattr(self._module.engine, "upstream", None)
        result: dict[str, list[float]] = {}
        for address, rtt in list(getattr(upstream, "recent", ())):
            result.setdefault(address, []).append(round(rtt, 3))
        return result

    def frequent(self) -> list[dict[str, Any]]:
        """The most frequent questions (sub-queries included), most frequent first."""
        items = sorted(self._module.frequent.counts.items(), key=lambda i: i[1], reverse=True)
        return [
            {"name": name, "type": dns.rdatatype.to_text(rdtype), "count": count}
            for (name, rdtype), count in items
        ]

    def clear_frequent(self) -> None:
        self._module.frequent.clear()

    def expiring(self) -> list[dict[str, Any]]:
        """Answers served close to the end of their lifetime, most often first."""
        items = sorted(self._module.expiring.counts.items(), key=lambda i: i[1], reverse=True)
        return [dict(describe_key(key), count=count) for key, count in items]

    def clear_expiring(self) -> None:
        self._module.expiring.clear()

    def __repr__(self) -> str:
        return f"stats({len(self._metrics)} metrics)"


class Stats(Module):
    name = "stats"
    description = "Metrics (answer.*, query.*, ...), frequent questions, expiring answers"

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.frequent = Samples()
        self.expiring = Samples()
        self.api = StatsAPI(self)
        self._random = random.Random()
        engine.answers.on_expiring.append(self.expiring.add)

    def finish(self, req: Request) -> None:
        if self._random.randrange(SAMPLE_EVERY):
            return None
        add = self.frequent.add
        if not req.resolved:  # answered before any query was planned (hints, policy)
            add((req.qname.to_text().lower(), req.qtype))
        for qry in req.resolved:
            add((qry.sname.to_text().lower(), qry.stype))
        return None

    def unload(self) -> None:
        if self.expiring.add in self.engine.answers.on_expiring:
            self.engine.answers.on_expiring.remove(self.expiring.add)
