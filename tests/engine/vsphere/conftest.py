"""vcsim fixtures (shared with tests/ui, in tests/vsphere_sim.py: the simulator is built once from Debian's govmomi
source and started per test on a free port) and an in-process appliance for the vSphere tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.vsphere_sim import Sim, server_pki, vcsim, vcsim_binary  # noqa: F401  (fixtures)


@pytest.fixture
async def site(tmp_path: Path) -> Any:
    """An in-process appliance (real control API, real state DB) in the test's loop."""
    from tests.engine.harness import Site
    s = Site(tmp_path)
    await s.start_appliance()
    yield s
    await s.stop()
