"""A clean stop of the service drains in-flight work: the appliance runs exactly as systemd would start it (the
unit's ExecStart and environment), an agent writes without pause, and the service manager's SIGTERM arrives in the
middle. The appliance exits 0 after draining; nothing it had acknowledged is missing when it comes back (the
process server's WELCOME after the restart starts at or after everything the agent saw acknowledged); the agent's
writes made while it was down arrive; every point recovers byte-exact: the bookmark before the stop exactly, each
crash-consistent point as a state the source really was in, the latest as the source now."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from engine.agent.agent import Agent
from engine.agent.register import register
from engine.appliance.appliance import init_home
from engine.fileio import sha256_file
from tests.conftest import free_port, need_tool
from tests.engine.harness import make_disk
from tests.engine.service.test_service import _exec_start
from tests.engine.torture import _cli, _qemu_write

MiB = 1 << 20


async def _status(home: Path) -> dict[str, Any]:
    rc, out = await _cli("status", "--home", str(home), "--json")
    assert rc == 0, out
    return dict(json.loads(out)["machines"][0])


async def _until(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


class Service:
    """The appliance started as the unit says (command, environment, working directory /)."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.cmd, self.env, self.log = cmd, env, log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        import os
        with open(self.log, "ab") as err:
            self.proc = await asyncio.create_subprocess_exec(*self.cmd, env={**os.environ, **self.env}, cwd="/",
                                                             stdout=asyncio.subprocess.PIPE, stderr=err)
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        assert line.startswith(b"appliance running"), (line, self.log.read_text()[-2000:])

    async def terminate(self, timeout: float) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@pytest.mark.timeout(400)
