"""engine.waits: a cancellation that arrives as the event is set is never swallowed (asyncio.wait_for on 3.11 can)."""

from __future__ import annotations

import asyncio

import pytest

from engine.waits import wait_event


async def test_set_and_timeout() -> None:
    ev = asyncio.Event()
    assert await wait_event(ev, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, ev.set)
    assert await wait_event(ev, 5) is True
    assert await wait_event(ev, -1) is True   # already set, a negative timeout is no wait


async def test_cancel_in_the_same_iteration_as_the_set_propagates() -> None:
    # The race of CPython gh-86296: the waiter is woken by the event and cancelled before it runs again.
    for _ in range(200):
        ev = asyncio.Event()
        task = asyncio.ensure_future(wait_event(ev, 10))
        await asyncio.sleep(0)          # the task is waiting on the event
        ev.set()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
