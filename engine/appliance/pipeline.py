"""Per-machine runtime on the process server: cache → zstd → AES-256-GCM → vault, points, RPO bookkeeping."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..codec import Sealer
from ..errors import IntegrityError, LifeboatError, StorageError, is_no_space
from ..events import Alert, EventBus, PointCreated
from ..names import valid_name
from ..records import HEADER_SIZE, Kind, Record
from ..vault.base import MachineVault, Point, SealedRecord
from ..segment_log import SegmentLog
from ..waits import wait_event
from .blockhash import UNKNOWN, BlockHashIndex, full_block_hashes
from .rpo import RecoveryClock
from .shielded import wait_done

if TYPE_CHECKING:
    from .vault_gate import VaultGate
    from .machine_state import MachineState
    from .sync_cursor import SyncCursor

log = logging.getLogger(__name__)

APPLY_BATCH_BYTES = 8 * 1024 * 1024
#: Records handed from the receiver to the applier in memory (beyond it, the applier reads them from the cache).
MEMORY_QUEUE_BYTES = 32 * 1024 * 1024
#: ... or this many of the vault's batches when it asks for larger ones (``MachineVault.batch_bytes``). With two, the
#: receiver waited for the vault ~1.4-3.8 s and the vault for data ~1.3 s of a ~6.5 s initial replication into
#: Azurite (bench/README.md, session 9); four cut the time ~4 % (8 runs each) for ~30 MB more peak RSS.
MEMORY_QUEUE_BATCHES = 4
#: How long the receiver waits for room in that queue before it lets the cache absorb the backlog (seconds without
#: any progress of the applier).
MEMORY_WAIT = 1.0
#: Sealing threads per apply batch (zstd and AES-GCM release the GIL).
SEAL_PARTS = 2
#: the data kinds handed to a vault that takes them unsealed
PLAIN_KINDS = frozenset(int(k) for k in (Kind.WRITE, Kind.SYNC))
#: Vault appends in flight at once while the vault overlaps them (``MachineVault.overlaps_appends``).
APPENDS_IN_FLIGHT = 2
#: An append may be issued behind one in flight only when that one holds these kinds alone: acknowledging it then
#: makes no point and changes no sync or resync state, so nothing is decided between the two.
OVERLAP_KINDS = frozenset(int(k) for k in (Kind.WRITE, Kind.SYNC, Kind.ZERO, Kind.TRIM))


def _split(recs: list[Record], parts: int) -> list[list[Record]]:
    """Consecutive slices of about equal payload bytes."""
    total = sum(r.payload_size for r in recs)
    if parts <= 1 or len(recs) < 2 or total < 256 * 1024:
        return [recs]
    out: list[list[Record]] = []
    cur: list[Record] = []
    size, target = 0, total / parts
    for r in recs:
        cur.append(r)
        size += r.payload_size
        if size >= target * (len(out) + 1) and len(out) < parts - 1:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def _seal_all(sealer: Sealer, recs: list[Record], plain: bool = False) -> tuple[list[SealedRecord], list[Any]]:
    """In a worker thread: the sealed records, and the block checksums of each (for the block-hash index).
    ``plain``: the vault takes data records unsealed (``MachineVault.takes_plain``): they carry their plaintext in
    ``extra["data"]`` and no envelope; the vault seals what it logs itself."""
    out = []
    pre = []
    for r in recs:
        head = Record(r.kind, r.disk, r.seq, r.ts_ns, r.offset, r.length, b"", r.hash)
        if plain and r.kind in PLAIN_KINDS:
            # "verified": this payload's hash was checked against the source's on the way here (every record the
            # applier gets is: the process server verifies a batch before caching it and handing it over in
            # memory, SegmentLog.read_after verifies what it reads back), so the vault need not hash it again
            # (one xxh3 pass per byte of initial replication saved). Only set here, where that holds.
            out.append(SealedRecord(head, b"", {"data": r.data, "verified": True}))
        elif Kind(r.kind).has_payload:
            out.append(SealedRecord(head, sealer.seal(r.data, head.pack_header())))
        else:
            out.append(SealedRecord(head))
        pre.append(full_block_hashes(r))
    return out, pre


class ResyncMarkers(Protocol):
    """Where the applier reports what it applied about resyncs and corruption (``resync.Resync`` is it; the applier
    imports nothing of it, so resync may read the runtimes without a loop between the two)."""

    def started(self, name: str, seq: int, reason: str) -> None: ...
    def finished(self, name: str, seq: int) -> None: ...
    def corruption_found(self, name: str, where: str, detail: str, from_seq: int,
                         ranges: list[list[int]] | None = None) -> None: ...


class MachineRuntime:
    """Everything the process server keeps for one machine while the appliance runs, and its applier.

    Collaborators: ``state`` (the machine's row: protected, policy), ``cursor`` (initial sync and consistency:
    SYNC_DONE goes there, points are only made where it says the replica is consistent), ``resync`` (RESYNC_START /
    RESYNC_DONE, and corruption found in the cache), ``bus`` (points, errors), ``pool`` and ``sealer`` (CPU work),
    ``hashes_dir`` (the block-hash index files of this machine).
    """

    def __init__(self, name: str, cache: SegmentLog, vault: MachineVault, *, state: MachineState,
                 cursor: SyncCursor, resync: ResyncMarkers, bus: EventBus, pool: Executor, sealer: Sealer,
                 hashes_dir: Path, gate: VaultGate | None = None) -> None:
        self.state = state
        self.gate = gate     # closed while the vault's filesystem is full: the applier waits (capacity.py)
        self.cursor = cursor
        self.resync = resync
        self.bus = bus
        self.pool = pool
        self.sealer = sealer
        self.hashes_dir = hashes_dir
        self.name = name
        self.cache = cache
        self.vault = vault
        self.connection: Any = None          # the agent's live data connection (process_server.AgentConnection)
        # when the machine was last known recoverable and last heard from (appliance clock; runtimes.open
        # loads the persisted times)
        self.clock = RecoveryClock()
        self.agent_stats: dict[str, Any] = {}
        # (first capture ns on the appliance's clock, last seq) of batches in the cache not yet in the vault
        self.cache_pending: collections.deque[tuple[int, int]] = collections.deque()
        self.sync: dict[int, int] = {}       # disk index → bytes of initial replication durable at the PS
        self.new_data = asyncio.Event()
        self.append_lock = asyncio.Lock()
        self.task: asyncio.Task | None = None
        self.last_point_time = 0.0
        self.last_point_seq = max((p.seq for p in vault.points()), default=0)
        self.last_applied_seq = 0
        self.last_applied_ts = 0.0
        self.last_upload: float | None = None   # wall time the vault last acknowledged records (this run)
        self.churn = _Rate()
        self.upload = _Rate()
        self.error: str | None = None
        self._alerted: set[str] = set()        # codes of the upload alerts raised this run, not cleared yet
        # Marker records (bookmarks, sync and resync markers) in the vault whose after-effects (a point, the
        # cursor) are not done yet: see _after_apply.
        self._after_todo: collections.deque[Record] = collections.deque()
        self.hashes: dict[int, BlockHashIndex] = {}
        #: every record up to this seq is in ``hashes`` (a view at a seq ≤ it may take a block's checksum from the
        #: index when the block's last record is ≤ the view's seq: failback's seed, engine/recovery/failback.py)
        self.hashes_upto = 0
        # Records just made durable in the cache, handed to the applier in memory so it need not read them back.
        # Invariant: ``_mem`` holds every cache record with ``_mem_after < seq <= _mem_upto``, in order;
        # ``_mem_open`` says the next append continues it. Only valid while the applier task runs.
        self._mem: collections.deque[Record] = collections.deque()
        self._mem_bytes = 0
        self._mem_after = 0
        self._mem_upto = 0
        self._mem_open = False
        self._fetched = 0                          # last seq the applier has taken (from memory or the cache)
        self._mem_room = asyncio.Event()           # set when the applier takes from the queue
        # initial-replication cursor progress not yet written to state.db (process_server._note_sync)
        self.sync_note: dict[Any, Record] = {}
        self.sync_note_time = 0.0
        self.open_hash_indexes()
        self.hashes_upto = vault.last_seq

    # RPO: what a failover now would lose (engine/appliance/rpo.py).
    def rpo_seconds(self) -> float:
        if not self.state.row(self.name)["protected"]:
            return 0.0
        return self.clock.rpo(connected=self.connection is not None,
                              cache_oldest_ns=self.cache_pending[0][0] if self.cache_pending else 0)

    def open_hash_indexes(self) -> None:
        folder = self.hashes_dir
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

    # in-memory hand-off ------------------------------------------------------------------------------------
    def cached(self, recs: list[Record], prev_last: int, nbytes: int) -> None:
        """The process server appended ``recs`` to the cache (whose last seq was ``prev_last``) and fsynced them.
        Runs on the loop under ``append_lock``, so appends and hand-offs happen in the same order."""
        if self.task is None or self.task.done():
            self._mem_clear()
            return
        limit = self._mem_limit()
        if self._mem_open and self._mem_upto == prev_last and self._mem_bytes + nbytes <= limit:
            pass                                   # continues the queue
        elif not self._mem and self._fetched >= prev_last and nbytes <= limit:
            self._mem_after = prev_last            # the applier has everything before: restart the queue here
        else:
            # Full (the applier is behind): these stay in the cache only, and the applier reads the cache
            # sequentially until it has caught up; only then does the queue start again.
            self._mem_open = False
            return
        self._mem.extend(recs)
        self._mem_bytes += nbytes
        self._mem_upto = recs[-1].seq
        self._mem_open = True

    async def room_for(self, nbytes: int) -> None:
        """Back-pressure for the receiver, before it appends ``nbytes`` to the cache: while the applier takes from
        the in-memory queue, wait until the queue has room, so records are handed over in memory instead of being
        read back from the cache. When the applier makes no progress for MEMORY_WAIT seconds (a vault error, a
        stop), waiting ends: the records go to the cache only, which absorbs any backlog as before."""
        limit = self._mem_limit()
        if not self._mem_open or nbytes > limit or self.task is None or self.task.done():
            return
        while self._mem_open and self._mem_bytes + nbytes > limit:
            self._mem_room.clear()
            if not await wait_event(self._mem_room, MEMORY_WAIT):
                return

    def _mem_limit(self) -> int:
        """The queue's size: a vault that asks for larger batches (the Azure vault's direct initial replication)
        gets room for ``MEMORY_QUEUE_BATCHES`` of them, so the receiver keeps taking data while the vault writes
        and the vault finds its next batches full when it is ready for them."""
        return max(MEMORY_QUEUE_BYTES, MEMORY_QUEUE_BATCHES * (self.vault.batch_bytes or 0))

    def _mem_clear(self) -> None:
        self._mem.clear()
        self._mem_bytes = 0
        self._mem_open = False
        self._mem_room.set()

    def _mem_take(self, after: int, max_bytes: int) -> list[Record] | None:
        """Records after ``after`` from memory, or None when memory does not hold what follows ``after``."""
        mem = self._mem
        while mem and mem[0].seq <= after:         # applied meanwhile (read from the cache)
            r = mem.popleft()
            self._mem_bytes -= HEADER_SIZE + r.payload_size
        if after < self._mem_after or not mem:
            return None
        out: list[Record] = []
        size = 0
        while mem and size < max_bytes:
            r = mem.popleft()
            n = HEADER_SIZE + r.payload_size
            self._mem_bytes -= n
            size += n
            out.append(r)
        self._mem_after = out[-1].seq              # what is left still follows on directly
        if not mem:
            self._mem_bytes = 0
        self._mem_room.set()
        return out

    def start(self) -> None:
        if self.task is None or self.task.done():
            self._mem_clear()
            self.task = asyncio.create_task(self._apply_loop(), name=f"apply:{self.name}")

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass
            self.task = None
        self._mem_clear()

    async def _apply_loop(self) -> None:
        while True:
            try:
                await self._apply_pipeline()
            except asyncio.CancelledError:
                raise
            except IntegrityError as exc:
                # A flipped bit in the cache: never applied. Set the cache aside, and heal by a resync (the
                # agent no longer holds these records; comparing checksums finds what they changed).
                async with self.append_lock:     # never under an append in flight
                    q = self.cache.quarantine()
                    self._mem_clear()
                self.cache_pending.clear()
                log.error("%s: corrupt process-server cache (%s); set aside in %s, resyncing", self.name, exc, q)
                self.resync.corruption_found(self.name, "process-server cache", str(exc), self.vault.last_seq + 1)
            except Exception as exc:  # never crash the role: show the error, retry
                if is_no_space(exc) and self.gate is not None:
                    # Nothing was written (a failed append is rolled back) and the records stay in the cache:
                    # pause replication until space returns, instead of failing every 2 s.
                    log.error("%s: the vault's filesystem is full; replication paused", self.name)
                    self.gate.report_full(f"writing {self.name}'s records failed for lack of space")
                    continue
                log.exception("apply failed for %s", self.name)
                self.error = str(exc)
                self._alert(exc)
                await asyncio.sleep(2.0)

    def _alert(self, exc: BaseException) -> None:
        err = exc.to_dict() if isinstance(exc, LifeboatError) else {"code": "LB_ERROR", "message": str(exc)}
        self._alerted.add(err["code"])
        self.bus.emit(Alert(self.name, err["code"], err["message"], err.get("advice", ""), "critical"))

    def _clear_alerts(self) -> None:
        """An append reached the vault: the upload errors alerted since the last one are gone. Without this, an
        outage's ``LB_PROXY_UNREACHABLE:vm1`` (or ``LB_PROXY_AUTH``, ``LB_CLOUD_UNREACHABLE``...) stayed active
        for ever after replication had resumed, while the status said protected."""
        for code in sorted(self._alerted):
            self.bus.emit(Alert(self.name, code, f"uploads of {self.name} reach the vault again", "", "info",
                                state="cleared"))
        self._alerted.clear()

    async def _fetch(self, after: int) -> list[Record]:
        batch = self.vault.batch_bytes or APPLY_BATCH_BYTES
        recs = self._mem_take(after, batch)
        if recs is not None:
            return recs
        if after >= self.cache.last_seq:
            return []
        # Not in memory (after a restart, or the queue overflowed): read the cache back, verifying every payload.
        # Under the append lock, so the read never meets an append half written.
        async with self.append_lock:
            return await asyncio.get_running_loop().run_in_executor(
                self.pool, self.cache.read_after, after, batch)

    async def _seal(self, recs: list[Record]) -> tuple[list[SealedRecord], list[Any]]:
        loop = asyncio.get_running_loop()
        parts = _split(recs, SEAL_PARTS)
        plain = self.vault.takes_plain
        done = await asyncio.gather(*(loop.run_in_executor(self.pool, _seal_all, self.sealer, p, plain)
                                      for p in parts))
        return [s for part in done for s in part[0]], [h for part in done for h in part[1]]

    async def _apply_pipeline(self) -> None:
        """Fetch → seal → vault, with the vault append (write + fsync) of one batch overlapping the sealing of the
        next. Appends are acknowledged one at a time and in seq order; a vault that overlaps appends
        (``overlaps_appends``) gets the next one before the previous has returned (``_in_flight``). A failure ends
        the pipeline after the appends in flight have finished, and the next one restarts from what the vault
        holds."""
        fetched = self._fetched = self.vault.last_seq
        # appends in flight, oldest first, each with whether the next one may be issued behind it
        writing: collections.deque[tuple[asyncio.Task, bool]] = collections.deque()

        async def settle(n: int) -> None:
            """Wait until at most ``n`` appends are in flight (raises the first one's failure)."""
            while len(writing) > n:
                await asyncio.shield(writing[0][0])
                writing.popleft()

        if self._after_todo:   # markers of an append whose point failed: before anything else, as in order
            await self._after_apply([])
        try:
            while True:
                if self.gate is not None and self.gate.closed:   # vault full: nothing is written until it has room
                    await settle(0)
                    await self.gate.wait_open()
                if writing and self.vault.takes_plain:
                    # nothing to seal: take the next batch once it may be issued, so it holds everything that
                    # arrived meanwhile (fewer, fuller appends; each ends in a barrier unless they overlap)
                    await settle(self._in_flight(writing))
                self.new_data.clear()
                recs = await self._fetch(fetched)
                if not recs:
                    if writing:
                        await settle(len(writing) - 1)
                        continue
                    await wait_event(self.new_data, 1.0)
                    await self._maybe_crash_point()
                    continue
                sealed, pre = await self._seal(recs)
                await settle(self._in_flight(writing))   # appends in order, one at a time unless they overlap
                prev = writing[-1][0] if writing else None
                task = asyncio.create_task(self._commit(recs, sealed, pre, prev), name=f"vault-append:{self.name}")
                writing.append((task, all(r.kind in OVERLAP_KINDS for r in recs)))
                fetched = self._fetched = recs[-1].seq
        finally:
            for task, _ in writing:
                await wait_done(task)   # never abandon a vault append half way

    def _in_flight(self, writing: collections.deque[tuple[asyncio.Task, bool]]) -> int:
        """How many appends may stay in flight when the next one is issued: one while the vault overlaps appends
        and nothing before the next can make a point (initial replication not done, data records only), else 0."""
        if self.vault.overlaps_appends and all(ok for _t, ok in writing) \
                and self.cursor.consistent_from(self.name) is None:
            return APPENDS_IN_FLIGHT - 1
        return 0

    async def _commit(self, recs: list[Record], sealed: list[SealedRecord], pre: list[Any],
                      prev: asyncio.Task | None = None) -> None:
        """Append a batch to the vault, then acknowledge it (block hashes, RPO, markers, points, cache trim).
        ``prev``: the append in flight before it (overlapped): acknowledged first, and its failure is this one's."""
        def failed(t: asyncio.Task) -> bool:
            return t.done() and (t.cancelled() or t.exception() is not None)
        # The vault ties an append to the one still in progress when it is called; one that failed before this is
        # called would leave a gap the vault cannot see: never append after it
        if prev is not None and failed(prev):
            raise StorageError(f"{self.name}: the vault append before this one failed; this one was not made")
        await self.vault.append(sealed)
        if prev is not None:
            await asyncio.wait({prev})
            if failed(prev):
                raise StorageError(f"{self.name}: the vault append before this one failed; this one is not "
                                   "acknowledged")
        self.last_upload = time.time()
        for r, h in zip(recs, pre):
            idx = self.hashes.get(r.disk)
            if idx is not None:
                idx.apply(r, h)
            elif r.kind == Kind.RESIZE or r.kind in (Kind.WRITE, Kind.SYNC, Kind.ZERO, Kind.TRIM):
                self.open_hash_indexes()
                if r.disk in self.hashes:
                    self.hashes[r.disk].apply(r, h)
            if r.kind == Kind.RESIZE and r.disk in self.hashes:
                self.hashes[r.disk].grow(r.length)
        self.upload.add(sum(len(s.envelope) or len(s.extra.get("data", b"")) for s in sealed))
        last = recs[-1].seq
        self.hashes_upto = max(self.hashes_upto, last)
        self.last_applied_seq, self.last_applied_ts = last, recs[-1].ts_ns / 1e9
        while self.cache_pending and self.cache_pending[0][1] <= last:
            self.cache_pending.popleft()
        last_ns = self.clock.to_local_ns(recs[-1].ts_ns)
        if self.cache_pending and self.cache_pending[0][0] < last_ns:
            # The oldest pending batch is partly applied: what remains was captured later.
            self.cache_pending[0] = (last_ns, self.cache_pending[0][1])
        await self._after_apply(recs)
        if self.cache.bytes >= self.cache.segment_bytes:   # else the cache is one segment: nothing to delete
            async with self.append_lock:   # not while the next batch is read back from the cache (_fetch)
                await asyncio.get_running_loop().run_in_executor(self.pool, self.cache.trim, last)
        self.error = None
        if self._alerted:
            self._clear_alerts()

    async def _after_apply(self, recs: list[Record]) -> None:
        """What the appended ``recs`` mean beyond their data: a bookmark's point, the sync and resync markers.
        They wait in ``_after_todo`` until done: the vault holds the records already, so when this fails half way
        (the vault became unreachable between the append and the bookmark's point: a proxy stopped, a password
        changed), the next pipeline starts after them and would never see them again; the bookmark's point was
        lost for ever. The next pipeline run (and the next append) does what is left first."""
        self._after_todo.extend(r for r in recs if r.kind in (Kind.SYNC_DONE, Kind.RESYNC_START, Kind.RESYNC_DONE,
                                                               Kind.BOOKMARK))
        while self._after_todo:
            r = self._after_todo[0]
            if r.kind == Kind.SYNC_DONE:
                self.cursor.disk_synced(self.name, r.disk, r.seq)
            elif r.kind == Kind.RESYNC_START:
                info = _record_info(r)
                reason = info.get("reason")
                self.resync.started(self.name, r.seq, reason[:200] if isinstance(reason, str) and reason
                                    else "resync")
            elif r.kind == Kind.RESYNC_DONE:
                self.resync.finished(self.name, r.seq)
            elif r.kind == Kind.BOOKMARK:
                tag = _record_info(r).get("tag")
                if tag is not None and not valid_name(tag):
                    # The protected machine chose it: a tag is a short name, never an object or a megabyte.
                    log.warning("machine %s: bookmark tag refused by the name rule; the point is kept untagged",
                                self.name)
                    tag = None
                if self.cursor.is_consistent(self.name, r.seq):
                    await self._add_point(Point(f"a-{r.seq}", r.seq, r.ts_ns / 1e9, "app-consistent", tag))
            self._after_todo.popleft()
        await self._maybe_crash_point()

    async def _maybe_crash_point(self) -> None:
        seq = self.vault.last_seq
        if seq <= self.last_point_seq or not self.cursor.is_consistent(self.name, seq):
            return
        policy = self.state.policy_of(self.name)
        if time.time() - self.last_point_time < policy.crash_interval:
            return
        if self.last_applied_seq != seq:
            return  # capture time of ``seq`` unknown (after a restart): wait for the next records
        await self._add_point(Point(f"c-{seq}", seq, self.last_applied_ts, "crash-consistent"))

    async def _add_point(self, p: Point) -> None:
        await self.vault.add_point(p)
        self.last_point_time = time.time()
        self.last_point_seq = max(self.last_point_seq, p.seq)
        self.bus.emit(PointCreated(self.name, p.id, p.kind, p.time, p.tag))


def _record_info(r: Record) -> dict[str, Any]:
    """The JSON payload of a marker record (written by the agent: parsed without trusting it)."""
    try:
        info = json.loads(bytes(r.data))
    except (ValueError, RecursionError):
        return {}
    return info if isinstance(info, dict) else {}


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

