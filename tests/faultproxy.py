"""A fault-injecting TCP proxy for integration tests (asyncio, no third-party tool).

Put it between two roles and break the link on purpose::

    proxy = FaultProxy("127.0.0.1", server_port)
    port = await proxy.start()          # clients connect here instead
    proxy.delay(0.05)                   # every chunk forwarded 50 ms late, both directions (latency, not throughput)
    proxy.bandwidth(1_000_000)          # bytes/s per direction, shared by all connections (None = unlimited)
    proxy.drop(0.3)                     # new connections closed at once (RST) with this probability
    proxy.cut()                         # reset every open connection now
    proxy.stall(2.0)                    # nothing forwarded for 2 s, connections stay open (None = until resume())
    proxy.stall(None, existing_only=True)   # a half-dead link: open connections silent, new ones work
    proxy.resume()
    await proxy.down()                  # refuse all connections (listener closed) and cut the open ones
    await proxy.up()                    # listen again on the same port (down/up are coroutines, the rest not)
    proxy.stats()                       # bytes each way, connections accepted / dropped / cut / active
    await proxy.stop()

Each direction of a connection is a reader task and a writer task joined by a bounded queue: when the receiver is
slow (or the link stalled or throttled), the queue fills, the reader stops reading and TCP flow control pushes back
on the sender. Nothing is buffered without bound. Faults can be switched at any time while traffic flows.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from typing import Any

__all__ = ["FaultProxy"]


class _Gate:
    """Open, or closed until a deadline or an explicit open()."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def closed(self) -> bool:
        return not self._open.is_set()

    def close(self, seconds: float | None) -> None:
        self._cancel_timer()
        self._open.clear()
        if seconds is not None:
            self._timer = asyncio.get_running_loop().call_later(max(0.0, seconds), self.open)

    def open(self) -> None:
        self._cancel_timer()
        self._open.set()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def wait(self) -> None:
        await self._open.wait()


class _Bucket:
    """Bandwidth limit for one direction: each piece reserves its slot on a shared timeline."""

    def __init__(self) -> None:
        self.rate: float | None = None
        self._next_free = 0.0

    def set(self, rate: float | None) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("bandwidth must be positive (or None for unlimited)")
        self.rate = rate
        self._next_free = 0.0

    def piece(self, chunk: int) -> int:
        """Largest piece to send in one go (~50 ms worth), so a limit is smooth and changes apply quickly."""
        if not self.rate:
            return chunk
        return max(256, min(chunk, int(self.rate / 20)))

    async def take(self, n: int) -> None:
        if not self.rate:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self._next_free)
        self._next_free = start + n / self.rate
        if start > now:
            await asyncio.sleep(start - now)


class _Link:
    """One proxied connection: client side, server side, its own stall gate, the task that runs it."""

    def __init__(self, client: asyncio.StreamWriter, task: asyncio.Task) -> None:
        self.client = client
        self.server: asyncio.StreamWriter | None = None
        self.task = task
        self.gate = _Gate()
        self.cut = False

    def abort(self) -> None:
        for w in (self.client, self.server):
            if w is not None:
                _reset(w)
        self.task.cancel()


