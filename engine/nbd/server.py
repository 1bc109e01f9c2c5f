"""An asyncio NBD server: fixed newstyle handshake, simple replies, strictly ordered request processing.

Lifeboat exposes disks (replicas, recovery points, drill clones) to real NBD clients (qemu, nbdcopy, nbdfuse, a
booting VM) through this server. Every command reaches the backend in exactly the order the client sent it,
because backends may capture writes as a replication stream. Requests of one connection are therefore handled
one at a time; speed comes from :class:`~engine.nbd.protocol.WireProtocol` (pipelined headers read in large
chunks, WRITE payloads received straight into their buffer) and from replies that are queued without waiting for
the peer unless the send buffer is high.

Bad input never crashes the server, never affects other connections and never changes data: malformed requests get
the error the spec asks for, and a client that breaks framing (bad magic, garbage handshake, absurd payload) is
disconnected. See ``doc/proto.md`` in github.com/NetworkBlockDevice/nbd for the protocol.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from engine.buffers import new_buffer
from engine.nbd import protocol as P

__all__ = ["NBDError", "BlockBackend", "NBDServer"]


class NBDError(OSError):
    """Raised by a backend to fail one request with a given errno (``EIO``, ``EINVAL``, ``ENOSPC``, ``EPERM``...).

    The client gets an error reply carrying that errno (mapped onto the values NBD allows) and the connection
    carries on. ``NBDError(errno.ENOSPC, "pool full")``.
    """


@runtime_checkable
class BlockBackend(Protocol):
    """What an export is. ``size`` may change between connections; each connection uses the size it negotiated.

    Raise :class:`NBDError` (or any ``OSError``) to fail a request. A backend whose ``write_zeroes`` also accepts a
    ``no_hole=True`` keyword may say so with a class attribute ``supports_no_hole = True``; the server then passes
    the client's NBD_CMD_FLAG_NO_HOLE through (otherwise the backend's ``write_zeroes`` is used as is).
    """

    size: int
    read_only: bool

    async def read(self, offset: int, length: int) -> bytes:
        """Return exactly ``length`` bytes at ``offset``."""
        ...

    async def write(self, offset: int, data: memoryview, fua: bool) -> None:
        """Write ``data`` at ``offset``; if ``fua``, it must be durable on return."""
        ...

    async def write_zeroes(self, offset: int, length: int, fua: bool) -> None:
        """Make the range read back as zeros (deallocating it is allowed)."""
        ...

    async def trim(self, offset: int, length: int) -> None:
        """Discard the range (a hint; afterwards its content is unspecified)."""
        ...

    async def flush(self) -> None:
        """Make every write that has completed durable."""
        ...


class _Disconnect(Exception):
    """The client broke the protocol badly enough that the only safe answer is to drop the connection."""


@dataclass(slots=True)
class _Export:
    name: str
    backend: BlockBackend
    size: int
    flags: int


_HANDSHAKE_FLAGS = P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES
_MAX_OPTION_DATA = 64 * 1024             # far more than any valid option (names are <= 4096 bytes)
_MAX_OPTION_DISCARD = 1024 * 1024        # larger option payloads are a DoS attempt: disconnect
_ABSURD_SLACK = 64 * 1024 * 1024         # WRITE payload this far over max_request: disconnect, don't even discard
_WRITE_HIGH = 8 * 1024 * 1024            # drain() waits only while this much reply data is queued
_SMALL_REPLY = 64 * 1024                 # below this, header and data go out as one buffer (one send syscall)
_HELD_REPLIES = 64                       # data-less replies held back at most, to go out in one send


_payload_buffer = new_buffer   # see engine/buffers.py

# Flags each command accepts (FUA is valid on every command once SEND_FUA is advertised, per the spec).
_ALLOWED_FLAGS = {
    P.CMD_READ: P.CMD_FLAG_FUA,
    P.CMD_WRITE: P.CMD_FLAG_FUA,
    P.CMD_FLUSH: P.CMD_FLAG_FUA,
    P.CMD_TRIM: P.CMD_FLAG_FUA,
    P.CMD_WRITE_ZEROES: P.CMD_FLAG_FUA | P.CMD_FLAG_NO_HOLE,
}


class NBDServer:
    """Serve a set of named exports over NBD.

    ``exports`` is a mapping of name -> backend, or a callable returning one (called at every lookup, so exports
    can come and go while the server runs). The empty name ("default export") selects the only export when there
    is exactly one. With ``ssl_context`` the server runs in FORCEDTLS mode: clients must use NBD_OPT_STARTTLS
    before anything else. ``max_request`` bounds READ/WRITE/zero/trim lengths (advertised as the maximum block
    size). ``log`` is a ``logging.Logger`` (default: this module's logger).
    """

    def __init__(self, exports: Callable[[], Mapping[str, BlockBackend]] | Mapping[str, BlockBackend], *,
                 ssl_context: ssl.SSLContext | None = None, max_request: int = 32 * 1024 * 1024,
                 name: str = "nbd", log: logging.Logger | None = None, handshake_timeout: float = 30.0) -> None:
        if not 4096 <= max_request <= 0xFFFFFFFF:
            raise ValueError("max_request must be between 4096 and 2**32-1 bytes")
        self._exports = exports
        self.ssl_context = ssl_context
        self.max_request = max_request
        self.name = name
        self.log = log or logging.getLogger(__name__)
        self.handshake_timeout = handshake_timeout
        self._server: asyncio.base_events.Server | None = None
        self._address: tuple[str, int] | None = None
        self._handlers: dict[asyncio.Task[None], P.WireProtocol] = {}
        self._closing = False

    # -- lifecycle --------------------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen on ``host:port`` (0 = any free port) and return the bound ``(host, port)``."""
        if self._server is not None:
            raise RuntimeError("server already started")
        self._closing = False
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: P.WireProtocol(self._on_connect), host, port,
                                                reuse_address=True)
        sockname = self._server.sockets[0].getsockname()
        self._address = (sockname[0], sockname[1])
        self.log.info("%s: NBD server listening on %s:%d", self.name, *self._address)
        return self._address

    async def stop(self, grace: float = 5.0) -> None:
        """Stop listening, close every client connection and wait for their handlers.

        Connections are closed gracefully first (queued replies flushed, the request being processed finishes);
        whatever is still running after ``grace`` seconds is aborted and cancelled.
        """
        self._closing = True
        if self._server is not None:
            self._server.close()
        handlers = list(self._handlers.items())
        for _, wire in handlers:
            wire.close()
        if handlers:
            _, pending = await asyncio.wait([task for task, _ in handlers], timeout=grace)
            for task, wire in handlers:
                if task in pending:  # stuck on a backend call or on a peer that stopped reading
                    wire.abort()
                    task.cancel()
            await asyncio.gather(*(task for task, _ in handlers), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self.log.info("%s: NBD server stopped", self.name)

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``; raises if the server is not started."""
        if self._address is None:
            raise RuntimeError("server not started")
        return self._address

    @property
    def connections(self) -> int:
        """Number of open client connections."""
        return len(self._handlers)

    def _lookup(self, name: str) -> BlockBackend | None:
        exports = self._exports() if callable(self._exports) else self._exports
        backend = exports.get(name)
        if backend is None and name == "" and len(exports) == 1:
            backend = next(iter(exports.values()))
        return backend

    def _export_names(self) -> list[str]:
        exports = self._exports() if callable(self._exports) else self._exports
        return list(exports)

    # -- connection -------------------------------------------------------------------------------------------

    def _on_connect(self, wire: P.WireProtocol) -> None:
        """``connection_made`` callback: start the connection's handler task."""
        if self._closing:
            wire.abort()
            return
        wire.transport.set_write_buffer_limits(high=_WRITE_HIGH)  # type: ignore[union-attr]
        task = asyncio.get_running_loop().create_task(self._serve(wire))
        self._handlers[task] = wire

    async def _serve(self, wire: P.WireProtocol) -> None:
        task = asyncio.current_task()
        peer = wire.transport.get_extra_info("peername")  # type: ignore[union-attr]
        try:
            conn = _Connection(self, wire, f"{self.name} {peer}")
            export = await conn.handshake()
            if export is not None:
                self.log.info("%s %s: serving export %r (%d bytes, flags 0x%x)", self.name, peer, export.name,
                              export.size, export.flags)
                await conn.transmission(export)
        except _Disconnect as e:
            self.log.warning("%s %s: disconnecting client: %s", self.name, peer, e)
        except TimeoutError:
            self.log.warning("%s %s: handshake timed out", self.name, peer)
        except (asyncio.IncompleteReadError, OSError) as e:  # peer went away, reset, TLS failure...
            self.log.debug("%s %s: connection ended: %r", self.name, peer, e)
        except asyncio.CancelledError:
            pass  # stop() gave up waiting for this one; the transport is already aborted
        except Exception:  # a bug in this module must cost one connection, never the server
            self.log.exception("%s %s: unexpected error, connection dropped", self.name, peer)
        finally:
            self._handlers.pop(task, None)  # type: ignore[arg-type]
            # close() flushes queued replies (e.g. the error reply before a protocol disconnect) then closes.
            wire.close()


class _Connection:
    """One client's session: handshake, then the request loop."""

    def __init__(self, server: NBDServer, wire: P.WireProtocol, tag: str) -> None:
        self.server = server
        self.wire = wire
        self.tag = tag
        self.log = server.log
        self.tls = False

    # -- handshake --------------------------------------------------------------------------------------------

    def _reply(self, opt: int, rep: int, data: bytes = b"") -> None:
        self.wire.write(P.OPTION_REPLY.pack(P.REPLY_MAGIC, opt, rep, len(data)) + data)

    def _error(self, opt: int, rep: int, message: str) -> None:
        self._reply(opt, rep, message.encode()[: P.MAX_STRING])

    async def handshake(self) -> _Export | None:
        """Run option haggling; return the export to serve, or ``None`` when the client aborted."""
        server, wire = self.server, self.wire
        async with asyncio.timeout(server.handshake_timeout):
            wire.write(P.HANDSHAKE.pack(P.NBDMAGIC, P.IHAVEOPT, _HANDSHAKE_FLAGS))
            (cflags,) = P.CLIENT_FLAGS.unpack(await wire.readexactly(P.CLIENT_FLAGS.size))
            if cflags & ~P.CLIENT_FLAGS_KNOWN:
                raise _Disconnect(f"unknown client flags 0x{cflags:x}")
            no_zeroes = bool(cflags & P.FLAG_C_NO_ZEROES)
            # Clients that do not set C_FIXED_NEWSTYLE are served fixed newstyle anyway (the spec allows it);
            # they only ever send EXPORT_NAME.
            while True:
                magic, opt, length = P.OPTION_HEADER.unpack(await wire.readexactly(P.OPTION_HEADER.size))
                if magic != P.IHAVEOPT:
                    raise _Disconnect(f"bad option magic 0x{magic:x}")
                if length > _MAX_OPTION_DATA:
                    if length > _MAX_OPTION_DISCARD or opt == P.OPT_EXPORT_NAME:
                        raise _Disconnect(f"option {opt} with {length} bytes of data")
                    await wire.skip(length)
                    self._error(opt, P.REP_ERR_TOO_BIG, "option data too large")
                    continue
                data = await wire.readexactly(length)
                if server.ssl_context is not None and not self.tls and opt not in (P.OPT_STARTTLS, P.OPT_ABORT):
                    if opt == P.OPT_EXPORT_NAME:  # cannot be answered with an error: the spec says hang up
                        raise _Disconnect("NBD_OPT_EXPORT_NAME before TLS")
                    self._error(opt, P.REP_ERR_TLS_REQD, "TLS is required: use NBD_OPT_STARTTLS first")
                    continue
                if server._closing and opt != P.OPT_ABORT:
                    self._error(opt, P.REP_ERR_SHUTDOWN, "server is shutting down")
                    continue
                if opt == P.OPT_EXPORT_NAME:
                    return self._opt_export_name(data, no_zeroes)
                if opt == P.OPT_ABORT:
                    self._reply(opt, P.REP_ACK)
                    return None
                if opt == P.OPT_LIST:
                    self._opt_list(data)
                elif opt in (P.OPT_INFO, P.OPT_GO):
                    export = self._opt_info_go(opt, data)
                    if export is not None and opt == P.OPT_GO:
                        return export
                elif opt == P.OPT_STARTTLS:
                    await self._opt_starttls(data)
                else:  # STRUCTURED_REPLY, meta contexts, extended headers, unknown: simple replies only
                    self._error(opt, P.REP_ERR_UNSUP, f"option {opt} is not supported")
                await wire.drain()

    def _make_export(self, name: str) -> _Export | None:
        backend = self.server._lookup(name)
        if backend is None:
            return None
        flags = (P.FLAG_HAS_FLAGS | P.FLAG_SEND_FLUSH | P.FLAG_SEND_FUA | P.FLAG_SEND_TRIM
                 | P.FLAG_SEND_WRITE_ZEROES)  # never CAN_MULTI_CONN: ordering is per connection only
        try:
            if backend.read_only:
                flags |= P.FLAG_READ_ONLY
            size = int(backend.size)
            if not 0 <= size < 1 << 63:
                raise ValueError(f"invalid size {size}")
        except Exception as e:  # a broken export is unavailable; it must not take the connection down with it
            self.log.warning("%s: export %r is unavailable: %r", self.tag, name, e)
            return None
        return _Export(name, backend, size, flags)

    def _opt_export_name(self, data: bytes, no_zeroes: bool) -> _Export:
        try:
            name = data.decode("utf-8")
        except UnicodeDecodeError:
            raise _Disconnect("export name is not UTF-8") from None
        export = self._make_export(name)
        if export is None:  # NBD_OPT_EXPORT_NAME has no error reply: the spec mandates a disconnect
            raise _Disconnect(f"unknown export {name!r}")
        reply = P.EXPORT_NAME_REPLY.pack(export.size, export.flags)
        self.wire.write(reply if no_zeroes else reply + P.EXPORT_NAME_PAD)
        return export

    def _opt_list(self, data: bytes) -> None:
        if data:
            self._error(P.OPT_LIST, P.REP_ERR_INVALID, "NBD_OPT_LIST takes no data")
            return
        for name in self.server._export_names():
            raw = name.encode("utf-8")
            self._reply(P.OPT_LIST, P.REP_SERVER, struct.pack(">I", len(raw)) + raw)
        self._reply(P.OPT_LIST, P.REP_ACK)

    def _opt_info_go(self, opt: int, data: bytes) -> _Export | None:
        # Data: u32 name length, name, u16 number of info requests, u16 each.
        if len(data) < 6:
            self._error(opt, P.REP_ERR_INVALID, "option data too short")
            return None
        (name_len,) = struct.unpack_from(">I", data)
        if name_len > len(data) - 6:
            self._error(opt, P.REP_ERR_INVALID, "export name length exceeds option data")
            return None
        (n_req,) = struct.unpack_from(">H", data, 4 + name_len)
        if len(data) != 6 + name_len + 2 * n_req:
            self._error(opt, P.REP_ERR_INVALID, "information request count does not match option length")
            return None
        requests = struct.unpack_from(f">{n_req}H", data, 6 + name_len)
        try:
            name = data[4:4 + name_len].decode("utf-8")
        except UnicodeDecodeError:
            self._error(opt, P.REP_ERR_INVALID, "export name is not UTF-8")
            return None
        export = self._make_export(name)
        if export is None:
            self._error(opt, P.REP_ERR_UNKNOWN, f"no export named {name!r}")
            return None
        self._reply(opt, P.REP_INFO, P.INFO_EXPORT_PAYLOAD.pack(P.INFO_EXPORT, export.size, export.flags))
        # Always advertise block sizes: our maximum is tighter than the spec's default, and clients that did
        # not ask may still use it (libnbd and qemu both ask anyway).
        self._reply(opt, P.REP_INFO, P.INFO_BLOCK_SIZE_PAYLOAD.pack(P.INFO_BLOCK_SIZE, 1, 4096,
                                                                    self.server.max_request))
        if P.INFO_NAME in requests:
            self._reply(opt, P.REP_INFO, struct.pack(">H", P.INFO_NAME) + export.name.encode("utf-8"))
        self._reply(opt, P.REP_ACK)
        return export

    async def _opt_starttls(self, data: bytes) -> None:
        ctx = self.server.ssl_context
        if ctx is None:
            self._error(P.OPT_STARTTLS, P.REP_ERR_UNSUP, "TLS is not configured")
        elif self.tls:
            self._error(P.OPT_STARTTLS, P.REP_ERR_INVALID, "TLS is already active")
        elif data:
            self._error(P.OPT_STARTTLS, P.REP_ERR_INVALID, "NBD_OPT_STARTTLS takes no data")
        else:
            self._reply(P.OPT_STARTTLS, P.REP_ACK)
            await self.wire.start_tls(ctx)  # the ACK goes out first; a failed TLS handshake ends the session
            self.tls = True

    # -- transmission -----------------------------------------------------------------------------------------

    async def transmission(self, export: _Export) -> None:
        """Serve requests one at a time, in order, until NBD_CMD_DISC or the connection ends.

        Replies without data (every request but READ) are held back while further requests have already arrived,
        and go out together, in order, in one send: before the connection waits for the client, before a READ's
        reply, before a FLUSH, or once _HELD_REPLIES are held. Each is still sent only after its request is done.
        """
        wire = self.wire
        send = wire.transport.write  # type: ignore[union-attr]  # after STARTTLS this is the TLS transport
        held: list[bytes] = []

        def send_held() -> None:
            if held:
                send(held[0] if len(held) == 1 else b"".join(held))
                held.clear()

        wire.on_wait = send_held
        try:
            await self._requests(export, held, send_held)
        finally:
            wire.on_wait = None
            send_held()

    async def _requests(self, export: _Export, held: list[bytes], send_held: Callable[[], None]) -> None:
        wire = self.wire
        readexactly = wire.readexactly
        send = wire.transport.write  # type: ignore[union-attr]
        unpack = P.REQUEST.unpack
        reply = P.SIMPLE_REPLY.pack
        MAGIC, RMAGIC = P.REQUEST_MAGIC, P.SIMPLE_REPLY_MAGIC
        backend, size, read_only = export.backend, export.size, bool(export.flags & P.FLAG_READ_ONLY)
        max_req = self.server.max_request
        no_hole_ok = bool(getattr(backend, "supports_no_hole", False))
        EINVAL, ENOSPC, EPERM = P.NBD_EINVAL, P.NBD_ENOSPC, P.NBD_EPERM
        new_payload = _payload_buffer

        while True:
            magic, flags, cmd, handle, offset, length = unpack(await readexactly(28))
            if magic != MAGIC:
                raise _Disconnect(f"bad request magic 0x{magic:x}")
            err = 0
            payload: bytearray | None = None
            if cmd == P.CMD_WRITE:
                # The payload must be consumed whatever the verdict, or framing is lost.
                if length > max_req:
                    if length > max_req + _ABSURD_SLACK:
                        raise _Disconnect(f"WRITE of {length} bytes (limit {max_req})")
                    await wire.skip(length)
                    err = EINVAL
                else:
                    # A fresh buffer per request: the backend may keep a reference to the data it is given.
                    # (Not zero-filled: read_into fills it completely, or the request is abandoned.)
                    payload = new_payload(length)
                    await wire.read_into(memoryview(payload))
            elif cmd == P.CMD_DISC:
                self.log.debug("%s: client disconnected (NBD_CMD_DISC)", self.tag)
                return
            allowed = _ALLOWED_FLAGS.get(cmd)
            if err:
                pass
            elif allowed is None or flags & ~allowed:
                err = EINVAL  # unknown command (CACHE, BLOCK_STATUS... are not advertised) or flag
            elif cmd == P.CMD_FLUSH:
                send_held()   # earlier replies need not wait for the flush
                err = await self._call("FLUSH", backend.flush)
            elif length > max_req:
                err = EINVAL
            elif cmd != P.CMD_READ and read_only:
                err = EPERM
            elif offset + length > size:
                err = ENOSPC if cmd in (P.CMD_WRITE, P.CMD_WRITE_ZEROES) else EINVAL  # per the spec
            elif length == 0:
                pass  # the spec leaves zero-length requests unspecified; succeed without touching the backend
            elif cmd == P.CMD_READ:
                try:
                    data = await backend.read(offset, length)
                    if len(data) != length:
                        raise NBDError(errno.EIO, f"backend returned {len(data)} bytes for a {length}-byte read")
                except Exception as e:
                    err = self._failure(e, "READ")
                else:
                    send_held()   # replies leave in request order
                    if length < _SMALL_REPLY:
                        send(b"".join((reply(RMAGIC, 0, handle), data)))  # any bytes-like the backend returned
                    else:
                        send(reply(RMAGIC, 0, handle))
                        send(data)
                    if wire.write_paused:
                        await wire.drain()
                    continue
            elif cmd == P.CMD_WRITE:
                assert payload is not None
                err = await self._call("WRITE", backend.write, offset, memoryview(payload),
                                       bool(flags & P.CMD_FLAG_FUA))
            elif cmd == P.CMD_WRITE_ZEROES:
                fua = bool(flags & P.CMD_FLAG_FUA)
                if no_hole_ok and flags & P.CMD_FLAG_NO_HOLE:
                    err = await self._call("WRITE_ZEROES", backend.write_zeroes, offset, length, fua, no_hole=True)
                else:
                    err = await self._call("WRITE_ZEROES", backend.write_zeroes, offset, length, fua)
            elif cmd == P.CMD_TRIM:
                err = await self._call("TRIM", backend.trim, offset, length)
                if not err and flags & P.CMD_FLAG_FUA:  # FUA on TRIM: the discard must be durable too
                    err = await self._call("FLUSH", backend.flush)
            held.append(reply(RMAGIC, err, handle))
            if len(held) >= _HELD_REPLIES:
                send_held()
            if err:
                self.log.debug("%s: %s offset=%d length=%d flags=0x%x -> error %d", self.tag,
                               P.CMD_NAMES.get(cmd, cmd), offset, length, flags, err)
            if wire.write_paused:
                send_held()
                await wire.drain()

    async def _call(self, what: str, fn: Callable[..., Awaitable[None]], *args: object,
                    **kwargs: object) -> int:
        """Call and await a backend method; return 0 or the NBD error to reply with.

        The call itself is inside the ``try``: a backend can fail before its coroutine starts (bad signature).
        """
        try:
            await fn(*args, **kwargs)
        except Exception as e:  # CancelledError is a BaseException and passes through
            return self._failure(e, what)
        return 0

    def _failure(self, e: Exception, what: str) -> int:
        """Log a backend failure and choose the errno for the reply."""
        if isinstance(e, OSError):  # NBDError included: the backend chose the errno
            self.log.debug("%s: backend %s failed: %s", self.tag, what, e)
            return P.nbd_errno(e.errno)
        self.log.error("%s: backend %s raised %r", self.tag, what, e, exc_info=e)
        return P.NBD_EIO

