"""The appliance's scheduler: periodic tasks and one-shot scheduled work on one asyncio task (vorta's
``job_scheduler``, with the appliance as the only site).

It replaces the old 1-second ticker. Each task has a name, an interval, the time of its next run and a record of
its runs. Tasks run one after another in registration order when due (as the ticker's work did, so a tick's status
events and the resync window see one consistent moment), a task never overlaps itself, and an exception in one
task is logged and kept in its record without touching the others. A one-shot task (``at``) is how a scheduled job
is started: its function submits the job to the ``JobManager``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from ..waits import wait_event

log = logging.getLogger(__name__)

TaskFn = Callable[[], "Awaitable[None] | None"]


@dataclass(slots=True)
class ScheduledTask:
    name: str
    fn: TaskFn
    interval: float | None          # None: one-shot
    next_run: float                 # on the scheduler's clock (monotonic by default)
    runs: int = 0
    failures: int = 0
    last_run: float | None = None
    last_duration: float = 0.0
    last_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "interval": self.interval, "next_run": self.next_run, "runs": self.runs,
                "failures": self.failures, "last_run": self.last_run, "last_duration": round(self.last_duration, 6),
                "last_error": self.last_error}


class Scheduler:
    """``every(name, seconds, fn)`` / ``at(name, when, fn)``, then ``await start()``; ``await stop()`` at the end.

    ``fn`` may be a plain function or a coroutine function. ``clock`` is monotonic seconds (tests pass their own).
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, resolution: float = 1.0) -> None:
        self.clock = clock
        self.resolution = resolution     # longest sleep, so tasks added later are picked up soon
        self.tasks: dict[str, ScheduledTask] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def every(self, name: str, interval: float, fn: TaskFn, *, first_in: float | None = None) -> ScheduledTask:
        """Run ``fn`` every ``interval`` seconds, first after ``first_in`` (default: one interval)."""
        if interval <= 0:
            raise ValueError(f"task {name!r}: interval must be positive")
        if name in self.tasks:
            raise ValueError(f"task {name!r} is already scheduled")
        t = self.tasks[name] = ScheduledTask(name, fn, float(interval),
                                             self.clock() + (interval if first_in is None else first_in))
        self._wake.set()
        return t

    def at(self, name: str, when: float, fn: TaskFn) -> ScheduledTask:
        """Run ``fn`` once when the clock reaches ``when``; the task is removed after its run."""
        if name in self.tasks:
            raise ValueError(f"task {name!r} is already scheduled")
        t = self.tasks[name] = ScheduledTask(name, fn, None, float(when))
        self._wake.set()
        return t

    def cancel(self, name: str) -> bool:
        return self.tasks.pop(name, None) is not None

    def snapshot(self) -> list[dict[str, Any]]:
        return [t.to_dict() for t in self.tasks.values()]

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="appliance-scheduler")

    async def stop(self) -> None:
        t, self._task = self._task, None
        if t is not None:
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)

    async def run_due(self) -> int:
        """Run every task that is due now, in registration order; returns how many ran."""
        ran = 0
        for t in list(self.tasks.values()):
            if t.next_run > self.clock() or self.tasks.get(t.name) is not t:
                continue
            await self._run(t)
            ran += 1
        return ran

    async def _run(self, t: ScheduledTask) -> None:
        start = self.clock()
        t.last_run = start
        try:
            res = t.fn()
            if inspect.isawaitable(res):
                await res
            t.last_error = None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one task failing must not stop the others (nor its own next run)
            t.failures += 1
            t.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("scheduled task %s", t.name)
        finally:
            t.runs += 1
            t.last_duration = self.clock() - start
            if t.interval is None:
                if self.tasks.get(t.name) is t:
                    del self.tasks[t.name]
            else:
                # fixed rate; a run that overran its interval is not made up for (no burst after a stall)
                nxt = t.next_run + t.interval
                t.next_run = nxt if nxt > self.clock() else self.clock() + t.interval

    async def _loop(self) -> None:
        while True:
            await self.run_due()
            now = self.clock()
            nxt = min((t.next_run for t in self.tasks.values()), default=now + self.resolution)
            self._wake.clear()
            await wait_event(self._wake, min(nxt - now, self.resolution))
