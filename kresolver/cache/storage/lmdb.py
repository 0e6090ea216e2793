"""The cache in an LMDB file: shared by every process of the machine, kept across restarts.

``cache.open(100 * MB, 'lmdb:///var/cache/kresolver')`` opens (or makes) the directory and
its ``data.mdb``.  LMDB is multi-process safe: every worker of ``--workers N`` opens the
same directory and reads what the others wrote, with no server in between, and a read is a
B-tree lookup in a memory map (microseconds), so this storage is synchronous like the
memory one.

Three named databases live in the file:

    meta    ``format`` -> FORMAT: tells our files from foreign ones (kresd's cache, say)
    data    key -> expiry time (8 bytes, big-endian double) + value
    expiry  expiry time + key -> empty: the index that finds what expires first

The map size is the size bound.  When a write does not fit, the entries that expire first
go (whatever has expired, then the soonest to expire), which for DNS data is close to what
is least worth keeping; then the write is tried again.

A file LMDB cannot open, or one that is not ours, is set aside: the cache starts empty and
says so in the log, since a resolver that refuses to start because of its cache is worse
than one that starts cold.  Writes are not synced to disk on every commit: a cache may lose
its last seconds in a machine crash, it may not cost a disk flush per answer.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import lmdb
from zope.interface import implementer

from kresolver.cache.storage.memory import check_capacity
from kresolver.interfaces import IStorage
from kresolver.logging import KLogger as Logger

log = Logger()

FORMAT = b"kresolver-cache-1"
#: LMDB needs room for its own pages; smaller bounds are raised to this
MIN_MAP_SIZE = 1024 * 1024
#: how many expired entries a write removes on its way (keeps the file from filling up
#: with the dead, without a sweeper timer in every worker)
SWEEP_PER_WRITE = 8
#: writes between two checks of how full the map is, and the share of the map that may
#: be in use before the soonest-expiring entries go (LMDB needs free pages to delete)
CHECK_EVERY = 32
HIGH_WATER = 0.75
_EXPIRES = struct.Struct(">d")
_FILES = ("data.mdb", "lock.mdb")


@implementer(IStorage)
class LMDBStorage:
    """An L{IStorage} in the LMDB environment at C{path}, bounded by C{capacity} bytes."""

    def __init__(self, path: str | Path, capacity: int, clock: Any) -> None:
        self.path = Path(path)
        self.uri = f"lmdb://{self.path}"
        self._seconds = clock.seconds
        self._capacity = max(check_capacity(capacity), MIN_MAP_SIZE)
        self.evicted = 0
        self.expired = 0
        #: times the file was found unusable and started afresh
        self.recovered = 0
        self._writes = 0
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"cannot use {self.path} for the LMDB cache: {error}") from None
        self._open()

    # -- opening and recovery -------------------------------------------------------------

    def _open(self) -> None:
        try:
            self._open_env()
            if self._foreign():
                raise lmdb.IncompatibleError("no kresolver format marker")
        except lmdb.Error as error:
            self._start_afresh(error)

    def _open_env(self) -> None:
        self._env = lmdb.open(
            str(self.path),
            map_size=self._capacity,
            max_dbs=3,
            sync=False,
            metasync=False,
            readahead=False,
            max_readers=256,
        )
        # The map may be larger than we asked for if another process set it so.
        self._meta = self._env.open_db(b"meta")
        self._data = self._env.open_db(b"data")
        self._index = self._env.open_db(b"expiry")

    def _foreign(self) -> bool:
        """Whether the file holds something other than our cache; marks an empty one ours."""
        with self._env.begin(write=True) as txn:
            marker = txn.get(b"format", db=self._meta)
            if marker == FORMAT:
                return False
            if marker is None and not txn.stat(self._data)["entries"]:
                main = txn.stat(self._env.open_db(None, txn=txn))["entries"]
                if main <= 3:  # only our named databases: a new file
                    txn.put(b"format", FORMAT, db=self._meta)
                    return False
            return True

    def _start_afresh(self, error: BaseException) -> None:
        log.warn(
            "LMDB cache at {path} is unusable ({error}); starting with an empty cache",
            path=str(self.path),
            error=error,
        )
        self.recovered += 1
        self._recreate()

    def _recreate(self) -> None:
        """Replace the files by new empty ones.

        Other processes that have the old file open keep using it until they reopen; that
        only happens when the file was unusable anyway, or on an explicit shrink.
        """
        env = getattr(self, "_env", None)
        if env is not None:
            env.close()
        for name in _FILES:
            try:
                os.unlink(self.path / name)
            except FileNotFoundError:
                pass
        self._open_env()
        if self._foreign():  # pragma: no cover - a file we just made is always ours
            raise ValueError(f"cannot make a fresh LMDB cache in {self.path}")

    def close(self) -> None:
        self._env.close()

    # -- IStorage -------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        try:
            with self._env.begin(db=self._data, buffers=False) as txn:
                stored = txn.get(key)
        except lmdb.MapResizedError:
            self._env.set_mapsize(0)  # another process grew the map: adopt its size
            return self.get(key)
        except lmdb.Error as error:
            log.warn("LMDB cache read failed: {error}", error=error)
            return None
        if stored is None or len(stored) < _EXPIRES.size:
            return None
        if _EXPIRES.unpack_from(stored)[0] <= self._seconds():
            return None  # removed by a later write's sweep, not here: reads stay read-only
        return stored[_EXPIRES.size :]

    def set(self, key: bytes, value: bytes, ttl: float) -> None:
        if not isinstance(key, bytes) or not isinstance(value, bytes):
            raise TypeError("LMDBStorage keys and values are bytes")
        if not key or len(key) > self._env.max_key_size() - _EXPIRES.size:
            raise ValueError(f"LMDB keys are 1..{self._env.max_key_size() - 8} bytes")
        now = self._seconds()
        self._writes += 1
        if self._writes % CHECK_EVERY == 0 and self._in_use() > HIGH_WATER * self._capacity:
            self._evict(now, share=8)
        for attempt in range(3):
            try:
                with self._env.begin(write=True) as txn:
                    self._remove(txn, key)
                    if ttl > 0:
                        expires = _EXPIRES.pack(now + ttl)
                        txn.put(key, expires + value, db=self._data)
                        txn.put(expires + key, b"", db=self._index)
                    self._sweep(txn, now, SWEEP_PER_WRITE)
                return
            except lmdb.MapResizedError:
                self._env.set_mapsize(0)
            except lmdb.MapFullError:
                self._evict(now, share=(4, 2, 1)[attempt])
        log.warn("LMDB cache full even after eviction; a value was not stored")

    def delete(self, prefix: bytes) -> int:
        removed = 0
        with self._env.begin(write=True) as txn:
            cursor = txn.cursor(db=self._data)
            if not cursor.set_range(prefix):
                return 0
            doomed = []
            for key in cursor.iternext(keys=True, values=False):
                if not key.startswith(prefix):
                    break
                doomed.append(key)
            for key in doomed:
                removed += self._remove(txn, key)
        return removed

    def clear(self) -> None:
        with self._env.begin(write=True) as txn:
            txn.drop(self._data, delete=False)
            txn.drop(self._index, delete=False)

    def usage(self) -> dict[str, int]:
        stat = self._env.stat()
        info = self._env.info()
        with self._env.begin() as txn:
            count = txn.stat(self._data)["entries"]
        pages = info["last_pgno"] + 1
        return {
            "count": count,
            "bytes": pages * stat["psize"],
            "capacity": self._capacity,
            "evicted": self.evicted,
            "expired": self.expired,
        }

    @property
    def capacity(self) -> int:
        """The map size in bytes; lowering it below what is in use starts the file anew."""
        return self._capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        value = max(check_capacity(value), MIN_MAP_SIZE)
        try:
            self._env.set_mapsize(value)
        except lmdb.Error as error:
            # LMDB cannot shrink a map below the pages in use: empty it, then shrink.
            log.warn("LMDB cache cannot shrink in place ({error}); emptying it", error=error)
            self._capacity = value
            self._recreate()
            return
        self._capacity = value

    # -- internals ------------------------------------------------------------------------

    def _remove(self, txn: Any, key: bytes) -> int:
        old = txn.pop(key, db=self._data)
        if old is None:
            return 0
        txn.delete(old[: _EXPIRES.size] + key, db=self._index)
        return 1

    def _sweep(self, txn: Any, now: float, limit: int) -> None:
        """Remove up to C{limit} expired entries, soonest expiry first."""
        self.expired += self._remove_soonest(txn, now, 0, limit)

    def _remove_soonest(self, txn: Any, now: float, at_least: int, at_most: float) -> int:
        """Remove entries in expiry order: every expired one (up to C{at_most}), and
        live ones too until C{at_least} went; how many went."""
        cursor = txn.cursor(db=self._index)
        doomed = []
        if cursor.first():
            for index_key in cursor.iternext(keys=True, values=False):
                if len(doomed) >= at_most or (
                    len(doomed) >= at_least and _EXPIRES.unpack_from(index_key)[0] > now
                ):
                    break
                doomed.append(index_key)
        for index_key in doomed:
            txn.delete(index_key, db=self._index)
            txn.delete(index_key[_EXPIRES.size :], db=self._data)
        return len(doomed)

    def _in_use(self) -> int:
        """Bytes in the pages that hold live data (freed pages are reused, so the file's
        high-water mark says nothing about how full it is)."""
        with self._env.begin() as txn:
            stats = [txn.stat(db) for db in (self._data, self._index, self._meta)]
        stats.append(self._env.stat())
        pages = sum(s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"] for s in stats)
        return pages * stats[-1]["psize"]

    def _evict(self, now: float, share: int) -> None:
        """Remove the expired, then the 1/C{share} of entries soonest to expire.

        Deleting writes pages too (LMDB copies on write), so this runs before the map is
        full; if even the deletion does not fit, the file starts afresh.
        """
        try:
            self._evict_some(now, share)
        except lmdb.MapFullError:
            log.warn("LMDB cache too full to evict from; emptying it")
            self._recreate()

    def _evict_some(self, now: float, share: int) -> None:
        with self._env.begin(write=True) as txn:
            target = max(txn.stat(self._data)["entries"] // share, 1)
            self.evicted += self._remove_soonest(txn, now, target, float("inf"))


def open_lmdb(rest: str, capacity: int, clock: Any) -> IStorage:
    """``lmdb:///absolute/dir`` (or ``lmdb://relative/dir``) -> an L{LMDBStorage}."""
    if not rest:
        raise ValueError("lmdb:// needs a directory, e.g. 'lmdb:///var/cache/kresolver'")
    return LMDBStorage(rest, capacity, clock)
