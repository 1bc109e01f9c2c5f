"""The job manager: one queue per target machine, one running job per machine (vorta's ``JobsManager`` per site).

A caller validates its input and builds a ``Plan`` first (nothing runs while planning), then ``submit``s it. The
manager persists the job at once (``queued``), starts it when its machine has no other job running, and runs the
plan's groups in order, the steps of a group in parallel (an ``asyncio.TaskGroup``: the first failing step cancels
its siblings). Jobs of different machines run side by side. A job that waits for an operator
(``StepContext.pause_for_operator``) keeps its machine's slot until it is resumed or cancelled: later jobs of that
machine must not interleave with a half-done failover.

Every state change is stored (``JobStore``) and sent on the event bus (``JobChanged``; ``JobProgress`` for
progress and at the end, as drills always did). At start-up every job stored as queued, running or paused is marked
``interrupted`` (code ``LB_INTERRUPTED``) and is never run again: only the operator can decide whether half a
failover should be repeated.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from typing import Any, Callable

from ..errors import Conflict, LifeboatError, NotFound
from ..events import EventBus, JobChanged, JobProgress
from .model import (CANCELLED_CODE, INTERRUPTED_CODE, Job, JobState, Plan, Step, StepContext, StepSpec, StepState,
                    new_job_id)
from .store import KEEP_FINISHED, JobStore

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 2.0     # progress is stored at most this often (state changes always)


class RunningStep(StepContext):
    """The manager's :class:`StepContext`: a step's view of its job, reporting back to the manager."""

    def __init__(self, manager: JobManager, job: Job, step: Step) -> None:
        self._manager = manager
        self.job = job
        self.step = step

    @property
    def result(self) -> dict[str, Any]:
        return self.job.result

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report the step's progress (0..1); sends ``JobProgress`` for the job."""
        self._manager._step_progress(self.job, self.step, fraction, message)

    def note(self, message: str) -> None:
        """Set the step's (and job's) message without sending a progress event; the next change carries it."""
        self.step.message = self.job.message = message

    async def pause_for_operator(self, message: str) -> None:
        """Pause the step (and the job: ``paused-for-operator``) until ``JobManager.resume(job_id)``."""
        await self._manager._pause(self.job, self.step, message)


class _StepFailed(Exception):
    def __init__(self, step: Step, cause: BaseException) -> None:
        super().__init__(step.name)
        self.step = step
        self.cause = cause


def _error_of(exc: BaseException, spec: StepSpec) -> dict[str, Any]:
    if isinstance(exc, LifeboatError):
        return exc.to_dict()
    return {"code": spec.error_code, "message": str(exc) or type(exc).__name__, "advice": spec.advice}


