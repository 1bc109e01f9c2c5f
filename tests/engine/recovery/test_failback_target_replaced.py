"""Reverse replication (engine/recovery/failback.py, ``Reverse``) when the master target comes back on a new link
before the appliance learned that the old one died: the original site's agent was SIGKILLed or its host lost power
mid-batch, no FIN reached the appliance, and the restarted agent connected again. Attaching the new link closes the
old one, whose batch then fails: the blocks that batch had in flight must be compared and sent again to the new
target, not stay in flight for ever (the seed never done, the final sync never drained). Real files on both sides:
the source is a recovered disk as Lifeboat serves it (``ImageBackend``), the targets are real ``MasterTarget`` s."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from engine.appliance.master_target import MasterTarget
from engine.records import BLOCK
from engine.recovery.failback import REPROTECTING, LocalTarget, Reverse, TargetLost
from engine.recovery.image_backend import ImageBackend

SIZE = 48 * BLOCK


class SilentlyDeadLink(LocalTarget):
    """The old link: its first batch never arrives, and the loss shows only when the link is closed (as the
    appliance closes it when the agent connects again)."""

    def __init__(self, mt: MasterTarget) -> None:
        super().__init__(mt)
        self.writing = asyncio.Event()
        self.closed = asyncio.Event()

    async def write(self, batch: int, disk: int, extents: list[tuple[int, bytes]]) -> None:
        self.writing.set()
        await self.closed.wait()
        raise TargetLost("the old link was closed")

    def close(self) -> None:
        self.closed.set()
        super().close()


async def test_a_target_replaced_mid_batch_gets_the_blocks_in_flight(tmp_path: Path) -> None:
    src_path, dst_path = tmp_path / "recovered.img", tmp_path / "original.img"
    src_path.write_bytes(os.urandom(SIZE))
    dst_path.write_bytes(bytes(SIZE))
    source = ImageBackend(src_path)
    st: dict[str, Any] = {"state": REPROTECTING, "session": "s1", "target": {"kind": "original"}}
    rep = Reverse("m", tmp_path / "reverse", ["d0"], [source], st, lambda: None)
    rep.changes.mark_all()   # the seed: every block starts dirty
    old = SilentlyDeadLink(MasterTarget({0: dst_path}, tmp_path))
    rep.attach(old)
    rep.start()
    try:
        await asyncio.wait_for(old.writing.wait(), 10)
        assert rep.changes.dirty.any_inflight()
        rep.attach(LocalTarget(MasterTarget({0: dst_path}, tmp_path)))   # the agent is back on a new link
        await rep.drained(timeout=20)
        assert st["seeded"] and st["state"] == "reprotected"
        assert not rep.changes.dirty.any_inflight() and rep.pending_blocks() == 0
        assert dst_path.read_bytes() == src_path.read_bytes()
    finally:
        await rep.stop()
        rep.changes.close()
        if rep.target is not None:
            rep.target.close()
        source.close()
