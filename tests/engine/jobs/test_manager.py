"""The job manager with a real SQLite file and a real event loop: queueing per machine, composite jobs with
parallel steps, pause/resume, cancel, failure codes, and a restart that marks an unfinished job interrupted."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from engine.errors import Conflict, InvalidInput, NotFound
from engine.events import EventBus, JobChanged, JobProgress
from engine.jobs import JobManager, JobState, JobStore, Plan, StepContext, StepSpec, StepState


def _open(path: Path) -> tuple[sqlite3.Connection, JobManager, list]:
    db = sqlite3.connect(str(path), isolation_level=None)
    bus = EventBus()
    seen: list = []
    bus.subscribe(seen.append)
    return db, JobManager(JobStore(db), bus), seen


@pytest.fixture
async def mgr(tmp_path):
    db, m, seen = _open(tmp_path / "state.db")
    await m.start()
    m.seen = seen  # type: ignore[attr-defined]
    yield m
    await m.stop()
    db.close()


def gate_step(name: str, log: list, gate: asyncio.Event | None = None, weight: float = 1.0) -> StepSpec:
    async def run(ctx: StepContext) -> None:
        log.append(("start", ctx.job.id, name))
        if gate is not None:
            await gate.wait()
        ctx.progress(1.0)
        log.append(("end", ctx.job.id, name))
    return StepSpec(name, name.title(), run, weight)


async def test_one_running_job_per_machine_others_queue(mgr):
    log: list = []
    gate_a = asyncio.Event()
    a1 = mgr.submit("maintenance", "vm-a", Plan.sequence(gate_step("work", log, gate_a)))
    a2 = mgr.submit("maintenance", "vm-a", Plan.sequence(gate_step("work", log)))
    b1 = mgr.submit("maintenance", "vm-b", Plan.sequence(gate_step("work", log)))
    await mgr.wait(b1.id)                       # another machine's job does not wait for vm-a
    assert b1.state == JobState.SUCCEEDED
    await asyncio.sleep(0.05)
    assert a1.state == JobState.RUNNING and a2.state == JobState.QUEUED
    assert mgr.running("vm-a") is a1
    gate_a.set()
    await mgr.wait(a2.id)
    assert [e for e in log if e[1] in (a1.id, a2.id)] == [
        ("start", a1.id, "work"), ("end", a1.id, "work"), ("start", a2.id, "work"), ("end", a2.id, "work")]
    assert a1.state == a2.state == JobState.SUCCEEDED and a2.started >= a1.ended
    d = a2.to_dict()
    for k in ("id", "operation", "machine", "progress", "finished", "error", "result"):  # the drill-era fields
        assert k in d
    assert d["finished"] is True and d["progress"] == 1.0 and d["state"] == "succeeded" and d["operation"] == "maintenance"


async def test_composite_job_runs_groups_in_order_and_members_in_parallel(mgr):
    order: list[str] = []
    both_running = asyncio.Event()
    running: set[str] = set()

    def par(name: str) -> StepSpec:
        async def run(ctx: StepContext) -> None:
            order.append(f"start {name}")
            running.add(name)
            if {"disk-1", "disk-2"} <= running:
                both_running.set()
            await asyncio.wait_for(both_running.wait(), 5)   # would time out if run one after the other
            ctx.progress(0.5, f"{name} half")
            await asyncio.sleep(0.01)
            order.append(f"end {name}")
        return StepSpec(name, name, run)

    async def prep(ctx: StepContext) -> None:
        order.append("prep")
        ctx.result["prepared"] = True

    async def finish(ctx: StepContext) -> None:
        order.append("finish")
        ctx.result["finished"] = sorted(running)

    plan = Plan([[StepSpec("prep", "Prepare", prep, 0)], [par("disk-1"), par("disk-2")],
                 [StepSpec("finish", "Finish", finish, 0)]], done=[("resolve", "Resolve point")])
    job = mgr.submit("recovery-plan", "plan-1", plan, title="Recovery plan 1")
    await mgr.wait(job.id)
    assert job.state == JobState.SUCCEEDED, job.error
    assert order[0] == "prep" and order[-1] == "finish"
    assert set(order[1:3]) == {"start disk-1", "start disk-2"}
    assert [s.name for s in job.steps] == ["resolve", "prep", "disk-1", "disk-2", "finish"]
    assert [s.group for s in job.steps] == [0, 1, 2, 2, 3]
    assert all(s.state == StepState.SUCCEEDED and s.started and s.ended for s in job.steps)
    assert job.result == {"prepared": True, "finished": ["disk-1", "disk-2"]}
    progress = [e.progress for e in mgr.seen if isinstance(e, JobProgress) and e.job_id == job.id]
    assert progress[-1] == 1.0 and 0 < progress[0] < 1
    finals = [e for e in mgr.seen if isinstance(e, JobProgress) and e.finished]
    assert len(finals) == 1 and finals[0].error is None


async def test_a_failing_parallel_step_cancels_its_siblings_and_fails_the_job(mgr):
    sibling_cancelled = asyncio.Event()

    async def slow(ctx: StepContext) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            sibling_cancelled.set()
            raise

    async def bad(ctx: StepContext) -> None:
        await asyncio.sleep(0.01)
        raise InvalidInput("disk 2 is gone", advice="Reattach it.")

    async def boom(ctx: StepContext) -> None:
        raise RuntimeError("never")

    plan = Plan([[StepSpec("slow", "Slow", slow), StepSpec("bad", "Bad", bad)], [StepSpec("after", "After", boom)]])
    job = mgr.submit("recovery-plan", "m", plan)
    await mgr.wait(job.id)
    assert job.state == JobState.FAILED
    assert job.error == {"code": "LB_INVALID_INPUT", "message": "disk 2 is gone", "advice": "Reattach it."}
    assert sibling_cancelled.is_set()
    st = {s.name: s.state for s in job.steps}
    assert st == {"slow": StepState.CANCELLED, "bad": StepState.FAILED, "after": StepState.SKIPPED}
    assert isinstance(mgr.exception(job.id), InvalidInput)

    async def crash(ctx: StepContext) -> None:
        raise OSError("disk full")
    job2 = mgr.submit("test-failover", "m", Plan.sequence(StepSpec("export", "Export", crash,
                                                                   error_code="LB_EXPORT_FAILED",
                                                                   advice="Check the target folder.")))
    await mgr.wait(job2.id)
    assert job2.error == {"code": "LB_EXPORT_FAILED", "message": "disk full", "advice": "Check the target folder."}


async def test_pause_for_operator_and_resume(mgr):
    async def confirm(ctx: StepContext) -> None:
        ctx.result["before"] = True
        await ctx.pause_for_operator("check the network of the recovered machine, then resume")
        ctx.result["after"] = True

    log: list = []
    job = mgr.submit("failback", "vm", Plan.sequence(StepSpec("confirm", "Operator check", confirm)))
    later = mgr.submit("maintenance", "vm", Plan.sequence(gate_step("x", log)))
    await mgr.wait(job.id, lambda j: j.state == JobState.PAUSED)
    assert job.step("confirm").state == StepState.PAUSED and "resume" in job.message
    assert later.state == JobState.QUEUED            # a paused job keeps its machine
    with pytest.raises(Conflict) as ei:
        mgr.resume(later.id)
    assert ei.value.code == "LB_JOB_NOT_PAUSED"
    # the pause is stored: another connection on the same file sees it
    stored = JobStore(sqlite3.connect(str(mgr.store.db.execute("PRAGMA database_list").fetchone()[2]))).get(job.id)
    assert stored is not None and stored.state == JobState.PAUSED
    mgr.resume(job.id)
    await mgr.wait(later.id)
    assert job.state == JobState.SUCCEEDED and job.result == {"before": True, "after": True}
    states = [e.state for e in mgr.seen if isinstance(e, JobChanged) and e.job_id == job.id]
    assert states[0] == "queued" and "paused-for-operator" in states and states[-1] == "succeeded"


async def test_parallel_pauses_resume_together(mgr):
    async def pause(ctx: StepContext) -> None:
        await ctx.pause_for_operator(f"{ctx.step.name} waits")

    job = mgr.submit("recovery-plan", "p", Plan([[StepSpec("a", "A", pause), StepSpec("b", "B", pause)]]))
    await mgr.wait(job.id, lambda j: all(s.state == StepState.PAUSED for s in j.steps))
    mgr.resume(job.id, by="lifeboat-admin (ops)")   # who resumed which steps is recorded (recovery-plan reports)
    await mgr.wait(job.id)
    assert job.state == JobState.SUCCEEDED
    [r] = job.result["resumed"]
    assert r["by"] == "lifeboat-admin (ops)" and r["steps"] == ["a", "b"] and r["at"] > 0


async def test_cancel_running_paused_and_queued_jobs(mgr):
    cancelled = asyncio.Event()

    async def long(ctx: StepContext) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def pause(ctx: StepContext) -> None:
        await ctx.pause_for_operator("wait")

    running = mgr.submit("test-failover", "vm", Plan.sequence(StepSpec("export", "Export", long),
                                                              StepSpec("never", "Never", long)))
    queued = mgr.submit("maintenance", "vm", Plan.sequence(StepSpec("x", "X", long)))
    await mgr.wait(running.id, lambda j: j.state == JobState.RUNNING)
    await mgr.cancel(queued.id)
    assert queued.state == JobState.CANCELLED and queued.error["code"] == "LB_CANCELLED"
    assert queued.step("x").state == StepState.SKIPPED and queued.started is None
    await mgr.cancel(running.id)
    assert cancelled.is_set()
    assert running.state == JobState.CANCELLED and running.finished
    assert running.error["code"] == "LB_CANCELLED"
    assert running.step("export").state == StepState.CANCELLED and running.step("export").ended
    assert running.step("never").state == StepState.SKIPPED
    with pytest.raises(Conflict) as ei:
        await mgr.cancel(running.id)
    assert ei.value.code == "LB_JOB_FINISHED"
    paused = mgr.submit("failback", "vm", Plan.sequence(StepSpec("p", "P", pause)))
    await mgr.wait(paused.id, lambda j: j.state == JobState.PAUSED)
    await mgr.cancel(paused.id)
    assert paused.state == JobState.CANCELLED and paused.step("p").state == StepState.CANCELLED
    assert mgr.running("vm") is None
    with pytest.raises(NotFound) as ei2:
        mgr.get("nope")
    assert ei2.value.code == "LB_UNKNOWN_JOB"


CRASHING_APPLIANCE = """
import asyncio, json, sqlite3, sys
from engine.jobs import JobManager, JobStore, Plan, StepSpec

