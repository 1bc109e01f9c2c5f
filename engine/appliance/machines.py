"""Protected machines on the appliance: their rows in state.db and the operations on them.

``Machines`` holds the operations of the control API and the console on a machine: register, protect, revoke, an
on-demand bookmark, and the status the console shows.
"""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Any, Callable

from cryptography import x509

from .. import pki
from ..errors import Conflict, InvalidInput, UnknownMachine, WrongPassphrase
from ..events import EventBus, MachineStatus
from ..home import ApplianceHome
from ..names import check_name
from ..policy import DEFAULT_POLICY, assess_health
from ..registration import agent_proof, appliance_proof, check
from .machine_state import MachineState

if TYPE_CHECKING:
    from .resync import Resync
    from .runtimes import Runtimes

__all__ = ["Machines"]

#: The initial sync's ETA is taken from the progress of about this many seconds.
ETA_WINDOW = 30.0


class Machines:
    """Operations on machines (control API and console): register, protect, revoke, bookmark, status."""

    def __init__(self, state: MachineState, runtimes: Runtimes, resync: Resync, bus: EventBus, home: ApplianceHome,
                 data_port: int, paused: Callable[[], str] = lambda: "") -> None:
        """``paused()``: why replication is paused appliance-wide (the vault's filesystem is full), "" when not."""
        self.state = state
        self.paused = paused
        self.runtimes = runtimes
        self.resync = resync
        self.bus = bus
        self.home = home
        self.data_port = data_port
        self._sync_samples: dict[str, collections.deque[tuple[float, int]]] = {}
        #: What ``machine_status`` shows of a failed-over machine (host, point): set by the composition root to
        #: the failover service's lookup (engine/recovery/failover.py).
        self.failover_of: Callable[[str], dict[str, Any] | None] = lambda name: None
        #: What holds the machine's history from being folded (set by the appliance: HistoryPins.view).
        self.history_pin: Callable[[str], dict[str, Any] | None] = lambda name: None
        #: failback's lookup (engine/recovery/failback.py): the reverse direction of a failed-over machine
        self.failback_of: Callable[[str], dict[str, Any] | None] = lambda name: None

    def register(self, name: str, csr_pem: str, nonce: str, proof: str) -> dict[str, Any]:
        """``POST /v1/register``: sign the agent's CSR when its proof shows it knows the connection passphrase.

        A wrong passphrase raises :class:`WrongPassphrase` and writes nothing: the control API's
        :class:`RegisterGuard` rate-limits and records refused attempts."""
        check_name(name, "machine name")
        passphrase = self.home.passphrase.read_text().strip()
        if not check(agent_proof(passphrase, name, str(nonce), csr_pem.encode()), proof):
            raise WrongPassphrase("registration refused: wrong connection passphrase")
        ca = pki.CA.load(self.home.ca_cert, self.home.ca_key)
        try:
            cert = ca.sign_csr(csr_pem.encode(), name)
        except ValueError as exc:
            raise InvalidInput(f"bad certificate request: {exc}") from None
        self.state.add(name, cert.serial_number)
        self.state.event("registered", name)
        ca_pem = self.home.ca_cert.read_bytes()
        cert_pem = pki.cert_pem(cert)
        server_der = pki.cert_der(x509.load_pem_x509_certificate(self.home.server_cert.read_bytes()))
        return {"cert": cert_pem.decode(), "ca": ca_pem.decode(), "data_port": self.data_port,
                "proof": appliance_proof(passphrase, nonce, ca_pem, cert_pem, server_der)}

    async def protect(self, name: str, policy: str | None = None) -> None:
        row = self.state.row(name)
        if row["revoked"]:
            raise UnknownMachine(f"machine {name!r} has been revoked")
        pol = self.state.policy(policy or row["policy"] or DEFAULT_POLICY)
        if row["protected"]:
            self.state.update(name, policy=pol.name)
            return
        self.state.update(name, protected=1, policy=pol.name, state="initial-sync")
        self.state.event("protect", name, policy=pol.name)
        rt = await self.runtimes.open(name)
        if rt.connection is not None:
            rt.connection.send_control({"protected": True, **self.runtimes.welcome(name)})

    def revoke(self, name: str, by: str = "operator") -> None:
        """Final until :meth:`restore_access`: the certificate is refused at once, the name cannot register."""
        self.state.row(name)
        self.state.revoke(name, by)
        self.state.event("revoked", name, by=by)
        rt = self.runtimes.get(name)
        if rt and rt.connection:
            rt.connection.close()

    def restore_access(self, name: str, by: str = "operator") -> dict[str, Any]:
        """An operator's explicit decision to let a revoked machine register again (it keeps its vault)."""
        row = self.state.row(name)
        if not row["revoked"]:
            raise Conflict(f"machine {name!r} is not revoked", advice="Nothing to restore.")
        self.state.restore_access(name)
        self.state.event("access-restored", name, by=by)
        return {"machine": name, "restored": True,
                "next": f"register the agent again: lifeboat agent register --name {name} ..."}

    def request_bookmark(self, name: str, tag: str | None) -> None:
        if tag is not None:
            check_name(tag, "bookmark tag")
        self.state.row(name)   # an unknown machine says so (not "its agent is not connected")
        rt = self.runtimes.get(name)
        if rt is None or rt.connection is None:
            raise Conflict(f"the agent of {name!r} is not connected", advice="Start the agent, then try again.")
        rt.connection.send_control({"bookmark": {"tag": tag}})

    def machine_status(self, name: str) -> dict[str, Any]:
        row = self.state.row(name)
        rt = self.runtimes.get(name)
        pol = self.state.policy_of(name)
        state = row["state"]
        if row["protected"] and state == "unprotected":
            state = "initial-sync"   # protection is on: the first status already says so
        points = rt.vault.points() if rt else []
        rpo_known = bool(points)     # no recovery point yet: there is no RPO to show
        rpo = rt.rpo_seconds() if rt else 0.0
        resync = self.resync.status(name)
        if state == "protected" and resync["required"]:
            state = "resyncing" if resync["running"] else "resync-required"
        if rt and rt.error and state not in ("resync-required",):
            state = "error"
        # One cursor per disk for the disk rows and the machine's percentage: the durable one in state.db, or the
        # runtime's newer one (written to state.db at most once a second).
        live = rt.sync if rt else {}
        disks = []
        for d in row["disks"]:
            cur = d["size"] if d.get("synced") else min(d["size"], max(d.get("sync_cursor", 0), live.get(d["index"], 0)))
            disks.append({"index": d["index"], "name": d["name"], "size": d["size"], "synced": bool(d.get("synced")),
                          "sync_cursor": cur})
        total = sum(d["size"] for d in disks)
        done = sum(d["sync_cursor"] for d in disks)
        progress = round(min(done / total, 1.0), 4) if total else 0.0
        eta = self._sync_eta(name, done, total) if state == "initial-sync" else None
        paused = self.paused() if row["protected"] else ""
        if paused and state in ("protected", "initial-sync", "resync-required", "resyncing"):
            state = "paused"      # nothing reaches the vault: the machine is not being protected right now
        failover = self.failover_of(name)
        if failover is not None and failover.get("kind") == "test" and state in ("protected", "paused"):
            # a drill of it runs on a recovery host (a plan's test run); its replication goes on meanwhile
            state = "failover-test"
        connected = bool(rt and rt.connection)
        last_heard = rt.clock.last_heard if rt else row.get("last_heard")
        fresh = bool(rt and rt.clock.fresh(connected))
        # A failed-over machine's agent is refused by design (its machine runs on the recovery host; reprotected, the
        # agent serves the reverse direction instead): its silence is no alert; the failback view shows the target.
        by_design = row["state"] == "failed-over"
        silent_for = None if fresh or last_heard is None or by_design else max(0.0, time.time() - last_heard)
        health, reason = assess_health(state=state, rpo_seconds=rpo, rpo_known=rpo_known, threshold=pol.rpo_threshold,
                                       silent_for=silent_for, sync_progress=progress, resync_reason=resync.get("reason"),
                                       resync_progress=resync.get("progress"), error=rt.error if rt else None,
                                       paused_reason=paused)
        return {
            "name": name, "state": state, "rpo_seconds": round(rpo, 3) if rpo_known else 0.0, "health": health,
            "health_reason": reason, "rpo_known": rpo_known, "last_heard": last_heard,
            "agent_silent_seconds": None if silent_for is None else round(silent_for, 1),
            "policy": pol.name, "rpo_threshold": pol.rpo_threshold,
            "sync_progress": progress, "sync_eta_seconds": eta,
            "agent_connected": connected,
            "last_point": points[-1].to_dict() if points else None, "points": len(points),
            "error": rt.error if rt else None, "resync": resync,
            "agent_error": (rt.agent_stats.get("error") if rt and rt.connection else None),
            "churn_bytes_per_s": rt.churn.rate() if rt else 0.0,
            "upload_bytes_per_s": rt.upload.rate() if rt else 0.0,
            "cache_bytes": rt.cache.bytes if rt else 0,
            "disks": disks,
            "failover": failover if state in ("failed-over", "failover-test") else None,
            "history_pin": self.history_pin(name),
            **(self._reverse(name) if state == "failed-over" else {}),
        }

    def _reverse(self, name: str) -> dict[str, Any]:
        """A failed-over machine being reprotected or failed back: its state and the reverse direction's figures
        (engine/recovery/failback.py) in place of the forward ones."""
        fb = self.failback_of(name)
        if fb is None or fb["state"] == "reenabled":
            return {}
        return {"state": fb["state"], "direction": fb["direction"], "rpo_seconds": fb["rpo_seconds"],
                "bytes_compared": fb["bytes_compared"], "bytes_sent": fb["bytes_sent"], "progress": fb["progress"],
                "eta": fb["eta_seconds"], "failback": fb}

    def _sync_eta(self, name: str, done: int, total: int) -> float | None:
        """Seconds left of the initial sync at the rate of the last :data:`ETA_WINDOW` seconds (None: no rate)."""
        now = time.monotonic()
        samples = self._sync_samples.setdefault(name, collections.deque())
        if not samples or now - samples[-1][0] >= 1.0:
            samples.append((now, done))
        while len(samples) > 2 and now - samples[1][0] >= ETA_WINDOW:
            samples.popleft()
        t0, d0 = samples[0]
        if now - t0 < 1.0 or done <= d0:
            return None
        return round((total - done) / ((done - d0) / (now - t0)), 1)

    def status(self) -> dict[str, Any]:
        """Every registered machine: the protected ones with their status, and the revoked ones (when, by whom)."""
        all_rows = self.state.rows()
        rows = [r for r in all_rows if not r["revoked"]]
        return {"machines": [self.machine_status(r["name"]) for r in rows if r["protected"]],
                "registered": [{"name": r["name"], "protected": False} for r in rows if not r["protected"]],
                "revoked": [{"name": r["name"], "revoked_at": r["revoked_at"], "revoked_by": r["revoked_by"],
                             "protected": bool(r["protected"])} for r in all_rows if r["revoked"]]}

    def points(self, name: str) -> list[dict[str, Any]]:
        self.state.row(name)
        rt = self.runtimes.get(name)
        return [p.to_dict() for p in rt.vault.points()] if rt else []

    def emit_status(self, name: str) -> dict[str, Any]:
        """Emit the machine's MachineStatus event; returns its status."""
        st = self.machine_status(name)
        self.bus.emit(MachineStatus(name, st["state"], st["health"], st["rpo_seconds"], st["sync_progress"],
                                    (st["last_point"] or {}).get("time"), st["churn_bytes_per_s"],
                                    st["upload_bytes_per_s"], st["health_reason"], st["rpo_known"],
                                    st["last_heard"], st["sync_eta_seconds"]))
        return st
