"""Recovery plans (issue 13): build a plan, run it as a test or a real failover, follow the run, finish it.

Build: the plans on the left; for the selected one, the protected machines not in it (drag them onto a group, or
select them and press "Add to group") and its groups in order, each with its machines (failed over in parallel),
its before/after actions (scripts, manual instructions) and buttons to move it up or down, remove machines,
actions or the group. Every refusal of the engine is shown by the field it names (``groups[2].machines`` under
group 2, ``script`` in the action dialog, ``points.web1`` under the point table, ``host`` by the host).

Run: the recovery host, test (isolated network, optional automatic clean-up) or real, the point — latest, latest
app-consistent, or one per machine — and a live view of the run: each group's and machine's step state and the
VM's boot step and progress. A manual action shows its instruction with **Resume**; a failed step its error with
Retry, Skip and Cancel. Then commit (real runs), change a machine's point, cancel, clean up (test runs), and open
the DR report in the browser. A real run and a commit first ask for a confirmation that names the machines, the
host and the point.

Fail back (issue 14): once the plan's machines are failed over for real (committed or not), the failback stepper
of the whole plan (ui/failback_panel.py): reprotect every machine → fail the plan back, its groups in reverse order
→ re-enable protection of every machine, each step with its machines' rows and live prerequisites, and one button
for the next step behind a confirmation naming the machines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QMimeData, Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QDragEnterEvent, QDragMoveEvent, QDropEvent
from PySide6.QtWidgets import (QAbstractItemView, QButtonGroup, QCheckBox, QComboBox, QFrame, QGroupBox, QHBoxLayout,
                               QHeaderView, QLabel, QLineEdit, QListWidget, QListWidgetItem,
                               QProgressBar, QPushButton, QRadioButton, QScrollArea, QSplitter, QTableWidget, QTableWidgetItem,
                               QTabWidget, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget)

from console.context import ConsoleContext
from console.engine_facade import PlanView, parse_duration_text
from console.errors import UserError
from console.recovery import RunState

from .. import forms, theme
from ..failback_panel import PlanFailbackPanel
from ..recovery_dialogs import ActionDialog, PointDialog, confirm, point_combo

MIME = "application/x-lifeboat-machines"
STATE_TEXT = {"pending": "waiting", "running": "running", "paused-for-operator": "waiting for you",
              "succeeded": "done", "failed": "failed", "skipped": "skipped", "cancelled": "cancelled",
              "interrupted": "interrupted"}


def machines_mime(names: list[str]) -> QMimeData:
    data = QMimeData()
    data.setData(MIME, "\n".join(names).encode())
    data.setText(" ".join(names))
    return data


def mime_machines(data: QMimeData) -> list[str]:
    return [n for n in bytes(data.data(MIME).data()).decode().split("\n") if n] if data.hasFormat(MIME) else []


class MachineList(QListWidget):
    """A list of machine names that can be dragged (their names as ``MIME``) and, as a group's list, dropped on:
    ``dropped(names)`` says which machines arrived (the page adds them to the group in the engine)."""

    dropped = Signal(list)

    def __init__(self, name: str, *, accepts: bool) -> None:
        super().__init__()
        self.setAccessibleName(name)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setDragEnabled(True)
        self.setAcceptDrops(accepts)
        self.setDropIndicatorShown(accepts)
        self.setDragDropMode(QAbstractItemView.DragDropMode.DragDrop if accepts
                             else QAbstractItemView.DragDropMode.DragOnly)
        self.setDefaultDropAction(Qt.DropAction.CopyAction)

    def names(self) -> list[str]:
        return [self.item(i).text() for i in range(self.count())]

    def selected_names(self) -> list[str]:
        return [i.text() for i in self.selectedItems()]

    def mimeTypes(self) -> list[str]:  # noqa: N802
        return [MIME]

    def mimeData(self, items: Any) -> QMimeData:  # noqa: N802
        return machines_mime([i.text() for i in items])

    def dragEnterEvent(self, e: QDragEnterEvent) -> None:  # noqa: N802
        if self.acceptDrops() and e.mimeData().hasFormat(MIME) and e.source() is not self:
            e.setDropAction(Qt.DropAction.CopyAction)
            e.accept()
        else:
            e.ignore()

    def dragMoveEvent(self, e: QDragMoveEvent) -> None:  # noqa: N802
        if self.acceptDrops() and e.mimeData().hasFormat(MIME) and e.source() is not self:
            e.setDropAction(Qt.DropAction.CopyAction)
            e.accept()
        else:
            e.ignore()

    def dropEvent(self, e: QDropEvent) -> None:  # noqa: N802
        names = mime_machines(e.mimeData())
        if not self.acceptDrops() or not names or e.source() is self:
            e.ignore()
            return
        e.setDropAction(Qt.DropAction.CopyAction)
        e.accept()
        self.dropped.emit(names)


class GroupBox(QGroupBox):
    """One group of the plan being built."""

    def __init__(self, number: int, page: PlansPage) -> None:
        super().__init__(f"Group {number}")
        self.number = number
        self.setObjectName(f"group{number}")
        self.machines = MachineList(f"Machines of group {number}", accepts=True)
        self.machines.setMaximumHeight(96)
        self.machines.dropped.connect(lambda names: page.add_to_group(self.number, names))
        self.action_list = QListWidget()
        self.action_list.setAccessibleName(f"Actions of group {number}")
        self.action_list.setMaximumHeight(72)
        self.field = forms.Field(self.machines)
        self.up = QPushButton("↑")
        self.up.setToolTip("Move this group up (it fails over earlier)")
        self.down = QPushButton("↓")
        self.down.setToolTip("Move this group down")
        self.remove_machines = QPushButton("Remove machines")
        self.add_action = QPushButton("Add action…")
        self.remove_action = QPushButton("Remove action")
        self.remove_group = QPushButton("Remove group")
        for b in (self.up, self.down):
            b.setFixedWidth(32)
        self.up.clicked.connect(lambda: page.move_group(self.number, self.number - 1))
        self.down.clicked.connect(lambda: page.move_group(self.number, self.number + 1))
        self.remove_machines.clicked.connect(lambda: page.remove_machines(self.machines.selected_names()))
        self.add_action.clicked.connect(lambda: page.open_action_dialog(self.number))
        self.remove_action.clicked.connect(self._remove_action)
        self.remove_group.clicked.connect(lambda: page.remove_group(self.number))
        self.page = page
        left, right = QVBoxLayout(), QVBoxLayout()
        left.addWidget(self.field, 1)
        lb = QHBoxLayout()
        for b in (self.up, self.down, self.remove_machines, self.remove_group):
            lb.addWidget(b)
        lb.addStretch(1)
        left.addLayout(lb)
        right.addWidget(self.action_list, 1)
        rb = QHBoxLayout()
        for b in (self.add_action, self.remove_action):
            rb.addWidget(b)
        rb.addStretch(1)
        right.addLayout(rb)
        lay = QHBoxLayout(self)
        lay.addLayout(left, 1)
        lay.addLayout(right, 1)

    def show_group(self, g: Any, count: int) -> None:
        self.machines.clear()
        for m in g.machines:
            self.machines.addItem(m)
        self.action_list.clear()
        for when in ("before", "after"):
            for k, a in enumerate(getattr(g, when), start=1):
                item = QListWidgetItem(f"{when}: {a.label}")
                item.setToolTip(f"{when} the group: {a.label}")
                item.setData(Qt.ItemDataRole.UserRole, (when, k))
                item.setIcon(theme.icon("jobs" if a.kind == "manual" else "resync"))
                self.action_list.addItem(item)
        self.up.setEnabled(self.number > 1)
        self.down.setEnabled(self.number < count)

    def _remove_action(self) -> None:
        item = self.action_list.currentItem()
        if item is not None:
            when, k = item.data(Qt.ItemDataRole.UserRole)
            self.page.ctx.recovery.remove_action(self.number, when, k)


class PlansPage(QWidget):
    """The plans list, the plan builder (tab "Build") and the run (tab "Run")."""

    def __init__(self, ctx: ConsoleContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.rec = ctx.recovery
        #: Opens the DR report; a test sets its own to see the URL that would open.
        self.open_url: Callable[[QUrl], Any] = QDesktopServices.openUrl
        self.dialog: QWidget | None = None
        self._host_missing: str | None = None

        # plans list ----------------------------------------------------------------------------------------
        self.plan_list = QListWidget()
        self.plan_list.setAccessibleName("Recovery plans")
        self.new_name = QLineEdit()
        self.new_name.setPlaceholderText("New plan name")
        self.new_name.setAccessibleName("New plan name")
        self.new_btn = QPushButton("&New plan")
        self.new_btn.clicked.connect(self.create_plan)
        self.new_name.returnPressed.connect(self.create_plan)
        self.f_name = forms.Field(self.new_name, self.new_btn)
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(self.plan_list, 1)
        ll.addWidget(self.f_name)

        # build tab -----------------------------------------------------------------------------------------
        self.available = MachineList("Protected machines not in the plan", accepts=False)
        self.target_group = QComboBox()
        self.target_group.setAccessibleName("Group to add to")
        self.add_btn = QPushButton("Add to group ▸")
        self.add_btn.clicked.connect(self.add_selected)
        self.valid_label = QLabel()
        self.valid_label.setWordWrap(True)
        self.valid_label.setAccessibleName("Plan validation")
        self.plan_field = forms.Field(self.valid_label)   # errors naming no group ("groups", "group", "machines")
        self.groups_box = QWidget()
        self.groups_layout = QVBoxLayout(self.groups_box)
        self.groups_layout.setContentsMargins(0, 0, 0, 0)
        self.groups_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.groups_box)
        self.group_boxes: list[GroupBox] = []
        avail = QWidget()
        al = QVBoxLayout(avail)
        al.setContentsMargins(0, 0, 0, 0)
        al.addWidget(forms.hint("Protected machines: drag them onto a group, or select them and add them:"))
        al.addWidget(self.available, 1)
        row = QHBoxLayout()
        row.addWidget(self.target_group, 1)
        row.addWidget(self.add_btn)
        al.addLayout(row)
        build = QWidget()
        bl = QHBoxLayout(build)
        avail.setMaximumWidth(220)
        bl.addWidget(avail, 1)
        right = QVBoxLayout()
        right.addWidget(self.plan_field)
        right.addWidget(scroll, 1)
        bl.addLayout(right, 3)

        # run tab -------------------------------------------------------------------------------------------
        self.host = QComboBox()
        self.host.setAccessibleName("Recovery host")
        self.test = QCheckBox("&Test failover: every machine on the host's isolated network, nothing else touched")
        self.test.setChecked(True)
        self.cleanup_after = QLineEdit()
        self.cleanup_after.setPlaceholderText("e.g. 2h (empty: keep until cleaned up)")
        self.cleanup_after.setAccessibleName("Clean up after")
        self.latest = QRadioButton("&Latest point of every machine")
        self.latest_app = QRadioButton("Latest &app-consistent point")
        self.custom = QRadioButton("A point &per machine:")
        self.latest.setChecked(True)
        grp = QButtonGroup(self)
        for b in (self.latest, self.latest_app, self.custom):
            grp.addButton(b)
        self.points_table = QTableWidget(0, 2)
        self.points_table.setHorizontalHeaderLabels(["Machine", "Point"])
        self.points_table.verticalHeader().setVisible(False)
        self.points_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.points_table.setAccessibleName("Point per machine")
        self.points_table.setMaximumHeight(120)
        self.run_fields = {"host": forms.Field(self.host), "cleanup_after": forms.Field(self.cleanup_after),
                           "points": forms.Field(self.points_table), "point": forms.Field(QLabel(""))}
        self.run_btn = QPushButton("Run test failover")
        self.run_btn.setObjectName("primary")
        self.run_btn.clicked.connect(self.run)
        self.test.toggled.connect(self._test_toggled)
        for b in (self.latest, self.latest_app, self.custom):
            b.toggled.connect(lambda _on: self.points_table.setEnabled(self.custom.isChecked()))
        self.points_table.setEnabled(False)
        setup = QGroupBox("Run the plan")
        sf = QVBoxLayout(setup)
        top = QHBoxLayout()
        top.addWidget(QLabel("Host:"))
        top.addWidget(self.run_fields["host"], 1)
        top.addWidget(QLabel("Clean up after:"))
        top.addWidget(self.run_fields["cleanup_after"], 1)
        sf.addLayout(top)
        sf.addWidget(self.test)
        pts = QHBoxLayout()
        for b in (self.latest, self.latest_app, self.custom):
            pts.addWidget(b)
        pts.addStretch(1)
        sf.addLayout(pts)
        sf.addWidget(self.run_fields["points"])
        sf.addWidget(self.run_fields["point"])
        sf.addWidget(self.run_btn, 0, Qt.AlignmentFlag.AlignRight)

        self.run_title = forms.title("No run yet", "sectionTitle")
        self.run_tree = QTreeWidget()
        self.run_tree.setAccessibleName("Run steps")
        self.run_tree.setColumnCount(5)
        self.run_tree.setHeaderLabels(["Step", "State", "Boot", "Point", "Detail"])
        head = self.run_tree.header()
        head.setStretchLastSection(True)
        for col, width in enumerate((330, 110, 240, 90)):
            head.resizeSection(col, width)
        self.prompt = QFrame()
        self.prompt.setObjectName("operatorPrompt")
        self.prompt.setFrameShape(QFrame.Shape.StyledPanel)
        self.prompt_text = QLabel()
        self.prompt_text.setWordWrap(True)
        self.prompt_text.setAccessibleName("Waiting for the operator")
        self.prompt_text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.resume_btn = QPushButton("&Resume")
        self.resume_btn.setObjectName("primary")
        self.retry_btn = QPushButton("Re&try step")
        self.skip_btn = QPushButton("S&kip step")
        self.resume_btn.clicked.connect(self.rec.resume)
        self.retry_btn.clicked.connect(self.rec.resume)
        self.skip_btn.clicked.connect(self.rec.skip)
        pl = QHBoxLayout(self.prompt)
        pl.addWidget(self.prompt_text, 1)
        for pb in (self.resume_btn, self.retry_btn, self.skip_btn):
            pl.addWidget(pb)
        self.prompt.setVisible(False)
        self.commit_btn = QPushButton("&Commit…")
        self.change_btn = QPushButton("C&hange point…")
        self.cancel_btn = QPushButton("Ca&ncel run")
        self.cleanup_btn = QPushButton("C&lean up")
        self.report_btn = QPushButton("Open &report")
        self.commit_btn.clicked.connect(self.commit)
        self.change_btn.clicked.connect(self.change_point)
        self.cancel_btn.clicked.connect(self.cancel)
        self.cleanup_btn.clicked.connect(self.cleanup)
        self.report_btn.clicked.connect(self.open_report)
        ends = QHBoxLayout()
        for pb in (self.commit_btn, self.change_btn, self.cancel_btn, self.cleanup_btn, self.report_btn):
            ends.addWidget(pb)
        ends.addStretch(1)
        runw = QWidget()
        rl = QVBoxLayout(runw)
        rl.addWidget(setup)
        rl.addWidget(self.run_title)
        rl.addWidget(self.prompt)
        rl.addWidget(self.run_tree, 1)
        rl.addLayout(ends)

        self.tabs = QTabWidget()
        self.tabs.addTab(build, "&Build")
        self.tabs.addTab(runw, "R&un")
        # issue 14: the plan's failback stepper (reprotect → fail back, groups in reverse → re-enable)
        self.failback = PlanFailbackPanel(ctx, self)
        fbw = QScrollArea()
        fbw.setWidgetResizable(True)
        fbw.setWidget(self.failback)
        self.tabs.addTab(fbw, "Fa&il back")
        self.empty = forms.hint("Create a recovery plan: name it below the list, then add protected machines to its "
                                "groups. Groups fail over in order; the machines of a group in parallel.")
        body = QWidget()
        bl2 = QVBoxLayout(body)
        bl2.setContentsMargins(0, 0, 0, 0)
        self.plan_title = forms.title("Recovery plans")
        bl2.addWidget(self.plan_title)
        bl2.addWidget(self.empty)
        bl2.addWidget(self.tabs, 1)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(body)
        split.setSizes([190, 1000])
        split.setChildrenCollapsible(False)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(split)

        self.plan_list.currentItemChanged.connect(self._plan_selected)
        self.rec.plans_changed.connect(self._show_plans)
        self.rec.plan_changed.connect(self._show_plan)
        self.rec.run_changed.connect(self._show_run)
        self.rec.field_error.connect(self._field_error)
        ctx.inventory_refreshed.connect(self._refresh_available)
        ctx.appliance_started.connect(self._refresh_hosts)
        self._show_plans()
        self._show_plan(None)
        self._refresh_hosts()
        self._test_toggled(True)

    # plans -----------------------------------------------------------------------------------------------
    def _show_plans(self) -> None:
        current = self.rec.plan.name if self.rec.plan else None
        self.plan_list.blockSignals(True)
        self.plan_list.clear()
        for p in self.rec.plans:
            last = p.last_run
            item = QListWidgetItem(f"{p.name} — {p.groups} group(s), {p.machines} machine(s)"
                                   + (f"; last run {last.state}" if last else ""))
            item.setData(Qt.ItemDataRole.UserRole, p.name)
            self.plan_list.addItem(item)
            if p.name == current:
                self.plan_list.setCurrentItem(item)
        self.plan_list.blockSignals(False)

    def _plan_selected(self, item: QListWidgetItem | None, _prev: QListWidgetItem | None = None) -> None:
        self.rec.select(str(item.data(Qt.ItemDataRole.UserRole)) if item is not None else None)

    def select_plan(self, name: str) -> None:
        for i in range(self.plan_list.count()):
            if self.plan_list.item(i).data(Qt.ItemDataRole.UserRole) == name:
                self.plan_list.setCurrentRow(i)
                return
        raise KeyError(name)

    def create_plan(self) -> None:
        name = self.new_name.text().strip()
        self.f_name.set_message(None)
        try:
            view = self.ctx.facade.create_plan(name)
        except UserError as exc:
            self.f_name.set_message(f"{exc.code}: {exc.message}")
            return
        except Exception as exc:
            self.ctx.notes.handle(exc, "create a recovery plan")
            return
        self.new_name.clear()
        self.rec.refresh_plans()
        self.select_plan(view.name)

    # the builder -----------------------------------------------------------------------------------------
    def _show_plan(self, plan: PlanView | None) -> None:
        self.tabs.setVisible(plan is not None)
        self.empty.setVisible(plan is None)
        self.plan_title.setText(f"Recovery plan {plan.name}" if plan else "Recovery plans")
        if (plan.name if plan else None) != self.failback.model.plan:
            self.failback.set_plan(plan.name if plan else None)
        while self.group_boxes:
            box = self.group_boxes.pop()
            self.groups_layout.removeWidget(box)
            box.hide()
            box.setParent(None)  # type: ignore[call-overload]
            box.deleteLater()
        if plan is None:
            return
        n = len(plan.groups)
        for i, g in enumerate(plan.groups, start=1):
            box = GroupBox(i, self)
            box.show_group(g, n)
            self.groups_layout.insertWidget(i - 1, box)
            box.show()   # now, not at the next turn of the loop: its messages are shown by what follows
            self.group_boxes.append(box)
        self.target_group.clear()
        for i in range(1, n + 1):
            self.target_group.addItem(f"Group {i}", i)
        self.target_group.addItem(f"New group {n + 1}", n + 1)
        self.plan_field.set_message(None)
        if plan.valid:
            self.valid_label.setText(f"Ready to run: {len(plan.machines)} machine(s) in {n} group(s).")
        else:
            p = plan.problem or {}
            self.valid_label.setText("Not runnable yet.")
            self._field_error(plan.problem_field or "groups", f"{p.get('code', '')}: {p.get('message', '')}"
                              + (f" — {p.get('advice')}" if p.get("advice") else ""))
        self._refresh_available()
        self._fill_points(plan)

    def group_box(self, n: int) -> GroupBox:
        return self.group_boxes[n - 1]

    def _refresh_available(self) -> None:
        plan = self.rec.plan
        in_plan = set(plan.machines) if plan else set()
        names = sorted(r.name for r in self.ctx.machines.rows() if r.protected and r.name not in in_plan)
        if names != self.available.names():
            self.available.clear()
            for n in names:
                self.available.addItem(n)

    def add_selected(self) -> None:
        names = self.available.selected_names()
        if names:
            self.add_to_group(int(self.target_group.currentData() or 1), names)

    def add_to_group(self, group: int, names: list[str]) -> None:
        self.rec.add_machines(group, names)

    def remove_machines(self, names: list[str]) -> None:
        if names:
            self.rec.remove_machines(names)

    def move_group(self, group: int, to: int) -> None:
        self.rec.move_group(group, to)

    def remove_group(self, group: int) -> None:
        self.rec.remove_group(group)

    def open_action_dialog(self, group: int) -> ActionDialog:
        dlg = ActionDialog(group, self)

        def submit(d: ActionDialog, values: dict[str, Any]) -> tuple[str, str] | None:
            errors: list[tuple[str, str]] = []

            def keep(field: str, text: str) -> None:
                if field:
                    errors.append((field, text))
            self.rec.field_error.connect(keep)
            try:
                view = self.rec.add_action(group, d.when, **values)
            finally:
                self.rec.field_error.disconnect(keep)
            if view is not None:
                return None
            return errors[-1] if errors else ("action", "the engine refused the action (see the notification)")
        dlg.submit = submit
        self._open(dlg)
        return dlg

    def _field_error(self, field: str, text: str) -> None:
        """Show an engine refusal by the field it names; ("", "") clears every message."""
        if not field:
            for box in self.group_boxes:
                box.field.set_message(None)
            self.plan_field.set_message(None)
            for f in self.run_fields.values():
                f.set_message(None)
            self.run_fields["host"].set_message(self._host_missing)   # a state, not a refusal: it stays
            return
        if field.startswith("groups[") and field.endswith("].machines"):
            try:
                n = int(field[len("groups["):-len("].machines")])
            except ValueError:
                n = 0
            if 1 <= n <= len(self.group_boxes):
                self.group_boxes[n - 1].field.set_message(text)
                return
        if field.startswith("points"):
            self.run_fields["points"].set_message(text)
            return
        if field in self.run_fields:
            self.run_fields[field].set_message(text)
            return
        self.plan_field.set_message(text)

    # the run ---------------------------------------------------------------------------------------------
    def _refresh_hosts(self) -> None:
        try:
            hosts = self.ctx.facade.recovery_hosts()
        except Exception as exc:
            self.ctx.notes.handle(exc, "listing the recovery hosts")
            return
        have = [self.host.itemData(i) for i in range(self.host.count())]
        if have != [h.name for h in hosts]:
            self.host.clear()
            for h in hosts:
                iso = ", ".join(h.isolated_networks) or "none"
                self.host.addItem(f"{h.name} ({h.uri}; isolated: {iso})", h.name)
        self._host_missing = None if hosts else ("No recovery host is registered yet (lifeboat host add --home DIR "
                                                 "NAME --kind qemu --network NAME=isolated).")
        self.run_fields["host"].set_message(self._host_missing)

    def showEvent(self, event: Any) -> None:  # noqa: N802
        super().showEvent(event)
        self._refresh_hosts()

    def _test_toggled(self, on: bool) -> None:
        self.cleanup_after.setEnabled(on)
        self.run_btn.setText("Run &test failover" if on else "Run &failover…")

    def _fill_points(self, plan: PlanView) -> None:
        """One point choice per machine of the plan; a choice made already is kept across plan reloads."""
        before = {self.points_table.item(r, 0).text(): self.points_table.cellWidget(r, 1).currentData()  # type: ignore[union-attr]
                  for r in range(self.points_table.rowCount()) if self.points_table.cellWidget(r, 1) is not None}
        self.points_table.setRowCount(0)
        for r, m in enumerate(plan.machines):
            self.points_table.insertRow(r)
            self.points_table.setItem(r, 0, QTableWidgetItem(m))
            try:
                pts = self.ctx.facade.points(m)
            except Exception:   # an unprotected machine has none: its row offers latest only
                pts = []
            combo = point_combo(pts, f"Point of {m}")
            if m in before:
                combo.setCurrentIndex(max(0, combo.findData(before[m])))
            self.points_table.setCellWidget(r, 1, combo)

    def point_combo_of(self, machine: str) -> QComboBox:
        for r in range(self.points_table.rowCount()):
            if self.points_table.item(r, 0).text() == machine:
                w = self.points_table.cellWidget(r, 1)
                assert isinstance(w, QComboBox)
                return w
        raise KeyError(machine)

    def run_choice(self) -> dict[str, Any]:
        """The run as chosen: host, test, point, points (custom), cleanup_after (seconds or None)."""
        out: dict[str, Any] = {"host": str(self.host.currentData() or ""), "test": self.test.isChecked(),
                               "point": "latest-app" if self.latest_app.isChecked() else "latest", "points": None,
                               "cleanup_after": None}
        if self.custom.isChecked():
            out["points"] = {self.points_table.item(r, 0).text(): str(self.points_table.cellWidget(r, 1)
                                                                      .currentData())  # type: ignore[union-attr]
                             for r in range(self.points_table.rowCount())}
        if self.test.isChecked() and self.cleanup_after.text().strip():
            out["cleanup_after"] = parse_duration_text(self.cleanup_after.text(), "clean-up time")
        return out

    def _point_text(self, c: dict[str, Any]) -> str:
        if c["points"]:
            return "; ".join(f"{m}: {p}" for m, p in c["points"].items())
        return "the latest app-consistent point" if c["point"] == "latest-app" else "the latest point"

    def run(self) -> None:
        plan = self.rec.plan
        if plan is None:
            return
        self._field_error("", "")
        try:
            c = self.run_choice()
        except UserError as exc:
            self.run_fields["cleanup_after"].set_message(f"{exc.code}: {exc.message}")
            return
        if not c["host"]:
            self.run_fields["host"].set_message("Choose a recovery host.")
            return
        if c["test"]:
            self.rec.run_plan(c["host"], test=True, point=c["point"], points=c["points"],
                              cleanup_after=c["cleanup_after"])
            return
        box = confirm(self, "Run a real failover",
                      f"Fail over {len(plan.machines)} machine(s) of plan {plan.name} for real on {c['host']}?",
                      f"Machines: {', '.join(plan.machines)}.\nPoint: {self._point_text(c)}.\nTheir replication "
                      "stops and the recovered VMs join the host's real networks.", "Fail over",
                      lambda: self.rec.run_plan(c["host"], test=False, point=c["point"], points=c["points"]))
        self._open(box)

    def _show_run(self, rs: RunState | None) -> None:
        self.run_tree.clear()
        self.prompt.setVisible(False)
        real_done = rs is not None and rs.finished and not rs.test and rs.run is not None and not rs.run.cleaned_at
        for b in (self.commit_btn, self.change_btn, self.cancel_btn, self.cleanup_btn, self.report_btn):
            b.setEnabled(False)
        if rs is None or rs.run is None:
            self.run_title.setText("No run yet")
            self.run_btn.setEnabled(self.rec.plan is not None)
            return
        run = rs.run
        kind = "Test run" if rs.test else "Run"
        self.run_title.setText(f"{kind} {run.id} on {rs.host}: {STATE_TEXT.get(rs.state, rs.state)}"
                               + (f" ({100 * rs.progress:.0f}%)" if rs.active else "")
                               + (", cleaned up" if run.cleaned_at else ""))
        for g in rs.groups:
            gi = QTreeWidgetItem([f"Group {g.number}", STATE_TEXT.get(g.state, g.state), "", "", ""])
            self.run_tree.addTopLevelItem(gi)
            for st in g.steps:
                what = (f"{st.machine}" if st.kind == "machine" else f"{st.kind} action {st.index}: {st.title}")
                err = st.error or rs.stopped.get(st.name)
                detail = (f"{err.get('code', '')}: {err.get('message', '')}" if err else st.message)
                child = QTreeWidgetItem([what, STATE_TEXT.get(st.state, st.state), "", st.point or "", detail])
                child.setData(0, Qt.ItemDataRole.UserRole, st.machine)
                gi.addChild(child)
                if st.kind == "machine":
                    bar = QProgressBar()
                    bar.setRange(0, 100)
                    bar.setValue(int(100 * st.boot_progress))
                    if st.state == "succeeded":
                        bar.setFormat(f"booted in {st.boot_seconds:.1f} s" if st.boot_seconds else "booted")
                    else:
                        bar.setFormat(f"{st.boot_step or 'waiting'} %p%")
                    bar.setToolTip(st.boot_step)
                    bar.setAccessibleName(f"Boot of {st.machine}")
                    self.run_tree.setItemWidget(child, 2, bar)
            gi.setExpanded(True)
        if rs.state == "paused-for-operator":
            self.prompt.setVisible(True)
            if rs.stopped:
                lines = [f"Stopped at {name}: {e.get('code', '')}: {e.get('message', '')}\nWhat to do: "
                         f"{e.get('advice', '')}" for name, e in rs.stopped.items()]
                self.prompt_text.setText("\n".join(lines) + "\nRetry the step, skip it, or cancel the run.")
            else:
                self.prompt_text.setText(f"Waiting for you: {rs.prompt}\nWhen it is done, press Resume.")
            self.resume_btn.setVisible(not rs.stopped)
            self.retry_btn.setVisible(bool(rs.stopped))
            self.skip_btn.setVisible(bool(rs.stopped))
        if rs.finished and rs.error:
            self.run_title.setText(self.run_title.text() + f" — {rs.error.get('code', '')}: "
                                   f"{rs.error.get('message', '')}")
        booted = any(s.state == "succeeded" for g in rs.groups for s in g.machines)
        self.commit_btn.setEnabled(real_done and booted)
        self.change_btn.setEnabled(rs.finished and not run.cleaned_at and booted)
        self.cancel_btn.setEnabled(rs.active or (rs.finished and not run.cleaned_at and bool(run.machines)))
        self.cleanup_btn.setEnabled(rs.test and rs.finished and not run.cleaned_at)
        self.report_btn.setEnabled(bool(run.report))
        self.run_btn.setEnabled(not rs.active)

    def selected_run_machine(self) -> str | None:
        item = self.run_tree.currentItem()
        return item.data(0, Qt.ItemDataRole.UserRole) if item is not None else None

    def commit(self) -> None:
        rs, plan = self.rec.run, self.rec.plan
        if rs is None or plan is None or rs.run is None:
            return
        machines = [s.machine for g in rs.groups for s in g.machines if s.state == "succeeded" and s.machine]
        pts = ", ".join(f"{s.machine} at {s.point}" for g in rs.groups for s in g.machines if s.state == "succeeded")
        box = confirm(self, "Commit the failover", f"Keep the {len(machines)} recovered machine(s) of plan "
                      f"{plan.name} on {rs.host}?", f"Machines and points: {pts}.\nTheir disks are copied into "
                      "standalone images on the recovery host; no other point can be chosen afterwards.", "Commit",
                      self.rec.commit)
        self._open(box)

    def change_point(self) -> None:
        rs = self.rec.run
        machine = self.selected_run_machine()
        if rs is None or not machine:
            self.ctx.notes.info("Select a recovered machine in the run first.")
            return
        try:
            points = self.ctx.facade.points(machine)
        except Exception as exc:
            self.ctx.notes.handle(exc, f"reading points of {machine}")
            return
        st = rs.machine(machine)
        dlg = PointDialog(machine, points, st.point or "" if st else "", self)
        dlg.accepted.connect(lambda: self._change_point(machine, dlg.point()))
        self._open(dlg)

    def _change_point(self, machine: str, point: str | None) -> None:
        if point:
            self.ctx.recovery.change_point(machine, point)

    def cancel(self) -> None:
        plan = self.rec.plan
        if plan is None:
            return
        box = confirm(self, "Cancel the run", f"Cancel the last run of plan {plan.name}?",
                      "Its recovered VMs are stopped and removed; the machines are protected again.", "Cancel run",
                      self.rec.cancel)
        self._open(box)

    def cleanup(self) -> None:
        self.rec.cleanup()

    def report_url(self) -> QUrl | None:
        path = self.rec.report_url_path()
        return QUrl.fromLocalFile(str(Path(path))) if path else None

    def open_report(self) -> None:
        url = self.report_url()
        if url is not None:
            self.open_url(url)

    def _open(self, dlg: QWidget) -> None:
        self.dialog = dlg
        dlg.finished.connect(dlg.deleteLater)  # type: ignore[attr-defined]
        # a dialog that opens the next one (failover → confirmation) must not clear it when it closes
        dlg.finished.connect(lambda _r: setattr(self, "dialog", None) if self.dialog is dlg else None)  # type: ignore[attr-defined]
        dlg.open()  # type: ignore[attr-defined]

