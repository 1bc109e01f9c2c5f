"""Scheduled configuration backups of the appliance (engine/backup/archive.py), kept in the home and in the vault,
and what a restored appliance does at its first start (ask every protected machine for a checksum resync).

``appliance.json``'s ``backup.every`` sets the interval in seconds (default daily; 0 turns scheduled backups off).
A failed backup raises an alert (``LB_BACKUP_FAILED``) and is retried at the next check; a good one clears it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from ..backup import archive
from ..errors import LifeboatError
from ..home import ApplianceHome
from ..vault.base import Vault
from ..events import Alert, EventBus
from .machine_state import MachineState
from .resync import Resync

log = logging.getLogger(__name__)

DEFAULT_EVERY = 86400.0
CHECK_SECONDS = 60.0
RESTORE_REASON = "the appliance was restored from a configuration backup: records it had acknowledged after the " \
                 "backup may be missing from the vault"


class ConfigBackups:
    def __init__(self, home: ApplianceHome, vault: Vault, state: MachineState, bus: EventBus) -> None:
        self.home = home
        self.vault = vault
        self.state = state
        self.bus = bus
        self._running = False

    def every(self) -> float:
        try:
            v = (self.home.load_config().get("backup") or {}).get("every", DEFAULT_EVERY)
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 else DEFAULT_EVERY
        except (LifeboatError, OSError, ValueError):
            return DEFAULT_EVERY

    def due(self, now: float) -> bool:
        every = self.every()
        if every <= 0:
            return False
        newest = max((b.created_at for b in archive.list_backups(self.home)), default=0.0)
        return now - newest >= every

    async def tick(self) -> None:
        if not self._running and self.due(time.time()):
            await self.run(kind="scheduled")

    async def run(self, kind: str = "manual") -> dict[str, Any]:
        """Take a backup now: into the home, then into the vault."""
        self._running = True
        try:
            name, data = await asyncio.to_thread(archive.take, self.home, kind=kind)
            path = await asyncio.to_thread(archive.save, self.home, name, data)
            await self.vault.put_config_backup(name, data)
            for old in (await self.vault.config_backups())[:-archive.KEEP]:
                await self.vault.remove_config_backup(old)
        except (LifeboatError, OSError) as exc:
            log.warning("configuration backup failed: %s", exc)
            self.state.event("config-backup-failed", None, error=str(exc))
            self.bus.emit(Alert(None, "LB_BACKUP_FAILED", f"The appliance's configuration backup failed: {exc}",
                                "Check the home's and the vault's free space and the keyring, then run "
                                "`lifeboat appliance backup`.", severity="warning", component="appliance"))
            raise
        finally:
            self._running = False
        self.bus.emit(Alert(None, "LB_BACKUP_FAILED", "The configuration backup works again.", component="appliance",
                            state="cleared"))
        self.state.event("config-backup", None, name=name, trigger=kind, size=len(data))
        return {"name": name, "path": str(path), "size": len(data), "vault": name}


def resync_after_restore(state: MachineState, resync: Resync) -> list[str]:
    """At the first start of a restored appliance: every protected machine is asked for a checksum resync (sent
    when its agent connects), once. Returns the machines asked."""
    raw = state.db.get_meta(archive.RESTORED_META)
    if not raw:
        return []
    info = json.loads(raw)
    if info.get("resync_requested"):
        return []
    asked = []
    for row in state.rows():
        if row["protected"] and not row["revoked"]:
            resync.request(row["name"], now=True, reason=RESTORE_REASON)
            asked.append(row["name"])
    info["resync_requested"] = asked
    state.db.set_meta(archive.RESTORED_META, json.dumps(info))
    state.event("appliance-restored", None, backup=info.get("name"), machines=asked)
    return asked
