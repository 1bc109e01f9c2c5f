"""Recovery plans and failovers as the console shows them (issue 13): the plan being edited, the live state of its
run, and the actions on them, as Qt signals.

The engine sends a ``JobChanged`` for every state and step change of a plan run's job (kind ``recovery-plan``,
target ``plan:NAME``) and of each machine's own ``failover`` job (its steps open-views … wait-boot: the boot
progress). ``RecoveryModel`` folds both into one ``RunState`` — per group, its before-actions, machines and
after-actions with their step state, and per machine the boot step and progress — and emits ``run_changed``.
A run waiting for an operator is either at a manual action (``prompt`` = the instruction; Resume) or stopped at a
failed step (``stopped`` = the step → error object; Retry, Skip or Cancel).

Plan edits are synchronous engine calls (one SQLite write); runs, commit, cancel and clean-up are asyncio tasks.
Every error of the engine becomes a ``Notification`` (code, message, advice), and, when it names a field
(``details["field"]``: ``groups[2].machines``, ``script``, ``points.web1`` …), also ``field_error(field, text)`` so
the page shows it by that field.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from PySide6.QtCore import QObject, Signal

from .bridge import JobChanged, JobProgress
from .engine_facade import EngineFacade, PlanRunView, PlanSummaryView, PlanView, RecoveredVMView
from .errors import NotificationCenter, UserError, notification_for
from .jobs import ConsoleJob, JobManager

log = logging.getLogger(__name__)

_ACTION = re.compile(r"^g(\d+)-(before|after)-(\d+)$")
_MACHINE = re.compile(r"^g(\d+)-failover-(.+)$")
PLAN_KIND, FAILOVER_KIND = "recovery-plan", "failover"
ACTIVE_STATES = ("queued", "running", "paused-for-operator")


def operator() -> str:
    """Who is at the console: the OS user (kept in the job and the DR report as the one who resumed)."""
    try:
        return f"{getpass.getuser()} (console)"
    except (KeyError, OSError):   # no passwd entry (containers)
        return "unknown user (console)"


def error_field(exc: BaseException) -> str | None:
    """The field an engine error names (``details["field"]``), or None."""
    if isinstance(exc, UserError):
        f = exc.details.get("field")
        return str(f) if f else None
    return None


@dataclass(slots=True)
class StepState:
    """One step of a plan run: an action (``kind`` before/after, ``index``) or a machine's failover (``machine``)
    with the machine's boot step and progress from its own failover job."""
    name: str
    title: str
    kind: str                 # before | machine | after
    state: str = "pending"
    message: str = ""
    error: dict[str, Any] | None = None
    machine: str | None = None
    index: int = 0
    boot_step: str = ""       # the failover job's current step title
    boot_progress: float = 0.0
    point: str | None = None
    boot_seconds: float | None = None


@dataclass(slots=True)
class GroupState:
    number: int
    steps: list[StepState] = field(default_factory=list)

    @property
    def state(self) -> str:
        states = {s.state for s in self.steps}
        for s in ("failed", "paused-for-operator", "running"):
            if s in states:
                return s
        if states and states <= {"succeeded", "skipped"}:
            return "succeeded"
        if "cancelled" in states or "interrupted" in states:
            return "cancelled"
        return "pending"

    @property
    def machines(self) -> list[StepState]:
        return [s for s in self.steps if s.kind == "machine"]


@dataclass(slots=True)
class RunState:
    """The live view of a plan's last run."""
    plan: str
    run: PlanRunView | None = None
    job_id: str | None = None
    state: str = ""
    title: str = ""
    message: str = ""
    progress: float = 0.0
    test: bool = False
    host: str = ""
    groups: list[GroupState] = field(default_factory=list)
    prompt: str | None = None                          # a manual action's instruction, while it waits
    stopped: dict[str, dict[str, Any]] = field(default_factory=dict)   # failed step → error, while stopped
    error: dict[str, Any] | None = None
    report: str | None = None
    points: dict[str, str] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def finished(self) -> bool:
        return bool(self.state) and not self.active

    def step(self, name: str) -> StepState | None:
        return next((s for g in self.groups for s in g.steps if s.name == name), None)

    def machine(self, name: str) -> StepState | None:
        return next((s for g in self.groups for s in g.machines if s.machine == name), None)


