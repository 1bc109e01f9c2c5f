"""The appliance under the Windows service manager: ``ServiceCore`` on the service's thread, stopped by the
manager's Stop (engine/platform/windows_service.py hosts it). Platform-neutral: ``run_with_stop`` is what the
service body does, and runs (and is tested) on any system.

One service per home, named from the home's path (``service_name``), so that the NSIS installer can install the
service of a home that does not exist yet (``install-service --init``: the service initialises it at its first
start, as LocalSystem, so the vault key lands in the Credential Manager of the account that runs the appliance) and
its uninstaller can remove it whatever state the home is in."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path

from .core import ServiceCore, setup_logging

#: the ports an appliance initialised by its service listens on (those of `lifeboat appliance init`)
INIT_CONTROL_PORT = 443
INIT_DATA_PORT = 9443


def run_with_stop(home: Path, stop: threading.Event, *, poll: float = 0.5) -> None:
    """Run the appliance of ``home`` in a new event loop on this thread until ``stop`` is set, then drain."""
    async def main() -> None:
        done = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                await asyncio.sleep(poll)
            done.set()
        watcher = asyncio.create_task(watch())
        try:
            await ServiceCore(home).run(done)
        finally:
            watcher.cancel()
    asyncio.run(main())


def service_name(home: Path) -> str:
    """``LifeboatAppliance-`` and 8 hex digits of the home's absolute path, case-folded (Windows compares paths
    without case): stable for a home, different for two homes, known before the home is initialised."""
    key = str(Path(home).absolute()).replace("/", "\\").rstrip("\\").casefold()
    return "LifeboatAppliance-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def init_if_missing(home: Path) -> bool:
    """Initialise ``home`` with the default ports when it holds no appliance yet (the service's first start after
    ``install-service --init``); True when it did."""
    from ..home import ApplianceHome
    if ApplianceHome(home).config.exists():
        return False
    from ..appliance.new_home import init_home
    init_home(home, control_port=INIT_CONTROL_PORT, data_port=INIT_DATA_PORT)
    return True


def host(home: Path, *, init: bool = False) -> None:   # pragma: no cover  (Windows only)
    import sys
    if sys.platform == "win32":
        import logging

        from ..home import ApplianceHome
        from ..platform import windows_service
        name = service_name(home)

        def body(stop: threading.Event) -> None:
            if init and init_if_missing(home):
                logging.getLogger("lifeboat.service").warning(
                    "initialised a new appliance in %s: save its recovery kit now (lifeboat appliance export-kit)",
                    home)
            setup_logging(ApplianceHome(home), extra=windows_service.event_log_handler(name))
            run_with_stop(home, stop)
        windows_service.host(name, body)
