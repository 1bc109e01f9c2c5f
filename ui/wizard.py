"""First-run wizard: home, vault (with an Azure target: the outbound network, optional, then the storage account
with Test connection through it), ports, the connection passphrase (shown once), the recovery kit (saved before
Finish), optional vCenter, summary.

Finish initialises and starts the appliance through the ``start`` coroutine the console passes in. The home is
made in a hidden temporary folder when the passphrase page opens (the passphrase must exist to be shown) and is
renamed into place at Finish; Cancel, or a failed Finish, removes it and its keyring entry. The wizard is opened
with ``show()``/``open()`` and never runs a nested event loop: Finish and Cancel complete asynchronously and then
close the dialog (await ``finished``).
"""

from __future__ import annotations

import asyncio
import logging
from html import escape
from pathlib import Path
from typing import Awaitable, Callable

from PySide6.QtCore import Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (QCheckBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton,
                               QVBoxLayout, QWizard)

from console.errors import UserError
from console.home_setup import KIT_MIN_PASSPHRASE, PendingHome, SetupPlan, VCenterPlan, parse_host_port

from . import forms, theme
from .wizard_pages import (AzureTargetPage, HomePage, KeepOnBackPage, OutboundNetworkPage, PortsPage, VaultPage,
                           VCenterPage)

log = logging.getLogger(__name__)

StartFn = Callable[[SetupPlan], Awaitable[None]]


class PassphrasePage(KeepOnBackPage):
    """Shows the connection passphrase once, with Copy and Save; Next needs the operator to confirm."""

    def __init__(self, pending: PendingHome) -> None:
        super().__init__()
        self.pending = pending
        self.setTitle("Connection passphrase")
        self.setSubTitle("Agents prove they know this passphrase when they register. It is shown only now: copy it "
                         "or save it somewhere safe.")
        self.text = QLabel("Preparing the appliance…")
        self.text.setObjectName("passphrase")
        self.text.setTextInteractionFlags(self.text.textInteractionFlags().TextSelectableByMouse)
        self.text.setAccessibleName("Connection passphrase")
        self.copy = QPushButton(theme.icon("copy"), "&Copy")
        self.save = QPushButton(theme.icon("save"), "&Save…")
        self.status = QLabel()
        self.status.setObjectName("hint")
        self.confirm = QCheckBox("I have &copied or saved the passphrase")
        self.error = forms.Field(self.confirm)
        buttons = QHBoxLayout()
        buttons.addWidget(self.copy)
        buttons.addWidget(self.save)
        buttons.addStretch(1)
        lay = QVBoxLayout(self)
        lay.addWidget(self.text)
        lay.addLayout(buttons)
        lay.addWidget(self.status)
        lay.addWidget(self.error)
        lay.addStretch(1)
        self.copy.clicked.connect(self.copy_to_clipboard)
        self.save.clicked.connect(self._ask_save)
        self.confirm.toggled.connect(self.completeChanged)
        self.task: asyncio.Future[None] | None = None
        self._set_ready(False)

    def _set_ready(self, ready: bool) -> None:
        for w in (self.copy, self.save, self.confirm):
            w.setEnabled(ready)

    def initializePage(self) -> None:  # noqa: N802
        if self.pending.passphrase:
            return
        wiz = self.wizard()
        near = wiz.home_page.value() if isinstance(wiz, FirstRunWizard) else Path.home() / "lifeboat"
        self.task = asyncio.ensure_future(self._prepare(near))

    async def _prepare(self, near: Path) -> None:
        try:
            passphrase = await self.pending.create(near)
        except (UserError, OSError) as exc:
            self.error.set_message(f"Cannot prepare the appliance: {exc}")
            self.text.setText("—")
            return
        self.text.setText(passphrase)
        self._set_ready(True)
        self.completeChanged.emit()

    def copy_to_clipboard(self) -> None:
        QGuiApplication.clipboard().setText(self.pending.passphrase)
        self.status.setText("Copied to the clipboard.")

    def _ask_save(self) -> None:
        dlg = QFileDialog(self, "Save the connection passphrase", str(Path.home() / "lifeboat-passphrase.txt"))
        dlg.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dlg.fileSelected.connect(lambda p: self.save_to(Path(p)))
        dlg.finished.connect(dlg.deleteLater)
        dlg.open()

    def save_to(self, path: Path) -> None:
        """Write the passphrase to ``path`` readable by its owner only (0600)."""
        import os
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.pending.passphrase + "\n")
        except OSError as exc:
            self.status.setText(f"Not saved: {exc.strerror}")
            return
        self.status.setText(f"Saved to {path}")

    def isComplete(self) -> bool:  # noqa: N802
        return bool(self.pending.passphrase) and self.confirm.isChecked()


