"""The Azure Blob target's form, shared by the first-run wizard and the settings' Add target dialog: account URL,
container, account key or SAS token (password fields), and Test connection with its result.

The test itself is the caller's (``console.target``: through the egress settings of the home or of the running
appliance); the form shows the outcome next to the field at fault. ``tested`` is the target that last passed the
test, so a caller can ask for a passing test of exactly what is typed now."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (QButtonGroup, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton, QRadioButton,
                               QWidget)

from console.network import Outcome
from console.target import AzureTarget

from . import forms, theme

TestFn = Callable[[AzureTarget], Awaitable[Outcome]]


class AzureTargetForm(QWidget):
    """``changed`` on every edit (a passing test no longer covers it); ``test_done(Outcome)`` after each test."""

    changed = Signal()
    test_done = Signal(object)

    def __init__(self, test: TestFn, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.test_fn = test
        self.tested: AzureTarget | None = None
        self.task: asyncio.Future[Any] | None = None
        self.account_url = QLineEdit()
        self.account_url.setPlaceholderText("https://ACCOUNT.blob.core.windows.net")
        self.account_url.setAccessibleName("Storage account URL")
        self.container = QLineEdit()
        self.container.setPlaceholderText("lifeboat")
        self.container.setAccessibleName("Container name")
        self.by_key = QRadioButton("Account &key")
        self.by_key.setChecked(True)
        self.by_sas = QRadioButton("&SAS token")
        group = QButtonGroup(self)
        group.addButton(self.by_key)
        group.addButton(self.by_sas)
        auth_row = QWidget()
        al = QHBoxLayout(auth_row)
        al.setContentsMargins(0, 0, 0, 0)
        al.addWidget(self.by_key)
        al.addWidget(self.by_sas)
        al.addStretch(1)
        self.secret = QLineEdit()
        self.secret.setEchoMode(QLineEdit.EchoMode.Password)
        self.secret.setAccessibleName("Account key or SAS token")
        self.test_btn = QPushButton(theme.icon("refresh"), "&Test connection")
        self.result = QLabel()
        self.result.setWordWrap(True)
        self.result.setAccessibleName("Connection test result")
        self.fields = {
            "account_url": forms.Field(self.account_url, hint="The blob endpoint of the storage account (Azure "
                                                              "Government: *.blob.core.usgovcloudapi.net)."),
            "container": forms.Field(self.container, hint="An existing container; the appliance writes its cache "
                                                          "logs, page blobs and snapshots there."),
            "auth": forms.Field(auth_row),
            "secret": forms.Field(self.secret, self.test_btn,
                                  hint="Kept in the OS keyring only. A SAS token needs read, write, delete and list "
                                       "on the container."),
        }
        self.test_btn.setMinimumWidth(self.test_btn.sizeHint().width())
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        # labels above their fields: the hints and messages get the whole width instead of being squeezed
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapAllRows)
        form.addRow("Account &URL:", self.fields["account_url"])
        form.addRow("&Container:", self.fields["container"])
        form.addRow("Credential:", self.fields["auth"])
        form.addRow("Key or to&ken:", self.fields["secret"])
        form.addRow("", self.result)
        for w in (self.account_url, self.container, self.secret):
            w.textChanged.connect(self._edited)
        self.by_key.toggled.connect(self._edited)
        self.test_btn.clicked.connect(self.start_test)

    def target(self) -> AzureTarget:
        return AzureTarget(self.account_url.text().strip(), self.container.text().strip(),
                           "key" if self.by_key.isChecked() else "sas", self.secret.text().strip())

    def _edited(self, *_: object) -> None:
        if self.tested is not None and self.tested != self.target():
            self.tested = None
            self.result.setText("Changed since the test: test the connection again.")
            self.result.setStyleSheet("")
        self.changed.emit()

    @property
    def passed(self) -> bool:
        """The last test passed, for exactly what is typed now."""
        return self.tested is not None and self.tested == self.target()

    def show_outcome(self, out: Outcome) -> None:
        for k, f in self.fields.items():
            f.set_message(out.errors.get(k))
            # a wizard page lays out by size hints: give a wrapped message the height it needs at this width
            lab = f.message
            lab.setMinimumHeight(lab.heightForWidth(max(self.width(), 200)) if lab.text() else 0)
        self.result.setText(out.message)
        self.result.setAccessibleName(out.message or "Connection test result")
        self.result.setStyleSheet("" if out.ok else f"color: {theme.health_colors()['critical'].name()}")
        self._relayout()

    def _relayout(self) -> None:
        """Lay out again up to the window: a QWizard page does not follow its children's new heights by itself."""
        w: QWidget | None = self
        while w is not None:
            lay = w.layout()
            if lay is not None:
                lay.invalidate()
                lay.activate()
            w = w.parentWidget()

    def start_test(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self.test())

    async def test(self) -> Outcome:
        t = self.target()
        self.test_btn.setEnabled(False)
        self.result.setStyleSheet("")
        self.result.setText("Testing the connection (through the egress settings)…")
        try:
            out = await self.test_fn(t)
        finally:
            self.test_btn.setEnabled(True)
        self.tested = t if out.ok else None
        self.show_outcome(out)
        self.changed.emit()
        self.test_done.emit(out)
        return out
