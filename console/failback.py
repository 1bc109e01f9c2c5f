"""The failback stepper's model (issue 14): for one failed-over machine, or a recovery plan whose machines are
failed over, its three steps — reprotect, fail back, re-enable protection — each done, running, next or waiting,
with the prerequisites of each checked live, the bytes compared and sent, ETA and RPO of the reverse replication,
and the one action the operator can take next. A plan's steps carry a row per machine (its own state and numbers);
its fail back runs the plan's groups in reverse order.

Everything shown is derived from the engine's persisted state (the failover and failback records, ``FailbackView``;
for a plan ``PlanFailbackView``, which adds the plan-level job) on every refresh, never from what this console did:
a console or appliance restart resumes the stepper where the operator left off. The actions run as console jobs
bound to their engine jobs (``reprotect``, ``failback``, ``reenable``; ``plan-reprotect``, ``plan-failback``,
``plan-reenable``); a refusal becomes a notification with the engine's code and advice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from PySide6.QtCore import QObject, QTimer, Signal

from .engine_facade import EngineFacade, FailbackView, PlanFailbackView, format_duration
from .errors import NotificationCenter
from .jobs import ConsoleJob, JobManager

STEP_KINDS = ("reprotect", "failback", "reenable")
TITLES = {"reprotect": "1. Reprotect", "failback": "2. Fail back", "reenable": "3. Re-enable protection"}
#: engine failback states after which each step counts as done
_DONE_AFTER = {"reprotect": ("reprotected", "failing-back", "failed-back", "reenabled"),
               "failback": ("failed-back", "reenabled"), "reenable": ("reenabled",)}
#: the engine failback state while a step runs (re-enable has none: the record stays failed-back until it ends)
_RUNNING_AS = {"reprotect": "reprotecting", "failback": "failing-back"}
PLAN_JOB_KINDS = {"reprotect": "plan-reprotect", "failback": "plan-failback", "reenable": "plan-reenable"}
_ACTIVE_JOB = ("queued", "running", "paused-for-operator")
_REVERSE_LIVE = ("reprotecting", "reprotected", "failing-back")
_CONFIRM_DETAIL = {
    "reprotect": ("The original site's agent becomes the master target: its disks take no other writes until "
                  "failback. Every block is compared (checksums) and only those that differ are sent; the recovered "
                  "VM keeps running."),
    "failback": ("The recovered VM is shut down (powered off after the timeout), everything it wrote is sent (RPO 0) "
                 "and the target disks are flushed and released; then start the original machine."),
    "reenable": ("Forward replication restarts; only the blocks that differ from the vault's newest state are sent. "
                 "The recovered VM, its overlay and images are removed from the recovery host."),
}
_BUTTONS = {"reprotect": "&Reprotect…", "failback": "&Fail back…", "reenable": "Re-&enable protection…"}


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def reverse_numbers(fb: FailbackView | None) -> str:
    """Bytes compared and sent of the reverse direction and, while it replicates, blocks to send, ETA and RPO."""
    if fb is None:
        return ""
    parts = [f"compared {_mib(fb.bytes_compared)}", f"sent {_mib(fb.bytes_sent)} (data {_mib(fb.data_bytes_sent)})"]
    if fb.state in _REVERSE_LIVE:
        parts.append(f"{fb.blocks_pending or 0} blocks to send")
        parts.append("ETA " + ("—" if fb.eta_seconds is None else format_duration(fb.eta_seconds)))
        parts.append("RPO " + ("—" if fb.rpo_seconds is None else format_duration(fb.rpo_seconds)))
    return ", ".join(parts)


def _error_text(err: Mapping[str, Any] | None) -> str:
    return f"{err.get('code', '')}: {err.get('message', '')}".strip(": ") if err else ""


@dataclass(slots=True)
class Prerequisite:
    text: str
    ok: bool


@dataclass(slots=True)
class MachineRow:
    """One machine under a step of a plan's stepper: its status in that step and what it shows."""
    machine: str
    group: int
    status: str                 # done | running | next | waiting
    state: str = ""             # the machine's failback (or machine) state
    detail: str = ""            # reverse numbers, or the error of its last attempt


