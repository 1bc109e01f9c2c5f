"""Padded O_DIRECT appends (engine/directio.py) and the logs that use them: every append block-aligned, readers
skip the padding, torn appends are cut, and filesystems without O_DIRECT get the same format through the page
cache. Also the agent's lazy journal: records acknowledged in time are never journaled, everything else is."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from engine.agent.capture import MachineCapture
from engine.directio import BLOCK, CHUNK, DirectAppender, padded, skip_padding
from engine.records import Kind, Record
from engine.segment_log import SegmentLog

MiB = 1024 * 1024


def _rec(seq: int, n: int, rng: random.Random) -> Record:
    return Record(Kind.WRITE, 0, seq, seq, rng.randrange(0, 64 * MiB), n, rng.randbytes(n))


def test_appends_are_padded_and_exact(tmp_path: Path) -> None:
    rng = random.Random(1)
    app = DirectAppender(tmp_path / "f")
    expect = bytearray()
    for n in (1, 4095, 4096, 4097, 100_000, CHUNK + 12345):   # the last spans several staging chunks
        data = rng.randbytes(n)
        pieces = [data[:n // 3], memoryview(data)[n // 3:], b""]
        added = app.append(pieces)
        assert added == padded(n) and app.pos % BLOCK == 0
        expect += data + bytes(padded(n) - n)
    app.close()
    assert (tmp_path / "f").read_bytes() == bytes(expect)


def test_direct_io_is_used_where_the_filesystem_has_it(tmp_path: Path) -> None:
    app = DirectAppender(tmp_path / "f")
    try:
        fs = os.statvfs(tmp_path)
        print(f"O_DIRECT on {tmp_path}: {app.direct} (f_type unknown to statvfs, bsize {fs.f_bsize})")
        if not app.direct:
            pytest.skip(f"{tmp_path} refuses O_DIRECT: appends go through the page cache (tested below)")
        app.append([b"x" * 10])
        assert app.direct, "a direct append fell back to the page cache"
    finally:
        app.close()


def test_buffered_fallback_same_format(tmp_path: Path) -> None:
    rng = random.Random(2)
    data = [rng.randbytes(n) for n in (10, 5000, 70_000)]
    a = DirectAppender(tmp_path / "direct")
    b = DirectAppender(tmp_path / "buffered", direct=False)
    assert not b.direct
    for d in data:
        a.append([d])
        b.append([d])
    a.close()
    b.close()
    assert (tmp_path / "direct").read_bytes() == (tmp_path / "buffered").read_bytes()


def test_unaligned_file_is_continued_aligned(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")           # e.g. a file written before, cut at a torn record
    app = DirectAppender(path, create=False)
    app.append([b"defg"])              # through the page cache, padded back to the boundary
    assert app.pos == BLOCK
    app.append([b"h"])                 # aligned again: direct where possible
    app.close()
    raw = path.read_bytes()
    assert raw[:7] == b"abcdefg" and raw[7:BLOCK] == bytes(BLOCK - 7) and raw[BLOCK:BLOCK + 1] == b"h"
    assert len(raw) == 2 * BLOCK


def test_skip_padding_rule() -> None:
    buf = b"LBRC" + bytes(BLOCK - 4) + b"LBRC"
    assert skip_padding(buf, 0) == 0                    # a record start, aligned
    assert skip_padding(buf, 4) == BLOCK                # zeros at an unaligned offset: padding
    assert skip_padding(buf, BLOCK) == BLOCK
    tail = bytes(2) + b"LBRC"                           # padding of two bytes before an aligned record
    assert skip_padding(tail, 0, BLOCK - 2) == 2
    assert skip_padding(b"LB" + bytes(10), 0, 5) == 0   # not zeros: not padding


def test_cache_log_reads_across_padding_and_recovers(tmp_path: Path) -> None:
    rng = random.Random(3)
    log = SegmentLog(tmp_path / "cache", segment_bytes=1 * MiB)   # fsync_each: O_DIRECT, padded
    recs = []
    for seq in range(1, 200):
        r = _rec(seq, rng.choice([1, 100, 4096, 30_000, 200_000]), rng)
        head, payload = r.encode_parts()
        log.append([r], [head, payload])
        recs.append(r)
    for seg in log.segments():
        assert seg.stat().st_size % BLOCK == 0
    got = []
    after = 0
    while True:
        batch = log.read_after(after, 256 * 1024)
        if not batch:
            break
        got += batch
        after = batch[-1].seq
    assert [(r.seq, bytes(r.data)) for r in got] == [(r.seq, bytes(r.data)) for r in recs]
    assert [r.seq for r in log.read_after(150, 1 << 30)][0] == 151     # a seek lands past padding too
    log.close()

    # torn: the newest record's payload is cut (the append never finished); its padding never landed
    segs = sorted((tmp_path / "cache").glob("*.lbc"))
    last = segs[-1] if segs[-1].stat().st_size else segs[-2]
    size = last.stat().st_size
    data = last.read_bytes().rstrip(b"\0")
    with open(last, "r+b") as f:
        f.truncate(len(data) - 10)
    log = SegmentLog(tmp_path / "cache", segment_bytes=1 * MiB)
    assert log.corruption is None
    assert log.last_seq == recs[-2].seq and last.stat().st_size < size
    r = recs[-1]
    head, payload = r.encode_parts()
    log.append([r], [head, payload])                     # the agent sends it again
    assert [x.seq for x in log.read_after(recs[-3].seq, 1 << 30)] == [recs[-2].seq, r.seq]
    log.close()


def test_idle_cache_releases_a_full_segment(tmp_path: Path) -> None:
    """A segment that reached its size is closed at once, so it can be deleted when consumed even if nothing
    is appended afterwards (an idle cache used to hold a whole segment of applied records)."""
    rng = random.Random(4)
    log = SegmentLog(tmp_path / "cache", segment_bytes=256 * 1024)
    for seq in range(1, 4):            # the third append takes the segment past its size
        r = _rec(seq, 100_000, rng)
        log.append([r], list(r.encode_parts()))
    log.trim(3)                        # all applied, nothing appended since
    assert log.bytes == 0
    assert [s.stat().st_size for s in log.segments()] == [0]
    log.close()


def test_lazy_journal(tmp_path: Path) -> None:
    rng = random.Random(5)
    cap = MachineCapture(tmp_path / "journal")
    cap.ship_from_memory(True)                           # the link is up
    for _ in range(10):
        cap.capture_change(Kind.WRITE, 0, rng.randrange(0, 32 * MiB), 65536, rng.randbytes(65536))
    sent = cap.take_unsent(0, 1 << 30)
    assert sent is not None and [r.seq for r, _, _ in sent] == list(range(1, 11))
    cap.acked(6)                                         # the process server holds 1..6
    cap.sync()                                           # FLUSH: what is not acknowledged is journaled
    assert cap.journal.last_seq == 10 and cap.spilled_bytes > 0
    assert [r.seq for r in cap.journal.read_after(0, 1 << 30)] == [7, 8, 9, 10]
    cap.acked(10)
    before = cap.spilled_bytes
    for _ in range(5):                                   # shipped and acknowledged in time: never journaled
        after = cap.last_seq
        cap.capture_change(Kind.WRITE, 0, 0, 4096, rng.randbytes(4096))
        taken = cap.take_unsent(after, 1 << 30)
        assert taken is not None and [r.seq for r, _, _ in taken] == [after + 1]
        cap.acked(after + 1)
    cap.sync()
    assert cap.spilled_bytes == before and cap.journal.last_seq == 10
    cap.capture_change(Kind.ZERO, 0, 0, 4096)
    cap.ship_from_memory(False)                          # the link drops: memory goes to the journal
    assert cap.journal.last_seq == cap.last_seq == 16
    assert cap.take_unsent(15, 1 << 30) is None          # read from the journal now
    cap.journal.close()
