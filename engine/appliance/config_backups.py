"""Scheduled configuration backups of the appliance (engine/backup/archive.py), kept in the home and in the vault,
and what a restored appliance does at its first start (ask every protected machine for a checksum resync).

``appliance.json``'s ``backup.every`` sets the interval in seconds (default daily; 0 turns scheduled backups off).
A failed backup raises an alert (``LB_BACKUP_FAILED``) and is retried at the next check; a good one clears it.

``POST /v1/recovery-kit`` (admin) seals the recovery kit inside the appliance and returns it sealed: the vault key
is read from the keyring of the account that runs the appliance, which is not the operator's when the appliance is
a Windows service (LocalSystem). The passphrase travels only over the admin mutual-TLS link, in the body.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from ..backup import archive
from ..errors import LifeboatError
from ..home import ApplianceHome
from ..vault.base import Vault
from ..events import Alert, EventBus
from .machine_state import MachineState
from .resync import Resync

if TYPE_CHECKING:
    from aiohttp import web

    from .control_http import AdminCheck

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


def kit_routes(home: ApplianceHome, state: MachineState, require_admin: AdminCheck) -> list[web.RouteDef]:
    """``POST /v1/recovery-kit`` ``{"passphrase"}`` → ``{"appliance_id", "kit"}`` (the sealed kit, base64)."""
    from aiohttp import web

    from ..backup.kit import seal
    from .control_http import read_json

    async def export_kit(request: web.Request) -> web.Response:
        require_admin(request)
        b = await read_json(request)
        passphrase = b.text("passphrase", required=True, max_len=1024)
        assert passphrase is not None

        def sealed() -> tuple[str, bytes]:
            kit = archive.kit_from_home(home)
            return kit.appliance_id, seal(kit, passphrase)   # scrypt: a second of CPU, off the loop
        aid, blob = await asyncio.to_thread(sealed)
        who = "".join(c for c in request.headers.get("X-Lifeboat-Operator", "")[:64] if c.isprintable())
        state.db.add_event("recovery-kit-exported", None, by=f"lifeboat-admin ({who})" if who else "lifeboat-admin")
        log.warning("the recovery kit was exported through the control API%s", f" by {who}" if who else "")
        return web.json_response({"appliance_id": aid, "kit": base64.b64encode(blob).decode()})
    return [web.post("/v1/recovery-kit", export_kit)]
