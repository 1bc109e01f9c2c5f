"""What every control-API route shares, whichever part serves it (the control API itself, the vSphere service):
the admin check and the request body reader (strict JSON, typed getters: request_body.py)."""

from __future__ import annotations

from aiohttp import web

from .. import pki
from ..errors import CertificateRefused, InvalidInput
from .request_body import MAX_BODY, Body, parse_body

__all__ = ["ADMIN_CN", "AdminCheck", "read_json"]

ADMIN_CN = "lifeboat-admin"


class AdminCheck:
    """``require_admin(request)``: refuse a request whose TLS client certificate is not the appliance's admin
    certificate (CN ``lifeboat-admin`` and the serial recorded at ``appliance init``)."""

    def __init__(self, admin_serial: str) -> None:
        self.admin_serial = str(admin_serial)

    def __call__(self, request: web.Request) -> None:
        peer = pki.peer_serial(request.transport.get_extra_info("ssl_object") if request.transport else None)
        if peer is None:
            raise CertificateRefused("this call needs the appliance's admin client certificate",
                                     advice="Run the command on the appliance with --home pointing at its home.")
        serial, cn = peer
        if cn != ADMIN_CN or str(serial) != self.admin_serial:
            raise CertificateRefused(f"certificate {cn!r} is not allowed to administer the appliance")


async def read_json(request: web.Request) -> Body:
    """The request's body as a strict JSON object ({} when there is none), with typed getters; InvalidInput
    (naming the field ``body``) for anything else."""
    if request.content_length and request.content_length > MAX_BODY:
        raise InvalidInput(f"request body is too large (at most {MAX_BODY} bytes)", field="body")
    return Body(parse_body(await request.read() if request.can_read_body else b""))
