"""Initial replication and consistency: how far each disk's initial sync is durable, and from which seq on the
replica is a faithful image of the source.

The process server notes the cursor of durable SYNC records (``note_sync``) so a reconnecting agent resumes
there; the applier reports a disk's SYNC_DONE once it is in the vault (``disk_synced``); the applier and recovery
ask ``is_consistent`` before they hand out a state as a recovery point.
"""

from __future__ import annotations

from ..records import Kind, Record
from .machine_state import MachineState

__all__ = ["SyncCursor"]


class SyncCursor:
    """The initial-sync cursor and consistency of every machine (rows in state.db, a cache of consistent_from)."""

    def __init__(self, state: MachineState) -> None:
        self.state = state
        self._consistent_from: dict[str, int] = {}

    def note_sync(self, name: str, sync: dict[int, int], recs: list[Record]) -> None:
        """Remember how far initial replication is durable, so a reconnecting agent resumes there.

        ``sync`` (disk index → bytes durable) is the runtime's own cursor, advanced here."""
        changed = False
        for r in recs:
            if r.kind == Kind.SYNC:
                end = r.offset + r.length
                if end > sync.get(r.disk, 0):
                    sync[r.disk] = end
                    changed = True
            elif r.kind == Kind.SYNC_DONE:
                changed = True
        if changed:
            row = self.state.row(name)
            done = {r.disk for r in recs if r.kind == Kind.SYNC_DONE}
            disks = []
            for d in row["disks"]:
                d = dict(d)
                d["sync_cursor"] = d["size"] if d["index"] in done else sync.get(d["index"], 0)
                disks.append(d)
            self.state.update(name, disks=disks)

    def disk_synced(self, name: str, disk: int, seq: int) -> None:
        """A SYNC_DONE record reached the vault: the disk's replica is consistent from ``seq`` on."""
        row = self.state.row(name)
        disks = [dict(d, synced=True, consistent_from=seq) if d["index"] == disk else d for d in row["disks"]]
        self.state.update(name, disks=disks)
        if all(d.get("synced") for d in disks):
            cfrom = max(d.get("consistent_from", 0) for d in disks)
            self._consistent_from[name] = cfrom
            self.state.update(name, state="protected")
            self.state.event("protected", name, seq=cfrom)

    def consistent_from(self, name: str) -> int | None:
        """First seq at which every disk's replica is consistent (initial replication done), or None."""
        c = self._consistent_from.get(name)
        if c is None:
            row = self.state.row(name)
            if row["state"] != "protected" or not row["disks"]:
                return None
            c = self._consistent_from[name] = max(d.get("consistent_from", 0) for d in row["disks"])
        return c

    def is_consistent(self, name: str, seq: int) -> bool:
        """True when the replica at ``seq`` is a faithful image of the source (no sync or resync under way)."""
        c = self.consistent_from(name)
        if c is None or seq < c:
            return False
        for start, end in self.state.row(name)["resync"].get("inconsistent", []):
            if seq >= start and (end is None or seq < end):
                return False
        return True
