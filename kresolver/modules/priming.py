"""Root priming (RFC 8109), lazily: ``. NS`` is asked of the root hints when a resolution
first needs the root and the cache does not have the root's NS RRset.

The iterate layer plans the priming question (a sub-query whose answer, the root's NS
RRset and its glue, the cache layer stores); this module only says whether it is wanted,
so that ``modules.unload('priming')`` makes a resolver under test send nothing it was not
asked for: iteration then starts from the root hints directly.  Nothing is sent at start.
"""

from __future__ import annotations

from typing import Any

from kresolver.module import Module

#: seconds between two priming attempts (a failed one, or one whose answer the cache lost)
RETRY_INTERVAL = 10.0


class Priming(Module):
    """Decides when the iterate layer primes the root."""

    name = "priming"
    description = "root priming (RFC 8109): ask . NS of the root hints before using them"

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.retry_interval = RETRY_INTERVAL
        self._next = 0.0
        self.count = 0

    def wanted(self, now: float) -> bool:
        """Whether a resolution that starts from the root hints at C{now} should prime."""
        return now >= self._next

    def started(self, now: float) -> None:
        """A priming question was planned at C{now}; do not plan another for a while."""
        self._next = now + self.retry_interval
        self.count += 1
