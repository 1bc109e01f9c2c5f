"""Resync: only differing blocks are sent; overflow to the dirty map instead of a storm; crash detection bounds
what is compared; scheduling by the policy window; no points while the replica may differ."""

from __future__ import annotations

import random
from pathlib import Path


from engine.agent.dirty_map import BLOCK, EXTENT
from engine.policy import Policy
from tests.conftest import need_tool
from tests.engine.harness import Site, make_disk, run_tool, sha256_file

MiB = 1 << 20


async def _site(tmp_path: Path, size: int = 16 * MiB, **kw) -> tuple[Site, Path]:
    disk = tmp_path / "d0.img"
    make_disk(disk, size, seed=11, fill=0.6)
    site = Site(tmp_path)
    app = await site.start_appliance(crash_interval=0.2)
    app.set_policy(Policy("default", crash_interval=0.2, resync_window="always"))
    await site.register()
    await site.start_agent({"d0": disk}, **kw)
    await app.protect("vm1")
    await site.wait_for(lambda: app.machine_status("vm1")["state"] == "protected", 60, "initial sync")
    # "protected" comes with the SYNC_DONE record; the first point lands a moment later (its fsyncs)
    await site.wait_for(lambda: app.runtimes["vm1"].vault.points(), 10, "a first point")
    return site, disk


async def _latest(site: Site, tmp: Path, spec: str = "latest") -> str:
    app = site.app
    job = await app.recovery.test_failover("vm1", spec, export_dir=str(tmp / "out"), nbd=None)
    await site.wait_for(lambda: app.recovery.job(job.id).finished, 60, "export")
    assert app.recovery.job(job.id).error is None, app.recovery.job(job.id).error
    digest = sha256_file(tmp / "out" / "d0.img")
    await app.recovery.cleanup("vm1")
    return digest


def _change_blocks(disk: Path, count: int, seed: int) -> set[int]:
    """Change blocks behind the agent's back (what a forced shutdown or a foreign writer leaves)."""
    rnd = random.Random(seed)
    nblocks = disk.stat().st_size // BLOCK
    picked = set(rnd.sample(range(nblocks), count))
    with open(disk, "r+b") as f:
        for b in picked:
            f.seek(b * BLOCK + rnd.randrange(0, BLOCK - 100))
            f.write(rnd.randbytes(100))
    return picked


async def test_operator_resync_sends_only_differing_blocks(tmp_path: Path) -> None:
    site, disk = await _site(tmp_path)
    app = site.app
    try:
        await site.wait_caught_up()
        before = await _latest(site, tmp_path)
        await site.agent.stop()
        changed = _change_blocks(disk, 7, seed=1)
        assert sha256_file(disk) != before
        agent = await site.start_agent({"d0": disk})
        await site.wait_for(lambda: agent.connected.is_set(), 20, "agent connected")
        app.request_resync("vm1", now=True)
        await site.wait_for(lambda: app.machine_status("vm1")["state"] == "resyncing" or agent.resync.sent_blocks, 20,
                            "resync to start")
        await site.wait_for(lambda: app.machine_status("vm1")["state"] == "protected"
                            and not app.machine_status("vm1")["resync"]["required"], 60, "resync to finish")
        assert agent.resync.sent_blocks == len(changed)          # only the differences travelled
        await site.wait_caught_up()
        await site.wait_for(lambda: any(p.seq >= agent.capture.seq - 1 for p in app.runtimes["vm1"].vault.points()),
                            10, "a point after the resync")
        assert await _latest(site, tmp_path) == sha256_file(disk)
    finally:
        await site.stop()


async def test_scheduled_resync_waits_for_the_window(tmp_path: Path) -> None:
    site, disk = await _site(tmp_path)
    app = site.app
    try:
        import time
        lt = time.localtime()
        m = (lt.tm_hour * 60 + lt.tm_min + 120) % 1440   # a window that opens in two hours
        app.set_policy(Policy("default", crash_interval=0.2, resync_window=f"{m // 60:02d}:{m % 60:02d}-"
                                                                       f"{(m + 60) // 60 % 24:02d}:{m % 60:02d}"))
        app.request_resync("vm1", now=False)
        await site.wait_for(lambda: app.machine_status("vm1")["state"] == "resync-required", 10, "required")
        rs = app.machine_status("vm1")["resync"]
        assert rs["required"] and rs["reason"] == "operator request" and not rs["running"]
        assert rs["scheduled_for"] > time.time() + 3600
        await site.wait_caught_up()
        import asyncio
        await asyncio.sleep(1.5)
        assert app.machine_status("vm1")["state"] == "resync-required"    # still waiting for the window
        app.request_resync("vm1", now=True)                                # the operator runs it now
        await site.wait_for(lambda: app.machine_status("vm1")["state"] == "protected", 60, "resync done")
        assert site.agent.resync.sent_blocks == 0                            # nothing differed
    finally:
        await site.stop()


