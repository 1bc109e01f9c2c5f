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
    health_reason: str = ""
    rpo_known: bool = True
    last_heard: float | None = None
    sync_eta_seconds: float | None = None


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
    """A condition an operator must know about (docs/CONTRACT.md): raised, and later cleared, under a stable ``id``
    per cause and subject (e.g. "LB_HISTORY_SHRUNK:vm1"). ``severity`` is info | warning | critical; ``component``
    is machine | vcenter | vault | appliance | job | certificate | keyring; ``state`` is raised | cleared."""
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
