"""A :class:`~engine.nbd.server.BlockBackend` over a regular file (or block device): the simplest real backend.

Data calls (``pread``/``pwrite``) run inline on the event loop: against the page cache they take microseconds,
and a thread hop per request would cost more than the copy (the server processes one connection's requests
strictly in order, so there is no concurrency to gain). Calls that can block for a long time (``fdatasync``,
``fallocate``) go to a worker thread so other connections keep moving.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat

from engine import fileio, platform
from engine.nbd.server import NBDError

__all__ = ["FileBackend"]


class FileBackend:
    """Serve ``path`` as an NBD export.

    The file is opened ``O_RDWR`` (``O_RDONLY`` when ``read_only``). ``size`` follows the file: a resize between
    connections is seen by the next client. WRITE_ZEROES and TRIM punch holes (keeping the size) and fall back to
    writing zeros where holes are unsupported; a NO_HOLE zero request uses ``FALLOC_FL_ZERO_RANGE`` instead so the
    range stays allocated. FUA and FLUSH are ``fdatasync``.
    """

    #: Tells the server this backend's ``write_zeroes`` accepts ``no_hole=`` (NBD_CMD_FLAG_NO_HOLE).
    supports_no_hole = True

    def __init__(self, path: str | os.PathLike[str], read_only: bool = False) -> None:
        self.path = os.fspath(path)
        self.read_only = read_only
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | getattr(os, "O_CLOEXEC", 0)
        self._fd: int | None = os.open(self.path, flags)
        self._is_blockdev = stat.S_ISBLK(os.fstat(self._fd).st_mode)

    # -- helpers ----------------------------------------------------------------------------------------------

    @property
    def fd(self) -> int:
        """The open file descriptor (raises ``NBDError(EIO)`` once closed)."""
        if self._fd is None:
            raise NBDError(errno.EIO, f"{self.path}: backend is closed")
        return self._fd

    def _check_writable(self) -> None:
        if self.read_only:
            raise NBDError(errno.EPERM, f"{self.path}: export is read-only")

    @property
    def size(self) -> int:
        """Current size in bytes (``fstat``; block devices are measured by seeking to the end)."""
        if self._is_blockdev:
            return os.lseek(self.fd, 0, os.SEEK_END)
        return os.fstat(self.fd).st_size

    # -- BlockBackend -----------------------------------------------------------------------------------------

    async def read(self, offset: int, length: int) -> bytes:
        """Read exactly ``length`` bytes at ``offset``; a short read (file shrank) is an EIO."""
        data = platform.pread(self.fd, length, offset)
        if len(data) == length:
            return data
        parts = [data]
        got = len(data)
        while got < length:  # rare: pread may legally return less; retry until EOF
            more = platform.pread(self.fd, length - got, offset + got)
            if not more:
                raise NBDError(errno.EIO, f"{self.path}: short read at {offset + got}")
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    async def write(self, offset: int, data: memoryview, fua: bool) -> None:
        """Write ``data`` at ``offset``; with ``fua`` it is on stable storage before returning."""
        self._check_writable()
        fd = self.fd
        view = memoryview(data)
        while view:
            n = platform.pwrite(fd, view, offset)
            if n <= 0:
                raise NBDError(errno.EIO, f"{self.path}: short write at {offset}")
            view = view[n:]
            offset += n
        if fua:
            await self.flush()

    async def write_zeroes(self, offset: int, length: int, fua: bool, *, no_hole: bool = False) -> None:
        """Make ``[offset, offset+length)`` read as zeros: punch a hole, or zero in place when ``no_hole``."""
        self._check_writable()
        fd = self.fd
        # Linux accepts both modes on block devices too (as discard / BLKZEROOUT), so no special case here.
        if no_hole:
            done = await asyncio.to_thread(fileio.zero_range, fd, offset, length)
        else:
            done = await asyncio.to_thread(fileio.punch_hole, fd, offset, length)
        if not done:
            fileio.write_zeros(fd, offset, length)
        if fua:
            await self.flush()

    async def trim(self, offset: int, length: int) -> None:
        """Discard ``[offset, offset+length)``: punch a hole, else write zeros (content after TRIM is undefined)."""
        self._check_writable()
        fd = self.fd
        if not await asyncio.to_thread(fileio.punch_hole, fd, offset, length):
            fileio.write_zeros(fd, offset, length)

    async def flush(self) -> None:
        """``fdatasync`` in a worker thread: it can take seconds and must not stall other connections."""
        fd = self.fd
        if self.read_only:
            return  # nothing of ours to persist; fdatasync on an O_RDONLY fd is legal but pointless
        await asyncio.to_thread(platform.fdatasync, fd)

    # -- lifetime ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the file descriptor (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> "FileBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FileBackend({self.path!r}, read_only={self.read_only})"
