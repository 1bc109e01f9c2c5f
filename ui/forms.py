"""Form helpers: an input with its validation message right next to it, and page titles."""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from . import theme


class Field(QWidget):
    """An input widget (with optional extra buttons) and a message label under it, shown when invalid."""

    def __init__(self, editor: QWidget, *extras: QPushButton, hint: str = "") -> None:
        super().__init__()
        self.editor = editor
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(editor, 1)
        for b in extras:
            row.addWidget(b)
        lay.addLayout(row)
        self.message = QLabel()
        self.message.setObjectName("fieldError")
        self.message.setWordWrap(True)
        self.message.setVisible(False)
        lay.addWidget(self.message)
        if hint:
            h = QLabel(hint)
            h.setObjectName("hint")
            h.setWordWrap(True)
            lay.addWidget(h)

    def set_message(self, message: str | None) -> bool:
        """Show ``message`` (or hide it when None); returns True when the field is valid."""
        self.message.setText(message or "")
        self.message.setVisible(bool(message))
        self.message.setAccessibleName(message or "")
        theme.set_invalid(self.editor, bool(message))
        return not message

    @property
    def error(self) -> str:
        return self.message.text() if self.message.isVisible() else ""


def title(text: str, name: str = "pageTitle") -> QLabel:
    label = QLabel(text)
    label.setObjectName(name)
    return label


def hint(text: str) -> QLabel:
    label = QLabel(text)
    label.setObjectName("hint")
    label.setWordWrap(True)
    return label


def export_folder_error(text: str) -> str | None:
    """Why ``text`` cannot be a drill's export folder as typed, or None (the appliance checks the rest: new or empty,
    not a link; docs/SECURITY.md)."""
    text = text.strip()
    if not text or not os.path.isabs(text):
        return "Enter an absolute folder path."
    if Path(text).exists() and not Path(text).is_dir():
        return "This is a file, not a folder."
    return None
