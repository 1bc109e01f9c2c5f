"""``lifeboat appliance install-service | uninstall-service | service-status``.

On Linux the service is a systemd unit (engine/platform/systemd.py); on Windows the NSIS installer registers the
pywin32 service (engine/platform/windows_service.py) and these commands drive it. ``--unit-dir`` writes the unit
into another folder without asking systemd (to inspect it, or on a machine where systemd does not run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from ..errors import LifeboatError, NotReady
from ..home import ApplianceHome
from ..platform import systemd

#: environment the service needs to find the same keyring as the operator who installs it
KEYRING_ENV = ("PYTHON_KEYRING_BACKEND", "XDG_DATA_HOME", "XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS")


class NoServiceManager(NotReady):
    code = "LB_NO_SERVICE_MANAGER"
    advice = ("systemd does not run this machine: start the appliance another way (`lifeboat appliance run "
              "--home DIR` under your supervisor), or pass --unit-dir to only write the unit file.")


def _out(obj: Any, text: str, as_json: bool) -> None:
    if as_json:
        json.dump(obj, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(text)


def service_command(home: Path) -> list[str]:
    """How the service starts the appliance: the frozen ``lifeboat`` program, the installed entry point, or this
    Python with ``-m engine.cli``."""
    args = ["appliance", "run", "--home", str(home)]
    if getattr(sys, "frozen", False):   # the bundle holds lifeboat beside lifeboat-console (a console asks too)
        frozen = Path(sys.executable)
        cli = frozen.with_name("lifeboat" + frozen.suffix)
        return [str(cli if cli.exists() else frozen), *args]
    exe = shutil.which("lifeboat")
    if exe and Path(exe).resolve().parent == Path(sys.executable).resolve().parent:
        return [str(Path(exe).resolve()), *args]
    return [str(Path(sys.executable).absolute()), "-m", "engine.cli", *args]


def _unit(home: ApplianceHome) -> tuple[str, str]:
    cfg = home.load_config()
    root = home.root.resolve()
    env = {k: os.environ[k] for k in KEYRING_ENV if os.environ.get(k)}
    src = Path(__file__).resolve().parents[2]
    if not getattr(sys, "frozen", False) and (src / "engine" / "cli.py").exists():
        env.setdefault("PYTHONPATH", str(src))   # a source checkout: the module is found from any folder
    text = systemd.unit_text(command=service_command(root), home=root,
                             description=f"Lifeboat appliance {cfg['appliance_id'][:8]} ({root})", environment=env)
    return systemd.unit_name(cfg["appliance_id"]), text


def windows_command(root: Path, *, init: bool) -> list[str]:
    """What the Windows service manager starts: ``lifeboat.exe appliance service-host --home HOME [--init]``."""
    cmd = service_command(root)
    cmd[cmd.index("run")] = "service-host"
    return cmd + (["--init"] if init else [])


def _install_windows(root: Path, init: bool, as_json: bool) -> int:   # pragma: no cover  (Windows only)
    if sys.platform == "win32":
        from ..platform import windows_service
        from .windows import service_name
        if not init:
            ApplianceHome(root).load_config()   # NotInitialised, with its advice
        name = service_name(root)
        windows_service.install(name, "Lifeboat appliance", f"Lifeboat appliance ({root}): replication, recovery "
                                "points and the control API; consoles attach to it", windows_command(root, init=init))
        _out({"service": name, "enabled": True, "started": True}, f"service {name} installed and started", as_json)
    return 0


def cmd_install(a: argparse.Namespace) -> int:
    home = ApplianceHome(Path(a.home))
    if sys.platform == "win32" and a.unit_dir is None:
        return _install_windows(home.root.resolve(), a.init, a.json)
    if a.init and not home.config.exists():
        from ..appliance.new_home import init_home
        os.umask(0o077)
        init_home(home.root, control_port=a.control_port, data_port=a.data_port)
    name, text = _unit(home)
    if a.unit_dir is None and not systemd.available():
        raise NoServiceManager("systemd does not run this machine; the service cannot be installed here")
    folder = Path(a.unit_dir) if a.unit_dir else systemd.UNIT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    from ..fileio import atomic_write
    atomic_write(path, text.encode(), 0o644)
    complaints = systemd.verify(path)
    if complaints:
        path.unlink(missing_ok=True)
        raise LifeboatError(f"systemd does not accept the unit: {complaints}", code="LB_SERVICE_UNIT",
                            advice="Report this; the unit file was removed.")
    started = False
    if a.unit_dir is None:
        for args in (("daemon-reload",), ("enable", "--now", name)):
            r = systemd.systemctl(*args)
            if r.returncode:
                raise LifeboatError(f"systemctl {' '.join(args)} failed: {r.stderr.strip()}", code="LB_SERVICE",
                                    advice="See `journalctl -u " + name + "`.")
        started = True
    out = {"unit": name, "path": str(path), "enabled": started, "started": started}
    _out(out, f"service {name} written to {path}" + (" and started (enabled at boot)" if started else
                                                 " (not enabled: --unit-dir)"), a.json)
    return 0


def cmd_uninstall(a: argparse.Namespace) -> int:
    home = ApplianceHome(Path(a.home))
    if sys.platform == "win32" and a.unit_dir is None:   # pragma: no cover
        from ..platform import windows_service
        from .windows import service_name
        name = service_name(home.root.resolve())
        removed = windows_service.remove(name)
        _out({"service": name, "removed": removed}, f"service {name} " + ("stopped and removed (the home is kept)"
                                                                        if removed else "was not installed"), a.json)
        return 0
    name, _ = _unit(home)
    folder = Path(a.unit_dir) if a.unit_dir else systemd.UNIT_DIR
    if a.unit_dir is None and systemd.available():
        systemd.systemctl("disable", "--now", name, timeout=120)
    (folder / name).unlink(missing_ok=True)
    if a.unit_dir is None and systemd.available():
        systemd.systemctl("daemon-reload")
    _out({"unit": name, "removed": True}, f"service {name} stopped and removed (the home {home.root} is kept)",
         a.json)
    return 0


def status(home: ApplianceHome) -> dict[str, Any]:
    """What runs for this home: the service manager's view and the appliance's own (pid file, control API)."""
    from ..platform import pid_alive
    cfg = home.load_config()
    name = systemd.unit_name(cfg["appliance_id"])
    shown = systemd.show(name)
    pid = None
    try:
        pid = int(home.pidfile.read_text().strip())
    except (OSError, ValueError):
        pass
    alive = pid is not None and pid_alive(pid)
    api: dict[str, Any] = {"port": cfg["control_port"]}
    try:
        from ..client import AdminClient
        st = AdminClient(home.root, timeout=5).call("GET", "/v1/status")
        api["reachable"] = True
        if isinstance(st, dict) and st.get("state") == "locked":   # running without its vault key
            api.update(locked=True, error=st.get("error"))
    except LifeboatError as exc:
        api.update(reachable=False, error=exc.to_dict())
    out = {"home": str(home.root), "appliance_id": cfg["appliance_id"],
           "manager": "systemd" if systemd.available() else "none", "unit": name,
           "installed": (systemd.UNIT_DIR / name).exists(),
           "enabled": shown.get("UnitFileState") == "enabled", "active": shown.get("ActiveState") == "active",
           "restarts": int(shown.get("NRestarts") or 0), "pid": pid if alive else None, "running": alive,
           "control_api": api}
    if sys.platform == "win32":   # the Windows service manager's view (automatic start: enabled when installed)
        svc = installed_service(home)
        out.update(manager=svc["manager"], unit=svc["unit"], installed=svc["installed"], enabled=svc["installed"],
                   active=svc["active"], restarts=0)
    return out


def installed_service(home: ApplianceHome) -> dict[str, Any]:
    """The service of this home as a console sees it before starting anything (no control API call, quick):
    ``{"manager": "systemd" | "windows" | "none", "unit", "installed", "active"}`` (``unit``: the systemd unit or
    the Windows service's name). ``installed`` only where a service manager runs."""
    if sys.platform == "win32":
        from ..platform import windows_service
        from .windows import service_name
        name = service_name(home.root.resolve())
        state = windows_service.query(name)
        return {"manager": "windows", "unit": name, "installed": bool(state),
                "active": state.get("ActiveState") == "active"}
    name = systemd.unit_name(home.load_config()["appliance_id"])
    if not systemd.available():
        return {"manager": "none", "unit": name, "installed": False, "active": False}
    shown = systemd.show(name)
    return {"manager": "systemd", "unit": name, "installed": (systemd.UNIT_DIR / name).exists(),
            "active": shown.get("ActiveState") == "active"}


def start_service(home: ApplianceHome) -> str:
    """Start the installed service of this home (``systemctl start``; on Windows the service manager's Start);
    returns the unit's (the service's) name."""
    info = installed_service(home)
    if not info["installed"]:
        raise NoServiceManager(f"no service is installed for {home.root}")
    if sys.platform == "win32":
        from ..platform import windows_service
        windows_service.start(str(info["unit"]))
        return str(info["unit"])
    r = systemd.systemctl("start", info["unit"], timeout=120)
    if r.returncode:
        raise LifeboatError(f"systemctl start {info['unit']} failed: {r.stderr.strip()}", code="LB_SERVICE",
                            advice="See `journalctl -u " + info["unit"] + "`.")
    return str(info["unit"])


def cmd_status(a: argparse.Namespace) -> int:
    s = status(ApplianceHome(Path(a.home)))
    api = s["control_api"]
    text = (f"appliance {s['appliance_id'][:8]}: " + ("running, pid " + str(s["pid"]) if s["running"] else "not running")
            + f"; control API {'answers' if api['reachable'] else 'does not answer'} on port {api['port']}"
            + ("\n  locked: no vault key in the appliance's keyring (lifeboat appliance import-kit)"
               if api.get("locked") else "")
            + f"\n  service {s['unit']}: " + (("installed" + (", enabled" if s["enabled"] else "")
                                                + (", active" if s["active"] else ", inactive"))
                                               if s["installed"] else "not installed")
            + ("" if s["manager"] != "none" else " (systemd does not run this machine)"))
    _out(s, text, a.json)
    return 0 if s["running"] and api["reachable"] else 3


def cmd_host(a: argparse.Namespace) -> int:   # pragma: no cover  (Windows only)
    from .windows import host
    host(Path(a.home).resolve(), init=a.init)
    return 0


def add_subcommands(ap: Any) -> None:
    def home(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--home", required=True, help="the appliance's home folder")
        sp.add_argument("--json", action="store_true", help="one JSON document on stdout")

    s = ap.add_parser("install-service", help="run the appliance as a service (systemd; Windows: a service "
                      "running as LocalSystem): starts now and at boot")
    home(s); s.add_argument("--unit-dir", help="only write the unit into this folder (systemd is not asked)")
    s.add_argument("--init", action="store_true",
                   help="a home not initialised yet is initialised (default ports, vault in the home); on Windows "
                        "by the service at its first start, so the vault key is in the service account's keyring")
    s.add_argument("--control-port", type=int, default=443, help="with --init (Linux): the control API's port")
    s.add_argument("--data-port", type=int, default=9443, help="with --init (Linux): the agents' data port")
    s.set_defaults(fn=cmd_install)
    s = ap.add_parser("uninstall-service", help="stop the service and remove it (the home is kept)")
    home(s); s.add_argument("--unit-dir"); s.set_defaults(fn=cmd_uninstall)
    s = ap.add_parser("service-host", help=argparse.SUPPRESS)   # what the Windows service manager starts
    s.add_argument("--home", required=True); s.add_argument("--init", action="store_true"); s.set_defaults(fn=cmd_host)
    s = ap.add_parser("service-status", help="is the appliance running, as a service, and answering")
    home(s); s.set_defaults(fn=cmd_status)
