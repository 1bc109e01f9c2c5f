"""The only door from the UI to the engine: the appliance (``engine.api``) behind typed views, embedded in this
process or attached to the running appliance of the home (docs/CONTRACT.md §7).

Everything here runs on the loop thread that started or attached the appliance (docs/CONTRACT.md §1); with qasync
that is the GUI thread. Embedded, nothing here blocks: engine calls that touch files are the engine's own (it
offloads to its pool), and setup steps that block run through ``asyncio.to_thread``. Attached, the async calls run
their request in a worker thread and the sync ones (quick queries and edits) are one local HTTPS request each,
bounded by ``SYNC_CALL_TIMEOUT``; while the link is down they fail at once (``ApplianceUnreachable``). Queries return ``engine.api``'s frozen views
(``ApplianceStatus``, ``MachineView``, ``PointView``, ``DrillView`` …) and policies are the engine's ``Policy``:
the console keeps no copies of engine types. ``engine.api`` is the only engine module the console imports.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from engine.api import (Appliance, ApplianceLink, ApplianceStatus, ApplianceUnreachable, CleanupView, Conflict,
                        DrillView, EmbeddedAppliance, Event, FailbackView, JobView, KeyringError, LifeboatError,
                        MachineView, NotReady, PlanActionView, PlanFailbackView, PlanGroupView, PlanRunView,
                        PlanSummaryView, PlanView, PointView, Policy,
                        RecoveredVMView, RecoveryHostView, RecoverySettingsView, RemoteAppliance, ReportView, TargetHealthView,
                        backup_appliance, console_types, export_recovery_kit, format_duration, format_size,
                        import_recovery_kit, is_initialised, parse_address, parse_duration, parse_size, parse_window)

from .quiet_thread import to_thread_quietly

log = logging.getLogger(__name__)

#: an attached console's synchronous calls block the GUI thread: the appliance is on this machine and answers in
#: milliseconds; a hung one must not freeze the window for long
SYNC_CALL_TIMEOUT = 10.0


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
    """The appliance as the console sees it: embedded in this process (``mode="embedded"``: the demo and tests), or
    attached to the running appliance of the home (``mode="attach"``: ``lifeboat-console``; docs/CONTRACT.md §7).
    Either way the engine object behind it is an ``EmbeddedAppliance`` or a ``RemoteAppliance`` with the same
    methods; ``app`` (the engine's own object) is None when attached. ``start``/``stop`` must run inside the qasync
    loop. ``stop`` never stops an attached appliance (it lets go); ``stop_appliance(reason)`` does, explicitly."""

    #: Resync is part of every engine this console ships with (issue 3); the synthetic facade keeps it too.
    can_resync = True
    #: how long a started appliance may take to answer (a first start makes its CA, keys and vault)
    START_TIMEOUT = 90.0

    def __init__(self, home: Path, *, listen: str | None = None, mode: str = "embedded") -> None:
        if mode not in ("embedded", "attach"):
            raise ValueError(f"mode {mode!r}: embedded or attach")
        self.home = Path(home)
        self.listen = listen
        self.mode = mode
        self.engine: EmbeddedAppliance | RemoteAppliance | None = None
        self._bus_subs: list[Callable[[Event], None]] = []
        self.started_process: Any = None   # the detached appliance process this console started, if any
        self._addresses: dict[str, str] | None = None

    # lifecycle -------------------------------------------------------------------------------------------
    @property
    def initialised(self) -> bool:
        return is_initialised(self.home)

    @property
    def running(self) -> bool:
        """Embedded: the appliance runs here. Attached: this console is attached (the link may be down for a while:
        see ``link_up``)."""
        return self.engine is not None

    @property
    def attached(self) -> bool:
        return isinstance(self.engine, RemoteAppliance)

    @property
    def link_up(self) -> bool:
        """False while an attached console has lost its appliance (it reconnects on its own)."""
        eng = self.engine
        return not isinstance(eng, RemoteAppliance) or eng.connected

    @property
    def locked(self) -> dict[str, str] | None:
        """While the attached appliance is locked (its vault key is not in its keyring: docs/CONTRACT.md §7):
        ``{"code": "LB_KEYRING", "message", "advice"}``; else None. Calls fail with that LB_KEYRING meanwhile."""
        eng = self.engine
        return dict(eng.locked) if isinstance(eng, RemoteAppliance) and eng.locked else None

    @property
    def embedded(self) -> EmbeddedAppliance | RemoteAppliance | None:   # the name the pages knew
        return self.engine

    @property
    def app(self) -> Appliance | None:
        """The engine's appliance object while embedded (tests and diagnostics); None when attached."""
        return self.engine.appliance if self.engine is not None else None

    async def start(self) -> None:
        """Embedded: start the appliance in the running loop. Attached: attach to the running appliance of the home
        (``ApplianceUnreachable`` when none runs: see ``start_and_attach``). On failure nothing is left running."""
        if self.engine is not None:
            return
        if self.mode == "attach":
            await self._attach()
            return
        emb = EmbeddedAppliance(self.home, listen=self.listen)
        for fn in self._bus_subs:
            emb.subscribe(fn)
        await emb.start()
        self.engine = emb

    async def _attach(self) -> None:
        remote = RemoteAppliance(self.home, console_types(), timeout=SYNC_CALL_TIMEOUT)
        remote.subscribe(self._on_link)
        for fn in self._bus_subs:   # before the event stream opens: nothing is missed
            remote.subscribe(fn)
        await remote.start(allow_locked=True)   # a locked appliance is attached to: the console offers the kit
        self.engine = remote

    async def start_and_attach(self, plan: Any) -> None:
        """Start the appliance as ``plan`` (``console.appliance_process.StartPlan``) says, wait until it answers,
        attach. Raises ``ApplianceUnreachable`` (with the log's last lines) when it exits or does not answer."""
        from . import appliance_process
        proc = await asyncio.to_thread(appliance_process.start, plan)
        self.started_process = proc
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.START_TIMEOUT
        while True:
            try:
                await self._attach()
                return
            except (ApplianceUnreachable, NotReady) as exc:
                code = proc.poll() if proc is not None else None
                if code is None and loop.time() > deadline and proc is not None:
                    proc.terminate()   # ours, started a moment ago and never answered: not left behind
                if code is not None or loop.time() > deadline:
                    tail = appliance_process.log_tail(self.home)
                    what = (f"the appliance exited (status {code}) before it answered" if code is not None
                            else f"the appliance did not answer within {self.START_TIMEOUT:.0f} s")
                    raise ApplianceUnreachable(f"{what}: {exc.message}" + (f"\n{tail}" if tail else ""),
                                               advice=f"See {plan.log}.") from None
            await asyncio.sleep(0.3)

    async def stop(self) -> None:
        """Embedded: stop the appliance. Attached: let go of it (it goes on running)."""
        eng, self.engine = self.engine, None
        if eng is not None:
            await eng.stop()

    async def stop_appliance(self, reason: str) -> None:
        """Stop protection: the attached appliance drains and exits (its service manager or the process that runs it
        allowing), or the embedded one stops; then this console lets go."""
        eng = self.engine
        if isinstance(eng, RemoteAppliance):
            await asyncio.to_thread(eng.stop_appliance, reason)
        await self.stop()

    def other_consoles(self) -> int | None:
        """How many other consoles are attached to the appliance now (None when embedded or unknown)."""
        eng = self._live()
        if not isinstance(eng, RemoteAppliance):
            return None
        try:
            return max(0, int(eng.refresh_hello().get("consoles") or 0) - 1)   # minus this console's own stream
        except LifeboatError:
            return None

    def subscribe(self, fn: Callable[[Event], None]) -> None:
        """Deliver engine events to ``fn`` (the bridge), also across a later ``start``."""
        self._bus_subs.append(fn)
        if self.engine is not None:
            self.engine.subscribe(fn)

    def _emb(self) -> Any:
        eng = self.engine
        if eng is None:
            raise Conflict("the appliance is not running", advice="Start it (Appliance → Start appliance), or "
                           "finish the first-run wizard.")
        lock = self.locked
        if lock is not None:
            raise KeyringError(lock["message"], advice="Import the recovery kit (the console's Import recovery kit…, "
                               "or `lifeboat appliance import-kit`).")
        if isinstance(eng, RemoteAppliance) and not eng.connected:   # fail at once, never wait on a dead link
            raise ApplianceUnreachable("lost the appliance: reconnecting",
                                       advice="The console reconnects on its own when the appliance answers again.")
        return eng

    def _live(self) -> Any:
        """The engine when calls can reach it now (None when stopped, or attached with the link down)."""
        return self.engine if self.engine is not None and self.link_up else None

    @property
    def addresses(self) -> dict[str, str]:
        """``{"vault", "control", "data"}``. Attached, read once per link (the status bar asks often; a restarted
        appliance may listen elsewhere: the cache goes with the link)."""
        eng = self.engine
        if eng is None or not self.link_up:
            self._addresses = None
            return {}
        if isinstance(eng, RemoteAppliance) and self._addresses is not None:
            return dict(self._addresses)
        try:
            addr = dict(eng.addresses)
        except LifeboatError:
            return {}
        if isinstance(eng, RemoteAppliance):
            self._addresses = addr
        return addr

    def _on_link(self, ev: Event) -> None:
        if isinstance(ev, ApplianceLink):
            self._addresses = None

    # the appliance's own recovery (issue 16): through the running appliance, so its keyring is the one used ----
    async def import_recovery_kit(self, kit: Path, passphrase: str) -> dict[str, Any]:
        """Post the kit to the appliance of the home (a locked one then starts its roles: waited for), then have
        the link try again at once. ``KitPassphrase`` (LB_KIT_PASSPHRASE), ``KitCorrupt`` (LB_KIT_CORRUPT),
        ``Conflict`` (LB_KIT_MISMATCH): nothing was written. The passphrase goes to the appliance only."""
        got = await to_thread_quietly(import_recovery_kit, self.home, Path(kit), passphrase)
        eng = self.engine
        if isinstance(eng, RemoteAppliance):
            eng.reconnect_now()
        return got

    async def export_recovery_kit(self, out: Path, passphrase: str) -> Path:
        """Seal the recovery kit into the new file ``out`` (the appliance seals it when this account's keyring
        lacks the key). InvalidInput for a short passphrase or an existing file."""
        return await to_thread_quietly(export_recovery_kit, self.home, Path(out), passphrase)

    async def backup_appliance(self) -> dict[str, Any]:
        """A configuration backup now, taken by the running appliance: ``{"name", "path", "size", "vault",
        "taken_by"}``. LB_KEYRING from a locked appliance."""
        return await asyncio.to_thread(backup_appliance, self.home)

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
        eng = self._live()
        return eng is not None and eng.drill_active(name)

    def engine_job(self, job_id: str) -> dict[str, Any]:
        """An engine job in its wire form (``Job.to_dict()``, what ``JobChanged.job`` carries; console/jobs.py)."""
        return self._emb().job(job_id)

    def engine_jobs(self) -> list[dict[str, Any]]:
        """Every engine job the appliance remembers (wire form, steps included), oldest first."""
        eng = self._live()
        return eng.jobs() if eng is not None else []

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
        return self._live() is not None

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

    def plan_failback_state(self, name: str) -> PlanFailbackView | None:
        """A plan's failback in one read: every machine's failover and failback records and state, and the newest
        plan-level job (None while the appliance is stopped)."""
        if not self.has_recovery:
            return None
        return self._emb().plan_failback_state(name)

    async def plan_reprotect(self, name: str) -> JobView:
        return await self._emb().plan_reprotect(name)

    async def plan_failback(self, name: str, *, shutdown_timeout: float = 120.0) -> JobView:
        return await self._emb().plan_failback(name, shutdown_timeout=shutdown_timeout)

    async def plan_reenable(self, name: str, *, remove_recovered: bool = False) -> JobView:
        return await self._emb().plan_reenable(name, remove_recovered=remove_recovered)

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

    # vCenter ---------------------------------------------------------------------------------------------
    @property
    def has_vsphere(self) -> bool:
        """vCenter support is part of the engine; it is there whenever the appliance runs."""
        return self.running

    def inventory(self) -> Any:
        """The vCenter inventory snapshot: {"vcenters", "hosts", "vms", …}; each VM carries
        ``protected_machine`` and ``protection_state``. None while the appliance is stopped."""
        eng = self._live()
        return eng.inventory() if eng is not None else None

    def machine_vcenters(self) -> dict[str, str]:
        """Protected machine → the vCenter its VM is in (machines not matched to a VM are absent)."""
        inv = self.inventory() if self.has_vsphere else None
        return {str(vm["protected_machine"]): str(vm.get("vcenter") or "") for vm in (inv or {}).get("vms", ())
                if vm.get("protected_machine")}

    def rpo_history(self, name: str, since: float | None = None) -> list[tuple[float, float]]:
        """The appliance's kept RPO history of ``name`` as (epoch, seconds), oldest first; [] from an engine that
        keeps none (before issue 12) or while stopped."""
        fn = getattr(self._live(), "rpo_history", None)
        return [(float(t), float(v)) for t, v in fn(name, since)] if fn is not None else []

    async def rpo_histories(self, names: list[str], since: float | None = None) -> dict[str, list[tuple[float, float]]]:
        """``rpo_history`` of several machines without holding the GUI loop: attached, the requests run in a worker
        thread (RemoteAppliance's calls are thread-safe); embedded, on the loop (the engine's reads are quick)."""
        eng = self._live()
        if eng is None:
            return {}
        if not isinstance(eng, RemoteAppliance):
            return {n: self.rpo_history(n, since) for n in names}

        def fetch() -> dict[str, list[tuple[float, float]]]:
            return {n: [(float(t), float(v)) for t, v in eng.rpo_history(n, since)] for n in names}
        return await asyncio.to_thread(fetch)

    def report_path(self, report_id: str) -> Path:
        return Path(self._emb().report_path(report_id))

    def vcenters(self) -> list[dict[str, Any]]:
        eng = self._live()
        return eng.vcenters() if eng is not None else []

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
        """An appliance answers: embedded, or attached with the link up and not locked (the synthetic facade has
        none: the page says it is unavailable)."""
        return self._live() is not None and self.locked is None

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

    # the vault target (issue 15): Add target, the dashboard's target health -----------------------------------
    def vault_target(self) -> dict[str, Any]:
        return self._emb().vault_target()

    async def test_vault_target(self, account_url: str, container: str, *, key: str | None = None,
                                sas: str | None = None) -> dict[str, Any]:
        return await self._emb().test_vault_target(account_url, container, key=key, sas=sas)

    async def set_vault_target(self, account_url: str, container: str, *, key: str | None = None,
                               sas: str | None = None) -> dict[str, Any]:
        return await self._emb().set_vault_target(account_url, container, key=key, sas=sas)

    def target_health(self) -> TargetHealthView | None:
        """None while no appliance answers (stopped, or the link is down): the dashboard says unknown."""
        eng = self._live()
        return eng.target_health() if eng is not None else None


__all__ = ["EngineFacade", "ApplianceUnreachable", "Policy", "PointView", "DrillView", "CleanupView", "MachineView", "ApplianceStatus",
           "JobView", "PlanActionView", "PlanGroupView", "PlanRunView", "PlanSummaryView", "PlanView", "RecoveredVMView",
           "RecoveryHostView", "RecoverySettingsView", "ReportView",
           "LifeboatError", "duration_text", "parse_duration_text", "check_window", "validate_policy",
           "is_initialised"]
