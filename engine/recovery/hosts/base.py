"""The recovery-host interface: define, start, stop and destroy a VM from a :class:`VMSpec`; its state; boot
detection on its serial console.

A host knows networks by name (``NetworkSpec``): ``isolated`` (no traffic beyond the host's own isolated segment:
drills), ``user`` (user-mode NAT, outbound only) and ``bridge:BR`` (an existing bridge on the host). A VM's NICs name
those networks. Disks are NBD exports (the vault through an overlay) or local images; a config drive is a CD-ROM.
"""

from __future__ import annotations

import asyncio
import enum
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ...errors import BootTimeout, InvalidInput
from ...names import check_name

#: Lines of the serial console an error carries when a VM did not boot in time.
TAIL_LINES = 20
#: Firmware a recovered VM boots with: SeaBIOS, or UEFI (OVMF; Debian package ``ovmf`` on the recovery host).
FIRMWARES = ("bios", "uefi")
AGENT_BOOT_LINE = "guest agent answered guest-ping"
#: How often the QEMU guest agent is asked whether the guest is up (each ask is one ``virsh`` call).
AGENT_PING_INTERVAL = 2.0


class VMState(str, enum.Enum):
    RUNNING = "running"
    STOPPED = "stopped"   # defined, not running (shut off, crashed)
    MISSING = "missing"   # not defined on the host


@dataclass(frozen=True)
class NetworkSpec:
    """A recovery-host network: ``name`` (what NICs refer to), ``kind`` isolated | user | bridge, ``bridge``."""
    name: str
    kind: str
    bridge: str | None = None

    def to_text(self) -> str:
        return f"bridge:{self.bridge}" if self.kind == "bridge" else self.kind


_BRIDGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")   # Linux interface names: at most 15 bytes


def parse_network(text: str) -> NetworkSpec:
    """``NAME=isolated|user|bridge:BR`` → a :class:`NetworkSpec` (the name checked by the name rule)."""
    name, sep, kind = text.partition("=")
    if not sep:
        raise InvalidInput(f"network {text!r} is not NAME=isolated|user|bridge:BR", field="network")
    name = check_name(name, "network name")
    if kind in ("isolated", "user"):
        return NetworkSpec(name, kind)
    if kind.startswith("bridge:") and _BRIDGE.fullmatch(kind[7:]):
        return NetworkSpec(name, "bridge", kind[7:])
    raise InvalidInput(f"network kind {kind!r} of {name!r} is not isolated, user or bridge:BR (BR an interface "
                       "name of at most 15 characters)", field="network")


@dataclass(frozen=True)
class DiskSpec:
    """A VM disk: an NBD export (``nbd_host``, ``nbd_port``, ``nbd_export``) or a local raw image (``path``)."""
    name: str
    path: Path | None = None
    nbd_host: str | None = None
    nbd_port: int | None = None
    nbd_export: str | None = None


@dataclass(frozen=True)
class NicSpec:
    name: str
    network: str
    mac: str | None = None


@dataclass
class VMSpec:
    """What a recovery host needs to run a recovered machine. ``firmware`` is ``bios`` or ``uefi`` (OVMF on the
    host)."""
    name: str
    cpus: int = 1
    memory_mib: int = 256
    firmware: str = "bios"
    disks: list[DiskSpec] = field(default_factory=list)
    nics: list[NicSpec] = field(default_factory=list)
    config_drive: Path | None = None
    serial_log: Path | None = None

    def validate(self, networks: dict[str, NetworkSpec]) -> None:
        check_name(self.name, "VM name")
        if not 1 <= self.cpus <= 64:
            raise InvalidInput(f"{self.cpus} CPUs is out of range (1-64)", field="cpus")
        if not 16 <= self.memory_mib <= 1024 * 1024:
            raise InvalidInput(f"{self.memory_mib} MiB of memory is out of range (16 MiB-1 TiB)", field="memory_mib")
        if self.firmware not in FIRMWARES:
            raise InvalidInput(f"firmware {self.firmware!r} is not supported here (bios or uefi)", field="firmware")
        if not self.disks:
            raise InvalidInput("a VM needs at least one disk", field="disks")
        for n in self.nics:
            if n.network not in networks:
                raise InvalidInput(f"NIC {n.name} names network {n.network!r}, which the recovery host does not have "
                                   f"(it has: {', '.join(sorted(networks)) or 'none'})", field="nic",
                                   advice="Map the NIC to one of the host's networks with `lifeboat machine settings "
                                          "--nic NIC=NETWORK`, or add the network to the host.")


