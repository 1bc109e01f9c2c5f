"""A two-group recovery plan on the local libvirt recovery host, every role in its own process: two protected
machines whose agents serve copies of the boot image; plan validation refused with clear codes; a failing script
stopping a plan before anything is failed over (retried, failing again, the plan cancelled); then a test run: group 1 boots, its after-script sees the plan's
variables, the run pauses at group 2's manual action, `lifeboat job resume` goes on to a failing script that stops the plan, `plan skip` lets group 2
boot (only after group 1 booted), every NIC was on the isolated network, the DR report lists both machines with point age and boot time and
who resumed, and the automatic cleanup leaves no domain, no overlay and no files."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, need_tool
from tests.engine.test_cli import LIFEBOAT, lb, lbj, wait


def _fails(p: subprocess.CompletedProcess, code: str, *texts: str) -> None:
    assert p.returncode != 0, p.stdout
    assert code in p.stderr and "what to do" in p.stderr, p.stderr
    for t in texts:
        assert t in p.stderr, p.stderr


def _domain_exists(uri: str, name: str) -> bool:
    return subprocess.run(["virsh", "-c", uri, "domstate", name], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_group_plan_pauses_resumes_reports_and_cleans_up(recovery_host: str, boot_disk: Path,
                                                             tmp_path: Path) -> None:
    need_tool("qemu-system-x86_64")
    home = tmp_path / "appliance"
    H = ("--home", str(home))
    tag = os.getpid()
    m1, m2, m3, hostname = f"pa{tag}", f"pb{tag}", f"pu{tag}", f"prh{tag}"
    cport, dport = free_port(), free_port()
    lb("appliance", "init", *H, "--control-port", str(cport), "--data-port", str(dport), "--listen", "127.0.0.1")
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen([*LIFEBOAT, "appliance", "run", *H], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
        wait(lambda: lb("status", *H, check=False).returncode == 0, 30, "appliance")
        for m in (m1, m2, m3):
            lb("agent", "register", "--home", str(tmp_path / m), "--appliance", f"127.0.0.1:{cport}",
               "--passphrase-file", str(home / "passphrase.txt"), "--name", m)
        for m in (m1, m2):   # m3 stays registered but unprotected
            disk = tmp_path / f"{m}.img"
            disk.write_bytes(boot_disk.read_bytes())
            procs.append(subprocess.Popen([*LIFEBOAT, "agent", "run", "--home", str(tmp_path / m), "--disk",
                                           f"d0={disk}", "--nbd", f"127.0.0.1:{free_port()}"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        lb("policy", "set", *H, "fast", "--rpo-threshold", "30s", "--retention", "1h", "--app-consistent", "1h",
           "--crash-interval", "1s")
        for m in (m1, m2):
            lb("protect", *H, m, "--policy", "fast")
        wait(lambda: sorted(x["state"] for x in lbj("status", *H)["machines"] if x["name"] in (m1, m2))
             == ["protected", "protected"], 60, "both protected")
        lbj("host", "add", *H, hostname, "--uri", recovery_host, "--network", "lan=user", "--network", "iso=isolated")
        for i, m in enumerate((m1, m2), start=1):
            lbj("machine", "settings", *H, m, "--cpus", "1", "--memory-mib", "256", "--nic", "eth0=lan",
                "--ip", f"eth0=192.0.2.{10 + i}/24", "--boot-pattern", "LIFEBOAT-BOOTED", "--boot-timeout", "90")

        # validation: every refusal has its code, the field and what to do
        lb("plan", "create", *H, "bad")
        _fails(lb("plan", "run", *H, "bad", "--host", hostname, check=False), "LB_PLAN_INVALID", "no group")
        _fails(lb("plan", "add", *H, "bad", "--group", "1", "nosuch", check=False), "LB_UNKNOWN_MACHINE")
        _fails(lb("plan", "add", *H, "bad", "--group", "3", m1, check=False), "LB_PLAN_INVALID", "group 3")
        lb("plan", "add", *H, "bad", "--group", "1", m1, m3)
        _fails(lb("plan", "add", *H, "bad", "--group", "2", m1, check=False), "LB_PLAN_INVALID", "at most one group")
        _fails(lb("plan", "run", *H, "bad", "--host", hostname, check=False), "LB_PLAN_INVALID",
               f"{m3!r} of group 1 is not protected")
        lb("plan", "create", *H, "gap")
        lb("plan", "add", *H, "gap", "--group", "1", m1)
        lb("plan", "action", *H, "gap", "--group", "2", "--before", "--manual", "nothing to do")
        s = lbj("plan", "show", *H, "gap")
        assert not s["valid"] and s["problem"]["details"]["field"] == "groups[2].machines"
        _fails(lb("plan", "run", *H, "gap", "--host", hostname, check=False), "LB_PLAN_INVALID", "group 2 has no")

        # a failing script stops the plan before anything is failed over, and says why
        bad = tmp_path / "bad.sh"
        bad.write_text("#!/bin/sh\necho checking the database\necho 'db not ready' >&2\nexit 3\n")
        bad.chmod(0o755)
        lb("plan", "create", *H, "fails")
        lb("plan", "add", *H, "fails", "--group", "1", m1)
        lb("plan", "action", *H, "fails", "--group", "1", "--before", "--script", str(bad), "--timeout", "30s")
        p = lb("plan", "run", *H, "fails", "--host", hostname, "--json", check=False)   # a real run
        _fails(p, "LB_SCRIPT_FAILED", "exit code 3", "db not ready", "g1-before-1", "plan skip", "plan cancel")
        fjob = json.loads(p.stdout)["job"]
        assert fjob["state"] == "paused-for-operator" and list(fjob["result"]["stopped"]) == ["g1-before-1"]
        assert lbj("vm", "list", *H) == []
        lb("job", "resume", *H, fjob["id"])   # retry: fails again, stops again
        wait(lambda: len(lbj("job", "show", *H, fjob["id"])["result"].get("failures", [])) == 2, 30, "the retry")
        wait(lambda: lbj("job", "show", *H, fjob["id"])["state"] == "paused-for-operator", 30, "stopped again")
        _fails(lb("plan", "cleanup", *H, "fails", check=False), "LB_NOT_A_TEST")
        c = lbj("plan", "cancel", *H, "fails")
        assert c["cancelled"] and c["removed"] == []
        assert lbj("job", "show", *H, fjob["id"])["state"] == "cancelled"
        _fails(lb("plan", "skip", *H, "fails", check=False), "LB_NOTHING_TO_SKIP")

        # a machine that cannot fail over stops the plan with its name, group and why (no app-consistent point yet)
        lb("plan", "create", *H, "nopoint")
        lb("plan", "add", *H, "nopoint", "--group", "1", m1, m2)
        p = lb("plan", "run", *H, "nopoint", "--host", hostname, "--test", "--point", "latest-app", "--json",
               check=False)
        _fails(p, "LB_UNKNOWN_POINT", "(group 1) did not fail over", "no app-consistent point")
        njob = json.loads(p.stdout)["job"]["id"]
        wait(lambda: len(lbj("job", "show", *H, njob)["result"].get("stopped") or {}) == 2, 30, "both stopped")
        stopped = lbj("job", "show", *H, njob)["result"]["stopped"]   # each machine says why
        assert {k: v["code"] for k, v in stopped.items()} == {f"g1-failover-{m1}": "LB_UNKNOWN_POINT",
                                                             f"g1-failover-{m2}": "LB_UNKNOWN_POINT"}
        assert f"machine '{m2}' (group 1) did not fail over" in stopped[f"g1-failover-{m2}"]["message"]
        lb("plan", "cancel", *H, "nopoint")
        assert lbj("vm", "list", *H) == []

        # the real plan: group 1 = m1 with an after-script, group 2 = m2 behind a manual action
        env_out = tmp_path / "env.txt"
        ok = tmp_path / "ok.sh"
        ok.write_text(f"#!/bin/sh\nenv | grep ^LIFEBOAT_ | sort > {env_out}\necho group $LIFEBOAT_GROUP up\n")
        ok.chmod(0o755)
        lb("plan", "create", *H, "dr")
        lb("plan", "add", *H, "dr", "--group", "1", m1)
        lb("plan", "add", *H, "dr", "--group", "2", m2)
        lb("plan", "action", *H, "dr", "--group", "1", "--after", "--script", str(ok), "--timeout", "1m")
        lb("plan", "action", *H, "dr", "--group", "2", "--before", "--manual", "Check the database on the first VM")
        lb("plan", "action", *H, "dr", "--group", "2", "--before", "--script", str(bad))   # to be skipped
        assert lbj("plan", "show", *H, "dr")["valid"]
        t0 = time.monotonic()
        p = lb("plan", "run", *H, "dr", "--host", hostname, "--test", "--cleanup-after", "2s", "--json", timeout=200)
        r = json.loads(p.stdout)
        job = r["job"]
        assert job["state"] == "paused-for-operator" and job["message"] == "Check the database on the first VM"
        vms = {v["machine"]: v for v in lbj("vm", "list", *H)}
        assert set(vms) == {m1} and vms[m1]["state"] == "booted"
        # a drill touches nothing of the source: m1 shows failover-test, its agent stays connected and a new
        # point still reaches the vault
        st1 = {x["name"]: x for x in lbj("status", *H)["machines"]}[m1]
        assert st1["state"] == "failover-test" and st1["failover"]["host"] == hostname and st1["agent_connected"]
        assert st1["failover"]["kind"] == "test" and "test failover on" in lb("status", *H).stdout
        assert lbj("bookmark", *H, m1, "--tag", "during-drill")["tag"] == "during-drill"
        pin = vms[m1]["pin"]   # a plan's test run holds history: shown with how to end it
        assert pin["kind"] == "plan-test" and pin["point"] == vms[m1]["point"] and "plan cleanup" in pin["end_with"]
        xml = subprocess.run(["virsh", "-c", recovery_host, "dumpxml", f"lifeboat-{m1}"], capture_output=True,
                             text=True).stdout
        assert f"lifeboat-{hostname}-iso" in xml and f"lifeboat-{hostname}-lan" not in xml   # a test: isolated
        env = env_out.read_text()
        for line in ("LIFEBOAT_PLAN=dr", "LIFEBOAT_GROUP=1", f"LIFEBOAT_MACHINES={m1}",
                     f"LIFEBOAT_ADDRESSES={m1}=192.0.2.11", "LIFEBOAT_TEST=1", f"LIFEBOAT_HOST={hostname}"):
            assert line in env, env
        lb("job", "resume", *H, job["id"])
        wait(lambda: "g2-before-2" in (lbj("job", "show", *H, job["id"])["result"].get("stopped") or {}), 30,
             "the failing script before group 2")
        assert set(v["machine"] for v in lbj("vm", "list", *H)) == {m1}   # group 2 waits
        assert lbj("plan", "skip", *H, "dr")["skipped"] == ["g2-before-2"]
        wait(lambda: lbj("job", "show", *H, job["id"])["finished"], 120, "the plan's end")
        print(f"two-group plan run, both booted: {time.monotonic() - t0:.1f} s")
        j = lbj("job", "show", *H, job["id"])
        assert j["state"] == "succeeded" and j["kind"] == "recovery-plan", j
        steps = {s["name"]: s for s in j["steps"]}
        assert list(steps) == [f"g1-failover-{m1}", "g1-after-1", "g2-before-1", "g2-before-2", f"g2-failover-{m2}"]
        assert j["result"]["skipped"] == ["g2-before-2"] and j["result"]["stopped"] == {}
        assert steps[f"g1-failover-{m1}"]["ended"] <= steps[f"g2-failover-{m2}"]["started"]   # groups in order
        assert j["result"]["actions"]["g1-after-1"]["output"].strip() == "group 1 up"
        assert j["result"]["actions"]["g2-before-1"]["resumed_by"].startswith("lifeboat-admin")

        # the DR report
        [rep] = [x for x in lbj("report", "list", *H) if x["plan"] == "dr"]
        assert rep["state"] == "succeeded" and rep["test"]
        ms = {m["machine"]: m for m in rep["machines"]}
        assert set(ms) == {m1, m2}
        for m in ms.values():
            assert m["point"] and m["point_age_seconds"] is not None and m["point_age_seconds"] >= 0
            assert 0 < m["boot_seconds"] < 90
        html = Path(lb("report", "show", *H, rep["id"]).stdout.strip())
        text = html.read_text()
        assert m1 in text and m2 in text and "resumed by lifeboat-admin" in text and "group 1 up" in text
        fails = [x for x in lbj("report", "list", *H) if x["plan"] == "fails"]
        assert fails and fails[0]["state"] == "cancelled"
        assert "Skipped by the operator: g2-before-2" in text and "db not ready" in text

        # the automatic cleanup (2 s after the start): no VM, no domain, no overlay, no files
        wait(lambda: lbj("vm", "list", *H) == [], 60, "the automatic cleanup")
        for m in (m1, m2):
            assert not _domain_exists(recovery_host, f"lifeboat-{m}")
            assert not (home / "failovers" / m).exists()
        st = {x["name"]: x["state"] for x in lbj("status", *H)["machines"]}
        assert st[m1] == st[m2] == "protected"
        assert lbj("plan", "show", *H, "dr")["runs"][-1]["cleaned_at"]
        text = lb("plan", "show", *H, "dr").stdout
        assert f"group 1: {m1}" in text and "manual: Check the database" in text and "cleaned up" in text, text
        assert "; report " in text and "succeeded" in text
        assert "dr " in lb("plan", "list", *H).stdout
        _fails(lb("plan", "commit", *H, "dr", check=False), "LB_TEST_RUN")
        _fails(lb("plan", "cleanup", *H, "nosuch", check=False), "LB_UNKNOWN_PLAN")
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
