"""Empty states with guidance: with no machine yet, how to install and register an agent, as a command to copy that
holds this appliance's real address and control port."""

from __future__ import annotations

import socket

from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QHBoxLayout, QLabel, QLineEdit, QPushButton, QVBoxLayout, QWidget

from . import forms, theme


def register_command(control: str) -> str:
    """``lifeboat agent register …`` for an appliance whose control API listens on ``control`` ("HOST:PORT"); an
    any-address listener (0.0.0.0, ::) is named by this host's name, which agents can resolve."""
    host, _sep, port = control.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()
    if ":" in host:
        host = f"[{host}]"
    return (f"lifeboat agent register --home /var/lib/lifeboat-agent --appliance {host}:{port or '443'} "
            "--passphrase-file /root/lifeboat-passphrase.txt --name $(hostname)")


class AgentGuide(QWidget):
    """"No machines yet": the steps, and the register command with a Copy button."""

    def __init__(self, parent: QWidget | None = None, *, intro: str = "<b>No machines yet.</b>") -> None:
        super().__init__(parent)
        self.setObjectName("emptyState")
        self.steps = steps = QLabel(
            f"{intro} To protect a machine:<ol>"
            "<li>Install the Lifeboat agent on it (the <i>lifeboat</i> package or the Windows installer).</li>"
            "<li>Copy the connection passphrase file you saved during set-up to it.</li>"
            "<li>Register the agent with this appliance (run on the machine, as root or an administrator):</li></ol>")
        steps.setWordWrap(True)
        self.command = QLineEdit()
        self.command.setReadOnly(True)
        self.command.setAccessibleName("Agent register command")
        self.copy_btn = QPushButton(theme.icon("copy"), "&Copy command")
        self.copy_btn.clicked.connect(self.copy)
        row = QHBoxLayout()
        row.addWidget(self.command, 1)
        row.addWidget(self.copy_btn)
        after = forms.hint("Then start it with `lifeboat agent run`; the machine appears here within seconds, ready "
                           "for Enable protection. Vault and ports: Settings.")
        lay = QVBoxLayout(self)
        lay.addWidget(steps)
        lay.addLayout(row)
        lay.addWidget(after)
        lay.addStretch(1)

    def set_control_address(self, control: str) -> None:
        self.command.setText(register_command(control) if control else "(start the appliance first)")
        self.command.setCursorPosition(0)

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.command.text())
