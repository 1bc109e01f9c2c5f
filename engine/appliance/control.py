"""Configuration-server control API: HTTPS (default port 443), JSON, mutual TLS for administrators.

``POST /v1/register`` is the only call that works without a client certificate (it is authenticated by the
connection passphrase, see :mod:`engine.registration`). Every other call needs the appliance's admin certificate.
Errors are ``{"error": {"code", "message", "advice"}}`` with a 4xx status; nothing changes on a refused call.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..errors import AuthError, Conflict, InvalidInput, LifeboatError, NotFound, RateLimited
from ..names import check_name
from ..policy import Policy
from .control_http import AdminCheck, read_json
from .register_guard import RegisterGuard
from .request_body import MAX_BODY, json_response, query_count, query_epoch, query_params

if TYPE_CHECKING:
    from ..jobs import JobManager
    from .alerts import AlertStore
    from .machine_state import MachineState
    from .machines import Machines
    from .recovery_service import RecoveryService
    from .resync import Resync
    from .rpo import RpoHistory

log = logging.getLogger(__name__)

_JOB_ID = re.compile(r"[0-9a-f]{12}")
#: An alert id: CODE or CODE:subject (a machine name, a host, a job id, a certificate's role).
_ALERT_ID = re.compile(r"LB_[A-Z0-9_]{1,60}(:[A-Za-z0-9._\-\[\]:]{1,255})?")
MAX_EVENTS = 10000
_STATUS = {NotFound: 404, AuthError: 403, Conflict: 409, InvalidInput: 400, RateLimited: 429}


def _error_response(exc: LifeboatError) -> web.Response:
    status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), 400)
    return json_response({"error": exc.to_dict()}, status=status)


@web.middleware
async def _errors(request: web.Request, handler):  # type: ignore[no-untyped-def]
    try:
        return await handler(request)
    except LifeboatError as exc:
        return _error_response(exc)
    except web.HTTPRequestEntityTooLarge:
        return _error_response(InvalidInput(f"request body is too large (at most {MAX_BODY} bytes)", field="body"))
    except web.HTTPException as exc:
        if exc.status >= 400:   # aiohttp's own refusals (unknown route, wrong method) in the API's error shape
            return json_response({"error": {"code": "LB_NOT_FOUND" if exc.status in (404, 405) else "LB_INVALID_INPUT",
                                            "message": f"{request.method} {request.path}: {exc.reason}",
                                            "advice": "See docs/CONTRACT.md for the control API's routes."}},
                                 status=exc.status)
        raise
    except Exception as exc:  # never crash the role; the operator gets a code
        log.exception("control API %s %s failed", request.method, request.path)
        return json_response({"error": {"code": "LB_INTERNAL", "message": str(exc),
                                        "advice": "See the appliance log."}}, status=500)


def job_id(request: web.Request) -> str:
    """The ``{id}`` of a job route: 12 lowercase hex digits (``engine.jobs.model.new_job_id``)."""
    jid = request.match_info["id"]
    if not _JOB_ID.fullmatch(jid):
        raise InvalidInput(f"{jid[:40]!r} is not a job id (12 hex digits)", field="job id",
                           advice="List the appliance's jobs with `lifeboat jobs --home DIR`.")
    return jid


def machine_name(request: web.Request) -> str:
    """The ``{name}`` of a machine route, checked by the name rule (a hostile path never reaches a lookup)."""
    return check_name(request.match_info["name"], "machine name")


class ControlAPI:
    """The control port's routes over the appliance's services (no appliance back-pointer): ``machines``
    (register, protect, revoke, restore-access, bookmark, points, status), ``state`` (policies), ``resync``
    (resync, verify), ``recovery`` (drills), ``jobs`` (the job manager), ``status`` (the whole appliance's status), ``register_guard`` (the
    rate limit of refused registrations), plus ``extra_routes`` of other parts (vSphere); every route but
    registration is behind ``require_admin``."""

    def __init__(self, tls: ssl.SSLContext, *, require_admin: AdminCheck, machines: Machines, state: MachineState,
                 resync: Resync, recovery: RecoveryService, jobs: JobManager, status: Callable[[], dict[str, Any]],
                 register_guard: RegisterGuard, alerts: AlertStore | None = None,
                 rpo_history: RpoHistory | None = None, extra_routes: list[web.RouteDef] | None = None) -> None:
        self.tls = tls
        self.require_admin = require_admin
        self.machines = machines
        self.state = state
        self.resync_service = resync
        self.recovery = recovery
        self.job_manager = jobs
        self.appliance_status = status
        self.register_guard = register_guard
        self.alert_store = alerts
        self.rpo_store = rpo_history
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
        r.add_post("/v1/machines/{name}/restore-access", self.restore_access)
        r.add_post("/v1/machines/{name}/bookmark", self.bookmark)
        r.add_post("/v1/machines/{name}/failover", self.failover)
        r.add_post("/v1/machines/{name}/resync", self.resync)
        r.add_post("/v1/machines/{name}/verify", self.verify)
        r.add_post("/v1/machines/{name}/failover-cleanup", self.failover_cleanup)
        r.add_get("/v1/jobs", self.jobs)
        r.add_get("/v1/jobs/{id}", self.job)
        r.add_post("/v1/jobs/{id}/cancel", self.cancel_job)
        r.add_post("/v1/jobs/{id}/resume", self.resume_job)
        r.add_get("/v1/alerts", self.alerts)
        r.add_post("/v1/alerts/{id}/ack", self.ack_alert)
        r.add_get("/v1/events", self.events)
        r.add_get("/v1/machines/{name}/rpo-history", self.rpo_history)
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
        self.register_guard.close()

    async def register(self, request: web.Request) -> web.Response:
        source = request.remote or "unknown"
        self.register_guard.check(source)   # a source that keeps failing is refused before any work
        b = await read_json(request)
        name = b.name("name", "machine name", required=True)
        csr = b.text("csr", required=True, max_len=16384, multiline=True)
        nonce = b.text("nonce", required=True, max_len=256)
        proof = b.text("proof", required=True, max_len=256)
        try:
            return json_response(self.machines.register(name, csr, nonce, proof))  # type: ignore[arg-type]
        except AuthError:
            self.register_guard.refused(source, name)  # type: ignore[arg-type]
            raise

    async def status(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        return json_response(self.appliance_status())

    async def policies(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        return json_response([p.to_dict() for p in self.state.policies()])

    async def put_policy(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        b = await read_json(request)
        name = check_name(request.match_info["name"], "policy name")
        try:
            base = self.state.policy(name)
        except NotFound:
            base = Policy(name)
        for field in ("rpo_threshold", "retention", "app_consistent", "crash_interval"):
            value = b.duration(field)
            if value is not None:
                setattr(base, field, value)
        window = b.text("resync_window", max_len=32)
        if window is not None:
            base.resync_window = window
        limit = b.size("history_limit")
        if limit is not None:
            base.history_limit = limit
        return json_response(self.state.set_policy(base).to_dict())

    async def points(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        return json_response(self.machines.points(machine_name(request)))

    async def protect(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        b = await read_json(request)
        name = machine_name(request)
        await self.machines.protect(name, b.name("policy", "policy name"))
        return json_response(self.machines.machine_status(name))

    async def revoke(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        name = machine_name(request)
        self.machines.revoke(name, by=self._operator(request))
        return json_response({"revoked": name})

    async def restore_access(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        name = machine_name(request)
        return json_response(self.machines.restore_access(name, by=self._operator(request)))

    async def bookmark(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        b = await read_json(request)
        name = machine_name(request)
        self.machines.request_bookmark(name, b.name("tag", "bookmark tag"))
        return json_response({"requested": True})

    async def resync(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        b = await read_json(request)
        return json_response(self.resync_service.request(machine_name(request), now=b.boolean("now", False)))

    async def verify(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        b = await read_json(request)
        return json_response(await self.resync_service.verify(machine_name(request), heal=b.boolean("heal", True)))

    async def failover(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        b = await read_json(request)
        name = machine_name(request)
        point = b.text("point", default="latest", max_len=256)
        assert point is not None   # the default
        export_dir = b.absolute_path("export_dir")
        nbd = b.host_port("nbd")
        job = await self.recovery.test_failover(name, point, export_dir=export_dir,
                                                    nbd=f"{nbd[0]}:{nbd[1]}" if nbd else None)
        return json_response(job.to_dict())

    async def failover_cleanup(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        return json_response(await self.recovery.cleanup(machine_name(request)))

    # engine jobs (engine/jobs) ---------------------------------------------------------------------------
    async def jobs(self, request: web.Request) -> web.Response:
        """``GET /v1/jobs[?machine=NAME][&active=1]``: jobs oldest first (active: queued, running or paused)."""
        self.require_admin(request)
        q = request.query
        unknown = set(q) - {"machine", "active"}
        if unknown:
            raise InvalidInput(f"unknown query parameter(s): {', '.join(sorted(unknown))[:200]}", field="query",
                               advice="GET /v1/jobs takes machine=NAME and active=0|1.")
        if any(len(q.getall(k)) > 1 for k in q):
            raise InvalidInput("a query parameter is given twice", field="query")
        active = q.get("active", "0")
        if active not in ("0", "1", "true", "false"):
            raise InvalidInput(f"active={active[:20]!r} is not 0 or 1", field="active")
        machine = check_name(q["machine"], "machine name") if "machine" in q else None
        return json_response([j.to_dict() for j in self.job_manager.list(machine,
                                                                          active_only=active in ("1", "true"))])

    async def job(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        return json_response(self.job_manager.get(job_id(request)).to_dict())

    async def cancel_job(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        return json_response((await self.job_manager.cancel(job_id(request))).to_dict())

    async def resume_job(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        return json_response(self.job_manager.resume(job_id(request), by=self._operator(request)).to_dict())

    # alerts, events, RPO history (engine/appliance/alerts.py, rpo.py) -------------------------------------------
    async def alerts(self, request: web.Request) -> web.Response:
        """``GET /v1/alerts?active=true|false``: newest first; the active ones by default."""
        self.require_admin(request)
        q = query_params(request, {"active"}, "GET /v1/alerts takes active=true|false.")
        active = q.get("active", "true")
        if active not in ("0", "1", "true", "false"):
            raise InvalidInput(f"active={active[:20]!r} is not true or false", field="active")
        assert self.alert_store is not None
        return json_response(self.alert_store.list(active_only=active in ("1", "true")))

    async def ack_alert(self, request: web.Request) -> web.Response:
        """``POST /v1/alerts/{id}/ack``: record who has seen the alert (the operator), and when."""
        self.require_admin(request)
        await read_json(request)   # no fields; a body, if any, must still be a JSON object
        aid = request.match_info["id"]
        if not _ALERT_ID.fullmatch(aid):
            raise InvalidInput(f"{aid[:60]!r} is not an alert id (LB_CODE:subject)", field="alert id",
                               advice="List the alerts with `lifeboat alerts list --home DIR`.")
        assert self.alert_store is not None
        return json_response(self.alert_store.acknowledge(aid, self._operator(request)))

    async def events(self, request: web.Request) -> web.Response:
        """``GET /v1/events?since=EPOCH&limit=N``: events oldest first (the newest ``limit``, default 1000)."""
        self.require_admin(request)
        q = query_params(request, {"since", "limit"}, "GET /v1/events takes since=EPOCH and limit=N.")
        since = query_epoch(q.get("since"), "since")
        limit = query_count(q.get("limit"), "limit", 1000, MAX_EVENTS)
        return json_response(self.state.db.events(since=since, limit=limit))

    async def rpo_history(self, request: web.Request) -> web.Response:
        """``GET /v1/machines/{name}/rpo-history?since=EPOCH``: ``[[epoch, rpo seconds], ...]`` oldest first."""
        self.require_admin(request)
        name = machine_name(request)
        q = query_params(request, {"since"}, "GET /v1/machines/NAME/rpo-history takes since=EPOCH.")
        since = query_epoch(q.get("since"), "since")
        self.state.row(name)
        assert self.rpo_store is not None
        return json_response([[t, r] for t, r in self.rpo_store.history(name, since)])

    @staticmethod
    def _operator(request: web.Request) -> str:
        """Who acts: the admin certificate, and the operator the client names (``X-Lifeboat-Operator``, the OS
        user of the CLI or console; informative, the certificate is what authorises)."""
        who = request.headers.get("X-Lifeboat-Operator", "")[:64]
        who = "".join(c for c in who if c.isprintable())
        return f"lifeboat-admin ({who})" if who else "lifeboat-admin"
