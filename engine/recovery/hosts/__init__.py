"""Recovery hosts: where recovered machines boot. ``base.py`` is the interface (a VM spec in, a VM out, boot
detection); ``libvirt.py`` drives libvirt through ``virsh``; ``store.py`` keeps registered hosts in state.db."""

from .base import (BootWatch, DiskSpec, NetworkSpec, NicSpec, RecoveryHost, VMSpec, VMState, parse_network,
                   wait_for_boot)

__all__ = ["BootWatch", "DiskSpec", "NetworkSpec", "NicSpec", "RecoveryHost", "VMSpec", "VMState", "parse_network",
           "wait_for_boot"]
