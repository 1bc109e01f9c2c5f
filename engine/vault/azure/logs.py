"""Cache logs: the sealed records of one machine in block blobs ``<machine>/logs/<first seq:020d>``.

A log is the local journal's segment format (docs/FORMATS.md §5.2 header, then entries: the 56-byte record header,
a u32 envelope length and the envelope; no padding). Each ``append`` stages the new bytes as blocks (ids are the
block numbers, so a retried Put Block writes the same block again) and commits the whole block list with the log's
metadata in one Put Block List: a log only ever grows by whole appends, atomically, and a retry of the commit is
harmless. The metadata (``firstseq``, ``lastseq``, ``firstts``, ``lastts``, ``machine``) lets the vault list its
history without reading it.

A **direct** entry (envelope length ``DIRECT_ENV``, no envelope follows) is a record whose data went straight to the
page blob before the entry was logged (initial replication, ``direct.py``): the log keeps its header so every seq is
logged, and the log's ``lastdirect`` metadata is the newest such seq, so a restart knows the page blob holds it.
"""

from __future__ import annotations

import base64
import struct
import zlib
from dataclasses import dataclass, field

from ...errors import IntegrityError, LifeboatError
from ...records import HEADER_SIZE, Record, decode_header
from ..journal import ENTRY_HEAD_SIZE, ENV_LEN, SEG_HEAD, SEG_HEAD_SIZE, SEG_MAGIC, SEG_VERSION, _envlen_ok
from ..journal import machine_tag

#: A log is rolled once it holds this many bytes (configurable: ``vault.log_bytes``).
LOG_BYTES = 64 * 1024 * 1024
#: ... or this many blocks (the service allows 50,000 committed blocks per blob).
MAX_BLOCKS = 40_000
#: Envelope length of a direct entry: the record's data is in the page blob, not in the log.
DIRECT_ENV = 0xFFFFFFFF


def log_name(machine: str, first: int) -> str:
    return f"{machine}/logs/{first:020d}"


def block_id(n: int) -> str:
    return base64.b64encode(f"{n:08d}".encode()).decode()


def seg_header(machine: str, first: int) -> bytes:
    tag = machine_tag(machine)
    head = struct.pack("<4sB3xQQ", SEG_MAGIC, SEG_VERSION, tag, first)
    return SEG_HEAD.pack(SEG_MAGIC, SEG_VERSION, tag, first, zlib.crc32(head))


@dataclass(slots=True)
class LogEntry:
    """One record in a log: its header, where its entry starts and its envelope length."""

    rec: Record
    pos: int
    envlen: int
    direct: bool = False     # the data went straight to the page blob (no envelope in the log)

    @property
    def end(self) -> int:
        return self.pos + ENTRY_HEAD_SIZE + self.envlen


@dataclass(slots=True)
class LogInfo:
    name: str
    first: int                       # seq of the first record (the name)
    last: int                        # seq of the last committed record
    first_ts: int
    last_ts: int
    size: int
    entries: list[LogEntry] | None = None    # None until read (logs written by this process are known)
    blocks: list[str] = field(default_factory=list)   # committed block ids (the writer's log only)
    last_direct: int = 0                              # newest direct entry's seq (0: none)

    def metadata(self, machine: str) -> dict[str, str]:
        m = {"firstseq": str(self.first), "lastseq": str(self.last), "firstts": str(self.first_ts),
             "lastts": str(self.last_ts), "machine": machine}
        if self.last_direct:
            m["lastdirect"] = str(self.last_direct)
        return m


def parse_log(machine: str, first: int, data: bytes) -> list[LogEntry]:
    """Every entry of a log's bytes; IntegrityError when the log is not whole or not this machine's."""
    if len(data) < SEG_HEAD_SIZE:
        raise IntegrityError(f"cache log {first} of {machine} is truncated", machine=machine, log=first)
    magic, ver, tag, seg, crc = SEG_HEAD.unpack_from(data)
    if magic != SEG_MAGIC or zlib.crc32(data[:24]) != crc or ver != SEG_VERSION or tag != machine_tag(machine) \
            or seg != first:
        raise IntegrityError(f"cache log {first} of {machine}: bad or foreign header", machine=machine, log=first)
    out: list[LogEntry] = []
    pos, prev = SEG_HEAD_SIZE, first - 1
    while pos < len(data):
        if pos + ENTRY_HEAD_SIZE > len(data):
            raise IntegrityError(f"cache log {first} of {machine}: truncated entry at {pos}", machine=machine,
                                 log=first, position=pos)
        try:
            rec = decode_header(data[pos:pos + HEADER_SIZE])
        except LifeboatError as err:
            raise IntegrityError(f"cache log {first} of {machine}: corrupt record header at {pos} ({err.message})",
                                 machine=machine, log=first, position=pos) from None
        (envlen,) = ENV_LEN.unpack_from(data, pos + HEADER_SIZE)
        direct = envlen == DIRECT_ENV
        if direct:
            envlen = 0
        if rec.seq <= prev or not (direct or _envlen_ok(rec, envlen)) or pos + ENTRY_HEAD_SIZE + envlen > len(data):
            raise IntegrityError(f"cache log {first} of {machine}: bad entry at {pos}", machine=machine, log=first,
                                 position=pos)
        out.append(LogEntry(rec, pos, envlen, direct))
        prev = rec.seq
        pos += ENTRY_HEAD_SIZE + envlen
    return out
