"""The appliance's own lifecycle as an attached console shows it (issue 16): the offer to start an appliance that is
not running (naming how), the confirmation before stopping it (naming what stops), and the one-time notice that
closing the console leaves it running."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QPushButton, QVBoxLayout, QWidget

from . import theme


class _Question(QDialog):
    """A titled message with an OK-like button (``accept_btn``) and Cancel; open() it and await ``finished``."""

    def __init__(self, title: str, heading: str, body: str, accept_text: str, parent: QWidget | None = None, *,
                 cancel_text: str | None = "Cancel", icon: str = "warning") -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.setModal(True)
        self.setMinimumWidth(560)
        head = QLabel(heading)
        head.setObjectName("pageTitle")
        head.setWordWrap(True)
        self.body = QLabel(body)
        self.body.setWordWrap(True)
        self.body.setTextInteractionFlags(self.body.textInteractionFlags().TextSelectableByMouse)
        buttons = QDialogButtonBox()
        self.accept_btn = QPushButton(theme.icon(icon), accept_text)
        buttons.addButton(self.accept_btn, QDialogButtonBox.ButtonRole.AcceptRole)
        self.cancel_btn: QPushButton | None = None
        if cancel_text:
            self.cancel_btn = QPushButton(cancel_text)
            buttons.addButton(self.cancel_btn, QDialogButtonBox.ButtonRole.RejectRole)
            self.cancel_btn.setDefault(True)   # the safe choice is the default
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(head)
        lay.addWidget(self.body)
        lay.addWidget(buttons)


class StartApplianceDialog(_Question):
    """Nothing answers for this home: start it? ``plan`` is a ``console.appliance_process.StartPlan``."""

    def __init__(self, plan: Any, parent: QWidget | None = None) -> None:
        super().__init__("Start the appliance?", f"The appliance of {plan.home} is not running",
                         "Nothing is being replicated while it is stopped: agents keep the changes in their journal "
                         "and send them when it runs again.\n\n" + plan.describe(),
                         "Start the service" if plan.how == "service" else "Start the appliance", parent,
                         cancel_text="Not now", icon="ok")
        self.plan = plan
        if self.cancel_btn is not None:   # starting is the expected answer here; Not now stays one click away
            self.cancel_btn.setDefault(False)
        self.accept_btn.setDefault(True)


def stop_text(home: object, machines: list[str], jobs: list[str], consoles: int | None) -> str:
    """What stops, in plain words: the machines that stop replicating and the jobs interrupted, by name."""
    def names(xs: list[str]) -> str:
        shown = ", ".join(xs[:6])
        return shown + (f" and {len(xs) - 6} more" if len(xs) > 6 else "")
    n = len(machines)
    lines = [f"The appliance of {home} drains what is in flight and exits.", ""]
    lines.append(f"• {n} protected machine{'s' if n != 1 else ''} stop{'s' if n == 1 else ''} replicating"
                 + (f": {names(machines)}" if machines else "") + ". Their agents keep the changes in their journal "
                 "(up to its limit) and catch up when the appliance runs again; no recovery point is made meanwhile.")
    j = len(jobs)
    lines.append(f"• {j} running job{'s' if j != 1 else ''} {'are' if j != 1 else 'is'} interrupted"
                 + (f": {names(jobs)}" if jobs else "") + ".")
    if consoles:
        lines.append(f"• {consoles} other console{'s' if consoles != 1 else ''} attached to it lose{'s' if consoles == 1 else ''} it.")
    lines += ["", "It does not start again by itself (a service does at the next boot). Start it again from "
              "Appliance → Start appliance."]
    return "\n".join(lines)


class StopApplianceDialog(_Question):
    def __init__(self, home: object, machines: list[str], jobs: list[str], consoles: int | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__("Stop the appliance?", "Stop protection for every machine?",
                         stop_text(home, machines, jobs, consoles), "Stop appliance", parent, icon="critical")
        self.accept_btn.setObjectName("danger")


class CloseNoticeDialog(_Question):
    """Shown once, the first time the window is closed where there is no tray."""

    def __init__(self, home: object, parent: QWidget | None = None) -> None:
        super().__init__("The appliance keeps running", "Closing the console does not stop protection",
                         f"The appliance of {home} goes on replicating your machines in the background. Open the "
                         "console again to see it (lifeboat-console attaches to it); stop it only with Appliance → "
                         "Stop appliance.\n\nThis notice is shown once.", "Close the console", parent,
                         cancel_text=None, icon="ok")
