"""Per-block checksums of each replica's newest state, kept by the process server as records are applied.

A resync compares the source's block checksums with these instead of re-reading the replica, so it costs one
read of the source and nothing on the appliance (the replica side of rsync's work, done ahead of time).

File ``<disk>.bhx`` (mmap): a 28-byte header (magic ``b"LBHX"``, version u8, pad, block size u32, seq u64 the
index is valid at, 8 reserved) then 24 bytes per 64 KiB block: xxh3_128 of the block (16 bytes) and the seq of
the last record that touched it (u64; the top bit set means "checksum unknown", the block must be read).
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

import xxhash

from ..records import BLOCK, Kind, Record

HEAD = struct.Struct("<4sB3xIQ8x")
ENTRY = struct.Struct("<16sQ")
UNKNOWN = 1 << 63
ZERO_HASH = xxhash.xxh3_128_digest(bytes(BLOCK))


def block_hash(data: bytes | memoryview) -> bytes:
    return xxhash.xxh3_128_digest(data)


def full_block_hashes(rec: Record) -> tuple[int, list[bytes]] | None:
    """Checksums of the whole 64 KiB blocks a WRITE or SYNC record covers: (first block, hashes). Pure, so it can
    run in a worker thread ahead of :meth:`BlockHashIndex.apply`."""
    if rec.kind not in (Kind.WRITE, Kind.SYNC) or rec.length < BLOCK:
        return None
    start, end = rec.offset, rec.offset + rec.length
    first = -(-start // BLOCK)
    data = memoryview(rec.data)
    out = []
    b = first
    while (b + 1) * BLOCK <= end:
        out.append(block_hash(data[b * BLOCK - start:(b + 1) * BLOCK - start]))
        b += 1
    return first, out


class BlockHashIndex:
    def __init__(self, path: Path, size: int, valid_seq: int) -> None:
        """Open or create; if the file is not valid at ``valid_seq`` every checksum is marked unknown."""
        self.path = path
        self.size = size
        self.nblocks = (size + BLOCK - 1) // BLOCK
        new = not path.exists()
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        want = HEAD.size + self.nblocks * ENTRY.size
        if os.fstat(self.fd).st_size < want:
            os.ftruncate(self.fd, want)
        self.map = mmap.mmap(self.fd, want)
        magic, _ver, _bs, seq = HEAD.unpack_from(self.map)[:4] if not new else (b"", 0, 0, -1)
        # (a missing index next to a vault with history must not be taken for an all-zero replica)
        if new and valid_seq == 0:
            # A new, empty replica is all zeros: every checksum is known.
            self.map[HEAD.size:want] = ENTRY.pack(ZERO_HASH, 0) * self.nblocks
        elif new or magic != b"LBHX" or seq != valid_seq:
            self.invalidate_all()
        self._write_head(-1)   # "in use": a crash leaves it invalid

    def _write_head(self, seq: int) -> None:
        HEAD.pack_into(self.map, 0, b"LBHX", 1, BLOCK, seq & ((1 << 64) - 1))

    def invalidate_all(self) -> None:
        self.map[HEAD.size:HEAD.size + self.nblocks * ENTRY.size] = ENTRY.pack(bytes(16), UNKNOWN) * self.nblocks

    def invalidate(self, offset: int, length: int) -> None:
        """Forget the checksums of a range (e.g. found corrupt in the vault): a resync must read it."""
        for b in range(offset // BLOCK, min((offset + max(length, 1) - 1) // BLOCK + 1, self.nblocks)):
            _, seq = self.get(b)
            self._set(b, bytes(16), seq | UNKNOWN)

    def grow(self, size: int) -> None:
        if size <= self.size:
            return
        old = self.nblocks
        self.map.close()
        self.size, self.nblocks = size, (size + BLOCK - 1) // BLOCK
        os.ftruncate(self.fd, HEAD.size + self.nblocks * ENTRY.size)
        self.map = mmap.mmap(self.fd, HEAD.size + self.nblocks * ENTRY.size)
        if old:
            self._set(old - 1, bytes(16), UNKNOWN)  # the old last block may have been partial
        self.map[HEAD.size + old * ENTRY.size:] = ENTRY.pack(ZERO_HASH, 0) * (self.nblocks - old)

    def _set(self, b: int, h: bytes, seq: int) -> None:
        ENTRY.pack_into(self.map, HEAD.size + b * ENTRY.size, h, seq)

    def get(self, b: int) -> tuple[bytes, int]:
        return ENTRY.unpack_from(self.map, HEAD.size + b * ENTRY.size)

    def apply(self, rec: Record, pre: tuple[int, list[bytes]] | None = None) -> None:
        """Update for one applied record: whole blocks get their checksum, partly covered ones become unknown.
        ``pre`` is :func:`full_block_hashes` of the record, computed ahead (in a worker thread)."""
        if rec.kind not in (Kind.WRITE, Kind.SYNC, Kind.ZERO, Kind.TRIM) or not rec.length:
            return
        start, end = rec.offset, rec.offset + rec.length
        first, last = start // BLOCK, (end - 1) // BLOCK
        data = memoryview(rec.data) if rec.kind in (Kind.WRITE, Kind.SYNC) else None
        pfirst, phashes = pre if pre is not None and data is not None else (0, [])
        for b in range(first, min(last, self.nblocks - 1) + 1):
            bs, be = b * BLOCK, min((b + 1) * BLOCK, self.size)
            if start <= bs and be <= end:
                if data is not None:
                    i = b - pfirst
                    h = phashes[i] if be - bs == BLOCK and 0 <= i < len(phashes) else \
                        block_hash(data[bs - start:be - start])
                else:
                    h = ZERO_HASH if be - bs == BLOCK else block_hash(bytes(be - bs))
                self._set(b, h, rec.seq)
            else:
                self._set(b, bytes(16), rec.seq | UNKNOWN)

    def close(self, valid_seq: int) -> None:
        """Mark the index valid at ``valid_seq`` (everything up to it applied) and close."""
        self._write_head(valid_seq)
        self.map.flush()
        self.map.close()
        os.close(self.fd)
