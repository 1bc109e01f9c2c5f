"""Main window and pages over the synthetic engine (500 machines, no appliance): live table, keyboard navigation,
window state remembered, notifications and the crash dialog, infrastructure from a vCenter snapshot, jobs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QMainWindow

from console.context import ConsoleContext
from console.errors import UserError
from console.settings import ConsoleSettings
from console.synthetic import SyntheticFacade
from tests.ui.helpers import signal, until
from ui.main_window import MainWindow
from ui.notifications import CrashDialog

# Building the main window takes 0.1–0.3 s; a loaded 2-core CI machine has been seen at 1–2.3 s.
pytestmark = pytest.mark.blocking_threshold(3.0)


async def _window(tmp_path: Path, n: int = 500) -> tuple[MainWindow, ConsoleContext, SyntheticFacade]:
    facade = SyntheticFacade(n, registered=1, ticker=False)
    ctx = ConsoleContext(facade, ConsoleSettings.load(tmp_path / "console.ini"))
    await ctx.start_appliance()
    win = MainWindow(ctx)
    win.show()
    return win, ctx, facade


async def _close(win: MainWindow, ctx: ConsoleContext) -> None:
    await ctx.stop_appliance()
    win.close()
    win.deleteLater()


async def test_live_table_keyboard_and_window_state(tmp_path: Path, screenshot) -> None:
    win, ctx, facade = await _window(tmp_path)
    try:
        assert ctx.machines.rowCount() == 501  # 500 protected + 1 registered, from the first inventory
        batch = asyncio.ensure_future(signal(ctx.statuses_applied, lambda names: len(names) == 500))
        facade.tick()
        await batch
        machines = win.show_page("machines")
        machines.select("vm-0007")
        assert machines.detail.title.text() == "vm-0007" and machines.detail.disks.rowCount() == 2
        assert machines.acts["failover"].isEnabled() and not machines.acts["protect"].isEnabled()
        machines.filter.setText("vm-00")
        assert machines.proxy.rowCount() == 100
        machines.filter.setText("")
        live_from = time.time()
        for _ in range(3):
            facade.tick()
            ctx.bridge.flush()
        machines.detail.redraw_graph()
        t, _v = ctx.history.series("vm-0007")
        # the appliance's kept hour (seeded at selection) and the 4 samples this console saw
        assert machines.detail.graph.samples == len(t) > 300 and int((t >= live_from).sum()) == 3

        # Keyboard: the navigation list has focus and arrows move between pages; Ctrl+N jumps.
        win.show_page(0)
        win.nav.setFocus()
        QTest.keyClick(win.nav, Qt.Key.Key_Down)
        assert win.stack.currentWidget() is win.pages["machines"]
        QTest.keyClick(win.nav, Qt.Key.Key_End)
        assert win.stack.currentWidget() is win.pages["settings"]
        for act in win.actions():
            if act.shortcut().toString() == "Ctrl+4":
                act.trigger()
        assert win.stack.currentWidget() is win.pages["jobs"]
        win.resize(1000, 700)
        screenshot(win, "synthetic-500-jobs")
        win.show_page("dashboard")
        screenshot(win, "synthetic-500-dashboard")
        win.show_page("machines")
        screenshot(win, "synthetic-500-machines")
    finally:
        await _close(win, ctx)  # closing saves the window state
    again, ctx2, _f = await _window(tmp_path, 3)
    try:
        assert again.stack.currentWidget() is again.pages["machines"]
        # The size Qt itself restores for a 1000x700 window on this platform, measured in the same run (the offscreen
        # platform takes its frame off the width once more: 1000 -> 957); the console must restore exactly that.
        probe = QMainWindow()
        probe.setMinimumSize(again.minimumSize())
        probe.resize(1000, 700)
        saved = probe.saveGeometry()
        probe2 = QMainWindow()
        probe2.setMinimumSize(again.minimumSize())
        probe2.restoreGeometry(saved)
        assert again.size() == probe2.size(), (again.size(), probe2.size())
        assert again.size().height() == 700
    finally:
        await _close(again, ctx2)


async def test_notifications_and_crash_dialog(tmp_path: Path) -> None:
    win, ctx, facade = await _window(tmp_path, 3)
    try:
        ctx.notes.handle(UserError("the vault is full", code="LB_STORAGE", advice="Free space in the vault."),
                         "protect vm-0001")
        assert win.banner.isVisible() and win.banner.code.text() == "LB_STORAGE"
        assert win.banner.advice.text() == "Free space in the vault." and "vault is full" in win.banner.text.text()
        assert ctx.log.entries()[0].message.startswith("LB_STORAGE")
        try:
            raise RuntimeError("a bug in a slot")
        except RuntimeError as exc:
            ctx.notes.handle(exc, "a slot")
        dlg = win.crash_dialog
        assert isinstance(dlg, CrashDialog) and "RuntimeError: a bug in a slot" in dlg.report.toPlainText()
        dlg.copy_btn.click()
        assert "PySide6-Essentials" in QApplication.clipboard().text()
        closed = asyncio.ensure_future(signal(dlg.finished))
        dlg.reject()
        await closed
        assert win.crash_dialog is None
    finally:
        await _close(win, ctx)


async def test_jobs_on_synthetic_engine_and_cancel(tmp_path: Path, screenshot) -> None:
    win, ctx, facade = await _window(tmp_path, 5)
    try:
        job = ctx.test_failover("vm-0001", "latest", export_dir=str(tmp_path / "out"))
        done = await ctx.jobs.wait(job)
        assert done.state == "finished" and done.progress == 1.0 and facade.drill_active("vm-0001")
        res = await ctx.jobs.wait(ctx.cleanup("vm-0001"))
        assert res.state == "finished" and not facade.drill_active("vm-0001")
        rs = await ctx.jobs.wait(ctx.resync("vm-0002"))
        assert rs.state == "finished"
        bad = await ctx.jobs.wait(ctx.cleanup("vm-0003"))
        assert bad.state == "failed" and "LB_NOT_FOUND" in bad.error and win.banner.isVisible()
        page = win.show_page("jobs")
        page.jobs.selectRow(0)
        assert not page.cancel_btn.isEnabled()  # finished jobs cannot be cancelled
        assert not page.resume_btn.isEnabled()
        # the drill's row is the engine's test-failover job (one row, not one per side) and shows its steps
        kinds = [ctx.jobs_model.job_at(r).kind for r in range(ctx.jobs_model.rowCount())]
        assert kinds == ["test-failover", "cleanup", "resync", "cleanup"]
        assert [page.steps.model().index(r, 1).data() for r in range(page.steps.model().rowCount())] == [
            "succeeded"] * 3
        assert "export-disks" in page.steps.model().index(2, 0).data()
        screenshot(win, "synthetic-jobs")
    finally:
        await _close(win, ctx)


async def test_infrastructure_from_a_vcenter_snapshot(tmp_path: Path, monkeypatch) -> None:
    win, ctx, facade = await _window(tmp_path, 3)
    snap = {"vcenters": [{"host": "vc1.lab", "status": "connected", "error": None}],
            "hosts": [{"vcenter": "vc1.lab", "name": "esx-01", "moref": "host-1"}],
            "vms": [{"vcenter": "vc1.lab", "host": "esx-01", "name": "web", "moref": "vm-1", "power_state": "poweredOn",
                     "protected_machine": "vm-0001"},
                    {"vcenter": "vc1.lab", "host": "esx-01", "name": "db", "moref": "vm-2",
                     "power_state": "poweredOff", "protected_machine": None}]}
    monkeypatch.setattr(SyntheticFacade, "has_vsphere", property(lambda self: True))
    monkeypatch.setattr(SyntheticFacade, "inventory", lambda self: snap)
    try:
        page = win.show_page("infrastructure")
        page.refresh()
        vc = page.tree.topLevelItem(0)
        assert (vc.text(0), vc.text(3)) == ("vc1.lab", "connected")
        host = vc.child(0)
        vms = {host.child(i).text(0): host.child(i) for i in range(host.childCount())}
        assert vms["web"].text(3).startswith("protected") and vms["db"].text(3) == "no agent"
        agents = page.tree.topLevelItem(1)
        names = {agents.child(i).text(0) for i in range(agents.childCount())}
        assert "vm-0001" not in names and {"vm-0000", "vm-0002", "new-00"} <= names
        assert page.add_btn.isEnabled()
        page.add_vcenter()
        dlg = page.dialog
        assert dlg is not None and not dlg.buttons.button(dlg.buttons.StandardButton.Ok).isEnabled()
        closed = asyncio.ensure_future(signal(dlg.finished))
        dlg.reject()
        await closed
        await until(lambda: page.dialog is None, 5, "dialog gone")
    finally:
        await _close(win, ctx)
