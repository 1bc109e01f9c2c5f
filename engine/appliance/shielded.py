"""Waiting for work that must not be abandoned half way (a vault append, a cache commit), through cancellations."""

from __future__ import annotations

import asyncio


async def wait_done(fut: asyncio.Future) -> None:
    """Wait until ``fut`` is done, whatever cancels the waiter meanwhile; its exception is retrieved, so the caller
    reports its own error and asyncio does not log "exception never retrieved"."""
    while not fut.done():
        try:
            await asyncio.wait({fut})
        except asyncio.CancelledError:
            continue
    if not fut.cancelled():
        fut.exception()
