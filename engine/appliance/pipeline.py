"""Per-machine runtime on the process server: cache → zstd → AES-256-GCM → vault, points, RPO bookkeeping."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from ..codec import Sealer
from ..errors import IntegrityError
from ..events import PointCreated
from ..records import Kind, Record
from ..vault.base import MachineVault, Point, SealedRecord
from ..segment_log import SegmentLog as MachineCache
from .blockhash import UNKNOWN, BlockHashIndex

if TYPE_CHECKING:
    from .appliance import Appliance

log = logging.getLogger(__name__)

APPLY_BATCH_BYTES = 8 * 1024 * 1024


def _seal_all(sealer: Sealer, recs: list[Record]) -> list[SealedRecord]:
    out = []
    for r in recs:
        head = Record(r.kind, r.disk, r.seq, r.ts_ns, r.offset, r.length, b"", r.hash)
        if Kind(r.kind).has_payload:
            out.append(SealedRecord(head, sealer.seal(r.data, head.pack_header())))
        else:
            out.append(SealedRecord(head))
    return out


class MachineRuntime:
    """Everything the process server keeps for one machine while the appliance runs."""

    def __init__(self, app: Appliance, name: str, cache: MachineCache, vault: MachineVault) -> None:
        self.app = app
        self.name = name
        self.cache = cache
        self.vault = vault
        self.connection: Any = None          # the agent's live data connection (process_server.AgentConnection)
        self.last_seen = 0.0                 # monotonic time of the last frame from the agent
        self.agent_pending_ns = 0            # capture time of the oldest record the agent holds unacknowledged
        self.agent_stats: dict[str, Any] = {}
        # (first capture ns, last seq) of batches in the cache not yet in the vault, oldest first
        self.cache_pending: collections.deque[tuple[int, int]] = collections.deque()
        self.sync: dict[int, int] = {}       # disk index → bytes of initial replication durable at the PS
        self.new_data = asyncio.Event()
        self.append_lock = asyncio.Lock()
        self.task: asyncio.Task | None = None
        self.last_point_time = 0.0
        self.last_point_seq = max((p.seq for p in vault.points()), default=0)
        self.last_applied_seq = 0
        self.last_applied_ts = 0.0
        self.churn = _Rate()
        self.upload = _Rate()
        self.error: str | None = None
        self.hashes: dict[int, BlockHashIndex] = {}
        self.open_hash_indexes()

    # RPO: the age of the oldest acknowledged write that the vault cannot recover yet.
    def rpo_seconds(self, now_ns: int | None = None) -> float:
        now_ns = now_ns or time.time_ns()
        oldest = [t for t in (self.agent_pending_ns, self.cache_pending[0][0] if self.cache_pending else 0) if t]
        rpo = (now_ns - min(oldest)) / 1e9 if oldest else 0.0
        if self.connection is None and self.app.machine_row(self.name)["protected"]:
            # We cannot see writes made while the agent is away: count the time since it was last heard from.
            rpo = max(rpo, time.monotonic() - self.last_seen if self.last_seen else 0.0)
        return max(rpo, 0.0)

    def open_hash_indexes(self) -> None:
        folder = self.app.home.cache / f"{self.name}.hashes"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for d in self.vault.disks():
            if d.index in self.hashes:
                self.hashes[d.index].grow(d.size)
            else:
                self.hashes[d.index] = BlockHashIndex(folder / f"{d.index}.bhx", d.size, self.vault.last_seq)

    def close_hash_indexes(self) -> None:
        for h in self.hashes.values():
            h.close(self.vault.last_seq)
        self.hashes.clear()

    async def compare_blocks(self, disk: int, seq: int, blocks: list[int], hashes: list[bytes]) -> list[int]:
        """Resync: which of the source's blocks (hashed at ``seq``) differ from the replica at ``seq``."""
        deadline = time.monotonic() + 120
        while self.vault.last_seq < seq:  # the records before the hashes are in the cache: wait until applied
            if time.monotonic() > deadline:
                raise TimeoutError("replica did not catch up for the resync compare")
            await asyncio.sleep(0.01)
        idx = self.hashes.get(disk)
        if idx is None:
            return list(blocks)
        differ: list[int] = []
        unknown: list[tuple[int, bytes]] = []
        for b, h in zip(blocks, hashes):
            if b >= idx.nblocks:
                differ.append(b)
                continue
            ih, mseq = idx.get(b)
            if (mseq & ~UNKNOWN) > seq:
                differ.append(b)          # changed after the source was hashed: send it again, always safe
            elif mseq & UNKNOWN:
                unknown.append((b, h))
            elif ih != h:
                differ.append(b)
        if unknown:
            differ += await self._compare_by_reading(disk, seq, unknown, idx.size)
        return sorted(differ)

    async def _compare_by_reading(self, disk: int, seq: int, items: list[tuple[int, bytes]], size: int) -> list[int]:
        from ..errors import IntegrityError
        from .blockhash import BLOCK, block_hash
        view = await self.vault.open_view(seq, disk)
        out = []
        try:
            for b, h in items:
                n = min(BLOCK, size - b * BLOCK)
                try:
                    data = await view.read(b * BLOCK, n)
                except IntegrityError:
                    out.append(b)   # unreadable replica block: the source's copy heals it
                    continue
                if block_hash(data) != h:
                    out.append(b)
        finally:
            await view.close()
        return out

    def start(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._apply_loop(), name=f"apply:{self.name}")

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass
            self.task = None

    async def _apply_loop(self) -> None:
        loop = asyncio.get_running_loop()
        pool: Executor = self.app.pool
        sealer = self.app.sealer
        while True:
            try:
                applied = self.vault.last_seq
                recs = await loop.run_in_executor(pool, self.cache.read_after, applied, APPLY_BATCH_BYTES)
                if not recs:
                    self.new_data.clear()
                    try:
                        await asyncio.wait_for(self.new_data.wait(), timeout=1.0)
                    except TimeoutError:
                        pass
                    await self._maybe_crash_point()
                    continue
                # Seal in two halves in parallel: zstd and AES-GCM release the GIL.
                half = len(recs) // 2
                parts = [recs[:half], recs[half:]] if half else [recs]
                sealed_parts = await asyncio.gather(*(loop.run_in_executor(pool, _seal_all, sealer, p) for p in parts))
                sealed = [s for part in sealed_parts for s in part]
                await self.vault.append(sealed)
                for r in recs:
                    idx = self.hashes.get(r.disk)
                    if idx is not None:
                        idx.apply(r)
                    elif r.kind == Kind.RESIZE or r.kind in (Kind.WRITE, Kind.SYNC, Kind.ZERO, Kind.TRIM):
                        self.open_hash_indexes()
                        if r.disk in self.hashes:
                            self.hashes[r.disk].apply(r)
                    if r.kind == Kind.RESIZE and r.disk in self.hashes:
                        self.hashes[r.disk].grow(r.length)
                self.upload.add(sum(len(s.envelope) for s in sealed))
                last = recs[-1].seq
                self.last_applied_seq, self.last_applied_ts = last, recs[-1].ts_ns / 1e9
                while self.cache_pending and self.cache_pending[0][1] <= last:
                    self.cache_pending.popleft()
                if self.cache_pending and self.cache_pending[0][0] < recs[-1].ts_ns:
                    # The oldest pending batch is partly applied: what remains was captured later.
                    self.cache_pending[0] = (recs[-1].ts_ns, self.cache_pending[0][1])
                await self._after_apply(recs)
                await loop.run_in_executor(pool, self.cache.trim, last)
                self.error = None
            except asyncio.CancelledError:
                raise
            except IntegrityError as exc:
                # A flipped bit in the cache: never applied. Set the cache aside, and heal by a resync (the
                # agent no longer holds these records; comparing checksums finds what they changed).
                q = self.cache.quarantine()
                self.cache_pending.clear()
                log.error("%s: corrupt process-server cache (%s); set aside in %s, resyncing", self.name, exc, q)
                self.app.corruption_found(self.name, "process-server cache", str(exc), self.vault.last_seq + 1)
            except Exception as exc:  # never crash the role: show the error, retry
                log.exception("apply failed for %s", self.name)
                self.error = str(exc)
                self.app.set_error(self.name, exc)
                await asyncio.sleep(2.0)

    async def _after_apply(self, recs: list[Record]) -> None:
        for r in recs:
            if r.kind == Kind.SYNC_DONE:
                self.app.disk_synced(self.name, r.disk, r.seq)
            elif r.kind == Kind.RESYNC_START:
                info = json.loads(bytes(r.data))
                self.app.resync_started(self.name, r.seq, info.get("reason") or "resync")
            elif r.kind == Kind.RESYNC_DONE:
                self.app.resync_finished(self.name, r.seq)
            elif r.kind == Kind.BOOKMARK:
                info = json.loads(bytes(r.data))
                if self.app.is_consistent(self.name, r.seq):
                    await self._add_point(Point(f"a-{r.seq}", r.seq, r.ts_ns / 1e9, "app-consistent",
                                                info.get("tag")))
        await self._maybe_crash_point()

    async def _maybe_crash_point(self) -> None:
        seq = self.vault.last_seq
        if seq <= self.last_point_seq or not self.app.is_consistent(self.name, seq):
            return
        policy = self.app.policy_of(self.name)
        if time.time() - self.last_point_time < policy.crash_interval:
            return
        if self.last_applied_seq != seq:
            return  # capture time of ``seq`` unknown (after a restart): wait for the next records
        await self._add_point(Point(f"c-{seq}", seq, self.last_applied_ts, "crash-consistent"))

    async def _add_point(self, p: Point) -> None:
        await self.vault.add_point(p)
        self.last_point_time = time.time()
        self.last_point_seq = max(self.last_point_seq, p.seq)
        self.app.bus.emit(PointCreated(self.name, p.id, p.kind, p.time, p.tag))


class _Rate:
    """Bytes per second over the last few seconds."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self.samples: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, n: int) -> None:
        now = time.monotonic()
        self.samples.append((now, n))
        while self.samples and now - self.samples[0][0] > self.window:
            self.samples.popleft()

    def rate(self) -> float:
        now = time.monotonic()
        while self.samples and now - self.samples[0][0] > self.window:
            self.samples.popleft()
        return sum(n for _, n in self.samples) / self.window
