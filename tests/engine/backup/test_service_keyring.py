"""The appliance runs under another account than the operator (a Windows service runs as LocalSystem): its vault
key is in ITS keyring. Here the appliance runs in its own process with a keyring file the CLI cannot see (another
``XDG_DATA_HOME`` for keyrings.alt's file keyring), and ``backup``, ``import-kit`` and ``restore --service`` work
through it over the admin mutual-TLS control API. A wrong passphrase changes nothing; no secret reaches the
appliance's log or database."""

from __future__ import annotations

import base64
import json
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.appliance.appliance import init_home
from engine.backup import archive
from engine.backup.kit import read_kit, unseal
from engine.home import ApplianceHome
from engine.secrets import get_secret, set_secret, vault_key_name
from tests.conftest import free_port

PASS = "correct horse battery staple"
SECRET_NAME, SECRET_VALUE = "test/extra-secret", "s3cr3t-value-of-the-service"


def env_with_keyring(folder: Path) -> dict[str, str]:
    return {**os.environ, "XDG_DATA_HOME": str(folder)}


def lifeboat(env: dict[str, str], *args: str, stdin: str | None = None,
             timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def secret_in(env: dict[str, str], name: str) -> str | None:
    """A keyring entry as the account of ``env`` sees it (another process: keyring backends cache)."""
    code = "import sys; from engine.secrets import get_secret; v = get_secret(sys.argv[1]); print(v or '')"
    r = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True, timeout=60, env=env,
                       check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip() or None


class RunningAppliance:
    """``lifeboat appliance run`` in its own process and keyring; stopped with SIGTERM (it drains)."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "appliance", "run", "--home", str(home)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the appliance exited: {self.proc.wait(10)} {self.proc.stderr.read() if self.proc.stderr else ''}"
        return line

    def stop(self) -> None:
        import signal
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(90)


@pytest.fixture
def appliances() -> Iterator[list[RunningAppliance]]:
    started: list[RunningAppliance] = []
    yield started
    for a in started:
        a.stop()


def _no_secret_in(home: Path, *secrets: str) -> None:
    files = [home / "appliance.log", *home.glob("state.db*")]
    assert (home / "appliance.log").exists()
    for f in files:
        raw = f.read_bytes()
        for s in secrets:
            assert s.encode() not in raw, f"a secret is in {f.name}"


def test_backup_and_import_kit_go_through_the_appliance_that_holds_the_key(
        tmp_path: Path, appliances: list[RunningAppliance]) -> None:
    root = tmp_path / "home"
    init_home(root, control_port=free_port(), data_port=free_port(), listen="127.0.0.1", vault=tmp_path / "vault")
    home = ApplianceHome(root)
    aid = home.load_config()["appliance_id"]
    key_b64 = get_secret(vault_key_name(aid))   # in the appliance's keyring (this process's = the service's)
    assert key_b64
    operator = env_with_keyring(tmp_path / "operator-keyring")

    # No appliance runs, and the operator's keyring lacks the key: a clear error, nothing made (no stray backup key).
    r = lifeboat(operator, "appliance", "backup", "--home", str(root), "--json")
    assert r.returncode != 0 and "LB_KEYRING" in r.stderr and "Start the appliance" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (root / "backups").exists()
    assert secret_in(operator, archive.backup_key_name(aid)) is None

    app = RunningAppliance(root, os.environ.copy())
    appliances.append(app)
    assert app.line().startswith("appliance running")

    out = tmp_path / "copy.lbbk"
    r = lifeboat(operator, "appliance", "backup", "--home", str(root), "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    taken = json.loads(r.stdout)
    assert taken["taken_by"] == "the running appliance"
    assert (tmp_path / "vault" / ".appliance-backups" / taken["name"]).exists()
    assert os.stat(out).st_mode & 0o777 == 0o600 and out.read_bytes() == Path(taken["path"]).read_bytes()
    backup_key = base64.b64decode(get_secret(archive.backup_key_name(aid)) or "")
    header, members = archive.open_backup(out.read_bytes(), backup_key)   # sealed with the appliance's backup key
    assert header["appliance_id"] == aid and "state.db" in members
    assert secret_in(operator, archive.backup_key_name(aid)) is None      # nothing written to the operator's keyring
    r = lifeboat(operator, "appliance", "backup", "--home", str(root), "--out", str(out))
    assert r.returncode != 0 and "LB_INVALID_INPUT" in r.stderr   # never overwrites, checked before backing up
    from engine.api import backup_appliance   # the console API takes the same way
    assert backup_appliance(root)["taken_by"] == "the running appliance"

    kit_file = tmp_path / "kit.txt"
    r = lifeboat(operator, "appliance", "export-kit", "--home", str(root), "--out", str(kit_file), "--passphrase-stdin",
                 stdin=PASS + "\n")
    assert r.returncode == 0, r.stderr

    keyring_file = next((tmp_path / "xdg-data").rglob("keyring_pass.cfg"))
    before = keyring_file.read_bytes()
    r = lifeboat(operator, "appliance", "import-kit", "--home", str(root), "--kit", str(kit_file),
                 "--passphrase-stdin", "--json", stdin="not the passphrase at all\n")
    assert r.returncode != 0 and "LB_KIT_PASSPHRASE" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert keyring_file.read_bytes() == before

    # Another appliance's kit is refused by the appliance; its keyring is unchanged.
    other = tmp_path / "other"
    init_home(other, control_port=free_port(), data_port=free_port(), listen="127.0.0.1")
    other_kit = tmp_path / "other-kit.txt"
    assert lifeboat(os.environ.copy(), "appliance", "export-kit", "--home", str(other), "--out", str(other_kit),
                    "--passphrase-stdin", stdin=PASS + "\n").returncode == 0
    before = keyring_file.read_bytes()
    r = lifeboat(operator, "appliance", "import-kit", "--home", str(root), "--kit", str(other_kit),
                 "--passphrase-stdin", stdin=PASS + "\n")
    assert r.returncode != 0 and "LB_KIT_MISMATCH" in r.stderr, r.stderr
    assert keyring_file.read_bytes() == before

    r = lifeboat(operator, "appliance", "import-kit", "--home", str(root), "--kit", str(kit_file),
                 "--passphrase-stdin", "--json", stdin=PASS + "\n")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["stored_in"] == "the running appliance's keyring" and got["unlocked"] is False
    assert secret_in(operator, vault_key_name(aid)) is None
    assert get_secret(vault_key_name(aid)) == key_b64

    app.stop()
    _no_secret_in(root, PASS, key_b64, "not the passphrase at all", base64.b64decode(key_b64).hex())
    from engine.appliance.state import StateDB
    db = StateDB(home.db)
    kinds = [e["kind"] for e in db.events()]
    db.close()
    assert {"recovery-kit-imported", "recovery-kit-import-refused", "config-backup-requested"} <= set(kinds)


def test_restore_for_a_service_starts_locked_and_the_kit_unlocks_it(
        tmp_path: Path, appliances: list[RunningAppliance]) -> None:
    # The lost appliance: a home, one extra keyring entry its state names, a backup and a kit.
    old = tmp_path / "old"
    init_home(old, control_port=free_port(), data_port=free_port(), listen="127.0.0.1", vault=tmp_path / "vault")
    aid = ApplianceHome(old).load_config()["appliance_id"]
    key_b64 = get_secret(vault_key_name(aid))
    assert key_b64
    set_secret(SECRET_NAME, SECRET_VALUE)
    db = sqlite3.connect(old / "state.db")
    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('secret_names', ?)", (json.dumps([SECRET_NAME]),))
    db.commit()
    db.close()
    mine = os.environ.copy()
    kit_file, backup = tmp_path / "kit.txt", tmp_path / "b.lbbk"
    assert lifeboat(mine, "appliance", "export-kit", "--home", str(old), "--out", str(kit_file), "--passphrase-stdin",
                    stdin=PASS + "\n").returncode == 0
    r = lifeboat(mine, "appliance", "backup", "--home", str(old), "--out", str(backup), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["taken_by"] == "this command", r.stderr

    # The new machine: the operator restores; the service (another account, an empty keyring) will run it.
    operator = env_with_keyring(tmp_path / "operator-keyring")
    service = env_with_keyring(tmp_path / "service-keyring")
    new = tmp_path / "new"
    r = lifeboat(operator, "appliance", "restore", "--home", str(new), "--from", str(backup), "--kit", str(kit_file),
                 "--passphrase-stdin", "--service", "--json", stdin=PASS + "\n")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["keyring"] == "pending"
    assert secret_in(operator, vault_key_name(aid)) is None and secret_in(operator, SECRET_NAME) is None
    assert os.stat(new / "backups").st_mode & 0o777 == 0o700

    app = RunningAppliance(new, service)
    appliances.append(app)
    assert app.line().startswith("appliance locked"), "the appliance did not start locked"
    cfg = ApplianceHome(new).load_config()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", cfg["data_port"]), 5):
        pass   # replicates nothing: the data port is closed
    r = lifeboat(operator, "status", "--home", str(new))
    assert r.returncode == 3 and "locked" in r.stdout and "LB_KEYRING" in r.stdout, r.stdout + r.stderr
    r = lifeboat(operator, "status", "--home", str(new), "--json")
    st = json.loads(r.stdout)
    assert st["state"] == "locked" and st["error"]["code"] == "LB_KEYRING"
    r = lifeboat(operator, "appliance", "service-status", "--home", str(new), "--json")
    assert json.loads(r.stdout)["control_api"]["locked"] is True
    r = lifeboat(operator, "appliance", "backup", "--home", str(new))
    assert r.returncode != 0 and "LB_KEYRING" in r.stderr and "import-kit" in r.stderr, r.stderr
    r = lifeboat(operator, "policy", "list", "--home", str(new))
    assert r.returncode != 0 and "LB_KEYRING" in r.stderr and "Traceback" not in r.stderr, r.stderr

    r = lifeboat(operator, "appliance", "import-kit", "--home", str(new), "--kit", str(kit_file), "--passphrase-stdin",
                 stdin="a wrong passphrase, long\n")
    assert r.returncode != 0 and "LB_KIT_PASSPHRASE" in r.stderr, r.stderr
    assert secret_in(service, vault_key_name(aid)) is None
    assert json.loads(lifeboat(operator, "status", "--home", str(new), "--json").stdout)["state"] == "locked"

    r = lifeboat(operator, "appliance", "import-kit", "--home", str(new), "--kit", str(kit_file), "--passphrase-stdin",
                 "--json", stdin=PASS + "\n")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["unlocked"] is True and got["restored_entries"] == [SECRET_NAME]
    assert app.line().startswith("appliance running")
    st = json.loads(lifeboat(operator, "status", "--home", str(new), "--json").stdout)
    assert st.get("state") != "locked" and st["data_port"] == cfg["data_port"]
    # The keys and the backup's keyring entries are in the service's keyring, not the operator's.
    assert secret_in(service, vault_key_name(aid)) == key_b64
    assert secret_in(service, SECRET_NAME) == SECRET_VALUE
    assert secret_in(operator, vault_key_name(aid)) is None
    kit = unseal(read_kit(kit_file), PASS)
    assert secret_in(service, archive.backup_key_name(aid)) == base64.b64encode(kit.backup_key).decode()
    assert archive.pending_restore(ApplianceHome(new)) is None
    r = lifeboat(operator, "appliance", "backup", "--home", str(new), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["taken_by"] == "the running appliance", r.stderr

    app.stop()
    _no_secret_in(new, PASS, key_b64, SECRET_VALUE, "a wrong passphrase, long", base64.b64decode(key_b64).hex(),
                  base64.b64encode(kit.backup_key).decode())
    assert SECRET_VALUE.encode() not in (new / "backups" / json.loads(
        lifeboat(operator, "appliance", "backup", "list", "--home", str(new), "--json").stdout)[0]["name"]).read_bytes()


def test_restore_service_waits_for_the_appliance_and_hands_it_the_kit(
        tmp_path: Path, appliances: list[RunningAppliance]) -> None:
    """``restore --service --wait``: the home is written, the appliance (started meanwhile by its service manager, here
    by the test) answers locked, and restore imports the kit into it. A locked appliance also stops cleanly."""
    import signal
    import time

    old = tmp_path / "old"
    init_home(old, control_port=free_port(), data_port=free_port(), listen="127.0.0.1", vault=tmp_path / "vault")
    aid = ApplianceHome(old).load_config()["appliance_id"]
    mine = os.environ.copy()
    kit_file, backup = tmp_path / "kit.txt", tmp_path / "b.lbbk"
    assert lifeboat(mine, "appliance", "export-kit", "--home", str(old), "--out", str(kit_file), "--passphrase-stdin",
                    stdin=PASS + "\n").returncode == 0
    assert lifeboat(mine, "appliance", "backup", "--home", str(old), "--out", str(backup)).returncode == 0

    # A locked appliance stops on SIGTERM like any other (status 0, pid file removed).
    operator = env_with_keyring(tmp_path / "operator-keyring")
    first = tmp_path / "first"
    r = lifeboat(operator, "appliance", "restore", "--home", str(first), "--from", str(backup), "--kit", str(kit_file),
                 "--passphrase-stdin", "--service", stdin=PASS + "\n")
    assert r.returncode == 0 and "import-kit" in r.stdout, r.stderr
    locked = RunningAppliance(first, env_with_keyring(tmp_path / "service-keyring-1"))
    appliances.append(locked)
    assert locked.line().startswith("appliance locked")
    assert (first / "appliance.pid").exists()
    locked.proc.send_signal(signal.SIGTERM)
    assert locked.proc.wait(60) == 0
    assert not (first / "appliance.pid").exists()

    # restore --service --wait: the appliance comes up while restore waits, and gets the kit.
    service = env_with_keyring(tmp_path / "service-keyring-2")
    new = tmp_path / "new"
    rd, wr = os.pipe()   # the passphrase on standard input, then end of file
    os.write(wr, (PASS + "\n").encode())
    os.close(wr)
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "appliance", "restore", "--home", str(new), "--from",
                             str(backup), "--kit", str(kit_file), "--passphrase-stdin", "--service", "--wait", "90",
                             "--json"], stdin=rd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=operator)
    os.close(rd)
    try:
        end = time.monotonic() + 60
        while not (new / "appliance.json").exists():
            assert time.monotonic() < end and proc.poll() is None, "restore did not write the home"
            time.sleep(0.2)
        app = RunningAppliance(new, service)
        appliances.append(app)
        assert app.line().startswith("appliance locked")
        out, err = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    got = json.loads(out)
    assert got["keyring"] == "the running appliance" and got["unlocked"] is True, got
    assert app.line().startswith("appliance running")
    assert secret_in(service, vault_key_name(aid)) is not None
    assert secret_in(operator, vault_key_name(aid)) is None
    st = json.loads(lifeboat(operator, "status", "--home", str(new), "--json").stdout)
    assert st.get("state") != "locked"
    app.stop()
    _no_secret_in(new, PASS)
