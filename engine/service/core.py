"""The appliance's service core, the same under systemd, the Windows service manager and a terminal.

``ServiceCore(home).run(stop)`` starts the appliance, writes its pid file, waits until ``stop`` is set (SIGTERM,
Ctrl+C, the Windows service manager's stop), then drains: the appliance's own ``stop`` closes the control API, ends
running jobs as interrupted, flushes the process server's cache and the appliers, and closes the vault. A drain that
takes longer than ``drain_timeout`` is logged and abandoned (what was acknowledged is durable already: nothing
acknowledged is lost by a hard stop, only work in progress is redone at the next start).

Logs: a rotating file in the home (``appliance.log``, 10 MiB × 5) at INFO, and standard error (the journal under
systemd) at WARNING; the Windows front end adds the event log.
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


def setup_logging(home: ApplianceHome, *, extra: logging.Handler | None = None, debug: bool = False) -> None:
    """Rotating file in the home (0600, INFO), standard error (WARNING), and an optional platform handler."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for h in list(root.handlers):
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.setLevel(logging.DEBUG if debug else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not any(isinstance(h, logging.handlers.RotatingFileHandler) for h in root.handlers):
        if not home.log.exists():
            os.close(os.open(home.log, os.O_WRONLY | os.O_CREAT, 0o600))
        fh = logging.handlers.RotatingFileHandler(home.log, maxBytes=LOG_BYTES, backupCount=LOG_FILES,
                                                  encoding="utf-8")
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
        from ..appliance.appliance import Appliance
        self.home.load_config()   # NotInitialised with its advice before anything starts
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
