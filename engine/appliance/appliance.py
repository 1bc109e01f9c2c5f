"""The appliance: configuration-server and process-server roles in one asyncio program.

Start it in-process inside any running loop (the console does) with ``await Appliance(home).start()`` and stop it
with ``await app.stop()``; ``lifeboat appliance run`` runs it headless.
"""

from __future__ import annotations

import asyncio
import logging
import secrets as pysecrets
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cryptography import x509

from .. import pki
from ..codec import Sealer
from ..errors import (Conflict, InvalidInput, LifeboatError, UnknownMachine, WrongPassphrase)
from ..events import Alert, EventBus
from ..home import ApplianceHome
from ..jobs import JobManager, JobStore, Scheduler
from ..jobs.appliance_tasks import ApplianceTasks
from ..names import check_name, check_unique, inside
from ..policy import DEFAULT_POLICY, Policy, health_for, parse_window
from ..records import Kind, Record
from ..registration import agent_proof, appliance_proof, check
from ..secrets import create_vault_key, load_vault_key
from ..vault.base import DiskInfo, Vault
from ..segment_log import SegmentLog as MachineCache
from ..vault.local import LocalVault
from .control import ControlAPI
from .pipeline import MachineRuntime
from .recovery_service import RecoveryService
from .process_server import AgentConnection, ProcessServer
from .state import StateDB

log = logging.getLogger(__name__)

ADMIN_CN = "lifeboat-admin"


def _in_window(window: str, t: float) -> bool:
    w = parse_window(window)
    if w is None:
        return True
    lt = time.localtime(t)
    m = lt.tm_hour * 60 + lt.tm_min
    a, b = w
    return a <= m < b if a < b else (m >= a or m < b)


def _next_window_start(window: str, t: float) -> float | None:
    """Epoch seconds of the window's next opening (now if inside it); None for 'always'."""
    w = parse_window(window)
    if w is None:
        return t
    if _in_window(window, t):
        return t
    lt = time.localtime(t)
    midnight = t - (lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec)
    start = midnight + w[0] * 60
    return start if start > t else start + 86400


def init_home(root: Path, *, control_port: int = 443, data_port: int = 9443, vault: Path | None = None,
              listen: str = "0.0.0.0", hosts: list[str] | None = None) -> dict[str, Any]:
    """Create an appliance home: CA, server and admin certificates, passphrase (0600), vault key (keyring)."""
    home = ApplianceHome(root)
    if home.config.exists():
        raise Conflict(f"{root} is already an appliance home", advice="Use another --home, or run the existing one.")
    for p, what in ((control_port, "control port"), (data_port, "data port")):
        if not 0 < p < 65536:
            raise InvalidInput(f"{what} {p} is out of range", advice="Use a TCP port between 1 and 65535.")
    if control_port == data_port:
        raise InvalidInput("control and data ports must differ")
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    home.pki.mkdir(exist_ok=True, mode=0o700)
    appliance_id = uuid.uuid4().hex
    ca = pki.CA.create(f"Lifeboat appliance CA {appliance_id[:8]}")
    ca.save(home.ca_cert, home.ca_key)
    skey = pki.new_key()
    import socket
    names = sorted({"localhost", "127.0.0.1", socket.gethostname(), *(hosts or [])})
    scert = ca.issue(skey.public_key(), f"lifeboat-appliance-{appliance_id[:8]}", server=True, hosts=names)
    home.server_cert.write_bytes(pki.cert_pem(scert))
    pki.write_private(home.server_key, pki.key_pem(skey))
    akey = pki.new_key()
    acert = ca.issue(akey.public_key(), ADMIN_CN, server=False)
    home.admin_cert.write_bytes(pki.cert_pem(acert))
    pki.write_private(home.admin_key, pki.key_pem(akey))
    passphrase = pysecrets.token_urlsafe(24)
    pki.write_private(home.passphrase, (passphrase + "\n").encode())
    create_vault_key(appliance_id)
    cfg = {"format": 1, "appliance_id": appliance_id, "listen": listen, "control_port": control_port,
           "data_port": data_port, "admin_serial": str(acert.serial_number),
           "vault": {"kind": "local", "path": str((vault or root / "vault").resolve())}}
    home.save_config(cfg)
    db = StateDB(home.db)
    db.set_meta("appliance_id", appliance_id)
    db.close()
    return cfg


