"""Live RPO graph of one machine (pyqtgraph): the last hour, the policy's threshold line, recovery points marked.

The legend sits above the data area (never over the newest samples, where a breach shows); the time window fits
the history there is (at least a minute, at most an hour), so a new machine's curve spans the graph; with no
machine there is a sentence instead of an empty axis."""

from __future__ import annotations

import time
from typing import Iterable, Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QResizeEvent
from PySide6.QtWidgets import QLabel

from console.engine_facade import PointView

from .plots import calm

WINDOW_SECONDS = 3600.0
MIN_WINDOW_SECONDS = 60.0
EMPTY_TEXT = "Select a machine to see its RPO over the last hour."


class RpoGraph(pg.PlotWidget):
    """``show_machine`` resets it; ``set_series`` redraws the curve; ``add_point`` marks a new recovery point.

    ``updated(samples, points)`` is emitted after every redraw (tests await it instead of sleeping)."""

    updated = Signal(int, int)

    def __init__(self, parent: object = None) -> None:
        super().__init__(parent=parent, enableMenu=False,
                         axisItems={"bottom": pg.DateAxisItem(orientation="bottom")})
        calm(self)
        self.setObjectName("rpoGraph")
        self.setAccessibleName("RPO over the last hour")
        self.setMinimumHeight(180)
        pi = self.getPlotItem()
        pi.setLabel("left", "RPO", units="s")
        pi.showGrid(x=True, y=True, alpha=0.15)
        # The legend takes the title's row, above the data area.
        self.legend = pg.LegendItem(colCount=4, labelTextSize="8pt", verSpacing=-6)
        pi.layout.removeItem(pi.titleLabel)
        pi.titleLabel.setVisible(False)
        pi.layout.addItem(self.legend, 0, 1)
        pi.layout.setRowFixedHeight(0, 22)
        self.curve = pi.plot([], [], pen=pg.mkPen("#1f7a8c", width=2),
                             fillLevel=0, brush=pg.mkBrush(31, 122, 140, 40))
        self.threshold = pg.InfiniteLine(angle=0, movable=False,
                                         pen=pg.mkPen("#c62828", width=1.5, style=Qt.PenStyle.DashLine),
                                         label="threshold {value:.0f} s",
                                         labelOpts={"position": 0.02, "color": "#c62828", "anchors": [(0, 1), (0, 1)]})
        pi.addItem(self.threshold)
        self.crash_points = pg.ScatterPlotItem(size=7, symbol="o", pen=pg.mkPen("#5b6875"),
                                               brush=pg.mkBrush("#ffffff"), name="crash-consistent point")
        self.app_points = pg.ScatterPlotItem(size=11, symbol="star", pen=pg.mkPen("#1f7a8c"),
                                             brush=pg.mkBrush("#1f7a8c"), name="app-consistent point")
        pi.addItem(self.crash_points)
        pi.addItem(self.app_points)
        threshold_sample = pg.PlotDataItem(pen=pg.mkPen("#c62828", width=1.5, style=Qt.PenStyle.DashLine))
        for item, name in ((self.curve, "RPO"), (threshold_sample, "threshold"),
                           (self.crash_points, "crash-consistent point"), (self.app_points, "app-consistent point")):
            self.legend.addItem(item, name)
        self.empty = QLabel(EMPTY_TEXT, self)
        self.empty.setObjectName("hint")
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setWordWrap(True)
        self.machine: str | None = None
        self.samples = 0
        self._points: dict[str, list[float]] = {"crash-consistent": [], "app-consistent": []}
        self._ymax = 1.0
        self.getPlotItem().setVisible(False)   # empty until a machine is shown

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802
        super().resizeEvent(event)
        empty = self.__dict__.get("empty")   # pyqtgraph resizes once inside __init__, before it exists
        if empty is not None:
            empty.setGeometry(self.rect())

    @property
    def is_empty(self) -> bool:
        """True while no machine is shown (the sentence instead of axes)."""
        return self.machine is None

    def show_machine(self, machine: str | None, threshold: float, points: Sequence[PointView] = ()) -> None:
        self.machine = machine
        self.getPlotItem().setVisible(machine is not None)
        self.empty.setVisible(machine is None)
        self.threshold.setValue(threshold)
        self._points = {"crash-consistent": [], "app-consistent": []}
        since = time.time() - WINDOW_SECONDS
        for p in points:
            if p.time >= since:
                self._points.setdefault(p.kind, []).append(p.time)
        self.curve.setData([], [])
        self.samples = 0
        self._ymax = max(1.0, threshold * 1.2)
        self._draw_points()
        self._set_range()

    def set_threshold(self, threshold: float) -> None:
        if threshold != self.threshold.value():
            self.threshold.setValue(threshold)
            self._set_range()

    def add_point(self, when: float, kind: str) -> None:
        pts = self._points.setdefault(kind, [])
        pts.append(when)
        cutoff = time.time() - WINDOW_SECONDS
        if pts and pts[0] < cutoff:
            self._points[kind] = [t for t in pts if t >= cutoff]
        self._draw_points()

    def _draw_points(self) -> None:
        crash = self._points.get("crash-consistent", [])
        app = self._points.get("app-consistent", [])
        self.crash_points.setData(crash, [0.0] * len(crash))
        self.app_points.setData(app, [0.0] * len(app))

    @property
    def point_count(self) -> int:
        return sum(len(v) for v in self._points.values())

    def set_series(self, t: np.ndarray, rpo: np.ndarray) -> None:
        """Redraw the curve from ``(t, rpo)`` samples (already limited to the window by the caller)."""
        self.curve.setData(t, rpo)
        self.samples = len(t)
        top = float(rpo.max()) if len(rpo) else 0.0
        self._ymax = max(1.0, self.threshold.value() * 1.2, top * 1.1)
        self._set_range()
        self.updated.emit(self.samples, self.point_count)

    def window(self, now: float | None = None) -> tuple[float, float]:
        """The x range drawn: the history there is (samples and points), at least a minute, at most an hour."""
        now = time.time() if now is None else now
        first = [float(self.curve.xData[0])] if self.curve.xData is not None and len(self.curve.xData) else []
        first += [min(v) for v in self._points.values() if v]
        span = min(WINDOW_SECONDS, max(MIN_WINDOW_SECONDS, now - min(first, default=now)))
        return now - span, now

    def _set_range(self) -> None:
        lo, hi = self.window()
        self.setXRange(lo, hi, padding=0.01)
        self.setYRange(0, self._ymax, padding=0.02)


def recent(points: Iterable[PointView], seconds: float = WINDOW_SECONDS) -> list[PointView]:
    cutoff = time.time() - seconds
    return [p for p in points if p.time >= cutoff]
