"""The alert centre: every alert of the appliance (active first), what to do about it, and Acknowledge.

The table shows severity, subject, message, advice, raised/cleared times and how many occurrences were folded into
the alert; the pane under it shows the selected alert whole (long messages are never clipped). Acknowledge records
the OS user running the console and when; the navigation's badge counts active alerts nobody acknowledged.
"""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QSortFilterProxyModel, Qt
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QHBoxLayout, QHeaderView, QLabel, QPushButton,
                               QTableView, QVBoxLayout, QWidget)

from console.alerts import AlertRow, AlertsModel
from console.context import ConsoleContext

from .. import forms, theme


class _ActiveOnly(QSortFilterProxyModel):
    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self.active_only = False

    def set_active_only(self, on: bool) -> None:
        self.beginFilterChange()
        self.active_only = on
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def filterAcceptsRow(self, row: int, parent: QModelIndex | QPersistentModelIndex) -> bool:  # noqa: N802
        if not self.active_only:
            return True
        src = self.sourceModel()
        r = src.data(src.index(row, 0, parent), AlertsModel.ROW_ROLE)
        return bool(r is not None and r.active)


class AlertsPage(QWidget):
    def __init__(self, ctx: ConsoleContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        ctx.alerts.set_icons({"critical": theme.icon("critical"), "warning": theme.icon("warning"),
                              "info": theme.icon("info"), "cleared": theme.icon("ok")})
        self.proxy = _ActiveOnly(self)
        self.proxy.setSourceModel(ctx.alerts)
        self.table = QTableView()
        self.table.setObjectName("alerts")
        self.table.setAccessibleName("Alerts")
        self.table.setModel(self.proxy)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        self.table.verticalHeader().setVisible(False)
        head = self.table.horizontalHeader()
        for col, w in enumerate((105, 110, 300, 230, 75, 75, 55)):
            head.resizeSection(col, w)
        head.setSectionResizeMode(2, QHeaderView.ResizeMode.Interactive)
        head.setStretchLastSection(True)
        self.active_only = QCheckBox("Active &only")
        self.active_only.toggled.connect(self.proxy.set_active_only)
        self.ack_btn = QPushButton(theme.icon("ok"), "&Acknowledge")
        self.ack_btn.setToolTip("Record that you have seen this alert (your user name and the time are kept)")
        self.ack_btn.clicked.connect(self.acknowledge_selected)
        self.summary = forms.hint("")
        self.detail = QLabel()
        self.detail.setObjectName("alertDetail")
        self.detail.setWordWrap(True)
        self.detail.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.detail.setAccessibleName("Selected alert")
        self.detail.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.detail.setMinimumHeight(5 * self.detail.fontMetrics().lineSpacing())
        bar = QHBoxLayout()
        bar.addWidget(self.summary, 1)
        bar.addWidget(self.active_only)
        bar.addWidget(self.ack_btn)
        lay = QVBoxLayout(self)
        lay.addWidget(forms.title("Alerts"))
        lay.addLayout(bar)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.detail)
        self.table.selectionModel().selectionChanged.connect(self._update)
        ctx.alerts.attention_changed.connect(self._update)
        ctx.alerts.layoutChanged.connect(self._update)
        ctx.alerts.modelReset.connect(self._update)
        self._update()

    def selected(self) -> AlertRow | None:
        rows = self.table.selectionModel().selectedRows()
        return rows[0].data(AlertsModel.ROW_ROLE) if rows else None

    def select(self, alert_id: str) -> None:
        for r in range(self.proxy.rowCount()):
            row = self.proxy.index(r, 0).data(AlertsModel.ROW_ROLE)
            if row.id == alert_id:
                self.table.selectRow(r)
                return
        raise KeyError(alert_id)

    def _update(self, *_: object) -> None:
        rows = self.ctx.alerts.rows()
        active = sum(1 for r in rows if r.active)
        n = self.ctx.alerts.attention
        self.summary.setText("No alerts: every machine and component is fine." if not rows else
                             f"{active} active alert(s), {n} not acknowledged; {len(rows) - active} cleared.")
        a = self.selected()
        self.ack_btn.setEnabled(bool(a and a.needs_attention))
        if a is None:
            self.detail.setText("")
            return
        ack = f"<br>Acknowledged by {a.acknowledged_by}." if a.acknowledged_at else ""
        self.detail.setText(f"<b>{a.code}</b> — {a.severity}, {a.component} <b>{a.subject}</b>"
                            f"{'' if a.count == 1 else f' ({a.count} occurrences)'}<br>{a.message}"
                            f"<br><i>What to do:</i> {a.advice or '—'}{ack}")

    def acknowledge_selected(self) -> None:
        a = self.selected()
        if a is None:
            return
        try:
            self.ctx.acknowledge_alert(a.id)
        except Exception as exc:
            self.ctx.notes.handle(exc, f"acknowledging {a.id}")
        self._update()
