"""An append-only log of records in segment files: the agent's capture journal and the process server's cache.

A folder of segment files ``<first seq:020d><suffix>``; each holds encoded records back to back
(:mod:`engine.records`). A reader consumes them in order; segments whose records are all consumed are deleted.
On open, a torn tail (crash mid-append) is cut off at the last whole, checksummed record.

The process server's cache fsyncs every append before acknowledging the agent (``fsync_each=True``); the agent's
journal is made durable on the protected machine's FLUSH/FUA, like the disk it shadows.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import platform
from .directio import DirectAppender, skip_padding
from .errors import IntegrityError, ProtocolError
from .records import HEADER_SIZE, Record, decode_header

SEGMENT_BYTES = 64 * 1024 * 1024


class SegmentLog:
    def __init__(self, folder: Path, suffix: str = ".lbc", *, fsync_each: bool = True,
                 segment_bytes: int = SEGMENT_BYTES) -> None:
        self.folder = folder
        self.segment_bytes = segment_bytes
        self.suffix = suffix
        self.fsync_each = fsync_each
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.last_seq = 0
        self.bytes = 0
        self._wfd: int | None = None
        self._app: DirectAppender | None = None   # with fsync_each: the open segment, appended with O_DIRECT
        self._wseg: Path | None = None
        self._wsize = 0
        self._rcursor: tuple[Path, int, int] | None = None
        self.corruption: str | None = None
        self._recover()
        # The segments this log holds, oldest first (it alone creates and deletes them): lets ``trim`` see that
        # nothing can be deleted yet without listing the folder at every acknowledgement.
        self._segs: list[Path] = self.segments()
        self._segs_lock = threading.Lock()   # the process server appends and trims its cache in two threads
        # Without fsync_each, segments written since the last sync() other than the open one (rolled over, or
        # found at open: a crashed run may have left them unwritten): sync() makes them durable too.
        self._unsynced: list[Path] = [] if fsync_each else list(self._segs)
        self._dirty = False
        self._dir_unsynced = False

    def segments(self) -> list[Path]:
        return sorted(self.folder.glob("*" + self.suffix))

    def _recover(self) -> None:
        segs = self.segments()
        for i, seg in enumerate(segs):
            good, last = self._scan(seg)
            size = seg.stat().st_size
            if good < size and (i < len(segs) - 1 or self._intact_after(seg, good)):
                # Not a torn tail (that is only ever at the very end): a flipped bit in the middle. Nothing is
                # cut; the owner sets the log aside and heals by a resync.
                self.corruption = f"segment {seg.name}: damaged record at byte {good}"
                self.last_seq = max(self.last_seq, last)
                self.bytes += size
                continue
            if good < size:
                with open(seg, "r+b") as f:
                    f.truncate(good)
                    os.fsync(f.fileno())
            if last:
                self.last_seq = max(self.last_seq, last)
            elif good == 0:
                seg.unlink()  # empty (created, nothing durable written)
                continue
            self.bytes += good

    @staticmethod
    def _intact_after(seg: Path, bad: int) -> bool:
        """Whether a whole, checksummed record header stands somewhere after the damaged spot."""
        with open(seg, "rb") as f:
            f.seek(bad + 1)
            data = f.read()
        pos = data.find(b"LBRC")
        while pos != -1:
            try:
                decode_header(data[pos:pos + HEADER_SIZE])
                return True
            except (ProtocolError, IntegrityError):
                pos = data.find(b"LBRC", pos + 1)
        return False

    @staticmethod
    def _scan(seg: Path) -> tuple[int, int]:
        """(length of the valid prefix, last seq in it)."""
        pos, last = 0, 0
        with open(seg, "rb") as f:
            data = f.read()
        while pos + HEADER_SIZE <= len(data):
            nxt = skip_padding(data, pos)
            if nxt != pos:           # an append's padding (engine/directio.py)
                if nxt > len(data) or data.count(0, pos, nxt) != nxt - pos:
                    break
                pos = nxt
                continue
            try:
                rec = decode_header(data[pos:pos + HEADER_SIZE])
            except (ProtocolError, IntegrityError):
                break
            end = pos + HEADER_SIZE + rec.payload_size
            if end > len(data):
                break
            pos, last = end, rec.seq
        return pos, last

    def append(self, records: Sequence[Record], encoded: Sequence[bytes | memoryview]) -> None:
        """Append and fsync (blocking; run in a thread). Records must have seq > last_seq.

        ``encoded`` is the records' bytes, in order, in any number of pieces (e.g. header, payload, header, ...):
        they are written with one ``writev``.
        """
        if self._wfd is None or self._wsize >= self.segment_bytes:
            self._roll(records[0].seq)
        assert self._wfd is not None
        try:
            if self._app is not None:   # durable at once, padded to a block, past the page cache
                total = self._app.append(encoded, sync=True)
            else:
                total = sum(len(e) for e in encoded)
                done = platform.writev(self._wfd, encoded) if len(encoded) < 1000 else self._write_all(encoded)
                if done != total:
                    raise OSError(f"short write to {self.folder}")
                if self.fsync_each:
                    platform.fdatasync(self._wfd)
                else:
                    self._dirty = True
        except OSError:
            # Roll back a partial append so the log stays a clean sequence of whole records.
            if self._app is not None:
                self._app.truncate(self._wsize)
            else:
                os.ftruncate(self._wfd, self._wsize)
            raise
        self._wsize += total
        self.bytes += total
        self.last_seq = records[-1].seq
        if self._wsize >= self.segment_bytes:
            # Roll now, not at the next append: a full segment that is no longer written can be deleted as soon
            # as it is consumed, even if nothing is appended for a long time (an idle cache held a whole
            # segment of applied records). The name is a lower bound of the seqs the new segment will hold.
            try:
                self._roll(self.last_seq + 1)
            except OSError:
                self._wfd = self._wseg = None   # the append itself is done; the next one tries to roll again

    def _write_all(self, encoded: Sequence[bytes | memoryview]) -> int:
        n = 0
        for i in range(0, len(encoded), 512):
            chunk = encoded[i:i + 512]
            want = sum(len(e) for e in chunk)
            got = platform.writev(self._wfd, chunk)  # type: ignore[arg-type]
            if got != want:
                return n + got
            n += got
        return n

    def _roll(self, first_seq: int) -> None:
        if self._wfd is not None:
            if self._dirty and self._wseg is not None:
                self._unsynced.append(self._wseg)
                self._dirty = False
            self._close_writer()
        self._wseg = self.folder / f"{first_seq:020d}{self.suffix}"
        if self.fsync_each:
            self._app = DirectAppender(self._wseg)
            self._wfd = self._app.fd
        else:
            self._wfd = os.open(self._wseg, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with self._segs_lock:
            if self._wseg not in self._segs:
                self._segs.append(self._wseg)
                self._segs.sort()
        self._wsize = os.fstat(self._wfd).st_size
        if self.fsync_each:
            self._sync_dir()
        else:
            self._dir_unsynced = True   # made durable with the segment's data, by sync()

    def _close_writer(self) -> None:
        fd, app, self._wfd, self._app = self._wfd, self._app, None, None
        if app is not None:
            app.close()
        elif fd is not None:
            os.close(fd)

    def _sync_dir(self) -> None:
        platform.fsync_dir(self.folder)
        self._dir_unsynced = False

    def read_after(self, after_seq: int, max_bytes: int) -> list[Record]:
        """Records with seq > after_seq, in order, up to about max_bytes (blocking; run in a thread).

        Every payload is verified against its hash. Keeps a read cursor so that the applier's sequential reads
        cost one pass over the cache.
        """
        return [rec for rec, _ in self._read(after_seq, max_bytes)]

    def read_raw_after(self, after_seq: int, max_bytes: int) -> list[tuple[Record, memoryview]]:
        """Like :meth:`read_after`, with each record's stored bytes (header and payload, exactly as appended),
        so they can be forwarded without encoding them again. Payloads are verified all the same."""
        return self._read(after_seq, max_bytes)

    def _read(self, after_seq: int, max_bytes: int) -> list[tuple[Record, memoryview]]:
        cur = self._rcursor
        if cur is None or cur[2] != after_seq or not cur[0].exists():
            cur = self._seek(after_seq, cur)
            if cur is None:
                return []
        segs = self.segments()
        if cur[0] not in segs:   # the cursor's segment was deleted meanwhile
            cur = self._seek(after_seq)
            if cur is None:
                return []
            segs = self.segments()
        seg, pos, _ = cur
        out: list[tuple[Record, memoryview]] = []
        size = 0
        idx = segs.index(seg) if seg in segs else 0
        while idx < len(segs) and size < max_bytes:
            seg = segs[idx]
            with open(seg, "rb") as f:
                f.seek(pos)
                data = memoryview(f.read(max(max_bytes - size, 1 << 20) + HEADER_SIZE + (4 << 20)))
            p = 0
            while p + HEADER_SIZE <= len(data) and size < max_bytes:
                q = skip_padding(data, p, pos)
                if q != p:       # an append's padding
                    p = min(q, len(data))
                    continue
                rec = _header(data[p:p + HEADER_SIZE])
                end = p + HEADER_SIZE + rec.payload_size
                if end > len(data):
                    break
                if rec.seq > after_seq:
                    rec.data = data[p + HEADER_SIZE:end]
                    rec.verify()  # a flipped bit in the cache is caught here, never applied
                    out.append((rec, data[p:end]))
                    after_seq = rec.seq
                    size += end - p
                p = end
            pos += p
            if size < max_bytes and seg != self._wseg and pos >= seg.stat().st_size and idx + 1 < len(segs):
                idx, pos = idx + 1, 0
                continue
            break
        self._rcursor = (segs[idx] if idx < len(segs) else seg, pos, after_seq)
        return out

    def _seek(self, after_seq: int, hint: tuple[Path, int, int] | None = None) -> tuple[Path, int, int] | None:
        """Where the first record with seq > after_seq starts. Reads headers only, in 64 KiB windows (payloads are
        skipped), from the segment's start or from ``hint`` (an earlier read position in the same segment)."""
        segs = self.segments()
        if not segs:
            return None
        start = 0
        for i, s in enumerate(segs):
            if int(s.stem) <= after_seq + 1:
                start = i
        seg = segs[start]
        pos = 0
        if hint is not None and hint[0] == seg and hint[2] <= after_seq:
            pos = hint[1]   # every record before it has seq <= hint[2]
        fd = os.open(seg, os.O_RDONLY)
        try:
            win, win_at = b"", pos
            while True:
                off = pos - win_at
                if off + HEADER_SIZE > len(win):
                    win, win_at, off = platform.pread(fd, 65536, pos), pos, 0
                    if len(win) < HEADER_SIZE:
                        break
                nxt = skip_padding(win, off, win_at)
                if nxt != off:   # an append's padding
                    pos = win_at + nxt
                    continue
                rec = _header(win[off:off + HEADER_SIZE])
                if rec.seq > after_seq:
                    break
                pos += HEADER_SIZE + rec.payload_size
        finally:
            os.close(fd)
        return seg, pos, after_seq

    def trim(self, applied_seq: int, unlink: Callable[[Path], object] | None = None) -> None:
        """Delete segments whose records are all <= applied_seq (never the one being written).

        ``unlink`` deletes a file instead of ``Path.unlink`` (e.g. in a worker thread: deleting a large file takes
        a while). The segment no longer counts in ``bytes`` from now on, and no read ever goes back to it.
        """
        with self._segs_lock:
            known = set(self._segs)
            second = self._segs[1] if len(self._segs) > 1 else None
        if second is None or int(second.stem) - 1 > applied_seq:
            return   # not even the oldest segment is entirely acknowledged
        segs = self.segments()
        gone = set()
        for cur, nxt in zip(segs, segs[1:]):
            # (a segment already handed to ``unlink`` may still be listed: it is no longer in ``known``)
            if int(nxt.stem) - 1 <= applied_seq and cur != self._wseg and cur in known:
                self.bytes -= cur.stat().st_size
                if unlink is None:
                    cur.unlink()
                else:
                    unlink(cur)
                gone.add(cur)
        with self._segs_lock:
            self._segs = [p for p in self._segs if p not in gone]
        if gone and self._unsynced:
            self._unsynced = [p for p in self._unsynced if p not in gone]

    def quarantine(self) -> Path:
        """Corruption was found: move every segment aside (kept for forensics) and start afresh.

        ``last_seq`` is kept: numbers are never reused, and what was set aside is healed by a resync.
        """
        q = self.folder.with_name(self.folder.name + f".quarantine-{int(time.time())}")
        q.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._wfd is not None:
            self._close_writer()
            self._wseg, self._wsize = None, 0
        for seg in self.segments():
            seg.rename(q / seg.name)
        self._unsynced.clear()
        self._dirty = False
        self.bytes = 0
        self._rcursor = None
        with self._segs_lock:
            self._segs = []
        return q

    def sync(self) -> None:
        """Make everything appended so far durable (every segment written since the last sync, not only the
        open one)."""
        while self._unsynced:
            seg = self._unsynced[0]
            try:
                fd = os.open(seg, os.O_RDONLY)
            except FileNotFoundError:
                pass   # trimmed meanwhile: its records are no longer needed
            else:
                try:
                    platform.fdatasync(fd)
                finally:
                    os.close(fd)
            self._unsynced.pop(0)
        if self._wfd is not None and (self._dirty or self.fsync_each):
            platform.fdatasync(self._wfd)
            self._dirty = False
        if self._dir_unsynced:
            self._sync_dir()

    def close(self) -> None:
        self._close_writer()


def _header(buf: bytes | memoryview) -> Record:
    """A record header read back from a log: anything malformed there is corruption, not a protocol error."""
    try:
        return decode_header(buf)
    except ProtocolError as exc:
        raise IntegrityError(f"damaged record header in a segment log: {exc.message}") from None
