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
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QColor, QIcon

from engine.api import ApplianceStatus, ResyncView

from .bridge import MachineStatus

Index = QModelIndex | QPersistentModelIndex

SORT_ROLE = Qt.ItemDataRole.UserRole + 1     #: a sortable value (numbers for numeric columns)
HEALTH_ROLE = Qt.ItemDataRole.UserRole + 2   #: "ok" | "warning" | "critical" | "" (not protected)
NAME_ROLE = Qt.ItemDataRole.UserRole + 3     #: the machine name, from any column

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


COLUMNS = ("Name", "State", "Health", "RPO", "Last point", "Resync", "Churn", "Upload")
NAME, STATE, HEALTH, RPO, LAST_POINT, RESYNC, CHURN, UPLOAD = range(len(COLUMNS))


class MachineTableModel(QAbstractTableModel):
    """Protected (and registered) machines, one row each, keyed by name."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._rows: list[MachineRow] = []
        self._index: dict[str, int] = {}
        self._icons: dict[str, QIcon] = {}
        self._colors: dict[str, QColor] = {}

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
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row, col = self._rows[index.row()], index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(row, col)
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
        if role == Qt.ItemDataRole.ToolTipRole and col == RPO and row.protected:
            return "Age of the oldest change not yet in the vault"
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (RPO, CHURN, UPLOAD):
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
        if not row.protected and col != RESYNC:
            return "—"
        if col == RPO:
            return format_seconds(row.rpo)
        if col == LAST_POINT:
            return format_time(row.last_point_time)
        if col == RESYNC:
            return row.resync_text
        return format_rate(row.churn if col == CHURN else row.upload)

    @staticmethod
    def _sort_key(row: MachineRow, col: int) -> Any:
        return (row.name, row.state, HEALTH_ORDER.get(row.health, 9), row.rpo, row.last_point_time or 0.0,
                row.resync_text, row.churn, row.upload)[col]

    # updates ---------------------------------------------------------------------------------------------
    def row(self, name: str) -> MachineRow | None:
        i = self._index.get(name)
        return self._rows[i] if i is not None else None

    def rows(self) -> list[MachineRow]:
        return list(self._rows)

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
                r.protected, r.state, r.health = False, "unprotected", ""
                continue
            r.protected, r.state, r.health = True, m.state, m.health
            r.rpo, r.sync_progress = m.rpo_seconds, m.sync_progress
            r.last_point_time = m.last_point_time
            r.churn, r.upload = m.churn_bytes_per_s, m.upload_bytes_per_s
            r.resync = m.resync
        if self._rows:
            self.dataChanged.emit(self.index(0, 0), self.index(len(self._rows) - 1, len(COLUMNS) - 1))
        self._insert(new)

    def _insert(self, new: list[MachineRow]) -> None:
        if not new:
            return
        first = len(self._rows)
        self.beginInsertRows(QModelIndex(), first, first + len(new) - 1)
        self._rows.extend(new)
        self.endInsertRows()

    def health_counts(self) -> dict[str, int]:
        counts = {"ok": 0, "warning": 0, "critical": 0, "": 0}
        for r in self._rows:
            counts[r.health if r.protected else ""] = counts.get(r.health if r.protected else "", 0) + 1
        return counts

    def worst(self) -> MachineRow | None:
        prot = [r for r in self._rows if r.protected]
        return max(prot, key=lambda r: r.rpo) if prot else None


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
        self.ring.append(now, max((r.rpo for r in prot), default=0.0), sum(r.churn for r in prot),
                         sum(r.upload for r in prot))
        self.last_sample = now

    def series(self, since: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.ring.series(since)
