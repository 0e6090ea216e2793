"""Datagrams sent together at the end of the reactor's turn, as libuv sends kresd's.

Sending a datagram to a process that sleeps on its socket wakes it, and the sender pays
for the wakeup (on a virtual machine, an interrupt to another processor: more than the
send itself).  A busy resolver handles many events per turn of the reactor; if it sends
each answer as soon as it is made, the client (or the authoritative server) has gone
back to sleep between two of them and is woken for every one.  Held until every event
of the turn is handled and then sent back to back, they wake it once: on the cache-miss
benchmark this took about a third off the system time per answer.

An idle resolver handles one event per turn, so nothing waits longer than that turn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kresolver.logging import KLogger as Logger

log = Logger()


class TurnQueue:
    """Calls to make once the reactor has handled the events of its current turn.

    A call is queued with L{later}; the first queued call of a turn schedules the flush
    (C{callLater(0)}, which the reactor runs right after its poll).  Calls run in the
    order they were queued; each is expected to handle its own errors (a full send
    buffer loses one datagram, as UDP may), and one that raises is logged and does not
    keep the others from running.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def later(self, call: Callable[..., Any], *args: Any) -> None:
        """Make C{call(*args)} at the end of this turn."""
        calls = self._calls
        calls.append((call, args))
        if len(calls) == 1:
            self._reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """Make every queued call now."""
        calls, self._calls = self._calls, []
        for call, args in calls:
            try:
                call(*args)
            except Exception:
                log.failure("a queued send failed: {call}", call=call)

    def __len__(self) -> int:
        return len(self._calls)


__all__ = ["TurnQueue"]
