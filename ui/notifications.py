"""Notifications in the main window: a banner with the engine's code, the message and what to do; and the crash
dialog for unexpected errors (versions and a copyable report)."""

from __future__ import annotations

from PySide6.QtCore import QTimer
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QFrame, QHBoxLayout, QLabel, QPlainTextEdit, QPushButton,
                               QVBoxLayout, QWidget)

from console.errors import Notification

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
