"""A recovery-host boot from an Azure point, every role in its own process: the appliance's vault is an Azurite
container (`lifeboat vault set --kind azure`), the protected disk is the recovery tests' bootable image. A failover
boots the point on the local libvirt recovery host (the VM's disk is the vault view of page-blob snapshot + cache
logs, over NBD); the commit then writes the disk as a VHD-ready page blob whose footer parses and whose data equals
the committed image byte for byte."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from engine.vault.azure import vhd
from engine.vault.azure.rest import AzureBlobClient, Credential
from tests.azurite import KEY, Azurite, azurite_missing
from tests.conftest import free_port, need_tool
from tests.engine.recovery.boot_image import MARKER_OFFSET, SECTOR
from tests.engine.test_cli import LIFEBOAT, lb, lbj, wait


def _write_marker(url: str, text: str, tmp: Path) -> None:
    src = tmp / "marker.bin"
    src.write_bytes(text.encode().ljust(SECTOR, b"\0"))
    subprocess.run(["qemu-io", "-f", "raw", url, "-c", f"write -s {src} {MARKER_OFFSET} {SECTOR}"], check=True,
                   capture_output=True)


@pytest.fixture
def azurite(tmp_path: Path):
    why = azurite_missing()
    if why:
        pytest.skip(why)
    az = Azurite(tmp_path / "azurite")
    az.start()
    yield az
    az.stop()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_boot_from_an_azure_point_and_commit_to_a_vhd(recovery_host: str, boot_disk: Path, azurite: Azurite,
                                                      tmp_path: Path) -> None:
    need_tool("qemu-io", "qemu-img", "qemu-system-x86_64")
    home, ahome = tmp_path / "appliance", tmp_path / "agent"
    disk = tmp_path / "disk.img"
    disk.write_bytes(boot_disk.read_bytes())
    _write_marker(str(disk), "protected-into-azure", tmp_path)
    container = "boot" + uuid.uuid4().hex[:10]
    azurite.create_container(container)
    machine, hostname = f"az{os.getpid()}", f"rh{os.getpid()}"
    cport, dport, nport = free_port(), free_port(), free_port()
    H = ("--home", str(home))
    lb("appliance", "init", *H, "--control-port", str(cport), "--data-port", str(dport), "--listen", "127.0.0.1")
    p = subprocess.run([*LIFEBOAT, "vault", "set", *H, "--kind", "azure", "--account-url", azurite.url,
                        "--container", container, "--key-stdin"], input=KEY + "\n", capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    procs = []
    try:
        procs.append(subprocess.Popen([*LIFEBOAT, "appliance", "run", *H], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
        wait(lambda: lb("status", *H, check=False).returncode == 0, 30, "appliance")
        lb("agent", "register", "--home", str(ahome), "--appliance", f"127.0.0.1:{cport}",
           "--passphrase-file", str(home / "passphrase.txt"), "--name", machine)
        procs.append(subprocess.Popen([*LIFEBOAT, "agent", "run", "--home", str(ahome), "--disk", f"d0={disk}",
                                       "--nbd", f"127.0.0.1:{nport}"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
        lb("policy", "set", *H, "fast", "--rpo-threshold", "30s", "--retention", "1h", "--app-consistent", "1h",
           "--crash-interval", "1s")
        lb("protect", *H, machine, "--policy", "fast")
        wait(lambda: (s := lbj("status", *H))["machines"] and s["machines"][0]["state"] == "protected", 60,
             "protected")
        wait(lambda: lbj("status", *H)["machines"][0].get("points", 0) >= 1, 30, "a point")
        lbj("host", "add", *H, hostname, "--kind", "qemu", "--uri", recovery_host, "--network", "lan=isolated")
        lbj("machine", "settings", *H, machine, "--cpus", "1", "--memory-mib", "256", "--boot-pattern",
            "LIFEBOAT-BOOTED", "--boot-timeout", "90")

        t0 = time.monotonic()
        r = lbj("failover", *H, machine, "--host", hostname, "--point", "latest")
        print(f"failover from an Azure point to a booted VM: {time.monotonic() - t0:.1f} s")
        assert r["state"] == "succeeded", r
        vm = r["vm"]
        assert "LIFEBOAT-MARKER: protected-into-azure" in Path(vm["serial_log"]).read_text()   # read from Azure
        _write_marker(f"nbd://{vm['nbd']}/d0", "written-before-commit", tmp_path)

        t0 = time.monotonic()
        k = lbj("failover-commit", *H, machine, "--stop-timeout", "1s")
        print(f"commit with the VHD page blob: {time.monotonic() - t0:.1f} s")
        assert k["state"] == "succeeded", k
        assert [st["name"] for st in k["steps"]] == ["copy", "stop-vm", "copy-changed", "publish-vhd", "switch",
                                                     "wait-boot", "release"]
        image = home / "failovers" / machine / "committed" / "d0.img"
        out = k["result"]["vhd"]["d0"]
        size = image.stat().st_size
        vsize = vhd.vhd_data_size(size)
        assert out["blob"] == f"{machine}/vhd/d0.vhd" and out["vhd_size"] == vsize
        c = AzureBlobClient(azurite.url, container, Credential(key=KEY))
        blob = c.get_blob(out["blob"])
        c.close()
        assert len(blob) == vsize + 512
        f = vhd.parse_footer(blob[vsize:])
        assert (f.cookie, f.disk_type, f.current_size, f.checksum) == (b"conectix", 2, vsize,
                                                                      vhd.checksum(blob[vsize:]))
        # the VHD is the committed disk (the VM, restarted on the image, writes nothing to it)
        assert hashlib.sha256(blob[:size]).digest() == hashlib.sha256(image.read_bytes()).digest()
        assert not any(blob[size:vsize])
        assert blob[MARKER_OFFSET:MARKER_OFFSET + 21] == b"written-before-commit"
        assert "LIFEBOAT-MARKER: written-before-commit" in Path(k["vm"]["serial_log"]).read_text()
    finally:
        for pr in reversed(procs):
            pr.terminate()
            try:
                pr.wait(30)
            except subprocess.TimeoutExpired:
                pr.kill()
        subprocess.run(["virsh", "-c", recovery_host, "destroy", f"lifeboat-{machine}"], capture_output=True)
        subprocess.run(["virsh", "-c", recovery_host, "undefine", f"lifeboat-{machine}"], capture_output=True)
