"""The reverse direction of failback (engine/recovery/failback.py): replicate a recovered VM's disks back to a
master target, block by block, sending only what differs.

:class:`Reverse` runs the loop for one machine: every block starts dirty (the *seed*: a checksum compare of the
whole disk, xxh3_128 per block on both sides); after it, what the recovered VM writes (its :class:`ChangeMap`) is
compared and sent, near-continuously. Batches are acknowledged only once the target made them durable, so a kill of
either side or a cut link loses nothing (what was in flight is compared again on resume). The targets: the original
machine's agent over the master-target frames (:class:`AgentTarget`) or new disks written here (:class:`LocalTarget`).
Blocks the VM never wrote take their checksum from the vault's block-hash index (:class:`PointHashes`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import xxhash

from ..appliance.master_target import (EXTENT, HASHES, HASHES_REQ, WRITE_HEAD, MasterTarget, encode_write)
from ..errors import LifeboatError
from ..records import BLOCK
from ..waits import wait_event
from ..wire import Frame, parse_json, write_frame, write_json
from ..appliance.blockhash import UNKNOWN
from .change_map import ChangeMap
from .overlay import OverlayBackend

if TYPE_CHECKING:
    from ..appliance.process_server import AgentConnection
    from ..appliance.pipeline import MachineRuntime

log = logging.getLogger(__name__)


#: a machine's failback states (``FailbackService``; :class:`Reverse` runs while reprotecting and reprotected)
REPROTECTING, REPROTECTED, FAILING_BACK, FAILED_BACK = "reprotecting", "reprotected", "failing-back", "failed-back"
#: Blocks per checksum round trip (256 MiB of disk): fewer, fuller MT_WRITE batches than 128 MiB (each batch costs
#: the target two fdatasyncs), and still answered well within the link's 30 s silence limit by a disk reading
#: ≥ 10 MB/s (the master target hashes a chunk in one go).
CHUNK_BLOCKS = 4096
#: Data per MT_WRITE batch.
BATCH_BYTES = 4 << 20
#: Source bytes read (and hashed) at once.
READ_RUN = 8 << 20
#: The reverse loop's progress (the change map's clears, the record) is made durable at most this often.
SAVE_EVERY = 1.0
#: A target request unanswered this long means the link is gone.
TARGET_TIMEOUT = 60.0


class TargetLost(ConnectionError):
    """The master target's link dropped (or it stopped answering): resume when it is back."""


class Source(Protocol):
    """A recovered disk as Lifeboat serves it (OverlayBackend, ImageBackend)."""
    size: int
    on_write: Callable[[int, int], None] | None
    on_flush: Callable[[], None] | None

    async def read(self, offset: int, length: int) -> bytes: ...


class Target(Protocol):
    kind: str
    #: source disk index → target disk size
    sizes: dict[int, int]

    async def open(self, session: str) -> int: ...

    async def hashes(self, disk: int, blocks: list[int]) -> bytes: ...

    async def write(self, batch: int, disk: int, extents: list[tuple[int, bytes]]) -> None: ...

    async def finish(self) -> None: ...

    def close(self) -> None: ...


class LocalTarget:
    """New disks at an alternate location, written by the appliance itself (a :class:`MasterTarget` in-process)."""
    kind = "disks"

    def __init__(self, mt: MasterTarget) -> None:
        self.mt = mt
        self.sizes = dict(mt.sizes)

    async def open(self, session: str) -> int:
        return await asyncio.to_thread(self.mt.open, session)

    async def hashes(self, disk: int, blocks: list[int]) -> bytes:
        return await asyncio.to_thread(self.mt.hashes, disk, blocks)

    async def write(self, batch: int, disk: int, extents: list[tuple[int, bytes]]) -> None:
        await asyncio.to_thread(self.mt.apply, batch, disk, list(extents))

    async def finish(self) -> None:
        await asyncio.to_thread(self.mt.flush)

    def close(self) -> None:
        self.mt.close()


