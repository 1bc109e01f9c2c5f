"""Settings → Network and cloud → Add target: make the appliance's vault an Azure Blob container.

Shows the target in use, refuses plainly when machines are already protected (a machine's history cannot move
between vaults), tests the connection through the running appliance's egress settings, and applies with the same
engine call as ``lifeboat vault set`` (checked again there; nothing changes on a refusal). The running appliance
replicates to the new target from its next start: an embedded one can be restarted from here."""

from __future__ import annotations

import asyncio
from typing import Any

from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QPushButton, QVBoxLayout, QWidget

from console.context import ConsoleContext
from console.network import Outcome
from console.target import TargetModel

from . import forms, theme
from .target_form import AzureTargetForm


class AddTargetDialog(QDialog):
    """``applied`` is the outcome of the last Apply (None before)."""

    def __init__(self, ctx: ConsoleContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.model = TargetModel(ctx.facade)
        self.setWindowTitle("Add target: Azure Blob storage")
        self.setMinimumWidth(720)
        self.current = QLabel()
        self.current.setWordWrap(True)
        self.current.setAccessibleName("Target in use")
        self.refused = QLabel()
        self.refused.setWordWrap(True)
        self.refused.setObjectName("fieldError")
        self.refused.setAccessibleName("Why the target cannot change")
        self.form = AzureTargetForm(self.model.test)
        self.apply_btn = QPushButton(theme.icon("save"), "&Use this target")
        self.apply_btn.setObjectName("primary")
        self.restart_btn = QPushButton(theme.icon("refresh"), "&Restart the appliance now")
        self.outcome = QLabel()
        self.outcome.setWordWrap(True)
        self.outcome.setAccessibleName("Result")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.addButton(self.restart_btn, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.addButton(self.apply_btn, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(forms.title("Azure Blob target", "sectionTitle"))
        lay.addWidget(self.current)
        lay.addWidget(self.refused)
        lay.addWidget(self.form)
        lay.addWidget(self.outcome)
        lay.addStretch(1)
        lay.addWidget(buttons)
        self.restart_btn.setVisible(False)   # after the button box took it (adding shows it)
        self.applied: Outcome | None = None
        self.task: asyncio.Future[Any] | None = None
        self.apply_btn.clicked.connect(self._start_apply)
        self.restart_btn.clicked.connect(self._start_restart)
        self.form.test_done.connect(lambda _out: self._fit())
        self.load()

    def _fit(self) -> None:
        """Grow to the height the wrapped messages need at this width (they are never squeezed)."""
        lay = self.layout()
        need = lay.totalHeightForWidth(self.width()) if lay.hasHeightForWidth() else lay.totalSizeHint().height()
        if self.height() < need:
            self.resize(self.width(), need)

    def load(self) -> None:
        if not self.model.available:
            self.current.setText("Available while the appliance runs.")
            self.refused.setVisible(False)
            self.form.setEnabled(False)
            self.apply_btn.setEnabled(False)
            return
        cur = self.model.current()
        self.current.setText(f"<b>Target now:</b> {self.model.describe(cur)}")
        why = self.model.refusal(cur)
        self.refused.setText(why or "")
        self.refused.setVisible(bool(why))
        self.form.setEnabled(why is None)
        self.apply_btn.setEnabled(why is None)
        self.apply_btn.setVisible(why is None)   # no action to offer: the refusal above says why
        if cur.get("kind") == "azure" and not self.form.account_url.text():
            self.form.account_url.setText(str(cur.get("account_url") or ""))
            self.form.container.setText(str(cur.get("container") or ""))
            (self.form.by_key if cur.get("auth") == "key" else self.form.by_sas).setChecked(True)
        self._fit()

    def _start_apply(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self.apply())

    def _start_restart(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self.restart())

    async def apply(self) -> Outcome:
        self.apply_btn.setEnabled(False)
        self.outcome.setStyleSheet("")
        self.outcome.setText("Checking the target and saving…")
        try:
            out = await self.model.apply(self.form.target())
        finally:
            self.apply_btn.setEnabled(True)
        self.applied = out
        self.form.show_outcome(Outcome(out.ok, "", out.errors))
        self.outcome.setText(out.message)
        self.outcome.setAccessibleName(out.message)
        self.outcome.setStyleSheet("" if out.ok else f"color: {theme.health_colors()['critical'].name()}")
        if out.ok:
            self.form.tested = None
            self.form.secret.clear()   # the keyring has it now; the form keeps no copy
            self.form.result.setText("")
            embedded = getattr(self.ctx.facade, "mode", "") == "embedded"
            self.restart_btn.setVisible(embedded)
            if not embedded:
                self.outcome.setText(out.message + " Restart the appliance (its service) to use it.")
            self.load()
        else:
            self.load()
        self._fit()
        return out

    async def restart(self) -> None:
        """Stop and start the embedded appliance, which then opens the new target."""
        self.restart_btn.setEnabled(False)
        self.outcome.setText("Restarting the appliance…")
        try:
            await self.ctx.stop_appliance()
            await self.ctx.start_appliance()
        except Exception as exc:
            self.ctx.notes.handle(exc, "restarting the appliance")
            self.outcome.setText(f"The appliance did not start again: {exc}")
            return
        finally:
            self.restart_btn.setEnabled(True)
        self.restart_btn.setVisible(False)
        self.outcome.setText("The appliance runs again and replicates to the new target.")
        self.load()
