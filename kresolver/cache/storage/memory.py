"""Bytes in a dict: the default storage under the record cache.

The resolver reads far more than it writes, so reads are kept to a dict lookup and an
expiry comparison.  Recency is tracked with the CLOCK ("second chance") approximation of
LRU: a read only sets a flag on the entry, and the cost of ordering is paid by eviction,
which walks the entries from the oldest insertion and spares (once) those read since.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from typing import Any

from zope.interface import implementer

from kresolver.interfaces import IStorage

#: what one entry costs beyond its key and value bytes (dict slot, ordering node, entry
#: tuple, expiry float, bytes object headers, expiry-heap item), measured on CPython 3.11
ENTRY_OVERHEAD = 360

# An entry is a (value, expires) tuple: immutable and made of atoms, so the garbage
# collector stops tracking it after its first pass, where a list (or a class) would be
# walked by every full collection, 100,000s of them in a big cache.  The CLOCK bit lives
# apart, in a set of the keys read since the eviction hand last passed them.
_VALUE, _EXPIRES = 0, 1


def check_capacity(capacity: Any) -> int:
    """Return C{capacity} as bytes, or raise ValueError saying what is wrong with it."""
    if isinstance(capacity, bool) or not isinstance(capacity, int | float):
        raise ValueError(f"cache size must be a number of bytes, not {capacity!r}")
    if capacity != capacity or capacity in (float("inf"), float("-inf")):
        raise ValueError(f"cache size must be a finite number of bytes, not {capacity!r}")
    if capacity < 0:
        raise ValueError(f"cache size must not be negative, got {capacity!r}")
    return int(capacity)


@implementer(IStorage)
class MemoryStorage:
    """An in-process L{IStorage} bounded by C{capacity} bytes.

    When full, entries whose TTL ran out go first (found through a heap of expiry
    times), then those not read since the eviction hand last passed them.
    """

    uri = "memory://"

    def __init__(self, capacity: int, clock: Any) -> None:
        self._capacity = check_capacity(capacity)
        self._seconds = clock.seconds
        self._data: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        self._used: set[bytes] = set()
        self._expiries: list[tuple[float, bytes]] = []
        self._bytes = 0
        self.evicted = 0
        self.expired = 0

    def get(self, key: bytes) -> bytes | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry[_EXPIRES] <= self._seconds():
            self._drop(key)
            self.expired += 1
            return None
        self._used.add(key)
        return entry[_VALUE]

    def set(self, key: bytes, value: bytes, ttl: float) -> None:
        if type(key) is not bytes or type(value) is not bytes:
            if not isinstance(key, bytes) or not isinstance(value, bytes):
                raise TypeError("MemoryStorage keys and values are bytes")
        data = self._data
        old = data.get(key)
        if old is not None:
            self._bytes -= len(key) + len(old[_VALUE]) + ENTRY_OVERHEAD
        cost = len(key) + len(value) + ENTRY_OVERHEAD
        if ttl <= 0 or cost > self._capacity:
            # Nothing to keep (or it can never fit): the old value must not outlive it.
            if old is not None:
                del data[key]
                self._used.discard(key)
            return
        expires = self._seconds() + ttl
        # A rewrite counts as a use and keeps the entry's place in the eviction order.
        data[key] = (value, expires)
        if old is not None:
            self._used.add(key)
        self._bytes += cost
        expiries = self._expiries
        heapq.heappush(expiries, (expires, key))
        if len(expiries) > 2 * len(data) + 64:
            self._rebuild_expiries()
        if self._bytes > self._capacity:
            self._evict(self._capacity)

    def delete(self, prefix: bytes) -> int:
        doomed = [key for key in self._data if key.startswith(prefix)]
        for key in doomed:
            self._drop(key)
        return len(doomed)

    def clear(self) -> None:
        self._data.clear()
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
        if self._bytes > self._capacity:
            self._evict(self._capacity)

    def _drop(self, key: bytes) -> None:
        entry = self._data.pop(key)
        self._used.discard(key)
        self._bytes -= len(key) + len(entry[_VALUE]) + ENTRY_OVERHEAD

    def _rebuild_expiries(self) -> None:
        """Forget heap items of overwritten and deleted keys, so the heap stays O(count)."""
        self._expiries = [(entry[_EXPIRES], key) for key, entry in self._data.items()]
        heapq.heapify(self._expiries)

    def _evict(self, target: int) -> None:
        """Bring the stored bytes down to C{target}: expired entries first, then by CLOCK."""
        now = self._seconds()
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            _, key = heapq.heappop(expiries)
            entry = self._data.get(key)
            if entry is not None and entry[_EXPIRES] <= now:
                self._drop(key)
                self.expired += 1
        data, used = self._data, self._used
        while self._bytes > target:
            key = next(iter(data))
            if key in used:
                used.discard(key)
                data.move_to_end(key)
            else:
                self._drop(key)
                self.evicted += 1
