"""Failover (issue 13): recovery hosts, per-machine recovery settings, config drives and failover jobs.

``hosts/`` is the recovery-host interface and its libvirt implementation; ``settings.py`` the per-machine recovery
settings; ``config_drive.py`` the NoCloud ``cidata`` ISO; ``vault_disks.py`` the point's vault views behind a
copy-on-write overlay served over NBD (shared with drills); ``failover.py`` the failover service and its jobs.
"""
