"""``lifeboat vault set`` / ``vault show``: choose the vault backend of an appliance home (``appliance.json``
``vault``), with the credential in the OS keyring.

Setting is allowed on an initialised home before the first machine is protected (a machine's history cannot move
between backends), and only after a live check of the target: account reachable through the egress settings,
credential accepted, container present and writable. Any failure leaves the home exactly as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import net
from ..errors import Conflict, InvalidInput
from ..home import ApplianceHome
from ..secrets import delete_secret, get_secret, set_secret
from ..vault.azure.rest import Credential, check_container_name, parse_account_url
from ..vault.azure.vault import check_connection, connect
from .state import StateDB

__all__ = ["set_azure_vault", "show_vault"]


def azure_secret_name(appliance_id: str) -> str:
    return f"vault-azure/{appliance_id}"


def set_azure_vault(root: Path, account_url: str, container: str, *, key: str | None = None,
                    sas: str | None = None, retry_for: float = 15.0) -> dict[str, Any]:
    """Make the home's vault the Azure container; returns what ``show_vault`` shows. Raises InvalidInput (bad URL,
    name or credential form), Conflict (machines already protected), CloudAuthFailed / ContainerMissing /
    CloudUnreachable / EgressRefused (the check failed): nothing changed then."""
    home = ApplianceHome(root)
    cfg = home.load_config()
    parse_account_url(account_url)
    check_container_name(container)
    secret = (key if key is not None else sas or "").strip()
    if not secret:
        raise InvalidInput("no account key or SAS token was given on standard input",
                           advice="Pipe the key (or SAS token) in: `... --key-stdin < keyfile`.")
    cred = Credential(key=secret) if key is not None else Credential(sas=secret)
    db = StateDB(home.db)
    try:
        protected = [m["name"] for m in db.machines() if m.get("protected")]
        # the check connects as the appliance will: through the home's egress settings (allow-list, proxy)
        from .network import NetworkSettings
        policy = NetworkSettings(db, cfg["appliance_id"], cfg.get("vault") or {}).egress.policy()
    finally:
        db.close()
    if protected:
        raise Conflict(f"machines are already protected into the current vault ({', '.join(protected[:5])})",
                       advice="The vault is chosen before the first machine is protected; a new appliance home "
                              "is needed to move to another vault.")
    old_policy = net.set_egress_policy(policy)
    client = connect(account_url, container, cred, retry_for=retry_for, timeout=10.0)
    try:
        check = check_connection(client)
    finally:
        client.close()
        net.set_egress_policy(old_policy)
    name = azure_secret_name(cfg["appliance_id"])
    old = get_secret(name)
    set_secret(name, secret)
    cfg = dict(cfg)
    vault = {k: v for k, v in (cfg.get("vault") or {}).items() if k == "reserve"}
    vault.update({"kind": "azure", "account_url": account_url.rstrip("/"), "container": container,
                  "auth": "key" if key is not None else "sas", "secret": name})
    cfg["vault"] = vault
    try:
        home.save_config(cfg)
    except BaseException:
        if old is None:
            delete_secret(name)
        else:
            set_secret(name, old)
        raise
    return {**show_vault(root), "check": check}


def show_vault(root: Path) -> dict[str, Any]:
    """The home's vault settings (never the credential: only where it is kept)."""
    v = dict(ApplianceHome(root).load_config().get("vault") or {})
    out: dict[str, Any] = {"kind": v.get("kind", "local")}
    if out["kind"] == "azure":
        out.update({"account_url": v.get("account_url"), "container": v.get("container"), "auth": v.get("auth"),
                    "credential": f"OS keyring: lifeboat / {v.get('secret')}",
                    "credential_present": bool(v.get("secret") and get_secret(str(v["secret"])))})
    else:
        out["path"] = v.get("path")
    if "reserve" in v:
        out["reserve"] = v["reserve"]
    return out