class JobManager:
    """Queues, runs, pauses, cancels and remembers jobs. ``start``/``stop`` inside the running loop."""

    def __init__(self, store: JobStore, bus: EventBus | None = None, *, keep: int = KEEP_FINISHED) -> None:
        self.store = store
        self.bus = bus or EventBus()
        self.keep = keep
        self.jobs: dict[str, Job] = {}
        self._plans: dict[str, Plan] = {}
        self._queues: dict[str, deque[str]] = {}
        self._active: dict[str, str] = {}                   # queue key -> running job id
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._resume: dict[str, asyncio.Event] = {}
        self._exceptions: dict[str, BaseException] = {}
        self._waiters: list[tuple[str, Callable[[Job], bool], asyncio.Future[Job]]] = []
        self._cancel_requested: set[str] = set()
        self._last_store: dict[str, float] = {}
        self._stopping = False

    # lifecycle -------------------------------------------------------------------------------------------
    async def start(self) -> list[Job]:
        """Load the history; mark jobs left unfinished by an earlier run ``interrupted``. Returns those jobs."""
        interrupted = []
        for job in self.store.unfinished():
            self._end_fields(job, JobState.INTERRUPTED, {
                "code": INTERRUPTED_CODE,
                "message": f"the appliance stopped while this job was {job.state.value}; it was not run again",
                "advice": "Check what its finished steps did (`lifeboat job show`), then start it again if needed."},
                StepState.INTERRUPTED)
            interrupted.append(job)
        if interrupted:
            self.store.save_many(interrupted)
        self.store.prune(self.keep)
        self.jobs = {j.id: j for j in self.store.load()}
        return interrupted

    async def stop(self) -> None:
        """Stop: jobs still queued or running end ``interrupted`` (stored), nothing is left running."""
        self._stopping = True
        for key, q in self._queues.items():
            while q:
                job = self.jobs.get(q.popleft())
                if job is not None and job.state == JobState.QUEUED:
                    self._finish(job, JobState.INTERRUPTED, self._interrupted_error("before it started"))
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # queries ---------------------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            raise NotFound(f"no job {job_id!r}", code="LB_UNKNOWN_JOB",
                           advice="List the appliance's jobs with `lifeboat jobs --home DIR`.")
        return job

    def list(self, target: str | None = None, *, active_only: bool = False) -> list[Job]:
        """Jobs oldest first; of one target only if given; unfinished only with ``active_only``."""
        return [j for j in self.jobs.values()
                if (target is None or j.target == target) and not (active_only and j.finished)]

    def running(self, target: str | None) -> Job | None:
        job = self.jobs.get(self._active.get(target or "", ""))
        return job if job is not None and not job.finished else None

    def exception(self, job_id: str) -> BaseException | None:
        """The exception a failed job's step raised (in-process callers re-raise it; not stored)."""
        return self._exceptions.get(job_id)

    # operations ------------------------------------------------------------------------------------------
    def submit(self, kind: str, target: str | None, plan: Plan, *, title: str = "",
               result: dict[str, Any] | None = None) -> Job:
        """Queue a planned job on ``target``'s queue and return it (state ``queued``, or ``running`` at once when
        the machine is free)."""
        if self._stopping:
            raise Conflict("the appliance is stopping", advice="Start the job again once the appliance runs.")
        plan.validate()
        now = time.time()
        steps = [Step(n, t, 0, 0.0, StepState.SUCCEEDED, 1.0, started=now, ended=now) for n, t in plan.done]
        first = 1 if plan.done else 0
        for gi, group in enumerate(plan.groups):
            steps += [Step(s.name, s.title, first + gi, s.weight) for s in group]
        job = Job(new_job_id(), str(kind.value if hasattr(kind, "value") else kind), target, title or str(kind),
                  steps=steps, result=dict(result or {}), created=now)
        job.recompute_progress()
        self.jobs[job.id] = job
        self._plans[job.id] = plan
        self._trim_memory()
        self._changed(job)
        self._queues.setdefault(target or "", deque()).append(job.id)
        self._kick(target or "")
        return job

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued, running or paused job; returns it once it has ended ``cancelled``."""
        job = self.get(job_id)
        if job.finished:
            raise Conflict(f"job {job_id} has already ended ({job.state.value})", code="LB_JOB_FINISHED",
                           advice="Only queued, running or paused jobs can be cancelled.")
        if job.state == JobState.QUEUED and job.id not in self._tasks:
            q = self._queues.get(job.target or "")
            if q is not None and job.id in q:
                q.remove(job.id)
            self._finish(job, JobState.CANCELLED, self._cancelled_error())
            return job
        self._cancel_requested.add(job.id)
        task = self._tasks.get(job.id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return job

    def resume(self, job_id: str, by: str | None = None) -> Job:
        """Let every step of the job that waits for an operator continue. ``by`` (the operator, when known) is
        recorded in the job's ``result["resumed"]`` with the steps it resumed (recovery-plan reports name who
        resumed what)."""
        job = self.get(job_id)
        if job.state != JobState.PAUSED:
            raise Conflict(f"job {job_id} is not waiting for an operator ({job.state.value})",
                           code="LB_JOB_NOT_PAUSED", advice="Only a job in state paused-for-operator can be resumed.")
        if by is not None:
            job.result.setdefault("resumed", []).append(
                {"by": by, "at": time.time(), "steps": [s.name for s in job.steps if s.state == StepState.PAUSED]})
        ev = self._resume.pop(job.id, None)
        if ev is not None:
            ev.set()
        return job

    async def wait(self, job_id: str, until: Callable[[Job], bool] | None = None) -> Job:
        """Await the job's end, or the first change after which ``until(job)`` is true."""
        job = self.get(job_id)
        pred: Callable[[Job], bool] = until or (lambda j: j.finished)
        if pred(job) or job.finished:
            return job
        fut: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        entry = (job_id, pred, fut)
        self._waiters.append(entry)
        try:
            return await fut
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    # running ---------------------------------------------------------------------------------------------
    def _kick(self, key: str) -> None:
        if key in self._active or self._stopping:
            return
        q = self._queues.get(key)
        while q:
            job = self.jobs.get(q.popleft())
            if job is None or job.state != JobState.QUEUED:
                continue
            self._active[key] = job.id
            task = asyncio.get_running_loop().create_task(self._run(job, key), name=f"job-{job.kind}-{job.id}")
            self._tasks[job.id] = task
            # The slot is freed here, not in _run: a task cancelled before its first step never runs _run's body.
            task.add_done_callback(functools.partial(self._task_done, job, key))
            return

    def _task_done(self, job: Job, key: str, _task: object = None) -> None:
        if not job.finished:   # cancelled before it started
            stop = self._stopping and job.id not in self._cancel_requested
            self._finish(job, JobState.INTERRUPTED if stop else JobState.CANCELLED,
                         self._interrupted_error("before it started") if stop else self._cancelled_error())
        self._cancel_requested.discard(job.id)
        self._tasks.pop(job.id, None)
        self._resume.pop(job.id, None)
        if self._active.get(key) == job.id:
            del self._active[key]
        self._kick(key)

    async def _run(self, job: Job, key: str) -> None:
        plan = self._plans.pop(job.id)
        job.state, job.started = JobState.RUNNING, time.time()
        self._changed(job)
        try:
            for group in plan.groups:
                specs = [(s, job.step(s.name)) for s in group]
                if len(specs) == 1:
                    await self._run_step(job, *specs[0])
                    continue
                try:
                    async with asyncio.TaskGroup() as tg:
                        for spec, step in specs:
                            tg.create_task(self._run_step(job, spec, step), name=f"job-{job.id}-{spec.name}")
                except BaseExceptionGroup as eg:
                    failed = [e for e in eg.exceptions if isinstance(e, _StepFailed)]
                    if failed:
                        raise failed[0] from None
                    raise
        except _StepFailed as f:
            self._exceptions[job.id] = f.cause
            self._finish(job, JobState.FAILED, f.step.error)
        except asyncio.CancelledError:
            if self._stopping and job.id not in self._cancel_requested:
                self._finish(job, JobState.INTERRUPTED, self._interrupted_error("while it ran"))
            else:
                self._finish(job, JobState.CANCELLED, self._cancelled_error())
        except Exception as exc:  # a bug in the manager itself: the job fails, the appliance goes on
            log.exception("job %s", job.id)
            self._exceptions[job.id] = exc
            self._finish(job, JobState.FAILED, {"code": "LB_INTERNAL", "message": str(exc),
                                                "advice": "See the appliance log."})
        else:
            self._finish(job, JobState.SUCCEEDED, None)

    async def _run_step(self, job: Job, spec: StepSpec, step: Step) -> None:
        step.state, step.started = StepState.RUNNING, time.time()
        self._changed(job, step)
        try:
            await spec.run(RunningStep(self, job, step))
        except asyncio.CancelledError:
            stop = self._stopping and job.id not in self._cancel_requested
            self._end_step(job, step, StepState.INTERRUPTED if stop else StepState.CANCELLED)
            raise
        except Exception as exc:
            if not isinstance(exc, LifeboatError):
                log.exception("job %s step %s", job.id, step.name)
            step.error = _error_of(exc, spec)
            self._end_step(job, step, StepState.FAILED)
            raise _StepFailed(step, exc) from exc
        step.progress = 1.0
        self._end_step(job, step, StepState.SUCCEEDED)

    def _end_step(self, job: Job, step: Step, state: StepState) -> None:
        step.state, step.ended = state, time.time()
        job.recompute_progress()
        if job.state == JobState.PAUSED and not any(s.state == StepState.PAUSED for s in job.steps):
            job.state = JobState.RUNNING
        self._changed(job, step)

    def _step_progress(self, job: Job, step: Step, fraction: float, message: str | None) -> None:
        step.progress = max(0.0, min(1.0, float(fraction)))
        if message is not None:
            step.message = job.message = message
        job.recompute_progress()
        self.bus.emit(JobProgress(job.id, job.kind, job.target, job.progress, False, None, message or ""))
        now = time.monotonic()
        if now - self._last_store.get(job.id, 0.0) >= PROGRESS_SECONDS:
            self._store(job)

    async def _pause(self, job: Job, step: Step, message: str) -> None:
        ev = self._resume.get(job.id)
        if ev is None:
            ev = self._resume[job.id] = asyncio.Event()
        step.state, step.message, job.message = StepState.PAUSED, message, message
        job.state = JobState.PAUSED
        self._changed(job, step)
        await ev.wait()
        step.state = StepState.RUNNING
        if not any(s.state == StepState.PAUSED for s in job.steps):
            job.state = JobState.RUNNING
        self._changed(job, step)

    # ending ----------------------------------------------------------------------------------------------
    @staticmethod
    def _cancelled_error() -> dict[str, Any]:
        return {"code": CANCELLED_CODE, "message": "the job was cancelled",
                "advice": "Start it again if it is still needed."}

    @staticmethod
    def _interrupted_error(when: str) -> dict[str, Any]:
        return {"code": INTERRUPTED_CODE, "message": f"the appliance stopped {when}; the job was not run again",
                "advice": "Check what its finished steps did (`lifeboat job show`), then start it again if needed."}

    @staticmethod
    def _end_fields(job: Job, state: JobState, error: dict[str, Any] | None, open_steps: StepState) -> None:
        now = time.time()
        for s in job.steps:
            if s.state in (StepState.RUNNING, StepState.PAUSED):
                s.state, s.ended = open_steps, now
            elif s.state == StepState.PENDING:
                s.state = StepState.SKIPPED
        job.state, job.error, job.ended = state, error, now
        if state == JobState.SUCCEEDED:
            job.progress = 1.0
        elif error is not None:
            job.message = error.get("message", job.message)

    def _finish(self, job: Job, state: JobState, error: dict[str, Any] | None) -> None:
        self._end_fields(job, state, error,
                         StepState.INTERRUPTED if state == JobState.INTERRUPTED else StepState.CANCELLED)
        self._plans.pop(job.id, None)
        self._changed(job)
        self.bus.emit(JobProgress(job.id, job.kind, job.target, job.progress, True, job.error,
                                  job.message if state == JobState.SUCCEEDED else ""))
        self._last_store.pop(job.id, None)

    def _store(self, job: Job) -> None:
        self._last_store[job.id] = time.monotonic()
        try:
            self.store.save(job)
        except Exception:  # a full disk must not break the job itself; the log says why history is stale
            log.exception("storing job %s", job.id)

    def _changed(self, job: Job, step: Step | None = None) -> None:
        self._store(job)
        self.bus.emit(JobChanged(job.id, job.kind, job.target, job.state.value,
                                 step.name if step else None, step.state.value if step else None, job.to_dict()))
        for entry in list(self._waiters):
            jid, pred, fut = entry
            if jid == job.id and not fut.done() and (job.finished or pred(job)):
                fut.set_result(job)

    def _trim_memory(self) -> None:
        if len(self.jobs) <= self.keep + self.keep // 5:
            return
        finished = [j for j in self.jobs.values() if j.finished]
        for j in finished[:len(self.jobs) - self.keep]:
            self.jobs.pop(j.id, None)
            self._exceptions.pop(j.id, None)
