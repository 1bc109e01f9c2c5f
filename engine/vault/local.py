"""The local vault: the embedded default backend, files under one root folder.

Per machine, ``<root>/<machine>/`` holds::

    meta.json          format, disks [{index, name, size}], base_seq, last_seq (lazily), key check   (atomic rewrite)
    replica/<i>.rep    disk i as at base_seq: encrypted 64 KiB slots (replica.py)
    journal/*.lbj      sealed records after base_seq, in segments (journal.py)
    points.jsonl       one Point per line: appended + fsynced; rewritten atomically on prune
    fold.redo          only during a fold batch (replica.py)
    lock               locked (platform.try_lock: flock, LockFileEx): one process per machine

Views of a disk at a seq, the decrypted-payload cache and verify reports are in :mod:`engine.vault.local_view`.
``prune(keep)`` folds records ``<= keep`` into the replica in bounded batches through a redo file, so a crash at any
moment leaves either the old or the new state of each batch.

Keys: ``LocalVault(root, key)`` takes the 32-byte vault key. Records are sealed by ``Sealer(key, key_id)`` (callers
seal with the same key, see :func:`engine.vault.journal.seal_record`); replica slots use a key derived from it
(:func:`engine.vault.replica.derive_replica_key`). ``meta.json`` holds a sealed key check so a wrong key fails at
``open_machine`` instead of at the first read.

Disk sizes: disks only grow (``ensure_disks`` or a RESIZE record that grows the disk).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import logging
import os
import re
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, TypeVar

from .. import platform
from ..codec import Sealer
from ..errors import AlreadyExists, Conflict, IntegrityError, InvalidInput, LifeboatError, StorageError
from ..errors import UnknownMachine, UnknownPoint, VaultFull, is_no_space
from ..names import check_name, inside
from ..fileio import atomic_write, make_private_dir
from .base import DiskInfo, MachineVault, Point, SealedRecord, Vault, VerifyReport
from .checks import check_record
from .journal import SEGMENT_BYTES, Entry, Journal, fsync_dir
# LocalDiskView lives in local_view (VerifyReport in base); importing them here keeps `from .local import ...` working
from .local_view import DATA_KINDS, ZERO_KINDS, LocalDiskView, _PayloadCache, build_extent_map
from .local_view import seq_at_time_scan, verify_all
from .replica import BLOCK, FoldBatch, ReplicaCipher, ReplicaFile, apply_redo, derive_replica_key
from .replica import read_redo_seq, write_redo

#: a configuration backup's file name (engine/backup/archive.py names them so)
BACKUP_NAME = re.compile(r"lifeboat-[0-9a-f]{8}-\d{8}T\d{6}(\d{3})?Z\.lbbk")

log = logging.getLogger(__name__)
T = TypeVar("T")

FORMAT = 1
KEY_CHECK = b"lifeboat vault key check"


def _check_machine_name(machine: str) -> None:
    check_name(machine, "machine name")  # the one name rule (engine/names.py), again here: defence in depth


class LocalMachineVault(MachineVault):
    """One machine's folder in a :class:`LocalVault`. Get it from :meth:`LocalVault.open_machine`."""

    def __init__(self, owner: LocalVault, machine: str, folder: Path) -> None:
        self.machine = machine
        self.folder = folder
        self._owner = owner
        self._sealer = owner.sealer
        self._cipher = ReplicaCipher(owner._replica_key, machine)
        self._journal = Journal(folder / "journal", machine, self._sealer, segment_bytes=owner.segment_bytes)
        self._cache = _PayloadCache(owner.cache_bytes)
        self._replicas: dict[int, ReplicaFile] = {}
        self._disks: list[DiskInfo] = []
        self._base_seq = 0
        self._last_seq = 0
        self._key_check = ""
        self._points: list[Point] = []
        self._lock_fd: int | None = None
        self._meta_lock = threading.Lock()         # meta is rewritten from the loop and from fold threads
        self._append_lock = asyncio.Lock()         # one writer of journal/disks at a time
        self._points_lock = asyncio.Lock()
        self._cond = asyncio.Condition()           # guards _views / _pruning
        self._views = 0
        self._pruning = False
        self._stopping = False
        self._closed = False
        self._failed: str | None = None            # in-memory state no longer matches the files: reopen to recover
        #: test hook: called with a stage name during folds ("redo-written", "half-applied", "applied")
        self._fold_hook: Callable[[str], None] | None = None

    # -- plumbing -------------------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._owner._executor, fn, *args)

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"vault of machine {self.machine} is closed")
        if self._failed:
            raise StorageError(f"vault of machine {self.machine} needs reopening: {self._failed}",
                               advice="Close and reopen the machine's vault; opening finishes the interrupted work.")

    def _payload(self, e: Entry) -> bytes:
        return self._cache.get((e.seg, e.pos), lambda: self._journal.read_payload(e))

    def _write_meta(self) -> None:
        with self._meta_lock:
            meta = {"format": FORMAT, "machine": self.machine, "key_id": self._sealer.key_id,
                    "key_check": self._key_check,
                    "disks": [{"index": d.index, "name": d.name, "size": d.size} for d in self._disks],
                    "base_seq": self._base_seq, "last_seq": self._last_seq}
            atomic_write(self.folder / "meta.json", json.dumps(meta, indent=1).encode())

    # -- open -----------------------------------------------------------------------------------------------

    def _open_sync(self) -> None:
        make_private_dir(self.folder)
        make_private_dir(self.folder / "replica")
        self._lock_fd = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        if not platform.try_lock(self._lock_fd):
            os.close(self._lock_fd)
            self._lock_fd = None
            raise Conflict(f"machine {self.machine} is open in another process")
        try:
            self._load_sync()
        except BaseException:
            self._close_sync(write_meta=False)
            raise

    def _load_sync(self) -> None:
        meta_path = self.folder / "meta.json"
        aad = b"LBKC" + self.machine.encode()
        if meta_path.exists():
            try:
                meta = json.loads(meta_path.read_bytes())
            except ValueError as e:
                raise StorageError(f"{meta_path} is unreadable: {e}") from None
            if meta.get("format") != FORMAT or meta.get("machine") != self.machine:
                raise StorageError(f"{meta_path}: unsupported format or wrong machine")
            self._key_check = meta["key_check"]
            try:
                self._sealer.open(base64.b64decode(self._key_check), aad=aad)
            except LifeboatError:
                raise IntegrityError(f"the vault key does not open machine {self.machine}'s vault (wrong key?)",
                                     advice="Use the vault key this vault was created with.",
                                     machine=self.machine) from None
            self._disks = [DiskInfo(int(d["index"]), str(d["name"]), int(d["size"])) for d in meta["disks"]]
            self._base_seq = int(meta["base_seq"])
            meta_last = int(meta["last_seq"])
        else:
            self._key_check = base64.b64encode(self._sealer.seal(KEY_CHECK, aad=aad)).decode()
            meta_last = 0
            self._write_meta()
        for d in self._disks:
            self._open_replica(d, create=False)
        # finish a fold that crashed: a complete redo is re-applied (idempotent), a torn one was never applied
        redo = self.folder / "fold.redo"
        if redo.exists():
            seq = read_redo_seq(redo)
            if seq is not None and seq >= self._base_seq:
                log.warning("machine %s: finishing an interrupted fold up to seq %d", self.machine, seq)
                apply_redo(redo, self._replicas)
                self._base_seq = seq
                self._write_meta()
            redo.unlink()
            fsync_dir(self.folder)
        last = self._journal.load()
        self._last_seq = max(last, self._base_seq)
        if meta_last > self._last_seq:
            log.error("machine %s: journal ends at seq %d but seq %d was stored before: records were lost; "
                      "the source will be asked to send them again", self.machine, self._last_seq, meta_last)
        self._journal.delete_through(self._base_seq)   # an interrupted prune may have left some
        self._load_points()

    def _open_replica(self, d: DiskInfo, *, create: bool = True) -> None:
        path = self.folder / "replica" / f"{d.index}.rep"
        if not create and not path.exists():   # meta is written after the file is made: this is data loss
            raise StorageError(f"replica of disk {d.index} of {self.machine} is missing ({path})",
                               machine=self.machine, disk=d.index)
        rep = ReplicaFile(path, self.machine, d.index, self._cipher)
        self._replicas[d.index] = rep
        rep.grow(d.size)

    def _load_points(self) -> None:
        path = self.folder / "points.jsonl"
        if not path.exists():
            return
        data = path.read_bytes()
        lines = data.split(b"\n")
        # no final newline: the last add_point was cut short; rewrite so the next append starts a fresh line
        pts, dirty = [], bool(data) and not data.endswith(b"\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                pts.append(Point(**json.loads(line)))
            except (ValueError, TypeError):
                if i < len(lines) - 2:
                    raise StorageError(f"{path} line {i + 1} is unreadable") from None
                dirty = True       # torn last line: the add_point was never acknowledged
        keep = [p for p in pts if p.seq >= self._base_seq]
        self._points = keep
        if dirty or len(keep) != len(pts):
            self._rewrite_points()

    def _rewrite_points(self) -> None:
        data = "".join(json.dumps(p.to_dict()) + "\n" for p in self._points).encode()
        atomic_write(self.folder / "points.jsonl", data)

    # -- interface ------------------------------------------------------------------------------------------

    def disks(self) -> list[DiskInfo]:
        """The machine's disks (copies), by index."""
        return [DiskInfo(d.index, d.name, d.size) for d in sorted(self._disks, key=lambda d: d.index)]

    @property
    def last_seq(self) -> int:
        """Highest seq durably in the journal (0 when none)."""
        return self._last_seq

    @property
    def base_seq(self) -> int:
        """Seq the replica is at; views can be opened at ``base_seq <= seq <= last_seq``."""
        return self._base_seq

    async def ensure_disks(self, disks: list[DiskInfo]) -> None:
        """Create sparse replicas for new disks, grow grown ones; InvalidInput if a disk would shrink."""
        self._check_open()
        idx = [d.index for d in disks]
        if len(set(idx)) != len(idx) or any(not 0 <= i < 65536 for i in idx) or any(d.size < 0 for d in disks):
            raise InvalidInput("disk indexes must be unique, 0..65535, sizes >= 0")
        async with self._append_lock:
            have = {d.index: d for d in self._disks}
            for d in disks:
                if d.index in have and d.size < have[d.index].size:
                    raise InvalidInput(f"disk {d.index} of {self.machine} cannot shrink "
                                       f"({have[d.index].size} -> {d.size} bytes)")
            await self._run(self._ensure_sync, disks)

    def _ensure_sync(self, disks: list[DiskInfo]) -> None:
        have = {d.index: d for d in self._disks}
        for d in disks:
            cur = have.get(d.index)
            if cur is None:
                cur = DiskInfo(d.index, d.name, d.size)
                self._open_replica(cur)
                self._disks.append(cur)
            else:
                self._replicas[d.index].grow(d.size)
                cur.size, cur.name = max(cur.size, d.size), d.name
        self._write_meta()

    def _grow_sync(self, grows: dict[int, int]) -> None:
        for d in self._disks:
            if d.index in grows:
                self._replicas[d.index].grow(grows[d.index])
                d.size = max(d.size, grows[d.index])
        self._write_meta()

    async def append(self, records: list[SealedRecord]) -> None:
        """Append records (seq order); durable on return; seqs <= last_seq are skipped (idempotent re-send)."""
        self._check_open()
        if not records:
            return
        async with self._append_lock:
            items, grows = self._prepare(records)
            try:
                if grows:
                    await self._run(self._grow_sync, grows)
                if not items:
                    return
                rolled = await self._run(self._journal.write, items)
            except LifeboatError:
                raise
            except OSError as e:
                if self._journal.damaged:
                    self._failed = f"a failed append could not be undone ({e})"
                if is_no_space(e):   # rolled back (truncation needs no space): the records are simply not in
                    raise VaultFull(f"the vault's filesystem is full: {self.machine}'s records cannot be written",
                                    machine=self.machine) from e
                raise StorageError(f"could not write the journal of {self.machine}: {e}") from e
            self._last_seq = items[-1][0]
            if rolled:   # last_seq in meta is only a hint (recovery scans the journal): refresh it now and then
                await self._run(self._write_meta)

    def _prepare(self, records: list[SealedRecord]) -> tuple[list[tuple[int, bytes, bytes | bytearray]], dict[int, int]]:
        """Validate records before anything is written; returns journal items and disk growths."""
        sizes = {d.index: d.size for d in self._disks}
        grows: dict[int, int] = {}
        items: list[tuple[int, bytes, bytes | bytearray]] = []
        prev = self._last_seq
        for sr in records:
            if sr.header.seq <= self._last_seq:
                continue
            hdr = check_record(sr, prev, sizes, grows, self._sealer.key_id)
            env = sr.envelope
            # bytes as they are (a bytearray too: sealed for this append and not touched after it); others copied
            items.append((sr.header.seq, hdr, env if isinstance(env, (bytes, bytearray)) else bytes(env)))
            prev = sr.header.seq
        return items, grows

    async def add_point(self, point: Point) -> None:
        """Record a point; durable on return. Adding the same point again is a no-op."""
        self._check_open()
        if not self._base_seq <= point.seq <= self._last_seq:
            raise InvalidInput(f"point {point.id} at seq {point.seq} is outside the history "
                               f"[{self._base_seq}, {self._last_seq}] of {self.machine}")
        async with self._points_lock:
            for p in self._points:
                if p.id == point.id:
                    if p == point:
                        return
                    raise AlreadyExists(f"point {point.id} of {self.machine} already exists")
            line = (json.dumps(point.to_dict()) + "\n").encode()
            await self._run(self._append_point_sync, line)
            self._points.append(Point(**point.to_dict()))

    def _append_point_sync(self, line: bytes) -> None:
        path = self.folder / "points.jsonl"
        new = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            fsync_dir(self.folder)

    def points(self) -> list[Point]:
        """Points still within history, oldest first."""
        return sorted((p for p in self._points if p.seq >= self._base_seq), key=lambda p: (p.seq, p.time))

    async def open_view(self, seq: int, disk: int) -> LocalDiskView:
        """The disk right after record ``seq``: UnknownPoint unless base_seq <= seq <= last_seq. Waits for a
        running prune to finish. Close the view (or use ``async with``) so prune can proceed."""
        self._check_open()
        info = next((d for d in self._disks if d.index == disk), None)
        if info is None:
            raise InvalidInput(f"machine {self.machine} has no disk {disk}")
        async with self._cond:
            await self._cond.wait_for(lambda: not self._pruning)
            if not self._base_seq <= seq <= self._last_seq:
                raise UnknownPoint(f"seq {seq} of {self.machine} is not in the vault's history "
                                   f"[{self._base_seq}, {self._last_seq}]", machine=self.machine, seq=seq)
            self._views += 1
        try:
            emap = await self._run(build_extent_map, self, seq, disk)
        except BaseException:
            await self._view_closed()
            raise
        return LocalDiskView(self, seq, disk, info.size, emap)

    async def seq_at_time(self, t: float) -> tuple[int, float] | None:
        """Any point in time: the newest record captured at or before ``t``, scanning record headers only."""
        self._check_open()
        return await self._run(seq_at_time_scan, self, int(t * 1e9))

    async def _view_closed(self) -> None:
        async with self._cond:
            self._views -= 1
            self._cond.notify_all()

    async def prune(self, keep_from_seq: int) -> None:
        """Fold history before ``keep_from_seq`` into the replica and drop points older than it.

        Waits up to ``LocalVault.prune_wait`` seconds for open views to close, else raises Conflict.
        """
        self._check_open()
        if keep_from_seq > self._last_seq:
            raise InvalidInput(f"cannot prune {self.machine} up to seq {keep_from_seq}: last seq is {self._last_seq}")
        async with self._cond:
            try:
                async with asyncio.timeout(self._owner.prune_wait):
                    await self._cond.wait_for(lambda: self._views == 0 and not self._pruning)
            except TimeoutError:
                raise Conflict(f"cannot prune {self.machine}: {self._views} view(s) stay open",
                               advice="Close the recovery views (drills, exports) first, then prune again.") from None
            self._check_open()                 # closed while we waited
            self._pruning = True
        try:
            finished = keep_from_seq <= self._base_seq or await self._run(self._fold_sync, keep_from_seq)
            async with self._append_lock:
                await self._run(self._journal.delete_through, self._base_seq)
            async with self._points_lock:
                if any(p.seq < self._base_seq for p in self._points):
                    self._points = [p for p in self._points if p.seq >= self._base_seq]
                    await self._run(self._rewrite_points)
            if not finished:
                raise StorageError(f"prune of {self.machine} was interrupted by close at seq {self._base_seq}",
                                   advice="Prune again after reopening the vault.")
        finally:
            async with self._cond:
                self._pruning = False
                self._cond.notify_all()

    def history_bytes(self, keep_from_seq: int | None = None) -> int:
        """Bytes of the journal's segment files now, or those ``prune(keep_from_seq)`` would leave: a prune deletes
        the segments whose records are all folded, never the last (the writer's). Replica and points are not
        history (they do not grow with churn)."""
        segs = list(self._journal.segments)
        total = 0
        for i, first in enumerate(segs):
            if keep_from_seq is not None and i + 1 < len(segs) and segs[i + 1] - 1 <= keep_from_seq:
                continue   # folded and deleted by that prune
            try:
                total += os.stat(self._journal.path(first)).st_size
            except FileNotFoundError:
                pass   # deleted by a prune meanwhile
        return total

    def fold_space(self) -> int:
        """A fold batch writes its redo, then replica slots that may be new: at most twice the batch."""
        return 2 * min(self._owner.fold_batch_bytes, self.history_bytes()) + (1 << 20)

    def _fold_sync(self, keep: int) -> bool:
        """Apply records ``base_seq < seq <= keep`` to the replica in batches of bounded memory.
        False when stopped early by close (at a batch boundary: the state is consistent there)."""
        batch = FoldBatch(self._replicas, max(1, self._owner.fold_batch_bytes // BLOCK))
        for e in self._journal.iter_entries(self._base_seq, keep):
            r = e.rec
            if r.length and r.kind in DATA_KINDS:
                batch.write(r.disk, r.offset, self._journal.read_payload(e))
            elif r.length and r.kind in ZERO_KINDS:
                batch.zero(r.disk, r.offset, r.length)
            if batch.full():
                self._commit_fold(batch, r.seq)
                if self._stopping:
                    return False
        self._commit_fold(batch, keep)
        return True

    def _commit_fold(self, batch: FoldBatch, seq: int) -> None:
        hook = self._fold_hook or (lambda stage: None)
        redo = self.folder / "fold.redo"
        if batch:
            # Redo first (durable), then the replica: a crash in between re-applies the redo on open.
            write_redo(redo, seq, batch, self._cipher)
            try:
                hook("redo-written")
                apply_redo(redo, self._replicas, hook)
                hook("applied")
            except BaseException as e:
                # the replica may be half way between two states: only reopening (re-applying the redo) fixes it
                self._failed = f"a fold batch up to seq {seq} failed ({e!r})"
                raise
        self._base_seq = seq
        self._write_meta()
        if batch:
            redo.unlink()
            batch.reset()

    async def verify(self) -> VerifyReport:
        """Re-read everything: authenticate and hash-check every journal record after base_seq and every stored
        replica slot. Corruption is reported, not raised. Blocks prune while it runs, like a view."""
        self._check_open()
        async with self._cond:
            await self._cond.wait_for(lambda: not self._pruning)
            self._views += 1
        try:
            return await self._run(verify_all, self)
        finally:
            await self._view_closed()

    async def close(self) -> None:
        """Stop a running prune at its next batch boundary, persist meta and release the machine."""
        if self._closed:
            return
        self._stopping = True
        async with self._cond:
            await self._cond.wait_for(lambda: not self._pruning)
        async with self._append_lock:
            if self._closed:
                return
            self._closed = True
            await self._run(self._close_sync)
        self._owner._forget(self)

    def _close_sync(self, write_meta: bool = True) -> None:
        self._journal.close()
        try:
            if write_meta and self._key_check:
                try:
                    self._write_meta()
                except OSError as exc:
                    if not is_no_space(exc):
                        raise
                    # meta's base_seq was made durable by its fold; last_seq is only a hint (open scans the journal)
                    log.warning("machine %s: meta.json not refreshed at close: the vault's disk is full", self.machine)
        finally:
            for rep in self._replicas.values():
                rep.close()
            if self._lock_fd is not None:
                platform.unlock(self._lock_fd)
                os.close(self._lock_fd)
                self._lock_fd = None


class LocalVault(Vault):
    """Vault backend on a local folder: ``<root>/<machine>/`` per machine (see the module docstring).

    ``key`` is the 32-byte vault key; ``key_id`` tags envelopes (the Sealer callers use must have the same key and
    id). Blocking work runs in ``executor`` (a private 4-thread pool when None). ``prune_wait`` bounds how long
    prune waits for open views; ``cache_bytes`` bounds the decrypted-payload LRU per machine;
    ``segment_bytes`` is the journal roll size; ``fold_batch_bytes`` bounds the replica blocks one fold batch holds.
    """

    kind = "local"

    def __init__(self, root: Path, key: bytes, *, key_id: int = 1,
                 executor: concurrent.futures.Executor | None = None, prune_wait: float = 60.0,
                 cache_bytes: int = 64 * 1024 * 1024, segment_bytes: int = SEGMENT_BYTES,
                 fold_batch_bytes: int = 64 * 1024 * 1024) -> None:
        self.root = Path(root)
        self.sealer = Sealer(key, key_id)
        self._replica_key = derive_replica_key(key)
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="lifeboat-vault")
        self.prune_wait = prune_wait
        self.cache_bytes = cache_bytes
        self.segment_bytes = segment_bytes
        self.fold_batch_bytes = fold_batch_bytes
        self._machines: dict[str, LocalMachineVault] = {}
        self._lock = asyncio.Lock()


    @classmethod
    def from_config(cls, cfg: dict[str, Any], key: bytes, *,
                    executor: concurrent.futures.Executor | None = None) -> LocalVault:
        """``{"kind": "local", "path": FOLDER}``, with two optional sizes for small vaults: ``segment_bytes`` (the
        journal segment, which is the unit history is deleted in when folded; default 64 MiB) and
        ``fold_batch_bytes`` (the most replica blocks one fold batch holds, and so the free space it needs)."""
        extra: dict[str, int] = {}
        for opt in ("segment_bytes", "fold_batch_bytes"):
            v = cfg.get(opt)
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, int) or not 1 << 20 <= v <= 1 << 34:
                    raise InvalidInput(f"vault.{opt} must be a number of bytes between 1 MiB and 16 GiB, got {v!r}")
                extra[opt] = v
        return cls(Path(cfg["path"]), key, executor=executor, **extra)

    def storage_path(self) -> Path:
        """The vault's root folder (created if missing, so its filesystem can be asked for free space)."""
        make_private_dir(self.root)
        return self.root

    def machines(self) -> list[str]:
        """Names of the machines stored under the root."""
        if not self.root.exists():
            return []
        out = []
        for p in self.root.iterdir():
            if p.is_dir() and not p.name.startswith(".") and (p / "meta.json").exists():
                try:
                    out.append(json.loads((p / "meta.json").read_bytes())["machine"])
                except (ValueError, KeyError, OSError):
                    out.append(p.name)
        return sorted(out)

    async def open_machine(self, machine: str) -> LocalMachineVault:
        """Open (creating when new) a machine's vault. The same object is returned while it is open."""
        _check_machine_name(machine)
        async with self._lock:
            mv = self._machines.get(machine)
            if mv is not None:
                return mv
            try:
                make_private_dir(self.root)
                mv = LocalMachineVault(self, machine, inside(self.root, machine))
                await mv._run(mv._open_sync)
            except LifeboatError:
                raise
            except OSError as exc:   # the vault folder is gone, a file, on a full or read-only filesystem
                raise StorageError(f"cannot open the vault of {machine} in {self.root}: {exc.strerror or exc}",
                                   advice=f"Make {self.root} a writable folder with free space (or restore it if it "
                                          "was moved), then try again; `lifeboat status` shows the vault path.",
                                   machine=machine) from None
            self._machines[machine] = mv
            return mv

    def _forget(self, mv: LocalMachineVault) -> None:
        if self._machines.get(mv.machine) is mv:
            del self._machines[mv.machine]

    # configuration backups (engine/backup/archive.py): ``<root>/.appliance-backups/<name>``; a leading dot keeps
    # the folder apart from machines (the name rule makes every machine name start with a letter or digit).
    def _backups(self) -> Path:
        return self.root / ".appliance-backups"

    @staticmethod
    def _backup_file(folder: Path, name: str) -> Path:
        if not BACKUP_NAME.fullmatch(name):
            raise InvalidInput(f"{name!r} is not a configuration backup's name", field="name")
        return folder / name

    async def put_config_backup(self, name: str, data: bytes) -> None:
        folder = self._backups()
        path = self._backup_file(folder, name)

        def put() -> None:
            make_private_dir(folder)
            atomic_write(path, data, 0o600)
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, put)
        except OSError as exc:
            raise StorageError(f"cannot write the configuration backup into the vault {self.root}: {exc}") from exc

    async def config_backups(self) -> list[str]:
        folder = self._backups()
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if BACKUP_NAME.fullmatch(p.name) and p.is_file())

    async def get_config_backup(self, name: str) -> bytes:
        path = self._backup_file(self._backups(), name)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise UnknownPoint(f"the vault {self.root} holds no configuration backup {name!r}",
                               code="LB_NOT_FOUND") from None

    async def remove_config_backup(self, name: str) -> None:
        self._backup_file(self._backups(), name).unlink(missing_ok=True)

    async def remove_machine(self, machine: str) -> None:
        """Delete a machine's vault (closing it first). UnknownMachine when it does not exist."""
        _check_machine_name(machine)
        async with self._lock:
            mv = self._machines.get(machine)
            if mv is not None:
                await mv.close()
            folder = inside(self.root, machine)
            if not folder.is_dir():
                raise UnknownMachine(f"machine {machine} has no vault under {self.root}")
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._remove_sync, folder)

    def _remove_sync(self, folder: Path) -> None:
        fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if not platform.try_lock(fd):
                raise Conflict(f"machine {folder.name} is open in another process")
            try:
                # rename first: the machine disappears atomically even if the delete is interrupted
                trash = self.root / f".removing-{uuid.uuid4().hex}"
                os.rename(folder, trash)
                fsync_dir(self.root)
            finally:
                platform.unlock(fd)
        finally:
            os.close(fd)
        shutil.rmtree(trash, ignore_errors=True)

    async def close(self) -> None:
        """Close every open machine, then the private thread pool."""
        async with self._lock:
            for mv in list(self._machines.values()):
                await mv.close()
        if self._own_executor:
            self._executor.shutdown(wait=True)
