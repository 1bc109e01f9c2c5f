"""The typed views of the engine's API (``engine/api.py`` hands them on): what a front end gets back from the
appliance instead of ``dict[str, Any]``.

Each is a frozen dataclass with ``from_dict`` that ignores unknown keys and defaults missing optional ones
(docs/CONTRACT.md §5: additive changes never break a front end). Plain Python: no Qt, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from .policy import DEFAULT_POLICY, format_duration

def _known(cls: type, d: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``d`` that are fields of ``cls``: unknown keys (a newer engine's additions) are dropped."""
    return {f.name: d[f.name] for f in fields(cls) if f.name in d}


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _error_text(v: Any) -> str | None:
    """An error as one line: today a string (CONTRACT.md §5, known deviation), an error object tomorrow."""
    if v is None or v == "":
        return None
    if isinstance(v, Mapping):
        code, msg = v.get("code"), v.get("message") or ""
        return f"{code}: {msg}" if code else str(msg)
    return str(v)


# typed views ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PointView:
    """A recovery point: ``kind`` is crash-consistent or app-consistent; ``time`` in epoch seconds."""
    id: str
    seq: int
    time: float
    kind: str
    tag: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PointView:
        k = _known(cls, d)
        return cls(str(k["id"]), int(k.get("seq", 0)), float(k.get("time", 0.0)), str(k.get("kind", "")),
                   k.get("tag"))


@dataclass(frozen=True, slots=True)
class DiskView:
    """One protected disk: sizes and the initial-sync cursor in bytes."""
    index: int
    name: str
    size: int
    synced: bool = False
    sync_cursor: int = 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DiskView:
        k = _known(cls, d)
        return cls(int(k.get("index", 0)), str(k.get("name", "")), int(k.get("size", 0)), bool(k.get("synced")),
                   int(k.get("sync_cursor") or 0))

    @property
    def sync_fraction(self) -> float:
        return 1.0 if self.synced else self.sync_cursor / max(1, self.size)


@dataclass(frozen=True, slots=True)
class ResyncView:
    """``machine_status()["resync"]`` (RESYNC.md §6); the defaults mean "nothing to resync"."""
    required: bool = False
    reason: str | None = None
    progress: float = 1.0
    scheduled_for: float | None = None
    running: bool = False
    blocks_pending: int = 0
    eta_seconds: float | None = None
    last_done: float | None = None
    error: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ResyncView:
        k = _known(cls, d or {})
        return cls(bool(k.get("required")), k.get("reason"), float(k.get("progress", 1.0) or 0.0),
                   _opt_float(k.get("scheduled_for")), bool(k.get("running")), int(k.get("blocks_pending") or 0),
                   _opt_float(k.get("eta_seconds")), _opt_float(k.get("last_done")), _error_text(k.get("error")))


@dataclass(frozen=True, slots=True)
class MachineView:
    """A protected machine as ``machine_status(name)`` reports it (FORMATS.md §9); durations in seconds."""
    name: str
    state: str
    health: str = "ok"
    rpo_seconds: float = 0.0
    rpo_threshold: float = 30.0
    policy: str = DEFAULT_POLICY
    sync_progress: float | None = None
    agent_connected: bool = False
    last_point: PointView | None = None
    points: int = 0
    error: str | None = None
    agent_error: str | None = None
    churn_bytes_per_s: float = 0.0
    upload_bytes_per_s: float = 0.0
    cache_bytes: int = 0
    disks: tuple[DiskView, ...] = ()
    resync: ResyncView = ResyncView()
    health_reason: str = ""
    rpo_known: bool = True
    last_heard: float | None = None
    sync_eta_seconds: float | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MachineView:
        k = _known(cls, d)
        lp = k.get("last_point")
        return cls(
            name=str(k["name"]), state=str(k.get("state", "unprotected")), health=str(k.get("health", "ok")),
            rpo_seconds=float(k.get("rpo_seconds") or 0.0), rpo_threshold=float(k.get("rpo_threshold", 30.0)),
            policy=str(k.get("policy") or DEFAULT_POLICY), sync_progress=_opt_float(k.get("sync_progress")),
            agent_connected=bool(k.get("agent_connected")),
            # a point reduced to its time (older front-end fixtures) still gives a usable view
            last_point=PointView.from_dict({"id": "", **lp}) if isinstance(lp, Mapping) else None,
            points=int(k.get("points") or 0), error=_error_text(k.get("error")),
            agent_error=_error_text(k.get("agent_error")),
            churn_bytes_per_s=float(k.get("churn_bytes_per_s") or 0.0),
            upload_bytes_per_s=float(k.get("upload_bytes_per_s") or 0.0), cache_bytes=int(k.get("cache_bytes") or 0),
            disks=tuple(DiskView.from_dict(x) for x in k.get("disks") or ()),
            resync=ResyncView.from_dict(k.get("resync")), health_reason=str(k.get("health_reason") or ""),
            rpo_known=bool(k.get("rpo_known", True)), last_heard=_opt_float(k.get("last_heard")),
            sync_eta_seconds=_opt_float(k.get("sync_eta_seconds")))

    @property
    def last_point_time(self) -> float | None:
        return self.last_point.time if self.last_point else None


