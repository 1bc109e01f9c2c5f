"""The key test: writes, trims and zeroings through the agent's export with bookmarks between them; every
bookmarked point, several crash-consistent points and the latest point fail over byte-identical (sha256) to the
source at that moment, both as exported raw images and through the drill's NBD export."""

from __future__ import annotations

import datetime as dt
import random
import time
from pathlib import Path
from typing import Awaitable, Callable


from tests.conftest import need_tool
from tests.engine.harness import Site, make_disk, run_tool, sha256_file

MiB = 1 << 20


async def _step(site: Site, rnd: random.Random, disk: str, size: int) -> None:
    cmds: list[str] = []
    for _ in range(rnd.randint(2, 6)):
        off = rnd.randrange(0, size - 300_000)
        n = rnd.choice([512, 4096, 65536, 1000, 123_457, 262_144])
        op = rnd.random()
        if op < 0.6:
            cmds += ["-c", f"write -P 0x{rnd.randrange(1, 255):02x} {off} {n}"]
        elif op < 0.8:
            cmds += ["-c", f"write -z {off} {n}"]
        else:
            cmds += ["-c", f"discard {off} {n}"]
    await run_tool("qemu-io", "-f", "raw", f"{site.nbd_url}/{disk}", *cmds)


async def test_every_point_fails_over_byte_identical(tmp_path: Path) -> None:
    await every_point_fails_over_byte_identical(tmp_path)


async def every_point_fails_over_byte_identical(tmp_path: Path,
                                                prepare: Callable[[Site], Awaitable[None]] | None = None) -> None:
    """The scenario; ``prepare(site)`` runs before the appliance starts (another vault backend: tests of
    engine/vault/azure switch the home to Azure there)."""
    need_tool("qemu-io", "nbdcopy")
    rnd = random.Random(2026)
    src = {"sys": tmp_path / "sys.img", "data": tmp_path / "data.img"}
    make_disk(src["sys"], 24 * MiB, seed=1)
    make_disk(src["data"], 16 * MiB, seed=2)
    site = Site(tmp_path)
    if prepare is not None:
        await prepare(site)
    try:
        app = await site.start_appliance(crash_interval=0.5, rpo_threshold=30)
        await site.register("vm1")
        agent = await site.start_agent(src)
        await app.protect("vm1")
        await site.wait_for(lambda: app.machine_status("vm1")["state"] == "protected", 60, "initial sync")
        rt = app.runtimes["vm1"]

        history: dict[int, dict[str, str]] = {}   # seq → sha256 of every disk right after it
        bookmarks: dict[str, int] = {}
        moments: list[tuple[float, dict[str, str]]] = []
        for i in range(10):
            for _ in range(rnd.randint(1, 2)):
                disk = rnd.choice(list(src))
                await _step(site, rnd, disk, src[disk].stat().st_size)
            if i % 3 == 1:
                bm = await agent.bookmark(f"bm{i}")
                bookmarks[f"bm{i}"] = bm["seq"]
            seq = await site.wait_caught_up()
            history[seq] = {n: sha256_file(p) for n, p in src.items()}
            moments.append((time.time(), history[seq]))  # between this step's last write and the next's first
            # Quiet until a crash-consistent point lands exactly here.
            await site.wait_for(lambda: any(p.seq == seq for p in rt.vault.points()), 10, "crash point")

        points = rt.vault.points()
        app_points = [p for p in points if p.kind == "app-consistent"]
        assert {p.tag for p in app_points} == set(bookmarks)

        def expected(seq: int) -> dict[str, str] | None:
            # a point at seq shows the disk as after the last step whose records end at or before it
            if seq in history:
                return history[seq]
            return None

        checked_crash = 0
        chosen = []
        for p in points:
            if p.kind == "app-consistent":
                prior = max(s for s in history if s <= p.seq)
                chosen.append((p.id, history[prior]))
            elif expected(p.seq) is not None:
                chosen.append((p.id, expected(p.seq)))
                checked_crash += 1
        assert checked_crash >= 5
        chosen.append(("latest", {n: sha256_file(q) for n, q in src.items()}))
        chosen += [(f"tag:{t}", history[max(s for s in history if s <= bookmarks[t])]) for t in bookmarks]
        # Any point in time, not only listed points: the disks as they were at an instant (ISO 8601 or epoch).
        for k, (t, want) in enumerate(moments[1::3]):
            spec = dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat() if k % 2 else f"{t:.6f}"
            chosen.append((spec, want))

        for spec, want in chosen:
            out = tmp_path / "export"
            job = await app.recovery.test_failover("vm1", spec, export_dir=str(out), nbd=None)
            await site.wait_for(lambda: app.recovery.job(job.id).finished, 60, "export")
            assert app.recovery.job(job.id).error is None
            got = {n: sha256_file(out / f"{n}.img") for n in src}
            assert got == want, f"export of point {spec} differs from the source"
            await app.recovery.cleanup("vm1")
            assert not (out / "sys.img").exists()

        # Drills over NBD: read with a real client; writes go to scratch, the vault is untouched.
        for spec, want in chosen[::3] + [chosen[-1]]:
            job = await app.recovery.test_failover("vm1", spec, export_dir=None, nbd="127.0.0.1:0")
            url = f"nbd://{job.result['nbd']}"
            for n in src:
                dst = tmp_path / f"drill-{n}.img"
                await run_tool("nbdcopy", f"{url}/{n}", str(dst))
                assert sha256_file(dst) == want[n], f"drill of {spec}, disk {n}"
            await run_tool("qemu-io", "-f", "raw", f"{url}/sys", "-c", "write -P 0x5a 0 1M")
            await app.recovery.cleanup("vm1")
        spec, want = chosen[0]
        job = await app.recovery.test_failover("vm1", spec, export_dir=None, nbd="127.0.0.1:0")
        await run_tool("nbdcopy", f"nbd://{job.result['nbd']}/sys", str(tmp_path / "again.img"))
        assert sha256_file(tmp_path / "again.img") == want["sys"], "a drill's writes leaked into the vault"
        await app.recovery.cleanup("vm1")
        assert not (site.ahome / "drills" / "vm1").exists()
    finally:
        await site.stop()
