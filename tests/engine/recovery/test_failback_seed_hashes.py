"""The failback seed's shortcut (engine/recovery/failback.py, ``PointHashes``): checksums of a recovered disk taken
from the process server's block-hash index instead of reading the vault, on a real local vault, a real index fed as
the pipeline feeds it, and a real overlay. Every checksum it gives must equal the hash of what the overlay reads;
blocks the recovered VM wrote, blocks touched after the failover point and blocks unknown to the index are left
to be read."""

from __future__ import annotations

import random
import time
from pathlib import Path
from types import SimpleNamespace

import xxhash

from engine.appliance.blockhash import BLOCK, BlockHashIndex, full_block_hashes
from engine.recovery.failback import PointHashes
from engine.recovery.overlay import OverlayBackend
from engine.records import Kind, Record
from engine.vault.base import DiskInfo
from engine.vault.journal import seal_record
from engine.vault.local import LocalVault

SIZE = 64 * BLOCK + 4096          # the last block is short
KEY = bytes(range(32))


async def test_point_hashes_are_exact_and_skip_what_changed(tmp_path: Path) -> None:
    rng = random.Random(7)
    vault = LocalVault(tmp_path / "vault", KEY)
    mv = await vault.open_machine("m")
    await mv.ensure_disks([DiskInfo(0, "d0", SIZE)])
    idx = BlockHashIndex(tmp_path / "0.bhx", SIZE, 0)
    seq = 0

    async def put(kind: Kind, off: int, n: int) -> None:
        nonlocal seq
        seq += 1
        r = Record(kind, 0, seq, time.time_ns(), off, n, rng.randbytes(n) if kind == Kind.WRITE else b"")
        await mv.append([seal_record(mv._sealer, r)])
        idx.apply(r, full_block_hashes(r))

    for b in range(0, 40, 2):                       # whole blocks
        await put(Kind.WRITE, b * BLOCK, BLOCK)
    await put(Kind.WRITE, 41 * BLOCK + 100, 5000)   # a partial block: unknown to the index
    await put(Kind.ZERO, 10 * BLOCK, 3 * BLOCK)
    await put(Kind.WRITE, 63 * BLOCK, BLOCK + 4096)  # into the short last block
    point = seq
    await put(Kind.WRITE, 20 * BLOCK, BLOCK)         # after the failover point
    await put(Kind.WRITE, 50 * BLOCK, 2 * BLOCK)
    view = await mv.open_view(point, 0)
    ov = OverlayBackend(view, tmp_path / "d0.overlay", durable=True)
    try:
        await ov.write(4 * BLOCK + 512, memoryview(b"x" * 1000), False)   # the recovered VM writes
        await ov.write(30 * BLOCK, memoryview(rng.randbytes(BLOCK)), False)
        blocks = list(range((SIZE + BLOCK - 1) // BLOCK))
        rt = SimpleNamespace(hashes={0: idx}, hashes_upto=seq)
        known = PointHashes(ov, rt, 0, point).known(blocks)   # type: ignore[arg-type]
        for b, h in zip(blocks, known):
            data = await ov.read(b * BLOCK, min(BLOCK, SIZE - b * BLOCK))
            if h is not None:
                assert h == xxhash.xxh3_128_digest(data), b
        missing = {b for b, h in zip(blocks, known) if h is None}
        assert {4, 30} <= missing          # written by the recovered VM
        assert {20, 50, 51} <= missing     # touched after the point
        assert 41 in missing               # unknown to the index (partial write)
        assert len(missing) <= 8, sorted(missing)   # everything else comes from the index: nothing read
        # the index behind the point, or closed: everything is read
        assert PointHashes(ov, SimpleNamespace(hashes={0: idx}, hashes_upto=point - 1), 0,   # type: ignore[arg-type]
                           point).known(blocks) == [None] * len(blocks)
        assert PointHashes(ov, SimpleNamespace(hashes={}, hashes_upto=seq), 0,   # type: ignore[arg-type]
                           point).known(blocks) == [None] * len(blocks)
    finally:
        ov.close()
        await view.close()
        idx.close(seq)
        await mv.close()
