"""One dialog for a drill of several machines: one point rule and one target for all, one job per machine.

Machines have different recovery points, so the point is a rule every machine resolves for itself (the engine's
point specs: ``latest``, ``tag:TAG`` for an app-consistent bookmark, or a TIME). Over NBD each drill listens on its
own free port of the chosen host; exported, each machine's images go to ``BASE/<machine>``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Sequence

from PySide6.QtCore import QDateTime
from PySide6.QtWidgets import (QButtonGroup, QDateTimeEdit, QDialog, QDialogButtonBox, QFileDialog, QFormLayout,
                               QLabel, QLineEdit, QPushButton, QRadioButton, QVBoxLayout, QWidget)

from . import forms


class BulkDrillDialog(QDialog):
    """Test failover of ``machines``: ``point()`` and ``target(machine)`` once accepted."""

    def __init__(self, machines: Sequence[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.machines = list(machines)
        self.setWindowTitle(f"Test failover of {len(self.machines)} machines")
        shown = ", ".join(self.machines[:8]) + (f" and {len(self.machines) - 8} more" if len(self.machines) > 8 else "")
        self.latest = QRadioButton("The &latest point of each machine")
        self.by_tag = QRadioButton("The newest app-consistent &bookmark tagged:")
        self.at_time = QRadioButton("The state at a &time:")
        self.latest.setChecked(True)
        points = QButtonGroup(self)
        for b in (self.latest, self.by_tag, self.at_time):
            points.addButton(b)
        self.tag = QLineEdit()
        self.tag.setAccessibleName("Bookmark tag")
        self.when = QDateTimeEdit(QDateTime.currentDateTime())
        self.when.setAccessibleName("Point in time")
        self.when.setDisplayFormat("yyyy-MM-dd HH:mm:ss")
        self.when.setCalendarPopup(True)
        self.nbd = QRadioButton("Serve each machine's disks over &NBD (a free port each)")
        self.export = QRadioButton("&Export raw disk images, one folder per machine under:")
        self.nbd.setChecked(True)
        targets = QButtonGroup(self)
        targets.addButton(self.nbd)
        targets.addButton(self.export)
        self.nbd_host = QLineEdit("127.0.0.1")
        self.nbd_host.setAccessibleName("NBD host")
        self.folder = QLineEdit()
        self.folder.setAccessibleName("Export base folder")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.f_tag = forms.Field(self.tag)
        self.f_host = forms.Field(self.nbd_host, hint="The address to listen on; each drill picks its own port.")
        self.f_folder = forms.Field(self.folder, browse)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText(f"Start {len(self.machines)} &drills")
        self.buttons.accepted.connect(self._accept)
        self.buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        head = QLabel(f"One drill job per machine: {shown}.")
        head.setWordWrap(True)
        lay.addWidget(head)
        form = QFormLayout()
        form.addRow(QLabel("Recovery point:"))
        form.addRow(self.latest)
        form.addRow(self.by_tag, self.f_tag)
        form.addRow(self.at_time, self.when)
        form.addRow(self.nbd)
        form.addRow("Host:", self.f_host)
        form.addRow(self.export)
        form.addRow("Base folder:", self.f_folder)
        lay.addLayout(form)
        lay.addWidget(self.buttons)
        for w in (self.latest, self.by_tag, self.at_time, self.nbd, self.export):
            w.toggled.connect(self._validate)
        for e in (self.tag, self.nbd_host, self.folder):
            e.textChanged.connect(self._validate)
        self._validate()

    def _browse(self) -> None:
        dlg = QFileDialog(self, "Export base folder", self.folder.text() or str(Path.home()))
        dlg.setFileMode(QFileDialog.FileMode.Directory)
        dlg.fileSelected.connect(self.folder.setText)
        dlg.finished.connect(dlg.deleteLater)
        dlg.open()

    def errors(self) -> dict[str, str]:
        out = {}
        if self.by_tag.isChecked() and not self.tag.text().strip():
            out["tag"] = "Enter the bookmark's tag."
        if self.nbd.isChecked():
            host = self.nbd_host.text().strip()
            if not host or ":" in host.strip("[]") and not host.startswith("["):
                out["host"] = "Enter a host name or address without a port (IPv6 in brackets)."
        else:
            err = forms.export_folder_error(self.folder.text())
            if err:
                out["folder"] = err
        return out

    def _validate(self) -> None:
        errs = self.errors()
        self.tag.setEnabled(self.by_tag.isChecked())
        self.when.setEnabled(self.at_time.isChecked())
        self.nbd_host.setEnabled(self.nbd.isChecked())
        self.folder.setEnabled(self.export.isChecked())
        self.f_tag.set_message(errs.get("tag"))
        self.f_host.set_message(errs.get("host"))
        self.f_folder.set_message(errs.get("folder"))
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(not errs)

    def _accept(self) -> None:
        if not self.errors():
            self.accept()

    def point(self) -> str:
        """The engine's point spec, the same for every machine."""
        if self.by_tag.isChecked():
            return f"tag:{self.tag.text().strip()}"
        if self.at_time.isChecked():
            when = dt.datetime.fromtimestamp(self.when.dateTime().toSecsSinceEpoch()).astimezone()
            return when.isoformat(timespec="seconds")
        return "latest"

    def target(self, machine: str) -> dict[str, str]:
        """``{"nbd": HOST:0}`` (a free port each) or ``{"export_dir": BASE/machine}``."""
        if self.nbd.isChecked():
            return {"nbd": f"{self.nbd_host.text().strip()}:0"}
        return {"export_dir": str(Path(self.folder.text().strip()) / machine)}
