"""The engine's metrics in the Prometheus text exposition format (version 0.0.4).

Every metric ``a.b`` becomes ``kresolver_a_b`` (a counter, ``_total`` appended as the
format's convention asks, or a gauge for the names in L{GAUGES}); the answer.*ms latency
buckets are also folded into the cumulative histogram kresd exports as ``latency``, so a
dashboard written for kresd's ``/metrics`` works unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from kresolver.server.handler import BUCKET_NAMES, BUCKETS

PREFIX = "kresolver_"
#: metrics that go up and down; every other metric only counts up
GAUGES = frozenset({"predict.queue", "predict.epoch", "predict.learned", "cache.count",
                    "cache.usage", "daf.rules", "stats.frequent", "workers"})
_BAD = re.compile(r"[^a-zA-Z0-9_:]")


def metric_name(key: str) -> str:
    """``answer.1ms`` -> ``kresolver_answer_1ms``: what Prometheus allows in a name."""
    return PREFIX + _BAD.sub("_", key)


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(int(value))


def latency_histogram(metrics: Mapping[str, float]) -> tuple[list[tuple[str, float]], float, float]:
    """Cumulative (le, count) pairs, the count and an estimated sum in milliseconds.

    The engine keeps counts per bucket only, so the sum takes each answer at its bucket's
    upper bound (the slow ones at the last bound): an upper estimate, as kresd's.
    """
    buckets: list[tuple[str, float]] = []
    running: float = 0
    total_ms: float = 0
    for limit, name in zip(BUCKETS, BUCKET_NAMES, strict=True):
        count = metrics.get(name, 0)
        running += count
        total_ms += count * limit
        buckets.append((str(limit), running))
    slow = metrics.get("answer.slow", 0)
    running += slow
    total_ms += slow * BUCKETS[-1]
    buckets.append(("+Inf", running))
    return buckets, running, total_ms


def render(metrics: Mapping[str, float], gauges: Iterable[str] = GAUGES) -> str:
    """The whole exposition: one family per metric, then the latency histogram."""
    gauges = frozenset(gauges)
    lines: list[str] = []
    for key in sorted(metrics):
        value = metrics[key]
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        name = metric_name(key)
        if key in gauges:
            lines.append(f"# TYPE {name} gauge")
        else:
            if not name.endswith("_total"):
                name += "_total"
            lines.append(f"# TYPE {name} counter")
        lines.append(f"{name} {_number(value)}")
    buckets, count, total_ms = latency_histogram(metrics)
    lines.append("# HELP latency Answer latency in milliseconds (kresd's buckets).")
    lines.append("# TYPE latency histogram")
    lines.extend(f'latency_bucket{{le="{le}"}} {_number(n)}' for le, n in buckets)
    lines.append(f"latency_sum {_number(total_ms)}")
    lines.append(f"latency_count {_number(count)}")
    return "\n".join(lines) + "\n"
