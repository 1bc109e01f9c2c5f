"""VSphereService: registered vCenter/ESXi endpoints, their live inventories, and machine ↔ VM matching.

Runs inside the appliance (``app.vsphere``), on its loop thread; it gets the machine state, the resync service, the
event bus and the control API's admin check, not the appliance. All pyVmomi calls happen in threads: registration
probes through ``asyncio.to_thread``, inventories in one ``Watcher`` thread per endpoint. Passwords go to the OS
keyring and nowhere else (not the DB, not logs, not events).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable

from aiohttp import web

from ..appliance.control_http import read_json
from ..appliance.request_body import MAX_BODY, Body, json_response
from ..errors import AlreadyExists, InvalidInput
from ..events import Alert
from ..secrets import delete_secret, get_secret, set_secret
from .connect import Target, connect, describe, disconnect, normalise_thumbprint
from .discovery import build_inventory
from .errors import LoginFailed, UnknownVCenter, VCenterUnreachable, VSphereError
from .events import (InventorySynced, MachineMatched, VCenterStatus, VMAdded, VMDiskResized, VMPowerChanged,
                     VMRemoved, VMUpdated)
from ..identity import clean_identity
from .inventory import Batch, Delta, InventoryState, Watcher
from .matching import VMIndex, mark_resync, resized_disks
from .store import VSphereStore, disk_sizes, secret_name

if TYPE_CHECKING:
    from ..appliance.control_http import AdminCheck
    from ..appliance.machine_state import MachineState
    from ..appliance.resync import Resync
    from ..events import EventBus

log = logging.getLogger(__name__)

INSECURE_WARNING = ("TLS certificate verification is OFF for {host} (--insecure): anyone on the network path can "
                    "impersonate it and capture its credentials")
_MATCH_FIELDS = ("bios_uuid", "guest_hostname", "ips", "name", "template")


class Endpoint:
    """A registered endpoint at run time: its row, its inventory state and its watcher thread."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.row = row
        self.host: str = row["host"]
        self.state = InventoryState(self.host)
        self.watcher: Watcher | None = None
        self.status = "stopped"
        self.error: dict[str, Any] | None = None
        self.renewals = 0


