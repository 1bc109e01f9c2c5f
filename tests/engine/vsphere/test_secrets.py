"""The vCenter password lives in the OS keyring and nowhere else: not in the state DB (or its WAL), not in any
file of the appliance home, not in logs (DEBUG, including aiohttp's and pyVmomi's), not in events."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from pathlib import Path

import pytest

from engine.client import AdminClient
from engine.errors import LifeboatError
from engine.secrets import get_secret
from engine.vsphere.events import InventorySynced
from engine.vsphere.store import secret_name
from tests.engine.vsphere.helpers import Recorder, thumbprint_of_sim


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


async def test_password_only_in_keyring(tmp_path, vcsim) -> None:  # type: ignore[no-untyped-def]
    from tests.engine.harness import Site
    password = "Lb-" + secrets.token_hex(12)
    sim = await asyncio.to_thread(vcsim, password=password)
    log_file = tmp_path / "appliance.log"
    handler = logging.FileHandler(log_file)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    site = Site(tmp_path)
    try:
        app = await site.start_appliance()
        rec = Recorder(app)
        client = AdminClient(site.ahome)
        tp = await thumbprint_of_sim(sim)
        body = {"host": sim.host, "port": sim.port, "user": sim.user, "thumbprint": tp}
        # Through the real control API, as the CLI does: the password crosses HTTPS once, in the request body.
        with pytest.raises(LifeboatError) as ei:
            await asyncio.to_thread(client.call, "POST", "/v1/vcenters", {**body, "password": password + "-wrong"})
        assert ei.value.code == "LB_LOGIN_FAILED"
        entry = await asyncio.to_thread(client.call, "POST", "/v1/vcenters", {**body, "password": password})
        assert "password" not in json.dumps(entry)
        await rec.wait(lambda e: isinstance(e, InventorySynced), what="sync")
        await asyncio.to_thread(client.call, "PUT", f"/v1/vcenters/{sim.host}/credentials", {"password": password})
        await rec.wait(lambda e: len([x for x in rec.events if isinstance(x, InventorySynced)]) >= 2, what="resync")
        assert get_secret(secret_name(sim.host)) == password
        inv = await asyncio.to_thread(client.call, "GET", "/v1/inventory")
        assert password not in json.dumps(inv)
        assert all(password not in json.dumps(e.to_dict()) for e in rec.events)
    finally:
        await site.stop()  # DB closed: WAL checkpointed or left on disk, both are searched
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
    needle = password.encode()
    assert log_file.stat().st_size > 0 and needle not in log_file.read_bytes()
    assert b"vcenter" in log_file.read_bytes().lower()  # the log did record the work, just not the secret
    assert files_containing(site.ahome, needle) == []
    db_bytes = b"".join(p.read_bytes() for p in site.ahome.glob("state.db*"))
    assert b"vsphere_endpoints" in db_bytes and needle not in db_bytes
