"""The mobility agent: serves each protected disk as an NBD export, captures every change, ships it to the
process server over mutual TLS, runs initial replication, and takes app-consistent bookmarks.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import random
import shlex
import ssl
import struct
import time
from pathlib import Path
from typing import Any

from .. import net, platform
from ..appliance.master_target import HASHES, HASHES_REQ, MasterTarget, decode_write
from ..buffers import tune_malloc
from ..errors import IntegrityError, InvalidInput, LifeboatError, ProtocolError
from ..fileio import data_extents
from ..home import AgentHome
from ..names import check_name, check_unique
from ..nbd.server import NBDServer
from ..records import Kind, Record
from ..identity import local_identity
from ..fileio import atomic_write
from ..wire import BATCH_HEAD, Frame, frame_header, parse_json
from ..waits import wait_event
from .capture import CaptureBackend, MachineCapture
from .link import Link, Liveness
from .dirty_map import EXTENT, DirtyMap
from .resync_pass import ResyncPass

log = logging.getLogger(__name__)

BATCH_BYTES = 4 * 1024 * 1024
SYNC_CHUNK = 1024 * 1024
MAX_IN_FLIGHT = 8
#: Bytes in flight before the link's rate is known (see Agent.in_flight_limit).
INITIAL_WINDOW = 512 * 1024
#: While a batch is in flight, fresh records wait this long at most for more to join their batch (Agent._linger).
LINGER_SECONDS = 0.005
LINGER_BYTES = 1024 * 1024
HOOK_TIMEOUT = 30.0
#: No frame from the process server for this long (it answers every heartbeat) means the link is stalled.
LINK_TIMEOUT = 10.0


class Agent:
    def __init__(self, home: Path, disks: dict[str, Path], nbd: tuple[str, int], *,
                 pre_bookmark: str | None = None, post_bookmark: str | None = None,
                 journal_limit: int = 1 << 30, identity: dict[str, Any] | None = None) -> None:
        self.home = AgentHome(Path(home))
        # BIOS UUID, host name and IPs, sent in HELLO so the appliance can find this machine's VM (tests pass their
        # own). None: read at the first connection, in a thread (a host-name lookup must not block the loop).
        self.identity = identity
        self.cfg = self.home.load_config()
        self.name: str = self.cfg["name"]
        if not disks:
            raise InvalidInput("the agent needs at least one --disk NAME=PATH")
        for dname in disks:
            check_name(dname, "disk name")   # the appliance checks again: it trusts no agent
        check_unique(disks, "disk name")
        self.disk_paths = disks
        self.nbd_addr = nbd
        self.pre_bookmark, self.post_bookmark = pre_bookmark, post_bookmark
        self.capture = MachineCapture(self.home.journal, journal_limit=journal_limit)
        self.resync = ResyncPass(self)
        self.backends: list[CaptureBackend] = []
        self.nbd: NBDServer | None = None
        self.control_server: asyncio.AbstractServer | None = None
        self._tasks: list[asyncio.Task] = []
        self.connected = asyncio.Event()
        self.new_data = asyncio.Event()
        self.acked_seq = 0
        self.sent_seq = 0
        # (batch, first capture ts, last seq, bytes, send time) of batches sent and not yet acknowledged
        self.in_flight: collections.deque[tuple[int, int, int, int, float]] = collections.deque()
        self.link_rate = 0.0              # bytes/s the link has been delivering (EWMA over acknowledged batches)
        self.ack_latency = 0.0            # seconds from sending a batch to its ACK (EWMA)
        self.capture.ack_eta = self._ack_eta
        self._last_ack_time = 0.0
        self.first_unsent_ns = 0
        self.sync_pos: dict[int, int] = {}
        self.sync_done: dict[int, bool] = {}
        self.protected = bool(self.cfg.get("protected"))
        self.last_error: dict[str, Any] | None = None
        self.nbd_address: tuple[str, int] | None = None
        self._bookmark_tasks: set[asyncio.Task] = set()
        self._welcomed = False
        self.bytes_sent = 0            # replication frames written (batches and resync checksums)

    # lifecycle -------------------------------------------------------------------------------------------
    async def start(self) -> None:
        tune_malloc()
        for i, (name, path) in enumerate(self.disk_paths.items()):
            if not Path(path).exists():
                raise InvalidInput(f"disk {name}: {path} does not exist")
            self.backends.append(CaptureBackend(self.capture, i, name, Path(path)))
        self.capture.capturing = self.protected   # a protected machine captures from the first request on
        if self.cfg.get("reverse"):
            # failback: the disks are a master target (reprotect) until the appliance says it is done; the original
            # machine must not write them meanwhile
            self.capture.quiesced = True
        self.capture.on_record = self._on_record
        self.capture.dirty = DirtyMap(self.home.journal, {b.index: b.size for b in self.backends})
        self.capture.on_overflow = self._on_overflow
        self._check_previous_run()
        if self.capture.journal.corruption and self.protected:
            self._journal_corrupt(IntegrityError(self.capture.journal.corruption))
        self.nbd = NBDServer({b.name: b for b in self.backends}, name=f"agent-{self.name}")
        self.nbd_address = await self.nbd.start(*self.nbd_addr)
        self.control_server = await platform.serve_control(self._control, self.home.socket)
        self._tasks.append(asyncio.create_task(self._ship_forever(), name="agent-shipper"))
        log.info("agent %s serving %s on %s", self.name, list(self.disk_paths), self.nbd_address)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.nbd:
            await self.nbd.stop()
        if self.control_server:
            self.control_server.close()
        self.capture.sync()
        for b in self.backends:
            platform.fdatasync(b.fd)
            b.close()
        self.capture.al.clear()        # everything is durable: nothing at risk
        self.capture.journal.close()
        atomic_write(self.home.journal / "clean", b"clean shutdown\n")

    def _check_previous_run(self) -> None:
        """Crash and resize detection: mark what may differ from the replica for a (scheduled) resync."""
        clean = self.home.journal / "clean"
        sizes = self.cfg.get("disk_sizes", {})
        if self.protected:
            for b in self.backends:
                old = sizes.get(b.name)
                if old is not None and b.size < old:
                    raise InvalidInput(f"disk {b.name} shrank from {old} to {b.size} bytes",
                                       code="LB_DISK_SHRUNK", advice="Restore the disk's size; Lifeboat "
                                       "replicas only grow. To start over, remove protection and protect again.")
                if old is not None and b.size > old:
                    rec = self.capture.next(Kind.RESIZE, b.index, 0, b.size)
                    self.capture.append([rec])
                    self.resync.request(None, [[b.index, old, b.size - old]], "disk resized")
                    self.resync.begin("disk resized")
            if not clean.exists() and self.home.journal.exists():
                at_risk = [(d, e) for d, e in self.capture.al.recovered if d < len(self.backends)]
                if at_risk:
                    self.resync.request(None, [[d, e * EXTENT, EXTENT] for d, e in at_risk],
                                        "agent stopped unexpectedly (crash or power loss)")
                    self.resync.begin("agent stopped unexpectedly (crash or power loss)")
        self.capture.al.clear()   # what was at risk is now in the dirty map
        dirty = self.capture.dirty
        assert dirty is not None
        dirty.total = dirty.count()
        clean.unlink(missing_ok=True)
        self.cfg["disk_sizes"] = {b.name: b.size for b in self.backends}
        self.home.save_config(self.cfg)

    def _journal_corrupt(self, exc: IntegrityError) -> None:
        """A flipped bit in the capture journal: never sent. Set it aside; a resync finds what it held."""
        q = self.capture.journal.quarantine()
        self.sent_seq = max(self.sent_seq, self.capture.seq)
        reason = "corruption detected in the agent's journal"
        self.last_error = {"code": exc.code, "message": f"{reason}: {exc.message}", "advice": exc.advice}
        log.error("%s (%s); set aside in %s, resyncing", reason, exc, q)
        self.resync.request([b.index for b in self.backends], [], reason)
        self.resync.begin(reason)
        self.resync.go = True

    def _on_overflow(self) -> None:
        """The journal is full (the link is slower than the writes): keep going on the dirty map."""
        reason = "journal full: writes outran the replication link"
        d = self.capture.dirty
        assert d is not None
        d.reason = d.reason or reason
        self.resync.begin(reason)
        d.persist()
        self.resync.go = True
        log.warning("agent %s: %s; resyncing from the dirty map", self.name, reason)

    def _on_record(self) -> None:
        if not self.first_unsent_ns:
            self.first_unsent_ns = time.time_ns()
        self.new_data.set()

    def _ack_eta(self, nbytes: int) -> float:
        """Seconds until ``nbytes`` more are acknowledged, by what the link has been doing (inf: no idea)."""
        if not self.connected.is_set() or not self.link_rate:
            return float("inf")
        return nbytes / self.link_rate + self.ack_latency

    def oldest_pending_ns(self) -> int:
        if self.in_flight:
            return self.in_flight[0][1]
        return self.first_unsent_ns

    # shipping --------------------------------------------------------------------------------------------
    async def _ship_forever(self) -> None:
        delay = 0.5
        # set by a refusal LB_FAILED_OVER, kept until a session is welcomed: the refused handshake often ends in a
        # reset rather than the error frame, which must not grow the backoff to its 30 s ceiling either
        failed_over = False
        while True:
            self._welcomed = False
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except LifeboatError as exc:
                self.last_error = exc.to_dict()
                # a failed-over machine: the appliance takes this agent again for reprotect (as master target) or
                # re-enable; retry every few seconds so those start promptly (a handshake costs little)
                failed_over = failed_over or exc.code == "LB_FAILED_OVER"
                log.warning("replication link: %s", exc)
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError) as exc:
                self.last_error = {"code": "LB_LINK_DOWN", "message": str(exc) or type(exc).__name__}
                log.info("replication link down: %s", exc)
            except Exception as exc:  # a bug or a malformed frame must not stop replication for good
                self.last_error = {"code": "LB_ERROR", "message": repr(exc)}
                log.exception("replication session failed")
            self.connected.clear()
            if self._welcomed:
                failed_over = False
                delay = 0.5   # the link worked: a blip gets a prompt reconnect, not the accumulated backoff
            await asyncio.sleep(delay * (0.5 + random.random()))  # jitter: no reconnect storms
            delay = min(delay * 2, 2.0 if failed_over else 30.0)

    async def _session(self) -> None:
        host = self.cfg["appliance"][0]
        ctx = net.client_context(self.home.ca_cert, self.home.cert, self.home.key)
        if self.identity is None:
            self.identity = await asyncio.to_thread(local_identity)
        link = await Link.open(host, self.cfg["data_port"], ctx, 15)
        try:
            link.write_json(Frame.HELLO, {"machine": self.name, "version": 1,
                                          "disks": [{"index": b.index, "name": b.name, "size": b.size}
                                                    for b in self.backends],
                                          **{k: v for k, v in self.identity.items() if v}})
            kind, body = await asyncio.wait_for(link.read_frame(), 30)
            if kind == Frame.ERROR:
                raise _remote_error(parse_json(body))
            if kind != Frame.WELCOME:
                raise ProtocolError("expected WELCOME")
            welcome = parse_json(body)
            if isinstance(welcome.get("reverse"), dict):
                self._welcomed = True
                self.connected.set()
                self.last_error = None
                await self._reverse_session(link, welcome["reverse"])
                return
            self._welcome(welcome)
            self._welcomed = True
            self.in_flight.clear()
            self.sent_seq = self.acked_seq
            self.connected.set()
            self.last_error = None
            self.capture.ship_from_memory(True)
            rx = asyncio.create_task(self._receive(link))
            try:
                await self._send_loop(link, rx)
            finally:
                rx.cancel()
                await asyncio.gather(rx, return_exceptions=True)
                self.resync.link_lost()
        finally:
            # What was sent and not acknowledged is resent from the journal after a reconnect.
            self.capture.ship_from_memory(False)
            link.close()

    # failback: master target ----------------------------------------------------------------------------------
    async def _reverse_session(self, link: Link, rv: dict[str, Any]) -> None:
        """The machine is reprotected to these disks (failback, issue 14): the appliance sends the recovered
        machine's blocks, this agent writes them into its disk files as the master target
        (engine/appliance/master_target.py). Writes from the NBD export are refused meanwhile; the forward journal
        and dirty map are obsolete (the disks are being rewritten) and are dropped once, on entering."""
        session = str(rv.get("session") or "")
        if session and self.cfg.get("reverse_done") == session:
            raise ProtocolError("the appliance offered a failback session this agent has finished already")
        if self.cfg.get("reverse") != session:
            self.capture.quiesced = True
            self.capture.acked(self.capture.seq)
            self.capture.journal.trim(self.capture.seq, unlink=_unlink_in_thread)
            d = self.capture.dirty
            assert d is not None
            for arr in (*d.bits.values(), *d.inflight.values()):
                arr[:] = bytes(len(arr))
            d.reason, d.total = None, 0
            d.persist()
            self.cfg["reverse"] = session
            # what the journal still holds was captured before the failback rewrote the disks: never sent
            self.cfg["dropped_until"] = max(int(self.cfg.get("dropped_until", 0)), self.capture.seq)
            self.cfg["resync_open"] = False
            self.home.save_config(self.cfg)
        self.capture.quiesced = True
        mt = MasterTarget({b.index: b.path for b in self.backends}, self.home.journal)
        loop = asyncio.get_running_loop()
        next_frame: asyncio.Future[tuple[Frame, bytes]] | None = None
        try:
            link.write_json(Frame.MT_ACK, {"open": session, "acked": mt.open(session)})
            last_hb = 0.0
            last_heard = time.monotonic()
            last_rx = link.received
            while True:
                now = time.monotonic()
                if now - last_hb >= 1.0:   # answered by the process server: the link's liveness
                    last_hb = now
                    link.write_json(Frame.HEARTBEAT, {"now_ns": time.time_ns(), "reverse": session,
                                                      "error": self.last_error})
                if next_frame is None:
                    next_frame = asyncio.ensure_future(link.read_frame())
                done, _ = await asyncio.wait({next_frame}, timeout=1.0)
                if not done:
                    if link.received != last_rx:   # a slow link is not a stalled one: a batch is still arriving
                        last_rx, last_heard = link.received, time.monotonic()
                    if time.monotonic() - last_heard > LINK_TIMEOUT:
                        next_frame.cancel()
                        raise TimeoutError(f"no frame from the process server for {LINK_TIMEOUT:.0f}s "
                                           "(link stalled)")
                    continue
                kind, body = next_frame.result()
                next_frame = None
                last_heard = time.monotonic()
                if kind == Frame.MT_HASHES_REQ:
                    cid, disk, count = HASHES_REQ.unpack_from(body)
                    blocks = list(struct.unpack_from(f"<{count}Q", body, HASHES_REQ.size))
                    # two threads, each on half of the blocks (pread and xxh3 release the GIL): a fully allocated
                    # disk is read twice as fast as by one
                    half = (len(blocks) + 1) // 2
                    parts = await asyncio.gather(*(loop.run_in_executor(None, mt.hashes, disk, part)
                                                   for part in (blocks[:half], blocks[half:]) if part))
                    hashes = b"".join(parts)
                    link.write_frame(Frame.MT_HASHES, HASHES.pack(cid, count) + hashes)
                elif kind == Frame.MT_WRITE:
                    batch, disk, extents = decode_write(body)
                    await loop.run_in_executor(None, mt.apply, batch, disk, extents)
                    link.write_json(Frame.MT_ACK, {"batch": batch, "acked": mt.acked})
                elif kind == Frame.CONTROL:
                    msg = parse_json(body)
                    if msg.get("reverse_done"):
                        await loop.run_in_executor(None, mt.flush)
                        self._leave_reverse()
                        link.write_json(Frame.MT_ACK, {"done": session, "acked": mt.acked})
                        await link.drain()
                        # The process server closes once it has the answer; closing first would drop it (the link
                        # drops what is still queued, and drain() leaves up to LOW queued). So wait for its close,
                        # not for its next frame: an ACK of a heartbeat may come first (it did, and the failback's
                        # release then failed with the agent already out of reverse mode).
                        end = time.monotonic() + 5.0
                        try:
                            while (left := end - time.monotonic()) > 0:
                                await asyncio.wait_for(next_frame or link.read_frame(), left)
                                next_frame = None
                        except (TimeoutError, OSError, ConnectionError, LifeboatError):
                            pass
                        next_frame = None
                        return
                elif kind == Frame.ERROR:
                    raise _remote_error(parse_json(body))
                await link.drain()
        finally:
            if next_frame is not None:
                next_frame.cancel()
            mt.close()

    def _leave_reverse(self) -> None:
        """Failback is done: the disks hold the recovered machine's state. Writes are accepted again (the original
        machine starts), and forward replication, once re-enabled, compares every block with the vault's newest
        state (a resync: RESYNC_START is journaled now, before any write of the restarted machine)."""
        self.cfg["reverse_done"] = self.cfg.pop("reverse", None)
        self.home.save_config(self.cfg)
        if self.protected:
            reason = "failback: the disks were written from the recovered machine"
            self.resync.request([b.index for b in self.backends], [], reason)
            self.resync.begin(reason)
        self.capture.quiesced = False
        log.info("failback done: the original machine's disks accept writes again")

    def _welcome(self, w: dict[str, Any]) -> None:
        # A connection the appliance accepts means the machine is not failed over (an agent of a failed-over
        # machine is refused before WELCOME): a quiesce of a planned failover that did not complete ends here.
        if self.capture.quiesced:
            log.info("writes accepted again: the appliance took the machine back")
        self.capture.quiesced = False
        # (records up to ``dropped_until`` were captured before a failback rewrote the disks: skipped for good)
        self.acked_seq = max(int(w.get("last_seq", 0)), int(self.cfg.get("dropped_until", 0)))
        self.capture.acked(self.acked_seq)
        self.capture.advance_to(self.acked_seq)
        self.capture.journal.trim(self.acked_seq, unlink=_unlink_in_thread)
        if w.get("protected"):
            self._set_protected()
        for b in self.backends:
            self.sync_pos[b.index] = int(w.get("sync", {}).get(str(b.index), 0))
            self.sync_done[b.index] = bool(w.get("synced", {}).get(str(b.index), False))

    def _set_protected(self) -> None:
        if not self.protected:
            self.protected = True
            self.cfg["protected"] = True
            self.home.save_config(self.cfg)
        self.capture.capturing = True
        self.new_data.set()

    async def _receive(self, link: Link) -> None:
        liveness = Liveness(link)
        next_frame: asyncio.Future | None = None
        try:
            while True:
                if next_frame is None:
                    next_frame = asyncio.ensure_future(link.read_frame())
                done, _ = await asyncio.wait({next_frame}, timeout=0.5)
                if not done:
                    # A slow link is not a stalled one: silence only counts while our own bytes stop moving too.
                    if liveness.stalled_for() > LINK_TIMEOUT:
                        raise TimeoutError(f"no progress on the link to the process server for "
                                           f"{LINK_TIMEOUT:.0f}s (link stalled)")
                    continue
                frame, next_frame = next_frame, None
                await self._on_frame(*frame.result())
                liveness.progress()
        finally:
            if next_frame is not None:
                next_frame.cancel()
                await asyncio.gather(next_frame, return_exceptions=True)

    async def _on_frame(self, kind: Frame, body: bytes) -> None:
        """One frame from the process server."""
        if kind == Frame.RESYNC_DIFF:
            self.resync.on_diff(body)
            self.new_data.set()
            return
        msg = parse_json(body)
        if kind == Frame.ACK:
            self.acked_seq = max(self.acked_seq, int(msg["last_seq"]))
            now = time.monotonic()
            while self.in_flight and self.in_flight[0][2] <= self.acked_seq:
                _, _, _, nbytes, sent_at = self.in_flight.popleft()
                lat = now - sent_at
                self.ack_latency = lat if not self.ack_latency else 0.7 * self.ack_latency + 0.3 * lat
                span = now - max(sent_at, self._last_ack_time)
                if span > 0.005:   # a meaningful sample of what the link delivers
                    sample = nbytes / span
                    self.link_rate = sample if not self.link_rate else 0.7 * self.link_rate + 0.3 * sample
                self._last_ack_time = now
            self.capture.acked(self.acked_seq)
            self.capture.journal.trim(self.acked_seq, unlink=_unlink_in_thread)
            self.resync.on_ack(self.acked_seq)
            self.new_data.set()
        elif kind == Frame.CONTROL:
            rs = msg.get("resync")
            if isinstance(rs, dict):
                if rs.get("full") or rs.get("ranges"):
                    self.resync.request([b.index for b in self.backends] if rs.get("full") else None,
                                        rs.get("ranges") or [], str(rs.get("reason") or "operator request"))
                if rs.get("go") and self.resync.pending():
                    self.resync.go = True
                    self.new_data.set()
            if msg.get("protected"):
                for b in self.backends:
                    self.sync_pos.setdefault(b.index, int(msg.get("sync", {}).get(str(b.index), 0)))
                    self.sync_done.setdefault(b.index, False)
                self._set_protected()
            q = msg.get("quiesce")
            if q is False and self.capture.quiesced:   # the planned failover did not go through
                self.capture.quiesced = False
                log.info("writes accepted again: the planned failover did not go through")
            if isinstance(q, dict) and isinstance(q.get("tag"), str):
                # planned failover: refuse every change from now on, then a bookmark (flush + marker) whose tag
                # the appliance waits for in the vault: the final point, with nothing captured after it
                self.capture.quiesced = True
                log.info("quiesced for a planned failover: writes refused; final bookmark %s", q["tag"])
                t = asyncio.create_task(self._scheduled_bookmark(q["tag"]))
                self._bookmark_tasks.add(t)
                t.add_done_callback(self._bookmark_tasks.discard)
            if msg.get("bookmark") is not None:
                t = asyncio.create_task(self._scheduled_bookmark(msg["bookmark"].get("tag")))
                self._bookmark_tasks.add(t)
                t.add_done_callback(self._bookmark_tasks.discard)
        elif kind == Frame.ERROR:
            raise _remote_error(msg)

    async def _send_loop(self, link: Link, rx: asyncio.Task) -> None:
        last_hb = 0.0
        while True:
            if rx.done():
                rx.result()  # re-raise what ended the receiver
                raise ConnectionResetError("receiver stopped")
            now = time.monotonic()
            if now - last_hb >= 1.0:
                last_hb = now
                link.write_json(Frame.HEARTBEAT, {
                    # now_ns lets the appliance put capture times on its own clock (a skewed clock changes no RPO)
                    "now_ns": time.time_ns(), "oldest_pending_ns": self.oldest_pending_ns(), "journal_bytes": self.capture.journal.bytes,
                    "spilled_bytes": self.capture.spilled_bytes,
                    "sync": {str(k): v for k, v in self.sync_pos.items()}, "resync": self.resync.status(),
                    "error": self.last_error})
            if self.in_flight_full():
                await self._wait_data(link, 0.5)
                continue
            if self.in_flight and await self._linger():
                continue
            recs: list[Record] = []
            parts: list[bytes | memoryview] = []
            if self.protected:
                mem = self.capture.take_unsent(self.sent_seq, self.batch_bytes())
                if mem is not None:
                    for rec, head, body in mem:   # the bytes just journaled, still in memory
                        recs.append(rec)
                        parts.append(head)
                        if body:
                            parts.append(body)
                else:
                    try:   # backlog: read back (and verified) from the journal, sent as stored
                        raw = self.capture.journal.read_raw_after(self.sent_seq, self.batch_bytes())
                    except IntegrityError as exc:
                        self._journal_corrupt(exc)
                        continue
                    for rec, stored in raw:
                        recs.append(rec)
                        parts.append(stored)
            if not recs and self.sent_seq >= self.capture.last_seq:
                self.first_unsent_ns = 0   # everything journaled is on its way (also after a reconnect)
            if recs:
                await self._send(link, recs, parts)
                if self.sent_seq >= self.capture.last_seq:
                    self.first_unsent_ns = 0
                else:
                    self.first_unsent_ns = recs[-1].ts_ns
                continue
            if (self.protected and not self.in_flight_full() and (self.resync.go or self.capture.overflow)
                    and all(self.sync_done.get(b.index, False) for b in self.backends)):
                nxt = await self.resync.next_frame()
                if nxt is not None:
                    what, payload = nxt
                    if what == "hashes":
                        link.write_frame(Frame.RESYNC_HASHES, payload)  # type: ignore[arg-type]
                        self.bytes_sent += len(payload) + 12
                    elif payload:
                        await self._send(link, payload)  # type: ignore[arg-type]
                    continue
            if self.protected and not self.in_flight_full():
                sync = self._next_sync()  # no await since reading the journal: seq order holds (see capture.py)
                if sync:
                    await self._send(link, sync)
                    continue
            await self._wait_data(link, 1.0)

    async def _linger(self) -> bool:
        """Nagle for batches: while a batch is in flight, fresh records in memory wait up to LINGER_SECONDS (or
        until LINGER_BYTES are there) for more to join their batch. Under a stream of writes the process server
        then gets batches of a megabyte or more instead of one per NBD write, each of which costs both sides a
        frame, a cache append and an ACK. On an idle link (nothing in flight) a write leaves at once, so this
        adds at most LINGER_SECONDS to the RPO. Returns whether it waited."""
        pending = self.capture.unsent_in_memory()
        if pending is None or self.capture.flush_waiting:
            return False   # nothing to wait for, or a flush waits for these
        nbytes, oldest_ns = pending
        wait = LINGER_SECONDS - (time.time_ns() - oldest_ns) / 1e9
        if nbytes >= LINGER_BYTES or wait <= 0:
            return False
        self.new_data.clear()
        await wait_event(self.new_data, wait)
        return True

    def in_flight_limit(self) -> int:
        """Bytes to keep on the wire: about a second of what the link delivers, so that heartbeat answers (the
        liveness signal) never queue behind minutes of data on a slow link. Until the first acknowledgement has
        measured the link, a small window (a slow start): once our bytes have left the socket, buffers along the
        way (a proxy, a WAN optimiser) hide whether they move, and only answers show progress."""
        if not self.link_rate:
            return INITIAL_WINDOW
        return int(max(256 * 1024, min(8 * BATCH_BYTES, self.link_rate)))

    def batch_bytes(self) -> int:
        return max(64 * 1024, min(BATCH_BYTES, self.in_flight_limit() // 2))

    def in_flight_full(self) -> bool:
        return (len(self.in_flight) >= MAX_IN_FLIGHT
                or sum(b[3] for b in self.in_flight) >= self.in_flight_limit())

    async def _wait_data(self, link: Link, timeout: float) -> None:
        self.new_data.clear()
        if self.protected and self.capture.last_seq > self.sent_seq and not self.in_flight_full():
            return   # something was journaled while we looked elsewhere (e.g. a resync marker): no nap
        await link.drain()
        await wait_event(self.new_data, timeout)

    async def _send(self, link: Link, recs: list[Record],
                    parts: list[bytes | memoryview] | None = None) -> None:
        """One BATCH frame of ``recs``; ``parts`` are their encoded bytes in pieces, if the caller has them."""
        batch = recs[-1].seq
        if parts is None:
            parts = []
            for r in recs:
                head, payload = r.encode_parts()
                parts.append(head)
                if payload:
                    parts.append(payload)
        size = BATCH_HEAD.size + sum(len(p) for p in parts)
        link.write(_coalesce([frame_header(Frame.BATCH, size), BATCH_HEAD.pack(batch), *parts]))
        self.bytes_sent += size + 12
        self.in_flight.append((batch, recs[0].ts_ns, batch, size, time.monotonic()))
        self.sent_seq = batch
        if link.queued > 8 * 1024 * 1024:
            await link.drain()

    def _next_sync(self) -> list[Record]:
        """Up to a batch of initial replication, read now (sequence numbers assigned as read)."""
        out: list[Record] = []
        size = 0
        limit = self.batch_bytes()
        for b in self.backends:
            if self.sync_done.get(b.index, True):
                continue
            pos = self.sync_pos.get(b.index, 0)
            while size < limit:
                if pos >= b.size:
                    out.append(self.capture.next(Kind.SYNC_DONE, b.index, 0, 0))
                    self.sync_done[b.index] = True
                    break
                ext = next(iter(data_extents(b.fd, pos, b.size)), None)
                if ext is None:  # only holes left: they are zeros, and so is the replica
                    pos = b.size
                    continue
                start = max(ext[0], pos)
                n = min(SYNC_CHUNK, ext[0] + ext[1] - start)
                rec = b.read_sync_chunk(start, n)
                pos = start + n
                if rec is not None:
                    out.append(rec)
                    size += rec.length
            self.sync_pos[b.index] = pos
            if size >= limit:
                break
        return out

    # bookmarks -------------------------------------------------------------------------------------------
    async def _scheduled_bookmark(self, tag: str | None) -> None:
        try:
            await self.bookmark(tag)
        except LifeboatError as exc:
            self.last_error = exc.to_dict()
            log.warning("scheduled bookmark failed: %s", exc)
        except Exception:
            log.exception("scheduled bookmark failed")

    async def bookmark(self, tag: str | None = None) -> dict[str, Any]:
        """App-consistent point across all disks: pre-hook (e.g. fsfreeze), marker, post-hook (always, on a watchdog)."""
        if not self.protected:
            raise InvalidInput("the machine is not protected yet", advice="Enable protection on the appliance first.")
        try:
            if self.pre_bookmark:
                await _run_hook(self.pre_bookmark)
            payload = json.dumps({"tag": tag, "id": os.urandom(6).hex()}).encode()
            rec = self.capture.next(Kind.BOOKMARK, 0, 0, len(payload), payload)
            self.capture.append([rec])
            self.capture.sync()
            for b in self.backends:
                platform.fdatasync(b.fd)
        finally:
            if self.post_bookmark:
                await _run_hook(self.post_bookmark)  # thaw even when freeze or marker failed
        return {"seq": rec.seq, "tag": tag, "point_id": f"a-{rec.seq}"}

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            req = json.loads(line or b"{}")
            if req.get("op") == "bookmark":
                resp: dict[str, Any] = {"ok": True, **await self.bookmark(req.get("tag"))}
            elif req.get("op") == "status":
                resp = {"ok": True, "name": self.name, "connected": self.connected.is_set(),
                        "protected": self.protected, "quiesced": self.capture.quiesced, "acked_seq": self.acked_seq, "seq": self.capture.seq,
                        "captured_bytes": self.capture.captured_bytes, "spilled_bytes": self.capture.spilled_bytes,
                        "congestion_waits": self.capture.congestion_waits,
                        "sync": self.sync_pos, "error": self.last_error, "bytes_sent": self.bytes_sent,
                        "reverse": self.cfg.get("reverse")}
            else:
                resp = {"ok": False, "error": {"code": "LB_INVALID_INPUT", "message": "unknown op"}}
        except LifeboatError as exc:
            resp = {"ok": False, "error": exc.to_dict()}
        except Exception as exc:
            resp = {"ok": False, "error": {"code": "LB_ERROR", "message": str(exc)}}
        writer.write(json.dumps(resp).encode() + b"\n")
        await writer.drain()
        writer.close()


def _coalesce(pieces: list[bytes | memoryview], small: int = 64 * 1024,
              group: int = 256 * 1024) -> list[bytes | memoryview]:
    """Join runs of small pieces (headers, small payloads) into one buffer each: every piece handed to the TLS
    transport becomes at least one TLS record. Large payloads pass through uncopied."""
    out: list[bytes | memoryview] = []
    run: list[bytes | memoryview] = []
    run_bytes = 0
    for p in pieces:
        n = len(p)
        if n >= small:
            if run:
                out.append(b"".join(run) if len(run) > 1 else run[0])
                run, run_bytes = [], 0
            out.append(p)
            continue
        run.append(p)
        run_bytes += n
        if run_bytes >= group:
            out.append(b"".join(run))
            run, run_bytes = [], 0
    if run:
        out.append(b"".join(run) if len(run) > 1 else run[0])
    return out


def _unlink_in_thread(path: Path) -> None:
    """Delete an acknowledged journal segment off the event loop (freeing a large file takes a while)."""
    asyncio.get_running_loop().run_in_executor(None, _unlink_quietly, path)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:   # set aside meanwhile (quarantine)
        pass
    except OSError as exc:
        log.warning("could not delete journal segment %s: %s", path, exc)


async def _run_hook(cmd: str) -> None:
    proc = await asyncio.create_subprocess_exec(*shlex.split(cmd))
    try:
        rc = await asyncio.wait_for(proc.wait(), HOOK_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise LifeboatError(f"bookmark hook {cmd!r} timed out after {HOOK_TIMEOUT:.0f}s", code="LB_HOOK_TIMEOUT",
                            advice="Check the hook command; the post hook (thaw) ran anyway.") from None
    if rc != 0:
        raise LifeboatError(f"bookmark hook {cmd!r} exited with {rc}", code="LB_HOOK_FAILED",
                            advice="Fix the hook command; no app-consistent point was made.")


def _remote_error(err: dict[str, Any]) -> LifeboatError:
    from .. import errors
    code = err.get("code", "LB_ERROR")
    cls = next((c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, LifeboatError)
                and c.code == code), LifeboatError)
    return cls(err.get("message", "refused by the appliance"), code=code, advice=err.get("advice"))
