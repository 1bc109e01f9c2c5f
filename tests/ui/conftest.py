"""Qt test support (qasync loop for async tests, blocking-call and leaked-widget guards, screenshots): qt_support;
the vCenter simulator (vcsim) for the wizard's vCenter step: vsphere_sim."""

from tests.console.qt_support import *  # noqa: F401,F403  (fixtures and hooks, listed in its __all__)
from tests.vsphere_sim import server_pki, vcsim, vcsim_binary  # noqa: F401  (fixtures)