async def main():
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    m = JobManager(JobStore(db))
    await m.start()
    ran = open(sys.argv[2], "a")

    async def quick(ctx):
        ran.write(ctx.job.id + "\\n"); ran.flush()

    async def long(ctx):
        ran.write(ctx.job.id + "\\n"); ran.flush()
        await asyncio.sleep(3600)

    done = m.submit("maintenance", "vm", Plan.sequence(StepSpec("q", "Q", quick)))
    await m.wait(done.id)
    running = m.submit("test-failover", "vm", Plan.sequence(StepSpec("first", "First", quick),
                                                            StepSpec("export", "Export", long)))
    queued = m.submit("maintenance", "vm", Plan.sequence(StepSpec("q", "Q", quick)))
    await m.wait(running.id, lambda j: j.step("export").state.value == "running")
    print(json.dumps([done.id, running.id, queued.id]), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_restart_marks_unfinished_jobs_interrupted_and_never_reruns_them(tmp_path):
    """The appliance is killed (SIGKILL) mid-job; the next start shows the job interrupted and does not re-run it."""
    import json
    import os
    import sys
    path, ran_file = tmp_path / "state.db", tmp_path / "ran.txt"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", CRASHING_APPLIANCE, str(path), str(ran_file),
                                                stdout=asyncio.subprocess.PIPE, cwd=os.getcwd())
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
    finally:
        proc.kill()
        await proc.wait()
    done_id, running_id, queued_id = json.loads(line)
    assert ran_file.read_text().split() == [done_id, running_id, running_id]

    db2, m2, seen2 = _open(path)
    interrupted = await m2.start()
    assert {j.id for j in interrupted} == {running_id, queued_id}
    r = m2.get(running_id)
    assert r.state == JobState.INTERRUPTED and r.finished and r.error["code"] == "LB_INTERRUPTED"
    assert r.to_dict()["finished"] is True and r.ended
    assert r.step("first").state == StepState.SUCCEEDED
    assert r.step("export").state == StepState.INTERRUPTED and r.step("export").ended
    q = m2.get(queued_id)
    assert q.state == JobState.INTERRUPTED and q.step("q").state == StepState.SKIPPED
    assert m2.get(done_id).state == JobState.SUCCEEDED
    assert [j.id for j in m2.list()] == [done_id, running_id, queued_id]
    # the new manager runs new jobs on the same machine, and nothing old re-ran
    log: list = []
    fresh = m2.submit("maintenance", "vm", Plan.sequence(gate_step("q", log)))
    await m2.wait(fresh.id)
    assert fresh.state == JobState.SUCCEEDED
    assert ran_file.read_text().split() == [done_id, running_id, running_id]
    assert not any(isinstance(e, JobChanged) and e.job_id in (running_id, queued_id) for e in seen2)
    await m2.stop()
    db2.close()
    # a second restart finds nothing left to interrupt
    db3, m3, _ = _open(path)
    assert await m3.start() == []
    assert m3.get(running_id).state == JobState.INTERRUPTED
    db3.close()


