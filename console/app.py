"""``lifeboat-console [--home DIR]``: the desktop console, attached to the running appliance of the home.

The console is a client (docs/CONTRACT.md §7): at start it attaches to the appliance of its home; when none runs it
offers to start it (its installed service, or ``lifeboat appliance run`` as a background process of its own:
``console/appliance_process.py``) and then attaches. A home that is not initialised opens the first-run wizard,
whose Finish starts the appliance that way and attaches. Closing the window never stops protection (with a tray the
console stays there; without one it quits and says so once); stopping the appliance is an explicit action.

``--embedded`` (and ``ConsoleController(mode="embedded")``, the default for tests) runs the appliance inside this
process instead, as before issue 16: closing the window then stops it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QApplication, QWidget

from .context import ConsoleContext
from .engine_facade import ApplianceUnreachable, EngineFacade
from .errors import Notification, install_excepthook
from .home_setup import SetupPlan
from .settings import ConsoleSettings, default_home

log = logging.getLogger(__name__)


class ConsoleController(QObject):
    """Owns the context and the top-level windows. ``started`` when the main window shows, ``finished`` at the end."""

    started = Signal()
    finished = Signal(int)

    asking = Signal(object)   # a dialog the operator must answer (the offer to start the appliance)

    def __init__(self, home: Path, settings: ConsoleSettings, *, listen: str | None = None,
                 facade: EngineFacade | None = None, mode: str = "embedded", parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.facade = facade or EngineFacade(home, listen=listen, mode=mode)
        self.mode = self.facade.mode
        self.ctx = ConsoleContext(self.facade, settings, self)
        self.wizard: QWidget | None = None
        self.window: QWidget | None = None
        self.exit_code = 0
        self._done = False

    def begin(self) -> None:
        """Show the wizard or start the appliance; call inside the running qasync loop."""
        if self.facade.initialised:
            asyncio.ensure_future(self._start_existing())
        else:
            self.show_wizard()

    def show_wizard(self) -> None:
        from ui.wizard import FirstRunWizard
        wiz = FirstRunWizard(self.facade.home, self._start_new)
        self.wizard = wiz
        wiz.finished.connect(self._wizard_finished)
        wiz.show()

    async def _start_new(self, plan: SetupPlan) -> None:
        """The wizard's Finish: the home is in place; start it (attached: as a background process or the service,
        then attach), raising back into the wizard on failure."""
        self.facade.home = plan.home
        if self.mode == "attach":
            from . import appliance_process
            await self.ctx.start_appliance(await asyncio.to_thread(appliance_process.plan_start, plan.home))
        else:
            await self.ctx.start_appliance()
        self.settings.set("appliance/home", str(plan.home))
        self.settings.save()
        if plan.vcenter is not None:
            if self.facade.has_vsphere:
                v = plan.vcenter
                self.ctx.register_vcenter(v.host, v.user, v.password, v.thumbprint, ca_pem=v.ca_pem)
            else:
                self.ctx.notes.notify(Notification("warning", f"vCenter {plan.vcenter.host} was not registered: "
                                                   "this engine build has no vCenter support"))

    def _wizard_finished(self, result: int) -> None:
        wiz, self.wizard = self.wizard, None
        if wiz is not None:
            wiz.deleteLater()
        if self.facade.running:
            self.show_main()
        else:
            self._finish(1)

    async def _start_existing(self) -> None:
        try:
            await self.ctx.start_appliance()
        except ApplianceUnreachable:
            if self.mode == "attach":   # nothing runs for this home: offer to start it
                self.show_main()
                await self.offer_start()
                return
            raise
        except Exception as exc:  # the window still opens, stopped, with the reason in its banner
            self.show_main()
            self.ctx.notes.handle(exc, "starting the appliance")
            return
        self.show_main()

    async def offer_start(self) -> bool:
        """Ask whether to start the appliance of the home (naming how), then start it and attach. True when
        attached; declined or failed, the window stays open with the appliance stopped (and Start in its menu)."""
        from ui.appliance_dialogs import StartApplianceDialog

        from . import appliance_process
        plan = await asyncio.to_thread(appliance_process.plan_start, self.facade.home)
        dlg = StartApplianceDialog(plan, self.window)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[int] = loop.create_future()
        def answered(result: int) -> None:
            if not answer.done():
                answer.set_result(result)
        dlg.finished.connect(answered)
        dlg.open()
        self.asking.emit(dlg)
        try:
            accepted = await answer == StartApplianceDialog.DialogCode.Accepted
        finally:
            dlg.deleteLater()
        if not accepted:
            return False
        if self.window is not None:
            self.window.set_starting(True)   # type: ignore[attr-defined]
        try:
            await self.ctx.start_appliance(plan)
        except Exception as exc:
            self.ctx.notes.handle(exc, "starting the appliance")
            return False
        finally:
            if self.window is not None:
                self.window.set_starting(False)   # type: ignore[attr-defined]
        return True

    def show_main(self) -> None:
        from ui.main_window import MainWindow
        win = MainWindow(self.ctx, shutdown=self.shutdown, attached=self.mode == "attach",
                         start=self.offer_start)
        self.window = win
        win.closed.connect(lambda: self._finish(self.exit_code))
        win.show()
        self.started.emit()

    async def shutdown(self) -> None:
        """Embedded: stop the appliance. Attached: let go of it (protection goes on)."""
        await self.ctx.stop_appliance()

    def _finish(self, code: int) -> None:
        if self._done:
            return
        self._done = True
        self.exit_code = code
        if self.window is not None:
            self.window.deleteLater()
            self.window = None
        self.finished.emit(code)

    def request_quit(self) -> None:
        """Ctrl+C in the terminal, or the session ending: close like the window's close button."""
        if self.window is not None:
            quit_console = getattr(self.window, "quit_console", None)   # attached: past the tray, never a stop
            quit_console() if quit_console is not None else self.window.close()
        elif self.wizard is not None:
            self.wizard.close()
        else:
            self._finish(self.exit_code)

    async def run(self) -> int:
        """Run until the console is closed; returns the exit status."""
        loop = asyncio.get_running_loop()
        undo = install_excepthook(self.ctx.notes, loop)
        fut: asyncio.Future[int] = loop.create_future()
        def done(code: int) -> None:
            if not fut.done():
                fut.set_result(code)
        self.finished.connect(done)
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.request_quit)
            except (NotImplementedError, RuntimeError, AttributeError, ValueError):
                # qasync's loop has no add_signal_handler: a plain handler runs at the next Python callback
                # (qasync's timers keep Python running), and defers the quit to the loop.
                signal.signal(sig, lambda *_: loop.call_soon_threadsafe(self.request_quit))
        self.begin()
        try:
            return await fut
        finally:
            undo()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lifeboat-console", description="Lifeboat's desktop console: attaches to the "
                                "running appliance of its home (and offers to start it when none runs).")
    p.add_argument("--home", type=Path, help="appliance home (default: the last one used, or the platform's "
                   "data folder)")
    p.add_argument("--embedded", action="store_true", help="run the appliance inside this console (demo and tests): "
                   "closing the window stops it")
    p.add_argument("--listen", help="with --embedded: override the listen address stored in the home")
    p.add_argument("--settings", type=Path, help="console settings file (default: the platform's config folder)")
    p.add_argument("--synthetic", type=int, metavar="N", help="no appliance: show N synthetic machines (a demo of "
                   "a large fleet; nothing is stored)")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # qasync's DEBUG records name every callable given to a worker thread with its arguments (a passphrase, a
    # password): never logged, even with -v (console/quiet_thread.py)
    logging.getLogger("qasync").setLevel(logging.INFO)
    import qasync

    from ui import theme
    app = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(app, QApplication)
    app.setApplicationName("Lifeboat")
    app.setOrganizationName("Lifeboat")
    app.setQuitOnLastWindowClosed(False)  # the controller decides when to quit (after the appliance stopped)
    theme.apply(app)
    settings = ConsoleSettings.load(args.settings)
    home = args.home or (Path(settings.get("appliance/home")) if settings.get("appliance/home") else default_home())
    facade = None
    if args.synthetic:
        from .synthetic import SyntheticFacade
        facade = SyntheticFacade(args.synthetic, registered=2)
    controller = ConsoleController(home.expanduser().absolute(), settings, listen=args.listen, facade=facade,
                                   mode="embedded" if args.embedded else "attach")
    try:
        return int(qasync.run(controller.run()))
    except asyncio.CancelledError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
