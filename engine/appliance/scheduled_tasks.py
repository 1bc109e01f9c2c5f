"""The appliance's periodic work as scheduler tasks (what the 1-second ticker did, with the same timing).

- ``machine-status`` (1 s): a ``MachineStatus`` event per machine with a runtime;
- ``resync-window`` (1 s): deliver resync requests and start a resync when the policy's window is open;
- ``scheduled-bookmarks`` (1 s): ask a connected, protected machine's agent for an app-consistent bookmark every
  ``policy.app_consistent`` seconds (the first one that long after the machine is first seen so);
- ``retention`` (30 s): fold history older than each policy's retention into the replica;
- ``rpo-history`` (5 s): write the finished RPO history samples and each machine's last recoverable / last heard
  times to state.db (the samples themselves are taken by ``machine-status``, which also hands each status to the
  machine watch: transitions to the event log, machine alerts);
- ``certificates`` (daily): the appliance's certificates expiring within 30 days raise an alert;
- ``history-pins`` (5 s): a drill or unfinished failover holding history longer than the pin-alert setting raises
  an alert; alerts of pins that ended clear (``engine/recovery/pins.py``);
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
    from .health_watch import ApplianceWatch, MachineWatch
    from .machines import Machines
    from .resync import Resync
    from .retention import Retention
    from ..recovery.pins import HistoryPins
    from .rpo import RpoHistory

log = logging.getLogger(__name__)

STATUS_SECONDS = 1.0
RESYNC_SECONDS = 1.0
BOOKMARK_CHECK_SECONDS = 1.0
RETENTION_SECONDS = 30.0
RPO_HISTORY_SECONDS = 5.0
CERTIFICATE_SECONDS = 86400.0
CAPACITY_SECONDS = 2.0
PINS_SECONDS = 5.0


class ApplianceTasks:
    """The task functions over the appliance's parts: ``runtimes`` (which machines run), ``machines`` (status),
    ``resync`` (delivery and window), ``bookmarks`` (its clock per machine) and ``retention``."""

    def __init__(self, *, runtimes: Mapping[str, Any], machines: Machines, resync: Resync,
                 bookmarks: ScheduledBookmarks, retention: Retention, watch: MachineWatch | None = None,
                 rpo_history: RpoHistory | None = None, appliance_watch: ApplianceWatch | None = None,
                 capacity: Capacity | None = None, pins: HistoryPins | None = None) -> None:
        self.runtimes = runtimes
        self.pins = pins
        self.watch = watch
        self.rpo_history_ = rpo_history
        self.appliance_watch = appliance_watch
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
        if self.rpo_history_ is not None:
            s.every("rpo-history", RPO_HISTORY_SECONDS, self.rpo_history)
        if self.appliance_watch is not None:
            s.every("certificates", CERTIFICATE_SECONDS, self.appliance_watch.check_certificates)
        if self.capacity_ is not None:
            s.every("vault-capacity", CAPACITY_SECONDS, self.capacity)
        if self.pins is not None:
            s.every("history-pins", PINS_SECONDS, self.history_pins)

    def emit_statuses(self) -> None:
        for name in list(self.runtimes):
            try:
                st = self.machines.emit_status(name)
                self.states[name] = st["state"]
                if self.rpo_history_ is not None and st.get("rpo_known"):
                    self.rpo_history_.note(name, float(st["rpo_seconds"]))
                if self.watch is not None:
                    self.watch.observe(name, st)
            except Exception:
                log.exception("status of %s", name)

    def rpo_history(self) -> None:
        persist = getattr(self.runtimes, "persist_clocks", None)
        if persist is not None:
            persist()
        assert self.rpo_history_ is not None
        self.rpo_history_.flush()

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

    async def history_pins(self) -> None:
        if self.pins is not None:
            self.pins.check()
