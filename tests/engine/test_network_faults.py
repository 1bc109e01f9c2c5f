"""Network faults between agent and process server (tests/faultproxy.py in between): cuts, an outage, stalls, a
slow, lossy link. Writes go on through the agent's export all along (qemu-io); at the end the latest point and the
points listed before the faults are exported and compared by sha256 with the source, and replication must have
resumed from the last acknowledged position: no return to initial sync, no full re-copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest

import engine.agent.agent as agent_mod
import engine.appliance.process_server as ps_mod
from engine.home import AgentHome
from tests.conftest import need_tool
from tests.engine.harness import Site, make_disk, run_tool, sha256_file
from tests.faultproxy import FaultProxy

MiB = 1 << 20
log = logging.getLogger(__name__)


class Churn:
    """Writes through the agent's export with qemu-io, in the background, until stopped."""

    def __init__(self, site: Site, size: int, seed: int, pause: float = 0.05) -> None:
        self.site = site
        self.size = size
        self.rnd = random.Random(seed)
        self.pause = pause
        self.bytes = 0
        self.runs = 0
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()

    async def step(self) -> None:
        cmds: list[str] = []
        for _ in range(self.rnd.randint(1, 3)):
            n = self.rnd.choice([4096, 65536, 100_000, 262_144])
            off = self.rnd.randrange(0, self.size - n) // 512 * 512
            cmds += ["-c", f"write -P 0x{self.rnd.randrange(1, 255):02x} {off} {n}"]
            self.bytes += n
        await run_tool("qemu-io", "-f", "raw", f"{self.site.nbd_url}/d0", *cmds)
        self.runs += 1

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self.step()
            await asyncio.sleep(self.pause)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="churn")

    async def stop(self) -> None:
        self._stop.set()
        if self._task:
            await self._task   # raises if a write failed: the export must keep working whatever the link does


@dataclass
class Monitor:
    """Samples the machine's status and the agent's counters every 50 ms."""

    site: Site
    samples: list[dict[str, Any]] = field(default_factory=list)
    _task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="monitor")

    async def _run(self) -> None:
        while True:
            app, agent = self.site.app, self.site.agent
            if app and agent:
                st = app.machine_status("vm1")
                self.samples.append({"t": time.monotonic(), "state": st["state"], "health": st["health"],
                                     "rpo": st["rpo_seconds"], "connected": st["agent_connected"],
                                     "journal": agent.capture.journal.bytes, "acked": agent.acked_seq,
                                     "synced": all(agent.sync_done.values())})
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def since(self, t: float) -> list[dict[str, Any]]:
        return [s for s in self.samples if s["t"] >= t]


