"""Settings: generated from the declared settings (``console.settings.SETTINGS``), plus the appliance's facts."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import (QCheckBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton, QSpinBox,
                               QVBoxLayout, QWidget)

from console.context import ConsoleContext
from console.settings import SettingSpec, visible_settings

from .. import forms, theme


def editor_for(spec: SettingSpec) -> QWidget:
    if spec.type is bool:
        return QCheckBox()
    if spec.type is int:
        box = QSpinBox()
        box.setRange(int(spec.minimum if spec.minimum is not None else 0),
                     int(spec.maximum if spec.maximum is not None else 1_000_000))
        return box
    return QLineEdit()


class SettingsPage(QWidget):
    def __init__(self, ctx: ConsoleContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.editors: dict[str, QWidget] = {}
        form = QFormLayout()
        for spec in visible_settings():
            ed = editor_for(spec)
            ed.setAccessibleName(spec.label)
            ed.setToolTip(spec.help)
            self.editors[spec.key] = ed
            form.addRow(spec.label + ":", forms.Field(ed, hint=spec.help))
        self.save_btn = QPushButton(theme.icon("save"), "&Save settings")
        self.save_btn.setObjectName("primary")
        self.save_btn.clicked.connect(self.save)
        self.saved = QLabel()
        self.saved.setObjectName("hint")
        row = QHBoxLayout()
        row.addWidget(self.saved, 1)
        row.addWidget(self.save_btn)
        self.facts = QLabel()
        self.facts.setWordWrap(True)
        self.facts.setTextInteractionFlags(self.facts.textInteractionFlags().TextSelectableByMouse)
        lay = QVBoxLayout(self)
        lay.addWidget(forms.title("Settings"))
        lay.addWidget(forms.title("Console", "sectionTitle"))
        lay.addLayout(form)
        lay.addLayout(row)
        lay.addWidget(forms.title("Appliance", "sectionTitle"))
        lay.addWidget(self.facts)
        lay.addStretch(1)
        self.load()
        ctx.appliance_started.connect(self.load)

    def load(self) -> None:
        for key, ed in self.editors.items():
            self._set(ed, self.ctx.settings.get(key))
        addr = self.ctx.facade.addresses
        rows = [("Home", str(self.ctx.home)), ("Control port", addr.get("control", "—")),
                ("Data port", addr.get("data", "—")), ("Vault", addr.get("vault", "—")),
                ("Settings file", str(self.ctx.settings.path))]
        self.facts.setText("<table cellpadding=3>" + "".join(f"<tr><td><b>{k}</b></td><td>{v}</td></tr>"
                                                            for k, v in rows) + "</table>")

    @staticmethod
    def _set(ed: QWidget, value: Any) -> None:
        if isinstance(ed, QCheckBox):
            ed.setChecked(bool(value))
        elif isinstance(ed, QSpinBox):
            ed.setValue(int(value))
        elif isinstance(ed, QLineEdit):
            ed.setText(str(value))

    @staticmethod
    def _get(ed: QWidget) -> Any:
        if isinstance(ed, QCheckBox):
            return ed.isChecked()
        if isinstance(ed, QSpinBox):
            return ed.value()
        return ed.text() if isinstance(ed, QLineEdit) else None

    def save(self) -> None:
        for key, ed in self.editors.items():
            self.ctx.settings.set(key, self._get(ed))
        self.ctx.settings.save()
        self.ctx.bridge.set_flush_interval(int(self.ctx.settings.get("ui/refresh_ms")))
        self.saved.setText("Saved. The RPO history length applies at the next start.")
