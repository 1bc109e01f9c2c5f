"""Notifications in the main window: a banner with the engine's code, the message and what to do; desktop
notifications for new alerts (the system tray's, or the banner where there is no tray); and the crash dialog for
unexpected errors (versions and a copyable report)."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, QTimer
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QFrame, QHBoxLayout, QLabel, QPlainTextEdit, QPushButton,
                               QSystemTrayIcon, QVBoxLayout, QWidget)

from console.errors import Notification, NotificationCenter

from . import theme

LEVEL_ICONS = {"info": "ok", "warning": "warning", "error": "critical"}


class Banner(QFrame):
    """Shows the newest notification until dismissed (Esc) or its time is up; the log keeps them all."""

    def __init__(self, seconds: int = 8, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("banner")
        self.setAccessibleName("Notification")
        self.icon = QLabel()
        self.code = QLabel()
        self.code.setObjectName("bannerCode")
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.advice = QLabel()
        self.advice.setObjectName("hint")
        self.advice.setWordWrap(True)
        self.close_btn = QPushButton("Dismiss")
        self.close_btn.clicked.connect(self.hide)
        body = QVBoxLayout()
        head = QHBoxLayout()
        head.addWidget(self.code)
        head.addWidget(self.text, 1)
        body.addLayout(head)
        body.addWidget(self.advice)
        lay = QHBoxLayout(self)
        lay.addWidget(self.icon)
        lay.addLayout(body, 1)
        lay.addWidget(self.close_btn)
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.timeout.connect(self.hide)
        self.seconds = seconds
        self.current: Notification | None = None
        self.hide()

    def show_notification(self, note: Notification) -> None:
        self.current = note
        self.setProperty("level", note.level)
        self.style().unpolish(self)
        self.style().polish(self)
        self.icon.setPixmap(theme.icon(LEVEL_ICONS.get(note.level, "warning")).pixmap(18, 18))
        self.code.setText(note.code)
        self.code.setVisible(bool(note.code))
        who = f"{note.machine}: " if note.machine else ""
        self.text.setText(f"{note.level.capitalize()} — {who}{note.message}")
        self.advice.setText(note.advice)
        self.advice.setVisible(bool(note.advice))
        self.show()
        self.timer.start(max(1, self.seconds) * 1000 * (3 if note.level == "error" else 1))


class CrashDialog(QDialog):
    """An unexpected error: what to do, and the full report to copy into a bug."""

    def __init__(self, report: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Lifeboat console: unexpected error")
        self.resize(720, 460)
        intro = QLabel("Something went wrong inside the console. Replication keeps running in the appliance. "
                       "Please copy this report into a bug report; it holds versions and the error, no secrets.")
        intro.setWordWrap(True)
        self.report = QPlainTextEdit(report)
        self.report.setReadOnly(True)
        self.report.setAccessibleName("Crash report")
        self.copy_btn = QPushButton(theme.icon("copy"), "&Copy report")
        self.copy_btn.clicked.connect(self.copy)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.addButton(self.copy_btn, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(intro)
        lay.addWidget(self.report, 1)
        lay.addWidget(buttons)

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.report.toPlainText())


class DesktopNotifier(QObject):
    """New warning and critical alerts as desktop notifications: the system tray's balloon when the desktop has a
    tray, otherwise the in-app banner (``notes``). ``sent`` records (channel, title) for tests and diagnostics."""

    def __init__(self, notes: NotificationCenter, parent: QWidget | None = None, *,
                 tray: bool | None = None, icon: QSystemTrayIcon | None = None) -> None:
        super().__init__(parent)
        self.notes = notes
        self.sent: list[tuple[str, str]] = []
        use_tray = QSystemTrayIcon.isSystemTrayAvailable() if tray is None else tray
        self.tray: QSystemTrayIcon | None = icon   # an attached console's health tray icon, when it has one
        if self.tray is None and use_tray:
            self.tray = QSystemTrayIcon(theme.icon("app"), self)
            self.tray.setToolTip("Lifeboat")
            self.tray.show()

    def notify(self, alert: Any) -> None:
        """``alert`` is a ``console.alerts.AlertRow`` that just became active."""
        title = f"{alert.severity.capitalize()}: {alert.subject or alert.component}"
        if self.tray is not None:
            icon = (QSystemTrayIcon.MessageIcon.Critical if alert.severity == "critical"
                    else QSystemTrayIcon.MessageIcon.Warning)
            self.tray.showMessage(title, f"{alert.code}: {alert.message}\n{alert.advice}".strip(), icon, 15000)
            self.sent.append(("tray", title))
            return
        level = "error" if alert.severity == "critical" else "warning"
        self.notes.notify(Notification(level, alert.message, alert.code, alert.advice, alert.subject or None))
        self.sent.append(("banner", title))
