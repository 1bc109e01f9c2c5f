"""Network and cloud: the vault target (with Add target: ``ui/target_dialog.py``), the URL allow-list (presets + custom entries), the outbound proxy (with Test), the upload
bandwidth schedule, the connectivity check, and the e-mail alert settings (with Send test e-mail).

Every engine refusal is shown next to the field it names (``console.network``); long actions (Test, Check, SMTP
save, Send test e-mail) run as tasks on the loop and never block it."""

from __future__ import annotations

import asyncio
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QCheckBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit,
                               QPushButton, QScrollArea, QVBoxLayout, QWidget)

from console.context import ConsoleContext
from console.network import NetworkSettingsModel, Outcome
from console.target import TargetModel
from console.errors import UserError

from .. import forms, theme
from ..egress_form import AllowListBox, ProxyBox
from ..target_dialog import AddTargetDialog


class NetworkPage(QWidget):
    def __init__(self, ctx: ConsoleContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.model = NetworkSettingsModel(ctx.facade)
        self.target_model = TargetModel(ctx.facade)
        self.fields: dict[str, forms.Field] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        body = QWidget()
        lay = QVBoxLayout(body)
        lay.addWidget(forms.title("Network and cloud"))
        self.unavailable = forms.hint("Available while the appliance runs.")
        lay.addWidget(self.unavailable)

        # the vault target
        box = QGroupBox("Vault target")
        tl = QHBoxLayout(box)
        self.target_text = QLabel("—")
        self.target_text.setWordWrap(True)
        self.target_text.setAccessibleName("Vault target")
        self.add_target_btn = QPushButton(theme.icon("add"), "&Add Azure target…")
        tl.addWidget(self.target_text, 1)
        tl.addWidget(self.add_target_btn)
        lay.addWidget(box)
        self.target_dialog: AddTargetDialog | None = None

        # allow-list and proxy: the parts the set-up wizard's Outbound network page shows too
        self.allow_box = AllowListBox(self.fields, "URL allow-list (the vault target, vCenters and e-mail)")
        self.presets, self.custom = self.allow_box.presets, self.allow_box.custom
        lay.addWidget(self.allow_box)
        self.proxy_box = ProxyBox(self.fields)
        pb = self.proxy_box
        self.proxy_url, self.proxy_user, self.proxy_password, self.bypass = pb.editors()
        self.test_proxy_btn, self.proxy_result = pb.test_proxy_btn, pb.proxy_result
        lay.addWidget(pb)

        # bandwidth
        box = QGroupBox("Upload bandwidth to the target")
        f = QFormLayout(box)
        self.work_hours = QLineEdit()
        self.work_rate = QLineEdit()
        self.off_rate = QLineEdit()
        f.addRow("Work hours:", self._field("work_hours", self.work_hours, "HH:MM-HH:MM, every day, local time."))
        f.addRow("Work-hours rate:", self._field("work_rate", self.work_rate, "e.g. 10MB/s, 100Mbit/s or unlimited."))
        f.addRow("Off-hours rate:", self._field("off_rate", self.off_rate, ""))
        lay.addWidget(box)

        row = QHBoxLayout()
        self.egress_result = QLabel()
        self.egress_result.setWordWrap(True)
        self.check_btn = QPushButton(theme.icon("refresh"), "&Check connectivity")
        self.save_btn = QPushButton(theme.icon("save"), "&Save network settings")
        self.save_btn.setObjectName("primary")
        row.addWidget(self.egress_result, 1)
        row.addWidget(self.check_btn)
        row.addWidget(self.save_btn)
        lay.addLayout(row)
        self.check_report = QLabel()
        self.check_report.setTextFormat(Qt.TextFormat.RichText)
        self.check_report.setWordWrap(True)
        self.check_report.setTextInteractionFlags(self.check_report.textInteractionFlags().TextSelectableByMouse)
        lay.addWidget(self.check_report)

        # e-mail
        box = QGroupBox("Alerts by e-mail")
        f = QFormLayout(box)
        self.smtp_server = QLineEdit()
        self.smtp_server.setPlaceholderText("smtp.example.com:587")
        self.smtp_starttls = QCheckBox("STARTTLS (required to send a password)")
        self.smtp_user = QLineEdit()
        self.smtp_password = QLineEdit()
        self.smtp_password.setEchoMode(QLineEdit.EchoMode.Password)
        self.smtp_to = QLineEdit()
        self.smtp_to.setPlaceholderText("ops@example.com, dr@example.com")
        self.smtp_from = QLineEdit()
        f.addRow("Server:", self._field("smtp_server", self.smtp_server, "HOST:PORT"))
        f.addRow("", self._field("smtp_starttls", self.smtp_starttls, ""))
        f.addRow("User:", self._field("smtp_user", self.smtp_user, "Empty for a relay without login."))
        f.addRow("Password:", self._field("smtp_password", self.smtp_password,
                                          "Kept in the OS keyring; leave empty to keep the stored one."))
        f.addRow("Recipients:", self._field("smtp_to", self.smtp_to, ""))
        f.addRow("From:", self._field("smtp_from", self.smtp_from, "Default lifeboat@<host name>."))
        srow = QHBoxLayout()
        self.smtp_result = QLabel()
        self.smtp_result.setWordWrap(True)
        self.send_test_btn = QPushButton("Send &test e-mail")
        self.save_smtp_btn = QPushButton(theme.icon("save"), "Save &e-mail settings")
        srow.addWidget(self.smtp_result, 1)
        srow.addWidget(self.send_test_btn)
        srow.addWidget(self.save_smtp_btn)
        f.addRow(srow)
        lay.addWidget(box)
        lay.addStretch(1)

        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(body)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        self.save_btn.clicked.connect(self.save)
        self.add_target_btn.clicked.connect(self.open_add_target)
        self.test_proxy_btn.clicked.connect(lambda: self._spawn(self.test_proxy()))
        self.check_btn.clicked.connect(lambda: self._spawn(self.check()))
        self.save_smtp_btn.clicked.connect(lambda: self._spawn(self.save_smtp()))
        self.send_test_btn.clicked.connect(lambda: self._spawn(self.send_test()))
        ctx.appliance_started.connect(self.load)
        ctx.appliance_stopped.connect(self.load)
        ctx.lock_changed.connect(self.load)   # locked: unavailable; unlocked: the appliance's settings
        self.load()

    def _field(self, key: str, editor: QWidget, hint: str, *extras: QPushButton) -> forms.Field:
        fld = forms.Field(editor, *extras, hint=hint)
        self.fields[key] = fld
        return fld

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # state -------------------------------------------------------------------------------------------------
    def load(self, *_: object) -> None:
        ok = self.model.available
        self.unavailable.setVisible(not ok)
        for w in (self.save_btn, self.check_btn, self.test_proxy_btn, self.save_smtp_btn, self.send_test_btn,
                  self.add_target_btn):
            w.setEnabled(ok)
        if not ok:
            self.target_text.setText("—")
            return
        self.load_target()
        e = self.model.egress()
        self.allow_box.load(e["presets"], e["custom"], e.get("presets_available"))
        self.proxy_box.load(e.get("proxy"))
        b = e["bandwidth"]
        self.work_hours.setText(b["work_hours"])
        self.work_rate.setText(b["work_rate_text"])
        self.off_rate.setText(b["off_rate_text"])
        s = self.model.smtp() or {}
        self.smtp_server.setText(s.get("server") or "")
        self.smtp_starttls.setChecked(bool(s.get("starttls")))
        self.smtp_user.setText(s.get("user") or "")
        self.smtp_password.clear()
        self.smtp_password.setPlaceholderText("(stored in the keyring)" if s.get("password_set") else "")
        self.smtp_to.setText(", ".join(s.get("to") or []))
        self.smtp_from.setText(s.get("from") or "")

    def load_target(self) -> None:
        try:
            cur = self.target_model.current()
        except UserError as exc:
            self.target_text.setText(f"{exc.code}: {exc.message}")
            return
        self.target_text.setText(self.target_model.describe(cur))

    def open_add_target(self) -> AddTargetDialog:
        """The Add target dialog (opened with ``open()``; its Apply and restart run on the loop)."""
        dlg = AddTargetDialog(self.ctx, self)
        dlg.finished.connect(lambda *_: self.load())
        dlg.finished.connect(dlg.deleteLater)
        self.target_dialog = dlg
        dlg.open()
        return dlg

    def form(self) -> dict[str, Any]:
        return {**self.allow_box.values(), **self.proxy_box.values(), "work_hours": self.work_hours.text(),
                "work_rate": self.work_rate.text(), "off_rate": self.off_rate.text(),
                "smtp_server": self.smtp_server.text(), "smtp_starttls": self.smtp_starttls.isChecked(),
                "smtp_user": self.smtp_user.text(), "smtp_password": self.smtp_password.text(),
                "smtp_to": self.smtp_to.text(), "smtp_from": self.smtp_from.text()}

    def _show(self, out: Outcome, label: QLabel, keys: tuple[str, ...]) -> None:
        for k in keys:
            self.fields[k].set_message(out.errors.get(k))
        label.setText(out.message)
        label.setAccessibleName(out.message)
        label.setStyleSheet("" if out.ok else f"color: {theme.health_colors()['critical'].name()}")

    _EGRESS = ("presets", "custom", "proxy_url", "proxy_user", "proxy_password", "bypass", "work_hours", "work_rate",
               "off_rate")
    _SMTP = ("smtp_server", "smtp_starttls", "smtp_user", "smtp_password", "smtp_to", "smtp_from")

    # actions -----------------------------------------------------------------------------------------------
    def save(self) -> Outcome:
        out = self.model.save_egress(self.form())
        self._show(out, self.egress_result, self._EGRESS)
        if out.ok:
            self.load()
        return out

    async def test_proxy(self) -> Outcome:
        self.proxy_result.setText("Testing…")
        out = await self.model.test_proxy(self.form())
        for k in ("proxy_url", "proxy_password"):
            self.fields[k].set_message(out.errors.get(k))
        self.proxy_result.setText(out.message)
        return out

    async def check(self) -> Outcome:
        self.check_report.setText("Checking…")
        out, rep = await self.model.check()
        self.egress_result.setText(out.message)
        lines = []
        for e in (rep or {}).get("endpoints", []):
            lines.append(f"<b>{'✔' if e['ok'] else '✘'} {e['name']}</b> {e['host']}:{e['port']} via {e['via']}")
            for h in e["hops"]:
                lines.append(f"&nbsp;&nbsp;{h['hop']}: {'ok' if h['ok'] else 'FAILED'} ({h['ms']:.0f} ms) {h['detail']}"
                             + ("" if h["ok"] or not h["advice"] else f"<br>&nbsp;&nbsp;&nbsp;&nbsp;<i>Fix: {h['advice']}</i>"))
        self.check_report.setText("<br>".join(lines))
        return out

    async def save_smtp(self) -> Outcome:
        self.smtp_result.setText("Connecting to the server…")
        out = await self.model.save_smtp(self.form())
        self._show(out, self.smtp_result, self._SMTP)
        if out.ok:
            self.load()
        return out

    async def send_test(self) -> Outcome:
        self.smtp_result.setText("Sending…")
        out = await self.model.send_test()
        self._show(out, self.smtp_result, ())
        return out
