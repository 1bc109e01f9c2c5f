"""Shared pieces of the NBD server tests: disk images, hashing and a served pair of exports."""

from __future__ import annotations

import hashlib
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from engine.nbd.file_backend import FileBackend
from engine.nbd.server import NBDServer

MiB = 1024 * 1024


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def random_file(path: Path, size: int, holes: bool = False) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        step = 1 * MiB
        for off in range(0, size, step):
            if holes and (off // step) % 3 == 1:
                continue  # leave a hole: exercises zero detection in qemu-img / nbdcopy
            f.seek(off)
            f.write(os.urandom(min(step, size - off)))
    return path


class Served:
    def __init__(self, server: NBDServer, port: int, path: Path, backend: FileBackend) -> None:
        self.server, self.port, self.path, self.backend = server, port, path, backend

    def uri(self, export: str = "disk") -> str:
        return f"nbd://127.0.0.1:{self.port}/{export}"


@asynccontextmanager
async def serve_disks(tmp_path: Path) -> AsyncIterator[Served]:
    """A server with a random 16 MiB read-write export "disk" and a 1 MiB read-only export "ro"."""
    path = random_file(tmp_path / "disk.img", 16 * MiB)
    ro_path = random_file(tmp_path / "ro.img", 1 * MiB)
    backend, ro = FileBackend(path), FileBackend(ro_path, read_only=True)
    server = NBDServer({"disk": backend, "ro": ro}, max_request=1 * MiB)
    _, port = await server.start("127.0.0.1", 0)
    try:
        yield Served(server, port, path, backend)
    finally:
        await server.stop()
        backend.close()
        ro.close()
