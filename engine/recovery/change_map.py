"""What a recovered machine changed since its reverse replication (failback) began: the failover-side twin of the
agent's dirty map and activity log (engine/agent/dirty_map.py, DRBD's two structures), kept in
``HOME/failovers/<machine>/reverse/``.

* ``before_write`` makes the 64 MiB extents of a write durable in the activity log (one ``fdatasync`` per newly
  active extent) *before* the write reaches the recovered disk, and marks its 64 KiB blocks dirty in memory;
* ``flushed`` runs after the guest's FLUSH made the disk durable: the dirty map is written (atomically) and the
  activity log cleared.

After a kill of the appliance the dirty blocks are the persisted map plus every block of the extents in the
activity log: a write the recovered VM had acknowledged is never missing from what reverse replication sends.
"""

from __future__ import annotations

from pathlib import Path

from ..agent.dirty_map import EXTENT, ActivityLog, DirtyMap


class ChangeMap:
    def __init__(self, folder: Path, sizes: dict[int, int]) -> None:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.folder = folder
        self.dirty = DirtyMap(folder, sizes)
        self.al = ActivityLog(folder / "activity.log")
        for disk, ext in self.al.recovered:   # writes of a killed run that may not be in the map
            if disk in sizes:
                self.dirty.mark(disk, ext * EXTENT, min(EXTENT, max(0, sizes[disk] - ext * EXTENT)))
        self.dirty.persist()
        self.al.clear()

    def mark_all(self) -> None:
        for disk in self.dirty.sizes:
            self.dirty.mark_all(disk)
        self.dirty.persist()

    def before_write(self, disk: int, offset: int, length: int) -> None:
        self.al.touch(disk, offset, length)
        self.dirty.mark(disk, offset, length)

    def flushed(self) -> None:
        self.dirty.persist()
        self.al.clear()

    def close(self) -> None:
        self.dirty.persist()
        self.al.clear()
        self.al.close()