@dataclass(slots=True)
class StepView:
    kind: str
    title: str
    status: str                 # done | running | next | waiting
    detail: str = ""
    prerequisites: list[Prerequisite] = field(default_factory=list)
    rows: list[MachineRow] = field(default_factory=list)   # a plan's machines (empty for one machine)

    @property
    def ready(self) -> bool:
        return all(p.ok for p in self.prerequisites)


@dataclass(slots=True)
class StepperState:
    machine: str                      # the machine, or for a plan the plan's name
    applicable: bool = False          # failed over (or reprotected …): the stepper has something to show
    summary: str = ""
    steps: list[StepView] = field(default_factory=list)
    numbers: str = ""                 # bytes compared and sent, ETA and RPO of the reverse direction
    next_kind: str | None = None      # the step the button starts (None: nothing to do now)
    button: str = ""
    confirm_title: str = ""
    confirm_text: str = ""
    confirm_detail: str = ""
    error: str = ""
    plan: bool = False                # the stepper of a plan (``machine`` is the plan's name)

    def step(self, kind: str) -> StepView:
        return next(s for s in self.steps if s.kind == kind)


def _step_status(kind: str, fstate: str, running: bool) -> str:
    if fstate in _DONE_AFTER[kind]:
        return "done"
    if running or fstate == _RUNNING_AS.get(kind):
        return "running"
    return "waiting"


def _pick_next(st: StepperState) -> None:
    """The first step not done is next, unless a step runs (then nothing is offered)."""
    if any(s.status == "running" for s in st.steps):
        return
    for s in st.steps:
        if s.status != "done":
            s.status = "next"
            st.next_kind = s.kind
            return


def build_stepper(machine: str, failover: Mapping[str, Any] | None, fb: FailbackView | None,
                  running: str | None, machine_state: str = "") -> StepperState:
    """The stepper of ``machine`` from the engine's records: ``failover`` (``failover_state``), ``fb``
    (``failback_state``), ``running`` (the kind of a step this console runs now, or None)."""
    st = StepperState(machine)
    fstate = fb.state if fb is not None else ""
    if failover is None and fb is None:
        st.summary = (f"{machine} is not failed over: there is nothing to fail back." if machine_state != "protected"
                      else f"{machine} is protected (forward). Nothing to fail back.")
        return st
    st.applicable = True
    vm_ok = bool(failover) and (failover or {}).get("state") in ("booted", "committed")
    connected = bool(fb and fb.target_connected)
    seeded = bool(fb and fb.seeded)
    for kind in STEP_KINDS:
        status = _step_status(kind, fstate, running == kind)
        prereq: list[Prerequisite] = []
        if kind == "reprotect":
            prereq = [Prerequisite("the recovered VM has booted (or is committed)", vm_ok),
                      Prerequisite("the machine is not reprotected yet", fb is None)]
        elif kind == "failback":
            prereq = [Prerequisite("reprotected: the seed (a compare of every block) is done", seeded),
                      Prerequisite("the original site's agent (master target) is connected", connected)]
        else:
            prereq = [Prerequisite("failed back: the original disks hold the recovered VM's data", fstate == "failed-back")]
        st.steps.append(StepView(kind, TITLES[kind], status, prerequisites=prereq if status != "done" else []))
    _pick_next(st)
    st.numbers = reverse_numbers(fb)
    st.error = _error_text(fb.error) if fb is not None else ""
    target = "the original disks" if not fb or fb.target_kind == "original" else \
        "new disks (" + ", ".join((fb.target_disks or {}).values()) + ")"
    st.summary = {
        "": f"{machine} runs on the recovery host ({(failover or {}).get('host', '?')}).",
        "reprotecting": f"{machine}: the recovered VM replicates back to {target}; the seed is running.",
        "reprotected": f"{machine}: the recovered VM replicates back to {target} near-continuously.",
        "failing-back": f"{machine}: failing back to {target}.",
        "failed-back": f"{machine} is failed back: {target} equal the recovered VM's disks at shutdown.",
        "reenabled": f"{machine} is protected again (forward).",
    }.get(fstate, "")
    nk = st.next_kind
    if nk is not None:
        st.button, st.confirm_title, st.confirm_detail = _BUTTONS[nk], TITLES[nk][3:], _CONFIRM_DETAIL[nk]
        st.confirm_text = {
            "reprotect": f"Replicate {machine}'s recovered VM back to its original disks?",
            "failback": f"Fail {machine} back to {target}?",
            "reenable": f"Protect {machine} again and remove its recovered VM?"}[nk]
    return st


