"""Vault backends by kind: the ``vault.kind`` of the appliance's config picks one here."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

from ..errors import InvalidInput
from .azure.vault import AzureVault
from .base import Vault
from .local import LocalVault

__all__ = ["VAULT_KINDS", "open_vault"]

#: kind → backend class (docs/ARCHITECTURE.md §10).
VAULT_KINDS: dict[str, type[Vault]] = {"local": LocalVault, "azure": AzureVault}


def open_vault(cfg: dict[str, Any], key: bytes, *, executor: Executor | None = None) -> Vault:
    """The backend for the config's ``vault`` section; InvalidInput for a kind this version does not have."""
    kind = cfg.get("kind")
    backend = VAULT_KINDS.get(kind) if isinstance(kind, str) else None
    if backend is None:
        raise InvalidInput(f"vault kind {kind!r} is not supported by this version")
    return backend.from_config(cfg, key, executor=executor)
