"""A new appliance home: CA, server and admin certificates, passphrase (0600), vault key (keyring), state.db."""

from __future__ import annotations

import secrets as pysecrets
import socket
import uuid
from pathlib import Path
from typing import Any

from .. import pki
from ..errors import Conflict, InvalidInput
from ..home import ApplianceHome
from ..secrets import create_vault_key
from .control_http import ADMIN_CN
from .state import StateDB

__all__ = ["init_home"]


def init_home(root: Path, *, control_port: int = 443, data_port: int = 9443, vault: Path | None = None,
              listen: str = "0.0.0.0", hosts: list[str] | None = None) -> dict[str, Any]:
    """Create an appliance home: CA, server and admin certificates, passphrase (0600), vault key (keyring)."""
    home = ApplianceHome(root)
    if home.config.exists():
        raise Conflict(f"{root} is already an appliance home", advice="Use another --home, or run the existing one.")
    for p, what in ((control_port, "control port"), (data_port, "data port")):
        if not 0 < p < 65536:
            raise InvalidInput(f"{what} {p} is out of range", advice="Use a TCP port between 1 and 65535.")
    if control_port == data_port:
        raise InvalidInput("control and data ports must differ")
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    home.pki.mkdir(exist_ok=True, mode=0o700)
    appliance_id = uuid.uuid4().hex
    ca = pki.CA.create(f"Lifeboat appliance CA {appliance_id[:8]}")
    ca.save(home.ca_cert, home.ca_key)
    skey = pki.new_key()
    names = sorted({"localhost", "127.0.0.1", socket.gethostname(), *(hosts or [])})
    scert = ca.issue(skey.public_key(), f"lifeboat-appliance-{appliance_id[:8]}", server=True, hosts=names)
    home.server_cert.write_bytes(pki.cert_pem(scert))
    pki.write_private(home.server_key, pki.key_pem(skey))
    akey = pki.new_key()
    acert = ca.issue(akey.public_key(), ADMIN_CN, server=False)
    home.admin_cert.write_bytes(pki.cert_pem(acert))
    pki.write_private(home.admin_key, pki.key_pem(akey))
    passphrase = pysecrets.token_urlsafe(24)
    pki.write_private(home.passphrase, (passphrase + "\n").encode())
    create_vault_key(appliance_id)
    cfg = {"format": 1, "appliance_id": appliance_id, "listen": listen, "control_port": control_port,
           "data_port": data_port, "admin_serial": str(acert.serial_number),
           "vault": {"kind": "local", "path": str((vault or root / "vault").resolve())}}
    home.save_config(cfg)
    db = StateDB(home.db)
    db.set_meta("appliance_id", appliance_id)
    db.close()
    return cfg
