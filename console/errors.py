"""One place where every error of the console ends up (the napari notification-manager habit).

Expected errors are ``LifeboatError``s: they become a ``Notification`` with the engine's stable code and advice.
Anything else is a bug: it becomes a crash report (versions, traceback, copyable) that the UI shows in a dialog.
``install_excepthook`` routes ``sys.excepthook``, ``threading.excepthook`` and the asyncio loop's exception handler
here, so no thread and no task loses an exception silently.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from types import TracebackType
from typing import Any, Callable

from PySide6.QtCore import QObject, Signal

from engine.api import LifeboatError

log = logging.getLogger(__name__)

#: What the UI may catch: every error a user can meet (re-exported so ``ui`` never imports ``engine``).
UserError = LifeboatError


@dataclass(frozen=True, slots=True)
class Notification:
    """Something the operator should read: ``level`` is info, warning or error."""
    level: str
    message: str
    code: str = ""
    advice: str = ""
    machine: str | None = None
    time: float = field(default_factory=time.time)

    @property
    def title(self) -> str:
        return f"{self.code}: {self.message}" if self.code else self.message


def notification_for(exc: BaseException, context: str = "") -> Notification | None:
    """A Notification for an expected error, None for a bug."""
    if isinstance(exc, LifeboatError):
        prefix = f"{context}: " if context else ""
        return Notification("error", prefix + exc.message, exc.code, exc.advice, exc.details.get("machine"))
    return None


def versions() -> dict[str, str]:
    """Versions worth having in a bug report."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in ("lifeboat", "PySide6-Essentials", "qasync", "pyqtgraph", "numpy", "cryptography"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    try:
        from PySide6 import QtCore
        out["Qt"] = QtCore.qVersion()
    except ImportError:  # pragma: no cover - the console always has Qt
        pass
    return out


def crash_report(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None,
                 context: str = "") -> str:
    """A plain-text report to paste into a bug: what happened, where, and on which versions."""
    lines = ["Lifeboat console crash report", f"time: {time.strftime('%Y-%m-%d %H:%M:%S %z')}"]
    if context:
        lines.append(f"context: {context}")
    lines += [f"{k}: {v}" for k, v in versions().items()]
    lines += ["", "".join(traceback.format_exception(exc_type, exc, tb)).rstrip()]
    return "\n".join(lines)


class NotificationCenter(QObject):
    """Funnels errors and messages to the UI: ``notified`` for the banner and log, ``crashed`` for the dialog."""

    notified = Signal(object)  # Notification
    crashed = Signal(str)      # a crash report

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.history: list[Notification] = []
        self.crashes: list[str] = []
        self._recent: dict[tuple[str | None, str], float] = {}

    def notify(self, note: Notification, *, dedupe_seconds: float = 0.0) -> None:
        """Publish a notification; with ``dedupe_seconds``, repeats of (machine, code) within it are dropped."""
        if dedupe_seconds:
            key = (note.machine, note.code or note.message)
            last = self._recent.get(key)
            if last is not None and note.time - last < dedupe_seconds:
                return
            self._recent[key] = note.time
        self.history.append(note)
        del self.history[:-500]
        self.notified.emit(note)

    def info(self, message: str, machine: str | None = None) -> None:
        self.notify(Notification("info", message, machine=machine))

    def handle(self, exc: BaseException, context: str = "") -> None:
        """An exception from a job or a slot: a notification when expected, a crash report otherwise."""
        note = notification_for(exc, context)
        if note is not None:
            self.notify(note)
            return
        self.crash(type(exc), exc, exc.__traceback__, context)

    def crash(self, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None,
              context: str = "") -> None:
        report = crash_report(exc_type, exc, tb, context)
        log.error("unexpected error%s\n%s", f" ({context})" if context else "", report)
        self.crashes.append(report)
        self.crashed.emit(report)


def install_excepthook(center: NotificationCenter,
                       loop: asyncio.AbstractEventLoop | None = None) -> Callable[[], None]:
    """Route uncaught exceptions (main thread, other threads, asyncio tasks) to ``center``; returns an undo."""
    old_sys, old_thread = sys.excepthook, threading.excepthook

    def sys_hook(t: type[BaseException], e: BaseException, tb: TracebackType | None) -> None:
        if issubclass(t, KeyboardInterrupt):
            old_sys(t, e, tb)
            return
        center.handle(e, "uncaught") if isinstance(e, LifeboatError) else center.crash(t, e, tb, "uncaught")

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            # Signals are thread-safe (queued to the GUI thread), so emitting from here is fine.
            center.crash(args.exc_type, args.exc_value, args.exc_traceback,
                         f"thread {args.thread.name if args.thread else '?'}")

    def loop_hook(lp: asyncio.AbstractEventLoop, ctx: dict[str, Any]) -> None:
        exc = ctx.get("exception")
        if exc is None:
            lp.default_exception_handler(ctx)
            return
        center.handle(exc, str(ctx.get("message", "task")))

    sys.excepthook = sys_hook
    threading.excepthook = thread_hook
    if loop is not None:
        old_loop = loop.get_exception_handler()
        loop.set_exception_handler(loop_hook)

    def undo() -> None:
        sys.excepthook, threading.excepthook = old_sys, old_thread
        if loop is not None:
            loop.set_exception_handler(old_loop)
    return undo
