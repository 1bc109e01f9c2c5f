"""The only door from the UI to the engine: an embedded ``Appliance`` behind plain console types.

Everything here runs on the loop thread that started the appliance (docs/CONTRACT.md §1); with qasync that is the
GUI thread, so nothing here may block: engine calls that touch files are the engine's own (it offloads to its
pool), and setup steps that block run through ``asyncio.to_thread``. Optional engine features (resync, vCenter) are
looked up with ``hasattr`` so the console runs against an engine that does not have them yet.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

# The engine imports these lazily inside Appliance.start(); importing them here, at console start-up, keeps those
# imports (and PySide's import hook, which reads each new module's source) off the running event loop.
import engine.appliance.control  # noqa: F401
import engine.appliance.recovery_service  # noqa: F401
import engine.vault.local  # noqa: F401
from engine.appliance.appliance import Appliance
from engine.errors import Conflict, InvalidInput, LifeboatError, NotFound
from engine.events import Event
from engine.home import ApplianceHome
from engine.policy import Policy, format_duration, parse_duration, parse_window

try:
    import engine.vsphere.service  # noqa: F401  (optional: vCenter support, issue 4)
except ImportError:  # pragma: no cover - an engine without vCenter support
    pass

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """A replication policy as the UI edits it; durations in seconds."""
    name: str
    rpo_threshold: float = 30.0
    retention: float = 24 * 3600.0
    app_consistent: float = 3600.0
    crash_interval: float = 5.0
    resync_window: str = "22:00-06:00"


@dataclass(frozen=True, slots=True)
class PointInfo:
    """A recovery point: ``kind`` is crash-consistent or app-consistent; ``time`` in epoch seconds."""
    id: str
    seq: int
    time: float
    kind: str
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class DrillStarted:
    """What a test failover returned: the engine job, and where the drill is served or written."""
    job_id: str
    finished: bool
    point: str
    nbd: str | None = None
    exports: tuple[str, ...] = ()
    export_dir: str | None = None


def duration_text(seconds: float) -> str:
    return format_duration(seconds)


def parse_duration_text(text: str, what: str) -> float:
    """'30s', '5m', '24h' … → seconds; raises ``UserError`` (LB_INVALID_INPUT) with advice."""
    return parse_duration(text.strip(), what=what)


def check_window(text: str) -> None:
    parse_window(text.strip())


def validate_policy(spec: PolicySpec) -> PolicySpec:
    """The engine's own validation (name, interval ≤ retention, threshold, window)."""
    Policy(**asdict(spec)).validate()
    return spec


def is_initialised(home: Path) -> bool:
    return ApplianceHome(Path(home)).config.exists()