class RecoveryKitPage(KeepOnBackPage):
    """The recovery kit must be saved before Finish: without it, a lost keyring means lost points."""

    def __init__(self, pending: PendingHome) -> None:
        super().__init__()
        self.pending = pending
        self.setTitle("Recovery kit")
        self.setSubTitle("The vault key exists only in this computer's keyring. If this computer or its keyring is "
                         "lost, every recovery point is unreadable, unless you have the recovery kit.")
        warn = QLabel("<b>Without the kit, a lost keyring means lost recovery points.</b> Save it now, print it "
                      "(it is plain text), and keep it away from this computer. Keep its passphrase apart from it: "
                      "with both, anyone can read the vault.")
        warn.setWordWrap(True)
        self.passphrase = QLineEdit()
        self.passphrase.setEchoMode(QLineEdit.EchoMode.Password)
        self.passphrase.setAccessibleName("Kit passphrase")
        self.repeat = QLineEdit()
        self.repeat.setEchoMode(QLineEdit.EchoMode.Password)
        self.repeat.setAccessibleName("Kit passphrase again")
        self.f_pass = forms.Field(self.passphrase, hint=f"At least {KIT_MIN_PASSPHRASE} characters; a few words "
                                                        "are easy to keep and hard to guess.")
        self.f_repeat = forms.Field(self.repeat)
        self.save = QPushButton(theme.icon("save"), "&Save the recovery kit…")
        self.status = QLabel()
        self.status.setObjectName("hint")
        self.status.setWordWrap(True)
        self.status.setAccessibleName("Recovery kit status")
        form = QFormLayout()
        form.addRow("Kit &passphrase", self.f_pass)
        form.addRow("&Again", self.f_repeat)
        lay = QVBoxLayout(self)
        lay.addWidget(warn)
        lay.addLayout(form)
        lay.addWidget(self.save)
        lay.addWidget(self.status)
        lay.addStretch(1)
        self.passphrase.textChanged.connect(self._changed)
        self.repeat.textChanged.connect(self._changed)
        self.save.clicked.connect(self._ask_save)
        self.saving: asyncio.Future[None] | None = None
        self._changed()

    def errors(self) -> dict[str, str | None]:
        p, r = self.passphrase.text(), self.repeat.text()
        return {"passphrase": (f"Use at least {KIT_MIN_PASSPHRASE} characters ({len(p)} so far)."
                               if p and len(p) < KIT_MIN_PASSPHRASE else None),
                "repeat": "The two passphrases differ." if r and r != p else None}

    def _changed(self) -> None:
        e = self.errors()
        self.f_pass.set_message(e["passphrase"])
        self.f_repeat.set_message(e["repeat"])
        p = self.passphrase.text()
        self.save.setEnabled(len(p) >= KIT_MIN_PASSPHRASE and self.repeat.text() == p and self.pending.path is not None)

    def initializePage(self) -> None:  # noqa: N802
        self._changed()

    def _ask_save(self) -> None:
        dlg = QFileDialog(self, "Save the recovery kit", str(Path.home() / "lifeboat-recovery-kit.txt"))
        dlg.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dlg.fileSelected.connect(lambda p: self._start_save(Path(p)))
        dlg.finished.connect(dlg.deleteLater)
        dlg.open()

    def _start_save(self, path: Path) -> None:
        self.saving = asyncio.ensure_future(self.save_to(path))

    async def save_to(self, path: Path) -> None:
        """Seal and write the kit (scrypt takes a moment: off the GUI thread)."""
        self.save.setEnabled(False)
        self.status.setText("Sealing the recovery kit…")
        try:
            await self.pending.save_kit(path, self.passphrase.text())
        except (UserError, OSError) as exc:
            msg = exc.message if isinstance(exc, UserError) else (exc.strerror or str(exc))
            self.status.setText(f"Not saved: {msg}")
            return
        finally:
            self._changed()
        self.status.setText(f"Saved to {path} (0600). Print it, store it away from this computer, and keep the "
                            "passphrase apart.")
        self.completeChanged.emit()

    def isComplete(self) -> bool:  # noqa: N802
        return self.pending.kit_path is not None


