"""Long actions as jobs: each one an asyncio task with a title, progress and (where the engine allows) cancel.

A job is plain data (``ConsoleJob``) owned by the ``JobManager``; the Jobs view is a table model over them. A job
whose work continues inside the engine (an export drill reports ``JobProgress``) is *followed*: the manager maps
the engine's job id to the console job and finishes it on the engine's final event. Errors go to the
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

from .bridge import JobProgress
from .errors import Notification, NotificationCenter

log = logging.getLogger(__name__)

RUNNING, FINISHED, FAILED, CANCELLED = "running", "finished", "failed", "cancelled"


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
    cancel: Callable[[], Any] | None = None  # task.cancel, or a coroutine function (engine clean-up)

    @property
    def cancellable(self) -> bool:
        return self.state == RUNNING and self.cancel is not None

    @property
    def done(self) -> bool:
        return self.state != RUNNING


Work = Callable[["ConsoleJob"], Awaitable[Any]]


class JobManager(QObject):
    """Starts, follows and cancels jobs; emits ``changed(job)`` on every change and ``finished(job)`` at the end."""

    added = Signal(object)     # ConsoleJob
    changed = Signal(object)   # ConsoleJob
    finished = Signal(object)  # ConsoleJob

    def __init__(self, notifications: NotificationCenter, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.notes = notifications
        self.jobs: list[ConsoleJob] = []
        self._ids = itertools.count(1)
        self._tasks: dict[int, asyncio.Task[Any]] = {}
        self._followed: dict[str, ConsoleJob] = {}

    def start(self, title: str, kind: str, machine: str | None, work: Work, *, cancellable: bool = True,
              follow_engine: bool = False) -> ConsoleJob:
        """Run ``work(job)`` as a task. With ``follow_engine`` the job stays running after ``work`` returns, until
        the engine's ``JobProgress`` for ``job.engine_job`` says finished (``work`` must set ``engine_job``)."""
        job = ConsoleJob(next(self._ids), title, kind, machine)
        self.jobs.append(job)
        task = asyncio.ensure_future(self._run(job, work, follow_engine))
        self._tasks[job.id] = task
        if cancellable:
            job.cancel = task.cancel
        self.added.emit(job)
        return job

    async def _run(self, job: ConsoleJob, work: Work, follow: bool) -> None:
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
        if follow and job.engine_job and job.state == RUNNING:
            self._followed[job.engine_job] = job
            self.changed.emit(job)
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
        job.cancel = None
        self.changed.emit(job)
        self.finished.emit(job)

    def update(self, job: ConsoleJob, progress: float | None = None, message: str | None = None) -> None:
        """Report progress from inside ``work``."""
        if progress is not None:
            job.progress = max(0.0, min(1.0, progress))
        if message is not None:
            job.message = message
        self.changed.emit(job)

    def on_engine_progress(self, ev: JobProgress) -> None:
        """Slot for ``EngineBridge.job_progress``."""
        job = self._followed.get(ev.job_id) or next(
            (j for j in self.jobs if j.engine_job == ev.job_id and not j.done), None)
        if job is None:
            return
        job.progress = ev.progress
        if ev.message:
            job.message = ev.message
        if not ev.finished:
            self.changed.emit(job)
            return
        self._followed.pop(ev.job_id, None)
        if ev.error:
            job.error = f"{ev.error.get('code', 'LB_ERROR')}: {ev.error.get('message', '')}"
            self._end(job, FAILED, job.error)
            self.notes.notify(Notification("error", f"{job.title}: {ev.error.get('message', '')}",
                                           ev.error.get("code", ""), ev.error.get("advice", ""), job.machine))
        else:
            self._end(job, FINISHED, ev.message or "done")

    def cancel(self, job: ConsoleJob) -> None:
        """Cancel a job: its task, or the engine operation through the job's ``cancel``."""
        if not job.cancellable or job.cancel is None:
            return
        res = job.cancel()
        if asyncio.iscoroutine(res) or isinstance(res, asyncio.Future):
            async def finish() -> None:
                try:
                    await res
                except Exception as exc:
                    self.notes.handle(exc, f"cancel {job.title}")
                self._followed.pop(job.engine_job or "", None)
                self._end(job, CANCELLED, "cancelled")
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
