"""Copy-on-write overlay for drills and failovers: reads come from a vault view, writes land in a sparse scratch file.

Granularity is 4 KiB blocks; a partial write first copies the block from the view, so reads of a block are
served wholly from one side. A bytearray marks which blocks live in the scratch file (1 byte per 4 KiB:
256 KiB per GiB of disk).
"""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

from .. import platform
from ..nbd.server import NBDError
from ..vault.base import DiskView

BLOCK = 4096


class OverlayBackend:
    read_only = False

    def __init__(self, view: DiskView, scratch: Path) -> None:
        self.view = view
        self.size = view.size
        self.fd = os.open(scratch, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self.fd, self.size)
        self.present = bytearray((self.size + BLOCK - 1) // BLOCK)
        self._lock = asyncio.Lock()
        #: commit: the blocks written since ``track_changes`` (copied again once the VM is stopped)
        self._changed: set[int] | None = None

    def track_changes(self) -> None:
        self._changed = set()

    def take_changes(self) -> list[int]:
        """Blocks written since ``track_changes`` (sorted); tracking goes on with an empty set."""
        out = sorted(self._changed or ())
        self._changed = set()
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _check(self, offset: int, length: int, err: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise NBDError(err, "request beyond the end of the disk")

    async def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length, errno.EINVAL)
        if not any(self.present[offset // BLOCK:(offset + length + BLOCK - 1) // BLOCK]):
            return await self.view.read(offset, length)
        out = bytearray()
        pos, end = offset, offset + length
        while pos < end:
            b = pos // BLOCK
            mine = bool(self.present[b])
            run_end = pos
            while run_end < end and bool(self.present[run_end // BLOCK]) == mine:
                run_end = min((run_end // BLOCK + 1) * BLOCK, end)
            n = run_end - pos
            out += platform.pread(self.fd, n, pos) if mine else await self.view.read(pos, n)
            pos = run_end
        return bytes(out)

    async def _materialise(self, offset: int, length: int) -> None:
        """Copy partially covered edge blocks from the view so they can be written piecewise."""
        for b in {offset // BLOCK, (offset + length - 1) // BLOCK}:
            if not self.present[b]:
                start = b * BLOCK
                n = min(BLOCK, self.size - start)
                platform.pwrite(self.fd, await self.view.read(start, n), start)
                self.present[b] = 1

    async def write(self, offset: int, data: memoryview, fua: bool) -> None:
        self._check(offset, len(data), errno.ENOSPC)
        if not len(data):
            return
        async with self._lock:
            await self._materialise(offset, len(data))
            platform.pwrite(self.fd, data, offset)
            first, last = offset // BLOCK, (offset + len(data) - 1) // BLOCK
            self.present[first:last + 1] = b"\x01" * (last + 1 - first)
            if self._changed is not None:
                self._changed.update(range(first, last + 1))

    async def write_zeroes(self, offset: int, length: int, fua: bool) -> None:
        self._check(offset, length, errno.ENOSPC)
        if length:
            await self.write(offset, memoryview(bytes(length)), fua)

    async def trim(self, offset: int, length: int) -> None:
        await self.write_zeroes(offset, length, False)

    async def flush(self) -> None:
        pass  # scratch data is thrown away at cleanup: durability is not needed
