"""Micro-benchmark of the local vault: append throughput of 1 MiB WRITE records (seal included) and view read
throughput of a 256 MiB disk at the latest point (journal-backed, then replica-backed after a full prune).

Not a test. Usage: .venv/bin/python bench/vault_micro.py [--dir DIR] [--mib 256]
Numbers are noisy on shared machines (see /work/shared/FACTS.md): compare runs side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.records import Kind, Record  # noqa: E402
from engine.vault.base import DiskInfo  # noqa: E402
from engine.vault.journal import seal_record  # noqa: E402
from engine.vault.local import LocalVault  # noqa: E402

MiB = 1024 * 1024


def chunks(kind: str, n: int) -> list[bytes]:
    if kind == "random":
        return [os.urandom(MiB) for _ in range(n)]
    rng = random.Random(7)   # "mixed": text-like data zstd-1 compresses about 2-3x
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(4096)]
    out = []
    for _ in range(n):
        buf = bytearray()
        while len(buf) < MiB:
            buf += rng.choice(words) + (os.urandom(8) if rng.random() < 0.1 else b" ")
        out.append(bytes(buf[:MiB]))
    return out


async def run(root: Path, mib: int, kind: str, batch: int) -> None:
    key = os.urandom(32)
    vault = LocalVault(root / kind, key)
    mv = await vault.open_machine("bench")
    await mv.ensure_disks([DiskInfo(0, "disk0", mib * MiB)])
    data = chunks(kind, mib)
    sealer = vault.sealer

    t0 = time.perf_counter()
    seal_s = 0.0
    seq = 0
    for i in range(0, mib, batch):
        ts = time.perf_counter()
        recs = []
        for j in range(i, min(i + batch, mib)):
            seq += 1
            recs.append(seal_record(sealer, Record(Kind.WRITE, 0, seq, time.time_ns(), j * MiB, MiB, data[j])))
        seal_s += time.perf_counter() - ts
        await mv.append(recs)
    total = time.perf_counter() - t0
    stored = sum(p.stat().st_size for p in (root / kind / "bench" / "journal").iterdir())
    print(f"[{kind}] append {mib} x 1 MiB WRITE, batches of {batch}: {mib / total:7.0f} MB/s "
          f"(seal {mib / seal_s:6.0f} MB/s single thread, write+fsync {mib / (total - seal_s):6.0f} MB/s; "
          f"journal {stored / MiB:.0f} MiB on disk)")

    async def read_all(label: str) -> None:
        t = time.perf_counter()
        v = await mv.open_view(mv.last_seq, 0)
        opened = time.perf_counter() - t
        step = 4 * MiB
        for pos in range(0, v.size, step):
            await v.read(pos, step)
        el = time.perf_counter() - t
        print(f"[{kind}] view read of {mib} MiB at latest point ({label}), 4 MiB reads: {mib / el:7.0f} MB/s "
              f"(open_view {opened * 1000:.1f} ms, {v._map.count} extents)")
        for pos in range(0, v.size, step):   # untimed: the bytes are right
            assert await v.read(pos, step) == b"".join(data[pos // MiB:(pos + step) // MiB])
        await v.close()

    await read_all("journal records")
    t = time.perf_counter()
    await mv.prune(mv.last_seq)
    el = time.perf_counter() - t
    print(f"[{kind}] prune folding {mib} MiB into the replica: {mib / el:7.0f} MB/s")
    await read_all("replica")
    await vault.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=None, help="where to put the vault (default: a temp dir)")
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8, help="records per append (group commit)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        for kind in ("random", "mixed"):
            await run(Path(d), a.mib, kind, a.batch)


if __name__ == "__main__":
    asyncio.run(main())
