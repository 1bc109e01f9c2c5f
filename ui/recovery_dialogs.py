"""Dialogs of recovery (issue 13): a plan action (script or manual), a failover of one machine (host, point,
planned), a point choice (change point), and the confirmation every dangerous action asks for, naming what will
happen (machines, host, point).

Open them with ``open()`` (window-modal, no nested event loop); the caller connects ``accepted``. The action dialog
stays open when the engine refuses the action and shows the refusal by the field it names (``set_field_error``).
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QAbstractItemView, QButtonGroup, QCheckBox, QComboBox, QDialog, QDialogButtonBox,
                               QFormLayout, QHeaderView, QLabel, QLineEdit, QMessageBox, QPlainTextEdit, QRadioButton,
                               QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from console.engine_facade import PointView, RecoveryHostView, parse_duration_text
from console.errors import UserError

from . import forms


def point_label(p: PointView) -> str:
    return (f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(p.time))} {p.kind}"
            + (f" (tag {p.tag})" if p.tag else "") + f" — {p.id}")


def point_combo(points: Sequence[PointView], name: str) -> QComboBox:
    """latest, latest app-consistent, then every point newest first; ``currentData()`` is the engine's spec."""
    c = QComboBox()
    c.setAccessibleName(name)
    c.addItem("Latest", "latest")
    c.addItem("Latest app-consistent", "latest-app")
    for p in sorted(points, key=lambda p: p.time, reverse=True):
        c.addItem(point_label(p), p.id)
    return c


def confirm(parent: QWidget, title: str, text: str, detail: str, yes: str,
            on_yes: Callable[[], object]) -> QMessageBox:
    """A warning box whose text names what will happen; its Yes button says what it does and calls ``on_yes``.
    Cancel is the default. Not shown yet (``open()`` it)."""
    box = QMessageBox(QMessageBox.Icon.Warning, title, text, QMessageBox.StandardButton.Yes
                      | QMessageBox.StandardButton.Cancel, parent)
    box.setInformativeText(detail)
    ok = box.button(QMessageBox.StandardButton.Yes)
    ok.setText(yes)
    box.setDefaultButton(QMessageBox.StandardButton.Cancel)
    box.buttonClicked.connect(lambda b: on_yes() if b is ok else None)
    return box


