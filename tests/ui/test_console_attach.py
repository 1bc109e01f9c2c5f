"""The console attaches to a running appliance (issue 16, part 2), offscreen, with real processes:

- the appliance runs as its own process (``lifeboat appliance run``, the service unit's ExecStart) and a real agent
  writes through a real NBD client (qemu-io);
- a console attaches, protects the machine, shows it and its RPO; its window is closed (the tray-less notice, once)
  and the appliance goes on: new writes become points and the RPO stays low;
- a console started as a separate process (``python -m console.app --home DIR``, offscreen) is killed with SIGKILL:
  replication continues and no point is lost;
- a console opened again attaches and its RPO graph holds samples from before it was opened (the appliance keeps
  the history);
- the appliance restarted under it: the banner says the appliance is lost and the values are marked stale, then
  everything comes back by itself;
- Stop, with its confirmation naming what stops: the appliance process exits 0;
- a home whose appliance is not running: the console offers to start it (naming how), starts it as a detached
  process of its own session, attaches, and stops it again.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal as signals
import sys
import time
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from console.app import ConsoleController
from console.jobs import FINISHED
from console.models import HEALTH, RPO
from engine.agent.agent import Agent
from engine.agent.register import register
from engine.api import Policy, attach_appliance
from engine.appliance.appliance import init_home
from engine.client import AdminClient
from tests.conftest import free_port, need_tool
from tests.engine.harness import make_disk, run_tool
from tests.ui.helpers import signal, until
from ui.appliance_dialogs import CloseNoticeDialog, StartApplianceDialog, StopApplianceDialog
from ui.main_window import MainWindow

# An attached console's queries are local HTTPS requests on the GUI thread (milliseconds each); building the main
# window takes 0.1–0.3 s, and a loaded 2-core machine has been seen at 1–2.3 s.
pytestmark = pytest.mark.blocking_threshold(3.0)

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20


def _env() -> dict[str, str]:
    env = dict(os.environ)   # the test keyring (PYTHON_KEYRING_BACKEND, XDG_DATA_HOME) is passed on
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["QT_QPA_PLATFORM"] = "offscreen"
    return env


async def _start_appliance(home: Path) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "engine.cli", "appliance", "run", "--home",
                                                str(home), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, cwd=REPO, env=_env())
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert line.startswith(b"appliance running"), line + (await proc.stderr.read() if proc.stderr else b"")
    return proc


def _consoles(home: Path) -> int:
    return int(AdminClient(home, timeout=10).call("GET", "/v1/console/hello")["consoles"])


async def _wait_consoles(home: Path, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (seen := await asyncio.to_thread(_consoles, home)) != n:
        assert time.monotonic() < deadline, f"{seen} consoles attached, not {n}"
        await asyncio.sleep(0.2)


async def _open_console(home: Path, settings) -> ConsoleController:  # type: ignore[no-untyped-def]
    ctrl = ConsoleController(home, settings, mode="attach")
    started = signal(ctrl.started, timeout=60, what="the main window")
    ctrl.begin()
    await started
    assert isinstance(ctrl.window, MainWindow)
    return ctrl


async def _close_console(ctrl: ConsoleController) -> None:
    if ctrl.window is None:
        return
    finished = signal(ctrl.finished, timeout=30, what="the console closed")
    ctrl.window.quit_console()    # type: ignore[attr-defined]
    await finished


@pytest.mark.timeout(240)
async def test_console_attaches_survives_and_stops(qtbot, tmp_path: Path, screenshot, console_settings) -> None:
    need_tool("qemu-io")
    home = tmp_path / "appliance"
    init_home(home, control_port=free_port(), data_port=free_port(), listen="127.0.0.1", vault=tmp_path / "vault")
    disk = tmp_path / "sys.img"
    make_disk(disk, 8 * MiB, seed=7)
    app = await _start_appliance(home)
    agent: Agent | None = None
    probe = None
    ctrls: list[ConsoleController] = []
    killed: asyncio.subprocess.Process | None = None
    try:
        # A probe attached the whole time (the test's own eyes: its blocking calls run in threads).
        probe = await attach_appliance(home)
        await asyncio.to_thread(probe.set_policy, Policy("default", rpo_threshold=30, crash_interval=0.5))
        control = json.loads((home / "appliance.json").read_text())["control_port"]
        await asyncio.to_thread(register, tmp_path / "agent", f"127.0.0.1:{control}", home / "passphrase.txt", "vm1")
        agent = Agent(tmp_path / "agent", {"sys": disk}, ("127.0.0.1", 0))
        await agent.start()
        assert agent.nbd_address
        nbd = f"nbd://127.0.0.1:{agent.nbd_address[1]}/sys"

        async def status():  # type: ignore[no-untyped-def]
            return await asyncio.to_thread(probe.machine_status, "vm1")

        async def replicated_after_write(offset: int) -> None:
            await run_tool("qemu-io", "-f", "raw", nbd, "-c", f"write -P 0x{offset & 0xff:02x} {offset}M 256k")
            target = agent.capture.seq
            deadline = time.monotonic() + 30
            while True:
                m = await status()
                if m.last_point is not None and m.last_point.seq >= target and m.rpo_seconds < 5:
                    return
                assert time.monotonic() < deadline, f"no point after the write at {offset} MiB: {m}"
                await asyncio.sleep(0.2)

        # 1. A console attaches (the appliance is not in this process), protects vm1 and shows it with its RPO.
        ctrl = await _open_console(home, console_settings)
        ctrls.append(ctrl)
        ctx, win = ctrl.ctx, ctrl.window
        assert ctrl.facade.attached and ctrl.facade.app is None and not win.link_banner.isVisible()
        assert "Attached to the appliance" in win.appliance_label.text()
        machines = win.show_page("machines")
        await until(lambda: ctx.machines.row("vm1"), 15, "vm1 listed")
        protected = signal(ctx.jobs.finished, lambda j: j.kind == "protect", 60, "the protect job")
        ctx.protect("vm1", None)
        (job,) = await protected
        assert job.state == FINISHED, f"{job.message} {job.error}"
        await until(lambda: ctx.machines.row("vm1").state == "protected", 30, "vm1 protected in the table")
        machines.select("vm1")
        await replicated_after_write(1)
        await until(lambda: ctx.machines.row("vm1").rpo_known and machines.detail.graph.samples > 0, 15,
                    "vm1's RPO drawn")
        assert ctx.overall_health()[0] in ("ok", "warning")
        screenshot(win, "attach-1-attached-console")

        # 2. The window is closed: no tray here, so it says once that the appliance goes on, and quits.
        finished = signal(ctrl.finished, timeout=30, what="the console closed")
        win.close()
        await until(lambda: win.close_notice is not None, 5, "the close notice")
        assert isinstance(win.close_notice, CloseNoticeDialog)
        assert "goes on replicating" in win.close_notice.body.text()
        screenshot(win.close_notice, "attach-2-close-notice")
        win.close_notice.accept()
        await finished
        assert console_settings.get("ui/close_notice_shown")
        assert app.returncode is None, "closing the console stopped the appliance"
        await replicated_after_write(2)
        await _wait_consoles(home, 1)   # only the probe: the closed console's stream is gone

        # 3. A console as its own process (lifeboat-console --home DIR), killed with SIGKILL.
        killed = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "console.app", "--home", str(home), "--settings", str(tmp_path / "c2.ini"),
            cwd=REPO, env=_env(), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while await asyncio.to_thread(_consoles, home) < 2:   # the probe and it
            assert killed.returncode is None and time.monotonic() < deadline, "the console process did not attach"
            await asyncio.sleep(0.2)
        before = [p.id for p in await asyncio.to_thread(probe.points, "vm1")]
        killed.send_signal(signals.SIGKILL)
        assert await killed.wait() == -signals.SIGKILL
        await replicated_after_write(3)
        after = [p.id for p in await asyncio.to_thread(probe.points, "vm1")]
        assert set(before) <= set(after) and len(after) > len(before), "a point was lost or none was made"
        await _wait_consoles(home, 1)   # the killed console's stream is gone

        # 4. A console opened again attaches; its graph has the samples the appliance kept from before.
        deadline = time.monotonic() + 20
        while not (kept := await asyncio.to_thread(probe.rpo_history, "vm1")):
            assert time.monotonic() < deadline, "the appliance keeps no RPO history"
            await asyncio.sleep(0.5)
        first_kept = float(kept[0][0])
        await asyncio.sleep(0.2)
        opened = time.time()
        ctrl = await _open_console(home, console_settings)
        ctrls.append(ctrl)
        ctx, win = ctrl.ctx, ctrl.window
        machines = win.show_page("machines")
        await until(lambda: ctx.machines.row("vm1") and ctx.machines.row("vm1").protected, 15, "vm1 listed")
        machines.select("vm1")

        def earliest() -> float:
            t, _ = ctx.history.series("vm1")
            return float(t[0]) if len(t) else opened
        assert first_kept < opened
        await until(lambda: earliest() <= first_kept, 15, "RPO samples from before the console opened")
        graph = machines.detail.graph
        await until(lambda: graph.curve.xData is not None and len(graph.curve.xData)
                    and float(graph.curve.xData[0]) <= first_kept, 15, "the graph draws them")
        screenshot(win, "attach-3-reopened-with-history")

        # 5. The appliance restarts under the console: the banner says so and the values are stale, then it is back.
        lost = signal(ctx.link_changed, lambda up, _why: not up, 30, "the link lost")
        app.send_signal(signals.SIGTERM)
        assert await asyncio.wait_for(app.wait(), 60) == 0
        await lost
        assert win.link_banner.isVisible() and "Lost the appliance" in win.link_banner.text.text()
        idx = ctx.machines.index(ctx.machines.names().index("vm1"), HEALTH)
        assert ctx.machines.data(idx) == "Unknown"
        assert ctx.machines.data(idx.siblingAtColumn(RPO)).startswith("? (was")
        assert ctx.machines.data(idx, Qt.ItemDataRole.ForegroundRole) is not None
        assert ctx.overall_health()[0] == "critical" and "Lost the appliance" in win.appliance_label.text()
        assert not win.stop_act.isEnabled()
        screenshot(win, "attach-4-link-lost-banner")
        back = signal(ctx.link_changed, lambda up, _why: up, 60, "the link back")
        app = await _start_appliance(home)
        await back
        assert not win.link_banner.isVisible() and not ctx.machines.stale
        assert ctx.machines.data(idx) != "Unknown"
        await replicated_after_write(4)
        await until(lambda: ctx.machines.row("vm1").last_point_time
                    and ctx.machines.row("vm1").last_point_time > time.time() - 20, 20, "live statuses again")

        # 6. Stop, confirmed: the dialog names what stops; the appliance drains and its process exits 0.
        assert win.stop_act.isEnabled()
        dlg = win.confirm_stop()
        assert isinstance(dlg, StopApplianceDialog)
        text = dlg.body.text()
        assert "1 protected machine stops replicating: vm1" in text and "job" in text, text
        assert "1 other console attached" in text, text   # the probe
        screenshot(dlg, "attach-5-stop-confirmation")
        stopped = signal(ctx.appliance_stopped, timeout=60, what="stopped")
        dlg.accept()
        await stopped
        assert await asyncio.wait_for(app.wait(), 60) == 0
        assert not ctrl.facade.running and win.link_banner.isVisible()
        assert "not running" in win.link_banner.text.text() and win.start_act.isEnabled()
    finally:
        for c in ctrls:
            await _close_console(c)
        if probe is not None:
            await probe.stop()
        if agent is not None:
            await agent.stop()
        if killed is not None and killed.returncode is None:
            killed.kill()
            await killed.wait()
        if app.returncode is None:
            app.terminate()
            await app.wait()


@pytest.mark.timeout(120)
async def test_console_offers_to_start_a_stopped_appliance(qtbot, tmp_path: Path, screenshot,
                                                          console_settings) -> None:
    home = tmp_path / "appliance"
    init_home(home, control_port=free_port(), data_port=free_port(), listen="127.0.0.1", vault=tmp_path / "vault")
    ctrl = ConsoleController(home, console_settings, mode="attach")
    proc = None
    try:
        asked = signal(ctrl.asking, timeout=30, what="the offer to start the appliance")
        ctrl.begin()
        (dlg,) = await asked
        assert isinstance(dlg, StartApplianceDialog) and dlg.plan.how == "process"   # no systemd here
        assert "appliance run --home" in dlg.body.text() and str(home / "appliance.log") in dlg.body.text()
        win = ctrl.window
        assert isinstance(win, MainWindow) and not ctrl.facade.running
        screenshot(win, "attach-6-start-offer-window")
        screenshot(dlg, "attach-6-start-offer")
        started = signal(ctrl.ctx.appliance_started, timeout=90, what="started and attached")
        dlg.accept()
        await started
        proc = ctrl.facade.started_process
        assert proc is not None and proc.poll() is None
        assert os.getsid(proc.pid) == proc.pid != os.getsid(0), "not a session of its own"
        assert ctrl.facade.attached and not win.link_banner.isVisible()
        assert (home / "appliance.log").stat().st_size > 0

        # Closing the console leaves it running; Stop (confirmed) ends it with status 0.
        dlg2 = win.confirm_stop()
        assert dlg2 is not None and "0 protected machines stop replicating" in dlg2.body.text()
        dlg2.accept()
        assert await asyncio.wait_for(asyncio.to_thread(proc.wait), 60) == 0
    finally:
        await _close_console(ctrl)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            await asyncio.to_thread(proc.wait)


@pytest.mark.timeout(120)
async def test_wizard_ends_by_starting_the_appliance_and_attaching(qtbot, tmp_path: Path, console_settings) -> None:
    from tests.ui.test_console_e2e import _finish_wizard
    home = tmp_path / "appliance"
    ctrl = ConsoleController(home, console_settings, mode="attach")
    proc = None
    try:
        ctrl.begin()
        assert ctrl.wizard is not None
        await _finish_wizard(ctrl, tmp_path, lambda *_: None)   # Finish: start in the background, then attach
        proc = ctrl.facade.started_process
        assert proc is not None and proc.poll() is None and os.getsid(proc.pid) == proc.pid
        assert ctrl.facade.attached and ctrl.facade.app is None
        assert await asyncio.to_thread(_consoles, home) == 1
        # Closing the console leaves the appliance running (the notice was already shown: no dialog).
        console_settings.set("ui/close_notice_shown", True)
        await _close_console(ctrl)
        await asyncio.sleep(0.5)
        assert proc.poll() is None, "closing the console stopped the appliance"
        remote = await attach_appliance(home)
        try:
            await asyncio.to_thread(remote.stop_appliance, "test over")
        finally:
            await remote.stop()
        assert await asyncio.wait_for(asyncio.to_thread(proc.wait), 60) == 0
    finally:
        await _close_console(ctrl)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            await asyncio.to_thread(proc.wait)


async def test_tray_shows_health_and_keeps_the_console(qtbot, console_settings) -> None:
    """Where a tray exists (forced here: offscreen has none), closing the window hides it to the tray; the icon's
    tooltip tells the site's health, critical while the appliance is not running; Quit closes the console only."""
    from console.context import ConsoleContext
    from console.synthetic import SyntheticFacade
    facade = SyntheticFacade(4, ticker=False)
    ctx = ConsoleContext(facade, console_settings)
    await ctx.start_appliance()
    stopped_by_close: list[bool] = []

    async def shutdown() -> None:
        stopped_by_close.append(True)
        await ctx.stop_appliance()
    win = MainWindow(ctx, shutdown, attached=True, tray=True)
    try:
        win.show()
        assert win.tray is not None and win.desktop.tray is win.tray.icon
        health, why = ctx.overall_health()
        assert win.tray.icon.toolTip() == f"Lifeboat — {why}" and win.tray.health == health
        win.close()
        assert not win.isVisible() and facade.running and not stopped_by_close, "closing hid the window only"
        assert console_settings.get("ui/tray_notice_shown")
        win.tray.open_act.trigger()
        assert win.isVisible()
        closed = signal(win.closed, timeout=10, what="closed")
        win.tray.quit_act.trigger()
        await closed
        assert stopped_by_close == [True]   # the console let go (an attached facade detaches, never stops)
        assert ctx.overall_health()[0] == "critical" and "not running" in win.tray.icon.toolTip()
    finally:
        win.deleteLater()
        await ctx.stop_appliance()
