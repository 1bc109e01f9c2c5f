"""Live RPO graph of one machine (pyqtgraph): the last hour, the policy's threshold line, recovery points marked."""

from __future__ import annotations

import time
from typing import Iterable, Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal

from console.engine_facade import PointView

from .plots import calm

WINDOW_SECONDS = 3600.0


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
        pi.addLegend(offset=(-10, 5), labelTextSize="8pt", brush=pg.mkBrush(255, 255, 255, 200))
        self.curve = pi.plot([], [], pen=pg.mkPen("#1f7a8c", width=2), name="RPO",
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
        pi.addItem(self.crash_points)  # named items join the legend by themselves
        pi.addItem(self.app_points)
        self.machine: str | None = None
        self.samples = 0
        self._points: dict[str, list[float]] = {"crash-consistent": [], "app-consistent": []}
        self._ymax = 1.0

    def show_machine(self, machine: str | None, threshold: float, points: Sequence[PointView] = ()) -> None:
        self.machine = machine
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

    def _set_range(self) -> None:
        # Up to the last hour; while there is less history, at least 5 minutes so the curve is readable.
        now = time.time()
        first = [float(self.curve.xData[0])] if self.curve.xData is not None and len(self.curve.xData) else []
        first += [min(v) for v in self._points.values() if v]
        span = min(WINDOW_SECONDS, max(300.0, now - min(first, default=now) + 30))
        self.setXRange(now - span, now, padding=0)
        self.setYRange(0, self._ymax, padding=0.02)


def recent(points: Iterable[PointView], seconds: float = WINDOW_SECONDS) -> list[PointView]:
    cutoff = time.time() - seconds
    return [p for p in points if p.time >= cutoff]
