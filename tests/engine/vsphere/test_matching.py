"""Matching a registered agent's machine to its VM (BIOS UUID first, then host name, then IP), the inventory's
protection columns, and a disk resize marking the protected machine for resync."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from engine.vsphere.events import InventorySynced, MachineMatched, VMDiskResized
from engine.identity import clean_identity
from engine.vsphere.matching import VMIndex, swapped_uuid
from tests.engine.harness import make_disk
from tests.engine.vsphere.helpers import Recorder, wait_until
from tests.engine.vsphere.test_live import _vm


def grow_first_disk(si: Any, name: str, factor: int = 2) -> int:
    from pyVim.task import WaitForTask
    from pyVmomi import vim
    vm = _vm(si, name)
    disk = next(d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk))
    disk.capacityInKB *= factor
    spec = vim.vm.ConfigSpec(deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk)])
    WaitForTask(vm.ReconfigVM_Task(spec))
    return disk.capacityInKB * 1024


async def test_agent_matched_by_bios_uuid_and_resize_marks_resync(site, vcsim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = await asyncio.to_thread(vcsim)
    app = site.app
    rec = Recorder(app)
    si = await asyncio.to_thread(sim.client)
    vm = await asyncio.to_thread(_vm, si, "DC0_C0_RP0_VM1")
    bios = vm.config.uuid
    # The agent connects first (the vCenter is not registered yet): its identity is kept for later.
    await site.register("vm1")
    disk = tmp_path / "disk.img"
    make_disk(disk, 4 << 20, seed=3)
    # The host name points at a different VM on purpose: the BIOS UUID must win.
    await site.start_agent({"sda": disk}, identity={"bios_uuid": bios.upper(), "hostname": "DC0_H0_VM0",
                                                    "ips": ["10.0.0.7"]})
    await wait_until(lambda: "vm1" in app.runtimes and app.runtimes["vm1"].connection is not None, what="agent")
    row = app.db.db.execute("SELECT bios_uuid, hostname, ips FROM vsphere_agent_identity WHERE machine='vm1'").fetchone()
    assert row == (bios.lower(), "DC0_H0_VM0", '["10.0.0.7"]')

    await app.vsphere.register(sim.host, sim.port, sim.user, sim.password, insecure=True)
    m = await rec.wait(lambda e: isinstance(e, MachineMatched), what="match")
    assert (m.machine, m.vm, m.by) == ("vm1", "DC0_C0_RP0_VM1", "bios-uuid")
    [ev] = [json.loads(d) for (d,) in app.db.db.execute("SELECT data FROM events WHERE kind='vm-matched'")]
    assert ev["by"] == "bios-uuid" and ev["instance_uuid"] == vm.config.instanceUuid
    shown = {v["name"]: v for v in app.vsphere.snapshot()["vms"]}
    assert shown["DC0_C0_RP0_VM1"]["protected_machine"] == "vm1"
    assert shown["DC0_C0_RP0_VM1"]["protection_state"] == "unprotected"
    assert shown["DC0_H0_VM0"]["protected_machine"] is None

    # Protect it, let initial replication finish, then grow the VM's disk in vCenter.
    await app.protect("vm1")
    await wait_until(lambda: app.machine_row("vm1")["state"] == "protected", timeout=60, what="protected")
    assert {v["name"]: v for v in app.vsphere.snapshot()["vms"]}["DC0_C0_RP0_VM1"]["protection_state"] == "protected"
    import time as _time
    from engine.policy import Policy
    lt = _time.localtime()
    m0 = (lt.tm_hour * 60 + lt.tm_min + 120) % 1440   # a resync window that opens in two hours, not now
    app.set_policy(Policy("default", resync_window=f"{m0 // 60:02d}:{m0 % 60:02d}-{(m0 + 60) // 60 % 24:02d}:{m0 % 60:02d}"))
    new_bytes = await asyncio.to_thread(grow_first_disk, si, "DC0_C0_RP0_VM1")
    r = await rec.wait(lambda e: isinstance(e, VMDiskResized), what="resize")
    assert r.machine == "vm1" and r.new_bytes == new_bytes == 2 * r.old_bytes
    st = app.machine_status("vm1")
    assert st["state"] == "resync-required" and st["resync"]["reason"] == "disk resized", st
    assert st["resync"]["scheduled_for"] > _time.time()
    [why] = [json.loads(d) for (d,) in app.db.db.execute("SELECT data FROM events WHERE kind='resync-required' "
                                                          "AND machine='vm1'")]
    assert why["reason"] == "disk resized" and why["new_bytes"] == new_bytes
    # Only one match for the whole run: later updates did not re-tie the machine.
    assert len(rec.of(MachineMatched)) == 1


async def test_resize_of_an_unlinked_vm_changes_nothing(site, vcsim) -> None:  # type: ignore[no-untyped-def]
    sim = await asyncio.to_thread(vcsim)
    rec = Recorder(site.app)
    await site.app.vsphere.register(sim.host, sim.port, sim.user, sim.password, insecure=True)
    await rec.wait(lambda e: isinstance(e, InventorySynced), what="sync")
    si = await asyncio.to_thread(sim.client)
    await asyncio.to_thread(grow_first_disk, si, "DC0_H0_VM0")
    await wait_until(lambda: any(v["name"] == "DC0_H0_VM0" and v["disks"][0]["capacity_bytes"] == 2 << 20
                                 for v in site.app.vsphere.snapshot()["vms"]), what="new capacity")
    assert not rec.of(VMDiskResized)


def _vm_rec(name: str, bios: str, host: str | None = None, ips: list[str] | None = None, moref: str = "") -> dict:
    return {"vcenter": "vc", "moref": moref or name, "name": name, "bios_uuid": bios, "guest_hostname": host,
            "ips": ips or [], "template": False, "instance_uuid": name + "-i", "disks": []}


def test_matching_rules() -> None:
    u = "4210a3b2-1c2d-3e4f-5a6b-7c8d9e0f1a2b"
    assert swapped_uuid(u) == "b2a31042-2d1c-4f3e-5a6b-7c8d9e0f1a2b"
    assert swapped_uuid(swapped_uuid(u)) == u
    vms = [_vm_rec("web01", u, "web01.corp.example", ["10.0.0.5"]), _vm_rec("db01", "11111111-0000-0000-0000-0"
                                                                              "00000000001", None, ["10.0.0.9"])]
    idx = VMIndex(vms)
    assert idx.find("m", {"bios_uuid": u})[1] == "bios-uuid"
    assert idx.find("m", {"bios_uuid": swapped_uuid(u)})[0]["name"] == "web01"  # SMBIOS byte order
    assert idx.find("m", {"hostname": "WEB01"}) == (vms[0], "hostname")  # short, case-insensitive
    assert idx.find("web01", {}) == (vms[0], "hostname")  # the machine's own name as a last hint
    assert idx.find("m", {"ips": ["10.0.0.9"]}) == (vms[1], "ip")
    assert idx.find("m", {"hostname": "nothing", "ips": ["192.0.2.1"]})[0] is None
    # Clones share a BIOS UUID: the host name picks one, otherwise no guess is made.
    clones = VMIndex([_vm_rec("a", u, "a"), _vm_rec("b", u, "b")])
    assert clones.find("m", {"bios_uuid": u, "hostname": "b"})[0]["name"] == "b"
    assert clones.find("m", {"bios_uuid": u}) == (None, "ambiguous BIOS UUID")
    # Templates never match.
    assert VMIndex([{**_vm_rec("t", u), "template": True}]).find("m", {"bios_uuid": u})[0] is None


@pytest.mark.parametrize("hello,expected", [
    ({}, None),
    ({"bios_uuid": "not-a-uuid", "hostname": "bad host!", "ips": ["x"]}, None),
    ({"bios_uuid": "4210A3B2-1C2D-3E4F-5A6B-7C8D9E0F1A2B", "ips": ["10.0.0.1", "nope", 5]},
     {"bios_uuid": "4210a3b2-1c2d-3e4f-5a6b-7c8d9e0f1a2b", "hostname": None, "ips": ["10.0.0.1"]}),
])
def test_agent_identity_is_validated(hello: dict, expected: dict | None) -> None:
    assert clean_identity(hello) == expected
