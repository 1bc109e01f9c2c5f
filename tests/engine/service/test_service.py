"""Service mode: the unit systemd would run (checked by systemd-analyze), the exact command it starts run as a
process (ready line, pid file, answering control API, SIGTERM drains and exits 0), and the Windows service's body
(the platform-neutral core on a thread, stopped by an event) run here."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine.appliance.appliance import init_home
from engine.client import AdminClient
from engine.platform import systemd
from engine.service.windows import run_with_stop
from tests.conftest import free_port, need_tool


def lifeboat(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, timeout=120)


def _home(tmp: Path) -> Path:
    root = tmp / "home"
    init_home(root, control_port=free_port(), data_port=free_port(), listen="127.0.0.1", vault=tmp / "vault")
    return root


def _exec_start(unit: Path) -> tuple[list[str], dict[str, str]]:
    cmd: list[str] = []
    env: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        if line.startswith("ExecStart="):
            cmd = shlex.split(line[len("ExecStart="):])
        elif line.startswith("Environment="):
            k, v = shlex.split(line[len("Environment="):])[0].split("=", 1)
            env[k] = v
    return cmd, env


def test_unit_is_valid_and_runs_the_appliance_until_sigterm(tmp_path: Path) -> None:
    need_tool("systemd-analyze")
    home = _home(tmp_path)
    units = tmp_path / "units"
    r = lifeboat("appliance", "install-service", "--home", str(home), "--unit-dir", str(units), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    unit = Path(out["path"])
    assert unit.name == systemd.unit_name(json.loads((home / "appliance.json").read_text())["appliance_id"])
    assert systemd.verify(unit) == "", "systemd-analyze verify complained"
    text = unit.read_text()
    for line in ("Restart=on-failure", "KillSignal=SIGTERM", "UMask=0077", "WantedBy=multi-user.target"):
        assert line in text.splitlines(), line
    assert "passphrase" not in text.lower() and "key" not in text.lower().replace("keyring", "")

    # What systemd would start, started the same way (its environment, from another folder).
    cmd, env = _exec_start(unit)
    assert cmd[-4:] == ["appliance", "run", "--home", str(home.resolve())]
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("appliance running"), (line, proc.stderr.read() if proc.poll() is not None else "")
        st = lifeboat("appliance", "service-status", "--home", str(home), "--json")
        s = json.loads(st.stdout)
        assert st.returncode == 0 and s["running"] and s["control_api"]["reachable"], s
        assert s["pid"] == proc.pid
        assert AdminClient(home).call("GET", "/v1/status") is not None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (home / "appliance.pid").exists()
    log = home / "appliance.log"
    assert os.stat(log).st_mode & 0o777 == 0o600
    assert "stopped cleanly" in log.read_text()
    st = lifeboat("appliance", "service-status", "--home", str(home), "--json")
    s = json.loads(st.stdout)
    assert st.returncode == 3 and not s["running"] and not s["control_api"]["reachable"]
    assert s["control_api"]["error"]["code"] == "LB_APPLIANCE_UNREACHABLE"

    r = lifeboat("appliance", "uninstall-service", "--home", str(home), "--unit-dir", str(units))
    assert r.returncode == 0 and not unit.exists()


def test_install_without_systemd_is_refused_clearly(tmp_path: Path) -> None:
    if systemd.available():
        pytest.skip("systemd runs this machine: installing would really enable a service")
    home = _home(tmp_path)
    r = lifeboat("appliance", "install-service", "--home", str(home))
    assert r.returncode != 0 and "LB_NO_SERVICE_MANAGER" in r.stderr and "Traceback" not in r.stderr
    assert not (systemd.UNIT_DIR / systemd.unit_name(
        json.loads((home / "appliance.json").read_text())["appliance_id"])).exists()


def test_windows_service_body_runs_and_stops_on_its_event(tmp_path: Path) -> None:
    home = _home(tmp_path)
    stop = threading.Event()
    t = threading.Thread(target=run_with_stop, args=(home, stop), kwargs={"poll": 0.1})
    t.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                AdminClient(home, timeout=2).call("GET", "/v1/status")
                break
            except Exception:
                if time.monotonic() > deadline or not t.is_alive():
                    raise
                time.sleep(0.2)
        assert (home / "appliance.pid").read_text() == str(os.getpid())
    finally:
        stop.set()
        t.join(60)
    assert not t.is_alive()
    assert not (home / "appliance.pid").exists()


def test_install_service_init_makes_the_home_once(tmp_path: Path) -> None:
    """`install-service --init` (what the Windows installer runs): a missing home is initialised, an existing one is
    kept as it is; without --init a missing home is refused with its advice."""
    need_tool("systemd-analyze")
    home, units = tmp_path / "new-home", tmp_path / "units"
    r = lifeboat("appliance", "install-service", "--home", str(home), "--unit-dir", str(units), "--json")
    assert r.returncode != 0 and "LB_NOT_INITIALISED" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not units.exists() or not list(units.iterdir())
    args = ("appliance", "install-service", "--home", str(home), "--unit-dir", str(units), "--init",
            "--control-port", str(free_port()), "--data-port", str(free_port()), "--json")
    r = lifeboat(*args)
    assert r.returncode == 0, r.stderr
    aid = json.loads((home / "appliance.json").read_text())["appliance_id"]
    assert Path(json.loads(r.stdout)["path"]).name == systemd.unit_name(aid)
    assert os.stat(home).st_mode & 0o777 == 0o700 and (home / "pki" / "admin.crt").exists()
    r = lifeboat(*args)
    assert r.returncode == 0, r.stderr
    assert json.loads((home / "appliance.json").read_text())["appliance_id"] == aid, "an existing home was replaced"