class AgentTarget:
    """The original machine's agent as master target, over its data-port link (frames MT_*, FORMATS.md §3.2)."""
    kind = "original"

    def __init__(self, conn: AgentConnection, index: dict[int, int], sizes: dict[int, int]) -> None:
        self.conn = conn
        self.index = index          # source disk index → the agent's disk index
        self.sizes = sizes          # source disk index → target size
        self._futures: dict[tuple[str, Any], asyncio.Future[Any]] = {}
        self._next = 1
        self.lost_error: BaseException | None = None

    def _expect(self, key: tuple[str, Any]) -> asyncio.Future[Any]:
        if self.lost_error is not None:
            raise TargetLost(str(self.lost_error))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futures[key] = fut
        return fut

    async def _await(self, key: tuple[str, Any], fut: asyncio.Future[Any]) -> Any:
        try:
            await self.conn.writer.drain()
            return await asyncio.wait_for(fut, TARGET_TIMEOUT)
        except TimeoutError:
            raise TargetLost("the original site's agent stopped answering") from None
        except (ConnectionError, OSError) as exc:
            raise TargetLost(str(exc)) from None
        finally:
            self._futures.pop(key, None)

    def on_frame(self, kind: Frame, body: bytes) -> None:
        if kind == Frame.MT_HASHES:
            cid, count = HASHES.unpack_from(body)
            key: tuple[str, Any] = ("hashes", cid)
            value: Any = bytes(memoryview(body)[HASHES.size:HASHES.size + 16 * count])
        else:
            msg = parse_json(body)
            if "open" in msg:
                key, value = ("open", msg["open"]), int(msg.get("acked", 0))
            elif "done" in msg:
                key, value = ("done", msg["done"]), int(msg.get("acked", 0))
            else:
                key, value = ("batch", int(msg.get("batch", -1))), int(msg.get("acked", 0))
        fut = self._futures.get(key)
        if fut is not None and not fut.done():
            fut.set_result(value)

    def lost(self, exc: BaseException) -> None:
        self.lost_error = exc
        for fut in self._futures.values():
            if not fut.done():
                fut.set_exception(TargetLost(str(exc)))

    async def open(self, session: str) -> int:
        key = ("open", session)
        fut = self._futures.get(key) or self._expect(key)
        return int(await self._await(key, fut))

    async def hashes(self, disk: int, blocks: list[int]) -> bytes:
        cid = self._next
        self._next += 1
        key = ("hashes", cid)
        fut = self._expect(key)
        body = HASHES_REQ.pack(cid, self.index[disk], len(blocks)) + b"".join(b.to_bytes(8, "little") for b in blocks)
        write_frame(self.conn.writer, Frame.MT_HASHES_REQ, body)
        return bytes(await self._await(key, fut))

    async def write(self, batch: int, disk: int, extents: list[tuple[int, bytes]]) -> None:
        key = ("batch", batch)
        fut = self._expect(key)
        parts = encode_write(batch, self.index[disk], extents)
        write_frame(self.conn.writer, Frame.MT_WRITE, b"".join(parts))
        await self._await(key, fut)

    async def finish(self) -> None:
        key = ("done", self.session)
        fut = self._expect(key)
        write_json(self.conn.writer, Frame.CONTROL, {"reverse_done": True})
        await self._await(key, fut)
        self.conn.close()   # the agent waits for this before it reconnects as a plain agent

    session = ""

    def close(self) -> None:
        self.conn.close()


class KnownHashes(Protocol):
    def known(self, blocks: list[int]) -> list[bytes | None]: ...


class PointHashes:
    """Checksums of a booted failover's disk without reading it, where that is exact: a block the recovered VM never
    wrote (nothing of it in the overlay's scratch file) reads as the vault view at the failover point ``seq``; if
    the last record that touched the block is at or before ``seq``, the process server's block-hash index of the
    vault's newest state (engine/appliance/blockhash.py) holds that content's xxh3_128. Anything else (written by the
    VM, touched after the point, unknown to the index, the index closed or behind ``seq``) is None: read it."""

    def __init__(self, overlay: OverlayBackend, runtime: MachineRuntime, disk: int, seq: int) -> None:
        self.overlay = overlay
        self.runtime = runtime
        self.disk = disk
        self.seq = seq

    def known(self, blocks: list[int]) -> list[bytes | None]:
        rt = self.runtime
        idx = rt.hashes.get(self.disk)
        if idx is None or rt.hashes_upto < self.seq or idx.size != self.overlay.size:
            return [None] * len(blocks)
        out: list[bytes | None] = []
        for b in blocks:
            if b >= idx.nblocks or self.overlay.written(b * BLOCK, BLOCK):
                out.append(None)
                continue
            h, mseq = idx.get(b)
            out.append(None if mseq & UNKNOWN or mseq > self.seq else h)
        return out


