"""A view of one disk of one machine in the Azure Blob vault as at one seq: a snapshot with logged records over it."""

from __future__ import annotations

import concurrent.futures
from typing import Any, Callable, Protocol, TypeVar

from ...errors import InvalidInput
from ..base import DiskView
from ..replica import ExtentMap
from . import pages
from .logs import LogEntry
from .pages import Snap
from .rest import AzureBlobClient

T = TypeVar("T")


class ViewSource(Protocol):
    """What a view reads through (``machine.AzureMachineVault``): its page blobs, logged payloads and executors."""

    _c: AzureBlobClient
    _io2: concurrent.futures.ThreadPoolExecutor      # the requests of one read go out at once

    def _check_open(self) -> None: ...
    async def _io(self, fn: Callable[..., T], *args: Any) -> T: ...
    def _disk_blob(self, index: int) -> str: ...
    def _payload(self, e: LogEntry) -> bytes: ...
    async def _view_closed(self) -> None: ...


class AzureDiskView(DiskView):
    """One disk as at one seq: a snapshot with logged records over it. Blocks prune until closed."""

    def __init__(self, owner: ViewSource, seq: int, disk: int, size: int, snap: Snap,
                 emap: ExtentMap) -> None:
        self._owner = owner
        self.seq = seq
        self.disk = disk
        self.size = size
        self._snap = snap
        self._map = emap
        self._closed = False

    async def read(self, offset: int, length: int) -> bytes:
        if self._closed:
            raise InvalidInput("read from a closed view")
        self._owner._check_open()
        if not isinstance(offset, int) or not isinstance(length, int) or offset < 0 or length < 0 \
                or offset + length > self.size:
            raise InvalidInput(f"read [{offset}, +{length}) is outside disk {self.disk} of size {self.size}")
        if length == 0:
            return b""
        return await self._owner._io(self._read_sync, offset, length)

    def _read_sync(self, offset: int, length: int) -> bytes:
        out = bytearray(length)
        mv = memoryview(out)
        o = self._owner
        blob = o._disk_blob(self.disk)
        futs = []
        for a, b, src in self._map.pieces(offset, offset + length):
            if src is None:
                hi = min(b, self._snap.size)
                if a < hi:
                    futs.append((a, o._io2.submit(o._c.get_blob, blob, offset=a, length=hi - a,
                                                         snapshot=self._snap.snapshot)))
            elif src != pages.ZERO:
                payload = o._payload(src)
                p = a - src.rec.offset
                mv[a - offset:b - offset] = payload[p:p + b - a]
        for a, f in futs:
            data = f.result()
            mv[a - offset:a - offset + len(data)] = data
        return bytes(out)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._map = ExtentMap()
            await self._owner._view_closed()

    async def __aenter__(self) -> AzureDiskView:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

