"""Console under a large fleet: 500 protected machines' worth of engine events at 1 Hz into the real main window.

The synthetic engine (``console/synthetic.py``) emits, once a second in one burst like the appliance's ticker, a
``MachineStatus`` for every machine and a ``PointCreated`` for about one in five, on a real ``EventBus``; they go
through the real bridge, models and pages of a shown ``MainWindow`` (offscreen unless a display exists). The window
cycles through Dashboard and Protected machines (a selected machine's live RPO graph) every few seconds.

Measured in the same run:
- event-loop lag: a probe sleeps 10 ms on the qasync loop, over and over; lag = how late it wakes. The baseline is
  the same probe with the window shown and no events (idle), then under load. Target: p99 ≤ 50 ms under load.
- memory: peak RSS of the process (VmHWM). Target: ≤ 500 MB.

    .venv/bin/python bench/console.py [--machines 500] [--duration 60] [--idle 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

C.ensure_venv()

P99_MAX_MS, RSS_MAX_MB = 50.0, 500.0


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def probe(seconds: float, lags: list[float]) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        await asyncio.sleep(0.01)
        lags.append((time.monotonic() - t0 - 0.01) * 1000)


async def run(args: argparse.Namespace) -> int:
    import psutil

    from console.context import ConsoleContext
    from console.settings import ConsoleSettings
    from console.synthetic import SyntheticFacade
    from ui.main_window import MainWindow

    tmp = C.bench_tmp("console")
    facade = SyntheticFacade(args.machines, ticker=False)
    ctx = ConsoleContext(facade, ConsoleSettings.load(tmp / "console.ini"))
    await ctx.start_appliance()
    win = MainWindow(ctx)
    win.resize(1280, 800)
    win.show()
    machines = win.pages["machines"]
    facade.tick()
    await asyncio.sleep(0.5)
    win.show_page("machines")
    machines.select(facade.names[len(facade.names) // 2])  # type: ignore[attr-defined]
    proc = psutil.Process()

    idle: list[float] = []
    await probe(args.idle, idle)

    loaded: list[float] = []
    rss: list[float] = []
    bursts: list[float] = []
    events_before = ctx.bridge.events_seen

    async def ticker() -> None:
        n = 0
        while True:
            t0 = time.perf_counter()
            facade.tick()
            bursts.append((time.perf_counter() - t0) * 1000)
            rss.append(proc.memory_info().rss / 2**20)
            n += 1
            if n % 5 == 0:  # look at both live views
                win.show_page("dashboard" if (n // 5) % 2 else "machines")
            await asyncio.sleep(1.0)
    t = asyncio.ensure_future(ticker())
    t_start = time.monotonic()
    await probe(args.duration, loaded)
    elapsed = time.monotonic() - t_start
    t.cancel()
    await asyncio.gather(t, return_exceptions=True)
    events = ctx.bridge.events_seen - events_before
    await ctx.stop_appliance()
    win.close()
    win.deleteLater()
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)

    p99 = percentile(loaded, 0.99)
    hwm = vm_hwm_mb()
    ok_lag, ok_mem = p99 <= P99_MAX_MS, hwm <= RSS_MAX_MB
    print(f"\nconsole bench: {args.machines} machines, {elapsed:.0f} s, {events / elapsed:.0f} engine events/s "
          f"({len(bursts)} bursts; emitting a burst took p50 {percentile(bursts, .5):.1f} ms)")
    print(f"{'measure':<28}{'idle (baseline)':>18}{f'{args.machines} machines @1 Hz':>22}{'target':>12}  result")
    print(f"{'loop lag p50 (ms)':<28}{percentile(idle, .5):>18.1f}{percentile(loaded, .5):>22.1f}{'':>12}")
    print(f"{'loop lag p99 (ms)':<28}{percentile(idle, .99):>18.1f}{p99:>22.1f}{'≤ 50':>12}  "
          f"{'PASS' if ok_lag else 'FAIL'}")
    print(f"{'loop lag max (ms)':<28}{max(idle, default=0):>18.1f}{max(loaded, default=0):>22.1f}")
    print(f"{'RSS last / peak (MiB)':<28}{'':>18}{f'{rss[-1] if rss else 0:.0f} / {hwm:.0f}':>22}{'≤ 500':>12}  "
          f"{'PASS' if ok_mem else 'FAIL'}")
    return 0 if ok_lag and ok_mem else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--machines", type=int, default=500)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--idle", type=float, default=5.0)
    args = p.parse_args()
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import qasync
    from PySide6.QtWidgets import QApplication

    from ui import theme
    from PySide6.QtCore import qInstallMessageHandler

    def quiet(_mode, _ctx, msg: str) -> None:  # type: ignore[no-untyped-def]
        if "propagateSizeHints" not in msg:  # the offscreen platform's harmless complaint, once per window
            sys.stderr.write(msg + "\n")
    qInstallMessageHandler(quiet)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(app, QApplication)
    app.setQuitOnLastWindowClosed(False)
    theme.apply(app)
    return int(qasync.run(run(args)))


if __name__ == "__main__":
    sys.exit(main())
