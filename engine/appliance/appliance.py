"""The appliance: configuration-server and process-server roles in one asyncio program.

``Appliance`` is the composition root: it builds the parts, wires each to the narrow collaborators it needs, and
starts and stops them; its periodic work is scheduler tasks (``scheduled_tasks.py``) over those parts.
It holds no behaviour of its own; its public methods are thin delegations kept for the console
(``console/engine_facade.py``), the CLI and the tests.

Start it in-process inside any running loop (the console does) with ``await Appliance(home).start()`` and stop it
with ``await app.stop()``; ``lifeboat appliance run`` runs it headless.

Who owns what (docs/ARCHITECTURE.md §1.1):

- ``machines.MachineState``: machine rows, events, policy lookup; ``machines.Machines``: register, protect,
  revoke, bookmark, status;
- ``sync_cursor.SyncCursor``: initial-sync cursor and consistency; ``resync.Resync``: resync requests, window,
  status, corruption healing, verify;
- ``runtimes.Runtimes``: the per-machine runtimes (``pipeline.MachineRuntime``: cache → seal → vault → points);
- ``process_server.ProcessServer``: the data port; ``control.ControlAPI``: the control port;
- ``recovery_service.RecoveryService``: drills (as jobs of ``engine.jobs.JobManager``); ``retention.Retention``:
  prune; ``bookmarks.ScheduledBookmarks``;
- ``engine.vsphere.service.VSphereService``: vCenters, inventory, machine ↔ VM matching;
- ``alerts.AlertStore``: every Alert on the bus, kept (acknowledge); ``health_watch.MachineWatch`` /
  ``ApplianceWatch``: transitions to the event log and the alerts' sources; ``rpo.RpoHistory``: RPO samples.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .. import pki
from ..codec import Sealer
from .listen import listening
from ..events import EventBus
from ..home import ApplianceHome
from ..jobs import JobManager, JobStore, Scheduler
from .scheduled_tasks import ApplianceTasks
from ..policy import Policy
from ..secrets import load_vault_key
from ..vault.base import Vault
from ..vault.registry import open_vault
from ..recovery.failback import FailbackService
from ..recovery.failover import FailoverService
from ..recovery.pins import ConfigPinAlertAfter, HistoryPins
from ..recovery.plans import PlanService, PlanStore
from ..recovery.store import RecoveryStore
from ..vsphere.service import VSphereService
from .alerts import AlertStore
from .bookmarks import ScheduledBookmarks
from .capacity import Capacity, ConfigReserve
from .console_link import ConsoleLink
from .config_backups import CHECK_SECONDS as CONFIG_BACKUP_CHECK, ConfigBackups, kit_routes, resync_after_restore
from .vault_gate import VaultGate
from .control import ControlAPI
from .control_http import ADMIN_CN, AdminCheck
from .health_watch import ApplianceWatch, MachineWatch
from .machine_state import MachineState
from .machines import Machines
from .network import CHECK_EVERY, NetworkSettings
from .new_home import init_home
from .pipeline import MachineRuntime
from .process_server import ProcessServer
from .recovery_service import RecoveryService
from .register_guard import RegisterGuard
from .resync import Resync
from .retention import Retention
from .rpo import RpoHistory
from .runtimes import Runtimes
from .state import StateDB
from .sync_cursor import SyncCursor

__all__ = ["ADMIN_CN", "Appliance", "init_home"]

log = logging.getLogger(__name__)

class Appliance:
    """The composition root. The parts exist from ``start()`` on (None before)."""

    def __init__(self, root: Path, *, listen: str | None = None) -> None:
        self.home = ApplianceHome(Path(root))
        self.cfg = self.home.load_config()
        self.listen = listen or self.cfg.get("listen", "0.0.0.0")
        self.bus = EventBus()
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lifeboat-cpu")
        self.db: StateDB | None = None
        self.vault: Vault | None = None
        self.sealer: Sealer | None = None
        self._live: dict[str, MachineRuntime] = {}
        self.state: MachineState | None = None
        self.cursor: SyncCursor | None = None
        self.resync_service: Resync | None = None
        self.runtimes_registry: Runtimes | None = None
        self.machines: Machines | None = None
        self.retention: Retention | None = None
        self.capacity: Capacity | None = None
        self.config_backups: ConfigBackups | None = None   # scheduled configuration backups (engine/backup)
        self.console_link: ConsoleLink | None = None        # consoles attached over the control API
        self.gate = VaultGate()                 # closed while the vault's filesystem is full (replication paused)
        self.bookmarks: ScheduledBookmarks | None = None
        self.ps: ProcessServer | None = None
        self.control: ControlAPI | None = None
        self.recovery: RecoveryService | None = None
        self.failover: FailoverService | None = None
        self.plans: PlanService | None = None
        self.pins: HistoryPins | None = None   # what holds history from being folded (drills, failovers)
        self.failback: FailbackService | None = None
        self.vsphere: VSphereService | None = None
        self.alerts: AlertStore | None = None
        self.rpo_history: RpoHistory | None = None
        self.appliance_watch: ApplianceWatch | None = None
        self.network: NetworkSettings | None = None   # egress policy (allow-list, proxy, bandwidth), e-mail
        self.jobs: JobManager | None = None     # engine jobs: one queue per machine (engine/jobs)
        self.scheduler = Scheduler()            # periodic work: statuses, resync window, bookmarks, retention
        self.control_address: tuple[str, int] | None = None
        self.data_address: tuple[str, int] | None = None

    # lifecycle -------------------------------------------------------------------------------------------
    async def start(self) -> None:
        h = self.home
        h.make_private()
        self.db = db = StateDB(h.db)
        self.alerts = AlertStore(db, self.bus)       # first: every alert from here on is kept
        self.appliance_watch = ApplianceWatch(self.bus, certificates={
            "CA": h.ca_cert, "server": h.server_cert, "admin": h.admin_cert})
        self.rpo_history = RpoHistory(db)
        # before anything connects out (the vault target among them): the egress settings in force
        self.network = NetworkSettings(db, self.cfg["appliance_id"], self.cfg.get("vault") or {}, self.bus)
        self.network.start()
        self.jobs = JobManager(JobStore(db.db), self.bus)
        await self.jobs.start()   # jobs a previous run left unfinished are marked interrupted, never re-run
        key = load_vault_key(self.cfg["appliance_id"])
        self.sealer = Sealer(key)
        self.vault = open_vault(self.cfg["vault"], key, executor=self.pool)
        state = self.state = MachineState(db)
        cursor = self.cursor = SyncCursor(state)
        resync = self.resync_service = Resync(state, self._live, self.bus)
        runtimes = self.runtimes_registry = Runtimes(
            self._live, vault=self.vault, state=state, cursor=cursor, resync=resync, bus=self.bus, pool=self.pool,
            sealer=self.sealer, cache_dir=h.cache, gate=self.gate)
        self.machines = Machines(state, runtimes, resync, self.bus, h, self.cfg["data_port"],
                                 paused=lambda: (self.gate.reason or "the vault is full") if self.gate.closed else "")
        self.bookmarks = ScheduledBookmarks(state, runtimes)
        for row in state.rows():
            if row["protected"] and not row["revoked"]:
                await runtimes.open(row["name"])
        self.ps = ProcessServer(pki.server_context(h.server_cert, h.server_key, h.ca_cert, require_client=True),
                                state=state, runtimes=runtimes, resync=resync, cursor=cursor, pool=self.pool,
                                gate=self.gate)
        self.data_address = await listening("data", self.listen, self.cfg["data_port"], self.ps.start)
        self.recovery = RecoveryService(h.drills, state=state, runtimes=runtimes, cursor=cursor, manager=self.jobs,
                                        pool=self.pool)
        await self.recovery.start()
        require_admin = AdminCheck(self.cfg["admin_serial"])
        failover = self.failover = FailoverService(h.failovers, state=state, store=RecoveryStore(db.db),
                                                   runtimes=runtimes, cursor=cursor, manager=self.jobs,
                                                   require_admin=require_admin)
        await failover.start()
        self.machines.failover_of = failover.failover_of
        plans = self.plans = PlanService(PlanStore(db.db), state=state, failover=failover, manager=self.jobs,
                                         reports=h.reports, require_admin=require_admin)
        await plans.start()
        failback = self.failback = FailbackService(failover=failover, state=state, runtimes=runtimes, resync=resync,
                                                   plans=plans.store, manager=self.jobs, require_admin=require_admin)
        await failback.start()
        self.ps.reverse = failback
        self.machines.failback_of = failback.failback_of
        drills = self.recovery
        busy = lambda m: drills.busy(m) or failover.busy(m)   # noqa: E731  (a drill or failover pins the point)
        failover.test_run_of = plans.test_run_of
        pins = self.pins = HistoryPins(state, runtimes, self.bus, [drills.pins, failover.pins],
                                       alert_after=ConfigPinAlertAfter(h.config))
        self.machines.history_pin = failover.pin_of = pins.view
        self.retention = Retention(state, runtimes, busy=busy, held=pins.held)
        self.capacity = Capacity(state=state, runtimes=runtimes, vault_path=self.vault.storage_path(),
                                 cache_dir=h.cache, bus=self.bus, gate=self.gate, busy=busy,
                                 reserve=ConfigReserve(h.config))
        self.vsphere = VSphereService(state=state, resync=resync, bus=self.bus, require_admin=require_admin)
        await self.vsphere.start()
        runtimes.on_attach.append(self.vsphere.agent_attached)
        self.console_link = ConsoleLink(self.bus, require_admin)   # attached consoles (bound by the entry point)
        vsphere_store = self.vsphere.store
        failover.vm_link_of = lambda m: vsphere_store.links().get(m) if vsphere_store else None
        failover.source_power = self.vsphere.set_power_of   # a planned failover powers a matched source off
        self.control = ControlAPI(pki.server_context(h.server_cert, h.server_key, h.ca_cert, require_client=False),
                                  require_admin=require_admin, machines=self.machines, state=state, resync=resync,
                                  recovery=self.recovery, jobs=self.jobs, status=self.status, register_guard=RegisterGuard(db),
                                  alerts=self.alerts, rpo_history=self.rpo_history, extra_routes=self.vsphere.routes() + failover.routes() + plans.routes()
                                  + self.console_link.routes() + failback.routes()
                                  + kit_routes(h, db, require_admin, backups=lambda: self.config_backups))
        self.control_address = await listening("control", self.listen, self.cfg["control_port"], self.control.start)
        resync_after_restore(state, resync)   # a restored appliance: every machine checked once (checksums)
        self.config_backups = ConfigBackups(h, self.vault, state, self.bus)
        self.appliance_watch.start()
        ApplianceTasks(runtimes=runtimes, machines=self.machines, resync=resync, bookmarks=self.bookmarks,
                       retention=self.retention, watch=MachineWatch(state, self.bus, self.alerts.active_ids()),
                       rpo_history=self.rpo_history, appliance_watch=self.appliance_watch,
                       capacity=self.capacity, pins=pins).register(self.scheduler)
        self.scheduler.every("config-backup", CONFIG_BACKUP_CHECK, self.config_backups.tick, first_in=30.0)
        self.scheduler.every("network-settings", 2.0, self.network.tick)
        self.scheduler.every("egress-check", CHECK_EVERY, self.network.scheduled_check, first_in=60.0)
        await self.scheduler.start()
        log.info("appliance started: control %s data %s", self.control_address, self.data_address)

    async def stop(self) -> None:
        await self.scheduler.stop()
        if self.console_link:
            await self.console_link.close()   # attached consoles' streams end first (they retry on their own)
        if self.control:
            await self.control.stop()
        if self.vsphere:
            await self.vsphere.stop()
        if self.jobs:
            await self.jobs.stop()   # running jobs end interrupted (stored) before their drills are closed
        if self.plans:
            await self.plans.stop()
        if self.failback:
            await self.failback.stop()
        if self.recovery:
            await self.recovery.stop()
        if self.failover:
            await self.failover.stop()
        if self.ps:
            await self.ps.stop()
        if self.runtimes_registry:
            await self.runtimes_registry.close_all()
        if self.rpo_history:
            self.rpo_history.flush(final=True)
        if self.appliance_watch:
            self.appliance_watch.close()
        if self.alerts:
            self.alerts.close()
        if self.vault:
            await self.vault.close()
        if self.network:
            self.network.stop()
        if self.db:
            self.db.close()
        self.pool.shutdown(wait=True)

    async def __aenter__(self) -> Appliance:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # thin delegations (console facade, CLI, tests) ----------------------------------------------------------
    @property
    def runtimes(self) -> dict[str, MachineRuntime]:
        """The live machine runtimes by name (read them, do not change them)."""
        return self._live

    def _parts(self) -> tuple[MachineState, Machines, Resync]:
        assert self.state and self.machines and self.resync_service, "the appliance is not started"
        return self.state, self.machines, self.resync_service

    def machine_row(self, name: str) -> dict[str, Any]:
        return self._parts()[0].row(name)

    def policy_of(self, name: str) -> Policy:
        return self._parts()[0].policy_of(name)

    def policies(self) -> list[Policy]:
        return self._parts()[0].policies()

    def set_policy(self, policy: Policy) -> Policy:
        return self._parts()[0].set_policy(policy)

    def register(self, name: str, csr_pem: str, nonce: str, proof: str) -> dict[str, Any]:
        return self._parts()[1].register(name, csr_pem, nonce, proof)

    async def protect(self, name: str, policy: str | None = None) -> None:
        await self._parts()[1].protect(name, policy)

    def revoke(self, name: str, by: str = "operator") -> None:
        self._parts()[1].revoke(name, by)

    def restore_access(self, name: str, by: str = "operator") -> dict[str, Any]:
        return self._parts()[1].restore_access(name, by)

    def request_bookmark(self, name: str, tag: str | None) -> None:
        self._parts()[1].request_bookmark(name, tag)

    def machine_status(self, name: str) -> dict[str, Any]:
        return self._parts()[1].machine_status(name)

    def points(self, name: str) -> list[dict[str, Any]]:
        return self._parts()[1].points(name)

    def status(self) -> dict[str, Any]:
        """Every machine's status, and the ports the appliance listens on."""
        return {**self._parts()[1].status(),
                "control_port": self.control_address[1] if self.control_address else None,
                "data_port": self.data_address[1] if self.data_address else None}

    def request_resync(self, name: str, *, now: bool, reason: str = "operator request",
                       ranges: list[list[int]] | None = None) -> dict[str, Any]:
        return self._parts()[2].request(name, now=now, reason=reason, ranges=ranges)

    async def resync(self, name: str, now: bool = True) -> dict[str, Any]:
        """Console entry point (same as ``lifeboat resync``)."""
        return self._parts()[2].request(name, now=now)

    async def verify(self, name: str, *, heal: bool = True) -> dict[str, Any]:
        return await self._parts()[2].verify(name, heal=heal)

    def is_consistent(self, name: str, seq: int) -> bool:
        assert self.cursor is not None
        return self.cursor.is_consistent(name, seq)

    def alerts_list(self, active_only: bool = True) -> list[dict[str, Any]]:
        assert self.alerts is not None, "the appliance is not started"
        return self.alerts.list(active_only)

    def acknowledge_alert(self, alert_id: str, by: str) -> dict[str, Any]:
        assert self.alerts is not None, "the appliance is not started"
        return self.alerts.acknowledge(alert_id, by)

    def events(self, since: float | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        assert self.db is not None, "the appliance is not started"
        return self.db.events(since=since, limit=limit)

    def rpo_history_of(self, name: str, since: float | None = None) -> list[tuple[float, float]]:
        assert self.rpo_history is not None, "the appliance is not started"
        self._parts()[0].row(name)
        return self.rpo_history.history(name, since)

    async def prune_all(self) -> None:
        assert self.retention is not None
        await self.retention.prune_all()


