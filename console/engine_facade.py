"""The only door from the UI to the engine: an embedded appliance (``engine.api``) behind typed views.

Everything here runs on the loop thread that started the appliance (docs/CONTRACT.md §1); with qasync that is the
GUI thread, so nothing here may block: engine calls that touch files are the engine's own (it offloads to its
pool), and setup steps that block run through ``asyncio.to_thread``. Queries return ``engine.api``'s frozen views
(``ApplianceStatus``, ``MachineView``, ``PointView``, ``DrillView`` …) and policies are the engine's ``Policy``:
the console keeps no copies of engine types. ``engine.api`` is the only engine module the console imports.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from engine.api import (Appliance, ApplianceStatus, CleanupView, Conflict, DrillView, EmbeddedAppliance, Event,
                        FailbackView, JobView,
                        LifeboatError, MachineView, PlanActionView, PlanGroupView, PlanRunView, PlanSummaryView,
                        PlanView, PointView, Policy, RecoveredVMView, RecoveryHostView, RecoverySettingsView,
                        ReportView, format_duration, format_size, is_initialised, parse_address, parse_duration,
                        parse_size, parse_window)

log = logging.getLogger(__name__)


def duration_text(seconds: float) -> str:
    return format_duration(seconds)


def parse_duration_text(text: str, what: str) -> float:
    """'30s', '5m', '24h' … → seconds; raises ``UserError`` (LB_INVALID_INPUT) with advice."""
    return parse_duration(text.strip(), what=what)


def size_text(n: int) -> str:
    """A history limit as the operator types it ("50G"); "0" is no limit."""
    return format_size(n) if n else "0"


def parse_size_text(text: str, what: str) -> int:
    """'50G', '512M', '0' (no limit) → bytes; raises ``UserError`` (LB_INVALID_INPUT) with advice."""
    return parse_size(text.strip() or "0", what=what)


def check_window(text: str) -> None:
    parse_window(text.strip())


def validate_policy(policy: Policy) -> Policy:
    """The engine's own validation (name, interval ≤ retention, threshold, window), on a copy."""
    return replace(policy).validate()


