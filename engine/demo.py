"""``lifeboat demo``: the main job on embedded defaults, end to end, in one process.

Initialises an appliance home (local vault), registers an agent, protects a sample disk, writes to it through the
agent's NBD export with a real client (qemu-io), takes an app-consistent bookmark, waits for RPO 0, then runs a
test failover of the bookmark and of the latest point and checks both byte for byte (sha256) against the source.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import sys
import time
from pathlib import Path

from .errors import LifeboatError
from .fileio import sha256_file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bar(fraction: float, label: str) -> None:
    fill = int(30 * min(max(fraction, 0), 1))
    end = "\n" if fraction >= 1 else ""
    stream = sys.stderr
    if stream.isatty():
        stream.write(f"\r  {label:<22} [{'#' * fill}{'.' * (30 - fill)}] {fraction * 100:5.1f}%{end}")
        stream.flush()


async def _qemu_io(url: str, *cmds: str) -> None:
    if shutil.which("qemu-io") is None:
        raise LifeboatError("qemu-io is not installed", code="LB_MISSING_TOOL", advice="Run scripts/setup.sh.")
    args = [a for c in cmds for a in ("-c", c)]
    proc = await asyncio.create_subprocess_exec("qemu-io", "-f", "raw", url, *args,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode:
        raise LifeboatError(f"qemu-io failed: {err.decode().strip()}", code="LB_DEMO_WRITER")


def next_steps(root: Path, ahome: Path, agent_home: Path, disk: Path) -> str:
    """What to try next on the home the demo leaves. ``LIFEBOAT_DEMO_RUNNER`` names the command that runs
    ``lifeboat`` with the demo's keyring (scripts/demo.sh on a headless machine), else ``lifeboat``."""
    import os
    import shlex
    run = os.environ.get("LIFEBOAT_DEMO_RUNNER") or "lifeboat"
    q = shlex.quote
    return "\n".join([
        "next, try (the demo's home stays):",
        f"  {run} appliance run --home {q(str(ahome))} &            # the appliance again",
        f"  {run} agent run --home {q(str(agent_home))} --disk disk0={q(str(disk))} --nbd 127.0.0.1:10809 &",
        f"  {run} status --home {q(str(ahome))}",
        f"  {run} points --home {q(str(ahome))} demo-vm",
        f"  {run} bookmark --home {q(str(ahome))} demo-vm --tag my-first",
        f"  {run} failover --home {q(str(ahome))} demo-vm --test --point latest --export {q(str(root / 'drill'))}",
        f"  {run} failover-cleanup --home {q(str(ahome))} demo-vm",
        f"  lifeboat-console --home {q(str(ahome))}                # where a screen exists",
    ])


async def run_demo(root: Path, size_mib: int = 256) -> int:
    from .agent.agent import Agent
    from .agent.register import register
    from .appliance.appliance import Appliance, init_home
    from .policy import Policy

    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    ahome, agent_home, disk = root / "appliance", root / "agent", root / "sample-disk.img"
    for p in (ahome, agent_home, root / "drill"):
        shutil.rmtree(p, ignore_errors=True)
    print(f"Lifeboat demo in {root}")
    rnd = random.Random(42)
    with open(disk, "wb") as f:  # a mixed sample disk: data, text, holes
        f.truncate(size_mib << 20)
        for i in range(0, size_mib, 4):
            f.seek(i << 20)
            f.write(rnd.randbytes(1 << 20) if i % 8 == 0 else b"Lifeboat sample data. " * 47662)
    init_home(ahome, control_port=_free_port(), data_port=_free_port(), listen="127.0.0.1")
    print("  appliance initialised (CA, certificates, passphrase 0600, vault key in the OS keyring)")
    app = Appliance(ahome)
    await app.start()
    agent = None
    try:
        app.set_policy(Policy("default", rpo_threshold=30, crash_interval=5))
        assert app.control_address
        await asyncio.to_thread(register, agent_home, f"127.0.0.1:{app.control_address[1]}",
                                ahome / "passphrase.txt", "demo-vm")
        print("  agent registered with the passphrase; mutual TLS from now on")
        agent = Agent(agent_home, {"disk0": disk}, ("127.0.0.1", 0))
        await agent.start()
        assert agent.nbd_address
        url = f"nbd://127.0.0.1:{agent.nbd_address[1]}/disk0"
        print(f"  agent serves {url}")
        await app.protect("demo-vm")
        t0 = time.monotonic()
        while (st := app.machine_status("demo-vm"))["state"] != "protected":
            _bar(st["sync_progress"], "initial replication")
            await asyncio.sleep(0.2)
        _bar(1.0, "initial replication")
        print(f"  initial replication of {size_mib} MiB done in {time.monotonic() - t0:.1f}s")
        await _qemu_io(url, "write -P 0xa5 1M 3M", "write -z 40M 2M", "discard 64M 1M")
        bm = await agent.bookmark("demo-bookmark")
        at_bookmark = sha256_file(disk)
        await _qemu_io(url, "write -P 0x5a 100M 5M", "write -P 0x01 7 12345")
        latest = sha256_file(disk)
        while app.machine_status("demo-vm")["rpo_seconds"] > 0 or app.runtimes["demo-vm"].vault.last_seq < agent.capture.seq:
            await asyncio.sleep(0.1)
        st = app.machine_status("demo-vm")
        print(f"  writes replicated: RPO {st['rpo_seconds']}s, health {st['health']}, {st['points']} points")
        ok = True
        assert app.recovery is not None
        for spec, want in (("tag:demo-bookmark", at_bookmark), ("latest", latest)):
            job = await app.recovery.test_failover("demo-vm", spec, export_dir=str(root / "drill"), nbd=None)
            while not job.finished:
                _bar(job.progress, f"drill {spec}")
                await asyncio.sleep(0.1)
            _bar(1.0, f"drill {spec}")
            got = sha256_file(root / "drill" / "disk0.img")
            same = got == want
            ok &= same
            print(f"  test failover to {spec:<18} sha256 {got[:16]}… {'identical to the source' if same else 'DIFFERS'}")
            await app.recovery.cleanup("demo-vm")
        print(f"  bookmark point {bm['point_id']}; drill cleaned up")
        print("demo passed" if ok else "demo FAILED")
        if ok:
            print(next_steps(root, ahome, agent_home, disk))
        return 0 if ok else 1
    finally:
        if agent:
            await agent.stop()
        await app.stop()
