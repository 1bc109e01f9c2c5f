"""The vault's capacity policy (docs/ARCHITECTURE.md §6.1): the vault never fills its disk silently.

Zerto's journal hard limit, and what to do when the disk fills anyway:

- **History limit** (per policy, ``history_limit`` bytes, 0 = none): when a machine's history (its journal) is
  larger, its oldest history is folded into the replica until it fits; the effective retention shrinks.
- **Free-space reserve** (appliance-wide, ``appliance.json`` ``vault.reserve``: a size or a percentage of the
  filesystem, default 5 %): when the vault's filesystem has less free, the oldest history of all machines is folded
  first, a journal segment at a time, until the reserve is free again (as far as folding can free it).
- Either way a write is never refused for lack of history space, and ``LB_HISTORY_SHRUNK`` (warning) says how many
  hours of history the machine keeps; it clears once the history covers the policy's whole retention again.
- **Full** (another program filled the disk, or folding cannot keep up): below a floor (half the reserve, at most
  256 MiB) or on any ENOSPC from a vault or cache write, replication **pauses** (``LB_VAULT_FULL``, critical): the
  gate closes, the process server stops acknowledging batches and the appliers stop writing. The agents keep their
  changes (memory, then journal, then dirty map, as for a link outage); nothing acknowledged is lost (it is in the
  process-server cache). When enough space is free again the gate opens by itself and the alert clears.
- ``LB_VAULT_SPACE_LOW`` (warning): free space is below twice the reserve, or the current churn reaches the reserve
  within a day; the message gives the projected days.

Free space is measured on a timer (the scheduler's ``vault-capacity`` task, every 2 s: scheduled_tasks.py),
never per write: the data path only reads ``gate.closed``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import platform
from ..errors import LifeboatError, is_no_space
from ..events import Alert, EventBus
from ..policy import DEFAULT_VAULT_RESERVE, format_duration, format_size, parse_reserve, reserve_bytes
from .vault_gate import VaultGate

if TYPE_CHECKING:
    from ..vault.base import MachineVault
    from .machine_state import MachineState
    from .pipeline import MachineRuntime

__all__ = ["Capacity", "ConfigReserve", "VaultGate"]

log = logging.getLogger(__name__)

#: Replication pauses below half the reserve, but never waits for more than this much to be free to pause.
FULL_FLOOR_MAX = 256 << 20
#: ... and resumes with at least this much free (and twice the floor), so it does not pause again at once.
RESUME_MIN = 4 << 20
#: After a write failed for lack of space, resume only once this much more is free than when it failed.
RESUME_MARGIN = 16 << 20
#: History "covers the retention again" when its oldest point is this close to the retention window's start (the
#: retention fold runs every 30 s and keeps the oldest point inside the window).
RETENTION_SLACK = 90.0
#: LB_VAULT_SPACE_LOW when the churn would use up the free space above the reserve within this many days.
SPACE_LOW_DAYS = 1.0
#: Folding steps planned in one round for the reserve (each frees at least one journal segment).
MAX_STEPS = 10_000


class Capacity:
    """The capacity policy over the parts: ``state`` (policies, the event log), ``runtimes`` (each machine's
    vault), ``vault_path`` (a folder on the vault's filesystem; None for a vault that is not local), ``cache_dir``
    (the process-server cache: its filesystem filling pauses replication too), ``bus`` (alerts), ``gate``,
    ``busy`` (a drill reads the machine's history: not folded now) and ``reserve`` (the reserve setting, read at
    each round so ``lifeboat appliance set`` applies to a running appliance)."""

    def __init__(self, *, state: MachineState, runtimes: Mapping[str, MachineRuntime], vault_path: Path | None,
                 cache_dir: Path, bus: EventBus, gate: VaultGate, busy: Callable[[str], bool] = lambda m: False,
                 reserve: Callable[[], str] = lambda: DEFAULT_VAULT_RESERVE) -> None:
        self.state = state
        self.runtimes = runtimes
        self.vault_path = vault_path
        self.cache_dir = cache_dir
        self.bus = bus
        self.gate = gate
        self.busy = busy
        self.reserve = reserve
        gate.on_full = self._full_now
        self.shrunk: dict[str, float] = {}     # machine → hours of history left when its history last shrank
        self.space_low = False
        self.churn = 0.0                        # bytes/s, smoothed over about half a minute
        self._resume_at = 0
        self.last: dict[str, Any] = {}          # the last round's measurements (status, tests)

    # measuring ------------------------------------------------------------------------------------------------
    def _filesystems(self) -> list[tuple[Path, platform.DiskSpace]]:
        """(folder, its filesystem's space) for the vault and, when elsewhere, the process-server cache."""
        out: list[tuple[Path, platform.DiskSpace]] = []
        seen: set[int] = set()
        for p in (self.vault_path, self.cache_dir):
            if p is None:
                continue
            try:
                dev = os.stat(p).st_dev
                if dev in seen:
                    continue
                seen.add(dev)
                out.append((p, platform.disk_free(p)))
            except OSError as exc:
                log.warning("cannot measure free space of %s: %s", p, exc)
        return out

    async def tick(self) -> None:
        """One round: measure, pause or resume, fold for the history limits and the reserve, warn."""
        fss = self._filesystems()
        if not fss:
            return
        vault_fs = fss[0][1] if self.vault_path is not None and fss[0][0] == self.vault_path else None
        reserve = reserve_bytes(self.reserve(), vault_fs.total) if vault_fs else 0
        floor = min(reserve // 2, FULL_FLOOR_MAX)
        worst_path, worst = min(fss, key=lambda f: f[1].free)
        self.last = {"free": vault_fs.free if vault_fs else None, "total": vault_fs.total if vault_fs else None,
                     "reserve": reserve, "floor": floor, "paused": self.gate.closed}
        if self.gate.closed:
            if worst.free >= max(2 * floor, RESUME_MIN, self._resume_at):
                self._resume(worst_path, worst.free)
        elif worst.free < floor:
            self._pause(f"{worst_path} has {format_size(worst.free)} free, under the floor of {format_size(floor)}",
                        worst_path, worst.free)
        await self._fold(vault_fs, reserve)
        if vault_fs is not None:
            self._check_space_low(vault_fs, reserve)
        self._clear_recovered()

    # full: pause and resume -------------------------------------------------------------------------------------
    def _full_now(self, reason: str) -> None:
        free = None
        for p, space in self._filesystems():
            free = space.free if free is None else min(free, space.free)
        self._pause(reason, self.vault_path or self.cache_dir, free or 0)

    def _pause(self, reason: str, path: Path, free: int) -> None:
        if self.gate.closed:
            return
        self._resume_at = free + RESUME_MARGIN
        self.gate.close(reason)
        log.error("vault full, replication paused: %s", reason)
        self.state.event("vault-full", None, reason=reason, path=str(path), free=free)
        self.bus.emit(Alert(
            None, "LB_VAULT_FULL",
            f"Replication is paused: the vault's filesystem is full ({reason}). Agents keep their changes "
            f"(in memory, then their journal, then a dirty map) and replication resumes by itself when space returns.",
            "Free space on the vault's filesystem (another program may have filled it), or move the vault to a "
            "larger disk; set a smaller history limit (`lifeboat policy set --history-limit`) to keep it from "
            "filling again.", "critical", {"path": str(path), "free": free},
            id="LB_VAULT_FULL:vault", component="vault", state="raised", time=time.time()))

    def _resume(self, path: Path, free: int) -> None:
        self.gate.open()
        self._resume_at = 0
        log.warning("vault has room again (%s free on %s): replication resumes", format_size(free), path)
        self.state.event("vault-resumed", None, path=str(path), free=free)
        self.bus.emit(Alert(
            None, "LB_VAULT_FULL", f"Replication resumed: the vault's filesystem has {format_size(free)} free again.",
            "", "critical", {"path": str(path), "free": free},
            id="LB_VAULT_FULL:vault", component="vault", state="cleared", time=time.time()))

    # folding ------------------------------------------------------------------------------------------------------
    async def _fold(self, vault_fs: platform.DiskSpace | None, reserve: int) -> None:
        targets: dict[str, tuple[int, str]] = {}
        vaults: dict[str, MachineVault] = {}
        for name, rt in list(self.runtimes.items()):
            if self.busy(name):
                continue
            vaults[name] = rt.vault
            limit = self.state.policy_of(name).history_limit
            if limit and rt.vault.history_bytes() > limit:
                keep = _keep_within(rt.vault, limit)
                if keep is not None:
                    targets[name] = (keep, f"its history limit of {format_size(limit)}")
        if vault_fs is not None and vault_fs.free < reserve:
            freed = sum(vaults[n].history_bytes() - vaults[n].history_bytes(k) for n, (k, _) in targets.items())
            self._plan_reserve(vaults, targets, reserve - vault_fs.free - freed,
                               f"the vault filesystem's free-space reserve of {format_size(reserve)}")
        for name, (keep, why) in targets.items():
            mv = vaults[name]
            if vault_fs is not None and vault_fs.free < mv.fold_space():
                log.warning("%s: history should shrink (%s) but a fold needs %s free; %s are", name, why,
                            format_size(mv.fold_space()), format_size(vault_fs.free))
                continue
            try:
                await mv.prune(keep)
            except LifeboatError as exc:
                log.warning("%s: capacity fold to seq %d failed: %s", name, keep, exc)
                if is_no_space(exc):
                    self.gate.report_full(f"a fold of {name}'s history ran out of space")
                continue
            self._shrunk(name, mv, why)

    def _plan_reserve(self, vaults: Mapping[str, MachineVault], targets: dict[str, tuple[int, str]], deficit: int,
                      why: str) -> None:
        """Fold the oldest history across all machines first, a journal segment at a time, until ``deficit``
        bytes would be freed (or nothing more can be folded: each machine keeps at least its newest point)."""
        keep = {n: targets[n][0] if n in targets else mv.base_seq for n, mv in vaults.items()}
        left = {n: mv.history_bytes(keep[n]) for n, mv in vaults.items()}
        steps = 0
        while deficit > 0 and steps < MAX_STEPS:
            steps += 1
            best: tuple[float, str, int, int] | None = None
            for n, mv in vaults.items():
                nxt = _next_step(mv, keep[n], left[n])
                if nxt is None:
                    continue
                oldest = next((p.time for p in mv.points() if p.seq >= keep[n]), math.inf)
                if best is None or oldest < best[0]:
                    best = (oldest, n, *nxt)
            if best is None:
                break
            _, n, seq, remaining = best
            deficit -= left[n] - remaining
            keep[n], left[n] = seq, remaining
            targets[n] = (seq, why)

    def _shrunk(self, name: str, mv: MachineVault, why: str) -> None:
        pts = mv.points()
        now = time.time()
        hours = (now - pts[0].time) / 3600 if pts else 0.0
        retention = self.state.policy_of(name).retention
        self.shrunk[name] = hours
        log.warning("%s: history shrunk to %.1f h to stay within %s", name, hours, why)
        self.state.event("history-shrunk", name, hours=round(hours, 3), cause=why, history_bytes=mv.history_bytes())
        self.bus.emit(Alert(
            name, "LB_HISTORY_SHRUNK",
            f"{name} keeps {_hours(hours)} (retention {format_duration(retention)}): its oldest history "
            f"was folded to stay within {why}.",
            "Give the vault more space, raise the history limit (`lifeboat policy set --history-limit`), or "
            "accept the shorter history; it grows back to the full retention by itself.", "warning",
            {"history_hours": round(hours, 3), "retention_hours": retention / 3600, "cause": why},
            id=f"LB_HISTORY_SHRUNK:{name}", component="vault", state="raised", time=now))

    def _clear_recovered(self) -> None:
        now = time.time()
        for name in list(self.shrunk):
            rt = self.runtimes.get(name)
            if rt is not None:
                pts = rt.vault.points()
                retention = self.state.policy_of(name).retention
                if not pts or pts[0].time > now - retention + RETENTION_SLACK:
                    continue
            del self.shrunk[name]
            self.bus.emit(Alert(name, "LB_HISTORY_SHRUNK", f"{name} keeps its full retention of history again.",
                                "", "warning", id=f"LB_HISTORY_SHRUNK:{name}", component="vault", state="cleared",
                                time=now))

    # free space low ------------------------------------------------------------------------------------------------
    def _check_space_low(self, fs: platform.DiskSpace, reserve: int) -> None:
        churn = sum(rt.churn.rate() for rt in list(self.runtimes.values()))
        self.churn = churn if not self.churn else 0.85 * self.churn + 0.15 * churn
        above = max(fs.free - reserve, 0)
        days = above / self.churn / 86400 if self.churn > 0 else math.inf
        self.last["days_to_reserve"] = days
        low = fs.free < 2 * reserve or days < SPACE_LOW_DAYS
        recovered = fs.free >= 2.2 * reserve and days >= 1.5 * SPACE_LOW_DAYS
        if low and not self.space_low:
            self.space_low = True
            when = (f"at the current churn of {format_size(self.churn)}/s the free space above the reserve lasts "
                    f"{days:.1f} days" if math.isfinite(days) else "no churn at the moment")
            self.bus.emit(Alert(
                None, "LB_VAULT_SPACE_LOW",
                f"The vault's filesystem has {format_size(fs.free)} free of {format_size(fs.total)} (reserve "
                f"{format_size(reserve)}); {when}. Past the reserve, the oldest history is folded and retention "
                "shrinks.", "Free space on the vault's filesystem, or move the vault to a larger disk.", "warning",
                {"free": fs.free, "total": fs.total, "reserve": reserve,
                 "days_to_reserve": days if math.isfinite(days) else None, "churn_bytes_per_s": self.churn},
                id="LB_VAULT_SPACE_LOW:vault", component="vault", state="raised", time=time.time()))
        elif self.space_low and recovered:
            self.space_low = False
            self.bus.emit(Alert(None, "LB_VAULT_SPACE_LOW",
                                f"The vault's filesystem has {format_size(fs.free)} free again.", "", "warning",
                                id="LB_VAULT_SPACE_LOW:vault", component="vault", state="cleared",
                                time=time.time()))


class ConfigReserve:
    """The reserve setting of ``appliance.json`` (``vault.reserve``), re-read when the file changes, so
    ``lifeboat appliance set --vault-reserve`` applies to a running appliance at its next round."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self._mtime: float | None = None
        self._value = DEFAULT_VAULT_RESERVE

    def __call__(self) -> str:
        try:
            mtime = os.stat(self.config).st_mtime
            if mtime != self._mtime:
                self._mtime = mtime
                vault = json.loads(self.config.read_bytes()).get("vault") or {}
                self._value = parse_reserve(vault.get("reserve", DEFAULT_VAULT_RESERVE))
        except (OSError, ValueError, LifeboatError) as exc:
            log.warning("vault reserve in %s unreadable (%s); keeping %s", self.config, exc, self._value)
        return self._value


def _hours(h: float) -> str:
    """Hours of history as an operator reads them: '5.2 h of history', or '0.05 h of history (3m)' under an hour."""
    return f"{h:.1f} h of history" if h >= 1 else f"{h:.2f} h of history ({format_duration(max(round(h * 3600), 1))})"


def _keep_within(mv: MachineVault, limit: int) -> int | None:
    """The oldest point to fold up to so the history fits ``limit``; the newest point when nothing fits, if that
    frees anything; None when folding frees nothing (the history is one journal segment)."""
    pts = [p for p in mv.points() if p.seq > mv.base_seq]
    if not pts:
        return None
    lo, hi = 0, len(pts) - 1             # history_bytes(seq) does not grow with seq: binary search
    if mv.history_bytes(pts[hi].seq) > limit:
        return pts[hi].seq if mv.history_bytes(pts[hi].seq) < mv.history_bytes() else None
    while lo < hi:
        mid = (lo + hi) // 2
        if mv.history_bytes(pts[mid].seq) <= limit:
            hi = mid
        else:
            lo = mid + 1
    return pts[lo].seq


def _next_step(mv: MachineVault, keep: int, left: int) -> tuple[int, int] | None:
    """The first point after ``keep`` whose fold frees something: (its seq, history left), or None."""
    pts = [p for p in mv.points() if p.seq > keep]
    if not pts or mv.history_bytes(pts[-1].seq) >= left:
        return None
    lo, hi = 0, len(pts) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if mv.history_bytes(pts[mid].seq) < left:
            hi = mid
        else:
            lo = mid + 1
    return pts[lo].seq, mv.history_bytes(pts[lo].seq)
