"""``policy.slice``: split the namespace into slices, one action each (kresd 5.4+).

``policy.add(policy.slice(policy.slice_randomize_psl(), policy.TLS_FORWARD(...),
policy.TLS_FORWARD(...)))`` sends each registrable domain (eTLD+1 by the Public Suffix
List) to one fixed target set, so one resolver sees all of a site's names and none of
the others'.  A slicing function takes ``(query, count)`` and returns an index from 0
to count - 1 (kresd's are 1-based; Python's lists are not).

The PSL comes from the ``publicsuffixlist`` package, which ships the list in its data:
no network access at run time.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from kresolver.modules.policy.filters import PolicyQuery

__all__ = ["slice_", "slice_randomize_psl"]

def slice_(slice_func: Callable[[PolicyQuery, int], int], *actions: Any) -> Any:
    """A filter choosing C{actions[slice_func(query, len(actions))]}."""
    if not actions:
        raise ValueError("policy.slice needs at least one action")
    if not callable(slice_func):
        raise TypeError("policy.slice needs a slicing function first")
    count = len(actions)

    def match_slice(state: Any, query: PolicyQuery) -> Any:
        index = slice_func(query, count)
        if index is None:
            return None
        if not 0 <= index < count:
            raise IndexError(f"slicing function returned {index} for {count} slices")
        return actions[index]

    return match_slice


def slice_randomize_psl(seed: int | None = None) -> Callable[[PolicyQuery, int], int]:
    """A slicing function that keeps each registrable domain in one slice.

    The assignment is a hash of C{seed} and the registrable domain, so it is stable for
    one seed; by default the seed changes weekly (kresd's ``os.time() / (3600*24*7)``).
    """
    if seed is None:
        seed = int(time.time() / (3600 * 24 * 7))
    seed = int(seed)
    from publicsuffixlist import PublicSuffixList

    psl = PublicSuffixList()

    def randomize_psl(query: PolicyQuery, count: int) -> int:
        domain = query.name.rstrip(".") or "."
        apex = psl.privatesuffix(domain) or domain  # 'com' itself has no registrable part
        digest = hashlib.blake2b(f"{seed}:{apex}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % count

    return randomize_psl
