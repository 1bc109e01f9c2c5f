"""Replication policies: RPO threshold, retention, app-consistent frequency, crash-consistent interval, history
size limit."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from .errors import InvalidInput
from .names import check_name

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_DUR = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?\s*$")

DEFAULT_POLICY = "default"
#: Longest duration a policy may hold (ten years): anything longer is a typo, and every value stays a finite number.
MAX_DURATION = 10 * 365 * 86400.0


def parse_duration(text: str | float | int, *, what: str = "duration") -> float:
    """'30s', '5m', '24h', '1d', '500ms' or a number of seconds → seconds."""
    if isinstance(text, bool):
        raise InvalidInput(f"{what}: {text!r} is not a duration")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _DUR.match(text)
        if not m:
            raise InvalidInput(f"{what}: {text!r} is not a duration",
                               advice="Use a number with a unit: 500ms, 30s, 5m, 24h or 1d.")
        value = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if not math.isfinite(value) or value <= 0:
        raise InvalidInput(f"{what} must be a positive, finite duration, got {text!r}")
    if value > MAX_DURATION:
        raise InvalidInput(f"{what} {text!r} is longer than ten years", advice="Use a shorter duration.")
    return value


_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$", re.IGNORECASE)
#: Largest size a setting may hold (one exbibyte): anything larger is a typo.
MAX_SIZE = 1 << 60


def parse_size(text: str | int | float, *, what: str = "size") -> int:
    """'50G', '512M', '2TiB', '1.5g' or a number of bytes → bytes (binary units). 0 is allowed (callers say what
    it means: for ``history_limit``, no limit)."""
    if isinstance(text, bool):
        raise InvalidInput(f"{what}: {text!r} is not a size")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _SIZE.match(text)
        if not m:
            raise InvalidInput(f"{what}: {text!r} is not a size",
                               advice="Use a number with a unit: 512M, 50G or 2T (binary units), or 0.")
        value = float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if not math.isfinite(value) or value < 0 or value > MAX_SIZE:
        raise InvalidInput(f"{what} must be a size between 0 and 1 EiB, got {text!r}")
    return int(value)


def format_size(n: float) -> str:
    """Bytes as the shortest exact binary unit when there is one ('50G'), else one decimal ('1.3G')."""
    for unit, size in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= size:
            return f"{int(n // size)}{unit}" if n % size == 0 else f"{n / size:.1f}{unit}"
    return f"{int(n)}B"


#: The vault filesystem's free-space reserve when appliance.json sets none (vault.reserve).
DEFAULT_VAULT_RESERVE = "5%"


def parse_reserve(text: str | int | float, *, what: str = "vault reserve") -> str:
    """A free-space reserve: a percentage of the filesystem ('5%', 0-50 %) or a size ('10G'). Returns it in its
    canonical text form ('5%' or a number of bytes), which :func:`reserve_bytes` reads."""
    if isinstance(text, str) and text.strip().endswith("%"):
        try:
            pct = float(text.strip()[:-1])
        except ValueError:
            raise InvalidInput(f"{what}: {text!r} is not a percentage", advice="Use e.g. 5% or 10G.") from None
        if not math.isfinite(pct) or not 0 <= pct <= 50:
            raise InvalidInput(f"{what} must be between 0% and 50%, got {text!r}")
        return f"{pct:g}%"
    return str(parse_size(text, what=what))


def reserve_bytes(reserve: str, total: int) -> int:
    """The reserve in bytes on a filesystem of ``total`` bytes."""
    if reserve.endswith("%"):
        return int(total * float(reserve[:-1]) / 100)
    return int(reserve)


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass(slots=True)
class Policy:
    name: str
    rpo_threshold: float = 30.0          # seconds; health is critical above it
    retention: float = 24 * 3600.0       # seconds of history kept
    app_consistent: float = 3600.0       # seconds between app-consistent bookmarks (1–12 h in ASR; any here)
    crash_interval: float = 5.0          # seconds between crash-consistent points
    resync_window: str = "22:00-06:00"   # local time window for scheduled resyncs ("HH:MM-HH:MM"; "always")
    history_limit: int = 0               # bytes of vault history (journal) per machine; 0 = no limit (Zerto's
                                         # journal hard limit): beyond it the oldest history is folded first

    def validate(self) -> Policy:
        check_name(self.name, "policy name")
        for f in ("rpo_threshold", "retention", "app_consistent", "crash_interval"):
            parse_duration(getattr(self, f), what=f.replace("_", "-"))
        if self.crash_interval > self.retention:
            raise InvalidInput("crash-consistent interval is longer than the retention window",
                               advice="Choose --crash-interval shorter than --retention.")
        if self.rpo_threshold < 1:
            raise InvalidInput("RPO threshold must be at least 1s")
        parse_window(self.resync_window)
        self.history_limit = parse_size(self.history_limit, what="history-limit")
        if 0 < self.history_limit < 1 << 20:
            raise InvalidInput("history limit must be 0 (no limit) or at least 1M",
                               advice="Use e.g. --history-limit 50G (history is folded a journal segment, "
                                      "64 MiB by default, at a time).")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def parse_window(text: str) -> tuple[int, int] | None:
    """'22:00-06:00' → (minute of day start, end); 'always' → None (any time)."""
    if text == "always":
        return None
    m = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)", text or "")
    if not m:
        raise InvalidInput(f"resync window {text!r} is not HH:MM-HH:MM",
                           advice="Use e.g. 22:00-06:00 (outside business hours), or 'always'.")
    a, b = int(m[1]) * 60 + int(m[2]), int(m[3]) * 60 + int(m[4])
    if a == b:
        raise InvalidInput("resync window is empty (start equals end)", advice="Use 'always' for any time.")
    return a, b


def health_for(rpo_seconds: float, threshold: float, state: str) -> str:
    """ok / warning / critical. Critical once the RPO threshold is crossed or the machine is in error."""
    if state == "error" or rpo_seconds > threshold:
        return "critical"
    if state in ("resync-required", "resyncing", "paused", "initial-sync") or rpo_seconds > threshold / 2:
        return "warning"
    return "ok"


#: A protected machine's agent silent this long is a warning of its own (and the LB_AGENT_SILENT alert).
AGENT_SILENT_AFTER = 10.0


def say_duration(seconds: float) -> str:
    """A duration as an operator reads it: "45 s", "6 min", "2 h 5 min", "3 d 4 h"."""
    s = max(0.0, seconds)
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s // 60:.0f} min"
    if s < 86400:
        h, m = divmod(int(s // 60), 60)
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(int(s // 3600), 24)
    return f"{d} d {h} h" if h else f"{d} d"


def assess_health(*, state: str, rpo_seconds: float, rpo_known: bool, threshold: float,
                  silent_for: float | None, sync_progress: float | None = None, resync_reason: str | None = None,
                  resync_progress: float | None = None, error: str | None = None,
                  paused_reason: str = "") -> tuple[str, str]:
    """(health, reason): ``health_for``'s rules with the reason an operator reads, and two truths more: before the
    first recovery point there is no RPO to judge (the sync state is the health), and an agent silent for
    :data:`AGENT_SILENT_AFTER` is a warning of its own. ``silent_for``: seconds since the agent was last heard
    from, None while it is heard."""
    silent = (f"agent not heard from for {say_duration(silent_for)}"
              if silent_for is not None and silent_for >= AGENT_SILENT_AFTER else "")

    def why(*parts: str) -> str:
        return "; ".join(p for p in parts if p)
    if state == "error":
        return "critical", why(f"error: {error or 'see the appliance log'}", silent)
    if rpo_known and rpo_seconds > threshold:
        return "critical", why(silent, f"RPO {say_duration(rpo_seconds)} over the {say_duration(threshold)} "
                                       "threshold")
    if state == "initial-sync":
        pct = f" {sync_progress * 100:.0f} %" if sync_progress is not None else ""
        return "warning", why(f"initial sync{pct}, no recovery point yet", silent)
    if state == "resync-required":
        return "warning", why(f"resync required: {resync_reason or 'unknown reason'}", silent)
    if state == "resyncing":
        pct = f" {resync_progress * 100:.0f} %" if resync_progress is not None else ""
        return "warning", why(f"resyncing{pct}: {resync_reason or 'resync'}", silent)
    if state == "paused":
        return "warning", why(f"replication paused: {paused_reason}" if paused_reason else "replication paused", silent)
    if rpo_known and rpo_seconds > threshold / 2:
        return "warning", why(silent, f"RPO {say_duration(rpo_seconds)}, over half the {say_duration(threshold)} "
                                      "threshold")
    if silent:
        return "warning", silent
    return "ok", ""
