"""``lifeboat reprotect``, ``lifeboat failback``, ``lifeboat reenable`` and ``lifeboat plan failback`` (issue 14):
talk to the running appliance's control API (admin certificate), like the other recovery commands."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import InvalidInput
from .cli import client_for, emit, url_name

#: Reprotect waits for its seed (a full compare), failback for the final sync: either may take long.
FAILBACK_TIMEOUT = 6 * 3600.0


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def cmd_reprotect(a: argparse.Namespace) -> int:
    if a.to_disk and a.to not in (None, "original"):
        raise InvalidInput("give either --to original or --to-disk NAME=PATH", field="to")
    if a.to_disk and a.to == "original":
        raise InvalidInput("--to original and --to-disk exclude each other", field="to",
                           advice="Reprotect to the original disks (--to original) or to new ones (--to-disk).")
    body: dict[str, Any] = {"to": a.to or "original", "to_disks": a.to_disk or []}
    r = client_for(a, FAILBACK_TIMEOUT).call("POST", f"/v1/machines/{url_name(a.machine)}/reprotect", body)
    fb = r.get("failback") or {}
    where = "the original disks" if not a.to_disk else ", ".join(a.to_disk)
    emit(r, a, f"{a.machine} reprotected to {where}: compared {_mib(fb.get('bytes_compared', 0))}, sent "
               f"{_mib(fb.get('bytes_sent', 0))} (data {_mib(fb.get('data_bytes_sent', 0))}); the recovered VM's "
               "writes now replicate back near-continuously")
    return 0


def cmd_failback(a: argparse.Namespace) -> int:
    body = {} if a.shutdown_timeout is None else {"shutdown_timeout": a.shutdown_timeout}
    r = client_for(a, FAILBACK_TIMEOUT).call("POST", f"/v1/machines/{url_name(a.machine)}/failback", body)
    res = r.get("result") or {}
    vm = res.get("original_vm") or {}
    start = (f"The original VM {vm.get('vm')} was powered on through vCenter {vm.get('vcenter')}; re-enable"
             if res.get("start") == "vcenter" else "Start the original machine, then re-enable")
    emit(r, a, f"{a.machine} failed back: recovered VM shut down ({res.get('shutdown', '?')}), final sync sent "
               f"{_mib(res.get('data_bytes_sent', 0))} in all (RPO 0), target disks flushed. {start} protection: "
               f"`lifeboat reenable --home {a.home} {a.machine}`.")
    return 0


def cmd_reenable(a: argparse.Namespace) -> int:
    remove = bool(a.remove_recovered)
    if not remove and not a.json and not a.keep_recovered and sys.stdin.isatty():
        answer = input(f"Remove the recovered VM of {a.machine}, its overlay and images from the recovery host once "
                       "protection is back? [y/N] ")
        remove = answer.strip().lower() in ("y", "yes")
    r = client_for(a, FAILBACK_TIMEOUT).call("POST", f"/v1/machines/{url_name(a.machine)}/reenable",
                                             {"remove_recovered": remove})
    if "job" not in r:
        emit(r, a, f"removed: {', '.join(r.get('removed') or []) or 'nothing'}")
        return 0
    removed = (r["job"].get("result") or {}).get("removed")
    emit(r, a, f"{a.machine} is {r['state']} again (only blocks that differ from the vault were sent)"
               + (f"; removed {', '.join(removed)}" if removed else "; the recovered VM is kept (remove it with "
                  "--remove-recovered)"))
    return 0


def cmd_plan_failback(a: argparse.Namespace) -> int:
    body = {} if a.shutdown_timeout is None else {"shutdown_timeout": a.shutdown_timeout}
    r = client_for(a, FAILBACK_TIMEOUT).call("POST", f"/v1/plans/{url_name(a.plan)}/failback", body)
    lines = [f"group {m['group']}: {m['machine']} {m['state']}" for m in r["machines"]]
    emit(r, a, "\n".join([f"plan {a.plan} failed back (groups {', '.join(map(str, r['groups']))})", *lines]))
    return 0


def add_subcommands(sub: Any) -> None:
    def home(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--home", required=True, help="the appliance's home folder")
        sp.add_argument("--json", action="store_true", help="one JSON document on stdout")

    s = sub.add_parser("reprotect", help="replicate a failed-over machine's recovered VM back to its original disks "
                                         "(or new ones): only differing blocks are sent")
    home(s); s.add_argument("machine")
    s.add_argument("--to", choices=["original"], help="the original machine's disks, through its agent (default)")
    s.add_argument("--to-disk", action="append", metavar="NAME=PATH",
                   help="a new disk at an alternate location (a path that does not exist yet), per disk")
    s.set_defaults(fn=cmd_reprotect)
    s = sub.add_parser("failback", help="planned failback: shut the recovered VM down, send the rest (RPO 0), "
                                        "flush the original disks")
    home(s); s.add_argument("machine")
    s.add_argument("--shutdown-timeout", metavar="DURATION",
                   help="how long the guest may take to shut down before it is powered off (default 2m)")
    s.set_defaults(fn=cmd_failback)
    s = sub.add_parser("reenable", help="protect a failed-back machine again (only blocks that differ from the "
                                        "vault are sent)")
    home(s); s.add_argument("machine")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--remove-recovered", action="store_true",
                   help="remove the recovered VM, its overlay and images from the recovery host (asked otherwise)")
    g.add_argument("--keep-recovered", action="store_true", help="keep them without asking")
    s.set_defaults(fn=cmd_reenable)


def add_plan_subcommand(ps: Any) -> None:
    s = ps.add_parser("failback", help="fail back every machine of the plan, its groups in reverse order")
    s.add_argument("--home", required=True, help="the appliance's home folder")
    s.add_argument("--json", action="store_true", help="one JSON document on stdout")
    s.add_argument("plan")
    s.add_argument("--shutdown-timeout", metavar="DURATION")
    s.set_defaults(fn=cmd_plan_failback)
