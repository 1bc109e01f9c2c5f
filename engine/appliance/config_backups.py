"""Scheduled configuration backups of the appliance (engine/backup/archive.py), kept in the home and in the vault,
and what a restored appliance does at its first start (ask every protected machine for a checksum resync).

``appliance.json``'s ``backup.every`` sets the interval in seconds (default daily; 0 turns scheduled backups off).
A failed backup raises an alert (``LB_BACKUP_FAILED``) and is retried at the next check; a good one clears it.

``POST /v1/recovery-kit`` (admin) seals the recovery kit inside the appliance and returns it sealed: the vault key
is read from the keyring of the account that runs the appliance, which is not the operator's when the appliance is
a Windows service (LocalSystem). ``POST /v1/recovery-kit/import`` puts a kit's keys into that keyring (and unlocks an
appliance that started without its vault key, engine/appliance/locked.py); ``POST /v1/config-backup`` takes an
on-demand backup sealed with the keys the appliance holds. Passphrases travel only over the admin mutual-TLS link,
in the body.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..backup import archive
from ..errors import LifeboatError, NotReady
from ..events import Alert, EventBus
from ..home import ApplianceHome
from ..vault.base import Vault
from .machine_state import MachineState
from .resync import Resync

if TYPE_CHECKING:
    from aiohttp import web

    from .control_http import AdminCheck
    from .state import StateDB

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
        self._lock = asyncio.Lock()   # one backup at a time: scheduled and on-demand ones queue

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
        async with self._lock:
            return await self._run(kind)

    async def _run(self, kind: str) -> dict[str, Any]:
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


def _who(request: web.Request) -> str:
    who = "".join(c for c in request.headers.get("X-Lifeboat-Operator", "")[:64] if c.isprintable())
    return f"lifeboat-admin ({who})" if who else "lifeboat-admin"


def kit_routes(home: ApplianceHome, db: StateDB, require_admin: AdminCheck, *,
               backups: Callable[[], ConfigBackups | None] | None = None,
               on_kit_installed: Callable[[], None] | None = None) -> list[web.RouteDef]:
    """The routes that need the keyring of the account running the appliance (a Windows service's is
    LocalSystem's, not the operator's):

    - ``POST /v1/recovery-kit`` ``{"passphrase"}`` → ``{"appliance_id", "kit"}`` (the sealed kit, base64);
    - ``POST /v1/recovery-kit/import`` ``{"kit", "passphrase"}`` → ``{"appliance_id", "keys", "restored_entries",
      "unlocked"}``: the kit's keys into the appliance's keyring (``on_kit_installed`` then runs: a locked
      appliance starts its roles);
    - ``POST /v1/config-backup`` ``{}`` → ``{"name", "path", "size", "vault"}`` (only where ``backups`` gives the
      running appliance's ``ConfigBackups``).

    Passphrases travel only in the body of the admin mutual-TLS link; they are never stored or logged."""
    from aiohttp import web

    from ..backup.kit import KitCorrupt, seal, unseal
    from .control_http import read_json

    lock = asyncio.Lock()

    async def export_kit(request: web.Request) -> web.Response:
        require_admin(request)
        b = await read_json(request)
        passphrase = b.text("passphrase", required=True, max_len=1024)
        assert passphrase is not None

        def sealed() -> tuple[str, bytes]:
            kit = archive.kit_from_home(home)
            return kit.appliance_id, seal(kit, passphrase)   # scrypt: a second of CPU, off the loop
        aid, blob = await asyncio.to_thread(sealed)
        who = _who(request)
        db.add_event("recovery-kit-exported", None, by=who)
        log.warning("the recovery kit was exported through the control API by %s", who)
        return web.json_response({"appliance_id": aid, "kit": base64.b64encode(blob).decode()})

    async def import_kit(request: web.Request) -> web.Response:
        require_admin(request)
        b = await read_json(request)
        text = b.text("kit", required=True, max_len=48 * 1024)
        passphrase = b.text("passphrase", required=True, max_len=1024)
        assert text is not None and passphrase is not None
        try:
            blob = base64.b64decode(text, validate=True)
        except binascii.Error:
            raise KitCorrupt("the kit in the request is not base64") from None

        def install() -> dict[str, Any]:
            kit = unseal(blob, passphrase)   # LB_KIT_PASSPHRASE / LB_KIT_CORRUPT: nothing is written
            return archive.install_kit(home, kit)
        who = _who(request)
        async with lock:   # two imports at once would race on the keyring's check-then-write
            try:
                r = await asyncio.to_thread(install)
            except LifeboatError as exc:   # recorded (who, which code), never the passphrase or the kit
                db.add_event("recovery-kit-import-refused", None, by=who, code=exc.code)
                log.warning("a recovery kit import by %s was refused: %s", who, exc.code)
                raise
        db.add_event("recovery-kit-imported", None, by=who, keys=r["keys"], restored_entries=r["restored_entries"])
        log.warning("the recovery kit was imported through the control API by %s", who)
        r["unlocked"] = on_kit_installed is not None
        if on_kit_installed is not None:
            on_kit_installed()
        return web.json_response(r)

    async def config_backup(request: web.Request) -> web.Response:
        require_admin(request)
        await read_json(request)   # no fields; a body, if any, must still be a JSON object
        cb = backups() if backups else None
        if cb is None:
            raise NotReady("the appliance has not finished starting", advice="Run the command again in a moment.")
        r = await cb.run(kind="manual")
        db.add_event("config-backup-requested", None, by=_who(request), name=r["name"])
        return web.json_response(r)

    routes = [web.post("/v1/recovery-kit", export_kit), web.post("/v1/recovery-kit/import", import_kit)]
    if backups is not None:
        routes.append(web.post("/v1/config-backup", config_backup))
    return routes

