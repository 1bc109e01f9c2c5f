"""Dozens of SIGKILLs of the agent and the appliance during churn: every listed point still reads back as a state
the source was really in (bookmarks exactly), and nothing acknowledged is lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import need_tool
from tests.engine.torture import run_torture


@pytest.mark.timeout(400)
async def test_sigkill_torture(tmp_path: Path) -> None:
    need_tool("qemu-io")
    rep = await run_torture(tmp_path, kills=24)
    print(f"\ntorture: {rep.kills} kills survived, {rep.steps} steps ({rep.failed_steps} cut by a kill), "
          f"{rep.bookmarks} bookmarks, {rep.points_checked} points checked, bytes lost {rep.bytes_lost}, "
          f"{rep.seconds:.0f}s")
    assert not rep.mismatches, rep.mismatches
    assert rep.bytes_lost == 0
    assert sum(rep.kills.values()) == 24 and rep.kills["agent"] and rep.kills["appliance"]
    assert rep.points_checked >= 10 and rep.bookmarks >= 3