class Appliance:
    def __init__(self, root: Path, *, listen: str | None = None) -> None:
        self.home = ApplianceHome(Path(root))
        self.cfg = self.home.load_config()
        self.listen = listen or self.cfg.get("listen", "0.0.0.0")
        self.bus = EventBus()
        self.db: StateDB | None = None
        self.vault: Vault | None = None
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lifeboat-cpu")
        self.runtimes: dict[str, MachineRuntime] = {}
        self.ps: ProcessServer | None = None
        self.control: Any = None
        self.recovery: Any = None
        self.jobs: JobManager | None = None     # engine jobs: one queue per machine (engine/jobs)
        self.scheduler = Scheduler()            # periodic work: statuses, resync window, bookmarks, retention
        self._tasks: list[asyncio.Task] = []
        self.control_address: tuple[str, int] | None = None
        self.data_address: tuple[str, int] | None = None
        self._consistent_from: dict[str, int] = {}
        self._runtime_lock = asyncio.Lock()

    # lifecycle -------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.home.make_private()
        self.db = StateDB(self.home.db)
        self.jobs = JobManager(JobStore(self.db.db), self.bus)
        await self.jobs.start()   # jobs a previous run left unfinished are marked interrupted, never re-run
        key = load_vault_key(self.cfg["appliance_id"])
        self.sealer = Sealer(key)
        vcfg = self.cfg["vault"]
        if vcfg["kind"] != "local":
            raise InvalidInput(f"vault kind {vcfg['kind']!r} is not supported by this version")
        self.vault = LocalVault(Path(vcfg["path"]), key, executor=self.pool)
        for row in self.db.machines():
            if row["protected"] and not row["revoked"]:
                await self._runtime(row["name"])
        h = self.home
        self.ps = ProcessServer(self, pki.server_context(h.server_cert, h.server_key, h.ca_cert, require_client=True))
        self.data_address = await self.ps.start(self.listen, self.cfg["data_port"])
        self.recovery = RecoveryService(self)
        await self.recovery.start()
        from ..vsphere.service import VSphereService  # registered vCenters and their live inventory
        self.vsphere = VSphereService(self)
        await self.vsphere.start()
        self.control = ControlAPI(self)
        self.control_address = await self.control.start(self.listen, self.cfg["control_port"])
        ApplianceTasks(self).register(self.scheduler)
        await self.scheduler.start()
        log.info("appliance started: control %s data %s", self.control_address, self.data_address)

    async def stop(self) -> None:
        await self.scheduler.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.control:
            await self.control.stop()
        if getattr(self, "vsphere", None):
            await self.vsphere.stop()
        if self.jobs:
            await self.jobs.stop()   # running jobs end interrupted (stored) before their drills are closed
        if self.recovery:
            await self.recovery.stop()
        if self.ps:
            await self.ps.stop()
        for rt in self.runtimes.values():
            await rt.stop()
            rt.close_hash_indexes()
            rt.cache.close()
            await rt.vault.close()
        self.runtimes.clear()
        if self.vault:
            await self.vault.close()
        if self.db:
            self.db.close()
        self.pool.shutdown(wait=True)

    async def __aenter__(self) -> Appliance:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # machines --------------------------------------------------------------------------------------------
    def machine_row(self, name: str) -> dict[str, Any]:
        assert self.db is not None
        return self.db.machine(name)

    def policy_of(self, name: str) -> Policy:
        assert self.db is not None
        return self.db.policy(self.machine_row(name)["policy"] or DEFAULT_POLICY)

    async def _runtime(self, name: str) -> MachineRuntime:
        async with self._runtime_lock:  # protect() and an agent connecting may race: one runtime per machine
            return await self._runtime_locked(name)

    async def _runtime_locked(self, name: str) -> MachineRuntime:
        rt = self.runtimes.get(name)
        if rt is None:
            assert self.vault is not None
            mv = await self.vault.open_machine(name)
            cache = await asyncio.get_running_loop().run_in_executor(self.pool, MachineCache,
                                                                     inside(self.home.cache, name))
            rt = MachineRuntime(self, name, cache, mv)
            rt.last_seen = time.monotonic()  # RPO of an absent agent grows from now, not from never
            if cache.last_seq > mv.last_seq:
                rt.cache_pending.append((time.time_ns(), cache.last_seq))
            row = self.machine_row(name)
            rt.sync = {d["index"]: d.get("sync_cursor", 0) for d in row["disks"]}
            self.runtimes[name] = rt
            if cache.corruption:   # found while opening the cache: set aside, heal by a resync
                detail = cache.corruption
                cache.quarantine()
                rt.cache_pending.clear()
                self.corruption_found(name, "process-server cache", detail, mv.last_seq + 1)
            rt.start()
        return rt

    async def attach_agent(self, name: str, disks: list[dict], conn: AgentConnection) -> MachineRuntime:
        row = self.machine_row(name)
        known = {d["index"]: d for d in row["disks"]}
        new = []
        if not isinstance(disks, list) or not 0 < len(disks) <= 64:
            raise InvalidInput("HELLO must list 1 to 64 disks")
        for d in disks:
            # The protected machine names its disks: the name rule keeps them out of paths and export names.
            if not isinstance(d, dict):
                raise InvalidInput("a disk in HELLO must be an object")
            idx, dname, size = d.get("index"), check_name(d.get("name"), "disk name"), d.get("size")
            if (not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < 64
                    or not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= 1 << 50):
                raise InvalidInput(f"disk {dname!r}: index 0-63 and a size of 1 byte to 1 PiB are required")
            old = known.get(idx, {})
            new.append({**old, "index": idx, "name": dname, "size": size})
        check_unique([d["name"] for d in new], "disk name")
        if len({d["index"] for d in new}) != len(new):
            raise InvalidInput("two disks in HELLO have the same index")
        assert self.db is not None
        self.db.update_machine(name, disks=new)
        rt = await self._runtime(name)
        await rt.vault.ensure_disks([DiskInfo(d["index"], d["name"], d["size"]) for d in new])
        if rt.connection is not None and rt.connection is not conn:
            rt.connection.close()  # the newest connection of a machine wins
        rt.connection = conn
        rt.last_seen = time.monotonic()
        rt.open_hash_indexes()
        if getattr(self, "vsphere", None):
            self.vsphere.agent_attached(name, getattr(conn, "hello", None) or {})
        return rt

    def welcome(self, name: str) -> dict[str, Any]:
        row = self.machine_row(name)
        rt = self.runtimes[name]
        return {"protected": bool(row["protected"]), "last_seq": max(rt.cache.last_seq, rt.vault.last_seq),
                "sync": {str(d["index"]): d.get("sync_cursor", 0) for d in row["disks"]},
                "synced": {str(d["index"]): bool(d.get("synced")) for d in row["disks"]},
                "crash_interval": self.policy_of(name).crash_interval}

    def note_sync(self, rt: MachineRuntime, recs: list[Record]) -> None:
        """Remember how far initial replication is durable, so a reconnecting agent resumes there."""
        changed = False
        for r in recs:
            if r.kind == Kind.SYNC:
                end = r.offset + r.length
                if end > rt.sync.get(r.disk, 0):
                    rt.sync[r.disk] = end
                    changed = True
            elif r.kind == Kind.SYNC_DONE:
                changed = True
        if changed:
            row = self.machine_row(rt.name)
            done = {r.disk for r in recs if r.kind == Kind.SYNC_DONE}
            disks = []
            for d in row["disks"]:
                d = dict(d)
                d["sync_cursor"] = d["size"] if d["index"] in done else rt.sync.get(d["index"], 0)
                disks.append(d)
            assert self.db is not None
            self.db.update_machine(rt.name, disks=disks)

    def disk_synced(self, name: str, disk: int, seq: int) -> None:
        """A SYNC_DONE record reached the vault: the disk's replica is consistent from ``seq`` on."""
        row = self.machine_row(name)
        disks = [dict(d, synced=True, consistent_from=seq) if d["index"] == disk else d for d in row["disks"]]
        assert self.db is not None
        self.db.update_machine(name, disks=disks)
        if all(d.get("synced") for d in disks):
            cfrom = max(d.get("consistent_from", 0) for d in disks)
            self._consistent_from[name] = cfrom
            self.db.update_machine(name, state="protected")
            self.db.add_event("protected", name, seq=cfrom)

    def consistent_from(self, name: str) -> int | None:
        """First seq at which every disk's replica is consistent (initial replication done), or None."""
        c = self._consistent_from.get(name)
        if c is None:
            row = self.machine_row(name)
            if row["state"] != "protected" or not row["disks"]:
                return None
            c = self._consistent_from[name] = max(d.get("consistent_from", 0) for d in row["disks"])
        return c

    def is_consistent(self, name: str, seq: int) -> bool:
        """True when the replica at ``seq`` is a faithful image of the source (no sync or resync under way)."""
        c = self.consistent_from(name)
        if c is None or seq < c:
            return False
        for start, end in self.machine_row(name)["resync"].get("inconsistent", []):
            if seq >= start and (end is None or seq < end):
                return False
        return True

    # resync ----------------------------------------------------------------------------------------------
    def resync_started(self, name: str, seq: int, reason: str) -> None:
        """A RESYNC_START record reached the vault: no points from ``seq`` until RESYNC_DONE."""
        assert self.db is not None
        rs = self.machine_row(name)["resync"]
        spans = rs.setdefault("inconsistent", [])
        if not spans or spans[-1][1] is not None:
            spans.append([seq, None])
        rs["reason"] = reason
        self.db.update_machine(name, resync=rs)
        self.db.add_event("resync-started", name, seq=seq, reason=reason)

    def resync_finished(self, name: str, seq: int) -> None:
        assert self.db is not None
        rs = self.machine_row(name)["resync"]
        for span in rs.get("inconsistent", []):
            if span[1] is None:
                span[1] = seq
        rs["reason"] = None
        rs.pop("request", None)
        rs["last_done"] = time.time()
        self.db.update_machine(name, resync=rs)
        self.db.add_event("resync-finished", name, seq=seq)

    def corruption_found(self, name: str, where: str, detail: str, from_seq: int,
                         ranges: list[list[int]] | None = None) -> None:
        """Stored data failed verification: report it, stop points, and heal by a resync of the range."""
        self.bus.emit(Alert(name, "LB_INTEGRITY", f"corrupt data in the {where}: {detail}",
                            "A resync of the affected range was started to heal it.", "critical"))
        assert self.db is not None
        self.db.add_event("corruption", name, where=where, detail=detail)
        reason = f"corruption detected in the {where}"
        rt = self.runtimes.get(name)
        if rt is not None and where == "vault":
            # The checksums were taken from the data before it rotted: make the resync read the vault.
            for idx_disk, idx in rt.hashes.items():
                if ranges is None:
                    idx.invalidate_all()
                for disk, off, length in ranges or []:
                    if disk == idx_disk:
                        idx.invalidate(off, length)
        self.resync_started(name, from_seq, reason)
        self.request_resync(name, now=True, reason=reason, ranges=ranges)

    async def verify(self, name: str, *, heal: bool = True) -> dict[str, Any]:
        """Re-read everything the vault holds for the machine and check it against what the source said it
        was (record hashes, authentication tags), without touching replication."""
        rt = self.runtimes.get(name)
        self.machine_row(name)
        if rt is None:
            raise Conflict(f"machine {name!r} is not protected")
        verify = getattr(rt.vault, "verify", None)
        if verify is None:
            raise Conflict("this vault backend cannot verify yet")
        rep = await verify()
        problems = list(rep.problems)
        ranges = [[p["disk"], p["offset"], p.get("length") or 65536] for p in problems
                  if p.get("disk") is not None and p.get("offset") is not None]
        if problems and heal:
            full = any(p.get("disk") is None for p in problems)
            self.corruption_found(name, "vault", problems[0]["error"], rt.vault.last_seq + 1,
                                  None if full else ranges)
        return {"machine": name, "ok": not problems, "records_checked": rep.records_checked,
                "blocks_checked": rep.blocks_checked, "problems": problems,
                "healing": bool(problems and heal)}

    def _open_resync(self, name: str) -> bool:
        return any(e is None for _, e in self.machine_row(name)["resync"].get("inconsistent", []))

    def request_resync(self, name: str, *, now: bool, reason: str = "operator request",
                       ranges: list[list[int]] | None = None) -> dict[str, Any]:
        """Compare the machine's disks with the replica (checksums) and send only what differs.

        Without ``now`` it waits for the policy's resync window. Delivered to the agent at once, or when it
        connects.
        """
        assert self.db is not None
        row = self.machine_row(name)
        if not row["protected"]:
            raise Conflict(f"machine {name!r} is not protected", advice="Enable protection first.")
        rs = row["resync"]
        rt = self.runtimes.get(name)
        pending = int(((rt.agent_stats.get("resync") or {}) if rt and rt.connection else {}).get("dirty", 0))
        if now and ranges is None and pending and reason == "operator request":
            ranges = []   # a resync is already queued (crash, resize, ...): run it now rather than compare all
        rs["request"] = {"full": ranges is None, "ranges": ranges or [], "reason": reason, "now": now,
                         "time": time.time(), "delivered": False}
        self.db.update_machine(name, resync=rs)
        self.db.add_event("resync-requested", name, reason=reason, now=now)
        self._deliver_resync(name)
        return self.machine_status(name)["resync"]

    async def resync(self, name: str, now: bool = True) -> dict[str, Any]:
        """Console entry point (same as ``lifeboat resync``)."""
        return self.request_resync(name, now=now)

    def _deliver_resync(self, name: str) -> None:
        rt = self.runtimes.get(name)
        rs = self.machine_row(name)["resync"]
        req = rs.get("request")
        if not req or req.get("delivered") or rt is None or rt.connection is None:
            return
        rt.connection.send_control({"resync": {"full": req["full"], "ranges": req["ranges"],
                                               "reason": req["reason"], "go": bool(req["now"])}})
        req["delivered"] = True
        assert self.db is not None
        self.db.update_machine(name, resync=rs)

    def _resync_tick(self, name: str) -> None:
        """Deliver pending requests; start a waiting resync when its window opens (or it was asked for now)."""
        rt = self.runtimes.get(name)
        if rt is None or rt.connection is None:
            return
        self._deliver_resync(name)
        info = rt.agent_stats.get("resync") or {}
        if info.get("dirty", 0) and not info.get("running"):
            req = self.machine_row(name)["resync"].get("request") or {}
            if req.get("now") or _in_window(self.policy_of(name).resync_window, time.time()):
                rt.connection.send_control({"resync": {"go": True}})

    def resync_status(self, name: str) -> dict[str, Any]:
        row = self.machine_row(name)
        rt = self.runtimes.get(name)
        rs = row["resync"]
        # what the agent last said, only while it is connected (a cut resync is not "running")
        info = (rt.agent_stats.get("resync") if rt and rt.connection else None) or {}
        pending = int(info.get("dirty", 0)) + int(info.get("inflight", 0))
        req = rs.get("request")
        # a request counts until its RESYNC_DONE arrives (the agent's report may lag the request by a heartbeat)
        required = bool(pending or self._open_resync(name) or req)
        total = max(int(info.get("total") or 0), pending, 1)
        running = bool(info.get("running"))
        scheduled = None
        if required and not running and not (req or {}).get("now"):
            scheduled = _next_window_start(self.policy_of(name).resync_window, time.time())
        return {"required": required, "reason": info.get("reason") or rs.get("reason") or (req or {}).get("reason"),
                "progress": round(1 - pending / total, 4) if required else 1.0,
                "scheduled_for": scheduled, "running": running, "blocks_pending": pending,
                "eta_seconds": info.get("eta_seconds"), "last_done": rs.get("last_done"),
                "error": (rt.agent_stats.get("error") if rt and rt.connection and required else None)}

    def set_error(self, name: str, exc: BaseException) -> None:
        err = exc.to_dict() if isinstance(exc, LifeboatError) else {"code": "LB_ERROR", "message": str(exc)}
        self.bus.emit(Alert(name, err["code"], err["message"], err.get("advice", ""), "critical"))

    # operations (control API and console) ---------------------------------------------------------------
    def register(self, name: str, csr_pem: str, nonce: str, proof: str) -> dict[str, str]:
        """A wrong passphrase raises :class:`WrongPassphrase` and writes nothing: the control API's
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
        assert self.db is not None
        self.db.add_machine(name, cert.serial_number)
        self.db.add_event("registered", name)
        ca_pem = self.home.ca_cert.read_bytes()
        cert_pem = pki.cert_pem(cert)
        server_der = pki.cert_der(x509.load_pem_x509_certificate(self.home.server_cert.read_bytes()))
        return {"cert": cert_pem.decode(), "ca": ca_pem.decode(), "data_port": self.cfg["data_port"],
                "proof": appliance_proof(passphrase, nonce, ca_pem, cert_pem, server_der)}

    async def protect(self, name: str, policy: str | None = None) -> None:
        assert self.db is not None
        row = self.machine_row(name)
        if row["revoked"]:
            raise UnknownMachine(f"machine {name!r} has been revoked")
        pol = self.db.policy(policy or row["policy"] or DEFAULT_POLICY)
        if row["protected"]:
            self.db.update_machine(name, policy=pol.name)
            return
        self.db.update_machine(name, protected=1, policy=pol.name, state="initial-sync")
        self.db.add_event("protect", name, policy=pol.name)
        rt = await self._runtime(name)
        if rt.connection is not None:
            rt.connection.send_control({"protected": True, **self.welcome(name)})

    def policies(self) -> list[Policy]:
        assert self.db is not None
        return self.db.policies()

    def set_policy(self, policy: Policy) -> Policy:
        assert self.db is not None
        self.db.put_policy(policy)
        return policy

    def revoke(self, name: str, by: str = "operator") -> None:
        """Final until :meth:`restore_access`: the certificate is refused at once, the name cannot register."""
        assert self.db is not None
        self.machine_row(name)
        self.db.revoke(name, by)
        self.db.add_event("revoked", name, by=by)
        rt = self.runtimes.get(name)
        if rt and rt.connection:
            rt.connection.close()

    def restore_access(self, name: str, by: str = "operator") -> dict[str, Any]:
        """An operator's explicit decision to let a revoked machine register again (it keeps its vault)."""
        assert self.db is not None
        row = self.machine_row(name)
        if not row["revoked"]:
            raise Conflict(f"machine {name!r} is not revoked", advice="Nothing to restore.")
        self.db.restore_access(name)
        self.db.add_event("access-restored", name, by=by)
        return {"machine": name, "restored": True,
                "next": f"register the agent again: lifeboat agent register --name {name} ..."}

    def request_bookmark(self, name: str, tag: str | None) -> None:
        if tag is not None:
            check_name(tag, "bookmark tag")
        rt = self.runtimes.get(name)
        if rt is None or rt.connection is None:
            raise Conflict(f"the agent of {name!r} is not connected", advice="Start the agent, then try again.")
        rt.connection.send_control({"bookmark": {"tag": tag}})

    def machine_status(self, name: str) -> dict[str, Any]:
        row = self.machine_row(name)
        rt = self.runtimes.get(name)
        pol = self.policy_of(name)
        state = row["state"]
        rpo = rt.rpo_seconds() if rt else 0.0
        resync = self.resync_status(name)
        if state == "protected" and resync["required"]:
            state = "resyncing" if resync["running"] else "resync-required"
        if rt and rt.error and state not in ("resync-required",):
            state = "error"
        total = sum(d["size"] for d in row["disks"]) or 1
        done = sum(d["size"] if d.get("synced") else d.get("sync_cursor", 0) for d in row["disks"])
        points = rt.vault.points() if rt else []
        return {
            "name": name, "state": state, "rpo_seconds": round(rpo, 3), "health": health_for(rpo, pol.rpo_threshold, state),
            "policy": pol.name, "rpo_threshold": pol.rpo_threshold,
            "sync_progress": round(min(done / total, 1.0), 4),
            "agent_connected": bool(rt and rt.connection),
            "last_point": points[-1].to_dict() if points else None, "points": len(points),
            "error": rt.error if rt else None, "resync": resync,
            "agent_error": (rt.agent_stats.get("error") if rt and rt.connection else None),
            "churn_bytes_per_s": rt.churn.rate() if rt else 0.0,
            "upload_bytes_per_s": rt.upload.rate() if rt else 0.0,
            "cache_bytes": rt.cache.bytes if rt else 0,
            "disks": [{"index": d["index"], "name": d["name"], "size": d["size"], "synced": bool(d.get("synced")),
                       "sync_cursor": d["size"] if d.get("synced") else d.get("sync_cursor", 0)} for d in row["disks"]],
        }

    def status(self) -> dict[str, Any]:
        assert self.db is not None
        all_rows = self.db.machines()
        rows = [r for r in all_rows if not r["revoked"]]
        return {"machines": [self.machine_status(r["name"]) for r in rows if r["protected"]],
                "registered": [{"name": r["name"], "protected": False} for r in rows if not r["protected"]],
                "revoked": [{"name": r["name"], "revoked_at": r["revoked_at"], "revoked_by": r["revoked_by"],
                             "protected": bool(r["protected"])} for r in all_rows if r["revoked"]],
                "control_port": self.control_address[1] if self.control_address else None,
                "data_port": self.data_address[1] if self.data_address else None}

    def points(self, name: str) -> list[dict[str, Any]]:
        self.machine_row(name)
        rt = self.runtimes.get(name)
        return [p.to_dict() for p in rt.vault.points()] if rt else []

    # background ------------------------------------------------------------------------------------------
    async def prune_all(self) -> None:
        """Retention: fold history older than each policy's window into the replica."""
        for name, rt in list(self.runtimes.items()):
            pol = self.policy_of(name)
            cutoff = time.time() - pol.retention
            pts = [p for p in rt.vault.points() if p.time >= cutoff]
            old = [p for p in rt.vault.points() if p.time < cutoff]
            if old and pts and (self.recovery is None or not self.recovery.busy(name)):
                await rt.vault.prune(pts[0].seq)