def _plan_job(view: PlanFailbackView) -> tuple[str | None, list[str], Mapping[str, Any]]:
    """The plan-level job's step kind while it is active (else None), its machines, and its result."""
    job = view.job
    if job is None:
        return None, [], {}
    kind = next((k for k, v in PLAN_JOB_KINDS.items() if v == job.kind), None)
    res = job.result or {}
    return (kind if job.state in _ACTIVE_JOB else None), [str(m) for m in res.get("machines") or ()], res


def _missing(names: list[str]) -> str:
    return f" — not yet: {', '.join(names)}" if names else ""


def build_plan_stepper(view: PlanFailbackView, running: str | None) -> StepperState:
    """The stepper of a recovery plan from ``plan_failback_state``: the three steps for the whole plan, each with a
    row per machine; ``running`` is the kind of a step this console runs now (or None). A machine with neither a
    failover nor a failback record that the newest plan re-enable handled is re-enabled (its records went with
    its recovered VM); any other such machine is not failed over."""
    plan = view.plan
    st = StepperState(plan, plan=True)
    active_kind, job_machines, job_res = _plan_job(view)
    reenabled_by_job = set((job_res.get("jobs") or {})) if view.job is not None and \
        view.job.kind == PLAN_JOB_KINDS["reenable"] else set()
    fstate: dict[str, str] = {}
    for mv in view.machines:
        if mv.failback is not None:
            fstate[mv.machine] = mv.failback.state
        elif mv.failover is None and mv.machine in reenabled_by_job:
            fstate[mv.machine] = "reenabled"
        else:
            fstate[mv.machine] = ""
    involved = [mv for mv in view.machines if mv.failover is not None or mv.failback is not None]
    if not view.machines or (not involved and active_kind is None):
        st.summary = (f"No machine of plan {plan} is failed over: there is nothing to fail back." if view.machines
                      else f"Plan {plan} has no machines.")
        if reenabled_by_job and view.machines:
            st.summary = f"Every machine of plan {plan} is protected again (forward)."
        return st
    st.applicable = True
    order = {"reprotect": list(view.machines), "reenable": list(view.machines),
             "failback": sorted(view.machines, key=lambda mv: -mv.group)}
    for kind in STEP_KINDS:
        rows: list[MachineRow] = []
        for mv in order[kind]:
            m = mv.machine
            fs = fstate[m]
            # the engine's plan job runs this step: its machines run; before it exists, this console's request
            mrun = m in job_machines if active_kind == kind else running == kind
            status = _step_status(kind, fs, mrun)
            if kind == "reenable":
                detail = mv.state if fs in ("failed-back", "reenabled") else ""
            else:
                detail = reverse_numbers(mv.failback)
            err = _error_text(mv.failback.error) if mv.failback is not None else ""
            if err and status != "done":
                detail = f"{detail}; {err}" if detail else err
            if mv.failover is None and mv.failback is None and fs != "reenabled":
                detail = f"not failed over ({mv.state})"
            rows.append(MachineRow(m, mv.group, status, fs or ("failed-over" if mv.failover else mv.state), detail))
        statuses = {r.status for r in rows}
        if running == kind or active_kind == kind:   # until its job ends, even once every machine is past it
            status = "running"
        elif statuses == {"done"}:
            status = "done"
        elif "running" in statuses:
            status = "running"
        else:
            status = "waiting"
        todo = [r.machine for r in rows if r.status != "done"]
        by = {mv.machine: mv for mv in view.machines}
        prereq: list[Prerequisite] = []
        if kind == "reprotect":
            not_over = [m for m in todo if by[m].failover is None]
            not_booted = [m for m in todo if by[m].failover is not None
                          and (by[m].failover or {}).get("state") not in ("booted", "committed")]
            prereq = [Prerequisite("every machine of the plan is failed over" + _missing(not_over), not not_over),
                      Prerequisite("every recovered VM has booted (or is committed)" + _missing(not_booted),
                                   not not_booted)]
        elif kind == "failback":
            rev = {m: by[m].failback for m in todo}
            unseeded = [m for m, f in rev.items() if f is None or f.state != "reprotected" or not f.seeded]
            away = [m for m, f in rev.items() if f is None or not f.target_connected]
            prereq = [Prerequisite("every machine reprotected (its seed done)" + _missing(unseeded), not unseeded),
                      Prerequisite("the original site is reachable (every master target connected)" + _missing(away),
                                   not away)]
        else:
            early = [m for m in todo if fstate[m] != "failed-back"]
            prereq = [Prerequisite("every machine failed back" + _missing(early), not early)]
        st.steps.append(StepView(kind, TITLES[kind], status, prerequisites=prereq if status != "done" else [],
                                 rows=rows))
    _pick_next(st)
    fbs = [mv.failback for mv in view.machines if mv.failback is not None]
    if fbs:
        parts = [f"{len(fbs)} of {len(view.machines)} machine(s) replicate back",
                 f"compared {_mib(sum(f.bytes_compared for f in fbs))}",
                 f"sent {_mib(sum(f.bytes_sent for f in fbs))} (data {_mib(sum(f.data_bytes_sent for f in fbs))})"]
        live = [f for f in fbs if f.state in _REVERSE_LIVE]
        if live:
            etas = [f.eta_seconds for f in live]
            rpos = [f.rpo_seconds for f in live]
            parts.append("ETA " + ("—" if None in etas else format_duration(max(e or 0.0 for e in etas))))
            parts.append("worst RPO " + ("—" if None in rpos else format_duration(max(r or 0.0 for r in rpos))))
        st.numbers = ", ".join(parts)
    if view.job is not None and view.job.state == "failed" and view.job.error:
        st.error = f"{view.job.title}: {_error_text(view.job.error)}"
    hosts = sorted({str((mv.failover or {}).get("host") or "") for mv in view.machines} - {""})
    names = [mv.machine for mv in view.machines]
    cur = next((s for s in st.steps if s.status != "done"), None)
    st.summary = {
        None: f"Plan {plan}: every machine is protected again (forward).",
        "reprotect": f"Plan {plan}: {len(names)} machine(s) run on the recovery host ({', '.join(hosts) or '?'}).",
        "failback": f"Plan {plan}: the recovered VMs replicate back to their original disks near-continuously.",
        "reenable": f"Plan {plan} is failed back: the original disks equal the recovered VMs' disks at shutdown.",
    }[cur.kind if cur else None]
    if cur is not None and cur.status == "running":
        st.summary = {"reprotect": f"Plan {plan}: the recovered VMs start replicating back; the seeds run.",
                      "failback": f"Plan {plan}: failing back, the groups in reverse order.",
                      "reenable": f"Plan {plan}: protecting the machines again (forward)."}[cur.kind]
    nk = st.next_kind
    if nk is not None:
        todo = [r.machine for r in st.step(nk).rows if r.status != "done"]
        st.button, st.confirm_title, st.confirm_detail = _BUTTONS[nk], f"{TITLES[nk][3:]} plan {plan}", \
            _CONFIRM_DETAIL[nk]
        if nk == "reprotect":
            st.confirm_text = (f"Replicate the recovered VMs of plan {plan} back to their original disks: "
                               f"{', '.join(todo)}?")
            st.confirm_detail += " All of them at once."
        elif nk == "failback":
            groups = sorted({r.group for r in st.step(nk).rows if r.status != "done"}, reverse=True)
            order_text = ", then ".join(
                f"group {g} ({', '.join(r.machine for r in st.step(nk).rows if r.group == g and r.status != 'done')})"
                for g in groups)
            st.confirm_text = f"Fail plan {plan} back to the original disks: {order_text}?"
            st.confirm_detail = ("The groups go in reverse order, a group's machines in parallel. For each: "
                                 + _CONFIRM_DETAIL[nk][0].lower() + _CONFIRM_DETAIL[nk][1:])
        else:
            st.confirm_text = f"Protect {', '.join(todo)} of plan {plan} again and remove their recovered VMs?"
    return st


