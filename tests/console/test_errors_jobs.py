"""Errors: expected ones become notifications with code and advice, bugs become crash reports with versions.
Jobs: progress, failure, cancel, and engine jobs as rows (bound to the action that started them, or listed)."""

from __future__ import annotations

import asyncio
import sys
import threading

from console.bridge import JobChanged, JobProgress
from console.errors import NotificationCenter, install_excepthook
from console.jobs import CANCELLED, FAILED, FINISHED, JobManager, JobsModel, JobStepsModel
from engine.errors import Conflict, StorageError


def test_expected_error_is_a_notification_with_code_and_advice(qapp) -> None:
    c = NotificationCenter()
    notes, crashes = [], []
    c.notified.connect(notes.append)
    c.crashed.connect(crashes.append)
    c.handle(StorageError("vault full", advice="Free space in the vault folder."), "protect vm1")
    assert crashes == [] and len(notes) == 1
    n = notes[0]
    assert n.code == "LB_STORAGE" and n.advice == "Free space in the vault folder." and "protect vm1" in n.message


def test_alert_repeats_are_deduplicated(qapp) -> None:
    from console.errors import Notification
    c = NotificationCenter()
    seen = []
    c.notified.connect(seen.append)
    for _ in range(5):
        c.notify(Notification("error", "append failed", "LB_STORAGE", machine="vm1"), dedupe_seconds=60)
    c.notify(Notification("error", "append failed", "LB_STORAGE", machine="vm2"), dedupe_seconds=60)
    assert len(seen) == 2


def test_unexpected_error_is_a_crash_report_with_versions(qapp) -> None:
    c = NotificationCenter()
    crashes = []
    c.crashed.connect(crashes.append)
    try:
        {}["missing"]
    except KeyError as exc:
        c.handle(exc, "a slot")
    assert len(crashes) == 1
    report = crashes[0]
    for needle in ("KeyError", "'missing'", "PySide6-Essentials: 6.11.3", "python:", "context: a slot", "Qt:"):
        assert needle in report


def test_excepthook_routes_threads_and_main(qapp, qtbot) -> None:
    c = NotificationCenter()
    crashes, notes = [], []
    c.crashed.connect(crashes.append)
    c.notified.connect(notes.append)
    undo = install_excepthook(c)
    try:
        t = threading.Thread(target=lambda: 1 / 0, name="worker")
        t.start()
        t.join()
        try:
            raise Conflict("drill already running")
        except Conflict:
            sys.excepthook(*sys.exc_info())
        qtbot.waitUntil(lambda: len(crashes) == 1, timeout=2000)
    finally:
        undo()
    assert "ZeroDivisionError" in crashes[0] and "thread worker" in crashes[0]
    assert notes and notes[0].code == "LB_CONFLICT"


def _ejob(jid: str, state: str, *, kind: str = "test-failover", machine: str | None = "vm1", progress: float = 0.0,
          error: dict | None = None, steps: tuple = ()) -> JobChanged:
    d = {"id": jid, "operation": kind, "kind": kind, "machine": machine, "title": f"{kind} {jid}", "state": state,
         "progress": progress, "finished": state in ("succeeded", "failed", "cancelled", "interrupted"),
         "error": error, "result": {}, "message": "", "created": 1.0,
         "steps": [{"name": n, "title": n.title(), "group": g, "state": st, "progress": 0.0, "message": "",
                    "started": None, "ended": None, "error": None} for n, g, st in steps]}
    return JobChanged(jid, kind, machine, state, None, None, d)


