"""Policy at work: health follows the RPO threshold, retention folds old history away without changing what the
remaining points read, and bookmark hooks always thaw."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import engine.agent.agent as agent_mod
from engine.agent.agent import Agent
from engine.errors import InvalidInput, LifeboatError
from engine.policy import Policy, health_for, parse_duration
from tests.conftest import need_tool
from tests.engine.harness import Site, make_disk, run_tool, sha256_file


def test_durations_and_health_rules() -> None:
    assert parse_duration("30s") == 30 and parse_duration("5m") == 300 and parse_duration("24h") == 86400
    assert parse_duration("500ms") == 0.5 and parse_duration("1d") == 86400
    for bad in ("", "soon", "-5s", "0s", "5 parsecs"):
        with pytest.raises(InvalidInput):
            parse_duration(bad)
    assert health_for(0, 30, "protected") == "ok"
    assert health_for(20, 30, "protected") == "warning"
    assert health_for(31, 30, "protected") == "critical"
    assert health_for(0, 30, "initial-sync") == "warning"
    assert health_for(0, 30, "error") == "critical"
    with pytest.raises(InvalidInput):
        Policy("bad name!").validate()
    with pytest.raises(InvalidInput):
        Policy("p", retention=10, crash_interval=60).validate()


async def _protected_site(tmp_path: Path, **policy: float) -> tuple[Site, Path]:
    disk = tmp_path / "d0.img"
    make_disk(disk, 4 << 20, seed=5)
    site = Site(tmp_path)
    app = await site.start_appliance(**policy)
    await site.register()
    await site.start_agent({"d0": disk})
    await app.protect("vm1")
    await site.wait_for(lambda: app.machine_status("vm1")["state"] == "protected", 60, "initial sync")
    return site, disk


async def test_health_turns_critical_when_rpo_crosses_threshold(tmp_path: Path) -> None:
    site, _ = await _protected_site(tmp_path, rpo_threshold=1, crash_interval=0.5)
    try:
        app = site.app
        await site.wait_for(lambda: app.machine_status("vm1")["health"] == "ok", 10, "health ok")
        assert app.machine_status("vm1")["rpo_seconds"] == 0
        await site.agent.stop()   # the appliance can no longer see the machine's writes
        site.agent = None
        await site.wait_for(lambda: app.machine_status("vm1")["health"] == "critical", 10, "critical")
        st = app.machine_status("vm1")
        assert st["rpo_seconds"] > 1 and st["state"] == "protected" and not st["agent_connected"]
    finally:
        await site.stop()


async def test_retention_folds_old_history(tmp_path: Path) -> None:
    need_tool("qemu-io")
    site, disk = await _protected_site(tmp_path, crash_interval=0.1, retention=2)
    try:
        app = site.app
        rt = app.runtimes["vm1"]
        states = {}
        for i in range(4):
            await run_tool("qemu-io", "-f", "raw", f"{site.nbd_url}/d0", "-c", f"write -P {i + 1} {i * 65536} 4096")
            seq = await site.wait_caught_up()
            await site.wait_for(lambda: any(p.seq == seq for p in rt.vault.points()), 10, "point")
            states[seq] = sha256_file(disk)
            await asyncio.sleep(1.0)
        old_base = rt.vault.base_seq
        await app.prune_all()
        kept = rt.vault.points()
        assert rt.vault.base_seq > old_base
        assert kept and all(p.time >= time.time() - 2 - 5 for p in kept)
        assert len(kept) < len(states) + 1
        for p in kept:
            if p.seq in states:
                job = await app.recovery.test_failover("vm1", p.id, export_dir=str(tmp_path / "o"), nbd=None)
                await site.wait_for(lambda: app.recovery.job(job.id).finished, 30, "export")
                assert sha256_file(tmp_path / "o" / "d0.img") == states[p.seq]
                await app.recovery.cleanup("vm1")
    finally:
        await site.stop()


async def test_bookmark_hooks_always_thaw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site, disk = await _protected_site(tmp_path)
    log = tmp_path / "hooks.log"
    try:
        await site.agent.stop()

        async def agent_with(pre: str, post: str) -> Agent:
            a = Agent(site.agent_home, {"d0": disk}, ("127.0.0.1", 0), pre_bookmark=pre, post_bookmark=post)
            await a.start()
            site.agent = a
            await site.wait_for(lambda: a.connected.is_set(), 20, "agent connected")
            return a

        post = f"sh -c 'echo thaw >> {log}'"
        a = await agent_with(f"sh -c 'echo freeze >> {log}'", post)
        bm = await a.bookmark("ok")
        assert log.read_text().split() == ["freeze", "thaw"]
        await site.wait_caught_up()
        assert any(p.id == bm["point_id"] and p.tag == "ok" for p in site.app.runtimes["vm1"].vault.points())
        await a.stop()

        log.unlink()
        a = await agent_with("false", post)
        with pytest.raises(LifeboatError) as ei:
            await a.bookmark("fails")
        assert ei.value.code == "LB_HOOK_FAILED" and log.read_text().split() == ["thaw"]
        await a.stop()

        log.unlink()
        monkeypatch.setattr(agent_mod, "HOOK_TIMEOUT", 0.5)
        a = await agent_with("sleep 30", post)
        t0 = time.monotonic()
        with pytest.raises(LifeboatError) as ei:
            await a.bookmark("hangs")
        assert ei.value.code == "LB_HOOK_TIMEOUT" and time.monotonic() - t0 < 5
        assert log.read_text().split() == ["thaw"]
        tags = {p.tag for p in site.app.runtimes["vm1"].vault.points()}
        assert "fails" not in tags and "hangs" not in tags
    finally:
        await site.stop()
