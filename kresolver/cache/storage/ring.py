"""A consistent hash ring: which of several shared-cache servers holds a key.

Each server gets L{POINTS} points on a circle (from MD5 of its name and the point's
number, as libmemcached's ketama does), and a key belongs to the first point after its own
hash.  Adding or losing a server moves only the keys of that server's arcs, so the rest of
a fleet's shared cache stays where every resolver expects it.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

POINTS = 160


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.md5(data, usedforsecurity=False).digest()[:8], "big")


class HashRing(Generic[T]):
    """Maps byte keys to one of C{nodes}; C{names} (one per node) place them on the ring."""

    def __init__(self, nodes: Sequence[T], names: Sequence[str]) -> None:
        if not nodes or len(nodes) != len(names):
            raise ValueError("a hash ring needs one name per node, and at least one node")
        if len(set(names)) != len(names):
            raise ValueError(f"hash ring node names must differ: {list(names)}")
        self.nodes = list(nodes)
        points = sorted(
            (_hash(f"{name}-{i}".encode()), index)
            for index, name in enumerate(names)
            for i in range(POINTS)
        )
        self._hashes = [h for h, _ in points]
        self._owners = [index for _, index in points]

    def node(self, key: bytes) -> T:
        if len(self.nodes) == 1:
            return self.nodes[0]
        at = bisect.bisect(self._hashes, _hash(key)) % len(self._hashes)
        return self.nodes[self._owners[at]]

    def group(self, keys: Sequence[bytes]) -> dict[int, list[bytes]]:
        """C{keys} by the index of the node that holds them."""
        groups: dict[int, list[bytes]] = {}
        for key in keys:
            node = self.node(key)
            groups.setdefault(self.nodes.index(node), []).append(key)
        return groups
