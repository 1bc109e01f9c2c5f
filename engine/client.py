"""Admin client of the control API, used by the CLI on the appliance (mutual TLS with the admin certificate)."""

from __future__ import annotations

import getpass
import json
import socket
import ssl
import urllib.parse
from pathlib import Path
from typing import Any

from . import errors, net
from .errors import ApplianceNotRunning, ApplianceUnreachable, ProtocolError
from .home import ApplianceHome


def _operator() -> str:
    """Who runs this command (informative, recorded with revocations): OS user @ host."""
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{socket.gethostname()}"[:64]


class AdminClient:
    def __init__(self, home: Path, timeout: float = 60.0) -> None:
        self.home = ApplianceHome(Path(home))
        self.cfg = self.home.load_config()
        self.port = self.cfg["control_port"]
        self.timeout = timeout
        self.ctx = net.client_context(self.home.ca_cert, self.home.admin_cert, self.home.admin_key)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            resp = net.https_request("127.0.0.1", self.port, method, path, context=self.ctx, timeout=self.timeout,
                                     purpose="admin", body=json.dumps(body or {}),
                                     headers={"Content-Type": "application/json", "X-Lifeboat-Operator": _operator()})
            raw = resp.body
        except ConnectionRefusedError:
            raise ApplianceNotRunning(f"the appliance of {self.home.root} is not running (port {self.port})",
                                       advice=f"Start it: `lifeboat appliance run --home {self.home.root}`.") from None
        except (OSError, ssl.SSLError, socket.timeout) as exc:
            raise ApplianceUnreachable(f"cannot talk to the appliance on port {self.port}: {exc}") from None
        try:
            data = json.loads(raw or b"null")
        except json.JSONDecodeError:
            raise ProtocolError("the appliance answered with something that is not JSON") from None
        if resp.status >= 400:
            err = (data or {}).get("error", {}) if isinstance(data, dict) else {}
            raise errors.from_dict(err, f"HTTP {resp.status}")
        return data

    # engine jobs (GET/POST /v1/jobs…) ----------------------------------------------------------------------
    def jobs(self, machine: str | None = None, *, active: bool = False) -> list[dict[str, Any]]:
        """Jobs oldest first (``Job.to_dict()``): of one machine if given; only unfinished ones with ``active``."""
        q = {k: v for k, v in (("machine", machine), ("active", "1" if active else None)) if v}
        return self.call("GET", "/v1/jobs" + ("?" + urllib.parse.urlencode(q) if q else ""))  # type: ignore[no-any-return]

    def job(self, job_id: str) -> dict[str, Any]:
        return self.call("GET", f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}")  # type: ignore[no-any-return]

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self.call("POST", f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}/cancel")  # type: ignore[no-any-return]

    def resume_job(self, job_id: str) -> dict[str, Any]:
        return self.call("POST", f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}/resume")  # type: ignore[no-any-return]

    # alerts and events ------------------------------------------------------------------------------------------
    def alerts(self, *, active: bool = True) -> list[dict[str, Any]]:
        return self.call("GET", "/v1/alerts?active=" + ("true" if active else "false"))  # type: ignore[no-any-return]

    def acknowledge_alert(self, alert_id: str) -> dict[str, Any]:
        return self.call("POST", f"/v1/alerts/{urllib.parse.quote(alert_id, safe='')}/ack")  # type: ignore[no-any-return]

    def events(self, since: float | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        q = {"limit": str(limit), **({"since": repr(since)} if since is not None else {})}
        return self.call("GET", "/v1/events?" + urllib.parse.urlencode(q))  # type: ignore[no-any-return]

    def rpo_history(self, machine: str, since: float | None = None) -> list[list[float]]:
        q = "" if since is None else "?since=" + repr(since)
        return self.call("GET", f"/v1/machines/{urllib.parse.quote(machine, safe='')}/rpo-history{q}")  # type: ignore[no-any-return]