class RecoveryHost(Protocol):
    """A hypervisor that runs recovered machines. Implementations: :class:`engine.recovery.hosts.libvirt.LibvirtHost`."""

    name: str
    networks: dict[str, NetworkSpec]

    async def check(self) -> dict[str, object]:
        """Reach the hypervisor; what it is (version, acceleration). Raises ``HypervisorError``."""
        ...

    async def define(self, spec: VMSpec) -> None:
        """Define the VM (and the networks its NICs need); refuses a name already defined."""
        ...

    async def start(self, name: str) -> None: ...

    async def stop(self, name: str, *, timeout: float = 10.0) -> None:
        """Ask the guest to power off; power it off when it has not within ``timeout``."""
        ...

    async def destroy(self, name: str) -> None:
        """Power off (if running) and undefine; nothing of the VM stays on the host. A missing VM is fine."""
        ...

    async def state(self, name: str) -> VMState: ...

    async def agent_ping(self, name: str) -> bool:
        """True when the VM's QEMU guest agent answers ``guest-ping`` (False: no agent, or not up yet)."""
        ...


@dataclass
class BootWatch:
    """Follows a serial log file for a pattern. ``seen`` the matching line once found."""
    log: Path
    pattern: re.Pattern[str]
    seen: str | None = None
    _pos: int = 0
    _text: str = ""

    def poll(self) -> bool:
        try:
            with open(self.log, "rb") as f:
                f.seek(self._pos)
                chunk = f.read()
        except FileNotFoundError:
            return False
        self._pos += len(chunk)
        self._text += chunk.decode("utf-8", "replace")
        m = self.pattern.search(self._text)
        if m:
            start = self._text.rfind("\n", 0, m.start()) + 1
            end = self._text.find("\n", m.end())
            self.seen = self._text[start:end if end >= 0 else None].strip()
            return True
        return False

    def tail(self, n: int = TAIL_LINES) -> list[str]:
        return [ln.rstrip("\r") for ln in self._text.splitlines()[-n:]]


async def wait_for_boot(log: Path, pattern: str, timeout: float, *, vm: str, interval: float = 0.2,
                        agent: Callable[[], Awaitable[bool]] | None = None,
                        agent_interval: float = AGENT_PING_INTERVAL) -> tuple[float, str]:
    """Wait until the guest says it is up: the serial log shows ``pattern`` (a regex), or ``agent`` (the host's
    guest-agent ping) answers True, whichever comes first; (seconds waited, the matching line or
    ``"guest agent answered guest-ping"``). On timeout a :class:`BootTimeout` whose message ends with the
    console's last lines (also in ``details["console"]``)."""
    watch = BootWatch(log, re.compile(pattern))
    t0 = time.monotonic()
    next_ping = t0 + agent_interval
    while True:
        if watch.poll():
            return time.monotonic() - t0, watch.seen or ""
        if agent is not None and time.monotonic() >= next_ping:
            next_ping = time.monotonic() + agent_interval
            if await agent():
                return time.monotonic() - t0, AGENT_BOOT_LINE
        if time.monotonic() - t0 >= timeout:
            tail = watch.tail()
            shown = "\n".join(f"  | {ln}" for ln in tail) if tail else "  (the console printed nothing)"
            raise BootTimeout(f"VM {vm} did not print /{pattern}/ on its serial console within {timeout:g} s; its "
                              f"last console lines:\n{shown}", console=tail, serial_log=str(log))
        await asyncio.sleep(interval)
