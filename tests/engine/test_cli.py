"""The command-line contract, with every role in its own process: init, run, register, protect, policy, status,
points, bookmark, failover (--export and --nbd) and cleanup; errors are codes with advice."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


from tests.conftest import free_port, need_tool
from tests.engine.harness import make_disk, sha256_file

LIFEBOAT = [sys.executable, "-m", "engine.cli"]


def lb(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    p = subprocess.run([*LIFEBOAT, *args], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"lifeboat {' '.join(args)} failed: {p.stderr}{p.stdout}")
    return p


def lbj(*args: str) -> object:
    return json.loads(lb(*args, "--json").stdout)


def wait(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_cli_contract(tmp_path: Path) -> None:
    need_tool("qemu-io", "nbdcopy")
    home, ahome = tmp_path / "appliance", tmp_path / "agent"
    disk = tmp_path / "disk.img"
    make_disk(disk, 16 << 20, seed=7)
    cport, dport, nport = free_port(), free_port(), free_port()
    lb("appliance", "init", "--home", str(home), "--control-port", str(cport), "--data-port", str(dport),
       "--listen", "127.0.0.1")
    procs = []
    try:
        procs.append(subprocess.Popen([*LIFEBOAT, "appliance", "run", "--home", str(home)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        wait(lambda: lb("status", "--home", str(home), check=False).returncode == 0, 30, "appliance")
        # Errors are codes with advice, and exit non-zero.
        p = lb("protect", "--home", str(home), "ghost", check=False)
        assert p.returncode != 0 and "LB_UNKNOWN_MACHINE" in p.stderr and "what to do" in p.stderr
        p = lb("policy", "set", "--home", str(home), "default", "--crash-interval", "soon", check=False)
        assert p.returncode != 0 and "LB_INVALID_INPUT" in p.stderr

        lb("agent", "register", "--home", str(ahome), "--appliance", f"127.0.0.1:{cport}",
           "--passphrase-file", str(home / "passphrase.txt"), "--name", "vm1")
        procs.append(subprocess.Popen([*LIFEBOAT, "agent", "run", "--home", str(ahome), "--disk", f"d0={disk}",
                                       "--nbd", f"127.0.0.1:{nport}"], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
        pol = lbj("policy", "set", "--home", str(home), "fast", "--rpo-threshold", "30s", "--retention", "1h",
                  "--app-consistent", "1h", "--crash-interval", "1s", "--history-limit", "50G")
        assert pol["crash_interval"] == 1 and pol["retention"] == 3600 and pol["history_limit"] == 50 << 30
        assert "history-limit 50G" in lb("policy", "list", "--home", str(home)).stdout
        lb("protect", "--home", str(home), "vm1", "--policy", "fast")
        st = wait(lambda: (s := lbj("status", "--home", str(home)))["machines"] and
                  s["machines"][0]["state"] == "protected" and s, 60, "protected")
        m = st["machines"][0]
        assert set(m) >= {"name", "state", "rpo_seconds", "health", "disks"} and m["name"] == "vm1"

        subprocess.run(["qemu-io", "-f", "raw", f"nbd://127.0.0.1:{nport}/d0", "-c", "write -P 0x11 4096 1M"],
                       check=True, capture_output=True)
        out = lb("agent", "bookmark", "--home", str(ahome), "--tag", "before-upgrade", "--json")
        bm = json.loads(out.stdout)
        at_bookmark = sha256_file(disk)
        # The same from the appliance (issue 16): it asks the agent and waits for the point in the vault.
        ab = lbj("bookmark", "--home", str(home), "vm1", "--tag", "from-appliance")
        assert ab["tag"] == "from-appliance" and ab["point_id"] != bm["point_id"]
        p = lb("bookmark", "--home", str(home), "ghost", check=False)
        assert p.returncode != 0 and "LB_UNKNOWN_MACHINE" in p.stderr
        subprocess.run(["qemu-io", "-f", "raw", f"nbd://127.0.0.1:{nport}/d0", "-c", "write -z 0 2M",
                        "-c", "discard 8M 1M"], check=True, capture_output=True)
        latest = sha256_file(disk)
        wait(lambda: (s := lbj("status", "--home", str(home))["machines"][0])["rpo_seconds"] == 0
             and s["health"] == "ok", 30, "RPO 0")
        points = lbj("points", "--home", str(home), "vm1")
        assert any(p["kind"] == "app-consistent" and p["tag"] == "before-upgrade" and p["id"] == bm["point_id"]
                   for p in points)
        assert all(set(p) >= {"id", "time", "kind", "tag"} for p in points)

        r = lbj("failover", "--home", str(home), "vm1", "--test", "--point", "tag:before-upgrade",
                "--export", str(tmp_path / "out"))
        assert sha256_file(tmp_path / "out" / "d0.img") == at_bookmark
        lb("failover-cleanup", "--home", str(home), "vm1")
        time.sleep(1.5)  # let a crash-consistent point land after the last writes
        lbj("failover", "--home", str(home), "vm1", "--test", "--point", "latest", "--export", str(tmp_path / "o2"))
        assert sha256_file(tmp_path / "o2" / "d0.img") == latest
        lb("failover-cleanup", "--home", str(home), "vm1")

        dport2 = free_port()
        r = lbj("failover", "--home", str(home), "vm1", "--test", "--point", bm["point_id"],
                "--nbd", f"127.0.0.1:{dport2}")
        assert r["nbd"].endswith(str(dport2))
        subprocess.run(["nbdcopy", f"nbd://127.0.0.1:{dport2}/d0", str(tmp_path / "drill.img")], check=True)
        assert sha256_file(tmp_path / "drill.img") == at_bookmark
        p = lb("failover", "--home", str(home), "vm1", "--test", "--point", "latest", "--nbd", "127.0.0.1:0",
               check=False)
        assert p.returncode != 0 and "LB_CONFLICT" in p.stderr   # one drill at a time
        lb("failover-cleanup", "--home", str(home), "vm1")
        p = lb("failover", "--home", str(home), "vm1", "--test", "--point", "c-999999999", "--export",
               str(tmp_path / "o3"), check=False)
        assert p.returncode != 0 and "LB_UNKNOWN_POINT" in p.stderr
        assert not (tmp_path / "o3").exists()

        # Drills and cleanups are engine jobs with steps: listed, shown, and refused with stable codes.
        jobs = lbj("jobs", "--home", str(home))
        assert [j["kind"] for j in jobs] == ["test-failover", "failover-cleanup"] * 3
        assert all(j["state"] == "succeeded" and j["finished"] and j["machine"] == "vm1" for j in jobs)
        assert [s["name"] for s in jobs[0]["steps"]] == ["resolve-point", "open-views", "export-disks"]
        assert lbj("jobs", "--home", str(home), "--active") == []
        table = lb("jobs", "--home", str(home), "--machine", "vm1").stdout
        assert table.splitlines()[0].split()[:4] == ["ID", "KIND", "MACHINE", "STATE"] and jobs[0]["id"] in table
        shown = lb("job", "show", "--home", str(home), jobs[4]["id"]).stdout
        assert "serve-nbd" in shown and "succeeded" in shown and jobs[4]["id"] in shown
        assert lbj("job", "show", "--home", str(home), jobs[0]["id"])["result"]["files"]
        p = lb("job", "cancel", "--home", str(home), jobs[0]["id"], check=False)
        assert p.returncode != 0 and "LB_JOB_FINISHED" in p.stderr
        p = lb("job", "resume", "--home", str(home), jobs[0]["id"], check=False)
        assert p.returncode != 0 and "LB_JOB_NOT_PAUSED" in p.stderr
        p = lb("job", "show", "--home", str(home), "0123456789ab", check=False)
        assert p.returncode != 0 and "LB_UNKNOWN_JOB" in p.stderr
        p = lb("job", "show", "--home", str(home), "nope", check=False)
        assert p.returncode != 0 and "LB_INVALID_INPUT" in p.stderr
    finally:
        for pr in reversed(procs):
            pr.terminate()
            try:
                pr.wait(15)
            except subprocess.TimeoutExpired:
                pr.kill()
    for pr in procs:
        assert pr.returncode == 0, pr.stderr.read() if pr.stderr else ""
