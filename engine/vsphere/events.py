"""Typed inventory events on the appliance's EventBus (docs/VSPHERE.md, "Events").

Same rules as engine/events.py: dataclasses with slots, ``to_dict()`` gives ``{"type": ClassName, **fields}``,
delivered on the loop thread; consumers read fields by name and ignore unknown types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..events import Event


@dataclass(slots=True)
class VCenterStatus(Event):
    """A registered endpoint's connection changed: ``connecting`` | ``connected`` | ``error`` | ``removed``."""
    vcenter: str
    state: str
    error: dict[str, Any] | None = None
    insecure: bool = False
    session_renewals: int = 0


@dataclass(slots=True)
class InventorySynced(Event):
    """A full read of one endpoint finished (first connect, or after a session had to be re-created)."""
    vcenter: str
    vms: int
    seconds: float
    reason: str = "initial"  # initial | session-renewed | reconnected


@dataclass(slots=True)
class VMAdded(Event):
    vcenter: str
    moref: str
    name: str | None
    vm: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class VMRemoved(Event):
    vcenter: str
    moref: str
    name: str | None
    instance_uuid: str | None = None


@dataclass(slots=True)
class VMUpdated(Event):
    """Any watched property changed; ``changed`` lists the inventory fields that differ."""
    vcenter: str
    moref: str
    name: str | None
    changed: list[str] = field(default_factory=list)
    vm: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class VMPowerChanged(Event):
    vcenter: str
    moref: str
    name: str | None
    power_state: str | None
    previous: str | None


@dataclass(slots=True)
class VMDiskResized(Event):
    """A disk of a VM changed capacity (bytes). ``machine`` is the protected machine marked for resync, if any."""
    vcenter: str
    moref: str
    name: str | None
    disk: str
    old_bytes: int
    new_bytes: int
    machine: str | None = None


@dataclass(slots=True)
class MachineMatched(Event):
    """A registered machine was tied to a VM (``by``: bios-uuid | hostname | ip)."""
    machine: str
    vcenter: str
    moref: str
    vm: str | None
    instance_uuid: str | None
    by: str
