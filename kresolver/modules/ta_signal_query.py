"""RFC 8145 key tag signalling (kresd's ``ta_signal_query`` module).

Zone operators plan key rollovers by what validators trust.  For each trust anchor this
module resolves ``_ta-XXXX[-YYYY...].<zone>`` type NULL, the key tags of the anchor's keys
in hex, ascending (RFC 8145 5.1): the query itself is the signal, and its answer (usually
NXDOMAIN) is not used.  Sent every C{interval} seconds, the first time one interval
after loading (``ta_signal_query.send()`` signals at once), so that merely loading the
module in a test never sends a query; ``modules.unload('ta_signal_query')`` stops it.
"""

from __future__ import annotations

from typing import Any

import dns.dnssec
import dns.name
import dns.rdatatype
from twisted.internet.defer import Deferred, gatherResults

from kresolver.logging import KLogger as Logger
from kresolver.module import Module
from kresolver.resolve.validate import validator_of

log = Logger()

#: seconds between two signals (kresd signals with every key refresh, about daily)
DEFAULT_INTERVAL = 86400.0


def signal_name(zone: dns.name.Name, tags: list[int]) -> dns.name.Name:
    """``_ta-4f66-9728.<zone>``: RFC 8145 5.1 (four lowercase hex digits per tag, sorted)."""
    if not tags:
        raise ValueError(f"no key tags to signal for {zone}")
    label = "_ta-" + "-".join(f"{tag:04x}" for tag in sorted(set(tags)))
    return dns.name.Name((label.encode("ascii"), *zone.labels))


def anchor_tags(anchor: Any) -> list[int]:
    return sorted({ds.key_tag for ds in anchor.ds} | {dns.dnssec.key_id(k) for k in anchor.keys})


class TaSignalQueryAPI:
    """What the config sees as ``ta_signal_query``."""

    def __init__(self, module: TaSignalQuery) -> None:
        self._m = module

    def send(self) -> Deferred[list[str]]:
        """Signal now; fires with the names asked."""
        return self._m.send()

    @property
    def interval(self) -> float:
        return self._m.interval

    @interval.setter
    def interval(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 60:
            raise ValueError(f"ta_signal_query.interval takes seconds >= 60, not {seconds!r}")
        self._m.interval = float(seconds)


class TaSignalQuery(Module):
    """Tells the anchored zones' operators which keys this resolver trusts."""

    name = "ta_signal_query"
    description = "RFC 8145 key tag signalling: _ta-XXXX queries for each trust anchor"

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.anchors, self.validator = validator_of(engine)
        self.interval = DEFAULT_INTERVAL
        self.api = TaSignalQueryAPI(self)
        self._timer = engine.reactor.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        self._timer = self.engine.reactor.callLater(self.interval, self._tick)
        self.send()

    def send(self) -> Deferred[list[str]]:
        names = [
            signal_name(anchor.name, anchor_tags(anchor))
            for anchor in self.anchors.anchors.values()
            if anchor_tags(anchor)
        ]
        asked = [
            self.validator.resolve(name, dns.rdatatype.NULL).addErrback(
                lambda f: log.failure("ta_signal_query failed", f)
            )
            for name in names
        ]
        return gatherResults(asked).addCallback(lambda _: [n.to_text() for n in names])

    def unload(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


__all__ = ["TaSignalQuery", "anchor_tags", "signal_name"]
