"""The alert store: every :class:`~engine.events.Alert` emitted on the appliance's event bus, kept in state.db.

Any part raises an alert by emitting ``Alert(..., id=..., state="raised")`` and ends it with ``state="cleared"``
(docs/CONTRACT.md §2.4). The store keeps **one row per id while it is active**: raising an active alert again only
refreshes its message, severity and ``last_time``; an alert raised again within :data:`REOPEN_WINDOW` of being
cleared reopens its row (``count`` grows), so a flapping machine makes one row, not hundreds. An alert whose
cause has no end of its own (a job failed, corrupt data found) stays active; acknowledging records who saw it and
when, and never pretends a cause is gone (the console's badge counts active alerts nobody acknowledged). Cleared
alerts are kept, the newest :data:`KEEP_CLEARED` of them.

Each raise and clear (not a refresh) is also written to the event log (kind ``alert``), so ``lifeboat events``
shows the whole story in one place.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

from ..errors import NotFound
from ..events import Alert, Event, EventBus
from .state import StateDB

__all__ = ["AlertStore", "REOPEN_WINDOW", "alert_id"]

log = logging.getLogger(__name__)

#: An alert raised again this soon after it cleared is the same occurrence story: its row reopens.
REOPEN_WINDOW = 600.0
#: Cleared alerts kept (oldest dropped first); active ones are never dropped.
KEEP_CLEARED = 1000
SEVERITIES = ("info", "warning", "critical")

_COLS = ("id", "code", "severity", "component", "subject", "message", "advice", "raised_at", "cleared_at",
         "acknowledged_at", "acknowledged_by", "count", "last_time", "details")


def alert_id(a: Alert) -> str:
    """The alert's id: its own, or ``CODE:machine`` (``CODE`` alone for an appliance-wide one)."""
    return a.id or (f"{a.code}:{a.machine}" if a.machine else a.code)


def _subject(a: Alert) -> str:
    if a.machine:
        return a.machine
    d = a.details or {}
    for k in ("vcenter", "host", "subject", "path"):
        if isinstance(d.get(k), str):
            return str(d[k])
    return ""


class AlertStore:
    """The ``alerts`` table (state.db), fed by the bus. ``clock`` is epoch seconds (tests pass their own)."""

    def __init__(self, db: StateDB, bus: EventBus, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        self._unsubscribe = bus.subscribe(self._on_event)

    def close(self) -> None:
        self._unsubscribe()

    def _on_event(self, ev: Event) -> None:
        if isinstance(ev, Alert):
            self.record(ev)

    # writing ---------------------------------------------------------------------------------------------------
    def record(self, a: Alert) -> dict[str, Any] | None:
        """Store one alert event; returns the row it made or changed (None: a clear of nothing active)."""
        aid = alert_id(a)
        now = a.time or self.clock()
        severity = a.severity if a.severity in SEVERITIES else "warning"
        latest = self._latest(aid)
        details = json.dumps(a.details or {}, default=str)[:8192]
        if a.state == "cleared":
            if latest is None or latest["cleared_at"] is not None:
                return None
            self.db.db.execute("UPDATE alerts SET cleared_at=?, last_time=? WHERE row=?", (now, now, latest["row"]))
            self.db.add_event("alert", a.machine, id=aid, code=a.code, state="cleared", severity=latest["severity"],
                              message=latest["message"])
            return self._row(latest["row"])
        if latest is not None and latest["cleared_at"] is None:
            # Still active: the newest words and severity, no new occurrence.
            self.db.db.execute("UPDATE alerts SET severity=?, message=?, advice=?, last_time=?, details=? WHERE row=?",
                               (severity, a.message, a.advice, now, details, latest["row"]))
            return self._row(latest["row"])
        if latest is not None and now - latest["cleared_at"] <= REOPEN_WINDOW:
            self.db.db.execute("UPDATE alerts SET cleared_at=NULL, count=count+1, severity=?, message=?, advice=?, "
                               "last_time=?, details=? WHERE row=?",
                               (severity, a.message, a.advice, now, details, latest["row"]))
            row = latest["row"]
        else:
            cur = self.db.db.execute(
                "INSERT INTO alerts(id, code, severity, component, subject, message, advice, raised_at, count, "
                "last_time, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
                (aid, a.code, severity, a.component or "machine", _subject(a), a.message, a.advice, now, now,
                 details))
            row = int(cur.lastrowid or 0)
            self._prune()
        self.db.add_event("alert", a.machine, id=aid, code=a.code, state="raised", severity=severity,
                          message=a.message)
        return self._row(row)

    def acknowledge(self, aid: str, by: str) -> dict[str, Any]:
        """Record that ``by`` has seen the newest alert of ``aid`` (NotFound when there is none)."""
        latest = self._latest(aid)
        if latest is None:
            raise NotFound(f"no alert with id {aid[:200]!r}", advice="List the alerts with `lifeboat alerts list`.")
        now = self.clock()
        by = "".join(c for c in by if c.isprintable())[:128] or "operator"
        self.db.db.execute("UPDATE alerts SET acknowledged_at=?, acknowledged_by=? WHERE row=?",
                           (now, by, latest["row"]))
        self.db.add_event("alert-acknowledged", latest["subject"] if latest["component"] == "machine" else None,
                          id=aid, by=by)
        return self._row(latest["row"])

    def _prune(self) -> None:
        self.db.db.execute("DELETE FROM alerts WHERE cleared_at IS NOT NULL AND row NOT IN (SELECT row FROM alerts "
                           "WHERE cleared_at IS NOT NULL ORDER BY row DESC LIMIT ?)", (KEEP_CLEARED,))

    # reading ---------------------------------------------------------------------------------------------------
    def list(self, active_only: bool = True) -> list[dict[str, Any]]:
        """Alerts newest first (by their last raise or clear); only the active ones by default."""
        sql = f"SELECT row, {', '.join(_COLS)} FROM alerts"
        if active_only:
            sql += " WHERE cleared_at IS NULL"
        return [self._dict(r) for r in self.db.db.execute(sql + " ORDER BY last_time DESC, row DESC")]

    def active_ids(self) -> set[str]:
        return {r[0] for r in self.db.db.execute("SELECT id FROM alerts WHERE cleared_at IS NULL")}

    def _latest(self, aid: str) -> dict[str, Any] | None:
        r = self.db.db.execute(f"SELECT row, {', '.join(_COLS)} FROM alerts WHERE id=? ORDER BY row DESC LIMIT 1",
                               (aid,)).fetchone()
        return self._dict(r, keep_row=True) if r else None

    def _row(self, row: int) -> dict[str, Any]:
        r = self.db.db.execute(f"SELECT row, {', '.join(_COLS)} FROM alerts WHERE row=?", (row,)).fetchone()
        return self._dict(r)

    @staticmethod
    def _dict(r: tuple[Any, ...], keep_row: bool = False) -> dict[str, Any]:
        d = dict(zip(("row", *_COLS), r))
        d["details"] = json.loads(d["details"] or "{}")
        if not keep_row:
            d.pop("row")
        return d
