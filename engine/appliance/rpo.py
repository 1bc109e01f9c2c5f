"""RPO that is never under-reported, and each machine's RPO history (docs/ARCHITECTURE.md §7).

RPO is what a failover now would lose: the age of the oldest write the vault cannot recover yet. The appliance
only sees a machine's writes while its agent talks to it, so:

- :class:`RecoveryClock` keeps, on the **appliance's** clock, the last moment the appliance knew the machine fully
  recoverable (everything acknowledged applied and, by the last heartbeat, nothing pending at the agent) and when
  it last heard from the agent. While the agent is heard from, RPO is the age of the oldest pending write (agent
  capture times are moved onto the appliance's clock by the offset the heartbeats show, so a skewed agent clock
  changes nothing); once it is absent, or its heartbeats stop for :data:`SILENT_AFTER` seconds (a stalled or
  saturated link), RPO grows from that last recoverable moment. Both times are persisted in state.db (``machines.recoverable_at``/``last_heard``),
  so after an appliance restart an absent agent's RPO counts from them, never from start-up.
- :class:`RpoHistory` keeps samples in state.db (``rpo_history``): the worst RPO of each 5 s for the last hour
  (tier 0) and of each minute for :data:`KEEP_SECONDS` (tier 1): at most 720 + 1,500 rows per machine.
"""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .state import StateDB

__all__ = ["SILENT_AFTER", "RecoveryClock", "RpoHistory"]

#: A connected agent heartbeats every second: this long without one (a stalled or saturated link, a hung agent),
#: the RPO counts the whole time since the machine was last known recoverable.
SILENT_AFTER = 1.5
#: The persisted times may lag the live ones by this much (an RPO after a restart is over-, never under-reported).
PERSIST_EVERY = 5.0
#: Heartbeats whose clock offset is remembered; the smallest is used (the one with the least transit delay).
OFFSET_SAMPLES = 60

TIER0_STEP, TIER0_KEEP = 5.0, 3600.0
TIER1_STEP = 60.0
KEEP_SECONDS = 25 * 3600.0


class RecoveryClock:
    """When the appliance last knew one machine fully recoverable, and last heard from its agent (epoch seconds,
    appliance clock). ``recoverable_at`` None: never known (no recovery point yet, or an older state.db)."""

    def __init__(self, recoverable_at: float | None = None, last_heard: float | None = None) -> None:
        self.recoverable_at = recoverable_at
        self.last_heard = last_heard
        self.heartbeat_at: float | None = None         # when the last heartbeat was sent (appliance clock)
        self._heartbeat_mono: float | None = None      # monotonic time it arrived (this run only)
        self._offsets: collections.deque[int] = collections.deque(maxlen=OFFSET_SAMPLES)
        self.offset_ns = 0                              # appliance clock − agent clock
        self.agent_pending_ns = 0                       # oldest write the agent holds, appliance clock (0: none)
        self.persisted: tuple[float | None, float | None] = (recoverable_at, last_heard)

    def heard(self) -> None:
        """A frame arrived from the agent."""
        self.last_heard = time.time()

    def heartbeat(self, agent_now_ns: int | None, oldest_pending_ns: int) -> None:
        """The agent's heartbeat: its clock when it sent it (newer agents) and the capture time of its oldest write
        not yet acknowledged (agent clock; 0: none)."""
        self.heard()
        self._heartbeat_mono = time.monotonic()
        now_ns = time.time_ns()
        if agent_now_ns:
            self._offsets.append(now_ns - agent_now_ns)
            self.offset_ns = min(self._offsets)
        self.heartbeat_at = (self.to_local_ns(agent_now_ns) if agent_now_ns else now_ns) / 1e9
        self.agent_pending_ns = self.to_local_ns(oldest_pending_ns) if oldest_pending_ns else 0

    def to_local_ns(self, agent_ns: int) -> int:
        """An agent capture time on the appliance's clock (never in the future)."""
        return min(agent_ns + self.offset_ns, time.time_ns())

    def fresh(self, connected: bool) -> bool:
        """Whether the agent's view is current: connected, and its last heartbeat came within :data:`SILENT_AFTER`."""
        return (connected and self._heartbeat_mono is not None
                and time.monotonic() - self._heartbeat_mono <= SILENT_AFTER)

    def rpo(self, *, connected: bool, cache_oldest_ns: int, now: float | None = None) -> float:
        """Seconds a failover now would lose; advances ``recoverable_at`` from the last heartbeat.

        ``cache_oldest_ns``: capture time (appliance clock) of the oldest write in the process server's cache
        not yet in the vault (0: none). While heartbeats come on time, writes made since the last one are not
        counted (the RPO's resolution is the heartbeat interval); once they stop, the RPO is the whole time since
        the machine was last known recoverable."""
        now = time.time() if now is None else now
        pending = [t / 1e9 for t in (self.agent_pending_ns, cache_oldest_ns) if t]
        if connected and self.heartbeat_at is not None:
            # Everything captured before the heartbeat was sent, bar what it says is pending, is in the vault.
            self.advance(min([*pending, self.heartbeat_at]))
        oldest = max(0.0, now - min(pending)) if pending else 0.0
        if self.fresh(connected) or self.recoverable_at is None:
            return oldest
        return max(oldest, now - self.recoverable_at)

    def advance(self, t: float) -> None:
        if self.recoverable_at is None or t > self.recoverable_at:
            self.recoverable_at = t

    def needs_persist(self) -> bool:
        r, h = self.persisted

        def moved(new: float | None, old: float | None) -> bool:
            return new is not None and (old is None or new - old >= PERSIST_EVERY)
        return moved(self.recoverable_at, r) or moved(self.last_heard, h)


