"""Recovery plans (issue 13): named, ordered groups of protected machines with before/after actions, run as one
composite job on a recovery host, as a test (every NIC on the host's isolated network, optional automatic cleanup)
or for real; each run writes a DR report (engine/recovery/report.py).

A plan is plain data: ``[{"machines": [...], "before": [action], "after": [action]}, ...]``; an action is
``{"kind": "script", "path": ABS, "timeout": SECONDS}`` or ``{"kind": "manual", "text": TEXT}``. ``validate`` is
pure (no I/O): a plan with no group, an empty group, an unknown or unprotected machine, or a machine in two groups
is refused with ``LB_PLAN_INVALID`` naming the field (``groups[N].machines``).

A run's job (kind ``recovery-plan``, target ``plan:NAME``) has, per group N in order: ``gN-before-K`` (one step
each, in order), ``gN-failover-MACHINE`` (the group's machines in parallel: each calls
``FailoverService.failover``, whose own job runs the per-machine steps resolve-point → … → wait-boot and is linked
from the step's result), then ``gN-after-K``. Group N+1 starts only when every machine of group N has booted (the
job layer starts a group when every step of the one before succeeded). A failed step stops the plan: its
error names the machine (or action) and why; the job pauses there (``paused-for-operator``, the error in
``result.stopped``) until the operator retries the step (``lifeboat job resume``), skips it (``lifeboat plan
skip``) or cancels the plan (``lifeboat plan cancel``: the job ends cancelled, the run's VMs are removed).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .. import platform
from ..appliance.control_http import read_json
from ..appliance.request_body import Body, json_response
from ..errors import AlreadyExists, Conflict, InvalidInput, LifeboatError, NotFound, UnknownMachine
from ..jobs import Job, JobKind, JobManager, JobState, Plan, StepContext, StepSpec
from ..jobs.model import new_job_id
from ..names import check_name
from .report import write_report
from .settings import RecoverySettings

if TYPE_CHECKING:
    from ..appliance.control_http import AdminCheck
    from ..appliance.machine_state import MachineState
    from .failover import FailoverService

log = logging.getLogger(__name__)

PLAN_INVALID = "LB_PLAN_INVALID"
MAX_MACHINES = 100
MAX_ACTIONS = 20                   # per group and side
DEFAULT_SCRIPT_TIMEOUT = 300.0
OUTPUT_LIMIT = 64 * 1024           # bytes of a script's output kept in the job (the tail)


def plan_invalid(message: str, field: str, advice: str = "Fix the plan (`lifeboat plan show`), then run it again."
                 ) -> InvalidInput:
    return InvalidInput(message, field=field, code=PLAN_INVALID, advice=advice)


def validate_groups(groups: list[dict[str, Any]], machine_ok: Callable[[str], str | None]) -> None:
    """Pure checks of a plan's groups. ``machine_ok(name)`` returns None for a protected machine, else why not."""
    if not groups:
        raise plan_invalid("the plan has no group", "groups",
                           "Add machines with `lifeboat plan add --home DIR PLAN --group 1 MACHINE`.")
    seen: dict[str, int] = {}
    total = 0
    for n, g in enumerate(groups, start=1):
        field = f"groups[{n}].machines"
        if not g["machines"]:
            raise plan_invalid(f"group {n} has no machine", field,
                               f"Add machines to group {n} (`lifeboat plan add --group {n}`) or remove its actions.")
        for m in g["machines"]:
            if m in seen:
                raise plan_invalid(f"machine {m!r} is in group {seen[m]} and group {n}; a machine belongs to at most "
                                   "one group", field)
            seen[m] = n
            why = machine_ok(m)
            if why is not None:
                raise plan_invalid(f"machine {m!r} of group {n} {why}", field,
                                   "Protect the machine, or remove it from the plan.")
        total += len(g["machines"])
    if total > MAX_MACHINES:
        raise plan_invalid(f"the plan has {total} machines; at most {MAX_MACHINES}", "groups")


def _action_title(a: dict[str, Any]) -> str:
    return (f"Run script {a['path']} (timeout {a['timeout']:g} s)" if a["kind"] == "script"
            else f"Manual action: {a['text']}")


