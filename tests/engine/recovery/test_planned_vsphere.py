"""A planned failover of a machine matched to a vSphere VM powers the source VM off through vCenter once the final
point is in the vault (no split brain), as a job step; cancel powers it on again. When the vCenter cannot be
reached, the step fails with a clear error and the failover stops (nothing is failed over, the source takes
writes again). vcsim stands in for vCenter; the recovered VM really boots on the local libvirt recovery host. In
process: the appliance and the agent in the test's loop, every pyVmomi call in a thread."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from engine.errors import LifeboatError
from engine.vsphere.events import MachineMatched
from tests.conftest import need_tool
from tests.engine.harness import Site
from tests.engine.vsphere.helpers import Recorder
from tests.engine.vsphere.test_live import _vm

VM = "DC0_H0_VM1"


def _power(si: Any, name: str) -> str:
    return str(_vm(si, name).runtime.powerState)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_planned_failover_powers_the_matched_source_vm_off(recovery_host: str, boot_disk: Path,
                                                                  tmp_path: Path, vcsim) -> None:  # type: ignore[no-untyped-def]
    need_tool("qemu-system-x86_64")
    sim = await asyncio.to_thread(vcsim)
    si = await asyncio.to_thread(sim.client)
    bios = (await asyncio.to_thread(_vm, si, VM)).config.uuid
    assert await asyncio.to_thread(_power, si, VM) == "poweredOn"
    site = Site(tmp_path)
    app = await site.start_appliance(crash_interval=0.5)
    machine, hostname = f"pv{os.getpid()}", f"pvh{os.getpid()}"
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

        job = await app.failover.failover(machine, hostname, planned=True)
        steps = [s.name for s in job.steps]
        assert steps == ["quiesce", "final-point", "power-off-source", "open-views", "serve-overlay", "config-drive",
                         "start-vm", "wait-boot"], steps
        src = job.result["source_vm"]
        assert (src["vm"], src["vcenter"], src["was"], src["now"]) == (VM, sim.host, "poweredOn", "poweredOff")
        assert await asyncio.to_thread(_power, si, VM) == "poweredOff"   # ground truth from vCenter itself
        fp = next(s for s in job.steps if s.name == "final-point")
        po = next(s for s in job.steps if s.name == "power-off-source")
        assert fp.ended is not None and po.started is not None and fp.ended <= po.started   # after RPO 0
        assert app.machine_row(machine)["state"] == "failed-over"
        [ev] = [e for e in app.db.events("source-powered-off") if e["machine"] == machine]
        assert ev["data"]["vm"] == VM and ev["data"]["now"] == "poweredOff"

        # cancel: the VM goes, the source is powered on again and replication resumes
        c = await app.failover.cancel(machine)
        assert c["source_vm"]["now"] == "poweredOn", c
        assert await asyncio.to_thread(_power, si, VM) == "poweredOn"
        await site.wait_for(lambda: app.runtimes[machine].connection is not None
                            and app.machine_row(machine)["state"] == "protected", 60, "the agent back")

        # vCenter unreachable: the step fails clearly, and the failover stops (nothing failed over)
        sim.stop()
        with pytest.raises(LifeboatError) as ei:
            await app.failover.failover(machine, hostname, planned=True)
        err = ei.value
        assert err.code == "LB_VCENTER_UNREACHABLE", err.to_dict()
        assert f"source VM {VM} on {sim.host} of {machine} could not be powered off" in err.message
        assert "planned failover stopped" in err.message and "nothing was failed over" in err.message
        assert "--point tag:planned-failover-" in (err.advice or "")
        assert app.failover.store.failover(machine) is None and await app.failover.vms() == []
        assert app.machine_row(machine)["state"] == "protected"
        failed = [j for j in app.jobs.jobs.values() if j.kind == "failover" and j.target == machine][-1]
        assert failed.error and failed.error["code"] == "LB_VCENTER_UNREACHABLE"
        assert [s.state.value for s in failed.steps if s.name == "power-off-source"] == ["failed"]
        await site.wait_for(lambda: app.runtimes[machine].connection is not None, 60, "the source replicating again")
    finally:
        await site.stop()
        import subprocess
        subprocess.run(["virsh", "-c", recovery_host, "destroy", f"lifeboat-{machine}"], capture_output=True)
        subprocess.run(["virsh", "-c", recovery_host, "undefine", f"lifeboat-{machine}"], capture_output=True)
        subprocess.run(["virsh", "-c", recovery_host, "net-destroy", f"lifeboat-{hostname}-lan"], capture_output=True)
