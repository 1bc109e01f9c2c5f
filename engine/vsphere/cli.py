"""``lifeboat vcenter add|list|update|remove`` and ``lifeboat inventory``: talk to the running appliance.

Passwords are read from stdin (``--password-stdin``) or a no-echo prompt, never from the command line, so they do
not show in ``ps``, shell history or process listings. The CA file is read here and sent as PEM, so the appliance
keeps it in its DB and does not depend on the file staying where it was.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import InvalidInput


def _client(a: argparse.Namespace) -> Any:
    from ..client import AdminClient
    return AdminClient(Path(a.home), timeout=120.0)


def _out(obj: Any, a: argparse.Namespace, text: str) -> None:
    if a.json:
        json.dump(obj, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(text)


def read_password(a: argparse.Namespace, *, required: bool = True) -> str | None:
    if a.password_stdin:
        line = sys.stdin.readline()
        pw = line[:-1] if line.endswith("\n") else line
        pw = pw[:-1] if pw.endswith("\r") else pw
    elif sys.stdin.isatty():
        pw = getpass.getpass(f"password for {a.user or 'the vCenter user'}: ") if required else None
    elif required:
        raise InvalidInput("no password given", advice="Pipe it in with --password-stdin (never on the command line).")
    else:
        return None
    if required and not pw:
        raise InvalidInput("the password is empty")
    return pw


def _trust(a: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if a.ca:
        try:
            body["ca_pem"] = Path(a.ca).read_text()
        except OSError as exc:
            raise InvalidInput(f"cannot read the CA file {a.ca}: {exc.strerror}") from None
    if a.accept_thumbprint:
        body["thumbprint"] = a.accept_thumbprint
    if a.insecure:
        body["insecure"] = True
        print("WARNING: --insecure turns off TLS certificate verification for this vCenter. Anyone on the network "
              "path can impersonate it and capture its credentials. This is recorded in the appliance's event log.",
              file=sys.stderr)
    return body


def _describe(e: dict[str, Any]) -> str:
    trust = "INSECURE (certificate not verified)" if e["insecure"] else e["trust"]
    state = e["status"] + (f" ({e['error']['code']}: {e['error']['message']})" if e.get("error") else "")
    return (f"{e['host']}:{e['port']:<6} {e['kind'] or '?':<8} user {e['user']:<28} trust {trust:<10} "
            f"{state:<12} {e['vms']} VMs\n    SHA-256 {e['thumbprint']}")


def cmd_add(a: argparse.Namespace) -> int:
    body = {"host": a.host, "port": a.port, "user": a.user, **_trust(a)}
    body["password"] = read_password(a)
    e = _client(a).call("POST", "/v1/vcenters", body)
    _out(e, a, f"registered {e['kind']} {e['host']}:{e['port']} ({e['product']})\n  certificate SHA-256 "
               f"{e['thumbprint']}, trust: {'INSECURE' if e['insecure'] else e['trust']}")
    return 0


def cmd_update(a: argparse.Namespace) -> int:
    body: dict[str, Any] = {"user": a.user, **_trust(a)}
    body["password"] = read_password(a, required=False)
    e = _client(a).call("PUT", f"/v1/vcenters/{a.vcenter}/credentials", body)
    _out(e, a, f"updated {e['host']}: user {e['user']}, trust {'INSECURE' if e['insecure'] else e['trust']}")
    return 0


def cmd_list(a: argparse.Namespace) -> int:
    rows = _client(a).call("GET", "/v1/vcenters")
    _out(rows, a, "\n".join(_describe(e) for e in rows) if rows else "no vCenter or ESXi host registered")
    return 0


def cmd_remove(a: argparse.Namespace) -> int:
    r = _client(a).call("DELETE", f"/v1/vcenters/{a.vcenter}")
    _out(r, a, f"removed {a.vcenter} (its password was deleted from the OS keyring)")
    return 0


def cmd_inventory(a: argparse.Namespace) -> int:
    inv = _client(a).call("GET", "/v1/inventory")
    if a.json:
        _out(inv, a, "")
        return 0
    if not inv["vms"]:
        print("no VMs (register a vCenter with `lifeboat vcenter add`)")
    for v in inv["vms"]:
        prot = f"{v['protected_machine']} ({v['protection_state']})" if v["protected_machine"] else "-"
        print(f"{v['name'] or '?':<32} {v['power_state'] or '?':<11} {v['cpus'] or 0:>3} CPU {v['memory_mb'] or 0:>7} MB "
              f"{len(v['disks'])} disk(s)  {v['host'] or '?':<20} {v['datacenter'] or '?':<12} {prot}")
    return 0


def add_subcommands(sub: Any) -> None:
    """Add ``vcenter`` and ``inventory`` to the ``lifeboat`` argparse subparsers."""

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--home", required=True, help="the appliance's home folder")
        sp.add_argument("--json", action="store_true", help="one JSON document on stdout")

    def trust(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--password-stdin", action="store_true", help="read the password from stdin (first line)")
        g = sp.add_mutually_exclusive_group()
        g.add_argument("--ca", metavar="FILE", help="PEM CA certificate that signed the vCenter certificate")
        g.add_argument("--accept-thumbprint", metavar="SHA256", help="pin this SHA-256 certificate thumbprint")
        g.add_argument("--insecure", action="store_true", help="do NOT verify the certificate (warned and recorded)")

    vc = sub.add_parser("vcenter", help="vCenter / ESXi registration").add_subparsers(dest="sub", required=True)
    s = vc.add_parser("add", help="register a vCenter or standalone ESXi host")
    common(s)
    s.add_argument("--host", required=True)
    s.add_argument("--port", type=int, default=443)
    s.add_argument("--user", required=True)
    trust(s)
    s.set_defaults(fn=cmd_add)
    s = vc.add_parser("update", help="change the user, password or certificate trust of a registered endpoint")
    common(s)
    s.add_argument("vcenter", metavar="HOST")
    s.add_argument("--user")
    trust(s)
    s.set_defaults(fn=cmd_update)
    s = vc.add_parser("list", help="registered endpoints, their trust and connection state")
    common(s)
    s.set_defaults(fn=cmd_list)
    s = vc.add_parser("remove", help="forget an endpoint and delete its password from the keyring")
    common(s)
    s.add_argument("vcenter", metavar="HOST")
    s.set_defaults(fn=cmd_remove)
    s = sub.add_parser("inventory", help="the live VM inventory of every registered endpoint")
    common(s)
    s.set_defaults(fn=cmd_inventory)
