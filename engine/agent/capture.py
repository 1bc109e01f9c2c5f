"""Capture: the agent's NBD export sits in front of the backing file or device, like DRBD's device in front of its
backing disk. Every write, zeroing and trim is applied to the backing store and then journaled, in order, with
a machine-wide sequence number, before the client gets its reply.

Ordering is what makes recovery points exact: the backing write and the journal append happen in one event-loop
step (no await between them), and so do initial-replication reads and their sequence numbers, so the stream the
appliance receives replays to exactly the disk's contents at every sequence number.
"""

from __future__ import annotations

import collections
import errno
import os
import time
from pathlib import Path
from typing import Callable

from ..fileio import punch_hole
from ..home import atomic_write
from ..nbd.server import NBDError
from ..records import MAX_PAYLOAD, Kind, Record
from ..segment_log import SegmentLog
from .resync import ActivityLog, DirtyMap


SEQ_BLOCK = 1 << 20
#: Records held in memory only (not journaled, not yet acknowledged) at most, in bytes of header + payload; past
#: this they are written to the journal (MachineCapture.spill).
SHIP_MEMORY = 64 << 20
#: Activity-log extents stay active across flushes (DRBD's hot extents), so a flushing guest does not pay an
#: fdatasync per extent per flush. A flush retires a disk's extents only once this long has passed since it last
#: did, or when more than AL_HOT_EXTENTS are active: a crash then compares at most a few more 64 MiB extents.
AL_RETIRE_SECONDS = 10.0
AL_HOT_EXTENTS = 64
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

    def spill(self) -> None:
        """Write every record held only in memory (sent or not) to the journal, oldest first (not synced)."""
        if not self._sent and not self._unsent:
            return
        self.spilled_bytes += self._journal([*self._sent, *self._unsent])
        self._sent.clear()
        self._unsent.clear()
        self._mem_bytes = self._unsent_bytes = 0

    def acked(self, seq: int) -> None:
        """The process server holds every record up to ``seq`` durably: memory need not keep them."""
        for q in (self._sent, self._unsent):
            while q and q[0][0].seq <= seq:
                _, head, payload = q.popleft()
                self._mem_bytes -= len(head) + len(payload)
                if q is self._unsent:
                    self._unsent_bytes -= len(head) + len(payload)

    def ship_from_memory(self, on: bool) -> None:
        """Hold new records in memory for the shipper (on while the link is up). Off first journals what memory
        holds: after a reconnect the shipper resends from the journal, read back and verified."""
        if not on:
            self.spill()
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

    def sync(self, disk: int | None = None) -> None:
        """Make every record so far durable (journal and dirty map); with ``disk``, its backing was just made
        durable too. Records still unacknowledged are journaled first (the lazy journal's promise)."""
        self.spill()
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

    async def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length, errno.EINVAL)
        return os.pread(self.fd, length, offset)

    async def write(self, offset: int, data: memoryview, fua: bool) -> None:
        self._check(offset, len(data), errno.ENOSPC)
        if self.machine.capturing:
            self.machine.al.touch(self.index, offset, len(data))
        n = os.pwrite(self.fd, data, offset)
        if n != len(data):
            raise NBDError(errno.EIO, "short write to the backing disk")
        if self.machine.capturing and len(data):
            self.machine.capture_change(Kind.WRITE, self.index, offset, len(data), data)
        if fua:
            self._durable()

    async def write_zeroes(self, offset: int, length: int, fua: bool) -> None:
        self._check(offset, length, errno.ENOSPC)
        if self.machine.capturing and length:
            self.machine.al.touch(self.index, offset, length)
        self._zero(offset, length)
        if self.machine.capturing and length:
            self.machine.capture_change(Kind.ZERO, self.index, offset, length)
        if fua:
            self._durable()

    async def trim(self, offset: int, length: int) -> None:
        self._check(offset, length, errno.ENOSPC)
        # Lifeboat's trim punches a hole, so the range reads back as zeros: replicated as such, byte-exact.
        if self.machine.capturing and length:
            self.machine.al.touch(self.index, offset, length)
        self._zero(offset, length)
        if self.machine.capturing and length:
            self.machine.capture_change(Kind.TRIM, self.index, offset, length)

    async def flush(self) -> None:
        self._durable()

    def _zero(self, offset: int, length: int) -> None:
        if length and not punch_hole(self.fd, offset, length):
            chunk = bytes(min(length, 1 << 20))
            pos = offset
            while pos < offset + length:
                n = min(len(chunk), offset + length - pos)
                os.pwrite(self.fd, chunk[:n], pos)
                pos += n

    def _durable(self) -> None:
        os.fdatasync(self.fd)
        self.machine.sync(self.index)

    def read_block(self, offset: int, length: int) -> Record:
        """Resync: read a block now and give it the next seq in the same step (like initial replication)."""
        data = os.pread(self.fd, length, offset)
        return self.machine.next(Kind.SYNC, self.index, offset, len(data), data)

    def read_sync_chunk(self, offset: int, length: int) -> Record | None:
        """Initial replication: read a chunk and give it the next seq in the same step (see module doc).

        All-zero chunks return None: the replica starts as zeros, so they cost nothing.
        """
        data = os.pread(self.fd, length, offset)
        if data == (_ZEROS if len(data) == len(_ZEROS) else bytes(len(data))):
            return None
        return self.machine.next(Kind.SYNC, self.index, offset, len(data), data)