class PlanStore:
    """The ``recovery_plans`` and ``plan_runs`` tables (schema 8, engine/appliance/state.py)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def plans(self) -> list[dict[str, Any]]:
        return [{"name": r[0], "groups": json.loads(r[1]), "created": r[2], "updated": r[3]} for r in
                self.db.execute("SELECT name, groups, created, updated FROM recovery_plans ORDER BY name")]

    def plan(self, name: str) -> dict[str, Any]:
        for p in self.plans():
            if p["name"] == name:
                return p
        raise NotFound(f"no recovery plan named {name!r}", code="LB_UNKNOWN_PLAN",
                       advice="Create it with `lifeboat plan create --home DIR PLAN`; `lifeboat plan list` shows "
                              "the plans.")

    def create(self, name: str) -> None:
        if self.db.execute("SELECT 1 FROM recovery_plans WHERE name = ? COLLATE NOCASE", (name,)).fetchone():
            raise AlreadyExists(f"a recovery plan named {name!r} exists already",
                                advice="Choose another name, or change that plan with `lifeboat plan add/action`.")
        now = time.time()
        self.db.execute("INSERT INTO recovery_plans(name, groups, created, updated) VALUES (?, '[]', ?, ?)",
                        (name, now, now))

    def put_groups(self, name: str, groups: list[dict[str, Any]]) -> None:
        self.db.execute("UPDATE recovery_plans SET groups=?, updated=? WHERE name=?",
                        (json.dumps(groups), time.time(), name))

    def put_run(self, run: dict[str, Any]) -> None:
        r = {**run, "machines": json.dumps(run["machines"]), "test": int(run["test"])}
        self.db.execute(f"INSERT OR REPLACE INTO plan_runs({', '.join(r)}) VALUES ({', '.join('?' * len(r))})",
                        tuple(r.values()))

    def runs(self, plan: str | None = None) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT * FROM plan_runs" + (" WHERE plan=?" if plan else "") + " ORDER BY started",
                              (plan,) if plan else ())
        cols = [c[0] for c in cur.description]
        out = [dict(zip(cols, row)) for row in cur.fetchall()]
        for r in out:
            r["machines"], r["test"] = json.loads(r["machines"]), bool(r["test"])
        return out


class PlanService:
    """Recovery plans and their runs. Collaborators: ``store`` (plan tables), ``state`` (machine rows),
    ``failover`` (the failover service whose public ``failover``/``cancel``/``vms`` a run calls), ``manager``
    (jobs), ``reports`` (HOME/reports), ``require_admin`` (the control API's admin check)."""

    def __init__(self, store: PlanStore, *, state: MachineState, failover: FailoverService, manager: JobManager,
                 reports: Path, require_admin: AdminCheck | Callable[[web.Request], None]) -> None:
        self.store = store
        self.state = state
        self.failover = failover
        self.manager = manager
        self.reports = reports
        self.require_admin = require_admin
        self._tasks: set[asyncio.Task[None]] = set()
        self._reported: dict[str, asyncio.Event] = {}   # run id → set once its report is written
        self._skip: set[tuple[str, str]] = set()          # (job id, step name) the operator chose to skip

    async def start(self) -> None:
        self.reports.mkdir(mode=0o700, exist_ok=True)
        for r in self.store.runs():
            if r["state"] in ("running", "paused-for-operator", "queued"):   # the job ended interrupted
                job = self.manager.jobs.get(r["job"] or "")
                r["state"] = job.state.value if job is not None else "interrupted"
                r["ended"] = r["ended"] or time.time()
                self.store.put_run(r)
            if r["test"] and r["cleanup_at"] and not r["cleaned_at"]:
                self._spawn(self._cleanup_later(r["id"], r["cleanup_at"]))

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # building ----------------------------------------------------------------------------------------------
    def _machine_ok(self, m: str) -> str | None:
        try:
            row = self.state.row(m)
        except UnknownMachine:
            return "is not a registered machine"
        return None if row["protected"] else "is not protected"

    def create(self, name: str) -> dict[str, Any]:
        self.store.create(check_name(name, "plan name"))
        self.state.event("plan-created", None, plan=name)
        return self.show(name)

    def _group(self, groups: list[dict[str, Any]], n: int) -> dict[str, Any]:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(groups) + 1:
            raise plan_invalid(f"group {n} does not exist; the plan has {len(groups)} group(s): give 1.."
                               f"{len(groups) + 1} (the next number adds a group)", "group")
        if n == len(groups) + 1:
            groups.append({"machines": [], "before": [], "after": []})
        return groups[n - 1]

    def add(self, name: str, group: int, machines: list[str]) -> dict[str, Any]:
        p = self.store.plan(name)
        groups = p["groups"]
        g = self._group(groups, group)
        for m in machines:
            check_name(m, "machine name")
            self.state.row(m)   # an unknown machine is refused here (LB_UNKNOWN_MACHINE)
            for n, other in enumerate(groups, start=1):
                if m in other["machines"]:
                    raise plan_invalid(f"machine {m!r} is in group {n} already; a machine belongs to at most one "
                                       "group", f"groups[{group}].machines")
            g["machines"].append(m)
        if sum(len(x["machines"]) for x in groups) > MAX_MACHINES:
            raise plan_invalid(f"a plan holds at most {MAX_MACHINES} machines", f"groups[{group}].machines")
        self.store.put_groups(name, groups)
        return self.show(name)

    def action(self, name: str, group: int, when: str, *, script: str | None = None, timeout: float | None = None,
               manual: str | None = None) -> dict[str, Any]:
        p = self.store.plan(name)
        if when not in ("before", "after"):
            raise plan_invalid("an action runs 'before' or 'after' its group", "when")
        if (script is None) == (manual is None):
            raise plan_invalid("an action is either a script or a manual instruction", "action")
        if script is not None:
            if not os.path.isabs(script) or not script.isprintable():
                raise plan_invalid(f"script {script!r} is not an absolute path", "script",
                                   "Give the script's absolute path on the appliance.")
            act: dict[str, Any] = {"kind": "script", "path": script,
                                   "timeout": float(timeout or DEFAULT_SCRIPT_TIMEOUT)}
        else:
            text = (manual or "").strip()
            if not text or len(text) > 2000:
                raise plan_invalid("a manual action needs an instruction of 1-2000 characters", "manual")
            act = {"kind": "manual", "text": text}
        groups = p["groups"]
        g = self._group(groups, group)
        if len(g[when]) >= MAX_ACTIONS:
            raise plan_invalid(f"group {group} has {MAX_ACTIONS} {when}-actions already", "action")
        g[when].append(act)
        self.store.put_groups(name, groups)
        return self.show(name)

    def remove(self, name: str, machines: list[str]) -> dict[str, Any]:
        """Take machines out of the plan (whichever group holds them); an empty group stays until removed."""
        p = self.store.plan(name)
        groups = p["groups"]
        for m in machines:
            where = [g for g in groups if m in g["machines"]]
            if not where:
                raise plan_invalid(f"machine {m!r} is not in plan {name!r}", "machines")
            where[0]["machines"].remove(m)
        self.store.put_groups(name, groups)
        return self.show(name)

    def _existing_group(self, groups: list[dict[str, Any]], n: int, field: str = "group") -> dict[str, Any]:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(groups):
            raise plan_invalid(f"group {n} does not exist; the plan has {len(groups)} group(s)", field)
        return groups[n - 1]

    def move_group(self, name: str, group: int, to: int) -> dict[str, Any]:
        """Reorder: group ``group`` (with its actions) becomes group ``to``; the others keep their order."""
        p = self.store.plan(name)
        groups = p["groups"]
        g = self._existing_group(groups, group)
        self._existing_group(groups, to, "to")
        groups.remove(g)
        groups.insert(to - 1, g)
        self.store.put_groups(name, groups)
        return self.show(name)

    def remove_group(self, name: str, group: int) -> dict[str, Any]:
        """Remove a group with its actions; its machines leave the plan; later groups move up."""
        p = self.store.plan(name)
        groups = p["groups"]
        groups.remove(self._existing_group(groups, group))
        self.store.put_groups(name, groups)
        return self.show(name)

    def remove_action(self, name: str, group: int, when: str, index: int) -> dict[str, Any]:
        """Remove the ``index``-th (1-based) ``before``/``after`` action of a group."""
        p = self.store.plan(name)
        groups = p["groups"]
        g = self._existing_group(groups, group)
        if when not in ("before", "after"):
            raise plan_invalid("an action runs 'before' or 'after' its group", "when")
        if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= len(g[when]):
            raise plan_invalid(f"group {group} has no {when}-action {index}", "index")
        del g[when][index - 1]
        self.store.put_groups(name, groups)
        return self.show(name)

    def show(self, name: str) -> dict[str, Any]:
        p = self.store.plan(name)
        problem = None
        try:
            validate_groups(p["groups"], self._machine_ok)
        except InvalidInput as exc:
            problem = exc.to_dict()
        runs = self.store.runs(name)
        return {**p, "valid": problem is None, "problem": problem, "runs": runs[-10:]}

    def plans(self) -> list[dict[str, Any]]:
        out = []
        for p in self.store.plans():
            runs = self.store.runs(p["name"])
            out.append({"name": p["name"], "groups": len(p["groups"]),
                        "machines": sum(len(g["machines"]) for g in p["groups"]),
                        "last_run": runs[-1] if runs else None})
        return out

    # running -----------------------------------------------------------------------------------------------
    async def run(self, name: str, host: str, *, test: bool, point: str = "latest",
                  cleanup_after: float | None = None, points: dict[str, str] | None = None) -> dict[str, Any]:
        """Start a run of the plan (returns at once; the run is a job). ``point`` is the plan-wide point;
        ``points`` overrides it per machine (``{machine: latest|latest-app|ID|tag:TAG|TIME}``): each override is
        resolved now, so a bad one is refused before anything runs (its error names ``points.MACHINE``), and the
        machine boots exactly the point shown in ``result["points"]``."""
        p = self.store.plan(name)
        groups = p["groups"]
        validate_groups(groups, self._machine_ok)
        if point not in ("latest", "latest-app"):
            raise plan_invalid(f"a plan runs at point 'latest' or 'latest-app', not {point!r}", "point")
        in_plan = {m for g in groups for m in g["machines"]}
        chosen: dict[str, dict[str, Any]] = {}
        for m, spec in (points or {}).items():
            if m not in in_plan:
                raise plan_invalid(f"machine {m!r} has a point of its own but is not in plan {name!r}", f"points.{m}",
                                   "Give points only for the plan's machines (`lifeboat plan show`).")
            if not isinstance(spec, str) or not spec.strip() or len(spec) > 256:
                raise plan_invalid(f"the point of machine {m!r} is empty or too long", f"points.{m}")
            try:
                chosen[m] = (await self.failover.resolve(m, spec.strip())).to_dict()
            except LifeboatError as exc:   # its own code and advice, plus which machine's point it was
                exc.message = f"point {spec!r} of machine {m!r}: {exc.message}"
                exc.details.update(field=f"points.{m}", machine=m)
                raise
        if cleanup_after is not None and not test:
            raise plan_invalid("--cleanup-after is for test runs only", "cleanup_after",
                               "Add --test, or leave out --cleanup-after.")
        hosts = {h["name"]: h for h in self.failover.list_hosts()}
        if host not in hosts:
            raise NotFound(f"no recovery host named {host!r}", code="LB_UNKNOWN_HOST",
                           advice="`lifeboat host list` shows the registered ones.")
        overrides: dict[str, dict[str, str]] = {}
        if test:
            iso = [n for n, kind in hosts[host]["networks"].items() if kind == "isolated"]
            if not iso:
                raise plan_invalid(f"recovery host {host} has no isolated network for a test run", "host",
                                   "Register a host with --network NAME=isolated.")
            for g in groups:
                for m in g["machines"]:
                    s = RecoverySettings.from_dict(self.failover.store.settings(m))
                    overrides[m] = {nic: iso[0] for nic in s.nics}
        busy = [r for r in self.store.runs(name) if r["state"] in ("queued", "running", "paused-for-operator")]
        if busy:
            raise Conflict(f"plan {name!r} is running already (job {busy[0]['job']})", code="LB_PLAN_RUNNING",
                           advice="Wait for it, resume it (`lifeboat job resume`) or cancel it (`lifeboat plan "
                                  "cancel`).")
        failed_over = [m for g in groups for m in g["machines"] if self.failover.failover_of(m) is not None]
        if failed_over:
            raise Conflict(f"machine {failed_over[0]!r} of the plan is failed over already", code="LB_FAILED_OVER",
                           advice="Cancel (or clean up) that failover first.")
        run_id = new_job_id()
        started = time.time()
        run: dict[str, Any] = {"id": run_id, "plan": name, "job": None, "host": host, "test": test, "point": point,
                               "state": "queued", "machines": [], "started": started, "ended": None,
                               "cleanup_at": started + cleanup_after if cleanup_after else None,
                               "cleaned_at": None, "report": None}
        env_base = {"LIFEBOAT_PLAN": name, "LIFEBOAT_RUN": run_id, "LIFEBOAT_TEST": "1" if test else "0",
                    "LIFEBOAT_HOST": host}
        job_groups: list[list[StepSpec]] = []
        for n, g in enumerate(groups, start=1):
            machines = list(g["machines"])
            for k, a in enumerate(g["before"], start=1):
                job_groups.append([self._action_step(f"g{n}-before-{k}", a, n, machines, env_base)])
            job_groups.append([self._machine_step(n, m, host, chosen[m]["id"] if m in chosen else point,
                                                  overrides.get(m), run) for m in machines])
            for k, a in enumerate(g["after"], start=1):
                job_groups.append([self._action_step(f"g{n}-after-{k}", a, n, machines, env_base)])
        job = self.manager.submit(JobKind.RECOVERY_PLAN, f"plan:{name}", Plan(job_groups),
                                  title=f"{'Test run' if test else 'Run'} of recovery plan {name} on {host}",
                                  result={"plan": name, "run": run_id, "test": test, "host": host, "point": point,
                                          "groups": groups, "machines": {}, "actions": {}, "points": chosen})
        run["job"] = job.id
        run["state"] = job.state.value
        self.store.put_run(run)
        self.state.event("plan-run", None, plan=name, run=run_id, job=job.id, test=test, host=host)
        self._reported[run_id] = asyncio.Event()
        self._spawn(self._follow(job, run))
        return run

    def _machine_step(self, n: int, machine: str, host: str, point: str, nets: dict[str, str] | None,
                      run: dict[str, Any]) -> StepSpec:
        async def go(ctx: StepContext) -> None:
            t0 = time.time()
            entry: dict[str, Any] = {"group": n, "started": t0}
            ctx.result["machines"][machine] = entry
            if machine not in run["machines"]:   # before it starts: a cancel or cleanup finds a half-done one too
                run["machines"].append(machine)
                self.store.put_run(run)
            try:
                fjob = await self.failover.failover(machine, host, point, networks=nets, test=bool(run["test"]))
            except LifeboatError as exc:
                entry.update(ended=time.time(), state="failed", error=exc.to_dict())
                raise LifeboatError(f"machine {machine!r} (group {n}) did not fail over: {exc.message}",
                                    code=exc.code, advice=exc.advice) from exc
            fo = fjob.result
            pt = fo.get("point", {})
            entry.update(ended=time.time(), state="booted", failover_job=fjob.id, point=pt.get("id"),
                         point_kind=pt.get("kind"), point_time=pt.get("time"),
                         point_age_seconds=round(t0 - pt["time"], 3) if pt.get("time") else None,
                         boot_seconds=fo.get("boot_seconds"), networks=nets or {},
                         address=self._address(machine), steps=[s.to_dict() for s in fjob.steps])
            ctx.note(f"{machine} booted in {fo.get('boot_seconds', 0):.1f} s")

        return StepSpec(f"g{n}-failover-{machine}", f"Fail over {machine} (group {n})", self._retryable(
                            f"g{n}-failover-{machine}", go), 1.0,
                        error_code="LB_FAILOVER")

    def _address(self, machine: str) -> str:
        s = RecoverySettings.from_dict(self.failover.store.settings(machine))
        return next((ip.split("/")[0] for ip in s.ips.values()), "")

    def _action_step(self, name: str, a: dict[str, Any], n: int, machines: list[str],
                     env_base: dict[str, str]) -> StepSpec:
        if a["kind"] == "manual":
            async def manual(ctx: StepContext) -> None:
                t0 = time.time()
                await ctx.pause_for_operator(a["text"])
                who = [r for r in ctx.result.get("resumed", []) if name in r["steps"]]
                ctx.result["actions"][name] = {"kind": "manual", "text": a["text"], "group": n, "started": t0,
                                               "ended": time.time(),
                                               "resumed_by": who[-1]["by"] if who else None}
                ctx.note(f"resumed by {who[-1]['by'] if who else 'an operator'}")
            return StepSpec(name, _action_title(a), manual, 0.0)

        async def script(ctx: StepContext) -> None:
            env = {**{k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "HOME", "TMPDIR")}, **env_base,
                   "LIFEBOAT_GROUP": str(n), "LIFEBOAT_MACHINES": " ".join(machines)}
            addrs = []
            for m in machines:
                ad = self._address(m)
                env["LIFEBOAT_ADDRESS_" + "".join(c if c.isalnum() else "_" for c in m).upper()] = ad
                addrs.append(f"{m}={ad}")
            env["LIFEBOAT_ADDRESSES"] = " ".join(addrs)
            rec: dict[str, Any] = {"kind": "script", "path": a["path"], "group": n, "started": time.time()}
            ctx.result["actions"][name] = rec
            try:
                rc, out, err = await platform.run_tool([a["path"]], timeout=a["timeout"], env=env)
            except FileNotFoundError as exc:
                rec.update(ended=time.time(), exit=None, output="")
                raise LifeboatError(f"script {a['path']} (group {n}) cannot run: {exc.strerror or exc}",
                                    code="LB_SCRIPT_FAILED", advice="Check the path and that it is executable.")
            except PermissionError as exc:
                rec.update(ended=time.time(), exit=None, output="")
                raise LifeboatError(f"script {a['path']} (group {n}) cannot run: {exc.strerror or exc}",
                                    code="LB_SCRIPT_FAILED", advice="Make the script executable (chmod +x).")
            except (TimeoutError, asyncio.TimeoutError):
                rec.update(ended=time.time(), exit=None, output="")
                raise LifeboatError(f"script {a['path']} (group {n}) ran longer than {a['timeout']:g} s and was "
                                    "stopped", code="LB_SCRIPT_TIMEOUT",
                                    advice="Make the script finish sooner, or give it a longer --timeout.")
            text = (out + err)[-OUTPUT_LIMIT:].decode(errors="replace")
            rec.update(ended=time.time(), exit=rc, output=text)
            if rc != 0:
                tail = " | ".join(text.strip().splitlines()[-3:])
                raise LifeboatError(f"script {a['path']} (group {n}) failed with exit code {rc}"
                                    + (f": {tail}" if tail else ""), code="LB_SCRIPT_FAILED",
                                    advice="Read the script's output in the job (`lifeboat job show`) and the DR "
                                           "report, fix the cause, then run the plan again.")
            ctx.note("script exited 0")

        return StepSpec(name, _action_title(a), self._retryable(name, script), 0.1, error_code="LB_SCRIPT_FAILED")

    def _retryable(self, name: str, fn: Callable[[StepContext], Any]) -> Callable[[StepContext], Any]:
        """A failed step stops the plan where it is: the job pauses with the step's error (which machine or
        action, and why) until the operator retries it (``lifeboat job resume``), skips it (``lifeboat plan
        skip``) or cancels the plan (``lifeboat plan cancel``). The other steps of its group go on."""
        async def run(ctx: StepContext) -> None:
            while True:
                try:
                    await fn(ctx)
                    return
                except LifeboatError as exc:
                    err = exc.to_dict()
                    ctx.result.setdefault("failures", []).append({"step": name, "at": time.time(), "error": err})
                    ctx.result.setdefault("stopped", {})[name] = err
                    await ctx.pause_for_operator(
                        f"{err['code']}: {err['message']} (retry: lifeboat job resume {ctx.job.id}; skip: lifeboat "
                        f"plan skip; cancel the plan: lifeboat plan cancel)")
                    ctx.result["stopped"].pop(name, None)
                    if (ctx.job.id, name) in self._skip:
                        self._skip.discard((ctx.job.id, name))
                        ctx.result.setdefault("skipped", []).append(name)
                        ctx.note("skipped by the operator")
                        return
        return run

    async def _follow(self, job: Job, run: dict[str, Any]) -> None:
        """Track the run's job: its state into the run row; at its end the DR report; then the automatic cleanup."""
        try:
            while True:
                last = job.state
                run["state"] = job.state.value
                self.store.put_run(run)
                await self.manager.wait(job.id, until=lambda j, s=last: j.state != s)   # type: ignore[misc]
                if job.finished:
                    break
            run["state"], run["ended"] = job.state.value, job.ended or time.time()
            try:
                run["report"] = write_report(self.reports, run, job.to_dict())
            except OSError:
                log.exception("writing the DR report of run %s", run["id"])
            self.store.put_run(run)
            self.state.event("plan-run-ended", None, plan=run["plan"], run=run["id"], state=run["state"],
                             report=run["report"])
            self._reported.pop(run["id"], asyncio.Event()).set()
            if run["cleanup_at"]:
                await self._cleanup_later(run["id"], run["cleanup_at"])
        except asyncio.CancelledError:
            raise
        except Exception:  # the run's bookkeeping must not take the appliance down
            log.exception("following plan run %s", run["id"])
        finally:
            self._reported.pop(run["id"], asyncio.Event()).set()

    async def _cleanup_later(self, run_id: str, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.time()))
        try:
            await self._cleanup_run(self._run(run_id))
        except LifeboatError:
            log.exception("automatic cleanup of plan run %s", run_id)

    def _run(self, run_id: str) -> dict[str, Any]:
        for r in self.store.runs():
            if r["id"] == run_id:
                return r
        raise NotFound(f"no plan run {run_id!r}", code="LB_UNKNOWN_RUN")

    def _last_run(self, name: str) -> dict[str, Any]:
        self.store.plan(name)
        runs = self.store.runs(name)
        if not runs:
            raise NotFound(f"recovery plan {name!r} has not run", code="LB_UNKNOWN_RUN",
                           advice="Run it with `lifeboat plan run`.")
        return runs[-1]

    async def _cleanup_run(self, run: dict[str, Any]) -> dict[str, Any]:
        removed = []
        for m in run["machines"]:
            if self.failover.failover_of(m) is not None:
                await self.failover.cancel(m)
                removed.append(m)
        run["cleaned_at"] = time.time()
        self.store.put_run(run)
        self.state.event("plan-cleaned-up", None, plan=run["plan"], run=run["id"], machines=removed)
        return {"plan": run["plan"], "run": run["id"], "removed": removed, "cleaned_at": run["cleaned_at"]}

    async def cleanup(self, name: str) -> dict[str, Any]:
        """Remove what the plan's last test run made (its VMs, overlays and files); the machines are protected
        again. Refused for a real run (commit or cancel it) and while the run's job is still going."""
        run = self._last_run(name)
        if not run["test"]:
            raise Conflict(f"the last run of plan {name!r} was a real failover, not a test", code="LB_NOT_A_TEST",
                           advice="Cancel it with `lifeboat plan cancel`, or commit its machines.")
        job = self.manager.jobs.get(run["job"] or "")
        if job is not None and not job.finished:
            raise Conflict(f"the test run of plan {name!r} is still going (job {job.id})", code="LB_PLAN_RUNNING",
                           advice="Cancel it with `lifeboat plan cancel` (that cleans up too).")
        return await self._cleanup_run(run)

    async def commit(self, name: str, *, stop_timeout: float = 60.0) -> dict[str, Any]:
        """Keep the machines of the plan's last real run: each booted one is committed in turn
        (``FailoverService.commit``: standalone images, the VM restarted on them; ``stop_timeout``: how long a
        guest may take to shut down before it is powered off)."""
        run = self._last_run(name)
        if run["test"]:
            raise Conflict(f"the last run of plan {name!r} was a test failover; a test is never committed",
                           code="LB_TEST_RUN", advice="Clean it up (`lifeboat plan cleanup`), then run the plan "
                                                      "without --test.")
        job = self.manager.jobs.get(run["job"] or "")
        if job is not None and not job.finished:
            raise Conflict(f"the run of plan {name!r} is still going (job {job.id})", code="LB_PLAN_RUNNING",
                           advice="Let it finish (resume or skip its stopped steps) or cancel it first.")
        committed, jobs = [], []
        for m in run["machines"]:
            fo = self.failover.failover_of(m)
            if fo is not None and fo["state"] == "booted":
                jobs.append((await self.failover.commit(m, stop_timeout=stop_timeout)).id)
                committed.append(m)
        self.state.event("plan-committed", None, plan=name, run=run["id"], machines=committed)
        return {"plan": name, "run": run["id"], "committed": committed, "jobs": jobs}

    def skip(self, name: str, by: str | None = None) -> dict[str, Any]:
        """Skip the failed steps the plan's running job is stopped at; the plan goes on with the next ones."""
        run = self._last_run(name)
        job = self.manager.jobs.get(run["job"] or "")
        stopped = list((job.result.get("stopped") or {}) if job is not None and not job.finished else {})
        if job is None or not stopped:
            raise Conflict(f"plan {name!r} is not stopped at a failed step", code="LB_NOTHING_TO_SKIP",
                           advice="Only a failed step of a running plan can be skipped (`lifeboat plan show`).")
        for st in stopped:
            self._skip.add((job.id, st))
        self.manager.resume(job.id, by=by)
        self.state.event("plan-step-skipped", None, plan=name, run=run["id"], steps=stopped)
        return {"plan": name, "run": run["id"], "job": job.id, "skipped": stopped}

    async def cancel(self, name: str) -> dict[str, Any]:
        """Cancel the plan's last run: its job if still going, then every failover it made (VMs removed, the
        machines protected again)."""
        run = self._last_run(name)
        job = self.manager.jobs.get(run["job"] or "")
        if job is not None and not job.finished:
            await self.manager.cancel(job.id)
            await self.manager.wait(job.id)
        ev = self._reported.get(run["id"])
        if ev is not None:   # the run's row and report are final before the cleanup marks the row
            await ev.wait()
        return {**await self._cleanup_run(self._run(run["id"])), "cancelled": True}

    def test_run_of(self, machine: str) -> str | None:
        """The plan whose test run (not cleaned up) holds ``machine`` failed over, or None."""
        for r in reversed(self.store.runs()):
            if r["test"] and not r["cleaned_at"] and machine in r["machines"]:
                return str(r["plan"])
        return None

    # control API -------------------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/plans", self._h_list), web.post("/v1/plans", self._h_create),
                web.get("/v1/plans/{name}", self._h_show),
                web.post("/v1/plans/{name}/machines", self._h_add),
                web.post("/v1/plans/{name}/actions", self._h_action),
                web.post("/v1/plans/{name}/edit", self._h_edit),
                web.post("/v1/plans/{name}/run", self._h_run),
                web.post("/v1/plans/{name}/cancel", self._h_cancel),
                web.post("/v1/plans/{name}/skip", self._h_skip),
                web.post("/v1/plans/{name}/commit", self._h_commit),
                web.post("/v1/plans/{name}/cleanup", self._h_cleanup),
                web.get("/v1/reports", self._h_reports)]

    async def _body(self, request: web.Request) -> Body:
        self.require_admin(request)
        return await read_json(request)

    @staticmethod
    def _name(request: web.Request) -> str:
        return check_name(request.match_info["name"], "plan name")

    @staticmethod
    def _int(b: Body, key: str) -> int:
        v = b.data.get(key)
        if isinstance(v, bool) or not isinstance(v, int):
            raise InvalidInput(f"field {key!r} must be an integer", field=key)
        return v

    async def _h_list(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        return json_response(self.plans())

    async def _h_create(self, request: web.Request) -> web.Response:
        b = await self._body(request)
        return json_response(self.create(b.name("name", "plan name", required=True) or ""))

    async def _h_show(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        return json_response(self.show(self._name(request)))

    async def _h_add(self, request: web.Request) -> web.Response:
        b = await self._body(request)
        ms = b.data.get("machines")
        if not isinstance(ms, list) or not ms or len(ms) > MAX_MACHINES or not all(isinstance(m, str) for m in ms):
            raise InvalidInput("field 'machines' must be a list of 1-100 machine names", field="machines")
        return json_response(self.add(self._name(request), self._int(b, "group"), ms))

    async def _h_action(self, request: web.Request) -> web.Response:
        b = await self._body(request)
        return json_response(self.action(
            self._name(request), self._int(b, "group"), b.text("when", required=True, max_len=8) or "",
            script=b.text("script", max_len=4096), timeout=b.duration("timeout"),
            manual=b.text("manual", max_len=2000)))

    async def _h_edit(self, request: web.Request) -> web.Response:
        """``{"op": "remove", "machines": [...]}`` | ``{"op": "move-group", "group": N, "to": M}`` |
        ``{"op": "remove-group", "group": N}`` | ``{"op": "remove-action", "group": N, "when": W, "index": K}``."""
        b = await self._body(request)
        name, op = self._name(request), b.text("op", required=True, max_len=16)
        if op == "remove":
            ms = b.data.get("machines")
            if not isinstance(ms, list) or not ms or len(ms) > MAX_MACHINES or not all(isinstance(m, str) for m in ms):
                raise InvalidInput("field 'machines' must be a list of 1-100 machine names", field="machines")
            return json_response(self.remove(name, ms))
        if op == "move-group":
            return json_response(self.move_group(name, self._int(b, "group"), self._int(b, "to")))
        if op == "remove-group":
            return json_response(self.remove_group(name, self._int(b, "group")))
        if op == "remove-action":
            return json_response(self.remove_action(name, self._int(b, "group"),
                                                    b.text("when", required=True, max_len=8) or "",
                                                    self._int(b, "index")))
        raise InvalidInput(f"unknown edit {op!r} (remove, move-group, remove-group, remove-action)", field="op")

    async def _h_run(self, request: web.Request) -> web.Response:
        b = await self._body(request)
        name = self._name(request)
        pts = b.data.get("points")
        if pts is not None and (not isinstance(pts, dict) or len(pts) > MAX_MACHINES or not all(
                isinstance(k, str) and isinstance(v, str) and len(v) <= 256 for k, v in pts.items())):
            raise InvalidInput("field 'points' must map machine names to point specs", field="points")
        run = await self.run(name, b.name("host", "host name", required=True) or "",
                             test=b.boolean("test", False), point=b.text("point", default="latest", max_len=16)
                             or "latest", cleanup_after=b.duration("cleanup_after"), points=pts)
        if b.boolean("wait", True):   # until the run ends or waits for an operator
            job = await self.manager.wait(run["job"], until=lambda j: j.state == JobState.PAUSED)
            ev = self._reported.get(run["id"])
            if job.finished and ev is not None:
                await ev.wait()
        return json_response({**self._run(run["id"]), "job": self.manager.get(run["job"]).to_dict()})

    async def _h_cancel(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        return json_response(await self.cancel(self._name(request)))

    async def _h_skip(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        who = request.headers.get("X-Lifeboat-Operator", "")[:64]
        who = "".join(c for c in who if c.isprintable())
        return json_response(self.skip(self._name(request), f"lifeboat-admin ({who})" if who else "lifeboat-admin"))

    async def _h_commit(self, request: web.Request) -> web.Response:
        b = await self._body(request)
        t = b.duration("stop_timeout")
        return json_response(await self.commit(self._name(request), stop_timeout=60.0 if t is None else t))

    async def _h_cleanup(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        return json_response(await self.cleanup(self._name(request)))

    async def _h_reports(self, request: web.Request) -> web.Response:
        from .report import list_reports
        self.require_admin(request)
        return json_response(list_reports(self.reports))
