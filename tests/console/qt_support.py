"""Qt test support shared by tests/console and tests/ui (imported by both conftests).

- async tests run on a qasync loop (pytest-asyncio's ``pytest_asyncio_loop_factories`` hook), inside the Qt event
  loop that pytest-qt's ``qapp`` owns;
- ``_fail_blocking_calls`` (autouse): a watchdog thread fails an async test whose event loop stops turning for
  longer than a threshold (1 s; ``@pytest.mark.blocking_threshold(s)``, ``LIFEBOAT_LOOP_BLOCK_S``), with the
  main thread's stack at the moment it was stuck (the aiohttp habit);
- ``_fail_leaked_widgets`` (autouse): fails a test that leaves new top-level widgets alive (napari's pattern);
- ``screenshot``: saves ``widget.grab()`` under ``artifacts/screenshots`` (or ``LIFEBOAT_SCREENSHOTS``), printed at
  the end of the run.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import qasync
from PySide6.QtCore import QCoreApplication, QEvent, QTimer
from PySide6.QtWidgets import QApplication, QWidget

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(os.environ.get("LIFEBOAT_SCREENSHOTS", REPO / "artifacts" / "screenshots"))
# Building the main window legitimately holds the loop ~0.15 s here, and the machine is shared and noisy (±2×, more
# under a parallel suite): 1 s catches blocking calls (sleeps, sync I/O, waits) without flaking on widget work.
DEFAULT_BLOCK_S = float(os.environ.get("LIFEBOAT_LOOP_BLOCK_S", "1.0"))
_saved: list[Path] = []


def _app() -> QApplication:
    app = QApplication.instance() or QApplication([])
    assert isinstance(app, QApplication)
    app.setQuitOnLastWindowClosed(False)
    return app


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    return {"qasync": lambda: qasync.QEventLoop(_app())}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "blocking_threshold(seconds): loop-block limit of this test")
    config.addinivalue_line("markers", "allow_blocking: do not fail this test for blocking the event loop")
    config.addinivalue_line("markers", "allow_leaked_widgets: do not fail this test for leaked top-level widgets")


class LoopWatchdog:
    """Detects the GUI thread's event loop not turning: a Qt timer beats; a thread measures the silence."""

    def __init__(self, threshold: float, beat_ms: int = 20) -> None:
        self.threshold = threshold
        self.incidents: list[tuple[float, str]] = []  # (seconds stuck, main-thread stack when found stuck)
        self._main = threading.main_thread().ident
        self._last = time.monotonic()
        self._listening = False
        self._armed = False
        self._stop = threading.Event()
        self._timer = QTimer()
        self._timer.setInterval(beat_ms)
        self._timer.timeout.connect(self._beat)
        self._thread = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)

    def start(self) -> None:
        self._timer.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._timer.stop()
        self._thread.join(2)

    def listen(self, on: bool) -> None:
        """Only while the test body runs: armed at the first beat (the loop is turning), disarmed at once."""
        self._listening, self._armed = on, False

    def _beat(self) -> None:
        self._last = time.monotonic()
        if self._listening:
            self._armed = True

    def _watch(self) -> None:
        stuck: int | None = None
        while not self._stop.wait(0.02):
            if not self._armed:
                stuck = None
                continue
            silent = time.monotonic() - self._last
            if silent < self.threshold:
                stuck = None
            elif stuck is None:
                frame = sys._current_frames().get(self._main or 0)
                stack = "".join(traceback.format_stack(frame)) if frame else "(no stack)"
                self.incidents.append((silent, stack))
                stuck = len(self.incidents) - 1
            else:
                self.incidents[stuck] = (silent, self.incidents[stuck][1])


_current: LoopWatchdog | None = None


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Any:
    wd = _current
    if wd is not None:
        wd.listen(True)
    try:
        return (yield)
    finally:
        if wd is not None:
            wd.listen(False)


@pytest.fixture(autouse=True)
def _fail_blocking_calls(request: pytest.FixtureRequest, qapp: QApplication) -> Iterator[LoopWatchdog | None]:
    global _current
    import inspect
    if not inspect.iscoroutinefunction(getattr(request.node, "obj", None)):
        yield None
        return
    marker = request.node.get_closest_marker("blocking_threshold")
    wd = LoopWatchdog(float(marker.args[0]) if marker else DEFAULT_BLOCK_S)
    wd.start()
    _current = wd
    try:
        yield wd
    finally:
        _current = None
        wd.stop()
    if wd.incidents and request.node.get_closest_marker("allow_blocking") is None:
        worst, stack = max(wd.incidents)
        pytest.fail(f"the event loop was blocked for {worst:.2f} s (limit {wd.threshold} s); the GUI thread was "
                    f"here:\n{stack}", pytrace=False)


def _alive_top_levels() -> set[int]:
    return {id(w) for w in QApplication.topLevelWidgets()}


def _describe(w: QWidget) -> str:
    return f"{type(w).__name__}(objectName={w.objectName()!r}, title={w.windowTitle()!r}, visible={w.isVisible()})"


@pytest.fixture(autouse=True)
def _fail_leaked_widgets(request: pytest.FixtureRequest, qapp: QApplication) -> Iterator[None]:
    """Fail when a test leaves new top-level widgets alive (close + deleteLater them, or use qtbot.addWidget)."""
    before = _alive_top_levels()
    yield
    for _ in range(3):  # deleteLater'ed widgets, then Python cycles holding wrappers (pyqtgraph menus)
        QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
        QCoreApplication.processEvents()
        gc.collect()
    leaked = [w for w in QApplication.topLevelWidgets()
              if id(w) not in before and type(w).__name__ not in ("QTipLabel", "QComboBoxPrivateContainer")]
    if not leaked:
        return
    desc = "\n  ".join(_describe(w) for w in leaked)
    for w in leaked:  # don't let one leak cascade into the next tests
        w.close()
        w.deleteLater()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    if request.node.get_closest_marker("allow_leaked_widgets") is None:
        pytest.fail(f"{len(leaked)} top-level widget(s) leaked:\n  {desc}", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _console_theme(qapp: QApplication) -> None:
    """The real stylesheet and icons, so screenshots show what operators see."""
    from ui import theme
    theme.apply(qapp)
    qapp.setQuitOnLastWindowClosed(False)


@pytest.fixture
def screenshot(request: pytest.FixtureRequest) -> Callable[[QWidget, str], Path]:
    """``screenshot(widget, "name")`` → artifacts/screenshots/name.png (the folder is printed at the end)."""
    def save(widget: QWidget, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        assert widget.grab().save(str(path)), f"could not save {path}"
        _saved.append(path)
        return path
    return save


def pytest_terminal_summary(terminalreporter: Any) -> None:
    # Both conftests import this module: print once.
    if _saved and not getattr(terminalreporter, "_lifeboat_shots_printed", False):
        terminalreporter._lifeboat_shots_printed = True
        terminalreporter.write_line(f"console screenshots: {SCREENSHOTS} ({len(set(_saved))} files)")


@pytest.fixture
def console_settings(tmp_path: Path) -> Any:
    from console.settings import ConsoleSettings
    return ConsoleSettings.load(tmp_path / "console.ini")


__all__ = ["pytest_asyncio_loop_factories", "pytest_configure", "pytest_pyfunc_call", "pytest_terminal_summary",
           "_fail_blocking_calls", "_fail_leaked_widgets", "_console_theme", "screenshot", "console_settings", "LoopWatchdog"]
