"""The appliance's own recovery from the console (issue 16, docs/CONTRACT.md §7): import the recovery kit into a
locked appliance, export the kit, take a configuration backup now.

All three go through the running appliance of the home (``engine.api``'s ``import_recovery_kit``,
``export_recovery_kit``, ``backup_appliance``, through the facade), so the keyring used is that of the account that
runs it (a service's, not the operator's). Each runs off the GUI thread (scrypt, the appliance's own work).
Export and backup are console jobs (a row in Jobs and events, an error notification when they fail); the import
is the locked page's dialog: its errors belong at its fields (``field_of``), not in a banner. A passphrase is
handed to the engine and forgotten: never logged, never in a job's title or message, never in the settings.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from PySide6.QtCore import QObject, Signal

from engine.api import KIT_MIN_PASSPHRASE, ApplianceUnreachable, InvalidInput, NotReady

from .event_log import LogEntry
from .jobs import ConsoleJob

if TYPE_CHECKING:
    from .context import ConsoleContext

log = logging.getLogger(__name__)

__all__ = ["ApplianceKeys", "KIT_MIN_PASSPHRASE", "field_of", "size_words"]

#: after the appliance took the kit it starts its roles (import_recovery_kit waits for that); the link then
#: reopens within a moment (reconnect_now)
RELINK_TIMEOUT = 60.0


def field_of(code: str) -> str:
    """Where the import dialog shows an error of ``code``: ``passphrase``, ``kit`` (the file) or ``general``."""
    if code == "LB_KIT_PASSPHRASE":
        return "passphrase"
    if code in ("LB_KIT_MISMATCH", "LB_KIT_CORRUPT", "LB_KIT_VERSION", "LB_INVALID_INPUT", "LB_NOT_FOUND"):
        return "kit"
    return "general"


def size_words(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


class ApplianceKeys(QObject):
    """The context's recovery-kit and backup actions. ``busy`` says which of them runs (``import``, ``export``,
    ``backup``) so a page can show progress and keep its button off meanwhile."""

    busy = Signal(str, bool)

    def __init__(self, ctx: ConsoleContext) -> None:
        super().__init__(ctx)
        self.ctx = ctx
        self.running: set[str] = set()

    def _busy(self, what: str, on: bool) -> None:
        (self.running.add if on else self.running.discard)(what)
        self.busy.emit(what, on)

    # the locked appliance ------------------------------------------------------------------------------------
    async def import_kit(self, kit: Path, passphrase: str) -> dict[str, Any]:
        """Unlock the appliance with the kit ``kit`` and its passphrase, then wait until the console is attached to
        the unlocked appliance (the dashboard shows). Raises the engine's error (LB_KIT_PASSPHRASE, LB_KIT_MISMATCH,
        LB_KIT_CORRUPT …): nothing was written then."""
        kit = Path(kit).expanduser()
        if not kit.is_file():
            raise InvalidInput(f"{kit} is not a file", field="kit",
                               advice="Choose the recovery kit file (lifeboat-recovery-kit.txt) saved at set-up.")
        if not passphrase:
            raise InvalidInput("enter the kit's passphrase", field="passphrase",
                               advice="The passphrase chosen when the kit was saved.")
        self._busy("import", True)
        try:
            got = await self.ctx.facade.import_recovery_kit(kit, passphrase)
            if self.ctx.facade.attached:
                await self._wait_unlocked()
        finally:
            self._busy("import", False)
        where = got.get("stored_in", "the appliance's keyring")
        self.ctx.log.add(LogEntry("info", "appliance", f"recovery kit {kit.name} imported into {where}"
                                  + ("; the appliance is unlocked" if got.get("unlocked") else "")))
        self.ctx.notes.info(f"Recovery kit imported into {where}"
                            + (": the appliance is unlocked and protecting again" if got.get("unlocked") else ""))
        return got

    async def _wait_unlocked(self) -> None:
        """Until the link says connected (not locked); the appliance was just unlocked and restarts its roles."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RELINK_TIMEOUT
        while self.ctx.locked is not None or not self.ctx.link_up:
            if loop.time() > deadline:
                raise NotReady(f"the kit was imported, but the console did not reach the unlocked appliance within "
                               f"{RELINK_TIMEOUT:.0f} s", advice=f"See the appliance's log ({self.ctx.home / 'appliance.log'}); "
                               "the console reconnects on its own when it answers.")
            if not self.ctx.facade.running:
                raise ApplianceUnreachable("the console let go of the appliance while it was being unlocked")
            await asyncio.sleep(0.1)

    # Settings: backup and kit export, as console jobs -------------------------------------------------------
    async def _job(self, what: str, title: str, work: Callable[[ConsoleJob], Awaitable[Any]]) -> ConsoleJob:
        """Run ``work`` as a console job and wait for its end; re-raise its error (the job also notified it)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        failure: list[BaseException] = []
        job: ConsoleJob | None = None

        async def wrapped(j: ConsoleJob) -> Any:
            try:
                return await work(j)
            except Exception as exc:
                failure.append(exc)
                raise

        def finished(j: ConsoleJob) -> None:
            if j is job and not done.done():
                done.set_result(None)
        self.ctx.jobs.finished.connect(finished)
        self._busy(what, True)
        try:
            job = self.ctx.jobs.start(title, what, None, wrapped, cancellable=False)
            await done
        finally:
            self.ctx.jobs.finished.disconnect(finished)
            self._busy(what, False)
        if failure:
            raise failure[0]
        return job

    async def backup_now(self) -> ConsoleJob:
        """A configuration backup taken now by the running appliance, kept in its home and its vault."""
        async def work(job: ConsoleJob) -> dict[str, Any]:
            self.ctx.jobs.update(job, None, "the appliance is taking the backup")
            got = await self.ctx.facade.backup_appliance()
            where = "the home and the vault" if got.get("vault") else "the home (not the vault)"
            job.message = f"backup {got.get('name')} ({size_words(int(got.get('size') or 0))}) kept in {where}"
            return got
        return await self._job("backup", "Back up the appliance's configuration", work)

    async def export_kit(self, out: Path, passphrase: str) -> ConsoleJob:
        """Seal the recovery kit into the new file ``out`` (scrypt: a few seconds)."""
        out = Path(out).expanduser()

        async def work(job: ConsoleJob) -> Path:
            self.ctx.jobs.update(job, None, "sealing the recovery kit")
            path = await self.ctx.facade.export_recovery_kit(out, passphrase)
            job.message = f"recovery kit saved to {path} (0600): print it, keep it away from this computer"
            return path
        return await self._job("export", "Export the recovery kit", work)