@dataclass(frozen=True, slots=True)
class RevokedView:
    """A revoked machine: when and by whom (SECURITY.md); ``protected`` is whether it was protected."""
    name: str
    revoked_at: float | None = None
    revoked_by: str | None = None
    protected: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RevokedView:
        k = _known(cls, d)
        return cls(str(k["name"]), _opt_float(k.get("revoked_at")), k.get("revoked_by"), bool(k.get("protected")))


@dataclass(frozen=True, slots=True)
class ApplianceStatus:
    """``status()``: protected machines, registered (not yet protected) names, revoked machines, bound ports."""
    machines: tuple[MachineView, ...] = ()
    registered: tuple[str, ...] = ()
    revoked: tuple[RevokedView, ...] = ()
    control_port: int | None = None
    data_port: int | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ApplianceStatus:
        k = _known(cls, d)
        return cls(tuple(MachineView.from_dict(m) for m in k.get("machines") or ()),
                   tuple(str(r["name"]) for r in k.get("registered") or ()),
                   tuple(RevokedView.from_dict(r) for r in k.get("revoked") or ()),
                   k.get("control_port"), k.get("data_port"))

    def machine(self, name: str) -> MachineView | None:
        return next((m for m in self.machines if m.name == name), None)


@dataclass(frozen=True, slots=True)
class AlertView:
    """An alert as the appliance keeps it (CONTRACT.md §2.4): ``id`` stable per cause and subject
    ("LB_RPO_BREACH:vm1"), ``severity`` info | warning | critical, ``component`` machine | vcenter | vault |
    appliance | job | certificate | keyring, ``subject`` the machine or host ("" for the appliance); times in epoch
    seconds, ``cleared_at`` None while active; ``count`` how many raises are folded into it (a flapping cause)."""
    id: str
    code: str
    severity: str = "warning"
    component: str = "machine"
    subject: str = ""
    message: str = ""
    advice: str = ""
    raised_at: float = 0.0
    cleared_at: float | None = None
    acknowledged_at: float | None = None
    acknowledged_by: str | None = None
    count: int = 1

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AlertView:
        k = _known(cls, d)
        return cls(str(k["id"]), str(k.get("code") or ""), str(k.get("severity") or "warning"),
                   str(k.get("component") or "machine"), str(k.get("subject") or ""), str(k.get("message") or ""),
                   str(k.get("advice") or ""), float(k.get("raised_at") or 0.0), _opt_float(k.get("cleared_at")),
                   _opt_float(k.get("acknowledged_at")), k.get("acknowledged_by"), int(k.get("count") or 1))

    @property
    def active(self) -> bool:
        return self.cleared_at is None


@dataclass(frozen=True, slots=True)
class EventView:
    """One entry of the appliance's event log: ``kind`` (``state``, ``health``, ``alert``, ``protect``,
    ``resync-started`` ...) and its ``data`` (``state``/``health``: ``from``, ``to``, ``reason``)."""
    id: int
    time: float
    machine: str | None = None
    kind: str = ""
    data: Mapping[str, Any] | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EventView:
        k = _known(cls, d)
        data = k.get("data")
        return cls(int(k.get("id") or 0), float(k.get("time") or 0.0), k.get("machine"), str(k.get("kind") or ""),
                   dict(data) if isinstance(data, Mapping) else {})