async def test_overflow_goes_to_dirty_map_and_catches_up(tmp_path: Path) -> None:
    need_tool("qemu-io")
    site, disk = await _site(tmp_path, size=32 * MiB, journal_limit=2 * MiB)
    app = site.app
    try:
        await site.wait_caught_up()
        rt = app.runtimes["vm1"]
        await site.wait_for(lambda: rt.vault.points(), 10, "a point")
        points_before = rt.vault.points()
        state_before = sha256_file(disk)
        await app.stop()                               # the link is gone: writes outrun it
        site.app = None
        await run_tool("qemu-io", "-f", "raw", f"{site.nbd_url}/d0",
                       *[a for i in range(12) for a in ("-c", f"write -P {i + 1} {i * 2 * MiB + 4096} {MiB + 3}")])
        agent = site.agent
        assert agent.capture.overflow and agent.capture.dirty.dirty_count() > 0
        assert agent.capture.journal.bytes < 4 * MiB     # bounded journal, no data dropped
        app = await site.start_appliance()
        await site.wait_for(lambda: app.machine_status("vm1")["state"] == "resyncing", 30, "resyncing shown")
        await site.wait_for(lambda: not agent.capture.overflow, 60, "overflow to end")
        await site.wait_for(lambda: app.machine_status("vm1")["state"] == "protected"
                            and not app.machine_status("vm1")["resync"]["required"], 60, "caught up")
        await site.wait_caught_up()
        rt = app.runtimes["vm1"]
        # no point was made while the replica was inconsistent
        spans = app.machine_row("vm1")["resync"]["inconsistent"]
        assert spans and all(e is not None for _, e in spans)
        for p in rt.vault.points():
            assert not any(s <= p.seq < e for s, e in spans), p
        # earlier points still recover byte-identical, and so does the newest state
        assert await _latest(site, tmp_path, points_before[-1].id) == state_before
        await site.wait_for(lambda: any(p.seq >= agent.capture.seq - 1 for p in rt.vault.points()), 10, "new point")
        assert await _latest(site, tmp_path) == sha256_file(disk)
        # ordered delta replication resumes by itself
        await run_tool("qemu-io", "-f", "raw", f"{site.nbd_url}/d0", "-c", "write -P 0x77 0 4096")
        await site.wait_caught_up()
        assert await _latest(site, tmp_path) == sha256_file(disk)
    finally:
        await site.stop()


async def test_crash_resync_compares_only_active_extents(tmp_path: Path) -> None:
    need_tool("qemu-io")
    site, disk = await _site(tmp_path, size=256 * MiB)
    app = site.app
    try:
        agent = site.agent
        # a write not yet flushed by the client (qemu-io would flush on exit): straight into the export's backend
        await agent.backends[0].write(130 * MiB, memoryview(b"\x42" * 4096), False)
        await site.wait_caught_up()
        assert agent.capture.al.active == {(0, 130 * MiB // EXTENT)}
        # Simulate power loss: the agent dies without a clean stop, and a write that reached the backing disk
        # was lost from the journal.
        await site.crash_agent()
        with open(disk, "r+b") as f:
            f.seek(130 * MiB + 65536 * 3)
            f.write(b"lost from the journal")
        agent = await site.start_agent({"d0": disk})
        await site.wait_for(lambda: agent.connected.is_set(), 20, "reconnect")
        d = agent.capture.dirty
        assert d.reason and "unexpectedly" in d.reason
        assert d.total == EXTENT // BLOCK                      # one 64 MiB extent, not the 256 MiB disk
        await site.wait_for(lambda: app.machine_status("vm1")["state"] == "protected"
                            and not app.machine_status("vm1")["resync"]["required"], 60, "resync after crash")
        assert agent.resync.sent_blocks == 1
        await site.wait_caught_up()
        assert await _latest(site, tmp_path) == sha256_file(disk)
    finally:
        await site.stop()


async def test_disk_resize_grows_replica_and_resyncs(tmp_path: Path) -> None:
    need_tool("qemu-io")
    site, disk = await _site(tmp_path)
    app = site.app
    try:
        await site.wait_caught_up()
        rt = app.runtimes["vm1"]
        await site.wait_for(lambda: rt.vault.points(), 10, "a point")
        old_point = rt.vault.points()[-1]
        await site.agent.stop()
        old_bytes = disk.read_bytes()
        with open(disk, "r+b") as f:           # the disk grows while the agent is down
            f.truncate(24 * MiB)
            f.seek(20 * MiB)
            f.write(b"new space" * 1000)
        agent = await site.start_agent({"d0": disk})
        assert agent.capture.dirty.reason == "disk resized"
        await site.wait_for(lambda: agent.resync.compared_blocks > 0, 30, "resize resync")
        await site.wait_resync_done()
        assert app.machine_status("vm1")["disks"][0]["size"] == 24 * MiB
        await run_tool("qemu-io", "-f", "raw", f"{site.nbd_url}/d0", "-c", f"write -P 0x3c {22 * MiB} 64k")
        await site.wait_caught_up()
        assert await _latest(site, tmp_path) == sha256_file(disk)
        # the point from before the resize still recovers (at the disk's new size, the new space as zeros)
        import hashlib
        padded = old_bytes + bytes(24 * MiB - len(old_bytes))
        assert await _latest(site, tmp_path, old_point.id) == hashlib.sha256(padded).hexdigest()
    finally:
        await site.stop()