class SummaryPage(KeepOnBackPage):
    def __init__(self) -> None:
        super().__init__()
        self.setTitle("Summary")
        self.setSubTitle("Finish creates the appliance and starts it.")
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(self.summary.textInteractionFlags().TextSelectableByMouse)
        self.progress = QLabel()
        self.state = forms.Field(self.progress)
        self.checklist = QLabel()
        self.checklist.setObjectName("checklist")
        self.checklist.setWordWrap(True)
        self.checklist.setAccessibleName("What to do after Finish")
        form = QFormLayout(self)
        form.addRow(self.summary)
        form.addRow(self.checklist)
        form.addRow(self.state)

    def initializePage(self) -> None:  # noqa: N802
        wiz = self.wizard()
        if not isinstance(wiz, FirstRunWizard):
            return
        p = wiz.plan()
        rows = [("Home", str(p.home)), ("Vault", escape(p.azure.describe()) if p.azure else f"local folder {p.vault}"),
                *([("Outbound network", escape(p.egress.describe() if p.egress else "direct (no proxy), any host"))]
                  if p.azure else []),
                ("Listen on", p.listen),
                ("Control port", str(p.control_port)), ("Data port", str(p.data_port)),
                ("vCenter", (f"{p.vcenter.host} ({'signed by the CA file' if p.vcenter.ca_pem else 'thumbprint accepted'})"
                             if p.vcenter else "none"))]
        self.summary.setText("<table cellpadding=3>" + "".join(
            f"<tr><td><b>{k}</b></td><td>{v}</td></tr>" for k, v in rows) + "</table>")
        items = ["The connection passphrase is copied or saved (agents need it to register)",
                 f"Port {p.control_port} (control) and {p.data_port} (data) are open to the agents in the firewall",
                 "Install the agent on each machine and register it (the Protected machines page shows the "
                 "command, with this appliance's address)",
                 "Enable protection of each machine, then run a test failover once its first point exists",
                 (f"The recovery kit ({wiz.pending.kit_path}) is printed or stored away from this computer, its "
                  "passphrase kept apart")]
        if p.vcenter is None:
            items.insert(3, "Optional: add your vCenter under Infrastructure to protect VMs from its inventory")
        self.checklist.setText("<b>After Finish, check:</b><ul>" + "".join(f"<li>☐ {t}</li>" for t in items)
                               + "</ul>")


