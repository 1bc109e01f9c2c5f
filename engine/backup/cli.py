"""``lifeboat appliance export-kit | import-kit | backup [list] | restore``: the appliance's own recovery.

Passphrases come on standard input only (never on the command line, where other users see them in the process list).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, NotFound
from ..home import ApplianceHome
from . import archive as bk
from . import via_appliance as va
from .kit import MIN_PASSPHRASE, read_kit, unseal, write_kit


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


def cmd_export_kit(a: argparse.Namespace) -> int:
    home = ApplianceHome(Path(a.home))
    passphrase = _passphrase(a)
    out = Path(a.out)
    if out.exists():   # checked before asking anyone for a kit (write_kit checks again)
        raise InvalidInput(f"{out} exists; a recovery kit never overwrites a file", field="out")
    aid, blob, via = va.export_kit(home, passphrase)
    write_kit(out, blob, aid)
    _out({"kit": str(out), "appliance_id": aid, "sealed_by": via},
         f"recovery kit written to {out} (0600; printable: print it too)\n"
         "  keep it and its passphrase apart, off this machine: without them a lost keyring means lost points",
         a.json)
    return 0


def cmd_import_kit(a: argparse.Namespace) -> int:
    home = ApplianceHome(Path(a.home))
    home.load_config()
    blob = read_kit(Path(a.kit))
    r = va.import_kit(home, blob, _passphrase(a))
    via = r["stored_in"]
    _out(r, f"the vault and backup keys of appliance {r['appliance_id']} are in {via}"
         + ("; the appliance was locked and has started its roles" if r.get("unlocked") else ""), a.json)
    return 0


def cmd_backup(a: argparse.Namespace) -> int:
    home = ApplianceHome(Path(a.home))
    if a.action == "list":
        rows = [b.to_dict() for b in bk.list_backups(home)]
        _out(rows, "\n".join(f"{r['name']}  {_when(r['created_at'])}  {r['kind']:9}  {r['size']:>9} B"
                             for r in rows) or "no backups yet", a.json)
        return 0
    home.load_config()
    out = Path(a.out) if a.out else None
    if out is not None and (out.exists() or out.is_symlink()):   # before any backup is taken
        raise InvalidInput(f"{out} exists; a backup never overwrites a file", field="out")
    r = va.backup_now(home)   # the running appliance's keys (a service's keyring is not ours); else ours
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
    service = a.service or va.service_elsewhere(Path(a.home))
    r = bk.restore(Path(a.home), data, kit, vault_path=vault, keyring=not service)
    done = (f"appliance {r['appliance_id']} restored into {r['home']} from backup {r['backup']} "
            f"({_when(r['backup_created_at'])})\n")
    if service:
        r.update(va.hand_kit_to_service(ApplianceHome(Path(a.home)), blob, passphrase, a.wait))
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