class VSphereService:
    def __init__(self, *, state: MachineState, resync: Resync, bus: EventBus, require_admin: AdminCheck) -> None:
        self.state = state
        self.resync = resync
        self.bus = bus
        self.require_admin = require_admin
        self.endpoints: dict[str, Endpoint] = {}
        self.store: VSphereStore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # lifecycle ------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.store = VSphereStore(self.state.db.db)
        for row in self.store.endpoints():
            self._start_endpoint(row)

    async def stop(self) -> None:
        eps, self.endpoints = list(self.endpoints.values()), {}
        await asyncio.gather(*(self._stop_endpoint(ep) for ep in eps))

    def _start_endpoint(self, row: dict[str, Any]) -> Endpoint:
        ep = Endpoint(row)
        assert self.store is not None
        target = self.store.target(row)
        ep.watcher = Watcher(target, lambda: self._password(target.host), self._threadsafe(self._on_batch, ep),
                             self._threadsafe(self._on_status, ep))
        self.endpoints[ep.host] = ep
        ep.watcher.start()
        return ep

    async def _stop_endpoint(self, ep: Endpoint) -> None:
        if ep.watcher is not None:
            await asyncio.to_thread(ep.watcher.stop)

    def _threadsafe(self, fn: Callable[..., None], ep: Endpoint) -> Callable[..., None]:
        """A callback for the watcher thread: runs ``fn(ep, ...)`` on the loop, and only while ``ep`` is current."""
        loop = self._loop
        assert loop is not None

        def run(*args: Any) -> None:
            if self.endpoints.get(ep.host) is ep:
                fn(ep, *args)

        def call(*args: Any) -> None:
            try:
                loop.call_soon_threadsafe(run, *args)
            except RuntimeError:  # the loop is closed: the appliance is shutting down
                pass
        return call

    @staticmethod
    def _password(host: str) -> str:
        pw = get_secret(secret_name(host))
        if not pw:
            raise LoginFailed(f"the password of {host} is not in the OS keyring",
                              advice=f"Store it again: `lifeboat vcenter update --home DIR {host} --password-stdin`.")
        return pw

    # operations (control API and console) ---------------------------------------------------------------------
    async def register(self, host: str, port: int = 443, user: str = "", password: str = "", *,
                       ca_pem: str | None = None, thumbprint: str | None = None, insecure: bool = False) -> dict[str, Any]:
        """Verify trust and credentials, then store the endpoint (password in the keyring) and start its inventory."""
        assert self.store is not None
        host = _valid_host(host)
        if self.store.endpoint(host) is not None:
            raise AlreadyExists(f"{host} is already registered",
                                advice=f"Change its credentials with `lifeboat vcenter update {host}`, "
                                       f"or remove it first (`lifeboat vcenter remove {host}`).")
        target = _target(host, port, user, ca_pem, thumbprint, insecure)
        if not isinstance(password, str) or not password:
            raise InvalidInput("a password is needed", advice="Pass it on stdin with --password-stdin.")
        about, seen = await asyncio.to_thread(_probe, target, password)
        await asyncio.to_thread(set_secret, secret_name(host), password)
        try:
            self.store.put_endpoint(target, seen, about)
        except BaseException:
            await asyncio.to_thread(delete_secret, secret_name(host))  # no orphaned password in the keyring
            raise
        self.state.event("vcenter-registered", None, host=host, port=target.port, user=target.user,
                              trust=target.trust, thumbprint=seen, endpoint=about["kind"])
        self._warn_if_insecure(target)
        row = self.store.endpoint(host)
        assert row is not None
        self._start_endpoint(row)
        return self._entry(self.endpoints[host])

    async def update(self, host: str, *, user: str | None = None, password: str | None = None,
                     ca_pem: str | None = None, thumbprint: str | None = None,
                     insecure: bool | None = None) -> dict[str, Any]:
        """New credentials and/or trust for a registered endpoint; verified before anything is replaced."""
        assert self.store is not None
        host = _valid_host(host)
        row = self.store.endpoint(host)
        if row is None:
            raise UnknownVCenter(f"{host} is not registered")
        if ca_pem or thumbprint or insecure:
            target = _target(host, row["port"], user or row["user"], ca_pem, thumbprint, bool(insecure))
        else:
            target = Target(host, row["port"], user or row["user"], row["trust"], row["ca_pem"], row["thumbprint"])
        pw = password if password else await asyncio.to_thread(self._password, host)
        about, seen = await asyncio.to_thread(_probe, target, pw)
        if password:
            await asyncio.to_thread(set_secret, secret_name(host), password)
        self.store.put_endpoint(target, seen, about)
        self.state.event("vcenter-updated", None, host=host, user=target.user, trust=target.trust,
                              thumbprint=seen, password_changed=bool(password))
        self._warn_if_insecure(target)
        old = self.endpoints.pop(host, None)
        if old is not None:
            await self._stop_endpoint(old)
        new = self._start_endpoint(self.store.endpoint(host) or row)
        return self._entry(new)

    async def remove(self, host: str) -> dict[str, Any]:
        assert self.store is not None
        host = _valid_host(host)
        if self.store.endpoint(host) is None:
            raise UnknownVCenter(f"{host} is not registered")
        ep = self.endpoints.pop(host, None)
        if ep is not None:
            await self._stop_endpoint(ep)
        self.store.delete_endpoint(host)
        await asyncio.to_thread(delete_secret, secret_name(host))
        self.state.event("vcenter-removed", None, host=host)
        self.bus.emit(VCenterStatus(host, "removed"))
        return {"removed": host}

    def list_endpoints(self) -> list[dict[str, Any]]:
        """Registered endpoints with trust, connection state and inventory counters (no secrets)."""
        return [self._entry(ep) for _, ep in sorted(self.endpoints.items())]

    def snapshot(self) -> dict[str, Any]:
        """The inventory of every endpoint: {"vcenters", "datacenters", "clusters", "hosts", "datastores",
        "networks", "vms"}; each VM carries ``protected_machine`` and ``protection_state``."""
        out: dict[str, Any] = {"vcenters": self.list_endpoints()}
        for k in ("datacenters", "clusters", "hosts", "datastores", "networks", "vms"):
            out[k] = []
        by_vm = self._linked_machines()
        for ep in self.endpoints.values():
            vms = [self._decorate(v, by_vm) for v in ep.state.vms.values()]
            for k, rows in build_inventory(ep.state.objects, ep.host, vms).items():
                out[k].extend(rows)
        for k in ("datacenters", "clusters", "hosts", "datastores", "networks", "vms"):
            out[k].sort(key=lambda x: (x.get("name") or "", x["vcenter"], x["moref"]))
        return out

    def agent_attached(self, machine: str, hello: dict[str, Any]) -> None:
        """Hook for an agent attaching on the data port (Runtimes.on_attach): remember what the agent says it is, then try to tie it to a VM.

        Never raises: a problem here must not refuse a replication connection."""
        try:
            assert self.store is not None
            ident = clean_identity(hello or {})
            if ident is not None:
                self.store.put_identity(machine, ident["bios_uuid"], ident["hostname"], ident["ips"])
            self._rematch()
        except Exception:
            log.exception("vSphere matching for agent %s failed", machine)

    async def set_power_of(self, machine: str, on: bool) -> dict[str, Any] | None:
        """Power the vSphere VM matched to ``machine`` off (``on`` False) or on, through its vCenter, and wait for
        the task. None when the machine is matched to no VM (or its vCenter was removed): nothing to do. Raises
        ``VCenterUnreachable`` / ``LoginFailed`` / ``CertificateUntrusted`` / ``VSphereError`` when it cannot.
        Used by a planned failover (engine/recovery/failover.py): the source must not run on beside its recovered
        copy (split brain)."""
        assert self.store is not None
        link = self.store.links().get(machine)
        row = self.store.endpoint(link["vcenter"]) if link else None
        if link is None or row is None:
            return None
        target = self.store.target(row)
        pw = await asyncio.to_thread(self._password, target.host)
        out = await asyncio.to_thread(_set_power, target, pw, link["moref"], on)
        out = {"vcenter": link["vcenter"], "moref": link["moref"], "vm": link["vm_name"], **out}
        self.state.event("vm-powered-off" if on is False else "vm-powered-on", machine, **out)
        return out

    # watcher callbacks (loop thread) ----------------------------------------------------------------------------
    def _on_status(self, ep: Endpoint, state: str, error: dict[str, Any] | None, renewals: int) -> None:
        changed = (state, (error or {}).get("code")) != (ep.status, (ep.error or {}).get("code"))
        ep.status, ep.renewals = state, renewals
        ep.error = error if state == "error" else None
        if changed and state == "error":
            self.state.event("vcenter-error", None, host=ep.host, error=error)
        self.bus.emit(VCenterStatus(ep.host, state, ep.error, ep.row["trust"] == "insecure", renewals))

    def _on_batch(self, ep: Endpoint, batch: Batch) -> None:
        delta = ep.state.apply(batch)
        if delta is None:
            return
        bus = self.bus
        if delta.full:
            log.info("vCenter %s: full read, %d VMs in %.2fs (%s)", ep.host, len(ep.state.vms), delta.seconds,
                     delta.reason)
            bus.emit(InventorySynced(ep.host, len(ep.state.vms), round(delta.seconds, 3), delta.reason))
        by_vm = self._linked_machines()
        for vm in delta.added:
            bus.emit(VMAdded(ep.host, vm["moref"], vm["name"], self._decorate(vm, by_vm)))
        for vm in delta.removed:
            bus.emit(VMRemoved(ep.host, vm["moref"], vm["name"], vm.get("instance_uuid")))
        for before, after in delta.updated:
            if before["power_state"] != after["power_state"]:
                bus.emit(VMPowerChanged(ep.host, after["moref"], after["name"], after["power_state"],
                                        before["power_state"]))
            changed = sorted(k for k in after if before.get(k) != after.get(k))
            bus.emit(VMUpdated(ep.host, after["moref"], after["name"], changed, self._decorate(after, by_vm)))
        self._after_change(ep, delta)

    def _after_change(self, ep: Endpoint, delta: Delta) -> None:
        relevant = delta.full or delta.added or any(
            before.get(k) != after.get(k) for before, after in delta.updated for k in _MATCH_FIELDS)
        if relevant:
            self._rematch()
        touched = list(ep.state.vms.values()) if delta.full else [a for _, a in delta.updated]
        self._check_resize(ep, touched)

    # matching ---------------------------------------------------------------------------------------------------
    def _rematch(self) -> None:
        """Tie every registered machine that has evidence to the one VM it points at (docs/VSPHERE.md)."""
        assert self.store is not None
        machines = [r["name"] for r in self.state.rows() if not r["revoked"]]
        if not machines or not any(ep.state.synced for ep in self.endpoints.values()):
            return
        idents, links = self.store.identities(), self.store.links()
        index = VMIndex([v for ep in self.endpoints.values() for v in ep.state.vms.values()])
        for m in machines:
            vm, by = index.find(m, idents.get(m, {}))
            if vm is None:
                continue  # keep an old link: its VM may only be out of sight (a re-read, a host down)
            link = links.get(m)
            if link and (link["vcenter"], link["moref"]) == (vm["vcenter"], vm["moref"]):
                continue
            self.store.put_link(m, vm, by)
            self.state.event("vm-matched", m, vcenter=vm["vcenter"], moref=vm["moref"], vm=vm["name"],
                                  instance_uuid=vm["instance_uuid"], by=by)
            log.info("machine %s is VM %s on %s (by %s)", m, vm["name"], vm["vcenter"], by)
            self.bus.emit(MachineMatched(m, vm["vcenter"], vm["moref"], vm["name"], vm["instance_uuid"], by))

    def _check_resize(self, ep: Endpoint, vms: list[dict[str, Any]]) -> None:
        """A linked VM whose disk capacity moved (live, or while the appliance was down) needs a resync."""
        assert self.store is not None
        links = {(lk["vcenter"], lk["moref"]): lk for lk in self.store.links().values()}
        for vm in vms:
            link = links.get((ep.host, vm["moref"]))
            if link is None:
                continue
            resized = resized_disks(link["disks"], vm)
            for disk, old in resized:
                marked = mark_resync(self.state, self.resync, link["machine"], "disk resized", vcenter=ep.host, vm=vm["name"],
                                     disk=disk["label"], old_bytes=old, new_bytes=disk["capacity_bytes"])
                self.bus.emit(VMDiskResized(ep.host, vm["moref"], vm["name"], disk["label"], old,
                                                disk["capacity_bytes"], link["machine"] if marked else None))
            if resized or disk_sizes(vm) != link["disks"]:
                self.store.set_link_disks(link["machine"], disk_sizes(vm))

    def _linked_machines(self) -> dict[tuple[str, str], dict[str, Any]]:
        assert self.store is not None
        rows = {r["name"]: r for r in self.state.rows()}
        out = {}
        for lk in self.store.links().values():
            row = rows.get(lk["machine"])
            if row is not None and not row["revoked"]:
                out[(lk["vcenter"], lk["moref"])] = row
        return out

    @staticmethod
    def _decorate(vm: dict[str, Any], by_vm: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
        row = by_vm.get((vm["vcenter"], vm["moref"]))
        return {**vm, "protected_machine": row["name"] if row else None,
                "protection_state": (row["state"] if row["protected"] else "unprotected") if row else None}

    # helpers ------------------------------------------------------------------------------------------------------
    def _entry(self, ep: Endpoint) -> dict[str, Any]:
        assert self.store is not None
        r = self.store.endpoint(ep.host) or ep.row
        return {"host": r["host"], "port": r["port"], "user": r["user"], "kind": r["kind"], "product": r["product"],
                "api_version": r["api_version"], "trust": r["trust"], "insecure": bool(r["insecure"]),
                "thumbprint": r["seen_thumbprint"], "pinned_thumbprint": r["thumbprint"],
                "status": ep.status, "error": ep.error, "session_renewals": ep.renewals,
                "synced": ep.state.synced, "vms": len(ep.state.vms), "full_reads": ep.state.full_reads,
                "updates": ep.state.incremental_updates, "last_change": ep.state.last_change,
                "added": r["added"], "updated": r["updated"]}

    def _warn_if_insecure(self, t: Target) -> None:
        if t.trust != "insecure":
            return
        msg = INSECURE_WARNING.format(host=t.address)
        log.warning("%s", msg.upper())  # loud on purpose: this setting should not go unnoticed in a log
        self.state.event("vcenter-insecure", None, host=t.host, port=t.port)
        self.bus.emit(Alert(None, "LB_VSPHERE_INSECURE", msg,
                                "Register it again with --ca FILE or --accept-thumbprint SHA256.", "warning",
                                {"vcenter": t.host}))

    # control API --------------------------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/vcenters", self._h_register), web.get("/v1/vcenters", self._h_list),
                web.delete("/v1/vcenters/{host}", self._h_remove),
                web.put("/v1/vcenters/{host}/credentials", self._h_update),
                web.get("/v1/inventory", self._h_inventory)]

    async def _body(self, request: web.Request) -> Body:
        self.require_admin(request)
        return await read_json(request)

    @staticmethod
    def _trust(b: Body) -> dict[str, Any]:
        return {"ca_pem": b.text("ca_pem", max_len=MAX_BODY, multiline=True), "thumbprint": b.text("thumbprint", max_len=200),
                "insecure": b.boolean("insecure", False) if b.data.get("insecure") is not None else None}

    async def _h_register(self, request: web.Request) -> web.Response:
        b = await self._body(request)
        port = b.data.get("port", 443)
        if isinstance(port, bool) or not isinstance(port, int):
            raise InvalidInput(f"field 'port' must be an integer, got {type(port).__name__}", field="port")
        trust = self._trust(b)
        return json_response(await self.register(
            b.text("host", default="", max_len=253) or "", port, b.text("user", default="", max_len=256) or "",
            b.text("password", default="", max_len=1024) or "", ca_pem=trust["ca_pem"],
            thumbprint=trust["thumbprint"], insecure=bool(trust["insecure"])))

    async def _h_update(self, request: web.Request) -> web.Response:
        b = await self._body(request)
        trust = self._trust(b)
        return json_response(await self.update(
            request.match_info["host"], user=b.text("user", max_len=256), password=b.text("password", max_len=1024),
            ca_pem=trust["ca_pem"], thumbprint=trust["thumbprint"], insecure=trust["insecure"]))

    async def _h_list(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        return json_response(self.list_endpoints())

    async def _h_remove(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        return json_response(await self.remove(request.match_info["host"]))

    async def _h_inventory(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        return json_response(self.snapshot())

    list = list_endpoints  # the engine API name (defined last: above, "list" in annotations is the builtin)


def _valid_host(host: Any) -> str:
    if not isinstance(host, str) or not host or len(host) > 253 or any(c in host for c in " /\\@?#"):
        raise InvalidInput(f"{host!r} is not a host name or address", advice="Pass --host vcenter.example.com")
    return host.strip("[]").lower()  # one spelling per endpoint: it is the key of the DB row and keyring entry


def _target(host: str, port: Any, user: Any, ca_pem: str | None, thumbprint: str | None, insecure: bool) -> Target:
    if not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidInput(f"port {port!r} is out of range")
    if not isinstance(user, str) or not user:
        raise InvalidInput("a user name is needed", advice="Pass --user USER (e.g. administrator@vsphere.local).")
    if sum(bool(x) for x in (ca_pem, thumbprint, insecure)) > 1:
        raise InvalidInput("give only one of --ca, --accept-thumbprint and --insecure")
    if ca_pem:
        return Target(host, port, user, "ca", ca_pem=str(ca_pem))
    if thumbprint:
        return Target(host, port, user, "thumbprint", thumbprint=normalise_thumbprint(str(thumbprint)))
    return Target(host, port, user, "insecure" if insecure else "system")


def _probe(t: Target, password: str) -> tuple[dict[str, Any], str]:
    """Log in once (thread): proves trust and credentials before anything is stored."""
    si, seen = connect(t, password)
    try:
        return describe(si), seen
    finally:
        disconnect(si)



def _set_power(t: Target, password: str, moref: str, on: bool) -> dict[str, Any]:
    """Power a VM (by moref) on or off and wait for the task; (``was``, ``now``) power states. Blocking: a thread."""
    from pyVmomi import vim, vmodl

    si, _ = connect(t, password)
    try:
        vm = vim.VirtualMachine(moref, si._stub)
        try:
            was = str(vm.runtime.powerState)
            want = "poweredOn" if on else "poweredOff"
            if was != want:
                task = vm.PowerOnVM_Task() if on else vm.PowerOffVM_Task()
                _wait_task(task)
            now = str(vm.runtime.powerState)
        except vmodl.fault.ManagedObjectNotFound:
            raise VSphereError(f"VM {moref} is no longer on {t.address}",
                               advice="The machine's VM was removed or re-registered: power the source off by hand "
                                      "if it still runs, then fail over unplanned.") from None
        except vmodl.MethodFault as exc:
            raise VSphereError(f"{t.address} refused to power VM {moref} {'on' if on else 'off'}: "
                               f"{getattr(exc, 'msg', None) or type(exc).__name__}") from None
        except OSError as exc:
            raise VCenterUnreachable(f"lost {t.address} while powering VM {moref} {'on' if on else 'off'}: "
                                     f"{exc}") from None
        if now != want:
            raise VSphereError(f"VM {moref} on {t.address} is {now} after the power task, not {want}")
        return {"was": was, "now": now}
    finally:
        disconnect(si)


def _wait_task(task: Any, timeout: float = 120.0) -> None:
    """Poll a vSphere task to its end (pyVim's WaitForTask trips over some task entities: FACTS.md)."""
    import time as _time
    end = _time.monotonic() + timeout
    while True:
        state = str(task.info.state)
        if state == "success":
            return
        if state == "error":
            err = task.info.error
            raise VSphereError(f"vSphere task failed: {getattr(err, 'msg', None) or err}")
        if _time.monotonic() > end:
            raise VSphereError(f"vSphere task did not finish within {timeout:g} s")
        _time.sleep(0.2)
