"""Long actions as jobs: console actions (asyncio tasks) and engine jobs (engine/jobs), in one list.

A job is plain data (``ConsoleJob``) owned by the ``JobManager``; the Jobs view is a table model over them and
``JobStepsModel`` shows one job's steps. Every engine job is a row, built and updated from the engine's
``JobChanged`` events (and listed at start-up, so the history and jobs marked interrupted show too), whoever
started it. A console action that starts an engine job (``engine_kind``) *is* that job's row: the engine job is
bound to it while the action's request is in flight, and the row ends when the engine job ends. Errors go to the
``NotificationCenter``: expected ones as notifications, bugs as crash reports.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QObject, QPersistentModelIndex, Qt, Signal

from .bridge import JobChanged, JobProgress
from .errors import Notification, NotificationCenter

log = logging.getLogger(__name__)

RUNNING, FINISHED, FAILED, CANCELLED = "running", "finished", "failed", "cancelled"
QUEUED, PAUSED, INTERRUPTED = "queued", "paused-for-operator", "interrupted"
ACTIVE = frozenset({RUNNING, QUEUED, PAUSED})
# engine job state -> console job state
_ENGINE_STATES = {"queued": QUEUED, "running": RUNNING, "paused-for-operator": PAUSED, "succeeded": FINISHED,
                  "failed": FAILED, "cancelled": CANCELLED, "interrupted": INTERRUPTED}


@dataclass(frozen=True, slots=True)
class JobStep:
    """One step of an engine job; steps sharing ``group`` ran in parallel."""
    name: str
    title: str
    group: int
    state: str
    progress: float = 0.0
    message: str = ""
    started: float | None = None
    ended: float | None = None
    error: str = ""

    @classmethod
    def from_engine(cls, d: dict[str, Any]) -> JobStep:
        err = d.get("error") or None
        return cls(str(d.get("name", "")), str(d.get("title") or d.get("name", "")), int(d.get("group", 0)),
                   str(d.get("state", "")), float(d.get("progress") or 0.0), str(d.get("message") or ""),
                   d.get("started"), d.get("ended"),
                   f"{err.get('code', 'LB_ERROR')}: {err.get('message', '')}" if err else "")


@dataclass(slots=True)
class ConsoleJob:
    """One long action as the operator sees it."""
    id: int
    title: str
    kind: str
    machine: str | None
    state: str = RUNNING
    progress: float | None = None       # 0..1, None while unknown
    message: str = ""
    started: float = field(default_factory=time.time)
    ended: float | None = None
    result: Any = None
    error: str = ""
    engine_job: str | None = None
    engine_kind: str | None = None       # the kind of engine job this console action starts (binds its row)
    steps: tuple[JobStep, ...] = ()
    cancel: Callable[[], Any] | None = None  # task.cancel, or a coroutine function (engine cancel / clean-up)
    resume: Callable[[], Any] | None = None  # engine resume, while paused for an operator

    @property
    def cancellable(self) -> bool:
        return not self.done and self.cancel is not None

    @property
    def resumable(self) -> bool:
        return self.state == PAUSED and self.resume is not None

    @property
    def done(self) -> bool:
        return self.state not in ACTIVE


Work = Callable[["ConsoleJob"], Awaitable[Any]]


EngineCall = Callable[[str], Awaitable[Any]]


class JobManager(QObject):
    """Starts, mirrors and cancels jobs; emits ``changed(job)`` on every change and ``finished(job)`` at the end."""

    added = Signal(object)     # ConsoleJob
    changed = Signal(object)   # ConsoleJob
    finished = Signal(object)  # ConsoleJob

    def __init__(self, notifications: NotificationCenter, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.notes = notifications
        self.jobs: list[ConsoleJob] = []
        self._ids = itertools.count(1)
        self._tasks: dict[int, asyncio.Task[Any]] = {}
        self._by_engine: dict[str, ConsoleJob] = {}
        self._engine_seen: dict[str, dict[str, Any]] = {}   # newest wire form of each engine job
        self._engine_cancel: EngineCall | None = None
        self._engine_resume: EngineCall | None = None

    def set_engine_actions(self, cancel: EngineCall | None, resume: EngineCall | None) -> None:
        """How to cancel and resume an engine job by id (the facade's); rows get Cancel/Resume from these."""
        self._engine_cancel, self._engine_resume = cancel, resume

    def start(self, title: str, kind: str, machine: str | None, work: Work, *, cancellable: bool = True,
              engine_kind: str | None = None) -> ConsoleJob:
        """Run ``work(job)`` as a task. With ``engine_kind`` the action starts an engine job of that kind on
        ``machine``: the row becomes that engine job's (``work`` may also set ``job.engine_job``) and ends with it."""
        job = ConsoleJob(next(self._ids), title, kind, machine, engine_kind=engine_kind)
        self.jobs.append(job)
        task = asyncio.ensure_future(self._run(job, work))
        self._tasks[job.id] = task
        if cancellable:
            job.cancel = task.cancel
        self.added.emit(job)
        return job

    async def _run(self, job: ConsoleJob, work: Work) -> None:
        task_cancel = job.cancel
        try:
            job.result = await work(job)
        except asyncio.CancelledError:
            self._end(job, CANCELLED, "cancelled")
            return
        except Exception as exc:
            note = self._fail(job, exc)
            if note is None:
                self.notes.crash(type(exc), exc, exc.__traceback__, f"job {job.title}")
            return
        finally:
            self._tasks.pop(job.id, None)
        if job.engine_job and not job.done:
            self._by_engine.setdefault(job.engine_job, job)
            if job.cancel is task_cancel:   # the task is over; cancelling now means the engine job
                job.cancel = None
            seen = self._engine_seen.get(job.engine_job)
            if seen is None:
                self.changed.emit(job)
                return
            self._apply(job, seen, notify=True)
            return
        if job.state == RUNNING:
            self._end(job, FINISHED, job.message or "done")

    def _fail(self, job: ConsoleJob, exc: BaseException) -> Notification | None:
        from .errors import notification_for
        note = notification_for(exc, job.title)
        if note is not None and note.machine is None and job.machine:
            note = dataclasses.replace(note, machine=job.machine)
        job.error = note.title if note else f"{type(exc).__name__}: {exc}"
        self._end(job, FAILED, job.error)
        if note is not None:
            self.notes.notify(note)
        return note

    def _end(self, job: ConsoleJob, state: str, message: str) -> None:
        if job.done:
            return
        job.state, job.message, job.ended = state, message, time.time()
        if state == FINISHED:
            job.progress = 1.0
        job.cancel = job.resume = None
        self.changed.emit(job)
        self.finished.emit(job)

    def update(self, job: ConsoleJob, progress: float | None = None, message: str | None = None) -> None:
        """Report progress from inside ``work``."""
        if progress is not None:
            job.progress = max(0.0, min(1.0, progress))
        if message is not None:
            job.message = message
        self.changed.emit(job)

    # engine jobs -----------------------------------------------------------------------------------------
    def on_engine_job(self, ev: JobChanged) -> None:
        """Slot for ``EngineBridge.job_changed``: create or update the engine job's row."""
        self.engine_job_state(ev.job or {"id": ev.job_id, "kind": ev.kind, "machine": ev.machine, "state": ev.state})

    def load_engine_jobs(self, jobs: list[dict[str, Any]]) -> None:
        """The engine's job list at start-up (history included): rows for those not shown yet, no notifications."""
        for d in jobs:
            if d.get("id") not in self._by_engine:
                self.engine_job_state(d, notify=False)

    def engine_job_state(self, d: dict[str, Any], *, notify: bool = True) -> ConsoleJob:
        jid = str(d["id"])
        self._engine_seen[jid] = d
        job = self._by_engine.get(jid) or self._claim(d)
        if job is None:
            kind = str(d.get("kind") or d.get("operation") or "job")
            job = ConsoleJob(next(self._ids), str(d.get("title") or kind), kind, d.get("machine"), engine_job=jid,
                             engine_kind=kind, started=float(d.get("created") or time.time()))
            self.jobs.append(job)
            self._by_engine[jid] = job
            self.added.emit(job)
        if job.id in self._tasks:   # the action's request is still in flight: it ends the row when it returns
            self._update_fields(job, d)
            self.changed.emit(job)
            return job
        self._apply(job, d, notify=notify)
        return job

    def _claim(self, d: dict[str, Any]) -> ConsoleJob | None:
        for j in self.jobs:
            if (j.engine_job is None and j.engine_kind == d.get("kind") and j.machine == d.get("machine")
                    and j.id in self._tasks):
                j.engine_job = str(d["id"])
                self._by_engine[j.engine_job] = j
                return j
        return None

    def _update_fields(self, job: ConsoleJob, d: dict[str, Any]) -> None:
        if d.get("progress") is not None:
            job.progress = float(d["progress"])
        job.steps = tuple(JobStep.from_engine(s) for s in d.get("steps") or ())
        if d.get("message"):
            job.message = str(d["message"])

    def _apply(self, job: ConsoleJob, d: dict[str, Any], *, notify: bool) -> None:
        self._update_fields(job, d)
        state = _ENGINE_STATES.get(str(d.get("state")), RUNNING if not d.get("finished") else FINISHED)
        jid = job.engine_job or str(d["id"])
        if state in ACTIVE:
            if job.done:
                return
            job.state = state
            if self._engine_cancel is not None and job.cancel is None:
                job.cancel = lambda: self._engine_cancel(jid) if self._engine_cancel else None
            job.resume = ((lambda: self._engine_resume(jid) if self._engine_resume else None)
                          if state == PAUSED and self._engine_resume is not None else None)
            self.changed.emit(job)
            return
        err = d.get("error") or None
        if state == FINISHED:
            self._end(job, FINISHED, job.message or "done")
            return
        job.error = f"{err.get('code', 'LB_ERROR')}: {err.get('message', '')}" if err else state
        if job.done:   # a row already ended (history loaded twice, or a console cancel won the race)
            return
        self._end(job, state, job.error)
        if notify and state == FAILED and err:
            self.notes.notify(Notification("error", f"{job.title}: {err.get('message', '')}",
                                           err.get("code", ""), err.get("advice", ""), job.machine))

    def on_engine_progress(self, ev: JobProgress) -> None:
        """Slot for ``EngineBridge.job_progress``: progress of an engine job's row (its end comes as ``JobChanged``)."""
        job = self._by_engine.get(ev.job_id)
        if job is None or job.done:
            return
        job.progress = ev.progress
        if ev.message:
            job.message = ev.message
        self.changed.emit(job)

    def cancel(self, job: ConsoleJob) -> None:
        """Cancel a job: its task, or the engine job (or clean-up) through the job's ``cancel``."""
        if not job.cancellable or job.cancel is None:
            return
        res = job.cancel()
        if asyncio.iscoroutine(res) or isinstance(res, asyncio.Future):
            async def finish() -> None:
                try:
                    await res
                except Exception as exc:
                    self.notes.handle(exc, f"cancel {job.title}")
                    return
                self._end(job, CANCELLED, "cancelled")
            asyncio.ensure_future(finish())

    def resume(self, job: ConsoleJob) -> None:
        """Let an engine job paused for an operator go on (its row follows the engine's events)."""
        if not job.resumable or job.resume is None:
            return
        res = job.resume()
        if asyncio.iscoroutine(res) or isinstance(res, asyncio.Future):
            async def finish() -> None:
                try:
                    await res
                except Exception as exc:
                    self.notes.handle(exc, f"resume {job.title}")
            asyncio.ensure_future(finish())

    def running(self) -> list[ConsoleJob]:
        return [j for j in self.jobs if not j.done]

    async def wait(self, job: ConsoleJob) -> ConsoleJob:
        """Await the end of a job (for callers and tests; never blocks the loop)."""
        if job.done:
            return job
        fut: asyncio.Future[ConsoleJob] = asyncio.get_running_loop().create_future()

        def on_finished(j: ConsoleJob) -> None:
            if j is job and not fut.done():
                fut.set_result(j)
        self.finished.connect(on_finished)
        try:
            return await fut
        finally:
            self.finished.disconnect(on_finished)

    async def shutdown(self) -> None:
        for t in list(self._tasks.values()):
            t.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)


