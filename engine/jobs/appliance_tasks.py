"""The appliance's periodic work as scheduler tasks (what the 1-second ticker did, with the same timing).

- ``machine-status`` (1 s): a ``MachineStatus`` event per machine with a runtime;
- ``resync-window`` (1 s): deliver resync requests and start a resync when the policy's window is open;
- ``scheduled-bookmarks`` (1 s): ask a connected, protected machine's agent for an app-consistent bookmark every
  ``policy.app_consistent`` seconds (the first one that long after the machine is first seen so);
- ``retention`` (30 s): fold history older than each policy's retention into the replica.

Crash-consistent points need no task here: the agent cuts them every ``policy.crash_interval`` (sent in WELCOME).
Each machine is handled on its own, so one machine's error does not skip the others in the same tick.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from ..events import MachineStatus
from .scheduler import Scheduler

if TYPE_CHECKING:
    from ..appliance.appliance import Appliance

log = logging.getLogger(__name__)

STATUS_SECONDS = 1.0
RESYNC_SECONDS = 1.0
BOOKMARK_CHECK_SECONDS = 1.0
RETENTION_SECONDS = 30.0


class ApplianceTasks:
    """The task functions, bound to one appliance (the bookmark clock per machine lives here)."""

    def __init__(self, app: Appliance) -> None:
        self.app = app
        self.last_bookmark: dict[str, float] = {}
        self.states: dict[str, str] = {}    # each machine's state as of this tick's status (read by bookmarks)

    def register(self, s: Scheduler) -> None:
        s.every("machine-status", STATUS_SECONDS, self.emit_statuses)
        s.every("resync-window", RESYNC_SECONDS, self.resync_window)
        s.every("scheduled-bookmarks", BOOKMARK_CHECK_SECONDS, self.scheduled_bookmarks)
        s.every("retention", RETENTION_SECONDS, self.retention)

    def emit_statuses(self) -> None:
        for name in list(self.app.runtimes):
            try:
                st = self.app.machine_status(name)
                self.states[name] = st["state"]
                self.app.bus.emit(MachineStatus(name, st["state"], st["health"], st["rpo_seconds"],
                                                st["sync_progress"], (st["last_point"] or {}).get("time"),
                                                st["churn_bytes_per_s"], st["upload_bytes_per_s"]))
            except Exception:
                log.exception("status of %s", name)

    def resync_window(self) -> None:
        for name in list(self.app.runtimes):
            try:
                self.app._resync_tick(name)
            except Exception:
                log.exception("resync tick of %s", name)

    def scheduled_bookmarks(self) -> None:
        for name, rt in list(self.app.runtimes.items()):
            try:
                if rt.connection is None or self.states.get(name) != "protected":
                    continue
                now = time.monotonic()
                if now - self.last_bookmark.setdefault(name, now) >= self.app.policy_of(name).app_consistent:
                    self.last_bookmark[name] = now
                    rt.connection.send_control({"bookmark": {"tag": "scheduled"}})
            except Exception:
                log.exception("scheduled bookmark of %s", name)

    async def retention(self) -> None:
        await self.app.prune_all()
