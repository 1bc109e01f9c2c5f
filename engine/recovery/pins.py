"""What holds a machine's vault history from being folded: a drill left running (``failover --test``), a recovery
plan's test run, or a real failover not committed yet. Each reads its point through vault views, so retention
and the capacity policy leave the whole machine alone while it runs (``busy``). That must never happen silently.

``HistoryPins`` collects the pins from their owners (callables returning :class:`Pin`), and:

- shows each machine's pin (``view``): the point, since when, and the bytes of history retention would have
  folded by now and cannot (``held_bytes``) — in ``status --json`` (``history_pin``) and ``vm list`` (``pin``);
- ``held(machine)`` is what retention calls when it skips a machine because of a pin: an event
  ``retention-held`` (once per pin) and the alert ``LB_HISTORY_PINNED:<machine>`` (warning), cleared once the pin
  is gone;
- ``check()`` (a scheduler task) raises ``LB_DRILL_LEFT_RUNNING:<machine>`` (warning) when a pin is older than the
  appliance setting ``recovery.pin_alert_after`` (seconds; default :data:`DEFAULT_PIN_ALERT_AFTER`, 24 h;
  ``lifeboat appliance set --pin-alert-after 24h``), and clears both alerts when the pin goes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..events import Alert, EventBus
from ..policy import format_duration, format_size

if TYPE_CHECKING:
    from ..appliance.machine_state import MachineState
    from ..appliance.pipeline import MachineRuntime

log = logging.getLogger(__name__)

DEFAULT_PIN_ALERT_AFTER = 24 * 3600.0
PINNED = "LB_HISTORY_PINNED"
LEFT_RUNNING = "LB_DRILL_LEFT_RUNNING"
_WHAT = {"drill": "test failover", "plan-test": "test run of a recovery plan",
         "failover": "failover (not committed)"}


@dataclass(frozen=True)
class Pin:
    """One reader of a machine's history: ``kind`` drill | plan-test | failover, the ``point`` (id) at ``seq`` it
    reads, ``since`` (epoch seconds) and ``owner`` (the job or plan run that made it; how to end it)."""
    machine: str
    kind: str
    point: str
    seq: int
    since: float
    owner: str
    end_with: str   # the command that ends it


class ConfigPinAlertAfter:
    """``recovery.pin_alert_after`` of ``appliance.json`` (seconds), re-read when the file changes."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self._mtime: float | None = None
        self._value = DEFAULT_PIN_ALERT_AFTER

    def __call__(self) -> float:
        try:
            mtime = os.stat(self.config).st_mtime
            if mtime != self._mtime:
                self._mtime = mtime
                rec = json.loads(self.config.read_bytes()).get("recovery") or {}
                v = rec.get("pin_alert_after", DEFAULT_PIN_ALERT_AFTER)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                    raise ValueError(f"recovery.pin_alert_after {v!r} is not a positive number of seconds")
                self._value = float(v)
        except (OSError, ValueError) as exc:
            log.warning("pin alert setting in %s unreadable (%s); keeping %s s", self.config, exc, self._value)
        return self._value


