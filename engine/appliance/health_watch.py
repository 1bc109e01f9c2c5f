"""Where alerts and transition events come from (the alert store, ``alerts.py``, records them off the bus).

- :class:`MachineWatch` reads each machine's status every second (the scheduler's status task hands it over) and
  writes every **state** and **health** transition to the event log with its reason, and raises and clears the
  machine alerts: ``LB_RPO_BREACH`` (RPO over the policy's threshold; cleared once it has stayed under it for
  :data:`CLEAR_AFTER` seconds), ``LB_AGENT_SILENT`` (no frame from the agent for ``policy.AGENT_SILENT_AFTER``)
  and ``LB_RESYNC_REQUIRED``.
- :class:`ApplianceWatch` raises the appliance-wide ones: ``LB_VCENTER_UNREACHABLE`` (a vCenter's connection in
  error; cleared when it connects again or is removed), ``LB_JOB_FAILED`` (a job ended failed), ``LB_CERT_EXPIRING``
  (the appliance's CA, server or admin certificate expires within :data:`CERT_WARN_DAYS`, checked at start and
  daily) and ``LB_VAULT_KEY_NOT_BACKED_UP`` (raised at start until a key backup is recorded: there is no backup
  feature yet, so it stays until acknowledged).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509

from ..events import Alert, Event, EventBus, JobChanged
from ..policy import AGENT_SILENT_AFTER, say_duration
from ..vsphere.events import VCenterStatus

if TYPE_CHECKING:
    from .machine_state import MachineState

__all__ = ["MachineWatch", "ApplianceWatch", "CLEAR_AFTER", "CERT_WARN_DAYS"]

log = logging.getLogger(__name__)

#: An RPO breach clears only after the RPO has stayed under the threshold this long (no flapping at the edge).
CLEAR_AFTER = 5.0
CERT_WARN_DAYS = 30


class MachineWatch:
    """Transitions and machine alerts from the statuses. ``active``: alert ids the store holds as active (after
    a restart, what no longer holds is cleared on the first look)."""

    def __init__(self, state: MachineState, bus: EventBus, active: Iterable[str] = ()) -> None:
        self.state = state
        self.bus = bus
        self.active = set(active)
        self._last: dict[str, dict[str, str | None]] = {}
        for kind in ("state", "health"):
            for machine, data in state.db.last_events(kind).items():
                self._last.setdefault(machine, {})[kind] = data.get("to")
        self._under_since: dict[str, float] = {}

    def observe(self, name: str, st: dict[str, Any], now: float | None = None) -> None:
        now = time.time() if now is None else now
        last = self._last.setdefault(name, {})
        reason = st.get("health_reason") or ""
        if last.get("state") != st["state"]:
            self.state.event("state", name, to=st["state"], reason=reason, **{"from": last.get("state")})
            last["state"] = st["state"]
        if last.get("health") != st["health"]:
            self.state.event("health", name, to=st["health"], reason=reason, **{"from": last.get("health")})
            last["health"] = st["health"]

        rpo, thr = float(st["rpo_seconds"]), float(st["rpo_threshold"])
        rid = f"LB_RPO_BREACH:{name}"
        if st.get("rpo_known") and rpo > thr:
            self._under_since.pop(name, None)
            if rid not in self.active:
                self._raise(name, "LB_RPO_BREACH", rid, "critical",
                            f"RPO of {name} is {say_duration(rpo)}, over its {say_duration(thr)} threshold"
                            + (f" ({reason})" if reason else ""),
                            "Check that the agent runs and reaches the appliance's data port; the RPO falls back "
                            "once its writes are in the vault.", {"rpo_seconds": rpo, "threshold": thr}, now)
        elif rid in self.active:
            since = self._under_since.setdefault(name, now)
            if now - since >= CLEAR_AFTER:
                self._clear(name, "LB_RPO_BREACH", rid, f"RPO of {name} is back under its threshold", now)
                self._under_since.pop(name, None)

        silent = st.get("agent_silent_seconds")
        sid = f"LB_AGENT_SILENT:{name}"
        if silent is not None and silent >= AGENT_SILENT_AFTER:
            if sid not in self.active:
                self._raise(name, "LB_AGENT_SILENT", sid, "warning",
                            f"the agent of {name} has not been heard from for {say_duration(silent)}",
                            "Check that the machine is up, its agent runs (`lifeboat agent run`) and it reaches "
                            "the appliance's data port.", {"last_heard": st.get("last_heard")}, now)
        elif sid in self.active:
            self._clear(name, "LB_AGENT_SILENT", sid, f"the agent of {name} is heard from again", now)

        rs = st.get("resync") or {}
        xid = f"LB_RESYNC_REQUIRED:{name}"
        if rs.get("required"):
            if xid not in self.active:
                self._raise(name, "LB_RESYNC_REQUIRED", xid, "warning",
                            f"{name} needs a resync: {rs.get('reason') or 'unknown reason'}",
                            "It runs in the policy's resync window; start it now with `lifeboat resync --now`.",
                            {"reason": rs.get("reason")}, now)
        elif xid in self.active:
            self._clear(name, "LB_RESYNC_REQUIRED", xid, f"the resync of {name} is done", now)

    def forget(self, name: str) -> None:
        self._last.pop(name, None)

    def _raise(self, name: str, code: str, aid: str, severity: str, message: str, advice: str,
               details: dict[str, Any], now: float) -> None:
        self.active.add(aid)
        self.bus.emit(Alert(name, code, message, advice, severity, details, id=aid, component="machine",
                            state="raised", time=now))

    def _clear(self, name: str, code: str, aid: str, message: str, now: float) -> None:
        self.active.discard(aid)
        self.bus.emit(Alert(name, code, message, "", "info", {}, id=aid, component="machine", state="cleared",
                            time=now))


class ApplianceWatch:
    """Appliance-wide alert sources: vCenter connections and jobs (off the bus), certificates and the vault key."""

    def __init__(self, bus: EventBus, *, certificates: dict[str, Path], key_backed_up: bool = False) -> None:
        self.bus = bus
        self.certificates = certificates
        self.key_backed_up = key_backed_up
        self._unsubscribe = bus.subscribe(self._on_event)

    def close(self) -> None:
        self._unsubscribe()

    def start(self) -> None:
        if not self.key_backed_up:
            self.bus.emit(Alert(None, "LB_VAULT_KEY_NOT_BACKED_UP",
                                "the vault key is only in this appliance's OS keyring: without a copy, losing "
                                "this machine loses every recovery point",
                                "Copy the keyring entry 'lifeboat / vault-key/<appliance id>' to a safe place "
                                "(a key backup command is planned), then acknowledge this alert.",
                                "warning", {}, id="LB_VAULT_KEY_NOT_BACKED_UP", component="keyring"))
        self.check_certificates()

    def check_certificates(self, now: float | None = None) -> None:
        """Raise LB_CERT_EXPIRING for each certificate expiring within CERT_WARN_DAYS, clear it otherwise."""
        now = time.time() if now is None else now
        for what, path in self.certificates.items():
            aid = f"LB_CERT_EXPIRING:{what}"
            try:
                cert = x509.load_pem_x509_certificate(path.read_bytes())
            except (OSError, ValueError) as exc:
                log.warning("certificate %s (%s) unreadable: %s", what, path, exc)
                continue
            end = cert.not_valid_after_utc.timestamp()
            left = end - now
            if left <= CERT_WARN_DAYS * 86400:
                when = dt.datetime.fromtimestamp(end, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
                self.bus.emit(Alert(None, "LB_CERT_EXPIRING",
                                    f"the appliance's {what} certificate {'expired' if left <= 0 else 'expires'} "
                                    f"{when}" + ("" if left <= 0 else f" (in {say_duration(left)})"),
                                    "Renew the appliance's certificates before they expire: agents and the "
                                    "console refuse an expired one.", "critical" if left <= 7 * 86400 else "warning",
                                    {"subject": what, "path": str(path), "not_after": end}, id=aid,
                                    component="certificate"))
            else:
                self.bus.emit(Alert(None, "LB_CERT_EXPIRING", f"the {what} certificate is valid", "", "info",
                                    {"subject": what}, id=aid, component="certificate", state="cleared"))

    def _on_event(self, ev: Event) -> None:
        if isinstance(ev, JobChanged):
            if ev.step is None and ev.state == "failed":
                err = (ev.job or {}).get("error") or {}
                title = (ev.job or {}).get("title") or ev.kind
                self.bus.emit(Alert(ev.machine, "LB_JOB_FAILED",
                                    f"job {ev.job_id} ({title}) failed: {err.get('code', 'LB_ERROR')}: "
                                    f"{err.get('message', 'see the job')}",
                                    err.get("advice") or f"See `lifeboat job show {ev.job_id}`.", "warning",
                                    {"job": ev.job_id, "kind": ev.kind}, id=f"LB_JOB_FAILED:{ev.job_id}",
                                    component="job"))
            return
        if isinstance(ev, VCenterStatus):
            host, state, error = ev.vcenter, ev.state, ev.error
            aid = f"LB_VCENTER_UNREACHABLE:{host}"
            if state == "error":
                err = error or {}
                self.bus.emit(Alert(None, "LB_VCENTER_UNREACHABLE",
                                    f"vCenter {host} is unreachable: {err.get('code', 'LB_ERROR')}: "
                                    f"{err.get('message', '')}".rstrip(": "),
                                    err.get("advice") or "Check the vCenter's address, network and credentials "
                                    "(`lifeboat vcenter list`).", "warning", {"vcenter": host}, id=aid,
                                    component="vcenter"))
            elif state in ("connected", "removed"):
                self.bus.emit(Alert(None, "LB_VCENTER_UNREACHABLE", f"vCenter {host} is {state}", "", "info",
                                    {"vcenter": host}, id=aid, component="vcenter", state="cleared"))
