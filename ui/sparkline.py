"""The machines table's "RPO trend" column: one delegate paints every row's sparkline (no widget per row).

Only visible rows are painted, from the console's RPO history (numpy rings), downsampled to the cell's width; the
policy's threshold is a dashed line when it is inside the drawn range, and the line takes the row's health colour.
"""

from __future__ import annotations

import time

import numpy as np
from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QPainter, QPen, QPolygonF
from PySide6.QtWidgets import QStyle, QStyledItemDelegate, QStyleOptionViewItem, QWidget

from console.models import ROW_ROLE, MachineRow, RpoHistory

COLORS = {"ok": "#2e7d32", "warning": "#b26a00", "critical": "#c62828", "": "#5b6875"}


class SparklineDelegate(QStyledItemDelegate):
    """Draws the last ``minutes`` of a machine's RPO in its cell."""

    def __init__(self, history: RpoHistory, minutes: float = 10.0, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.history = history
        self.window = minutes * 60.0
        self.painted = 0   # cells painted (tests: only visible rows cost anything)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem,
              index: QModelIndex | QPersistentModelIndex) -> None:
        style = option.widget.style() if option.widget is not None else None
        if style is not None:   # background and selection as every other cell
            style.drawPrimitive(QStyle.PrimitiveElement.PE_PanelItemViewItem, option, painter, option.widget)
        row = index.data(ROW_ROLE)
        if not isinstance(row, MachineRow) or not row.protected:
            return
        self.painted += 1
        now = time.time()
        t, v = self.history.series(row.name, since=now - self.window)
        if len(t) < 2:
            return
        r = QRectF(option.rect).adjusted(3, 4, -3, -4)
        if r.width() < 8 or r.height() < 4:
            return
        step = max(1, len(t) // int(r.width()))
        if step > 1:   # one point per pixel column, keeping each column's peak (a breach never vanishes)
            n = len(v) // step * step
            t = t[len(t) - n::step]
            v = v[len(v) - n:].reshape(-1, step).max(axis=1)
        top = max(1.0, float(v.max()) * 1.1, row.rpo_threshold * 1.1)
        xs = r.left() + (t - (now - self.window)) / self.window * r.width()
        ys = r.bottom() - np.minimum(v, top) / top * r.height()
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        thr_y = r.bottom() - row.rpo_threshold / top * r.height()
        painter.setPen(QPen(QColor(198, 40, 40, 110), 1, Qt.PenStyle.DotLine))
        painter.drawLine(QPointF(r.left(), thr_y), QPointF(r.right(), thr_y))
        painter.setPen(QPen(QColor(COLORS.get(row.health, COLORS[""])), 1.4))
        painter.drawPolyline(QPolygonF([QPointF(x, y) for x, y in zip(xs.tolist(), ys.tolist())]))
        painter.restore()
