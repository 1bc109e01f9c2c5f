"""The appliance SIGKILLed while it writes into the Azure vault, every role in its own process, Azurite as the cloud:
once in the middle of the initial replication (appends going straight to the page blobs), and twice in the middle
of churn (the applier behind the cache logs). After each restart replication resumes by itself; at the end every
bookmarked point (taken with the source quiet, its bytes hashed right then) exports byte-identical, the last one
equals the source (nothing lost), and the cache logs hold every seq exactly once (nothing applied twice)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from engine.vault.azure.logs import parse_log
from engine.vault.azure.rest import AzureBlobClient, Credential
from tests.azurite import KEY, Azurite, azurite_missing
from tests.conftest import free_port, need_tool
from tests.engine.test_cli import LIFEBOAT, lb, lbj, wait

MiB = 1024 * 1024
SIZE = 192 * MiB


@pytest.fixture
def azurite(tmp_path: Path):
    why = azurite_missing()
    if why:
        pytest.skip(why)
    az = Azurite(tmp_path / "azurite")
    az.start()
    yield az
    az.stop()


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


def _writes(url: str, rng: random.Random, n: int, *, background: bool = False):  # type: ignore[no-untyped-def]
    """n writes of 64 KiB–2 MiB at random 4 KiB-aligned offsets with random patterns (qemu-io through NBD)."""
    cmds: list[str] = []
    for _ in range(n):
        length = rng.choice([64, 256, 1024, 2048]) * 1024
        off = rng.randrange(0, (SIZE - length) // 4096) * 4096
        cmds += ["-c", f"write -P {rng.randrange(1, 255)} {off} {length}"]
    p = subprocess.Popen(["qemu-io", "-f", "raw", url, *cmds], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    if background:
        return p
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_sigkill_mid_apply_loses_and_duplicates_nothing(azurite: Azurite, tmp_path: Path) -> None:
    need_tool("qemu-io")
    rng = random.Random(77)
    home, ahome = tmp_path / "appliance", tmp_path / "agent"
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:                       # random data: every byte goes up in initial replication
        for _ in range(SIZE // (8 * MiB)):
            f.write(rng.randbytes(8 * MiB))
    container = "kill" + uuid.uuid4().hex[:10]
    azurite.create_container(container)
    machine = f"k{os.getpid()}"
    cport, dport, nport = free_port(), free_port(), free_port()
    H = ("--home", str(home))
    lb("appliance", "init", *H, "--control-port", str(cport), "--data-port", str(dport), "--listen", "127.0.0.1")
    p = subprocess.run([*LIFEBOAT, "vault", "set", *H, "--kind", "azure", "--account-url", azurite.url,
                        "--container", container, "--key-stdin"], input=KEY + "\n", capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    cfg = json.loads((home / "appliance.json").read_text())
    cfg["vault"]["log_bytes"] = 4 * MiB               # many cache logs, some cut by the kills
    (home / "appliance.json").write_text(json.dumps(cfg))
    url = f"nbd://127.0.0.1:{nport}/d0"
    app: subprocess.Popen | None = None
    agent: subprocess.Popen | None = None
    kills: list[str] = []

    def start_appliance() -> subprocess.Popen:
        pr = subprocess.Popen([*LIFEBOAT, "appliance", "run", *H], stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / "appliance.err", "ab"))
        wait(lambda: lb("status", *H, check=False).returncode == 0, 30, "appliance")
        return pr

    def machine_status() -> dict:
        st = lbj("status", *H)["machines"]
        return st[0] if st else {}

    behind: dict[str, tuple[int, int]] = {}

    def sigkill(what: str) -> None:
        assert app is not None and app.poll() is None
        os.kill(app.pid, signal.SIGKILL)
        app.wait(10)
        kills.append(what)
        # what the dead appliance left: applied_seq in meta.json against the last logged seq
        c = AzureBlobClient(azurite.url, container, Credential(key=KEY))
        applied = json.loads(c.get_blob(f"{machine}/meta.json"))["applied_seq"]
        logged = max((int(it.metadata.get("lastseq", 0)) for it in c.list_blobs(f"{machine}/logs/")), default=0)
        c.close()
        behind[what] = (applied, logged)

    def caught_up() -> bool:
        m = machine_status()
        return m.get("state") == "protected" and m.get("rpo_seconds", 1) == 0 and m.get("agent_connected")

    bookmarks: dict[str, str] = {}

    def bookmark(tag: str) -> None:
        r = json.loads(lb("agent", "bookmark", "--home", str(ahome), "--tag", tag, "--json").stdout)
        assert r.get("seq"), r
        bookmarks[tag] = _sha(disk)                   # the source is quiet: these are the point's bytes

    try:
        app = start_appliance()
        lb("agent", "register", "--home", str(ahome), "--appliance", f"127.0.0.1:{cport}",
           "--passphrase-file", str(home / "passphrase.txt"), "--name", machine)
        agent = subprocess.Popen([*LIFEBOAT, "agent", "run", "--home", str(ahome), "--disk", f"d0={disk}",
                                  "--nbd", f"127.0.0.1:{nport}"], stdout=subprocess.DEVNULL,
                                 stderr=open(tmp_path / "agent.err", "ab"))
        lb("policy", "set", *H, "fast", "--rpo-threshold", "60s", "--retention", "1h", "--app-consistent", "1h",
           "--crash-interval", "1s")
        lb("protect", *H, machine, "--policy", "fast")

        # 1. killed in the middle of the initial replication (direct appends into the page blob)
        wait(lambda: (machine_status().get("sync_progress") or 0) > 0.25, 60, "initial replication under way")
        sigkill("initial replication")
        app = start_appliance()
        wait(lambda: machine_status().get("state") == "protected", 120, "protected after the restart")
        wait(caught_up, 60, "caught up")
        bookmark("after-initial")

        # 2. killed twice during churn, the applier behind the logs
        for i in range(2):
            _writes(url, rng, 20)
            bookmark(f"quiet-{i}")
            w = _writes(url, rng, 60, background=True)
            time.sleep(0.4 + 0.3 * i)
            sigkill(f"churn {i}")
            _, err = w.communicate(timeout=120)        # the agent keeps taking writes while the appliance is down
            assert w.returncode == 0, err
            app = start_appliance()
            wait(caught_up, 120, "caught up after the restart")
        bookmark("final")
        wait(lambda: machine_status().get("points", 0) and all(
            any(p.get("tag") == t for p in lbj("points", *H, machine)) for t in bookmarks), 60, "every bookmark")
        wait(caught_up, 60, "caught up")

        # every bookmarked point exports byte-identical; the final one is the source as it is now
        assert bookmarks["final"] == _sha(disk)
        for tag, want in bookmarks.items():
            out = tmp_path / f"export-{tag}"
            lb("failover", *H, machine, "--test", "--point", f"tag:{tag}", "--export", str(out))
            assert _sha(out / "d0.img") == want, f"point {tag} differs"
            lb("failover-cleanup", *H, machine)
            (out / "d0.img").unlink(missing_ok=True)   # (the cleanup may have removed it)

        # nothing applied twice: the cache logs hold each seq once, in order; the points are unique
        c = AzureBlobClient(azurite.url, container, Credential(key=KEY))
        seqs: list[int] = []
        for it in sorted(c.list_blobs(f"{machine}/logs/"), key=lambda it: it.name):
            seqs += [e.rec.seq for e in parse_log(machine, int(it.name.rsplit("/", 1)[1]), c.get_blob(it.name))]
        c.close()
        assert seqs == sorted(set(seqs)), "a record is in the cache logs twice"
        pts = lbj("points", *H, machine)
        assert len({p["id"] for p in pts}) == len(pts)
        # the kills did land mid-apply: initial replication went direct (its run ended in a sync snapshot) and
        # the dead appliance left meta.json behind the logs
        c = AzureBlobClient(azurite.url, container, Credential(key=KEY))
        kinds = {it.metadata.get("lbkind") for it in c.list_blobs(f"{machine}/disks/", snapshots=True) if it.snapshot}
        c.close()
        assert "sync" in kinds, kinds
        print("applied_seq / last logged seq at each kill:", behind)
        assert any(a < lg for a, lg in behind.values()), behind
        print(f"{len(kills)} SIGKILLs ({', '.join(kills)}); {len(seqs)} records logged, "
              f"{len(pts)} points, {len(bookmarks)} bookmarks byte-identical")
    finally:
        for pr in (agent, app):
            if pr is not None and pr.poll() is None:
                pr.terminate()
                try:
                    pr.wait(30)
                except subprocess.TimeoutExpired:
                    pr.kill()
