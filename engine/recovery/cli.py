"""``lifeboat host add|list``, ``lifeboat machine settings``, ``lifeboat failover --host``, ``lifeboat failover-cancel``
and ``lifeboat vm list``: talk to the running appliance's control API (admin certificate)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from ..errors import InvalidInput

#: A failover waits for the guest's boot: the request may take as long as the boot timeout.
FAILOVER_TIMEOUT = 3600.0


def client_for(a: argparse.Namespace, timeout: float = 120.0) -> Any:
    """The admin client of ``--home`` (the recovery and plan commands share these three helpers)."""
    from ..client import AdminClient
    return AdminClient(Path(a.home), timeout=timeout)


def url_name(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def emit(obj: Any, a: argparse.Namespace, text: str) -> None:
    if a.json:
        json.dump(obj, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(text)


def _pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for it in items or []:
        k, sep, v = it.partition("=")
        if not sep or not k or not v:
            raise InvalidInput(f"{flag} {it!r} is not NIC=VALUE", field=flag.lstrip("-"))
        out[k] = v
    return out


def cmd_host_add(a: argparse.Namespace) -> int:
    h = client_for(a).call("POST", "/v1/hosts", {"name": a.name, "kind": a.kind, "uri": a.uri, "accel": a.accel,
                                              "networks": a.network or []})
    nets = ", ".join(f"{k}={v}" for k, v in h["networks"].items()) or "no networks"
    emit(h, a, f"recovery host {h['name']} ({h['kind']}, {h['uri']}, {h['accel']}) added: {nets}")
    return 0


def cmd_host_list(a: argparse.Namespace) -> int:
    hosts = client_for(a).call("GET", "/v1/hosts")
    lines = [f"{h['name']:<20} {h['kind']:<6} {h['uri']:<32} {h['accel']:<4} "
             + (", ".join(f"{k}={v}" for k, v in h["networks"].items()) or "-") for h in hosts]
    emit(hosts, a, "\n".join(lines) if lines else "no recovery hosts")
    return 0


def cmd_machine_settings(a: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if a.cpus is not None:
        body["cpus"] = a.cpus
    if a.memory_mib is not None:
        body["memory_mib"] = a.memory_mib
    if a.nic:
        body["nics"] = _pairs(a.nic, "--nic")
    if a.ip:
        body["ips"] = _pairs(a.ip, "--ip")
    if a.gateway is not None:
        body["gateway"] = a.gateway
    if a.dns:
        body["dns"] = a.dns
    if a.boot_pattern is not None:
        body["boot_pattern"] = a.boot_pattern
    if a.boot_timeout is not None:
        body["boot_timeout"] = a.boot_timeout
    if a.firmware is not None:
        body["firmware"] = a.firmware
    c = client_for(a)
    path = f"/v1/machines/{url_name(a.machine)}/recovery-settings"
    s = c.call("PUT", path, body) if body else c.call("GET", path)
    nics = ", ".join(f"{n}→{net}" + (f" {s['ips'][n]}" if n in s["ips"] else " dhcp") for n, net in s["nics"].items())
    emit(s, a, f"{s['machine']}: {s['cpus']} CPU, {s['memory_mib']} MiB, {s['firmware']}; NICs: {nics or 'none'}; "
               f"gateway {s['gateway'] or '-'}; DNS {', '.join(s['dns']) or '-'}; boot /{s['boot_pattern']}/ within "
               f"{s['boot_timeout']:g} s")
    return 0


def cmd_failover_host(a: argparse.Namespace) -> int:
    t0 = time.monotonic()
    r = client_for(a, FAILOVER_TIMEOUT).call("POST", f"/v1/machines/{url_name(a.machine)}/failover-vm",
                                          {"host": a.host, "point": a.point, "planned": bool(a.planned)})
    vm = r.get("vm") or {}
    p = r["result"]["point"]
    how = "planned failover (source quiesced, RPO 0)" if a.planned else "failed over"
    emit(r, a, f"{a.machine} {how} to {a.host} at point {p['id']} ({p['kind']}): VM {vm.get('vm')} booted in "
               f"{r['result'].get('boot_seconds', 0):.1f} s ({time.monotonic() - t0:.1f} s in all); serial console: "
               f"{vm.get('serial_log')}")
    return 0


def cmd_failover_cancel(a: argparse.Namespace) -> int:
    r = client_for(a, 300.0).call("POST", f"/v1/machines/{url_name(a.machine)}/failover-cancel", {})
    emit(r, a, f"failover of {r['machine']} cancelled: VM removed from {r['host']}, overlay discarded; the machine is "
               "protected again")
    return 0


def cmd_failover_change_point(a: argparse.Namespace) -> int:
    r = client_for(a, FAILOVER_TIMEOUT).call("POST", f"/v1/machines/{url_name(a.machine)}/failover-change-point",
                                          {"point": a.point})
    p = r["result"]["point"]
    emit(r, a, f"{a.machine} restarted from point {p['id']} ({p['kind']}; was {r['result']['previous']}): overlay "
               f"discarded, booted in {r['result'].get('boot_seconds', 0):.1f} s")
    return 0


def cmd_failover_commit(a: argparse.Namespace) -> int:
    body: dict[str, Any] = {} if a.stop_timeout is None else {"stop_timeout": a.stop_timeout}
    r = client_for(a, FAILOVER_TIMEOUT).call("POST", f"/v1/machines/{url_name(a.machine)}/failover-commit", body)
    imgs = ", ".join((r["result"].get("images") or {}).values())
    emit(r, a, f"failover of {a.machine} committed at point {r['result']['point']['id']}: the VM runs from {imgs}; "
               "no other point can be chosen")
    return 0


def cmd_vm_list(a: argparse.Namespace) -> int:
    vms = client_for(a).call("GET", "/v1/vms")
    lines = [f"{v['machine']:<20} {v['host']:<16} {v['state']:<12} {v['vm_state']:<10} point {v['point']:<16} "
             f"serial {v['serial_log']}" for v in vms]
    emit(vms, a, "\n".join(lines) if lines else "no recovered VMs")
    return 0


def add_subcommands(sub: Any, machine_sub: Any) -> None:
    def home(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--home", required=True, help="the appliance's home folder")
        sp.add_argument("--json", action="store_true", help="one JSON document on stdout")

    hs = sub.add_parser("host", help="recovery hosts: add, list").add_subparsers(dest="sub", required=True)
    s = hs.add_parser("add", help="register a recovery host (a libvirt QEMU hypervisor)"); home(s)
    s.add_argument("name"); s.add_argument("--kind", default="qemu", choices=["qemu"])
    s.add_argument("--uri", default="qemu:///system", help="libvirt URI (qemu:///system, qemu+ssh://…, qemu+tls://…)")
    s.add_argument("--accel", default="tcg", choices=["tcg", "kvm"],
                   help="tcg (default: works everywhere) or kvm (where /dev/kvm really works)")
    s.add_argument("--network", action="append", metavar="NAME=isolated|user|bridge:BR")
    s.set_defaults(fn=cmd_host_add)
    s = hs.add_parser("list", help="registered recovery hosts"); home(s); s.set_defaults(fn=cmd_host_list)

    s = machine_sub.add_parser("settings", help="a machine's recovery settings (CPUs, memory, NICs, re-IP, boot)")
    home(s); s.add_argument("machine")
    s.add_argument("--cpus", type=int); s.add_argument("--memory-mib", type=int)
    s.add_argument("--nic", action="append", metavar="NIC=NETWORK")
    s.add_argument("--ip", action="append", metavar="NIC=ADDR/PREFIX")
    s.add_argument("--gateway"); s.add_argument("--dns", action="append", metavar="ADDR")
    s.add_argument("--boot-pattern", metavar="REGEX", help="the serial-console line that says the guest is up")
    s.add_argument("--boot-timeout", type=float, metavar="SECONDS")
    s.add_argument("--firmware", choices=["bios", "uefi"], help="bios (default) or uefi (OVMF on the recovery host)")
    s.set_defaults(fn=cmd_machine_settings)

    s = sub.add_parser("failover-cancel", help="stop and remove a failed-over machine's VM; protect it again")
    home(s); s.add_argument("machine"); s.set_defaults(fn=cmd_failover_cancel)
    s = sub.add_parser("failover-change-point", help="before commit: restart the recovered VM from another point "
                                                     "(its overlay is discarded)")
    home(s); s.add_argument("machine"); s.add_argument("--point", required=True,
                                                       help="latest | latest-app | ID | tag:TAG | TIME")
    s.set_defaults(fn=cmd_failover_change_point)
    s = sub.add_parser("failover-commit", help="keep the recovered machine: copy its disks into standalone images on "
                                               "the recovery host and restart it on them")
    home(s); s.add_argument("machine")
    s.add_argument("--stop-timeout", metavar="DURATION",
                   help="how long the guest may take to shut down before it is powered off (default 60s)")
    s.set_defaults(fn=cmd_failover_commit)
    vs = sub.add_parser("vm", help="recovered VMs").add_subparsers(dest="sub", required=True)
    s = vs.add_parser("list", help="recovered VMs on the recovery hosts"); home(s); s.set_defaults(fn=cmd_vm_list)
