"""NBD server against a raw, hand-written client: malformed handshakes and requests, request ordering, backend
failures, stop, and STARTTLS. Real clients are in ``test_nbd_server.py``.
"""

from __future__ import annotations

import asyncio
import errno
import os
import ssl
import struct
from pathlib import Path

import pytest

from engine.nbd import protocol as P
from engine.nbd.file_backend import FileBackend
from engine.nbd.server import NBDError, NBDServer
from tests.engine.nbd.helpers import MiB, random_file, serve_disks, sha256


@pytest.fixture
async def served(tmp_path):
    async with serve_disks(tmp_path) as s:
        yield s


class RawClient:
    """A minimal hand-written NBD client, for sending what real clients never would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer
        self.handle = 0

    @classmethod
    async def connect(cls, port: int, client_flags: int | None = P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES
                      ) -> "RawClient":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        c = cls(reader, writer)
        magic, opt_magic, hflags = P.HANDSHAKE.unpack(await reader.readexactly(P.HANDSHAKE.size))
        assert (magic, opt_magic) == (P.NBDMAGIC, P.IHAVEOPT)
        assert hflags == P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES
        if client_flags is not None:
            writer.write(P.CLIENT_FLAGS.pack(client_flags))
        return c

    async def option(self, opt: int, data: bytes = b"") -> list[tuple[int, bytes]]:
        """Send an option, collect replies up to the final one (ACK or error)."""
        self.w.write(P.OPTION_HEADER.pack(P.IHAVEOPT, opt, len(data)) + data)
        replies = []
        while True:
            magic, ropt, rtype, length = P.OPTION_REPLY.unpack(await self.r.readexactly(P.OPTION_REPLY.size))
            assert magic == P.REPLY_MAGIC and ropt == opt
            replies.append((rtype, await self.r.readexactly(length)))
            if rtype == P.REP_ACK or rtype & (1 << 31):
                return replies

    async def go(self, name: str = "disk", max_block: int = 1 * MiB) -> tuple[int, int]:
        raw = name.encode()
        replies = await self.option(P.OPT_GO, struct.pack(">I", len(raw)) + raw + struct.pack(">HH", 1,
                                                                                             P.INFO_BLOCK_SIZE))
        assert replies[-1][0] == P.REP_ACK, replies
        infos = {struct.unpack_from(">H", d)[0]: d for t, d in replies if t == P.REP_INFO}
        _, size, flags = P.INFO_EXPORT_PAYLOAD.unpack(infos[P.INFO_EXPORT])
        assert P.INFO_BLOCK_SIZE_PAYLOAD.unpack(infos[P.INFO_BLOCK_SIZE])[1:] == (1, 4096, max_block)
        return size, flags

    def send(self, cmd: int, offset: int = 0, length: int = 0, flags: int = 0, payload: bytes = b"") -> int:
        self.handle += 1
        self.w.write(P.REQUEST.pack(P.REQUEST_MAGIC, flags, cmd, self.handle, offset, length) + payload)
        return self.handle

    async def reply(self, read_length: int = 0) -> tuple[int, int, bytes]:
        magic, err, handle = P.SIMPLE_REPLY.unpack(await self.r.readexactly(P.SIMPLE_REPLY.size))
        assert magic == P.SIMPLE_REPLY_MAGIC
        data = await self.r.readexactly(read_length) if read_length and not err else b""
        return err, handle, data

    async def call(self, cmd: int, offset: int = 0, length: int = 0, flags: int = 0, payload: bytes = b"") -> tuple[
            int, bytes]:
        h = self.send(cmd, offset, length, flags, payload)
        err, handle, data = await self.reply(length if cmd == P.CMD_READ else 0)
        assert handle == h
        return err, data

    async def closed_by_server(self, timeout: float = 5) -> bool:
        try:
            return await asyncio.wait_for(self.r.read(1 << 20), timeout) == b""
        except ConnectionError:
            return True

    def close(self) -> None:
        self.w.close()


# -- malformed input -------------------------------------------------------------------------------------------

async def test_handshake_options(served):
    c = await RawClient.connect(served.port)
    (rtype, msg), = await c.option(99, b"whatever")
    assert rtype == P.REP_ERR_UNSUP and msg
    for opt in (P.OPT_STRUCTURED_REPLY, P.OPT_LIST_META_CONTEXT, P.OPT_SET_META_CONTEXT, P.OPT_STARTTLS):
        assert (await c.option(opt))[-1][0] == P.REP_ERR_UNSUP
    replies = await c.option(P.OPT_LIST)
    names = {d[4:4 + struct.unpack_from(">I", d)[0]].decode() for t, d in replies if t == P.REP_SERVER}
    assert names == {"disk", "ro"} and replies[-1][0] == P.REP_ACK
    assert (await c.option(P.OPT_LIST, b"x"))[-1][0] == P.REP_ERR_INVALID
    assert (await c.option(P.OPT_GO, struct.pack(">I", 4) + b"nope" + struct.pack(">H", 0)))[-1][0] == \
        P.REP_ERR_UNKNOWN
    assert (await c.option(P.OPT_GO, b"\x00\x00\x00\xff\x00"))[-1][0] == P.REP_ERR_INVALID  # truncated
    assert (await c.option(P.OPT_INFO, struct.pack(">I", 4) + b"disk" + struct.pack(">HH", 2, 1)))[-1][0] == \
        P.REP_ERR_INVALID  # request count does not match the length
    replies = await c.option(P.OPT_INFO, struct.pack(">I", 2) + b"ro" + struct.pack(">HH", 1, P.INFO_NAME))
    assert replies[-1][0] == P.REP_ACK and (P.REP_INFO, struct.pack(">H", P.INFO_NAME) + b"ro") in replies
    size, flags = await c.go("disk")  # still negotiable after all that
    assert size == 16 * MiB
    assert flags == (P.FLAG_HAS_FLAGS | P.FLAG_SEND_FLUSH | P.FLAG_SEND_FUA | P.FLAG_SEND_TRIM
                     | P.FLAG_SEND_WRITE_ZEROES)
    err, data = await c.call(P.CMD_READ, 0, 512)
    assert err == 0 and data == served.path.read_bytes()[:512]
    c.send(P.CMD_DISC)
    assert await c.closed_by_server()


async def test_export_name_and_abort(served):
    for cflags, pad in ((P.FLAG_C_FIXED_NEWSTYLE, 124), (P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES, 0), (0, 124)):
        c = await RawClient.connect(served.port, cflags)
        c.w.write(P.OPTION_HEADER.pack(P.IHAVEOPT, P.OPT_EXPORT_NAME, 2) + b"ro")
        size, flags = P.EXPORT_NAME_REPLY.unpack(await c.r.readexactly(P.EXPORT_NAME_REPLY.size))
        assert size == MiB and flags & P.FLAG_READ_ONLY
        assert await c.r.readexactly(pad) == bytes(pad)
        err, data = await c.call(P.CMD_READ, 0, 16)
        assert err == 0 and len(data) == 16
        c.close()
    c = await RawClient.connect(served.port)  # unknown name via EXPORT_NAME: only a disconnect is possible
    c.w.write(P.OPTION_HEADER.pack(P.IHAVEOPT, P.OPT_EXPORT_NAME, 4) + b"nope")
    assert await c.closed_by_server()
    c = await RawClient.connect(served.port)
    assert await c.option(P.OPT_ABORT) == [(P.REP_ACK, b"")]
    assert await c.closed_by_server()


@pytest.mark.parametrize("garbage", [
    b"\xff\xff\xff\xff",                                               # unknown client flags
    P.CLIENT_FLAGS.pack(1) + b"NOTMAGIC" + bytes(8),                    # bad option magic
    P.CLIENT_FLAGS.pack(1) + P.OPTION_HEADER.pack(P.IHAVEOPT, 7, 1 << 30),  # absurd option length
    b"GET / HTTP/1.1\r\n\r\n",
])
async def test_garbage_handshake_closes_only_that_connection(served, garbage):
    good = await RawClient.connect(served.port)
    await good.go()
    before = sha256(served.path)
    bad = await RawClient.connect(served.port, client_flags=None)
    bad.w.write(garbage)
    assert await bad.closed_by_server()
    truncated = await RawClient.connect(served.port, client_flags=None)
    truncated.w.write(b"\x00\x00")  # half the client flags, then hang up
    truncated.w.close()
    assert (await good.call(P.CMD_WRITE, 0, 4, payload=b"abcd"))[0] == 0  # the other client is unaffected
    assert served.path.read_bytes()[:4] == b"abcd"
    assert sha256(served.path) != before
    good.close()
    for _ in range(50):
        if served.server.connections == 0:
            break
        await asyncio.sleep(0.05)
    assert served.server.connections == 0


async def test_bad_requests_get_exact_errors_and_change_nothing(served):
    before = sha256(served.path)
    size = 16 * MiB
    c = await RawClient.connect(served.port)
    await c.go()
    other = await RawClient.connect(served.port)
    await other.go("ro")
    cases = [
        (P.CMD_READ, size - 512, 1024, 0, b"", P.NBD_EINVAL),                 # read past the end
        (P.CMD_READ, 1 << 62, 512, 0, b"", P.NBD_EINVAL),
        (P.CMD_WRITE, size - 2, 4, 0, b"xxxx", P.NBD_ENOSPC),                 # write past the end
        (P.CMD_WRITE_ZEROES, size, 512, 0, b"", P.NBD_ENOSPC),
        (P.CMD_TRIM, size - 512, 4096, 0, b"", P.NBD_EINVAL),                 # spec: EINVAL for trim
        (P.CMD_READ, 0, 2 * MiB, 0, b"", P.NBD_EINVAL),                       # over max_request
        (P.CMD_WRITE, 0, MiB + 1, 0, b"z" * (MiB + 1), P.NBD_EINVAL),          # oversized: payload discarded
        (P.CMD_WRITE_ZEROES, 0, 2 * MiB, 0, b"", P.NBD_EINVAL),
        (P.CMD_CACHE, 0, 512, 0, b"", P.NBD_EINVAL),                          # not advertised
        (P.CMD_BLOCK_STATUS, 0, 512, 0, b"", P.NBD_EINVAL),
        (77, 0, 0, 0, b"", P.NBD_EINVAL),                                     # unknown command
        (P.CMD_WRITE, 0, 4, P.CMD_FLAG_NO_HOLE, b"yyyy", P.NBD_EINVAL),       # flag not valid for WRITE
        (P.CMD_WRITE_ZEROES, 0, 512, P.CMD_FLAG_FAST_ZERO, b"", P.NBD_EINVAL),  # not negotiated
        (P.CMD_READ, 0, 512, P.CMD_FLAG_DF, b"", P.NBD_EINVAL),
        (P.CMD_READ, 0, 0, 0, b"", 0),                                        # zero-length: no-op success
        (P.CMD_READ, size, 0, 0, b"", 0),
        (P.CMD_WRITE, 0, 0, 0, b"", 0),
        (P.CMD_TRIM, 0, 0, 0, b"", 0),
        (P.CMD_WRITE_ZEROES, size, 0, 0, b"", 0),
        (P.CMD_WRITE_ZEROES, size + 1, 0, 0, b"", P.NBD_ENOSPC),
    ]
    for cmd, off, length, flags, payload, want in cases:
        err, data = await c.call(cmd, off, length, flags, payload)
        assert err == want, (cmd, off, length, flags, err)
        assert data == b""
    for cmd, payload in ((P.CMD_WRITE, b"q" * 512), (P.CMD_WRITE_ZEROES, b""), (P.CMD_TRIM, b"")):
        assert (await other.call(cmd, 0, 512, 0, payload))[0] == P.NBD_EPERM  # read-only export
    assert (await other.call(P.CMD_WRITE, 0, 1 << 20, 0, b"q" * (1 << 20)))[0] == P.NBD_EPERM
    err, data = await other.call(P.CMD_READ, 0, 512)
    assert err == 0 and data == (served.path.parent / "ro.img").read_bytes()[:512]
    assert sha256(served.path) == before
    # The connection that sent all of that still works.
    err, data = await c.call(P.CMD_READ, size - 512, 512)
    assert err == 0 and data == served.path.read_bytes()[-512:]
    # An absurd WRITE length is not discarded byte by byte: the client is dropped.
    c.send(P.CMD_WRITE, 0, 0xFFFFFFFF)
    assert await c.closed_by_server()
    # Bad request magic drops that connection too; a fresh client is served.
    c2 = await RawClient.connect(served.port)
    await c2.go()
    c2.w.write(struct.pack(">IHHQQI", 0xDEADBEEF, 0, P.CMD_READ, 1, 0, 512))
    assert await c2.closed_by_server()
    assert (await other.call(P.CMD_READ, 0, 4))[0] == 0
    c3 = await RawClient.connect(served.port)
    await c3.go()
    c3.send(P.CMD_WRITE, 0, 4096)  # a payload cut short by a disconnect must not be written
    c3.w.write(b"\x01" * 100)
    c3.close()
    await asyncio.sleep(0.2)
    assert sha256(served.path) == before
    other.close()


# -- ordering and backend failures -----------------------------------------------------------------------------

class RecordingBackend:
    """Records every call; sleeps a random tiny amount so out-of-order processing would show."""

    def __init__(self, size: int = 1 * MiB, fail: dict[int, BaseException] | None = None) -> None:
        self.size, self.read_only = size, False
        self.ops: list[tuple] = []
        self.fail = fail or {}

    async def _op(self, *rec) -> None:
        self.ops.append(rec)
        r = os.urandom(1)[0]
        await asyncio.sleep(r / 128_000 if r < 32 else 0)  # sometimes really yield to the loop
        exc = self.fail.get(rec[1] if len(rec) > 1 else -1)
        if exc is not None:
            raise exc

    async def read(self, offset, length):
        await self._op("read", offset, length)
        return bytes(length)

    async def write(self, offset, data, fua):
        await self._op("write", offset, bytes(data), fua)

    async def write_zeroes(self, offset, length, fua):
        await self._op("zero", offset, length, fua)

    async def trim(self, offset, length):
        await self._op("trim", offset, length)

    async def flush(self):
        await self._op("flush")


async def test_backend_sees_client_order():
    backend = RecordingBackend()
    server = NBDServer({"rec": backend})
    _, port = await server.start()
    try:
        c = await RawClient.connect(port)
        await c.go("rec", 32 * MiB)
        expected, handles = [], []
        n = 3000  # pipelined, all sent before any reply is read: several MiB, more than the server stages
        for i in range(n):
            kind, off = i % 6, (i * 4096) % (MiB - 8192)
            if kind in (0, 4):
                payload = i.to_bytes(4, "big") * 1024
                handles.append(c.send(P.CMD_WRITE, off, len(payload), P.CMD_FLAG_FUA * (i % 2), payload))
                expected.append(("write", off, payload, bool(i % 2)))
            elif kind == 1:
                handles.append(c.send(P.CMD_WRITE_ZEROES, off, 8192, P.CMD_FLAG_NO_HOLE))
                expected.append(("zero", off, 8192, False))
            elif kind == 2:
                handles.append(c.send(P.CMD_TRIM, off, 4096))
                expected.append(("trim", off, 4096))
            elif kind == 3:
                handles.append(c.send(P.CMD_FLUSH))
                expected.append(("flush",))
            else:
                handles.append(c.send(P.CMD_READ, off, 512))
                expected.append(("read", off, 512))
        got = []
        for i in range(n):
            err, h, data = await c.reply(512 if i % 6 == 5 else 0)
            assert err == 0
            got.append(h)
        assert got == handles  # replies in request order too
        assert backend.ops == expected
    finally:
        await server.stop()


async def test_fragmented_and_coalesced_requests(served):
    c = await RawClient.connect(served.port)
    await c.go()
    reqs = b"".join(P.REQUEST.pack(P.REQUEST_MAGIC, 0, P.CMD_WRITE, h, h * 8192, 5000) + bytes([h]) * 5000
                    for h in (1, 2, 3))
    wire = reqs + P.REQUEST.pack(P.REQUEST_MAGIC, 0, P.CMD_READ, 4, 8192, 3 * 8192)
    for i in range(0, len(wire), 997):  # dribbled across many small TCP segments
        c.w.write(wire[i:i + 997])
        await c.w.drain()
        await asyncio.sleep(0.001)
    assert [(await c.reply())[:2] for _ in range(3)] == [(0, 1), (0, 2), (0, 3)]
    err, handle, data = await c.reply(3 * 8192)
    assert (err, handle) == (0, 4)
    for h in (1, 2, 3):
        assert data[(h - 1) * 8192:(h - 1) * 8192 + 5000] == bytes([h]) * 5000
    c.w.write(reqs)  # and all coalesced into one segment
    assert [(await c.reply())[:2] for _ in range(3)] == [(0, 1), (0, 2), (0, 3)]
    disk = served.path.read_bytes()
    assert all(disk[h * 8192:h * 8192 + 5000] == bytes([h]) * 5000 for h in (1, 2, 3))


async def test_backend_errors_become_error_replies(caplog):
    backend = RecordingBackend(fail={0: NBDError(errno.ENOSPC, "full"), 4096: OSError(errno.EDQUOT, "quota"),
                                     8192: RuntimeError("bug"), 12288: OSError(errno.ENOENT, "gone")})
    server = NBDServer({"rec": backend})
    _, port = await server.start()
    try:
        c = await RawClient.connect(port)
        await c.go("rec", 32 * MiB)
        assert (await c.call(P.CMD_WRITE, 0, 4, payload=b"abcd"))[0] == P.NBD_ENOSPC
        assert (await c.call(P.CMD_WRITE_ZEROES, 4096, 512))[0] == P.NBD_ENOSPC
        assert (await c.call(P.CMD_READ, 8192, 512))[0] == P.NBD_EIO
        assert (await c.call(P.CMD_TRIM, 12288, 512))[0] == P.NBD_EIO
        assert (await c.call(P.CMD_READ, 16384, 512)) == (0, bytes(512))  # connection carries on
        assert "bug" in caplog.text
    finally:
        await server.stop()


async def test_stop_closes_clients_and_exports_callable(tmp_path):
    path = random_file(tmp_path / "a.img", MiB)
    exports: dict = {}
    server = NBDServer(lambda: exports, handshake_timeout=0.5)
    _, port = await server.start()
    c = await RawClient.connect(port)
    assert (await c.option(P.OPT_GO, struct.pack(">I", 1) + b"a" + struct.pack(">H", 0)))[-1][0] == \
        P.REP_ERR_UNKNOWN
    exports["a"] = FileBackend(path)  # appears while the server runs
    await c.go("a", 32 * MiB)
    idle = await RawClient.connect(port, client_flags=None)
    assert await idle.closed_by_server(timeout=5)  # handshake timeout
    assert server.connections == 1
    await server.stop()
    assert await c.closed_by_server()
    assert server.connections == 0
    exports["a"].close()


async def test_stop_gives_up_on_a_stuck_backend():
    backend = RecordingBackend()
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    backend.flush = hang  # type: ignore[method-assign]
    server = NBDServer({"rec": backend})
    _, port = await server.start()
    c = await RawClient.connect(port)
    await c.go("rec", 32 * MiB)
    c.send(P.CMD_FLUSH)
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.wait_for(server.stop(grace=0.2), 5)
    assert server.connections == 0
    assert await c.closed_by_server()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from datetime import datetime, timedelta, timezone
    from ipaddress import ip_address

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    return tmp / "cert.pem", tmp / "key.pem"


async def test_starttls_forced(tmp_path):
    cert, key = _self_signed(tmp_path)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    path = random_file(tmp_path / "t.img", MiB)
    backend = FileBackend(path)
    server = NBDServer({"t": backend}, ssl_context=sctx)
    _, port = await server.start()
    try:
        c = await RawClient.connect(port)
        assert (await c.option(P.OPT_LIST))[-1][0] == P.REP_ERR_TLS_REQD
        assert await c.option(P.OPT_STARTTLS) == [(P.REP_ACK, b"")]
        cctx = ssl.create_default_context(cafile=str(cert))
        await c.w.start_tls(cctx, server_hostname="localhost")
        assert (await c.option(P.OPT_STARTTLS))[-1][0] == P.REP_ERR_INVALID
        await c.go("t", 32 * MiB)
        assert (await c.call(P.CMD_WRITE, 0, 5, payload=b"hello"))[0] == 0
        assert await c.call(P.CMD_READ, 0, 5) == (0, b"hello")
        c.close()
        plain = await RawClient.connect(port)  # EXPORT_NAME without TLS cannot be refused politely: hang up
        plain.w.write(P.OPTION_HEADER.pack(P.IHAVEOPT, P.OPT_EXPORT_NAME, 1) + b"t")
        assert await plain.closed_by_server()
    finally:
        await server.stop()
        backend.close()
    assert path.read_bytes()[:5] == b"hello"
