"""The main window: navigation list (Dashboard, Protected machines, Infrastructure, Jobs and events, Recovery plans,
Alerts with a badge counting the active alerts nobody acknowledged, Policies, Network and cloud,
Settings), a notification banner, desktop notifications for new alerts, and a status bar.

Attached to a running appliance (``attached=True``, issue 16): a banner on every page while the appliance is lost
(reconnecting), stopped or starting; the Appliance menu (Start, Stop… with a confirmation naming what stops);
closing the window never stops protection (to the tray where there is one, otherwise the console quits and says
once that the appliance goes on). A locked appliance (its vault key is not in its keyring) replaces every page with
the locked page and its Import recovery kit… until it is unlocked; then the dashboard shows. Embedded (the demo and
tests): closing it stops the appliance first."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Awaitable, Callable

from PySide6.QtCore import QByteArray, QSize, Qt, Signal
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (QFrame, QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QMainWindow, QPushButton,
                               QStackedWidget, QSystemTrayIcon, QVBoxLayout, QWidget)

from console.context import ConsoleContext
from console.errors import Notification

from . import theme
from .appliance_dialogs import CloseNoticeDialog, StopApplianceDialog
from .kit_dialogs import ImportKitDialog, LockedPage
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

if TYPE_CHECKING:
    from .tray import HealthTray

log = logging.getLogger(__name__)

PAGES = (("dashboard", "Dashboard", "dashboard"), ("machines", "Protected machines", "machines"),
         ("infrastructure", "Infrastructure", "infrastructure"), ("jobs", "Jobs and events", "jobs"),
         ("plans", "Recovery plans", "failover"), ("alerts", "Alerts", "alerts"), ("policies", "Policies", "policies"),
         ("network", "Network and cloud", "infrastructure"), ("settings", "Settings", "settings"))


class MainWindow(QMainWindow):
    """``closed`` is emitted once the appliance has stopped and the window really closed."""

    closed = Signal()

    def __init__(self, ctx: ConsoleContext, shutdown: Callable[[], Awaitable[None]] | None = None, *,
                 attached: bool = False, start: Callable[[], Awaitable[object]] | None = None,
                 tray: bool | None = None) -> None:
        super().__init__()
        self.ctx = ctx
        self.shutdown = shutdown
        self.attached = attached
        self.start_fn = start
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
        self.link_banner = LinkBanner()
        self.link_banner.start_btn.clicked.connect(self.start_appliance)
        self.locked_page = LockedPage()
        self.locked_page.hide()
        self.locked_page.import_requested.connect(self.open_import_kit)
        self.import_dialog: ImportKitDialog | None = None
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(12, 8, 12, 8)
        rl.addWidget(self.link_banner)
        rl.addWidget(self.banner)
        rl.addWidget(self.stack, 1)
        rl.addWidget(self.locked_page, 1)
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
        self.tray: HealthTray | None = None
        if attached and (QSystemTrayIcon.isSystemTrayAvailable() if tray is None else tray):
            from .tray import HealthTray
            self.tray = HealthTray(ctx, self.reopen, self.quit_console, self)
        self.desktop = DesktopNotifier(ctx.notes, self, icon=self.tray.icon if self.tray else None)
        self.start_act = QAction(theme.icon("ok"), "&Start appliance", self)
        self.start_act.triggered.connect(self.start_appliance)
        self.stop_act = QAction(theme.icon("critical"), "S&top appliance…", self)
        self.stop_act.triggered.connect(self.confirm_stop)
        self.quit_console_act = QAction("&Quit console (protection goes on)", self)
        self.quit_console_act.triggered.connect(self.quit_console)
        if attached:
            menu = self.menuBar().addMenu("&Appliance")
            menu.addActions([self.start_act, self.stop_act])
            menu.addSeparator()
            menu.addAction(self.quit_console_act)
        self.stop_dialog: StopApplianceDialog | None = None
        self.close_notice: CloseNoticeDialog | None = None
        self._starting = False
        self._quitting = False
        ctx.link_changed.connect(self._update_status)
        ctx.lock_changed.connect(self._on_lock)
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
        self._may_close = shutdown is None and not attached
        self._restore()
        self._on_lock(ctx.locked)

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
        fac = self.ctx.facade
        addr = fac.addresses
        if self.ctx.locked is not None:
            self.appliance_label.setText("Appliance locked: waiting for its recovery kit (nothing is replicated)")
        elif fac.running and not self.ctx.link_up:
            self.appliance_label.setText("Lost the appliance: reconnecting…")
        elif fac.running:
            how = "Attached to the appliance" if getattr(fac, "attached", False) else "Appliance running"
            self.appliance_label.setText(f"{how} — control {addr.get('control', '?')}, data {addr.get('data', '?')}")
        else:
            self.appliance_label.setText("Appliance stopped")
        self._update_link_banner()

    # the appliance's lifecycle (attached) ----------------------------------------------------------------
    def _update_link_banner(self) -> None:
        fac = self.ctx.facade
        if not self.attached:
            self.link_banner.hide()
            return
        self.start_act.setEnabled(not fac.running and not self._starting)
        self.stop_act.setEnabled(fac.running and self.ctx.link_up and not self._starting)
        if self.ctx.locked is not None:   # the locked page says it all
            self.link_banner.hide()
        elif self._starting:
            self.link_banner.show_state("info", "Starting the appliance…", "", start=False)
        elif fac.running and not self.ctx.link_up:
            since = self.ctx.machines.stale_since
            when = time.strftime("%H:%M:%S", time.localtime(since)) if since else "?"
            self.link_banner.show_state("error", "Lost the appliance: reconnecting…",
                                        f"Since {when}. Health and RPO below are the last known (greyed): today's "
                                        "are unknown until the console is back; it reconnects on its own.",
                                        start=False)
        elif not fac.running:
            self.link_banner.show_state("error", "The appliance is not running: nothing is being replicated",
                                        "Start it to resume protection (agents keep their changes meanwhile).",
                                        start=self.start_fn is not None)
        else:
            self.link_banner.hide()

    # a locked appliance (its vault key is missing) -------------------------------------------------------------
    def _on_lock(self, lock: object) -> None:
        locked = isinstance(lock, dict)
        was = self.locked_page.isVisibleTo(self)
        self.locked_page.set_reason(lock if isinstance(lock, dict) else None)
        self.locked_page.setVisible(locked)
        self.stack.setVisible(not locked)
        self.nav.setEnabled(not locked)
        if was and not locked:
            self.show_page("dashboard")
        if locked:
            self.banner.hide()   # an LB_KEYRING banner from a call made before the lock was known says less
        self._update_status()

    @property
    def locked(self) -> bool:
        return self.locked_page.isVisibleTo(self)

    def open_import_kit(self) -> ImportKitDialog:
        if self.import_dialog is not None:
            return self.import_dialog
        dlg = ImportKitDialog(self.ctx, self)
        self.import_dialog = dlg

        def done(_r: int) -> None:
            self.import_dialog = None
            dlg.deleteLater()
        dlg.finished.connect(done)
        dlg.open()
        return dlg

    def set_starting(self, on: bool) -> None:
        self._starting = on
        self._update_status()

    def start_appliance(self) -> None:
        if self.start_fn is not None and not self.ctx.facade.running and not self._starting:
            asyncio.ensure_future(self.start_fn())

    def confirm_stop(self) -> StopApplianceDialog | None:
        """Ask, naming what stops; on Stop the appliance drains and exits (``stop_appliance``)."""
        if self.stop_dialog is not None or not self.ctx.facade.running:
            return self.stop_dialog
        machines = sorted(r.name for r in self.ctx.machines.rows() if r.protected)
        jobs = [j.title for j in self.ctx.jobs.running()]
        consoles = self.ctx.facade.other_consoles() if self.attached else None
        dlg = StopApplianceDialog(self.ctx.home, machines, jobs, consoles, self)
        self.stop_dialog = dlg

        def done(result: int) -> None:
            self.stop_dialog = None
            dlg.deleteLater()
            if result == StopApplianceDialog.DialogCode.Accepted:
                asyncio.ensure_future(self._stop_async())
        dlg.finished.connect(done)
        dlg.open()
        return dlg

    async def _stop_async(self) -> None:
        import getpass
        try:
            who = getpass.getuser()
        except (KeyError, OSError):
            who = "unknown user"
        self.appliance_label.setText("Stopping the appliance…")
        try:
            await self.ctx.stop_protection(f"stopped from the console by {who}")
        except Exception as exc:
            self.ctx.notes.handle(exc, "stopping the appliance")
        self._update_status()

    def reopen(self) -> None:
        self.showNormal()
        self.raise_()
        self.activateWindow()

    def quit_console(self) -> None:
        """Close the console (never the appliance)."""
        self._quitting = True
        self.close()
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
        if self.attached and not self._may_close:
            self._close_attached(event)
            return
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

    def _close_attached(self, event: QCloseEvent) -> None:
        """Never stops protection: to the tray (where there is one), else the console quits and says once that
        the appliance goes on running."""
        event.ignore()
        s = self.ctx.settings
        if self.tray is not None and not self._quitting:
            self.save_state()
            self.hide()
            if not s.get("ui/tray_notice_shown"):
                self.tray.icon.showMessage("Lifeboat keeps protecting", "The appliance goes on running; the console "
                                           "is here in the tray.", QSystemTrayIcon.MessageIcon.Information, 8000)
                s.set("ui/tray_notice_shown", True)
                s.save()
            return
        if self._closing:
            return
        if self.tray is None and not s.get("ui/close_notice_shown") and self.ctx.facade.running:
            if self.close_notice is None:
                dlg = CloseNoticeDialog(self.ctx.home, self)
                self.close_notice = dlg

                def done(_r: int) -> None:
                    self.close_notice = None
                    dlg.deleteLater()
                    s.set("ui/close_notice_shown", True)
                    s.save()
                    self.close()
                dlg.finished.connect(done)
                dlg.open()
            return
        self._closing = True
        self.save_state()
        self.appliance_label.setText("Closing the console (the appliance goes on running)…")
        asyncio.ensure_future(self._close_async())

    async def _close_async(self) -> None:
        try:
            if self.shutdown is not None:
                await self.shutdown()
        except Exception as exc:
            log.exception("stopping the appliance")
            self.ctx.notes.handle(exc, "stopping the appliance")
        self._may_close = True
        if self.tray is not None:
            self.tray.close()
        self.close()


class LinkBanner(QFrame):
    """An attached console's link to its appliance, on every page: lost (reconnecting), stopped (with Start),
    starting. Not dismissable: it goes when the cause does."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("linkBanner")
        self.setAccessibleName("Appliance link")
        self.icon = QLabel()
        self.text = QLabel()
        self.text.setObjectName("linkText")
        self.text.setWordWrap(True)
        self.detail = QLabel()
        self.detail.setObjectName("hint")
        self.detail.setWordWrap(True)
        self.start_btn = QPushButton(theme.icon("ok"), "Start appliance")
        body = QVBoxLayout()
        body.addWidget(self.text)
        body.addWidget(self.detail)
        lay = QHBoxLayout(self)
        lay.addWidget(self.icon)
        lay.addLayout(body, 1)
        lay.addWidget(self.start_btn)
        self.hide()

    def show_state(self, level: str, text: str, detail: str, *, start: bool) -> None:
        self.setProperty("level", level)
        self.style().unpolish(self)
        self.style().polish(self)
        self.icon.setPixmap(theme.icon("critical" if level == "error" else "info").pixmap(20, 20))
        self.text.setText(text)
        self.detail.setText(detail)
        self.detail.setVisible(bool(detail))
        self.start_btn.setVisible(start)
        self.show()
