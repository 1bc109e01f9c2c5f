"""One deterministic run of the storage layer's file formats, for comparing implementations byte for byte:
``python -m tests.engine.platform.storage_scenario DIR`` writes into ``DIR`` and prints JSON: the sha256 of every
file it leaves, of everything read back, and which implementation ran (tests/engine/platform/test_portable_storage.py
runs it once per implementation)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from pathlib import Path

from engine import fileio, platform
from engine.directio import DirectAppender
from engine.home import atomic_write
from engine.records import Kind, Record
from engine.segment_log import SegmentLog

KiB = 1024


def _records(rng: random.Random, first: int, n: int) -> list[Record]:
    out = []
    for seq in range(first, first + n):
        size = rng.choice((1, 100, 4095, 4096, 4097, 65536, 200 * KiB))
        out.append(Record(Kind.WRITE, seq % 2, seq, seq * 1000, rng.randrange(0, 1 << 30), size, rng.randbytes(size)))
        if seq % 7 == 0:
            out.append(Record(Kind.ZERO, 0, seq + 1_000_000, seq, 0, 1 << 20))   # seqs increase: renumbered below
    for i, r in enumerate(out):
        r.seq = first + i
    return out


def run(root: Path) -> dict[str, object]:
    rng = random.Random(11)
    readback = hashlib.sha256()
    direct = []
    for name, fsync_each in (("cache", True), ("journal", False)):
        log = SegmentLog(root / name, ".lbc" if fsync_each else ".lbl", fsync_each=fsync_each,
                         segment_bytes=512 * KiB)
        seq = 1
        for _ in range(12):
            recs = _records(rng, seq, rng.randint(1, 9))
            parts = [p for r in recs for p in r.encode_parts() if len(p)]
            log.append(recs, parts)
            seq = recs[-1].seq + 1
        if log._app is not None:
            direct.append(log._app.direct)
        log.sync()
        log.trim(seq // 3)
        for rec in log.read_after(0, 1 << 30):
            readback.update(rec.seq.to_bytes(8, "little") + bytes(rec.data))
        log.close()
        reopened = SegmentLog(root / name, ".lbc" if fsync_each else ".lbl", fsync_each=fsync_each,
                              segment_bytes=512 * KiB)
        assert reopened.last_seq == seq - 1 and reopened.corruption is None
        reopened.close()

    app = DirectAppender(root / "appended")
    direct.append(app.direct)
    for n in (1, 4095, 4096, 4097, 100_000, 9 * 1024 * KiB):
        app.append([rng.randbytes(n // 2), memoryview(rng.randbytes(n - n // 2))])
    app.close()

    fd = os.open(root / "sparse", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, 4 << 20)
        for off in range(0, 4 << 20, 300 * KiB):
            platform.pwrite(fd, rng.randbytes(50 * KiB), off)
        if not fileio.punch_hole(fd, 100 * KiB, 700 * KiB):
            fileio.write_zeros(fd, 100 * KiB, 700 * KiB)
        fileio.write_zeros(fd, 2 << 20, 333 * KiB)
        platform.fdatasync(fd)
        image = bytearray(os.fstat(fd).st_size)   # the file rebuilt from its data extents (holes read as zeros)
        for off, n in fileio.data_extents(fd):
            image[off:off + n] = platform.pread(fd, n, off)
        readback.update(image)
    finally:
        os.close(fd)

    atomic_write(root / "home.json", b'{"a": 1}\n')
    files = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(root.rglob("*")) if p.is_file()}
    return {"platform": platform.NAME, "direct": direct, "files": files, "readback": readback.hexdigest()}


if __name__ == "__main__":
    print(json.dumps(run(Path(sys.argv[1]))))
