"""A committed recovered disk (a standalone raw image, engine/recovery/commit.py) as an NBD backend: after commit
the recovered VM keeps running on Lifeboat's NBD server, so failback can capture its writes (``on_write`` /
``on_flush``, engine/recovery/change_map.py) as the agent does at the source. FLUSH and FUA ``fdatasync`` the image;
WRITE_ZEROES and TRIM write zeros (a trimmed range reads back as zeros, as on the agent's disks)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from .. import platform
from ..errors import ListenFailed
from ..nbd.server import NBDError, NBDServer

ZERO_RUN = 4 << 20


class ImageBackend:
    read_only = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = platform.open_private(path, create=False)
        self.size = os.fstat(self.fd).st_size
        self.on_write: Callable[[int, int], None] | None = None
        self.on_flush: Callable[[], None] | None = None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _check(self, offset: int, length: int, err: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise NBDError(err, "request beyond the end of the disk")

    async def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length, errno.EINVAL)
        data = platform.pread(self.fd, length, offset)
        return data if len(data) == length else data + bytes(length - len(data))

    async def write(self, offset: int, data: memoryview, fua: bool) -> None:
        self._check(offset, len(data), errno.ENOSPC)
        if not len(data):
            return
        if self.on_write is not None:
            self.on_write(offset, len(data))
        platform.pwrite(self.fd, data, offset)
        if fua:
            await self.flush()

    async def write_zeroes(self, offset: int, length: int, fua: bool) -> None:
        self._check(offset, length, errno.ENOSPC)
        if self.on_write is not None and length:
            self.on_write(offset, length)
        pos = offset
        while pos < offset + length:
            n = min(ZERO_RUN, offset + length - pos)
            platform.pwrite(self.fd, bytes(n), pos)
            pos += n
        if fua:
            await self.flush()

    async def trim(self, offset: int, length: int) -> None:
        await self.write_zeroes(offset, length, False)

    async def flush(self) -> None:
        platform.fdatasync(self.fd)
        if self.on_flush is not None:
            self.on_flush()


class CommittedDisks:
    """A committed failover's images served over NBD (one export per disk, named as the disk)."""

    def __init__(self, names: list[str], images: dict[str, Path]) -> None:
        self.names = list(names)
        self.backends = [ImageBackend(images[n]) for n in self.names]
        self.server: NBDServer | None = None
        self.address: tuple[str, int] | None = None

    async def serve(self, host: str, port: int, *, server_name: str) -> tuple[str, int]:
        self.server = NBDServer(dict(zip(self.names, self.backends)), name=server_name)
        try:
            self.address = await self.server.start(host, port)
        except OSError as exc:
            self.server = None
            raise ListenFailed(f"cannot serve the committed disks on {host}:{port}: {exc.strerror or exc}",
                               field="nbd") from None
        return self.address

    async def close(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None
        for b in self.backends:
            b.close()
