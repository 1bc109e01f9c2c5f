"""Engine events → Qt signals.

The engine delivers typed events synchronously on the loop thread (docs/CONTRACT.md §1), which under qasync is the
GUI thread; the bridge only re-emits them, so a subscriber never blocks replication. Besides one signal per event
type it coalesces ``MachineStatus`` — 500 machines send 500 events a second — into ``statuses``: the newest status
of every machine that changed, at most once per ``flush_ms``, so tables redraw once per batch and not per event.

The event classes are the engine↔console contract and are re-exported here, so ``ui`` can name them without
importing ``engine``.
"""

from __future__ import annotations

import logging
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from engine.api import Alert, ApplianceLink, Event, JobChanged, JobProgress, MachineStatus, PointCreated

log = logging.getLogger(__name__)

__all__ = ["EngineBridge", "Alert", "ApplianceLink", "Event", "JobChanged", "JobProgress", "MachineStatus", "PointCreated"]


class EngineBridge(QObject):
    """Subscribes to an engine event bus and re-emits every event as a typed Qt signal."""

    machine_status = Signal(object)  # MachineStatus, every event
    statuses = Signal(list)          # list[MachineStatus], newest per machine, coalesced
    point_created = Signal(object)   # PointCreated
    job_progress = Signal(object)    # JobProgress
    job_changed = Signal(object)     # JobChanged (a job queued, started, paused, ended; a step's state)
    alert = Signal(object)           # Alert
    appliance_link = Signal(object)  # ApplianceLink: an attached console lost its appliance, or is back
    other_event = Signal(object)     # any other engine event (for example vCenter inventory changes)

    def __init__(self, parent: QObject | None = None, *, flush_ms: int = 250) -> None:
        super().__init__(parent)
        self._pending: dict[str, MachineStatus] = {}
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(flush_ms)
        self._timer.timeout.connect(self.flush)
        self.events_seen = 0

    def set_flush_interval(self, ms: int) -> None:
        self._timer.setInterval(max(10, int(ms)))

    def __call__(self, event: Event) -> None:
        """The bus subscriber: must not block and must not raise into the engine."""
        self.events_seen += 1
        if isinstance(event, MachineStatus):
            self._pending[event.machine] = event
            self.machine_status.emit(event)
            if not self._timer.isActive():
                self._timer.start()
        elif isinstance(event, PointCreated):
            self.point_created.emit(event)
        elif isinstance(event, JobProgress):
            self.job_progress.emit(event)
        elif isinstance(event, JobChanged):
            self.job_changed.emit(event)
        elif isinstance(event, Alert):
            self.alert.emit(event)
        elif isinstance(event, ApplianceLink):
            self.flush()   # what arrived before the link changed is shown first
            self.appliance_link.emit(event)
        else:
            self.other_event.emit(event)

    def flush(self) -> None:
        """Emit the coalesced statuses now (also called by the timer)."""
        self._timer.stop()
        if self._pending:
            batch, self._pending = list(self._pending.values()), {}
            self.statuses.emit(batch)

    def attach(self, bus: Any) -> None:
        """Subscribe to an ``EventBus`` (or anything with ``subscribe(fn)``)."""
        self._unsubscribe = bus.subscribe(self)

    def detach(self) -> None:
        unsub = getattr(self, "_unsubscribe", None)
        if unsub is not None:
            unsub()
            self._unsubscribe = None
        self._timer.stop()
        self._pending.clear()
