"""Replication records: the one unit of change that flows agent journal → wire → process-server cache → vault.

A record is a fixed 56-byte little-endian header followed by an optional payload (see docs/FORMATS.md):

=====  ====  ==========================================================
off    size  field
=====  ====  ==========================================================
0      4     magic ``b"LBRC"``
4      1     format version (1)
5      1     kind (:class:`Kind`)
6      2     disk index within the machine (u16)
8      8     seq: machine-wide sequence number (u64), strictly increasing
16     8     ts_ns: capture time, ns since the Unix epoch (u64)
24     8     offset in bytes on the disk (u64); 0 for markers
32     8     length in bytes of the affected range / payload (u64)
40     8     xxh3_64 of the payload as the source saw it (0 when none)
48     4     crc32 of bytes 0..47
52     4     reserved, zero
=====  ====  ==========================================================

Payload length: ``length`` for WRITE and SYNC, ``length`` for BOOKMARK, RESYNC_START and RESYNC_DONE (UTF-8
JSON), none for the others.
Sequence numbers are machine-wide, so every seq is a consistent cut across the machine's disks.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

import xxhash

from .errors import IntegrityError, ProtocolError

MAGIC = b"LBRC"
VERSION = 1
HEADER = struct.Struct("<4sBBHQQQQQI4x")
HEADER_SIZE = HEADER.size  # 56
assert HEADER_SIZE == 56
_HEAD48 = struct.Struct("<4sBBHQQQQQ")   # bytes 0..47, covered by the crc
_TAIL = struct.Struct("<I4x")            # crc32 of bytes 0..47, reserved

#: The block: the unit of the vault's replica (one sealed slot each), of the resync checksum compare (one hash each)
#: and of the agent's dirty map (one bit each). One value for all three, or a compare would not line up with a slot.
BLOCK = 64 * 1024

#: Largest payload of one record. Writes larger than this are split by the agent.
MAX_PAYLOAD = 4 * 1024 * 1024


class Kind(enum.IntEnum):
    WRITE = 1        #: data written by the protected machine
    ZERO = 2         #: range zeroed (WRITE_ZEROES)
    TRIM = 3         #: range discarded; Lifeboat's backing punches a hole, so it reads back as zeros
    SYNC = 4         #: initial-replication / resync data read from the disk
    BOOKMARK = 5     #: app-consistent bookmark across all disks; payload is JSON {"tag", "id"}
    SYNC_DONE = 6    #: initial replication of ``disk`` complete: the replica is consistent from this seq on
    RESIZE = 7       #: disk size is now ``length``
    # 8 is reserved (it was a never-emitted "CUT" marker; FORMATS.md §2): readers refuse it like any unknown kind
    RESYNC_START = 9  #: the replica may differ from the source from here on; payload JSON {"reason", "id"}
    RESYNC_DONE = 10  #: resync finished: the replica equals the source again from here; payload JSON {"id"}

    @property
    def has_payload(self) -> bool:
        return self in _PAYLOAD_KINDS


#: Kinds (as plain ints, which hash and compare equal to the enum members) whose records carry a payload.
_PAYLOAD_KINDS = frozenset(int(k) for k in (Kind.WRITE, Kind.SYNC, Kind.BOOKMARK, Kind.RESYNC_START,
                                            Kind.RESYNC_DONE))


def payload_hash(data: bytes | memoryview) -> int:
    return xxhash.xxh3_64_intdigest(data)


@dataclass(slots=True)
class Record:
    kind: Kind
    disk: int
    seq: int
    ts_ns: int
    offset: int = 0
    length: int = 0
    data: bytes | memoryview = b""
    hash: int = 0

    @property
    def payload_size(self) -> int:
        return self.length if self.kind in _PAYLOAD_KINDS else 0

    def pack_header(self) -> bytes:
        h = self.hash
        if h == 0 and self.kind in _PAYLOAD_KINDS:
            h = self.hash = payload_hash(self.data)
        head = _HEAD48.pack(MAGIC, VERSION, int(self.kind), self.disk, self.seq, self.ts_ns, self.offset,
                            self.length, h)
        return head + _TAIL.pack(zlib.crc32(head))

    def encode(self) -> bytes:
        if self.kind in _PAYLOAD_KINDS:
            if len(self.data) != self.length:
                raise ValueError("record payload length mismatch")
            return b"".join((self.pack_header(), self.data))
        return self.pack_header()

    def encode_parts(self) -> tuple[bytes, bytes | memoryview]:
        """The encoded record as (header, payload) without copying the payload: the same bytes as
        :meth:`encode` once joined, for ``writev`` or a transport's ``writelines``. The payload is ``b""`` for
        kinds without one."""
        if self.kind in _PAYLOAD_KINDS:
            if len(self.data) != self.length:
                raise ValueError("record payload length mismatch")
            return self.pack_header(), self.data
        return self.pack_header(), b""

    def verify(self) -> None:
        """Check the payload against the hash the source computed."""
        if self.kind in _PAYLOAD_KINDS and payload_hash(self.data) != self.hash:
            raise IntegrityError(f"record seq={self.seq} disk={self.disk}: payload hash mismatch", seq=self.seq)


def decode_header(buf: bytes | memoryview) -> Record:
    """Parse a header (no payload attached yet). Raises ProtocolError on a malformed header."""
    if len(buf) < HEADER_SIZE:
        raise ProtocolError("short record header")
    magic, ver, kind, disk, seq, ts, off, length, h, crc = HEADER.unpack_from(buf)
    if magic != MAGIC:
        raise ProtocolError("bad record magic")
    if zlib.crc32(bytes(buf[:48])) != crc:
        raise IntegrityError("record header checksum mismatch")
    if ver != VERSION:
        raise ProtocolError(f"unsupported record version {ver}")
    try:
        k = Kind(kind)
    except ValueError:
        raise ProtocolError(f"unknown record kind {kind}") from None
    if k.has_payload and length > MAX_PAYLOAD:
        raise ProtocolError(f"record payload too large ({length} bytes)")
    return Record(k, disk, seq, ts, off, length, b"", h)


def decode_records(buf: bytes | memoryview, *, verify: bool = True) -> list[Record]:
    """Decode a concatenation of records (a batch). Payloads are memoryviews into ``buf``."""
    mv = memoryview(buf)
    out: list[Record] = []
    pos = 0
    n = len(mv)
    while pos < n:
        rec = decode_header(mv[pos:pos + HEADER_SIZE])
        pos += HEADER_SIZE
        ps = rec.payload_size
        if pos + ps > n:
            raise ProtocolError("truncated record payload")
        if ps:
            rec.data = mv[pos:pos + ps]
            pos += ps
            if verify:
                rec.verify()
        out.append(rec)
    return out
