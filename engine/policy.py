"""Replication policies: RPO threshold, retention, app-consistent frequency, crash-consistent interval."""

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
