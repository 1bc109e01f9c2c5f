"""The README's first command on a headless machine: scripts/demo.sh passes, and the home it leaves works
afterwards (issue 16): its wrapper starts the demo's appliance again with the demo's keyring, `status` answers, and
the demo ends by printing the next commands to try."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import need_tool

ROOT = Path(__file__).resolve().parents[1]


def test_demo_leaves_a_home_that_works_headless(tmp_path: Path) -> None:
    need_tool("dbus-run-session", "gnome-keyring-daemon", "qemu-io")
    if not (ROOT / ".venv" / "bin" / "lifeboat").exists():
        pytest.skip("no .venv in this checkout (scripts/setup.sh makes it): the demo runs .venv/bin/lifeboat")
    home = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k not in ("DBUS_SESSION_BUS_ADDRESS", "PYTHON_KEYRING_BACKEND",
                                                             "XDG_DATA_HOME", "DISPLAY", "WAYLAND_DISPLAY")}
    env.update(LIFEBOAT_HOME=str(home), LIFEBOAT_SKIP_SETUP="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([str(ROOT / "scripts" / "demo.sh"), "--size-mib", "128"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "demo passed" in r.stdout and "next, try" in r.stdout
    wrapper = home / "lifeboat"
    assert f"{wrapper} appliance run --home {home / 'appliance'}" in r.stdout
    assert os.stat(home / "keyring" / ".password").st_mode & 0o777 == 0o600
    assert "dbus-daemon" not in r.stderr

    app = subprocess.Popen([str(wrapper), "appliance", "run", "--home", str(home / "appliance")], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            st = subprocess.run([str(ROOT / ".venv" / "bin" / "lifeboat"), "status", "--home", str(home / "appliance")],
                                env=env, capture_output=True, text=True, timeout=60)
            if st.returncode == 0:
                break
            assert app.poll() is None, app.stderr.read() if app.stderr else ""
            assert time.monotonic() < deadline, st.stderr
            time.sleep(0.5)
        assert "demo-vm" in st.stdout and "points" in st.stdout
    finally:
        os.killpg(app.pid, signal.SIGTERM)
        try:
            app.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(app.pid, signal.SIGKILL)
            app.wait()
