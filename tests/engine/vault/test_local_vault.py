"""The local vault against a pure-Python reference model, on real files: views, prune, reopen, crashes, corruption."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import stat
import time
from pathlib import Path

import pytest

from engine import platform
from engine.codec import Sealer
from engine.errors import (AlreadyExists, Conflict, IntegrityError, InvalidInput, StorageError, UnknownMachine,
                           UnknownPoint)
from engine.records import Kind, Record
from engine.vault.base import DiskInfo, Point
from engine.vault.journal import ENTRY_HEAD_SIZE, seal_record
from engine.vault.local import LocalMachineVault, LocalVault
from engine.vault.replica import BLOCK, SLOT, ExtentMap

KiB, MiB = 1024, 1024 * 1024
KEY = bytes(range(32))
SIZES = {0: 8 * MiB, 1: 8 * MiB + 12345}   # disk 1 ends inside a block


class Model:
    """Reference: a bytearray per disk, a sha256 per disk at every point."""

    def __init__(self, sizes: dict[int, int]) -> None:
        self.disks = {d: bytearray(s) for d, s in sizes.items()}
        self.seq = 0
        self.snaps: dict[int, dict[int, str]] = {}

    def apply(self, r: Record) -> None:
        if r.kind in (Kind.WRITE, Kind.SYNC):
            self.disks[r.disk][r.offset:r.offset + r.length] = r.data
        elif r.kind in (Kind.ZERO, Kind.TRIM):
            self.disks[r.disk][r.offset:r.offset + r.length] = bytes(r.length)

    def snap(self) -> None:
        self.snaps[self.seq] = {d: hashlib.sha256(b).hexdigest() for d, b in self.disks.items()}


def payload(rng: random.Random, n: int) -> bytes:
    k = rng.random()
    if k < 0.4:
        return rng.randbytes(n)
    if k < 0.8:   # compressible
        pat = rng.randbytes(rng.randint(1, 64))
        return (pat * (n // len(pat) + 1))[:n]
    return bytes(n) if k < 0.9 else b"\xff" * n


def gen(rng: random.Random, model: Model, n: int, *, big: bool = False) -> list[Record]:
    """n random records (unaligned), applied to the model."""
    out = []
    for _ in range(n):
        model.seq += 1
        disk = rng.choice(list(model.disks))
        size = len(model.disks[disk])
        roll = rng.random()
        if roll < 0.55 or (roll < 0.65 and big):
            length = rng.randint(1, 4 * MiB if big else 300 * KiB)
            off = rng.randint(0, size - length)
            r = Record(Kind.WRITE if rng.random() < 0.8 else Kind.SYNC, disk, model.seq, time.time_ns(), off, length,
                       payload(rng, length))
        elif roll < 0.8:
            length = rng.randint(1, 2 * MiB)
            off = rng.randint(0, size - length)
            r = Record(rng.choice([Kind.ZERO, Kind.TRIM]), disk, model.seq, time.time_ns(), off, length)
        elif roll < 0.9:
            r = Record(Kind.SYNC_DONE, 0, model.seq, time.time_ns())
        else:
            data = b'{"tag": "app", "id": "b%d"}' % model.seq
            r = Record(Kind.BOOKMARK, 0, model.seq, time.time_ns(), 0, len(data), data)
        model.apply(r)
        out.append(r)
    return out


async def append(mv: LocalMachineVault, recs: list[Record]) -> None:
    await mv.append([seal_record(mv._sealer, r) for r in recs])


async def disk_sha(mv: LocalMachineVault, seq: int, disk: int, rng: random.Random) -> str:
    h = hashlib.sha256()
    async with await mv.open_view(seq, disk) as v:
        pos = 0
        while pos < v.size:
            n = min(v.size - pos, rng.choice([1, 4 * KiB + 3, 100 * KiB, 700 * KiB, 3 * MiB]))
            h.update(await v.read(pos, n))
            pos += n
    return h.hexdigest()


async def check(mv: LocalMachineVault, model: Model, rng: random.Random, *, every: int = 1) -> int:
    """Every ``every``-th point still in history (plus the first and last) reads identical to the model."""
    seqs = [s for s in sorted(model.snaps) if s >= mv.base_seq]
    pick = [s for i, s in enumerate(seqs) if i % every == 0 or i == len(seqs) - 1]
    for s in pick:
        for d in model.disks:
            assert await disk_sha(mv, s, d, rng) == model.snaps[s][d], f"seq {s} disk {d} differs"
    return len(pick)


async def grow_history(mv: LocalMachineVault, model: Model, rng: random.Random, batches: int, **kw) -> None:
    for _ in range(batches):
        await append(mv, gen(rng, model, rng.randint(1, 6), **kw))
        model.snap()
        await mv.add_point(Point(f"p{model.seq}", model.seq, time.time(), "crash-consistent"))


def small_vault(root: Path, **kw) -> LocalVault:
    kw.setdefault("segment_bytes", 256 * KiB)       # many segments, some straddling prune points
    kw.setdefault("fold_batch_bytes", 16 * BLOCK)   # many fold batches
    return LocalVault(root, KEY, **kw)


async def new_machine(vault: LocalVault, name: str = "web01") -> tuple[LocalMachineVault, Model]:
    mv = await vault.open_machine(name)
    await mv.ensure_disks([DiskInfo(d, f"disk{d}", s) for d, s in SIZES.items()])
    model = Model(SIZES)
    model.snap()   # seq 0: empty disks
    return mv, model


async def test_views_match_model_through_prune_and_reopen(tmp_path):
    rng = random.Random(1)
    vault = small_vault(tmp_path)
    mv, model = await new_machine(vault)
    await grow_history(mv, model, rng, 40)
    assert len(mv._journal.segments) > 5
    assert await check(mv, model, rng, every=4) >= 10

    pts = mv.points()
    keep = pts[len(pts) // 2].seq
    await mv.prune(keep)
    assert mv.base_seq == keep and all(p.seq >= keep for p in mv.points())
    assert [p.seq for p in mv.points()] == [p.seq for p in pts if p.seq >= keep]
    await check(mv, model, rng, every=3)
    with pytest.raises(UnknownPoint):
        await mv.open_view(keep - 1, 0)
    assert (await mv.verify()).ok

    await vault.close()
    vault = small_vault(tmp_path)
    mv = await vault.open_machine("web01")
    assert mv.base_seq == keep and mv.last_seq == model.seq
    await check(mv, model, rng, every=3)
    await grow_history(mv, model, rng, 15, big=True)
    await mv.prune(model.seq - 3)
    await check(mv, model, rng)
    await mv.prune(mv.last_seq)          # everything folded: the replica alone is the disk
    await check(mv, model, rng)
    assert len(mv._journal.segments) == 1
    await vault.close()
    vault = small_vault(tmp_path)
    mv = await vault.open_machine("web01")
    await check(mv, model, rng)
    rep = await mv.verify()
    assert rep.ok and rep.blocks_checked > 0
    await vault.close()


@pytest.mark.parametrize("stage", ["redo-written", "half-applied", "applied", "torn-redo"])
async def test_crash_mid_fold(tmp_path, stage):
    rng = random.Random(2)
    vault = small_vault(tmp_path)
    mv, model = await new_machine(vault)
    await grow_history(mv, model, rng, 30)
    seen: list[int] = []

    def crash(s: str) -> None:
        if s == ("redo-written" if stage == "torn-redo" else stage):
            seen.append(mv.base_seq)
            if len(seen) == 2:        # the second batch dies
                raise RuntimeError("simulated crash")

    mv._fold_hook = crash
    keep = mv.points()[-5].seq
    with pytest.raises(RuntimeError, match="simulated crash"):
        await mv.prune(keep)
    before = seen[-1]                # base_seq when the crashed batch began
    with pytest.raises(StorageError, match="needs reopening"):   # no view of a half-folded replica
        await mv.open_view(mv.last_seq, 0)
    redo = tmp_path / "web01" / "fold.redo"
    assert redo.exists()
    await vault.close()
    if stage == "torn-redo":
        with open(redo, "r+b") as f:
            f.truncate(redo.stat().st_size - 100)

    vault = small_vault(tmp_path)
    mv = await vault.open_machine("web01")
    assert not redo.exists()
    if stage == "torn-redo":
        assert mv.base_seq == before
    else:
        assert before < mv.base_seq < keep
    assert all(p.seq >= mv.base_seq for p in mv.points())
    await check(mv, model, rng, every=2)
    await mv.prune(keep)
    assert mv.base_seq == keep
    await check(mv, model, rng)
    await vault.close()


async def test_torn_journal_tail(tmp_path):
    rng = random.Random(3)
    vault = LocalVault(tmp_path, KEY)
    mv, model = await new_machine(vault)
    recs = []
    for seq in range(1, 7):                # one append per record: the last entry is its own write
        n = rng.randint(1, 200 * KiB)
        r = Record(Kind.WRITE, seq % 2, seq, seq, rng.randint(0, MiB), n, rng.randbytes(n))
        model.seq = seq
        model.apply(r)
        model.snap()
        recs.append(r)
        await append(mv, [r])
    seg = mv._journal.path(mv._journal.segments[-1])
    last = list(mv._journal.iter_entries(0, mv.last_seq))[-1]
    await vault.close()
    size = seg.stat().st_size
    assert size % 4096 == 0                # every append is padded to a block (engine/directio.py)
    with open(seg, "r+b") as f:
        f.truncate(last.pos + ENTRY_HEAD_SIZE + last.envlen - 3)   # the last entry is torn

    vault = LocalVault(tmp_path, KEY)
    mv = await vault.open_machine("web01")
    assert mv.last_seq == 5                # only the torn entry is gone
    with pytest.raises(UnknownPoint):
        await mv.open_view(6, 0)
    await check(mv, _upto(model, 5), rng)
    await append(mv, [recs[-1]])           # the source sends it again
    assert mv.last_seq == 6 and seg.stat().st_size == size
    await check(mv, model, rng)
    await vault.close()

    # a size-extended tail of zeros (data pages never landed) and a whole header whose envelope is zeros
    with open(seg, "ab") as f:
        f.write(bytes(5000))
    vault = LocalVault(tmp_path, KEY)
    mv = await vault.open_machine("web01")
    assert mv.last_seq == 6 and seg.stat().st_size == size
    last = list(mv._journal.iter_entries(0, mv.last_seq))[-1]
    await vault.close()
    with open(seg, "r+b") as f:
        f.seek(last.pos + ENTRY_HEAD_SIZE + 40)
        f.write(bytes(last.envlen - 40))
    vault = LocalVault(tmp_path, KEY)
    mv = await vault.open_machine("web01")
    assert mv.last_seq == 5 and seg.stat().st_size == last.pos
    assert list(seg.parent.glob("*.torn-*")), "the cut bytes are kept for forensics"
    await vault.close()


def _upto(model: Model, seq: int) -> Model:
    m = Model({})
    m.disks = model.disks
    m.snaps = {s: h for s, h in model.snaps.items() if s <= seq}
    return m


async def test_corrupt_journal_envelope(tmp_path):
    vault = LocalVault(tmp_path, KEY)
    mv = await vault.open_machine("m")
    await mv.ensure_disks([DiskInfo(0, "d", 4 * MiB)])
    a, b = os.urandom(100 * KiB), os.urandom(100 * KiB)
    await append(mv, [Record(Kind.WRITE, 0, 1, 1, 0, len(a), a), Record(Kind.WRITE, 0, 2, 2, MiB, len(b), b)])
    e = [x for x in mv._journal.iter_entries(0, 2) if x.rec.seq == 2][0]
    with open(mv._journal.path(e.seg), "r+b") as f:
        f.seek(e.pos + ENTRY_HEAD_SIZE + 5000)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x40]))
    async with await mv.open_view(2, 0) as v:
        with pytest.raises(IntegrityError) as ei:
            await v.read(MiB + 10, 1000)
        assert ei.value.details["seq"] == 2 and ei.value.details["disk"] == 0
        assert await v.read(0, len(a)) == a
        assert await v.read(2 * MiB, 4096) == bytes(4096)
    async with await mv.open_view(1, 0) as v:    # the older point does not need record 2
        assert await v.read(MiB, len(b)) == bytes(len(b))
    rep = await mv.verify()
    assert not rep.ok and [p["seq"] for p in rep.problems] == [2]
    with pytest.raises(IntegrityError):            # folding corrupt data is refused, nothing changes
        await mv.prune(2)
    assert mv.base_seq == 0
    await vault.close()


async def test_corrupt_replica_slot(tmp_path):
    vault = LocalVault(tmp_path, KEY)
    mv = await vault.open_machine("m")
    await mv.ensure_disks([DiskInfo(0, "d", 2 * MiB)])
    data = os.urandom(MiB)
    await append(mv, [Record(Kind.WRITE, 0, 1, 1, 0, len(data), data)])
    await mv.prune(1)
    rep_path = tmp_path / "m" / "replica" / "0.rep"
    with open(rep_path, "r+b") as f:
        f.seek(5 * SLOT + 100)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    async with await mv.open_view(1, 0) as v:
        with pytest.raises(IntegrityError) as ei:
            await v.read(5 * BLOCK + 7, 10)
        assert ei.value.details["block"] == 5 and ei.value.details["disk"] == 0
        with pytest.raises(IntegrityError):
            await v.read(0, MiB)                  # a large read through the thread pool fails the same way
        assert await v.read(0, 5 * BLOCK) == data[:5 * BLOCK]
        assert await v.read(6 * BLOCK, MiB - 6 * BLOCK) == data[6 * BLOCK:]
        assert await v.read(MiB, MiB) == bytes(MiB)
    rep = await mv.verify()
    assert [p["block"] for p in rep.problems] == [5] and rep.blocks_checked == 16
    # swapping two slots is caught too (the AAD names the block)
    with open(rep_path, "r+b") as f:
        f.seek(1 * SLOT)
        s1 = f.read(SLOT)
        f.seek(2 * SLOT)
        f.write(s1)
    async with await mv.open_view(1, 0) as v:
        with pytest.raises(IntegrityError):
            await v.read(2 * BLOCK, 1)
        assert await v.read(BLOCK, BLOCK) == data[BLOCK:2 * BLOCK]
    await vault.close()


async def test_bad_input(tmp_path):
    vault = LocalVault(tmp_path, KEY)
    mv = await vault.open_machine("m")
    await mv.ensure_disks([DiskInfo(0, "d", MiB)])
    s = mv._sealer
    await append(mv, [Record(Kind.WRITE, 0, 5, 1, 0, 3, b"abc"), Record(Kind.SYNC_DONE, 0, 6, 2)])
    for seq in (7, -1):                            # base_seq <= seq <= last_seq (4 is fine: nothing yet)
        with pytest.raises(UnknownPoint):
            await mv.open_view(seq, 0)
    with pytest.raises(InvalidInput):
        await mv.open_view(5, 9)                   # no such disk
    async with await mv.open_view(5, 0) as v:
        assert v.size == MiB
        for off, n in ((MiB - 1, 2), (-1, 1), (0, -1), (MiB + 1, 0)):
            with pytest.raises(ValueError):
                await v.read(off, n)
        assert await v.read(MiB, 0) == b""
        assert await v.read(0, 4) == b"abc\0"
    bad = [
        [Record(Kind.WRITE, 0, 8, 1, 0, 3, b"abc"), Record(Kind.WRITE, 0, 7, 1, 0, 3, b"abc")],  # order
        [Record(Kind.WRITE, 0, 9, 1, MiB - 2, 3, b"abc")],                                        # beyond disk
        [Record(Kind.ZERO, 3, 9, 1, 0, 3)],                                                       # unknown disk
    ]
    for recs in bad:
        with pytest.raises(InvalidInput):
            await append(mv, recs)
    wrong = seal_record(s, Record(Kind.WRITE, 0, 9, 1, 0, 3, b"abc"))
    wrong.envelope = wrong.envelope[:-1]
    with pytest.raises(InvalidInput):
        await mv.append([wrong])
    other = seal_record(Sealer(KEY, 2), Record(Kind.WRITE, 0, 9, 1, 0, 3, b"abc"))
    with pytest.raises(InvalidInput, match="key 2"):
        await mv.append([other])
    assert mv.last_seq == 6
    with pytest.raises(InvalidInput):
        await mv.add_point(Point("p", 7, 0.0, "crash-consistent"))
    await mv.add_point(Point("p", 6, 0.0, "app-consistent", "tag"))
    await mv.add_point(Point("p", 6, 0.0, "app-consistent", "tag"))   # same again: no-op
    with pytest.raises(AlreadyExists):
        await mv.add_point(Point("p", 5, 0.0, "crash-consistent"))
    with pytest.raises(InvalidInput):
        await mv.prune(7)
    with pytest.raises(InvalidInput):
        await mv.ensure_disks([DiskInfo(0, "d", MiB - 1)])            # shrink
    for name in ("", "../x", "a/b", ".hidden", "x" * 129):
        with pytest.raises(InvalidInput):
            await vault.open_machine(name)
    with pytest.raises(UnknownMachine):
        await vault.remove_machine("nobody")
    await vault.close()


async def test_idempotent_append(tmp_path):
    rng = random.Random(4)
    vault = LocalVault(tmp_path, KEY)
    mv, model = await new_machine(vault)
    first = gen(rng, model, 5)
    await append(mv, first)
    seg = mv._journal.path(mv._journal.segments[-1])
    size = seg.stat().st_size
    await append(mv, first)
    assert seg.stat().st_size == size and mv.last_seq == model.seq
    more = gen(rng, model, 3)
    model.snap()
    await append(mv, first[2:] + more)              # overlap: only the new ones are stored
    assert mv.last_seq == model.seq and len(list(mv._journal.iter_entries(0, mv.last_seq))) == 8
    await check(mv, model, rng)
    await vault.close()


async def test_views_stay_valid_and_prune_waits_for_them(tmp_path):
    vault = LocalVault(tmp_path, KEY, prune_wait=0.2)
    mv = await vault.open_machine("m")
    await mv.ensure_disks([DiskInfo(0, "d", MiB)])
    await append(mv, [Record(Kind.WRITE, 0, 1, 1, 0, 4, b"old!")])
    v = await mv.open_view(1, 0)
    await append(mv, [Record(Kind.WRITE, 0, 2, 1, 0, 4, b"new!"), Record(Kind.TRIM, 0, 3, 1, 0, MiB)])
    assert await v.read(0, 4) == b"old!"
    with pytest.raises(Conflict):
        await mv.prune(3)
    assert await v.read(0, 4) == b"old!"
    await v.close()
    with pytest.raises(InvalidInput):
        await v.read(0, 4)
    await mv.prune(3)
    async with await mv.open_view(3, 0) as v:
        assert await v.read(0, MiB) == bytes(MiB)
    # the replica is all holes again after folding a TRIM of the whole disk (where holes can be punched: the
    # portable implementation writes zeros instead, tests/engine/platform/test_portable_storage.py)
    if platform.NAME == "posix":
        assert os.stat(tmp_path / "m" / "replica" / "0.rep").st_blocks == 0
    await vault.close()


async def test_fold_zero_ranges_then_writes_in_one_batch(tmp_path):
    vault = LocalVault(tmp_path, KEY)
    mv = await vault.open_machine("m")
    await mv.ensure_disks([DiskInfo(0, "d", 8 * MiB)])
    model = Model({0: 8 * MiB})
    recs = [Record(Kind.WRITE, 0, 1, 1, 0, 4 * MiB, b"\x11" * (4 * MiB)),
            Record(Kind.WRITE, 0, 2, 1, 4 * MiB, 4 * MiB, os.urandom(4 * MiB)),
            Record(Kind.TRIM, 0, 3, 1, 1000, 7 * MiB),
            Record(Kind.WRITE, 0, 4, 1, 3 * MiB + 5, 70000, os.urandom(70000)),
            Record(Kind.WRITE, 0, 5, 1, 5 * MiB, BLOCK, os.urandom(BLOCK)),
            Record(Kind.ZERO, 0, 6, 1, 100, 10)]
    for r in recs:
        model.seq = r.seq
        model.apply(r)
    model.snap()
    await append(mv, recs)
    await mv.prune(6)
    await check(mv, model, random.Random(5))
    await vault.close()


async def test_resize_wrong_key_remove_and_modes(tmp_path):
    vault = LocalVault(tmp_path, KEY)
    mv = await vault.open_machine("m")
    await mv.ensure_disks([DiskInfo(0, "d", MiB)])
    await mv.ensure_disks([DiskInfo(0, "d", MiB), DiskInfo(1, "e", 3 * BLOCK)])
    await append(mv, [Record(Kind.RESIZE, 0, 1, 1, 0, 2 * MiB),
                      Record(Kind.WRITE, 0, 2, 1, MiB + 5, 3, b"xyz")])
    assert [d.size for d in mv.disks()] == [2 * MiB, 3 * BLOCK]
    await mv.add_point(Point("p2", 2, 1.0, "crash-consistent"))
    await vault.close()
    assert (tmp_path / "m" / "replica" / "0.rep").stat().st_size == 32 * SLOT

    vault = LocalVault(tmp_path, os.urandom(32))
    with pytest.raises(IntegrityError, match="wrong key"):
        await vault.open_machine("m")
    await vault.close()

    vault = LocalVault(tmp_path, KEY)
    mv = await vault.open_machine("m")
    assert [d.size for d in mv.disks()] == [2 * MiB, 3 * BLOCK] and mv.points()[0].id == "p2"
    async with await mv.open_view(2, 0) as v:
        assert v.size == 2 * MiB and await v.read(MiB + 4, 5) == b"\0xyz\0"
    for p in (tmp_path / "m").rglob("*"):
        assert stat.S_IMODE(p.stat().st_mode) == (0o700 if p.is_dir() else 0o600), p
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o700
    assert vault.machines() == ["m"]
    other = LocalVault(tmp_path, KEY)
    with pytest.raises(Conflict):               # a second process (here: a second vault object) is refused
        await other.open_machine("m")
    await other.close()
    await vault.remove_machine("m")
    assert not (tmp_path / "m").exists() and vault.machines() == []
    mv = await vault.open_machine("m")          # starts afresh
    assert mv.last_seq == 0 and mv.disks() == []
    await vault.close()


def test_extent_map_matches_naive_model():
    rng = random.Random(6)
    size = 20000
    m, ref = ExtentMap(), [None] * size
    m.CHUNK = 8                     # small chunks: splits and emptied chunks happen often
    most_chunks = 0
    for i in range(6000):
        a = rng.randrange(size)
        b = min(size, a + rng.choice([1, 2, 7, 20, 50, 400] * 20 + [9000]))
        src = None if rng.random() < 0.1 else i
        m.assign(a, b, src)
        ref[a:b] = [src] * (b - a)
        most_chunks = max(most_chunks, len(m._chunks))
        if i % 250 == 0 or i == 5999:
            lo = rng.randrange(size)
            hi = rng.randint(lo + 1, size)
            got = []
            for x, y, s in m.pieces(lo, hi):
                assert lo <= x < y <= hi
                got += [s] * (y - x)
            assert got == ref[lo:hi]
            assert m.count == sum(1 for _ in m.items())
    assert most_chunks > 20


async def test_views_opened_while_appends_run(tmp_path):
    """Views opened at last_seq while another task keeps appending (in executor threads) see exactly their seq."""
    rng = random.Random(7)
    vault = small_vault(tmp_path, segment_bytes=64 * KiB)
    mv, model = await new_machine(vault)
    batches = []
    for _ in range(40):
        batches.append(gen(rng, model, rng.randint(1, 4)))
        model.snap()
    done = asyncio.Event()

    async def writer() -> None:
        for b in batches:
            await append(mv, b)
        done.set()

    async def reader() -> int:
        n = 0
        while not done.is_set():
            seq = mv.last_seq
            if seq in model.snaps:
                d = rng.choice([0, 1])
                assert await disk_sha(mv, seq, d, rng) == model.snaps[seq][d]
                n += 1
            await asyncio.sleep(0)
        return n

    _, n = await asyncio.gather(writer(), reader())
    assert n > 0
    await vault.close()


async def test_appends_during_prune_and_close_during_prune(tmp_path):
    rng = random.Random(8)
    vault = small_vault(tmp_path, fold_batch_bytes=4 * BLOCK)
    mv, model = await new_machine(vault)
    await grow_history(mv, model, rng, 30, big=True)
    keep = mv.points()[-3].seq

    async def more() -> None:
        await grow_history(mv, model, rng, 10)

    await asyncio.gather(mv.prune(keep), more())
    assert mv.base_seq == keep
    await check(mv, model, rng, every=2)

    await grow_history(mv, model, rng, 20, big=True)
    task = asyncio.create_task(mv.prune(mv.last_seq))
    await asyncio.sleep(0.05)
    await vault.close()                          # stops the fold at a batch boundary
    try:
        await task
    except Exception as e:                       # interrupted (or it had already finished)
        assert "interrupted" in str(e)
    vault = small_vault(tmp_path)
    mv = await vault.open_machine("web01")
    assert keep <= mv.base_seq <= mv.last_seq == model.seq
    await check(mv, model, rng, every=2)
    await vault.close()
