"""The agent's replication link to the process server: mutual TLS over memory BIOs, owned by one I/O thread, and
the liveness rule that tells a slow link from a stalled one (RESYNC.md §8)."""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import ssl
import threading
import time
from typing import Any

from .. import net, platform
from ..errors import ProtocolError
from ..wire import HEAD, Frame, frame_header, parse_head

__all__ = ["Link", "Liveness", "bio_handshake"]


def bio_handshake(raw: socket.socket, tls: ssl.SSLObject, bio_in: ssl.MemoryBIO, bio_out: ssl.MemoryBIO) -> None:
    """Complete the TLS handshake of ``tls`` (over memory BIOs) on the blocking socket ``raw`` (bounded by its
    timeout), either side."""
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            if bio_out.pending:
                raw.sendall(bio_out.read())
            data = raw.recv(65536)
            if not data:
                raise ConnectionResetError("the peer closed the connection during the TLS handshake") from None
            bio_in.write(data)
    if bio_out.pending:
        raw.sendall(bio_out.read())


class Link:
    """The replication connection (mutual TLS), its socket owned by one I/O thread.

    Encrypting and sending are the largest per-byte costs of shipping; on the event loop they would compete with the
    NBD export for the loop's one thread. Here the loop only queues buffers (payloads stay the very memoryviews the
    capture holds: no copies) and the thread encrypts and sends them, in the order queued, with the GIL released
    for the work. The same thread receives and parses frames and hands them to the loop in order: one thread owns
    the TLS connection, as OpenSSL requires.

    TLS runs over memory BIOs (``SSLObject``), not an ``SSLSocket``: an ``SSLSocket`` makes one ``write`` system call
    per 16 KiB TLS record (70,000 a GiB, the agent's largest system-time cost); here up to a megabyte of records
    is encrypted into the outgoing BIO and handed to the kernel with one ``send``.
    """

    CHUNK = 1 << 20      # largest piece handed to one SSL_write
    LOW = 1 << 20        # drain() returns once at most this much is queued
    RAW_HIGH = 2 << 20   # encrypted bytes waiting for the socket above which no more is encrypted

    def __init__(self, sock: socket.socket, tls: ssl.SSLObject, bio_in: ssl.MemoryBIO, bio_out: ssl.MemoryBIO,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.sock = sock
        self.tls, self._bio_in, self._bio_out = tls, bio_in, bio_out
        self._raw: collections.deque[memoryview] = collections.deque()   # encrypted, not yet accepted by the kernel
        self._raw_bytes = 0
        self.loop = loop
        self._fd = sock.fileno()
        self._out: collections.deque[bytes | memoryview] = collections.deque()
        self._lock = threading.Lock()
        self.queued = 0                  # bytes queued here and not yet handed to TLS
        self.received = 0                # bytes read from the socket (a large frame arriving is progress too)
        self._poked = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._frames: asyncio.Queue[tuple[Frame, bytes] | None] = asyncio.Queue()
        self._space = asyncio.Event()
        self._drain_waiting = False
        self.error: BaseException | None = None
        self._closing = False
        sock.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="agent-link", daemon=True)
        self._thread.start()

    @classmethod
    async def open(cls, host: str, port: int, ctx: ssl.SSLContext, timeout: float) -> Link:
        """Connect (through :mod:`engine.net`, which applies the egress policy) and complete the TLS handshake (in a
        worker thread, within ``timeout``). Only the connection is made there: TLS then runs over memory BIOs here."""
        def connect() -> tuple[socket.socket, ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
            raw = net.open_connection(host, port, timeout=timeout, purpose="replication")
            try:
                bio_in, bio_out = ssl.MemoryBIO(), ssl.MemoryBIO()
                tls = ctx.wrap_bio(bio_in, bio_out, server_hostname=host)
                bio_handshake(raw, tls, bio_in, bio_out)
                return raw, tls, bio_in, bio_out
            except BaseException:
                raw.close()
                raise

        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, connect)
        try:
            sock, tls, bio_in, bio_out = await asyncio.shield(fut)
        except asyncio.CancelledError:
            def close_late(f: asyncio.Future[Any]) -> None:
                if not f.cancelled() and f.exception() is None:
                    f.result()[0].close()
            fut.add_done_callback(close_late)   # nobody will use the connection the thread makes
            raise
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return cls(sock, tls, bio_in, bio_out, loop)

    # event-loop side -----------------------------------------------------------------------------------------
    def write(self, pieces: list[bytes | memoryview]) -> None:
        """Queue ``pieces`` to be sent in order (never blocks). After a failure, dropped: the receiver raises."""
        if self.error is not None or self._closing:
            return
        n = sum(len(p) for p in pieces)
        with self._lock:
            self._out.extend(pieces)
            self.queued += n
            poke, self._poked = not self._poked, True
        if poke:
            self._poke()

    def write_frame(self, kind: Frame, body: bytes | bytearray | memoryview) -> None:
        head = frame_header(kind, len(body))
        self.write([head + bytes(body)] if len(body) < 65536 else [head, memoryview(body)])

    def write_json(self, kind: Frame, obj: dict[str, Any]) -> None:
        self.write_frame(kind, json.dumps(obj, separators=(",", ":")).encode())

    async def drain(self) -> None:
        """Wait until at most LOW bytes are queued; raise if the connection failed."""
        while True:
            if self.error is not None:
                raise self.error
            with self._lock:
                if self.queued <= self.LOW:
                    return
                self._space.clear()
                self._drain_waiting = True
            await self._space.wait()

    async def read_frame(self) -> tuple[Frame, bytes]:
        item = await self._frames.get()
        if item is None:
            self._frames.put_nowait(None)   # every later read fails the same way
            assert self.error is not None
            raise self.error
        return item

    def unsent(self) -> int:
        """Bytes not yet on the wire: queued here, or sent but not yet acknowledged by the peer's TCP."""
        n = self.queued + self._raw_bytes
        if self.error is not None:   # the thread closes the socket: its descriptor may be reused
            return n
        return n + platform.unsent_bytes(self._fd)   # unsent bytes in the kernel (0 where it cannot tell)

    def close(self) -> None:
        """Stop the thread and close the connection (queued data is dropped)."""
        self._closing = True
        self._poke()

    def _poke(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:   # full (the thread is already awake) or closed
            pass

    # I/O thread ------------------------------------------------------------------------------------------------
    def _run(self) -> None:
        sock = self.sock
        poller = platform.new_poller()
        poller.register(self._wake_r.fileno(), platform.POLLIN)
        poller.register(self._fd, platform.POLLIN)
        rbuf = bytearray()
        writing = False
        try:
            while not self._closing:
                with self._lock:
                    want_out = bool(self._raw) or bool(self._out)
                if want_out != writing:
                    writing = want_out
                    poller.modify(self._fd, platform.POLLIN | (platform.POLLOUT if writing else 0))
                poller.poll(1000)
                with self._lock:
                    self._poked = False
                try:
                    while self._wake_r.recv(4096):
                        pass
                except BlockingIOError:
                    pass
                if self._closing:
                    break
                self._receive(rbuf)
                self._send()
        except BaseException as exc:  # noqa: BLE001 -- handed to the loop, which raises it in the session
            self._fail(exc)
        else:
            self._fail(ConnectionResetError("replication link closed"))
        finally:
            for s in (sock, self._wake_r, self._wake_w):
                try:
                    s.close()
                except OSError:
                    pass

    def _receive(self, rbuf: bytearray) -> None:
        sock = self.sock
        got = eof = False
        while True:
            try:
                data = sock.recv(256 * 1024)
            except BlockingIOError:
                break
            if not data:
                eof = True
                break
            self._bio_in.write(data)
            self.received += len(data)
            got = True
        if got:
            self._decrypt(rbuf)
        if eof:
            if rbuf:
                raise ProtocolError("truncated frame")
            raise ConnectionResetError("peer closed the connection")

    def _decrypt(self, rbuf: bytearray) -> None:
        tls = self.tls
        while True:
            try:
                chunk = tls.read(256 * 1024)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                raise ConnectionResetError("peer closed the TLS session") from None
            if not chunk:
                raise ConnectionResetError("peer closed the TLS session")
            rbuf += chunk
        if self._bio_out.pending:   # TLS may answer on its own (key updates)
            self._queue_raw(self._bio_out.read())
        while len(rbuf) >= HEAD.size:
            kind, length = parse_head(rbuf)
            if len(rbuf) < HEAD.size + length:
                break
            body = bytes(rbuf[HEAD.size:HEAD.size + length])
            del rbuf[:HEAD.size + length]
            self._to_loop(self._frames.put_nowait, (kind, body))

    def _queue_raw(self, data: bytes) -> None:
        if data:
            self._raw.append(memoryview(data))
            self._raw_bytes += len(data)

    def _send(self) -> None:
        """Hand encrypted bytes to the kernel; encrypt what is queued, about a megabyte at a time, while the
        socket takes it."""
        sock, tls, out = self.sock, self.tls, self._bio_out
        while True:
            raw = self._raw
            while raw:
                try:
                    n = sock.send(raw[0])
                except BlockingIOError:
                    return                 # socket full: the rest once it is writable
                self._raw_bytes -= n
                if n < len(raw[0]):
                    raw[0] = raw[0][n:]
                    if self._raw_bytes >= self.RAW_HIGH:
                        return
                    break
                raw.popleft()
            encrypted = 0
            while encrypted < self.CHUNK:
                with self._lock:
                    if not self._out:
                        if self._drain_waiting:
                            self._drain_waiting = False
                            self._to_loop(self._space.set)
                        break
                    piece = self._out[0]
                    room = self.CHUNK - encrypted
                    if len(piece) > room:
                        mv = memoryview(piece)
                        piece, self._out[0] = mv[:room], mv[room:]
                    else:
                        self._out.popleft()
                tls.write(piece)           # into the memory BIO: never blocks; the GIL is released meanwhile
                encrypted += len(piece)
                with self._lock:
                    self.queued -= len(piece)
                    if self._drain_waiting and self.queued <= self.LOW:
                        self._drain_waiting = False
                        self._to_loop(self._space.set)
            if out.pending:
                self._queue_raw(out.read())
            if not encrypted and not self._raw:
                return

    def _to_loop(self, fn: Any, *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:   # the loop is closed: nobody is listening any more
            pass

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self._to_loop(self._frames.put_nowait, None)
        self._to_loop(self._space.set)


class Liveness:
    """Tracks whether a link makes progress: frames received, or our queued bytes draining into the network."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.last = time.monotonic()
        self.queued = link.unsent()

    def progress(self) -> None:
        self.last = time.monotonic()

    def stalled_for(self) -> float:
        q = self.link.unsent()
        if q < self.queued:
            self.last = time.monotonic()
        self.queued = q
        return time.monotonic() - self.last
