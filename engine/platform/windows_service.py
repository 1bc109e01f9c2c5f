"""The Windows service front end (pywin32's service framework): install, remove, query, and host one service.

What the service runs is not known here (the platform layer knows no appliance): ``host(name, body)`` hands
``body`` a ``threading.Event`` that the service manager's Stop sets, and runs it on the service's thread; the
appliance's body is engine/service/core.py's ``ServiceCore`` (engine/service/windows.py binds the two). The program
the service manager starts is ``lifeboat.exe appliance service-host --home DIR`` (the NSIS installer installs it with
``lifeboat.exe appliance install-service --home DIR``). Recovery actions restart a crashed service after 5 s.

Windows only: the bodies type-check with ``mypy --platform win32`` (tests/test_static.py) and cannot run here.
"""

from __future__ import annotations

import sys
import threading
from typing import Callable

__all__ = ["install", "remove", "start", "query", "host", "event_log_handler"]

if sys.platform == "win32":
    import logging
    import logging.handlers
    import os

    import pywintypes
    import servicemanager
    import win32service
    import win32serviceutil

    def install(name: str, display: str, description: str, command: list[str]) -> None:
        """Register the service (automatic start, LocalSystem) with its full command line, and restart on
        failure; then start it."""
        import subprocess
        exe, args = command[0], subprocess.list2cmdline(command[1:])
        win32serviceutil.InstallService(None, name, display, startType=win32service.SERVICE_AUTO_START,
                                        exeName=exe, exeArgs=args, description=description)
        # sc.exe failure: restart after 5 s, three times, counter reset after a day; failureflag 1: also when the
        # process ends with an error code after reporting stopped, not only when it vanishes
        subprocess.run(["sc.exe", "failure", name, "reset=", "86400", "actions=",
                        "restart/5000/restart/5000/restart/5000"], check=False, capture_output=True)
        subprocess.run(["sc.exe", "failureflag", name, "1"], check=False, capture_output=True)
        win32serviceutil.StartService(name)

    def remove(name: str) -> bool:
        """Stop the service (its drain has up to 90 s) and remove it; False when it was not installed."""
        if not query(name):
            return False
        try:
            win32serviceutil.StopService(name)
            win32serviceutil.WaitForServiceStatus(name, win32service.SERVICE_STOPPED, 90)
        except pywintypes.error:  # not running
            pass
        win32serviceutil.RemoveService(name)
        return True

    def start(name: str) -> None:
        """Start the installed service and wait (up to 60 s) until the service manager reports it running."""
        win32serviceutil.StartService(name)
        win32serviceutil.WaitForServiceStatus(name, win32service.SERVICE_RUNNING, 60)

    def query(name: str) -> dict[str, str]:
        try:
            state = win32serviceutil.QueryServiceStatus(name)[1]
        except pywintypes.error:   # ERROR_SERVICE_DOES_NOT_EXIST
            return {}
        names = {win32service.SERVICE_RUNNING: "active", win32service.SERVICE_STOPPED: "inactive",
                 win32service.SERVICE_START_PENDING: "activating", win32service.SERVICE_STOP_PENDING: "deactivating"}
        return {"ActiveState": names.get(state, "unknown"), "UnitFileState": "enabled"}

    def host(name: str, body: Callable[[threading.Event], None]) -> None:
        """Run as the service ``name`` under the service manager (called by the program it started)."""
        stop = threading.Event()

        class _Service(win32serviceutil.ServiceFramework):  # type: ignore[misc]
            _svc_name_ = name
            _svc_display_name_ = name

            def SvcStop(self) -> None:
                self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, waitHint=90_000)
                stop.set()

            def SvcDoRun(self) -> None:
                servicemanager.LogInfoMsg(f"{name} starting")
                self.ReportServiceStatus(win32service.SERVICE_RUNNING)
                try:
                    body(stop)
                except BaseException as exc:
                    # A body that fails is a crash: end without reporting SERVICE_STOPPED, so that the service
                    # manager counts a failure and its recovery actions (install: restart after 5 s) apply. A clean
                    # return (Stop from the manager or a console's explicit Stop) is a stop, never restarted.
                    servicemanager.LogErrorMsg(f"{name} failed: {exc!r}; the service manager will restart it")
                    os._exit(1)
                servicemanager.LogInfoMsg(f"{name} stopped")

        servicemanager.Initialize()
        servicemanager.PrepareToHostSingle(_Service)
        servicemanager.StartServiceCtrlDispatcher()

    def event_log_handler(name: str) -> logging.Handler:
        """The Application event log, source ``name``. Its message file is pywin32's ``win32service`` module (the
        stdlib's default guesses the path from ``win32evtlogutil.__file__``, which is wrong in a frozen bundle)."""
        return logging.handlers.NTEventLogHandler(name, dllname=win32service.__file__)
