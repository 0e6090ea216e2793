"""Byte storages under the record cache, chosen by URI as in kresd's ``cache.open()``.

Each scheme maps to an opener; the LMDB, Redis and memcached storages register theirs
in L{OPENERS} when they arrive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kresolver.cache.storage.memory import MemoryStorage
from kresolver.interfaces import IStorage

__all__ = ["OPENERS", "MemoryStorage", "open_storage"]


def _open_memory(rest: str, capacity: int, clock: Any) -> IStorage:
    if rest:
        raise ValueError(f"memory:// takes nothing after the scheme, got 'memory://{rest}'")
    return MemoryStorage(capacity, clock)


def _open_lmdb(rest: str, capacity: int, clock: Any) -> IStorage:
    from kresolver.cache.storage.lmdb import open_lmdb  # the lmdb package only when used

    return open_lmdb(rest, capacity, clock)


def _open_redis(rest: str, capacity: int, clock: Any) -> IStorage:
    from kresolver.cache.storage.redis import open_redis

    return open_redis(rest, capacity, clock)


def _open_sentinel(rest: str, capacity: int, clock: Any) -> IStorage:
    from kresolver.cache.storage.redis import open_sentinel

    return open_sentinel(rest, capacity, clock)


def _open_memcached(rest: str, capacity: int, clock: Any) -> IStorage:
    from kresolver.cache.storage.memcached import open_memcached

    return open_memcached(rest, capacity, clock)


#: scheme -> opener(text after '://', capacity in bytes, clock)
OPENERS: dict[str, Callable[[str, int, Any], IStorage]] = {
    "memory": _open_memory,
    "lmdb": _open_lmdb,
    "redis": _open_redis,
    "redis-sentinel": _open_sentinel,
    "memcached": _open_memcached,
}


def open_storage(uri: str, capacity: int, clock: Any) -> IStorage:
    """Open the storage that C{uri} names, bounded by C{capacity} bytes.

    @raise ValueError: the URI names no storage this build supports, or is malformed.
    """
    supported = ", ".join(f"{scheme}://" for scheme in OPENERS)
    if not isinstance(uri, str):
        raise ValueError(f"cache storage must be a URI string, not {uri!r}")
    scheme, sep, rest = uri.partition("://")
    opener = OPENERS.get(scheme.lower()) if sep else None
    if opener is None:
        raise ValueError(f"unsupported cache storage {uri!r} (supported: {supported})")
    return opener(rest, capacity, clock)
