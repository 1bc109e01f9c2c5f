"""Action dialogs: enable protection (choose a policy) and test failover (choose a point; NBD or export).

Open them with ``open()`` (window-modal, no nested event loop); the caller connects ``accepted``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QAbstractItemView, QButtonGroup, QComboBox, QDialog, QDialogButtonBox, QFileDialog,
                               QFormLayout, QHeaderView, QLabel, QLineEdit, QPushButton, QRadioButton,
                               QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from console.engine_facade import PointView, Policy, duration_text
from console.home_setup import parse_host_port

from . import forms, theme


class ProtectDialog(QDialog):
    """Enable protection of a machine with a chosen policy."""

    def __init__(self, machine: str, policies: Sequence[Policy], current: str | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Enable protection of {machine}")
        self.machine = machine
        self.policy = QComboBox()
        self.policy.setAccessibleName("Policy")
        for p in policies:
            self.policy.addItem(f"{p.name} — RPO threshold {duration_text(p.rpo_threshold)}, retention "
                                f"{duration_text(p.retention)}", p.name)
        if current:
            self.policy.setCurrentIndex(max(0, self.policy.findData(current)))
        form = QFormLayout(self)
        form.addRow(forms.hint("The agent starts capturing every write and the initial replication copies the "
                               "disks' data regions to the vault."))
        form.addRow("&Policy:", self.policy)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Enable &protection")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        form.addRow(self.buttons)

    def chosen_policy(self) -> str:
        return str(self.policy.currentData())


class FailoverDialog(QDialog):
    """Choose a recovery point (kind, tag, time) and how to run the drill: served over NBD, or exported."""

    def __init__(self, machine: str, points: Sequence[PointView], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Test failover of {machine}")
        self.resize(640, 480)
        self.machine = machine
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["Time", "Kind", "Tag", "Point"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setAccessibleName("Recovery points")
        rows: list[tuple[str, str, str, str]] = [("now", "latest", "", "latest")]
        for p in sorted(points, key=lambda p: p.time, reverse=True):
            rows.append((time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p.time)), p.kind, p.tag or "", p.id))
        for r, row in enumerate(rows):
            self.table.insertRow(r)
            for c, text in enumerate(row):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, row[3])
                if row[1] == "app-consistent" and c == 1:
                    item.setIcon(theme.icon("policies"))
                self.table.setItem(r, c, item)
        self.table.selectRow(0)
        self.nbd = QRadioButton("Serve the disks over &NBD (ready at once; writes go to scratch)")
        self.export = QRadioButton("&Export raw disk images to a folder")
        self.nbd.setChecked(True)
        group = QButtonGroup(self)
        group.addButton(self.nbd)
        group.addButton(self.export)
        self.nbd_addr = QLineEdit("127.0.0.1:0")
        self.nbd_addr.setAccessibleName("NBD address")
        self.folder = QLineEdit()
        self.folder.setAccessibleName("Export folder")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.f_nbd = forms.Field(self.nbd_addr, hint="HOST:PORT to listen on; port 0 picks a free port.")
        self.f_folder = forms.Field(self.folder, browse)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Start &drill")
        self.buttons.accepted.connect(self._accept)
        self.buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        point_label = QLabel("Recovery &point:")
        point_label.setBuddy(self.table)   # Alt+P focuses the table; without a buddy the & shows literally
        lay.addWidget(point_label)
        lay.addWidget(self.table, 1)
        form = QFormLayout()
        form.addRow(self.nbd)
        form.addRow("Address:", self.f_nbd)
        form.addRow(self.export)
        form.addRow("Folder:", self.f_folder)
        lay.addLayout(form)
        lay.addWidget(self.buttons)
        for w in (self.nbd, self.export):
            w.toggled.connect(self._validate)
        self.nbd_addr.textChanged.connect(self._validate)
        self.folder.textChanged.connect(self._validate)
        self._validate()

    def _browse(self) -> None:
        dlg = QFileDialog(self, "Export folder", self.folder.text() or str(Path.home()))
        dlg.setFileMode(QFileDialog.FileMode.Directory)
        dlg.fileSelected.connect(self.folder.setText)
        dlg.finished.connect(dlg.deleteLater)
        dlg.open()

    def errors(self) -> dict[str, str]:
        out = {}
        if self.nbd.isChecked():
            hp = parse_host_port(self.nbd_addr.text(), default_port=-1) if self.nbd_addr.text().strip() else None
            port_zero = self.nbd_addr.text().strip().endswith(":0")
            if hp is None and not port_zero:
                out["nbd"] = "Enter HOST:PORT, for example 127.0.0.1:10809 (port 0 = any free port)."
        else:
            err = forms.export_folder_error(self.folder.text())
            if err:
                out["folder"] = err
        return out

    def _validate(self) -> None:
        errs = self.errors()
        self.nbd_addr.setEnabled(self.nbd.isChecked())
        self.folder.setEnabled(self.export.isChecked())
        self.f_nbd.set_message(errs.get("nbd"))
        self.f_folder.set_message(errs.get("folder"))
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(not errs and self.point() is not None)

    def _accept(self) -> None:
        if not self.errors():
            self.accept()

    def point(self) -> str | None:
        rows = self.table.selectionModel().selectedRows()
        return str(self.table.item(rows[0].row(), 0).data(Qt.ItemDataRole.UserRole)) if rows else None

    def select_point(self, point_id: str) -> None:
        for r in range(self.table.rowCount()):
            if self.table.item(r, 0).data(Qt.ItemDataRole.UserRole) == point_id:
                self.table.selectRow(r)
                return
        raise KeyError(point_id)

    def target(self) -> dict[str, str]:
        """``{"nbd": HOST:PORT}`` or ``{"export_dir": DIR}``."""
        if self.nbd.isChecked():
            return {"nbd": self.nbd_addr.text().strip()}
        return {"export_dir": self.folder.text().strip()}
