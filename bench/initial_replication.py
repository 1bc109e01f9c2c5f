"""Initial replication: time from ``protect`` to state "protected" for a mixed disk, vs a raw single-process ceiling.

The disk (default 2 GiB) is built once and cached (``<tmp>/lifeboat-bench-cache``): regions of 64 KiB–4 MiB, about
half random bytes, a quarter repetitive text (log lines), an eighth holes and an eighth written zeros.

* Lifeboat: an appliance and an agent as separate processes (``lifeboat appliance run`` / ``agent run``); the
  clock starts at the protect call (control API, as ``lifeboat protect``) and stops when the status (polled every
  0.1 s, as ``lifeboat status --json``) says "protected", i.e. the SYNC_DONE record is in the vault.
* Ceiling (same run, same page-cache-hot disk): one Python process reads the disk's data regions (SEEK_DATA)
  in 1 MiB chunks, skips all-zero chunks (as the agent does), zstd level 1, AES-256-GCM, writes the output
  and fdatasyncs it every 8 MiB (the appliance's apply batch) and at the end. Run before and after Lifeboat; the
  faster one counts.

Throughput is the disk's size over the time (MB = 10^6 bytes). Target: Lifeboat ≥ 0.6× the ceiling.
``--profile`` samples both roles with py-spy during the replication (slower: report that number separately).

    .venv/bin/python bench/initial_replication.py [--quick] [--size-mib 2048] [--profile] [--keep]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
import _profile as P

C.ensure_venv()

TARGET = 0.6
CHUNK = 1 << 20
FSYNC_EVERY = 8 << 20


def build_disk(path: Path, size: int, seed: int = 7) -> None:
    rnd = random.Random(seed)
    words = ["lifeboat", "replica", "vault", "agent", "journal", "seq=%d", "offset=%d", "write", "ok", "INFO",
             "WARN", "sync", "done", "disk"]
    lines = [f"2025-11-25T17:{i % 60:02d}:{i * 7 % 60:02d} {' '.join(rnd.choice(words) for _ in range(8))} {i}\n"
             for i in range(50_000)]
    text = "".join(lines).encode()  # ~4 MiB of repetitive log text
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.truncate(size)
        pos = 0
        while pos < size:
            n = min(rnd.choice([64 << 10, 256 << 10, 1 << 20, 4 << 20]), size - pos)
            kind = rnd.random()
            if kind < 0.5:
                f.seek(pos)
                f.write(os.urandom(n))
            elif kind < 0.75:
                f.seek(pos)
                start = rnd.randrange(0, len(text) - n) if n < len(text) else 0
                f.write((text[start:start + n] * (n // len(text) + 1))[:n])
            elif kind < 0.875:
                f.seek(pos)
                f.write(bytes(n))  # allocated zeros: read, found all-zero, skipped
            pos += n  # else: a hole
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(path)


def ceiling(disk: Path, out: Path) -> tuple[float, int, int]:
    """(seconds, bytes read, bytes written) of read + zstd-1 + AES-256-GCM + write + fdatasync."""
    import zstandard
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from engine.fileio import data_extents
    aead, cctx = AESGCM(os.urandom(32)), zstandard.ZstdCompressor(level=1)
    fd = os.open(disk, os.O_RDONLY)
    ofd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    read = written = pending = 0
    t0 = time.perf_counter()
    try:
        for start, length in list(data_extents(fd)):
            for pos in range(start, start + length, CHUNK):
                data = os.pread(fd, min(CHUNK, start + length - pos), pos)
                read += len(data)
                if data.count(0) == len(data):
                    continue
                body = cctx.compress(data)
                if len(body) >= len(data):
                    body = data
                env = aead.encrypt(os.urandom(12), body, pos.to_bytes(8, "little"))
                os.write(ofd, env)
                written += len(env)
                pending += len(data)
                if pending >= FSYNC_EVERY:
                    os.fdatasync(ofd)
                    pending = 0
        os.fdatasync(ofd)
        return time.perf_counter() - t0, read, written
    finally:
        os.close(fd)
        os.close(ofd)
        out.unlink(missing_ok=True)


def copy_sparse(src: Path, dst: Path) -> None:
    """Copy keeping holes as holes and written zeros as written (cp --sparse would turn them into holes)."""
    from engine.fileio import data_extents
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        fo.truncate(os.fstat(fi.fileno()).st_size)
        for start, length in list(data_extents(fi.fileno())):
            done = 0
            while done < length:
                done += os.copy_file_range(fi.fileno(), fo.fileno(), length - done, start + done, start + done)


def du(path: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="512 MiB disk")
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--profile", action="store_true", help="py-spy both roles during the replication")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "lifeboat-bench-cache"),
                    help="where the mixed disk is kept between runs")
    ap.add_argument("--tmp", help="parent folder for the run's files (default: system temp)")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.size_mib = 512
    size = a.size_mib * C.MiB
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    master = cache / f"mixed-v1-{a.size_mib}m.img"
    if not master.exists():
        print(f"building the {a.size_mib} MiB mixed disk in {master} (once) ...", flush=True)
        build_disk(master, size)
    tmp = C.bench_tmp("initial", a.tmp)
    site = None
    try:
        disk = tmp / "disk.img"
        copy_sparse(master, disk)  # the agent owns (and may write) its disk
        alloc = os.stat(disk).st_blocks * 512
        print(f"disk {size / C.MiB:.0f} MiB, {alloc / C.MiB:.0f} MiB allocated; ceiling run 1 ...", flush=True)
        c1 = ceiling(disk, tmp / "ceiling.out")

        site = C.Site(tmp, disk).start()
        roles = site.roles()
        cpu0 = [p.cpu() for p in roles]
        spies = [P.start_spy(p, tmp / f"{p.name}.pyspy") for p in roles] if a.profile else []
        t0 = time.monotonic()
        site.protect()
        t1 = site.wait_state("protected", 3600)
        lb_s = t1 - t0
        cpu = [(p.cpu() - c) / lb_s for p, c in zip(roles, cpu0)]
        for s in spies:
            P.stop(s)
        vault_bytes = du(site.ahome / "vault")
        m = site.machine()
        print(f"lifeboat: protected after {lb_s:.2f}s; ceiling run 2 ...", flush=True)
        c2 = ceiling(disk, tmp / "ceiling.out")
        c_s, _, c_written = min(c1, c2)

        lb_mbps, c_mbps = size / lb_s / 1e6, size / c_s / 1e6
        ratio = lb_mbps / c_mbps
        print(f"\nInitial replication of a {a.size_mib} MiB mixed disk ({alloc / C.MiB:.0f} MiB allocated):")
        print(C.table([
            ["raw ceiling (1 process)", f"{c_s:.2f}", c_mbps, f"{c_written / C.MiB:.0f} MiB out",
             f"ceiling runs {c1[0]:.2f}s / {c2[0]:.2f}s", ""],
            ["lifeboat protect -> protected" + (" (profiled)" if a.profile else ""), f"{lb_s:.2f}", lb_mbps,
             f"{vault_bytes / C.MiB:.0f} MiB vault",
             f"appliance {cpu[0]:.2f} / agent {cpu[1]:.2f} cores",
             f"{ratio:.2f}x (target >= {TARGET}x) {C.verdict(ratio >= TARGET)}"],
        ], ["pipeline", "seconds", "MB/s (disk size)", "stored", "CPU", "ratio"]))
        print(f"\npeak RSS (VmHWM, target <= 300 MB): appliance {site.app.peak_rss() / 1e6:.0f} MB, agent "
              f"{site.agent.peak_rss() / 1e6:.0f} MB; state {m.get('state')}, points {m.get('points')}, "
              f"error {m.get('error')}")
        if a.profile:
            for p in roles:
                print(f"\npy-spy {p.name} (pid {p.pid}):")
                print(P.spy_summary(tmp / f"{p.name}.pyspy", lb_s))
        return 0 if ratio >= TARGET else 1
    finally:
        C.finish(site, [], tmp, a.keep)


if __name__ == "__main__":
    sys.exit(main())
