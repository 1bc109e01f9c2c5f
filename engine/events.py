"""Typed engine events: the engine↔console contract (docs/CONTRACT.md).

Events are plain dataclasses delivered to subscribers on the engine's event loop. A subscriber must not block;
the console's bridge turns them into Qt signals.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Event:
    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, **asdict(self)}


@dataclass(slots=True)
class MachineStatus(Event):
    """Sent about once a second per machine (the scheduler's status task); a state change shows in the next one."""
    machine: str
    state: str
    health: str
    rpo_seconds: float
    sync_progress: float | None = None
    last_point_time: float | None = None
    churn_bytes_per_s: float = 0.0
    upload_bytes_per_s: float = 0.0
    health_reason: str = ""               # why health is not ok ("agent not heard from for 6 min"); "" when ok
    rpo_known: bool = True                # False before the first recovery point: no RPO to show ("—")
    last_heard: float | None = None       # epoch of the last frame the appliance had from the agent
    sync_eta_seconds: float | None = None  # initial sync: seconds left at the recent rate (None: unknown)


@dataclass(slots=True)
class PointCreated(Event):
    machine: str
    point_id: str
    kind: str
    time: float
    tag: str | None = None


@dataclass(slots=True)
class JobProgress(Event):
    job_id: str
    operation: str
    machine: str | None
    progress: float            # 0..1
    finished: bool = False
    error: dict[str, Any] | None = None
    message: str = ""


@dataclass(slots=True)
class JobChanged(Event):
    """A job was queued, changed state, or one of its steps changed state (engine/jobs, docs/CONTRACT.md §2).

    ``job`` is the job's whole wire form (``Job.to_dict()``: steps included), so a consumer needs no other call;
    ``step``/``step_state`` name the step whose change this is (None for a change of the job itself)."""
    job_id: str
    kind: str
    machine: str | None
    state: str
    step: str | None = None
    step_state: str | None = None
    job: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Alert(Event):
    """Something an operator should know about (CONTRACT.md §2.4). Any part may emit one on the bus; the
    appliance's alert store (``engine/appliance/alerts.py``) keeps one row per ``id`` while it is raised.

    ``id`` is stable per cause and subject ("LB_RPO_BREACH:vm1"; "" means ``code:machine``); ``state`` is
    ``raised`` or ``cleared`` (the cause is gone); ``severity`` info | warning | critical; ``component`` machine |
    vcenter | vault | appliance | job | certificate | keyring; ``time`` epoch seconds (0: when recorded)."""
    machine: str | None
    code: str
    message: str
    advice: str = ""
    severity: str = "warning"
    details: dict[str, Any] = field(default_factory=dict)
    id: str = ""
    component: str = "machine"
    state: str = "raised"
    time: float = 0.0


@dataclass(slots=True)
class ApplianceLink(Event):
    """An attached console's link to its appliance (CONTRACT.md §7), sent by the console side of the link itself:
    ``state`` connected | lost (``detail`` says why; the link retries on its own) | locked (the appliance runs
    without its vault key: ``detail`` is its reason; ``connected`` follows once a kit unlocks it) | stopped (the
    console let go)."""
    state: str
    detail: str = ""
    time: float = 0.0


Subscriber = Callable[[Event], None]


class EventBus:
    def __init__(self) -> None:
        self._subs: list[Subscriber] = []

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        self._subs.append(fn)
        return lambda: self._subs.remove(fn) if fn in self._subs else None

    def emit(self, event: Event) -> None:
        for fn in list(self._subs):
            try:
                fn(event)
            except Exception:  # a broken subscriber must not break replication
                log.exception("event subscriber failed")
