"""Appliance-side resync: requests, delivery to the agent, the policy's window, status, corruption healing and
verification of the vault (RESYNC.md).

The agent runs the resync itself (checksums of its dirty blocks, compared by the process server); the appliance
asks for one, tells the agent when it may run, records the spans of history in which the replica is not a faithful
image of the source (no recovery points there), and answers with a resync when stored data fails verification.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import Conflict
from ..events import Alert, EventBus
from ..policy import parse_window
from ..records import BLOCK
from .machine_state import MachineState

if TYPE_CHECKING:
    from .pipeline import MachineRuntime

__all__ = ["Resync", "in_window", "next_window_start"]


def in_window(window: str, t: float) -> bool:
    """Whether local time ``t`` is inside a policy's resync window ("always" or "HH:MM-HH:MM")."""
    w = parse_window(window)
    if w is None:
        return True
    lt = time.localtime(t)
    m = lt.tm_hour * 60 + lt.tm_min
    a, b = w
    return a <= m < b if a < b else (m >= a or m < b)


def next_window_start(window: str, t: float) -> float | None:
    """Epoch seconds of the window's next opening (now if inside it); None for 'always'."""
    w = parse_window(window)
    if w is None:
        return t
    if in_window(window, t):
        return t
    lt = time.localtime(t)
    midnight = t - (lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec)
    start = midnight + w[0] * 60
    return start if start > t else start + 86400


