"""Process-server role: receives replication data from agents on the data port (default 9443, mutual TLS).

Each batch is validated, appended to the machine's durable cache and fsynced before the ACK goes back, so an
acknowledged record survives a crash of the appliance. Bad input gets an ERROR frame and a closed connection; it
never changes state and never stops the role.

Group commit: the connection keeps reading and validating frames while a cache append + fdatasync runs in a
thread; the next append writes every batch received meanwhile and one fdatasync covers them all. Each batch is
ACKed once the fdatasync that covers it has returned, never before.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
import struct
import time
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, Protocol

from .. import pki
from ..buffers import new_buffer, tune_malloc
from ..errors import (AlreadyFailedOver, CertificateRefused, LifeboatError, MachineRevoked, ProtocolError, UnknownMachine,
                      is_no_space)
from ..records import BLOCK, Kind, Record, decode_records
from ..wire import BATCH_HEAD, DIFF_HEAD, HEAD, RESYNC_HEAD, Frame, parse_head, parse_json
from ..wire import write_frame, write_json
from .shielded import wait_done

if TYPE_CHECKING:
    from .vault_gate import VaultGate
    from .machine_state import MachineState
    from .pipeline import MachineRuntime
    from .resync import Resync
    from .runtimes import Runtimes
    from .sync_cursor import SyncCursor

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 30.0
#: Agents send a heartbeat every second; silence this long means the link is gone (or stalled).
IDLE_TIMEOUT = 30.0
#: Received batches waiting for the cache append (the agent keeps far less in flight): the reader pauses above it.
COMMIT_QUEUE_BYTES = 64 * 1024 * 1024
#: The initial-replication cursor in state.db (synchronous=FULL) is rewritten at most this often; it only needs to
#: be durable-or-behind (a stale cursor makes a reconnecting agent re-send a few chunks).
SYNC_NOTE_INTERVAL = 1.0


#: Received frames not yet taken by the connection's task: reading from the socket pauses above it.
READ_AHEAD_BYTES = 8 * 1024 * 1024


class FrameReader(asyncio.streams.FlowControlMixin, asyncio.BufferedProtocol):
    """Data-port protocol: frames are decrypted by the TLS layer straight into a buffer of the frame's size
    (a BufferedProtocol), instead of going through a StreamReader's buffer and the copies of ``readexactly``.
    ``read_frame()`` behaves like :func:`engine.wire.read_frame`. Writing goes through a StreamWriter over it."""

    def __init__(self, ps: ProcessServer) -> None:
        super().__init__()
        self.ps = ps
        self.transport: asyncio.Transport | None = None
        self._head = bytearray(HEAD.size)
        self._buf: bytearray = self._head
        self._pos = 0
        self._kind: Frame | None = None
        self._frames: collections.deque[tuple[Frame, bytes]] = collections.deque()
        self._queued = 0
        self._error: BaseException | None = None     # what read_frame raises once the queued frames are taken
        self._waiter: asyncio.Future | None = None
        self._reading_paused = False
        self._closed = asyncio.get_running_loop().create_future()

    # protocol side -------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.ps.stopping:
            transport.close()
            return
        writer = asyncio.StreamWriter(transport, self, None, asyncio.get_running_loop())  # type: ignore[arg-type]
        self.ps._spawn(self.ps._handle(self, writer))

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._buf)[self._pos:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._error is not None:     # ended (bad header, aborted): what still arrives is dropped
            self._kind, self._buf, self._pos = None, self._head, 0
            return
        self._pos += nbytes
        if self._pos < len(self._buf):
            return
        if self._kind is None:
            try:
                self._kind, length = parse_head(self._head)
            except ProtocolError as exc:
                self._fail(exc)
                return
            self._buf, self._pos = new_buffer(length), 0   # filled by TLS before anyone reads it
            if length:
                return
        self._frames.append((self._kind, self._buf))   # type: ignore[arg-type]
        self._queued += len(self._buf)
        self._kind, self._buf, self._pos = None, self._head, 0
        if self._queued > READ_AHEAD_BYTES:
            self._pause()
        self._wake()

    def eof_received(self) -> bool | None:
        self._end(None)
        return None     # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._end(exc)
        if not self._closed.done():
            self._closed.set_result(None)

    def _get_close_waiter(self, stream: asyncio.StreamWriter) -> asyncio.Future:
        return self._closed

    def _end(self, exc: BaseException | None) -> None:
        if self._error is not None:
            return
        if exc is not None:
            self._error = exc
        elif self._kind is not None:
            self._error = ProtocolError("truncated frame body")
        elif self._pos:
            self._error = ProtocolError("truncated frame header")
        else:
            self._error = ConnectionResetError("peer closed the connection")
        self._wake()

    def abort(self, exc: BaseException) -> None:
        """End reading now: ``read_frame`` raises ``exc`` (frames not yet taken are dropped)."""
        self._frames.clear()
        self._queued = 0
        self._error = exc
        self._wake()
        self._pause()

    def _fail(self, exc: BaseException) -> None:
        self._end(exc)
        self._pause()   # nothing after a bad header is read
        self._kind, self._buf, self._pos = None, self._head, 0

    def _pause(self) -> None:
        if self.transport is not None and not self._reading_paused and not self.transport.is_closing():
            self._reading_paused = True
            self.transport.pause_reading()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # consumer side -------------------------------------------------------------------------------------
    async def read_frame(self) -> tuple[Frame, bytes]:
        while not self._frames:
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        kind, body = self._frames.popleft()
        self._queued -= len(body)
        if self._reading_paused and self._queued <= READ_AHEAD_BYTES // 2 and self._error is None \
                and self.transport is not None and not self.transport.is_closing():
            self._reading_paused = False
            self.transport.resume_reading()
        return kind, body  # a bytearray: bytes-like everywhere the bodies are used


class ReverseHook(Protocol):
    def wants(self, machine: str) -> bool: ...

    async def serve(self, machine: str, conn: AgentConnection, hello: dict[str, Any]) -> None: ...


class AgentConnection:
    def __init__(self, ps: ProcessServer, reader: FrameReader, writer: asyncio.StreamWriter) -> None:
        self.ps = ps
        self.reader = reader
        self.writer = writer
        self.machine: str | None = None
        #: a batch was dropped (vault full): later ones would leave a gap, so all are dropped until a reconnect
        self.dropping = False

    def send_control(self, obj: dict) -> None:
        write_json(self.writer, Frame.CONTROL, obj)

    def close(self) -> None:
        self.writer.close()


class ProcessServer:
    """The data port. Collaborators: ``state`` (who may connect, the machine's disks), ``runtimes`` (attach an
    agent, its WELCOME), ``resync`` (a request waiting for the agent), ``cursor`` (initial-sync progress of durable
    records), ``pool`` (cache appends) and ``gate`` (closed while the vault is full: batches are then dropped,
    never acknowledged, and the agent keeps them; heartbeats are still answered, so the link stays up)."""

    def __init__(self, ssl_context: ssl.SSLContext, *, state: MachineState, runtimes: Runtimes, resync: Resync,
                 cursor: SyncCursor, pool: Executor, gate: VaultGate | None = None) -> None:
        self.ssl = ssl_context
        self.gate = gate
        self.state = state
        self.runtimes = runtimes
        self.resync = resync
        self.cursor = cursor
        self.pool = pool
        self.server: asyncio.base_events.Server | None = None
        self._handlers: set[asyncio.Task] = set()
        self._conns: set[AgentConnection] = set()
        self.stopping = False
        #: failback's master-target hook (engine/recovery/failback.py): takes a failed-over machine's agent while
        #: its machine is reprotected to the original disks
        self.reverse: ReverseHook | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        # Two arenas (the loop's and one the workers share): every replicated byte passes through buffers
        # allocated in one thread and freed in another; with glibc's default of 8 arenas per core, each pool
        # thread keeps its own arena full of freed buffers and peak RSS ends up at twice the live data.
        tune_malloc(arenas=2)
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: FrameReader(self), host, port, ssl=self.ssl,
                                               ssl_handshake_timeout=15)
        return self.server.sockets[0].getsockname()[:2]

    async def stop(self) -> None:
        if self.server:
            self.server.close()
        self.stopping = True
        # Cancel and close until every handler is gone: on 3.11 a cancel can be swallowed by a wait_for whose
        # frame arrived in the same loop turn, so one round is not enough.
        for _ in range(50):
            if not self._handlers:
                break
            for conn in list(self._conns):
                conn.writer.close()
            for t in list(self._handlers):
                t.cancel()
            await asyncio.wait(list(self._handlers), timeout=0.2)
        if self.server:
            try:
                await asyncio.wait_for(self.server.wait_closed(), 5)
            except TimeoutError:
                pass

    async def _handle(self, reader: FrameReader, writer: asyncio.StreamWriter) -> None:
        conn = AgentConnection(self, reader, writer)
        self._conns.add(conn)
        rt: MachineRuntime | None = None
        try:
            rt = await self._authenticate(conn)
            if rt is not None:
                await self._serve(conn, rt)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError) as exc:
            if isinstance(exc, LifeboatError):
                self._refuse(conn, exc)
            else:
                log.info("agent connection %s closed: %s", conn.machine, exc)
        except LifeboatError as exc:
            self._refuse(conn, exc)
        except asyncio.CancelledError:
            pass
        except Exception:  # never crash the role on one connection
            log.exception("agent connection %s failed", conn.machine)
        finally:
            if rt is not None and rt.connection is conn:
                try:
                    self.runtimes.persist_clock(rt.name, force=True)   # the last moment it was recoverable
                except Exception:
                    log.exception("persisting the recovery time of %s", rt.name)
                rt.connection = None
            self._conns.discard(conn)
            writer.close()

    def _refuse(self, conn: AgentConnection, exc: LifeboatError) -> None:
        log.warning("refusing agent %s: %s", conn.machine, exc)
        try:
            write_json(conn.writer, Frame.ERROR, exc.to_dict())
        except Exception:
            pass

    async def _authenticate(self, conn: AgentConnection) -> MachineRuntime | None:
        """The agent's runtime, or None when the connection was served as failback's master target."""
        peer = pki.peer_serial(conn.writer.get_extra_info("ssl_object"))
        if peer is None:
            raise CertificateRefused("the agent presented no client certificate")
        serial, cn = peer
        try:
            row = self.state.row(cn)
        except UnknownMachine:
            raise CertificateRefused(f"certificate for {cn!r} does not belong to a registered machine") from None
        if row["revoked"]:
            raise MachineRevoked(f"machine {cn!r} has been revoked")
        reverse = row["state"] == "failed-over" and self.reverse is not None and self.reverse.wants(cn)
        if row["state"] == "failed-over" and not reverse:   # replication stops at failover (recovery/failover.py)
            raise AlreadyFailedOver(f"machine {cn!r} is failed over; the appliance takes no replication from it "
                                    "until the failover is cancelled")
        if row["cert_serial"] != str(serial):
            raise CertificateRefused(f"certificate for {cn!r} is not the machine's current certificate")
        conn.machine = cn
        kind, body = await asyncio.wait_for(conn.reader.read_frame(), HELLO_TIMEOUT)
        if kind != Frame.HELLO:
            raise ProtocolError("expected HELLO")
        hello = parse_json(body)
        conn.hello = hello  # type: ignore[attr-defined]  # identity fields for vSphere matching
        if hello.get("machine") != cn:
            raise ProtocolError("HELLO names another machine than the certificate")
        if reverse and self.reverse is not None:
            # failback: the agent is the master target of the machine's reverse replication (recovery/failback.py)
            await self.reverse.serve(cn, conn, hello)
            return None
        rt = await self.runtimes.attach_agent(cn, hello.get("disks", []), conn)
        write_json(conn.writer, Frame.WELCOME, self.runtimes.welcome(cn))
        self.resync.deliver(cn)
        return rt

    async def _serve(self, conn: AgentConnection, rt: MachineRuntime) -> None:
        disks = {d["index"]: d["size"] for d in self.state.row(rt.name)["disks"]}
        committer = _Committer(self, conn, rt)
        try:
            while True:
                committer.check()
                kind, body = await asyncio.wait_for(conn.reader.read_frame(), IDLE_TIMEOUT)
                if conn.dropping and not (self.gate and self.gate.closed):
                    # Room again: the agent re-sends what was dropped from WELCOME's last_seq after a reconnect.
                    raise ConnectionResetError("the vault has room again; reconnect to send the dropped batches")
                if kind == Frame.HEARTBEAT:
                    hb = parse_json(body)
                    rt.clock.heartbeat(_int(hb.get("now_ns")), _int(hb.get("oldest_pending_ns")))
                    rt.agent_stats = hb
                    # Answering every heartbeat lets the agent tell a stalled link from a quiet one. The cache's
                    # last_seq only moves after the fdatasync: this never claims more than is durable.
                    write_json(conn.writer, Frame.ACK, {"batch": 0, "last_seq": rt.cache.last_seq})
                    continue
                rt.clock.heard()
                if kind == Frame.RESYNC_HASHES:
                    self._spawn(self._resync_compare(conn, rt, body))
                    continue
                if kind != Frame.BATCH:
                    raise ProtocolError(f"unexpected frame {kind.name} from agent")
                if conn.dropping or (self.gate is not None and self.gate.closed):
                    conn.dropping = True   # vault full: not acknowledged, so the agent keeps it (capacity.py)
                    continue
                if len(body) < BATCH_HEAD.size:
                    raise ProtocolError("short batch")
                (batch_id,) = BATCH_HEAD.unpack_from(body)
                # Headers now; the payload hashes are checked by the cache writer's thread, before it writes.
                recs = decode_records(memoryview(body)[BATCH_HEAD.size:], verify=False)
                if rt.connection is not conn:
                    raise ConnectionResetError("replaced by a newer connection of the same machine")
                # Checked whole before anything is written: a bad batch changes nothing. Records already in the
                # cache or queued for it (re-sends after a reconnect) are dropped.
                fresh = self._validate(rt, recs, disks, max(rt.cache.last_seq, committer.accepted_seq))
                await committer.put(batch_id, body, recs, fresh)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError, ProtocolError):
            committer.check()   # the link died because the cache writer failed (it aborts it): report that
            raise
        finally:
            await committer.close()

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        t = asyncio.create_task(coro)
        self._handlers.add(t)
        t.add_done_callback(self._handlers.discard)

    async def _resync_compare(self, conn: AgentConnection, rt: MachineRuntime, body: bytes) -> None:
        """Answer a chunk of source checksums with the blocks that differ from the replica."""
        try:
            if len(body) < RESYNC_HEAD.size:
                raise ProtocolError("short resync frame")
            disk, bsize, seq, chunk, count = RESYNC_HEAD.unpack_from(body)
            if bsize != BLOCK or len(body) != RESYNC_HEAD.size + count * 24 or count > 1 << 20:
                raise ProtocolError("malformed resync frame")
            off = RESYNC_HEAD.size
            blocks = list(struct.unpack_from(f"<{count}Q", body, off))
            off += 8 * count
            hashes = [body[off + 16 * i:off + 16 * (i + 1)] for i in range(count)]
            differ = await rt.compare_blocks(disk, seq, blocks, hashes)
            write_frame(conn.writer, Frame.RESYNC_DIFF,
                        DIFF_HEAD.pack(chunk, len(differ)) + struct.pack(f"<{len(differ)}Q", *differ))
        except LifeboatError as exc:
            self._refuse(conn, exc)
            conn.close()
        except Exception:
            log.exception("resync compare failed for %s", rt.name)
            conn.close()

    @staticmethod
    def _validate(rt: MachineRuntime, recs: list[Record], disks: dict[int, int], last: int) -> list[Record]:
        """Checks a whole batch before anything is written: a bad batch changes nothing. Returns the records
        with seq > ``last``."""
        prev = 0
        fresh: list[Record] = []
        for r in recs:
            if r.seq <= prev:
                raise ProtocolError("records out of order in batch")
            prev = r.seq
            if r.kind in (Kind.WRITE, Kind.SYNC, Kind.ZERO, Kind.TRIM, Kind.SYNC_DONE, Kind.RESIZE):
                if r.disk not in disks:
                    raise ProtocolError(f"record for unknown disk {r.disk}")
                if r.kind in (Kind.WRITE, Kind.SYNC, Kind.ZERO, Kind.TRIM) and r.offset + r.length > disks[r.disk]:
                    raise ProtocolError(f"record beyond the end of disk {r.disk}")
            if r.seq > last:
                fresh.append(r)
        return fresh


class _Batch:
    __slots__ = ("id", "body", "recs", "fresh", "size")

    def __init__(self, batch_id: int, body: bytes, recs: list[Record], fresh: list[Record]) -> None:
        self.id = batch_id
        self.body = body
        self.recs = recs
        self.fresh = fresh
        self.size = len(body)


class _Committer:
    """Group commit of one connection's batches into the machine's durable cache.

    The reader queues validated batches; this task appends everything queued so far with one writev and one
    fdatasync (in a worker thread, under the machine's ``append_lock``), then ACKs each batch of the group in order
    and hands the records to the applier. While that append runs, the reader keeps queueing: the next append covers
    all of them. A failed append fails the connection (nothing after it is ACKed; the agent re-sends).
    """

    def __init__(self, ps: ProcessServer, conn: AgentConnection, rt: MachineRuntime) -> None:
        self.ps = ps
        self.conn = conn
        self.rt = rt
        self.queue: collections.deque[_Batch] = collections.deque()
        self.queued_bytes = 0
        #: highest seq accepted on this connection (queued or durable): later batches only add what is above it
        self.accepted_seq = 0
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._closing = False
        self.task = asyncio.create_task(self._run(), name=f"commit:{rt.name}")
        self.task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task) -> None:
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            self.conn.reader.abort(exc)   # the reader raises it at once: the connection ends

    def check(self) -> None:
        """Raise what ended the commit task (a failed append ends the connection)."""
        if self.task.done():
            self.task.result()
            raise ConnectionResetError("cache writer stopped")

    async def put(self, batch_id: int, body: bytes, recs: list[Record], fresh: list[Record]) -> None:
        while self.queued_bytes >= COMMIT_QUEUE_BYTES:
            self.check()
            self._space.clear()
            waiter = asyncio.ensure_future(self._space.wait())
            try:
                await asyncio.wait({self.task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
        self.check()
        b = _Batch(batch_id, body, recs, fresh)
        self.queue.append(b)
        self.queued_bytes += b.size
        if fresh:
            self.accepted_seq = max(self.accepted_seq, fresh[-1].seq)
        self._wake.set()

    async def close(self) -> None:
        """Finish what is queued (valid batches: writing them is always safe), then stop. On cancellation the
        queue is dropped, but an append already in its thread is waited for (see _commit)."""
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), IDLE_TIMEOUT)
        except (asyncio.CancelledError, TimeoutError):
            self.task.cancel()
            await wait_done(self.task)
            raise
        except Exception:
            pass   # reported through check(), or the connection is going away anyway
        finally:
            _flush_sync_note(self.ps.cursor, self.rt)

    async def _run(self) -> None:
        while True:
            while not self.queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
            group = list(self.queue)
            size = self.queued_bytes
            self.queue.clear()
            self.queued_bytes = 0
            self._space.set()
            # Let the applier take what it has in memory first (bounded: see MachineRuntime.room_for). The
            # reader goes on queueing meanwhile; the agent's in-flight window is what holds it back.
            await self.rt.room_for(size)
            await self._commit(group)

    async def _commit(self, group: list[_Batch]) -> None:
        rt, conn = self.rt, self.conn
        async with rt.append_lock:   # one writer of the cache, even while a replaced connection winds down
            if rt.connection is not conn:
                raise ConnectionResetError("replaced by a newer connection of the same machine")
            prev = rt.cache.last_seq
            fut = asyncio.get_running_loop().run_in_executor(self.ps.pool, _verify_append, rt.cache, group)
            try:
                recs, nbytes, entries, bad = await asyncio.shield(fut)
            except OSError as exc:
                if is_no_space(exc) and self.ps.gate is not None:   # nothing of this group is acknowledged
                    self.ps.gate.report_full(f"the process-server cache of {rt.name} is out of space")
                raise
            except asyncio.CancelledError:
                # Hold the append lock until the thread is done: no other append may interleave with it, and
                # the file must not be closed under it.
                await wait_done(fut)
                if not fut.cancelled() and fut.exception() is None and fut.result()[0]:
                    # written: the applier finds them in the cache
                    rt.cache_pending.extend((rt.clock.to_local_ns(t), s) for t, s in fut.result()[2])
                    rt.new_data.set()
                raise
            if recs:
                rt.cache_pending.extend((rt.clock.to_local_ns(t), s) for t, s in entries)
                rt.cached(recs, prev, nbytes)           # in-memory hand-off to the applier
                rt.churn.add(sum(r.payload_size for r in recs if r.kind == Kind.WRITE))
                _note_sync(self.ps.cursor, rt, recs)
                rt.new_data.set()
        # Everything before a bad batch is durable now (or was already): ACK each of them, in order.
        written = group if bad is None else group[:bad[0]]
        writer = conn.writer
        if not writer.is_closing():
            durable = rt.cache.last_seq
            for b in written:
                write_json(writer, Frame.ACK, {"batch": b.id, "last_seq": durable})
            if writer.transport.get_write_buffer_size() > 1 << 20:
                await writer.drain()
        if bad is not None:
            raise bad[1]


def _verify_append(cache: Any, group: list[_Batch]) -> tuple[list[Record], int, list[tuple[int, int]],
                                                              tuple[int, LifeboatError] | None]:
    """In a worker thread, under the append lock: check every payload against its source hash, then append the
    records above the cache's last seq (one writev) and fdatasync once. A batch that fails the check is not
    written, nor anything after it. Returns (records written, their bytes, pending entries, (index, error))."""
    bad: tuple[int, LifeboatError] | None = None
    for i, b in enumerate(group):
        try:
            for r in b.recs:
                r.verify()
        except LifeboatError as exc:
            bad = (i, exc)
            group = group[:i]
            break
    last = cache.last_seq
    recs: list[Record] = []
    encoded: list[Any] = []
    entries: list[tuple[int, int]] = []
    for b in group:
        fresh = b.fresh
        if fresh and fresh[0].seq <= last:     # another connection cached some meanwhile
            fresh = [r for r in fresh if r.seq > last]
        if not fresh:
            continue
        if len(fresh) == len(b.recs):
            encoded.append(memoryview(b.body)[BATCH_HEAD.size:])
        else:
            encoded.extend(r.encode() for r in fresh)
        recs.extend(fresh)
        entries.append((fresh[0].ts_ns, fresh[-1].seq))
        last = fresh[-1].seq
    if recs:
        cache.append(recs, encoded)
    return recs, sum(len(e) for e in encoded), entries, bad



def _int(v: object) -> int:
    """A heartbeat's nanosecond field (the agent's word: anything else than a non-negative int counts as 0)."""
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 63 else 0


def _note_sync(cursor: SyncCursor, rt: MachineRuntime, recs: list[Record]) -> None:
    """Initial-replication cursor: remember the SYNC progress of durable records, write it at most once a second
    (at once for SYNC_DONE). A cursor that is behind only makes the agent re-send some chunks."""
    pend = rt.sync_note
    done = False
    for r in recs:
        if r.kind == Kind.SYNC:
            old = pend.get(r.disk)
            if old is None or r.offset + r.length > old.offset + old.length:
                pend[r.disk] = Record(r.kind, r.disk, r.seq, r.ts_ns, r.offset, r.length, b"", r.hash)
        elif r.kind == Kind.SYNC_DONE:
            pend[("done", r.disk)] = Record(r.kind, r.disk, r.seq, r.ts_ns, r.offset, r.length)
            done = True
    if pend and (done or time.monotonic() - rt.sync_note_time >= SYNC_NOTE_INTERVAL):
        _flush_sync_note(cursor, rt)


def _flush_sync_note(cursor: SyncCursor, rt: MachineRuntime) -> None:
    pend = rt.sync_note
    if not pend:
        return
    rt.sync_note = {}
    rt.sync_note_time = time.monotonic()
    try:
        cursor.note_sync(rt.name, rt.sync, sorted(pend.values(), key=lambda r: r.seq))
    except Exception:
        log.exception("could not record the initial-replication cursor of %s", rt.name)
