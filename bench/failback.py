"""Failback (issue 14): reprotect + fail back of a 4 GiB disk with 1 % of its 64 KiB blocks changed on the recovered
machine, against rsync of the same change, in the same run.

The machine is protected (appliance and agent as processes), failed over to the local recovery host (one boot), and
1 % of its blocks are written with random data through the recovered VM's disk (Lifeboat's NBD overlay, as the VM's
own writes are). Then:

* **Lifeboat**: ``lifeboat reprotect --to original`` (the seed: xxh3_128 of every block on both sides, only the
  blocks that differ go to the original site's agent, the master target) and ``lifeboat failback`` (final sync, flush,
  release). Time = the seed (from the master target's attach to the end of the full compare, as the reverse loop
  records them: ``seed_started_at`` → ``seeded_at``) + failback's ``final-sync`` and ``flush-target`` steps (the wait
  for the original site's agent to connect and the guest's shutdown are not the transfer's time; both are
  printed); bytes = what the reverse replication put on its link (checksums, requests and data: the ``bytes_sent``
  of ``lifeboat status``). The seed reads only the blocks the recovered VM wrote (the rest: checksums from the
  vault's block-hash index); ``--dense`` fills the original disk, so the master target has no holes to skip.
* **rsync**: ``rsync --inplace --no-whole-file -I -B 65536 --stats`` of the recovered disk (exported before
  reprotect) onto a copy of the original disk as it was at failover; time = wall clock, bytes = its total bytes
  sent + received (literal data, block checksums and tokens).

Targets: Lifeboat ≤ 0.5× rsync's time and ≤ 1.05× its bytes. Both end states are checked byte for byte.

    .venv/bin/python bench/failback.py              # 4 GiB, 1 %
    .venv/bin/python bench/failback.py --size-gib 1 --keep
    .venv/bin/python bench/failback.py --size-gib 1 --dense   # a fully allocated disk

Needs the recovery host (scripts/recovery-host.sh start), rsync, qemu-io/qemu-img and the recovery tests' boot image.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import GiB, MiB, REPO, Site, bench_tmp, ensure_venv, finish, need, table, verdict

URI = "qemu:///system"
BLOCK = 64 * 1024
TIME_TARGET, BYTES_TARGET = 0.5, 1.05


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


def write_blocks(url: str, blocks: list[int], tmp: Path) -> None:
    """Random data into ``blocks`` through an NBD client: 256 blocks per qemu-io run, a flush at the end of each."""
    for i in range(0, len(blocks), 256):
        cmds = []
        for k, b in enumerate(blocks[i:i + 256]):
            f = tmp / f"blk-{k}.bin"
            f.write_bytes(os.urandom(BLOCK))
            cmds += ["-c", f"write -s {f} {b * BLOCK} {BLOCK}"]
        cmds += ["-c", "flush"]
        subprocess.run(["qemu-io", "-f", "raw", url, *cmds], check=True, capture_output=True)


def main() -> int:
    ensure_venv()
    sys.path.insert(0, str(REPO))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gib", type=float, default=4.0)
    ap.add_argument("--changed-pct", type=float, default=1.0)
    ap.add_argument("--dense", action="store_true",
                    help="fill the disk beyond the boot image with random data (a fully allocated original disk: "
                         "no holes for either side to skip)")
    ap.add_argument("--tmp"); ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    need("virsh", "qemu-system-x86_64", "genisoimage", "qemu-io", "qemu-img", "rsync")
    r = subprocess.run([str(REPO / "scripts" / "recovery-host.sh"), "start"], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        sys.exit(f"the recovery host cannot start: {r.stderr.strip() or r.stdout.strip()}")
    from tests.engine.recovery import boot_image
    missing = boot_image.missing_tools()
    if missing:
        sys.exit(f"cannot build the boot image: install {', '.join(missing)} (scripts/setup.sh)")
    boot = boot_image.build(REPO / ".cache" / "bootimg")
    tmp = bench_tmp("failback", a.tmp)
    size = int(a.size_gib * GiB) // BLOCK * BLOCK
    disk = tmp / "disk.img"
    shutil.copyfile(boot, disk)
    os.truncate(disk, size)           # the boot image, then sparse zeros: a large disk with a small OS
    if a.dense:
        with open(disk, "r+b") as f:
            f.seek(boot.stat().st_size)
            while f.tell() < size:
                f.write(os.urandom(min(8 * MiB, size - f.tell())))
    site = Site(tmp, disk, crash_interval="2s")
    hostname = f"bfb{os.getpid() % 100000}"
    machine = "vm1"
    ok = False
    try:
        site.start()
        H = ("--home", str(site.ahome))
        site.protect()
        t0 = time.monotonic()
        site.wait_state("protected", 1800, poll=0.5)
        site.wait_caught_up(1800)
        print(f"protected a {size / GiB:.1f} GiB disk in {time.monotonic() - t0:.1f} s", flush=True)
        site.cli("host", "add", *H, hostname, "--kind", "qemu", "--uri", URI, "--network", "lan=isolated")
        site.cli("machine", "settings", *H, machine, "--cpus", "1", "--memory-mib", "256", "--nic", "eth0=lan",
                 "--boot-pattern", boot_image.BOOTED, "--boot-timeout", "300")
        import json
        t0 = time.monotonic()
        vm = json.loads(site.cli("failover", *H, machine, "--host", hostname, "--point", "latest", "--json"))["vm"]
        print(f"failed over (booted) in {time.monotonic() - t0:.1f} s", flush=True)
        overlay = f"nbd://{vm['nbd']}/d"

        # the original disk as it is at failover (rsync's destination), then the change on the recovered VM
        at_failover = tmp / "rsync-dest.img"
        subprocess.run(["cp", "--sparse=always", str(disk), str(at_failover)], check=True)
        nblocks = size // BLOCK
        first_free = (boot.stat().st_size + BLOCK - 1) // BLOCK
        rng = random.Random(14)
        changed = sorted(rng.sample(range(first_free, nblocks), max(1, int(nblocks * a.changed_pct / 100))))
        t0 = time.monotonic()
        write_blocks(overlay, changed, tmp)
        changed_bytes = len(changed) * BLOCK
        print(f"changed {len(changed)} blocks ({changed_bytes / MiB:.1f} MiB) on the recovered VM in "
              f"{time.monotonic() - t0:.1f} s", flush=True)
        recovered = tmp / "recovered.img"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", "-S", "64k", overlay, str(recovered)],
                       check=True, capture_output=True)

        # rsync of the same change (both files read once into the page cache first, as Lifeboat's sides are warm)
        for f in (recovered, at_failover):
            subprocess.run(["cat", str(f)], stdout=subprocess.DEVNULL, check=True)
        t0 = time.monotonic()
        rs = subprocess.run(["rsync", "--inplace", "--no-whole-file", "-I", "-B", "65536", "--stats",
                             str(recovered), str(at_failover)], check=True, capture_output=True, text=True)
        rsync_s = time.monotonic() - t0

        def stat(name: str) -> int:
            m = re.search(rf"{name}: ([\d,]+)", rs.stdout)
            return int(m.group(1).replace(",", "")) if m else 0
        rsync_bytes = stat("Total bytes sent") + stat("Total bytes received")
        rsync_literal = stat("Literal data")
        assert sha256(at_failover) == sha256(recovered), "rsync's result differs from the recovered disk"

        # Lifeboat: reprotect (the seed) + failback (final sync, flush)
        t0 = time.monotonic()
        rp = json.loads(site.cli("reprotect", *H, machine, "--to", "original", "--json"))
        rp_wall = time.monotonic() - t0
        reprotect_s = rp["ended"] - rp["started"]
        rsteps = {s["name"]: s for s in rp["steps"]}
        # the seed's transfer: from the target's attach (the loop starts then, inside the wait-target step) to the
        # seed's end as the loop recorded it
        seed_s = float(rp["failback"]["seeded_at"]) - float(rp["failback"]["seed_started_at"])
        wait_s = rsteps["wait-target"]["ended"] - rsteps["wait-target"]["started"]
        seed = rp["failback"]
        fb = json.loads(site.cli("failback", *H, machine, "--shutdown-timeout", "1s", "--json"))
        steps = {s["name"]: s for s in fb["steps"]}
        sync_s = sum(steps[n]["ended"] - steps[n]["started"] for n in ("final-sync", "flush-target"))
        lb_s = seed_s + sync_s   # the transfer: the seed + the final sync (not the wait for the agent to connect)
        lb_bytes = int(fb["failback"]["bytes_sent"]) if fb.get("failback") else int(seed["bytes_sent"])
        lb_data = int((fb.get("result") or {}).get("data_bytes_sent") or seed["data_bytes_sent"])
        exact = sha256(disk) == sha256(recovered)

        print(f"the seed read {seed.get('blocks_read', 0)} of {nblocks} blocks of the recovered disk (the rest: "
              "checksums from the vault's block-hash index)")
        kind = "dense" if a.dense else "sparse"
        print(f"\nreprotect + failback of a {size / GiB:.1f} GiB {kind} disk, {a.changed_pct:g} % of its blocks "
              f"changed ({changed_bytes:,} B), same run")
        print(table([
            ["lifeboat reprotect + failback", f"{lb_s:.2f} s", f"{lb_bytes:,}", f"{lb_data:,}",
             f"seed {seed_s:.2f} s + final sync/flush {sync_s:.2f} s (reprotect job {reprotect_s:.2f} s, "
             f"{wait_s:.2f} s of it waiting for the agent; CLI {rp_wall:.2f} s)"],
            ["rsync --inplace --no-whole-file -B 65536", f"{rsync_s:.2f} s", f"{rsync_bytes:,}", f"{rsync_literal:,}",
             "local, both files in page cache"],
            ["ratio lifeboat / rsync", f"{lb_s / rsync_s:.2f}x", f"{lb_bytes / max(rsync_bytes, 1):.3f}x",
             f"{lb_data / max(rsync_literal, 1):.3f}x", ""]],
            ["", "time", "bytes on the link", "data bytes", "note"]))
        t_ok = lb_s <= TIME_TARGET * rsync_s
        b_ok = lb_bytes <= BYTES_TARGET * rsync_bytes
        print(f"time  ≤ {TIME_TARGET}× rsync: {verdict(t_ok)}    bytes ≤ {BYTES_TARGET}× rsync: {verdict(b_ok)}    "
              f"original disk == recovered disk (sha256): {verdict(exact)}")
        ok = exact
    finally:
        subprocess.run(["virsh", "-c", URI, "destroy", f"lifeboat-{machine}"], capture_output=True)
        subprocess.run(["virsh", "-c", URI, "undefine", f"lifeboat-{machine}"], capture_output=True)
        subprocess.run(["virsh", "-c", URI, "net-destroy", f"lifeboat-{hostname}-lan"], capture_output=True)
        finish(site, tmp=tmp, keep=a.keep)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
