"""NBD wire protocol: constants, struct layouts, and the buffered asyncio protocol that frames a connection.

Everything on the wire is big-endian ("network byte order") as the NBD specification
(github.com/NetworkBlockDevice/nbd, ``doc/proto.md``) requires. Only what Lifeboat's server speaks is defined,
plus the handful of option/command numbers it must recognise in order to refuse them properly.
:class:`WireProtocol` is the byte-level half of a connection (exact reads, zero-copy payload reads, write
back-pressure); the NBD logic lives in :mod:`engine.nbd.server`.
"""

from __future__ import annotations

import asyncio
import errno
import ssl
import struct
from collections.abc import Callable
from typing import Final

# --- Handshake -------------------------------------------------------------------------------------------------

NBDMAGIC: Final = 0x4E42444D41474943        # "NBDMAGIC"
IHAVEOPT: Final = 0x49484156454F5054        # "IHAVEOPT": newstyle magic, also prefixes every client option
REPLY_MAGIC: Final = 0x3E889045565A9        # option-reply magic

# Server handshake flags (16 bits)
FLAG_FIXED_NEWSTYLE: Final = 1 << 0
FLAG_NO_ZEROES: Final = 1 << 1

# Client flags (32 bits)
FLAG_C_FIXED_NEWSTYLE: Final = 1 << 0
FLAG_C_NO_ZEROES: Final = 1 << 1
CLIENT_FLAGS_KNOWN: Final = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES

# Options
OPT_EXPORT_NAME: Final = 1
OPT_ABORT: Final = 2
OPT_LIST: Final = 3
OPT_PEEK_EXPORT: Final = 4
OPT_STARTTLS: Final = 5
OPT_INFO: Final = 6
OPT_GO: Final = 7
OPT_STRUCTURED_REPLY: Final = 8
OPT_LIST_META_CONTEXT: Final = 9
OPT_SET_META_CONTEXT: Final = 10
OPT_EXTENDED_HEADERS: Final = 11

# Option reply types
REP_ACK: Final = 1
REP_SERVER: Final = 2
REP_INFO: Final = 3
REP_META_CONTEXT: Final = 4
_REP_ERR: Final = 1 << 31
REP_ERR_UNSUP: Final = _REP_ERR + 1
REP_ERR_POLICY: Final = _REP_ERR + 2
REP_ERR_INVALID: Final = _REP_ERR + 3
REP_ERR_PLATFORM: Final = _REP_ERR + 4
REP_ERR_TLS_REQD: Final = _REP_ERR + 5
REP_ERR_UNKNOWN: Final = _REP_ERR + 6
REP_ERR_SHUTDOWN: Final = _REP_ERR + 7
REP_ERR_BLOCK_SIZE_REQD: Final = _REP_ERR + 8
REP_ERR_TOO_BIG: Final = _REP_ERR + 9

# NBD_REP_INFO information types
INFO_EXPORT: Final = 0
INFO_NAME: Final = 1
INFO_DESCRIPTION: Final = 2
INFO_BLOCK_SIZE: Final = 3

# Transmission flags (16 bits)
FLAG_HAS_FLAGS: Final = 1 << 0
FLAG_READ_ONLY: Final = 1 << 1
FLAG_SEND_FLUSH: Final = 1 << 2
FLAG_SEND_FUA: Final = 1 << 3
FLAG_ROTATIONAL: Final = 1 << 4
FLAG_SEND_TRIM: Final = 1 << 5
FLAG_SEND_WRITE_ZEROES: Final = 1 << 6
FLAG_SEND_DF: Final = 1 << 7
FLAG_CAN_MULTI_CONN: Final = 1 << 8
FLAG_SEND_RESIZE: Final = 1 << 9
FLAG_SEND_CACHE: Final = 1 << 10
FLAG_SEND_FAST_ZERO: Final = 1 << 11

# --- Transmission ----------------------------------------------------------------------------------------------

REQUEST_MAGIC: Final = 0x25609513
SIMPLE_REPLY_MAGIC: Final = 0x67446698

CMD_READ: Final = 0
CMD_WRITE: Final = 1
CMD_DISC: Final = 2
CMD_FLUSH: Final = 3
CMD_TRIM: Final = 4
CMD_CACHE: Final = 5
CMD_WRITE_ZEROES: Final = 6
CMD_BLOCK_STATUS: Final = 7
CMD_RESIZE: Final = 8

CMD_NAMES: Final = {CMD_READ: "READ", CMD_WRITE: "WRITE", CMD_DISC: "DISC", CMD_FLUSH: "FLUSH", CMD_TRIM: "TRIM",
                    CMD_CACHE: "CACHE", CMD_WRITE_ZEROES: "WRITE_ZEROES", CMD_BLOCK_STATUS: "BLOCK_STATUS",
                    CMD_RESIZE: "RESIZE"}

