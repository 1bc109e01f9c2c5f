"""The recovery-host interface: domain XML from a spec, networks, settings and their re-IP config, boot detection
(its timeout carries the console's last lines), and a real boot on the local libvirt host."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from engine.errors import BootTimeout, InvalidInput, InvalidName
from engine.recovery.config_drive import build_config_drive
from engine.recovery.hosts import DiskSpec, NicSpec, VMSpec, VMState, parse_network, wait_for_boot
from engine.recovery.hosts.libvirt import LibvirtHost, domain_xml, isolated_network_xml, network_name
from engine.recovery.settings import RecoverySettings, network_config, nic_mac
from tests.engine.recovery.boot_image import BOOTED, write_marker_file


def test_networks_parse_and_refuse() -> None:
    assert parse_network("drill=isolated").kind == "isolated"
    assert parse_network("out=user").to_text() == "user"
    n = parse_network("lan=bridge:br0")
    assert (n.kind, n.bridge, n.to_text()) == ("bridge", "br0", "bridge:br0")
    for bad in ("lan", "lan=nat", "lan=bridge:", "lan=bridge:this-name-is-too-long", "lan=bridge:a b"):
        with pytest.raises(InvalidInput):
            parse_network(bad)
    with pytest.raises(InvalidName):
        parse_network("../x=user")


def test_domain_xml_from_spec() -> None:
    nets = {n.name: n for n in map(parse_network, ["iso=isolated", "out=user", "lan=bridge:br0"])}
    spec = VMSpec("web1", cpus=2, memory_mib=384,
                  disks=[DiskSpec("d0", nbd_host="127.0.0.1", nbd_port=10809, nbd_export="d0"),
                         DiskSpec("d1", path=Path("/srv/x'y.img"))],
                  nics=[NicSpec("eth0", "iso", "52:54:00:00:00:01"), NicSpec("eth1", "out"), NicSpec("eth2", "lan")],
                  config_drive=Path("/h/cidata.iso"), serial_log=Path("/h/serial.log"))
    spec.validate(nets)
    root = ET.fromstring(domain_xml(spec, "local", nets, kvm=False, run_as=(0, 0)))
    assert root.find("seclabel/label").text == "+0:+0"
    assert root.get("type") == "qemu" and root.findtext("name") == "lifeboat-web1"
    assert root.findtext("vcpu") == "2" and root.findtext("memory") == "384"
    disks = root.findall("devices/disk")
    assert [d.find("target").get("dev") for d in disks] == ["vda", "vdb", "vdc"]
    src = disks[0].find("source")
    assert (src.get("protocol"), src.get("name"), src.find("host").get("port")) == ("nbd", "d0", "10809")
    assert disks[1].find("source").get("file") == "/srv/x'y.img"   # quoted, not broken
    assert disks[2].find("readonly") is not None
    ifs = root.findall("devices/interface")
    assert [i.get("type") for i in ifs] == ["network", "user", "bridge"]
    assert ifs[0].find("source").get("network") == network_name("local", "iso")
    assert ifs[0].find("mac").get("address") == "52:54:00:00:00:01"
    assert ifs[2].find("source").get("bridge") == "br0"
    assert root.find("devices/serial/source").get("path") == "/h/serial.log"
    assert root.find("os").get("firmware") is None and root.find("os/firmware") is None   # BIOS: SeaBIOS
    [agent] = root.findall("devices/channel")   # the guest agent's channel (boot detection by guest-ping)
    assert agent.get("type") == "unix" and agent.find("target").attrib == {"type": "virtio",
                                                                          "name": "org.qemu.guest_agent.0"}
    net = ET.fromstring(isolated_network_xml("local", "iso"))
    assert net.find("forward") is None and net.find("ip") is None   # isolated: no uplink, no address
    assert len(net.find("bridge").get("name")) <= 15
    # a NIC on a network the host does not have is refused while planning
    with pytest.raises(InvalidInput, match="does not have"):
        VMSpec("web1", disks=[DiskSpec("d0", path=Path("/x"))], nics=[NicSpec("eth0", "dmz")]).validate(nets)


def test_settings_validation_and_network_config() -> None:
    s = RecoverySettings.from_dict({"nics": {"eth0": "lan"}, "ips": {"eth0": "10.0.5.20/24"},
                                    "gateway": "10.0.5.1", "dns": ["10.0.5.53"]})
    text = network_config("web1", s)
    assert "version: 2" in text and "- 10.0.5.20/24" in text and "via: 10.0.5.1" in text
    assert "addresses: [10.0.5.53]" in text and nic_mac("web1", "eth0") in text
    for bad in ({"cpus": 0}, {"memory_mib": 8}, {"ips": {"eth0": "10.0.5.20"}, "nics": {"eth0": "lan"}},
                {"ips": {"eth0": "10.0.5.300/24"}, "nics": {"eth0": "lan"}}, {"ips": {"eth9": "10.0.0.1/8"}},
                {"gateway": "gw"}, {"dns": ["x"]}, {"boot_pattern": "("}, {"firmware": "efi-secure"}):
        with pytest.raises(InvalidInput):
            RecoverySettings.from_dict(bad)


async def test_config_drive_is_a_cidata_iso(tmp_path: Path) -> None:
    if not shutil.which("genisoimage") or not shutil.which("isoinfo"):
        pytest.skip("genisoimage/isoinfo missing (scripts/setup.sh installs genisoimage)")
    s = RecoverySettings.from_dict({"nics": {"eth0": "lan"}, "ips": {"eth0": "192.0.2.7/24"}})
    iso = await build_config_drive(tmp_path, "web1", "i-1", s)
    pvd = subprocess.run(["isoinfo", "-d", "-i", str(iso)], capture_output=True, text=True).stdout
    assert "Volume id: cidata" in pvd
    files = subprocess.run(["isoinfo", "-R", "-f", "-i", str(iso)], capture_output=True, text=True).stdout.split()
    assert sorted(files) == ["/meta-data", "/network-config", "/user-data"]


async def test_boot_timeout_carries_the_console_tail(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_text("".join(f"line {i}\n" for i in range(30)))
    with pytest.raises(BootTimeout) as e:
        await wait_for_boot(log, "login:", 0.3, vm="web1", interval=0.05)
    assert e.value.code == "LB_BOOT_TIMEOUT" and "line 29" in e.value.message and "line 9\n" not in e.value.message
    assert e.value.details["console"][-1] == "line 29" and len(e.value.details["console"]) == 20
    with log.open("a") as f:
        f.write("web1 login: \n")
    secs, line = await wait_for_boot(log, "login:", 1, vm="web1")
    assert line == "web1 login:"


@pytest.mark.slow
async def test_vm_boots_on_the_libvirt_host(recovery_host: str, boot_disk: Path, tmp_path: Path) -> None:
    """A VM defined from a spec boots (TCG) with its disk, an isolated NIC and a config drive; it is then removed."""
    img = tmp_path / "disk.img"
    shutil.copyfile(boot_disk, img)
    write_marker_file(img, "host-test")
    name = f"hosttest-{os.getpid()}-{uuid.uuid4().hex[:6]}"   # unique: the host's libvirtd outlives test runs
    hostname = f"t{abs(hash(name)) % 10**6}"
    nets = {"iso": parse_network("iso=isolated")}
    host = LibvirtHost(hostname, recovery_host, nets)
    s = RecoverySettings.from_dict({"nics": {"eth0": "iso"}, "ips": {"eth0": "192.0.2.9/24"}})
    spec = VMSpec(name, disks=[DiskSpec("d0", path=img)], nics=[NicSpec("eth0", "iso", nic_mac(name, "eth0"))],
                  config_drive=await build_config_drive(tmp_path, name, "i-1", s), serial_log=tmp_path / "serial.log")
    try:
        await host.define(spec)
        t0 = time.monotonic()
        await host.start(name)
        assert await host.state(name) == VMState.RUNNING
        secs, _ = await wait_for_boot(tmp_path / "serial.log", BOOTED, 90, vm=name)
        print(f"boot to {BOOTED} on the libvirt host (TCG): {time.monotonic() - t0:.1f} s")
        text = (tmp_path / "serial.log").read_text()
        assert "LIFEBOAT-MARKER: host-test" in text and "192.0.2.9/24" in text
        # the guest agent's channel is there, but busybox runs no qemu-ga: the real ping says "not up" (False)
        assert await host.agent_ping(name) is False
        with pytest.raises(Exception, match="already has"):
            await host.define(spec)
        await host.stop(name, timeout=2)   # busybox has no ACPI daemon: powered off after the grace time
        assert await host.state(name) == VMState.STOPPED
    finally:
        await host.destroy(name)
        subprocess.run(["virsh", "-c", recovery_host, "net-destroy", network_name(hostname, "iso")],
                       capture_output=True)
    assert await host.state(name) == VMState.MISSING
    await asyncio.sleep(0)


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_guest_agent_answers_a_real_boot(recovery_host: str, boot_disk_ga: Path, tmp_path: Path) -> None:
    """Boot detection by the guest agent with a real one: the guest runs Debian's qemu-ga on the domain's
    org.qemu.guest_agent.0 channel, and the console pattern asked for is one the guest never prints, so only
    guest-ping through libvirt (virsh qemu-agent-command) can say the machine booted."""
    img = tmp_path / "disk.img"
    shutil.copyfile(boot_disk_ga, img)
    write_marker_file(img, "ga-test")
    name = f"gatest-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    host = LibvirtHost(f"g{abs(hash(name)) % 10**6}", recovery_host, {})
    spec = VMSpec(name, disks=[DiskSpec("d0", path=img)], serial_log=tmp_path / "serial.log")
    try:
        await host.define(spec)
        t0 = time.monotonic()
        await host.start(name)
        secs, line = await wait_for_boot(tmp_path / "serial.log", "NEVER-PRINTED-BY-THIS-GUEST", 120, vm=name,
                                         agent=lambda: host.agent_ping(name), agent_interval=0.5)
        print(f"booted by the guest agent's answer after {time.monotonic() - t0:.1f} s")
        assert line == "guest agent answered guest-ping"
        text = (tmp_path / "serial.log").read_text()
        assert "LIFEBOAT-GA: /dev/vport" in text and "LIFEBOAT-MARKER: ga-test" in text, text[-2000:]
        assert await host.agent_ping(name) is True
    finally:
        await host.destroy(name)
    assert await host.state(name) == VMState.MISSING


def test_uefi_domain_xml() -> None:
    """UEFI: libvirt picks the host's OVMF from firmware='efi' (secure boot off) and keeps an NVRAM per VM."""
    assert RecoverySettings.from_dict({"firmware": "uefi"}).firmware == "uefi"
    spec = VMSpec("web2", firmware="uefi", disks=[DiskSpec("d0", path=Path("/x.img"))])
    spec.validate({})
    root = ET.fromstring(domain_xml(spec, "local", {}, kvm=False, run_as=None))
    os_el = root.find("os")
    assert os_el.get("firmware") == "efi" and os_el.find("type").get("machine") == "pc"
    feat = os_el.find("firmware/feature")
    assert (feat.get("name"), feat.get("enabled")) == ("secure-boot", "no")
    assert os_el.find("boot").get("dev") == "hd"
    with pytest.raises(InvalidInput, match="bios or uefi"):
        VMSpec("web3", firmware="coreboot", disks=[DiskSpec("d0", path=Path("/x.img"))]).validate({})


async def test_boot_detected_by_the_guest_agent(tmp_path: Path) -> None:
    """Whichever sign comes first: a guest agent that answers counts as booted even before the console pattern."""
    log = tmp_path / "serial.log"
    log.write_text("booting\n")
    asks = []

    async def agent() -> bool:
        asks.append(1)
        return len(asks) >= 2

    secs, line = await wait_for_boot(log, "login:", 5, vm="web1", interval=0.02, agent=agent, agent_interval=0.05)
    assert line == "guest agent answered guest-ping" and len(asks) == 2 and secs < 5

    async def silent() -> bool:
        return False
    log.write_text("web1 login:\n")
    assert (await wait_for_boot(log, "login:", 5, vm="web1", agent=silent))[1] == "web1 login:"
