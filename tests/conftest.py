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
