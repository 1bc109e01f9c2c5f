"""Low-level file helpers: hole punching, zeroing ranges, and walking the data regions of sparse files.

Python's ``os`` module has ``posix_fallocate`` but no way to pass ``fallocate(2)`` mode flags: the Linux call is
:func:`engine.platform.fallocate` (unsupported elsewhere). Every helper degrades gracefully: where the platform or
filesystem lacks the feature it says so (returns ``False`` / yields one whole region) instead of raising, and callers fall back to writing zeros or
reading everything.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Iterator

from . import platform

__all__ = ["punch_hole", "zero_range", "data_extents", "write_zeros", "FALLOC_FL_KEEP_SIZE",
           "FALLOC_FL_PUNCH_HOLE", "FALLOC_FL_ZERO_RANGE"]

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

# errnos meaning "this filesystem/kernel cannot do that": the caller should fall back, not fail.
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL, errno.ENODEV, errno.ENOTTY}

_ZERO_CHUNK = bytes(1 << 20)


def _fallocate_mode(fd: int, mode: int, offset: int, length: int) -> bool:
    """Call ``fallocate(fd, mode, offset, length)``; ``False`` if the mode is unsupported, raise on real errors."""
    if length <= 0:
        return True  # nothing to do; fallocate itself rejects length 0 with EINVAL
    if offset < 0:
        raise OSError(errno.EINVAL, "negative offset")
    return platform.fallocate(fd, mode, offset, length)


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate ``[offset, offset+length)`` of ``fd`` keeping the file size; the range then reads as zeros.

    Returns ``True`` when the hole was punched, ``False`` when the platform or filesystem cannot punch holes (the
    caller should write zeros instead). Raises ``OSError`` for real I/O errors (EIO, EBADF, ...).
    """
    return _fallocate_mode(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)


def zero_range(fd: int, offset: int, length: int) -> bool:
    """Zero ``[offset, offset+length)`` keeping it allocated (``FALLOC_FL_ZERO_RANGE|KEEP_SIZE``).

    Used where a hole must not be created (NBD ``NO_HOLE``). Same return convention as :func:`punch_hole`.
    """
    return _fallocate_mode(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length)


def write_zeros(fd: int, offset: int, length: int) -> None:
    """Write explicit zero bytes over ``[offset, offset+length)`` in 1 MiB ``pwrite`` calls."""
    end = offset + length
    while offset < end:
        n = platform.pwrite(fd, memoryview(_ZERO_CHUNK)[: min(len(_ZERO_CHUNK), end - offset)], offset)
        if n <= 0:
            raise OSError(errno.EIO, "short write while zeroing")
        offset += n


def data_extents(fd: int, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
    """Yield ``(offset, length)`` of the data (non-hole) regions of ``fd`` within ``[start, end)``.

    Uses ``lseek(SEEK_DATA/SEEK_HOLE)``. If the platform or filesystem does not support them the whole range is
    yielded as one region, which is always a correct (if pessimistic) answer: holes read as zeros anyway.
    ``end`` defaults to the file size. Note: this moves the descriptor's file position; use ``pread``/``pwrite``.
    """
    size = os.fstat(fd).st_size
    end = size if end is None else min(end, size)
    if start >= end:
        return
    seek_data = getattr(os, "SEEK_DATA", None)
    seek_hole = getattr(os, "SEEK_HOLE", None)
    if seek_data is None or seek_hole is None:
        yield start, end - start
        return
    pos = start
    first = True
    while pos < end:
        try:
            data = os.lseek(fd, pos, seek_data)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data at or after pos: the rest is a hole
                return
            if first and e.errno in _UNSUPPORTED:
                yield start, end - start
                return
            raise
        first = False
        if data >= end:
            return
        try:
            hole = os.lseek(fd, data, seek_hole)
        except OSError as e:
            if e.errno == errno.ENXIO:  # the file shrank under us: treat the rest as data up to end
                hole = end
            else:
                raise
        hole = min(hole, end)
        if hole <= data:  # defensive: never loop forever on a confused filesystem
            yield data, end - data
            return
        yield data, hole - data
        pos = hole


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` crash-safely (write a temp file, fsync, rename, fsync the directory): after a
    crash the file is either the old or the new one, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        mv = memoryview(data)
        while mv:
            mv = mv[os.write(fd, mv):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    platform.fsync_dir(path.parent)


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) with mode 0700; chmod explicitly, as an existing folder may be more open."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read 1 MiB at a time (drills and tests check recovered images with it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