async def test_stop_interrupts_running_and_queued_jobs(tmp_path):
    path = tmp_path / "state.db"
    db, m, _ = _open(path)
    await m.start()

    async def long(ctx: StepContext) -> None:
        await asyncio.sleep(30)
    a = m.submit("maintenance", "vm", Plan.sequence(StepSpec("l", "L", long)))
    b = m.submit("maintenance", "vm", Plan.sequence(StepSpec("l", "L", long)))
    await m.wait(a.id, lambda j: j.state == JobState.RUNNING)
    await m.stop()
    db.close()
    assert a.state == b.state == JobState.INTERRUPTED
    db2, m2, _ = _open(path)
    assert await m2.start() == []
    assert m2.get(a.id).state == JobState.INTERRUPTED and m2.get(a.id).step("l").state == StepState.INTERRUPTED
    with pytest.raises(Conflict):
        m.submit("maintenance", "vm", Plan.sequence(StepSpec("l", "L", long)))
    db2.close()


async def test_history_is_bounded(tmp_path):
    db = sqlite3.connect(str(tmp_path / "s.db"), isolation_level=None)
    m = JobManager(JobStore(db), keep=5)
    await m.start()

    async def quick(ctx: StepContext) -> None:
        pass
    ids = []
    for _ in range(12):
        j = m.submit("maintenance", None, Plan.sequence(StepSpec("q", "Q", quick)))
        await m.wait(j.id)
        ids.append(j.id)
    assert len(m.jobs) <= 6
    await m.stop()
    m2 = JobManager(JobStore(db), keep=5)
    await m2.start()
    assert [j.id for j in m2.list()] == ids[-5:]
    db.close()


def test_plan_validation():
    async def f(ctx: StepContext) -> None:
        pass
    with pytest.raises(ValueError):
        Plan.sequence(StepSpec("a", "A", f), StepSpec("a", "A", f)).validate()
    with pytest.raises(ValueError):
        Plan([[]]).validate()


async def test_cancel_right_after_submit_frees_the_machine(mgr):
    """The job's task is created but has not run a step yet: cancel still ends it and the queue goes on."""
    log: list = []
    first = mgr.submit("maintenance", "vm", Plan.sequence(gate_step("a", log)))
    second = mgr.submit("maintenance", "vm", Plan.sequence(gate_step("b", log)))
    await mgr.cancel(first.id)
    assert first.state == JobState.CANCELLED and first.error["code"] == "LB_CANCELLED"
    await mgr.wait(second.id)
    assert second.state == JobState.SUCCEEDED and [e[2] for e in log] == ["b", "b"]
    assert mgr.running("vm") is None