@dataclass(frozen=True, slots=True)
class JobView:
    """An engine job (engine/jobs) read from its wire form ``Job.to_dict()``: ``kind`` (``operation`` in older
    engines), ``state``, ``result``; ``error`` is an error object ``{"code", "message", "advice"}`` or None.
    Steps stay in the wire form (``JobChanged.job["steps"]``), which the console's jobs view reads."""
    id: str
    kind: str
    machine: str | None = None
    state: str = ""
    title: str = ""
    progress: float = 0.0
    finished: bool = False
    message: str = ""
    error: Mapping[str, Any] | None = None
    result: Mapping[str, Any] | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobView:
        k = _known(cls, d)
        return cls(str(k["id"]), str(k.get("kind") or d.get("operation") or ""), k.get("machine"),
                   str(k.get("state") or ""), str(k.get("title") or ""), float(k.get("progress") or 0.0),
                   bool(k.get("finished")), str(k.get("message") or ""), k.get("error"), k.get("result"))


@dataclass(frozen=True, slots=True)
class DrillView:
    """What a test failover returned: the engine job, and where the drill is served (NBD) or written (folder)."""
    job_id: str
    finished: bool
    point: str
    nbd: str | None = None
    exports: tuple[str, ...] = ()
    export_dir: str | None = None

    @classmethod
    def from_job(cls, job: JobView, point: str, export_dir: str | None = None) -> DrillView:
        r = job.result or {}
        return cls(job.id, job.finished, str((r.get("point") or {}).get("id", point)), r.get("nbd"),
                   tuple(r.get("exports") or ()), export_dir)


@dataclass(frozen=True, slots=True)
class CleanupView:
    """A drill cleaned up: the point it showed, the exported images removed with it, the clean-up's engine job."""
    machine: str
    point: str | None = None
    removed: tuple[str, ...] = ()
    job: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CleanupView:
        return cls(str(d.get("cleaned", d.get("machine", ""))), d.get("point"),
                   tuple(str(x) for x in d.get("removed") or ()), d.get("job"))



# recovery: hosts, settings, recovered VMs, plans, runs, reports (issue 13; docs/CONTRACT.md §6) ----------------------
@dataclass(frozen=True, slots=True)
class RecoveryHostView:
    """A registered recovery host: ``networks`` maps each network name to its kind (``isolated``, ``user``,
    ``bridge:BR``)."""
    name: str
    kind: str = "qemu"
    uri: str = ""
    accel: str = "tcg"
    networks: Mapping[str, str] | None = None
    added: float | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RecoveryHostView:
        k = _known(cls, d)
        return cls(str(k["name"]), str(k.get("kind") or "qemu"), str(k.get("uri") or ""), str(k.get("accel") or "tcg"),
                   dict(k.get("networks") or {}), _opt_float(k.get("added")))

    @property
    def isolated_networks(self) -> tuple[str, ...]:
        return tuple(n for n, kind in (self.networks or {}).items() if kind == "isolated")


@dataclass(frozen=True, slots=True)
class RecoverySettingsView:
    """A machine's recovery settings: the VM made on a recovery host, its NIC → network map and re-IP."""
    machine: str
    cpus: int = 1
    memory_mib: int = 512
    firmware: str = "bios"
    nics: Mapping[str, str] | None = None
    ips: Mapping[str, str] | None = None
    gateway: str | None = None
    dns: tuple[str, ...] = ()
    boot_pattern: str = ""
    boot_timeout: float = 300.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RecoverySettingsView:
        k = _known(cls, d)
        return cls(str(k["machine"]), int(k.get("cpus") or 1), int(k.get("memory_mib") or 512),
                   str(k.get("firmware") or "bios"), dict(k.get("nics") or {}), dict(k.get("ips") or {}),
                   k.get("gateway"), tuple(k.get("dns") or ()), str(k.get("boot_pattern") or ""),
                   float(k.get("boot_timeout") or 300.0))


