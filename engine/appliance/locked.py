"""The appliance without its vault key: "locked". It serves the control API's admin routes that need no key and
replicates nothing, until a recovery kit is imported into the keyring of the account that runs it.

Why: a Windows service runs as LocalSystem, whose keyring (Credential Manager) the operator cannot write. An
appliance home restored on a new machine (``lifeboat appliance restore --service``) holds certificates, database and
settings, but no key: the service starts locked, the operator posts the kit and its passphrase over the admin mutual-TLS
link (``lifeboat appliance import-kit``), the appliance stores the keys in its own keyring and starts its roles.

While locked: ``GET /v1/status`` answers ``{"state": "locked", "error": {LB_KEYRING …}}``; ``POST
/v1/recovery-kit/import`` unlocks; every other route (after the admin check) is ``LB_KEYRING`` with the advice to
import the kit. The data port is not opened (agents retry on their own and keep their journals); nothing is written
to the vault. A locked appliance never stops by itself: it waits for the kit or for its stop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from .. import pki
from ..errors import KeyringError
from ..home import ApplianceHome
from .config_backups import kit_routes
from .control import _errors
from .control_http import AdminCheck
from .request_body import MAX_BODY, json_response
from .state import StateDB

__all__ = ["LockedAppliance", "locked_reason"]

log = logging.getLogger(__name__)


def locked_reason(appliance_id: str) -> KeyringError | None:
    """Why the appliance of ``appliance_id`` cannot start its roles here (its vault key is not in this account's
    keyring, or the keyring cannot be read), or None when it can."""
    from ..secrets import get_secret, vault_key_name
    try:
        if get_secret(vault_key_name(appliance_id)):
            return None
    except KeyringError as exc:
        return KeyringError(f"the appliance is locked: {exc.message}",
                            advice="Make the keyring of the account that runs the appliance usable, then restart it.")
    return KeyringError(f"the appliance is locked: the vault key of appliance {appliance_id} is not in the keyring of "
                        "the account that runs it", advice="Import the recovery kit into the running appliance: "
                        "`lifeboat appliance import-kit --home DIR --kit FILE --passphrase-stdin`.")


class LockedAppliance:
    """The control port of an appliance whose vault key is missing; ``unlocked`` is set once a kit is imported."""

    def __init__(self, home: ApplianceHome, reason: KeyringError, *, listen: str | None = None) -> None:
        self.home = home
        self.cfg = home.load_config()
        self.listen = listen or self.cfg.get("listen", "0.0.0.0")
        self.reason = reason
        self.unlocked = asyncio.Event()
        self.db: StateDB | None = None
        self.runner: web.AppRunner | None = None
        self.control_address: tuple[str, int] | None = None

    async def start(self) -> tuple[str, int]:
        from .listen import listening
        h = self.home
        h.make_private()
        self.db = db = StateDB(h.db)
        db.add_event("appliance-locked", None, code=self.reason.code, reason=self.reason.message)
        require_admin = AdminCheck(self.cfg["admin_serial"])
        wa = web.Application(middlewares=[_errors], client_max_size=MAX_BODY)
        wa.router.add_get("/v1/status", self._status(require_admin))
        wa.router.add_routes(kit_routes(h, db, require_admin, on_kit_installed=self.unlocked.set))
        wa.router.add_route("*", "/{tail:.*}", self._refuse(require_admin))
        self.runner = web.AppRunner(wa, access_log=None)
        await self.runner.setup()
        tls = pki.server_context(h.server_cert, h.server_key, h.ca_cert, require_client=False)

        async def listen(host: str, port: int) -> tuple[str, int]:
            assert self.runner is not None
            site = web.TCPSite(self.runner, host, port, ssl_context=tls)
            await site.start()
            return site._server.sockets[0].getsockname()[:2]  # type: ignore[union-attr,no-any-return]
        self.control_address = await listening("control", self.listen, self.cfg["control_port"], listen)
        log.warning("%s; the control API on port %s serves the admin routes only and nothing is replicated "
                    "until the recovery kit is imported (lifeboat appliance import-kit)", self.reason.message,
                    self.control_address[1])
        return self.control_address

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()   # waits for the import's answer to be sent
            self.runner = None
        if self.db:
            self.db.close()
            self.db = None

    def status(self) -> dict[str, Any]:
        return {"state": "locked", "error": self.reason.to_dict(), "machines": [], "registered": [], "revoked": [],
                "control_port": self.control_address[1] if self.control_address else None, "data_port": None}

    def _status(self, require_admin: AdminCheck) -> Any:
        async def status(request: web.Request) -> web.Response:
            require_admin(request)
            return json_response(self.status())
        return status

    def _refuse(self, require_admin: AdminCheck) -> Any:
        async def refuse(request: web.Request) -> web.Response:
            require_admin(request)
            raise KeyringError(f"{request.method} {request.path[:200]}: {self.reason.message}",
                               advice=self.reason.advice)
        return refuse
