"""No crash dialog for an operator's mistake (issue 12, item 3) through the real console, offscreen, with the real
engine in-process and a real agent: the wizard's Finish with the control port and then the data port taken between
its check and Finish, a drill over NBD on a port in use, a drill exported where a file is in the way, protection
with the vault folder unusable. Each must end as an LB_ code with advice where the operator looks (the wizard's
message, the jobs page, the banner), the crash dialog must never open, and no traceback text may reach any widget.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtWidgets import (QAbstractItemView, QApplication, QLabel, QLineEdit, QPlainTextEdit, QTextEdit,
                               QWizard)

from console.app import ConsoleController
from console.jobs import FAILED, FINISHED
from engine.agent.agent import Agent
from engine.agent.register import register
from tests.conftest import free_port
from tests.engine.harness import make_disk
from tests.ui.helpers import signal, until
from tests.ui.test_wizard_vcenter import close_leftovers
from ui.dialogs import FailoverDialog, ProtectDialog
from ui.notifications import CrashDialog

pytestmark = [pytest.mark.timeout(150), pytest.mark.blocking_threshold(3.0)]

TRACEBACK_MARKS = ("Traceback (most recent call last)", 'File "/', "Errno ", "Error(")


def shown_texts() -> list[str]:
    """Every text a visible widget shows: labels, line edits, text views, and every cell of every item view."""
    out: list[str] = []
    for w in QApplication.allWidgets():
        if not w.isVisible():
            continue
        if isinstance(w, QLabel):
            out.append(w.text())
        elif isinstance(w, QLineEdit):
            out.append(w.text())
        elif isinstance(w, (QTextEdit, QPlainTextEdit)):
            out.append(w.toPlainText())
        elif isinstance(w, QAbstractItemView) and w.model() is not None:
            m = w.model()
            try:
                cols = m.columnCount(QModelIndex())
            except TypeError:   # a list model: one column (its columnCount is private in PySide6)
                cols = 1
            for r in range(min(m.rowCount(QModelIndex()), 500)):
                for c in range(cols):
                    for role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole):
                        v = m.data(m.index(r, c), role)
                        if isinstance(v, str):
                            out.append(v)
    return out


def no_traceback_shown(ctrl: ConsoleController) -> None:
    assert ctrl.ctx.notes.crashes == [], ctrl.ctx.notes.crashes[0]
    assert not [w for w in QApplication.topLevelWidgets() if isinstance(w, CrashDialog)], "the crash dialog opened"
    bad = [t for t in shown_texts() if any(m in t for m in TRACEBACK_MARKS)]
    assert bad == [], bad


def taken(port: int) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


async def finish_fails(wiz: Any, what: str) -> str:
    """Click Finish; resolves with the wizard's message once Finish gave up (buttons enabled again)."""
    wiz.button(QWizard.WizardButton.FinishButton).click()
    await until(lambda: not wiz._finishing, 30, what)
    return wiz.summary_page.state.error


