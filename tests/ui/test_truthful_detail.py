"""Console-side truth (issue 12, items 4 and 6) over the synthetic appliance: the machine detail says why a machine is
unhealthy, shows the initial sync's % and ETA with no RPO before the first point, keeps disk % consistent with the
state, never shows the previous selection's facts, and names a running drill's NBD address; with no machine yet it
explains how to register an agent (a copyable command with the appliance's address). And the small fixes: the drill
dialog's mnemonic, visible spin-box arrows, an unclipped Jobs state column, "step N of 6" and an end checklist in the
wizard, a confirmation before a vCenter is removed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from PySide6.QtWidgets import QApplication, QLabel, QMessageBox

from console.context import ConsoleContext
from console.settings import ConsoleSettings
from console.synthetic import SyntheticFacade
from tests.ui.helpers import signal, until
from ui.dialogs import FailoverDialog
from ui.main_window import MainWindow

pytestmark = pytest.mark.blocking_threshold(3.0)


async def _window(tmp_path: Path, facade: SyntheticFacade) -> tuple[MainWindow, ConsoleContext]:
    ctx = ConsoleContext(facade, ConsoleSettings.load(tmp_path / "console.ini"))
    await ctx.start_appliance()
    win = MainWindow(ctx)
    win.resize(1200, 760)
    win.show()
    return win, ctx


async def _close(win: MainWindow, ctx: ConsoleContext) -> None:
    await ctx.stop_appliance()
    win.close()
    win.deleteLater()


async def test_no_machines_yet_shows_the_agent_register_command(tmp_path: Path, screenshot) -> None:
    win, ctx = await _window(tmp_path, SyntheticFacade(0, ticker=False))
    try:
        page = win.show_page("machines")
        guide = page.detail.guide
        assert guide.isVisible() and not page.detail.body.isVisible()
        cmd = guide.command.text()
        assert cmd.startswith("lifeboat agent register ") and "--appliance synthetic:443" in cmd
        assert "--passphrase-file" in cmd and "--name" in cmd and "--home" in cmd
        guide.copy_btn.click()
        assert QApplication.clipboard().text() == cmd
        screenshot(win, "machines-empty-guidance")
    finally:
        await _close(win, ctx)


def test_register_command_names_a_reachable_host() -> None:
    from ui.empty_state import register_command
    assert "--appliance 10.0.0.5:8443 " in register_command("10.0.0.5:8443")
    any_addr = register_command("0.0.0.0:443")
    assert "0.0.0.0" not in any_addr and ":443 " in any_addr


async def test_machine_detail_tells_the_truth(tmp_path: Path, screenshot) -> None:
    facade = SyntheticFacade(3, registered=1, ticker=False)
    win, ctx = await _window(tmp_path, facade)
    try:
        page = win.show_page("machines")
        detail = page.detail
        for _ in range(12):   # points for every machine
            facade.tick()
        ctx.bridge.flush()
        page.select("vm-0001")
        before = detail.facts["Last point"].text()
        assert before not in ("—", "none yet")

        # a newly registered machine: nothing of vm-0001 stays
        page.select("new-00")
        assert detail.facts["Last point"].text() == "none yet" and detail.facts["RPO"].text() == "—"
        assert detail.facts["Points"].text() == "0"

        # protected: initial sync with % and ETA, no RPO before the first point, disk % = state %
        job = ctx.protect("new-00", "default")
        await until(lambda: facade._state.get("new-00", {}).get("state") == "initial-sync", 5, "protect")
        facade.tick()
        ctx.bridge.flush()
        detail.refresh_details()
        assert detail.facts["State"].text() == "initial sync 25%, about 3.0 s left"
        assert detail.facts["RPO"].text() == "—"
        assert detail.disks.item(0, 2).text() == "25%"
        screenshot(win, "machine-detail-initial-sync")
        for _ in range(4):
            facade.tick()
        ctx.bridge.flush()
        assert (await ctx.jobs.wait(job)).state == "finished"

        # unhealthy: the reason is shown
        facade._state["vm-0002"]["base"] = 100   # RPO 40..161 s: over any threshold whatever the sine's phase
        facade.tick()
        ctx.bridge.flush()
        page.select("vm-0002")
        ctx.bridge.flush()
        facade.tick()
        ctx.bridge.flush()
        assert detail.health.text() == "Critical"
        assert "over the 30 s threshold" in detail.reason.text() and detail.reason.isVisible()

        # a drill over NBD: its address is in the detail, not only in a job message
        page.select("vm-0001")
        drill = ctx.test_failover("vm-0001", "latest", nbd="127.0.0.1:0")
        assert (await ctx.jobs.wait(drill)).state == "finished"
        await until(lambda: "NBD" in detail.facts["Drill"].text(), 5, "drill shown")
        assert detail.facts["Drill"].text() == "running, NBD 127.0.0.1:10809 (sys, data)"
        screenshot(win, "machine-detail-drill-nbd")
    finally:
        await _close(win, ctx)


async def test_small_fixes(tmp_path: Path, screenshot, monkeypatch) -> None:
    facade = SyntheticFacade(2, ticker=False)
    win, ctx = await _window(tmp_path, facade)
    try:
        # the drill dialog's "Recovery &point:" is a mnemonic for the table, not literal text
        dlg = FailoverDialog("vm-0000", [], win)
        label = next(w for w in dlg.findChildren(QLabel) if w.text() == "Recovery &point:")
        assert label.buddy() is dlg.table
        dlg.deleteLater()

        # the settings' spin boxes draw their arrows (the stylesheet names images that exist)
        qss = QApplication.instance().styleSheet()
        assert "@ICONS@" not in qss
        for name in ("arrow-up", "arrow-down"):
            url = qss.split("url(")[1 if name == "arrow-up" else 2].split(")")[0]
            assert Path(url).name == f"{name}.svg" and Path(url).is_file()
        settings = win.show_page("settings")
        screenshot(settings, "settings-spin-boxes")

        # the Jobs state column fits the longest state
        jobs = win.show_page("jobs")
        assert jobs.jobs.columnWidth(2) >= jobs.jobs.fontMetrics().horizontalAdvance("paused-for-operator") + 12

        # Remove vCenter asks first; Cancel removes nothing
        snap = {"vcenters": [{"host": "vc1.lab", "status": "connected"}], "hosts": [], "vms": []}
        monkeypatch.setattr(SyntheticFacade, "has_vsphere", property(lambda self: True))
        monkeypatch.setattr(SyntheticFacade, "inventory", lambda self: snap)
        infra = win.show_page("infrastructure")
        infra.refresh()
        infra.tree.setCurrentItem(infra.tree.topLevelItem(0))
        n_jobs = len(ctx.jobs.jobs)
        infra.remove_btn.click()
        box = infra.dialog
        assert isinstance(box, QMessageBox) and "Remove vCenter vc1.lab?" in box.text()
        screenshot(box, "infrastructure-remove-confirm")
        closed = asyncio.ensure_future(signal(box.finished))
        box.reject()
        await closed
        assert len(ctx.jobs.jobs) == n_jobs
    finally:
        await _close(win, ctx)


def test_wizard_counts_steps_and_ends_with_a_checklist(qapp, tmp_path: Path) -> None:
    from ui.wizard import FirstRunWizard

    async def start(_plan: object) -> None:
        return None
    wiz = FirstRunWizard(tmp_path / "home", start)
    local = [p.title() for p in wiz.pages if p not in (wiz.egress_page, wiz.target_page)]   # a local vault's run
    assert [t.split(":")[0] for t in local] == [f"Step {n} of 7" for n in range(1, 8)]
    assert "Recovery kit" in local[4]
    wiz.vault_page.azure.setChecked(True)          # an Azure target adds Outbound network and Azure target
    titles = [wiz.page(i).title() for i in wiz.pageIds()]
    assert [t.split(":")[0] for t in titles] == [f"Step {n} of 9" for n in range(1, 10)]
    assert "Outbound network" in titles[2] and "Azure target" in titles[3] and "Recovery kit" in titles[6]
    wiz.vault_page.local.setChecked(True)
    wiz.summary_page.wizard = lambda: wiz  # type: ignore[method-assign]
    wiz.summary_page.initializePage()
    text = wiz.summary_page.checklist.text()
    wiz.deleteLater()   # never shown: no close (its Cancel path is asynchronous)
    assert "After Finish" in text and "register it" in text and "firewall" in text and text.count("☐") == 6