def build_run_state(plan: PlanView, job: dict[str, Any] | None,
                    failover_jobs: dict[str, dict[str, Any]]) -> RunState:
    """The run view of ``plan``'s last run from its job's wire form and each machine's newest failover job."""
    run = plan.last_run
    rs = RunState(plan.name, run, run.job if run else None, test=run.test if run else False,
                  host=run.host if run else "", report=run.report if run else None)
    if run is not None:
        rs.state = run.state
    if job is None:
        return rs
    res = job.get("result") or {}
    rs.state, rs.title = str(job.get("state") or rs.state), str(job.get("title") or "")
    rs.message, rs.progress = str(job.get("message") or ""), float(job.get("progress") or 0.0)
    rs.error = job.get("error")
    rs.stopped = dict(res.get("stopped") or {})
    rs.points = {m: str(p.get("id")) for m, p in (res.get("points") or {}).items()}
    groups: dict[int, GroupState] = {}
    for n in range(1, len(res.get("groups") or plan.groups) + 1):
        groups[n] = GroupState(n)
    machines = res.get("machines") or {}
    for d in job.get("steps") or ():
        name = str(d.get("name") or "")
        st = StepState(name, str(d.get("title") or name), "before", str(d.get("state") or "pending"),
                       str(d.get("message") or ""), d.get("error"))
        m_act, m_vm = _ACTION.match(name), _MACHINE.match(name)
        if m_act:
            n, st.kind, st.index = int(m_act.group(1)), m_act.group(2), int(m_act.group(3))
        elif m_vm:
            n, st.kind, st.machine = int(m_vm.group(1)), "machine", m_vm.group(2)
            entry = machines.get(st.machine) or {}
            st.point, st.boot_seconds = entry.get("point"), entry.get("boot_seconds")
            fj = failover_jobs.get(st.machine)
            if fj is not None and st.state in ("running", "succeeded", "paused-for-operator"):
                steps = fj.get("steps") or []
                cur = next((s for s in steps if s.get("state") == "running"), None)
                if cur is None and fj.get("finished"):
                    cur = steps[-1] if steps else None
                st.boot_step = str((cur or {}).get("title") or "")
                st.boot_progress = float(fj.get("progress") or 0.0)
                if st.point is None:
                    st.point = ((fj.get("result") or {}).get("point") or {}).get("id")
            if st.state == "succeeded":
                st.boot_progress, st.boot_step = 1.0, st.boot_step or "booted"
        else:
            continue
        groups.setdefault(n, GroupState(n)).steps.append(st)
    rs.groups = [groups[n] for n in sorted(groups)]
    if rs.state == "paused-for-operator" and not rs.stopped:
        rs.prompt = rs.message
    return rs


