"""Registration against vcsim: good (CA file), wrong password, untrusted certificate refused with its thumbprint and
then accepted by thumbprint, a pin enforced on every connection, unreachable hosts, --insecure recorded, ESXi."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket

import pytest

from engine.errors import AlreadyExists
from engine.events import Alert
from engine.secrets import get_secret
from engine.vsphere.connect import PinnedContext, Target, normalise_thumbprint, ssl_context
from engine.vsphere.errors import CertificateUntrusted, LoginFailed, UnknownVCenter, VCenterUnreachable
from engine.vsphere.events import InventorySynced, VCenterStatus
from engine.vsphere.store import secret_name
from tests.conftest import free_port
from tests.engine.vsphere.helpers import Recorder, thumbprint_of_sim


def _events(app, kind: str) -> list[dict]:  # type: ignore[no-untyped-def]
    rows = app.db.db.execute("SELECT machine, data FROM events WHERE kind=?", (kind,)).fetchall()
    return [json.loads(d) for _, d in rows]


async def test_register_with_ca_file(site, vcsim, server_pki) -> None:  # type: ignore[no-untyped-def]
    sim = await asyncio.to_thread(vcsim, cert=server_pki["cert"], key=server_pki["key"])
    app = site.app
    rec = Recorder(app)
    e = await app.vsphere.register(sim.host, sim.port, sim.user, sim.password, ca_pem=server_pki["ca"].read_text())
    assert e["kind"] == "vcenter" and e["trust"] == "ca" and not e["insecure"]
    assert e["thumbprint"] == await thumbprint_of_sim(sim)
    await rec.wait(lambda ev: isinstance(ev, InventorySynced), what="first full read")
    [listed] = app.vsphere.list()
    assert listed["host"] == sim.host and listed["status"] == "connected" and listed["synced"]
    assert get_secret(secret_name(sim.host)) == sim.password
    assert _events(app, "vcenter-registered")[0]["trust"] == "ca"
    with pytest.raises(AlreadyExists):
        await app.vsphere.register(sim.host, sim.port, sim.user, sim.password, ca_pem=server_pki["ca"].read_text())
    # Remove: gone from the list, the DB and the keyring.
    await app.vsphere.remove(sim.host)
    assert app.vsphere.list() == [] and get_secret(secret_name(sim.host)) is None
    assert any(isinstance(ev, VCenterStatus) and ev.state == "removed" for ev in rec.events)
    with pytest.raises(UnknownVCenter):
        await app.vsphere.remove(sim.host)


async def test_wrong_password_is_login_failed(site, vcsim) -> None:  # type: ignore[no-untyped-def]
    sim = await asyncio.to_thread(vcsim)
    tp = await thumbprint_of_sim(sim)
    with pytest.raises(LoginFailed) as ei:
        await site.app.vsphere.register(sim.host, sim.port, sim.user, "not-the-password", thumbprint=tp)
    assert ei.value.code == "LB_LOGIN_FAILED" and "login failed" in ei.value.message
    assert isinstance(ei.value, PermissionError)
    assert site.app.vsphere.list() == [] and get_secret(secret_name(sim.host)) is None


async def test_untrusted_certificate_refused_then_accepted_by_thumbprint(site, vcsim) -> None:  # type: ignore[no-untyped-def]
    sim = await asyncio.to_thread(vcsim)  # the simulator's own self-signed certificate: no CA we trust
    expected = await thumbprint_of_sim(sim)
    with pytest.raises(CertificateUntrusted) as ei:
        await site.app.vsphere.register(sim.host, sim.port, sim.user, sim.password)
    err = ei.value
    assert err.code == "LB_CERTIFICATE_UNTRUSTED" and expected in err.message and expected in err.advice
    assert err.details["thumbprint"] == expected and isinstance(err, ConnectionError)
    assert site.app.vsphere.list() == []
    # A different pin is refused too (and says what the server really presents).
    wrong = normalise_thumbprint("00" * 32)
    with pytest.raises(CertificateUntrusted) as ei:
        await site.app.vsphere.register(sim.host, sim.port, sim.user, sim.password, thumbprint=wrong)
    assert expected in ei.value.message
    # The operator compares and accepts the printed thumbprint (any spelling).
    e = await site.app.vsphere.register(sim.host, sim.port, sim.user, sim.password,
                                        thumbprint=expected.replace(":", "").lower())
    assert e["trust"] == "thumbprint" and e["pinned_thumbprint"] == expected


def test_pin_is_checked_on_every_connection(vcsim) -> None:  # type: ignore[no-untyped-def]
    """pyVmomi's own thumbprint check only runs when normal verification fails; our context checks each socket.
    (A plain test: no event loop to block.)"""
    sim = vcsim()
    good = normalise_thumbprint(hashlib.sha256(sim.der()).hexdigest())
    for _ in range(2):  # twice: the first connection must not relax the context for the next one
        ctx = ssl_context(Target(sim.host, sim.port, "u", "thumbprint", thumbprint=good))
        with socket.create_connection((sim.host, sim.port), 5) as raw, ctx.wrap_socket(raw):
            pass
    bad = ssl_context(Target(sim.host, sim.port, "u", "thumbprint", thumbprint="ab" * 32))
    assert isinstance(bad, PinnedContext)
    for _ in range(2):
        with socket.create_connection((sim.host, sim.port), 5) as raw, pytest.raises(CertificateUntrusted):
            bad.wrap_socket(raw)


async def test_unreachable_hosts_are_network_errors(site) -> None:  # type: ignore[no-untyped-def]
    port = free_port()  # nothing listens there
    with pytest.raises(VCenterUnreachable) as ei:
        await site.app.vsphere.register("127.0.0.1", port, "u", "p", insecure=True)
    assert ei.value.code == "LB_VCENTER_UNREACHABLE" and f"127.0.0.1:{port}" in ei.value.message
    assert isinstance(ei.value, ConnectionError)
    with pytest.raises(VCenterUnreachable) as ei:
        await site.app.vsphere.register("no-such-vcenter.invalid", 443, "u", "p")
    assert "resolve" in ei.value.message
    # Something that is not TLS at all: a clear handshake error, not a traceback.
    srv = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    try:
        p = srv.sockets[0].getsockname()[1]
        with pytest.raises(VCenterUnreachable):
            await site.app.vsphere.register("127.0.0.1", p, "u", "p")
    finally:
        srv.close()
    assert site.app.vsphere.list() == []


async def test_insecure_warns_and_is_recorded(site, vcsim, caplog) -> None:  # type: ignore[no-untyped-def]
    sim = await asyncio.to_thread(vcsim)
    rec = Recorder(site.app)
    with caplog.at_level(logging.WARNING):
        e = await site.app.vsphere.register(sim.host, sim.port, sim.user, sim.password, insecure=True)
    assert e["insecure"] and e["trust"] == "insecure"
    assert any("NOT VERIFIED" in r.getMessage().upper() or "VERIFICATION IS OFF" in r.getMessage().upper()
               for r in caplog.records if r.levelno >= logging.WARNING)
    assert _events(site.app, "vcenter-insecure") == [{"host": sim.host, "port": sim.port}]
    assert _events(site.app, "vcenter-registered")[0]["trust"] == "insecure"
    alerts = [a for a in rec.of(Alert) if a.code == "LB_VSPHERE_INSECURE"]
    assert alerts and alerts[0].severity == "warning"
    row = site.app.db.db.execute("SELECT insecure FROM vsphere_endpoints WHERE host=?", (sim.host,)).fetchone()
    assert row == (1,)
    [listed] = site.app.vsphere.list()
    assert listed["insecure"] is True


async def test_standalone_esxi(site, vcsim) -> None:  # type: ignore[no-untyped-def]
    sim = await asyncio.to_thread(vcsim, "-esx")
    rec = Recorder(site.app)
    e = await site.app.vsphere.register(sim.host, sim.port, sim.user, sim.password, insecure=True)
    assert e["kind"] == "esxi"
    await rec.wait(lambda ev: isinstance(ev, InventorySynced), what="ESXi inventory")
    inv = site.app.vsphere.snapshot()
    assert len(inv["hosts"]) == 1 and len(inv["vms"]) == 2 and inv["clusters"] == []


async def test_update_credentials(site, vcsim) -> None:  # type: ignore[no-untyped-def]
    sim = await asyncio.to_thread(vcsim)
    tp = await thumbprint_of_sim(sim)
    await site.app.vsphere.register(sim.host, sim.port, sim.user, sim.password, thumbprint=tp)
    with pytest.raises(LoginFailed):
        await site.app.vsphere.update(sim.host, password="wrong")
    assert get_secret(secret_name(sim.host)) == sim.password  # a refused update changes nothing
    e = await site.app.vsphere.update(sim.host, password=sim.password)
    assert e["trust"] == "thumbprint"
    with pytest.raises(UnknownVCenter):
        await site.app.vsphere.update("nope.example", password="x")
