"""RFC 5011 tracking of trust-anchor key rollovers (kresd's ``ta_update`` module).

For every anchor that came from a writable file (``trust_anchors.add_file(path)`` without
``readonly=True``) the zone's DNSKEY set is fetched and validated with the anchors trusted
now, at the RFC 5011 active-refresh interval.  A new secure entry point key becomes trusted
once it has been seen for the hold-down time (30 days); a key that shows up revoked and
signs the set itself is no longer trusted; a trusted key that is merely missing stays
trusted.  The file is rewritten atomically (a new file, then ``rename``), with the pending
keys as comments so the hold-down survives a restart.  Read-only anchors, the built-in
root key among them, are never written.

    modules.load('ta_update')
    ta_update.hold_down_time = 30 * day
    ta_update.refresh('.')        -- now, instead of waiting for the timer
"""

from __future__ import annotations

import datetime
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.dnssec
import dns.name
import dns.rdata
import dns.rdatatype
import dns.rrset
from twisted.internet.defer import Deferred, succeed

from kresolver.cache.cache import Security
from kresolver.logging import KLogger as Logger
from kresolver.module import Module
from kresolver.resolve import dnssec
from kresolver.resolve.validate import validator_of

log = Logger()

_T = dns.rdatatype
DAY = 86400
DEFAULT_HOLD_DOWN = 30 * DAY
#: RFC 5011 2.3: the active refresh interval lies within these bounds
MIN_REFRESH = 3600
MAX_REFRESH = 15 * DAY
_PENDING = "; pending "


@dataclass
class Tracked:
    """RFC 5011 state of one zone: keys trusted now, and keys waiting out the hold-down."""

    zone: dns.name.Name
    trusted: list[dns.rdata.Rdata] = field(default_factory=list)
    #: key -> when it was first seen (wall-clock seconds)
    pending: dict[dns.rdata.Rdata, float] = field(default_factory=dict)


def _sep(key: dns.rdata.Rdata) -> bool:
    flags = dns.dnssec.Flag
    return bool(key.flags & flags.SEP and key.flags & flags.ZONE)


def _unrevoked(key: dns.rdata.Rdata) -> dns.rdata.Rdata:
    return key.replace(flags=key.flags & ~dns.dnssec.Flag.REVOKE)


def step(
    state: Tracked,
    dnskeys: dns.rrset.RRset,
    rrsigs: dns.rrset.RRset | None,
    now: float,
    hold_down: float = DEFAULT_HOLD_DOWN,
) -> bool:
    """Apply one validated DNSKEY set to C{state} (RFC 5011 4); return whether it changed.

    C{dnskeys} must already be validated with C{state.trusted}.
    """
    changed = False
    revoke = dns.dnssec.Flag.REVOKE
    seen: set[dns.rdata.Rdata] = set()
    for key in dnskeys:
        if not _sep(key):
            continue
        if key.flags & revoke:
            original = _unrevoked(key)
            # RFC 5011 2.1: a revocation counts only if the revoked key signed the set.
            self_signed = dnssec.verify_rrset(dnskeys, rrsigs, [key], state.zone, now).secure
            if self_signed and original in state.trusted and len(state.trusted) > 1:
                state.trusted.remove(original)
                changed = True
                log.info(
                    "ta_update: {zone} key {tag} revoked",
                    zone=state.zone,
                    tag=dns.dnssec.key_id(original),
                )
            if self_signed and state.pending.pop(original, None) is not None:
                changed = True
            continue
        seen.add(key)
        if key in state.trusted:
            continue
        first = state.pending.get(key)
        if first is None:
            state.pending[key] = now
            changed = True
        elif now - first >= hold_down:
            del state.pending[key]
            state.trusted.append(key)
            changed = True
            log.info(
                "ta_update: {zone} key {tag} trusted after its hold-down",
                zone=state.zone,
                tag=dns.dnssec.key_id(key),
            )
    for key in [k for k in state.pending if k not in seen]:
        del state.pending[key]  # RFC 5011 4: AddPend -> Start when the key goes away
        changed = True
    return changed


def refresh_interval(dnskeys: dns.rrset.RRset, rrsigs: dns.rrset.RRset | None, now: float) -> float:
    """RFC 5011 2.3: max(1 hour, min(15 days, TTL/2, time to signature expiry/2))."""
    candidates = [MAX_REFRESH, dnskeys.ttl / 2]
    if rrsigs:
        candidates.append(max(0.0, max(s.expiration for s in rrsigs) - now) / 2)
    return max(MIN_REFRESH, min(candidates))


