"""Scheduled app-consistent bookmarks: ask each connected, protected machine's agent for one every
``app_consistent`` seconds of its policy."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .machine_state import MachineState

if TYPE_CHECKING:
    from .pipeline import MachineRuntime

__all__ = ["ScheduledBookmarks"]


class ScheduledBookmarks:
    """When each machine last got a scheduled bookmark request, and the next one when it is due."""

    def __init__(self, state: MachineState, runtimes: Mapping[str, MachineRuntime]) -> None:
        self.state = state
        self.runtimes = runtimes
        self._last: dict[str, float] = {}

    def tick(self, name: str, state: str | None) -> None:
        """One machine, whose current state is ``state``: only a connected, "protected" one gets bookmarks. Its
        interval counts from the first tick that sees it so."""
        rt = self.runtimes.get(name)
        if rt is None or rt.connection is None or state != "protected":
            return
        now = time.monotonic()
        if now - self._last.setdefault(name, now) >= self.state.policy_of(name).app_consistent:
            self._last[name] = now
            rt.connection.send_control({"bookmark": {"tag": "scheduled"}})
