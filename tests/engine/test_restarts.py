"""Roles restart cleanly: an agent restarted after initial sync keeps replicating (no reused sequence numbers),
and an appliance restarted with data in its cache applies it; every point still reads back byte-identical."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import need_tool
from tests.engine.harness import Site, make_disk, run_tool, sha256_file


async def _latest_export(site: Site, tmp: Path) -> str:
    app = site.app
    job = await app.recovery.test_failover("vm1", "latest", export_dir=str(tmp / "out"), nbd=None)
    await site.wait_for(lambda: app.recovery.job(job.id).finished, 60, "export")
    assert app.recovery.job(job.id).error is None
    digest = sha256_file(tmp / "out" / "d0.img")
    await app.recovery.cleanup("vm1")
    return digest


async def test_agent_and_appliance_restart(tmp_path: Path) -> None:
    need_tool("qemu-io")
    disk = tmp_path / "d0.img"
    make_disk(disk, 8 << 20, seed=3)
    site = Site(tmp_path)
    try:
        app = await site.start_appliance(crash_interval=0.2)
        await site.register()
        await site.start_agent({"d0": disk})
        await app.protect("vm1")
        await site.wait_for(lambda: app.machine_status("vm1")["state"] == "protected", 60, "initial sync")
        # Agent restart right after initial sync (the last numbers handed out were never journaled):
        # writes right after it must reach the vault.
        await site.agent.stop()
        await site.start_agent({"d0": disk})
        await run_tool("qemu-io", "-f", "raw", f"{site.nbd_url}/d0", "-c", "write -P 0x33 0 64k")
        await site.wait_caught_up()
        assert await _latest_export(site, tmp_path) == sha256_file(disk)
        await site.agent.stop()
        await site.start_agent({"d0": disk})
        await run_tool("qemu-io", "-f", "raw", f"{site.nbd_url}/d0", "-c", "write -P 0x44 1M 64k")
        await site.wait_caught_up()
        assert await _latest_export(site, tmp_path) == sha256_file(disk)
        points_before = [p.to_dict() for p in app.runtimes["vm1"].vault.points()]

        # Appliance restart while the agent keeps writing: the agent reconnects and resends what was unacknowledged.
        await app.stop()
        await run_tool("qemu-io", "-f", "raw", f"{site.nbd_url}/d0", "-c", "write -P 0x55 2M 128k")
        app = await site.start_appliance()
        await site.wait_for(lambda: site.agent.connected.is_set() and
                            app.runtimes["vm1"].connection is not None, 60, "agent reconnect")
        await site.wait_caught_up()
        assert await _latest_export(site, tmp_path) == sha256_file(disk)
        after = [p.to_dict() for p in app.runtimes["vm1"].vault.points()]
        assert after[:len(points_before)] == points_before
    finally:
        await site.stop()
