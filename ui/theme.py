"""Look and feel: the stylesheet and SVG icons in ``resources/``, health colours with words, pyqtgraph defaults."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from PySide6.QtGui import QColor, QIcon
from PySide6.QtWidgets import QApplication, QLabel, QWidget

from console.models import HEALTH_LABELS


def resources_dir() -> Path:
    """``resources/`` beside the packages, or inside a PyInstaller bundle."""
    base = Path(getattr(sys, "_MEIPASS", Path(__file__).resolve().parent.parent))
    return base / "resources"


HEALTH_COLORS = {"ok": "#2e7d32", "warning": "#b26a00", "critical": "#c62828", "": "#7a8594"}
HEALTH_ICON_NAMES = {"ok": "ok", "warning": "warning", "critical": "critical", "": "unprotected"}


@functools.cache
def icon(name: str) -> QIcon:
    """An icon from resources/icons/<name>.svg (an empty icon if it is missing)."""
    path = resources_dir() / "icons" / f"{name}.svg"
    return QIcon(str(path)) if path.exists() else QIcon()


def health_icons() -> dict[str, QIcon]:
    return {k: icon(v) for k, v in HEALTH_ICON_NAMES.items()}


def health_colors() -> dict[str, QColor]:
    return {k: QColor(v) for k, v in HEALTH_COLORS.items()}


def health_label(health: str) -> str:
    return HEALTH_LABELS.get(health, health)


def set_health(label: QLabel, health: str, text: str | None = None) -> None:
    """Show a health on a label: icon-free text that names it, coloured by the stylesheet's [health] rule."""
    label.setText(text if text is not None else health_label(health))
    label.setProperty("health", health)
    label.style().unpolish(label)
    label.style().polish(label)


def set_invalid(widget: QWidget, invalid: bool) -> None:
    widget.setProperty("invalid", "true" if invalid else "false")
    widget.style().unpolish(widget)
    widget.style().polish(widget)


def apply(app: QApplication) -> None:
    """Stylesheet, application icon and pyqtgraph defaults."""
    import pyqtgraph as pg
    qss = resources_dir() / "style.qss"
    if qss.exists():
        # url(@ICONS@/x.svg): the stylesheet's own images, wherever the resources are (source tree or bundle)
        app.setStyleSheet(qss.read_text().replace("@ICONS@", (resources_dir() / "icons").as_posix()))
    app.setWindowIcon(icon("app"))
    pg.setConfigOptions(background="w", foreground="#33414f", antialias=True)
