"""One machine in the Azure Blob vault: cache logs (block blobs) → applier → one page blob per disk; points are
page-blob snapshots.

Per machine, in the configured container (docs/FORMATS.md §5.6)::

    <machine>/meta.json          format, disks, key check, applied_seq, base_seq (leased by the writing appliance)
    <machine>/logs/<first:020d>  cache logs: sealed records (logs.py), metadata firstseq/lastseq/firstts/lastts
    <machine>/disks/<index>      page blob: the disk at applied_seq; its snapshots are the points
                                 (metadata lbid, lbseq, lbtime, lbkind, lbtag); kind "base" = the empty disk
    <machine>/points/<seq:020d>  a point whose seq the applier had already passed (no snapshot of its own)

``append`` commits records to the current cache log (durable on return); the applier writes them into the page
blobs in batches (``pages.plan``) and then records ``applied_seq`` in ``meta.json``. It stays one batch behind the
appends so that a point added right after an append (app-consistent bookmarks inside that batch, the crash point at
its end) finds the page blob not yet past it: ``add_point`` applies up to exactly the point and snapshots every disk.
A view at seq ``s`` of disk ``d`` (``view.py``) is the newest snapshot of ``d`` at or before ``s`` with the logged
records ``(snapshot seq, s]`` of ``d`` over it, so any point in time between snapshots is answered from the logs.

Initial replication goes **direct** (``direct.py``): while the machine has no point yet and the page blobs are caught
up, an append of range records only writes their data straight into the page blobs and only then logs their headers
as direct entries (``logs.py``), so the data crosses the wire once instead of twice (log, then page blob). Nothing is
acknowledged before both are durable; a crash in between leaves pages the agent sends again (the records were never
acknowledged). The run ends at the first other append (or point): every disk is snapshotted there (kind ``sync``),
so views after it never need the direct entries, and a view inside the run (a state during initial replication,
never a point) is refused.

Applying is idempotent (absolute writes; a batch re-applied after a crash yields the same pages), so a restart simply
resumes from ``applied_seq`` (or from the newest direct entry, which the page blobs already hold). The machine's
``meta.json`` is leased (15 s, renewed every 5 s) by the appliance that writes the machine; the lease id is derived
from the vault key and the machine, so the same appliance restarted after a crash takes its own lease back at once,
while another appliance is refused.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

from ...codec import Sealer
from ...errors import AlreadyExists, Conflict, IntegrityError, InvalidInput, LifeboatError, StorageError
from ...errors import UnknownPoint
from ...records import MAX_PAYLOAD, Kind, Record
from ..base import DiskInfo, MachineVault, Point, SealedRecord, VerifyReport
from ..checks import check_record
from ..journal import ENTRY_HEAD_SIZE, ENV_LEN
from ..local_view import DATA_KINDS, ZERO_KINDS
from ..replica import ExtentMap
from ...waits import wait_event
from . import pages, vhd
from .direct import DIRECT_BATCH, DIRECT_KINDS, DirectChain
from .logs import DIRECT_ENV, MAX_BLOCKS, LogEntry, LogInfo, block_id, log_name, parse_log, seg_header
from .pages import Snap
from .rest import MAX_BLOCK, MAX_PUT_PAGE, PAGE, AzureBlobClient, HTTPError, wait_all, wait_quiet
from .view import AzureDiskView

log = logging.getLogger(__name__)
T = TypeVar("T")

FORMAT = 1
KEY_CHECK = b"lifeboat vault key check"
LEASE_SECONDS = 15
#: the applier applies at most this many payload bytes per batch (one ``applied_seq`` update per batch)
APPLY_BATCH = 64 * 1024 * 1024
#: appends wait for the applier while more than this many envelope bytes are not applied yet
PENDING_LIMIT = 256 * 1024 * 1024
#: requests in flight when a committed disk is published (``publish_disk``)
IO_THREADS = 8
#: direct (initial-replication) appends write the page blobs in Put Page requests of at most this many bytes, all


class VaultOwner(Protocol):
    """What a machine needs of the container's vault it belongs to (``vault.AzureVault``)."""

    client: AzureBlobClient
    sealer: Sealer
    direct: bool
    log_bytes: int
    prune_wait: float
    cache_bytes: int
    idle_apply: float
    apply_batch: int
    _lease_seed: bytes
    _io: concurrent.futures.ThreadPoolExecutor       # the machines' blocking steps (one request each)
    _io2: concurrent.futures.ThreadPoolExecutor      # requests that go out together

    def _forget(self, mv: AzureMachineVault) -> None: ...


