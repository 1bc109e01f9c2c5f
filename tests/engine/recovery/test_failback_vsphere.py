"""Failback of a machine matched to a vSphere VM powers the original VM on through vCenter (issue 14): a planned
failover powers the source VM off; the recovered VM (a real boot on the local libvirt recovery host) writes; reprotect
to the original disk (meanwhile the forward agent's silence raises no LB_AGENT_SILENT: it is silent by design);
failback shuts it down, sends the rest, releases the disk, and its last step powers the original VM on (ground
truth read from vCenter). vcsim stands in for vCenter. In process: the appliance and the agent
in the test's loop, every pyVmomi call in a thread."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from engine.policy import AGENT_SILENT_AFTER
from engine.vsphere.events import MachineMatched
from tests.conftest import need_tool
from tests.engine.harness import Site
from tests.engine.recovery.test_failback_boot import _nbd_sha
from tests.engine.recovery.test_planned_vsphere import VM, _power
from tests.engine.vsphere.helpers import Recorder
from tests.engine.vsphere.test_live import _vm


def _qemu_io(url: str, *cmds: str) -> None:
    args = [a for c in cmds for a in ("-c", c)]
    subprocess.run(["qemu-io", "-f", "raw", url, *args, "-c", "flush"], check=True, capture_output=True)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_failback_powers_the_matched_original_vm_on(recovery_host: str, boot_disk: Path, tmp_path: Path,
                                                           vcsim) -> None:  # type: ignore[no-untyped-def]
    need_tool("qemu-system-x86_64", "qemu-io", "qemu-img")
    sim = await asyncio.to_thread(vcsim)
    si: Any = await asyncio.to_thread(sim.client)
    bios = (await asyncio.to_thread(_vm, si, VM)).config.uuid
    site = Site(tmp_path)
    app = await site.start_appliance(crash_interval=0.5)
    machine, hostname = f"fv{os.getpid()}", f"fvh{os.getpid()}"
    try:
        rec = Recorder(app)
        await site.register(machine)
        disk = tmp_path / "disk.img"
        shutil.copyfile(boot_disk, disk)
        await site.start_agent({"d0": disk}, identity={"bios_uuid": bios, "hostname": None, "ips": []})
        await app.vsphere.register(sim.host, sim.port, sim.user, sim.password, insecure=True)
        m = await rec.wait(lambda e: isinstance(e, MachineMatched), what="match")
        assert (m.machine, m.vm) == (machine, VM)
        await app.protect(machine)
        await site.wait_for(lambda: app.machine_row(machine)["state"] == "protected", 60, "protected")
        await app.failover.add_host(hostname, "qemu", recovery_host, ["lan=isolated"])
        app.failover.settings(machine, {"memory_mib": 256, "boot_pattern": "LIFEBOAT-BOOTED", "boot_timeout": 90.0})
        await app.failover.failover(machine, hostname, planned=True)   # powers the source VM off
        assert await asyncio.to_thread(_power, si, VM) == "poweredOff"
        [vm] = await app.failover.vms()
        overlay = f"nbd://{vm['nbd']}/d0"
        free = 40 * 65536
        await asyncio.to_thread(_qemu_io, overlay, f"write -P 0x5a {free} 131072")

        rp = await app.failback.reprotect(machine)
        assert rp.state.value == "succeeded"
        # the forward agent is silent by design while its machine runs on the recovery host (reprotected, it is the
        # master target): no LB_AGENT_SILENT, however long that lasts (the watch looks every second)
        last = app.runtimes[machine].clock.last_heard or 0.0
        await asyncio.sleep(max(0.0, last + AGENT_SILENT_AFTER + 3 - time.time()))
        st = app.machines.machine_status(machine)
        assert st["state"] == "reprotected" and st["agent_silent_seconds"] is None, st
        raised = app.db.db.execute("SELECT id FROM alerts WHERE id=?", (f"LB_AGENT_SILENT:{machine}",)).fetchall()
        assert raised == [], raised
        fb = await app.failback.failback(machine, shutdown_timeout=2.0)
        assert [s.name for s in fb.steps] == ["shutdown-vm", "final-sync", "flush-target", "start-original"]
        assert fb.result["start"] == "vcenter", fb.result
        out = fb.result["original_vm"]
        assert (out["vm"], out["vcenter"], out["now"]) == (VM, sim.host, "poweredOn"), out
        assert await asyncio.to_thread(_power, si, VM) == "poweredOn"   # ground truth from vCenter itself
        assert [e for e in app.db.events("vm-powered-on") if e["machine"] == machine]
        want = await asyncio.to_thread(_nbd_sha, overlay, tmp_path / "recovered.raw")
        assert hashlib.sha256(disk.read_bytes()).hexdigest() == want   # zero loss
    finally:
        await site.stop()
        subprocess.run(["virsh", "-c", recovery_host, "destroy", f"lifeboat-{machine}"], capture_output=True)
        subprocess.run(["virsh", "-c", recovery_host, "undefine", f"lifeboat-{machine}"], capture_output=True)
        subprocess.run(["virsh", "-c", recovery_host, "net-destroy", f"lifeboat-{hostname}-lan"], capture_output=True)
