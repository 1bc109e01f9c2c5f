"""The appliance under the Windows service manager: ``ServiceCore`` on the service's thread, stopped by the
manager's Stop (engine/platform/windows_service.py hosts it). Platform-neutral: ``run_with_stop`` is what the
service body does, and runs (and is tested) on any system."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from .core import ServiceCore, setup_logging


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


def service_name(appliance_id: str) -> str:
    return f"LifeboatAppliance{appliance_id[:8]}"


def host(home: Path, appliance_id: str) -> None:   # pragma: no cover  (Windows only)
    import sys
    if sys.platform == "win32":
        from ..home import ApplianceHome
        from ..platform import windows_service
        name = service_name(appliance_id)
        setup_logging(ApplianceHome(home), extra=windows_service.event_log_handler(name))
        windows_service.host(name, lambda stop: run_with_stop(home, stop))
