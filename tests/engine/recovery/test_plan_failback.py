"""`lifeboat plan failback` for real (issue 14), every role in its own process: two protected machines in two groups
of a recovery plan fail over with one real `plan run` (two boots on the local libvirt recovery host); each recovered
VM's disk gets new data, and the second machine's *original* disk is written after the failover too (a write the
vault never saw: the seed must find it on the original side and put the recovered content back); both are
reprotected to their original disks (the agents as master targets); `plan failback` fails them back with the
plan's groups in reverse order (group 2's failback job ends before group 1's starts), and each original disk ends
equal, byte for byte, to its recovered VM's disk at shutdown."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, need_tool
from tests.engine.recovery.test_failback_boot import BLOCK, _nbd_sha, _write_blocks
from tests.engine.recovery.test_failover_boot import _write_marker
from tests.engine.test_cli import LIFEBOAT, lb, lbj, wait


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_plan_failback_runs_groups_in_reverse_and_ends_byte_exact(recovery_host: str, boot_disk: Path,
                                                                   tmp_path: Path) -> None:
    need_tool("qemu-system-x86_64", "qemu-io", "qemu-img")
    home = tmp_path / "appliance"
    H = ("--home", str(home))
    tag = os.getpid()
    m1, m2, hostname = f"pa{tag}", f"pb{tag}", f"pfh{tag}"
    cport, dport = free_port(), free_port()
    lb("appliance", "init", *H, "--control-port", str(cport), "--data-port", str(dport), "--listen", "127.0.0.1")
    procs: list[subprocess.Popen] = []
    nbd = {m1: free_port(), m2: free_port()}
    disks = {m: tmp_path / f"{m}.img" for m in (m1, m2)}
    rng = random.Random(1414)
    try:
        procs.append(subprocess.Popen([*LIFEBOAT, "appliance", "run", *H], stdout=subprocess.DEVNULL,
                                      stderr=open(tmp_path / "appliance.log", "w"), text=True))
        wait(lambda: lb("status", *H, check=False).returncode == 0, 30, "appliance")
        for m in (m1, m2):
            lb("agent", "register", "--home", str(tmp_path / m), "--appliance", f"127.0.0.1:{cport}",
               "--passphrase-file", str(home / "passphrase.txt"), "--name", m)
            disks[m].write_bytes(boot_disk.read_bytes())
            procs.append(subprocess.Popen([*LIFEBOAT, "agent", "run", "--home", str(tmp_path / m), "--disk",
                                           f"d0={disks[m]}", "--nbd", f"127.0.0.1:{nbd[m]}"],
                                          stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"{m}.log", "w"),
                                          text=True))
        lb("policy", "set", *H, "fast", "--rpo-threshold", "30s", "--retention", "1h", "--crash-interval", "1s")
        for m in (m1, m2):
            lb("protect", *H, m, "--policy", "fast")

        def states() -> dict[str, dict]:
            return {x["name"]: x for x in lbj("status", *H)["machines"]}

        wait(lambda: all(states()[m]["state"] == "protected" for m in (m1, m2)), 60, "both protected")
        wait(lambda: all(states()[m]["points"] >= 1 for m in (m1, m2)), 30, "a point of each")
        lbj("host", "add", *H, hostname, "--uri", recovery_host, "--network", "lan=isolated")
        for m in (m1, m2):
            lbj("machine", "settings", *H, m, "--cpus", "1", "--memory-mib", "256", "--nic", "eth0=lan",
                "--boot-pattern", "LIFEBOAT-BOOTED", "--boot-timeout", "90")
        lb("plan", "create", *H, "site")
        lb("plan", "add", *H, "site", "--group", "1", m1)
        lb("plan", "add", *H, "site", "--group", "2", m2)
        t0 = time.monotonic()
        r = lbj("plan", "run", *H, "site", "--host", hostname, "--json")   # two boots
        assert r["state"] == "succeeded" and not r["test"], r
        print(f"plan run (two boots): {time.monotonic() - t0:.1f} s")
        vms = {v["machine"]: v for v in lbj("vm", "list", *H)}
        overlay = {m: f"nbd://{vms[m]['nbd']}/d0" for m in (m1, m2)}

        # the recovered VMs write (into the image's free blocks, so the original still boots)
        image = boot_disk.read_bytes()
        nblocks = len(image) // BLOCK
        free = [b for b in range(1, nblocks - 64) if not image[b * BLOCK:(b + 1) * BLOCK].strip(b"\0")]
        del image
        for m in (m1, m2):
            _write_blocks(overlay[m], sorted(rng.sample(free, 8)), tmp_path, m)
            assert _write_marker(overlay[m], f"recovered-{m}", tmp_path).returncode == 0
        # the original site of m2 wrote after the failover point: the vault never saw it, the seed must undo it
        late = rng.choice(free)
        _write_blocks(f"nbd://127.0.0.1:{nbd[m2]}/d0", [late], tmp_path, "late")

        # m1 to a new disk at an alternate location (a full copy: only its non-zero blocks travel), m2 to its own
        new_disk = tmp_path / "alt" / f"{m1}-d0.img"
        new_disk.parent.mkdir()
        for m, how in ((m1, ("--to-disk", f"d0={new_disk}")), (m2, ("--to", "original"))):
            rp = lbj("reprotect", *H, m, *how)
            assert rp["state"] == "succeeded", rp
            print(f"reprotect {m} {' '.join(how)}: compared {rp['failback']['bytes_compared']} B, data sent "
                  f"{rp['failback']['data_bytes_sent']} B")
            if m == m1:
                recovered = tmp_path / f"{m1}-at-reprotect.raw"
                _nbd_sha(overlay[m1], recovered)
                data = recovered.read_bytes()
                nonzero = sum(BLOCK for b in range(0, len(data), BLOCK) if data[b:b + BLOCK].strip(b"\0"))
                allocated = new_disk.stat().st_blocks * 512
                print(f"  new disk: {len(data)} B, {nonzero} B in non-zero blocks, {allocated} B allocated")
                assert rp["failback"]["data_bytes_sent"] == nonzero < len(data) // 2   # zero regions cost nothing
                assert rp["failback"]["bytes_sent"] <= nonzero + (len(data) // BLOCK) * 48 + 4096
                assert allocated <= nonzero + 1024 * 1024
                assert rp["failback"]["target"] == {"kind": "disks", "disks": {"d0": str(new_disk)}}
        assert {states()[m]["state"] for m in (m1, m2)} == {"reprotected"}

        t0 = time.monotonic()
        pf = lbj("plan", "failback", *H, "site", "--shutdown-timeout", "2s")
        print(f"plan failback of two machines: {time.monotonic() - t0:.1f} s")
        assert pf["groups"] == [2, 1]
        assert [(x["group"], x["machine"], x["state"]) for x in pf["machines"]] == \
            [(2, m2, "succeeded"), (1, m1, "succeeded")]
        jobs = {j["id"]: j for j in lbj("jobs", *H) if j["kind"] == "failback"}
        j2, j1 = (jobs[x["job"]] for x in pf["machines"])
        assert (j2["target"], j1["target"]) == (m2, m1)
        assert j2["ended"] <= j1["started"], (j2["ended"], j1["started"])   # group 2 entirely before group 1
        assert "ready at " + str(new_disk) in " ".join(s["message"] for s in j1["steps"])
        for m, target in ((m1, new_disk), (m2, disks[m2])):
            assert states()[m]["state"] == "failed-back"
            assert _sha(target) == _nbd_sha(overlay[m], tmp_path / f"{m}-recovered.raw"), m   # zero loss
        # the plan's machines are failed back: a second run has nothing to do
        again = lbj("plan", "failback", *H, "site")
        assert again["machines"] == []
    finally:
        for pr in reversed(procs):
            pr.terminate()
            try:
                pr.wait(15)
            except subprocess.TimeoutExpired:
                pr.kill()
        for m in (m1, m2):
            subprocess.run(["virsh", "-c", recovery_host, "destroy", f"lifeboat-{m}"], capture_output=True)
            subprocess.run(["virsh", "-c", recovery_host, "undefine", f"lifeboat-{m}"], capture_output=True)
        subprocess.run(["virsh", "-c", recovery_host, "net-destroy", f"lifeboat-{hostname}-lan"], capture_output=True)
