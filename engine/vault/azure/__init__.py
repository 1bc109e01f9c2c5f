"""The Azure Blob vault backend (docs/ARCHITECTURE.md §10, docs/FORMATS.md §5.6): ``vault.py`` (the backend),
``rest.py`` (the Blob REST client over ``engine/net.py``), ``logs.py`` (cache logs), ``pages.py`` (page writes),
``vhd.py`` (VHD-ready page blobs for failover commits)."""