class RpoHistory:
    """Per-machine RPO samples in state.db, downsampled (the worst value of each step is kept)."""

    def __init__(self, db: StateDB) -> None:
        self.db = db
        self._buckets: dict[tuple[str, int], tuple[float, float]] = {}   # (machine, tier) → (bucket start, worst)
        self._pending: list[tuple[str, int, float, float]] = []
        self._pruned = 0.0

    def note(self, machine: str, rpo: float, now: float | None = None) -> None:
        """One observation (the status task calls this every second per machine)."""
        now = time.time() if now is None else now
        for tier, step in ((0, TIER0_STEP), (1, TIER1_STEP)):
            start = now - now % step
            cur = self._buckets.get((machine, tier))
            if cur is not None and cur[0] != start:
                self._pending.append((machine, tier, cur[0], cur[1]))
                cur = None
            self._buckets[(machine, tier)] = (start, rpo if cur is None else max(cur[1], rpo))

    def flush(self, now: float | None = None, *, final: bool = False) -> None:
        """Write the finished buckets (one transaction), and prune old rows about once a minute; ``final`` (at
        stop) writes the open buckets too."""
        now = time.time() if now is None else now
        if final:
            self._pending += [(m, tier, start, worst) for (m, tier), (start, worst) in self._buckets.items()]
            self._buckets.clear()
        rows, self._pending = self._pending, []
        prune = now - self._pruned >= 60
        if not rows and not prune:
            return
        db = self.db.db
        db.execute("BEGIN")
        try:
            db.executemany("INSERT INTO rpo_history(machine, tier, time, rpo) VALUES (?, ?, ?, ?)", rows)
            if prune:
                self._pruned = now
                db.execute("DELETE FROM rpo_history WHERE (tier=0 AND time<?) OR time<?",
                           (now - TIER0_KEEP, now - KEEP_SECONDS))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def forget(self, machine: str) -> None:
        self._buckets = {k: v for k, v in self._buckets.items() if k[0] != machine}

    def history(self, machine: str, since: float | None = None, now: float | None = None) -> list[tuple[float, float]]:
        """(epoch, RPO seconds) oldest first: 1-minute samples beyond the last hour, 5 s samples within it, and the
        buckets still open."""
        now = time.time() if now is None else now
        since = now - KEEP_SECONDS if since is None else since
        split = now - TIER0_KEEP
        rows = self.db.db.execute(
            "SELECT time, rpo FROM rpo_history WHERE machine=? AND time>=? AND "
            "((tier=1 AND time<?) OR (tier=0 AND time>=?)) ORDER BY time", (machine, since, split, split)).fetchall()
        out = [(float(t), float(r)) for t, r in rows]
        pend = sorted((t, r) for m, tier, t, r in self._pending if m == machine and tier == 0 and t >= since)
        cur = self._buckets.get((machine, 0))
        if cur is not None and cur[0] >= since:
            pend.append(cur)
        seen = {t for t, _ in out}
        out += [(t, r) for t, r in pend if t not in seen]
        out.sort()
        return out
