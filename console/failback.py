"""The failback stepper's model (issue 14): for one failed-over machine, its three steps — reprotect, fail back,
re-enable protection — each done, running, next or waiting, with the prerequisites of each checked live, the bytes
compared and sent, ETA and RPO of the reverse replication, and the one action the operator can take next.

Everything shown is derived from the engine's persisted state (the machine's failover record and its failback record,
``FailbackView``) on every refresh, never from what this console did: a console or appliance restart resumes the
stepper where the operator left off. The actions run as console jobs bound to their engine jobs (``reprotect``,
``failback``, ``reenable``); a refusal becomes a notification with the engine's code and advice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from .engine_facade import EngineFacade, FailbackView, format_duration
from .errors import NotificationCenter
from .jobs import ConsoleJob, JobManager

STEP_KINDS = ("reprotect", "failback", "reenable")
TITLES = {"reprotect": "1. Reprotect", "failback": "2. Fail back", "reenable": "3. Re-enable protection"}
#: engine failback states after which each step counts as done
_DONE_AFTER = {"reprotect": ("reprotected", "failing-back", "failed-back", "reenabled"),
               "failback": ("failed-back", "reenabled"), "reenable": ("reenabled",)}


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


@dataclass(slots=True)
class Prerequisite:
    text: str
    ok: bool


@dataclass(slots=True)
class StepView:
    kind: str
    title: str
    status: str                 # done | running | next | waiting
    detail: str = ""
    prerequisites: list[Prerequisite] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return all(p.ok for p in self.prerequisites)


@dataclass(slots=True)
class StepperState:
    machine: str
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

    def step(self, kind: str) -> StepView:
        return next(s for s in self.steps if s.kind == kind)


def build_stepper(machine: str, failover: dict[str, Any] | None, fb: FailbackView | None,
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
    vm_ok = bool(failover) and failover.get("state") in ("booted", "committed")
    connected = bool(fb and fb.target_connected)
    seeded = bool(fb and fb.seeded)
    for kind in STEP_KINDS:
        if fstate in _DONE_AFTER[kind]:
            status = "done"
        elif running == kind or (kind == "reprotect" and fstate == "reprotecting") or \
                (kind == "failback" and fstate == "failing-back"):
            status = "running"
        else:
            status = "waiting"
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
    for s in st.steps:
        if s.status in ("done", "running"):
            continue
        s.status = "next"
        st.next_kind = s.kind
        break
    if any(s.status == "running" for s in st.steps):
        st.next_kind = None
    if fb is not None:
        parts = [f"compared {_mib(fb.bytes_compared)}", f"sent {_mib(fb.bytes_sent)} (data {_mib(fb.data_bytes_sent)})"]
        if fstate in ("reprotecting", "reprotected", "failing-back"):
            parts.append(f"{fb.blocks_pending or 0} blocks to send")
            parts.append("ETA " + ("—" if fb.eta_seconds is None else format_duration(fb.eta_seconds)))
            parts.append("RPO " + ("—" if fb.rpo_seconds is None else format_duration(fb.rpo_seconds)))
        st.numbers = ", ".join(parts)
        if fb.error:
            st.error = f"{fb.error.get('code', '')}: {fb.error.get('message', '')}".strip(": ")
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
    if nk == "reprotect":
        st.button = "&Reprotect…"
        st.confirm_title = "Reprotect"
        st.confirm_text = f"Replicate {machine}'s recovered VM back to its original disks?"
        st.confirm_detail = ("The original site's agent becomes the master target: its disks take no other writes "
                             "until failback. Every block is compared (checksums) and only those that differ are "
                             "sent; the recovered VM keeps running.")
    elif nk == "failback":
        st.button = "&Fail back…"
        st.confirm_title = "Fail back"
        st.confirm_text = f"Fail {machine} back to {target}?"
        st.confirm_detail = ("The recovered VM is shut down (powered off after the timeout), everything it wrote is "
                             "sent (RPO 0) and the target disks are flushed and released; then start the original "
                             "machine.")
    elif nk == "reenable":
        st.button = "Re-&enable protection…"
        st.confirm_title = "Re-enable protection"
        st.confirm_text = f"Protect {machine} again and remove its recovered VM?"
        st.confirm_detail = ("Forward replication restarts; only the blocks that differ from the vault's newest state "
                             "are sent. The recovered VM, its overlay and images are removed from the recovery host.")
    return st


class FailbackModel(QObject):
    """The stepper of one machine, refreshed every ``interval_ms`` while a machine is set (live prerequisites and
    numbers), and its actions."""

    changed = Signal(object)          # StepperState

    def __init__(self, facade: EngineFacade, jobs: JobManager, notes: NotificationCenter,
                 parent: QObject | None = None, *, interval_ms: int = 1000) -> None:
        super().__init__(parent)
        self.facade, self.jobs, self.notes = facade, jobs, notes
        self.machine: str | None = None
        self.state: StepperState | None = None
        self.running: str | None = None
        self.shutdown_timeout = 120.0
        self.remove_recovered = True
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.refresh)

    def set_machine(self, name: str | None) -> None:
        self.machine = name
        if name:
            self._timer.start()
        else:
            self._timer.stop()
        self.refresh()

    def refresh(self) -> StepperState | None:
        name = self.machine
        if not name or not self.facade.running:
            self.state = None
            self.changed.emit(None)
            return None
        try:
            fo = self.facade.failover_state(name)
            fb = self.facade.failback_state(name)
            ms = self.facade.machine_status(name).state
        except Exception as exc:   # the appliance stopping under us: shown on the next refresh
            self.state = StepperState(name, error=str(exc))
            self.changed.emit(self.state)
            return self.state
        self.state = build_stepper(name, fo, fb, self.running, ms)
        self.changed.emit(self.state)
        return self.state

    def run_next(self) -> ConsoleJob | None:
        """Start the step the stepper offers next (the caller has confirmed it)."""
        st = self.refresh()
        if st is None or st.next_kind is None or not self.machine:
            return None
        name, kind = self.machine, st.next_kind

        async def work(job: ConsoleJob) -> Any:
            self.running = kind
            self.refresh()
            try:
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
            finally:
                self.running = None
                self.refresh()
        titles = {"reprotect": f"Reprotect {name}", "failback": f"Fail back {name}",
                  "reenable": f"Re-enable protection of {name}"}
        return self.jobs.start(titles[kind], kind, name, work, cancellable=False, engine_kind=kind)

    def stop(self) -> None:
        self._timer.stop()
