"""Durable appends that bypass the page cache (``O_DIRECT``), for logs that are written once and rarely read back.

The process server's cache and the vault journal are append-only logs whose every append is followed by an
``fdatasync`` before anything is acknowledged. Through the page cache, each appended byte first costs a fresh
page-cache page (allocated, copied into, written back, later reclaimed), which on the appliance's machine made the
``write`` call itself cost more CPU than everything else the pipeline does with the byte (the numbers, side by side
with buffered appends: ``bench/append_io.py`` and ``bench/README.md``). The data still reaches the page cache when it is read back (rarely: the applier takes its
records from memory, recovery reads are cold anyway).

``O_DIRECT`` wants the memory address, file offset and length of every write aligned to the device's logical block
size. The appender copies each append into one page-aligned buffer (a memcpy) and pads it with zero bytes
up to the next :data:`BLOCK` boundary, so every append starts aligned. Earlier data is never rewritten: a crash
during an append can only tear that append, never one that was acknowledged before.

**Padding rule** (every reader of these logs follows it, see docs/FORMATS.md): where a record or entry should start
at an offset that is *not* a multiple of :data:`BLOCK` and its first four bytes (or all bytes up to the next
boundary, if fewer) are zero, the bytes up to the next multiple of :data:`BLOCK` are padding and are skipped. No
record or entry starts with a zero byte, so the rule is unambiguous.

Where the filesystem refuses ``O_DIRECT`` (tmpfs, some network filesystems) or an unaligned file is continued,
appends go through the page cache, padded the same way; the format does not change.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections.abc import Sequence

from . import platform

__all__ = ["BLOCK", "DirectAppender", "padded", "skip_padding"]

#: Alignment of every direct append (covers 512-byte and 4 KiB logical block sizes).
BLOCK = 4096
#: Largest single write; larger appends are written in pieces of this size (bounds the staging buffer).
CHUNK = 8 * 1024 * 1024
ZERO4 = b"\0\0\0\0"

_staging = threading.local()


def _staging_buffer(size: int) -> mmap.mmap:
    """This thread's page-aligned staging buffer of at least ``size`` bytes (reused across appends and files:
    a fresh mapping would page-fault on every 4 KiB of every append)."""
    buf: mmap.mmap | None = getattr(_staging, "buf", None)
    if buf is None or len(buf) < size:
        if buf is not None:
            try:
                buf.close()
            except BufferError:
                pass   # a failed write's traceback (ENOSPC) still views it: unmapped once that is collected
        buf = _staging.buf = platform.anonymous_map(max(size, 1 << 20))
    return buf


def padded(n: int) -> int:
    """``n`` rounded up to a multiple of :data:`BLOCK`."""
    return -(-n // BLOCK) * BLOCK


def skip_padding(buf: bytes | memoryview, pos: int, base: int = 0) -> int:
    """Where the next record starts: ``pos`` itself, or, if padding starts at ``pos`` (file offset ``base + pos``,
    unaligned, zero magic), the next block boundary (as an index into ``buf``; may lie past its end)."""
    at = base + pos
    if at % BLOCK:
        k = min(4, BLOCK - at % BLOCK)    # padding may be shorter than a magic
        if bytes(buf[pos:pos + k]) == ZERO4[:k]:
            return padded(at) - base
    return pos


class DirectAppender:
    """Appends to one file, each append padded to :data:`BLOCK` and written with ``O_DIRECT`` where possible.

    Not thread-safe: one writer at a time (callers already serialise their appends).
    """

    def __init__(self, path: os.PathLike[str] | str, *, create: bool = True, direct: bool = True) -> None:
        flags = os.O_WRONLY | (os.O_CREAT if create else 0)
        self.path = os.fspath(path)
        self.fd = os.open(self.path, flags, 0o600)
        self.pos = os.fstat(self.fd).st_size
        self._dfd: int | None = None
        if direct:   # None on tmpfs and the like (EINVAL), or without unbuffered I/O: buffered it is
            self._dfd = platform.open_direct(self.path)

    @property
    def direct(self) -> bool:
        return self._dfd is not None

    def append(self, pieces: Sequence[bytes | bytearray | memoryview], *, sync: bool = True) -> int:
        """Write ``pieces`` back to back at the end, then zero padding up to a block boundary; ``fdatasync`` if
        ``sync``. Returns the bytes added to the file (data + padding). On error the file may hold part of this
        append past the old end: the caller truncates it (see :meth:`truncate`)."""
        n = sum(len(p) for p in pieces)
        if not n:
            return 0
        total = padded(self.pos + n) - self.pos
        if self._dfd is not None and self.pos % BLOCK == 0:
            try:
                self._write_direct(pieces, total)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._drop_direct()   # the device wants a larger alignment, or the fs changed its mind
                self._write_buffered(pieces, total - n)
        else:
            self._write_buffered(pieces, total - n)
        if sync:
            platform.fdatasync(self.fd)
        self.pos += total
        return total

    def _write_direct(self, pieces: Sequence[bytes | bytearray | memoryview], total: int) -> None:
        size = min(total, CHUNK)
        buf = memoryview(_staging_buffer(size))
        try:
            fill, at = 0, self.pos
            for p in pieces:
                mv = memoryview(p).cast("B")
                while mv:
                    k = min(len(mv), size - fill)
                    buf[fill:fill + k] = mv[:k]
                    fill += k
                    mv = mv[k:]
                    if fill == size:
                        self._pwrite_all(buf[:size], at)
                        at += size
                        fill = 0
            if fill:
                end = padded(fill)
                buf[fill:end] = bytes(end - fill)
                self._pwrite_all(buf[:end], at)
        finally:
            buf.release()

    def _pwrite_all(self, data: memoryview, at: int) -> None:
        assert self._dfd is not None
        while data:
            k = platform.pwrite(self._dfd, data, at)
            if k <= 0:
                raise OSError(errno.EIO, "short write")
            if k % BLOCK:   # never seen with O_DIRECT; finish it through the page cache
                platform.pwrite(self.fd, data[k:], at + k)
                return
            data, at = data[k:], at + k

    def _write_buffered(self, pieces: Sequence[bytes | bytearray | memoryview], pad: int) -> None:
        at = self.pos
        for p in [*pieces, bytes(pad)] if pad else pieces:
            mv = memoryview(p).cast("B")
            while mv:
                k = platform.pwrite(self.fd, mv, at)
                if k <= 0:
                    raise OSError(errno.EIO, "short write")
                mv, at = mv[k:], at + k

    def _drop_direct(self) -> None:
        if self._dfd is not None:
            os.close(self._dfd)
            self._dfd = None

    def truncate(self, size: int) -> None:
        """Cut the file back to ``size`` (undo a failed append) and make that durable."""
        os.ftruncate(self.fd, size)
        os.fsync(self.fd)
        self.pos = size

    def sync(self) -> None:
        platform.fdatasync(self.fd)

    def close(self) -> None:
        self._drop_direct()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
