"""What a protected machine says about itself, so the appliance can find its VM (no pyVmomi here: the agent uses it).

The agent sends these optional HELLO fields; the appliance validates them with ``clean_identity`` before storing,
because an agent's word is input like any other.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path
from typing import Any

DMI_UUID = Path("/sys/class/dmi/id/product_uuid")  # readable by root only on most distributions
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9_.-]{1,253}$")


def local_identity() -> dict[str, Any]:
    """This machine's BIOS UUID (when readable), host name and non-loopback IP addresses."""
    bios: str | None = None
    try:
        bios = DMI_UUID.read_text().strip().lower() or None
    except OSError:
        pass
    host = socket.gethostname()
    ips: set[str] = set()
    try:
        for info in socket.getaddrinfo(host, None):
            ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if not ip.is_loopback and not ip.is_link_local:
                ips.add(str(ip))
    except (OSError, ValueError):
        pass
    return {"bios_uuid": bios, "hostname": host, "ips": sorted(ips)}


def clean_identity(hello: dict[str, Any]) -> dict[str, Any] | None:
    """The identity fields of a HELLO, validated; None when the agent sent none (older agents)."""
    bios = hello.get("bios_uuid")
    host = hello.get("hostname")
    ips = hello.get("ips")
    out: dict[str, Any] = {
        "bios_uuid": bios.lower() if isinstance(bios, str) and _UUID.match(bios) else None,
        "hostname": host if isinstance(host, str) and _HOSTNAME.match(host) else None,
        "ips": [],
    }
    if isinstance(ips, list):
        for ip in ips[:64]:
            try:  # strings only: ip_address(5) would happily mean 0.0.0.5
                out["ips"].append(str(ipaddress.ip_address(ip)) if isinstance(ip, str) else None)
            except ValueError:
                continue
        out["ips"] = [ip for ip in out["ips"] if ip]
    if not out["bios_uuid"] and not out["hostname"] and not out["ips"]:
        return None
    return out