async def test_jobs_finish_fail_cancel_and_engine_jobs(qapp) -> None:
    notes = NotificationCenter()
    jm = JobManager(notes)
    model = JobsModel(jm)
    steps = JobStepsModel(jm)
    got_notes = []
    notes.notified.connect(got_notes.append)
    engine_calls: list[tuple[str, str]] = []

    async def engine_cancel(jid: str) -> dict:
        engine_calls.append(("cancel", jid))
        jm.on_engine_job(_ejob(jid, "cancelled", error={"code": "LB_CANCELLED", "message": "cancelled"}))
        return {}

    async def engine_resume(jid: str) -> dict:
        engine_calls.append(("resume", jid))
        return {}
    jm.set_engine_actions(engine_cancel, engine_resume)

    async def ok(job):
        jm.update(job, 0.5, "half")
        await asyncio.sleep(0.01)
        return 42

    async def bad(job):
        raise Conflict("busy", advice="Wait.")

    async def slow(job):
        await asyncio.sleep(30)

    async def engine(job):
        # the engine queues and starts the job while the request is in flight: the events bind it to this row
        jm.on_engine_job(_ejob("e1", "queued", steps=(("open-views", 0, "pending"), ("export-disks", 1, "pending"))))
        jm.on_engine_job(_ejob("e1", "running", steps=(("open-views", 0, "succeeded"), ("export-disks", 1, "running"))))
        job.engine_job = "e1"
        return "started"

    j1 = jm.start("ok", "t", "vm1", ok)
    j2 = jm.start("bad", "t", "vm1", bad)
    j3 = jm.start("slow", "t", None, slow)
    j4 = jm.start("export", "test-failover", "vm1", engine, engine_kind="test-failover")
    assert (await jm.wait(j1)).state == FINISHED and j1.result == 42 and j1.progress == 1.0
    assert (await jm.wait(j2)).state == FAILED and got_notes[-1].code == "LB_CONFLICT"
    await asyncio.sleep(0.01)
    assert j3.cancellable
    jm.cancel(j3)
    assert (await jm.wait(j3)).state == CANCELLED
    await asyncio.sleep(0.01)
    assert j4.state == "running" and j4.result == "started" and model.rowCount() == 4   # no second row for e1
    assert [s.state for s in j4.steps] == ["succeeded", "running"]
    steps.set_job(j4)
    assert steps.rowCount() == 2 and steps.index(1, 1).data() == "running" and "Export" in steps.index(1, 0).data()
    jm.on_engine_progress(JobProgress("e1", "test-failover", "vm1", 0.4))
    assert j4.progress == 0.4 and not j4.done and j4.cancellable
    jm.on_engine_job(_ejob("e1", "failed", progress=0.6,
                           error={"code": "LB_STORAGE", "message": "disk full", "advice": "free"},
                           steps=(("open-views", 0, "succeeded"), ("export-disks", 1, "failed"))))
    assert j4.state == FAILED and got_notes[-1].code == "LB_STORAGE" and "LB_STORAGE" in j4.error
    assert steps.index(1, 1).data() == "failed"
    assert model.rowCount() == 4 and model.index(0, 2).data() == FINISHED

    # An engine job started elsewhere (the CLI, a recovery plan) is a row too: queued, paused, resumed, cancelled.
    jm.on_engine_job(_ejob("e2", "queued", kind="recovery-plan", machine="plan-a",
                           steps=(("boot-db", 0, "pending"), ("boot-web", 0, "pending"))))
    assert model.rowCount() == 5
    j5 = model.job_at(4)
    assert j5.engine_job == "e2" and j5.state == "queued" and not j5.done and j5.cancellable
    jm.on_engine_job(_ejob("e2", "paused-for-operator", kind="recovery-plan", machine="plan-a",
                           steps=(("boot-db", 0, "paused-for-operator"), ("boot-web", 0, "running"))))
    assert j5.resumable and model.index(4, 2).data() == "paused-for-operator"
    steps.set_job(j5)
    assert "(parallel)" in steps.index(0, 0).data()
    jm.resume(j5)
    await asyncio.sleep(0.01)
    jm.cancel(j5)
    assert (await jm.wait(j5)).state == CANCELLED
    assert engine_calls == [("resume", "e2"), ("cancel", "e2")]
    # the history listed at start-up: ended jobs, an interrupted one among them, without notifications
    before = len(got_notes)
    jm.load_engine_jobs([_ejob("e3", "interrupted", error={"code": "LB_INTERRUPTED", "message": "stopped"}).job,
                         _ejob("e2", "cancelled").job])
    assert model.rowCount() == 6 and model.job_at(5).state == "interrupted" and len(got_notes) == before