async def test_console_failure_sweep(qtbot, tmp_path: Path, screenshot, console_settings) -> None:
    home = tmp_path / "appliance"
    ctrl = ConsoleController(home, console_settings)
    agents: list[Agent] = []
    try:
        # -- the wizard: a port taken between the Network page's check and Finish ------------------------------
        ctrl.begin()
        wiz = ctrl.wizard
        assert wiz is not None
        wiz.next()
        wiz.next()
        control, data = free_port(), free_port()
        wiz.ports_page.listen.setText("127.0.0.1")
        wiz.ports_page.control.setText(str(control))
        wiz.ports_page.data.setText(str(data))
        assert wiz.ports_page.isComplete()
        wiz.next()
        await until(lambda: wiz.pending.passphrase, 30, "the passphrase")
        passfile = tmp_path / "passphrase.txt"
        wiz.passphrase_page.save_to(passfile)
        wiz.passphrase_page.confirm.setChecked(True)
        wiz.next()
        wiz.kit_page.passphrase.setText("a kit passphrase for the test")
        wiz.kit_page.repeat.setText("a kit passphrase for the test")
        await wiz.kit_page.save_to(tmp_path / "recovery-kit.txt")
        wiz.next()
        wiz.next()
        assert wiz.currentPage() is wiz.summary_page
        for port, which in ((control, "control"), (data, "data")):
            with taken(port):
                msg = await finish_fails(wiz, f"Finish with the {which} port taken")
            assert msg.startswith("The appliance could not start: LB_LISTEN_FAILED:"), msg
            assert str(port) in msg and f"{which} port" in msg, msg
            assert wiz.summary_page.state.message.wordWrap()
            assert wiz.button(QWizard.WizardButton.FinishButton).isEnabled() and ctrl.window is None
            assert not home.exists(), "a failed Finish leaves no half-made home in place"
            no_traceback_shown(ctrl)
            screenshot(wiz, f"sweep-wizard-{which}-port-taken")
        started = signal(ctrl.started, timeout=60, what="the main window")
        wiz.button(QWizard.WizardButton.FinishButton).click()
        await started   # with the ports free again, the same Finish goes through
        win, ctx = ctrl.window, ctrl.ctx
        assert win is not None and ctx.facade.running

        # -- a protected machine with points ---------------------------------------------------------------
        default = next(p for p in ctx.facade.policies() if p.name == "default")
        ctx.save_policy(replace(default, crash_interval=1.0))
        for name in ("vm1", "vm2"):
            await asyncio.to_thread(register, tmp_path / name, f"127.0.0.1:{control}", passfile, name)
        disk = tmp_path / "sys.img"
        make_disk(disk, 2 << 20, seed=6, fill=1.0)
        agent = Agent(tmp_path / "vm1", {"sys": disk}, ("127.0.0.1", 0))
        agents.append(agent)
        await agent.start()
        machines = win.show_page("machines")
        ctx.refresh_inventory()
        await until(lambda: ctx.machines.row("vm1") and ctx.machines.row("vm2"), 10, "both machines listed")
        protected = signal(ctx.jobs.finished, lambda j: j.kind == "protect", 60, "vm1 protected")
        ctx.protect("vm1", "default")
        (job,) = await protected
        assert job.state == FINISHED, job.error
        await until(lambda: ctx.facade.machine_status("vm1").last_point is not None, 30, "a point of vm1")
        ctx.refresh_inventory()
        machines.select("vm1")
        machines.update_actions()

        async def drill(**target: str) -> Any:
            """A drill from the machines page's dialog; resolves with its finished job."""
            machines.acts["failover"].setEnabled(True)
            machines.acts["failover"].trigger()
            dlg = machines.dialog
            assert isinstance(dlg, FailoverDialog)
            if "nbd" in target:
                dlg.nbd.setChecked(True)
                dlg.nbd_addr.setText(target["nbd"])
            else:
                dlg.export.setChecked(True)
                dlg.folder.setText(target["export_dir"])
            done = signal(ctx.jobs.finished, lambda j: j.kind == "test-failover", 60, "the drill's end")
            dlg._accept()
            (j,) = await done
            return j

        # -- a drill over NBD on a port in use --------------------------------------------------------------
        with taken(free_port()) as busy:
            port = busy.getsockname()[1]
            j = await drill(nbd=f"127.0.0.1:{port}")
        assert j.state == FAILED and j.error.startswith("LB_LISTEN_FAILED:") and str(port) in j.error, j.error
        note = next(n for n in reversed(ctx.notes.history) if n.code == "LB_LISTEN_FAILED")
        assert note.advice and win.banner.isVisible()
        assert not ctx.facade.drill_active("vm1"), "the failed drill cleaned itself up"
        jobs = win.show_page("jobs")
        no_traceback_shown(ctrl)
        screenshot(win, "sweep-drill-nbd-port-in-use")

        # -- a drill exported where a file is in the way ---------------------------------------------------
        blocker = tmp_path / "a-file"
        blocker.write_text("not a folder")
        win.show_page("machines")
        j = await drill(export_dir=str(blocker / "out"))
        assert j.state == FAILED and j.error.startswith("LB_EXPORT_REFUSED:"), j.error
        assert not ctx.facade.drill_active("vm1") and blocker.read_text() == "not a folder"
        note = next(n for n in reversed(ctx.notes.history) if n.code == "LB_EXPORT_REFUSED")
        assert note.advice
        win.show_page("jobs")
        no_traceback_shown(ctrl)
        screenshot(win, "sweep-drill-export-refused")

        # -- protection with the vault folder unusable (a file where it should be) -----------------------------
        vault = Path(ctx.facade.addresses["vault"])
        vault.rename(vault.with_name("vault.moved"))
        vault.write_text("not a folder")
        try:
            win.show_page("machines")
            machines.select("vm2")
            machines.update_actions()
            machines.acts["protect"].trigger()
            dlg = machines.dialog
            assert isinstance(dlg, ProtectDialog)
            failed = signal(ctx.jobs.finished, lambda j: j.kind == "protect" and j.machine == "vm2", 60, "vm2")
            dlg.accept()
            (j,) = await failed
        finally:
            vault.unlink()
            vault.with_name("vault.moved").rename(vault)
        assert j.state == FAILED and j.error.startswith("LB_STORAGE:"), j.error
        note = next(n for n in reversed(ctx.notes.history) if n.code == "LB_STORAGE")
        assert note.advice and win.banner.isVisible()
        win.show_page("jobs")
        assert jobs.isVisible()
        no_traceback_shown(ctrl)
        screenshot(win, "sweep-protect-vault-unusable")
    finally:
        for a in agents:
            await a.stop()
        if ctrl.facade.running:
            await ctrl.shutdown()
        close_leftovers(ctrl)
