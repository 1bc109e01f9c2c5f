"""The console's application layer in one object: engine facade, bridge, models, jobs, notifications, settings.

Widgets receive a ``ConsoleContext`` and call its actions (protect, resync, test failover, clean up, save policy);
each long action is a ``ConsoleJob``. The context wires engine events to the models (statuses → table, history,
dashboard; alerts → notifications and log; job progress → jobs) and refreshes the inventory (registered machines,
resync details) every few seconds, since the engine sends no event for those.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from PySide6.QtCore import QObject, QTimer, Signal

from .alerts import AlertRow, AlertsModel
from .bridge import Alert, ApplianceLink, EngineBridge, MachineStatus
from .engine_facade import CleanupView, DrillView, EngineFacade, Policy
from .errors import Notification, NotificationCenter
from .event_log import EventLogModel, LogEntry
from .jobs import ConsoleJob, JobManager, JobsModel, JobStepsModel
from .models import DashboardSeries, MachineTableModel, RpoHistory
from .appliance_keys import ApplianceKeys
from .recovery import RecoveryModel
from .settings import ConsoleSettings

log = logging.getLogger(__name__)

INVENTORY_SECONDS = 5.0
AGENT_AWAY_SECONDS = 10.0


class ConsoleContext(QObject):
    """Everything a page needs. Create inside a running qasync loop (jobs are asyncio tasks)."""

    statuses_applied = Signal(set)     # names of the machines whose status just changed
    inventory_refreshed = Signal()
    appliance_started = Signal()
    appliance_stopped = Signal()
    alert_raised = Signal(object)      # AlertRow that just became active (warning or critical): notify the desktop
    link_changed = Signal(bool, str)   # attached console: the link to the appliance is up (True) or lost, and why
    histories_loaded = Signal(set)     # machines whose RPO history was just filled from the appliance
    lock_changed = Signal(object)      # the attached appliance's lock reason (dict) when it is locked, None when not

    def __init__(self, facade: EngineFacade, settings: ConsoleSettings, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.facade = facade
        self.settings = settings
        self.notes = NotificationCenter(self)
        self.bridge = EngineBridge(self, flush_ms=int(settings.get("ui/refresh_ms")))
        self.machines = MachineTableModel(self)
        minutes = int(settings.get("ui/rpo_history_minutes"))
        self.history = RpoHistory(minutes)
        self.fleet = DashboardSeries(minutes)
        self.jobs = JobManager(self.notes, self)
        self.jobs_model = JobsModel(self.jobs, self)
        self.steps_model = JobStepsModel(self.jobs, self)
        self.jobs.set_engine_actions(facade.cancel_engine_job, facade.resume_engine_job)
        self.log = EventLogModel(parent=self)
        self.alerts = AlertsModel(self)
        self.alerts.raised.connect(self._on_alert_raised)
        self.recovery = RecoveryModel(facade, self.jobs, self.notes, self)
        self.keys = ApplianceKeys(self)
        self._locked: dict[str, str] | None = None
        facade.subscribe(self.bridge)
        self.bridge.statuses.connect(self._on_statuses)
        self.bridge.alert.connect(self._on_alert)
        self.bridge.appliance_link.connect(self._on_link)
        self._history_task: asyncio.Task[None] | None = None
        self.bridge.job_progress.connect(self.jobs.on_engine_progress)
        self.bridge.job_changed.connect(self.jobs.on_engine_job)
        self.bridge.job_changed.connect(self.recovery.on_job_changed)
        self.bridge.job_progress.connect(self.recovery.on_job_progress)
        self.notes.notified.connect(self._on_notification)
        self.jobs.finished.connect(self._on_job_finished)
        self._inventory = QTimer(self)
        self._inventory.setInterval(int(INVENTORY_SECONDS * 1000))
        self._inventory.timeout.connect(self.refresh_inventory)

    # lifecycle -------------------------------------------------------------------------------------------
    async def start_appliance(self, plan: Any = None) -> None:
        """Start the embedded appliance, or attach to the running one (with ``plan``, a ``StartPlan``: start it
        first, then attach), and read everything afresh."""
        if plan is not None:
            await self.facade.start_and_attach(plan)
        else:
            await self.facade.start()
        if self.link_up:
            self.refresh_all()
        self._inventory.start()
        self._set_locked(self.facade.locked)
        self.appliance_started.emit()

    def refresh_all(self) -> None:
        """Read the whole state from the appliance (at start and when an attached console is back): jobs, alerts,
        machines, plans, recovered VMs, and the RPO history of every machine."""
        try:   # what ran before (and what a restart interrupted) shows beside what runs now; known rows updated
            for d in self.facade.engine_jobs():
                self.jobs.engine_job_state(d, notify=False)
        except Exception as exc:
            self.notes.handle(exc, "listing the engine's jobs")
        self.reload_alerts()
        self.refresh_inventory()
        self.recovery.refresh_plans()
        self.recovery.refresh_vms()
        self.load_histories()

    async def stop_appliance(self) -> None:
        """Embedded: stop the appliance. Attached: let go of it (protection goes on)."""
        self._inventory.stop()
        if self._history_task is not None:
            self._history_task.cancel()
        await self.recovery.shutdown()
        await self.jobs.shutdown()
        await self.facade.stop()
        self.bridge.flush()
        self.machines.set_stale(None)
        self._set_locked(None)
        self.appliance_stopped.emit()

    async def stop_protection(self, reason: str) -> None:
        """The explicit Stop: the appliance drains and exits; this console lets go (it can start it again)."""
        self._inventory.stop()
        await self.recovery.shutdown()
        await self.jobs.shutdown()
        await self.facade.stop_appliance(reason)
        self.bridge.flush()
        self.machines.set_stale(time.time())   # nothing shown is current any more
        self._set_locked(None)
        self.log.add(LogEntry("warning", "appliance", f"appliance stopped: {reason}"))
        self.appliance_stopped.emit()

    @property
    def link_up(self) -> bool:
        return bool(getattr(self.facade, "link_up", True))

    @property
    def locked(self) -> dict[str, str] | None:
        """The attached appliance's lock reason while it runs without its vault key (``{"code", "message",
        "advice"}``), else None: the window shows the locked page, the tray is critical."""
        return self._locked

    def _set_locked(self, lock: dict[str, str] | None) -> None:
        if lock == self._locked:
            return
        was, self._locked = self._locked, lock
        if lock is not None:
            self.log.add(LogEntry("error", "appliance", f"the appliance is locked: {lock.get('message', '')}", None,
                                  "Import its recovery kit (Import recovery kit… on the locked page)."))
        elif was is not None:
            self.log.add(LogEntry("info", "appliance", "the appliance is unlocked"))
        self.lock_changed.emit(lock)

    def _on_link(self, ev: ApplianceLink) -> None:
        if ev.state == "locked":
            self.machines.set_stale(ev.time or time.time())
            self._set_locked(self.facade.locked or {"code": "LB_KEYRING", "message": ev.detail, "advice": ""})
            self.link_changed.emit(False, ev.detail)
            self.inventory_refreshed.emit()
            return
        self._set_locked(None)
        if ev.state == "lost":
            self.machines.set_stale(ev.time or time.time())
            self.log.add(LogEntry("error", "appliance", f"lost the appliance: {ev.detail}", None,
                                  "The console reconnects on its own when it answers again."))
            self.link_changed.emit(False, ev.detail)
            self.inventory_refreshed.emit()
        elif ev.state == "connected":
            self.refresh_all()
            self.machines.set_stale(None)
            self.log.add(LogEntry("info", "appliance", "reconnected to the appliance"))
            self.link_changed.emit(True, "")
            self.inventory_refreshed.emit()

    def overall_health(self) -> tuple[str, str]:
        """The site at a glance (the tray's icon and tooltip): ``ok`` | ``warning`` | ``critical`` and why. Never
        better than what is known: a lost link or a stopped appliance is critical (nothing may be replicating)."""
        if self._locked is not None:
            return "critical", "The appliance is locked (its vault key is missing): nothing is being replicated"
        if not self.facade.running:
            return "critical", "The appliance is not running: nothing is being replicated"
        if not self.link_up:
            return "critical", "Lost the appliance: reconnecting…"
        c = self.machines.health_counts()
        protected = c["ok"] + c["warning"] + c["critical"]
        if c["critical"]:
            return "critical", f"{c['critical']} of {protected} protected machine(s) critical"
        if c["warning"]:
            return "warning", f"{c['warning']} of {protected} protected machine(s) in warning"
        return "ok", f"{protected} protected machine(s), all OK" if protected else "No machine protected yet"

    def load_histories(self) -> None:
        """Fill every protected machine's RPO graph with what the appliance kept (from before this console ran, and
        across a lost link), in the background."""
        if self._history_task is not None and not self._history_task.done():
            self._history_task.cancel()
        names = [r.name for r in self.machines.rows() if r.protected]
        if not names or not self.facade.running:
            return

        async def go() -> None:
            try:
                got = await self.facade.rpo_histories(names, time.time() - self.history.capacity)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.notes.handle(exc, "reading the RPO history")
                return
            filled = {n for n, samples in got.items() if self.history.merge(n, samples)}
            if filled:
                self.histories_loaded.emit(filled)
        self._history_task = asyncio.ensure_future(go())

    def refresh_inventory(self) -> None:
        if not self.facade.running or not self.link_up:
            return
        try:
            self.machines.set_inventory(self.facade.status())
        except Exception as exc:  # a refresh failing must not stop the timer
            self.notes.handle(exc, "refreshing the machine list")
            return
        try:
            self.machines.set_vcenters(self.facade.machine_vcenters())
        except Exception:  # a vCenter being away shows in Infrastructure; the table keeps its last matches
            log.debug("no vCenter matches this refresh", exc_info=True)
        self.inventory_refreshed.emit()

    def load_history(self, machine: str) -> int:
        """Seed the console's RPO history of ``machine`` with what the appliance kept (before this console ran)."""
        try:
            return self.history.merge(machine, self.facade.rpo_history(machine, time.time() - self.history.capacity))
        except Exception as exc:
            self.notes.handle(exc, f"reading the RPO history of {machine}")
            return 0

    # event wiring ----------------------------------------------------------------------------------------
    def _on_statuses(self, batch: list[MachineStatus]) -> None:
        now = time.time()
        for ev in batch:
            if getattr(ev, "rpo_known", True):  # no point yet, no RPO: nothing to draw (not a zero)
                self.history.append(ev.machine, now, ev.rpo_seconds)
        for name, old, new in self.machines.apply_statuses(batch):
            level = "error" if new == "error" else "info"
            self.log.add(LogEntry(level, "state", f"{old} → {new}", name))
        self.fleet.sample(self.machines, now)
        self.statuses_applied.emit({ev.machine for ev in batch})

    def reload_alerts(self) -> None:
        """The appliance's alerts, active and past (at start; the events keep the list current after)."""
        try:
            self.alerts.load(self.facade.alerts(active_only=False))
        except Exception as exc:
            self.notes.handle(exc, "listing the alerts")

    def _on_alert(self, ev: Alert) -> None:
        # Repeats fold into one row (the applier re-alerts every retry, CONTRACT.md §2); only a raise notifies.
        row = self.alerts.apply_event(ev)
        level = "info" if ev.state == "cleared" else ("error" if ev.severity == "critical" else "warning")
        if row.count == 1 or ev.state == "cleared":
            what = "cleared" if ev.state == "cleared" else "raised"
            self.log.add(LogEntry(level, "alert", f"{ev.code} {what}: {ev.message}", row.subject or None, ev.advice))

    def _on_alert_raised(self, row: AlertRow) -> None:
        if row.severity in ("warning", "critical"):
            self.alert_raised.emit(row)

    def acknowledge_alert(self, alert_id: str) -> AlertRow | None:
        """Acknowledge as the OS user running the console (who saw it, and when, are kept by the appliance)."""
        import getpass
        row = self.alerts.get(alert_id)
        if row is None:
            return None
        try:
            by = getpass.getuser()
        except (KeyError, OSError):   # no passwd entry (containers): still say who, as far as we know
            by = "unknown user"
        view = self.facade.acknowledge_alert(alert_id, by)
        if view is not None:
            return self.alerts.update_view(view)
        row.acknowledged_at, row.acknowledged_by = time.time(), by
        self.alerts.update_view(row)
        return row

    def _on_notification(self, note: Notification) -> None:
        self.log.add(LogEntry(note.level, "notification", note.title, note.machine, note.advice))

    def _on_job_finished(self, job: ConsoleJob) -> None:
        level = {"failed": "error", "cancelled": "warning"}.get(job.state, "info")
        self.log.add(LogEntry(level, "job", f"{job.title}: {job.state}", job.machine, job.message))
        self.refresh_inventory()

    # actions (each a job) --------------------------------------------------------------------------------
    def _job(self, title: str, kind: str, machine: str | None, work: Callable[[ConsoleJob], Awaitable[Any]],
             **kw: Any) -> ConsoleJob:
        return self.jobs.start(title, kind, machine, work, **kw)

    def protect(self, machine: str, policy: str | None) -> ConsoleJob:
        """Enable protection and follow the initial sync until the machine is protected (or, with its agent away,
        end at once: the sync starts when it connects)."""
        async def work(job: ConsoleJob) -> None:
            await self.facade.protect(machine, policy)
            self.refresh_inventory()
            away_since: float | None = None
            while True:
                st = self.facade.machine_status(machine)
                if st.state not in ("initial-sync", "unprotected"):
                    self.jobs.update(job, 1.0, f"state {st.state}")
                    return
                if st.agent_connected:
                    away_since = None
                elif away_since is None:
                    away_since = time.monotonic()
                elif time.monotonic() - away_since > AGENT_AWAY_SECONDS:  # not a reconnect: the agent is away
                    job.message = "protection enabled; the initial sync starts when the agent connects"
                    return
                self.jobs.update(job, st.sync_progress or 0.0, "initial sync")
                await asyncio.sleep(0.5)
        return self._job(f"Enable protection of {machine}", "protect", machine, work, cancellable=False)

    def resync(self, machine: str) -> ConsoleJob:
        """Resync now, then follow ``machine_status().resync`` until this resync is done: a newer ``last_done``
        (the engine stamps it when RESYNC_DONE reaches the vault) and nothing required any more."""
        async def work(job: ConsoleJob) -> None:
            before = self.facade.machine_status(machine).resync.last_done
            await self.facade.resync(machine, now=True)
            self.refresh_inventory()
            while True:
                rs = self.facade.machine_status(machine).resync
                if rs.last_done != before and not rs.required:
                    self.jobs.update(job, 1.0, "resync done")
                    return
                if rs.running:
                    self.jobs.update(job, rs.progress, f"resyncing, {rs.blocks_pending} block(s) to compare")
                else:
                    self.jobs.update(job, None, "waiting for the agent")
                await asyncio.sleep(0.5)
        return self._job(f"Resync {machine}", "resync", machine, work, cancellable=False)

    def test_failover(self, machine: str, point: str, *, nbd: str | None = None,
                      export_dir: str | None = None) -> ConsoleJob:
        """A drill of ``point`` over NBD (ready at once) or exported to a folder. The row is the engine's
        test-failover job and ends with it; cancelling an export cleans the drill up (removing partial images)."""
        async def work(job: ConsoleJob) -> DrillView:
            started = await self.facade.test_failover(machine, point, nbd=nbd, export_dir=export_dir)
            job.engine_job = started.job_id
            if started.nbd:
                job.message = f"served over NBD at {started.nbd} ({', '.join(started.exports)})"
            elif not started.finished:
                job.cancel = lambda: self.facade.cleanup(machine)
            return started
        return self._job(f"Test failover of {machine} ({point})", "test-failover", machine, work,
                         engine_kind="test-failover")

    def cleanup(self, machine: str) -> ConsoleJob:
        async def work(job: ConsoleJob) -> CleanupView:
            res = await self.facade.cleanup(machine)
            job.message = f"drill of point {res.point} cleaned up"
            if res.removed:
                job.message += f", {len(res.removed)} exported image(s) removed"
            return res
        return self._job(f"Clean up drill of {machine}", "cleanup", machine, work, cancellable=False,
                         engine_kind="failover-cleanup")

    def save_policy(self, policy: Policy) -> Policy:
        """Synchronous (one SQLite write); raises ``UserError`` with the engine's message when invalid."""
        saved = self.facade.save_policy(policy)
        self.notes.info(f"Policy {policy.name} saved")
        return saved

    def register_vcenter(self, host: str, user: str, password: str, thumbprint: str, *,
                         ca_pem: str | None = None) -> ConsoleJob:
        """Register trusting the accepted ``thumbprint``, or the CA ``ca_pem`` (then ``thumbprint`` is "")."""
        async def work(job: ConsoleJob) -> Any:
            return await self.facade.register_vcenter(host, user, password, thumbprint, ca_pem=ca_pem)
        return self._job(f"Register vCenter {host}", "vcenter", None, work, cancellable=True)

    @property
    def home(self) -> Path:
        return self.facade.home
