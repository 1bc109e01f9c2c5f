"""How a console that finds no appliance running plans to start it (console/appliance_process.py): the installed
service where a service manager has one for the home (named, and how it is started), else the service unit's
command as a detached process. The Windows service manager cannot run here: its answer is given to the plan."""

from __future__ import annotations

from pathlib import Path

from engine.appliance.appliance import init_home
from engine.platform import systemd
from tests.conftest import free_port


def _home(tmp: Path) -> Path:
    root = tmp / "home"
    init_home(root, control_port=free_port(), data_port=free_port(), listen="127.0.0.1", vault=tmp / "vault")
    return root


def test_a_console_plans_to_start_the_installed_service_or_a_process(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """What a console that finds no appliance running offers: the installed service (named, with how it is
    started) where a service manager has one for the home, else the unit's command as a detached process."""
    from console import appliance_process
    home = _home(tmp_path)
    plan = appliance_process.plan_start(home)
    if not systemd.available():
        assert plan.how == "process" and plan.command[-4:] == ["appliance", "run", "--home", str(home.absolute())]
    monkeypatch.setattr(appliance_process, "appliance_service",
                        lambda h: {"manager": "windows", "unit": "LifeboatAppliance-0123abcd", "installed": True,
                                   "active": False})
    plan = appliance_process.plan_start(home)
    assert (plan.how, plan.unit, plan.manager) == ("service", "LifeboatAppliance-0123abcd", "windows")
    assert "LifeboatAppliance-0123abcd" in plan.describe() and "systemctl" not in plan.describe()