class Rig:
    def __init__(self, tmp: Path, site: Site, proxy: FaultProxy, disk: Path) -> None:
        self.tmp = tmp
        self.site = site
        self.proxy = proxy
        self.disk = disk
        self.size = disk.stat().st_size
        self.baseline: list[tuple[str, str]] = []   # (point id, sha256 of the source at that point)
        self.welcomes: list[tuple[int, int]] = []     # (acked_seq before, last_seq in WELCOME) per session
        self.churns: list[Churn] = []
        self.monitors: list[Monitor] = []

    def churn(self, seed: int, pause: float) -> Churn:
        c = Churn(self.site, self.size, seed, pause)
        c.start()
        self.churns.append(c)
        return c

    def monitor(self) -> Monitor:
        m = Monitor(self.site)
        m.start()
        self.monitors.append(m)
        return m

    async def close(self) -> None:
        for m in self.monitors:
            await m.stop()
        for c in self.churns:
            with contextlib.suppress(Exception):
                await c.stop()

    async def start_agent(self) -> None:
        """Starts the agent, recording at each WELCOME what it had acknowledged before and what the PS has."""
        agent = await self.site.start_agent({"d0": self.disk})
        orig = agent._welcome

        def welcome(w: dict[str, Any]) -> None:
            self.welcomes.append((agent.acked_seq, int(w.get("last_seq", 0))))
            orig(w)
        agent._welcome = welcome  # type: ignore[method-assign]

    @property
    def app(self):  # type: ignore[no-untyped-def]
        return self.site.app

    @property
    def agent(self):  # type: ignore[no-untyped-def]
        return self.site.agent

    @property
    def rt(self):  # type: ignore[no-untyped-def]
        return self.site.app.runtimes["vm1"]

    async def start_protected(self, timeout: float = 30) -> None:
        await self.start_agent()
        await self.app.protect("vm1")
        await self.site.wait_for(lambda: self.app.machine_status("vm1")["state"] == "protected", timeout,
                                 "initial sync")

    async def add_baseline_point(self, pattern: int, offset: int) -> None:
        """A write, then a crash-consistent point exactly after it; remembered with the source's sha256."""
        await run_tool("qemu-io", "-f", "raw", f"{self.site.nbd_url}/d0", "-c", f"write -P {pattern} {offset} 192k")
        seq = await self.site.wait_caught_up(timeout=20)
        digest = sha256_file(self.disk)
        await self.site.wait_for(lambda: any(p.seq == seq for p in self.rt.vault.points()), 10, "baseline point")
        self.baseline.append((next(p.id for p in self.rt.vault.points() if p.seq == seq), digest))

    def diag(self) -> str:
        a = self.agent
        return (f"agent seq {a.capture.seq} sent {a.sent_seq} acked {a.acked_seq} in_flight {len(a.in_flight)} "
                f"connected {a.connected.is_set()} error {a.last_error}; vault {self.rt.vault.last_seq} "
                f"cache {self.rt.cache.last_seq}; proxy {self.proxy.stats()}; status {self.app.machine_status('vm1')}")

    def connected(self) -> bool:
        return bool(self.agent.connected.is_set() and self.rt.connection is not None and self.proxy.active)

    async def export_sha(self, spec: str) -> str:
        app = self.app
        job = await app.recovery.test_failover("vm1", spec, export_dir=str(self.tmp / "out"), nbd=None)
        await self.site.wait_for(lambda: app.recovery.job(job.id).finished, 60, f"export of {spec}")
        assert app.recovery.job(job.id).error is None, app.recovery.job(job.id).error
        digest = sha256_file(self.tmp / "out" / "d0.img")
        await app.recovery.cleanup("vm1")
        return digest

    async def verify(self, catch_up: float = 30) -> None:
        """Everything captured reaches the vault; latest and the earlier points read back byte-identical."""
        await self.site.wait_caught_up(timeout=catch_up)
        assert await self.export_sha("latest") == sha256_file(self.disk), "latest point differs from the source"
        listed = {p.id for p in self.rt.vault.points()}
        for pid, want in self.baseline:
            assert pid in listed, f"point {pid} listed before the faults is gone"
            assert await self.export_sha(pid) == want, f"point {pid} listed before the faults changed"


