"""Awaiting Qt from async tests without nested event loops (never qtbot.wait* inside an async test)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from PySide6.QtCore import SignalInstance


def signal(sig: SignalInstance, pred: Callable[..., bool] | None = None, timeout: float = 30.0,
           what: str = "signal") -> asyncio.Task[tuple[Any, ...]]:
    """A task resolving to the arguments of the next emission of ``sig`` (for which ``pred(*args)`` holds).

    Connected at once, before this returns, so an emission right after the call is not missed."""
    fut: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()

    def slot(*args: Any) -> None:
        if not fut.done() and (pred is None or pred(*args)):
            fut.set_result(args)
    sig.connect(slot)

    async def wait() -> tuple[Any, ...]:
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None
        finally:
            try:
                sig.disconnect(slot)
            except RuntimeError:  # the sender is gone (a window deleted after emitting)
                pass
    return asyncio.ensure_future(wait())


async def until(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``cond`` with asyncio sleeps (the loop keeps turning) until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)