class FirstRunWizard(QWizard):
    """The wizard. ``setup_done(plan)`` is emitted after Finish succeeded and the appliance runs."""

    setup_done = Signal(object)

    def __init__(self, default_home: Path, start: StartFn) -> None:
        super().__init__()
        self.setWindowTitle("Set up Lifeboat")
        self.setWindowIcon(theme.icon("app"))
        self.setOption(QWizard.WizardOption.IndependentPages, True)
        self.setOption(QWizard.WizardOption.NoBackButtonOnStartPage, True)
        self.setWizardStyle(QWizard.WizardStyle.ClassicStyle)
        self.start_fn = start
        self.pending = PendingHome()
        self.home_page = HomePage(default_home)
        self.vault_page = VaultPage()
        self.egress_page = OutboundNetworkPage()
        self.target_page = AzureTargetPage(self.egress_page)
        self.ports_page = PortsPage()
        self.passphrase_page = PassphrasePage(self.pending)
        self.kit_page = RecoveryKitPage(self.pending)
        self.vcenter_page = VCenterPage()
        self.summary_page = SummaryPage()
        self.pages = (self.home_page, self.vault_page, self.egress_page, self.target_page, self.ports_page,
                      self.passphrase_page, self.kit_page, self.vcenter_page, self.summary_page)
        self._titles = {page: page.title() for page in self.pages}
        self._ids = {page: self.addPage(page) for page in self.pages}
        self.number_pages()
        self.resize(720, 520)
        self._finishing = False
        self._closing = False
        self.task: asyncio.Future[None] | None = None

    def _azure(self) -> bool:
        return bool(getattr(self, "vault_page", None) and self.vault_page.azure.isChecked())

    def after_azure_id(self) -> int:
        """The page after the Azure ones (a local vault skips them)."""
        return self._ids[self.ports_page]

    def number_pages(self) -> None:
        """"Step n of N" over the pages this run visits (the Azure pages only with the Azure target)."""
        if not hasattr(self, "_ids"):
            return
        azure = self._azure()
        shown = [p for p in self.pages if azure or p not in (self.egress_page, self.target_page)]
        for n, page in enumerate(shown, 1):
            page.setTitle(f"Step {n} of {len(shown)}: {self._titles[page]}")

    def plan(self) -> SetupPlan:
        home = self.home_page.value()
        vc = None
        v = self.vcenter_page
        ca_pem = v.ca_pem()
        if v.enable.isChecked() and (ca_pem or (v.thumbprint and not v.by_ca.isChecked())):
            hp = parse_host_port(v.host.text())
            host = f"{hp[0]}:{hp[1]}" if hp else v.host.text().strip()
            vc = VCenterPlan(host, v.user.text().strip(), v.password.text(), "" if ca_pem else v.thumbprint, ca_pem)
        azure = self._azure()
        egress = self.egress_page.plan() if azure else None
        return SetupPlan(home, self.vault_page.value(home), int(self.ports_page.control.text()),
                         int(self.ports_page.data.text()), self.ports_page.listen.text().strip() or "0.0.0.0", vc,
                         self.target_page.target() if azure else None,
                         egress if egress is not None and not egress.empty else None)

    def _buttons_enabled(self, on: bool) -> None:
        for b in (QWizard.WizardButton.BackButton, QWizard.WizardButton.FinishButton,
                  QWizard.WizardButton.CancelButton):
            self.button(b).setEnabled(on)

    # Finish ----------------------------------------------------------------------------------------------
    def accept(self) -> None:
        if self._closing:
            super().accept()
            return
        if self._finishing:
            return
        self._finishing = True
        self._buttons_enabled(False)
        self.summary_page.progress.setText("Creating and starting the appliance…")
        self.task = asyncio.ensure_future(self._finish())

    async def _finish(self) -> None:
        plan = self.plan()
        if plan.vcenter is not None and not await self._vcenter_still_accepts():
            return
        committed = False
        try:
            await self.pending.commit(plan)
            committed = True
            await self.start_fn(plan)
        except Exception as exc:
            if committed:
                await self._rollback(plan.home)
            msg = f"{exc.code}: {exc.message} {exc.advice}" if isinstance(exc, UserError) else str(exc)
            self.summary_page.progress.setText("")
            self.summary_page.state.set_message(f"The appliance could not start: {msg}")
            self._finishing = False
            self._buttons_enabled(True)
            return
        self._closing = True
        self.setup_done.emit(plan)
        self.accept()

    async def _vcenter_still_accepts(self) -> bool:
        """The vCenter is registered after the appliance starts: check its login again first (a password changed,
        or a certificate replaced, since its page). On refusal go back to that page, where the message is shown
        next to its field, with nothing committed."""
        self.summary_page.progress.setText("Checking the vCenter login…")
        refused = True
        try:
            ok = await self.vcenter_page.verify(again=True)
        except Exception as exc:  # not a refusal (those are messages): say so here, commit nothing
            ok = refused = False
            self.summary_page.state.set_message(f"Cannot check the vCenter login: {exc}")
        if ok:
            self.summary_page.progress.setText("Creating and starting the appliance…")
            return True
        self.summary_page.progress.setText("")
        self._finishing = False
        self._buttons_enabled(True)
        if refused:
            while self.currentPage() is not self.vcenter_page and self.currentId() != self.startId():
                self.back()
        return False

    async def _rollback(self, home: Path) -> None:
        """Finish failed after the home was moved into place: take it back so Cancel can remove it."""
        import tempfile
        import os
        tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=f".{home.name}.setup-", dir=home.parent))
        await asyncio.to_thread(os.rmdir, tmp)
        await asyncio.to_thread(os.rename, home, tmp)
        self.pending.path = tmp

    # Cancel ----------------------------------------------------------------------------------------------
    def reject(self) -> None:
        if self._closing:
            super().reject()
            return
        if self._finishing:
            return
        self._finishing = True
        self._buttons_enabled(False)
        self.task = asyncio.ensure_future(self._cancel())

    async def _cancel(self) -> None:
        prep = self.passphrase_page.task
        if prep is not None and not prep.done():
            await asyncio.gather(prep, return_exceptions=True)
        for probe in (self.vcenter_page.verifying, self.vcenter_page._fetching,   # they touch the pages: stop them
                      self.egress_page.verifying, self.egress_page.testing, self.target_page.form.task):
            if probe is not None and not probe.done():
                probe.cancel()
                await asyncio.gather(probe, return_exceptions=True)
        try:
            await self.pending.discard()
        except Exception:
            log.exception("removing the unfinished appliance home")
        self._closing = True
        self.reject()

    def closeEvent(self, event) -> None:  # type: ignore[no-untyped-def]  # noqa: N802
        if self._closing:
            super().closeEvent(event)
            return
        event.ignore()
        self.reject()
