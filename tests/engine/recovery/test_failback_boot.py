"""Failback for real (issue 14), every role in its own process, one scenario with two boots: a protected machine
(its disk a bootable image behind the agent's NBD export) fails over (unplanned) to the local libvirt recovery host;
the recovered VM's disk gets a new marker and ~1 % of its blocks changed (written through Lifeboat's NBD overlay, as
the VM's own writes are); **reprotect** to the original disks through the agent (the master target) sends only what
differs; more writes replicate as deltas, through a SIGKILL of the agent (the target role) in the middle; **failback**
shuts the VM down (forced after the timeout: the test guest ignores ACPI), sends the rest and releases the disks: the
original disk equals the recovered disk at shutdown (sha256); the original machine boots from it (a QEMU VM on the
agent's export) and prints the newest marker; **re-enable** sends only what differs from the vault, and a later
point recovers byte-exact."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, need_tool
from tests.engine.recovery.boot_image import MARKER_OFFSET, SECTOR
from tests.engine.recovery.test_failover_boot import _text, _write_marker
from tests.engine.test_cli import LIFEBOAT, lb, lbj, wait

BLOCK = 64 * 1024


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _nbd_sha(url: str, out: Path) -> str:
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", url, str(out)], check=True, capture_output=True)
    return _sha(out)


def _write_blocks(url: str, blocks: list[int], tmp: Path, tag: str) -> None:
    """Random 64 KiB blocks through an NBD client (one qemu-io run, a flush at the end)."""
    cmds = []
    for b in blocks:
        f = tmp / f"blk-{tag}-{b}.bin"
        f.write_bytes(os.urandom(BLOCK))
        cmds += ["-c", f"write -s {f} {b * BLOCK} {BLOCK}"]
    cmds += ["-c", "flush"]
    subprocess.run(["qemu-io", "-f", "raw", url, *cmds], check=True, capture_output=True)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_reprotect_failback_reenable_with_real_boots(recovery_host: str, boot_disk: Path, tmp_path: Path) -> None:
    need_tool("qemu-io", "qemu-img", "qemu-system-x86_64")
    home, ahome = tmp_path / "appliance", tmp_path / "agent"
    disk = tmp_path / "disk.img"
    disk.write_bytes(boot_disk.read_bytes())
    size = disk.stat().st_size
    machine, hostname = f"fb{os.getpid()}", f"rhfb{os.getpid()}"
    cport, dport, nport = free_port(), free_port(), free_port()
    H = ("--home", str(home))
    lb("appliance", "init", *H, "--control-port", str(cport), "--data-port", str(dport), "--listen", "127.0.0.1")
    procs: dict[str, subprocess.Popen] = {}

    def agent() -> subprocess.Popen:
        return subprocess.Popen([*LIFEBOAT, "--debug", "agent", "run", "--home", str(ahome), "--disk", f"d0={disk}", "--nbd",
                                 f"127.0.0.1:{nport}"], stdout=subprocess.DEVNULL,
                                stderr=open(tmp_path / "agent.log", "a"), text=True)

    def m() -> dict:
        return lbj("status", *H)["machines"][0]

    rng = random.Random(14)
    try:
        applog = open(tmp_path / "appliance.log", "w")
        procs["appliance"] = subprocess.Popen([*LIFEBOAT, "--debug", "appliance", "run", *H], stdout=subprocess.DEVNULL,
                                              stderr=applog, text=True)
        wait(lambda: lb("status", *H, check=False).returncode == 0, 30, "appliance")
        lb("agent", "register", "--home", str(ahome), "--appliance", f"127.0.0.1:{cport}",
           "--passphrase-file", str(home / "passphrase.txt"), "--name", machine)
        procs["agent"] = agent()
        lb("policy", "set", *H, "fast", "--rpo-threshold", "30s", "--retention", "1h", "--crash-interval", "1s")
        lb("protect", *H, machine, "--policy", "fast")
        wait(lambda: m()["state"] == "protected", 60, "protected")
        assert _write_marker(f"nbd://127.0.0.1:{nport}/d0", "before-failover", tmp_path).returncode == 0
        wait(lambda: m()["rpo_seconds"] < 3 and m()["points"] >= 2, 30, "the marker in the vault")

        # refusals before anything is failed over
        for cmd in (("reprotect", *H, machine), ("failback", *H, machine), ("reenable", *H, machine)):
            p = lb(*cmd, check=False)
            assert p.returncode != 0 and "LB_NOT_" in p.stderr and "what to do" in p.stderr, (cmd, p.stderr)

        lbj("host", "add", *H, hostname, "--kind", "qemu", "--uri", recovery_host, "--network", "lan=isolated")
        lbj("machine", "settings", *H, machine, "--cpus", "1", "--memory-mib", "256", "--nic", "eth0=lan",
            "--boot-pattern", "LIFEBOAT-BOOTED", "--boot-timeout", "90")
        r = lbj("failover", *H, machine, "--host", hostname, "--point", "latest")   # boot 1
        vm = r["vm"]
        assert "LIFEBOAT-MARKER: before-failover" in _text(Path(vm["serial_log"]))
        overlay_url = f"nbd://{vm['nbd']}/d0"

        # the recovered machine works: a new marker and ~1 % of its blocks changed
        nblocks = size // BLOCK
        # the guest's free space: blocks of the image that hold nothing (random data over the kernel or the
        # initramfs would leave a disk that no longer boots; a guest writes its own files into free clusters)
        image = disk.read_bytes()
        free = [b for b in range(1, nblocks - 64) if not image[b * BLOCK:(b + 1) * BLOCK].strip(b"\0")]
        del image
        changed = sorted(rng.sample(free, max(1, nblocks // 100)))
        _write_blocks(overlay_url, changed, tmp_path, "a")
        assert _write_marker(overlay_url, "recovered-1", tmp_path).returncode == 0
        changed_bytes = (len(set(changed) | {MARKER_OFFSET // BLOCK})) * BLOCK

        # a disk of the wrong name is refused with its code; --to-disk checks its paths
        p = lb("reprotect", *H, machine, "--to-disk", f"nope={tmp_path / 'x.img'}", check=False)
        assert p.returncode != 0 and "LB_INVALID_INPUT" in p.stderr
        t0 = time.monotonic()
        rp = lbj("reprotect", *H, machine, "--to", "original")
        fb = rp["failback"]
        checks = fb["bytes_sent"] - fb["data_bytes_sent"]
        print(f"reprotect seed: compared {fb['bytes_compared']} B, sent {fb['bytes_sent']} B (data "
              f"{fb['data_bytes_sent']} B, checksums and headers {checks} B) for {changed_bytes} B changed, "
              f"{time.monotonic() - t0:.1f} s")
        assert rp["state"] == "succeeded" and [s["name"] for s in rp["steps"]] == ["open-target", "wait-target", "seed"]
        assert fb["bytes_compared"] == size
        assert fb["data_bytes_sent"] <= 1.1 * changed_bytes
        assert checks <= (size // BLOCK) * 48 + 4096
        st = m()
        assert (st["state"], st["direction"]) == ("reprotected", "reverse")
        for k in ("rpo_seconds", "bytes_compared", "bytes_sent", "progress", "eta"):
            assert k in st, k
        p = lb("reprotect", *H, machine, check=False)
        assert p.returncode != 0 and "LB_ALREADY_REPROTECTED" in p.stderr

        # deltas near-continuously, through a SIGKILL of the master target (the agent) in the middle
        more = sorted(rng.sample(sorted(set(free) - set(changed)), 8))
        _write_blocks(overlay_url, more[:4], tmp_path, "b")
        procs["agent"].send_signal(signal.SIGKILL)
        procs["agent"].wait(10)
        _write_blocks(overlay_url, more[4:], tmp_path, "c")
        assert _write_marker(overlay_url, "recovered-2", tmp_path).returncode == 0
        time.sleep(1)
        assert m()["failback"]["target_connected"] is False and m()["failback"]["blocks_pending"] > 0
        procs["agent"] = agent()
        wait(lambda: (f := m()["failback"])["target_connected"] and f["blocks_pending"] == 0 and f["rpo_seconds"] == 0,
             90, "the deltas on the original disk after the agent's restart")
        p = _write_marker(f"nbd://127.0.0.1:{nport}/d0", "original-must-not-write", tmp_path, MARKER_OFFSET + SECTOR)
        assert "Operation not permitted" in p.stdout + p.stderr   # the target's disks take no other writes

        # fail back: shutdown (forced: the test guest ignores ACPI), final sync, flush, release
        last = max(set(free) - set(changed) - set(more))
        _write_blocks(overlay_url, [last], tmp_path, "d")
        try:
            fbj = lbj("failback", *H, machine, "--shutdown-timeout", "3s")
        except BaseException:
            for j in lbj("jobs", *H):
                if j["kind"] == "failback":
                    print(j["steps"])
            print("\n".join(x for x in (tmp_path / "appliance.log").read_text().splitlines() if "failback" in x or "reverse" in x or "Traceback" in x or "Error" in x)[-4000:]); print((tmp_path / "agent.log").read_text()[-4000:])
            raise
        assert fbj["state"] == "succeeded"
        assert [s["name"] for s in fbj["steps"]] == ["shutdown-vm", "final-sync", "flush-target", "start-original"]
        assert fbj["result"]["rpo_seconds"] == 0.0
        vmstate = subprocess.run(["virsh", "-c", recovery_host, "domstate", f"lifeboat-{machine}"],
                                 capture_output=True, text=True).stdout.strip()
        assert vmstate == "shut off"
        recovered = _nbd_sha(overlay_url, tmp_path / "recovered.raw")
        assert _sha(disk) == recovered   # zero loss: byte for byte
        assert m()["state"] == "failed-back"
        p = lb("failback", *H, machine, check=False)
        assert p.returncode != 0 and "LB_FAILED_BACK" in p.stderr

        # the original machine boots from its disks (boot 2) and shows the newest marker, then writes its own
        serial = tmp_path / "original-serial.log"
        procs["original"] = subprocess.Popen(
            ["qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-display", "none", "-nic", "none", "-serial",
             f"file:{serial}", "-drive", f"file=nbd://127.0.0.1:{nport}/d0,format=raw,if=virtio,cache=none"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait(lambda: "WROTE: source-marker-2" in _text(serial), 120, "the original VM's markers")
        except AssertionError:
            orig = procs["original"]
            print("original VM:", orig.poll(), orig.stderr.read() if orig.poll() is not None and orig.stderr else "",
                  _text(serial)[-2000:])
            raise
        assert "LIFEBOAT-MARKER: recovered-2" in _text(serial)
        procs["original"].terminate()
        procs["original"].wait(15)

        # re-enable: only what differs from the vault's newest state goes forward; the recovered VM is removed
        sent0 = lbj("agent", "status", "--home", str(ahome))["bytes_sent"]
        t0 = time.monotonic()
        re = lbj("reenable", *H, machine, "--remove-recovered")
        sent = lbj("agent", "status", "--home", str(ahome))["bytes_sent"] - sent0
        reenable_changed = changed_bytes + (len(set(more) | {last}) * BLOCK)
        print(f"re-enable: the agent sent {sent} B for about {reenable_changed} B that differ from the vault, "
              f"{time.monotonic() - t0:.1f} s")
        assert re["state"] == "protected"
        assert sent <= 1.1 * reenable_changed + (size // BLOCK) * 48 + 64 * 1024
        assert m()["state"] == "protected"
        assert lbj("vm", "list", *H) == []
        assert not (home / "failovers" / machine).exists()
        assert subprocess.run(["virsh", "-c", recovery_host, "domstate", f"lifeboat-{machine}"],
                              capture_output=True).returncode != 0

        # new writes replicate, and a later point recovers byte-exact
        assert _write_marker(f"nbd://127.0.0.1:{nport}/d0", "after-reenable", tmp_path).returncode == 0
        wait(lambda: m()["rpo_seconds"] < 3 and m()["state"] == "protected", 60, "replicated")
        time.sleep(2)
        lbj("failover", *H, machine, "--test", "--point", "latest", "--export", str(tmp_path / "later"))
        assert _sha(tmp_path / "later" / "d0.img") == _sha(disk)
        lb("failover-cleanup", *H, machine)
        jobs = [j["kind"] for j in lbj("jobs", *H) if j["kind"] in ("reprotect", "failback", "reenable")]
        assert jobs == ["reprotect", "failback", "reenable"]
    finally:
        for pr in reversed(list(procs.values())):
            pr.terminate()
            try:
                pr.wait(15)
            except subprocess.TimeoutExpired:
                pr.kill()
        subprocess.run(["virsh", "-c", recovery_host, "destroy", f"lifeboat-{machine}"], capture_output=True)
        subprocess.run(["virsh", "-c", recovery_host, "undefine", f"lifeboat-{machine}"], capture_output=True)
        subprocess.run(["virsh", "-c", recovery_host, "net-destroy", f"lifeboat-{hostname}-lan"], capture_output=True)
