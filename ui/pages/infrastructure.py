"""Infrastructure: vCenters, their hosts and VMs with each VM's protection state, and the registered agents.

vCenter support comes from the engine's ``vsphere`` service (issue 4): registered endpoints, their hosts and VMs
(``snapshot()``), refreshed on its inventory events. Machines not tied to a VM are listed under "Agents". Without
vCenter support the page lists the agents only and says so.

Protect straight from the inventory: a VM the engine matched to a registered agent (``protected_machine``) and not
yet protected gets "Protect…" (button and context menu): the policy dialog, then the console's protect job. A VM
with no agent says how to install and register one, with the copyable command (``ui/empty_state.py``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from PySide6.QtCore import QPoint, Qt, QTimer
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QHBoxLayout, QMenu, QMessageBox, QPushButton,
                               QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget)

from console.context import ConsoleContext

from .. import forms, theme
from ..dialogs import ProtectDialog
from ..empty_state import AgentGuide
from ..wizard_pages import VCenterPage

#: Item data (column 0): the registered machine a VM or agent row stands for ("" for a VM with no agent).
MACHINE_ROLE = Qt.ItemDataRole.UserRole + 1


class VCenterDialog(QDialog):
    """Add a vCenter: address, user, password, and the certificate thumbprint to accept (the wizard's page)."""

    def __init__(self, parent: QWidget | None = None, pinned: dict[str, str] | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Add vCenter")
        self.resize(680, 560)
        self.page = VCenterPage()
        for address, thumbprint in (pinned or {}).items():   # registered vCenters: a changed certificate is warned
            self.page.expect(address, thumbprint)
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
        self.protect_btn = QPushButton(theme.icon("protect"), "&Protect…")
        self.protect_btn.setToolTip("Enable protection of the selected VM's machine, with a policy")
        bar = QHBoxLayout()
        bar.addWidget(self.note, 1)
        for b in (self.protect_btn, self.add_btn, self.remove_btn, self.refresh_btn):
            bar.addWidget(b)
        # The selected item, said in words: what protecting it takes (or why it cannot be protected yet).
        self.selection_note = forms.hint("")
        self.selection_note.setAccessibleName("Selected item")
        self.guide = AgentGuide(intro="<b>No Lifeboat agent is registered for this VM yet.</b>")
        self.guide.setVisible(False)
        lay = QVBoxLayout(self)
        lay.addWidget(forms.title("Infrastructure"))
        lay.addLayout(bar)
        lay.addWidget(self.tree, 1)
        lay.addWidget(self.selection_note)
        lay.addWidget(self.guide)
        self.tree.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.tree.customContextMenuRequested.connect(self._context_menu)
        self.tree.currentItemChanged.connect(lambda *_: self._selection_changed())
        self.protect_btn.clicked.connect(self.protect_selected)
        self.menu: QMenu | None = None
        self.add_btn.clicked.connect(self.add_vcenter)
        self.remove_btn.clicked.connect(self.remove_vcenter)
        self.refresh_btn.clicked.connect(self.refresh)
        self.dialog: VCenterDialog | QMessageBox | ProtectDialog | None = None
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
        current = self.tree.currentItem()
        keep = (current.text(0), current.text(1)) if current is not None else None
        expanded = {(i.text(0), i.text(1)) for i in self._items() if i.isExpanded()}
        self.tree.blockSignals(True)
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
                        if not machine:
                            text = "no agent"
                        it = QTreeWidgetItem([str(vm.get("name")), "VM", str(vm.get("power_state") or ""), text])
                        it.setData(0, MACHINE_ROLE, str(machine or ""))
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
            it.setData(0, MACHINE_ROLE, name)
            it.setIcon(3, theme.health_icons()[health])
            agents.addChild(it)
        agents.setExpanded(True)
        for i in self._items():   # the inventory refreshes often: keep what the operator opened and selected
            if (i.text(0), i.text(1)) in expanded:
                i.setExpanded(True)
        if keep is not None:
            found = [i for i in self.tree.findItems(keep[0], Qt.MatchFlag.MatchExactly | Qt.MatchFlag.MatchRecursive)
                     if i.text(1) == keep[1]]
            if found:
                self.tree.setCurrentItem(found[0])
        self.tree.blockSignals(False)
        self._selection_changed()

    def _items(self) -> list[QTreeWidgetItem]:
        out: list[QTreeWidgetItem] = []
        todo = [self.tree.topLevelItem(i) for i in range(self.tree.topLevelItemCount())]
        while todo:
            it = todo.pop()
            out.append(it)
            todo += [it.child(i) for i in range(it.childCount())]
        return out

    # protect from the inventory --------------------------------------------------------------------------
    def protectable(self, item: QTreeWidgetItem | None) -> str | None:
        """The registered, not yet protected machine that ``item`` (a VM or an agent row) stands for."""
        if item is None or item.text(1) not in ("VM", "agent"):
            return None
        machine = str(item.data(0, MACHINE_ROLE) or "")
        row = self.ctx.machines.row(machine) if machine else None
        return machine if row is not None and not row.protected else None

    def _selection_changed(self) -> None:
        item = self.tree.currentItem()
        machine = self.protectable(item)
        self.protect_btn.setEnabled(machine is not None)
        unmatched = item is not None and item.text(1) == "VM" and not item.data(0, MACHINE_ROLE)
        self.guide.setVisible(unmatched)
        if unmatched:
            self.guide.set_control_address(self.ctx.facade.addresses.get("control", ""))
        if item is None or item.text(1) not in ("VM", "agent"):
            self.selection_note.setText("")
        elif unmatched:
            self.selection_note.setText(f"VM {item.text(0)} has no agent: install the Lifeboat agent in it and "
                                        "register it; the appliance matches it to this VM (BIOS UUID, host name, IP).")
        elif machine is not None:
            self.selection_note.setText(f"{item.text(0)} is machine {machine}, registered and not protected yet: "
                                        "Protect… enables protection with a policy.")
        else:
            self.selection_note.setText(f"{item.text(0)}: {item.text(3)}.")

    def _context_menu(self, pos: QPoint) -> None:
        item = self.tree.itemAt(pos)
        if item is None or item.text(1) not in ("VM", "agent"):
            return
        self.tree.setCurrentItem(item)
        menu = QMenu(self.tree)
        act = menu.addAction(theme.icon("protect"), "&Protect…", self.protect_selected)
        act.setEnabled(self.protectable(item) is not None)
        if item.text(1) == "VM" and not item.data(0, MACHINE_ROLE):
            menu.addAction(theme.icon("copy"), "Copy the agent &register command", self.guide.copy)
        self.menu = menu
        menu.aboutToHide.connect(menu.deleteLater)
        menu.aboutToHide.connect(lambda: setattr(self, "menu", None))
        menu.popup(self.tree.viewport().mapToGlobal(pos))

    def protect_selected(self) -> None:
        """Protect… : choose a policy, then the console's protect job (it follows the initial sync)."""
        machine = self.protectable(self.tree.currentItem())
        if machine is None:
            return
        try:
            policies = self.ctx.facade.policies()
        except Exception as exc:
            self.ctx.notes.handle(exc, "reading policies")
            return
        dlg = ProtectDialog(machine, policies, "default", self)
        self.dialog = dlg
        dlg.accepted.connect(lambda: self.ctx.protect(machine, dlg.chosen_policy()))
        dlg.finished.connect(lambda _r: setattr(self, "dialog", None))
        dlg.finished.connect(dlg.deleteLater)
        dlg.open()

    def add_vcenter(self) -> None:
        try:
            pinned = {f"{v['host']}:{v['port']}": str(v.get("pinned_thumbprint") or v.get("thumbprint") or "")
                      for v in self.ctx.facade.vcenters()}
        except Exception as exc:
            self.ctx.notes.handle(exc, "listing the vCenters")
            pinned = {}
        dlg = VCenterDialog(self, pinned)
        self.dialog = dlg

        def done(result: int) -> None:
            self.dialog = None
            if result == QDialog.DialogCode.Accepted:
                p = dlg.page
                ca_pem = p.ca_pem()
                self.ctx.register_vcenter(p.host.text().strip(), p.user.text().strip(), p.password.text(),
                                          "" if ca_pem else p.thumbprint, ca_pem=ca_pem)
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

