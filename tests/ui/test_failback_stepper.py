"""The failback stepper on the machine page (issue 14), offscreen, on one real boot: a protected machine (an agent
serving a copy of the bootable test image) fails over to the local libvirt recovery host; the recovered VM's disk
changes (~1 % of its blocks, written through Lifeboat's overlay). The panel shows the three steps with Reprotect next
and its prerequisites met; the button asks for a confirmation that names what happens; reprotect runs (bytes
compared and sent shown). Then the console and its embedded appliance **restart in the middle**: a new console shows
Reprotect done and Fail back next (its prerequisites checked live: seeded, the original site's agent connected).
Fail back, confirmed, runs to the end (the original disk equals the recovered VM's at shutdown), then Re-enable,
confirmed: the machine is protected again and the recovered VM is gone. Screenshots at each stage."""

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
from ui.main_window import MainWindow
from ui.pages.machines import MachinesPage

pytestmark = pytest.mark.blocking_threshold(3.0)
BLOCK = 64 * 1024


async def _write_blocks(url: str, blocks: list[int], tmp: Path) -> None:
    cmds: list[str] = []
    for b in blocks:
        f = tmp / f"blk-{b}.bin"
        f.write_bytes(os.urandom(BLOCK))
        cmds += ["-c", f"write -s {f} {b * BLOCK} {BLOCK}"]
    p = await asyncio.create_subprocess_exec("qemu-io", "-f", "raw", url, *cmds, "-c", "flush",
                                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = await p.communicate()
    assert p.returncode == 0, err


async def _sha_of_nbd(url: str, out: Path) -> str:
    p = await asyncio.create_subprocess_exec("qemu-img", "convert", "-f", "raw", "-O", "raw", url, str(out))
    assert await p.wait() == 0
    return await asyncio.to_thread(lambda: hashlib.sha256(out.read_bytes()).hexdigest())


def _open(ctx: ConsoleContext, m: str | None) -> tuple[MainWindow, MachinesPage]:
    win = MainWindow(ctx)
    win.resize(1280, 960)
    win.show()
    page = win.show_page("machines")
    assert isinstance(page, MachinesPage)
    if m is not None:
        ctx.refresh_inventory()
        page.select(m)
    return win, page


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_failback_stepper_through_a_console_restart(
        tmp_path: Path, recovery_host: str, boot_disk: Path, screenshot) -> None:  # noqa: F811
    need_tool("qemu-system-x86_64", "qemu-io", "qemu-img")
    home = tmp_path / "appliance"
    init_home(home, control_port=free_port(), data_port=free_port(), listen="127.0.0.1")
    settings = tmp_path / "console.ini"
    ctx = ConsoleContext(EngineFacade(home, listen="127.0.0.1"), ConsoleSettings.load(settings))
    await ctx.start_appliance()
    tag = os.getpid()
    m, hostname = f"sb{tag}", f"sbh{tag}"
    agent: Agent | None = None
    win, page = _open(ctx, None)
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
        ctx.refresh_inventory()
        page.select(m)
        panel = page.detail.failback
        await until(lambda: panel.model.state is not None, 10, "the stepper's first look")
        assert not panel.isVisibleTo(win)   # protected, not failed over: nothing to fail back
        await fac.add_recovery_host(hostname, uri=recovery_host, networks=["lan=isolated"])
        fac.recovery_settings(m, {"cpus": 1, "memory_mib": 256, "nics": {"eth0": "lan"},
                                  "boot_pattern": "LIFEBOAT-BOOTED", "boot_timeout": 90.0})
        job = await fac.failover(m, hostname, "latest")   # the one boot
        assert job.state == "succeeded"
        [vm] = [v for v in await fac.recovered_vms() if v.machine == m]
        overlay = f"nbd://{vm.nbd}/d0"
        image = disk.read_bytes()
        free = [b for b in range(1, len(image) // BLOCK - 64) if not image[b * BLOCK:(b + 1) * BLOCK].strip(b"\0")]
        await _write_blocks(overlay, sorted(random.Random(7).sample(free, 10)), tmp_path)

        # step 1 is next, its prerequisites met; the confirmation names what will happen
        await until(lambda: panel.isVisibleTo(win) and panel.next_btn.isEnabled(), 15, "Reprotect offered")
        st = panel.model.state
        assert [s.status for s in st.steps] == ["next", "waiting", "waiting"]
        assert panel.next_btn.text() == "&Reprotect…" and "✓ the recovered VM has booted" in \
            panel.boxes["reprotect"].prereq.text()
        assert "✗ reprotected" in panel.boxes["failback"].prereq.text()
        screenshot(win, "failback-1-failed-over")
        panel.next_btn.click()
        box = panel.dialog
        assert isinstance(box, QMessageBox)
        assert m in box.text() and "original disks" in box.text() and "only those that differ" in box.informativeText()
        screenshot(box, "failback-2-confirm-reprotect")
        box.button(QMessageBox.StandardButton.Yes).click()
        await until(lambda: (s := fac.failback_state(m)) is not None and s.state == "reprotected", 120,
                    "reprotected")
        await until(lambda: panel.model.state.steps[0].status == "done" and panel.next_btn.isEnabled(), 15,
                    "the stepper after reprotect")
        assert "compared 64.0 MiB" in panel.numbers.text() and "RPO" in panel.numbers.text()
        screenshot(win, "failback-3-reprotected")

        # a restart in the middle: console and embedded appliance stop, a new console starts on the same home
        await ctx.stop_appliance()
        win.close()
        win.deleteLater()
        ctx = ConsoleContext(EngineFacade(home, listen="127.0.0.1"), ConsoleSettings.load(settings))
        await ctx.start_appliance()
        fac = ctx.facade
        win, page = _open(ctx, m)
        panel = page.detail.failback
        panel.model.shutdown_timeout = 3.0   # the test guest ignores ACPI: powered off soon
        await until(lambda: panel.model.state is not None and panel.model.state.applicable, 15, "the stepper again")
        st = panel.model.state
        assert [s.status for s in st.steps] == ["done", "next", "waiting"]
        assert panel.next_btn.text() == "&Fail back…"
        await until(lambda: panel.next_btn.isEnabled(), 60, "the original site's agent connected again")
        assert "✓ the original site's agent (master target) is connected" in panel.boxes["failback"].prereq.text()
        screenshot(win, "failback-4-after-restart")
        panel.next_btn.click()
        box = panel.dialog
        assert isinstance(box, QMessageBox) and "Fail" in box.text() and "RPO 0" in box.informativeText()
        box.button(QMessageBox.StandardButton.Yes).click()
        await until(lambda: (s := fac.failback_state(m)) is not None and s.state == "failed-back", 180, "failed back")
        assert hashlib.sha256(disk.read_bytes()).hexdigest() == await _sha_of_nbd(overlay, tmp_path / "rec.raw")
        await until(lambda: [s.status for s in panel.model.state.steps] == ["done", "done", "next"], 15,
                    "Re-enable offered")
        assert panel.next_btn.isEnabled() and "Re-" in panel.next_btn.text()
        screenshot(win, "failback-5-failed-back")

        # step 3, confirmed: protected again, the recovered VM removed
        panel.next_btn.click()
        box = panel.dialog
        assert isinstance(box, QMessageBox) and "remove" in box.text()
        box.button(QMessageBox.StandardButton.Yes).click()
        await until(lambda: fac.failover_state(m) is None and fac.machine_status(m).state == "protected"
                    and fac.failback_state(m) is None, 180, "protected again")
        await until(lambda: panel.model.state is not None and not panel.model.state.applicable, 15, "stepper done")
        assert not panel.isVisibleTo(win)
        screenshot(win, "failback-6-protected-again")
        kinds = [j["kind"] for j in fac.engine_jobs() if j["kind"] in ("reprotect", "failback", "reenable")]
        assert kinds == ["reprotect", "failback", "reenable"]
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
