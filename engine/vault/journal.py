"""The local vault's redo journal: sealed records in segment files under ``<machine>/journal/``.

Segment file ``<first seq:020d>.lbj`` (little-endian):

=====  ====  ==========================================================
off    size  field
=====  ====  ==========================================================
0      4     magic ``b"LBJ1"``
4      1     segment format version (1)
5      3     reserved, zero
8      8     xxh3_64 of the machine name (a segment cannot be moved to another machine)
16     8     seq of the first entry (equals the file name)
24     4     crc32 of bytes 0..23
28     4     reserved, zero
=====  ====  ==========================================================

then entries back to back: the 56-byte record header (:meth:`Record.pack_header`), a u32 envelope length and the
envelope (:meth:`Sealer.seal` of the payload with the header as associated data). Markers (ZERO, TRIM, SYNC_DONE,
RESIZE) have no envelope (length 0). Seqs strictly increase within and across segments.

Appends are group commits: one ``pwrite`` + ``fsync`` per call. Only the last segment can hold unsynced bytes (a
segment is fsynced before the next one is created), so only it is checked for a torn tail on open.

Also here: the small file helpers (atomic replace, directory fsync, private modes) shared by the vault modules.
"""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import xxhash

from .. import platform
from ..directio import BLOCK, DirectAppender, padded, skip_padding
from ..fileio import make_private_dir
from ..codec import HEAD as ENV_HEAD
from ..codec import HEAD_SIZE as ENV_HEAD_SIZE
from ..codec import MAGIC as ENV_MAGIC
from ..codec import TAG_SIZE, Sealer
from ..errors import IntegrityError, LifeboatError, StorageError
from ..records import HEADER_SIZE, MAX_PAYLOAD, Kind, Record, decode_header
from .base import SealedRecord

log = logging.getLogger(__name__)

SEG_MAGIC = b"LBJ1"
SEG_VERSION = 1
SEG_HEAD = struct.Struct("<4sB3xQQI4x")
SEG_HEAD_SIZE = SEG_HEAD.size  # 32
ENV_LEN = struct.Struct("<I")
ENTRY_HEAD_SIZE = HEADER_SIZE + ENV_LEN.size  # 60
SEGMENT_BYTES = 64 * 1024 * 1024
#: Largest envelope a record can have: incompressible payloads are stored raw (codec), plus header and tag.
MAX_ENVELOPE = MAX_PAYLOAD + ENV_HEAD_SIZE + TAG_SIZE
SUFFIX = ".lbj"


# ---------------------------------------------------------------------------------------------- file helpers

def fsync_dir(path: Path) -> None:
    """Make a directory's entries (created, renamed, deleted files) durable."""
    platform.fsync_dir(path)


def write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """``pwrite`` everything (pwrite may write less than asked on some filesystems / signals)."""
    mv = memoryview(data)
    while mv:
        n = platform.pwrite(fd, mv, offset)
        if n <= 0:
            raise OSError("short write")
        mv = mv[n:]
        offset += n


def machine_tag(machine: str) -> int:
    return xxhash.xxh3_64_intdigest(machine.encode())


def seal_record(sealer: Sealer, rec: Record) -> SealedRecord:
    """Seal a record with its payload attached into the form :meth:`MachineVault.append` takes."""
    hdr = rec.pack_header()  # computes the payload hash when missing
    env = sealer.seal(rec.data, aad=hdr) if Kind(rec.kind).has_payload else b""
    head = Record(Kind(rec.kind), rec.disk, rec.seq, rec.ts_ns, rec.offset, rec.length, b"", rec.hash)
    return SealedRecord(head, env)


# ---------------------------------------------------------------------------------------------- journal

@dataclass(slots=True)
class Entry:
    """Where one record sits: segment (its first seq), byte position of the entry, envelope length, header."""

    seg: int
    pos: int
    envlen: int
    rec: Record


def check_envelope(env: bytes | bytearray | memoryview, key_id: int) -> str | None:
    """Cheap structural check of an envelope before it is stored (no decryption); a reason string when bad."""
    if len(env) < ENV_HEAD_SIZE + TAG_SIZE or len(env) > MAX_ENVELOPE:
        return "envelope size out of range"
    magic, _ver, _comp, _cipher, kid, _nonce, ctlen = ENV_HEAD.unpack_from(env)
    if magic != ENV_MAGIC:
        return "bad envelope magic"
    if kid != key_id:
        return f"envelope sealed with key {kid}, the vault uses key {key_id}"
    if ENV_HEAD_SIZE + ctlen != len(env):
        return "envelope length mismatch"
    return None


