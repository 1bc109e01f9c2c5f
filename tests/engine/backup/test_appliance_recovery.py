"""The appliance's own disaster: protect a machine, take points, back up the appliance, destroy its home and its
keyring entries, restore a new home from the vault's copy of the backup with the recovery kit. The agent reconnects
without registering again, every earlier point recovers byte-exact, replication goes on. And every way a kit or a
backup can be wrong is refused with its own code, leaving nothing half-restored."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.appliance.appliance import init_home
from engine.backup import archive
from engine.backup.kit import Kit, kit_text, read_kit_text, seal, unseal
from engine.home import ApplianceHome
from engine.secrets import get_secret, vault_key_name
from tests.conftest import free_port, need_tool
from tests.engine.harness import Site, make_disk, run_tool, sha256_file

PASS = "correct horse battery staple"


def lifeboat(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], input=stdin, capture_output=True, text=True,
                          timeout=120, env=os.environ.copy())


async def _export(site: Site, spec: str, out: Path) -> str:
    app = site.app
    assert app is not None
    job = await app.recovery.test_failover("vm1", spec, export_dir=str(out), nbd=None)
    await site.wait_for(lambda: app.recovery.job(job.id).finished, 60, f"export of {spec}")
    assert app.recovery.job(job.id).error is None, app.recovery.job(job.id).error
    digest = sha256_file(out / "d0.img")
    await app.recovery.cleanup("vm1")
    return digest


async def _bookmark(site: Site, tag: str) -> None:
    app = site.app
    assert app is not None
    app.request_bookmark("vm1", tag)
    await site.wait_for(lambda: any(p["tag"] == tag for p in app.points("vm1")), 30, f"bookmark {tag}")


async def test_appliance_lost_and_rebuilt_from_the_vault(tmp_path: Path) -> None:
    need_tool("qemu-io")
    disk = tmp_path / "d0.img"
    make_disk(disk, 8 << 20, seed=11)
    vault = tmp_path / "vault"
    site = Site(tmp_path)
    init_home(site.ahome, control_port=free_port(), data_port=free_port(), listen="127.0.0.1", vault=vault)
    digests: dict[str, str] = {}
    try:
        app = await site.start_appliance(crash_interval=0.5)
        await site.register()
        await site.start_agent({"d0": disk})
        await app.protect("vm1")
        await site.wait_for(lambda: app.machine_status("vm1")["state"] == "protected", 60, "initial sync")
        for i, tag in enumerate(("before-1", "before-2")):
            await run_tool("qemu-io", "-f", "raw", f"{site.nbd_url}/d0", "-c", f"write -P 0x{0x31 + i:x} {i}M 256k")
            await site.wait_caught_up()
            await _bookmark(site, tag)
            digests[tag] = sha256_file(disk)

        # The kit (once, at setup) and a backup, both through the CLI as an operator runs them.
        kit = tmp_path / "kit.txt"
        r = lifeboat("appliance", "export-kit", "--home", str(site.ahome), "--out", str(kit), "--passphrase-stdin",
                     stdin=PASS + "\n")
        assert r.returncode == 0, r.stderr
        assert os.stat(kit).st_mode & 0o777 == 0o600
        # The running appliance takes it (POST /v1/config-backup): it runs on this test's loop, so the CLI runs in a
        # thread while the loop answers.
        r = await asyncio.to_thread(lifeboat, "appliance", "backup", "--home", str(site.ahome), "--json")
        assert r.returncode == 0, r.stderr
        taken = json.loads(r.stdout)
        assert taken["taken_by"] == "the running appliance"
        assert (vault / ".appliance-backups" / taken["name"]).exists()
        raw = (vault / ".appliance-backups" / taken["name"]).read_bytes()
        assert b"BEGIN" not in raw and PASS.encode() not in raw   # nothing secret in the clear
        assert (site.ahome / "passphrase.txt").read_text().strip().encode() not in raw

        # After the backup: more points (they are in the vault, not in the backup's database).
        await run_tool("qemu-io", "-f", "raw", f"{site.nbd_url}/d0", "-c", "write -P 0x41 3M 256k")
        await site.wait_caught_up()
        await _bookmark(site, "after-backup")
        digests["after-backup"] = sha256_file(disk)

        # The disaster: the appliance is gone, with its home and its keyring entries. The agent keeps writing.
        await app.stop()
        site.app = None
        aid = json.loads((site.ahome / "appliance.json").read_text())["appliance_id"]
        shutil.rmtree(site.ahome)
        shutil.rmtree(Path(os.environ["XDG_DATA_HOME"]))
        import keyring.core
        keyring.core._keyring_backend = None
        assert get_secret(vault_key_name(aid)) is None
        await run_tool("qemu-io", "-f", "raw", f"{site.nbd_url}/d0", "-c", "write -P 0x51 4M 256k")

        # A new home, from the vault's copy, with the kit.
        new_home = tmp_path / "rebuilt"
        r = lifeboat("appliance", "restore", "--home", str(new_home), "--from-vault", str(vault), "--kit", str(kit),
                     "--passphrase-stdin", "--json", stdin=PASS + "\n")
        assert r.returncode == 0, r.stderr + r.stdout
        assert json.loads(r.stdout)["appliance_id"] == aid
        assert get_secret(vault_key_name(aid)) is not None
        for p in (new_home, new_home / "pki"):
            assert os.stat(p).st_mode & 0o777 == 0o700
        for p in ("pki/ca.key", "pki/server.key", "pki/admin.key", "passphrase.txt", "state.db", "appliance.json"):
            assert os.stat(new_home / p).st_mode & 0o777 == 0o600, p

        site.ahome = new_home
        agent = site.agent
        assert agent is not None
        cert_before = (site.agent_home / "agent.crt").read_bytes()
        app = await site.start_appliance()
        await site.wait_for(lambda: app.runtimes["vm1"].connection is not None, 60, "the agent reconnects")
        assert (site.agent_home / "agent.crt").read_bytes() == cert_before   # not registered again
        await site.wait_resync_done(timeout=90)
        assert app.state.db.events("appliance-restored"), "the restore was not recorded in the event log"
        asked = app.state.db.events("resync-requested")
        assert asked and "restored from a configuration backup" in asked[-1]["data"]["reason"], asked

        for tag, digest in digests.items():
            assert await _export(site, f"tag:{tag}", tmp_path / f"out-{tag}") == digest, tag
        assert await _export(site, "latest", tmp_path / "out-latest") == sha256_file(disk)

        # Replication goes on.
        await run_tool("qemu-io", "-f", "raw", f"{site.nbd_url}/d0", "-c", "write -P 0x61 5M 256k")
        await site.wait_caught_up()
        assert await _export(site, "latest", tmp_path / "out-latest-2") == sha256_file(disk)
    finally:
        await site.stop()


def _home(tmp: Path) -> ApplianceHome:
    root = tmp / "home"
    init_home(root, control_port=free_port(), data_port=free_port(), listen="127.0.0.1", vault=tmp / "vault")
    return ApplianceHome(root)


def test_kit_round_trip_and_refusals(tmp_path: Path) -> None:
    home = _home(tmp_path)
    kit = archive.kit_from_home(home)
    blob = seal(kit, PASS)
    text = kit_text(blob, kit.appliance_id)
    assert read_kit_text(text) == blob
    assert read_kit_text(text.lower().replace("\n", "\r\n")) == blob   # typed back: case and line ends forgiven
    assert unseal(blob, PASS) == kit

    with pytest.raises(Exception) as e:
        unseal(blob, "not the passphrase")
    assert getattr(e.value, "code", None) == "LB_KIT_PASSPHRASE"
    # One changed character in a data line: that line is named.
    lines = text.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith("002 "))
    body = list(lines[i])
    body[6] = "A" if body[6] != "A" else "B"
    lines[i] = "".join(body)
    with pytest.raises(Exception) as e:
        read_kit_text("\n".join(lines))
    assert getattr(e.value, "code", None) == "LB_KIT_CORRUPT" and "line 002" in str(e.value)
    # A missing line.
    with pytest.raises(Exception) as e:
        read_kit_text("\n".join(line for line in text.splitlines() if not line.startswith("003 ")))
    assert getattr(e.value, "code", None) == "LB_KIT_CORRUPT"
    with pytest.raises(Exception) as e:
        seal(kit, "short")
    assert getattr(e.value, "code", None) == "LB_INVALID_INPUT"


def test_cli_kit_import_and_bad_backups_change_nothing(tmp_path: Path) -> None:
    home = _home(tmp_path)
    kit_file = tmp_path / "kit.txt"
    assert lifeboat("appliance", "export-kit", "--home", str(home.root), "--out", str(kit_file),
                    "--passphrase-stdin", stdin=PASS + "\n").returncode == 0
    # Never overwrites a kit.
    r = lifeboat("appliance", "export-kit", "--home", str(home.root), "--out", str(kit_file), "--passphrase-stdin",
                 stdin=PASS + "\n")
    assert r.returncode != 0 and "LB_INVALID_INPUT" in r.stderr and "Traceback" not in r.stderr
    r = lifeboat("appliance", "backup", "--home", str(home.root), "--out", str(tmp_path / "b.lbbk"), "--json")
    assert r.returncode == 0, r.stderr
    good = (tmp_path / "b.lbbk").read_bytes()
    r = lifeboat("appliance", "backup", "list", "--home", str(home.root), "--json")
    assert [b["name"] for b in json.loads(r.stdout)] == [json.loads(lifeboat(
        "appliance", "backup", "list", "--home", str(home.root), "--json").stdout)[0]["name"]]

    # import-kit after the keyring entry is lost brings the vault key back.
    aid = home.load_config()["appliance_id"]
    key = get_secret(vault_key_name(aid))
    from engine.secrets import delete_secret
    delete_secret(vault_key_name(aid))
    r = lifeboat("appliance", "import-kit", "--home", str(home.root), "--kit", str(kit_file), "--passphrase-stdin",
                 stdin="wrong passphrase!!\n")
    assert r.returncode != 0 and "LB_KIT_PASSPHRASE" in r.stderr
    assert get_secret(vault_key_name(aid)) is None
    r = lifeboat("appliance", "import-kit", "--home", str(home.root), "--kit", str(kit_file), "--passphrase-stdin",
                 stdin=PASS + "\n")
    assert r.returncode == 0, r.stderr
    assert get_secret(vault_key_name(aid)) == key

    def restore(data: bytes, name: str, passphrase: str = PASS) -> subprocess.CompletedProcess[str]:
        f = tmp_path / f"{name}.lbbk"
        f.write_bytes(data)
        return lifeboat("appliance", "restore", "--home", str(tmp_path / name), "--from", str(f), "--kit",
                        str(kit_file), "--passphrase-stdin", stdin=passphrase + "\n")

    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x01
    newer = bytearray(good)
    newer[4] = archive.VERSION + 1
    for name, data, code in (("flipped", bytes(flipped), "LB_BACKUP_CORRUPT"),
                             ("truncated", good[:-100], "LB_BACKUP_CORRUPT"),
                             ("header", good[:14] + b"X" + good[15:], "LB_BACKUP_CORRUPT"),
                             ("newer", bytes(newer), "LB_BACKUP_VERSION")):
        r = restore(data, name)
        assert r.returncode != 0 and code in r.stderr, (name, r.stderr)
        assert "Traceback" not in r.stderr
        assert not (tmp_path / name).exists(), f"{name}: a half-restored home was left"
        assert not [p for p in tmp_path.iterdir() if ".restoring-" in p.name]
    r = restore(good, "wrongpass", "not the right one")
    assert r.returncode != 0 and "LB_KIT_PASSPHRASE" in r.stderr and not (tmp_path / "wrongpass").exists()

    # Another appliance's kit.
    other = ApplianceHome(tmp_path / "other")
    init_home(other.root, control_port=free_port(), data_port=free_port(), listen="127.0.0.1")
    other_kit = tmp_path / "other-kit.txt"
    other_kit.write_text(kit_text(seal(archive.kit_from_home(other), PASS), "x"))
    f = tmp_path / "good.lbbk"
    f.write_bytes(good)
    r = lifeboat("appliance", "restore", "--home", str(tmp_path / "mixed"), "--from", str(f), "--kit",
                 str(other_kit), "--passphrase-stdin", stdin=PASS + "\n")
    assert r.returncode != 0 and "LB_KIT_MISMATCH" in r.stderr and not (tmp_path / "mixed").exists()
    # Into a home that is not empty.
    r = lifeboat("appliance", "restore", "--home", str(home.root), "--from", str(f), "--kit", str(kit_file),
                 "--passphrase-stdin", stdin=PASS + "\n")
    assert r.returncode != 0 and "LB_CONFLICT" in r.stderr
    # And the good one restores.
    r = restore(good, "restored")
    assert r.returncode == 0, r.stderr
    assert ApplianceHome(tmp_path / "restored").load_config()["appliance_id"] == aid


def test_kit_holds_what_it_says() -> None:
    k = Kit("a" * 32, os.urandom(32), os.urandom(32), b"cert", b"key", 1.0)
    assert unseal(seal(k, PASS), PASS) == k


def test_export_kit_from_another_account_is_sealed_by_the_running_appliance(tmp_path: Path) -> None:
    """A Windows service runs as LocalSystem: the vault key is in that account's keyring, not the operator's.
    export-kit run by an account whose keyring lacks the key asks the running appliance (admin mutual TLS) to seal
    the kit; without a running appliance it says what to do."""
    import signal

    home = _home(tmp_path)
    aid = home.load_config()["appliance_id"]
    key = get_secret(vault_key_name(aid))
    other = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "operator-keyring")}   # the operator's own, empty

    def export(out: Path, passphrase: str = PASS) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "engine.cli", "appliance", "export-kit", "--home",
                               str(home.root), "--out", str(out), "--passphrase-stdin", "--json"],
                              input=passphrase + "\n", capture_output=True, text=True, timeout=120, env=other)

    r = export(tmp_path / "no-appliance.txt")
    assert r.returncode != 0 and "LB_KEYRING" in r.stderr and "Start the appliance" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "no-appliance.txt").exists()

    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "appliance", "run", "--home", str(home.root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("appliance running")
        kit_file = tmp_path / "kit.txt"
        r = export(kit_file)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["sealed_by"] == "the running appliance"
        assert os.stat(kit_file).st_mode & 0o777 == 0o600
        from engine.backup.kit import read_kit
        kit = unseal(read_kit(kit_file), PASS)
        assert kit.appliance_id == aid and base64.b64encode(kit.vault_key).decode() == key
        mine = archive.kit_from_home(home)   # the same kit, made here with the appliance's keyring
        assert (kit.backup_key, kit.ca_cert_pem, kit.ca_key_pem) == (mine.backup_key, mine.ca_cert_pem,
                                                                     mine.ca_key_pem)
        r = export(tmp_path / "short.txt", "short")
        assert r.returncode != 0 and "LB_INVALID_INPUT" in r.stderr and not (tmp_path / "short.txt").exists()
        from engine.client import AdminClient
        events = AdminClient(home.root).call("GET", "/v1/events")
        assert [e for e in events if e["kind"] == "recovery-kit-exported"], events
        assert PASS not in (home.root / "appliance.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
