"""Starting the appliance of a home for a console that finds none running (issue 16, docs/CONTRACT.md §7).

The console never hosts the appliance it attaches to. When nothing answers on the home's control port it offers
to start it, and says how (``StartPlan.describe``):

- where a service is installed for the home (systemd, or the Windows service manager): start that service;
- otherwise ``lifeboat appliance run --home DIR`` (the service unit's ExecStart) as a detached background process:
  its own session (closing the console, its terminal or the desktop session does not signal it), standard input
  from the null device, standard output and error appended to the home's ``appliance.log`` (the process's own
  logging writes there too). The console keeps no handle on it beyond the first seconds: it is not the console's
  child to stop; stopping it is the explicit Stop action (``stop_appliance``) or the service manager.

Then the caller waits until the appliance answers and attaches (``EngineFacade.start``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import engine.api as engine_api
from engine.api import appliance_run_command, appliance_service, start_appliance_service

__all__ = ["StartPlan", "plan_start", "start", "log_tail"]

LOG_NAME = "appliance.log"


@dataclass(frozen=True)
class StartPlan:
    """How the appliance of ``home`` will be started: ``how`` is ``service`` (``unit``) or ``process``
    (``command``, output appended to ``log``)."""
    home: Path
    how: str
    command: list[str] = field(default_factory=list)
    unit: str | None = None
    manager: str = "systemd"

    @property
    def log(self) -> Path:
        return self.home / LOG_NAME

    def describe(self) -> str:
        if self.how == "service":
            how = ("the Windows service manager's Start, as in Services" if self.manager == "windows"
                   else f"systemctl start {self.unit}")
            return (f"The service {self.unit} is installed for this appliance but is not running. Lifeboat will "
                    f"start it ({how}); it keeps running when this console closes.")
        return ("Lifeboat will start the appliance as a background process of its own:\n"
                f"    {' '.join(self.command)}\n"
                f"Its output goes to {self.log}. It keeps protecting your machines when this console closes; "
                "stop it with Appliance → Stop appliance. To have it start at boot, install it as a service "
                f"(lifeboat appliance install-service --home {self.home}).")


def plan_start(home: Path) -> StartPlan:
    """Blocking (asks the service manager): run it in a thread from the GUI loop."""
    home = Path(home).absolute()
    try:
        svc = appliance_service(home)
    except Exception:   # no systemctl, an unreadable unit: the process way still works
        svc = {"installed": False}
    if svc.get("installed"):
        return StartPlan(home, "service", unit=str(svc.get("unit")), manager=str(svc.get("manager") or "systemd"))
    return StartPlan(home, "process", command=appliance_run_command(home))


def _environment(command: list[str]) -> dict[str, str]:
    """This console's environment (the keyring backend and its folders included: the appliance must find the same
    vault key); from a source checkout, the folder that holds ``engine`` is put on PYTHONPATH for ``-m engine.cli``."""
    env = dict(os.environ)
    if "-m" in command and "engine.cli" in command:
        src = str(Path(engine_api.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    return env


def start(plan: StartPlan) -> subprocess.Popen[bytes] | None:
    """Start the appliance as ``plan`` says (blocking for a service: run it in a thread). Returns the detached
    process (None for a service), so the caller can notice an early exit while it waits for the appliance to answer."""
    if plan.how == "service":
        start_appliance_service(plan.home)
        return None
    fd = os.open(plan.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        kwargs: dict[str, object] = {}
        if sys.platform == "win32":   # no console window, not in the console's process group
            kwargs["creationflags"] = (getattr(subprocess, "DETACHED_PROCESS", 0x8)
                                       | getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200))
        else:
            kwargs["start_new_session"] = True
        return subprocess.Popen(plan.command, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, close_fds=True,
                                cwd=str(plan.home), env=_environment(plan.command), **kwargs)  # type: ignore[call-overload]
    finally:
        os.close(fd)


def log_tail(home: Path, lines: int = 6) -> str:
    """The last lines of the home's appliance log (why a started appliance did not answer)."""
    try:
        with open(Path(home) / LOG_NAME, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])
