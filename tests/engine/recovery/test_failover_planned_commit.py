"""Planned failover, change point and commit for real (issue 13), one scenario on one protected QEMU VM (as in
test_failover_boot.py): the source writes its last marker right before a planned failover; the agent refuses
writes after the quiesce; the recovered VM shows that last marker (zero data loss). Change point restarts it from
the bookmark before that marker, its overlay discarded. Commit copies overlay + view into a standalone image (the
bytes of the image equal the overlay-over-point view the VM saw) and restarts the VM on it; another point is then
refused."""

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
from tests.engine.recovery.test_failover_boot import _text, _write_marker
from tests.engine.test_cli import LIFEBOAT, lb, lbj, wait


def _sha256_of_nbd(url: str, out: Path) -> str:
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", url, str(out)], check=True, capture_output=True)
    return hashlib.sha256(out.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_planned_failover_zero_loss_change_point_and_commit(recovery_host: str, boot_disk: Path,
                                                             tmp_path: Path) -> None:
    need_tool("qemu-io", "qemu-img", "qemu-system-x86_64")
    home, ahome = tmp_path / "appliance", tmp_path / "agent"
    disk = tmp_path / "disk.img"
    disk.write_bytes(boot_disk.read_bytes())
    machine, hostname = f"plan{os.getpid()}", f"rp{os.getpid()}"
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
        serial = tmp_path / "source-serial.log"
        procs.append(subprocess.Popen(["qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-display", "none",
                                       "-nic", "none", "-serial", f"file:{serial}", "-drive",
                                       f"file=nbd://127.0.0.1:{nport}/d0,format=raw,if=virtio,cache=none"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        wait(lambda: "WROTE: source-marker-1" in _text(serial), 90, "the source VM's first marker")
        bm = json.loads(lb("agent", "bookmark", "--home", str(ahome), "--tag", "m1", "--json").stdout)
        # the recovery host and the settings while the source waits for its second marker
        lbj("host", "add", *H, hostname, "--kind", "qemu", "--uri", recovery_host, "--network", "lan=isolated")
        lbj("machine", "settings", *H, machine, "--memory-mib", "256", "--nic", "eth0=lan",
            "--boot-pattern", "LIFEBOAT-BOOTED", "--boot-timeout", "90")
        p = lb("failover", *H, machine, "--host", hostname, "--planned", "--point", "latest", check=False)
        assert p.returncode != 0 and "LB_INVALID_INPUT" in p.stderr
        assert "source-marker-2" not in _text(serial), "the bookmark came too late to be between the two markers"

        # planned failover right after the source's last write: no waiting for RPO 0 here, the failover does it
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
        console = Path(vm["serial_log"]).read_text()
        assert "LIFEBOAT-MARKER: source-marker-2" in console   # zero data loss: the last write is there
        # the quiesced source refuses writes (EPERM), so nothing can follow the final point
        p = subprocess.run(["qemu-io", "-f", "raw", f"nbd://127.0.0.1:{nport}/d0", "-c", "write 0 512"],
                           capture_output=True, text=True)
        assert "Operation not permitted" in (p.stdout + p.stderr)
        st = lbj("status", *H)["machines"][0]
        assert st["state"] == "failed-over" and st["failover"]["point"] == final["id"]

        # change point: back to the bookmark; what the VM wrote is discarded
        _write_marker(f"nbd://{vm['nbd']}/d0", "written-at-final-point", tmp_path)
        c = lbj("failover-change-point", *H, machine, "--point", "tag:m1")
        assert c["state"] == "succeeded" and c["kind"] == "failover-change-point"
        assert c["result"]["point"]["id"] == bm["point_id"] and c["result"]["previous"] == final["id"]
        assert [s["name"] for s in c["steps"]] == ["resolve-point", "stop-vm", "open-views", "serve-overlay",
                                                   "start-vm", "wait-boot"]
        vm = c["vm"]
        assert (vm["state"], vm["point"], vm["vm_state"]) == ("booted", bm["point_id"], "running")
        console = Path(vm["serial_log"]).read_text()
        assert "LIFEBOAT-MARKER: source-marker-1" in console and "written-at-final-point" not in console

        # commit: the recovered VM wrote something (into its overlay); the image must hold the overlay over the view
        _write_marker(f"nbd://{vm['nbd']}/d0", "written-before-commit", tmp_path)
        view = _sha256_of_nbd(f"nbd://{vm['nbd']}/d0", tmp_path / "view.raw")
        k = lbj("failover-commit", *H, machine, "--stop-timeout", "1s")
        assert k["state"] == "succeeded" and k["kind"] == "failover-commit"
        assert [s["name"] for s in k["steps"]] == ["copy", "stop-vm", "copy-changed", "switch", "wait-boot",
                                                   "release"]
        image = home / "failovers" / machine / "committed" / "d0.img"
        assert k["result"]["images"] == {"d0": str(image)}
        assert stat.S_IMODE(image.stat().st_mode) == 0o600
        assert hashlib.sha256(image.read_bytes()).hexdigest() == view
        vm = k["vm"]
        assert (vm["state"], vm["committed"], vm["nbd"], vm["vm_state"]) == ("committed", True, None, "running")
        assert vm["images"] == {"d0": str(image)}
        console = Path(vm["serial_log"]).read_text()   # the VM restarted on its image
        assert "LIFEBOAT-MARKER: written-before-commit" in console
        assert not (home / "failovers" / machine / "overlay").exists()
        st = lbj("status", *H)["machines"][0]
        assert st["state"] == "failed-over" and st["failover"]["state"] == "committed"
        assert "VM committed" in lb("status", *H).stdout

        for cmd in (("failover-change-point", *H, machine, "--point", "latest"), ("failover-commit", *H, machine),
                    ("failover-cancel", *H, machine)):
            p = lb(*cmd, check=False)
            assert p.returncode != 0 and "LB_FAILOVER_COMMITTED" in p.stderr and "what to do" in p.stderr, cmd
        print(f"planned failover → change point → commit scenario: {time.monotonic() - t_start:.1f} s")
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