# Command flags (16 bits)
CMD_FLAG_FUA: Final = 1 << 0
CMD_FLAG_NO_HOLE: Final = 1 << 1
CMD_FLAG_DF: Final = 1 << 2
CMD_FLAG_REQ_ONE: Final = 1 << 3
CMD_FLAG_FAST_ZERO: Final = 1 << 4
CMD_FLAG_PAYLOAD_LEN: Final = 1 << 5

# Error values allowed on the wire. They happen to equal Linux errno numbers, but the spec fixes the numbers, so
# they are spelt out rather than taken from the host's errno module.
NBD_EPERM: Final = 1
NBD_EIO: Final = 5
NBD_ENOMEM: Final = 12
NBD_EINVAL: Final = 22
NBD_ENOSPC: Final = 28
NBD_EOVERFLOW: Final = 75
NBD_ENOTSUP: Final = 95
NBD_ESHUTDOWN: Final = 108

# Host errno -> NBD error. Anything not listed becomes EIO. EDQUOT/EFBIG -> ENOSPC is what the spec asks for.
_ERRNO_TO_NBD: Final[dict[int, int]] = {
    errno.EPERM: NBD_EPERM, errno.EACCES: NBD_EPERM, errno.EROFS: NBD_EPERM,
    errno.EIO: NBD_EIO,
    errno.ENOMEM: NBD_ENOMEM,
    errno.EINVAL: NBD_EINVAL,
    errno.ENOSPC: NBD_ENOSPC, errno.EDQUOT: NBD_ENOSPC, errno.EFBIG: NBD_ENOSPC,
    errno.EOVERFLOW: NBD_EOVERFLOW,
    errno.ENOTSUP: NBD_ENOTSUP, errno.EOPNOTSUPP: NBD_ENOTSUP,
    errno.ESHUTDOWN: NBD_ESHUTDOWN,
}


def nbd_errno(host_errno: int | None) -> int:
    """Map a host ``errno`` value to one of the error values the NBD spec allows (default EIO)."""
    if host_errno is None:
        return NBD_EIO
    return _ERRNO_TO_NBD.get(host_errno, NBD_EIO)


# --- Struct layouts --------------------------------------------------------------------------------------------

#: S: NBDMAGIC, IHAVEOPT, handshake flags
HANDSHAKE: Final = struct.Struct(">QQH")
#: C: client flags
CLIENT_FLAGS: Final = struct.Struct(">I")
#: C: IHAVEOPT, option, data length
OPTION_HEADER: Final = struct.Struct(">QII")
#: S: reply magic, option, reply type, data length
OPTION_REPLY: Final = struct.Struct(">QIII")
#: S (after NBD_OPT_EXPORT_NAME): export size, transmission flags (then 124 zero bytes unless NO_ZEROES)
EXPORT_NAME_REPLY: Final = struct.Struct(">QH")
EXPORT_NAME_PAD: Final = bytes(124)
#: NBD_REP_INFO payload for NBD_INFO_EXPORT: type, size, transmission flags
INFO_EXPORT_PAYLOAD: Final = struct.Struct(">HQH")
#: NBD_REP_INFO payload for NBD_INFO_BLOCK_SIZE: type, minimum, preferred, maximum
INFO_BLOCK_SIZE_PAYLOAD: Final = struct.Struct(">HIII")
#: C: request magic, command flags, type, handle, offset, length (28 bytes)
REQUEST: Final = struct.Struct(">IHHQQI")
#: S: simple reply magic, error, handle (16 bytes)
SIMPLE_REPLY: Final = struct.Struct(">IIQ")

#: Longest string (export name, error message) the spec allows.
MAX_STRING: Final = 4096


# --- Connection framing ----------------------------------------------------------------------------------------

