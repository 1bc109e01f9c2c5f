"""Protected machines: the live table (model/view), the selected machine's detail, and the actions on it."""

from __future__ import annotations

from PySide6.QtCore import QItemSelection, QModelIndex, QSortFilterProxyModel, Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (QAbstractItemView, QHBoxLayout, QHeaderView, QLineEdit, QMessageBox, QSplitter,
                               QTableView, QToolButton, QVBoxLayout, QWidget)

from console.context import ConsoleContext
from console.models import NAME_ROLE, SORT_ROLE

from .. import forms, theme
from ..dialogs import FailoverDialog, ProtectDialog
from .machine_detail import MachineDetail

COLUMN_WIDTHS = (180, 130, 100, 90, 90, 120, 90, 90)


class MachinesPage(QWidget):
    """Table on top, detail below (splitter); actions in a toolbar with keyboard shortcuts."""

    def __init__(self, ctx: ConsoleContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(ctx.machines)
        self.proxy.setSortRole(SORT_ROLE)
        self.proxy.setFilterKeyColumn(0)
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.table = QTableView()
        self.table.setObjectName("machinesTable")
        self.table.setAccessibleName("Protected machines")
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        self.table.verticalHeader().setVisible(False)
        # Fixed row heights and column widths: no per-update measuring of 500 rows (ResizeToContents is O(rows)).
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.table.verticalHeader().setDefaultSectionSize(26)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        for col, w in enumerate(COLUMN_WIDTHS):
            header.resizeSection(col, w)
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter machines (Ctrl+F)")
        self.filter.setAccessibleName("Filter machines")
        self.filter.setClearButtonEnabled(True)
        self.filter.textChanged.connect(self.proxy.setFilterFixedString)
        self.acts: dict[str, QAction] = {}
        bar = QHBoxLayout()
        bar.addWidget(self.filter, 1)
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
            btn = QToolButton()
            btn.setDefaultAction(act)
            btn.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
            bar.addWidget(btn)
            self.acts[key] = act
        find = QAction(self)
        find.setShortcut(QKeySequence.StandardKey.Find)
        find.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        find.triggered.connect(lambda: self.filter.setFocus())
        self.addAction(find)
        self.detail = MachineDetail(ctx)
        top = QWidget()
        tl = QVBoxLayout(top)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.addWidget(forms.title("Protected machines"))
        tl.addLayout(bar)
        tl.addWidget(self.table, 1)
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.addWidget(top)
        self.splitter.addWidget(self.detail)
        self.splitter.setSizes([320, 420])
        lay = QVBoxLayout(self)
        lay.addWidget(self.splitter)
        self.table.selectionModel().selectionChanged.connect(self._selection_changed)
        ctx.inventory_refreshed.connect(self.update_actions)
        ctx.jobs.finished.connect(self._job_finished)
        self.dialog: ProtectDialog | FailoverDialog | QMessageBox | None = None
        self.update_actions()

    # selection -------------------------------------------------------------------------------------------
    def selected(self) -> str | None:
        rows = self.table.selectionModel().selectedRows()
        return str(rows[0].data(NAME_ROLE)) if rows else None

    def select(self, name: str) -> None:
        for r in range(self.proxy.rowCount()):
            idx = self.proxy.index(r, 0)
            if idx.data(NAME_ROLE) == name:
                self.table.selectRow(r)
                self.table.scrollTo(idx)
                return
        raise KeyError(name)

    def _selection_changed(self, _sel: QItemSelection, _desel: QItemSelection) -> None:
        self.detail.show_machine(self.selected())
        self.update_actions()

    def _job_finished(self, _job: object) -> None:
        self.update_actions()

    def update_actions(self) -> None:
        name = self.selected()
        row = self.ctx.machines.row(name) if name else None
        running = self.ctx.facade.running
        protected = bool(row and row.protected)
        drill = bool(name and self.ctx.facade.drill_active(name))
        self.acts["protect"].setEnabled(running and row is not None and not protected)
        self.acts["resync"].setEnabled(running and protected and self.ctx.facade.can_resync)
        self.acts["resync"].setToolTip("Resync now (Ctrl+R)" if self.ctx.facade.can_resync
                                          else "Resync is not available in this engine build")
        self.acts["failover"].setEnabled(running and protected and not drill)
        self.acts["cleanup"].setEnabled(running and drill)
        self.acts["refresh"].setEnabled(running)

    # actions ---------------------------------------------------------------------------------------------
    def _open(self, dialog: ProtectDialog | FailoverDialog | QMessageBox) -> None:
        self.dialog = dialog
        dialog.finished.connect(dialog.deleteLater)
        dialog.finished.connect(lambda _r: setattr(self, "dialog", None))
        dialog.open()

    def protect(self) -> None:
        name = self.selected()
        if not name or not self.acts["protect"].isEnabled():
            return
        try:
            policies = self.ctx.facade.policies()
        except Exception as exc:
            self.ctx.notes.handle(exc, "reading policies")
            return
        dlg = ProtectDialog(name, policies, "default", self)
        dlg.accepted.connect(lambda: self.ctx.protect(name, dlg.chosen_policy()))
        self._open(dlg)

    def resync(self) -> None:
        name = self.selected()
        if name and self.acts["resync"].isEnabled():
            self.ctx.resync(name)

    def test_failover(self) -> None:
        name = self.selected()
        if not name or not self.acts["failover"].isEnabled():
            return
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

    def cleanup(self) -> None:
        name = self.selected()
        if not name or not self.acts["cleanup"].isEnabled():
            return
        if not self.ctx.settings.get("ui/confirm_cleanup"):
            self.ctx.cleanup(name)
            return
        box = QMessageBox(QMessageBox.Icon.Question, "Clean up drill",
                          f"End the drill of {name}? Its scratch data and exported images are deleted.",
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel, self)
        yes = box.button(QMessageBox.StandardButton.Yes)
        box.buttonClicked.connect(lambda b: self.ctx.cleanup(name) if b is yes else None)
        self._open(box)

    def current_index(self) -> QModelIndex:
        return self.table.currentIndex()
