"""Infrastructure: vCenters, their hosts and VMs with each VM's protection state, and the registered agents.

vCenter support comes from the engine's ``vsphere`` service (issue 4); without it the page lists the registered
machines (agents) only and says so. The inventory snapshot is read tolerantly: a dict with ``vms`` (each VM with
``name``, ``power_state``, ``host``, optional ``vcenter`` and ``protected_machine``) as ``lifeboat inventory`` prints.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QHBoxLayout, QPushButton, QTreeWidget,
                               QTreeWidgetItem, QVBoxLayout, QWidget)

from console.context import ConsoleContext

from .. import forms, theme
from ..wizard_pages import VCenterPage


class VCenterDialog(QDialog):
    """Add a vCenter: address, user, password, and the certificate thumbprint to accept (the wizard's page)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Add vCenter")
        self.page = VCenterPage()
        self.page.enable.setChecked(True)
        self.page.enable.setVisible(False)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        self.page.completeChanged.connect(self._update)
        lay = QVBoxLayout(self)
        lay.addWidget(self.page)
        lay.addWidget(self.buttons)
        self._update()

    def _update(self) -> None:
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(self.page.isComplete())


def _vm_groups(snapshot: Any) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """vCenter → host → VMs, from whatever shape the snapshot has (see the module docstring)."""
    vms = snapshot.get("vms", []) if isinstance(snapshot, dict) else list(snapshot or [])
    out: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for vm in vms:
        if not isinstance(vm, dict):
            vm = getattr(vm, "__dict__", {"name": str(vm)})
        out[str(vm.get("vcenter") or vm.get("datacenter") or "vCenter")][str(vm.get("host") or "host")].append(vm)
    return out


class InfrastructurePage(QWidget):
    COLUMNS = ("Name", "Kind", "Power", "Protection")

    def __init__(self, ctx: ConsoleContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.tree = QTreeWidget()
        self.tree.setAccessibleName("Infrastructure")
        self.tree.setHeaderLabels(list(self.COLUMNS))
        self.tree.setColumnWidth(0, 280)
        self.tree.setColumnWidth(1, 110)
        self.tree.setColumnWidth(2, 100)
        self.note = forms.hint("")
        self.add_btn = QPushButton(theme.icon("add"), "&Add vCenter…")
        self.remove_btn = QPushButton(theme.icon("remove"), "&Remove vCenter")
        self.refresh_btn = QPushButton(theme.icon("refresh"), "Re&fresh")
        bar = QHBoxLayout()
        bar.addWidget(self.note, 1)
        for b in (self.add_btn, self.remove_btn, self.refresh_btn):
            bar.addWidget(b)
        lay = QVBoxLayout(self)
        lay.addWidget(forms.title("Infrastructure"))
        lay.addLayout(bar)
        lay.addWidget(self.tree, 1)
        self.add_btn.clicked.connect(self.add_vcenter)
        self.remove_btn.clicked.connect(self.remove_vcenter)
        self.refresh_btn.clicked.connect(self.refresh)
        self.dialog: VCenterDialog | None = None
        self._pending = QTimer(self)
        self._pending.setSingleShot(True)
        self._pending.setInterval(500)
        self._pending.timeout.connect(self.refresh)
        ctx.inventory_refreshed.connect(self._schedule)
        ctx.bridge.other_event.connect(self._on_event)

    def _schedule(self) -> None:
        if self.isVisible() and not self._pending.isActive():
            self._pending.start()

    def _on_event(self, ev: object) -> None:
        name = type(ev).__name__.lower()
        if any(k in name for k in ("vcenter", "inventory", "vsphere", "vm")):
            self._schedule()

    def showEvent(self, event) -> None:  # type: ignore[no-untyped-def]  # noqa: N802
        super().showEvent(event)
        self.refresh()

    def _protection(self, machine: str | None) -> tuple[str, str]:
        row = self.ctx.machines.row(machine) if machine else None
        if row is None:
            return "not protected", ""
        return (f"{row.state} — {theme.health_label(row.health)}" if row.protected else "registered"), \
            (row.health if row.protected else "")

    def refresh(self) -> None:
        fac = self.ctx.facade
        self.add_btn.setEnabled(fac.has_vsphere)
        self.remove_btn.setEnabled(fac.has_vsphere)
        self.tree.clear()
        matched: set[str] = set()
        if fac.has_vsphere:
            self.note.setText("VMs of the registered vCenters, with their protection state.")
            try:
                groups = _vm_groups(fac.inventory())
            except Exception as exc:
                self.ctx.notes.handle(exc, "reading the vCenter inventory")
                groups = {}
            for vc, hosts in groups.items():
                top = QTreeWidgetItem([vc, "vCenter", "", ""])
                top.setIcon(0, theme.icon("infrastructure"))
                self.tree.addTopLevelItem(top)
                for host, vms in hosts.items():
                    h = QTreeWidgetItem([host, "host", "", ""])
                    top.addChild(h)
                    for vm in sorted(vms, key=lambda v: str(v.get("name"))):
                        machine = vm.get("protected_machine") or (vm.get("name") if self.ctx.machines.row(
                            str(vm.get("name"))) else None)
                        if machine:
                            matched.add(str(machine))
                        text, health = self._protection(machine)
                        it = QTreeWidgetItem([str(vm.get("name")), "VM", str(vm.get("power_state") or ""), text])
                        it.setIcon(3, theme.health_icons()[health])
                        h.addChild(it)
                top.setExpanded(True)
        else:
            self.note.setText("vCenter support is not in this engine build: the registered agents are listed. "
                              "Add vCenters once it is.")
        agents = QTreeWidgetItem(["Agents (physical or unmatched)", "group", "", ""])
        agents.setIcon(0, theme.icon("machines"))
        self.tree.addTopLevelItem(agents)
        for name in sorted(self.ctx.machines.names()):
            if name in matched:
                continue
            text, health = self._protection(name)
            it = QTreeWidgetItem([name, "agent", "", text])
            it.setIcon(3, theme.health_icons()[health])
            agents.addChild(it)
        agents.setExpanded(True)

    def add_vcenter(self) -> None:
        dlg = VCenterDialog(self)
        self.dialog = dlg

        def done(result: int) -> None:
            self.dialog = None
            if result == QDialog.DialogCode.Accepted:
                p = dlg.page
                self.ctx.register_vcenter(p.host.text().strip(), p.user.text().strip(), p.password.text(),
                                          p.thumbprint)
            dlg.deleteLater()
        dlg.finished.connect(done)
        dlg.open()

    def remove_vcenter(self) -> None:
        item = self.tree.currentItem()
        while item is not None and item.parent() is not None:
            item = item.parent()
        if item is None or item.text(1) != "vCenter":
            self.note.setText("Select a vCenter to remove.")
            return
        name = item.text(0)
        self.ctx.jobs.start(f"Remove vCenter {name}", "vcenter", None,
                            lambda _job: self.ctx.facade.remove_vcenter(name))

