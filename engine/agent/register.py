"""``lifeboat agent register``: obtain a client certificate from the appliance with the connection passphrase."""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import ssl
from pathlib import Path

from cryptography import x509

from .. import net, pki
from ..errors import ApplianceUnreachable, CertificateRefused, InvalidInput, ProtocolError, from_dict
from ..home import AgentHome
from ..names import check_name
from ..registration import agent_proof, appliance_proof, check


def register(home_dir: Path, appliance: str, passphrase_file: Path, name: str, timeout: float = 15.0) -> dict:
    check_name(name, "machine name")
    home = AgentHome(home_dir)
    if home.config.exists():
        raise InvalidInput(f"{home_dir} is already registered as {json.loads(home.config.read_text())['name']!r}",
                           advice="Use a new --home for another machine.")
    try:
        passphrase = passphrase_file.read_text().strip()
    except OSError as exc:
        raise InvalidInput(f"cannot read the passphrase file: {exc.strerror}") from None
    host, port = net.parse_address(appliance, 443, what="--appliance")
    key = pki.new_key()
    csr = pki.make_csr(key, name)
    nonce = secrets.token_hex(16)
    body = json.dumps({"name": name, "csr": csr.decode(), "nonce": nonce,
                       "proof": agent_proof(passphrase, name, nonce, csr)})
    # No CA yet: the server is authenticated below by its passphrase proof and the CA pin, not by TOFU.
    try:
        resp = net.https_request(host, port, "POST", "/v1/register", context=net.client_context(None),
                                 timeout=timeout, purpose="register", body=body,
                                 headers={"Content-Type": "application/json"})
        data = json.loads(resp.body or b"{}")
        server_der = resp.peer_cert_der
    except (OSError, ssl.SSLError, socket.timeout) as exc:
        raise ApplianceUnreachable(f"cannot reach the appliance at {host}:{port}: {exc}") from None
    except json.JSONDecodeError:
        raise ProtocolError("the appliance answered with something that is not JSON") from None
    if resp.status != 200:
        err = data.get("error", {}) if isinstance(data, dict) else {}
        raise from_dict(err, f"registration failed (HTTP {resp.status})")
    ca_pem, cert_pem = data["ca"].encode(), data["cert"].encode()
    if not server_der or not check(appliance_proof(passphrase, nonce, ca_pem, cert_pem, server_der),
                                   data.get("proof", "")):
        raise CertificateRefused("the appliance could not prove it knows the passphrase: not registering",
                                 advice="Check --appliance points at your appliance; someone may be in between.")
    ca = x509.load_pem_x509_certificate(ca_pem)
    server = x509.load_der_x509_certificate(server_der)
    try:
        server.verify_directly_issued_by(ca)
    except Exception:
        raise CertificateRefused("the appliance's TLS certificate is not issued by its CA") from None
    home_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    home.ca_cert.write_bytes(ca_pem)
    home.cert.write_bytes(cert_pem)
    pki.write_private(home.key, pki.key_pem(key))
    cfg = {"format": 1, "name": name, "appliance": [host, port], "data_port": int(data.get("data_port", 9443)),
           "ca_sha256": hashlib.sha256(pki.cert_der(ca)).hexdigest()}
    home.save_config(cfg)
    return cfg
