"""The engine's one door for front ends: the console (``console/``) and the CLI's admin client.

A front end imports this module and nothing else under ``engine`` (the console's rule is checked by
``tests/console/test_architecture.py``). It holds:

- an embedded appliance: :class:`EmbeddedAppliance` (``open_appliance(home, listen=...)`` starts one), whose queries
  return the typed views below instead of ``dict[str, Any]``;
- home set-up: :func:`init_home`, :func:`is_initialised`, :func:`configure_home`, :func:`delete_vault_key`;
- the typed views: :class:`ApplianceStatus`, :class:`MachineView`, :class:`DiskView`, :class:`ResyncView`,
  :class:`PointView`, :class:`RevokedView`, :class:`DrillView`, :class:`CleanupView`, :class:`JobView`; each is a frozen
  dataclass with ``from_dict`` that ignores unknown keys and defaults missing optional ones (CONTRACT.md §5:
  additive changes never break a front end);
- the one policy type, :class:`Policy`, with ``format_duration``, ``parse_duration``, ``parse_window`` and ``health_for``;
- ``parse_address``: the one ``HOST:PORT`` parser;
- the error classes (``LifeboatError`` and its subclasses) and the event classes (``MachineStatus`` …, ``EventBus``);
- the admin client of the control API (:class:`AdminClient`) and a vCenter login check for set-up wizards.

Everything here is Qt-free plain Python; the threading rules of docs/CONTRACT.md §1 apply unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping

# Appliance.start() imports these lazily; importing them with this module keeps those imports (and a GUI toolkit's
# import hook, which reads each new module's source) off a front end's running event loop.
from .appliance import control as _control  # noqa: F401
from .appliance import recovery_service as _recovery_service  # noqa: F401
from .appliance.appliance import Appliance, init_home
from .appliance.recovery_service import RecoveryService
from .client import AdminClient
from .errors import (AlreadyExists, ApplianceUnreachable, AuthError, CertificateRefused, Conflict, ExportRefused,
                     IntegrityError, InvalidInput, InvalidName, KeyringError, LifeboatError, ListenFailed,
                     MachineRevoked, MailError, NotFound, NotInitialised, NotReady, ProtocolError, ProxyAuthFailed,
                     ProxyError, RateLimited, StorageError, UnknownMachine, UnknownPoint, UnknownPolicy,
                     WrongPassphrase, EgressRefused)
from .events import Alert, Event, EventBus, JobChanged, JobProgress, MachineStatus, PointCreated
from .home import ApplianceHome
from .jobs import JobManager
from .net import parse_address
from .policy import (DEFAULT_POLICY, Policy, format_duration, format_size, health_for, parse_duration, parse_size,
                     parse_window)
from .secrets import delete_secret, vault_key_name
from .vault import local as _local_vault  # noqa: F401
from .vsphere import service as _vsphere_service  # noqa: F401
from .vsphere.errors import CertificateUntrusted, LoginFailed, VCenterUnreachable
from .vsphere.service import VSphereService


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


# home set-up ---------------------------------------------------------------------------------------------------------
def is_initialised(home: Path) -> bool:
    """Whether ``home`` holds an initialised appliance (its ``appliance.json``)."""
    return ApplianceHome(Path(home)).config.exists()


def configure_home(home: Path, *, control_port: int, data_port: int, listen: str, vault: Path) -> None:
    """Set an initialised home's ports, listen address and local vault folder (blocking: small file write)."""
    h = ApplianceHome(Path(home))
    cfg = json.loads(h.config.read_text())
    cfg.update(control_port=control_port, data_port=data_port, listen=listen,
               vault={"kind": "local", "path": str(Path(vault).expanduser().resolve())})
    h.save_config(cfg)


def delete_vault_key(appliance_id: str) -> None:
    """Remove an appliance's vault key from the OS keyring (a set-up that is abandoned leaves nothing behind)."""
    delete_secret(vault_key_name(appliance_id))


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


def fetch_vcenter_certificate(host: str, port: int = 443, *, ca_pem: str | None = None,
                              timeout: float = 10.0) -> CertificateView:
    """The certificate ``host:port`` presents, read without trusting it (through ``engine.net``). With ``ca_pem``
    the view also says whether that CA (and the host name) vouch for it. Blocking: use a thread.

    Raises ``VCenterUnreachable`` (no TCP/TLS) or ``InvalidInput`` (``ca_pem`` is not a PEM certificate)."""
    from .vsphere.connect import Target, certificate_details, fetch_certificate, probe_certificate
    if ca_pem:
        return CertificateView.from_dict(probe_certificate(Target(host, port, "", "ca", ca_pem=ca_pem), timeout))
    return CertificateView.from_dict(certificate_details(fetch_certificate(Target(host, port, ""), timeout)))


