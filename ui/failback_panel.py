"""The failback stepper (issue 14): a panel of the machine page for a failed-over machine. Three steps — Reprotect,
Fail back, Re-enable protection — each marked done / running / next / waiting with its prerequisites checked live
(✓ / ✗), the bytes compared and sent with ETA and RPO of the reverse direction, and one button for the next step
that asks for a confirmation naming what will happen. The state comes from the engine (console/failback.py), so the
panel shows where the operator left off after a console or appliance restart."""

from __future__ import annotations

from PySide6.QtWidgets import (QFrame, QGroupBox, QHBoxLayout, QLabel, QMessageBox, QPushButton, QSizePolicy,
                               QVBoxLayout, QWidget)

from console.context import ConsoleContext
from console.failback import STEP_KINDS, TITLES, FailbackModel, StepperState

from .recovery_dialogs import confirm

MARKS = {"done": "✓ done", "running": "⟳ running", "next": "→ next", "waiting": "· waiting"}
COLOURS = {"done": "#2e7d32", "running": "#1565c0", "next": "#e65100", "waiting": "#757575"}


class StepBox(QGroupBox):
    def __init__(self, kind: str, parent: QWidget | None = None) -> None:
        super().__init__(TITLES[kind], parent)
        self.kind = kind
        self.status = QLabel("")
        self.status.setAccessibleName(f"{kind} status")
        self.prereq = QLabel("")
        self.prereq.setWordWrap(True)
        self.prereq.setMinimumHeight(self.prereq.fontMetrics().lineSpacing() * 4)
        lay = QVBoxLayout(self)
        lay.addWidget(self.status)
        lay.addWidget(self.prereq)

    def show_step(self, status: str, prereqs: list[tuple[str, bool]]) -> None:
        self.status.setText(MARKS.get(status, status))
        self.status.setStyleSheet(f"font-weight: bold; color: {COLOURS.get(status, '#000')}")
        self.prereq.setText("\n".join(f"{'✓' if ok else '✗'} {text}" for text, ok in prereqs))
        self.prereq.setVisible(bool(prereqs))


class FailbackPanel(QFrame):
    def __init__(self, ctx: ConsoleContext, parent: QWidget | None = None, *, interval_ms: int = 1000) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.setFrameShape(QFrame.Shape.StyledPanel)
        # never squeezed below its text (the graph under it gives way)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        self.model = FailbackModel(ctx.facade, ctx.jobs, ctx.notes, self, interval_ms=interval_ms)
        self.model.changed.connect(self.show_state)
        self.dialog: QMessageBox | None = None
        self.title = QLabel("<b>Failback</b>")
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.boxes = {k: StepBox(k, self) for k in STEP_KINDS}
        row = QHBoxLayout()
        for k in STEP_KINDS:
            row.addWidget(self.boxes[k])
        self.numbers = QLabel("")
        self.numbers.setAccessibleName("Reverse replication")
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
        ctx.appliance_started.connect(self.model.refresh)
        ctx.appliance_stopped.connect(self.model.refresh)
        self.show_state(None)

    def set_machine(self, name: str | None) -> None:
        self.model.set_machine(name)

    def show_state(self, st: StepperState | None) -> None:
        if st is None or not st.applicable:   # not failed over: nothing to show (unless an error)
            for b in self.boxes.values():
                b.setVisible(False)
            self.summary.setText(st.summary if st else "")
            self.numbers.setText("")
            self.error.setText(st.error if st else "")
            self.next_btn.setVisible(False)
            self.setVisible(st is not None and bool(st.error))
            return
        self.setVisible(True)
        self.summary.setText(st.summary)
        for s in st.steps:
            b = self.boxes[s.kind]
            b.setVisible(True)
            b.show_step(s.status, [(p.text, p.ok) for p in s.prerequisites])
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
