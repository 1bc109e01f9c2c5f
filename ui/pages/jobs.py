"""Jobs and events: running and past jobs (progress, cancel, resume) with the selected job's steps, above the
event log. Engine jobs (drills, cleanups, whatever the CLI started) are rows like the console's own actions."""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QRect, Qt
from PySide6.QtGui import QKeySequence, QPainter
from PySide6.QtWidgets import (QAbstractItemView, QApplication, QHeaderView, QHBoxLayout, QPushButton, QSplitter,
                               QStyle, QStyledItemDelegate, QStyleOptionProgressBar, QStyleOptionViewItem,
                               QTableView, QVBoxLayout, QWidget)

from console.context import ConsoleContext
from console.jobs import JobsModel

from .. import forms, theme


class ProgressDelegate(QStyledItemDelegate):
    """Draws the Progress column as a progress bar (text kept for screen readers via DisplayRole)."""

    def paint(self, painter: QPainter, option: QStyleOptionViewItem,
              index: QModelIndex | QPersistentModelIndex) -> None:
        value = index.data(JobsModel.PROGRESS_ROLE)
        if value is None:
            super().paint(painter, option, index)
            return
        bar = QStyleOptionProgressBar()
        bar.rect = QRect(option.rect.adjusted(3, 4, -3, -4))
        bar.minimum, bar.maximum, bar.progress = 0, 100, int(100 * value)
        bar.text, bar.textVisible = f"{100 * value:.0f}%", True
        QApplication.style().drawControl(QStyle.ControlElement.CE_ProgressBar, bar, painter)


def _table(name: str) -> QTableView:
    t = QTableView()
    t.setAccessibleName(name)
    t.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    t.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    t.setAlternatingRowColors(True)
    t.verticalHeader().setVisible(False)
    t.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
    t.horizontalHeader().setStretchLastSection(True)
    return t


class JobsPage(QWidget):
    def __init__(self, ctx: ConsoleContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.jobs = _table("Jobs")
        self.jobs.setModel(ctx.jobs_model)
        self.jobs.setItemDelegateForColumn(3, ProgressDelegate(self.jobs))
        fm = self.jobs.fontMetrics()   # the widest state ("paused-for-operator") and a time must fit unclipped
        for col, w in enumerate((300, 120, fm.horizontalAdvance("paused-for-operator") + 24, 120, 360)):
            self.jobs.horizontalHeader().resizeSection(col, w)
        self.jobs.horizontalHeader().setMinimumSectionSize(fm.horizontalAdvance("00:00:00") + 24)
        self.steps = _table("Job steps")
        self.steps.setModel(ctx.steps_model)
        self.steps.setItemDelegateForColumn(2, ProgressDelegate(self.steps))
        for col, w in enumerate((280, 130, 100, 80, 80)):
            self.steps.horizontalHeader().resizeSection(col, w)
        self.events = _table("Events")
        self.events.setModel(ctx.log)
        for col, w in enumerate((80, 70, 120, 360)):
            self.events.horizontalHeader().resizeSection(col, w)
        self.cancel_btn = QPushButton(theme.icon("cancel"), "&Cancel job")
        self.cancel_btn.setShortcut(QKeySequence(Qt.Key.Key_Delete))
        self.cancel_btn.clicked.connect(self.cancel_selected)
        self.resume_btn = QPushButton("&Resume job")
        self.resume_btn.setToolTip("Let a job that waits for an operator go on")
        self.resume_btn.clicked.connect(self.resume_selected)
        bar = QHBoxLayout()
        bar.addWidget(forms.title("Jobs", "sectionTitle"))
        bar.addStretch(1)
        bar.addWidget(self.resume_btn)
        bar.addWidget(self.cancel_btn)
        top = QWidget()
        tl = QVBoxLayout(top)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.addLayout(bar)
        inner = QSplitter(Qt.Orientation.Vertical)
        inner.addWidget(self.jobs)
        steps_box = QWidget()
        sl = QVBoxLayout(steps_box)
        sl.setContentsMargins(0, 0, 0, 0)
        sl.addWidget(forms.title("Steps of the selected job", "sectionTitle"))
        sl.addWidget(self.steps)
        inner.addWidget(steps_box)
        tl.addWidget(inner)
        bottom = QWidget()
        bl = QVBoxLayout(bottom)
        bl.setContentsMargins(0, 0, 0, 0)
        bl.addWidget(forms.title("Events", "sectionTitle"))
        bl.addWidget(self.events)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(top)
        split.addWidget(bottom)
        lay = QVBoxLayout(self)
        lay.addWidget(forms.title("Jobs and events"))
        lay.addWidget(split, 1)
        self.jobs.selectionModel().selectionChanged.connect(self._update)
        ctx.jobs.changed.connect(self._update)
        self._update()

    def selected_job(self):  # type: ignore[no-untyped-def]
        rows = self.jobs.selectionModel().selectedRows()
        return self.ctx.jobs_model.job_at(rows[0].row()) if rows else None

    def _update(self, *_: object) -> None:
        job = self.selected_job()
        if job is not self.ctx.steps_model.job:
            self.ctx.steps_model.set_job(job)
        self.cancel_btn.setEnabled(bool(job and job.cancellable))
        self.resume_btn.setEnabled(bool(job and job.resumable))

    def cancel_selected(self) -> None:
        job = self.selected_job()
        if job is not None:
            self.ctx.jobs.cancel(job)

    def resume_selected(self) -> None:
        job = self.selected_job()
        if job is not None:
            self.ctx.jobs.resume(job)