class ActionDialog(QDialog):
    """A script (absolute path on the appliance, time limit) or a manual instruction, before or after a group."""

    def __init__(self, group: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.group = group
        self.setWindowTitle(f"Add an action to group {group}")
        self.before = QRadioButton("&Before the group's machines fail over")
        self.after = QRadioButton("&After they have booted")
        self.before.setChecked(True)
        when = QButtonGroup(self)
        when.addButton(self.before)
        when.addButton(self.after)
        self.script_kind = QRadioButton("&Script (runs on the appliance)")
        self.manual_kind = QRadioButton("&Manual action (the run waits until an operator resumes it)")
        self.manual_kind.setChecked(True)
        kind = QButtonGroup(self)
        kind.addButton(self.script_kind)
        kind.addButton(self.manual_kind)
        self.script = QLineEdit()
        self.script.setAccessibleName("Script path")
        self.script.setPlaceholderText("/opt/dr/check-db.sh")
        self.timeout = QLineEdit("5m")
        self.timeout.setAccessibleName("Script time limit")
        self.manual = QPlainTextEdit()
        self.manual.setAccessibleName("Instruction")
        self.manual.setPlaceholderText("What the operator must do before the run goes on")
        self.manual.setMaximumHeight(90)
        self.fields = {"script": forms.Field(self.script, hint="Environment: LIFEBOAT_PLAN, LIFEBOAT_GROUP, "
                                             "LIFEBOAT_MACHINES, LIFEBOAT_ADDRESSES, LIFEBOAT_TEST."),
                       "timeout": forms.Field(self.timeout), "manual": forms.Field(self.manual),
                       "action": forms.Field(QLabel(""))}
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Add &action")
        self.buttons.accepted.connect(self._accept)
        self.buttons.rejected.connect(self.reject)
        form = QFormLayout(self)
        form.addRow(self.before)
        form.addRow(self.after)
        form.addRow(self.manual_kind)
        form.addRow("Instruction:", self.fields["manual"])
        form.addRow(self.script_kind)
        form.addRow("Script:", self.fields["script"])
        form.addRow("Time limit:", self.fields["timeout"])
        form.addRow(self.fields["action"])
        form.addRow(self.buttons)
        for w in (self.script_kind, self.manual_kind):
            w.toggled.connect(self._kind_changed)
        self._kind_changed()
        self.submit: object = None   # set by the page: called with the dialog, returns an error or None

    def _kind_changed(self) -> None:
        script = self.script_kind.isChecked()
        self.script.setEnabled(script)
        self.timeout.setEnabled(script)
        self.manual.setEnabled(not script)

    @property
    def when(self) -> str:
        return "before" if self.before.isChecked() else "after"

    def values(self) -> dict[str, object]:
        """``script``+``timeout`` or ``manual``; a time limit that is not a duration is refused here, by its field."""
        if self.script_kind.isChecked():
            timeout = parse_duration_text(self.timeout.text() or "5m", "time limit")
            return {"script": self.script.text().strip(), "timeout": timeout}
        return {"manual": self.manual.toPlainText()}

    def set_field_error(self, field: str | None, text: str | None) -> None:
        for key, f in self.fields.items():
            f.set_message(text if key == field else None)

    def _accept(self) -> None:
        self.set_field_error(None, None)
        try:
            values = self.values()
        except UserError as exc:
            self.set_field_error("timeout", f"{exc.code}: {exc.message}")
            return
        submit = self.submit
        err = submit(self, values) if callable(submit) else None
        if err is None:
            self.accept()
            return
        field, text = err
        self.set_field_error(field if field in self.fields else "action", text)


class MachineFailoverDialog(QDialog):
    """Fail one machine over: the recovery host, the point (latest, latest app-consistent, a point), planned."""

    def __init__(self, machine: str, hosts: Sequence[RecoveryHostView], points: Sequence[PointView],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.machine = machine
        self.setWindowTitle(f"Failover of {machine}")
        self.host = QComboBox()
        self.host.setAccessibleName("Recovery host")
        for h in hosts:
            self.host.addItem(f"{h.name} ({h.uri})", h.name)
        self.point = point_combo(points, "Recovery point")
        self.planned = QCheckBox("&Planned: the source still runs; quiesce it and fail over at a final point "
                                 "(zero data loss)")
        self.planned.toggled.connect(lambda on: self.point.setEnabled(not on))
        self.f_host = forms.Field(self.host)
        self.f_host.set_message(None if hosts else "No recovery host is registered (lifeboat host add).")
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("&Fail over…")
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(bool(hosts))
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        form = QFormLayout(self)
        form.addRow(forms.hint(f"{machine} boots on the recovery host from the vault at once; replication of it "
                               "stops until the failover is cancelled."))
        form.addRow("&Host:", self.f_host)
        form.addRow("&Point:", self.point)
        form.addRow(self.planned)
        form.addRow(self.buttons)

    def chosen(self) -> tuple[str, str, bool]:
        """(host, point spec, planned)."""
        return str(self.host.currentData()), str(self.point.currentData()), self.planned.isChecked()

    def point_text(self) -> str:
        return "a final point taken after quiescing it" if self.planned.isChecked() else self.point.currentText()


class PointDialog(QDialog):
    """Choose another point for a recovered machine (before commit): the VM restarts from it."""

    def __init__(self, machine: str, points: Sequence[PointView], current: str = "",
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.machine = machine
        self.setWindowTitle(f"Change the point of {machine}")
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["Time", "Kind", "Tag", "Point"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setAccessibleName("Recovery points")
        for r, p in enumerate(sorted(points, key=lambda p: p.time, reverse=True)):
            self.table.insertRow(r)
            for c, text in enumerate((time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p.time)), p.kind,
                                      p.tag or "", p.id + ("  (now)" if p.id == current else ""))):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, p.id)
                self.table.setItem(r, c, item)
        if self.table.rowCount():
            self.table.selectRow(0)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("&Restart from this point")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(forms.hint(f"The recovered VM of {machine} is stopped and restarted from the chosen point; "
                                 "what it wrote since it booted is discarded."))
        lay.addWidget(self.table, 1)
        lay.addWidget(self.buttons)

    def point(self) -> str | None:
        rows = self.table.selectionModel().selectedRows()
        return str(self.table.item(rows[0].row(), 0).data(Qt.ItemDataRole.UserRole)) if rows else None

    def select_point(self, point_id: str) -> None:
        for r in range(self.table.rowCount()):
            if self.table.item(r, 0).data(Qt.ItemDataRole.UserRole) == point_id:
                self.table.selectRow(r)
                return
        raise KeyError(point_id)
