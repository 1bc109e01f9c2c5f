"""Discovery: ContainerView + PropertyCollector, one RetrievePropertiesEx pass per object type.

Three layers, so the one-shot discovery and the live inventory (inventory.py) share everything but the transport:

1. ``SPECS``: which properties of which managed-object type we read. Nothing else is fetched, object by object
   or otherwise.
2. ``plain()``: pyVmomi values → plain JSON-able data (morefs become their id, device lists become disk/NIC dicts).
   Runs where the data arrives (a worker thread), so the event loop never touches pyVmomi objects.
3. ``build_inventory()``: the flat ``{moref id: {"_type", path: value}}`` table → the inventory the API shows, with
   references resolved to names (host, cluster, datacenter, datastore, network). Pure; cheap; testable without I/O.
"""

from __future__ import annotations

import re
import time
from typing import Any, Iterator

# Managed-object type → property paths. Paths are leaves we need, never whole sub-trees such as ``config``, and
# never properties vcsim leaves unset on purpose (``snapshot``: reading it panics the simulator, FACTS.md).
SPECS: dict[str, list[str]] = {
    "Datacenter": ["name", "parent"],
    "Folder": ["name", "parent"],
    "ComputeResource": ["name", "parent"],  # ClusterComputeResource is a subtype: clusters come in this pass
    "HostSystem": ["name", "parent", "runtime.connectionState"],
    "Datastore": ["name", "parent", "summary.capacity", "summary.freeSpace", "summary.type"],
    "Network": ["name", "parent"],  # DistributedVirtualPortgroup is a subtype: see EXTRA
    "VirtualMachine": ["name", "parent", "config.uuid", "config.instanceUuid", "config.guestId",
                       "config.guestFullName", "config.template", "config.hardware.numCPU",
                       "config.hardware.memoryMB", "config.hardware.device", "runtime.powerState", "runtime.host",
                       "guest.hostName", "guest.ipAddress", "guest.net"],
}
# Extra property specs in the same pass: a NIC on a distributed switch names its portgroup only by key.
EXTRA: dict[str, dict[str, list[str]]] = {"Network": {"DistributedVirtualPortgroup": ["key"]}}


def _wsdl(name: str) -> Any:
    from pyVmomi import VmomiSupport
    return VmomiSupport.GetWsdlType("urn:vim25", name)  # type: ignore[no-untyped-call]


def property_specs(types: list[str]) -> list[Any]:
    from pyVmomi import vmodl
    out = []
    for t in types:
        out.append(vmodl.query.PropertyCollector.PropertySpec(  # type: ignore[no-untyped-call]
            type=_wsdl(t), pathSet=SPECS[t]))
        for sub, paths in EXTRA.get(t, {}).items():
            out.append(vmodl.query.PropertyCollector.PropertySpec(  # type: ignore[no-untyped-call]
                type=_wsdl(sub), pathSet=paths))
    return out


def filter_spec(view: Any, types: list[str]) -> Any:
    """A FilterSpec over everything a ContainerView holds, collecting ``SPECS`` for ``types``."""
    from pyVmomi import vim, vmodl
    pcq = vmodl.query.PropertyCollector
    # pyVmomi's generated types are untyped: one ignore per constructor call.
    trav = pcq.TraversalSpec(name="view", type=vim.view.ContainerView, path="view",  # type: ignore[no-untyped-call]
                             skip=False)
    obj = pcq.ObjectSpec(obj=view, skip=True, selectSet=[trav])  # type: ignore[no-untyped-call]
    return pcq.FilterSpec(objectSet=[obj], propSet=property_specs(types))  # type: ignore[no-untyped-call]


# pyVmomi → plain --------------------------------------------------------------------------------------------------
_DS_IN_PATH = re.compile(r"^\[([^\]]+)\]")


def _ref(v: Any) -> str | None:
    return v._moId if v is not None else None