async def test_sigterm_while_an_agent_writes_drains_and_loses_nothing(tmp_path: Path) -> None:
    need_tool("qemu-io")
    need_tool("systemd-analyze")
    home, units = tmp_path / "appliance", tmp_path / "units"
    init_home(home, control_port=free_port(), data_port=free_port(), listen="127.0.0.1", vault=tmp_path / "vault")
    rc, out = await _cli("appliance", "install-service", "--home", str(home), "--unit-dir", str(units), "--json")
    assert rc == 0, out
    cmd, env = _exec_start(Path(json.loads(out)["path"]))
    service = Service(cmd, env, tmp_path / "service.stderr")
    disk = tmp_path / "d0.img"
    size = 8 * MiB
    make_disk(disk, size, seed=16)
    initial_sha = sha256_file(disk)
    agent: Agent | None = None
    welcomes: list[tuple[int, int]] = []   # (what the agent had seen acknowledged, where the WELCOME starts)
    try:
        await service.start()
        control = json.loads((home / "appliance.json").read_text())["control_port"]
        await asyncio.to_thread(register, tmp_path / "agent", f"127.0.0.1:{control}", home / "passphrase.txt", "vm1")
        agent = Agent(tmp_path / "agent", {"d0": disk}, ("127.0.0.1", 0))
        orig = agent._welcome

        def welcome(w: dict[str, Any]) -> None:
            assert agent is not None
            welcomes.append((agent.acked_seq, int(w.get("last_seq", 0))))
            orig(w)
        agent._welcome = welcome  # type: ignore[method-assign]
        await agent.start()
        assert agent.nbd_address
        url = f"nbd://127.0.0.1:{agent.nbd_address[1]}/d0"
        for args in (("policy", "set", "--home", str(home), "default", "--crash-interval", "1s"),
                     ("protect", "--home", str(home), "vm1")):
            rc, out = await _cli(*args)
            assert rc == 0, out

        async def protected() -> bool:
            return (await _status(home))["state"] == "protected"
        await _until(protected, 90, "initial sync")

        # A bookmark before the stop, taken with no write in flight: it must come back exactly.
        assert await _qemu_write(url, 2 * MiB, 128 * 1024, 0x21)
        rc, out = await _cli("bookmark", "--home", str(home), "vm1", "--tag", "before-stop", "--json")
        assert rc == 0, out
        bookmark_sha = sha256_file(disk)

        # The writer never pauses: before, during and after the stop, and while the appliance is down.
        states = {initial_sha, bookmark_sha}
        stop_writing = asyncio.Event()
        rnd = random.Random(16)
        writes = {"ok": 0, "failed": 0}

        async def writer() -> None:
            step = 0
            while not stop_writing.is_set():
                step += 1
                ok = await _qemu_write(url, rnd.randrange(0, size - MiB) & ~511, rnd.choice([4096, 65536]),
                                       step % 200 + 40)
                writes["ok" if ok else "failed"] += 1
                states.add(sha256_file(disk))
        w = asyncio.create_task(writer())
        await asyncio.sleep(2.0)

        # systemctl stop: SIGTERM, then the service has TimeoutStopSec (90 s) to drain.
        acked_before = agent.acked_seq
        t0 = time.monotonic()
        rc = await service.terminate(90)
        drain_s = time.monotonic() - t0
        assert rc == 0, service.log.read_text()[-2000:]
        acked_at_stop = agent.acked_seq
        assert acked_at_stop >= acked_before > 0
        log = (home / "appliance.log").read_text()
        assert "stop requested: draining in-flight work" in log and "stopped cleanly" in log, log[-2000:]
        assert "abandoned" not in log
        sessions = len(welcomes)

        await asyncio.sleep(1.5)   # the agent keeps capturing while the appliance is down
        written_while_down = agent.capture.seq
        assert written_while_down > acked_at_stop, "no write happened while the appliance was down"
        await service.start()
        await _until(lambda: _true(len(welcomes) > sessions), 60, "the agent back")
        after = welcomes[sessions:]
        assert after[0][1] >= acked_at_stop, (
            f"the process server came back at seq {after[0][1]}, before seq {acked_at_stop} it had acknowledged")
        lost = [(a, s) for a, s in welcomes if s < a]
        assert not lost, f"a WELCOME started before what the agent had seen acknowledged: {lost}"
        await asyncio.sleep(1.5)
        stop_writing.set()
        await w
        assert writes["ok"] >= 10, writes
        final = sha256_file(disk)

        async def caught_up() -> bool:
            m = await _status(home)
            return bool(m["state"] == "protected" and m["rpo_seconds"] == 0 and not m["resync"]["required"])
        await _until(caught_up, 120, "the vault caught up with the source")
        await asyncio.sleep(1.5)   # one more crash-consistent point at the newest state
        rc, out = await _cli("points", "--home", str(home), "vm1", "--json")
        assert rc == 0, out
        points = json.loads(out)
        assert any(p["seq"] <= acked_at_stop for p in points if p["kind"] == "crash-consistent")
        assert any(p["seq"] > written_while_down for p in points), "no point after the restart"
        mismatches: list[str] = []
        checked = 0
        for p in points + [{"id": "latest", "kind": "latest", "tag": None, "seq": None}]:
            dst = tmp_path / "export"
            rc, out = await _cli("failover", "--home", str(home), "vm1", "--test", "--point", p["id"],
                                 "--export", str(dst), timeout=90)
            assert rc == 0, (p, out)
            got = sha256_file(dst / "d0.img")
            rc, out = await _cli("failover-cleanup", "--home", str(home), "vm1")
            assert rc == 0, out
            checked += 1
            if p["kind"] == "latest":
                if got != final:
                    mismatches.append("latest differs from the source")
            elif p.get("tag") == "before-stop":
                if got != bookmark_sha:
                    mismatches.append(f"bookmark {p['id']} differs from the source at the bookmark")
            elif got not in states:
                mismatches.append(f"point {p['id']} (seq {p['seq']}) matches no state the source was in")
        assert not mismatches, mismatches
        print(f"\ndrain: SIGTERM to exit {drain_s:.2f} s with an agent writing; acknowledged at stop seq "
              f"{acked_at_stop}, welcomed back at {after[0][1]}; {writes['ok']} writes ({writes['failed']} failed), "
              f"{checked} points checked byte-exact")
    finally:
        if agent is not None:
            await agent.stop()
        await service.kill()


async def _true(v: bool) -> bool:
    return v
