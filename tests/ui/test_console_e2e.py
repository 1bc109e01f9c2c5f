"""The console end to end, offscreen, with the real engine in-process and a real agent in the same loop:

wizard → running appliance; a policy edited in the Policies page; an agent registered (in a thread, as
``lifeboat agent register``) and started; protection enabled from the Protected machines page; writes through a real
NBD client (qemu-io) into the agent's export; the live RPO graph updates and marks the new point; resync now (when
the engine has it); a drill over NBD read back with qemu-io, and an exported drill, each cleaned up from the UI;
screenshots of every main view; closing the window stops the appliance.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from PySide6.QtWidgets import QMessageBox

from console.app import ConsoleController
from console.bridge import PointCreated
from console.jobs import FINISHED
from engine.agent.agent import Agent
from engine.agent.register import register
from tests.conftest import free_port, need_tool
from tests.engine.harness import make_disk, run_tool
from tests.ui.helpers import signal, until
from ui.dialogs import FailoverDialog, ProtectDialog
from ui.main_window import MainWindow

# Building the main window takes 0.1–0.3 s; a loaded 2-core CI machine has been seen at 1–2.3 s.
pytestmark = pytest.mark.blocking_threshold(3.0)

MiB = 1 << 20


async def _finish_wizard(ctrl: ConsoleController, tmp_path: Path, screenshot) -> Path:  # type: ignore[no-untyped-def]
    wiz = ctrl.wizard
    assert wiz is not None
    screenshot(wiz, "wizard-1-home")
    wiz.next()
    screenshot(wiz, "wizard-2-vault")
    wiz.next()
    wiz.ports_page.listen.setText("127.0.0.1")
    wiz.ports_page.control.setText(str(free_port()))
    wiz.ports_page.data.setText(str(free_port()))
    screenshot(wiz, "wizard-3-ports")
    wiz.next()
    page = wiz.passphrase_page
    await until(lambda: wiz.pending.passphrase, 30, "the passphrase")
    passfile = tmp_path / "passphrase.txt"
    page.save_to(passfile)
    page.confirm.setChecked(True)
    wiz.next()
    kit = wiz.kit_page
    assert wiz.currentPage() is kit and not kit.isComplete()   # no Finish without a recovery kit
    kit.passphrase.setText("a kit passphrase for the test")
    kit.repeat.setText("a kit passphrase for the test")
    await kit.save_to(tmp_path / "recovery-kit.txt")
    assert kit.isComplete(), kit.status.text()
    screenshot(wiz, "wizard-5-recovery-kit")
    wiz.next()
    screenshot(wiz, "wizard-6-vcenter")
    wiz.next()
    screenshot(wiz, "wizard-7-summary")
    started = asyncio.ensure_future(signal(ctrl.started, timeout=60, what="main window"))
    wiz.accept()  # Finish: commit the home and start the appliance
    await started
    return passfile


async def _job_done(ctrl: ConsoleController, kind: str, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    (job,) = await signal(ctrl.ctx.jobs.finished, lambda j: j.kind == kind, timeout, f"{kind} job")
    assert job.state == FINISHED, f"{job.title}: {job.state} {job.message} {job.error}"
    return job


@pytest.mark.timeout(180)
async def test_console_end_to_end(qtbot, tmp_path: Path, screenshot, console_settings) -> None:
    need_tool("qemu-io")
    home = tmp_path / "appliance"
    ctrl = ConsoleController(home, console_settings)
    agent: Agent | None = None
    try:
        ctrl.begin()
        assert ctrl.wizard is not None, "an uninitialised home opens the wizard"
        passfile = await _finish_wizard(ctrl, tmp_path, screenshot)
        win = ctrl.window
        assert isinstance(win, MainWindow) and ctrl.facade.running
        ctx = ctrl.ctx
        assert not list(tmp_path.glob(".appliance.setup-*")), "the temporary home was renamed into place"
        assert console_settings.get("appliance/home") == str(home)

        # Policies page: a tighter default policy (points every second) through the editor.
        policies = win.show_page("policies")
        await until(lambda: policies.list.count() >= 1, 10, "policies listed")
        policies.edits["crash_interval"].setText("forever")
        assert "not a duration" in policies.fields["crash_interval"].error and not policies.save_btn.isEnabled()
        policies.edits["crash_interval"].setText("1s")
        policies.edits["rpo_threshold"].setText("20s")
        assert policies.edits["history_limit"].text() == "0"            # no limit by default
        policies.edits["history_limit"].setText("lots")
        assert "lots" in policies.fields["history_limit"].error and not policies.save_btn.isEnabled()
        policies.edits["history_limit"].setText("50G")
        policies.save_btn.click()
        saved = {p.name: p for p in ctx.facade.policies()}["default"]
        assert saved.crash_interval == 1.0 and saved.history_limit == 50 << 30

        # An agent registers (blocking HTTPS client: in a thread) and starts in this loop.
        control_port = int(ctx.facade.addresses["control"].rsplit(":", 1)[1])
        agent_home = tmp_path / "agent"
        await asyncio.to_thread(register, agent_home, f"127.0.0.1:{control_port}", passfile, "vm1")
        disk = tmp_path / "sys.img"
        make_disk(disk, 8 * MiB, seed=5)
        agent = Agent(agent_home, {"sys": disk}, ("127.0.0.1", 0))
        await agent.start()
        nbd = f"nbd://127.0.0.1:{agent.nbd_address[1]}/sys"

        machines = win.show_page("machines")
        machines.acts["refresh"].trigger()
        await until(lambda: ctx.machines.row("vm1"), 10, "vm1 listed")
        machines.select("vm1")
        assert machines.acts["protect"].isEnabled() and not machines.acts["failover"].isEnabled()

        # Enable protection from the UI (policy chosen in the dialog); the job follows the initial sync.
        machines.acts["protect"].trigger()
        dlg = machines.dialog
        assert isinstance(dlg, ProtectDialog) and dlg.chosen_policy() == "default"
        screenshot(dlg, "dialog-protect")
        protected = asyncio.ensure_future(_job_done(ctrl, "protect"))
        dlg.accept()
        await protected
        await until(lambda: ctx.machines.row("vm1").state == "protected", 30, "vm1 protected in the table")

        # Write through a real NBD client; the new point arrives and the RPO graph redraws with it.
        graph = machines.detail.graph
        t_write = time.time()
        point_after = asyncio.ensure_future(signal(
            ctx.bridge.point_created, lambda ev: ev.machine == "vm1" and ev.time >= t_write - 0.5, 30,
            "a point after the write"))
        await run_tool("qemu-io", "-f", "raw", nbd, "-c", "write -P 0x5a 1M 1M", "-c", "write -P 0x33 5M 64k")
        (ev,) = await point_after
        assert isinstance(ev, PointCreated)
        samples, points = await signal(graph.updated, lambda s, p: s >= 3 and p >= 1, 30, "RPO graph update")
        assert graph.curve.xData is not None and len(graph.curve.xData) == samples
        assert graph.threshold.value() == 20.0
        ctx.refresh_inventory()
        await until(lambda: machines.detail.facts["Agent"].text() == "connected", 10, "agent shown connected")
        screenshot(win, "main-2-protected-machines")

        # Resync now (issue 3's engine API; skipped with a note when this engine lacks it).
        if ctx.facade.can_resync:
            machines.update_actions()
            assert machines.acts["resync"].isEnabled()
            resynced = asyncio.ensure_future(_job_done(ctrl, "resync", 120))
            machines.acts["resync"].trigger()
            await resynced
            await until(lambda: ctx.facade.machine_status("vm1").state == "protected", 60, "protected again")
        else:
            assert not machines.acts["resync"].isEnabled()
            print("engine has no Appliance.resync yet: the resync step was skipped")

        # Drill over NBD at the point just created; read it back with qemu-io; clean up from the UI.
        machines.update_actions()
        machines.acts["failover"].trigger()
        fo = machines.dialog
        assert isinstance(fo, FailoverDialog)
        fo.select_point(ev.point_id)
        assert fo.table.rowCount() >= 2 and fo.point() == ev.point_id
        screenshot(fo, "dialog-test-failover")
        drilled = asyncio.ensure_future(_job_done(ctrl, "test-failover"))
        fo.accept()
        job = await drilled
        addr = job.result.nbd
        await run_tool("qemu-io", "-r", "-f", "raw", f"nbd://{addr}/sys", "-c", "read -P 0x5a 1M 1M",
                       "-c", "read -P 0x33 5M 64k")
        machines.update_actions()
        assert machines.acts["cleanup"].isEnabled() and not machines.acts["failover"].isEnabled()
        cleaned = asyncio.ensure_future(_job_done(ctrl, "cleanup"))
        machines.acts["cleanup"].trigger()
        box = machines.dialog
        assert isinstance(box, QMessageBox)
        box.button(QMessageBox.StandardButton.Yes).click()
        await cleaned
        assert not ctx.facade.drill_active("vm1") and not (home / "drills" / "vm1").exists()

        # An exported drill: the engine job is followed to its end, then cleaned up (no confirmation).
        console_settings.set("ui/confirm_cleanup", False)
        machines.update_actions()
        machines.acts["failover"].trigger()
        fo = machines.dialog
        assert isinstance(fo, FailoverDialog)
        fo.export.setChecked(True)
        assert fo.f_folder.error
        fo.folder.setText(str(tmp_path / "export"))
        exported = asyncio.ensure_future(_job_done(ctrl, "test-failover"))
        fo.accept()
        job = await exported
        assert (tmp_path / "export" / "sys.img").stat().st_size == 8 * MiB and job.progress == 1.0
        cleaned = asyncio.ensure_future(_job_done(ctrl, "cleanup"))
        machines.update_actions()
        machines.acts["cleanup"].trigger()
        await cleaned
        assert not (tmp_path / "export" / "sys.img").exists()

        # Every main view, with live data.
        await signal(ctx.statuses_applied, lambda names: "vm1" in names, 10, "a status batch")
        for i, key in enumerate(("dashboard", "machines", "infrastructure", "jobs", "alerts", "policies",
                                 "settings")):
            page = win.show_page(key)
            if key == "dashboard":
                page.refresh()
                assert page.tiles["ok"].value.text() in ("0", "1") and page.worst_name.text() == "vm1"
            screenshot(win, f"main-{i + 1}-{key}")
        jobs_page = win.pages["jobs"]
        assert jobs_page.jobs.model().rowCount() >= 5 and ctx.log.rowCount() >= 1

        # Closing the window stops the appliance, then the window really closes. The agent stops first: with
        # an agent connected, ProcessServer.stop() can lose its cancel to a frame arriving in the same loop turn
        # (Python 3.11 asyncio.wait_for) and wait forever (reported to the engine owners).
        await agent.stop()
        agent = None
        closed = asyncio.ensure_future(signal(win.closed, timeout=60, what="window closed"))
        win.close()
        await closed
        assert not ctx.facade.running
        assert console_settings.get("window/page") == 8  # window state remembered (Settings, the last page)
    finally:
        if agent is not None:
            await agent.stop()
        if ctrl.facade.running:
            await ctrl.shutdown()
        for w in (ctrl.window, ctrl.wizard):  # only after a failure: the controller deletes them itself
            if w is not None:
                w._closing = True
                w.close()
                w.deleteLater()
