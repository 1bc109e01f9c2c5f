"""Protect VMs straight from the vCenter inventory (issue 12, item 5), offscreen, with the real engine in-process,
vcsim over real TLS and a real agent whose HELLO identity carries one simulated VM's BIOS UUID (how the appliance
matches an agent to its VM, docs/VSPHERE.md):

- the matched VM reads "registered" and gets Protect… (button and context menu) → the policy dialog → the protect
  job → the VM reads "protected";
- a VM with no agent says how to install and register one, with the copyable command naming this appliance's
  control address; Protect… stays disabled for it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QTreeWidgetItem

from console.app import ConsoleController
from console.jobs import FINISHED
from engine.agent.agent import Agent
from engine.agent.register import register
from engine.api import init_home
from tests.conftest import free_port
from tests.engine.harness import make_disk
from tests.ui.helpers import signal, until
from tests.ui.test_wizard_vcenter import close_leftovers, sim_thumbprint
from ui.dialogs import ProtectDialog

pytestmark = [pytest.mark.timeout(150), pytest.mark.blocking_threshold(3.0)]

VM = "DC0_C0_RP0_VM1"


def bios_uuid(sim: Any, name: str) -> str:
    from pyVmomi import vim
    si = sim.client()
    try:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        try:
            return next(vm.config.uuid for vm in view.view if vm.name == name)
        finally:
            view.Destroy()
    finally:
        si.content.sessionManager.Logout()


def vm_item(page: Any, name: str) -> QTreeWidgetItem | None:
    items = page.tree.findItems(name, Qt.MatchFlag.MatchExactly | Qt.MatchFlag.MatchRecursive)
    return next((i for i in items if i.text(1) == "VM"), None)


async def test_protect_a_vm_from_the_inventory(qtbot, tmp_path: Path, vcsim, screenshot, console_settings) -> None:
    sim = await asyncio.to_thread(vcsim)
    home = tmp_path / "appliance"
    control = free_port()
    await asyncio.to_thread(init_home, home, control_port=control, data_port=free_port(), listen="127.0.0.1")
    ctrl = ConsoleController(home, console_settings)
    agent: Agent | None = None
    try:
        started = signal(ctrl.started, timeout=60, what="the main window")
        ctrl.begin()
        await started
        ctx, win = ctrl.ctx, ctrl.window
        assert win is not None and ctx.facade.running

        # the vCenter, trusted by the thumbprint read here independently
        thumb = await asyncio.to_thread(sim_thumbprint, sim)
        synced = signal(ctx.bridge.other_event, lambda ev: type(ev).__name__ == "InventorySynced", 60, "inventory")
        registered = signal(ctx.jobs.finished, lambda j: j.kind == "vcenter", 60, "registered")
        ctx.register_vcenter(f"{sim.host}:{sim.port}", sim.user, sim.password, thumb)
        (job,) = await registered
        assert job.state == FINISHED, job.error
        await synced

        # an agent whose identity is the VM's BIOS UUID registers and connects: the appliance matches it
        bios = await asyncio.to_thread(bios_uuid, sim, VM)
        await asyncio.to_thread(register, tmp_path / "agent", f"127.0.0.1:{control}", home / "passphrase.txt", "web01")
        disk = tmp_path / "sys.img"
        make_disk(disk, 2 << 20, seed=4)
        matched = signal(ctx.bridge.other_event, lambda ev: type(ev).__name__ == "MachineMatched", 60, "matched")
        agent = Agent(tmp_path / "agent", {"sys": disk}, ("127.0.0.1", 0),
                      identity={"bios_uuid": bios.upper(), "hostname": "web01", "ips": []})
        await agent.start()
        (ev,) = await matched
        assert (ev.machine, ev.vm, ev.by) == ("web01", VM, "bios-uuid")

        infra = win.show_page("infrastructure")
        ctx.refresh_inventory()
        infra.refresh()
        await until(lambda: (it := vm_item(infra, VM)) is not None and it.text(3) == "registered", 20,
                    "the VM shown registered")
        infra.tree.expandAll()

        # a VM with no agent: how to install one, with this appliance's address; nothing to protect yet
        lonely = vm_item(infra, "DC0_H0_VM0")
        assert lonely is not None and lonely.text(3) == "no agent"
        infra.tree.setCurrentItem(lonely)
        assert not infra.protect_btn.isEnabled() and infra.guide.isVisible()
        assert f"--appliance 127.0.0.1:{control} " in infra.guide.command.text()
        assert "has no agent: install the Lifeboat agent in it" in infra.selection_note.text()
        infra._context_menu(infra.tree.visualItemRect(lonely).center())
        menu = infra.menu
        assert menu is not None
        acts = {a.text(): a for a in menu.actions()}
        assert not acts["&Protect…"].isEnabled() and "Copy the agent &register command" in acts
        menu.close()
        screenshot(win, "infrastructure-vm-without-agent")

        # the matched VM: Protect… (context menu) → policy → the protect job → protected
        item = vm_item(infra, VM)
        infra.tree.setCurrentItem(item)
        assert infra.protect_btn.isEnabled() and not infra.guide.isVisible()
        assert "is machine web01, registered and not protected yet" in infra.selection_note.text()
        infra._context_menu(infra.tree.visualItemRect(item).center())
        assert infra.menu is not None
        protect = next(a for a in infra.menu.actions() if a.text() == "&Protect…")
        assert protect.isEnabled()
        protect.trigger()   # (the menu closes itself)
        dlg = infra.dialog
        assert isinstance(dlg, ProtectDialog) and dlg.machine == "web01" and dlg.chosen_policy() == "default"
        screenshot(dlg, "infrastructure-protect-dialog")
        done = signal(ctx.jobs.finished, lambda j: j.kind == "protect", 60, "the protect job")
        dlg.accept()
        (pj,) = await done
        assert pj.state == FINISHED and pj.machine == "web01", (pj.state, pj.message, pj.error)
        assert ctx.facade.machine_status("web01").state == "protected"
        await until(lambda: (it := vm_item(infra, VM)) is not None and it.text(3).startswith("protected"), 20,
                    "the VM shown protected")
        infra.tree.setCurrentItem(vm_item(infra, VM))
        assert not infra.protect_btn.isEnabled(), "already protected"
        assert not ctx.notes.crashes
        screenshot(win, "infrastructure-vm-protected")
    finally:
        if agent is not None:
            await agent.stop()
        if ctrl.facade.running:
            await ctrl.shutdown()
        close_leftovers(ctrl)
