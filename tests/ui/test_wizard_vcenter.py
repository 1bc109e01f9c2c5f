"""The first-run wizard's vCenter step against a real vCenter API (vcsim, real TLS, real pyVmomi), offscreen.

Happy path: home, ports, passphrase, then the simulator's address, user and password; the certificate thumbprint the
wizard shows is the SHA-256 of the simulator's certificate (computed here independently); accepted; Finish
initialises and starts the appliance in-process and registers the vCenter. The vCenter is then listed by the engine
and the facade, its password is in the OS keyring and not in the state DB's bytes, and the Infrastructure page shows
the simulator's VMs (and follows a power change).

Wrong password: the message is shown next to the password field and the wizard does not move on; a password that
stops working between Next and Finish takes the operator back to that field and leaves no home behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import ssl
from pathlib import Path
from typing import Any

import keyring
import pytest
from PySide6.QtWidgets import QTreeWidgetItem, QWizard

from console.app import ConsoleController
from console.jobs import FINISHED
from tests.conftest import free_port
from tests.ui.helpers import signal
from ui.main_window import MainWindow
from ui.wizard import FirstRunWizard
from ui.wizard_pages import VCenterPage

pytestmark = pytest.mark.timeout(180)


def sim_thumbprint(sim: Any) -> str:
    """SHA-256 of the certificate the simulator presents, read with the standard library only. Blocking."""
    der = ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate((sim.host, sim.port)))
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, 64, 2))


def sim_vms(sim: Any) -> dict[str, str]:
    """VM name → power state, as the simulator itself says (ground truth, own pyVmomi session). Blocking."""
    from pyVmomi import vim
    si = sim.client()
    try:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        try:
            return {vm.name: str(vm.runtime.powerState) for vm in view.view}
        finally:
            view.Destroy()
    finally:
        si.content.sessionManager.Logout()


def power_off(sim: Any, name: str) -> None:
    from pyVim.task import WaitForTask
    from pyVmomi import vim
    si = sim.client()
    try:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        (vm,) = [v for v in view.view if v.name == name]
        WaitForTask(vm.PowerOffVM_Task())
        view.Destroy()
    finally:
        si.content.sessionManager.Logout()


def tree_vms(page: Any) -> dict[str, str]:
    """VM name → power column of the Infrastructure tree."""
    out: dict[str, str] = {}

    def walk(item: QTreeWidgetItem) -> None:
        if item.text(1) == "VM":
            out[item.text(0)] = item.text(2)
        for i in range(item.childCount()):
            walk(item.child(i))
    for i in range(page.tree.topLevelItemCount()):
        walk(page.tree.topLevelItem(i))
    return out


async def refreshed(page: Any, cond: Any, what: str, timeout: float = 30.0) -> None:
    """Await the Infrastructure page's own refreshes (its debounce timer) until ``cond()`` holds."""
    while not cond():
        await signal(page._pending.timeout, timeout=timeout, what=what)


async def to_vcenter_page(wiz: FirstRunWizard, home: Path, tmp_path: Path) -> VCenterPage:
    """Home, vault (the default), ports, passphrase (saved and confirmed) → the vCenter page."""
    assert wiz.currentPage() is wiz.home_page
    wiz.home_page.home.setText(str(home))
    assert wiz.home_page.isComplete()
    wiz.next()
    wiz.next()
    wiz.ports_page.listen.setText("127.0.0.1")
    wiz.ports_page.control.setText(str(free_port()))
    wiz.ports_page.data.setText(str(free_port()))
    assert wiz.ports_page.isComplete()
    wiz.next()
    page = wiz.passphrase_page
    if not wiz.pending.passphrase:
        await signal(page.completeChanged, lambda: bool(wiz.pending.passphrase), what="the passphrase")
    page.save_to(tmp_path / "passphrase.txt")
    page.confirm.setChecked(True)
    wiz.next()
    kit = wiz.kit_page
    kit.passphrase.setText("a kit passphrase for the test")
    kit.repeat.setText("a kit passphrase for the test")
    await kit.save_to(tmp_path / "recovery-kit.txt")
    wiz.next()
    vc = wiz.vcenter_page
    assert wiz.currentPage() is vc and vc.supported, "this engine build has vCenter support"
    return vc


async def fetch_and_accept(vc: VCenterPage, sim: Any, password: str) -> str:
    vc.enable.setChecked(True)
    vc.host.setText(f"{sim.host}:{sim.port}")
    vc.user.setText(sim.user)
    vc.password.setText(password)
    assert not vc.isComplete(), "the thumbprint must be fetched and accepted first"
    expected = await asyncio.to_thread(sim_thumbprint, sim)
    vc.fetch.click()
    await signal(vc.completeChanged, lambda: bool(vc.thumbprint), 20, "the certificate thumbprint")
    assert vc.thumbprint == expected, (vc.thumbprint, expected)
    assert vc.thumb.text().replace("\n", ":") == expected
    assert not vc.isComplete() and "Accept the thumbprint" in vc.f_thumb.error
    vc.accept_thumb.setChecked(True)
    assert vc.isComplete()
    return expected


