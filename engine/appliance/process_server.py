"""Process-server role: receives replication data from agents on the data port (default 9443, mutual TLS).

Each batch is validated, appended to the machine's durable cache and fsynced before the ACK goes back, so an
acknowledged record survives a crash of the appliance. Bad input gets an ERROR frame and a closed connection; it
never changes state and never stops the role.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
import time
from typing import TYPE_CHECKING

from .. import pki
from ..errors import (CertificateRefused, LifeboatError, MachineRevoked, ProtocolError, UnknownMachine)
from ..records import Kind, Record, decode_records
from ..wire import BATCH_HEAD, DIFF_HEAD, RESYNC_HEAD, Frame, parse_json, read_frame, write_frame, write_json

if TYPE_CHECKING:
    from .appliance import Appliance
    from .pipeline import MachineRuntime

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 30.0
#: Agents send a heartbeat every second; silence this long means the link is gone (or stalled).
IDLE_TIMEOUT = 30.0


class AgentConnection:
    def __init__(self, ps: ProcessServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.ps = ps
        self.reader = reader
        self.writer = writer
        self.machine: str | None = None

    def send_control(self, obj: dict) -> None:
        write_json(self.writer, Frame.CONTROL, obj)

    def close(self) -> None:
        self.writer.close()


class ProcessServer:
    def __init__(self, app: Appliance, ssl_context: ssl.SSLContext) -> None:
        self.app = app
        self.ssl = ssl_context
        self.server: asyncio.base_events.Server | None = None
        self._handlers: set[asyncio.Task] = set()
        self._conns: set[AgentConnection] = set()
        self.stopping = False

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._handle, host, port, ssl=self.ssl, limit=1 << 20,
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

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        conn = AgentConnection(self, reader, writer)
        self._conns.add(conn)
        rt: MachineRuntime | None = None
        try:
            rt = await self._authenticate(conn)
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
                rt.connection = None
            self._handlers.discard(task)
            self._conns.discard(conn)
            writer.close()

    def _refuse(self, conn: AgentConnection, exc: LifeboatError) -> None:
        log.warning("refusing agent %s: %s", conn.machine, exc)
        try:
            write_json(conn.writer, Frame.ERROR, exc.to_dict())
        except Exception:
            pass

    async def _authenticate(self, conn: AgentConnection) -> MachineRuntime:
        peer = pki.peer_serial(conn.writer.get_extra_info("ssl_object"))
        if peer is None:
            raise CertificateRefused("the agent presented no client certificate")
        serial, cn = peer
        try:
            row = self.app.machine_row(cn)
        except UnknownMachine:
            raise CertificateRefused(f"certificate for {cn!r} does not belong to a registered machine") from None
        if row["revoked"]:
            raise MachineRevoked(f"machine {cn!r} has been revoked")
        if row["cert_serial"] != str(serial):
            raise CertificateRefused(f"certificate for {cn!r} is not the machine's current certificate")
        conn.machine = cn
        kind, body = await asyncio.wait_for(read_frame(conn.reader), HELLO_TIMEOUT)
        if kind != Frame.HELLO:
            raise ProtocolError("expected HELLO")
        hello = parse_json(body)
        conn.hello = hello  # type: ignore[attr-defined]  # identity fields for vSphere matching
        if hello.get("machine") != cn:
            raise ProtocolError("HELLO names another machine than the certificate")
        rt = await self.app.attach_agent(cn, hello.get("disks", []), conn)
        write_json(conn.writer, Frame.WELCOME, self.app.welcome(cn))
        self.app._deliver_resync(cn)
        return rt

    async def _serve(self, conn: AgentConnection, rt: MachineRuntime) -> None:
        loop = asyncio.get_running_loop()
        disks = {d["index"]: d["size"] for d in self.app.machine_row(rt.name)["disks"]}
        while True:
            kind, body = await asyncio.wait_for(read_frame(conn.reader), IDLE_TIMEOUT)
            rt.last_seen = time.monotonic()
            if kind == Frame.HEARTBEAT:
                hb = parse_json(body)
                rt.agent_pending_ns = int(hb.get("oldest_pending_ns") or 0)
                rt.agent_stats = hb
                # Answering every heartbeat lets the agent tell a stalled link from a quiet one.
                write_json(conn.writer, Frame.ACK, {"batch": 0, "last_seq": rt.cache.last_seq})
                continue
            if kind == Frame.RESYNC_HASHES:
                self._spawn(self._resync_compare(conn, rt, body))
                continue
            if kind != Frame.BATCH:
                raise ProtocolError(f"unexpected frame {kind.name} from agent")
            if len(body) < BATCH_HEAD.size:
                raise ProtocolError("short batch")
            (batch_id,) = BATCH_HEAD.unpack_from(body)
            recs = decode_records(memoryview(body)[BATCH_HEAD.size:])  # verifies every payload hash
            async with rt.append_lock:   # one writer of the cache, even while a replaced connection winds down
                if rt.connection is not conn:
                    raise ConnectionResetError("replaced by a newer connection of the same machine")
                fresh = self._validate(rt, recs, disks)
                if fresh:
                    encoded = [body[BATCH_HEAD.size:]] if len(fresh) == len(recs) else [r.encode() for r in fresh]
                    # Pending before the write: the applier may read the records as soon as they are written,
                    # even before the fsync returns, and must find the entry to retire.
                    entry = (fresh[0].ts_ns, fresh[-1].seq)
                    rt.cache_pending.append(entry)
                    try:
                        await loop.run_in_executor(self.app.pool, rt.cache.append, fresh, encoded)
                    except BaseException:
                        if entry in rt.cache_pending:
                            rt.cache_pending.remove(entry)
                        raise
                    rt.churn.add(sum(r.payload_size for r in fresh if r.kind in (Kind.WRITE,)))
                    self.app.note_sync(rt, fresh)
                    rt.new_data.set()
            write_json(conn.writer, Frame.ACK, {"batch": batch_id, "last_seq": rt.cache.last_seq})
            if conn.writer.transport.get_write_buffer_size() > 1 << 20:
                await conn.writer.drain()

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
            if bsize != 65536 or len(body) != RESYNC_HEAD.size + count * 24 or count > 1 << 20:
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
    def _validate(rt: MachineRuntime, recs: list[Record], disks: dict[int, int]) -> list[Record]:
        """Checks a whole batch before anything is written: a bad batch changes nothing."""
        last = rt.cache.last_seq
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

