"""The URL allow-list and the outbound proxy as form parts, shared by Settings → Network and cloud and the set-up
wizard's Outbound network page: the same widgets, the same field names (``console.network``'s form keys), so the
engine's refusals land next to the same fields on both.

Each box registers its fields (``forms.Field``) in the ``fields`` dict it is given; ``values()`` is its part of the
form dict ``console.network`` takes (texts as typed)."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import (QCheckBox, QFormLayout, QGroupBox, QHBoxLayout, QLineEdit, QPlainTextEdit, QPushButton,
                               QWidget)

from . import forms

#: the allow-list presets as the page names them (``engine.egress.PRESETS``' keys)
PRESET_LABELS = (("commercial", "Azure commercial cloud"), ("government", "Azure Government"))


def _field(fields: dict[str, forms.Field], key: str, editor: QWidget, hint: str, *extras: QPushButton) -> forms.Field:
    f = forms.Field(editor, *extras, hint=hint)
    fields[key] = f
    return f


class AllowListBox(QGroupBox):
    """Presets (check boxes) and custom entries (one per line)."""

    def __init__(self, fields: dict[str, forms.Field], title: str = "URL allow-list",
                 custom_hint: str = "One per line: host, *.domain (leftmost label only), IP address or network, "
                                    "optionally :PORT. Empty list and no preset: unrestricted.") -> None:
        super().__init__(title)
        f = QFormLayout(self)
        self.presets = {name: QCheckBox(label) for name, label in PRESET_LABELS}
        prow = QWidget()
        pl = QHBoxLayout(prow)
        pl.setContentsMargins(0, 0, 0, 0)
        for cb in self.presets.values():
            pl.addWidget(cb)
        pl.addStretch(1)
        f.addRow("Presets:", _field(fields, "presets", prow, "The documented Azure endpoints for that cloud."))
        self.custom = QPlainTextEdit()
        self.custom.setAccessibleName("Custom allow-list entries")
        self.custom.setTabChangesFocus(True)
        self.custom.setFixedHeight(70)
        f.addRow("Custom entries:", _field(fields, "custom", self.custom, custom_hint))

    def values(self) -> dict[str, Any]:
        return {"presets": [n for n, cb in self.presets.items() if cb.isChecked()],
                "custom": self.custom.toPlainText()}

    def load(self, presets: list[str], custom: list[str], available: dict[str, list[str]] | None = None) -> None:
        for name, cb in self.presets.items():
            cb.setChecked(name in presets)
            cb.setToolTip("\n".join((available or {}).get(name, [])))
        self.custom.setPlainText("\n".join(custom))


class ProxyBox(QGroupBox):
    """Proxy URL (with Test proxy), user, password (a password field), bypass list, and the test's result."""

    def __init__(self, fields: dict[str, forms.Field], title: str = "Outbound proxy (HTTP CONNECT)",
                 password_hint: str = "Kept in the OS keyring; leave empty to keep the stored one.") -> None:
        super().__init__(title)
        f = QFormLayout(self)
        self.proxy_url = QLineEdit()
        self.proxy_url.setPlaceholderText("http://proxy.example:3128 (empty: direct)")
        self.proxy_url.setAccessibleName("Proxy URL")
        self.proxy_user = QLineEdit()
        self.proxy_user.setAccessibleName("Proxy user")
        self.proxy_password = QLineEdit()
        self.proxy_password.setEchoMode(QLineEdit.EchoMode.Password)
        self.proxy_password.setAccessibleName("Proxy password")
        self.bypass = QLineEdit()
        self.bypass.setPlaceholderText("vcenter.corp.example, 10.0.0.0/8")
        self.bypass.setAccessibleName("Proxy bypass list")
        self.test_proxy_btn = QPushButton("&Test proxy")
        f.addRow("Proxy URL:", _field(fields, "proxy_url", self.proxy_url, "", self.test_proxy_btn))
        f.addRow("User:", _field(fields, "proxy_user", self.proxy_user, "Basic authentication; empty for none."))
        f.addRow("Password:", _field(fields, "proxy_password", self.proxy_password, password_hint))
        f.addRow("Bypass:", _field(fields, "bypass", self.bypass, "Destinations reached directly (comma separated)."))
        self.proxy_result = forms.hint("")
        self.proxy_result.setAccessibleName("Proxy test result")
        f.addRow("", self.proxy_result)

    def values(self) -> dict[str, Any]:
        return {"proxy_url": self.proxy_url.text(), "proxy_user": self.proxy_user.text(),
                "proxy_password": self.proxy_password.text(), "bypass": self.bypass.text()}

    def load(self, proxy: dict[str, Any] | None) -> None:
        p = proxy or {}
        self.proxy_url.setText(p.get("url") or "")
        self.proxy_user.setText(p.get("user") or "")
        self.proxy_password.clear()
        self.proxy_password.setPlaceholderText("(stored in the keyring)" if p.get("password_set") else "")
        self.bypass.setText(", ".join(p.get("bypass") or []))

    def editors(self) -> tuple[QLineEdit, ...]:
        return self.proxy_url, self.proxy_user, self.proxy_password, self.bypass