@dataclass(frozen=True, slots=True)
class RecoveredVMView:
    """A failed-over machine's VM (``vm list``): ``state`` is the failover's (starting, running, booted,
    committing, committed, failed, interrupted), ``vm_state`` the hypervisor's; ``point`` the point it runs from."""
    machine: str
    host: str
    state: str
    point: str = ""
    vm: str = ""
    vm_state: str = ""
    point_time: float | None = None
    serial_log: str = ""
    started_at: float | None = None
    booted_at: float | None = None
    boot_seconds: float | None = None
    nbd: str | None = None
    job: str | None = None
    error: Mapping[str, Any] | None = None
    kind: str = "unplanned"
    committed: bool = False
    images: Mapping[str, str] | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RecoveredVMView:
        k = _known(cls, d)
        return cls(str(k["machine"]), str(k.get("host") or ""), str(k.get("state") or ""), str(k.get("point") or ""),
                   str(k.get("vm") or ""), str(k.get("vm_state") or ""), _opt_float(k.get("point_time")),
                   str(k.get("serial_log") or ""), _opt_float(k.get("started_at")), _opt_float(k.get("booted_at")),
                   _opt_float(k.get("boot_seconds")), k.get("nbd"), k.get("job"), k.get("error"),
                   str(k.get("kind") or "unplanned"), bool(k.get("committed")), k.get("images"))


@dataclass(frozen=True, slots=True)
class FailbackView:
    """The reverse direction of a failed-over machine (issue 14; ``lifeboat status``'s ``failback`` object):
    ``state`` reprotecting | reprotected | failing-back | failed-back | reenabled; ``target`` ``{"kind": "original"
    | "disks", "disks": {name: path}}``; ``target_connected`` whether the master target is linked now; ``seeded``
    whether the seed (the full compare) is done; bytes compared and sent (``data_bytes_sent`` of them data), the
    blocks still to send, ``progress`` 0..1, ``eta_seconds`` and ``rpo_seconds`` of the reverse replication;
    ``error`` an error object or None."""
    machine: str
    state: str
    target_kind: str = "original"
    target_disks: Mapping[str, str] | None = None
    target_connected: bool = False
    seeded: bool = False
    progress: float = 0.0
    eta_seconds: float | None = None
    rpo_seconds: float | None = None
    blocks_pending: int | None = None
    bytes_compared: int = 0
    bytes_sent: int = 0
    data_bytes_sent: int = 0
    last_idle_at: float | None = None
    error: Mapping[str, Any] | None = None

    @classmethod
    def from_dict(cls, machine: str, d: Mapping[str, Any]) -> FailbackView:
        t = d.get("target") or {}
        bp = d.get("blocks_pending")
        return cls(machine, str(d.get("state") or ""), str(t.get("kind") or "original"), dict(t.get("disks") or {}),
                   bool(d.get("target_connected")), bool(d.get("seeded")), float(d.get("progress") or 0.0),
                   _opt_float(d.get("eta_seconds")), _opt_float(d.get("rpo_seconds")),
                   None if bp is None else int(bp), int(d.get("bytes_compared") or 0), int(d.get("bytes_sent") or 0),
                   int(d.get("data_bytes_sent") or 0), _opt_float(d.get("last_idle_at")), d.get("error"))


@dataclass(frozen=True, slots=True)
class PlanFailbackMachineView:
    """One machine of a plan being failed back: its plan ``group``, its machine ``state`` (``failed-over``,
    ``reprotecting`` … ``protected``), its failover record (``failover_state``) and its reverse direction
    (``FailbackView``, None before reprotect)."""
    machine: str
    group: int = 1
    state: str = ""
    failover: Mapping[str, Any] | None = None
    failback: FailbackView | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PlanFailbackMachineView:
        m = str(d["machine"])
        fb = d.get("failback")
        return cls(m, int(d.get("group") or 1), str(d.get("state") or ""), d.get("failover"),
                   None if fb is None else FailbackView.from_dict(m, fb))


@dataclass(frozen=True, slots=True)
class PlanFailbackView:
    """A recovery plan's failback as one read (issue 14): every machine of the plan (``PlanFailbackMachineView``,
    in the plan's order) and ``job``, the newest plan-level job (kind ``plan-reprotect``, ``plan-failback`` or
    ``plan-reenable``; kept with the job history, so it is there after a restart; None when the plan had none)."""
    plan: str
    machines: tuple[PlanFailbackMachineView, ...] = ()
    job: JobView | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PlanFailbackView:
        job = d.get("job")
        return cls(str(d["plan"]), tuple(PlanFailbackMachineView.from_dict(m) for m in d.get("machines") or ()),
                   None if job is None else JobView.from_dict(job))