def _devices(devs: Any) -> dict[str, list[dict[str, Any]]]:
    from pyVmomi import vim
    disks: list[dict[str, Any]] = []
    nics: list[dict[str, Any]] = []
    for d in devs or []:
        label = d.deviceInfo.label if d.deviceInfo else None
        if isinstance(d, vim.vm.device.VirtualDisk):
            b = d.backing
            fname = getattr(b, "fileName", None) or None
            m = _DS_IN_PATH.match(fname or "")
            # capacityInBytes is unset on older hosts (and vcsim): fall back to the KB field.
            cap = d.capacityInBytes if d.capacityInBytes else (d.capacityInKB or 0) * 1024
            disks.append({"key": d.key, "label": label or f"disk {d.key}", "capacity_bytes": int(cap),
                          "file": fname, "datastore_ref": _ref(getattr(b, "datastore", None)),
                          "datastore_hint": m.group(1) if m else None})
        elif isinstance(d, vim.vm.device.VirtualEthernetCard):
            b = d.backing
            nic: dict[str, Any] = {"key": d.key, "label": label or f"nic {d.key}", "mac": d.macAddress or None,
                                   "connected": bool(d.connectable.connected) if d.connectable else None,
                                   "network_ref": None, "network_name": None, "portgroup_key": None}
            if isinstance(b, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo):
                nic["network_ref"] = _ref(b.network)
                nic["network_name"] = b.deviceName or None
            elif isinstance(b, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
                nic["portgroup_key"] = b.port.portgroupKey if b.port else None
            elif isinstance(b, vim.vm.device.VirtualEthernetCard.OpaqueNetworkBackingInfo):
                nic["network_name"] = b.opaqueNetworkId
            nics.append(nic)
    return {"disks": disks, "nics": nics}


def _guest_net(nets: Any) -> list[dict[str, Any]]:
    return [{"key": n.deviceConfigId, "mac": n.macAddress or None, "network": n.network or None,
             "ips": [str(ip) for ip in (n.ipAddress or [])]} for n in nets or []]


def plain(path: str, value: Any) -> Any:
    """One property value as plain data."""
    from pyVmomi import VmomiSupport
    if value is None:
        return None
    if path == "config.hardware.device":
        return _devices(value)
    if path == "guest.net":
        return _guest_net(value)
    if isinstance(value, VmomiSupport.ManagedObject):
        return value._moId
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return str(value)  # enums are str subclasses: keep the plain string
    if isinstance(value, list):
        return [plain(path, v) for v in value]
    return str(value)


def object_props(obj_content: Any) -> tuple[str, dict[str, Any]]:
    """A RetrievePropertiesEx ObjectContent → (moref id, {"_type": type, path: plain value})."""
    props: dict[str, Any] = {"_type": obj_content.obj._wsdlName}
    for p in obj_content.propSet:
        props[p.name] = plain(p.name, p.val)
    return obj_content.obj._moId, props


def retrieve(pc: Any, spec: Any) -> Iterator[Any]:
    """All ObjectContents of one RetrievePropertiesEx pass, following continuation tokens."""
    from pyVmomi import vmodl
    res = pc.RetrievePropertiesEx([spec], vmodl.query.PropertyCollector.RetrieveOptions())  # type: ignore[no-untyped-call]
    while res is not None:
        yield from res.objects
        res = pc.ContinueRetrievePropertiesEx(res.token) if res.token else None


def discover(si: Any) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """The whole inventory of one endpoint: ``(objects, seconds per type)``. Blocking: call from a thread."""
    content = si.content
    objects: dict[str, dict[str, Any]] = {}
    timings: dict[str, float] = {}
    for t in SPECS:
        t0 = time.perf_counter()
        view = content.viewManager.CreateContainerView(content.rootFolder, [_wsdl(t)], True)
        try:
            for oc in retrieve(content.propertyCollector, filter_spec(view, [t])):
                moid, props = object_props(oc)
                objects[moid] = props
        finally:
            view.Destroy()
        timings[t] = time.perf_counter() - t0
    return objects, timings


# plain → inventory ------------------------------------------------------------------------------------------------
class Resolver:
    """Name lookups over the objects table, memoised for one build."""

    def __init__(self, objects: dict[str, dict[str, Any]]) -> None:
        self.o = objects
        self._dc: dict[str, str | None] = {}
        self.portgroups = {p["key"]: p.get("name") for p in objects.values()
                           if p["_type"] == "DistributedVirtualPortgroup" and p.get("key")}

    def name(self, moid: str | None) -> str | None:
        p = self.o.get(moid) if moid else None
        return p.get("name") if p else None

    def datacenter(self, moid: str | None) -> str | None:
        """Name of the datacenter above ``moid`` (walking ``parent``), or None."""
        if moid is None:
            return None
        if moid in self._dc:
            return self._dc[moid]
        seen: list[str] = []
        cur: str | None = moid
        found: str | None = None
        while cur is not None and cur not in self._dc and len(seen) < 64:
            p = self.o.get(cur)
            if p is None:
                break
            if p["_type"] == "Datacenter":
                found = p.get("name")
                break
            seen.append(cur)
            cur = p.get("parent")
        else:
            if cur in self._dc:
                found = self._dc[cur]
        for s in seen:
            self._dc[s] = found
        return found

    def cluster(self, host: str | None) -> str | None:
        parent = self.o.get(host, {}).get("parent") if host else None
        p = self.o.get(parent) if parent else None
        return p.get("name") if p and p["_type"] == "ClusterComputeResource" else None


def vm_record(moid: str, p: dict[str, Any], r: Resolver, vcenter: str) -> dict[str, Any]:
    """One VM as the inventory shows it (docs/VSPHERE.md); protection fields are added by the service."""
    dev = p.get("config.hardware.device") or {"disks": [], "nics": []}
    gnet = p.get("guest.net") or []
    by_key = {g["key"]: g for g in gnet if g.get("key") is not None}
    by_mac = {g["mac"]: g for g in gnet if g.get("mac")}
    nics = []
    for n in dev["nics"]:
        g = by_key.get(n["key"]) or by_mac.get(n["mac"]) or {}
        net = (n["network_name"] or r.name(n["network_ref"]) or r.portgroups.get(n["portgroup_key"] or "")
               or g.get("network"))
        nics.append({"key": n["key"], "label": n["label"], "mac": n["mac"], "network": net,
                     "connected": n["connected"], "ips": list(g.get("ips", []))})
    disks = [{"key": d["key"], "label": d["label"], "capacity_bytes": d["capacity_bytes"], "file": d["file"],
              "datastore": r.name(d["datastore_ref"]) or d["datastore_hint"]} for d in dev["disks"]]
    ips = sorted({ip for g in gnet for ip in g["ips"]} | ({p["guest.ipAddress"]} if p.get("guest.ipAddress") else set()))
    host = p.get("runtime.host")
    return {
        "vcenter": vcenter, "moref": moid, "name": p.get("name"),
        "instance_uuid": p.get("config.instanceUuid"), "bios_uuid": p.get("config.uuid"),
        "power_state": p.get("runtime.powerState"),
        "guest_os": p.get("config.guestFullName") or p.get("config.guestId"), "guest_id": p.get("config.guestId"),
        "guest_hostname": p.get("guest.hostName"), "ips": ips,
        "cpus": p.get("config.hardware.numCPU"), "memory_mb": p.get("config.hardware.memoryMB"),
        "disks": disks, "nics": nics,
        "host": r.name(host), "cluster": r.cluster(host),
        "datacenter": r.datacenter(p.get("parent")) or r.datacenter(host),
        "template": bool(p.get("config.template")),
    }


def build_inventory(objects: dict[str, dict[str, Any]], vcenter: str,
                    vms: list[dict[str, Any]] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Everything one endpoint holds, names resolved, sorted by name (stable output for the CLI and tests).

    ``vms``: VM records already built (the live inventory caches them), so only the other types are resolved.
    """
    r = Resolver(objects)
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in
                                            ("datacenters", "clusters", "hosts", "datastores", "networks", "vms")}
    hosts_per_cluster: dict[str, int] = {}
    for moid, p in objects.items():
        t = p["_type"]
        if t == "HostSystem" and p.get("parent"):
            hosts_per_cluster[p["parent"]] = hosts_per_cluster.get(p["parent"], 0) + 1
    for moid, p in objects.items():
        t = p["_type"]
        base = {"vcenter": vcenter, "moref": moid, "name": p.get("name")}
        if t == "Datacenter":
            out["datacenters"].append(base)
        elif t == "ClusterComputeResource":
            out["clusters"].append({**base, "datacenter": r.datacenter(moid), "hosts": hosts_per_cluster.get(moid, 0)})
        elif t == "HostSystem":
            out["hosts"].append({**base, "datacenter": r.datacenter(moid), "cluster": r.cluster(moid),
                                 "connection_state": p.get("runtime.connectionState")})
        elif t == "Datastore":
            out["datastores"].append({**base, "datacenter": r.datacenter(moid), "type": p.get("summary.type"),
                                      "capacity_bytes": p.get("summary.capacity"),
                                      "free_bytes": p.get("summary.freeSpace")})
        elif t in ("Network", "DistributedVirtualPortgroup", "OpaqueNetwork"):
            out["networks"].append({**base, "datacenter": r.datacenter(moid)})
        elif t == "VirtualMachine" and vms is None:
            out["vms"].append(vm_record(moid, p, r, vcenter))
    if vms is not None:
        out["vms"] = list(vms)
    for rows in out.values():
        rows.sort(key=lambda x: (x.get("name") or "", x["moref"]))
    return out
