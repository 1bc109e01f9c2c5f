"""Recovery driven from the console on real boots. (1) A real recovery-plan run, offscreen, on the local libvirt recovery host (one real boot):
the engine in-process, an agent serving a copy of the bootable test image; the plan built on the page, run for
real with a point of the machine's own (a bookmark, not the latest) after a confirmation that names the machine,
the host and the point; the run stops at its manual action and the page shows the instruction with Resume; resumed
from the console (the operator recorded in the job and the DR report), the VM boots from the chosen point; "Open
report" would open the report's HTML file; the commit, confirmed, keeps the machine (standalone images), and the
machine page shows it committed with no failover action left to take. (2) The machine page alone: Failover
(dialog, then a confirmation naming machine, host and point), Change point to a bookmark (the VM restarts from it),
and Cancel (confirmed): the VM is gone and the machine protected again."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PySide6.QtCore import QUrl
from PySide6.QtWidgets import QMessageBox

from console.context import ConsoleContext
from console.engine_facade import EngineFacade, Policy
from console.settings import ConsoleSettings
from engine.agent.agent import Agent
from engine.agent.register import register
from engine.api import init_home
from tests.conftest import free_port, need_tool
from tests.engine.recovery.conftest import boot_disk, recovery_host  # noqa: F401  (fixtures)
from tests.ui.helpers import until
from ui.main_window import MainWindow
from ui.pages.plans import PlansPage
from ui.recovery_dialogs import ActionDialog, MachineFailoverDialog, PointDialog

pytestmark = pytest.mark.blocking_threshold(3.0)
INSTRUCTION = "Switch the DNS record of the shop to the recovery site"


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_plan_run_manual_resume_report_and_commit_from_the_console(
        tmp_path: Path, recovery_host: str, boot_disk: Path, screenshot) -> None:  # noqa: F811
    need_tool("qemu-system-x86_64")
    home = tmp_path / "appliance"
    init_home(home, control_port=free_port(), data_port=free_port(), listen="127.0.0.1")
    ctx = ConsoleContext(EngineFacade(home, listen="127.0.0.1"), ConsoleSettings.load(tmp_path / "console.ini"))
    await ctx.start_appliance()
    win = MainWindow(ctx)
    win.resize(1280, 900)
    win.show()
    tag = os.getpid()
    m, hostname = f"cb{tag}", f"crh{tag}"
    agent: Agent | None = None
    try:
        fac = ctx.facade
        await asyncio.to_thread(register, tmp_path / "agent", fac.addresses["control"], home / "passphrase.txt", m)
        disk = tmp_path / "d0.img"
        await asyncio.to_thread(shutil.copyfile, boot_disk, disk)
        agent = Agent(tmp_path / "agent", {"d0": disk}, ("127.0.0.1", 0))
        await agent.start()
        fac.save_policy(Policy("default", crash_interval=1.0))
        await fac.protect(m, None)
        await until(lambda: fac.machine_status(m).state == "protected", 90, "the machine protected")
        fac.request_bookmark(m, "ui-pick")
        await until(lambda: any(p.tag == "ui-pick" for p in fac.points(m)), 30, "the bookmark")
        tagged = next(p for p in fac.points(m) if p.tag == "ui-pick")
        await fac.add_recovery_host(hostname, uri=recovery_host, networks=["lan=user", "iso=isolated"])
        fac.recovery_settings(m, {"cpus": 1, "memory_mib": 256, "nics": {"eth0": "lan"},
                                  "ips": {"eth0": "192.0.2.21/24"}, "boot_pattern": "LIFEBOAT-BOOTED",
                                  "boot_timeout": 90.0})
        ctx.refresh_inventory()

        # build: the machine into group 1, a manual action before it
        page = win.show_page("plans")
        assert isinstance(page, PlansPage)
        page.new_name.setText("shop")
        page.new_btn.click()
        await until(lambda: page.available.names() == [m], 10, "the machine offered")
        page.available.item(0).setSelected(True)
        page.add_btn.click()
        dlg = page.open_action_dialog(1)
        assert isinstance(dlg, ActionDialog)
        dlg.manual.setPlainText(INSTRUCTION)
        dlg.buttons.button(dlg.buttons.StandardButton.Ok).click()
        await until(lambda: page.dialog is None, 5, "the action added")
        assert ctx.recovery.plan is not None and ctx.recovery.plan.valid

        # run for real, at the machine's bookmark: the confirmation names machine, host and point
        page.tabs.setCurrentIndex(1)
        page.host.setCurrentIndex(page.host.findData(hostname))
        page.test.setChecked(False)
        assert page.run_btn.text() == "Run &failover…"
        page.custom.setChecked(True)
        combo = page.point_combo_of(m)
        combo.setCurrentIndex(combo.findData(tagged.id))
        page.run_btn.click()
        box = page.dialog
        assert isinstance(box, QMessageBox)
        assert m in box.text() + box.informativeText() and hostname in box.text()
        assert f"{m}: {tagged.id}" in box.informativeText()
        screenshot(box, "plans-5-confirm-real-run")
        box.button(QMessageBox.StandardButton.Yes).click()

        # it waits for the operator at the manual action, before anything boots
        await until(lambda: ctx.recovery.run is not None and ctx.recovery.run.prompt, 30, "the manual action")
        assert not page.prompt.isHidden() and INSTRUCTION in page.prompt_text.text()
        assert page.resume_btn.isVisibleTo(page) and not page.skip_btn.isVisibleTo(page)
        assert fac.failover_state(m) is None
        screenshot(win, "plans-6-run-waiting-for-operator")
        page.resume_btn.click()

        # the VM boots; the run view follows it to the end
        await until(lambda: (st := ctx.recovery.run.machine(m)) is not None and st.state == "running", 30,
                    "the machine's failover started")
        await until(lambda: ctx.recovery.run.state == "succeeded", 180, "the run to end")
        rs = ctx.recovery.run
        st = rs.machine(m)
        assert st is not None and st.state == "succeeded" and st.point == tagged.id and st.boot_progress == 1.0
        assert rs.points == {m: tagged.id} and page.prompt.isHidden()
        vm = fac.failover_state(m)
        assert vm is not None and vm["state"] == "booted" and vm["point"] == tagged.id
        job = fac.plan_run_job("shop")
        assert job is not None and job["result"]["actions"]["g1-before-1"]["resumed_by"].endswith("(console)")

        # the DR report opens in the browser: the URL of its HTML file
        await until(lambda: page.report_btn.isEnabled(), 20, "the DR report")
        opened: list[QUrl] = []
        page.open_url = opened.append
        page.report_btn.click()
        [url] = opened
        report = Path(url.toLocalFile())
        assert url.isLocalFile() and report.name == f"{rs.run.id}.html" and report.parent == home / "reports"
        text = report.read_text()
        assert m in text and tagged.id in text and "(console)" in text
        screenshot(win, "plans-7-run-booted")

        # commit, confirmed: the machine is kept
        ctx.recovery.commit_stop_timeout = 5.0   # the test guest ignores ACPI shutdown: power it off soon
        assert page.commit_btn.isEnabled() and not page.cleanup_btn.isEnabled()
        page.commit_btn.click()
        box = page.dialog
        assert isinstance(box, QMessageBox)
        assert m in box.informativeText() and tagged.id in box.informativeText() and hostname in box.text()
        box.button(QMessageBox.StandardButton.Yes).click()
        await until(lambda: (fac.failover_state(m) or {}).get("state") == "committed", 180, "the commit")
        machines = win.show_page("machines")
        ctx.refresh_inventory()
        machines.select(m)
        detail = machines.detail
        await until(lambda: detail.failover_label.text().startswith("committed"), 10, "the machine page")
        assert hostname in detail.failover_label.text() and tagged.id in detail.failover_label.text()
        assert not any(b.isEnabled() for b in detail.fo_buttons.values())
        screenshot(win, "plans-8-machine-committed")
        assert not ctx.notes.crashes
    finally:
        if agent is not None:
            await agent.stop()
        await ctx.stop_appliance()
        win.close()
        win.deleteLater()
        subprocess.run(["virsh", "-c", recovery_host, "destroy", f"lifeboat-{m}"], capture_output=True)
        subprocess.run(["virsh", "-c", recovery_host, "undefine", f"lifeboat-{m}"], capture_output=True)
        for net in ("lan", "iso"):
            subprocess.run(["virsh", "-c", recovery_host, "net-destroy", f"lifeboat-{hostname}-{net}"],
                           capture_output=True)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_machine_page_failover_change_point_and_cancel(
        tmp_path: Path, recovery_host: str, boot_disk: Path, screenshot) -> None:  # noqa: F811
    need_tool("qemu-system-x86_64")
    home = tmp_path / "appliance"
    init_home(home, control_port=free_port(), data_port=free_port(), listen="127.0.0.1")
    ctx = ConsoleContext(EngineFacade(home, listen="127.0.0.1"), ConsoleSettings.load(tmp_path / "console.ini"))
    await ctx.start_appliance()
    win = MainWindow(ctx)
    win.resize(1280, 900)
    win.show()
    tag = os.getpid()
    m, hostname = f"cm{tag}", f"cmh{tag}"
    agent: Agent | None = None
    try:
        fac = ctx.facade
        await asyncio.to_thread(register, tmp_path / "agent", fac.addresses["control"], home / "passphrase.txt", m)
        disk = tmp_path / "d0.img"
        await asyncio.to_thread(shutil.copyfile, boot_disk, disk)
        agent = Agent(tmp_path / "agent", {"d0": disk}, ("127.0.0.1", 0))
        await agent.start()
        fac.save_policy(Policy("default", crash_interval=1.0))
        await fac.protect(m, None)
        await until(lambda: fac.machine_status(m).state == "protected", 90, "the machine protected")
        fac.request_bookmark(m, "before-change")
        await until(lambda: any(p.tag == "before-change" for p in fac.points(m)), 30, "the bookmark")
        tagged = next(p for p in fac.points(m) if p.tag == "before-change")
        await fac.add_recovery_host(hostname, uri=recovery_host, networks=["lan=user"])
        fac.recovery_settings(m, {"cpus": 1, "memory_mib": 256, "nics": {"eth0": "lan"},
                                  "boot_pattern": "LIFEBOAT-BOOTED", "boot_timeout": 90.0})
        machines = win.show_page("machines")
        ctx.refresh_inventory()
        machines.select(m)
        detail = machines.detail
        b = detail.fo_buttons
        await until(lambda: b["failover"].isEnabled(), 10, "Failover offered")
        assert not b["change"].isEnabled() and not b["commit"].isEnabled() and not b["cancel"].isEnabled()

        # Failover: the dialog, then the confirmation naming machine, host and point
        b["failover"].click()
        dlg = detail.dialog
        assert isinstance(dlg, MachineFailoverDialog) and dlg.host.currentData() == hostname
        assert dlg.point.currentData() == "latest"
        dlg.buttons.button(dlg.buttons.StandardButton.Ok).click()
        await until(lambda: isinstance(detail.dialog, QMessageBox), 5, "the confirmation")
        box = detail.dialog
        assert isinstance(box, QMessageBox)
        assert m in box.text() and hostname in box.text() and "Latest" in box.informativeText()
        screenshot(box, "machine-failover-confirm")
        box.button(QMessageBox.StandardButton.Yes).click()
        await until(lambda: (fac.failover_state(m) or {}).get("state") == "booted", 150, "the VM booted")
        await until(lambda: detail.failover_label.text().startswith("booted"), 10, "the machine page")
        assert b["change"].isEnabled() and b["commit"].isEnabled() and b["cancel"].isEnabled()
        assert not b["failover"].isEnabled()
        screenshot(win, "machine-failed-over")

        # Change point to the bookmark: the VM restarts from it
        b["change"].click()
        pd = detail.dialog
        assert isinstance(pd, PointDialog)
        pd.select_point(tagged.id)
        pd.buttons.button(pd.buttons.StandardButton.Ok).click()
        await until(lambda: (st := fac.failover_state(m)) is not None and st["point"] == tagged.id
                    and st["state"] == "booted", 150, "the VM restarted at the bookmark")
        await until(lambda: tagged.id in detail.failover_label.text() and b["cancel"].isEnabled(), 10,
                    "the machine page")

        # Cancel, confirmed: the VM is removed, the machine protected again
        b["cancel"].click()
        box = detail.dialog
        assert isinstance(box, QMessageBox) and m in box.text() and hostname in box.text()
        box.button(QMessageBox.StandardButton.Yes).click()
        await until(lambda: fac.failover_state(m) is None, 60, "the failover cancelled")
        await until(lambda: detail.failover_label.text() == "not failed over" and b["failover"].isEnabled(), 10,
                    "the machine page")
        assert fac.machine_status(m).state == "protected"
        assert subprocess.run(["virsh", "-c", recovery_host, "domstate", f"lifeboat-{m}"],
                              capture_output=True).returncode != 0
        assert not ctx.notes.crashes
    finally:
        if agent is not None:
            await agent.stop()
        await ctx.stop_appliance()
        win.close()
        win.deleteLater()
        subprocess.run(["virsh", "-c", recovery_host, "destroy", f"lifeboat-{m}"], capture_output=True)
        subprocess.run(["virsh", "-c", recovery_host, "undefine", f"lifeboat-{m}"], capture_output=True)
        subprocess.run(["virsh", "-c", recovery_host, "net-destroy", f"lifeboat-{hostname}-lan"], capture_output=True)
