"""The engine's one door for front ends: the console (``console/``) and the CLI's admin client.

A front end imports this module and nothing else under ``engine`` (the console's rule is checked by
``tests/console/test_architecture.py``). It holds:

- an embedded appliance: :class:`EmbeddedAppliance` (``open_appliance(home, listen=...)`` starts one), whose queries
  return the typed views instead of ``dict[str, Any]``;
- home set-up: :func:`init_home`, :func:`is_initialised`, :func:`configure_home`, :func:`delete_vault_key`;
- the typed views (defined in ``api_views.py``, handed on from here): :class:`ApplianceStatus`, :class:`MachineView`, :class:`DiskView`, :class:`ResyncView`,
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
from pathlib import Path
from typing import Any, Callable, Mapping

# Appliance.start() imports these lazily; importing them with this module keeps those imports (and a GUI toolkit's
# import hook, which reads each new module's source) off a front end's running event loop.
from .appliance import control as _control  # noqa: F401
from .appliance import recovery_service as _recovery_service  # noqa: F401
from .appliance.appliance import Appliance, init_home
from .appliance.recovery_service import RecoveryService
from . import api_views
from .api_views import (PointView, DiskView, ResyncView, MachineView, RevokedView, ApplianceStatus, AlertView,
                        EventView, JobView, DrillView, CleanupView, RecoveryHostView, RecoverySettingsView,
                        RecoveredVMView, FailbackView, PlanFailbackMachineView, PlanFailbackView, PlanActionView,
                        PlanGroupView, PlanRunView, PlanView, PlanSummaryView, ReportView, TargetMachineView,
                        TargetHealthView, CertificateView)
from .client import AdminClient
from .errors import (AlreadyExists, AlreadyFailedOver, ApplianceUnreachable, AuthError, CertificateRefused, Conflict,
                     EgressRefused, ExportRefused, FailoverCommitted, IntegrityError, InvalidInput, InvalidName,
                     KeyringError, LifeboatError, ListenFailed, MachineRevoked, MailError, NotFound, NotInitialised,
                     NotReady, ProtocolError, ProxyAuthFailed, ProxyError, RateLimited, StorageError, UnknownMachine,
                     UnknownPoint, UnknownPolicy, WrongPassphrase)
from .console_remote import RemoteAppliance
from .events import Alert, ApplianceLink, Event, EventBus, JobChanged, JobProgress, MachineStatus, PointCreated
from .home import ApplianceHome
from .jobs import JobManager
from . import net
from .egress import EgressSettings
from .net import parse_address
from .recovery.failover import FailoverService
from .recovery.plan_failback import PlanFailback
from .recovery.plans import PlanService
from .policy import (DEFAULT_POLICY, Policy, format_duration, format_size, health_for, parse_duration, parse_size,
                     parse_window)
from .backup.kit import MIN_PASSPHRASE as KIT_MIN_PASSPHRASE
from .secrets import delete_secret, vault_key_name
from .vault import local as _local_vault  # noqa: F401
from .vsphere import service as _vsphere_service  # noqa: F401
from .vsphere.errors import CertificateUntrusted, LoginFailed, VCenterUnreachable
from .vsphere.service import VSphereService




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
    """Remove an appliance's vault key (and backup key, Azure target credential and proxy password) from the OS
    keyring (a set-up that is abandoned leaves nothing behind)."""
    from .appliance.vault_settings import azure_secret_name
    from .backup.archive import backup_key_name
    from .egress import proxy_password_name
    delete_secret(vault_key_name(appliance_id))
    delete_secret(backup_key_name(appliance_id))
    delete_secret(azure_secret_name(appliance_id))
    delete_secret(proxy_password_name(appliance_id))


def check_azure_target(account_url: str, container: str, *, key: str | None = None, sas: str | None = None,
                       home: Path | None = None, retry_for: float = 15.0, egress: EgressSettings | None = None,
                       proxy_password: str | None = None) -> dict[str, Any]:
    """Test an Azure Blob target, storing nothing (blocking: run it in a worker thread): through ``egress`` (settings
    as typed, e.g. by ``egress_from_form``, with ``proxy_password``), else the egress settings of ``home`` (None:
    those in force in this process, a new home's: direct, no allow-list). Returns
    ``{"account_url", "container", "latency_ms"}``; raises InvalidInput with ``details["field"]`` (``account_url``,
    ``container``, ``secret``), or the failed check's error (LB_CLOUD_AUTH_FAILED, LB_CONTAINER_MISSING,
    LB_CLOUD_UNREACHABLE, LB_EGRESS_REFUSED, LB_PROXY_AUTH, LB_PROXY_UNREACHABLE)."""
    from .appliance.vault_settings import check_azure_target as check
    return check(account_url, container, key=key, sas=sas, root=Path(home) if home is not None else None,
                 retry_for=retry_for, egress=egress, proxy_password=proxy_password)


def egress_from_form(*, presets: list[str] | tuple[str, ...] = (), custom: list[str] | tuple[str, ...] = (),
                     proxy_url: str = "", proxy_user: str = "", bypass: list[str] | tuple[str, ...] = (),
                     password_known: bool = True) -> EgressSettings:
    """Egress settings (URL allow-list and proxy) from a form as typed, validated field by field (pure): the
    Network and cloud page's validation, for a home whose appliance does not run yet (the set-up wizard).
    InvalidInput with ``details["field"]``: ``custom``, ``preset``, ``proxy_url``, ``proxy_user``, ``bypass entry``,
    ``proxy_password`` (a user and no password: ``password_known`` False)."""
    from .egress import settings_from_form
    return settings_from_form(presets=list(presets), custom=list(custom), proxy_url=proxy_url,
                              proxy_user=proxy_user, bypass=list(bypass), password_known=password_known)


def try_proxy(url: str, user: str = "", password: str | None = None, bypass: list[str] | tuple[str, ...] = (),
              target: tuple[str, int] | None = None, *, timeout: float = 10.0) -> dict[str, Any]:
    """Try a proxy typed for a home whose appliance does not run (the set-up wizard), storing nothing: a CONNECT
    tunnel to ``target`` (the proxy's own address when None), nothing sent through it. ``{"ok", "code", "detail",
    "advice"}`` as the running appliance's ``test_proxy``; InvalidInput (``proxy_url``, ``proxy_user``) for what
    is malformed. Blocking: run it in a worker thread."""
    from .appliance.network import proxy_test
    from .egress import ProxySettings
    ps = ProxySettings.parse(url, user=user.strip() or None, bypass=[b for b in bypass if b.strip()])
    return proxy_test(net.Proxy(ps.host, ps.port, ps.user, password if ps.user else None), target, timeout=timeout)


def set_home_egress(home: Path, settings: EgressSettings, proxy_password: str | None = None) -> dict[str, Any]:
    """Store egress settings in ``home`` as ``lifeboat egress ...`` does (``state.db``; the proxy password in the
    OS keyring only, removed when the proxy has none): the appliance uses them from its next start. Returns their
    wire form (``egress_settings()``'s, without ``presets_available``)."""
    from .appliance.network import save_home_egress
    return save_home_egress(Path(home), settings, proxy_password).to_dict()


def set_azure_target(home: Path, account_url: str, container: str, *, key: str | None = None,
                     sas: str | None = None, retry_for: float = 15.0) -> dict[str, Any]:
    """``lifeboat vault set --kind azure`` on a home whose appliance does not run here (the set-up wizard): checks
    through the home's egress settings, then stores (credential in the keyring); refused (LB_CONFLICT) once a
    machine is protected; nothing changed on any failure. Returns ``vault_target()``'s document plus ``check``."""
    from .appliance.vault_settings import set_azure_vault
    return set_azure_vault(Path(home), account_url, container, key=key, sas=sas, retry_for=retry_for)


def export_recovery_kit(home: Path, out: Path, passphrase: str) -> Path:
    """Write the appliance's recovery kit (vault key, backup key, CA; sealed with ``passphrase``, at least
    ``KIT_MIN_PASSPHRASE`` characters) to the new file ``out`` (printable text, 0600). Slow on purpose (scrypt):
    run it off the GUI thread. InvalidInput for a short passphrase or an existing file. When this account's keyring
    lacks the key (the appliance is a service under another account), the running appliance seals it; KeyringError
    when none runs."""
    from .backup.kit import write_kit
    from .backup.via_appliance import export_kit
    if Path(out).exists():
        raise InvalidInput(f"{out} exists; a recovery kit never overwrites a file", field="out")
    aid, blob, _ = export_kit(ApplianceHome(Path(home)), passphrase)
    write_kit(Path(out), blob, aid)
    return Path(out)


def import_recovery_kit(home: Path, kit: Path, passphrase: str) -> dict[str, Any]:
    """Put the kit's keys into the keyring of the running appliance of ``home`` (a locked one then starts its
    roles), or, with none running, into this account's: ``{"appliance_id", "keys", "restored_entries",
    "stored_in", "unlocked"?}``. Blocking (scrypt, and waiting for a locked appliance to start): run it off the GUI
    thread. KitPassphrase (``LB_KIT_PASSPHRASE``), KitCorrupt, Conflict (``LB_KIT_MISMATCH``); nothing is written then."""
    from .backup.kit import read_kit
    from .backup.via_appliance import import_kit
    return import_kit(ApplianceHome(Path(home)), read_kit(Path(kit)), passphrase)


def backup_appliance(home: Path) -> dict[str, Any]:
    """A configuration backup now (home and vault), taken by the running appliance with the keys it holds, or here
    when none runs and this account's keyring holds them: ``{"name", "path", "size", "vault", "taken_by"}``.
    Blocking: run it off the GUI thread."""
    from .backup.via_appliance import backup_now
    return backup_now(ApplianceHome(Path(home)))



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


def _watch_target(appliance: Appliance) -> None:
    """Count the target's 429/503 answers from now on (the dashboard's "throttled")."""
    from .appliance.vault_settings import watch_target
    watch_target(appliance.vault)


# the embedded appliance ----------------------------------------------------------------------------------------------
class EmbeddedAppliance:
    """An ``Appliance`` run inside the caller's event loop, queried through typed views.

    Every method runs on the loop thread that called :meth:`start` (CONTRACT.md §1). ``appliance`` is the engine
    object itself, for tests and diagnostics; front ends use the methods here."""

    def __init__(self, home: Path, *, listen: str | None = None) -> None:
        self.appliance = Appliance(Path(home), listen=listen)

    @classmethod
    def over(cls, appliance: Appliance) -> EmbeddedAppliance:
        """The console API over an appliance someone else runs (the service core serves it to attached
        consoles: engine/appliance/console_link.py); its ``start``/``stop`` are not this object's to call."""
        self = cls.__new__(cls)
        self.appliance = appliance
        _watch_target(appliance)
        return self

    async def start(self) -> None:
        """Start in the running loop; on failure nothing is left running and the error propagates."""
        try:
            await self.appliance.start()
        except BaseException:
            await self.appliance.stop()
            raise
        _watch_target(self.appliance)

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

    # recovery (issue 13): hosts, settings, failover of one machine, plans and their runs, DR reports ------------
    def _failover(self) -> FailoverService:
        fo = self.appliance.failover
        if fo is None:
            raise Conflict("the appliance is not running", advice="Start it first.")
        return fo

    def _plans(self) -> PlanService:
        plans = self.appliance.plans
        if plans is None:
            raise Conflict("the appliance is not running", advice="Start it first.")
        return plans

    def recovery_hosts(self) -> list[RecoveryHostView]:
        return [RecoveryHostView.from_dict(h) for h in self._failover().list_hosts()]

    async def add_recovery_host(self, name: str, *, uri: str = "qemu:///system", networks: list[str] | None = None,
                                kind: str = "qemu", accel: str = "tcg") -> RecoveryHostView:
        """Register a recovery host (``networks``: ``NAME=isolated|user|bridge:BR``); refused when unreachable."""
        return RecoveryHostView.from_dict(await self._failover().add_host(name, kind, uri, list(networks or []),
                                                                          accel))

    def recovery_settings(self, machine: str, changes: Mapping[str, Any] | None = None) -> RecoverySettingsView:
        """The machine's recovery settings, after applying ``changes`` (keys of ``RecoverySettingsView``)."""
        return RecoverySettingsView.from_dict(self._failover().settings(machine, dict(changes) if changes else None))

    async def recovered_vms(self) -> list[RecoveredVMView]:
        """``vm list``: every failed-over machine's VM with the hypervisor's view of it."""
        return [RecoveredVMView.from_dict(v) for v in await self._failover().vms()]

    def failover_state(self, machine: str) -> Mapping[str, Any] | None:
        """What is known of a machine's failover without asking the hypervisor (host, point, state), or None."""
        return self._failover().failover_of(machine)

    async def failover(self, machine: str, host: str, point: str = "latest", *, planned: bool = False) -> JobView:
        """Fail one machine over (unplanned at ``point``, or planned: quiesce, final point, RPO 0); returns the
        ``failover`` job once the VM has booted. Errors: ``AlreadyFailedOver``, ``NotReady``, ``UnknownPoint`` …"""
        return JobView.from_dict((await self._failover().failover(machine, host, point, planned=planned)).to_dict())

    async def change_failover_point(self, machine: str, point: str) -> JobView:
        """Before commit: restart the recovered VM from another point (its overlay is discarded)."""
        return JobView.from_dict((await self._failover().change_point(machine, point)).to_dict())

    async def commit_failover(self, machine: str, *, stop_timeout: float = 60.0) -> JobView:
        """Keep the recovered machine: standalone images on the recovery host; no other point afterwards.
        ``stop_timeout``: how long the guest may take to shut down before it is powered off."""
        return JobView.from_dict((await self._failover().commit(machine, stop_timeout=stop_timeout)).to_dict())

    async def cancel_failover(self, machine: str) -> dict[str, Any]:
        """Stop and remove the recovered VM, discard its overlay; the machine is protected again."""
        return await self._failover().cancel(machine)

    # failback (issue 14): reprotect, fail back, re-enable ---------------------------------------------------------
    def _failback(self) -> Any:
        fb = self.appliance.failback
        if fb is None:
            raise Conflict("the appliance is not running", advice="Start it first.")
        return fb

    def failback_state(self, machine: str) -> FailbackView | None:
        """The reverse direction of ``machine`` (None: never reprotected, or its record removed with the recovered
        VM after re-enable)."""
        d = self._failback().failback_of(machine)
        return None if d is None else FailbackView.from_dict(machine, d)

    async def reprotect(self, machine: str, *, to_disks: Mapping[str, str] | None = None) -> JobView:
        """Replicate the recovered VM back: to the original disks (its agent), or with ``to_disks`` (disk name →
        a path that does not exist yet) to new disks. Returns the ``reprotect`` job once the seed is done; refusals:
        ``LB_NOT_FAILED_OVER``, ``LB_ALREADY_REPROTECTED``, ``LB_TARGET_TOO_SMALL``, ``LB_ORIGINAL_UNREACHABLE`` …"""
        disks = {n: Path(p) for n, p in (to_disks or {}).items()}
        return JobView.from_dict((await self._failback().reprotect(machine, to_disks=disks or None)).to_dict())

    async def failback(self, machine: str, *, shutdown_timeout: float = 120.0) -> JobView:
        """Shut the recovered VM down (forced after ``shutdown_timeout``), send the rest (RPO 0), flush and release
        the target. Refusals: ``LB_NOT_REPROTECTED``, ``LB_ORIGINAL_UNREACHABLE``, ``LB_FAILED_BACK``."""
        return JobView.from_dict((await self._failback().failback(machine,
                                                                  shutdown_timeout=shutdown_timeout)).to_dict())

    async def reenable(self, machine: str, *, remove_recovered: bool = False) -> dict[str, Any]:
        """Forward protection again (only blocks that differ from the vault are sent); ``remove_recovered``: the
        recovered VM, its overlay and images go too. ``{"machine", "job", "state"}``."""
        return await self._failback().reenable(machine, remove_recovered=remove_recovered)

    # a plan's failback (issue 14): plan-level jobs over the machines' steps (engine/recovery/plan_failback.py) --
    def _plan_failback(self) -> PlanFailback:
        return PlanFailback(self._failback())

    def plan_failback_state(self, name: str) -> PlanFailbackView:
        """Every machine of plan ``name`` with its failover and failback records and machine state, and the newest
        plan-level failback job: the plan's stepper in one read."""
        return PlanFailbackView.from_dict(self._plan_failback().view(name))

    async def plan_reprotect(self, name: str) -> JobView:
        """Reprotect every machine of the plan not reprotected yet (job kind ``plan-reprotect`` on ``plan:NAME``,
        a step ``reprotect-M`` per machine, in parallel); returns once every seed is done. Refusals name the
        machines: ``LB_NOT_FAILED_OVER``, ``LB_NOT_READY``, ``LB_ALREADY_REPROTECTED``, ``LB_PLAN_INVALID``."""
        return JobView.from_dict((await self._plan_failback().reprotect(name)).to_dict())

    async def plan_failback(self, name: str, *, shutdown_timeout: float = 120.0) -> JobView:
        """Fail the plan back (kind ``plan-failback``, steps ``gN-failback-M``): groups in reverse order, a
        group's machines in parallel. Refused unless every machine left is reprotected with its original site
        connected: ``LB_NOT_REPROTECTED``, ``LB_ORIGINAL_UNREACHABLE``, ``LB_FAILED_BACK``."""
        return JobView.from_dict((await self._plan_failback().failback(
            name, shutdown_timeout=shutdown_timeout)).to_dict())

    async def plan_reenable(self, name: str, *, remove_recovered: bool = False) -> JobView:
        """Protect every failed-back machine of the plan again (kind ``plan-reenable``, steps ``reenable-M``).
        Refusals: ``LB_NOT_FAILED_BACK`` (naming the machines), ``LB_ALREADY_PROTECTED``."""
        return JobView.from_dict((await self._plan_failback().reenable(
            name, remove_recovered=remove_recovered)).to_dict())

    def plans(self) -> list[PlanSummaryView]:
        return [PlanSummaryView.from_dict(p) for p in self._plans().plans()]

    def plan(self, name: str) -> PlanView:
        """The plan with ``valid``/``problem`` (validation without running) and its last runs."""
        return PlanView.from_dict(self._plans().show(name))

    def create_plan(self, name: str) -> PlanView:
        return PlanView.from_dict(self._plans().create(name))

    def plan_add_machines(self, name: str, group: int, machines: list[str]) -> PlanView:
        """Add machines to group ``group`` (1-based; the next number adds a group). An unknown machine, or one
        in another group already, is refused (``LB_UNKNOWN_MACHINE``; ``LB_PLAN_INVALID`` naming the field)."""
        return PlanView.from_dict(self._plans().add(name, group, list(machines)))

    def plan_remove_machines(self, name: str, machines: list[str]) -> PlanView:
        return PlanView.from_dict(self._plans().remove(name, list(machines)))

    def plan_move_group(self, name: str, group: int, to: int) -> PlanView:
        return PlanView.from_dict(self._plans().move_group(name, group, to))

    def plan_remove_group(self, name: str, group: int) -> PlanView:
        return PlanView.from_dict(self._plans().remove_group(name, group))

    def plan_add_action(self, name: str, group: int, when: str, *, script: str | None = None,
                        timeout: float | None = None, manual: str | None = None) -> PlanView:
        """A script (absolute path on the appliance, ``timeout`` seconds) or a manual instruction, ``when``
        ``before`` or ``after`` the group. Refusals carry ``details["field"]`` (``script``, ``manual``, ``group``)."""
        return PlanView.from_dict(self._plans().action(name, group, when, script=script, timeout=timeout,
                                                       manual=manual))

    def plan_remove_action(self, name: str, group: int, when: str, index: int) -> PlanView:
        return PlanView.from_dict(self._plans().remove_action(name, group, when, index))

    async def run_plan(self, name: str, host: str, *, test: bool, point: str = "latest",
                       points: Mapping[str, str] | None = None, cleanup_after: float | None = None) -> PlanRunView:
        """Start a run (returns at once; follow its job ``run.job``). ``point`` latest | latest-app for the whole
        plan; ``points`` a machine's own point (ID, tag:TAG, TIME, latest, latest-app), resolved now."""
        return PlanRunView.from_dict(await self._plans().run(name, host, test=test, point=point,
                                                             cleanup_after=cleanup_after,
                                                             points=dict(points) if points else None))

    def plan_run_job(self, name: str) -> dict[str, Any] | None:
        """The wire form of the job of the plan's last run (steps, ``result.stopped``, ``result.machines``)."""
        run = self.plan(name).last_run
        if run is None or not run.job:
            return None
        return self.job(run.job)

    def resume_plan(self, name: str, by: str) -> dict[str, Any]:
        """Resume the plan's run where it waits for an operator: a manual action done, or a failed step to retry.
        ``by`` (the operator) is recorded in the job and the DR report."""
        run = self.plan(name).last_run
        if run is None or not run.job:
            raise NotFound(f"recovery plan {name!r} has not run", code="LB_UNKNOWN_RUN",
                           advice="Run it first.")
        return self._jobs().resume(run.job, by=by).to_dict()

    def skip_plan_step(self, name: str, by: str) -> dict[str, Any]:
        """Skip the failed step(s) the plan's run is stopped at; the run goes on."""
        return self._plans().skip(name, by)

    async def cancel_plan(self, name: str) -> dict[str, Any]:
        """Cancel the plan's last run and remove every VM it made (the machines are protected again)."""
        return await self._plans().cancel(name)

    async def commit_plan(self, name: str, *, stop_timeout: float = 60.0) -> dict[str, Any]:
        """Keep the machines of the plan's last real run (each booted one committed)."""
        return await self._plans().commit(name, stop_timeout=stop_timeout)

    async def cleanup_plan(self, name: str) -> dict[str, Any]:
        """Remove what the plan's last test run made."""
        return await self._plans().cleanup(name)

    def reports(self) -> list[ReportView]:
        """The DR reports in the appliance home, oldest first."""
        from .recovery.report import list_reports
        return [ReportView.from_dict(r) for r in list_reports(self.appliance.home.reports)]

    def report_path(self, report_id: str) -> Path:
        """The HTML file of a DR report (``LB_UNKNOWN_REPORT`` when there is none)."""
        from .recovery.report import report_path
        return report_path(self.appliance.home.reports, report_id)

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
        from .egress import settings_from_form
        n = self._network()
        s = settings_from_form(presets=presets, custom=custom, proxy_url=proxy_url, proxy_user=proxy_user,
                               bypass=bypass, work_hours=work_hours, work_rate=work_rate, off_rate=off_rate,
                               password_known=bool(proxy_password) or n.has_proxy_password())
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

    # the vault target (issue 15): Add target, and its health on the dashboard ------------------------------------
    def vault_target(self) -> dict[str, Any]:
        """The target in the home's settings (``lifeboat vault show --json``: ``kind``, ``account_url``,
        ``container``, ``auth``, ``credential`` (where it is kept, never the secret) or ``path``), plus ``in_use``:
        the kind this running appliance replicates to (a change applies at the next start) and ``protected``: the
        protected machines (a target can no longer be set once there is one)."""
        from .appliance.vault_settings import show_vault
        app = self.appliance
        out = show_vault(app.home.root)
        out["in_use"] = str((app.cfg.get("vault") or {}).get("kind", "local"))
        out["protected"] = [m["name"] for m in app.db.machines() if m.get("protected")] if app.db is not None else []
        return out

    async def test_vault_target(self, account_url: str, container: str, *, key: str | None = None,
                                sas: str | None = None, retry_for: float = 8.0) -> dict[str, Any]:
        """Test an Azure target through this appliance's egress settings (in force in its process), storing
        nothing: ``check_azure_target``'s result or its error."""
        import asyncio
        from .appliance.vault_settings import check_azure_target as check
        return await asyncio.to_thread(check, account_url, container, key=key, sas=sas, retry_for=retry_for)

    async def set_vault_target(self, account_url: str, container: str, *, key: str | None = None,
                               sas: str | None = None, retry_for: float = 15.0) -> dict[str, Any]:
        """``lifeboat vault set --kind azure`` for this appliance's home: checked through the egress settings in
        force, then stored (credential in the keyring). LB_CONFLICT once a machine is protected; nothing changed
        on any failure. The running appliance keeps its current target until its next start
        (``restart_required``)."""
        import asyncio
        from .appliance.vault_settings import set_azure_vault
        out = await asyncio.to_thread(set_azure_vault, self.appliance.home.root, account_url, container, key=key,
                                      sas=sas, retry_for=retry_for, egress=False)
        return {**out, "restart_required": True}

    def target_health(self) -> TargetHealthView:
        """The vault target's health now (docs/CONTRACT.md §8): kind and location, last upload, backlog, throttled
        or not, upload rate limit, error. Unknown is said as unknown (None), never as fine."""
        from .appliance.vault_settings import target_health
        return TargetHealthView.from_dict(target_health(self.appliance))


def console_types() -> dict[str, type]:
    """The classes the console link carries (engine/rpc_codec.py): every typed view and event, and Policy."""
    import dataclasses

    def events(c: type) -> list[type]:
        out: list[type] = [c]
        subs: list[type] = type.__subclasses__(c)
        for sub in subs:
            out += events(sub)
        return out
    views = [v for v in globals().values() if isinstance(v, type) and dataclasses.is_dataclass(v)
             and v.__module__ in (__name__, api_views.__name__)]
    return {c.__name__: c for c in (*views, *events(Event), Policy)}


def serve_consoles(appliance: Appliance, *, on_stop: Callable[[str], None] | None = None) -> None:
    """Let consoles attach to ``appliance`` (a started one) through its control API; ``on_stop(reason)`` is how a
    console's explicit Stop reaches the program that runs it (None: consoles cannot stop it)."""
    assert appliance.console_link is not None, "start the appliance first"
    appliance.console_link.bind(EmbeddedAppliance.over(appliance), console_types(), on_stop=on_stop)


async def attach_appliance(home: Path) -> RemoteAppliance:
    """Attach to the running appliance of ``home`` (admin certificate of the home; nothing secret on a command
    line). ApplianceUnreachable when it does not run."""
    remote = RemoteAppliance(Path(home), console_types())
    await remote.start()
    return remote


def appliance_service(home: Path) -> dict[str, Any]:
    """Whether a service runs the appliance of ``home`` here: ``{"manager": "systemd" | "none", "unit",
    "installed", "active"}`` (blocking: a ``systemctl show``; run it in a thread from a GUI loop)."""
    from .service.cli import installed_service
    return installed_service(ApplianceHome(Path(home)))


def start_appliance_service(home: Path) -> str:
    """Start the installed service of ``home`` (blocking); returns the unit. ``LB_NO_SERVICE_MANAGER`` when none."""
    from .service.cli import start_service
    return start_service(ApplianceHome(Path(home)))


def appliance_run_command(home: Path) -> list[str]:
    """The command that runs the appliance of ``home`` in the foreground (the service unit's ExecStart):
    ``lifeboat appliance run --home HOME``, spelled for this installation (frozen program, entry point, or module)."""
    from .service.cli import service_command
    return service_command(Path(home).absolute())


async def open_appliance(home: Path, *, listen: str | None = None) -> EmbeddedAppliance:
    """Start the appliance of ``home`` in the running loop; stop it with ``await emb.stop()`` (or ``async with``)."""
    emb = EmbeddedAppliance(home, listen=listen)
    await emb.start()
    return emb


__all__ = [
    # embedded appliance and home set-up
    "EmbeddedAppliance", "open_appliance", "Appliance", "init_home", "is_initialised", "configure_home", "delete_vault_key",
    "check_vcenter_login", "fetch_vcenter_certificate", "CertificateView", "AdminClient",
    # the vault target (issue 15)
    "check_azure_target", "set_azure_target", "TargetHealthView", "TargetMachineView",
    "EgressSettings", "egress_from_form", "try_proxy", "set_home_egress",
    # the appliance's own recovery (issue 16)
    "export_recovery_kit", "import_recovery_kit", "backup_appliance", "KIT_MIN_PASSPHRASE",
    # consoles attached to a running appliance (issue 16)
    "RemoteAppliance", "attach_appliance", "serve_consoles", "console_types", "ApplianceLink",
    "appliance_service", "start_appliance_service", "appliance_run_command",
    # typed views and the policy type
    "ApplianceStatus", "MachineView", "DiskView", "ResyncView", "PointView", "RevokedView", "JobView", "DrillView",
    "CleanupView", "AlertView", "EventView", "RecoveryHostView", "RecoverySettingsView", "RecoveredVMView",
    "PlanActionView", "PlanGroupView", "PlanRunView", "PlanView", "PlanSummaryView", "ReportView", "FailbackView",
    "PlanFailbackView", "PlanFailbackMachineView", "Policy", "DEFAULT_POLICY", "format_duration", "parse_duration", "format_size", "parse_size",
    "parse_window", "health_for", "parse_address",
    # events
    "Event", "EventBus", "MachineStatus", "PointCreated", "JobProgress", "JobChanged", "Alert",
    # errors
    "LifeboatError", "InvalidInput", "InvalidName", "ExportRefused", "RateLimited", "NotFound", "UnknownMachine",
    "UnknownPoint", "UnknownPolicy", "AlreadyExists", "Conflict", "NotInitialised", "AuthError", "WrongPassphrase",
    "CertificateRefused", "MachineRevoked", "ApplianceUnreachable", "ProtocolError", "IntegrityError", "StorageError",
    "KeyringError", "ListenFailed", "NotReady", "LoginFailed", "CertificateUntrusted", "VCenterUnreachable",
    "AlreadyFailedOver", "FailoverCommitted",
    "EgressRefused", "ProxyAuthFailed", "ProxyError", "MailError",
]
