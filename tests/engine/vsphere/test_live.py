"""Live inventory: power operations, a new VM (CreateVM_Task) and a destroyed one reach the inventory through
WaitForUpdatesEx without a full re-read; an expired session is renewed and nothing is lost."""

from __future__ import annotations

import asyncio
from typing import Any

from engine.vsphere.events import (InventorySynced, VCenterStatus, VMAdded, VMPowerChanged, VMRemoved, VMUpdated)
from tests.engine.vsphere.helpers import Recorder, wait_until


def _vm(si: Any, name: str) -> Any:
    from pyVmomi import vim
    v = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
    try:
        return next(vm for vm in v.view if vm.name == name)
    finally:
        v.Destroy()


def _power(si: Any, name: str, on: bool) -> None:
    from pyVim.task import WaitForTask
    vm = _vm(si, name)
    WaitForTask(vm.PowerOnVM_Task() if on else vm.PowerOffVM_Task())


def create_vm(si: Any, like: str, name: str) -> None:
    """CreateVM_Task with a 2 GiB thin disk and a vmxnet3 NIC, next to an existing VM."""
    from pyVim.task import WaitForTask
    from pyVmomi import vim
    ref = _vm(si, like)
    dc = ref.parent
    while not isinstance(dc, vim.Datacenter):
        dc = dc.parent
    dev = vim.vm.device
    changes = [
        dev.VirtualDeviceSpec(operation="add", device=dev.ParaVirtualSCSIController(key=1000, busNumber=0,
                                                                                 sharedBus="noSharing")),
        dev.VirtualDeviceSpec(operation="add", fileOperation="create", device=dev.VirtualDisk(
            key=-1, capacityInKB=2 * 1024 * 1024, controllerKey=1000, unitNumber=0,
            backing=dev.VirtualDisk.FlatVer2BackingInfo(diskMode="persistent", thinProvisioned=True,
                                                        fileName="[LocalDS_0]"))),
        dev.VirtualDeviceSpec(operation="add", device=dev.VirtualVmxnet3(
            key=-2, backing=dev.VirtualEthernetCard.NetworkBackingInfo(deviceName="VM Network"))),
    ]
    spec = vim.vm.ConfigSpec(name=name, guestId="ubuntu64Guest", numCPUs=2, memoryMB=2048,
                             files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"), deviceChange=changes)
    WaitForTask(dc.vmFolder.CreateVM_Task(config=spec, pool=ref.resourcePool, host=ref.runtime.host))


def destroy_vm(si: Any, name: str) -> None:
    from pyVim.task import WaitForTask
    WaitForTask(_vm(si, name).Destroy_Task())


def terminate_other_sessions(si: Any) -> int:
    sm = si.content.sessionManager
    mine = sm.currentSession.key
    others = [s.key for s in sm.sessionList if s.key != mine]
    sm.TerminateSession(others)
    return len(others)


async def test_power_operations_and_new_vm_arrive_live(site, vcsim) -> None:  # type: ignore[no-untyped-def]
    sim = await asyncio.to_thread(vcsim)
    app = site.app
    rec = Recorder(app)
    await app.vsphere.register(sim.host, sim.port, sim.user, sim.password, insecure=True)
    await rec.wait(lambda e: isinstance(e, InventorySynced), what="first full read")
    si = await asyncio.to_thread(sim.client)
    state = app.vsphere.endpoints[sim.host].state
    target = sorted(v["name"] for v in state.vms.values())[0]

    def power_of(name: str) -> str | None:
        return next(v["power_state"] for v in app.vsphere.snapshot()["vms"] if v["name"] == name)

    assert power_of(target) == "poweredOn"
    await asyncio.to_thread(_power, si, target, False)
    ev = await rec.wait(lambda e: isinstance(e, VMPowerChanged) and e.name == target, what="power off")
    assert (ev.previous, ev.power_state) == ("poweredOn", "poweredOff")
    assert power_of(target) == "poweredOff"
    await asyncio.to_thread(_power, si, target, True)
    await rec.wait(lambda e: isinstance(e, VMPowerChanged) and e.power_state == "poweredOn", what="power on")
    assert power_of(target) == "poweredOn"

    await asyncio.to_thread(create_vm, si, target, "lifeboat-new-vm")
    await wait_until(lambda: any(v["name"] == "lifeboat-new-vm" for v in state.vms.values()), what="new VM")
    added = [e for e in rec.of(VMAdded)]
    assert added, "a VMAdded event"
    new = next(v for v in app.vsphere.snapshot()["vms"] if v["name"] == "lifeboat-new-vm")
    assert new["cpus"] == 2 and new["memory_mb"] == 2048 and new["guest_id"] == "ubuntu64Guest"
    assert [d["capacity_bytes"] for d in new["disks"]] == [2 << 30]
    assert new["disks"][0]["file"] == "[LocalDS_0] lifeboat-new-vm/lifeboat-new-vm.vmdk"
    assert new["disks"][0]["datastore"] == "LocalDS_0"
    assert [n["network"] for n in new["nics"]] == ["VM Network"] and new["nics"][0]["mac"]
    assert new["instance_uuid"] and new["bios_uuid"] and new["host"] and new["datacenter"] == "DC0"

    await asyncio.to_thread(destroy_vm, si, "lifeboat-new-vm")
    await rec.wait(lambda e: isinstance(e, VMRemoved) and e.name == "lifeboat-new-vm", what="VM removed")
    assert all(v["name"] != "lifeboat-new-vm" for v in app.vsphere.snapshot()["vms"])

    # All of it came through WaitForUpdatesEx: one full read, several incremental updates.
    assert state.full_reads == 1 and state.incremental_updates >= 4
    assert len(rec.of(InventorySynced)) == 1
    assert all(isinstance(e.vm, dict) and e.vm["moref"] == e.moref for e in rec.of(VMUpdated))


async def test_session_renewed_when_it_expires(site, vcsim) -> None:  # type: ignore[no-untyped-def]
    sim = await asyncio.to_thread(vcsim)
    app = site.app
    rec = Recorder(app)
    await app.vsphere.register(sim.host, sim.port, sim.user, sim.password, insecure=True)
    await rec.wait(lambda e: isinstance(e, InventorySynced), what="first full read")
    si = await asyncio.to_thread(sim.client)
    target = sorted(v["name"] for v in app.vsphere.endpoints[sim.host].state.vms.values())[0]
    # vCenter drops the inventory's session (what an expiry or an admin's "terminate session" does).
    assert await asyncio.to_thread(terminate_other_sessions, si) >= 1
    # A change made while the watcher is between sessions must still arrive, as a change, not a re-listing.
    await asyncio.to_thread(_power, si, target, False)
    synced = await rec.wait(lambda e: isinstance(e, InventorySynced) and e.reason == "session-renewed",
                            timeout=60, what="re-read after renewal")
    assert synced.vms == 4
    ev = await rec.wait(lambda e: isinstance(e, VMPowerChanged) and e.name == target, what="change after renewal")
    assert ev.power_state == "poweredOff"
    assert not rec.of(VMAdded) and not rec.of(VMRemoved)  # the re-read is diffed: nothing spurious
    status = [e for e in rec.of(VCenterStatus) if e.state == "connected"]
    assert status[-1].session_renewals == 1
    [entry] = app.vsphere.list()
    assert entry["session_renewals"] == 1 and entry["status"] == "connected"
    # And the new session keeps delivering live updates.
    await asyncio.to_thread(_power, si, target, True)
    await rec.wait(lambda e: isinstance(e, VMPowerChanged) and e.power_state == "poweredOn", what="live again")
