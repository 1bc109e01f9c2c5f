"""View models: the protected-machines table, per-machine RPO history and the dashboard's time series.

The table updates rows in place: a batch of statuses becomes one ``dataChanged`` over the rows it touched (and one
``rowsInserted`` for machines seen the first time), never a reset, so selection, scroll position and sorting
survive and 500 rows at 1 Hz stay cheap. History lives in fixed-size numpy ring buffers (no growth, no per-sample
objects): an hour of 1 Hz samples for 500 machines is ~21 MB.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt, Signal
from PySide6.QtGui import QColor, QIcon

from engine.api import ApplianceStatus, ResyncView

from .bridge import MachineStatus

Index = QModelIndex | QPersistentModelIndex

SORT_ROLE = Qt.ItemDataRole.UserRole + 1     #: a sortable value (numbers for numeric columns)
HEALTH_ROLE = Qt.ItemDataRole.UserRole + 2   #: "ok" | "warning" | "critical" | "" (not protected)
NAME_ROLE = Qt.ItemDataRole.UserRole + 3     #: the machine name, from any column
ROW_ROLE = Qt.ItemDataRole.UserRole + 4      #: the ``MachineRow`` itself (delegates read it; no copies)

STALE_COLOR = QColor("#8a8a8a")
HEALTH_LABELS = {"ok": "OK", "warning": "Warning", "critical": "Critical", "": "Not protected"}
HEALTH_ORDER = {"critical": 0, "warning": 1, "ok": 2, "": 3}


def format_seconds(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} m {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} m"


def format_rate(bps: float) -> str:
    for unit, size in (("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if bps >= size:
            return f"{bps / size:.1f} {unit}"
    return f"{bps:.0f} B/s"


def format_time(t: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if t else "—"


def format_age(seconds: float | None) -> str:
    """How long ago, coarse ("12 s", "4 m", "2 h 05 m"); "—" when there is nothing."""
    if seconds is None:
        return "—"
    s = max(0.0, seconds)
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} m {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} m"


@dataclass(slots=True)
class MachineRow:
    """What one table row shows; updated in place."""
    name: str
    state: str = "unprotected"
    health: str = ""
    rpo: float = 0.0
    sync_progress: float | None = None
    last_point_time: float | None = None
    churn: float = 0.0
    upload: float = 0.0
    protected: bool = False
    resync: ResyncView = ResyncView()
    # issue 12 contract (MachineStatus / machine_status): absent from older engines, hence the defaults
    health_reason: str = ""
    rpo_known: bool = True
    last_heard: float | None = None
    sync_eta: float | None = None
    # from the periodic inventory (status() and the vCenter snapshot)
    policy: str = ""
    rpo_threshold: float = 30.0
    vcenter: str = ""
    agent_connected: bool = True

    @property
    def resync_required(self) -> bool:
        return self.state == "resync-required" or self.resync.required

    @property
    def needs_attention(self) -> bool:
        """A protected machine whose health is not OK, that needs a resync, or whose agent is not connected."""
        return self.protected and (self.health != "ok" or self.resync_required or not self.agent_connected)

    @property
    def rpo_text(self) -> str:
        return format_seconds(self.rpo) if self.rpo_known else "—"

    @property
    def resync_text(self) -> str:
        """From ``machine_status().resync`` (running, required, scheduled_for, last_done …)."""
        r = self.resync
        if self.state == "resyncing" or r.running:
            return f"resyncing {100 * r.progress:.0f}%"
        if self.state == "resync-required" or r.required:
            when = r.scheduled_for
            return f"required, at {format_time(when)}" if when else "required"
        if r.last_done:
            return f"done {format_time(r.last_done)}"
        return "—"

    @property
    def state_text(self) -> str:
        if self.state == "initial-sync" and self.sync_progress is not None:
            return f"initial sync {100 * self.sync_progress:.0f}%"
        return self.state


COLUMNS = ("Name", "State", "Health", "RPO", "RPO trend", "Since point", "Reason", "Last point", "Resync", "Churn",
           "Upload", "Policy", "vCenter")
(NAME, STATE, HEALTH, RPO, TREND, SINCE_POINT, REASON, LAST_POINT, RESYNC, CHURN, UPLOAD, POLICY,
 VCENTER) = range(len(COLUMNS))


class MachineTableModel(QAbstractTableModel):
    """Protected (and registered) machines, one row each, keyed by name.

    Row order is the model's own and changes only in ``sort`` (a header click or the operator's re-sort), never on
    a status update: live values change under a stable order, new machines are appended. ``resorted`` is emitted
    after every ``sort``.
    """

    resorted = Signal()

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._rows: list[MachineRow] = []
        self._index: dict[str, int] = {}
        self._icons: dict[str, QIcon] = {}
        self._colors: dict[str, QColor] = {}
        self.sort_column = -1
        self.sort_order = Qt.SortOrder.AscendingOrder
        self.sorted_at: float | None = None   # time.monotonic() of the last sort
        self.stale_since: float | None = None  # the link to the appliance is down since (epoch): values are old

    @property
    def stale(self) -> bool:
        return self.stale_since is not None

    def set_stale(self, since: float | None) -> None:
        """Mark every value as old (an attached console lost its appliance) or current again. While stale, health
        reads "Unknown" and RPO "?": the last values known are kept in brackets, never shown as current."""
        if (since is None) == (self.stale_since is None):
            return
        self.stale_since = since
        if self._rows:
            self.dataChanged.emit(self.index(0, 0), self.index(len(self._rows) - 1, len(COLUMNS) - 1))

    # appearance (given by ui, which owns the resources) ---------------------------------------------------
    def set_health_style(self, icons: dict[str, QIcon], colors: dict[str, QColor]) -> None:
        self._icons, self._colors = icons, colors

    # Qt model API ----------------------------------------------------------------------------------------
    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation,  # noqa: N802
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.ToolTipRole:
            return HEADER_TIPS.get(section)
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row, col = self._rows[index.row()], index.column()
        if self.stale_since is not None and row.protected:
            if role == Qt.ItemDataRole.ForegroundRole:
                return STALE_COLOR
            if role == Qt.ItemDataRole.DisplayRole and col == HEALTH:
                return "Unknown"
            if role == Qt.ItemDataRole.DisplayRole and col == RPO:
                return f"? (was {row.rpo_text})"
            if role == Qt.ItemDataRole.DecorationRole and col == HEALTH:
                return None
            if role == Qt.ItemDataRole.ToolTipRole and col in (HEALTH, RPO):
                return (f"Lost the appliance at {format_time(self.stale_since)}: the last health known was "
                        f"{HEALTH_LABELS.get(row.health, row.health)}, RPO {row.rpo_text}; today's is unknown "
                        "until the console reconnects")
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(row, col)
        if role == ROW_ROLE:
            return row
        if role == SORT_ROLE:
            return self._sort_key(row, col)
        if role == NAME_ROLE:
            return row.name
        if role == HEALTH_ROLE:
            return row.health
        if col == HEALTH:
            if role == Qt.ItemDataRole.DecorationRole:
                return self._icons.get(row.health)
            if role == Qt.ItemDataRole.ForegroundRole:
                return self._colors.get(row.health)
        if role == Qt.ItemDataRole.ToolTipRole:
            if col == RPO and row.protected:
                return ("Age of the oldest change not yet in the vault" if row.rpo_known
                        else "No recovery point yet: the machine has no RPO until its first point")
            if col == REASON and row.health_reason:
                return row.health_reason
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (RPO, SINCE_POINT, CHURN, UPLOAD):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    @staticmethod
    def _display(row: MachineRow, col: int) -> str:
        if col == NAME:
            return row.name
        if col == STATE:
            return row.state_text
        if col == HEALTH:
            return HEALTH_LABELS.get(row.health, row.health)
        if col == REASON:
            return row.health_reason
        if col == POLICY:
            return row.policy
        if col == VCENTER:
            return row.vcenter
        if col == TREND:
            return ""   # drawn by the sparkline delegate
        if not row.protected and col != RESYNC:
            return "—"
        if col == RPO:
            return row.rpo_text
        if col == SINCE_POINT:
            return format_age(time.time() - row.last_point_time) if row.last_point_time else "—"
        if col == LAST_POINT:
            return format_time(row.last_point_time)
        if col == RESYNC:
            return row.resync_text
        return format_rate(row.churn if col == CHURN else row.upload)

    @staticmethod
    def _sort_key(row: MachineRow, col: int) -> Any:
        if col == NAME:
            return row.name
        if col == STATE:
            return row.state_text
        if col == HEALTH:
            return HEALTH_ORDER.get(row.health if row.protected else "", 9)
        if col in (RPO, TREND):   # unknown RPO sorts below every known one (worst-first puts it last)
            return row.rpo if (row.protected and row.rpo_known) else -1.0
        if col == SINCE_POINT:    # time since the last point: a machine without one is the oldest
            return -(row.last_point_time or 0.0)
        if col == LAST_POINT:
            return row.last_point_time or 0.0
        if col == REASON:
            return row.health_reason
        if col == RESYNC:
            return row.resync_text
        if col == CHURN:
            return row.churn
        if col == UPLOAD:
            return row.upload
        if col == POLICY:
            return row.policy
        return row.vcenter

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        """Reorder the rows once by ``column`` (ties by name); persistent indexes (selection, current) follow."""
        self.sort_column, self.sort_order = column, order
        self.layoutAboutToBeChanged.emit()
        persistent = self.persistentIndexList()
        held = [(self._rows[i.row()].name, i.column()) for i in persistent]
        rows = sorted(self._rows, key=lambda r: r.name)
        if 0 <= column < len(COLUMNS):
            rows.sort(key=lambda r: self._sort_key(r, column), reverse=order == Qt.SortOrder.DescendingOrder)
        self._rows = rows
        self._index = {r.name: k for k, r in enumerate(rows)}
        self.changePersistentIndexList(persistent, [self.index(self._index[n], c) for n, c in held])
        self.layoutChanged.emit()
        self.sorted_at = time.monotonic()
        self.resorted.emit()

    def resort(self) -> None:
        """Sort again by the current column (values have changed since the last sort)."""
        self.sort(self.sort_column, self.sort_order)

    # updates ---------------------------------------------------------------------------------------------
    def row(self, name: str) -> MachineRow | None:
        i = self._index.get(name)
        return self._rows[i] if i is not None else None

    def rows(self) -> list[MachineRow]:
        return list(self._rows)

    def row_at(self, i: int) -> MachineRow:
        return self._rows[i]

    def names(self) -> list[str]:
        return [r.name for r in self._rows]

    def apply_statuses(self, batch: Iterable[MachineStatus]) -> list[tuple[str, str, str]]:
        """Apply a batch of statuses in place; returns state transitions as (machine, old, new)."""
        transitions: list[tuple[str, str, str]] = []
        new: list[MachineRow] = []
        lo, hi = len(self._rows), -1
        for ev in batch:
            i = self._index.get(ev.machine)
            if i is None:
                r = MachineRow(ev.machine)
                new.append(r)
                self._index[ev.machine] = len(self._rows) + len(new) - 1
            elif i >= len(self._rows):
                r = new[i - len(self._rows)]
            else:
                r = self._rows[i]
                lo, hi = min(lo, i), max(hi, i)
            if r.state != ev.state:
                transitions.append((r.name, r.state, ev.state))
            r.state, r.health, r.rpo = ev.state, ev.health, float(ev.rpo_seconds)
            r.sync_progress, r.last_point_time = ev.sync_progress, ev.last_point_time
            r.churn, r.upload, r.protected = ev.churn_bytes_per_s, ev.upload_bytes_per_s, True
            # the issue-12 fields; an engine without them reports none of them (and no reason)
            r.health_reason = getattr(ev, "health_reason", "") or ""
            r.rpo_known = bool(getattr(ev, "rpo_known", True))
            r.last_heard = getattr(ev, "last_heard", None)
            r.sync_eta = getattr(ev, "sync_eta_seconds", None)
        if hi >= 0:
            self.dataChanged.emit(self.index(lo, 0), self.index(hi, len(COLUMNS) - 1))
        self._insert(new)
        return transitions

    def set_inventory(self, status: ApplianceStatus) -> None:
        """Sync the row set with ``status()``: protected machines with their details, registered ones, no others."""
        seen = {m.name: m for m in status.machines}
        registered = set(status.registered)
        gone = [r.name for r in self._rows if r.name not in seen and r.name not in registered]
        for name in gone:
            i = self._index[name]
            self.beginRemoveRows(QModelIndex(), i, i)
            del self._rows[i]
            self._index = {r.name: k for k, r in enumerate(self._rows)}
            self.endRemoveRows()
        new: list[MachineRow] = []
        for name in [*seen, *sorted(registered)]:
            r = self.row(name)
            if r is None:
                r = MachineRow(name)
                new.append(r)
                self._index[name] = len(self._rows) + len(new) - 1
            m = seen.get(name)
            if m is None:
                r.protected, r.state, r.health, r.health_reason = False, "unprotected", "", ""
                r.policy, r.agent_connected, r.rpo_known = "", True, True
                continue
            r.protected, r.state, r.health = True, m.state, m.health
            r.rpo, r.sync_progress = m.rpo_seconds, m.sync_progress
            r.last_point_time = m.last_point_time
            r.churn, r.upload = m.churn_bytes_per_s, m.upload_bytes_per_s
            r.resync = m.resync
            r.policy, r.rpo_threshold, r.agent_connected = m.policy, m.rpo_threshold, m.agent_connected
            if hasattr(m, "health_reason"):   # issue-12 engines; older ones leave the statuses' value
                r.health_reason = getattr(m, "health_reason") or ""
                r.rpo_known = bool(getattr(m, "rpo_known", True))
        if self._rows:
            self.dataChanged.emit(self.index(0, 0), self.index(len(self._rows) - 1, len(COLUMNS) - 1))
        self._insert(new)

    def set_vcenters(self, by_machine: dict[str, str]) -> None:
        """The vCenter each machine's VM is in (from the inventory snapshot); "" when not matched."""
        changed = False
        for r in self._rows:
            vc = by_machine.get(r.name, "")
            if r.vcenter != vc:
                r.vcenter, changed = vc, True
        if changed and self._rows:
            self.dataChanged.emit(self.index(0, VCENTER), self.index(len(self._rows) - 1, VCENTER))

    def _insert(self, new: list[MachineRow]) -> None:
        if not new:
            return
        first = len(self._rows)
        self.beginInsertRows(QModelIndex(), first, first + len(new) - 1)
        self._rows.extend(new)
        self.endInsertRows()

    def health_counts(self) -> dict[str, int]:
        """Machines per health ("" = not protected), and "attention": those that need attention."""
        counts = {"ok": 0, "warning": 0, "critical": 0, "": 0, "attention": 0}
        for r in self._rows:
            key = r.health if r.protected else ""
            counts[key] = counts.get(key, 0) + 1
            counts["attention"] += r.needs_attention
        return counts

    def worst(self) -> MachineRow | None:
        prot = [r for r in self._rows if r.protected and r.rpo_known]
        return max(prot, key=lambda r: r.rpo) if prot else None


