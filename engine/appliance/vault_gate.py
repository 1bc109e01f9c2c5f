"""The gate replication passes through to reach the vault: open while the vault can take writes, closed (replication
paused) while its filesystem is full. ``capacity.py`` opens and closes it; the process server and the appliers only
read it, so they depend on this small module and not on the capacity policy."""

from __future__ import annotations

import asyncio
from typing import Callable


class VaultGate:
    """Open while the vault can take writes; closed (replication paused) while its filesystem is full. The process
    server drops batches (never acknowledging them) and the appliers wait while it is closed."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self.reason = ""
        #: set by :class:`Capacity`: called with a reason when a write failed for lack of space
        self.on_full: Callable[[str], None] = self.close

    @property
    def closed(self) -> bool:
        return not self._open.is_set()

    def close(self, reason: str) -> None:
        self.reason = reason
        self._open.clear()

    def open(self) -> None:
        self.reason = ""
        self._open.set()

    async def wait_open(self) -> None:
        await self._open.wait()

    def report_full(self, reason: str) -> None:
        """A vault or cache write failed with ENOSPC: pause now, not at the next measurement."""
        if not self.closed:
            self.on_full(reason)