async def leave_vcenter_page(wiz: FirstRunWizard) -> None:
    """Next on the vCenter page; resolves once the wizard shows the next page."""
    moved = signal(wiz.currentIdChanged, timeout=60, what="the summary page")
    wiz.next()
    await moved
    assert wiz.currentPage() is wiz.summary_page


def close_leftovers(ctrl: ConsoleController) -> None:
    for w in (ctrl.window, ctrl.wizard):  # only after a failure: the controller deletes them itself
        if w is not None:
            w._closing = True  # type: ignore[attr-defined]
            w.close()
            w.deleteLater()


async def test_wizard_registers_vcsim(qtbot, tmp_path: Path, vcsim, screenshot, console_settings) -> None:
    password = "Lb-vc-" + secrets.token_hex(10)
    sim = await asyncio.to_thread(vcsim, password=password)
    truth = await asyncio.to_thread(sim_vms, sim)
    assert len(truth) >= 4, truth
    home = tmp_path / "appliance"
    ctrl = ConsoleController(home, console_settings)
    try:
        ctrl.begin()
        wiz = ctrl.wizard
        assert isinstance(wiz, FirstRunWizard)
        vc = await to_vcenter_page(wiz, home, tmp_path)
        thumb = await fetch_and_accept(vc, sim, password)
        screenshot(wiz, "wizard-vcenter-vcsim-thumbprint")
        await leave_vcenter_page(wiz)
        summary = wiz.summary_page.summary.text()
        assert f"{sim.host}:{sim.port} (thumbprint accepted)" in summary and password not in summary

        # Finish: the home is committed, the appliance starts in this loop, the vCenter is registered (a job).
        ctx = ctrl.ctx
        registered = signal(ctx.jobs.finished, lambda j: j.kind == "vcenter", 60, "the vCenter registration job")
        synced = signal(ctx.bridge.other_event, lambda ev: type(ev).__name__ == "InventorySynced", 60,
                        "the first inventory read")
        started = signal(ctrl.started, timeout=60, what="the main window")
        wiz.button(QWizard.WizardButton.FinishButton).click()
        await started
        (job,) = await registered
        assert job.state == FINISHED, f"{job.title}: {job.state} {job.message} {job.error}"
        (ev,) = await synced
        assert ev.vcenter == sim.host and ev.vms == len(truth)
        win = ctrl.window
        assert isinstance(win, MainWindow) and ctx.facade.running and ctx.facade.initialised
        assert not list(tmp_path.glob(".appliance.setup-*")), "the temporary home was renamed into place"

        # Registered, pinned to the accepted thumbprint, connected: through the engine and through the facade.
        app = ctx.facade.app
        assert app is not None
        (entry,) = app.vsphere.list()
        assert (entry["host"], entry["port"], entry["user"]) == (sim.host, sim.port, sim.user)
        assert entry["trust"] == "thumbprint" and entry["thumbprint"] == thumb and entry["status"] == "connected"
        assert [v["host"] for v in ctx.facade.vcenters()] == [sim.host]
        # The password is in the OS keyring (and only there: the DB bytes are checked after shutdown).
        assert keyring.get_password("lifeboat", f"vcenter/{sim.host}") == password

        # The Infrastructure page shows the simulator's VMs under the vCenter, with their power state.
        infra = win.show_page("infrastructure")
        await refreshed(infra, lambda: tree_vms(infra) == truth, "the VMs listed")
        top = infra.tree.topLevelItem(0)
        assert (top.text(0), top.text(1), top.text(3)) == (sim.host, "vCenter", "connected")
        assert infra.add_btn.isEnabled()
        infra.tree.expandAll()  # hosts start collapsed: show their VMs in the screenshot
        screenshot(win, "main-infrastructure-vcsim")

        # A change in vCenter reaches the page through the engine's events, without a manual refresh.
        name = sorted(n for n, p in truth.items() if p == "poweredOn")[0]
        changed = signal(ctx.bridge.other_event, lambda e: type(e).__name__ == "VMPowerChanged" and e.name == name,
                         30, f"{name} powered off")
        await asyncio.to_thread(power_off, sim, name)
        await changed
        await refreshed(infra, lambda: tree_vms(infra).get(name) == "poweredOff", f"{name} shown powered off")

        closed = signal(win.closed, timeout=60, what="window closed")
        win.close()
        await closed
        assert not ctx.facade.running
    finally:
        if ctrl.facade.running:
            await ctrl.shutdown()
        close_leftovers(ctrl)
    # The database is closed (WAL checkpointed or left beside it): the password is in none of the home's files.
    needle = password.encode()
    db = b"".join(p.read_bytes() for p in home.glob("state.db*"))
    assert b"vsphere_endpoints" in db and sim.host.encode() in db and needle not in db
    assert [p for p in home.rglob("*") if p.is_file() and needle in p.read_bytes()] == []


