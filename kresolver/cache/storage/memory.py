"""Bytes in a dict: the default storage under the record cache.

The resolver reads far more than it writes, so reads are kept to a dict lookup and an
expiry comparison.  Recency is tracked with the CLOCK ("second chance") approximation of
LRU: a read only sets a flag on the entry, and the cost of ordering is paid by eviction,
which walks the entries from the oldest insertion and spares (once) those read since.
"""

from __future__ import annotations

import heapq
import struct
from collections import OrderedDict
from typing import Any

from zope.interface import implementer

from kresolver.interfaces import IStorage

#: what one entry costs beyond its key and value bytes (slots in two dicts, ordering
#: node, expiry float, bytes object headers, expiry-heap item), measured on CPython 3.11
ENTRY_OVERHEAD = 360
#: a full storage of at least EVICT_BATCH_MIN bytes evicts down to its capacity less
#: this fraction of it (1/128), so that it evicts once per some dozens of writes rather
#: than on each (what goes, and in which order, is the same); smaller ones evict just
#: what they must
EVICT_SLACK_SHIFT = 7
EVICT_BATCH_MIN = 1024 * 1024

# Nothing stored per entry is a container the garbage collector tracks: values and
# expiry times sit in two dicts of atoms, and the expiry heap holds bytes (the expiry as
# a big-endian double, which sorts as the number does for positive times, then the key).
# Each tracked object made per write would count towards the next collection and be
# walked by it: 100,000s of them in a big cache.  The CLOCK bit lives apart too, in a
# set of the keys read since the eviction hand last passed them.
_STAMP = struct.Struct(">d")
_stamp = _STAMP.pack
_heappush = heapq.heappush


def check_capacity(capacity: Any) -> int:
    """Return C{capacity} as bytes, or raise ValueError saying what is wrong with it."""
    if isinstance(capacity, bool) or not isinstance(capacity, int | float):
        raise ValueError(f"cache size must be a number of bytes, not {capacity!r}")
    if capacity != capacity or capacity in (float("inf"), float("-inf")):
        raise ValueError(f"cache size must be a finite number of bytes, not {capacity!r}")
    if capacity < 0:
        raise ValueError(f"cache size must not be negative, got {capacity!r}")
    return int(capacity)


def _low_mark(capacity: int) -> int:
    """What a full storage of C{capacity} bytes evicts down to."""
    if capacity < EVICT_BATCH_MIN:
        return capacity
    return capacity - (capacity >> EVICT_SLACK_SHIFT)


@implementer(IStorage)
class MemoryStorage:
    """An in-process L{IStorage} bounded by C{capacity} bytes.

    When full, entries whose TTL ran out go first (found through a heap of expiry
    times), then those not read since the eviction hand last passed them.
    """

    uri = "memory://"

    def __init__(self, capacity: int, clock: Any) -> None:
        self._capacity = check_capacity(capacity)
        self._low = _low_mark(self._capacity)
        self._seconds = clock.seconds
        self._data: OrderedDict[bytes, bytes] = OrderedDict()
        self._expires: dict[bytes, float] = {}
        self._used: set[bytes] = set()
        self._expiries: list[bytes] = []  # heap of stamp + key
        self._bytes = 0
        self.evicted = 0
        self.expired = 0

    def get(self, key: bytes) -> bytes | None:
        value = self._data.get(key)
        if value is None:
            return None
        if self._expires[key] <= self._seconds():
            self._drop(key)
            self.expired += 1
            return None
        self._used.add(key)
        return value

    def __contains__(self, key: bytes) -> bool:
        """Whether C{key} holds a value that has not expired; not a read (the eviction
        hand does not spare the entry for it)."""
        expires = self._expires.get(key)
        return expires is not None and expires > self._seconds()

    def set(self, key: bytes, value: bytes, ttl: float) -> None:
        if type(key) is not bytes or type(value) is not bytes:
            if not isinstance(key, bytes) or not isinstance(value, bytes):
                raise TypeError("MemoryStorage keys and values are bytes")
        data = self._data
        old = data.get(key)
        cost = len(key) + len(value) + ENTRY_OVERHEAD
        if ttl <= 0 or cost > self._capacity:
            # Nothing to keep (or it can never fit): the old value must not outlive it.
            if old is not None:
                self._drop(key)
            return
        now = self._seconds()
        expires = now + ttl
        data[key] = value
        self._expires[key] = expires
        if old is None:
            self._bytes += cost
        else:  # a rewrite counts as a use and keeps the entry's place in the eviction order
            self._bytes += len(value) - len(old)
            self._used.add(key)
        expiries = self._expiries
        _heappush(expiries, _stamp(expires) + key)
        if len(expiries) > 2 * len(data) + 64:
            self._rebuild_expiries()
        if self._bytes > self._capacity:
            self._evict(self._low, now)

    def delete(self, prefix: bytes) -> int:
        doomed = [key for key in self._data if key.startswith(prefix)]
        for key in doomed:
            self._drop(key)
        return len(doomed)

    def clear(self) -> None:
        self._data.clear()
        self._expires.clear()
        self._used.clear()
        self._expiries.clear()
        self._bytes = 0

    def usage(self) -> dict[str, int]:
        return {
            "count": len(self._data),
            "bytes": self._bytes,
            "capacity": self._capacity,
            "evicted": self.evicted,
            "expired": self.expired,
        }

    @property
    def capacity(self) -> int:
        """The bound in bytes; lowering it evicts at once."""
        return self._capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        self._capacity = check_capacity(value)
        self._low = _low_mark(self._capacity)
        if self._bytes > self._capacity:
            self._evict(self._capacity)

    def _drop(self, key: bytes) -> None:
        value = self._data.pop(key)
        del self._expires[key]
        self._used.discard(key)
        self._bytes -= len(key) + len(value) + ENTRY_OVERHEAD

    def _rebuild_expiries(self) -> None:
        """Forget heap items of overwritten and deleted keys, so the heap stays O(count)."""
        pack = _STAMP.pack
        self._expiries = [pack(expires) + key for key, expires in self._expires.items()]
        heapq.heapify(self._expiries)

    def _evict(self, target: int, now: float | None = None) -> None:
        """Bring the stored bytes down to C{target}: expired entries first, then by CLOCK.

        C{now}: the clock's time, if the caller just read it.
        """
        if now is None:
            now = self._seconds()
        expiries, expires = self._expiries, self._expires
        while expiries and _STAMP.unpack_from(expiries[0])[0] <= now:
            key = heapq.heappop(expiries)[_STAMP.size :]
            when = expires.get(key)
            if when is not None and when <= now:
                self._drop(key)
                self.expired += 1
        # The CLOCK hand, with _drop() inline: a full cache evicts on most writes.
        data, used = self._data, self._used
        popitem = data.popitem
        excess = self._bytes - target
        evicted = 0
        while excess > 0:
            key, value = popitem(False)  # the oldest insertion
            if key in used:
                used.discard(key)
                data[key] = value  # spared once: to the end
            else:
                excess -= len(key) + len(value) + ENTRY_OVERHEAD
                del expires[key]
                evicted += 1
        self._bytes = target + excess
        self.evicted += evicted
