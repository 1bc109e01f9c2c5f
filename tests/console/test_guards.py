"""The guards themselves: a test that blocks the event loop fails, and so does one that leaks a top-level widget.

Run in a child pytest (its own Qt application) on a throwaway test file that uses the same conftest support."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.console.qt_support import REPO, LoopWatchdog

INNER = '''
import asyncio, time
from PySide6.QtWidgets import QWidget

async def test_blocks_the_loop():
    await asyncio.sleep(0.05)
    time.sleep(2.0)          # a blocking call on the event loop
    await asyncio.sleep(0.05)

async def test_awaits_politely():
    await asyncio.sleep(0.3)
    await asyncio.to_thread(time.sleep, 1.0)   # blocking work off the loop is fine

def test_leaks_a_window(qapp):
    w = QWidget()
    w.setWindowTitle("forgotten")
    w.show()
    test_leaks_a_window.keep = w

def test_closes_its_window(qtbot):
    w = QWidget()
    qtbot.addWidget(w)
    w.show()
'''


def test_guards_fail_blocking_and_leaking_tests(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text("from tests.console.qt_support import *  # noqa\n")
    (tmp_path / "test_inner.py").write_text(INNER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "QT_QPA_PLATFORM": "offscreen"}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "asyncio_mode=auto",
                          "-o", "asyncio_default_fixture_loop_scope=function", "--rootdir", str(tmp_path),
                          str(tmp_path / "test_inner.py")], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    out = res.stdout + res.stderr
    # A guard fails in the test's teardown: pytest reports an error for that test, and the run fails.
    assert res.returncode == 1 and "4 passed, 2 errors" in out, out[-4000:]
    assert "ERROR test_inner.py::test_blocks_the_loop" in out and "ERROR test_inner.py::test_leaks_a_window" in out
    assert "event loop was blocked for" in out and "time.sleep(2.0)" in out, out[-4000:]
    assert "1 top-level widget(s) leaked" in out and "forgotten" in out, out[-4000:]


@pytest.mark.allow_blocking
async def test_watchdog_reports_the_blocking_stack(qapp) -> None:
    import asyncio
    wd = LoopWatchdog(0.2)
    wd.start()
    wd.listen(True)
    try:
        await asyncio.sleep(0.1)
        time.sleep(0.5)
        await asyncio.sleep(0.05)
    finally:
        wd.listen(False)
        wd.stop()
    assert len(wd.incidents) == 1
    stuck, stack = wd.incidents[0]
    assert stuck >= 0.4 and "time.sleep(0.5)" in stack
