"""Agent ↔ process-server frames on the data port (mutual TLS).

Frame: 12-byte little-endian header then ``length`` bytes of body (docs/FORMATS.md):

=====  ====  ==========================================
off    size  field
=====  ====  ==========================================
0      4     magic ``b"LBWF"``
4      1     wire version (1)
5      1     frame type (:class:`Frame`)
6      2     flags (0)
8      4     body length (u32, at most MAX_FRAME)
=====  ====  ==========================================

Control frames carry UTF-8 JSON objects. A BATCH body is u64 batch id followed by encoded records
(:mod:`engine.records`).
"""

from __future__ import annotations

import asyncio
import enum
import json
import struct
from typing import Any

from .errors import ProtocolError

MAGIC = b"LBWF"
VERSION = 1
HEAD = struct.Struct("<4sBBHI")
MAX_FRAME = 16 * 1024 * 1024 + 4096


class Frame(enum.IntEnum):
    HELLO = 1       # agent → PS: {"machine", "disks": [{"index","name","size"}], "version"}
    WELCOME = 2     # PS → agent: {"protected", "last_seq", "sync": {disk: cursor}, "crash_interval"}
    BATCH = 3       # agent → PS: u64 batch id + records
    ACK = 4         # PS → agent: {"batch", "last_seq"} — everything up to last_seq is durable at the PS
    HEARTBEAT = 5   # agent → PS: {"oldest_pending_ns", "pending_bytes", "journal_bytes", "sync": {...}}
    CONTROL = 6     # PS → agent: {"protected": bool, ...} (protection turned on/off, bookmark requests)
    ERROR = 7       # PS → agent: {"code", "message", "advice"}; the PS then closes
    RESYNC_HASHES = 8  # agent → PS: RESYNC_HEAD + count × u64 block numbers + count × 16-byte xxh3_128
    RESYNC_DIFF = 9    # PS → agent: u64 chunk id, u32 count, count × u64 block numbers that differ
    # Failback (issue 14): the agent as master target while its machine is reprotected (engine/appliance/master_target.py)
    MT_HASHES_REQ = 10  # PS → agent: u64 chunk id, u32 disk, u32 count, count × u64 block numbers
    MT_HASHES = 11      # agent → PS: u64 chunk id, u32 count, count × 16-byte xxh3_128 of the target's blocks
    MT_WRITE = 12       # PS → agent: u64 batch id, u32 disk, u32 count, count × (u64 offset, u32 length), data
    MT_ACK = 13         # agent → PS: {"batch", "acked"} after fdatasync; first {"open": session, "acked"}


def parse_head(buf: bytes | bytearray | memoryview) -> tuple[Frame, int]:
    """(kind, body length) of the frame header at the start of ``buf``; ProtocolError when it is malformed."""
    magic, ver, ftype, _flags, length = HEAD.unpack_from(buf)
    if magic != MAGIC:
        raise ProtocolError("bad frame magic")
    if ver != VERSION:
        raise ProtocolError(f"unsupported wire version {ver}")
    if length > MAX_FRAME:
        raise ProtocolError(f"frame of {length} bytes exceeds the {MAX_FRAME}-byte limit")
    try:
        return Frame(ftype), length
    except ValueError:
        raise ProtocolError(f"unknown frame type {ftype}") from None


async def read_frame(reader: asyncio.StreamReader) -> tuple[Frame, bytes]:
    try:
        head = await reader.readexactly(HEAD.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise ConnectionResetError("peer closed the connection") from None
        raise ProtocolError("truncated frame header") from None
    kind, length = parse_head(head)
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise ProtocolError("truncated frame body") from None
    return kind, body


def frame_header(kind: Frame, length: int) -> bytes:
    return HEAD.pack(MAGIC, VERSION, int(kind), 0, length)


def write_frame(writer: asyncio.StreamWriter, kind: Frame, body: bytes | bytearray | memoryview) -> None:
    writer.write(frame_header(kind, len(body)))
    if len(body):
        writer.write(body)


def write_json(writer: asyncio.StreamWriter, kind: Frame, obj: dict[str, Any]) -> None:
    write_frame(writer, kind, json.dumps(obj, separators=(",", ":")).encode())


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ProtocolError("control frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("control frame is not a JSON object")
    return obj


BATCH_HEAD = struct.Struct("<Q")
#: disk u16, block size u32, seq the source was hashed at u64, chunk id u64, count u32
RESYNC_HEAD = struct.Struct("<HIQQI")
DIFF_HEAD = struct.Struct("<QI")
