"""Settings: generated from the declared settings (``console.settings.SETTINGS``), the appliance's facts, and the
appliance's own recovery: Back up now and Export recovery kit…, both done by the running appliance (issue 16)."""

from __future__ import annotations

import asyncio
from typing import Any

from PySide6.QtWidgets import (QCheckBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QProgressBar, QPushButton,
                               QScrollArea, QSpinBox, QVBoxLayout, QWidget)

from console.appliance_keys import size_words
from console.context import ConsoleContext
from console.errors import UserError
from console.settings import SettingSpec, visible_settings

from .. import forms, theme
from ..kit_dialogs import ExportKitDialog


def editor_for(spec: SettingSpec) -> QWidget:
    if spec.type is bool:
        return QCheckBox()
    if spec.type is int:
        box = QSpinBox()
        box.setRange(int(spec.minimum if spec.minimum is not None else 0),
                     int(spec.maximum if spec.maximum is not None else 1_000_000))
        return box
    return QLineEdit()


class SettingsPage(QWidget):
    def __init__(self, ctx: ConsoleContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.editors: dict[str, QWidget] = {}
        form = QFormLayout()
        for spec in visible_settings():
            ed = editor_for(spec)
            ed.setAccessibleName(spec.label)
            ed.setToolTip(spec.help)
            self.editors[spec.key] = ed
            form.addRow(spec.label + ":", forms.Field(ed, hint=spec.help))
        self.save_btn = QPushButton(theme.icon("save"), "&Save settings")
        self.save_btn.setObjectName("primary")
        self.save_btn.clicked.connect(self.save)
        self.saved = QLabel()
        self.saved.setObjectName("hint")
        row = QHBoxLayout()
        row.addWidget(self.saved, 1)
        row.addWidget(self.save_btn)
        self.facts = QLabel()
        self.facts.setWordWrap(True)
        self.facts.setTextInteractionFlags(self.facts.textInteractionFlags().TextSelectableByMouse)
        self.backup_btn = QPushButton(theme.icon("save"), "&Back up now")
        self.backup_btn.setToolTip("The appliance backs up its configuration now, into its home and its vault")
        self.backup_btn.clicked.connect(self.back_up_now)
        self.export_btn = QPushButton(theme.icon("protect"), "&Export recovery kit…")
        self.export_btn.setToolTip("Save the vault key, sealed with a passphrase, to a file kept away from here")
        self.export_btn.clicked.connect(self.open_export_kit)
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)
        self.progress.setTextVisible(False)
        self.progress.setMaximumHeight(8)
        self.progress.setVisible(False)
        self.recovery_status = QLabel()
        self.recovery_status.setWordWrap(True)
        self.recovery_status.setAccessibleName("Appliance recovery status")
        self.recovery_status.setTextInteractionFlags(self.recovery_status.textInteractionFlags().TextSelectableByMouse)
        buttons = QHBoxLayout()
        buttons.addWidget(self.backup_btn)
        buttons.addWidget(self.export_btn)
        buttons.addStretch(1)
        self.export_dialog: ExportKitDialog | None = None
        self.backup_task: asyncio.Task[Any] | None = None
        inner = QWidget()
        lay = QVBoxLayout(inner)
        lay.addWidget(forms.title("Settings"))
        # first: what an operator must not miss (the kit), and what it says after an action stays in view
        lay.addWidget(forms.title("Appliance recovery", "sectionTitle"))
        lay.addWidget(forms.hint("The configuration backup (machines, policies, plans, certificates; secrets sealed) "
                                 "is taken daily and kept in the home and the vault. The recovery kit opens it, and "
                                 "every recovery point, on a new machine: without it, a lost keyring means lost "
                                 "points. Both are done by the running appliance, with the keys in its keyring."))
        lay.addLayout(buttons)
        lay.addWidget(self.progress)
        lay.addWidget(self.recovery_status)
        lay.addWidget(forms.title("Console", "sectionTitle"))
        lay.addLayout(form)
        lay.addLayout(row)
        lay.addWidget(forms.title("Appliance", "sectionTitle"))
        lay.addWidget(self.facts)
        lay.addStretch(1)
        self.scroll = scroll = QScrollArea()   # readable at 1000×700: the page scrolls rather than squeezing its rows
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidget(inner)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        self.recovery_status.setVisible(False)
        self.load()
        ctx.appliance_started.connect(self.load)
        ctx.lock_changed.connect(self.load)   # unlocked: its ports and vault are known now
        ctx.keys.busy.connect(self._busy)
        for sig in (ctx.appliance_started, ctx.appliance_stopped, ctx.link_changed, ctx.lock_changed):
            sig.connect(self._update_actions)
        self._update_actions()

    def load(self, *_: object) -> None:
        for key, ed in self.editors.items():
            self._set(ed, self.ctx.settings.get(key))
        addr = self.ctx.facade.addresses
        rows = [("Home", str(self.ctx.home)), ("Control port", addr.get("control", "—")),
                ("Data port", addr.get("data", "—")), ("Vault", addr.get("vault", "—")),
                ("Settings file", str(self.ctx.settings.path))]
        self.facts.setText("<table cellpadding=3>" + "".join(f"<tr><td><b>{k}</b></td><td>{v}</td></tr>"
                                                            for k, v in rows) + "</table>")

    # the appliance's own recovery -------------------------------------------------------------------------
    def _update_actions(self, *_: object) -> None:
        """Both need an appliance that answers and holds its key (a locked one has none to seal or back up)."""
        ready = self.ctx.facade.running and self.ctx.link_up and self.ctx.locked is None
        running = self.ctx.keys.running
        self.backup_btn.setEnabled(ready and "backup" not in running)
        self.export_btn.setEnabled(ready and "export" not in running and self.export_dialog is None)
        why = ("" if ready else "The appliance is locked: import its recovery kit first." if self.ctx.locked
               else "The appliance does not answer: start it, or wait until the console is back.")
        for b in (self.backup_btn, self.export_btn):
            b.setToolTip(why or b.toolTip())

    def _busy(self, what: str, on: bool) -> None:
        self.progress.setVisible(bool(self.ctx.keys.running & {"backup", "export"}))
        if on:
            self._say("info", "Backing up the appliance's configuration…" if what == "backup"
                      else "Sealing the recovery kit…" if what == "export" else "")
        self._update_actions()

    def _say(self, level: str, text: str) -> None:
        self.recovery_status.setObjectName("fieldError" if level == "error" else "hint")
        self.recovery_status.style().unpolish(self.recovery_status)
        self.recovery_status.style().polish(self.recovery_status)
        self.recovery_status.setText(text)
        self.recovery_status.setVisible(bool(text))
        if text:
            self.scroll.ensureWidgetVisible(self.recovery_status)

    def back_up_now(self) -> asyncio.Task[Any] | None:
        if self.backup_task is None and self.backup_btn.isEnabled():
            self.backup_task = asyncio.ensure_future(self._back_up())
        return self.backup_task

    async def _back_up(self) -> None:
        try:
            job = await self.ctx.keys.backup_now()
        except UserError as exc:
            self._say("error", f"Backup failed: {exc.code}: {exc.message}" + (f" {exc.advice}" if exc.advice else ""))
            return
        finally:
            self.backup_task = None
            self._update_actions()
        got = job.result or {}
        self._say("info", f"Backed up: {got.get('name')} ({size_words(int(got.get('size') or 0))}), in "
                          f"{got.get('path')}" + (" and in the vault." if got.get("vault") else
                                                  " (not in the vault: see the appliance's log)."))

    def open_export_kit(self) -> ExportKitDialog | None:
        if self.export_dialog is not None or not self.export_btn.isEnabled():
            return self.export_dialog
        dlg = ExportKitDialog(self.ctx, self)
        self.export_dialog = dlg

        def done(result: int) -> None:
            self.export_dialog = None
            dlg.deleteLater()
            self._update_actions()
            if result == ExportKitDialog.DialogCode.Accepted and dlg.saved_to is not None:
                self._say("info", f"Recovery kit saved to {dlg.saved_to}. Print it or store it away from this "
                                  "computer; keep the passphrase apart from it.")
        dlg.finished.connect(done)
        self._update_actions()
        dlg.open()
        return dlg

    @staticmethod
    def _set(ed: QWidget, value: Any) -> None:
        if isinstance(ed, QCheckBox):
            ed.setChecked(bool(value))
        elif isinstance(ed, QSpinBox):
            ed.setValue(int(value))
        elif isinstance(ed, QLineEdit):
            ed.setText(str(value))

    @staticmethod
    def _get(ed: QWidget) -> Any:
        if isinstance(ed, QCheckBox):
            return ed.isChecked()
        if isinstance(ed, QSpinBox):
            return ed.value()
        return ed.text() if isinstance(ed, QLineEdit) else None

    def save(self) -> None:
        for key, ed in self.editors.items():
            self.ctx.settings.set(key, self._get(ed))
        self.ctx.settings.save()
        self.ctx.bridge.set_flush_interval(int(self.ctx.settings.get("ui/refresh_ms")))
        self.saved.setText("Saved. The RPO history length applies at the next start.")
