"""The local vault's replicas (each disk at the oldest retained point, encrypted at rest) and the fold redo file.

Replica file ``replica/<disk index>.rep``: 64 KiB blocks, block ``i`` in the fixed-size slot at ``i * SLOT``::

    [12-byte nonce][64 KiB AES-256-GCM ciphertext][16-byte tag]      (SLOT = 65,564 bytes)

The associated data is ``b"LBRP" + u16 disk + u64 block + machine name``, so slots cannot be swapped between blocks,
disks or machines. A slot of all zero bytes (a sparse hole) is an all-zero block: zero blocks cost no space and no
crypto. Caveat of that choice: holes are not authenticated, so someone with write access to the files could zero a
block undetected (they could not forge or move data). No compression: slots must be fixed-size to be addressable.

The replica key is HKDF-SHA256(vault key, info=b"lifeboat replica v1"): the journal's Sealer and the replica never
share a GCM key. Nonces are random (96 bits), which is safe for well over 2^32 slot writes per vault key.

Fold redo ``fold.redo`` (written before a fold batch touches the replica, see :func:`write_redo`)::

    head   "<4sB3xQII"  magic b"LBRD", version 1, batch seq, slot count, zero-range count
    slots  "<H6xQ" disk, block, then SLOT bytes (all zero bytes: punch that block)
    ranges "<H6xQQ" disk, first block, end block (exclusive): punch them
    tail   "<4s4xQ"  magic b"LBRE", xxh3_64 of everything before the tail

Slots in the redo are already sealed, so no plaintext ever rests on disk.
"""

from __future__ import annotations

import os
import struct
import threading
from bisect import bisect_left, bisect_right
from pathlib import Path
from typing import Any, Callable, Iterator

import xxhash
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .. import platform, records
from ..errors import IntegrityError, StorageError
from ..fileio import punch_hole, write_zeros
from .journal import fsync_dir, write_all

BLOCK = records.BLOCK
NONCE = 12
TAG = 16
SLOT = NONCE + BLOCK + TAG  # 65,564
ZERO_SLOT = bytes(SLOT)
ZERO_BLOCK = bytes(BLOCK)
READ_SLOTS = 64             # slots per pread when reading ranges (4 MiB)

REDO_HEAD = struct.Struct("<4sB3xQII")
REDO_SLOT = struct.Struct("<H6xQ")
REDO_RANGE = struct.Struct("<H6xQQ")
REDO_TAIL = struct.Struct("<4s4xQ")


