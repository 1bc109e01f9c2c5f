"""First-run setup without widgets: validators, and a pending home that commits atomically or leaves nothing."""

from __future__ import annotations

import json
import socket
import ssl
import asyncio
from pathlib import Path

import keyring
import pytest

from console.home_setup import (PendingHome, SetupPlan, fetch_thumbprint, validate_home, validate_ports,
                                validate_vault)
from tests.conftest import free_port


def test_validators(tmp_path: Path) -> None:
    assert validate_home("") and validate_home("relative/path")
    assert validate_home(str(tmp_path / "new" / "home")) is None
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert "not empty" in validate_home(str(tmp_path / "full"))
    assert validate_vault("", str(tmp_path)) is None and validate_vault("rel", "") == "Use an absolute path."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        errs = validate_ports(str(busy), str(busy), "127.0.0.1")
        assert "already in use" in errs["control"]
    assert "between 1 and 65535" in validate_ports("0", "70000", "127.0.0.1")["control"]
    p = free_port()
    assert "differ" in validate_ports(str(p), str(p), "127.0.0.1")["data"]
    assert "listen" in validate_ports(str(p), str(free_port()), "not an ip")


async def test_pending_home_commit_and_discard(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "appliance"
    pending = PendingHome()
    passphrase = await pending.create(target)
    assert len(passphrase) >= 24 and pending.path and pending.path.parent == target.parent
    assert not target.exists()
    cp, dp = free_port(), free_port()
    await pending.commit(SetupPlan(target, target / "vault", cp, dp, "127.0.0.1"))
    cfg = json.loads((target / "appliance.json").read_text())
    assert (cfg["control_port"], cfg["data_port"], cfg["listen"]) == (cp, dp, "127.0.0.1")
    assert cfg["vault"]["path"] == str((target / "vault").resolve())
    assert [p.name for p in target.parent.iterdir()] == ["appliance"]  # no temporary sibling left

    other = tmp_path / "deep" / "er" / "cancelled"
    p2 = PendingHome()
    await p2.create(other)
    appliance_id = json.loads((p2.path / "appliance.json").read_text())["appliance_id"]
    assert keyring.get_password("lifeboat", f"vault-key/{appliance_id}")
    await p2.discard()
    assert not (tmp_path / "deep").exists(), "cancel left folders behind"
    assert keyring.get_password("lifeboat", f"vault-key/{appliance_id}") is None


async def test_fetch_thumbprint_of_a_tls_server(tmp_path: Path) -> None:
    from engine import pki
    ca = pki.CA.create("test CA")
    key = pki.new_key()
    cert = ca.issue(key.public_key(), "vcenter.test", server=True, hosts=["127.0.0.1"])
    (tmp_path / "c.pem").write_bytes(pki.cert_pem(cert))
    pki.write_private(tmp_path / "k.pem", pki.key_pem(key))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        thumb = await fetch_thumbprint("127.0.0.1", port)
    finally:
        server.close()
        await server.wait_closed()
    import hashlib
    want = hashlib.sha256(pki.cert_der(cert)).hexdigest().upper()
    assert thumb.replace(":", "") == want
    with pytest.raises(OSError):
        await fetch_thumbprint("127.0.0.1", free_port(), timeout=2)
