"""The recovery kit in an attached console (issue 16): the locked appliance's full-page state with **Import recovery
kit…**, the import dialog (file and passphrase; its errors at the field they are about), and Settings' export
dialog (passphrase twice, then a new file). The passphrase fields are password fields, read once when the
operator confirms and handed to ``console/``; nothing here logs or keeps them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QFrame, QHBoxLayout, QLabel,
                               QLineEdit, QProgressBar, QPushButton, QVBoxLayout, QWidget)

from console.appliance_keys import KIT_MIN_PASSPHRASE, field_of
from console.context import ConsoleContext
from console.errors import UserError

from . import forms, theme

LOCKED_TITLE = "This appliance is locked"
LOCKED_TEXT = ("This appliance is locked: its vault key is not in this machine's keyring. Without the recovery kit "
               "its recovery points cannot be read.")


def _busy_bar() -> QProgressBar:
    bar = QProgressBar()
    bar.setRange(0, 0)   # indeterminate: scrypt and the appliance's own work give no steps
    bar.setTextVisible(False)
    bar.setMaximumHeight(8)
    bar.setVisible(False)
    return bar


def _password_field(name: str) -> QLineEdit:
    ed = QLineEdit()
    ed.setEchoMode(QLineEdit.EchoMode.Password)
    ed.setAccessibleName(name)
    return ed


class LockedPage(QFrame):
    """Shown instead of every page while the attached appliance is locked; ``import_requested`` on its button."""

    import_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("lockedPage")
        self.setAccessibleName("Appliance locked")
        icon = QLabel()
        icon.setPixmap(theme.icon("critical").pixmap(40, 40))
        icon.setAlignment(Qt.AlignmentFlag.AlignTop)
        self.title = forms.title(LOCKED_TITLE)
        self.text = QLabel(LOCKED_TEXT)
        self.text.setObjectName("lockedText")
        self.text.setWordWrap(True)
        self.what = QLabel(
            "Nothing is being replicated: the appliance serves this console only. Agents keep their changes in their "
            "journal and send them once it is unlocked.<br><br>"
            "<b>To unlock it</b>, import the recovery kit saved when this appliance was set up (a text file, "
            "<i>lifeboat-recovery-kit.txt</i>) with its passphrase. The appliance stores the key in its own "
            "keyring and starts protecting again.")
        self.what.setWordWrap(True)
        self.reason = QLabel()
        self.reason.setObjectName("hint")
        self.reason.setWordWrap(True)
        self.reason.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.reason.setAccessibleName("Why the appliance is locked")
        self.import_btn = QPushButton(theme.icon("protect"), "&Import recovery kit…")
        self.import_btn.setObjectName("primary")
        self.import_btn.clicked.connect(self.import_requested)
        self.cli = forms.hint("Without the kit, its recovery points cannot be read by anyone. From a terminal: "
                              "lifeboat appliance import-kit --home DIR --kit FILE --passphrase-stdin")
        self.cli.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        body = QVBoxLayout()
        body.addWidget(self.title)
        body.addWidget(self.text)
        body.addSpacing(8)
        body.addWidget(self.what)
        body.addSpacing(8)
        row = QHBoxLayout()
        row.addWidget(self.import_btn)
        row.addStretch(1)
        body.addLayout(row)
        body.addSpacing(8)
        body.addWidget(self.reason)
        body.addWidget(self.cli)
        body.addStretch(1)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(16, 16, 16, 16)
        lay.addWidget(icon)
        lay.addSpacing(8)
        lay.addLayout(body, 1)

    def set_reason(self, lock: dict[str, str] | None) -> None:
        msg = (lock or {}).get("message", "")
        code = (lock or {}).get("code", "LB_KEYRING")
        self.reason.setText(f"The appliance says: {code}: {msg}" if msg else "")


class ImportKitDialog(QDialog):
    """Choose the kit file, type its passphrase, Import. Open it with ``open()``; ``finished`` after an import
    that unlocked the appliance (Accepted) or Cancel."""

    def __init__(self, ctx: ConsoleContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.setWindowTitle("Import recovery kit")
        self.setModal(True)
        self.setMinimumWidth(560)
        head = forms.title("Unlock the appliance with its recovery kit")
        head.setWordWrap(True)
        intro = QLabel("The kit holds the appliance's vault key, sealed with the passphrase chosen when it was saved. "
                       "The appliance unseals it and keeps the key in its own keyring.")
        intro.setWordWrap(True)
        self.path = QLineEdit()
        self.path.setAccessibleName("Recovery kit file")
        self.path.setPlaceholderText("lifeboat-recovery-kit.txt")
        self.browse_btn = QPushButton("&Browse…")
        self.browse_btn.clicked.connect(self.browse)
        self.f_path = forms.Field(self.path, self.browse_btn)
        self.passphrase = _password_field("Kit passphrase")
        self.f_pass = forms.Field(self.passphrase)
        form = QFormLayout()
        form.addRow("Kit &file:", self.f_path)
        form.addRow("&Passphrase:", self.f_pass)
        self.progress = _busy_bar()
        self.status = QLabel()
        self.status.setObjectName("hint")
        self.status.setWordWrap(True)
        self.status.setAccessibleName("Import status")
        self.error = QLabel()
        self.error.setObjectName("fieldError")
        self.error.setWordWrap(True)
        self.error.setVisible(False)
        buttons = QDialogButtonBox()
        self.import_btn = QPushButton(theme.icon("protect"), "&Import")
        self.import_btn.setObjectName("primary")
        self.import_btn.setDefault(True)
        self.cancel_btn = QPushButton("Cancel")
        buttons.addButton(self.import_btn, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.addButton(self.cancel_btn, QDialogButtonBox.ButtonRole.RejectRole)
        self.import_btn.clicked.connect(self.start_import)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(head)
        lay.addWidget(intro)
        lay.addLayout(form)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addWidget(self.error)
        lay.addWidget(buttons)
        self.path.textChanged.connect(self._edited)
        self.passphrase.textChanged.connect(self._edited)
        self.task: asyncio.Task[Any] | None = None
        self.file_dialog: QFileDialog | None = None
        self._edited()

    def _edited(self) -> None:
        if self.task is None:
            self.import_btn.setEnabled(bool(self.path.text().strip() and self.passphrase.text()))

    def browse(self) -> QFileDialog:
        dlg = QFileDialog(self, "Choose the recovery kit", str(Path.home()))
        dlg.setFileMode(QFileDialog.FileMode.ExistingFile)
        dlg.setNameFilters(["Recovery kits (*.txt)", "All files (*)"])
        dlg.fileSelected.connect(lambda p: self.path.setText(p))
        dlg.finished.connect(dlg.deleteLater)
        self.file_dialog = dlg
        dlg.open()
        return dlg

    def start_import(self) -> asyncio.Task[Any] | None:
        if self.task is not None or not self.import_btn.isEnabled():
            return self.task
        self.f_pass.set_message(None)
        self.f_path.set_message(None)
        self.error.setVisible(False)
        self._set_busy(True)
        self.status.setText("Unsealing the kit and unlocking the appliance… (a few seconds: the key derivation is "
                            "slow on purpose)")
        self.task = asyncio.ensure_future(self._import())
        return self.task

    def _set_busy(self, on: bool) -> None:
        for w in (self.browse_btn, self.path, self.passphrase, self.cancel_btn):
            w.setEnabled(not on)
        self.import_btn.setEnabled(False)
        self.progress.setVisible(on)

    def _show_error(self, exc: UserError) -> None:
        where = field_of(exc.code)
        if exc.code == "LB_KIT_MISMATCH":
            text = f"{exc.code}: this kit belongs to another appliance. {exc.advice}"
        elif exc.code == "LB_KIT_PASSPHRASE":
            text = f"{exc.code}: this is not the kit's passphrase. Check it (it is case-sensitive) and try again."
        else:
            text = f"{exc.code}: {exc.message}" + (f" {exc.advice}" if exc.advice else "")
        if where == "passphrase":
            self.f_pass.set_message(text)
            self.passphrase.selectAll()
            self.passphrase.setFocus()
        elif where == "kit":
            self.f_path.set_message(text)
        else:
            self.error.setText(text)
            self.error.setVisible(True)

    async def _import(self) -> None:
        try:
            await self.ctx.keys.import_kit(Path(self.path.text().strip()), self.passphrase.text())
        except UserError as exc:
            self.status.setText("Nothing was changed.")
            self._show_error(exc)
            return
        except OSError as exc:
            self.status.setText("Nothing was changed.")
            self.f_path.set_message(f"Cannot read the kit: {exc.strerror or exc}")
            return
        finally:
            self.task = None
            self._set_busy(False)
            self._edited()
        self.passphrase.clear()
        self.status.setText("Unlocked.")
        self.accept()

    def reject(self) -> None:
        if self.task is not None:   # the appliance is working on it: Cancel is off meanwhile, Esc too
            return
        self.passphrase.clear()
        super().reject()


class ExportKitDialog(QDialog):
    """Settings' Export recovery kit…: the passphrase twice, then Save as… a new file. Accepted once saved."""

    def __init__(self, ctx: ConsoleContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.setWindowTitle("Export the recovery kit")
        self.setModal(True)
        self.setMinimumWidth(560)
        head = forms.title("Export the recovery kit")
        intro = QLabel("The kit seals this appliance's vault key, backup key and CA with a passphrase of your choice. "
                       "<b>Without it, a lost keyring means lost recovery points.</b> Print it or store it away from "
                       "this computer, and keep the passphrase apart from it.")
        intro.setWordWrap(True)
        self.passphrase = _password_field("Kit passphrase")
        self.repeat = _password_field("Kit passphrase again")
        self.f_pass = forms.Field(self.passphrase, hint=f"At least {KIT_MIN_PASSPHRASE} characters.")
        self.f_repeat = forms.Field(self.repeat)
        self.path = QLineEdit(str(Path.home() / "lifeboat-recovery-kit.txt"))
        self.path.setAccessibleName("Save the kit to")
        self.browse_btn = QPushButton("&Browse…")
        self.browse_btn.clicked.connect(self.browse)
        self.f_path = forms.Field(self.path, self.browse_btn, hint="A new file: a kit never overwrites one.")
        form = QFormLayout()
        form.addRow("Kit &passphrase:", self.f_pass)
        form.addRow("&Again:", self.f_repeat)
        form.addRow("Save &to:", self.f_path)
        self.progress = _busy_bar()
        self.status = QLabel()
        self.status.setObjectName("hint")
        self.status.setWordWrap(True)
        self.status.setAccessibleName("Export status")
        buttons = QDialogButtonBox()
        self.save_btn = QPushButton(theme.icon("save"), "&Export")
        self.save_btn.setObjectName("primary")
        self.cancel_btn = QPushButton("Cancel")
        buttons.addButton(self.save_btn, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.addButton(self.cancel_btn, QDialogButtonBox.ButtonRole.RejectRole)
        self.save_btn.clicked.connect(self.start_export)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(head)
        lay.addWidget(intro)
        lay.addLayout(form)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addWidget(buttons)
        for ed in (self.passphrase, self.repeat, self.path):
            ed.textChanged.connect(self._check)
        self.saved_to: Path | None = None
        self.task: asyncio.Task[Any] | None = None
        self._check()

    def errors(self) -> dict[str, str | None]:
        p, r, out = self.passphrase.text(), self.repeat.text(), self.path.text().strip()
        return {"passphrase": (f"Use at least {KIT_MIN_PASSPHRASE} characters ({len(p)} so far)."
                               if p and len(p) < KIT_MIN_PASSPHRASE else None),
                "repeat": "The two passphrases differ." if r and r != p else None,
                "path": ("Enter an absolute file path." if out and not Path(out).expanduser().is_absolute() else
                         "This file exists; choose a new name (a kit never overwrites a file)."
                         if out and Path(out).expanduser().exists() else None)}

    def _check(self) -> bool:
        e = self.errors()
        self.f_pass.set_message(e["passphrase"])
        self.f_repeat.set_message(e["repeat"])
        self.f_path.set_message(e["path"])
        p = self.passphrase.text()
        ok = (len(p) >= KIT_MIN_PASSPHRASE and self.repeat.text() == p and bool(self.path.text().strip())
              and not any(e.values()))
        self.save_btn.setEnabled(ok and self.task is None)
        return ok

    def browse(self) -> QFileDialog:
        dlg = QFileDialog(self, "Save the recovery kit", self.path.text())
        dlg.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dlg.fileSelected.connect(lambda p: self.path.setText(p))
        dlg.finished.connect(dlg.deleteLater)
        dlg.open()
        return dlg

    def start_export(self) -> asyncio.Task[Any] | None:
        if self.task is None and self._check():
            self._set_busy(True)
            self.status.setText("Sealing the recovery kit… (a few seconds: the key derivation is slow on purpose)")
            self.task = asyncio.ensure_future(self._export())
        return self.task

    def _set_busy(self, on: bool) -> None:
        for w in (self.browse_btn, self.passphrase, self.repeat, self.path, self.cancel_btn):
            w.setEnabled(not on)
        self.save_btn.setEnabled(False)
        self.progress.setVisible(on)

    async def _export(self) -> None:
        out = Path(self.path.text().strip()).expanduser()
        try:
            job = await self.ctx.keys.export_kit(out, self.passphrase.text())
        except UserError as exc:
            self.status.setText(f"Not saved: {exc.code}: {exc.message}" + (f" {exc.advice}" if exc.advice else ""))
            return
        except OSError as exc:
            self.status.setText(f"Not saved: {exc.strerror or exc}")
            return
        finally:
            self.task = None
            self._set_busy(False)
            self._check()
        self.saved_to = Path(job.result)
        self.passphrase.clear()
        self.repeat.clear()
        self.accept()

    def reject(self) -> None:
        if self.task is not None:
            return
        self.passphrase.clear()
        self.repeat.clear()
        super().reject()
