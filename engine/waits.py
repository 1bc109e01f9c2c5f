"""Waiting on an asyncio event with a timeout, without losing a cancellation.

``asyncio.wait_for`` on Python 3.11 can swallow a cancellation that arrives in the same loop iteration as the awaited
event is set (CPython gh-86296, fixed in 3.12): the cancelled task goes on running, and whoever awaits it after
cancelling (a role stopping) waits for ever. ``asyncio.timeout`` does not have that race.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``event``; True when it is set. A cancellation always propagates."""
    try:
        async with asyncio.timeout(max(0.0, timeout)):
            await event.wait()
    except TimeoutError:
        pass
    return event.is_set()
