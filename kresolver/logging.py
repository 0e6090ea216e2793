"""Logging with kresd's levels, filtered at the source.

twistd owns the log observers, so ``log_level()`` cannot wrap them; instead every kresolver
logger checks one process-wide threshold before it formats anything, which also keeps
disabled debug lines off the query path.  A threshold per process mirrors kresd (and
Twisted's own global log publisher).
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger, LogLevel

LEVELS: dict[str, LogLevel] = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "notice": LogLevel.info,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
    "crit": LogLevel.critical,
}
_ORDER = [LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical]


class Threshold:
    """The lowest level that is logged."""

    def __init__(self, name: str = "notice") -> None:
        self.name = name
        self.rank = _ORDER.index(LEVELS[name])

    def set(self, name: str) -> str:
        if name not in LEVELS:
            raise ValueError(f"unknown log level {name!r}; use one of {', '.join(LEVELS)}")
        self.name = name
        self.rank = _ORDER.index(LEVELS[name])
        return name


THRESHOLD = Threshold()


class KLogger(Logger):
    """A Logger that drops events under the process's threshold before formatting."""

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        if _ORDER.index(level) >= THRESHOLD.rank:
            super().emit(level, format, **kwargs)

    def debugging(self) -> bool:
        """True when debug lines are kept: lets callers skip building costly ones."""
        return THRESHOLD.rank == 0
