"""The job model: a typed kind, a target, a state, ordered steps and a result, as plain data.

A job is planned before it runs (vorta's ``prepare``/``run`` split): the caller validates its input and builds a
``Plan`` — ordered groups of steps, the members of one group running in parallel — without touching anything; the
``JobManager`` then runs the plan. ``Job.to_dict()`` is the wire form (``GET /v1/jobs/{id}``, FORMATS.md §9); it
keeps the fields of the drill jobs that came before (``id, operation, machine, progress, finished, error,
result``) and adds the new ones beside them.
"""

from __future__ import annotations

import enum
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol


class JobKind(str, enum.Enum):
    """What a job does. New kinds are additive (docs/CONTRACT.md §5)."""
    TEST_FAILOVER = "test-failover"
    FAILOVER = "failover"
    FAILOVER_CANCEL = "failover-cancel"
    FAILOVER_CLEANUP = "failover-cleanup"
    FAILOVER_CHANGE_POINT = "failover-change-point"
    FAILOVER_COMMIT = "failover-commit"
    RECOVERY_PLAN = "recovery-plan"
    FAILBACK = "failback"
    REPROTECT = "reprotect"
    REENABLE = "reenable"
    PLAN_REPROTECT = "plan-reprotect"   # a recovery plan's failback (issue 14): one step per machine
    PLAN_FAILBACK = "plan-failback"
    PLAN_REENABLE = "plan-reenable"
    MAINTENANCE = "maintenance"     # appliance housekeeping run as a job (tests, future scheduled work)


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused-for-operator"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"     # the appliance stopped while the job was not final; never re-run

    @property
    def final(self) -> bool:
        return self in FINAL_JOB_STATES


FINAL_JOB_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.INTERRUPTED})


class StepState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused-for-operator"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"             # never started: an earlier step failed or the job was cancelled
    INTERRUPTED = "interrupted"

    @property
    def final(self) -> bool:
        return self in (StepState.SUCCEEDED, StepState.FAILED, StepState.CANCELLED, StepState.SKIPPED,
                        StepState.INTERRUPTED)


# Stable codes of the errors a job itself ends with (a failing step carries its own LifeboatError's code).
CANCELLED_CODE = "LB_CANCELLED"
INTERRUPTED_CODE = "LB_INTERRUPTED"
STEP_FAILED_CODE = "LB_JOB_FAILED"

class StepContext(Protocol):
    """What a running step sees (the manager provides it): its job and step, the job's ``result`` to fill,
    progress, a message, and pauses for an operator."""
    job: Job
    step: Step

    @property
    def result(self) -> dict[str, Any]: ...

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report the step's progress (0..1); sends ``JobProgress`` for the job."""

    def note(self, message: str) -> None:
        """Set the step's (and job's) message without sending a progress event."""

    async def pause_for_operator(self, message: str) -> None:
        """Pause the step (and the job: ``paused-for-operator``) until ``JobManager.resume(job_id)``."""


StepFn = Callable[[StepContext], Awaitable[None]]


@dataclass(slots=True)
class StepSpec:
    """One step of a plan. ``run(ctx)`` does the work; ``weight`` is its share of the job's progress (0: none);
    ``error_code``/``advice`` are used when ``run`` raises something that is not a ``LifeboatError``."""
    name: str
    title: str
    run: StepFn
    weight: float = 1.0
    error_code: str = STEP_FAILED_CODE
    advice: str = "See the appliance log for details."


@dataclass(slots=True)
class Plan:
    """Ordered groups of steps: group N starts when every step of group N-1 has succeeded; the steps of one group
    run in parallel. ``done`` lists steps already carried out while planning (for example a resolved point): they
    are recorded as succeeded and not run again."""
    groups: list[list[StepSpec]]
    done: list[tuple[str, str]] = field(default_factory=list)   # (name, title)

    @classmethod
    def sequence(cls, *steps: StepSpec) -> Plan:
        return cls([[s] for s in steps])

    def validate(self) -> None:
        names = [n for n, _ in self.done] + [s.name for g in self.groups for s in g]
        if len(names) != len(set(names)):
            raise ValueError(f"step names repeat in the plan: {names}")
        if any(not g for g in self.groups):
            raise ValueError("a plan group has no steps")


@dataclass(slots=True)
class Step:
    """A step as it runs and as it is stored. ``group`` orders steps; steps sharing a group ran in parallel."""
    name: str
    title: str
    group: int
    weight: float = 1.0
    state: StepState = StepState.PENDING
    progress: float = 0.0
    message: str = ""
    started: float | None = None
    ended: float | None = None
    error: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "group": self.group, "weight": self.weight,
                "state": self.state.value, "progress": round(self.progress, 4), "message": self.message,
                "started": self.started, "ended": self.ended, "error": self.error}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Step:
        return cls(d["name"], d.get("title", d["name"]), int(d.get("group", 0)), float(d.get("weight", 1.0)),
                   StepState(d.get("state", "pending")), float(d.get("progress", 0.0)), d.get("message", ""),
                   d.get("started"), d.get("ended"), d.get("error"))


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass(slots=True)
class Job:
    """A job: ``kind`` on ``target`` (a machine name, or None for the appliance itself)."""
    id: str
    kind: str
    target: str | None
    title: str = ""
    state: JobState = JobState.QUEUED
    progress: float = 0.0
    message: str = ""
    steps: list[Step] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None

    @property
    def finished(self) -> bool:
        return self.state.final

    @property
    def operation(self) -> str:
        return self.kind

    @property
    def machine(self) -> str | None:
        return self.target

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def recompute_progress(self) -> float:
        weights = sum(s.weight for s in self.steps)
        if weights > 0:
            self.progress = sum(s.weight * (1.0 if s.state == StepState.SUCCEEDED else s.progress)
                                for s in self.steps) / weights
        elif self.steps:
            self.progress = sum(s.state == StepState.SUCCEEDED for s in self.steps) / len(self.steps)
        return self.progress

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "operation": self.kind, "machine": self.target, "progress": round(self.progress, 4),
                "finished": self.finished, "error": self.error, "result": self.result,
                "kind": self.kind, "target": self.target, "title": self.title, "state": self.state.value,
                "message": self.message, "created": self.created, "started": self.started, "ended": self.ended,
                "steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        return cls(d["id"], d.get("kind") or d["operation"], d.get("target", d.get("machine")), d.get("title", ""),
                   JobState(d.get("state", "queued")), float(d.get("progress", 0.0)), d.get("message", ""),
                   [Step.from_dict(s) for s in d.get("steps", [])], d.get("result") or {}, d.get("error"),
                   float(d.get("created") or 0.0), d.get("started"), d.get("ended"))
