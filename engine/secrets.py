"""Secrets live in the OS keyring (through ``keyring``), never on disk in the clear, in logs or on command lines."""

from __future__ import annotations

import base64
import os

from .errors import KeyringError

SERVICE = "lifeboat"


def _keyring():  # imported lazily: backend discovery is slow-ish and not needed by every command
    import keyring
    import keyring.errors
    return keyring, keyring.errors


def get_secret(name: str) -> str | None:
    keyring, kerr = _keyring()
    try:
        return keyring.get_password(SERVICE, name)
    except kerr.KeyringError as exc:
        raise KeyringError(f"cannot read secret {name!r} from the OS keyring: {exc}") from exc


def set_secret(name: str, value: str) -> None:
    keyring, kerr = _keyring()
    try:
        keyring.set_password(SERVICE, name, value)
    except kerr.KeyringError as exc:
        raise KeyringError(f"cannot store secret {name!r} in the OS keyring: {exc}") from exc


def delete_secret(name: str) -> None:
    keyring, kerr = _keyring()
    try:
        keyring.delete_password(SERVICE, name)
    except kerr.PasswordDeleteError:
        pass
    except kerr.KeyringError as exc:
        raise KeyringError(f"cannot delete secret {name!r} from the OS keyring: {exc}") from exc


def vault_key_name(appliance_id: str) -> str:
    return f"vault-key/{appliance_id}"


def create_vault_key(appliance_id: str) -> bytes:
    key = os.urandom(32)
    set_secret(vault_key_name(appliance_id), base64.b64encode(key).decode())
    return key


def load_vault_key(appliance_id: str) -> bytes:
    val = get_secret(vault_key_name(appliance_id))
    if not val:
        raise KeyringError(f"the vault key of appliance {appliance_id} is not in the OS keyring",
                           advice="Restore the keyring entry 'lifeboat / vault-key/<id>' from your key backup; "
                                  "without it the vault cannot be read.")
    return base64.b64decode(val)
