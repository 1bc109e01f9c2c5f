"""Recovery points by the operator's spec: ``latest``, ``latest-app``, an id, ``tag:TAG`` or a time. Shared by drills
(engine/appliance/recovery_service.py) and failovers (engine/recovery/failover.py)."""

from __future__ import annotations

import datetime as dt
from typing import Callable

from ..errors import NotReady, UnknownPoint
from ..vault.base import MachineVault, Point


#: Latest instant a point spec may name (9999-12-31): beyond it no clock or date type can follow.
MAX_TIME = 253402300799.0


def parse_time(text: str) -> float | None:
    """ISO 8601 or epoch seconds → epoch seconds; None unless it is a finite instant in years 1970-9999."""
    try:
        t = float(text)
    except ValueError:
        try:
            d = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        if d.tzinfo is None:
            d = d.replace(tzinfo=dt.timezone.utc)
        t = d.timestamp()
    return t if 0 <= t <= MAX_TIME else None   # also refuses nan and ±inf


async def resolve_point(mv: MachineVault, spec: str, is_consistent: Callable[[int], bool],
                        latest_time: float | None = None) -> Point:
    """latest | latest-app | ID | tag:TAG | TIME (ISO 8601 or epoch seconds) → the point to recover.

    ``is_consistent(seq)`` says whether the replica at a seq is a faithful image of the source (not during
    initial replication or a resync): only such states are handed out.
    A TIME gives the disks as they were at that instant: after the last write captured at or before it.
    """
    consistent = is_consistent(mv.last_seq)
    pts = mv.points()
    if spec == "latest":
        if not pts:
            raise NotReady("the machine has no recovery point yet")
        if not consistent:
            return pts[-1]   # a resync is under way: the newest state is not one the source was in
        seq = mv.last_seq
        newest = pts[-1]
        if newest.seq == seq:
            return newest
        return Point(f"s-{seq}", seq, latest_time or newest.time, "crash-consistent", None)
    if spec == "latest-app":
        app = [p for p in pts if p.kind == "app-consistent"]
        if not app:
            raise UnknownPoint("the machine has no app-consistent point yet",
                               advice="Take one with `lifeboat agent bookmark`, or choose --point latest.")
        return app[-1]
    if spec.startswith("tag:"):
        tag = spec[4:]
        tagged = [p for p in pts if p.kind == "app-consistent" and p.tag == tag]
        if not tagged:
            raise UnknownPoint(f"no app-consistent point tagged {tag!r}")
        return tagged[-1]
    for p in pts:
        if p.id == spec:
            return p
    t = parse_time(spec)
    if t is not None and not spec.startswith(("c-", "a-")):
        found = await mv.seq_at_time(t)
        if found is not None and not is_consistent(found[0]) and pts and found[0] >= pts[0].seq:
            raise UnknownPoint(f"at {spec} the replica was being brought in line with the source (initial "
                               "replication or resync), so it holds no faithful state then",
                               advice="Choose a time before or after it; `lifeboat points` lists the points.")
        if found is None or not is_consistent(found[0]):
            start = dt.datetime.fromtimestamp(pts[0].time, dt.timezone.utc).isoformat() if pts else "nowhere"
            raise UnknownPoint(f"no recoverable state at {spec} (history starts {start})")
        seq, _ = found
        exact = [p for p in pts if p.seq == seq]
        return exact[0] if exact else Point(f"t-{seq}", seq, t, "crash-consistent", None)
    raise UnknownPoint(f"no recovery point {spec!r}")