class Resync:
    """Resync state of every machine (the ``resync`` field of its row) and the requests sent to its agent.

    ``runtimes`` is the live view of the process server's machine runtimes (their agent connection and what the
    agent last reported)."""

    def __init__(self, state: MachineState, runtimes: Mapping[str, MachineRuntime], bus: EventBus) -> None:
        self.state = state
        self.runtimes = runtimes
        self.bus = bus

    # what the applier reports ------------------------------------------------------------------------------------
    def started(self, name: str, seq: int, reason: str) -> None:
        """A RESYNC_START record reached the vault: no points from ``seq`` until RESYNC_DONE."""
        rs = self.state.row(name)["resync"]
        spans = rs.setdefault("inconsistent", [])
        if not spans or spans[-1][1] is not None:
            spans.append([seq, None])
        rs["reason"] = reason
        self.state.update(name, resync=rs)
        self.state.event("resync-started", name, seq=seq, reason=reason)

    def finished(self, name: str, seq: int) -> None:
        """A RESYNC_DONE record reached the vault: the replica is consistent again from ``seq``."""
        rs = self.state.row(name)["resync"]
        for span in rs.get("inconsistent", []):
            if span[1] is None:
                span[1] = seq
        rs["reason"] = None
        rs.pop("request", None)
        rs["last_done"] = time.time()
        self.state.update(name, resync=rs)
        self.state.event("resync-finished", name, seq=seq)

    def corruption_found(self, name: str, where: str, detail: str, from_seq: int,
                         ranges: list[list[int]] | None = None) -> None:
        """Stored data failed verification: report it, stop points, and heal by a resync of the range."""
        self.bus.emit(Alert(name, "LB_INTEGRITY", f"corrupt data in the {where}: {detail}",
                            "A resync of the affected range was started to heal it.", "critical"))
        self.state.event("corruption", name, where=where, detail=detail)
        reason = f"corruption detected in the {where}"
        rt = self.runtimes.get(name)
        if rt is not None and where == "vault":
            # The checksums were taken from the data before it rotted: make the resync read the vault.
            for idx_disk, idx in rt.hashes.items():
                if ranges is None:
                    idx.invalidate_all()
                for disk, off, length in ranges or []:
                    if disk == idx_disk:
                        idx.invalidate(off, length)
        self.started(name, from_seq, reason)
        self.request(name, now=True, reason=reason, ranges=ranges)

    # operations ----------------------------------------------------------------------------------------------------
    async def verify(self, name: str, *, heal: bool = True) -> dict[str, Any]:
        """Re-read everything the vault holds for the machine and check it against what the source said it
        was (record hashes, authentication tags), without touching replication."""
        rt = self.runtimes.get(name)
        self.state.row(name)
        if rt is None:
            raise Conflict(f"machine {name!r} is not protected")
        rep = await rt.vault.verify()
        problems = list(rep.problems)
        ranges = [[p["disk"], p["offset"], p.get("length") or BLOCK] for p in problems
                  if p.get("disk") is not None and p.get("offset") is not None]
        if problems and heal:
            full = any(p.get("disk") is None for p in problems)
            self.corruption_found(name, "vault", problems[0]["error"], rt.vault.last_seq + 1,
                                  None if full else ranges)
        return {"machine": name, "ok": not problems, "records_checked": rep.records_checked,
                "blocks_checked": rep.blocks_checked, "problems": problems,
                "healing": bool(problems and heal)}

    def request(self, name: str, *, now: bool, reason: str = "operator request",
                ranges: list[list[int]] | None = None) -> dict[str, Any]:
        """Compare the machine's disks with the replica (checksums) and send only what differs.

        Without ``now`` it waits for the policy's resync window. Delivered to the agent at once, or when it
        connects. Returns the machine's resync status.
        """
        row = self.state.row(name)
        if not row["protected"]:
            raise Conflict(f"machine {name!r} is not protected", advice="Enable protection first.")
        rs = row["resync"]
        rt = self.runtimes.get(name)
        pending = int(((rt.agent_stats.get("resync") or {}) if rt and rt.connection else {}).get("dirty", 0))
        if now and ranges is None and pending and reason == "operator request":
            ranges = []   # a resync is already queued (crash, resize, ...): run it now rather than compare all
        rs["request"] = {"full": ranges is None, "ranges": ranges or [], "reason": reason, "now": now,
                         "time": time.time(), "delivered": False}
        self.state.update(name, resync=rs)
        self.state.event("resync-requested", name, reason=reason, now=now)
        self.deliver(name)
        return self.status(name)

    def deliver(self, name: str) -> None:
        """Send a pending request to the machine's agent, if it is connected (else when it connects)."""
        rt = self.runtimes.get(name)
        rs = self.state.row(name)["resync"]
        req = rs.get("request")
        if not req or req.get("delivered") or rt is None or rt.connection is None:
            return
        rt.connection.send_control({"resync": {"full": req["full"], "ranges": req["ranges"],
                                               "reason": req["reason"], "go": bool(req["now"])}})
        req["delivered"] = True
        self.state.update(name, resync=rs)

    def tick(self, name: str) -> None:
        """Deliver pending requests; start a waiting resync when its window opens (or it was asked for now)."""
        rt = self.runtimes.get(name)
        if rt is None or rt.connection is None:
            return
        self.deliver(name)
        info = rt.agent_stats.get("resync") or {}
        if info.get("dirty", 0) and not info.get("running"):
            req = self.state.row(name)["resync"].get("request") or {}
            if req.get("now") or in_window(self.state.policy_of(name).resync_window, time.time()):
                rt.connection.send_control({"resync": {"go": True}})

    def _open(self, name: str) -> bool:
        return any(e is None for _, e in self.state.row(name)["resync"].get("inconsistent", []))

    def status(self, name: str) -> dict[str, Any]:
        row = self.state.row(name)
        rt = self.runtimes.get(name)
        rs = row["resync"]
        # what the agent last said, only while it is connected (a cut resync is not "running")
        info = (rt.agent_stats.get("resync") if rt and rt.connection else None) or {}
        pending = int(info.get("dirty", 0)) + int(info.get("inflight", 0))
        req = rs.get("request")
        # a request counts until its RESYNC_DONE arrives (the agent's report may lag the request by a heartbeat)
        required = bool(pending or self._open(name) or req)
        total = max(int(info.get("total") or 0), pending, 1)
        running = bool(info.get("running"))
        scheduled = None
        if required and not running and not (req or {}).get("now"):
            scheduled = next_window_start(self.state.policy_of(name).resync_window, time.time())
        return {"required": required, "reason": info.get("reason") or rs.get("reason") or (req or {}).get("reason"),
                "progress": round(1 - pending / total, 4) if required else 1.0,
                "scheduled_for": scheduled, "running": running, "blocks_pending": pending,
                "eta_seconds": info.get("eta_seconds"), "last_done": rs.get("last_done"),
                "error": (rt.agent_stats.get("error") if rt and rt.connection and required else None)}
