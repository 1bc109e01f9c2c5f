"""vCenter / ESXi registration and the live VM inventory (docs/VSPHERE.md).

Importing this package does not import pyVmomi: the CLI and the agent use parts of it (``cli``, ``identity``) that
must stay cheap to import.
"""
