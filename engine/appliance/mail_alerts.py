"""Alerts by e-mail, as digests: the alerts an operator must hear about, off the bus, folded per alert id.

E-mailed (:data:`MAILED`): an RPO threshold crossed (``LB_RPO_BREACH`` raised) and recovered (cleared), a machine
needing resync (``LB_RESYNC_REQUIRED`` raised), a failed job (``LB_JOB_FAILED``), a failed connectivity check
(``LB_EGRESS_CHECK_FAILED`` raised; cleared when a check passes again).

Digest: the first alert after a quiet spell waits :attr:`MailAlerts.gather` seconds (default 30) for its company,
then goes out in one e-mail; after an e-mail, the next one waits until the settings' ``digest_seconds`` have passed
(default 10 minutes). Everything in between is folded by alert id: a machine whose RPO flaps across its threshold
twenty times makes one line ("crossed 20 times, recovered 20 times; now: recovered"), not forty e-mails. A failed
send keeps the digest and tries again with back-off (1 min, doubling to the digest interval); each attempt is in
the event log (``mail-sent`` / ``mail-failed``). The digest lives in memory: a restart forgets an unsent one (the
alerts themselves are in the alert store).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import LifeboatError
from ..events import Alert, Event, EventBus
from ..mailer import SmtpSettings, send_mail

__all__ = ["MAILED", "MailAlerts"]

log = logging.getLogger(__name__)

#: code → the alert states that are e-mailed
MAILED: dict[str, tuple[str, ...]] = {
    "LB_RPO_BREACH": ("raised", "cleared"),
    "LB_RESYNC_REQUIRED": ("raised",),
    "LB_JOB_FAILED": ("raised",),
    "LB_EGRESS_CHECK_FAILED": ("raised", "cleared"),
}
_WHAT = {"LB_RPO_BREACH": ("RPO over threshold", "RPO back under threshold"),
         "LB_RESYNC_REQUIRED": ("needs a resync", ""), "LB_JOB_FAILED": ("job failed", ""),
         "LB_EGRESS_CHECK_FAILED": ("connectivity check failed", "connectivity check passes again")}
#: Alert ids kept in one digest at most (the rest are counted).
MAX_LINES = 200


@dataclass
class _Line:
    code: str
    machine: str | None
    severity: str
    first: float
    last: float
    state: str
    message: str
    advice: str
    raised: int = 0
    cleared: int = 0


@dataclass
class _Digest:
    lines: dict[str, _Line] = field(default_factory=dict)
    dropped: int = 0
    since: float = 0.0


class MailAlerts:
    """Feeds on the bus; :meth:`tick` (every second, from the scheduler) sends what is due.

    ``settings``: returns the SMTP settings and password in force (None: e-mail is not set up; alerts are then not
    collected). ``sender``: :func:`engine.mailer.send_mail` (tests may pass another real sender). ``record``: writes an
    event to the log (``StateDB.add_event``)."""

    def __init__(self, bus: EventBus, settings: Callable[[], tuple[SmtpSettings | None, str | None]], *,
                 record: Callable[..., Any] | None = None, gather: float = 30.0,
                 clock: Callable[[], float] = time.time, sender: Callable[..., str] = send_mail) -> None:
        self.settings = settings
        self.record = record
        self.gather = gather
        self.clock = clock
        self.sender = sender
        self.digest = _Digest()
        self.last_sent = float("-inf")
        self.next_try = 0.0
        self.failures = 0
        self.sent = 0
        self._sending = False
        self._unsubscribe = bus.subscribe(self._on_event)

    def close(self) -> None:
        self._unsubscribe()

    def _on_event(self, ev: Event) -> None:
        if not isinstance(ev, Alert) or ev.state not in MAILED.get(ev.code, ()):
            return
        try:
            smtp, _pw = self.settings()
        except LifeboatError:
            smtp = None
        if smtp is None:
            return
        self.add(ev)

    def add(self, a: Alert) -> None:
        now = a.time or self.clock()
        aid = a.id or (f"{a.code}:{a.machine}" if a.machine else a.code)
        d = self.digest
        if not d.lines:
            d.since = now
        line = d.lines.get(aid)
        if line is None:
            if len(d.lines) >= MAX_LINES:
                d.dropped += 1
                return
            line = d.lines[aid] = _Line(a.code, a.machine, a.severity, now, now, a.state, a.message, a.advice)
        line.last, line.state = now, a.state
        if a.state == "raised":
            line.raised += 1
            line.message, line.advice, line.severity = a.message, a.advice or line.advice, a.severity
        else:
            line.cleared += 1

    def due(self, now: float, digest_seconds: float) -> bool:
        d = self.digest
        return bool(d.lines) and not self._sending and now >= self.next_try and now - d.since >= self.gather \
            and now - self.last_sent >= digest_seconds

    def compose(self, appliance: str = "") -> tuple[str, str]:
        """(subject, body) of the current digest."""
        lines = sorted(self.digest.lines.values(), key=lambda x: ({"critical": 0, "warning": 1}.get(x.severity, 2),
                                                                    x.first))
        n = len(lines) + self.digest.dropped
        top = lines[0]
        subject = f"[Lifeboat{' ' + appliance if appliance else ''}] " + (
            f"{_headline(top)}" if n == 1 else f"{n} alerts: {_headline(top)}, …")
        out = [f"Lifeboat alert digest ({n} alert{'s' if n != 1 else ''}), "
               f"{_when(self.digest.since)} to {_when(max(x.last for x in lines))}", ""]
        for x in lines:
            raised, cleared = _WHAT.get(x.code, (x.code, "cleared"))
            counts = []
            if x.raised:
                counts.append(f"{raised}" + (f" {x.raised} times" if x.raised > 1 else ""))
            if x.cleared:
                counts.append(f"{cleared or 'cleared'}" + (f" {x.cleared} times" if x.cleared > 1 else ""))
            now_state = "active" if x.state == "raised" else "cleared"
            who = x.machine or "appliance"
            out.append(f"* {who} — {x.code}: {'; '.join(counts)}; now {now_state} (last {_when(x.last)})")
            out.append(f"  {x.message}")
            if x.advice and x.state == "raised":
                out.append(f"  What to do: {x.advice}")
            out.append("")
        if self.digest.dropped:
            out.append(f"… and {self.digest.dropped} more alerts (see `lifeboat alerts list`).")
        out.append("All alerts: `lifeboat alerts list --home DIR`, or the console's Alerts page.")
        return subject, "\n".join(out)

    async def tick(self, appliance: str = "") -> bool:
        """Send the digest if it is due; True when an e-mail went out."""
        try:
            smtp, password = self.settings()
        except LifeboatError as exc:
            log.warning("e-mail alerts: %s", exc)
            return False
        now = self.clock()
        if smtp is None:
            self.digest = _Digest()
            return False
        if not self.due(now, smtp.digest_seconds):
            return False
        subject, body = self.compose(appliance)
        sent_lines = self.digest
        self.digest = _Digest()
        self._sending = True
        try:
            await asyncio.to_thread(self.sender, smtp, password, subject, body)
        except LifeboatError as exc:
            self.failures += 1
            delay = min(60.0 * 2 ** (self.failures - 1), max(60.0, smtp.digest_seconds))
            self.next_try = now + delay
            self._merge_back(sent_lines)
            log.warning("alert e-mail to %s failed (next try in %.0f s): %s", ",".join(smtp.recipients), delay, exc)
            if self.record:
                self.record("mail-failed", None, code=exc.code, message=exc.message, retry_in=delay)
            return False
        finally:
            self._sending = False
        self.failures = 0
        self.next_try = 0.0
        self.last_sent = now
        self.sent += 1
        if self.record:
            self.record("mail-sent", None, subject=subject, to=list(smtp.recipients),
                        alerts=len(sent_lines.lines) + sent_lines.dropped)
        return True

    def _merge_back(self, old: _Digest) -> None:
        """A failed digest goes back in front of what arrived while it was being sent."""
        new = self.digest
        for aid, line in new.lines.items():
            o = old.lines.get(aid)
            if o is None:
                if len(old.lines) < MAX_LINES:
                    old.lines[aid] = line
                else:
                    old.dropped += 1
                continue
            o.raised += line.raised
            o.cleared += line.cleared
            o.last, o.state = line.last, line.state
            if line.raised:
                o.message, o.advice, o.severity = line.message, line.advice, line.severity
        old.dropped += new.dropped
        self.digest = old


def _headline(x: _Line) -> str:
    raised, cleared = _WHAT.get(x.code, (x.code, "cleared"))
    what = raised if x.state == "raised" or not cleared else cleared
    return f"{x.machine}: {what}" if x.machine else what


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")