class EngineFacade:
    """The embedded appliance as the console sees it. ``start``/``stop`` must run inside the qasync loop."""

    def __init__(self, home: Path, *, listen: str | None = None) -> None:
        self.home = Path(home)
        self.listen = listen
        self.app: Appliance | None = None
        self._bus_subs: list[Callable[[Event], None]] = []

    # lifecycle -------------------------------------------------------------------------------------------
    @property
    def initialised(self) -> bool:
        return is_initialised(self.home)

    @property
    def running(self) -> bool:
        return self.app is not None

    async def start(self) -> None:
        """Start the embedded appliance in the running loop; on failure nothing is left running."""
        if self.app is not None:
            return
        app = Appliance(self.home, listen=self.listen)
        for fn in self._bus_subs:
            app.bus.subscribe(fn)
        try:
            await app.start()
        except BaseException:
            await app.stop()
            raise
        self.app = app

    async def stop(self) -> None:
        app, self.app = self.app, None
        if app is not None:
            await app.stop()

    def subscribe(self, fn: Callable[[Event], None]) -> None:
        """Deliver engine events to ``fn`` (the bridge), also across a later ``start``."""
        self._bus_subs.append(fn)
        if self.app is not None:
            self.app.bus.subscribe(fn)

    def _app(self) -> Appliance:
        if self.app is None:
            raise Conflict("the appliance is not running", advice="Finish the first-run wizard, or restart the console.")
        return self.app

    @property
    def addresses(self) -> dict[str, str]:
        app = self.app
        if app is None:
            return {}
        out = {"vault": str(app.cfg.get("vault", {}).get("path", ""))}
        if app.control_address:
            out["control"] = f"{app.control_address[0]}:{app.control_address[1]}"
        if app.data_address:
            out["data"] = f"{app.data_address[0]}:{app.data_address[1]}"
        return out

    # queries ---------------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return self._app().status()

    def machine_status(self, name: str) -> dict[str, Any]:
        return self._app().machine_status(name)

    def points(self, name: str) -> list[PointInfo]:
        return [PointInfo(p["id"], int(p["seq"]), float(p["time"]), p["kind"], p.get("tag"))
                for p in self._app().points(name)]

    def policies(self) -> list[PolicySpec]:
        app = self._app()
        assert app.db is not None
        return [PolicySpec(**asdict(p)) for p in app.db.policies()]

    def policy_of(self, name: str) -> str:
        return self._app().policy_of(name).name

    def drill_active(self, name: str) -> bool:
        app = self.app
        return bool(app and app.recovery and app.recovery.busy(name))

    def engine_job(self, job_id: str) -> dict[str, Any]:
        return self._job_manager().get(job_id).to_dict()  # type: ignore[no-any-return]

    def engine_jobs(self) -> list[dict[str, Any]]:
        """Every engine job the appliance remembers (``Job.to_dict()``, steps included), oldest first."""
        jobs = getattr(self.app, "jobs", None) if self.app is not None else None
        return [j.to_dict() for j in jobs.list()] if jobs is not None else []

    def _job_manager(self) -> Any:
        jobs = getattr(self._app(), "jobs", None)
        if jobs is None:
            raise NotFound("this engine build has no job manager", code="LB_NOT_SUPPORTED",
                           advice="Update Lifeboat.")
        return jobs

    async def cancel_engine_job(self, job_id: str) -> dict[str, Any]:
        return (await self._job_manager().cancel(job_id)).to_dict()  # type: ignore[no-any-return]

    async def resume_engine_job(self, job_id: str) -> dict[str, Any]:
        return self._job_manager().resume(job_id).to_dict()  # type: ignore[no-any-return]

    # operations ------------------------------------------------------------------------------------------
    def save_policy(self, spec: PolicySpec) -> PolicySpec:
        self._app().set_policy(Policy(**asdict(validate_policy(spec))))
        return spec

    async def protect(self, name: str, policy: str | None) -> None:
        await self._app().protect(name, policy)

    @property
    def can_resync(self) -> bool:
        return hasattr(self.app if self.app is not None else Appliance, "resync")

    async def resync(self, name: str, now: bool = True) -> Any:
        app = self._app()
        if not hasattr(app, "resync"):
            raise InvalidInput("this engine build cannot resync yet", code="LB_NOT_SUPPORTED",
                               advice="Update Lifeboat; resync arrives with the resync feature.")
        return await app.resync(name, now=now)

    async def test_failover(self, name: str, point: str, *, nbd: str | None = None,
                            export_dir: str | None = None) -> DrillStarted:
        job = await self._app().recovery.test_failover(name, point, export_dir=export_dir, nbd=nbd)
        r = job.result
        return DrillStarted(job.id, job.finished, (r.get("point") or {}).get("id", point), r.get("nbd"),
                            tuple(r.get("exports", ())), export_dir)

    async def cleanup(self, name: str) -> dict[str, Any]:
        return await self._app().recovery.cleanup(name)  # type: ignore[no-any-return]

    def request_bookmark(self, name: str, tag: str | None = None) -> None:
        self._app().request_bookmark(name, tag)

    # vCenter (engine/vsphere, optional) ------------------------------------------------------------------
    @property
    def has_vsphere(self) -> bool:
        return self.app is not None and getattr(self.app, "vsphere", None) is not None

    def _vsphere(self) -> Any:
        vs = getattr(self._app(), "vsphere", None)
        if vs is None:
            raise NotFound("vCenter support is not in this engine build", code="LB_NOT_SUPPORTED",
                           advice="Update Lifeboat to register vCenters.")
        return vs

    def inventory(self) -> Any:
        """The vCenter inventory snapshot: {"vcenters", "hosts", "vms", …}; each VM carries
        ``protected_machine`` and ``protection_state``. None without vCenter support."""
        if not self.has_vsphere:
            return None
        return self._vsphere().snapshot()

    def vcenters(self) -> list[dict[str, Any]]:
        return list(self._vsphere().list()) if self.has_vsphere else []

    async def register_vcenter(self, address: str, user: str, password: str, thumbprint: str) -> Any:
        """Register ``HOST[:PORT]`` trusting exactly the certificate ``thumbprint`` the operator accepted."""
        host, sep, port = address.strip().rpartition(":")
        if not sep or not port.isdigit():
            host, port = address.strip(), "443"
        return await self._vsphere().register(host.strip("[]"), int(port), user, password, thumbprint=thumbprint)

    async def remove_vcenter(self, host: str) -> Any:
        return await self._vsphere().remove(host)


__all__ = ["EngineFacade", "PolicySpec", "PointInfo", "DrillStarted", "LifeboatError", "duration_text",
           "parse_duration_text", "check_window", "validate_policy", "is_initialised"]
