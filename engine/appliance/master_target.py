"""The master-target role of failback (issue 14): it receives a recovered machine's blocks and writes them into the
target disks on the original site.

The target disks are either the original machine's own disks (the agent hosts this role on its disk files while the
machine is reprotected: engine/agent/agent.py, "reverse mode") or new disks at an alternate location (the appliance
hosts it in-process: engine/recovery/failback.py, ``LocalTarget``). Either way it does three things:

* ``hashes``: xxh3_128 of each asked 64 KiB block (the resync's checksum: only blocks that differ are sent);
* ``apply``: write a batch of extents, ``fdatasync`` every disk it touched, then make the batch id durable in
  ``master-target.json`` (atomic write): an acknowledged batch is on stable storage, and the id survives a kill;
* ``open``: start or resume a session. A new session id (another reprotect) resets the acknowledged position to 0;
  the same id resumes from it, so the sender knows whether the target kept what it acknowledged.

It imports nothing of the appliance (the agent imports it): files, hashing and the platform layer only.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import xxhash

from .. import platform
from ..errors import InvalidInput, StorageError
from ..fileio import atomic_write, data_extents
from ..records import BLOCK

#: MT_HASHES_REQ body head (PS → target): chunk id u64, disk u32, count u32; then count × u64 block numbers.
HASHES_REQ = struct.Struct("<QII")
#: MT_HASHES body head (target → PS): chunk id u64, count u32; then count × 16-byte xxh3_128.
HASHES = struct.Struct("<QI")
#: MT_WRITE body head (PS → target): batch id u64, disk u32, count u32; then count × EXTENT, then the data.
WRITE_HEAD = struct.Struct("<QII")
EXTENT = struct.Struct("<QI")
STATE_FILE = "master-target.json"
#: The state file's JSON is padded with spaces to this size: an in-place rewrite covers all of the old one.
STATE_BYTES = 256
ZERO_HASH = xxhash.xxh3_128_digest(bytes(BLOCK))


def block_hashes(fd: int, size: int, blocks: list[int]) -> bytes:
    """xxh3_128 of each block of ``fd`` (the last block of a disk may be short). Runs of adjacent blocks are read
    together (≤ 8 MiB at a time); a block with no data in the file (a hole, or beyond a file shorter than the disk)
    is hashed as zeros without being read, so a sparse disk costs only its allocated bytes."""
    out = bytearray()
    i = 0
    while i < len(blocks):
        j = i
        while j + 1 < len(blocks) and blocks[j + 1] == blocks[j] + 1 and j + 1 - i < 128:
            j += 1
        start = blocks[i] * BLOCK
        end = min((blocks[j] + 1) * BLOCK, size)
        has_data = bytearray(j + 1 - i)
        for off, n in data_extents(fd, start, end):
            has_data[(off - start) // BLOCK:(off + n - 1 - start) // BLOCK + 1] = \
                b"\x01" * ((off + n - 1 - start) // BLOCK + 1 - (off - start) // BLOCK)
        k = 0
        while k <= j - i:
            if not has_data[k]:
                n = max(0, min(BLOCK, end - start - k * BLOCK))
                out += ZERO_HASH if n == BLOCK else xxhash.xxh3_128_digest(bytes(n))
                k += 1
                continue
            m = k
            while m + 1 <= j - i and has_data[m + 1]:
                m += 1
            a = start + k * BLOCK
            n = max(0, min(start + (m + 1) * BLOCK, end) - a)
            data = memoryview(platform.pread(fd, n, a)) if n else memoryview(b"")
            if len(data) < n:   # a file shorter than the disk reads as zeros beyond its end
                data = memoryview(bytes(data) + bytes(n - len(data)))
            for q in range(m + 1 - k):
                out += xxhash.xxh3_128_digest(data[q * BLOCK:(q + 1) * BLOCK])
            k = m + 1
        i = j + 1
    return bytes(out)


def encode_write(batch: int, disk: int, extents: Sequence[tuple[int, bytes | memoryview]]) -> list[bytes | memoryview]:
    """An MT_WRITE body as parts (head, extent table, data...)."""
    table = b"".join(EXTENT.pack(off, len(data)) for off, data in extents)
    return [WRITE_HEAD.pack(batch, disk, len(extents)), table, *(d for _, d in extents)]


def decode_write(body: bytes | memoryview) -> tuple[int, int, list[tuple[int, memoryview]]]:
    mv = memoryview(body)
    if len(mv) < WRITE_HEAD.size:
        raise ValueError("short MT_WRITE")
    batch, disk, count = WRITE_HEAD.unpack_from(mv)
    pos = WRITE_HEAD.size + count * EXTENT.size
    if pos > len(mv):
        raise ValueError("MT_WRITE extent table beyond the body")
    out = []
    for k in range(count):
        off, n = EXTENT.unpack_from(mv, WRITE_HEAD.size + k * EXTENT.size)
        if pos + n > len(mv):
            raise ValueError("MT_WRITE data beyond the body")
        out.append((off, mv[pos:pos + n]))
        pos += n
    return batch, disk, out


class MasterTarget:
    """Target disks (index → path) and the durable acknowledged position kept in ``state_dir``. ``create``: disk
    index → size of a new, sparse disk to make (an alternate location; an existing file is never overwritten)."""

    def __init__(self, disks: dict[int, Path], state_dir: Path, *, create: dict[int, int] | None = None) -> None:
        self.paths = dict(disks)
        self.state_path = state_dir / STATE_FILE
        self.fds: dict[int, int] = {}
        self._sfd = -1                    # the state file, kept open for in-place rewrites
        self.sizes: dict[int, int] = {}
        try:
            for i, p in self.paths.items():
                if create is not None and i in create:
                    if os.path.lexists(p):
                        raise InvalidInput(f"{p} already exists: an alternate-location disk is created new, never "
                                           "written over", field="to_disk", code="LB_TARGET_EXISTS",
                                           advice="Name a path that does not exist yet, or use --to original.")
                    fd = platform.open_private(p, create=True)
                    os.ftruncate(fd, create[i])
                else:
                    fd = os.open(p, os.O_RDWR)
                self.fds[i] = fd
                self.sizes[i] = os.fstat(fd).st_size
        except OSError as exc:
            self.close()
            raise StorageError(f"cannot open target disk: {exc}", advice="Check the path and its permissions.") \
                from None
        self._state = self._load()

    def _load(self) -> dict[str, Any]:
        try:
            st = json.loads(self.state_path.read_text())
            return st if isinstance(st, dict) else {}
        except (OSError, ValueError):
            return {}

    @property
    def acked(self) -> int:
        return int(self._state.get("acked", 0))

    def open(self, session: str) -> int:
        """Begin or resume ``session``; returns the last batch id this target made durable for it (0: none)."""
        if self._state.get("session") != session:
            self._state = {"session": session, "acked": 0}
            self._close_state()
            atomic_write(self.state_path, self._state_bytes())
        return self.acked

    def _state_bytes(self) -> bytes:
        return json.dumps(self._state).encode().ljust(STATE_BYTES)

    def _close_state(self) -> None:
        if self._sfd >= 0:
            os.close(self._sfd)
            self._sfd = -1

    def _record_acked(self) -> None:
        """Rewrite the state file in place (one sector, one ``fdatasync``), not by rename (three syncs per batch).
        A write torn by a crash reads as no state (acked 0), and the sender then compares everything again; an
        acknowledged id is only ever an optimisation of what the sender resends, never what it skips."""
        if self._sfd < 0:
            if not self.state_path.exists():
                atomic_write(self.state_path, self._state_bytes())
                return
            self._sfd = os.open(self.state_path, os.O_RDWR)
        platform.pwrite(self._sfd, self._state_bytes(), 0)
        platform.fdatasync(self._sfd)

    def hashes(self, disk: int, blocks: list[int]) -> bytes:
        if disk not in self.fds:
            raise InvalidInput(f"the target has no disk {disk}")
        return block_hashes(self.fds[disk], self.sizes[disk], blocks)

    def apply(self, batch: int, disk: int, extents: Sequence[tuple[int, bytes | memoryview]]) -> None:
        """Write, fdatasync, then record ``batch`` as acknowledged (durable before the caller acknowledges)."""
        fd = self.fds.get(disk)
        if fd is None:
            raise InvalidInput(f"the target has no disk {disk}")
        size = self.sizes[disk]
        for off, data in extents:
            if off < 0 or off + len(data) > size:
                raise InvalidInput(f"extent {off}+{len(data)} beyond target disk {disk} ({size} bytes)")
        for off, data in extents:
            platform.pwrite(fd, data, off)
        platform.fdatasync(fd)
        if batch > self.acked:
            self._state["acked"] = batch
            self._record_acked()

    def flush(self) -> None:
        for fd in self.fds.values():
            platform.fdatasync(fd)

    def close(self) -> None:
        self._close_state()
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
