"""Discovery equals the simulator's inventory exactly: counts and every field, checked against an independent,
object-by-object read of the same simulator (slow, but obviously right), and against the model's arithmetic."""

from __future__ import annotations

import asyncio
from typing import Any

from engine.vsphere.discovery import build_inventory, discover
from engine.vsphere.events import InventorySynced
from tests.engine.vsphere.helpers import Recorder

# 2 datacenters, each: 1 cluster of 2 hosts + 1 standalone host, 2 VMs per resource pool, 2 datastores, 1 DV portgroup.
MODEL = ("-dc", "2", "-cluster", "1", "-host", "2", "-standalone-host", "1", "-vm", "2", "-ds", "2", "-pg", "1")


def ground_truth(si: Any) -> dict[str, list[tuple]]:
    """The same facts read the slow, obvious way: pyVmomi attribute access on each object."""
    from pyVmomi import vim
    c = si.content

    def view(t: Any) -> list[Any]:
        v = c.viewManager.CreateContainerView(c.rootFolder, [t], True)
        try:
            return list(v.view)
        finally:
            v.Destroy()

    def dc_of(o: Any) -> str | None:
        while o is not None and not isinstance(o, vim.Datacenter):
            o = o.parent
        return o.name if o is not None else None

    pgs = {pg.key: pg.name for pg in view(vim.dvs.DistributedVirtualPortgroup)}
    vms = []
    for vm in view(vim.VirtualMachine):
        cfg = vm.config
        disks, nics = [], []
        for d in cfg.hardware.device:
            if isinstance(d, vim.vm.device.VirtualDisk):
                cap = d.capacityInBytes or d.capacityInKB * 1024
                disks.append((d.deviceInfo.label, cap, d.backing.fileName, d.backing.datastore.name))
            elif isinstance(d, vim.vm.device.VirtualEthernetCard):
                b = d.backing
                net = b.deviceName if isinstance(b, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo) \
                    else pgs[b.port.portgroupKey]
                nics.append((d.deviceInfo.label, d.macAddress, net))
        vms.append((vm.name, cfg.instanceUuid, cfg.uuid, cfg.guestFullName or cfg.guestId, vm.runtime.powerState,
                    cfg.hardware.numCPU, cfg.hardware.memoryMB, tuple(disks), tuple(nics), vm.runtime.host.name,
                    dc_of(vm)))
    return {
        "datacenters": sorted((d.name,) for d in view(vim.Datacenter)),
        "clusters": sorted((cl.name, dc_of(cl), len(cl.host)) for cl in view(vim.ClusterComputeResource)),
        "hosts": sorted((h.name, dc_of(h), h.parent.name if isinstance(h.parent, vim.ClusterComputeResource)
                         else None, h.runtime.connectionState) for h in view(vim.HostSystem)),
        "datastores": sorted((ds.name, dc_of(ds), ds.summary.capacity, ds.summary.type) for ds in view(vim.Datastore)),
        "vms": sorted(vms),
    }


def as_tuples(inv: dict[str, list[dict[str, Any]]]) -> dict[str, list[tuple]]:
    return {
        "datacenters": sorted((d["name"],) for d in inv["datacenters"]),
        "clusters": sorted((c["name"], c["datacenter"], c["hosts"]) for c in inv["clusters"]),
        "hosts": sorted((h["name"], h["datacenter"], h["cluster"], h["connection_state"]) for h in inv["hosts"]),
        "datastores": sorted((d["name"], d["datacenter"], d["capacity_bytes"], d["type"]) for d in inv["datastores"]),
        "vms": sorted((v["name"], v["instance_uuid"], v["bios_uuid"], v["guest_os"], v["power_state"], v["cpus"],
                       v["memory_mb"], tuple((d["label"], d["capacity_bytes"], d["file"], d["datastore"])
                                             for d in v["disks"]),
                       tuple((n["label"], n["mac"], n["network"]) for n in v["nics"]), v["host"], v["datacenter"])
                      for v in inv["vms"]),
    }


async def test_discovery_matches_simulator(vcsim) -> None:  # type: ignore[no-untyped-def]
    sim = await asyncio.to_thread(vcsim, *MODEL)
    si = await asyncio.to_thread(sim.client)
    objects, timings = await asyncio.to_thread(discover, si)
    truth = await asyncio.to_thread(ground_truth, si)
    inv = build_inventory(objects, "vc")
    got = as_tuples(inv)
    # The model's arithmetic, so a bug shared by both readers would still show.
    assert len(got["datacenters"]) == 2 and len(got["clusters"]) == 2
    assert len(got["hosts"]) == 2 * (2 + 1) and len(got["vms"]) == 2 * 2 * 2
    assert all(c[2] == 2 for c in got["clusters"])
    for k in truth:
        assert got[k] == truth[k], k
    # Every VM has its disks and NICs, with real values (not placeholders).
    for v in inv["vms"]:
        assert v["disks"] and all(d["capacity_bytes"] > 0 and d["file"].startswith("[") for d in v["disks"])
        assert v["nics"] and all(n["mac"] and n["network"] for n in v["nics"])
        assert v["power_state"] in ("poweredOn", "poweredOff") and v["vcenter"] == "vc"
    assert set(timings) == {"Datacenter", "Folder", "ComputeResource", "HostSystem", "Datastore", "Network",
                            "VirtualMachine"}


async def test_live_inventory_equals_one_shot_discovery(site, vcsim) -> None:  # type: ignore[no-untyped-def]
    """The live inventory's first read (a WaitForUpdatesEx filter) and the one-shot discovery agree exactly."""
    sim = await asyncio.to_thread(vcsim, *MODEL)
    rec = Recorder(site.app)
    await site.app.vsphere.register(sim.host, sim.port, sim.user, sim.password, insecure=True)
    synced = await rec.wait(lambda e: isinstance(e, InventorySynced), what="first full read")
    assert synced.vms == 8 and synced.reason == "initial"
    si = await asyncio.to_thread(sim.client)
    objects, _ = await asyncio.to_thread(discover, si)
    expected = build_inventory(objects, sim.host)
    snap = site.app.vsphere.snapshot()
    for k, rows in expected.items():
        got = [{f: v for f, v in r.items() if f not in ("protected_machine", "protection_state")} for r in snap[k]]
        assert got == rows, k
    assert all(v["protected_machine"] is None and v["protection_state"] is None for v in snap["vms"])
    [vc] = snap["vcenters"]
    assert vc["vms"] == 8 and vc["full_reads"] == 1
