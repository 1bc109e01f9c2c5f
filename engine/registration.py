"""Agent registration with the connection passphrase, without trusting anyone on first use.

The agent does not know the appliance's CA yet, so it cannot verify TLS on the first connection. Instead both sides
prove knowledge of the passphrase with HMAC-SHA256, bound to what they exchange:

1. agent → ``POST /v1/register`` ``{"name", "csr", "nonce", "proof"}`` with
   ``proof = HMAC(passphrase, "lifeboat-register-v1|agent|" + name + "|" + nonce + "|" + sha256(csr))``;
   the passphrase itself is never sent.
2. appliance checks the proof (constant time), signs the CSR and answers ``{"cert", "ca", "proof"}`` with
   ``proof = HMAC(passphrase, "lifeboat-register-v1|appliance|" + nonce + "|" + sha256(ca) + "|" + sha256(cert)
   + "|" + sha256(tls server certificate DER))``.
3. the agent checks that proof, then that the TLS server certificate it saw chains to that CA. From then on every
   connection is mutual TLS verified against the pinned CA.
A wrong passphrase changes nothing on the appliance.
"""

from __future__ import annotations

import hashlib
import hmac


def _h(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def agent_proof(passphrase: str, name: str, nonce: str, csr_pem: bytes) -> str:
    msg = f"lifeboat-register-v1|agent|{name}|{nonce}|{_h(csr_pem)}".encode()
    return hmac.new(passphrase.encode(), msg, hashlib.sha256).hexdigest()


def appliance_proof(passphrase: str, nonce: str, ca_pem: bytes, cert_pem: bytes, server_der: bytes) -> str:
    msg = f"lifeboat-register-v1|appliance|{nonce}|{_h(ca_pem)}|{_h(cert_pem)}|{_h(server_der)}".encode()
    return hmac.new(passphrase.encode(), msg, hashlib.sha256).hexdigest()


def check(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), str(given).encode())
