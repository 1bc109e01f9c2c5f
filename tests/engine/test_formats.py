"""Records, envelopes and segment logs: round trips, and every corruption is detected rather than applied."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.codec import HEAD_SIZE, Sealer
from engine.errors import IntegrityError, ProtocolError
from engine.records import HEADER_SIZE, MAX_PAYLOAD, Kind, Record, decode_header, decode_records
from engine.segment_log import SegmentLog


def _recs() -> list[Record]:
    return [Record(Kind.WRITE, 0, 1, 10, 4096, 5, b"hello"), Record(Kind.ZERO, 1, 2, 11, 0, 1 << 20),
            Record(Kind.BOOKMARK, 0, 3, 12, 0, 2, b"{}"), Record(Kind.SYNC_DONE, 1, 4, 13)]


def test_record_round_trip_and_header_size() -> None:
    buf = b"".join(r.encode() for r in _recs())
    out = decode_records(buf)
    assert [(r.kind, r.disk, r.seq, r.offset, r.length, bytes(r.data)) for r in out] == \
        [(r.kind, r.disk, r.seq, r.offset, r.length, bytes(r.data)) for r in _recs()]
    assert len(_recs()[1].encode()) == HEADER_SIZE == 56


@pytest.mark.parametrize("pos", [0, 5, 9, 30, 47, 50, HEADER_SIZE + 2])
def test_record_corruption_is_detected(pos: int) -> None:
    raw = bytearray(Record(Kind.WRITE, 0, 1, 10, 4096, 5, b"hello").encode())
    raw[pos] ^= 0x40
    with pytest.raises((IntegrityError, ProtocolError)):
        decode_records(bytes(raw))


def test_record_limits() -> None:
    with pytest.raises(ProtocolError):
        decode_records(Record(Kind.WRITE, 0, 1, 1, 0, 5, b"hello").encode()[:-1])   # truncated payload
    big = Record(Kind.WRITE, 0, 1, 1, 0, MAX_PAYLOAD + 1, b"")
    with pytest.raises(ProtocolError):
        decode_header(big.pack_header())


def test_envelope_authenticates_payload_and_context() -> None:
    s = Sealer(os.urandom(32))
    payload = b"lifeboat " * 1000
    env = s.seal(payload, b"ctx")
    assert len(env) < len(payload) and s.open(env, b"ctx") == payload   # compressed, then sealed
    rnd = os.urandom(4096)
    assert s.open(s.seal(rnd, b"c"), b"c") == rnd                          # incompressible stored as is
    with pytest.raises(IntegrityError):
        s.open(env, b"other context")                                      # moved to another record
    bad = bytearray(env)
    bad[HEAD_SIZE + 3] ^= 1
    with pytest.raises(IntegrityError):
        s.open(bytes(bad), b"ctx")
    with pytest.raises(IntegrityError):
        Sealer(os.urandom(32)).open(env, b"ctx")                           # wrong key


def test_compression_sampling_is_byte_exact() -> None:
    """Large payloads are sampled before zstd (Sealer.compress): random ones are stored raw without a zstd pass,
    compressible ones are compressed, and a payload whose samples happen to be random is stored raw: some
    compression lost, never a byte."""
    from engine.codec import COMP_NONE, COMP_ZSTD
    from engine.codec import HEAD as ENV_HEAD
    s = Sealer(os.urandom(32))
    n = 1 << 20
    text = (b"2026-12-03 11:31:02 INFO replication of vm42 at 61 MB/s\n" * (n // 56 + 1))[:n]
    rnd = os.urandom(n)
    tricky = bytearray(text)
    for i in range(4):                                  # random exactly where the samples are taken
        tricky[i * (n // 4):i * (n // 4) + 4096] = os.urandom(4096)
    cases = {"text": (text, COMP_ZSTD), "random": (rnd, COMP_NONE),
             "random at the samples": (bytes(tricky), COMP_NONE),
             "small random": (os.urandom(1000), COMP_NONE), "small text": (text[:1000], COMP_ZSTD)}
    for name, (payload, comp) in cases.items():
        env = s.seal(payload, b"aad")
        assert ENV_HEAD.unpack_from(env)[2] == comp, name
        assert s.open(env, b"aad") == payload, name
    assert s.compress(rnd) is None and s.compress(b"") is None
    assert len(s.compress(text) or b"") < n // 10


def test_segment_log_append_read_trim_and_torn_tail(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path / "c")
    recs = [Record(Kind.WRITE, 0, i, i, i * 10, 3, b"abc") for i in range(1, 101)]
    for i in range(0, 100, 10):
        log.append(recs[i:i + 10], [r.encode() for r in recs[i:i + 10]])
    got = log.read_after(0, 1 << 20)
    assert [r.seq for r in got] == list(range(1, 101))
    assert [r.seq for r in log.read_after(50, 1 << 20)] == list(range(51, 101))
    log.close()
    seg = log.segments()[-1]
    with open(seg, "ab") as f:
        f.write(Record(Kind.WRITE, 0, 101, 1, 0, 3, b"xyz").encode()[:40])   # crash mid-append
    log2 = SegmentLog(tmp_path / "c")
    assert log2.last_seq == 100 and [r.seq for r in log2.read_after(99, 1 << 20)] == [100]
    # a flipped payload bit in the cache is caught, never handed on
    data = bytearray(seg.read_bytes())
    data[HEADER_SIZE + 1] ^= 1
    seg.write_bytes(bytes(data))
    log3 = SegmentLog(tmp_path / "c")
    with pytest.raises(IntegrityError):
        log3.read_after(0, 1 << 20)
