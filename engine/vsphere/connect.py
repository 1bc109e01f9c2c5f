"""Connecting to vCenter / ESXi with verified TLS, and turning vSphere's failures into Lifeboat errors.

Trust is one of:

- ``system``: the OS CA store and the host name (the default);
- ``ca``: a CA certificate the operator gave (``--ca FILE``), with host-name checking;
- ``thumbprint``: a pinned SHA-256 thumbprint of the server certificate (``--accept-thumbprint``), checked on every
  TLS connection the session opens;
- ``insecure``: no verification at all (``--insecure``; warned about and recorded by the service).

We never pass ``thumbprint=`` to pyVmomi: its ``_Connect`` only checks a pin when normal verification *fails*, and
then switches the shared context to CERT_NONE, so the second pooled connection is not checked at all. The pin is
enforced by :class:`PinnedContext` instead, which checks the peer certificate inside ``wrap_socket``.

Every connection goes out through :mod:`engine.net` (its TLS contexts and its egress policy): the probes here open
their TCP connections with ``net.open_connection``; pyVmomi opens its own HTTPS connections for the session, so
``connect`` asks ``net.route`` first (the egress check; a proxy from the route would be handed to pyVmomi's
``httpProxyHost``/``httpProxyPort``) and gives pyVmomi a context built by net.
"""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from .. import net
from ..errors import InvalidInput
from .errors import CertificateUntrusted, LoginFailed, VCenterUnreachable, VSphereError

log = logging.getLogger(__name__)

TRUST_MODES = ("system", "ca", "thumbprint", "insecure")
PROBE_TIMEOUT = 10.0
# Longer than the inventory's WaitForUpdatesEx wait, so a quiet vCenter is not mistaken for a dead one.
HTTP_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Target:
    """Where a vCenter is and how its certificate is trusted. Holds no secret: the password comes separately."""
    host: str
    port: int
    user: str
    trust: str = "system"
    ca_pem: str | None = None
    thumbprint: str | None = None  # pinned, normalised (see normalise_thumbprint)

    def __post_init__(self) -> None:
        if self.trust not in TRUST_MODES:
            raise InvalidInput(f"unknown trust mode {self.trust!r}")
        if self.trust == "ca" and not self.ca_pem:
            raise InvalidInput("trust 'ca' needs a CA certificate", advice="Pass --ca FILE (PEM).")
        if self.trust == "thumbprint" and not self.thumbprint:
            raise InvalidInput("trust 'thumbprint' needs a thumbprint", advice="Pass --accept-thumbprint SHA256.")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def normalise_thumbprint(text: str) -> str:
    """``AB:CD:…`` / ``abcd…`` / with spaces → upper-case colon-separated SHA-256 (what vCenter's UI shows)."""
    hexs = re.sub(r"[\s:]", "", text or "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", hexs):
        raise InvalidInput(f"{text!r} is not a SHA-256 thumbprint",
                           advice="Give the 64 hex digits (colons optional) that registration printed.")
    return ":".join(hexs[i:i + 2] for i in range(0, 64, 2)).upper()


def thumbprint_of(der: bytes) -> str:
    return normalise_thumbprint(hashlib.sha256(der).hexdigest())


class PinnedContext(ssl.SSLContext):
    """An unverified TLS context that accepts exactly one certificate: the pinned SHA-256 thumbprint."""

    pin: str
    address: str

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock = super().wrap_socket(*args, **kwargs)
        der = sock.getpeercert(binary_form=True) or b""
        seen = thumbprint_of(der) if der else "none"
        if seen != self.pin:
            sock.close()
            raise CertificateUntrusted(
                f"the certificate of {self.address} changed: SHA-256 thumbprint {seen}, pinned {self.pin}",
                thumbprint=seen)
        return sock


def ssl_context(t: Target) -> ssl.SSLContext:
    """The context every connection to ``t`` uses (pyVmomi gets it explicitly, so its localhost bypass never applies)."""
    if t.trust == "thumbprint":
        pinned = net.unverified_context(PinnedContext)
        pinned.pin = normalise_thumbprint(t.thumbprint or "")
        pinned.address = t.address
        return pinned
    if t.trust == "insecure":
        return net.unverified_context()
    if t.trust == "ca":
        try:
            return net.system_context(t.ca_pem)
        except ssl.SSLError as exc:
            raise InvalidInput(f"the CA file is not a PEM certificate: {exc}") from None
    return net.system_context()


def _tcp(t: Target, timeout: float) -> socket.socket:
    try:
        return net.open_connection(t.host, t.port, timeout=timeout, purpose="vsphere")
    except socket.gaierror as exc:
        raise VCenterUnreachable(f"cannot resolve {t.host!r}: {exc.strerror or exc}") from None
    except TimeoutError:
        raise VCenterUnreachable(f"no answer from {t.address} within {timeout:.0f}s") from None
    except OSError as exc:
        raise VCenterUnreachable(f"cannot connect to {t.address}: {exc.strerror or exc}") from None


def fetch_certificate(t: Target, timeout: float = PROBE_TIMEOUT) -> bytes:
    """The server's certificate (DER), read without trusting it, so a refusal can show its thumbprint."""
    ctx = net.unverified_context()
    with _tcp(t, timeout) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=t.host) as s:
                return s.getpeercert(binary_form=True) or b""
        except (ssl.SSLError, OSError) as exc:
            raise VCenterUnreachable(f"TLS handshake with {t.address} failed: {exc}",
                                     advice="Check that HOST:PORT is the vCenter/ESXi HTTPS endpoint.") from None


