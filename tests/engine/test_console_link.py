"""Consoles attach to a running appliance (issue 16): the appliance runs as its own process (`lifeboat appliance
run`, the service core); consoles reach it through the control API with the home's admin certificate and get the
same typed views, errors and events as in-process. Several attach at once; one killed with SIGKILL, or closed,
changes nothing for replication; the appliance restarting is seen as a lost link that comes back by itself; an
explicit Stop drains it."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine.agent.agent import Agent
from engine.agent.register import register
from engine.api import (ApplianceLink, ApplianceStatus, InvalidInput, MachineStatus, MachineView, Policy,
                        UnknownMachine, attach_appliance)
from engine.appliance.appliance import init_home
from engine.client import AdminClient
from tests.conftest import free_port, need_tool
from tests.engine.harness import make_disk, run_tool

LIFEBOAT = [sys.executable, "-m", "engine.cli"]


async def _start_appliance(home: Path) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(*LIFEBOAT, "appliance", "run", "--home", str(home),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert line.startswith(b"appliance running"), line + (await proc.stderr.read() if proc.stderr else b"")
    return proc


async def _until(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.mark.timeout(240)
async def test_consoles_attach_survive_and_reconnect(tmp_path: Path) -> None:
    need_tool("qemu-io")
    home = tmp_path / "appliance"
    init_home(home, control_port=free_port(), data_port=free_port(), listen="127.0.0.1", vault=tmp_path / "vault")
    disk = tmp_path / "d0.img"
    make_disk(disk, 8 << 20, seed=5)
    app = await _start_appliance(home)
    agent: Agent | None = None
    consoles = []
    try:
        control = json.loads((home / "appliance.json").read_text())["control_port"]
        await asyncio.to_thread(register, tmp_path / "agent", f"127.0.0.1:{control}", home / "passphrase.txt", "vm1")
        agent = Agent(tmp_path / "agent", {"d0": disk}, ("127.0.0.1", 0))
        await agent.start()
        assert agent.nbd_address

        first = await attach_appliance(home)
        consoles.append(first)
        seen: list[object] = []
        first.subscribe(seen.append)
        # Typed views and errors, as in-process.
        first.set_policy(Policy("default", rpo_threshold=30, crash_interval=0.5))
        await first.protect("vm1")
        await _until(lambda: first.machine_status("vm1").state == "protected", 60, "initial sync over the link")
        st = first.status()
        assert isinstance(st, ApplianceStatus) and isinstance(st.machines[0], MachineView)
        with pytest.raises(UnknownMachine):
            first.machine_status("ghost")
        with pytest.raises(InvalidInput):
            first.call("definitely_not_a_call")
        with pytest.raises(InvalidInput):   # only the link's own classes are built from a request
            first.call("set_policy", {"__type__": "Appliance", "home": "/"})
        await _until(lambda: any(isinstance(e, MachineStatus) and e.machine == "vm1" for e in seen), 10,
                     "events over the link")
        assert first.addresses["control"].endswith(str(control))

        # A second console at the same time; a third in another process, killed with SIGKILL.
        second = await attach_appliance(home)
        consoles.append(second)
        got2: list[object] = []
        second.subscribe(got2.append)
        script = textwrap.dedent(f"""
            import asyncio, sys
            from engine.api import attach_appliance
            async def main():
                r = await attach_appliance({str(home)!r})
                print("attached", flush=True)
                await asyncio.sleep(3600)
            asyncio.run(main())
        """)
        third = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE)
        assert third.stdout is not None
        assert (await asyncio.wait_for(third.stdout.readline(), 30)).strip() == b"attached"
        await _until(lambda: AdminClient(home).call("GET", "/v1/console/hello")["consoles"] == 3, 10, "3 consoles")
        # Both in-process consoles get the same events while both are attached: a write is seen by each.
        url = f"nbd://127.0.0.1:{agent.nbd_address[1]}/d0"
        n1, n2 = len(seen), len(got2)
        written = time.time()   # a point's time is its newest record's capture time: one of this write is no older
        await run_tool("qemu-io", "-f", "raw", url, "-c", "write -P 0x41 0 256k")

        def point_at(events: list[object], start: int, since: float) -> bool:
            return any(isinstance(e, MachineStatus) and e.machine == "vm1" and e.last_point_time is not None
                       and e.last_point_time >= since for e in events[start:])
        await _until(lambda: point_at(seen, n1, written) and point_at(got2, n2, written), 30,
                     "the point of a new write as an event on both consoles")

        third.send_signal(signal.SIGKILL)
        await third.wait()
        await second.stop()   # a console closed: lets go, stops nothing
        consoles.remove(second)
        n1, n2 = len(seen), len(got2)
        written = time.time()
        await run_tool("qemu-io", "-f", "raw", url, "-c", "write -P 0x42 1M 512k")
        target = agent.capture.seq

        def replicated() -> bool:
            m = first.machine_status("vm1")
            return m.last_point is not None and m.last_point.seq >= target and m.rpo_seconds < 5
        await _until(replicated, 30, "replication after consoles left")
        # The console still attached keeps its event stream; the closed one gets nothing more.
        await _until(lambda: point_at(seen, n1, written), 30, "events on the remaining console")
        assert not [e for e in seen[n1:] if isinstance(e, ApplianceLink)], "the other consoles leaving broke the link"
        assert len(got2) == n2, "a stopped console still received events"
        await _until(lambda: AdminClient(home).call("GET", "/v1/console/hello")["consoles"] == 1, 30,
                     "the killed and the closed console are gone")
        history = first.rpo_history("vm1")
        assert history, "the RPO history is kept by the appliance"

        # The appliance restarts: the console sees the link drop, and come back on its own.
        links: list[ApplianceLink] = [e for e in seen if isinstance(e, ApplianceLink)]
        assert links == []
        app.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(app.wait(), 60) == 0
        await _until(lambda: any(isinstance(e, ApplianceLink) and e.state == "lost" for e in seen), 30, "lost")
        assert not first.connected
        app = await _start_appliance(home)
        await _until(lambda: any(isinstance(e, ApplianceLink) and e.state == "connected" for e in seen), 30,
                     "reconnected")
        assert first.connected
        assert first.rpo_history("vm1")[:len(history)] == history   # what was drawn before is still there

        # An explicit stop from the console drains the appliance and it exits cleanly.
        first.stop_appliance("test: stop from the console")
        assert await asyncio.wait_for(app.wait(), 60) == 0
    finally:
        for c in consoles:
            await c.stop()
        if agent is not None:
            await agent.stop()
        if app.returncode is None:
            app.terminate()
            await app.wait()


async def _run_locked(home: Path) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(*LIFEBOAT, "appliance", "run", "--home", str(home),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert line.startswith(b"appliance locked"), line + (await proc.stderr.read() if proc.stderr else b"")
    return proc


@pytest.mark.timeout(180)
async def test_the_link_follows_an_appliance_that_is_locked_and_unlocked(tmp_path: Path) -> None:
    """A locked appliance (no vault key in its keyring): attaching is LB_KEYRING with the advice to import the kit,
    unless the console allows it (``start(allow_locked=True)``: ``locked`` says why); the kit imported, the link
    says ``connected`` and every call is served; restarted without its key, the link says ``lost`` then ``locked``."""
    from engine.api import KeyringError, RemoteAppliance, console_types, export_recovery_kit, import_recovery_kit
    from engine.home import ApplianceHome
    from engine.secrets import delete_secret, vault_key_name
    home = tmp_path / "appliance"
    init_home(home, control_port=free_port(), data_port=free_port(), listen="127.0.0.1", vault=tmp_path / "vault")
    aid = ApplianceHome(home).load_config()["appliance_id"]
    passphrase = "correct horse battery staple"
    kit = export_recovery_kit(home, tmp_path / "kit.txt", passphrase)
    delete_secret(vault_key_name(aid))   # the appliance's process shares this keyring: it starts locked
    app = await _run_locked(home)
    remote = RemoteAppliance(home, console_types())
    seen: list[ApplianceLink] = []
    remote.subscribe(lambda ev: seen.append(ev) if isinstance(ev, ApplianceLink) else None)
    try:
        with pytest.raises(KeyringError) as refused:
            await attach_appliance(home)
        assert "import-kit" in refused.value.advice and "locked" in refused.value.message

        await remote.start(allow_locked=True)
        assert remote.locked is not None and remote.locked["code"] == "LB_KEYRING" and not remote.connected
        assert not remote.calls

        def unlock() -> dict:  # type: ignore[type-arg]
            return import_recovery_kit(home, kit, passphrase)
        got = await asyncio.to_thread(unlock)
        assert got["unlocked"] is True
        remote.reconnect_now()
        await _until(lambda: remote.connected, 30, "the link connected to the unlocked appliance")
        assert remote.locked is None and [e.state for e in seen] == ["connected"]
        assert isinstance(await asyncio.to_thread(remote.status), ApplianceStatus)

        app.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(app.wait(), 60) == 0
        delete_secret(vault_key_name(aid))
        app = await _run_locked(home)
        await _until(lambda: remote.locked is not None, 30, "the link saw the appliance locked again")
        assert [e.state for e in seen] == ["connected", "lost", "locked"] and not remote.connected
    finally:
        await remote.stop()
        if app.returncode is None:
            app.send_signal(signal.SIGTERM)
            await app.wait()
