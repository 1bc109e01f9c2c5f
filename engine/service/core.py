"""The appliance's service core, the same under systemd, the Windows service manager and a terminal.

``ServiceCore(home).run(stop)`` starts the appliance, writes its pid file, waits until ``stop`` is set (SIGTERM,
Ctrl+C, the Windows service manager's stop), then drains: the appliance's own ``stop`` closes the control API, ends
running jobs as interrupted, flushes the process server's cache and the appliers, and closes the vault. A drain that
takes longer than ``drain_timeout`` is logged and abandoned (what was acknowledged is durable already: nothing
acknowledged is lost by a hard stop, only work in progress is redone at the next start).

Without the vault key in the keyring of the account it runs as (a home restored for a Windows service, a lost
keyring entry), the core does not crash-loop: it serves the locked control API (engine/appliance/locked.py) until a
recovery kit is imported over it, then starts the appliance on the same ports.

Logs: a rotating file in the home (``appliance.log``, 10 MiB × 5 kept, each 0600 whatever the umask) at INFO, and
standard error: under systemd (``JOURNAL_STREAM`` names standard error) the journal gets INFO and up, each line with
its syslog priority (``<6>``, ``<4>``…) so ``journalctl -p warning`` filters; in a terminal, WARNING and up. The
Windows front end adds the event log (WARNING and up).
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import os
import time
from pathlib import Path
from typing import Callable

from ..home import ApplianceHome

log = logging.getLogger("lifeboat.service")

LOG_BYTES = 10 << 20
LOG_FILES = 5
DRAIN_TIMEOUT = 80.0    # under systemd's TimeoutStopSec=90


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating log whose every file is created 0600 (the stdlib's follows the umask: a rotation under a service
    manager's default umask would make the new file world-readable)."""

    def _open(self):  # type: ignore[no-untyped-def]
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)


#: syslog priorities that journald reads from the start of each line of a service's standard error
JOURNAL_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """``<PRIORITY>name: message`` (the journal stamps its own time); continuation lines carry the priority too."""

    def format(self, record: logging.LogRecord) -> str:
        prio = JOURNAL_PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        text = super().format(record)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines() or [""])


def stderr_is_journal() -> bool:
    """True when standard error is systemd's journal stream (systemd sets ``JOURNAL_STREAM=DEV:INODE`` of it)."""
    want = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in want.split(":"))
        st = os.fstat(2)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def setup_logging(home: ApplianceHome, *, extra: logging.Handler | None = None, debug: bool = False,
                  max_bytes: int = LOG_BYTES, backups: int = LOG_FILES) -> None:
    """Rotating file in the home (0600, INFO), standard error (the journal: INFO; a terminal: WARNING), and an
    optional platform handler (WARNING)."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    journal = stderr_is_journal()
    for h in list(root.handlers):
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.setLevel(logging.DEBUG if debug else logging.INFO if journal else logging.WARNING)
            if journal:
                h.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not any(isinstance(h, logging.handlers.RotatingFileHandler) for h in root.handlers):
        if home.log.exists() and home.log.stat().st_mode & 0o077:
            os.chmod(home.log, 0o600)   # an older version's log, or one made by hand
        fh = PrivateRotatingFileHandler(home.log, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        fh.setFormatter(fmt)
        fh.setLevel(logging.DEBUG if debug else logging.INFO)
        root.addHandler(fh)
    if extra is not None:
        extra.setFormatter(fmt)
        extra.setLevel(logging.WARNING)
        root.addHandler(extra)


class ServiceCore:
    def __init__(self, home: Path, *, listen: str | None = None, drain_timeout: float = DRAIN_TIMEOUT,
                 on_ready: Callable[[str], None] | None = None) -> None:
        self.home = ApplianceHome(home)
        self.listen = listen
        self.drain_timeout = drain_timeout
        self.on_ready = on_ready

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.home.load_config()   # NotInitialised with its advice before anything starts
        if not await self._locked_until_kit(cfg["appliance_id"], stop):
            return
        await self._run_appliance(stop)

    async def _locked_until_kit(self, appliance_id: str, stop: asyncio.Event) -> bool:
        """Without the vault key in this account's keyring, serve the locked control API (engine/appliance/
        locked.py) until a kit is imported (True: start the roles) or ``stop`` is set (False)."""
        from ..appliance.locked import LockedAppliance, locked_reason
        reason = locked_reason(appliance_id)
        if reason is None:
            return True
        locked = LockedAppliance(self.home, reason, listen=self.listen)
        await locked.start()
        self.home.pidfile.write_text(str(os.getpid()))
        assert locked.control_address
        if self.on_ready:
            self.on_ready(f"appliance locked: control {locked.control_address[1]} (no vault key in this account's "
                          "keyring: import the recovery kit)")
        try:
            waits = [asyncio.create_task(stop.wait()), asyncio.create_task(locked.unlocked.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in waits:
                    t.cancel()
        finally:
            await locked.stop()
            if stop.is_set() or not locked.unlocked.is_set():
                self.home.pidfile.unlink(missing_ok=True)
        if stop.is_set():
            log.info("stopped while locked")
            return False
        log.warning("the recovery kit was imported: starting the appliance's roles")
        return True

    async def _run_appliance(self, stop: asyncio.Event) -> None:
        from ..appliance.appliance import Appliance
        app = Appliance(self.home.root, listen=self.listen)
        started = time.monotonic()
        await app.start()
        from ..api import serve_consoles
        serve_consoles(app, on_stop=lambda reason: stop.set())   # consoles attach; their Stop drains like SIGTERM
        self.home.pidfile.write_text(str(os.getpid()))
        assert app.control_address and app.data_address
        line = f"appliance running: control {app.control_address[1]}, data {app.data_address[1]}"
        log.info("%s (started in %.1f s, pid %d)", line, time.monotonic() - started, os.getpid())
        if self.on_ready:
            self.on_ready(line)
        try:
            await stop.wait()
            log.info("stop requested: draining in-flight work")
        finally:
            t0 = time.monotonic()
            try:
                await asyncio.wait_for(app.stop(), self.drain_timeout)
                log.info("appliance stopped cleanly in %.1f s", time.monotonic() - t0)
            except TimeoutError:
                log.error("the drain took longer than %.0f s and was abandoned; acknowledged data is durable, work "
                          "in progress is redone at the next start", self.drain_timeout)
            finally:
                self.home.pidfile.unlink(missing_ok=True)
