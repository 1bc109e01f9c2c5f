"""The alert centre's model: the appliance's alerts (``facade.alerts()`` at start, then every ``Alert`` event).

An alert is one cause on one subject (``id``, e.g. "LB_RPO_BREACH:vm1"): a repeat while it is active folds into it
(``count``), so a flapping machine is one row, not hundreds; ``state="cleared"`` ends it. The badge counts the
active alerts nobody acknowledged yet. ``raised`` fires once when an alert becomes active (not for repeats): the
window turns it into a desktop notification for warnings and critical ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QObject, QPersistentModelIndex, Qt, Signal

from .bridge import Alert

Index = QModelIndex | QPersistentModelIndex

SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}
ALERT_COLUMNS = ("Severity", "Subject", "Message", "What to do", "Raised", "Cleared", "Count", "Acknowledged")


def alert_id(code: str, subject: str | None) -> str:
    """The contract's stable id ("CODE:subject"), for an event from an engine that sends none."""
    return f"{code}:{subject}" if subject else code


def _when(t: float | None) -> str:
    if not t:
        return "—"
    today = time.strftime("%Y-%m-%d") == time.strftime("%Y-%m-%d", time.localtime(t))
    return time.strftime("%H:%M:%S" if today else "%Y-%m-%d %H:%M", time.localtime(t))


@dataclass(slots=True)
class AlertRow:
    """One alert as the centre shows it; the same fields as ``engine.api.AlertView`` (CONTRACT), kept up to date."""
    id: str
    code: str
    severity: str = "warning"
    component: str = "machine"
    subject: str = ""
    message: str = ""
    advice: str = ""
    raised_at: float = 0.0
    cleared_at: float | None = None
    acknowledged_at: float | None = None
    acknowledged_by: str | None = None
    count: int = 1

    @property
    def active(self) -> bool:
        return self.cleared_at is None

    @property
    def needs_attention(self) -> bool:
        return self.active and self.acknowledged_at is None

    @classmethod
    def from_view(cls, v: Any) -> AlertRow:
        """From an ``AlertView`` (or anything with its fields)."""
        return cls(str(v.id), str(v.code), str(v.severity), str(v.component), str(v.subject or ""), str(v.message),
                   str(v.advice or ""), float(v.raised_at or 0.0), v.cleared_at, v.acknowledged_at,
                   v.acknowledged_by, int(v.count or 1))

    @classmethod
    def from_event(cls, ev: Alert) -> AlertRow:
        subject = ev.machine or str(ev.details.get("host") or ev.details.get("subject") or "")
        when = ev.time or time.time()
        return cls(ev.id or alert_id(ev.code, subject), ev.code, ev.severity, ev.component, subject, ev.message,
                   ev.advice, when, when if ev.state == "cleared" else None)


