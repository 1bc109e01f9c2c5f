"""A recovery plan run for real (not a test) on the local libvirt recovery host, every role in its own process:
two protected machines in two groups boot on their own networks (not the isolated one); `status` shows them
failed-over with host and point; `plan cancel` stops and removes both VMs and their files and replication resumes
(each agent is taken again and new points reach the vault); a second real run, then `plan commit`: every machine
is committed (standalone images, the VM running on them), and the run's DR report lists every machine with its
point age and boot time."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, need_tool
from tests.engine.recovery.boot_image import MARKER_OFFSET, SECTOR
from tests.engine.test_cli import LIFEBOAT, lb, lbj, wait


def _domain_state(uri: str, name: str) -> str | None:
    p = subprocess.run(["virsh", "-c", uri, "domstate", name], capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else None


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_real_plan_run_cancel_then_commit(recovery_host: str, boot_disk: Path, tmp_path: Path) -> None:
    need_tool("qemu-system-x86_64", "qemu-io")
    home = tmp_path / "appliance"
    H = ("--home", str(home))
    tag = os.getpid()
    m1, m2, hostname = f"ra{tag}", f"rb{tag}", f"rrh{tag}"
    cport, dport = free_port(), free_port()
    lb("appliance", "init", *H, "--control-port", str(cport), "--data-port", str(dport), "--listen", "127.0.0.1")
    procs: list[subprocess.Popen] = []
    nbd = {m1: free_port(), m2: free_port()}
    t_start = time.monotonic()
    try:
        procs.append(subprocess.Popen([*LIFEBOAT, "appliance", "run", *H], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
        wait(lambda: lb("status", *H, check=False).returncode == 0, 30, "appliance")
        for m in (m1, m2):
            lb("agent", "register", "--home", str(tmp_path / m), "--appliance", f"127.0.0.1:{cport}",
               "--passphrase-file", str(home / "passphrase.txt"), "--name", m)
            disk = tmp_path / f"{m}.img"
            disk.write_bytes(boot_disk.read_bytes())
            procs.append(subprocess.Popen([*LIFEBOAT, "agent", "run", "--home", str(tmp_path / m), "--disk",
                                           f"d0={disk}", "--nbd", f"127.0.0.1:{nbd[m]}"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        lb("policy", "set", *H, "fast", "--rpo-threshold", "30s", "--retention", "1h", "--app-consistent", "1h",
           "--crash-interval", "1s")
        for m in (m1, m2):
            lb("protect", *H, m, "--policy", "fast")

        def states() -> dict[str, dict]:
            return {x["name"]: x for x in lbj("status", *H)["machines"]}

        wait(lambda: all(states()[m]["state"] == "protected" for m in (m1, m2)), 60, "both protected")
        lbj("host", "add", *H, hostname, "--uri", recovery_host, "--network", "lan=user", "--network", "iso=isolated")
        for i, m in enumerate((m1, m2), start=1):
            lbj("machine", "settings", *H, m, "--cpus", "1", "--memory-mib", "256", "--nic", "eth0=lan",
                "--ip", f"eth0=192.0.2.{20 + i}/24", "--boot-pattern", "LIFEBOAT-BOOTED", "--boot-timeout", "90")
        lb("plan", "create", *H, "site")
        lb("plan", "add", *H, "site", "--group", "1", m1)
        lb("plan", "add", *H, "site", "--group", "2", m2)

        # 1. a real run: both boot, each on its own network (a real run leaves the NIC mapping alone)
        t0 = time.monotonic()
        r = lbj("plan", "run", *H, "site", "--host", hostname, "--json")
        print(f"real plan run, two groups booted: {time.monotonic() - t0:.1f} s")
        assert r["state"] == "succeeded" and not r["test"] and r["job"]["state"] == "succeeded", r
        vms = {v["machine"]: v for v in lbj("vm", "list", *H)}
        assert set(vms) == {m1, m2} and all(v["state"] == "booted" and v["vm_state"] == "running"
                                            for v in vms.values()), vms
        for m in (m1, m2):
            xml = subprocess.run(["virsh", "-c", recovery_host, "dumpxml", f"lifeboat-{m}"], capture_output=True,
                                 text=True).stdout
            assert "<interface type='user'>" in xml and f"lifeboat-{hostname}-iso" not in xml
            st = states()[m]
            assert st["state"] == "failed-over" and st["failover"]["host"] == hostname
            assert st["failover"]["point"] == vms[m]["point"]
            # an uncommitted failover reads its point through the vault: it pins the history, and says so
            pin = vms[m]["pin"]
            assert pin["kind"] == "failover" and pin["point"] == vms[m]["point"] and pin["held_bytes"] >= 0
            assert "failover-cancel" in pin["end_with"] and st["history_pin"]["owner"] == pin["owner"]
        p = lb("plan", "cleanup", *H, "site", check=False)
        assert p.returncode != 0 and "LB_NOT_A_TEST" in p.stderr

        # 2. cancel the real run: VMs stopped and removed, files gone, replication resumes
        c = lbj("plan", "cancel", *H, "site")
        assert c["cancelled"] and sorted(c["removed"]) == sorted([m1, m2]), c
        assert lbj("vm", "list", *H) == []
        for m in (m1, m2):
            assert _domain_state(recovery_host, f"lifeboat-{m}") is None
            assert not (home / "failovers" / m).exists()
            assert states()[m]["state"] == "protected"
        wait(lambda: all(states()[m]["agent_connected"] for m in (m1, m2)), 60, "both agents taken again")
        # the sources write again and new points reach the vault
        last0 = {m: lbj("points", *H, m)[-1]["seq"] for m in (m1, m2)}
        for m in (m1, m2):
            p = subprocess.run(["qemu-io", "-f", "raw", f"nbd://127.0.0.1:{nbd[m]}/d0", "-c",
                                f"write -P 7 {MARKER_OFFSET + SECTOR} {SECTOR}"], capture_output=True, text=True)
            assert p.returncode == 0 and "Operation not permitted" not in p.stdout + p.stderr, p
        wait(lambda: all(lbj("points", *H, m)[-1]["seq"] > last0[m] for m in (m1, m2)), 60, "new points after cancel")

        # 3. a real run again, then commit: every machine kept on standalone images
        r = lbj("plan", "run", *H, "site", "--host", hostname, "--json")
        assert r["state"] == "succeeded", r
        run_id = r["id"]
        t0 = time.monotonic()
        k = lbj("plan", "commit", *H, "site", "--stop-timeout", "1s")   # busybox ignores ACPI: no long grace
        print(f"plan commit of two machines (copy + restart each): {time.monotonic() - t0:.1f} s")
        assert sorted(k["committed"]) == sorted([m1, m2]) and k["run"] == run_id and len(k["jobs"]) == 2
        vms = {v["machine"]: v for v in lbj("vm", "list", *H)}
        for m in (m1, m2):
            v = vms[m]
            image = home / "failovers" / m / "committed" / "d0.img"
            # served by Lifeboat from the committed image (failback captures the VM's writes there: issue 14)
            assert (v["state"], v["committed"], v["vm_state"]) == ("committed", True, "running") and v["nbd"], v
            assert v["images"] == {"d0": str(image)} and stat.S_IMODE(image.stat().st_mode) == 0o600
            assert image.stat().st_size == (tmp_path / f"{m}.img").stat().st_size
            assert not (home / "failovers" / m / "overlay").exists()
            xml = subprocess.run(["virsh", "-c", recovery_host, "dumpxml", f"lifeboat-{m}"], capture_output=True,
                                 text=True).stdout
            assert "protocol='nbd'" in xml and v["nbd"].split(":")[1] in xml   # the committed image's export
            assert "LIFEBOAT-BOOTED" in Path(v["serial_log"]).read_text()
            st = states()[m]
            assert st["state"] == "failed-over" and st["failover"]["state"] == "committed"
            assert v["pin"] is None and st["history_pin"] is None   # committed: no longer reads the vault
        text = lb("status", *H).stdout
        assert text.count("VM committed") == 2, text
        for cmd in (("plan", "cancel", *H, "site"), ("failover-cancel", *H, m1)):
            p = lb(*cmd, check=False)
            assert p.returncode != 0 and "LB_FAILOVER_COMMITTED" in p.stderr and "what to do" in p.stderr, (cmd, p)
        p = lb("plan", "run", *H, "site", "--host", hostname, check=False)
        assert p.returncode != 0 and "LB_FAILED_OVER" in p.stderr

        # the DR report of the committed run: every machine, its point age and its boot time
        reps = [x for x in lbj("report", "list", *H) if x["plan"] == "site"]
        assert len(reps) == 2   # one per run: the cancelled one's too
        [rep] = [x for x in reps if x["id"] == run_id]
        assert not rep["test"] and rep["state"] == "succeeded"
        ms = {x["machine"]: x for x in rep["machines"]}
        assert set(ms) == {m1, m2}
        for x in ms.values():
            assert x["point"] and x["point_age_seconds"] is not None and x["point_age_seconds"] >= 0
            assert 0 < x["boot_seconds"] < 90
        html = Path(lb("report", "show", *H, rep["id"]).stdout.strip()).read_text()
        assert m1 in html and m2 in html
        print(f"the whole scenario: {time.monotonic() - t_start:.1f} s")
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
        for net in ("lan", "iso"):
            subprocess.run(["virsh", "-c", recovery_host, "net-destroy", f"lifeboat-{hostname}-{net}"],
                           capture_output=True)
