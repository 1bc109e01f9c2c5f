"""The process server's machine runtimes: one per protected machine while the appliance runs (its cache, its
vault, its applier task and its agent connection), opened on demand and closed at stop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from ..codec import Sealer
from ..errors import InvalidInput
from ..events import EventBus
from ..names import check_name, check_unique, inside
from ..segment_log import SegmentLog
from ..vault.base import DiskInfo, Vault
from .vault_gate import VaultGate
from .machine_state import MachineState
from .pipeline import MachineRuntime
from .resync import Resync
from .rpo import RecoveryClock
from .sync_cursor import SyncCursor

__all__ = ["Runtimes"]

#: Called with (machine, the agent's HELLO) when an agent attaches (vSphere matching); must not raise.
AttachHook = Callable[[str, dict[str, Any]], None]


class Runtimes(Mapping[str, MachineRuntime]):
    """The live runtimes by machine name (a read-only mapping over ``live``, which the resync part shares)."""

    def __init__(self, live: dict[str, MachineRuntime], *, vault: Vault, state: MachineState, cursor: SyncCursor,
                 resync: Resync, bus: EventBus, pool: Executor, sealer: Sealer, cache_dir: Path,
                 gate: VaultGate | None = None) -> None:
        self._live = live
        self.gate = gate
        self.vault = vault
        self.state = state
        self.cursor = cursor
        self.resync = resync
        self.bus = bus
        self.pool = pool
        self.sealer = sealer
        self.cache_dir = cache_dir
        self.on_attach: list[AttachHook] = []
        self._lock = asyncio.Lock()

    def __getitem__(self, name: str) -> MachineRuntime:
        return self._live[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._live)

    def __len__(self) -> int:
        return len(self._live)

    async def open(self, name: str) -> MachineRuntime:
        """The machine's runtime, opened (cache, vault, applier task) if it is not yet."""
        async with self._lock:  # protect() and an agent connecting may race: one runtime per machine
            return await self._open_locked(name)

    async def _open_locked(self, name: str) -> MachineRuntime:
        rt = self._live.get(name)
        if rt is None:
            mv = await self.vault.open_machine(name)
            cache = await asyncio.get_running_loop().run_in_executor(self.pool, SegmentLog,
                                                                     inside(self.cache_dir, name))
            rt = MachineRuntime(name, cache, mv, state=self.state, cursor=self.cursor, resync=self.resync,
                                bus=self.bus, pool=self.pool, sealer=self.sealer,
                                hashes_dir=self.cache_dir / f"{name}.hashes", gate=self.gate)
            row = self.state.row(name)
            # RPO of an absent agent grows from when it was last known recoverable (persisted), never from now;
            # a state.db from before schema 5 has no such time: the newest point is the best lower bound.
            points = mv.points()
            recoverable = row.get("recoverable_at")
            if recoverable is None and points:
                recoverable = min(points[-1].time, time.time())
            rt.clock = RecoveryClock(recoverable, row.get("last_heard"))
            if cache.last_seq > mv.last_seq:
                rt.cache_pending.append((int((recoverable or time.time()) * 1e9), cache.last_seq))
            rt.sync = {d["index"]: d.get("sync_cursor", 0) for d in row["disks"]}
            self._live[name] = rt
            if cache.corruption:   # found while opening the cache: set aside, heal by a resync
                detail = cache.corruption
                cache.quarantine()
                rt.cache_pending.clear()
                self.resync.corruption_found(name, "process-server cache", detail, mv.last_seq + 1)
            rt.start()
        return rt

    async def attach_agent(self, name: str, disks: list[dict], conn: Any) -> MachineRuntime:
        """An agent said HELLO on the data port: record its disks, open the runtime, make ``conn`` its link."""
        row = self.state.row(name)
        known = {d["index"]: d for d in row["disks"]}
        new = []
        if not isinstance(disks, list) or not 0 < len(disks) <= 64:
            raise InvalidInput("HELLO must list 1 to 64 disks")
        for d in disks:
            # The protected machine names its disks: the name rule keeps them out of paths and export names.
            if not isinstance(d, dict):
                raise InvalidInput("a disk in HELLO must be an object")
            idx, dname, size = d.get("index"), check_name(d.get("name"), "disk name"), d.get("size")
            if (not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < 64
                    or not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= 1 << 50):
                raise InvalidInput(f"disk {dname!r}: index 0-63 and a size of 1 byte to 1 PiB are required")
            old = known.get(idx, {})
            new.append({**old, "index": idx, "name": dname, "size": size})
        check_unique([d["name"] for d in new], "disk name")
        if len({d["index"] for d in new}) != len(new):
            raise InvalidInput("two disks in HELLO have the same index")
        self.state.update(name, disks=new)
        rt = await self.open(name)
        await rt.vault.ensure_disks([DiskInfo(d["index"], d["name"], d["size"]) for d in new])
        if rt.connection is not None and rt.connection is not conn:
            rt.connection.close()  # the newest connection of a machine wins
        rt.connection = conn
        rt.clock.heard()
        rt.open_hash_indexes()
        for hook in self.on_attach:
            hook(name, getattr(conn, "hello", None) or {})
        return rt

    def welcome(self, name: str) -> dict[str, Any]:
        """The WELCOME an agent gets: protection, where to resume, initial-sync cursors, the crash interval."""
        row = self.state.row(name)
        rt = self._live[name]
        return {"protected": bool(row["protected"]), "last_seq": max(rt.cache.last_seq, rt.vault.last_seq),
                "sync": {str(d["index"]): d.get("sync_cursor", 0) for d in row["disks"]},
                "synced": {str(d["index"]): bool(d.get("synced")) for d in row["disks"]},
                "crash_interval": self.state.policy_of(name).crash_interval}

    def persist_clocks(self, *, force: bool = False) -> None:
        """Write each machine's last recoverable and last heard times to state.db when they moved (every
        ``rpo.PERSIST_EVERY`` seconds at most, or now with ``force``)."""
        for name, rt in list(self._live.items()):
            self.persist_clock(name, force=force)

    def persist_clock(self, name: str, *, force: bool = False) -> None:
        rt = self._live.get(name)
        if rt is None:
            return
        rt.rpo_seconds()   # brings recoverable_at up to date while the agent's view is current
        c = rt.clock
        if force or c.needs_persist():
            if (c.recoverable_at, c.last_heard) != c.persisted:
                self.state.update(name, recoverable_at=c.recoverable_at, last_heard=c.last_heard)
            c.persisted = (c.recoverable_at, c.last_heard)

    async def close_all(self) -> None:
        """Stop every applier and close its hash indexes, cache and machine vault."""
        self.persist_clocks(force=True)
        for rt in self._live.values():
            await rt.stop()
            rt.close_hash_indexes()
            rt.cache.close()
            await rt.vault.close()
        self._live.clear()
