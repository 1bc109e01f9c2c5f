"""Fixtures of the recovery tests: the local recovery host (libvirtd started by scripts/recovery-host.sh, as
`.ci/run` needs) and the boot image (built once into .cache/bootimg). Each skips with the reason printed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.engine.recovery import boot_image
from tests.vsphere_sim import vcsim, vcsim_binary  # noqa: F401  (fixtures: a planned failover powers a VM off)

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def recovery_host() -> str:
    """The libvirt URI of a running local recovery host."""
    missing = [t for t in ("virsh", "libvirtd", "virtlogd", "qemu-system-x86_64", "genisoimage") if not shutil.which(t)]
    if missing:
        pytest.skip(f"recovery host tools missing: {', '.join(missing)} (run scripts/setup.sh)")
    p = subprocess.run([str(ROOT / "scripts" / "recovery-host.sh"), "start"], capture_output=True, text=True,
                       timeout=120)
    if p.returncode != 0:
        pytest.skip(f"the recovery host cannot start here: {p.stderr.strip() or p.stdout.strip()}")
    return "qemu:///system"


@pytest.fixture(scope="session")
def boot_disk() -> Path:
    """The cached bootable disk image (copy it before use)."""
    missing = boot_image.missing_tools()
    if missing:
        pytest.skip(f"cannot build the boot image: install {', '.join(missing)} (scripts/setup.sh)")
    return boot_image.build(ROOT / ".cache" / "bootimg")


@pytest.fixture(scope="session")
def boot_disk_ga() -> Path:
    """The boot image's variant whose guest runs Debian's qemu-ga (copy it before use)."""
    missing = boot_image.missing_tools() + boot_image.missing_ga_tools()
    if missing:
        pytest.skip(f"cannot build the guest-agent boot image: install {', '.join(missing)} (scripts/setup.sh)")
    return boot_image.build(ROOT / ".cache" / "bootimg", guest_agent=True)
