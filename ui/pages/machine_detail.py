"""The selected machine: health in words and why, live RPO graph, disks and drill state (with its NBD address).

Nothing shown belongs to another machine: selecting a machine clears every field before it is filled from that
machine's own status. During the initial sync the state says how far it is and when it should end, and the RPO
reads "—" until the first recovery point exists (the engine's ``rpo_known``)."""

from __future__ import annotations

import time

import numpy as np
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (QAbstractItemView, QFormLayout, QGridLayout, QHBoxLayout, QHeaderView, QLabel,
                               QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from console.bridge import MachineStatus, PointCreated
from console.context import ConsoleContext
from console.models import format_seconds, format_time

from .. import forms, theme
from ..empty_state import AgentGuide
from ..recovery_dialogs import MachineFailoverDialog, PointDialog, confirm
from ..failback_panel import FailbackPanel
from ..rpo_graph import WINDOW_SECONDS, RpoGraph


def _size(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


class MachineDetail(QWidget):
    """Follows one machine: header labels and graph from live statuses, disks from the periodic inventory."""

    def __init__(self, ctx: ConsoleContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.machine: str | None = None
        self.title = forms.title("No machine selected", "sectionTitle")
        self.health_icon = QLabel()
        self.health = QLabel()
        self.health.setAccessibleName("Health")
        self.reason = QLabel()
        self.reason.setObjectName("hint")
        self.reason.setAccessibleName("Health reason")
        self.reason.setWordWrap(True)
        self.status: MachineStatus | None = None   # the newest status event of the machine shown
        self.facts: dict[str, QLabel] = {}
        grid = QGridLayout()
        for i, key in enumerate(("State", "RPO", "Policy", "Last point", "Points", "Agent", "Drill", "Resync")):
            lab = QLabel("—")
            lab.setAccessibleName(key)
            lab.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)  # addresses to copy
            self.facts[key] = lab
            grid.addWidget(QLabel(f"{key}:"), i // 4, (i % 4) * 2)
            grid.addWidget(lab, i // 4, (i % 4) * 2 + 1)
        head = QHBoxLayout()
        head.addWidget(self.title)
        head.addWidget(self.health_icon)
        head.addWidget(self.health)
        head.addWidget(self.reason, 1)
        # failover to a recovery host (issue 13): state, and the actions on this machine
        self.failover_label = QLabel("—")
        self.failover_label.setAccessibleName("Failover")
        self.failover_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.fo_buttons: dict[str, QPushButton] = {}
        fo_row = QHBoxLayout()
        fo_row.addWidget(QLabel("Failover:"))
        fo_row.addWidget(self.failover_label, 1)
        for key, text, slot in (("failover", "Fail o&ver…", self.failover), ("change", "Change &point…",
                                                                             self.change_point),
                                ("commit", "Co&mmit…", self.commit), ("cancel", "Cancel fail&over…", self.cancel)):
            b = QPushButton(text)
            b.setAccessibleName(text.replace("&", "").rstrip("…"))
            b.clicked.connect(slot)
            b.setEnabled(False)
            self.fo_buttons[key] = b
            fo_row.addWidget(b)
        self.dialog: QWidget | None = None
        self.graph = RpoGraph()
        self.disks = QTableWidget(0, 4)
        self.disks.setHorizontalHeaderLabels(["Disk", "Size", "Initial sync", "Synced"])
        self.disks.verticalHeader().setVisible(False)
        self.disks.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.disks.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.disks.setMaximumHeight(130)
        self.disks.setAccessibleName("Disks")
        self.body = QWidget()
        lay = QVBoxLayout(self.body)
        lay.setContentsMargins(0, 6, 0, 0)
        lay.addLayout(head)
        lay.addLayout(grid)
        lay.addLayout(fo_row)
        self.failback = FailbackPanel(ctx, self)   # issue 14: the failback stepper of a failed-over machine
        lay.addWidget(self.failback)
        lay.addWidget(self.graph, 1)
        form = QFormLayout()
        self.disks_label = QLabel("Disks:")
        form.addRow(self.disks_label, self.disks)
        lay.addLayout(form)
        self.guide = AgentGuide()
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.body, 1)
        outer.addWidget(self.guide, 1)
        self._show_guide()
        self._redraw = QTimer(self)
        self._redraw.setSingleShot(True)
        self._redraw.setInterval(1000)  # the graph redraws at most once a second
        self._redraw.timeout.connect(self.redraw_graph)
        ctx.bridge.statuses.connect(self._keep_status)
        ctx.statuses_applied.connect(self._on_statuses)
        ctx.inventory_refreshed.connect(self.refresh_details)
        ctx.inventory_refreshed.connect(self._show_guide)
        ctx.appliance_started.connect(self._show_guide)
        ctx.bridge.point_created.connect(self._on_point)
        ctx.histories_loaded.connect(self._on_histories)
        ctx.recovery.vms_changed.connect(self.refresh_failover)
        ctx.jobs.finished.connect(lambda _j: self.refresh_failover())

    def set_compact(self, on: bool) -> None:
        """A smaller graph and no disk table, so the machines table gets the room."""
        self.graph.setMinimumHeight(90 if on else 180)
        self.disks.setVisible(not on)
        self.disks_label.setVisible(not on)

    def show_machine(self, name: str | None) -> None:
        self.failback.set_machine(name)
        if name != self.machine:   # nothing of the previous selection may stay on screen
            self.status = None
            for lab in self.facts.values():
                lab.setText("—")
            self.reason.setText("")
            self.disks.setRowCount(0)
        self.machine = name
        self.title.setText(name or "No machine selected")
        if name is None:
            self.health_icon.clear()
            self.health.setText("")
        points = []
        threshold = 30.0
        if name and self.ctx.facade.running:
            self.ctx.load_history(name)   # the appliance's kept history first (a restarted console draws the past)
            try:
                threshold = self.ctx.facade.machine_status(name).rpo_threshold
                points = self.ctx.facade.points(name)
            except Exception as exc:
                self.ctx.notes.handle(exc, f"reading {name}")
        self.graph.show_machine(name, threshold, points)
        self._show_guide()
        self.refresh_details()
        self.redraw_graph()

    def _show_guide(self) -> None:
        """With no machine at all, the detail area explains how to register the first one."""
        empty = self.machine is None and self.ctx.machines.rowCount() == 0
        if empty:
            self.guide.set_control_address(self.ctx.facade.addresses.get("control", ""))
        self.guide.setVisible(empty)
        self.body.setVisible(not empty)

    def _keep_status(self, batch: list[MachineStatus]) -> None:
        # The table model applies the batch first (it is connected earlier), so the header is redone here.
        for ev in batch:
            if ev.machine == self.machine:
                self.status = ev
                self._update_header()

    def _on_statuses(self, names: set[str]) -> None:
        if self.machine in names:
            self._update_header()
            if not self._redraw.isActive():
                self._redraw.start()

    def _on_histories(self, names: set[str]) -> None:
        if self.machine in names:   # the appliance's kept history arrived: the graph shows the past too
            self.redraw_graph()

    def _on_point(self, ev: PointCreated) -> None:
        if ev.machine == self.machine:
            self.graph.add_point(ev.time, ev.kind)
            self.facts["Last point"].setText(f"{format_time(ev.time)} ({ev.kind}{', ' + ev.tag if ev.tag else ''})")

    def redraw_graph(self) -> None:
        if self.machine is None:
            self.graph.set_series(np.zeros(0), np.zeros(0, dtype=np.float32))
            return
        t, rpo = self.ctx.history.series(self.machine, since=time.time() - WINDOW_SECONDS)
        self.graph.set_series(t, rpo)

    def _update_header(self) -> None:
        row = self.ctx.machines.row(self.machine or "")
        if row is None:
            return
        health = row.health if row.protected else ""
        ev = self.status
        rpo_known = row.protected and (ev is None or ev.rpo_known) and row.state != "initial-sync"
        self.health_icon.setPixmap(theme.health_icons()[health].pixmap(16, 16))
        theme.set_health(self.health, health)
        self.reason.setText(ev.health_reason if ev is not None and health not in ("", "ok") else "")
        state = row.state_text
        if row.state == "initial-sync" and ev is not None and ev.sync_eta_seconds is not None:
            state += f", about {format_seconds(ev.sync_eta_seconds)} left"
        self.facts["State"].setText(state)
        self.facts["RPO"].setText(format_seconds(row.rpo) if rpo_known else "—")
        self.facts["Resync"].setText(row.resync_text)
        if row.last_point_time and not self.facts["Last point"].text().startswith(format_time(row.last_point_time)):
            self.facts["Last point"].setText(format_time(row.last_point_time))
        if self.ctx.machines.stale and row.protected:   # the link is lost: nothing here is current
            self.health_icon.clear()
            theme.set_health(self.health, "", "Unknown (lost the appliance)")
            self.facts["RPO"].setText(f"? (was {self.facts['RPO'].text()})")

    def refresh_details(self) -> None:
        """Policy, agent, points, drill and disks (from ``machine_status``; every inventory refresh)."""
        name = self.machine
        self._update_header()
        if not name or not self.ctx.facade.running or not self.ctx.link_up:
            if not self.ctx.facade.running:
                self.disks.setRowCount(0)
            return
        try:
            st = self.ctx.facade.machine_status(name)
        except Exception as exc:
            self.ctx.notes.handle(exc, f"reading {name}")
            return
        self.facts["Policy"].setText(f"{st.policy} (threshold {format_seconds(st.rpo_threshold)})")
        self.graph.set_threshold(st.rpo_threshold)
        self.facts["Agent"].setText("connected" if st.agent_connected else "not connected")
        self.facts["Points"].setText(str(st.points))
        lp = st.last_point
        self.facts["Last point"].setText(f"{format_time(lp.time)} ({lp.kind}{', ' + lp.tag if lp.tag else ''})"
                                         if lp else "none yet")
        self.facts["Drill"].setText(self.drill_text(name))
        self.refresh_failover()
        self.disks.setRowCount(len(st.disks))
        for r, d in enumerate(st.disks):   # the same fraction the state's % is made of (synced disks are 100 %)
            pct = 100.0 * d.sync_fraction
            for c, text in enumerate((d.name, _size(d.size), f"{pct:.0f}%", "yes" if d.synced else "no")):
                self.disks.setItem(r, c, QTableWidgetItem(text))

    def drill_text(self, name: str) -> str:
        """'none', or the running drill and where it is served (the NBD address clients connect to)."""
        if not self.ctx.facade.drill_active(name):
            return "none"
        for job in reversed(self.ctx.jobs.jobs):
            drill = job.result
            if job.kind == "test-failover" and job.machine == name and drill is not None:
                if getattr(drill, "nbd", None):
                    exports = ", ".join(drill.exports)
                    return f"running, NBD {drill.nbd}" + (f" ({exports})" if exports else "")
                if getattr(drill, "export_dir", None):
                    return f"running, exported to {drill.export_dir}"
                break
        return "running"

    # failover of this machine (issue 13) -----------------------------------------------------------------
    def failover_info(self) -> dict | None:  # type: ignore[type-arg]
        name = self.machine
        if not name or not self.ctx.facade.running or not self.ctx.facade.has_recovery:
            return None
        try:
            return self.ctx.facade.failover_state(name)
        except Exception as exc:
            self.ctx.notes.handle(exc, f"reading the failover of {name}")
            return None

    def refresh_failover(self) -> None:
        """The failover line and which of Failover / Change point / Commit / Cancel apply now."""
        info = self.failover_info()
        row = self.ctx.machines.row(self.machine or "")
        busy = any(not j.done and j.machine == self.machine and j.kind.startswith("failover")
                   for j in self.ctx.jobs.jobs)
        state = info["state"] if info else None
        if info is None:
            self.failover_label.setText("—" if not self.machine else "not failed over")
        else:
            self.failover_label.setText(f"{state} on {info['host']}, point {info['point']}")
        running = bool(self.machine) and self.ctx.facade.running and self.ctx.facade.has_recovery and not busy
        self.fo_buttons["failover"].setEnabled(running and info is None and row is not None and row.protected)
        self.fo_buttons["change"].setEnabled(running and state in ("booted", "failed"))
        self.fo_buttons["commit"].setEnabled(running and state == "booted")
        self.fo_buttons["cancel"].setEnabled(running and state is not None and state not in ("committing",
                                                                                              "committed"))

    def _open(self, dlg: QWidget) -> None:
        self.dialog = dlg
        dlg.finished.connect(dlg.deleteLater)  # type: ignore[attr-defined]
        # a dialog that opens the next one (failover → confirmation) must not clear it when it closes
        dlg.finished.connect(lambda _r: setattr(self, "dialog", None) if self.dialog is dlg else None)  # type: ignore[attr-defined]
        dlg.open()  # type: ignore[attr-defined]

    def failover(self) -> None:
        name = self.machine
        if not name:
            return
        try:
            hosts, points = self.ctx.facade.recovery_hosts(), self.ctx.facade.points(name)
        except Exception as exc:
            self.ctx.notes.handle(exc, f"preparing the failover of {name}")
            return
        dlg = MachineFailoverDialog(name, hosts, points, self)

        def chosen() -> None:
            host, point, planned = dlg.chosen()
            box = confirm(self, "Fail over", f"Fail {name} over for real to {host}?",
                          f"Point: {dlg.point_text()}.\n{name} boots on {host}; its replication stops until the "
                          "failover is cancelled" + (", and the running source is quiesced first." if planned
                                                     else "."), "Fail over",
                          lambda: self.ctx.recovery.failover(name, host, point, planned=planned))
            self._open(box)
        dlg.accepted.connect(chosen)
        self._open(dlg)

    def change_point(self) -> None:
        name, info = self.machine, self.failover_info()
        if not name or info is None:
            return
        try:
            points = self.ctx.facade.points(name)
        except Exception as exc:
            self.ctx.notes.handle(exc, f"reading points of {name}")
            return
        dlg = PointDialog(name, points, str(info["point"]), self)
        dlg.accepted.connect(lambda: self.ctx.recovery.change_point(name, dlg.point() or "latest"))
        self._open(dlg)

    def commit(self) -> None:
        name, info = self.machine, self.failover_info()
        if not name or info is None:
            return
        box = confirm(self, "Commit the failover", f"Keep {name} on {info['host']} at point {info['point']}?",
                      "Its disks are copied into standalone images on the recovery host and the VM restarts on them; "
                      "no other point can be chosen afterwards.", "Commit",
                      lambda: self.ctx.recovery.commit_machine(name))
        self._open(box)

    def cancel(self) -> None:
        name, info = self.machine, self.failover_info()
        if not name or info is None:
            return
        box = confirm(self, "Cancel the failover", f"Stop and remove the recovered VM of {name} on {info['host']}?",
                      "What it wrote is discarded; the machine is protected again.", "Cancel failover",
                      lambda: self.ctx.recovery.cancel_machine(name))
        self._open(box)



