"""Errors of the vSphere integration: stable codes and advice (docs/CONTRACT.md §4 rules).

Each subclasses the built-in it is (the aiohttp habit), so callers can catch ``ConnectionError`` or
``PermissionError`` without knowing Lifeboat's classes.
"""

from __future__ import annotations

from ..errors import AuthError, LifeboatError, NotFound


class LoginFailed(AuthError):
    """vCenter refused the user name or password (vim.fault.InvalidLogin)."""
    code = "LB_LOGIN_FAILED"
    advice = ("Check the user name and password; update them with "
              "`lifeboat vcenter update --home DIR HOST --user USER --password-stdin`.")


class CertificateUntrusted(LifeboatError, ConnectionError):
    """The server's TLS certificate is not trusted: not signed by the given CA, or not the pinned thumbprint."""
    code = "LB_CERTIFICATE_UNTRUSTED"
    advice = ("Compare the SHA-256 thumbprint with the one vCenter shows (or `openssl x509 -fingerprint -sha256`), "
              "then register again with --accept-thumbprint THUMBPRINT, or give the signing CA with --ca FILE.")


class VCenterUnreachable(LifeboatError, ConnectionError):
    """No TCP/TLS connection to the vCenter or ESXi host."""
    code = "LB_VCENTER_UNREACHABLE"
    advice = "Check the host name, the port (443 by default), DNS, and that the appliance can reach it (firewall)."


class UnknownVCenter(NotFound):
    code = "LB_UNKNOWN_VCENTER"
    advice = "List the registered vCenters with `lifeboat vcenter list --home DIR`."


class VSphereError(LifeboatError):
    """Any other fault vCenter returned; the message carries vSphere's own text."""
    code = "LB_VSPHERE_ERROR"
    advice = "See the appliance log; check the account's vCenter permissions (read-only on the inventory is enough)."
