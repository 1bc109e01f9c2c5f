"""A synthetic engine: N protected machines whose statuses arrive at 1 Hz, with no appliance behind them.

For the console benchmark (bench/console.py), UI tests of single pages, and ``lifeboat-console --synthetic N`` to
look at a large fleet. Events are real engine event classes on a real ``EventBus``, emitted in one burst per second
like the appliance's ticker, so they take the same path through the bridge as in production.

The fleet is mixed the way a real one is, deterministically by index: about one machine in 40 has an agent not heard
from (its RPO grows, critical), one in 61 needs a resync, one in 53 is in its initial sync (no point yet, so no RPO),
one in 5 uses the "gold" policy (15 s threshold); machines are spread over two vCenters (a third in none). Statuses
carry the issue-12 contract's fields (``health_reason``, ``rpo_known``, ``last_heard``, ``sync_eta_seconds``).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from engine.api import (Alert, ApplianceStatus, CleanupView, Conflict, DiskView, DrillView, EventBus, JobChanged,
                        JobProgress, MachineStatus, MachineView, NotFound, PointCreated, PointView, Policy, ResyncView,
                        health_for)

from .alerts import AlertRow, alert_id
from .engine_facade import EngineFacade, validate_policy

THRESHOLD = 30.0
SYNC_STEP = 0.25      # initial-sync progress per tick of a machine protected here
VCENTERS = ("vc1.lab", "vc2.lab", "")

_CONTRACT_FIELDS = {"health_reason", "rpo_known", "last_heard", "sync_eta_seconds"}

# The issue-12 contract adds these fields to machine_status(); until engine.api's MachineView has them, the synthetic
# engine returns a subclass that carries them, so the console is built and tested against the contract.
if _CONTRACT_FIELDS <= {f.name for f in fields(MachineView)}:
    View = MachineView
else:
    @dataclass(frozen=True, slots=True)
    class View(MachineView):  # type: ignore[no-redef]
        health_reason: str = ""
        rpo_known: bool = True
        last_heard: float | None = None
        sync_eta_seconds: float | None = None


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
        self._jobs: dict[str, dict[str, Any]] = {}   # engine jobs in their wire form (Job.to_dict())
        self._alerts: dict[str, AlertRow] = {}        # the appliance's alert store, in AlertView's shape
        self._seq = 0
        self._running = False
        self._task: asyncio.Task[None] | None = None
        self._created = time.time()
        for i, n in enumerate(self.names):
            st = "resync-required" if i % 61 == 60 else "initial-sync" if i % 53 == 52 else "protected"
            self._state[n] = {"phase": self.rnd.random() * math.tau, "base": 2 + (i % 17), "state": st,
                              "policy": "gold" if i % 5 == 4 else "default", "vcenter": VCENTERS[i % 3],
                              "away_since": self._created - 200 - i if i % 40 == 39 else None,
                              "sync_start": self._created - 300}

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
        if s["away_since"] is not None:   # nothing heard since: what a failover now would lose keeps growing
            return now - s["away_since"]
        return max(0.0, s["base"] * (1 + 0.6 * math.sin(now / 20 + s["phase"])) + self.rnd.random())

    def _sync(self, name: str, now: float) -> tuple[float, float]:
        """Initial-sync progress and ETA of the fleet's long syncs: one hour for the whole copy."""
        done = min(0.99, (now - self._state[name]["sync_start"]) / 3600)
        return done, (1 - done) * 3600

    def _threshold(self, name: str) -> float:
        return self._policies[self._state[name].get("policy", "default")].rpo_threshold

    def _health(self, name: str, rpo: float, now: float) -> tuple[str, str, bool]:
        """(health, reason, rpo_known) as the issue-12 engine reports them."""
        s = self._state[name]
        thr = self._threshold(name)
        st = s["state"]
        if st == "initial-sync":
            done, eta = self._sync(name, now)
            return "ok", f"initial sync {100 * done:.0f}%, about {eta / 60:.0f} min left", False
        if s.get("away_since") is not None:
            return "critical", f"agent not heard from for {(now - s['away_since']) / 60:.0f} min", True
        health = health_for(rpo, thr, st)
        if st == "resync-required":
            return health, "resync required: disk resized", True
        if health == "critical":
            return health, f"RPO {rpo:.0f} s over the {thr:.0f} s threshold", True
        if health == "warning":
            return health, f"RPO {rpo:.0f} s, over half the {thr:.0f} s threshold", True
        return health, "", True

    def tick(self, now: float | None = None) -> None:
        """One ticker burst: a MachineStatus for every machine; a point for about one in five; an RPO alert raised
        when a machine crosses its threshold and cleared when it is back under it."""
        now = time.time() if now is None else now
        for name in self.names:
            s = self._state[name]
            if s["state"] == "initial-sync" and "progress" in s:   # protected here: a quick initial sync
                s["progress"] = min(1.0, s.get("progress", 0.0) + SYNC_STEP)
                if s["progress"] >= 1.0:
                    s["state"] = "protected"
                else:
                    self.bus.emit(MachineStatus(name, "initial-sync", "ok", 0.0, s["progress"], None, 0.0, 0.0,
                                                "", False, now,
                                                (1.0 - s["progress"]) / SYNC_STEP))
                    continue
            rpo = self._rpo(name, now)
            st = s["state"]
            pts = self._points[name]
            health, reason, known = self._health(name, rpo, now)
            if known and s.get("away_since") is None and self.rnd.random() < 0.2:
                self._seq += 1
                kind = "app-consistent" if self._seq % 12 == 0 else "crash-consistent"
                p = PointView(f"{kind[0]}-{self._seq}", self._seq, now - rpo, kind, "scheduled" if kind[0] == "a"
                              else None)
                pts.append(p)
                del pts[:-200]
                self.bus.emit(PointCreated(name, p.id, p.kind, p.time, p.tag))
            churn = 1e6 * (1 + math.sin(now / 30 + s["phase"]))
            sync = self._sync(name, now) if st == "initial-sync" else (1.0, None)
            self.bus.emit(MachineStatus(name, st, health, round(rpo, 3) if known else 0.0, sync[0],
                                        pts[-1].time if pts else None, churn, churn * 0.45, reason, known,
                                        s.get("away_since") or now, sync[1]))
            if not known:
                continue
            thr = self._threshold(name)
            breach = self._alerts.get(alert_id("LB_RPO_BREACH", name))
            if rpo > thr and (breach is None or not breach.active):
                self.raise_alert("LB_RPO_BREACH", name, f"RPO {rpo:.0f} s is over the {thr:.0f} s threshold",
                                 "Check the agent and the network; the RPO recovers once changes reach the vault.",
                                 "critical", now=now)
            elif rpo <= 0.8 * thr and breach is not None and breach.active:   # hysteresis: no flapping
                self.clear_alert(breach.id, now=now)

    # alerts (the appliance's store, CONTRACT) --------------------------------------------------------------
    def raise_alert(self, code: str, subject: str, message: str, advice: str = "", severity: str = "warning",
                    component: str = "machine", *, now: float | None = None) -> AlertRow:
        """Raise (or repeat) an alert and emit its ``Alert`` event, as the engine's store does."""
        now = time.time() if now is None else now
        aid = alert_id(code, subject)
        row = self._alerts.get(aid)
        if row is not None and row.active:
            row.count += 1
            row.message = message
        else:
            row = self._alerts[aid] = AlertRow(aid, code, severity, component, subject, message, advice, now)
        self.bus.emit(Alert(subject if component == "machine" else None, code, message, advice, severity,
                            {"subject": subject}, aid, component, "raised", now))
        return row

    def clear_alert(self, aid: str, *, now: float | None = None) -> None:
        row = self._alerts[aid]
        row.cleared_at = time.time() if now is None else now
        self.bus.emit(Alert(row.subject if row.component == "machine" else None, row.code, row.message, row.advice,
                            row.severity, {"subject": row.subject}, aid, row.component, "cleared", row.cleared_at))

    def alerts(self, active_only: bool = True) -> list[AlertRow]:
        return [AlertRow(**{f: getattr(r, f) for f in AlertRow.__slots__})   # copies, as views are
                for r in self._alerts.values() if r.active or not active_only]

    def acknowledge_alert(self, aid: str, by: str) -> AlertRow:
        if aid not in self._alerts:
            raise NotFound(f"no alert {aid!r}", code="LB_UNKNOWN_ALERT", advice="List the alerts again.")
        row = self._alerts[aid]
        row.acknowledged_at, row.acknowledged_by = time.time(), by
        return AlertRow(**{f: getattr(row, f) for f in AlertRow.__slots__})

    # queries ---------------------------------------------------------------------------------------------
    def machine_status(self, name: str) -> MachineView:
        if name in self.registered:
            return MachineView(name, "unprotected")
        if name not in self._state:
            raise NotFound(f"no machine named {name!r}", code="LB_UNKNOWN_MACHINE")
        s = self._state[name]
        st = s["state"]
        pts = self._points[name]
        thr = self._threshold(name)
        if st == "initial-sync" and "progress" in s:
            return View(name, st, "ok", 0.0, thr, s.get("policy", "default"),
                        sync_progress=s.get("progress", 0.0), agent_connected=True,
                        disks=(DiskView(0, "sys", 64 << 30, False, int((64 << 30) * s.get("progress", 0.0))),),
                        health_reason="", rpo_known=False, last_heard=time.time(),
                        sync_eta_seconds=(1.0 - s.get("progress", 0.0)) / SYNC_STEP)
        now = time.time()
        rpo = self._rpo(name, now)
        health, reason, known = self._health(name, rpo, now)
        sync = self._sync(name, now) if st == "initial-sync" else (1.0, None)
        return View(name, st, health, rpo if known else 0.0, thr, s.get("policy", "default"), sync_progress=sync[0],
                    agent_connected=s.get("away_since") is None, last_point=pts[-1] if pts else None,
                    points=len(pts), churn_bytes_per_s=1e6, upload_bytes_per_s=4.5e5,
                    resync=ResyncView(required=st == "resync-required", last_done=s.get("last_done")),
                    disks=(DiskView(0, "sys", 64 << 30, True, 64 << 30),
                           DiskView(1, "data", 256 << 30, True, 256 << 30)),
                    health_reason=reason, rpo_known=known, last_heard=s.get("away_since") or now,
                    sync_eta_seconds=sync[1])

    def machine_vcenters(self) -> dict[str, str]:
        return {n: s["vcenter"] for n, s in self._state.items() if s.get("vcenter")}

    def rpo_history(self, name: str, since: float | None = None) -> list[tuple[float, float]]:
        """The last hour at one sample every 10 s (what the appliance keeps, downsampled)."""
        if name not in self._state:
            raise NotFound(f"no machine named {name!r}", code="LB_UNKNOWN_MACHINE")
        s, now = self._state[name], time.time()
        if s["state"] == "initial-sync" or "sync_start" not in s:
            return []   # no point yet (or protected only now): no history
        out = []
        for t in range(int(max(since or 0.0, now - 3590)), int(now), 10):
            rpo = (t - s["away_since"] if s["away_since"] is not None
                   else s["base"] * (1 + 0.6 * math.sin(t / 20 + s["phase"])))
            if rpo >= 0:
                out.append((float(t), max(0.0, rpo)))
        return out

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

    def vcenters(self) -> list[dict[str, Any]]:
        """No vCenter in the synthetic fleet (tests patch ``inventory`` and ``has_vsphere`` for one)."""
        return []

    # operations ------------------------------------------------------------------------------------------
    async def protect(self, name: str, policy: str | None) -> None:
        if name in self.registered:
            self.registered.remove(name)
            self.names.append(name)
            self._points[name] = []
            self._state[name] = {"phase": 0.0, "base": 3, "state": "initial-sync", "progress": 0.0,
                                 "policy": policy or "default", "vcenter": "", "away_since": None}

    async def resync(self, name: str, now: bool = True) -> ResyncView:
        self._state[name]["state"] = "resyncing"
        await asyncio.sleep(0.2)
        self._state[name]["state"] = "protected"
        self._state[name]["last_done"] = time.time()
        return ResyncView()

    def _job(self, kind: str, machine: str, steps: list[str], title: str) -> dict[str, Any]:
        jid = f"{self.rnd.getrandbits(48):012x}"
        job: dict[str, Any] = {"id": jid, "operation": kind, "kind": kind, "machine": machine,
               "target": machine, "title": title, "state": "queued", "progress": 0.0, "finished": False,
               "error": None, "result": {}, "message": "", "created": time.time(), "started": None, "ended": None,
               "steps": [{"name": n, "title": n, "group": i, "weight": 1.0, "state": "pending", "progress": 0.0,
                          "message": "", "started": None, "ended": None, "error": None} for i, n in enumerate(steps)]}
        self._jobs[jid] = job
        self._job_changed(job)
        return job

    def _job_changed(self, job: dict[str, Any], step: str | None = None) -> None:
        st = next((s["state"] for s in job["steps"] if s["name"] == step), None)
        self.bus.emit(JobChanged(job["id"], job["kind"], job["machine"], job["state"], step, st,
                                 {**job, "steps": [dict(s) for s in job["steps"]]}))

    def _job_step(self, job: dict[str, Any], name: str, state: str) -> None:
        step = next(s for s in job["steps"] if s["name"] == name)
        step["state"] = state
        step["started" if state == "running" else "ended"] = time.time()
        if state == "succeeded":
            step["progress"] = 1.0
        job["state"] = "running"
        self._job_changed(job, name)

    def _job_end(self, job: dict[str, Any], message: str = "") -> None:
        job.update(state="succeeded", finished=True, progress=1.0, ended=time.time(), message=message)
        self._job_changed(job)
        self.bus.emit(JobProgress(job["id"], job["kind"], job["machine"], 1.0, True, None, message))

    def engine_jobs(self) -> list[dict[str, Any]]:
        return list(self._jobs.values())

    def engine_job(self, job_id: str) -> dict[str, Any]:
        if job_id not in self._jobs:
            raise NotFound(f"no job {job_id!r}", code="LB_UNKNOWN_JOB")
        return self._jobs[job_id]

    async def cancel_engine_job(self, job_id: str) -> dict[str, Any]:
        job = self.engine_job(job_id)
        if job["finished"]:
            raise Conflict(f"job {job_id} has already ended", code="LB_JOB_FINISHED")
        job.update(state="cancelled", finished=True, ended=time.time(),
                   error={"code": "LB_CANCELLED", "message": "the job was cancelled", "advice": ""})
        self._job_changed(job)
        return job

    async def resume_engine_job(self, job_id: str) -> dict[str, Any]:
        job = self.engine_job(job_id)
        if job["state"] != "paused-for-operator":
            raise Conflict(f"job {job_id} is not waiting for an operator", code="LB_JOB_NOT_PAUSED")
        job["state"] = "running"
        self._job_changed(job)
        return job

    async def test_failover(self, name: str, point: str, *, nbd: str | None = None,
                            export_dir: str | None = None) -> DrillView:
        if name in self._drills:
            raise Conflict(f"a drill of {name!r} is already running")
        self._drills.add(name)
        last = "serve-nbd" if nbd is not None else "export-disks"
        job = self._job("test-failover", name, ["resolve-point", "open-views", last],
                        f"Test failover of {name} ({point})")
        job_id = job["id"]
        for step in ("resolve-point", "open-views"):
            self._job_step(job, step, "running")
            self._job_step(job, step, "succeeded")
        self._job_step(job, last, "running")
        if nbd is not None:
            job["result"] = {"nbd": "127.0.0.1:10809", "exports": ["sys", "data"]}
            self._job_step(job, last, "succeeded")
            self._job_end(job, "drill served over NBD")
            return DrillView(job_id, True, point, "127.0.0.1:10809", ("sys", "data"))

        async def export() -> None:
            for i in range(1, 5):
                await asyncio.sleep(0.05)
                if job["finished"]:
                    return
                job["progress"] = i / 4
                if i < 4:
                    self.bus.emit(JobProgress(job_id, "test-failover", name, i / 4, False))
            self._job_step(job, last, "succeeded")
            self._job_end(job)
        asyncio.ensure_future(export())
        return DrillView(job_id, False, point, export_dir=export_dir)

    async def cleanup(self, name: str) -> CleanupView:
        if name not in self._drills:
            raise NotFound(f"no drill of {name!r} is running", advice="Nothing to clean up.")
        self._drills.discard(name)
        for j in self._jobs.values():   # cleanup ends a drill still exporting, as the engine does
            if j["kind"] == "test-failover" and j["machine"] == name and not j["finished"]:
                await self.cancel_engine_job(j["id"])
        job = self._job("failover-cleanup", name, ["stop-drill", "remove-images"], f"Clean up drill of {name}")
        for step in ("stop-drill", "remove-images"):
            self._job_step(job, step, "running")
            self._job_step(job, step, "succeeded")
        self._job_end(job)
        return CleanupView(name, "?", job=job["id"])
