"""Read side of the local vault: disk views, the decrypted-payload cache and verify reports.

A view at seq ``s`` of disk ``d`` is the replica overlaid with the journal records ``base_seq < seq <= s`` of that
disk, newest last. Opening a view scans record *headers* only and builds an extent map (memory per extent, not per
byte); reads decrypt replica slots or open record envelopes (a small LRU of decrypted payloads) on demand. Views
show the disk at its current size: the area a disk grew by reads as zeros at older points.

The machine-level bookkeeping (locks, which views are open, prune) lives in :mod:`engine.vault.local`; this module
holds the pieces that only read.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol, TypeVar

from ..errors import IntegrityError, InvalidInput, StorageError
from ..records import Kind
from .base import DiskInfo, DiskView, Point, VerifyReport
from .replica import ExtentMap

if TYPE_CHECKING:
    from .journal import Entry, Journal
    from .replica import ReplicaFile

T = TypeVar("T")


class VaultInternals(Protocol):
    """What views, time look-ups and verification read of a local machine vault (``LocalMachineVault``, which
    passes itself; this module is its reading half and imports nothing of it)."""
    _journal: Journal
    _replicas: dict[int, ReplicaFile]
    _cache: _PayloadCache
    _base_seq: int
    _last_seq: int

    def disks(self) -> list[DiskInfo]: ...
    def points(self) -> list[Point]: ...
    def _payload(self, e: Entry) -> bytes: ...
    def _check_open(self) -> None: ...
    def _run(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]: ...
    def _view_closed(self) -> Awaitable[None]: ...

DATA_KINDS = (Kind.WRITE, Kind.SYNC)
ZERO_KINDS = (Kind.ZERO, Kind.TRIM)
#: reads up to this size run on the event loop (cheaper than a thread hop) unless they must open a bigger record
INLINE_READ = 128 * 1024


class _Zero:
    def __repr__(self) -> str:
        return "ZERO"


ZERO = _Zero()   # extent source: the range reads as zeros


class _PayloadCache:
    """LRU of decrypted record payloads by (segment, position), bounded in bytes. Thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._d: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def has(self, key: tuple[int, int]) -> bool:
        with self._lock:
            return key in self._d

    def get(self, key: tuple[int, int], load: Callable[[], bytes]) -> bytes:
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
                return v
        v = load()   # outside the lock: decrypts run in parallel threads
        with self._lock:
            if key not in self._d and len(v) <= self.max_bytes:
                self._d[key] = v
                self._bytes += len(v)
                while self._bytes > self.max_bytes:
                    _, old = self._d.popitem(last=False)
                    self._bytes -= len(old)
        return v


class LocalDiskView(DiskView):
    """One disk as at one seq. Stays valid while records are appended; blocks ``prune`` until closed."""

    def __init__(self, owner: VaultInternals, seq: int, disk: int, size: int, emap: ExtentMap) -> None:
        self._owner = owner
        self.seq = seq
        self.disk = disk
        self.size = size
        self._map = emap
        self._closed = False

    async def read(self, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset+length)``: InvalidInput (a ValueError) out of range, IntegrityError if corrupt."""
        if self._closed:
            raise InvalidInput("read from a closed view")
        self._owner._check_open()
        if not isinstance(offset, int) or not isinstance(length, int) or offset < 0 or length < 0 \
                or offset + length > self.size:
            raise InvalidInput(f"read [{offset}, +{length}) is outside disk {self.disk} of size {self.size}")
        if length == 0:
            return b""
        srcs = {id(s): s for _a, _b, s in self._map.pieces(offset, offset + length) if s is not None and s is not ZERO}
        cache = self._owner._cache
        if length <= INLINE_READ and all(s.rec.length <= INLINE_READ or cache.has((s.seg, s.pos))
                                         for s in srcs.values()):
            return self._read_sync(offset, length)   # small and cheap: a thread hop would cost more
        # Open the records a big read needs in parallel threads first (zstd + AES release the GIL); the assembly
        # below then finds them in the payload cache.
        if len(srcs) > 1:
            await asyncio.gather(*(self._owner._run(self._owner._payload, s) for s in srcs.values()))
        return await self._owner._run(self._read_sync, offset, length)

    def _read_sync(self, offset: int, length: int) -> bytes:
        out = bytearray(length)        # zero-filled: ZERO extents and replica holes need no work
        mv = memoryview(out)
        owner = self._owner
        for a, b, src in self._map.pieces(offset, offset + length):
            o = a - offset
            if src is None:
                owner._replicas[self.disk].read_into(a, mv[o:o + b - a])
            elif src is not ZERO:
                payload = owner._payload(src)
                p = a - src.rec.offset
                mv[o:o + b - a] = payload[p:p + b - a]
        return bytes(out)

    async def close(self) -> None:
        """Release the view (lets a waiting prune go ahead)."""
        if not self._closed:
            self._closed = True
            self._map = ExtentMap()
            await self._owner._view_closed()

    async def __aenter__(self) -> LocalDiskView:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def build_extent_map(mv: VaultInternals, seq: int, disk: int) -> ExtentMap:
    """Extent map of ``disk`` as at ``seq``: the journal records ``base_seq < seq' <= seq`` over the replica.
    Runs in a worker thread; scans record headers only."""
    emap = ExtentMap()
    for e in mv._journal.iter_entries(mv._base_seq, seq):
        r = e.rec
        if r.disk != disk or not r.length:
            continue
        if r.kind in DATA_KINDS:
            emap.assign(r.offset, r.offset + r.length, e)
        elif r.kind in ZERO_KINDS:
            emap.assign(r.offset, r.offset + r.length, ZERO)
    return emap


def seq_at_time_scan(mv: VaultInternals, t_ns: int) -> tuple[int, float] | None:
    """The newest record captured at or before ``t_ns`` (headers only), else ``base_seq`` when a point at it is old
    enough, else None. Runs in a worker thread (:meth:`LocalMachineVault.seq_at_time`)."""
    best: tuple[int, float] | None = None
    for e in mv._journal.iter_entries(mv._base_seq, mv._last_seq):
        if e.rec.ts_ns > t_ns:
            break
        best = (e.rec.seq, e.rec.ts_ns / 1e9)
    if best is None:
        base = [p for p in mv.points() if p.seq == mv._base_seq and p.time <= t_ns / 1e9]
        return (mv._base_seq, base[0].time) if base else None
    return best


def verify_all(mv: VaultInternals) -> VerifyReport:
    """Authenticate and hash-check every journal record after base_seq and every stored replica slot; corruption
    goes into the report. Runs in a worker thread (:meth:`LocalMachineVault.verify`)."""
    rep = VerifyReport()
    for e in mv._journal.iter_entries(mv._base_seq, mv._last_seq, tolerant=True, problems=rep.problems):
        rep.records_checked += 1
        if e.envlen:
            try:
                mv._journal.read_payload(e)
            except (IntegrityError, StorageError) as err:
                rep.problems.append({"what": "journal", "error": err.message, **err.details})
    for d in mv.disks():
        rep.blocks_checked += mv._replicas[d.index].scan(d.size, rep.problems)
    return rep
