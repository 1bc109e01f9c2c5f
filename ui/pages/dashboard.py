"""Dashboard: machines by health, the worst RPO, churn / upload throughput over time, and the vault target's health
(where it is, last upload, backlog, throttled or not, upload limit, error: ``console.target.health_rows``; unknown
is shown as unknown).

Every tile is a way in: clicking it (or Enter/Space on it) shows those machines in Protected machines, filtered
(``show_machines`` carries the ``FleetFilter``); the worst-RPO tile shows the fleet worst first."""

from __future__ import annotations

import time

import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QKeyEvent, QMouseEvent
from PySide6.QtWidgets import QFrame, QGridLayout, QGroupBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from console.context import ConsoleContext
from console.fleet_filter import FleetFilter
from console.errors import UserError
from console.models import DashboardSeries, format_rate, format_seconds
from console.target import STATE_HEALTH, health_rows

from .. import forms, theme
from ..plots import time_plot

WINDOW = 3600.0


class Tile(QFrame):
    """A number with an icon and a word (health is never colour alone); clickable, and by keyboard."""

    clicked = Signal()

    def __init__(self, label: str, health: str | None = None, icon: str | None = None) -> None:
        super().__init__()
        self.setObjectName("tile")
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setToolTip(f"Show these machines ({label})")
        self.value = QLabel("0")
        self.value.setObjectName("tileValue")
        if health is not None:
            theme.set_health(self.value, health, "0")
        self.label = QLabel(label)
        self.label.setObjectName("tileLabel")
        self.value.setAccessibleName(label)
        head = QHBoxLayout()
        if icon:
            ic = QLabel()
            ic.setPixmap(theme.icon(icon).pixmap(18, 18))
            head.addWidget(ic)
        head.addWidget(self.label)
        head.addStretch(1)
        lay = QVBoxLayout(self)
        lay.addLayout(head)
        lay.addWidget(self.value)

    def set(self, text: str) -> None:
        self.value.setText(text)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if event.button() == Qt.MouseButton.LeftButton and self.rect().contains(event.position().toPoint()):
            self.clicked.emit()
        super().mouseReleaseEvent(event)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter, Qt.Key.Key_Space):
            self.clicked.emit()
            return
        super().keyPressEvent(event)


def _plot(title: str, units: str) -> pg.PlotWidget:
    w = time_plot()
    w.setTitle(title, size="10pt")
    w.setLabel("left", units=units)
    w.showGrid(x=True, y=True, alpha=0.15)
    w.setMinimumHeight(120)   # with the target panel, the page still fits the console's 1000x700 window
    return w


#: tile key → the machines it stands for
TILE_FILTERS = {"ok": FleetFilter(health="ok"), "warning": FleetFilter(health="warning"),
                "critical": FleetFilter(health="critical"), "": FleetFilter(health="unprotected"),
                "attention": FleetFilter(attention=True)}