class AzureMachineVault(MachineVault):
    """One machine in an Azure vault (``vault.AzureVault``). Get it from ``AzureVault.open_machine``."""

    def __init__(self, owner: VaultOwner, machine: str) -> None:
        self.machine = machine
        self._owner = owner
        self._c = owner.client
        self._io2 = owner._io2                       # requests that go out together (pages, a view's reads)
        self._sealer = owner.sealer
        self._disks: list[DiskInfo] = []
        self._logs: dict[int, LogInfo] = {}          # by first seq
        self._writer: LogInfo | None = None          # the log appends go to (None: next append starts one)
        self._snaps: dict[int, list[Snap]] = {}      # disk → snapshots, oldest first
        self._late: list[Point] = []                 # points without a snapshot of their own
        self._last_seq = 0
        self._applied = 0
        self._base_seq = 0
        self._key_check = ""
        self._lease = str(uuid.UUID(bytes=hashlib.sha256(owner._lease_seed + machine.encode()).digest()[:16]))
        self._pending: dict[int, tuple[LogEntry, bytes | bytearray]] = {}   # seq → envelope not applied yet
        self._pending_bytes = 0
        self._append_lock = asyncio.Lock()
        # Overlapped direct appends (``direct.py``). ``_last_call`` is resolved (True: durable, False: failed)
        # when the newest ``append`` call returns; a call made while it is still in progress commits only if it
        # succeeds. ``_chain`` holds the direct appends in flight (and the apply lock while any is).
        self._last_call: asyncio.Future[bool] | None = None
        self._chain = DirectChain(self)
        self._apply_lock = asyncio.Lock()
        self._meta_lock = threading.Lock()
        self._wake = asyncio.Event()
        self._applied_evt = asyncio.Event()
        self._target = 0
        self._cond = asyncio.Condition()
        self._views = 0
        self._pruning = False
        self._closed = False
        self._failed: str | None = None
        self._direct_ok = False                      # appends may go direct (no point nor sync snapshot yet)
        self._direct_open = False                    # direct entries logged since the newest snapshot
        self.direct = owner.direct                   # False: every append goes through the logs
        self._stuck: str | None = None               # the applier met a corrupt record: it applies no further
        self._applier: asyncio.Task | None = None
        self._renewer: asyncio.Task | None = None
        self._payloads: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._payload_bytes = 0
        self._payload_lock = threading.Lock()
        #: test hook: called with a stage name: "batch-written" (the applier, after a batch's pages, before meta),
        #: "direct-submitted" (a direct append's page writes are started), "direct-pages" (its pages are written,
        #: its log not committed), "direct-logged" (committed)
        self.apply_hook: Callable[[str], None] | None = None
        self.throttled = 0

    # -- plumbing -------------------------------------------------------------------------------------------

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._owner._io, fn, *args)

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"vault of machine {self.machine} is closed")
        if self._failed:
            raise StorageError(f"vault of machine {self.machine} stopped: {self._failed}",
                               advice="Close and reopen the machine's vault (restart the appliance); it resumes "
                                      "from the last applied record.")

    def _disk_blob(self, index: int) -> str:
        return f"{self.machine}/disks/{index}"

    def _meta_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "machine": self.machine, "key_id": self._sealer.key_id,
                "key_check": self._key_check,
                "disks": [{"index": d.index, "name": d.name, "size": d.size} for d in self._disks],
                "applied_seq": self._applied, "base_seq": self._base_seq}

    def _write_meta(self) -> None:
        blob = f"{self.machine}/meta.json"
        with self._meta_lock:
            data = json.dumps(self._meta_dict(), indent=1).encode()
            try:
                self._c.put_blob(blob, data, lease=self._lease)
            except HTTPError as e:
                if e.status != 412 or not e.error_code.startswith("Lease"):
                    raise
                # our lease lapsed (a long outage; an emulator restart): take it again unless another appliance has
                log.warning("machine %s: vault lease lost (%s); taking it again", self.machine, e.error_code)
                self._take_lease(blob)
                self._c.put_blob(blob, data, lease=self._lease)

    # -- open -----------------------------------------------------------------------------------------------

    def _open_sync(self) -> None:
        meta_blob = f"{self.machine}/meta.json"
        aad = b"LBKC" + self.machine.encode()
        props = self._c.get_properties(meta_blob)
        if props is None:
            self._key_check = base64.b64encode(self._sealer.seal(KEY_CHECK, aad=aad)).decode()
            try:
                self._c.put_blob(meta_blob, json.dumps(self._meta_dict(), indent=1).encode(), if_none_match=True)
            except HTTPError as e:
                if e.status != 409 and e.status != 412:
                    raise
                props = self._c.get_properties(meta_blob)   # another appliance created it just now
        self._take_lease(meta_blob)
        if props is not None:
            try:
                meta = json.loads(self._c.get_blob(meta_blob))
            except ValueError as e:
                raise StorageError(f"{meta_blob} is unreadable: {e}") from None
            if meta.get("format") != FORMAT or meta.get("machine") != self.machine:
                raise StorageError(f"{meta_blob}: unsupported format or wrong machine")
            self._key_check = meta["key_check"]
            try:
                self._sealer.open(base64.b64decode(self._key_check), aad=aad)
            except LifeboatError:
                raise IntegrityError(f"the vault key does not open machine {self.machine}'s vault (wrong key?)",
                                     advice="Use the vault key this vault was created with.",
                                     machine=self.machine) from None
            self._disks = [DiskInfo(int(d["index"]), str(d["name"]), int(d["size"])) for d in meta["disks"]]
            self._applied = int(meta["applied_seq"])
            self._base_seq = int(meta["base_seq"])
        self._load_history()

    def _take_lease(self, blob: str) -> None:
        deadline = time.monotonic() + LEASE_SECONDS + 5
        while True:
            try:
                self._c.lease(blob, "acquire", self._lease, duration=LEASE_SECONDS)
                return
            except HTTPError as e:
                if e.status != 409:
                    raise
            try:   # leased: by us before a crash (renew takes it back), or by another appliance
                self._c.lease(blob, "renew", self._lease)
                return
            except HTTPError as e:
                if e.status != 409:
                    raise
            if time.monotonic() > deadline:
                raise Conflict(f"machine {self.machine} is written by another appliance (its vault is leased)",
                               advice="Stop the other appliance that protects this machine into the same "
                                      "container, or use another container.", machine=self.machine)
            time.sleep(1.0)

    def _load_history(self) -> None:
        prefix = f"{self.machine}/"
        points: dict[str, Point] = {}
        for it in self._c.list_blobs(prefix, snapshots=True, metadata=True):
            rest = it.name[len(prefix):]
            if rest.startswith("logs/") and it.snapshot is None:
                m = it.metadata
                if "lastseq" not in m:
                    continue          # staged but never committed
                first = int(rest[5:])
                self._logs[first] = LogInfo(it.name, first, int(m["lastseq"]), int(m["firstts"]), int(m["lastts"]),
                                            it.size, last_direct=int(m.get("lastdirect", 0)))
            elif rest.startswith("disks/") and it.snapshot is not None:
                m = it.metadata
                if "lbseq" not in m:
                    continue
                p = None
                if m.get("lbkind") in ("crash-consistent", "app-consistent"):
                    p = Point(m["lbid"], int(m["lbseq"]), float(m["lbtime"]), m["lbkind"],  # type: ignore[arg-type]
                              _unq(m.get("lbtag", "")) or None)
                    points[p.id] = p
                self._snaps.setdefault(int(rest[6:]), []).append(Snap(int(m["lbseq"]), it.snapshot, it.size, p,
                                                                     m.get("lbkind", "base")))
            elif rest.startswith("points/") and it.snapshot is None:
                m = it.metadata
                p = Point(m["lbid"], int(m["lbseq"]), float(m["lbtime"]), m["lbkind"],  # type: ignore[arg-type]
                          _unq(m.get("lbtag", "")) or None)
                self._late.append(p)
        for s in self._snaps.values():
            s.sort(key=lambda x: (x.seq, x.snapshot))
        # a point whose snapshots were cut short (a crash between two disks' snapshots) is a late point
        for p in points.values():
            if any(not any(s.point is not None and s.point.id == p.id for s in self._snaps.get(d.index, []))
                   for d in self._disks):
                if all(q.id != p.id for q in self._late):
                    self._late.append(p)
        self._last_seq = max([self._applied] + [lg.last for lg in self._logs.values()])
        # a direct entry is only logged once its data is in the page blobs, with everything before it applied:
        # the page blobs are at least at the newest one (meta.json is written when the run ends)
        last_direct = max([0] + [lg.last_direct for lg in self._logs.values()])
        if last_direct > self._applied:
            log.info("machine %s: the page blobs hold the direct entries up to seq %d", self.machine, last_direct)
            self._applied = last_direct
        self._direct_open = last_direct > 0 and not any(s.kind != "base" and s.seq >= last_direct
                                                        for ss in self._snaps.values() for s in ss)
        self._direct_ok = not self._late and all(s.kind == "base" for ss in self._snaps.values() for s in ss)
        if self._logs and self._applied < self._last_seq:
            log.info("machine %s: resuming the applier at seq %d (logged up to %d)", self.machine, self._applied,
                     self._last_seq)

    def _start(self) -> None:
        self._applier = asyncio.create_task(self._apply_loop(), name=f"azure-applier:{self.machine}")
        self._renewer = asyncio.create_task(self._renew_loop(), name=f"azure-lease:{self.machine}")
        if self._applied < self._last_seq:
            self._target = self._last_seq
            self._wake.set()

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            try:
                try:
                    await self._io(self._c.lease, f"{self.machine}/meta.json", "renew", self._lease)
                except HTTPError as e:
                    if e.status not in (409, 412):
                        raise
                    await self._io(self._take_lease, f"{self.machine}/meta.json")
            except LifeboatError as e:
                log.warning("machine %s: could not renew the vault lease: %s", self.machine, e)

    # -- interface ------------------------------------------------------------------------------------------

    def disks(self) -> list[DiskInfo]:
        return [DiskInfo(d.index, d.name, d.size) for d in sorted(self._disks, key=lambda d: d.index)]

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def _goes_direct(self) -> bool:
        """Appends go direct (initial replication: no point yet, the page blobs caught up, not stuck)."""
        return self._direct_ok and self.direct and not self._stuck

    @property
    def takes_plain(self) -> bool:
        """While appends go direct: their data goes into the page blobs plain, so sealing it first is wasted."""
        return self._goes_direct

    @property
    def overlaps_appends(self) -> bool:
        """While appends go direct: the next direct append's pages go out while the previous one is committed."""
        return self._goes_direct

    @property
    def batch_bytes(self) -> int | None:  # type: ignore[override]
        """Larger appends while they go direct: each costs a log commit (two round trips) after its pages."""
        return DIRECT_BATCH if self._direct_ok and self.direct else None

    @property
    def base_seq(self) -> int:
        return self._base_seq

    @property
    def applied_seq(self) -> int:
        """Seq the page blobs are at."""
        return self._applied

    async def ensure_disks(self, disks: list[DiskInfo]) -> None:
        self._check_open()
        idx = [d.index for d in disks]
        if len(set(idx)) != len(idx) or any(not 0 <= i < 65536 for i in idx) or any(d.size < 0 for d in disks):
            raise InvalidInput("disk indexes must be unique, 0..65535, sizes >= 0")
        async with self._append_lock, self._apply_lock:
            have = {d.index: d for d in self._disks}
            for d in disks:
                if d.index in have and d.size < have[d.index].size:
                    raise InvalidInput(f"disk {d.index} of {self.machine} cannot shrink "
                                       f"({have[d.index].size} -> {d.size} bytes)")
            await self._io(self._ensure_sync, disks)

    def _ensure_sync(self, disks: list[DiskInfo]) -> None:
        have = {d.index: d for d in self._disks}
        for d in disks:
            cur = have.get(d.index)
            blob = self._disk_blob(d.index)
            if cur is None:
                props = self._c.get_properties(blob)
                if props is None:
                    self._c.create_page_blob(blob, pages.up(d.size))
                elif int(props.header("content-length", "0")) < pages.up(d.size):
                    self._c.resize_page_blob(blob, pages.up(d.size))
                if not self._snaps.get(d.index):   # the empty disk: views before the first point start here
                    sid = self._c.snapshot(blob, {"lbseq": str(self._applied), "lbkind": "base"})
                    self._snaps[d.index] = [Snap(self._applied, sid, pages.up(d.size), None)]
                cur = DiskInfo(d.index, d.name, d.size)
                self._disks.append(cur)
            elif d.size > cur.size:
                self._c.resize_page_blob(blob, pages.up(d.size))
                cur.size = d.size
            cur.name = d.name
        self._write_meta()

    async def append(self, records: list[SealedRecord]) -> None:
        """Durable on return (see the interface). A call made while an earlier one is still in progress (the
        applier overlaps direct appends: ``overlaps_appends``) may start writing at once, but commits only after
        that one has, and fails when that one fails: a later append never lands over a gap."""
        self._check_open()
        if not records:
            return
        dep = self._last_call
        mine: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._last_call = mine
        ok = False
        try:
            commit = await self._append(records, dep)
            if commit is not None:
                # the commit goes on even if this caller is cancelled: a later append's commit waits for it
                await asyncio.shield(commit)
            ok = True
        finally:
            mine.set_result(ok)
            if self._last_call is mine:
                self._last_call = None

    async def _after(self, dep: asyncio.Future[bool] | None) -> None:
        """Wait for the append call ``dep`` this one was made behind; raise when it failed."""
        if dep is not None and not await asyncio.shield(dep):
            raise StorageError(f"an earlier append of {self.machine} failed while this one was in flight: this "
                               "one was not committed either", machine=self.machine,
                               advice="The records are sent again from the vault's last seq.")

    async def _append(self, records: list[SealedRecord], dep: asyncio.Future[bool] | None) -> asyncio.Task | None:
        """The append under the append lock; returns the log commit to wait for when it went direct."""
        async with self._append_lock:
            self._check_open()
            direct = self._goes_direct and all(sr.header.kind in DIRECT_KINDS for sr in records)
            if self._chain.busy:
                if direct:   # behind the direct appends in flight: start its pages now, commit after theirs
                    joined, commit = await self._chain.join(records, dep)
                    if joined:
                        return commit
                else:        # anything else waits until every direct append in flight has finished
                    await self._chain.drain()
            await self._after(dep)
            items, grows, ts, kept = self._prepare(records, self._last_seq)
            if not items:
                return None
            if direct and not grows:
                commit = await self._chain.begin(items, ts, kept)
                if commit is not None:
                    return commit
            if self._direct_open:   # the end of a direct run: snapshot it before anything else is logged
                async with self._apply_lock:
                    await self._chain.close_run()
            if any(not env and Kind(sr.header.kind).has_payload for (_s, _h, env), sr in zip(items, kept)):
                items = await self._io(self._seal_plain, items, kept)
            while self._pending_bytes > PENDING_LIMIT and not self._failed:   # the applier is far behind
                self._applied_evt.clear()
                self._target = self._last_seq
                self._wake.set()
                await self._applied_evt.wait()
            self._check_open()
            if grows:
                async with self._apply_lock:
                    await self._io(self._grow_sync, grows)
            prev_last = self._last_seq
            entries = await self._io(self._write_log, items, ts)
            for e, (_seq, _hdr, env) in zip(entries, items):
                if env:
                    self._pending[e.rec.seq] = (e, env)
                    self._pending_bytes += len(env)
            self._last_seq = items[-1][0]
            # everything before this append has had its points added by now: the applier may take it
            if prev_last > self._target:
                self._target = prev_last
                self._wake.set()
            return None

    def _prepare(self, records: list[SealedRecord], floor: int) -> tuple[list[tuple[int, bytes, bytes | bytearray]],
                                                                        dict[int, int], list[int], list[SealedRecord]]:
        """Check the records; those at or before ``floor`` (held already, or handed to a direct append in flight)
        are skipped."""
        sizes = {d.index: d.size for d in self._disks}
        grows: dict[int, int] = {}
        items: list[tuple[int, bytes, bytes | bytearray]] = []
        ts: list[int] = []
        kept: list[SealedRecord] = []
        prev = floor
        for sr in records:
            if sr.header.seq <= floor:
                continue
            # a record handed in unsealed (takes_plain) is sealed by append when it is logged
            hdr = check_record(sr, prev, sizes, grows, self._sealer.key_id, plain=True)
            env = sr.envelope
            items.append((sr.header.seq, hdr, env if isinstance(env, (bytes, bytearray)) else bytes(env)))
            ts.append(sr.header.ts_ns)
            kept.append(sr)
            prev = sr.header.seq
        return items, grows, ts, kept

    def _grow_sync(self, grows: dict[int, int]) -> None:
        for d in self._disks:
            if d.index in grows and grows[d.index] > d.size:
                self._c.resize_page_blob(self._disk_blob(d.index), pages.up(grows[d.index]))
                d.size = grows[d.index]
        self._write_meta()

    def _seal_plain(self, items: list[tuple[int, bytes, bytes | bytearray]],
                    kept: list[SealedRecord]) -> list[tuple[int, bytes, bytes | bytearray]]:
        """Seal the records handed in plain (for the log), checking each against its hash first."""
        out = []
        for (seq, hdr, env), sr in zip(items, kept):
            r = sr.header
            if not env and Kind(r.kind).has_payload:
                data = sr.extra["data"]
                if not sr.extra.get("verified"):   # checked by the caller already (see _direct_sync)
                    Record(r.kind, r.disk, r.seq, r.ts_ns, r.offset, r.length, data, r.hash).verify()
                env = self._sealer.seal(data, hdr)
            out.append((seq, hdr, env))
        return out

    def _write_log(self, items: list[tuple[int, bytes, bytes | bytearray]], ts: list[int], *,
                   direct: bool = False, before: list[concurrent.futures.Future] | None = None) -> list[LogEntry]:
        """Stage the entries as blocks of the writer's log and commit them; roll to a new log by size.
        ``direct``: the entries' data is in the page blobs already; only their headers are logged."""
        from ...records import decode_header
        w = self._writer
        if w is None or w.size >= self._owner.log_bytes or len(w.blocks) >= MAX_BLOCKS:
            first = items[0][0]
            w = LogInfo(log_name(self.machine, first), first, first - 1, ts[0], ts[0], 0, entries=[])
            head: list[bytes | bytearray] = [seg_header(self.machine, first)]
        else:
            head = []
        parts = head
        pos = w.size + sum(len(p) for p in head)
        entries: list[LogEntry] = []
        for (seq, hdr, env) in items:
            if direct:
                entries.append(LogEntry(decode_header(hdr), pos, 0, True))
                parts.append(hdr + ENV_LEN.pack(DIRECT_ENV))
                pos += ENTRY_HEAD_SIZE
                continue
            entries.append(LogEntry(decode_header(hdr), pos, len(env)))
            parts.append(hdr + ENV_LEN.pack(len(env)))
            if env:
                parts.append(env)
            pos += ENTRY_HEAD_SIZE + len(env)
        data = b"".join(parts)
        new_ids: list[str] = []
        futs = []
        n = len(w.blocks)
        for off in range(0, len(data), MAX_BLOCK):
            bid = block_id(n + len(new_ids))
            new_ids.append(bid)
            futs.append(self._io2.submit(self._c.put_block, w.name, bid, memoryview(data)[off:off + MAX_BLOCK]))
        wait_all((before or []) + futs)   # ``before``: writes that must be durable before the commit
        if direct and self.apply_hook:
            self.apply_hook("direct-pages")
        upd = LogInfo(w.name, w.first, items[-1][0], w.first_ts, ts[-1], pos, w.entries, w.blocks + new_ids,
                      items[-1][0] if direct else w.last_direct)
        self._c.put_block_list(w.name, upd.blocks, upd.metadata(self.machine))
        assert upd.entries is not None
        upd.entries.extend(entries)
        self._writer = upd
        self._logs[upd.first] = upd
        return entries

    # -- applier --------------------------------------------------------------------------------------------

    async def _apply_loop(self) -> None:
        while True:
            if not await wait_event(self._wake, self._owner.idle_apply):
                self._target = max(self._target, self._last_seq)   # quiet: catch the page blobs up
            self._wake.clear()
            if self._target <= self._applied or self._failed or self._stuck:
                continue
            try:
                async with self._apply_lock:
                    await self._apply_to(self._target)
            except Exception as e:
                if isinstance(e, IntegrityError):
                    # the page blobs stay at the last good record; views read the logs (and raise on the
                    # damaged range only), verify reports it, points become log points until a reopen
                    self._stuck = f"the cache logs are corrupt ({e.message})"
                    log.error("machine %s: applier stopped: %s", self.machine, self._stuck)
                else:
                    log.warning("machine %s: applying to the page blobs failed, will retry: %s", self.machine, e)
                    await asyncio.sleep(1.0)
                    self._wake.set()

    async def _apply_to(self, target: int) -> None:
        """Apply logged records ``(applied, target]`` to the page blobs, batch by batch (caller holds the lock)."""
        target = min(target, self._last_seq)
        while self._applied < target:
            batch = await self._io(self._collect, target)
            # every seq is logged (markers too): an empty batch only happens past the last record
            await self._io(self._apply_batch, batch)
            self._applied = batch[-1].rec.seq if batch else target
            await self._io(self._write_meta)
            for e in batch:
                got = self._pending.pop(e.rec.seq, None)
                if got is not None:
                    self._pending_bytes -= len(got[1])
            self._applied_evt.set()

    def _collect(self, target: int) -> list[LogEntry]:
        """The next batch of entries after applied_seq, up to ``target`` and APPLY_BATCH payload bytes."""
        out: list[LogEntry] = []
        size = 0
        for first in sorted(self._logs):
            lg = self._logs[first]
            if lg.last <= self._applied or lg.first > target:
                continue
            for e in self._entries(lg):
                if e.rec.seq <= self._applied:
                    continue
                if e.rec.seq > target:
                    return out
                out.append(e)
                size += e.rec.length if e.envlen else 0
                if size >= self._owner.apply_batch:
                    return out
        return out

    def _entries(self, lg: LogInfo) -> list[LogEntry]:
        if lg.entries is None:
            data = self._c.get_blob(lg.name)
            lg.entries = parse_log(self.machine, lg.first, data)
            for e in lg.entries:   # keep the envelopes of entries the applier still needs
                if e.rec.seq > self._applied and e.envlen and e.rec.seq not in self._pending:
                    env = data[e.pos + ENTRY_HEAD_SIZE:e.end]
                    self._pending[e.rec.seq] = (e, env)
                    self._pending_bytes += len(env)
        return lg.entries

    def _log_of(self, seq: int) -> LogInfo:
        best = None
        for first in self._logs:
            if first <= seq and (best is None or first > best):
                best = first
        if best is None:
            raise StorageError(f"no cache log of {self.machine} holds record seq={seq}", machine=self.machine,
                               seq=seq)
        return self._logs[best]

    def _open_payload(self, e: LogEntry, env: bytes | bytearray | memoryview) -> bytes:
        env = env if isinstance(env, (bytes, memoryview)) else memoryview(env)
        r = e.rec
        try:
            payload = self._sealer.open(env, aad=r.pack_header(), max_size=MAX_PAYLOAD)
            if len(payload) != r.length:
                raise IntegrityError("payload length does not match the header")
            Record(r.kind, r.disk, r.seq, r.ts_ns, r.offset, r.length, payload, r.hash).verify()
        except LifeboatError as err:
            raise IntegrityError(f"cache-log record seq={r.seq} disk={r.disk} offset={r.offset} of {self.machine} "
                                 f"is corrupt: {err.message}", machine=self.machine, disk=r.disk, seq=r.seq,
                                 offset=r.offset, length=r.length) from None
        except Exception as err:
            raise IntegrityError(f"cache-log record seq={r.seq} of {self.machine} is corrupt: {err}",
                                 machine=self.machine, disk=r.disk, seq=r.seq) from None
        return payload

    def _payload(self, e: LogEntry) -> bytes:
        """Decrypted payload of a logged record (from memory when pending, else read from its log; LRU)."""
        key = (e.rec.seq, e.pos)
        with self._payload_lock:
            v = self._payloads.get(key)
            if v is not None:
                self._payloads.move_to_end(key)
                return v
        got = self._pending.get(e.rec.seq)
        if got is not None:
            env: bytes | bytearray = got[1]
        else:
            lg = self._log_of(e.rec.seq)
            env = self._c.get_blob(lg.name, offset=e.pos + ENTRY_HEAD_SIZE, length=e.envlen)
        v = self._open_payload(e, env)
        with self._payload_lock:
            if key not in self._payloads:
                self._payloads[key] = v
                self._payload_bytes += len(v)
                while self._payload_bytes > self._owner.cache_bytes and self._payloads:
                    _, old = self._payloads.popitem(last=False)
                    self._payload_bytes -= len(old)
        return v

    def _apply_batch(self, batch: list[LogEntry]) -> None:
        maps: dict[int, ExtentMap] = {}
        grows: dict[int, int] = {}
        for e in batch:
            r = e.rec
            if e.direct:   # already in the page blobs (and never re-applied: applied_seq is past every one)
                continue
            if r.kind == Kind.RESIZE:
                grows[r.disk] = max(grows.get(r.disk, 0), r.length)
            elif r.length and r.kind in DATA_KINDS:
                pending = self._pending.get(r.seq)
                env = pending[1] if pending is not None else None
                data = self._open_payload(e, env) if env is not None else self._payload(e)
                maps.setdefault(r.disk, ExtentMap()).assign(r.offset, r.offset + r.length, (data, r.offset))
            elif r.length and r.kind in ZERO_KINDS:
                maps.setdefault(r.disk, ExtentMap()).assign(r.offset, r.offset + r.length, pages.ZERO)
        for disk, size in grows.items():
            blob = self._disk_blob(disk)
            props = self._c.get_properties(blob)
            if props is not None and int(props.header("content-length", "0")) < pages.up(size):
                self._c.resize_page_blob(blob, pages.up(size))
        self._write_pages(maps)
        if self.apply_hook:
            self.apply_hook("batch-written")

    def _write_pages(self, maps: dict[int, ExtentMap], max_put: int = pages.MAX_PUT_PAGE) -> None:
        """Every disk's extents into its page blob, all requests in parallel; returns when all have finished."""
        wait_all(self._submit_pages(maps, max_put))

    def _submit_pages(self, maps: dict[int, ExtentMap], max_put: int = pages.MAX_PUT_PAGE,
                      track: list[tuple[int, int, int, concurrent.futures.Future]] | None = None
                      ) -> list[concurrent.futures.Future]:
        """Start the page writes of every disk's extents (all at once); the caller waits for every one. When
        starting them fails half way, the ones started are waited for before the error is raised. ``track``
        collects ``(disk, start, end, future)`` of every request."""
        futs: list[concurrent.futures.Future] = []
        try:
            for disk, emap in maps.items():
                blob = self._disk_blob(disk)

                def read(off: int, n: int, blob: str = blob) -> bytes:
                    return self._c.get_blob(blob, offset=off, length=n)
                ops = pages.plan(emap, read, max_put)
                if max_put < pages.MAX_PUT_PAGE:
                    ops = pages.coalesce(ops)
                for op in ops:
                    if op.kind == "put" and op.data is not None:
                        futs.append(self._io2.submit(self._c.put_pages, blob, op.offset, op.data))
                    else:
                        futs.append(self._io2.submit(self._c.clear_pages, blob, op.offset, op.length))
                    if track is not None:
                        track.append((disk, op.offset, op.offset + op.length, futs[-1]))
        except BaseException:
            wait_quiet(futs)
            raise
        return futs

    # -- committed disks ------------------------------------------------------------------------------------

    publishes_disks = True

    async def publish_disk(self, name: str, image: Path, metadata: dict[str, str]) -> dict[str, Any]:
        """The committed disk ``image`` as a VHD-ready page blob ``<machine>/vhd/<name>.vhd`` (vhd.py): the data
        rounded up to 1 MiB, then the fixed-VHD footer; what Azure's managed-disk import takes. Written again from
        the start when it exists (a retried commit)."""
        self._check_open()
        return await self._io(self._publish_sync, name, image, metadata)

    def _publish_sync(self, name: str, image: Path, metadata: dict[str, str]) -> dict[str, Any]:
        t0 = time.monotonic()
        size = image.stat().st_size
        vsize = vhd.vhd_data_size(size)
        blob = f"{self.machine}/vhd/{name}.vhd"
        meta = {k: _q(v) for k, v in metadata.items()}
        self._c.create_page_blob(blob, vsize + vhd.FOOTER_SIZE, metadata={**meta, "lbsize": str(size)})
        inflight: deque[concurrent.futures.Future] = deque()
        written = 0
        with open(image, "rb") as f:
            pos = 0
            while pos < size:
                data = f.read(min(MAX_PUT_PAGE, size - pos))
                if not data:
                    raise StorageError(f"{image} ended at {pos} of {size} bytes while it was published")
                n = len(data)
                if data.count(0) != n:   # a page blob's unwritten pages read as zeros: holes stay holes
                    if n % PAGE:         # the disk's last bytes: the rest of the page is zeros
                        data += bytes(PAGE - n % PAGE)
                    inflight.append(self._io2.submit(self._c.put_pages, blob, pos, data))
                    written += len(data)
                    if len(inflight) >= IO_THREADS:
                        inflight.popleft().result()
                pos += n
        wait_all(list(inflight))
        self._c.put_pages(blob, vsize, vhd.footer(vsize))
        return {"blob": blob, "url": f"{self._c.account_url}/{self._c.container}/{blob}", "disk_bytes": size,
                "vhd_size": vsize, "blob_bytes": vsize + vhd.FOOTER_SIZE, "written": written,
                "seconds": round(time.monotonic() - t0, 3)}

    # -- points ---------------------------------------------------------------------------------------------

    async def add_point(self, point: Point) -> None:
        self._check_open()
        if not self._base_seq <= point.seq <= self._last_seq:
            raise InvalidInput(f"point {point.id} at seq {point.seq} is outside the history "
                               f"[{self._base_seq}, {self._last_seq}] of {self.machine}")
        for p in self.points():
            if p.id == point.id:
                if p == point:
                    return
                raise AlreadyExists(f"point {point.id} of {self.machine} already exists")
        async with self._apply_lock:
            if self._direct_open and point.seq >= self._applied:
                await self._chain.close_run()
            if point.seq >= self._applied and not self._stuck:
                try:
                    await self._apply_to(point.seq)
                except IntegrityError as e:
                    self._stuck = f"the cache logs are corrupt ({e.message})"
                    log.error("machine %s: applier stopped: %s", self.machine, self._stuck)
            if point.seq == self._applied:
                await self._io(self._snapshot_all, point)
            else:   # the page blobs are past it (or stuck before it): views build it from a snapshot + the logs
                await self._io(self._late_point, point)
                self._late.append(point)

    def _point_meta(self, p: Point) -> dict[str, str]:
        return {"lbid": p.id, "lbseq": str(p.seq), "lbtime": repr(p.time), "lbkind": p.kind,
                "lbtag": _q(p.tag or "")}

    def _snapshot_all(self, p: Point) -> None:
        meta = self._point_meta(p)
        for d in self._disks:
            sid = self._c.snapshot(self._disk_blob(d.index), meta)
            self._snaps.setdefault(d.index, []).append(Snap(p.seq, sid, pages.up(d.size), p, p.kind))
        self._direct_open = False
        self._direct_ok = False

    def _late_point(self, p: Point) -> None:
        self._c.put_blob(f"{self.machine}/points/{p.seq:020d}-{p.id}", b"", metadata=self._point_meta(p))

    def points(self) -> list[Point]:
        seen: dict[str, Point] = {}
        for snaps in self._snaps.values():
            for s in snaps:
                if s.point is not None:
                    seen[s.point.id] = s.point
        for p in self._late:
            seen[p.id] = p
        return sorted((p for p in seen.values() if p.seq >= self._base_seq), key=lambda p: (p.seq, p.time))

    # -- views ----------------------------------------------------------------------------------------------

    async def open_view(self, seq: int, disk: int) -> AzureDiskView:
        self._check_open()
        info = next((d for d in self._disks if d.index == disk), None)
        if info is None:
            raise InvalidInput(f"machine {self.machine} has no disk {disk}")
        async with self._cond:
            await self._cond.wait_for(lambda: not self._pruning)
            if not self._base_seq <= seq <= self._last_seq:
                raise UnknownPoint(f"seq {seq} of {self.machine} is not in the vault's history "
                                   f"[{self._base_seq}, {self._last_seq}]", machine=self.machine, seq=seq)
            snap = next((s for s in reversed(self._snaps.get(disk, [])) if s.seq <= seq), None)
            if snap is None:
                raise UnknownPoint(f"disk {disk} of {self.machine} has no snapshot at or before seq {seq}",
                                   machine=self.machine, seq=seq)
            self._views += 1
        try:
            emap = await self._io(self._view_map, snap.seq, seq, disk)
        except BaseException:
            await self._view_closed()
            raise
        return AzureDiskView(self, seq, disk, info.size, snap, emap)

    def _view_map(self, after: int, seq: int, disk: int) -> ExtentMap:
        emap = ExtentMap()
        for first in sorted(self._logs):
            lg = self._logs[first]
            if lg.last <= after or lg.first > seq:
                continue
            for e in self._entries(lg):
                r = e.rec
                if r.seq <= after or r.disk != disk or not r.length:
                    continue
                if r.seq > seq:
                    break
                if e.direct:
                    raise UnknownPoint(f"seq {seq} of {self.machine} is inside its initial replication (written "
                                       "straight to the page blobs): no view opens there",
                                       advice="Choose a point after the initial replication.",
                                       machine=self.machine, seq=seq)
                if r.kind in DATA_KINDS:
                    emap.assign(r.offset, r.offset + r.length, e)
                elif r.kind in ZERO_KINDS:
                    emap.assign(r.offset, r.offset + r.length, pages.ZERO)
        return emap

    async def _view_closed(self) -> None:
        async with self._cond:
            self._views -= 1
            self._cond.notify_all()

    async def seq_at_time(self, t: float) -> tuple[int, float] | None:
        self._check_open()
        return await self._io(self._seq_at_time_sync, int(t * 1e9))

    def _seq_at_time_sync(self, t_ns: int) -> tuple[int, float] | None:
        best: tuple[int, float] | None = None
        for first in sorted(self._logs):
            lg = self._logs[first]
            if lg.last <= self._base_seq:
                continue
            if lg.first_ts > t_ns:
                break
            if lg.last_ts <= t_ns:   # the whole log is at or before t: its last record (when within history)
                best = (lg.last, lg.last_ts / 1e9)
                continue
            for e in self._entries(lg):
                if e.rec.seq <= self._base_seq:
                    continue
                if e.rec.ts_ns > t_ns:
                    return best
                best = (e.rec.seq, e.rec.ts_ns / 1e9)
        if best is None:
            base = [p for p in self.points() if p.seq == self._base_seq and p.time <= t_ns / 1e9]
            return (self._base_seq, base[0].time) if base else None
        return best

    # -- retention ------------------------------------------------------------------------------------------

    async def prune(self, keep_from_seq: int) -> None:
        """Drop points before ``keep_from_seq``, the snapshots no view at or after it needs, and the cache logs
        whose records are all applied and older than every kept snapshot."""
        self._check_open()
        if keep_from_seq > self._last_seq:
            raise InvalidInput(f"cannot prune {self.machine} up to seq {keep_from_seq}: last seq is {self._last_seq}")
        if keep_from_seq <= self._base_seq:
            return
        async with self._cond:
            try:
                async with asyncio.timeout(self._owner.prune_wait):
                    await self._cond.wait_for(lambda: self._views == 0 and not self._pruning)
            except TimeoutError:
                raise Conflict(f"cannot prune {self.machine}: {self._views} view(s) stay open",
                               advice="Close the recovery views (drills, exports) first, then prune again.") from None
            self._pruning = True
        try:
            async with self._apply_lock:
                await self._io(self._prune_sync, keep_from_seq)
        finally:
            async with self._cond:
                self._pruning = False
                self._cond.notify_all()

    def _prune_sync(self, keep: int) -> None:
        old_base = self._base_seq
        self._base_seq = keep
        try:
            self._write_meta()                   # first: a crash after it only leaves garbage for the next prune
        except BaseException:
            self._base_seq = old_base
            raise
        floor = keep
        for d in self._disks:
            snaps = self._snaps.get(d.index, [])
            k = max((i for i, s in enumerate(snaps) if s.seq <= keep), default=0)
            for s in snaps[:k]:
                self._c.delete_blob(self._disk_blob(d.index), snapshot=s.snapshot)
            self._snaps[d.index] = snaps[k:]
            if snaps[k:]:
                floor = min(floor, snaps[k].seq)
        for p in [p for p in self._late if p.seq < keep]:
            self._c.delete_blob(f"{self.machine}/points/{p.seq:020d}-{p.id}")
            self._late.remove(p)
        self._delete_logs(min(floor, self._applied))

    def _delete_logs(self, upto: int) -> None:
        for first in sorted(self._logs):
            lg = self._logs[first]
            if lg.last <= upto and lg is not self._writer:
                self._c.delete_blob(lg.name)
                del self._logs[first]

    def history_bytes(self, keep_from_seq: int | None = None) -> int:
        """Bytes of the cache logs now, or after ``prune(keep_from_seq)`` (logs entirely before it go)."""
        total = 0
        for lg in self._logs.values():
            if keep_from_seq is not None and lg.last <= min(keep_from_seq, self._applied) and lg is not self._writer:
                continue
            total += lg.size
        return total

    # -- verify ---------------------------------------------------------------------------------------------

    async def verify(self) -> VerifyReport:
        self._check_open()
        async with self._cond:
            await self._cond.wait_for(lambda: not self._pruning)
            self._views += 1
        try:
            return await self._io(self._verify_sync)
        finally:
            await self._view_closed()

    def _verify_sync(self) -> VerifyReport:
        rep = VerifyReport()
        for first in sorted(self._logs):
            lg = self._logs[first]
            try:
                data = self._c.get_blob(lg.name)
                entries = parse_log(self.machine, lg.first, data)
            except (IntegrityError, StorageError) as err:
                rep.problems.append({"what": "cache-log", "log": lg.name, "error": err.message, **err.details})
                continue
            for e in entries:
                rep.records_checked += 1
                if e.envlen and not e.direct:
                    try:
                        self._open_payload(e, data[e.pos + ENTRY_HEAD_SIZE:e.end])
                    except IntegrityError as err:
                        rep.problems.append({"what": "cache-log", "error": err.message, **err.details})
        return rep

    # -- close ----------------------------------------------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        async with self._append_lock:
            if self._closed:
                return
            await self._chain.drain()   # never abandon a direct append half way
            self._closed = True
            for t in (self._applier, self._renewer):
                if t is not None:
                    t.cancel()
            await asyncio.gather(*(t for t in (self._applier, self._renewer) if t is not None),
                                 return_exceptions=True)
            async with self._apply_lock:
                try:
                    await self._io(self._c.lease, f"{self.machine}/meta.json", "release", self._lease)
                except LifeboatError as e:
                    log.warning("machine %s: lease not released: %s", self.machine, e)
        self._owner._forget(self)



def _q(s: str) -> str:
    """Metadata values travel in HTTP headers: keep them ASCII (percent-encoded UTF-8)."""
    import urllib.parse
    return urllib.parse.quote(s, safe="")


def _unq(s: str) -> str:
    import urllib.parse
    return urllib.parse.unquote(s)