JOB_COLUMNS = ("Job", "Machine", "State", "Progress", "Message", "Started")


class JobsModel(QAbstractTableModel):
    """The jobs of a ``JobManager``, newest last; rows change in place."""

    JOB_ROLE = Qt.ItemDataRole.UserRole + 1
    PROGRESS_ROLE = Qt.ItemDataRole.UserRole + 2

    def __init__(self, manager: JobManager, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.manager = manager
        self._rows: list[ConsoleJob] = []
        manager.added.connect(self._added)
        manager.changed.connect(self._changed)

    def _added(self, job: ConsoleJob) -> None:
        self.beginInsertRows(QModelIndex(), len(self._rows), len(self._rows))
        self._rows.append(job)
        self.endInsertRows()

    def _changed(self, job: ConsoleJob) -> None:
        for i, j in enumerate(self._rows):
            if j is job:
                self.dataChanged.emit(self.index(i, 0), self.index(i, len(JOB_COLUMNS) - 1))
                return

    def job_at(self, row: int) -> ConsoleJob:
        return self._rows[row]

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(JOB_COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation,  # noqa: N802
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return JOB_COLUMNS[section]
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        job = self._rows[index.row()]
        if role == self.JOB_ROLE:
            return job
        if role == self.PROGRESS_ROLE:
            return job.progress
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        col = index.column()
        if col == 0:
            return job.title
        if col == 1:
            return job.machine or "—"
        if col == 2:
            return job.state
        if col == 3:
            return "—" if job.progress is None else f"{100 * job.progress:.0f}%"
        if col == 4:
            return job.message
        return time.strftime("%H:%M:%S", time.localtime(job.started))


STEP_COLUMNS = ("Step", "State", "Progress", "Started", "Ended", "Message")


class JobStepsModel(QAbstractTableModel):
    """The steps of one job (``set_job``), in order; a step's group number prefixes its title when steps ran in
    parallel. Follows the manager's ``changed`` for that job."""

    def __init__(self, manager: JobManager, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.job: ConsoleJob | None = None
        self._steps: tuple[JobStep, ...] = ()
        manager.changed.connect(self._changed)

    def set_job(self, job: ConsoleJob | None) -> None:
        self.beginResetModel()
        self.job = job
        self._steps = job.steps if job else ()
        self.endResetModel()

    def _changed(self, job: ConsoleJob) -> None:
        if job is self.job:
            if len(job.steps) != len(self._steps):
                self.set_job(job)
                return
            self._steps = job.steps
            if self._steps:
                self.dataChanged.emit(self.index(0, 0), self.index(len(self._steps) - 1, len(STEP_COLUMNS) - 1))

    def step_at(self, row: int) -> JobStep:
        return self._steps[row]

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self._steps)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(STEP_COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation,  # noqa: N802
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return STEP_COLUMNS[section]
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        st = self._steps[index.row()]
        if role == JobsModel.PROGRESS_ROLE:
            return st.progress if st.state == "running" else None
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        col = index.column()
        if col == 0:
            parallel = sum(1 for s in self._steps if s.group == st.group) > 1
            return f"{st.group}. {st.title}" + (" (parallel)" if parallel else "")
        if col == 1:
            return st.state
        if col == 2:
            return f"{100 * st.progress:.0f}%"
        if col in (3, 4):
            t = st.started if col == 3 else st.ended
            return time.strftime("%H:%M:%S", time.localtime(t)) if t else "—"
        return st.error or st.message
