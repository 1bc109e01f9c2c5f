"""What every control-API route shares, whichever part serves it (the control API itself, the vSphere service):
the admin check and the JSON body reader."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .. import pki
from ..errors import CertificateRefused, InvalidInput

__all__ = ["ADMIN_CN", "AdminCheck", "read_json"]

ADMIN_CN = "lifeboat-admin"
#: Largest request body a route reads (aiohttp's client_max_size is set to the same).
MAX_BODY = 1 << 20


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


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body ({} when there is none); InvalidInput for anything else."""
    if request.content_length and request.content_length > MAX_BODY:
        raise InvalidInput("request body too large")
    try:
        body = await request.json() if request.can_read_body else {}
    except json.JSONDecodeError:
        raise InvalidInput("request body is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object")
    return body