def _reset(w: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0): the peer fails at once, as on a broken link."""
    transport = w.transport
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int = 0,
                 chunk_size: int = 64 * 1024, queue_chunks: int = 4, connect_timeout: float = 5.0,
                 seed: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = port
        self.chunk_size = chunk_size
        self.queue_chunks = queue_chunks
        self.connect_timeout = connect_timeout
        self._rng = random.Random(seed)
        self._server: asyncio.base_events.Server | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task] = set()
        self._gate: _Gate | None = None
        self._bw = {"up": _Bucket(), "down": _Bucket()}
        self._delay = 0.0
        self._drop = 0.0
        self._down = False
        self._stopping = False
        # counters
        self.bytes_up = 0          # client → target, forwarded
        self.bytes_down = 0        # target → client, forwarded
        self.accepted = 0          # connections forwarded to the target
        self.dropped = 0           # connections closed at once by drop()
        self.cut_count = 0         # open connections reset by cut() or down()
        self.target_failures = 0   # connections closed because the target could not be reached

    # lifecycle -------------------------------------------------------------------------------------------
    async def start(self) -> int:
        self._gate = _Gate()
        self._stopping = False
        await self._listen()
        return self.port

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening, reset every connection, and wait until every task of the proxy has ended."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()
        for t in list(self._handlers):
            t.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._gate is not None:
            self._gate.open()

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # faults ----------------------------------------------------------------------------------------------
    def delay(self, seconds: float) -> None:
        """Forward each chunk ``seconds`` after it was read, in both directions (added latency)."""
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        self._delay = float(seconds)

    def bandwidth(self, bytes_per_s: float | None) -> None:
        """Limit each direction to ``bytes_per_s`` (shared by all connections); None removes the limit."""
        for b in self._bw.values():
            b.set(bytes_per_s)

    def drop(self, probability: float) -> None:
        """Close each new connection at once (RST, before anything is forwarded) with this probability."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        self._drop = float(probability)

    def cut(self) -> int:
        """Reset every open connection now; returns how many were cut."""
        links = list(self._links)
        for link in links:
            if not link.cut:
                link.cut = True
                self.cut_count += 1
            link.abort()
        return len(links)

    def stall(self, seconds: float | None = None, *, existing_only: bool = False) -> None:
        """Forward nothing in either direction for ``seconds`` (None: until resume()); connections stay open.

        With ``existing_only`` only the connections open now go silent (a half-dead link: a NAT entry or
        firewall state lost); new connections work.
        """
        assert self._gate is not None, "start() the proxy first"
        if existing_only:
            for link in self._links:
                link.gate.close(seconds)
        else:
            self._gate.close(seconds)

    def resume(self) -> None:
        """End every stall."""
        if self._gate is not None:
            self._gate.open()
        for link in self._links:
            link.gate.open()

    @property
    def stalled(self) -> bool:
        return self._gate is not None and self._gate.closed

    async def down(self) -> None:
        """Refuse all connections (the listener is closed: connect() gets ECONNREFUSED) and cut open ones."""
        self._down = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self.cut()
        if server is not None:
            await server.wait_closed()   # (on 3.12+ this also waits for the connections just cut)

    async def up(self) -> None:
        """Accept connections again, on the same port."""
        self._down = False
        if self._server is None and not self._stopping:
            await self._listen()

    @property
    def is_down(self) -> bool:
        return self._down

    # counters --------------------------------------------------------------------------------------------
    @property
    def active(self) -> int:
        return len(self._links)

    @property
    def bytes_total(self) -> int:
        return self.bytes_up + self.bytes_down

    def stats(self) -> dict[str, Any]:
        return {"bytes_up": self.bytes_up, "bytes_down": self.bytes_down, "accepted": self.accepted,
                "dropped": self.dropped, "cut": self.cut_count, "active": self.active,
                "target_failures": self.target_failures}

    # forwarding ------------------------------------------------------------------------------------------
    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._stopping or self._down or (self._drop and self._rng.random() < self._drop):
            if not self._stopping and not self._down:
                self.dropped += 1
            _reset(cwriter)
            return
        self._handlers.add(task)
        link = _Link(cwriter, task)
        self._links.add(link)
        self.accepted += 1
        failed = False
        try:
            try:
                sreader, swriter = await asyncio.wait_for(asyncio.open_connection(*self.target),
                                                          self.connect_timeout)
            except (OSError, TimeoutError):
                self.target_failures += 1
                failed = True
                return
            link.server = swriter
            if link.cut:   # cut while connecting
                return
            async with asyncio.TaskGroup() as tg:
                for reader, writer, direction in ((creader, swriter, "up"), (sreader, cwriter, "down")):
                    q: asyncio.Queue[bytes] = asyncio.Queue(self.queue_chunks)
                    tg.create_task(self._read(reader, q))
                    tg.create_task(self._write(link, writer, q, direction))
        except asyncio.CancelledError:
            pass
        except Exception:  # a reset or an error on one side: reset the other side too
            failed = True
        finally:
            self._links.discard(link)
            for w in (cwriter, link.server):
                if w is None or w.transport.is_closing():
                    continue
                if link.cut or failed:
                    _reset(w)
                else:
                    w.close()
            self._handlers.discard(task)

    async def _read(self, reader: asyncio.StreamReader, q: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await reader.read(self.chunk_size)
            await q.put((loop.time(), data))   # blocks when the writer is behind: backpressure
            if not data:
                return

    async def _write(self, link: _Link, writer: asyncio.StreamWriter, q: asyncio.Queue, direction: str) -> None:
        loop = asyncio.get_running_loop()
        bucket = self._bw[direction]
        while True:
            t_read, data = await q.get()
            # latency: re-evaluated while waiting, so a changed delay applies to chunks already queued
            while (wait := t_read + self._delay - loop.time()) > 0:
                await asyncio.sleep(min(wait, 0.05))
            if not data:
                await self._wait_flowing(link)
                if writer.can_write_eof():
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                return
            view = memoryview(data)
            pos = 0
            while pos < len(view):
                await self._wait_flowing(link)
                n = min(bucket.piece(self.chunk_size), len(view) - pos)
                await bucket.take(n)
                await self._wait_flowing(link)   # a stall that began while throttled
                writer.write(view[pos:pos + n])
                await writer.drain()
                pos += n
                if direction == "up":
                    self.bytes_up += n
                else:
                    self.bytes_down += n

    async def _wait_flowing(self, link: _Link) -> None:
        assert self._gate is not None
        while self._gate.closed or link.gate.closed:
            await (self._gate.wait() if self._gate.closed else link.gate.wait())