async def wait(cond: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    """Like Site.wait_for, with the failure message built when it fails (the state then, not before)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what()}")
        await asyncio.sleep(0.05)


def _point_to_proxy(agent_home: Path, port: int) -> None:
    """The agent connects to cfg["appliance"][0]:cfg["data_port"]: make that the proxy."""
    home = AgentHome(agent_home)
    cfg = home.load_config()
    cfg["data_port"] = port
    home.save_config(cfg)


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, *, size: int = 8 * MiB, seed: int = 1, fill: float = 0.3,
              **policy: float) -> AsyncIterator[Rig]:
    """Appliance + proxy + agent whose data port is the proxy's (agent not started yet)."""
    need_tool("qemu-io")
    disk = tmp_path / "d0.img"
    make_disk(disk, size, seed=seed, fill=fill)
    site = Site(tmp_path)
    proxy: FaultProxy | None = None
    try:
        app = await site.start_appliance(crash_interval=0.5, **policy)
        await site.register()
        assert app.data_address
        proxy = FaultProxy("127.0.0.1", app.data_address[1], seed=seed)
        await proxy.start()
        _point_to_proxy(site.agent_home, proxy.port)
        r = Rig(tmp_path, site, proxy, disk)
        try:
            yield r
        finally:
            await r.close()
    finally:
        if proxy:
            proxy.resume()
        await site.stop()
        if proxy:
            await proxy.stop()


def _assert_no_resync(mon: Monitor, since: float) -> None:
    samples = mon.since(since)
    assert samples
    states = {s["state"] for s in samples}
    assert states == {"protected"}, f"the machine left 'protected' during the faults: {states}"
    assert all(s["synced"] for s in samples), "the agent went back to initial replication"


def _assert_nothing_acked_lost(r: Rig, mon: Monitor, sessions: int) -> None:
    """Each new session starts at or after what the agent had seen acknowledged; the acked position never drops."""
    assert len(r.welcomes) >= sessions, r.welcomes
    lost = [(a, w) for a, w in r.welcomes if w < a]
    assert not lost, f"the process server welcomed the agent back before records it had acknowledged: {lost}"
    acked = [s["acked"] for s in mon.samples]
    assert all(a <= b for a, b in zip(acked, acked[1:])), "an acknowledged position went backwards"


async def _cut_while_streaming(r: Rig, rnd: random.Random, cuts: int, reconnect_within: float) -> list[float]:
    """Waits for a fresh connection carrying traffic, cuts it mid-stream; returns each reconnect time."""
    times: list[float] = []
    for i in range(cuts):
        acked0 = r.agent.acked_seq
        await r.site.wait_for(lambda: r.agent.acked_seq > acked0, 5, f"acknowledgements before cut {i}")
        await asyncio.sleep(rnd.uniform(0.1, 0.4))    # batches in flight
        accepted, old = r.proxy.accepted, r.rt.connection
        assert r.proxy.cut() >= 1
        t0 = time.monotonic()
        await wait(lambda: r.proxy.accepted > accepted and r.connected() and r.rt.connection is not old,
                   reconnect_within, lambda: f"the agent to reconnect after cut {i} (reconnect times so far "
                   f"{[round(x, 2) for x in times]}); {r.diag()}")
        times.append(time.monotonic() - t0)
    return times


async def test_repeated_cuts_resume_from_last_ack(tmp_path: Path) -> None:
    """The link is reset again and again while writes stream: the agent reconnects and goes on from the last
    acknowledged record. Bytes on the wire stay close to bytes written (no re-copy), nothing acknowledged is lost."""
    async with rig(tmp_path, seed=11) as r:
        await r.start_protected()
        await r.add_baseline_point(0x21, 0)
        mon = r.monitor()
        t_faults = time.monotonic()
        wire0 = r.proxy.bytes_up
        churn = r.churn(seed=12, pause=0.1)
        try:
            await _cut_while_streaming(r, random.Random(13), cuts=4, reconnect_within=15)
            await asyncio.sleep(0.5)
        finally:
            await churn.stop()
        await r.verify()
        await mon.stop()
        written = churn.bytes
        wire = r.proxy.bytes_up - wire0
        assert r.proxy.cut_count == 4 and r.proxy.accepted >= 5
        _assert_no_resync(mon, t_faults)
        _assert_nothing_acked_lost(r, mon, sessions=5)
        log.info("cuts: %d bytes on the wire for %d bytes written (%.2fx)", wire, written, wire / max(written, 1))
        assert written > 1 * MiB
        assert wire <= 3 * written, f"{wire} bytes sent for {written} bytes written: data was sent again"


async def test_reconnect_is_prompt_after_every_cut(tmp_path: Path) -> None:
    """A cut of a link that was working fine must not inherit the backoff of earlier, already healed outages: after
    each cut the agent is back within the first backoff step (0.5 s ± 50%), not 2^n times that."""
    async with rig(tmp_path, seed=51) as r:
        await r.start_protected()
        churn = r.churn(seed=52, pause=0.1)
        try:
            await _cut_while_streaming(r, random.Random(53), cuts=5, reconnect_within=2.0)
        finally:
            await churn.stop()
        await r.site.wait_caught_up(timeout=30)


async def test_outage_journals_then_catches_up(tmp_path: Path) -> None:
    """The link is down for 5 s while writes go on: the agent journals them, RPO grows and health turns critical;
    after up() everything arrives and the RPO is back to 0."""
    async with rig(tmp_path, seed=21, rpo_threshold=2.0) as r:
        await r.start_protected()
        await r.add_baseline_point(0x31, 1 * MiB)
        mon = r.monitor()
        churn = r.churn(seed=22, pause=0.1)
        await asyncio.sleep(0.5)
        journal0 = r.agent.capture.journal.bytes
        seq0 = r.agent.capture.seq
        t_down = time.monotonic()
        await r.proxy.down()
        await asyncio.sleep(5)
        during = mon.since(t_down + 0.5)
        await r.proxy.up()
        t_up = time.monotonic()
        await asyncio.sleep(0.5)
        await churn.stop()
        assert r.agent.capture.seq > seq0 + 10, "writes were not captured while the link was down"
        assert max(s["journal"] for s in during) > journal0 + 1 * MiB, "the journal did not grow during the outage"
        assert not any(s["connected"] for s in during)
        rpos = [s["rpo"] for s in during]
        assert max(rpos) >= 4.0, f"RPO did not grow during the outage: {rpos[::10]}"
        assert "critical" in {s["health"] for s in during}
        assert r.app.machine_status("vm1")["state"] == "protected"
        await r.verify(catch_up=30)
        caught = time.monotonic() - t_up
        await r.site.wait_for(lambda: r.app.machine_status("vm1")["rpo_seconds"] == 0, 10, "RPO back to 0")
        assert r.app.machine_status("vm1")["health"] == "ok"
        await mon.stop()
        _assert_no_resync(mon, t_down)
        _assert_nothing_acked_lost(r, mon, sessions=2)
        log.info("caught up %.1fs after the link came back", caught)


async def test_stall_is_detected_and_replication_reconnects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """Connections open but silent: first a half-dead link (the open connection silent, new ones fine), then a
    full stall of 2.5 s. The agent notices within LINK_TIMEOUT (patched to 2 s; IDLE_TIMEOUT to 3 s), reconnects,
    the new connection replaces the dead one at the process server, and replication goes on from the last ack."""
    # margins of ~2 s on each side, so a loaded machine still lands detection inside the stall:
    # LINK_TIMEOUT (2 s) < full stall (4 s) < IDLE_TIMEOUT (6 s)
    monkeypatch.setattr(agent_mod, "LINK_TIMEOUT", 2.0)
    monkeypatch.setattr(ps_mod, "IDLE_TIMEOUT", 6.0)
    caplog.set_level(logging.INFO, logger="engine")
    async with rig(tmp_path, seed=31) as r:
        await r.start_protected()
        await r.add_baseline_point(0x41, 2 * MiB)
        mon = r.monitor()
        t_faults = time.monotonic()
        churn = r.churn(seed=32, pause=0.1)
        try:
            # 1. half-dead link
            await asyncio.sleep(0.5)
            accepted0 = r.proxy.accepted
            old_conn = r.rt.connection
            t0 = time.monotonic()
            r.proxy.stall(None, existing_only=True)
            await r.site.wait_for(lambda: r.proxy.accepted > accepted0 and r.connected()
                                  and r.rt.connection is not old_conn, 8, "a new connection after the stall")
            detected = time.monotonic() - t0
            # LINK_TIMEOUT after the last answer (which came at most ~1 s before the stall), then a reconnect
            assert 1.0 <= detected < 6, detected
            assert any("stall" in rec.getMessage() for rec in caplog.records), "the agent did not report a stall"
            seq = await r.site.wait_caught_up(timeout=10)   # over the new connection, old one still silent
            assert seq > 0
            # 2. everything silent for 2.5 s, reconnect attempts included: longer than LINK_TIMEOUT, shorter than
            #    IDLE_TIMEOUT, so the old connection comes back to life at the process server just as the agent's
            #    new one arrives there
            accepted1 = r.proxy.accepted
            r.proxy.stall(4.0)
            await asyncio.sleep(2.5)
            await r.site.wait_for(lambda: r.proxy.accepted > accepted1 and r.connected(), 10,
                                  "a new connection after the full stall")
        finally:
            await churn.stop()
        await r.verify()
        await mon.stop()
        _assert_no_resync(mon, t_faults)
        _assert_nothing_acked_lost(r, mon, sessions=3)


async def test_slow_lossy_link_converges(tmp_path: Path) -> None:
    """Latency, a bandwidth limit and refused connections from the start (initial sync included), plus cuts while
    writing, so that reconnects meet the drops: replication still converges byte-identical."""
    # seed 48: the proxy drops the 2nd connection (the first reconnect) and lets the next ones through
    async with rig(tmp_path, seed=48) as r:
        r.proxy.delay(0.03)
        r.proxy.bandwidth(3_000_000)
        r.proxy.drop(0.3)
        await r.start_protected(timeout=30)
        await r.add_baseline_point(0x51, 3 * MiB)
        mon = r.monitor()
        t_faults = time.monotonic()
        churn = r.churn(seed=42, pause=0.3)
        try:
            await _cut_while_streaming(r, random.Random(43), cuts=2, reconnect_within=20)
            await asyncio.sleep(0.5)
        finally:
            await churn.stop()
        await r.verify(catch_up=30)
        await mon.stop()
        assert r.proxy.dropped >= 1, r.proxy.stats()
        _assert_no_resync(mon, t_faults)
        _assert_nothing_acked_lost(r, mon, sessions=3)


async def test_slow_link_is_not_mistaken_for_a_stall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow but healthy link (200 kB/s against LINK_TIMEOUT 5 s; the same as 400 kB/s against the default 10 s)
    carries initial replication on one connection, sending the disk's data once."""
    monkeypatch.setattr(agent_mod, "LINK_TIMEOUT", 5.0)
    async with rig(tmp_path, seed=61) as r:
        data = r.disk.stat().st_blocks * 512
        r.proxy.bandwidth(200_000)
        await r.site.start_agent({"d0": r.disk})
        await r.app.protect("vm1")
        await wait(lambda: r.app.machine_status("vm1")["state"] == "protected" or r.proxy.accepted > 1,
                   3 * data / 500_000 + 5, lambda: f"initial sync; {r.diag()}")
        assert r.proxy.accepted == 1, f"the agent dropped a working link: {r.agent.last_error}; {r.proxy.stats()}"
        await wait(lambda: r.app.machine_status("vm1")["state"] == "protected", 3 * data / 500_000 + 5,
                   lambda: f"initial sync; {r.diag()}")
        assert r.proxy.bytes_up <= 1.3 * data, f"{r.proxy.bytes_up} bytes sent for {data} bytes of data"
