"""bench/inventory: full discovery of a 5,000-VM vcsim inventory vs a minimal PropertyCollector script, and the
time for a live update to reach the inventory after a power operation.

    .venv/bin/python bench/inventory.py            # 5,000 VMs, 3 alternating rounds
    .venv/bin/python bench/inventory.py --vms 500 --rounds 1 --power-ops 3   # quick

What is compared, in the same run, against the same simulator, same session, same property paths:

- baseline: the smallest correct PropertyCollector client: one ContainerView + RetrievePropertiesEx (with
  continuation) per type in ``discovery.SPECS``, values kept as pyVmomi returns them;
- Lifeboat one-shot: ``discover()`` + ``build_inventory()`` (plain data, every reference resolved to a name);
- Lifeboat live first read: a ``Watcher`` filter's initial WaitForUpdatesEx answer applied to ``InventoryState``.

Target: one-shot discovery ≤ 1.2× the baseline. The live-update latency is measured through the real appliance
path (``VSphereService`` in an in-process ``Appliance``): from issuing PowerOffVM_Task / PowerOnVM_Task to the
``VMPowerChanged`` event on the appliance's EventBus. vcsim batches changes on a 250 ms ticker and re-collects the
filter's whole spec for every modification, so part of that latency is the simulator's.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, bench_tmp, ensure_venv, free_port, table, verdict  # noqa: E402

ensure_venv()

from engine.vsphere.discovery import SPECS, _wsdl, build_inventory, discover, filter_spec  # noqa: E402


def start_vcsim(vms: int) -> tuple[subprocess.Popen, str, int]:
    binary = subprocess.run([str(REPO / "tests/vcsim/build.sh")], capture_output=True, text=True, check=True)
    path = binary.stdout.strip().splitlines()[-1]
    per_pool = max(1, vms // 2)  # 2 clusters × 1 root pool each, no standalone host: exactly `vms` VMs
    proc = subprocess.Popen([path, "-l", "127.0.0.1:0", "-dc", "1", "-cluster", "2", "-host", "4",
                             "-standalone-host", "0", "-vm", str(per_pool), "-ds", "2", "-username", "bench",
                             "-password", "bench-pw"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    host, port = line.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    return proc, host, int(port)


def baseline(si) -> int:  # type: ignore[no-untyped-def]
    """Minimal PropertyCollector client over the same property paths; returns the number of objects."""
    from pyVmomi import vmodl
    c = si.content
    n = 0
    for t in SPECS:
        view = c.viewManager.CreateContainerView(c.rootFolder, [_wsdl(t)], True)
        res = c.propertyCollector.RetrievePropertiesEx([filter_spec(view, [t])],
                                                       vmodl.query.PropertyCollector.RetrieveOptions())
        while res is not None:
            for oc in res.objects:
                _ = (oc.obj, {p.name: p.val for p in oc.propSet})
                n += 1
            res = c.propertyCollector.ContinueRetrievePropertiesEx(res.token) if res.token else None
        view.Destroy()
    return n


def lifeboat_one_shot(si, host: str) -> int:  # type: ignore[no-untyped-def]
    objects, _ = discover(si)
    return len(build_inventory(objects, host)["vms"])


def lifeboat_live_first_read(host: str, port: int) -> tuple[float, int]:
    from engine.vsphere.connect import Target
    from engine.vsphere.inventory import InventoryState, Watcher
    state = InventoryState(host)
    done = threading.Event()

    def deliver(b) -> None:  # type: ignore[no-untyped-def]
        if state.apply(b) is not None:
            done.set()
    w = Watcher(Target(host, port, "bench", "insecure"), lambda: "bench-pw", deliver, lambda *a: None)
    t0 = time.perf_counter()
    w.start()
    done.wait(600)
    dt = time.perf_counter() - t0  # includes login (~ms) like a real first connect
    w.stop()
    return dt, len(state.vms)


async def live_update_latency(host: str, port: int, ops: int,
                              tmp: Path) -> tuple[list[float], list[float], list[float], float]:
    """Through the real appliance: power op issued → VMPowerChanged on the bus; the Lifeboat share of it (vSphere's
    answer received in the watcher → event); and the appliance's full-read time."""
    from pyVim.connect import Connect
    from pyVim.task import WaitForTask
    from pyVmomi import vim

    from engine.appliance.appliance import Appliance, init_home
    from engine.vsphere.events import InventorySynced, VMPowerChanged
    from engine.vsphere import inventory
    arrivals: list[tuple[float, float]] = []  # (answer received in the watcher, applied on the loop)
    real_apply = inventory.InventoryState.apply

    def apply(self, b):  # type: ignore[no-untyped-def]
        if not b.full:
            arrivals.append((b.received, time.perf_counter()))
        return real_apply(self, b)
    inventory.InventoryState.apply = apply  # type: ignore[method-assign]
    init_home(tmp / "appliance", control_port=free_port(), data_port=free_port(), listen="127.0.0.1")
    app = Appliance(tmp / "appliance", listen="127.0.0.1")
    await app.start()
    events: list[tuple[float, object]] = []
    app.bus.subscribe(lambda e: events.append((time.perf_counter(), e)))
    try:
        await app.vsphere.register(host, port, "bench", "bench-pw", insecure=True)
        while not any(isinstance(e, InventorySynced) for _, e in events):
            await asyncio.sleep(0.01)
        full = next(e for _, e in events if isinstance(e, InventorySynced)).seconds  # type: ignore[attr-defined]
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        si = await asyncio.to_thread(Connect, host=host, port=port, user="bench", pwd="bench-pw", sslContext=ctx)
        vm = await asyncio.to_thread(lambda: si.content.searchIndex.FindByInventoryPath("DC0/vm/DC0_C0_RP0_VM0"))
        since_issue, since_done, ours = [], [], []
        for i in range(ops * 2):
            on = i % 2 == 1
            want = "poweredOn" if on else "poweredOff"
            mark = len(events)
            t0 = time.perf_counter()
            await asyncio.to_thread(WaitForTask, vm.PowerOnVM_Task() if on else vm.PowerOffVM_Task())
            t1 = time.perf_counter()
            while True:
                hit = [t for t, e in events[mark:] if isinstance(e, VMPowerChanged) and e.power_state == want]
                if hit:
                    since_issue.append(hit[0] - t0)
                    since_done.append(max(0.0, hit[0] - t1))
                    got = [r for r, _ in arrivals if t0 <= r <= hit[0]]
                    ours.append(hit[0] - got[-1] if got else float("nan"))
                    break
                await asyncio.sleep(0.002)
        assert isinstance(vm, vim.VirtualMachine)
        return since_issue, since_done, ours, full
    finally:
        inventory.InventoryState.apply = real_apply  # type: ignore[method-assign]
        await app.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vms", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--power-ops", type=int, default=5, help="off/on pairs for the live-update latency")
    a = ap.parse_args()
    tmp = bench_tmp("inventory")
    proc, host, port = start_vcsim(a.vms)
    try:
        import ssl

        from pyVim.connect import Connect
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        si = Connect(host=host, port=port, user="bench", pwd="bench-pw", sslContext=ctx)
        base_t, ours_t, live_t = [], [], []
        for r in range(a.rounds):  # alternate, best of each: the machine is noisy
            t0 = time.perf_counter()
            n = baseline(si)
            base_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            vms = lifeboat_one_shot(si, host)
            ours_t.append(time.perf_counter() - t0)
            dt, live_vms = lifeboat_live_first_read(host, port)
            live_t.append(dt)
            print(f"round {r + 1}: baseline {base_t[-1]:.2f}s ({n} objects), one-shot {ours_t[-1]:.2f}s ({vms} VMs), "
                  f"live first read {dt:.2f}s ({live_vms} VMs)", flush=True)
        issue, done, ours, full = asyncio.run(live_update_latency(host, port, a.power_ops, tmp))
        b, o, lv = min(base_t), min(ours_t), min(live_t)
        ok = o <= 1.2 * b
        print()
        print(table([
            [f"full discovery, {vms} VMs", f"{o:.2f} s", f"{b:.2f} s", f"{o / b:.2f}×", "≤ 1.20×", verdict(ok)],
            ["live first read (filter)", f"{lv:.2f} s", f"{b:.2f} s", f"{lv / b:.2f}×", "(info)", ""],
            ["appliance full read", f"{full:.2f} s", "", "", "(info)", ""],
            ["live update, op issued → event", f"median {statistics.median(issue) * 1000:.0f} ms",
             f"max {max(issue) * 1000:.0f} ms", "", "(info)", ""],
            ["live update, task done → event", f"median {statistics.median(done) * 1000:.0f} ms",
             f"max {max(done) * 1000:.0f} ms", "", "(info)", ""],
            ["  of which Lifeboat (answer → event)", f"median {statistics.median(ours) * 1000:.1f} ms",
             f"max {max(ours) * 1000:.1f} ms", "", "(info)", ""],
        ], ["measure", "lifeboat", "baseline", "ratio", "target", ""]))
        return 0 if ok else 1
    finally:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
