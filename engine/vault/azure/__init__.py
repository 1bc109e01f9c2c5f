"""The Azure Blob vault backend (docs/ARCHITECTURE.md §10, docs/FORMATS.md §5.6): ``vault.py`` (the container: its
machines and the configuration backups), ``machine.py`` (one machine: appends, the applier, points, views, retention),
``direct.py`` (initial replication straight into the page blobs, appends overlapped), ``view.py`` (a disk as at one
seq), ``rest.py`` (the Blob REST client over ``engine/net.py``), ``logs.py`` (cache logs), ``pages.py`` (page
writes), ``vhd.py`` (VHD-ready page blobs for failover commits)."""
