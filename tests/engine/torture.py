"""Torture: churn through the agent's export while SIGKILLing the agent and the appliance at random moments.

Each role runs in its own process (``lifeboat agent run`` / ``lifeboat appliance run``). The writer makes one
NBD write per step (one record), so every sequence number is a step boundary; after each step it records the
source's sha256 (the truth), and every few steps takes a bookmark. At the end every listed recovery point is
exported and must equal one of the recorded source states — a bookmark exactly its own — and the newest state
must equal the source: bytes lost = 0.

Used by tests/engine/test_torture.py (dozens of kills) and bench/torture.py (many more).
"""

from __future__ import annotations

import asyncio
import json

import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.fileio import sha256_file

LB = [sys.executable, "-m", "engine.cli"]


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Report:
    kills: dict[str, int] = field(default_factory=lambda: {"agent": 0, "appliance": 0})
    steps: int = 0
    failed_steps: int = 0
    bookmarks: int = 0
    points_checked: int = 0
    bytes_lost: int = 0
    mismatches: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Role:
    def __init__(self, name: str, args: list[str], log: Path) -> None:
        self.name, self.args, self.log = name, args, log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        out = open(self.log, "ab")
        self.proc = await asyncio.create_subprocess_exec(*LB, *self.args, stdout=out, stderr=out)
        out.close()

    async def kill(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                await self.kill()


async def _cli(*args: str, timeout: float = 30) -> tuple[int, str]:
    p = await asyncio.create_subprocess_exec(*LB, *args, stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(p.communicate(), timeout)
    except TimeoutError:
        p.kill()
        await p.wait()
        return 124, "timeout"
    return p.returncode or 0, out.decode()


async def _qemu_write(url: str, offset: int, length: int, pattern: int) -> bool:
    p = await asyncio.create_subprocess_exec("qemu-io", "-f", "raw", url, "-c",
                                             f"write -P {pattern} {offset} {length}",
                                             stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        return await asyncio.wait_for(p.wait(), 20) == 0
    except TimeoutError:
        p.kill()
        await p.wait()
        return False


async def run_torture(tmp: Path, *, kills: int, disk_mib: int = 8, seed: int = 7,
                      min_gap: float = 0.3, max_gap: float = 1.2) -> Report:
    rnd = random.Random(seed)
    rep = Report()
    t0 = time.monotonic()
    home, ahome, disk = tmp / "appliance", tmp / "agent", tmp / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(disk_mib << 20)
    cport, dport, nport = _free_port(), _free_port(), _free_port()
    rc, out = await _cli("appliance", "init", "--home", str(home), "--control-port", str(cport),
                         "--data-port", str(dport), "--listen", "127.0.0.1")
    assert rc == 0, out
    appliance = Role("appliance", ["appliance", "run", "--home", str(home)], tmp / "appliance.log")
    agent = Role("agent", ["agent", "run", "--home", str(ahome), "--disk", f"d0={disk}",
                           "--nbd", f"127.0.0.1:{nport}"], tmp / "agent.log")
    await appliance.start()
    for _ in range(100):
        if (await _cli("status", "--home", str(home)))[0] == 0:
            break
        await asyncio.sleep(0.1)
    rc, out = await _cli("agent", "register", "--home", str(ahome), "--appliance", f"127.0.0.1:{cport}",
                         "--passphrase-file", str(home / "passphrase.txt"), "--name", "vm1")
    assert rc == 0, out
    await _cli("policy", "set", "--home", str(home), "default", "--crash-interval", "1s", "--resync-window", "always")
    await agent.start()
    await _cli("protect", "--home", str(home), "vm1")
    states: set[str] = {sha256_file(disk)}
    tags: dict[str, str] = {}
    url = f"nbd://127.0.0.1:{nport}/d0"
    stop = asyncio.Event()

    async def writer() -> None:
        step = 0
        while not stop.is_set():
            step += 1
            off = rnd.randrange(0, (disk_mib << 20) - (1 << 20))
            ok = await _qemu_write(url, off, rnd.choice([512, 4096, 65536, 300_001]), step % 255 + 1)
            rep.steps += 1
            if not ok:
                rep.failed_steps += 1
                await asyncio.sleep(0.2)
            states.add(sha256_file(disk))
            if ok and step % 4 == 0:
                tag = f"s{step}"
                rc, out = await _cli("agent", "bookmark", "--home", str(ahome), "--tag", tag, "--json")
                if rc == 0:
                    tags[tag] = sha256_file(disk)
                    rep.bookmarks += 1

    async def killer() -> None:
        while sum(rep.kills.values()) < kills:
            await asyncio.sleep(rnd.uniform(min_gap, max_gap))
            role = rnd.choice([agent, appliance])
            await role.kill()
            rep.kills[role.name] += 1
            await asyncio.sleep(rnd.uniform(0.0, 0.5))
            await role.start()
        stop.set()

    w = asyncio.create_task(writer())
    await killer()
    await w
    # Let everything settle: both roles up, resyncs done, the vault caught up with the source.
    final = sha256_file(disk)
    deadline = time.monotonic() + 120
    status: dict = {}
    while time.monotonic() < deadline:
        rc, out = await _cli("status", "--home", str(home), "--json")
        if rc == 0:
            status = json.loads(out)
            m = status["machines"][0] if status["machines"] else {}
            if m.get("state") == "protected" and m.get("rpo_seconds") == 0 and not m["resync"]["required"]:
                break
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.5)   # one more crash-consistent point at the newest state
    rc, out = await _cli("points", "--home", str(home), "vm1", "--json")
    assert rc == 0, out
    points = json.loads(out)
    await agent.stop()
    for p in points + [{"id": "latest", "kind": "latest", "tag": None}]:
        dst = tmp / "export"
        rc, out = await _cli("failover", "--home", str(home), "vm1", "--test", "--point", p["id"],
                             "--export", str(dst), timeout=60)
        if rc != 0:
            rep.mismatches.append(f"{p['id']}: failover failed: {out.strip()[-300:]}")
            continue
        got = sha256_file(dst / "d0.img")
        await _cli("failover-cleanup", "--home", str(home), "vm1")
        rep.points_checked += 1
        if p["kind"] == "latest":
            if got != final:
                rep.mismatches.append("latest differs from the source")
                rep.bytes_lost = _diff_bytes(dst / "d0.img", disk)
        elif p["kind"] == "app-consistent" and p["tag"] in tags:
            if got != tags[p["tag"]]:
                rep.mismatches.append(f"bookmark {p['tag']} ({p['id']}) differs from the source at the bookmark")
        elif got not in states:
            rep.mismatches.append(f"point {p['id']} matches no state the source was ever in")
    await appliance.stop()
    rep.seconds = time.monotonic() - t0

    return rep


def _diff_bytes(a: Path, b: Path) -> int:
    x, y = a.read_bytes(), b.read_bytes()
    return sum(1 for i, j in zip(x, y) if i != j) + abs(len(x) - len(y))
