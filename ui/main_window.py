"""The main window: navigation list (Dashboard, Protected machines, Infrastructure, Jobs and events, Recovery plans,
Alerts with a badge counting the active alerts nobody acknowledged, Policies, Network and cloud, Settings), a
notification banner, desktop notifications for new alerts, and a status bar. Closing it stops the embedded appliance first."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from PySide6.QtCore import QByteArray, QSize, Qt, Signal
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QMainWindow, QStackedWidget,
                               QVBoxLayout, QWidget)

from console.context import ConsoleContext
from console.errors import Notification

from . import theme
from .notifications import Banner, CrashDialog, DesktopNotifier
from .pages.alerts import AlertsPage
from .pages.dashboard import DashboardPage
from .pages.infrastructure import InfrastructurePage
from .pages.jobs import JobsPage
from .pages.machines import MachinesPage
from .pages.plans import PlansPage
from .pages.network import NetworkPage
from .pages.policies import PoliciesPage
from .pages.settings import SettingsPage

log = logging.getLogger(__name__)

PAGES = (("dashboard", "Dashboard", "dashboard"), ("machines", "Protected machines", "machines"),
         ("infrastructure", "Infrastructure", "infrastructure"), ("jobs", "Jobs and events", "jobs"),
         ("plans", "Recovery plans", "failover"), ("alerts", "Alerts", "alerts"), ("policies", "Policies", "policies"),
         ("network", "Network and cloud", "infrastructure"), ("settings", "Settings", "settings"))


class MainWindow(QMainWindow):
    """``closed`` is emitted once the appliance has stopped and the window really closed."""

    closed = Signal()

    def __init__(self, ctx: ConsoleContext, shutdown: Callable[[], Awaitable[None]] | None = None) -> None:
        super().__init__()
        self.ctx = ctx
        self.shutdown = shutdown
        self.setWindowTitle(f"Lifeboat — {ctx.home}")
        self.setWindowIcon(theme.icon("app"))
        self.resize(1200, 800)
        ctx.machines.set_health_style(theme.health_icons(), theme.health_colors())
        self.nav = QListWidget()
        self.nav.setObjectName("navigation")
        self.nav.setAccessibleName("Navigation")
        self.nav.setIconSize(QSize(20, 20))
        self.nav.setFixedWidth(210)
        self.stack = QStackedWidget()
        self.pages: dict[str, QWidget] = {
            "dashboard": DashboardPage(ctx), "machines": MachinesPage(ctx), "infrastructure": InfrastructurePage(ctx),
            "jobs": JobsPage(ctx), "plans": PlansPage(ctx), "alerts": AlertsPage(ctx), "policies": PoliciesPage(ctx),
            "network": NetworkPage(ctx), "settings": SettingsPage(ctx)}
        for i, (key, label, icon) in enumerate(PAGES):
            item = QListWidgetItem(theme.icon(icon), label)
            item.setToolTip(f"{label} (Ctrl+{i + 1})")
            self.nav.addItem(item)
            self.stack.addWidget(self.pages[key])
            act = QAction(self)
            act.setShortcut(QKeySequence(f"Ctrl+{i + 1}"))
            act.triggered.connect(lambda _=False, k=i: self.show_page(k))
            self.addAction(act)
        quit_act = QAction(self)
        quit_act.setShortcut(QKeySequence.StandardKey.Quit)
        quit_act.triggered.connect(self.close)
        self.addAction(quit_act)
        self.nav.currentRowChanged.connect(self.stack.setCurrentIndex)
        self.pages["dashboard"].show_machines.connect(self.show_machines)  # type: ignore[attr-defined]
        self.banner = Banner(int(ctx.settings.get("ui/notification_seconds")))
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(12, 8, 12, 8)
        rl.addWidget(self.banner)
        rl.addWidget(self.stack, 1)
        central = QWidget()
        cl = QHBoxLayout(central)
        cl.setContentsMargins(0, 0, 0, 0)
        cl.setSpacing(0)
        cl.addWidget(self.nav)
        cl.addWidget(right, 1)
        self.setCentralWidget(central)
        self.appliance_label = QLabel()
        self.jobs_label = QLabel()
        self.alerts_label = QLabel()
        self.alerts_label.setAccessibleName("Alerts needing attention")
        self.alerts_label.setContentsMargins(0, 0, 12, 0)
        self.statusBar().addWidget(self.appliance_label, 1)
        self.statusBar().addPermanentWidget(self.alerts_label)
        self.statusBar().addPermanentWidget(self.jobs_label)
        self.desktop = DesktopNotifier(ctx.notes, self)
        ctx.alert_raised.connect(self.desktop.notify)
        ctx.alerts.attention_changed.connect(self._update_badge)
        self._update_badge(ctx.alerts.attention)
        self.setTabOrder(self.nav, self.stack)
        ctx.notes.notified.connect(self._on_notification)
        ctx.notes.crashed.connect(self.show_crash)
        ctx.jobs.changed.connect(self._update_status)
        ctx.appliance_started.connect(self._update_status)
        ctx.appliance_stopped.connect(self._update_status)
        self.crash_dialog: CrashDialog | None = None
        self._closing = False
        self._may_close = shutdown is None
        self._restore()
        self._update_status()

    # navigation ------------------------------------------------------------------------------------------
    def show_page(self, which: int | str) -> QWidget:
        index = which if isinstance(which, int) else [k for k, _l, _i in PAGES].index(which)
        self.nav.setCurrentRow(index)
        page = self.stack.currentWidget()
        assert page is not None
        return page

    def show_machines(self, fleet_filter: object, worst_first: bool = False) -> MachinesPage:
        """Protected machines, filtered (a dashboard tile's machines); ``worst_first`` sorts by RPO, worst on top."""
        page = self.machines_page
        self.show_page("machines")
        page.show_filtered(fleet_filter, worst_first)
        return page

    @property
    def machines_page(self) -> MachinesPage:
        page = self.pages["machines"]
        assert isinstance(page, MachinesPage)
        return page

    # notifications ---------------------------------------------------------------------------------------
    def _update_badge(self, n: int) -> None:
        """The Alerts entry says how many active alerts nobody acknowledged yet (and turns red when any)."""
        item = self.nav.item([k for k, _l, _i in PAGES].index("alerts"))
        item.setText(f"Alerts ({n})" if n else "Alerts")
        item.setForeground(theme.health_colors()["critical"] if n else self.nav.palette().text())
        item.setToolTip(f"Alerts: {n} active, not acknowledged" if n else "Alerts")
        self.alerts_label.setText(f"{n} alert{'s' if n != 1 else ''} to acknowledge" if n else "")
        self.alerts_label.setMinimumWidth(self.alerts_label.sizeHint().width())
        self.alerts_label.setVisible(bool(n))

    def _on_notification(self, note: Notification) -> None:
        self.banner.show_notification(note)
        self.statusBar().showMessage(note.title, 5000)

    def show_crash(self, report: str) -> None:
        if self.crash_dialog is not None:  # one at a time; the rest are in the log
            return
        dlg = CrashDialog(report, self)
        self.crash_dialog = dlg

        def done(_r: int) -> None:
            self.crash_dialog = None
            dlg.deleteLater()
        dlg.finished.connect(done)
        dlg.open()

    def _update_status(self, *_: object) -> None:
        addr = self.ctx.facade.addresses
        if self.ctx.facade.running:
            self.appliance_label.setText(f"Appliance running — control {addr.get('control', '?')}, "
                                         f"data {addr.get('data', '?')}")
        else:
            self.appliance_label.setText("Appliance stopped")
        n = len(self.ctx.jobs.running())
        self.jobs_label.setText(f"{n} job{'s' if n != 1 else ''} running" if n else "No jobs running")

    # window state ----------------------------------------------------------------------------------------
    def _restore(self) -> None:
        s = self.ctx.settings
        geo, state = s.get("window/geometry"), s.get("window/state")
        if geo:
            self.restoreGeometry(QByteArray(geo))
        if state:
            self.restoreState(QByteArray(state))
        split = s.get("window/splitter")
        if split:
            self.machines_page.splitter.restoreState(QByteArray(split))
        self.show_page(min(max(0, int(s.get("window/page"))), len(PAGES) - 1))
        self.nav.setFocus(Qt.FocusReason.OtherFocusReason)

    def save_state(self) -> None:
        s = self.ctx.settings
        s.set("window/geometry", bytes(self.saveGeometry().data()))
        s.set("window/state", bytes(self.saveState().data()))
        s.set("window/splitter", bytes(self.machines_page.splitter.saveState().data()))
        s.set("window/page", self.nav.currentRow())
        s.save()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        if self._may_close or not self.ctx.facade.running:
            if not self._closing:
                self.save_state()
            super().closeEvent(event)
            self.closed.emit()
            return
        event.ignore()
        if not self._closing:
            self._closing = True
            self.save_state()
            self.appliance_label.setText("Stopping the appliance…")
            asyncio.ensure_future(self._close_async())

    async def _close_async(self) -> None:
        try:
            if self.shutdown is not None:
                await self.shutdown()
        except Exception as exc:
            log.exception("stopping the appliance")
            self.ctx.notes.handle(exc, "stopping the appliance")
        self._may_close = True
        self.close()
