"""Retention: fold history older than each machine's policy window into its replica."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from .machine_state import MachineState

if TYPE_CHECKING:
    from .pipeline import MachineRuntime

__all__ = ["Retention"]


class Retention:
    """Prunes every machine's vault to its policy's retention window. ``busy(machine)`` says a drill reads the
    machine's history right now: it is then left alone until the next round."""

    def __init__(self, state: MachineState, runtimes: Mapping[str, MachineRuntime],
                 busy: Callable[[str], bool] = lambda machine: False) -> None:
        self.state = state
        self.runtimes = runtimes
        self.busy = busy

    async def prune_all(self) -> None:
        """Retention: fold history older than each policy's window into the replica."""
        for name, rt in list(self.runtimes.items()):
            pol = self.state.policy_of(name)
            cutoff = time.time() - pol.retention
            pts = [p for p in rt.vault.points() if p.time >= cutoff]
            old = [p for p in rt.vault.points() if p.time < cutoff]
            if old and pts and not self.busy(name):
                await rt.vault.prune(pts[0].seq)
