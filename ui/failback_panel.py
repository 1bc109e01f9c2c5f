"""The failback stepper (issue 14): a panel for a failed-over machine (the machine page) or a recovery plan whose
machines are failed over (the plans page). Three steps — Reprotect, Fail back, Re-enable protection — each marked
done / running / next / waiting with its prerequisites checked live (✓ / ✗), the bytes compared and sent with ETA
and RPO of the reverse direction, and one button for the next step that asks for a confirmation naming what will
happen. A plan's steps list its machines, each with its own state and numbers (Fail back in the order it runs: the
groups in reverse). The state comes from the engine (console/failback.py), so the panel shows where the operator
left off after a console or appliance restart."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QAbstractItemView, QFrame, QGroupBox, QHBoxLayout, QHeaderView, QLabel, QMessageBox,
                               QPushButton, QSizePolicy, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from console.context import ConsoleContext
from console.failback import STEP_KINDS, TITLES, FailbackModel, MachineRow, PlanFailbackModel, StepperState

from .recovery_dialogs import confirm

MARKS = {"done": "✓ done", "running": "⟳ running", "next": "→ next", "waiting": "· waiting"}
COLOURS = {"done": "#2e7d32", "running": "#1565c0", "next": "#e65100", "waiting": "#757575"}


class StepBox(QGroupBox):
    """One step: its status, its prerequisites and, for a plan, a row per machine."""

    def __init__(self, kind: str, parent: QWidget | None = None, *, rows: bool = False) -> None:
        super().__init__(TITLES[kind], parent)
        self.kind = kind
        self.status = QLabel("")
        self.status.setAccessibleName(f"{kind} status")
        self.prereq = QLabel("")
        self.prereq.setWordWrap(True)
        self.prereq.setMinimumHeight(self.prereq.fontMetrics().lineSpacing() * 4)
        self.table: QTableWidget | None = None
        if not rows:
            lay = QVBoxLayout(self)
            lay.addWidget(self.status)
            lay.addWidget(self.prereq)
        else:   # a plan's step: its status and prerequisites on the left, its machines on the right
            left = QVBoxLayout()
            left.addWidget(self.status)
            left.addWidget(self.prereq)
            left.addStretch(1)
            side = QWidget()
            side.setLayout(left)
            side.setFixedWidth(340)
            lay2 = QHBoxLayout(self)
            lay2.addWidget(side)
            t = self.table = QTableWidget(0, 3)
            t.setHorizontalHeaderLabels(["Machine", "State", "Reverse replication" if kind != "reenable"
                                         else "Protection"])
            t.setAccessibleName(f"Machines of {kind}")
            t.verticalHeader().setVisible(False)
            t.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
            t.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
            t.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            t.setWordWrap(True)
            head = t.horizontalHeader()
            head.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
            head.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
            head.setStretchLastSection(True)
            t.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
            t.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
            lay2.addWidget(t, 1)

    def show_step(self, status: str, prereqs: list[tuple[str, bool]], rows: list[MachineRow] | None = None) -> None:
        self.status.setText(MARKS.get(status, status))
        self.status.setStyleSheet(f"font-weight: bold; color: {COLOURS.get(status, '#000')}")
        self.prereq.setText("\n".join(f"{'✓' if ok else '✗'} {text}" for text, ok in prereqs))
        self.prereq.setVisible(bool(prereqs))
        if self.table is not None:
            self.table.setRowCount(len(rows or ()))
            for r, row in enumerate(rows or ()):
                cells = (f"{row.machine} (group {row.group})", f"{MARKS.get(row.status, row.status)} ({row.state})",
                         row.detail)
                for c, text in enumerate(cells):
                    item = QTableWidgetItem(text)
                    item.setToolTip(text)
                    self.table.setItem(r, c, item)
            self.table.resizeRowsToContents()
            t = self.table   # as tall as its rows: the steps stack without scrolling inside each
            t.setFixedHeight(t.horizontalHeader().sizeHint().height() + sum(t.rowHeight(r) for r in range(t.rowCount()))
                             + 2 * t.frameWidth() + 2)

    def row_texts(self) -> list[tuple[str, str, str]]:
        """The machine rows as shown (for tests and accessibility checks)."""
        t = self.table
        if t is None:
            return []
        def text(r: int, c: int) -> str:
            item = t.item(r, c)
            return item.text() if item is not None else ""
        return [(text(r, 0), text(r, 1), text(r, 2)) for r in range(t.rowCount())]


class StepperPanel(QFrame):
    """The stepper over a model (``FailbackModel`` or ``PlanFailbackModel``): hidden while there is nothing to fail
    back when ``hide_idle``, else showing why."""

    def __init__(self, ctx: ConsoleContext, model: FailbackModel | PlanFailbackModel, parent: QWidget | None = None,
                 *, title: str = "Failback", rows: bool = False, hide_idle: bool = True) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.hide_idle = hide_idle
        self.setFrameShape(QFrame.Shape.StyledPanel)
        # never squeezed below its text (the graph under it gives way)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        self.model = model
        model.setParent(self)
        self.model.changed.connect(self.show_state)
        self.dialog: QMessageBox | None = None
        self.title = QLabel(f"<b>{title}</b>")
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.boxes = {k: StepBox(k, self, rows=rows) for k in STEP_KINDS}
        # one machine: the steps side by side; a plan: stacked, each as wide as its machines' rows need
        row = QVBoxLayout() if rows else QHBoxLayout()
        for k in STEP_KINDS:
            row.addWidget(self.boxes[k])
        self.numbers = QLabel("")
        self.numbers.setAccessibleName("Reverse replication")
        self.numbers.setWordWrap(True)
        self.error = QLabel("")
        self.error.setStyleSheet("color: #b71c1c")
        self.error.setWordWrap(True)
        self.next_btn = QPushButton("")
        self.next_btn.clicked.connect(self.ask_next)
        lay = QVBoxLayout(self)
        lay.addWidget(self.title)
        lay.addWidget(self.summary)
        lay.addLayout(row)
        lay.addWidget(self.numbers)
        lay.addWidget(self.error)
        lay.addWidget(self.next_btn)
        if rows:
            lay.addStretch(1)
        ctx.appliance_started.connect(self.model.refresh)
        ctx.appliance_stopped.connect(self.model.refresh)
        self.show_state(None)

    def show_state(self, st: StepperState | None) -> None:
        if st is None or not st.applicable:   # nothing to fail back: hidden (unless an error), or saying so
            for b in self.boxes.values():
                b.setVisible(False)
            self.summary.setText(st.summary if st else "")
            self.numbers.setText("")
            self.error.setText(st.error if st else "")
            self.next_btn.setVisible(False)
            self.setVisible(not self.hide_idle or (st is not None and bool(st.error)))
            return
        self.setVisible(True)
        self.summary.setText(st.summary)
        for s in st.steps:
            b = self.boxes[s.kind]
            b.setVisible(True)
            b.show_step(s.status, [(p.text, p.ok) for p in s.prerequisites], s.rows)
        self.numbers.setText(st.numbers)
        self.error.setText(st.error)
        ready = st.next_kind is not None and st.step(st.next_kind).ready
        self.next_btn.setVisible(st.next_kind is not None)
        self.next_btn.setText(st.button)
        self.next_btn.setEnabled(ready)

    def ask_next(self) -> None:
        st = self.model.refresh()
        if st is None or st.next_kind is None or not st.step(st.next_kind).ready:
            return
        box = confirm(self, st.confirm_title, st.confirm_text, st.confirm_detail, st.button.replace("&", "")
                      .rstrip("…"), self.model.run_next)
        self.dialog = box
        box.finished.connect(lambda _r: setattr(self, "dialog", None) if self.dialog is box else None)
        box.finished.connect(box.deleteLater)
        box.open()


class FailbackPanel(StepperPanel):
    """The stepper of one failed-over machine (the machine page); hidden for a machine not failed over."""

    model: FailbackModel

    def __init__(self, ctx: ConsoleContext, parent: QWidget | None = None, *, interval_ms: int = 1000) -> None:
        super().__init__(ctx, FailbackModel(ctx.facade, ctx.jobs, ctx.notes, interval_ms=interval_ms), parent)

    def set_machine(self, name: str | None) -> None:
        self.model.set_machine(name)


class PlanFailbackPanel(StepperPanel):
    """The stepper of a recovery plan (the plans page's Fail back tab): every step for the whole plan with a row
    per machine; says so when no machine of the plan is failed over."""

    model: PlanFailbackModel

    def __init__(self, ctx: ConsoleContext, parent: QWidget | None = None, *, interval_ms: int = 1000) -> None:
        super().__init__(ctx, PlanFailbackModel(ctx.facade, ctx.jobs, ctx.notes, interval_ms=interval_ms), parent,
                         title="Fail the plan back", rows=True, hide_idle=False)

    def set_plan(self, name: str | None) -> None:
        self.model.set_plan(name)
