"""The built-in services of the http module: the dashboard, /stats, /metrics, /feed, /health.

They read the engine's counters directly, and what the ``stats`` module knows (frequent
names, upstream RTTs, module metrics) when it is loaded, so the dashboard is useful with
or without stats.  The page itself is static HTML, CSS and our own small SVG charts
(kresolver/web/static); it gets one snapshot per second from the ``/stats`` stream.
"""

from __future__ import annotations

import html
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kresolver.web import prometheus
from kresolver.web.app import HERE, Endpoint

TEMPLATE = HERE / "templates" / "dashboard.html"
#: names and upstreams a stream snapshot carries (the page shows no more)
TOP = 12


class Builtins:
    """The data behind the built-in endpoints, for one engine."""

    def __init__(self, engine: Any, snippets: Mapping[str, tuple[str, str]],
                 template: Path = TEMPLATE) -> None:
        self.engine = engine
        self.snippets = snippets
        self.template = template
        self.started = engine.reactor.seconds()

    def stats_api(self) -> Any:
        return self.engine.namespace.get("stats")

    # -- data -------------------------------------------------------------------------

    def metrics(self) -> dict[str, Any]:
        """Every metric: the engine's counters and whatever stats adds."""
        merged: dict[str, Any] = dict(self.engine.metrics)
        stats = self.stats_api()
        if stats is not None:
            merged.update(stats.list())
        return merged

    def frequent(self) -> list[dict[str, Any]]:
        stats = self.stats_api()
        if stats is None:
            return []
        names = list(stats.frequent())
        names.sort(key=lambda entry: -int(entry.get("count", 0)))
        return names

    def upstreams(self) -> list[dict[str, Any]]:
        """Per upstream: how often asked recently and its median and last RTT (ms)."""
        stats = self.stats_api()
        if stats is None:
            return []
        rows = []
        for address, rtts in dict(stats.upstreams()).items():
            rtts = list(rtts)
            if not rtts:
                continue
            rows.append({"address": str(address), "count": len(rtts),
                         "median": statistics.median(rtts), "last": rtts[-1]})
        rows.sort(key=lambda row: -row["count"])
        return rows

    def snapshot(self, request: Any = None) -> dict[str, Any]:
        """One tick of the dashboard's stream."""
        return {
            "time": self.engine.reactor.seconds(),
            "metrics": self.metrics(),
            "frequent": self.frequent()[:TOP],
            "upstreams": self.upstreams()[:TOP],
        }

    # -- endpoint handlers ------------------------------------------------------------

    def serve_stats(self, request: Any) -> Any:
        if request.method != b"GET":
            return 405, {"error": "GET only"}
        return self.metrics()

    def serve_metrics(self, request: Any) -> str:
        return prometheus.render(self.metrics())

    def serve_feed(self, request: Any) -> Any:
        return self.frequent()

    def serve_health(self, request: Any) -> Any:
        return {
            "state": "up",
            "uptime": round(self.engine.reactor.seconds() - self.started, 3),
            "modules": self.engine.modules.list(),
            "answers": self.engine.metrics.get("answer.total", 0),
        }

    def serve_page(self, request: Any) -> str:
        return self.page()

    def page(self) -> str:
        """The dashboard with the modules' snippets at its end."""
        parts = []
        for path, (title, body) in list(self.snippets.items()):
            ident = html.escape(path.strip("/").replace("/", "-") or "root", quote=True)
            parts.append(
                f'<section class="card wide snippet" id="snippet-{ident}">'
                f"<h2>{html.escape(title)}</h2>{body}</section>"
            )
        return self.template.read_text(encoding="utf-8").replace(
            "<!--SNIPPETS-->", "\n".join(parts)
        )

    def endpoints(self) -> dict[str, Endpoint]:
        return {
            "/": ("text/html; charset=utf-8", self.serve_page, None),
            "/stats": ("application/json", self.serve_stats, self.snapshot),
            "/metrics": ("text/plain; version=0.0.4; charset=utf-8", self.serve_metrics, None),
            "/feed": ("application/json", self.serve_feed, None),
            "/health": ("application/json", self.serve_health, None),
        }
