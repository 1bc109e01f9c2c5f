"""Shared fixtures. Real parts only: tools that are missing make a test skip with the reason printed."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

#: Where a test about to time out leaves the stacks of its asyncio tasks (see _dump_tasks_before_timeout).
TIMEOUT_DUMPS = Path(__file__).resolve().parents[1] / ".cache" / "test-timeouts"

# Qt needs a platform plugin; without a display it aborts the process. Tests render offscreen.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


#: Fixtures of tests that boot guests on the recovery host (TCG: a core each while they boot) or define its libvirt
#: domains and networks: with pytest-xdist (scripts/test.sh runs two workers) they all run on one worker, one at a
#: time, beside the rest of the suite on the other, instead of two boots competing for the two cores.
RECOVERY_HOST_FIXTURES = {"recovery_host", "boot_disk", "boot_disk_ga"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if RECOVERY_HOST_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("recovery-host"))
            item.add_marker(pytest.mark.slow)


#: The whole suite's budget (seconds of pytest on CI's 2 cores; setup comes on top, and CI's limit for both is 20
#: minutes). Measured: ~9.5 min alone. Going over it fails the run, so a slow test is noticed when it lands, not when
#: CI times out. LIFEBOAT_SUITE_BUDGET overrides it (0: no budget).
SUITE_BUDGET = float(os.environ.get("LIFEBOAT_SUITE_BUDGET", "900"))
_started: list[float] = []


def pytest_sessionstart(session):
    import time
    _started.append(time.monotonic())


def pytest_sessionfinish(session, exitstatus):
    import time
    config = session.config
    if hasattr(config, "workerinput") or not _started:   # an xdist worker: the controller keeps the time
        return
    whole = not config.option.keyword and not config.option.markexpr and not config.option.collectonly and \
        [str(a) for a in config.args] in (["tests"], [str(Path(config.rootpath) / "tests")], [])
    took = time.monotonic() - _started[0]
    if whole and SUITE_BUDGET and took > SUITE_BUDGET and exitstatus == 0:
        tr = config.pluginmanager.get_plugin("terminalreporter")
        msg = (f"the whole suite took {took:.0f} s, over its budget of {SUITE_BUDGET:.0f} s (tests/conftest.py "
               "SUITE_BUDGET): find the test that grew in --durations above and make it faster, or mark a boot slow")
        if tr is not None:
            tr.write("\n")
            tr.write_line(f"ERROR: {msg}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
        out = io.StringIO()
        print(f"\n==== {request.node.nodeid}: still running after {limit - 20:.0f} s; asyncio tasks:", file=out)
        for task in asyncio.all_tasks(loop):
            print(f"--- {task!r}", file=out)
            task.print_stack(file=out)
        sys.stderr.write(out.getvalue())
        sys.stderr.flush()
        # pytest-timeout ends the whole process 20 s later; under pytest-xdist that is a crashed worker whose captured
        # output is lost, so the dump is kept in a file too
        TIMEOUT_DUMPS.mkdir(parents=True, exist_ok=True)
        name = "".join(c if c.isalnum() or c in "._-" else "_" for c in request.node.nodeid)[-150:]
        (TIMEOUT_DUMPS / f"{name}.txt").write_text(out.getvalue())

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