class DashboardPage(QWidget):
    """Redrawn at most once a second, and only while visible. ``show_machines(FleetFilter, worst_first)`` when
    a tile is clicked."""

    show_machines = Signal(object, bool)

    def __init__(self, ctx: ConsoleContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.tiles = {"ok": Tile("OK", "ok", "ok"), "warning": Tile("Warning", "warning", "warning"),
                      "critical": Tile("Critical", "critical", "critical"),
                      "": Tile("Not protected", "", "unprotected"),
                      "attention": Tile("Needs attention", None, "warning")}
        self.tiles["attention"].setToolTip("Health not OK, a resync required, or the agent not connected")
        for key, tile in self.tiles.items():
            tile.clicked.connect(lambda k=key: self.show_machines.emit(TILE_FILTERS[k], False))
        self.worst = Tile("Worst RPO")
        self.worst.setToolTip("Show every machine, the worst RPO first")
        self.worst.clicked.connect(lambda: self.show_machines.emit(FleetFilter(), True))
        self.worst_name = QLabel("—")
        self.worst_name.setObjectName("hint")
        self.worst.layout().addWidget(self.worst_name)
        grid = QGridLayout()
        for i, t in enumerate([*self.tiles.values(), self.worst]):
            grid.addWidget(t, 0, i)
        self.rpo_plot = _plot("Worst RPO", "s")
        self.rpo_curve = self.rpo_plot.plot([], [], pen=pg.mkPen("#c62828", width=2))
        # The worst machine's policy threshold: where the curve turns critical.
        self.threshold = pg.InfiniteLine(angle=0, movable=False,
                                         pen=pg.mkPen("#c62828", width=1.2, style=Qt.PenStyle.DashLine),
                                         label="threshold {value:.0f} s",
                                         labelOpts={"position": 0.02, "color": "#c62828", "anchors": [(0, 1), (0, 1)]})
        self.threshold.setVisible(False)
        self.rpo_plot.addItem(self.threshold)
        self.rate_plot = _plot("Churn and upload", "B/s")
        self.rate_plot.addLegend(offset=(10, 5))
        self.churn_curve = self.rate_plot.plot([], [], pen=pg.mkPen("#b26a00", width=2), name="churn (writes)")
        self.upload_curve = self.rate_plot.plot([], [], pen=pg.mkPen("#1f7a8c", width=2), name="upload (to vault)")
        self.rates = QLabel("—")
        self.rates.setObjectName("hint")
        lay = QVBoxLayout(self)
        lay.addWidget(forms.title("Dashboard"))
        lay.addLayout(grid)
        lay.addWidget(self.rates)
        lay.addWidget(self._target_box())
        lay.addWidget(self.rpo_plot, 1)
        lay.addWidget(self.rate_plot, 1)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(1000)
        self._timer.timeout.connect(self.refresh)
        ctx.statuses_applied.connect(self._schedule)
        ctx.inventory_refreshed.connect(self._schedule)
        ctx.link_changed.connect(self._on_link)
        self._target_timer = QTimer(self)
        self._target_timer.setInterval(2000)
        self._target_timer.timeout.connect(self.refresh_target)
        ctx.appliance_started.connect(self.refresh_target)
        ctx.appliance_stopped.connect(self.refresh_target)

    def _target_box(self) -> QGroupBox:
        """Two label/value pairs a row (the panel stays short: the plots keep their height)."""
        box = QGroupBox("Vault target")
        grid = QGridLayout(box)
        grid.setVerticalSpacing(4)
        self.target_labels: dict[str, QLabel] = {}
        layout = (("Target", "State"), ("Last upload", "Backlog"), ("Throttled", "Upload limit"), ("Error",))
        for r, keys in enumerate(layout):
            for c, key in enumerate(keys):
                lab = QLabel("unknown")
                lab.setWordWrap(True)
                lab.setMinimumWidth(260)   # a wrapped label's minimum height is computed at its minimum width
                lab.setAccessibleName(f"Target {key.lower()}")
                lab.setTextInteractionFlags(lab.textInteractionFlags().TextSelectableByMouse)
                self.target_labels[key] = lab
                name = QLabel(f"{key}:")
                name.setObjectName("hint")
                grid.addWidget(name, r, 2 * c, Qt.AlignmentFlag.AlignTop)
                grid.addWidget(lab, r, 2 * c + 1, 1, 3 if len(keys) == 1 else 1)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)
        self.target_health = None
        return box

    def refresh_target(self, *_: object) -> None:
        """Read the target's health from the appliance (every 2 s while shown)."""
        try:
            v = self.ctx.facade.target_health() if hasattr(self.ctx.facade, "target_health") else None
        except UserError as exc:
            v, why = None, f"unknown: {exc.code}: {exc.message}"
        else:
            why = "unknown: the appliance does not answer" if v is None else ""
        self.target_health = v
        if v is None:
            for key, lab in self.target_labels.items():
                lab.setText(why if key == "State" else "unknown")
            theme.set_health(self.target_labels["State"], "", why)
            return
        for key, text in health_rows(v):
            self.target_labels[key].setText(text)
        theme.set_health(self.target_labels["State"], STATE_HEALTH.get(v.state, ""),
                         self.target_labels["State"].text())

    def _on_link(self, *_: object) -> None:
        if self.isVisible():   # lost: the counts turn "?" at once; back: the fresh ones
            self.refresh()

    def _schedule(self, *_: object) -> None:
        if self.isVisible() and not self._timer.isActive():
            self._timer.start()

    def showEvent(self, event) -> None:  # type: ignore[no-untyped-def]  # noqa: N802
        super().showEvent(event)
        self.refresh()
        self.refresh_target()
        self._target_timer.start()

    def hideEvent(self, event) -> None:  # type: ignore[no-untyped-def]  # noqa: N802
        super().hideEvent(event)
        self._target_timer.stop()

    def refresh(self) -> None:
        counts = self.ctx.machines.health_counts()
        stale = self.ctx.machines.stale   # an attached console lost its appliance: no count is current
        for key, tile in self.tiles.items():
            tile.set("?" if stale and key != "" else str(counts.get(key, 0)))
        worst = self.ctx.machines.worst()
        if stale:
            self.worst.set("?")
            theme.set_health(self.worst.value, "", "?")
            self.worst_name.setText("unknown: lost the appliance")
            worst = None
        if not stale:
            self.worst.set(format_seconds(worst.rpo) if worst else "—")
            self.worst_name.setText(worst.name if worst else "no protected machine")
        if worst:
            theme.set_health(self.worst.value, worst.health, format_seconds(worst.rpo))
            self.threshold.setValue(worst.rpo_threshold)
        self.threshold.setVisible(worst is not None)
        now = time.time()
        t, v = self.ctx.fleet.series(since=now - WINDOW)
        self.rpo_curve.setData(t, v[:, DashboardSeries.WORST])
        self.churn_curve.setData(t, v[:, DashboardSeries.CHURN])
        self.upload_curve.setData(t, v[:, DashboardSeries.UPLOAD])
        span = min(WINDOW, max(300.0, now - (float(t[0]) if len(t) else now) + 30))
        for p in (self.rpo_plot, self.rate_plot):
            p.setXRange(now - span, now, padding=0)
        if len(t):  # from zero: a flat line near the top must not look like a cliff
            thr = worst.rpo_threshold if worst else 0.0
            self.rpo_plot.setYRange(0, max(1.0, float(v[:, 0].max()) * 1.15, thr * 1.15), padding=0)
            self.rate_plot.setYRange(0, max(1.0, float(v[:, 1:].max()) * 1.15), padding=0)
        if len(t):
            self.rates.setText(f"Now: churn {format_rate(float(v[-1, 1]))}, upload {format_rate(float(v[-1, 2]))} "
                               f"across {counts['ok'] + counts['warning'] + counts['critical']} protected machine(s)")
        self.rates.setAlignment(Qt.AlignmentFlag.AlignLeft)
