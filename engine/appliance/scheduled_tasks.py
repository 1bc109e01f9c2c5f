"""The appliance's periodic work as scheduler tasks (what the 1-second ticker did, with the same timing).

- ``machine-status`` (1 s): a ``MachineStatus`` event per machine with a runtime;
- ``resync-window`` (1 s): deliver resync requests and start a resync when the policy's window is open;
- ``scheduled-bookmarks`` (1 s): ask a connected, protected machine's agent for an app-consistent bookmark every
  ``policy.app_consistent`` seconds (the first one that long after the machine is first seen so);
- ``retention`` (30 s): fold history older than each policy's retention into the replica;
- ``vault-capacity`` (2 s): the vault's capacity policy: free space and history sizes measured, history folded to
  the history limits and the free-space reserve, replication paused while the vault is full
  (``engine/appliance/capacity.py``).

Crash-consistent points need no task here: the agent cuts them every ``policy.crash_interval`` (sent in WELCOME).
Each machine is handled on its own, so one machine's error does not skip the others in the same tick.

The tasks call into the appliance's parts (machines, resync, bookmarks, retention, capacity), never into the ``Appliance``
composition root; the scheduler that runs them (``engine/jobs/scheduler.py``) knows nothing of the appliance.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..jobs.scheduler import Scheduler

if TYPE_CHECKING:
    from .bookmarks import ScheduledBookmarks
    from .capacity import Capacity
    from .machines import Machines
    from .resync import Resync
    from .retention import Retention

log = logging.getLogger(__name__)

STATUS_SECONDS = 1.0
RESYNC_SECONDS = 1.0
BOOKMARK_CHECK_SECONDS = 1.0
RETENTION_SECONDS = 30.0
CAPACITY_SECONDS = 2.0


class ApplianceTasks:
    """The task functions over the appliance's parts: ``runtimes`` (which machines run), ``machines`` (status),
    ``resync`` (delivery and window), ``bookmarks`` (its clock per machine) and ``retention``."""

    def __init__(self, *, runtimes: Mapping[str, Any], machines: Machines, resync: Resync,
                 bookmarks: ScheduledBookmarks, retention: Retention, capacity: Capacity | None = None) -> None:
        self.runtimes = runtimes
        self.machines = machines
        self.resync = resync
        self.bookmarks = bookmarks
        self.retention_ = retention
        self.capacity_ = capacity
        self.states: dict[str, str] = {}    # each machine's state as of this tick's status (read by bookmarks)

    def register(self, s: Scheduler) -> None:
        s.every("machine-status", STATUS_SECONDS, self.emit_statuses)
        s.every("resync-window", RESYNC_SECONDS, self.resync_window)
        s.every("scheduled-bookmarks", BOOKMARK_CHECK_SECONDS, self.scheduled_bookmarks)
        s.every("retention", RETENTION_SECONDS, self.retention)
        if self.capacity_ is not None:
            s.every("vault-capacity", CAPACITY_SECONDS, self.capacity)

    def emit_statuses(self) -> None:
        for name in list(self.runtimes):
            try:
                self.states[name] = self.machines.emit_status(name)["state"]
            except Exception:
                log.exception("status of %s", name)

    def resync_window(self) -> None:
        for name in list(self.runtimes):
            try:
                self.resync.tick(name)
            except Exception:
                log.exception("resync tick of %s", name)

    def scheduled_bookmarks(self) -> None:
        for name in list(self.runtimes):
            try:
                self.bookmarks.tick(name, self.states.get(name))
            except Exception:
                log.exception("scheduled bookmark of %s", name)

    async def retention(self) -> None:
        await self.retention_.prune_all()

    async def capacity(self) -> None:
        if self.capacity_ is not None:
            await self.capacity_.tick()
