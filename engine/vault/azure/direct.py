"""Initial replication straight into the page blobs: one machine's chain of direct appends (docs/FORMATS.md §5.6).

While a machine has no point yet and its page blobs are caught up, an append of range records only (SYNC, WRITE,
ZERO, TRIM) writes their net effect straight into the page blobs (concurrent Put Page requests of at most
``DIRECT_PUT`` bytes), then logs their headers as direct entries (``logs.py``): the data crosses the wire once.

Appends overlap. A direct append's pages are started under the machine's append lock, then the lock is let go and
its log commit runs as a task of the chain (``inflight``): it waits for the append called before it, then for its own
pages, then commits the log; only then do ``applied_seq`` and ``last_seq`` move past it. So the next append's pages
are on the wire while this one's last pages and its commit are answered, the log commits stay in seq order, and a
failure breaks the chain: every later commit in flight waits for its own pages and fails. The chain holds the
machine's apply lock from its first append until the last one has finished, so neither the applier nor a point, a
prune or a new disk ever sees the page blobs between the two; other appends drain it first.

The run ends at the first other append or point (:meth:`DirectChain.close_run`): every disk is snapshotted there
(kind ``sync``), so views after it never need the direct entries.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections import deque
from typing import Any, Callable, Protocol, TypeVar

from ...records import Kind, Record
from ..base import DiskInfo, SealedRecord
from ..local_view import ZERO_KINDS
from ..replica import ExtentMap
from . import pages
from .logs import LogEntry
from .pages import Snap
from .rest import AzureBlobClient, wait_quiet

log = logging.getLogger(__name__)

#: direct appends write the page blobs in Put Page requests of at most this many bytes, all of an append's requests
#: at once: an append is ~16 MiB, so smaller requests keep more connections busy
DIRECT_PUT = 1024 * 1024
#: payload bytes per append the vault asks of the applier while appends go direct
DIRECT_BATCH = 16 * 1024 * 1024
#: the kinds an append may hold to go direct
DIRECT_KINDS = frozenset(int(k) for k in (Kind.SYNC, Kind.WRITE, Kind.ZERO, Kind.TRIM))
#: direct appends in flight at once: the next one's pages go out while the previous one's last pages and log commit
#: are answered, so the connections to the service never drain between appends (the log commits stay in order)
DIRECT_OVERLAP = 2

Items = list[tuple[int, bytes, bytes | bytearray]]   # (seq, packed header, envelope), as ``_prepare`` makes them
T = TypeVar("T")


class DirectHost(Protocol):
    """What the chain needs of its machine (``machine.AzureMachineVault``): its seqs, locks, page blobs and log."""

    machine: str
    _applied: int
    _last_seq: int
    _stuck: str | None
    _direct_open: bool
    _direct_ok: bool
    _apply_lock: asyncio.Lock
    _applied_evt: asyncio.Event
    _c: AzureBlobClient
    _disks: list[DiskInfo]
    _snaps: dict[int, list[Snap]]
    apply_hook: Callable[[str], None] | None

    async def _io(self, fn: Callable[..., T], *args: Any) -> T: ...
    async def _after(self, dep: asyncio.Future[bool] | None) -> None: ...
    async def _apply_to(self, target: int) -> None: ...
    def _prepare(self, records: list[SealedRecord], floor: int) -> tuple[Items, dict[int, int], list[int],
                                                                         list[SealedRecord]]: ...
    def _open_payload(self, e: LogEntry, env: bytes | bytearray | memoryview) -> bytes: ...
    def _submit_pages(self, maps: dict[int, ExtentMap], max_put: int = ...,
                      track: list[tuple[int, int, int, concurrent.futures.Future]] | None = ...
                      ) -> list[concurrent.futures.Future]: ...
    def _write_log(self, items: Items, ts: list[int], *, direct: bool = ...,
                   before: list[concurrent.futures.Future] | None = ...) -> list[LogEntry]: ...
    def _write_meta(self) -> None: ...
    def _disk_blob(self, index: int) -> str: ...


class DirectChain:
    """The direct appends of one machine in flight. Runs on the machine's event loop; the machine calls it from
    ``append`` (under its append lock) and before anything that must see the page blobs settled (``drain``,
    ``close_run``)."""

    def __init__(self, mv: DirectHost) -> None:
        self.mv = mv
        self.inflight: deque[asyncio.Task] = deque()   # log commits not finished yet, oldest first
        self.users = 0            # appends in the chain; while > 0 the chain holds the machine's apply lock
        self.queued = 0           # the last seq handed to the chain
        self.broken = False       # an append of the chain failed: no later one commits
        self.puts: list[tuple[int, int, int, concurrent.futures.Future]] = []   # (disk, start, end, write)
        self.appends = 0          # direct appends made, and how many started behind another
        self.overlapped = 0

    @property
    def busy(self) -> bool:
        return self.users > 0

    async def join(self, records: list[SealedRecord],
                   dep: asyncio.Future[bool] | None) -> tuple[bool, asyncio.Task | None]:
        """A direct append made while the chain is busy: when it can go behind the appends in flight, start its
        pages now (True and its log commit, None when every record is held already); else wait until every
        append in flight has finished (False, None)."""
        if not self.broken and records[0].header.seq > self.queued:
            while len(self.inflight) >= DIRECT_OVERLAP:
                await asyncio.wait({self.inflight[0]})
            if not self.broken:
                items, _grows, ts, kept = self.mv._prepare(records, self.queued)
                return True, (await self._start(items, ts, kept, dep) if items else None)
        await self.drain()
        return False, None

    async def begin(self, items: Items, ts: list[int], kept: list[SealedRecord]) -> asyncio.Task | None:
        """The first append of a chain (the caller holds the append lock and has waited for the append before):
        bring the page blobs up to ``last_seq`` first, then start it. None when they cannot be (the applier is
        stuck): the append goes through the logs."""
        mv = self.mv
        await self._enter()
        try:
            if mv._applied < mv._last_seq:   # catch up first: the page blobs must be at last_seq
                await mv._apply_to(mv._last_seq)
            if mv._applied == mv._last_seq and not mv._stuck:
                return await self._start(items, ts, kept, None)
            return None
        finally:
            self._exit()

    async def drain(self) -> None:
        """Wait until every direct append in flight has finished (their failures are their callers' to report)."""
        while self.inflight:
            await asyncio.wait({self.inflight[0]})   # a cancelled caller leaves it running

    async def _enter(self) -> None:
        """One more append in the chain (caller holds the append lock); the first takes the apply lock."""
        if self.users == 0:
            await self.mv._apply_lock.acquire()
            self.queued = self.mv._last_seq
            self.broken = False
        self.users += 1

    def _exit(self) -> None:
        self.users -= 1
        if self.users == 0:
            self.queued = self.mv._last_seq     # what failed in the chain is sent again from here
            self.mv._apply_lock.release()

    async def _start(self, items: Items, ts: list[int], kept: list[SealedRecord],
                     dep: asyncio.Future[bool] | None) -> asyncio.Task:
        """Start the pages of a direct append and queue its log commit behind ``dep`` (caller holds the append
        lock)."""
        mv = self.mv
        await self._enter()
        task = None
        try:
            futs = await mv._io(self._submit, kept)
            self.queued = items[-1][0]
            self.appends += 1
            self.overlapped += bool(self.inflight)
            task = asyncio.create_task(self._commit(items, ts, futs, dep),
                                       name=f"azure-direct:{mv.machine}:{items[-1][0]}")
            self.inflight.append(task)
            task.add_done_callback(self._done)
            return task
        finally:
            if task is None:
                self.broken = True
                self._exit()

    def _done(self, task: asyncio.Task) -> None:
        self.inflight.remove(task)
        if task.cancelled() or task.exception() is not None:
            self.broken = True     # (the exception is also its caller's; read here so none goes unseen)
        self._exit()

    async def _commit(self, items: Items, ts: list[int], futs: list[concurrent.futures.Future],
                      dep: asyncio.Future[bool] | None) -> None:
        mv = self.mv
        try:
            await mv._after(dep)
        except BaseException:
            await mv._io(wait_quiet, futs)   # none of its writes is left in flight when its caller hears
            raise
        await mv._io(self._log, items, ts, futs)
        mv._applied_evt.set()

    def _submit(self, kept: list[SealedRecord]) -> list[concurrent.futures.Future]:
        """Start a direct append's writes: the records' net effect into the page blobs (all requests at once);
        the caller waits for every one (``_log``)."""
        mv = self.mv
        maps: dict[int, ExtentMap] = {}
        for sr in kept:
            r = sr.header
            if not r.length:
                continue
            if r.kind in ZERO_KINDS:
                maps.setdefault(r.disk, ExtentMap()).assign(r.offset, r.offset + r.length, pages.ZERO)
                continue
            data = sr.extra.get("data") if sr.extra else None
            if data is not None and len(data) == r.length:
                # the plaintext handed in beside the envelope (the pipeline sealed it just now): check it as the
                # source hashed it, instead of opening the envelope again -- unless the caller says it has just
                # done exactly that (``extra["verified"]``, set by the applier only: the process server checked
                # it before caching it, or the cache read checked it): a second xxh3 pass over the same bytes
                # would find nothing new, so a record still never reaches the page blob unchecked
                if not sr.extra.get("verified"):
                    Record(r.kind, r.disk, r.seq, r.ts_ns, r.offset, r.length, data, r.hash).verify()
            else:
                data = mv._open_payload(LogEntry(r, 0, len(sr.envelope)), sr.envelope)
            maps.setdefault(r.disk, ExtentMap()).assign(r.offset, r.offset + r.length, (data, r.offset))
        # The append before this one may still be writing some of the same pages (a guest write during the sync
        # over a range it synced): wait for those writes first, so this one's writes and its reads of partial
        # pages (read-modify-write) come after them. Pages no earlier write touches go out at once.
        busy = [w for w in self.puts if not w[3].done()]
        wait_quiet([f for disk, lo, hi, f in busy if disk in maps
                    and any(a < hi and lo < b for a, b, _src in maps[disk].items())])
        track: list[tuple[int, int, int, concurrent.futures.Future]] = []
        futs = mv._submit_pages(maps, DIRECT_PUT, track)
        self.puts = busy + track
        if mv.apply_hook:
            try:
                mv.apply_hook("direct-submitted")
            except BaseException:
                wait_quiet(futs)
                raise
        return futs

    def _log(self, items: Items, ts: list[int], futs: list[concurrent.futures.Future]) -> None:
        """Commit a direct append's headers as direct entries once its pages are durable (the chain has committed
        every earlier append by now). Only then is ``applied_seq`` past them."""
        mv = self.mv
        # the log's block is staged beside the page writes (a staged block is invisible); the commit that makes the
        # entries count waits for every page
        mv._write_log(items, ts, direct=True, before=futs)
        mv._applied = items[-1][0]
        mv._last_seq = items[-1][0]
        mv._direct_open = True
        if mv.apply_hook:
            mv.apply_hook("direct-logged")

    async def close_run(self) -> None:
        """End a direct run (caller holds the apply lock): snapshot every disk at the run's end, record it."""
        mv = self.mv
        if not mv._direct_open:
            return
        if mv._applied < mv._last_seq:
            await mv._apply_to(mv._last_seq)
        await mv._io(self._close_run_sync)

    def _close_run_sync(self) -> None:
        mv = self.mv
        meta = {"lbseq": str(mv._applied), "lbkind": "sync"}
        for d in mv._disks:
            sid = mv._c.snapshot(mv._disk_blob(d.index), meta)
            mv._snaps.setdefault(d.index, []).append(Snap(mv._applied, sid, pages.up(d.size), None, "sync"))
        mv._write_meta()
        mv._direct_open = False
        mv._direct_ok = False
        log.info("machine %s: initial replication went straight to the page blobs up to seq %d (%d direct appends, "
                 "%d of them started while the one before was in flight)", mv.machine, mv._applied,
                 self.appends, self.overlapped)