class _StepperModel(QObject):
    """A stepper refreshed every ``interval_ms`` while it has a subject (live prerequisites and numbers), and the
    action of its next step as a console job."""

    changed = Signal(object)          # StepperState | None

    def __init__(self, facade: EngineFacade, jobs: JobManager, notes: NotificationCenter,
                 parent: QObject | None = None, *, interval_ms: int = 1000) -> None:
        super().__init__(parent)
        self.facade, self.jobs, self.notes = facade, jobs, notes
        self.subject: str | None = None
        self.state: StepperState | None = None
        self.running: str | None = None
        self.shutdown_timeout = 120.0
        self.remove_recovered = True
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.refresh)

    def _set_subject(self, name: str | None) -> None:
        self.subject = name
        if name:
            self._timer.start()
        else:
            self._timer.stop()
        self.refresh()

    def _read(self, name: str) -> StepperState:
        raise NotImplementedError

    async def _run(self, kind: str, name: str, job: ConsoleJob) -> Any:
        raise NotImplementedError

    def _job_of(self, kind: str, name: str) -> tuple[str, str, str]:
        """(title, console job kind, the job's machine field) of step ``kind`` on ``name``."""
        raise NotImplementedError

    def refresh(self) -> StepperState | None:
        name = self.subject
        if not name or not self.facade.running:
            self.state = None
            self.changed.emit(None)
            return None
        try:
            self.state = self._read(name)
        except Exception as exc:   # the appliance stopping under us: shown on the next refresh
            self.state = StepperState(name, error=str(exc))
        self.changed.emit(self.state)
        return self.state

    def run_next(self) -> ConsoleJob | None:
        """Start the step the stepper offers next (the caller has confirmed it)."""
        st = self.refresh()
        if st is None or st.next_kind is None or not self.subject:
            return None
        name, kind = self.subject, st.next_kind

        async def work(job: ConsoleJob) -> Any:
            self.running = kind
            self.refresh()
            try:
                return await self._run(kind, name, job)
            finally:
                self.running = None
                self.refresh()
        title, jkind, target = self._job_of(kind, name)
        return self.jobs.start(title, jkind, target, work, cancellable=False, engine_kind=jkind)

    def stop(self) -> None:
        self._timer.stop()