def write_state(path: Path, state: Tracked, ttl: int = 3600) -> None:
    """Write the trusted keys (and pending ones, as comments) to C{path} atomically."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [f"; RFC 5011 state of {state.zone} written by kresolver ta_update at {stamp}"]
    lines += [f"{state.zone} {ttl} IN DNSKEY {key.to_text()}" for key in state.trusted]
    lines += [
        f"{_PENDING}{int(first)} {state.zone} {ttl} IN DNSKEY {key.to_text()}"
        for key, first in state.pending.items()
    ]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_pending(path: Path, zone: dns.name.Name) -> dict[dns.rdata.Rdata, float]:
    """The pending keys a previous L{write_state} left in C{path} (others are ignored)."""
    out: dict[dns.rdata.Rdata, float] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return out
    for line in text.splitlines():
        if not line.startswith(_PENDING):
            continue
        try:
            first, owner, _ttl, _cls, rdtype, rdata = line[len(_PENDING) :].split(None, 5)
            if dns.name.from_text(owner) != zone or rdtype != "DNSKEY":
                continue
            out[dns.rdata.from_text("IN", "DNSKEY", rdata)] = float(first)
        except ValueError:
            log.warn("ta_update: {path}: ignoring a bad pending line", path=path)
    return out


class TaUpdateAPI:
    """What the config sees as ``ta_update``."""

    def __init__(self, module: TaUpdate) -> None:
        self._m = module

    @property
    def hold_down_time(self) -> float:
        """Seconds a new key must be seen before it is trusted (RFC 5011: 30 days)."""
        return self._m.hold_down

    @hold_down_time.setter
    def hold_down_time(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise ValueError(f"ta_update.hold_down_time takes seconds >= 0, not {seconds!r}")
        self._m.hold_down = float(seconds)

    def refresh(self, zone: str = ".") -> Deferred[bool]:
        """Fetch and apply C{zone}'s DNSKEY set now; fires with whether anything changed."""
        return self._m.refresh(dns.name.from_text(zone))

    def pending(self, zone: str = ".") -> list[int]:
        """Key tags waiting out their hold-down for C{zone}."""
        state = self._m.tracked.get(dns.name.from_text(zone))
        return sorted(dns.dnssec.key_id(k) for k in state.pending) if state else []


class TaUpdate(Module):
    """Keeps file-based trust anchors current through key rollovers (RFC 5011)."""

    name = "ta_update"
    description = "RFC 5011 trust anchor tracking, written back to writable anchor files"

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.anchors, self.validator = validator_of(engine)
        self.hold_down: float = DEFAULT_HOLD_DOWN
        self.tracked: dict[dns.name.Name, Tracked] = {}
        self._timers: dict[dns.name.Name, Any] = {}
        self.api = TaUpdateAPI(self)
        self.anchors.listeners.append(self.schedule_all)
        self._running = True
        self._start = engine.reactor.callLater(0, self.schedule_all)

    def managed(self) -> list[Any]:
        return [a for a in self.anchors.anchors.values() if a.path is not None and not a.readonly]

    def schedule_all(self) -> None:
        """Refresh every managed anchor that has no timer yet (soon after it appears)."""
        if not self._running:
            return
        for anchor in self.managed():
            if anchor.name not in self._timers:
                self._schedule(anchor.name, 0)

    def _schedule(self, zone: dns.name.Name, delay: float) -> None:
        timer = self._timers.pop(zone, None)
        if timer is not None and timer.active():
            timer.cancel()

        def fire() -> None:
            self._timers.pop(zone, None)
            self.refresh(zone)

        self._timers[zone] = self.engine.reactor.callLater(delay, fire)

    def refresh(self, zone: dns.name.Name) -> Deferred[bool]:
        anchor = self.anchors.anchors.get(zone)
        if anchor is None or anchor not in self.managed() or not self._running:
            return succeed(False)  # gone, read-only or not from a file: not ours to change
        d = self.validator.resolve(zone, _T.DNSKEY, no_cache=True)
        return d.addCallback(self._apply, zone)

    def _apply(self, sub: Any, zone: dns.name.Name) -> bool:
        anchor = self.anchors.anchors.get(zone)
        if anchor is None or anchor not in self.managed() or not self._running:
            return False
        outcome = sub.vars.get("validate")
        answer = sub.answer.answer
        keys = next((r for r in answer if r.rdtype == _T.DNSKEY and r.name == zone), None)
        sigs = next((r for r in answer if r.rdtype == _T.RRSIG and r.covers == _T.DNSKEY), None)
        if keys is None or outcome is None or outcome.security != Security.SECURE:
            log.warn("ta_update: {zone} DNSKEY did not validate; retrying in an hour", zone=zone)
            self._schedule(zone, MIN_REFRESH)
            return False
        now = self.engine.reactor.seconds()
        state = self.tracked.get(zone)
        if state is None:
            trusted = [k for k in keys if k in anchor.keys]
            if not trusted:  # a DS anchor: the keys it vouches for
                _, trusted = dnssec.match_ds(zone, anchor.ds, keys)
            pending = read_pending(anchor.path, zone) if anchor.path is not None else {}
            state = self.tracked[zone] = Tracked(zone, list(trusted), pending)
        changed = step(state, keys, sigs, now, self.hold_down)
        if changed or anchor.ds or set(anchor.keys) != set(state.trusted):
            anchor.keys = list(state.trusted)
            anchor.ds = []
            if anchor.path is not None and not anchor.readonly:
                write_state(anchor.path, state, keys.ttl)
            self.anchors.changed()
        self._schedule(zone, refresh_interval(keys, sigs, now))
        return changed

    def unload(self) -> None:
        self._running = False
        for timer in [self._start, *self._timers.values()]:
            if timer.active():
                timer.cancel()
        self._timers.clear()
        if self.schedule_all in self.anchors.listeners:
            self.anchors.listeners.remove(self.schedule_all)


__all__ = ["TaUpdate", "Tracked", "read_pending", "refresh_interval", "step", "write_state"]