class RecoveryModel(QObject):
    """Plans, the selected plan, its run's live state and the recovered VMs; actions on them.

    ``field_error(field, text)`` carries an engine refusal that names a field; ``field_error("", "")`` clears."""

    plans_changed = Signal()
    plan_changed = Signal(object)       # PlanView | None
    run_changed = Signal(object)        # RunState | None
    vms_changed = Signal()
    field_error = Signal(str, str)      # field, message (code: message — advice)
    action_done = Signal(str, object)   # what ("run", "commit", "cancel", "cleanup", "resume", "skip", …), result

    def __init__(self, facade: EngineFacade, jobs: JobManager, notes: NotificationCenter,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.facade = facade
        self.jobs = jobs
        self.notes = notes
        self.plans: list[PlanSummaryView] = []
        self.plan: PlanView | None = None
        self.run: RunState | None = None
        self.vms: dict[str, RecoveredVMView] = {}
        self._plan_job: dict[str, Any] | None = None
        self._failover_jobs: dict[str, dict[str, Any]] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        #: How long a recovered guest may take to shut down at commit before it is powered off (seconds).
        self.commit_stop_timeout = 60.0

    # engine events ---------------------------------------------------------------------------------------
    def on_job_changed(self, ev: JobChanged) -> None:
        """Slot for ``EngineBridge.job_changed``: plan runs and the failovers they start."""
        d = ev.job
        if not d:
            return
        kind = d.get("kind") or d.get("operation")
        if kind == PLAN_KIND:
            if self.plan is not None and d.get("target") == f"plan:{self.plan.name}":
                new_run = self.run is None or self.run.job_id != d.get("id")
                self._plan_job = d
                if new_run or d.get("finished"):
                    self._reload_plan()   # the run row (its report) and the plan's runs
                self._rebuild()
                if d.get("finished"):
                    self._spawn(self._await_report(self.plan.name, str(d.get("id"))), "reading the DR report")
            if d.get("finished"):
                self.refresh_plans()
        elif kind in (FAILOVER_KIND, "failover-change-point", "failover-commit", "failover-cancel"):
            machine = d.get("machine")
            if kind == FAILOVER_KIND and machine:
                self._failover_jobs[str(machine)] = d
                if self.run is not None and self.run.machine(str(machine)) is not None:
                    self._rebuild()
            if d.get("finished"):
                self.refresh_vms()

    def on_job_progress(self, ev: JobProgress) -> None:
        """Boot progress between state changes."""
        for m, d in self._failover_jobs.items():
            if d.get("id") == ev.job_id and self.run is not None and self.run.machine(m) is not None:
                d = {**d, "progress": ev.progress}
                self._failover_jobs[m] = d
                self._rebuild()
                return

    async def _await_report(self, plan: str, job_id: str, timeout: float = 15.0) -> None:
        """The appliance writes the DR report just after the run's job ends (no event says so): look again a
        few times, then show it."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            view = self.facade.plan(plan)
            run = view.last_run
            if run is None or run.job != job_id or run.report:
                break
            await asyncio.sleep(0.25)
        if self.plan is not None and self.plan.name == plan:
            self._reload_plan()
            self._rebuild()

    def _rebuild(self) -> None:
        if self.plan is None:
            self.run = None
        else:
            job = self._plan_job if (self._plan_job and self.plan.last_run
                                     and self._plan_job.get("id") == self.plan.last_run.job) else None
            self.run = build_run_state(self.plan, job, self._failover_jobs)
        self.run_changed.emit(self.run)

    # queries ---------------------------------------------------------------------------------------------
    def refresh_plans(self) -> None:
        try:
            self.plans = self.facade.plans()
        except Exception as exc:
            self.notes.handle(exc, "listing the recovery plans")
            return
        self.plans_changed.emit()

    def refresh_vms(self) -> None:
        async def go() -> None:
            self.vms = {v.machine: v for v in await self.facade.recovered_vms()}
            self.vms_changed.emit()
        self._spawn(go(), "listing the recovered VMs")

    def select(self, name: str | None) -> None:
        """Show plan ``name`` (None: nothing) and its last run."""
        self.field_error.emit("", "")
        if name is None:
            self.plan, self._plan_job = None, None
            self.plan_changed.emit(None)
            self._rebuild()
            return
        try:
            self.plan = self.facade.plan(name)
            run = self.plan.last_run
            self._plan_job = self.facade.plan_run_job(name) if run is not None and run.job else None
        except Exception as exc:
            self.notes.handle(exc, f"reading recovery plan {name}")
            return
        self.plan_changed.emit(self.plan)
        self._rebuild()

    def _reload_plan(self) -> None:
        if self.plan is None:
            return
        try:
            self.plan = self.facade.plan(self.plan.name)
        except Exception as exc:
            self.notes.handle(exc, f"reading recovery plan {self.plan.name}")
            return
        self.plan_changed.emit(self.plan)

    # plan editing (synchronous) ----------------------------------------------------------------------------
    def _edit(self, what: str, fn: Callable[[], PlanView]) -> PlanView | None:
        try:
            view = fn()
        except Exception as exc:
            self._refused(exc, what)
            return None
        self.field_error.emit("", "")
        self.plan = view
        self.plan_changed.emit(view)
        self.refresh_plans()
        self._rebuild()
        return view

    def _refused(self, exc: BaseException, what: str) -> None:
        note = notification_for(exc, what)
        if note is None:
            self.notes.handle(exc, what)
            return
        self.notes.notify(note)
        f = error_field(exc)
        if f:
            assert isinstance(exc, UserError)
            self.field_error.emit(f, f"{exc.code}: {exc.message}" + (f" — {exc.advice}" if exc.advice else ""))

    def create(self, name: str) -> PlanView | None:
        view = self._edit(f"create plan {name}", lambda: self.facade.create_plan(name))
        return view

    def add_machines(self, group: int, machines: list[str]) -> PlanView | None:
        plan = self._need_plan()
        return self._edit(f"add to group {group}", lambda: self.facade.plan_add_machines(plan, group, machines))

    def remove_machines(self, machines: list[str]) -> PlanView | None:
        plan = self._need_plan()
        return self._edit("remove from the plan", lambda: self.facade.plan_remove_machines(plan, machines))

    def move_group(self, group: int, to: int) -> PlanView | None:
        plan = self._need_plan()
        return self._edit(f"move group {group}", lambda: self.facade.plan_move_group(plan, group, to))

    def remove_group(self, group: int) -> PlanView | None:
        plan = self._need_plan()
        return self._edit(f"remove group {group}", lambda: self.facade.plan_remove_group(plan, group))

    def add_action(self, group: int, when: str, *, script: str | None = None, timeout: float | None = None,
                   manual: str | None = None) -> PlanView | None:
        plan = self._need_plan()
        return self._edit(f"add an action to group {group}", lambda: self.facade.plan_add_action(
            plan, group, when, script=script, timeout=timeout, manual=manual))

    def remove_action(self, group: int, when: str, index: int) -> PlanView | None:
        plan = self._need_plan()
        return self._edit(f"remove an action of group {group}",
                          lambda: self.facade.plan_remove_action(plan, group, when, index))

    def _need_plan(self) -> str:
        if self.plan is None:
            raise RuntimeError("no recovery plan selected")
        return self.plan.name

    # runs (asyncio tasks) ----------------------------------------------------------------------------------
    def _spawn(self, coro: Awaitable[Any], what: str, done: str | None = None) -> asyncio.Future[Any]:
        """Run ``coro`` as a task: an error becomes a notification (and a field message), success ``action_done``."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def finished(t: asyncio.Future[Any]) -> None:
            self._tasks.discard(t)
            if t.cancelled():
                return
            exc = t.exception()
            if exc is not None:
                self._refused(exc, what)
            elif done is not None:
                self.action_done.emit(done, t.result())
        task.add_done_callback(finished)
        return task

    def run_plan(self, host: str, *, test: bool, point: str = "latest", points: dict[str, str] | None = None,
                 cleanup_after: float | None = None) -> asyncio.Future[Any]:
        plan = self._need_plan()
        self.field_error.emit("", "")

        async def go() -> PlanRunView:
            run = await self.facade.run_plan(plan, host, test=test, point=point, points=points,
                                             cleanup_after=cleanup_after)
            if self.plan is not None and self.plan.name == plan:
                self.select(plan)
            return run
        return self._spawn(go(), f"{'test run' if test else 'run'} of plan {plan}", "run")

    def resume(self) -> None:
        """The manual action is done (or: retry the failed step): the run goes on; who resumed is recorded."""
        plan = self._need_plan()
        try:
            res = self.facade.resume_plan(plan, operator())
        except Exception as exc:
            self._refused(exc, f"resume plan {plan}")
            return
        self.action_done.emit("resume", res)

    def skip(self) -> None:
        plan = self._need_plan()
        try:
            res = self.facade.skip_plan_step(plan, operator())
        except Exception as exc:
            self._refused(exc, f"skip the failed step of plan {plan}")
            return
        self.action_done.emit("skip", res)

    def cancel(self) -> asyncio.Future[Any]:
        plan = self._need_plan()
        return self._spawn(self._then_reload(self.facade.cancel_plan(plan)), f"cancel plan {plan}", "cancel")

    def commit(self) -> asyncio.Future[Any]:
        plan = self._need_plan()
        return self._spawn(self._then_reload(self.facade.commit_plan(plan, stop_timeout=self.commit_stop_timeout)),
                           f"commit plan {plan}", "commit")

    def cleanup(self) -> asyncio.Future[Any]:
        plan = self._need_plan()
        return self._spawn(self._then_reload(self.facade.cleanup_plan(plan)), f"clean up plan {plan}", "cleanup")

    async def _then_reload(self, coro: Awaitable[Any]) -> Any:
        res = await coro
        if self.plan is not None:
            self.select(self.plan.name)
        self.refresh_vms()
        return res

    def report_url_path(self) -> str | None:
        """The HTML report of the selected plan's last run, when written."""
        run = self.plan.last_run if self.plan is not None else None
        return run.report if run is not None and run.report else None

    # one machine (each a console job bound to its engine job) ---------------------------------------------
    def failover(self, machine: str, host: str, point: str, *, planned: bool = False) -> ConsoleJob:
        async def work(job: ConsoleJob) -> Any:
            res = await self.facade.failover(machine, host, point, planned=planned)
            job.engine_job = res.id
            self.refresh_vms()
            return res
        what = "planned, final point" if planned else point
        return self.jobs.start(f"Failover of {machine} to {host} ({what})", FAILOVER_KIND, machine, work,
                               cancellable=False, engine_kind=FAILOVER_KIND)

    def change_point(self, machine: str, point: str) -> ConsoleJob:
        async def work(job: ConsoleJob) -> Any:
            res = await self.facade.change_failover_point(machine, point)
            job.engine_job = res.id
            self.refresh_vms()
            return res
        return self.jobs.start(f"Change the point of {machine} to {point}", "failover-change-point", machine, work,
                               cancellable=False, engine_kind="failover-change-point")

    def commit_machine(self, machine: str) -> ConsoleJob:
        async def work(job: ConsoleJob) -> Any:
            res = await self.facade.commit_failover(machine, stop_timeout=self.commit_stop_timeout)
            job.engine_job = res.id
            self.refresh_vms()
            return res
        return self.jobs.start(f"Commit the failover of {machine}", "failover-commit", machine, work,
                               cancellable=False, engine_kind="failover-commit")

    def cancel_machine(self, machine: str) -> ConsoleJob:
        async def work(job: ConsoleJob) -> Any:
            res = await self.facade.cancel_failover(machine)
            job.engine_job = res.get("job")
            job.message = f"failover of {machine} cancelled; the VM is removed"
            self.refresh_vms()
            return res
        return self.jobs.start(f"Cancel the failover of {machine}", "failover-cancel", machine, work,
                               cancellable=False, engine_kind="failover-cancel")

    async def shutdown(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
