"""A recovery point's disks, ready to boot from: one vault view per disk at the point's seq, each behind a
copy-on-write overlay (engine/recovery/overlay.py) in a scratch folder, served over NBD by one server. Drills
(engine/appliance/recovery_service.py) and failovers (engine/recovery/failover.py) both use it. The replica and the
journal are only ever read: every write of a client lands in the overlay files, which ``close`` removes."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import ListenFailed
from ..nbd.server import NBDServer
from ..vault.base import DiskView, MachineVault
from .overlay import OverlayBackend


class PointDisks:
    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.views: list[DiskView] = []
        self.names: list[str] = []
        self.backends: list[OverlayBackend] = []
        self.server: NBDServer | None = None
        self.address: tuple[str, int] | None = None
        self._closed = False

    async def open_views(self, vault: MachineVault, seq: int) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
        for d in vault.disks():
            self.views.append(await vault.open_view(seq, d.index))
            self.names.append(d.name)

    async def serve(self, host: str, port: int, *, server_name: str, what: str, field: str = "nbd",
                    durable: bool = False, reopen: bool = False) -> tuple[str, int]:
        """Overlays over the open views, served over NBD (one export per disk, named as the disk). ``durable``: a
        real failover's overlay (flushes reach the disk; ``reopen`` keeps what an earlier run wrote)."""
        exports = {}
        for name, v in zip(self.names, self.views):
            b = OverlayBackend(v, self.scratch / f"{name}.overlay", durable=durable, reopen=reopen)
            self.backends.append(b)
            exports[name] = b
        self.server = NBDServer(exports, name=server_name)
        try:
            self.address = await self.server.start(host, port)
        except OSError as exc:  # port taken, unknown host, address not on this machine
            self.server = None
            raise ListenFailed(f"cannot serve {what} on {host}:{port}: {exc.strerror or exc}", field=field) from None
        return self.address

    async def close(self, *, keep: bool = False) -> None:
        """Stop serving, close overlays and views, remove the scratch folder (idempotent). ``keep``: leave the
        overlay files (a real failover's data, when the appliance stops)."""
        if self._closed:
            return
        self._closed = True
        if self.server:
            await self.server.stop()
        for b in self.backends:
            b.close()
        for v in self.views:
            await v.close()
        if not keep:
            shutil.rmtree(self.scratch, ignore_errors=True)
