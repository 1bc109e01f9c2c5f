"""Capture overhead: write throughput through the agent's NBD export vs nbdkit's C ``file`` plugin.

What runs, in one process tree on one machine:

* an appliance and an agent as separate processes (``lifeboat appliance run`` / ``lifeboat agent run``), the agent
  exporting a sparse disk of the source's size; the machine is protected (initial sync of the empty disk is
  instant), so every write is captured into the agent's journal and replicated to the vault while we write;
* ``nbdkit file`` on another sparse file of the same size (the baseline).

The same clients write to both, alternating baseline / Lifeboat for ``--reps`` rounds:

1. ``nbdcopy --flush SRC nbd://...``: a random source file (page-cache hot) copied onto the export, FLUSH at the end.
   Reported as MB/s (MB = 10^6 bytes) of the whole copy.
2. ``qemu-img bench -w``: 4 KiB writes at queue depth 32 with a large prime step (offset = k*step mod size), so the
   offsets jump all over the disk in a permutation order; reported as IOPS.

A third server is measured for diagnosis: a second agent (machine "vm2", registered, never protected), i.e.
Lifeboat's NBD server with capture off, which splits the overhead into "NBD server" and "capture + shipping".

Between Lifeboat rounds the bench waits until the appliance reports RPO 0 (replication caught up), so every round
starts with an idle pipeline but runs with replication active. Best-of-reps is compared (the machine is noisy);
all rounds are printed. Target: Lifeboat ≥ 0.5× nbdkit for the nbdcopy throughput.

``--profile`` samples the roles with py-spy during one extra nbdcopy onto the protected export.

``--perf`` records native stacks (``perf record -g``, kernel included) of the roles during one extra nbdcopy and
prints where each role's CPU went: user vs kernel, and the top symbols (a Python program's own frames show as the
interpreter's functions; py-spy's ``--profile`` gives those).

``--pin-appliance`` models a real site, where the appliance is another machine: the appliance's threads are pinned
to the last CPU, and every other server and client (nbdkit, both agents, nbdcopy, qemu-img) to the other CPUs. The
baseline is pinned the same way, so the ratio stays a same-run comparison. (The default, unpinned, shares every
core between all of them: the harder case.)

    .venv/bin/python bench/capture.py [--quick] [--size-mib 1024] [--reps 3] [--profile] [--perf] [--pin-appliance] [--keep]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
import _profile as P

C.ensure_venv()

TARGET = 0.5


#: command prefix that pins a client to the CPUs the servers use (set by --pin-appliance)
CLIENT_CPUS: list[str] = []


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` (threads started later inherit it from the thread that starts them)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:
            pass


def nbdcopy(src: Path, url: str, size: int) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([*CLIENT_CPUS, "nbdcopy", "--flush", str(src), url], capture_output=True, text=True,
                       timeout=900)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"nbdcopy to {url} failed ({r.returncode}): {r.stderr}")
    return size / dt / 1e6


def qemu_bench(url: str, size: int, count: int) -> float:
    step = 4096 * 7919  # prime number of blocks: visits every 4 KiB block of a power-of-two disk once per lap
    r = subprocess.run([*CLIENT_CPUS, "qemu-img", "bench", "-w", "-f", "raw", "-c", str(count), "-d", "32",
                        "-s", "4096", "-S", str(step), "--pattern=165", url], capture_output=True, text=True,
                       timeout=900)
    m = re.search(r"Run completed in ([\d.]+) seconds", r.stdout)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"qemu-img bench on {url} failed ({r.returncode}): {r.stderr}{r.stdout}")
    return count / float(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="256 MiB, 1 round, 20k 4 KiB writes")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--iops-count", type=int, default=200_000, help="4 KiB writes per qemu-img bench run")
    ap.add_argument("--tmp", help="parent folder for the run's files (default: system temp)")
    ap.add_argument("--keep", action="store_true", help="keep the run folder (logs, vault)")
    ap.add_argument("--profile", action="store_true", help="py-spy the roles during one more nbdcopy")
    ap.add_argument("--perf", action="store_true",
                    help="perf record (native stacks, kernel included) the roles during one more nbdcopy")
    ap.add_argument("--appliance-storage", metavar="DIR",
                    help="put the appliance's home (cache and vault) in a fresh folder under DIR, e.g. on another "
                         "device: a real appliance does not share the protected machine's disk")
    ap.add_argument("--pin-appliance", action="store_true",
                    help="appliance on the last CPU, everything else on the others (the appliance as its own host)")
    a = ap.parse_args()
    if a.quick:
        a.size_mib, a.reps, a.iops_count = 256, 1, 20_000
    C.need("nbdcopy", "nbdkit", "qemu-img")
    size = a.size_mib * C.MiB
    tmp = C.bench_tmp("capture", a.tmp)
    site = kit = off = None
    try:
        src = tmp / "src.img"
        print(f"writing a {a.size_mib} MiB random source file ...", flush=True)
        with open(src, "wb") as f:
            f.writelines(os.urandom(C.MiB) for _ in range(a.size_mib))
        base_disk = C.make_sparse(tmp / "nbdkit.img", size)
        lb_disk = C.make_sparse(tmp / "lifeboat.img", size)
        kit, kit_url = C.start_nbdkit(tmp, base_disk)
        ahome = None
        if a.appliance_storage:
            ahome = Path(tempfile.mkdtemp(prefix="lifeboat-appliance-", dir=a.appliance_storage)) / "appliance"
        site = C.Site(tmp, lb_disk, appliance_home=ahome).start()
        off, off_url = site.extra_agent("vm2", C.make_sparse(tmp / "capture-off.img", size))
        site.protect()
        site.wait_state("protected", 120)
        if a.pin_appliance:
            cpus = sorted(os.sched_getaffinity(0))
            if len(cpus) < 2:
                raise SystemExit("--pin-appliance needs at least 2 CPUs")
            rest = set(cpus[:-1])
            pin(site.app.pid, {cpus[-1]})
            for p in (site.agent, off, kit):
                pin(p.pid, rest)
            CLIENT_CPUS[:] = ["taskset", "-c", ",".join(map(str, sorted(rest)))]
            print(f"pinned: appliance on CPU {cpus[-1]}; nbdkit, agents and clients on CPUs {sorted(rest)}")
        print(f"appliance pid {site.app.pid}, agent pid {site.agent.pid}, capture-off agent pid {off.pid}, "
              f"nbdkit pid {kit.pid}; vm1 protected, capture on", flush=True)

        servers = (("nbdkit", kit_url, [kit]), ("capture off", off_url, [off]),
                   ("lifeboat", site.nbd_url, site.roles()))
        rows, copy, iops = [], {n: [] for n, *_ in servers}, {n: [] for n, *_ in servers}
        for rep in range(1, a.reps + 1):
            for name, url, procs in servers:
                if name == "lifeboat":
                    site.wait_caught_up()
                spilled0 = site.agent_status().get("spilled_bytes", 0) if name == "lifeboat" else 0
                cpu0, t0 = [p.cpu() for p in procs], time.monotonic()
                mbps = nbdcopy(src, url, size)
                wall = time.monotonic() - t0
                cpu = " / ".join(f"{p.name} {(p.cpu() - c) / wall:.2f}" for p, c in zip(procs, cpu0))
                if name == "lifeboat":   # records the agent had to journal because the appliance fell behind
                    spilled = site.agent_status().get("spilled_bytes", 0) - spilled0
                    cpu += f" (spilled {spilled / size:.0%})"
                if name == "lifeboat":
                    site.wait_caught_up()
                io = qemu_bench(url, size, a.iops_count)
                copy[name].append(mbps)
                iops[name].append(io)
                rows.append([rep, name, mbps, f"{io:,.0f}", cpu])
                print(f"  round {rep} {name:<11} nbdcopy {mbps:8.1f} MB/s   4K QD32 {io:9,.0f} IOPS  CPU {cpu}",
                      flush=True)
        t_drain = site.wait_caught_up()
        m = site.machine()
        if a.profile:
            spies = [P.start_spy(p, tmp / f"{p.name}.pyspy") for p in site.roles()]
            t0 = time.monotonic()
            prof_mbps = nbdcopy(src, site.nbd_url, size)
            prof_s = time.monotonic() - t0
            for sp in spies:
                P.stop(sp)

        if a.perf:   # one more copy onto each agent: with capture off (the NBD server alone) and on
            perf_runs = []
            for label, url, procs in (("capture off", off_url, [off]), ("lifeboat", site.nbd_url, site.roles())):
                site.wait_caught_up()
                out = tmp / f"{label.replace(' ', '-')}.perf"
                perf = P.start_perf(procs, out)
                t0 = time.monotonic()
                mbps = nbdcopy(src, url, size)
                P.stop(perf)
                perf_runs.append((label, mbps, time.monotonic() - t0, out, procs))

        print("\nAll rounds (CPU = cores used by each role during the nbdcopy):")
        print(C.table(rows, ["round", "server", "nbdcopy MB/s", "4K QD32 IOPS", "CPU cores during nbdcopy"]))
        bc, lc, oc = max(copy["nbdkit"]), max(copy["lifeboat"]), max(copy["capture off"])
        bi, li, oi = max(iops["nbdkit"]), max(iops["lifeboat"]), max(iops["capture off"])
        where = "appliance pinned to its own CPU" if a.pin_appliance else "all roles sharing every CPU"
        if a.appliance_storage:
            where += f", appliance storage under {a.appliance_storage}"
        print(f"\nCapture overhead, best of {a.reps} ({a.size_mib} MiB, same file system, same clients, {where}):")
        print(C.table([
            ["nbdcopy --flush (MB/s)", bc, lc, f"{lc / bc:.2f}x", f">= {TARGET}x", C.verdict(lc / bc >= TARGET)],
            ["4 KiB random writes QD32 (IOPS)", f"{bi:,.0f}", f"{li:,.0f}", f"{li / bi:.2f}x", "-", "-"],
        ], ["workload", "nbdkit file", "lifeboat agent", "ratio", "target", "verdict"]))
        print(f"diagnosis, agent with capture off: nbdcopy {oc:.1f} MB/s ({oc / bc:.2f}x nbdkit), "
              f"4K QD32 {oi:,.0f} IOPS ({oi / bi:.2f}x)")
        print(f"\npeak RSS (VmHWM, target <= 300 MB): appliance {site.app.peak_rss() / 1e6:.0f} MB, agent "
              f"{site.agent.peak_rss() / 1e6:.0f} MB, nbdkit {kit.peak_rss() / 1e6:.0f} MB; "
              f"final drain {t_drain:.1f}s; vault points {m.get('points')}, state {m.get('state')}")
        if a.profile:
            print(f"\nprofiled nbdcopy: {prof_mbps:.1f} MB/s")
            for p in site.roles():
                print(f"\npy-spy {p.name} (pid {p.pid}):")
                print(P.spy_summary(tmp / f"{p.name}.pyspy", prof_s))
        if a.perf:
            for label, mbps, secs, out, procs in perf_runs:
                print(f"\nperf-recorded nbdcopy onto {label}: {mbps:.1f} MB/s in {secs:.2f} s "
                      f"({', '.join(f'{p.name} pid {p.pid}' for p in procs)})")
                print(P.perf_summary(out, size))
        return 0 if lc / bc >= TARGET else 1
    finally:
        C.finish(site, [p for p in (kit, off) if p], tmp, a.keep)
        if a.appliance_storage and site is not None and not a.keep:
            shutil.rmtree(site.ahome.parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
