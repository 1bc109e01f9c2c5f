"""Durable appends: the process server's cache and the vault journal (``engine.directio.DirectAppender``: padded
``O_DIRECT`` writes + ``fdatasync``) against the buffered ``writev`` + ``fdatasync`` they used before, on fresh
segment files of this machine's file system, with the CPU each costs.

Each run appends ``--mib`` MiB in ``--chunk-kib`` KiB appends (a group commit of the cache is 1-8 MiB) to new
64 MiB segment files, one after the other, fsyncing every append, like the cache does. Both variants run in the
same process, alternating, ``--reps`` times; the best of each is compared.

    .venv/bin/python bench/append_io.py [--mib 1024] [--chunk-kib 4096] [--reps 3] [--tmp DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

C.ensure_venv()

from engine.directio import DirectAppender  # noqa: E402

SEGMENT = 64 * C.MiB


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def buffered(folder: Path, data: bytes, total: int) -> None:
    done, seg, fd, size = 0, 0, -1, 0
    while done < total:
        if fd < 0 or size >= SEGMENT:
            if fd >= 0:
                os.close(fd)
            fd = os.open(folder / f"{seg:08d}.lbc", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            seg, size = seg + 1, 0
        os.writev(fd, [data])
        os.fdatasync(fd)
        done += len(data)
        size += len(data)
    os.close(fd)


def direct(folder: Path, data: bytes, total: int) -> bool:
    done, seg, app, used_direct = 0, 0, None, True
    while done < total:
        if app is None or app.pos >= SEGMENT:
            if app is not None:
                app.close()
            app = DirectAppender(folder / f"{seg:08d}.lbc")
            used_direct = used_direct and app.direct
            seg += 1
        app.append([data], sync=True)
        done += len(data)
    assert app is not None
    app.close()
    return used_direct


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--chunk-kib", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tmp", help="parent folder (default: system temp); use the file system the appliance uses")
    a = ap.parse_args()
    tmp = C.bench_tmp("append-io", a.tmp)
    total = a.mib * C.MiB
    data = os.urandom(a.chunk_kib * 1024 - 123)    # records do not come in block multiples: padding is exercised
    rows, best = [], {"buffered writev + fdatasync": (0.0, 0.0), "O_DIRECT padded + fdatasync": (0.0, 0.0)}
    note = ""
    try:
        for rep in range(1, a.reps + 1):
            for name in best:
                folder = tmp / f"{name[:3]}-{rep}"
                folder.mkdir()
                c0, t0 = _cpu(), time.perf_counter()
                if name.startswith("buffered"):
                    buffered(folder, data, total)
                elif not direct(folder, data, total):
                    note = f"!! {tmp} refuses O_DIRECT: the 'O_DIRECT' rows went through the page cache"
                dt, cpu = time.perf_counter() - t0, _cpu() - c0
                mbps = total / dt / 1e6
                rows.append([rep, name, f"{mbps:,.0f}", f"{cpu:.2f}", f"{cpu / (total / 1e9):.2f}"])
                if mbps > best[name][0]:
                    best[name] = (mbps, cpu / (total / 1e9))
                for p in folder.iterdir():
                    p.unlink()
                folder.rmdir()
        print(C.table(rows, ["round", "appends", "MB/s", "CPU s", "CPU s per GB"]))
        (bm, bc), (dm, dc) = best.values()
        print(f"\nbest of {a.reps}, {a.mib} MiB in {a.chunk_kib} KiB appends, fresh 64 MiB segments, fsync each:")
        print(C.table([["buffered writev + fdatasync (before)", f"{bm:,.0f}", f"{bc:.2f}", ""],
                       ["O_DIRECT padded (DirectAppender)", f"{dm:,.0f}", f"{dc:.2f}",
                        f"{dm / bm:.2f}x the MB/s, {dc / bc if bc else 0:.2f}x the CPU"]],
                      ["appends", "MB/s", "CPU s per GB", "ratio"]))
        if note:
            print(note)
        return 0
    finally:
        for p in sorted(tmp.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        tmp.rmdir()


if __name__ == "__main__":
    sys.exit(main())
