"""In-process appliance + agent for integration tests (both in the test's event loop; real TLS, real files)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from engine.agent.agent import Agent
from engine.agent.register import register
from engine.appliance.appliance import Appliance, init_home
from engine.fileio import sha256_file  # noqa: F401  (tests import it from here)
from engine.policy import Policy
from tests.conftest import free_port


def make_disk(path: Path, size: int, seed: int = 1, fill: float = 0.3) -> None:
    """A sparse disk with some random data regions (a 'mixed' disk)."""
    import random
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        pos = 0
        while pos < size:
            n = min(rnd.choice([4096, 65536, 1 << 20]), size - pos)
            if rnd.random() < fill:
                f.seek(pos)
                f.write(rnd.randbytes(n) if rnd.random() < 0.5 else (b"lifeboat" * (n // 8 + 1))[:n])
            pos += n


class Site:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ahome = tmp / "appliance"
        self.agent_home = tmp / "agent"
        self.app: Appliance | None = None
        self.agent: Agent | None = None

    async def start_appliance(self, **policy: float) -> Appliance:
        if not (self.ahome / "appliance.json").exists():
            init_home(self.ahome, control_port=free_port(), data_port=free_port(), listen="127.0.0.1")
        self.app = Appliance(self.ahome, listen="127.0.0.1")
        await self.app.start()
        if policy:
            self.app.set_policy(Policy("default", **policy))
        return self.app

    async def register(self, name: str = "vm1") -> None:
        assert self.app and self.app.control_address
        await asyncio.to_thread(register, self.agent_home, f"127.0.0.1:{self.app.control_address[1]}",
                                self.ahome / "passphrase.txt", name)

    async def start_agent(self, disks: dict[str, Path], **kw) -> Agent:  # type: ignore[no-untyped-def]
        self.agent = Agent(self.agent_home, disks, ("127.0.0.1", 0), **kw)
        await self.agent.start()
        return self.agent

    @property
    def nbd_url(self) -> str:
        assert self.agent and self.agent.nbd_address
        return f"nbd://127.0.0.1:{self.agent.nbd_address[1]}"

    async def wait_for(self, cond, timeout: float = 60.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)

    async def wait_caught_up(self, machine: str = "vm1", timeout: float = 60.0) -> int:
        """Until everything the agent captured is in the vault; returns that seq."""
        assert self.app and self.agent
        target = self.agent.capture.seq
        rt = self.app.runtimes[machine]
        await self.wait_for(lambda: rt.vault.last_seq >= target, timeout, f"vault to reach seq {target}")
        return target

    async def crash_agent(self) -> None:
        """The agent dies without a clean stop (like SIGKILL or power loss): no clean marker, nothing flushed."""
        a = self.agent
        assert a is not None
        for t in a._tasks:
            t.cancel()
        await asyncio.gather(*a._tasks, return_exceptions=True)
        assert a.nbd and a.control_server
        await a.nbd.stop()
        a.control_server.close()
        for b in a.backends:
            b.close()
        a.capture.journal.close()
        self.agent = None

    async def wait_resync_done(self, machine: str = "vm1", timeout: float = 60.0) -> None:
        """Until the agent has no resync work left and the appliance shows the machine protected again."""
        assert self.app and self.agent
        a, app = self.agent, self.app
        await self.wait_for(lambda: not a.resync.pending() and not a.resync.chunks and not a.cfg.get("resync_open")
                            and app.machine_status(machine)["state"] == "protected", timeout, "resync to finish")
        await self.wait_caught_up(machine, timeout)

    async def stop(self) -> None:
        if self.agent:
            await self.agent.stop()
            self.agent = None
        if self.app:
            await self.app.stop()
            self.app = None


async def run_tool(*cmd: str, timeout: float = 120) -> str:
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd[0]} failed ({proc.returncode}): {err.decode()[-2000:]} {out.decode()[-2000:]}")
    return out.decode()


async def sh(*cmd: str, timeout: float = 120, check: bool = True) -> tuple[int, str, str]:
    """Run a command without blocking the loop (which may be serving the very disk it works on)."""
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if check and proc.returncode:
        raise AssertionError(f"{cmd} failed ({proc.returncode}): {out.decode()} {err.decode()}")
    return proc.returncode or 0, out.decode(), err.decode()
