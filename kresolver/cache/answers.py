"""Whole answers, kept as wire data, for the fast path of the transports.

The record cache (L{kresolver.cache.cache.Cache}) holds RRsets and builds answers from
them, which costs dnspython work on every request.  Most of a resolver's traffic is the
same popular questions again, so the transports first look here: the key is sliced from
the client's wire (L{kresolver.wire.fast_query}), the value is the answer as it was sent,
and a hit only patches the ID, the question (to echo the client's case) and
the TTLs, which count down from the moment the answer was stored.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from kresolver.wire import FastQuery, WireError, min_ttl, ttl_offsets

_head = struct.Struct(">dIH")  # stored-at time, lifetime, number of TTL offsets
_u32 = struct.Struct(">I")
_u32_at = _u32.unpack_from
#: by number of TTL offsets: the head and the offsets that follow it, packed at once
_FRAMES: dict[int, struct.Struct] = {}


def _frame(count: int) -> struct.Struct:
    frame = _FRAMES.get(count)
    if frame is None:  # at most one per count an answer can have (a few thousand)
        frame = _FRAMES[count] = struct.Struct(f">dIH{count}H")
    return frame

#: answers are kept no longer than this, whatever their TTLs say, so the fast path
#: never hides a change in the record cache (or of an upstream) for long
MAX_AGE = 300
#: an answer this close to the end of its lifetime counts as expiring
EXPIRING = 2


class AnswerCache:
    """Answers by fast key, over any L{kresolver.interfaces.IStorage}.

    C{enabled} is cleared by modules whose verdicts depend on who asks (views, DAF,
    client-subnet policies): then every query takes the full path through the layers.
    """

    def __init__(self, storage: Any, clock: Any) -> None:
        self.storage = storage
        self.clock = clock
        self.enabled = True
        self.hits = 0
        #: called with the fast key of an answer served in the last 1% of its lifetime
        #: (at least the last EXPIRING seconds): the predict module refreshes those
        self.on_expiring: list[Callable[[bytes], None]] = []

    def lookup(self, data: bytes, fast: FastQuery, limit: int) -> bytes | None:
        """The stored answer to C{data}, patched for it, if it fits in C{limit} bytes."""
        value = self.storage.get(fast.key)
        if value is None:
            return None
        stored, lifetime, count = _head.unpack_from(value)
        start = _head.size + 2 * count
        if len(value) - start > limit:
            return None
        age = int(self.clock.seconds() - stored)
        if self.on_expiring and lifetime - age <= max(EXPIRING, lifetime // 100):
            for callback in self.on_expiring:
                callback(fast.key)
        out = bytearray(value[start:])
        out[0:2] = data[0:2]
        out[12 : fast.qend] = data[12 : fast.qend]
        if age > 0:
            for off in _frame(count).unpack_from(value)[3:]:
                ttl = _u32.unpack_from(out, off)[0]
                _u32.pack_into(out, off, ttl - age if ttl > age else 0)
        self.hits += 1
        return bytes(out)

    def store(
        self, fast: FastQuery, answer: bytes, offsets: list[int] | None = None
    ) -> bool:
        """Keep C{answer} to the query keyed C{fast} for as long as its smallest TTL.

        C{offsets}: where its TTLs lie, if who wrote it knows
        (L{kresolver.resolve.response.render} does); else they are read from it.
        Answers with no TTL to count down (empty, no SOA) are not kept: nothing says how
        long they are true.
        """
        if not self.enabled:
            return False
        if offsets is None:
            try:
                offsets = ttl_offsets(answer)
            except WireError:
                return False
        count = len(offsets)
        # a lone record (the usual answer) is read here: a call costs more than the read
        ttl = _u32_at(answer, offsets[0])[0] if count == 1 else min_ttl(answer, offsets)
        if not ttl or len(answer) > 65535:
            return False
        lifetime = ttl if ttl < MAX_AGE else MAX_AGE
        frame = _FRAMES.get(count) or _frame(count)
        value = frame.pack(self.clock.seconds(), lifetime, count, *offsets) + answer
        self.storage.set(fast.key, value, lifetime)
        return True

    def clear(self) -> None:
        """Forget every answer: the configuration changed, so they may no longer hold."""
        self.storage.clear()
