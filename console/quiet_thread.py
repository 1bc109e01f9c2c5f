"""``asyncio.to_thread`` for calls that carry a secret (a kit passphrase, a vCenter or proxy password, a storage key).

qasync's thread executor logs every submitted callable with its arguments at DEBUG (``Submitting callback
functools.partial(..., 'the passphrase') ...``), so ``lifeboat-console -v`` would write them to the log. Here the
call is wrapped in a closure, whose repr names no argument. ``console/app.py`` also keeps the ``qasync`` logger at
INFO, for the calls that do not come through here.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, TypeVar

T = TypeVar("T")

__all__ = ["to_thread_quietly"]


async def to_thread_quietly(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    def call() -> T:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(call)
