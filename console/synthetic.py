"""A synthetic engine: N protected machines whose statuses arrive at 1 Hz, with no appliance behind them.

For the console benchmark (bench/console.py), UI tests of single pages, and ``lifeboat-console --synthetic N`` to
look at a large fleet. Events are real engine event classes on a real ``EventBus``, emitted in one burst per second
like the appliance's ticker, so they take the same path through the bridge as in production.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from pathlib import Path
from typing import Any

from engine.api import (ApplianceStatus, CleanupView, Conflict, DiskView, DrillView, EventBus, JobProgress,
                        MachineStatus, MachineView, NotFound, PointCreated, PointView, Policy, ResyncView, health_for)

from .engine_facade import EngineFacade, validate_policy


class SyntheticFacade(EngineFacade):
    """Looks like the engine facade of a running appliance with ``count`` protected machines."""

    def __init__(self, count: int, *, seed: int = 1, registered: int = 0, ticker: bool = True) -> None:
        super().__init__(Path("synthetic-appliance"))
        self.ticker = ticker
        self.bus = EventBus()
        self.rnd = random.Random(seed)
        self.names = [f"vm-{i:04d}" for i in range(count)]
        self.registered = [f"new-{i:02d}" for i in range(registered)]
        self._policies = {"default": Policy("default"), "gold": Policy("gold", rpo_threshold=15.0)}
        self._state: dict[str, dict[str, Any]] = {}
        self._points: dict[str, list[PointView]] = {n: [] for n in self.names}
        self._drills: set[str] = set()
        self._seq = 0
        self._running = False
        self._task: asyncio.Task[None] | None = None
        for i, n in enumerate(self.names):
            self._state[n] = {"phase": self.rnd.random() * math.tau, "base": 2 + (i % 17), "state": "protected"}

    # lifecycle -------------------------------------------------------------------------------------------
    @property
    def initialised(self) -> bool:
        return True

    @property
    def running(self) -> bool:
        return self._running

    async def start(self) -> None:
        self._running = True
        if self.ticker:
            self._task = asyncio.ensure_future(self._tick_forever())

    async def stop(self) -> None:
        self._running = False
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def subscribe(self, fn: Any) -> None:
        self.bus.subscribe(fn)

    @property
    def addresses(self) -> dict[str, str]:
        return {"control": "synthetic:443", "data": "synthetic:9443", "vault": "(synthetic)"} if self._running else {}

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.tick()

    # the fleet -------------------------------------------------------------------------------------------
    def _rpo(self, name: str, now: float) -> float:
        s = self._state[name]
        return max(0.0, s["base"] * (1 + 0.6 * math.sin(now / 20 + s["phase"])) + self.rnd.random())

    def tick(self, now: float | None = None) -> None:
        """One ticker burst: a MachineStatus for every machine; a point for about one in five."""
        now = time.time() if now is None else now
        for name in self.names:
            rpo = self._rpo(name, now)
            st = self._state[name]["state"]
            pts = self._points[name]
            if self.rnd.random() < 0.2:
                self._seq += 1
                kind = "app-consistent" if self._seq % 12 == 0 else "crash-consistent"
                p = PointView(f"{kind[0]}-{self._seq}", self._seq, now - rpo, kind, "scheduled" if kind[0] == "a"
                              else None)
                pts.append(p)
                del pts[:-200]
                self.bus.emit(PointCreated(name, p.id, p.kind, p.time, p.tag))
            churn = 1e6 * (1 + math.sin(now / 30 + self._state[name]["phase"]))
            self.bus.emit(MachineStatus(name, st, health_for(rpo, 30.0, st), round(rpo, 3), 1.0,
                                        pts[-1].time if pts else None, churn, churn * 0.45))

    # queries ---------------------------------------------------------------------------------------------
    def machine_status(self, name: str) -> MachineView:
        if name in self.registered:
            return MachineView(name, "unprotected")
        if name not in self._state:
            raise NotFound(f"no machine named {name!r}")
        rpo = self._rpo(name, time.time())
        st = self._state[name]["state"]
        pts = self._points[name]
        return MachineView(name, st, health_for(rpo, 30.0, st), rpo, 30.0, "default", sync_progress=1.0,
                           agent_connected=True, last_point=pts[-1] if pts else None, points=len(pts),
                           churn_bytes_per_s=1e6, upload_bytes_per_s=4.5e5,
                           resync=ResyncView(last_done=self._state[name].get("last_done")),
                           disks=(DiskView(0, "sys", 64 << 30, True, 64 << 30),
                                  DiskView(1, "data", 256 << 30, True, 256 << 30)))

    def status(self) -> ApplianceStatus:
        return ApplianceStatus(tuple(self.machine_status(n) for n in self.names), tuple(self.registered))

    def points(self, name: str) -> list[PointView]:
        return list(self._points.get(name, []))

    def policies(self) -> list[Policy]:
        return sorted(self._policies.values(), key=lambda p: p.name)

    def save_policy(self, policy: Policy) -> Policy:
        saved = self._policies[policy.name] = validate_policy(policy)
        return saved

    def drill_active(self, name: str) -> bool:
        return name in self._drills

    @property
    def has_vsphere(self) -> bool:
        return False

    # operations ------------------------------------------------------------------------------------------
    async def protect(self, name: str, policy: str | None) -> None:
        if name in self.registered:
            self.registered.remove(name)
            self.names.append(name)
            self._points[name] = []
            self._state[name] = {"phase": 0.0, "base": 3, "state": "protected"}

    async def resync(self, name: str, now: bool = True) -> ResyncView:
        self._state[name]["state"] = "resyncing"
        await asyncio.sleep(0.2)
        self._state[name]["state"] = "protected"
        self._state[name]["last_done"] = time.time()
        return ResyncView()

    async def test_failover(self, name: str, point: str, *, nbd: str | None = None,
                            export_dir: str | None = None) -> DrillView:
        if name in self._drills:
            raise Conflict(f"a drill of {name!r} is already running")
        self._drills.add(name)
        job_id = f"{self.rnd.getrandbits(48):012x}"
        if nbd is not None:
            self.bus.emit(JobProgress(job_id, "test-failover", name, 1.0, True, None, "drill served over NBD"))
            return DrillView(job_id, True, point, "127.0.0.1:10809", ("sys", "data"))

        async def export() -> None:
            for i in range(1, 5):
                await asyncio.sleep(0.05)
                self.bus.emit(JobProgress(job_id, "test-failover", name, i / 4, i == 4))
        asyncio.ensure_future(export())
        return DrillView(job_id, False, point, export_dir=export_dir)

    async def cleanup(self, name: str) -> CleanupView:
        if name not in self._drills:
            raise NotFound(f"no drill of {name!r} is running", advice="Nothing to clean up.")
        self._drills.discard(name)
        return CleanupView(name, "?")
