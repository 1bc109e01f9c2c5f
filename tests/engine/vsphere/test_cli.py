"""The vcenter/inventory CLI against a real appliance process and vcsim: add (refused certificate with its
thumbprint, then accepted), wrong password, --insecure, list --json, inventory --json shape, remove; and the
password never on a command line, in the appliance's log, in its home or in its DB."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import psutil

from engine.secrets import get_secret
from engine.vsphere.store import secret_name
from tests.conftest import free_port

LIFEBOAT = [sys.executable, "-m", "engine.cli"]
VM_KEYS = {"name", "instance_uuid", "bios_uuid", "power_state", "guest_os", "cpus", "memory_mb", "disks", "nics",
           "host", "datacenter", "protected_machine"}


def lb(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([*LIFEBOAT, *args], input=stdin, capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"lifeboat {' '.join(args)} failed: {p.stderr}{p.stdout}")
    return p


def cmdlines_with(needle: str) -> list[str]:
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info.get("cmdline") or [])
        if needle in line:
            out.append(line)
    return out


def wait(cond, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (v := cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return v


def test_vcenter_cli(tmp_path: Path, vcsim) -> None:  # type: ignore[no-untyped-def]
    password = "Lb-cli-" + secrets.token_hex(10)
    sim = vcsim(password=password)
    sim2 = vcsim(listen="127.0.0.2:0", password=password)  # a second endpoint, for --insecure
    home = tmp_path / "appliance"
    lb("appliance", "init", "--home", str(home), "--control-port", str(free_port()), "--data-port",
       str(free_port()), "--listen", "127.0.0.1")
    log_path = tmp_path / "appliance.log"
    with open(log_path, "w") as log:
        appliance = subprocess.Popen([*LIFEBOAT, "--debug", "appliance", "run", "--home", str(home)],
                                     stdout=log, stderr=subprocess.STDOUT)
    h = ["--home", str(home)]
    try:
        wait(lambda: lb("status", *h, check=False).returncode == 0, 30, "appliance")
        add = ["vcenter", "add", *h, "--host", sim.host, "--port", str(sim.port), "--user", sim.user,
               "--password-stdin"]
        # While `vcenter add` waits for its password on stdin, no process shows it (Lifeboat's or any other,
        # except the simulator we started with it on purpose).
        proc = subprocess.Popen([*LIFEBOAT, *add], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        leaks = [c for c in cmdlines_with(password) if "vcsim" not in c]
        out, err = proc.communicate(password + "\n", timeout=120)
        assert leaks == []
        # Untrusted certificate: refused, with the thumbprint to compare and the flag to accept it.
        assert proc.returncode == 2 and "LB_CERTIFICATE_UNTRUSTED" in err, err
        tp = re.search(r"thumbprint is ((?:[0-9A-F]{2}:){31}[0-9A-F]{2})", err).group(1)  # type: ignore[union-attr]
        assert f"--accept-thumbprint {tp}" in err
        p = lb(*add[:-1], "--password-stdin", "--accept-thumbprint", tp, stdin="wrong\n", check=False)
        assert p.returncode == 2 and "LB_LOGIN_FAILED" in p.stderr and "login failed" in p.stderr
        p = lb(*add, stdin="", check=False)  # an empty stdin: refused, not prompted
        assert p.returncode == 2 and "LB_" in p.stderr
        p = lb(*add, "--accept-thumbprint", tp, stdin=password + "\n")
        assert "registered vcenter" in p.stdout and tp in p.stdout
        # --insecure: warned loudly on the terminal, recorded by the appliance.
        p = lb("vcenter", "add", *h, "--host", sim2.host, "--port", str(sim2.port), "--user", sim2.user,
               "--password-stdin", "--insecure", stdin=password + "\n")
        assert "WARNING" in p.stderr and "INSECURE" in p.stdout
        rows = json.loads(lb("vcenter", "list", *h, "--json").stdout)
        assert [(r["host"], r["trust"], r["insecure"]) for r in rows] == [
            ("127.0.0.1", "thumbprint", False), ("127.0.0.2", "insecure", True)]
        assert rows[0]["thumbprint"] == tp and rows[0]["kind"] == "vcenter"
        assert "INSECURE" in lb("vcenter", "list", *h).stdout

        inv = wait(lambda: (d := json.loads(lb("inventory", *h, "--json").stdout))["vms"] and
                   all(v["synced"] for v in d["vcenters"]) and d, 60, "inventory")
        assert len(inv["vms"]) == 8 and {v["vcenter"] for v in inv["vms"]} == {"127.0.0.1", "127.0.0.2"}
        for v in inv["vms"]:
            assert VM_KEYS <= set(v), VM_KEYS - set(v)
            assert v["disks"] and {"capacity_bytes", "file", "datastore"} <= set(v["disks"][0])
            assert v["nics"] and {"mac", "network", "ips"} <= set(v["nics"][0])
            assert v["protected_machine"] is None
        assert "DC0_H0_VM0" in lb("inventory", *h).stdout
        assert [c for c in cmdlines_with(password) if "vcsim" not in c] == []
        assert get_secret(secret_name("127.0.0.1")) == password

        p = lb("vcenter", "remove", *h, "127.0.0.1")
        assert "removed 127.0.0.1" in p.stdout
        assert [r["host"] for r in json.loads(lb("vcenter", "list", *h, "--json").stdout)] == ["127.0.0.2"]
        assert get_secret(secret_name("127.0.0.1")) is None
        p = lb("vcenter", "remove", *h, "127.0.0.1", check=False)
        assert p.returncode == 2 and "LB_UNKNOWN_VCENTER" in p.stderr
    finally:
        appliance.terminate()
        appliance.wait(30)
    logs = log_path.read_bytes()
    assert b"vcenter" in logs.lower() and b"INSECURE" in logs.upper()
    assert password.encode() not in logs
    assert [f for f in home.rglob("*") if f.is_file() and password.encode() in f.read_bytes()] == []
