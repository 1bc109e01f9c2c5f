"""The disk's own ceiling for ``capture.py``: how fast can a copy finish when every byte it writes is also written by
the process server's cache and the vault journal, all on this one disk?

No Lifeboat role runs here, only the writes each makes, with the same calls (threads, so the writes overlap as
the processes' do):

* **baseline** (what nbdkit does): ``--mib`` MiB of buffered ``pwrite`` to a fresh sparse file in 256 KiB
  requests, then ``fdatasync`` (nbdcopy's ``--flush``);
* **+ cache**: the same, while a second thread appends the same bytes to fresh 64 MiB segments with
  :class:`~engine.directio.DirectAppender` (``O_DIRECT`` + ``fdatasync``) in 4 MiB group commits, as the process
  server's cache does before it ACKs;
* **+ cache + vault**: and a third thread appends them again in 8 MiB batches (the vault journal; a random source
  does not compress).

Each run is timed until every stream is durable; MB/s is of the copied data. The ratio of a row to the baseline
is the best ``capture.py`` could reach on this disk if CPU cost nothing. The 3-stream row is today's design. The
2-stream row is the ceiling if the vault did not write during the copy (it would catch up from the cache later).
Rows alternate for ``--reps`` rounds; the best of each is compared.

    .venv/bin/python bench/disk_ceiling.py [--mib 1024] [--reps 3] [--tmp DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

C.ensure_venv()

from append_io import direct  # noqa: E402  (the cache's and vault journal's appends: DirectAppender)

REQUEST = 256 * 1024


def backing(path: Path, data: bytes, total: int) -> None:
    """nbdkit's file plugin under nbdcopy: pwrite per request into a sparse file, fdatasync at the end."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, total)
        mv = memoryview(data)
        for off in range(0, total, REQUEST):
            os.pwrite(fd, mv[off % len(data):off % len(data) + REQUEST], off)
        os.fdatasync(fd)
    finally:
        os.close(fd)


def run(tmp: Path, data: bytes, total: int, streams: int) -> float:
    work = tmp / f"run-{streams}"
    work.mkdir()
    jobs = [threading.Thread(target=backing, args=(work / "disk.img", data, total))]
    if streams >= 2:
        (work / "cache").mkdir()
        jobs.append(threading.Thread(target=direct, args=(work / "cache", data[:4 * C.MiB], total)))
    if streams >= 3:
        (work / "vault").mkdir()
        jobs.append(threading.Thread(target=direct, args=(work / "vault", data[:8 * C.MiB], total)))
    os.sync()
    t0 = time.monotonic()
    for j in jobs:
        j.start()
    for j in jobs:
        j.join()
    secs = time.monotonic() - t0
    shutil.rmtree(work)
    os.sync()
    return total / secs / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tmp", help="parent folder (default: system temp; use the file system capture.py uses)")
    a = ap.parse_args()
    tmp = C.bench_tmp("disk-ceiling", a.tmp)
    total = a.mib * C.MiB
    data = os.urandom(64 * C.MiB)        # reused cyclically: the disk, not the generator, is measured
    names = {1: "baseline: backing only (nbdkit)", 2: "+ cache (O_DIRECT, 4 MiB commits)",
             3: "+ cache + vault journal (today)"}
    best: dict[int, float] = {1: 0.0, 2: 0.0, 3: 0.0}
    try:
        for rep in range(1, a.reps + 1):
            for streams in (1, 2, 3):
                mbps = run(tmp, data, total, streams)
                best[streams] = max(best[streams], mbps)
                print(f"  round {rep} {names[streams]:<36} {mbps:8.1f} MB/s of copied data", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nDisk ceiling for a {a.mib} MiB copy, best of {a.reps} (MB/s of the copy; every stream durable):")
    print(C.table([[names[s], f"{best[s]:,.1f}", f"{best[s] / best[1]:.2f}x"] for s in (1, 2, 3)],
                  ["writes per copied byte", "MB/s", "ratio to baseline"]))
    print(f"capture.py's target is 0.5x: on this disk the design's three writes allow at most "
          f"{best[3] / best[1]:.2f}x before any CPU is spent.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
