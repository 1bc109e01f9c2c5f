"""Unauthenticated registration attempts cost the appliance nothing that grows.

``POST /v1/register`` is the one call a stranger can make. Each source address may fail a few times per window;
past that, its attempts are refused with ``LB_RATE_LIMITED`` before any work (no proof checked, no row written).
Refused attempts are written as one ``register-refused`` event per source and window, whose count is brought up to
date when the window ends, so a flood of wrong passphrases adds at most one row per source per minute. The table of
sources in memory is bounded too (the oldest entries are dropped first).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from ..errors import RateLimited
from .state import StateDB

#: Failed attempts a source may make per window before it is refused outright.
MAX_FAILURES = 10
#: Length of a window, in seconds.
WINDOW = 60.0
#: Sources remembered at once (each entry is a few hundred bytes).
MAX_SOURCES = 4096


@dataclass
class _Source:
    start: float
    failures: int = 0
    limited: int = 0
    event_id: int | None = None
    names: list[str] = field(default_factory=list)


class RegisterGuard:
    def __init__(self, db: StateDB, *, clock: Callable[[], float] = time.monotonic,
                 max_failures: int = MAX_FAILURES, window: float = WINDOW) -> None:
        self.db = db
        self.clock = clock
        self.max_failures = max_failures
        self.window = window
        self.sources: OrderedDict[str, _Source] = OrderedDict()

    def _entry(self, source: str) -> _Source:
        now = self.clock()
        s = self.sources.get(source)
        if s is not None and now - s.start >= self.window:
            self._flush(source, s)
            s = None
        if s is None:
            s = self.sources[source] = _Source(now)
            while len(self.sources) > MAX_SOURCES:
                old_source, old = self.sources.popitem(last=False)
                self._flush(old_source, old)
        self.sources.move_to_end(source)
        return s

    def check(self, source: str) -> None:
        """Before any work: refuse a source that failed too often in this window."""
        s = self._entry(source)
        if s.failures >= self.max_failures:
            s.limited += 1
            wait = max(1, int(self.window - (self.clock() - s.start)) + 1)
            raise RateLimited(f"too many refused registration attempts from {source}; try again in {wait} s",
                              retry_after=wait)

    def refused(self, source: str, name: str) -> None:
        """A wrong passphrase: one event row per source and window, its count kept in memory until then."""
        s = self._entry(source)
        s.failures += 1
        if len(s.names) < 5 and name not in s.names:
            s.names.append(name)
        if s.event_id is None:
            s.event_id = self.db.add_event("register-refused", None, source=source, name=name, attempts=1)

    def _flush(self, source: str, s: _Source) -> None:
        if s.event_id is not None and (s.failures > 1 or s.limited):
            self.db.update_event(s.event_id, source=source, name=s.names[0], names=s.names, attempts=s.failures,
                                 rate_limited=s.limited, window_seconds=self.window)

    def close(self) -> None:
        """Write the counts of the open windows (on a clean stop)."""
        for source, s in list(self.sources.items()):
            self._flush(source, s)
        self.sources.clear()
