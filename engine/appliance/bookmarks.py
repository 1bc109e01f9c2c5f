"""Scheduled app-consistent bookmarks: ask each connected, protected machine's agent for one every
``app_consistent`` seconds of its policy."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .machines import MachineState

if TYPE_CHECKING:
    from .pipeline import MachineRuntime

__all__ = ["ScheduledBookmarks"]


class ScheduledBookmarks:
    """When each machine last got a scheduled bookmark request, and the next one when it is due."""

    def __init__(self, state: MachineState, runtimes: Mapping[str, MachineRuntime]) -> None:
        self.state = state
        self.runtimes = runtimes
        self._last: dict[str, float] = {}

    def tick(self, statuses: Mapping[str, Mapping[str, Any]]) -> None:
        """``statuses``: the machines' current status by name (only "protected" ones get bookmarks). The interval
        of a machine counts from the first tick that sees it."""
        for name, st in statuses.items():
            rt = self.runtimes.get(name)
            if rt is None:
                continue
            pol = self.state.policy_of(name)
            now = time.monotonic()
            if st["state"] == "protected" and rt.connection is not None:
                if now - self._last.setdefault(name, now) >= pol.app_consistent:
                    self._last[name] = now
                    rt.connection.send_control({"bookmark": {"tag": "scheduled"}})
