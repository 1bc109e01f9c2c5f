"""Registration and transport security: wrong passphrase, missing/foreign certificates, revoked machines,
admin-only control calls, secrets on disk. Each is refused with a clear error and changes nothing."""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
from pathlib import Path

import pytest

from engine import pki
from engine.client import AdminClient
from engine.errors import (ApplianceUnreachable, CertificateRefused, LifeboatError, MachineRevoked,
                           UnknownMachine, UnknownPoint, WrongPassphrase)
from engine.home import AgentHome
from engine.wire import Frame, parse_json, read_frame, write_json
from tests.engine.harness import Site


async def _data_connect(site: Site, ctx: ssl.SSLContext) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert site.app and site.app.data_address
    return await asyncio.open_connection("127.0.0.1", site.app.data_address[1], ssl=ctx)


async def test_registration_and_mutual_tls(tmp_path: Path) -> None:
    site = Site(tmp_path)
    app = await site.start_appliance()
    try:
        # Files holding keys are 0600.
        for f in ("pki/ca.key", "pki/server.key", "pki/admin.key", "passphrase.txt", "appliance.json"):
            assert stat.S_IMODE(os.stat(site.ahome / f).st_mode) == 0o600, f

        # Wrong passphrase: refused, nothing registered.
        bad = tmp_path / "bad.txt"
        bad.write_text("not-the-passphrase")
        from engine.agent.register import register
        with pytest.raises(WrongPassphrase):
            await asyncio.to_thread(register, tmp_path / "a-bad", f"127.0.0.1:{app.control_address[1]}", bad, "vm1")
        assert app.db.machines() == []
        assert not (tmp_path / "a-bad" / "agent.json").exists()

        # Good passphrase: a client certificate, 0600 key.
        await site.register("vm1")
        h = AgentHome(site.agent_home)
        assert stat.S_IMODE(os.stat(h.key).st_mode) == 0o600
        assert [m["name"] for m in app.db.machines()] == ["vm1"]

        # The passphrase never lands in the database.
        passphrase = (site.ahome / "passphrase.txt").read_text().strip()
        assert passphrase.encode() not in (site.ahome / "state.db").read_bytes()

        # No client certificate: the TLS handshake or the first frame is refused.
        ctx = pki.client_context(h.ca_cert)
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            r, w = await _data_connect(site, ctx)
            write_json(w, Frame.HELLO, {"machine": "vm1", "disks": []})
            await read_frame(r)

        # A certificate from a foreign CA: refused.
        foreign = pki.CA.create("foreign")
        k = pki.new_key()
        c = foreign.issue(k.public_key(), "vm1", server=False)
        (tmp_path / "f.crt").write_bytes(pki.cert_pem(c))
        pki.write_private(tmp_path / "f.key", pki.key_pem(k))
        ctx = pki.client_context(h.ca_cert, tmp_path / "f.crt", tmp_path / "f.key")
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            r, w = await _data_connect(site, ctx)
            write_json(w, Frame.HELLO, {"machine": "vm1", "disks": []})
            await read_frame(r)

        # The agent's own certificate is not an admin certificate.
        import http.client
        def agent_as_admin(method: str = "GET", path: str = "/v1/status") -> int:
            conn = http.client.HTTPSConnection("127.0.0.1", app.control_address[1],
                                               context=pki.client_context(h.ca_cert, h.cert, h.key))
            conn.request(method, path, body=b"{}" if method != "GET" else None)
            return conn.getresponse().status
        assert await asyncio.to_thread(agent_as_admin) == 403
        for method, path in [("GET", "/v1/hosts"), ("POST", "/v1/hosts"), ("GET", "/v1/vms"),
                             ("GET", "/v1/machines/vm1/recovery-settings"),
                             ("PUT", "/v1/machines/vm1/recovery-settings"),
                             ("POST", "/v1/machines/vm1/failover-vm"), ("POST", "/v1/machines/vm1/failover-cancel"),
                             ("GET", "/v1/plans"), ("POST", "/v1/plans"), ("GET", "/v1/plans/p"),
                             ("POST", "/v1/plans/p/machines"), ("POST", "/v1/plans/p/actions"),
                             ("POST", "/v1/plans/p/run"), ("POST", "/v1/plans/p/cancel"),
                             ("POST", "/v1/plans/p/cleanup"), ("POST", "/v1/plans/p/commit"),
                             ("POST", "/v1/plans/p/skip"), ("GET", "/v1/reports")]:
            assert await asyncio.to_thread(agent_as_admin, method, path) == 403, path

        # A failed-over machine's agent is refused at the data port (replication stopped), with its code.
        assert app.state is not None
        before = app.state.row("vm1")["state"]
        app.state.update("vm1", state="failed-over")
        r, w = await _data_connect(site, pki.client_context(h.ca_cert, h.cert, h.key))
        write_json(w, Frame.HELLO, {"machine": "vm1", "disks": [{"index": 0, "name": "d", "size": 4096}]})
        kind, body = await read_frame(r)
        assert kind == Frame.ERROR and parse_json(body)["code"] == "LB_FAILED_OVER"
        w.close()
        app.state.update("vm1", state=before)

        # Revoked: the data port refuses it with a clear code, state unchanged otherwise.
        app.revoke("vm1")
        ctx = pki.client_context(h.ca_cert, h.cert, h.key)
        r, w = await _data_connect(site, ctx)
        write_json(w, Frame.HELLO, {"machine": "vm1", "disks": [{"index": 0, "name": "d", "size": 4096}]})
        kind, body = await read_frame(r)
        assert kind == Frame.ERROR and parse_json(body)["code"] == MachineRevoked.code
        w.close()
        assert app.machine_row("vm1")["disks"] == []

        # Unknown machine and point through the control API.
        client = AdminClient(site.ahome)
        with pytest.raises(UnknownMachine):
            await asyncio.to_thread(client.call, "POST", "/v1/machines/nope/protect", {})
        with pytest.raises(LifeboatError) as ei:
            await asyncio.to_thread(client.call, "POST", "/v1/machines/nope/failover",
                                    {"point": "latest", "export_dir": str(tmp_path / "x")})
        assert ei.value.code == UnknownMachine.code
    finally:
        await site.stop()
    with pytest.raises(ApplianceUnreachable):
        AdminClient(site.ahome).call("GET", "/v1/status")
    _ = (CertificateRefused, UnknownPoint)
