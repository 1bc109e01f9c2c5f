"""Retention: fold history older than each machine's policy window into its replica."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from .machine_state import MachineState

if TYPE_CHECKING:
    from .pipeline import MachineRuntime

__all__ = ["Retention"]

log = logging.getLogger(__name__)


class Retention:
    """Prunes every machine's vault to its policy's retention window. ``busy(machine)`` says a drill or an
    unfinished failover reads the machine's history right now: it is then left alone until the next round, and
    ``held(machine, keep_from_seq)`` is told so (never silently: engine/recovery/pins.py raises the alert)."""

    def __init__(self, state: MachineState, runtimes: Mapping[str, MachineRuntime],
                 busy: Callable[[str], bool] = lambda machine: False,
                 held: Callable[[str, int], None] = lambda machine, seq: None) -> None:
        self.state = state
        self.runtimes = runtimes
        self.busy = busy
        self.held = held

    async def prune_all(self) -> None:
        """Retention: fold history older than each policy's window into the replica."""
        for name, rt in list(self.runtimes.items()):
            pol = self.state.policy_of(name)
            cutoff = time.time() - pol.retention
            pts = [p for p in rt.vault.points() if p.time >= cutoff]
            old = [p for p in rt.vault.points() if p.time < cutoff]
            if old and pts:
                if self.busy(name):
                    try:
                        self.held(name, pts[0].seq)
                    except Exception:   # telling must not stop retention for the other machines
                        log.exception("reporting the retention skip of %s", name)
                else:
                    await rt.vault.prune(pts[0].seq)
