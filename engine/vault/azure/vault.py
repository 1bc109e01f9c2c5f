"""The Azure Blob vault: one container holds every machine (``machine.py``) and the appliance's configuration
backups. See docs/FORMATS.md §5.6 for the layout."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import time
import uuid
from typing import Any

from ...codec import Sealer
from ...errors import InvalidInput, NotFound, UnknownMachine
from ...names import check_name
from ..base import Vault
from .logs import LOG_BYTES
from .machine import APPLY_BATCH, IO_THREADS, AzureMachineVault
from .rest import AzureBlobClient, Credential

#: where the appliance's configuration backups are kept in the container
BACKUPS = ".lifeboat/config-backups/"


class AzureVault(Vault):
    """Vault backend on an Azure Blob container (see the module docstring).

    Config (``appliance.json`` ``vault``): ``{"kind": "azure", "account_url": URL, "container": NAME,
    "auth": "key" | "sas", "secret": KEYRING NAME}`` and optionally ``log_bytes`` (cache-log roll size),
    ``retry_for`` (seconds a request is retried). The credential is read from the OS keyring under ``secret``.
    """

    kind = "azure"

    def __init__(self, client: AzureBlobClient, key: bytes, *, key_id: int = 1,
                 executor: concurrent.futures.Executor | None = None, log_bytes: int = LOG_BYTES,
                 prune_wait: float = 60.0, cache_bytes: int = 64 * 1024 * 1024, idle_apply: float = 1.0,
                 apply_batch: int = APPLY_BATCH, direct: bool = True) -> None:
        self.client = client
        self.sealer = Sealer(key, key_id)
        self._lease_seed = hashlib.sha256(b"lifeboat azure lease v1" + key).digest()
        self._io = concurrent.futures.ThreadPoolExecutor(IO_THREADS, thread_name_prefix="lifeboat-azure")
        self._io2 = concurrent.futures.ThreadPoolExecutor(IO_THREADS * 2, thread_name_prefix="lifeboat-azure-put")
        self.log_bytes = log_bytes
        self.prune_wait = prune_wait
        self.cache_bytes = cache_bytes
        self.idle_apply = idle_apply
        self.apply_batch = apply_batch
        self.direct = direct
        self._machines: dict[str, AzureMachineVault] = {}
        self._lock = asyncio.Lock()

    @classmethod
    def from_config(cls, cfg: dict[str, Any], key: bytes, *,
                    executor: concurrent.futures.Executor | None = None) -> AzureVault:
        from ...secrets import get_secret
        for k in ("account_url", "container", "auth", "secret"):
            if not isinstance(cfg.get(k), str):
                raise InvalidInput(f"vault.{k} is missing from the Azure vault's settings",
                                   advice="Set the vault again with `lifeboat vault set --kind azure ...`.")
        secret = get_secret(cfg["secret"])
        if not secret:
            raise InvalidInput(f"the Azure credential {cfg['secret']!r} is not in the OS keyring",
                               advice="Set the vault again with `lifeboat vault set --kind azure ... --key-stdin` "
                                      "(or --sas-stdin).")
        cred = Credential(key=secret) if cfg["auth"] == "key" else Credential(sas=secret)
        extra: dict[str, Any] = {}
        v = cfg.get("log_bytes")
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, int) or not 1 << 16 <= v <= 1 << 34:
                raise InvalidInput(f"vault.log_bytes must be between 64 KiB and 16 GiB, got {v!r}")
            extra["log_bytes"] = v
        retry_for = cfg.get("retry_for", 120.0)
        client = connect(cfg["account_url"], cfg["container"], cred, retry_for=float(retry_for))
        return cls(client, key, executor=executor, **extra)

    async def open_machine(self, machine: str) -> AzureMachineVault:
        check_name(machine, "machine name")
        async with self._lock:
            mv = self._machines.get(machine)
            if mv is not None:
                return mv
            mv = AzureMachineVault(self, machine)
            await mv._io(mv._open_sync)
            mv._start()
            self._machines[machine] = mv
            return mv

    def _forget(self, mv: AzureMachineVault) -> None:
        if self._machines.get(mv.machine) is mv:
            del self._machines[mv.machine]

    def machines(self) -> list[str]:
        return sorted({it.name.split("/")[0] for it in self.client.list_blobs("", metadata=False)
                       if it.name.endswith("/meta.json") and it.name.count("/") == 1})

    # -- the appliance's configuration backups (sealed by the backup itself: stored as they are) -------------------

    def _backup_blob(self, name: str) -> str:
        from ..local import BACKUP_NAME
        if not isinstance(name, str) or not BACKUP_NAME.fullmatch(name):
            raise InvalidInput(f"{name!r} is not a configuration backup's name", field="name")
        return BACKUPS + name   # a machine name never starts with "." (names.py): no clash with a machine

    async def put_config_backup(self, name: str, data: bytes) -> None:
        blob = self._backup_blob(name)
        await asyncio.get_running_loop().run_in_executor(self._io, lambda: self.client.put_blob(blob, data))

    async def config_backups(self) -> list[str]:
        from ..local import BACKUP_NAME

        def names() -> list[str]:
            return [it.name[len(BACKUPS):] for it in self.client.list_blobs(BACKUPS, metadata=False)
                    if it.snapshot is None]
        got = await asyncio.get_running_loop().run_in_executor(self._io, names)
        return sorted(n for n in got if BACKUP_NAME.fullmatch(n))

    async def get_config_backup(self, name: str) -> bytes:
        blob = self._backup_blob(name)
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(self._io, self.client.get_properties, blob) is None:
            raise NotFound(f"container {self.client.container} holds no configuration backup {name!r}")
        return await loop.run_in_executor(self._io, lambda: self.client.get_blob(blob))

    async def remove_config_backup(self, name: str) -> None:
        blob = self._backup_blob(name)
        await asyncio.get_running_loop().run_in_executor(self._io, lambda: self.client.delete_blob(blob))

    async def remove_machine(self, machine: str) -> None:
        check_name(machine, "machine name")
        async with self._lock:
            mv = self._machines.get(machine)
            if mv is not None:
                await mv.close()
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._io, self._remove_sync, machine)

    def _remove_sync(self, machine: str) -> None:
        items = list(self.client.list_blobs(f"{machine}/", metadata=False))
        if not any(it.name == f"{machine}/meta.json" for it in items):
            raise UnknownMachine(f"machine {machine} has no vault in container {self.client.container}")
        for it in items:
            if it.snapshot is None and it.name != f"{machine}/meta.json":
                self.client.delete_blob(it.name, include_snapshots=True)
        self.client.delete_blob(f"{machine}/meta.json")

    async def close(self) -> None:
        async with self._lock:
            for mv in list(self._machines.values()):
                await mv.close()
        # requests still in flight finish off the event loop: the loop must keep running meanwhile (whatever it
        # serves, e.g. a proxy in the same process, and the appliance's other roles while it stops)
        await asyncio.to_thread(self._io.shutdown, True)
        await asyncio.to_thread(self._io2.shutdown, True)
        self.client.close()


def connect(account_url: str, container: str, cred: Credential, *, retry_for: float = 120.0,
            timeout: float = 30.0) -> AzureBlobClient:
    """A client for the container (no request yet)."""
    return AzureBlobClient(account_url, container, cred, retry_for=retry_for, timeout=timeout)


def check_connection(client: AzureBlobClient) -> dict[str, Any]:
    """Prove the account answers, the credential works and the container exists and is writable: read its
    properties, write and delete a probe blob. Raises CloudAuthFailed, ContainerMissing, CloudUnreachable."""
    t0 = time.monotonic()
    client.container_properties()
    probe = f".lifeboat-probe-{uuid.uuid4().hex}"
    client.put_blob(probe, b"probe")
    client.delete_blob(probe)
    return {"account_url": client.account_url, "container": client.container,
            "latency_ms": round((time.monotonic() - t0) * 1000, 1)}
