"""``lifeboat appliance export-kit | import-kit | backup [list] | restore``: the appliance's own recovery.

Passphrases come on standard input only (never on the command line, where other users see them in the process list).
"""

from __future__ import annotations

import argparse
import base64
import asyncio
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import (ApplianceNotRunning, ApplianceUnreachable, InvalidInput, KeyringError, LifeboatError, NotFound,
                      NotReady)
from ..home import ApplianceHome
from . import archive as bk
from .kit import MIN_PASSPHRASE, read_kit, seal, unseal, write_kit


def _out(obj: Any, text: str, as_json: bool) -> None:
    if as_json:
        json.dump(obj, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(text)


def _passphrase(a: argparse.Namespace) -> str:
    if not a.passphrase_stdin:
        raise InvalidInput("the kit's passphrase is read from standard input only", field="passphrase",
                           advice="Pass --passphrase-stdin and pipe or type the passphrase (one line).")
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _kit_from_appliance(home: ApplianceHome, passphrase: str, why: KeyringError) -> tuple[str, bytes]:
    """The kit sealed by the running appliance of ``home`` (its keyring is the service account's: on Windows
    LocalSystem's, not the operator's). Without a running appliance, the keyring error stands."""
    from ..client import AdminClient
    try:
        r = AdminClient(home.root, timeout=120).call("POST", "/v1/recovery-kit", {"passphrase": passphrase})
    except ApplianceUnreachable:
        raise KeyringError(why.message, advice="Start the appliance of this home (its service has the key in its "
                           "own keyring) and run this again, or run this as the account the appliance runs as.") \
            from None
    return str(r["appliance_id"]), base64.b64decode(r["kit"])


def cmd_export_kit(a: argparse.Namespace) -> int:
    home = ApplianceHome(Path(a.home))
    passphrase = _passphrase(a)
    out = Path(a.out)
    if out.exists():   # checked before asking anyone for a kit (write_kit checks again)
        raise InvalidInput(f"{out} exists; a recovery kit never overwrites a file", field="out")
    try:
        kit = bk.kit_from_home(home)
        aid, blob = kit.appliance_id, seal(kit, passphrase)
        via = "this account's keyring"
    except KeyringError as exc:   # the key is in the keyring of the account that runs the appliance
        aid, blob = _kit_from_appliance(home, passphrase, exc)
        via = "the running appliance"
    write_kit(out, blob, aid)
    _out({"kit": str(out), "appliance_id": aid, "sealed_by": via},
         f"recovery kit written to {out} (0600; printable: print it too)\n"
         "  keep it and its passphrase apart, off this machine: without them a lost keyring means lost points",
         a.json)
    return 0


def _service_elsewhere(root: Path) -> bool:
    """True when the appliance of ``root`` runs as a service under another account than this one, so this
    account's keyring is not the appliance's: a Windows service (LocalSystem). A systemd unit runs with the keyring
    environment of the operator who installed it (engine/service/cli.py ``KEYRING_ENV``)."""
    if sys.platform != "win32":
        return False
    from ..service.cli import installed_service
    try:
        return bool(installed_service(ApplianceHome(root))["installed"])
    except LifeboatError:
        return False


def _wait_until_unlocked(home: ApplianceHome, timeout: float = 120.0) -> None:
    """After a kit was imported into a locked appliance: wait until it answers with its roles started."""
    from ..client import AdminClient
    end = time.monotonic() + timeout
    while True:
        try:
            if AdminClient(home.root, timeout=10).call("GET", "/v1/status").get("state") != "locked":
                return
        except ApplianceUnreachable:
            pass    # between the locked control API and the appliance's own
        if time.monotonic() > end:
            raise NotReady(f"the kit is in the appliance's keyring, but the appliance did not start its roles within "
                           f"{timeout:.0f} s", advice=f"See the appliance's log ({home.log}) and "
                           f"`lifeboat appliance service-status --home {home.root}`.")
        time.sleep(0.5)


def _import_remote(home: ApplianceHome, blob: bytes, passphrase: str) -> dict[str, Any]:
    """The kit posted to the running appliance of ``home`` (admin mutual TLS), which unseals it and stores its keys
    in its own keyring; a locked appliance then starts its roles (waited for). ApplianceNotRunning when none runs."""
    from ..client import AdminClient
    r: dict[str, Any] = AdminClient(home.root, timeout=120).call(
        "POST", "/v1/recovery-kit/import", {"kit": base64.b64encode(blob).decode(), "passphrase": passphrase})
    if r.get("unlocked"):
        _wait_until_unlocked(home)
    return r


def cmd_import_kit(a: argparse.Namespace) -> int:
    home = ApplianceHome(Path(a.home))
    home.load_config()
    blob = read_kit(Path(a.kit))
    passphrase = _passphrase(a)
    try:
        r = _import_remote(home, blob, passphrase)
        via = "the running appliance's keyring"
    except ApplianceNotRunning as exc:
        if _service_elsewhere(home.root):
            raise KeyringError(f"{exc.message}; its service runs under another account, whose keyring must receive "
                               "the kit", advice="Start the appliance's service (without its key it starts locked "
                               "and waits for the kit), then run this again.") from None
        r = bk.install_kit(home, unseal(blob, passphrase))
        via = "this account's keyring"
    r["stored_in"] = via
    _out(r, f"the vault and backup keys of appliance {r['appliance_id']} are in {via}"
         + ("; the appliance was locked and has started its roles" if r.get("unlocked") else ""), a.json)
    return 0


async def _to_vault(cfg: dict[str, Any], name: str, data: bytes) -> str | None:
    from ..secrets import load_vault_key
    from ..vault.registry import open_vault
    vault = open_vault(cfg["vault"], load_vault_key(cfg["appliance_id"]))
    try:
        await vault.put_config_backup(name, data)
        for old in (await vault.config_backups())[:-bk.KEEP]:
            await vault.remove_config_backup(old)
        return name
    finally:
        await vault.close()


def _backup_here(home: ApplianceHome, cfg: dict[str, Any]) -> dict[str, Any]:
    """A backup taken by this process, with this account's keyring: only when it holds the appliance's vault key
    (else a backup key made here would seal a backup no kit opens)."""
    from ..secrets import load_vault_key
    try:
        load_vault_key(cfg["appliance_id"])
    except KeyringError as exc:
        raise KeyringError(f"no appliance runs for {home.root}, and this account's keyring does not give its vault "
                           f"key ({exc.message})", advice="Start the appliance of this home (its service holds the key in "
                           "its own keyring) and run this again: the appliance takes the backup.") from None
    name, data = bk.take(home, kind="manual")
    path = bk.save(home, name, data)
    in_vault = asyncio.run(_to_vault(cfg, name, data))
    return {"name": name, "path": str(path), "size": len(data), "vault": in_vault}


def cmd_backup(a: argparse.Namespace) -> int:
    home = ApplianceHome(Path(a.home))
    if a.action == "list":
        rows = [b.to_dict() for b in bk.list_backups(home)]
        _out(rows, "\n".join(f"{r['name']}  {_when(r['created_at'])}  {r['kind']:9}  {r['size']:>9} B"
                             for r in rows) or "no backups yet", a.json)
        return 0
    cfg = home.load_config()
    out = Path(a.out) if a.out else None
    if out is not None and (out.exists() or out.is_symlink()):   # before any backup is taken
        raise InvalidInput(f"{out} exists; a backup never overwrites a file", field="out")
    from ..client import AdminClient
    try:   # the running appliance seals it with the keys in its own keyring (a service's is not ours)
        r = AdminClient(home.root, timeout=600).call("POST", "/v1/config-backup", {})
        r["taken_by"] = "the running appliance"
    except ApplianceNotRunning:
        r = _backup_here(home, cfg)
        r["taken_by"] = "this command"
    if out is not None:
        from ..fileio import atomic_write
        try:
            data = Path(r["path"]).read_bytes()
        except OSError as exc:
            raise InvalidInput(f"the backup {r['name']} was taken, but cannot be read to copy it to {out}: "
                               f"{exc.strerror}", field="out") from None
        if out.exists() or out.is_symlink():
            raise InvalidInput(f"{out} exists; a backup never overwrites a file", field="out")
        atomic_write(out, data, 0o600)
    r["out"] = a.out
    _out(r, f"backup {r['name']} ({r['size']} B) in {r['path']} and in the vault, taken by {r['taken_by']}"
         + (f", and {a.out}" if a.out else ""), a.json)
    return 0


async def _from_vault(folder: Path, kit: bk.Kit) -> bytes:
    from ..vault.local import LocalVault
    vault = LocalVault(folder, kit.vault_key)
    try:
        names = [n for n in await vault.config_backups() if n.startswith(f"lifeboat-{kit.appliance_id[:8]}-")]
        if not names:
            raise NotFound(f"the vault {folder} holds no configuration backup of appliance {kit.appliance_id[:8]}…",
                           advice="Name a backup file with --from, or the vault folder the appliance wrote to.")
        return await vault.get_config_backup(names[-1])
    finally:
        await vault.close()


def cmd_restore(a: argparse.Namespace) -> int:
    if bool(a.from_file) == bool(a.from_vault):
        raise InvalidInput("name exactly one of --from FILE and --from-vault DIR", field="from")
    if a.wait is not None and a.wait < 0:
        raise InvalidInput("--wait is a number of seconds (0 or more)", field="wait")
    blob = read_kit(Path(a.kit))
    passphrase = _passphrase(a)
    kit = unseal(blob, passphrase)
    if a.from_file:
        try:
            data = Path(a.from_file).read_bytes()
        except OSError as exc:
            raise InvalidInput(f"cannot read the backup {a.from_file}: {exc.strerror}", field="from") from None
        vault = None
    else:
        vault = Path(a.from_vault)
        data = asyncio.run(_from_vault(vault, kit))
    service = a.service or _service_elsewhere(Path(a.home))
    r = bk.restore(Path(a.home), data, kit, vault_path=vault, keyring=not service)
    done = (f"appliance {r['appliance_id']} restored into {r['home']} from backup {r['backup']} "
            f"({_when(r['backup_created_at'])})\n")
    if service:
        r.update(_hand_kit_to_service(ApplianceHome(Path(a.home)), blob, passphrase, a.wait))
        if r["keyring"] == "pending":
            done += ("  the keys are in no keyring yet: start the appliance as the account that will run it (its "
                     f"service, or `lifeboat appliance run --home {r['home']}`); it starts locked. Then:\n"
                     f"  lifeboat appliance import-kit --home {r['home']} --kit {a.kit} --passphrase-stdin\n")
        else:
            done += "  the kit is in the keyring of the running appliance, which has started its roles\n"
    else:
        done += f"  start it: lifeboat appliance run --home {r['home']}\n"
    _out(r, done + "  each protected machine is resynced (checksums, only differences) when its agent reconnects",
         a.json)
    return 0


def _hand_kit_to_service(home: ApplianceHome, blob: bytes, passphrase: str, wait: float | None) -> dict[str, Any]:
    """``restore --service``: start the home's service if one is installed, wait (``wait`` seconds; 120 with a
    service, else 0) for the appliance to answer (locked: no key in its keyring), then import the kit into it.
    ``{"keyring": "pending"}`` when nothing answered: the home is complete, the key is for ``import-kit`` later."""
    from ..client import AdminClient
    from ..service.cli import installed_service, start_service
    started = None
    try:
        if installed_service(home)["installed"]:
            started = start_service(home)
    except LifeboatError as exc:
        print(f"lifeboat: the appliance's service did not start: {exc}", file=sys.stderr)
    end = time.monotonic() + (wait if wait is not None else 120.0 if started else 0.0)
    while True:
        try:
            AdminClient(home.root, timeout=10).call("GET", "/v1/status")
            break
        except ApplianceUnreachable:
            if time.monotonic() >= end:
                return {"keyring": "pending", "service": started}
            time.sleep(0.5)
    r = _import_remote(home, blob, passphrase)
    return {"keyring": "the running appliance", "service": started, "unlocked": bool(r.get("unlocked")),
            "restored_entries": r.get("restored_entries", [])}


def add_subcommands(ap: Any) -> None:
    """Adds the kit and backup commands to ``lifeboat appliance``."""
    def home(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--home", required=True, help="the appliance's home folder")
        sp.add_argument("--json", action="store_true", help="one JSON document on stdout")

    s = ap.add_parser("export-kit", help="save the recovery kit (vault key + CA), sealed with a passphrase")
    home(s); s.add_argument("--out", required=True, help="a new file for the kit (printable text)")
    s.add_argument("--passphrase-stdin", action="store_true",
                   help=f"read the kit's passphrase (at least {MIN_PASSPHRASE} characters) from standard input")
    s.set_defaults(fn=cmd_export_kit)
    s = ap.add_parser("import-kit", help="put a recovery kit's keys into the keyring of the appliance (the running "
                                         "appliance's own; else this account's)")
    home(s); s.add_argument("--kit", required=True); s.add_argument("--passphrase-stdin", action="store_true")
    s.set_defaults(fn=cmd_import_kit)
    s = ap.add_parser("backup", help="back up the appliance's configuration (home and vault); `backup list`")
    home(s); s.add_argument("action", nargs="?", choices=["list"], help="list the backups kept in the home")
    s.add_argument("--out", help="also write the backup to this new file")
    s.set_defaults(fn=cmd_backup)
    s = ap.add_parser("restore", help="rebuild an appliance home from a backup and the recovery kit")
    home(s); s.add_argument("--from", dest="from_file", metavar="FILE", help="a backup file")
    s.add_argument("--from-vault", metavar="DIR", help="the newest backup kept in this (local) vault folder")
    s.add_argument("--kit", required=True); s.add_argument("--passphrase-stdin", action="store_true")
    s.add_argument("--service", action="store_true",
                   help="the home will be run by a service under another account (automatic for a Windows service "
                        "installed for this home): write no key here; import the kit into the appliance once it runs "
                        "(locked)")
    s.add_argument("--wait", type=float, metavar="SECONDS",
                   help="with --service: how long to wait for the appliance to answer (default 120 when a service "
                        "is installed and started, else 0)")
    s.set_defaults(fn=cmd_restore)
