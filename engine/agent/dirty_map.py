"""Agent-side resync state: the persistent dirty-region map and the activity log (DRBD's two structures).

* :class:`DirtyMap` — one bit per 64 KiB block per disk, on disk. Blocks whose replica may differ from the source:
  writes made while the journal was full (overflow), regions active at a crash, regions the appliance asks for.
  A resync pass compares these blocks' checksums with the replica's and sends only the blocks that differ.
  Bits move to an *in flight* set while a chunk is being compared and sent, and are only forgotten once the
  process server has acknowledged the chunk's data; a dropped link puts them back.
* :class:`ActivityLog` — one bit per 64 MiB extent per disk, made durable *before* the first write to an extent
  since the last flush. After a crash or power loss, only these extents can hold writes the journal lost, so the
  resync after a crash compares them, not the whole disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import platform, records
from ..fileio import atomic_write

BLOCK = records.BLOCK
EXTENT = 64 * 1024 * 1024


class DirtyMap:
    def __init__(self, folder: Path, sizes: dict[int, int]) -> None:
        self.folder = folder
        self.sizes = dict(sizes)
        self.bits: dict[int, bytearray] = {}
        self.inflight: dict[int, bytearray] = {}
        self.reason: str | None = None
        self.total = 0            # blocks to process in the current pass (for progress)
        meta = self._load_meta()
        for disk, size in sizes.items():
            n = (size + BLOCK - 1) // BLOCK
            raw = self._load(disk)
            arr = bytearray((n + 7) // 8)
            arr[:min(len(raw), len(arr))] = raw[:len(arr)]
            self.bits[disk] = arr
            self.inflight[disk] = bytearray(len(arr))
        self.reason = meta.get("reason")
        self.total = meta.get("total") or self.count()

    def _path(self, disk: int) -> Path:
        return self.folder / f"dirty-{disk}.bitmap"

    def _load(self, disk: int) -> bytes:
        try:
            return self._path(disk).read_bytes()
        except OSError:
            return b""

    def _load_meta(self) -> dict:
        try:
            return json.loads((self.folder / "dirty.json").read_text())
        except (OSError, ValueError):
            return {}

    def resize(self, disk: int, size: int) -> None:
        n = (size + BLOCK - 1) // BLOCK
        need = (n + 7) // 8
        for arr in (self.bits.setdefault(disk, bytearray()), self.inflight.setdefault(disk, bytearray())):
            if len(arr) < need:
                arr.extend(bytes(need - len(arr)))
        self.sizes[disk] = size

    def mark(self, disk: int, offset: int, length: int) -> None:
        if length <= 0:
            return
        arr = self.bits[disk]
        first, last = offset // BLOCK, (offset + length - 1) // BLOCK
        if last - first > 64:
            # whole bytes in the middle at once: cheap even for a full-disk request
            b0, b1 = (first + 7) // 8, (last + 1) // 8
            if b1 > b0:
                arr[b0:b1] = b"\xff" * (b1 - b0)
            for b in list(range(first, min(b0 * 8, last + 1))) + list(range(max(b1 * 8, first), last + 1)):
                arr[b >> 3] |= 1 << (b & 7)
        else:
            for b in range(first, last + 1):
                arr[b >> 3] |= 1 << (b & 7)

    def mark_all(self, disk: int) -> None:
        self.mark(disk, 0, self.sizes[disk])

    def count(self) -> int:
        return sum(bin(int.from_bytes(a, "little")).count("1") for a in self.bits.values()) + \
            sum(bin(int.from_bytes(a, "little")).count("1") for a in self.inflight.values())

    def dirty_count(self) -> int:
        return sum(bin(int.from_bytes(a, "little")).count("1") for a in self.bits.values())

    def any_dirty(self) -> bool:
        return any(any(a) for a in self.bits.values())

    def any_inflight(self) -> bool:
        return any(any(a) for a in self.inflight.values())

    def take_chunk(self, max_blocks: int) -> tuple[int, list[int]] | None:
        """Move up to ``max_blocks`` dirty blocks of one disk to in flight; returns (disk, block numbers)."""
        for disk, arr in self.bits.items():
            blocks: list[int] = []
            nblocks = (self.sizes[disk] + BLOCK - 1) // BLOCK
            for i, byte in enumerate(arr):
                if not byte:
                    continue
                for bit in range(8):
                    b = i * 8 + bit
                    if byte & (1 << bit) and b < nblocks:
                        blocks.append(b)
                if len(blocks) >= max_blocks:
                    break
            if blocks:
                blocks = blocks[:max_blocks]
                inf = self.inflight[disk]
                for b in blocks:
                    arr[b >> 3] &= ~(1 << (b & 7)) & 0xFF
                    inf[b >> 3] |= 1 << (b & 7)
                return disk, blocks
            arr[:] = bytes(len(arr))  # only bits past the end were set
        return None

    def done(self, disk: int, blocks: list[int]) -> None:
        inf = self.inflight[disk]
        for b in blocks:
            inf[b >> 3] &= ~(1 << (b & 7)) & 0xFF

    def requeue_inflight(self) -> None:
        """The link dropped: whatever was being compared or sent must be done again."""
        for disk, inf in self.inflight.items():
            arr = self.bits[disk]
            for i, byte in enumerate(inf):
                if byte:
                    arr[i] |= byte
            inf[:] = bytes(len(inf))

    def persist(self) -> None:
        """Durable copy of dirty | in-flight (what must still be compared after a crash)."""
        for disk, arr in self.bits.items():
            inf = self.inflight[disk]
            atomic_write(self._path(disk), bytes(a | b for a, b in zip(arr, inf)) if any(inf) else bytes(arr))
        atomic_write(self.folder / "dirty.json", json.dumps({"reason": self.reason, "total": self.total}).encode())


class ActivityLog:
    """Extents written since the last flush, durable before the write reaches the backing disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.active: set[tuple[int, int]] = set()
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        raw = platform.pread(self.fd, 1 << 20, 0)
        self.recovered: set[tuple[int, int]] = set()
        for line in raw.decode(errors="ignore").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                self.recovered.add((int(parts[0]), int(parts[1])))
        self._size = len(raw)

    def touch(self, disk: int, offset: int, length: int) -> None:
        """Make the extents of ``[offset, offset+length)`` durable in the log before the data is written."""
        first, last = offset // EXTENT, (offset + max(length, 1) - 1) // EXTENT
        new = [(disk, e) for e in range(first, last + 1) if (disk, e) not in self.active]
        if not new:
            return
        line = "".join(f"{d} {e}\n" for d, e in new).encode()
        platform.pwrite(self.fd, line, self._size)
        self._size += len(line)
        platform.fdatasync(self.fd)
        self.active.update(new)

    def clear(self, disk: int | None = None) -> None:
        """After a flush made the journal and ``disk``'s backing durable, its extents are no longer at risk.

        Rewriting without fsync is safe: after a crash the file holds at least what is still at risk.
        """
        keep = {x for x in self.active if disk is not None and x[0] != disk}
        if keep == self.active and self._size == len(self._encode(keep)):
            return
        data = self._encode(keep)
        if data:
            platform.pwrite(self.fd, data, 0)
        os.ftruncate(self.fd, len(data))
        self._size = len(data)
        self.active = keep

    @staticmethod
    def _encode(extents: set[tuple[int, int]]) -> bytes:
        return "".join(f"{d} {e}\n" for d, e in sorted(extents)).encode()

    def close(self) -> None:
        os.close(self.fd)
