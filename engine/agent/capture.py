"""Capture: the agent's NBD export sits in front of the backing file or device, like DRBD's device in front of its
backing disk. Every write, zeroing and trim is applied to the backing store and then journaled, in order, with
a machine-wide sequence number, before the client gets its reply.

Ordering is what makes recovery points exact: the backing write and the journal append happen in one event-loop
step (no await between them), and so do initial-replication reads and their sequence numbers, so the stream the
appliance receives replays to exactly the disk's contents at every sequence number.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import os
import time
from pathlib import Path
from typing import Callable

from .. import platform
from ..fileio import punch_hole
from ..fileio import atomic_write
from ..nbd.server import NBDError
from ..records import MAX_PAYLOAD, Kind, Record
from ..segment_log import SegmentLog
from .dirty_map import ActivityLog, DirtyMap


SEQ_BLOCK = 1 << 20
#: Records held in memory only (not journaled, not yet acknowledged) at most, in bytes of header + payload; past
#: this they are written to the journal (MachineCapture.spill).
SHIP_MEMORY = 64 << 20
#: Congestion (DRBD's ``on-congestion block``, its default): once memory holds more than CONGESTION_BYTES while the
#: link is up, a new write waits for acknowledgements to make room, at most CONGESTION_WAIT seconds; a link too slow
#: for that (or stalled) gets the journal instead (the spill past SHIP_MEMORY), as DRBD's ``pull-ahead`` would.
#: Journaling a backlog costs the protected machine a second write and a read-back of every byte; waiting for a
#: link that keeps up costs it nothing.
CONGESTION_BYTES = SHIP_MEMORY * 3 // 4
CONGESTION_WAIT = 0.25
#: Activity-log extents stay active across flushes (DRBD's hot extents), so a flushing guest does not pay an
#: fdatasync per extent per flush. A flush retires a disk's extents only once this long has passed since it last
#: did, or when more than AL_HOT_EXTENTS are active: a crash then compares at most a few more 64 MiB extents.
AL_RETIRE_SECONDS = 10.0
AL_HOT_EXTENTS = 64
#: A FLUSH or FUA first waits, at most this long, for the process server to acknowledge the records it covers (its
#: cache is durable), and journals only what is still unacknowledged then: on a link that keeps up, a flush costs
#: the protected machine no second write of its data. Only when the link would take longer (unacknowledged bytes
#: over the link's rate, plus its acknowledgement latency) does the flush journal at once.
FLUSH_ACK_WAIT = 0.5
_ZEROS = bytes(1 << 20)


class MachineCapture:
    """Shared by all disks of one machine: the journal and the sequence counter.

    Sequence numbers must never be reused, even after a crash: initial-replication records take numbers without
    being journaled, so the journal alone does not know the highest number handed out. Numbers are reserved in
    blocks, durably (``seq.reserved``), before use; a restart continues after the reserved block.
    """

    def __init__(self, journal_dir: Path, start_seq: int = 0, journal_limit: int = 1 << 30) -> None:
        # Segments small enough that acknowledged data is released well before the journal is full.
        self.journal = SegmentLog(journal_dir, ".lbj", fsync_each=False,
                                  segment_bytes=max(1 << 20, min(64 << 20, journal_limit // 16)))
        self._reserved_file = journal_dir / "seq.reserved"
        try:
            reserved = int(self._reserved_file.read_text())
        except (OSError, ValueError):
            reserved = 0
        self.seq = max(start_seq, self.journal.last_seq, reserved)
        self._reserve()
        self.dirty: DirtyMap | None = None         # set by the agent once disk sizes are known
        self.al = ActivityLog(journal_dir / "activity.log")
        self.overflow = False                      # journal full: writes go to the dirty map instead
        self.journal_limit = journal_limit
        self.on_overflow: Callable[[], None] = lambda: None
        self.capturing = False
        #: planned failover: the appliance asked the source to stop changing (every write, zero and trim is
        #: refused with EPERM) until a connection of the appliance takes the machine back (``_welcome``)
        self.quiesced = False
        self.on_record: Callable[[], None] = lambda: None
        self.captured_bytes = 0
        self.spilled_bytes = 0     # records written to the journal by the lazy journal's spills
        # The lazy journal. While the link is up, a new record is kept in memory only, encoded (header,
        # payload), first in ``_unsent``, then, once the shipper has sent it, in ``_sent`` until the process
        # server acknowledges it: a record acknowledged before anything asks for it costs no journal write at all.
        # Everything held only in memory is written to the journal (``spill``) before the capture makes a
        # durability promise (FLUSH, FUA, a bookmark), when the link goes down, and when it exceeds SHIP_MEMORY.
        # A crash loses at most records never flushed, whose extents the activity log still holds: they are
        # resynced (RESYNC.md §2), as DRBD does. Invariants: records in memory are newer than every journaled
        # one, and ``_sent`` + ``_unsent`` are in seq order.
        self._sent: collections.deque[tuple[Record, bytes, bytes | memoryview]] = collections.deque()
        self._unsent: collections.deque[tuple[Record, bytes, bytes | memoryview]] = collections.deque()
        self._mem_bytes = 0
        self._unsent_bytes = 0
        self._mem_on = False
        self.last_seq = self.journal.last_seq      # the newest record appended (journaled or in memory)
        self._al_retired: dict[int, float] = {}
        self.acked_seq = 0                         # the process server holds every record up to this durably
        #: the shipper's estimate of the seconds until ``n`` more bytes are acknowledged (inf: do not wait)
        self.ack_eta: Callable[[int], float] = lambda n: float("inf")
        self.flush_waiting = 0                     # flushes waiting for acknowledgements (the shipper hurries)
        self._ack_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._room_waiters: list[asyncio.Future[None]] = []
        self.congestion_waits = 0                  # writes that waited for room (see CONGESTION_BYTES)
        self.changes = 0                           # captured changes so far (a flush retires extents only if
        #                                            none came while it waited)

    def _reserve(self) -> None:
        self.reserved = self.seq + SEQ_BLOCK
        atomic_write(self._reserved_file, str(self.reserved).encode())

    def advance_to(self, seq: int) -> None:
        """Never hand out numbers at or below ``seq`` (the appliance's last seq, told at WELCOME)."""
        if seq > self.seq:
            self.seq = seq
            self._reserve()

    def next(self, kind: Kind, disk: int, offset: int = 0, length: int = 0, data: bytes | memoryview = b"") -> Record:
        self.seq += 1
        if self.seq > self.reserved:
            self._reserve()
        rec = Record(kind, disk, self.seq, time.time_ns(), offset, length, data)
        return rec

    def append(self, recs: list[Record]) -> None:
        if not recs:
            return
        items = [(r, *r.encode_parts()) for r in recs]
        self.last_seq = recs[-1].seq
        if self._mem_on:
            n = sum(len(head) + len(payload) for _, head, payload in items)
            self._unsent.extend(items)
            self._mem_bytes += n
            self._unsent_bytes += n
            if self._mem_bytes > SHIP_MEMORY:
                self.spill()   # the link is behind: memory stays bounded, the journal takes the backlog
        else:
            n = self._journal(items)
        self.captured_bytes += n
        self.on_record()

    def _journal(self, items: list[tuple[Record, bytes, bytes | memoryview]]) -> int:
        """Append encoded records to the journal with one writev (not synced); returns their bytes."""
        parts: list[bytes | memoryview] = []
        for _, head, payload in items:
            parts.append(head)
            if payload:
                parts.append(payload)
        self.journal.append([i[0] for i in items], parts)
        return sum(len(p) for p in parts)

    def spill(self, upto: int | None = None) -> None:
        """Write the records held only in memory (sent or not; with ``upto``, those up to that seq) to the
        journal, oldest first (not synced). Newer ones stay in memory: still newer than everything journaled."""
        if not self._sent and not self._unsent:
            return
        if upto is None or (self._unsent or self._sent)[-1][0].seq <= upto:
            items = [*self._sent, *self._unsent]
            self._sent.clear()
            self._unsent.clear()
            self._mem_bytes = self._unsent_bytes = 0
        else:
            items = []
            for q in (self._sent, self._unsent):
                while q and q[0][0].seq <= upto:
                    item = q.popleft()
                    items.append(item)
                    n = len(item[1]) + len(item[2])
                    self._mem_bytes -= n
                    if q is self._unsent:
                        self._unsent_bytes -= n
            if not items:
                return
        self.spilled_bytes += self._journal(items)

    def acked(self, seq: int) -> None:
        """The process server holds every record up to ``seq`` durably: memory need not keep them."""
        self.acked_seq = max(self.acked_seq, seq)
        if self._ack_waiters:
            keep = []
            for target, fut in self._ack_waiters:
                if target <= seq:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    keep.append((target, fut))
            self._ack_waiters = keep
        for q in (self._sent, self._unsent):
            while q and q[0][0].seq <= seq:
                _, head, payload = q.popleft()
                self._mem_bytes -= len(head) + len(payload)
                if q is self._unsent:
                    self._unsent_bytes -= len(head) + len(payload)
        if self._room_waiters and self._mem_bytes <= CONGESTION_BYTES:
            self._wake_room()

    def _wake_room(self) -> None:
        for fut in self._room_waiters:
            if not fut.done():
                fut.set_result(None)
        self._room_waiters.clear()

    async def room(self) -> None:
        """Before a change is captured: while the link is up and memory holds more than CONGESTION_BYTES, wait
        (at most CONGESTION_WAIT) for acknowledgements to make room. See CONGESTION_BYTES."""
        if not self._mem_on or self._mem_bytes <= CONGESTION_BYTES or not self.capturing:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._room_waiters.append(fut)
        self.congestion_waits += 1
        try:
            await asyncio.wait({fut}, timeout=CONGESTION_WAIT)
        finally:
            if not fut.done():
                fut.cancel()

    def ship_from_memory(self, on: bool) -> None:
        """Hold new records in memory for the shipper (on while the link is up). Off first journals what memory
        holds: after a reconnect the shipper resends from the journal, read back and verified."""
        if not on:
            self.spill()
            for _, fut in self._ack_waiters:   # all journaled now: their flushes go on to sync the journal
                if not fut.done():
                    fut.set_result(None)
            self._ack_waiters.clear()
            self._wake_room()                  # memory is empty: held writes go on (to the journal)
        self._mem_on = on

    def unsent_in_memory(self) -> tuple[int, int] | None:
        """(bytes, capture time of the oldest) of the records in memory not yet sent, if every unsent record is
        in memory and there is at least one; else None."""
        if not self._mem_on or not self._unsent or self._unsent[0][0].seq <= self.journal.last_seq:
            return None
        return self._unsent_bytes, self._unsent[0][0].ts_ns

    def take_unsent(self, after_seq: int, max_bytes: int) -> list[tuple[Record, bytes, bytes | memoryview]] | None:
        """Records with seq > after_seq, from memory, up to about ``max_bytes``, as (record, header, payload);
        they stay in memory until acknowledged. None when some of them are in the journal (read it first)."""
        if not self._mem_on or after_seq < self.journal.last_seq:
            return None
        unsent, sent = self._unsent, self._sent
        out = []
        size = 0
        while unsent and size < max_bytes:
            item = unsent.popleft()
            sent.append(item)
            n = len(item[1]) + len(item[2])
            self._unsent_bytes -= n
            if item[0].seq > after_seq:
                out.append(item)
                size += n
        return out

    def capture_change(self, kind: Kind, disk: int, offset: int, length: int, data: bytes | memoryview = b"") -> None:
        """Journal one change, or, while the journal is full, remember its blocks in the dirty map."""
        self.changes += 1
        if self.overflow:
            assert self.dirty is not None
            self.dirty.mark(disk, offset, length)
            return
        if kind == Kind.WRITE:
            recs = [self.next(Kind.WRITE, disk, offset + i, min(MAX_PAYLOAD, length - i), data[i:i + MAX_PAYLOAD])
                    for i in range(0, length, MAX_PAYLOAD)]
        else:
            recs = [self.next(kind, disk, offset, length)]
        self.append(recs)
        if self.journal.bytes > self.journal_limit and self.dirty is not None:
            self.overflow = True   # the link cannot keep up: no storm, no data dropped — a dirty map instead
            self.on_overflow()

    def overflow_blocked(self) -> bool:
        """Still too little room in the journal to go back to journaling every write."""
        return self.overflow and self.journal.bytes > self.journal_limit // 2

    async def flush(self, backend: CaptureBackend) -> None:
        """FLUSH or FUA on ``backend``: its backing store and every record captured so far become durable. The
        backing's fdatasync runs in a thread while acknowledgements keep arriving; then the flush waits (bounded,
        see FLUSH_ACK_WAIT) for the rest to be acknowledged and journals only what is still unacknowledged."""
        target, changes = self.last_seq, self.changes
        await asyncio.get_running_loop().run_in_executor(None, platform.fdatasync, backend.fd)
        await self._await_acked(target)
        # Extents may be retired only if no change came while we waited: the fdatasync may not cover it.
        self.sync(backend.index if self.changes == changes else None, upto=target)

    async def _await_acked(self, target: int) -> None:
        if not self._mem_on or self.acked_seq >= target or target <= self.journal.last_seq:
            return   # link down, or everything the flush covers is acknowledged or journaled already
        eta = self.ack_eta(self._mem_bytes)
        if eta > FLUSH_ACK_WAIT:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ack_waiters.append((target, fut))
        self.flush_waiting += 1
        self.on_record()   # wake the shipper: no lingering while a flush waits
        try:
            await asyncio.wait({fut}, timeout=min(FLUSH_ACK_WAIT, 0.01 + 2 * eta))
        finally:
            self.flush_waiting -= 1
            if not fut.done():
                fut.cancel()
                self._ack_waiters = [w for w in self._ack_waiters if w[1] is not fut]

    def sync(self, disk: int | None = None, upto: int | None = None) -> None:
        """Make every record so far (with ``upto``: up to that seq) durable (journal and dirty map); with
        ``disk``, its backing was just made durable too. Records still unacknowledged are journaled first (the
        lazy journal's promise)."""
        self.spill(upto)
        self.journal.sync()
        if self.dirty is not None and (self.overflow or self.dirty.any_dirty()):
            self.dirty.persist()
        if disk is not None:
            # Journal and this disk's backing are durable: its writes so far cannot be lost by a crash, so its
            # extents may be retired (allowed, not required: keeping them only widens a crash resync).
            now = time.monotonic()
            if (now - self._al_retired.get(disk, 0.0) >= AL_RETIRE_SECONDS
                    or len(self.al.active) > AL_HOT_EXTENTS):
                self._al_retired[disk] = now
                self.al.clear(disk)


class CaptureBackend:
    """An NBD backend over a file or block device that captures every change."""

    def __init__(self, machine: MachineCapture, index: int, name: str, path: Path) -> None:
        self.machine = machine
        self.index = index
        self.name = name
        self.path = path
        self.fd = os.open(path, os.O_RDWR)
        self.size = os.lseek(self.fd, 0, os.SEEK_END)
        self.read_only = False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _check(self, offset: int, length: int, err: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise NBDError(err, "request beyond the end of the disk")

    def _writable(self) -> None:
        # Checked after the last await before the change is made: nothing can slip past a quiesce (its bookmark
        # takes the next seq, so every change captured before it is below the final point and none comes after).
        if self.machine.quiesced:
            raise NBDError(errno.EPERM, "the machine is quiesced for a planned failover")

    async def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length, errno.EINVAL)
        return platform.pread(self.fd, length, offset)

    async def write(self, offset: int, data: memoryview, fua: bool) -> None:
        self._check(offset, len(data), errno.ENOSPC)
        await self.machine.room()
        self._writable()
        if self.machine.capturing:
            self.machine.al.touch(self.index, offset, len(data))
        n = platform.pwrite(self.fd, data, offset)
        if n != len(data):
            raise NBDError(errno.EIO, "short write to the backing disk")
        if self.machine.capturing and len(data):
            self.machine.capture_change(Kind.WRITE, self.index, offset, len(data), data)
        if fua:
            await self.machine.flush(self)

    async def write_zeroes(self, offset: int, length: int, fua: bool) -> None:
        self._check(offset, length, errno.ENOSPC)
        self._writable()
        if self.machine.capturing and length:
            self.machine.al.touch(self.index, offset, length)
        self._zero(offset, length)
        if self.machine.capturing and length:
            self.machine.capture_change(Kind.ZERO, self.index, offset, length)
        if fua:
            await self.machine.flush(self)

    async def trim(self, offset: int, length: int) -> None:
        self._check(offset, length, errno.ENOSPC)
        self._writable()
        # Lifeboat's trim punches a hole, so the range reads back as zeros: replicated as such, byte-exact.
        if self.machine.capturing and length:
            self.machine.al.touch(self.index, offset, length)
        self._zero(offset, length)
        if self.machine.capturing and length:
            self.machine.capture_change(Kind.TRIM, self.index, offset, length)

    async def flush(self) -> None:
        await self.machine.flush(self)

    def _zero(self, offset: int, length: int) -> None:
        if length and not punch_hole(self.fd, offset, length):
            chunk = bytes(min(length, 1 << 20))
            pos = offset
            while pos < offset + length:
                n = min(len(chunk), offset + length - pos)
                platform.pwrite(self.fd, chunk[:n], pos)
                pos += n

    def read_block(self, offset: int, length: int) -> Record:
        """Resync: read a block now and give it the next seq in the same step (like initial replication)."""
        data = platform.pread(self.fd, length, offset)
        return self.machine.next(Kind.SYNC, self.index, offset, len(data), data)

    def read_sync_chunk(self, offset: int, length: int) -> Record | None:
        """Initial replication: read a chunk and give it the next seq in the same step (see module doc).

        All-zero chunks return None: the replica starts as zeros, so they cost nothing.
        """
        data = platform.pread(self.fd, length, offset)
        if data == (_ZEROS if len(data) == len(_ZEROS) else bytes(len(data))):
            return None
        return self.machine.next(Kind.SYNC, self.index, offset, len(data), data)