@dataclass(frozen=True, slots=True)
class PlanActionView:
    """A plan action: ``kind`` script (``path``, ``timeout`` seconds) or manual (``text``, the operator's
    instruction the run pauses with)."""
    kind: str
    path: str = ""
    timeout: float = 0.0
    text: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PlanActionView:
        k = _known(cls, d)
        return cls(str(k.get("kind") or ""), str(k.get("path") or ""), float(k.get("timeout") or 0.0),
                   str(k.get("text") or ""))

    @property
    def label(self) -> str:
        return (f"Script {self.path} (timeout {format_duration(self.timeout)})" if self.kind == "script"
                else f"Manual: {self.text}")


@dataclass(frozen=True, slots=True)
class PlanGroupView:
    """One group of a plan: its machines (failed over in parallel) and its before/after actions, in order."""
    machines: tuple[str, ...] = ()
    before: tuple[PlanActionView, ...] = ()
    after: tuple[PlanActionView, ...] = ()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PlanGroupView:
        return cls(tuple(str(m) for m in d.get("machines") or ()),
                   tuple(PlanActionView.from_dict(a) for a in d.get("before") or ()),
                   tuple(PlanActionView.from_dict(a) for a in d.get("after") or ()))


@dataclass(frozen=True, slots=True)
class PlanRunView:
    """A run of a plan: its engine job (kind ``recovery-plan``), test or real, and the DR report once ended."""
    id: str
    plan: str
    job: str | None = None
    host: str = ""
    test: bool = False
    point: str = "latest"
    state: str = ""
    machines: tuple[str, ...] = ()
    started: float | None = None
    ended: float | None = None
    cleanup_at: float | None = None
    cleaned_at: float | None = None
    report: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PlanRunView:
        k = _known(cls, d)
        job = k.get("job")
        return cls(str(k["id"]), str(k.get("plan") or ""), job.get("id") if isinstance(job, Mapping) else job,
                   str(k.get("host") or ""), bool(k.get("test")), str(k.get("point") or "latest"),
                   str(k.get("state") or ""), tuple(k.get("machines") or ()), _opt_float(k.get("started")),
                   _opt_float(k.get("ended")), _opt_float(k.get("cleanup_at")), _opt_float(k.get("cleaned_at")),
                   k.get("report"))


@dataclass(frozen=True, slots=True)
class PlanView:
    """A recovery plan as ``plan show`` gives it: ``valid`` is whether it can run now; when not, ``problem`` is
    the engine's error object, whose ``details["field"]`` names what to fix (``groups[N].machines``, ``groups``)."""
    name: str
    groups: tuple[PlanGroupView, ...] = ()
    created: float | None = None
    updated: float | None = None
    valid: bool = False
    problem: Mapping[str, Any] | None = None
    runs: tuple[PlanRunView, ...] = ()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PlanView:
        k = _known(cls, d)
        return cls(str(k["name"]), tuple(PlanGroupView.from_dict(g) for g in k.get("groups") or ()),
                   _opt_float(k.get("created")), _opt_float(k.get("updated")), bool(k.get("valid")), k.get("problem"),
                   tuple(PlanRunView.from_dict(r) for r in k.get("runs") or ()))

    @property
    def machines(self) -> tuple[str, ...]:
        return tuple(m for g in self.groups for m in g.machines)

    @property
    def problem_field(self) -> str | None:
        return (self.problem or {}).get("details", {}).get("field") if self.problem else None

    @property
    def last_run(self) -> PlanRunView | None:
        return self.runs[-1] if self.runs else None


@dataclass(frozen=True, slots=True)
class PlanSummaryView:
    """A line of ``plan list``."""
    name: str
    groups: int = 0
    machines: int = 0
    last_run: PlanRunView | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PlanSummaryView:
        k = _known(cls, d)
        lr = k.get("last_run")
        return cls(str(k["name"]), int(k.get("groups") or 0), int(k.get("machines") or 0),
                   PlanRunView.from_dict(lr) if isinstance(lr, Mapping) else None)


