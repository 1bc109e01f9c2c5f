"""The Azure Blob vault against the local vault's reference model, on a real Azurite: page-blob writes, the applier,
snapshots as points, any seq between them from the cache logs, prune, restart, corruption, throttling, bad input."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path

import pytest

from engine.errors import CloudAuthFailed, CloudUnreachable, ContainerMissing, IntegrityError, InvalidInput
from engine.errors import UnknownPoint
from engine.records import Kind, Record
from engine.vault.azure import pages
from engine.vault.azure.rest import AzureBlobClient, Credential
from engine.vault.azure.vault import AzureVault, check_connection
from engine.vault.base import DiskInfo, Point
from engine.vault.journal import seal_record
from engine.vault.replica import ExtentMap
from tests.azurite import KEY as AZ_KEY
from tests.azurite import Azurite, HTTPFaultProxy, azurite_missing
from tests.engine.vault.test_local_vault import KEY, SIZES, Model, check, gen

KiB, MiB = 1024, 1024 * 1024


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    why = azurite_missing()
    if why:
        pytest.skip(why)
    az = Azurite(tmp_path_factory.mktemp("azurite"))
    az.start()
    yield az
    az.stop()


@pytest.fixture
def container(azurite) -> str:
    name = "t" + uuid.uuid4().hex[:12]
    azurite.create_container(name)
    return name


def vault(url: str, container: str, **kw) -> AzureVault:
    kw.setdefault("log_bytes", 256 * KiB)       # many logs, some straddling points
    kw.setdefault("apply_batch", 1 * MiB)       # many apply batches
    retry_for = kw.pop("retry_for", 20.0)
    client = AzureBlobClient(url, container, Credential(key=AZ_KEY), retry_for=retry_for, backoff=0.05)
    return AzureVault(client, KEY, **kw)


async def append(mv, recs: list[Record]) -> None:
    await mv.append([seal_record(mv._sealer, r) for r in recs])


async def history(mv, model: Model, rng: random.Random, batches: int, points: bool = True) -> None:
    for i in range(batches):
        await append(mv, gen(rng, model, rng.randint(1, 6)))
        model.snap()
        if points and i % 2 == 0:
            await mv.add_point(Point(f"c-{model.seq}", model.seq, time.time(), "crash-consistent"))


def test_plan_is_aligned_bounded_and_disjoint() -> None:
    rng = random.Random(5)
    blob = bytearray(rng.randbytes(3 * MiB))
    ref = bytearray(blob)
    emap = ExtentMap()
    for _ in range(200):
        a = rng.randrange(0, len(blob) - 1)
        b = min(len(blob), a + rng.choice([1, 100, 511, 513, 4096, 70_000, 1 * MiB]))
        if rng.random() < 0.3:
            emap.assign(a, b, pages.ZERO)
            ref[a:b] = bytes(b - a)
        else:
            data = rng.randbytes(b - a)
            emap.assign(a, b, (data, a))
            ref[a:b] = data
    ops = pages.plan(emap, lambda off, n: bytes(blob[off:off + n]), max_put=256 * KiB)
    seen: set[int] = set()
    for op in ops:
        assert op.offset % 512 == 0 and op.length % 512 == 0 and op.length <= 256 * KiB if op.kind == "put" \
            else op.offset % 512 == 0 and op.length % 512 == 0
        pg = set(range(op.offset // 512, (op.offset + op.length) // 512))
        assert not pg & seen, "two operations touch the same page"
        seen |= pg
    for op in ops:
        if op.kind == "put":
            blob[op.offset:op.offset + op.length] = op.data
        else:
            blob[op.offset:op.offset + op.length] = bytes(op.length)
    assert blob == ref


async def test_points_any_seq_restart_and_prune(azurite, container) -> None:
    rng = random.Random(11)
    model = Model(SIZES)
    v = vault(azurite.url, container)
    mv = await v.open_machine("vm1")
    await mv.ensure_disks([DiskInfo(d, f"d{d}", s) for d, s in SIZES.items()])
    await history(mv, model, rng, 14)
    await mv.add_point(Point(f"a-{model.seq}", model.seq, time.time(), "app-consistent", "tag-é"))
    pts = mv.points()
    assert len(pts) >= 8 and pts[-1].tag == "tag-é"
    # every point and every seq between them (no snapshot there: snapshot + cache logs)
    assert await check(mv, model, rng) == len(model.snaps)
    seq = next(iter(sorted(model.snaps)))
    with pytest.raises(UnknownPoint):
        await mv.open_view(model.seq + 1, 0)
    await v.close()

    # restart: same points, same bytes, the applier resumes where meta says
    v = vault(azurite.url, container)
    mv = await v.open_machine("vm1")
    assert [p.id for p in mv.points()] == [p.id for p in pts]
    assert mv.last_seq == model.seq
    await history(mv, model, rng, 6)
    await check(mv, model, rng, every=3)
    # any point in time from record capture times
    got = await mv.seq_at_time(time.time())
    assert got is not None and got[0] == model.seq

    # prune to a point in the middle: older points go, the rest still reads exact, logs before it are deleted
    keep = mv.points()[len(mv.points()) // 2].seq
    logs_before = len(mv._logs)
    await mv.prune(keep)
    assert mv.base_seq == keep and all(p.seq >= keep for p in mv.points())
    assert len(mv._logs) < logs_before
    with pytest.raises(UnknownPoint):
        await mv.open_view(keep - 1, 0)
    assert await check(mv, model, rng, every=2) >= 2
    rep = await mv.verify()
    assert rep.ok and rep.records_checked > 0
    # the replica is the page blob at the newest applied seq
    await asyncio.sleep(1.5)     # idle: the applier catches up with the last append
    assert mv.applied_seq == model.seq
    page = mv._c.get_blob(mv._disk_blob(1), offset=0, length=SIZES[1] - SIZES[1] % 512)
    assert page == bytes(model.disks[1][:len(page)])
    await v.close()
    _ = seq


async def test_crash_mid_apply_resumes_without_loss(azurite, container) -> None:
    """The appliance dies after a batch's pages are written but before applied_seq is recorded: reopening
    re-applies from the recorded seq (absolute writes, so twice is the same) and every point stays exact."""
    rng = random.Random(12)
    model = Model(SIZES)
    v = vault(azurite.url, container)
    mv = await v.open_machine("vm1")
    await mv.ensure_disks([DiskInfo(d, f"d{d}", s) for d, s in SIZES.items()])
    await history(mv, model, rng, 6)
    crashed = asyncio.Event()
    loop = asyncio.get_running_loop()

    class PowerLoss(Exception):
        pass

    def hook(stage: str) -> None:
        if stage == "batch-written":
            loop.call_soon_threadsafe(crashed.set)
            raise PowerLoss("simulated power loss after the pages, before applied_seq")
    mv.apply_hook = hook
    await append(mv, gen(rng, model, 8))
    model.snap()
    last = model.seq
    await asyncio.wait_for(crashed.wait(), 10)
    recorded = mv._applied
    assert recorded < last
    # the process is gone: drop it without a clean close (its lease stays; the same appliance takes it back)
    mv._closed = True
    for t in (mv._applier, mv._renewer):
        t.cancel()
    v2 = vault(azurite.url, container)
    mv2 = await v2.open_machine("vm1")
    assert mv2.last_seq == last and mv2._applied == recorded
    await mv2.add_point(Point(f"c-{last}", last, time.time(), "crash-consistent"))
    assert mv2._applied == last
    await check(mv2, model, rng)
    await v2.close()


async def test_corrupt_log_is_detected_by_the_tag(azurite, container) -> None:
    rng = random.Random(13)
    model = Model(SIZES)
    # the applier stays behind (reads come from the logs); no direct appends (the record must be in the log)
    v = vault(azurite.url, container, idle_apply=3600, direct=False)
    mv = await v.open_machine("vm1")
    await mv.ensure_disks([DiskInfo(d, f"d{d}", s) for d, s in SIZES.items()])
    recs = [Record(Kind.WRITE, 0, 1, time.time_ns(), 4096, 64 * KiB, rng.randbytes(64 * KiB))]
    model.seq = 1
    await append(mv, recs)
    await v.close()
    c = AzureBlobClient(azurite.url, container, Credential(key=AZ_KEY))
    name = next(it.name for it in c.list_blobs("vm1/logs/"))
    data = bytearray(c.get_blob(name))
    data[-100] ^= 0x40     # one bit of the envelope's ciphertext
    c.put_block(name, "AAAAAAAA", bytes(data))
    c.put_block_list(name, ["AAAAAAAA"], {k: v for k, v in c.get_properties(name).metadata.items()})
    v = vault(azurite.url, container, idle_apply=3600)
    mv = await v.open_machine("vm1")
    rep = await mv.verify()
    assert not rep.ok and "authentication" in rep.problems[0]["error"]
    view = await mv.open_view(1, 0)
    with pytest.raises(IntegrityError):
        await view.read(4096, 4096)
    await view.close()
    await v.close()


async def test_throttling_and_lost_answers_lose_and_duplicate_nothing(azurite, container) -> None:
    """503/429 with Retry-After on a third of the writes, half of them after the write happened."""
    proxy = HTTPFaultProxy(azurite.port)
    await proxy.start()
    try:
        rng = random.Random(14)
        model = Model(SIZES)
        v = vault(proxy.url(), container)
        mv = await v.open_machine("vm1")
        await mv.ensure_disks([DiskInfo(d, f"d{d}", s) for d, s in SIZES.items()])
        proxy.fail(0.3, status=503, retry_after="0.1", after=False)
        await history(mv, model, rng, 4)
        proxy.fail(0.3, status=429, retry_after="0", after=True)
        await history(mv, model, rng, 4)
        proxy.fail(0.0)
        assert proxy.injected > 5 and v.client.retries >= proxy.injected
        await check(mv, model, rng)
        rep = await mv.verify()
        assert rep.ok and rep.records_checked == model.seq    # every record once: none lost, none twice
        await v.close()
    finally:
        await proxy.stop()


async def test_emulator_restart_mid_stream(azurite, container, tmp_path) -> None:
    """Azurite stopped (SIGTERM) and restarted while records flow: appends wait and retry, nothing is lost."""
    az = Azurite(tmp_path / "own")
    az.start()
    try:
        az.create_container(container)
        rng = random.Random(15)
        model = Model(SIZES)
        v = vault(az.url, container, retry_for=60)
        mv = await v.open_machine("vm1")
        await mv.ensure_disks([DiskInfo(d, f"d{d}", s) for d, s in SIZES.items()])
        await history(mv, model, rng, 3)

        async def bounce() -> None:
            await asyncio.sleep(0.3)
            await asyncio.to_thread(az.stop)
            await asyncio.sleep(2.0)
            await asyncio.to_thread(az.start)
        t = asyncio.create_task(bounce())
        await history(mv, model, rng, 8)
        await t
        await check(mv, model, rng, every=2)
        assert (await mv.verify()).records_checked == model.seq
        await v.close()
    finally:
        az.stop()


async def test_bad_input(azurite, container) -> None:
    bad = AzureBlobClient(azurite.url, container, Credential(key="QUJD" * 22), retry_for=2)
    with pytest.raises(CloudAuthFailed):
        check_connection(bad)
    missing = AzureBlobClient(azurite.url, "nosuchcontainer", Credential(key=AZ_KEY), retry_for=2)
    with pytest.raises(ContainerMissing):
        check_connection(missing)
    dead = AzureBlobClient("http://127.0.0.1:9/devstoreaccount1", container, Credential(key=AZ_KEY), retry_for=1)
    with pytest.raises(CloudUnreachable):
        check_connection(dead)
    with pytest.raises(InvalidInput):
        AzureBlobClient(azurite.url, "Bad_Name", Credential(key=AZ_KEY))
    with pytest.raises(InvalidInput):
        Credential(key="not base64!")
    good = AzureBlobClient(azurite.url, container, Credential(key=AZ_KEY))
    with pytest.raises(InvalidInput):
        good.put_pages("x", 0, bytes(4 * MiB + 512))     # over the 4 MiB limit: refused before sending
    with pytest.raises(InvalidInput):
        good.put_pages("x", 100, bytes(512))
    assert list(good.list_blobs("")) == []               # nothing was written by any of the above
    _ = Path


# -- direct initial replication: straight to the page blobs, headers only in the logs -------------------------------

def initial_sync(rng: random.Random, model: Model, disk: int, start: int, n: int) -> list[Record]:
    """``n`` 1 MiB SYNC records of ``disk`` from ``start`` (the last one short at the disk's end), with guest
    writes, zeroes and trims (unaligned) between them, as the agent sends them during initial replication."""
    out: list[Record] = []
    size = len(model.disks[disk])
    for i in range(n):
        off = start + i * MiB
        if off >= size:
            break
        length = min(MiB, size - off)
        model.seq += 1
        out.append(Record(Kind.SYNC, disk, model.seq, time.time_ns(), off, length, rng.randbytes(length)))
        model.apply(out[-1])
        if rng.random() < 0.5:
            model.seq += 1
            length = rng.randint(1, 200 * KiB)
            off = rng.randint(0, size - length)
            if rng.random() < 0.6:
                r = Record(Kind.WRITE, disk, model.seq, time.time_ns(), off, length, rng.randbytes(length))
            else:
                r = Record(rng.choice([Kind.ZERO, Kind.TRIM]), disk, model.seq, time.time_ns(), off, length)
            out.append(r)
            model.apply(r)
    return out


async def append_plain(mv, recs: list[Record]) -> None:
    """As the applier hands records to a vault that ``takes_plain``: data records unsealed, the rest sealed."""
    from engine.vault.base import SealedRecord
    out = []
    for r in recs:
        if r.kind in (Kind.WRITE, Kind.SYNC):
            r.pack_header()   # computes the payload hash, as the agent does
            out.append(SealedRecord(Record(r.kind, r.disk, r.seq, r.ts_ns, r.offset, r.length, b"", r.hash), b"",
                                    {"data": r.data}))
        else:
            out.append(seal_record(mv._sealer, r))
    await mv.append(out)


def log_entries(url: str, container: str) -> list:
    from engine.vault.azure.logs import parse_log
    c = AzureBlobClient(url, container, Credential(key=AZ_KEY))
    out = []
    for it in c.list_blobs("vm1/logs/"):
        out += parse_log("vm1", int(it.name.rsplit("/", 1)[1]), c.get_blob(it.name))
    c.close()
    return out


async def test_direct_initial_replication(azurite, container) -> None:
    """Initial replication goes straight to the page blobs (its log entries are headers only), the run ends in a
    sync snapshot, the records after it are logged sealed (plain ones sealed by the vault), every point reads
    byte-exact before and after a reopen, and a seq inside the run is refused."""
    rng = random.Random(21)
    model = Model(SIZES)
    v = vault(azurite.url, container)
    mv = await v.open_machine("vm1")
    await mv.ensure_disks([DiskInfo(d, f"d{d}", s) for d, s in SIZES.items()])
    assert mv.takes_plain and mv.batch_bytes
    inside = 0
    for disk in SIZES:
        for start in range(0, SIZES[disk], 3 * MiB):
            recs = initial_sync(rng, model, disk, start, 3)
            await (append_plain if start % 2 else append)(mv, recs)
            inside = inside or recs[0].seq
    logged = log_entries(azurite.url, container)
    assert logged and all(e.direct and e.envlen == 0 for e in logged)
    assert mv.applied_seq == mv.last_seq == model.seq
    # the end of initial replication: SYNC_DONE and a guest write, handed in plain: logged, sealed by the vault
    model.seq += 1
    done = Record(Kind.SYNC_DONE, 0, model.seq, time.time_ns())
    model.seq += 1
    w = Record(Kind.WRITE, 1, model.seq, time.time_ns(), 777, 5000, rng.randbytes(5000))
    model.apply(w)
    await append_plain(mv, [done, w])
    assert not mv.takes_plain and mv.batch_bytes is None
    model.snap()
    await mv.add_point(Point(f"c-{model.seq}", model.seq, time.time(), "crash-consistent"))
    await history(mv, model, rng, 5)
    tail = [e for e in log_entries(azurite.url, container) if e.rec.seq > done.seq]
    assert tail and not any(e.direct for e in tail)
    assert any(e.envlen for e in tail if e.rec.seq == w.seq)
    await check(mv, model, rng)
    with pytest.raises(UnknownPoint):
        await mv.open_view(inside, 0)
    assert (await mv.verify()).ok
    await v.close()
    v2 = vault(azurite.url, container)
    mv2 = await v2.open_machine("vm1")
    assert not mv2.takes_plain and mv2.last_seq == model.seq
    await check(mv2, model, rng)
    await v2.close()


async def test_direct_crash_loses_and_duplicates_nothing(azurite, container) -> None:
    """The appliance dies in a direct append (a) after the pages, before the log commit: the records were never
    acknowledged and come again; (b) after the commit, before meta.json: the reopened vault knows the page blobs
    hold them. Either way the replica ends byte-exact and nothing is applied twice."""
    rng = random.Random(22)
    model = Model(SIZES)

    class PowerLoss(Exception):
        pass

    def abandon(mv) -> None:   # the process is gone: no clean close (the same appliance takes its lease back)
        mv._closed = True
        for t in (mv._applier, mv._renewer):
            t.cancel()

    v = vault(azurite.url, container)
    mv = await v.open_machine("vm1")
    await mv.ensure_disks([DiskInfo(d, f"d{d}", s) for d, s in SIZES.items()])
    await append(mv, initial_sync(rng, model, 0, 0, 3))
    acked = model.seq
    batch3 = initial_sync(rng, model, 0, 3 * MiB, 3)

    def at(stage: str):
        def hook(s: str) -> None:
            if s == stage:
                raise PowerLoss(stage)
        return hook
    mv.apply_hook = at("direct-pages")
    with pytest.raises(PowerLoss):
        await append(mv, batch3)
    abandon(mv)
    v = vault(azurite.url, container)
    mv = await v.open_machine("vm1")
    assert mv.last_seq == acked and mv.applied_seq == acked and mv.takes_plain
    await append(mv, batch3)                     # the agent sends what was never acknowledged again
    batch4 = initial_sync(rng, model, 0, 6 * MiB, 3)
    mv.apply_hook = at("direct-logged")
    with pytest.raises(PowerLoss):
        await append_plain(mv, batch4)
    abandon(mv)
    v = vault(azurite.url, container)
    mv = await v.open_machine("vm1")
    assert mv.last_seq == model.seq and mv.applied_seq == model.seq   # meta.json was behind: the logs tell
    await append(mv, batch4)                     # a resend of acknowledged records is skipped
    assert mv.last_seq == model.seq
    await append(mv, initial_sync(rng, model, 1, 0, 9))
    model.seq += 1
    await append(mv, [Record(Kind.SYNC_DONE, 0, model.seq, time.time_ns())])
    model.snap()
    await mv.add_point(Point(f"c-{model.seq}", model.seq, time.time(), "crash-consistent"))
    await history(mv, model, rng, 4)
    await check(mv, model, rng)
    direct = [e.rec.seq for e in log_entries(azurite.url, container) if e.direct]
    assert len(direct) == len(set(direct))      # no record logged twice
    await v.close()


async def overlapped(mv, batches: list[list[Record]], in_flight: int = 2) -> list:
    """Append the batches as the applier does while the vault ``overlaps_appends``: the next append is called
    before the previous one has returned (at most ``in_flight`` at once). The outcome of each, in order."""
    tasks: list[asyncio.Task] = []
    for i, b in enumerate(batches):
        while sum(not t.done() for t in tasks) >= in_flight:
            await asyncio.wait([t for t in tasks if not t.done()], return_when=asyncio.FIRST_COMPLETED)
        tasks.append(asyncio.create_task((append_plain if i % 2 else append)(mv, b)))
        await asyncio.sleep(0)   # it is called (and registered) before the next one
    return list(await asyncio.gather(*tasks, return_exceptions=True))


async def test_direct_appends_overlap_in_order(azurite, container) -> None:
    """Direct appends called before the previous one has returned: the next one's pages are started while the
    previous one is not committed yet, the log commits stay in seq order (each record logged once), ``last_seq``
    never passes an append before its commit, and every point and the latest state read back byte-exact (sha256),
    before and after a reopen."""
    import threading
    rng = random.Random(23)
    model = Model(SIZES)
    model.snap()
    v = vault(azurite.url, container)
    mv = await v.open_machine("vm1")
    await mv.ensure_disks([DiskInfo(d, f"d{d}", s) for d, s in SIZES.items()])
    assert mv.overlaps_appends
    batches = [initial_sync(rng, model, disk, start, 2) for disk in SIZES for start in range(0, SIZES[disk], 2 * MiB)]
    ends = [b[-1].seq for b in batches]
    stages: list[str] = []
    seen_last: list[int] = []
    cond = threading.Condition()

    def hook(stage: str) -> None:   # in the vault's I/O threads
        with cond:
            stages.append(stage)
            cond.notify_all()
            if stage == "direct-pages":
                # hold this append's commit until the next one's pages are on their way (proves the overlap)
                k = stages.count("direct-pages")
                if k < len(batches):
                    cond.wait_for(lambda: stages.count("direct-submitted") > k, timeout=10)
            elif stage == "direct-logged":
                seen_last.append(mv._last_seq)
    mv.apply_hook = hook
    out = await overlapped(mv, batches)
    assert out == [None] * len(batches)
    # every append but the last had the next one's pages started before its own commit
    for k in range(len(batches) - 1):
        logged_k = [i for i, s in enumerate(stages) if s == "direct-logged"][k]
        submits_before = sum(1 for s in stages[:logged_k] if s == "direct-submitted")
        assert submits_before >= k + 2, f"append {k} was committed before the next one started"
    assert seen_last == ends                    # last_seq moved append by append, in order, at each commit
    assert mv.applied_seq == mv.last_seq == model.seq
    logged = log_entries(azurite.url, container)
    seqs = [e.rec.seq for e in logged]
    assert all(e.direct for e in logged) and seqs == sorted(set(seqs)) and len(seqs) == model.seq
    # the run ends (SYNC_DONE), a point at its end, then more history with points
    mv.apply_hook = None
    model.seq += 1
    await append(mv, [Record(Kind.SYNC_DONE, 0, model.seq, time.time_ns())])
    assert not mv.overlaps_appends
    model.snap()
    await mv.add_point(Point(f"c-{model.seq}", model.seq, time.time(), "crash-consistent"))
    await history(mv, model, rng, 4)
    await check(mv, model, rng)
    assert (await mv.verify()).ok
    await v.close()
    v2 = vault(azurite.url, container)
    mv2 = await v2.open_machine("vm1")
    assert mv2.last_seq == model.seq and not mv2.overlaps_appends
    await check(mv2, model, rng)
    await v2.close()


async def test_direct_overlap_failure_commits_nothing_after(azurite, container) -> None:
    """An overlapped direct append fails (503 until the retries give up) (a) in its pages, (b) in its log commit,
    while the next append's pages have been written: neither is committed, nothing acknowledged is lost,
    ``last_seq`` stays at the last acknowledged record, and the appends sent again (as the applier does, from
    ``last_seq``) land once each; the reopened vault resumes from the last committed entry."""
    proxy = HTTPFaultProxy(azurite.port)
    await proxy.start()
    try:
        rng = random.Random(24)
        model = Model(SIZES)
        v = vault(proxy.url(), container, retry_for=1.0)
        mv = await v.open_machine("vm1")
        await mv.ensure_disks([DiskInfo(d, f"d{d}", s) for d, s in SIZES.items()])
        assert await overlapped(mv, [initial_sync(rng, model, 0, 0, 2), initial_sync(rng, model, 1, 0, 2)]) \
            == [None, None]
        acked = model.seq
        stages: list[str] = []
        mv.apply_hook = stages.append
        for what, match in (("pages", lambda line: "/vm1/disks/0?" in line and "comp=page" in line),
                            ("log commit", lambda line: "comp=blocklist" in line)):
            a = initial_sync(rng, model, 0, 2 * MiB if what == "pages" else 4 * MiB, 2)     # disk 0
            b = initial_sync(rng, model, 1, 2 * MiB if what == "pages" else 4 * MiB, 2)     # disk 1: its pages land
            stages.clear()
            proxy.fail(1.0, status=503, retry_after="0.1", match=match)
            out = await overlapped(mv, [a, b])
            proxy.fail(0.0)
            assert all(isinstance(o, Exception) for o in out), (what, out)
            assert stages.count("direct-submitted") == 2 and "direct-logged" not in stages, (what, stages)
            # nothing after the last acknowledged record was committed, nothing acknowledged went
            assert mv.last_seq == mv.applied_seq == acked, what
            assert max(e.rec.seq for e in log_entries(azurite.url, container)) == acked, what
            # the applier sends both again from last_seq, overlapped as before
            assert await overlapped(mv, [a, b]) == [None, None], what
            assert mv.last_seq == mv.applied_seq == model.seq
            acked = model.seq
        mv.apply_hook = None
        seqs = [e.rec.seq for e in log_entries(azurite.url, container)]
        assert seqs == list(range(1, acked + 1))      # every record logged once, in order
        await v.close()
        v = vault(azurite.url, container)
        mv = await v.open_machine("vm1")
        assert mv.last_seq == mv.applied_seq == acked and mv.overlaps_appends
        assert await overlapped(mv, [initial_sync(rng, model, 0, 6 * MiB, 2), initial_sync(rng, model, 1, 6 * MiB, 3)]) \
            == [None, None]
        model.seq += 1
        await append(mv, [Record(Kind.SYNC_DONE, 0, model.seq, time.time_ns())])
        model.snap()
        await mv.add_point(Point(f"c-{model.seq}", model.seq, time.time(), "crash-consistent"))
        await check(mv, model, rng)
        await v.close()
    finally:
        await proxy.stop()


async def test_configuration_backups_in_the_container(azurite, container) -> None:
    """The appliance's sealed configuration backups kept beside the machines (the scheduled backup's target)."""
    from engine.errors import NotFound
    v = vault(azurite.url, container)
    mv = await v.open_machine("vm1")
    names = ["lifeboat-0123abcd-20261205T080000Z.lbbk", "lifeboat-0123abcd-20261205T090000123Z.lbbk"]
    for i, n in enumerate(names):
        await v.put_config_backup(n, bytes([i]) * 1000)
    assert await v.config_backups() == names
    assert await v.get_config_backup(names[1]) == b"\1" * 1000
    assert v.machines() == ["vm1"]                       # not taken for a machine
    await v.remove_config_backup(names[0])
    assert await v.config_backups() == names[1:]
    with pytest.raises(NotFound):
        await v.get_config_backup(names[0])
    for bad in ("../x", "vm1/meta.json", "lifeboat-x.lbbk"):
        with pytest.raises(InvalidInput):
            await v.put_config_backup(bad, b"x")
    assert mv.last_seq == 0
    await v.close()


async def test_direct_append_checks_unmarked_plaintext(azurite, container) -> None:
    """A plain record the caller has not marked as checked (``extra["verified"]``, which the applier sets) is
    still hashed by the vault: a payload that does not match its header's hash is refused before any page of it
    is written; the same bytes marked as checked are taken as they are (the caller vouches for them)."""
    from engine.vault.base import SealedRecord
    rng = random.Random(5)
    model = Model(SIZES)
    v = vault(azurite.url, container)
    mv = await v.open_machine("vm1")
    await mv.ensure_disks([DiskInfo(d, f"d{d}", s) for d, s in SIZES.items()])
    rec = next(r for r in initial_sync(rng, model, 0, 0, 1) if r.kind in (Kind.WRITE, Kind.SYNC))
    rec.pack_header()
    bad = bytearray(rec.data)
    bad[7] ^= 0x01
    head = Record(rec.kind, rec.disk, rec.seq, rec.ts_ns, rec.offset, rec.length, b"", rec.hash)
    with pytest.raises(IntegrityError):
        await mv.append([SealedRecord(head, b"", {"data": bytes(bad)})])
    assert mv.applied_seq == 0 and mv.last_seq == 0
    await mv.append([SealedRecord(head, b"", {"data": rec.data, "verified": True})])
    assert mv.applied_seq == mv.last_seq == rec.seq
    await v.close()