def check_vcenter_login(host: str, port: int, user: str, password: str, thumbprint: str = "", *,
                        ca_pem: str | None = None, timeout: float = 30.0) -> None:
    """Log in to a vCenter trusting exactly ``thumbprint`` (or, with ``ca_pem``, the certificates that CA signed
    for this host name), then log out; nothing is stored. Blocking.

    Raises ``LoginFailed``, ``CertificateUntrusted`` (its ``details["thumbprint"]`` is the certificate seen) or
    another ``LifeboatError`` (unreachable, not vSphere)."""
    from .vsphere.connect import Target, connect, disconnect
    target = (Target(host, port, user, "ca", ca_pem=ca_pem) if ca_pem
              else Target(host, port, user, "thumbprint", thumbprint=thumbprint))
    si, _ = connect(target, password, timeout=timeout)
    disconnect(si)


# the embedded appliance ----------------------------------------------------------------------------------------------
class EmbeddedAppliance:
    """An ``Appliance`` run inside the caller's event loop, queried through typed views.

    Every method runs on the loop thread that called :meth:`start` (CONTRACT.md §1). ``appliance`` is the engine
    object itself, for tests and diagnostics; front ends use the methods here."""

    def __init__(self, home: Path, *, listen: str | None = None) -> None:
        self.appliance = Appliance(Path(home), listen=listen)

    async def start(self) -> None:
        """Start in the running loop; on failure nothing is left running and the error propagates."""
        try:
            await self.appliance.start()
        except BaseException:
            await self.appliance.stop()
            raise

    async def stop(self) -> None:
        await self.appliance.stop()

    async def __aenter__(self) -> EmbeddedAppliance:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def subscribe(self, fn: Callable[[Event], None]) -> Callable[[], None]:
        """Deliver every engine event to ``fn`` (synchronously, on the loop thread); returns an unsubscribe."""
        return self.appliance.bus.subscribe(fn)

    @property
    def addresses(self) -> dict[str, str]:
        """``{"vault": path, "control": "HOST:PORT", "data": "HOST:PORT"}`` (the ports once started)."""
        app = self.appliance
        out = {"vault": str(app.cfg.get("vault", {}).get("path", ""))}
        if app.control_address:
            out["control"] = f"{app.control_address[0]}:{app.control_address[1]}"
        if app.data_address:
            out["data"] = f"{app.data_address[0]}:{app.data_address[1]}"
        return out

    # queries -------------------------------------------------------------------------------------------------------
    def status(self) -> ApplianceStatus:
        return ApplianceStatus.from_dict(self.appliance.status())

    def machine_status(self, name: str) -> MachineView:
        return MachineView.from_dict(self.appliance.machine_status(name))

    def points(self, name: str) -> list[PointView]:
        return [PointView.from_dict(p) for p in self.appliance.points(name)]

    def policies(self) -> list[Policy]:
        return self.appliance.policies()

    def policy_of(self, name: str) -> Policy:
        return self.appliance.policy_of(name)

    def drill_active(self, name: str) -> bool:
        rec = self.appliance.recovery
        return bool(rec and rec.busy(name))

    def _recovery(self) -> RecoveryService:
        rec = self.appliance.recovery
        if rec is None:
            raise Conflict("the appliance is not running", advice="Start it first.")
        return rec

    def _vsphere(self) -> VSphereService:
        vs = self.appliance.vsphere
        if vs is None:
            raise Conflict("the appliance is not running", advice="Start it first.")
        return vs

    # alerts, events, RPO history -----------------------------------------------------------------------------
    def alerts(self, active_only: bool = True) -> list[AlertView]:
        """Alerts newest first; only the active ones (not cleared) by default."""
        return [AlertView.from_dict(a) for a in self.appliance.alerts_list(active_only)]

    def acknowledge_alert(self, alert_id: str, by: str) -> AlertView:
        """Record that ``by`` has seen the alert (NotFound when there is no such alert)."""
        return AlertView.from_dict(self.appliance.acknowledge_alert(alert_id, by))

    def events(self, since: float | None = None, limit: int = 1000) -> list[EventView]:
        """The event log oldest first: from ``since`` (epoch) on, the newest ``limit`` entries."""
        return [EventView.from_dict(e) for e in self.appliance.events(since, limit)]

    def rpo_history(self, machine: str, since: float | None = None) -> list[tuple[float, float]]:
        """(epoch, RPO seconds) oldest first: 5 s samples for the last hour, 1-minute ones for 25 h before; each
        the worst RPO of its step. Kept in state.db: a restarted console draws the past."""
        return self.appliance.rpo_history_of(machine, since)

    # engine jobs, in their wire form (``Job.to_dict()``, what ``JobChanged.job`` carries) ------------------------
    def _jobs(self) -> JobManager:
        jobs = self.appliance.jobs
        if jobs is None:
            raise Conflict("the appliance is not running", advice="Start it first.")
        return jobs

    def job(self, job_id: str) -> dict[str, Any]:
        return self._jobs().get(job_id).to_dict()

    def jobs(self) -> list[dict[str, Any]]:
        """Every job the appliance remembers (history and jobs a restart interrupted included), oldest first."""
        jobs = self.appliance.jobs
        return [j.to_dict() for j in jobs.list()] if jobs is not None else []

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        return (await self._jobs().cancel(job_id)).to_dict()

    def resume_job(self, job_id: str) -> dict[str, Any]:
        """Let a job paused for an operator go on."""
        return self._jobs().resume(job_id).to_dict()

    # operations ----------------------------------------------------------------------------------------------------
    def set_policy(self, policy: Policy) -> Policy:
        """Validate, then create or replace the whole policy."""
        return self.appliance.set_policy(policy.validate())

    async def protect(self, name: str, policy: str | None = None) -> None:
        await self.appliance.protect(name, policy)

    async def resync(self, name: str, now: bool = True) -> ResyncView:
        return ResyncView.from_dict(await self.appliance.resync(name, now=now))

    async def test_failover(self, name: str, point: str, *, nbd: str | None = None,
                            export_dir: str | None = None) -> DrillView:
        job = await self._recovery().test_failover(name, point, export_dir=export_dir, nbd=nbd)
        return DrillView.from_job(JobView.from_dict(job.to_dict()), point, export_dir)

    async def cleanup(self, name: str) -> CleanupView:
        return CleanupView.from_dict(await self._recovery().cleanup(name))

    def request_bookmark(self, name: str, tag: str | None = None) -> None:
        self.appliance.request_bookmark(name, tag)

    # vCenter (plain data: docs/VSPHERE.md) ---------------------------------------------------------------------------
    def inventory(self) -> dict[str, Any]:
        """``{"vcenters", "datacenters", "clusters", "hosts", "datastores", "networks", "vms"}``; each VM carries
        ``protected_machine`` and ``protection_state``."""
        return self._vsphere().snapshot()

    def vcenters(self) -> list[dict[str, Any]]:
        return list(self._vsphere().list())

    async def register_vcenter(self, host: str, port: int, user: str, password: str, *,
                               thumbprint: str | None = None, ca_pem: str | None = None) -> dict[str, Any]:
        """Register trusting exactly ``thumbprint``, or the certificates ``ca_pem`` signed (one of the two)."""
        return await self._vsphere().register(host, port, user, password, thumbprint=thumbprint or None,
                                              ca_pem=ca_pem or None)

    async def remove_vcenter(self, host: str) -> dict[str, Any]:
        return await self._vsphere().remove(host)

    # network and cloud: egress settings, connectivity check, e-mail alerts (ARCHITECTURE §9.1) --------------------
    def _network(self) -> Any:
        n = self.appliance.network
        if n is None:
            raise Conflict("the appliance is not running", advice="Start it first.")
        return n

    def egress_settings(self) -> dict[str, Any]:
        """The egress settings in their wire form (``EgressSettings.to_dict()``: presets, custom, allow, restricted,
        proxy {url, user, bypass, password_set}, bandwidth {work_hours, work_rate, off_rate, …}) plus
        ``presets_available`` {name: entries}. Never a password."""
        from .egress import PRESETS
        n = self._network()
        s = n.settings()
        d = s.to_dict()
        if d["proxy"] is not None:
            d["proxy"]["password_set"] = bool(s.proxy and s.proxy.user and n.has_proxy_password())
        d["presets_available"] = {k: list(v) for k, v in PRESETS.items()}
        return d

    def save_egress(self, *, presets: list[str], custom: list[str], proxy_url: str = "", proxy_user: str = "",
                    proxy_password: str | None = None, bypass: list[str] = (), work_hours: str = "08:00-18:00",  # type: ignore[assignment]
                    work_rate: str = "unlimited", off_rate: str = "unlimited") -> dict[str, Any]:
        """Validate every field as typed (``InvalidInput.details["field"]`` names the one at fault: ``custom``,
        ``preset``, ``proxy_url``, ``proxy_user``, ``bypass entry``, ``work_hours``, ``work_rate``, ``off_rate``),
        store, and put in force at once. ``proxy_password`` None keeps the stored one."""
        from .egress import BandwidthSchedule, EgressSettings, ProxySettings, parse_rate
        from . import net
        entries = []
        for e in custom:
            if e.strip():
                try:
                    entries.append(net.check_allow_entry(e))
                except InvalidInput as exc:
                    raise InvalidInput(exc.message, field="custom", advice=exc.advice) from None
        proxy = ProxySettings.parse(proxy_url, user=proxy_user.strip() or None,
                                    bypass=[b for b in bypass if b.strip()]) if proxy_url.strip() else None
        bw = BandwidthSchedule(work_hours.strip(), parse_rate(work_rate, what="work_rate"),
                               parse_rate(off_rate, what="off_rate"))
        s = EgressSettings(tuple(presets), tuple(dict.fromkeys(entries)), proxy, bw).validate()
        if proxy is not None and proxy.user and not proxy_password and not self._network().has_proxy_password():
            raise InvalidInput(f"no password for proxy user {proxy.user!r}", field="proxy_password",
                               advice="Type the proxy's password.")
        self._network().save(s, proxy_password=proxy_password or None)
        return self.egress_settings()

    async def test_proxy(self, url: str, user: str = "", password: str | None = None,
                         bypass: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
        """Try a proxy before saving it: ``{"ok", "code", "detail"}`` (a worker thread; nothing stored)."""
        import asyncio
        n = self._network()
        return await asyncio.to_thread(n.test_proxy, url, user.strip() or None, password or None, tuple(bypass))

    async def egress_check(self) -> dict[str, Any]:
        """The connectivity check (``lifeboat egress check --json``'s document)."""
        return (await self._network().check()).to_dict()

    def smtp_settings(self) -> dict[str, Any] | None:
        """``{"server", "host", "port", "starttls", "user", "to", "from", "digest_seconds", "password_set"}`` or None."""
        n = self._network()
        s = n.smtp_settings()
        if s is None:
            return None
        return {**s.to_dict(), "password_set": bool(s.user and n.smtp.password())}

    async def save_smtp(self, *, server: str, to: str, starttls: bool = False, user: str = "",
                        password: str | None = None, sender: str = "", check: bool = True) -> dict[str, Any]:
        """Validate (fields ``server``, ``to``, ``from``, ``user``, ``starttls``), try the server (a worker thread;
        refused → MailError, nothing stored), store."""
        import asyncio
        from .mailer import SmtpSettings
        n = self._network()
        old = n.smtp_settings()
        s = SmtpSettings.parse(server, to, starttls=starttls, user=user.strip() or None, sender=sender.strip() or None,
                               digest_seconds=old.digest_seconds if old else 600.0)
        await asyncio.to_thread(n.save_smtp, s, password or None, check=check)
        return self.smtp_settings() or {}

    async def send_test_email(self) -> str:
        """Send a test e-mail with the stored settings; returns its Message-ID (MailError on failure)."""
        import asyncio
        return await asyncio.to_thread(self._network().send_test)


async def open_appliance(home: Path, *, listen: str | None = None) -> EmbeddedAppliance:
    """Start the appliance of ``home`` in the running loop; stop it with ``await emb.stop()`` (or ``async with``)."""
    emb = EmbeddedAppliance(home, listen=listen)
    await emb.start()
    return emb


__all__ = [
    # embedded appliance and home set-up
    "EmbeddedAppliance", "open_appliance", "Appliance", "init_home", "is_initialised", "configure_home", "delete_vault_key",
    "check_vcenter_login", "fetch_vcenter_certificate", "CertificateView", "AdminClient",
    # typed views and the policy type
    "ApplianceStatus", "MachineView", "DiskView", "ResyncView", "PointView", "RevokedView", "JobView", "DrillView",
    "CleanupView", "AlertView", "EventView", "Policy", "DEFAULT_POLICY", "format_duration", "parse_duration", "format_size", "parse_size",
    "parse_window", "health_for", "parse_address",
    # events
    "Event", "EventBus", "MachineStatus", "PointCreated", "JobProgress", "JobChanged", "Alert",
    # errors
    "LifeboatError", "InvalidInput", "InvalidName", "ExportRefused", "RateLimited", "NotFound", "UnknownMachine",
    "UnknownPoint", "UnknownPolicy", "AlreadyExists", "Conflict", "NotInitialised", "AuthError", "WrongPassphrase",
    "CertificateRefused", "MachineRevoked", "ApplianceUnreachable", "ProtocolError", "IntegrityError", "StorageError",
    "KeyringError", "ListenFailed", "NotReady", "LoginFailed", "CertificateUntrusted", "VCenterUnreachable",
    "EgressRefused", "ProxyAuthFailed", "ProxyError", "MailError",
]