class WireProtocol(asyncio.BufferedProtocol):
    """One connection's byte stream, read with as few copies as asyncio allows.

    Small reads (headers, option data) come out of a staging buffer that the socket is read into in large
    chunks, so pipelined requests cost one ``recv`` for many headers. Large payloads are read with
    :meth:`read_into`: whatever is already staged is copied once, and the rest is received straight into the
    caller's buffer (``recv_into``), so WRITE data is never copied twice or buffered without bound. Reading pauses
    while the staging buffer is nearly full; :meth:`drain` waits only while the transport's send buffer is above
    its high-water mark. One coroutine reads at a time (the connection handler).
    """

    STAGING = 512 * 1024
    MIN_FREE = 64 * 1024

    def __init__(self, on_connect: Callable[["WireProtocol"], None]) -> None:
        self._on_connect = on_connect
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray(self.STAGING)
        self._view = memoryview(self._buf)
        self._start = 0                       # staged, unconsumed bytes are _buf[_start:_end]
        self._end = 0
        self._target: memoryview | None = None  # set while read_into() receives directly into a payload
        self._need = 0
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._lost = False
        self._exc: BaseException | None = None
        self._read_paused = False
        self.write_paused = False
        #: Called whenever a read is about to wait for the peer (e.g. to send replies held back for batching).
        self.on_wait: Callable[[], None] | None = None

    # -- asyncio callbacks ------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # noqa: D102
        self.transport = transport  # type: ignore[assignment]
        self._on_connect(self)

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
        self._eof = self._lost = True
        self._exc = exc
        self._wake()
        self._wake_drain()

    def eof_received(self) -> bool:  # noqa: D102
        self._eof = True
        self._wake()
        return False  # close our side too: NBD has no half-closed state

    def pause_writing(self) -> None:  # noqa: D102
        self.write_paused = True

    def resume_writing(self) -> None:  # noqa: D102
        self.write_paused = False
        self._wake_drain()

    def get_buffer(self, sizehint: int) -> memoryview:  # noqa: D102
        if self._target is not None:
            return self._target
        if self._start == self._end:
            self._start = self._end = 0
        elif len(self._buf) - self._end < self.MIN_FREE and self._start:
            n = self._end - self._start  # move the unconsumed tail to the front (memoryview copies handle overlap)
            self._view[:n] = self._view[self._start:self._end]
            self._start, self._end = 0, n
        if self._end == len(self._buf):  # only if a reader ignored pause_reading(): grow rather than fail
            new = bytearray(2 * len(self._buf))
            new[: self._end] = self._view[: self._end]
            self._view.release()
            self._buf, self._view = new, memoryview(new)
        return self._view[self._end:]

    def buffer_updated(self, nbytes: int) -> None:  # noqa: D102
        target = self._target
        if target is not None:
            if nbytes >= len(target):
                self._target = None
                self._wake()
            else:
                self._target = target[nbytes:]
            return
        self._end += nbytes
        if self._waiter is not None and self._end - self._start >= self._need:
            self._wake()
        if not self._read_paused and len(self._buf) - (self._end - self._start) < self.MIN_FREE:
            self._read_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    # -- reading ----------------------------------------------------------------------------------------------

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _wake_drain(self) -> None:
        w = self._drain_waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _wait(self, need: int) -> None:
        if self.on_wait is not None:
            self.on_wait()
        if self._exc is not None:
            raise self._exc
        if self._eof:
            raise asyncio.IncompleteReadError(b"", need)
        self._need = need
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _consumed(self) -> None:
        if self._read_paused and len(self._buf) - (self._end - self._start) >= 2 * self.MIN_FREE:
            self._read_paused = False
            if not self._lost:
                self.transport.resume_reading()  # type: ignore[union-attr]

    async def readexactly(self, n: int) -> bytes:
        """Return exactly ``n`` bytes (``n`` at most a few hundred KiB); ``IncompleteReadError`` at EOF."""
        if n > len(self._buf) - self.MIN_FREE:
            raise ValueError("readexactly() is for small reads; use read_into()")
        while self._end - self._start < n:
            await self._wait(n)
        start = self._start
        self._start = start + n
        data = bytes(self._view[start:start + n])
        self._consumed()
        return data

    async def read_into(self, dest: memoryview) -> None:
        """Fill ``dest`` completely from the stream, receiving directly into it once staged data is used up."""
        staged = min(self._end - self._start, len(dest))
        if staged:
            dest[:staged] = self._view[self._start:self._start + staged]
            self._start += staged
            self._consumed()
        if staged == len(dest):
            return
        self._target = dest[staged:]
        try:
            while self._target is not None:
                await self._wait(len(self._target))
        finally:
            self._target = None

    async def skip(self, n: int) -> None:
        """Consume and drop ``n`` bytes without ever holding more than the staging buffer."""
        while n > 0:
            if self._start == self._end:
                await self._wait(1)
                continue
            k = min(n, self._end - self._start)
            self._start += k
            n -= k
            self._consumed()

    # -- writing ----------------------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` for sending (never blocks)."""
        self.transport.write(data)  # type: ignore[union-attr]

    async def drain(self) -> None:
        """Wait while the send buffer is above its high-water mark; raise if the connection is gone."""
        if self._lost:
            raise ConnectionResetError("connection lost")
        if self.write_paused:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
            if self._lost:
                raise ConnectionResetError("connection lost")

    async def start_tls(self, ctx: ssl.SSLContext) -> None:
        """Upgrade to TLS (server side); bytes the client sent before its ClientHello are a protocol error."""
        if self._start != self._end:
            raise ConnectionError("client sent data before the TLS handshake")
        self.transport = await asyncio.get_running_loop().start_tls(
            self.transport, self, ctx, server_side=True)  # type: ignore[arg-type]

    def close(self) -> None:
        """Close after queued data is sent."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close now, dropping queued data."""
        if self.transport is not None:
            self.transport.abort()
