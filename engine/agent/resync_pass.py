"""The agent's side of a resync: checksum the dirty blocks, let the process server say which differ, send those.

One chunk at a time (at most CHUNK_BLOCKS blocks of one disk):

1. *hash*: read and checksum the chunk's blocks in one event-loop step and note the current seq ``S``; the
   source's blocks are then exactly as the stream up to ``S`` plus whatever the replica is missing.
2. send RESYNC_HASHES; the process server compares with the replica at ``S`` and answers RESYNC_DIFF.
3. *send*: the differing blocks are read again and sent as SYNC records with fresh seqs (always correct: what is
   read now is the source now).
4. once the process server acknowledges the chunk's last seq, its blocks leave the dirty map for good.

A dropped link puts every unfinished chunk back in the dirty map. Blocks written during the pass are journaled
(or, while the journal is full, marked dirty again), so the pass never misses a write.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import xxhash

from .. import platform
from ..records import Kind, Record
from ..wire import DIFF_HEAD, RESYNC_HEAD
from .dirty_map import BLOCK

if TYPE_CHECKING:
    from ..home import AgentHome
    from .capture import CaptureBackend, MachineCapture


class AgentSide(Protocol):
    """What a resync pass uses of the agent that runs it (the agent passes itself; nothing here imports it)."""
    capture: MachineCapture
    backends: list[CaptureBackend]
    cfg: dict[str, Any]
    home: AgentHome
    sent_seq: int
    acked_seq: int

CHUNK_BLOCKS = 2048          # 128 MiB of source per checksum round trip
MAX_COMPARES = 2             # checksum round trips in flight (hash the next chunk while one is compared)
READ_RUN = 8 * 1024 * 1024   # contiguous blocks are read in runs of up to this


@dataclass
class Chunk:
    id: int
    disk: int
    blocks: list[int]
    seq: int
    state: str = "compare"                          # compare → send → ack
    to_send: deque[int] = field(default_factory=deque)
    last_seq: int = 0


class ResyncPass:
    def __init__(self, agent: AgentSide) -> None:
        self.agent = agent
        self.chunks: dict[int, Chunk] = {}
        self.next_id = 1
        self.go = False                 # allowed to run (overflow, or the appliance said so)
        self.started_at = 0.0
        self.sent_blocks = 0
        self.compared_blocks = 0
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="resync-hash")

    @property
    def dirty(self):  # type: ignore[no-untyped-def]
        return self.agent.capture.dirty

    def pending(self) -> bool:
        return self.dirty.any_dirty() or self.dirty.any_inflight()

    def status(self) -> dict:
        d = self.dirty
        dirty, inflight = d.dirty_count(), sum(len(c.blocks) for c in self.chunks.values())
        total = max(d.total, dirty + inflight)
        eta = None
        if self.go and self.started_at and total:
            done = total - dirty - inflight
            rate = done / max(time.monotonic() - self.started_at, 1e-3)
            eta = round((dirty + inflight) / rate, 1) if rate > 0 else None
        return {"dirty": dirty, "inflight": inflight, "total": total, "reason": d.reason,
                "running": bool(self.go and (dirty or inflight)), "eta_seconds": eta}

    def request(self, disks: list[int] | None, ranges: list[list[int]], reason: str) -> None:
        """The appliance (or a crash, or a resize) says these regions may differ."""
        d = self.dirty
        for disk in disks or []:
            d.mark_all(disk)
        for disk, off, length in ranges:
            if disk in d.sizes:
                d.mark(int(disk), int(off), int(length))
        d.reason = d.reason or reason
        d.total = d.count()
        d.persist()

    def begin(self, reason: str) -> None:
        """Journal RESYNC_START once: points stop until RESYNC_DONE."""
        a = self.agent
        if not a.cfg.get("resync_open"):
            payload = json.dumps({"reason": reason, "id": os.urandom(4).hex()}).encode()
            a.capture.append([a.capture.next(Kind.RESYNC_START, 0, 0, len(payload), payload)])
            a.cfg["resync_open"] = True
            a.home.save_config(a.cfg)
        if not self.started_at:
            self.started_at = time.monotonic()

    def link_lost(self) -> None:
        self.chunks.clear()
        self.dirty.requeue_inflight()

    # driven by the send loop -----------------------------------------------------------------------------
    async def next_frame(self) -> tuple[str, bytes | list[Record]] | None:
        """What to send next for the resync: ("records", [...]) or ("hashes", body), or None."""
        a = self.agent
        for c in self.chunks.values():
            if c.state == "send":
                return "records", self._read_blocks(c)
        if sum(c.state == "compare" for c in self.chunks.values()) >= MAX_COMPARES:
            return None
        if self.dirty.any_dirty():
            self.begin(self.dirty.reason or "resync")
            taken = self.dirty.take_chunk(CHUNK_BLOCKS)
            if taken is None:
                return None
            disk, blocks = taken
            # The seq is taken before reading: a write racing the checksum either is seen by it (then the
            # block differs from the replica at that seq and is sent again) or comes later in the stream.
            # ``sent_seq`` (not ``capture.seq``, which may be a reserved number no record carries): the journal
            # is drained, so every record up to it is on its way and the process server can wait for it.
            c = Chunk(self.next_id, disk, blocks, a.sent_seq)
            self.next_id += 1
            self.chunks[c.id] = c
            loop = asyncio.get_running_loop()
            half = (len(blocks) + 1) // 2
            parts = await asyncio.gather(*(loop.run_in_executor(self.pool, self._hash_blocks, disk, part)
                                           for part in (blocks[:half], blocks[half:]) if part))
            if self.chunks.get(c.id) is not c:   # the link dropped meanwhile
                return None
            return "hashes", (RESYNC_HEAD.pack(c.disk, BLOCK, c.seq, c.id, len(blocks))
                              + struct.pack(f"<{len(blocks)}Q", *blocks) + b"".join(parts))
        if not self.chunks and a.cfg.get("resync_open") and not a.capture.overflow_blocked():
            self._finish()
        return None

    def _hash_blocks(self, disk: int, blocks: list[int]) -> bytes:
        """Checksums of the source's blocks (a worker thread: reads and xxh3 release the GIL)."""
        backend = self.agent.backends[disk]
        first, last = blocks[0], blocks[-1]
        if last - first + 1 == len(blocks):
            # A contiguous run (a full-disk compare): hash straight from the page cache, no copies.
            start = first * BLOCK
            length = min((last + 1) * BLOCK, backend.size) - start
            with platform.map_readonly(backend.fd, length, start) as m:
                mv = memoryview(m)
                try:
                    return b"".join(xxhash.xxh3_128_digest(mv[k:k + BLOCK]) for k in range(0, length, BLOCK))
                finally:
                    mv.release()
        hashes = bytearray()
        i = 0
        while i < len(blocks):
            j = i
            while j + 1 < len(blocks) and blocks[j + 1] == blocks[j] + 1 and (j + 2 - i) * BLOCK <= READ_RUN:
                j += 1
            start = blocks[i] * BLOCK
            data = memoryview(platform.pread(backend.fd, min((j - i + 1) * BLOCK, backend.size - start), start))
            for k in range(j - i + 1):
                hashes += xxhash.xxh3_128_digest(data[k * BLOCK:(k + 1) * BLOCK])
            i = j + 1
        return bytes(hashes)

    def on_diff(self, body: bytes) -> None:
        cid, count = DIFF_HEAD.unpack_from(body)
        c = self.chunks.get(cid)
        if c is None or c.state != "compare":
            return
        self.compared_blocks += len(c.blocks)
        differ = struct.unpack_from(f"<{count}Q", body, DIFF_HEAD.size)
        mine = set(c.blocks)
        c.to_send = deque(b for b in differ if b in mine)
        if c.to_send:
            c.state = "send"
        else:
            c.state, c.last_seq = "ack", c.seq
            self.on_ack(self.agent.acked_seq)

    def _read_blocks(self, c: Chunk) -> list[Record]:
        backend = self.agent.backends[c.disk]
        out: list[Record] = []
        size = 0
        while c.to_send and size < 4 * 1024 * 1024:
            b = c.to_send.popleft()
            off = b * BLOCK
            n = min(BLOCK, backend.size - off)
            if n <= 0:
                continue
            out.append(backend.read_block(off, n))
            size += n
        self.sent_blocks += len(out)
        if not c.to_send:
            c.state = "ack"
            c.last_seq = out[-1].seq if out else c.seq
        return out

    def on_ack(self, acked: int) -> None:
        for cid in [cid for cid, c in self.chunks.items() if c.state == "ack" and c.last_seq <= acked]:
            c = self.chunks.pop(cid)
            self.dirty.done(c.disk, c.blocks)

    def _finish(self) -> None:
        a = self.agent
        payload = json.dumps({"id": os.urandom(4).hex()}).encode()
        a.capture.overflow = False      # from here on every write is journaled again
        a.capture.append([a.capture.next(Kind.RESYNC_DONE, 0, 0, len(payload), payload)])
        a.cfg["resync_open"] = False
        a.home.save_config(a.cfg)
        self.dirty.reason = None
        self.dirty.total = 0
        self.dirty.persist()
        self.go = False
        self.started_at = 0.0
