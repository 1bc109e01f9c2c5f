"""Protected machines: the live table (model/view), the selected machine's detail, and the actions on it.

Built for triage at 2,000 machines: filters by health, state, policy, vCenter and text (and "needs attention"); a
stable row order that changes only when the operator sorts (a header click, "Re-sort now", or the visible auto
re-sort); multi-select with bulk resync, drill and protect; a compact row mode; a sparkline of each machine's RPO.
"""

from __future__ import annotations

import time

from PySide6.QtCore import QItemSelection, QItemSelectionModel, QModelIndex, QSize, Qt, QTimer
from PySide6.QtGui import QAction, QKeySequence, QResizeEvent
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QComboBox, QHBoxLayout, QHeaderView, QLabel, QLineEdit,
                               QMessageBox, QPushButton, QSplitter, QTableView, QToolBar, QToolButton, QVBoxLayout,
                               QWidget)

from console.context import ConsoleContext
from console.fleet_filter import FleetFilter, MachineFilterProxy
from console.models import COLUMNS, NAME_ROLE, RPO, TREND, MachineRow

from .. import forms, theme
from ..bulk_dialogs import BulkDrillDialog
from ..dialogs import FailoverDialog, ProtectDialog
from ..sparkline import SparklineDelegate
from .machine_detail import MachineDetail

# Name, State, Health, RPO, RPO trend, Since point, Reason, Last point, Resync, Churn, Upload, Policy, vCenter
COLUMN_WIDTHS = (150, 130, 100, 75, 100, 100, 230, 90, 110, 80, 80, 80, 90)
ROW_HEIGHT, COMPACT_ROW_HEIGHT = 26, 18
AUTO_RESORT_SECONDS = 30
ICON_ONLY_BELOW = 700    # page width under which the action buttons drop their text
HEALTH_FILTERS = (("Any health", ""), ("OK", "ok"), ("Warning", "warning"), ("Critical", "critical"),
                  ("Not protected", "unprotected"))
STATES = ("protected", "initial-sync", "resync-required", "resyncing", "paused", "error", "unprotected")


def _combo(name: str, first: str) -> QComboBox:
    c = QComboBox()
    c.setAccessibleName(name)
    c.setToolTip(name)
    c.addItem(first, "")
    # A fixed, modest width: long values must not push the filter row past a 1024 px window.
    c.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    c.setMinimumContentsLength(6)
    return c


