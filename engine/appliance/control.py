"""Configuration-server control API: HTTPS (default port 443), JSON, mutual TLS for administrators.

``POST /v1/register`` is the only call that works without a client certificate (it is authenticated by the
connection passphrase, see :mod:`engine.registration`). Every other call needs the appliance's admin certificate.
Errors are ``{"error": {"code", "message", "advice"}}`` with a 4xx status; nothing changes on a refused call.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .. import pki
from ..errors import AuthError, CertificateRefused, Conflict, InvalidInput, LifeboatError, NotFound
from ..policy import Policy, parse_duration

if TYPE_CHECKING:
    from .appliance import Appliance

log = logging.getLogger(__name__)

_STATUS = {NotFound: 404, AuthError: 403, Conflict: 409, InvalidInput: 400}


def _error_response(exc: LifeboatError) -> web.Response:
    status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), 400)
    return web.json_response({"error": exc.to_dict()}, status=status)


@web.middleware
async def _errors(request: web.Request, handler):  # type: ignore[no-untyped-def]
    try:
        return await handler(request)
    except LifeboatError as exc:
        return _error_response(exc)
    except web.HTTPException:
        raise
    except Exception as exc:  # never crash the role; the operator gets a code
        log.exception("control API %s %s failed", request.method, request.path)
        return web.json_response({"error": {"code": "LB_INTERNAL", "message": str(exc),
                                            "advice": "See the appliance log."}}, status=500)


class ControlAPI:
    def __init__(self, app: Appliance) -> None:
        self.app = app
        self.runner: web.AppRunner | None = None

    def _admin(self, request: web.Request) -> None:
        peer = pki.peer_serial(request.transport.get_extra_info("ssl_object") if request.transport else None)
        if peer is None:
            raise CertificateRefused("this call needs the appliance's admin client certificate",
                                     advice="Run the command on the appliance with --home pointing at its home.")
        serial, cn = peer
        if cn != "lifeboat-admin" or str(serial) != self.app.cfg["admin_serial"]:
            raise CertificateRefused(f"certificate {cn!r} is not allowed to administer the appliance")

    async def _json(self, request: web.Request) -> dict[str, Any]:
        if request.content_length and request.content_length > 1 << 20:
            raise InvalidInput("request body too large")
        try:
            body = await request.json() if request.can_read_body else {}
        except json.JSONDecodeError:
            raise InvalidInput("request body is not JSON") from None
        if not isinstance(body, dict):
            raise InvalidInput("request body must be a JSON object")
        return body

    async def start(self, host: str, port: int) -> tuple[str, int]:
        h = self.app.home
        ctx = pki.server_context(h.server_cert, h.server_key, h.ca_cert, require_client=False)
        wa = web.Application(middlewares=[_errors], client_max_size=1 << 20)
        r = wa.router
        r.add_post("/v1/register", self.register)
        r.add_get("/v1/status", self.status)
        r.add_get("/v1/policies", self.policies)
        r.add_put("/v1/policies/{name}", self.put_policy)
        r.add_get("/v1/machines/{name}/points", self.points)
        r.add_post("/v1/machines/{name}/protect", self.protect)
        r.add_post("/v1/machines/{name}/revoke", self.revoke)
        r.add_post("/v1/machines/{name}/bookmark", self.bookmark)
        r.add_post("/v1/machines/{name}/failover", self.failover)
        r.add_post("/v1/machines/{name}/resync", self.resync)
        r.add_post("/v1/machines/{name}/verify", self.verify)
        r.add_post("/v1/machines/{name}/failover-cleanup", self.failover_cleanup)
        r.add_get("/v1/jobs", self.jobs)
        r.add_get("/v1/jobs/{id}", self.job)
        r.add_post("/v1/jobs/{id}/cancel", self.cancel_job)
        r.add_post("/v1/jobs/{id}/resume", self.resume_job)
        if getattr(self.app, "vsphere", None):
            r.add_routes(self.app.vsphere.routes())
        self.runner = web.AppRunner(wa, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, ssl_context=ctx)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        return sock.getsockname()[:2]

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    async def register(self, request: web.Request) -> web.Response:
        b = await self._json(request)
        for k in ("name", "csr", "nonce", "proof"):
            if not isinstance(b.get(k), str):
                raise InvalidInput(f"registration needs {k!r}")
        return web.json_response(self.app.register(b["name"], b["csr"], b["nonce"], b["proof"]))

    async def status(self, request: web.Request) -> web.Response:
        self._admin(request)
        return web.json_response(self.app.status())

    async def policies(self, request: web.Request) -> web.Response:
        self._admin(request)
        assert self.app.db is not None
        return web.json_response([p.to_dict() for p in self.app.db.policies()])

    async def put_policy(self, request: web.Request) -> web.Response:
        self._admin(request)
        b = await self._json(request)
        name = request.match_info["name"]
        assert self.app.db is not None
        try:
            base = self.app.db.policy(name)
        except NotFound:
            base = Policy(name)
        for field in ("rpo_threshold", "retention", "app_consistent", "crash_interval"):
            if b.get(field) is not None:
                setattr(base, field, parse_duration(b[field], what=field.replace("_", "-")))
        if b.get("resync_window") is not None:
            base.resync_window = str(b["resync_window"])
        return web.json_response(self.app.set_policy(base).to_dict())

    async def points(self, request: web.Request) -> web.Response:
        self._admin(request)
        return web.json_response(self.app.points(request.match_info["name"]))

    async def protect(self, request: web.Request) -> web.Response:
        self._admin(request)
        b = await self._json(request)
        await self.app.protect(request.match_info["name"], b.get("policy"))
        return web.json_response(self.app.machine_status(request.match_info["name"]))

    async def revoke(self, request: web.Request) -> web.Response:
        self._admin(request)
        self.app.revoke(request.match_info["name"])
        return web.json_response({"revoked": request.match_info["name"]})

    async def bookmark(self, request: web.Request) -> web.Response:
        self._admin(request)
        b = await self._json(request)
        self.app.request_bookmark(request.match_info["name"], b.get("tag"))
        return web.json_response({"requested": True})

    async def resync(self, request: web.Request) -> web.Response:
        self._admin(request)
        b = await self._json(request)
        return web.json_response(self.app.request_resync(request.match_info["name"], now=bool(b.get("now"))))

    async def verify(self, request: web.Request) -> web.Response:
        self._admin(request)
        b = await self._json(request)
        return web.json_response(await self.app.verify(request.match_info["name"], heal=b.get("heal", True)))

    async def failover(self, request: web.Request) -> web.Response:
        self._admin(request)
        b = await self._json(request)
        job = await self.app.recovery.test_failover(request.match_info["name"], str(b.get("point", "latest")),
                                                    export_dir=b.get("export_dir"), nbd=b.get("nbd"))
        return web.json_response(job.to_dict())

    async def failover_cleanup(self, request: web.Request) -> web.Response:
        self._admin(request)
        return web.json_response(await self.app.recovery.cleanup(request.match_info["name"]))

    # engine jobs (engine/jobs) ---------------------------------------------------------------------------
    async def jobs(self, request: web.Request) -> web.Response:
        """``GET /v1/jobs[?machine=NAME][&active=1]``: jobs oldest first (active: queued, running or paused)."""
        self._admin(request)
        q = request.query
        unknown = set(q) - {"machine", "active"}
        if unknown:
            raise InvalidInput(f"unknown query parameter(s): {', '.join(sorted(unknown))}",
                               advice="GET /v1/jobs takes machine=NAME and active=0|1.")
        active = q.get("active", "0")
        if active not in ("0", "1", "true", "false"):
            raise InvalidInput(f"active={active!r} is not 0 or 1")
        machine = q.get("machine") or None
        assert self.app.jobs is not None
        return web.json_response([j.to_dict() for j in self.app.jobs.list(machine,
                                                                          active_only=active in ("1", "true"))])

    async def job(self, request: web.Request) -> web.Response:
        self._admin(request)
        assert self.app.jobs is not None
        return web.json_response(self.app.jobs.get(request.match_info["id"]).to_dict())

    async def cancel_job(self, request: web.Request) -> web.Response:
        self._admin(request)
        assert self.app.jobs is not None
        return web.json_response((await self.app.jobs.cancel(request.match_info["id"])).to_dict())

    async def resume_job(self, request: web.Request) -> web.Response:
        self._admin(request)
        assert self.app.jobs is not None
        return web.json_response(self.app.jobs.resume(request.match_info["id"]).to_dict())