HEADER_TIPS = {RPO: "What a failover now would lose; — before the first recovery point",
               TREND: "RPO over the last minutes (the dashed line is the policy's threshold)",
               SINCE_POINT: "Time since the newest recovery point", REASON: "Why the health is what it is",
               POLICY: "Replication policy", VCENTER: "The vCenter whose VM this machine is"}


class Ring:
    """A fixed-capacity time series: ``t`` (epoch seconds) and one or more float32 value columns."""

    __slots__ = ("t", "v", "n", "pos")

    def __init__(self, capacity: int, columns: int = 1) -> None:
        self.t = np.zeros(capacity, dtype=np.float64)
        self.v = np.zeros((capacity, columns), dtype=np.float32)
        self.n = 0
        self.pos = 0

    def append(self, t: float, *values: float) -> None:
        self.t[self.pos] = t
        self.v[self.pos] = values
        self.pos = (self.pos + 1) % len(self.t)
        self.n = min(self.n + 1, len(self.t))

    def series(self, since: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Samples oldest first (copies), optionally only those at or after ``since``."""
        if self.n < len(self.t):
            t, v = self.t[:self.n].copy(), self.v[:self.n].copy()
        else:
            t, v = np.roll(self.t, -self.pos), np.roll(self.v, -self.pos, axis=0)
        if since is not None:
            keep = t >= since
            t, v = t[keep], v[keep]
        return t, v

    def __len__(self) -> int:
        return self.n


class RpoHistory:
    """Per-machine RPO samples, one ring each, created on first sample."""

    def __init__(self, minutes: int = 60, rate_hz: float = 1.0) -> None:
        self.capacity = max(60, int(minutes * 60 * rate_hz))
        self._rings: dict[str, Ring] = {}

    def append(self, machine: str, t: float, rpo: float) -> None:
        ring = self._rings.get(machine)
        if ring is None:
            ring = self._rings[machine] = Ring(self.capacity)
        ring.append(t, rpo)

    def seed(self, machine: str, samples: Iterable[tuple[float, float]]) -> int:
        """Put the appliance's older history (``rpo_history``) before what this console sampled itself; returns
        how many samples were added. Samples at or after the ring's oldest are ignored (the ring has them)."""
        t_own, v_own = self.series(machine)
        first = float(t_own[0]) if len(t_own) else float("inf")
        room = self.capacity - len(t_own)
        older = sorted((t, v) for t, v in samples if t < first)[-room:] if room > 0 else []
        if not older:
            return 0
        ring = self._rings[machine] = Ring(self.capacity)
        for t, v in older:
            ring.append(t, v)
        for t, v in zip(t_own.tolist(), v_own.tolist()):
            ring.append(t, v)
        return len(older)

    def merge(self, machine: str, samples: Iterable[tuple[float, float]], step: float = 5.0) -> int:
        """Add the appliance's kept samples where this console has none: all of those before our first sample (from
        before this console ran), and in the gaps later (while the link was down) those ``step`` seconds or more
        from any of ours. Returns how many were added."""
        t_own, v_own = self.series(machine)
        incoming = sorted(samples)
        if len(t_own):
            at = np.searchsorted(t_own, [t for t, _ in incoming])
            keep = []
            for (t, v), i in zip(incoming, at.tolist()):
                near = (i < len(t_own) and t_own[i] - t < step) or (i > 0 and t - t_own[i - 1] < step)
                if t < t_own[0] or not near:   # everything before our first sample is history we cannot have
                    keep.append((t, v))
        else:
            keep = incoming
        if not keep:
            return 0
        merged = sorted([*keep, *zip(t_own.tolist(), v_own.tolist())])[-self.capacity:]
        ring = self._rings[machine] = Ring(self.capacity)
        for t, v in merged:
            ring.append(t, v)
        return len(keep)

    def series(self, machine: str, since: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        ring = self._rings.get(machine)
        if ring is None:
            return np.zeros(0), np.zeros(0, dtype=np.float32)
        t, v = ring.series(since)
        return t, v[:, 0]

    def __contains__(self, machine: object) -> bool:
        return machine in self._rings

    def __len__(self) -> int:
        return len(self._rings)


class DashboardSeries:
    """Fleet-wide samples over time: worst RPO, total churn and total upload (one sample per status batch)."""

    WORST, CHURN, UPLOAD = range(3)

    def __init__(self, minutes: int = 60) -> None:
        self.ring = Ring(max(60, minutes * 60 * 4), 3)  # up to 4 batches a second
        self.last_sample = 0.0

    def sample(self, model: MachineTableModel, now: float | None = None) -> None:
        now = time.time() if now is None else now
        prot = [r for r in model.rows() if r.protected]
        self.ring.append(now, max((r.rpo for r in prot if r.rpo_known), default=0.0), sum(r.churn for r in prot),
                         sum(r.upload for r in prot))
        self.last_sample = now

    def series(self, since: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.ring.series(since)
