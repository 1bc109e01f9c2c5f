"""Infrastructure: vCenters, their hosts and VMs with each VM's protection state, and the registered agents.

vCenter support comes from the engine's ``vsphere`` service (issue 4): registered endpoints, their hosts and VMs
(``snapshot()``), refreshed on its inventory events. Machines not tied to a VM are listed under "Agents". Without
vCenter support the page lists the agents only and says so.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QHBoxLayout, QMessageBox, QPushButton, QTreeWidget,
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


def inventory_tree(snapshot: Any) -> dict[str, tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]]:
    """vCenter → (its list entry, host name → VMs) from ``app.vsphere.snapshot()``
    ({"vcenters": [{"host", "status", …}], "hosts": [{"vcenter", "name", …}], "vms": [{"vcenter", "host", …}]})."""
    snap = snapshot if isinstance(snapshot, dict) else {"vms": list(snapshot or [])}
    out: dict[str, tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]] = {}
    for vc in snap.get("vcenters", []):
        out[str(vc.get("host"))] = (vc, defaultdict(list))
    for h in snap.get("hosts", []):
        out.setdefault(str(h.get("vcenter")), ({}, defaultdict(list)))[1].setdefault(str(h.get("name")), [])
    for vm in snap.get("vms", []):
        vc = str(vm.get("vcenter") or "vCenter")
        out.setdefault(vc, ({}, defaultdict(list)))[1][str(vm.get("host") or "(no host)")].append(vm)
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
        self.dialog: VCenterDialog | QMessageBox | None = None
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
        if any(k in name for k in ("vcenter", "inventory", "vm", "matched")):
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
                tree = inventory_tree(fac.inventory())
            except Exception as exc:
                self.ctx.notes.handle(exc, "reading the vCenter inventory")
                tree = {}
            if not tree:
                self.note.setText("No vCenter registered yet: Add vCenter… to discover its VMs.")
            for vc, (entry, hosts) in sorted(tree.items()):
                status = str(entry.get("status") or "")
                if entry.get("error"):
                    status += f": {(entry['error'] or {}).get('message', '')}"
                top = QTreeWidgetItem([vc, "vCenter", "", status])
                top.setIcon(0, theme.icon("infrastructure"))
                self.tree.addTopLevelItem(top)
                for host, vms in sorted(hosts.items()):
                    h = QTreeWidgetItem([host, "host", "", f"{len(vms)} VM(s)"])
                    top.addChild(h)
                    for vm in sorted(vms, key=lambda v: str(v.get("name"))):
                        machine = vm.get("protected_machine")
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
        box = QMessageBox(QMessageBox.Icon.Warning, "Remove vCenter",
                          f"Remove vCenter {name}? Its VMs are no longer discovered and its credentials are deleted "
                          "from the keyring. Protected machines keep replicating through their agents.",
                          QMessageBox.StandardButton.Cancel, self)
        remove = box.addButton("&Remove", QMessageBox.ButtonRole.DestructiveRole)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        self.dialog = box

        def done(_r: int) -> None:
            self.dialog = None
            if box.clickedButton() is remove:
                self.ctx.jobs.start(f"Remove vCenter {name}", "vcenter", None,
                                    lambda _job: self.ctx.facade.remove_vcenter(name))
            box.deleteLater()
        box.finished.connect(done)
        box.open()

