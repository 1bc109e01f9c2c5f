"""Failover of protected machines to a recovery host, as engine jobs; recovery hosts and recovery settings.

``failover`` plans first (pure checks, nothing opened): the machine is protected and not failed over already, the
host is registered, the settings give a valid VM for the host's networks, the point resolves. Then the machine is
marked ``failed-over`` (replication for it stops: its agent is disconnected and refused) and a ``failover`` job
runs: open-views → serve-overlay (the point's vault views behind copy-on-write overlays, served over NBD on
loopback: engine/recovery/vault_disks.py, shared with drills) → config-drive (NoCloud ``cidata``) → start-vm
(define + start on the host) → wait-boot (the serial console shows the machine's boot pattern). A failed step
tears down what the job made and gives the machine back to protection; the serial log stays for reading.

``cancel`` (a ``failover-cancel`` job) stops and removes the VM, stops serving, discards the overlay and gives
the machine back to protection. Planned failover, change point, commit and recovery plans (issue 13) build on the
same pieces: a plan run is a composite job whose members are these steps.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..appliance.control_http import read_json
from ..appliance.request_body import Body, json_response
from ..errors import AlreadyFailedOver, HypervisorError, InvalidInput, LifeboatError, NotFound, NotReady
from ..jobs import Job, JobKind, JobManager, JobState, Plan, StepContext, StepSpec
from ..names import check_name, inside
from .config_drive import build_config_drive
from .hosts.base import DiskSpec, NicSpec, VMSpec, parse_network, wait_for_boot
from .hosts.libvirt import LibvirtHost, check_uri, domain_name
from .points import resolve_point
from .settings import RecoverySettings, nic_mac
from .store import RecoveryStore
from .vault_disks import PointDisks

if TYPE_CHECKING:
    from ..appliance.control_http import AdminCheck
    from ..appliance.machine_state import MachineState
    from ..appliance.pipeline import MachineRuntime
    from ..appliance.sync_cursor import SyncCursor

log = logging.getLogger(__name__)

FAILED_OVER = "failed-over"
#: Where a recovered VM's NBD disks are served: the recovery host is this machine (kind qemu, local URI).
SERVE_HOST = "127.0.0.1"


class Failover:
    """A running failover: what it holds open."""

    def __init__(self, machine: str, host: LibvirtHost, folder: Path) -> None:
        self.machine = machine
        self.host = host
        self.folder = folder
        self.disks = PointDisks(folder / "overlay")
        self.vm_defined = False


class FailoverService:
    """Recovery hosts, recovery settings and failovers. Collaborators: ``folder`` (HOME/failovers), ``state`` (machine
    rows), ``store`` (the recovery tables), ``runtimes`` (each machine's vault and agent link), ``cursor``
    (consistent states), ``manager`` (jobs), ``require_admin`` (the control API's admin check)."""

    def __init__(self, folder: Path, *, state: MachineState, store: RecoveryStore,
                 runtimes: Mapping[str, MachineRuntime], cursor: SyncCursor, manager: JobManager,
                 require_admin: AdminCheck | Callable[[web.Request], None]) -> None:
        self.folder = folder
        self.state = state
        self.store = store
        self.runtimes = runtimes
        self.cursor = cursor
        self.manager = manager
        self.require_admin = require_admin
        self.active: dict[str, Failover] = {}

    async def start(self) -> None:
        self.folder.mkdir(mode=0o700, exist_ok=True)
        # A failover of an earlier run lost its NBD server with that process: its VM cannot go on. Say so; the
        # operator cancels it (the VM and the overlay are removed then).
        for r in self.store.failovers():
            if r["state"] in ("starting", "running", "booted"):
                self.store.update_failover(r["machine"], state="interrupted",
                                           error={"code": "LB_INTERRUPTED", "message": "the appliance stopped while "
                                                  "the recovered VM depended on it", "advice": "Cancel the failover "
                                                  "and fail over again."})

    async def stop(self) -> None:
        for fo in list(self.active.values()):
            await fo.disks.close()
        self.active.clear()

    def busy(self, machine: str) -> bool:
        return machine in self.active

    def _host(self, name: str) -> LibvirtHost:
        r = self.store.host(check_name(name, "host name"))
        return LibvirtHost(r["name"], r["uri"], {n.name: n for n in r["networks"]}, accel=r["accel"])

    # hosts -------------------------------------------------------------------------------------------------
    async def add_host(self, name: str, kind: str, uri: str, networks: list[str], accel: str = "tcg") -> dict[str, Any]:
        check_name(name, "host name")
        if kind != "qemu":
            raise InvalidInput(f"recovery host kind {kind!r} is not supported (qemu)", field="kind")
        nets = [parse_network(n) for n in networks]
        check_uri(uri)
        seen: set[str] = set()
        for n in nets:
            if n.name in seen:
                raise InvalidInput(f"network {n.name!r} is given twice", field="network")
            seen.add(n.name)
        host = LibvirtHost(name, uri, {n.name: n for n in nets}, accel=accel)
        about = await host.check()   # refused before anything is stored when the hypervisor cannot be reached
        self.store.add_host(name, kind, uri, accel, nets)
        self.state.event("recovery-host-added", None, host=name, uri=uri)
        return {**self._host_view(self.store.host(name)), "hypervisor": about}

    @staticmethod
    def _host_view(r: dict[str, Any]) -> dict[str, Any]:
        return {"name": r["name"], "kind": r["kind"], "uri": r["uri"], "accel": r["accel"],
                "networks": {n.name: n.to_text() for n in r["networks"]}, "added": r["added"]}

    def list_hosts(self) -> list[dict[str, Any]]:
        return [self._host_view(r) for r in self.store.hosts()]

    # settings ----------------------------------------------------------------------------------------------
    def settings(self, machine: str, changes: dict[str, Any] | None = None) -> dict[str, Any]:
        """The machine's recovery settings, after applying ``changes`` (validated as a whole, then stored)."""
        self.state.row(machine)
        current = self.store.settings(machine)
        if changes:
            merged = {**current, **{k: v for k, v in changes.items() if k not in ("nics", "ips")}}
            for k in ("nics", "ips"):
                if k in changes:
                    merged[k] = {**current.get(k, {}), **changes[k]}
            s = RecoverySettings.from_dict(merged)
            self.store.put_settings(machine, s.to_dict())
            self.state.event("recovery-settings", machine, **changes)
        return {"machine": machine, **RecoverySettings.from_dict(self.store.settings(machine)).to_dict()}

    # failover ----------------------------------------------------------------------------------------------
    async def failover(self, machine: str, host_name: str, spec: str, *,
                       networks: Mapping[str, str] | None = None) -> Job:
        """``networks``: NIC → network overrides for this failover only (a recovery plan's test run maps every NIC
        to the host's isolated network: engine/recovery/plans.py)."""
        row = self.state.row(machine)
        existing = self.store.failover(machine)
        if existing is not None or row["state"] == FAILED_OVER or machine in self.active:
            where = existing["host"] if existing else "?"
            raise AlreadyFailedOver(f"machine {machine!r} is failed over already (to {where}); a second failover is "
                                    "refused")
        rt = self.runtimes.get(machine)
        if rt is None or not row["protected"]:
            raise NotReady(f"machine {machine!r} is not protected", advice="Protect it first (`lifeboat protect`).")
        host = self._host(host_name)
        if not host.local:
            raise InvalidInput(f"recovery host {host.name} is remote ({host.uri}); this version serves the recovered "
                               "disks on the appliance's loopback address, which only a local host can reach",
                               field="host", advice="Fail over to a host registered with a qemu:/// URI.")
        settings = RecoverySettings.from_dict(self.store.settings(machine))
        point = await resolve_point(rt.vault, spec, lambda seq: self.cursor.is_consistent(machine, seq),
                                    rt.last_applied_ts if rt.last_applied_seq == rt.vault.last_seq else None)
        folder = inside(self.folder, machine)
        serial_log = folder / "serial.log"
        nics = [NicSpec(nic, (networks or {}).get(nic, net), nic_mac(machine, nic)) for nic, net in settings.nics.items()]
        disks = rt.vault.disks()
        vm = VMSpec(machine, cpus=settings.cpus, memory_mib=settings.memory_mib, firmware=settings.firmware,
                    disks=[DiskSpec(d.name) for d in disks], nics=nics, serial_log=serial_log)
        vm.validate(host.networks)   # a NIC on a network the host lacks is refused now, before anything runs
        if machine in self.active:   # another failover was planned while the point was resolved
            raise AlreadyFailedOver(f"machine {machine!r} is being failed over already")
        fo = self.active[machine] = Failover(machine, host, folder)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, mode=0o700)
        started = time.time()
        self.store.put_failover({"machine": machine, "host": host.name, "kind": "unplanned", "state": "starting",
                                 "point": point.to_dict(), "job": None, "vm": domain_name(machine),
                                 "serial_log": str(serial_log), "scratch": str(fo.disks.scratch), "nbd": None,
                                 "started_at": started, "booted_at": None, "boot_seconds": None, "error": None})
        self._stop_replication(machine)
        vault = rt.vault

        async def open_views(ctx: StepContext) -> None:
            await fo.disks.open_views(vault, point.seq)

        async def serve_overlay(ctx: StepContext) -> None:
            addr = await fo.disks.serve(SERVE_HOST, 0, server_name=f"failover-{machine}", what="the failover")
            self.store.update_failover(machine, nbd=f"{addr[0]}:{addr[1]}")
            ctx.result["nbd"] = f"{addr[0]}:{addr[1]}"

        async def config_drive(ctx: StepContext) -> None:
            vm.config_drive = await build_config_drive(folder, machine, f"lifeboat-{machine}-{int(started)}",
                                                       settings)
            ctx.result["config_drive"] = str(vm.config_drive)

        async def start_vm(ctx: StepContext) -> None:
            assert fo.disks.address is not None
            h, p = fo.disks.address
            vm.disks = [DiskSpec(d.name, nbd_host=h, nbd_port=p, nbd_export=d.name) for d in disks]
            await host.define(vm)
            fo.vm_defined = True
            await host.start(machine)
            self.store.update_failover(machine, state="running")
            ctx.note(f"VM {domain_name(machine)} started on {host.name}")

        async def wait_boot(ctx: StepContext) -> None:
            seconds, line = await wait_for_boot(serial_log, settings.boot_pattern, settings.boot_timeout, vm=machine)
            now = time.time()
            self.store.update_failover(machine, state="booted", booted_at=now, boot_seconds=round(now - started, 3))
            ctx.result["boot_seconds"] = round(now - started, 3)
            ctx.result["boot_line"] = line
            self.state.event("failed-over", machine, host=host.name, point=point.id, boot_seconds=round(now - started, 3))

        plan = Plan.sequence(
            StepSpec("open-views", "Open the point's disk views", open_views, 0.0),
            StepSpec("serve-overlay", "Serve the disks through a copy-on-write overlay", serve_overlay, 0.0),
            StepSpec("config-drive", "Build the config drive (re-IP)", config_drive, 0.0, error_code="LB_STORAGE"),
            StepSpec("start-vm", f"Define and start the VM on {host.name}", start_vm, 0.2,
                     error_code="LB_HYPERVISOR"),
            StepSpec("wait-boot", "Wait until the guest has booted", wait_boot, 0.8, error_code="LB_BOOT_TIMEOUT"))
        plan.done.append(("resolve-point", f"Resolve point {spec!r} → {point.id}"))
        try:
            job = self.manager.submit(JobKind.FAILOVER, machine, plan, title=f"Failover of {machine} to {host.name} "
                                      f"({spec})", result={"point": point.to_dict(), "host": host.name})
        except BaseException:
            await self._teardown(fo, keep_log=True)
            raise
        self.store.update_failover(machine, job=job.id)
        await self.manager.wait(job.id)
        if job.state != JobState.SUCCEEDED:
            err = job.error or {}
            await self._teardown(fo, keep_log=True)
            exc = self.manager.exception(job.id)
            raise exc if isinstance(exc, LifeboatError) else LifeboatError(
                err.get("message", f"failover job {job.id} {job.state.value}"), code=err.get("code"),
                advice=err.get("advice"))
        return job

    def _stop_replication(self, machine: str) -> None:
        self.state.update(machine, state=FAILED_OVER)
        rt = self.runtimes.get(machine)
        if rt is not None and rt.connection is not None:
            rt.connection.close()   # the process server refuses it from now on (engine/appliance/process_server.py)

    async def _teardown(self, fo: Failover, *, keep_log: bool) -> None:
        """Remove what a failover made: the VM, the NBD server and overlay; the machine goes back to protection."""
        try:
            await fo.host.destroy(fo.machine)
        except HypervisorError:
            if fo.vm_defined:
                raise
        await fo.disks.close()
        if not keep_log:
            shutil.rmtree(fo.folder, ignore_errors=True)
        else:
            shutil.rmtree(fo.folder / "cidata", ignore_errors=True)
            (fo.folder / "cidata.iso").unlink(missing_ok=True)
        self.active.pop(fo.machine, None)
        self.store.drop_failover(fo.machine)
        row = self.state.row(fo.machine)
        if row["state"] == FAILED_OVER:
            self.state.update(fo.machine, state="protected" if row["protected"] else "unprotected")

    async def cancel(self, machine: str) -> dict[str, Any]:
        self.state.row(machine)
        r = self.store.failover(machine)
        if r is None:
            raise NotFound(f"machine {machine!r} is not failed over", advice="Nothing to cancel.",
                           code="LB_NOT_FAILED_OVER")
        fo = self.active.get(machine)
        if fo is None:   # an earlier run's failover: only the VM and the files are left
            fo = Failover(machine, self._host(r["host"]), inside(self.folder, machine))
        own = self.manager.jobs.get(r["job"] or "")
        if own is not None and not own.finished:
            await self.manager.cancel(own.id)

        async def remove(ctx: StepContext) -> None:
            await self._teardown(fo, keep_log=False)

        job = self.manager.submit(JobKind.FAILOVER_CANCEL, machine,
                                  Plan.sequence(StepSpec("remove-vm", "Stop and remove the VM, discard the overlay",
                                                         remove, error_code="LB_HYPERVISOR")),
                                  title=f"Cancel failover of {machine}", result={"machine": machine})
        await self.manager.wait(job.id)
        if job.state != JobState.SUCCEEDED:
            exc = self.manager.exception(job.id)
            raise exc if exc is not None else LifeboatError(f"cancel job {job.id} {job.state.value}")
        self.state.event("failover-cancelled", machine, host=r["host"], point=r["point"]["id"])
        return {"machine": machine, "cancelled": True, "host": r["host"], "point": r["point"]["id"], "job": job.id}

    async def vms(self) -> list[dict[str, Any]]:
        out = []
        for r in self.store.failovers():
            live = None
            try:
                live = (await self._host(r["host"]).state(r["machine"])).value
            except LifeboatError as exc:
                live = f"unknown ({exc.code})"
            out.append({"machine": r["machine"], "host": r["host"], "vm": r["vm"], "state": r["state"],
                        "vm_state": live, "point": r["point"]["id"], "point_time": r["point"].get("time"),
                        "serial_log": r["serial_log"], "started_at": r["started_at"], "booted_at": r["booted_at"],
                        "boot_seconds": r["boot_seconds"], "nbd": r["nbd"], "job": r["job"], "error": r["error"]})
        return out

    def failover_of(self, machine: str) -> dict[str, Any] | None:
        """What ``status`` shows of a failed-over machine (host, point, state)."""
        r = self.store.failover(machine)
        return None if r is None else {"host": r["host"], "point": r["point"]["id"], "state": r["state"],
                                       "booted_at": r["booted_at"]}

    # control API -------------------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/hosts", self._h_add_host), web.get("/v1/hosts", self._h_hosts),
                web.get("/v1/machines/{name}/recovery-settings", self._h_settings),
                web.put("/v1/machines/{name}/recovery-settings", self._h_settings),
                web.post("/v1/machines/{name}/failover-vm", self._h_failover),
                web.post("/v1/machines/{name}/failover-cancel", self._h_cancel),
                web.get("/v1/vms", self._h_vms)]

    async def _body(self, request: web.Request) -> Body:
        self.require_admin(request)
        return await read_json(request)

    @staticmethod
    def _machine(request: web.Request) -> str:
        return check_name(request.match_info["name"], "machine name")

    async def _h_add_host(self, request: web.Request) -> web.Response:
        b = await self._body(request)
        nets = b.data.get("networks", [])
        if not isinstance(nets, list) or not all(isinstance(n, str) and len(n) <= 300 for n in nets) or len(nets) > 64:
            raise InvalidInput("field 'networks' must be a list of at most 64 NAME=KIND strings", field="networks")
        return json_response(await self.add_host(
            b.name("name", "host name", required=True) or "", b.text("kind", default="qemu", max_len=32) or "",
            b.text("uri", default="qemu:///system", max_len=512) or "", nets,
            accel=b.text("accel", default="tcg", max_len=8) or ""))

    async def _h_hosts(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        return json_response(self.list_hosts())

    async def _h_settings(self, request: web.Request) -> web.Response:
        machine = self._machine(request)
        if request.method == "GET":
            self.require_admin(request)
            return json_response(self.settings(machine))
        b = await self._body(request)
        changes: dict[str, Any] = {}
        for k in ("cpus", "memory_mib"):
            if b.data.get(k) is not None:
                v = b.data[k]
                if isinstance(v, bool) or not isinstance(v, int):
                    raise InvalidInput(f"field {k!r} must be an integer", field=k)
                changes[k] = v
        for k in ("nics", "ips"):
            v = b.data.get(k)
            if v is not None:
                if not isinstance(v, dict) or len(v) > 32 or not all(
                        isinstance(x, str) and isinstance(y, str) and len(y) <= 64 for x, y in v.items()):
                    raise InvalidInput(f"field {k!r} must map NIC names to strings", field=k)
                changes[k] = v
        if b.data.get("gateway") is not None:
            changes["gateway"] = b.text("gateway", max_len=64)
        if b.data.get("dns") is not None:
            dns = b.data["dns"]
            if not isinstance(dns, list) or len(dns) > 8 or not all(isinstance(x, str) and len(x) <= 64 for x in dns):
                raise InvalidInput("field 'dns' must be a list of at most 8 addresses", field="dns")
            changes["dns"] = dns
        if b.data.get("boot_pattern") is not None:
            changes["boot_pattern"] = b.text("boot_pattern", max_len=256)
        if b.data.get("boot_timeout") is not None:
            t = b.data["boot_timeout"]
            if isinstance(t, bool) or not isinstance(t, (int, float)):
                raise InvalidInput("field 'boot_timeout' must be a number of seconds", field="boot_timeout")
            changes["boot_timeout"] = float(t)
        return json_response(self.settings(machine, changes))

    async def _h_failover(self, request: web.Request) -> web.Response:
        b = await self._body(request)
        machine = self._machine(request)
        job = await self.failover(machine, b.name("host", "host name", required=True) or "",
                                  b.text("point", default="latest", max_len=256) or "latest")
        return json_response({**job.to_dict(), "vm": next((v for v in await self.vms() if v["machine"] == machine),
                                                          None)})

    async def _h_cancel(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        return json_response(await self.cancel(self._machine(request)))

    async def _h_vms(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        return json_response(await self.vms())

