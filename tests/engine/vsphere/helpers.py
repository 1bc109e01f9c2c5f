"""Small async helpers for the vSphere tests (they never block the event loop)."""

from __future__ import annotations

import time
from typing import Any


class Recorder:
    """Collects the appliance's events; ``wait(pred)`` awaits one without blocking the loop."""

    def __init__(self, app: Any) -> None:
        self.events: list[Any] = []
        self.unsubscribe = app.bus.subscribe(self.events.append)

    def of(self, cls: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]

    async def wait(self, pred: Any, timeout: float = 30.0, what: str = "event") -> Any:
        import asyncio
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for e in self.events[seen:]:
                if pred(e):
                    return e
            seen = len(self.events)
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; got {[type(e).__name__ for e in self.events]}")
            await asyncio.sleep(0.02)


async def wait_until(cond: Any, timeout: float = 30.0, what: str = "condition") -> None:
    import asyncio
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)



async def thumbprint_of_sim(sim: Any) -> str:
    """The simulator's certificate thumbprint, computed independently of Lifeboat's code (in a thread)."""
    import asyncio
    import hashlib

    from engine.vsphere.connect import normalise_thumbprint
    return normalise_thumbprint(hashlib.sha256(await asyncio.to_thread(sim.der)).hexdigest())