def certificate_details(der: bytes) -> dict[str, Any]:
    """What an operator checks before trusting a certificate: subject, issuer, validity, SHA-256, names.

    Plain data (epoch seconds for the validity); ``expired``/``not_yet_valid`` are judged against this host's clock."""
    import time

    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)] + \
                [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    before = cert.not_valid_before_utc.timestamp()
    after = cert.not_valid_after_utc.timestamp()
    now = time.time()
    return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "not_before": before, "not_after": after, "sha256": thumbprint_of(der), "names": names,
            "serial": format(cert.serial_number, "X"), "self_signed": cert.subject == cert.issuer,
            "expired": now > after, "not_yet_valid": now < before}


def probe_certificate(t: Target, timeout: float = PROBE_TIMEOUT) -> dict[str, Any]:
    """The presented certificate's details (``certificate_details``), and whether ``t``'s trust accepts it:
    ``trusted`` (bool) and ``why`` (the verifier's reason when not). Blocking: use a thread."""
    der = fetch_certificate(t, timeout)
    out = certificate_details(der)
    try:
        check_trust(t, timeout)
        out.update(trusted=True, why="")
    except CertificateUntrusted as exc:
        out.update(trusted=False, why=exc.message)
    return out


def check_trust(t: Target, timeout: float = PROBE_TIMEOUT) -> str:
    """Verify the server certificate the way ``t`` says; return its thumbprint, or raise CertificateUntrusted."""
    seen = thumbprint_of(fetch_certificate(t, timeout))
    if t.trust == "insecure":
        return seen
    if t.trust == "thumbprint":
        pin = normalise_thumbprint(t.thumbprint or "")
        if seen != pin:
            raise CertificateUntrusted(f"the certificate of {t.address} has SHA-256 thumbprint {seen}, "
                                       f"not the accepted {pin}", thumbprint=seen)
        return seen
    ctx = ssl_context(t)
    with _tcp(t, timeout) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=t.host):
                return seen
        except ssl.SSLCertVerificationError as exc:
            why = exc.verify_message or str(exc)
            raise CertificateUntrusted(f"the certificate of {t.address} is not trusted ({why}); "
                                       f"its SHA-256 thumbprint is {seen}",
                                       advice=f"If {seen} is the thumbprint vCenter shows, register again with "
                                              f"--accept-thumbprint {seen}, or pass the signing CA with --ca FILE.",
                                       thumbprint=seen) from None
        except (ssl.SSLError, OSError) as exc:
            raise VCenterUnreachable(f"TLS handshake with {t.address} failed: {exc}") from None


def connect(t: Target, password: str, *, timeout: float = HTTP_TIMEOUT) -> tuple[Any, str]:
    """Check trust, log in; returns (ServiceInstance, the server's SHA-256 thumbprint). Blocking: use a thread."""
    from pyVim.connect import Connect
    from pyVmomi import vim, vmodl

    seen = check_trust(t)
    ctx = ssl_context(t)
    r = net.route(t.host, t.port, "vsphere")   # pyVmomi makes its own connections: the egress check is made here
    proxy: dict[str, Any] = {}
    if r.proxy is not None:
        if r.proxy.user:   # pyVmomi's tunnel sends no Proxy-Authorization: say so rather than fail obscurely
            raise VCenterUnreachable(f"{t.address} would be reached through the proxy {r.proxy.address}, which asks "
                                     "for a password; pyVmomi cannot authenticate to a proxy",
                                     advice=f"Add {t.host} to the proxy's bypass list (`lifeboat egress proxy "
                                            "--bypass`) or use a proxy without authentication for vCenters.")
        proxy = {"httpProxyHost": r.proxy.host, "httpProxyPort": r.proxy.port}
    try:
        si = Connect(host=t.host, port=t.port, user=t.user, pwd=password,  # type: ignore[no-untyped-call]
                     sslContext=ctx, httpConnectionTimeout=timeout, **proxy)
        return si, seen
    except vim.fault.InvalidLogin:
        raise LoginFailed(f"login failed for user {t.user!r} at {t.address}") from None
    except CertificateUntrusted:
        raise
    except vim.fault.HostConnectFault as exc:
        # pyVmomi wraps transport errors (including our pin check) into HostConnectFault with only a message.
        msg = getattr(exc, "msg", None) or str(exc)
        if "thumbprint" in msg or "certificate" in msg.lower():
            raise CertificateUntrusted(f"{t.address}: {msg}") from None
        raise VCenterUnreachable(f"cannot talk to {t.address}: {msg}") from None
    except vmodl.MethodFault as exc:
        raise VSphereError(f"{t.address} refused the login: {getattr(exc, 'msg', None) or type(exc).__name__}") from None
    except ssl.SSLCertVerificationError as exc:
        raise CertificateUntrusted(f"the certificate of {t.address} is not trusted: {exc}") from None
    except OSError as exc:
        raise VCenterUnreachable(f"cannot talk to {t.address}: {exc}") from None


def describe(si: Any) -> dict[str, Any]:
    """What the endpoint is: vCenter or a standalone ESXi host, its version and instance UUID."""
    about = si.content.about
    return {"kind": "vcenter" if about.apiType == "VirtualCenter" else "esxi", "product": about.fullName,
            "api_version": about.apiVersion, "instance_uuid": about.instanceUuid or ""}


def disconnect(si: Any) -> None:
    """Log out, best effort (the session may already be gone)."""
    try:
        si.content.sessionManager.Logout()
    except Exception:  # a dead session or socket: nothing to clean up on our side
        pass
    try:
        si._stub.DropConnections()
    except Exception:
        pass
