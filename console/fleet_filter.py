"""Triage of a large fleet: which machines the Protected machines table shows.

``FleetFilter`` is plain data (what the operator asked for) with a pure ``matches(row)``; ``MachineFilterProxy`` is
the Qt proxy that applies it to the ``MachineTableModel``. The proxy never sorts by itself: a header click asks the
source model to reorder its rows once (``MachineTableModel.sort``), so live updates never move rows under the
operator's cursor. Filtering follows live values, but only when the operator has a filter on (``refilter``), so an
unfiltered table of 2,000 machines costs nothing per update.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QSortFilterProxyModel, Qt

from .models import HEALTH_LABELS, MachineRow, MachineTableModel

#: health filter values: the engine's health words, plus "unprotected" (registered, not protected)
HEALTH_CHOICES = ("ok", "warning", "critical", "unprotected")


@dataclass(frozen=True, slots=True)
class FleetFilter:
    """Every set criterion must hold. ``text`` matches (case-insensitive, substring) the name, state, health,
    policy, vCenter and health reason; ``attention`` keeps the machines that need attention."""
    text: str = ""
    health: str = ""       # "" (any) | ok | warning | critical | unprotected
    state: str = ""        # "" (any) | an engine state (protected, initial-sync, resync-required …)
    policy: str = ""
    vcenter: str = ""
    attention: bool = False

    @property
    def active(self) -> bool:
        return bool(self.text.strip() or self.health or self.state or self.policy or self.vcenter or self.attention)

    def with_(self, **changes: Any) -> FleetFilter:
        return replace(self, **changes)

    def matches(self, r: MachineRow) -> bool:
        if self.attention and not r.needs_attention:
            return False
        if self.health:
            health = r.health if r.protected else "unprotected"
            if health != self.health:
                return False
        if self.state and r.state != self.state:
            return False
        if self.policy and r.policy != self.policy:
            return False
        if self.vcenter and r.vcenter != self.vcenter:
            return False
        text = self.text.strip().lower()
        if text:
            health_label = HEALTH_LABELS.get(r.health if r.protected else "", r.health)
            fields = (r.name, r.state_text, health_label, r.policy, r.vcenter, r.health_reason)
            return any(text in f.lower() for f in fields)
        return True

    def describe(self) -> str:
        """In words, for the page's "showing N of M" line."""
        parts = []
        if self.attention:
            parts.append("needing attention")
        if self.health:
            parts.append(f"health {self.health}")
        if self.state:
            parts.append(f"state {self.state}")
        if self.policy:
            parts.append(f"policy {self.policy}")
        if self.vcenter:
            parts.append(f"vCenter {self.vcenter}")
        if self.text.strip():
            parts.append(f"matching “{self.text.strip()}”")
        return ", ".join(parts)


class MachineFilterProxy(QSortFilterProxyModel):
    """Filters the machines table with a ``FleetFilter``; sorting is delegated to the source model (stable order)."""

    def __init__(self, source: MachineTableModel, parent: Any = None) -> None:
        super().__init__(parent)
        self._source = source
        self._filter = FleetFilter()
        # No re-sorting or re-filtering on every dataChanged: refilter() does it once per status batch, and
        # only while a filter is on.
        self.setDynamicSortFilter(False)
        self.setSourceModel(source)

    @property
    def fleet_filter(self) -> FleetFilter:
        return self._filter

    def set_fleet_filter(self, f: FleetFilter) -> None:
        if f != self._filter:
            self.beginFilterChange()
            self._filter = f
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def refilter(self) -> None:
        """Re-apply the filter to changed live values (after a status batch); nothing to do without a filter."""
        if self._filter.active:
            self.beginFilterChange()
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def filterAcceptsRow(self, source_row: int, source_parent: QModelIndex | QPersistentModelIndex) -> bool:  # noqa: N802
        f = self._filter
        if not f.active:
            return True
        return f.matches(self._source.row_at(source_row))

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        self._source.sort(column, order)

    def names(self) -> list[str]:
        """The visible machines, in display order."""
        src = self._source
        return [src.row_at(self.mapToSource(self.index(r, 0)).row()).name for r in range(self.rowCount())]
