"""Commit of a failover: a recovered disk (the overlay over the point's vault view) copied into a standalone raw
image on the recovery host, so the VM no longer depends on the vault. A full pass runs while the VM still runs;
the blocks it wrote meanwhile are copied again once it is stopped (engine/recovery/failover.py)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

from .. import platform
from .overlay import BLOCK, OverlayBackend

#: Bytes per read of the full pass: large enough for the vault's read path, small enough for steady progress.
CHUNK = 4 << 20


async def materialise(disk: OverlayBackend, image: Path, blocks: list[int] | None) -> AsyncIterator[int]:
    """Copy ``disk`` into ``image`` (0600, never through a link): all of it when ``blocks`` is None (the image is
    created or truncated; zero chunks are left as holes), else only those 4 KiB blocks. Yields bytes copied."""
    flags = os.O_RDWR | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(image, flags | (os.O_CREAT | os.O_TRUNC if blocks is None else 0), 0o600)
    try:
        if blocks is None:
            os.ftruncate(fd, disk.size)
            pos = 0
            while pos < disk.size:
                n = min(CHUNK, disk.size - pos)
                data = await disk.read(pos, n)
                if data.count(0) != n:   # a hole reads back as zeros
                    platform.pwrite(fd, data, pos)
                pos += n
                yield n
                await asyncio.sleep(0)   # the VM's own requests go first
        else:
            i = 0
            while i < len(blocks):   # runs of adjacent blocks in one read
                j = i + 1
                while j < len(blocks) and blocks[j] == blocks[j - 1] + 1 and j - i < CHUNK // BLOCK:
                    j += 1
                start = blocks[i] * BLOCK
                n = min((blocks[j - 1] + 1) * BLOCK, disk.size) - start
                platform.pwrite(fd, await disk.read(start, n), start)
                i = j
                yield n
        platform.fdatasync(fd)
    finally:
        os.close(fd)
