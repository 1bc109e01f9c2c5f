"""Shared fixtures. Real parts only: tools that are missing make a test skip with the reason printed."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest

# Qt needs a platform plugin; without a display it aborts the process. Tests render offscreen.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True)
def _dump_tasks_before_timeout(request):
    """pytest-timeout's thread dump shows an idle event loop in select() when an async test hangs on an await,
    not which await: shortly before the timeout, print the stack of every asyncio task of running loops."""
    import asyncio
    import gc
    import sys
    import threading

    marker = request.node.get_closest_marker("timeout")
    limit = float(marker.args[0]) if marker and marker.args else float(request.config.getini("timeout") or 0)
    if limit <= 30:
        yield
        return

    def dump_all() -> None:
        for loop in [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop)]:
            if loop.is_running():
                loop.call_soon_threadsafe(dump, loop)

    def dump(loop: asyncio.AbstractEventLoop) -> None:
        print(f"\n==== {request.node.nodeid}: still running after {limit - 20:.0f} s; asyncio tasks:",
              file=sys.stderr)
        for task in asyncio.all_tasks(loop):
            print(f"--- {task!r}", file=sys.stderr)
            task.print_stack(file=sys.stderr)
        sys.stderr.flush()

    timer = threading.Timer(limit - 20, dump_all)
    timer.daemon = True
    timer.start()
    yield
    timer.cancel()


@pytest.fixture(autouse=True)
def _test_keyring(tmp_path, monkeypatch):
    """A real keyring backend on headless machines: keyrings.alt's plaintext file keyring under a temp XDG dir."""
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyrings.alt.file.PlaintextKeyring")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    import keyring
    import keyring.core
    keyring.core._keyring_backend = None  # re-resolve with this test's environment
    keyring.set_keyring(keyring.core.load_env() or keyring.core.load_keyring("keyrings.alt.file.PlaintextKeyring"))
    yield


def need_tool(*names: str) -> None:
    for n in names:
        if shutil.which(n) is None:
            pytest.skip(f"{n} is not installed (scripts/setup.sh installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 120)
    return subprocess.run(cmd, **kw)


@pytest.fixture
def free_port_factory():
    return free_port


def have_libnbd_python() -> bool:
    return os.path.exists("/usr/bin/python3") and subprocess.run(
        ["/usr/bin/python3", "-c", "import nbd"], capture_output=True).returncode == 0
