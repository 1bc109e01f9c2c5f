"""The scheduler on a real event loop: intervals, order, exception isolation, one-shots, start/stop."""

from __future__ import annotations

import asyncio

import pytest

from engine.jobs import Scheduler


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def test_due_tasks_run_in_order_at_their_intervals():
    clock = Clock()
    s = Scheduler(clock=clock)
    ran: list[str] = []
    s.every("status", 1.0, lambda: ran.append("status"))

    async def prune() -> None:
        ran.append("prune")
    s.every("prune", 30.0, prune)
    assert await s.run_due() == 0
    for _ in range(30):
        clock.t += 1.0
        await s.run_due()
    assert ran.count("status") == 30 and ran.count("prune") == 1
    assert ran[-2:] == ["status", "prune"]          # registration order within a tick
    snap = {t["name"]: t for t in s.snapshot()}
    assert snap["prune"]["runs"] == 1 and snap["prune"]["next_run"] == clock.t + 30


async def test_a_failing_task_does_not_stop_the_others_or_itself():
    clock = Clock()
    s = Scheduler(clock=clock)
    ran: list[str] = []

    def bad() -> None:
        ran.append("bad")
        raise RuntimeError("broken")
    s.every("bad", 1.0, bad, first_in=0)
    s.every("good", 1.0, lambda: ran.append("good"), first_in=0)
    await s.run_due()
    clock.t += 1
    await s.run_due()
    assert ran == ["bad", "good", "bad", "good"]
    t = s.tasks["bad"]
    assert t.failures == 2 and t.last_error == "RuntimeError: broken"


async def test_missed_runs_are_not_made_up_and_one_shots_run_once():
    clock = Clock()
    s = Scheduler(clock=clock)
    ran: list[str] = []
    s.every("tick", 1.0, lambda: ran.append("tick"))
    s.at("job", clock.t + 5, lambda: ran.append("job"))
    clock.t += 100                                   # a long stall
    await s.run_due()
    await s.run_due()
    assert ran == ["tick", "job"] and "job" not in s.tasks
    assert s.tasks["tick"].next_run == clock.t + 1
    with pytest.raises(ValueError):
        s.every("tick", 1.0, lambda: None)
    with pytest.raises(ValueError):
        s.every("zero", 0, lambda: None)
    assert s.cancel("tick") and not s.cancel("tick")


async def test_runs_on_its_own_task_until_stopped():
    s = Scheduler(resolution=0.05)
    ran: list[float] = []
    s.every("fast", 0.02, lambda: ran.append(asyncio.get_running_loop().time()))
    await s.start()
    await asyncio.sleep(0.3)
    fired = asyncio.Event()
    s.at("later", s.clock() + 0.01, fired.set)       # added while running: picked up at once
    await asyncio.wait_for(fired.wait(), 2)
    await s.stop()
    n = len(ran)
    assert n >= 5
    await asyncio.sleep(0.1)
    assert len(ran) == n
