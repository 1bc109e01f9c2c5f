"""Unplanned failover for real, every role in its own process: the protected machine is a QEMU VM whose disk (a
bootable image) is the agent's NBD export, and it writes two markers through its own disk; a bookmark between
them; the source VM killed; failover at the bookmark's tag to the local libvirt recovery host. The recovered VM boots from
the vault through the NBD overlay and prints the bookmark's marker (not the later one) and its re-IP configuration;
a second failover is refused; the VM's writes land in the overlay, never in the vault; cancel leaves no VM and no
overlay, and the machine is protected again."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, need_tool
from tests.engine.recovery.boot_image import MARKER_OFFSET, SECTOR
from tests.engine.test_cli import LIFEBOAT, lb, lbj, wait


def _write_marker(url: str, text: str, tmp: Path) -> None:
    src = tmp / "marker.bin"
    src.write_bytes(text.encode().ljust(SECTOR, b"\0"))
    subprocess.run(["qemu-io", "-f", "raw", url, "-c", f"write -s {src} {MARKER_OFFSET} {SECTOR}"], check=True,
                   capture_output=True)


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _marker(image: Path) -> str:
    with open(image, "rb") as f:
        f.seek(MARKER_OFFSET)
        return f.read(SECTOR).rstrip(b"\0").decode()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_failover_boots_the_bookmark_and_cancel_leaves_nothing(recovery_host: str, boot_disk: Path,
                                                               tmp_path: Path) -> None:
    need_tool("qemu-io", "qemu-system-x86_64")
    home, ahome = tmp_path / "appliance", tmp_path / "agent"
    disk = tmp_path / "disk.img"
    disk.write_bytes(boot_disk.read_bytes())
    machine, hostname = f"boot{os.getpid()}", f"rh{os.getpid()}"
    cport, dport, nport = free_port(), free_port(), free_port()
    H = ("--home", str(home))
    lb("appliance", "init", *H, "--control-port", str(cport), "--data-port", str(dport), "--listen", "127.0.0.1")
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
        # the protected machine is itself a QEMU VM whose disk is the agent's NBD export; it writes its markers
        # through its own disk, SOURCE_GAP seconds apart: the bookmark is taken in between
        serial = tmp_path / "source-serial.log"
        procs.append(subprocess.Popen(["qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-display", "none",
                                       "-nic", "none", "-serial", f"file:{serial}", "-drive",
                                       f"file=nbd://127.0.0.1:{nport}/d0,format=raw,if=virtio,cache=none"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        source_vm = procs[-1]
        wait(lambda: "WROTE: source-marker-1" in _text(serial), 90, "the source VM's first marker")
        bm = json.loads(lb("agent", "bookmark", "--home", str(ahome), "--tag", "m1", "--json").stdout)
        assert "source-marker-2" not in _text(serial), "the bookmark came too late to be between the two markers"
        wait(lambda: "WROTE: source-marker-2" in _text(serial), 60, "the source VM's second marker")
        wait(lambda: (s := lbj("status", *H)["machines"][0])["rpo_seconds"] == 0 and s["health"] == "ok", 30, "RPO 0")
        time.sleep(1.5)   # a crash-consistent point after marker 2: "latest" would show it
        source_vm.kill()  # the disaster: the source is gone (unplanned failover)
        source_vm.wait(10)

        # the recovery host and the machine's recovery settings
        p = lb("host", "add", *H, hostname, "--network", "lan=nat", check=False)
        assert p.returncode != 0 and "LB_INVALID_INPUT" in p.stderr and "what to do" in p.stderr
        h = lbj("host", "add", *H, hostname, "--kind", "qemu", "--uri", recovery_host, "--network", "lan=isolated",
                "--network", "out=user")
        assert h["networks"] == {"lan": "isolated", "out": "user"} and h["hypervisor"]["accel"] == "tcg"
        assert [x["name"] for x in lbj("host", "list", *H)] == [hostname]
        s = lbj("machine", "settings", *H, machine, "--cpus", "1", "--memory-mib", "256", "--nic", "eth0=lan",
                "--ip", "eth0=192.0.2.10/24", "--gateway", "192.0.2.1", "--dns", "192.0.2.53",
                "--boot-pattern", "LIFEBOAT-BOOTED", "--boot-timeout", "90")
        assert s["nics"] == {"eth0": "lan"} and s["ips"] == {"eth0": "192.0.2.10/24"} and s["memory_mib"] == 256
        p = lb("machine", "settings", *H, machine, "--ip", "eth0=192.0.2.10", check=False)
        assert p.returncode != 0 and "LB_INVALID_INPUT" in p.stderr
        p = lb("failover", *H, machine, "--host", "nowhere", "--point", "tag:m1", check=False)
        assert p.returncode != 0 and "LB_UNKNOWN_HOST" in p.stderr

        # a guest that never says it booted: the step fails with the console's tail, nothing is left behind
        lb("machine", "settings", *H, machine, "--boot-pattern", "never-printed", "--boot-timeout", "4")
        p = lb("failover", *H, machine, "--host", hostname, "--point", "latest-app", check=False)
        assert p.returncode != 0 and "LB_BOOT_TIMEOUT" in p.stderr and "last console lines" in p.stderr
        assert lbj("vm", "list", *H) == [] and lbj("status", *H)["machines"][0]["state"] == "protected"
        assert not (home / "failovers" / machine / "overlay").exists()
        assert subprocess.run(["virsh", "-c", recovery_host, "domstate", f"lifeboat-{machine}"],
                              capture_output=True).returncode != 0
        lb("machine", "settings", *H, machine, "--boot-pattern", "LIFEBOAT-BOOTED", "--boot-timeout", "90")

        # fail over at the bookmark
        t0 = time.monotonic()
        r = lbj("failover", *H, machine, "--host", hostname, "--point", "tag:m1")
        took = time.monotonic() - t0
        print(f"failover to a booted VM: {took:.1f} s (boot step {r['result']['boot_seconds']:.1f} s)")
        assert r["state"] == "succeeded" and r["result"]["point"]["id"] == bm["point_id"]
        assert [st["name"] for st in r["steps"]] == ["resolve-point", "open-views", "serve-overlay", "config-drive",
                                                     "start-vm", "wait-boot"]
        vms = lbj("vm", "list", *H)
        assert len(vms) == 1
        vm = vms[0]
        assert (vm["machine"], vm["host"], vm["state"], vm["vm_state"], vm["point"]) == (
            machine, hostname, "booted", "running", bm["point_id"])
        assert vm["booted_at"] and vm["serial_log"]
        console = Path(vm["serial_log"]).read_text()
        assert "LIFEBOAT-MARKER: source-marker-1" in console and "source-marker-2" not in console
        assert "- 192.0.2.10/24" in console and "via: 192.0.2.1" in console and "192.0.2.53" in console
        st = lbj("status", *H)["machines"][0]
        assert st["state"] == "failed-over" and st["failover"]["host"] == hostname and not st["agent_connected"]
        assert st["failover"]["point"] == bm["point_id"]
        text = lb("status", *H).stdout
        assert "failed-over" in text and f"failed over to {hostname} at point {bm['point_id']}" in text
        p = lb("failover", *H, machine, "--host", hostname, "--point", "latest", check=False)
        assert p.returncode != 0 and "LB_FAILED_OVER" in p.stderr and "what to do" in p.stderr
        virsh = subprocess.run(["virsh", "-c", recovery_host, "domstate", f"lifeboat-{machine}"],
                               capture_output=True, text=True)
        assert virsh.stdout.strip() == "running"

        # the recovered machine's writes go to the overlay, never into the vault
        _write_marker(f"nbd://{vm['nbd']}/d0", "written-after-failover", tmp_path)
        overlay = home / "failovers" / machine / "overlay"
        assert (overlay / "d0.overlay").exists()

        c = lbj("failover-cancel", *H, machine)
        assert c["cancelled"] and c["host"] == hostname
        assert lbj("vm", "list", *H) == []
        virsh = subprocess.run(["virsh", "-c", recovery_host, "domstate", f"lifeboat-{machine}"],
                               capture_output=True, text=True)
        assert virsh.returncode != 0   # no such domain any more
        assert not (home / "failovers" / machine).exists()
        assert lbj("status", *H)["machines"][0]["state"] == "protected"
        t0 = time.monotonic()   # replication resumes: the agent, refused while failed over, is taken again
        wait(lambda: lbj("status", *H)["machines"][0]["agent_connected"], 60, "the agent reconnected")
        print(f"agent reconnected {time.monotonic() - t0:.1f} s after the cancel")
        p = lb("failover-cancel", *H, machine, check=False)
        assert p.returncode != 0 and "LB_NOT_FAILED_OVER" in p.stderr

        # the vault still holds marker 1 at the bookmark (the overlay write never reached it)
        lbj("failover", *H, machine, "--test", "--point", "tag:m1", "--export", str(tmp_path / "out"))
        assert _marker(tmp_path / "out" / "d0.img") == "source-marker-1"
        lb("failover-cleanup", *H, machine)
        lbj("failover", *H, machine, "--test", "--point", "latest", "--export", str(tmp_path / "latest"))
        assert _marker(tmp_path / "latest" / "d0.img") == "source-marker-2"
        lb("failover-cleanup", *H, machine)
        jobs = lbj("jobs", *H)
        assert [j["kind"] for j in jobs[:3]] == ["failover", "failover", "failover-cancel"]
        assert jobs[0]["state"] == "failed" and jobs[0]["error"]["code"] == "LB_BOOT_TIMEOUT"
        assert jobs[0]["result"]["point"]["id"] == bm["point_id"]   # latest-app: the bookmark
        assert [st["state"] for st in jobs[0]["steps"]][-1] == "failed"
        assert jobs[1]["state"] == jobs[2]["state"] == "succeeded"
    finally:
        for pr in reversed(procs):
            pr.terminate()
            try:
                pr.wait(15)
            except subprocess.TimeoutExpired:
                pr.kill()
        subprocess.run(["virsh", "-c", recovery_host, "destroy", f"lifeboat-{machine}"], capture_output=True)
        subprocess.run(["virsh", "-c", recovery_host, "undefine", f"lifeboat-{machine}"], capture_output=True)
        subprocess.run(["virsh", "-c", recovery_host, "net-destroy", f"lifeboat-{hostname}-lan"], capture_output=True)
