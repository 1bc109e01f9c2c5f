"""The appliance's own recovery through the account that runs it: the kit sealed, imported and the on-demand backup
taken by the running appliance (admin mutual TLS, engine/appliance/config_backups.py ``kit_routes``), because its
keyring is not the operator's when it is a service under another account (a Windows service runs as LocalSystem).
This account's keyring is used only when no appliance runs and it holds the keys. Used by ``lifeboat appliance``
(engine/backup/cli.py) and the console API (engine/api.py)."""

from __future__ import annotations

import asyncio
import base64
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import ApplianceNotRunning, ApplianceUnreachable, KeyringError, LifeboatError, NotReady
from ..home import ApplianceHome
from . import archive as bk
from .kit import seal, unseal

__all__ = ["export_kit", "import_kit", "backup_now", "hand_kit_to_service", "service_elsewhere",
           "wait_until_unlocked"]


def export_kit(home: ApplianceHome, passphrase: str) -> tuple[str, bytes, str]:
    """(appliance id, sealed kit, who sealed it): this account's keyring when it holds the key, else the running
    appliance."""
    try:
        kit = bk.kit_from_home(home)
        return kit.appliance_id, seal(kit, passphrase), "this account's keyring"
    except KeyringError as exc:   # the key is in the keyring of the account that runs the appliance
        aid, blob = _kit_from_appliance(home, passphrase, exc)
        return aid, blob, "the running appliance"


def _kit_from_appliance(home: ApplianceHome, passphrase: str, why: KeyringError) -> tuple[str, bytes]:
    """The kit sealed by the running appliance of ``home`` (its keyring is the service account's: on Windows
    LocalSystem's, not the operator's). Without a running appliance, the keyring error stands."""
    from ..client import AdminClient
    try:
        r = AdminClient(home.root, timeout=120).call("POST", "/v1/recovery-kit", {"passphrase": passphrase})
    except ApplianceUnreachable:
        raise KeyringError(why.message, advice="Start the appliance of this home (its service has the key in its "
                           "own keyring) and run this again, or run this as the account the appliance runs as.") \
            from None
    return str(r["appliance_id"]), base64.b64decode(r["kit"])


def service_elsewhere(root: Path) -> bool:
    """True when the appliance of ``root`` runs as a service under another account than this one, so this
    account's keyring is not the appliance's: a Windows service (LocalSystem). A systemd unit runs with the keyring
    environment of the operator who installed it (engine/service/cli.py ``KEYRING_ENV``)."""
    if sys.platform != "win32":
        return False
    from ..service.cli import installed_service
    try:
        return bool(installed_service(ApplianceHome(root))["installed"])
    except LifeboatError:
        return False


def wait_until_unlocked(home: ApplianceHome, timeout: float = 120.0) -> None:
    """After a kit was imported into a locked appliance: wait until it answers with its roles started."""
    from ..client import AdminClient
    end = time.monotonic() + timeout
    while True:
        try:
            if AdminClient(home.root, timeout=10).call("GET", "/v1/status").get("state") != "locked":
                return
        except ApplianceUnreachable:
            pass    # between the locked control API and the appliance's own
        if time.monotonic() > end:
            raise NotReady(f"the kit is in the appliance's keyring, but the appliance did not start its roles within "
                           f"{timeout:.0f} s", advice=f"See the appliance's log ({home.log}) and "
                           f"`lifeboat appliance service-status --home {home.root}`.")
        time.sleep(0.5)


def _import_remote(home: ApplianceHome, blob: bytes, passphrase: str) -> dict[str, Any]:
    """The kit posted to the running appliance of ``home`` (admin mutual TLS), which unseals it and stores its keys
    in its own keyring; a locked appliance then starts its roles (waited for). ApplianceNotRunning when none runs."""
    from ..client import AdminClient
    r: dict[str, Any] = AdminClient(home.root, timeout=120).call(
        "POST", "/v1/recovery-kit/import", {"kit": base64.b64encode(blob).decode(), "passphrase": passphrase})
    if r.get("unlocked"):
        wait_until_unlocked(home)
    return r


