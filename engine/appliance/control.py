"""Configuration-server control API: HTTPS (default port 443), JSON, mutual TLS for administrators.

``POST /v1/register`` is the only call that works without a client certificate (it is authenticated by the
connection passphrase, see :mod:`engine.registration`). Every other call needs the appliance's admin certificate.
Errors are ``{"error": {"code", "message", "advice"}}`` with a 4xx status; nothing changes on a refused call.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..errors import AuthError, Conflict, InvalidInput, LifeboatError, NotFound
from ..policy import Policy, parse_duration
from .control_http import MAX_BODY, AdminCheck, read_json

if TYPE_CHECKING:
    from .machines import Machines, MachineState
    from .recovery_service import RecoveryService
    from .resync import Resync

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
    """The control port's routes over the appliance's services (no appliance back-pointer): ``machines``
    (register, protect, revoke, bookmark, points, status), ``state`` (policies), ``resync`` (resync, verify),
    ``recovery`` (drills), ``status`` (the whole appliance's status), plus ``extra_routes`` of other parts (vSphere),
    all behind ``require_admin`` except registration."""

    def __init__(self, tls: ssl.SSLContext, *, require_admin: AdminCheck, machines: Machines, state: MachineState,
                 resync: Resync, recovery: RecoveryService, status: Callable[[], dict[str, Any]],
                 extra_routes: list[web.RouteDef] | None = None) -> None:
        self.tls = tls
        self.require_admin = require_admin
        self.machines = machines
        self.state = state
        self.resync_service = resync
        self.recovery = recovery
        self.appliance_status = status
        self.extra_routes = list(extra_routes or [])
        self.runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        wa = web.Application(middlewares=[_errors], client_max_size=MAX_BODY)
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
        r.add_get("/v1/jobs/{id}", self.job)
        r.add_routes(self.extra_routes)
        self.runner = web.AppRunner(wa, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, ssl_context=self.tls)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        return sock.getsockname()[:2]

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    async def register(self, request: web.Request) -> web.Response:
        b = await read_json(request)
        for k in ("name", "csr", "nonce", "proof"):
            if not isinstance(b.get(k), str):
                raise InvalidInput(f"registration needs {k!r}")
        return web.json_response(self.machines.register(b["name"], b["csr"], b["nonce"], b["proof"]))

    async def status(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        return web.json_response(self.appliance_status())

    async def policies(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        return web.json_response([p.to_dict() for p in self.state.policies()])

    async def put_policy(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        b = await read_json(request)
        name = request.match_info["name"]
        try:
            base = self.state.policy(name)
        except NotFound:
            base = Policy(name)
        for field in ("rpo_threshold", "retention", "app_consistent", "crash_interval"):
            if b.get(field) is not None:
                setattr(base, field, parse_duration(b[field], what=field.replace("_", "-")))
        if b.get("resync_window") is not None:
            base.resync_window = str(b["resync_window"])
        return web.json_response(self.state.set_policy(base).to_dict())

    async def points(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        return web.json_response(self.machines.points(request.match_info["name"]))

    async def protect(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        b = await read_json(request)
        await self.machines.protect(request.match_info["name"], b.get("policy"))
        return web.json_response(self.machines.machine_status(request.match_info["name"]))

    async def revoke(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        self.machines.revoke(request.match_info["name"])
        return web.json_response({"revoked": request.match_info["name"]})

    async def bookmark(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        b = await read_json(request)
        self.machines.request_bookmark(request.match_info["name"], b.get("tag"))
        return web.json_response({"requested": True})

    async def resync(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        b = await read_json(request)
        return web.json_response(self.resync_service.request(request.match_info["name"], now=bool(b.get("now"))))

    async def verify(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        b = await read_json(request)
        return web.json_response(await self.resync_service.verify(request.match_info["name"], heal=b.get("heal", True)))

    async def failover(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        b = await read_json(request)
        job = await self.recovery.test_failover(request.match_info["name"], str(b.get("point", "latest")),
                                                    export_dir=b.get("export_dir"), nbd=b.get("nbd"))
        return web.json_response(job.to_dict())

    async def failover_cleanup(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        return web.json_response(await self.recovery.cleanup(request.match_info["name"]))

    async def job(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        return web.json_response(self.recovery.job(request.match_info["id"]).to_dict())
