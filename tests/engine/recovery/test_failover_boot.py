"""Failover for real, every role in its own process, one scenario (issue 13): the protected machine is a QEMU VM
whose disk (a bootable image) is the agent's NBD export, and it writes two markers through its own disk; a bookmark
between them. While it still runs, a **planned** failover to the local libvirt recovery host: the agent refuses
writes, the final point reaches the vault, and the recovered VM prints the source's last marker (zero data loss).
**Change point** to the bookmark: the VM restarts and prints the bookmark's marker (not the later one) and its re-IP
configuration; its writes land in the overlay, never in the vault; cancel leaves no VM and no overlay, and the
machine is protected again (the source writes again). An **unplanned** failover at the bookmark, then **commit**:
the committed image's bytes equal the overlay-over-point view, the VM restarts on it, and no other point can be
chosen any more."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, need_tool
from tests.engine.recovery.boot_image import MARKER_OFFSET, SECTOR
from tests.engine.test_cli import LIFEBOAT, lb, lbj, wait


def _write_marker(url: str, text: str, tmp: Path, offset: int = MARKER_OFFSET) -> subprocess.CompletedProcess:
    src = tmp / "marker.bin"
    src.write_bytes(text.encode().ljust(SECTOR, b"\0"))
    return subprocess.run(["qemu-io", "-f", "raw", url, "-c", f"write -s {src} {offset} {SECTOR}"],
                          capture_output=True, text=True)


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _marker(image: Path) -> str:
    with open(image, "rb") as f:
        f.seek(MARKER_OFFSET)
        return f.read(SECTOR).rstrip(b"\0").decode()


def _sha256_of_nbd(url: str, out: Path) -> str:
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", url, str(out)], check=True, capture_output=True)
    return hashlib.sha256(out.read_bytes()).hexdigest()


#: A sector nothing reads (after the marker): the test's own writes to the source go there.
SPARE = MARKER_OFFSET + SECTOR


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_planned_failover_change_point_cancel_failover_and_commit(recovery_host: str, boot_disk: Path,
                                                                  tmp_path: Path) -> None:
    need_tool("qemu-io", "qemu-img", "qemu-system-x86_64")
    home, ahome = tmp_path / "appliance", tmp_path / "agent"
    disk = tmp_path / "disk.img"
    disk.write_bytes(boot_disk.read_bytes())
    machine, hostname = f"boot{os.getpid()}", f"rh{os.getpid()}"
    cport, dport, nport = free_port(), free_port(), free_port()
    H = ("--home", str(home))
    lb("appliance", "init", *H, "--control-port", str(cport), "--data-port", str(dport), "--listen", "127.0.0.1")
    procs = []
    t_start = time.monotonic()
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
        wait(lambda: "WROTE: source-marker-1" in _text(serial), 90, "the source VM's first marker")
        bm = json.loads(lb("agent", "bookmark", "--home", str(ahome), "--tag", "m1", "--json").stdout)
        assert "source-marker-2" not in _text(serial), "the bookmark came too late to be between the two markers"

        # while the source waits for its second marker: the recovery host and the machine's recovery settings
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
        p = lb("failover", *H, machine, "--host", hostname, "--planned", "--point", "latest", check=False)
        assert p.returncode != 0 and "LB_INVALID_INPUT" in p.stderr

        # a guest that never says it booted: the step fails with the console's tail, nothing is left behind
        lb("machine", "settings", *H, machine, "--boot-pattern", "never-printed", "--boot-timeout", "4")
        p = lb("failover", *H, machine, "--host", hostname, "--point", "latest-app", check=False)
        assert p.returncode != 0 and "LB_BOOT_TIMEOUT" in p.stderr and "last console lines" in p.stderr
        assert lbj("vm", "list", *H) == [] and lbj("status", *H)["machines"][0]["state"] == "protected"
        assert not (home / "failovers" / machine / "overlay").exists()
        assert subprocess.run(["virsh", "-c", recovery_host, "domstate", f"lifeboat-{machine}"],
                              capture_output=True).returncode != 0
        lb("machine", "settings", *H, machine, "--boot-pattern", "LIFEBOAT-BOOTED", "--boot-timeout", "90")

        # the failed failover stopped replication for a moment: a planned failover needs the agent back
        wait(lambda: lbj("status", *H)["machines"][0]["agent_connected"], 60, "the agent reconnected")

        # planned failover right after the source's last write (no waiting for RPO 0 here: the failover does it)
        wait(lambda: "WROTE: source-marker-2" in _text(serial), 60, "the source VM's second marker")
        r = lbj("failover", *H, machine, "--host", hostname, "--planned")
        assert r["state"] == "succeeded" and r["result"]["planned"]
        final = r["result"]["point"]
        assert final["kind"] == "app-consistent" and final["tag"].startswith("planned-failover-")
        assert final["seq"] > bm["seq"]
        assert [st["name"] for st in r["steps"]] == ["quiesce", "final-point", "open-views", "serve-overlay",
                                                     "config-drive", "start-vm", "wait-boot"]
        vm = r["vm"]
        assert (vm["state"], vm["kind"], vm["point"]) == ("booted", "planned", final["id"])
        assert "LIFEBOAT-MARKER: source-marker-2" in Path(vm["serial_log"]).read_text()   # zero data loss
        p = _write_marker(f"nbd://127.0.0.1:{nport}/d0", "after-quiesce", tmp_path, SPARE)
        assert "Operation not permitted" in p.stdout + p.stderr   # the quiesced source refuses writes
        st = lbj("status", *H)["machines"][0]
        assert st["state"] == "failed-over" and st["failover"]["host"] == hostname and not st["agent_connected"]
        p = lb("failover", *H, machine, "--host", hostname, "--point", "latest", check=False)
        assert p.returncode != 0 and "LB_FAILED_OVER" in p.stderr and "what to do" in p.stderr

        # change point: back to the bookmark; what the VM wrote is discarded
        _write_marker(f"nbd://{vm['nbd']}/d0", "written-at-final-point", tmp_path)
        t0 = time.monotonic()
        c = lbj("failover-change-point", *H, machine, "--point", "tag:m1")
        print(f"change point to a booted VM: {time.monotonic() - t0:.1f} s")
        assert c["state"] == "succeeded" and c["kind"] == "failover-change-point"
        assert c["result"]["point"]["id"] == bm["point_id"] and c["result"]["previous"] == final["id"]
        assert [st["name"] for st in c["steps"]] == ["resolve-point", "stop-vm", "open-views", "serve-overlay",
                                                     "start-vm", "wait-boot"]
        vms = lbj("vm", "list", *H)
        assert len(vms) == 1
        vm = vms[0]
        assert (vm["machine"], vm["host"], vm["state"], vm["vm_state"], vm["point"]) == (
            machine, hostname, "booted", "running", bm["point_id"])
        assert vm["booted_at"] and vm["serial_log"]
        console = Path(vm["serial_log"]).read_text()
        assert "LIFEBOAT-MARKER: source-marker-1" in console and "source-marker-2" not in console
        assert "written-at-final-point" not in console
        assert "- 192.0.2.10/24" in console and "via: 192.0.2.1" in console and "192.0.2.53" in console
        st = lbj("status", *H)["machines"][0]
        assert st["failover"]["point"] == bm["point_id"]
        text = lb("status", *H).stdout
        assert "failed-over" in text and f"failed over to {hostname} at point {bm['point_id']}" in text
        virsh = subprocess.run(["virsh", "-c", recovery_host, "domstate", f"lifeboat-{machine}"],
                               capture_output=True, text=True)
        assert virsh.stdout.strip() == "running"

        # the recovered machine's writes go to the overlay, never into the vault
        assert _write_marker(f"nbd://{vm['nbd']}/d0", "written-after-failover", tmp_path).returncode == 0
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
        assert _write_marker(f"nbd://127.0.0.1:{nport}/d0", "after-cancel", tmp_path, SPARE).returncode == 0
        p = lb("failover-cancel", *H, machine, check=False)
        assert p.returncode != 0 and "LB_NOT_FAILED_OVER" in p.stderr

        # the vault still holds marker 1 at the bookmark (the overlay write never reached it)
        lbj("failover", *H, machine, "--test", "--point", "tag:m1", "--export", str(tmp_path / "out"))
        assert _marker(tmp_path / "out" / "d0.img") == "source-marker-1"
        lb("failover-cleanup", *H, machine)
        lbj("failover", *H, machine, "--test", "--point", "latest", "--export", str(tmp_path / "latest"))
        assert _marker(tmp_path / "latest" / "d0.img") == "source-marker-2"
        lb("failover-cleanup", *H, machine)

        # the disaster: the source VM and its agent die without a word; the unplanned failover needs neither
        for pr in (procs[2], procs[1]):
            pr.kill()
            pr.wait(15)
        wait(lambda: not lbj("status", *H)["machines"][0]["agent_connected"], 30, "the appliance to see the agent gone")

        # unplanned failover at the bookmark, then commit: the image holds the overlay over the point
        t0 = time.monotonic()
        r = lbj("failover", *H, machine, "--host", hostname, "--point", "tag:m1")
        print(f"failover to a booted VM: {time.monotonic() - t0:.1f} s (boot step {r['result']['boot_seconds']:.1f} s)")
        assert r["state"] == "succeeded" and r["result"]["point"]["id"] == bm["point_id"]
        assert [st["name"] for st in r["steps"]] == ["resolve-point", "open-views", "serve-overlay", "config-drive",
                                                     "start-vm", "wait-boot"]
        vm = r["vm"]
        assert _write_marker(f"nbd://{vm['nbd']}/d0", "written-before-commit", tmp_path).returncode == 0
        view = _sha256_of_nbd(f"nbd://{vm['nbd']}/d0", tmp_path / "view.raw")
        t0 = time.monotonic()
        k = lbj("failover-commit", *H, machine, "--stop-timeout", "1s")
        print(f"commit of a 64 MiB disk with a restart: {time.monotonic() - t0:.1f} s")
        assert k["state"] == "succeeded" and k["kind"] == "failover-commit"
        assert [st["name"] for st in k["steps"]] == ["copy", "stop-vm", "copy-changed", "switch", "wait-boot",
                                                     "release"]
        image = home / "failovers" / machine / "committed" / "d0.img"
        assert k["result"]["images"] == {"d0": str(image)}
        assert stat.S_IMODE(image.stat().st_mode) == 0o600
        assert hashlib.sha256(image.read_bytes()).hexdigest() == view
        vm = k["vm"]
        # the committed images are served by Lifeboat (failback captures the VM's writes there: issue 14)
        assert (vm["state"], vm["committed"], vm["vm_state"]) == ("committed", True, "running") and vm["nbd"]
        assert vm["images"] == {"d0": str(image)}
        assert "LIFEBOAT-MARKER: written-before-commit" in Path(vm["serial_log"]).read_text()   # runs on the image
        assert not (home / "failovers" / machine / "overlay").exists()
        st = lbj("status", *H)["machines"][0]
        assert st["state"] == "failed-over" and st["failover"]["state"] == "committed"
        assert "VM committed" in lb("status", *H).stdout
        for cmd in (("failover-change-point", *H, machine, "--point", "latest"), ("failover-commit", *H, machine),
                    ("failover-cancel", *H, machine)):
            p = lb(*cmd, check=False)
            assert p.returncode != 0 and "LB_FAILOVER_COMMITTED" in p.stderr and "what to do" in p.stderr, cmd

        jobs = [j for j in lbj("jobs", *H) if j["kind"] in ("failover", "failover-cancel", "failover-change-point",
                                                             "failover-commit")]
        assert [j["kind"] for j in jobs] == ["failover", "failover", "failover-change-point", "failover-cancel",
                                             "failover", "failover-commit"]
        assert jobs[0]["state"] == "failed" and jobs[0]["error"]["code"] == "LB_BOOT_TIMEOUT"
        assert jobs[0]["result"]["point"]["id"] == bm["point_id"]   # latest-app: the bookmark
        assert [st["state"] for st in jobs[0]["steps"]][-1] == "failed"
        assert all(j["state"] == "succeeded" for j in jobs[1:])
        print(f"the whole scenario: {time.monotonic() - t_start:.1f} s")
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
