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
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, KeyringError, NotFound
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
    from ..errors import ApplianceUnreachable
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


def cmd_import_kit(a: argparse.Namespace) -> int:
    home = ApplianceHome(Path(a.home))
    kit = unseal(read_kit(Path(a.kit)), _passphrase(a))
    r = bk.install_kit(home, kit)
    _out(r, f"the vault and backup keys of appliance {r['appliance_id']} are in this machine's keyring", a.json)
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


def cmd_backup(a: argparse.Namespace) -> int:
    home = ApplianceHome(Path(a.home))
    if a.action == "list":
        rows = [b.to_dict() for b in bk.list_backups(home)]
        _out(rows, "\n".join(f"{r['name']}  {_when(r['created_at'])}  {r['kind']:9}  {r['size']:>9} B"
                             for r in rows) or "no backups yet", a.json)
        return 0
    cfg = home.load_config()
    name, data = bk.take(home, kind="manual")
    path = bk.save(home, name, data)
    in_vault = asyncio.run(_to_vault(cfg, name, data))
    if a.out:
        out = Path(a.out)
        if out.exists():
            raise InvalidInput(f"{out} exists; a backup never overwrites a file", field="out")
        from ..fileio import atomic_write
        atomic_write(out, data, 0o600)
    r = {"name": name, "path": str(path), "size": len(data), "vault": in_vault, "out": a.out}
    _out(r, f"backup {name} ({len(data)} B) in {path} and in the vault"
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
    kit = unseal(read_kit(Path(a.kit)), _passphrase(a))
    if a.from_file:
        try:
            data = Path(a.from_file).read_bytes()
        except OSError as exc:
            raise InvalidInput(f"cannot read the backup {a.from_file}: {exc.strerror}", field="from") from None
        vault = None
    else:
        vault = Path(a.from_vault)
        data = asyncio.run(_from_vault(vault, kit))
    r = bk.restore(Path(a.home), data, kit, vault_path=vault)
    _out(r, f"appliance {r['appliance_id']} restored into {r['home']} from backup {r['backup']} "
            f"({_when(r['backup_created_at'])})\n"
            f"  start it: lifeboat appliance run --home {r['home']}\n"
            "  each protected machine is resynced (checksums, only differences) when its agent reconnects", a.json)
    return 0


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
    s = ap.add_parser("import-kit", help="put a recovery kit's keys into this machine's keyring")
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
    s.set_defaults(fn=cmd_restore)
