"""Per-machine recovery settings (``lifeboat machine settings``): CPUs, memory, firmware, NIC → network mapping,
re-IP (static address per NIC, gateway, DNS) and the boot pattern. Kept as typed data in state.db; missing values
take the defaults below. Validation is pure (no host needed)."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import InvalidInput
from ..names import check_name

#: A Linux guest with a getty on its serial console prints this when it is up.
DEFAULT_BOOT_PATTERN = r"login:"
DEFAULT_BOOT_TIMEOUT = 300.0


@dataclass
class RecoverySettings:
    cpus: int = 1
    memory_mib: int = 512
    firmware: str = "bios"
    nics: dict[str, str] = field(default_factory=dict)        # NIC → recovery-host network
    ips: dict[str, str] = field(default_factory=dict)         # NIC → ADDR/PREFIX
    gateway: str | None = None
    dns: list[str] = field(default_factory=list)
    boot_pattern: str = DEFAULT_BOOT_PATTERN
    boot_timeout: float = DEFAULT_BOOT_TIMEOUT

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RecoverySettings:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        s = cls(**known)
        s.validate()
        return s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        if isinstance(self.cpus, bool) or not isinstance(self.cpus, int) or not 1 <= self.cpus <= 64:
            raise InvalidInput(f"--cpus {self.cpus!r} is out of range (1-64)", field="cpus")
        if isinstance(self.memory_mib, bool) or not isinstance(self.memory_mib, int) or \
                not 16 <= self.memory_mib <= 1024 * 1024:
            raise InvalidInput(f"--memory-mib {self.memory_mib!r} is out of range (16-1048576)", field="memory_mib")
        if self.firmware not in ("bios", "uefi"):
            raise InvalidInput(f"--firmware {self.firmware!r} is not bios or uefi (UEFI needs OVMF on the recovery "
                               "host)", field="firmware")
        for nic, net in self.nics.items():
            check_name(nic, "NIC name")
            check_name(net, "network name")
        for nic, addr in self.ips.items():
            check_name(nic, "NIC name")
            try:
                iface = ipaddress.ip_interface(addr)
            except ValueError:
                raise InvalidInput(f"--ip {nic}={addr!r} is not ADDR/PREFIX (e.g. 10.0.5.20/24)", field="ip") from None
            if "/" not in addr or iface.network.prefixlen == iface.max_prefixlen and iface.version == 4 and \
                    not addr.endswith("/32"):
                raise InvalidInput(f"--ip {nic}={addr!r} needs a prefix length (ADDR/PREFIX)", field="ip")
            if nic not in self.nics:
                raise InvalidInput(f"--ip names NIC {nic!r}, which has no network", field="ip",
                                   advice=f"Map it first (or in the same command): --nic {nic}=NETWORK.")
        checks = [("dns", a) for a in self.dns] + ([("gateway", self.gateway)] if self.gateway is not None else [])
        for what, addr in checks:
            try:
                ipaddress.ip_address(addr)
            except ValueError:
                raise InvalidInput(f"--{what} {addr!r} is not an IP address", field=what) from None
        if not isinstance(self.boot_pattern, str) or not self.boot_pattern or len(self.boot_pattern) > 256:
            raise InvalidInput("--boot-pattern must be a regular expression of 1-256 characters", field="boot_pattern")
        try:
            re.compile(self.boot_pattern)
        except re.error as exc:
            raise InvalidInput(f"--boot-pattern {self.boot_pattern!r} is not a regular expression: {exc}",
                               field="boot_pattern") from None
        if not isinstance(self.boot_timeout, (int, float)) or not 1 <= self.boot_timeout <= 86400:
            raise InvalidInput(f"boot timeout {self.boot_timeout!r} is out of range (1-86400 s)", field="boot_timeout")


def nic_mac(machine: str, nic: str) -> str:
    """A stable locally administered MAC per machine and NIC (QEMU's 52:54:00 prefix): the config drive matches
    the NIC by it, so the guest's own interface names do not matter."""
    h = hashlib.sha256(f"{machine}/{nic}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in h[:3])


def network_config(machine: str, s: RecoverySettings) -> str:
    """cloud-init network-config version 2 (YAML) for the recovery site. Values are validated addresses and names,
    so they need no quoting beyond what is written."""
    lines = ["version: 2", "ethernets:"]
    if not s.nics:
        return "version: 2\nethernets: {}\n"
    for nic in s.nics:
        lines += [f"  {nic}:", "    match:", f"      macaddress: \"{nic_mac(machine, nic)}\"", f"    set-name: {nic}"]
        if nic in s.ips:
            lines += ["    dhcp4: false", "    addresses:", f"      - {s.ips[nic]}"]
            if s.gateway:
                lines += ["    routes:", "      - to: default", f"        via: {s.gateway}"]
            if s.dns:
                lines += ["    nameservers:", "      addresses: [" + ", ".join(s.dns) + "]"]
        else:
            lines.append("    dhcp4: true")
    return "\n".join(lines) + "\n"
