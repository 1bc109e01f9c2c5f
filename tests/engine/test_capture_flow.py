"""The agent capture's flow rules: a FLUSH waits (bounded) for the process server's acknowledgements before it
journals, and a write waits for room while the link keeps up (congestion), so that a link that keeps up costs the
protected machine no second write of its data (ARCHITECTURE.md §3 step 3). Real files, a real event loop."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from engine.agent import capture as C
from engine.agent.capture import CaptureBackend, MachineCapture
from engine.agent.dirty_map import EXTENT

MiB = 1024 * 1024


def _machine(tmp_path: Path, size: int = 64 * MiB) -> tuple[MachineCapture, CaptureBackend]:
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(size)
    cap = MachineCapture(tmp_path / "journal")
    cap.capturing = True
    cap.ship_from_memory(True)              # the link is up
    return cap, CaptureBackend(cap, 0, "disk0", disk)


def _journaled(cap: MachineCapture) -> list[int]:
    return [r.seq for r in cap.journal.read_after(0, 1 << 30)]


async def test_flush_waits_for_acknowledgement_instead_of_journaling(tmp_path: Path) -> None:
    cap, disk = _machine(tmp_path)
    cap.ack_eta = lambda n: 0.02            # the link acknowledges within about 20 ms
    for i in range(8):
        await disk.write(i * MiB, memoryview(os.urandom(256 * 1024)), False)
    assert cap.take_unsent(0, 1 << 30) is not None
    last = cap.last_seq
    asyncio.get_running_loop().call_later(0.03, cap.acked, last)
    t0 = time.monotonic()
    await disk.flush()
    waited = time.monotonic() - t0
    assert cap.spilled_bytes == 0 and _journaled(cap) == []      # durable at the process server: no local copy
    assert 0.02 <= waited < C.FLUSH_ACK_WAIT
    disk.close()
    cap.journal.close()


async def test_flush_journals_at_once_when_the_link_is_too_slow(tmp_path: Path) -> None:
    cap, disk = _machine(tmp_path)
    cap.ack_eta = lambda n: float("inf")    # e.g. no acknowledgement measured yet, or a slow WAN
    for i in range(4):
        await disk.write(i * MiB, memoryview(os.urandom(65536)), False)
    t0 = time.monotonic()
    await disk.flush()
    assert time.monotonic() - t0 < C.FLUSH_ACK_WAIT
    assert _journaled(cap) == [1, 2, 3, 4] and cap.spilled_bytes > 0
    disk.close()
    cap.journal.close()


async def test_flush_journals_only_what_stays_unacknowledged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(C, "FLUSH_ACK_WAIT", 0.1)
    cap, disk = _machine(tmp_path)
    cap.ack_eta = lambda n: 0.01
    for i in range(6):
        await disk.write(i * MiB, memoryview(os.urandom(65536)), False)
    cap.take_unsent(0, 1 << 30)
    cap.acked(3)                            # 1..3 are at the process server; 4..6 never get an answer
    flush = asyncio.create_task(disk.flush())
    await asyncio.sleep(0)                  # the flush has taken its target (seq 6) and syncs the backing file
    await disk.write(10 * MiB, memoryview(os.urandom(4096)), False)   # seq 7: after the flush began
    await flush
    assert _journaled(cap) == [4, 5, 6]     # not 7: the flush does not cover it, it stays in memory
    assert cap.take_unsent(6, 1 << 30) is not None
    disk.close()
    cap.journal.close()


async def test_flush_retires_extents_only_without_changes_meanwhile(tmp_path: Path) -> None:
    cap, disk = _machine(tmp_path)
    cap.ack_eta = lambda n: float("inf")
    await disk.write(0, memoryview(os.urandom(4096)), False)
    assert cap.al.active
    await disk.flush()
    assert not cap.al.active                # backing and journal durable: the crash resync need not look here
    await disk.write(0, memoryview(os.urandom(4096)), False)
    cap._al_retired.clear()
    flush = asyncio.create_task(disk.flush())
    await asyncio.sleep(0)
    await disk.write(40 * MiB, memoryview(os.urandom(4096)), False)   # during the flush's fdatasync
    await flush
    assert cap.al.active == {(0, 40 * MiB // EXTENT)}   # kept: that write may not be durable yet
    disk.close()
    cap.journal.close()


async def test_congestion_holds_a_write_until_acknowledgements_make_room(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(C, "CONGESTION_BYTES", 5 * MiB // 2)
    monkeypatch.setattr(C, "CONGESTION_WAIT", 5.0)
    cap, disk = _machine(tmp_path)
    for i in range(3):
        await disk.write(i * MiB, memoryview(os.urandom(MiB)), False)   # 3 MiB held: over the mark
    assert cap.congestion_waits == 0
    cap.take_unsent(0, 1 << 30)
    held = asyncio.create_task(disk.write(5 * MiB, memoryview(os.urandom(4096)), False))
    await asyncio.sleep(0.05)
    assert not held.done() and cap.congestion_waits == 1 and cap.last_seq == 3   # waiting, not yet written
    t0 = time.monotonic()
    cap.acked(2)                            # room again
    await held
    assert time.monotonic() - t0 < 0.5 and cap.last_seq == 4 and cap.spilled_bytes == 0
    disk.close()
    cap.journal.close()


async def test_congestion_gives_way_to_the_journal_on_a_stalled_link(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(C, "CONGESTION_BYTES", 2 * MiB)
    monkeypatch.setattr(C, "SHIP_MEMORY", 3 * MiB)
    monkeypatch.setattr(C, "CONGESTION_WAIT", 0.05)
    cap, disk = _machine(tmp_path)
    data = os.urandom(MiB)
    t0 = time.monotonic()
    for i in range(6):                      # nothing is ever acknowledged
        await disk.write(i * MiB, memoryview(data), False)
    assert time.monotonic() - t0 < 2.0      # each write waited at most CONGESTION_WAIT
    assert cap.spilled_bytes > 0 and _journaled(cap)[0] == 1     # the backlog went to the journal
    with open(disk.path, "rb") as f:
        assert f.read(MiB) == data          # and every write reached the disk
    disk.close()
    cap.journal.close()


async def test_link_drop_releases_waiting_flushes_and_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(C, "CONGESTION_BYTES", MiB)
    monkeypatch.setattr(C, "CONGESTION_WAIT", 5.0)
    cap, disk = _machine(tmp_path)
    cap.ack_eta = lambda n: 0.4
    await disk.write(0, memoryview(os.urandom(2 * MiB)), False)
    flush = asyncio.create_task(disk.flush())
    held = asyncio.create_task(disk.write(4 * MiB, memoryview(os.urandom(4096)), False))
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    cap.ship_from_memory(False)             # the link drops: everything goes to the journal, nobody waits
    await asyncio.gather(flush, held)
    assert time.monotonic() - t0 < 0.3
    assert _journaled(cap) == [1, 2]
    disk.close()
    cap.journal.close()
