"""Errors: expected ones become notifications with code and advice, bugs become crash reports with versions.
Jobs: progress, failure, cancel, and following an engine job to its end."""

from __future__ import annotations

import asyncio
import sys
import threading

from console.bridge import JobProgress
from console.errors import NotificationCenter, install_excepthook
from console.jobs import CANCELLED, FAILED, FINISHED, JobManager, JobsModel
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


async def test_jobs_finish_fail_cancel_and_follow(qapp) -> None:
    notes = NotificationCenter()
    jm = JobManager(notes)
    model = JobsModel(jm)
    got_notes = []
    notes.notified.connect(got_notes.append)

    async def ok(job):
        jm.update(job, 0.5, "half")
        await asyncio.sleep(0.01)
        return 42

    async def bad(job):
        raise Conflict("busy", advice="Wait.")

    async def slow(job):
        await asyncio.sleep(30)

    async def engine(job):
        job.engine_job = "e1"
        return "started"

    j1 = jm.start("ok", "t", "vm1", ok)
    j2 = jm.start("bad", "t", "vm1", bad)
    j3 = jm.start("slow", "t", None, slow)
    j4 = jm.start("export", "t", "vm1", engine, follow_engine=True)
    assert (await jm.wait(j1)).state == FINISHED and j1.result == 42 and j1.progress == 1.0
    assert (await jm.wait(j2)).state == FAILED and got_notes[-1].code == "LB_CONFLICT"
    await asyncio.sleep(0.01)
    assert j3.cancellable
    jm.cancel(j3)
    assert (await jm.wait(j3)).state == CANCELLED
    await asyncio.sleep(0.01)
    assert j4.state == "running" and j4.result == "started"
    jm.on_engine_progress(JobProgress("e1", "test-failover", "vm1", 0.4))
    assert j4.progress == 0.4 and not j4.done
    jm.on_engine_progress(JobProgress("e1", "test-failover", "vm1", 0.6, True,
                                      {"code": "LB_STORAGE", "message": "disk full", "advice": "free"}))
    assert j4.state == FAILED and got_notes[-1].code == "LB_STORAGE"
    assert model.rowCount() == 4 and model.index(0, 2).data() == FINISHED