class HistoryPins:
    """Collaborators: ``state`` (events, policies), ``runtimes`` (each machine's vault), ``bus`` (alerts),
    ``sources`` (callables listing the current pins), ``alert_after`` (seconds, read each check)."""

    def __init__(self, state: MachineState, runtimes: Mapping[str, MachineRuntime], bus: EventBus,
                 sources: Iterable[Callable[[], list[Pin]]], *, alert_after: Callable[[], float] = lambda:
                 DEFAULT_PIN_ALERT_AFTER, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.runtimes = runtimes
        self.bus = bus
        self.sources = list(sources)
        self.alert_after = alert_after
        self.clock = clock
        self._told: set[tuple[str, str]] = set()        # (machine, owner) whose retention skip was logged
        self._raised: dict[str, set[str]] = {}          # machine → codes raised for its current pin

    def pins(self) -> dict[str, Pin]:
        """The oldest pin of each pinned machine."""
        out: dict[str, Pin] = {}
        for src in self.sources:
            for p in src():
                if p.machine not in out or p.since < out[p.machine].since:
                    out[p.machine] = p
        return out

    def busy(self, machine: str) -> bool:
        return machine in self.pins()

    def held_bytes(self, machine: str) -> int:
        """History bytes past the retention window that the pin keeps from being folded: what retention folds
        once nothing pins the machine (up to the oldest point inside the window, or the newest point)."""
        keep = self._retention_keep(machine)
        rt = self.runtimes.get(machine)
        if keep is None or rt is None:
            return 0
        return max(0, rt.vault.history_bytes() - rt.vault.history_bytes(keep))

    def _retention_keep(self, machine: str) -> int | None:
        rt = self.runtimes.get(machine)
        if rt is None:
            return None
        cutoff = self.clock() - self.state.policy_of(machine).retention
        pts = rt.vault.points()
        if not pts or pts[0].time >= cutoff:
            return None
        return next((p.seq for p in pts if p.time >= cutoff), pts[-1].seq)

    def view(self, machine: str) -> dict[str, Any] | None:
        """The machine's pin as ``status --json`` and ``vm list`` show it (None: nothing pins it)."""
        p = self.pins().get(machine)
        if p is None:
            return None
        return {"kind": p.kind, "point": p.point, "seq": p.seq, "since": p.since,
                "seconds": round(max(0.0, self.clock() - p.since), 1), "held_bytes": self.held_bytes(machine),
                "owner": p.owner, "end_with": p.end_with, "alert_after": self.alert_after()}

    # retention and alerts -------------------------------------------------------------------------------------
    def held(self, machine: str, keep_from_seq: int, by: str = "retention") -> None:
        """Retention (``by``) wanted to fold ``machine``'s history up to ``keep_from_seq`` and did not: say so."""
        p = self.pins().get(machine)
        if p is None:
            return
        rt = self.runtimes.get(machine)
        held = max(0, rt.vault.history_bytes() - rt.vault.history_bytes(keep_from_seq)) if rt else 0
        if (machine, p.owner) not in self._told:
            self._told.add((machine, p.owner))
            log.warning("%s skipped %s: its %s at point %s holds %s of history from being folded", by, machine,
                        _WHAT.get(p.kind, p.kind), p.point, format_size(held))
            self.state.event("retention-held", machine, by=by, pin=p.kind, point=p.point, seq=p.seq,
                             since=p.since, owner=p.owner, keep_from_seq=keep_from_seq, held_bytes=held)
        self._raise(machine, PINNED, f"{by.capitalize()} skipped {machine}: its {_WHAT.get(p.kind, p.kind)} at "
                    f"point {p.point} (running {format_duration(max(1, round(self.clock() - p.since)))}) holds "
                    f"{format_size(held)} of history past the retention window from being folded.",
                    p, held)

    def check(self) -> None:
        """Raise the left-running alert for pins older than the setting; clear the alerts of pins that are gone."""
        pins = self.pins()
        limit = self.alert_after()
        now = self.clock()
        for m, p in pins.items():
            age = now - p.since
            if age >= limit and LEFT_RUNNING not in self._raised.get(m, set()):
                held = self.held_bytes(m)
                self.state.event("pin-left-running", m, pin=p.kind, point=p.point, since=p.since, owner=p.owner,
                                 held_bytes=held)
                self._raise(m, LEFT_RUNNING, f"The {_WHAT.get(p.kind, p.kind)} of {m} at point {p.point} has been "
                            f"running for {format_duration(max(1, round(age)))} (alert after "
                            f"{format_duration(max(1, round(limit)))}); it holds {format_size(held)} of history "
                            "from being folded.", p, held)
        for m in list(self._raised):
            if m not in pins:
                for code in self._raised.pop(m):
                    self.bus.emit(Alert(m, code, f"{m}: nothing holds its history any more.", "", "warning",
                                        {}, id=f"{code}:{m}", state="cleared", time=now))
        self._told = {t for t in self._told if t[0] in pins and pins[t[0]].owner == t[1]}

    def _raise(self, machine: str, code: str, message: str, p: Pin, held: int) -> None:
        self._raised.setdefault(machine, set()).add(code)
        self.bus.emit(Alert(machine, code, message, f"End it when done: `{p.end_with}` (or commit a real "
                            "failover); history is folded again at the next retention round.", "warning",
                            {"kind": p.kind, "point": p.point, "since": p.since, "owner": p.owner,
                             "held_bytes": held}, id=f"{code}:{machine}", time=self.clock()))