async def test_wizard_wrong_vcenter_password(qtbot, tmp_path: Path, vcsim, server_pki, screenshot,
                                             console_settings) -> None:
    right, changed = "Lb-vc-" + secrets.token_hex(10), "Lb-vc-" + secrets.token_hex(10)
    listen = f"127.0.0.1:{free_port()}"
    tls = {"cert": server_pki["cert"], "key": server_pki["key"]}  # the same certificate across a restart
    sim = await asyncio.to_thread(vcsim, listen=listen, password=right, **tls)
    home = tmp_path / "appliance"
    secret = f"vcenter/{sim.host}"
    ctrl = ConsoleController(home, console_settings)
    try:
        ctrl.begin()
        wiz = ctrl.wizard
        assert isinstance(wiz, FirstRunWizard)
        vc = await to_vcenter_page(wiz, home, tmp_path)
        vc_id = wiz.currentId()
        appliance_id = wiz.pending.appliance_id
        assert appliance_id and keyring.get_password("lifeboat", f"vault-key/{appliance_id}")

        # Nothing listens at the address: the reason stays next to the address (until it changes).
        vc.enable.setChecked(True)
        vc.host.setText(f"127.0.0.1:{free_port()}")
        unreachable = signal(vc.completeChanged, lambda: bool(vc.f_host.error), 20, "the address refused")
        vc.fetch.click()
        await unreachable
        assert vc.f_host.error.startswith("Cannot reach 127.0.0.1:") and not vc.thumbprint and not vc.isComplete()

        # A wrong password: Next asks vCenter first; the refusal is shown next to the password, and Next stays
        # disabled until the answers change.
        await fetch_and_accept(vc, sim, "not-the-password")
        assert vc.f_host.error == ""
        refused = signal(vc.completeChanged, lambda: bool(vc.f_pass.error), 30, "the login refused")
        wiz.next()
        assert wiz.currentPage() is vc, "Next waits for vCenter's answer"
        await refused
        assert vc.f_pass.error == "The vCenter refused the login: check the user name and password."
        assert wiz.currentPage() is vc and not vc.isComplete()
        assert not wiz.button(QWizard.WizardButton.NextButton).isEnabled()
        assert vc.f_user.error == "" and vc.f_host.error == "" and vc.f_thumb.error == ""
        screenshot(wiz, "wizard-vcenter-wrong-password")
        assert not home.exists() and keyring.get_password("lifeboat", secret) is None

        # The right password: the message goes as soon as the password changes; Next logs in and moves on.
        vc.password.setText(right)
        assert vc.f_pass.error == "" and vc.isComplete()
        await leave_vcenter_page(wiz)

        # The vCenter's password changes before Finish (same address, same certificate): Finish checks the login
        # again, goes back to the vCenter page with the message next to the password, and commits nothing.
        await asyncio.to_thread(sim.stop)
        sim2 = await asyncio.to_thread(vcsim, listen=listen, password=changed, **tls)
        assert (sim2.host, sim2.port) == (sim.host, sim.port)
        back = signal(wiz.currentIdChanged, lambda i: i == vc_id, 60, "back to the vCenter page")
        wiz.button(QWizard.WizardButton.FinishButton).click()
        await back
        assert "refused the login" in vc.f_pass.error and not vc.isComplete()
        assert ctrl.window is None and not ctrl.facade.running
        assert not home.exists() and keyring.get_password("lifeboat", secret) is None
        assert len(list(tmp_path.glob(".appliance.setup-*"))) == 1, "still the hidden, uncommitted home"
        screenshot(wiz, "wizard-vcenter-password-changed")

        # Cancel: nothing is left, neither the hidden home nor any keyring entry.
        closed = signal(wiz.finished, timeout=30, what="wizard closed")
        wiz.button(QWizard.WizardButton.CancelButton).click()
        await closed
        assert not home.exists() and not list(tmp_path.glob(".appliance.setup-*"))
        assert keyring.get_password("lifeboat", f"vault-key/{appliance_id}") is None
        assert keyring.get_password("lifeboat", secret) is None
        assert not ctrl.facade.running
    finally:
        if ctrl.facade.running:
            await ctrl.shutdown()
        close_leftovers(ctrl)
