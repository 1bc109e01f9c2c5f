"""Corruption where data rests — agent journal, process-server cache, vault — is detected, never applied,
reported, and healed by a resync of the affected range; `verify` re-reads a point without touching replication."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import IntegrityError
from engine.records import HEADER_SIZE
from engine.vault.journal import ENTRY_HEAD_SIZE
from tests.conftest import need_tool
from tests.engine.harness import run_tool, sha256_file
from tests.engine.test_resync import _latest, _site

MiB = 1 << 20


def _flip_payload_byte(seg: Path, at: int = HEADER_SIZE + 100) -> None:
    data = bytearray(seg.read_bytes())
    data[at] ^= 0x10
    seg.write_bytes(bytes(data))


async def test_corrupt_agent_journal_is_healed(tmp_path: Path) -> None:
    need_tool("qemu-io")
    site, disk = await _site(tmp_path)
    try:
        await site.wait_caught_up()
        await site.app.stop()          # records stay in the agent's journal
        site.app = None
        await run_tool("qemu-io", "-f", "raw", f"{site.nbd_url}/d0", "-c", "write -P 0x61 1M 256k",
                       "-c", "write -P 0x62 5M 64k")
        agent = site.agent
        segs = agent.capture.journal.segments()
        assert segs
        _flip_payload_byte(segs[-1])
        await site.start_appliance()
        await site.wait_for(lambda: agent.last_error and "journal" in agent.last_error["message"] or
                            agent.resync.sent_blocks, 30, "corruption detected")
        await site.wait_resync_done()
        assert await _latest(site, tmp_path) == sha256_file(disk)
        assert agent.resync.sent_blocks >= 5     # the lost writes' blocks, found by checksum
    finally:
        await site.stop()


async def test_corrupt_process_server_cache_is_healed(tmp_path: Path) -> None:
    need_tool("qemu-io")
    site, disk = await _site(tmp_path)
    app = site.app
    alerts = []
    app.bus.subscribe(lambda e: alerts.append(e) if type(e).__name__ == "Alert" else None)
    try:
        await site.wait_caught_up()
        rt = app.runtimes["vm1"]
        await rt.stop()                # applier paused: records wait in the cache
        await run_tool("qemu-io", "-f", "raw", f"{site.nbd_url}/d0", "-c", "write -P 0x71 2M 128k")
        await site.wait_for(lambda: rt.cache.last_seq >= site.agent.capture.seq, 20, "cached")
        seg = rt.cache.segments()[-1]
        # inside the payload just written (the segment's appends are padded to 4 KiB, so not simply at its end)
        _flip_payload_byte(seg, seg.read_bytes().rfind(b"\x71" * 4096) + 1000)
        rt.start()
        await site.wait_for(lambda: any(a.code == "LB_INTEGRITY" for a in alerts), 20, "alert")
        await site.wait_for(lambda: site.agent.resync.compared_blocks > 0, 30, "the resync to compare")
        await site.wait_resync_done()
        assert await _latest(site, tmp_path) == sha256_file(disk)
        assert list(tmp_path.glob("appliance/cache/vm1.quarantine-*/*.lbc"))   # kept for forensics
    finally:
        await site.stop()


async def test_corrupt_vault_detected_by_verify_and_healed(tmp_path: Path) -> None:
    need_tool("qemu-io")
    site, disk = await _site(tmp_path)
    app = site.app
    try:
        await run_tool("qemu-io", "-f", "raw", f"{site.nbd_url}/d0", "-c", "write -P 0x51 3M 64k")
        await site.wait_caught_up()
        rt = app.runtimes["vm1"]
        report = await app.verify("vm1", heal=False)
        assert report["ok"] and report["records_checked"] > 0
        # flip a bit inside the newest journal record's envelope
        segs = sorted((app.vault.root / "vm1" / "journal").glob("*.lbj"))
        last = [e for e in rt.vault._journal.iter_entries(0, rt.vault.last_seq) if e.envlen][-1]
        assert last.seg == int(segs[-1].stem)
        _flip_payload_byte(segs[-1], last.pos + ENTRY_HEAD_SIZE + last.envlen - 20)
        report = await app.verify("vm1", heal=False)
        assert not report["ok"] and report["problems"][0]["what"] == "journal"
        with pytest.raises(IntegrityError):   # a drill never hands out wrong bytes
            v = await rt.vault.open_view(rt.vault.last_seq, 0)
            try:
                await v.read(3 * MiB, 65536)
            finally:
                await v.close()
        report = await app.verify("vm1", heal=True)
        assert report["healing"]
        await site.wait_for(lambda: site.agent.resync.compared_blocks > 0, 30, "the resync to compare")
        await site.wait_resync_done()
        assert await _latest(site, tmp_path) == sha256_file(disk)
    finally:
        await site.stop()
