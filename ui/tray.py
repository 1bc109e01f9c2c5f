"""The tray icon of an attached console (issue 16): the site's overall health (ok / warning / critical, from the
machines' health, critical while the appliance is locked, lost or stopped: never OK then) as its icon and tooltip; a click, or Open,
shows the window again; Quit closes the console only. Only where ``QSystemTrayIcon.isSystemTrayAvailable()``."""

from __future__ import annotations

from typing import Callable

from PySide6.QtCore import QObject
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from console.context import ConsoleContext

from . import theme


class HealthTray(QObject):
    def __init__(self, ctx: ConsoleContext, reopen: Callable[[], None], quit_console: Callable[[], None],
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.reopen = reopen
        self.icon = QSystemTrayIcon(theme.icon("app"), self)
        self.menu = QMenu()
        self.open_act = QAction("Open the Lifeboat console", self.menu)
        self.open_act.triggered.connect(reopen)
        self.quit_act = QAction("Quit the console (protection goes on)", self.menu)
        self.quit_act.triggered.connect(quit_console)
        self.menu.addAction(self.open_act)
        self.menu.addSeparator()
        self.menu.addAction(self.quit_act)
        self.icon.setContextMenu(self.menu)
        self.icon.activated.connect(self._activated)
        self.health = ""
        for sig in (ctx.statuses_applied, ctx.inventory_refreshed, ctx.link_changed, ctx.appliance_started,
                    ctx.appliance_stopped):
            sig.connect(self.update)
        self.update()
        self.icon.show()

    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason in (QSystemTrayIcon.ActivationReason.Trigger, QSystemTrayIcon.ActivationReason.DoubleClick):
            self.reopen()

    def update(self, *_: object) -> None:
        health, why = self.ctx.overall_health()
        if health != self.health:
            self.health = health
            self.icon.setIcon(theme.icon(health))
        self.icon.setToolTip(f"Lifeboat — {why}")

    def close(self) -> None:
        self.icon.hide()
        self.menu.deleteLater()
