"""The failback stepper of a recovery plan on the plans page (issue 14), offscreen, on real boots: two protected
machines (agents serving copies of the bootable test image) in a plan of two groups fail over for real to the
local libvirt recovery host (one plan run: a boot per machine, nothing else boots); each recovered VM's disk
changes (~1 % of its blocks, through Lifeboat's overlay). The plan's Fail back tab shows the three steps with a row
per machine: Reprotect next, its prerequisites met; its confirmation names both machines; both reprotect (bytes
compared and sent per machine). Then the console and its embedded appliance **restart in the middle**: a new
console shows Reprotect done and Fail back next, its prerequisites checked live (every machine seeded, every
original site connected), the rows in the order it runs (group 2 first). Fail back, confirmed (the confirmation
names the order), runs the groups in reverse (group 2's failback ends before group 1's starts) and each original
disk equals its recovered VM's disk at shutdown; Re-enable, confirmed: both machines protected again, the recovered
VMs gone. Screenshots at each stage."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
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
from tests.ui.test_failback_stepper import _sha_of_nbd, _write_blocks
from ui.failback_panel import PlanFailbackPanel
from ui.main_window import MainWindow
from ui.pages.plans import PlansPage

pytestmark = pytest.mark.blocking_threshold(3.0)
BLOCK = 64 * 1024


def _open(ctx: ConsoleContext, plan: str) -> tuple[MainWindow, PlansPage, PlanFailbackPanel]:
    win = MainWindow(ctx)
    win.resize(1280, 960)
    win.show()
    page = win.show_page("plans")
    assert isinstance(page, PlansPage)
    ctx.recovery.refresh_plans()
    page.select_plan(plan)
    page.tabs.setCurrentIndex(2)
    assert page.tabs.tabText(2) == "Fa&il back"
    return win, page, page.failback


def _plan_jobs(fac: EngineFacade, kind: str) -> list[dict]:
    return [j for j in fac.engine_jobs() if j["kind"] == kind]


def _statuses(panel: PlanFailbackPanel) -> list[str]:
    st = panel.model.state
    return [s.status for s in st.steps] if st is not None else []


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_plan_failback_stepper_through_a_console_restart(
        tmp_path: Path, recovery_host: str, boot_disk: Path, screenshot) -> None:  # noqa: F811
    need_tool("qemu-system-x86_64", "qemu-io", "qemu-img")
    home = tmp_path / "appliance"
    init_home(home, control_port=free_port(), data_port=free_port(), listen="127.0.0.1")
    settings = tmp_path / "console.ini"
    ctx = ConsoleContext(EngineFacade(home, listen="127.0.0.1"), ConsoleSettings.load(settings))
    await ctx.start_appliance()
    tag = os.getpid()
    web, db, hostname, plan = f"pw{tag}", f"pd{tag}", f"ph{tag}", f"shop{tag}"
    agents: list[Agent] = []
    disks: dict[str, Path] = {}
    win: MainWindow | None = None
    try:
        fac = ctx.facade
        fac.save_policy(Policy("default", crash_interval=1.0))
        for m in (web, db):
            await asyncio.to_thread(register, tmp_path / f"agent-{m}", fac.addresses["control"],
                                    home / "passphrase.txt", m)
            disks[m] = tmp_path / f"{m}.img"
            await asyncio.to_thread(shutil.copyfile, boot_disk, disks[m])
            agent = Agent(tmp_path / f"agent-{m}", {"d0": disks[m]}, ("127.0.0.1", 0))
            await agent.start()
            agents.append(agent)
            await fac.protect(m, None)
        await until(lambda: all(fac.machine_status(m).state == "protected" for m in (web, db)), 120,
                    "both machines protected")
        await fac.add_recovery_host(hostname, uri=recovery_host, networks=["lan=isolated"])
        for m in (web, db):
            fac.recovery_settings(m, {"cpus": 1, "memory_mib": 256, "nics": {"eth0": "lan"},
                                      "boot_pattern": "LIFEBOAT-BOOTED", "boot_timeout": 120.0})
        fac.create_plan(plan)
        fac.plan_add_machines(plan, 1, [web])
        fac.plan_add_machines(plan, 2, [db])
        ctx.refresh_inventory()
        win, page, panel = _open(ctx, plan)
        await until(lambda: panel.model.state is not None, 10, "the stepper's first look")
        assert not panel.model.state.applicable and panel.isVisibleTo(win) and not panel.next_btn.isVisibleTo(win)
        assert "No machine of plan" in panel.summary.text()

        # a real run of the plan: the two boots of this test
        await fac.run_plan(plan, hostname, test=False)
        await until(lambda: (fac.plan_run_job(plan) or {}).get("state") == "succeeded", 300, "the plan run")
        overlays = {v.machine: f"nbd://{v.nbd}/d0" for v in await fac.recovered_vms() if v.machine in (web, db)}
        assert sorted(overlays) == sorted((web, db))
        image = boot_disk.read_bytes()
        free = [b for b in range(1, len(image) // BLOCK - 64) if not image[b * BLOCK:(b + 1) * BLOCK].strip(b"\0")]
        for i, m in enumerate((web, db)):
            await _write_blocks(overlays[m], sorted(random.Random(7 + i).sample(free, 10)), tmp_path)

        # step 1 for the whole plan: next, its prerequisites met, a row per machine; the confirmation names both
        await until(lambda: panel.model.state.applicable and panel.next_btn.isEnabled(), 15, "Reprotect offered")
        assert _statuses(panel) == ["next", "waiting", "waiting"] and panel.next_btn.text() == "&Reprotect…"
        box1 = panel.boxes["reprotect"]
        assert "✓ every recovered VM has booted" in box1.prereq.text()
        assert [r[0] for r in box1.row_texts()] == [f"{web} (group 1)", f"{db} (group 2)"]
        assert "✗ every machine reprotected (its seed done) — not yet: " + f"{db}, {web}" in \
            panel.boxes["failback"].prereq.text()
        screenshot(win, "plan-failback-1-failed-over")
        panel.next_btn.click()
        box = panel.dialog
        assert isinstance(box, QMessageBox)
        assert plan in box.text() and f"{web}, {db}" in box.text() and "only those that differ" in \
            box.informativeText()
        screenshot(box, "plan-failback-2-confirm-reprotect")
        box.button(QMessageBox.StandardButton.Yes).click()
        await until(lambda: all((s := fac.failback_state(m)) is not None and s.state == "reprotected"
                                for m in (web, db)), 240, "both reprotected")
        await until(lambda: _statuses(panel)[:1] == ["done"] and panel.next_btn.isEnabled(), 15,
                    "the stepper after reprotect (its plan job ended)")
        rows = panel.boxes["reprotect"].row_texts()
        assert all(r[1].startswith("✓ done") and "compared 64.0 MiB" in r[2] for r in rows), rows
        assert "2 of 2 machine(s) replicate back" in panel.numbers.text() and "worst RPO" in panel.numbers.text()
        [pj] = _plan_jobs(fac, "plan-reprotect")
        assert pj["state"] == "succeeded" and pj["target"] == f"plan:{plan}"
        changed = 10 * BLOCK
        for m in (web, db):   # differences only: the seed compares every block and sends what changed
            s = fac.failback_state(m)
            assert s is not None
            print(f"plan reprotect {m}: compared {s.bytes_compared} B, sent {s.bytes_sent} B (data "
                  f"{s.data_bytes_sent} B) for {changed} B changed")
            assert s.bytes_compared == disks[m].stat().st_size and s.data_bytes_sent <= 1.1 * changed
        print(f"plan-reprotect job: {pj['ended'] - pj['started']:.1f} s for 2 machines")
        screenshot(win, "plan-failback-3-reprotected")

        # a restart in the middle: console and embedded appliance stop, a new console starts on the same home
        await ctx.stop_appliance()
        win.close()
        win.deleteLater()
        win = None
        ctx = ConsoleContext(EngineFacade(home, listen="127.0.0.1"), ConsoleSettings.load(settings))
        await ctx.start_appliance()
        fac = ctx.facade
        win, page, panel = _open(ctx, plan)
        panel.model.shutdown_timeout = 3.0   # the test guest ignores ACPI: powered off soon
        await until(lambda: panel.model.state is not None and panel.model.state.applicable, 15, "the stepper again")
        assert _statuses(panel) == ["done", "next", "waiting"] and panel.next_btn.text() == "&Fail back…"
        await until(lambda: panel.next_btn.isEnabled(), 90, "every original site's agent connected again")
        assert "✓ the original site is reachable" in panel.boxes["failback"].prereq.text()
        assert [r[0] for r in panel.boxes["failback"].row_texts()] == [f"{db} (group 2)", f"{web} (group 1)"]
        screenshot(win, "plan-failback-4-after-restart")
        panel.next_btn.click()
        box = panel.dialog
        assert isinstance(box, QMessageBox)
        assert f"group 2 ({db}), then group 1 ({web})" in box.text() and "RPO 0" in box.informativeText()
        box.button(QMessageBox.StandardButton.Yes).click()
        await until(lambda: all((s := fac.failback_state(m)) is not None and s.state == "failed-back"
                                for m in (web, db)), 300, "both failed back")
        for m in (web, db):   # zero loss: each original disk equals its recovered VM's disk at shutdown
            assert hashlib.sha256(disks[m].read_bytes()).hexdigest() == \
                await _sha_of_nbd(overlays[m], tmp_path / f"rec-{m}.raw"), m
        await until(lambda: _statuses(panel) == ["done", "done", "next"], 15, "Re-enable offered")
        [pj] = _plan_jobs(fac, "plan-failback")
        steps = {s["name"]: s for s in pj["steps"]}
        g2, g1 = steps[f"g2-failback-{db}"], steps[f"g1-failback-{web}"]
        assert pj["state"] == "succeeded" and g2["ended"] <= g1["started"], steps   # groups in reverse order
        print(f"plan-failback job: {pj['ended'] - pj['started']:.1f} s (group 2 {g2['ended'] - g2['started']:.1f} s, "
              f"then group 1 {g1['ended'] - g1['started']:.1f} s)")
        assert panel.next_btn.isEnabled() and "Re-" in panel.next_btn.text()
        screenshot(win, "plan-failback-5-failed-back")

        # step 3, confirmed: both protected again, the recovered VMs removed
        panel.next_btn.click()
        box = panel.dialog
        assert isinstance(box, QMessageBox) and "remove" in box.text() and web in box.text() and db in box.text()
        box.button(QMessageBox.StandardButton.Yes).click()
        await until(lambda: all(fac.failover_state(m) is None and fac.machine_status(m).state == "protected"
                                and fac.failback_state(m) is None for m in (web, db)), 300, "protected again")
        await until(lambda: panel.model.state is not None and not panel.model.state.applicable, 15, "stepper done")
        assert "protected again" in panel.summary.text() and not panel.next_btn.isVisibleTo(win)
        assert not [v for v in await fac.recovered_vms() if v.machine in (web, db)]
        screenshot(win, "plan-failback-6-protected-again")
        kinds = [j["kind"] for j in fac.engine_jobs() if j["kind"].startswith("plan-")]
        assert kinds == ["plan-reprotect", "plan-failback", "plan-reenable"]
        per_machine = sorted((j["kind"], j["machine"]) for j in fac.engine_jobs()
                             if j["kind"] in ("reprotect", "failback", "reenable"))
        assert per_machine == sorted((k, m) for k in ("reprotect", "failback", "reenable") for m in (web, db))
        assert not ctx.notes.crashes
    finally:
        for a in agents:
            await a.stop()
        await ctx.stop_appliance()
        if win is not None:
            win.close()
            win.deleteLater()
        def virsh(*args: str) -> None:
            subprocess.run(["virsh", "-c", recovery_host, *args], capture_output=True)
        for m in (web, db):   # (off the loop: destroying a running domain takes seconds)
            await asyncio.to_thread(virsh, "destroy", f"lifeboat-{m}")
            await asyncio.to_thread(virsh, "undefine", f"lifeboat-{m}")
        await asyncio.to_thread(virsh, "net-destroy", f"lifeboat-{hostname}-lan")
