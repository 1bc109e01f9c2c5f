"""engine.platform: the implementation picked at import, and the POSIX and portable implementations side by side
(the Windows one cannot run here; tests/test_static.py type-checks it with mypy --platform win32)."""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType

import pytest

from engine import platform
from engine.platform import base, posix

ROOT = Path(__file__).resolve().parents[3]
IMPLS = [pytest.param(posix, id="posix"), pytest.param(base, id="portable")]


def _pick(env_value: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != platform.ENV}
    if env_value is not None:
        env[platform.ENV] = env_value
    return subprocess.run([sys.executable, "-c", "import engine.platform as p; print(p.NAME, p.pread.__module__)"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_native_by_default_portable_on_request_and_nothing_else() -> None:
    assert _pick(None).stdout.split() == ["posix", "posix"]
    assert _pick("portable").stdout.split() == ["portable", "engine.platform.base"]
    bad = _pick("windows")
    assert bad.returncode != 0 and "LIFEBOAT_PLATFORM='windows'" in bad.stderr


def test_posix_hot_path_calls_are_the_os_functions_themselves() -> None:
    """No wrapper frame per call: ``platform.pread`` costs what ``os.pread`` did."""
    assert posix.pread is os.pread and posix.pwrite is os.pwrite and posix.writev is os.writev
    assert posix.fdatasync is os.fdatasync
    if platform.NAME == "posix":
        assert platform.pread is os.pread and platform.pwrite is os.pwrite


@pytest.mark.parametrize("impl", IMPLS)
def test_positioned_io(impl: ModuleType, tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert impl.pwrite(fd, b"hello", 10) == 5
        assert impl.pwrite(fd, memoryview(bytearray(b"XY")), 11) == 2
        assert impl.pread(fd, 100, 0) == bytes(10) + b"hXYlo"     # short only at the end of the file
        assert impl.pread(fd, 3, 12) == b"Ylo" and impl.pread(fd, 4, 99) == b""
        os.lseek(fd, 0, os.SEEK_END)
        assert impl.writev(fd, [b"ab", memoryview(b"cd"), bytearray(b"e")]) == 5
        impl.fdatasync(fd)
        assert (tmp_path / "f").read_bytes() == bytes(10) + b"hXYloabcde"
    finally:
        os.close(fd)


def test_portable_positioned_io_from_many_threads(tmp_path: Path) -> None:
    """The portable pread/pwrite seek and read under one lock: threads sharing a descriptor never mix offsets."""
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    errors: list[str] = []

    def worker(k: int) -> None:
        for i in range(200):
            block = bytes([k]) * 512
            base.pwrite(fd, block, (k * 200 + i) * 512)
            if base.pread(fd, 512, (k * 200 + i) * 512) != block:
                errors.append(f"thread {k} block {i}")

    try:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        os.close(fd)
    assert not errors
    data = (tmp_path / "f").read_bytes()
    assert all(data[k * 200 * 512:(k + 1) * 200 * 512] == bytes([k]) * 200 * 512 for k in range(8))


@pytest.mark.parametrize("impl", IMPLS)
def test_lock_excludes_a_second_open_until_unlocked(impl: ModuleType, tmp_path: Path) -> None:
    a = os.open(tmp_path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    b = os.open(tmp_path / "lock", os.O_RDWR)
    try:
        assert impl.try_lock(a)
        assert not impl.try_lock(b)
        impl.unlock(a)
        assert impl.try_lock(b)
        impl.unlock(b)
    finally:
        os.close(a)
        os.close(b)


@pytest.mark.parametrize("impl", IMPLS)
def test_direct_open_and_directory_sync(impl: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    fd = impl.open_direct(str(tmp_path / "f"))
    if impl is base:
        assert fd is None
    elif fd is not None:   # None where the filesystem refuses O_DIRECT
        os.close(fd)
    impl.fsync_dir(tmp_path)


@pytest.mark.parametrize("impl", IMPLS)
def test_mappings(impl: ModuleType, tmp_path: Path) -> None:
    import mmap
    m = impl.anonymous_map(1 << 20)
    try:
        assert len(m) == 1 << 20 and m[:16] == bytes(16)
        assert ctypes.addressof(ctypes.c_char.from_buffer(m)) % mmap.PAGESIZE == 0   # O_DIRECT needs it aligned
    finally:
        m.close()
    data = os.urandom(3 * mmap.ALLOCATIONGRANULARITY)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        with impl.map_readonly(fd, mmap.ALLOCATIONGRANULARITY, mmap.ALLOCATIONGRANULARITY) as r:
            assert r[:] == data[mmap.ALLOCATIONGRANULARITY:2 * mmap.ALLOCATIONGRANULARITY]
    finally:
        os.close(fd)


@pytest.mark.parametrize("impl", IMPLS)
def test_poller_and_send_queue(impl: ModuleType) -> None:
    a, b = socket.socketpair()
    try:
        p = impl.new_poller()
        p.register(a.fileno(), impl.POLLIN)
        assert p.poll(0) == []
        b.send(b"x")
        assert p.poll(1000) == [(a.fileno(), impl.POLLIN)]
        p.modify(a.fileno(), impl.POLLIN | impl.POLLOUT)
        assert dict(p.poll(1000))[a.fileno()] & impl.POLLOUT
        assert impl.unsent_bytes(a.fileno()) >= 0
    finally:
        a.close()
        b.close()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"echo " + await reader.readline())
    await writer.drain()
    writer.close()


@pytest.mark.parametrize("impl", IMPLS)
async def test_control_channel_round_trip(impl: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    server = await impl.serve_control(_echo, path)
    try:
        assert path.stat().st_mode & 0o777 == 0o600

        def call() -> bytes:
            with impl.connect_control(path, 10) as s:
                s.sendall(b"ping\n")
                return s.makefile("rb").readline()

        assert await asyncio.to_thread(call) == b"echo ping\n"
        again = await impl.serve_control(_echo, path)   # a restart replaces a stale endpoint
        again.close()
        await again.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


async def test_portable_control_channel_drops_clients_without_the_token(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    server = await base.serve_control(_echo, path)
    try:
        port = server.sockets[0].getsockname()[1]
        assert server.sockets[0].getsockname()[0] == "127.0.0.1"

        def intrude() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"not-the-token\nping\n")
                return s.recv(100)

        assert await asyncio.to_thread(intrude) == b""
        path.write_text("garbage")
        with pytest.raises(ConnectionRefusedError):
            base.connect_control(path, 1)
    finally:
        server.close()
        await server.wait_closed()


async def test_portable_stop_signal_reaches_the_loop() -> None:
    import signal
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    stop = asyncio.Event()
    try:
        base.on_terminate(asyncio.get_running_loop(), stop.set)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), 10)
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