def import_kit(home: ApplianceHome, blob: bytes, passphrase: str) -> dict[str, Any]:
    """The kit's keys into the running appliance's keyring (unlocking a locked one), or, with none running, into
    this account's; ``stored_in`` says which. Refused (LB_KEYRING) when none runs but the home's service runs under
    another account: its keyring must receive them."""
    try:
        r = _import_remote(home, blob, passphrase)
        r["stored_in"] = "the running appliance's keyring"
    except ApplianceNotRunning as exc:
        if service_elsewhere(home.root):
            raise KeyringError(f"{exc.message}; its service runs under another account, whose keyring must receive "
                               "the kit", advice="Start the appliance's service (without its key it starts locked "
                               "and waits for the kit), then run this again.") from None
        r = bk.install_kit(home, unseal(blob, passphrase))
        r["stored_in"] = "this account's keyring"
    return r


async def _to_vault(cfg: dict[str, Any], name: str, data: bytes) -> str | None:
    from ..secrets import load_vault_key
    from ..vault.registry import open_vault
    vault = open_vault(cfg["vault"], load_vault_key(cfg["appliance_id"]))
    try:
        await vault.put_config_backup(name, data)
        for old in (await vault.config_backups())[:-bk.KEEP]:
            await vault.remove_config_backup(old)
        return name
    finally:
        await vault.close()


def _backup_here(home: ApplianceHome, cfg: dict[str, Any]) -> dict[str, Any]:
    """A backup taken by this process, with this account's keyring: only when it holds the appliance's vault key
    (else a backup key made here would seal a backup no kit opens)."""
    from ..secrets import load_vault_key
    try:
        load_vault_key(cfg["appliance_id"])
    except KeyringError as exc:
        raise KeyringError(f"no appliance runs for {home.root}, and this account's keyring does not give its vault "
                           f"key ({exc.message})", advice="Start the appliance of this home (its service holds the key in "
                           "its own keyring) and run this again: the appliance takes the backup.") from None
    name, data = bk.take(home, kind="manual")
    path = bk.save(home, name, data)
    in_vault = asyncio.run(_to_vault(cfg, name, data))
    return {"name": name, "path": str(path), "size": len(data), "vault": in_vault}


def backup_now(home: ApplianceHome) -> dict[str, Any]:
    """A configuration backup now, kept in the home and the vault: ``{"name", "path", "size", "vault",
    "taken_by"}``. The running appliance takes it (sealed with the keys it holds); with none running, this process
    does, only if this account's keyring holds the vault key."""
    from ..client import AdminClient
    cfg = home.load_config()
    try:
        r: dict[str, Any] = AdminClient(home.root, timeout=600).call("POST", "/v1/config-backup", {})
        r["taken_by"] = "the running appliance"
    except ApplianceNotRunning:
        r = _backup_here(home, cfg)
        r["taken_by"] = "this command"
    return r


def hand_kit_to_service(home: ApplianceHome, blob: bytes, passphrase: str, wait: float | None) -> dict[str, Any]:
    """``restore --service``: start the home's service if one is installed, wait (``wait`` seconds; 120 with a
    service, else 0) for the appliance to answer (locked: no key in its keyring), then import the kit into it.
    ``{"keyring": "pending"}`` when nothing answered: the home is complete, the key is for ``import-kit`` later."""
    from ..client import AdminClient
    from ..service.cli import installed_service, start_service
    started = None
    try:
        if installed_service(home)["installed"]:
            started = start_service(home)
    except LifeboatError as exc:
        print(f"lifeboat: the appliance's service did not start: {exc}", file=sys.stderr)
    end = time.monotonic() + (wait if wait is not None else 120.0 if started else 0.0)
    while True:
        try:
            AdminClient(home.root, timeout=10).call("GET", "/v1/status")
            break
        except ApplianceUnreachable:
            if time.monotonic() >= end:
                return {"keyring": "pending", "service": started}
            time.sleep(0.5)
    r = _import_remote(home, blob, passphrase)
    return {"keyring": "the running appliance", "service": started, "unlocked": bool(r.get("unlocked")),
            "restored_entries": r.get("restored_entries", [])}


