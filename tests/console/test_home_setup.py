"""First-run setup without widgets: validators, and a pending home that commits atomically or leaves nothing."""

from __future__ import annotations

import json
import socket
import ssl
import asyncio
from pathlib import Path

import keyring
import pytest

from console.home_setup import (INTERCEPTION_WARNING, PendingHome, SetupPlan, changed_certificate_message,
                                fetch_certificate, fetch_thumbprint, read_ca_file, validate_home, validate_ports,
                                validate_vault, validity_text)
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


def _issue(ca, tmp_path: Path, name: str, *, days: tuple[float, float] | None = None) -> Path:
    """A server certificate for 127.0.0.1 signed by ``ca``; ``days`` = (not before, not after) from now."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    from engine import pki
    key = pki.new_key()
    cert = ca.issue(key.public_key(), "vcenter.test", server=True, hosts=["127.0.0.1"])
    if days is not None:
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old.test")]))
                .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now + dt.timedelta(days=days[0])).not_valid_after(now + dt.timedelta(days=days[1]))
                .sign(ca.key, hashes.SHA256()))
    (tmp_path / f"{name}.pem").write_bytes(pki.cert_pem(cert))
    pki.write_private(tmp_path / f"{name}.key", pki.key_pem(key))
    return tmp_path / name


async def _serve(base: Path):  # type: ignore[no-untyped-def]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(base.with_suffix(".pem"), base.with_suffix(".key"))

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()
    return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)


async def test_certificate_details_validity_and_ca(tmp_path: Path) -> None:
    """What the console shows before trust: subject, issuer, validity, SHA-256, names; a CA file says whether it
    vouches for the certificate; an expired and a not-yet-valid certificate are named so."""
    import hashlib

    from engine import pki
    ca, other = pki.CA.create("test CA"), pki.CA.create("another CA")
    (tmp_path / "ca.pem").write_bytes(pki.cert_pem(ca.cert))
    (tmp_path / "other.pem").write_bytes(pki.cert_pem(other.cert))
    good = _issue(ca, tmp_path, "good")
    expired = _issue(ca, tmp_path, "expired", days=(-30, -2))
    future = _issue(ca, tmp_path, "future", days=(3, 30))
    servers = [await _serve(b) for b in (good, expired, future)]
    ports = [srv.sockets[0].getsockname()[1] for srv in servers]
    try:
        cert = await fetch_certificate("127.0.0.1", ports[0])
        der = ssl.PEM_cert_to_DER_cert(good.with_suffix(".pem").read_text())
        assert cert.sha256.replace(":", "") == hashlib.sha256(der).hexdigest().upper()
        assert (cert.subject, cert.issuer, cert.names) == ("CN=vcenter.test,O=Lifeboat", "CN=test CA,O=Lifeboat", ("127.0.0.1",))
        assert not cert.expired and not cert.not_yet_valid and cert.trusted is None
        span, problem = validity_text(cert)
        assert span.startswith("from ") and " to " in span and problem is None
        ca_pem = (tmp_path / "ca.pem").read_text()
        assert (await fetch_certificate("127.0.0.1", ports[0], ca_pem=ca_pem)).trusted is True
        refused = await fetch_certificate("127.0.0.1", ports[0], ca_pem=(tmp_path / "other.pem").read_text())
        assert refused.trusted is False and "unable to get local issuer certificate" in refused.why

        old = await fetch_certificate("127.0.0.1", ports[1])
        assert old.expired and not old.not_yet_valid and old.subject == "CN=old.test"
        assert validity_text(old)[1].startswith("Expired 2 day(s) ago")
        early = await fetch_certificate("127.0.0.1", ports[2])
        assert early.not_yet_valid and not early.expired
        assert validity_text(early)[1].startswith("Not valid yet")
    finally:
        for srv in servers:
            srv.close()
            await srv.wait_closed()

    # the CA file, as the CLI's --ca reads it
    assert read_ca_file(str(tmp_path / "ca.pem")) == (ca_pem, None)
    assert read_ca_file(str(good.with_suffix(".key")))[1].endswith("holds no PEM certificate (-----BEGIN CERTIFICATE-----).")
    assert read_ca_file(str(tmp_path / "missing.pem"))[1].startswith("Cannot read")
    assert read_ca_file("")[1] == "Choose the CA certificate file (PEM)."
    msg = changed_certificate_message("vc:443", "AA:BB", "CC:DD")
    assert msg.startswith(INTERCEPTION_WARNING) and "AA:BB" in msg and "CC:DD" in msg
    assert "someone may be intercepting the connection" in INTERCEPTION_WARNING
