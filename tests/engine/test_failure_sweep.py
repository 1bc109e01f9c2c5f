"""No traceback for an operator's mistake (issue 12, item 3), through the real CLI roles, each in its own process:
port in use (appliance run, drill NBD), unknown machine, drill export to an unusable folder and to a full
filesystem (a failed export cleans itself up: no drill left running, no partial images), protect with the vault
folder gone. Each must exit non-zero with an LB_ code, a cause and what to do on stderr, and no "Traceback"."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import free_port, need_tool
from tests.engine.harness import make_disk
from tests.engine.test_cli import LIFEBOAT, lb, lbj, wait


def refused(p: subprocess.CompletedProcess, code: str) -> str:
    """The operator's view of a failure: a code, a cause, a next step, never a traceback."""
    assert p.returncode != 0, p.stdout
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout, p.stderr
    assert f"error {code}:" in p.stderr and "what to do:" in p.stderr, p.stderr
    return p.stderr


@pytest.mark.timeout(120)
def test_cli_failure_sweep(tmp_path: Path) -> None:
    need_tool("qemu-io")
    home, ahome = tmp_path / "appliance", tmp_path / "agent"
    disk = tmp_path / "disk.img"
    make_disk(disk, 4 << 20, seed=3, fill=1.0)   # all data: an export needs 4 MiB
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    procs: list[subprocess.Popen] = []
    try:
        # port in use: init accepts it (the port may be free by then), run says which and what to do
        cport, dport, nport = free_port(), free_port(), free_port()
        lb("appliance", "init", "--home", str(home), "--control-port", str(busy), "--data-port", str(dport),
           "--listen", "127.0.0.1")
        err = refused(lb("appliance", "run", "--home", str(home), check=False, timeout=60), "LB_LISTEN_FAILED")
        assert str(busy) in err and "control port" in err
        shutil.rmtree(home)
        lb("appliance", "init", "--home", str(home), "--control-port", str(cport), "--data-port", str(dport),
           "--listen", "127.0.0.1")
        procs.append(subprocess.Popen([*LIFEBOAT, "appliance", "run", "--home", str(home)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        wait(lambda: lb("status", "--home", str(home), check=False).returncode == 0, 30, "appliance")

        # unknown machine
        refused(lb("protect", "--home", str(home), "ghost", check=False), "LB_UNKNOWN_MACHINE")
        refused(lb("failover", "--home", str(home), "ghost", "--test", "--point", "latest", "--export",
                   str(tmp_path / "g"), check=False), "LB_UNKNOWN_MACHINE")

        lb("agent", "register", "--home", str(ahome), "--appliance", f"127.0.0.1:{cport}",
           "--passphrase-file", str(home / "passphrase.txt"), "--name", "vm1")
        procs.append(subprocess.Popen([*LIFEBOAT, "agent", "run", "--home", str(ahome), "--disk", f"d0={disk}",
                                       "--nbd", f"127.0.0.1:{nport}"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
        lbj("policy", "set", "--home", str(home), "default", "--crash-interval", "1s")
        lb("protect", "--home", str(home), "vm1")
        wait(lambda: (s := lbj("status", "--home", str(home)))["machines"] and
             s["machines"][0]["state"] == "protected" and s["machines"][0].get("last_point"), 60, "a point")

        # drill over NBD on a port in use
        err = refused(lb("failover", "--home", str(home), "vm1", "--test", "--point", "latest", "--nbd",
                         f"127.0.0.1:{busy}", check=False), "LB_LISTEN_FAILED")
        assert str(busy) in err

        # drill export where a file is in the way: refused, and nothing is left behind (no drill running)
        blocker = tmp_path / "a-file"
        blocker.write_text("not a folder")
        refused(lb("failover", "--home", str(home), "vm1", "--test", "--point", "latest", "--export",
                   str(blocker / "out"), check=False), "LB_EXPORT_REFUSED")
        # drill export to a full filesystem (1 MiB tmpfs for a 4 MiB disk)
        small = tmp_path / "small"
        small.mkdir()
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
                                 capture_output=True).returncode == 0
        try:
            if mounted:
                p = lb("failover", "--home", str(home), "vm1", "--test", "--point", "latest", "--export",
                       str(small / "out"), check=False)
                refused(p, "LB_STORAGE")
                assert not list((small / "out").glob("*.img")) if (small / "out").exists() else True, \
                    "the failed export removed its partial images"
        finally:
            if mounted:
                lb("failover-cleanup", "--home", str(home), "vm1", check=False)  # (only if the test failed)
                subprocess.run(["umount", "-l", str(small)], check=True)
        jobs = [j for j in lbj("jobs", "--home", str(home)) if j["kind"] == "test-failover"]
        assert all(j["state"] == "failed" and (j["error"] or {}).get("code", "").startswith("LB_") for j in jobs)
        assert len(jobs) >= mounted
        # the failed drills cleaned themselves up: no drill is running, the next one starts without a cleanup
        refused(lb("failover-cleanup", "--home", str(home), "vm1", check=False), "LB_NOT_FOUND")
        r = lbj("failover", "--home", str(home), "vm1", "--test", "--point", "latest", "--export",
                str(tmp_path / "ok"))
        assert (tmp_path / "ok" / "d0.img").stat().st_size == 4 << 20, r
        lb("failover-cleanup", "--home", str(home), "vm1")

        # protect with the vault folder unusable (a file where it should be; as root, modes do not stop writes)
        lb("agent", "register", "--home", str(tmp_path / "agent2"), "--appliance", f"127.0.0.1:{cport}",
           "--passphrase-file", str(home / "passphrase.txt"), "--name", "vm2")
        (home / "vault").rename(home / "vault.moved")
        (home / "vault").write_text("not a folder")
        try:
            refused(lb("protect", "--home", str(home), "vm2", check=False), "LB_STORAGE")
        finally:
            (home / "vault").unlink()
            (home / "vault.moved").rename(home / "vault")
    finally:
        taken.close()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
            err = p.stderr.read() if p.stderr else ""
            assert "Traceback" not in err, err[-3000:]