class MachinesPage(QWidget):
    """Filters and actions on top, the table, the detail below (splitter); keyboard shortcuts for every action."""

    def __init__(self, ctx: ConsoleContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.proxy = MachineFilterProxy(ctx.machines, self)
        self.table = QTableView()
        self.table.setObjectName("machinesTable")
        self.table.setAccessibleName("Protected machines")
        self.table.setModel(self.proxy)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        self.table.verticalHeader().setVisible(False)
        # Fixed row heights and column widths: no per-update measuring of 2,000 rows (ResizeToContents is O(rows)).
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.table.verticalHeader().setMinimumSectionSize(COMPACT_ROW_HEIGHT)
        self.table.verticalHeader().setDefaultSectionSize(ROW_HEIGHT)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        for col, w in enumerate(COLUMN_WIDTHS):
            header.resizeSection(col, w)
        self.sparklines = SparklineDelegate(ctx.history, 10.0, self.table)
        self.table.setItemDelegateForColumn(TREND, self.sparklines)
        # Sorting happens once per header click (the model reorders its rows); live updates never re-sort.
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(0, Qt.SortOrder.AscendingOrder)

        # filters -------------------------------------------------------------------------------------------
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter: name, state, health, reason, policy, vCenter (Ctrl+F)")
        self.filter.setAccessibleName("Filter machines")
        self.filter.setClearButtonEnabled(True)
        self.filter.setMinimumWidth(140)
        self.health_filter = _combo("Health", "Any health")
        for text, key in HEALTH_FILTERS[1:]:
            self.health_filter.addItem(text, key)
        self.state_filter = _combo("State", "Any state")
        for st in STATES:
            self.state_filter.addItem(st, st)
        self.policy_filter = _combo("Policy", "Any policy")
        self.vcenter_filter = _combo("vCenter", "Any vCenter")
        self.attention = QCheckBox("Needs &attention")
        self.attention.setToolTip("Health not OK, a resync required, or the agent not connected")
        fbar = QHBoxLayout()
        fbar.addWidget(self.filter, 1)
        for w in (self.health_filter, self.state_filter, self.policy_filter, self.vcenter_filter, self.attention):
            fbar.addWidget(w)
        self.filter.textChanged.connect(self._filters_changed)
        for c in (self.health_filter, self.state_filter, self.policy_filter, self.vcenter_filter):
            c.currentIndexChanged.connect(self._filters_changed)
        self.attention.toggled.connect(self._filters_changed)

        # actions -------------------------------------------------------------------------------------------
        self.acts: dict[str, QAction] = {}
        # A tool bar, not a row of buttons: it can never force the page wider (extra actions go to its » menu).
        self.toolbar = QToolBar("Machine actions")
        self.toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toolbar.setIconSize(QSize(16, 16))
        for key, text, icon, shortcut, slot in (
                ("protect", "Enable protection", "protect", "Ctrl+P", self.protect),
                ("resync", "Resync now", "resync", "Ctrl+R", self.resync),
                ("failover", "Test failover", "failover", "Ctrl+T", self.test_failover),
                ("cleanup", "Clean up drill", "cleanup", "Ctrl+Shift+D", self.cleanup),
                ("refresh", "Refresh", "refresh", "F5", self.ctx.refresh_inventory)):
            act = QAction(theme.icon(icon), text, self)
            act.setShortcut(QKeySequence(shortcut))
            act.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            act.setToolTip(f"{text} ({shortcut})")
            act.triggered.connect(slot)
            self.addAction(act)
            self.toolbar.addAction(act)
            self.acts[key] = act
        self.buttons = [b for b in self.toolbar.findChildren(QToolButton) if b.defaultAction() in self.acts.values()]
        self.shown = QLabel()
        self.shown.setObjectName("hint")
        self.shown.setAccessibleName("Machines shown")
        self.sort_info = QLabel()
        self.sort_info.setObjectName("hint")
        self.sort_info.setAccessibleName("Sort order")
        self.resort_btn = QPushButton("Re-sort now")
        self.resort_btn.setToolTip("Sort again by the current column: live values have changed since (Ctrl+Shift+S)")
        self.resort_btn.setShortcut(QKeySequence("Ctrl+Shift+S"))
        self.resort_btn.clicked.connect(ctx.machines.resort)
        self.auto_resort = QCheckBox("auto")
        self.auto_resort.setToolTip(f"Re-sort by itself every {AUTO_RESORT_SECONDS} s, but never while the pointer "
                                    "is over the table")
        self.compact = QCheckBox("Co&mpact")
        self.compact.setToolTip("Smaller rows and a smaller detail pane: more machines on screen")
        head = QHBoxLayout()
        head.setSpacing(5)
        head.addWidget(forms.title("Protected machines"))
        head.addStretch(1)
        for w in (self.shown, self.sort_info, self.resort_btn, self.auto_resort, self.compact):
            head.addWidget(w)
        find = QAction(self)
        find.setShortcut(QKeySequence.StandardKey.Find)
        find.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        find.triggered.connect(lambda: self.filter.setFocus())
        self.addAction(find)

        self.detail = MachineDetail(ctx)
        top = QWidget()
        tl = QVBoxLayout(top)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.addLayout(head)
        tl.addLayout(fbar)
        tl.addWidget(self.toolbar)
        tl.addWidget(self.table, 1)
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.addWidget(top)
        self.splitter.addWidget(self.detail)
        self.splitter.setSizes([420, 320])
        self.splitter.setStretchFactor(0, 1)   # a taller window gives the table the rows
        self.splitter.setStretchFactor(1, 0)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)   # the main window has its margins: every pixel here is a row
        lay.addWidget(self.splitter)
        self.table.selectionModel().selectionChanged.connect(self._selection_changed)
        # Rows leaving the view (filtered out, machine gone) leave the selection: the detail follows at once.
        for sig in (self.proxy.rowsRemoved, self.proxy.layoutChanged, self.proxy.modelReset):
            sig.connect(self._sync_detail)
        ctx.inventory_refreshed.connect(self.update_actions)
        ctx.inventory_refreshed.connect(self._refresh_choices)
        ctx.statuses_applied.connect(self._statuses_applied)
        ctx.machines.resorted.connect(self._update_sort_info)
        ctx.jobs.finished.connect(self._job_finished)
        self.compact.toggled.connect(self.set_compact)
        self._tick = QTimer(self)   # the "sorted N s ago" line and the auto re-sort
        self._tick.setInterval(1000)
        self._tick.timeout.connect(self._on_tick)
        self._tick.start()
        self.dialog: ProtectDialog | FailoverDialog | BulkDrillDialog | QMessageBox | None = None
        self._refresh_choices()
        self._update_sort_info()
        self._update_shown()
        self.update_actions()
        self.compact.setChecked(bool(ctx.settings.get("ui/compact_rows")))

    # filters, order and layout -------------------------------------------------------------------------
    def current_filter(self) -> FleetFilter:
        return self.proxy.fleet_filter

    def apply_filter(self, f: FleetFilter) -> None:
        """Show exactly the machines ``f`` selects (dashboard tiles call this); the widgets follow."""
        widgets = (self.filter, self.health_filter, self.state_filter, self.policy_filter, self.vcenter_filter,
                   self.attention)
        for w in widgets:
            w.blockSignals(True)
        try:
            self.filter.setText(f.text)
            for combo, value in ((self.health_filter, f.health), (self.state_filter, f.state),
                                 (self.policy_filter, f.policy), (self.vcenter_filter, f.vcenter)):
                if value and combo.findData(value) < 0:
                    combo.addItem(value, value)
                combo.setCurrentIndex(max(0, combo.findData(value)))
            self.attention.setChecked(f.attention)
        finally:
            for w in widgets:
                w.blockSignals(False)
        self._set_filter(f)

    def show_filtered(self, f: object, worst_first: bool = False) -> None:
        """A dashboard tile's machines: the filter applied, the first one selected (worst first on request)."""
        assert isinstance(f, FleetFilter)
        self.apply_filter(f)
        if worst_first:
            self.table.sortByColumn(RPO, Qt.SortOrder.DescendingOrder)
        if self.proxy.rowCount():
            self.table.selectRow(0)
            self.table.scrollToTop()
        self.table.setFocus()

    def _filters_changed(self, *_: object) -> None:
        self._set_filter(FleetFilter(self.filter.text(), str(self.health_filter.currentData() or ""),
                                     str(self.state_filter.currentData() or ""),
                                     str(self.policy_filter.currentData() or ""),
                                     str(self.vcenter_filter.currentData() or ""), self.attention.isChecked()))

    def _set_filter(self, f: FleetFilter) -> None:
        self.proxy.set_fleet_filter(f)
        self._sync_detail()
        self._update_shown()

    def _refresh_choices(self) -> None:
        """Policies and vCenters present in the fleet (kept while selected even if none is left)."""
        rows = self.ctx.machines.rows()
        for combo, values in ((self.policy_filter, {r.policy for r in rows if r.policy}),
                              (self.vcenter_filter, {r.vcenter for r in rows if r.vcenter})):
            have = {combo.itemData(i) for i in range(1, combo.count())}
            for v in sorted(values - have):
                combo.addItem(v, v)

    def _statuses_applied(self, _names: set[str]) -> None:
        self.proxy.refilter()   # live values may move machines in or out of the filter (never re-sorts)
        self._update_shown()

    def _update_shown(self) -> None:
        f = self.proxy.fleet_filter
        total = self.ctx.machines.rowCount()
        self.shown.setText(f"{self.proxy.rowCount()} of {total} shown" if f.active else f"{total} machines")
        self.shown.setToolTip(f"Filter: {f.describe()}" if f.active else "No filter")

    def _update_sort_info(self) -> None:
        m = self.ctx.machines
        if m.sort_column < 0 or m.sorted_at is None:
            self.sort_info.setText("unsorted")
            return
        arrow = "↑" if m.sort_order == Qt.SortOrder.AscendingOrder else "↓"
        ago = time.monotonic() - m.sorted_at
        self.sort_info.setText(f"{COLUMNS[m.sort_column]} {arrow}, sorted {ago:.0f} s ago")
        self.sort_info.setToolTip(f"Sorted by {COLUMNS[m.sort_column]} {ago:.0f} s ago; rows keep their places while "
                                  "values change until you re-sort (or click a column header)")

    def _on_tick(self) -> None:
        if not self.isVisible():
            return
        m = self.ctx.machines
        due = m.sorted_at is not None and time.monotonic() - m.sorted_at >= AUTO_RESORT_SECONDS
        if self.auto_resort.isChecked() and due and not self.table.viewport().underMouse():
            m.resort()
        self._update_sort_info()

    def set_compact(self, on: bool) -> None:
        """Compact rows (at least 20 visible at 1366×768) and a smaller detail pane."""
        self.table.verticalHeader().setDefaultSectionSize(COMPACT_ROW_HEIGHT if on else ROW_HEIGHT)
        self.detail.set_compact(on)
        if on:
            self._fit_compact()
            QTimer.singleShot(0, self._fit_compact)   # again once a pending window resize has been laid out
        else:
            self.splitter.setSizes([420, 320])
        if bool(self.ctx.settings.get("ui/compact_rows")) != on:
            self.ctx.settings.set("ui/compact_rows", on)

    def _fit_compact(self) -> None:
        """In compact mode the detail keeps only its minimum height; the table takes the rest."""
        if not self.compact.isChecked():
            return
        self.layout().activate()
        total = sum(self.splitter.sizes()) or 740
        detail = self.detail.minimumSizeHint().height()
        self.splitter.setSizes([max(100, total - detail), detail])

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802
        super().resizeEvent(event)
        if self.compact.isChecked():
            QTimer.singleShot(0, self._fit_compact)
        self.toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonIconOnly if event.size().width() < ICON_ONLY_BELOW
                                        else Qt.ToolButtonStyle.ToolButtonTextBesideIcon)

    def visible_rows(self) -> int:
        """Rows fully visible in the table now."""
        return max(0, self.table.viewport().height() // max(1, self.table.verticalHeader().defaultSectionSize()))

    # selection -------------------------------------------------------------------------------------------
    def selected_names(self) -> list[str]:
        """The selected machines, in display order."""
        rows = sorted(self.table.selectionModel().selectedRows(), key=lambda i: i.row())
        return [str(i.data(NAME_ROLE)) for i in rows]

    def selected(self) -> str | None:
        """The one selected machine (None when none or several are selected)."""
        names = self.selected_names()
        return names[0] if len(names) == 1 else None

    def select(self, name: str) -> None:
        for r in range(self.proxy.rowCount()):
            idx = self.proxy.index(r, 0)
            if idx.data(NAME_ROLE) == name:
                self.table.selectRow(r)
                self.table.scrollTo(idx)
                return
        raise KeyError(name)

    def select_names(self, names: list[str]) -> None:
        """Select these machines (those shown), replacing the selection."""
        wanted = set(names)
        sel = QItemSelection()
        for r in range(self.proxy.rowCount()):
            idx = self.proxy.index(r, 0)
            if idx.data(NAME_ROLE) in wanted:
                sel.select(idx, self.proxy.index(r, self.proxy.columnCount() - 1))
        self.table.selectionModel().select(sel, QItemSelectionModel.SelectionFlag.ClearAndSelect
                                           | QItemSelectionModel.SelectionFlag.Rows)

    def _selection_changed(self, _sel: QItemSelection, _desel: QItemSelection) -> None:
        self._sync_detail()

    def _sync_detail(self, *_: object) -> None:
        """The detail shows the one selected machine, or nothing: never a machine filtered out or gone."""
        names = self.selected_names()
        name = names[0] if len(names) == 1 else None
        if name != self.detail.machine:
            self.detail.show_machine(name)
        if len(names) > 1:
            self.detail.title.setText(f"{len(names)} machines selected")
        self.update_actions()

    def _job_finished(self, _job: object) -> None:
        self.update_actions()

    def _rows(self) -> list[MachineRow]:
        return [r for r in (self.ctx.machines.row(n) for n in self.selected_names()) if r is not None]

    def update_actions(self) -> None:
        rows = self._rows()
        running = self.ctx.facade.running
        fac = self.ctx.facade
        protected = [r for r in rows if r.protected]
        drills = [r for r in protected if running and fac.drill_active(r.name)]
        self.acts["protect"].setEnabled(running and any(not r.protected for r in rows))
        self.acts["resync"].setEnabled(running and bool(protected) and fac.can_resync)
        self.acts["resync"].setToolTip("Resync now (Ctrl+R)" if fac.can_resync
                                          else "Resync is not available in this engine build")
        self.acts["failover"].setEnabled(running and len(drills) < len(protected))
        self.acts["cleanup"].setEnabled(running and bool(drills))
        self.acts["refresh"].setEnabled(running)
        n = len(rows)
        for key, text in (("protect", "Enable protection"), ("resync", "Resync now"), ("failover", "Test failover")):
            self.acts[key].setText(f"{text} ({n})" if n > 1 else text)

    # actions (on every selected machine they apply to; one job each) -----------------------------------
    def _open(self, dialog: ProtectDialog | FailoverDialog | BulkDrillDialog | QMessageBox) -> None:
        self.dialog = dialog
        dialog.finished.connect(dialog.deleteLater)
        dialog.finished.connect(lambda _r: setattr(self, "dialog", None))
        dialog.open()

    def protect(self) -> None:
        names = [r.name for r in self._rows() if not r.protected]
        if not names or not self.acts["protect"].isEnabled():
            return
        try:
            policies = self.ctx.facade.policies()
        except Exception as exc:
            self.ctx.notes.handle(exc, "reading policies")
            return
        label = names[0] if len(names) == 1 else f"{len(names)} machines"
        dlg = ProtectDialog(label, policies, "default", self)
        dlg.accepted.connect(lambda: [self.ctx.protect(n, dlg.chosen_policy()) for n in names])
        self._open(dlg)

    def resync(self) -> None:
        if not self.acts["resync"].isEnabled():
            return
        for r in self._rows():
            if r.protected:
                self.ctx.resync(r.name)

    def test_failover(self) -> None:
        if not self.acts["failover"].isEnabled():
            return
        names = [r.name for r in self._rows() if r.protected and not self.ctx.facade.drill_active(r.name)]
        if len(names) > 1:   # one dialog for all: the point and the NBD host or export base folder
            bulk = BulkDrillDialog(names, self)
            bulk.accepted.connect(lambda: self._start_drills(bulk))
            self._open(bulk)
            return
        if not names:
            return
        name = names[0]
        try:
            points = self.ctx.facade.points(name)
        except Exception as exc:
            self.ctx.notes.handle(exc, f"reading points of {name}")
            return
        dlg = FailoverDialog(name, points, self)
        dlg.accepted.connect(lambda: self._start_drill(name, dlg))
        self._open(dlg)

    def _start_drill(self, name: str, dlg: FailoverDialog) -> None:
        point = dlg.point() or "latest"
        self.ctx.test_failover(name, point, **dlg.target())
        self.acts["failover"].setEnabled(False)

    def _start_drills(self, dlg: BulkDrillDialog) -> None:
        for name in dlg.machines:
            self.ctx.test_failover(name, dlg.point(), **dlg.target(name))
        self.acts["failover"].setEnabled(False)

    def cleanup(self) -> None:
        names = [r.name for r in self._rows() if r.protected and self.ctx.facade.drill_active(r.name)]
        if not names or not self.acts["cleanup"].isEnabled():
            return
        if not self.ctx.settings.get("ui/confirm_cleanup"):
            for n in names:
                self.ctx.cleanup(n)
            return
        what = f"the drill of {names[0]}" if len(names) == 1 else f"the drills of {len(names)} machines"
        box = QMessageBox(QMessageBox.Icon.Question, "Clean up drill",
                          f"End {what}? Scratch data and exported images are deleted.",
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel, self)
        yes = box.button(QMessageBox.StandardButton.Yes)
        box.buttonClicked.connect(lambda b: [self.ctx.cleanup(n) for n in names] if b is yes else None)
        self._open(box)

    def current_index(self) -> QModelIndex:
        return self.table.currentIndex()