class Journal:
    """Segment files of one machine. Not async: callers run methods in a thread and serialise writers."""

    def __init__(self, folder: Path, machine: str, sealer: Sealer, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.folder = folder
        self.machine = machine
        self.sealer = sealer
        self.segment_bytes = segment_bytes
        self._tag = machine_tag(machine)
        #: first seqs of the segments, sorted: one int per segment (not per record), so bounded by journal size / 64 MiB
        self.segments: list[int] = []
        self._fd: DirectAppender | None = None   # writer: last segment, opened lazily
        self._pos = 0
        #: (segment, end) of the last fsynced entry: readers never look past it, so an append in flight (or the
        #: remains of a failed one) is never mistaken for a torn or corrupt entry
        self.committed: tuple[int, int] | None = None
        #: set when a failed append could not be undone: the segment may hold garbage until reopened (recovery cuts it)
        self.damaged = False

    def path(self, seg: int) -> Path:
        return self.folder / f"{seg:020d}{SUFFIX}"

    # -- open / recovery ------------------------------------------------------------------------------------

    def load(self) -> int:
        """List segments and cut a torn tail off the last one. Returns the last stored seq (0 when empty)."""
        make_private_dir(self.folder)
        segs = []
        for p in self.folder.iterdir():
            if p.suffix == SUFFIX and p.stem.isdigit():
                segs.append(int(p.stem))
            elif p.name.endswith(SUFFIX + ".tmp"):
                p.unlink()
        self.segments = sorted(segs)
        while self.segments:
            seg = self.segments[-1]
            last = self._recover_segment(seg)
            if last:
                return last
            # A segment with no whole entry is a roll cut short by a crash: nothing in it was acknowledged.
            self.path(seg).unlink()
            fsync_dir(self.folder)
            self.segments.pop()
        return 0

    def _read_seg_head(self, f, seg: int, size: int) -> bool:
        """Validate a segment header. False when it is torn (short or all zeros); raises when it is foreign/corrupt."""
        head = f.read(SEG_HEAD_SIZE)
        if len(head) < SEG_HEAD_SIZE or head == bytes(SEG_HEAD_SIZE):
            return False
        magic, ver, tag, first, crc = SEG_HEAD.unpack(head)
        if magic != SEG_MAGIC or zlib.crc32(head[:24]) != crc:
            raise IntegrityError(f"journal segment {self.path(seg).name} of {self.machine}: bad segment header",
                                 machine=self.machine, segment=seg)
        if ver != SEG_VERSION:
            raise StorageError(f"journal segment {self.path(seg).name}: unsupported version {ver}")
        if tag != self._tag or first != seg:
            raise IntegrityError(f"journal segment {self.path(seg).name} does not belong to machine {self.machine}",
                                 machine=self.machine, segment=seg)
        return True

    def _recover_segment(self, seg: int) -> int:
        """Find the whole-entry prefix of the last segment, truncate anything after it; return its last seq."""
        path = self.path(seg)
        size = path.stat().st_size
        tail: list[Entry] = []     # the last two whole entries
        end = SEG_HEAD_SIZE
        with open(path, "rb", buffering=1 << 20) as f:
            if not self._read_seg_head(f, seg, size):
                return 0
            prev = seg - 1
            while True:
                if end % BLOCK and _at_padding(f, end):
                    nxt = padded(end)
                    pad = f.read(nxt - end)
                    if len(pad) != nxt - end or pad.count(0) != len(pad):
                        break   # torn padding: cut after the last entry
                    end = nxt
                    continue
                h = f.read(ENTRY_HEAD_SIZE)
                if len(h) < ENTRY_HEAD_SIZE:
                    break
                try:
                    rec = decode_header(h[:HEADER_SIZE])
                except LifeboatError:
                    break       # torn or garbage header: the tail starts here
                (envlen,) = ENV_LEN.unpack_from(h, HEADER_SIZE)
                if rec.seq <= prev or not _envlen_ok(rec, envlen) or end + ENTRY_HEAD_SIZE + envlen > size:
                    break
                tail = [*tail[-1:], Entry(seg, end, envlen, rec)]
                prev = rec.seq
                end += ENTRY_HEAD_SIZE + envlen
                f.seek(envlen, os.SEEK_CUR)
        # The last entry's header can be whole while its envelope is not (pages persist out of order before the
        # fsync that never finished): authenticate that one envelope too. It was never acknowledged if torn.
        if tail and not self._envelope_ok(tail[-1]):
            end = tail[-1].pos
            tail = tail[:-1]
        if end < size:
            self._quarantine(path, end, size)
        self.committed = (seg, end)
        return tail[-1].rec.seq if tail else 0

    def _envelope_ok(self, e: Entry) -> bool:
        if not e.envlen:
            return True       # a marker: its header's crc already vouches for the whole entry
        try:
            self.read_payload(e)
            return True
        except (LifeboatError, OSError, ValueError):
            return False

    def _quarantine(self, path: Path, end: int, size: int) -> None:
        """Cut a torn tail, keeping its bytes beside the segment for forensics (it may be rot, not a torn write)."""
        with open(path, "rb") as f:
            f.seek(end)
            torn = f.read(size - end)
        if torn.count(0) != len(torn):  # not just zeros (bytes.count is C-speed; any() is not)
            keep = path.with_name(f"{path.name}.torn-{int(time.time())}")
            fd = os.open(keep, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                write_all(fd, torn, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        log.warning("journal %s: cut a torn tail of %d bytes at offset %d", path, size - end, end)
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, end)
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- writing --------------------------------------------------------------------------------------------

    def write(self, items: list[tuple[int, bytes, bytes | bytearray]]) -> bool:
        """Append ``(seq, header bytes, envelope)`` entries (already validated, seqs increasing) and fsync once.

        Returns True when a new segment was started. On failure everything this call wrote is undone (truncated
        or deleted), so a failed append leaves no partial entry for a later append to write after.
        """
        start = (self.segments[-1], self._writer_pos()) if self.segments else None
        created: list[int] = []
        pending: list[bytes | bytearray] = []
        queued = 0
        try:
            for seq, hdr, env in items:
                if self._fd is None or self._pos + queued >= self.segment_bytes:
                    self._flush(pending, sync=True)
                    pending = [self._new_segment(seq)]
                    queued = len(pending[0])
                    created.append(seq)
                pending.append(hdr + ENV_LEN.pack(len(env)))   # header and envelope written as they are
                queued += len(pending[-1]) + len(env)
                if env:
                    pending.append(env)
            self._flush(pending, sync=True)
            if created:
                fsync_dir(self.folder)
            self.committed = (self.segments[-1], self._pos)
        except BaseException:
            self._rollback(start, created)
            raise
        return bool(created)

    def _writer_pos(self) -> int:
        if self._fd is None and self.segments:
            self._fd = DirectAppender(self.path(self.segments[-1]), create=False)
            self._pos = self._fd.pos
        return self._pos

    def _flush(self, pending: list[bytes | bytearray], *, sync: bool) -> None:
        if self._fd is None:
            return
        if pending:   # one write, padded to a block, past the page cache; durable with the fdatasync
            self._pos += self._fd.append(pending, sync=False)
            pending.clear()
        if sync:
            os.fsync(self._fd.fd)

    def _new_segment(self, seq: int) -> bytes:
        """Close the writer's segment (already fsynced) and create the next one; returns its header bytes."""
        self.close()
        os.close(os.open(self.path(seq), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self._fd = DirectAppender(self.path(seq), create=False)
        self._pos = 0
        self.segments.append(seq)
        head = struct.pack("<4sB3xQQ", SEG_MAGIC, SEG_VERSION, self._tag, seq)
        return SEG_HEAD.pack(SEG_MAGIC, SEG_VERSION, self._tag, seq, zlib.crc32(head))

    def _rollback(self, start: tuple[int, int] | None, created: list[int]) -> None:
        self.close()
        for seg in created:
            try:
                self.path(seg).unlink()
            except OSError:
                pass
            if seg in self.segments:
                self.segments.remove(seg)
        if start is not None:
            try:
                fd = os.open(self.path(start[0]), os.O_WRONLY)
                try:
                    os.ftruncate(fd, start[1])
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError:
                self.damaged = True
                log.exception("journal %s: could not undo a failed append", self.folder)

    # -- reading --------------------------------------------------------------------------------------------

    def iter_entries(self, after: int, upto: int, *, tolerant: bool = False,
                     problems: list[dict] | None = None) -> Iterator[Entry]:
        """Entries with ``after < seq <= upto`` in seq order, reading headers only (envelopes are skipped).

        Safe while appends run: entries up to ``upto`` (<= last_seq) are whole and never move. A corrupt header
        raises IntegrityError, or with ``tolerant`` is reported in ``problems`` and the segment's rest skipped.
        """
        committed = self.committed
        segs = list(self.segments)
        if committed is None:
            return
        # start at the last segment whose first seq <= after+1 (it may straddle ``after``)
        i = 0
        for k, s in enumerate(segs):
            if s <= after + 1:
                i = k
        for seg in segs[i:]:
            if seg > upto or seg > committed[0]:
                return
            try:
                for e in self._iter_segment(seg, after, upto, committed[1] if seg == committed[0] else None):
                    yield e
            except IntegrityError as err:
                if not tolerant:
                    raise
                if problems is not None:
                    problems.append({"what": "journal", "segment": seg, "error": err.message, **err.details})

    def _iter_segment(self, seg: int, after: int, upto: int, stop: int | None) -> Iterator[Entry]:
        path = self.path(seg)
        try:
            f = open(path, "rb", buffering=1 << 16)
        except FileNotFoundError:
            raise StorageError(f"journal segment {path.name} of {self.machine} is missing") from None
        with f:
            if not self._read_seg_head(f, seg, 0):
                raise IntegrityError(f"journal segment {path.name} of {self.machine}: missing header",
                                     machine=self.machine, segment=seg)
            pos = SEG_HEAD_SIZE
            while stop is None or pos < stop:
                if pos % BLOCK and _at_padding(f, pos):
                    pos = padded(pos)   # an append's padding (engine/directio.py)
                    f.seek(pos)
                    continue
                h = f.read(ENTRY_HEAD_SIZE)
                if len(h) < ENTRY_HEAD_SIZE:
                    if h:
                        raise IntegrityError(f"journal segment {path.name}: truncated entry at {pos}",
                                             machine=self.machine, segment=seg, position=pos)
                    return
                try:
                    rec = decode_header(h[:HEADER_SIZE])
                except LifeboatError as err:
                    raise IntegrityError(f"journal segment {path.name} of {self.machine}: corrupt record header at "
                                         f"{pos} ({err.message})", machine=self.machine, segment=seg,
                                         position=pos) from None
                (envlen,) = ENV_LEN.unpack_from(h, HEADER_SIZE)
                if not _envlen_ok(rec, envlen):
                    raise IntegrityError(f"journal segment {path.name}: bad envelope length at {pos}",
                                         machine=self.machine, segment=seg, position=pos, seq=rec.seq)
                if rec.seq > upto:
                    return
                if rec.seq > after:
                    yield Entry(seg, pos, envlen, rec)
                if rec.seq == upto:
                    return
                pos += ENTRY_HEAD_SIZE + envlen
                f.seek(envlen, os.SEEK_CUR)

    def read_payload(self, e: Entry) -> bytes:
        """Open an entry's envelope and check it against the header's hash. IntegrityError on any mismatch."""
        r = e.rec
        where: dict[str, Any] = dict(machine=self.machine, disk=r.disk, seq=r.seq, offset=r.offset, length=r.length,
                     segment=e.seg, position=e.pos)
        try:
            fd = os.open(self.path(e.seg), os.O_RDONLY)
        except FileNotFoundError:
            raise StorageError(f"journal segment of record seq={r.seq} is missing", **where) from None
        try:
            buf = platform.pread(fd, ENTRY_HEAD_SIZE + e.envlen, e.pos)
        finally:
            os.close(fd)
        hdr = buf[:HEADER_SIZE]
        try:
            if len(buf) != ENTRY_HEAD_SIZE + e.envlen:
                raise IntegrityError("entry is truncated")
            now = decode_header(hdr)
            if (now.seq, now.disk, now.kind, now.offset, now.length, now.hash) != \
                    (r.seq, r.disk, r.kind, r.offset, r.length, r.hash):
                raise IntegrityError("record header changed on disk")
            payload = self.sealer.open(memoryview(buf)[ENTRY_HEAD_SIZE:], aad=hdr, max_size=MAX_PAYLOAD)
            if len(payload) != r.length:
                raise IntegrityError("payload length does not match the header")
            chk = Record(r.kind, r.disk, r.seq, r.ts_ns, r.offset, r.length, payload, r.hash)
            chk.verify()
        except LifeboatError as err:
            raise IntegrityError(f"journal record seq={r.seq} disk={r.disk} offset={r.offset} of {self.machine} "
                                 f"is corrupt: {err.message}", **where) from None
        except Exception as err:  # zstd errors and the like: still corrupt data, never wrong bytes
            raise IntegrityError(f"journal record seq={r.seq} disk={r.disk} of {self.machine} is corrupt: {err}",
                                 **where) from None
        return payload

    # -- pruning --------------------------------------------------------------------------------------------

    def delete_through(self, base_seq: int) -> list[int]:
        """Delete segments whose records are all <= ``base_seq``. The last segment always stays (it is the writer's)."""
        gone = []
        while len(self.segments) > 1 and self.segments[1] - 1 <= base_seq:
            seg = self.segments.pop(0)
            try:
                self.path(seg).unlink()
            except FileNotFoundError:
                pass
            gone.append(seg)
        if gone:
            fsync_dir(self.folder)
        return gone

    def close(self) -> None:
        if self._fd is not None:
            self._fd.close()
            self._fd = None


def _at_padding(f: Any, pos: int) -> bool:
    """Whether padding starts at ``pos`` (the rule of engine/directio.py); leaves ``f`` at ``pos``."""
    f.seek(pos)
    head = f.read(4)
    f.seek(pos)
    return skip_padding(head, 0, pos) != 0


def _envlen_ok(rec: Record, envlen: int) -> bool:
    if Kind(rec.kind).has_payload:
        return ENV_HEAD_SIZE + TAG_SIZE <= envlen <= MAX_ENVELOPE
    return envlen == 0
