"""A real ext4 filesystem on the agent's export (nbdfuse + loop), bookmarks taken under fsfreeze by the agent's
hooks; the bookmarked point fails over to an image that fsck finds clean and that holds exactly the files
written before the bookmark."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from engine.agent.agent import Agent
from tests.conftest import need_tool
from tests.engine.harness import Site, sh

MiB = 1 << 20


def _write(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).write_bytes(data)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


async def test_ext4_on_the_export_fails_over_clean(tmp_path: Path) -> None:
    need_tool("nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "mount", "umount", "e2fsck", "fsfreeze")
    if os.geteuid() != 0:
        pytest.skip("mounting loop devices needs root")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK) or not os.path.exists("/dev/loop-control"):
        pytest.skip("no usable /dev/fuse or loop devices on this machine")
    disk = tmp_path / "d0.img"
    with open(disk, "wb") as f:
        f.truncate(64 * MiB)
    fuse_dir, mnt, check_mnt = tmp_path / "fuse", tmp_path / "mnt", tmp_path / "check"
    for d in (fuse_dir, mnt, check_mnt):
        d.mkdir()
    site = Site(tmp_path)
    app = await site.start_appliance(crash_interval=1)
    await site.register()
    # The agent quiesces the filesystem around each bookmark, and always thaws.
    site.agent = Agent(site.agent_home, {"d0": disk}, ("127.0.0.1", 0),
                       pre_bookmark=f"fsfreeze -f {mnt}", post_bookmark=f"fsfreeze -u {mnt}")
    await site.agent.start()
    await app.protect("vm1")
    await site.wait_for(lambda: app.machine_status("vm1")["state"] == "protected", 60, "initial sync")
    fuse = await asyncio.create_subprocess_exec("nbdfuse", str(fuse_dir / "disk"), f"{site.nbd_url}/d0",
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    state: dict[str, object] = {"loop": None, "mounted": False}
    ok = False
    try:
        async def body() -> None:
            for _ in range(100):
                if (fuse_dir / "disk").exists():
                    break
                await asyncio.sleep(0.1)
            rc, out, err = await sh("losetup", "--direct-io=on", "-f", "--show", str(fuse_dir / "disk"), check=False)
            if rc:
                pytest.skip(f"loop devices unusable here: {err.strip()}")
            state["loop"] = dev = out.strip()
            await sh("mkfs.ext4", "-q", "-F", dev)
            await sh("mount", dev, str(mnt))
            state["mounted"] = True
            first = {f"a{i}.bin": os.urandom(300_000 + i * 4097) for i in range(6)}
            await asyncio.to_thread(_write, mnt, first)   # file I/O off the loop that serves the export
            bm = await site.agent.bookmark("fs-consistent")
            expected = await asyncio.to_thread(_digests, mnt)
            await asyncio.to_thread(_write, mnt, {f"b{i}.bin": os.urandom(200_000) for i in range(4)})
            await asyncio.to_thread((mnt / "a0.bin").unlink)
            await sh("umount", str(mnt))
            state["mounted"] = False
            await sh("losetup", "-d", dev)
            state["loop"] = None
            await site.wait_caught_up()
            job = await app.recovery.test_failover("vm1", "tag:fs-consistent", export_dir=str(tmp_path / "out"),
                                                   nbd=None)
            await site.wait_for(lambda: app.recovery.job(job.id).finished, 60, "export")
            assert job.result["point"]["id"] == bm["point_id"]
            img = tmp_path / "out" / "d0.img"
            await sh("e2fsck", "-fn", str(img))                      # clean: app-consistent
            await sh("mount", "-o", "loop,ro", str(img), str(check_mnt))
            try:
                assert await asyncio.to_thread(_digests, check_mnt) == expected
            finally:
                await sh("umount", str(check_mnt))
            await app.recovery.cleanup("vm1")

        await asyncio.wait_for(body(), 240)
        ok = True
    finally:
        if not ok and fuse.returncode is None:
            fuse.kill()
            await fuse.wait()
        if state["mounted"]:
            await sh("fsfreeze", "-u", str(mnt), check=False)
            await sh("umount", "-l", str(mnt), check=False)
        if state["loop"]:
            await sh("losetup", "-d", str(state["loop"]), check=False)
        await sh("fusermount3", "-u", str(fuse_dir), check=False)
        if fuse.returncode is None:
            try:
                await asyncio.wait_for(fuse.wait(), 10)
            except TimeoutError:
                fuse.kill()
                await fuse.wait()
        await site.stop()
