"""Tying registered machines to their VMs, and flagging a resync when a VM's disk changes size.

Order of evidence: the BIOS UUID the agent read from SMBIOS (``config.uuid`` in vSphere), then the host name, then
an IP address. A rule wins only when it points at exactly one VM: clones can share a BIOS UUID, and a guess that
ties a machine to the wrong VM is worse than no tie.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..appliance.machine_state import MachineState
    from ..appliance.resync import Resync

log = logging.getLogger(__name__)


def swapped_uuid(u: str) -> str:
    """The same UUID with its first three fields byte-swapped.

    SMBIOS ≥ 2.6 stores those fields little-endian, and depending on the VM hardware version and the guest's DMI
    decoder a Linux guest shows either form of vSphere's ``config.uuid``; matching both is what vSphere tooling does.
    """
    p = u.lower().split("-")
    if len(p) != 5:
        return u.lower()
    sw = ["".join(reversed([x[i:i + 2] for i in range(0, len(x), 2)])) for x in p[:3]]
    return "-".join(sw + p[3:])


def _short(name: str | None) -> str | None:
    return name.split(".")[0].lower() if name else None


class VMIndex:
    """Lookup tables over every VM of every endpoint (templates excluded: they never run an agent)."""

    def __init__(self, vms: list[dict[str, Any]]) -> None:
        self.bios: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.host: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.ip: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for v in vms:
            if v.get("template"):
                continue
            if v.get("bios_uuid"):
                self.bios[v["bios_uuid"].lower()].append(v)
            for n in {_short(v.get("guest_hostname")), _short(v.get("name"))} - {None}:
                self.host[n].append(v)  # type: ignore[index]
            for ip in v.get("ips") or []:
                self.ip[ip].append(v)

    def find(self, machine: str, ident: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """(VM, rule) for a machine, or (None, why not)."""
        names = {_short(ident.get("hostname")), _short(machine)} - {None}
        ips = set(ident.get("ips") or [])
        bios = ident.get("bios_uuid")
        if bios:
            cands = _unique(self.bios.get(bios.lower(), []) + self.bios.get(swapped_uuid(bios), []))
            if len(cands) == 1:
                return cands[0], "bios-uuid"
            if len(cands) > 1:  # clones: let the host name or an IP pick among them
                narrowed = [v for v in cands if {_short(v.get("guest_hostname")), _short(v.get("name"))} & names
                            or ips & set(v.get("ips") or [])]
                if len(narrowed) == 1:
                    return narrowed[0], "bios-uuid"
                return None, "ambiguous BIOS UUID"
        cands = _unique([v for n in names for v in self.host.get(n, [])])  # type: ignore[arg-type]
        if len(cands) == 1:
            return cands[0], "hostname"
        cands_ip = _unique([v for ip in ips for v in self.ip.get(ip, [])])
        if len(cands_ip) == 1:
            return cands_ip[0], "ip"
        return None, "ambiguous" if len(cands) > 1 or len(cands_ip) > 1 else "no VM matches"


def _unique(vms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for v in vms:
        seen[(v["vcenter"], v["moref"])] = v
    return list(seen.values())


def resized_disks(known: dict[int, int], vm: dict[str, Any]) -> list[tuple[dict[str, Any], int]]:
    """Disks of ``vm`` whose capacity differs from ``known`` (key → bytes): [(disk, old bytes)]. New disks are not
    resizes (they have no replica yet); removed ones are not either."""
    return [(d, known[d["key"]]) for d in vm.get("disks", [])
            if d["key"] in known and int(d["capacity_bytes"]) != known[d["key"]]]


def mark_resync(state: MachineState, resync: Resync, machine: str, reason: str, **details: Any) -> bool:
    """Flag a protected machine for resync (through the appliance's resync service). The single place that does it.

    Returns False (and changes nothing) for a machine that is not protected: it has no replica to heal.
    """
    row = state.row(machine)
    if not row["protected"] or row["revoked"]:
        return False
    # A checksum resync of the whole machine, at the policy's window (the agent also grows the replica when it
    # sees the larger disk).
    resync.request(machine, now=False, reason=reason)
    state.event("resync-required", machine, reason=reason, **details)
    log.warning("machine %s needs a resync: %s %s", machine, reason, details)
    return True
