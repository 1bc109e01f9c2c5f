"""A recovery host driven through libvirt's own client, ``virsh`` (local ``qemu:///system`` or remote
``qemu+ssh://`` / ``qemu+tls://``).

Why virsh and not the Python binding: Debian's ``python3-libvirt`` serves only ``/usr/bin/python3``, and PyPI's
``libvirt-python`` must be compiled against ``libvirt-dev`` on every appliance (headers, pkg-config, a compiler) and
pinned to the daemon's version; ``virsh`` comes with ``libvirt-clients``, speaks the same RPC to the same daemon, is
what operators use to inspect what Lifeboat made, and its XML in/out is the whole API we need. Every call goes
through :func:`engine.platform.run_tool` with a timeout.

Domains are named ``lifeboat-<VM>`` and run with ``type='qemu'`` (TCG) unless libvirt offers KVM. QEMU runs as the
appliance's own user and group (a static DAC label), so it reads exactly the overlay sockets, images and config drive
the appliance can read, and libvirt relabels nothing. Networks: ``isolated`` is a libvirt network with no
``<forward>`` (a bridge with no uplink and no address: VMs on it reach each other, nothing else), ``user`` is
``<interface type='user'>`` (QEMU's user-mode NAT: outbound only, NOT isolated), ``bridge:BR`` an existing bridge.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from ... import platform
from ...errors import AlreadyExists, HypervisorError, InvalidInput
from .base import NetworkSpec, VMSpec, VMState

DOMAIN_PREFIX = "lifeboat-"
_URI = re.compile(r"qemu(\+(ssh|tls|tcp|unix))?://[A-Za-z0-9.@:\[\]_-]*/(system|session)(\?[A-Za-z0-9=&/._-]*)?")
VIRSH_TIMEOUT = 60.0
#: Where Debian's ovmf package puts the UEFI firmware (libvirt finds it through /usr/share/qemu/firmware/*.json)
OVMF_CODE = ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_CODE_4M.fd")


def check_uri(uri: str) -> str:
    if not _URI.fullmatch(uri):
        raise InvalidInput(f"{uri!r} is not a libvirt QEMU URI", field="uri",
                           advice="Use qemu:///system, or qemu+ssh://USER@HOST/system / qemu+tls://HOST/system.")
    return uri


def domain_name(vm: str) -> str:
    return DOMAIN_PREFIX + vm


def network_name(host: str, net: str) -> str:
    return f"{DOMAIN_PREFIX}{host}-{net}"


def bridge_name(host: str, net: str) -> str:
    """A Linux bridge name (≤ 15 bytes) for an isolated network, stable per host and network."""
    return "lbi" + hashlib.sha256(f"{host}/{net}".encode()).hexdigest()[:10]


def isolated_network_xml(host: str, net: str) -> str:
    # no <forward> and no <ip>: libvirt makes a bridge with no uplink, no DHCP and no route anywhere
    return (f"<network><name>{escape(network_name(host, net))}</name>"
            f"<bridge name={quoteattr(bridge_name(host, net))} stp='off' delay='0'/></network>")


def domain_xml(spec: VMSpec, host: str, networks: dict[str, NetworkSpec], *, kvm: bool,
               run_as: tuple[int, int] | None) -> str:
    """The libvirt domain for a spec (pure: testable without a host)."""
    q = quoteattr
    parts = [f"<domain type={q('kvm' if kvm else 'qemu')}>", f"<name>{escape(domain_name(spec.name))}</name>",
             f"<memory unit='MiB'>{spec.memory_mib}</memory>", f"<vcpu>{spec.cpus}</vcpu>",
             # UEFI: libvirt picks the host's OVMF build (and makes the VM's NVRAM store) from firmware='efi'
             f"<os{' firmware=' + q('efi') if spec.firmware == 'uefi' else ''}><type arch='x86_64' machine='pc'>hvm"
             "</type>" + ("<firmware><feature enabled='no' name='secure-boot'/></firmware>"
                          if spec.firmware == "uefi" else "") + "<boot dev='hd'/></os>",
             "<features><acpi/></features>", "<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot>"
             "<on_crash>destroy</on_crash>", "<devices>"]
    letters = "abcdefghijklmnopqrstuvwxyz"
    disks = list(spec.disks)
    for i, d in enumerate(disks):
        target = f"<target dev={q('vd' + letters[i])} bus='virtio'/>"
        if d.path is not None:
            parts.append(f"<disk type='file' device='disk'><driver name='qemu' type='raw' cache='none'/>"
                         f"<source file={q(str(d.path))}/>{target}</disk>")
        else:
            export = f" name={q(d.nbd_export)}" if d.nbd_export else ""
            parts.append(f"<disk type='network' device='disk'><driver name='qemu' type='raw' cache='none'/>"
                         f"<source protocol='nbd'{export}><host name={q(d.nbd_host or '127.0.0.1')} "
                         f"port={q(str(d.nbd_port))}/></source>{target}</disk>")
    if spec.config_drive is not None:   # a read-only virtio disk labelled cidata (cloud-init finds it by label)
        parts.append(f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
                     f"<source file={q(str(spec.config_drive))}/><target dev={q('vd' + letters[len(disks)])} "
                     "bus='virtio'/><readonly/></disk>")
    for n in spec.nics:
        net = networks[n.network]
        mac = f"<mac address={q(n.mac)}/>" if n.mac else ""
        if net.kind == "isolated":
            parts.append(f"<interface type='network'>{mac}<source network={q(network_name(host, net.name))}/>"
                         "<model type='virtio'/></interface>")
        elif net.kind == "user":
            parts.append(f"<interface type='user'>{mac}<model type='virtio'/></interface>")
        else:
            parts.append(f"<interface type='bridge'>{mac}<source bridge={q(net.bridge or '')}/>"
                         "<model type='virtio'/></interface>")
    # the QEMU guest agent's channel: a guest that runs qemu-ga answers guest-ping through it (boot detection);
    # one without an agent simply never answers
    parts.append("<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>")
    if spec.serial_log is not None:
        parts.append(f"<serial type='file'><source path={q(str(spec.serial_log))}/><target port='0'/></serial>")
    parts += ["<memballoon model='none'/>", "</devices>"]
    if run_as is not None:   # a local host: QEMU runs as the appliance's user and reads what it can read
        parts.append(f"<seclabel type='static' model='dac' relabel='no'><label>+{run_as[0]}:+{run_as[1]}</label>"
                     "</seclabel>")
    parts.append("</domain>")
    return "".join(parts)


class LibvirtHost:
    """A :class:`~engine.recovery.hosts.base.RecoveryHost` on libvirt at ``uri``."""

    def __init__(self, name: str, uri: str, networks: dict[str, NetworkSpec], *, accel: str = "tcg") -> None:
        if accel not in ("tcg", "kvm"):
            raise InvalidInput(f"acceleration {accel!r} is not tcg or kvm", field="accel")
        self.name = name
        self.uri = check_uri(uri)
        self.networks = dict(networks)
        # TCG unless asked: libvirt offers KVM wherever /dev/kvm exists, but on this machine kind a KVM guest
        # starts and never runs (FACTS.md); `--accel kvm` is the operator's statement that KVM works there.
        self.accel = accel
        #: qemu:///system or qemu:///session: the hypervisor runs on this machine and sees the appliance's files
        self.local = self.uri.startswith("qemu:///")

    async def _virsh(self, *args: str, stdin: bytes | None = None, ok_errors: tuple[str, ...] = ()) -> str:
        try:
            rc, out, err = await platform.run_tool(["virsh", "-q", "-c", self.uri, *args], stdin=stdin,
                                                   timeout=VIRSH_TIMEOUT)
        except FileNotFoundError:
            raise HypervisorError("virsh is not installed on the appliance",
                                  advice="Install libvirt-clients (scripts/setup.sh does).") from None
        except TimeoutError:
            raise HypervisorError(f"virsh {args[0]} on {self.uri} did not answer within {VIRSH_TIMEOUT:g} s") from None
        text = err.decode("utf-8", "replace").strip()
        if rc != 0:
            if any(e in text for e in ok_errors):
                return ""
            raise HypervisorError(f"recovery host {self.name} ({self.uri}): virsh {args[0]} failed: "
                                  f"{text.splitlines()[-1] if text else f'exit {rc}'}", host=self.name)
        return out.decode("utf-8", "replace")

    async def check(self) -> dict[str, object]:
        version = (await self._virsh("version")).strip().splitlines()
        caps = await self._virsh("capabilities")
        if self.accel == "kvm" and "<domain type='kvm'" not in caps:
            raise HypervisorError(f"recovery host {self.name} ({self.uri}) offers no KVM",
                                  advice="Register the host with --accel tcg.")
        return {"uri": self.uri, "version": [v.strip() for v in version if v.strip()], "accel": self.accel}

    async def _ensure_network(self, net: NetworkSpec) -> None:
        if net.kind != "isolated":
            return
        name = network_name(self.name, net.name)
        if await self._virsh("net-info", name, ok_errors=("Network not found", "no network with matching name")):
            return
        await self._virsh("net-create", "/dev/stdin", stdin=isolated_network_xml(self.name, net.name).encode(),
                          ok_errors=("already exists",))

    async def define(self, spec: VMSpec) -> None:
        spec.validate(self.networks)
        if spec.firmware == "uefi" and self.local and not any(Path(p).exists() for p in OVMF_CODE):
            raise HypervisorError(f"VM {spec.name} boots with UEFI, and recovery host {self.name} has no OVMF "
                                  "firmware", advice="Install Debian's ovmf package on the recovery host "
                                  "(scripts/setup.sh does), or set --firmware bios.", host=self.name)
        if await self.state(spec.name) != VMState.MISSING:
            raise AlreadyExists(f"recovery host {self.name} already has a VM {domain_name(spec.name)}",
                                advice="Cancel the earlier failover first (`lifeboat failover-cancel`).")
        for n in spec.nics:
            await self._ensure_network(self.networks[n.network])
        xml = domain_xml(spec, self.name, self.networks, kvm=self.accel == "kvm",
                         run_as=platform.user_ids() if self.local else None)
        await self._virsh("define", "/dev/stdin", stdin=xml.encode())

    async def start(self, name: str) -> None:
        await self._virsh("start", domain_name(name))

    async def stop(self, name: str, *, timeout: float = 10.0) -> None:
        if await self.state(name) != VMState.RUNNING:
            return
        await self._virsh("shutdown", domain_name(name), ok_errors=("not running",))
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            if await self.state(name) != VMState.RUNNING:
                return
            await asyncio.sleep(0.2)
        await self._virsh("destroy", domain_name(name), ok_errors=("not running", "not found", "failed to get domain"))

    async def destroy(self, name: str) -> None:
        dom = domain_name(name)
        await self._virsh("destroy", dom, ok_errors=("not running", "not found", "no domain with matching name", "failed to get domain"))
        await self._virsh("undefine", "--nvram", dom,   # --nvram: a UEFI VM's variable store goes with it
                          ok_errors=("not found", "no domain with matching name", "failed to get domain"))

    async def agent_ping(self, name: str) -> bool:
        try:
            out = await self._virsh("qemu-agent-command", domain_name(name), '{"execute":"guest-ping"}',
                                    "--timeout", "2")
        except HypervisorError:   # no agent channel, agent not running (yet), domain gone: not booted by this sign
            return False
        return '"return"' in out

    async def state(self, name: str) -> VMState:
        out = await self._virsh("domstate", domain_name(name),
                                ok_errors=("not found", "no domain with matching name", "failed to get domain"))
        s = out.strip()
        if not s:
            return VMState.MISSING
        return VMState.RUNNING if s in ("running", "paused", "in shutdown") else VMState.STOPPED
