"""The NoCloud config drive of a recovered VM: an ISO9660 volume labelled ``cidata`` holding ``meta-data``,
``user-data`` and ``network-config`` (v2), the format cloud-init reads to re-address the guest. Built per failover
with ``genisoimage`` (Debian's; the same tool cloud-init's docs use)."""

from __future__ import annotations

import shutil
from pathlib import Path

from .. import platform
from ..errors import StorageError
from .settings import RecoverySettings, network_config


async def build_config_drive(folder: Path, machine: str, instance: str, settings: RecoverySettings) -> Path:
    """Write the three files under ``folder/cidata`` and the ISO ``folder/cidata.iso``; the ISO's path."""
    src = folder / "cidata"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True, mode=0o700)
    (src / "meta-data").write_text(f"instance-id: {instance}\nlocal-hostname: {machine}\n")
    (src / "user-data").write_text("#cloud-config\n")
    (src / "network-config").write_text(network_config(machine, settings))
    iso = folder / "cidata.iso"
    try:
        rc, _, err = await platform.run_tool(
            ["genisoimage", "-quiet", "-output", str(iso), "-volid", "cidata", "-joliet", "-rock",
             str(src / "meta-data"), str(src / "user-data"), str(src / "network-config")], timeout=60)
    except FileNotFoundError:
        raise StorageError("genisoimage is not installed on the appliance",
                           advice="Install genisoimage (scripts/setup.sh does).") from None
    if rc != 0:
        raise StorageError(f"cannot build the config drive of {machine}: {err.decode(errors='replace').strip()}",
                           advice="Check the free space of the appliance home.")
    return iso