def derive_replica_key(key: bytes) -> bytes:
    """The replica's AES-256 key from the vault key (HKDF-SHA256, info ``b"lifeboat replica v1"``)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"lifeboat replica v1").derive(key)


def slots_for(size: int) -> int:
    return -(-size // BLOCK)


class ReplicaCipher:
    """Seals and opens replica slots for one machine. Thread-safe (AESGCM is)."""

    def __init__(self, replica_key: bytes, machine: str) -> None:
        self._aead = AESGCM(replica_key)
        self._machine = machine.encode()

    def _aad(self, disk: int, block: int) -> bytes:
        return b"LBRP" + struct.pack("<HQ", disk, block) + self._machine

    def seal(self, disk: int, block: int, plain: bytes | bytearray | memoryview) -> bytes:
        nonce = os.urandom(NONCE)
        return nonce + self._aead.encrypt(nonce, bytes(plain), self._aad(disk, block))

    def open(self, disk: int, block: int, slot: bytes) -> bytes:
        """Plaintext of a slot; ZERO_BLOCK for a hole. Raises InvalidTag when it fails authentication."""
        if slot == ZERO_SLOT:
            return ZERO_BLOCK
        return self._aead.decrypt(slot[:NONCE], slot[NONCE:], self._aad(disk, block))


class ReplicaFile:
    """One disk's replica. Its descriptor is shared by threads; ``close`` waits for in-flight users (a closed
    descriptor number could otherwise be reused by another open file and a reader would read the wrong file)."""

    def __init__(self, path: Path, machine: str, disk: int, cipher: ReplicaCipher) -> None:
        self.path = path
        self.machine = machine
        self.disk = disk
        self.cipher = cipher
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._users = 0
        self._closing = False
        self._cv = threading.Condition()

    def _acquire(self) -> int:
        with self._cv:
            if self._closing:
                raise StorageError(f"replica of {self.machine} disk {self.disk} is closed")
            self._users += 1
            return self._fd

    def _release(self) -> None:
        with self._cv:
            self._users -= 1
            self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            if self._closing:
                return
            self._closing = True
            self._cv.wait_for(lambda: self._users == 0)
            os.close(self._fd)

    def grow(self, size: int) -> None:
        """Make room for ``size`` bytes (sparse: ftruncate). Never shrinks."""
        fd = self._acquire()
        try:
            want = slots_for(size) * SLOT
            if os.fstat(fd).st_size < want:
                os.ftruncate(fd, want)
                os.fsync(fd)
        finally:
            self._release()

    def _fail(self, block: int, why: str = "failed authentication") -> IntegrityError:
        return IntegrityError(f"replica block {block} of {self.machine} disk {self.disk} (bytes {block * BLOCK}.."
                              f"{(block + 1) * BLOCK}) {why}", machine=self.machine, disk=self.disk,
                              block=block, offset=block * BLOCK)

    def read_block(self, block: int) -> bytes:
        fd = self._acquire()
        try:
            slot = platform.pread(fd, SLOT, block * SLOT)
        finally:
            self._release()
        if len(slot) < SLOT:   # beyond the end of the file (not grown yet) reads as a hole
            if slot.count(0) != len(slot):
                raise self._fail(block, "is truncated")
            return ZERO_BLOCK
        try:
            return self.cipher.open(self.disk, block, slot)
        except InvalidTag:
            raise self._fail(block) from None

    def read_into(self, offset: int, out: memoryview) -> None:
        """Fill ``out`` (already zeroed by the caller) with the plaintext at ``offset``; holes are skipped."""
        end = offset + len(out)
        b = offset // BLOCK
        last = (end - 1) // BLOCK
        while b <= last:
            n = min(READ_SLOTS, last - b + 1)
            fd = self._acquire()
            try:
                buf = platform.pread(fd, n * SLOT, b * SLOT)
            finally:
                self._release()
            for k in range(n):
                blk = b + k
                slot = buf[k * SLOT:(k + 1) * SLOT]
                if len(slot) < SLOT:
                    if slot.count(0) != len(slot):
                        raise self._fail(blk, "is truncated")
                    continue
                if slot == ZERO_SLOT:
                    continue
                try:
                    plain = self.cipher.open(self.disk, blk, slot)
                except InvalidTag:
                    raise self._fail(blk) from None
                lo = max(offset, blk * BLOCK)
                hi = min(end, (blk + 1) * BLOCK)
                out[lo - offset:hi - offset] = plain[lo - blk * BLOCK:hi - blk * BLOCK]
            b += n

    def scan(self, size: int, problems: list[dict]) -> int:
        """Authenticate every stored (non-hole) slot covering ``size`` bytes; report failures into ``problems``.
        Returns how many slots were checked."""
        checked = 0
        total = slots_for(size)
        b = 0
        while b < total:
            n = min(READ_SLOTS, total - b)
            fd = self._acquire()
            try:
                buf = platform.pread(fd, n * SLOT, b * SLOT)
            finally:
                self._release()
            for k in range(n):
                slot = buf[k * SLOT:(k + 1) * SLOT]
                if slot == ZERO_SLOT or slot.count(0) == len(slot):
                    continue
                checked += 1
                try:
                    if len(slot) < SLOT:
                        raise InvalidTag()
                    self.cipher.open(self.disk, b + k, slot)
                except InvalidTag:
                    err = self._fail(b + k)
                    problems.append({"what": "replica", "error": err.message, **err.details})
            b += n
        return checked

    def write_slot(self, block: int, slot: bytes | memoryview) -> None:
        fd = self._acquire()
        try:
            if bytes(slot) == ZERO_SLOT:
                self._zero(fd, block, block + 1)
            else:
                write_all(fd, slot, block * SLOT)
        finally:
            self._release()

    def zero_blocks(self, first: int, end: int) -> None:
        fd = self._acquire()
        try:
            self._zero(fd, first, end)
        finally:
            self._release()

    @staticmethod
    def _zero(fd: int, first: int, end: int) -> None:
        # Slots are contiguous, so a run of zero blocks is one byte range: one punch for any number of blocks.
        if not punch_hole(fd, first * SLOT, (end - first) * SLOT):
            write_zeros(fd, first * SLOT, (end - first) * SLOT)

    def fsync(self) -> None:
        fd = self._acquire()
        try:
            os.fsync(fd)
        finally:
            self._release()


class ExtentMap:
    """Sorted, non-overlapping half-open intervals ``[start, end) -> source`` with "newest assignment wins".

    Stored in chunks of a few hundred intervals so an assignment costs O(log n + chunk) instead of the O(n) list
    insertion a flat list would (journals can hold millions of records). Sources are opaque and position
    independent: splitting an interval keeps its source.
    """

    CHUNK = 256

    def __init__(self) -> None:
        self._chunks: list[tuple[list[int], list[int], list[Any]]] = []
        self._firsts: list[int] = []
        self.count = 0

    def assign(self, a: int, b: int, src: Any) -> None:
        """Map ``[a, b)`` to ``src`` (``None`` removes the range)."""
        if a >= b:
            return
        chunks, firsts = self._chunks, self._firsts
        k = max(bisect_right(firsts, a) - 1, 0)
        # 1. cut [a, b) out of every chunk that can overlap it
        while k < len(chunks) and firsts[k] < b:
            s, e, r = chunks[k]
            i = bisect_right(s, a) - 1
            if i < 0 or e[i] <= a:
                i += 1
            j = bisect_left(s, b)
            if i < j:
                ns, ne, nr = [], [], []
                if s[i] < a:
                    ns.append(s[i])
                    ne.append(a)
                    nr.append(r[i])
                if e[j - 1] > b:
                    ns.append(b)
                    ne.append(e[j - 1])
                    nr.append(r[j - 1])
                self.count += len(ns) - (j - i)
                s[i:j], e[i:j], r[i:j] = ns, ne, nr
            if not s:
                del chunks[k], firsts[k]
                continue
            firsts[k] = s[0]
            k += 1
        if src is None:
            return
        # 2. insert the new interval
        self.count += 1
        if not chunks:
            chunks.append(([a], [b], [src]))
            firsts.append(a)
            return
        k = max(bisect_right(firsts, a) - 1, 0)
        s, e, r = chunks[k]
        i = bisect_left(s, a)
        s.insert(i, a)
        e.insert(i, b)
        r.insert(i, src)
        firsts[k] = s[0]
        if len(s) > 2 * self.CHUNK:
            h = self.CHUNK
            chunks.insert(k + 1, (s[h:], e[h:], r[h:]))
            firsts.insert(k + 1, s[h])
            del s[h:], e[h:], r[h:]

    def pieces(self, a: int, b: int) -> Iterator[tuple[int, int, Any]]:
        """Cover ``[a, b)`` with ``(start, end, source)`` pieces in order; gaps come as source ``None``."""
        chunks = self._chunks
        k = max(bisect_right(self._firsts, a) - 1, 0)
        pos = a
        while k < len(chunks) and pos < b:
            s, e, r = chunks[k]
            i = max(bisect_right(s, pos) - 1, 0)
            while i < len(s) and pos < b:
                if e[i] <= pos:
                    i += 1
                    continue
                if s[i] >= b:
                    break
                if s[i] > pos:
                    yield pos, s[i], None
                    pos = s[i]
                hi = min(e[i], b)
                yield pos, hi, r[i]
                pos = hi
                i += 1
            k += 1
        if pos < b:
            yield pos, b, None

    def items(self) -> Iterator[tuple[int, int, Any]]:
        for s, e, r in self._chunks:
            yield from zip(s, e, r)

    def find(self, x: int) -> Any:
        """Source covering position ``x`` (None when none)."""
        for _s, _e, src in self.pieces(x, x + 1):
            return src
        return None


class FoldBatch:
    """New images of the blocks a run of records touches, bounded by ``limit_blocks`` (plus zeroed block ranges,
    kept as intervals so a TRIM of a whole disk costs one entry, not one per block)."""

    def __init__(self, replicas: dict[int, ReplicaFile], limit_blocks: int) -> None:
        self.replicas = replicas
        self.limit_blocks = limit_blocks
        self.images: dict[tuple[int, int], bytearray] = {}
        self.zeros: dict[int, ExtentMap] = {}

    def __bool__(self) -> bool:
        return bool(self.images) or any(z.count for z in self.zeros.values())

    def full(self) -> bool:
        return len(self.images) >= self.limit_blocks or sum(z.count for z in self.zeros.values()) >= 65536

    def _image(self, disk: int, block: int) -> bytearray:
        img = self.images.get((disk, block))
        if img is None:
            z = self.zeros.get(disk)
            if z is not None and z.find(block) is not None:
                z.assign(block, block + 1, None)
                img = bytearray(BLOCK)
            else:
                img = bytearray(self.replicas[disk].read_block(block))
            self.images[(disk, block)] = img
        return img

    def write(self, disk: int, offset: int, data: bytes | memoryview) -> None:
        mv = memoryview(data)
        end = offset + len(mv)
        pos = offset
        while pos < end:
            blk, at = divmod(pos, BLOCK)
            n = min(BLOCK - at, end - pos)
            if n == BLOCK:   # whole block replaced: no need to read (and decrypt) the old one
                z = self.zeros.get(disk)
                if z is not None:
                    z.assign(blk, blk + 1, None)
                self.images[(disk, blk)] = bytearray(mv[pos - offset:pos - offset + n])
            else:
                self._image(disk, blk)[at:at + n] = mv[pos - offset:pos - offset + n]
            pos += n

    def zero(self, disk: int, offset: int, length: int) -> None:
        end = offset + length
        first_full = -(-offset // BLOCK)
        end_full = end // BLOCK
        if first_full >= end_full:        # no whole block inside: zero bytes within one or two images
            pos = offset
            while pos < end:
                blk, at = divmod(pos, BLOCK)
                n = min(BLOCK - at, end - pos)
                self._image(disk, blk)[at:at + n] = bytes(n)
                pos += n
            return
        if offset < first_full * BLOCK:
            self.zero(disk, offset, first_full * BLOCK - offset)
        if end > end_full * BLOCK:
            self.zero(disk, end_full * BLOCK, end - end_full * BLOCK)
        for key in [k for k in self.images if k[0] == disk and first_full <= k[1] < end_full]:
            del self.images[key]
        self.zeros.setdefault(disk, ExtentMap()).assign(first_full, end_full, True)

    def reset(self) -> None:
        self.images.clear()
        self.zeros.clear()


def write_redo(path: Path, seq: int, batch: FoldBatch, cipher: ReplicaCipher) -> None:
    """Seal the batch's images into ``path`` with a checksummed tail, fsync file and directory."""
    ranges = [(d, a, b) for d, z in sorted(batch.zeros.items()) for a, b, _ in z.items()]
    h = xxhash.xxh3_64()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        pos = 0

        def put(data: bytes) -> None:
            nonlocal pos
            h.update(data)
            write_all(fd, data, pos)
            pos += len(data)

        put(REDO_HEAD.pack(b"LBRD", 1, seq, len(batch.images), len(ranges)))
        for (disk, blk), img in sorted(batch.images.items()):
            slot = ZERO_SLOT if img == ZERO_BLOCK else cipher.seal(disk, blk, img)
            put(REDO_SLOT.pack(disk, blk) + slot)
        for d, a, b in ranges:
            put(REDO_RANGE.pack(d, a, b))
        write_all(fd, REDO_TAIL.pack(b"LBRE", h.intdigest()), pos)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def read_redo_seq(path: Path) -> int | None:
    """The batch seq of a complete, intact redo file; None when it is torn or corrupt (it was never applied then:
    the replica is only touched after the redo is durable)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(REDO_HEAD.size)
            if len(head) < REDO_HEAD.size or size < REDO_HEAD.size + REDO_TAIL.size:
                return None
            magic, ver, seq, nslots, nranges = REDO_HEAD.unpack(head)
            body = REDO_HEAD.size + nslots * (REDO_SLOT.size + SLOT) + nranges * REDO_RANGE.size
            if magic != b"LBRD" or ver != 1 or body + REDO_TAIL.size != size:
                return None
            h = xxhash.xxh3_64(head)
            left = body - len(head)
            while left:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    return None
                h.update(chunk)
                left -= len(chunk)
            tmagic, digest = REDO_TAIL.unpack(f.read(REDO_TAIL.size))
            return seq if tmagic == b"LBRE" and digest == h.intdigest() else None
    except OSError:
        return None


def apply_redo(path: Path, replicas: dict[int, ReplicaFile], hook: Callable[[str], None] | None = None) -> None:
    """Write a verified redo's slots and holes into the replicas and fsync them. Idempotent."""
    touched: set[int] = set()
    with open(path, "rb", buffering=1 << 20) as f:
        _m, _v, _seq, nslots, nranges = REDO_HEAD.unpack(f.read(REDO_HEAD.size))
        for i in range(nslots):
            disk, blk = REDO_SLOT.unpack(f.read(REDO_SLOT.size))
            slot = f.read(SLOT)
            rep = replicas.get(disk)
            if rep is None:
                raise StorageError(f"fold redo names disk {disk}, which has no replica")
            rep.write_slot(blk, slot)
            touched.add(disk)
            if hook is not None and i == nslots // 2:
                hook("half-applied")
        for _ in range(nranges):
            disk, a, b = REDO_RANGE.unpack(f.read(REDO_RANGE.size))
            replicas[disk].zero_blocks(a, b)
            touched.add(disk)
    for d in touched:
        replicas[d].fsync()
