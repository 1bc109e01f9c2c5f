"""NBD server against real clients (qemu-io, qemu-img, nbdcopy, nbdinfo, libnbd, nbdfuse + ext4).

Clients are subprocesses run with ``asyncio.create_subprocess_exec`` so the server keeps running on the test's loop.
Malformed input, ordering, backend failures and TLS, driven by a raw client, are in ``test_nbd_bad_input.py``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from engine import fileio
from engine.nbd.file_backend import FileBackend
from engine.nbd.server import NBDServer
from tests.conftest import have_libnbd_python, need_tool
from tests.engine.harness import sh
from tests.engine.nbd.helpers import MiB, random_file, serve_disks, sha256


# -- helpers -----------------------------------------------------------------------------------------------------

@pytest.fixture
async def served(tmp_path):
    async with serve_disks(tmp_path) as s:
        yield s


# -- real clients --------------------------------------------------------------------------------------------------

async def test_qemu_io_patterns(served):
    need_tool("qemu-io")
    cmds = ["write -P 0xab 0 64k", "read -P 0xab 0 64k", "write -z 64k 64k", "read -P 0 64k 64k",
            "write -z -u 128k 64k", "read -P 0 128k 64k", "discard 192k 64k", "flush",
            "write -f -P 0xcd 1M 4k", "read -P 0xcd 1M 4k", "write -P 0x11 16380k 4k", "read -P 0x11 16380k 4k"]
    args = ["qemu-io", "-f", "raw", served.uri()]
    for c in cmds:
        args += ["-c", c]
    _, out, err = await sh(*args)
    assert "Pattern verification failed" not in out + err, out + err
    data = served.path.read_bytes()
    assert data[:64 * 1024] == b"\xab" * 65536
    assert data[64 * 1024:192 * 1024] == bytes(128 * 1024)
    assert data[MiB:MiB + 4096] == b"\xcd" * 4096
    assert data[-4096:] == b"\x11" * 4096
    # Writing past the end fails cleanly, and the connection-level error does not hurt the next client.
    rc, out, err = await sh("qemu-io", "-f", "raw", served.uri(), "-c", "write 16M 4k", check=False)
    assert "error" in (out + err).lower() or "failed" in (out + err).lower()
    await sh("qemu-io", "-f", "raw", served.uri(), "-c", "read -P 0x11 16380k 4k")


async def test_qemu_img_convert_and_compare(served, tmp_path):
    need_tool("qemu-img")
    src = random_file(tmp_path / "src.raw", 16 * MiB, holes=True)
    await sh("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), served.uri())
    await sh("qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), served.uri())
    assert sha256(served.path) == sha256(src)
    # And from a qcow2 image (different request pattern: zero clusters become WRITE_ZEROES).
    q = tmp_path / "src.qcow2"
    src2 = random_file(tmp_path / "src2.raw", 16 * MiB, holes=True)
    await sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(src2), str(q))
    await sh("qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw", str(q), served.uri())
    await sh("qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(q), served.uri())
    assert sha256(served.path) == sha256(src2)


async def test_nbdcopy_both_directions(served, tmp_path):
    need_tool("nbdcopy")
    src = random_file(tmp_path / "src.raw", 16 * MiB, holes=True)
    await sh("nbdcopy", str(src), served.uri())
    assert sha256(served.path) == sha256(src)
    out = tmp_path / "out.raw"
    await sh("nbdcopy", served.uri(), str(out))
    assert sha256(out) == sha256(src)
    await sh("nbdcopy", served.uri("ro"), str(out))  # read-only export reads fine
    assert sha256(out) == sha256(served.path.parent / "ro.img")


async def test_nbdinfo_list(served):
    need_tool("nbdinfo")
    _, out, _ = await sh("nbdinfo", "--list", f"nbd://127.0.0.1:{served.port}")
    assert 'export="disk"' in out and 'export="ro"' in out
    assert "can_multi_conn: false" in out
    _, out, _ = await sh("nbdinfo", served.uri("ro"))
    assert "is_read_only: true" in out and f"export-size: {1 * MiB}" in out
    rc, _, _ = await sh("nbdinfo", served.uri("nope"), check=False)
    assert rc != 0


LIBNBD_SCRIPT = r"""
import errno, sys, nbd
M = 1024 * 1024
h = nbd.NBD()
h.connect_uri(sys.argv[1])
assert h.get_size() == 16 * M
assert not h.can_multi_conn() and h.can_trim() and h.can_zero() and h.can_fua() and h.can_flush()
# libnbd argument order: pread(count, offset), pwrite(buf, offset), zero/trim(count, offset)
h.pwrite(b"\x5a" * (3 * M // 4), 4096)
h.pwrite(b"\x77" * 4096, M, nbd.CMD_FLAG_FUA)
assert h.pread(3 * M // 4, 4096) == b"\x5a" * (3 * M // 4)
h.zero(65536, 4096)
h.zero(65536, 65536 + 4096, nbd.CMD_FLAG_NO_HOLE)
assert h.pread(2 * 65536, 4096) == bytes(2 * 65536)
h.trim(M // 2, 2 * M)
h.flush()
h.set_strict_mode(0)  # let out-of-range requests reach the server
try:
    h.pread(8192, 16 * M - 4096)
    sys.exit("read past the end succeeded")
except nbd.Error as e:
    assert e.errnum == errno.EINVAL, e
try:
    h.pwrite(b"x" * 8192, 16 * M - 4096)
    sys.exit("write past the end succeeded")
except nbd.Error as e:
    assert e.errnum == errno.ENOSPC, e
assert h.pread(4096, M) == b"\x77" * 4096
h.shutdown()
print("OK")
"""


async def test_libnbd_python(served):
    if not have_libnbd_python():
        pytest.skip("python3-libnbd is not importable by /usr/bin/python3")
    _, out, _ = await sh("/usr/bin/python3", "-c", LIBNBD_SCRIPT, served.uri())
    assert out.strip() == "OK"
    data = served.path.read_bytes()
    assert data[4096:4096 + 2 * 65536] == bytes(2 * 65536)
    assert data[4096 + 2 * 65536:4096 + 3 * MiB // 4] == b"\x5a" * (3 * MiB // 4 - 2 * 65536)
    assert data[MiB:MiB + 4096] == b"\x77" * 4096


def _write_tree(mnt: Path, payloads: dict[str, bytes]) -> None:
    for name, data in payloads.items():
        (mnt / name).write_bytes(data)
    (mnt / "dir").mkdir()
    (mnt / "dir" / "small.txt").write_text("lifeboat\n")


def _check_tree(mnt: Path, payloads: dict[str, bytes]) -> None:
    for name, data in payloads.items():
        assert (mnt / name).read_bytes() == data
    assert (mnt / "dir" / "small.txt").read_text() == "lifeboat\n"


async def test_ext4_over_nbdfuse_and_loop(tmp_path):
    """mkfs + mount + files through nbdfuse and a loop device, all served by this process's event loop.

    Any file I/O on the mount must run in a thread: ext4 may need to read metadata through
    loop -> FUSE -> nbdfuse -> this very loop, so blocking the loop on it deadlocks (in uninterruptible sleep).
    """
    need_tool("nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "mount", "umount", "e2fsck")
    if os.geteuid() != 0:
        pytest.skip("mounting a loop device needs root")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.skip("/dev/fuse is not usable")
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no loop devices")
    img = tmp_path / "fs.img"
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
    backend = FileBackend(img)
    server = NBDServer({"fs": backend})
    _, port = await server.start()
    fuse_dir, mnt = tmp_path / "fuse", tmp_path / "mnt"
    fuse_dir.mkdir()
    mnt.mkdir()
    fuse = await asyncio.create_subprocess_exec("nbdfuse", str(fuse_dir / "disk"), f"nbd://127.0.0.1:{port}/fs",
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    state: dict[str, str | bool | None] = {"loop": None, "mounted": False}
    payloads = {f"f{i}.bin": os.urandom(512 * 1024 + i * 4097) for i in range(8)}

    async def body() -> None:
        for _ in range(100):
            if (fuse_dir / "disk").exists() or fuse.returncode is not None:
                break
            await asyncio.sleep(0.1)
        if not (fuse_dir / "disk").exists():
            pytest.skip("nbdfuse did not come up")
        rc, out, err = await sh("losetup", "--direct-io=on", "-f", "--show", str(fuse_dir / "disk"), check=False)
        if rc != 0:
            pytest.skip(f"loop devices unusable: {err.strip()}")
        state["loop"] = loop_dev = out.strip()
        await sh("mkfs.ext4", "-q", "-F", loop_dev)
        await sh("mount", loop_dev, str(mnt))
        state["mounted"] = True
        await asyncio.to_thread(_write_tree, mnt, payloads)
        await sh("sync")
        await sh("umount", str(mnt))
        state["mounted"] = False
        await sh("e2fsck", "-fn", loop_dev)
        await sh("losetup", "-d", loop_dev)
        state["loop"] = None
        await sh("fusermount3", "-u", str(fuse_dir))
        await asyncio.wait_for(fuse.wait(), 30)
        # The backing file itself must now hold a clean filesystem with the files.
        await sh("e2fsck", "-fn", str(img))
        await sh("mount", "-o", "loop,ro", str(img), str(mnt))
        state["mounted"] = True
        await asyncio.to_thread(_check_tree, mnt, payloads)

    ok = False
    try:
        await asyncio.wait_for(body(), 180)  # cleanup below must get its chance even if something wedges
        ok = True
    finally:
        if not ok and fuse.returncode is None:
            # Kill the FUSE daemon first: that fails any wedged I/O instead of leaving umount/losetup hanging.
            fuse.kill()
            await fuse.wait()
        if state["mounted"]:
            await sh("umount", "-l", str(mnt), check=False)
        if state["loop"]:
            await sh("losetup", "-d", str(state["loop"]), check=False)
        if not ok or fuse.returncode is None:  # a killed daemon still leaves its mount behind
            await sh("fusermount3", "-u", str(fuse_dir), check=False)
        if fuse.returncode is None:
            try:
                await asyncio.wait_for(fuse.wait(), 10)
            except TimeoutError:
                fuse.kill()
                await fuse.wait()
        await server.stop()
        backend.close()


def test_fileio_holes_and_extents(tmp_path):
    p = tmp_path / "sparse"
    with open(p, "wb") as f:
        f.truncate(8 * MiB)
        f.seek(MiB)
        f.write(b"\x01" * MiB)
        f.seek(5 * MiB)
        f.write(b"\x02" * MiB)
    fd = os.open(p, os.O_RDWR)
    try:
        ext = list(fileio.data_extents(fd))
        covered = sum(n for _, n in ext)
        assert covered >= 2 * MiB and all(0 <= o and o + n <= 8 * MiB for o, n in ext)
        if len(ext) == 2:  # SEEK_DATA supported by this filesystem
            assert ext == [(MiB, MiB), (5 * MiB, MiB)]
        assert list(fileio.data_extents(fd, 2 * MiB, 5 * MiB)) in ([], [(2 * MiB, 3 * MiB)])
        if fileio.punch_hole(fd, MiB, MiB):
            assert os.pread(fd, MiB, MiB) == bytes(MiB)
            assert os.fstat(fd).st_size == 8 * MiB
        fileio.write_zeros(fd, 5 * MiB, 4096)
        assert os.pread(fd, 4097, 5 * MiB) == bytes(4096) + b"\x02"
        assert fileio.punch_hole(fd, 0, 0) is True
    finally:
        os.close(fd)