class EngineFacade:
    """The embedded appliance as the console sees it. ``start``/``stop`` must run inside the qasync loop."""

    #: Resync is part of every engine this console ships with (issue 3); the synthetic facade keeps it too.
    can_resync = True

    def __init__(self, home: Path, *, listen: str | None = None) -> None:
        self.home = Path(home)
        self.listen = listen
        self.embedded: EmbeddedAppliance | None = None
        self._bus_subs: list[Callable[[Event], None]] = []

    # lifecycle -------------------------------------------------------------------------------------------
    @property
    def initialised(self) -> bool:
        return is_initialised(self.home)

    @property
    def running(self) -> bool:
        return self.embedded is not None

    @property
    def app(self) -> Appliance | None:
        """The engine's appliance object while running (tests and diagnostics; pages use the methods below)."""
        return self.embedded.appliance if self.embedded is not None else None

    async def start(self) -> None:
        """Start the embedded appliance in the running loop; on failure nothing is left running."""
        if self.embedded is not None:
            return
        emb = EmbeddedAppliance(self.home, listen=self.listen)
        for fn in self._bus_subs:
            emb.subscribe(fn)
        await emb.start()
        self.embedded = emb

    async def stop(self) -> None:
        emb, self.embedded = self.embedded, None
        if emb is not None:
            await emb.stop()

    def subscribe(self, fn: Callable[[Event], None]) -> None:
        """Deliver engine events to ``fn`` (the bridge), also across a later ``start``."""
        self._bus_subs.append(fn)
        if self.embedded is not None:
            self.embedded.subscribe(fn)

    def _emb(self) -> EmbeddedAppliance:
        if self.embedded is None:
            raise Conflict("the appliance is not running", advice="Finish the first-run wizard, or restart the console.")
        return self.embedded

    @property
    def addresses(self) -> dict[str, str]:
        return self.embedded.addresses if self.embedded is not None else {}

    # queries ---------------------------------------------------------------------------------------------
    def status(self) -> ApplianceStatus:
        return self._emb().status()

    def machine_status(self, name: str) -> MachineView:
        return self._emb().machine_status(name)

    def points(self, name: str) -> list[PointView]:
        return self._emb().points(name)

    def policies(self) -> list[Policy]:
        return self._emb().policies()

    def policy_of(self, name: str) -> str:
        return self._emb().policy_of(name).name

    def drill_active(self, name: str) -> bool:
        return self.embedded is not None and self.embedded.drill_active(name)

    def engine_job(self, job_id: str) -> dict[str, Any]:
        """An engine job in its wire form (``Job.to_dict()``, what ``JobChanged.job`` carries; console/jobs.py)."""
        return self._emb().job(job_id)

    def engine_jobs(self) -> list[dict[str, Any]]:
        """Every engine job the appliance remembers (wire form, steps included), oldest first."""
        return self.embedded.jobs() if self.embedded is not None else []

    async def cancel_engine_job(self, job_id: str) -> dict[str, Any]:
        return await self._emb().cancel_job(job_id)

    async def resume_engine_job(self, job_id: str) -> dict[str, Any]:
        return self._emb().resume_job(job_id)

    # alerts (CONTRACT: the appliance's alert store) ----------------------------------------------------------
    def alerts(self, active_only: bool = True) -> list[Any]:
        """The appliance's alerts (``AlertView``s), active ones only unless ``active_only`` is False."""
        return list(self._emb().alerts(active_only))

    def acknowledge_alert(self, alert_id: str, by: str) -> Any:
        """Record that ``by`` (the OS user) saw the alert; returns the updated ``AlertView``."""
        return self._emb().acknowledge_alert(alert_id, by)

    # operations ------------------------------------------------------------------------------------------
    def save_policy(self, policy: Policy) -> Policy:
        return self._emb().set_policy(validate_policy(policy))

    async def protect(self, name: str, policy: str | None) -> None:
        await self._emb().protect(name, policy)

    async def resync(self, name: str, now: bool = True) -> Any:
        return await self._emb().resync(name, now=now)

    async def test_failover(self, name: str, point: str, *, nbd: str | None = None,
                            export_dir: str | None = None) -> DrillView:
        return await self._emb().test_failover(name, point, nbd=nbd, export_dir=export_dir)

    async def cleanup(self, name: str) -> CleanupView:
        return await self._emb().cleanup(name)

    def request_bookmark(self, name: str, tag: str | None = None) -> None:
        self._emb().request_bookmark(name, tag)

    # recovery (issue 13): hosts, settings, failover of one machine, plans, runs, reports ---------------------
    @property
    def has_recovery(self) -> bool:
        """Recovery hosts and plans are part of the engine; there whenever the appliance runs."""
        return self.embedded is not None

    def recovery_hosts(self) -> list[RecoveryHostView]:
        return self._emb().recovery_hosts() if self.has_recovery else []

    async def add_recovery_host(self, name: str, *, uri: str = "qemu:///system",
                                networks: list[str] | None = None) -> RecoveryHostView:
        return await self._emb().add_recovery_host(name, uri=uri, networks=networks)

    def recovery_settings(self, machine: str, changes: dict[str, Any] | None = None) -> RecoverySettingsView:
        return self._emb().recovery_settings(machine, changes)

    async def recovered_vms(self) -> list[RecoveredVMView]:
        return await self._emb().recovered_vms() if self.has_recovery else []

    def failover_state(self, machine: str) -> dict[str, Any] | None:
        """A failed-over machine's host, point and state (None when it is not failed over)."""
        if not self.has_recovery:
            return None
        st = self._emb().failover_state(machine)
        return dict(st) if st is not None else None

    async def failover(self, machine: str, host: str, point: str, *, planned: bool = False) -> JobView:
        return await self._emb().failover(machine, host, point, planned=planned)

    async def change_failover_point(self, machine: str, point: str) -> JobView:
        return await self._emb().change_failover_point(machine, point)

    async def commit_failover(self, machine: str, *, stop_timeout: float = 60.0) -> JobView:
        return await self._emb().commit_failover(machine, stop_timeout=stop_timeout)

    async def cancel_failover(self, machine: str) -> dict[str, Any]:
        return await self._emb().cancel_failover(machine)

    # failback (issue 14) ------------------------------------------------------------------------------------------
    def failback_state(self, machine: str) -> FailbackView | None:
        """The reverse direction of a failed-over machine (None: never reprotected, or removed after re-enable)."""
        if not self.has_recovery:
            return None
        return self._emb().failback_state(machine)

    async def reprotect(self, machine: str, *, to_disks: dict[str, str] | None = None) -> JobView:
        return await self._emb().reprotect(machine, to_disks=to_disks)

    async def failback(self, machine: str, *, shutdown_timeout: float = 120.0) -> JobView:
        return await self._emb().failback(machine, shutdown_timeout=shutdown_timeout)

    async def reenable(self, machine: str, *, remove_recovered: bool = False) -> dict[str, Any]:
        return await self._emb().reenable(machine, remove_recovered=remove_recovered)

    def plans(self) -> list[PlanSummaryView]:
        return self._emb().plans() if self.has_recovery else []

    def plan(self, name: str) -> PlanView:
        return self._emb().plan(name)

    def create_plan(self, name: str) -> PlanView:
        return self._emb().create_plan(name.strip())

    def plan_add_machines(self, name: str, group: int, machines: list[str]) -> PlanView:
        return self._emb().plan_add_machines(name, group, machines)

    def plan_remove_machines(self, name: str, machines: list[str]) -> PlanView:
        return self._emb().plan_remove_machines(name, machines)

    def plan_move_group(self, name: str, group: int, to: int) -> PlanView:
        return self._emb().plan_move_group(name, group, to)

    def plan_remove_group(self, name: str, group: int) -> PlanView:
        return self._emb().plan_remove_group(name, group)

    def plan_add_action(self, name: str, group: int, when: str, *, script: str | None = None,
                        timeout: float | None = None, manual: str | None = None) -> PlanView:
        return self._emb().plan_add_action(name, group, when, script=script, timeout=timeout, manual=manual)

    def plan_remove_action(self, name: str, group: int, when: str, index: int) -> PlanView:
        return self._emb().plan_remove_action(name, group, when, index)

    async def run_plan(self, name: str, host: str, *, test: bool, point: str = "latest",
                       points: dict[str, str] | None = None, cleanup_after: float | None = None) -> PlanRunView:
        return await self._emb().run_plan(name, host, test=test, point=point, points=points,
                                          cleanup_after=cleanup_after)

    def plan_run_job(self, name: str) -> dict[str, Any] | None:
        return self._emb().plan_run_job(name)

    def resume_plan(self, name: str, by: str) -> dict[str, Any]:
        return self._emb().resume_plan(name, by)

    def skip_plan_step(self, name: str, by: str) -> dict[str, Any]:
        return self._emb().skip_plan_step(name, by)

    async def cancel_plan(self, name: str) -> dict[str, Any]:
        return await self._emb().cancel_plan(name)

    async def commit_plan(self, name: str, *, stop_timeout: float = 60.0) -> dict[str, Any]:
        return await self._emb().commit_plan(name, stop_timeout=stop_timeout)

    async def cleanup_plan(self, name: str) -> dict[str, Any]:
        return await self._emb().cleanup_plan(name)

    def reports(self) -> list[ReportView]:
        return self._emb().reports() if self.has_recovery else []

    def report_path(self, report_id: str) -> Path:
        return self._emb().report_path(report_id)

    # vCenter ---------------------------------------------------------------------------------------------
    @property
    def has_vsphere(self) -> bool:
        """vCenter support is part of the engine; it is there whenever the appliance runs."""
        return self.running

    def inventory(self) -> Any:
        """The vCenter inventory snapshot: {"vcenters", "hosts", "vms", …}; each VM carries
        ``protected_machine`` and ``protection_state``. None while the appliance is stopped."""
        return self.embedded.inventory() if self.embedded is not None else None

    def machine_vcenters(self) -> dict[str, str]:
        """Protected machine → the vCenter its VM is in (machines not matched to a VM are absent)."""
        inv = self.inventory() if self.has_vsphere else None
        return {str(vm["protected_machine"]): str(vm.get("vcenter") or "") for vm in (inv or {}).get("vms", ())
                if vm.get("protected_machine")}

    def rpo_history(self, name: str, since: float | None = None) -> list[tuple[float, float]]:
        """The appliance's kept RPO history of ``name`` as (epoch, seconds), oldest first; [] from an engine that
        keeps none (before issue 12) or while stopped."""
        fn = getattr(self.embedded, "rpo_history", None)
        return [(float(t), float(v)) for t, v in fn(name, since)] if fn is not None else []

    def vcenters(self) -> list[dict[str, Any]]:
        return self.embedded.vcenters() if self.embedded is not None else []

    async def register_vcenter(self, address: str, user: str, password: str, thumbprint: str, *,
                               ca_pem: str | None = None) -> Any:
        """Register ``HOST[:PORT]`` trusting exactly the certificate ``thumbprint`` the operator accepted, or (with
        ``ca_pem``, the console's ``--ca FILE``) the certificates that CA signed for it."""
        host, port = parse_address(address, 443, what="vCenter address")
        if ca_pem:
            return await self._emb().register_vcenter(host, port, user, password, ca_pem=ca_pem)
        return await self._emb().register_vcenter(host, port, user, password, thumbprint=thumbprint)

    async def remove_vcenter(self, host: str) -> Any:
        return await self._emb().remove_vcenter(host)

    # network and cloud (egress, e-mail alerts): plain data from engine.api ------------------------------------
    @property
    def has_network(self) -> bool:
        """An embedded appliance runs (the synthetic facade has none: the page says it is unavailable)."""
        return self.embedded is not None

    def egress_settings(self) -> dict[str, Any]:
        return self._emb().egress_settings()

    def save_egress(self, **fields: Any) -> dict[str, Any]:
        return self._emb().save_egress(**fields)

    async def test_proxy(self, url: str, user: str, password: str | None, bypass: list[str]) -> dict[str, Any]:
        return await self._emb().test_proxy(url, user, password, bypass)

    async def egress_check(self) -> dict[str, Any]:
        return await self._emb().egress_check()

    def smtp_settings(self) -> dict[str, Any] | None:
        return self._emb().smtp_settings()

    async def save_smtp(self, **fields: Any) -> dict[str, Any]:
        return await self._emb().save_smtp(**fields)

    async def send_test_email(self) -> str:
        return await self._emb().send_test_email()


__all__ = ["EngineFacade", "Policy", "PointView", "DrillView", "CleanupView", "MachineView", "ApplianceStatus",
           "JobView", "PlanActionView", "PlanGroupView", "PlanRunView", "PlanSummaryView", "PlanView", "RecoveredVMView",
           "RecoveryHostView", "RecoverySettingsView", "ReportView",
           "LifeboatError", "duration_text", "parse_duration_text", "check_window", "validate_policy",
           "is_initialised"]