class FailbackModel(_StepperModel):
    """The stepper of one machine (the machine page)."""

    @property
    def machine(self) -> str | None:
        return self.subject

    def set_machine(self, name: str | None) -> None:
        self._set_subject(name)

    def _read(self, name: str) -> StepperState:
        return build_stepper(name, self.facade.failover_state(name), self.facade.failback_state(name), self.running,
                             self.facade.machine_status(name).state)

    def _job_of(self, kind: str, name: str) -> tuple[str, str, str]:
        return ({"reprotect": f"Reprotect {name}", "failback": f"Fail back {name}",
                 "reenable": f"Re-enable protection of {name}"}[kind], kind, name)

    async def _run(self, kind: str, name: str, job: ConsoleJob) -> Any:
        if kind == "reprotect":
            res: Any = await self.facade.reprotect(name)
            job.engine_job = res.id
        elif kind == "failback":
            res = await self.facade.failback(name, shutdown_timeout=self.shutdown_timeout)
            job.engine_job = res.id
        else:
            res = await self.facade.reenable(name, remove_recovered=self.remove_recovered)
            job.engine_job = (res.get("job") or {}).get("id")
        return res


class PlanFailbackModel(_StepperModel):
    """The stepper of a recovery plan (the plans page): one read of ``plan_failback_state`` per refresh."""

    @property
    def plan(self) -> str | None:
        return self.subject

    def set_plan(self, name: str | None) -> None:
        self._set_subject(name)

    def _read(self, name: str) -> StepperState:
        view = self.facade.plan_failback_state(name)
        if view is None:
            return StepperState(name, plan=True)
        return build_plan_stepper(view, self.running)

    def _job_of(self, kind: str, name: str) -> tuple[str, str, str]:
        return ({"reprotect": f"Reprotect plan {name}", "failback": f"Fail back plan {name}",
                 "reenable": f"Re-enable protection of plan {name}"}[kind], PLAN_JOB_KINDS[kind], f"plan:{name}")

    async def _run(self, kind: str, name: str, job: ConsoleJob) -> Any:
        if kind == "reprotect":
            res = await self.facade.plan_reprotect(name)
        elif kind == "failback":
            res = await self.facade.plan_failback(name, shutdown_timeout=self.shutdown_timeout)
        else:
            res = await self.facade.plan_reenable(name, remove_recovered=self.remove_recovered)
        job.engine_job = res.id
        return res
