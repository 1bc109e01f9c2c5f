"""Recovery on the local recovery host (issue 13), side by side in one run:

(a) RTO of a recovery plan: N small machines (default 10) in 3 groups, each protected by its own agent process,
    `lifeboat plan run` (real, not a test) → every machine booted, against the same plan shape booted straight
    from local copies of the same images through the same libvirt domain XML (groups in order, a group's machines
    in parallel): the plan's overhead over the hypervisor's own boot time.
(b) Time to first boot of one machine from the vault (the failover's start-vm → boot line, its disk served from
    the vault through the NBD overlay) vs the same image booted directly from a local file with the same QEMU
    flags (the same domain XML, only the disk's source differs), alternating, best of ``--rounds``. Target: vault
    ≤ 1.5× local (the vault read path must not be what the boot waits for).

    .venv/bin/python bench/recovery.py                 # 10 machines, 3 rounds of (b)
    .venv/bin/python bench/recovery.py --machines 4 --rounds 2

Needs the recovery host (scripts/recovery-host.sh start: libvirtd, virtlogd) and the boot image's tools (the one
the recovery tests build: tests/engine/recovery/boot_image.py, cached in .cache/bootimg).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, Proc, bench_tmp, ensure_venv, free_port, need, table, verdict, wait_port

URI = "qemu:///system"
PATTERN = "LIFEBOAT-BOOTED"
TARGET = 1.5


def lifeboat() -> list[str]:
    return [sys.executable, "-m", "engine.cli"]


def cli(*args: str, timeout: float = 600) -> str:
    r = subprocess.run([*lifeboat(), *args], capture_output=True, text=True, cwd=REPO, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"lifeboat {' '.join(args)} failed ({r.returncode}):\n{r.stderr}{r.stdout}")
    return r.stdout


def cj(*args: str, timeout: float = 600) -> object:
    return json.loads(cli(*args, "--json", timeout=timeout))


def wait(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def groups_of(names: list[str], n: int = 3) -> list[list[str]]:
    k, r = divmod(len(names), n)
    out, i = [], 0
    for g in range(n):
        size = k + (1 if g < r else 0)
        out.append(names[i:i + size])
        i += size
    return [g for g in out if g]


async def local_boot(name: str, image: Path, tmp: Path, memory: int) -> float:
    """Seconds from `virsh start` to the boot line for a VM on a local raw image (the failover's domain XML)."""
    from engine.recovery.config_drive import build_config_drive
    from engine.recovery.hosts.base import DiskSpec, VMSpec, wait_for_boot
    from engine.recovery.hosts.libvirt import LibvirtHost
    from engine.recovery.settings import RecoverySettings
    host = LibvirtHost("bench-local", URI, {})
    d = tmp / f"local-{name}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    log = d / "serial.log"
    spec = VMSpec(name, memory_mib=memory, disks=[DiskSpec("d0", path=image)], serial_log=log,
                  config_drive=await build_config_drive(d, name, "i-local", RecoverySettings()))
    await host.destroy(name)
    await host.define(spec)
    try:
        t0 = time.monotonic()
        await host.start(name)
        await wait_for_boot(log, PATTERN, 180, vm=name, interval=0.05)
        return time.monotonic() - t0
    finally:
        await host.destroy(name)


async def local_plan(names: list[str], images: dict[str, Path], tmp: Path, memory: int) -> float:
    t0 = time.monotonic()
    for g in groups_of(names):
        await asyncio.gather(*(local_boot(f"lb-{m}", images[m], tmp, memory) for m in g))
    return time.monotonic() - t0


def main() -> int:
    ensure_venv()
    sys.path.insert(0, str(REPO))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--machines", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of the first-boot comparison")
    ap.add_argument("--memory-mib", type=int, default=192)
    ap.add_argument("--tmp"); ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    need("virsh", "qemu-system-x86_64", "genisoimage")
    r = subprocess.run([str(REPO / "scripts" / "recovery-host.sh"), "start"], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        sys.exit(f"the recovery host cannot start: {r.stderr.strip() or r.stdout.strip()}")
    from tests.engine.recovery import boot_image
    missing = boot_image.missing_tools()
    if missing:
        sys.exit(f"cannot build the boot image: install {', '.join(missing)} (scripts/setup.sh)")
    boot = boot_image.build(REPO / ".cache" / "bootimg")
    tmp = bench_tmp("recovery", a.tmp)
    home = tmp / "appliance"
    H = ("--home", str(home))
    tag = f"{os.getpid() % 100000}"
    names = [f"bm{tag}n{i}" for i in range(a.machines)]
    hostname = f"bh{tag}"
    procs: list[Proc] = []
    images: dict[str, Path] = {}
    try:
        cport, dport = free_port(), free_port()
        cli("appliance", "init", *H, "--control-port", str(cport), "--data-port", str(dport), "--listen",
            "127.0.0.1")
        procs.append(Proc("appliance", [*lifeboat(), "appliance", "run", *H], tmp / "appliance.log", cwd=REPO))
        wait_port(cport, proc=procs[0].p)
        cli("policy", "set", *H, "bench", "--crash-interval", "2s", "--app-consistent", "1h")
        for m in names:
            img = images[m] = tmp / f"{m}.img"
            shutil.copyfile(boot, img)
            cli("agent", "register", "--home", str(tmp / m), "--appliance", f"127.0.0.1:{cport}",
                "--passphrase-file", str(home / "passphrase.txt"), "--name", m)
            port = free_port()
            procs.append(Proc(m, [*lifeboat(), "agent", "run", "--home", str(tmp / m), "--disk", f"d0={img}",
                                  "--nbd", f"127.0.0.1:{port}"], tmp / f"{m}.log", cwd=REPO))
        for m in names:
            cli("protect", *H, m, "--policy", "bench")
        t0 = time.monotonic()
        wait(lambda: sum(x["state"] == "protected" for x in cj("status", *H)["machines"]) == len(names), 600,
             "every machine protected")
        print(f"{len(names)} machines protected ({boot.stat().st_size >> 20} MiB image each) in "
              f"{time.monotonic() - t0:.1f} s", flush=True)
        cj("host", "add", *H, hostname, "--uri", URI)
        for m in names:
            cj("machine", "settings", *H, m, "--memory-mib", str(a.memory_mib), "--boot-pattern", PATTERN,
               "--boot-timeout", "300")
        cli("plan", "create", *H, "bench")
        for n, g in enumerate(groups_of(names), start=1):
            cli("plan", "add", *H, "bench", "--group", str(n), *g)

        # (a) the plan's RTO vs the same shape booted from local files
        t0 = time.monotonic()
        run = cj("plan", "run", *H, "bench", "--host", hostname, timeout=1800)
        plan_wall = time.monotonic() - t0
        if run["state"] != "succeeded":
            raise RuntimeError(f"the plan run {run['state']}: {run['job'].get('error')}")
        [rep] = [x for x in cj("report", "list", *H) if x["id"] == run["id"]]
        boots = [x["boot_seconds"] for x in rep["machines"]]
        cj("plan", "cancel", *H, "bench")
        local_wall = asyncio.run(local_plan(names, images, tmp, a.memory_mib))
        groups = groups_of(names)
        print(f"\n(a) RTO of a plan: {len(names)} machines in {len(groups)} groups "
              f"({'/'.join(str(len(g)) for g in groups)}), {a.memory_mib} MiB each, TCG")
        print(table([["lifeboat plan run (real) -> all booted", f"{plan_wall:.1f} s",
                      f"{rep['rto_seconds']:.1f} s", f"{max(boots):.1f} s", f"{statistics.median(boots):.1f} s"],
                     ["same groups booted from local files", f"{local_wall:.1f} s", "-", "-", "-"],
                     ["ratio plan / local", f"{plan_wall / local_wall:.2f}x", "", "", ""]],
                    ["", "wall (CLI)", "job RTO", "slowest boot", "median boot"]), flush=True)

        # (b) first boot of one machine: from the vault vs the same image from a local file
        m = names[0]
        vault_s, local_s, total_s = [], [], []
        for r_ in range(a.rounds):
            for side in (("vault", "local") if r_ % 2 == 0 else ("local", "vault")):
                if side == "local":
                    local_s.append(asyncio.run(local_boot(f"lb-{m}", images[m], tmp, a.memory_mib)))
                    continue
                t0 = time.monotonic()
                job = cj("failover", *H, m, "--host", hostname, "--point", "latest", timeout=600)
                total_s.append(time.monotonic() - t0)
                st = {s["name"]: s for s in job["steps"]}
                vault_s.append(st["wait-boot"]["ended"] - st["start-vm"]["started"])
                cj("failover-cancel", *H, m)
                wait(lambda: next(x for x in cj("status", *H)["machines"] if x["name"] == m)["state"]
                     != "failed-over", 60, "cancel")
        vb, lb_ = min(vault_s), min(local_s)
        ratio = vb / lb_
        print(f"\n(b) time to first boot of one machine (start the VM -> {PATTERN} on its console), best of "
              f"{a.rounds}, alternating")
        print(table([["from the vault (NBD overlay over the point)", f"{vb:.2f} s",
                      " ".join(f"{x:.2f}" for x in vault_s), f"{min(total_s):.2f} s"],
                     ["from a local raw file (same domain XML)", f"{lb_:.2f} s", " ".join(f"{x:.2f}" for x in local_s),
                      "-"],
                     ["ratio vault / local", f"{ratio:.2f}x (target <= {TARGET}x) {verdict(ratio <= TARGET)}", "",
                      ""]], ["", "best", "all rounds (s)", "whole failover job (best)"]), flush=True)
        return 0 if ratio <= TARGET else 1
    finally:
        import asyncio as _a
        from engine.recovery.hosts.libvirt import LibvirtHost
        h = LibvirtHost("bench-local", URI, {})
        for m in names:
            for dom in (m, f"lb-{m}"):
                try:
                    _a.run(h.destroy(dom))
                except Exception:
                    pass
        for p in reversed(procs):
            p.stop()
        # an agent refused while its machine is failed over is expected here, not a problem
        found = {p.name: "\n".join(ln for ln in p.problems().splitlines() if "LB_FAILED_OVER" not in ln)
                 for p in procs}
        probs = [f"--- {n} ({tmp / (n + '.log')}):\n{t[-3000:]}" for n, t in found.items() if t.strip()]
        if probs:
            print("\nPROBLEMS SEEN IN THE ROLES:\n" + "\n".join(probs))
        if a.keep:
            print(f"(kept {tmp})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
