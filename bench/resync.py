"""Resync benchmark (issue 3), each against a baseline measured in the same run.

1. A 1 GiB disk with 1% of its 64 KiB blocks changed behind the agent's back: Lifeboat's resync (checksums on
   both sides, only differing blocks sent) vs ``rsync --inplace --no-whole-file -B 65536`` between the same two
   files. Targets: time ratio <= 0.3, bytes-sent ratio <= 1.05. The result is verified: the latest point after
   the resync must equal the source (sha256).
2. A 16 GiB sparse disk after a simulated agent crash: the resync compares only the activity log's extents;
   baseline: a full-disk compare of the same disk.

Run: ``.venv/bin/python bench/resync.py [--size-mib 1024] [--sparse-gib 16]``. Both files stay in the page cache.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_tmp, ensure_venv  # noqa: E402

ensure_venv()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from engine.fileio import sha256_file  # noqa: E402
from engine.records import BLOCK  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30


def warm(*paths: Path) -> None:
    for p in paths:
        with open(p, "rb") as f:
            while f.read(8 << 20):
                pass


async def site(tmp: Path, disk: Path):  # type: ignore[no-untyped-def]
    from tests.engine.harness import Site
    from engine.policy import Policy
    s = Site(tmp)
    app = await s.start_appliance()
    app.set_policy(Policy("default", crash_interval=1, resync_window="always"))
    await s.register()
    await s.start_agent({"d0": disk})
    await app.protect("vm1")
    await s.wait_for(lambda: app.machine_status("vm1")["state"] == "protected", 1800, "initial sync")
    await s.wait_caught_up(timeout=600)
    return s


async def latest_sha(s, tmp: Path) -> str:  # type: ignore[no-untyped-def]
    job = await s.app.recovery.test_failover("vm1", "latest", export_dir=str(tmp / "out"), nbd=None)
    await s.wait_for(lambda: s.app.recovery.job(job.id).finished, 600, "export")
    assert s.app.recovery.job(job.id).error is None
    d = sha256_file(tmp / "out" / "d0.img")
    await s.app.recovery.cleanup("vm1")
    return d


async def until(cond, timeout: float) -> None:  # type: ignore[no-untyped-def]
    """Fine-grained polling (2 ms) so the measurement is not the poll interval."""
    deadline = time.perf_counter() + timeout
    while not cond():
        if time.perf_counter() > deadline:
            raise TimeoutError("benchmark step timed out")
        await asyncio.sleep(0.002)


async def resync_once(s, disk: Path) -> tuple[float, int, int, int]:  # type: ignore[no-untyped-def]
    agent = await s.start_agent({"d0": disk})
    await s.wait_for(lambda: agent.connected.is_set(), 30, "agent")
    b0 = agent.bytes_sent
    t0 = time.perf_counter()
    s.app.request_resync("vm1", now=True)
    await until(lambda: agent.resync.compared_blocks > 0 or agent.resync.pending(), 30)
    await until(lambda: not agent.resync.pending() and not agent.resync.chunks and
                not agent.cfg.get("resync_open") and s.app.runtimes["vm1"].vault.last_seq >= agent.capture.seq, 1800)
    dt = time.perf_counter() - t0
    return dt, agent.bytes_sent - b0, agent.resync.compared_blocks, agent.resync.sent_blocks


async def part1(size_mib: int) -> list[tuple]:
    tmp = bench_tmp("resync")
    try:
        disk, copy = tmp / "src.img", tmp / "dst.img"
        rnd = random.Random(1)
        with open(disk, "wb") as f:
            for _ in range(size_mib):
                f.write(rnd.randbytes(MiB))
        s = await site(tmp, disk)
        await s.agent.stop()
        shutil.copyfile(disk, copy)                      # rsync's destination: the same data as the replica
        nblocks = size_mib * MiB // BLOCK
        changed = rnd.sample(range(nblocks), nblocks // 100)
        with open(disk, "r+b") as f:
            for b in changed:
                f.seek(b * BLOCK)
                f.write(rnd.randbytes(BLOCK))
        warm(disk, copy)
        t0 = time.perf_counter()
        out = subprocess.run(["rsync", "--inplace", "--no-whole-file", "-B", "65536", "--ignore-times", "--stats", str(disk),
                              str(copy)], check=True, capture_output=True, text=True).stdout
        rsync_t = time.perf_counter() - t0
        sent = int(re.search(r"Total bytes sent: ([\d,]+)", out).group(1).replace(",", ""))
        recv = int(re.search(r"Total bytes received: ([\d,]+)", out).group(1).replace(",", ""))
        assert sha256_file(copy) == sha256_file(disk)
        warm(disk)
        lb_t, lb_bytes, compared, sent_blocks = await resync_once(s, disk)
        ok = await latest_sha(s, tmp) == sha256_file(disk)
        await s.stop()
        return [("1% of 64 KiB blocks changed", f"{size_mib} MiB", len(changed)),
                ("rsync --inplace --no-whole-file -B 65536 -I", f"{rsync_t:.3f} s", f"{sent:,} B sent ({recv:,} B back)"),
                ("lifeboat resync --now", f"{lb_t:.3f} s", f"{lb_bytes:,} B sent ({sent_blocks} blocks of "
                                                           f"{compared} compared)"),
                ("ratio lifeboat / rsync", f"time {lb_t / rsync_t:.2f} (target <= 0.3)",
                 f"bytes {lb_bytes / sent:.3f} (target <= 1.05)"),
                ("latest point == source (sha256)", str(ok), "")]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def part2(sparse_gib: int) -> list[tuple]:
    from engine.agent.dirty_map import EXTENT
    tmp = bench_tmp("resync-sparse")
    try:
        disk = tmp / "sparse.img"
        with open(disk, "wb") as f:
            f.truncate(sparse_gib * GiB)
            for i in range(0, sparse_gib * GiB, GiB):     # a little data in every GiB
                f.seek(i)
                f.write(random.randbytes(MiB))
        s = await site(tmp, disk)
        agent = s.agent
        for off in (3 * GiB + 5, 9 * GiB + 77):          # writes not yet flushed when the "power" goes
            await agent.backends[0].write(off % (sparse_gib * GiB), memoryview(random.randbytes(8192)), False)
        await s.wait_caught_up()
        await s.crash_agent()                            # crash: no clean stop
        t0 = time.perf_counter()
        agent = await s.start_agent({"d0": disk})
        marked = agent.capture.dirty.count()
        await s.wait_for(lambda: agent.connected.is_set(), 30, "agent")
        # the crash resync is queued by the agent itself; the policy's window ("always") lets it run at once
        await s.wait_for(lambda: not agent.resync.pending() and not agent.resync.chunks
                         and not agent.cfg.get("resync_open"), 1800, "crash resync")
        crash_t = time.perf_counter() - t0
        crash_cmp = agent.resync.compared_blocks
        await agent.stop()
        s.agent = None
        full_t, _, full_cmp, _ = await resync_once(s, disk)
        total = sparse_gib * GiB // BLOCK
        await s.stop()
        return [(f"{sparse_gib} GiB sparse disk, crash with 2 active extents", f"{total:,} blocks", ""),
                ("resync after crash (activity-log extents)", f"{crash_t:.2f} s",
                 f"{crash_cmp:,} blocks compared ({marked:,} marked; {EXTENT >> 20} MiB extents)"),
                ("baseline: full-disk compare", f"{full_t:.2f} s", f"{full_cmp:,} blocks compared"),
                ("ratio", f"time {crash_t / full_t:.3f}", f"blocks {crash_cmp / full_cmp:.4f}")]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def table(rows: list[tuple]) -> None:
    w = [max(len(str(r[i])) for r in rows) for i in range(3)]
    for r in rows:
        print("  " + "  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--sparse-gib", type=int, default=16)
    a = ap.parse_args()
    print("resync vs rsync, same data, same run")
    table(asyncio.run(part1(a.size_mib)))
    print("\nresync after a simulated agent crash: only the activity log's regions are compared")
    table(asyncio.run(part2(a.sparse_gib)))


if __name__ == "__main__":
    main()
