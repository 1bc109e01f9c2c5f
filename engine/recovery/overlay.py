"""Copy-on-write overlay for drills and failovers: reads come from a vault view, writes land in a sparse scratch file.

Granularity is 4 KiB blocks; a partial write first copies the block from the view, so reads of a block are
served wholly from one side. A bytearray marks which blocks live in the scratch file (1 byte per 4 KiB:
256 KiB per GiB of disk).

A drill's overlay is scratch. A real failover's (``durable=True``) holds production data: FLUSH and FUA
``fdatasync`` the scratch file, and the map is rebuilt from the file itself when it is reopened (``reopen=True``):
a block lives in the scratch file exactly when the file has data there (``SEEK_DATA``), since a block is only ever
written whole, view content first, and nothing punches holes in it. ``on_write``/``on_flush`` let the reverse
replication of failback (engine/recovery/change_map.py) see every change before it reaches the file.
"""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

from collections.abc import Callable

from .. import platform
from ..fileio import data_extents
from ..nbd.server import NBDError
from ..vault.base import DiskView

BLOCK = 4096


class OverlayBackend:
    read_only = False

    def __init__(self, view: DiskView, scratch: Path, *, durable: bool = False, reopen: bool = False) -> None:
        self.view = view
        self.size = view.size
        self.durable = durable
        self.fd = os.open(scratch, os.O_RDWR | os.O_CREAT | (0 if reopen else os.O_TRUNC), 0o600)
        if os.fstat(self.fd).st_size != self.size:
            os.ftruncate(self.fd, self.size)
        self.present = bytearray((self.size + BLOCK - 1) // BLOCK)
        if reopen:
            for off, n in data_extents(self.fd, 0, self.size):
                self.present[off // BLOCK:(off + n + BLOCK - 1) // BLOCK] = b"\x01" * (
                    (off + n + BLOCK - 1) // BLOCK - off // BLOCK)
        #: failback's change tracking: called with (offset, length) before a write reaches the file, and after
        #: a flush made the file durable
        self.on_write: Callable[[int, int], None] | None = None
        self.on_flush: Callable[[], None] | None = None
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

    def written(self, offset: int, length: int) -> bool:
        """Whether any byte of ``[offset, offset+length)`` lives in the scratch file (was written here); False:
        the range reads exactly as the vault view at its point."""
        return any(self.present[offset // BLOCK:(offset + length + BLOCK - 1) // BLOCK])

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
            # (after the await: between the change map's mark and the write nothing may run, or failback's reverse
            # replication could take the block, read the old content and clear it before the new one lands)
            if self.on_write is not None:
                self.on_write(offset, len(data))
            platform.pwrite(self.fd, data, offset)
            first, last = offset // BLOCK, (offset + len(data) - 1) // BLOCK
            self.present[first:last + 1] = b"\x01" * (last + 1 - first)
            if self._changed is not None:
                self._changed.update(range(first, last + 1))
            if fua and self.durable:
                await self.flush()

    async def write_zeroes(self, offset: int, length: int, fua: bool) -> None:
        self._check(offset, length, errno.ENOSPC)
        if length:
            await self.write(offset, memoryview(bytes(length)), fua)

    async def trim(self, offset: int, length: int) -> None:
        await self.write_zeroes(offset, length, False)

    async def flush(self) -> None:
        if not self.durable:
            return   # a drill's scratch data is thrown away at cleanup: durability is not needed
        platform.fdatasync(self.fd)   # in the loop's step: no write can slip between it and on_flush
        if self.on_flush is not None:
            self.on_flush()