class Reverse:
    """One machine's reverse replication: its source disks, change map, target and the loop between them. ``st`` is
    the machine's persisted failback record (``save`` writes it)."""

    def __init__(self, machine: str, folder: Path, names: list[str], disks: list[Source], st: dict[str, Any],
                 save: Callable[[], None], known: list[KnownHashes | None] | None = None) -> None:
        self.machine = machine
        self.known = known or [None] * len(disks)
        self.folder = folder
        self.names = names
        self.disks = disks
        self.st = st
        self.save = save
        self.changes = ChangeMap(folder / "changes", {i: d.size for i, d in enumerate(disks)})
        self.target: Target | None = None
        self.target_ready = asyncio.Event()
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()      # nothing dirty, nothing in flight, the target has it all
        self.task: asyncio.Task[None] | None = None
        self.releasing = False           # failback's last step: the target is being released, not taken again
        self._stopping = False
        self.rate_t0 = time.monotonic()
        self.rate_done = 0
        self._saved_at = 0.0
        for i, d in enumerate(disks):
            d.on_write = self._on_write_of(i)
            d.on_flush = self.changes.flushed

    def _on_write_of(self, disk: int) -> Callable[[int, int], None]:
        def on_write(offset: int, length: int) -> None:
            self.changes.before_write(disk, offset, length)
            if self.idle.is_set() or not self.st.get("dirty_since"):
                self.st["dirty_since"] = time.time()
            self.idle.clear()
            self.wake.set()
        return on_write

    def detach_source(self) -> None:
        for d in self.disks:
            d.on_write = None
            d.on_flush = None

    # status ----------------------------------------------------------------------------------------------------
    def pending_blocks(self) -> int:
        return self.changes.dirty.count()

    def view(self) -> dict[str, Any]:
        pending = self.pending_blocks()
        total = max(int(self.st.get("seed_blocks") or 0), 1)
        seeded = bool(self.st.get("seeded"))
        progress = 1.0 if not pending else round(max(0.0, 1 - pending / total), 4) if not seeded else 0.99
        rate = self.rate_done / max(time.monotonic() - self.rate_t0, 1e-3)
        eta = 0.0 if not pending else (round(pending / rate, 1) if rate > 0 else None)
        rpo = 0.0 if not pending and self.idle.is_set() else max(0.0, time.time() - float(self.st.get("dirty_since")
                                                                                         or time.time()))
        return {"state": self.st["state"], "direction": "reverse", "target": self.st["target"],
                "target_connected": self.target is not None, "seeded": seeded, "progress": progress,
                "eta_seconds": eta, "rpo_seconds": round(rpo, 3), "blocks_pending": pending,
                "bytes_compared": int(self.st.get("bytes_compared", 0)), "bytes_sent": int(self.st.get("bytes_sent", 0)),
                "data_bytes_sent": int(self.st.get("data_bytes_sent", 0)), "acked_batch": int(self.st.get("acked", 0)),
                "blocks_read": int(self.st.get("blocks_read", 0)), "seed_started_at": self.st.get("seed_started_at"),
                "seeded_at": self.st.get("seeded_at"), "last_idle_at": self.st.get("last_idle_at"),
                "error": self.st.get("error")}

    # the loop ----------------------------------------------------------------------------------------------------
    def attach(self, target: Target) -> None:
        if self.target is not None and self.target is not target:
            self.target.close()
        self.target = target
        if not self.st.get("seeded") and not self.st.get("seed_started_at"):
            self.st["seed_started_at"] = time.time()   # the seed's transfer starts with its first target
        self.target_ready.set()
        self.wake.set()

    def detach(self, target: Target) -> None:
        if self.target is target:
            self.target = None
            self.target_ready.clear()
            self.idle.clear()
            self.changes.dirty.requeue_inflight()

    def start(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name=f"reverse-{self.machine}")

    async def stop(self) -> None:
        self._stopping = True
        self.wake.set()
        self.target_ready.set()
        if self.task is not None:
            # (a cancel can be swallowed by a wait_for whose inner future completed in the same turn on 3.11:
            # the flag ends the loop all the same)
            for _ in range(50):
                if self.task.done():
                    break
                self.task.cancel()
                await asyncio.wait({self.task}, timeout=0.2)
            self.task = None
        self._stopping = False
        self.target_ready.clear()
        if self.target is not None:
            self.target_ready.set()
        self.changes.dirty.requeue_inflight()
        self.changes.dirty.persist()

    async def _run(self) -> None:
        while not self._stopping:
            await self.target_ready.wait()
            if self._stopping:
                return
            target = self.target
            if target is None:
                continue
            try:
                await self._session(target)
            except asyncio.CancelledError:
                raise
            except TargetLost as exc:
                log.info("reverse replication of %s: target lost (%s); resuming when it is back", self.machine, exc)
                self.detach(target)
                # The session's blocks in flight are compared again, also when the target came back on a new link
                # before this one's loss showed (an agent SIGKILLed or its host powered off: no FIN); attaching the
                # new link closed this one, and detach() leaves the new one alone.
                self.changes.dirty.requeue_inflight()
            except LifeboatError as exc:
                self.st["error"] = exc.to_dict()
                self.save()
                self.changes.dirty.requeue_inflight()
                await asyncio.sleep(1.0)
            except (OSError, ValueError) as exc:
                self.st["error"] = {"code": "LB_STORAGE", "message": str(exc), "advice": "See the appliance log."}
                self.save()
                log.exception("reverse replication of %s", self.machine)
                self.changes.dirty.requeue_inflight()
                await asyncio.sleep(1.0)

    async def _session(self, target: Target) -> None:
        acked = await target.open(self.st["session"])
        if acked < int(self.st.get("acked", 0)):
            # the target lost batches it had acknowledged (its disks were replaced or restored): compare all
            log.warning("reverse target of %s is behind (%d < %d): full compare", self.machine, acked,
                        self.st.get("acked"))
            self.changes.mark_all()
        self.st["acked"] = max(acked, int(self.st.get("acked", 0)))
        # batch ids only grow, also after a kill of this side that lost its last counters (saved per chunk)
        self.st["sent"] = max(int(self.st.get("sent", 0)), self.st["acked"])
        self.st["error"] = None
        while not self._stopping:
            taken = self.changes.dirty.take_chunk(CHUNK_BLOCKS)
            if taken is None:
                if not self.changes.dirty.any_inflight():
                    self._became_idle()
                self.wake.clear()
                await wait_event(self.wake, 0.5)
                continue
            disk, blocks = taken
            await self._chunk(target, disk, blocks)
            self.changes.dirty.done(disk, blocks)
            self.rate_done += len(blocks)
            # Persisting clears is an optimisation, never needed for safety (a kill before it compares those blocks
            # again: they compare equal): at most once a second, and when idle, not four fsyncs per chunk.
            if time.monotonic() - self._saved_at >= SAVE_EVERY:
                self._persist()

    def _persist(self) -> None:
        self.changes.dirty.persist()
        self.save()
        self._saved_at = time.monotonic()

    def _became_idle(self) -> None:
        if not self.idle.is_set():
            self.idle.set()
            self.st["dirty_since"] = None
            self.st["last_idle_at"] = time.time()
            if not self.st.get("seeded"):
                self.st["seeded"] = True
                self.st["seeded_at"] = time.time()
                if self.st.get("state") == REPROTECTING:   # (also when a restart resumed the seed without its job)
                    self.st["state"] = REPROTECTED
            self._persist()
        self.rate_t0, self.rate_done = time.monotonic(), 0

    async def _source_hashes(self, disk: int, blocks: list[int]) -> bytes:
        """xxh3_128 of ``blocks`` of a recovered disk: taken from the vault's block-hash index where the block is
        known unchanged since the point (:class:`PointHashes`), read and hashed otherwise."""
        kh = self.known[disk]
        known = kh.known(blocks) if kh is not None else [None] * len(blocks)
        need = [b for b, h in zip(blocks, known) if h is None]
        self.st["blocks_read"] = int(self.st.get("blocks_read", 0)) + len(need)
        if len(need) == len(blocks):
            return await self._read_hashes(disk, blocks)
        read = await self._read_hashes(disk, need) if need else b""
        out = bytearray()
        k = 0
        for h in known:
            if h is None:
                out += read[16 * k:16 * k + 16]
                k += 1
            else:
                out += h
        return bytes(out)

    async def _read_hashes(self, disk: int, blocks: list[int]) -> bytes:
        src = self.disks[disk]
        out = bytearray()
        i = 0
        while i < len(blocks):
            j = i
            while j + 1 < len(blocks) and blocks[j + 1] == blocks[j] + 1 and (j + 2 - i) * BLOCK <= READ_RUN:
                j += 1
            start = blocks[i] * BLOCK
            n = min((blocks[j] + 1) * BLOCK, src.size) - start
            data = await src.read(start, n)
            out += await asyncio.to_thread(_hash_run, data)
            i = j + 1
        return bytes(out)

    async def _chunk(self, target: Target, disk: int, blocks: list[int]) -> None:
        src_h, dst_h = await asyncio.gather(self._source_hashes(disk, blocks), target.hashes(disk, blocks))
        size = self.disks[disk].size
        self.st["bytes_compared"] = int(self.st.get("bytes_compared", 0)) + sum(
            min(BLOCK, size - b * BLOCK) for b in blocks)
        self.st["bytes_sent"] = int(self.st.get("bytes_sent", 0)) + HASHES_REQ.size + 8 * len(blocks) + \
            HASHES.size + 16 * len(blocks) + 24
        differ = [b for k, b in enumerate(blocks) if src_h[16 * k:16 * k + 16] != dst_h[16 * k:16 * k + 16]]
        src = self.disks[disk]
        i = 0
        while i < len(differ):
            extents: list[tuple[int, bytes]] = []
            nbytes = 0
            while i < len(differ) and nbytes < BATCH_BYTES:
                j = i
                while j + 1 < len(differ) and differ[j + 1] == differ[j] + 1 and (j + 2 - i) * BLOCK <= BATCH_BYTES \
                        and nbytes + (j + 2 - i) * BLOCK <= BATCH_BYTES:
                    j += 1
                start = differ[i] * BLOCK
                n = min((differ[j] + 1) * BLOCK, size) - start
                extents.append((start, await src.read(start, n)))
                nbytes += n
                i = j + 1
            batch = int(self.st.get("sent", 0)) + 1
            self.st["sent"] = batch
            await target.write(batch, disk, extents)
            self.st["acked"] = batch
            self.st["data_bytes_sent"] = int(self.st.get("data_bytes_sent", 0)) + nbytes
            self.st["bytes_sent"] = int(self.st.get("bytes_sent", 0)) + nbytes + WRITE_HEAD.size + \
                EXTENT.size * len(extents) + 12 + 24

    async def drained(self, progress: Callable[[float, str], None] | None = None,
                      timeout: float | None = None) -> None:
        """Until nothing is dirty or in flight and the target acknowledged it all (RPO 0)."""
        start = self.pending_blocks() or 1
        end = None if timeout is None else time.monotonic() + timeout
        self.wake.set()
        while True:
            if self.idle.is_set() and not self.pending_blocks():
                return
            if self.task is None or self.task.done():
                raise LifeboatError("reverse replication is not running", code="LB_REVERSE_STOPPED")
            if end is not None and time.monotonic() > end:
                raise TimeoutError("the final sync did not finish in time")
            if progress is not None:
                progress(max(0.0, 1 - self.pending_blocks() / start), f"{self.pending_blocks()} blocks to send")
            await asyncio.sleep(0.1)


def _hash_run(data: bytes) -> bytes:
    mv = memoryview(data)
    return b"".join(xxhash.xxh3_128_digest(mv[k:k + BLOCK]) for k in range(0, len(mv), BLOCK))

