"""The operator's event log: state changes, alerts, notifications and job ends, newest first, bounded."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QObject, QPersistentModelIndex, Qt

EVENT_COLUMNS = ("Time", "Level", "Machine", "Event", "Details")


@dataclass(frozen=True, slots=True)
class LogEntry:
    level: str      # info | warning | error
    kind: str       # state | alert | job | notification
    message: str
    machine: str | None = None
    details: str = ""
    time: float = field(default_factory=time.time)


class EventLogModel(QAbstractTableModel):
    """A bounded, newest-first table of ``LogEntry``s."""

    def __init__(self, capacity: int = 2000, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: deque[LogEntry] = deque()
        self.capacity = capacity

    def add(self, entry: LogEntry) -> None:
        self.beginInsertRows(QModelIndex(), 0, 0)
        self._rows.appendleft(entry)
        self.endInsertRows()
        if len(self._rows) > self.capacity:
            last = len(self._rows) - 1
            self.beginRemoveRows(QModelIndex(), last, last)
            self._rows.pop()
            self.endRemoveRows()

    def entries(self) -> list[LogEntry]:
        return list(self._rows)

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(EVENT_COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation,  # noqa: N802
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return EVENT_COLUMNS[section]
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or role not in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole):
            return None
        e = self._rows[index.row()]
        if role == Qt.ItemDataRole.ToolTipRole:
            return e.details or e.message
        return (time.strftime("%H:%M:%S", time.localtime(e.time)), e.level, e.machine or "—", e.message,
                e.details)[index.column()]