class AlertsModel(QAbstractTableModel):
    """Every alert the console knows, active ones first (most severe, then newest); keyed by id."""

    ROW_ROLE = Qt.ItemDataRole.UserRole + 1
    raised = Signal(object)          # AlertRow that just became active
    attention_changed = Signal(int)  # active, unacknowledged alerts

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: list[AlertRow] = []
        self._by_id: dict[str, AlertRow] = {}
        self._pos: dict[str, int] = {}          # alert id → its row in _rows
        self._icons: dict[str, Any] = {}
        self._attention = 0

    def set_icons(self, icons: dict[str, Any]) -> None:
        self._icons = icons

    # updates ---------------------------------------------------------------------------------------------
    def load(self, views: Iterable[Any]) -> None:
        """The appliance's list (at start): replaces what is shown; no notifications."""
        self.beginResetModel()
        self._by_id = {}
        for v in views:
            row = AlertRow.from_view(v)
            self._by_id[row.id] = row
        self._rows = sorted(self._by_id.values(), key=self._order)
        self._pos = {r.id: n for n, r in enumerate(self._rows)}
        self.endResetModel()
        self._recount()

    def apply_event(self, ev: Alert) -> AlertRow:
        """Fold one ``Alert`` event in: raise (new or again after clearing), repeat (count), or clear."""
        new = AlertRow.from_event(ev)
        row = self._by_id.get(new.id)
        became_active = False
        key = self._order(row) if row is not None else None
        if row is None:
            row = new
            self._by_id[row.id] = row
            became_active = row.active
        elif ev.state == "cleared":
            row.cleared_at = new.cleared_at or time.time()
        elif row.active:
            row.count += 1
            row.message, row.advice, row.severity = new.message, new.advice or row.advice, new.severity
        else:   # raised again after it cleared: a new occurrence, to be acknowledged again
            row.raised_at, row.cleared_at, row.acknowledged_at, row.acknowledged_by = new.raised_at, None, None, None
            row.count, row.message, row.advice, row.severity = 1, new.message, new.advice, new.severity
            became_active = True
        if key is not None and key == self._order(row):
            # The common case under a fleet: a repeat of an active alert. Its place is unchanged: repaint its row
            # only, instead of re-sorting and repainting every alert once per event.
            i = self._pos[row.id]
            self.dataChanged.emit(self.index(i, 0), self.index(i, len(ALERT_COLUMNS) - 1))
        else:
            self._resort()
        if became_active:
            self.raised.emit(row)
        return row

    def update_view(self, v: Any) -> AlertRow:
        """An ``AlertView`` the appliance returned (after acknowledging): its fields win."""
        fresh = AlertRow.from_view(v)
        self._by_id[fresh.id] = fresh
        self._resort()
        return fresh

    # queries ---------------------------------------------------------------------------------------------
    def get(self, alert_id: str) -> AlertRow | None:
        return self._by_id.get(alert_id)

    def rows(self) -> list[AlertRow]:
        return list(self._rows)

    def row_at(self, i: int) -> AlertRow:
        return self._rows[i]

    @property
    def attention(self) -> int:
        return self._attention

    # internals -------------------------------------------------------------------------------------------
    @staticmethod
    def _order(r: AlertRow) -> tuple[int, int, int, float]:
        return (0 if r.active else 1, 0 if r.acknowledged_at is None else 1, SEVERITY_ORDER.get(r.severity, 3),
                -r.raised_at)

    def _resort(self) -> None:
        """Re-sort in place, moving persistent indexes (the view's selection follows its alert)."""
        self.layoutAboutToBeChanged.emit()
        old = self.persistentIndexList()
        ids = [self._rows[i.row()].id if 0 <= i.row() < len(self._rows) else None for i in old]
        self._rows = sorted(self._by_id.values(), key=self._order)
        self._pos = {r.id: n for n, r in enumerate(self._rows)}
        pos = self._pos
        self.changePersistentIndexList(old, [self.index(pos[a], i.column()) if a in pos else QModelIndex()
                                             for a, i in zip(ids, old)])
        self.layoutChanged.emit()
        if self._rows:
            self.dataChanged.emit(self.index(0, 0), self.index(len(self._rows) - 1, len(ALERT_COLUMNS) - 1))
        self._recount()

    def _recount(self) -> None:
        n = sum(1 for r in self._rows if r.needs_attention)
        if n != self._attention:
            self._attention = n
            self.attention_changed.emit(n)

    # Qt model API ----------------------------------------------------------------------------------------
    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(ALERT_COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation,  # noqa: N802
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return ALERT_COLUMNS[section]
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        r, col = self._rows[index.row()], index.column()
        if role == self.ROW_ROLE:
            return r
        if role == Qt.ItemDataRole.DecorationRole and col == 0:
            return self._icons.get(r.severity if r.active else "cleared")
        if role == Qt.ItemDataRole.ToolTipRole:
            return f"{r.code} ({r.component}): {r.message}\n{r.advice}".strip()
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        if col == 0:
            return r.severity.capitalize() + ("" if r.active else " (cleared)")
        if col == 1:
            return r.subject or r.component
        if col == 2:
            return f"{r.code}: {r.message}"
        if col == 3:
            return r.advice
        if col == 4:
            return _when(r.raised_at)
        if col == 5:
            return _when(r.cleared_at) if r.cleared_at else "active"
        if col == 6:
            return str(r.count)
        return f"{r.acknowledged_by or '?'} at {_when(r.acknowledged_at)}" if r.acknowledged_at else "no"