@dataclass(frozen=True, slots=True)
class ReportView:
    """A DR report (``report list``): per machine the point used, its age (data-loss window) and boot time (RTO);
    ``html`` is the self-contained page to open, ``json`` the same as data."""
    id: str
    plan: str
    test: bool = False
    host: str = ""
    state: str = ""
    started: float | None = None
    ended: float | None = None
    rto_seconds: float | None = None
    machines: tuple[Mapping[str, Any], ...] = ()
    json: str = ""
    html: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReportView:
        k = _known(cls, d)
        return cls(str(k["id"]), str(k.get("plan") or ""), bool(k.get("test")), str(k.get("host") or ""),
                   str(k.get("state") or ""), _opt_float(k.get("started")), _opt_float(k.get("ended")),
                   _opt_float(k.get("rto_seconds")), tuple(dict(m) for m in k.get("machines") or ()),
                   str(k.get("json") or ""), str(k.get("html") or ""))


@dataclass(frozen=True, slots=True)
class TargetMachineView:
    """One protected machine's share of the target's health (``TargetHealthView.machines``)."""
    name: str
    last_upload: float | None = None
    upload_backlog_records: int = 0
    apply_backlog_records: int | None = None
    error: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TargetMachineView:
        k = _known(cls, d)
        ab = k.get("apply_backlog_records")
        return cls(str(k["name"]), _opt_float(k.get("last_upload")), int(k.get("upload_backlog_records") or 0),
                   None if ab is None else int(ab), _error_text(k.get("error")))


@dataclass(frozen=True, slots=True)
class TargetHealthView:
    """The vault target's health (``target_health()``; docs/CONTRACT.md §8). ``state``: ok | idle | unknown | stalled |
    throttled | error, with ``detail`` saying why. ``None`` means unknown or not applicable, never "fine":
    ``last_upload`` None (nothing reached the target this run), ``throttled`` None (a local vault cannot be),
    ``rate_limit`` None (no upload limit in force now), ``apply_backlog_records`` None (a local vault applies as it
    writes)."""
    kind: str = "local"
    location: str | None = None
    container: str | None = None
    state: str = "unknown"
    detail: str = ""
    time: float = 0.0
    last_upload: float | None = None
    upload_backlog_records: int = 0
    apply_backlog_records: int | None = None
    throttled: bool | None = None
    throttle_window: float = 60.0
    throttle_events: int = 0
    last_throttle_time: float | None = None
    last_throttle_status: int | None = None
    rate_limit: float | None = None
    error: str | None = None
    machines: tuple[TargetMachineView, ...] = ()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TargetHealthView:
        k = _known(cls, d)
        lt = d.get("last_throttle") if isinstance(d.get("last_throttle"), Mapping) else {}
        ab, th = k.get("apply_backlog_records"), k.get("throttled")
        return cls(str(k.get("kind", "local")), k.get("location"), k.get("container"), str(k.get("state", "unknown")),
                   str(k.get("detail") or ""), float(k.get("time") or 0.0), _opt_float(k.get("last_upload")),
                   int(k.get("upload_backlog_records") or 0), None if ab is None else int(ab),
                   None if th is None else bool(th), float(k.get("throttle_window") or 60.0),
                   int(k.get("throttle_events") or 0), _opt_float((lt or {}).get("time")),
                   None if not lt or lt.get("status") is None else int(lt["status"]),
                   _opt_float(k.get("rate_limit")), _error_text(k.get("error")),
                   tuple(TargetMachineView.from_dict(m) for m in k.get("machines") or ()))


@dataclass(frozen=True, slots=True)
class CertificateView:
    """The TLS certificate a vCenter presents, as an operator checks it before trusting it: ``subject`` and
    ``issuer`` (RFC 4514), validity in epoch seconds (``expired``/``not_yet_valid`` by this host's clock), the
    SHA-256 thumbprint (``AA:BB:…``), the names it is for, and, when a CA was given, whether that CA vouches for it
    (``trusted``; ``why`` is the verifier's reason when not)."""
    subject: str
    issuer: str
    not_before: float
    not_after: float
    sha256: str
    names: tuple[str, ...] = ()
    serial: str = ""
    self_signed: bool = False
    expired: bool = False
    not_yet_valid: bool = False
    trusted: bool | None = None
    why: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CertificateView:
        k = _known(cls, d)
        return cls(str(k.get("subject", "")), str(k.get("issuer", "")), float(k.get("not_before") or 0.0),
                   float(k.get("not_after") or 0.0), str(k.get("sha256", "")), tuple(k.get("names") or ()),
                   str(k.get("serial", "")), bool(k.get("self_signed")), bool(k.get("expired")),
                   bool(k.get("not_yet_valid")), k.get("trusted"), str(k.get("why") or ""))
